/*
routers.h — every router of moe.c. Included by moe.h after the model struct (the routers read its
parameters and activations); docs/routers.md has each router's equations and gradients.

A router turns one MoE layer's inputs x (N,C) into, per token, the K experts that run and their
weights. The path every router shares (moe.h, routed_layer_forward/backward) is

    l = scores(x)                      (N,E)  the router's own: W_g x, or X-MoE's cosine / tau
    p = softmax(l), lse = logsumexp(l)        the balance loss's P and the z-loss
    select(l) -> T_k, gate logits g    (K),(E) the router's own, per token
    alpha = gate_norm(g over T_k)             shared (--gate-norm)
    balance loss and z-loss on l              shared
    dispatch, experts, combine                shared (moe.h)

and its backward runs the same list in reverse. Every select below is piecewise constant in l
(GatePro's penalty, auxfree's bias) or the identity (topk), so dg/dl = I and a router's backward
is its scores' backward. A router is one row of ROUTERS at the end of this file:

    scores_forward / scores_backward   x -> l and back (also the expert rows' similarity S and
                                       nearest siblings, which GatePro and the metrics read)
    select                             one token: l -> the K experts and the gate logits
    after_step                         called after each optimizer step (auxfree's bias), or NULL

CompeteSMoE's competition steps are a different layer (every expert runs on every token); its own
pieces are at the end of this file and moe.h assembles them with the shared dispatch, experts,
combine and balance code.

Conventions as moe.h: backward functions accumulate (+=); top-k ties go to the lower index; all
router arithmetic is float32, sums over tokens in a fixed order.
*/
#ifndef ROUTERS_H
#define ROUTERS_H

// How this forward routes: passed to moe_forward by the caller, never stored on the model.
typedef struct {
    int step;       // 0-based optimizer step: GatePro's --gatepro-start/--gatepro-stop window is tested at it
    int training;   // 1 in a training forward: counts each expert's tokens for auxfree's update
    const unsigned char* compete_layers;  // (L) CompeteSMoE: 1 where a layer competes in this forward; NULL: none
} RoutingMode;

// A router config: the defaults with the first fields set (tests and tools).
static RouterConfig router_config(int router, int gate_norm, float aux, float z, float lambda, int start, int stop) {
    RouterConfig rc = ROUTER_DEFAULTS;
    rc.router = router; rc.gate_norm = gate_norm; rc.aux_loss_coef = aux; rc.z_loss_coef = z;
    rc.gatepro_lambda = lambda; rc.gatepro_start = start; rc.gatepro_stop = stop;
    return rc;
}

// Evaluation at step `step`: no competition, no load counting.
static RoutingMode routing_eval(int step) { RoutingMode r = {step, 0, NULL}; return r; }

// ----------------------------------------------------------------------------
// routing primitives

// The K largest of sel (E values), ties toward the lower index; written ascending into expert_index.
// The definition: K passes, each taking the largest value not yet taken (the first index on a tie).
// With a NaN this is also what runs: it stays well defined (a NaN first in a pass is kept).
static void topk_indices_passes(const float* sel, int E, int K, int* expert_index) {
    uint64_t taken[4] = {0};  // E <= 256
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            if (taken[e >> 6] >> (e & 63) & 1) continue;
            if (best < 0 || sel[e] > sel[best]) best = e;  // strict '>' keeps the lower index on a tie
        }
        taken[best >> 6] |= 1ULL << (best & 63);
    }
    int k = 0;
    for (int e = 0; e < E && k < K; e++) if (taken[e >> 6] >> (e & 63) & 1) expert_index[k++] = e;
}
// The same selection in one pass: a list of the best K so far, by value and then index, which a later
// value enters only if strictly larger than its last (so a tie keeps the lower index). K passes over
// E = 128 experts were 8.6 ms of a step at 2048 tokens x 4 layers.
static void topk_indices(const float* sel, int E, int K, int* expert_index) {
    float val[256];
    int idx[256], n = 0, nan = 0;
    for (int e = 0; e < E; e++) {
        float x = sel[e];
        nan |= x != x;
        if (n == K && !(x > val[K - 1])) continue;
        int j = n < K ? n++ : K - 1;   // a free slot, or the last one's (it drops out)
        for (; j > 0 && x > val[j - 1]; j--) { val[j] = val[j - 1]; idx[j] = idx[j - 1]; }
        val[j] = x;
        idx[j] = e;
    }
    if (nan) { topk_indices_passes(sel, E, K, expert_index); return; }
    for (int k = 1; k < K; k++)   // ascending expert order
        for (int j = k; j > 0 && idx[j - 1] > idx[j]; j--) { int t = idx[j]; idx[j] = idx[j - 1]; idx[j - 1] = t; }
    for (int k = 0; k < K; k++) expert_index[k] = idx[k];
}

