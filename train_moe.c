/*
train_moe — train a Mixture-of-Experts GPT on the CPU.

    make && ./train_moe                 # the built-in synthetic multi-domain corpus
    ./train_moe -i data/tinyshakespeare/tiny_shakespeare_train.bin -j data/tinyshakespeare/tiny_shakespeare_val.bin

Every flag is declared once, in FLAGS below; --help prints that table and the README copies it.
*/
#include <signal.h>
#include <time.h>
#include <sys/stat.h>
#include <dirent.h>
#include "moe.h"
#include "metrics.h"
#include "dataloader.h"
#include "tokenizer.h"
#include "flags.h"
#include "mpi_moe.h"
#include "upcycle.h"
#include "progress.h"

// ----------------------------------------------------------------------------
// the flags: one table, with defaults and help

typedef enum {
    F_TRAIN, F_VAL, F_OUTPUT, F_OVERWRITE, F_BATCH, F_SEQ_LEN, F_LR, F_WARMUP, F_FINAL_LR, F_WEIGHT_DECAY, F_TOTAL_BATCH,
    F_STEPS, F_VAL_EVERY, F_VAL_BATCHES, F_SAMPLE_EVERY, F_GEN_LEN, F_CKPT_EVERY, F_KEEP, F_INIT, F_WEIGHTS_ONLY,
    F_UPCYCLE, F_UPCYCLE_NOISE,
    F_LAYERS, F_HEADS, F_CHANNELS, F_EXPERTS, F_TOP_K, F_HIDDEN, F_MAX_SEQ_LEN, F_VOCAB,
    F_ROUTER, F_GATE_NORM, F_AUX_LOSS, F_Z_LOSS, F_ROUTER_INIT_STD, F_GATEPRO_LAMBDA, F_GATEPRO_START,
    F_GATEPRO_STOP, F_COMPETE_RATE, F_COMPETE_WARMUP, F_COMPETE_MAX_LAYERS, F_COMPETE_WEIGHTS, F_COMPETE_ALPHA,
    F_COMPETE_ROUTER_COEF, F_COMPETE_DIV_COEF, F_COMPETE_BAL_COEF, F_AUXFREE_RATE, F_XMOE_DIM, F_SEED, F_GRAD_CLIP, F_TOKENIZER, F_SYNTH_TOKENS, F_ZERO, F_EXPERT_PARALLEL, F_COMM_STATS, F_PROFILE, F_HELP, NUM_FLAGS
} FlagId;

static const FlagSpec FLAGS[NUM_FLAGS] = {
    [F_TRAIN]          = {"train-data", 'i', 1, "", "train shards (glob; .bin also matches .bin.gz); empty = built-in synthetic corpus"},
    [F_VAL]            = {"val-data", 'j', 1, "", "validation shards (glob); empty = the synthetic corpus's val split"},
    [F_OUTPUT]         = {"output", 'o', 1, "out", "output directory (parents created): main.log, config.txt, checkpoints"},
    [F_OVERWRITE]      = {"overwrite", 0, 0, "", "start a new run in an -o that holds another run's checkpoints (deletes them)"},
    [F_BATCH]          = {"batch", 'b', 1, "16", "micro-batch size B"},
    [F_SEQ_LEN]        = {"seq-len", 't', 1, "64", "sequence length T (1 <= T <= maxT)"},
    [F_LR]             = {"lr", 'l', 1, "1e-3", "peak learning rate"},
    [F_WARMUP]         = {"warmup", 'u', 1, "20", "linear warmup steps"},
    [F_FINAL_LR]       = {"final-lr-frac", 'q', 1, "0.1", "final learning rate as a fraction of the peak (cosine decay)"},
    [F_WEIGHT_DECAY]   = {"weight-decay", 'c', 1, "0.1", "AdamW weight decay (matrices and embeddings only)"},
    [F_TOTAL_BATCH]    = {"total-batch", 'd', 1, "0", "tokens per optimizer step over all MPI ranks, a multiple of B*T (0 = B*T per rank, no accumulation)"},
    [F_STEPS]          = {"steps", 'x', 1, "300", "optimizer steps (-1 = one epoch of the train data)"},
    [F_VAL_EVERY]      = {"val-every", 'v', 1, "50", "validate every N steps (and at the end); 0 = never"},
    [F_VAL_BATCHES]    = {"val-batches", 'm', 1, "16", "batches per validation"},
    [F_SAMPLE_EVERY]   = {"sample-every", 's', 1, "0", "print a sample every N steps (and at the end); 0 = never"},
    [F_GEN_LEN]        = {"gen-len", 'g', 1, "64", "tokens per sample"},
    [F_CKPT_EVERY]     = {"checkpoint-every", 'n', 1, "0", "write a checkpoint every N steps (one is always written at the end)"},
    [F_KEEP]           = {"keep", 0, 1, "0", "keep only the newest N checkpoints (older ones deleted once the new one is on disk); 0 = all"},
    [F_INIT]           = {"init", 'e', 1, "", "initialise from a checkpoint; resumes if it holds optimizer state"},
    [F_WEIGHTS_ONLY]   = {"weights-only", 0, 0, "", "with -e: load the parameters only and start a fresh run"},
    [F_UPCYCLE]        = {"upcycle", 0, 1, "", "start from a dense model (E=1 checkpoint or llm.c GPT-2 .bin): every expert a copy of its MLP"},
    [F_UPCYCLE_NOISE]  = {"upcycle-noise", 0, 1, "0", "with --upcycle: add N(0, (S*rms)^2) to each expert copy (0 = exact copies)"},
    [F_LAYERS]         = {"layers", 0, 1, "4", "layers L"},
    [F_HEADS]          = {"heads", 0, 1, "4", "attention heads NH (C % NH == 0)"},
    [F_CHANNELS]       = {"channels", 0, 1, "128", "channels C"},
    [F_EXPERTS]        = {"experts", 0, 1, "8", "experts per layer E (1 = dense GPT-2 MLP)"},
    [F_TOP_K]          = {"top-k", 0, 1, "2", "experts per token K (1 <= K <= E)"},
    [F_HIDDEN]         = {"expert-hidden", 0, 1, "0", "expert hidden size H (0 = 4C; 4C/K matches active parameters)"},
    [F_MAX_SEQ_LEN]    = {"max-seq-len", 0, 1, "0", "maxT, the position table's length (0 = T)"},
    [F_VOCAB]          = {"vocab-size", 0, 1, "0", "V for shards without a tokenizer (0 = from the tokenizer)"},
    [F_ROUTER]         = {"router", 0, 1, "topk", "router: topk | gatepro | compete | auxfree | xmoe"},
    [F_GATE_NORM]      = {"gate-norm", 0, 1, "topk_softmax", "gate weights: topk_softmax | softmax_topk"},
    [F_AUX_LOSS]       = {"aux-loss", 0, 1, "0.01", "Switch load-balance loss coefficient a (auxfree: 0 unless given)"},
    [F_Z_LOSS]         = {"z-loss", 0, 1, "0", "router z-loss coefficient z"},
    [F_ROUTER_INIT_STD]= {"router-init-std", 0, 1, "0.02", "std of the router weights' initialisation (0 allowed)"},
    [F_GATEPRO_LAMBDA] = {"gatepro-lambda", 0, 1, "1e-4", "GatePro penalty lambda (finite, >= 0)"},
    [F_GATEPRO_START]  = {"gatepro-start", 0, 1, "0", "GatePro penalty on from this 0-based step"},
    [F_GATEPRO_STOP]   = {"gatepro-stop", 0, 1, "-1", "GatePro penalty off from this step (-1 = never)"},
    [F_COMPETE_RATE]   = {"compete-rate", 0, 1, "0.05", "CompeteSMoE: probability that a (layer, step) after warm-up competes"},
    [F_COMPETE_WARMUP] = {"compete-warmup", 0, 1, "0.05", "CompeteSMoE: fraction of the steps before any competition"},
    [F_COMPETE_MAX_LAYERS] = {"compete-max-layers", 0, 1, "3", "CompeteSMoE: at most this many layers compete in one step"},
    [F_COMPETE_WEIGHTS] = {"compete-weights", 0, 1, "norm", "CompeteSMoE: winners' weights: norm (s_i / sum s) | softmax"},
    [F_COMPETE_ALPHA]  = {"compete-alpha", 0, 1, "0", "CompeteSMoE: weight of the winners-only (hybrid) router-loss term"},
    [F_COMPETE_ROUTER_COEF] = {"compete-router-coef", 0, 1, "0.01", "CompeteSMoE: router distillation loss coefficient"},
    [F_COMPETE_DIV_COEF] = {"compete-div-coef", 0, 1, "0.01", "CompeteSMoE: expert-output diversity loss coefficient (0 = off)"},
    [F_COMPETE_BAL_COEF] = {"compete-bal-coef", 0, 1, "0.01", "CompeteSMoE: competition balance loss coefficient"},
    [F_AUXFREE_RATE]   = {"auxfree-rate", 0, 1, "1e-3", "auxfree: bias update speed u per optimizer step"},
    [F_XMOE_DIM]       = {"xmoe-dim", 0, 1, "16", "X-MoE: routing dimension d_e (the paper's 16)"},
    [F_SEED]           = {"seed", 0, 1, "1337", "seed of every random stream (init, data order, sampling, corpus)"},
    [F_GRAD_CLIP]      = {"grad-clip", 0, 1, "1.0", "clip the global gradient norm to this (0 = off)"},
    [F_TOKENIZER]      = {"tokenizer", 0, 1, "", "tokenizer file for samples (default: tokenizer.bin beside the train shards)"},
    [F_SYNTH_TOKENS]   = {"synthetic-tokens", 0, 1, "4000000", "size of the synthetic corpus's train split in tokens"},
    [F_ZERO]           = {"zero", 0, 0, "", "MPI: ZeRO-1, each rank keeps the AdamW state of its shard of the parameters"},
    [F_EXPERT_PARALLEL] = {"expert-parallel", 0, 0, "", "MPI: split each layer's experts over the ranks; tokens travel to their experts"},
    [F_COMM_STATS]     = {"comm-stats", 0, 0, "", "MPI: print bytes and time communicated per step; check the ranks' parameters agree"},
    [F_PROFILE]        = {"profile", 0, 0, "", "at the end, print the time per op (forward and backward), per step and as % of the step"},
    [F_HELP]           = {"help", 'h', 0, "", "print this help"},
};

// ----------------------------------------------------------------------------
// small things: signals, files

static volatile sig_atomic_t stop_signal = 0;
static void on_signal(int sig) { stop_signal = sig; }

// mkdir -p: the directory and any missing parents
static void make_dir(const char* path) {
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", path);
    for (char* p = dir + 1; ; p++) {
        if (*p != '/' && *p != '\0') continue;
        char c = *p;
        *p = '\0';
        if (mkdir(dir, 0755) != 0 && errno != EEXIST) die("cannot create output directory %s: %s", dir, strerror(errno));
        *p = c;
        if (c == '\0') break;
    }
}

static int file_exists(const char* path) { struct stat st; return stat(path, &st) == 0; }

// Exit statuses (README, "Exit status"): 0 done, 1 bad input or a non-finite loss, 3 an output file
// (checkpoint, log) could not be written, 128+N stopped by signal N after saving.
#define EXIT_OUTPUT_FAILED 3
static void die_output(const char* fmt, ...) {
    va_list ap; va_start(ap, fmt);
    fprintf(stderr, "error: "); vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nstopped: exit status %d (nothing of the newest checkpoint on disk was lost)\n", EXIT_OUTPUT_FAILED);
    va_end(ap);
    exit(EXIT_OUTPUT_FAILED);
}

