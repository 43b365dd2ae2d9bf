/*
train_moe — train a Mixture-of-Experts GPT on the CPU.

    make && ./train_moe                 # the built-in synthetic multi-domain corpus
    ./train_moe -i data/tinyshakespeare/tiny_shakespeare_train.bin -j data/tinyshakespeare/tiny_shakespeare_val.bin

Every flag is declared once, in FLAGS below; --help prints that table and the README copies it.
*/
#include <signal.h>
#include <time.h>
#include <sys/stat.h>
#include "moe.h"
#include "metrics.h"
#include "dataloader.h"
#include "tokenizer.h"
#include "flags.h"

// ----------------------------------------------------------------------------
// the flags: one table, with defaults and help

typedef enum {
    F_TRAIN, F_VAL, F_OUTPUT, F_BATCH, F_SEQ_LEN, F_LR, F_WARMUP, F_FINAL_LR, F_WEIGHT_DECAY, F_TOTAL_BATCH,
    F_STEPS, F_VAL_EVERY, F_VAL_BATCHES, F_SAMPLE_EVERY, F_GEN_LEN, F_CKPT_EVERY, F_INIT, F_WEIGHTS_ONLY,
    F_LAYERS, F_HEADS, F_CHANNELS, F_EXPERTS, F_TOP_K, F_HIDDEN, F_MAX_SEQ_LEN, F_VOCAB,
    F_ROUTER, F_GATE_NORM, F_AUX_LOSS, F_Z_LOSS, F_ROUTER_INIT_STD, F_GATEPRO_LAMBDA, F_GATEPRO_START,
    F_GATEPRO_STOP, F_COMPETE_RATE, F_COMPETE_WARMUP, F_COMPETE_MAX_LAYERS, F_COMPETE_WEIGHTS, F_COMPETE_ALPHA,
    F_COMPETE_ROUTER_COEF, F_COMPETE_DIV_COEF, F_COMPETE_BAL_COEF, F_SEED, F_GRAD_CLIP, F_TOKENIZER, F_SYNTH_TOKENS, F_HELP, NUM_FLAGS
} FlagId;

static const FlagSpec FLAGS[NUM_FLAGS] = {
    [F_TRAIN]          = {"train-data", 'i', 1, "", "train shards (glob; .bin also matches .bin.gz); empty = built-in synthetic corpus"},
    [F_VAL]            = {"val-data", 'j', 1, "", "validation shards (glob); empty = the synthetic corpus's val split"},
    [F_OUTPUT]         = {"output", 'o', 1, "out", "output directory: main.log, config.txt, checkpoints"},
    [F_BATCH]          = {"batch", 'b', 1, "16", "micro-batch size B"},
    [F_SEQ_LEN]        = {"seq-len", 't', 1, "64", "sequence length T (1 <= T <= maxT)"},
    [F_LR]             = {"lr", 'l', 1, "1e-3", "peak learning rate"},
    [F_WARMUP]         = {"warmup", 'u', 1, "20", "linear warmup steps"},
    [F_FINAL_LR]       = {"final-lr-frac", 'q', 1, "0.1", "final learning rate as a fraction of the peak (cosine decay)"},
    [F_WEIGHT_DECAY]   = {"weight-decay", 'c', 1, "0.1", "AdamW weight decay (matrices and embeddings only)"},
    [F_TOTAL_BATCH]    = {"total-batch", 'd', 1, "0", "tokens per optimizer step, a multiple of B*T (0 = B*T, no accumulation)"},
    [F_STEPS]          = {"steps", 'x', 1, "300", "optimizer steps (-1 = one epoch of the train data)"},
    [F_VAL_EVERY]      = {"val-every", 'v', 1, "50", "validate every N steps (and at the end); 0 = never"},
    [F_VAL_BATCHES]    = {"val-batches", 'm', 1, "16", "batches per validation"},
    [F_SAMPLE_EVERY]   = {"sample-every", 's', 1, "0", "print a sample every N steps (and at the end); 0 = never"},
    [F_GEN_LEN]        = {"gen-len", 'g', 1, "64", "tokens per sample"},
    [F_CKPT_EVERY]     = {"checkpoint-every", 'n', 1, "0", "write a checkpoint every N steps (one is always written at the end)"},
    [F_INIT]           = {"init", 'e', 1, "", "initialise from a checkpoint; resumes if it holds optimizer state"},
    [F_WEIGHTS_ONLY]   = {"weights-only", 0, 0, "", "with -e: load the parameters only and start a fresh run"},
    [F_LAYERS]         = {"layers", 0, 1, "4", "layers L"},
    [F_HEADS]          = {"heads", 0, 1, "4", "attention heads NH (C % NH == 0)"},
    [F_CHANNELS]       = {"channels", 0, 1, "128", "channels C"},
    [F_EXPERTS]        = {"experts", 0, 1, "8", "experts per layer E (1 = dense GPT-2 MLP)"},
    [F_TOP_K]          = {"top-k", 0, 1, "2", "experts per token K (1 <= K <= E)"},
    [F_HIDDEN]         = {"expert-hidden", 0, 1, "0", "expert hidden size H (0 = 4C; 4C/K matches active parameters)"},
    [F_MAX_SEQ_LEN]    = {"max-seq-len", 0, 1, "0", "maxT, the position table's length (0 = T)"},
    [F_VOCAB]          = {"vocab-size", 0, 1, "0", "V for shards without a tokenizer (0 = from the tokenizer)"},
    [F_ROUTER]         = {"router", 0, 1, "topk", "router: topk | gatepro | compete"},
    [F_GATE_NORM]      = {"gate-norm", 0, 1, "topk_softmax", "gate weights: topk_softmax | softmax_topk"},
    [F_AUX_LOSS]       = {"aux-loss", 0, 1, "0.01", "Switch load-balance loss coefficient a"},
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
    [F_SEED]           = {"seed", 0, 1, "1337", "seed of every random stream (init, data order, sampling, corpus)"},
    [F_GRAD_CLIP]      = {"grad-clip", 0, 1, "1.0", "clip the global gradient norm to this (0 = off)"},
    [F_TOKENIZER]      = {"tokenizer", 0, 1, "", "tokenizer file for samples (default: tokenizer.bin beside the train shards)"},
    [F_SYNTH_TOKENS]   = {"synthetic-tokens", 0, 1, "4000000", "size of the synthetic corpus's train split in tokens"},
    [F_HELP]           = {"help", 'h', 0, "", "print this help"},
};