// softmax of x (n values) into out; returns logsumexp. The exps are exp_approx's (moe.h, exp_sum), not
// libm's expf (calls, one element at a time): at E = 64 the router then took 0.93 of its time (6 pairs).
static float softmax_lse(float* out, const float* x, int n) {
    float m = x[0];
    for (int i = 1; i < n; i++) if (x[i] > m) m = x[i];
    float s = exp_sum(out, x, m, n);
    float inv = 1.0f / s;
    for (int i = 0; i < n; i++) out[i] *= inv;
    return m + logf(s);
}

// Weights of the selected experts from the gate logits g (E), by --gate-norm:
//   topk_softmax: alpha_i = exp(g_i) / sum_{j in T_k} exp(g_j)        (Mixtral; GatePro Eq. 3)
//   softmax_topk: alpha_i = softmax(g)_i over all E, not renormalised  (GShard, Switch, OLMoE)
static void gate_weights(float* gate, const float* g, const int* expert_index, int E, int K, int gate_norm) {
    if (gate_norm == GATE_TOPK_SOFTMAX) {
        float m = g[expert_index[0]];
        for (int k = 1; k < K; k++) if (g[expert_index[k]] > m) m = g[expert_index[k]];
        float s = 0.0f;
        for (int k = 0; k < K; k++) { gate[k] = expf(g[expert_index[k]] - m); s += gate[k]; }
        for (int k = 0; k < K; k++) gate[k] /= s;
    } else {
        float m = g[0];
        for (int e = 1; e < E; e++) if (g[e] > m) m = g[e];
        float s = 0.0f;
        for (int e = 0; e < E; e++) s += expf(g[e] - m);
        for (int k = 0; k < K; k++) gate[k] = expf(g[expert_index[k]] - m) / s;
    }
}
// dgate (K) -> dg (E, accumulated):
//   topk_softmax: dg_i = alpha_i (dalpha_i - sum_k alpha_k dalpha_k) for i in T_k, 0 elsewhere
//   softmax_topk: dg_j = p_j ([j in T_k] dalpha_j - sum_k alpha_k dalpha_k) for every j, p = softmax(g)
static void gate_weights_backward(float* dg, const float* dgate, const float* gate, const float* g,
                                  const int* expert_index, int E, int K, int gate_norm) {
    float dot = 0.0f;
    for (int k = 0; k < K; k++) dot += gate[k] * dgate[k];
    if (gate_norm == GATE_TOPK_SOFTMAX) {
        for (int k = 0; k < K; k++) dg[expert_index[k]] += gate[k] * (dgate[k] - dot);
    } else {
        float p[256];
        softmax_lse(p, g, E);
        for (int e = 0; e < E; e++) dg[e] -= p[e] * dot;
        for (int k = 0; k < K; k++) dg[expert_index[k]] += p[expert_index[k]] * dgate[k];
    }
}

// Cosine similarity of the router's expert rows w (E, D) (F.normalize convention: a zero row gives
// 0) and each expert's nearest sibling j*(i) = argmax_{j != i} S_ij, ties toward the lower j.
// Once per layer per forward: GatePro's penalty and the router-diversity metrics read them.
static void router_similarity(float* S, int* sibling, const float* w, int E, int D) {
    float norm[256];
    for (int i = 0; i < E; i++) {
        float s = 0.0f;
        for (int c = 0; c < D; c++) s += w[(size_t)i * D + c] * w[(size_t)i * D + c];
        norm[i] = fmaxf(sqrtf(s), 1e-12f);
    }
    // S_ij = w_i . w_j, fused multiply-adds over c in order for each (i, j) (fmaf: one rounding per
    // term on every CPU, whatever the compiler would contract). Row i is computed for all j at once
    // from w transposed (wt[c*E + j] = w_j[c]): E running sums side by side in vector lanes. One dot
    // product at a time waited on its previous add: 20 ms of a step at E = 128.
    float* wt = (float*)mallocCheck(sizeof(float) * (size_t)E * D);
    for (int j = 0; j < E; j++)
        for (int c = 0; c < D; c++) wt[(size_t)c * E + j] = w[(size_t)j * D + c];
    for (int i = 0; i < E; i++) {
        float d[256] = {0.0f};
        for (int c = 0; c < D; c++) {
            float a = w[(size_t)i * D + c];
            const float* wc = wt + (size_t)c * E;
            for (int j = 0; j < E; j++) d[j] = fmaf(a, wc[j], d[j]);
        }
        for (int j = 0; j < E; j++) S[i * E + j] = d[j] / (norm[i] * norm[j]);
    }
    free(wt);
    for (int i = 0; i < E; i++) {
        int best = -1;
        for (int j = 0; j < E; j++) {
            if (j == i) continue;
            if (best < 0 || S[i * E + j] > S[i * E + best]) best = j;
        }
        sibling[i] = best < 0 ? i : best;  // E == 1: its own sibling, never used
    }
}

// ----------------------------------------------------------------------------
// the losses every router shares (docs/routers.md, "Auxiliary losses")

// f_i N K: how many of the N*K (token, slot) picks in expert_index chose expert i.
static void count_picks(double* picks, const int* expert_index, size_t NK, int E) {
    for (int e = 0; e < E; e++) picks[e] = 0.0;
    for (size_t i = 0; i < NK; i++) picks[expert_index[i]] += 1.0;
}

