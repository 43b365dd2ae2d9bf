/*
moe.h — a Mixture-of-Experts GPT-2, forward and backward by hand.

Read top to bottom: utilities, the config, the ops (each forward with its backward beside it),
the model (one parameter buffer, one activation buffer), the routers (routers.h, included there),
the MoE layer (dispatch, experts, combine; CompeteSMoE's competition step), the whole model's
forward and backward, AdamW, checkpoints. docs/model.md describes the model and its training
equations, docs/routers.md every router's equations and gradients; the checkpoint layout is in
the comment above moe_save_checkpoint (and README.md).

Conventions (as llm.c): weights are stored out x in, y = x W^T + b. Backward functions ACCUMULATE
(+=) into gradient buffers, so a tensor used twice just receives two contributions. Shapes use these
letters: B batch, T time, C channels, V vocab, Vp padded vocab, L layers, NH heads,
E experts, K experts per token, H expert hidden size, N = B*T tokens.

Determinism: same flags + seed + thread count => bit-identical losses. So: no float atomics,
static OpenMP schedules, every reduction in a fixed order, expert outputs combined per token in
ascending expert order.
*/
#ifndef MOE_H
#define MOE_H

#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <stdarg.h>
#include <math.h>
#include <errno.h>
#include <unistd.h>
#include <time.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <zlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "matmul.h"
#if defined(__x86_64__) || defined(__SSE__)
#include <xmmintrin.h>   // (_mm_getcsr: subnormals_off)
#endif

// ----------------------------------------------------------------------------
// loud little helpers: print where and what, then exit (llm.c's fopenCheck & co.)

static void die(const char* fmt, ...) {
    va_list ap; va_start(ap, fmt);
    fprintf(stderr, "error: "); vfprintf(stderr, fmt, ap); fprintf(stderr, "\n");
    va_end(ap);
    exit(EXIT_FAILURE);
}

static void* malloc_check_(size_t size, const char* file, int line) {
    void* p = malloc(size > 0 ? size : 1);
    if (p == NULL) die("%s:%d: out of memory allocating %zu bytes", file, line, size);
    return p;
}
// Zeroed. Buffers of 4 MiB or more (parameters, gradients, moments, activations) are put on 2 MiB
// pages where the kernel allows it (transparent huge pages in "madvise" mode, the usual default):
// a wide MoE's weight gradients are hundreds of MB, updated in 8x32 tiles, and on 4 KiB pages the
// TLB misses of those updates cost more than the arithmetic. Each such buffer starts a different
// number of bytes past its 2 MiB boundary (its skew, a multiple of 4160 = 4 KiB + one cache line):
// buffers that all start on the boundary put element i of each at the same physical address bits
// below 2 MiB, and on a Xeon (Sapphire Rapids-class) loops that stream several of them at once ran
// at a third of the memory's speed (AdamW's p, g, m and v: 12 GB/s; skewed by 64 B to 256 KiB:
// 34-43 GB/s; a harness, 10M floats each). Free them with freeCheck, which finds the start that
// free() needs in a small table (any other pointer it hands to free() as it is).
#define HUGE_PAGE_BYTES ((size_t)2 << 20)
#define HUGE_SKEW_BYTES ((size_t)4160)
#define HUGE_SKEW_SLOTS 256
static struct { void* p; void* base; } huge_skewed[HUGE_SKEW_SLOTS];   // (returned, allocated) pairs
static size_t huge_count = 0;                                          // skewed buffers so far
static void* calloc_check_(size_t n, size_t size, const char* file, int line) {
    if (n > 0 && size > SIZE_MAX / n) die("%s:%d: allocation of %zu x %zu bytes overflows", file, line, n, size);
    size_t bytes = n * size;
    if (bytes >= 2 * HUGE_PAGE_BYTES && bytes <= SIZE_MAX - 16 * HUGE_SKEW_BYTES) {
        void* p = NULL;
        int slot = -1;
        size_t skew = 0;
        #pragma omp critical(huge_skewed)
        {
            for (int i = 0; i < HUGE_SKEW_SLOTS && slot < 0; i++) if (huge_skewed[i].p == NULL) slot = i;
            if (slot >= 0) skew = (huge_count++ % 16) * HUGE_SKEW_BYTES;   // (table full: no skew)
            if (posix_memalign(&p, HUGE_PAGE_BYTES, bytes + skew) != 0) p = NULL;
            else if (skew > 0) huge_skewed[slot].p = (char*)p + skew, huge_skewed[slot].base = p;
        }
        if (p != NULL) {
#ifdef MADV_HUGEPAGE
            madvise(p, bytes + skew, MADV_HUGEPAGE);   // a hint: without it (or refused) the pages are 4 KiB
#endif
            memset(p, 0, bytes + skew);
            return (char*)p + skew;
        }
    }
    void* p = calloc(n > 0 ? n : 1, size > 0 ? size : 1);
    if (p == NULL) die("%s:%d: out of memory allocating %zu bytes", file, line, bytes);
    return p;
}
static void free_check(void* p) {
    if (p == NULL) return;
    void* base = p;
    #pragma omp critical(huge_skewed)
    for (int i = 0; i < HUGE_SKEW_SLOTS; i++) {
        if (huge_skewed[i].p == p) { base = huge_skewed[i].base; huge_skewed[i].p = NULL; break; }
    }
    free(base);
}
#define mallocCheck(size) malloc_check_(size, __FILE__, __LINE__)
#define callocCheck(n, size) calloc_check_(n, size, __FILE__, __LINE__)
#define freeCheck(p) free_check(p)

// Refuses, with a reason, a model's buffers larger than this machine's memory, before they are
// allocated (and touched: the OS would otherwise kill the process part-way). train_moe says the
// same earlier, with the whole run's estimate, for a new model; this also covers -e, --upcycle
// and eval_moe.
static void memory_fits_or_die(double bytes, const char* what) {
    double have = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    if (have > 0 && bytes > have)
        die("%s need about %.1f GB (%.0f bytes) but this machine has %.1f GB (%.0f bytes) of memory: choose a smaller "
            "model or batch", what, bytes / 1e9, bytes, have / 1e9, have);
}

// Formats a message into a caller's error buffer and returns -1, for the "return an error" paths
// (checkpoint and file loaders) that tests exercise without exiting.
static int set_err(char* err, size_t errlen, const char* fmt, ...) {
    if (err != NULL && errlen > 0) {
        va_list ap; va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static uint32_t float_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bits_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

// ----------------------------------------------------------------------------
// random numbers. One seed, several independent streams (init, data order, sampling, the
// CompeteSMoE schedule) derived by splitmix64, so changing the use of one never shifts another.

enum { STREAM_INIT = 1, STREAM_DATA = 2, STREAM_SAMPLE = 3, STREAM_COMPETE = 4, STREAM_CORPUS = 5 };

static uint64_t splitmix64(uint64_t* state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
static uint64_t derive_seed(uint64_t seed, uint64_t stream) {
    uint64_t s = seed * 0x100000001B3ULL + stream;
    uint64_t out = splitmix64(&s);
    return out != 0 ? out : 1;  // xorshift state must not be 0
}
static uint32_t random_u32(uint64_t* state) {  // xorshift*, as llm.c
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (uint32_t)((*state * 0x2545F4914F6CDD1DULL) >> 32);
}
static float random_f32(uint64_t* state) {  // uniform in [0, 1)
    return (random_u32(state) >> 8) / 16777216.0f;
}
static float random_normal(uint64_t* state) {  // Box-Muller, one value per call
    float u1 = random_f32(state), u2 = random_f32(state);
    if (u1 < 1e-12f) u1 = 1e-12f;
    return sqrtf(-2.0f * logf(u1)) * cosf(2.0f * (float)M_PI * u2);
}

// ----------------------------------------------------------------------------
// configuration

// The routers (routers.h; docs/routers.md). The number is the checkpoint's router code.
enum { ROUTER_TOPK = 0, ROUTER_GATEPRO = 1, ROUTER_COMPETE = 2, ROUTER_AUXFREE = 3, ROUTER_XMOE = 4, NUM_ROUTERS = 5 };
enum { GATE_TOPK_SOFTMAX = 0, GATE_SOFTMAX_TOPK = 1 };
static const char* const ROUTER_NAMES[NUM_ROUTERS] = {"topk", "gatepro", "compete", "auxfree", "xmoe"};
#define XMOE_DEFAULT_DIM 16          // X-MoE's routing dimension d_e (Chi et al. 2022 use 16)
#define XMOE_INIT_TEMPERATURE 0.07f  // X-MoE's initial temperature tau
static const char* const GATE_NORM_NAMES[] = {"topk_softmax", "softmax_topk"};

typedef struct {
    int max_seq_len;        // maxT
    int vocab_size;         // V
    int padded_vocab_size;  // Vp = 128 * ceil(V / 128), unless a checkpoint says otherwise
    int num_layers;         // L
    int num_heads;          // NH
    int channels;           // C
    int n_expert;           // E
    int top_k;              // K
    int expert_hidden;      // H
    int xmoe_dim;           // De, X-MoE's routing dimension; 0 = the model has no X-MoE parameters
} MoEConfig;

// How tokens are routed. Lives beside the weights: a checkpoint trained with one router resumes
// under another, so this is settable independently of the parameters.
typedef struct {
    int router;             // ROUTER_*
    int gate_norm;          // GATE_*
    float aux_loss_coef;    // a, Switch load-balance loss
    float z_loss_coef;      // z, router z-loss
    float gatepro_lambda;   // GatePro logit penalty
    int gatepro_start;      // penalty active at step s iff start <= s and (stop < 0 or s < stop)
    int gatepro_stop;
    // CompeteSMoE (docs/routers.md): schedule and losses
    float compete_rate;        // P(a (layer, step) after warm-up competes)
    float compete_warmup;      // fraction of the total steps without competition
    int compete_max_layers;    // at most this many layers compete in one step
    int compete_weights;       // COMPETE_WEIGHTS_*: how winners' responses become weights
    float compete_alpha;       // weight of the "hybrid" winners-only term of the router loss
    float compete_router_coef; // router distillation loss L_D coefficient
    float compete_div_coef;    // diversity loss L_div coefficient
    float compete_bal_coef;    // competition balance loss coefficient
    float auxfree_rate;        // auxfree: bias update speed u
} RouterConfig;
enum { COMPETE_WEIGHTS_NORM = 0, COMPETE_WEIGHTS_SOFTMAX = 1 };
static const char* const COMPETE_WEIGHTS_NAMES[] = {"norm", "softmax"};
static const RouterConfig ROUTER_DEFAULTS = {ROUTER_TOPK, GATE_TOPK_SOFTMAX, 0.01f, 0.0f, 1e-4f, 0, -1,
                                             0.05f, 0.05f, 3, COMPETE_WEIGHTS_NORM, 0.0f, 0.01f, 0.01f, 0.01f, 1e-3f};

static int pad_vocab(int V) { return ((V + 127) / 128) * 128; }

// Returns 0 if the config is usable, else -1 with the reason in err.
static int config_check(const MoEConfig* c, char* err, size_t errlen) {
    if (c->max_seq_len < 1) return set_err(err, errlen, "max sequence length must be >= 1 (got %d)", c->max_seq_len);
    if (c->vocab_size < 2) return set_err(err, errlen, "vocab size must be >= 2 (got %d)", c->vocab_size);
    if (c->padded_vocab_size < c->vocab_size)
        return set_err(err, errlen, "padded vocab %d < vocab %d", c->padded_vocab_size, c->vocab_size);
    if (c->num_layers < 1) return set_err(err, errlen, "layers must be >= 1 (got %d)", c->num_layers);
    if (c->channels < 1 || c->num_heads < 1) return set_err(err, errlen, "channels and heads must be >= 1");
    if (c->channels % c->num_heads != 0)
        return set_err(err, errlen, "channels C=%d must be divisible by heads NH=%d", c->channels, c->num_heads);
    if (c->n_expert < 1) return set_err(err, errlen, "experts E must be >= 1 (got %d)", c->n_expert);
    if (c->top_k < 1 || c->top_k > c->n_expert)
        return set_err(err, errlen, "top-k K=%d must satisfy 1 <= K <= E=%d", c->top_k, c->n_expert);
    if (c->expert_hidden < 1) return set_err(err, errlen, "expert hidden H must be >= 1 (got %d)", c->expert_hidden);
    if (c->xmoe_dim < 0 || c->xmoe_dim > 256) return set_err(err, errlen, "X-MoE dim must be in [0, 256] (got %d)", c->xmoe_dim);
    // the parameter count in floating point first, so the size_t arithmetic after this cannot overflow
    double L = c->num_layers, C = c->channels, E = c->n_expert, H = c->expert_hidden, D = c->xmoe_dim;
    double params = ((double)c->padded_vocab_size + c->max_seq_len + 2) * C + L * (12.0 * C * C + 13 * C) +
                    L * E * (C + 2 * H * C + H + C + 1) + L * (D * C + E * D + 1);
    if (params > (double)(1LL << 40))
        return set_err(err, errlen, "the model would have %.3g parameters (%.3g bytes each for the weights, gradients "
                       "and AdamW state): too large", params, 4.0 * params);
    return 0;
}

// ----------------------------------------------------------------------------
// Time per op (train_moe --profile). When a model's `profile` is set, the forward and backward
// passes charge the wall time since the last mark to each op as it finishes (profile_lap); the
// trainer does the same for the optimizer and the metrics. Reading the clock changes no result.

enum { PROF_EMBEDDING, PROF_LAYERNORM, PROF_QKV, PROF_ATTENTION, PROF_ATTPROJ, PROF_RESIDUAL, PROF_ROUTER,
       PROF_DISPATCH, PROF_EXPERT_FFN, PROF_COMBINE, PROF_LM_HEAD, PROF_OPTIMIZER, PROF_METRICS, PROF_OPS };
static const char* const PROF_NAMES[PROF_OPS] = {
    "embedding", "layernorm", "qkv", "attention", "attproj", "residual", "router", "dispatch", "expert FFN",
    "combine", "LM head + cross-entropy", "optimizer (norm, clip, AdamW)", "metrics"};
enum { PROF_FWD = 0, PROF_BWD = 1 };

typedef struct {
    double seconds[2][PROF_OPS];  // [PROF_FWD] and [PROF_BWD]; the optimizer and metrics count as forward
    double mark;                  // the clock when the last op finished
} MoEProfile;

static double profile_clock(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}
// Starts the clock: the next lap is charged from now. Does nothing when p is NULL (not profiling).
static void profile_mark(MoEProfile* p) { if (p != NULL) p->mark = profile_clock(); }
// Charges the time since the last mark (or lap) to op of pass, and starts the next lap.
static void profile_lap(MoEProfile* p, int pass, int op) {
    if (p == NULL) return;
    double now = profile_clock();
    p->seconds[pass][op] += now - p->mark;
    p->mark = now;
}

// ----------------------------------------------------------------------------
// An exp that the compiler can vectorize. libm's expf/tanhf are calls the compiler will not
// vectorize without -ffast-math, and GELU's tanh and the softmaxes' exps were a fifth of a step.
// e^x = 2^n e^r with n = round(x / ln 2) and r = x - n ln 2 in [-ln2/2, ln2/2] (ln 2 split in a
// high and a low part so r is exact), e^r by its Taylor polynomial to degree 7 (error < 1e-8
// relative), 2^n built in the exponent bits. Inputs are clamped to [-87, 88]: exp(-87) ~ 1.6e-38
// stands in for 0, which no softmax here can tell apart.
static inline float exp_approx(float x) {
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;  // (not fminf/fmaxf: those stay calls in scalar code)
    // n = floor(t) and 2^n without a float -> int conversion and without floorf: gcc leaves a loop
    // with either of those scalar. rt is t rounded to an integer (|t| < 2^22) by the 1.5 * 2^23
    // trick; the biased exponent n + 127 is read from the low bits of n + 127 + 1.5 * 2^23.
    float t = x * 1.44269504088896341f + 0.5f;
    float rt = (t + 12582912.0f) - 12582912.0f;
    float n = rt > t ? rt - 1.0f : rt;
    float r = x - n * 0.693145751953125f;
    r = r - n * 1.428606765330187e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    float biased = n + (127.0f + 12582912.0f);
    uint32_t bits;  // unsigned: a NaN input (which stays NaN through p) must not make this shift undefined
    memcpy(&bits, &biased, 4);
    bits = (bits - 0x4B400000u) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}

// Sixteen exp_approx at once, the same operations lane by lane, so the same bits (test_moe.c checks
// it), written with GCC's vector types (gcc and clang: one zmm operation on AVX-512, two ymm on
// AVX2). In a loop of exp_approx gcc keeps the selects as branches (-ftrapping-math): on AVX2 it
// does not vectorise the loop at all, and on AVX-512 it runs the polynomial twice under masks.
// One core, 4096 elements in L1: exp 0.47 ns an element as a loop of exp_approx on AVX-512 and
// 2.4 ns on AVX2; GELU and GELU' 0.95 and 6.4 ns.
typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
static inline f32x16 load16(const float* p) { f32x16 v; memcpy(&v, p, sizeof v); return v; }
static inline void store16(float* p, f32x16 v) { memcpy(p, &v, sizeof v); }
static inline f32x16 splat16(float x) { f32x16 v; for (int i = 0; i < 16; i++) v[i] = x; return v; }
static inline f32x16 select16(i32x16 mask, f32x16 a, f32x16 b) {   // mask lanes -1: a, 0: b
    return (f32x16)((mask & (i32x16)a) | (~mask & (i32x16)b));
}
static inline float sum16(f32x16 v) {   // lanes summed in a fixed order
    float s = 0.0f;
    for (int i = 0; i < 16; i++) s += v[i];
    return s;
}
static inline f32x16 exp_approx16(f32x16 x) {
    x = select16(x < -87.0f, splat16(-87.0f), select16(x > 88.0f, splat16(88.0f), x));
    f32x16 t = x * 1.44269504088896341f + 0.5f;
    f32x16 rt = (t + 12582912.0f) - 12582912.0f;
    f32x16 n = select16(rt > t, rt - 1.0f, rt);
    f32x16 r = x - n * 0.693145751953125f;
    r = r - n * 1.428606765330187e-06f;
    f32x16 p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    u32x16 bits = ((u32x16)(n + (127.0f + 12582912.0f)) - 0x4B400000u) << 23;
    return p * (f32x16)bits;
}

// out[i] = exp_approx(x[i] - shift) for i < n (none stored when out is NULL; out may be x), and
// their sum: sixteen lanes summed apart, then the lanes in order, then the last n % 16 terms.
static float exp_sum(float* out, const float* x, float shift, int n) {
    f32x16 acc = splat16(0.0f);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        f32x16 e = exp_approx16(load16(x + i) - shift);
        if (out != NULL) store16(out + i, e);
        acc += e;
    }
    float sum = sum16(acc);
    for (; i < n; i++) {
        float e = exp_approx(x[i] - shift);
        if (out != NULL) out[i] = e;
        sum += e;
    }
    return sum;
}

// ----------------------------------------------------------------------------
// the ops. Each forward is followed by its backward.

// out (B,T,C) = wte[inp] + wpe[t]; inp (B,T) token ids
static void encoder_forward(float* out, const int* inp, const float* wte, const float* wpe, int B, int T, int C) {
    #pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            float* o = out + ((size_t)b * T + t) * C;
            const float* w = wte + (size_t)inp[b * T + t] * C;
            const float* p = wpe + (size_t)t * C;
            for (int c = 0; c < C; c++) o[c] = w[c] + p[c];
        }
    }
}
// Two tokens with the same id add into the same wte row, and the order of those additions must
// not depend on threads: each thread owns a block of channels and walks the tokens in (b,t) order.
static void encoder_backward(float* dwte, float* dwpe, const float* dout, const int* inp, int B, int T, int C) {
    #pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += 64) {
        int c1 = c0 + 64 < C ? c0 + 64 : C;
        for (int b = 0; b < B; b++) {
            for (int t = 0; t < T; t++) {
                const float* d = dout + ((size_t)b * T + t) * C;
                float* dw = dwte + (size_t)inp[b * T + t] * C;
                float* dp = dwpe + (size_t)t * C;
                for (int c = c0; c < c1; c++) { dw[c] += d[c]; dp[c] += d[c]; }
            }
        }
    }
}

