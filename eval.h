/*
eval.h -- the evaluations eval_moe runs (and test_moe checks): validation loss, perplexity and bits
per byte; multiple-choice accuracy; text generation; the per-layer expert analysis.

Multiple choice (docs/metrics.md). Each ending is scored by the cross-entropy of its tokens given the
context and its own earlier tokens: L_sum (nats) and L_mean = L_sum / its token count.
acc = argmin L_sum == label, acc_norm = argmin L_mean == label (llm.c's headline), ties to the
lowest ending. Choices this file makes where the spec is silent:
  - one sequence per ending, packed B rows at a time across examples (any B >= 1 works; llm.c's
    loader needed B >= 4); rows are T_run = min(T, longest needed) tokens, padded after the
    sequence with end-of-text (causal attention and per-token routing: padding changes nothing).
  - an example longer than T keeps the same, left-truncated context for all its endings (so the
    endings are compared on equal terms): the last T + 1 - (longest ending) context tokens. It is
    skipped when its longest ending alone does not fit (longer than T).
  - an empty context becomes one end-of-text token (the first ending token needs something to be
    predicted from). An ending with no tokens, or fewer than 2 endings, is a malformed example.
  - JSONL example index = its line number (1-based); .bin example index = its index field.
*/
#ifndef EVAL_H
#define EVAL_H

#include <time.h>
#include "moe.h"
#include "metrics.h"
#include "dataloader.h"
#include "tokenizer.h"
#include "mc.h"
#include "progress.h"

// ----------------------------------------------------------------------------
// EXPERT ANALYSIS (docs/metrics.md): the per-layer MoE metrics, by the same moe.h code train_moe logs, over
// the loss pass's tokens (the probe set: -j, or the synthetic val split; -m batches). The
// expert-output similarity runs every expert on the first batch's tokens. The multiple-choice
// pass has padding tokens and is deliberately not fed.

typedef struct {
    int enabled;         // a loss pass ran on an MoE model (E > 1)
    const MoEModel* m;
    MoEMetrics metrics;
    float* probe_sim;    // (L) expert-output similarity on the first batch
    int batches;
    int num_domains;     // D: the synthetic corpus's, the -j shards' label files', or 0
    char (*domain_names)[DOMAIN_NAME_MAX];  // (D)
    uint32_t* token_counts;  // (L, E, V) input tokens routed to each expert (K slots per token)
    uint8_t* null_domains;   // the pass's domains, permuted (MI's chance level); NULL without domains
    size_t null_len, null_pos;
    uint64_t null_seed;
    FILE* dump;              // --routing-dump, or NULL
    long dump_token;         // tokens dumped so far
} ExpertAnalysis;

// names (D of them, may be NULL: "domain0".."") name the domains of the pass, if any
static void expert_analysis_begin(ExpertAnalysis* xa, const MoEModel* m, int num_domains,
                                  char (*names)[DOMAIN_NAME_MAX], uint64_t null_seed) {
    memset(xa, 0, sizeof(*xa));
    xa->m = m;
    int L = m->config.num_layers, E = m->config.n_expert, V = m->config.vocab_size;
    metrics_init(&xa->metrics, L, E, m->config.top_k, num_domains);   // (says so when it keeps only the first domains)
    if (num_domains > METRICS_MAX_DOMAINS) num_domains = METRICS_MAX_DOMAINS;
    xa->probe_sim = (float*)callocCheck((size_t)L, sizeof(float));
    xa->num_domains = num_domains;
    xa->domain_names = (char (*)[DOMAIN_NAME_MAX])callocCheck((size_t)(num_domains > 0 ? num_domains : 1), DOMAIN_NAME_MAX);
    for (int d = 0; d < num_domains; d++) {
        if (names != NULL) snprintf(xa->domain_names[d], DOMAIN_NAME_MAX, "%s", names[d]);
        else snprintf(xa->domain_names[d], DOMAIN_NAME_MAX, "domain%d", d);
    }
    xa->token_counts = (uint32_t*)callocCheck((size_t)L * E * V, sizeof(uint32_t));
    xa->null_seed = null_seed;
}