// Switch load balance E * sum_i f_i P_i, unweighted: f_i = picks_i / (N K) from expert_index
// (N,K), P_i = mean over tokens of probs (N,E). The top-k routers' aux loss (P = softmax(l)) and
// CompeteSMoE's competition balance (P = p^C, f from the winners) are this one function.
static float balance_loss(const int* expert_index, const float* probs, int N, int E, int K) {
    double f[256], P[256] = {0};
    count_picks(f, expert_index, (size_t)N * K, E);
    for (int n = 0; n < N; n++) for (int e = 0; e < E; e++) P[e] += probs[(size_t)n * E + e];
    double s = 0.0;
    for (int e = 0; e < E; e++) s += (f[e] / ((double)N * K)) * (P[e] / N);
    return (float)(E * s);
}
// Its gradient, f held constant: d/dl_t [coef E sum_i f_i P_i] = p_t * (g - <p_t, g>), where
// g_i = coef E f_i / N is computed once per layer by balance_grad_coefs (already times `scale`,
// the loss scale) and balance_token_backward adds one token's part into dl (E).
static void balance_grad_coefs(float* g, const int* expert_index, int N, int E, int K, float coef, float scale) {
    double f[256];
    count_picks(f, expert_index, (size_t)N * K, E);
    for (int e = 0; e < E; e++) g[e] = (float)(coef * E * (f[e] / ((double)N * K)) / N) * scale;
}
static void balance_token_backward(float* dl, const float* p, const float* g, int E) {
    float pg = 0.0f;
    for (int e = 0; e < E; e++) pg += p[e] * g[e];
    for (int e = 0; e < E; e++) dl[e] += p[e] * (g[e] - pg);
}

// Router z-loss, unweighted: mean_t lse_t^2. Its gradient: d/dl_t [z mean lse^2] = (2 z lse_t / N) p_t.
static float z_loss_value(const float* lse, int N) {
    double z = 0.0;
    for (int n = 0; n < N; n++) z += (double)lse[n] * lse[n];
    return (float)(z / N);
}

// ----------------------------------------------------------------------------
// Router scores. What a select may read, for one layer:
typedef struct {
    int E, K;
    const int* sibling;    // (E) GatePro: each expert's nearest sibling j*(i)
    float gatepro_lambda;  // GatePro's penalty this step; 0 outside its start/stop window
    const float* bias;     // (E) auxfree: the layer's selection bias b
} SelectArgs;

// The linear router of topk, gatepro, auxfree and compete: l = W_g x, W_g = routerw (E,C), no bias.
static void linear_scores_forward(MoEModel* m, int l, int N) {
    const MoEConfig* c = &m->config;
    int E = c->n_expert, C = c->channels;
    const float* wg = m->params.routerw + (size_t)l * E * C;
    router_similarity(m->acts.router_sim + (size_t)l * E * E, m->idx.router_sibling + (size_t)l * E, wg, E, C);
    matmul_forward(m->acts.router_logits + (size_t)l * N * E, m->acts.ln2 + (size_t)l * N * C, wg, NULL, N, C, E);
}
// dl (N,E) in scratch.drouter -> dx (N,C) += dl W_g, dW_g += dl^T x.
static void linear_scores_backward(MoEModel* m, int l, int N, float* dx) {
    int E = m->config.n_expert, C = m->config.channels;
    matmul_backward(dx, 1, m->grads.routerw + (size_t)l * E * C, NULL, m->scratch.drouter, m->acts.ln2 + (size_t)l * N * C,
                    m->params.routerw + (size_t)l * E * C, N, C, E);
}

// ============================================================================
// topk — the standard sparse MoE router (Shazeer et al. 2017; GShard; Switch; Mixtral)
//   l = W_g x,   T_k = top-k(l),   gate logits g = l
// Backward: dl = dg.
static void topk_select(const SelectArgs* a, const float* scores, float* gate_logits, int* expert_index) {
    memcpy(gate_logits, scores, (size_t)a->E * sizeof(float));
    topk_indices(gate_logits, a->E, a->K, expert_index);
}

// ============================================================================
// gatepro — GatePro (Zheng et al. 2025, arXiv 2510.13079, Eq. 5-9): parameter-free competitive
// propagation between similar experts.
//   l = W_g x,   j*(i) = argmax_{j != i} cos(w_i, w_j)   (router_similarity, once per layer)
//   g_i = l_i - lambda if l_i < l_{j*(i)} (expert i loses to its sibling; a tie is no loss), else l_i
//   T_k = top-k(g)
// Backward: dl = dg (the penalty is piecewise constant: no gradient reaches S or j*). The balance
// loss's P and the z-loss use the unpenalised l; its f counts T_k(g), the experts that run.
static void gatepro_penalize(float* g, const float* l, const int* sibling, float lambda, int E) {
    for (int i = 0; i < E; i++) g[i] = l[i] < l[sibling[i]] ? l[i] - lambda : l[i];
}
static void gatepro_select(const SelectArgs* a, const float* scores, float* gate_logits, int* expert_index) {
    gatepro_penalize(gate_logits, scores, a->sibling, a->gatepro_lambda, a->E);
    topk_indices(gate_logits, a->E, a->K, expert_index);
}

