// matmul.h: a small, deterministic fp32 SGEMM for the CPU, structured like BLIS.
//
//   C[M,N] = (accumulate ? C : 0) + op(A)[M,K] · op(B)[K,N]      (row-major float32)
//
// The model uses it for all three matmul shapes (weights stored out×in, as in llm.c):
//   forward      out(BT,OC)  = inp(BT,C) · Wᵀ        sgemm(0,1, BT,OC,C,  inp,C,  W,C,    out,OC, 0)
//   backward     dinp(BT,C) += dout(BT,OC) · W      sgemm(0,0, BT,C,OC,  dout,OC, W,C,   dinp,C, 1)
//   weight grad  dW(OC,C)   += doutᵀ · inp          sgemm(1,0, OC,C,BT,  dout,OC, inp,C, dW,C,   1)
//
// How it works (the five loops of BLIS, read top to bottom below):
//   for jc over N in steps of SGEMM_NC                    columns of C whose B panel is packed at once
//     for pc over K in steps of SGEMM_KC                  one K block: pack B[pc:pc+kc, jc:jc+nc]
//       parallel for over output tiles (rows × columns)   each thread packs its A block, then
//         for jr over the tile's 16-wide B slivers          (B sliver stays in L1)
//           for ir over the tile's 6-tall A panels           (A block stays in L2)
//             micro-kernel: a 6×16 block of C += A panel · B sliver, kc steps of rank-1 updates
//
// Determinism: every C element is computed the same way whatever the thread count. K is cut at
// fixed multiples of SGEMM_KC; inside a block the micro-kernel sums p = 0..kc-1 in order into a
// register, then adds that register to C once; blocks are added in increasing pc. A thread only
// decides *which* tiles it computes, never how a tile is summed, and threads never split K.
//
// Not thread safe: the packing buffers are static, so call sgemm from serial code (it runs its own
// OpenMP team). Each program that includes this header gets its own buffers.
#pragma once

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

// ----------------------------------------------------------------------------
// Blocking sizes. KC is part of the numerical contract (it fixes where K is cut), the rest only
// change speed. Sized for 48 KiB L1d / 2 MiB L2 per core:
//   B sliver  KC×NR = 256×16 floats = 16 KiB  -> L1, reused by every A panel of the tile
//   A panel   MR×KC = 6×256 floats  =  6 KiB  -> L1, streamed
//   A block   MC×KC = 96×256 floats = 96 KiB  -> L2, reused by every B sliver of the tile
//   B panel   KC×NC = 256×2048      =  2 MiB  -> L2/L3, shared by the threads

#define SGEMM_MR 6      // micro-tile rows    (6×16 uses 12 of the 16 ymm registers as accumulators)
#define SGEMM_NR 16     // micro-tile columns (two 8-float ymm vectors)
#ifndef SGEMM_KC
#define SGEMM_KC 256
#endif
#ifndef SGEMM_MC
#define SGEMM_MC 96     // max rows of a tile (16 A panels), a multiple of MR
#endif
#ifndef SGEMM_NT
#define SGEMM_NT 256    // preferred columns of a tile (16 B slivers), a multiple of NR
#endif
#ifndef SGEMM_NC
#define SGEMM_NC 2048
#endif
// Below this many multiply-adds, packing costs more than it saves: use the plain loops.
#ifndef SGEMM_SMALL
#define SGEMM_SMALL 32768
#endif

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
            *c = accumulate ? *c + sum : sum;
        }
    }
}

// ----------------------------------------------------------------------------
// Micro-kernels: c(6×16) = (add ? c : 0) + a · b, where
//   a is a packed A panel: kc columns of 6 floats, a[p*6 + r]    = A(i0+r, pc+p)
//   b is a packed B sliver: kc rows of 16 floats,  b[p*16 + col] = B(pc+p, j0+col)
// The sum over p is done in registers starting from 0, then added to c once (so "add" never
// changes the order of the sum over p). The scalar version is the definition; the AVX2 one must
// compute exactly the same thing, one fused multiply-add per (p, r, col).

// (static inline: with AVX2 it is only the readers' and tests' version, so no unused warning)
static inline void sgemm_kernel_scalar(int kc, const float* a, const float* b,
                                float* c, int ldc, int add) {
    float acc[SGEMM_MR][SGEMM_NR] = {{0.0f}};
    for (int p = 0; p < kc; p++) {
        for (int r = 0; r < SGEMM_MR; r++) {
            for (int col = 0; col < SGEMM_NR; col++) {
                acc[r][col] += a[p * SGEMM_MR + r] * b[p * SGEMM_NR + col];
            }
        }
    }
    for (int r = 0; r < SGEMM_MR; r++) {
        for (int col = 0; col < SGEMM_NR; col++) {
            float* cc = &c[(size_t)r * ldc + col];
            *cc = add ? *cc + acc[r][col] : acc[r][col];
        }
    }
}