// out (N,C) = (inp - mean) * rstd * weight + bias; mean, rstd (N) cached for backward
static void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                              const float* weight, const float* bias, int N, int C) {
    const float eps = 1e-5f;
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* x = inp + (size_t)n * C;
        float m = 0.0f;
        #pragma omp simd reduction(+ : m)
        for (int c = 0; c < C; c++) m += x[c];
        m /= C;
        float v = 0.0f;
        #pragma omp simd reduction(+ : v)
        for (int c = 0; c < C; c++) { float d = x[c] - m; v += d * d; }
        v /= C;
        float s = 1.0f / sqrtf(v + eps);
        float* o = out + (size_t)n * C;
        for (int c = 0; c < C; c++) o[c] = (x[c] - m) * s * weight[c] + bias[c];
        mean[n] = m;
        rstd[n] = s;
    }
}
// With xhat = (x - mean) * rstd and g = dout * weight:
//   dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat)),  dweight += sum_n dout * xhat,  dbias += sum_n dout.
// dinp is per token (parallel over N); dweight/dbias sum over tokens, parallel over channels so
// every sum runs in the same order whatever the thread count.
static void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                               const float* weight, const float* mean, const float* rstd, int N, int C) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* d = dout + (size_t)n * C;
        const float* x = inp + (size_t)n * C;
        float m = mean[n], s = rstd[n];
        float g_mean = 0.0f, gx_mean = 0.0f;
        #pragma omp simd reduction(+ : g_mean, gx_mean)
        for (int c = 0; c < C; c++) {
            float g = d[c] * weight[c];
            g_mean += g;
            gx_mean += g * (x[c] - m) * s;
        }
        g_mean /= C;
        gx_mean /= C;
        float* dx = dinp + (size_t)n * C;
        for (int c = 0; c < C; c++) {
            float xhat = (x[c] - m) * s;
            dx[c] += s * (d[c] * weight[c] - g_mean - xhat * gx_mean);
        }
    }
    // blocks of 64 channels, each summing over tokens in order (vectorised across channels)
    #pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += 64) {
        int c1 = c0 + 64 < C ? c0 + 64 : C;
        float dw[64] = {0}, db[64] = {0};
        for (int n = 0; n < N; n++) {
            const float* d = dout + (size_t)n * C;
            const float* x = inp + (size_t)n * C;
            float m = mean[n], s = rstd[n];
            for (int c = c0; c < c1; c++) { dw[c - c0] += d[c] * (x[c] - m) * s; db[c - c0] += d[c]; }
        }
        for (int c = c0; c < c1; c++) { dweight[c] += dw[c - c0]; dbias[c] += db[c - c0]; }
    }
}

// out (N,OC) = inp (N,C) . weight(OC,C)^T + bias (OC, may be NULL). The kernel is matmul.h's sgemm.
static void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int C, int OC) {
    sgemm(0, 1, N, OC, C, inp, C, weight, C, out, OC, 0);
    if (bias != NULL) {
        #pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++) {
            float* o = out + (size_t)n * OC;
            for (int j = 0; j < OC; j++) o[j] += bias[j];
        }
    }
}
// Column sums of dout (N,OC) into dbias (OC), each column summed in token order.
static void bias_backward(float* dbias, const float* dout, int N, int OC) {
    #pragma omp parallel for schedule(static)
    for (int j0 = 0; j0 < OC; j0 += 64) {
        int j1 = j0 + 64 < OC ? j0 + 64 : OC;
        float acc[64] = {0};
        for (int n = 0; n < N; n++) {
            const float* d = dout + (size_t)n * OC;
            for (int j = j0; j < j1; j++) acc[j - j0] += d[j];
        }
        for (int j = j0; j < j1; j++) dbias[j] += acc[j - j0];
    }
}
// dinp (N,C) (+)= dout (N,OC) . weight (OC,C);  dweight (OC,C) += dout^T . inp;  dbias (OC) += sum_n dout.
// dinp is added to when dinp_add, else written (the op is its only writer: no zeroing first); it may
// be NULL (nothing upstream needs it).
static void matmul_backward(float* dinp, int dinp_add, float* dweight, float* dbias, const float* dout,
                            const float* inp, const float* weight, int N, int C, int OC) {
    if (dinp != NULL) sgemm(0, 0, N, C, OC, dout, OC, weight, C, dinp, C, dinp_add ? SGEMM_ACCUMULATE : SGEMM_OVERWRITE);
    sgemm(1, 0, OC, C, N, dout, OC, inp, C, dweight, C, 1);
    if (dbias != NULL) bias_backward(dbias, dout, N, OC);
}

// Causal self-attention. qkv (B,T,3C) holds q | k | v, head h in channels [h*hs, (h+1)*hs).
// out (B,T,C); att (B,NH,T,T) holds the softmax probabilities (row t, zeros after column t) for
// backward. Per (b,h) it is two matmuls around a row softmax, S = Q K^T and O = P V. Each thread
// takes whole heads and runs a head's matmuls itself (matmul.h, sgemm_problem), so the head's T x T
// block stays in its L2 from the first matmul through the softmax to the second; all heads' S at
// once (8 MB at B=8, NH=4, T=256) made three trips through L3. Causality is the sgemm's to skip
// (matmul.h, SGEMM_C_LOWER, SGEMM_A_LOWER/_UPPER): S only on and below the diagonal, P V only over
// the columns of P that can be nonzero, at micro-tile granularity (about half the FLOPs of the full
// T x T products).
static void attention_forward(float* out, float* att, const float* qkv, int B, int T, int C, int NH) {
    int hs = C / NH, C3 = 3 * C, BH = B * NH;
    float scale = 1.0f / sqrtf((float)hs);
    sgemm_reserve_threads();
    #pragma omp parallel for schedule(static)
    for (int bh = 0; bh < BH; bh++) {
        int b = bh / NH, h = bh % NH;
        const float* q = qkv + (size_t)b * T * C3 + h * hs;   // k at q + C, v at q + 2C
        float* att_bh = att + (size_t)bh * T * T;
        SgemmProblem s = {T, T, hs, q, q + C, att_bh, SGEMM_C_LOWER, NULL, NULL};
        sgemm_problem(0, 1, &s, C3, C3, T, 0);
        for (int t = 0; t < T; t++) {
            float* a = att_bh + (size_t)t * T;
            float maxval = -INFINITY;
            #pragma omp simd reduction(max : maxval)
            for (int t2 = 0; t2 <= t; t2++) { a[t2] *= scale; maxval = a[t2] > maxval ? a[t2] : maxval; }
            float sum = exp_sum(a, a, maxval, t + 1);
            float inv = 1.0f / sum;
            for (int t2 = 0; t2 <= t; t2++) a[t2] *= inv;
            for (int t2 = t + 1; t2 < T; t2++) a[t2] = 0.0f;
        }
        SgemmProblem o = {T, hs, T, att_bh, q + 2 * C, out + (size_t)b * T * C + h * hs, SGEMM_A_LOWER, NULL, NULL};
        sgemm_problem(0, 0, &o, T, C3, C, 0);
    }
}
// With P = softmax(S * scale), O = P V, per (b,h):
//   dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(P * dP)) * scale,  dQ = dS K,  dK = dS^T Q.
// dP and dS live in datt (B,NH,T,T), scratch. Each (b,h) owns its head's slices of dqkv, which are
// written (every element of dqkv once), not added to. One thread per head, as in the forward.
static void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att,
                               int B, int T, int C, int NH, float* datt) {
    int hs = C / NH, C3 = 3 * C, BH = B * NH;
    float scale = 1.0f / sqrtf((float)hs);
    sgemm_reserve_threads();
    #pragma omp parallel for schedule(static)
    for (int bh = 0; bh < BH; bh++) {
        int b = bh / NH, h = bh % NH;
        const float* q = qkv + (size_t)b * T * C3 + h * hs;      // k at q + C, v at q + 2C
        float* dq = dqkv + (size_t)b * T * C3 + h * hs;           // dk at dq + C, dv at dq + 2C
        const float* dout_bh = dout + (size_t)b * T * C + h * hs;
        const float* att_bh = att + (size_t)bh * T * T;
        float* datt_bh = datt + (size_t)bh * T * T;
        SgemmProblem dp = {T, T, hs, dout_bh, q + 2 * C, datt_bh, SGEMM_C_LOWER, NULL, NULL};    // dP = dO V^T
        sgemm_problem(0, 1, &dp, C, C3, T, 0);
        SgemmProblem dv = {T, hs, T, att_bh, dout_bh, dq + 2 * C, SGEMM_A_UPPER, NULL, NULL};    // dV = P^T dO
        sgemm_problem(1, 0, &dv, T, C, C3, SGEMM_OVERWRITE);
        for (int t = 0; t < T; t++) {
            const float* p = att_bh + (size_t)t * T;
            float* d = datt_bh + (size_t)t * T;
            float dot = 0.0f;
            #pragma omp simd reduction(+ : dot)
            for (int t2 = 0; t2 <= t; t2++) dot += p[t2] * d[t2];
            for (int t2 = 0; t2 <= t; t2++) d[t2] = p[t2] * (d[t2] - dot) * scale;
            for (int t2 = t + 1; t2 < T; t2++) d[t2] = 0.0f;
        }
        SgemmProblem dqp = {T, hs, T, datt_bh, q + C, dq, SGEMM_A_LOWER, NULL, NULL};            // dQ = dS K
        sgemm_problem(0, 0, &dqp, T, C3, C3, SGEMM_OVERWRITE);
        SgemmProblem dkp = {T, hs, T, datt_bh, q, dq + C, SGEMM_A_UPPER, NULL, NULL};            // dK = dS^T Q
        sgemm_problem(1, 0, &dkp, T, C3, C3, SGEMM_OVERWRITE);
    }
}