// ----------------------------------------------------------------------------
// small things: time, signals, files

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static volatile sig_atomic_t stop_signal = 0;
static void on_signal(int sig) { stop_signal = sig; }

static void make_dir(const char* path) {
    if (mkdir(path, 0755) != 0 && errno != EEXIST) die("cannot create output directory %s: %s", path, strerror(errno));
}

static int file_exists(const char* path) { struct stat st; return stat(path, &st) == 0; }

static void format_eta(char* buf, size_t n, double seconds) {
    if (seconds < 0) seconds = 0;
    int s = (int)(seconds + 0.5);
    if (s >= 3600) snprintf(buf, n, "%dh%02dm", s / 3600, s / 60 % 60);
    else snprintf(buf, n, "%dm%02ds", s / 60, s % 60);
}

// ----------------------------------------------------------------------------
// validation and sampling

// Mean validation loss over the first `batches` batches. The first batch is the run's fixed probe:
// on it, every expert runs on every token to measure expert-output similarity (SPEC §6), one
// value per layer into probe_sim (L).
static float validate(MoEModel* model, DataLoader* val, int batches, float* probe_sim) {
    dataloader_reset(val);
    double total = 0.0;
    for (int i = 0; i < batches; i++) {
        dataloader_next_batch(val);
        moe_forward(model, val->inputs, val->targets, val->B, val->T);
        total += model->mean_loss;
        if (i == 0 && probe_sim != NULL)
            for (int l = 0; l < model->config.num_layers; l++) probe_sim[l] = expert_output_similarity(model, l);
    }
    return (float)(total / batches);
}

// One line per layer of SPEC §6's metrics into metrics.tsv (header: METRICS_TSV_HEADER, README).
#define METRICS_TSV_HEADER "step\tlayer\ttokens\tzero_experts\tload_cv\tload_max_mean\tload_entropy\t" \
    "router_sim_abs\trouter_sim_angle\trouter_spectral_entropy\tsibling_coact\tsibling_coact_random\t" \
    "expert_out_sim\tdomain_mi\texpert_counts\tdomain_counts\tcompeted\tcompete_router_loss\tcompete_div_loss\t" \
    "compete_bal_loss\tcompete_agreement\n"