// Removes NAME.tmpPID files in dir whose writer (process PID) is gone: checkpoint writes that a
// kill interrupted. A live writer's temp file is left alone.
static void remove_stale_temp_files(const char* dir) {
    DIR* d = opendir(dir);
    if (d == NULL) return;
    struct dirent* e;
    while ((e = readdir(d)) != NULL) {
        const char* tmp = strstr(e->d_name, ".tmp");
        if (tmp == NULL) continue;
        while (strstr(tmp + 1, ".tmp") != NULL) tmp = strstr(tmp + 1, ".tmp");
        char* end;
        long pid = strtol(tmp + 4, &end, 10);
        if (end == tmp + 4 || *end != '\0' || pid <= 0 || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;  // alive (or not ours to judge)
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        if (remove(path) == 0) printf("removed %s: a temp file of a writer that is gone (pid %ld)\n", path, pid);
    }
    closedir(d);
}

// The step of a checkpoint file name model_%08d.bin, or -1 for any other name.
static int checkpoint_step_of(const char* name) {
    int step, len = 0;
    if (strlen(name) != 18 || sscanf(name, "model_%8d.bin%n", &step, &len) != 1 || len != 18) return -1;
    return step;
}

// --keep N: deletes model_%08d.bin files of steps before `step` beyond the newest N (counting the
// one of `step`, already on disk). Checkpoints of later steps (an earlier run's) are left alone.
static void prune_checkpoints(const char* dir, int step, int keep) {
    if (keep <= 0) return;
    DIR* d = opendir(dir);
    if (d == NULL) return;
    int* steps = NULL;
    int n = 0, cap = 0;
    struct dirent* e;
    while ((e = readdir(d)) != NULL) {
        int s = checkpoint_step_of(e->d_name);
        if (s < 0 || s > step) continue;
        if (n == cap) { cap = cap ? 2 * cap : 64; steps = (int*)realloc(steps, sizeof(int) * (size_t)cap); if (!steps) die("out of memory"); }
        steps[n++] = s;
    }
    closedir(d);
    for (int i = 0; i < n; i++) {  // delete each one with at least `keep` newer ones kept
        int newer = 0;
        for (int j = 0; j < n; j++) newer += steps[j] > steps[i];
        if (newer < keep) continue;
        char path[4096];
        snprintf(path, sizeof(path), "%s/model_%08d.bin", dir, steps[i]);
        if (remove(path) != 0) fprintf(stderr, "warning: --keep: cannot delete %s: %s\n", path, strerror(errno));
    }
    free(steps);
}

// A resume from step `step` into dir: checkpoints of later steps there belong to the run it
// branches from (their steps are being cut from the logs), so they are renamed
// model_%08d.bin.superseded (never deleted), and the newest model_*.bin is again this run's: a
// later "resume from the newest checkpoint" must not continue the abandoned branch.
static void supersede_later_checkpoints(const char* dir, int step) {
    DIR* d = opendir(dir);
    if (d == NULL) return;
    struct dirent* e;
    int renamed = 0;
    while ((e = readdir(d)) != NULL) {
        int s = checkpoint_step_of(e->d_name);
        if (s <= step) continue;
        char from[4096], to[4200];
        snprintf(from, sizeof(from), "%s/%s", dir, e->d_name);
        snprintf(to, sizeof(to), "%s.superseded", from);
        for (int i = 1; access(to, F_OK) == 0 && i < 1000; i++) snprintf(to, sizeof(to), "%s.superseded.%d", from, i);
        if (rename(from, to) == 0) renamed++;
        else fprintf(stderr, "warning: cannot rename %s (a later step than this resume's): %s\n", from, strerror(errno));
    }
    closedir(d);
    if (renamed)
        printf("resume at step %d: %d checkpoint%s of later steps in %s renamed *.superseded (the run this one branches "
               "from; the logs are cut back to step %d too)\n", step, renamed, renamed == 1 ? "" : "s", dir, step);
}

// Cuts a log back to before `step` (a resume): keeps the longest prefix of whole lines (ending in
// a newline) none of which belongs to step >= `step`. A line's step is the number after "s:" in
// main.log, the first column in metrics.tsv; lines without one (the tsv header) are kept.
static void cut_log_to_step(const char* path, int step) {
    FILE* f = fopen(path, "r");
    if (f == NULL) return;
    char* line = NULL;
    size_t cap = 0;
    long keep = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        if (line[n - 1] != '\n') break;  // a line cut by a kill
        const char* num = strncmp(line, "s:", 2) == 0 ? line + 2 : line;
        char* end;
        long s = strtol(num, &end, 10);
        if (end != num && s >= step) break;
        keep += (long)n;
    }
    free(line);
    fclose(f);
    if (truncate(path, keep) != 0) die_output("cannot cut %s back to step %d: %s", path, step, strerror(errno));
}

// ----------------------------------------------------------------------------
// validation and sampling

// Mean validation loss over the first `batches` batches. The first batch is the run's fixed probe:
// on it, every expert runs on every token to measure expert-output similarity (docs/metrics.md), one
// value per layer into probe_sim (L).
// Under MPI rank r takes batches r, r+R, ... (so the probe is rank 0's) and the losses are summed
// in batch order, as one process would.
static float validate(Dist* dist, MoEModel* model, DataLoader* val, int batches, float* probe_sim, int step) {
    RoutingMode mode = routing_eval(step);  // GatePro as at this step; never competes
    dataloader_reset(val);
    int per_rank = (batches + dist->size - 1) / dist->size;
    double* local = (double*)callocCheck((size_t)per_rank, sizeof(double));
    double* losses = (double*)callocCheck((size_t)per_rank * dist->size, sizeof(double));
    for (int i = 0; i < batches; i++) {
        dataloader_next_batch(val);
        if (i % dist->size != dist->rank) continue;
        moe_forward(model, val->inputs, val->targets, val->B, val->T, &mode);
        local[i / dist->size] = model->mean_loss;
        if (i == 0 && probe_sim != NULL)
            for (int l = 0; l < model->config.num_layers; l++) probe_sim[l] = expert_output_similarity(model, l);
    }
    dist_gather_micro(dist, local, per_rank, 1, losses);
    double total = 0.0;
    for (int i = 0; i < batches; i++) total += losses[i];
    freeCheck(local); freeCheck(losses);
    return (float)(total / batches);
}

// One line per layer of the metrics (docs/metrics.md) into metrics.tsv (header: METRICS_TSV_HEADER, README).
#define METRICS_TSV_HEADER "step\tlayer\ttokens\tzero_experts\tload_cv\tload_max_mean\tload_entropy\t" \
    "router_sim_abs\trouter_sim_angle\trouter_spectral_entropy\tsibling_coact\tsibling_coact_random\t" \
    "expert_out_sim\tdomain_mi\texpert_counts\tdomain_counts\tcompeted\tcompete_router_loss\tcompete_div_loss\t" \
    "compete_bal_loss\tcompete_agreement\tdomain_mi_chance\n"
// compete_step (L, 4): each layer's L_D, L_div, L_bal, agreement, averaged over the step's
// micro-batches; a layer competed iff the schedule says so (the decision is per step).
static void write_metrics(FILE* f, int step, const MoEMetrics* mm, const MoEModel* model, const float* probe_sim,
                          const unsigned char* competed, const double* compete_step) {
    for (int l = 0; l < mm->L; l++) {
        LayerMetrics lm;
        moe_metrics_layer(mm, model, l, &lm);
        fprintf(f, "%d\t%d\t%.0f\t%d\t%.6f\t%.6f\t%.6f\t%.6f\t%.6f\t%.6f\t%.6f\t%.6f\t", step, l, mm->tokens,
                lm.zero_experts, lm.load_cv, lm.load_max_mean, lm.load_entropy, lm.sim_abs_mean, lm.sim_angle_mean,
                lm.spectral_entropy, lm.sibling_coact, lm.sibling_coact_random);
        if (probe_sim != NULL) fprintf(f, "%.6f\t", probe_sim[l]); else fprintf(f, "nan\t");
        if (lm.domain_mi >= 0) fprintf(f, "%.6f\t", lm.domain_mi); else fprintf(f, "nan\t");
        for (int e = 0; e < mm->E; e++) fprintf(f, "%s%.0f", e ? "," : "", mm->counts[(size_t)l * mm->E + e]);
        fprintf(f, "\t");
        if (mm->num_domains == 0) fprintf(f, "-");
        for (int i = 0; i < mm->E * mm->num_domains; i++)
            fprintf(f, "%s%.0f", i ? "," : "", mm->domain_joint[(size_t)l * mm->E * mm->num_domains + i]);
        const double* cs = compete_step + (size_t)l * 4;
        if (competed != NULL && competed[l]) fprintf(f, "\t1\t%.6f\t%.6f\t%.6f\t%.6f", cs[0], cs[1], cs[2], cs[3]);
        else fprintf(f, "\t0\tnan\tnan\tnan\tnan");
        if (lm.domain_mi_chance >= 0) fprintf(f, "\t%.6f\n", lm.domain_mi_chance); else fprintf(f, "\tnan\n");
    }
}

// After the final validation (step = the last step, no update follows): one row per layer with
// the router diversity of the final weights and the probe's expert-output similarity; the
// per-token columns are empty (tokens 0, nan, "-").
static void write_final_probe_metrics(FILE* f, int step, const MoEModel* model, const float* probe_sim) {
    int E = model->config.n_expert;
    for (int l = 0; l < model->config.num_layers; l++) {
        float sa = 0.0f, ang = 0.0f, spec = 0.0f;
        if (E > 1) router_diversity(model->acts.router_sim + (size_t)l * E * E, E, &sa, &ang, &spec);
        fprintf(f, "%d\t%d\t0\tnan\tnan\tnan\tnan\t%.6f\t%.6f\t%.6f\tnan\tnan\t%.6f\tnan\t-\t-\t0\tnan\tnan\tnan\tnan\tnan\n",
                step, l, sa, ang, spec, probe_sim[l]);
    }
}

static void print_layer_summary(const MoEMetrics* mm, const MoEModel* model, const float* probe_sim) {
    for (int l = 0; l < mm->L; l++) {
        LayerMetrics lm;
        moe_metrics_layer(mm, model, l, &lm);
        printf("  layer %d: zero-token %d, load cv %.3f, max/mean %.2f, entropy %.3f | router |S| %.3f angle %.3f "
               "spectral %.3f | sibling co-act %.3f (random %.3f) | expert-out cos %.3f", l, lm.zero_experts, lm.load_cv,
               lm.load_max_mean, lm.load_entropy, lm.sim_abs_mean, lm.sim_angle_mean, lm.spectral_entropy,
               lm.sibling_coact, lm.sibling_coact_random, probe_sim ? probe_sim[l] : NAN);
        if (lm.domain_mi >= 0) printf(" | MI(e;d)/H(d) %.3f", lm.domain_mi);
        if (lm.domain_mi_chance >= 0) printf(" (chance %.3f)", lm.domain_mi_chance);
        printf("\n");
    }
}

