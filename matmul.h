// matmul.h: a small, deterministic fp32 SGEMM for the CPU, structured like BLIS.
//
//   C[M,N] = (accumulate ? C : 0) + op(A)[M,K] · op(B)[K,N]      (row-major float32)
//
// accumulate is SGEMM_OVERWRITE (0), SGEMM_ACCUMULATE (1), or, for sgemm_batch only,
// SGEMM_STREAM: overwrite, with the output written around the caches (below).
//
// The model uses it for all three matmul shapes (weights stored out×in, as in llm.c):
//   forward      out(BT,OC)  = inp(BT,C) · Wᵀ        sgemm(0,1, BT,OC,C,  inp,C,  W,C,    out,OC, 0)
//   backward     dinp(BT,C) += dout(BT,OC) · W      sgemm(0,0, BT,C,OC,  dout,OC, W,C,   dinp,C, 1)
//   weight grad  dW(OC,C)   += doutᵀ · inp          sgemm(1,0, OC,C,BT,  dout,OC, inp,C, dW,C,   1)
//
// How it works. C is cut into one rectangle per thread (whole MR×NR micro-tiles, split by columns
// when that balances as well as splitting by rows, since then each thread reads only its own part
// of B). Each thread then runs the classic BLIS loops on its rectangle, with private buffers:
//   for jc over its columns in steps of SGEMM_NC
//     for pc over K in steps of SGEMM_KC          pack B[pc:pc+kc, jc:jc+nc]  -> B panel  (L2)
//       for ic over its rows in steps of SGEMM_MC pack A[ic:ic+mc, pc:pc+kc]  -> A block  (L2)
//                                                  (unless op(A) is row-major: read in place)
//         for ir over the MR-tall A panels         (one panel stays in L1 ...)
//           for jr over the NR-wide B slivers      (... while the slivers stream past it from L2)
//             micro-kernel: MR×NR block of C (+)= A panel · B sliver, kc rank-1 updates
// (MR×NR = 6×16 with AVX2, 8×32 with AVX-512.)
// Threads never share an output cache line (column cuts fall on 16-float boundaries) and never
// wait for each other.
//
// Determinism: every C element is computed the same way whatever the thread count. K is cut at
// fixed multiples of SGEMM_KC; inside a block the micro-kernel sums p = 0..kc-1 in order into a
// register, then adds that register to C once; blocks are added in increasing pc. Threads only
// decide *which* elements they compute, never how, and never split K. (MC, NC and the thread
// rectangles change only speed; KC is part of the numerical result.)
//
// Not thread safe: the packing buffers are static, so call sgemm and sgemm_batch from serial code
// (they run their own OpenMP team); sgemm_problem is the exception, made to be called inside the
// caller's parallel loop (each thread uses its own buffers). Each program that includes this header
// gets its own buffers.
#pragma once

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

// ----------------------------------------------------------------------------
// Blocking sizes, per thread (AVX2 figures; AVX-512 doubles the sliver and the panel), measured on the
// 2-core targets (the AVX-512 one is a Zen 4: 32 KiB L1d and 1 MiB L2 per core, 32 MiB L3 shared):
//   A panel   MR×KC = 6×256 floats    =   6 KiB  -> L1, reused by every sliver of the B panel
//   B sliver  KC×NR = 256×16 floats   =  16 KiB  -> streamed from L2
//   A block   MC×KC = 96×256 floats   =  96 KiB  -> L2, reused by every sliver of the B panel
//   B panel   KC×NC = 256×1024 floats =   1 MiB  -> L2 and L3, reused by every A block
// A B panel as large as the L2 costs nothing measurable: NC = 512 ran `small`'s dense products in
// 1.007 of the time (alternated in one process).
// The micro-kernel itself runs at the FMA peak: one core, 8×32, dev/bench_sgemm --kernel: 99% of
// it on operands in L1/L2, 97% over a block as sgemm runs it, 93-96% with A and C coming from
// memory (AVX2's 6×16 on the same core: 99%, 97%, 90%); on a Zen 5, whose AVX-512 is full width
// (twice the FMAs per cycle of a Zen 4 for the same memory), 98-99%, 94-95%, 91-95%. What a whole
// matmul loses beyond that is packing, edge tiles and the threads. (On a shared host, also the
// neighbours' use of the L3: E = 8's expert matmuls ran at 360 or at 300-310 GFLOP/s on the same
// Zen 5 minutes apart; writing sgemm_batch's shared B panels with non-temporal stores was 4-6%
// faster in the slow state and 1-2% slower in the fast one, so it was left out.)

#if defined(__AVX512F__) && !defined(SGEMM_NO_AVX512)
#ifndef SGEMM_MR
#define SGEMM_MR 8      // micro-tile rows (8×32: 16 of the 32 zmm registers as accumulators; on the
#endif                  // expert shapes 6 measured ~2% and 12 3-8% slower, dev/bench_sgemm --experts)
#define SGEMM_NR 32     // micro-tile columns (two 16-float zmm vectors; AVX-512 doubles the FMA width)
#else
#define SGEMM_MR 6      // micro-tile rows    (6×16 uses 12 of the 16 ymm registers as accumulators)
#define SGEMM_NR 16     // micro-tile columns (two 8-float ymm vectors)
#endif
#ifndef SGEMM_KC
#define SGEMM_KC 256
#endif
#ifndef SGEMM_MC
#define SGEMM_MC 96     // a multiple of MR (6 and 8)
#endif
// sgemm_batch's row blocks are taller: an expert's weight gradient dW2 (C × H = 256 × 512 rows
// here) in one row block packs its B once instead of three times, and experts of up to 256 tokens
// read their weights in place (forward) or pack them once per item (backward), not in a shared
// first phase. The six expert matmuls, alternated in one process over the routing of a real run:
// 0.945-0.971 of the time at E = 8, 64 and 128 (dW2 0.75-0.92); dense products (sgemm_blocked)
// gained nothing from it, so they keep 96.
#ifndef SGEMM_MC_BATCH
#define SGEMM_MC_BATCH ((256 + SGEMM_MR - 1) / SGEMM_MR * SGEMM_MR)   // 256 rows rounded up to whole panels
#endif
#ifndef SGEMM_NC
#define SGEMM_NC 1024   // a multiple of NR
#endif
// Below this many multiply-adds (M·N·K) packing costs more than it saves: use the plain loops.
// Below SGEMM_PARALLEL waking a second thread costs more than it saves: use one thread.
// (Measured on the 2-core target; neither choice changes any result, only the speed.)
#ifndef SGEMM_SMALL
#define SGEMM_SMALL 2048
#endif
#ifndef SGEMM_PARALLEL
#define SGEMM_PARALLEL 65536
#endif

// ----------------------------------------------------------------------------
// What happens to C's old contents. SGEMM_STREAM is SGEMM_OVERWRITE with non-temporal stores
// (whole, aligned tile rows; the rest as usual): for a large output written once and not read
// again soon, such as an MoE layer's expert weight gradients on the first micro-batch of a step
// (hundreds of MB at E = 64-128, written 8×32 floats at a time after only 32-64 rank-1 updates).
// A normal store first reads the line it writes; streaming skips that read. Same values: only
// where they are written through differs. (The experts' dW1 + dW2 at 32 tokens, 4 layers of
// E = 128: 72 ms accumulating, 66 overwriting, 62 streaming; at 64 tokens, E = 64: 57, 55, 52;
// alternated in one process.)
enum { SGEMM_OVERWRITE = 0, SGEMM_ACCUMULATE = 1, SGEMM_STREAM = 2 };

// ----------------------------------------------------------------------------
// The reference: plain loops, the definition of the contract. Also the small-problem path.
// transA == 0: A is M×K, (i,p) at A[i*lda + p];  transA == 1: A is stored K×M, (i,p) at A[p*lda + i]
// transB == 0: B is K×N, (p,j) at B[p*ldb + j];  transB == 1: B is stored N×K, (p,j) at B[j*ldb + p]
// C is M×N, (i,j) at C[i*ldc + j].

static void sgemm_scalar(int transA, int transB, int M, int N, int K,
                         const float* A, int lda, const float* B, int ldb,
                         float* C, int ldc, int accumulate) {
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            float sum = 0.0f;
            for (int p = 0; p < K; p++) {
                float a = transA ? A[(size_t)p * lda + i] : A[(size_t)i * lda + p];
                float b = transB ? B[(size_t)j * ldb + p] : B[(size_t)p * ldb + j];
                sum += a * b;
            }
            float* c = &C[(size_t)i * ldc + j];
            *c = accumulate == SGEMM_ACCUMULATE ? *c + sum : sum;
        }
    }
}

// ----------------------------------------------------------------------------
// Micro-kernels: c(MR×NR) = (mode == SGEMM_ACCUMULATE ? c : 0) + a · b, where
//   a is a packed A panel: kc columns of MR floats, a[p*MR + r]   = A(i0+r, pc+p)
//   b is a packed B sliver: kc rows of NR floats,   b[p*NR + col] = B(pc+p, j0+col)
// The sum over p is done in registers starting from 0, then added to c once (so the mode never
// changes the order of the sum over p). The scalar version is the definition; the AVX2 one does
// the same sums in the same order, with each multiply-add fused (as gcc also fuses a*b + c in the
// scalar one under -march=native, so the two usually agree bit for bit).
// sgemm_kernel_cols is the same kernel with a[p*lda + r]: lda = MR for a packed panel, or the
// leading dimension of a column-major op(A) read in place (sgemm_block); then, if pf is not NULL,
// it also prefetches the line at pf + p*lda for every p (A's lines for a later strip).

