/*
metrics.h -- the MoE metrics: expert load, router diversity, sibling co-activation, domain mutual
information and expert-output similarity. The same code serves the training log (train_moe) and
the expert report (eval_moe), so every router is measured alike.
*/
#ifndef METRICS_H
#define METRICS_H

#include "moe.h"

// ----------------------------------------------------------------------------
// MoE metrics (docs/metrics.md): the same code for the training log and eval_moe. Counts accumulate over
// the forward passes of one optimizer step (or one eval pass); moe_metrics_layer turns them into
// numbers. T_k(t) is the set actually selected for token t.

#define METRICS_MAX_DOMAINS 16
typedef struct {
    int L, E, K, num_domains;
    double tokens;        // N, tokens seen (per layer)
    double* counts;       // (L, E) c_i, tokens per expert
    double* sibling_hits; // (L) sum_t sum_{i in T_k(t)} [j*(i) in T_k(t)]
    double* domain_joint; // (L, E, D) count of (expert e selected, input token's domain d)
    double* domain_joint_null; // (L, E, D) the same with the domains permuted (metrics_accumulate_null)
    int has_null;         // metrics_accumulate_null was called since the last reset
} MoEMetrics;

typedef struct {  // one layer's numbers
    int zero_experts;         // experts with c_i = 0
    float load_cv;            // sqrt(mean (c_i - cbar)^2) / cbar, cbar = N K / E
    float load_max_mean;      // max c_i / cbar
    float load_entropy;       // -sum q ln q / ln E, q = c / (N K); 1 when E = 1
    float sim_abs_mean;       // mean |S_ij| over i < j (router rows)
    float sim_angle_mean;     // mean arccos S_ij over i < j, radians
    float spectral_entropy;   // entropy of the normalised |eigenvalues| of S
    float sibling_coact;      // (1/(N K)) sum_t sum_{i in T_k} [j*(i) in T_k]
    float sibling_coact_random; // (K-1)/(E-1), the same rate under random routing
    float domain_mi;          // MI(e; d) / H(d), or -1 without domains
    float domain_mi_chance;   // the same with the domains permuted (its chance level), or -1
} LayerMetrics;

static void metrics_init(MoEMetrics* mm, int L, int E, int K, int num_domains) {
    memset(mm, 0, sizeof(*mm));
    mm->L = L; mm->E = E; mm->K = K;
    if (num_domains > METRICS_MAX_DOMAINS)
        fprintf(stderr, "note: %d domains; the routing metrics take the first %d (tokens of the others are left out "
                "of P(e, d) and MI)\n", num_domains, METRICS_MAX_DOMAINS);
    mm->num_domains = num_domains < METRICS_MAX_DOMAINS ? num_domains : METRICS_MAX_DOMAINS;
    mm->counts = (double*)callocCheck((size_t)L * E, sizeof(double));
    mm->sibling_hits = (double*)callocCheck((size_t)L, sizeof(double));
    mm->domain_joint = (double*)callocCheck((size_t)L * E * (mm->num_domains > 0 ? mm->num_domains : 1), sizeof(double));
    mm->domain_joint_null = (double*)callocCheck((size_t)L * E * (mm->num_domains > 0 ? mm->num_domains : 1), sizeof(double));
}
static void metrics_reset(MoEMetrics* mm) {
    mm->tokens = 0.0;
    memset(mm->counts, 0, sizeof(double) * mm->L * mm->E);
    memset(mm->sibling_hits, 0, sizeof(double) * mm->L);
    memset(mm->domain_joint, 0, sizeof(double) * mm->L * mm->E * (mm->num_domains > 0 ? mm->num_domains : 1));
    memset(mm->domain_joint_null, 0, sizeof(double) * mm->L * mm->E * (mm->num_domains > 0 ? mm->num_domains : 1));
    mm->has_null = 0;
}
static void metrics_free(MoEMetrics* mm) {
    freeCheck(mm->counts); freeCheck(mm->sibling_hits); freeCheck(mm->domain_joint); freeCheck(mm->domain_joint_null);
}

// The chance level of MI(e; d): the same statistic with the tokens' domains shuffled. The caller
// permutes the domains with domains_permute (eval_moe: those of its whole pass; train_moe: each
// micro-batch's own, docs/metrics.md) and feeds each forward pass's slice here, beside
// metrics_accumulate.
static void metrics_accumulate_null(MoEMetrics* mm, const MoEModel* m, const uint8_t* permuted_domains) {
    int L = mm->L, E = mm->E, K = mm->K, D = mm->num_domains;
    int N = m->batch_size * m->seq_len;
    if (D == 0 || permuted_domains == NULL) return;
    mm->has_null = 1;
    for (int l = 0; l < L; l++) {
        const int* sel = m->idx.expert_index + (size_t)l * N * K;
        for (int n = 0; n < N; n++)
            for (int k = 0; k < K; k++)
                if (permuted_domains[n] < D) mm->domain_joint_null[((size_t)l * E + sel[(size_t)n * K + k]) * D + permuted_domains[n]] += 1.0;
    }
}

