// Benchmark for matmul.h: the machine's fp32 FMA peak (AVX2, 1 and 2 threads), then sgemm's
// GFLOP/s on the model's matmul shapes as a fraction of that peak. sgemm numbers are medians of
// several repetitions (and the best repetition beside them); operands are reused between
// repetitions (warm caches, as in training where the same weights are hit again and again).
//
// build: gcc -O3 -march=native -fopenmp -Wall -Wextra dev/bench_sgemm.c -o dev/bench_sgemm -lm
// run:   OMP_PROC_BIND=true ./dev/bench_sgemm   (measures 1 and 2 threads; OMP_NUM_THREADS is
//        ignored. Binding keeps the OS from stacking both threads on one core, which on the 2-vCPU
//        VM sometimes made a 2-thread median 10× slower. Results are only meaningful on an
//        otherwise idle machine: check `top` first.)
//        OMP_PROC_BIND=true ./dev/bench_sgemm M N K      (one shape, its three uses)
//        ./dev/bench_sgemm --peak T | --shape T M N K    (machine-readable, for dev/bench)
//        OMP_PROC_BIND=true ./dev/bench_sgemm --kernel  (the micro-kernel alone against the peak)
#include <stdint.h>
#include <time.h>
#include "../matmul.h"

static double now_sec(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}
static int cmp_double(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}
static double median(double* v, int n) {
    qsort(v, n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
static void set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

// ----------------------------------------------------------------------------
// FMA peak: each thread runs 12 independent chains acc = acc*x + y (12 > latency 4 × 2 ports),
// FMA_WIDTH floats per FMA (8 with AVX2, 16 with AVX-512), 2 flops per lane. Returns the best of 31 runs' GFLOP/s, summed over threads.

#if defined(__AVX512F__) && !defined(SGEMM_NO_AVX512)
// where the CPU has AVX-512 (and matmul.h uses it), the peak is that of 16-float FMAs
#define FMA_WIDTH 16
#define FMA_ISA "AVX-512"
static float fma_chains(long iters) {
    __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
    __m512 acc[12];
    for (int c = 0; c < 12; c++) acc[c] = _mm512_set1_ps((float)c);
    for (long it = 0; it < iters; it++) {
        #pragma GCC unroll 12
        for (int c = 0; c < 12; c++) acc[c] = _mm512_fmadd_ps(acc[c], x, y);
    }
    __m512 s = acc[0];
    for (int c = 1; c < 12; c++) s = _mm512_add_ps(s, acc[c]);
    float out[16];
    _mm512_storeu_ps(out, s);
    return out[0];
}
#elif defined(__AVX2__) && defined(__FMA__)
#define FMA_WIDTH 8
#define FMA_ISA "AVX2"
static float fma_chains(long iters) {
    __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
    __m256 acc[12];
    for (int c = 0; c < 12; c++) acc[c] = _mm256_set1_ps((float)c);
    for (long it = 0; it < iters; it++) {
        #pragma GCC unroll 12
        for (int c = 0; c < 12; c++) acc[c] = _mm256_fmadd_ps(acc[c], x, y);
    }
    __m256 s = acc[0];
    for (int c = 1; c < 12; c++) s = _mm256_add_ps(s, acc[c]);
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0];
}
#else
#define FMA_ISA "scalar: no FMA peak measured"
#endif

static double fma_peak_gflops(int nthreads) {
#if defined(__AVX2__) && defined(__FMA__)
    // many short runs (12 × 2M FMAs per thread, ~10 ms): on a shared machine some run is quiet
    const long iters = 2000000;
    double t[31];
    volatile float sink = 0.0f;
    for (int rep = 0; rep < 31; rep++) {
        double t0 = now_sec();
#ifdef _OPENMP
        #pragma omp parallel num_threads(nthreads)
#endif
        {
            float r = fma_chains(iters);
#ifdef _OPENMP
            #pragma omp critical
#endif
            sink += r;
        }
        t[rep] = now_sec() - t0;
    }
    (void)sink;
    qsort(t, 31, sizeof(double), cmp_double);   // peak = the fastest run: an upper bound, not noise
    return nthreads * (double)iters * 12 * FMA_WIDTH * 2 / t[0] / 1e9;
#else
    (void)nthreads;
    return 0.0;
#endif
}

// ----------------------------------------------------------------------------
// one shape: median GFLOP/s of sgemm over enough repetitions to last ~0.3 s (at least 5);
// *best gets the fastest repetition's GFLOP/s (what the code does when the machine is quiet)

static double bench_shape(int tA, int tB, int M, int N, int K, int nthreads, double* best) {
    int a_cols = tA ? M : K, b_cols = tB ? K : N;
    size_t na = (size_t)M * K, nb = (size_t)K * N, nc = (size_t)M * N;
    float* A = (float*)malloc(na * sizeof(float));
    float* B = (float*)malloc(nb * sizeof(float));
    float* C = (float*)malloc(nc * sizeof(float));
    for (size_t i = 0; i < na; i++) A[i] = (float)((i * 7919) % 1000) * 1e-3f - 0.5f;
    for (size_t i = 0; i < nb; i++) B[i] = (float)((i * 104729) % 1000) * 1e-3f - 0.5f;
    memset(C, 0, nc * sizeof(float));
    set_threads(nthreads);
    int accumulate = !(tA == 0 && tB == 1);   // as in the model: only the forward overwrites
    // warm up (allocates the packing buffers), and size the repetition count
    double t0 = now_sec();
    sgemm(tA, tB, M, N, K, A, a_cols, B, b_cols, C, N, accumulate);
    double once = now_sec() - t0;
    int reps = (int)(0.3 / (once + 1e-9));
    if (reps < 5) reps = 5;
    if (reps > 2001) reps = 2001;
    double* t = (double*)malloc(reps * sizeof(double));
    for (int r = 0; r < reps; r++) {
        if (accumulate && r % 64 == 0) memset(C, 0, nc * sizeof(float));  // keep values tame
        double s = now_sec();
        sgemm(tA, tB, M, N, K, A, a_cols, B, b_cols, C, N, accumulate);
        t[r] = now_sec() - s;
    }
    double gflops = 2.0 * M * N * K / median(t, reps) / 1e9;   // (median sorts t)
    if (best) *best = 2.0 * M * N * K / t[0] / 1e9;
    free(t); free(A); free(B); free(C);
    return gflops;
}

// ----------------------------------------------------------------------------
// The expert FFN as the model runs it: E experts of M tokens each, C channels, hidden H, every
// matmul one sgemm_batch over the E experts (experts_ffn_forward / _backward in moe.h):
//   fc fwd     h(M,H)   = x(M,C) W1(H,C)^T       fcproj fwd  o(M,C)   = g(M,H) W2(C,H)^T
//   fcproj dinp dg(M,H) = do(M,C) W2(C,H)        fc dinp     dx(M,C)  = dh(M,H) W1(H,C)
//   fcproj dW  dW2(C,H) = do^T g  (K = M)        fc dW       dW1(H,C) = dh^T x (K = M)
// The weight gradients are written with SGEMM_STREAM into 64-byte aligned memory, as the model
// writes them on a step's first micro-batch (dev/bench's runs have one micro-batch per step). The
// hidden-layer matrices h, g, dg, dh have rows Hs floats apart: the model's sgemm_row_stride(H).
// Each of the six has 2*E*M*C*H FLOPs. Median over repetitions lasting ~0.3 s (at least 5).
static void bench_experts(int nthreads, int E, int M, int C, int H, int Hs) {
    struct { const char* name; int tA, tB, m, n, k, lda, ldb, ldc; } use[6] = {   // (ld 0: unpadded)
        {"fc_fwd", 0, 1, M, H, C, 0, 0, Hs}, {"fcproj_fwd", 0, 1, M, C, H, Hs, 0, 0},
        {"fcproj_dinp", 0, 0, M, H, C, 0, 0, Hs}, {"fc_dinp", 0, 0, M, C, H, Hs, 0, 0},
        {"fcproj_dW", 1, 0, C, H, M, 0, Hs, 0}, {"fc_dW", 1, 0, H, C, M, Hs, 0, 0}};
    set_threads(nthreads);
    for (int u = 0; u < 6; u++) {
        int m = use[u].m, n = use[u].n, k = use[u].k, tA = use[u].tA, tB = use[u].tB;
        int lda = use[u].lda ? use[u].lda : tA ? m : k, ldb = use[u].ldb ? use[u].ldb : tB ? k : n;
        int ldc = use[u].ldc ? use[u].ldc : n, acc = tA ? SGEMM_STREAM : SGEMM_OVERWRITE;
        size_t na = (size_t)(tA ? k : m) * lda, nb = (size_t)(tB ? n : k) * ldb, nc = (size_t)m * ldc;
        float* A = (float*)malloc(na * E * sizeof(float));
        float* B = (float*)malloc(nb * E * sizeof(float));
        float* Cm = sgemm_alloc(nc * E);   // 64-byte aligned, as the model's gradients (2 MiB)
        for (size_t i = 0; i < na * E; i++) A[i] = (float)((i * 7919) % 1000) * 1e-3f - 0.5f;
        for (size_t i = 0; i < nb * E; i++) B[i] = (float)((i * 104729) % 1000) * 1e-3f - 0.5f;
        SgemmProblem* p = (SgemmProblem*)malloc(sizeof(SgemmProblem) * E);
        for (int e = 0; e < E; e++) p[e] = (SgemmProblem){m, n, k, A + na * e, B + nb * e, Cm + nc * e, SGEMM_FULL, NULL, NULL};
        double t0 = now_sec();
        sgemm_batch(tA, tB, p, E, lda, ldb, ldc, acc);
        double once = now_sec() - t0;
        int reps = (int)(0.3 / (once + 1e-9));
        if (reps < 5) reps = 5;
        if (reps > 2001) reps = 2001;
        double* t = (double*)malloc(reps * sizeof(double));
        for (int r = 0; r < reps; r++) {
            double s0 = now_sec();
            sgemm_batch(tA, tB, p, E, lda, ldb, ldc, acc);
            t[r] = now_sec() - s0;
        }
        double flops = 2.0 * E * m * n * k, med = median(t, reps);
        printf("experts %s %d %d %d %d %d %d %.2f %.2f\n", use[u].name, tA, tB, E, m, n, k, flops / med / 1e9, flops / t[0] / 1e9);
        free(t); free(p); free(A); free(B); free(Cm);
    }
}

// ----------------------------------------------------------------------------
// Streaming bandwidth: the STREAM triad a[i] = b[i] + s*c[i] over three arrays of n floats (far
// larger than the caches), best of 9 passes, at nthreads threads (static split: each thread
// touches its own part first, so its pages are where it runs). Bytes counted per element: 16 =
// read b, read c, write a, and the read of a's line that a plain store causes (write-allocate);
// STREAM's own convention counts 12, so its figure would be 3/4 of this one.
static double triad_gbs(int nthreads, size_t n) {
    float* a = (float*)malloc(n * sizeof(float));
    float* b = (float*)malloc(n * sizeof(float));
    float* c = (float*)malloc(n * sizeof(float));
    if (!a || !b || !c) { fprintf(stderr, "bench_sgemm: cannot allocate the triad arrays\n"); exit(1); }
    set_threads(nthreads);
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) { a[i] = 0.0f; b[i] = 1.0f; c[i] = 2.0f; }
    double best = 1e30;
    for (int rep = 0; rep < 9; rep++) {
        double t0 = now_sec();
        #pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) a[i] = b[i] + 0.5f * c[i];
        double dt = now_sec() - t0;
        if (dt < best) best = dt;
    }
    volatile float sink = a[n / 2];
    (void)sink;
    free(a); free(b); free(c);
    return 16.0 * n / best / 1e9;
}