// Samples gen_len tokens after an end-of-text token, at temperature 1, with its own model copy of
// activations (shares the parameters) so the training buffers are untouched.
static void sample_and_print(const MoEModel* model, const Tokenizer* tok, int eot, int gen_len, uint64_t* rng, int step) {
    RoutingMode mode = routing_eval(step);
    MoEModel infer = *model;  // shares the parameters; its own activations; never competes
    infer.acts_memory = NULL; infer.idx_memory = NULL; infer.scratch_memory = NULL;
    infer.m_memory = NULL; infer.v_memory = NULL;
    memset(&infer.compete, 0, sizeof(infer.compete));
    int T = model->config.max_seq_len < gen_len + 1 ? model->config.max_seq_len : gen_len + 1;
    int V = model->config.vocab_size, Vp = model->config.padded_vocab_size;
    int* ctx = (int*)mallocCheck(sizeof(int) * (size_t)(gen_len + 1));
    ctx[0] = eot;
    float* probs = (float*)mallocCheck(sizeof(float) * (size_t)V);
    printf("--- sample ---\n");
    for (int i = 1; i <= gen_len; i++) {
        int start = i - T > 0 ? i - T : 0;  // slide the window once the context is longer than T
        int len = i - start;
        int window[4096];
        for (int t = 0; t < T; t++) window[t] = t < len ? ctx[start + t] : eot;
        moe_forward(&infer, window, NULL, 1, T, &mode);
        const float* logits = infer.acts.logits + (size_t)(len - 1) * Vp;
        softmax_lse(probs, logits, V);
        float r = random_f32(rng), cdf = 0.0f;
        int next = V - 1;
        for (int v = 0; v < V; v++) { cdf += probs[v]; if (r < cdf) { next = v; break; } }
        ctx[i] = next;
        if (tok != NULL) {
            size_t nbytes;
            const unsigned char* bytes = tokenizer_token(tok, (uint32_t)next, &nbytes);
            if (bytes != NULL) fwrite(bytes, 1, nbytes, stdout);
        } else {
            printf("%d ", next);
        }
    }
    printf("\n--------------\n");
    fflush(stdout);
    freeCheck(infer.acts_memory); freeCheck(infer.idx_memory); freeCheck(infer.scratch_memory);
    free(ctx); free(probs);
}

// ----------------------------------------------------------------------------
// resuming: which settings a checkpoint keeps (docs/formats.md, "Resume rules")
//
// With -e, every flag below that the checkpoint stores takes the checkpoint's value unless it is
// given on the command line. A given value that differs is either applied, with a printed line
// saying what changed, or refused: the seed, the batch shape and the corpus define the run's data,
// so changing them cannot continue the same run (--weights-only starts a new one). Router flags
// apply to any -e; the rest only when the checkpoint holds optimizer state (a resume).

typedef enum { VALUE_INT, VALUE_FLOAT, VALUE_CHOICE } ValueKind;
typedef enum { CHANGE_APPLIED, CHANGE_REFUSED } OnChange;
typedef struct {
    int flag;                    // F_*
    int field;                   // checkpoint header index that stores it
    ValueKind kind;
    const char* const* choices;  // VALUE_CHOICE: the names, the header holds the index
    int num_choices;
    OnChange on_change;
    int resume_only;             // 1: only when resuming with optimizer state
    int present_if;              // header field that is non-zero iff this one was written (-1: always)
} ResumeRule;

static const ResumeRule RESUME_RULES[] = {
    {F_SEED,                 HDR_SEED,                 VALUE_INT,   NULL, 0, CHANGE_REFUSED, 1, -1},
    {F_STEPS,                HDR_TOTAL_STEPS,          VALUE_INT,   NULL, 0, CHANGE_APPLIED, 1, HDR_TOTAL_STEPS},
    {F_BATCH,                HDR_RUN_BATCH,            VALUE_INT,   NULL, 0, CHANGE_REFUSED, 1, HDR_RUN_PRESENT},
    {F_SEQ_LEN,              HDR_RUN_SEQ_LEN,          VALUE_INT,   NULL, 0, CHANGE_REFUSED, 1, HDR_RUN_PRESENT},
    {F_SYNTH_TOKENS,         HDR_RUN_SYNTH_TOKENS,     VALUE_INT,   NULL, 0, CHANGE_REFUSED, 1, HDR_RUN_PRESENT},
    {F_TOTAL_BATCH,          HDR_RUN_TOTAL_BATCH,      VALUE_INT,   NULL, 0, CHANGE_APPLIED, 1, HDR_RUN_PRESENT},
    {F_LR,                   HDR_RUN_LR,               VALUE_FLOAT, NULL, 0, CHANGE_APPLIED, 1, HDR_RUN_PRESENT},
    {F_WARMUP,               HDR_RUN_WARMUP,           VALUE_INT,   NULL, 0, CHANGE_APPLIED, 1, HDR_RUN_PRESENT},
    {F_FINAL_LR,             HDR_RUN_FINAL_LR,         VALUE_FLOAT, NULL, 0, CHANGE_APPLIED, 1, HDR_RUN_PRESENT},
    {F_WEIGHT_DECAY,         HDR_RUN_WEIGHT_DECAY,     VALUE_FLOAT, NULL, 0, CHANGE_APPLIED, 1, HDR_RUN_PRESENT},
    {F_GRAD_CLIP,            HDR_RUN_GRAD_CLIP,        VALUE_FLOAT, NULL, 0, CHANGE_APPLIED, 1, HDR_RUN_PRESENT},
    {F_ROUTER,               HDR_ROUTER,               VALUE_CHOICE, ROUTER_NAMES, NUM_ROUTERS, CHANGE_APPLIED, 0, -1},
    {F_GATE_NORM,            HDR_GATE_NORM,            VALUE_CHOICE, GATE_NORM_NAMES, 2, CHANGE_APPLIED, 0, -1},
    {F_AUX_LOSS,             HDR_AUX_COEF,             VALUE_FLOAT, NULL, 0, CHANGE_APPLIED, 0, -1},
    {F_Z_LOSS,               HDR_Z_COEF,               VALUE_FLOAT, NULL, 0, CHANGE_APPLIED, 0, -1},
    {F_GATEPRO_LAMBDA,       HDR_GATEPRO_LAMBDA,       VALUE_FLOAT, NULL, 0, CHANGE_APPLIED, 0, -1},
    {F_GATEPRO_START,        HDR_GATEPRO_START,        VALUE_INT,   NULL, 0, CHANGE_APPLIED, 0, -1},
    {F_GATEPRO_STOP,         HDR_GATEPRO_STOP,         VALUE_INT,   NULL, 0, CHANGE_APPLIED, 0, -1},
    {F_COMPETE_RATE,         HDR_COMPETE_RATE,         VALUE_FLOAT, NULL, 0, CHANGE_APPLIED, 0, HDR_COMPETE_MAX_LAYERS},
    {F_COMPETE_WARMUP,       HDR_COMPETE_WARMUP,       VALUE_FLOAT, NULL, 0, CHANGE_APPLIED, 0, HDR_COMPETE_MAX_LAYERS},
    {F_COMPETE_MAX_LAYERS,   HDR_COMPETE_MAX_LAYERS,   VALUE_INT,   NULL, 0, CHANGE_APPLIED, 0, HDR_COMPETE_MAX_LAYERS},
    {F_COMPETE_WEIGHTS,      HDR_COMPETE_WEIGHTS,      VALUE_CHOICE, COMPETE_WEIGHTS_NAMES, 2, CHANGE_APPLIED, 0, HDR_COMPETE_MAX_LAYERS},
    {F_COMPETE_ALPHA,        HDR_COMPETE_ALPHA,        VALUE_FLOAT, NULL, 0, CHANGE_APPLIED, 0, HDR_COMPETE_MAX_LAYERS},
    {F_COMPETE_ROUTER_COEF,  HDR_COMPETE_ROUTER_COEF,  VALUE_FLOAT, NULL, 0, CHANGE_APPLIED, 0, HDR_COMPETE_MAX_LAYERS},
    {F_COMPETE_DIV_COEF,     HDR_COMPETE_DIV_COEF,     VALUE_FLOAT, NULL, 0, CHANGE_APPLIED, 0, HDR_COMPETE_MAX_LAYERS},
    {F_COMPETE_BAL_COEF,     HDR_COMPETE_BAL_COEF,     VALUE_FLOAT, NULL, 0, CHANGE_APPLIED, 0, HDR_COMPETE_MAX_LAYERS},
    {F_AUXFREE_RATE,         HDR_AUXFREE_RATE,         VALUE_FLOAT, NULL, 0, CHANGE_APPLIED, 0, -1},
};
#define NUM_RESUME_RULES (int)(sizeof(RESUME_RULES) / sizeof(RESUME_RULES[0]))

// a header value as the flag's text ("%.9g" gives a float back bit for bit); 0, or -1 if out of range
static int header_value_text(const ResumeRule* r, int v, char* out, size_t n) {
    if (r->kind == VALUE_INT) { snprintf(out, n, "%d", v); return 0; }
    if (r->kind == VALUE_FLOAT) {
        float f = bits_float((uint32_t)v);
        if (!isfinite(f)) return -1;
        snprintf(out, n, "%.9g", f);
        return 0;
    }
    if (v < 0 || v >= r->num_choices) return -1;
    snprintf(out, n, "%s", r->choices[v]);
    return 0;
}

// a flag's text as the header stores it
static int flag_header_value(const ResumeRule* r, const char* text) {
    if (r->kind == VALUE_INT) return (int)strtol(text, NULL, 10);
    if (r->kind == VALUE_FLOAT) return (int)float_bits(strtof(text, NULL));
    for (int i = 0; i < r->num_choices; i++) if (strcmp(text, r->choices[i]) == 0) return i;
    return -1;
}

// --help (and so the README's flag table) says after each stored flag what a resume does with it.
static void add_resume_notes(FlagSpec* spec) {
    static char help[NUM_FLAGS][320];
    for (int i = 0; i < NUM_RESUME_RULES; i++) {
        const ResumeRule* r = &RESUME_RULES[i];
        snprintf(help[r->flag], sizeof(help[r->flag]), "%s (-e: kept, %s)", spec[r->flag].help,
                 r->on_change == CHANGE_REFUSED ? "change refused" : "change applied");
        spec[r->flag].help = help[r->flag];
    }
}

// Gives every stored flag that the command line leaves out the checkpoint's value, and applies or
// refuses the ones given with a different value.
static void flags_from_checkpoint(Flags* flags, const char* path, const CheckpointInfo* info, int resuming) {
    static char text[NUM_FLAGS][64];
    for (int i = 0; i < NUM_RESUME_RULES; i++) {
        const ResumeRule* r = &RESUME_RULES[i];
        if ((r->resume_only && !resuming) || (r->present_if >= 0 && info->header[r->present_if] == 0)) continue;
        const char* name = FLAGS[r->flag].name;
        if (header_value_text(r, info->header[r->field], text[r->flag], sizeof(text[r->flag])) != 0)
            die("checkpoint %s: its --%s (header field %d = %d) is not a valid value", path, name, r->field,
                info->header[r->field]);
        if (!flags->given[r->flag]) { flags->value[r->flag] = text[r->flag]; continue; }
        if (flag_header_value(r, flags->value[r->flag]) == info->header[r->field]) continue;
        if (r->flag == F_TOTAL_BATCH && flag_header_value(r, flags->value[r->flag]) == 0) continue;   // -d 0: resolved later
        if (r->on_change == CHANGE_REFUSED)
            die("--%s %s: the checkpoint %s was trained with %s, and a resumed run keeps it (drop the flag, or start "
                "a new run from the weights with --weights-only)", name, flags->value[r->flag], path, text[r->flag]);
        if (resuming)
            printf("resume: --%s %s replaces the checkpoint's %s from step %d on\n", name, flags->value[r->flag],
                   text[r->flag], info->step);
        else
            printf("--weights-only: --%s %s replaces the checkpoint's %s\n", name, flags->value[r->flag], text[r->flag]);
    }
}