// (static inline: with AVX2 it is only the readers' and tests' version, so no unused warning)
static inline void sgemm_kernel_cols_scalar(int kc, const float* a, size_t lda, const float* pf, const float* b,
                                            float* c, int ldc, int mode) {
    (void)pf;
    float acc[SGEMM_MR][SGEMM_NR] = {{0.0f}};
    for (int p = 0; p < kc; p++) {
        for (int r = 0; r < SGEMM_MR; r++) {
            for (int col = 0; col < SGEMM_NR; col++) {
                acc[r][col] += a[p * lda + r] * b[p * SGEMM_NR + col];
            }
        }
    }
    for (int r = 0; r < SGEMM_MR; r++) {
        for (int col = 0; col < SGEMM_NR; col++) {
            float* cc = &c[(size_t)r * ldc + col];
            *cc = mode == SGEMM_ACCUMULATE ? *cc + acc[r][col] : acc[r][col];
        }
    }
}
static inline void sgemm_kernel_scalar(int kc, const float* a, const float* b, float* c, int ldc, int mode) {
    sgemm_kernel_cols_scalar(kc, a, SGEMM_MR, NULL, b, c, ldc, mode);
}

#if defined(__AVX512F__) && !defined(SGEMM_NO_AVX512)
// The same kernel with 16-float zmm vectors and SGEMM_MR rows: an MR×32 tile in 2·MR zmm
// accumulators (of 32 registers). Where the CPU has AVX-512 (-march=native turns it on) this
// doubles the work per FMA instruction. The loops over r are unrolled whole, so gcc keeps every
// accumulator in a register.
static inline __attribute__((always_inline)) void sgemm_kernel_cols_avx512_(int kc, const float* a, size_t lda, const float* pf,
                                                                          const float* b, float* c, int ldc, int mode) {
    __m512 c0[SGEMM_MR], c1[SGEMM_MR];
    #pragma GCC unroll 16
    for (int r = 0; r < SGEMM_MR; r++) {
        c0[r] = _mm512_setzero_ps();
        c1[r] = _mm512_setzero_ps();
        if (mode != SGEMM_STREAM) {   // (see the AVX2 kernel)
            _mm_prefetch((const char*)(c + (size_t)r * ldc), _MM_HINT_T0);
            _mm_prefetch((const char*)(c + (size_t)r * ldc + SGEMM_NR - 1), _MM_HINT_T0);
        }
    }
    for (int p = 0; p < kc; p++) {
        if (pf != NULL) _mm_prefetch((const char*)(pf + p * lda), _MM_HINT_T0);
        __m512 b0 = _mm512_load_ps(b);
        __m512 b1 = _mm512_load_ps(b + 16);
        #pragma GCC unroll 16
        for (int r = 0; r < SGEMM_MR; r++) {
            __m512 ar = _mm512_set1_ps(a[r]);
            c0[r] = _mm512_fmadd_ps(ar, b0, c0[r]);
            c1[r] = _mm512_fmadd_ps(ar, b1, c1[r]);
        }
        a += lda;
        b += SGEMM_NR;
    }
    #pragma GCC unroll 16
    for (int r = 0; r < SGEMM_MR; r++) {
        float* cr = c + (size_t)r * ldc;
        __m512 v0 = c0[r], v1 = c1[r];
        if (mode == SGEMM_ACCUMULATE) { v0 = _mm512_add_ps(_mm512_loadu_ps(cr), v0); v1 = _mm512_add_ps(_mm512_loadu_ps(cr + 16), v1); }
        if (mode == SGEMM_STREAM && ((uintptr_t)cr & 63) == 0) {
            _mm512_stream_ps(cr, v0);
            _mm512_stream_ps(cr + 16, v1);
        } else {
            _mm512_storeu_ps(cr, v0);
            _mm512_storeu_ps(cr + 16, v1);
        }
    }
}
static void sgemm_kernel_avx512(int kc, const float* a, const float* b, float* c, int ldc, int mode) {
    sgemm_kernel_cols_avx512_(kc, a, SGEMM_MR, NULL, b, c, ldc, mode);
}
static void sgemm_kernel_cols_avx512(int kc, const float* a, size_t lda, const float* pf, const float* b,
                                     float* c, int ldc, int mode) {
    if (pf != NULL) sgemm_kernel_cols_avx512_(kc, a, lda, pf, b, c, ldc, mode);
    else sgemm_kernel_cols_avx512_(kc, a, lda, NULL, b, c, ldc, mode);
}
#define sgemm_kernel sgemm_kernel_avx512
#define sgemm_kernel_cols sgemm_kernel_cols_avx512
#define sgemm_store_fence _mm_sfence
#define SGEMM_ISA "AVX-512"
#elif defined(__AVX2__) && defined(__FMA__)
// One k step is a rank-1 update: load 16 floats of b (2 vectors), and for each of the 6 rows
// broadcast a[r] and do 2 FMAs. 12 independent accumulators hide the 4-cycle FMA latency on two
// FMA ports; 8 loads per 12 FMAs fit in the load ports. Written out by row so that gcc keeps all
// 12 accumulators in registers.
static inline __attribute__((always_inline)) void sgemm_kernel_cols_avx2_(int kc, const float* a, size_t lda, const float* pf,
                                                                        const float* b, float* c, int ldc, int mode) {
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    // C is touched only at the end, and for big outputs it is not in cache: start fetching its
    // 6 rows now (first and last float of each 16-float row) so the loads at the end do not stall.
    // Not when streaming: the point is not to read C at all.
    for (int r = 0; r < SGEMM_MR && mode != SGEMM_STREAM; r++) {
        _mm_prefetch((const char*)(c + (size_t)r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char*)(c + (size_t)r * ldc + SGEMM_NR - 1), _MM_HINT_T0);
    }
    for (int p = 0; p < kc; p++) {
        if (pf != NULL) _mm_prefetch((const char*)(pf + p * lda), _MM_HINT_T0);
        __m256 b0 = _mm256_load_ps(b);
        __m256 b1 = _mm256_load_ps(b + 8);
        __m256 ar;
        ar = _mm256_broadcast_ss(a + 0); c00 = _mm256_fmadd_ps(ar, b0, c00); c01 = _mm256_fmadd_ps(ar, b1, c01);
        ar = _mm256_broadcast_ss(a + 1); c10 = _mm256_fmadd_ps(ar, b0, c10); c11 = _mm256_fmadd_ps(ar, b1, c11);
        ar = _mm256_broadcast_ss(a + 2); c20 = _mm256_fmadd_ps(ar, b0, c20); c21 = _mm256_fmadd_ps(ar, b1, c21);
        ar = _mm256_broadcast_ss(a + 3); c30 = _mm256_fmadd_ps(ar, b0, c30); c31 = _mm256_fmadd_ps(ar, b1, c31);
        ar = _mm256_broadcast_ss(a + 4); c40 = _mm256_fmadd_ps(ar, b0, c40); c41 = _mm256_fmadd_ps(ar, b1, c41);
        ar = _mm256_broadcast_ss(a + 5); c50 = _mm256_fmadd_ps(ar, b0, c50); c51 = _mm256_fmadd_ps(ar, b1, c51);
        a += lda;
        b += SGEMM_NR;
    }
    // write back: c = acc, or c = c + acc (one rounding, same as the scalar kernel)
    #define SGEMM_STORE_ROW(r, v0, v1) do {                                         \
        float* cr = c + (size_t)(r) * ldc;                                          \
        if (mode == SGEMM_ACCUMULATE) {                                             \
            v0 = _mm256_add_ps(_mm256_loadu_ps(cr), v0);                            \
            v1 = _mm256_add_ps(_mm256_loadu_ps(cr + 8), v1);                        \
        }                                                                           \
        if (mode == SGEMM_STREAM && ((uintptr_t)cr & 31) == 0) {                    \
            _mm256_stream_ps(cr, v0); _mm256_stream_ps(cr + 8, v1);                 \
        } else {                                                                    \
            _mm256_storeu_ps(cr, v0); _mm256_storeu_ps(cr + 8, v1);                 \
        }                                                                           \
    } while (0)
    SGEMM_STORE_ROW(0, c00, c01); SGEMM_STORE_ROW(1, c10, c11); SGEMM_STORE_ROW(2, c20, c21);
    SGEMM_STORE_ROW(3, c30, c31); SGEMM_STORE_ROW(4, c40, c41); SGEMM_STORE_ROW(5, c50, c51);
    #undef SGEMM_STORE_ROW
}
static void sgemm_kernel_avx2(int kc, const float* a, const float* b, float* c, int ldc, int mode) {
    sgemm_kernel_cols_avx2_(kc, a, SGEMM_MR, NULL, b, c, ldc, mode);
}
static void sgemm_kernel_cols_avx2(int kc, const float* a, size_t lda, const float* pf, const float* b,
                                   float* c, int ldc, int mode) {
    if (pf != NULL) sgemm_kernel_cols_avx2_(kc, a, lda, pf, b, c, ldc, mode);
    else sgemm_kernel_cols_avx2_(kc, a, lda, NULL, b, c, ldc, mode);
}
#define sgemm_kernel sgemm_kernel_avx2
#define sgemm_kernel_cols sgemm_kernel_cols_avx2
#define sgemm_store_fence _mm_sfence
#define SGEMM_ISA "AVX2"
#else
#define sgemm_kernel sgemm_kernel_scalar
#define sgemm_kernel_cols sgemm_kernel_cols_scalar
#define sgemm_store_fence() ((void)0)   // (the scalar kernel does not stream)
#define SGEMM_ISA "scalar"
#endif