// GELU, tanh form: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3). Computed through the
// identity 0.5 (1 + tanh(u)) = sigmoid(2u), which stays accurate in both tails (1 + tanh(u)
// cancels for very negative u). Built without fast-math (llm.c's issue #19: fast-math once broke
// its GELU backward).
#define GELU_SCALING_FACTOR 0.7978845608028654f
// GELU(x) and, into *grad, GELU'(x), sharing the exp. With sig = sigmoid(2u) (so tanh(u) = 2 sig - 1
// and 1 - tanh^2 = 4 sig (1 - sig)):
//   d/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) u'  =  sig + 2 x sig (1 - sig) u',
//   u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
// Inlined, the half a caller does not use is dropped by the compiler (gelu_value, gelu_grad).
static inline float gelu_value_grad(float x, float* grad) {
    float u = GELU_SCALING_FACTOR * (x + 0.044715f * x * x * x);
    float d = 1.0f + exp_approx(-2.0f * u);
    float sig = 1.0f / d;
    *grad = sig + 2.0f * x * sig * (1.0f - sig) * GELU_SCALING_FACTOR * (1.0f + 3.0f * 0.044715f * x * x);
    return x / d;
}
// gelu_value_grad on sixteen lanes (exp_approx16): the same bits.
static inline f32x16 gelu_value_grad16(f32x16 x, f32x16* grad) {
    f32x16 u = GELU_SCALING_FACTOR * (x + 0.044715f * x * x * x);
    f32x16 d = 1.0f + exp_approx16(-2.0f * u);
    f32x16 sig = 1.0f / d;
    *grad = sig + 2.0f * x * sig * (1.0f - sig) * GELU_SCALING_FACTOR * (1.0f + 3.0f * 0.044715f * x * x);
    return x / d;
}
static inline float gelu_value(float x) { float grad; return gelu_value_grad(x, &grad); }
static inline float gelu_grad(float x) { float grad; gelu_value_grad(x, &grad); return grad; }
static void gelu_forward(float* out, const float* inp, size_t n) {
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i += 16) {
        if (i + 16 <= n) { f32x16 grad; store16(out + i, gelu_value_grad16(load16(inp + i), &grad)); }
        else for (size_t j = i; j < n; j++) out[j] = gelu_value(inp[j]);
    }
}
static void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) {
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i += 16) {
        if (i + 16 <= n) { f32x16 grad; gelu_value_grad16(load16(inp + i), &grad); store16(dinp + i, load16(dinp + i) + grad * load16(dout + i)); }
        else for (size_t j = i; j < n; j++) dinp[j] += gelu_grad(inp[j]) * dout[j];
    }
}

// out = a + b, elementwise over n. Its backward is the identity to both inputs, written inline.
static void residual_forward(float* out, const float* a, const float* b, size_t n) {
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

// Cross-entropy over the first V of Vp logits. logits (N,Vp); lse (N) = logsumexp of each row,
// cached; losses (N) = lse - logit[target]. Returns the mean loss.
static float crossentropy_forward(float* losses, float* lse, const float* logits, const int* targets,
                                  int N, int V, int Vp) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* x = logits + (size_t)n * Vp;
        float m = -INFINITY;
        #pragma omp simd reduction(max : m)
        for (int v = 0; v < V; v++) m = x[v] > m ? x[v] : m;  // (fmaxf is a libm call gcc does not vectorise)
        lse[n] = m + logf(exp_sum(NULL, x, m, V));
        losses[n] = lse[n] - x[targets[n]];
    }
    double total = 0.0;
    for (int n = 0; n < N; n++) total += losses[n];
    return (float)(total / N);
}
// d(loss)/d(logit_v) = dloss * (softmax_v - [v == target]) for v < V, and 0 for the padding.
// Written in place over the logits (the forward's logits are not needed afterwards).
static void crossentropy_backward_inplace(float* logits, const float* lse, const int* targets,
                                          float dloss, int N, int V, int Vp) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float* x = logits + (size_t)n * Vp;
        float l = lse[n];
        int v = 0;
        for (; v + 16 <= V; v += 16) store16(x + v, dloss * exp_approx16(load16(x + v) - l));
        for (; v < V; v++) x[v] = dloss * exp_approx(x[v] - l);
        x[targets[n]] -= dloss;
        for (int v = V; v < Vp; v++) x[v] = 0.0f;
    }
}

// ----------------------------------------------------------------------------
// the model: one parameter buffer carved into tensors by a table of sizes (docs/model.md).
// The first 17 tensors are GPT-2's and the experts' (checkpoint version 1 holds only these); the
// routers' extra tensors follow them, so a version-1 file is a prefix of this layout.

#define NUM_PARAMETER_TENSORS 21
typedef struct {
    float* wte;       // (Vp, C) token embedding, tied with the classifier
    float* wpe;       // (maxT, C) position embedding
    float* ln1w;      // (L, C)
    float* ln1b;      // (L, C)
    float* qkvw;      // (L, 3C, C)
    float* qkvb;      // (L, 3C)
    float* attprojw;  // (L, C, C)
    float* attprojb;  // (L, C)
    float* ln2w;      // (L, C)
    float* ln2b;      // (L, C)
    float* routerw;   // (L, E, C) router W_g, no bias
    float* fcw;       // (L, E, H, C) expert up-projection W1
    float* fcb;       // (L, E, H)
    float* fcprojw;   // (L, E, C, H) expert down-projection W2
    float* fcprojb;   // (L, E, C)
    float* lnfw;      // (C)
    float* lnfb;      // (C)
    float* router_bias;   // (L, E) auxfree's selection bias b: state, not learned (gradient 0, no decay)
    float* xmoe_proj;     // (L, De, C) X-MoE's projection W_p (De = 0 without X-MoE)
    float* xmoe_experts;  // (L, E, De) X-MoE's expert embeddings e_i
    float* xmoe_log_temp; // (L) or empty: X-MoE's log temperature, tau = exp(.)
} ParameterTensors;

static const char* const PARAM_NAMES[NUM_PARAMETER_TENSORS] = {
    "wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb", "ln2w", "ln2b",
    "routerw", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb",
    "router_bias", "xmoe_proj", "xmoe_experts", "xmoe_log_temp"};
#define NUM_PARAMETER_TENSORS_V1 17  // checkpoint version 1: wte .. lnfb
// AdamW weight decay applies to matrices and embeddings (X-MoE's W_p and expert embeddings
// included), not to biases, LayerNorm, auxfree's b or X-MoE's temperature (docs/model.md).
static const int PARAM_DECAY[NUM_PARAMETER_TENSORS] = {1, 1, 0, 0, 1, 0, 1, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0, 1, 1, 0};

static void fill_param_sizes(size_t* sizes, const MoEConfig* c) {
    size_t Vp = c->padded_vocab_size, C = c->channels, L = c->num_layers, maxT = c->max_seq_len;
    size_t E = c->n_expert, H = c->expert_hidden, De = c->xmoe_dim;
    sizes[0] = Vp * C;        sizes[1] = maxT * C;
    sizes[2] = L * C;         sizes[3] = L * C;
    sizes[4] = L * 3 * C * C; sizes[5] = L * 3 * C;
    sizes[6] = L * C * C;     sizes[7] = L * C;
    sizes[8] = L * C;         sizes[9] = L * C;
    sizes[10] = L * E * C;
    sizes[11] = L * E * H * C; sizes[12] = L * E * H;
    sizes[13] = L * E * C * H; sizes[14] = L * E * C;
    sizes[15] = C;            sizes[16] = C;
    sizes[17] = L * E;
    sizes[18] = L * De * C;   sizes[19] = L * E * De;   sizes[20] = De > 0 ? L : 0;
}

static void point_parameters(ParameterTensors* p, float* memory, const size_t* sizes) {
    float** ptrs[NUM_PARAMETER_TENSORS] = {
        &p->wte, &p->wpe, &p->ln1w, &p->ln1b, &p->qkvw, &p->qkvb, &p->attprojw, &p->attprojb,
        &p->ln2w, &p->ln2b, &p->routerw, &p->fcw, &p->fcb, &p->fcprojw, &p->fcprojb, &p->lnfw, &p->lnfb,
        &p->router_bias, &p->xmoe_proj, &p->xmoe_experts, &p->xmoe_log_temp};
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) { *ptrs[i] = memory; memory += sizes[i]; }
}

// Activations of one forward pass for a (B,T) batch. Carved from one float buffer and one int
// buffer. Everything backward needs is kept; the rest is scratch.
typedef struct {
    float* encoded;       // (N, C) embedding output
    float* ln1;           // (L, N, C)
    float* ln1_mean;      // (L, N)
    float* ln1_rstd;      // (L, N)
    float* qkv;           // (L, N, 3C)
    float* atty;          // (L, N, C) attention output before the projection
    float* att;           // (L, B, NH, T, T) attention probabilities
    float* residual2;     // (L, N, C) after the attention residual
    float* ln2;           // (L, N, C) MoE input x
    float* ln2_mean;      // (L, N)
    float* ln2_rstd;      // (L, N)
    float* router_logits; // (L, N, E) the router's scores l (W_g x; X-MoE: cosine / tau)
    float* gate_logits;   // (L, N, E) the logits the gate weights came from (GatePro: penalised)
    float* router_probs;  // (L, N, E) softmax(l) over all E (load-balance P)
    float* router_lse;    // (L, N) logsumexp(l) (z-loss)
    float* router_sim;    // (L, E, E) cosine similarity of the router's expert rows
    float* xmoe_z;        // (L, N, De) X-MoE: the projected token W_p x
    float* gate;          // (L, N, K) alpha of each selected expert
    float* expert_input;  // (L, N*K, C) x gathered into contiguous per-expert blocks
    float* expert_dgelu;  // (L, N*K, H) GELU'(W1 x + b1), kept for the backward; rows sgemm_row_stride(H) apart
    float* expert_gelu;   // (L, N*K, H) gelu of it, the same
    float* expert_out;    // (L, N*K, C) E_i(x), before the gate weight
    float* residual3;     // (L, N, C) after the MoE residual
    float* lnf;           // (N, C)
    float* lnf_mean;      // (N)
    float* lnf_rstd;      // (N)
    float* logits;        // (N, Vp); turned into dlogits in place by backward
    float* losses;        // (N) per-token cross-entropy
    float* logits_lse;    // (N)
} ActivationTensors;
#define NUM_ACTIVATION_TENSORS 29

typedef struct {
    int* expert_index;       // (L, N, K) selected experts of each token, ascending
    int* router_sibling;     // (L, E) j*(i)
    int* expert_offsets;     // (L, E+1) expert e's block is slots [offsets[e], offsets[e+1])
    int* expert_token_index; // (L, N*K) slot -> token it holds
    int* token_slot;         // (L, N, K) (token, k) -> slot
} ActivationIndex;
#define NUM_ACTIVATION_INDEX 5

// Scratch for backward, one layer at a time (gradients of activations are not kept per layer).
typedef struct {
    float* dresidual;   // (N, C) gradient flowing down the residual stream
    float* dln;         // (N, C) gradient into a LayerNorm's output
    float* dbig;        // (N, max(3C, Vp-free)) dqkv (N,3C) and datty (N,C)
    float* dexpert_out; // (N*K, C)
    float* dexpert_in;  // (N*K, C)
    float* drouter;     // (N, E) gradient into the router's scores l
    float* dgate;       // (N, K)
    float* datt;        // (B, NH, T, T) attention backward dP / dS
    float* dxmoe_z;     // (N, De) X-MoE: gradient into W_p x
    float* xmoe_zh;     // (N, De) X-MoE: the unit vectors z / |z|
} BackwardScratch;
#define NUM_SCRATCH_TENSORS 10

// Where one layer's dispatched (token, expert) pairs live. Each token runs on R experts: its K
// selected ones, or all E on a CompeteSMoE competition step. Expert e's tokens occupy the
// contiguous slots [expert_offsets[e], expert_offsets[e+1]), in token order.
typedef struct {
    int R;                    // experts per token
    int* expert_offsets;      // (E+1)
    int* expert_token_index;  // (N*R) slot -> the token it holds
    int* token_slot;          // (N*R) (token, r) -> its slot
    float* input;             // (N*R, C) x gathered into the per-expert blocks
    float* dgelu;             // (N*R, H) GELU'(W1 x + b1), rows sgemm_row_stride(H) apart
    float* gelu;              // (N*R, H) GELU(W1 x + b1), the same
    float* out;               // (N*R, C) E_i(x), before the gate weight
    float* dout;              // (N*R, C) backward scratch: gradient of out
    float* din;               // (N*R, C) backward scratch: gradient of input
} Dispatch;

// A competing layer runs every expert on every token, so it keeps a dispatch of N*E slots. Only
// `slots` layers can compete in one step (--compete-max-layers), so that many are allocated.
typedef struct {
    int slots, N;        // allocated for this many layers of N tokens
    int* slot_of_layer;  // (L) slot of a competing layer in the last forward, -1 if it did not compete
    Dispatch* dispatch;  // (slots) every expert on every token (dout, din shared by the slots)
    float* response;     // (slots, N, E) s_i = mean_c softplus(o_i,c)
    float* response_p;   // (slots, N, E) p^C = softmax(s)
    float* dresponse;    // (N, E) backward scratch
    int* all_experts;    // (N, E) every token's run list: 0, 1, ..., E-1
    float* memory;
    int* imemory;
} CompeteBuffers;

typedef struct {  // one layer's auxiliary losses in the last forward (unweighted), for the log
    float aux, z;                  // router load balance and z-loss (0 on a competition step)
    int competed;                  // 1 if the layer competed
    float router_distill;          // L_D
    float diversity;               // L_div
    float compete_balance;         // Switch loss with f from I_C and P = mean p^C
    float agreement;               // mean |I_C intersect T_k(l)| / K
} LayerLosses;

struct ExpertRunner;  // expert parallelism: after ExpertBlock below

typedef struct {
    MoEConfig config;
    RouterConfig router;
    ParameterTensors params;
    size_t param_sizes[NUM_PARAMETER_TENSORS];
    float* params_memory;
    size_t num_parameters;
    ParameterTensors grads;
    float* grads_memory;
    int grads_zero;   // 1 while every gradient is known to be zero (after allocation, moe_zero_grad, or
                      // the caller's say-so at a step's start): the next backward writes the experts'
                      // weight gradients instead of adding to them. Cleared by moe_backward.
    float* m_memory;  // AdamW first moment
    float* v_memory;  // AdamW second moment
    // activations, sized for batch_size x seq_len
    int batch_size, seq_len;
    ActivationTensors acts;
    ActivationIndex idx;
    BackwardScratch scratch;
    float* acts_memory;
    int* idx_memory;
    float* scratch_memory;
    const int* inputs;   // the last forward's (B,T) inputs and targets (caller-owned)
    const int* targets;
    // results of the last forward
    float mean_loss;     // LM cross-entropy, nats (-1 if no targets)
    float aux_loss;      // load-balance loss summed over layers
    float z_loss;        // router z-loss summed over layers
    CompeteBuffers compete;  // CompeteSMoE: the buffers of the layers that compete
    float compete_loss;  // sum over competing layers of the weighted L_D + L_div + L_bal
    LayerLosses* layer_stats;  // (L) per-layer losses of the last forward
    MoEProfile* profile;       // time per op (train_moe --profile), or NULL
    double* step_load;   // (L, E) tokens per expert over the training forwards since the last moe_after_step
    // expert parallelism (mpi_moe.h): runs each expert on the MPI rank that owns it; NULL: here
    struct ExpertRunner* expert_runner;
} MoEModel;

static void moe_build(MoEModel* m, const MoEConfig* config) {
    memset(m, 0, sizeof(*m));
    m->config = *config;
    fill_param_sizes(m->param_sizes, config);
    m->num_parameters = 0;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) m->num_parameters += m->param_sizes[i];
    memory_fits_or_die(8.0 * (double)m->num_parameters, "the model's parameters and gradients");
    m->params_memory = (float*)callocCheck(m->num_parameters, sizeof(float));
    m->grads_memory = (float*)callocCheck(m->num_parameters, sizeof(float));
    point_parameters(&m->params, m->params_memory, m->param_sizes);
    point_parameters(&m->grads, m->grads_memory, m->param_sizes);
    m->grads_zero = 1;
    m->router = ROUTER_DEFAULTS;
    m->layer_stats = (LayerLosses*)callocCheck((size_t)config->num_layers, sizeof(LayerLosses));
    m->step_load = (double*)callocCheck((size_t)config->num_layers * config->n_expert, sizeof(double));
    m->mean_loss = -1.0f;
}

