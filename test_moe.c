/*
test_moe — every check of moe.c, in the order of the model: each op's backward against finite
differences, the whole model against finite differences and against the PyTorch reference
(dev/moe_ref.py writes dev/ref/), determinism, checkpoints, the trainer's failure paths, the data
loader and the tokenizer. Prints each failure with op, tensor, index and both values; ends with
"N passed, N failed" and exits non-zero when anything failed.

    make test            # from the repository root (it reads dev/ref/ and runs ./train_moe)
*/
#include <sys/wait.h>
#include <signal.h>
#include <time.h>
#include "moe.h"

static int tests_passed, tests_failed;
#define CHECK(cond, ...) do { if (cond) tests_passed++; else { tests_failed++; \
    printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } while (0)

#include "dataloader.h"
#include "tokenizer.h"

// ----------------------------------------------------------------------------
// helpers

static uint64_t test_rng = 42;
static float urand(void) { return 2.0f * random_f32(&test_rng) - 1.0f; }  // uniform in [-1, 1)
static void fill_uniform(float* x, size_t n, float scale) { for (size_t i = 0; i < n; i++) x[i] = scale * urand(); }
static float* fmalloc(size_t n) { return (float*)callocCheck(n, sizeof(float)); }
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
    matmul_backward(dinp, dw, db, c.w, c.inp, c.weight, c.N, c.C, c.OC);
    fd_check("matmul", "inp", c.inp, (size_t)c.N * c.C, dinp, matmul_loss, &c, 1e-2f, 1e-3, 1e-3, 91);
    fd_check("matmul", "weight", c.weight, (size_t)c.OC * c.C, dw, matmul_loss, &c, 1e-2f, 1e-3, 1e-3, 117);
    fd_check("matmul", "bias", c.bias, c.OC, db, matmul_loss, &c, 1e-2f, 1e-3, 1e-3, 9);
    free(c.inp); free(c.weight); free(c.bias); free(c.out); free(c.w); free(dinp); free(dw); free(db);
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
    attention_loss(&c);
    attention_backward(dqkv, c.w, c.inp, c.mean, c.B, c.T, c.C, c.NH);
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
}

// ----------------------------------------------------------------------------
// GatePro (SPEC §3.2) on constructed router weights and logits

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
// CompeteSMoE on constructed expert outputs (COMPETESMOE.md §B)

// Experts whose output is a constant vector (W1 = W2 = 0, b2 = o_e), one token with a chosen
// router input, so every quantity has a value computed here by hand from the definitions.
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
// MoE metrics (SPEC §6) on constructed inputs with hand-computed answers

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
    // Jacobi on Q diag(3, -2, 0.5, 1) Q^T with Q a Householder reflection: the same eigenvalues back
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

typedef struct { MoEModel* m; const int* inp; const int* tgt; int B, T; } ModelCtx;
static double model_loss(void* p) {
    ModelCtx* c = (ModelCtx*)p;
    moe_forward(c->m, c->inp, c->tgt, c->B, c->T);
    return (double)c->m->mean_loss + c->m->aux_loss + c->m->z_loss + c->m->compete_loss;
}