// Is the GatePro penalty on at 0-based step s? (--gatepro-start / --gatepro-stop)
static int gatepro_active_at(const RouterConfig* rc, int step) {
    return rc->gatepro_start <= step && (rc->gatepro_stop < 0 || step < rc->gatepro_stop);
}

// ============================================================================
// auxfree — auxiliary-loss-free load balancing (Wang et al. 2024, arXiv 2408.15664; DeepSeek-V3)
//   l = W_g x,   T_k = top-k(l + b),   gate logits g = l   (b steers the selection only)
//   after each optimizer step, per layer:  b_i += u sign(mean_j c_j - c_i),
//   c_i = tokens routed to expert i over the step's micro-batches, u = --auxfree-rate
// Backward: dl = dg; b gets no gradient (it is state, not a learned weight: params.router_bias).
static void auxfree_select(const SelectArgs* a, const float* scores, float* gate_logits, int* expert_index) {
    float biased[256];
    for (int e = 0; e < a->E; e++) biased[e] = scores[e] + a->bias[e];
    topk_indices(biased, a->E, a->K, expert_index);
    memcpy(gate_logits, scores, (size_t)a->E * sizeof(float));
}
static void auxfree_after_step(MoEModel* m) {
    int L = m->config.num_layers, E = m->config.n_expert;
    float u = m->router.auxfree_rate;
    for (int l = 0; l < L; l++) {
        const double* load = m->step_load + (size_t)l * E;
        float* b = m->params.router_bias + (size_t)l * E;
        double mean = 0.0;
        for (int e = 0; e < E; e++) mean += load[e];
        mean /= E;
        for (int e = 0; e < E; e++) b[e] += load[e] < mean ? u : load[e] > mean ? -u : 0.0f;
    }
}