// GPT-2's initialisation (docs/model.md), drawn from one generator in parameter order. X-MoE's
// W_p and expert embeddings N(0, 0.02) (the cosine ignores the embeddings' scale), log tau =
// log 0.07; auxfree's b starts at 0.
static void moe_init_params(MoEModel* m, uint64_t seed, float router_init_std) {
    const MoEConfig* c = &m->config;
    uint64_t rng = derive_seed(seed, STREAM_INIT);
    float std = 0.02f, resid_std = 0.02f / sqrtf(2.0f * c->num_layers);
    memset(m->params_memory, 0, m->num_parameters * sizeof(float));
    ParameterTensors* p = &m->params;
    for (size_t i = 0; i < (size_t)c->vocab_size * c->channels; i++) p->wte[i] = std * random_normal(&rng);
    for (size_t i = 0; i < m->param_sizes[1]; i++) p->wpe[i] = std * random_normal(&rng);
    for (size_t i = 0; i < m->param_sizes[2]; i++) p->ln1w[i] = 1.0f;
    for (size_t i = 0; i < m->param_sizes[4]; i++) p->qkvw[i] = std * random_normal(&rng);
    for (size_t i = 0; i < m->param_sizes[6]; i++) p->attprojw[i] = resid_std * random_normal(&rng);
    for (size_t i = 0; i < m->param_sizes[8]; i++) p->ln2w[i] = 1.0f;
    for (size_t i = 0; i < m->param_sizes[10]; i++) p->routerw[i] = router_init_std * random_normal(&rng);
    for (size_t i = 0; i < m->param_sizes[11]; i++) p->fcw[i] = std * random_normal(&rng);
    for (size_t i = 0; i < m->param_sizes[13]; i++) p->fcprojw[i] = resid_std * random_normal(&rng);
    for (size_t i = 0; i < m->param_sizes[15]; i++) p->lnfw[i] = 1.0f;
    for (size_t i = 0; i < m->param_sizes[18]; i++) p->xmoe_proj[i] = std * random_normal(&rng);
    for (size_t i = 0; i < m->param_sizes[19]; i++) p->xmoe_experts[i] = std * random_normal(&rng);
    for (size_t i = 0; i < m->param_sizes[20]; i++) p->xmoe_log_temp[i] = logf(XMOE_INIT_TEMPERATURE);
}

static void moe_alloc_activations(MoEModel* m, int B, int T) {
    const MoEConfig* c = &m->config;
    size_t L = c->num_layers, C = c->channels, NH = c->num_heads, E = c->n_expert, K = c->top_k;
    size_t Hs = sgemm_row_stride(c->expert_hidden), Vp = c->padded_vocab_size, N = (size_t)B * T, NK = N * K;
    size_t De = c->xmoe_dim;
    size_t sizes[NUM_ACTIVATION_TENSORS] = {
        N * C, L * N * C, L * N, L * N, L * N * 3 * C, L * N * C, L * B * NH * T * T,
        L * N * C, L * N * C, L * N, L * N,
        L * N * E, L * N * E, L * N * E, L * N, L * E * E, L * N * De, L * N * K,
        L * NK * C, L * NK * Hs, L * NK * Hs, L * NK * C,
        L * N * C, N * C, N, N, N * Vp, N, N};
    size_t total = 0;
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) total += sizes[i];
    freeCheck(m->acts_memory);
    m->acts_memory = NULL;
    char what[96];
    snprintf(what, sizeof(what), "the activations at B=%d T=%d with the parameters", B, T);
    memory_fits_or_die(4.0 * (double)total + 8.0 * (double)m->num_parameters, what);
    m->acts_memory = (float*)callocCheck(total, sizeof(float));
    float** ptrs[NUM_ACTIVATION_TENSORS] = {
        &m->acts.encoded, &m->acts.ln1, &m->acts.ln1_mean, &m->acts.ln1_rstd, &m->acts.qkv, &m->acts.atty,
        &m->acts.att, &m->acts.residual2, &m->acts.ln2, &m->acts.ln2_mean, &m->acts.ln2_rstd,
        &m->acts.router_logits, &m->acts.gate_logits, &m->acts.router_probs, &m->acts.router_lse,
        &m->acts.router_sim, &m->acts.xmoe_z, &m->acts.gate, &m->acts.expert_input, &m->acts.expert_dgelu,
        &m->acts.expert_gelu, &m->acts.expert_out, &m->acts.residual3, &m->acts.lnf, &m->acts.lnf_mean,
        &m->acts.lnf_rstd, &m->acts.logits, &m->acts.losses, &m->acts.logits_lse};
    float* p = m->acts_memory;
    for (int i = 0; i < NUM_ACTIVATION_TENSORS; i++) { *ptrs[i] = p; p += sizes[i]; }

    size_t isizes[NUM_ACTIVATION_INDEX] = {L * N * K, L * E, L * (E + 1), L * NK, L * N * K};
    int** iptrs[NUM_ACTIVATION_INDEX] = {&m->idx.expert_index, &m->idx.router_sibling, &m->idx.expert_offsets,
                                         &m->idx.expert_token_index, &m->idx.token_slot};
    total = 0;
    for (int i = 0; i < NUM_ACTIVATION_INDEX; i++) total += isizes[i];
    freeCheck(m->idx_memory);
    m->idx_memory = (int*)callocCheck(total, sizeof(int));
    int* q = m->idx_memory;
    for (int i = 0; i < NUM_ACTIVATION_INDEX; i++) { *iptrs[i] = q; q += isizes[i]; }

    size_t ssizes[NUM_SCRATCH_TENSORS] = {N * C, N * C, N * 4 * C, NK * C, NK * C, N * E, N * K,
                                          (size_t)B * NH * T * T, N * De, N * De};
    float** sptrs[NUM_SCRATCH_TENSORS] = {&m->scratch.dresidual, &m->scratch.dln, &m->scratch.dbig,
                                          &m->scratch.dexpert_out, &m->scratch.dexpert_in, &m->scratch.drouter,
                                          &m->scratch.dgate, &m->scratch.datt, &m->scratch.dxmoe_z, &m->scratch.xmoe_zh};
    total = 0;
    for (int i = 0; i < NUM_SCRATCH_TENSORS; i++) total += ssizes[i];
    freeCheck(m->scratch_memory);
    m->scratch_memory = (float*)callocCheck(total, sizeof(float));
    p = m->scratch_memory;
    for (int i = 0; i < NUM_SCRATCH_TENSORS; i++) { *sptrs[i] = p; p += ssizes[i]; }
    m->batch_size = B;
    m->seq_len = T;
}

// ----------------------------------------------------------------------------
// The MoE layer: route, dispatch, run the experts, combine. The routers are in routers.h; every
// router and CompeteSMoE's competition use the same dispatch, expert FFN, combine and balance code.

#include "routers.h"

// One expert's share of an MoE layer: a contiguous block of `rows` token rows, its input x
// (rows, C) and activations gelu = GELU(W1 x + b1) and dgelu = GELU'(W1 x + b1) (rows, H, rows
// sgemm_row_stride(H) floats apart) and out (rows, C); for backward, the gradient of out,
// dout (rows, C), and where the gradient of x goes, din (rows, C) or NULL.
typedef struct {
    int rows;
    const float* x;
    float *dgelu, *gelu, *out;
    const float* dout;
    float* din;
} ExpertBlock;

// Column sums of each block's rows of a (rows, width) matrix, rows ld apart, into dbias + e*width. One expert per
// iteration, rows summed in order: deterministic.
static void experts_bias_backward(float* dbias, const float* const* d, const int* rows, int E, int width, int ld) {
    #pragma omp parallel for schedule(dynamic, 1)
    for (int e = 0; e < E; e++) {
        if (rows[e] > 0) {
            for (int j0 = 0; j0 < width; j0 += 64) {
                int j1 = j0 + 64 < width ? j0 + 64 : width;
                float acc[64] = {0};
                for (int r = 0; r < rows[e]; r++)
                    for (int j = j0; j < j1; j++) acc[j - j0] += d[e][(size_t)r * ld + j];
                for (int j = j0; j < j1; j++) dbias[(size_t)e * width + j] += acc[j - j0];
            }
        }
    }
}

// The expert FFN's elementwise steps, each run on a block of a matmul's output as soon as the block
// is final, by the thread that computed it, while it is still in cache (matmul.h, the problem's
// epilogue), instead of as separate parallel passes over 8-16 MB per layer. Per element the same
// operations as the passes were. (GELU and GELU' themselves cost ~5 ms each per step at `small`;
// what this saved is the passes' memory traffic and their barriers: 157.2 -> 154.5 ms per step.)
typedef struct {
    const float* bias;   // (N) this expert's bias, or NULL
    float* gelu;         // forward: GELU(h) out, rows as C's
    const float* dgelu;  // backward: GELU'(h), rows as C's
} ExpertEpilogue;
// after h = x W1^T (into the dgelu buffer): h += b1, gelu = GELU(h), and h is replaced by GELU'(h),
// all the backward needs of it. Computed here, GELU' shares GELU's exp and costs a division and a
// few multiply-adds; computed in the backward from h, it cost the exp again (gelu_grad).
static void expert_fc_epilogue(const SgemmProblem* p, int ldc, int ic, int mc, int jc, int nc) {
    const ExpertEpilogue* e = (const ExpertEpilogue*)p->ctx;
    for (int r = ic; r < ic + mc; r++) {
        float* h = p->C + (size_t)r * ldc;
        float* g = e->gelu + (size_t)r * ldc;
        int j = jc;
        for (; j + 16 <= jc + nc; j += 16) {
            f32x16 grad;
            store16(g + j, gelu_value_grad16(load16(h + j) + load16(e->bias + j), &grad));
            store16(h + j, grad);
        }
        for (; j < jc + nc; j++) {
            float grad;
            g[j] = gelu_value_grad(h[j] + e->bias[j], &grad);
            h[j] = grad;
        }
    }
}
// after out = gelu W2^T: out += b2
static void expert_bias_epilogue(const SgemmProblem* p, int ldc, int ic, int mc, int jc, int nc) {
    const ExpertEpilogue* e = (const ExpertEpilogue*)p->ctx;
    for (int r = ic; r < ic + mc; r++) {
        float* o = p->C + (size_t)r * ldc;
        for (int j = jc; j < jc + nc; j++) o[j] += e->bias[j];
    }
}
// after dh = dout W2: dh *= GELU'(h)
static void expert_gelu_backward_epilogue(const SgemmProblem* p, int ldc, int ic, int mc, int jc, int nc) {
    const ExpertEpilogue* e = (const ExpertEpilogue*)p->ctx;
    for (int r = ic; r < ic + mc; r++) {
        float* dh = p->C + (size_t)r * ldc;
        const float* dg = e->dgelu + (size_t)r * ldc;
        #pragma omp simd
        for (int j = jc; j < jc + nc; j++) dh[j] *= dg[j];
    }
}

// out = W2 gelu(W1 x + b1) + b2 for every expert of layer l on its own block: each of the two
// matmuls is one batched call over all experts (sgemm_batch), not E calls.
static void experts_ffn_forward(const MoEModel* m, int l, const ExpertBlock* blk) {
    const MoEConfig* c = &m->config;
    int E = c->n_expert, C = c->channels, H = c->expert_hidden, Hs = sgemm_row_stride(H);
    SgemmProblem p[256] = {{0}};
    ExpertEpilogue ep[256];
    for (int e = 0; e < E; e++) {
        ep[e] = (ExpertEpilogue){m->params.fcb + ((size_t)l * E + e) * H, blk[e].gelu, NULL};
        p[e] = (SgemmProblem){blk[e].rows, H, C, blk[e].x, m->params.fcw + ((size_t)l * E + e) * H * C, blk[e].dgelu,
                              SGEMM_FULL, expert_fc_epilogue, &ep[e]};   // h = x W1^T, then h += b1, gelu = GELU(h)
    }
    sgemm_batch(0, 1, p, E, C, C, Hs, 0);
    for (int e = 0; e < E; e++) {
        ep[e] = (ExpertEpilogue){m->params.fcprojb + ((size_t)l * E + e) * C, NULL, NULL};
        p[e] = (SgemmProblem){blk[e].rows, C, H, blk[e].gelu, m->params.fcprojw + ((size_t)l * E + e) * C * H, blk[e].out,
                              SGEMM_FULL, expert_bias_epilogue, &ep[e]};   // out = gelu W2^T + b2
    }
    sgemm_batch(0, 1, p, E, Hs, H, C, 0);
}

// Backward of experts_ffn_forward, given each block's dout. Accumulates the experts' parameter
// gradients and writes din (when not NULL). Overwrites each block's gelu with the gradient of the
// hidden layer (gelu is last needed for dW2, computed first), so no scratch is needed:
//   dW2 += dout^T gelu,  db2 += sum dout,  dh = (dout W2) * dgelu,  dW1 += dh^T x,  db1 += sum dh,  din = dh W1
// When the gradients are known to be zero (m->grads_zero: a step's first micro-batch) dW1 and dW2
// are written, not added to, and streamed past the caches (matmul.h, SGEMM_STREAM): the same
// values without reading hundreds of MB of zeros at E = 64-128.
static void experts_ffn_backward(MoEModel* m, int l, const ExpertBlock* blk) {
    const MoEConfig* c = &m->config;
    int E = c->n_expert, C = c->channels, H = c->expert_hidden, Hs = sgemm_row_stride(H);
    SgemmProblem p[256] = {{0}};
    const float* rows_d[256];
    int rows[256];
    size_t le0 = (size_t)l * E;
    int dw_mode = m->grads_zero ? SGEMM_STREAM : SGEMM_ACCUMULATE;
    for (int e = 0; e < E; e++) {
        rows[e] = blk[e].rows;
        rows_d[e] = blk[e].dout;
        int out_rows = blk[e].rows > 0 ? C : 0;   // (no rows: its gradients stay zero, or the earlier micro-batches' sum)
        p[e] = (SgemmProblem){out_rows, H, blk[e].rows, blk[e].dout, blk[e].gelu, m->grads.fcprojw + (le0 + e) * C * H, SGEMM_FULL, NULL, NULL};
    }
    sgemm_batch(1, 0, p, E, C, Hs, H, dw_mode);
    experts_bias_backward(m->grads.fcprojb + le0 * C, rows_d, rows, E, C, C);
    ExpertEpilogue ep[256];
    for (int e = 0; e < E; e++) {   // dh = (dout W2) * GELU'(h), into the gelu buffer
        ep[e] = (ExpertEpilogue){NULL, NULL, blk[e].dgelu};
        p[e] = (SgemmProblem){blk[e].rows, H, C, blk[e].dout, m->params.fcprojw + (le0 + e) * C * H, blk[e].gelu,
                              SGEMM_FULL, expert_gelu_backward_epilogue, &ep[e]};
    }
    sgemm_batch(0, 0, p, E, C, H, Hs, 0);
    for (int e = 0; e < E; e++) {
        rows_d[e] = blk[e].gelu;
        int out_rows = blk[e].rows > 0 ? H : 0;
        p[e] = (SgemmProblem){out_rows, C, blk[e].rows, blk[e].gelu, blk[e].x, m->grads.fcw + (le0 + e) * H * C, SGEMM_FULL, NULL, NULL};
    }
    sgemm_batch(1, 0, p, E, Hs, C, C, dw_mode);
    experts_bias_backward(m->grads.fcb + le0 * H, rows_d, rows, E, H, Hs);
    int any_din = 0;
    for (int e = 0; e < E; e++) {
        any_din |= blk[e].din != NULL;
        p[e] = (SgemmProblem){blk[e].din != NULL ? blk[e].rows : 0, C, H, blk[e].gelu, m->params.fcw + (le0 + e) * H * C, blk[e].din, SGEMM_FULL, NULL, NULL};
    }
    if (any_din) sgemm_batch(0, 0, p, E, Hs, C, C, 0);
}