// ----------------------------------------------------------------------------
// The same micro-kernel with A read in place: a[r*lda + p] = A(i0+r, pc+p) for A stored row-major
// with K contiguous (no packed panel); c, ldc and mode as sgemm_kernel's (it does not stream). Each
// element is the same sum over p in the same order as sgemm_kernel's, so the bits are the same.
// Used wherever op(A) is row-major (sgemm_block: the forward's activations, the backward's dout)
// and for an expert's weights in its forward (sgemm_rows_item). If pf is not NULL, every 16 p (a
// cache line of each row) the kernel prefetches that line of the MR rows at pf, pfld apart: the
// next call's rows of A (an expert's forward at 32-64 tokens, W from memory: 1.1-1.4x faster with
// it, alternated in one process), or a piece of the next item's B (SgemmAhead).
// sgemm_kernel_rows_half computes only the tile's first NR/2 columns, for the last sliver of an
// expert's tokens when it holds NR/2 or fewer: routing is uneven, and at E = 64-128 many experts
// get a handful of tokens, each padded to a whole NR-wide sliver (the expert forward over a real
// run's routing, alternated in one process: 0.92-0.955 of the time at E = 64 and 128, unchanged
// at E = 8). Per column it is the same sum.

static inline void sgemm_kernel_rows_scalar(int kc, const float* a, size_t lda, const float* pf, size_t pfld,
                                            const float* b, float* c, int ldc, int mode) {
    (void)pf;
    (void)pfld;
    float acc[SGEMM_MR][SGEMM_NR] = {{0.0f}};
    for (int p = 0; p < kc; p++)
        for (int r = 0; r < SGEMM_MR; r++)
            for (int col = 0; col < SGEMM_NR; col++) acc[r][col] += a[r * lda + p] * b[p * SGEMM_NR + col];
    for (int r = 0; r < SGEMM_MR; r++) {
        for (int col = 0; col < SGEMM_NR; col++) {
            float* cc = &c[(size_t)r * ldc + col];
            *cc = mode == SGEMM_ACCUMULATE ? *cc + acc[r][col] : acc[r][col];
        }
    }
}
#if defined(__AVX512F__) && !defined(SGEMM_NO_AVX512)
// nv = 2: the full MR×32 tile; nv = 1: only its first 16 columns (tokens), for a block's last
// sliver when it holds 16 tokens or fewer (always inlined, so each nv is its own loop).
static inline __attribute__((always_inline)) void sgemm_kernel_rows_avx512_nv(int kc, const float* a, size_t lda, const float* pf, size_t pfld,
                                                                           const float* b, float* c, int ldc, int mode, int nv) {
    __m512 c0[SGEMM_MR], c1[SGEMM_MR];
    const float* ar[SGEMM_MR];
    #pragma GCC unroll 16
    for (int r = 0; r < SGEMM_MR; r++) {
        c0[r] = _mm512_setzero_ps();
        c1[r] = _mm512_setzero_ps();
        ar[r] = a + r * lda;
        _mm_prefetch((const char*)(c + (size_t)r * ldc), _MM_HINT_T0);   // (C, as in sgemm_kernel)
        _mm_prefetch((const char*)(c + (size_t)r * ldc + SGEMM_NR - 1), _MM_HINT_T0);
    }
    for (int p = 0; p < kc; p++) {
        if (pf != NULL && (p & 15) == 0) {
            #pragma GCC unroll 16
            for (int r = 0; r < SGEMM_MR; r++) _mm_prefetch((const char*)(pf + r * pfld + p), _MM_HINT_T0);
        }
        __m512 b0 = _mm512_load_ps(b), b1 = nv == 2 ? _mm512_load_ps(b + 16) : b0;
        #pragma GCC unroll 16
        for (int r = 0; r < SGEMM_MR; r++) {
            __m512 av = _mm512_set1_ps(ar[r][p]);
            c0[r] = _mm512_fmadd_ps(av, b0, c0[r]);
            if (nv == 2) c1[r] = _mm512_fmadd_ps(av, b1, c1[r]);
        }
        b += SGEMM_NR;
    }
    #pragma GCC unroll 16
    for (int r = 0; r < SGEMM_MR; r++) {
        float* cr = c + (size_t)r * ldc;
        __m512 v0 = c0[r], v1 = c1[r];
        if (mode == SGEMM_ACCUMULATE) {
            v0 = _mm512_add_ps(_mm512_loadu_ps(cr), v0);
            if (nv == 2) v1 = _mm512_add_ps(_mm512_loadu_ps(cr + 16), v1);
        }
        _mm512_storeu_ps(cr, v0);
        if (nv == 2) _mm512_storeu_ps(cr + 16, v1);
    }
}
static void sgemm_kernel_rows_avx512(int kc, const float* a, size_t lda, const float* pf, size_t pfld, const float* b,
                                     float* c, int ldc, int mode) {
    sgemm_kernel_rows_avx512_nv(kc, a, lda, pf, pfld, b, c, ldc, mode, 2);
}
static void sgemm_kernel_rows_half_avx512(int kc, const float* a, size_t lda, const float* pf, size_t pfld, const float* b,
                                          float* c, int ldc, int mode) {
    sgemm_kernel_rows_avx512_nv(kc, a, lda, pf, pfld, b, c, ldc, mode, 1);
}
#define sgemm_kernel_rows sgemm_kernel_rows_avx512
#define sgemm_kernel_rows_half sgemm_kernel_rows_half_avx512
#elif defined(__AVX2__) && defined(__FMA__)
static inline __attribute__((always_inline)) void sgemm_kernel_rows_avx2_nv(int kc, const float* a, size_t lda, const float* pf, size_t pfld,
                                                                         const float* b, float* c, int ldc, int mode, int nv) {
    __m256 c0[SGEMM_MR], c1[SGEMM_MR];
    const float* ar[SGEMM_MR];
    #pragma GCC unroll 8
    for (int r = 0; r < SGEMM_MR; r++) {
        c0[r] = _mm256_setzero_ps();
        c1[r] = _mm256_setzero_ps();
        ar[r] = a + r * lda;
        _mm_prefetch((const char*)(c + (size_t)r * ldc), _MM_HINT_T0);   // (C, as in sgemm_kernel)
        _mm_prefetch((const char*)(c + (size_t)r * ldc + SGEMM_NR - 1), _MM_HINT_T0);
    }
    for (int p = 0; p < kc; p++) {
        if (pf != NULL && (p & 15) == 0) {
            #pragma GCC unroll 8
            for (int r = 0; r < SGEMM_MR; r++) _mm_prefetch((const char*)(pf + r * pfld + p), _MM_HINT_T0);
        }
        __m256 b0 = _mm256_load_ps(b), b1 = nv == 2 ? _mm256_load_ps(b + 8) : b0;
        #pragma GCC unroll 8
        for (int r = 0; r < SGEMM_MR; r++) {
            __m256 av = _mm256_broadcast_ss(ar[r] + p);
            c0[r] = _mm256_fmadd_ps(av, b0, c0[r]);
            if (nv == 2) c1[r] = _mm256_fmadd_ps(av, b1, c1[r]);
        }
        b += SGEMM_NR;
    }
    #pragma GCC unroll 8
    for (int r = 0; r < SGEMM_MR; r++) {
        float* cr = c + (size_t)r * ldc;
        __m256 v0 = c0[r], v1 = c1[r];
        if (mode == SGEMM_ACCUMULATE) {
            v0 = _mm256_add_ps(_mm256_loadu_ps(cr), v0);
            if (nv == 2) v1 = _mm256_add_ps(_mm256_loadu_ps(cr + 8), v1);
        }
        _mm256_storeu_ps(cr, v0);
        if (nv == 2) _mm256_storeu_ps(cr + 8, v1);
    }
}
static void sgemm_kernel_rows_avx2(int kc, const float* a, size_t lda, const float* pf, size_t pfld, const float* b,
                                   float* c, int ldc, int mode) {
    sgemm_kernel_rows_avx2_nv(kc, a, lda, pf, pfld, b, c, ldc, mode, 2);
}
static void sgemm_kernel_rows_half_avx2(int kc, const float* a, size_t lda, const float* pf, size_t pfld, const float* b,
                                        float* c, int ldc, int mode) {
    sgemm_kernel_rows_avx2_nv(kc, a, lda, pf, pfld, b, c, ldc, mode, 1);
}
#define sgemm_kernel_rows sgemm_kernel_rows_avx2
#define sgemm_kernel_rows_half sgemm_kernel_rows_half_avx2
#else
#define sgemm_kernel_rows sgemm_kernel_rows_scalar
#define sgemm_kernel_rows_half sgemm_kernel_rows_scalar   // (computes the whole tile)
#endif

