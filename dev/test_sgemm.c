// Correctness test for matmul.h: sgemm (and its packed path sgemm_blocked) against the plain-loop
// sgemm_scalar, over many shapes incl. edge sizes, all four transpose combinations, accumulate 0/1,
// padded leading dimensions; plus bit-identity of the result across thread counts.
//
// Tolerance: max|got - ref| / (max|ref| + 1e-6) < 1e-5 per call (inputs uniform in [-1,1]; the two
// sum in different association, so they agree to a few float ulps of the result's scale).
// Also checked exactly: C padding (columns N..ldc-1) untouched; accumulate=0 overwrites NaN in C.
//
// build: gcc -O3 -march=native -fopenmp -Wall -Wextra dev/test_sgemm.c -o dev/test_sgemm -lm
// (`make test` also builds dev/test_sgemm_avx2 with -DSGEMM_NO_AVX512, so that on an AVX-512 CPU
// both micro-kernels are tested.)
#include <math.h>
#include <stdint.h>
#include "../matmul.h"

static int n_passed = 0, n_failed = 0;

static uint64_t rng_state = 0x853c49e6748fea9bULL;
static float rand_pm1(void) {   // xorshift64*, uniform in [-1, 1)
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    uint32_t r = (uint32_t)((rng_state * 0x2545F4914F6CDD1DULL) >> 40);   // 24 bits
    return (float)r / 8388608.0f - 1.0f;
}
static float* rand_buf(size_t n) {
    float* p = (float*)malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = rand_pm1();
    return p;
}

typedef void (*gemm_fn)(int, int, int, int, int, const float*, int, const float*, int, float*, int, int);

static void set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

// one call of fn against sgemm_scalar; pad adds to every leading dimension
static void check_case(const char* name, gemm_fn fn, int tA, int tB, int M, int N, int K,
                       int accumulate, int pad) {
    // storage shapes: op(A) is M×K, op(B) is K×N
    int a_rows = tA ? K : M, a_cols = tA ? M : K;
    int b_rows = tB ? N : K, b_cols = tB ? K : N;
    int lda = a_cols + pad, ldb = b_cols + pad, ldc = N + pad;
    float* A = rand_buf((size_t)a_rows * lda);
    float* B = rand_buf((size_t)b_rows * ldb);
    float* C = rand_buf((size_t)M * ldc);
    float* R = (float*)malloc(((size_t)M * ldc + 1) * sizeof(float));
    if (!accumulate) {   // the result must not depend on C's old contents, not even on NaN
        for (int i = 0; i < M; i++) for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = NAN;
    }
    memcpy(R, C, (size_t)M * ldc * sizeof(float));
    fn(tA, tB, M, N, K, A, lda, B, ldb, C, ldc, accumulate);
    sgemm_scalar(tA, tB, M, N, K, A, lda, B, ldb, R, ldc, accumulate);

    double max_diff = 0.0, max_ref = 0.0;
    int bad_i = -1, bad_j = -1, pad_touched = 0;
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < ldc; j++) {
            float got = C[(size_t)i * ldc + j], ref = R[(size_t)i * ldc + j];
            if (j >= N) {   // padding: must be bit-for-bit untouched
                if (memcmp(&got, &ref, sizeof(float)) != 0) pad_touched = 1;
                continue;
            }
            double d = isfinite(got) ? fabs((double)got - ref) : INFINITY;
            if (d > max_diff) { max_diff = d; bad_i = i; bad_j = j; }
            if (fabs(ref) > max_ref) max_ref = fabs(ref);
        }
    }
    double rel = max_diff / (max_ref + 1e-6);
    if (rel < 1e-5 && !pad_touched) {
        n_passed++;
    } else {
        n_failed++;
        printf("FAIL %s tA=%d tB=%d M=%d N=%d K=%d acc=%d pad=%d: rel err %.3g%s", name, tA, tB,
               M, N, K, accumulate, pad, rel, pad_touched ? " (padding of C was written)" : "");
        if (bad_i >= 0) printf(" at C[%d,%d] got %.9g want %.9g", bad_i, bad_j,
                               C[(size_t)bad_i * ldc + bad_j], R[(size_t)bad_i * ldc + bad_j]);
        printf("\n");
    }
    free(A); free(B); free(C); free(R);
}

