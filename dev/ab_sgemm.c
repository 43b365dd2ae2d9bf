// In-process A/B of two builds of matmul.h: which is faster on the model's shapes, and do they
// compute the same bits?
//
// On a shared machine two programs timed one after the other see different neighbours: on the
// 2-core Xeon the same expert matmul ran anywhere from 90 to 160 GFLOP/s from one process to the
// next, so a 5% change was invisible. Here both builds live in one process and take turns call by
// call (A B B A A B ...): each pair of calls sees the same machine, and the median of the pairs'
// time ratios is what is reported, with its quartiles. Comparing a build with itself (the
// default) gives 1.00 and shows the noise floor: quartiles of about ±3-5% there.
//
// This one file is compiled three times (the Makefile's dev/ab_sgemm rule): with AB_SIDE=a and
// AB_SIDE=b, each including its own matmul.h (AB_MATMUL) with its own flags, which gives two
// sets of static functions and buffers under two names; and once more without AB_SIDE for main.
//
//   make dev/ab_sgemm                                     this matmul.h against itself
//   make dev/ab_sgemm AB_B=/tmp/matmul_new.h              against a changed copy
//   make dev/ab_sgemm AB_BFLAGS=-DSGEMM_NC=512            against other blocking sizes
//   OMP_NUM_THREADS=2 OMP_PROC_BIND=true dev/ab_sgemm [--pairs N] [--quick]
//
// Shapes: `small`'s dense products (qkv, attproj, LM head; forward, dinp, weight gradient) and the
// expert FFN's six batched matmuls at E = 8, 64 and 128 experts (512, 64 and 32 tokens each), the
// way dev/bench_sgemm --experts runs them. Every output of B is compared with A's bit for bit.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct { int M, N, K; const float* A; const float* B; float* C; } AbProblem;   // one item of a batch
enum { AB_OVERWRITE = 0, AB_ACCUMULATE = 1, AB_STREAM = 2 };

#ifdef AB_SIDE
// ---------------------------------------------------------------------------- one side
#include AB_MATMUL
#define AB_CAT_(x, y) ab_##x##_##y
#define AB_CAT(x, y) AB_CAT_(x, y)
static int ab_mode(int mode) { return mode == AB_STREAM ? SGEMM_STREAM : mode == AB_ACCUMULATE ? SGEMM_ACCUMULATE : SGEMM_OVERWRITE; }
void AB_CAT(AB_SIDE, sgemm)(int tA, int tB, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
                            float* C, int ldc, int mode) {
    sgemm(tA, tB, M, N, K, A, lda, B, ldb, C, ldc, ab_mode(mode));
}
void AB_CAT(AB_SIDE, batch)(int tA, int tB, const AbProblem* items, int count, int lda, int ldb, int ldc, int mode) {
    static SgemmProblem* probs = NULL;
    static int cap = 0;
    if (count > cap) {
        probs = (SgemmProblem*)realloc(probs, (size_t)count * sizeof(SgemmProblem));
        if (probs == NULL) { fprintf(stderr, "ab_sgemm: out of memory\n"); exit(1); }
        cap = count;
    }
    for (int q = 0; q < count; q++) {
        memset(&probs[q], 0, sizeof probs[q]);
        probs[q].M = items[q].M; probs[q].N = items[q].N; probs[q].K = items[q].K;
        probs[q].A = items[q].A; probs[q].B = items[q].B; probs[q].C = items[q].C;
        probs[q].causal = SGEMM_FULL;
    }
    sgemm_batch(tA, tB, probs, count, lda, ldb, ldc, ab_mode(mode));
}
const char* AB_CAT(AB_SIDE, describe)(void) {
    static char s[160];
    snprintf(s, sizeof s, "%s, MR=%d NR=%d KC=%d MC=%d NC=%d", SGEMM_ISA, SGEMM_MR, SGEMM_NR, SGEMM_KC, SGEMM_MC, SGEMM_NC);
    return s;
}
int AB_CAT(AB_SIDE, row_stride)(int n) { return sgemm_row_stride(n); }

#else
// ---------------------------------------------------------------------------- main
#ifdef _OPENMP
#include <omp.h>
#endif
void ab_a_sgemm(int, int, int, int, int, const float*, int, const float*, int, float*, int, int);
void ab_b_sgemm(int, int, int, int, int, const float*, int, const float*, int, float*, int, int);
void ab_a_batch(int, int, const AbProblem*, int, int, int, int, int);
void ab_b_batch(int, int, const AbProblem*, int, int, int, int, int);
const char* ab_a_describe(void);
const char* ab_b_describe(void);
int ab_a_row_stride(int);