// ----------------------------------------------------------------------------
// Packing: copy a block of op(A) / op(B) into the order the micro-kernel reads, zero-padding the
// ragged last panel, so the kernel streams both operands contiguously whatever the transposes.
// A panel and a B sliver are the same thing with a different width w (MR or NR):
//   dst[p*w + x] = src[x*x_stride + p*p_stride]   for x < n,   0 for n <= x < w,   p < kc
// Either x_stride or p_stride is 1 (one of op()'s two directions is contiguous in memory).
// When p_stride is 1 (x's values run along p: the forward's weights as op(B) = Wᵀ, an expert's
// tokens in its forward, sgemm_rows_item) the copy is a transpose, done 8×8 at a time in vector
// registers (sgemm_transpose8), as is a rows item's tile into C. Scalar, those transposes were
// ~8% of an expert's forward at 32-64 tokens (its six matmuls over a real run's routing,
// alternated in one process: forward 0.946 and 0.930 of the time at E = 64, 0.960 and 0.941 at
// E = 128, 0.977 and 0.979 at E = 8; the dense products unchanged). Copies only: the same bits.

// dst[q*ds + i] = src[i*ss + q] for i, q < 8: an 8×8 block transposed. With AVX (either
// micro-kernel) in 256-bit registers: 8 loads, 24 shuffles, 8 stores, instead of 64 scalar copies.
static inline void sgemm_transpose8(const float* src, size_t ss, float* dst, size_t ds) {
#if defined(__AVX2__) && defined(__FMA__)
    __m256 r0 = _mm256_loadu_ps(src + 0 * ss), r1 = _mm256_loadu_ps(src + 1 * ss);
    __m256 r2 = _mm256_loadu_ps(src + 2 * ss), r3 = _mm256_loadu_ps(src + 3 * ss);
    __m256 r4 = _mm256_loadu_ps(src + 4 * ss), r5 = _mm256_loadu_ps(src + 5 * ss);
    __m256 r6 = _mm256_loadu_ps(src + 6 * ss), r7 = _mm256_loadu_ps(src + 7 * ss);
    __m256 a0 = _mm256_unpacklo_ps(r0, r1), a1 = _mm256_unpackhi_ps(r0, r1);   // pairs of rows interleaved
    __m256 a2 = _mm256_unpacklo_ps(r2, r3), a3 = _mm256_unpackhi_ps(r2, r3);
    __m256 a4 = _mm256_unpacklo_ps(r4, r5), a5 = _mm256_unpackhi_ps(r4, r5);
    __m256 a6 = _mm256_unpacklo_ps(r6, r7), a7 = _mm256_unpackhi_ps(r6, r7);
    __m256 b0 = _mm256_shuffle_ps(a0, a2, 0x44), b1 = _mm256_shuffle_ps(a0, a2, 0xEE);   // quads of rows
    __m256 b2 = _mm256_shuffle_ps(a1, a3, 0x44), b3 = _mm256_shuffle_ps(a1, a3, 0xEE);
    __m256 b4 = _mm256_shuffle_ps(a4, a6, 0x44), b5 = _mm256_shuffle_ps(a4, a6, 0xEE);
    __m256 b6 = _mm256_shuffle_ps(a5, a7, 0x44), b7 = _mm256_shuffle_ps(a5, a7, 0xEE);
    _mm256_storeu_ps(dst + 0 * ds, _mm256_permute2f128_ps(b0, b4, 0x20));   // the two 128-bit halves
    _mm256_storeu_ps(dst + 1 * ds, _mm256_permute2f128_ps(b1, b5, 0x20));
    _mm256_storeu_ps(dst + 2 * ds, _mm256_permute2f128_ps(b2, b6, 0x20));
    _mm256_storeu_ps(dst + 3 * ds, _mm256_permute2f128_ps(b3, b7, 0x20));
    _mm256_storeu_ps(dst + 4 * ds, _mm256_permute2f128_ps(b0, b4, 0x31));
    _mm256_storeu_ps(dst + 5 * ds, _mm256_permute2f128_ps(b1, b5, 0x31));
    _mm256_storeu_ps(dst + 6 * ds, _mm256_permute2f128_ps(b2, b6, 0x31));
    _mm256_storeu_ps(dst + 7 * ds, _mm256_permute2f128_ps(b3, b7, 0x31));
#else
    for (int i = 0; i < 8; i++)
        for (int q = 0; q < 8; q++) dst[q * ds + i] = src[i * ss + q];
#endif
}

static inline void sgemm_pack_panel(const float* src, size_t x_stride, size_t p_stride,
                                    int n, int w, int kc, float* dst) {
    if (n == w && x_stride == 1) {          // each p's w values are contiguous: copy runs of w
        for (size_t p = 0; p < (size_t)kc; p++) {
            for (int x = 0; x < w; x++) dst[p * w + x] = src[p * p_stride + x];
        }
    } else if (p_stride == 1) {   // each x's values are contiguous in p: transpose 8×8 blocks
        size_t kc8 = (size_t)kc / 8 * 8;
        int n8 = n / 8 * 8;
        for (size_t p = 0; p < kc8; p += 8) {
            for (int x = 0; x < n8; x += 8) sgemm_transpose8(src + x * x_stride + p, x_stride, dst + p * w + x, (size_t)w);
            for (size_t q = p; q < p + 8; q++)   // a ragged last panel's other columns, and its zeros
                for (int x = n8; x < w; x++) dst[q * w + x] = x < n ? src[x * x_stride + q] : 0.0f;
        }
        for (size_t p = kc8; p < (size_t)kc; p++) {
            for (int x = 0; x < w; x++) dst[p * w + x] = x < n ? src[x * x_stride + p] : 0.0f;
        }
    } else {                                // a ragged last panel along x: the plain definition
        for (size_t p = 0; p < (size_t)kc; p++) {
            for (int x = 0; x < w; x++) dst[p * w + x] = x < n ? src[x * x_stride + p * p_stride] : 0.0f;
        }
    }
}

// A block: rows [i0, i0+mc) × columns [pc, pc+kc) of op(A) -> ceil(mc/6) panels of kc×6 floats,
// panel q at dst + q*kc*6 holds (i0 + q*6 + r, pc + p) at [p*6 + r]
static void sgemm_pack_A(int transA, const float* A, int lda, int i0, int mc, int pc, int kc,
                         float* dst) {
    size_t i_stride = transA ? 1 : (size_t)lda, p_stride = transA ? (size_t)lda : 1;
    for (int ir = 0; ir < mc; ir += SGEMM_MR) {
        int mr = mc - ir < SGEMM_MR ? mc - ir : SGEMM_MR;
        sgemm_pack_panel(A + (size_t)(i0 + ir) * i_stride + (size_t)pc * p_stride, i_stride,
                         p_stride, mr, SGEMM_MR, kc, dst + (size_t)ir * kc);
    }
}

// B panel: rows [pc, pc+kc) × columns [j0, j0+nc) of op(B) -> ceil(nc/16) slivers of kc×16
// floats, sliver s at dst + s*kc*16 holds (pc + p, j0 + s*16 + col) at [p*16 + col].
// With op(B) = B (rows contiguous) the whole slivers are filled row by row: each row's nc floats
// are read in one pass and dealt out to the slivers. Sliver by sliver, each row was read in NR-float
// pieces a row apart, which the hardware prefetcher follows badly: an expert's dinp at 32-64
// tokens (its W packed straight from memory) was 1.1-1.3x slower that way (alternated in one
// process; no change at 512 tokens).
static void sgemm_pack_B(int transB, const float* B, int ldb, int pc, int kc, int j0, int nc,
                         float* dst) {
    size_t j_stride = transB ? (size_t)ldb : 1, p_stride = transB ? 1 : (size_t)ldb;
    int whole = 0;   // slivers packed row by row: columns [0, whole)
    if (!transB) {
        whole = nc / SGEMM_NR * SGEMM_NR;
        for (int p = 0; p < kc; p++) {
            const float* src = B + (size_t)(pc + p) * ldb + j0;
            for (int jr = 0; jr < whole; jr += SGEMM_NR) {
                float* d = dst + (size_t)jr * kc + (size_t)p * SGEMM_NR;
                for (int x = 0; x < SGEMM_NR; x++) d[x] = src[jr + x];
            }
        }
    }
    for (int jr = whole; jr < nc; jr += SGEMM_NR) {
        int nr = nc - jr < SGEMM_NR ? nc - jr : SGEMM_NR;
        sgemm_pack_panel(B + (size_t)(j0 + jr) * j_stride + (size_t)pc * p_stride, j_stride,
                         p_stride, nr, SGEMM_NR, kc, dst + (size_t)jr * kc);
    }
}

// ----------------------------------------------------------------------------
// What a product may skip because an operand is causal (attention, moe.h). The skipped work is
// either unneeded elements of C or products with exact zeros of op(A), so every needed element of
// C gets the same bits as from the full product: the kernel's accumulator starts at +0 and stays
// +0 through leading zero products, and trailing ones add ±0.
enum {
    SGEMM_FULL = 0,   // no structure
    SGEMM_C_LOWER,    // only C[i][j] with j <= i is needed; the rest is left unspecified
    SGEMM_A_LOWER,    // op(A)[i][k] = 0 for k > i (a causal P)
    SGEMM_A_UPPER,    // op(A)[i][k] = 0 for k < i (the transpose of a causal P)
};