// Expert parallelism (mpi_moe.h) runs a layer's experts where they live: it sends each block's
// rows to the rank that owns the expert, which runs experts_ffn_forward/backward on the rows of
// every rank, and brings the results (out; din in backward) back into the blocks. The MoE layers
// (routed and competing) only call experts_forward/experts_backward, so every router works unchanged.
typedef struct ExpertRunner {
    void (*forward)(struct ExpertRunner* r, MoEModel* m, int l, const ExpertBlock* blk);
    void (*backward)(struct ExpertRunner* r, MoEModel* m, int l, const ExpertBlock* blk);
} ExpertRunner;

static void experts_forward(MoEModel* m, int l, const ExpertBlock* blk) {
    if (m->expert_runner != NULL) m->expert_runner->forward(m->expert_runner, m, l, blk);
    else experts_ffn_forward(m, l, blk);
}
static void experts_backward(MoEModel* m, int l, const ExpertBlock* blk) {
    if (m->expert_runner != NULL) m->expert_runner->backward(m->expert_runner, m, l, blk);
    else experts_ffn_backward(m, l, blk);
}

// The dispatch of a routed layer l: each token runs on its K selected experts.
static Dispatch layer_dispatch(MoEModel* m, int l, int N) {
    const MoEConfig* c = &m->config;
    int E = c->n_expert, K = c->top_k, C = c->channels, Hs = sgemm_row_stride(c->expert_hidden);
    size_t NK = (size_t)N * K;
    Dispatch d = {K, m->idx.expert_offsets + (size_t)l * (E + 1), m->idx.expert_token_index + (size_t)l * NK,
                  m->idx.token_slot + (size_t)l * NK, m->acts.expert_input + (size_t)l * NK * C,
                  m->acts.expert_dgelu + (size_t)l * NK * Hs, m->acts.expert_gelu + (size_t)l * NK * Hs,
                  m->acts.expert_out + (size_t)l * NK * C, m->scratch.dexpert_out, m->scratch.dexpert_in};
    return d;
}

// Groups the (token, expert) pairs of run_index (N, R) by expert, in token order within each
// expert, so each expert runs on one contiguous block; then gathers x (N,C) into those blocks.
static void dispatch_forward(Dispatch* d, const int* run_index, const float* x, int N, int E, int C) {
    int R = d->R;
    int* offsets = d->expert_offsets;
    for (int e = 0; e <= E; e++) offsets[e] = 0;
    for (int i = 0; i < N * R; i++) offsets[run_index[i] + 1]++;
    for (int e = 0; e < E; e++) offsets[e + 1] += offsets[e];
    int fill[257];
    for (int e = 0; e < E; e++) fill[e] = offsets[e];
    for (int n = 0; n < N; n++) {
        for (int r = 0; r < R; r++) {
            int slot = fill[run_index[n * R + r]]++;
            d->expert_token_index[slot] = n;
            d->token_slot[n * R + r] = slot;
        }
    }
    #pragma omp parallel for schedule(static)
    for (int s = 0; s < N * R; s++)
        memcpy(d->input + (size_t)s * C, x + (size_t)d->expert_token_index[s] * C, C * sizeof(float));
}
// Backward of the gather: dx (N,C) = the sum of din over each token's R slots, in ascending expert
// order. Written, not added to: it is the first write to its layer's dx (the router adds after it).
static void dispatch_backward(float* dx, const Dispatch* d, int N, int C) {
    int R = d->R;
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float* dxn = dx + (size_t)n * C;
        for (int r = 0; r < R; r++) {
            const float* g = d->din + (size_t)d->token_slot[n * R + r] * C;
            if (r == 0) for (int i = 0; i < C; i++) dxn[i] = g[i];
            else for (int i = 0; i < C; i++) dxn[i] += g[i];
        }
    }
}
// The per-expert blocks of a dispatch, for experts_ffn_forward/backward.
static void dispatch_blocks(const Dispatch* d, int E, int C, int H, ExpertBlock* blk) {
    size_t Hs = (size_t)sgemm_row_stride(H);
    for (int e = 0; e < E; e++) {
        size_t s0 = (size_t)d->expert_offsets[e];
        blk[e] = (ExpertBlock){d->expert_offsets[e + 1] - d->expert_offsets[e], d->input + s0 * C, d->dgelu + s0 * Hs,
                               d->gelu + s0 * Hs, d->out + s0 * C, d->dout + s0 * C, d->din + s0 * C};
    }
}

// y_t (N,C) = sum_k gate_tk out[slot_tk], slot (N,K) and gate (N,K) in ascending expert order
// (deterministic). Its backward: dout[slot_tk] = gate_tk dy_t, dgate_tk = <dy_t, out[slot_tk]>.
// Each slot belongs to one (t, k), so the backward writes its rows of dout (no zeroing first); rows
// of dout no (t, k) points at are left as they are (CompeteSMoE's losers: the caller zeroes them).
static void combine_forward(float* y, const float* out, const int* slot, const float* gate, int N, int K, int C) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float* yn = y + (size_t)n * C;
        for (int i = 0; i < C; i++) yn[i] = 0.0f;
        for (int k = 0; k < K; k++) {
            const float* o = out + (size_t)slot[n * K + k] * C;
            float g = gate[n * K + k];
            for (int i = 0; i < C; i++) yn[i] += g * o[i];
        }
    }
}
static void combine_backward(float* dout, float* dgate, const float* dy, const float* out, const int* slot,
                             const float* gate, int N, int K, int C) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* d = dy + (size_t)n * C;
        for (int k = 0; k < K; k++) {
            const float* o = out + (size_t)slot[n * K + k] * C;
            float* dn = dout + (size_t)slot[n * K + k] * C;
            float g = gate[n * K + k], dot = 0.0f;
            #pragma omp simd reduction(+ : dot)
            for (int i = 0; i < C; i++) { dn[i] = g * d[i]; dot += d[i] * o[i]; }
            dgate[n * K + k] = dot;
        }
    }
}

// The router's part of a routed layer: its scores l, p = softmax(l) and lse (for the balance loss
// and the z-loss), and per token the K experts (select) and their weights (--gate-norm).
static void route_tokens(MoEModel* m, int l, int N, const RoutingMode* mode) {
    const MoEConfig* c = &m->config;
    const Router* router = &ROUTERS[m->router.router];
    int E = c->n_expert, K = c->top_k, gate_norm = m->router.gate_norm;
    router->scores_forward(m, l, N);
    SelectArgs args = select_args(m, l, mode);
    const float* scores = m->acts.router_logits + (size_t)l * N * E;
    float* gate_logits = m->acts.gate_logits + (size_t)l * N * E;
    float* probs = m->acts.router_probs + (size_t)l * N * E;
    float* lse = m->acts.router_lse + (size_t)l * N;
    int* expert_index = m->idx.expert_index + (size_t)l * N * K;
    float* gate = m->acts.gate + (size_t)l * N * K;
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        lse[n] = softmax_lse(probs + (size_t)n * E, scores + (size_t)n * E, E);
        router->select(&args, scores + (size_t)n * E, gate_logits + (size_t)n * E, expert_index + (size_t)n * K);
        gate_weights(gate + (size_t)n * K, gate_logits + (size_t)n * E, expert_index + (size_t)n * K, E, K, gate_norm);
    }
}

// A routed MoE layer l over N tokens (every router; CompeteSMoE's router steps): route, dispatch,
// experts, combine. y (N,C) = sum_k alpha_k E_{i_k}(x). Fills layer_stats[l].aux and .z.
static void routed_layer_forward(MoEModel* m, int l, int N, float* y, const RoutingMode* mode) {
    const MoEConfig* c = &m->config;
    int E = c->n_expert, K = c->top_k, C = c->channels;
    int* expert_index = m->idx.expert_index + (size_t)l * N * K;
    float* gate = m->acts.gate + (size_t)l * N * K;
    LayerLosses* st = &m->layer_stats[l];
    if (E == 1) {  // dense MLP: no router, weight 1, no aux losses
        for (int n = 0; n < N; n++) { expert_index[n] = 0; gate[n] = 1.0f; }
    } else {
        route_tokens(m, l, N, mode);
        st->aux = m->router.aux_loss_coef * balance_loss(expert_index, m->acts.router_probs + (size_t)l * N * E, N, E, K);
        st->z = m->router.z_loss_coef * z_loss_value(m->acts.router_lse + (size_t)l * N, N);
    }
    profile_lap(m->profile, PROF_FWD, PROF_ROUTER);
    Dispatch d = layer_dispatch(m, l, N);
    dispatch_forward(&d, expert_index, m->acts.ln2 + (size_t)l * N * C, N, E, C);
    ExpertBlock blk[256];
    dispatch_blocks(&d, E, C, c->expert_hidden, blk);
    profile_lap(m->profile, PROF_FWD, PROF_DISPATCH);
    experts_forward(m, l, blk);
    profile_lap(m->profile, PROF_FWD, PROF_EXPERT_FFN);
    combine_forward(y, d.out, d.token_slot, gate, N, K, C);
    profile_lap(m->profile, PROF_FWD, PROF_COMBINE);
}

// Backward of routed_layer_forward. dy (N,C) is the gradient of its output; dx (N,C) receives the
// gradient of its input (written), through the experts and then through the router:
//   combine:  do_k = alpha_k dy,  dalpha_k = <dy, o_k>
//   router:   dalpha -> dg (gate_weights_backward) -> dl (every select has dg/dl = I)
//   balance:  dl_t += p_t * (g - <p_t, g>),  g_i = a E f_i / N   (f constant)
//   z-loss:   dl_t += (2 z lse_t / N) p_t
//   then the router's scores backward: dl -> dx and its weights' gradients
static void routed_layer_backward(MoEModel* m, int l, int N, const float* dy, float* dx, float loss_scale) {
    const MoEConfig* c = &m->config;
    int E = c->n_expert, K = c->top_k, C = c->channels;
    BackwardScratch* s = &m->scratch;
    const float* gate = m->acts.gate + (size_t)l * N * K;
    Dispatch d = layer_dispatch(m, l, N);
    combine_backward(d.dout, s->dgate, dy, d.out, d.token_slot, gate, N, K, C);   // writes all N K slots
    profile_lap(m->profile, PROF_BWD, PROF_COMBINE);
    ExpertBlock blk[256];
    dispatch_blocks(&d, E, C, c->expert_hidden, blk);
    experts_backward(m, l, blk);
    profile_lap(m->profile, PROF_BWD, PROF_EXPERT_FFN);
    dispatch_backward(dx, &d, N, C);
    profile_lap(m->profile, PROF_BWD, PROF_DISPATCH);
    if (E == 1) return;

    const float* gate_logits = m->acts.gate_logits + (size_t)l * N * E;
    const float* probs = m->acts.router_probs + (size_t)l * N * E;
    const float* lse = m->acts.router_lse + (size_t)l * N;
    const int* expert_index = m->idx.expert_index + (size_t)l * N * K;
    float g_aux[256];
    balance_grad_coefs(g_aux, expert_index, N, E, K, m->router.aux_loss_coef, loss_scale);
    float zc = 2.0f * m->router.z_loss_coef / N * loss_scale;
    int gate_norm = m->router.gate_norm;
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float* dl = s->drouter + (size_t)n * E;
        const float* p = probs + (size_t)n * E;
        for (int e = 0; e < E; e++) dl[e] = 0.0f;
        gate_weights_backward(dl, s->dgate + (size_t)n * K, gate + (size_t)n * K, gate_logits + (size_t)n * E,
                              expert_index + (size_t)n * K, E, K, gate_norm);
        balance_token_backward(dl, p, g_aux, E);
        for (int e = 0; e < E; e++) dl[e] += zc * lse[n] * p[e];
    }
    ROUTERS[m->router.router].scores_backward(m, l, N, dx);
    profile_lap(m->profile, PROF_BWD, PROF_ROUTER);
}

// ----------------------------------------------------------------------------
// A CompeteSMoE competition step of one layer (routers.h, "compete"), from the shared pieces:
// dispatch every token to every expert, the expert FFN, then its own responses, winners and
// losses, the shared combine over the winners and the shared balance loss on p^C.

static void compete_alloc(MoEModel* m, int N) {
    const MoEConfig* c = &m->config;
    CompeteBuffers* cb = &m->compete;
    int slots = m->router.compete_max_layers < c->num_layers ? m->router.compete_max_layers : c->num_layers;
    if (slots < 1) slots = 1;
    if (cb->memory != NULL && cb->slots >= slots && cb->N == N) return;
    size_t E = c->n_expert, Hs = sgemm_row_stride(c->expert_hidden), C = c->channels, S = slots, EN = E * N;
    freeCheck(cb->memory); freeCheck(cb->imemory); freeCheck(cb->dispatch); free(cb->slot_of_layer);
    cb->memory = (float*)callocCheck(S * (EN * (2 * C + 2 * Hs) + 2 * EN) + 2 * EN * C + EN, sizeof(float));
    cb->imemory = (int*)callocCheck(S * (E + 1 + 2 * EN) + EN, sizeof(int));
    cb->dispatch = (Dispatch*)callocCheck(S, sizeof(Dispatch));
    cb->slot_of_layer = (int*)mallocCheck(sizeof(int) * c->num_layers);
    float* p = cb->memory;
    int* q = cb->imemory;
    float* dout = p; p += EN * C;
    float* din = p; p += EN * C;
    cb->dresponse = p; p += EN;
    cb->response = p; p += S * EN;
    cb->response_p = p; p += S * EN;
    cb->all_experts = q; q += EN;
    for (size_t n = 0; n < (size_t)N; n++) for (size_t e = 0; e < E; e++) cb->all_experts[n * E + e] = (int)e;
    for (size_t s = 0; s < S; s++) {
        Dispatch* d = &cb->dispatch[s];
        d->R = (int)E;
        d->expert_offsets = q; q += E + 1;
        d->expert_token_index = q; q += EN;
        d->token_slot = q; q += EN;
        d->input = p; p += EN * C;
        d->dgelu = p; p += EN * Hs;
        d->gelu = p; p += EN * Hs;
        d->out = p; p += EN * C;
        d->dout = dout;
        d->din = din;
    }
    cb->slots = slots;
    cb->N = N;
}

