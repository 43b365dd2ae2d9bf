/*
test_moe — every check of moe.c, in the order of the model: each op's backward against finite
differences, the whole model against finite differences and against the PyTorch reference
(dev/moe_ref.py writes dev/ref/), determinism, checkpoints, the trainer's failure paths, the data
loader and the tokenizer. Prints each failure with op, tensor, index and both values; ends with
"N passed, N failed" and exits non-zero when anything failed.

    make test            # from the repository root (it reads dev/ref/ and runs ./train_moe)
*/
#include <sys/wait.h>
#include <fcntl.h>
#include <dirent.h>
#include <signal.h>
#include <time.h>
#include "moe.h"

static int tests_passed, tests_failed;
#define CHECK(cond, ...) do { if (cond) tests_passed++; else { tests_failed++; \
    printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } while (0)

#include "dataloader.h"
#include "tokenizer.h"
#include "upcycle.h"
#include "metrics.h"
#include "eval.h"
#include "data/cloze.h"
#include "mpi_moe.h"  // built here without MPI: its pieces that need no other rank

static const RoutingMode EVAL0 = {0, 0, NULL};  // an evaluation forward at step 0

// ----------------------------------------------------------------------------
// helpers

static uint64_t test_rng = 42;
static float urand(void) { return 2.0f * random_f32(&test_rng) - 1.0f; }  // uniform in [-1, 1)
static void fill_uniform(float* x, size_t n, float scale) { for (size_t i = 0; i < n; i++) x[i] = scale * urand(); }
static float* fmalloc(size_t n) {   // zeroed; freed with free() (callocCheck's large buffers need freeCheck)
    float* p = (float*)calloc(n > 0 ? n : 1, sizeof(float));
    if (p == NULL) die("test: out of memory allocating %zu floats", n);
    return p;
}
static double dot_d(const float* a, const float* b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

// Compares analytic gradients with central differences of a scalar loss. loss(ctx) recomputes the
// loss from the current x. Checks up to max_checks evenly spread entries of x.
typedef double (*LossFn)(void* ctx);
static void fd_check(const char* op, const char* tensor, float* x, size_t n, const float* analytic, LossFn loss,
                     void* ctx, float eps, double rtol, double atol, int max_checks) {
    size_t stride = n > (size_t)max_checks ? n / max_checks : 1;
    int bad = 0, checked = 0;
    double worst = 0.0;
    for (size_t i = 0; i < n; i += stride) {
        float keep = x[i];
        x[i] = keep + eps; double lp = loss(ctx);
        x[i] = keep - eps; double lm = loss(ctx);
        x[i] = keep;
        double fd = (lp - lm) / (2.0 * eps), an = analytic[i];
        double err = fabs(fd - an), tol = atol + rtol * fabs(fd);
        if (err / (tol > 0 ? tol : 1) > worst) worst = err / tol;
        if (err > tol && bad++ < 3) printf("  %s %s[%zu]: analytic %.7g finite-diff %.7g\n", op, tensor, i, an, fd);
        checked++;
    }
    CHECK(bad == 0, "%s: gradient of %s differs from finite differences at %d of %d entries", op, tensor, bad, checked);
}

// ----------------------------------------------------------------------------
// op-level finite-difference checks. Each loss is sum(w * out) for fixed random w, so the
// gradient of the output is w.

typedef struct { float *inp, *weight, *bias, *out, *mean, *rstd, *w; int N, C, OC, B, T, NH, V, Vp; int* targets; } OpCtx;

static double layernorm_loss(void* p) {
    OpCtx* c = (OpCtx*)p;
    layernorm_forward(c->out, c->mean, c->rstd, c->inp, c->weight, c->bias, c->N, c->C);
    return dot_d(c->out, c->w, (size_t)c->N * c->C);
}
static void test_layernorm(void) {
    OpCtx c = {0};
    c.N = 6; c.C = 20;
    size_t n = (size_t)c.N * c.C;
    c.inp = fmalloc(n); c.out = fmalloc(n); c.w = fmalloc(n); c.weight = fmalloc(c.C); c.bias = fmalloc(c.C);
    c.mean = fmalloc(c.N); c.rstd = fmalloc(c.N);
    fill_uniform(c.inp, n, 2.0f); fill_uniform(c.w, n, 1.0f); fill_uniform(c.weight, c.C, 1.0f); fill_uniform(c.bias, c.C, 1.0f);
    float *dinp = fmalloc(n), *dw = fmalloc(c.C), *db = fmalloc(c.C);
    layernorm_loss(&c);
    layernorm_backward(dinp, dw, db, c.w, c.inp, c.weight, c.mean, c.rstd, c.N, c.C);
    fd_check("layernorm", "inp", c.inp, n, dinp, layernorm_loss, &c, 1e-2f, 1e-2, 1e-3, 120);
    fd_check("layernorm", "weight", c.weight, c.C, dw, layernorm_loss, &c, 1e-2f, 1e-2, 1e-3, 20);
    fd_check("layernorm", "bias", c.bias, c.C, db, layernorm_loss, &c, 1e-2f, 1e-2, 1e-3, 20);
    free(c.inp); free(c.out); free(c.w); free(c.weight); free(c.bias); free(c.mean); free(c.rstd);
    free(dinp); free(dw); free(db);
}

static double matmul_loss(void* p) {
    OpCtx* c = (OpCtx*)p;
    matmul_forward(c->out, c->inp, c->weight, c->bias, c->N, c->C, c->OC);
    return dot_d(c->out, c->w, (size_t)c->N * c->OC);
}
static void test_matmul(void) {
    OpCtx c = {0};
    c.N = 7; c.C = 13; c.OC = 9;
    c.inp = fmalloc((size_t)c.N * c.C); c.weight = fmalloc((size_t)c.OC * c.C); c.bias = fmalloc(c.OC);
    c.out = fmalloc((size_t)c.N * c.OC); c.w = fmalloc((size_t)c.N * c.OC);
    fill_uniform(c.inp, (size_t)c.N * c.C, 1.0f); fill_uniform(c.weight, (size_t)c.OC * c.C, 1.0f);
    fill_uniform(c.bias, c.OC, 1.0f); fill_uniform(c.w, (size_t)c.N * c.OC, 1.0f);
    float *dinp = fmalloc((size_t)c.N * c.C), *dw = fmalloc((size_t)c.OC * c.C), *db = fmalloc(c.OC);
    matmul_backward(dinp, 1, dw, db, c.w, c.inp, c.weight, c.N, c.C, c.OC);
    fd_check("matmul", "inp", c.inp, (size_t)c.N * c.C, dinp, matmul_loss, &c, 1e-2f, 1e-3, 1e-3, 91);
    fd_check("matmul", "weight", c.weight, (size_t)c.OC * c.C, dw, matmul_loss, &c, 1e-2f, 1e-3, 1e-3, 117);
    fd_check("matmul", "bias", c.bias, c.OC, db, matmul_loss, &c, 1e-2f, 1e-3, 1e-3, 9);
    free(c.inp); free(c.weight); free(c.bias); free(c.out); free(c.w); free(dinp); free(dw); free(db);
}

// The expert hidden layer's padded row stride: at least n, whole 64-byte lines, an odd number of
// them (so 64 consecutive rows fall into 64 different L1 sets), and at most 2 lines of padding.
static void test_row_stride(void) {
    int bad = 0;
    for (int n = 1; n <= 4096; n++) {
        int s = sgemm_row_stride(n);
        if (s < n || s % 16 != 0 || (s / 16) % 2 != 1 || s - n >= 32) bad++;
    }
    CHECK(bad == 0, "sgemm_row_stride: %d of 4096 widths break its rule", bad);
    CHECK(sgemm_row_stride(512) == 528 && sgemm_row_stride(24) == 48 && sgemm_row_stride(16) == 16,
          "sgemm_row_stride: 512 -> %d, 24 -> %d, 16 -> %d (expected 528, 48, 16)",
          sgemm_row_stride(512), sgemm_row_stride(24), sgemm_row_stride(16));
}

// callocCheck's large buffers: zeroed, 64-byte aligned, no two of a run at the same offset within
// a 2 MiB page (see calloc_check_), each returned to free() whole by freeCheck (ASan and valgrind
// runs of this test would report a wrong start); with the table full, buffers are still allocated
// (unskewed) and freed.
static void test_huge_skew(void) {
    enum { NB = 20, NF = 1 << 20 };   // 4 MiB each
    float* b[NB];
    int zero = 1, aligned = 1, clash = 0;
    for (int i = 0; i < NB; i++) {
        b[i] = (float*)callocCheck(NF, sizeof(float));
        for (int j = 0; j < NF; j += 4099) zero &= b[i][j] == 0.0f;
        zero &= b[i][NF - 1] == 0.0f;
        aligned &= (uintptr_t)b[i] % 64 == 0;
        b[i][NF - 1] = 1.0f;   // (the whole size is usable)
    }
    for (int i = 0; i < 16 && i < NB; i++)
        for (int j = 0; j < i; j++) clash += (uintptr_t)b[i] % HUGE_PAGE_BYTES == (uintptr_t)b[j] % HUGE_PAGE_BYTES;
    CHECK(zero && aligned, "callocCheck (4 MiB buffers): zeroed %d, 64-byte aligned %d", zero, aligned);
    CHECK(clash == 0, "callocCheck: %d pairs of 16 consecutive 4 MiB buffers start at the same offset in a 2 MiB page", clash);
    for (int i = 0; i < NB; i++) freeCheck(b[i]);
    int used = 0;
    for (int i = 0; i < HUGE_SKEW_SLOTS; i++) used += huge_skewed[i].p != NULL;
    enum { NT = HUGE_SKEW_SLOTS + 40, NS = (1 << 20) + 16 };
    float** t = (float**)mallocCheck(NT * sizeof(float*));
    int ok = 1;
    for (int i = 0; i < NT; i++) {   // more buffers than the table holds; freed in reverse order
        t[i] = (float*)callocCheck(NS, sizeof(float));
        ok &= t[i][0] == 0.0f && t[i][NS - 1] == 0.0f;
    }
    for (int i = NT - 1; i >= 0; i--) freeCheck(t[i]);
    free(t);
    int left = 0;
    for (int i = 0; i < HUGE_SKEW_SLOTS; i++) left += huge_skewed[i].p != NULL;
    CHECK(ok && left == used, "callocCheck beyond its table: zeroed %d; table slots in use %d after freeing (before: %d)", ok, left, used);
    freeCheck(NULL);
}

// exp_approx16, gelu_value_grad16, softplus16 and sigmoid16 give the scalar functions' bits in every lane:
// random floats of every exponent, both signs, and the edges (NaN, +-inf, +-0, the clamp at -87
// and 88, exact halves where exp_approx's floor changes side). Bit-equal, not close: the model's
// numbers must not depend on which loop (vector body or scalar tail) an element lands in. (A NaN
// is any NaN.)
static int same_bits(float a, float b) { return (isnan(a) && isnan(b)) || memcmp(&a, &b, 4) == 0; }   // (a NaN's sign is noise)
static void test_exp_vector(void) {
    enum { NV = 1 << 20 };
    float* x = fmalloc(NV);
    uint64_t rng = 7;
    float edges[] = {NAN, INFINITY, -INFINITY, 0.0f, -0.0f, -87.0f, 88.0f, -87.5f, 88.5f, 1e-40f, -1e-40f,
                     0.5f * 0.6931472f, -0.5f * 0.6931472f, 1.5f * 0.6931472f, 3.4e38f, -3.4e38f, 10.0f, -10.0f};
    int ne = (int)(sizeof(edges) / sizeof(edges[0]));
    for (int i = 0; i < NV; i++) {
        uint32_t bits = random_u32(&rng);
        if (i % 4 != 0) bits = (bits & 0x807FFFFFu) | ((uint32_t)(100 + random_u32(&rng) % 70) << 23);   // |x| in [2^-27, 2^43)
        memcpy(&x[i], &bits, 4);
        if (i < ne) x[i] = edges[i];
    }
    int bad_exp = 0, bad_gelu = 0, bad_router = 0;
    for (int i = 0; i < NV; i += 16) {
        f32x16 grad16, e16 = exp_approx16(load16(x + i)), g16 = gelu_value_grad16(load16(x + i), &grad16);
        f32x16 sp16 = softplus16(load16(x + i)), sg16 = sigmoid16(load16(x + i));
        for (int j = 0; j < 16; j++) {
            float e = exp_approx(x[i + j]), grad, g = gelu_value_grad(x[i + j], &grad);
            float sp = softplus(x[i + j]), sg = sigmoid(x[i + j]);
            float e_lane = e16[j], g_lane = g16[j], grad_lane = grad16[j], sp_lane = sp16[j], sg_lane = sg16[j];
            bad_exp += !same_bits(e, e_lane);
            bad_gelu += !same_bits(g, g_lane) || !same_bits(grad, grad_lane);
            bad_router += !same_bits(sp, sp_lane) || !same_bits(sg, sg_lane);
        }
    }
    CHECK(bad_exp == 0, "exp_approx16 differs from exp_approx in %d of %d lanes", bad_exp, NV);
    CHECK(bad_gelu == 0, "gelu_value_grad16 differs from gelu_value_grad in %d of %d lanes", bad_gelu, NV);
    CHECK(bad_router == 0, "softplus16 / sigmoid16 differ from softplus / sigmoid in %d of %d lanes", bad_router, NV);
    free(x);
}

static double attention_loss(void* p) {
    OpCtx* c = (OpCtx*)p;
    attention_forward(c->out, c->mean, c->inp, c->B, c->T, c->C, c->NH);  // mean holds att here
    return dot_d(c->out, c->w, (size_t)c->B * c->T * c->C);
}
static void test_attention(void) {
    OpCtx c = {0};
    c.B = 2; c.T = 5; c.C = 12; c.NH = 3;
    size_t nqkv = (size_t)c.B * c.T * 3 * c.C, nout = (size_t)c.B * c.T * c.C;
    c.inp = fmalloc(nqkv); c.out = fmalloc(nout); c.w = fmalloc(nout);
    c.mean = fmalloc((size_t)c.B * c.NH * c.T * c.T);
    fill_uniform(c.inp, nqkv, 1.5f); fill_uniform(c.w, nout, 1.0f);
    float* dqkv = fmalloc(nqkv);
    float* scratch = fmalloc((size_t)c.B * c.NH * c.T * c.T);
    attention_loss(&c);
    attention_backward(dqkv, c.w, c.inp, c.mean, c.B, c.T, c.C, c.NH, scratch);
    free(scratch);
    fd_check("attention", "qkv", c.inp, nqkv, dqkv, attention_loss, &c, 1e-2f, 1e-2, 1e-3, 360);
    free(c.inp); free(c.out); free(c.w); free(c.mean); free(dqkv);
}

static double gelu_loss(void* p) {
    OpCtx* c = (OpCtx*)p;
    gelu_forward(c->out, c->inp, (size_t)c->N);
    return dot_d(c->out, c->w, (size_t)c->N);
}
static void test_gelu(void) {
    OpCtx c = {0};
    c.N = 64;
    c.inp = fmalloc(c.N); c.out = fmalloc(c.N); c.w = fmalloc(c.N);
    for (int i = 0; i < c.N; i++) c.inp[i] = -6.0f + 12.0f * i / (c.N - 1);  // covers both tails
    fill_uniform(c.w, c.N, 1.0f);
    float* dinp = fmalloc(c.N);
    gelu_backward(dinp, c.inp, c.w, c.N);
    fd_check("gelu", "inp", c.inp, c.N, dinp, gelu_loss, &c, 1e-3f, 1e-2, 1e-4, 64);
    free(c.inp); free(c.out); free(c.w); free(dinp);
}

static double crossentropy_loss(void* p) {
    OpCtx* c = (OpCtx*)p;
    return crossentropy_forward(c->out, c->mean, c->inp, c->targets, c->N, c->V, c->Vp);
}
static void test_crossentropy(void) {
    OpCtx c = {0};
    c.N = 5; c.V = 11; c.Vp = 16;
    int targets[5] = {0, 3, 10, 7, 3};
    c.targets = targets;
    c.inp = fmalloc((size_t)c.N * c.Vp); c.out = fmalloc(c.N); c.mean = fmalloc(c.N);
    fill_uniform(c.inp, (size_t)c.N * c.Vp, 3.0f);
    float* grad = fmalloc((size_t)c.N * c.Vp);
    crossentropy_loss(&c);
    memcpy(grad, c.inp, sizeof(float) * c.N * c.Vp);
    crossentropy_backward_inplace(grad, c.mean, targets, 1.0f / c.N, c.N, c.V, c.Vp);
    fd_check("crossentropy", "logits", c.inp, (size_t)c.N * c.Vp, grad, crossentropy_loss, &c, 1e-2f, 1e-2, 1e-4, 80);
    // the padding columns get exactly zero gradient and do not change the loss
    int pad_zero = 1;
    for (int n = 0; n < c.N; n++) for (int v = c.V; v < c.Vp; v++) pad_zero &= grad[n * c.Vp + v] == 0.0f;
    CHECK(pad_zero, "crossentropy: padded vocab columns must get zero gradient");
    free(c.inp); free(c.out); free(c.mean); free(grad);
}

// The gate normalisations on one token: loss = sum_k w_k alpha_k(sel).
typedef struct { float sel[8]; int idx[8]; float gate[8]; float w[8]; int E, K, norm; } GateCtx;
static double gate_loss(void* p) {
    GateCtx* g = (GateCtx*)p;
    gate_weights(g->gate, g->sel, g->idx, g->E, g->K, g->norm);
    return dot_d(g->gate, g->w, g->K);
}
static void test_gate_weights(void) {
    for (int norm = 0; norm < 2; norm++) {
        GateCtx g = {.E = 6, .K = 3, .norm = norm};
        float sel[6] = {0.3f, -1.2f, 2.0f, 0.9f, -0.4f, 1.4f};
        memcpy(g.sel, sel, sizeof(sel));
        topk_indices(g.sel, g.E, g.K, g.idx);
        CHECK(g.idx[0] == 2 && g.idx[1] == 3 && g.idx[2] == 5, "topk_indices: expected {2,3,5}, got {%d,%d,%d}",
              g.idx[0], g.idx[1], g.idx[2]);
        for (int k = 0; k < g.K; k++) g.w[k] = urand();
        gate_loss(&g);
        float dsel[8] = {0};
        gate_weights_backward(dsel, g.w, g.gate, g.sel, g.idx, g.E, g.K, norm);
        fd_check(norm ? "gate softmax_topk" : "gate topk_softmax", "logits", g.sel, g.E, dsel, gate_loss, &g,
                 1e-3f, 1e-2, 1e-5, 6);
    }
    // hand-computed weights: logits (1, 0, 2, -1), K=2 -> experts {0, 2}
    float sel[4] = {1.0f, 0.0f, 2.0f, -1.0f}, gate[2];
    int idx[2];
    topk_indices(sel, 4, 2, idx);
    gate_weights(gate, sel, idx, 4, 2, GATE_TOPK_SOFTMAX);
    double e1 = exp(1.0), e2 = exp(2.0), e0 = 1.0, em = exp(-1.0);
    CHECK(idx[0] == 0 && idx[1] == 2 && fabs(gate[0] - e1 / (e1 + e2)) < 1e-6 && fabs(gate[1] - e2 / (e1 + e2)) < 1e-6,
          "topk_softmax weights on (1,0,2,-1): got %g %g", gate[0], gate[1]);
    gate_weights(gate, sel, idx, 4, 2, GATE_SOFTMAX_TOPK);
    double Z = e1 + e0 + e2 + em;
    CHECK(fabs(gate[0] - e1 / Z) < 1e-6 && fabs(gate[1] - e2 / Z) < 1e-6, "softmax_topk weights: got %g %g", gate[0], gate[1]);
    // ties break toward the lower index
    float tied[5] = {0.5f, 0.7f, 0.7f, 0.5f, 0.7f};
    int tidx[2];
    topk_indices(tied, 5, 2, tidx);
    CHECK(tidx[0] == 1 && tidx[1] == 2, "top-k tie-break: expected {1,2}, got {%d,%d}", tidx[0], tidx[1]);
    // the one-pass selection against the K-pass definition: many ties (values on a coarse grid), +-0,
    // +-inf and sometimes a NaN, E up to 256, K up to E
    uint64_t rng = 7;
    int agree = 0, trials = 3000;
    for (int t = 0; t < trials; t++) {
        int E = 1 + (int)(random_u32(&rng) % 256), K = 1 + (int)(random_u32(&rng) % (E < 8 ? E : 8));
        if (t % 50 == 0) K = E;
        float v[256];
        for (int e = 0; e < E; e++) {
            uint32_t r = random_u32(&rng) % 100;
            v[e] = r < 3 ? -0.0f : r < 5 ? INFINITY : r < 7 ? -INFINITY : (float)((int)(random_u32(&rng) % 9) - 4) * 0.25f;
        }
        if (t % 7 == 0) v[random_u32(&rng) % E] = NAN;
        int a[256], b[256], same = 1;
        topk_indices(v, E, K, a);
        topk_indices_passes(v, E, K, b);
        for (int k = 0; k < K; k++) same &= a[k] == b[k];
        agree += same;
    }
    CHECK(agree == trials, "one-pass top-K agrees with the K-pass definition in %d of %d random cases (ties, +-0, inf, NaN)",
          agree, trials);
}

// ----------------------------------------------------------------------------
// GatePro (docs/routers.md) on constructed router weights and logits

static void test_gatepro(void) {
    // router rows: 0 and 1 nearly parallel, 2 and 3 nearly parallel, 4 alone (closest to 0)
    enum { E = 5, C = 3 };
    float w[E * C] = {1, 0, 0,   0.9f, 0.1f, 0,   0, 1, 0,   0, 0.95f, 0.2f,   0.6f, -0.2f, 0.7f};
    float S[E * E];
    int sib[E];
    router_similarity(S, sib, w, E, C);
    CHECK(sib[0] == 1 && sib[1] == 0 && sib[2] == 3 && sib[3] == 2 && sib[4] == 0,
          "gatepro siblings: expected {1,0,3,2,0}, got {%d,%d,%d,%d,%d}", sib[0], sib[1], sib[2], sib[3], sib[4]);
    CHECK(fabsf(S[0 * E + 1] - 0.9f / sqrtf(0.82f)) < 1e-6f && fabsf(S[0] - 1.0f) < 1e-6f, "gatepro: cosine S wrong");
    // zero row: cosine 0, never NaN (F.normalize convention)
    float wz[2 * C] = {0, 0, 0, 1, 2, 3};
    float Sz[4];
    int sz[2];
    router_similarity(Sz, sz, wz, 2, C);
    CHECK(Sz[1] == 0.0f && Sz[2] == 0.0f && Sz[0] == 0.0f, "gatepro: a zero router row must give cosine 0");
    // logits: expert 0 (1.0) beats its sibling 1 (0.8): 1 loses; 2 (0.5) loses to 3 (0.5)? a tie is
    // no loss; 4 (0.9) vs sibling 0 (1.0): 4 loses.
    float logits[E] = {1.0f, 0.8f, 0.5f, 0.5f, 0.9f}, sel[E];
    gatepro_penalize(sel, logits, sib, 0.3f, E);
    float expect[E] = {1.0f, 0.5f, 0.5f, 0.5f, 0.6f};
    int ok = 1;
    for (int i = 0; i < E; i++) ok &= fabsf(sel[i] - expect[i]) < 1e-6f;
    CHECK(ok, "gatepro penalty: got {%g,%g,%g,%g,%g}, expected {1,0.5,0.5,0.5,0.6}", sel[0], sel[1], sel[2], sel[3], sel[4]);
    // selection and weights come from the penalised logits: K=2 -> {0, 4} (0.6 beats the 0.5s)
    int idx[2];
    float gate[2];
    topk_indices(sel, E, 2, idx);
    gate_weights(gate, sel, idx, E, 2, GATE_TOPK_SOFTMAX);
    double a0 = exp(1.0) / (exp(1.0) + exp(0.6));
    CHECK(idx[0] == 0 && idx[1] == 4 && fabs(gate[0] - a0) < 1e-6, "gatepro selection/weights: got {%d,%d} %g", idx[0], idx[1], gate[0]);
    // lambda = 0 is exactly topk
    gatepro_penalize(sel, logits, sib, 0.0f, E);
    CHECK(memcmp(sel, logits, sizeof(sel)) == 0, "gatepro with lambda 0 must equal topk");
    // lambda = 1e4 acts as a hard mask: with K=2, no selected expert loses unless fewer than K winners
    // (siblings in a 5-cycle here, so a token can have a single winner)
    int cyc[E] = {1, 2, 3, 4, 0};
    uint64_t r = 5;
    int violations = 0, fewer = 0;
    for (int trial = 0; trial < 2000; trial++) {
        float l[E], s2[E];
        for (int i = 0; i < E; i++) l[i] = (float)(random_u32(&r) % 7) * 0.25f;  // many ties on purpose
        gatepro_penalize(s2, l, cyc, 1e4f, E);
        int winners = 0;
        for (int i = 0; i < E; i++) winners += s2[i] == l[i];
        int id[2];
        float g[2];
        topk_indices(s2, E, 2, id);
        gate_weights(g, s2, id, E, 2, GATE_TOPK_SOFTMAX);
        int losers_selected = (s2[id[0]] != l[id[0]]) + (s2[id[1]] != l[id[1]]);
        if (winners >= 2 && losers_selected > 0) violations++;
        if (winners < 2) fewer++;
        if (!(isfinite(g[0]) && isfinite(g[1]))) violations++;
        // the top-1 expert by raw logit never loses
        int best = 0;
        for (int i = 1; i < E; i++) if (l[i] > l[best]) best = i;
        if (s2[best] != l[best]) violations++;
    }
    CHECK(violations == 0, "gatepro lambda=1e4: %d violations of the hard-mask rule in 2000 random tokens", violations);
    CHECK(fewer > 0, "gatepro lambda=1e4 test should include tokens with fewer than K winners");
    // the hot-swap window
    RouterConfig rc = router_config(ROUTER_GATEPRO, 0, 0.01f, 0.0f, 1e-4f, 3, 6);
    CHECK(!gatepro_active_at(&rc, 2) && gatepro_active_at(&rc, 3) && gatepro_active_at(&rc, 5) && !gatepro_active_at(&rc, 6),
          "gatepro start/stop window wrong");
    rc.gatepro_stop = -1;
    CHECK(gatepro_active_at(&rc, 1000000), "gatepro stop -1 means never");
}

// ----------------------------------------------------------------------------
// CompeteSMoE on constructed expert outputs (docs/routers.md)

// Experts whose output is a constant vector (W1 = W2 = 0, b2 = o_e), one token with a chosen
// router input, so every quantity has a value computed here by hand from the definitions.
// routers.h's vectorizable softplus and sigmoid (CompeteSMoE's responses and their backward)
// against double-precision libm: relative error within 4 float ulps wherever the result is a
// normal float, absolute error below the smallest normal float where exp_approx's clamp at -87
// stands in for the underflow.
static void test_compete_softplus(void) {
    double worst_sp = 0, worst_sig = 0, worst_tail = 0;
    for (double x = -120.0; x <= 120.0; x += 0.00097) {
        float xf = (float)x;
        double sp = xf > 0 ? xf + log1p(exp(-(double)xf)) : log1p(exp((double)xf));
        double sig = 1.0 / (1.0 + exp(-(double)xf));
        if (xf >= -80.0f) {
            if (fabs(softplus(xf) - sp) / sp > worst_sp) worst_sp = fabs(softplus(xf) - sp) / sp;
            if (fabs(sigmoid(xf) - sig) / sig > worst_sig) worst_sig = fabs(sigmoid(xf) - sig) / sig;
        } else {
            double tail = fmax(fabs(softplus(xf) - sp), fabs(sigmoid(xf) - sig));
            if (tail > worst_tail) worst_tail = tail;
        }
    }
    CHECK(worst_sp < 4.8e-7 && worst_sig < 4.8e-7 && worst_tail < 2e-38, "softplus / sigmoid vs libm in double: "
          "largest relative error %.3g / %.3g on [-80, 120], absolute %.3g below", worst_sp, worst_sig, worst_tail);
    CHECK(softplus(0.0f) == (float)log(2.0) || fabsf(softplus(0.0f) - (float)log(2.0)) < 1e-7f, "softplus(0) = %.9g", softplus(0.0f));
}

static void test_compete_hand(void) {
    enum { E = 3, K = 2, C = 2 };
    MoEConfig cfg = {.max_seq_len = 1, .vocab_size = 4, .padded_vocab_size = 128, .num_layers = 1, .num_heads = 1,
                     .channels = C, .n_expert = E, .top_k = K, .expert_hidden = 4};
    const double o[E][C] = {{1.0, -1.0}, {2.0, 0.0}, {0.3, 0.5}};
    const double logit[E] = {0.5, -0.2, 0.1};
    for (int mode = 0; mode < 2; mode++) {
        for (int with_alpha = 0; with_alpha < 2; with_alpha++) {
            MoEModel m;
            moe_build(&m, &cfg);
            m.router = router_config(ROUTER_COMPETE, 0, 0.01f, 0.0f, 1e-4f, 0, -1);
            m.router.compete_weights = mode;
            m.router.compete_alpha = with_alpha ? 0.25f : 0.0f;
            for (int e = 0; e < E; e++) {
                for (int i = 0; i < C; i++) m.params.fcprojb[e * C + i] = (float)o[e][i];
                m.params.routerw[e * C + 0] = (float)logit[e];  // x = (1, 0) gives l = W_g x = logit
            }
            moe_alloc_activations(&m, 1, 1);
            compete_alloc(&m, 1);
            m.acts.ln2[0] = 1.0f; m.acts.ln2[1] = 0.0f;
            float y[C];
            compete_layer_forward(&m, 0, 0, 1, y);
            // by hand
            double s[E], pc[E], pr[E], zs = 0, zr = 0;
            for (int e = 0; e < E; e++) {
                s[e] = 0;
                for (int i = 0; i < C; i++) s[e] += log1p(exp(o[e][i])) / C;
            }
            for (int e = 0; e < E; e++) { zs += exp(s[e]); zr += exp(logit[e]); }
            for (int e = 0; e < E; e++) { pc[e] = exp(s[e]) / zs; pr[e] = exp(logit[e]) / zr; }
            int w0 = 1, w1 = 2;  // s = (0.813, 1.410, 0.834): winners {1, 2}
            double a = mode == 0 ? s[w0] / (s[w0] + s[w1]) : exp(s[w0]) / (exp(s[w0]) + exp(s[w1]));
            double b = 1.0 - a;
            double ld = 0.0, alpha = with_alpha ? 0.25 : 0.0;
            for (int e = 0; e < E; e++) ld += (pr[e] - pc[e]) * (pr[e] - pc[e]) / E;
            ld += alpha * ((pc[w0] - pr[w0]) * (pc[w0] - pr[w0]) + (pc[w1] - pr[w1]) * (pc[w1] - pr[w1])) / K;
            double cos12 = (o[1][0] * o[2][0] + o[1][1] * o[2][1]) / (sqrt(4.0) * sqrt(0.09 + 0.25));
            double div = 2.0 * cos12 / (K * K);
            double bal = E * (0.5 * pc[w0] + 0.5 * pc[w1]);
            const float* resp = m.compete.response;
            CHECK(fabs(resp[0] - s[0]) < 1e-6 && fabs(resp[1] - s[1]) < 1e-6 && fabs(resp[2] - s[2]) < 1e-6,
                  "compete responses: got (%g, %g, %g), expected (%g, %g, %g)", resp[0], resp[1], resp[2], s[0], s[1], s[2]);
            CHECK(m.idx.expert_index[0] == w0 && m.idx.expert_index[1] == w1, "compete winners: got {%d,%d}, expected {1,2}",
                  m.idx.expert_index[0], m.idx.expert_index[1]);
            CHECK(fabs(m.acts.gate[0] - a) < 1e-6 && fabs(m.acts.gate[1] - b) < 1e-6, "compete weights (%s): got %g %g, expected %g %g",
                  COMPETE_WEIGHTS_NAMES[mode], m.acts.gate[0], m.acts.gate[1], a, b);
            CHECK(fabs(y[0] - (a * o[1][0] + b * o[2][0])) < 1e-6 && fabs(y[1] - (a * o[1][1] + b * o[2][1])) < 1e-6,
                  "compete output y wrong");
            const float* pcm = m.compete.response_p;
            CHECK(fabs(pcm[0] - pc[0]) < 1e-6 && fabs(pcm[1] - pc[1]) < 1e-6 && fabs(pcm[2] - pc[2]) < 1e-6, "compete p^C wrong");
            const LayerLosses* st = &m.layer_stats[0];
            CHECK(fabs(st->router_distill - ld) < 1e-7, "compete L_D (alpha %g): got %.8g, expected %.8g", alpha, st->router_distill, ld);
            CHECK(fabs(st->diversity - div) < 1e-6, "compete L_div: got %g, expected %g", st->diversity, div);
            CHECK(fabs(st->compete_balance - bal) < 1e-6, "compete balance: got %g, expected %g", st->compete_balance, bal);
            CHECK(fabs(st->agreement - 0.5) < 1e-6, "compete agreement: router picks {0,2}, competition {1,2}: expected 0.5, got %g", st->agreement);
            moe_free(&m);
        }
    }
}

static void test_compete_schedule(void) {
    enum { S = 4000, L = 4 };
    unsigned char* a = (unsigned char*)mallocCheck(S * L);
    unsigned char* b = (unsigned char*)mallocCheck(S * L);
    long na = compete_schedule(a, S, L, 0.05f, 0.05f, 3, 1337);
    long nb = compete_schedule(b, S, L, 0.05f, 0.05f, 3, 1337);
    CHECK(na == nb && memcmp(a, b, S * L) == 0, "compete schedule: the same seed must give the same schedule");
    compete_schedule(b, S, L, 0.05f, 0.05f, 3, 1338);
    CHECK(memcmp(a, b, S * L) != 0, "compete schedule: another seed should give another schedule");
    int W = (int)floor(0.05 * S), warm_ok = 1;
    for (int s = 0; s < W; s++) for (int l = 0; l < L; l++) warm_ok &= a[s * L + l] == 0;
    CHECK(warm_ok, "compete schedule: no competition during the warm-up");
    // realised rate within sampling error: n = L (S - W) draws, sd = sqrt(n p (1-p))
    double n = (double)L * (S - W), p = 0.05, sd = sqrt(n * p * (1 - p));
    CHECK(fabs(na - n * p) < 4 * sd, "compete schedule: %ld pairs placed, expected %.0f +- %.0f", na, n * p, 4 * sd);
    // the cap: rate 1 would put all 4 layers in every step; at most 2 allowed
    long nc = compete_schedule(b, S, L, 1.0f, 0.0f, 2, 7);
    int cap_ok = 1;
    for (int s = 0; s < S; s++) { int c = 0; for (int l = 0; l < L; l++) c += b[s * L + l]; cap_ok &= c <= 2; }
    CHECK(cap_ok && nc == 2L * S, "compete schedule: cap of 2 layers per step violated or not filled (%ld placed)", nc);
    // a displaced draw goes to the nearest earlier step with room: cap 1, 2 layers, rate 1, S=3:
    // layer 0 takes steps 0,1,2; layer 1's draws find no room anywhere and are dropped
    unsigned char small[6];
    long ns = compete_schedule(small, 3, 2, 1.0f, 0.0f, 1, 3);
    CHECK(ns == 3 && small[0] && small[2] && small[4] && !small[1] && !small[3] && !small[5], "compete schedule: cap placement wrong");
    free(a); free(b);
}

// ----------------------------------------------------------------------------
// MoE metrics (docs/metrics.md) on constructed inputs with hand-computed answers

// The test's independent eigenvalue oracle: cyclic Jacobi rotations (metrics.h's predecessor, slow
// and simple): each rotation zeroes one off-diagonal pair; sweeps until the off-diagonal mass is negligible.
static void jacobi_eigenvalues(double* A, int n, double* eig) {
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0.0, diag = 0.0;
        for (int i = 0; i < n; i++) {
            diag += A[i * n + i] * A[i * n + i];
            for (int j = i + 1; j < n; j++) off += A[i * n + j] * A[i * n + j];
        }
        if (off <= 1e-30 * (diag + 1e-300)) break;
        for (int p = 0; p < n; p++) {
            for (int q = p + 1; q < n; q++) {
                double apq = A[p * n + q];
                if (fabs(apq) < 1e-300) continue;
                // rotation angle that zeroes A[p][q]: tan(2 theta) = 2 apq / (aqq - app)
                double theta = (A[q * n + q] - A[p * n + p]) / (2.0 * apq);
                double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1.0));
                double c = 1.0 / sqrt(t * t + 1.0), s = t * c;
                for (int k = 0; k < n; k++) {  // A <- A J (columns p, q)
                    double akp = A[k * n + p], akq = A[k * n + q];
                    A[k * n + p] = c * akp - s * akq;
                    A[k * n + q] = s * akp + c * akq;
                }
                for (int k = 0; k < n; k++) {  // A <- J^T A (rows p, q)
                    double apk = A[p * n + k], aqk = A[q * n + k];
                    A[p * n + k] = c * apk - s * aqk;
                    A[q * n + k] = s * apk + c * aqk;
                }
            }
        }
    }
    for (int i = 0; i < n; i++) eig[i] = A[i * n + i];
}