#if defined(__AVX2__) && defined(__FMA__)
// One k step is a rank-1 update: load 16 floats of b (2 vectors), and for each of the 6 rows
// broadcast a[r] and do 2 FMAs. 12 independent accumulators hide the 4-cycle FMA latency on two
// FMA ports; 8 loads per 12 FMAs fit in the load ports. Written out by row so that gcc keeps all
// 12 accumulators in registers.
static void sgemm_kernel_avx2(int kc, const float* a, const float* b,
                              float* c, int ldc, int add) {
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    // C is touched only at the end, and for big outputs it is not in cache: start fetching its
    // 6 rows now (first and last float of each 16-float row) so the loads at the end do not stall.
    for (int r = 0; r < SGEMM_MR; r++) {
        _mm_prefetch((const char*)(c + (size_t)r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char*)(c + (size_t)r * ldc + SGEMM_NR - 1), _MM_HINT_T0);
    }
    for (int p = 0; p < kc; p++) {
        __m256 b0 = _mm256_load_ps(b);
        __m256 b1 = _mm256_load_ps(b + 8);
        __m256 ar;
        ar = _mm256_broadcast_ss(a + 0); c00 = _mm256_fmadd_ps(ar, b0, c00); c01 = _mm256_fmadd_ps(ar, b1, c01);
        ar = _mm256_broadcast_ss(a + 1); c10 = _mm256_fmadd_ps(ar, b0, c10); c11 = _mm256_fmadd_ps(ar, b1, c11);
        ar = _mm256_broadcast_ss(a + 2); c20 = _mm256_fmadd_ps(ar, b0, c20); c21 = _mm256_fmadd_ps(ar, b1, c21);
        ar = _mm256_broadcast_ss(a + 3); c30 = _mm256_fmadd_ps(ar, b0, c30); c31 = _mm256_fmadd_ps(ar, b1, c31);
        ar = _mm256_broadcast_ss(a + 4); c40 = _mm256_fmadd_ps(ar, b0, c40); c41 = _mm256_fmadd_ps(ar, b1, c41);
        ar = _mm256_broadcast_ss(a + 5); c50 = _mm256_fmadd_ps(ar, b0, c50); c51 = _mm256_fmadd_ps(ar, b1, c51);
        a += SGEMM_MR;
        b += SGEMM_NR;
    }
    // write back: c = acc, or c = c + acc (one rounding, same as the scalar kernel)
    #define SGEMM_STORE_ROW(r, v0, v1) do {                                         \
        float* cr = c + (size_t)(r) * ldc;                                          \
        if (add) { v0 = _mm256_add_ps(_mm256_loadu_ps(cr), v0);                     \
                   v1 = _mm256_add_ps(_mm256_loadu_ps(cr + 8), v1); }               \
        _mm256_storeu_ps(cr, v0); _mm256_storeu_ps(cr + 8, v1);                     \
    } while (0)
    SGEMM_STORE_ROW(0, c00, c01); SGEMM_STORE_ROW(1, c10, c11); SGEMM_STORE_ROW(2, c20, c21);
    SGEMM_STORE_ROW(3, c30, c31); SGEMM_STORE_ROW(4, c40, c41); SGEMM_STORE_ROW(5, c50, c51);
    #undef SGEMM_STORE_ROW
}
#define sgemm_kernel sgemm_kernel_avx2
#else
#define sgemm_kernel sgemm_kernel_scalar
#endif

// ----------------------------------------------------------------------------
// Packing: copy a block of op(A) / op(B) into the order the micro-kernel reads, zero-padding the
// ragged last panel, so the kernel streams both operands contiguously whatever the transposes.

// A rows [i0, i0+mc) × columns [pc, pc+kc) of op(A) -> ceil(mc/6) panels of kc×6 floats
static void sgemm_pack_A(int transA, const float* A, int lda, int i0, int mc, int pc, int kc,
                         float* dst) {
    for (int ir = 0; ir < mc; ir += SGEMM_MR) {
        int mr = mc - ir < SGEMM_MR ? mc - ir : SGEMM_MR;
        size_t i = (size_t)(i0 + ir);
        if (transA) {   // stored K×M: the panel's 6 values for one p are contiguous
            for (int p = 0; p < kc; p++) {
                const float* src = A + (size_t)(pc + p) * lda + i;
                for (int r = 0; r < SGEMM_MR; r++) dst[p * SGEMM_MR + r] = r < mr ? src[r] : 0.0f;
            }
        } else {        // stored M×K: each of the panel's rows is contiguous in p
            for (int r = 0; r < SGEMM_MR; r++) {
                const float* row = A + (i + r) * lda + pc;
                for (int p = 0; p < kc; p++) dst[p * SGEMM_MR + r] = r < mr ? row[p] : 0.0f;
            }
        }
        dst += (size_t)SGEMM_MR * kc;
    }
}