// sgemm with 1, 2 and 3 threads must give bit-identical C (3 > cores changes the tiling too)
static void check_threads(int tA, int tB, int M, int N, int K, int accumulate) {
    int a_rows = tA ? K : M, a_cols = tA ? M : K;
    int b_rows = tB ? N : K, b_cols = tB ? K : N;
    float* A = rand_buf((size_t)a_rows * a_cols);
    float* B = rand_buf((size_t)b_rows * b_cols);
    float* C0 = rand_buf((size_t)M * N);
    float* C[3];
    int ok = 1;
    for (int t = 0; t < 3; t++) {
        C[t] = (float*)malloc(((size_t)M * N + 1) * sizeof(float));
        memcpy(C[t], C0, (size_t)M * N * sizeof(float));
        set_threads(t + 1);
        sgemm(tA, tB, M, N, K, A, a_cols, B, b_cols, C[t], N, accumulate);
        if (t > 0 && memcmp(C[t], C[0], (size_t)M * N * sizeof(float)) != 0) {
            ok = 0;
            for (size_t x = 0; x < (size_t)M * N; x++) {
                if (memcmp(&C[t][x], &C[0][x], sizeof(float)) != 0) {
                    printf("FAIL threads tA=%d tB=%d M=%d N=%d K=%d acc=%d: %d vs 1 thread differ "
                           "at C[%zu,%zu]: %.9g vs %.9g\n", tA, tB, M, N, K, accumulate, t + 1,
                           x / N, x % N, C[t][x], C[0][x]);
                    break;
                }
            }
        }
    }
    set_threads(2);
    if (ok) n_passed++; else n_failed++;
    free(A); free(B); free(C0); for (int t = 0; t < 3; t++) free(C[t]);
}

// the micro-kernel in use (AVX2 when compiled for it) against the scalar definition
static void check_kernel(int kc, int add) {
    float* a = sgemm_alloc((size_t)kc * SGEMM_MR + 1);
    float* b = sgemm_alloc((size_t)kc * SGEMM_NR + 1);
    for (int x = 0; x < kc * SGEMM_MR; x++) a[x] = rand_pm1();
    for (int x = 0; x < kc * SGEMM_NR; x++) b[x] = rand_pm1();
    int ldc = SGEMM_NR + 3;
    float c1[SGEMM_MR * (SGEMM_NR + 3)], c2[SGEMM_MR * (SGEMM_NR + 3)];
    for (int x = 0; x < SGEMM_MR * ldc; x++) c1[x] = c2[x] = rand_pm1();
    sgemm_kernel(kc, a, b, c1, ldc, add);
    sgemm_kernel_scalar(kc, a, b, c2, ldc, add);
    double max_diff = 0.0, max_ref = 0.0;
    for (int x = 0; x < SGEMM_MR * ldc; x++) {
        double d = fabs((double)c1[x] - c2[x]);
        if (d > max_diff) max_diff = d;
        if (fabs(c2[x]) > max_ref) max_ref = fabs(c2[x]);
    }
    double rel = max_diff / (max_ref + 1e-6);
    if (rel < 1e-5) n_passed++;
    else { n_failed++; printf("FAIL kernel kc=%d add=%d: rel err %.3g\n", kc, add, rel); }
    free(a); free(b);
}

// The problems of a batch computed either by one sgemm_batch call (via 0) or each by sgemm_problem
// on the threads of the caller's own parallel loop (via 1, as attention runs its heads).
static void run_problems(int via, int tA, int tB, const SgemmProblem* probs, int count, int lda, int ldb, int ldc,
                         int accumulate) {
    if (via == 0) { sgemm_batch(tA, tB, probs, count, lda, ldb, ldc, accumulate); return; }
    sgemm_reserve_threads();
    #pragma omp parallel for schedule(dynamic, 1)
    for (int q = 0; q < count; q++) sgemm_problem(tA, tB, &probs[q], lda, ldb, ldc, accumulate);
}