// metrics.h's Householder + implicit-QR eigenvalues against Jacobi's, sorted, on the matrices the
// metrics meet: Gram matrices of unit rows (router similarity S), rank-deficient when E > D (xmoe's
// small D), and degenerate ones (identity, zero, diagonal, 1x1, 2x2).
static void test_symmetric_eigenvalues(void) {
    const int sizes[][2] = {{1, 4}, {2, 3}, {3, 8}, {8, 256}, {64, 256}, {128, 16}, {128, 256}, {256, 64}};
    uint64_t rng = 99;
    for (int t = 0; t < (int)(sizeof(sizes) / sizeof(sizes[0])) + 3; t++) {
        int n = t < 8 ? sizes[t][0] : 40, D = t < 8 ? sizes[t][1] : 0;
        double* A = (double*)malloc(sizeof(double) * n * n), *B = (double*)malloc(sizeof(double) * n * n);
        double* fast = (double*)malloc(sizeof(double) * n), *ref = (double*)malloc(sizeof(double) * n);
        const char* what = "Gram of unit rows";
        if (t < 8) {
            float* w = (float*)malloc(sizeof(float) * n * D);
            for (int i = 0; i < n * D; i++) w[i] = 2.0f * random_f32(&rng) - 1.0f;
            for (int i = 0; i < n; i++) {
                double norm = 0;
                for (int c = 0; c < D; c++) norm += (double)w[i * D + c] * w[i * D + c];
                for (int c = 0; c < D; c++) w[i * D + c] = (float)(w[i * D + c] / sqrt(norm));
            }
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++) {
                    double d = 0;
                    for (int c = 0; c < D; c++) d += (double)w[i * D + c] * w[j * D + c];
                    A[i * n + j] = d;
                }
            for (int i = 0; i < n; i++) for (int j = 0; j < i; j++) A[i * n + j] = A[j * n + i];   // exactly symmetric
            free(w);
        } else {
            what = t == 8 ? "identity" : t == 9 ? "zero" : "diagonal";
            for (int i = 0; i < n * n; i++) A[i] = 0;
            for (int i = 0; i < n; i++) A[i * n + i] = t == 8 ? 1.0 : t == 9 ? 0.0 : (double)((i * 7) % 5) - 2.0;
        }
        memcpy(B, A, sizeof(double) * n * n);
        symmetric_eigenvalues(A, n, fast);
        jacobi_eigenvalues(B, n, ref);
        for (int i = 1; i < n; i++)   // sort the oracle's (fast's come sorted: checked below)
            for (int j = i; j > 0 && ref[j - 1] > ref[j]; j--) { double x = ref[j]; ref[j] = ref[j - 1]; ref[j - 1] = x; }
        double worst = 0, scale = 1e-300;
        int sorted = 1;
        for (int i = 0; i < n; i++) {
            if (fabs(fast[i] - ref[i]) > worst) worst = fabs(fast[i] - ref[i]);
            if (fabs(ref[i]) > scale) scale = fabs(ref[i]);
            if (i > 0 && fast[i] < fast[i - 1]) sorted = 0;
        }
        CHECK(sorted && worst <= 1e-11 * (scale > 1 ? scale : 1), "eigenvalues of a %dx%d %s (D=%d): largest "
              "difference from Jacobi %.3g (largest |eigenvalue| %.3g), ascending %d", n, n, what, D, worst, scale, sorted);
        free(A); free(B); free(fast); free(ref);
    }
}

static void test_metrics(void) {
    enum { E = 4, K = 2 };
    LayerMetrics lm;
    double uniform[E] = {50, 50, 50, 50};
    load_stats(uniform, E, K, 100, &lm);
    CHECK(lm.zero_experts == 0 && fabsf(lm.load_cv) < 1e-6f && fabsf(lm.load_entropy - 1.0f) < 1e-6f &&
          fabsf(lm.load_max_mean - 1.0f) < 1e-6f, "uniform load: cv %g entropy %g max/mean %g", lm.load_cv, lm.load_entropy, lm.load_max_mean);
    double one[E] = {200, 0, 0, 0};
    load_stats(one, E, K, 100, &lm);
    CHECK(lm.zero_experts == E - 1 && fabsf(lm.load_entropy) < 1e-6f && fabsf(lm.load_max_mean - E) < 1e-5f &&
          fabsf(lm.load_cv - sqrtf(E - 1)) < 1e-5f, "all tokens on one expert: zero %d cv %g (expect sqrt(3)) entropy %g",
          lm.zero_experts, lm.load_cv, lm.load_entropy);
    // orthogonal router rows: S = I
    float S[E * E] = {0}, abs_mean, angle, spec;
    for (int i = 0; i < E; i++) S[i * E + i] = 1.0f;
    router_diversity(S, E, &abs_mean, &angle, &spec);
    CHECK(fabsf(abs_mean) < 1e-7f && fabsf(angle - (float)M_PI / 2) < 1e-6f && fabsf(spec - logf(E)) < 1e-5f,
          "orthogonal rows: |S| %g angle %g spectral entropy %g (expect 0, pi/2, ln 4)", abs_mean, angle, spec);
    // a known spectrum: [[1, .5], [.5, 1]] has eigenvalues 1.5 and 0.5 -> weights 3/4, 1/4
    float S2[4] = {1.0f, 0.5f, 0.5f, 1.0f};
    router_diversity(S2, 2, &abs_mean, &angle, &spec);
    double h = -0.75 * log(0.75) - 0.25 * log(0.25);
    CHECK(fabs(spec - h) < 1e-5 && fabsf(abs_mean - 0.5f) < 1e-7f && fabsf(angle - acosf(0.5f)) < 1e-6f,
          "spectrum (1.5, 0.5): entropy %g, expected %g", spec, h);
    // Q diag(3, -2, 0.5, 1) Q^T with Q a Householder reflection: the same eigenvalues back
    double v[4] = {1, 2, -1, 0.5}, vv = 0, d[4] = {3, -2, 0.5, 1}, A[16], eig[4];
    for (int i = 0; i < 4; i++) vv += v[i] * v[i];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            double s = 0;
            for (int k = 0; k < 4; k++) {
                double qik = (i == k) - 2 * v[i] * v[k] / vv, qjk = (j == k) - 2 * v[j] * v[k] / vv;
                s += qik * d[k] * qjk;
            }
            A[i * 4 + j] = s;
        }
    symmetric_eigenvalues(A, 4, eig);
    test_symmetric_eigenvalues();
    int found = 0;
    for (int i = 0; i < 4; i++) for (int j = 0; j < 4; j++) found += fabs(eig[i] - d[j]) < 1e-9;
    CHECK(found == 4, "symmetric_eigenvalues: got %g %g %g %g, expected 3 -2 0.5 1", eig[0], eig[1], eig[2], eig[3]);
    // expert x domain: perfect routing -> MI/H = 1; independent -> 0
    double perfect[E * E] = {0}, indep[E * E];
    for (int e = 0; e < E; e++) perfect[e * E + e] = 10;
    for (int i = 0; i < E * E; i++) indep[i] = 5;
    CHECK(fabsf(domain_mutual_information(perfect, E, E) - 1.0f) < 1e-6f, "perfect expert=domain routing: MI/H should be 1");
    CHECK(fabsf(domain_mutual_information(indep, E, E)) < 1e-6f, "independent routing: MI/H should be 0");
    // sibling co-activation on a hand-built routing: siblings 0<->1, 2<->3; token 0 takes {0,1}
    // (2 sibling hits), token 1 takes {0,2} (none): rate 2 / (N K) = 0.5
    MoEModel m;
    memset(&m, 0, sizeof(m));
    int sel[4] = {0, 1, 0, 2}, sib[4] = {1, 0, 3, 2};
    float sim[16] = {0};
    m.idx.expert_index = sel; m.idx.router_sibling = sib; m.acts.router_sim = sim;
    m.batch_size = 1; m.seq_len = 2;
    MoEMetrics mm;
    metrics_init(&mm, 1, E, K, 2);
    uint8_t dom[2] = {0, 1};
    metrics_accumulate(&mm, &m, dom);
    moe_metrics_layer(&mm, &m, 0, &lm);
    CHECK(fabsf(lm.sibling_coact - 0.5f) < 1e-6f && fabsf(lm.sibling_coact_random - 1.0f / 3) < 1e-6f && lm.zero_experts == 1,
          "sibling co-activation: got %g (expect 0.5), random %g (expect 1/3), zero %d", lm.sibling_coact, lm.sibling_coact_random, lm.zero_experts);
    metrics_free(&mm);
    // expert-output similarity: experts with constant outputs b2 = (1,0), (0,1), (-1,0) -> pair
    // cosines 0, -1, 0 -> mean -1/3
    MoEConfig cfg = {.max_seq_len = 2, .vocab_size = 4, .padded_vocab_size = 128, .num_layers = 1, .num_heads = 1,
                     .channels = 2, .n_expert = 3, .top_k = 1, .expert_hidden = 3};
    MoEModel mo;
    moe_build(&mo, &cfg);
    float b2[6] = {1, 0, 0, 1, -1, 0};
    memcpy(mo.params.fcprojb, b2, sizeof(b2));
    moe_alloc_activations(&mo, 1, 2);
    float sim_out = expert_output_similarity(&mo, 0);
    CHECK(fabsf(sim_out + 1.0f / 3) < 1e-6f, "expert-output similarity: got %g, expected -1/3", sim_out);
    moe_free(&mo);
}

// ----------------------------------------------------------------------------
// whole-model finite differences, E > 1, through routers, dispatch and the aux losses

static MoEConfig tiny_config(int E, int K) {
    MoEConfig c = {.max_seq_len = 8, .vocab_size = 37, .padded_vocab_size = 128, .num_layers = 2, .num_heads = 2,
                   .channels = 16, .n_expert = E, .top_k = K, .expert_hidden = 24};
    return c;
}

typedef struct { MoEModel* m; const int* inp; const int* tgt; int B, T; RoutingMode mode; } ModelCtx;
static double model_loss(void* p) {
    ModelCtx* c = (ModelCtx*)p;
    moe_forward(c->m, c->inp, c->tgt, c->B, c->T, &c->mode);
    return (double)c->m->mean_loss + c->m->aux_loss + c->m->z_loss + c->m->compete_loss;
}

// Finite differences of the total loss for a spread of entries of every parameter tensor. An
// entry whose +-eps changes a routing decision is skipped (top-k is not differentiable there).
static void test_model_fd(int router, int gate_norm) {
    MoEConfig cfg = tiny_config(4, 2);
    if (router == ROUTER_XMOE) cfg.xmoe_dim = 5;
    MoEModel m;
    moe_build(&m, &cfg);
    moe_init_params(&m, 7, 1.0f);
    if (router == ROUTER_AUXFREE) fill_uniform(m.params.router_bias, m.param_sizes[17], 1.0f);  // a bias that steers
    if (router == ROUTER_XMOE) fill_uniform(m.params.xmoe_log_temp, m.param_sizes[20], 0.5f);  // tau around 1
    fill_uniform(m.params.ln1b, m.param_sizes[3], 0.1f);
    fill_uniform(m.params.ln2b, m.param_sizes[9], 0.1f);
    fill_uniform(m.params.fcb, m.param_sizes[12], 0.1f);
    for (size_t i = 0; i < m.param_sizes[11]; i++) m.params.fcw[i] *= 10.0f;  // wake the experts up
    m.router = router_config(router, gate_norm, 0.5f, 0.05f, 0.3f, 0, -1);  // large aux/z so their gradients show
    // CompeteSMoE: layer 0 competes, layer 1 takes a router step; large coefficients so every path shows
    unsigned char competing[2] = {1, 0};
    RoutingMode mode = {0, 0, router == ROUTER_COMPETE ? competing : NULL};
    if (router == ROUTER_COMPETE) {
        m.router.compete_weights = gate_norm;  // reuse the loop: 0 norm, 1 softmax
        m.router.compete_alpha = 0.3f;
        m.router.compete_router_coef = 0.5f;
        m.router.compete_div_coef = 0.3f;
        m.router.compete_bal_coef = 0.3f;
    }
    int B = 2, T = 6, inp[12], tgt[12];
    for (int i = 0; i < B * T; i++) { inp[i] = (i * 7 + 3) % 37; tgt[i] = (i * 5 + 1) % 37; }
    ModelCtx c = {&m, inp, tgt, B, T, mode};
    moe_zero_grad(&m);
    model_loss(&c);
    moe_backward(&m, 1.0f);
    size_t N = (size_t)cfg.num_layers * B * T * cfg.top_k, NE = (size_t)cfg.num_layers * B * T * cfg.n_expert;
    int* base_routing = (int*)mallocCheck(N * sizeof(int));
    unsigned char* base_losers = (unsigned char*)mallocCheck(NE);
    unsigned char* losers = (unsigned char*)mallocCheck(NE);
    model_loss(&c);
    memcpy(base_routing, m.idx.expert_index, N * sizeof(int));
    for (size_t i = 0; i < NE; i++) base_losers[i] = m.acts.gate_logits[i] != m.acts.router_logits[i];
    const float eps = 2e-3f;
    int bad = 0, checked = 0, skipped = 0;
    size_t offset = 0;
    for (int ti = 0; ti < NUM_PARAMETER_TENSORS; ti++) {
        size_t n = m.param_sizes[ti];
        size_t stride = n > 12 ? n / 12 : 1;
        for (size_t i = 0; i < n; i += stride) {
            float* x = m.params_memory + offset + i;
            float keep = *x;
            *x = keep + eps; double lp = model_loss(&c);
            for (size_t q = 0; q < NE; q++) losers[q] = m.acts.gate_logits[q] != m.acts.router_logits[q];
            int moved = memcmp(base_routing, m.idx.expert_index, N * sizeof(int)) != 0 || memcmp(base_losers, losers, NE) != 0;
            *x = keep - eps; double lm = model_loss(&c);
            for (size_t q = 0; q < NE; q++) losers[q] = m.acts.gate_logits[q] != m.acts.router_logits[q];
            moved |= memcmp(base_routing, m.idx.expert_index, N * sizeof(int)) != 0 || memcmp(base_losers, losers, NE) != 0;
            *x = keep;
            if (moved) { skipped++; continue; }
            double fd = (lp - lm) / (2.0 * eps), an = m.grads_memory[offset + i];
            if (fabs(fd - an) > 2e-3 + 2e-2 * fabs(fd)) {
                if (bad++ < 5) printf("  model(%s,%s) %s[%zu]: analytic %.7g finite-diff %.7g\n", ROUTER_NAMES[router],
                                      GATE_NORM_NAMES[gate_norm], PARAM_NAMES[ti], i, an, fd);
            }
            checked++;
        }
        offset += n;
    }
    CHECK(bad == 0 && checked > 120, "whole model (%s, %s): %d of %d gradient entries differ from finite differences "
          "(%d skipped at routing changes)", ROUTER_NAMES[router], GATE_NORM_NAMES[gate_norm], bad, checked, skipped);
    if (router == ROUTER_COMPETE) CHECK(m.layer_stats[0].competed && !m.layer_stats[1].competed && m.compete_loss > 0,
                                        "compete FD test: layer 0 should compete and layer 1 not");
    free(base_routing); free(base_losers); free(losers);
    moe_free(&m);
}

// ----------------------------------------------------------------------------
// the PyTorch reference (dev/moe_ref.py -> dev/ref/<case>_{model,state}.bin)

typedef struct {
    int header[256];
    int *inputs, *targets, *routing;
    float *logits, *grads, *lm_losses, *total_losses;
    float lm_loss, aux_loss, z_loss;
} RefState;

static int read_ref_state(const char* path, RefState* s, int Vp, size_t nparams) {
    FILE* f = fopen(path, "rb");
    if (f == NULL) return -1;
    if (fread(s->header, 4, 256, f) != 256) { fclose(f); return -1; }
    int B = s->header[2], T = s->header[3], nsteps = s->header[4], K = s->header[12], L = s->header[13];
    if (s->header[0] != 20261128 || (size_t)s->header[11] != nparams) { fclose(f); return -1; }
    size_t BT = (size_t)B * T;
    s->inputs = (int*)mallocCheck(BT * 4); s->targets = (int*)mallocCheck(BT * 4);
    s->logits = fmalloc(BT * Vp); s->routing = (int*)mallocCheck((size_t)L * BT * K * 4);
    s->grads = fmalloc(nparams); s->lm_losses = fmalloc(nsteps); s->total_losses = fmalloc(nsteps);
    int ok = fread(s->inputs, 4, BT, f) == BT && fread(s->targets, 4, BT, f) == BT &&
             fread(s->logits, 4, BT * Vp, f) == BT * Vp && fread(&s->lm_loss, 4, 1, f) == 1 &&
             fread(&s->aux_loss, 4, 1, f) == 1 && fread(&s->z_loss, 4, 1, f) == 1 &&
             fread(s->routing, 4, (size_t)L * BT * K, f) == (size_t)L * BT * K &&
             fread(s->grads, 4, nparams, f) == nparams && fread(s->lm_losses, 4, nsteps, f) == (size_t)nsteps &&
             fread(s->total_losses, 4, nsteps, f) == (size_t)nsteps;
    fclose(f);
    return ok ? 0 : -1;
}
static void free_ref_state(RefState* s) {
    free(s->inputs); free(s->targets); free(s->routing); free(s->logits); free(s->grads);
    free(s->lm_losses); free(s->total_losses);
}

static double worst_grad_rel_error = 0.0;

// Tolerances, against a float64 reference: logits 1e-4 absolute; losses 1e-5 relative; each
// gradient tensor max|g - g_ref| <= 1e-5 * max|g_ref| + 1e-7; the 10 AdamW-step losses 1e-4 relative.
static void test_pytorch_reference(const char* name) {
    char mpath[256], spath[256], err[512];
    snprintf(mpath, sizeof(mpath), "dev/ref/%s_model.bin", name);
    snprintf(spath, sizeof(spath), "dev/ref/%s_state.bin", name);
    MoEModel m;
    memset(&m, 0, sizeof(m));
    if (moe_load_checkpoint(&m, mpath, NULL, NULL, err, sizeof(err)) != 0) {
        CHECK(0, "reference %s: %s (run /usr/bin/python3 dev/moe_ref.py --outdir dev/ref)", name, err);
        return;
    }
    RefState s;
    if (read_ref_state(spath, &s, m.config.padded_vocab_size, m.num_parameters) != 0) {
        CHECK(0, "reference %s: cannot read %s", name, spath);
        moe_free(&m);
        return;
    }
    m.router.aux_loss_coef = bits_float((uint32_t)s.header[8]);
    m.router.z_loss_coef = bits_float((uint32_t)s.header[9]);
    m.router.gate_norm = s.header[15];
    m.router.router = s.header[14];
    int B = s.header[2], T = s.header[3], nsteps = s.header[4];
    int K = m.config.top_k, L = m.config.num_layers, Vp = m.config.padded_vocab_size;
    // CompeteSMoE: state [16] = bitmask of the layers that compete at every forward, [17] = float
    // bits of the first forward's compete loss (the checkpoint carries the compete settings)
    unsigned char* compete = NULL;
    if (m.router.router == ROUTER_COMPETE) {
        compete = (unsigned char*)callocCheck((size_t)L, 1);
        for (int l = 0; l < L; l++) compete[l] = (unsigned char)((s.header[16] >> l) & 1);
    }
    RoutingMode mode = {0, 1, compete};  // GatePro's window is [0, end) in the reference
    float lr = bits_float((uint32_t)s.header[5]), wd = bits_float((uint32_t)s.header[6]);
    float clip = bits_float((uint32_t)s.header[7]);

    moe_forward(&m, s.inputs, s.targets, B, T, &mode);
    int routing_ok = m.config.n_expert == 1 ||
                     memcmp(m.idx.expert_index, s.routing, sizeof(int) * (size_t)L * B * T * K) == 0;
    CHECK(routing_ok, "reference %s: routing decisions differ from PyTorch's", name);
    double max_logit = 0.0;
    for (size_t i = 0; i < (size_t)B * T * Vp; i++) max_logit = fmax(max_logit, fabs(m.acts.logits[i] - s.logits[i]));
    CHECK(max_logit < 1e-4, "reference %s: logits differ by up to %g (tolerance 1e-4)", name, max_logit);
    CHECK(fabs(m.mean_loss - s.lm_loss) < 1e-5 * fabs(s.lm_loss), "reference %s: LM loss %.7f vs %.7f", name, m.mean_loss, s.lm_loss);
    CHECK(fabs(m.aux_loss - s.aux_loss) < 1e-5 * fabs(s.aux_loss) + 1e-8, "reference %s: aux loss %.7g vs %.7g", name, m.aux_loss, s.aux_loss);
    CHECK(fabs(m.z_loss - s.z_loss) < 1e-5 * fabs(s.z_loss) + 1e-8, "reference %s: z loss %.7g vs %.7g", name, m.z_loss, s.z_loss);
    if (compete != NULL) {
        float ref_compete = bits_float((uint32_t)s.header[17]);
        CHECK(fabs(m.compete_loss - ref_compete) < 1e-5 * fabs(ref_compete) + 1e-8, "reference %s: compete loss %.7g vs %.7g",
              name, m.compete_loss, ref_compete);
    }
    moe_zero_grad(&m);
    moe_backward(&m, 1.0f);
    size_t offset = 0;
    for (int ti = 0; ti < NUM_PARAMETER_TENSORS; ti++) {
        size_t n = m.param_sizes[ti];
        double maxref = 0.0, maxdiff = 0.0;
        size_t at = 0;
        for (size_t i = 0; i < n; i++) {
            double d = fabs(m.grads_memory[offset + i] - s.grads[offset + i]);
            maxref = fmax(maxref, fabs(s.grads[offset + i]));
            if (d > maxdiff) { maxdiff = d; at = i; }
        }
        if (maxref > 0) worst_grad_rel_error = fmax(worst_grad_rel_error, maxdiff / maxref);
        CHECK(maxdiff <= 1e-5 * maxref + 1e-7, "reference %s: grad %s[%zu] = %.7g, PyTorch %.7g (max |ref| %.3g)", name,
              PARAM_NAMES[ti], at, m.grads_memory[offset + at], s.grads[offset + at], maxref);
        offset += n;
    }
    // 10 AdamW steps on the same batch, constant lr
    int steps_ok = 1;
    for (int step = 0; step < nsteps; step++) {
        mode.step = step;
        moe_forward(&m, s.inputs, s.targets, B, T, &mode);
        float total = m.mean_loss + m.aux_loss + m.z_loss + (compete != NULL ? m.compete_loss : 0.0f);
        if (fabs(m.mean_loss - s.lm_losses[step]) > 1e-4 * s.lm_losses[step] ||
            fabs(total - s.total_losses[step]) > 1e-4 * s.total_losses[step]) {
            printf("  reference %s step %d: loss %.6f total %.6f, PyTorch %.6f %.6f\n", name, step, m.mean_loss, total,
                   s.lm_losses[step], s.total_losses[step]);
            steps_ok = 0;
        }
        moe_zero_grad(&m);
        moe_backward(&m, 1.0f);
        float norm = grad_global_norm(&m);
        float scale = norm > clip ? clip / (norm + 1e-6f) : 1.0f;
        moe_adamw_update(&m, lr, 0.9f, 0.95f, 1e-8f, wd, scale, step + 1);
        moe_after_step(&m);  // auxfree's bias update
    }
    CHECK(steps_ok, "reference %s: losses of %d AdamW steps differ from PyTorch's", name, nsteps);
    freeCheck(compete);
    free_ref_state(&s);
    moe_free(&m);
}

// ----------------------------------------------------------------------------
// determinism, checkpoints

static void train_steps(MoEModel* m, int steps, float* losses) {
    int B = 2, T = 8, inp[16], tgt[16];
    uint64_t r = 99;
    for (int s = 0; s < steps; s++) {
        for (int i = 0; i < B * T; i++) { inp[i] = random_u32(&r) % 37; tgt[i] = random_u32(&r) % 37; }
        moe_zero_grad(m);
        RoutingMode mode = {s, 1, NULL};
        moe_forward(m, inp, tgt, B, T, &mode);
        losses[s] = m->mean_loss + m->aux_loss;
        moe_backward(m, 1.0f);
        float norm = grad_global_norm(m);
        moe_adamw_update(m, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, norm > 1.0f ? 1.0f / (norm + 1e-6f) : 1.0f, s + 1);
        moe_after_step(m);
    }
}

// AdamW with subnormal moments (subnormals_off): a parameter whose gradient stays zero has moments
// that decay into the subnormals and, without the flush, stay there (0.9 times the smallest one
// rounds back to it), slow on Intel cores for the rest of the run. With it they become exactly 0,
// every other element is updated as before, and the caller's MXCSR is as it was.
static void test_adamw_subnormals(void) {
    MoEConfig cfg = tiny_config(8, 2);
    MoEModel m;
    moe_build(&m, &cfg);
    moe_init_params(&m, 11, 0.02f);
    float l1[1];
    train_steps(&m, 1, l1);   // allocates the moments; leaves the gradients zero
    enum { NS = 64 };
    float tiny;
    uint32_t one = 1;
    memcpy(&tiny, &one, sizeof(tiny));   // 2^-149, the smallest subnormal
    CHECK(0.9f * tiny == tiny, "0.9 times the smallest subnormal should round back to it (it is what makes moments stick)");
    size_t n = m.num_parameters;
    float* m0 = fmalloc(n);
    float* v0 = fmalloc(n);
    for (size_t i = 0; i < NS; i++) m.m_memory[i] = m.v_memory[i] = tiny;
    memcpy(m0, m.m_memory, n * sizeof(float));
    memcpy(v0, m.v_memory, n * sizeof(float));
#if defined(__x86_64__) || defined(__SSE__)
    unsigned csr = _mm_getcsr();
#endif
    moe_adamw_update(&m, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, 2);
    int flushed = 1, others = 1;
    for (size_t i = 0; i < NS; i++) flushed &= m.m_memory[i] == 0.0f && m.v_memory[i] == 0.0f;
    for (size_t i = NS; i < n; i++) others &= m.m_memory[i] == 0.9f * m0[i] && m.v_memory[i] == 0.95f * v0[i];
    CHECK(flushed, "AdamW: subnormal moments with zero gradients must become 0 (they were %g, %g)", m.m_memory[0], m.v_memory[0]);
    CHECK(others, "AdamW: normal moments with zero gradients must decay by beta1, beta2 exactly");
#if defined(__x86_64__) || defined(__SSE__)
    CHECK(_mm_getcsr() == csr, "AdamW must restore the caller's MXCSR (0x%x, was 0x%x)", _mm_getcsr(), csr);
#endif
    free(m0);
    free(v0);
    moe_free(&m);
}

static void test_determinism(void) {
    MoEConfig cfg = tiny_config(8, 2);
    float a[6], b[6], c1[6];
    for (int run = 0; run < 3; run++) {
#ifdef _OPENMP
        omp_set_num_threads(run == 2 ? 1 : 2);
#endif
        MoEModel m;
        moe_build(&m, &cfg);
        moe_init_params(&m, 1337, 0.02f);
        train_steps(&m, 6, run == 0 ? a : run == 1 ? b : c1);
        moe_free(&m);
    }
#ifdef _OPENMP
    omp_set_num_threads(omp_get_num_procs());
#endif
    CHECK(memcmp(a, b, sizeof(a)) == 0, "determinism: two runs with the same seed and threads differ");
    {   // the AdamW step leaves the gradients zero for the next step
        MoEModel m;
        moe_build(&m, &cfg);
        moe_init_params(&m, 5, 0.02f);
        float l1[1];
        train_steps(&m, 1, l1);
        int zero = 1;
        for (size_t i = 0; i < m.num_parameters; i++) zero &= m.grads_memory[i] == 0.0f;
        CHECK(zero, "moe_adamw_update must leave the gradients zero");
        moe_free(&m);
    }
    CHECK(memcmp(a, c1, sizeof(a)) == 0, "determinism: 1 thread and 2 threads give different losses (%.9g vs %.9g)", a[5], c1[5]);
    CHECK(a[5] < a[0], "training on random tokens should still lower the loss: %g -> %g", a[0], a[5]);
}

// The first backward after the gradients were zeroed writes the experts' weight gradients (streamed,
// matmul.h's SGEMM_STREAM) instead of adding to them: the same bits as adding to the zeros, and a
// second backward (the next micro-batch) adds. Big enough (8 MB of gradients, on 2 MiB-aligned
// memory, 32 experts at ~4 tokens each, some with none) that the streaming stores are the ones used.
static void test_grads_zero_write(void) {
    MoEConfig cfg = {.max_seq_len = 16, .vocab_size = 37, .padded_vocab_size = 128, .num_layers = 2, .num_heads = 2,
                     .channels = 64, .n_expert = 32, .top_k = 2, .expert_hidden = 256};
    MoEModel m;
    moe_build(&m, &cfg);
    moe_init_params(&m, 21, 0.02f);
    int B = 4, T = 16, inp[64], tgt[64];
    uint64_t r = 5;
    for (int i = 0; i < B * T; i++) { inp[i] = random_u32(&r) % 37; tgt[i] = random_u32(&r) % 37; }
    RoutingMode mode = {0, 1, NULL};
    size_t P = m.num_parameters;
    float* written = (float*)malloc(P * sizeof(float));
    float* added = (float*)malloc(P * sizeof(float));
    moe_zero_grad(&m);
    CHECK(m.grads_zero == 1, "moe_zero_grad must mark the gradients zero");
    moe_forward(&m, inp, tgt, B, T, &mode);
    moe_backward(&m, 1.0f);
    CHECK(m.grads_zero == 0, "moe_backward must clear grads_zero (the next backward adds)");
    memcpy(written, m.grads_memory, P * sizeof(float));
    moe_zero_grad(&m);
    m.grads_zero = 0;   // as if not known: every gradient is added to the zeros
    moe_forward(&m, inp, tgt, B, T, &mode);
    moe_backward(&m, 1.0f);
    memcpy(added, m.grads_memory, P * sizeof(float));
    int empty = 0;
    for (int e = 0; e < 2 * cfg.n_expert; e++) empty += m.step_load[e] == 0.0;
    CHECK(memcmp(written, added, P * sizeof(float)) == 0, "expert gradients written on zeros differ from added to zeros");
    moe_forward(&m, inp, tgt, B, T, &mode);   // a second micro-batch: adds (here: to `added`)
    moe_backward(&m, 1.0f);
    memcpy(added, m.grads_memory, P * sizeof(float));
    moe_zero_grad(&m);                        // the same two micro-batches, the first one writing
    for (int micro = 0; micro < 2; micro++) {
        moe_forward(&m, inp, tgt, B, T, &mode);
        moe_backward(&m, 1.0f);
    }
    size_t bad = P;
    for (size_t i = 0; i < P && bad == P; i++) if (m.grads_memory[i] != added[i]) bad = i;
    CHECK(bad == P, "two micro-batches: the second backward must add to the first's gradients (parameter %zu: %.9g, "
          "expected %.9g)", bad, bad < P ? m.grads_memory[bad] : 0.0, bad < P ? added[bad] : 0.0);
    CHECK(((uintptr_t)m.grads.fcprojw & 63) == 0 && empty > 0,
          "test setup: expert gradients 64-byte aligned (so streamed) and some expert with no tokens (%d)", empty);
    free(written); free(added);
    moe_free(&m);
}

// ----------------------------------------------------------------------------
// mpi_moe.h's pieces that run in one process (dev/ci/mpi.sh runs the rest on 2 MPI ranks)

static void test_dist_pieces(void) {
    MoEConfig cfg = tiny_config(4, 2);
    MoEModel a, b;
    moe_build(&a, &cfg);
    moe_init_params(&a, 3, 0.02f);
    float loss[1];
    train_steps(&a, 1, loss);  // AdamW moments that are not zero
    uint64_t r = 5;
    for (size_t i = 0; i < a.num_parameters; i++) a.grads_memory[i] = random_normal(&r) * 0.01f;
    moe_build(&b, &cfg);
    size_t P = a.num_parameters;
    memcpy(b.params_memory, a.params_memory, P * 4);
    memcpy(b.grads_memory, a.grads_memory, P * 4);
    b.m_memory = (float*)mallocCheck(P * 4); b.v_memory = (float*)mallocCheck(P * 4);
    memcpy(b.m_memory, a.m_memory, P * 4); memcpy(b.v_memory, a.v_memory, P * 4);
    // the gradient norm from two ranks' chunk partials, and AdamW over three shards: the same bits
    double partial[GRAD_NORM_CHUNKS], total = 0.0;
    grad_sq_partials(&b, 0, 100, partial);
    grad_sq_partials(&b, 100, GRAD_NORM_CHUNKS, partial);
    for (int i = 0; i < GRAD_NORM_CHUNKS; i++) total += partial[i];
    float norm = grad_global_norm(&a);
    CHECK(float_bits((float)sqrt(total)) == float_bits(norm), "norm from chunk partials %.9g != grad_global_norm %.9g",
          sqrt(total), norm);
    moe_adamw_update(&a, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.5f, 2);
    size_t cut[4] = {0, P / 3 + 7, 2 * P / 3 + 1, P};
    for (int k = 0; k < 3; k++)
        adamw_update_range(&b, cut[k], cut[k + 1], b.m_memory + cut[k], b.v_memory + cut[k], 1e-2f, 0.9f, 0.95f, 1e-8f,
                           0.1f, 0.5f, 2);
    CHECK(memcmp(a.params_memory, b.params_memory, P * 4) == 0 && memcmp(a.m_memory, b.m_memory, P * 4) == 0 &&
          memcmp(a.v_memory, b.v_memory, P * 4) == 0 && memcmp(a.grads_memory, b.grads_memory, P * 4) == 0,
          "AdamW over three shards (ZeRO-1) differs from AdamW over the whole buffer");
    // expert parallel ownership: on R ranks, the shared ranges and every rank's experts cover the
    // parameter buffer exactly once, and only expert tensors are owned
    for (int R = 1; R <= 4; R *= 2) {
        unsigned char* seen = (unsigned char*)callocCheck(P, 1);
        int bad = 0;
        for (int rank = 0; rank < R; rank++) {
            Dist d = {0};
            d.rank = rank; d.size = R;
            ExpertParallel* ep = ep_create(&d, &a);
            for (int i = 0; i < ep->n_own; i++) {
                for (size_t j = ep->own[i][0]; j < ep->own[i][1]; j++) seen[j]++;
                bad |= ep->own[i][0] < (size_t)(a.params.fcw - a.params_memory);
            }
            if (rank == 0) for (int i = 0; i < ep->n_rep; i++) for (size_t j = ep->rep[i][0]; j < ep->rep[i][1]; j++) seen[j]++;
            ep_free(ep);
        }
        for (size_t j = 0; j < P; j++) bad |= seen[j] != 1;
        CHECK(!bad, "expert parallel on %d ranks: shared and owned ranges do not partition the parameters", R);
        freeCheck(seen);
    }
    // the (rank, expert) <-> (expert, rank) reorder of received rows, and back
    int rows[6] = {2, 0, 1, 3, 1, 2};  // R = 3 ranks, P = 2 experts each: rows[q*2 + j]
    float src[9], mid[9], back[9];
    for (int i = 0; i < 9; i++) src[i] = (float)i;
    ep_reorder(mid, src, rows, 3, 2, 1, 1);
    ep_reorder(back, mid, rows, 3, 2, 1, 0);
    float want[9] = {0, 1, 2, 6, 3, 4, 5, 7, 8};  // expert 0 from ranks 0, 1, 2; then expert 1
    CHECK(memcmp(mid, want, sizeof(want)) == 0 && memcmp(back, src, sizeof(src)) == 0,
          "ep_reorder: rows not grouped by expert then rank, or not restored");
    moe_free(&a); moe_free(&b);
    // expert parallel on one rank runs the same experts through the exchange: the same bits
    float plain[4], ep1[4];
    for (int run = 0; run < 2; run++) {
        MoEModel m;
        moe_build(&m, &cfg);
        moe_init_params(&m, 11, 0.02f);
        Dist d = {0};
        d.size = 1;
        if (run == 1) dist_setup(&d, &m, 0, 1);
        train_steps(&m, 4, run == 0 ? plain : ep1);
        m.expert_runner = NULL;
        moe_free(&m);
        free(d.shard); free(d.chunk); free(d.recv); free(d.packed); ep_free(d.ep);
    }
    CHECK(memcmp(plain, ep1, sizeof(plain)) == 0, "expert parallel on 1 rank changes the losses (%.9g vs %.9g)", plain[3], ep1[3]);
}