// one 16-wide sliver: rows [pc, pc+kc) × columns [j0, j0+nr) of op(B), nr <= 16 -> kc×16 floats
static void sgemm_pack_B(int transB, const float* B, int ldb, int pc, int kc, int j0, int nr,
                         float* dst) {
    if (!transB && nr == SGEMM_NR) {    // stored K×N: each row of the sliver is 16 contiguous floats
        for (int p = 0; p < kc; p++) {
            memcpy(dst + p * SGEMM_NR, B + (size_t)(pc + p) * ldb + j0, SGEMM_NR * sizeof(float));
        }
        return;
    }
    for (int col = 0; col < SGEMM_NR; col++) {
        if (col < nr) {
            size_t j = (size_t)(j0 + col);
            if (transB) {   // stored N×K: column j of op(B) is contiguous in p
                const float* src = B + j * ldb + pc;
                for (int p = 0; p < kc; p++) dst[p * SGEMM_NR + col] = src[p];
            } else {
                for (int p = 0; p < kc; p++) dst[p * SGEMM_NR + col] = B[(size_t)(pc + p) * ldb + j];
            }
        } else {
            for (int p = 0; p < kc; p++) dst[p * SGEMM_NR + col] = 0.0f;
        }
    }
}

// ----------------------------------------------------------------------------
// Packing buffers: allocated on first use and grown only, never freed, so that steady-state calls
// do not allocate. One shared B panel; one A block per thread (separate 64-byte aligned
// allocations, so threads never write the same cache line).

static float*  sgemm_bpack = NULL;     // KC × round_up(NC, NR) floats at most
static size_t  sgemm_bpack_floats = 0;
static float** sgemm_apack = NULL;     // sgemm_apack[thread]: MC × KC floats
static int     sgemm_apack_count = 0;

static float* sgemm_alloc(size_t floats) {
    size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;  // aligned_alloc wants a multiple
    float* p = (float*)aligned_alloc(64, bytes);
    if (p == NULL) {
        fprintf(stderr, "matmul.h: could not allocate %zu bytes of packing buffer\n", bytes);
        exit(EXIT_FAILURE);
    }
    return p;
}

static void sgemm_reserve(int nthreads, size_t bpack_floats) {
    if (bpack_floats > sgemm_bpack_floats) {
        free(sgemm_bpack);
        sgemm_bpack = sgemm_alloc(bpack_floats);
        sgemm_bpack_floats = bpack_floats;
    }
    if (nthreads > sgemm_apack_count) {
        float** grown = (float**)realloc(sgemm_apack, (size_t)nthreads * sizeof(float*));
        if (grown == NULL) { fprintf(stderr, "matmul.h: out of memory\n"); exit(EXIT_FAILURE); }
        sgemm_apack = grown;
        for (int t = sgemm_apack_count; t < nthreads; t++) {
            sgemm_apack[t] = sgemm_alloc((size_t)SGEMM_MC * SGEMM_KC);
        }
        sgemm_apack_count = nthreads;
    }
}

// ----------------------------------------------------------------------------
// The blocked, packed, parallel path. Same contract as sgemm_scalar (the test calls it directly so
// that tiny edge shapes exercise the packing and edge-tile code too).

static int sgemm_ceil_div(int a, int b) { return (a + b - 1) / b; }

static void sgemm_blocked(int transA, int transB, int M, int N, int K,
                          const float* A, int lda, const float* B, int ldb,
                          float* C, int ldc, int accumulate) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {   // op(A)·op(B) is all zeros
        if (!accumulate) {
            for (int i = 0; i < M; i++) memset(C + (size_t)i * ldc, 0, (size_t)N * sizeof(float));
        }
        return;
    }
    int nthreads = 1;
#ifdef _OPENMP
    nthreads = omp_get_max_threads();