static double now_sec(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}
static int cmp_double(const void* x, const void* y) {
    double a = *(const double*)x, b = *(const double*)y;
    return (a > b) - (a < b);
}
static float* ab_alloc(size_t n) {   // 64-byte aligned floats, filled deterministically
    void* p = NULL;
    if (posix_memalign(&p, 64, (n ? n : 1) * sizeof(float)) != 0) { fprintf(stderr, "ab_sgemm: out of memory\n"); exit(1); }
    float* f = (float*)p;
    for (size_t i = 0; i < n; i++) f[i] = (float)((i * 7919) % 1000) * 1e-3f - 0.5f;
    return f;
}

// One use: E problems of op(A)[M,K] · op(B)[K,N] (E = 1: a plain sgemm), leading dimensions as the
// model's; outputs apart for A and B, so their bits can be compared at the end.
typedef struct { const char* name; int tA, tB, E, M, N, K, lda, ldb, ldc, mode; } AbUse;

static int total_same = 0, total_shapes = 0;
static double total_a = 0.0, total_b = 0.0;

static void ab_run(const AbUse* u, int pairs) {
    int E = u->E, rowsA = u->tA ? u->K : u->M, rowsB = u->tB ? u->N : u->K;
    size_t na = (size_t)rowsA * u->lda, nb = (size_t)rowsB * u->ldb, nc = (size_t)u->M * u->ldc;
    float *A = ab_alloc(na * E), *B = ab_alloc(nb * E), *Ca = ab_alloc(nc * E), *Cb = ab_alloc(nc * E);
    memcpy(Cb, Ca, nc * E * sizeof(float));
    AbProblem* pa = (AbProblem*)malloc(sizeof(AbProblem) * E);
    AbProblem* pb = (AbProblem*)malloc(sizeof(AbProblem) * E);
    double *ta = (double*)malloc(sizeof(double) * pairs), *tb = (double*)malloc(sizeof(double) * pairs);
    double* ratio = (double*)malloc(sizeof(double) * pairs);
    if (!pa || !pb || !ta || !tb || !ratio) { fprintf(stderr, "ab_sgemm: out of memory\n"); exit(1); }
    for (int e = 0; e < E; e++) {
        pa[e] = (AbProblem){u->M, u->N, u->K, A + na * e, B + nb * e, Ca + nc * e};
        pb[e] = pa[e];
        pb[e].C = Cb + nc * e;
    }
    // accumulating products start each call from the same C (outside the timing), so the outputs
    // stay comparable and tame
    float* c0 = u->mode == AB_ACCUMULATE ? ab_alloc(nc * E) : NULL;
    for (int r = -2; r < pairs; r++) {   // two warm-up pairs (packing buffers, page faults)
        for (int k = 0; k < 2; k++) {
            int side = (r & 1) ? k : 1 - k;   // A B, then B A: a slow drift costs both alike
            float* C = side ? Cb : Ca;
            if (c0 != NULL) memcpy(C, c0, nc * E * sizeof(float));
            double t0 = now_sec();
            if (E == 1) (side ? ab_b_sgemm : ab_a_sgemm)(u->tA, u->tB, u->M, u->N, u->K, A, u->lda, B, u->ldb, C, u->ldc, u->mode);
            else (side ? ab_b_batch : ab_a_batch)(u->tA, u->tB, side ? pb : pa, E, u->lda, u->ldb, u->ldc, u->mode);
            double dt = now_sec() - t0;
            if (r >= 0) (side ? tb : ta)[r] = dt;
        }
    }
    for (int r = 0; r < pairs; r++) ratio[r] = tb[r] / ta[r];
    qsort(ratio, pairs, sizeof(double), cmp_double);
    qsort(ta, pairs, sizeof(double), cmp_double);
    qsort(tb, pairs, sizeof(double), cmp_double);
    int same = memcmp(Ca, Cb, nc * E * sizeof(float)) == 0;
    double flops = 2.0 * E * u->M * u->N * u->K, ma = ta[pairs / 2], mb = tb[pairs / 2];
    printf("%-13s %d %d %4d %5d %5d %5d | %7.1f %7.1f | %6.3f  %6.3f-%-6.3f | %s\n", u->name, u->tA, u->tB, E, u->M, u->N, u->K,
           flops / ma / 1e9, flops / mb / 1e9, ratio[pairs / 2], ratio[pairs / 4], ratio[(3 * pairs) / 4],
           same ? "same" : "DIFFER");
    fflush(stdout);
    total_same += same;
    total_shapes++;
    total_a += ma;
    total_b += mb;
    free(A); free(B); free(Ca); free(Cb); free(c0); free(pa); free(pb); free(ta); free(tb); free(ratio);
}