// Writes one TSV line per (token, layer) of the last forward to xa->dump (format: README).
static void routing_dump_batch(ExpertAnalysis* xa, const MoEModel* m, const int* inputs, const uint8_t* domains) {
    int L = m->config.num_layers, K = m->config.top_k, N = m->batch_size * m->seq_len;
    for (int n = 0; n < N; n++, xa->dump_token++) {
        for (int l = 0; l < L; l++) {
            const int* sel = m->idx.expert_index + ((size_t)l * N + n) * K;
            const float* g = m->acts.gate + ((size_t)l * N + n) * K;
            fprintf(xa->dump, "%ld\t%d\t%d\t%d\t", xa->dump_token, inputs[n], domains != NULL ? domains[n] : -1, l);
            for (int k = 0; k < K; k++) fprintf(xa->dump, "%s%d", k ? "," : "", sel[k]);
            fputc('\t', xa->dump);
            for (int k = 0; k < K; k++) fprintf(xa->dump, "%s%.6g", k ? "," : "", g[k]);
            fputc('\n', xa->dump);
        }
    }
}

static void expert_analysis_batch(ExpertAnalysis* xa, const MoEModel* m, const int* inputs, const uint8_t* domains) {
    if (xa->dump != NULL) routing_dump_batch(xa, m, inputs, domains);
    if (m->config.n_expert < 2) return;
    metrics_accumulate(&xa->metrics, m, xa->num_domains > 0 ? domains : NULL);
    int N = m->batch_size * m->seq_len;
    if (xa->null_domains != NULL && xa->null_pos + (size_t)N <= xa->null_len) {
        metrics_accumulate_null(&xa->metrics, m, xa->null_domains + xa->null_pos);
        xa->null_pos += (size_t)N;
    }
    int L = m->config.num_layers, E = m->config.n_expert, K = m->config.top_k, V = m->config.vocab_size;
    for (int l = 0; l < L; l++) {
        const int* sel = m->idx.expert_index + (size_t)l * N * K;
        for (int n = 0; n < N; n++)
            for (int k = 0; k < K; k++) xa->token_counts[((size_t)l * E + sel[(size_t)n * K + k]) * V + inputs[n]]++;
    }
    if (xa->batches++ == 0)
        for (int l = 0; l < m->config.num_layers; l++) xa->probe_sim[l] = expert_output_similarity(m, l);
    xa->enabled = 1;
}

// a token's bytes, printable: quoted, with \n \t \\ \' and \xHH escapes; "#ID" without a tokenizer
static void print_token(FILE* f, const Tokenizer* tok, int id) {
    size_t n = 0;
    const unsigned char* b = tok != NULL ? tokenizer_token(tok, (uint32_t)id, &n) : NULL;
    if (b == NULL) { fprintf(f, "#%d", id); return; }
    if (tok != NULL && (uint32_t)id == tok->eot_token) { fputs("<eot>", f); return; }
    fputc('\'', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = b[i];
        if (c == '\n') fputs("\\n", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c == '\\' || c == '\'') fprintf(f, "\\%c", c);
        else if (c < 32 || c == 127) fprintf(f, "\\x%02x", c);
        else fputc(c, f);
    }
    fputc('\'', f);
}

#define EXPERT_TOP_TOKENS 6
// expert e of layer l: its top tokens by count (ids into top, counts into top_count, at most
// EXPERT_TOP_TOKENS, ties to the lower id); returns the expert's total slot count
static double expert_top_tokens(const ExpertAnalysis* xa, int l, int e, int* top, uint32_t* top_count, int* ntop) {
    int E = xa->m->config.n_expert, V = xa->m->config.vocab_size;
    const uint32_t* c = xa->token_counts + ((size_t)l * E + e) * V;
    double total = 0.0;
    *ntop = 0;
    for (int v = 0; v < V; v++) {
        total += c[v];
        if (c[v] == 0) continue;
        int pos = *ntop < EXPERT_TOP_TOKENS ? (*ntop)++ : EXPERT_TOP_TOKENS;
        if (pos == EXPERT_TOP_TOKENS && c[v] <= top_count[EXPERT_TOP_TOKENS - 1]) continue;
        if (pos == EXPERT_TOP_TOKENS) pos = EXPERT_TOP_TOKENS - 1;
        while (pos > 0 && top_count[pos - 1] < c[v]) { top[pos] = top[pos - 1]; top_count[pos] = top_count[pos - 1]; pos--; }
        top[pos] = v;
        top_count[pos] = c[v];
    }
    return total;
}