// ============================================================================
// xmoe — X-MoE (Chi et al. 2022, arXiv 2204.09179): routing on a low-dimensional hypersphere
//   z = W_p x (De = --xmoe-dim),   l_i = cos(z, e_i) / tau,   T_k = top-k(l),   gate logits g = l
//   cos(z, e) = <z, e> / (max(|z|,1e-12) max(|e|,1e-12)),   tau = exp(xmoe_log_temp), learned
// Backward, with zh = z/|z|, eh_i = e_i/|e_i|, dc_i = dl_i / tau:
//   dlog_tau = -sum_{t,i} dl_ti l_ti
//   dzh = sum_i dc_i eh_i,   dz = (dzh - zh <zh, dzh>) / |z|        (dzh / 1e-12 when |z| <= 1e-12)
//   deh_i = sum_t dc_ti zh_t,   de_i = (deh_i - eh_i <eh_i, deh_i>) / |e_i|
//   dW_p += dz^T x,   dx += dz W_p
// S and the siblings (metrics) are those of the expert embeddings e_i.
static float vector_norm(const float* v, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += v[i] * v[i];
    return fmaxf(sqrtf(s), 1e-12f);
}
// dv += backward of vh = v / max(|v|, 1e-12) given dvh, vh and that norm
static void normalize_backward(float* dv, const float* dvh, const float* vh, float norm, int n) {
    float dot = 0.0f;
    if (norm > 1e-12f) for (int i = 0; i < n; i++) dot += vh[i] * dvh[i];
    for (int i = 0; i < n; i++) dv[i] += (dvh[i] - vh[i] * dot) / norm;
}
// eh (E,De) = the layer's expert embeddings, each divided by its norm (enorm (E))
static void xmoe_unit_experts(const MoEModel* m, int l, float* eh, float* enorm) {
    int E = m->config.n_expert, De = m->config.xmoe_dim;
    const float* e = m->params.xmoe_experts + (size_t)l * E * De;
    for (int i = 0; i < E; i++) {
        enorm[i] = vector_norm(e + (size_t)i * De, De);
        for (int d = 0; d < De; d++) eh[(size_t)i * De + d] = e[(size_t)i * De + d] / enorm[i];
    }
}
static void xmoe_scores_forward(MoEModel* m, int l, int N) {
    const MoEConfig* c = &m->config;
    int E = c->n_expert, C = c->channels, De = c->xmoe_dim;
    const float* experts = m->params.xmoe_experts + (size_t)l * E * De;
    router_similarity(m->acts.router_sim + (size_t)l * E * E, m->idx.router_sibling + (size_t)l * E, experts, E, De);
    float* z = m->acts.xmoe_z + (size_t)l * N * De;
    matmul_forward(z, m->acts.ln2 + (size_t)l * N * C, m->params.xmoe_proj + (size_t)l * De * C, NULL, N, C, De);
    float* eh = (float*)mallocCheck(sizeof(float) * (size_t)E * De);
    float enorm[256];
    xmoe_unit_experts(m, l, eh, enorm);
    float inv_tau = expf(-m->params.xmoe_log_temp[l]);
    float* scores = m->acts.router_logits + (size_t)l * N * E;
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* zn = z + (size_t)n * De;
        float scale = inv_tau / vector_norm(zn, De);
        for (int i = 0; i < E; i++) {
            float d = 0.0f;
            for (int j = 0; j < De; j++) d += zn[j] * eh[(size_t)i * De + j];
            scores[(size_t)n * E + i] = d * scale;
        }
    }
    free(eh);
}
static void xmoe_scores_backward(MoEModel* m, int l, int N, float* dx) {
    const MoEConfig* c = &m->config;
    int E = c->n_expert, C = c->channels, De = c->xmoe_dim;
    const float* z = m->acts.xmoe_z + (size_t)l * N * De;
    const float* scores = m->acts.router_logits + (size_t)l * N * E;
    const float* dl = m->scratch.drouter;
    float* dz = m->scratch.dxmoe_z;
    float* zh = m->scratch.xmoe_zh;
    float* eh = (float*)mallocCheck(sizeof(float) * (size_t)E * De * 2);
    float* deh = eh + (size_t)E * De;
    float enorm[256];
    xmoe_unit_experts(m, l, eh, enorm);
    float inv_tau = expf(-m->params.xmoe_log_temp[l]);
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {  // dz of each token
        const float* zn = z + (size_t)n * De;
        float norm = vector_norm(zn, De), dzh[256];
        float* zhn = zh + (size_t)n * De;
        for (int j = 0; j < De; j++) { zhn[j] = zn[j] / norm; dzh[j] = 0.0f; }
        for (int i = 0; i < E; i++) {
            float dc = dl[(size_t)n * E + i] * inv_tau;
            for (int j = 0; j < De; j++) dzh[j] += dc * eh[(size_t)i * De + j];
        }
        float* dzn = dz + (size_t)n * De;
        for (int j = 0; j < De; j++) dzn[j] = 0.0f;
        normalize_backward(dzn, dzh, zhn, norm, De);
    }
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < E; i++) {  // de of each expert, tokens summed in order
        float* d = deh + (size_t)i * De;
        for (int j = 0; j < De; j++) d[j] = 0.0f;
        for (int n = 0; n < N; n++) {
            float dc = dl[(size_t)n * E + i] * inv_tau;
            for (int j = 0; j < De; j++) d[j] += dc * zh[(size_t)n * De + j];
        }
        normalize_backward(m->grads.xmoe_experts + ((size_t)l * E + i) * De, d, eh + (size_t)i * De, enorm[i], De);
    }
    double dlog_tau = 0.0;
    for (size_t i = 0; i < (size_t)N * E; i++) dlog_tau -= (double)dl[i] * scores[i];
    m->grads.xmoe_log_temp[l] += (float)dlog_tau;
    matmul_backward(dx, 1, m->grads.xmoe_proj + (size_t)l * De * C, NULL, dz, m->acts.ln2 + (size_t)l * N * C,
                    m->params.xmoe_proj + (size_t)l * De * C, N, C, De);
    free(eh);
}

// ============================================================================
// The router table. Adding a router: its block above, a row here, its name in ROUTER_NAMES, its
// flags (train_moe.c), its checkpoint fields (moe.h) and its tests.
typedef struct {
    void (*scores_forward)(MoEModel* m, int l, int N);              // x (ln2) -> l (router_logits), S, siblings
    void (*scores_backward)(MoEModel* m, int l, int N, float* dx);  // dl (scratch.drouter) -> dx, weight grads
    void (*select)(const SelectArgs* a, const float* scores, float* gate_logits, int* expert_index);
    void (*after_step)(MoEModel* m);                                // after each optimizer step, or NULL
} Router;

static const Router ROUTERS[NUM_ROUTERS] = {
    [ROUTER_TOPK]    = {linear_scores_forward, linear_scores_backward, topk_select, NULL},
    [ROUTER_GATEPRO] = {linear_scores_forward, linear_scores_backward, gatepro_select, NULL},
    [ROUTER_COMPETE] = {linear_scores_forward, linear_scores_backward, topk_select, NULL},  // its router steps
    [ROUTER_AUXFREE] = {linear_scores_forward, linear_scores_backward, auxfree_select, auxfree_after_step},
    [ROUTER_XMOE]    = {xmoe_scores_forward, xmoe_scores_backward, topk_select, NULL},
};

static SelectArgs select_args(const MoEModel* m, int l, const RoutingMode* mode) {
    int E = m->config.n_expert;
    SelectArgs a = {E, m->config.top_k, m->idx.router_sibling + (size_t)l * E,
                    gatepro_active_at(&m->router, mode->step) ? m->router.gatepro_lambda : 0.0f,
                    m->params.router_bias + (size_t)l * E};
    return a;
}