// ----------------------------------------------------------------------------
// Macro-kernel: C[mc, nc] (+)= A block · packed B panel, one micro-tile at a time. The A block is
// packed (SGEMM_A_PACKED: MR-row panels, as sgemm_pack_A makes them) or read in place, when it is
// whole MR-row panels: row-major (SGEMM_A_ROWS, A(i,p) at a[i*lda + p], sgemm_kernel_rows) or
// column-major (SGEMM_A_COLS, A(i,p) at a[p*lda + i], sgemm_kernel_cols). Ragged edge tiles
// are computed whole into a scratch tile and then the valid part is copied or added: c + acc is the same single rounding the kernel does in place, so edges sum exactly like
// interior tiles. (i0, j0, pc): where the block sits in C and in K, for the causal skips; a tile
// runs over only the k in [p0, p1) where its rows of op(A) can be nonzero (a prefix or suffix
// of both packed panels).
//
// Order: the tiles of one MR-row strip, left to right, then the next strip, so C is written along
// its rows (each tile's MR rows continue where the last tile's ended, which the hardware
// prefetcher follows). The textbook order (a B sliver held in L1 while the strips go down C)
// writes C a column of tiles at a time, MR rows a stride apart: when kc is small (an expert's
// weight gradient at 32-64 tokens does only 32-64 rank-1 updates per tile) the C traffic is the
// cost, and that order was measured 1.2-1.7x slower on those shapes (dev/bench_sgemm --experts,
// alternated in one process), and no faster anywhere else. The order changes no result: each
// tile is computed the same way.

enum { SGEMM_A_PACKED = 0, SGEMM_A_ROWS, SGEMM_A_COLS };

// The next item's op(B), fetched ahead (sgemm_batch, phase 2): a thread claims its next item before
// it computes the current one, and when that next item will pack its B from memory (an expert's
// dinp at <= 256 tokens: all of its W), the current item's rows-kernel tiles prefetch that B, one
// piece of MR rows × KC floats per tile (every tile but a strip's first, which fetches A's next
// strip), so the packing finds it in cache. (The experts' two dinp products over a real run's
// routing, alternated in one process: 0.946 and 0.932 of the time at E = 64, 0.932 and 0.924 at
// E = 128; E = 8, whose experts have more rows and share one packed B, does not fetch ahead.)
typedef struct {
    const float* base;     // row 0 of the next item's block of op(B) (B row-major: B + jc)
    size_t ld;             // its row stride (ldb)
    int chunks_per_row;    // pieces of KC floats in a row of the block
    int next, total;       // pieces prefetched so far, of (rows rounded up to MR) / MR × chunks_per_row
} SgemmAhead;
static const float* sgemm_ahead_take(SgemmAhead* ah) {
    if (ah == NULL || ah->next >= ah->total) return NULL;
    int piece = ah->next++;
    size_t row = (size_t)(piece / ah->chunks_per_row) * SGEMM_MR, col = (size_t)(piece % ah->chunks_per_row) * SGEMM_KC;
    return ah->base + row * ah->ld + col;
}

static void sgemm_macro_kernel(int mc, int nc, int kc, const float* a, int layout, size_t lda, const float* bpack,
                               float* C, int ldc, int mode, int causal, int i0, int j0, int pc, SgemmAhead* ahead) {
    if (mode == SGEMM_STREAM && layout == SGEMM_A_ROWS) mode = SGEMM_OVERWRITE;   // (the rows kernel does not stream: same values)
    for (int ir = 0; ir < mc; ir += SGEMM_MR) {
        int mr = mc - ir < SGEMM_MR ? mc - ir : SGEMM_MR;
        int first = 1;   // the strip's first tile prefetches the next strip's rows of A (in place)
        for (int jr = 0; jr < nc; jr += SGEMM_NR) {
            int nr = nc - jr < SGEMM_NR ? nc - jr : SGEMM_NR;
            int row_end = i0 + ir + mr, p0 = 0, p1 = kc;   // rows [i0+ir, row_end) of C
            if (causal == SGEMM_C_LOWER && j0 + jr >= row_end) continue;   // the tile is above the diagonal
            if (causal == SGEMM_A_LOWER && row_end - pc < p1) p1 = row_end - pc;
            if (causal == SGEMM_A_UPPER && i0 + ir - pc > p0) p0 = i0 + ir - pc;
            float* c = C + (size_t)ir * ldc + jr;
            if (p1 <= p0) {   // op(A) is zero on the tile's rows for this K block
                if (mode != SGEMM_ACCUMULATE) for (int r = 0; r < mr; r++) memset(c + (size_t)r * ldc, 0, (size_t)nr * sizeof(float));
                continue;
            }
            const float* b = bpack + (size_t)(jr / SGEMM_NR) * kc * SGEMM_NR + (size_t)p0 * SGEMM_NR;
            float tile[SGEMM_MR * SGEMM_NR];
            int whole = mr == SGEMM_MR && nr == SGEMM_NR;
            float* out = whole ? c : tile;   // ragged edge tiles: computed whole into the scratch tile
            int out_ld = whole ? ldc : SGEMM_NR, out_mode = whole ? mode : SGEMM_OVERWRITE;
            if (layout == SGEMM_A_ROWS) {   // in place (mr == MR): A(i0+ir+r, pc+p) at a[(ir+r)*lda + p]
                const float* ap = a + (size_t)ir * lda + p0;
                const float* next_b = first ? NULL : sgemm_ahead_take(ahead);
                if (next_b != NULL) sgemm_kernel_rows(p1 - p0, ap, lda, next_b, ahead->ld, b, out, out_ld, out_mode);
                else sgemm_kernel_rows(p1 - p0, ap, lda, first ? ap + SGEMM_MR * lda : NULL, lda, b, out, out_ld, out_mode);
                first = 0;
            } else if (layout == SGEMM_A_COLS) {   // in place (mr == MR): A(i0+ir+r, pc+p) at a[p*lda + ir + r]
                const float* ap = a + (size_t)p0 * lda + ir;
                sgemm_kernel_cols(p1 - p0, ap, lda, first ? ap + 16 : NULL, b, out, out_ld, out_mode);
                first = 0;
            } else {
                sgemm_kernel(p1 - p0, a + (size_t)(ir / SGEMM_MR) * kc * SGEMM_MR + (size_t)p0 * SGEMM_MR, b, out, out_ld, out_mode);
            }
            if (!whole) {
                for (int r = 0; r < mr; r++) {
                    for (int col = 0; col < nr; col++) {
                        float* cc = c + (size_t)r * ldc + col;
                        float t = tile[r * SGEMM_NR + col];
                        *cc = mode == SGEMM_ACCUMULATE ? *cc + t : t;
                    }
                }
            }
        }
    }
}

// One block: rows [ic, ic+mc) × columns [jc, jc+nc) of C (+)= op(A) on those rows and K block
// [pc, pc+kc) · the packed B panel. op(A)'s whole MR-row panels are read in place, not packed:
// packing copied each element once more than the kernel reads it. Row-major (transA 0: the
// forward's activations, the backward's dout) through sgemm_kernel_rows, which fetches the next
// strip's rows while it computes the strip's first tile; column-major (transA 1: the weight
// gradients' doutᵀ) through sgemm_kernel_cols, whose strip's first tile fetches the A lines 16
// rows ahead. Alternated in one process at `small`'s shapes, against packing: the dense forward
// and dinp 0.91-0.98 of the time, dW 0.93-0.95; the expert matmuls over a real run's routing
// 0.97 (small) and 0.98 (wide). Not when a column-major A's rows (of K) are a multiple of 4 KiB
// apart (the LM head's dW, 16 KiB): kc rows at that stride fall in a few cache sets and evict
// each other (1.06x slower), so that A is packed. A ragged last panel is packed too.
static void sgemm_block(int transA, const float* A, int lda, int ic, int mc, int jc, int nc, int pc, int kc,
                        float* apack, const float* bpack, float* C, int ldc, int mode, int causal, SgemmAhead* ahead) {
    int inplace = mc / SGEMM_MR * SGEMM_MR;
    if (transA && (size_t)lda * sizeof(float) % 4096 == 0) inplace = 0;   // (see above)
    if (inplace > 0) {
        const float* a = transA ? A + (size_t)pc * lda + ic : A + (size_t)ic * lda + pc;
        sgemm_macro_kernel(inplace, nc, kc, a, transA ? SGEMM_A_COLS : SGEMM_A_ROWS, (size_t)lda, bpack,
                           C + (size_t)ic * ldc + jc, ldc, mode, causal, ic, jc, pc, ahead);
    }
    if (mc > inplace) {
        sgemm_pack_A(transA, A, lda, ic + inplace, mc - inplace, pc, kc, apack);
        sgemm_macro_kernel(mc - inplace, nc, kc, apack, SGEMM_A_PACKED, 0, bpack, C + (size_t)(ic + inplace) * ldc + jc,
                           ldc, mode, causal, ic + inplace, jc, pc, NULL);
    }
}

// A row stride, in floats, for a matrix of n columns that a matmul writes or reads in place: n
// rounded up to whole 64-byte cache lines, an odd number of them. Rows a power of two apart alias
// in the L1 (its set index repeats every 4 KiB): at n = 512 (2 KiB) the 32 rows of one
// sgemm_rows_item tile at a given column fall into 2 of the 64 sets and evict each other; an odd
// number of lines spreads them over 32. The model's expert hidden layers use it (moe.h, Dispatch).
static inline int sgemm_row_stride(int n) {
    int lines = (n + 15) / 16;
    return 16 * (lines % 2 == 0 ? lines + 1 : lines);
}