// Forward of a competing layer l over N tokens; y (N,C) is its output. The layer's expert_index,
// gate and token_slot (N,K) get I_C, w and the winners' slots, so the combine and the MoE metrics
// see the winners.
static void compete_layer_forward(MoEModel* m, int l, int slot, int N, float* y) {
    const MoEConfig* c = &m->config;
    const RouterConfig* rc = &m->router;
    int E = c->n_expert, K = c->top_k, C = c->channels;
    CompeteBuffers* cb = &m->compete;
    Dispatch* d = &cb->dispatch[slot];
    const float* logits = m->acts.router_logits + (size_t)l * N * E;
    float* probs = m->acts.router_probs + (size_t)l * N * E;
    float* lse = m->acts.router_lse + (size_t)l * N;
    int* win = m->idx.expert_index + (size_t)l * N * K;
    float* w = m->acts.gate + (size_t)l * N * K;
    int* win_slot = m->idx.token_slot + (size_t)l * N * K;
    float* resp = cb->response + (size_t)slot * N * E;
    float* pc = cb->response_p + (size_t)slot * N * E;
    linear_scores_forward(m, l, N);  // l = W_g x, the router being distilled
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) lse[n] = softmax_lse(probs + (size_t)n * E, logits + (size_t)n * E, E);  // p^R
    profile_lap(m->profile, PROF_FWD, PROF_ROUTER);
    dispatch_forward(d, cb->all_experts, m->acts.ln2 + (size_t)l * N * C, N, E, C);
    ExpertBlock blk[256];
    dispatch_blocks(d, E, C, c->expert_hidden, blk);
    profile_lap(m->profile, PROF_FWD, PROF_DISPATCH);
    experts_forward(m, l, blk);
    profile_lap(m->profile, PROF_FWD, PROF_EXPERT_FFN);
    compete_responses(resp, pc, d->out, d->token_slot, N, E, C);
    compete_winners(win, w, win_slot, resp, d->token_slot, N, E, K, rc->compete_weights);
    profile_lap(m->profile, PROF_FWD, PROF_ROUTER);
    combine_forward(y, d->out, win_slot, w, N, K, C);
    profile_lap(m->profile, PROF_FWD, PROF_COMBINE);
    LayerLosses* st = &m->layer_stats[l];
    st->competed = 1;
    st->aux = st->z = 0.0f;
    st->router_distill = compete_distill_loss(probs, pc, win, N, E, K, rc->compete_alpha);
    st->diversity = compete_diversity_loss(d->out, win_slot, N, K, C);
    st->compete_balance = balance_loss(win, pc, N, E, K);
    st->agreement = compete_agreement(win, logits, N, E, K);
    m->compete_loss += rc->compete_router_coef * st->router_distill + rc->compete_div_coef * st->diversity +
                       rc->compete_bal_coef * st->compete_balance;
    profile_lap(m->profile, PROF_FWD, PROF_ROUTER);  // (the competition's losses: the router's side)
}

// Backward of a competing layer: dy (N,C) -> dx (N,C) (written), and every expert's and the
// router's weight gradients. The output's gradient reaches the experts through o (combine) and
// through w -> s -> o; L_bal through p^C -> s -> o; L_div through the winners' o; the router
// gets L_D's gradient only.
static void compete_layer_backward(MoEModel* m, int l, int slot, int N, const float* dy, float* dx, float loss_scale) {
    const MoEConfig* c = &m->config;
    const RouterConfig* rc = &m->router;
    int E = c->n_expert, K = c->top_k, C = c->channels;
    CompeteBuffers* cb = &m->compete;
    BackwardScratch* sc = &m->scratch;
    Dispatch* d = &cb->dispatch[slot];
    const float* resp = cb->response + (size_t)slot * N * E;
    const float* pc = cb->response_p + (size_t)slot * N * E;
    const float* probs = m->acts.router_probs + (size_t)l * N * E;
    const int* win = m->idx.expert_index + (size_t)l * N * K;
    const float* w = m->acts.gate + (size_t)l * N * K;
    const int* win_slot = m->idx.token_slot + (size_t)l * N * K;
    float* ds = cb->dresponse;
    memset(d->dout, 0, sizeof(float) * (size_t)E * N * C);
    combine_backward(d->dout, sc->dgate, dy, d->out, win_slot, w, N, K, C);
    profile_lap(m->profile, PROF_BWD, PROF_COMBINE);
    compete_winners_backward(ds, sc->dgate, w, resp, win, N, E, K, rc->compete_weights);
    float g_bal[256];
    balance_grad_coefs(g_bal, win, N, E, K, rc->compete_bal_coef, loss_scale);
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) balance_token_backward(ds + (size_t)n * E, pc + (size_t)n * E, g_bal, E);
    compete_responses_backward(d->dout, ds, d->out, d->token_slot, N, E, C);
    compete_diversity_backward(d->dout, d->out, win_slot, N, K, C, rc->compete_div_coef * loss_scale);
    profile_lap(m->profile, PROF_BWD, PROF_ROUTER);
    ExpertBlock blk[256];
    dispatch_blocks(d, E, C, c->expert_hidden, blk);
    experts_backward(m, l, blk);
    profile_lap(m->profile, PROF_BWD, PROF_EXPERT_FFN);
    dispatch_backward(dx, d, N, C);
    profile_lap(m->profile, PROF_BWD, PROF_DISPATCH);
    compete_distill_backward(sc->drouter, probs, pc, win, N, E, K, rc->compete_alpha, rc->compete_router_coef * loss_scale);
    linear_scores_backward(m, l, N, dx);
    profile_lap(m->profile, PROF_BWD, PROF_ROUTER);
}

// ----------------------------------------------------------------------------
// forward and backward of the whole model

// Does layer l compete in this forward? Only under --router compete, when mode says so.
static int layer_competes(const MoEModel* m, const RoutingMode* mode, int l) {
    return mode->compete_layers != NULL && mode->compete_layers[l] && m->router.router == ROUTER_COMPETE &&
           m->config.n_expert > 1;
}

// inputs (B,T) token ids; targets (B,T) or NULL (then no loss). Both must stay valid until backward.
// mode: the step (GatePro's window), training or not, and the layers that compete (CompeteSMoE).
static void moe_forward(MoEModel* m, const int* inputs, const int* targets, int B, int T, const RoutingMode* mode) {
    const MoEConfig* c = &m->config;
    int L = c->num_layers, C = c->channels, NH = c->num_heads, V = c->vocab_size, Vp = c->padded_vocab_size;
    if (T > c->max_seq_len) die("sequence length T=%d exceeds the model's maxT=%d", T, c->max_seq_len);
    for (int i = 0; i < B * T; i++) {
        if (inputs[i] < 0 || inputs[i] >= V) die("input token %d at position %d is outside [0, V=%d)", inputs[i], i, V);
        if (targets != NULL && (targets[i] < 0 || targets[i] >= V))
            die("target token %d at position %d is outside [0, V=%d)", targets[i], i, V);
    }
    if (m->acts_memory == NULL || B * T > m->batch_size * m->seq_len || B != m->batch_size || T != m->seq_len)
        moe_alloc_activations(m, B, T);
    m->inputs = inputs;
    m->targets = targets;
    int N = B * T;
    ParameterTensors* p = &m->params;
    ActivationTensors* a = &m->acts;
    MoEProfile* prof = m->profile;
    profile_mark(prof);
    encoder_forward(a->encoded, inputs, p->wte, p->wpe, B, T, C);
    profile_lap(prof, PROF_FWD, PROF_EMBEDDING);
    m->aux_loss = 0.0f;
    m->z_loss = 0.0f;
    m->compete_loss = 0.0f;
    if (mode->compete_layers != NULL && m->router.router == ROUTER_COMPETE && c->n_expert > 1) {
        compete_alloc(m, N);
        int slot = 0;
        for (int l = 0; l < L; l++) m->compete.slot_of_layer[l] = mode->compete_layers[l] && slot < m->compete.slots ? slot++ : -1;
    }
    for (int l = 0; l < L; l++) {
        const float* residual = l == 0 ? a->encoded : a->residual3 + (size_t)(l - 1) * N * C;
        size_t NC = (size_t)N * C;
        float* ln1 = a->ln1 + l * NC;
        float* qkv = a->qkv + l * NC * 3;
        float* atty = a->atty + l * NC;
        float* residual2 = a->residual2 + l * NC;
        float* ln2 = a->ln2 + l * NC;
        float* residual3 = a->residual3 + l * NC;
        layernorm_forward(ln1, a->ln1_mean + (size_t)l * N, a->ln1_rstd + (size_t)l * N, residual,
                          p->ln1w + l * C, p->ln1b + l * C, N, C);
        profile_lap(prof, PROF_FWD, PROF_LAYERNORM);
        matmul_forward(qkv, ln1, p->qkvw + (size_t)l * 3 * C * C, p->qkvb + (size_t)l * 3 * C, N, C, 3 * C);
        profile_lap(prof, PROF_FWD, PROF_QKV);
        attention_forward(atty, a->att + (size_t)l * B * NH * T * T, qkv, B, T, C, NH);
        profile_lap(prof, PROF_FWD, PROF_ATTENTION);
        matmul_forward(residual2, atty, p->attprojw + (size_t)l * C * C, p->attprojb + l * C, N, C, C);
        profile_lap(prof, PROF_FWD, PROF_ATTPROJ);
        residual_forward(residual2, residual2, residual, NC);
        profile_lap(prof, PROF_FWD, PROF_RESIDUAL);
        layernorm_forward(ln2, a->ln2_mean + (size_t)l * N, a->ln2_rstd + (size_t)l * N, residual2,
                          p->ln2w + l * C, p->ln2b + l * C, N, C);
        profile_lap(prof, PROF_FWD, PROF_LAYERNORM);
        LayerLosses* st = &m->layer_stats[l];
        memset(st, 0, sizeof(*st));
        if (layer_competes(m, mode, l)) {
            if (m->compete.slot_of_layer[l] < 0) die("more layers compete in one step than --compete-max-layers allows");
            compete_layer_forward(m, l, m->compete.slot_of_layer[l], N, residual3);
        } else {
            routed_layer_forward(m, l, N, residual3, mode);
            m->aux_loss += st->aux;
            m->z_loss += st->z;
        }
        if (mode->training) {  // each expert's tokens over the step, for the routers' after_step
            double picks[256];
            count_picks(picks, m->idx.expert_index + (size_t)l * N * c->top_k, (size_t)N * c->top_k, c->n_expert);
            for (int e = 0; e < c->n_expert; e++) m->step_load[(size_t)l * c->n_expert + e] += picks[e];
        }
        profile_lap(prof, PROF_FWD, PROF_ROUTER);
        residual_forward(residual3, residual3, residual2, NC);
        profile_lap(prof, PROF_FWD, PROF_RESIDUAL);
    }
    const float* last = a->residual3 + (size_t)(L - 1) * N * C;
    layernorm_forward(a->lnf, a->lnf_mean, a->lnf_rstd, last, p->lnfw, p->lnfb, N, C);
    profile_lap(prof, PROF_FWD, PROF_LAYERNORM);
    matmul_forward(a->logits, a->lnf, p->wte, NULL, N, C, Vp);
    m->mean_loss = targets != NULL ? crossentropy_forward(a->losses, a->logits_lse, a->logits, targets, N, V, Vp) : -1.0f;
    profile_lap(prof, PROF_FWD, PROF_LM_HEAD);
}

static void moe_zero_grad(MoEModel* m) {
    memset(m->grads_memory, 0, m->num_parameters * sizeof(float));
    m->grads_zero = 1;
}

// Accumulates into m->grads the gradient of loss_scale * (LM loss + aux losses) of the last
// forward. loss_scale is 1/(number of micro-batches) under gradient accumulation.
static void moe_backward(MoEModel* m, float loss_scale) {
    if (m->mean_loss < 0.0f) die("moe_backward: the forward pass had no targets");
    const MoEConfig* c = &m->config;
    int B = m->batch_size, T = m->seq_len, N = B * T;
    int L = c->num_layers, C = c->channels, NH = c->num_heads, V = c->vocab_size, Vp = c->padded_vocab_size;
    size_t NC = (size_t)N * C;
    ParameterTensors* p = &m->params;
    ParameterTensors* g = &m->grads;
    ActivationTensors* a = &m->acts;
    BackwardScratch* s = &m->scratch;
    MoEProfile* prof = m->profile;
    profile_mark(prof);

    crossentropy_backward_inplace(a->logits, a->logits_lse, m->targets, loss_scale / N, N, V, Vp);
    matmul_backward(s->dln, 0, g->wte, NULL, a->logits, a->lnf, p->wte, N, C, Vp);
    profile_lap(prof, PROF_BWD, PROF_LM_HEAD);
    memset(s->dresidual, 0, NC * sizeof(float));
    layernorm_backward(s->dresidual, g->lnfw, g->lnfb, s->dln, a->residual3 + (size_t)(L - 1) * NC, p->lnfw,
                       a->lnf_mean, a->lnf_rstd, N, C);
    profile_lap(prof, PROF_BWD, PROF_LAYERNORM);
    for (int l = L - 1; l >= 0; l--) {
        const float* residual = l == 0 ? a->encoded : a->residual3 + (size_t)(l - 1) * NC;
        // residual3 = residual2 + moe(ln2(residual2)); the layer writes dln
        if (m->layer_stats[l].competed) compete_layer_backward(m, l, m->compete.slot_of_layer[l], N, s->dresidual, s->dln, loss_scale);
        else routed_layer_backward(m, l, N, s->dresidual, s->dln, loss_scale);
        layernorm_backward(s->dresidual, g->ln2w + l * C, g->ln2b + l * C, s->dln, a->residual2 + l * NC,
                           p->ln2w + l * C, a->ln2_mean + (size_t)l * N, a->ln2_rstd + (size_t)l * N, N, C);
        profile_lap(prof, PROF_BWD, PROF_LAYERNORM);
        // residual2 = residual + attproj(attention(qkv(ln1(residual))))
        float* datty = s->dbig + NC * 3;   // (written, as dqkv is, by its only producer: no zeroing)
        float* dqkv = s->dbig;
        matmul_backward(datty, 0, g->attprojw + (size_t)l * C * C, g->attprojb + l * C, s->dresidual,
                        a->atty + l * NC, p->attprojw + (size_t)l * C * C, N, C, C);
        profile_lap(prof, PROF_BWD, PROF_ATTPROJ);
        attention_backward(dqkv, datty, a->qkv + l * NC * 3, a->att + (size_t)l * B * NH * T * T, B, T, C, NH, s->datt);
        profile_lap(prof, PROF_BWD, PROF_ATTENTION);
        matmul_backward(s->dln, 0, g->qkvw + (size_t)l * 3 * C * C, g->qkvb + (size_t)l * 3 * C, dqkv,
                        a->ln1 + l * NC, p->qkvw + (size_t)l * 3 * C * C, N, C, 3 * C);
        profile_lap(prof, PROF_BWD, PROF_QKV);
        layernorm_backward(s->dresidual, g->ln1w + l * C, g->ln1b + l * C, s->dln, residual, p->ln1w + l * C,
                           a->ln1_mean + (size_t)l * N, a->ln1_rstd + (size_t)l * N, N, C);
        profile_lap(prof, PROF_BWD, PROF_LAYERNORM);
    }
    encoder_backward(g->wte, g->wpe, s->dresidual, m->inputs, B, T, C);
    profile_lap(prof, PROF_BWD, PROF_EMBEDDING);
    m->mean_loss = -1.0f;  // the logits are now gradients; a second backward needs a new forward
    m->grads_zero = 0;
}

// After each optimizer step: the router's update (auxfree's bias), then a fresh load count.
static void moe_after_step(MoEModel* m) {
    const Router* router = &ROUTERS[m->router.router];
    if (router->after_step != NULL && m->config.n_expert > 1) router->after_step(m);
    memset(m->step_load, 0, sizeof(double) * (size_t)m->config.num_layers * m->config.n_expert);
}

// ----------------------------------------------------------------------------
// AdamW with global-norm clipping (docs/model.md)