// The header fields [64..95] of the run's settings, from the same table.
static void run_header_fields(TrainState* ts, const Flags* flags, int synthetic) {
    memset(ts->run_header, 0, sizeof(ts->run_header));
    int32_t* h = ts->run_header - HDR_RUN_FIRST;  // indexed by header field
    h[HDR_RUN_PRESENT] = 1;
    for (int i = 0; i < NUM_RESUME_RULES; i++) {
        const ResumeRule* r = &RESUME_RULES[i];
        if (r->field >= HDR_RUN_FIRST && r->field < HDR_RUN_END) h[r->field] = flag_header_value(r, flags->value[r->flag]);
    }
    h[HDR_RUN_DATA_SOURCE] = synthetic ? 1 : 2;
    const char* pattern = flags->value[F_TRAIN];
    h[HDR_RUN_TRAIN_CRC] = synthetic ? 0 : (int)(uint32_t)crc32(0L, (const Bytef*)pattern, (uInt)strlen(pattern));
}

// ----------------------------------------------------------------------------
// one run: its settings, data, model, outputs

typedef struct {
    int B, T;
    float lr, final_frac, weight_decay, grad_clip, router_init_std;
    int warmup;
    long total_batch;       // tokens per optimizer step
    int grad_accum;         // micro-batches per optimizer step
    int steps;              // -1 until the data says how many (one epoch)
    int val_every, val_batches, sample_every, gen_len, ckpt_every, keep;
    uint64_t seed;
    RouterConfig router;
    const char* outdir;
    const char* init_path;  // -e, or ""
    int weights_only;
    const char* upcycle_path;  // --upcycle, or ""
    float upcycle_noise;
    int zero, expert_parallel, comm_stats;  // --zero, --expert-parallel, --comm-stats (MPI)
} RunSettings;

typedef struct {
    int synthetic;          // 1: the built-in corpus; 0: shards
    SyntheticCorpus corpus;
    Tokenizer tokenizer;
    int have_tokenizer;
    char tokenizer_path[4096];  // absolute, for config.txt
    int V;
    DataLoader train, val;
    int num_domains;        // the synthetic corpus's, or the shards' label files' (0: none)
} RunData;

typedef struct {
    FILE* log;              // main.log
    FILE* metrics_tsv;      // metrics.tsv
    char log_path[4096], metrics_path[4096];
    MoEMetrics metrics;
    float* probe_sim;       // (L) expert-output similarity on the validation probe
    int have_probe;
    uint8_t* null_domains;  // (B*T) a micro-batch's domains, permuted: MI's chance level
    double metrics_seconds, step_seconds, t_start;
    // per micro-batch: loss, aux, z, compete, then per layer L_D, L_div, L_bal, agreement
    int micro_width;        // 4 + 4 L
    double* micro_local;    // (grad_accum / ranks, micro_width) this rank's micro-batches'
    double* micro_all;      // (grad_accum, micro_width) every micro-batch's, in order
    double* compete_step;   // (L, 4) the step's CompeteSMoE losses: the micro-batches' mean, summed in order
    double val_seconds;     // spent validating, over val_passes passes (for the ETA)
    int val_passes;
    int profiling;          // --profile: time per op of the training steps (not validation or samples)
    MoEProfile profile;
    int profiled_steps;
    double profiled_seconds;  // the profiled steps' wall time
    int profile_skipped_first; // 1 when the run's first (warm-up) step is not in the profile
} RunOutputs;

typedef struct {
    Dist dist;              // the MPI ranks (mpi_moe.h); one without MPI
    Flags flags;
    RunSettings set;
    RunData data;
    MoEModel model;
    int resuming;           // -e with optimizer state (and not --weights-only)
    int start_step;
    TrainState resume_state;
    unsigned char* schedule; // CompeteSMoE: (steps, L), or NULL
    uint64_t sample_rng;
    RunOutputs out;
} Run;

// --- step 1: flags, and the checkpoint's settings when -e resumes

static void load_init_checkpoint(Run* run) {
    const char* path = run->flags.value[F_INIT];
    int weights_only = run->flags.given[F_WEIGHTS_ONLY];
    if (weights_only && !path[0]) die("--weights-only needs -e CHECKPOINT");
    memset(&run->model, 0, sizeof(run->model));
    if (!path[0]) return;
    char err[1024];
    CheckpointInfo info = {0};
    if (moe_load_checkpoint(&run->model, path, &info, &run->resume_state, err, sizeof(err)) != 0) die("%s", err);
    run->resuming = info.has_optimizer && !weights_only;
    if (weights_only) { freeCheck(run->model.m_memory); freeCheck(run->model.v_memory); run->model.m_memory = run->model.v_memory = NULL; }
    if (run->resuming) run->start_step = info.step;
    printf("loaded %s: step %d%s\n", path, info.step, run->resuming ? ", resuming with optimizer state" :
           " (parameters only: a fresh run)");
    for (int i = F_LAYERS; i <= F_MAX_SEQ_LEN; i++)
        if (run->flags.given[i]) fprintf(stderr, "warning: --%s ignored: the architecture comes from the checkpoint\n", FLAGS[i].name);
    if (run->flags.given[F_XMOE_DIM])
        fprintf(stderr, "warning: --xmoe-dim ignored: the checkpoint's X-MoE dim is %d\n", run->model.config.xmoe_dim);
    flags_from_checkpoint(&run->flags, path, &info, run->resuming);
    if (run->resuming && info.header[HDR_RUN_PRESENT]) {  // the same data source as the run that wrote it
        int ckpt_synthetic = info.header[HDR_RUN_DATA_SOURCE] == 1, synthetic = run->flags.value[F_TRAIN][0] == '\0';
        if (ckpt_synthetic && !synthetic)
            die("checkpoint %s was trained on the built-in synthetic corpus: resuming it on -i %s would not be the same "
                "run (use --weights-only to start a new run from its weights)", path, run->flags.value[F_TRAIN]);
        if (!ckpt_synthetic && synthetic)
            die("checkpoint %s was trained on shards: give the same -i/-j to resume it (or --weights-only to start a "
                "new run on the synthetic corpus)", path);
    }
}

static RouterConfig router_settings(const Flags* flags) {
    RouterConfig rc = ROUTER_DEFAULTS;
    rc.router = flag_choice(flags, F_ROUTER, ROUTER_NAMES, NUM_ROUTERS);
    rc.gate_norm = flag_choice(flags, F_GATE_NORM, GATE_NORM_NAMES, 2);
    rc.aux_loss_coef = flag_float(flags, F_AUX_LOSS, 0.0f, 1e6f);
    // auxfree balances with its bias: --aux-loss defaults to 0 for it, unless given (or kept from an
    // auxfree checkpoint)
    if (rc.router == ROUTER_AUXFREE && !flags->given[F_AUX_LOSS] &&
        (flags->value[F_AUX_LOSS] == flags->spec[F_AUX_LOSS].def || flags->given[F_ROUTER]))
        rc.aux_loss_coef = 0.0f;
    rc.z_loss_coef = flag_float(flags, F_Z_LOSS, 0.0f, 1e6f);
    rc.gatepro_lambda = flag_float(flags, F_GATEPRO_LAMBDA, 0.0f, 3e38f);
    rc.gatepro_start = (int)flag_int(flags, F_GATEPRO_START, 0, 1L << 30);
    rc.gatepro_stop = (int)flag_int(flags, F_GATEPRO_STOP, -1, 1L << 30);
    if (rc.gatepro_stop >= 0 && rc.gatepro_stop < rc.gatepro_start)
        die("--gatepro-stop %d is before --gatepro-start %d (-1 = never stop)", rc.gatepro_stop, rc.gatepro_start);
    if ((flags->given[F_GATEPRO_LAMBDA] || flags->given[F_GATEPRO_START] || flags->given[F_GATEPRO_STOP]) &&
        rc.router != ROUTER_GATEPRO)
        die("--gatepro-lambda/--gatepro-start/--gatepro-stop need --router gatepro");
    rc.compete_rate = flag_float(flags, F_COMPETE_RATE, 0.0f, 1.0f);
    rc.compete_warmup = flag_float(flags, F_COMPETE_WARMUP, 0.0f, 1.0f);
    rc.compete_max_layers = (int)flag_int(flags, F_COMPETE_MAX_LAYERS, 1, 1 << 16);
    rc.compete_weights = flag_choice(flags, F_COMPETE_WEIGHTS, COMPETE_WEIGHTS_NAMES, 2);
    rc.compete_alpha = flag_float(flags, F_COMPETE_ALPHA, 0.0f, 1e6f);
    rc.compete_router_coef = flag_float(flags, F_COMPETE_ROUTER_COEF, 0.0f, 1e6f);
    rc.compete_div_coef = flag_float(flags, F_COMPETE_DIV_COEF, 0.0f, 1e6f);
    rc.compete_bal_coef = flag_float(flags, F_COMPETE_BAL_COEF, 0.0f, 1e6f);
    for (int i = F_COMPETE_RATE; i <= F_COMPETE_BAL_COEF; i++)
        if (flags->given[i] && rc.router != ROUTER_COMPETE) die("--%s needs --router compete", FLAGS[i].name);
    rc.auxfree_rate = flag_float(flags, F_AUXFREE_RATE, 0.0f, 1e6f);
    if (flags->given[F_AUXFREE_RATE] && rc.router != ROUTER_AUXFREE) die("--auxfree-rate needs --router auxfree");
    if (flags->given[F_XMOE_DIM] && rc.router != ROUTER_XMOE) die("--xmoe-dim needs --router xmoe");
    return rc;
}