// ============================================================================
// compete — CompeteSMoE (Pham et al. 2024, arXiv 2402.02526; Nguyen et al. 2025, arXiv 2505.13380)
// On a competition step of a layer every expert runs on every token, and the experts with the
// strongest neural response win it; the router learns to predict the outcome:
//   o_i = E_i(x),   s_i = (1/C) sum_c softplus(o_ic),   I_C = top-k(s)
//   w_i = s_i / sum_{j in I_C} s_j  (norm)  or softmax over the winners' s  (softmax)
//   y = sum_{i in I_C} w_i o_i                                      (the shared combine)
//   L_D = mean_{t,i} (p^R_i - p^C_i)^2 + alpha mean_t (1/K) sum_{j in I_C} (p^C_j - p^R_j)^2,
//         p^R = softmax(l), p^C = softmax(s) held constant: the router's only gradient
//   L_div = mean_t (1/K^2) sum_{i != j in I_C} cos(o_i, o_j)
//   L_bal = E sum_i f_i P_i, f from I_C, P = mean_t p^C              (the shared balance_loss)
// Router steps (and evaluation) are the topk router. The schedule (which layer competes at which
// step) is compete_schedule below. The expert outputs o live in dispatch slots: o_ti is row
// token_slot[t*E + i] of out (N*E, C).
//
// softplus and sigmoid run on every output of every expert of a competing layer (N*E*C values):
// with libm's expf and log1pf (calls the compiler cannot vectorize) and one running sum, a competing
// layer's router work took 57 ms (E = 8, C = 256, 2048 tokens; 11 ms now), a third of the
// competition's cost beyond the E/K-fold expert FFN. Here they are built on exp_approx (moe.h).
// log(1 + t) for t in [0, 1] = 2 atanh(f), f = t / (2 + t) in [0, 1/3]: the odd series to f^15
// (the next term is < 1.5e-8 of the sum), accurate for tiny t too (f ~ t/2, no 1 + t rounding).
static inline float log1p_unit(float t) {
    float f = t / (2.0f + t), f2 = f * f;
    float p = 1.0f + f2 * (1.0f / 3 + f2 * (1.0f / 5 + f2 * (1.0f / 7 + f2 * (1.0f / 9 + f2 * (1.0f / 11 +
              f2 * (1.0f / 13 + f2 * (1.0f / 15)))))));
    return 2.0f * f * p;
}
// softplus(x) = max(x, 0) + log(1 + e^-|x|)   (ternaries, not fmaxf/fabsf: see exp_approx). Written
// x > 0 ? x + l : l, not max(x, 0) + l (the same value): gcc fused that add into the log's last
// multiply in some loops and not in others, and the vector form below must give these bits.
static inline float softplus(float x) {
    float ax = x < 0.0f ? -x : x;
    float l = log1p_unit(exp_approx(-ax));
    return x > 0.0f ? x + l : l;
}
static inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
// the three on sixteen lanes (moe.h, exp_approx16): the same bits
static inline f32x16 log1p_unit16(f32x16 t) {
    f32x16 f = t / (2.0f + t), f2 = f * f;
    f32x16 p = 1.0f + f2 * (1.0f / 3 + f2 * (1.0f / 5 + f2 * (1.0f / 7 + f2 * (1.0f / 9 + f2 * (1.0f / 11 +
               f2 * (1.0f / 13 + f2 * (1.0f / 15)))))));
    return 2.0f * f * p;
}
static inline f32x16 softplus16(f32x16 x) {
    f32x16 ax = select16(x < 0.0f, -x, x);
    f32x16 l = log1p_unit16(exp_approx16(-ax));
    return select16(x > 0.0f, x + l, l);
}
static inline f32x16 sigmoid16(f32x16 x) { return 1.0f / (1.0f + exp_approx16(-x)); }

// responses s (N,E) and p^C = softmax(s) (N,E). Each mean over c sums in 16 lanes (c mod 16) added
// in order at the end: a fixed order, kept in one vector register.
#define COMPETE_LANES 16
static void compete_responses(float* resp, float* pc, const float* out, const int* token_slot, int N, int E, int C) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float* s = resp + (size_t)n * E;
        for (int e = 0; e < E; e++) {
            const float* o = out + (size_t)token_slot[n * E + e] * C;
            f32x16 lanes = splat16(0.0f);
            int i = 0;
            for (; i + COMPETE_LANES <= C; i += COMPETE_LANES) lanes += softplus16(load16(o + i));
            for (; i < C; i++) lanes[i % COMPETE_LANES] += softplus(o[i]);
            s[e] = sum16(lanes) / C;
        }
        softmax_lse(pc + (size_t)n * E, s, E);
    }
}
// ds (N,E) -> dout (every slot, accumulated): do_ic += ds_i sigmoid(o_ic) / C
static void compete_responses_backward(float* dout, const float* ds, const float* out, const int* token_slot,
                                       int N, int E, int C) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        for (int e = 0; e < E; e++) {
            size_t slot = (size_t)token_slot[n * E + e];
            const float* o = out + slot * C;
            float* d = dout + slot * C;
            float k_s = ds[(size_t)n * E + e] / C;
            int i = 0;
            for (; i + 16 <= C; i += 16) store16(d + i, load16(d + i) + k_s * sigmoid16(load16(o + i)));
            for (; i < C; i++) d[i] += k_s * sigmoid(o[i]);
        }
    }
}