// Per layer, per expert: its share of the slots, its most frequent input tokens (decoded) with
// their share of the expert's tokens, and its top domain with the share of the expert's tokens
// from it (domains: MI's table). On the terminal and, when json != NULL, as the JSON array
// "expert_tokens".
static void expert_tokens_report(const ExpertAnalysis* xa, const Tokenizer* tok, FILE* terminal, FILE* json) {
    if (!xa->enabled) { if (json != NULL) fputs("null", json); return; }
    const MoEMetrics* mm = &xa->metrics;
    int L = mm->L, E = mm->E, D = xa->num_domains;
    if (terminal != NULL)
        fprintf(terminal, "expert tokens  per layer, per expert: share of the routed slots, top domain (share of the "
                          "expert's tokens), most frequent input tokens (share of the expert's tokens)\n");
    if (json != NULL) fputs("[", json);
    for (int l = 0; l < L; l++) {
        if (terminal != NULL) fprintf(terminal, "  layer %d\n", l);
        if (json != NULL) fprintf(json, "%s[", l ? ", " : "");
        for (int e = 0; e < E; e++) {
            int top[EXPERT_TOP_TOKENS], ntop;
            uint32_t top_count[EXPERT_TOP_TOKENS];
            double total = expert_top_tokens(xa, l, e, top, top_count, &ntop);
            int best_d = -1;
            double best = 0.0;
            for (int d = 0; d < D; d++) {
                double v = mm->domain_joint[((size_t)l * E + e) * D + d];
                if (v > best) { best = v; best_d = d; }
            }
            double share = mm->tokens > 0 ? total / (mm->tokens * mm->K) : 0.0;
            if (terminal != NULL) {
                fprintf(terminal, "    e%-3d %5.1f%%", e, 100.0 * share);
                if (D > 0) {
                    if (best_d >= 0) fprintf(terminal, "  %-12s %5.1f%%", xa->domain_names[best_d], 100.0 * best / total);
                    else fprintf(terminal, "  %-12s %5s ", "-", "");
                }
                fputs(" |", terminal);
                for (int i = 0; i < ntop; i++) {
                    fputc(' ', terminal);
                    print_token(terminal, tok, top[i]);
                    fprintf(terminal, " %.1f%%", 100.0 * top_count[i] / total);
                }
                fputc('\n', terminal);
            }
            if (json != NULL) {
                fprintf(json, "%s{\"expert\": %d, \"slots\": %.0f, \"top_domain\": ", e ? ", " : "", e, total);
                if (best_d >= 0) json_write_cstr(json, xa->domain_names[best_d]); else fputs("null", json);
                fprintf(json, ", \"top_domain_tokens\": %.0f, \"top_tokens\": [", best);
                for (int i = 0; i < ntop; i++) fprintf(json, "%s[%d, %u]", i ? ", " : "", top[i], top_count[i]);
                fputs("]}", json);
            }
        }
        if (json != NULL) fputs("]", json);
    }
    if (json != NULL) fputs("]", json);
}