static void parse_settings(RunSettings* s, Flags* flags, int ranks) {
    s->B = (int)flag_int(flags, F_BATCH, 1, 1 << 20);
    s->T = (int)flag_int(flags, F_SEQ_LEN, 1, 1 << 20);
    s->lr = flag_float(flags, F_LR, 0.0f, 10.0f);
    s->warmup = (int)flag_int(flags, F_WARMUP, 0, 1L << 30);
    s->final_frac = flag_float(flags, F_FINAL_LR, 0.0f, 1.0f);
    s->weight_decay = flag_float(flags, F_WEIGHT_DECAY, 0.0f, 10.0f);
    s->total_batch = flag_int(flags, F_TOTAL_BATCH, 0, INT32_MAX);  // the checkpoint stores it as int32
    s->steps = (int)flag_int(flags, F_STEPS, -1, 1L << 30);
    if (s->steps == 0) die("-x 0: a run needs at least one step (-x -1 = one epoch of the train data)");
    s->val_every = (int)flag_int(flags, F_VAL_EVERY, 0, 1L << 30);
    s->val_batches = (int)flag_int(flags, F_VAL_BATCHES, 1, 1L << 30);
    s->sample_every = (int)flag_int(flags, F_SAMPLE_EVERY, 0, 1L << 30);
    s->gen_len = (int)flag_int(flags, F_GEN_LEN, 1, 4095);
    s->ckpt_every = (int)flag_int(flags, F_CKPT_EVERY, 0, 1L << 30);
    s->keep = (int)flag_int(flags, F_KEEP, 0, 1L << 30);
    s->grad_clip = flag_float(flags, F_GRAD_CLIP, 0.0f, 1e30f);
    s->seed = (uint64_t)flag_int(flags, F_SEED, 0, 0xFFFFFFFFL);
    s->router_init_std = flag_float(flags, F_ROUTER_INIT_STD, 0.0f, 100.0f);
    s->outdir = flags->value[F_OUTPUT];
    s->init_path = flags->value[F_INIT];
    s->weights_only = flags->given[F_WEIGHTS_ONLY];
    s->zero = flags->given[F_ZERO];
    s->comm_stats = flags->given[F_COMM_STATS];
    s->expert_parallel = flags->given[F_EXPERT_PARALLEL];
    s->upcycle_path = flags->value[F_UPCYCLE];
    s->upcycle_noise = flag_float(flags, F_UPCYCLE_NOISE, 0.0f, 100.0f);
    if (s->upcycle_path[0] && s->init_path[0]) die("--upcycle and -e exclude each other (-e continues a model; --upcycle starts one)");
    if (flags->given[F_UPCYCLE_NOISE] && !s->upcycle_path[0]) die("--upcycle-noise needs --upcycle DENSE.bin");
    long BT = (long)s->B * s->T;
    if (s->total_batch == 0) {  // one micro-batch per rank; the number is what config.txt and checkpoints keep
        static char text[32];
        s->total_batch = BT * ranks;
        if (s->total_batch > INT32_MAX) die("-b %d -t %d on %d ranks: %ld tokens per step exceed 2^31-1", s->B, s->T,
                                            ranks, s->total_batch);
        snprintf(text, sizeof(text), "%ld", s->total_batch);
        flags->value[F_TOTAL_BATCH] = text;
    }
    if (s->total_batch % BT != 0)
        die("-d total batch %ld tokens is not a multiple of B*T = %d*%d = %ld", s->total_batch, s->B, s->T, BT);
    s->grad_accum = (int)(s->total_batch / BT);  // micro-batches per step, over all ranks
    if (s->grad_accum % ranks != 0)
        die("-d total batch %ld tokens is %d micro-batches of B*T = %ld, not a multiple of the %d MPI ranks "
            "(give -d a multiple of %ld)", s->total_batch, s->grad_accum, BT, ranks, BT * ranks);
    s->router = router_settings(flags);
    if (s->router.router == ROUTER_AUXFREE && s->router.aux_loss_coef == 0.0f)
        flags->value[F_AUX_LOSS] = "0";   // (config.txt records the coefficient the run uses)
}

// --- step 2: data: shards, or the built-in synthetic corpus

static void setup_data(RunData* d, const RunSettings* s, const Flags* flags) {
    memset(d, 0, sizeof(*d));
    d->synthetic = flags->value[F_TRAIN][0] == '\0';
    if (d->synthetic) {
        if (flags->value[F_VAL][0]) die("-j needs -i: the synthetic corpus brings its own validation split");
        if (flags->given[F_VOCAB] || flags->given[F_TOKENIZER])
            die("--%s is for shards (-i): the synthetic corpus has its own V=%d and no tokenizer",
                flags->given[F_VOCAB] ? "vocab-size" : "tokenizer", SYNTH_VOCAB);
        size_t ntrain = (size_t)flag_int(flags, F_SYNTH_TOKENS, 10000, 1L << 31);
        synthetic_corpus_generate(&d->corpus, ntrain, ntrain / 16, s->seed);
        d->V = d->corpus.vocab_size;
        printf("data: built-in synthetic corpus, %d domains, V=%d, %zu train / %zu val tokens\n",
               d->corpus.num_domains, d->V, d->corpus.train_len, d->corpus.val_len);
        printf("      unigram entropy %.4f nats, source entropy rate %.4f nats/token (train stream)\n",
               d->corpus.unigram_entropy, d->corpus.entropy_rate);
    } else {
        const char* tok_path = flags->value[F_TOKENIZER];
        char guess[4096];
        if (!tok_path[0]) {  // tokenizer.bin beside the train shards
            snprintf(guess, sizeof(guess), "%s", flags->value[F_TRAIN]);
            char* slash = strrchr(guess, '/');
            if (slash) strcpy(slash + 1, "tokenizer.bin"); else strcpy(guess, "tokenizer.bin");
            if (file_exists(guess)) tok_path = guess;
        }
        if (tok_path[0]) {
            char err[512];
            if (tokenizer_load(&d->tokenizer, tok_path, err, sizeof(err)) != 0) die("%s", err);
            d->have_tokenizer = 1;
            if (realpath(tok_path, d->tokenizer_path) == NULL) snprintf(d->tokenizer_path, sizeof(d->tokenizer_path), "%s", tok_path);
            printf("tokenizer: %s (V=%d)\n", tok_path, d->tokenizer.vocab_size);
        }
        d->V = (int)flag_int(flags, F_VOCAB, 0, 1L << 30);
        if (d->V == 0) {
            if (!d->have_tokenizer) die("shards without a tokenizer: give --vocab-size V or --tokenizer FILE");
            d->V = d->tokenizer.vocab_size;
        } else if (d->have_tokenizer && d->V != (int)d->tokenizer.vocab_size) {
            die("--vocab-size %d differs from the tokenizer %s's V=%d: drop --vocab-size (V comes from the tokenizer) "
                "or give the tokenizer the shards were made with", d->V, tok_path, d->tokenizer.vocab_size);
        }
        if (!flags->value[F_VAL][0]) die("-i needs -j: give the validation shards too");
    }
}

static void open_data_loaders(RunData* d, const RunSettings* s, const Flags* flags) {
    uint64_t data_seed = derive_seed(s->seed, STREAM_DATA);
    if (d->synthetic) {
        const SyntheticCorpus* c = &d->corpus;
        dataloader_init_memory(&d->train, c->train_tokens, c->train_domains, c->train_len, s->B, s->T, d->V, 1, data_seed);
        dataloader_init_memory(&d->val, c->val_tokens, c->val_domains, c->val_len, s->B, s->T, d->V, 0, 0);
    } else {
        dataloader_init(&d->train, flags->value[F_TRAIN], s->B, s->T, d->V, 1, data_seed);
        dataloader_init(&d->val, flags->value[F_VAL], s->B, s->T, d->V, 0, 0);
        if (d->train.num_domains != d->val.num_domains)
            die("domain labels: the train shards have %d domains, the val shards %d (label files <shard>.domains; "
                "data/prepare_text writes both)", d->train.num_domains, d->val.num_domains);
    }
    d->num_domains = d->synthetic ? d->corpus.num_domains : d->train.num_domains;
}

// --- step 3: the model, from a checkpoint or fresh, and what the data and router need of it

// Bytes a training run of config c at B, T allocates (in double: it cannot overflow): parameters,
// gradients and the two AdamW moments (16 bytes a parameter), then the activations, index and
// backward scratch of moe_alloc_activations (4 bytes an element).
static double training_bytes(const MoEConfig* c, int B, int T, double* param_bytes) {
    double L = c->num_layers, C = c->channels, NH = c->num_heads, E = c->n_expert, K = c->top_k;
    double H = c->expert_hidden, Vp = c->padded_vocab_size, N = (double)B * T, De = c->xmoe_dim;
    double P = (Vp + c->max_seq_len + 2) * C + L * (12 * C * C + 13 * C) + L * E * (2 * C + 2 * H * C + H + 1) +
               L * (De * C + E * De + 1);
    double Hs = sgemm_row_stride(c->expert_hidden);   // the hidden layer's padded rows
    double acts = N * C + L * N * (9 * C + 4 + 3 * E + 1 + De + K + K * (2 * C + 2 * Hs)) + L * (B * NH * (double)T * T) +
                  L * E * E + N * (C + 3 + Vp);
    double index = L * N * K * 3 + L * (2 * E + 1);
    double scratch = N * (6 * C + E + K + 2 * De) + 2 * N * K * C + (double)B * NH * T * T;
    *param_bytes = 16.0 * P;
    return 16.0 * P + 4.0 * (acts + index + scratch);
}

// Refuses a run that would not fit in this machine's memory, before anything big is allocated.
static void check_memory(const MoEConfig* c, int B, int T) {
    double param_bytes, need = training_bytes(c, B, T, &param_bytes);
    char what[256];
    snprintf(what, sizeof(what), "the run's buffers (%.1f GB for the parameters, gradients and AdamW state, %.1f GB of "
             "activations at B=%d T=%d)", param_bytes / 1e9, (need - param_bytes) / 1e9, B, T);
    memory_fits_or_die(need, what);   // (moe.h; it checks each allocation again on every path)
}

static void setup_model(Run* run) {
    RunSettings* s = &run->set;
    const Flags* flags = &run->flags;
    MoEModel* model = &run->model;
    if (s->init_path[0]) {
        if (model->config.vocab_size != run->data.V)
            die("checkpoint %s has V=%d but the data needs V=%d", s->init_path, model->config.vocab_size, run->data.V);
    } else if (s->upcycle_path[0]) {  // upcycle.h: the dense model's shape; E and K from the flags
        int E = (int)flag_int(flags, F_EXPERTS, 1, 256), K = (int)flag_int(flags, F_TOP_K, 1, 256);
        int xmoe_dim = s->router.router == ROUTER_XMOE ? (int)flag_int(flags, F_XMOE_DIM, 1, 256) : 0;
        char err[1024];
        if (moe_build_upcycled(model, s->upcycle_path, E, K, xmoe_dim, s->seed, s->router_init_std, s->upcycle_noise,
                               err, sizeof(err)) != 0)
            die("%s", err);
        printf("upcycled %s: every expert of each layer starts as its dense MLP (noise %g)\n", s->upcycle_path,
               s->upcycle_noise);
        if (model->config.vocab_size != run->data.V)
            die("--upcycle %s has V=%d but the data needs V=%d", s->upcycle_path, model->config.vocab_size, run->data.V);
        for (int i = F_LAYERS; i <= F_MAX_SEQ_LEN; i++)
            if (flags->given[i] && i != F_EXPERTS && i != F_TOP_K)
                fprintf(stderr, "warning: --%s ignored: the architecture comes from the dense model\n", FLAGS[i].name);
    } else {
        MoEConfig cfg;
        cfg.num_layers = (int)flag_int(flags, F_LAYERS, 1, 1 << 16);
        cfg.num_heads = (int)flag_int(flags, F_HEADS, 1, 1 << 16);
        cfg.channels = (int)flag_int(flags, F_CHANNELS, 1, 1 << 20);
        cfg.n_expert = (int)flag_int(flags, F_EXPERTS, 1, 256);
        cfg.top_k = (int)flag_int(flags, F_TOP_K, 1, 256);
        cfg.expert_hidden = (int)flag_int(flags, F_HIDDEN, 0, 1 << 24);
        if (cfg.expert_hidden == 0) cfg.expert_hidden = 4 * cfg.channels;
        cfg.max_seq_len = (int)flag_int(flags, F_MAX_SEQ_LEN, 0, 1 << 20);
        if (cfg.max_seq_len == 0) cfg.max_seq_len = s->T;
        cfg.vocab_size = run->data.V;
        cfg.padded_vocab_size = pad_vocab(run->data.V);
        cfg.xmoe_dim = s->router.router == ROUTER_XMOE ? (int)flag_int(flags, F_XMOE_DIM, 1, 256) : 0;
        char err[256];
        if (config_check(&cfg, err, sizeof(err)) != 0) die("%s", err);
        check_memory(&cfg, s->B, s->T);
        moe_build(model, &cfg);
        moe_init_params(model, s->seed, s->router_init_std);
    }
    model->router = s->router;  // the flags, which hold the checkpoint's settings unless given (above)
    const MoEConfig* cfg = &model->config;
    if (s->T > cfg->max_seq_len) die("-t %d exceeds the model's maxT = %d", s->T, cfg->max_seq_len);
    if (model->router.router != ROUTER_TOPK && cfg->n_expert < 2) die("--router %s needs E >= 2", ROUTER_NAMES[model->router.router]);
    if (model->router.router == ROUTER_XMOE && cfg->xmoe_dim < 1)
        die("--router xmoe: checkpoint %s has no X-MoE parameters (train with --router xmoe from the start)", s->init_path);
    if (cfg->top_k == 1 && model->router.router == ROUTER_GATEPRO) {  // the top-1 expert never loses to its sibling
        if (model->router.gate_norm == GATE_TOPK_SOFTMAX)
            fprintf(stderr, "warning: GatePro with K=1 and --gate-norm topk_softmax changes nothing: the top-1 expert "
                            "never loses to its sibling, so the selection is unchanged and its weight is 1\n");
        else
            fprintf(stderr, "warning: GatePro with K=1 never changes which expert is selected (the top-1 expert never "
                            "loses to its sibling); under --gate-norm softmax_topk it only lowers the losers' share of "
                            "the softmax, so the winner's weight grows\n");
    }
    if (cfg->top_k == 1 && cfg->n_expert > 1 && model->router.gate_norm == GATE_TOPK_SOFTMAX)
        fprintf(stderr, "warning: K=1 with --gate-norm topk_softmax gives every token weight 1, so the router "
                        "gets no gradient from the LM loss; consider --gate-norm softmax_topk\n");
}