// An epilogue for the tests: c = 2c + 1 on the item's block (applied twice, or to a block not yet
// final, or outside the block, it gives other bits).
static void test_epilogue(const SgemmProblem* p, int ldc, int ic, int mc, int jc, int nc) {
    for (int i = ic; i < ic + mc; i++)
        for (int j = jc; j < jc + nc; j++) p->C[(size_t)i * ldc + j] = 2.0f * p->C[(size_t)i * ldc + j] + 1.0f;
}

// sgemm_batch: several products of uneven sizes (as an MoE layer's experts) in one call must give
// exactly the bits of sgemm_blocked on each product alone, for 1, 2 and 3 threads. (N = 1100: two
// column blocks, so one-row-block items start at jc > 0, as in sgemm_rows_item's transposed path.
// Also each problem through sgemm_problem, in a parallel loop over the problems; and both with an
// epilogue, which must see each element of C once, final. N = 160 and 1100 with tA = tB = 0: the
// experts' dinp shape, whole slivers and a ragged column block.)
// M on both sides of sgemm_blocked's row block (96) and sgemm_batch's (256 with AVX-512, 258 with
// AVX2), and 530: three row blocks over a B packed once for all.
#define BATCH_MMAX 530
static void check_batch(int tA, int tB, int accumulate, int N) {
    enum { P = 9 };
    const int Ms[P] = {0, 1, 37, 96, 97, 256, 259, BATCH_MMAX, 5}, K = 257;
    SgemmProblem probs[P];
    float *A[P], *B[P], *C[P], *R[P];
    for (int q = 0; q < P; q++) {
        int M = Ms[q], lda = tA ? M + 3 : K + 3, ldb = tB ? K + 1 : N + 1, ldc = N + 2;
        (void)lda; (void)ldb; (void)ldc;
        A[q] = rand_buf((size_t)(tA ? K : (M > 0 ? M : 1)) * (tA ? BATCH_MMAX + 3 : K + 3));
        B[q] = rand_buf((size_t)(tB ? N : K) * (tB ? K + 1 : N + 1));
        C[q] = rand_buf((size_t)(M > 0 ? M : 1) * (N + 2));
        R[q] = (float*)malloc(sizeof(float) * (size_t)(M > 0 ? M : 1) * (N + 2));
        memcpy(R[q], C[q], sizeof(float) * (size_t)(M > 0 ? M : 1) * (N + 2));
        probs[q] = (SgemmProblem){M, N, K, A[q], B[q], C[q], SGEMM_FULL, NULL, NULL};
    }
    // one lda for all problems: for transA the rows of op(A) are columns, so lda must fit the largest M
    int lda = tA ? BATCH_MMAX + 3 : K + 3, ldb = tB ? K + 1 : N + 1, ldc = N + 2;
    for (int q = 0; q < P; q++) sgemm_blocked(tA, tB, Ms[q], N, K, A[q], lda, B[q], ldb, R[q], ldc, accumulate);
    float* RE[P];   // R with the epilogue applied
    for (int q = 0; q < P; q++) {
        size_t n = (size_t)(Ms[q] > 0 ? Ms[q] : 1) * (N + 2);
        RE[q] = (float*)malloc(sizeof(float) * n);
        memcpy(RE[q], R[q], sizeof(float) * n);
        SgemmProblem whole = {Ms[q], N, K, NULL, NULL, RE[q], SGEMM_FULL, NULL, NULL};
        if (Ms[q] > 0) test_epilogue(&whole, ldc, 0, Ms[q], 0, N);
    }
    for (int via = 0; via < 4; via++)   // bit 0: sgemm_problem; bit 1: with the epilogue
    for (int threads = 1; threads <= 3; threads++) {
        set_threads(threads);
        for (int q = 0; q < P; q++) probs[q].epilogue = via & 2 ? test_epilogue : NULL;
        float* keep[P];
        for (int q = 0; q < P; q++) {
            size_t n = (size_t)(Ms[q] > 0 ? Ms[q] : 1) * (N + 2);
            keep[q] = (float*)malloc(sizeof(float) * n);
            memcpy(keep[q], C[q], sizeof(float) * n);
        }
        run_problems(via & 1, tA, tB, probs, P, lda, ldb, ldc, accumulate);
        int same = 1;
        for (int q = 0; q < P; q++) {
            size_t n = (size_t)(Ms[q] > 0 ? Ms[q] : 1) * (N + 2);
            same &= memcmp(C[q], via & 2 ? RE[q] : R[q], sizeof(float) * n) == 0;
            memcpy(C[q], keep[q], sizeof(float) * n);
            free(keep[q]);
        }
        if (same) n_passed++;
        else { n_failed++; printf("FAIL %s%s tA=%d tB=%d acc=%d N=%d threads=%d: differs from sgemm_blocked\n", via & 1 ? "sgemm_problem" : "sgemm_batch", via & 2 ? " with an epilogue" : "", tA, tB, accumulate, N, threads); }
    }
    set_threads(2);
    for (int q = 0; q < P; q++) { free(A[q]); free(B[q]); free(C[q]); free(R[q]); free(RE[q]); }
}