static char test_dir[256];

static int file_contains(const char* path, const char* needle) {
    FILE* f = fopen(path, "rb");
    if (f == NULL) return 0;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    return strstr(buf, needle) != NULL;
}

static void test_checkpoint(void) {
    MoEConfig cfg = tiny_config(4, 2);
    MoEModel m;
    moe_build(&m, &cfg);
    moe_init_params(&m, 3, 0.02f);
    m.router = router_config(ROUTER_GATEPRO, GATE_SOFTMAX_TOPK, 0.02f, 0.001f, 0.5f, 3, 9);
    m.router.compete_rate = 0.25f; m.router.compete_max_layers = 2; m.router.compete_weights = 1; m.router.compete_alpha = 0.1f;
    float losses[3];
    train_steps(&m, 3, losses);
    char path[512], err[512];
    snprintf(path, sizeof(path), "%s/ckpt.bin", test_dir);
    TrainState ts = {5, 6, 7, 0xDEADBEEFCAFEull, {0}, {0}};
    CHECK(moe_save_checkpoint(&m, path, 1, 3, 1337, 100, &ts, err, sizeof(err)) == 0, "checkpoint save: %s", err);
    MoEModel r;
    memset(&r, 0, sizeof(r));
    CheckpointInfo info;
    TrainState rts;
    int rc = moe_load_checkpoint(&r, path, &info, &rts, err, sizeof(err));
    CHECK(rc == 0, "checkpoint load: %s", err);
    if (rc == 0) {
        CHECK(memcmp(&r.config, &m.config, sizeof(MoEConfig)) == 0, "checkpoint round trip: config differs");
        CHECK(memcmp(r.params_memory, m.params_memory, m.num_parameters * 4) == 0, "checkpoint round trip: params differ");
        CHECK(memcmp(r.m_memory, m.m_memory, m.num_parameters * 4) == 0 &&
              memcmp(r.v_memory, m.v_memory, m.num_parameters * 4) == 0, "checkpoint round trip: AdamW state differs");
        CHECK(memcmp(&rts, &ts, sizeof(ts)) == 0, "checkpoint round trip: train state differs");
        CHECK(memcmp(&r.router, &m.router, sizeof(RouterConfig)) == 0, "checkpoint round trip: router settings differ");
        CHECK(info.step == 3 && info.has_optimizer == 1 && info.seed == 1337 && info.total_steps == 100,
              "checkpoint round trip: step/optimizer/seed fields wrong");
        // the header at the spec's offsets
        CHECK(info.header[0] == 20261122 && info.header[2] == 8 && info.header[8] == 4 && info.header[9] == 2 &&
              info.header[11] == 1 && info.header[12] == 1 && info.header[16] == 3 && info.header[17] == 9 &&
              bits_float((uint32_t)info.header[15]) == 0.5f, "checkpoint header fields not at the offsets of docs/formats.md");
    }
    moe_free(&r);
    // corrupt one byte in the middle: refused by the crc, and the target model is untouched
    FILE* f = fopen(path, "r+b");
    fseek(f, 2000, SEEK_SET);
    int ch = fgetc(f);
    fseek(f, 2000, SEEK_SET);
    fputc(ch ^ 0x10, f);
    fclose(f);
    MoEModel r2;
    moe_build(&r2, &cfg);
    float before = r2.params_memory[100];
    rc = moe_load_checkpoint(&r2, path, NULL, NULL, err, sizeof(err));
    CHECK(rc != 0 && strstr(err, "crc32") != NULL && strstr(err, path) != NULL, "corrupted checkpoint: expected a crc error naming the file, got '%s'", rc ? err : "success");
    CHECK(r2.params_memory[100] == before, "corrupted checkpoint must not half-load");
    moe_free(&r2);
    // truncated
    if (truncate(path, 5000) == 0) {
        MoEModel r3;
        memset(&r3, 0, sizeof(r3));
        rc = moe_load_checkpoint(&r3, path, NULL, NULL, err, sizeof(err));
        CHECK(rc != 0 && strstr(err, "truncated") != NULL, "truncated checkpoint: expected an error, got '%s'", rc ? err : "success");
        moe_free(&r3);
    }
    // not a checkpoint at all; too short; missing
    const char* junk = "this is not a checkpoint";
    f = fopen(path, "wb");
    for (int i = 0; i < 100; i++) fputs(junk, f);
    fclose(f);
    MoEModel r4;
    memset(&r4, 0, sizeof(r4));
    rc = moe_load_checkpoint(&r4, path, NULL, NULL, err, sizeof(err));
    CHECK(rc != 0 && strstr(err, "magic") != NULL, "bad magic: expected an error, got '%s'", rc ? err : "success");
    rc = moe_load_checkpoint(&r4, "/nonexistent/ckpt.bin", NULL, NULL, err, sizeof(err));
    CHECK(rc != 0 && strstr(err, "cannot open") != NULL, "missing checkpoint: got '%s'", rc ? err : "success");
    f = fopen(path, "wb"); fputs("x", f); fclose(f);
    rc = moe_load_checkpoint(&r4, path, NULL, NULL, err, sizeof(err));
    CHECK(rc != 0 && strstr(err, "truncated") != NULL, "1-byte checkpoint: got '%s'", rc ? err : "success");
    rc = moe_load_checkpoint(&r4, "/tmp", NULL, NULL, err, sizeof(err));
    CHECK(rc != 0 && strstr(err, "not a regular file") != NULL, "a directory as checkpoint: got '%s'", rc ? err : "success");
    // a huge file (sparse, 1 GiB) with a foreign header is refused from its header, not read whole
    f = fopen(path, "wb"); fputs("not a header", f); fclose(f);
    if (truncate(path, (off_t)1 << 30) == 0) {
        double t0 = now_seconds();
        rc = moe_load_checkpoint(&r4, path, NULL, NULL, err, sizeof(err));
        CHECK(rc != 0 && strstr(err, "magic") != NULL && r4.params_memory == NULL,
              "1 GiB foreign file: expected a magic error, got '%s'", rc ? err : "success");
        CHECK(now_seconds() - t0 < 5.0, "1 GiB foreign file: refused in %.1f s, should be from its header alone",
              now_seconds() - t0);
        if (truncate(path, 12) != 0) CHECK(0, "cannot shrink %s back", path);
    }
    moe_free(&r4);
    moe_free(&m);
}

// ----------------------------------------------------------------------------
// the trainer as a user runs it: resume, signals, bad flags

// Runs a shell command, returns its exit status; output goes to out_path.
static int run_cmd(const char* cmd, const char* out_path) {
    char full[4096];
    snprintf(full, sizeof(full), "%s > %s 2>&1", cmd, out_path);
    fflush(stdout);
    int rc = system(full);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
}

// the "s:N trl:X" lines of a log, concatenated
static void read_train_losses(const char* log, char* out, size_t n) {
    FILE* f = fopen(log, "r");
    out[0] = 0;
    if (f == NULL) return;
    char line[512];
    while (fgets(line, sizeof(line), f))
        if (strstr(line, " trl:") && strlen(out) + strlen(line) < n) strcat(out, line);
    fclose(f);
}

// ----------------------------------------------------------------------------
// auxfree and X-MoE on constructed inputs (routers.h; docs/routers.md)

static void test_auxfree_hand(void) {
    enum { E = 4, K = 2 };
    float l[E] = {1.0f, 0.8f, 0.5f, 0.2f}, b[E] = {-0.5f, 0.0f, 0.25f, 0.0f}, g[E], gate[K];
    int idx[K];
    SelectArgs a = {E, K, NULL, 0.0f, b};
    auxfree_select(&a, l, g, idx);
    // l + b = (0.5, 0.8, 0.75, 0.2): experts {1, 2}; the weights come from the unbiased l
    CHECK(idx[0] == 1 && idx[1] == 2 && memcmp(g, l, sizeof(l)) == 0,
          "auxfree: selection by l + b should be {1,2} with gate logits l, got {%d,%d}", idx[0], idx[1]);
    gate_weights(gate, g, idx, E, K, GATE_TOPK_SOFTMAX);
    double a1 = exp(0.8) / (exp(0.8) + exp(0.5));
    CHECK(fabs(gate[0] - a1) < 1e-6 && fabs(gate[1] - (1.0 - a1)) < 1e-6, "auxfree weights: got %g %g, expected %g %g",
          gate[0], gate[1], a1, 1.0 - a1);
    float zero[E] = {0};
    a.bias = zero;
    auxfree_select(&a, l, g, idx);
    CHECK(idx[0] == 0 && idx[1] == 1, "auxfree with b = 0 must equal topk: got {%d,%d}", idx[0], idx[1]);
    // the update after a step: loads {10, 2, 4, 4} (mean 5) -> b += u * (-1, +1, +1, +1); a layer with
    // equal loads keeps its bias
    MoEConfig cfg = tiny_config(E, K);
    MoEModel m;
    moe_build(&m, &cfg);
    moe_init_params(&m, 3, 0.02f);
    m.router = router_config(ROUTER_AUXFREE, GATE_TOPK_SOFTMAX, 0.0f, 0.0f, 1e-4f, 0, -1);
    m.router.auxfree_rate = 0.25f;
    double load[2 * E] = {10, 2, 4, 4, 5, 5, 5, 5};
    memcpy(m.step_load, load, sizeof(load));
    moe_after_step(&m);
    float expect[2 * E] = {-0.25f, 0.25f, 0.25f, 0.25f, 0, 0, 0, 0};
    CHECK(memcmp(m.params.router_bias, expect, sizeof(expect)) == 0 && m.step_load[0] == 0.0,
          "auxfree update: b layer 0 = (%g %g %g %g), expected (-0.25 0.25 0.25 0.25); layer 1 unchanged; load reset",
          m.params.router_bias[0], m.params.router_bias[1], m.params.router_bias[2], m.params.router_bias[3]);
    // a training forward counts every (token, k) pick; an evaluation forward counts nothing; b gets no gradient
    int inp[12], tgt[12];
    for (int i = 0; i < 12; i++) { inp[i] = (i * 5 + 2) % 37; tgt[i] = (i * 3 + 1) % 37; }
    moe_forward(&m, inp, tgt, 2, 6, &EVAL0);
    double counted = 0.0;
    for (int i = 0; i < 2 * E; i++) counted += m.step_load[i];
    RoutingMode train = {0, 1, NULL};
    moe_forward(&m, inp, tgt, 2, 6, &train);
    double counted2 = 0.0;
    for (int i = 0; i < E; i++) counted2 += m.step_load[i];
    moe_zero_grad(&m);
    moe_backward(&m, 1.0f);
    int bias_grad_zero = 1;
    for (int i = 0; i < 2 * E; i++) bias_grad_zero &= m.grads.router_bias[i] == 0.0f;
    CHECK(counted == 0.0 && counted2 == 12.0 * K && bias_grad_zero,
          "auxfree load: eval forward counted %g (expect 0), training forward %g in layer 0 (expect 24); b gradient zero %d",
          counted, counted2, bias_grad_zero);
    moe_free(&m);
}

static void test_xmoe_hand(void) {
    // C = 3, De = 2, E = 3, K = 1. W_p keeps the first two channels; expert embeddings (2,0),
    // (0,3), (1,1); tau = 0.5. Token x = (3,4,7): z = (3,4), zh = (0.6, 0.8), cos = (0.6, 0.8,
    // 1.4/sqrt 2), l = cos / tau. Token x = (0,-2,1): zh = (0,-1), cos = (0, -1, -1/sqrt 2).
    MoEConfig cfg = {.max_seq_len = 2, .vocab_size = 4, .padded_vocab_size = 128, .num_layers = 1, .num_heads = 1,
                     .channels = 3, .n_expert = 3, .top_k = 1, .expert_hidden = 4, .xmoe_dim = 2};
    MoEModel m;
    moe_build(&m, &cfg);
    CHECK(m.param_sizes[18] == 6 && m.param_sizes[19] == 6 && m.param_sizes[20] == 1, "xmoe parameter sizes wrong");
    moe_init_params(&m, 1, 0.02f);
    CHECK(fabsf(expf(m.params.xmoe_log_temp[0]) - 0.07f) < 1e-7f, "xmoe: tau should start at 0.07, got %g", expf(m.params.xmoe_log_temp[0]));
    float wp[6] = {1, 0, 0, 0, 1, 0}, ex[6] = {2, 0, 0, 3, 1, 1};
    memcpy(m.params.xmoe_proj, wp, sizeof(wp));
    memcpy(m.params.xmoe_experts, ex, sizeof(ex));
    m.params.xmoe_log_temp[0] = logf(0.5f);
    m.router = router_config(ROUTER_XMOE, GATE_TOPK_SOFTMAX, 0.0f, 0.0f, 1e-4f, 0, -1);
    moe_alloc_activations(&m, 1, 2);
    float x[6] = {3, 4, 7, 0, -2, 1};
    memcpy(m.acts.ln2, x, sizeof(x));
    route_tokens(&m, 0, 2, &EVAL0);
    double r2 = sqrt(2.0);
    double expect[6] = {1.2, 1.6, 2 * 1.4 / r2, 0.0, -2.0, -2.0 / r2};
    int ok = 1;
    for (int i = 0; i < 6; i++) ok &= fabs(m.acts.router_logits[i] - expect[i]) < 1e-5;
    CHECK(ok, "xmoe scores: got (%g %g %g | %g %g %g), expected (1.2 1.6 1.9799 | 0 -2 -1.41421)", m.acts.router_logits[0],
          m.acts.router_logits[1], m.acts.router_logits[2], m.acts.router_logits[3], m.acts.router_logits[4], m.acts.router_logits[5]);
    CHECK(m.idx.expert_index[0] == 2 && m.idx.expert_index[1] == 0, "xmoe selection: expected experts 2 and 0, got %d and %d",
          m.idx.expert_index[0], m.idx.expert_index[1]);
    const float* S = m.acts.router_sim;  // similarity of the expert embeddings, for the metrics
    CHECK(fabsf(S[1]) < 1e-7f && fabsf(S[2] - 1.0f / sqrtf(2.0f)) < 1e-6f && m.idx.router_sibling[0] == 2,
          "xmoe: S of the expert embeddings wrong (S01 %g, S02 %g, sibling of 0: %d)", S[1], S[2], m.idx.router_sibling[0]);
    moe_free(&m);
}

// Version-1 checkpoints (before auxfree and X-MoE) still load: the committed reference file as
// version 1 wrote it gives the same parameters as its version-2 rewrite, and a version-1 file
// with AdamW state loads its m and v with zero tails.
static void test_checkpoint_v1(void) {
    char err[512];
    MoEModel a, b;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    CheckpointInfo ia, ib;
    int ra = moe_load_checkpoint(&a, "dev/ref/v1_topk_ts_model.bin", &ia, NULL, err, sizeof(err));
    CHECK(ra == 0, "version-1 checkpoint: %s", err);
    int rb = moe_load_checkpoint(&b, "dev/ref/topk_ts_model.bin", &ib, NULL, err, sizeof(err));
    if (ra == 0 && rb == 0)
        CHECK(ia.header[1] == 1 && ib.header[1] == 2 && a.num_parameters == b.num_parameters &&
              memcmp(a.params_memory, b.params_memory, a.num_parameters * 4) == 0,
              "version-1 and version-2 files of the same model load different parameters");
    if (ra == 0) moe_free(&a);
    if (rb == 0) moe_free(&b);
    // with optimizer state: a version-2 file cut back to version 1 (header [1] = 1, [30], [31] = 0,
    // only the first 17 tensors of the parameters, m and v)
    MoEConfig cfg = tiny_config(4, 2);
    MoEModel m;
    moe_build(&m, &cfg);
    moe_init_params(&m, 5, 0.02f);
    m.router = router_config(ROUTER_AUXFREE, GATE_TOPK_SOFTMAX, 0.0f, 0.0f, 1e-4f, 0, -1);
    float losses[3];
    train_steps(&m, 3, losses);
    size_t n1 = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS_V1; i++) n1 += m.param_sizes[i];
    int header[256] = {0};
    header[HDR_MAGIC] = CHECKPOINT_MAGIC; header[HDR_VERSION] = 1;
    header[HDR_T] = cfg.max_seq_len; header[HDR_V] = cfg.vocab_size; header[HDR_VP] = cfg.padded_vocab_size;
    header[HDR_L] = cfg.num_layers; header[HDR_NH] = cfg.num_heads; header[HDR_C] = cfg.channels;
    header[HDR_E] = cfg.n_expert; header[HDR_K] = cfg.top_k; header[HDR_H] = cfg.expert_hidden;
    header[HDR_HAS_OPT] = 1; header[HDR_STEP] = 3; header[HDR_SEED] = 5; header[HDR_TOTAL_STEPS] = 10;
    unsigned char state[TRAIN_STATE_BYTES] = {0};
    char path[512];
    snprintf(path, sizeof(path), "%s/v1.bin", test_dir);
    FILE* f = fopen(path, "wb");
    uLong crc = crc32(0L, Z_NULL, 0);
    size_t written = 0;
    write_all(f, header, sizeof(header), &crc, &written);
    write_all(f, m.params_memory, n1 * 4, &crc, &written);
    write_all(f, m.m_memory, n1 * 4, &crc, &written);
    write_all(f, m.v_memory, n1 * 4, &crc, &written);
    write_all(f, state, sizeof(state), &crc, &written);
    uint32_t c32 = (uint32_t)crc;
    fwrite(&c32, 4, 1, f);
    fclose(f);
    MoEModel r;
    memset(&r, 0, sizeof(r));
    int rc = moe_load_checkpoint(&r, path, NULL, NULL, err, sizeof(err));
    CHECK(rc == 0, "version-1 checkpoint with optimizer state: %s", err);
    if (rc == 0) {
        int tails_zero = 1;
        for (size_t i = n1; i < r.num_parameters; i++) tails_zero &= r.params_memory[i] == 0 && r.m_memory[i] == 0 && r.v_memory[i] == 0;
        CHECK(r.num_parameters == m.num_parameters && memcmp(r.params_memory, m.params_memory, n1 * 4) == 0 &&
              memcmp(r.m_memory, m.m_memory, n1 * 4) == 0 && memcmp(r.v_memory, m.v_memory, n1 * 4) == 0 && tails_zero,
              "version-1 checkpoint with optimizer state: parameters or AdamW state differ, or the router tensors are not 0");
        moe_free(&r);
    }
    moe_free(&m);
}

static const char* SMALL_RUN = "./train_moe --synthetic-tokens 40000 --layers 2 --channels 32 --heads 2 --experts 4 -b 4 -t 16 -v 0";

// A run interrupted at step 4 and resumed gives bit-identical losses and final checkpoint, both
// when the resume repeats the flags and when it gives -e alone (the checkpoint's settings hold).
static void test_trainer_resume(const char* name, const char* extra) {
    char cmd[2048], out[512], a[8192], b[8192], log[512];
    snprintf(out, sizeof(out), "%s/out.txt", test_dir);
    snprintf(cmd, sizeof(cmd), "%s %s -x 8 -n 4 -o %s/%s_full", SMALL_RUN, extra, test_dir, name);
    int rc = run_cmd(cmd, out);
    CHECK(rc == 0, "train_moe %s: small run exited %d (see %s)", name, rc, out);
    snprintf(log, sizeof(log), "%s/%s_full/main.log", test_dir, name);
    read_train_losses(log, a, sizeof(a));
    const char* tail = strstr(a, "s:4 trl:");
    for (int alone = 0; alone <= 1; alone++) {
        if (alone) snprintf(cmd, sizeof(cmd), "./train_moe -v 0 -e %s/%s_full/model_00000004.bin -o %s/%s_resumed%d",
                            test_dir, name, test_dir, name, alone);
        else snprintf(cmd, sizeof(cmd), "%s %s -x 8 -e %s/%s_full/model_00000004.bin -o %s/%s_resumed%d", SMALL_RUN,
                      extra, test_dir, name, test_dir, name, alone);
        rc = run_cmd(cmd, out);
        CHECK(rc == 0, "train_moe %s: resume%s exited %d (see %s)", name, alone ? " with -e alone" : "", rc, out);
        snprintf(log, sizeof(log), "%s/%s_resumed%d/main.log", test_dir, name, alone);
        read_train_losses(log, b, sizeof(b));
        CHECK(tail != NULL && strcmp(tail, b) == 0, "%s: resume%s at step 4 is not bit-identical:\n--- full\n%s--- resumed\n%s",
              name, alone ? " with -e alone" : "", tail ? tail : a, b);
        char p1[512], p2[512];
        snprintf(p1, sizeof(p1), "%s/%s_full/model_00000008.bin", test_dir, name);
        snprintf(p2, sizeof(p2), "%s/%s_resumed%d/model_00000008.bin", test_dir, name, alone);
        snprintf(cmd, sizeof(cmd), "cmp -s %s %s", p1, p2);
        CHECK(system(cmd) == 0, "%s: final checkpoints of the full and resumed%s runs differ", name, alone ? " (-e alone)" : "");
    }
    // metrics.tsv: a header and one row per (step, layer) of the 8 steps and 2 layers
    char tsv[512];
    snprintf(tsv, sizeof(tsv), "%s/%s_full/metrics.tsv", test_dir, name);
    FILE* f = fopen(tsv, "r");
    int rows = 0, header_ok = 0, fields_ok = 1;
    char line[4096];
    while (f != NULL && fgets(line, sizeof(line), f)) {
        int tabs = 0;
        for (char* p = line; *p; p++) tabs += *p == '\t';
        if (rows++ == 0) header_ok = strncmp(line, "step\tlayer\ttokens\tzero_experts\t", 31) == 0;
        fields_ok &= tabs == 21;
    }
    if (f != NULL) fclose(f);
    CHECK(header_ok && fields_ok && rows == 1 + 8 * 2, "%s: metrics.tsv should have a header and 16 rows of 22 fields (%d lines, header %d, fields %d)", name, rows, header_ok, fields_ok);
}

// Logs after a crash and resume: a run whose logs hold steps beyond the checkpoint and a line cut
// by a kill, resumed from its step-4 checkpoint in the same directory, ends with main.log and
// metrics.tsv holding every step once and the same as an uninterrupted run's; a dead writer's
// temp file is removed, a live one's kept; --keep 2 leaves the newest two checkpoints.
static void test_trainer_logs_after_crash(void) {
    char cmd[2048], out[512], path[512], a[8192], b[8192];
    snprintf(out, sizeof(out), "%s/crashlog.txt", test_dir);
    snprintf(cmd, sizeof(cmd), "(%s -x 8 -n 2 -o %s/cl_full && %s -x 8 -n 2 --keep 2 -o %s/cl_crash)", SMALL_RUN, test_dir,
             SMALL_RUN, test_dir);
    int rc = run_cmd(cmd, out);
    CHECK(rc == 0, "logs after crash: runs exited %d (see %s)", rc, out);
    int kept = 1;
    for (int step = 0; step <= 8; step += 2) {
        snprintf(path, sizeof(path), "%s/cl_crash/model_%08d.bin", test_dir, step);
        kept &= (access(path, F_OK) == 0) == (step >= 6);
    }
    CHECK(kept, "--keep 2 should leave model_00000006.bin and model_00000008.bin only");
    // the state of a kill after step 6's logs, in the middle of writing step 7's; model_4 restored
    snprintf(cmd, sizeof(cmd), "cp %s/cl_full/model_00000004.bin %s/cl_crash/ && printf 's:7 trl:2.5' >> %s/cl_crash/main.log"
             " && printf '7\t0\t64\t0' >> %s/cl_crash/metrics.tsv", test_dir, test_dir, test_dir, test_dir);
    CHECK(system(cmd) == 0, "logs after crash: cannot set up the crashed directory");
    pid_t dead = fork();
    if (dead == 0) _exit(0);
    waitpid(dead, NULL, 0);
    char stale[512], live[512];
    snprintf(stale, sizeof(stale), "%s/cl_crash/model_00000006.bin.tmp%d", test_dir, (int)dead);
    snprintf(live, sizeof(live), "%s/cl_crash/model_00000006.bin.tmp%d", test_dir, (int)getpid());
    FILE* f1 = fopen(stale, "w");
    FILE* f2 = fopen(live, "w");
    if (f1) fclose(f1);
    if (f2) fclose(f2);
    snprintf(cmd, sizeof(cmd), "./train_moe -v 0 -e %s/cl_crash/model_00000004.bin -o %s/cl_crash", test_dir, test_dir);
    rc = run_cmd(cmd, out);
    CHECK(rc == 0, "logs after crash: resume exited %d (see %s)", rc, out);
    CHECK(access(stale, F_OK) != 0 && access(live, F_OK) == 0,
          "a dead writer's temp file must be removed and a live one's kept (%s, %s)", stale, live);
    remove(live);
    snprintf(path, sizeof(path), "%s/cl_full/main.log", test_dir);
    read_train_losses(path, a, sizeof(a));
    snprintf(path, sizeof(path), "%s/cl_crash/main.log", test_dir);
    read_train_losses(path, b, sizeof(b));
    CHECK(strcmp(a, b) == 0, "main.log after crash and resume should hold each step's loss once, as the "
          "uninterrupted run:\n--- uninterrupted\n%s--- crashed and resumed\n%s", a, b);
    int lines = 0, aux_lines = 0;
    FILE* f = fopen(path, "r");
    char line[1024];
    while (f && fgets(line, sizeof(line), f)) { lines++; aux_lines += strstr(line, " aux:") != NULL; }
    if (f) fclose(f);
    CHECK(lines == 16 && aux_lines == 8, "main.log after crash and resume: %d lines, %d aux lines (want 16, 8)", lines, aux_lines);
    snprintf(cmd, sizeof(cmd), "cmp -s %s/cl_full/metrics.tsv %s/cl_crash/metrics.tsv", test_dir, test_dir);
    CHECK(system(cmd) == 0, "metrics.tsv after crash and resume should equal the uninterrupted run's");
}


// ============================================================================
// reliability: each test below fails without its fix (crash safety, resume rules, hostile settings)

static void expect_refusal(const char* args, const char* needle);

// the text of the second "loss" value in eval_moe's JSON (the loss pass's mean loss), or NAN
static double eval_json_loss(const char* path) {
    size_t n;
    FILE* f = fopen(path, "rb");
    if (f == NULL) return NAN;
    static char buf[65536];
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    const char* p = strstr(buf, "\"loss\": {");
    if (p == NULL) return NAN;
    p = strstr(p + 9, "\"loss\": ");
    return p ? strtod(p + 8, NULL) : NAN;
}

static void test_reliability_small_fixes(void) {
    // exp_approx with non-finite input: NaN stays NaN, +-inf clamp; no undefined shift (UBSan)
    volatile float nan_in = NAN, inf_in = INFINITY;
    CHECK(isnan(exp_approx(nan_in)) && isfinite(exp_approx(inf_in)) && exp_approx(inf_in) > 1e38f &&
          exp_approx(-inf_in) < 1e-37f, "exp_approx(NaN/inf/-inf) = %g %g %g", exp_approx(nan_in), exp_approx(inf_in),
          exp_approx(-inf_in));
    // warm-up: decimal inputs give the decimal answer
    struct { float w; int S, want; } wu[] = {{0.29f, 100, 29}, {0.57f, 100, 57}, {0.07f, 100, 7}, {0.05f, 300, 15},
                                              {0.1f, 30, 3}, {1.0f, 7, 7}, {0.0f, 5, 0}, {0.333f, 1000, 333}};
    for (size_t i = 0; i < sizeof(wu) / sizeof(wu[0]); i++)
        CHECK(compete_warmup_steps(wu[i].w, wu[i].S) == wu[i].want, "warm-up %g of %d steps: %d, want %d", wu[i].w,
              wu[i].S, compete_warmup_steps(wu[i].w, wu[i].S), wu[i].want);
    unsigned char sched[100];
    compete_schedule(sched, 100, 1, 1.0f, 0.29f, 1, 7);
    CHECK(sched[28] == 0 && sched[29] == 1, "--compete-warmup 0.29 of 100 steps: first competition at step 29");
    // flags
    expect_refusal("-x 0", "-x 0");
    expect_refusal("-b 4 -t 16 -d 1099511627776", "--total-batch");
    expect_refusal("-b 4 -t 16 -d 274877907008", "--total-batch");
    expect_refusal("--channels 16384 --heads 4", "bytes");  // ~1.3 TB: refused before allocating
    // the K=1 GatePro warning is true for both gate norms
    char cmd[2048], out[512];
    snprintf(out, sizeof(out), "%s/k1.txt", test_dir);
    snprintf(cmd, sizeof(cmd), "%s -x 1 --top-k 1 --router gatepro -o %s/k1a", SMALL_RUN, test_dir);
    int rc1 = run_cmd(cmd, out);
    int says_nothing_ts = file_contains(out, "changes nothing");
    snprintf(cmd, sizeof(cmd), "%s -x 1 --top-k 1 --router gatepro --gate-norm softmax_topk -o %s/k1b", SMALL_RUN, test_dir);
    int rc2 = run_cmd(cmd, out);
    CHECK(rc1 == 0 && rc2 == 0 && says_nothing_ts && !file_contains(out, "changes nothing") &&
          file_contains(out, "winner's weight grows"), "GatePro K=1 warnings: topk_softmax says it changes nothing, "
          "softmax_topk says how it changes the weights (exit %d %d, see %s)", rc1, rc2, out);
    // an empty multiple-choice file is an error, not acc nan
    char mcp[512], err[512];
    snprintf(mcp, sizeof(mcp), "%s/empty_mc.bin", test_dir);
    int32_t header[256] = {MC_MAGIC, 1, 0, 0};
    FILE* f = fopen(mcp, "wb");
    if (f) { fwrite(header, 4, 256, f); fclose(f); }
    MCSet set;
    int rc = mc_load(mcp, NULL, 512, 511, &set, err, sizeof(err));
    CHECK(rc != 0 && strstr(err, "no examples") != NULL, "an empty multiple-choice file must be refused: rc %d '%s'", rc,
          rc ? err : "");
    if (rc == 0) mc_free(&set);
}

// eval_moe routes as training's validation did at the checkpoint's step: a GatePro checkpoint
// whose window closed before its step evaluates as topk; --gatepro-penalty on overrides.
static void test_eval_gatepro_window(void) {
    char cmd[2048], out[512], ckpt[512], js[3][512];
    snprintf(out, sizeof(out), "%s/gpw.txt", test_dir);
    snprintf(cmd, sizeof(cmd), "%s -x 4 --router gatepro --gatepro-lambda 1e4 --gatepro-stop 2 -o %s/gpw", SMALL_RUN, test_dir);
    int rc = run_cmd(cmd, out);
    snprintf(ckpt, sizeof(ckpt), "%s/gpw/model_00000004.bin", test_dir);
    const char* extra[3] = {"", "--router topk", "--gatepro-penalty on"};
    double loss[3];
    for (int i = 0; i < 3; i++) {
        snprintf(js[i], sizeof(js[i]), "%s/gpw%d.json", test_dir, i);
        snprintf(cmd, sizeof(cmd), "./eval_moe -e %s -b 4 -t 16 -m 8 %s --json %s", ckpt, extra[i], js[i]);
        rc |= run_cmd(cmd, out);
        loss[i] = eval_json_loss(js[i]);
    }
    CHECK(rc == 0 && loss[0] == loss[1] && isfinite(loss[0]) && loss[2] != loss[0],
          "eval_moe on a GatePro checkpoint past --gatepro-stop: loss %.6f must equal topk's %.6f, and "
          "--gatepro-penalty on (%.6f) must differ (exit %d, see %s)", loss[0], loss[1], loss[2], rc, out);
}

// CompeteSMoE's logged losses: over every micro-batch of the step, summed in a fixed order (the
// same bits for 1 and 2 threads), each in main.log; with coefficients 1, main.log's compete equals
// L_D + L_div + L_bal of the step.
static void test_compete_metrics_logged(void) {
    char cmd[2048], out[512], path[512];
    snprintf(out, sizeof(out), "%s/cml.txt", test_dir);
    const char* run = "--router compete --compete-rate 1 --compete-warmup 0 --compete-max-layers 2 --compete-router-coef 1 "
                      "--compete-div-coef 1 --compete-bal-coef 1 -d 192 -x 3";
    snprintf(cmd, sizeof(cmd), "(OMP_NUM_THREADS=1 %s %s -o %s/cml1 && OMP_NUM_THREADS=2 %s %s -o %s/cml2)", SMALL_RUN, run,
             test_dir, SMALL_RUN, run, test_dir);
    int rc = run_cmd(cmd, out);
    snprintf(cmd, sizeof(cmd), "cmp -s %s/cml1/metrics.tsv %s/cml2/metrics.tsv", test_dir, test_dir);
    CHECK(rc == 0 && system(cmd) == 0, "compete metrics.tsv must be bit-identical for 1 and 2 threads (exit %d, see %s)", rc, out);
    snprintf(path, sizeof(path), "%s/cml1/main.log", test_dir);
    FILE* f = fopen(path, "r");
    char line[1024];
    double compete[3] = {NAN, NAN, NAN}, parts[3] = {NAN, NAN, NAN};
    int steps_seen = 0;
    while (f && fgets(line, sizeof(line), f)) {
        int s;
        double c, ld, ldiv, lbal, ag;
        int layers;
        char* p = strstr(line, "compete:");
        if (sscanf(line, "s:%d", &s) == 1 && s >= 0 && s < 3 && p) compete[s] = strtod(p + 8, NULL);
        if (sscanf(line, "s:%d competed_layers:%d L_D:%lf L_div:%lf L_bal:%lf agreement:%lf", &s, &layers, &ld, &ldiv,
                   &lbal, &ag) == 6 && s >= 0 && s < 3) { parts[s] = ld + ldiv + lbal; steps_seen++; (void)c; }
    }
    if (f) fclose(f);
    int ok = steps_seen == 3;
    for (int s = 0; s < 3; s++) ok &= fabs(compete[s] - parts[s]) < 2e-5 * (1 + fabs(compete[s]));
    CHECK(ok, "main.log: each step's compete (%.6f %.6f %.6f) must equal its L_D + L_div + L_bal (%.6f %.6f %.6f) over "
          "all micro-batches", compete[0], compete[1], compete[2], parts[0], parts[1], parts[2]);
}

// Copies checkpoint src to dst with header[field] = value and a recomputed crc: a file whose crc
// is valid but whose settings may not be.
static int checkpoint_with_field(const char* src, const char* dst, int field, int32_t value) {
    FILE* f = fopen(src, "rb");
    if (f == NULL) return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    unsigned char* buf = (unsigned char*)malloc((size_t)n);
    size_t got = fread(buf, 1, (size_t)n, f);
    fclose(f);
    if (got != (size_t)n || n < 1028) { free(buf); return -1; }
    memcpy(buf + 4 * field, &value, 4);
    uint32_t crc = (uint32_t)crc32(0L, buf, (uInt)(n - 4));
    memcpy(buf + n - 4, &crc, 4);
    f = fopen(dst, "wb");
    if (f == NULL) { free(buf); return -1; }
    fwrite(buf, 1, (size_t)n, f);
    fclose(f);
    free(buf);
    return 0;
}