// One row per layer on the terminal; the JSON value of "experts": an array of per-layer objects.
static void expert_analysis_report(const ExpertAnalysis* xa, FILE* terminal, FILE* json) {
    const MoEMetrics* mm = &xa->metrics;
    if (!xa->enabled) {
        if (terminal != NULL) fprintf(terminal, "experts        - (no loss pass, or E = 1)\n");
        if (json != NULL) fputs("null", json);
        return;
    }
    if (terminal != NULL) {
        fprintf(terminal, "experts        per layer over %.0f tokens (router %s)\n", mm->tokens, ROUTER_NAMES[xa->m->router.router]);
        fprintf(terminal, "  layer  zero  load_cv  max/mean  load_ent  |S|    angle  spec_ent  sib_coact (random)  out_cos  MI/H(d) (chance: domains shuffled)\n");
    }
    if (json != NULL) fputs("[", json);
    for (int l = 0; l < mm->L; l++) {
        LayerMetrics lm;
        moe_metrics_layer(mm, xa->m, l, &lm);
        if (terminal != NULL) {
            fprintf(terminal, "  %5d  %4d  %7.4f  %8.3f  %8.4f  %5.3f  %5.3f  %8.4f  %9.4f (%.4f)  %7.4f  ", l, lm.zero_experts,
                    lm.load_cv, lm.load_max_mean, lm.load_entropy, lm.sim_abs_mean, lm.sim_angle_mean, lm.spectral_entropy,
                    lm.sibling_coact, lm.sibling_coact_random, xa->probe_sim[l]);
            if (lm.domain_mi >= 0) fprintf(terminal, "%7.4f", lm.domain_mi); else fprintf(terminal, "      -");
            if (lm.domain_mi_chance >= 0) fprintf(terminal, " (chance %.4f)", lm.domain_mi_chance);
            fputc('\n', terminal);
        }
        if (json != NULL) {
            fprintf(json, "%s{\"layer\": %d, \"tokens\": %.0f, \"zero_experts\": %d, \"load_cv\": %.6f, \"load_max_mean\": %.6f, "
                    "\"load_entropy\": %.6f, \"router_sim_abs\": %.6f, \"router_sim_angle\": %.6f, "
                    "\"router_spectral_entropy\": %.6f, \"sibling_coact\": %.6f, \"sibling_coact_random\": %.6f, "
                    "\"expert_out_sim\": %.6f, \"domain_mi\": ", l ? ", " : "", l, mm->tokens, lm.zero_experts, lm.load_cv,
                    lm.load_max_mean, lm.load_entropy, lm.sim_abs_mean, lm.sim_angle_mean, lm.spectral_entropy,
                    lm.sibling_coact, lm.sibling_coact_random, xa->probe_sim[l]);
            if (lm.domain_mi >= 0) fprintf(json, "%.6f", lm.domain_mi); else fputs("null", json);
            fputs(", \"domain_mi_chance\": ", json);
            if (lm.domain_mi_chance >= 0) fprintf(json, "%.6f", lm.domain_mi_chance); else fputs("null", json);
            fputs(", \"expert_counts\": [", json);
            for (int e = 0; e < mm->E; e++) fprintf(json, "%s%.0f", e ? ", " : "", mm->counts[(size_t)l * mm->E + e]);
            fputs("]", json);
            if (mm->num_domains > 0) {
                fputs(", \"domain_counts\": [", json);
                for (int i = 0; i < mm->E * mm->num_domains; i++)
                    fprintf(json, "%s%.0f", i ? ", " : "", mm->domain_joint[(size_t)l * mm->E * mm->num_domains + i]);
                fputs("]", json);
            }
            fputs("}", json);
        }
    }
    if (json != NULL) fputs("]", json);
}

static void expert_analysis_free(ExpertAnalysis* xa) {
    metrics_free(&xa->metrics);
    freeCheck(xa->probe_sim);
    freeCheck(xa->domain_names);
    freeCheck(xa->token_counts);
    free(xa->null_domains);
}

// ----------------------------------------------------------------------------
// 1. loss, perplexity, bits per byte

typedef struct {
    int batches;
    int available_batches;  // in one full pass over the data
    long tokens;
    double nll_sum;      // nats, over all target tokens
    double bytes;        // sum of bytes(target token); 0 when no tokenizer
    int have_bpb;
    double loss;         // nll_sum / tokens
    double perplexity;   // exp(loss)
    double bpb;          // (nll_sum / ln 2) / bytes
} LossResult;