// Finite differences of the total loss for a spread of entries of every parameter tensor. An
// entry whose +-eps changes a routing decision is skipped (top-k is not differentiable there).
static void test_model_fd(int router, int gate_norm) {
    MoEConfig cfg = tiny_config(4, 2);
    MoEModel m;
    moe_build(&m, &cfg);
    moe_init_params(&m, 7, 1.0f);
    fill_uniform(m.params.ln1b, m.param_sizes[3], 0.1f);
    fill_uniform(m.params.ln2b, m.param_sizes[9], 0.1f);
    fill_uniform(m.params.fcb, m.param_sizes[12], 0.1f);
    for (size_t i = 0; i < m.param_sizes[11]; i++) m.params.fcw[i] *= 10.0f;  // wake the experts up
    m.router = router_config(router, gate_norm, 0.5f, 0.05f, 0.3f, 0, -1);  // large aux/z so their gradients show
    m.gatepro_active = 1;
    // CompeteSMoE: layer 0 competes, layer 1 takes a router step; large coefficients so every path shows
    unsigned char competing[2] = {1, 0};
    if (router == ROUTER_COMPETE) {
        m.compete_layers = competing;
        m.router.compete_weights = gate_norm;  // reuse the loop: 0 norm, 1 softmax
        m.router.compete_alpha = 0.3f;
        m.router.compete_router_coef = 0.5f;
        m.router.compete_div_coef = 0.3f;
        m.router.compete_bal_coef = 0.3f;
    }
    int B = 2, T = 6, inp[12], tgt[12];
    for (int i = 0; i < B * T; i++) { inp[i] = (i * 7 + 3) % 37; tgt[i] = (i * 5 + 1) % 37; }
    ModelCtx c = {&m, inp, tgt, B, T};
    moe_zero_grad(&m);
    model_loss(&c);
    moe_backward(&m, 1.0f);
    size_t N = (size_t)cfg.num_layers * B * T * cfg.top_k, NE = (size_t)cfg.num_layers * B * T * cfg.n_expert;
    int* base_routing = (int*)mallocCheck(N * sizeof(int));
    unsigned char* base_losers = (unsigned char*)mallocCheck(NE);
    unsigned char* losers = (unsigned char*)mallocCheck(NE);
    model_loss(&c);
    memcpy(base_routing, m.idx.expert_index, N * sizeof(int));
    for (size_t i = 0; i < NE; i++) base_losers[i] = m.acts.router_select[i] != m.acts.router_logits[i];
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
            for (size_t q = 0; q < NE; q++) losers[q] = m.acts.router_select[q] != m.acts.router_logits[q];
            int moved = memcmp(base_routing, m.idx.expert_index, N * sizeof(int)) != 0 || memcmp(base_losers, losers, NE) != 0;
            *x = keep - eps; double lm = model_loss(&c);
            for (size_t q = 0; q < NE; q++) losers[q] = m.acts.router_select[q] != m.acts.router_logits[q];
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
    m.gatepro_active = 1;
    int B = s.header[2], T = s.header[3], nsteps = s.header[4];
    int K = m.config.top_k, L = m.config.num_layers, Vp = m.config.padded_vocab_size;
    // CompeteSMoE: state [16] = bitmask of the layers that compete at every forward, [17] = float
    // bits of the first forward's compete loss (the checkpoint carries the compete settings)
    unsigned char* compete = NULL;
    if (m.router.router == ROUTER_COMPETE) {
        compete = (unsigned char*)callocCheck((size_t)L, 1);
        for (int l = 0; l < L; l++) compete[l] = (unsigned char)((s.header[16] >> l) & 1);
        m.compete_layers = compete;
    }
    float lr = bits_float((uint32_t)s.header[5]), wd = bits_float((uint32_t)s.header[6]);
    float clip = bits_float((uint32_t)s.header[7]);

    moe_forward(&m, s.inputs, s.targets, B, T);
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
        moe_forward(&m, s.inputs, s.targets, B, T);
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
    }
    CHECK(steps_ok, "reference %s: losses of %d AdamW steps differ from PyTorch's", name, nsteps);
    m.compete_layers = NULL;
    free(compete);
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
        moe_forward(m, inp, tgt, B, T);
        losses[s] = m->mean_loss + m->aux_loss;
        moe_backward(m, 1.0f);
        float norm = grad_global_norm(m);
        moe_adamw_update(m, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, norm > 1.0f ? 1.0f / (norm + 1e-6f) : 1.0f, s + 1);
    }
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
    CHECK(memcmp(a, c1, sizeof(a)) == 0, "determinism: 1 thread and 2 threads give different losses (%.9g vs %.9g)", a[5], c1[5]);
    CHECK(a[5] < a[0], "training on random tokens should still lower the loss: %g -> %g", a[0], a[5]);
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
    TrainState ts = {5, 6, 7, 0xDEADBEEFCAFEull, {0}};
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
              bits_float((uint32_t)info.header[15]) == 0.5f, "checkpoint header fields not at the SPEC §5.3 offsets");
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

static const char* SMALL_RUN = "./train_moe --synthetic-tokens 40000 --layers 2 --channels 32 --heads 2 --experts 4 -b 4 -t 16 -v 0";