// ||g||_2 over all parameters, summed in GRAD_NORM_CHUNKS fixed chunks in double: the same bits
// for any number of threads, and for any number of MPI ranks (mpi_moe.h gives each rank whole
// chunks, so the sum of their partials is this sum).
#define GRAD_NORM_CHUNKS 256
static size_t grad_norm_chunk(size_t n) { return (n + GRAD_NORM_CHUNKS - 1) / GRAD_NORM_CHUNKS; }

// Sums of squares of the gradient's chunks [c0, c1) into partial[c0..c1). Inside a chunk, element
// j goes to lane (j - chunk start) mod GRAD_NORM_LANES and the lanes are added in order at the end:
// a fixed order (the same bits for any thread count), and 32 independent sums the compiler keeps
// in vector registers. One running sum waited 4 cycles per element on the previous add: 78 ms of
// a 137M-parameter model's step, 5x the time to read its gradients.
#define GRAD_NORM_LANES 32
static void grad_sq_partials(const MoEModel* m, int c0, int c1, double* partial) {
    size_t n = m->num_parameters, chunk = grad_norm_chunk(n);
    #pragma omp parallel for schedule(static)
    for (int i = c0; i < c1; i++) {
        size_t lo = (size_t)i * chunk, hi = lo + chunk < n ? lo + chunk : n;
        const float* g = m->grads_memory;
        double lane[GRAD_NORM_LANES] = {0.0};
        size_t j = lo;
        for (; j + GRAD_NORM_LANES <= hi; j += GRAD_NORM_LANES)
            for (int q = 0; q < GRAD_NORM_LANES; q++) lane[q] += (double)g[j + q] * g[j + q];
        for (; j < hi; j++) lane[(j - lo) % GRAD_NORM_LANES] += (double)g[j] * g[j];
        double s = 0.0;
        for (int q = 0; q < GRAD_NORM_LANES; q++) s += lane[q];
        partial[i] = s;
    }
}

static float grad_global_norm(const MoEModel* m) {
    double partial[GRAD_NORM_CHUNKS];
    grad_sq_partials(m, 0, GRAD_NORM_CHUNKS, partial);
    double total = 0.0;
    for (int i = 0; i < GRAD_NORM_CHUNKS; i++) total += partial[i];
    return (float)sqrt(total);
}

// Subnormal floats (nonzero, below 1.2e-38) off: read as zero and flushed to zero (x86's MXCSR
// DAZ and FTZ bits), on the calling thread until subnormals_restore. For AdamW's update: the moments
// of a parameter whose gradient stays zero (an expert no token reaches) shrink by beta each step,
// reach the subnormals after ~700 (m) and ~1300 (v) steps, and stay there, as 0.9 times the
// smallest subnormal rounds back to itself. On an Intel core every such element then costs a
// microcode assist: on a Xeon, 10.6M parameters with 5% of them there took 2.6x as long per update
// (20%: 6.7x), and the slowdown never went away; with the flush, 1.0x (a harness). Values below
// 1.2e-38 only: a gradient's square down there counts as 0 in v, a moment down there becomes 0.
#if defined(__x86_64__) || defined(__SSE__)
static inline unsigned subnormals_off(void) {
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);   // FTZ (bit 15), DAZ (bit 6)
    return csr;
}
static inline void subnormals_restore(unsigned csr) { _mm_setcsr(csr); }
#else
static inline unsigned subnormals_off(void) { return 0; }   // (elsewhere: as the platform does)
static inline void subnormals_restore(unsigned csr) { (void)csr; }
#endif

// AdamW on the parameters [lo, hi) of the flat buffer; mm and vv hold the moments of exactly
// that range (mm[0] is parameter lo's). t >= 1 is the update number. Grads are multiplied by
// clip_scale first. p <- p - lr * (mhat / (sqrt(vhat) + eps) + wd * p), decay only where
// PARAM_DECAY says. Consumes the gradients: leaves them zero for the next step's accumulation, in
// the same pass over memory (a separate zeroing pass over a wide MoE's gradients costs ~5% of a
// step). Elementwise, so any split of the range (ZeRO-1's shards) gives the same bits. One parallel
// region for all the tensors (each tensor's loop split statically, no barrier between tensors).
// Subnormals are off in the update (subnormals_off, above).
static void adamw_update_range(MoEModel* m, size_t lo, size_t hi, float* mm, float* vv, float lr, float beta1,
                               float beta2, float eps, float weight_decay, float clip_scale, int t) {
    float bc1 = 1.0f - powf(beta1, (float)t), bc2 = 1.0f - powf(beta2, (float)t);
    #pragma omp parallel
    {
        unsigned csr = subnormals_off();
        size_t start = 0;
        for (int ti = 0; ti < NUM_PARAMETER_TENSORS; ti++) {
            size_t end = start + m->param_sizes[ti];
            size_t a = lo > start ? lo : start, b = hi < end ? hi : end;
            float wd = PARAM_DECAY[ti] ? weight_decay : 0.0f;
            if (a < b) {
                float* p = m->params_memory + a;
                float* g = m->grads_memory + a;
                float* mt = mm + (a - lo);
                float* vt = vv + (a - lo);
                #pragma omp for schedule(static) nowait
                for (size_t i = 0; i < b - a; i++) {
                    float grad = g[i] * clip_scale;
                    g[i] = 0.0f;
                    mt[i] = beta1 * mt[i] + (1.0f - beta1) * grad;
                    vt[i] = beta2 * vt[i] + (1.0f - beta2) * grad * grad;
                    float mhat = mt[i] / bc1, vhat = vt[i] / bc2;
                    p[i] -= lr * (mhat / (sqrtf(vhat) + eps) + wd * p[i]);
                }
            }
            start = end;
        }
        subnormals_restore(csr);
    }
}

// One AdamW step over all parameters (docs/model.md, Training).
static void moe_adamw_update(MoEModel* m, float lr, float beta1, float beta2, float eps, float weight_decay,
                             float clip_scale, int t) {
    if (m->m_memory == NULL) {
        m->m_memory = (float*)callocCheck(m->num_parameters, sizeof(float));
        m->v_memory = (float*)callocCheck(m->num_parameters, sizeof(float));
    }
    adamw_update_range(m, 0, m->num_parameters, m->m_memory, m->v_memory, lr, beta1, beta2, eps, weight_decay,
                       clip_scale, t);
}

// Learning rate at 0-based step s of S: linear warmup over W steps, then cosine to lr * final_frac.
static float lr_schedule(float lr, int s, int W, int S, float final_frac) {
    if (s < W) return lr * (float)(s + 1) / (float)W;
    float lr_min = lr * final_frac;
    int span = S - W > 1 ? S - W : 1;
    float progress = (float)(s - W) / (float)span;
    if (progress > 1.0f) progress = 1.0f;
    return lr_min + 0.5f * (lr - lr_min) * (1.0f + cosf((float)M_PI * progress));
}

// ----------------------------------------------------------------------------
// checkpoints
//
// int32 header[256]:
//   [0] 20261122 magic  [1] 2 version (1 is read too: see below)  [2] maxT  [3] V  [4] Vp  [5] L  [6] NH  [7] C  [8] E  [9] K  [10] H
//   [11] router (0 topk, 1 gatepro, 2 compete, 3 auxfree, 4 xmoe)  [12] gate-norm (0 topk_softmax, 1 softmax_topk)
//   [13] 1 if optimizer state follows  [14] updates applied (= step in the file name)
//   [15] float32 bits of the GatePro lambda  [16] gatepro-start  [17] gatepro-stop  [18] seed
//   [19] float32 bits of --aux-loss  [20] float32 bits of --z-loss  [21] total steps of the run (-x)
//   [22] float32 bits of --compete-rate  [23] float32 bits of --compete-warmup  [24] --compete-max-layers
//   [25] --compete-weights (0 norm, 1 softmax)  [26] float32 bits of --compete-alpha
//   [27] float32 bits of --compete-router-coef  [28] float32 bits of --compete-div-coef
//   [29] float32 bits of --compete-bal-coef  [30] X-MoE dim De (0: no X-MoE parameters)
//   [31] float32 bits of --auxfree-rate
//   [64..95] the trainer's run settings (TrainState.run_header; train_moe.c's RESUME_RULES say which
//   flag each holds): [64] 1 if present  [65] B  [66] T  [67] -d total batch as given  [68] float32
//   bits of the lr  [69] warmup steps  [70] float32 bits of the final lr fraction  [71] of the
//   weight decay  [72] of the gradient clip  [73] --synthetic-tokens  [74] data source (1 the
//   synthetic corpus, 2 shards)  [75] crc32 of the -i pattern; the rest 0.
// Then the parameters, float32, in the order of ParameterTensors (docs/model.md): GPT-2's and
// the experts' 17 tensors, then router_bias (L,E) (auxfree's b), xmoe_proj (L,De,C), xmoe_experts
// (L,E,De), xmoe_log_temp (L, or none when De = 0). Then, if [13]: AdamW m (all parameters), AdamW
// v (all parameters), then the train state below (TRAIN_STATE_BYTES bytes). Last: uint32 zlib
// crc32 (initial value 0) of every byte before it. Written to a temp file, fsync'd, renamed.
// Version 1 (before auxfree and X-MoE) is the same file without [30], [31] and the four router
// tensors (its m and v likewise): it loads with b = 0 and no X-MoE parameters.
//
// Train state, little-endian int64 each: data epoch, data shard position, data sample position
// (the training DataLoader's resumable position), the sampling RNG state (uint64), 4 reserved (0).
#define CHECKPOINT_MAGIC 20261122
#define CHECKPOINT_VERSION 2
enum {
    HDR_MAGIC = 0, HDR_VERSION, HDR_T, HDR_V, HDR_VP, HDR_L, HDR_NH, HDR_C, HDR_E, HDR_K, HDR_H,
    HDR_ROUTER, HDR_GATE_NORM, HDR_HAS_OPT, HDR_STEP, HDR_GATEPRO_LAMBDA, HDR_GATEPRO_START,
    HDR_GATEPRO_STOP, HDR_SEED, HDR_AUX_COEF, HDR_Z_COEF, HDR_TOTAL_STEPS, HDR_COMPETE_RATE, HDR_COMPETE_WARMUP,
    HDR_COMPETE_MAX_LAYERS, HDR_COMPETE_WEIGHTS, HDR_COMPETE_ALPHA, HDR_COMPETE_ROUTER_COEF, HDR_COMPETE_DIV_COEF,
    HDR_COMPETE_BAL_COEF, HDR_XMOE_DIM, HDR_AUXFREE_RATE,
    HDR_RUN_FIRST = 64, HDR_RUN_PRESENT = 64, HDR_RUN_BATCH, HDR_RUN_SEQ_LEN, HDR_RUN_TOTAL_BATCH, HDR_RUN_LR,
    HDR_RUN_WARMUP, HDR_RUN_FINAL_LR, HDR_RUN_WEIGHT_DECAY, HDR_RUN_GRAD_CLIP, HDR_RUN_SYNTH_TOKENS,
    HDR_RUN_DATA_SOURCE, HDR_RUN_TRAIN_CRC, HDR_RUN_END = 96
};
typedef struct {
    int64_t data_epoch, data_shard_pos, data_sample_pos;  // the first TRAIN_STATE_BYTES are the file's
    uint64_t sample_rng;
    int64_t reserved[4];
    int32_t run_header[HDR_RUN_END - HDR_RUN_FIRST];      // header[64..95], written when ts is given
} TrainState;
#define TRAIN_STATE_BYTES 64

typedef struct {  // what a checkpoint says besides the weights
    int has_optimizer;
    int step;
    uint64_t seed;
    int total_steps;
    int header[256];
} CheckpointInfo;

// zlib's crc32 takes uInt lengths: feed it in 1 GiB pieces.
static uLong crc32_big(uLong crc, const unsigned char* p, size_t n) {
    while (n > 0) {
        size_t piece = n < (1u << 30) ? n : (1u << 30);
        crc = crc32(crc, p, (uInt)piece);
        p += piece;
        n -= piece;
    }
    return crc;
}

static int write_all(FILE* f, const void* buf, size_t n, uLong* crc, size_t* written) {
    const unsigned char* p = (const unsigned char*)buf;
    size_t left = n;
    while (left > 0) {
        size_t piece = left < (1u << 30) ? left : (1u << 30);
        *crc = crc32_big(*crc, p, piece);
        size_t put = fwrite(p, 1, piece, f);
        *written += put;
        if (put != piece) return -1;
        p += piece;
        left -= piece;
    }
    return 0;
}

// The size of a checkpoint file of nparams parameters, with or without the optimizer state.
static size_t checkpoint_bytes(size_t nparams, int with_optimizer) {
    return 1024 + nparams * 4 + (with_optimizer ? 2 * nparams * 4 + TRAIN_STATE_BYTES : 0) + 4;
}