// Bytes of each token id (eot counts 0), or NULL when there is no tokenizer. V entries.
static double* token_byte_counts(const Tokenizer* tok) {
    double* bytes = (double*)mallocCheck(sizeof(double) * tok->vocab_size);
    for (uint32_t id = 0; id < tok->vocab_size; id++) {
        size_t len = 0;
        tokenizer_token(tok, id, &len);
        bytes[id] = id == tok->eot_token ? 0.0 : (double)len;
    }
    return bytes;
}

// One pass of at most max_batches (< 0: all) batches from the start of dl. Per-token NLL from
// the forward's acts.losses, summed in token order in double (the same sum crossentropy_forward
// forms, so one batch gives exactly m->mean_loss).
static void eval_loss(MoEModel* m, const RoutingMode* mode, DataLoader* dl, int max_batches, const double* token_bytes,
                      ExpertAnalysis* xa, LossResult* r) {
    memset(r, 0, sizeof(*r));
    int64_t nb = dataloader_num_batches(dl);
    int batches = max_batches < 0 || max_batches > nb ? (int)nb : max_batches;
    int N = dl->B * dl->T;
    if (xa != NULL && xa->num_domains > 0 && dl->input_domains != NULL) {
        // MI's chance level: the domains of the whole pass, permuted once (a batch alone is often
        // from one document, so permuting within a batch would keep most of the dependence)
        xa->null_len = (size_t)batches * N;
        xa->null_pos = 0;
        xa->null_domains = (uint8_t*)mallocCheck(xa->null_len > 0 ? xa->null_len : 1);
        dataloader_reset(dl);
        for (int b = 0; b < batches; b++) {
            dataloader_next_batch(dl);
            memcpy(xa->null_domains + (size_t)b * N, dl->input_domains, (size_t)N);
        }
        domains_permute(xa->null_domains, xa->null_len, xa->null_seed);
    }
    dataloader_reset(dl);
    Progress progress;
    progress_begin(&progress, "eval_moe: loss pass", "batches", now_seconds());
    for (int b = 0; b < batches; b++) {
        progress_tick(&progress, b, batches, now_seconds(), stderr);
        dataloader_next_batch(dl);
        moe_forward(m, dl->inputs, dl->targets, dl->B, dl->T, mode);
        double s = 0.0;
        for (int n = 0; n < N; n++) s += m->acts.losses[n];
        r->nll_sum += s;
        if (token_bytes != NULL) for (int n = 0; n < N; n++) r->bytes += token_bytes[dl->targets[n]];
        if (xa != NULL) expert_analysis_batch(xa, m, dl->inputs, dl->input_domains);
    }
    r->batches = batches;
    r->available_batches = (int)nb;
    r->tokens = (long)batches * N;
    r->loss = r->tokens > 0 ? r->nll_sum / r->tokens : NAN;
    r->perplexity = exp(r->loss);
    r->have_bpb = token_bytes != NULL && r->bytes > 0;
    r->bpb = r->have_bpb ? (r->nll_sum / log(2.0)) / r->bytes : NAN;
}

// ----------------------------------------------------------------------------
// 2. multiple choice

typedef struct {
    int examples;      // in the set (after --mc-limit)
    int scored;        // not skipped
    int truncated;     // scored with a left-truncated context
    int skipped;       // an ending alone longer than T
    int correct;       // argmin L_sum == label
    int correct_norm;  // argmin L_mean == label
    double acc, acc_norm;
    double chance;     // mean of 1/endings over the scored examples
    int T_run;         // sequence length actually run
} MCResult;