// Fisher-Yates shuffle of n domain labels with a splitmix64 stream from seed.
static void domains_permute(uint8_t* d, size_t n, uint64_t seed) {
    uint64_t state = seed;
    for (size_t i = n; i > 1; i--) {
        uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        size_t j = (size_t)(z % i);
        uint8_t t = d[i - 1]; d[i - 1] = d[j]; d[j] = t;
    }
}

// Adds the routing of the last forward pass. domains (B*T) gives each input token's domain, or NULL.
static void metrics_accumulate(MoEMetrics* mm, const MoEModel* m, const uint8_t* domains) {
    int L = mm->L, E = mm->E, K = mm->K, D = mm->num_domains;
    int N = m->batch_size * m->seq_len;
    mm->tokens += N;
    for (int l = 0; l < L; l++) {
        const int* sel = m->idx.expert_index + (size_t)l * N * K;
        const int* sib = m->idx.router_sibling + (size_t)l * E;
        double* c = mm->counts + (size_t)l * E;
        double hits = 0.0;
        for (int n = 0; n < N; n++) {
            const int* s = sel + (size_t)n * K;
            for (int k = 0; k < K; k++) {
                c[s[k]] += 1.0;
                if (domains != NULL && domains[n] < D) mm->domain_joint[((size_t)l * E + s[k]) * D + domains[n]] += 1.0;
                if (E > 1) for (int j = 0; j < K; j++) if (s[j] == sib[s[k]]) hits += 1.0;
            }
        }
        mm->sibling_hits[l] += hits;
    }
}

// Eigenvalues of a symmetric n x n matrix (row-major, overwritten), ascending, in two stages:
//   1. Householder: n-2 reflections H = I - 2 v v^T (|v| = 1), each zeroing one column below the
//      subdiagonal, bring A to a tridiagonal T with the same eigenvalues (diagonal d, off-diagonal e);
//   2. implicit symmetric QR on T: Wilkinson's shift from the bottom 2x2 of the unreduced block,
//      then a Givens rotation chases the bulge down the block; an off-diagonal small next to its
//      diagonal neighbours is set to 0 (deflation). Cubic convergence: a few sweeps per eigenvalue.
// About (4/3) n^3 multiply-adds; cyclic Jacobi, its predecessor here, took ~10 sweeps of 6 n^3 and
// was 11% of a step's wall time at E = 128 (the metrics run every step).
static void symmetric_eigenvalues(double* A, int n, double* eig) {
    if (n <= 0) return;
    double* e = (double*)mallocCheck(sizeof(double) * (size_t)n);   // e[i] couples i and i+1
    double* v = (double*)mallocCheck(sizeof(double) * (size_t)n);
    double* w = (double*)mallocCheck(sizeof(double) * (size_t)n);
    // stage 1: for column k, the reflection of rows/columns k+1..n-1 that maps A[k+1.., k] to (alpha, 0, ...)
    for (int k = 0; k + 2 < n; k++) {
        double xnorm = 0.0;
        for (int i = k + 1; i < n; i++) xnorm += A[i * n + k] * A[i * n + k];
        xnorm = sqrt(xnorm);
        double x0 = A[(k + 1) * n + k], alpha = x0 > 0 ? -xnorm : xnorm;   // the sign that avoids cancellation
        eig[k] = A[k * n + k];
        e[k] = alpha;
        double vnorm = 0.0;
        for (int i = k + 1; i < n; i++) { v[i] = A[i * n + k]; }
        v[k + 1] -= alpha;
        for (int i = k + 1; i < n; i++) vnorm += v[i] * v[i];
        if (vnorm == 0.0) continue;   // the column is already zero below the subdiagonal
        vnorm = sqrt(vnorm);
        for (int i = k + 1; i < n; i++) v[i] /= vnorm;
        // trailing block B <- H B H = B - 2 (v w^T + w v^T), p = B v, w = p - (v.p) v
        double vp = 0.0;
        for (int i = k + 1; i < n; i++) {
            double p = 0.0;
            for (int j = k + 1; j < n; j++) p += A[i * n + j] * v[j];
            w[i] = p;
            vp += v[i] * p;
        }
        for (int i = k + 1; i < n; i++) w[i] -= vp * v[i];
        for (int i = k + 1; i < n; i++)
            for (int j = k + 1; j < n; j++) A[i * n + j] -= 2.0 * (v[i] * w[j] + w[i] * v[j]);
    }
    if (n >= 2) { eig[n - 2] = A[(n - 2) * n + n - 2]; e[n - 2] = A[(n - 1) * n + n - 2]; }
    eig[n - 1] = A[(n - 1) * n + n - 1];
    e[n - 1] = 0.0;
    // stage 2: implicit QR steps on the bottom unreduced block [lo, hi] until every e is 0
    int hi = n - 1;
    for (int iter = 0; hi > 0 && iter < 60 * n; iter++) {
        for (int i = 0; i < hi; i++)
            if (fabs(e[i]) <= 1e-15 * (fabs(eig[i]) + fabs(eig[i + 1])) || fabs(e[i]) < 1e-300) e[i] = 0.0;
        while (hi > 0 && e[hi - 1] == 0.0) hi--;   // eig[hi] has converged
        if (hi == 0) break;
        int lo = hi - 1;
        while (lo > 0 && e[lo - 1] != 0.0) lo--;
        // Wilkinson's shift: the eigenvalue of the bottom 2x2 nearer its last diagonal entry
        double delta = (eig[hi - 1] - eig[hi]) / 2.0, b = e[hi - 1];
        double mu = eig[hi] - b * b / (delta + (delta >= 0 ? 1.0 : -1.0) * hypot(delta, b));
        double x = eig[lo] - mu, z = e[lo];
        for (int k = lo; k < hi; k++) {
            // G^T (x, z) = (r, 0): rotate rows/columns k, k+1 of T by G = [c -s; s c]
            double r = hypot(x, z), c = r > 0 ? x / r : 1.0, s = r > 0 ? z / r : 0.0;
            if (k > lo) e[k - 1] = r;   // the bulge at (k-1, k+1) is gone
            double a0 = eig[k], a1 = eig[k + 1], bk = e[k];
            eig[k] = c * c * a0 + 2.0 * c * s * bk + s * s * a1;
            eig[k + 1] = s * s * a0 - 2.0 * c * s * bk + c * c * a1;
            e[k] = c * s * (a1 - a0) + (c * c - s * s) * bk;
            if (k + 1 < hi) {   // the rotation makes a bulge s e[k+1] at (k, k+2)
                x = e[k];
                z = s * e[k + 1];
                e[k + 1] *= c;
            }
        }
    }
    // ascending order (insertion sort: n <= 256): the entropy's sum then does not depend on the
    // order the eigenvalues converged in
    for (int i = 1; i < n; i++) {
        double t = eig[i];
        int j = i - 1;
        while (j >= 0 && eig[j] > t) { eig[j + 1] = eig[j]; j--; }
        eig[j + 1] = t;
    }
    free(e); free(v); free(w);
}