static void write_metrics(FILE* f, int step, const MoEMetrics* mm, const MoEModel* model, const float* probe_sim) {
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
        const LayerLosses* st = &model->layer_stats[l];  // the last micro-batch's (the decision is per step)
        if (st->competed) fprintf(f, "\t1\t%.6f\t%.6f\t%.6f\t%.6f\n", st->router_distill, st->diversity, st->compete_balance, st->agreement);
        else fprintf(f, "\t0\tnan\tnan\tnan\tnan\n");
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
        printf("\n");
    }
}

// Samples gen_len tokens after an end-of-text token, at temperature 1, with its own model copy of
// activations (shares the parameters) so the training buffers are untouched.
static void sample_and_print(const MoEModel* model, const Tokenizer* tok, int eot, int gen_len, uint64_t* rng) {
    MoEModel infer = *model;  // shares the parameters; its own activations; never competes
    infer.acts_memory = NULL; infer.idx_memory = NULL; infer.scratch_memory = NULL;
    infer.m_memory = NULL; infer.v_memory = NULL;
    infer.compete_layers = NULL;
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
        moe_forward(&infer, window, NULL, 1, T);
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
    free(infer.acts_memory); free(infer.idx_memory); free(infer.scratch_memory);
    free(ctx); free(probs);
}

// ----------------------------------------------------------------------------