// Scores the first `limit` examples (< 0: all) with B rows of T tokens at a time. lsum_out, if
// not NULL, receives L_sum of every ending (example-major; NAN for a skipped example).
static void mc_evaluate(MoEModel* m, const RoutingMode* mode, const MCSet* set, int limit, int B, int T, int eot, MCResult* r, double* lsum_out) {
    memset(r, 0, sizeof(*r));
    int n = limit < 0 || limit > set->n ? set->n : limit;
    r->examples = n;
    // per example: how many context tokens it keeps (0 = skipped); per job (example, ending) its row
    int* keep = (int*)mallocCheck(sizeof(int) * (size_t)(n + 1));
    int* job_start = (int*)mallocCheck(sizeof(int) * (size_t)(n + 1));  // first job of each example
    int njobs = 0, T_run = 1;
    for (int i = 0; i < n; i++) {
        const MCExample* ex = &set->examples[i];
        int max_end = 0;
        for (int j = 0; j < ex->n_endings; j++) if (ex->ending_len[j] > max_end) max_end = ex->ending_len[j];
        job_start[i] = njobs;
        njobs += ex->n_endings;
        if (max_end > T) { keep[i] = 0; r->skipped++; continue; }
        keep[i] = ex->ctx_len < T + 1 - max_end ? ex->ctx_len : T + 1 - max_end;
        if (keep[i] < ex->ctx_len) r->truncated++;
        int need = keep[i] + max_end - 1;
        if (need > T_run) T_run = need;
    }
    job_start[n] = njobs;
    r->T_run = T_run;
    double* lsum = (double*)mallocCheck(sizeof(double) * (size_t)(njobs + 1));
    int* inputs = (int*)mallocCheck(sizeof(int) * (size_t)B * T_run);
    int* targets = (int*)mallocCheck(sizeof(int) * (size_t)B * T_run);
    int* row_job = (int*)mallocCheck(sizeof(int) * (size_t)B);
    int* row_ex = (int*)mallocCheck(sizeof(int) * (size_t)B);
    // walk the jobs of scored examples, B rows at a time
    int ex_i = 0, end_j = 0;
    Progress progress;
    progress_begin(&progress, "eval_moe: multiple choice", "examples", now_seconds());
    for (;;) {
        progress_tick(&progress, ex_i, n, now_seconds(), stderr);
        int rows = 0;
        for (int t = 0; t < B * T_run; t++) { inputs[t] = eot; targets[t] = eot; }
        while (rows < B && ex_i < n) {
            const MCExample* ex = &set->examples[ex_i];
            if (keep[ex_i] == 0) {
                for (int j = 0; j < ex->n_endings; j++) lsum[job_start[ex_i] + j] = NAN;
                ex_i++; end_j = 0;
                continue;
            }
            // sequence = ctx[ctx_len-keep ..] + ending; inputs seq[0..len-1), targets seq[1..len)
            int k = keep[ex_i], e_len = ex->ending_len[end_j];
            const int* ctx = ex->tokens + ex->ctx_len - k;
            const int* end = mc_ending(ex, end_j);
            int* in = inputs + (size_t)rows * T_run;
            int* tg = targets + (size_t)rows * T_run;
            for (int t = 0; t < k + e_len - 1; t++) {
                in[t] = t < k ? ctx[t] : end[t - k];
                tg[t] = t + 1 < k ? ctx[t + 1] : end[t + 1 - k];
            }
            row_job[rows] = job_start[ex_i] + end_j;
            row_ex[rows] = ex_i;
            rows++;
            if (++end_j == ex->n_endings) { ex_i++; end_j = 0; }
        }
        if (rows == 0) break;
        moe_forward(m, inputs, targets, B, T_run, mode);
        for (int row = 0; row < rows; row++) {
            const MCExample* ex = &set->examples[row_ex[row]];
            int job = row_job[row], j = job - job_start[row_ex[row]], k = keep[row_ex[row]];
            double s = 0.0;
            for (int t = k - 1; t < k - 1 + ex->ending_len[j]; t++) s += m->acts.losses[(size_t)row * T_run + t];
            lsum[job] = s;
        }
    }
    // decide each example: argmin, ties to the lowest ending
    for (int i = 0; i < n; i++) {
        const MCExample* ex = &set->examples[i];
        if (keep[i] == 0) continue;
        int best_sum = 0, best_mean = 0;
        const double* ls = lsum + job_start[i];
        for (int j = 1; j < ex->n_endings; j++) {
            if (ls[j] < ls[best_sum]) best_sum = j;
            if (ls[j] / ex->ending_len[j] < ls[best_mean] / ex->ending_len[best_mean]) best_mean = j;
        }
        r->scored++;
        r->correct += best_sum == ex->label;
        r->correct_norm += best_mean == ex->label;
        r->chance += 1.0 / ex->n_endings;
    }
    r->acc = r->scored > 0 ? (double)r->correct / r->scored : NAN;
    r->acc_norm = r->scored > 0 ? (double)r->correct_norm / r->scored : NAN;
    r->chance = r->scored > 0 ? r->chance / r->scored : NAN;
    if (lsum_out != NULL) memcpy(lsum_out, lsum, sizeof(double) * (size_t)njobs);
    free(keep); free(job_start); free(lsum); free(inputs); free(targets); free(row_job); free(row_ex);
}