// ----------------------------------------------------------------------------
// The micro-kernel against the peak, on one thread, in three settings (GFLOP/s, best of 9 passes):
//   cached     sgemm_kernel on one packed A panel (MR×KC) and 4 packed B slivers (KC×NR): L1/L2
//   block      sgemm_block (as sgemm runs it) over an A block of 256 rows (whole MR-row panels)
//              read in place (lda 256) and a packed B panel of 16 slivers, into the block's
//              rows × 16·NR of C (accumulating): warm caches
//   streaming  the same over 64 different A and C blocks (16 MB of A, 32 MB of C at AVX-512), so
//              A and C come from memory while B stays in cache
// Between "cached" and the peak is the kernel's own cost; between "streaming" and a whole sgemm's
// figure, packing, edge tiles and the threads.
static volatile int kernel_mode = SGEMM_ACCUMULATE;   // (read at run time, as in sgemm: no specialised copy)
static double kernel_pass_gflops(int setting) {
    const int kc = SGEMM_KC, rows = 256 / SGEMM_MR * SGEMM_MR, nsl = 16, lda = SGEMM_KC, nblk = setting == 2 ? 64 : 1;
    const int ncol = nsl * SGEMM_NR;
    float* a = (float*)aligned_alloc(64, (size_t)rows * lda * nblk * sizeof(float));
    float* b = (float*)aligned_alloc(64, (size_t)kc * ncol * sizeof(float));
    float* c = (float*)aligned_alloc(64, (size_t)rows * ncol * nblk * sizeof(float));
    if (!a || !b || !c) { fprintf(stderr, "bench_sgemm: cannot allocate the kernel's operands\n"); exit(1); }
    for (size_t i = 0; i < (size_t)rows * lda * nblk; i++) a[i] = 1e-3f * (float)(i % 7);
    for (size_t i = 0; i < (size_t)kc * ncol; i++) b[i] = 1e-3f * (float)(i % 5);
    memset(c, 0, (size_t)rows * ncol * nblk * sizeof(float));
    double flops = 0.0, best = 1e30;
    for (int rep = 0; rep < 9; rep++) {
        double t0 = now_sec();
        flops = 0.0;
        if (setting == 0) {   // 4 slivers, 2000 times over
            for (int r = 0; r < 2000; r++)
                for (int j = 0; j < 4; j++)
                    sgemm_kernel(kc, a, b + (size_t)j * kc * SGEMM_NR, c + j * SGEMM_MR * SGEMM_NR, SGEMM_NR, SGEMM_ACCUMULATE);
            flops = 2.0 * SGEMM_MR * SGEMM_NR * kc * 4 * 2000;
        } else {
            int passes = setting == 1 ? 32 : 1;
            for (int r = 0; r < passes; r++)   // (sgemm_block, as sgemm calls it: A's rows in place)
                for (int k = 0; k < nblk; k++)
                    sgemm_block(0, a + (size_t)k * rows * lda, lda, 0, rows, 0, ncol, 0, kc, NULL, b,
                                c + (size_t)k * rows * ncol, ncol, kernel_mode, SGEMM_FULL, NULL);
            flops = 2.0 * rows * ncol * kc * nblk * passes;
        }
        double dt = now_sec() - t0;
        if (dt < best) best = dt;
    }
    volatile float sink = c[0];
    (void)sink;
    free(a); free(b); free(c);
    return flops / best / 1e9;
}