#endif
    int nc_max = N < SGEMM_NC ? N : SGEMM_NC;
    int kc_max = K < SGEMM_KC ? K : SGEMM_KC;
    sgemm_reserve(nthreads, (size_t)kc_max * sgemm_ceil_div(nc_max, SGEMM_NR) * SGEMM_NR);
    float* bpack = sgemm_bpack;
    float** apack = sgemm_apack;

    #pragma omp parallel num_threads(nthreads)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float* my_apack = apack[tid];
        for (int jc = 0; jc < N; jc += SGEMM_NC) {
            int nc = N - jc < SGEMM_NC ? N - jc : SGEMM_NC;
            // Cut the M×nc block of C into tiles of whole micro-tiles: at most MC rows, about NT
            // columns, panels shared out evenly. Then make the tile count a multiple of the thread
            // count where possible so the static schedule is balanced. (Only speed depends on this.)
            int m_panels = sgemm_ceil_div(M, SGEMM_MR);
            int n_panels = sgemm_ceil_div(nc, SGEMM_NR);
            int m_tiles = sgemm_ceil_div(m_panels, SGEMM_MC / SGEMM_MR);
            int n_tiles = sgemm_ceil_div(n_panels, SGEMM_NT / SGEMM_NR);
            while ((m_tiles * n_tiles) % nthreads != 0 || m_tiles * n_tiles < nthreads) {
                if (n_tiles < n_panels) n_tiles++;
                else if (m_tiles < m_panels) m_tiles++;
                else break;
            }
            int n_tiles_total = m_tiles * n_tiles;

            for (int pc = 0; pc < K; pc += SGEMM_KC) {
                int kc = K - pc < SGEMM_KC ? K - pc : SGEMM_KC;
                int add = accumulate || pc > 0;   // the first K block overwrites C unless accumulating

                // all threads pack the shared B panel, one 16-wide sliver at a time
                #pragma omp for schedule(static)
                for (int s = 0; s < n_panels; s++) {
                    int nr = nc - s * SGEMM_NR < SGEMM_NR ? nc - s * SGEMM_NR : SGEMM_NR;
                    sgemm_pack_B(transB, B, ldb, pc, kc, jc + s * SGEMM_NR, nr,
                                 bpack + (size_t)s * kc * SGEMM_NR);
                }
                // (implicit barrier: the B panel is complete)

                int packed_tm = -1;   // which tile row this thread's A block holds for this pc
                #pragma omp for schedule(static)
                for (int t = 0; t < n_tiles_total; t++) {
                    int tm = t / n_tiles, tn = t % n_tiles;
                    int pm0 = tm * m_panels / m_tiles, pm1 = (tm + 1) * m_panels / m_tiles;
                    int pn0 = tn * n_panels / n_tiles, pn1 = (tn + 1) * n_panels / n_tiles;
                    int i0 = pm0 * SGEMM_MR;
                    int i1 = pm1 * SGEMM_MR < M ? pm1 * SGEMM_MR : M;
                    if (tm != packed_tm) {   // consecutive tiles of a thread often share the A block
                        sgemm_pack_A(transA, A, lda, i0, i1 - i0, pc, kc, my_apack);
                        packed_tm = tm;
                    }
                    for (int jr = pn0; jr < pn1; jr++) {
                        const float* b = bpack + (size_t)jr * kc * SGEMM_NR;
                        int j = jc + jr * SGEMM_NR;
                        int nr = N - j < SGEMM_NR ? N - j : SGEMM_NR;
                        for (int ir = pm0; ir < pm1; ir++) {
                            const float* a = my_apack + (size_t)(ir - pm0) * kc * SGEMM_MR;
                            int i = ir * SGEMM_MR;
                            int mr = M - i < SGEMM_MR ? M - i : SGEMM_MR;
                            float* c = C + (size_t)i * ldc + j;
                            if (mr == SGEMM_MR && nr == SGEMM_NR) {
                                sgemm_kernel(kc, a, b, c, ldc, add);
                            } else {
                                // edge tile: compute the full 6×16 into a scratch tile, then
                                // add/copy the valid part. c + acc is the same single rounding
                                // the kernel does in place, so edges sum exactly like interiors.
                                float tile[SGEMM_MR * SGEMM_NR];
                                sgemm_kernel(kc, a, b, tile, SGEMM_NR, 0);
                                for (int r = 0; r < mr; r++) {
                                    for (int col = 0; col < nr; col++) {
                                        float* cc = c + (size_t)r * ldc + col;
                                        *cc = add ? *cc + tile[r * SGEMM_NR + col] : tile[r * SGEMM_NR + col];
                                    }
                                }
                            }
                        }
                    }
                }
                // (implicit barrier: nobody repacks B while another thread still reads it)
            }
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