// ----------------------------------------------------------------------------
// 3. generation

// The next token from logits (V values): greedy when temperature == 0, else a sample from
// softmax(logits / temperature) over the top_k largest (top_k <= 0 or >= V: all). Ties in the
// greedy choice and the top-k cut go to the lower id.
static int sample_token(const float* logits, int V, float temperature, int top_k, uint64_t* rng, float* scratch) {
    if (temperature <= 0.0f) {
        int best = 0;
        for (int v = 1; v < V; v++) if (logits[v] > logits[best]) best = v;
        return best;
    }
    // scratch[v] != 0 marks the ids sampled from: all, or the top_k picked by k selection passes
    int all = top_k <= 0 || top_k >= V;
    for (int v = 0; v < V; v++) scratch[v] = all ? 1.0f : 0.0f;
    for (int k = 0; !all && k < top_k; k++) {
        int best = -1;
        for (int v = 0; v < V; v++) if (scratch[v] == 0.0f && (best < 0 || logits[v] > logits[best])) best = v;
        scratch[best] = 1.0f;
    }
    float mx = -INFINITY;
    for (int v = 0; v < V; v++) if (scratch[v] != 0.0f && logits[v] > mx) mx = logits[v];
    double total = 0.0;
    for (int v = 0; v < V; v++) {
        scratch[v] = scratch[v] != 0.0f ? expf((logits[v] - mx) / temperature) : 0.0f;
        total += scratch[v];
    }
    double r = random_f32(rng) * total, cdf = 0.0;
    int last = 0;
    for (int v = 0; v < V; v++) {
        if (scratch[v] == 0.0f) continue;
        cdf += scratch[v];
        last = v;
        if (r < cdf) return v;
    }
    return last;
}

// Appends gen_len sampled tokens to prompt[0..n_prompt) (n_prompt >= 1) into out (gen_len). The
// window slides once the text is longer than maxT.
static void generate(MoEModel* m, const RoutingMode* mode, const int* prompt, int n_prompt, int gen_len, float temperature, int top_k,
                     int eot, uint64_t* rng, int* out) {
    int maxT = m->config.max_seq_len, V = m->config.vocab_size, Vp = m->config.padded_vocab_size;
    int T = n_prompt + gen_len - 1 < maxT ? n_prompt + gen_len - 1 : maxT;
    if (T < 1) T = 1;
    int* text = (int*)mallocCheck(sizeof(int) * (size_t)(n_prompt + gen_len));
    memcpy(text, prompt, sizeof(int) * (size_t)n_prompt);
    int* window = (int*)mallocCheck(sizeof(int) * (size_t)T);
    float* scratch = (float*)mallocCheck(sizeof(float) * (size_t)V);
    for (int i = 0; i < gen_len; i++) {
        int len = n_prompt + i, start = len - T > 0 ? len - T : 0;
        for (int t = 0; t < T; t++) window[t] = start + t < len ? text[start + t] : eot;
        moe_forward(m, window, NULL, 1, T, mode);
        const float* logits = m->acts.logits + (size_t)(len - start - 1) * Vp;
        text[len] = out[i] = sample_token(logits, V, temperature, top_k, rng, scratch);
    }
    free(text); free(window); free(scratch);
}

#endif // EVAL_H