// fsync of the directory holding path, so a rename into it survives a power cut.
static int fsync_parent_dir(const char* path) {
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", path);
    char* slash = strrchr(dir, '/');
    if (slash == NULL) snprintf(dir, sizeof(dir), ".");
    else if (slash == dir) slash[1] = '\0';
    else *slash = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

// Saves the model (and, when with_optimizer, AdamW state and ts) atomically: written whole to
// PATH.tmpPID, fsync'd, renamed over PATH, the directory fsync'd. On failure the temp file is
// removed, PATH and every other file are untouched, and err names the path, the bytes the file
// needs and the system's reason (disk full, file-size limit, permissions). 0 or -1.
static int moe_save_checkpoint(const MoEModel* m, const char* path, int with_optimizer, int step, uint64_t seed,
                               int total_steps, const TrainState* ts, char* err, size_t errlen) {
    const MoEConfig* c = &m->config;
    int header[256] = {0};
    header[HDR_MAGIC] = CHECKPOINT_MAGIC; header[HDR_VERSION] = CHECKPOINT_VERSION;
    header[HDR_T] = c->max_seq_len; header[HDR_V] = c->vocab_size; header[HDR_VP] = c->padded_vocab_size;
    header[HDR_L] = c->num_layers; header[HDR_NH] = c->num_heads; header[HDR_C] = c->channels;
    header[HDR_E] = c->n_expert; header[HDR_K] = c->top_k; header[HDR_H] = c->expert_hidden;
    header[HDR_ROUTER] = m->router.router; header[HDR_GATE_NORM] = m->router.gate_norm;
    header[HDR_HAS_OPT] = with_optimizer && m->m_memory != NULL;
    header[HDR_STEP] = step;
    header[HDR_GATEPRO_LAMBDA] = (int)float_bits(m->router.gatepro_lambda);
    header[HDR_GATEPRO_START] = m->router.gatepro_start; header[HDR_GATEPRO_STOP] = m->router.gatepro_stop;
    header[HDR_SEED] = (int)(uint32_t)seed;
    header[HDR_AUX_COEF] = (int)float_bits(m->router.aux_loss_coef);
    header[HDR_Z_COEF] = (int)float_bits(m->router.z_loss_coef);
    header[HDR_TOTAL_STEPS] = total_steps;
    const RouterConfig* rc = &m->router;
    header[HDR_COMPETE_RATE] = (int)float_bits(rc->compete_rate);
    header[HDR_COMPETE_WARMUP] = (int)float_bits(rc->compete_warmup);
    header[HDR_COMPETE_MAX_LAYERS] = rc->compete_max_layers;
    header[HDR_COMPETE_WEIGHTS] = rc->compete_weights;
    header[HDR_COMPETE_ALPHA] = (int)float_bits(rc->compete_alpha);
    header[HDR_COMPETE_ROUTER_COEF] = (int)float_bits(rc->compete_router_coef);
    header[HDR_COMPETE_DIV_COEF] = (int)float_bits(rc->compete_div_coef);
    header[HDR_COMPETE_BAL_COEF] = (int)float_bits(rc->compete_bal_coef);
    header[HDR_XMOE_DIM] = c->xmoe_dim;
    header[HDR_AUXFREE_RATE] = (int)float_bits(rc->auxfree_rate);
    if (ts != NULL) memcpy(header + HDR_RUN_FIRST, ts->run_header, sizeof(ts->run_header));
    size_t total = checkpoint_bytes(m->num_parameters, header[HDR_HAS_OPT]), written = 0;
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp%d", path, (int)getpid());
    FILE* f = fopen(tmp, "wb");
    if (f == NULL)
        return set_err(err, errlen, "checkpoint %s: cannot create temp file %s (%zu bytes needed): %s", path, tmp, total,
                       strerror(errno));
    uLong crc = crc32(0L, Z_NULL, 0);
    int bad = write_all(f, header, sizeof(header), &crc, &written);
    if (!bad) bad = write_all(f, m->params_memory, m->num_parameters * sizeof(float), &crc, &written);
    if (!bad && header[HDR_HAS_OPT]) {
        unsigned char state[TRAIN_STATE_BYTES] = {0};
        if (ts != NULL) memcpy(state, ts, TRAIN_STATE_BYTES);
        bad = write_all(f, m->m_memory, m->num_parameters * sizeof(float), &crc, &written);
        if (!bad) bad = write_all(f, m->v_memory, m->num_parameters * sizeof(float), &crc, &written);
        if (!bad) bad = write_all(f, state, sizeof(state), &crc, &written);
    }
    uint32_t crc32v = (uint32_t)crc;
    if (!bad) { bad = fwrite(&crc32v, 4, 1, f) != 1; written += bad ? 0 : 4; }
    if (!bad) bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
    int saved_errno = errno;
    if (fclose(f) != 0 && !bad) { bad = 1; saved_errno = errno; }
    if (bad) {
        remove(tmp);
        return set_err(err, errlen, "checkpoint %s: cannot write %zu bytes (%zu written before the failure): %s; the "
                       "previous checkpoints are untouched (free disk space or raise the file-size limit)", path, total,
                       written, strerror(saved_errno ? saved_errno : EIO));
    }
    if (rename(tmp, path) != 0) {
        saved_errno = errno;
        remove(tmp);
        return set_err(err, errlen, "checkpoint %s: rename from %s failed: %s", path, tmp, strerror(saved_errno));
    }
    if (fsync_parent_dir(path) != 0)
        return set_err(err, errlen, "checkpoint %s: written, but fsync of its directory failed: %s", path, strerror(errno));
    return 0;
}

// The first out-of-range setting in a checkpoint header (a name to print), or NULL. The crc only
// says the file is as written; this says that what was written makes sense (docs/formats.md).
static const char* checkpoint_settings_check(const int* h) {
    #define FIELD_FLOAT(i) bits_float((uint32_t)h[i])
    #define NONNEG_FLOAT(i) (isfinite(FIELD_FLOAT(i)) && FIELD_FLOAT(i) >= 0.0f)
    #define UNIT_FLOAT(i) (NONNEG_FLOAT(i) && FIELD_FLOAT(i) <= 1.0f)
    if (!NONNEG_FLOAT(HDR_GATEPRO_LAMBDA)) return "[15] GatePro lambda";
    if (h[HDR_GATEPRO_START] < 0) return "[16] gatepro-start";
    if (h[HDR_GATEPRO_STOP] < -1 || (h[HDR_GATEPRO_STOP] >= 0 && h[HDR_GATEPRO_STOP] < h[HDR_GATEPRO_START]))
        return "[17] gatepro-stop (must be -1 or >= gatepro-start)";
    if (!NONNEG_FLOAT(HDR_AUX_COEF)) return "[19] aux-loss";
    if (!NONNEG_FLOAT(HDR_Z_COEF)) return "[20] z-loss";
    if (h[HDR_TOTAL_STEPS] < 0) return "[21] total steps";
    if (h[HDR_COMPETE_MAX_LAYERS] < 0) return "[24] compete-max-layers";
    if (h[HDR_COMPETE_MAX_LAYERS] > 0) {  // 0: written without CompeteSMoE settings
        if (!UNIT_FLOAT(HDR_COMPETE_RATE)) return "[22] compete-rate";
        if (!UNIT_FLOAT(HDR_COMPETE_WARMUP)) return "[23] compete-warmup";
        if (h[HDR_COMPETE_WEIGHTS] < 0 || h[HDR_COMPETE_WEIGHTS] > 1) return "[25] compete-weights";
        if (!NONNEG_FLOAT(HDR_COMPETE_ALPHA)) return "[26] compete-alpha";
        if (!NONNEG_FLOAT(HDR_COMPETE_ROUTER_COEF)) return "[27] compete-router-coef";
        if (!NONNEG_FLOAT(HDR_COMPETE_DIV_COEF)) return "[28] compete-div-coef";
        if (!NONNEG_FLOAT(HDR_COMPETE_BAL_COEF)) return "[29] compete-bal-coef";
    }
    if (!NONNEG_FLOAT(HDR_AUXFREE_RATE)) return "[31] auxfree-rate";
    if (h[HDR_RUN_PRESENT] != 0 && h[HDR_RUN_PRESENT] != 1) return "[64] run settings present";
    if (h[HDR_RUN_PRESENT]) {
        if (h[HDR_RUN_BATCH] < 1) return "[65] batch";
        if (h[HDR_RUN_SEQ_LEN] < 1) return "[66] seq-len";
        if (h[HDR_RUN_TOTAL_BATCH] < 0) return "[67] total-batch";
        if (!NONNEG_FLOAT(HDR_RUN_LR)) return "[68] lr";
        if (h[HDR_RUN_WARMUP] < 0) return "[69] warmup";
        if (!UNIT_FLOAT(HDR_RUN_FINAL_LR)) return "[70] final-lr-frac";
        if (!NONNEG_FLOAT(HDR_RUN_WEIGHT_DECAY)) return "[71] weight-decay";
        if (!NONNEG_FLOAT(HDR_RUN_GRAD_CLIP)) return "[72] grad-clip";
        if (h[HDR_RUN_SYNTH_TOKENS] < 0) return "[73] synthetic-tokens";
        if (h[HDR_RUN_DATA_SOURCE] < 1 || h[HDR_RUN_DATA_SOURCE] > 2) return "[74] data source";
    }
    return NULL;
    #undef FIELD_FLOAT
    #undef NONNEG_FLOAT
    #undef UNIT_FLOAT
}

// Loads a checkpoint into m. If m has no parameters yet it is built from the header; otherwise
// the header's config must equal m's. The header is checked first (so a huge or wrong file is
// refused before it is read), then the whole file is read and its crc checked before anything is
// copied, so a bad file never half-loads. 0, or -1 with the reason in err.
static int moe_load_checkpoint(MoEModel* m, const char* path, CheckpointInfo* info, TrainState* ts,
                               char* err, size_t errlen) {
    FILE* f = fopen(path, "rb");
    if (f == NULL) return set_err(err, errlen, "checkpoint %s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return set_err(err, errlen, "checkpoint %s: not a regular file", path);
    }
    long fsize = (long)st.st_size;
    if (fsize < 1024 + 4) {
        fclose(f);
        return set_err(err, errlen, "checkpoint %s: file is %ld bytes, smaller than the 1028-byte minimum (truncated?)", path, fsize);
    }
    // the header first: the size it implies is checked before the file is read whole
    int header[256];
    unsigned char* buf = NULL;
    int rc = 0;
    if (fread(header, sizeof(header), 1, f) != 1) { fclose(f); return set_err(err, errlen, "checkpoint %s: short read", path); }
    if (header[HDR_MAGIC] != CHECKPOINT_MAGIC) {
        rc = set_err(err, errlen, "checkpoint %s: bad magic %d (expected %d): not a moe.c checkpoint", path,
                     header[HDR_MAGIC], CHECKPOINT_MAGIC);
        goto done;
    }
    int version = header[HDR_VERSION];
    if (version != 1 && version != CHECKPOINT_VERSION) {
        rc = set_err(err, errlen, "checkpoint %s: version %d, this build reads versions 1 and %d", path, version, CHECKPOINT_VERSION);
        goto done;
    }
    if (version == 1) {  // read as if it held the version-2 fields' defaults
        header[HDR_XMOE_DIM] = 0;
        header[HDR_AUXFREE_RATE] = (int)float_bits(ROUTER_DEFAULTS.auxfree_rate);
    }
    MoEConfig cfg = {header[HDR_T], header[HDR_V], header[HDR_VP], header[HDR_L], header[HDR_NH],
                     header[HDR_C], header[HDR_E], header[HDR_K], header[HDR_H], header[HDR_XMOE_DIM]};
    char why[256];
    if (config_check(&cfg, why, sizeof(why)) != 0 || cfg.n_expert > 256) {
        rc = set_err(err, errlen, "checkpoint %s: header holds an invalid model: %s", path,
                     cfg.n_expert > 256 ? "more than 256 experts" : why);
        goto done;
    }
    if (header[HDR_ROUTER] < 0 || header[HDR_ROUTER] >= NUM_ROUTERS || header[HDR_GATE_NORM] < 0 || header[HDR_GATE_NORM] > 1 ||
        (header[HDR_HAS_OPT] != 0 && header[HDR_HAS_OPT] != 1) || header[HDR_STEP] < 0) {
        rc = set_err(err, errlen, "checkpoint %s: header has an invalid router/gate-norm/optimizer/step field", path);
        goto done;
    }
    if (header[HDR_ROUTER] == ROUTER_XMOE && cfg.xmoe_dim < 1) {
        rc = set_err(err, errlen, "checkpoint %s: router xmoe but no X-MoE parameters (header [30] = %d)", path, cfg.xmoe_dim);
        goto done;
    }
    const char* bad_setting = checkpoint_settings_check(header);
    if (bad_setting != NULL) {
        rc = set_err(err, errlen, "checkpoint %s: header field %s is out of range: not a file this program wrote", path,
                     bad_setting);
        goto done;
    }
    // nparams: the tensors this file holds (version 1: the first 17); the rest load as 0
    size_t sizes[NUM_PARAMETER_TENSORS], nparams = 0;
    fill_param_sizes(sizes, &cfg);
    for (int i = 0; i < (version == 1 ? NUM_PARAMETER_TENSORS_V1 : NUM_PARAMETER_TENSORS); i++) nparams += sizes[i];
    size_t expect = checkpoint_bytes(nparams, header[HDR_HAS_OPT]);
    if ((size_t)fsize != expect) {
        rc = set_err(err, errlen, "checkpoint %s: header describes %zu bytes, file holds %ld (truncated or corrupt)",
                     path, expect, fsize);
        goto done;
    }
    buf = (unsigned char*)mallocCheck((size_t)fsize);
    rewind(f);
    if (fread(buf, 1, (size_t)fsize, f) != (size_t)fsize) {
        rc = set_err(err, errlen, "checkpoint %s: short read", path);
        goto done;
    }
    uint32_t stored;
    memcpy(&stored, buf + fsize - 4, 4);
    uint32_t actual = (uint32_t)crc32_big(crc32(0L, Z_NULL, 0), buf, (size_t)fsize - 4);
    if (stored != actual) {
        rc = set_err(err, errlen, "checkpoint %s: crc32 mismatch (stored %08x, computed %08x): the file is corrupt",
                     path, stored, actual);
        goto done;
    }
    if (m->params_memory == NULL) {
        moe_build(m, &cfg);
    } else if (memcmp(&m->config, &cfg, sizeof(cfg)) != 0) {
        rc = set_err(err, errlen, "checkpoint %s: model shape differs from the one in memory", path);
        goto done;
    }
    memset(m->params_memory, 0, m->num_parameters * 4);
    memcpy(m->params_memory, buf + 1024, nparams * 4);
    m->router.router = header[HDR_ROUTER];
    m->router.gate_norm = header[HDR_GATE_NORM];
    m->router.gatepro_lambda = bits_float((uint32_t)header[HDR_GATEPRO_LAMBDA]);
    m->router.gatepro_start = header[HDR_GATEPRO_START];
    m->router.gatepro_stop = header[HDR_GATEPRO_STOP];
    m->router.aux_loss_coef = bits_float((uint32_t)header[HDR_AUX_COEF]);
    m->router.z_loss_coef = bits_float((uint32_t)header[HDR_Z_COEF]);
    if (header[HDR_COMPETE_MAX_LAYERS] > 0) {  // files written without CompeteSMoE settings keep the defaults
        m->router.compete_rate = bits_float((uint32_t)header[HDR_COMPETE_RATE]);
        m->router.compete_warmup = bits_float((uint32_t)header[HDR_COMPETE_WARMUP]);
        m->router.compete_max_layers = header[HDR_COMPETE_MAX_LAYERS];
        m->router.compete_weights = header[HDR_COMPETE_WEIGHTS] == COMPETE_WEIGHTS_SOFTMAX;
        m->router.compete_alpha = bits_float((uint32_t)header[HDR_COMPETE_ALPHA]);
        m->router.compete_router_coef = bits_float((uint32_t)header[HDR_COMPETE_ROUTER_COEF]);
        m->router.compete_div_coef = bits_float((uint32_t)header[HDR_COMPETE_DIV_COEF]);
        m->router.compete_bal_coef = bits_float((uint32_t)header[HDR_COMPETE_BAL_COEF]);
    }
    m->router.auxfree_rate = bits_float((uint32_t)header[HDR_AUXFREE_RATE]);
    if (header[HDR_HAS_OPT]) {
        if (m->m_memory == NULL) {
            m->m_memory = (float*)callocCheck(m->num_parameters, sizeof(float));
            m->v_memory = (float*)callocCheck(m->num_parameters, sizeof(float));
        }
        memset(m->m_memory, 0, m->num_parameters * 4);
        memset(m->v_memory, 0, m->num_parameters * 4);
        memcpy(m->m_memory, buf + 1024 + nparams * 4, nparams * 4);
        memcpy(m->v_memory, buf + 1024 + 2 * nparams * 4, nparams * 4);
        if (ts != NULL) memcpy(ts, buf + 1024 + 3 * nparams * 4, TRAIN_STATE_BYTES);
    }
    if (info != NULL) {
        info->has_optimizer = header[HDR_HAS_OPT];
        info->step = header[HDR_STEP];
        info->seed = (uint32_t)header[HDR_SEED];
        info->total_steps = header[HDR_TOTAL_STEPS];
        memcpy(info->header, header, sizeof(header));
    }
    if (ts != NULL) memcpy(ts->run_header, header + HDR_RUN_FIRST, sizeof(ts->run_header));
done:
    fclose(f);
    free(buf);
    return rc;
}

static void moe_free(MoEModel* m) {
    freeCheck(m->params_memory); freeCheck(m->grads_memory); freeCheck(m->m_memory); freeCheck(m->v_memory);
    freeCheck(m->acts_memory); freeCheck(m->idx_memory); freeCheck(m->scratch_memory);
    freeCheck(m->compete.memory); freeCheck(m->compete.imemory); freeCheck(m->compete.dispatch); free(m->compete.slot_of_layer);
    freeCheck(m->layer_stats); freeCheck(m->step_load);
    memset(m, 0, sizeof(*m));
}

#endif // MOE_H