// What the run will read: the train data's size and the epochs the steps cover; per validation,
// how much of the val data (eval_moe's default is a full pass).
static void print_data_coverage(const Run* run) {
    const RunSettings* s = &run->set;
    const DataLoader* train = &run->data.train;
    const DataLoader* val = &run->data.val;
    char train_files[64] = "the built-in corpus", val_files[64] = "the built-in corpus";
    if (!run->data.synthetic) {
        snprintf(train_files, sizeof(train_files), "%d shard%s", train->num_shards, train->num_shards == 1 ? "" : "s");
        snprintf(val_files, sizeof(val_files), "%d shard%s", val->num_shards, val->num_shards == 1 ? "" : "s");
    }
    double epoch_tokens = (double)train->num_batches * s->B * s->T;
    printf("%s train %zu tokens (%s), %lld batches of B*T per epoch; %d steps x %ld tokens = %.3g epochs\n",
           run->data.synthetic ? "     " : "data:", train->num_tokens, train_files, (long long)train->num_batches, s->steps, s->total_batch,
           epoch_tokens > 0 ? (double)s->steps * s->total_batch / epoch_tokens : 0.0);
    if (s->val_every > 0)
        printf("      val %zu tokens (%s): each validation reads the first %d of its %lld batches (eval_moe: all)\n",
               val->num_tokens, val_files, s->val_batches, (long long)val->num_batches);
}

// The step count, the CompeteSMoE schedule and, when resuming, the data position and RNG.
static void setup_schedule(Run* run) {
    RunSettings* s = &run->set;
    const MoEConfig* cfg = &run->model.config;
    int64_t val_available = dataloader_num_batches(&run->data.val);
    if (s->val_batches > val_available) s->val_batches = (int)val_available;
    if (s->steps < 0) s->steps = (int)(dataloader_num_batches(&run->data.train) / s->grad_accum);
    if (s->steps < 1) s->steps = 1;
    print_data_coverage(run);
    if (run->model.router.router == ROUTER_COMPETE) {  // drawn once from the run's seed: a resume redraws the same
        const RouterConfig* r = &run->model.router;
        run->schedule = (unsigned char*)mallocCheck((size_t)s->steps * cfg->num_layers);
        long placed = compete_schedule(run->schedule, s->steps, cfg->num_layers, r->compete_rate, r->compete_warmup,
                                       r->compete_max_layers, s->seed);
        int warm = compete_warmup_steps(r->compete_warmup, s->steps);
        long eligible = (long)cfg->num_layers * (s->steps - warm);
        printf("compete: %ld of %ld (layer, step) pairs after warm-up compete: realised rate %.4f (--compete-rate %g, "
               "warm-up %d steps, at most %d layers per step)\n", placed, eligible,
               eligible > 0 ? (double)placed / eligible : 0.0, r->compete_rate, warm, r->compete_max_layers);
    }
    run->sample_rng = derive_seed(s->seed, STREAM_SAMPLE);
    if (run->resuming) {
        char err[512];
        const TrainState* ts = &run->resume_state;
        DataLoaderState st = {ts->data_epoch, ts->data_shard_pos, ts->data_sample_pos};
        if (dataloader_set_state(&run->data.train, st, err, sizeof(err)) != 0) die("resuming from %s: %s", s->init_path, err);
        run->sample_rng = ts->sample_rng;
        if (run->start_step >= s->steps)
            die("checkpoint %s is at step %d, not before the last step %d (raise -x)", s->init_path, run->start_step, s->steps);
    }
}

// --- step 4: the output directory: config.txt, main.log, metrics.tsv

// An -o that holds checkpoints (model_*.bin) is another run's unless this run resumes from one of
// them: refused, or with --overwrite its checkpoints are deleted. Returns how many were deleted.
static int claim_output_dir(const Run* run) {
    const char* outdir = run->set.outdir;
    char out_real[4096], init_dir[4096], init_real[4096];
    if (realpath(outdir, out_real) == NULL) return 0;
    if (run->resuming) {
        snprintf(init_dir, sizeof(init_dir), "%s", run->set.init_path);
        char* slash = strrchr(init_dir, '/');
        if (slash != NULL) *slash = '\0'; else snprintf(init_dir, sizeof(init_dir), ".");
        if (realpath(init_dir, init_real) != NULL && strcmp(init_real, out_real) == 0) return 0;
    }
    DIR* d = opendir(outdir);
    if (d == NULL) return 0;
    char last[512] = "", path[4096];
    int found = 0, deleted = 0;
    struct dirent* e;
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        if (strncmp(e->d_name, "model_", 6) != 0 || n < 10 || strcmp(e->d_name + n - 4, ".bin") != 0) continue;
        found++;
        if (strcmp(e->d_name, last) > 0) snprintf(last, sizeof(last), "%s", e->d_name);  // %08d: the latest sorts last
        if (!run->flags.given[F_OVERWRITE]) continue;
        snprintf(path, sizeof(path), "%s/%s", outdir, e->d_name);
        if (unlink(path) != 0) die("--overwrite: cannot delete %s: %s", path, strerror(errno));
        deleted++;
    }
    closedir(d);
    if (found && !run->flags.given[F_OVERWRITE])
        die("output directory %s already holds %d checkpoint%s of another run (the latest: %s): continue that run with "
            "-e %s/%s (a finished run also needs a larger -x), choose another -o, or give --overwrite to delete them",
            outdir, found, found == 1 ? "" : "s", last, outdir, last);
    return deleted;
}

// What a training step writes besides the model: the metrics and the per-micro-batch losses.
static void alloc_step_outputs(Run* run) {
    const RunSettings* s = &run->set;
    const MoEConfig* cfg = &run->model.config;
    RunOutputs* o = &run->out;
    metrics_init(&o->metrics, cfg->num_layers, cfg->n_expert, cfg->top_k, run->data.num_domains);
    o->probe_sim = (float*)callocCheck(cfg->num_layers, sizeof(float));
    o->null_domains = (uint8_t*)callocCheck((size_t)s->B * s->T, 1);
    o->micro_width = 4 + 4 * cfg->num_layers;
    o->micro_local = (double*)callocCheck((size_t)s->grad_accum / run->dist.size * o->micro_width, sizeof(double));
    o->micro_all = (double*)callocCheck((size_t)s->grad_accum * o->micro_width, sizeof(double));
    o->compete_step = (double*)callocCheck((size_t)cfg->num_layers * 4, sizeof(double));
    o->profiling = run->flags.given[F_PROFILE];
}

// A resume appends to the logs after cutting them back to the checkpoint's step, so after any
// crash and resume they hold every step exactly once (the logs are on disk before each checkpoint).
static void open_outputs(Run* run) {
    const RunSettings* s = &run->set;
    const MoEModel* model = &run->model;
    const MoEConfig* cfg = &model->config;
    RunOutputs* o = &run->out;
    alloc_step_outputs(run);
    if (run->dist.rank != 0) return;  // rank 0 alone writes files
    make_dir(s->outdir);
    int deleted = claim_output_dir(run);
    if (deleted) printf("--overwrite: deleted %d checkpoint%s of an earlier run in %s\n", deleted, deleted == 1 ? "" : "s", s->outdir);
    remove_stale_temp_files(s->outdir);
    char path[4096];
    snprintf(path, sizeof(path), "%s/config.txt", s->outdir);
    FILE* cf = fopen(path, "w");
    if (cf == NULL) die_output("cannot write %s: %s", path, strerror(errno));
    for (int i = 0; i < NUM_FLAGS; i++) if (FLAGS[i].takes_value) fprintf(cf, "%s = %s\n", FLAGS[i].name, run->flags.value[i]);
    fprintf(cf, "# model: maxT=%d V=%d Vp=%d L=%d NH=%d C=%d E=%d K=%d H=%d params=%zu\n", cfg->max_seq_len,
            cfg->vocab_size, cfg->padded_vocab_size, cfg->num_layers, cfg->num_heads, cfg->channels, cfg->n_expert,
            cfg->top_k, cfg->expert_hidden, model->num_parameters);
    fprintf(cf, "# router: %s gate-norm %s aux %g z %g gatepro-lambda %g start %d stop %d\n",
            ROUTER_NAMES[model->router.router], GATE_NORM_NAMES[model->router.gate_norm], model->router.aux_loss_coef,
            model->router.z_loss_coef, model->router.gatepro_lambda, model->router.gatepro_start, model->router.gatepro_stop);
    fprintf(cf, "# resumed_from = %s at step %d\n", s->init_path[0] ? s->init_path : "(none)", run->start_step);
    fprintf(cf, "# mpi: %d ranks%s%s\n", run->dist.size, s->zero ? ", ZeRO-1" : "", s->expert_parallel ? ", expert parallel" : "");
    if (run->data.have_tokenizer)  // eval_moe finds the tokenizer here and checks its crc32
        fprintf(cf, "tokenizer_file = %s\ntokenizer_crc32 = %08x\n", run->data.tokenizer_path, run->data.tokenizer.file_crc32);
    if (run->data.num_domains > 0) {  // the domains of metrics.tsv's domain_counts, in order
        char (*names)[DOMAIN_NAME_MAX] = (char (*)[DOMAIN_NAME_MAX])callocCheck((size_t)run->data.num_domains, DOMAIN_NAME_MAX);
        char err[512];
        if (!run->data.synthetic && domain_names_load(run->data.train.shard_paths[0], run->data.num_domains, names, err,
                                                      sizeof(err)) < 0) die("%s", err);
        if (run->data.synthetic)
            for (int d = 0; d < run->data.num_domains; d++) snprintf(names[d], DOMAIN_NAME_MAX, "synthetic%d", d);
        fprintf(cf, "domains = ");
        for (int d = 0; d < run->data.num_domains; d++) fprintf(cf, "%s%s", d ? "," : "", names[d]);
        fprintf(cf, "\n");
        freeCheck(names);
    }
    if (ferror(cf) | fclose(cf)) die_output("cannot write %s: %s", path, strerror(errno));
    snprintf(o->log_path, sizeof(o->log_path), "%s/main.log", s->outdir);
    snprintf(o->metrics_path, sizeof(o->metrics_path), "%s/metrics.tsv", s->outdir);
    if (run->resuming) {
        supersede_later_checkpoints(s->outdir, run->start_step);
        cut_log_to_step(o->log_path, run->start_step);
        cut_log_to_step(o->metrics_path, run->start_step);
    }
    o->log = fopen(o->log_path, run->resuming ? "a" : "w");
    if (o->log == NULL) die_output("cannot write %s: %s", o->log_path, strerror(errno));
    o->metrics_tsv = fopen(o->metrics_path, run->resuming ? "a" : "w");
    if (o->metrics_tsv == NULL) die_output("cannot write %s: %s", o->metrics_path, strerror(errno));
    if (ftell(o->metrics_tsv) == 0) fputs(METRICS_TSV_HEADER, o->metrics_tsv);
}