// A checkpoint with a valid crc but an out-of-range setting is refused with a message.
static void test_checkpoint_settings_range(void) {
    char src[512], dst[512], err[512];
    snprintf(src, sizeof(src), "%s/compete_full/model_00000004.bin", test_dir);
    snprintf(dst, sizeof(dst), "%s/range.bin", test_dir);
    struct { int field; int32_t value; const char* what; } cases[] = {
        {HDR_COMPETE_WARMUP, (int32_t)float_bits(NAN), "compete-warmup NaN"},
        {HDR_COMPETE_WARMUP, (int32_t)float_bits(-5.0f), "compete-warmup -5"},
        {HDR_COMPETE_RATE, (int32_t)float_bits(1.5f), "compete-rate 1.5"},
        {HDR_COMPETE_DIV_COEF, (int32_t)float_bits(NAN), "compete-div-coef NaN"},
        {HDR_AUX_COEF, (int32_t)float_bits(NAN), "aux-loss NaN"},
        {HDR_Z_COEF, (int32_t)float_bits(-INFINITY), "z-loss -inf"},
        {HDR_GATEPRO_LAMBDA, (int32_t)float_bits(INFINITY), "GatePro lambda inf"},
        {HDR_GATEPRO_STOP, -7, "gatepro-stop -7"},
        {HDR_COMPETE_WEIGHTS, 9, "compete-weights 9"},
        {HDR_RUN_LR, (int32_t)float_bits(NAN), "lr NaN"},
        {HDR_RUN_BATCH, 0, "batch 0"},
        {HDR_RUN_DATA_SOURCE, 3, "data source 3"},
        {HDR_TOTAL_STEPS, -1, "total steps -1"},
        {HDR_AUXFREE_RATE, (int32_t)float_bits(NAN), "auxfree-rate NaN"},
    };
    int refused = 0, n = (int)(sizeof(cases) / sizeof(cases[0]));
    for (int i = 0; i < n; i++) {
        MoEModel m;
        memset(&m, 0, sizeof(m));
        int made = checkpoint_with_field(src, dst, cases[i].field, cases[i].value);
        int rc = moe_load_checkpoint(&m, dst, NULL, NULL, err, sizeof(err));
        moe_free(&m);
        CHECK(made == 0 && rc != 0 && strstr(err, "out of range") != NULL, "checkpoint with %s (valid crc) must be "
              "refused as out of range: rc %d, '%s'", cases[i].what, rc, rc ? err : "");
        refused += made == 0 && rc != 0 && strstr(err, "out of range") != NULL;
    }
    // gatepro-stop below start, through the trainer's flags
    expect_refusal("--router gatepro --gatepro-start 5 --gatepro-stop 3", "--gatepro-stop");
    printf("  %d of %d out-of-range checkpoint settings refused\n", refused, n);
}

// What a resume takes from the checkpoint and what it refuses or applies (train_moe.c RESUME_RULES).
static void expect_refusal(const char* args, const char* needle);
static void test_trainer_resume_rules(void) {
    char args[1024], cmd[2048], out[512];
    const char* ckpt = "topk_full/model_00000004.bin";  // --seed 42, -x 8, synthetic corpus
    snprintf(args, sizeof(args), "-e %s/%s --seed 7", test_dir, ckpt);
    expect_refusal(args, "--seed 7: the checkpoint");
    snprintf(args, sizeof(args), "-e %s/%s -b 8", test_dir, ckpt);
    expect_refusal(args, "--batch 8: the checkpoint");
    snprintf(args, sizeof(args), "-e %s/%s -i /nonexistent/x_train.bin -j /nonexistent/x_val.bin --vocab-size 512",
             test_dir, ckpt);
    expect_refusal(args, "synthetic corpus");
    snprintf(out, sizeof(out), "%s/rules.txt", test_dir);
    snprintf(cmd, sizeof(cmd), "./train_moe -v 0 -x 6 -l 5e-4 -e %s/%s -o %s/rules", test_dir, ckpt, test_dir);
    int rc = run_cmd(cmd, out);
    CHECK(rc == 0 && file_contains(out, "resume: --steps 6 replaces the checkpoint's 8") &&
          file_contains(out, "resume: --lr 5e-4 replaces the checkpoint's 0.00100000005") && file_contains(out, "seed 42"),
          "resume with -x 6 -l 5e-4 should say what changed and keep seed 42 (exit %d, see %s)", rc, out);
    MoEModel m;
    memset(&m, 0, sizeof(m));
    CheckpointInfo info;
    char path[512], err[512];
    snprintf(path, sizeof(path), "%s/rules/model_00000006.bin", test_dir);
    rc = moe_load_checkpoint(&m, path, &info, NULL, err, sizeof(err));
    CHECK(rc == 0 && info.seed == 42 && info.total_steps == 6 && bits_float((uint32_t)info.header[HDR_RUN_LR]) == 5e-4f,
          "the resumed run's checkpoint should say seed 42, 6 steps, lr 5e-4: %s", rc ? err : "");
    moe_free(&m);
    // a resume from an earlier checkpoint in the same directory: the later checkpoints (of the run it
    // branches from) are renamed, so the newest model_*.bin is the new run's; -d 0 is no change
    const char* tiny = "--layers 1 --channels 32 --heads 2 --experts 2 --expert-hidden 32 -t 16 -b 2 -v 0 -s 0";
    snprintf(cmd, sizeof(cmd), "./train_moe %s -x 6 -n 3 -o %s/branch", tiny, test_dir);
    rc = run_cmd(cmd, out);
    CHECK(rc == 0, "branch: the first run failed (see %s)", out);
    snprintf(cmd, sizeof(cmd), "./train_moe -e %s/branch/model_00000003.bin -o %s/branch -x 5 -d 0", test_dir, test_dir);
    rc = run_cmd(cmd, out);
    char later[512], moved[600];
    snprintf(later, sizeof(later), "%s/branch/model_00000006.bin", test_dir);
    snprintf(moved, sizeof(moved), "%s.superseded", later);
    CHECK(rc == 0 && access(later, F_OK) != 0 && access(moved, F_OK) == 0 && file_contains(out, "renamed *.superseded") &&
          !file_contains(out, "--total-batch 0 replaces"),
          "branch: step 6's checkpoint should be renamed .superseded and -d 0 print no change (exit %d, see %s)", rc, out);
}

static void test_trainer_signal(void) {
    char outdir[512], log[512];
    snprintf(outdir, sizeof(outdir), "%s/sig", test_dir);
    snprintf(log, sizeof(log), "%s/sig.txt", test_dir);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        FILE* o = freopen(log, "w", stdout);
        (void)o;
        execl("./train_moe", "./train_moe", "--synthetic-tokens", "40000", "--layers", "2", "--channels", "32",
              "--heads", "2", "--experts", "4", "-b", "4", "-t", "16", "-v", "0", "-x", "100000", "-o", outdir, (char*)NULL);
        _exit(127);
    }
    // wait until it has taken a few steps, then interrupt it
    for (int i = 0; i < 400 && !file_contains(log, "step    3/"); i++) usleep(25000);
    kill(pid, SIGINT);
    int status;
    waitpid(pid, &status, 0);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    CHECK(code == 128 + SIGINT, "SIGINT: train_moe should exit %d after saving, got %d", 128 + SIGINT, code);
    CHECK(file_contains(log, "stopped by signal"), "SIGINT: no 'stopped by signal' message (see %s)", log);
    // the checkpoint it wrote loads and holds optimizer state
    char cmd[1024], path[512];
    snprintf(cmd, sizeof(cmd), "ls %s/model_*.bin | tail -1 > %s/last.txt", outdir, test_dir);
    int r = system(cmd);
    (void)r;
    snprintf(path, sizeof(path), "%s/last.txt", test_dir);
    FILE* f = fopen(path, "r");
    char ckpt[512] = {0};
    if (f && fgets(ckpt, sizeof(ckpt), f)) ckpt[strcspn(ckpt, "\n")] = 0;
    if (f) fclose(f);
    MoEModel m;
    memset(&m, 0, sizeof(m));
    CheckpointInfo info;
    char err[512];
    int rc = moe_load_checkpoint(&m, ckpt, &info, NULL, err, sizeof(err));
    CHECK(rc == 0 && info.has_optimizer && info.step >= 3, "SIGINT checkpoint '%s' should load with optimizer state: %s", ckpt, rc ? err : "");
    moe_free(&m);
}

// GatePro switched on at step 2 changes nothing before step 2 and something at step 2; a topk
// checkpoint resumes under gatepro (and the checkpoint then says gatepro).
static void test_trainer_gatepro_swap(void) {
    char cmd[2048], out[512], log[512], a[8192], b[8192];
    snprintf(out, sizeof(out), "%s/gp.txt", test_dir);
    snprintf(cmd, sizeof(cmd), "%s -x 4 -o %s/gp_topk", SMALL_RUN, test_dir);
    int rc1 = run_cmd(cmd, out);
    snprintf(cmd, sizeof(cmd), "%s -x 4 --router gatepro --gatepro-lambda 1e4 --gatepro-start 2 -o %s/gp_swap", SMALL_RUN, test_dir);
    int rc2 = run_cmd(cmd, out);
    CHECK(rc1 == 0 && rc2 == 0, "gatepro swap runs exited %d, %d (see %s)", rc1, rc2, out);
    snprintf(log, sizeof(log), "%s/gp_topk/main.log", test_dir);
    read_train_losses(log, a, sizeof(a));
    snprintf(log, sizeof(log), "%s/gp_swap/main.log", test_dir);
    read_train_losses(log, b, sizeof(b));
    const char* a2 = strstr(a, "s:2 trl:");
    const char* b2 = strstr(b, "s:2 trl:");
    CHECK(a2 && b2 && a2 - a == b2 - b && strncmp(a, b, (size_t)(a2 - a)) == 0,
          "gatepro from step 2: steps 0-1 must equal the topk run's:\n%s---\n%s", a, b);
    CHECK(a2 && b2 && strncmp(a2, b2, strcspn(a2, "\n")) != 0, "gatepro lambda 1e4 from step 2 must change step 2's loss");
    // resume the topk checkpoint under gatepro
    snprintf(cmd, sizeof(cmd), "%s -x 6 -e %s/gp_topk/model_00000004.bin --router gatepro --gatepro-lambda 0.5 -o %s/gp_resumed",
             SMALL_RUN, test_dir, test_dir);
    int rc = run_cmd(cmd, out);
    CHECK(rc == 0, "a topk checkpoint must resume under --router gatepro (exit %d, see %s)", rc, out);
    MoEModel m;
    memset(&m, 0, sizeof(m));
    char path[512], err[512];
    snprintf(path, sizeof(path), "%s/gp_resumed/model_00000006.bin", test_dir);
    rc = moe_load_checkpoint(&m, path, NULL, NULL, err, sizeof(err));
    CHECK(rc == 0 && m.router.router == ROUTER_GATEPRO && m.router.gatepro_lambda == 0.5f,
          "resumed-under-gatepro checkpoint should say gatepro, lambda 0.5: %s", rc ? err : "");
    moe_free(&m);
    // and back: the gatepro checkpoint resumes under topk
    snprintf(cmd, sizeof(cmd), "%s -x 8 -e %s --router topk -o %s/gp_back", SMALL_RUN, path, test_dir);
    rc = run_cmd(cmd, out);
    CHECK(rc == 0, "a gatepro checkpoint must resume under --router topk (exit %d)", rc);
}

// A non-finite loss skips the update, saves the last good state and exits 1 with a message.
// --profile (perf section): the same losses bit for bit with and without it, and a table with a
// row per op, forward and backward, for the plain router and for a CompeteSMoE run that competes.
static void test_trainer_profile(void) {
    const char* variants[2] = {"", "--router compete --compete-rate 1 --compete-warmup 0 --compete-max-layers 1"};
    for (int v = 0; v < 2; v++) {
        char cmd[2048], out[512], log[512], plain[8192], profiled[8192];
        snprintf(out, sizeof(out), "%s/profile%d.txt", test_dir, v);
        snprintf(cmd, sizeof(cmd), "%s -x 3 %s -o %s/prof_plain%d", SMALL_RUN, variants[v], test_dir, v);
        int rc1 = run_cmd(cmd, out);
        snprintf(cmd, sizeof(cmd), "%s -x 3 %s --profile -o %s/prof_on%d", SMALL_RUN, variants[v], test_dir, v);
        int rc2 = run_cmd(cmd, out);
        CHECK(rc1 == 0 && rc2 == 0, "--profile runs exited %d, %d (see %s)", rc1, rc2, out);
        snprintf(log, sizeof(log), "%s/prof_plain%d/main.log", test_dir, v);
        read_train_losses(log, plain, sizeof(plain));
        snprintf(log, sizeof(log), "%s/prof_on%d/main.log", test_dir, v);
        read_train_losses(log, profiled, sizeof(profiled));
        CHECK(plain[0] != 0 && strcmp(plain, profiled) == 0, "--profile changed the losses%s:\n%s---\n%s",
              v ? " (compete)" : "", plain, profiled);
        FILE* f = fopen(out, "r");
        char text[16384] = "";
        if (f != NULL) { size_t got = fread(text, 1, sizeof(text) - 1, f); text[got] = 0; fclose(f); }
        CHECK(strstr(text, "profile: time per op, mean over 2 steps (the run's first, warm-up step left out)") != NULL,
              "--profile printed no table header over steps 2-3 (see %s)", out);
        for (int op = 0; op < PROF_OPS; op++) {
            char row[64];
            snprintf(row, sizeof(row), "  %s ", PROF_NAMES[op]);
            CHECK(strstr(text, row) != NULL, "--profile's table has no '%s' row (see %s)", PROF_NAMES[op], out);
        }
        CHECK(strstr(text, "  step ") != NULL && strstr(text, "100.0%") != NULL, "--profile's table has no step total (see %s)", out);
    }
}

static void test_trainer_nan(void) {
    MoEConfig cfg = {.max_seq_len = 16, .vocab_size = 512, .padded_vocab_size = 512, .num_layers = 2, .num_heads = 2,
                     .channels = 32, .n_expert = 4, .top_k = 2, .expert_hidden = 128};
    MoEModel m;
    moe_build(&m, &cfg);
    moe_init_params(&m, 1, 0.02f);
    m.params.lnfw[0] = NAN;  // every logit becomes NaN
    char path[512], err[512], cmd[2048], out[512];
    snprintf(path, sizeof(path), "%s/nan.bin", test_dir);
    CHECK(moe_save_checkpoint(&m, path, 0, 0, 1, 0, NULL, err, sizeof(err)) == 0, "nan checkpoint: %s", err);
    moe_free(&m);
    snprintf(out, sizeof(out), "%s/nan.txt", test_dir);
    snprintf(cmd, sizeof(cmd), "%s -x 4 -e %s -o %s/nan_run", SMALL_RUN, path, test_dir);
    int rc = run_cmd(cmd, out);
    char saved[512];
    snprintf(saved, sizeof(saved), "%s/nan_run/model_00000000.nan.bin", test_dir);
    CHECK(rc == 1 && file_contains(out, "not finite") && access(saved, F_OK) == 0,
          "NaN loss: expected exit 1, a 'not finite' message and a saved checkpoint (exit %d, see %s)", rc, out);
    // mid-run (step 4 of a resumed run, in a directory holding the regular model_00000004.bin): the
    // NaN checkpoint holds the state of before the step (the data position of its start, not one
    // batch on) under its own name, and the regular checkpoint stays as it was
    char good[512], bad[512];
    snprintf(good, sizeof(good), "%s/topk_full/model_00000004.bin", test_dir);
    snprintf(bad, sizeof(bad), "%s/nan_mid", test_dir);
    mkdir(bad, 0755);
    snprintf(bad, sizeof(bad), "%s/nan_mid/bad4.bin", test_dir);  // in -o: a resume from this directory
    memset(&m, 0, sizeof(m));
    CheckpointInfo info;
    TrainState ts, ts_nan;
    CHECK(moe_load_checkpoint(&m, good, &info, &ts, err, sizeof(err)) == 0, "%s", err);
    m.params.lnfw[0] = NAN;
    CHECK(moe_save_checkpoint(&m, bad, 1, info.step, info.seed, info.total_steps, &ts, err, sizeof(err)) == 0, "%s", err);
    moe_free(&m);
    snprintf(cmd, sizeof(cmd), "(cp %s %s/nan_mid/ && ./train_moe -v 0 -e %s -o %s/nan_mid)", good, test_dir, bad, test_dir);
    rc = run_cmd(cmd, out);
    snprintf(saved, sizeof(saved), "%s/nan_mid/model_00000004.nan.bin", test_dir);
    memset(&m, 0, sizeof(m));
    int loaded = moe_load_checkpoint(&m, saved, NULL, &ts_nan, err, sizeof(err)) == 0;
    moe_free(&m);
    CHECK(rc == 1 && loaded && ts_nan.data_epoch == ts.data_epoch && ts_nan.data_shard_pos == ts.data_shard_pos &&
          ts_nan.data_sample_pos == ts.data_sample_pos, "NaN at step 4: exit 1 and %s with the step's start position "
          "(%lld, %lld, %lld), got exit %d, loaded %d, (%lld, %lld, %lld)", saved, (long long)ts.data_epoch,
          (long long)ts.data_shard_pos, (long long)ts.data_sample_pos, rc, loaded, (long long)ts_nan.data_epoch,
          (long long)ts_nan.data_shard_pos, (long long)ts_nan.data_sample_pos);
    snprintf(cmd, sizeof(cmd), "cmp -s %s %s/nan_mid/model_00000004.bin", good, test_dir);
    CHECK(system(cmd) == 0, "NaN at step 4: the regular model_00000004.bin must stay untouched");
    snprintf(saved, sizeof(saved), "%s/nan_run/model_00000000.bin", test_dir);
    CHECK(access(saved, F_OK) != 0, "NaN checkpoint: must not take the regular checkpoint's name %s", saved);
}

// A wrong flag must exit non-zero with a message that says what is wrong.
static void expect_refusal(const char* args, const char* needle) {
    char cmd[2048], out[512];
    snprintf(out, sizeof(out), "%s/refuse.txt", test_dir);
    snprintf(cmd, sizeof(cmd), "./train_moe -o %s/refuse %s", test_dir, args);
    int rc = run_cmd(cmd, out);
    int said = file_contains(out, needle);
    CHECK(rc != 0 && said, "train_moe %s: expected a non-zero exit saying '%s', got exit %d", args, needle, rc);
}
static void test_trainer_refusals(void) {
    expect_refusal("--experts 4 --top-k 5", "top-k K=5");
    expect_refusal("--channels 30 --heads 4", "divisible");
    expect_refusal("-i /nonexistent/x_train.bin -j /nonexistent/x_val.bin --vocab-size 100", "/nonexistent/x_train.bin");
    expect_refusal("--lr abc", "--lr");
    expect_refusal("--router nope", "--router");
    expect_refusal("--bogus-flag", "bogus");
    expect_refusal("-b 4 -t 16 -d 100", "multiple");
    expect_refusal("--gatepro-lambda 1", "need --router gatepro");
    expect_refusal("--router gatepro --experts 1 --top-k 1", "E >= 2");
    expect_refusal("--router gatepro --gatepro-lambda -1", "--gatepro-lambda");
    expect_refusal("--router gatepro --gatepro-lambda inf", "--gatepro-lambda");
    expect_refusal("--vocab-size 1000", "synthetic corpus has its own V=512");
    char args[1024];
    snprintf(args, sizeof(args), "-e %s/ckpt.bin", test_dir);  // left corrupt by test_checkpoint
    expect_refusal(args, "ckpt.bin");
}

// ----------------------------------------------------------------------------

// ============================================================================
// the data loader (dataloader.h)

// Tests of dataloader.h: test_dataloader().
// Uses only CHECK(cond, fmt, ...) and the counters tests_passed / tests_failed, which the includer
// defines. Every file is created under a fresh mkdtemp directory in /tmp and removed at the end.

// ----------------------------------------------------------------------------
// small helpers (prefixed dlt_ so they cannot clash with the rest of test_moe.c)

static char dlt_dir[256];

// dlt_dir + "/" + name, in a rotating set of static buffers (enough for one statement)
static const char* dlt_path(const char* name) {
    static char buffers[8][512];
    static int next = 0;
    char* p = buffers[next++ % 8];
    snprintf(p, 512, "%s/%s", dlt_dir, name);
    return p;
}

// writes raw bytes to a file (used to build broken shards by hand)
static void dlt_write_raw(const char* path, const void* data, size_t n) {
    FILE* f = fopen(path, "wb");
    if (f == NULL) { printf("cannot create %s\n", path); return; }
    if (n > 0) fwrite(data, 1, n, f);
    fclose(f);
}

// reads a whole file; *n gets its size; caller frees
static unsigned char* dlt_read_raw(const char* path, size_t* n) {
    FILE* f = fopen(path, "rb");
    *n = 0;
    if (f == NULL) return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char* data = (unsigned char*)malloc(size > 0 ? (size_t)size : 1);
    *n = fread(data, 1, (size_t)size, f);
    fclose(f);
    return data;
}

// a shard as llm.c's dev/data/data_common.py writes it: int32 header[256] (magic, version, count,
// zeros), then the tokens as uint16 (its `toks_np.tobytes()`), no compression
static void dlt_write_llmc_shard(const char* path, const uint16_t* tokens, int32_t count_in_header,
                                 size_t n, int32_t magic, int32_t version) {
    int32_t header[256];
    memset(header, 0, sizeof(header));
    header[0] = magic;
    header[1] = version;
    header[2] = count_in_header;
    FILE* f = fopen(path, "wb");
    if (f == NULL) { printf("cannot create %s\n", path); return; }
    fwrite(header, sizeof(int32_t), 256, f);   // the test host is little-endian, like llm.c's
    fwrite(tokens, sizeof(uint16_t), n, f);
    fclose(f);
}

static int dlt_contains(const char* haystack, const char* needle) { return strstr(haystack, needle) != NULL; }

static void dlt_remove_dir(void) {
    DIR* d = opendir(dlt_dir);
    if (d == NULL) return;
    struct dirent* e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        remove(dlt_path(e->d_name));
    }
    closedir(d);
    rmdir(dlt_dir);
}

// writes shard `name` with n tokens whose values are base, base+1, ... so every token in a test
// corpus is unique and a batch's first input names the window it came from
static int dlt_write_counting_shard(const char* name, uint32_t base, size_t n, int V, int gz) {
    uint32_t* t = (uint32_t*)malloc(n * sizeof(uint32_t));
    for (size_t i = 0; i < n; i++) t[i] = base + (uint32_t)i;
    char err[512];
    int ret = shard_write(dlt_path(name), t, n, V, gz, err, sizeof(err));
    if (ret != 0) printf("shard_write: %s\n", err);
    free(t);
    return ret;
}

// 1 iff the loader's current batch is exactly the window of B*T+1 tokens starting at value `first`
// of a counting corpus (inputs = first.., targets = first+1..)
static int dlt_batch_is_window(const DataLoader* dl, uint32_t first) {
    int BT = dl->B * dl->T;
    for (int i = 0; i < BT; i++) {
        if (dl->inputs[i] != (int)(first + (uint32_t)i)) return 0;
        if (dl->targets[i] != (int)(first + (uint32_t)i + 1)) return 0;
    }
    return 1;
}

// ----------------------------------------------------------------------------

static void test_dataloader_shards(void) {
    char err[512];
    // write + load round trips: uint16 and uint32 kinds, plain and gzip
    const int vocabs[2] = { 50257, 128256 };
    const size_t n = 100003;   // more than one 64 KiB read chunk
    uint32_t* tokens = (uint32_t*)malloc(n * sizeof(uint32_t));
    for (int kind = 0; kind < 2; kind++) {
        int V = vocabs[kind];
        uint64_t state = 42 + (uint64_t)kind;
        for (size_t i = 0; i < n; i++) tokens[i] = (uint32_t)(dl_splitmix64(&state) % (uint64_t)V);
        tokens[0] = 0;
        tokens[1] = (uint32_t)V - 1;   // both extremes of the id range
        for (int gz = 0; gz < 2; gz++) {
            char name[64];
            snprintf(name, sizeof(name), "round_%d.bin%s", V, gz ? ".gz" : "");
            const char* path = dlt_path(name);
            int ret = shard_write(path, tokens, n, V, gz, err, sizeof(err));
            CHECK(ret == 0, "shard_write %s: %s", path, err);
            size_t size;
            unsigned char* raw = dlt_read_raw(path, &size);
            if (gz) {
                CHECK(size >= 2 && raw[0] == 0x1f && raw[1] == 0x8b, "%s is not gzip", path);
            } else {
                size_t token_size = V <= 65536 ? 2 : 4;
                CHECK(size == 1024 + token_size * n, "%s: size %zu, expected %zu", path, size, 1024 + token_size * n);
                CHECK(size >= 12 && dl_read_u32le(raw) == (V <= 65536 ? 20240520u : 20240801u)
                      && dl_read_u32le(raw + 4) == (V <= 65536 ? 1u : 7u) && dl_read_u32le(raw + 8) == n,
                      "%s: header magic/version/count wrong", path);
            }
            free(raw);
            Shard s;
            ret = shard_load(path, V, &s, err, sizeof(err));
            CHECK(ret == 0, "shard_load %s: %s", path, err);
            if (ret == 0) {
                CHECK(s.num_tokens == n, "%s: %zu tokens, expected %zu", path, s.num_tokens, n);
                CHECK(s.num_tokens == n && memcmp(s.tokens, tokens, n * sizeof(uint32_t)) == 0,
                      "%s: tokens differ after the round trip", path);
                shard_free(&s);
            }
        }
    }
    // no temporary files left behind by the atomic writes
    {
        DIR* d = opendir(dlt_dir);
        int stray = 0;
        struct dirent* e;
        while (d != NULL && (e = readdir(d)) != NULL) stray += strstr(e->d_name, ".tmp.") != NULL;
        if (d != NULL) closedir(d);
        CHECK(stray == 0, "%d temporary files left in %s", stray, dlt_dir);
    }
    // vocab_size <= 0 on write picks the kind from the ids
    {
        uint32_t big[3] = { 1, 70000, 2 };
        CHECK(shard_write(dlt_path("novocab.bin"), big, 3, 0, 0, err, sizeof(err)) == 0, "%s", err);
        Shard s;
        CHECK(shard_load(dlt_path("novocab.bin"), 0, &s, err, sizeof(err)) == 0 && s.tokens[1] == 70000,
              "vocab 0 write/load: %s", err);
        shard_free(&s);
        CHECK(shard_write(dlt_path("bad.bin"), big, 3, 50257, 0, err, sizeof(err)) == -1
              && dlt_contains(err, "token 70000 at position 1"), "write of an id >= V: '%s'", err);
    }

    // a shard exactly as llm.c writes it loads unchanged
    {
        uint16_t t[2000];
        for (int i = 0; i < 2000; i++) t[i] = (uint16_t)((i * 7919) % 50257);
        dlt_write_llmc_shard(dlt_path("llmc_val_000000.bin"), t, 2000, 2000, 20240520, 1);
        Shard s;
        int ret = shard_load(dlt_path("llmc_val_000000.bin"), 50257, &s, err, sizeof(err));
        CHECK(ret == 0, "llm.c shard: %s", err);
        int same = ret == 0 && s.num_tokens == 2000;
        for (int i = 0; same && i < 2000; i++) same = s.tokens[i] == t[i];
        CHECK(same, "llm.c shard: tokens differ");
        shard_free(&s);
    }

    // broken files: each refused with a message naming the file and the problem
    {
        uint16_t t[1010];
        for (int i = 0; i < 1010; i++) t[i] = (uint16_t)i;
        Shard s;
        const char* p;

        p = dlt_path("missing.bin");
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p) && dlt_contains(err, "cannot open"),
              "missing file: '%s'", err);

        p = dlt_path("empty.bin");
        dlt_write_raw(p, "", 0);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p)
              && dlt_contains(err, "truncated header"), "empty file: '%s'", err);

        p = dlt_path("short_header.bin");
        unsigned char junk[100];
        memset(junk, 0, sizeof(junk));
        dl_write_u32le(junk, 20240520);
        dlt_write_raw(p, junk, sizeof(junk));
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p)
              && dlt_contains(err, "truncated header") && dlt_contains(err, "100 bytes"), "short header: '%s'", err);

        p = dlt_path("magic.bin");
        dlt_write_llmc_shard(p, t, 1000, 1000, 12345, 1);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p) && dlt_contains(err, "bad magic 12345"),
              "wrong magic: '%s'", err);

        p = dlt_path("version.bin");
        dlt_write_llmc_shard(p, t, 1000, 1000, 20240520, 7);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p) && dlt_contains(err, "version 7"),
              "wrong version: '%s'", err);

        p = dlt_path("count_more.bin");   // header says fewer tokens than the file holds
        dlt_write_llmc_shard(p, t, 1000, 1010, 20240520, 1);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p)
              && dlt_contains(err, "header says 1000 tokens, file holds 1010"), "count mismatch: '%s'", err);

        p = dlt_path("count_less.bin");   // header says more: a truncated body
        dlt_write_llmc_shard(p, t, 1010, 1000, 20240520, 1);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p)
              && dlt_contains(err, "header says 1010 tokens, file holds 1000"), "truncated body: '%s'", err);

        p = dlt_path("odd_bytes.bin");    // truncated in the middle of a token
        size_t size;
        dlt_write_llmc_shard(p, t, 1000, 1000, 20240520, 1);
        unsigned char* raw = dlt_read_raw(p, &size);
        dlt_write_raw(p, raw, size - 3);
        free(raw);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p)
              && dlt_contains(err, "file holds 998 and a partial token"), "odd bytes: '%s'", err);

        p = dlt_path("negative.bin");
        dlt_write_llmc_shard(p, t, -5, 0, 20240520, 1);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p) && dlt_contains(err, "negative"),
              "negative count: '%s'", err);

        // id >= V, reported with its position (uint32 kind so 70000 fits)
        uint32_t* big = (uint32_t*)calloc(2000, sizeof(uint32_t));
        big[1234] = 70000;
        p = dlt_path("big_id.bin");
        CHECK(shard_write(p, big, 2000, 100000, 0, err, sizeof(err)) == 0, "%s", err);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p)
              && dlt_contains(err, "token 70000 at position 1234 is >= vocab size 50257"), "id >= V: '%s'", err);
        CHECK(shard_load(p, 0, &s, err, sizeof(err)) == 0 && s.tokens[1234] == 70000, "vocab 0 skips the id check: %s", err);
        shard_free(&s);
        p = dlt_path("big_id.bin.gz");
        CHECK(shard_write(p, big, 2000, 100000, 1, err, sizeof(err)) == 0, "%s", err);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p)
              && dlt_contains(err, "token 70000 at position 1234 is >= vocab size 50257"), "gz id >= V: '%s'", err);
        free(big);

        // gzip problems
        uint32_t t32[5000];
        for (int i = 0; i < 5000; i++) t32[i] = (uint32_t)(i % 1000);
        p = dlt_path("good.bin.gz");
        CHECK(shard_write(p, t32, 5000, 50257, 1, err, sizeof(err)) == 0, "%s", err);
        raw = dlt_read_raw(p, &size);

        p = dlt_path("truncated.bin.gz");
        dlt_write_raw(p, raw, size / 2);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p) && dlt_contains(err, "gzip"),
              "truncated gzip: '%s'", err);
        p = dlt_path("no_trailer.bin.gz");   // all the data, but the CRC/size trailer cut off
        dlt_write_raw(p, raw, size - 8);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p)
              && dlt_contains(err, "gzip data truncated"), "gzip without trailer: '%s'", err);

        p = dlt_path("bad_crc.bin.gz");      // a flipped bit in the stored CRC-32
        raw[size - 8] ^= 1;
        dlt_write_raw(p, raw, size);
        raw[size - 8] ^= 1;
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p)
              && dlt_contains(err, "gzip data corrupt"), "gzip bad crc: '%s'", err);

        p = dlt_path("garbled.bin.gz");      // garbage in the middle of the deflate stream
        memset(raw + size / 3, 0xff, 16);
        dlt_write_raw(p, raw, size);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p) && dlt_contains(err, "gzip data corrupt"),
              "garbled gzip: '%s'", err);
        free(raw);

        p = dlt_path("count_gz.bin.gz");     // gzip whose header count disagrees with its data
        dlt_write_llmc_shard(dlt_path("count_gz_src.bin"), t, 1000, 1010, 20240520, 1);
        raw = dlt_read_raw(dlt_path("count_gz_src.bin"), &size);
        gzFile gzf = gzopen(p, "wb");
        gzwrite(gzf, raw, (unsigned)size);
        gzclose(gzf);
        free(raw);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p)
              && dlt_contains(err, "header says 1000 tokens, decompressed data holds 1010"), "gz count: '%s'", err);

        p = dlt_path("not_gzip.bin.gz");
        dlt_write_llmc_shard(p, t, 1000, 1000, 20240520, 1);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p) && dlt_contains(err, "not gzip"),
              "plain data named .gz: '%s'", err);

        // two concatenated gzip members (as `cat a.gz b.gz` makes) are one stream
        dlt_write_llmc_shard(dlt_path("two_members_src.bin"), t, 1000, 1000, 20240520, 1);
        raw = dlt_read_raw(dlt_path("two_members_src.bin"), &size);
        p = dlt_path("two_members.bin.gz");
        gzf = gzopen(p, "wb");
        gzwrite(gzf, raw, 1500);
        gzclose(gzf);
        gzf = gzopen(p, "ab");
        gzwrite(gzf, raw + 1500, (unsigned)(size - 1500));
        gzclose(gzf);
        free(raw);
        int ret = shard_load(p, 50257, &s, err, sizeof(err));
        CHECK(ret == 0 && s.num_tokens == 1000 && s.tokens[999] == 999, "two gzip members: %s", err);
        shard_free(&s);
    }
    free(tokens);
}