// ----------------------------------------------------------------------------
// Packing buffers: allocated on first use and grown only, never freed, so that steady-state calls
// do not allocate. Each thread has its own A block and B panel, separate 64-byte aligned
// allocations, so threads never write the same cache line.

static float** sgemm_apack = NULL;   // sgemm_apack[thread]: max(MC, MC_BATCH) × KC floats
static float** sgemm_bpack = NULL;   // sgemm_bpack[thread]: KC × NC floats
static int     sgemm_nbuffers = 0;

static float* sgemm_alloc(size_t floats) {
    size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;  // aligned_alloc wants a multiple
    int huge = bytes >= ((size_t)4 << 20);   // a shared B of many experts: on 2 MiB pages (moe.h, calloc_check_)
    if (huge) bytes = (bytes + ((size_t)2 << 20) - 1) / ((size_t)2 << 20) * ((size_t)2 << 20);
    float* p = (float*)aligned_alloc(huge ? ((size_t)2 << 20) : 64, bytes);
    if (p == NULL && huge) { p = (float*)aligned_alloc(64, bytes); huge = 0; }   // huge pages are only a hint
    if (p == NULL) {
        fprintf(stderr, "matmul.h: could not allocate %zu bytes of packing buffer\n", bytes);
        exit(EXIT_FAILURE);
    }
#ifdef MADV_HUGEPAGE
    if (huge) madvise(p, bytes, MADV_HUGEPAGE);
#endif
    return p;
}

static void sgemm_reserve(int nthreads) {
    if (nthreads <= sgemm_nbuffers) return;
    float** a = (float**)realloc(sgemm_apack, (size_t)nthreads * sizeof(float*));
    if (a == NULL) { fprintf(stderr, "matmul.h: out of memory\n"); exit(EXIT_FAILURE); }
    sgemm_apack = a;
    float** b = (float**)realloc(sgemm_bpack, (size_t)nthreads * sizeof(float*));
    if (b == NULL) { fprintf(stderr, "matmul.h: out of memory\n"); exit(EXIT_FAILURE); }
    sgemm_bpack = b;
    for (int t = sgemm_nbuffers; t < nthreads; t++) {
        sgemm_apack[t] = sgemm_alloc((size_t)(SGEMM_MC > SGEMM_MC_BATCH ? SGEMM_MC : SGEMM_MC_BATCH) * SGEMM_KC);
        sgemm_bpack[t] = sgemm_alloc((size_t)SGEMM_KC * SGEMM_NC);
    }
    sgemm_nbuffers = nthreads;
}

// ----------------------------------------------------------------------------
// The blocked, packed, parallel path. Same contract as sgemm_scalar (the test calls it directly so
// that tiny edge shapes exercise the packing and edge-tile code too).

static void sgemm_blocked(int transA, int transB, int M, int N, int K,
                          const float* A, int lda, const float* B, int ldb,
                          float* C, int ldc, int accumulate) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {   // op(A)·op(B) is all zeros
        if (accumulate != SGEMM_ACCUMULATE) {
            for (int i = 0; i < M; i++) memset(C + (size_t)i * ldc, 0, (size_t)N * sizeof(float));
        }
        return;
    }
    int nthreads = 1;
#ifdef _OPENMP
    nthreads = omp_get_max_threads();
#endif
    if ((long long)M * N * K < SGEMM_PARALLEL) nthreads = 1;
    sgemm_reserve(nthreads);

    // Thread grid: row_groups × col_groups = nthreads rectangles of whole micro-tiles. Pick the
    // grid with the fewest micro-tiles in the largest rectangle; on a tie, the least packing:
    // every thread packs all of op(A)'s rows it covers and all of op(B)'s columns, so A is packed
    // col_groups times and B row_groups times (the LM head's backward: split the 4096-wide side).
    int m_panels = (M + SGEMM_MR - 1) / SGEMM_MR, n_panels = (N + SGEMM_NR - 1) / SGEMM_NR;
    int row_groups = nthreads, col_groups = 1;
    long long best = -1;
    double best_packing = 0.0;
    for (int cg = 1; cg <= nthreads; cg++) {
        if (nthreads % cg != 0) continue;
        int rg = nthreads / cg;
        long long largest = (long long)((m_panels + rg - 1) / rg) * ((n_panels + cg - 1) / cg);
        double packing = (double)cg * M * K + (double)rg * K * N;
        if (best < 0 || largest < best || (largest == best && packing <= best_packing)) {
            best = largest; best_packing = packing; row_groups = rg; col_groups = cg;
        }
    }

#ifdef _OPENMP
    #pragma omp parallel for schedule(static) num_threads(nthreads)
#endif
    for (int t = 0; t < nthreads; t++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float* apack = sgemm_apack[tid];
        float* bpack = sgemm_bpack[tid];
        // this thread's rectangle: rows [m0, m1) × columns [n0, n1), cut at micro-tile bounds
        int rg = t / col_groups, cg = t % col_groups;
        int m0 = rg * m_panels / row_groups * SGEMM_MR, m1 = (rg + 1) * m_panels / row_groups * SGEMM_MR;
        int n0 = cg * n_panels / col_groups * SGEMM_NR, n1 = (cg + 1) * n_panels / col_groups * SGEMM_NR;
        if (m1 > M) m1 = M;
        if (n1 > N) n1 = N;

        for (int jc = n0; jc < n1; jc += SGEMM_NC) {
            int nc = n1 - jc < SGEMM_NC ? n1 - jc : SGEMM_NC;
            for (int pc = 0; pc < K; pc += SGEMM_KC) {
                int kc = K - pc < SGEMM_KC ? K - pc : SGEMM_KC;
                // the first K block overwrites C unless accumulating (this path does not stream)
                int add = accumulate == SGEMM_ACCUMULATE || pc > 0;
                sgemm_pack_B(transB, B, ldb, pc, kc, jc, nc, bpack);
                for (int ic = m0; ic < m1; ic += SGEMM_MC) {
                    int mc = m1 - ic < SGEMM_MC ? m1 - ic : SGEMM_MC;
                    sgemm_block(transA, A, lda, ic, mc, jc, nc, pc, kc, apack, bpack, C, ldc, add, SGEMM_FULL, NULL);
                }
            }
        }
    }
}

// ----------------------------------------------------------------------------
// Many independent products in one parallel region: the experts of an MoE layer, each on its own
// block of tokens, or the heads of attention. One sgemm call per expert would wake the thread
// team 6E times per layer and give each thread a sliver of a small matrix. Two phases, one region:
//   1. pack the whole op(B) of every problem with more than one row block (M > SGEMM_MC_BATCH) once,
//      into one shared buffer (work: K blocks × groups of slivers, handed out dynamically);
//   2. the work items are (problem, row block, column block) rectangles of whole micro-tiles,
//      handed out dynamically, largest first; each packs its rows of op(A) (or reads them in
//      place: sgemm_block) and runs the macro-kernel on the packed B (a one-row-block problem
//      packs its B here, into the thread's own L2-sized buffer, as there is nothing to share).
//      Packing B per item re-packed a 512-token expert's weights once per 96 rows: as much
//      copying as multiplying. A one-row-block item of C = A·Bᵀ (an expert's forward) is
//      computed transposed instead, reading B in place (sgemm_rows_item).
// Which thread computes an item changes nothing: each C element is still summed over K in the
// fixed SGEMM_KC blocks, so the results are the same bits for any thread count and equal to
// sgemm_blocked's.
typedef struct SgemmProblem {
    int M, N, K;       // this problem's shape
    const float* A;    // op(A) is M×K, leading dimension lda (shared by all problems)
    const float* B;    // op(B) is K×N, leading dimension ldb
    float* C;          // M×N, leading dimension ldc
    int causal;        // SGEMM_FULL (0), or what may be skipped (SGEMM_C_LOWER, _A_LOWER, _A_UPPER)
    // Optional (NULL: none): run on each item's block of C, rows [ic, ic+mc) × columns [jc, jc+nc),
    // as soon as the block is final, by the thread that computed it, while the block is still in
    // its caches (an expert's bias and GELU after its first matmul, moe.h). ctx is the epilogue's.
    void (*epilogue)(const struct SgemmProblem* p, int ldc, int ic, int mc, int jc, int nc);
    const void* ctx;
} SgemmProblem;