// Puts both logs on disk (before a checkpoint, so the logs never lag the newest checkpoint).
static void sync_logs(RunOutputs* o) {
    if (o->log == NULL) return;  // (an MPI rank other than 0)
    if (fflush(o->log) != 0 || ferror(o->log) || fsync(fileno(o->log)) != 0)
        die_output("cannot write %s: %s", o->log_path, strerror(errno));
    if (fflush(o->metrics_tsv) != 0 || ferror(o->metrics_tsv) || fsync(fileno(o->metrics_tsv)) != 0)
        die_output("cannot write %s: %s", o->metrics_path, strerror(errno));
}

static void print_run(const Run* run) {
    const RunSettings* s = &run->set;
    const MoEModel* model = &run->model;
    const MoEConfig* cfg = &model->config;
    size_t active_params = model->num_parameters -
        (size_t)cfg->num_layers * (cfg->n_expert - cfg->top_k) *
            (2 * (size_t)cfg->channels * cfg->expert_hidden + cfg->expert_hidden + cfg->channels);
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    printf("model: L=%d NH=%d C=%d E=%d K=%d H=%d maxT=%d V=%d (Vp=%d): %zu parameters, %zu active per token\n",
           cfg->num_layers, cfg->num_heads, cfg->channels, cfg->n_expert, cfg->top_k, cfg->expert_hidden,
           cfg->max_seq_len, cfg->vocab_size, cfg->padded_vocab_size, model->num_parameters, active_params);
    printf("router: %s, gate-norm %s, aux-loss %g, z-loss %g", ROUTER_NAMES[model->router.router],
           GATE_NORM_NAMES[model->router.gate_norm], model->router.aux_loss_coef, model->router.z_loss_coef);
    if (model->router.router == ROUTER_GATEPRO)
        printf(", lambda %g on steps [%d, %s)", model->router.gatepro_lambda, model->router.gatepro_start,
               model->router.gatepro_stop < 0 ? "end" : run->flags.value[F_GATEPRO_STOP]);
    if (model->router.router == ROUTER_AUXFREE) printf(", bias rate %g", model->router.auxfree_rate);
    if (model->router.router == ROUTER_XMOE) printf(", routing dim %d", cfg->xmoe_dim);
    printf("\ntraining: B=%d T=%d, %d micro-batches per step (%ld tokens), %d steps, lr %g warmup %d final %g, "
           "wd %g, clip %g, seed %llu, %d threads, output %s\n", s->B, s->T, s->grad_accum, s->total_batch, s->steps,
           s->lr, s->warmup, s->final_frac, s->weight_decay, s->grad_clip, (unsigned long long)s->seed, threads, s->outdir);
    if (run->dist.size > 1)
        printf("mpi: %d ranks, %d micro-batches each per step (data parallel)%s%s; %zu parameters summed over ranks\n",
               run->dist.size, s->grad_accum / run->dist.size, s->zero ? ", ZeRO-1: AdamW state sharded" : "",
               s->expert_parallel ? ", expert parallel: each rank runs E/R experts of every layer" : "", run->dist.reduce_n);
}

// --- step 5: the train loop

typedef struct { double loss, aux, z, compete; float norm, lr; double ms, fwdbwd_ms, opt_ms; } StepStats;

// Validation and samples before step `step` (and once more at the end), as llm.c.
static void validate_and_sample(Run* run, int step, int last) {
    const RunSettings* s = &run->set;
    RunOutputs* o = &run->out;
    int validating = s->val_every > 0 && (step % s->val_every == 0 || last);
    int sampling = s->sample_every > 0 && (step % s->sample_every == 0 || last) && step > run->start_step;
    if (!validating && !sampling) return;
    struct ExpertRunner* runner = run->model.expert_runner;
    if (runner != NULL) {  // expert parallel: every expert's current weights here, run here
        dist_experts_gather(&run->dist, &run->model, 0);
        run->model.expert_runner = NULL;
    }
    if (validating) {
        double t0 = now_seconds();
        float val_loss = validate(&run->dist, &run->model, &run->data.val, s->val_batches, o->probe_sim, step);
        o->val_seconds += now_seconds() - t0;
        o->val_passes++;
        o->have_probe = 1;
        if (step > run->start_step && o->log != NULL)  // the last step's routing
            print_layer_summary(&o->metrics, &run->model, o->probe_sim);
        printf("val loss %.6f (step %d)\n", val_loss, step);
        if (o->log != NULL) { fprintf(o->log, "s:%d tel:%.6f\n", step, val_loss); fflush(o->log); }
        if (o->log != NULL && last && step > run->start_step)
            write_final_probe_metrics(o->metrics_tsv, step, &run->model, o->probe_sim);
    }
    if (sampling && run->dist.rank == 0) {
        int eot = run->data.have_tokenizer ? (int)run->data.tokenizer.eot_token : run->data.V - 1;
        sample_and_print(&run->model, run->data.have_tokenizer ? &run->data.tokenizer : NULL, eot, s->gen_len, &run->sample_rng, step);
    }
    run->model.expert_runner = runner;
}

// Writes model_%08d<suffix> of `step` with everything a resume needs, after the logs are on disk;
// then --keep's pruning (rank 0 writes; every rank calls it). On a write failure: the message and
// exit status 3, older files intact.
static void save_checkpoint(Run* run, int step, const char* suffix, char* path, size_t pathlen) {
    char err[1024];
    sync_logs(&run->out);
    const DataLoader* dl = &run->data.train;
    TrainState st = {dl->epoch, dl->shard_pos, dl->sample_pos, run->sample_rng, {0}, {0}};
    run_header_fields(&st, &run->flags, run->data.synthetic);
    snprintf(path, pathlen, "%s/model_%08d%s", run->set.outdir, step, suffix);
    if (dist_save_checkpoint(&run->dist, &run->model, path, step, run->set.seed, run->set.steps, &st, err, sizeof(err)) != 0)
        die_output("%s", err);
    if (run->dist.rank == 0 && strcmp(suffix, ".bin") == 0) prune_checkpoints(run->set.outdir, step, run->set.keep);
}

// Forward and backward over the step's micro-batches (under MPI: this rank's, then the gradients
// summed over ranks); the update unless the loss or norm is not finite. Returns 0, or -1 (nothing
// applied) on a non-finite loss or gradient norm.
static int optimizer_step(Run* run, int step, StepStats* st, double* metrics_seconds) {
    const RunSettings* s = &run->set;
    Dist* dist = &run->dist;
    RunOutputs* o = &run->out;
    MoEModel* model = &run->model;
    DataLoader* dl = &run->data.train;
    double t0 = now_seconds();
    MoEProfile* prof = o->profiling ? &o->profile : NULL;
    model->profile = prof;  // the ops time themselves in this step's forwards and backwards
    // No moe_zero_grad: the gradients are zero, from the allocation or the last AdamW step (which
    // zeroes them as it reads them; under ZeRO-1 dist_reduce_gradients zeroes the other shards).
    // Saying so lets the first backward write the experts' weight gradients instead of adding.
    model->grads_zero = 1;
    metrics_reset(&run->out.metrics);
    // this step's routing: GatePro's window at this step, the layers that compete (CompeteSMoE)
    RoutingMode mode = {step, 1, run->schedule != NULL ? run->schedule + (size_t)step * model->config.num_layers : NULL};
    memset(st, 0, sizeof(*st));
    for (int micro = 0; micro < s->grad_accum; micro++) {
        dataloader_next_batch(dl);  // every rank reads every batch: the data position is the same on all
        if (micro % dist->size != dist->rank) continue;  // data parallel: micro-batches rank, rank+R, ...
        moe_forward(model, dl->inputs, dl->targets, s->B, s->T, &mode);
        double tm0 = now_seconds();
        metrics_accumulate(&o->metrics, model, dl->input_domains);
        if (dl->input_domains != NULL && run->data.num_domains > 0) {  // chance level: the batch's domains permuted
            memcpy(o->null_domains, dl->input_domains, (size_t)s->B * s->T);
            domains_permute(o->null_domains, (size_t)s->B * s->T,
                            derive_seed(s->seed, STREAM_DATA) ^ (uint64_t)step * 1000003u ^ (uint64_t)micro);
            metrics_accumulate_null(&o->metrics, model, o->null_domains);
        }
        *metrics_seconds += now_seconds() - tm0;
        profile_lap(prof, PROF_FWD, PROF_METRICS);  // (the forward's last lap ended where this began)
        double* ml = o->micro_local + (size_t)(micro / dist->size) * o->micro_width;
        ml[0] = model->mean_loss; ml[1] = model->aux_loss; ml[2] = model->z_loss; ml[3] = model->compete_loss;
        for (int l = 0; l < model->config.num_layers; l++) {
            const LayerLosses* ls = &model->layer_stats[l];
            double* c = ml + 4 + 4 * l;
            c[0] = ls->router_distill; c[1] = ls->diversity; c[2] = ls->compete_balance; c[3] = ls->agreement;
        }
        moe_backward(model, 1.0f / s->grad_accum);
    }
    // every micro-batch's losses, averaged in micro-batch order as one process does (the same bits
    // for any thread or rank count)
    dist_gather_micro(dist, o->micro_local, s->grad_accum / dist->size, o->micro_width, o->micro_all);
    memset(o->compete_step, 0, sizeof(double) * 4 * (size_t)model->config.num_layers);
    for (int micro = 0; micro < s->grad_accum; micro++) {
        const double* ml = o->micro_all + (size_t)micro * o->micro_width;
        st->loss += (float)ml[0] / s->grad_accum;
        st->aux += (float)ml[1] / s->grad_accum;
        st->z += (float)ml[2] / s->grad_accum;
        st->compete += (float)ml[3] / s->grad_accum;
        for (int i = 0; i < 4 * model->config.num_layers; i++) o->compete_step[i] += ml[4 + i] / s->grad_accum;
    }
    dist_sum_metrics(dist, &o->metrics);
    dist_reduce_gradients(dist, model);
    model->profile = NULL;
    profile_mark(prof);
    st->norm = dist_grad_norm(dist, model);
    profile_lap(prof, PROF_FWD, PROF_OPTIMIZER);
    double t1 = now_seconds();
    if (!isfinite(st->loss) || !isfinite(st->norm)) return -1;
    st->lr = lr_schedule(s->lr, step, s->warmup, s->steps, s->final_frac);
    float clip_scale = s->grad_clip > 0.0f && st->norm > s->grad_clip ? s->grad_clip / (st->norm + 1e-6f) : 1.0f;
    dist_adamw_update(dist, model, st->lr, 0.9f, 0.95f, 1e-8f, s->weight_decay, clip_scale, step + 1);
    dist_sum_doubles(dist, model->step_load, model->config.num_layers * model->config.n_expert);  // every rank's tokens
    moe_after_step(model);  // the router's update after the step (auxfree's bias)
    profile_lap(prof, PROF_FWD, PROF_OPTIMIZER);
    double t2 = now_seconds();
    st->ms = (t2 - t0) * 1000.0;
    st->fwdbwd_ms = (t1 - t0) * 1000.0;
    st->opt_ms = (t2 - t1) * 1000.0;
    return 0;
}