// Router-weight diversity of one layer from its similarity matrix S (E,E) (GatePro App. C).
static void router_diversity(const float* S, int E, float* abs_mean, float* angle_mean, float* spectral_entropy) {
    double sa = 0.0, ang = 0.0;
    int pairs = 0;
    for (int i = 0; i < E; i++) {
        for (int j = i + 1; j < E; j++) {
            double v = S[i * E + j];
            sa += fabs(v);
            ang += acos(v < -1.0 ? -1.0 : v > 1.0 ? 1.0 : v);
            pairs++;
        }
    }
    *abs_mean = pairs ? (float)(sa / pairs) : 0.0f;
    *angle_mean = pairs ? (float)(ang / pairs) : 0.0f;
    double* A = (double*)mallocCheck(sizeof(double) * E * E);
    double* eig = (double*)mallocCheck(sizeof(double) * E);
    for (int i = 0; i < E * E; i++) A[i] = S[i];
    symmetric_eigenvalues(A, E, eig);
    double total = 0.0, h = 0.0;
    for (int i = 0; i < E; i++) total += fabs(eig[i]);
    for (int i = 0; i < E; i++) {
        double p = (fabs(eig[i]) + 1e-8) / (total + E * 1e-8);
        h -= p * log(p);
    }
    *spectral_entropy = (float)h;
    free(A); free(eig);
}

// Load statistics of one layer's tokens-per-expert counts c (E) over N tokens.
static void load_stats(const double* c, int E, int K, double N, LayerMetrics* out) {
    double cbar = N * K / E, var = 0.0, mx = 0.0, h = 0.0;
    int zeros = 0;
    for (int e = 0; e < E; e++) {
        var += (c[e] - cbar) * (c[e] - cbar);
        if (c[e] > mx) mx = c[e];
        if (c[e] == 0.0) zeros++;
        double q = c[e] / (N * K);
        if (q > 0) h -= q * log(q);
    }
    out->zero_experts = zeros;
    out->load_cv = cbar > 0 ? (float)(sqrt(var / E) / cbar) : 0.0f;
    out->load_max_mean = cbar > 0 ? (float)(mx / cbar) : 0.0f;
    out->load_entropy = E > 1 ? (float)(h / log((double)E)) : 1.0f;
}