// ----------------------------------------------------------------------------
// One item of a one-row-block problem C = A · Bᵀ (transA 0, transB 1: an expert's forward, x times
// its weights W stored out × in), computed as its transpose Cᵀ = W · xᵀ: W's rows are read in place
// by sgemm_kernel_rows and only x (M <= SGEMM_MC_BATCH rows) is packed, as B slivers of NR tokens. The
// usual order packs all of W's kc × nc block for M rows of work: at 64 tokens that copy was a
// fifth of the matmul, and more when W came from memory. Columns [jc, jc+nc) of C; each element is
// summed exactly as sgemm_blocked sums it (same K blocks, same order within a block). Each MR × NR
// tile of Cᵀ goes into C through a transpose (8 tokens at a time when MR is 8: sgemm_transpose8).
// Measured and left as is: when C's rows are 2 KiB apart (the hidden layer, H = 512) a tile's 32
// rows share two L1 sets, and each line is written in halves a sliver's call apart; with 16 floats
// of slack per row (a test harness) the fc forward at E = 64 ran 1.28x as fast on 2 threads, 1.06x
// with uneven blocks. A padded staging copy of the item's block, copied into C at the end, gained
// only when both threads ran in lockstep (even blocks) and lost 1-4% on 1 thread and with AVX2.
static void sgemm_rows_item(const SgemmProblem* p, int lda, int ldb, int ldc, int jc, int nc, int accumulate,
                            float* bpack) {
    for (int pc = 0; pc < p->K; pc += SGEMM_KC) {
        int kc = p->K - pc < SGEMM_KC ? p->K - pc : SGEMM_KC;
        int add = accumulate == SGEMM_ACCUMULATE || pc > 0;   // (does not stream)
        sgemm_pack_B(1, p->A, lda, pc, kc, 0, p->M, bpack);   // op(B') = xᵀ: slivers of NR tokens
        for (int ir = 0; ir < nc; ir += SGEMM_MR) {
            int mr = nc - ir < SGEMM_MR ? nc - ir : SGEMM_MR;
            const float* w = p->B + (size_t)(jc + ir) * ldb + pc;   // MR rows of W, kc floats each
            size_t ldw = (size_t)ldb;
            float wpad[SGEMM_MR * SGEMM_KC];
            if (mr < SGEMM_MR) {   // ragged last rows: a zero-padded copy, so no read runs past W
                for (int r = 0; r < SGEMM_MR; r++)
                    for (int q = 0; q < kc; q++) wpad[r * kc + q] = r < mr ? w[(size_t)r * ldb + q] : 0.0f;
                w = wpad;
                ldw = (size_t)kc;
            }
            for (int js = 0; js < p->M; js += SGEMM_NR) {
                int ncol = p->M - js < SGEMM_NR ? p->M - js : SGEMM_NR;
                float t[SGEMM_MR * SGEMM_NR] __attribute__((aligned(64)));
                // the next MR rows of W are prefetched during this panel's last sliver only: issued
                // during every sliver, they came into L1 while this panel's rows were still needed
                // there (E = 64 at 64 tokens, W from memory, alternated in one process, 2 threads:
                // the fc and fcproj forward 0.965-0.989 and 0.953-0.962 of the time; 128 and 256
                // tokens 0.97-0.98; AVX2 0.93-0.94; at 32 tokens there is one sliver: unchanged)
                const float* next = js + SGEMM_NR >= p->M ? w + SGEMM_MR * ldw : NULL;
                if (ncol <= SGEMM_NR / 2) sgemm_kernel_rows_half(kc, w, ldw, next, ldw, bpack + (size_t)js * kc, t, SGEMM_NR, SGEMM_OVERWRITE);
                else sgemm_kernel_rows(kc, w, ldw, next, ldw, bpack + (size_t)js * kc, t, SGEMM_NR, SGEMM_OVERWRITE);
                float* c = p->C + (size_t)js * ldc + jc + ir;   // t[r][col] is C(js + col, jc + ir + r)
                int col = 0;
                if (SGEMM_MR == 8 && mr == 8) {   // 8 columns of t at a time, transposed into C's rows
                    for (; col + 8 <= ncol; col += 8) {
                        if (add) {
                            float tt[64];
                            sgemm_transpose8(t + col, SGEMM_NR, tt, 8);
                            for (int q = 0; q < 8; q++)
                                for (int r = 0; r < 8; r++) c[(size_t)(col + q) * ldc + r] += tt[q * 8 + r];
                        } else {
                            sgemm_transpose8(t + col, SGEMM_NR, c + (size_t)col * ldc, (size_t)ldc);
                        }
                    }
                }
                for (; col < ncol; col++) {
                    float* cc = c + (size_t)col * ldc;
                    for (int r = 0; r < mr; r++) cc[r] = add ? cc[r] + t[r * SGEMM_NR + col] : t[r * SGEMM_NR + col];
                }
            }
        }
    }
}

// The general case of an item (sgemm_item, below): its K blocks in order, B packed here one K block
// at a time, or read from bshared (phase 1's packing of all of p's op(B)). Measured and left out:
// a one-row-block item with transB 0 (an expert's dinp) reading W in place in the rows kernel,
// each sliver a row of NR floats ldb apart, instead of packing it: 0.72 (fcproj) and 0.88 (fc) of
// the speed at E = 64, 0.94 and 0.97 at E = 128 (6 alternated pairs on a Xeon): rows 1-2 KiB
// apart fall in a few L1 sets, so each strip of A fetched the sliver again from L2.
static void sgemm_item_blocks(int transA, int transB, const SgemmProblem* p, int lda, int ldb, int ldc, int accumulate,
                              int ic, int mc, int jc, int nc, const float* bshared, float* apack, float* bpack,
                              SgemmAhead* ahead) {
    size_t npad = (size_t)(p->N + SGEMM_NR - 1) / SGEMM_NR * SGEMM_NR;
    // the first K block computed overwrites C unless accumulating; it streams only if it is
    // the only one (later blocks read C back)
    int mode = accumulate == SGEMM_STREAM && p->K > SGEMM_KC ? SGEMM_OVERWRITE : accumulate;
    for (int pc = 0; pc < p->K; pc += SGEMM_KC) {
        int kc = p->K - pc < SGEMM_KC ? p->K - pc : SGEMM_KC;
        // K blocks where op(A) is zero on all the item's rows (a tile with no k left writes
        // zeros when it does not add, so C is defined wherever it is needed)
        if (p->causal == SGEMM_A_LOWER && pc >= ic + mc && mode == SGEMM_ACCUMULATE) break;
        if (p->causal == SGEMM_A_UPPER && pc + kc <= ic && pc + kc < p->K) continue;
        const float* b = bpack;
        if (bshared != NULL) b = bshared + (size_t)pc * npad + (size_t)jc * kc;
        else sgemm_pack_B(transB, p->B, ldb, pc, kc, jc, nc, bpack);
        sgemm_block(transA, p->A, lda, ic, mc, jc, nc, pc, kc, apack, b, p->C, ldc, mode, p->causal, ahead);
        mode = SGEMM_ACCUMULATE;
    }
    if (accumulate == SGEMM_STREAM) sgemm_store_fence();   // streamed stores done before the team's barrier
}

// One item of a batch: rows [ic, ic+mc) × columns [jc, jc+nc) of problem p's C, computed by the
// calling thread with its packing buffers, then p's epilogue on that block. bshared: p's op(B) as
// phase 1 packed it (all K blocks), or NULL: pack it here.
static void sgemm_item(int transA, int transB, const SgemmProblem* p, int lda, int ldb, int ldc, int accumulate,
                       int ic, int mc, int jc, int nc, const float* bshared, float* apack, float* bpack, SgemmAhead* ahead) {
    if (p->K <= 0) {
        if (accumulate != SGEMM_ACCUMULATE) for (int i = 0; i < mc; i++) memset(p->C + (size_t)(ic + i) * ldc + jc, 0, (size_t)nc * sizeof(float));
    } else if (p->causal == SGEMM_C_LOWER && jc >= ic + mc) {
        return;   // wholly above the diagonal
    } else if (p->M <= SGEMM_MC_BATCH && transA == 0 && transB == 1 && p->causal == SGEMM_FULL) {
        sgemm_rows_item(p, lda, ldb, ldc, jc, nc, accumulate, bpack);
    } else {
        sgemm_item_blocks(transA, transB, p, lda, ldb, ldc, accumulate, ic, mc, jc, nc, bshared, apack, bpack, ahead);
    }
    if (p->epilogue != NULL) p->epilogue(p, ldc, ic, mc, jc, nc);
}

static float*  sgemm_bshared = NULL;    // phase 1's packed B of every problem, grown only
static size_t  sgemm_bshared_floats = 0;
static size_t* sgemm_boffset = NULL;    // (count + 1) offsets of each problem's packed B
static int     sgemm_boffset_count = 0;

// Phase 2's items, largest first: with dynamic scheduling a thread that takes a large item last
// leaves the others idle until it is done (routing is uneven: an expert may get 4x its share of
// tokens), so the small items are kept for the end. Which thread computes an item changes no bits.
typedef struct {
    int q, ic, mc, jc, nc;   // problem q's rows [ic, ic+mc) × columns [jc, jc+nc)
    double work;             // mc · nc · K
} SgemmItem;
static SgemmItem* sgemm_items = NULL;
static long long  sgemm_items_cap = 0;
static int sgemm_item_larger(const void* x, const void* y) {   // by work, descending; then by position
    const SgemmItem *a = (const SgemmItem*)x, *b = (const SgemmItem*)y;
    if (a->work != b->work) return a->work > b->work ? -1 : 1;
    if (a->q != b->q) return a->q < b->q ? -1 : 1;
    if (a->ic != b->ic) return a->ic < b->ic ? -1 : 1;
    return (a->jc > b->jc) - (a->jc < b->jc);
}

#define SGEMM_PACK_SLIVERS 8            // phase 1 work unit: up to 8 slivers of one K block