static void test_dataloader_glob_and_order(void) {
    char err[512];
    const int B = 2, T = 8, BT = 16, V = 50257;
    // three shards: plain, gzip, plain; sizes give 3, 2 and 4 batches (with some tokens left over)
    const size_t sizes[3] = { 3 * BT + 1 + 5, 2 * BT + 1, 4 * BT + 1 + 15 };
    const char* names[3] = { "tr_000.bin", "tr_001.bin.gz", "tr_002.bin" };
    uint32_t bases[3] = { 0, 1000, 2000 };
    for (int i = 0; i < 3; i++) dlt_write_counting_shard(names[i], bases[i], sizes[i], V, i == 1);
    char pattern[512];
    snprintf(pattern, sizeof(pattern), "%s/tr_*.bin", dlt_dir);

    // the .bin pattern matches the .bin.gz shard too, and the paths come out sorted
    DataLoader dl;
    int ret = dataloader_open(&dl, pattern, B, T, V, 0, 1337, err, sizeof(err));
    CHECK(ret == 0, "dataloader_open %s: %s", pattern, err);
    if (ret != 0) return;
    CHECK(dl.num_shards == 3, "glob found %d shards, expected 3", dl.num_shards);
    for (int i = 0; i < dl.num_shards && i < 3; i++)
        CHECK(strcmp(dl.shard_paths[i], dlt_path(names[i])) == 0, "shard %d is %s, expected %s", i,
              dl.shard_paths[i], dlt_path(names[i]));
    CHECK(dataloader_num_batches(&dl) == 9, "num_batches %lld, expected 9", (long long)dataloader_num_batches(&dl));
    CHECK(dl.input_domains == NULL, "file loader has input_domains");

    // validation order: every shard in order, every batch in order, the exact windows, wrapping
    uint32_t expected_first[9];
    int e = 0;
    for (int s = 0; s < 3; s++)
        for (size_t k = 0; k < (sizes[s] - 1) / BT; k++) expected_first[e++] = bases[s] + (uint32_t)(k * BT);
    int all_ok = 1;
    for (int i = 0; i < 9 * 2 + 3; i++) {
        dataloader_next_batch(&dl);
        int ok = dlt_batch_is_window(&dl, expected_first[i % 9]);
        if (!ok) CHECK(ok, "validation batch %d: inputs[0]=%d, expected window at %u", i, dl.inputs[0], expected_first[i % 9]);
        all_ok &= ok;
    }
    CHECK(all_ok, "validation order");
    DataLoaderState st = dataloader_get_state(&dl);
    CHECK(st.epoch == 2 && st.shard_pos == 1 && st.sample_pos == 0, "state after 21 batches: %lld %lld %lld",
          (long long)st.epoch, (long long)st.shard_pos, (long long)st.sample_pos);
    dataloader_reset(&dl);
    dataloader_next_batch(&dl);
    CHECK(dlt_batch_is_window(&dl, 0), "after reset the first batch is the first window");
    dataloader_free(&dl);

    // a literal path works as a pattern
    ret = dataloader_open(&dl, dlt_path("tr_001.bin.gz"), B, T, V, 0, 1, err, sizeof(err));
    CHECK(ret == 0 && dl.num_shards == 1 && dataloader_num_batches(&dl) == 2, "literal path: %s", err);
    if (ret == 0) dataloader_free(&dl);

    // training order: each epoch visits every batch exactly once, each shard's batches together
    const int epochs = 3;
    uint32_t stream_a[3 * 9], stream_b[3 * 9], stream_c[3 * 9];
    uint64_t seeds[3] = { 1337, 1337, 4242 };
    uint32_t* streams[3] = { stream_a, stream_b, stream_c };
    for (int r = 0; r < 3; r++) {
        ret = dataloader_open(&dl, pattern, B, T, V, 1, seeds[r], err, sizeof(err));
        CHECK(ret == 0, "dataloader_open shuffled: %s", err);
        if (ret != 0) return;
        for (int i = 0; i < epochs * 9; i++) {
            dataloader_next_batch(&dl);
            streams[r][i] = (uint32_t)dl.inputs[0];
            // still a contiguous window of one shard
            int first = dl.inputs[0], ok = 0;
            for (int s = 0; s < 3; s++) {
                uint32_t off = (uint32_t)first - bases[s];
                if ((uint32_t)first >= bases[s] && off < sizes[s] && off % BT == 0 && off + BT < sizes[s]) ok = 1;
            }
            CHECK(ok && dlt_batch_is_window(&dl, (uint32_t)first), "shuffled batch %d is not a window (inputs[0]=%d)", i, first);
        }
        dataloader_free(&dl);
    }
    for (int ep = 0; ep < epochs; ep++) {
        int covered = 1;
        for (int k = 0; k < 9; k++) {
            int count = 0;
            for (int i = 0; i < 9; i++) count += stream_a[ep * 9 + i] == expected_first[k];
            covered &= count == 1;
        }
        CHECK(covered, "epoch %d does not visit every batch exactly once", ep);
        // shard-by-shard: the shard changes exactly twice within an epoch
        int changes = 0;
        for (int i = 1; i < 9; i++) changes += stream_a[ep * 9 + i] / 1000 != stream_a[ep * 9 + i - 1] / 1000;
        CHECK(changes == 2, "epoch %d switches shards %d times, expected 2", ep, changes);
    }
    CHECK(memcmp(stream_a, stream_b, sizeof(stream_a)) == 0, "same seed, different stream");
    CHECK(memcmp(stream_a, stream_c, sizeof(stream_a)) != 0, "different seed, same stream");
    CHECK(memcmp(stream_a, stream_a + 9, 9 * sizeof(uint32_t)) != 0 || memcmp(stream_a + 9, stream_a + 18, 9 * sizeof(uint32_t)) != 0,
          "the order does not change between epochs");
    int any_shuffled = 0;
    for (int i = 0; i < 9; i++) any_shuffled |= stream_a[i] != expected_first[i];
    CHECK(any_shuffled, "shuffled epoch 0 is the sequential order");
}

static void test_dataloader_resume(void) {
    char err[512];
    const int B = 2, T = 4, BT = 8, V = 60000;
    // 4 shards of 7..10 batches: 34 batches per epoch
    char pattern[512];
    for (int s = 0; s < 4; s++) {
        char name[64];
        snprintf(name, sizeof(name), "rs_%03d.bin", s);
        dlt_write_counting_shard(name, (uint32_t)(s * 10000), (size_t)(7 + s) * BT + 1 + (size_t)s, V, s % 2);
    }
    snprintf(pattern, sizeof(pattern), "%s/rs_*.bin", dlt_dir);
    DataLoader a, b;
    int ret = dataloader_open(&a, pattern, B, T, V, 1, 7, err, sizeof(err));
    CHECK(ret == 0, "resume open: %s", err);
    if (ret != 0) return;
    CHECK(dataloader_num_batches(&a) == 34, "resume num_batches %lld", (long long)dataloader_num_batches(&a));
    // stop 20 batches before the end of epoch 1, so the next 50 cross the epoch 1 -> 2 boundary
    int64_t skip = 34 + 34 - 20;
    for (int64_t i = 0; i < skip; i++) dataloader_next_batch(&a);
    DataLoaderState st = dataloader_get_state(&a);
    CHECK(st.epoch == 1, "resume state epoch %lld", (long long)st.epoch);
    int* expected_in = (int*)malloc(50 * BT * sizeof(int));
    int* expected_tg = (int*)malloc(50 * BT * sizeof(int));
    for (int i = 0; i < 50; i++) {
        dataloader_next_batch(&a);
        memcpy(expected_in + i * BT, a.inputs, BT * sizeof(int));
        memcpy(expected_tg + i * BT, a.targets, BT * sizeof(int));
    }
    // a fresh loader (nothing in memory) given only the state reproduces the stream bit for bit
    ret = dataloader_open(&b, pattern, B, T, V, 1, 7, err, sizeof(err));
    CHECK(ret == 0 && dataloader_set_state(&b, st, err, sizeof(err)) == 0, "set_state: %s", err);
    int same = 1;
    for (int i = 0; i < 50; i++) {
        dataloader_next_batch(&b);
        same &= memcmp(expected_in + i * BT, b.inputs, BT * sizeof(int)) == 0;
        same &= memcmp(expected_tg + i * BT, b.targets, BT * sizeof(int)) == 0;
    }
    CHECK(same, "resume does not reproduce the next 50 batches");
    DataLoaderState sa = dataloader_get_state(&a), sb = dataloader_get_state(&b);
    CHECK(sa.epoch == sb.epoch && sa.shard_pos == sb.shard_pos && sa.sample_pos == sb.sample_pos,
          "states differ after the resumed stream");
    // and the same loader moved back in time reproduces it too
    CHECK(dataloader_set_state(&a, st, err, sizeof(err)) == 0, "set_state back: %s", err);
    dataloader_next_batch(&a);
    CHECK(memcmp(expected_in, a.inputs, BT * sizeof(int)) == 0, "set_state back in the same loader");

    // out-of-range states are refused and leave the position alone
    DataLoaderState before = dataloader_get_state(&b);
    DataLoaderState bad[4] = { { -1, 0, 0 }, { 0, 4, 0 }, { 0, 0, 11 }, { 0, -1, 0 } };
    for (int i = 0; i < 4; i++) {
        err[0] = '\0';
        CHECK(dataloader_set_state(&b, bad[i], err, sizeof(err)) == -1 && dlt_contains(err, "bad state"),
              "bad state %d accepted ('%s')", i, err);
    }
    DataLoaderState after = dataloader_get_state(&b);
    CHECK(before.epoch == after.epoch && before.shard_pos == after.shard_pos && before.sample_pos == after.sample_pos,
          "a refused set_state moved the loader");
    free(expected_in);
    free(expected_tg);
    dataloader_free(&a);
    dataloader_free(&b);
}

static void test_dataloader_init_errors(void) {
    char err[512];
    DataLoader dl;
    const char* p;
    // no match
    char pattern[512];
    snprintf(pattern, sizeof(pattern), "%s/nothing_*.bin", dlt_dir);
    CHECK(dataloader_open(&dl, pattern, 2, 4, 100, 0, 1, err, sizeof(err)) == -1 && dlt_contains(err, "no files match")
          && dlt_contains(err, pattern), "no match: '%s'", err);
    // a shard shorter than B*T+1 among good ones is refused by name
    dlt_write_counting_shard("sh_000.bin", 0, 100, 1000, 0);
    dlt_write_counting_shard("sh_001.bin", 0, 8, 1000, 0);   // B*T+1 = 9 needed
    snprintf(pattern, sizeof(pattern), "%s/sh_*.bin", dlt_dir);
    p = dlt_path("sh_001.bin");
    CHECK(dataloader_open(&dl, pattern, 2, 4, 1000, 1, 1, err, sizeof(err)) == -1 && dlt_contains(err, p)
          && dlt_contains(err, "holds 8 tokens, fewer than the B*T+1 = 9"), "short shard: '%s'", err);
    CHECK(dataloader_open(&dl, pattern, 2, 3, 1000, 1, 1, err, sizeof(err)) == 0, "7 tokens suffice for B=2 T=3: %s", err);
    dataloader_free(&dl);
    // a broken shard stops init with its name
    dlt_write_counting_shard("bd_000.bin", 0, 100, 1000, 0);
    dlt_write_counting_shard("bd_001.bin", 990, 100, 2000, 0);   // ids up to 1089
    snprintf(pattern, sizeof(pattern), "%s/bd_*.bin", dlt_dir);
    p = dlt_path("bd_001.bin");
    CHECK(dataloader_open(&dl, pattern, 2, 4, 1000, 0, 1, err, sizeof(err)) == -1 && dlt_contains(err, p)
          && dlt_contains(err, "token 1000 at position 10 is >= vocab size 1000"), "bad id at init: '%s'", err);
    // x.bin and x.bin.gz both present: the same data twice, refused
    dlt_write_counting_shard("dup_000.bin", 0, 100, 1000, 0);
    dlt_write_counting_shard("dup_000.bin.gz", 0, 100, 1000, 1);
    snprintf(pattern, sizeof(pattern), "%s/dup_*.bin", dlt_dir);
    CHECK(dataloader_open(&dl, pattern, 2, 4, 1000, 0, 1, err, sizeof(err)) == -1 && dlt_contains(err, "dup_000.bin.gz")
          && dlt_contains(err, "twice"), "x.bin + x.bin.gz: '%s'", err);
    // bad B, T
    CHECK(dataloader_open(&dl, dlt_path("sh_000.bin"), 0, 4, 1000, 0, 1, err, sizeof(err)) == -1, "B=0 accepted");
}

static void test_dataloader_memory(void) {
    char err[512];
    const int B = 3, T = 5, BT = 15, V = 5000;
    const size_t n = 10 * BT + 7;   // 10 batches
    uint32_t* tokens = (uint32_t*)malloc(n * sizeof(uint32_t));
    uint8_t* domains = (uint8_t*)malloc(n);
    for (size_t i = 0; i < n; i++) { tokens[i] = (uint32_t)i; domains[i] = (uint8_t)((i / 37) % 4); }
    DataLoader dl;
    int ret = dataloader_open_memory(&dl, tokens, domains, n, B, T, V, 0, 1, err, sizeof(err));
    CHECK(ret == 0, "open_memory: %s", err);
    if (ret != 0) { free(tokens); free(domains); return; }
    // the loader keeps its own copy: scribbling on the caller's arrays changes nothing
    for (size_t i = 0; i < n; i++) { tokens[i] = 4999; domains[i] = 9; }
    CHECK(dataloader_num_batches(&dl) == 10, "memory num_batches %lld", (long long)dataloader_num_batches(&dl));
    CHECK(dl.input_domains != NULL, "memory loader with domains has no input_domains");
    int ok = 1;
    for (int i = 0; i < 23; i++) {
        dataloader_next_batch(&dl);
        uint32_t first = (uint32_t)((i % 10) * BT);
        ok &= dlt_batch_is_window(&dl, first);
        for (int j = 0; j < BT; j++) ok &= dl.input_domains[j] == (uint8_t)(((first + (uint32_t)j) / 37) % 4);
    }
    CHECK(ok, "memory loader: windows or domains wrong (sequential, wrapping)");
    dataloader_free(&dl);

    // shuffled: a permutation of the 10 windows per epoch, domains following their tokens
    for (size_t i = 0; i < n; i++) { tokens[i] = (uint32_t)i; domains[i] = (uint8_t)((i / 37) % 4); }
    ret = dataloader_open_memory(&dl, tokens, domains, n, B, T, V, 1, 99, err, sizeof(err));
    CHECK(ret == 0, "open_memory shuffled: %s", err);
    int seen[10] = { 0 };
    ok = 1;
    for (int i = 0; i < 10; i++) {
        dataloader_next_batch(&dl);
        int k = dl.inputs[0] / BT;
        ok &= dl.inputs[0] % BT == 0 && k >= 0 && k < 10 && dlt_batch_is_window(&dl, (uint32_t)dl.inputs[0]);
        if (k >= 0 && k < 10) seen[k]++;
        for (int j = 0; j < BT; j++) ok &= dl.input_domains[j] == (uint8_t)(((dl.inputs[0] + j) / 37) % 4);
    }
    for (int k = 0; k < 10; k++) ok &= seen[k] == 1;
    CHECK(ok, "memory loader shuffled epoch is not a permutation of the windows");
    dataloader_free(&dl);

    // no domains, too short, id >= V
    ret = dataloader_open_memory(&dl, tokens, NULL, n, B, T, V, 0, 1, err, sizeof(err));
    CHECK(ret == 0 && dl.input_domains == NULL, "memory loader without domains: %s", err);
    if (ret == 0) { dataloader_next_batch(&dl); CHECK(dlt_batch_is_window(&dl, 0), "memory loader without domains"); dataloader_free(&dl); }
    CHECK(dataloader_open_memory(&dl, tokens, NULL, BT, B, T, V, 0, 1, err, sizeof(err)) == -1
          && dlt_contains(err, "fewer than the B*T+1 = 16"), "short memory corpus: '%s'", err);
    tokens[77] = V;
    CHECK(dataloader_open_memory(&dl, tokens, NULL, n, B, T, V, 0, 1, err, sizeof(err)) == -1
          && dlt_contains(err, "token 5000 at position 77 is >= vocab size 5000"), "memory id >= V: '%s'", err);
    free(tokens);
    free(domains);
}

static void test_dataloader(void) {
    snprintf(dlt_dir, sizeof(dlt_dir), "/tmp/moe_dataloader_test_XXXXXX");
    if (mkdtemp(dlt_dir) == NULL) {
        CHECK(0, "mkdtemp %s failed", dlt_dir);
        return;
    }
    test_dataloader_shards();
    test_dataloader_glob_and_order();
    test_dataloader_resume();
    test_dataloader_init_errors();
    test_dataloader_memory();
    dlt_remove_dir();
}

// ============================================================================
// domains on real text: label files beside shards, prepare_text with several inputs, eval_moe's
// routing dump and MI chance level (the router study's data path)

static char domt_dir[256];

static const char* domt_path(const char* name) {
    static char buffers[8][512];
    static int next = 0;
    char* p = buffers[next++ % 8];
    snprintf(p, 512, "%s/%s", domt_dir, name);
    return p;
}

// shard NAME.bin with n tokens base, base+1, ... and its labels (token / 37) % 5
static void domt_labelled_shard(const char* name, uint32_t base, size_t n) {
    uint32_t* t = (uint32_t*)malloc(n * sizeof(uint32_t));
    uint8_t* d = (uint8_t*)malloc(n);
    for (size_t i = 0; i < n; i++) { t[i] = base + (uint32_t)i; d[i] = (uint8_t)((t[i] / 37) % 5); }
    char err[512], shard[600], labels[600];
    snprintf(shard, sizeof(shard), "%s.bin", domt_path(name));
    domain_label_path(shard, labels, sizeof(labels));
    CHECK(shard_write(shard, t, n, 0, 0, err, sizeof(err)) == 0, "shard_write: %s", err);
    CHECK(domain_labels_write(labels, d, n, 5, err, sizeof(err)) == 0, "domain_labels_write: %s", err);
    free(t);
    free(d);
}

static void test_domain_labels(void) {
    char err[512], path[600];
    domt_labelled_shard("a", 0, 3000);
    domt_labelled_shard("b", 5000, 2000);
    // shuffled training batches keep tokens and labels aligned, over shards and epochs
    DataLoader dl;
    int ret = dataloader_open(&dl, domt_path("*.bin"), 4, 16, 10000, 1, 99, err, sizeof(err));
    CHECK(ret == 0 && dl.num_domains == 5 && dl.input_domains != NULL, "labelled shards: %s (D=%d)", err,
          ret == 0 ? dl.num_domains : -1);
    if (ret == 0) {
        int aligned = 1, in_order = 1;
        for (int b = 0; b < 200; b++) {  // 200 batches: several epochs of the 77 batches
            dataloader_next_batch(&dl);
            for (int j = 0; j < 64; j++) aligned &= dl.input_domains[j] == (uint8_t)((dl.inputs[j] / 37) % 5);
            if (b < 46 && dl.inputs[0] != b * 64) in_order = 0;
        }
        CHECK(aligned && !in_order, "shuffled batches: every input token's domain must be its own label");
        dataloader_free(&dl);
    }
    // a label file whose count disagrees with its shard is refused, naming it
    uint8_t few[10] = {0};
    snprintf(path, sizeof(path), "%s", domt_path("a.domains"));
    CHECK(domain_labels_write(path, few, 10, 5, err, sizeof(err)) == 0, "%s", err);
    ret = dataloader_open(&dl, domt_path("*.bin"), 4, 16, 10000, 1, 99, err, sizeof(err));
    CHECK(ret == -1 && strstr(err, "a.domains") && strstr(err, "3000"), "short label file accepted: '%s'", err);
    // one shard labelled and the other not: refused
    remove(path);
    ret = dataloader_open(&dl, domt_path("*.bin"), 4, 16, 10000, 1, 99, err, sizeof(err));
    CHECK(ret == -1 && strstr(err, "label every shard or none"), "half-labelled shards accepted: '%s'", err);
    // a label >= D, and a foreign file, are refused
    domt_labelled_shard("a", 0, 3000);
    FILE* f = fopen(path, "r+b");
    if (f != NULL) { fseek(f, DOMAIN_HEADER_BYTES + 17, SEEK_SET); fputc(9, f); fclose(f); }
    ret = dataloader_open(&dl, domt_path("*.bin"), 4, 16, 10000, 1, 99, err, sizeof(err));
    CHECK(ret == -1 && strstr(err, "label 9 at position 17"), "label >= D accepted: '%s'", err);
    f = fopen(path, "wb");
    if (f != NULL) { fputs("not a label file at all", f); fclose(f); }
    ret = dataloader_open(&dl, domt_path("*.bin"), 4, 16, 10000, 1, 99, err, sizeof(err));
    CHECK(ret == -1 && strstr(err, "not a domain-label file"), "foreign label file accepted: '%s'", err);
    domt_labelled_shard("a", 0, 3000);
    // domains.txt: names, or refused when its count disagrees
    char names[5][DOMAIN_NAME_MAX];
    CHECK(domain_names_load(domt_path("a.bin"), 5, names, err, sizeof(err)) == 1 && strcmp(names[4], "domain4") == 0,
          "no domains.txt: default names");
    f = fopen(domt_path("domains.txt"), "w");
    if (f != NULL) { fputs("x\ny\n", f); fclose(f); }
    CHECK(domain_names_load(domt_path("a.bin"), 5, names, err, sizeof(err)) == -1 && strstr(err, "2 domain names"),
          "domains.txt with 2 names for 5 domains accepted: '%s'", err);
    f = fopen(domt_path("domains.txt"), "w");   // one 600-byte line would have counted as two names
    if (f != NULL) { for (int i = 0; i < 600; i++) fputc('x', f); fputs("\nb\n", f); fclose(f); }
    CHECK(domain_names_load(domt_path("a.bin"), 3, names, err, sizeof(err)) == -1 && strstr(err, "line 1 is longer"),
          "domains.txt with a 600-byte line accepted: '%s'", err);
    f = fopen(domt_path("domains.txt"), "w");
    if (f != NULL) { fputs("a\nb,c\nd\ne\nf\n", f); fclose(f); }
    CHECK(domain_names_load(domt_path("a.bin"), 5, names, err, sizeof(err)) == -1 && strstr(err, "comma"),
          "domains.txt with a comma in a name accepted: '%s'", err);
    remove(domt_path("domains.txt"));
    // the permutation behind MI's chance level keeps the labels' counts and depends on the seed only
    uint8_t p1[1000], p2[1000], orig[1000];
    int count_a[5] = {0}, count_b[5] = {0}, moved = 0;
    for (int i = 0; i < 1000; i++) { orig[i] = p1[i] = p2[i] = (uint8_t)(i / 200); count_a[orig[i]]++; }
    domains_permute(p1, 1000, 7);
    domains_permute(p2, 1000, 7);
    for (int i = 0; i < 1000; i++) { count_b[p1[i]]++; moved += p1[i] != orig[i]; }
    CHECK(memcmp(p1, p2, 1000) == 0 && memcmp(count_a, count_b, sizeof(count_a)) == 0 && moved > 500,
          "domains_permute: same seed same order, counts kept, most labels moved (%d)", moved);
}

// prepare_text with three inputs -> shards, labels, domains.txt; every domain in val; then a
// tiny training run and eval_moe pick the labels up (MI beside its chance level, routing dump)
static void test_domain_pipeline(void) {
    char cmd[4096], out[600];
    const char* kinds[3] = {"alpha", "beta", "gamma"};
    for (int d = 0; d < 3; d++) {
        char name[64];
        snprintf(name, sizeof(name), "%s.txt", kinds[d]);
        FILE* f = fopen(domt_path(name), "w");
        if (f == NULL) { CHECK(0, "cannot write %s", name); return; }
        for (int i = 0; i < 400; i++) {
            if (d == 0) fprintf(f, "the quick brown fox %d jumps over the lazy dog\n", i);
            else if (d == 1) fprintf(f, "int x%d = f(y[%d]) + 0x%x;\n", i, i % 7, i * 13);
            else fprintf(f, "LICENSE TERMS AND CONDITIONS SECTION %d: NO WARRANTY.\n", i);
        }
        fclose(f);
    }
    snprintf(out, sizeof(out), "%s", domt_path("prep.txt"));
    snprintf(cmd, sizeof(cmd), "./data/prepare_text -i %s -i %s -i %s -o %s -n md -v 512 --doc-bytes 512",
             domt_path("alpha.txt"), domt_path("beta.txt"), domt_path("gamma.txt"), domt_path("md"));
    int rc = run_cmd(cmd, out);
    CHECK(rc == 0, "prepare_text with three inputs failed (rc %d, see %s)", rc, out);
    if (rc != 0) return;
    char names[3][DOMAIN_NAME_MAX], err[512];
    CHECK(domain_names_load(domt_path("md/md_train.bin"), 3, names, err, sizeof(err)) == 0 &&
          strcmp(names[0], "alpha") == 0 && strcmp(names[2], "gamma") == 0, "domains.txt: %s", err);
    for (int split = 0; split < 2; split++) {
        Shard sh;
        const char* shard = domt_path(split == 0 ? "md/md_train.bin" : "md/md_val.bin");
        char labels_path[600];
        domain_label_path(shard, labels_path, sizeof(labels_path));
        uint8_t* labels = NULL;
        int D = 0;
        CHECK(shard_load(shard, 512, &sh, err, sizeof(err)) == 0, "%s", err);
        CHECK(domain_labels_load(labels_path, sh.num_tokens, &labels, &D, err, sizeof(err)) == 0 && D == 3, "%s", err);
        if (labels != NULL) {
            int seen[3] = {0};
            for (size_t i = 0; i < sh.num_tokens; i++) seen[labels[i]] = 1;
            CHECK(seen[0] && seen[1] && seen[2], "%s: every domain must be in the %s split", shard,
                  split == 0 ? "train" : "val");
            // documents are interleaved: the labels change more often than the 3 domains would alone
            int changes = 0;
            for (size_t i = 1; i < sh.num_tokens; i++) changes += labels[i] != labels[i - 1];
            CHECK(split == 1 || changes > 3, "train documents not interleaved (%d label changes)", changes);
            free(labels);
        }
        shard_free(&sh);
    }
    // make_cloze --seq-len: every example written fits T (context + longest ending <= T + 1); the
    // lines are ~20 tokens, so T=48 keeps one or two of the three context lines
    for (int split = 0; split < 2; split++) {
        snprintf(cmd, sizeof(cmd), "./data/make_cloze --shard %s -o %s -n 200 -t 48 %s", domt_path("md/md_val.bin"),
                 domt_path("cloze.jsonl"), split ? "--split-line" : "");
        rc = run_cmd(cmd, out);
        CHECK(rc == 0, "make_cloze -t 48 failed (rc %d, see %s)", rc, out);
        snprintf(cmd, sizeof(cmd), "grep -Eq 'fitted to T=48: [1-9][0-9]* contexts shortened' %s", out);
        CHECK(system(cmd) == 0, "make_cloze -t 48: some contexts must have been shortened (see %s)", out);
        Tokenizer tok;
        MCSet set;
        memset(&set, 0, sizeof(set));
        int fits = 0;
        if (tokenizer_load(&tok, domt_path("md/tokenizer.bin"), err, sizeof(err)) == 0) {
            if (mc_load(domt_path("cloze.jsonl"), &tok, 512, 511, &set, err, sizeof(err)) == 0) {
                fits = set.n > 20;
                for (int i = 0; i < set.n; i++) {
                    int max_end = 0;
                    for (int j = 0; j < set.examples[i].n_endings; j++)
                        if (set.examples[i].ending_len[j] > max_end) max_end = set.examples[i].ending_len[j];
                    if (set.examples[i].ctx_len + max_end > 49) fits = 0;
                }
            }
            tokenizer_free(&tok);
        }
        CHECK(fits, "make_cloze -t 48%s: %d examples, each must fit T=48 (%s)", split ? " --split-line" : "", set.n, err);
        mc_free(&set);
    }
    // --vocab-size that disagrees with the tokenizer beside the shards (V=512) is refused up front
    snprintf(cmd, sizeof(cmd), "./train_moe -i %s -j %s --vocab-size 600 -x 1 -o %s", domt_path("md/md_train.bin"),
             domt_path("md/md_val.bin"), domt_path("vmis"));
    rc = run_cmd(cmd, out);
    CHECK(rc != 0 && file_contains(out, "--vocab-size 600 differs from the tokenizer"),
          "--vocab-size 600 with a V=512 tokenizer: expected a refusal (rc %d, see %s)", rc, out);
    // bad input: two inputs with the same domain name
    snprintf(cmd, sizeof(cmd), "./data/prepare_text -i %s -i %s -o %s", domt_path("alpha.txt"), domt_path("alpha.txt"),
             domt_path("dup"));
    rc = run_cmd(cmd, out);
    CHECK(rc != 0, "prepare_text accepted the same domain twice");
    // a tiny run on the labelled shards, then eval_moe with the routing dump
    snprintf(cmd, sizeof(cmd), "./train_moe -i %s -j %s --layers 1 --channels 16 --heads 2 --experts 4 -b 2 -t 48 "
             "-x 3 -v 3 -m 2 -o %s", domt_path("md/md_train.bin"), domt_path("md/md_val.bin"), domt_path("run"));
    rc = run_cmd(cmd, out);
    CHECK(rc == 0, "train_moe on labelled shards failed (rc %d, see %s)", rc, out);
    snprintf(cmd, sizeof(cmd), "grep -q 'domains = alpha,beta,gamma' %s && awk -F'\\t' 'NR==2 && $14 != \"nan\" && $16 != \"-\"' %s | grep -q .",
             domt_path("run/config.txt"), domt_path("run/metrics.tsv"));
    CHECK(system(cmd) == 0, "train_moe: config.txt must name the domains and metrics.tsv hold MI and domain counts");
    snprintf(cmd, sizeof(cmd), "./eval_moe -e %s -j %s -b 2 -m 3 --routing-dump %s --json %s", domt_path("run/model_00000003.bin"),
             domt_path("md/md_val.bin"), domt_path("dump.tsv"), domt_path("eval.json"));
    rc = run_cmd(cmd, out);
    CHECK(rc == 0, "eval_moe with --routing-dump failed (rc %d, see %s)", rc, out);
    snprintf(cmd, sizeof(cmd), "test $(wc -l < %s) -eq $((3 * 2 * 48 + 1)) && grep -q 'chance' %s && "
             "grep -q '\"domain_mi_chance\": [0-9]' %s && grep -q '\"top_domain\": \"' %s",
             domt_path("dump.tsv"), out, domt_path("eval.json"), domt_path("eval.json"));
    CHECK(system(cmd) == 0, "eval_moe: routing dump of 288 tokens x 1 layer + header, MI chance level, top domains");
    // eval_moe says how many multiple-choice items it scored of those in the file
    snprintf(cmd, sizeof(cmd), "./eval_moe -e %s -m 0 --mc %s --tokenizer %s --json %s", domt_path("run/model_00000003.bin"),
             domt_path("cloze.jsonl"), domt_path("md/tokenizer.bin"), domt_path("eval.json"));
    rc = run_cmd(cmd, out);
    snprintf(cmd, sizeof(cmd), "grep -Eq 'scored +([0-9]+) of the \\1 examples in the file' %s && grep -q '\"in_file\": ' %s",
             out, domt_path("eval.json"));
    CHECK(rc == 0 && system(cmd) == 0, "eval_moe --mc: 'scored N of the N examples in the file' (see %s)", out);
}

static void test_domains(void) {
    snprintf(domt_dir, sizeof(domt_dir), "/tmp/moe_domains_test_XXXXXX");
    if (mkdtemp(domt_dir) == NULL) { CHECK(0, "mkdtemp %s failed", domt_dir); return; }
    test_domain_labels();
    test_domain_pipeline();
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", domt_dir);
    if (system(cmd) != 0) printf("note: could not remove %s\n", domt_dir);
}

// ============================================================================
// the tokenizer (tokenizer.h)

// Tests of tokenizer.h: test_tokenizer() uses only the CHECK macro (and the
// tests_passed/tests_failed counters behind it) defined by the file that includes this one.
// Everything is built here: hand-made tokenizer files in a mkdtemp directory and small texts.

// the pre-tokens of s joined by '|' into out
static void tok_test_split(const char* s, char* out, size_t outlen) {
    size_t n = strlen(s), k = 0;
    for (size_t i = 0; i < n;) {
        size_t end = tokenizer_pretoken_end((const unsigned char*)s, n, i);
        if (i > 0 && k + 1 < outlen) out[k++] = '|';
        for (; i < end && k + 1 < outlen; i++) out[k++] = s[i];
        i = end;
    }
    out[k] = 0;
}

static void tok_test_write(const char* path, const void* data, size_t n) {
    FILE* f = fopen(path, "wb");
    if (f != NULL) { fwrite(data, 1, n, f); fclose(f); }
}

// An llm.c tokenizer file in memory: version, the tokens (as C strings, or single bytes for ids
// below n_bytes), end-of-text, merges. Returns its size; *buf is malloc'd.
static size_t tok_test_file(unsigned char** buf, uint32_t version, uint32_t n_bytes, const char** extra,
                            uint32_t n_extra, uint32_t eot, const uint32_t* merges, uint32_t n_merges) {
    size_t cap = 1024 + 2 * (size_t)n_bytes + 8 * (size_t)n_merges;
    for (uint32_t k = 0; k < n_extra; k++) cap += 1 + strlen(extra[k]);
    *buf = (unsigned char*)calloc(cap, 1);
    uint32_t header[256] = {0};
    header[0] = TOKENIZER_MAGIC; header[1] = version; header[2] = n_bytes + n_extra;
    header[3] = eot; header[4] = n_merges;
    memcpy(*buf, header, sizeof(header));
    size_t pos = 1024;
    for (uint32_t b = 0; b < n_bytes; b++) { (*buf)[pos++] = 1; (*buf)[pos++] = (unsigned char)b; }
    for (uint32_t k = 0; k < n_extra; k++) {
        size_t len = strlen(extra[k]);
        (*buf)[pos++] = (unsigned char)len;
        memcpy(*buf + pos, extra[k], len); pos += len;
    }
    if (n_merges > 0) memcpy(*buf + pos, merges, 8 * (size_t)n_merges);
    return pos + 8 * (size_t)n_merges;
}

// encodes s and compares with the expected ids
static int tok_test_encodes_to(const Tokenizer* t, const char* s, const uint32_t* want, size_t n_want) {
    uint32_t* ids; size_t n; char err[256];
    if (tokenizer_encode(t, (const unsigned char*)s, strlen(s), &ids, &n, err, sizeof(err)) != 0) return 0;
    int same = n == n_want && (n == 0 || memcmp(ids, want, n * sizeof(uint32_t)) == 0);
    free(ids);
    return same;
}

// encode then decode gives back exactly text[0..n)
static int tok_test_round_trip(const Tokenizer* t, const unsigned char* text, size_t n) {
    uint32_t* ids; size_t n_ids; unsigned char* back; size_t n_back; char err[256];
    if (tokenizer_encode(t, text, n, &ids, &n_ids, err, sizeof(err)) != 0) return 0;
    int ok = tokenizer_decode(t, ids, n_ids, &back, &n_back, err, sizeof(err)) == 0 &&
             n_back == n && memcmp(back, text, n) == 0;
    for (size_t i = 0; i < n_ids; i++) if (ids[i] == t->eot_token) ok = 0;  // never produced
    free(ids);
    if (ok) free(back);
    return ok;
}