int main(int argc, char** argv) {
    //   ./bench_sgemm --experts T E M C H [HS]  the expert FFN's six batched matmuls ("experts name
    //                                       tA tB E M N K median best", GFLOP/s); the hidden layer's
    //                                       rows HS floats apart (default: the model's stride)
    //   ./bench_sgemm --triad T [MFLOATS]   streaming bandwidth ("triad_gbs X"), arrays of MFLOATS
    //                                       million floats each (default 32: 128 MB per array)
    if ((argc == 7 || argc == 8) && strcmp(argv[1], "--experts") == 0) {
        int nt = atoi(argv[2]), E = atoi(argv[3]), M = atoi(argv[4]), C = atoi(argv[5]), H = atoi(argv[6]);
        int Hs = argc == 8 ? atoi(argv[7]) : sgemm_row_stride(H);
        if (nt < 1 || E < 1 || E > 4096 || M < 1 || C < 1 || H < 1 || Hs < H) {
            fprintf(stderr, "bench_sgemm: --experts T E M C H [HS] needs positive integers (E <= 4096, HS >= H)\n");
            return 1;
        }
        bench_experts(nt, E, M, C, H, Hs);
        return 0;
    }
    //   ./bench_sgemm --kernel              the micro-kernel on one thread against the 1-thread peak
    if (argc == 2 && strcmp(argv[1], "--kernel") == 0) {
        set_threads(1);
        double peak1 = fma_peak_gflops(1);
        const char* what[3] = {"cached", "block", "streaming"};
        printf("micro-kernel %dx%d (" SGEMM_ISA "), one thread; FMA peak %.2f GFLOP/s\n", SGEMM_MR, SGEMM_NR, peak1);
        for (int setting = 0; setting < 3; setting++) {
            double g = kernel_pass_gflops(setting);
            if (peak1 > 0) printf("kernel %-9s %7.2f GFLOP/s  %5.1f%% of peak\n", what[setting], g, 100 * g / peak1);
            else printf("kernel %-9s %7.2f GFLOP/s  (no peak measured without AVX2)\n", what[setting], g);
        }
        return 0;
    }
    if ((argc == 3 || argc == 4) && strcmp(argv[1], "--triad") == 0) {
        int nt = atoi(argv[2]);
        long mf = argc == 4 ? atol(argv[3]) : 32;
        if (nt < 1 || mf < 1 || mf > 4096) { fprintf(stderr, "bench_sgemm: --triad T [MFLOATS 1..4096]\n"); return 1; }
        printf("triad_gbs %.2f\n", triad_gbs(nt, (size_t)mf * 1000000));
        return 0;
    }
    // machine-readable modes for dev/bench (one "key value" per line):
    //   ./bench_sgemm --peak T            fp32 FMA peak at T threads ("peak_gflops X")
    //   ./bench_sgemm --shape T M N K     sgemm median/best GFLOP/s of the shape's three uses at T
    //                                     threads ("sgemm tA tB M N K median best")
    if (argc == 3 && strcmp(argv[1], "--peak") == 0) {
        int nt = atoi(argv[2]);
        if (nt < 1) { fprintf(stderr, "bench_sgemm: --peak needs a thread count >= 1\n"); return 1; }
        printf("peak_gflops %.2f\n", fma_peak_gflops(nt));
        return 0;
    }
    if (argc == 6 && strcmp(argv[1], "--shape") == 0) {
        int nt = atoi(argv[2]), M = atoi(argv[3]), N = atoi(argv[4]), K = atoi(argv[5]);
        if (nt < 1 || M < 1 || N < 1 || K < 1) {
            fprintf(stderr, "bench_sgemm: --shape T M N K needs positive integers\n");
            return 1;
        }
        const int u[3][2] = {{0, 1}, {0, 0}, {1, 0}};
        for (int i = 0; i < 3; i++) {
            double best;
            double g = bench_shape(u[i][0], u[i][1], M, N, K, nt, &best);
            printf("sgemm %d %d %d %d %d %.2f %.2f\n", u[i][0], u[i][1], M, N, K, g, best);
        }
        return 0;
    }
    if (argc == 4) {   // one shape only: ./bench_sgemm M N K (all three uses, 1 and 2 threads)
        int M = atoi(argv[1]), N = atoi(argv[2]), K = atoi(argv[3]);
        const int u[3][2] = {{0, 1}, {0, 0}, {1, 0}};
        for (int i = 0; i < 3; i++) {
            double b1, b2;
            double g1 = bench_shape(u[i][0], u[i][1], M, N, K, 1, &b1);
            double g2 = bench_shape(u[i][0], u[i][1], M, N, K, 2, &b2);
            printf("tA=%d tB=%d M=%d N=%d K=%d: GFLOP/s median (best) %.1f (%.1f) on 1 thread, "
                   "%.1f (%.1f) on 2\n", u[i][0], u[i][1], M, N, K, g1, b1, g2, b2);
        }
        return 0;
    }
    double peak1 = fma_peak_gflops(1), peak2 = fma_peak_gflops(2);
    printf("fp32 " FMA_ISA " FMA peak (best of 31): %.1f GFLOP/s on 1 thread, %.1f GFLOP/s on 2 threads\n",
           peak1, peak2);
    printf("blocking: MR=%d NR=%d KC=%d MC=%d NC=%d\n\n",
           SGEMM_MR, SGEMM_NR, SGEMM_KC, SGEMM_MC, SGEMM_NC);

    struct { const char* what; int M, N, K; } shapes[] = {
        // the goal: expert FFN blocks (each also run as all three transpose uses below)
        {"expert FFN",          512,  512,  256},
        {"expert FFN",          512,  256,  512},
        // C=256 model, BT=1024: qkv, attproj, dense fc / fcproj, lm head (V padded to 4096)
        {"qkv C=256",          1024,  768,  256},
        {"attproj C=256",      1024,  256,  256},
        {"fc C=256",           1024, 1024,  256},
        {"fcproj C=256",       1024,  256, 1024},
        {"lm head C=256",      1024, 4096,  256},
        // C=768 (GPT-2 small) layers at BT=1024
        {"qkv C=768",          1024, 2304,  768},
        {"fc C=768",           1024, 3072,  768},
        // small and uneven expert blocks, C=128/H=512
        {"expert 37 rows",       37,  512,  128},
        {"expert 150 rows",     150,  512,  128},
        {"expert 600 rows",     600,  512,  128},
        {"tiny C=64",            64,  256,   64},
    };
    const int uses[3][2] = {{0, 1}, {0, 0}, {1, 0}};
    const char* use_name[3] = {"fwd  (0,1)", "dinp (0,0)", "dW   (1,0)"};

    printf("GF/s and %%peak are medians; 'best' is the fastest repetition's %% of peak\n");
    printf("%-17s %-10s %5s %5s %5s | %7s %6s %6s | %7s %6s %6s\n", "shape", "use", "M", "N", "K",
           "1t GF/s", "%peak", "best", "2t GF/s", "%peak", "best");
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        for (int u = 0; u < 3; u++) {
            int tA = uses[u][0], tB = uses[u][1];
            int M = shapes[s].M, N = shapes[s].N, K = shapes[s].K;
            double b1, b2;
            double g1 = bench_shape(tA, tB, M, N, K, 1, &b1);
            double g2 = bench_shape(tA, tB, M, N, K, 2, &b2);
            printf("%-17s %-10s %5d %5d %5d | %7.1f %5.0f%% %5.0f%% | %7.1f %5.0f%% %5.0f%%\n",
                   shapes[s].what, use_name[u], M, N, K, g1, 100 * g1 / peak1, 100 * b1 / peak1,
                   g2, 100 * g2 / peak2, 100 * b2 / peak2);
            fflush(stdout);
        }
    }
    // measured again at the end: if the two disagree, something else was using the CPU
    printf("\nFMA peak again at the end: %.1f GFLOP/s on 1 thread, %.1f on 2 (check the machine was "
           "idle if these differ from the top)\n", fma_peak_gflops(1), fma_peak_gflops(2));
    return 0;
}