// Normalised mutual information MI(e; d) / H(d) from joint counts (E, D); natural log, 0 ln 0 = 0.
static float domain_mutual_information(const double* joint, int E, int D) {
    double total = 0.0, pe[256] = {0}, pd[METRICS_MAX_DOMAINS] = {0};
    for (int e = 0; e < E; e++) for (int d = 0; d < D; d++) { total += joint[e * D + d]; pe[e] += joint[e * D + d]; pd[d] += joint[e * D + d]; }
    if (total <= 0) return -1.0f;
    double mi = 0.0, hd = 0.0;
    for (int d = 0; d < D; d++) if (pd[d] > 0) hd -= pd[d] / total * log(pd[d] / total);
    for (int e = 0; e < E; e++)
        for (int d = 0; d < D; d++) {
            double p = joint[e * D + d] / total;
            if (p > 0) mi += p * log(p / ((pe[e] / total) * (pd[d] / total)));
        }
    return hd > 0 ? (float)(mi / hd) : 0.0f;
}

// All of one layer's numbers. S and j* are the router's current ones (from the last forward).
static void moe_metrics_layer(const MoEMetrics* mm, const MoEModel* m, int l, LayerMetrics* out) {
    int E = mm->E, K = mm->K, D = mm->num_domains;
    memset(out, 0, sizeof(*out));
    load_stats(mm->counts + (size_t)l * E, E, K, mm->tokens, out);
    if (E > 1) {
        router_diversity(m->acts.router_sim + (size_t)l * E * E, E, &out->sim_abs_mean, &out->sim_angle_mean,
                         &out->spectral_entropy);
        out->sibling_coact = mm->tokens > 0 ? (float)(mm->sibling_hits[l] / (mm->tokens * K)) : 0.0f;
        out->sibling_coact_random = (float)(K - 1) / (float)(E - 1);
    }
    out->domain_mi = D > 0 ? domain_mutual_information(mm->domain_joint + (size_t)l * E * D, E, D) : -1.0f;
    out->domain_mi_chance = D > 0 && mm->has_null
        ? domain_mutual_information(mm->domain_joint_null + (size_t)l * E * D, E, D) : -1.0f;
}

// Expert-output similarity of layer l on the tokens of the last forward pass: every expert runs
// on every token's MoE input x_t; the mean over tokens of the mean over pairs i < j of the signed
// cos(E_i(x_t), E_j(x_t)). Tokens go in chunks so memory stays E x chunk x C.
static float expert_output_similarity(const MoEModel* m, int l) {
    const MoEConfig* c = &m->config;
    int E = c->n_expert, C = c->channels, H = c->expert_hidden, N = m->batch_size * m->seq_len;
    if (E < 2) return 0.0f;
    const int CH = 128;
    float* h = (float*)mallocCheck(sizeof(float) * CH * H);
    float* out = (float*)mallocCheck(sizeof(float) * (size_t)E * CH * C);
    const float* x = m->acts.ln2 + (size_t)l * N * C;
    double total = 0.0;
    for (int n0 = 0; n0 < N; n0 += CH) {
        int rows = N - n0 < CH ? N - n0 : CH;
        for (int e = 0; e < E; e++) {
            size_t le = (size_t)l * E + e;
            float* o = out + (size_t)e * CH * C;
            matmul_forward(h, x + (size_t)n0 * C, m->params.fcw + le * H * C, m->params.fcb + le * H, rows, C, H);
            gelu_forward(h, h, (size_t)rows * H);
            matmul_forward(o, h, m->params.fcprojw + le * C * H, m->params.fcprojb + le * C, rows, H, C);
            for (int r = 0; r < rows; r++) {  // normalise each output row, so a dot is a cosine
                float* v = o + (size_t)r * C;
                double s = 0.0;
                for (int i = 0; i < C; i++) s += (double)v[i] * v[i];
                float inv = 1.0f / (float)fmax(sqrt(s), 1e-12);
                for (int i = 0; i < C; i++) v[i] *= inv;
            }
        }
        for (int r = 0; r < rows; r++) {
            double s = 0.0;
            for (int i = 0; i < E; i++)
                for (int j = i + 1; j < E; j++) {
                    const float* a = out + ((size_t)i * CH + r) * C;
                    const float* b = out + ((size_t)j * CH + r) * C;
                    double d = 0.0;
                    for (int q = 0; q < C; q++) d += (double)a[q] * b[q];
                    s += d;
                }
            total += s / (E * (E - 1) / 2);
        }
    }
    free(h); free(out);
    return (float)(total / N);
}

#endif // METRICS_H