// Winners I_C = top-k(s) into win (N,K), their weights w (N,K), and the slots of their outputs
// into win_slot (N,K) for the combine.
static void compete_winners(int* win, float* w, int* win_slot, const float* resp, const int* token_slot,
                            int N, int E, int K, int weights_mode) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* s = resp + (size_t)n * E;
        int* wn = win + (size_t)n * K;
        float* wt = w + (size_t)n * K;
        topk_indices(s, E, K, wn);
        if (weights_mode == COMPETE_WEIGHTS_NORM) {
            float sum = 0.0f;
            for (int k = 0; k < K; k++) sum += s[wn[k]];
            for (int k = 0; k < K; k++) wt[k] = s[wn[k]] / sum;
        } else {
            gate_weights(wt, s, wn, E, K, GATE_TOPK_SOFTMAX);
        }
        for (int k = 0; k < K; k++) win_slot[(size_t)n * K + k] = token_slot[n * E + wn[k]];
    }
}
// dw (N,K) -> ds (N,E), overwritten:
//   norm:    ds_j = (dw_j - sum_i w_i dw_i) / sum_{I_C} s     (j in I_C, else 0)
//   softmax: ds_j = w_j (dw_j - sum_i w_i dw_i)
static void compete_winners_backward(float* ds, const float* dw, const float* w, const float* resp, const int* win,
                                     int N, int E, int K, int weights_mode) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* s = resp + (size_t)n * E;
        const int* wn = win + (size_t)n * K;
        const float* wt = w + (size_t)n * K;
        const float* dwn = dw + (size_t)n * K;
        float* dsn = ds + (size_t)n * E;
        float wdw = 0.0f, ssum = 0.0f;
        for (int k = 0; k < K; k++) { wdw += wt[k] * dwn[k]; ssum += s[wn[k]]; }
        for (int e = 0; e < E; e++) dsn[e] = 0.0f;
        for (int k = 0; k < K; k++)
            dsn[wn[k]] += weights_mode == COMPETE_WEIGHTS_NORM ? (dwn[k] - wdw) / ssum : wt[k] * (dwn[k] - wdw);
    }
}

// L_D, the router distillation loss (p^C constant). pr = p^R (N,E), pc = p^C (N,E), win (N,K).
static float compete_distill_loss(const float* pr, const float* pc, const int* win, int N, int E, int K, float alpha) {
    double ld = 0.0;
    for (int n = 0; n < N; n++) {
        const float* r = pr + (size_t)n * E;
        const float* q = pc + (size_t)n * E;
        const int* wn = win + (size_t)n * K;
        double d1 = 0.0, d2 = 0.0;
        for (int e = 0; e < E; e++) d1 += (double)(r[e] - q[e]) * (r[e] - q[e]);
        for (int k = 0; k < K; k++) d2 += (double)(q[wn[k]] - r[wn[k]]) * (q[wn[k]] - r[wn[k]]);
        ld += d1 / E + alpha * d2 / K;
    }
    return (float)(ld / N);
}
// coef * L_D -> dl (N,E), overwritten:
//   dp^R_i = coef [2 (p^R_i - p^C_i) / (N E) - [i in I_C] 2 alpha (p^C_i - p^R_i) / (N K)],
//   dl = p^R * (dp^R - <p^R, dp^R>)   (softmax backward)
static void compete_distill_backward(float* dl, const float* pr, const float* pc, const int* win, int N, int E, int K,
                                     float alpha, float coef) {
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float* r = pr + (size_t)n * E;
        const float* q = pc + (size_t)n * E;
        const int* wn = win + (size_t)n * K;
        float dpr[256], dot = 0.0f;
        for (int e = 0; e < E; e++) dpr[e] = coef * 2.0f * (r[e] - q[e]) / ((float)N * E);
        for (int k = 0; k < K; k++) dpr[wn[k]] -= coef * 2.0f * alpha * (q[wn[k]] - r[wn[k]]) / ((float)N * K);
        for (int e = 0; e < E; e++) dot += r[e] * dpr[e];
        for (int e = 0; e < E; e++) dl[(size_t)n * E + e] = r[e] * (dpr[e] - dot);
    }
}