// SGEMM_STREAM (overwrite through non-temporal stores, for the experts' weight gradients): the same
// bits as overwriting, every element written whatever C held (NaN here), for 1-3 threads. Shapes of
// dW = doutᵀ·x with K = tokens: 32 and 64 (one K block: streamed), 0 (C must become zeros) and
// 257 (two K blocks: not streamed); ldc a multiple of 32 on 64-byte aligned C (the streaming path)
// and ldc = N + 2 (rows misaligned: ordinary stores). Also the micro-kernel alone on an aligned tile.
static void check_stream(int ldc_pad) {
    enum { P = 5 };
    const int Ks[P] = {32, 64, 0, 257, 5}, M = 100, N = 96;
    int lda = M + 4, ldb = N + 4, ldc = N + ldc_pad;
    SgemmProblem probs[P];
    float *A[P], *B[P], *C[P], *R[P];
    size_t cn = (size_t)M * ldc;
    for (int q = 0; q < P; q++) {
        int K = Ks[q] > 0 ? Ks[q] : 1;
        A[q] = rand_buf((size_t)K * lda);       // transA: stored K x M
        B[q] = rand_buf((size_t)K * ldb);
        C[q] = sgemm_alloc(cn);
        R[q] = (float*)malloc(sizeof(float) * cn);
        for (size_t i = 0; i < cn; i++) R[q][i] = 1.0f;
        sgemm_blocked(1, 0, M, N, Ks[q], A[q], lda, B[q], ldb, R[q], ldc, SGEMM_OVERWRITE);
        probs[q] = (SgemmProblem){M, N, Ks[q], A[q], B[q], C[q], SGEMM_FULL, NULL, NULL};
    }
    for (int threads = 1; threads <= 3; threads++) {
        set_threads(threads);
        int same = 1;
        for (int q = 0; q < P; q++)
            for (size_t i = 0; i < cn; i++) C[q][i] = (i % ldc) < (size_t)N ? NAN : R[q][i];   // padding as R's
        sgemm_batch(1, 0, probs, P, lda, ldb, ldc, SGEMM_STREAM);
        for (int q = 0; q < P; q++) same &= memcmp(C[q], R[q], sizeof(float) * cn) == 0;
        if (same) n_passed++;
        else { n_failed++; printf("FAIL sgemm_batch SGEMM_STREAM ldc=N+%d threads=%d: differs from overwriting\n", ldc_pad, threads); }
    }
    set_threads(2);
    for (int q = 0; q < P; q++) { free(A[q]); free(B[q]); free(C[q]); free(R[q]); }
    // the micro-kernel alone, aligned rows (ldc = NR): streaming against the scalar overwrite
    int kc = 40;
    float* a = sgemm_alloc((size_t)kc * SGEMM_MR);
    float* b = sgemm_alloc((size_t)kc * SGEMM_NR);
    float* c1 = sgemm_alloc((size_t)SGEMM_MR * SGEMM_NR);
    float c2[SGEMM_MR * SGEMM_NR];
    for (int x = 0; x < kc * SGEMM_MR; x++) a[x] = rand_pm1();
    for (int x = 0; x < kc * SGEMM_NR; x++) b[x] = rand_pm1();
    for (int x = 0; x < SGEMM_MR * SGEMM_NR; x++) c1[x] = c2[x] = NAN;
    sgemm_kernel(kc, a, b, c1, SGEMM_NR, SGEMM_STREAM);
    sgemm_store_fence();
    sgemm_kernel_scalar(kc, a, b, c2, SGEMM_NR, SGEMM_OVERWRITE);
    double max_diff = 0.0;
    for (int x = 0; x < SGEMM_MR * SGEMM_NR; x++) {
        double d = fabs((double)c1[x] - c2[x]);
        if (!(d <= max_diff)) max_diff = d;   // (a NaN left behind makes it NaN)
    }
    if (max_diff < 1e-4) n_passed++;
    else { n_failed++; printf("FAIL kernel SGEMM_STREAM: max diff %.3g against the scalar kernel\n", max_diff); }
    free(a); free(b); free(c1);
}