static void test_tokenizer(void) {
    char got[512], err[512], dir[] = "/tmp/moe_tokenizer_test_XXXXXX", path[600];
    if (mkdtemp(dir) == NULL) { CHECK(0, "tokenizer: mkdtemp failed"); return; }

    // --- the pre-tokenizer, on hand-split examples of each alternative of GPT-2's pattern
    static const char* split_cases[][2] = {
        {"Hello world", "Hello| world"},
        {"don't I'LL it's", "don|'t| I|'|LL| it|'s"},                  // contractions: lower case only
        {"we're they've I'm you'll he'd", "we|'re| they|'ve| I|'m| you|'ll| he|'d"},
        {"'s's  'll", "'s|'s| | '|ll"},                                 // "  'll": a space, then " '" + "ll"
        {"12345 3.14", "12345| 3|.|14"},
        {"x=1;y+=2.5", "x|=|1|;|y|+=|2|.|5"},
        {"hello!!! ?", "hello|!!!| ?"},
        {"a  \n\n  b   ", "a|  \n\n | b|   "},                         // \s+(?!\S), then " b", then the tail
        {"a \tb", "a| |\t|b"},                                          // only ' ' joins the next word
        {"a\tb\n", "a|\t|b|\n"},
        {"na\xc3\xafve caf\xc3\xa9 \xe6\x9d\xb1\xe4\xba\xac \xc2\xbd\xd9\xa3",  // naïve café 東京 ½٣
         "na\xc3\xafve| caf\xc3\xa9| \xe6\x9d\xb1\xe4\xba\xac| \xc2\xbd\xd9\xa3"},
        {"e\xcc\x81t\xc3\xa9", "e|\xcc\x81|t\xc3\xa9"},                  // a combining mark is "other"
        {"hi\xf0\x9f\x98\x80!", "hi|\xf0\x9f\x98\x80!"},                 // emoji and '!' are both "other"
        {"a\xc2\xa0" "b", "a|\xc2\xa0|b"},                              // no-break space is \s
        {"ab\xff\xfe" "cd \x80x", "ab|\xff\xfe|cd| \x80|x"},            // invalid bytes are "other"
        {"\xe6\x9d", "\xe6\x9d"},                                       // a truncated sequence too
    };
    for (size_t k = 0; k < sizeof(split_cases) / sizeof(split_cases[0]); k++) {
        tok_test_split(split_cases[k][0], got, sizeof(got));
        CHECK(strcmp(got, split_cases[k][1]) == 0, "pretokenize case %zu: got [%s] want [%s]", k, got, split_cases[k][1]);
    }

    // --- a hand-built tokenizer: bytes, then merge r makes id 256 + r; the answers are by hand
    // A: r0 (a,b)->ab  r1 (b,c)->bc  r2 (ab,c)->abc  r3 (c,c)->cc, end-of-text 260
    const char* extra_a[] = {"ab", "bc", "abc", "cc", "<|endoftext|>"};
    uint32_t merges_a[] = {'a', 'b', 'b', 'c', 256, 'c', 'c', 'c'};
    unsigned char* file;
    size_t size = tok_test_file(&file, 2, 256, extra_a, 5, 260, merges_a, 4);
    Tokenizer t;
    int status = tokenizer_parse(&t, file, size, "A", err, sizeof(err));
    CHECK(status == 0, "hand-built tokenizer A refused: %s", err);
    if (status == 0) {
        uint32_t w1[] = {258, 'c'};                 // abcc: ab (r0) then abc (r2); cc (r3) comes too late
        uint32_t w2[] = {259, 259};                 // cccc: leftmost cc first, then the other
        uint32_t w3[] = {259, 'c'};
        uint32_t w4[] = {256, ' ', 258};            // "ab abc": two pre-tokens, the space stays alone
        CHECK(tok_test_encodes_to(&t, "abcc", w1, 2), "merge order: abcc should be [abc, c]");
        CHECK(tok_test_encodes_to(&t, "cccc", w2, 2), "leftmost first: cccc should be [cc, cc]");
        CHECK(tok_test_encodes_to(&t, "ccc", w3, 2), "leftmost first: ccc should be [cc, c]");
        CHECK(tok_test_encodes_to(&t, "ab abc", w4, 3), "\"ab abc\" should be [ab, ' ', abc]");
        CHECK(tok_test_encodes_to(&t, "", NULL, 0), "empty text should give no ids");
        CHECK(t.merge_result[2] == 258, "merge 2 should make token 258, made %u", t.merge_result[2]);
        tokenizer_free(&t);
    }
    free(file);
    // B: the same tokens, (b,c) ranked before (a,b): abcc -> [a, bc, c]
    const char* extra_b[] = {"bc", "ab", "abc", "cc", "<|endoftext|>"};
    uint32_t merges_b[] = {'b', 'c', 'a', 'b', 257, 'c', 'c', 'c'};
    size = tok_test_file(&file, 2, 256, extra_b, 5, 260, merges_b, 4);
    status = tokenizer_parse(&t, file, size, "B", err, sizeof(err));
    CHECK(status == 0, "hand-built tokenizer B refused: %s", err);
    if (status == 0) {
        uint32_t w[] = {'a', 256, 'c'};
        CHECK(tok_test_encodes_to(&t, "abcc", w, 3), "rank order: with (b,c) first abcc should be [a, bc, c]");
        tokenizer_free(&t);
    }
    free(file);
    // C: no merges (the approximate fallback: lowest-id concatenation first); end-of-text "xy"
    // is never the result of merging x and y
    const char* extra_c[] = {"ab", "bc", "abc", "cc", "xy"};
    size = tok_test_file(&file, 2, 256, extra_c, 5, 260, NULL, 0);
    status = tokenizer_parse(&t, file, size, "C", err, sizeof(err));
    CHECK(status == 0, "hand-built tokenizer C refused: %s", err);
    if (status == 0) {
        uint32_t w1[] = {258, 'c'}, w2[] = {'x', 'y'};
        CHECK(tok_test_encodes_to(&t, "abcc", w1, 2), "no-merge fallback: abcc should be [abc, c]");
        CHECK(tok_test_encodes_to(&t, "xy", w2, 2), "end-of-text must never come from a merge");
        tokenizer_free(&t);
    }
    free(file);

    // --- a version-1 file (llm.c's GPT-2 layout: 50257 tokens, end-of-text 50256, no merges)
    {
        const char** extra = (const char**)malloc((50257 - 256) * sizeof(char*));
        static char names[50257 - 256][6];
        for (int k = 0; k < 50257 - 256 - 1; k++) { snprintf(names[k], sizeof(names[k]), "%d", k + 256); extra[k] = names[k]; }
        extra[50257 - 256 - 1] = "<|endoftext|>";
        size = tok_test_file(&file, 1, 256, extra, 50257 - 256, 0, NULL, 0);
        snprintf(path, sizeof(path), "%s/v1.bin", dir);
        tok_test_write(path, file, size);
        status = tokenizer_load(&t, path, err, sizeof(err));
        CHECK(status == 0, "version-1 file refused: %s", err);
        if (status == 0) {
            CHECK(t.version == 1 && t.vocab_size == 50257 && t.eot_token == 50256 && t.n_merges == 0,
                  "version 1: got version %d V %u eot %u merges %u", t.version, t.vocab_size, t.eot_token, t.n_merges);
            uint32_t ids[] = {50256, 300, 'h'};
            unsigned char* out; size_t n;
            status = tokenizer_decode(&t, ids, 3, &out, &n, err, sizeof(err));
            CHECK(status == 0 && n == 17 && memcmp(out, "<|endoftext|>300h", 17) == 0, "version 1: decode wrong");
            if (status == 0) free(out);
            uint32_t w[] = {'3', '0', '0', '3', '0', '1'};  // no 2-byte tokens here, so nothing merges
            CHECK(tok_test_encodes_to(&t, "300301", w, 6), "version 1: fallback encoding of 300301");
            tokenizer_free(&t);
        }
        free(file); free(extra);
        remove(path);
    }

    // --- malformed files are refused with a message naming the file
    size = tok_test_file(&file, 2, 256, extra_a, 5, 260, merges_a, 4);
    snprintf(path, sizeof(path), "%s/bad.bin", dir);
    size_t cuts[] = {0, 10, 1023, 1024, 1030, 1546, size - 200, size - 1};  // header, tokens, merges
    for (size_t k = 0; k < sizeof(cuts) / sizeof(cuts[0]); k++) {
        tok_test_write(path, file, cuts[k]);
        status = tokenizer_load(&t, path, err, sizeof(err));
        CHECK(status != 0 && strstr(err, path) && strstr(err, "truncated"),
              "a file cut to %zu bytes should be refused as truncated, got %d [%s]", cuts[k], status, err);
    }
    unsigned char* bad = (unsigned char*)malloc(size + 8);
    memcpy(bad, file, size);
    bad[0] ^= 1;                                                  // bad magic
    tok_test_write(path, bad, size);
    status = tokenizer_load(&t, path, err, sizeof(err));
    CHECK(status != 0 && strstr(err, path) && strstr(err, "magic"), "bad magic should be refused [%s]", err);
    memcpy(bad, file, size);
    bad[4] = 3;                                                   // unknown version
    tok_test_write(path, bad, size);
    status = tokenizer_load(&t, path, err, sizeof(err));
    CHECK(status != 0 && strstr(err, "version"), "version 3 should be refused [%s]", err);
    memcpy(bad, file, size);
    uint32_t out_of_range = 261;
    memcpy(bad + size - 8, &out_of_range, 4);                     // last merge (c, c) -> (261, c)
    tok_test_write(path, bad, size);
    status = tokenizer_load(&t, path, err, sizeof(err));
    CHECK(status != 0 && strstr(err, path) && strstr(err, "merge 3"), "an out-of-range merge id should be refused [%s]", err);
    memcpy(bad, file, size);
    uint32_t eot = 260;
    memcpy(bad + size - 8, &eot, 4);                              // a merge using end-of-text
    tok_test_write(path, bad, size);
    status = tokenizer_load(&t, path, err, sizeof(err));
    CHECK(status != 0 && strstr(err, "end-of-text"), "a merge of end-of-text should be refused [%s]", err);
    memcpy(bad, file, size);
    uint32_t not_concat[2] = {'a', 'c'};                         // "ac" is not a token
    memcpy(bad + size - 8, not_concat, 8);
    tok_test_write(path, bad, size);
    status = tokenizer_load(&t, path, err, sizeof(err));
    CHECK(status != 0 && strstr(err, "concatenation"), "a merge whose result is no token should be refused [%s]", err);
    memcpy(bad, file, size);
    bad[1024 + 2 * 7] = 0;                                        // token 7 of length 0
    tok_test_write(path, bad, size);
    status = tokenizer_load(&t, path, err, sizeof(err));
    CHECK(status != 0 && strstr(err, "token 7 has length 0"), "a length-0 token should be refused [%s]", err);
    memcpy(bad, file, size);
    memset(bad + size, 0, 8);                                     // trailing garbage
    tok_test_write(path, bad, size + 3);
    status = tokenizer_load(&t, path, err, sizeof(err));
    CHECK(status != 0 && strstr(err, "unexpected"), "trailing bytes should be refused [%s]", err);
    memcpy(bad, file, size);
    uint32_t big_v = 0x7FFFFFFF;                                  // V far beyond the file
    memcpy(bad + 8, &big_v, 4);
    tok_test_write(path, bad, size);
    status = tokenizer_load(&t, path, err, sizeof(err));
    CHECK(status != 0 && strstr(err, path), "a huge V should be refused [%s]", err);
    free(bad); free(file);
    remove(path);
    snprintf(path, sizeof(path), "%s/missing.bin", dir);
    status = tokenizer_load(&t, path, err, sizeof(err));
    CHECK(status != 0 && strstr(err, path), "a missing file should be refused by name [%s]", err);

    // --- training, hand-computed: "ab ab ab abc" has pre-tokens ab, " ab" x2, " abc":
    // (a,b) 4 times -> 256; then (' ', 256) 3 times -> 257; then (257, c) once -> 258
    const char* small = "ab ab ab abc";
    status = tokenizer_train(&t, (const unsigned char*)small, strlen(small), 260, err, sizeof(err));
    CHECK(status == 0, "training on \"%s\" failed: %s", small, err);
    if (status == 0) {
        uint32_t want[] = {'a', 'b', ' ', 256, 257, 'c'};
        CHECK(t.n_merges == 3 && memcmp(t.merges, want, sizeof(want)) == 0,
              "merges of \"%s\": got (%u,%u) (%u,%u) (%u,%u)", small, t.merges[0], t.merges[1], t.merges[2],
              t.merges[3], t.merges[4], t.merges[5]);
        size_t len;
        const unsigned char* p = tokenizer_token(&t, 258, &len);
        CHECK(len == 4 && memcmp(p, " abc", 4) == 0, "token 258 should be \" abc\"");
        p = tokenizer_token(&t, 259, &len);
        CHECK(t.eot_token == 259 && len == 13 && memcmp(p, TOKENIZER_EOT_TEXT, 13) == 0, "end-of-text should be V-1");
        tokenizer_free(&t);
    }
    status = tokenizer_train(&t, (const unsigned char*)small, strlen(small), 261, err, sizeof(err));
    CHECK(status != 0 && strstr(err, "no pairs left"), "a 4th merge does not exist and should be refused [%s]", err);
    // ties go to the lowest left id, then the lowest right id: "ba,ac,ab" has (b,a), (a,c), (a,b) once
    status = tokenizer_train(&t, (const unsigned char*)"ba,ac,ab", 8, 258, err, sizeof(err));
    CHECK(status == 0 && t.merges[0] == 'a' && t.merges[1] == 'b', "tie-break: want merge (a,b), got (%u,%u)",
          status == 0 ? t.merges[0] : 0, status == 0 ? t.merges[1] : 0);
    if (status == 0) tokenizer_free(&t);
    status = tokenizer_train(&t, (const unsigned char*)small, strlen(small), 100, err, sizeof(err));
    CHECK(status != 0, "a vocabulary below 257 should be refused");

    // --- training on a small text: structure, determinism, write + load, round trips
    const char* verse =
        "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n"
        "Rough winds do shake the darling buds of May,\nAnd summer's lease hath all too short a date;\n"
        "Sometime too hot the eye of heaven shines,\nAnd often is his gold complexion dimm'd;\n"
        "And every fair from fair sometime declines,\nBy chance or nature's changing course untrimm'd;\n"
        "But thy eternal summer shall not fade,\nNor lose possession of that fair thou ow'st;\n"
        "Nor shall Death brag thou wander'st in his shade,\nWhen in eternal lines to time thou grow'st:\n"
        "   So long as men can breathe or eyes can see,\n   So long lives this, and this gives life to thee.  \n"
        "<|endoftext|> 1609 \xe2\x80\x94 Sonnet 18 \xe2\x80\x94 caf\xc3\xa9 \xf0\x9f\x98\x80\n";
    size_t verse_len = strlen(verse);
    Tokenizer t2;
    status = tokenizer_train(&t, (const unsigned char*)verse, verse_len, 400, err, sizeof(err));
    CHECK(status == 0, "training on the sonnet failed: %s", err);
    if (status == 0) {
        CHECK(t.vocab_size == 400 && t.eot_token == 399 && t.n_merges == 143, "sonnet: V %u eot %u merges %u",
              t.vocab_size, t.eot_token, t.n_merges);
        int structure = 1;
        for (uint32_t id = 0; id < 256; id++) {
            size_t len; const unsigned char* p = tokenizer_token(&t, id, &len);
            if (len != 1 || p[0] != id) structure = 0;
        }
        for (uint32_t r = 0; r < t.n_merges; r++) {  // token 256 + r = left + right
            size_t l, a, b;
            const unsigned char* p = tokenizer_token(&t, 256 + r, &l);
            const unsigned char* pa = tokenizer_token(&t, t.merges[2 * r], &a);
            const unsigned char* pb = tokenizer_token(&t, t.merges[2 * r + 1], &b);
            if (l != a + b || memcmp(p, pa, a) != 0 || memcmp(p + a, pb, b) != 0 || t.merge_result[r] != 256 + r) structure = 0;
        }
        CHECK(structure, "sonnet: ids 0..255 must be the bytes and token 256+r merge r");
        CHECK(tok_test_round_trip(&t, (const unsigned char*)verse, verse_len), "sonnet: round trip not byte-exact");
        unsigned char all[256 + 64];
        for (int b = 0; b < 256; b++) all[b] = (unsigned char)b;
        uint32_t state = 12345;
        for (int k = 256; k < 256 + 64; k++) { state = state * 1664525u + 1013904223u; all[k] = (unsigned char)(state >> 24); }
        CHECK(tok_test_round_trip(&t, all, sizeof(all)), "all 256 bytes and random bytes: round trip not byte-exact");
        const char* invalid = "\xc0\xaf \xed\xa0\x80 \xf4\x90\x80\x80 \xff\xfe abc\xe2\x82 x\x80\x80";
        CHECK(tok_test_round_trip(&t, (const unsigned char*)invalid, strlen(invalid)), "invalid UTF-8: round trip");
        // encoding the training text segments it as training did: fewer ids than bytes
        uint32_t* ids; size_t n_ids;
        status = tokenizer_encode(&t, (const unsigned char*)verse, verse_len, &ids, &n_ids, err, sizeof(err));
        CHECK(status == 0 && n_ids < verse_len / 2, "sonnet: %zu ids for %zu bytes", n_ids, verse_len);
        // write, load back: the same merges and the same ids
        snprintf(path, sizeof(path), "%s/sonnet.bin", dir);
        status = tokenizer_write(&t, path, err, sizeof(err));
        CHECK(status == 0, "tokenizer_write: %s", err);
        status = tokenizer_load(&t2, path, err, sizeof(err));
        CHECK(status == 0, "tokenizer_load of a written file: %s", err);
        if (status == 0) {
            uint32_t* ids2; size_t n2;
            CHECK(t2.version == 2 && t2.n_merges == t.n_merges && memcmp(t2.merges, t.merges, 8 * t.n_merges) == 0,
                  "written and loaded merges differ");
            int enc = tokenizer_encode(&t2, (const unsigned char*)verse, verse_len, &ids2, &n2, err, sizeof(err));
            CHECK(enc == 0 && n2 == n_ids && memcmp(ids, ids2, n2 * sizeof(uint32_t)) == 0, "loaded tokenizer encodes differently");
            if (enc == 0) free(ids2);
            tokenizer_free(&t2);
        }
        remove(path);
        free(ids);
        // training is deterministic
        status = tokenizer_train(&t2, (const unsigned char*)verse, verse_len, 400, err, sizeof(err));
        CHECK(status == 0 && memcmp(t2.merges, t.merges, 8 * t.n_merges) == 0, "training twice gave different merges");
        if (status == 0) tokenizer_free(&t2);
        // decoding an unknown id is refused, clearly
        uint32_t unknown[] = {'a', 400};
        unsigned char* out; size_t n_out;
        status = tokenizer_decode(&t, unknown, 2, &out, &n_out, err, sizeof(err));
        CHECK(status != 0 && strstr(err, "400") && strstr(err, "position 1"), "decode of id 400 (V = 400) should fail [%s]", err);
        status = tokenizer_decode(&t, unknown, 0, &out, &n_out, err, sizeof(err));
        CHECK(status == 0 && n_out == 0, "decode of no ids should give no bytes");
        if (status == 0) free(out);
        size_t len;
        CHECK(tokenizer_token(&t, 400, &len) == NULL, "tokenizer_token of an unknown id should be NULL");
        tokenizer_free(&t);
    }

    // --- no token longer than 255 bytes: one pre-token of 1000 'a's wants (a^128, a^128) next
    unsigned char* run = (unsigned char*)malloc(1000);
    memset(run, 'a', 1000);
    status = tokenizer_train(&t, run, 1000, 257 + 10, err, sizeof(err));
    CHECK(status == 0, "training on 1000 a's failed: %s", err);
    if (status == 0) {
        size_t longest = 0;
        for (uint32_t id = 0; id < t.vocab_size; id++) {
            size_t len; tokenizer_token(&t, id, &len);
            if (len > longest) longest = len;
        }
        CHECK(longest <= 255 && longest >= 192, "longest token %zu bytes: want at most 255 (and the run used)", longest);
        CHECK(tok_test_round_trip(&t, run, 1000), "1000 a's: round trip");
        tokenizer_free(&t);
    }
    free(run);
    rmdir(dir);
}

// ============================================================================
// eval_moe and make_cloze

// Their functions come from eval.h, mc.h and data/cloze.h; the command line is exercised by
// running ./eval_moe.
// Everything is built here, in a mkdtemp directory: tiny models, a hand-made tokenizer, shards,
// multiple-choice files (good and malformed).

// ----------------------------------------------------------------------------
// helpers

static char evt_dir[256];

static void evt_path(char* out, size_t n, const char* name) { snprintf(out, n, "%s/%s", evt_dir, name); }

static void evt_write(const char* path, const void* data, size_t n) {
    FILE* f = fopen(path, "wb");
    if (f != NULL) { fwrite(data, 1, n, f); fclose(f); }
}

static int evt_contains(const char* haystack, const char* needle) { return strstr(haystack, needle) != NULL; }

// A tiny model: L=2, NH=2, C=32, E=4, K=2, H=64.
static void evt_model(MoEModel* m, int V, int maxT) {
    MoEConfig c = {maxT, V, pad_vocab(V), 2, 2, 32, 4, 2, 64, 0};
    moe_build(m, &c);
    moe_init_params(m, 7, 0.02f);
}

// The test tokenizer: ids 0..255 the bytes, 256 = "\x01\x02", 257 = "\x03\x04\x05",
// 258 = "\x06\x07\x08\x0e\x0f", 259 = end-of-text; no merges (version 2, M = 0).
#define EVT_V 260
#define EVT_EOT 259
static const double EVT_BYTES[4] = {2, 3, 5, 0};  // bytes of ids 256..259 (end-of-text counts 0)
static void evt_write_tokenizer(const char* path) {
    static const char* extra[4] = {"\x01\x02", "\x03\x04\x05", "\x06\x07\x08\x0e\x0f", TOKENIZER_EOT_TEXT};
    unsigned char* buf = (unsigned char*)calloc(1024 + 2 * 256 + 64, 1);
    uint32_t header[256] = {0};
    header[0] = TOKENIZER_MAGIC; header[1] = 2; header[2] = EVT_V; header[3] = EVT_EOT; header[4] = 0;
    memcpy(buf, header, sizeof(header));
    size_t pos = 1024;
    for (int b = 0; b < 256; b++) { buf[pos++] = 1; buf[pos++] = (unsigned char)b; }
    for (int k = 0; k < 4; k++) {
        size_t len = strlen(extra[k]);
        buf[pos++] = (unsigned char)len;
        memcpy(buf + pos, extra[k], len);
        pos += len;
    }
    evt_write(path, buf, pos);
    free(buf);
}