int main(int argc, char** argv) {
    Flags flags;
    flags_parse(&flags, FLAGS, NUM_FLAGS, "train_moe [flags]", argc, argv);
    int B = (int)flag_int(&flags, F_BATCH, 1, 1 << 20);
    int T = (int)flag_int(&flags, F_SEQ_LEN, 1, 1 << 20);
    float lr = flag_float(&flags, F_LR, 0.0f, 10.0f);
    int warmup = (int)flag_int(&flags, F_WARMUP, 0, 1L << 30);
    float final_frac = flag_float(&flags, F_FINAL_LR, 0.0f, 1.0f);
    float weight_decay = flag_float(&flags, F_WEIGHT_DECAY, 0.0f, 10.0f);
    long total_batch = flag_int(&flags, F_TOTAL_BATCH, 0, 1L << 40);
    int steps = (int)flag_int(&flags, F_STEPS, -1, 1L << 30);
    int val_every = (int)flag_int(&flags, F_VAL_EVERY, 0, 1L << 30);
    int val_batches = (int)flag_int(&flags, F_VAL_BATCHES, 1, 1L << 30);
    int sample_every = (int)flag_int(&flags, F_SAMPLE_EVERY, 0, 1L << 30);
    int gen_len = (int)flag_int(&flags, F_GEN_LEN, 1, 4095);
    int ckpt_every = (int)flag_int(&flags, F_CKPT_EVERY, 0, 1L << 30);
    float grad_clip = flag_float(&flags, F_GRAD_CLIP, 0.0f, 1e30f);
    uint64_t seed = (uint64_t)flag_int(&flags, F_SEED, 0, 0xFFFFFFFFL);
    float router_init_std = flag_float(&flags, F_ROUTER_INIT_STD, 0.0f, 100.0f);
    const char* outdir = flags.value[F_OUTPUT];
    const char* init_path = flags.value[F_INIT];
    int weights_only = flags.given[F_WEIGHTS_ONLY];
    if (weights_only && !init_path[0]) die("--weights-only needs -e CHECKPOINT");
    if (total_batch == 0) total_batch = (long)B * T;
    if (total_batch % ((long)B * T) != 0)
        die("-d total batch %ld tokens is not a multiple of B*T = %d*%d = %ld", total_batch, B, T, (long)B * T);
    int grad_accum = (int)(total_batch / ((long)B * T));

    // routers: flags given on the command line win over a checkpoint's settings
    RouterConfig rc = ROUTER_DEFAULTS;
    rc.router = flag_choice(&flags, F_ROUTER, ROUTER_NAMES, 3);
    rc.gate_norm = flag_choice(&flags, F_GATE_NORM, GATE_NORM_NAMES, 2);
    rc.aux_loss_coef = flag_float(&flags, F_AUX_LOSS, 0.0f, 1e6f);
    rc.z_loss_coef = flag_float(&flags, F_Z_LOSS, 0.0f, 1e6f);
    rc.gatepro_lambda = flag_float(&flags, F_GATEPRO_LAMBDA, 0.0f, 3e38f);
    rc.gatepro_start = (int)flag_int(&flags, F_GATEPRO_START, 0, 1L << 30);
    rc.gatepro_stop = (int)flag_int(&flags, F_GATEPRO_STOP, -1, 1L << 30);
    if ((flags.given[F_GATEPRO_LAMBDA] || flags.given[F_GATEPRO_START] || flags.given[F_GATEPRO_STOP]) &&
        rc.router != ROUTER_GATEPRO)
        die("--gatepro-lambda/--gatepro-start/--gatepro-stop need --router gatepro");
    rc.compete_rate = flag_float(&flags, F_COMPETE_RATE, 0.0f, 1.0f);
    rc.compete_warmup = flag_float(&flags, F_COMPETE_WARMUP, 0.0f, 1.0f);
    rc.compete_max_layers = (int)flag_int(&flags, F_COMPETE_MAX_LAYERS, 1, 1 << 16);
    rc.compete_weights = flag_choice(&flags, F_COMPETE_WEIGHTS, COMPETE_WEIGHTS_NAMES, 2);
    rc.compete_alpha = flag_float(&flags, F_COMPETE_ALPHA, 0.0f, 1e6f);
    rc.compete_router_coef = flag_float(&flags, F_COMPETE_ROUTER_COEF, 0.0f, 1e6f);
    rc.compete_div_coef = flag_float(&flags, F_COMPETE_DIV_COEF, 0.0f, 1e6f);
    rc.compete_bal_coef = flag_float(&flags, F_COMPETE_BAL_COEF, 0.0f, 1e6f);
    for (int i = F_COMPETE_RATE; i <= F_COMPETE_BAL_COEF; i++)
        if (flags.given[i] && rc.router != ROUTER_COMPETE) die("--%s needs --router compete", FLAGS[i].name);

    // --- data: shards, or the built-in synthetic corpus
    int synthetic = flags.value[F_TRAIN][0] == '\0';
    SyntheticCorpus corpus = {0};
    Tokenizer tokenizer = {0};
    int have_tokenizer = 0;
    int V;
    if (synthetic) {
        if (flags.value[F_VAL][0]) die("-j needs -i: the synthetic corpus brings its own validation split");
        size_t ntrain = (size_t)flag_int(&flags, F_SYNTH_TOKENS, 10000, 1L << 31);
        synthetic_corpus_generate(&corpus, ntrain, ntrain / 16, seed);
        V = corpus.vocab_size;
        printf("data: built-in synthetic corpus, %d domains, V=%d, %zu train / %zu val tokens\n",
               corpus.num_domains, V, corpus.train_len, corpus.val_len);
        printf("      unigram entropy %.4f nats, source entropy rate %.4f nats/token (train stream)\n",
               corpus.unigram_entropy, corpus.entropy_rate);
    } else {
        const char* tok_path = flags.value[F_TOKENIZER];
        char guess[4096];
        if (!tok_path[0]) {  // tokenizer.bin beside the train shards
            snprintf(guess, sizeof(guess), "%s", flags.value[F_TRAIN]);
            char* slash = strrchr(guess, '/');
            if (slash) strcpy(slash + 1, "tokenizer.bin"); else strcpy(guess, "tokenizer.bin");
            if (file_exists(guess)) tok_path = guess;
        }
        if (tok_path[0]) {
            char err[512];
            if (tokenizer_load(&tokenizer, tok_path, err, sizeof(err)) != 0) die("%s", err);
            have_tokenizer = 1;
            printf("tokenizer: %s (V=%d)\n", tok_path, tokenizer.vocab_size);
        }
        V = (int)flag_int(&flags, F_VOCAB, 0, 1L << 30);
        if (V == 0) {
            if (!have_tokenizer) die("shards without a tokenizer: give --vocab-size V or --tokenizer FILE");
            V = tokenizer.vocab_size;
        }
        if (!flags.value[F_VAL][0]) die("-i needs -j: give the validation shards too");
    }

    // --- the model: from a checkpoint, or fresh
    MoEModel model;
    int start_step = 0;
    TrainState ts = {0};
    int resuming = 0;
    if (init_path[0]) {
        char err[1024];
        memset(&model, 0, sizeof(model));
        CheckpointInfo info;
        if (moe_load_checkpoint(&model, init_path, &info, &ts, err, sizeof(err)) != 0) die("%s", err);
        resuming = info.has_optimizer && !weights_only;
        if (weights_only) { free(model.m_memory); free(model.v_memory); model.m_memory = model.v_memory = NULL; }
        if (resuming) start_step = info.step;
        printf("loaded %s: step %d%s\n", init_path, info.step, resuming ? ", resuming with optimizer state" :
               " (parameters only: a fresh run)");
        if (model.config.vocab_size != V)
            die("checkpoint %s has V=%d but the data needs V=%d", init_path, model.config.vocab_size, V);
        for (int i = F_LAYERS; i <= F_MAX_SEQ_LEN; i++)
            if (flags.given[i]) fprintf(stderr, "warning: --%s ignored: the architecture comes from the checkpoint\n", FLAGS[i].name);
        // a checkpoint's router settings hold unless the command line says otherwise
        if (flags.given[F_ROUTER]) model.router.router = rc.router;
        if (flags.given[F_GATE_NORM]) model.router.gate_norm = rc.gate_norm;
        if (flags.given[F_AUX_LOSS]) model.router.aux_loss_coef = rc.aux_loss_coef;
        if (flags.given[F_Z_LOSS]) model.router.z_loss_coef = rc.z_loss_coef;
        if (flags.given[F_GATEPRO_LAMBDA]) model.router.gatepro_lambda = rc.gatepro_lambda;
        if (flags.given[F_GATEPRO_START]) model.router.gatepro_start = rc.gatepro_start;
        if (flags.given[F_GATEPRO_STOP]) model.router.gatepro_stop = rc.gatepro_stop;
        if (flags.given[F_COMPETE_RATE]) model.router.compete_rate = rc.compete_rate;
        if (flags.given[F_COMPETE_WARMUP]) model.router.compete_warmup = rc.compete_warmup;
        if (flags.given[F_COMPETE_MAX_LAYERS]) model.router.compete_max_layers = rc.compete_max_layers;
        if (flags.given[F_COMPETE_WEIGHTS]) model.router.compete_weights = rc.compete_weights;
        if (flags.given[F_COMPETE_ALPHA]) model.router.compete_alpha = rc.compete_alpha;
        if (flags.given[F_COMPETE_ROUTER_COEF]) model.router.compete_router_coef = rc.compete_router_coef;
        if (flags.given[F_COMPETE_DIV_COEF]) model.router.compete_div_coef = rc.compete_div_coef;
        if (flags.given[F_COMPETE_BAL_COEF]) model.router.compete_bal_coef = rc.compete_bal_coef;
        if (model.router.router == ROUTER_COMPETE && model.config.n_expert < 2) die("--router compete needs E >= 2");
    } else {
        MoEConfig cfg;
        cfg.num_layers = (int)flag_int(&flags, F_LAYERS, 1, 1 << 16);
        cfg.num_heads = (int)flag_int(&flags, F_HEADS, 1, 1 << 16);
        cfg.channels = (int)flag_int(&flags, F_CHANNELS, 1, 1 << 20);
        cfg.n_expert = (int)flag_int(&flags, F_EXPERTS, 1, 256);
        cfg.top_k = (int)flag_int(&flags, F_TOP_K, 1, 256);
        cfg.expert_hidden = (int)flag_int(&flags, F_HIDDEN, 0, 1 << 24);
        if (cfg.expert_hidden == 0) cfg.expert_hidden = 4 * cfg.channels;
        cfg.max_seq_len = (int)flag_int(&flags, F_MAX_SEQ_LEN, 0, 1 << 20);
        if (cfg.max_seq_len == 0) cfg.max_seq_len = T;
        cfg.vocab_size = V;
        cfg.padded_vocab_size = pad_vocab(V);
        char err[256];
        if (config_check(&cfg, err, sizeof(err)) != 0) die("%s", err);
        if (rc.router == ROUTER_GATEPRO && cfg.n_expert < 2) die("--router gatepro needs E >= 2");
        if (rc.router == ROUTER_COMPETE && cfg.n_expert < 2) die("--router compete needs E >= 2");
        moe_build(&model, &cfg);
        moe_init_params(&model, seed, router_init_std);
        model.router = rc;
    }
    const MoEConfig* cfg = &model.config;
    if (T > cfg->max_seq_len) die("-t %d exceeds the model's maxT = %d", T, cfg->max_seq_len);
    if (model.router.router == ROUTER_GATEPRO && cfg->n_expert < 2) die("--router gatepro needs E >= 2");
    if (cfg->top_k == 1 && model.router.router == ROUTER_GATEPRO)
        fprintf(stderr, "warning: GatePro with K=1 changes nothing: the top-1 expert never loses to its sibling\n");
    if (cfg->top_k == 1 && cfg->n_expert > 1 && model.router.gate_norm == GATE_TOPK_SOFTMAX)
        fprintf(stderr, "warning: K=1 with --gate-norm topk_softmax gives every token weight 1, so the router "
                        "gets no gradient from the LM loss; consider --gate-norm softmax_topk\n");

    // --- data loaders
    DataLoader train_loader, val_loader;
    if (synthetic) {
        dataloader_init_memory(&train_loader, corpus.train_tokens, corpus.train_domains, corpus.train_len, B, T, V, 1,
                               derive_seed(seed, STREAM_DATA));
        dataloader_init_memory(&val_loader, corpus.val_tokens, corpus.val_domains, corpus.val_len, B, T, V, 0, 0);
    } else {
        dataloader_init(&train_loader, flags.value[F_TRAIN], B, T, V, 1, derive_seed(seed, STREAM_DATA));
        dataloader_init(&val_loader, flags.value[F_VAL], B, T, V, 0, 0);
    }
    if (val_batches > dataloader_num_batches(&val_loader)) val_batches = (int)dataloader_num_batches(&val_loader);
    if (steps < 0) steps = (int)(dataloader_num_batches(&train_loader) / grad_accum);
    if (steps < 1) steps = 1;
    // CompeteSMoE: the whole schedule, drawn once from the run's seed (a resumed run redraws the same)
    unsigned char* schedule = NULL;
    if (model.router.router == ROUTER_COMPETE) {
        const RouterConfig* r = &model.router;
        schedule = (unsigned char*)mallocCheck((size_t)steps * cfg->num_layers);
        long placed = compete_schedule(schedule, steps, cfg->num_layers, r->compete_rate, r->compete_warmup,
                                       r->compete_max_layers, seed);
        long eligible = (long)cfg->num_layers * (steps - (int)floor((double)r->compete_warmup * steps));
        printf("compete: %ld of %ld (layer, step) pairs after warm-up compete: realised rate %.4f (--compete-rate %g, "
               "warm-up %d steps, at most %d layers per step)\n", placed, eligible,
               eligible > 0 ? (double)placed / eligible : 0.0, r->compete_rate,
               (int)floor((double)r->compete_warmup * steps), r->compete_max_layers);
    }
    uint64_t sample_rng = derive_seed(seed, STREAM_SAMPLE);
    if (resuming) {
        char err[512];
        DataLoaderState st = {ts.data_epoch, ts.data_shard_pos, ts.data_sample_pos};
        if (dataloader_set_state(&train_loader, st, err, sizeof(err)) != 0) die("resuming from %s: %s", init_path, err);
        sample_rng = ts.sample_rng;
        if (start_step >= steps) die("checkpoint %s is at step %d, not before the last step %d (raise -x)", init_path, start_step, steps);
    }

    // --- output directory, config copy, log
    make_dir(outdir);
    char path[4096];
    snprintf(path, sizeof(path), "%s/config.txt", outdir);
    FILE* cf = fopen(path, "w");
    if (cf == NULL) die("cannot write %s: %s", path, strerror(errno));
    for (int i = 0; i < NUM_FLAGS; i++) if (FLAGS[i].takes_value) fprintf(cf, "%s = %s\n", FLAGS[i].name, flags.value[i]);
    fprintf(cf, "# model: maxT=%d V=%d Vp=%d L=%d NH=%d C=%d E=%d K=%d H=%d params=%zu\n", cfg->max_seq_len,
            cfg->vocab_size, cfg->padded_vocab_size, cfg->num_layers, cfg->num_heads, cfg->channels, cfg->n_expert,
            cfg->top_k, cfg->expert_hidden, model.num_parameters);
    fprintf(cf, "# router: %s gate-norm %s aux %g z %g gatepro-lambda %g start %d stop %d\n",
            ROUTER_NAMES[model.router.router], GATE_NORM_NAMES[model.router.gate_norm], model.router.aux_loss_coef,
            model.router.z_loss_coef, model.router.gatepro_lambda, model.router.gatepro_start, model.router.gatepro_stop);
    fprintf(cf, "# resumed_from = %s at step %d\n", init_path[0] ? init_path : "(none)", start_step);
    fclose(cf);
    snprintf(path, sizeof(path), "%s/main.log", outdir);
    FILE* logf = fopen(path, resuming ? "a" : "w");
    if (logf == NULL) die("cannot write %s: %s", path, strerror(errno));
    snprintf(path, sizeof(path), "%s/metrics.tsv", outdir);
    FILE* metf = fopen(path, resuming ? "a" : "w");
    if (metf == NULL) die("cannot write %s: %s", path, strerror(errno));
    if (!resuming) fputs(METRICS_TSV_HEADER, metf);
    MoEMetrics metrics;
    metrics_init(&metrics, cfg->num_layers, cfg->n_expert, cfg->top_k, synthetic ? corpus.num_domains : 0);
    float* probe_sim = (float*)callocCheck(cfg->num_layers, sizeof(float));
    int have_probe = 0;
    double metrics_seconds = 0.0, step_seconds = 0.0;

    size_t active_params = model.num_parameters -
        (size_t)cfg->num_layers * (cfg->n_expert - cfg->top_k) *
            (2 * (size_t)cfg->channels * cfg->expert_hidden + cfg->expert_hidden + cfg->channels);
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    printf("model: L=%d NH=%d C=%d E=%d K=%d H=%d maxT=%d V=%d (Vp=%d): %zu parameters, %zu active per token\n",
           cfg->num_layers, cfg->num_heads, cfg->channels, cfg->n_expert, cfg->top_k, cfg->expert_hidden,
           cfg->max_seq_len, cfg->vocab_size, cfg->padded_vocab_size, model.num_parameters, active_params);
    printf("router: %s, gate-norm %s, aux-loss %g, z-loss %g", ROUTER_NAMES[model.router.router],
           GATE_NORM_NAMES[model.router.gate_norm], model.router.aux_loss_coef, model.router.z_loss_coef);
    if (model.router.router == ROUTER_GATEPRO)
        printf(", lambda %g on steps [%d, %s)", model.router.gatepro_lambda, model.router.gatepro_start,
               model.router.gatepro_stop < 0 ? "end" : flags.value[F_GATEPRO_STOP]);
    printf("\ntraining: B=%d T=%d, %d micro-batches per step (%ld tokens), %d steps, lr %g warmup %d final %g, "
           "wd %g, clip %g, %d threads, output %s\n", B, T, grad_accum, total_batch, steps, lr, warmup, final_frac,
           weight_decay, grad_clip, threads, outdir);

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    int eot = have_tokenizer ? (int)tokenizer.eot_token : V - 1;
    double t_start = now_seconds();
    int exit_code = 0;
    int step = start_step;
    for (; step <= steps; step++) {
        int last = step == steps;
        // GatePro's penalty is on at step s iff start <= s and (stop < 0 or s < stop), in every
        // forward of that step: validation and samples included
        model.gatepro_active = gatepro_active_at(&model.router, step);
        // validation and samples before the step (and once more at the end), as llm.c
        if (val_every > 0 && (step % val_every == 0 || last)) {
            float val_loss = validate(&model, &val_loader, val_batches, probe_sim);
            have_probe = 1;
            if (step > start_step) print_layer_summary(&metrics, &model, probe_sim);  // the last step's routing
            printf("val loss %.6f (step %d)\n", val_loss, step);
            fprintf(logf, "s:%d tel:%.6f\n", step, val_loss);
            fflush(logf);
        }
        if (sample_every > 0 && (step % sample_every == 0 || last) && step > start_step)
            sample_and_print(&model, have_tokenizer ? &tokenizer : NULL, eot, gen_len, &sample_rng);
        int save = last || (ckpt_every > 0 && step % ckpt_every == 0 && step > start_step) || stop_signal;
        if (save) {
            char err[1024];
            TrainState st = {train_loader.epoch, train_loader.shard_pos, train_loader.sample_pos, sample_rng, {0}};
            snprintf(path, sizeof(path), "%s/model_%08d.bin", outdir, step);
            if (moe_save_checkpoint(&model, path, 1, step, seed, steps, &st, err, sizeof(err)) != 0) die("%s", err);
            printf("wrote %s\n", path);
        }
        if (stop_signal) {
            printf("stopped by signal %d at step %d; resume with -e %s\n", (int)stop_signal, step, path);
            exit_code = 128 + stop_signal;
            break;
        }
        if (last) break;

        // one optimizer step
        double t0 = now_seconds();
        // (no moe_zero_grad: the gradients are zero, from the allocation or the last AdamW step)
        metrics_reset(&metrics);
        model.compete_layers = schedule != NULL ? schedule + (size_t)step * cfg->num_layers : NULL;
        double loss = 0.0, aux = 0.0, zl = 0.0, comp = 0.0, tm = 0.0;
        for (int micro = 0; micro < grad_accum; micro++) {
            dataloader_next_batch(&train_loader);
            moe_forward(&model, train_loader.inputs, train_loader.targets, B, T);
            double tm0 = now_seconds();
            metrics_accumulate(&metrics, &model, train_loader.input_domains);
            tm += now_seconds() - tm0;
            loss += model.mean_loss / grad_accum;
            aux += model.aux_loss / grad_accum;
            zl += model.z_loss / grad_accum;
            comp += model.compete_loss / grad_accum;
            moe_backward(&model, 1.0f / grad_accum);
        }
        model.compete_layers = NULL;  // validation and samples never compete
        float norm = grad_global_norm(&model);
        double t1 = now_seconds();
        if (!isfinite(loss) || !isfinite(norm)) {
            char err[1024];
            TrainState st = {train_loader.epoch, train_loader.shard_pos, train_loader.sample_pos, sample_rng, {0}};
            snprintf(path, sizeof(path), "%s/model_%08d.bin", outdir, step);
            // the parameters are still the last good ones: the update has not been applied
            if (moe_save_checkpoint(&model, path, 1, step, seed, steps, &st, err, sizeof(err)) != 0) die("%s", err);
            fprintf(stderr, "error: step %d: loss %f, gradient norm %f is not finite; update skipped, last good "
                            "state saved to %s (try a lower -l or a --grad-clip)\n", step, loss, norm, path);
            exit_code = 1;
            break;
        }
        float lr_t = lr_schedule(lr, step, warmup, steps, final_frac);
        float clip_scale = grad_clip > 0.0f && norm > grad_clip ? grad_clip / (norm + 1e-6f) : 1.0f;
        moe_adamw_update(&model, lr_t, 0.9f, 0.95f, 1e-8f, weight_decay, clip_scale, step + 1);
        double t2 = now_seconds();
        write_metrics(metf, step, &metrics, &model, have_probe ? probe_sim : NULL);
        double t3 = now_seconds();
        metrics_seconds += tm + (t3 - t2);
        step_seconds += t3 - t0;
        have_probe = 0;
        double ms = (t2 - t0) * 1000.0;
        double tok_s = total_batch / (t2 - t0);
        char eta[32];
        format_eta(eta, sizeof(eta), (t2 - t_start) / (step + 1 - start_step) * (steps - step - 1));
        char compete_text[64] = "";
        if (schedule != NULL) snprintf(compete_text, sizeof(compete_text), " compete %.4f", comp);
        printf("step %4d/%d | loss %.4f | aux %.4f z %.4f%s | lr %.2e | norm %.3f | %.1f ms (fwd+bwd %.1f, opt %.1f) | "
               "%.0f tok/s | ETA %s\n", step + 1, steps, loss, aux, zl, compete_text, lr_t, norm, ms, (t1 - t0) * 1000.0,
               (t2 - t1) * 1000.0, tok_s, eta);
        fflush(stdout);
        fprintf(logf, "s:%d trl:%.6f\n", step, loss);
        fprintf(logf, "s:%d aux:%.6f z:%.6f compete:%.6f lr:%.6e norm:%.6f ms:%.2f fwdbwd_ms:%.2f opt_ms:%.2f\n", step, aux,
                zl, comp, lr_t, norm, ms, (t1 - t0) * 1000.0, (t2 - t1) * 1000.0);
    }
    fclose(logf);
    fclose(metf);
    printf("total time %.1f s; metrics took %.1f ms, %.2f%% of the step time (expert-output similarity is "
           "computed during validation and not counted here)\n", now_seconds() - t_start, metrics_seconds * 1000.0,
           step_seconds > 0 ? 100.0 * metrics_seconds / step_seconds : 0.0);
    metrics_free(&metrics);
    free(probe_sim);
    free(schedule);
    dataloader_free(&train_loader);
    dataloader_free(&val_loader);
    if (have_tokenizer) tokenizer_free(&tokenizer);
    synthetic_corpus_free(&corpus);
    moe_free(&model);
    return exit_code;
}