// sgemm_batch's causal skips (attention): with op(A) zero where the mode says (SGEMM_A_LOWER /
// _A_UPPER), C must be the same bits as the full product everywhere; with SGEMM_C_LOWER, on and
// below the diagonal. Square-ish problems (as attention's T x T), sizes that straddle the micro-tile,
// MC and KC, for 1, 2 and 3 threads; the problems of one call mix the modes' shapes. Both through
// sgemm_batch and through sgemm_problem in the caller's parallel loop.
static void check_causal(int mode, int tA, int tB, int accumulate) {
    enum { P = 4 };
    const int Ts[P] = {1, 97, 256, 300}, hs = 40;
    int ld = 300 + 3;   // one leading dimension fits every problem's operands
    SgemmProblem probs[P];
    float *A[P], *B[P], *C[P], *R[P];
    for (int q = 0; q < P; q++) {
        int T = Ts[q];
        int M = T, K = mode == SGEMM_C_LOWER ? hs : T, N = mode == SGEMM_C_LOWER ? T : hs;
        A[q] = rand_buf((size_t)300 * ld);
        B[q] = rand_buf((size_t)300 * ld);
        C[q] = rand_buf((size_t)T * ld);
        R[q] = (float*)malloc(sizeof(float) * (size_t)T * ld);
        memcpy(R[q], C[q], sizeof(float) * (size_t)T * ld);
        if (mode != SGEMM_C_LOWER)   // op(A)[i][k] is A[i*ld + k], or A[k*ld + i] when transposed
            for (int i = 0; i < M; i++)
                for (int k = 0; k < K; k++)
                    if ((mode == SGEMM_A_LOWER && k > i) || (mode == SGEMM_A_UPPER && k < i))
                        A[q][tA ? (size_t)k * ld + i : (size_t)i * ld + k] = 0.0f;
        probs[q] = (SgemmProblem){M, N, K, A[q], B[q], C[q], mode, NULL, NULL};
        sgemm_blocked(tA, tB, M, N, K, A[q], ld, B[q], ld, R[q], ld, accumulate);
    }
    for (int via = 0; via < 2; via++)
    for (int threads = 1; threads <= 3; threads++) {
        set_threads(threads);
        float* keep[P];
        for (int q = 0; q < P; q++) {
            keep[q] = (float*)malloc(sizeof(float) * (size_t)Ts[q] * ld);
            memcpy(keep[q], C[q], sizeof(float) * (size_t)Ts[q] * ld);
        }
        run_problems(via, tA, tB, probs, P, ld, ld, ld, accumulate);
        int same = 1;
        for (int q = 0; q < P; q++) {
            for (int i = 0; i < probs[q].M; i++)
                for (int j = 0; j < probs[q].N; j++)
                    if (mode != SGEMM_C_LOWER || j <= i)
                        same &= memcmp(&C[q][(size_t)i * ld + j], &R[q][(size_t)i * ld + j], sizeof(float)) == 0;
            memcpy(C[q], keep[q], sizeof(float) * (size_t)Ts[q] * ld);
            free(keep[q]);
        }
        if (same) n_passed++;
        else { n_failed++; printf("FAIL %s causal mode %d tA=%d tB=%d acc=%d threads=%d: differs from the full product\n", via ? "sgemm_problem" : "sgemm_batch", mode, tA, tB, accumulate, threads); }
    }
    set_threads(2);
    for (int q = 0; q < P; q++) { free(A[q]); free(B[q]); free(C[q]); free(R[q]); }
}