// Runs ./eval_moe args (one thread) with stdout/stderr to files; returns its exit status (-1 if it
// did not exit normally). stderr_text (if not NULL) receives the start of its stderr.
static int evt_run_eval(char** args, int nargs, char* stderr_text, size_t n) {
    char out_path[512], err_path[512];
    evt_path(out_path, sizeof(out_path), "child_stdout.txt");
    evt_path(err_path, sizeof(err_path), "child_stderr.txt");
    fflush(stdout); fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        int fo = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644), fe = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fo, 1); dup2(fe, 2);
        setenv("OMP_NUM_THREADS", "1", 1);
        char* argv[64];
        argv[0] = (char*)"./eval_moe";
        for (int i = 0; i < nargs; i++) argv[i + 1] = args[i];
        argv[nargs + 1] = NULL;
        execv("./eval_moe", argv);
        fprintf(stderr, "cannot run ./eval_moe: %s\n", strerror(errno));
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (stderr_text != NULL) {
        stderr_text[0] = 0;
        FILE* f = fopen(err_path, "rb");
        if (f != NULL) { size_t got = fread(stderr_text, 1, n - 1, f); stderr_text[got] = 0; fclose(f); }
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// reads a JSON file and returns the number at obj.key (NAN if absent)
static double evt_json_number(const JsonValue* root, const char* obj, const char* key) {
    const JsonValue* o = json_get(root, obj);
    const JsonValue* v = o != NULL ? json_get(o, key) : NULL;
    return v != NULL && v->type == JSON_NUMBER ? v->number : NAN;
}

// cross-entropy of token v at row position t of the last forward (B=1): logsumexp over V - logit
static double evt_ce(const MoEModel* m, int t, int v) {
    const float* x = m->acts.logits + (size_t)t * m->config.padded_vocab_size;
    int V = m->config.vocab_size;
    double mx = x[0], s = 0.0;
    for (int i = 1; i < V; i++) if (x[i] > mx) mx = x[i];
    for (int i = 0; i < V; i++) s += exp(x[i] - mx);
    return mx + log(s) - x[v];
}

// ----------------------------------------------------------------------------
// the tests

static void test_eval_json_parser(void) {
    const char* doc = " {\"a\": [1, -2.5e2, true, false, null, {\"b\": \"x\\\"y\\\\\\/\\n\\t\"}], "
                      "\"u\": \"\\u00e9\\ud83d\\ude00\\u0000z\", \"a\": 7} ";
    JsonValue v;
    char err[256];
    int rc = json_parse((const unsigned char*)doc, strlen(doc), &v, err, sizeof(err));
    CHECK(rc == 0, "json: a valid document failed to parse: %s", err);
    if (rc == 0) {
        const JsonValue* a = json_get(&v, "a");
        CHECK(a != NULL && a->type == JSON_NUMBER && a->number == 7, "json: a repeated key should give the last value");
        const JsonValue* arr = v.n > 0 ? &v.items[0] : NULL;
        CHECK(arr != NULL && arr->type == JSON_ARRAY && arr->n == 6, "json: array of 6 expected");
        if (arr != NULL && arr->n == 6) {
            CHECK(arr->items[0].number == 1 && arr->items[1].number == -250.0, "json: numbers 1 and -2.5e2");
            CHECK(arr->items[2].type == JSON_TRUE && arr->items[3].type == JSON_FALSE && arr->items[4].type == JSON_NULL,
                  "json: true/false/null");
            const JsonValue* b = json_get(&arr->items[5], "b");
            CHECK(b != NULL && b->len == 7 && memcmp(b->str, "x\"y\\/\n\t", 7) == 0, "json: simple escapes");
        }
        const JsonValue* u = json_get(&v, "u");
        const unsigned char want[] = {0xC3, 0xA9, 0xF0, 0x9F, 0x98, 0x80, 0x00, 'z'};
        CHECK(u != NULL && u->len == 8 && memcmp(u->str, want, 8) == 0,
              "json: \\u00e9, a surrogate pair and \\u0000 should give C3 A9 F0 9F 98 80 00 7A");
        json_free(&v);
    }
    struct { const char* text; const char* needle; } bad[] = {
        {"{\"a\": tru}", "column 7"}, {"[1, 2", "expected ',' or ']'"}, {"\"abc", "unterminated string"},
        {"\"\\ud83d\"", "high surrogate"}, {"\"\\ude00\"", "lone low surrogate"}, {"\"a\\qb\"", "unknown escape"},
        {"01", "unexpected text"}, {"1.", "digits must follow"}, {"{\"a\" 1}", "expected ':'"}, {"{} x", "unexpected text"},
        {"\"a\tb\"", "control character"}, {"", "unexpected end"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = 0;
        rc = json_parse((const unsigned char*)bad[i].text, strlen(bad[i].text), &v, err, sizeof(err));
        CHECK(rc != 0 && evt_contains(err, bad[i].needle), "json: '%s' should fail with '%s', got rc %d '%s'",
              bad[i].text, bad[i].needle, rc, err);
    }
    char deep[300];
    memset(deep, '[', 200); deep[200] = 0;
    rc = json_parse((const unsigned char*)deep, 200, &v, err, sizeof(err));
    CHECK(rc != 0 && evt_contains(err, "nested too deeply"), "json: 200 nested arrays should be refused, got '%s'", err);
}

// eval_loss on one batch gives exactly moe_forward's mean_loss; bits per byte by hand
static void test_eval_loss_and_bpb(void) {
    MoEModel m;
    evt_model(&m, EVT_V, 16);
    int B = 2, T = 8, nb = 3;
    size_t n = (size_t)B * T * nb + 1;
    uint32_t* tokens = (uint32_t*)malloc(sizeof(uint32_t) * n);
    uint64_t rng = 99;
    for (size_t i = 0; i < n; i++) tokens[i] = random_u32(&rng) % EVT_V;
    tokens[3] = EVT_EOT; tokens[5] = 256; tokens[6] = 257; tokens[9] = 258; tokens[12] = EVT_EOT;  // targets of every kind
    DataLoader dl;
    char err[512];
    CHECK(dataloader_open_memory(&dl, tokens, NULL, n, B, T, EVT_V, 0, 0, err, sizeof(err)) == 0, "loader: %s", err);
    // the direct forward of batch 0
    int* in = (int*)malloc(sizeof(int) * B * T);
    int* tg = (int*)malloc(sizeof(int) * B * T);
    for (int i = 0; i < B * T; i++) { in[i] = (int)tokens[i]; tg[i] = (int)tokens[i + 1]; }
    moe_forward(&m, in, tg, B, T, &EVAL0);
    float mean_loss = m.mean_loss;
    double nll = 0.0, bytes = 0.0;
    for (int i = 0; i < B * T; i++) {
        nll += m.acts.losses[i];
        bytes += tg[i] < 256 ? 1.0 : EVT_BYTES[tg[i] - 256];
    }
    double bpb_hand = nll / log(2.0) / bytes;
    // eval_loss with the tokenizer's byte counts
    char tok_path[512];
    evt_path(tok_path, sizeof(tok_path), "tokenizer.bin");
    evt_write_tokenizer(tok_path);
    Tokenizer tok;
    CHECK(tokenizer_load(&tok, tok_path, err, sizeof(err)) == 0, "tokenizer: %s", err);
    double* tb = token_byte_counts(&tok);
    LossResult r;
    eval_loss(&m, &EVAL0, &dl, 1, tb, NULL, &r);
    CHECK(r.batches == 1 && r.tokens == B * T, "eval_loss: 1 batch of %d tokens expected, got %d / %ld", B * T, r.batches, r.tokens);
    CHECK((float)r.loss == mean_loss, "eval_loss: loss %.9g differs from moe_forward's mean_loss %.9g", r.loss, mean_loss);
    CHECK(fabs(r.perplexity - exp(r.loss)) < 1e-12 * r.perplexity, "eval_loss: perplexity is not exp(loss)");
    CHECK(r.have_bpb && fabs(r.bpb - bpb_hand) < 1e-12 * bpb_hand && r.bytes == bytes,
          "bpb: %.12g (bytes %.0f) differs from the hand computation %.12g (bytes %.0f)", r.bpb, r.bytes, bpb_hand, bytes);
    // all batches: the mean of the per-batch means (equal batch sizes)
    double mean3 = 0.0;
    for (int b = 0; b < nb; b++) {
        for (int i = 0; i < B * T; i++) { in[i] = (int)tokens[b * B * T + i]; tg[i] = (int)tokens[b * B * T + i + 1]; }
        moe_forward(&m, in, tg, B, T, &EVAL0);
        mean3 += m.mean_loss / nb;
    }
    eval_loss(&m, &EVAL0, &dl, -1, NULL, NULL, &r);
    CHECK(r.batches == nb && fabs(r.loss - mean3) < 1e-6 && !r.have_bpb,
          "eval_loss: %d batches, loss %.7f, expected %d batches, %.7f (no bpb without a tokenizer)", r.batches, r.loss, nb, mean3);

    // the command line: checkpoint + shard + tokenizer beside it; the JSON holds the same numbers
    char ckpt[512], shard[512], json[512], stderr_text[2048];
    evt_path(ckpt, sizeof(ckpt), "model.bin");
    evt_path(shard, sizeof(shard), "x_val.bin");
    evt_path(json, sizeof(json), "out.json");
    CHECK(moe_save_checkpoint(&m, ckpt, 0, 5, 1234, 5, NULL, err, sizeof(err)) == 0, "checkpoint: %s", err);
    CHECK(shard_write(shard, tokens, n, EVT_V, 0, err, sizeof(err)) == 0, "shard: %s", err);
    char* args[] = {"-e", ckpt, "-j", shard, "-b", "2", "-t", "8", "-m", "1", "--json", json, "-g", "5", "--temperature", "0"};
    int rc = evt_run_eval(args, 16, stderr_text, sizeof(stderr_text));
    CHECK(rc == 0, "eval_main: exit %d, stderr: %s", rc, stderr_text);
    unsigned char* text;
    size_t size;
    JsonValue v;
    if (rc == 0 && eval_read_file(json, &text, &size, err, sizeof(err)) == 0) {
        CHECK(json_parse(text, size, &v, err, sizeof(err)) == 0, "eval_main's JSON does not parse: %s", err);
        double jl = evt_json_number(&v, "loss", "loss"), jb = evt_json_number(&v, "loss", "bits_per_byte");
        CHECK(fabs(jl - mean_loss) < 1e-6 && fabs(jb - bpb_hand) < 1e-6 * bpb_hand,
              "eval_main JSON: loss %.9g bpb %.9g, expected %.9g %.9g", jl, jb, mean_loss, bpb_hand);
        const JsonValue* tk = json_get(&v, "tokenizer");
        CHECK(tk != NULL && tk->type == JSON_STRING && evt_contains(tk->str, "tokenizer.bin"),
              "eval_main should find tokenizer.bin beside the shard");
        const JsonValue* gen = json_get(&v, "generation");
        const JsonValue* gt = gen != NULL ? json_get(gen, "tokens") : NULL;
        CHECK(gt != NULL && gt->type == JSON_ARRAY && gt->n == 5, "eval_main JSON: 5 generated tokens expected");
        // greedy generation from end-of-text = the argmax of a direct forward (first token)
        if (gt != NULL && gt->n == 5) {
            int start = EVT_EOT;
            moe_forward(&m, &start, NULL, 1, 1, &EVAL0);
            int best = 0;
            for (int vv = 1; vv < EVT_V; vv++) if (m.acts.logits[vv] > m.acts.logits[best]) best = vv;
            CHECK((int)gt->items[0].number == best, "greedy generation: first token %d, argmax %d", (int)gt->items[0].number, best);
        }
        json_free(&v);
        free(text);
    }
    // a wrong -t and a missing checkpoint fail with a message, not a crash
    char* bad_t[] = {"-e", ckpt, "-j", shard, "-t", "17", "--json", json};
    rc = evt_run_eval(bad_t, 8, stderr_text, sizeof(stderr_text));
    CHECK(rc == 1 && evt_contains(stderr_text, "exceeds the checkpoint's maxT"), "-t 17 > maxT: exit %d, '%s'", rc, stderr_text);
    free(tb);
    tokenizer_free(&tok);
    dataloader_free(&dl);
    free(in); free(tg); free(tokens);
    moe_free(&m);
}

// Forced answers: the correct ending is the model's greedy continuation; every distractor token has
// a cross-entropy above the largest of the greedy ending's, so both L_sum and L_mean single it out.
// Tokens are printable ASCII (32..126), so JSONL text and ids map one to one with the test tokenizer.
static void evt_build_forced(MoEModel* m, MCSet* set, int n_examples) {
    memset(set, 0, sizeof(*set));
    set->examples = (MCExample*)calloc((size_t)n_examples, sizeof(MCExample));
    set->n = n_examples;
    set->format = "bin";
    uint64_t rng = 5;
    int seq[64];
    for (int e = 0; e < n_examples; e++) {
        MCExample* ex = &set->examples[e];
        int ctx_len = 4 + e % 3, greedy_len = 2 + e % 2, dis_len = 3;
        ex->index = 100 + e; ex->label = e % 4; ex->n_endings = 4; ex->ctx_len = ctx_len;
        ex->ending_len = (int*)malloc(sizeof(int) * 4);
        ex->tokens = (int*)malloc(sizeof(int) * 64);
        for (int t = 0; t < ctx_len; t++) ex->tokens[t] = seq[t] = 32 + (int)(random_u32(&rng) % 95);
        // greedy ending and G, its largest per-token CE
        int greedy[8];
        double G = 0.0;
        for (int s = 0; s < greedy_len; s++) {
            int len = ctx_len + s;
            moe_forward(m, seq, NULL, 1, len, &EVAL0);
            int best = 32;
            for (int v = 33; v < 127; v++) if (evt_ce(m, len - 1, v) < evt_ce(m, len - 1, best)) best = v;
            double ce = evt_ce(m, len - 1, best);
            if (ce > G) G = ce;
            greedy[s] = seq[len] = best;
        }
        int pos = ctx_len;
        for (int j = 0; j < 4; j++) {
            if (j == ex->label) {
                ex->ending_len[j] = greedy_len;
                for (int s = 0; s < greedy_len; s++) ex->tokens[pos++] = greedy[s];
                continue;
            }
            ex->ending_len[j] = dis_len;
            for (int s = 0; s < dis_len; s++) {
                int len = ctx_len + s;
                moe_forward(m, seq, NULL, 1, len, &EVAL0);
                // the (j+1)-th printable token, from a rotating start, whose CE exceeds G by a margin
                int found = -1, skip = j;
                for (int k = 0; k < 95 && found < 0; k++) {
                    int v = 32 + (k + 17 * e + 31 * s) % 95;
                    if (evt_ce(m, len - 1, v) > G + 0.01 && skip-- == 0) found = v;
                }
                CHECK(found >= 0, "forced mc: no distractor token with CE > %.4f at example %d step %d", G + 0.01, e, s);
                if (found < 0) found = 32;
                ex->tokens[pos++] = seq[len] = found;
            }
        }
    }
}

static void evt_write_jsonl_forced(const char* path, const MCSet* set) {
    FILE* f = fopen(path, "w");
    for (int e = 0; e < set->n; e++) {
        const MCExample* ex = &set->examples[e];
        unsigned char buf[64];
        for (int t = 0; t < ex->ctx_len; t++) buf[t] = (unsigned char)ex->tokens[t];
        fprintf(f, "{\"ctx\": ");
        json_write_string(f, buf, (size_t)ex->ctx_len);
        fprintf(f, ", \"sep\": \"\", \"endings\": [");
        for (int j = 0; j < ex->n_endings; j++) {
            const int* end = mc_ending(ex, j);
            for (int t = 0; t < ex->ending_len[j]; t++) buf[t] = (unsigned char)end[t];
            if (j) fprintf(f, ", ");
            json_write_string(f, buf, (size_t)ex->ending_len[j]);
        }
        fprintf(f, "], \"label\": %d}\n", ex->label);
        if (e == 1) fprintf(f, "\n");  // a blank line is skipped
    }
    fclose(f);
}

static int evt_same_tokens(const MCSet* a, const MCSet* b) {
    if (a->n != b->n) return 0;
    for (int e = 0; e < a->n; e++) {
        const MCExample *x = &a->examples[e], *y = &b->examples[e];
        if (x->label != y->label || x->n_endings != y->n_endings || x->ctx_len != y->ctx_len) return 0;
        int total = x->ctx_len;
        for (int j = 0; j < x->n_endings; j++) { if (x->ending_len[j] != y->ending_len[j]) return 0; total += x->ending_len[j]; }
        if (memcmp(x->tokens, y->tokens, sizeof(int) * (size_t)total) != 0) return 0;
    }
    return 1;
}

static void test_eval_mc_forced(void) {
    MoEModel m;
    evt_model(&m, EVT_V, 16);
    MCSet set, bin, jl;
    evt_build_forced(&m, &set, 8);
    char bin_path[512], jsonl_path[512], tok_path[512], err[512];
    evt_path(bin_path, sizeof(bin_path), "forced.bin");
    evt_path(jsonl_path, sizeof(jsonl_path), "forced.jsonl");
    evt_path(tok_path, sizeof(tok_path), "tokenizer.bin");
    evt_write_tokenizer(tok_path);
    Tokenizer tok;
    CHECK(tokenizer_load(&tok, tok_path, err, sizeof(err)) == 0, "tokenizer: %s", err);
    CHECK(mc_write_bin(bin_path, &set, err, sizeof(err)) == 0, "mc_write_bin: %s", err);
    evt_write_jsonl_forced(jsonl_path, &set);
    int rc = mc_load(bin_path, NULL, EVT_V, EVT_EOT, &bin, err, sizeof(err));
    CHECK(rc == 0 && evt_same_tokens(&set, &bin) && strcmp(bin.format, "bin") == 0, "forced .bin: reload differs (%s)", err);
    rc = mc_load(jsonl_path, &tok, EVT_V, EVT_EOT, &jl, err, sizeof(err));
    CHECK(rc == 0 && evt_same_tokens(&set, &jl) && strcmp(jl.format, "jsonl") == 0, "forced JSONL: tokens differ (%s)", err);
    CHECK(rc == 0 && jl.examples[2].index == 4, "JSONL example index = line number (4 after a blank line), got %d",
          rc == 0 ? jl.examples[2].index : -1);
    CHECK(bin.n > 0 && bin.examples[0].index == 100, "bin example index from the file");
    // B = 3: examples straddle batches; B = 1 and 16 too
    int Bs[3] = {3, 1, 16};
    for (int i = 0; i < 3; i++) {
        MCResult r;
        mc_evaluate(&m, &EVAL0, &bin, -1, Bs[i], 16, EVT_EOT, &r, NULL);
        CHECK(r.scored == 8 && r.correct == 8 && r.correct_norm == 8 && r.acc == 1.0 && r.acc_norm == 1.0 && r.chance == 0.25,
              "forced .bin, B=%d: acc %d/%d acc_norm %d/%d (chance %.3f), expected 8/8", Bs[i], r.correct, r.scored,
              r.correct_norm, r.scored, r.chance);
        mc_evaluate(&m, &EVAL0, &jl, -1, Bs[i], 16, EVT_EOT, &r, NULL);
        CHECK(r.correct == 8 && r.correct_norm == 8, "forced JSONL, B=%d: acc %d/8 acc_norm %d/8", Bs[i], r.correct, r.correct_norm);
    }
    MCResult r;
    mc_evaluate(&m, &EVAL0, &bin, 3, 4, 16, EVT_EOT, &r, NULL);
    CHECK(r.examples == 3 && r.scored == 3, "--mc-limit 3: %d examples scored", r.scored);

    // L_sum of every ending equals a direct single-sequence forward
    double lsum[64];
    mc_evaluate(&m, &EVAL0, &bin, -1, 3, 16, EVT_EOT, &r, lsum);
    int worst = 0;
    double maxdiff = 0.0;
    for (int e = 0, job = 0; e < bin.n; e++) {
        const MCExample* ex = &bin.examples[e];
        for (int j = 0; j < ex->n_endings; j++, job++) {
            int seq[64], len = ex->ctx_len + ex->ending_len[j];
            memcpy(seq, ex->tokens, sizeof(int) * (size_t)ex->ctx_len);
            memcpy(seq + ex->ctx_len, mc_ending(ex, j), sizeof(int) * (size_t)ex->ending_len[j]);
            moe_forward(&m, seq, NULL, 1, len - 1, &EVAL0);
            double s = 0.0;
            for (int t = ex->ctx_len - 1; t < len - 1; t++) s += evt_ce(&m, t, seq[t + 1]);
            if (fabs(s - lsum[job]) > maxdiff) { maxdiff = fabs(s - lsum[job]); worst = job; }
        }
    }
    CHECK(maxdiff < 1e-4, "mc: L_sum differs from a direct forward by %.3g at ending %d", maxdiff, worst);

    // JSONL fields: ctx_a + " " + ctx_b, default sep " ", \u escapes
    const char* line = "{\"ctx_a\": \"ab\", \"ctx_b\": \"c\", \"endings\": [\"\\u00e9\", \"x\"], \"label\": 1}\n";
    char p2[512];
    evt_path(p2, sizeof(p2), "fields.jsonl");
    evt_write(p2, line, strlen(line));
    MCSet f;
    rc = mc_load(p2, &tok, EVT_V, EVT_EOT, &f, err, sizeof(err));
    int want[] = {'a', 'b', ' ', 'c', ' ', 0xC3, 0xA9, ' ', 'x'};
    CHECK(rc == 0 && f.n == 1 && f.examples[0].ctx_len == 4 && f.examples[0].ending_len[0] == 3 &&
          f.examples[0].ending_len[1] == 2 && memcmp(f.examples[0].tokens, want, sizeof(want)) == 0,
          "JSONL ctx_a/ctx_b/default sep: wrong tokens (%s)", rc ? err : "");
    if (rc == 0) mc_free(&f);

    // the command line: --mc with the JSONL and the tokenizer beside it
    char ckpt[512], json[512], stderr_text[2048];
    evt_path(ckpt, sizeof(ckpt), "model_mc.bin");
    evt_path(json, sizeof(json), "mc.json");
    CHECK(moe_save_checkpoint(&m, ckpt, 0, 0, 1, 0, NULL, err, sizeof(err)) == 0, "checkpoint: %s", err);
    char* args[] = {"-e", ckpt, "--mc", jsonl_path, "-b", "5", "--json", json};
    rc = evt_run_eval(args, 8, stderr_text, sizeof(stderr_text));
    CHECK(rc == 0, "eval_main --mc: exit %d, stderr: %s", rc, stderr_text);
    unsigned char* text;
    size_t size;
    JsonValue v;
    if (rc == 0 && eval_read_file(json, &text, &size, err, sizeof(err)) == 0) {
        if (json_parse(text, size, &v, err, sizeof(err)) == 0) {
            CHECK(evt_json_number(&v, "mc", "acc") == 1.0 && evt_json_number(&v, "mc", "acc_norm") == 1.0 &&
                  evt_json_number(&v, "mc", "examples") == 8, "eval_main --mc: JSON acc %g acc_norm %g",
                  evt_json_number(&v, "mc", "acc"), evt_json_number(&v, "mc", "acc_norm"));
            const JsonValue* loss = json_get(&v, "loss");
            CHECK(loss != NULL && loss->type == JSON_NULL, "no -j and V != 512: loss should be null");
            json_free(&v);
        } else {
            CHECK(0, "eval_main --mc JSON does not parse: %s", err);
        }
        free(text);
    }
    mc_free(&set); mc_free(&bin); mc_free(&jl);
    tokenizer_free(&tok);
    moe_free(&m);
}

// Truncation and skipping: maxT = 8
static void test_eval_mc_truncation(void) {
    MoEModel m;
    evt_model(&m, EVT_V, 8);
    MCSet set = {0};
    set.n = 3;
    set.examples = (MCExample*)calloc(3, sizeof(MCExample));
    int ctx_lens[3] = {10, 2, 3}, end_lens[3] = {3, 9, 2};
    for (int e = 0; e < 3; e++) {
        MCExample* ex = &set.examples[e];
        ex->index = e; ex->label = 0; ex->n_endings = 2; ex->ctx_len = ctx_lens[e];
        ex->ending_len = (int*)malloc(sizeof(int) * 2);
        ex->ending_len[0] = end_lens[e]; ex->ending_len[1] = 1;
        int total = ctx_lens[e] + end_lens[e] + 1;
        ex->tokens = (int*)malloc(sizeof(int) * (size_t)total);
        for (int t = 0; t < total; t++) ex->tokens[t] = 40 + (7 * t + e) % 50;
    }
    MCResult r;
    double lsum[6];
    mc_evaluate(&m, &EVAL0, &set, -1, 2, 8, EVT_EOT, &r, lsum);
    CHECK(r.examples == 3 && r.scored == 2 && r.truncated == 1 && r.skipped == 1,
          "truncation: scored %d truncated %d skipped %d, expected 2 1 1", r.scored, r.truncated, r.skipped);
    CHECK(isnan(lsum[2]) && isnan(lsum[3]), "a skipped example's L_sum should be NAN");
    // example 0 keeps its last 8 + 1 - 3 = 6 context tokens for both endings
    const MCExample* ex = &set.examples[0];
    int seq[16];
    memcpy(seq, ex->tokens + 4, sizeof(int) * 6);
    memcpy(seq + 6, ex->tokens + 10, sizeof(int) * 3);
    moe_forward(&m, seq, NULL, 1, 8, &EVAL0);
    double s = evt_ce(&m, 5, seq[6]) + evt_ce(&m, 6, seq[7]) + evt_ce(&m, 7, seq[8]);
    CHECK(fabs(s - lsum[0]) < 1e-4, "truncated example: L_sum %.6f, direct %.6f", lsum[0], s);
    mc_free(&set);
    moe_free(&m);
}

// Malformed files are reported with their line / record number, never a crash.
static void test_eval_mc_malformed(void) {
    char path[512], tok_path[512], err[512];
    evt_path(path, sizeof(path), "bad.jsonl");
    evt_path(tok_path, sizeof(tok_path), "tokenizer.bin");
    evt_write_tokenizer(tok_path);
    Tokenizer tok;
    CHECK(tokenizer_load(&tok, tok_path, err, sizeof(err)) == 0, "tokenizer: %s", err);
    const char* good = "{\"ctx\": \"hi\", \"endings\": [\"a\", \"b\"], \"label\": 0}\n";
    struct { const char* line; int at; const char* needle; } cases[] = {
        {"{\"ctx\": \"a\", \"endings\": [\"b\", }", 3, "bad JSON"},
        {"{\"ctx\": \"a\", \"label\": 0}", 3, "missing field \"endings\""},
        {"{\"endings\": [\"a\", \"b\"], \"label\": 0}", 3, "missing field \"ctx\""},
        {"{\"ctx\": \"a\", \"endings\": [\"b\", \"c\"]}", 3, "missing field \"label\""},
        {"{\"ctx\": \"a\", \"endings\": [\"b\", \"c\"], \"label\": 2}", 3, "label 2 is out of range"},
        {"{\"ctx\": \"a\", \"endings\": [\"b\", \"c\"], \"label\": -1}", 3, "out of range"},
        {"{\"ctx\": \"a\", \"endings\": [\"b\", \"c\"], \"label\": 0.5}", 3, "not an integer"},
        {"{\"ctx\": \"a\", \"endings\": [\"b\", 3], \"label\": 0}", 3, "ending 1 is not a string"},
        {"{\"ctx\": \"a\", \"endings\": [\"b\"], \"label\": 0}", 3, "2 to 1024"},
        {"{\"ctx\": 5, \"endings\": [\"b\", \"c\"], \"label\": 0}", 3, "\"ctx\" is not a string"},
        {"{\"ctx\": \"a\", \"endings\": [\"b\", \"\"], \"label\": 0, \"sep\": \"\"}", 3, "ending 1 has no tokens"},
        {"[1, 2]", 3, "not a JSON object"},
        {"{\"ctx\": \"\\ud800\", \"endings\": [\"b\", \"c\"], \"label\": 0}", 3, "surrogate"},
        {"{\"ctx\": \"a\"", 3, "bad JSON"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char content[1024];
        snprintf(content, sizeof(content), "%s\n%s%s\n%s", good, good, cases[i].line, good);
        if (i == 0) snprintf(content, sizeof(content), "%s\n%s\n%s", good, cases[i].line, good);  // blank line 2 counts
        evt_write(path, content, strlen(content));
        MCSet set;
        err[0] = 0;
        int rc = mc_load(path, &tok, EVT_V, EVT_EOT, &set, err, sizeof(err));
        char where[600];
        snprintf(where, sizeof(where), "%s:%d:", path, i == 0 ? 3 : cases[i].at + 1);
        CHECK(rc != 0 && evt_contains(err, where) && evt_contains(err, cases[i].needle),
              "malformed JSONL case %zu: expected '%s' and '%s', got rc %d '%s'", i, where, cases[i].needle, rc, err);
    }
    MCSet s0;
    evt_write(path, good, strlen(good));
    CHECK(mc_load(path, NULL, EVT_V, EVT_EOT, &s0, err, sizeof(err)) != 0 && evt_contains(err, "needs a tokenizer"),
          "JSONL without a tokenizer: '%s'", err);

    // .bin: three good records, then corrupted copies
    MCSet set = {0};
    set.n = 3;
    set.examples = (MCExample*)calloc(3, sizeof(MCExample));
    for (int e = 0; e < 3; e++) {
        MCExample* ex = &set.examples[e];
        ex->index = e; ex->label = 1; ex->n_endings = 2; ex->ctx_len = 3;
        ex->ending_len = (int*)malloc(sizeof(int) * 2);
        ex->ending_len[0] = 2; ex->ending_len[1] = 2;
        ex->tokens = (int*)malloc(sizeof(int) * 7);
        for (int t = 0; t < 7; t++) ex->tokens[t] = 50 + t;
    }
    char bpath[512];
    evt_path(bpath, sizeof(bpath), "bad.bin");
    CHECK(mc_write_bin(bpath, &set, err, sizeof(err)) == 0, "mc_write_bin: %s", err);
    unsigned char* good_bin;
    size_t size;
    CHECK(eval_read_file(bpath, &good_bin, &size, err, sizeof(err)) == 0, "read: %s", err);
    size_t rec = 2 * (5 + 1 + 2 + 7);  // bytes per record
    CHECK(size == 1024 + 3 * rec, ".bin size %zu, expected %zu", size, 1024 + 3 * rec);
    int32_t longest;
    memcpy(&longest, good_bin + 12, 4);
    CHECK(longest == (int32_t)rec, ".bin header[3] (longest example) %d, expected %zu", longest, rec);
    MCSet ok;
    CHECK(mc_load(bpath, NULL, EVT_V, EVT_EOT, &ok, err, sizeof(err)) == 0 && ok.n == 3, "good .bin: %s", err);
    mc_free(&ok);
    struct { size_t offset; uint16_t value; size_t truncate; const char* needle1; const char* needle2; } bins[] = {
        {1024 + rec, 1234, 0, "record 2", "bad marker 1234"},
        {0, 0, 1024 + 2 * rec + 10, "record 3", "runs past the end of the file"},
        {1024 + 10, 60000, 0, "record 1", "context length 60000 runs past"},
        {1024 + rec + 6, 2, 0, "record 2", "label 2 but only 2 endings"},
        {1024 + rec + 8, 1, 0, "record 2", "1 endings"},
        {1024 + 2, 32, 0, "record 1", "holds 32 bytes but its fields use 30"},
        {1024 + rec + 18, 0, 0, "record 2", "ending 0 has no tokens"},
        {1024 + 2 * rec + 2, 28, 0, "record 3", "ending 1 length 2 runs past the record's end"},
        {1024 + rec + 14, 300, 0, "example index 1", "token id 300"},
        {8, 5, 0, "header says 5 examples", "3 records"},
        {0, 7, 0, "not a .bin", "needs a tokenizer"},
    };
    // record layout (uint16 words): 0 marker, 1 bytes, 2 index, 3 label, 4 endings, 5 ctx len, 6..8 ctx,
    // 9 len0, 10..11, 12 len1, 13..14. So ending 0's length is word 9 (byte 18), a token is word 7 (byte 14).
    for (size_t i = 0; i < sizeof(bins) / sizeof(bins[0]); i++) {
        unsigned char* copy = (unsigned char*)malloc(size);
        memcpy(copy, good_bin, size);
        size_t n = bins[i].truncate ? bins[i].truncate : size;
        if (!bins[i].truncate) {
            if (bins[i].offset == 8) { int32_t five = 5; memcpy(copy + 8, &five, 4); }
            else if (bins[i].offset == 0) { int32_t magic = 7; memcpy(copy, &magic, 4); }
            else { copy[bins[i].offset] = bins[i].value & 0xff; copy[bins[i].offset + 1] = bins[i].value >> 8; }
        }
        evt_write(bpath, copy, n);
        free(copy);
        MCSet bad;
        err[0] = 0;
        int rc = mc_load(bpath, NULL, EVT_V, EVT_EOT, &bad, err, sizeof(err));
        CHECK(rc != 0 && evt_contains(err, bins[i].needle1) && evt_contains(err, bins[i].needle2),
              "malformed .bin case %zu: expected '%s' and '%s', got rc %d '%s'", i, bins[i].needle1, bins[i].needle2, rc, err);
    }
    // the command line exits 1 with the record number on stderr
    MoEModel m;
    evt_model(&m, EVT_V, 16);
    char ckpt[512], stderr_text[2048];
    evt_path(ckpt, sizeof(ckpt), "model_bad.bin");
    CHECK(moe_save_checkpoint(&m, ckpt, 0, 0, 1, 0, NULL, err, sizeof(err)) == 0, "checkpoint: %s", err);
    unsigned char* copy = (unsigned char*)malloc(size);
    memcpy(copy, good_bin, size);
    copy[1024 + rec] = 0x34; copy[1024 + rec + 1] = 0x12;
    evt_write(bpath, copy, size);
    free(copy);
    char json[512];
    evt_path(json, sizeof(json), "bad.json");
    char* args[] = {"-e", ckpt, "--mc", bpath, "--json", json};
    int rc = evt_run_eval(args, 6, stderr_text, sizeof(stderr_text));
    CHECK(rc == 1 && evt_contains(stderr_text, "record 2") && evt_contains(stderr_text, "bad marker"),
          "eval_main with a bad .bin record: exit %d, stderr '%s'", rc, stderr_text);
    evt_write(path, "{\"ctx\": \"a\", \"endings\": [\"b\", \"c\"], \"label\": 0}\n{oops}\n", 52);
    char* args2[] = {"-e", ckpt, "--mc", path, "--tokenizer", tok_path, "--json", json};
    rc = evt_run_eval(args2, 8, stderr_text, sizeof(stderr_text));
    CHECK(rc == 1 && evt_contains(stderr_text, ":2: bad JSON"), "eval_main with a bad JSONL line: exit %d, stderr '%s'", rc, stderr_text);
    free(good_bin);
    mc_free(&set);
    tokenizer_free(&tok);
    moe_free(&m);
}

// make_cloze: the synthetic .bin and the text JSONL load back and hold what they should
static void test_eval_make_cloze(void) {
    char path[512], path2[512], err[512];
    evt_path(path, sizeof(path), "syn.bin");
    evt_path(path2, sizeof(path2), "syn2.bin");
    int n = cloze_synthetic(5, 160000, 40, 32, 8, 4, path, err, sizeof(err));
    int n2 = cloze_synthetic(5, 160000, 40, 32, 8, 4, path2, err, sizeof(err));
    CHECK(n == 40 && n2 == 40, "cloze_synthetic: %d examples (%s)", n, err);
    unsigned char *a, *b;
    size_t sa, sb;
    if (eval_read_file(path, &a, &sa, err, sizeof(err)) == 0 && eval_read_file(path2, &b, &sb, err, sizeof(err)) == 0) {
        CHECK(sa == sb && memcmp(a, b, sa) == 0, "cloze_synthetic: the same seed must give the same file");
        free(a); free(b);
    }
    MCSet set;
    int rc = mc_load(path, NULL, SYNTH_VOCAB, SYNTH_VOCAB - 1, &set, err, sizeof(err));
    CHECK(rc == 0 && set.n == 40, "synthetic cloze reload: %s", err);
    SyntheticCorpus c;
    synthetic_corpus_generate(&c, 1, 10000, 5);
    const int block = (SYNTH_VOCAB - 1 - SYNTH_SHARED) / SYNTH_DOMAINS;
    int bad_true = 0, bad_dis = 0, labels[4] = {0};
    for (int e = 0; rc == 0 && e < set.n; e++) {
        const MCExample* ex = &set.examples[e];
        if (ex->ctx_len != 32 || ex->n_endings != 4) { bad_true++; continue; }
        labels[ex->label]++;
        // the context + true ending occur contiguously in the val stream
        int found = -1;
        for (size_t i = 0; i + 40 <= c.val_len && found < 0; i++) {
            int same = 1;
            for (int t = 0; t < 32 && same; t++) same = (int)c.val_tokens[i + t] == ex->tokens[t];
            const int* tr = mc_ending(ex, ex->label);
            for (int t = 0; t < 8 && same; t++) same = (int)c.val_tokens[i + 32 + t] == tr[t];
            if (same) found = (int)i;
        }
        if (found < 0) { bad_true++; continue; }
        int dom = c.val_domains[found + 32];
        // no distractor token is a content token of the context's domain
        for (int j = 0; j < 4; j++) {
            if (j == ex->label) continue;
            const int* d = mc_ending(ex, j);
            for (int t = 0; t < 8; t++)
                if (d[t] >= SYNTH_SHARED && d[t] < SYNTH_VOCAB - 1 && (d[t] - SYNTH_SHARED) / block == dom) { bad_dis++; break; }
        }
    }
    CHECK(bad_true == 0, "synthetic cloze: %d examples whose context + true ending is not in the val stream", bad_true);
    CHECK(bad_dis == 0, "synthetic cloze: %d distractors hold content tokens of the context's domain", bad_dis);
    CHECK(labels[0] > 0 && labels[1] > 0 && labels[2] > 0 && labels[3] > 0, "synthetic cloze: labels should vary");
    synthetic_corpus_free(&c);
    if (rc == 0) mc_free(&set);

    // text: 40 numbered lines, blank lines between some, two documents
    char text[4096];
    size_t len = 0;
    for (int i = 1; i <= 40; i++) len += (size_t)snprintf(text + len, sizeof(text) - len, "line %02d says %d\n%s", i, i * 7, i % 5 == 0 ? "\n" : "");
    size_t docs[3] = {0, 0, len};
    docs[1] = (size_t)(strstr(text, "line 21") - text);
    char jpath[512];
    evt_path(jpath, sizeof(jpath), "cloze.jsonl");
    n = cloze_text((const unsigned char*)text, docs, 2, 12, 2, 4, 0, 9, NULL, jpath, err, sizeof(err));
    CHECK(n == 12, "cloze_text: %d examples (%s)", n, err);
    unsigned char* data;
    size_t size;
    int bad = 0;
    if (n > 0 && eval_read_file(jpath, &data, &size, err, sizeof(err)) == 0) {
        char* line = (char*)data;
        for (int e = 0; e < n; e++) {
            char* nl = strchr(line, '\n');
            JsonValue v;
            if (nl == NULL || json_parse((unsigned char*)line, (size_t)(nl - line), &v, err, sizeof(err)) != 0) { bad++; break; }
            const JsonValue *ctx = json_get(&v, "ctx"), *sep = json_get(&v, "sep"), *ends = json_get(&v, "endings");
            int label = (int)json_get(&v, "label")->number;
            // ctx + sep + true ending is a piece of the text that ends at a line end, inside one document
            char joined[1024];
            snprintf(joined, sizeof(joined), "%s%s%s\n", ctx->str, sep->str, ends->items[label].str);
            char* at = strstr(text, joined);
            int ok = at != NULL && (at == text || at[-1] == '\n') && (sep->len == 1 || sep->len == 2);
            ok = ok && ((size_t)(at - text) >= docs[1] || (size_t)(at - text) + strlen(joined) <= docs[1]);
            int ctx_first = atoi(ctx->str + 5);
            for (int j = 0; ok && j < 4; j++) {
                if (j == label) continue;
                int num = atoi(ends->items[j].str + 5);
                ok = strcmp(ends->items[j].str, ends->items[label].str) != 0 && (num < ctx_first || num > ctx_first + 2);
            }
            bad += !ok;
            json_free(&v);
            line = nl + 1;
        }
        free(data);
    }
    CHECK(bad == 0, "cloze_text: %d examples are not context + next line + 3 other lines", bad);

    // --split-line: the context runs into the true line ("... line NN"), the endings are second
    // halves ("says X"), the true one the continuation of the context in the text
    n = cloze_text((const unsigned char*)text, docs, 2, 12, 2, 4, 1, 9, NULL, jpath, err, sizeof(err));
    CHECK(n == 12, "cloze_text --split-line: %d examples (%s)", n, err);
    bad = 0;
    if (n > 0 && eval_read_file(jpath, &data, &size, err, sizeof(err)) == 0) {
        char* line = (char*)data;
        for (int e = 0; e < n; e++) {
            char* nl = strchr(line, '\n');
            JsonValue v;
            if (nl == NULL || json_parse((unsigned char*)line, (size_t)(nl - line), &v, err, sizeof(err)) != 0) { bad++; break; }
            const JsonValue *ctx = json_get(&v, "ctx"), *sep = json_get(&v, "sep"), *ends = json_get(&v, "endings");
            int label = (int)json_get(&v, "label")->number;
            char joined[1024];
            snprintf(joined, sizeof(joined), "%s%s%s\n", ctx->str, sep->str, ends->items[label].str);
            size_t cl = strlen(ctx->str);
            int ok = strstr(text, joined) != NULL && strcmp(sep->str, " ") == 0 && cl >= 7 &&
                     strncmp(ctx->str + cl - 7, "line ", 5) == 0;
            for (int j = 0; ok && j < 4; j++) ok = strncmp(ends->items[j].str, "says ", 5) == 0;
            bad += !ok;
            json_free(&v);
            line = nl + 1;
        }
        free(data);
    }
    CHECK(bad == 0, "cloze_text --split-line: %d examples are not context + first half | second halves", bad);
}

static void test_eval_sampling(void) {
    float logits[6] = {0.1f, 2.0f, -1.0f, 2.0f, 0.5f, 1.9f};
    float scratch[6];
    uint64_t rng = 1;
    CHECK(sample_token(logits, 6, 0.0f, 0, &rng, scratch) == 1, "greedy: ties go to the lower id");
    int ok = 1, seen[6] = {0};
    for (int i = 0; i < 200; i++) {
        int t = sample_token(logits, 6, 1.0f, 2, &rng, scratch);
        ok &= t == 1 || t == 3;
        seen[t]++;
    }
    CHECK(ok && seen[1] > 0 && seen[3] > 0, "top-k 2 must sample only ids 1 and 3 (and both)");
    for (int i = 0; i < 50; i++) ok &= sample_token(logits, 6, 1.0f, 1, &rng, scratch) == 1;
    CHECK(ok, "top-k 1 is greedy");
    uint64_t r1 = 77, r2 = 77;
    int same = 1;
    for (int i = 0; i < 50; i++) same &= sample_token(logits, 6, 0.7f, 0, &r1, scratch) == sample_token(logits, 6, 0.7f, 0, &r2, scratch);
    CHECK(same, "sampling: the same seed must give the same tokens");
}

static void test_eval(void) {
    snprintf(evt_dir, sizeof(evt_dir), "/tmp/moe_eval_testXXXXXX");
    if (mkdtemp(evt_dir) == NULL) { CHECK(0, "mkdtemp failed: %s", strerror(errno)); return; }
    test_eval_json_parser();
    test_eval_sampling();
    test_eval_loss_and_bpb();
    test_eval_mc_forced();
    test_eval_mc_truncation();
    test_eval_mc_malformed();
    test_eval_make_cloze();
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", evt_dir);
    if (system(cmd) != 0) printf("warning: could not remove %s\n", evt_dir);
}


// ============================================================================
// first day: what a new user meets following the README (the data script, the run folder, the
// tokenizer found from the run, progress lines and the ETA, what eval_moe says it measured)

static char fdt_dir[320];  // this section's temp directory, under test_dir

// A text of `words` words from a small vocabulary (seeded), lines of 4-12 words.
static void fdt_write_text(const char* path, int words, uint64_t seed) {
    static const char* vocab[] = {"the", "king", "shall", "come", "to", "night", "and", "my", "lord", "speak",
                                  "ROMEO:", "JULIET:", "love", "sweet", "death", "good", "morrow", "thou", "art", "fair"};
    FILE* f = fopen(path, "w");
    if (f == NULL) return;
    int in_line = 0, line_len = 4;
    for (int i = 0; i < words; i++) {
        fprintf(f, "%s", vocab[random_u32(&seed) % 20]);
        if (++in_line == line_len) { fputc('\n', f); in_line = 0; line_len = 4 + (int)(random_u32(&seed) % 9); }
        else fputc(' ', f);
    }
    fclose(f);
}

// progress.h: a line at most every PROGRESS_EVERY seconds, with percent and ETA; format_eta
static void test_first_day_progress(void) {
    char eta[32];
    format_eta(eta, sizeof(eta), 3725.0);
    CHECK(strcmp(eta, "1h02m") == 0, "format_eta(3725 s) = %s, expected 1h02m", eta);
    format_eta(eta, sizeof(eta), NAN);
    CHECK(strcmp(eta, "0m00s") == 0, "format_eta(NaN) = %s, expected 0m00s", eta);
    FILE* f = tmpfile();
    if (f == NULL) { CHECK(0, "tmpfile: %s", strerror(errno)); return; }
    Progress p;
    progress_begin(&p, "eval_moe: loss pass", "batches", 100.0);
    int printed[4];
    printed[0] = progress_tick(&p, 1, 10, 101.0, f);  // 1 s in: too early
    printed[1] = progress_tick(&p, 2, 10, 102.5, f);  // 2.5 s: a line, 20%, ETA 2.5 / 2 * 8 = 10 s
    printed[2] = progress_tick(&p, 3, 10, 103.0, f);  // 0.5 s after the last line: quiet
    printed[3] = progress_tick(&p, 5, 10, 104.6, f);  // 2.1 s after it: a line
    char text[512] = "";
    rewind(f);
    size_t got = fread(text, 1, sizeof(text) - 1, f);
    text[got] = 0;
    fclose(f);
    CHECK(!printed[0] && printed[1] && !printed[2] && printed[3], "progress: lines at ticks %d %d %d %d, expected 0 1 0 1",
          printed[0], printed[1], printed[2], printed[3]);
    CHECK(strstr(text, "eval_moe: loss pass  20% (2/10 batches), 2 s, ETA 0m10s\n") != NULL &&
          strstr(text, " 50% (5/10 batches)") != NULL, "progress lines: '%s'", text);
    // train_moe's ETA. Validations of a 120-step run with -v 50: before steps 0, 50, 100 and at the end
    // (120); after step 0 three are left, after step 50 two, after step 119 the final one
    int v0 = validations_left(0, 120, 50), v50 = validations_left(50, 120, 50), v119 = validations_left(119, 120, 50);
    int v99 = validations_left(99, 100, 50), none = validations_left(5, 100, 0);
    CHECK(v0 == 3 && v50 == 2 && v119 == 1 && v99 == 1 && none == 0,
          "validations_left: %d %d %d %d %d, expected 3 2 1 1 0", v0, v50, v119, v99, none);
    // step 1 of 100 took 0.1 s after a 30 s step-0 validation: 99 x 0.1 + 2 validations x 30 = 69.9 s,
    // not (30 + 0.1) x 99 (the step-0 validation counted as step time)
    double eta_s = run_eta_seconds(0.1, 1, 99, 30.0, 1, validations_left(0, 100, 50));
    CHECK(fabs(eta_s - 69.9) < 1e-9, "run_eta_seconds: %.3f s, expected 69.9", eta_s);
    CHECK(run_eta_seconds(5.0, 10, 90, 0.0, 0, 0) == 45.0, "run_eta_seconds without validation: expected 45 s");
}

// data/tinyshakespeare.sh: offline, it says how to get the text and what to run; with a local
// file that is not tinyshakespeare, it warns and still prepares the data
static void test_first_day_tinyshakespeare_script(void) {
    char cmd[2048], out[512];
    snprintf(out, sizeof(out), "%s/script.txt", fdt_dir);
    snprintf(cmd, sizeof(cmd), "mkdir -p %s/repo/data && cp data/tinyshakespeare.sh data/prepare_text %s/repo/data/",
             fdt_dir, fdt_dir);
    if (system(cmd) != 0) { CHECK(0, "cannot copy the script: %s", cmd); return; }
    snprintf(cmd, sizeof(cmd), "TINYSHAKESPEARE_URLS=file:///nonexistent/input.txt sh %s/repo/data/tinyshakespeare.sh", fdt_dir);
    int rc = run_cmd(cmd, out);
    CHECK(rc == 1 && file_contains(out, "could not download tinyshakespeare") &&
          file_contains(out, "data/tinyshakespeare.sh path/to/input.txt") && file_contains(out, "char-rnn"),
          "tinyshakespeare.sh offline: exit %d, expected 1 and the local-file instructions (see %s)", rc, out);
    char text[512];
    snprintf(text, sizeof(text), "%s/not_shakespeare.txt", fdt_dir);
    fdt_write_text(text, 6000, 5);
    snprintf(cmd, sizeof(cmd), "sh %s/repo/data/tinyshakespeare.sh %s -v 300", fdt_dir, text);
    rc = run_cmd(cmd, out);
    char shard[512];
    snprintf(shard, sizeof(shard), "%s/repo/data/tinyshakespeare/tiny_shakespeare_val.bin", fdt_dir);
    int has_sha = system("command -v sha256sum >/dev/null 2>&1") == 0;
    CHECK(rc == 0 && access(shard, F_OK) == 0 && (!has_sha || file_contains(out, "not the usual tinyshakespeare")),
          "tinyshakespeare.sh with a local file: exit %d, shard %s, expected 0, the shard and a sha256 warning (see %s)",
          rc, access(shard, F_OK) == 0 ? "written" : "missing", out);
}

// eval_moe finds the tokenizer the run recorded in config.txt (beside the checkpoint), checks its
// crc32, and says how many batches its loss covers
static void test_first_day_eval_from_run(void) {
    char cmd[4096], out[512], text[512], data[512], run[512], json[512];
    snprintf(out, sizeof(out), "%s/eval_run.txt", fdt_dir);
    snprintf(text, sizeof(text), "%s/text.txt", fdt_dir);
    snprintf(data, sizeof(data), "%s/data", fdt_dir);
    snprintf(run, sizeof(run), "%s/runs/a/b", fdt_dir);
    snprintf(json, sizeof(json), "%s/eval.json", fdt_dir);
    fdt_write_text(text, 12000, 9);
    snprintf(cmd, sizeof(cmd), "data/prepare_text -i %s -o %s -n t -v 300", text, data);
    if (run_cmd(cmd, out) != 0) { CHECK(0, "prepare_text failed (see %s)", out); return; }
    // a run on shards, its tokenizer beside them; -o with parents that do not exist yet
    snprintf(cmd, sizeof(cmd), "./train_moe -i '%s/t_train.bin' -j '%s/t_val.bin' --layers 1 --channels 32 --heads 2 "
             "--experts 4 -b 4 -t 16 -x 2 -v 0 -o %s", data, data, run);
    int rc = run_cmd(cmd, out);
    CHECK(rc == 0 && file_contains(out, "data: ") && file_contains(out, " epochs"),
          "train_moe on shards with -o a/b: exit %d, expected 0 and a 'data:' line with the epochs (see %s)", rc, out);
    char config[600];
    snprintf(config, sizeof(config), "%s/config.txt", run);
    CHECK(file_contains(config, "tokenizer_file = /") && file_contains(config, "tokenizer_crc32 = "),
          "config.txt must record the tokenizer's absolute path and crc32 (see %s)", config);
    // eval_moe with no --tokenizer and no -j: the prompt is text, decoded back
    snprintf(cmd, sizeof(cmd), "./eval_moe -e %s/model_00000002.bin -m 0 --prompt 'ROMEO:' -g 4 --json %s", run, json);
    rc = run_cmd(cmd, out);
    CHECK(rc == 0 && file_contains(out, "recorded in the run's config.txt") && file_contains(json, "\"tokenizer_crc32\""),
          "eval_moe should find the run's tokenizer from config.txt: exit %d (see %s)", rc, out);
    // the loss: a full pass says so, -m 1 says it is the first batch of how many
    snprintf(cmd, sizeof(cmd), "./eval_moe -e %s/model_00000002.bin -j '%s/t_val.bin' -b 4 -t 16 --json %s", run, data, json);
    rc = run_cmd(cmd, out);
    CHECK(rc == 0 && file_contains(out, "one full pass") && file_contains(json, "\"full_pass\": true"),
          "eval_moe full pass: exit %d, expected 'one full pass' and full_pass true (see %s)", rc, out);
    snprintf(cmd, sizeof(cmd), "./eval_moe -e %s/model_00000002.bin -j '%s/t_val.bin' -b 4 -t 16 -m 1 --json %s", run, data, json);
    rc = run_cmd(cmd, out);
    CHECK(rc == 0 && file_contains(out, "the first 1 of ") && file_contains(json, "\"full_pass\": false"),
          "eval_moe -m 1: exit %d, expected 'the first 1 of N' and full_pass false (see %s)", rc, out);
    // a different tokenizer (another text's, same V) where the run's was: refused, unless given by --tokenizer
    char text2[512];
    snprintf(text2, sizeof(text2), "%s/text2.txt", fdt_dir);
    fdt_write_text(text2, 12000, 10);
    snprintf(cmd, sizeof(cmd), "(cp %s/tokenizer.bin %s/tokenizer.saved && data/prepare_text -i %s -o %s/other -n t -v 300 && "
             "cp %s/other/tokenizer.bin %s/tokenizer.bin)", data, data, text2, fdt_dir, fdt_dir, data);
    if (run_cmd(cmd, out) != 0) { CHECK(0, "cannot replace the tokenizer (see %s)", out); return; }
    snprintf(cmd, sizeof(cmd), "./eval_moe -e %s/model_00000002.bin -m 0 --json %s", run, json);
    rc = run_cmd(cmd, out);
    CHECK(rc == 1 && file_contains(out, "crc32") && file_contains(out, "--tokenizer"),
          "eval_moe with a changed tokenizer: exit %d, expected 1 and a crc32 message (see %s)", rc, out);
    snprintf(cmd, sizeof(cmd), "./eval_moe -e %s/model_00000002.bin -m 0 --tokenizer %s/tokenizer.bin --json %s", run, data, json);
    rc = run_cmd(cmd, out);
    CHECK(rc != 0 || file_contains(out, "warning: tokenizer"),
          "eval_moe --tokenizer with a changed file: exit %d, expected a warning or a refusal (see %s)", rc, out);
    snprintf(cmd, sizeof(cmd), "mv %s/tokenizer.saved %s/tokenizer.bin", data, data);
    if (system(cmd) != 0) CHECK(0, "cannot restore the tokenizer");
}

// -o: parents are created (above: runs/a/b); a folder holding another run's checkpoints is refused,
// resuming from it is not, and --overwrite deletes the old checkpoints
static void test_first_day_output_dir(void) {
    char cmd[4096], out[512], run[512], path[600];
    snprintf(out, sizeof(out), "%s/outdir.txt", fdt_dir);
    snprintf(run, sizeof(run), "%s/runs/c", fdt_dir);
    const char* tiny = "./train_moe --synthetic-tokens 40000 --layers 1 --channels 32 --heads 2 --experts 4 -b 4 -t 16 -v 0";
    snprintf(cmd, sizeof(cmd), "%s -x 2 -o %s", tiny, run);
    int rc = run_cmd(cmd, out);
    CHECK(rc == 0, "train_moe -o %s: exit %d (see %s)", run, rc, out);
    snprintf(cmd, sizeof(cmd), "%s -x 3 -o %s", tiny, run);
    rc = run_cmd(cmd, out);
    CHECK(rc == 1 && file_contains(out, "already holds 1 checkpoint") && file_contains(out, "--overwrite"),
          "a second run into %s: exit %d, expected 1 and a message naming --overwrite (see %s)", run, rc, out);
    snprintf(cmd, sizeof(cmd), "%s -x 3 -e %s/model_00000002.bin -o %s", tiny, run, run);
    rc = run_cmd(cmd, out);
    snprintf(path, sizeof(path), "%s/model_00000003.bin", run);
    CHECK(rc == 0 && access(path, F_OK) == 0, "resuming into its own folder: exit %d (see %s)", rc, out);
    snprintf(cmd, sizeof(cmd), "%s -x 1 --overwrite -o %s", tiny, run);
    rc = run_cmd(cmd, out);
    int old_gone = access(path, F_OK) != 0;
    snprintf(path, sizeof(path), "%s/model_00000001.bin", run);
    CHECK(rc == 0 && old_gone && access(path, F_OK) == 0 && file_contains(out, "deleted 2 checkpoints"),
          "--overwrite: exit %d, old checkpoints %s, expected 0, deleted and the new one (see %s)", rc,
          old_gone ? "deleted" : "still there", out);
}

// README's flag tables copy --help: every flag of train_moe and eval_moe is in README.md
static void test_first_day_readme_flags(void) {
    const char* programs[2] = {"./train_moe", "./eval_moe"};
    char out[512], cmd[1024];
    snprintf(out, sizeof(out), "%s/help.txt", fdt_dir);
    FILE* f = fopen("README.md", "rb");
    if (f == NULL) { CHECK(0, "README.md: cannot open"); return; }
    static char readme[1 << 18];
    size_t n = fread(readme, 1, sizeof(readme) - 1, f);
    readme[n] = 0;
    fclose(f);
    for (int p = 0; p < 2; p++) {
        snprintf(cmd, sizeof(cmd), "%s --help", programs[p]);
        if (run_cmd(cmd, out) != 0) { CHECK(0, "%s --help failed", programs[p]); continue; }
        FILE* h = fopen(out, "r");
        if (h == NULL) continue;
        char line[1024], missing[2048] = "";
        while (fgets(line, sizeof(line), h)) {
            char* dash = strstr(line, "--");
            if (dash == NULL || strncmp(line, "  ", 2) != 0) continue;
            char name[128], row_a[160], row_b[160];
            size_t len = strcspn(dash, " \n");
            snprintf(name, sizeof(name), "%.*s", (int)len, dash);
            snprintf(row_a, sizeof(row_a), "| `%s` |", name);     // a long flag alone
            snprintf(row_b, sizeof(row_b), ", %s` |", name);      // "-x, --name"
            if (strstr(readme, row_a) == NULL && strstr(readme, row_b) == NULL && strlen(missing) + len + 2 < sizeof(missing)) {
                strcat(missing, " ");
                strcat(missing, name);
            }
        }
        fclose(h);
        CHECK(missing[0] == 0, "README.md has no flag-table row for %s's%s: copy them from its --help", programs[p], missing);
    }
}

static void test_first_day(void) {
    snprintf(fdt_dir, sizeof(fdt_dir), "%s/first_day", test_dir);
    if (mkdir(fdt_dir, 0755) != 0) { CHECK(0, "mkdir %s: %s", fdt_dir, strerror(errno)); return; }
    test_first_day_progress();
    test_first_day_tinyshakespeare_script();
    test_first_day_eval_from_run();
    test_first_day_output_dir();
    test_first_day_readme_flags();
}

// ============================================================================
// upcycling and llm.c's model file (upcycle.h)

static char upc_dir[320];
static const char* upc_path(const char* name) {
    static char buf[4][512];
    static int next = 0;
    char* p = buf[next++ & 3];
    snprintf(p, 512, "%s/%s", upc_dir, name);
    return p;
}

// A dense GPT-2 (E=1, H=4C) with every parameter random, biases and LayerNorms included.
static void upc_dense_model(MoEModel* d, int V, int maxT) {
    MoEConfig c = {maxT, V, pad_vocab(V), 2, 2, 16, 1, 1, 64, 0};
    moe_build(d, &c);
    moe_init_params(d, 11, 0.02f);
    for (size_t i = 0; i < d->num_parameters; i++) d->params_memory[i] += 0.05f * urand();
}

// llm.c's model file written by hand, field by field, independently of upcycle.h: header, then the
// 16 tensors in llm.c's order from the dense model's named pointers, as float32 or as bfloat16
// (the top 16 bits: truncation, so a value converted back is exactly representable).
static void upc_write_llmc_by_hand(const char* path, const MoEModel* d, int version) {
    const MoEConfig* c = &d->config;
    size_t C = c->channels, L = c->num_layers;
    int32_t h[256] = {0};
    h[0] = 20240326; h[1] = version; h[2] = c->max_seq_len; h[3] = c->vocab_size;
    h[4] = c->num_layers; h[5] = c->num_heads; h[6] = c->channels; h[7] = c->padded_vocab_size;
    const ParameterTensors* p = &d->params;
    const float* t[16] = {p->wte, p->wpe, p->ln1w, p->ln1b, p->qkvw, p->qkvb, p->attprojw, p->attprojb,
                          p->ln2w, p->ln2b, p->fcw, p->fcb, p->fcprojw, p->fcprojb, p->lnfw, p->lnfb};
    size_t n[16] = {c->padded_vocab_size * C, c->max_seq_len * C, L * C, L * C, L * 3 * C * C, L * 3 * C,
                    L * C * C, L * C, L * C, L * C, L * 4 * C * C, L * 4 * C, L * C * 4 * C, L * C, C, C};
    FILE* f = fopen(path, "wb");
    if (f == NULL) { printf("cannot create %s\n", path); return; }
    fwrite(h, sizeof(h), 1, f);
    for (int i = 0; i < 16; i++) {
        if (version == 3) { fwrite(t[i], 4, n[i], f); continue; }
        for (size_t j = 0; j < n[i]; j++) { uint16_t b = (uint16_t)(float_bits(t[i][j]) >> 16); fwrite(&b, 2, 1, f); }
    }
    fclose(f);
}

// max |a - b| over the first V logits of every row, and max |a| (for the scale)
static float upc_logit_diff(const MoEModel* a, const MoEModel* b, int N, float* scale) {
    int V = a->config.vocab_size, Vp = a->config.padded_vocab_size;
    float worst = 0.0f, big = 0.0f;
    for (int n = 0; n < N; n++)
        for (int v = 0; v < V; v++) {
            float x = a->acts.logits[(size_t)n * Vp + v], y = b->acts.logits[(size_t)n * Vp + v];
            worst = fmaxf(worst, fabsf(x - y));
            big = fmaxf(big, fabsf(x));
        }
    if (scale) *scale = big;
    return worst;
}

static int upc_inputs[2 * 8], upc_targets[2 * 8];
static void upc_forward(MoEModel* m) { RoutingMode mode = routing_eval(0); moe_forward(m, upc_inputs, upc_targets, 2, 8, &mode); }

static int upc_files_equal(const char* a, const char* b) {
    size_t na, nb;
    unsigned char* x = dlt_read_raw(a, &na);
    unsigned char* y = dlt_read_raw(b, &nb);
    int same = x != NULL && y != NULL && na == nb && memcmp(x, y, na) == 0;
    free(x); free(y);
    return same;
}

// The exact test: with noise 0 and topk_softmax, the upcycled MoE's logits are the dense model's,
// whether the dense model came from our checkpoint or from an llm.c file (float32 or bfloat16),
// under every router that renormalises its weights over the chosen experts (all but compete's
// competition steps, which evaluation never takes).
static float upc_worst_exact = 0.0f;
static void upc_check_exact_router(const char* what, const char* path, MoEModel* dense_ref, int router) {
    MoEModel m;
    char err[512];
    if (moe_build_upcycled(&m, path, 4, 2, router == ROUTER_XMOE ? 8 : 0, 5, 0.5f, 0.0f, err, sizeof(err)) != 0) {
        CHECK(0, "%s: %s", what, err);
        return;
    }
    m.router.router = router;
    upc_forward(dense_ref);
    upc_forward(&m);
    float scale, diff = upc_logit_diff(&m, dense_ref, 16, &scale);
    if (diff > upc_worst_exact) upc_worst_exact = diff;
    CHECK(diff <= 2e-6f * fmaxf(scale, 1.0f), "%s, router %s: upcycled logits differ from the dense model's by %g "
          "(max |logit| %g)", what, ROUTER_NAMES[router], diff, scale);
    CHECK(fabsf(m.mean_loss - dense_ref->mean_loss) <= 1e-6f * fabsf(dense_ref->mean_loss),
          "%s, router %s: loss %.9g vs dense %.9g", what, ROUTER_NAMES[router], m.mean_loss, dense_ref->mean_loss);
    // the routing is not trivial: several experts receive tokens in layer 0 (else the test proves little)
    int used[4] = {0}, distinct = 0;
    for (int i = 0; i < 16 * 2; i++) used[m.idx.expert_index[i]] = 1;
    for (int e = 0; e < 4; e++) distinct += used[e];
    CHECK(distinct >= 3, "%s, router %s: only %d of 4 experts received tokens; the exact test needs real routing",
          what, ROUTER_NAMES[router], distinct);
    moe_free(&m);
}
static void upc_check_exact(const char* what, const char* path, MoEModel* dense_ref) {
    upc_check_exact_router(what, path, dense_ref, ROUTER_TOPK);
}

static void test_upcycle_exact(void) {
    MoEModel d;
    upc_dense_model(&d, 37, 8);
    for (int i = 0; i < 16; i++) { upc_inputs[i] = (i * 7 + 3) % 37; upc_targets[i] = (i * 5 + 1) % 37; }
    char err[512];
    CHECK(moe_save_checkpoint(&d, upc_path("dense.bin"), 0, 0, 1, 1, NULL, err, sizeof(err)) == 0, "save: %s", err);
    upc_write_llmc_by_hand(upc_path("llmc.bin"), &d, 3);
    upc_check_exact("upcycle from a moe.c E=1 checkpoint", upc_path("dense.bin"), &d);
    upc_check_exact("upcycle from an llm.c float32 file", upc_path("llmc.bin"), &d);
    upc_check_exact_router("upcycle from a moe.c checkpoint", upc_path("dense.bin"), &d, ROUTER_GATEPRO);
    upc_check_exact_router("upcycle from a moe.c checkpoint", upc_path("dense.bin"), &d, ROUTER_AUXFREE);
    upc_check_exact_router("upcycle from a moe.c checkpoint", upc_path("dense.bin"), &d, ROUTER_XMOE);

    // the writer: byte for byte the hand-written file; the CLI too; round trip export -> upcycle
    CHECK(llmc_save_model(&d, upc_path("export.bin"), err, sizeof(err)) == 0, "llmc_save_model: %s", err);
    CHECK(upc_files_equal(upc_path("export.bin"), upc_path("llmc.bin")), "llmc_save_model's file differs from llm.c's layout");
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "./dev/export_llmc %s %s", upc_path("dense.bin"), upc_path("export_cli.bin"));
    int rc = run_cmd(cmd, upc_path("export_cli.txt"));
    CHECK(rc == 0 && upc_files_equal(upc_path("export_cli.bin"), upc_path("llmc.bin")),
          "dev/export_llmc: exit %d or its file differs from llm.c's layout (see %s)", rc, upc_path("export_cli.txt"));
    upc_check_exact("round trip: export_llmc -> upcycle", upc_path("export_cli.bin"), &d);

    // llm.c's reader alone gives back the dense tensors exactly (the unused E=1 router aside)
    MoEModel r;
    CHECK(llmc_load_model(&r, upc_path("llmc.bin"), err, sizeof(err)) == 0, "llmc_load_model: %s", err);
    if (r.params_memory != NULL) {
        int same = memcmp(&r.config, &d.config, sizeof(MoEConfig)) == 0;
        for (int j = 0; j < GPT2_NUM_TENSORS && same; j++) {
            size_t na, nb;
            float* a = moe_param_tensor(&r, GPT2_TENSORS[j].name, &na);
            float* b = moe_param_tensor(&d, GPT2_TENSORS[j].name, &nb);
            same = na == nb && memcmp(a, b, na * 4) == 0;
        }
        CHECK(same, "llmc_load_model: config or tensors differ from the file's");
        moe_free(&r);
    }

    // bfloat16 (version 5): converted exactly; the upcycled model equals the bf16-rounded dense one
    upc_write_llmc_by_hand(upc_path("llmc_bf16.bin"), &d, 5);
    MoEModel d16;
    MoEConfig c = d.config;
    moe_build(&d16, &c);
    for (size_t i = 0; i < d.num_parameters; i++) d16.params_memory[i] = bits_float(float_bits(d.params_memory[i]) & 0xFFFF0000u);
    upc_check_exact("upcycle from an llm.c bfloat16 file", upc_path("llmc_bf16.bin"), &d16);
    moe_free(&d16);

    // what is copied, what is left alone: experts are the dense MLP; every tensor outside GPT-2's
    // (routerw, router_bias, X-MoE's) is the initialiser's
    MoEModel m, fresh;
    moe_build_upcycled(&m, upc_path("dense.bin"), 4, 2, 8, 5, 0.5f, 0.0f, err, sizeof(err));
    MoEConfig mc = m.config;
    moe_build(&fresh, &mc);
    moe_init_params(&fresh, 5, 0.5f);
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        int gpt2 = 0;
        for (int j = 0; j < GPT2_NUM_TENSORS; j++) gpt2 |= strcmp(PARAM_NAMES[i], GPT2_TENSORS[j].name) == 0;
        if (gpt2) continue;
        size_t na, nb;
        float* a = moe_param_tensor(&m, PARAM_NAMES[i], &na);
        float* b = moe_param_tensor(&fresh, PARAM_NAMES[i], &nb);
        CHECK(na == nb && na > 0 && memcmp(a, b, na * 4) == 0,
              "upcycle: router tensor %s is not the initialiser's (seed 5, --router-init-std 0.5)", PARAM_NAMES[i]);
    }
    int copies = 1;
    size_t HC = (size_t)64 * 16;
    for (int l = 0; l < 2; l++)
        for (int e = 0; e < 4; e++)
            copies &= memcmp(m.params.fcw + ((size_t)l * 4 + e) * HC, d.params.fcw + l * HC, HC * 4) == 0 &&
                      memcmp(m.params.fcprojb + ((size_t)l * 4 + e) * 16, d.params.fcprojb + l * 16, 16 * 4) == 0;
    CHECK(copies, "upcycle: an expert's fcw or fcprojb is not the dense layer's");
    CHECK(memcmp(m.params.qkvw, d.params.qkvw, m.param_sizes[4] * 4) == 0 && memcmp(m.params.wte, d.params.wte, m.param_sizes[0] * 4) == 0,
          "upcycle: attention or embedding weights not copied");
    moe_free(&fresh);

    // noise: seeded, its own stream, relative size S
    MoEModel n1, n2, n3;
    moe_build_upcycled(&n1, upc_path("dense.bin"), 4, 2, 8, 5, 0.5f, 0.1f, err, sizeof(err));
    moe_build_upcycled(&n2, upc_path("dense.bin"), 4, 2, 8, 5, 0.5f, 0.1f, err, sizeof(err));
    moe_build_upcycled(&n3, upc_path("dense.bin"), 4, 2, 8, 6, 0.5f, 0.1f, err, sizeof(err));
    CHECK(memcmp(n1.params_memory, n2.params_memory, n1.num_parameters * 4) == 0, "upcycle noise: same seed, different weights");
    CHECK(memcmp(n1.params.fcw, n3.params.fcw, n1.param_sizes[11] * 4) != 0, "upcycle noise: a different seed gave the same noise");
    CHECK(memcmp(n1.params.routerw, m.params.routerw, m.param_sizes[10] * 4) == 0, "upcycle noise moved the router's initialisation");
    double ss_noise = 0.0, ss_dense = 0.0;
    for (int l = 0; l < 2; l++)
        for (int e = 0; e < 4; e++)
            for (size_t i = 0; i < HC; i++) {
                double dn = (double)n1.params.fcw[((size_t)l * 4 + e) * HC + i] - d.params.fcw[l * HC + i];
                ss_noise += dn * dn;
                ss_dense += (double)d.params.fcw[l * HC + i] * d.params.fcw[l * HC + i];
            }
    double rel = sqrt(ss_noise / ss_dense);
    CHECK(fabs(rel - 0.1) < 0.01, "upcycle noise 0.1: measured relative size %.4f", rel);
    upc_forward(&n1);
    upc_forward(&d);
    CHECK(upc_logit_diff(&n1, &d, 16, NULL) > 1e-4f, "upcycle noise 0.1 left the logits unchanged");
    moe_free(&n1); moe_free(&n2); moe_free(&n3);
    moe_free(&m);
    moe_free(&d);
}

// softmax_topk: the weights are the K largest softmax probabilities, summing to s < 1, so the MoE
// layer outputs s(x) * MLP(x); with a zero router every probability is 1/E and s = K/E.
static void test_upcycle_softmax_topk(void) {
    MoEModel d;
    char err[512];
    if (dense_load(&d, upc_path("dense.bin"), err, sizeof(err)) != 0) { CHECK(0, "softmax_topk: %s", err); return; }
    const float stds[2] = {0.5f, 0.0f};
    for (int r = 0; r < 2; r++) {
        MoEModel m;
        moe_build_upcycled(&m, upc_path("dense.bin"), 4, 2, 0, 5, stds[r], 0.0f, err, sizeof(err));
        m.router.gate_norm = GATE_SOFTMAX_TOPK;
        upc_forward(&m);
        upc_forward(&d);
        int N = 16, C = 16;
        float* y = fmalloc((size_t)N * C);
        float* yd = fmalloc((size_t)N * C);
        RoutingMode mode = routing_eval(0);
        routed_layer_forward(&m, 0, N, y, &mode);   // layer 0's MoE output on the same input as the dense MLP's
        routed_layer_forward(&d, 0, N, yd, &mode);
        float worst = 0.0f, ymax = 0.0f, smax = 0.0f, smin = 2.0f;
        for (int n = 0; n < N; n++) {
            float s = 0.0f;
            for (int k = 0; k < 2; k++) s += m.acts.gate[n * 2 + k];
            smax = fmaxf(smax, s); smin = fminf(smin, s);
            if (r == 1) CHECK(fabsf(s - 0.5f) < 1e-6f, "softmax_topk, zero router: weights sum to %g, expected K/E = 0.5", s);
            for (int i = 0; i < C; i++) {
                worst = fmaxf(worst, fabsf(y[n * C + i] - s * yd[n * C + i]));
                ymax = fmaxf(ymax, fabsf(yd[n * C + i]));
            }
        }
        CHECK(worst <= 2e-6f * fmaxf(ymax, 1.0f), "softmax_topk (router std %g): MoE output differs from s * dense MLP by %g",
              stds[r], worst);
        CHECK(smax < 1.0f && smin > 0.0f, "softmax_topk: top-k weights should sum to (0, 1), got [%g, %g]", smin, smax);
        CHECK(upc_logit_diff(&m, &d, N, NULL) > 1e-3f, "softmax_topk: the logits should differ from the dense model's");
        free(y); free(yd);
        moe_free(&m);
    }
    moe_free(&d);
}

// Hostile and odd files: every one refused with a message naming what is wrong, nothing allocated.
static void upc_expect_refusal(const char* what, const void* data, size_t n, const char* needle) {
    const char* p = upc_path("bad.bin");
    dlt_write_raw(p, data, n);
    MoEModel m;
    char err[512] = "";
    int rc = moe_build_upcycled(&m, p, 4, 2, 0, 1, 0.02f, 0.0f, err, sizeof(err));
    CHECK(rc != 0 && strstr(err, needle) != NULL && strstr(err, "bad.bin") != NULL,
          "%s: expected a refusal naming the file and '%s', got rc %d '%s'", what, needle, rc, err);
    if (rc == 0) moe_free(&m);
}
static void test_upcycle_bad_files(void) {
    size_t n;
    unsigned char* good = dlt_read_raw(upc_path("llmc.bin"), &n);
    if (good == NULL) { CHECK(0, "no llmc.bin from test_upcycle_exact"); return; }
    unsigned char* buf = (unsigned char*)malloc(n + 8);
    const struct { int field, value; const char* needle; } fields[] = {
        {0, 12345, "magic"}, {1, 1, "version 1"}, {1, 4, "version 4"}, {2, 0, "maxT"}, {3, 1, "V ("},
        {4, 0, "L ("}, {4, 1 << 30, "L ("}, {5, 0, "NH"}, {6, -16, "C ("}, {6, 1 << 20, "C ("}, {7, 36, "padded vocab"},
        {5, 3, "divisible"}, {2, 9, "describes"}, {7, 256, "describes"}, {3, 200, "padded vocab"}};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        memcpy(buf, good, n);
        memcpy(buf + 4 * fields[i].field, &fields[i].value, 4);
        char what[64];
        snprintf(what, sizeof(what), "llm.c header[%d] = %d", fields[i].field, fields[i].value);
        upc_expect_refusal(what, buf, n, fields[i].needle);
    }
    upc_expect_refusal("llm.c file one byte short", good, n - 1, "describes");
    memcpy(buf, good, n); buf[n] = 0;
    upc_expect_refusal("llm.c file one byte long", buf, n + 1, "describes");
    upc_expect_refusal("llm.c file of 100 bytes", good, 100, "header");
    memcpy(buf, good, n);
    float nan = NAN;
    memcpy(buf + n - 8, &nan, 4);  // in lnfb
    upc_expect_refusal("llm.c file with a NaN", buf, n, "lnfb");
    upc_expect_refusal("empty file", good, 0, "empty");
    free(buf);
    free(good);
    // an MoE checkpoint is not a dense model
    MoEConfig c = tiny_config(4, 2);
    MoEModel moe;
    moe_build(&moe, &c);
    moe_init_params(&moe, 1, 0.02f);
    char err[512] = "";
    moe_save_checkpoint(&moe, upc_path("moe.bin"), 0, 0, 1, 1, NULL, err, sizeof(err));
    MoEModel m;
    int rc = moe_build_upcycled(&m, upc_path("moe.bin"), 4, 2, 0, 1, 0.02f, 0.0f, err, sizeof(err));
    CHECK(rc != 0 && strstr(err, "E=4") != NULL, "upcycling an E=4 checkpoint: expected a refusal, got '%s'", err);
    rc = moe_build_upcycled(&m, upc_path("dense.bin"), 4, 5, 0, 1, 0.02f, 0.0f, err, sizeof(err));
    CHECK(rc != 0 && strstr(err, "top-k") != NULL, "upcycling with K > E: expected a refusal, got '%s'", err);
    // the exporter refuses what llm.c cannot hold
    CHECK(llmc_save_model(&moe, upc_path("x.bin"), err, sizeof(err)) != 0 && strstr(err, "E=4"), "export of E=4: '%s'", err);
    moe_free(&moe);
    MoEConfig h = {8, 37, 128, 2, 2, 16, 1, 1, 24, 0};
    moe_build(&moe, &h);
    CHECK(llmc_save_model(&moe, upc_path("x.bin"), err, sizeof(err)) != 0 && strstr(err, "H=24"), "export of H=24: '%s'", err);
    moe_free(&moe);
}