static void sgemm_batch(int transA, int transB, const SgemmProblem* probs, int count, int lda, int ldb,
                        int ldc, int accumulate) {
    if (count > sgemm_boffset_count) {
        size_t* o = (size_t*)realloc(sgemm_boffset, (size_t)(count + 1) * sizeof(size_t));
        if (o == NULL) { fprintf(stderr, "matmul.h: out of memory\n"); exit(EXIT_FAILURE); }
        sgemm_boffset = o;
        sgemm_boffset_count = count;
    }
    // problem q's packed B (if shared): K blocks of kc × (N rounded up to NR), at sgemm_boffset[q]; count the
    // phase-1 units and the phase-2 items (row blocks of SGEMM_MC_BATCH × column blocks of SGEMM_NC)
    long long items = 0, units = 0;
    size_t total = 0;
    for (int q = 0; q < count; q++) {
        sgemm_boffset[q] = total;
        const SgemmProblem* p = &probs[q];
        if (p->M <= 0 || p->N <= 0) continue;
        items += (long long)((p->M + SGEMM_MC_BATCH - 1) / SGEMM_MC_BATCH) * ((p->N + SGEMM_NC - 1) / SGEMM_NC);
        if (p->K <= 0 || p->M <= SGEMM_MC_BATCH) continue;
        long long slivers = (p->N + SGEMM_NR - 1) / SGEMM_NR;
        units += (long long)((p->K + SGEMM_KC - 1) / SGEMM_KC) * ((slivers + SGEMM_PACK_SLIVERS - 1) / SGEMM_PACK_SLIVERS);
        total += (size_t)p->K * slivers * SGEMM_NR;
    }
    sgemm_boffset[count] = total;
    if (items == 0) return;
    if (items > sgemm_items_cap) {
        SgemmItem* it = (SgemmItem*)realloc(sgemm_items, (size_t)items * sizeof(SgemmItem));
        if (it == NULL) { fprintf(stderr, "matmul.h: out of memory\n"); exit(EXIT_FAILURE); }
        sgemm_items = it;
        sgemm_items_cap = items;
    }
    long long n_items = 0;
    for (int q = 0; q < count; q++) {
        const SgemmProblem* p = &probs[q];
        if (p->M <= 0 || p->N <= 0) continue;
        for (int ic = 0; ic < p->M; ic += SGEMM_MC_BATCH)
            for (int jc = 0; jc < p->N; jc += SGEMM_NC) {
                int mc = p->M - ic < SGEMM_MC_BATCH ? p->M - ic : SGEMM_MC_BATCH;
                int nc = p->N - jc < SGEMM_NC ? p->N - jc : SGEMM_NC;
                sgemm_items[n_items++] = (SgemmItem){q, ic, mc, jc, nc, (double)mc * nc * (p->K > 0 ? p->K : 1)};
            }
    }
    qsort(sgemm_items, (size_t)n_items, sizeof(SgemmItem), sgemm_item_larger);
    if (total > sgemm_bshared_floats) {
        free(sgemm_bshared);
        sgemm_bshared = sgemm_alloc(total);
        sgemm_bshared_floats = total;
    }
    int nthreads = 1;
#ifdef _OPENMP
    nthreads = omp_get_max_threads();
#endif
    sgemm_reserve(nthreads);
    // Fetch ahead (SgemmAhead) when most items pack their B from memory with A read in place by
    // rows: an expert dinp's items at <= 256 tokens (E = 64, 128). Only then: a claim made early
    // holds an item back from the other threads, which unbalances a batch of a few large items
    // (E = 8's weight gradients: 1.10x slower when every batch claimed ahead).
    long long per_item_b = 0;
    for (long long i = 0; i < n_items; i++) per_item_b += probs[sgemm_items[i].q].M <= SGEMM_MC_BATCH;
    int fetch_ahead = transA == 0 && transB == 0 && 2 * per_item_b >= n_items;
    long long claimed = 0;   // phase 2's next unclaimed item (shared)
#ifdef _OPENMP
    #pragma omp parallel num_threads(nthreads)
#endif
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        // phase 1: unit u -> problem q, K block kb, sliver group g
        if (units > 0) {   // (the same on every thread: all or none meet the barrier after it)
#ifdef _OPENMP
            #pragma omp for schedule(dynamic, 1)
#endif
            for (long long u = 0; u < units; u++) {
                long long left = u;
                int q = 0, kb = 0, g = 0;
                for (; q < count; q++) {
                    const SgemmProblem* p = &probs[q];
                    if (p->M <= SGEMM_MC_BATCH || p->N <= 0 || p->K <= 0) continue;
                    long long groups = ((p->N + SGEMM_NR - 1) / SGEMM_NR + SGEMM_PACK_SLIVERS - 1) / SGEMM_PACK_SLIVERS;
                    long long here = (long long)((p->K + SGEMM_KC - 1) / SGEMM_KC) * groups;
                    if (left < here) { kb = (int)(left / groups); g = (int)(left % groups); break; }
                    left -= here;
                }
                const SgemmProblem* p = &probs[q];
                int pc = kb * SGEMM_KC, kc = p->K - pc < SGEMM_KC ? p->K - pc : SGEMM_KC;
                int j0 = g * SGEMM_PACK_SLIVERS * SGEMM_NR, nc = p->N - j0 < SGEMM_PACK_SLIVERS * SGEMM_NR ? p->N - j0 : SGEMM_PACK_SLIVERS * SGEMM_NR;
                size_t npad = (size_t)(p->N + SGEMM_NR - 1) / SGEMM_NR * SGEMM_NR;
                sgemm_pack_B(transB, p->B, ldb, pc, kc, j0, nc, sgemm_bshared + sgemm_boffset[q] + (size_t)pc * npad + (size_t)j0 * kc);
            }
        }  // (the implied barrier: every shared B is packed before any item uses it)
        // phase 2: the items, largest first, each thread taking the next unclaimed one; it claims
        // the one after before computing the current, so that it can fetch that item's B ahead
        float* apack = sgemm_apack[tid];
        float* bpack = sgemm_bpack[tid];
        long long it, after = -1;
#ifdef _OPENMP
        #pragma omp atomic capture
#endif
        it = claimed++;
        while (it < items) {
            if (fetch_ahead) {
#ifdef _OPENMP
                #pragma omp atomic capture
#endif
                after = claimed++;
            }
            SgemmAhead ahead = {NULL, 0, 1, 0, 0};
            if (fetch_ahead && after < items) {
                const SgemmItem* wn = &sgemm_items[after];
                const SgemmProblem* pn = &probs[wn->q];
                if (pn->M <= SGEMM_MC_BATCH && pn->K > 0) {   // (it packs its own B: it has one row block)
                    ahead = (SgemmAhead){pn->B + wn->jc, (size_t)ldb, (wn->nc + SGEMM_KC - 1) / SGEMM_KC, 0, 0};
                    ahead.total = (pn->K + SGEMM_MR - 1) / SGEMM_MR * ahead.chunks_per_row;
                }
            }
            const SgemmItem* w = &sgemm_items[it];
            const SgemmProblem* p = &probs[w->q];
            int ic = w->ic, mc = w->mc, jc = w->jc, nc = w->nc;
            const float* bshared = p->M > SGEMM_MC_BATCH ? sgemm_bshared + sgemm_boffset[w->q] : NULL;
            sgemm_item(transA, transB, p, lda, ldb, ldc, accumulate, ic, mc, jc, nc, bshared, apack, bpack, &ahead);
            if (!fetch_ahead) {
#ifdef _OPENMP
                #pragma omp atomic capture
#endif
                after = claimed++;
            }
            it = after;
        }
    }
}

// One problem computed wholly by the calling thread, with its own packing buffers, for callers that
// run their own parallel loop over independent problems (attention: each thread takes whole heads,
// so that a head's T×T scores stay in its L2 from one matmul through the softmax to the next).
// Call sgemm_reserve_threads() before that parallel region. The items are sgemm_batch's, each
// computed the same way (B packed per item instead of once per problem: the same values), so the
// bits are sgemm_batch's and sgemm_blocked's.
static void sgemm_reserve_threads(void) {
#ifdef _OPENMP
    sgemm_reserve(omp_get_max_threads());
#else
    sgemm_reserve(1);
#endif
}
static void sgemm_problem(int transA, int transB, const SgemmProblem* p, int lda, int ldb, int ldc, int accumulate) {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    for (int ic = 0; ic < p->M; ic += SGEMM_MC_BATCH) {
        int mc = p->M - ic < SGEMM_MC_BATCH ? p->M - ic : SGEMM_MC_BATCH;
        for (int jc = 0; jc < p->N; jc += SGEMM_NC) {
            int nc = p->N - jc < SGEMM_NC ? p->N - jc : SGEMM_NC;
            sgemm_item(transA, transB, p, lda, ldb, ldc, accumulate, ic, mc, jc, nc, NULL, sgemm_apack[tid], sgemm_bpack[tid], NULL);
        }
    }
}

// ----------------------------------------------------------------------------
// The entry point. Small problems take the plain loops (no packing, one thread); the choice
// depends only on the shape, so results still do not depend on the thread count.

static void sgemm(int transA, int transB, int M, int N, int K,
                  const float* A, int lda, const float* B, int ldb,
                  float* C, int ldc, int accumulate) {
    if ((long long)M * N * K < SGEMM_SMALL) {
        sgemm_scalar(transA, transB, M, N, K, A, lda, B, ldb, C, ldc, accumulate);
    } else {
        sgemm_blocked(transA, transB, M, N, K, A, lda, B, ldb, C, ldc, accumulate);
    }
}