// A run interrupted at step 4 and resumed gives bit-identical losses and final checkpoint.
static void test_trainer_resume(const char* name, const char* extra) {
    char cmd[2048], out[512], a[8192], b[8192], log[512];
    snprintf(out, sizeof(out), "%s/out.txt", test_dir);
    snprintf(cmd, sizeof(cmd), "%s %s -x 8 -n 4 -o %s/%s_full", SMALL_RUN, extra, test_dir, name);
    int rc = run_cmd(cmd, out);
    CHECK(rc == 0, "train_moe %s: small run exited %d (see %s)", name, rc, out);
    snprintf(cmd, sizeof(cmd), "%s %s -x 8 -e %s/%s_full/model_00000004.bin -o %s/%s_resumed", SMALL_RUN, extra, test_dir,
             name, test_dir, name);
    rc = run_cmd(cmd, out);
    CHECK(rc == 0, "train_moe %s: resume exited %d (see %s)", name, rc, out);
    snprintf(log, sizeof(log), "%s/%s_full/main.log", test_dir, name);
    read_train_losses(log, a, sizeof(a));
    snprintf(log, sizeof(log), "%s/%s_resumed/main.log", test_dir, name);
    read_train_losses(log, b, sizeof(b));
    const char* tail = strstr(a, "s:4 trl:");
    CHECK(tail != NULL && strcmp(tail, b) == 0, "%s: resume at step 4 is not bit-identical:\n--- full\n%s--- resumed\n%s",
          name, tail ? tail : a, b);
    char p1[512], p2[512];
    snprintf(p1, sizeof(p1), "%s/%s_full/model_00000008.bin", test_dir, name);
    snprintf(p2, sizeof(p2), "%s/%s_resumed/model_00000008.bin", test_dir, name);
    snprintf(cmd, sizeof(cmd), "cmp -s %s %s", p1, p2);
    CHECK(system(cmd) == 0, "%s: final checkpoints of the full and resumed runs differ", name);
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
        fields_ok &= tabs == 20;
    }
    if (f != NULL) fclose(f);
    CHECK(header_ok && fields_ok && rows == 1 + 8 * 2, "%s: metrics.tsv should have a header and 16 rows of 21 fields (%d lines, header %d, fields %d)", name, rows, header_ok, fields_ok);
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
    char args[1024];
    snprintf(args, sizeof(args), "-e %s/ckpt.bin", test_dir);  // left corrupt by test_checkpoint
    expect_refusal(args, "ckpt.bin");
}

// ----------------------------------------------------------------------------

#include "dev/wip_dataloader_tests.c"
#include "dev/wip_tokenizer_tests.c"
#include "dev/wip_eval_tests.c"

int main(void) {
    char tmpl[] = "/tmp/test_moe_XXXXXX";
    if (mkdtemp(tmpl) == NULL) die("cannot create a temp directory");
    snprintf(test_dir, sizeof(test_dir), "%s", tmpl);
    printf("[ops: backward vs finite differences]\n");
    test_layernorm();
    test_matmul();
    test_attention();
    test_gelu();
    test_crossentropy();
    test_gate_weights();
    test_gatepro();
    test_compete_hand();
    test_compete_schedule();
    printf("[MoE metrics]\n");
    test_metrics();
    printf("[whole model vs finite differences]\n");
    test_model_fd(ROUTER_TOPK, GATE_TOPK_SOFTMAX);
    test_model_fd(ROUTER_TOPK, GATE_SOFTMAX_TOPK);
    test_model_fd(ROUTER_GATEPRO, GATE_TOPK_SOFTMAX);
    test_model_fd(ROUTER_GATEPRO, GATE_SOFTMAX_TOPK);
    test_model_fd(ROUTER_COMPETE, 0);
    test_model_fd(ROUTER_COMPETE, 1);
    printf("[PyTorch reference]\n");
    test_pytorch_reference("topk_ts");
    test_pytorch_reference("topk_st");
    test_pytorch_reference("dense");
    test_pytorch_reference("gatepro_ts");
    test_pytorch_reference("gatepro_st");
    test_pytorch_reference("gatepro_hard");
    test_pytorch_reference("compete_norm");
    test_pytorch_reference("compete_softmax");
    printf("  largest relative gradient error vs PyTorch: %.3g (max|diff| / max|ref| per tensor)\n", worst_grad_rel_error);
    printf("[determinism, checkpoints]\n");
    test_determinism();
    test_checkpoint();
    printf("[train_moe: resume, signals, refusals]\n");
    test_trainer_resume("topk", "");
    test_trainer_resume("compete", "--router compete --compete-rate 0.5 --compete-max-layers 1");
    test_trainer_signal();
    test_trainer_gatepro_swap();
    test_trainer_refusals();
    printf("[data loader]\n");
    test_dataloader();
    printf("[tokenizer]\n");
    test_tokenizer();
    printf("[eval_moe, make_cloze]\n");
    test_eval();
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", test_dir);
    if (system(cmd) != 0) printf("note: could not remove %s\n", test_dir);
    printf("%d passed, %d failed\n", tests_passed, tests_failed);
    return tests_failed == 0 ? 0 : 1;
}