// The trainer and evaluator on an upcycled GPT-2-shaped model with an llm.c tokenizer file:
// train_moe --upcycle starts at the dense model's validation loss (to the 6 printed decimals),
// samples through the tokenizer, writes a checkpoint that eval_moe evaluates and generates from.
static double upc_first_val_loss(const char* out) {
    FILE* f = fopen(out, "r");
    if (f == NULL) return NAN;
    char line[1024];
    double v = NAN;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "val loss %lf (step 0)", &v) == 1) break;
    fclose(f);
    return v;
}
// llm.c's version-1 tokenizer file, GPT-2's shape: 50257 tokens (the 256 bytes, then distinct
// 3-byte strings), end-of-text 50256, no merges.
static void upc_write_tokenizer_v1(const char* path) {
    FILE* f = fopen(path, "wb");
    if (f == NULL) return;
    uint32_t h[256] = {0};
    h[0] = TOKENIZER_MAGIC; h[1] = 1; h[2] = 50257;
    fwrite(h, sizeof(h), 1, f);
    for (int id = 0; id < 50256; id++) {
        unsigned char e[4] = {1, (unsigned char)id, 0, 0};
        if (id >= 256) { e[0] = 3; e[1] = 0x01; e[2] = (unsigned char)(id >> 8); e[3] = (unsigned char)id; }
        fwrite(e, 1, 1 + e[0], f);
    }
    unsigned char n = (unsigned char)strlen(TOKENIZER_EOT_TEXT);
    fwrite(&n, 1, 1, f);
    fwrite(TOKENIZER_EOT_TEXT, 1, n, f);
    fclose(f);
}

// tok_version 2: the eval tests' 260-token tokenizer; 1: a GPT-2-sized vocabulary (V=50257, Vp=50304).
static void test_upcycle_trainer(int tok_version) {
    int V = tok_version == 1 ? 50257 : EVT_V;
    if (tok_version == 1) upc_write_tokenizer_v1(upc_path("tokenizer.bin"));
    else evt_write_tokenizer(upc_path("tokenizer.bin"));
    uint16_t toks[600];
    for (int i = 0; i < 600; i++) toks[i] = (uint16_t)((i * 7919 + i / 7) % V);
    dlt_write_llmc_shard(upc_path("d_train.bin"), toks, 600, 600, 20240520, 1);
    dlt_write_llmc_shard(upc_path("d_val.bin"), toks + 100, 400, 400, 20240520, 1);
    MoEModel d;
    upc_dense_model(&d, V, 16);
    char err[512];
    moe_save_checkpoint(&d, upc_path("dense260.bin"), 0, 0, 1, 1, NULL, err, sizeof(err));
    upc_write_llmc_by_hand(upc_path("llmc260.bin"), &d, 3);
    moe_free(&d);
    char runs[512];
    snprintf(runs, sizeof(runs), "rm -rf %s/run_*", upc_dir);
    if (system(runs) != 0) printf("note: could not clear %s\n", upc_dir);
    char cmd[2048], data[1024];
    snprintf(data, sizeof(data), "-i %s -j %s --tokenizer %s -b 2 -t 16 -v 1 -m 2", upc_path("d_train.bin"),
             upc_path("d_val.bin"), upc_path("tokenizer.bin"));
    snprintf(cmd, sizeof(cmd), "./train_moe %s -e %s --weights-only -x 1 -o %s", data, upc_path("dense260.bin"), upc_path("run_dense"));
    int rc = run_cmd(cmd, upc_path("run_dense.txt"));
    double dense_loss = upc_first_val_loss(upc_path("run_dense.txt"));
    CHECK(rc == 0 && isfinite(dense_loss), "dense run failed (exit %d, see %s)", rc, upc_path("run_dense.txt"));
    snprintf(cmd, sizeof(cmd), "./train_moe %s --upcycle %s --experts 4 --top-k 2 -x 2 -s 2 -g 6 -o %s", data,
             upc_path("llmc260.bin"), upc_path("run_up"));
    rc = run_cmd(cmd, upc_path("run_up.txt"));
    double up_loss = upc_first_val_loss(upc_path("run_up.txt"));
    CHECK(rc == 0 && file_contains(upc_path("run_up.txt"), "--- sample ---") && file_contains(upc_path("run_up.txt"), "upcycled"),
          "train_moe --upcycle from an llm.c file (tokenizer version %d): exit %d or no sample (see %s)", tok_version, rc, upc_path("run_up.txt"));
    CHECK(fabs(up_loss - dense_loss) <= 2e-6, "train_moe --upcycle (V=%d): first val loss %.6f, the dense model's %.6f", V, up_loss, dense_loss);
    snprintf(cmd, sizeof(cmd), "./eval_moe -e %s/model_00000002.bin -j %s --tokenizer %s -b 2 -t 16 -m 2 --prompt ab -g 4 --json %s",
             upc_path("run_up"), upc_path("d_val.bin"), upc_path("tokenizer.bin"), upc_path("eval.json"));
    rc = run_cmd(cmd, upc_path("eval.txt"));
    CHECK(rc == 0 && file_contains(upc_path("eval.json"), "\"loss\"") && file_contains(upc_path("eval.txt"), "E=4"),
          "eval_moe on an upcycled checkpoint (V=%d): exit %d (see %s)", V, rc, upc_path("eval.txt"));
    // flags that do not go together
    snprintf(cmd, sizeof(cmd), "./train_moe %s --upcycle %s -e %s -x 1 -o %s", data, upc_path("llmc260.bin"),
             upc_path("dense260.bin"), upc_path("run_x"));
    CHECK(run_cmd(cmd, upc_path("x.txt")) != 0 && file_contains(upc_path("x.txt"), "exclude"), "--upcycle with -e must be refused");
    snprintf(cmd, sizeof(cmd), "./train_moe %s --upcycle-noise 0.1 -x 1 -o %s", data, upc_path("run_x"));
    CHECK(run_cmd(cmd, upc_path("x.txt")) != 0 && file_contains(upc_path("x.txt"), "needs --upcycle"), "--upcycle-noise alone must be refused");
    snprintf(cmd, sizeof(cmd), "./train_moe %s --upcycle %s -x 1 -o %s", data, upc_path("nonexistent.bin"), upc_path("run_x"));
    CHECK(run_cmd(cmd, upc_path("x.txt")) != 0 && file_contains(upc_path("x.txt"), "nonexistent.bin"), "--upcycle of a missing file");
}

static void test_upcycle(void) {
    snprintf(upc_dir, sizeof(upc_dir), "%s/upcycle", test_dir);
    mkdir(upc_dir, 0755);
    test_upcycle_exact();
    test_upcycle_softmax_topk();
    test_upcycle_bad_files();
    test_upcycle_trainer(2);
    test_upcycle_trainer(1);
    printf("  upcycled vs dense logits, largest |difference| (noise 0, topk_softmax): %.3g\n", upc_worst_exact);
}


int main(void) {
    char tmpl[] = "/tmp/test_moe_XXXXXX";
    if (mkdtemp(tmpl) == NULL) die("cannot create a temp directory");
    snprintf(test_dir, sizeof(test_dir), "%s", tmpl);
    printf("[ops: backward vs finite differences]\n");
    test_layernorm();
    test_matmul();
    test_attention();
    test_row_stride();
    test_huge_skew();
    test_exp_vector();
    test_gelu();
    test_crossentropy();
    test_gate_weights();
    test_gatepro();
    test_compete_hand();
    test_compete_softplus();
    test_compete_schedule();
    test_auxfree_hand();
    test_xmoe_hand();
    printf("[MoE metrics]\n");
    test_metrics();
    printf("[whole model vs finite differences]\n");
    test_model_fd(ROUTER_TOPK, GATE_TOPK_SOFTMAX);
    test_model_fd(ROUTER_TOPK, GATE_SOFTMAX_TOPK);
    test_model_fd(ROUTER_GATEPRO, GATE_TOPK_SOFTMAX);
    test_model_fd(ROUTER_GATEPRO, GATE_SOFTMAX_TOPK);
    test_model_fd(ROUTER_COMPETE, 0);
    test_model_fd(ROUTER_COMPETE, 1);
    test_model_fd(ROUTER_AUXFREE, GATE_TOPK_SOFTMAX);
    test_model_fd(ROUTER_AUXFREE, GATE_SOFTMAX_TOPK);
    test_model_fd(ROUTER_XMOE, GATE_TOPK_SOFTMAX);
    test_model_fd(ROUTER_XMOE, GATE_SOFTMAX_TOPK);
    printf("[PyTorch reference]\n");
    test_pytorch_reference("topk_ts");
    test_pytorch_reference("topk_st");
    test_pytorch_reference("dense");
    test_pytorch_reference("gatepro_ts");
    test_pytorch_reference("gatepro_st");
    test_pytorch_reference("gatepro_hard");
    test_pytorch_reference("compete_norm");
    test_pytorch_reference("compete_softmax");
    test_pytorch_reference("auxfree_ts");
    test_pytorch_reference("auxfree_st");
    test_pytorch_reference("xmoe_ts");
    test_pytorch_reference("xmoe_st");
    printf("  largest relative gradient error vs PyTorch: %.3g (max|diff| / max|ref| per tensor)\n", worst_grad_rel_error);
    printf("[determinism, checkpoints]\n");
    test_dist_pieces();
    test_determinism();
    test_adamw_subnormals();
    test_grads_zero_write();
    test_checkpoint();
    test_checkpoint_v1();
    printf("[train_moe: resume, signals, refusals]\n");
    test_trainer_resume("topk", "--seed 42");
    test_trainer_resume("compete", "--seed 42 --router compete --compete-rate 0.5 --compete-max-layers 1");
    test_trainer_resume_rules();
    test_trainer_resume("auxfree", "--seed 42 --router auxfree --auxfree-rate 0.01");
    test_trainer_resume("xmoe", "--seed 42 --router xmoe --xmoe-dim 8");
    test_trainer_logs_after_crash();
    test_checkpoint_settings_range();
    test_reliability_small_fixes();
    test_eval_gatepro_window();
    test_compete_metrics_logged();
    test_trainer_signal();
    test_trainer_gatepro_swap();
    test_trainer_nan();
    test_trainer_profile();
    test_trainer_refusals();
    printf("[data loader]\n");
    test_dataloader();
    printf("[domain labels, multi-domain corpus, routing dump]\n");
    test_domains();
    printf("[tokenizer]\n");
    test_tokenizer();
    printf("[eval_moe, make_cloze]\n");
    test_eval();
    printf("[upcycling, llm.c model files]\n");
    test_upcycle();
    printf("[first day: data script, run folder, tokenizer from the run, progress, ETA]\n");
    test_first_day();
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", test_dir);
    if (system(cmd) != 0) printf("note: could not remove %s\n", test_dir);
    printf("%d passed, %d failed\n", tests_passed, tests_failed);
    return tests_failed == 0 ? 0 : 1;
}