static double eta_seconds(const Run* run, int step) {
    const RunOutputs* o = &run->out;
    return run_eta_seconds(o->step_seconds, step + 1 - run->start_step, run->set.steps - step - 1, o->val_seconds,
                           o->val_passes, validations_left(step, run->set.steps, run->set.val_every));
}

static void log_step(Run* run, int step, const StepStats* st) {
    const RunSettings* s = &run->set;
    RunOutputs* o = &run->out;
    double t0 = now_seconds();
    MoEProfile* prof = o->profiling ? &o->profile : NULL;
    profile_mark(prof);
    const unsigned char* competed = run->schedule != NULL ? run->schedule + (size_t)step * run->model.config.num_layers : NULL;
    if (o->metrics_tsv != NULL)
        write_metrics(o->metrics_tsv, step, &o->metrics, &run->model, o->have_probe ? o->probe_sim : NULL, competed, o->compete_step);
    profile_lap(prof, PROF_FWD, PROF_METRICS);
    o->metrics_seconds += now_seconds() - t0;
    o->step_seconds += st->ms / 1000.0 + (now_seconds() - t0);
    if (step == run->start_step && step + 1 < s->steps) {
        // the run's first step is warm-up (first touch of every buffer, AdamW's moments, the packing
        // buffers): up to 5x a later step. The profile is of the steps after it.
        memset(&o->profile, 0, sizeof(o->profile));
        o->profile_skipped_first = 1;
    } else {
        o->profiled_steps++;
        o->profiled_seconds += st->ms / 1000.0 + (now_seconds() - t0);
    }
    o->have_probe = 0;
    char eta[32], compete_text[64] = "";
    format_eta(eta, sizeof(eta), eta_seconds(run, step));
    if (run->schedule != NULL) snprintf(compete_text, sizeof(compete_text), " compete %.4f", st->compete);
    printf("step %4d/%d | loss %.4f | aux %.4f z %.4f%s | lr %.2e | norm %.3f | %.1f ms (fwd+bwd %.1f, opt %.1f) | "
           "%.0f tok/s | ETA %s\n", step + 1, s->steps, st->loss, st->aux, st->z, compete_text, st->lr, st->norm, st->ms,
           st->fwdbwd_ms, st->opt_ms, s->total_batch / (st->ms / 1000.0), eta);
    if (s->comm_stats) {
        Dist* d = &run->dist;
        double bytes[COMM_KINDS], seconds, unused[COMM_KINDS], unused_s;
        dist_take_comm_stats(d, bytes, &seconds);
        uint32_t crc;
        int differs = dist_check_replicas(d, &run->model, &crc);
        dist_take_comm_stats(d, unused, &unused_s);  // the check itself is not the step's
        if (differs) die("step %d: rank %d's parameters differ from rank 0's", step + 1, differs);
        printf("comm step %d: rank 0 received", step + 1);
        for (int k = 0; k < COMM_KINDS; k++) printf(" %s %.0f", COMM_NAMES[k], bytes[k]);
        printf(" bytes; %.1f ms in MPI of %.1f ms; params crc32 %08x on all %d ranks\n", seconds * 1000.0, st->ms, crc,
               d->size);
    }
    fflush(stdout);
    if (o->log == NULL) return;
    fprintf(o->log, "s:%d trl:%.6f\n", step, st->loss);
    fprintf(o->log, "s:%d aux:%.6f z:%.6f compete:%.6f lr:%.6e norm:%.6f ms:%.2f fwdbwd_ms:%.2f opt_ms:%.2f\n", step,
            st->aux, st->z, st->compete, st->lr, st->norm, st->ms, st->fwdbwd_ms, st->opt_ms);
    if (run->schedule != NULL) {  // CompeteSMoE: each loss summed over the layers that competed this step
        const unsigned char* competed = run->schedule + (size_t)step * run->model.config.num_layers;
        double sum[4] = {0, 0, 0, 0};
        int layers = 0;
        for (int l = 0; l < run->model.config.num_layers; l++)
            if (competed[l]) { layers++; for (int i = 0; i < 4; i++) sum[i] += o->compete_step[4 * l + i]; }
        fprintf(o->log, "s:%d competed_layers:%d L_D:%.6f L_div:%.6f L_bal:%.6f agreement:%.6f\n", step, layers, sum[0],
                sum[1], sum[2], layers ? sum[3] / layers : 0.0);
    }
    fflush(o->log);  // for tail -f; on disk (fsync) before each checkpoint
}

// Steps from start_step to the end; returns the exit status (0, 128+signal, 1 on a non-finite loss).
static int train_loop(Run* run) {
    const RunSettings* s = &run->set;
    char path[4096] = "";
    run->out.t_start = now_seconds();
    for (int step = run->start_step; step <= s->steps; step++) {
        int last = step == s->steps;
        int stop = dist_agree_stop(&run->dist, (int)stop_signal);  // a signal to any rank stops every rank
        validate_and_sample(run, step, last);
        if (last || (s->ckpt_every > 0 && step % s->ckpt_every == 0 && step > run->start_step) || stop) {
            save_checkpoint(run, step, ".bin", path, sizeof(path));
            printf("wrote %s\n", path);
        }
        if (stop) {
            printf("stopped by signal %d at step %d; resume with -e %s\n", stop, step, path);
            return 128 + stop;
        }
        if (last) return 0;
        StepStats st;
        DataLoaderState step_start = dataloader_get_state(&run->data.train);
        if (optimizer_step(run, step, &st, &run->out.metrics_seconds) != 0) {
            // The update was not applied: with the data position of the step's start this is the
            // state of before the step, the bytes model_%08d.bin of this step holds or would hold;
            // its own name keeps a regular checkpoint of the step untouched.
            char err[512];
            if (dataloader_set_state(&run->data.train, step_start, err, sizeof(err)) != 0) die("%s", err);
            save_checkpoint(run, step, ".nan.bin", path, sizeof(path));
            if (run->dist.rank == 0) fprintf(stderr, "error: step %d: loss %f, gradient norm %f is not finite; update skipped, last good "
                            "state saved to %s (try a lower -l or a --grad-clip)\n", step, st.loss, st.norm, path);
            return 1;
        }
        log_step(run, step, &st);
    }
    return 0;
}

// --- step 6: finish

// --profile's table: each op's ms per step, forward and backward, and its share of the step time.
static void print_profile(const RunOutputs* o) {
    int n = o->profiled_steps;
    if (n == 0) {
        printf(o->profile_skipped_first ? "profile: only the run's first (warm-up) step ran, which the profile leaves out\n"
                                        : "profile: no training step ran\n");
        return;
    }
    double step_ms = o->profiled_seconds * 1000.0 / n, sum = 0.0;
    printf("profile: time per op, mean over %d steps%s (a step: %.1f ms, forward + backward + optimizer + metrics)\n", n,
           o->profile_skipped_first ? " (the run's first, warm-up step left out)" : "", step_ms);
    printf("  %-30s %9s %9s %9s %8s\n", "op", "fwd ms", "bwd ms", "ms/step", "% step");
    for (int op = 0; op < PROF_OPS; op++) {
        double f = o->profile.seconds[PROF_FWD][op] * 1000.0 / n, b = o->profile.seconds[PROF_BWD][op] * 1000.0 / n;
        sum += f + b;
        printf("  %-30s %9.2f %9.2f %9.2f %7.1f%%\n", PROF_NAMES[op], f, b, f + b, step_ms > 0 ? 100.0 * (f + b) / step_ms : 0.0);
    }
    double other = step_ms - sum;
    printf("  %-30s %9s %9s %9.2f %7.1f%%\n", "other (data, MPI sums, glue)", "", "", other, step_ms > 0 ? 100.0 * other / step_ms : 0.0);
    printf("  %-30s %9s %9s %9.2f %7.1f%%\n", "step", "", "", step_ms, 100.0);
}

static void finish(Run* run) {
    RunOutputs* o = &run->out;
    if (o->profiling && run->dist.rank == 0) print_profile(o);
    sync_logs(o);
    if (o->log != NULL) fclose(o->log);
    if (o->metrics_tsv != NULL) fclose(o->metrics_tsv);
    freeCheck(o->micro_local); freeCheck(o->micro_all); freeCheck(o->compete_step);
    printf("total time %.1f s; metrics took %.1f ms, %.2f%% of the step time (expert-output similarity is "
           "computed during validation and not counted here)\n", now_seconds() - o->t_start, o->metrics_seconds * 1000.0,
           o->step_seconds > 0 ? 100.0 * o->metrics_seconds / o->step_seconds : 0.0);
    metrics_free(&o->metrics);
    freeCheck(o->probe_sim);
    freeCheck(o->null_domains);
    free(run->schedule);
    dataloader_free(&run->data.train);
    dataloader_free(&run->data.val);
    if (run->data.have_tokenizer) tokenizer_free(&run->data.tokenizer);
    synthetic_corpus_free(&run->data.corpus);
    moe_free(&run->model);
}

// ----------------------------------------------------------------------------
// (dev/ab_step.c includes this file with TRAIN_MOE_NO_MAIN, to run two of these runs in one process)
#ifndef TRAIN_MOE_NO_MAIN
int main(int argc, char** argv) {
    static Run run;
    dist_init(&run.dist, &argc, &argv);  // MPI, when built with it
    static FlagSpec flag_specs[NUM_FLAGS];
    memcpy(flag_specs, FLAGS, sizeof(FLAGS));
    add_resume_notes(flag_specs);
    flags_parse(&run.flags, flag_specs, NUM_FLAGS, "train_moe [flags]", argc, argv);
    load_init_checkpoint(&run);         // -e: the model, and the checkpoint's settings for unset flags
    parse_settings(&run.set, &run.flags, run.dist.size);
    setup_data(&run.data, &run.set, &run.flags);
    setup_model(&run);
    open_data_loaders(&run.data, &run.set, &run.flags);
    setup_schedule(&run);
    dist_setup(&run.dist, &run.model, run.set.zero, run.set.expert_parallel);  // shards, ZeRO-1, experts' owners
    open_outputs(&run);
    print_run(&run);

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGXFSZ, SIG_IGN);  // over a file-size limit, a write fails (and says so) instead of killing the run

    int exit_code = train_loop(&run);
    finish(&run);
    dist_finalize(&run.dist);
    return exit_code;
}
#endif