int main(void) {
    set_threads(2);
    printf("micro-kernel: %s, %dx%d\n", SGEMM_ISA, SGEMM_MR, SGEMM_NR);
    const int edge[] = {0, 1, 2, 5, 6, 7, 15, 16, 17, 63, 64, 65};
    const int n_edge = (int)(sizeof(edge) / sizeof(edge[0]));
    const int ks[] = {0, 1, 7, 16, 65, 255, 256, 257};   // 255..257 straddle the K block
    const int n_ks = (int)(sizeof(ks) / sizeof(ks[0]));

    for (int kc = 1; kc <= 300; kc += 37) { check_kernel(kc, 0); check_kernel(kc, 1); }

    // edge sizes: every M, N in edge[] × K in ks[] × 4 transposes × accumulate; the packed path
    // directly (every size would go through the plain loops in sgemm otherwise)
    for (int t = 0; t < 4; t++)
        for (int a = 0; a < n_edge; a++)
            for (int b = 0; b < n_edge; b++)
                for (int k = 0; k < n_ks; k++) {
                    int acc = (a + b + k) % 2, pad = (a + k) % 3 == 0 ? 0 : 3;
                    check_case("blocked", sgemm_blocked, t >> 1, t & 1, edge[a], edge[b], ks[k], acc, pad);
                }

    // shapes that cross the tile (MC=96), B panel (NC=1024) and K block boundaries, and
    // model-like shapes (expert blocks of uneven size), through the public entry point
    const int shapes[][3] = {
        {97, 257, 33}, {200, 300, 513}, {6, 16, 256}, {1, 2050, 40}, {97, 2049, 300}, {193, 1040, 20},
        {37, 1024, 256}, {600, 768, 64}, {130, 64, 600}, {513, 17, 129}, {3, 5, 7},
        {64, 64, 64}, {1, 768, 256}, {768, 256, 1}, {300, 1, 300},
    };
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
        for (int t = 0; t < 4; t++)
            for (int acc = 0; acc < 2; acc++)
                check_case("sgemm", sgemm, t >> 1, t & 1, shapes[s][0], shapes[s][1], shapes[s][2],
                           acc, (int)(s % 2) * 5);

    // thread-count bit-identity, on shapes where the tiling differs between 1, 2 and 3 threads
    const int tshapes[][3] = {
        {512, 512, 256}, {512, 256, 512}, {97, 2049, 300}, {7, 1000, 600}, {600, 64, 1000},
        {33, 33, 33},
    };
    for (size_t s = 0; s < sizeof(tshapes) / sizeof(tshapes[0]); s++)
        for (int t = 0; t < 4; t++)
            check_threads(t >> 1, t & 1, tshapes[s][0], tshapes[s][1], tshapes[s][2], (int)(s % 2));

    for (int t = 0; t < 4; t++) { check_batch(t >> 1, t & 1, 0, 130); check_batch(t >> 1, t & 1, 1, 130); }
    check_batch(0, 1, 0, 1100);
    check_batch(0, 1, 1, 1100);
    check_batch(0, 0, 0, 1100);
    check_batch(0, 0, 1, 160);
    check_stream(0);
    check_stream(2);
    for (int mode = SGEMM_C_LOWER; mode <= SGEMM_A_UPPER; mode++)
        for (int t = 0; t < 4; t++) { check_causal(mode, t >> 1, t & 1, 0); check_causal(mode, t >> 1, t & 1, 1); }

    printf("%d passed, %d failed\n", n_passed, n_failed);
    return n_failed == 0 ? 0 : 1;
}