// L_div: mean over tokens of (1/K^2) sum over ordered pairs of distinct winners of cos(o_i, o_j).
// win_slot (N,K) locates the winners' outputs in out.
static float compete_diversity_loss(const float* out, const int* win_slot, int N, int K, int C) {
    double div = 0.0;
    for (int n = 0; n < N; n++) {
        double cs = 0.0;
        for (int i = 0; i < K; i++)
            for (int j = i + 1; j < K; j++) {
                const float* oi = out + (size_t)win_slot[(size_t)n * K + i] * C;
                const float* oj = out + (size_t)win_slot[(size_t)n * K + j] * C;
                double dij = 0.0, ni = 0.0, nj = 0.0;
                for (int q = 0; q < C; q++) { dij += (double)oi[q] * oj[q]; ni += (double)oi[q] * oi[q]; nj += (double)oj[q] * oj[q]; }
                cs += 2.0 * dij / (fmax(sqrt(ni), 1e-12) * fmax(sqrt(nj), 1e-12));
            }
        div += cs / ((double)K * K);
    }
    return (float)(div / N);
}
// coef * L_div -> dout of the winners (accumulated):
//   do_a += 2 coef/(N K^2) sum_{b != a} (o_b / (|o_a| |o_b|) - cos_ab o_a / |o_a|^2)
static void compete_diversity_backward(float* dout, const float* out, const int* win_slot, int N, int K, int C, float coef) {
    float c_div = coef / ((float)N * K * K);
    if (c_div == 0.0f) return;
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        for (int a = 0; a < K; a++) {
            const float* oa = out + (size_t)win_slot[(size_t)n * K + a] * C;
            float* doa = dout + (size_t)win_slot[(size_t)n * K + a] * C;
            double na = 0.0;
            for (int i = 0; i < C; i++) na += (double)oa[i] * oa[i];
            float norm_a = (float)fmax(sqrt(na), 1e-12);
            for (int b = 0; b < K; b++) {
                if (b == a) continue;
                const float* ob = out + (size_t)win_slot[(size_t)n * K + b] * C;
                double nb = 0.0, dab = 0.0;
                for (int i = 0; i < C; i++) { nb += (double)ob[i] * ob[i]; dab += (double)oa[i] * ob[i]; }
                float norm_b = (float)fmax(sqrt(nb), 1e-12);
                float cosab = (float)(dab / ((double)norm_a * norm_b));
                float u = 2.0f * c_div / (norm_a * norm_b), v = 2.0f * c_div * cosab / (norm_a * norm_a);
                for (int i = 0; i < C; i++) doa[i] += u * ob[i] - v * oa[i];
            }
        }
    }
}

// Agreement (a metric, no gradient): mean over tokens of |I_C intersect top-k(l)| / K.
static float compete_agreement(const int* win, const float* logits, int N, int E, int K) {
    double agree = 0.0;
    for (int n = 0; n < N; n++) {
        int rk[256], common = 0;
        topk_indices(logits + (size_t)n * E, E, K, rk);
        for (int i = 0; i < K; i++) for (int j = 0; j < K; j++) common += win[(size_t)n * K + i] == rk[j];
        agree += (double)common / K;
    }
    return (float)(agree / N);
}

// The competition schedule (docs/routers.md, "compete"), drawn once for a whole run: sched (S, L)
// gets 1 where layer l competes at step s. No competition in the first floor(warmup * S) steps;
// after that one uniform draw per (layer, step), layers in order 0..L-1 and each layer's steps in
// increasing order, succeeding with probability rate. A success at step i is placed at i if
// fewer than max_layers layers are there and this layer is not; otherwise at the nearest earlier
// step with room (i-1 down to the first post-warm-up step), else the nearest later one; else it
// is dropped. Depends only on (seed, S, L, rate, warmup, max_layers). Returns the pairs placed.
// The warm-up steps floor(warmup * S) for the decimal the user wrote: the float is read back as
// its 7-significant-digit decimal (0.29f is 0.28999999...) and a relative 1e-9 absorbs the double
// product's rounding (0.29 * 100 = 28.999999999999996): 0.29 of 100 steps is 29, not 28.
static int compete_warmup_steps(float warmup, int S) {
    char text[32];
    snprintf(text, sizeof(text), "%.7g", warmup);
    double w = strtod(text, NULL) * S;
    return (int)floor(w + 1e-9 * fabs(w));
}

static long compete_schedule(unsigned char* sched, int S, int L, float rate, float warmup, int max_layers, uint64_t seed) {
    memset(sched, 0, (size_t)S * L);
    int W = compete_warmup_steps(warmup, S);
    if (W > S) W = S;
    int* count = (int*)callocCheck((size_t)(S > 0 ? S : 1), sizeof(int));
    uint64_t rng = derive_seed(seed, STREAM_COMPETE);
    long placed = 0;
    for (int l = 0; l < L; l++) {
        for (int i = W; i < S; i++) {
            if (!(random_f32(&rng) < rate)) continue;
            int at = -1;
            if (count[i] < max_layers && !sched[(size_t)i * L + l]) at = i;
            for (int j = i - 1; at < 0 && j >= W; j--) if (count[j] < max_layers && !sched[(size_t)j * L + l]) at = j;
            for (int j = i + 1; at < 0 && j < S; j++) if (count[j] < max_layers && !sched[(size_t)j * L + l]) at = j;
            if (at < 0) continue;
            sched[(size_t)at * L + l] = 1;
            count[at]++;
            placed++;
        }
    }
    freeCheck(count);
    return placed;
}

#endif // ROUTERS_H