int main(int argc, char** argv) {
    int pairs = 30;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--pairs") == 0 && i + 1 < argc) {
            char* end;
            long v = strtol(argv[++i], &end, 10);
            if (*end != '\0' || v < 1 || v > 100000) { fprintf(stderr, "ab_sgemm: --pairs needs an integer in 1..100000\n"); return 1; }
            pairs = (int)v;
        } else if (strcmp(argv[i], "--quick") == 0) {
            pairs = 2;
        } else {
            fprintf(stderr, "usage: dev/ab_sgemm [--pairs N] [--quick]   (build: make dev/ab_sgemm [AB_B=file] [AB_BFLAGS=...])\n");
            return 1;
        }
    }
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    // small: B*T = 2048 tokens, C = 256, the LM head over Vp = 4096; experts: C = 256, H = 512
    const int BT = 2048, C = 256, C3 = 768, Vp = 4096, H = 512, Hs = ab_a_row_stride(H);
    AbUse uses[] = {
        {"qkv fwd", 0, 1, 1, BT, C3, C, C, C, C3, AB_OVERWRITE},
        {"qkv dinp", 0, 0, 1, BT, C, C3, C3, C, C, AB_ACCUMULATE},
        {"qkv dW", 1, 0, 1, C3, C, BT, C3, C, C, AB_ACCUMULATE},
        {"attproj fwd", 0, 1, 1, BT, C, C, C, C, C, AB_OVERWRITE},
        {"attproj dinp", 0, 0, 1, BT, C, C, C, C, C, AB_ACCUMULATE},
        {"attproj dW", 1, 0, 1, C, C, BT, C, C, C, AB_ACCUMULATE},
        {"lmhead fwd", 0, 1, 1, BT, Vp, C, C, C, Vp, AB_OVERWRITE},
        {"lmhead dinp", 0, 0, 1, BT, C, Vp, Vp, C, C, AB_ACCUMULATE},
        {"lmhead dW", 1, 0, 1, Vp, C, BT, Vp, C, C, AB_ACCUMULATE},
    };
    int n_dense = (int)(sizeof uses / sizeof uses[0]);
    printf("A: %s\nB: %s\n%d threads, %d pairs per shape (A B, B A, ...); ratio = B's time / A's, median of the pairs and quartiles\n\n",
           ab_a_describe(), ab_b_describe(), threads, pairs);
    printf("%-13s tA tB    E     M     N     K |  A GF/s  B GF/s | B/A     q25-q75       | bits\n", "use");
    for (int i = 0; i < n_dense; i++) ab_run(&uses[i], pairs);
    const int experts[3] = {8, 64, 128};
    for (int x = 0; x < 3; x++) {
        int E = experts[x], M = BT * 2 / E;   // top-2: each expert's share of the 4096 assignments
        AbUse ex[6] = {
            {"fc fwd", 0, 1, E, M, H, C, C, C, Hs, AB_OVERWRITE},
            {"fcproj fwd", 0, 1, E, M, C, H, Hs, H, C, AB_OVERWRITE},
            {"fcproj dinp", 0, 0, E, M, H, C, C, H, Hs, AB_OVERWRITE},
            {"fc dinp", 0, 0, E, M, C, H, Hs, C, C, AB_OVERWRITE},
            {"fcproj dW", 1, 0, E, C, H, M, C, Hs, H, AB_STREAM},
            {"fc dW", 1, 0, E, H, C, M, Hs, C, C, AB_STREAM},
        };
        for (int i = 0; i < 6; i++) ab_run(&ex[i], pairs);
    }
    printf("\nsum of the median times: A %.2f ms, B %.2f ms, B/A %.3f; outputs bit-identical on %d of %d shapes\n",
           total_a * 1e3, total_b * 1e3, total_b / total_a, total_same, total_shapes);
    return 0;
}
#endif
