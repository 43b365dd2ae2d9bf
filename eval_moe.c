/*
eval_moe — judge a trained checkpoint: validation loss, perplexity and bits per byte; multiple-choice
accuracy (llm.c's hellaswag .bin format or a JSONL file); text generation; and (hook below) the
per-layer expert analysis.

    ./eval_moe -e out/model_00000300.bin                     # synthetic corpus: its val split
    ./eval_moe -e out/model_00000300.bin -j data/tinyshakespeare/tiny_shakespeare_val.bin \
               --mc data/tinyshakespeare/cloze.jsonl --prompt "ROMEO:" -g 64

Every flag is declared once, in EVAL_FLAGS below; --help prints that table. Everything printed on
the terminal is also written to a JSON file (--json, default <checkpoint>.eval.json).

Layout: this file holds the flags and main; the evaluations are in eval.h, the multiple-choice
file reader and writer in mc.h, the MoE metrics in metrics.h.
*/
#include "eval.h"
#include "flags.h"

// ----------------------------------------------------------------------------
// the flags: one table, with defaults and help

typedef enum {
    EF_CHECKPOINT, EF_VAL, EF_BATCH, EF_SEQ_LEN, EF_VAL_BATCHES, EF_TOKENIZER, EF_SYNTH_TOKENS,
    EF_MC, EF_MC_LIMIT, EF_PROMPT, EF_GEN_LEN, EF_TEMPERATURE, EF_TOP_K_SAMPLE, EF_SEED,
    EF_ROUTER, EF_GATE_NORM, EF_GATEPRO_LAMBDA, EF_GATEPRO_PENALTY, EF_JSON, EF_ROUTING_DUMP, EF_EXPERT_TOKENS, EF_HELP, EVAL_NUM_FLAGS
} EvalFlagId;

static const FlagSpec EVAL_FLAGS[EVAL_NUM_FLAGS] = {
    [EF_CHECKPOINT]     = {"checkpoint", 'e', 1, "", "checkpoint to evaluate (required)"},
    [EF_VAL]            = {"val-data", 'j', 1, "", "validation shards (glob); empty = the synthetic corpus's val split if V=512, else no loss"},
    [EF_BATCH]          = {"batch", 'b', 1, "16", "batch size B (loss: rows per batch; multiple choice: endings per forward)"},
    [EF_SEQ_LEN]        = {"seq-len", 't', 1, "0", "sequence length T (0 = the checkpoint's maxT)"},
    [EF_VAL_BATCHES]    = {"val-batches", 'm', 1, "-1", "loss batches (-1 = one full pass, 0 = skip the loss)"},
    [EF_TOKENIZER]      = {"tokenizer", 0, 1, "", "tokenizer file (default: the one the run's config.txt records, else tokenizer.bin beside -j, else beside --mc)"},
    [EF_SYNTH_TOKENS]   = {"synthetic-tokens", 0, 1, "4000000", "train_moe's --synthetic-tokens: the synthetic val split is 1/16 of it"},
    [EF_MC]             = {"mc", 0, 1, "", "multiple-choice file: llm.c hellaswag .bin, or JSONL (ctx|ctx_a+ctx_b, endings, label, sep)"},
    [EF_MC_LIMIT]       = {"mc-limit", 0, 1, "-1", "score at most this many examples (-1 = all)"},
    [EF_PROMPT]         = {"prompt", 0, 1, "", "generate after this text (token ids separated by spaces when there is no tokenizer)"},
    [EF_GEN_LEN]        = {"gen-len", 'g', 1, "64", "tokens to generate (generation runs when --prompt or -g is given)"},
    [EF_TEMPERATURE]    = {"temperature", 0, 1, "1.0", "sampling temperature (0 = greedy)"},
    [EF_TOP_K_SAMPLE]   = {"top-k-sample", 0, 1, "0", "sample from the k most likely tokens only (0 = all V)"},
    [EF_SEED]           = {"seed", 0, 1, "", "seed of the sampling stream and the synthetic corpus (default: the checkpoint's)"},
    [EF_ROUTER]         = {"router", 0, 1, "", "override the checkpoint's router: topk | gatepro | compete | auxfree | xmoe (compete evaluates as topk)"},
    [EF_GATE_NORM]      = {"gate-norm", 0, 1, "", "override the checkpoint's gate weights: topk_softmax | softmax_topk"},
    [EF_GATEPRO_LAMBDA] = {"gatepro-lambda", 0, 1, "", "override the checkpoint's GatePro lambda (with router gatepro)"},
    [EF_JSON]           = {"json", 0, 1, "", "machine-readable results (default: <checkpoint>.eval.json)"},
    [EF_GATEPRO_PENALTY] = {"gatepro-penalty", 0, 1, "", "GatePro penalty on | off (default: as training's validation at the checkpoint's step, its start/stop window)"},
    [EF_ROUTING_DUMP]   = {"routing-dump", 0, 1, "", "write the loss pass's routing to this TSV: token, id, domain, layer, experts, weights"},
    [EF_EXPERT_TOKENS]  = {"expert-tokens", 0, 1, "1", "print each expert's most frequent tokens and top domain per layer (0 = no)"},
    [EF_HELP]           = {"help", 'h', 0, "", "print this help"},
};

// ----------------------------------------------------------------------------
// the program: main is the list of steps at the bottom; each step is one function below, in order

typedef struct {
    // options (parse_flags)
    const char* ckpt_path;
    const char* val_pattern;   // -j, or ""
    const char* mc_path;       // --mc, or ""
    const char* prompt_text;   // --prompt, or ""
    int B, T, val_batches, mc_limit, gen_len, top_k, do_generate;
    float temperature;
    size_t synth_tokens;
    int seed_given;
    uint64_t seed;                 // --seed, else the checkpoint's
    int router_flag, gate_norm_flag;  // --router, --gate-norm: the choice, or -1 when not given
    float gatepro_lambda_flag;        // --gatepro-lambda, or -1 when not given
    char json_path[4096];
    const char* dump_path;         // --routing-dump, or ""
    int show_expert_tokens;        // --expert-tokens
    int threads;
    // the model (load_model)
    MoEModel model;
    CheckpointInfo info;
    int ckpt_router, eval_router;  // the checkpoint's router, the one evaluated (before compete -> topk)
    // the data (set_up_data)
    Tokenizer tokenizer;
    int have_tok, eot;
    char tok_path[4096];
    const char* tok_source;        // how tok_path was found, for the report
    DataLoader dl;                 // the loss pass's data
    int have_dl;
    char loss_data[4096];
    int num_domains;               // D of the loss data (synthetic corpus, or the shards' label files), else 0
    char (*domain_names)[DOMAIN_NAME_MAX];  // (D) from domains.txt beside the shards
    // the results
    ExpertAnalysis xa;
    LossResult loss;
    int did_loss;
    double loss_seconds;
    MCSet set;
    MCResult mc;
    int did_mc;
    double mc_seconds;
    int* prompt;                   // end-of-text, then the prompt's tokens
    int n_prompt, n_prompt_text;
    int* gen;                      // (gen_len) generated tokens
    unsigned char* gen_text;       // prompt + generation decoded, or NULL without a tokenizer
    size_t gen_text_len;
    RoutingMode mode;       // how every forward routes: as at the checkpoint's step, never competing
    int gatepro_active;     // is GatePro's penalty on at that step?
    int gatepro_penalty_flag;  // --gatepro-penalty: -1 the checkpoint's window, 0 off, 1 on
} EvalRun;

static void print_rule(void) { printf("------------------------------------------------------------------------\n"); }

static void parse_flags(EvalRun* r, int argc, char** argv) {
    Flags flags;
    flags_parse(&flags, EVAL_FLAGS, EVAL_NUM_FLAGS, "eval_moe -e CHECKPOINT [flags]", argc, argv);
    r->ckpt_path = flags.value[EF_CHECKPOINT];
    if (!r->ckpt_path[0]) die("-e CHECKPOINT is required (see --help)");
    r->B = (int)flag_int(&flags, EF_BATCH, 1, 1 << 20);
    r->T = (int)flag_int(&flags, EF_SEQ_LEN, 0, 1 << 20);
    r->val_batches = (int)flag_int(&flags, EF_VAL_BATCHES, -1, 1L << 30);
    r->mc_limit = (int)flag_int(&flags, EF_MC_LIMIT, -1, 1L << 30);
    r->gen_len = (int)flag_int(&flags, EF_GEN_LEN, 1, 1 << 20);
    r->temperature = flag_float(&flags, EF_TEMPERATURE, 0.0f, 1e6f);
    r->top_k = (int)flag_int(&flags, EF_TOP_K_SAMPLE, 0, 1L << 30);
    r->synth_tokens = (size_t)flag_int(&flags, EF_SYNTH_TOKENS, 10000, 1L << 31);
    r->do_generate = flags.given[EF_PROMPT] || flags.given[EF_GEN_LEN];
    r->val_pattern = flags.value[EF_VAL];
    r->mc_path = flags.value[EF_MC];
    r->prompt_text = flags.value[EF_PROMPT];
    r->dump_path = flags.value[EF_ROUTING_DUMP];
    r->show_expert_tokens = (int)flag_int(&flags, EF_EXPERT_TOKENS, 0, 1);
    r->seed_given = flags.value[EF_SEED][0] != 0;
    if (r->seed_given) r->seed = (uint64_t)flag_int(&flags, EF_SEED, 0, 0xFFFFFFFFL);
    if (flags.value[EF_TOKENIZER][0]) snprintf(r->tok_path, sizeof(r->tok_path), "%s", flags.value[EF_TOKENIZER]);
    if (flags.value[EF_JSON][0]) snprintf(r->json_path, sizeof(r->json_path), "%s", flags.value[EF_JSON]);
    else snprintf(r->json_path, sizeof(r->json_path), "%s.eval.json", r->ckpt_path);
    r->threads = 1;
#ifdef _OPENMP
    r->threads = omp_get_max_threads();
#endif
    r->router_flag = flags.given[EF_ROUTER] ? flag_choice(&flags, EF_ROUTER, ROUTER_NAMES, NUM_ROUTERS) : -1;
    r->gate_norm_flag = flags.given[EF_GATE_NORM] ? flag_choice(&flags, EF_GATE_NORM, GATE_NORM_NAMES, 2) : -1;
    r->gatepro_lambda_flag = flags.given[EF_GATEPRO_LAMBDA] ? flag_float(&flags, EF_GATEPRO_LAMBDA, 0.0f, 3e38f) : -1.0f;
    static const char* const ON_OFF[] = {"off", "on"};
    r->gatepro_penalty_flag = flags.given[EF_GATEPRO_PENALTY] ? flag_choice(&flags, EF_GATEPRO_PENALTY, ON_OFF, 2) : -1;
}

// The checkpoint, without its optimizer state; then the router at evaluation: the checkpoint's
// unless overridden.
static void load_model(EvalRun* r) {
    char err[1024];
    if (moe_load_checkpoint(&r->model, r->ckpt_path, &r->info, NULL, err, sizeof(err)) != 0) die("%s", err);
    MoEModel* m = &r->model;
    freeCheck(m->m_memory); freeCheck(m->v_memory);  // evaluation needs no optimizer state
    m->m_memory = m->v_memory = NULL;
    const MoEConfig* cfg = &m->config;
    if (r->T == 0) r->T = cfg->max_seq_len;
    if (r->T > cfg->max_seq_len) die("-t %d exceeds the checkpoint's maxT = %d", r->T, cfg->max_seq_len);
    if (!r->seed_given) r->seed = r->info.seed;

    r->ckpt_router = m->router.router;
    if (r->router_flag >= 0) m->router.router = r->router_flag;
    if (r->gate_norm_flag >= 0) m->router.gate_norm = r->gate_norm_flag;
    if (r->gatepro_lambda_flag >= 0.0f) {
        if (m->router.router != ROUTER_GATEPRO) die("--gatepro-lambda needs router gatepro (give --router gatepro)");
        m->router.gatepro_lambda = r->gatepro_lambda_flag;
    }
    if (m->router.router != ROUTER_TOPK && cfg->n_expert < 2)
        die("router %s needs E >= 2 (the checkpoint has E=%d)", ROUTER_NAMES[m->router.router], cfg->n_expert);
    if (m->router.router == ROUTER_XMOE && cfg->xmoe_dim < 1) die("router xmoe: the checkpoint has no X-MoE parameters");
    r->eval_router = m->router.router;
    // CompeteSMoE evaluates as its router step: top-k on the trained router's logits.
    if (m->router.router == ROUTER_COMPETE) m->router.router = ROUTER_TOPK;
    // route as training's validation did at the checkpoint's step (GatePro's start/stop window)
    r->mode = routing_eval(r->info.step);
    if (r->gatepro_penalty_flag >= 0) {  // --gatepro-penalty: a window that holds the step, or one that does not
        if (m->router.router != ROUTER_GATEPRO) die("--gatepro-penalty needs router gatepro (give --router gatepro)");
        m->router.gatepro_start = r->gatepro_penalty_flag ? 0 : r->info.step + 1;
        m->router.gatepro_stop = -1;
    }
    r->gatepro_active = m->router.router == ROUTER_GATEPRO && gatepro_active_at(&m->router, r->info.step);
}

// The value of `key` in the run's config.txt (beside the checkpoint; train_moe writes "key = value"
// lines) into out; 0 when there is no such file or line. config_path receives the file's path.
static int run_config_value(const char* ckpt_path, const char* key, char* out, size_t n, char* config_path, size_t pn) {
    eval_beside(config_path, pn, ckpt_path, "config.txt");
    FILE* f = fopen(config_path, "r");
    if (f == NULL) return 0;
    char line[8192];
    size_t klen = strlen(key);
    int found = 0;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, key, klen) != 0 || strncmp(line + klen, " = ", 3) != 0) continue;
        line[strcspn(line, "\r\n")] = 0;
        snprintf(out, n, "%s", line + klen + 3);
        found = 1;
    }
    fclose(f);
    return found;
}

// The tokenizer: --tokenizer; else the one the run recorded in its config.txt (train_moe writes
// tokenizer_file and tokenizer_crc32 there); else tokenizer.bin beside the -j shards, else beside
// --mc. A tokenizer whose crc32 differs from the recorded one is refused, unless given by --tokenizer
// (then a warning). Then the loss pass's data: -j, else the synthetic corpus's val split for a
// V=512 model, else none.
static void set_up_data(EvalRun* r) {
    char err[1024], config_path[4096], recorded[4096] = "", recorded_crc[64] = "";
    int V = r->model.config.vocab_size;
    run_config_value(r->ckpt_path, "tokenizer_crc32", recorded_crc, sizeof(recorded_crc), config_path, sizeof(config_path));
    if (r->tok_path[0]) r->tok_source = "--tokenizer";
    else if (run_config_value(r->ckpt_path, "tokenizer_file", recorded, sizeof(recorded), config_path, sizeof(config_path))) {
        if (eval_file_exists(recorded)) {
            snprintf(r->tok_path, sizeof(r->tok_path), "%s", recorded);
            r->tok_source = "recorded in the run's config.txt";
        } else {
            fprintf(stderr, "warning: %s names the tokenizer %s, which is not there; looking beside -j/--mc "
                            "(or give --tokenizer FILE)\n", config_path, recorded);
        }
    }
    if (!r->tok_path[0]) {
        char guess[4096];
        if (r->val_pattern[0]) {
            eval_beside(guess, sizeof(guess), r->val_pattern, "tokenizer.bin");
            if (eval_file_exists(guess)) { snprintf(r->tok_path, sizeof(r->tok_path), "%s", guess); r->tok_source = "beside -j"; }
        }
        if (!r->tok_path[0] && r->mc_path[0]) {
            eval_beside(guess, sizeof(guess), r->mc_path, "tokenizer.bin");
            if (eval_file_exists(guess)) { snprintf(r->tok_path, sizeof(r->tok_path), "%s", guess); r->tok_source = "beside --mc"; }
        }
    }
    if (r->tok_path[0]) {
        if (tokenizer_load(&r->tokenizer, r->tok_path, err, sizeof(err)) != 0) die("%s", err);
        if ((int)r->tokenizer.vocab_size != V)
            die("tokenizer %s has V=%u but the checkpoint has V=%d: not this model's tokenizer", r->tok_path,
                r->tokenizer.vocab_size, V);
        char crc[16];
        snprintf(crc, sizeof(crc), "%08x", r->tokenizer.file_crc32);
        if (recorded_crc[0] && strcmp(crc, recorded_crc) != 0) {
            if (strcmp(r->tok_source, "--tokenizer") != 0)
                die("tokenizer %s (%s) has crc32 %s, but the model was trained with a tokenizer of crc32 %s (%s): "
                    "not the same file; give --tokenizer FILE to use a tokenizer anyway", r->tok_path, r->tok_source,
                    crc, recorded_crc, config_path);
            fprintf(stderr, "warning: tokenizer %s has crc32 %s, but the model was trained with a tokenizer of crc32 %s "
                            "(%s)\n", r->tok_path, crc, recorded_crc, config_path);
        }
        r->have_tok = 1;
    }
    r->eot = r->have_tok ? (int)r->tokenizer.eot_token : V - 1;

    if (r->val_batches == 0) return;
    if (r->val_pattern[0]) {
        if (dataloader_open(&r->dl, r->val_pattern, r->B, r->T, V, 0, 0, err, sizeof(err)) != 0) die("%s", err);
        snprintf(r->loss_data, sizeof(r->loss_data), "%s", r->val_pattern);
        r->have_dl = 1;
        if (r->dl.num_domains > 0) {  // labelled shards: the expert x domain analysis, named by domains.txt
            r->num_domains = r->dl.num_domains;
            r->domain_names = (char (*)[DOMAIN_NAME_MAX])callocCheck((size_t)r->num_domains, DOMAIN_NAME_MAX);
            if (domain_names_load(r->dl.shard_paths[0], r->num_domains, r->domain_names, err, sizeof(err)) < 0)
                die("%s", err);
        }
    } else if (V == SYNTH_VOCAB) {
        SyntheticCorpus corpus;
        synthetic_corpus_generate(&corpus, 1, r->synth_tokens / 16, r->seed);  // the val split only (train_len 1)
        if (dataloader_open_memory(&r->dl, corpus.val_tokens, corpus.val_domains, corpus.val_len, r->B, r->T, V, 0, 0,
                                   err, sizeof(err)) != 0) die("%s", err);
        synthetic_corpus_free(&corpus);
        r->num_domains = SYNTH_DOMAINS;
        snprintf(r->loss_data, sizeof(r->loss_data), "synthetic val split (seed %llu, %zu tokens)",
                 (unsigned long long)r->seed, r->synth_tokens / 16);
        r->have_dl = 1;
    }
}

static void print_header(const EvalRun* r) {
    const MoEConfig* cfg = &r->model.config;
    const RouterConfig* rc = &r->model.router;
    printf("eval_moe: %s (step %d), %d threads\n", r->ckpt_path, r->info.step, r->threads);
    printf("model     L=%d NH=%d C=%d E=%d K=%d H=%d maxT=%d V=%d (Vp=%d), %zu parameters\n", cfg->num_layers,
           cfg->num_heads, cfg->channels, cfg->n_expert, cfg->top_k, cfg->expert_hidden, cfg->max_seq_len,
           cfg->vocab_size, cfg->padded_vocab_size, r->model.num_parameters);
    printf("router    %s%s (checkpoint: %s), gate-norm %s", ROUTER_NAMES[r->eval_router],
           r->eval_router == ROUTER_COMPETE ? " = topk on the trained router" : "", ROUTER_NAMES[r->ckpt_router],
           GATE_NORM_NAMES[rc->gate_norm]);
    if (rc->router == ROUTER_GATEPRO)
        printf(", GatePro penalty %s at step %d, lambda %g", r->gatepro_active ? "on" : "off", r->info.step, rc->gatepro_lambda);
    if (r->have_tok) printf("\ntokenizer %s (%s, crc32 %08x)\n", r->tok_path, r->tok_source, r->tokenizer.file_crc32);
    else printf("\ntokenizer (none)\n");
}

// 1. loss, perplexity, bits per byte over the loss data; its tokens feed the expert analysis
static void evaluate_loss(EvalRun* r) {
    expert_analysis_begin(&r->xa, &r->model, r->num_domains, r->domain_names, r->seed);
    if (r->dump_path[0] && !r->have_dl)
        die("--routing-dump needs a loss pass (-j, or a synthetic-corpus model, and -m != 0)");
    if (r->have_dl) {
        double t0 = now_seconds();
        double* token_bytes = r->have_tok ? token_byte_counts(&r->tokenizer) : NULL;
        if (r->dump_path[0]) {
            r->xa.dump = fopen(r->dump_path, "w");
            if (r->xa.dump == NULL) die("--routing-dump %s: cannot create (%s)", r->dump_path, strerror(errno));
            fprintf(r->xa.dump, "token\tid\tdomain\tlayer\texperts\tweights\n");
        }
        eval_loss(&r->model, &r->mode, &r->dl, r->val_batches, token_bytes, &r->xa, &r->loss);
        if (r->xa.dump != NULL) {
            if (fclose(r->xa.dump) != 0) die("--routing-dump %s: write failed", r->dump_path);
            r->xa.dump = NULL;
        }
        r->loss_seconds = now_seconds() - t0;
        free(token_bytes);
        dataloader_free(&r->dl);
        r->did_loss = 1;
    }
    const LossResult* loss = &r->loss;
    print_rule();
    if (r->did_loss) {
        printf("validation     %s\n", r->loss_data);
        if (loss->batches == loss->available_batches)
            printf("  batches      all %d of B=%d x T=%d = %ld tokens: one full pass (%.1f s)\n", loss->batches, r->B,
                   r->T, loss->tokens, r->loss_seconds);
        else
            printf("  batches      the first %d of %d, B=%d x T=%d = %ld tokens (-m %d; -m -1 for a full pass) (%.1f s)\n",
                   loss->batches, loss->available_batches, r->B, r->T, loss->tokens, r->val_batches, r->loss_seconds);
        printf("  loss         %.6f nats/token\n", loss->loss);
        printf("  perplexity   %.4f\n", loss->perplexity);
        if (loss->have_bpb) printf("  bits/byte    %.6f (%.0f target bytes)\n", loss->bpb, loss->bytes);
        else printf("  bits/byte    - (%s)\n", r->have_tok ? "no target bytes" : "no tokenizer");
        if (r->dump_path[0])
            printf("  routing dump %s (%ld tokens x %d layers)\n", r->dump_path, r->xa.dump_token, r->model.config.num_layers);
    } else {
        printf("validation     skipped (%s)\n", r->val_batches == 0 ? "-m 0" : "no -j and not a synthetic-corpus model");
    }
}

// the per-layer expert metrics on the loss pass's tokens
// and each expert's most frequent tokens and top domain
static void report_experts(const EvalRun* r) {
    expert_analysis_report(&r->xa, stdout, NULL);
    if (r->show_expert_tokens) expert_tokens_report(&r->xa, r->have_tok ? &r->tokenizer : NULL, stdout, NULL);
}

// 2. multiple choice
static void multiple_choice(EvalRun* r) {
    if (!r->mc_path[0]) return;
    char err[1024];
    if (mc_load(r->mc_path, r->have_tok ? &r->tokenizer : NULL, r->model.config.vocab_size, r->eot, &r->set, err,
                sizeof(err)) != 0) die("%s", err);
    double t0 = now_seconds();
    mc_evaluate(&r->model, &r->mode, &r->set, r->mc_limit, r->B, r->T, r->eot, &r->mc, NULL);
    r->mc_seconds = now_seconds() - t0;
    if (r->mc.examples == 0) die("%s: --mc-limit 0 scores no example: no accuracy", r->mc_path);
    if (r->mc.scored == 0)
        die("%s: none of its %d examples could be scored at T=%d (each is longer than T even after truncating its "
            "context): no accuracy", r->mc_path, r->mc.examples, r->T);
    r->did_mc = 1;
    const MCResult* mc = &r->mc;
    print_rule();
    printf("multiple choice %s (%s), T=%d, %.1f s\n", r->mc_path, r->set.format, mc->T_run, r->mc_seconds);
    printf("  scored       %d of the %d examples in the file%s (truncated and skipped below)\n", mc->scored, r->set.n,
           mc->examples < r->set.n ? " (--mc-limit)" : "");
    printf("  acc          %.4f (%d/%d)\n", mc->acc, mc->correct, mc->scored);
    printf("  acc_norm     %.4f (%d/%d)\n", mc->acc_norm, mc->correct_norm, mc->scored);
    printf("  chance       %.4f\n", mc->chance);
    printf("  truncated    %d (context cut on the left to fit T=%d)\n", mc->truncated, r->T);
    printf("  skipped      %d (an ending alone longer than T)\n", mc->skipped);
}

// The prompt as tokens: end-of-text (documents start with it, as in the shards), then the text
// encoded, or without a tokenizer the token ids it lists.
static void encode_prompt(EvalRun* r) {
    char err[1024];
    int V = r->model.config.vocab_size;
    const char* p = r->prompt_text;
    size_t plen = strlen(p);
    r->prompt = (int*)mallocCheck(sizeof(int) * (plen + 2));
    r->prompt[r->n_prompt++] = r->eot;
    if (r->have_tok) {
        uint32_t* ids;
        size_t n_ids;
        if (tokenizer_encode(&r->tokenizer, (const unsigned char*)p, plen, &ids, &n_ids, err, sizeof(err)) != 0)
            die("--prompt: %s", err);
        for (size_t i = 0; i < n_ids; i++) r->prompt[r->n_prompt++] = (int)ids[i];
        free(ids);
    } else {  // token ids separated by spaces
        char* end;
        const char* s = p;
        for (;;) {
            while (*s == ' ' || *s == ',') s++;
            if (!*s) break;
            errno = 0;
            long id = strtol(s, &end, 10);
            if (end == s || errno || id < 0 || id >= V)
                die("--prompt: there is no tokenizer (no --tokenizer, none recorded in the run's config.txt, no "
                    "tokenizer.bin beside -j or --mc), so the prompt must be token ids in [0, %d) separated by "
                    "spaces; got '%s'", V, s);
            r->prompt[r->n_prompt++] = (int)id;
            s = end;
        }
    }
    r->n_prompt_text = r->n_prompt - 1;
}

// 3. generation
static void generate_text(EvalRun* r) {
    if (!r->do_generate) return;
    char err[1024];
    encode_prompt(r);
    r->gen = (int*)mallocCheck(sizeof(int) * (size_t)r->gen_len);
    uint64_t rng = derive_seed(r->seed, STREAM_SAMPLE);
    generate(&r->model, &r->mode, r->prompt, r->n_prompt, r->gen_len, r->temperature, r->top_k, r->eot, &rng, r->gen);
    print_rule();
    printf("generation     %d tokens, temperature %g, top-k %d, seed %llu\n", r->gen_len, r->temperature, r->top_k,
           (unsigned long long)r->seed);
    int n_text = r->n_prompt_text, n_all = r->n_prompt_text + r->gen_len;
    if (r->have_tok) {
        uint32_t* all = (uint32_t*)mallocCheck(sizeof(uint32_t) * (size_t)n_all);
        for (int i = 0; i < n_text; i++) all[i] = (uint32_t)r->prompt[1 + i];
        for (int i = 0; i < r->gen_len; i++) all[n_text + i] = (uint32_t)r->gen[i];
        if (tokenizer_decode(&r->tokenizer, all, (size_t)n_all, &r->gen_text, &r->gen_text_len, err, sizeof(err)) != 0)
            die("%s", err);
        free(all);
        fwrite(r->gen_text, 1, r->gen_text_len, stdout);
        printf("\n");
    } else {
        for (int i = 0; i < n_text; i++) printf("%d ", r->prompt[1 + i]);
        printf("|");
        for (int i = 0; i < r->gen_len; i++) printf(" %d", r->gen[i]);
        printf("\n");
    }
}

// the JSON file: every number printed above
static void write_json(const EvalRun* r) {
    const MoEModel* m = &r->model;
    const MoEConfig* cfg = &m->config;
    FILE* jf = fopen(r->json_path, "w");
    if (jf == NULL) die("cannot write %s: %s", r->json_path, strerror(errno));
    fprintf(jf, "{\n  \"checkpoint\": ");
    json_write_cstr(jf, r->ckpt_path);
    fprintf(jf, ",\n  \"step\": %d,\n  \"seed\": %llu,\n  \"threads\": %d,\n", r->info.step, (unsigned long long)r->seed,
            r->threads);
    fprintf(jf, "  \"model\": {\"maxT\": %d, \"V\": %d, \"Vp\": %d, \"L\": %d, \"NH\": %d, \"C\": %d, \"E\": %d, \"K\": %d, "
                "\"H\": %d, \"parameters\": %zu},\n", cfg->max_seq_len, cfg->vocab_size, cfg->padded_vocab_size,
            cfg->num_layers, cfg->num_heads, cfg->channels, cfg->n_expert, cfg->top_k, cfg->expert_hidden, m->num_parameters);
    fprintf(jf, "  \"router\": {\"router\": \"%s\", \"checkpoint_router\": \"%s\", \"forward_router\": \"%s\", "
                "\"gate_norm\": \"%s\", \"gatepro_lambda\": ", ROUTER_NAMES[r->eval_router], ROUTER_NAMES[r->ckpt_router],
            ROUTER_NAMES[m->router.router], GATE_NORM_NAMES[m->router.gate_norm]);
    json_write_number(jf, m->router.gatepro_lambda);
    fprintf(jf, ", \"gatepro_active\": %d},\n  \"tokenizer\": ", r->gatepro_active);
    if (r->have_tok) {
        json_write_cstr(jf, r->tok_path);
        fprintf(jf, ", \"tokenizer_found\": ");
        json_write_cstr(jf, r->tok_source);
        fprintf(jf, ", \"tokenizer_crc32\": \"%08x\"", r->tokenizer.file_crc32);
    } else {
        fputs("null", jf);
    }
    fprintf(jf, ",\n  \"loss\": ");
    if (r->did_loss) {
        const LossResult* loss = &r->loss;
        fprintf(jf, "{\"data\": ");
        json_write_cstr(jf, r->loss_data);
        fprintf(jf, ", \"batch\": %d, \"seq_len\": %d, \"batches\": %d, \"available_batches\": %d, \"full_pass\": %s, "
                    "\"tokens\": %ld, \"loss\": ", r->B, r->T, loss->batches, loss->available_batches,
                loss->batches == loss->available_batches ? "true" : "false", loss->tokens);
        json_write_number(jf, loss->loss);
        fprintf(jf, ", \"perplexity\": ");
        json_write_number(jf, loss->perplexity);
        fprintf(jf, ", \"bits_per_byte\": ");
        if (loss->have_bpb) json_write_number(jf, loss->bpb); else fputs("null", jf);
        fprintf(jf, ", \"target_bytes\": %.0f, \"nll_sum\": ", loss->bytes);
        json_write_number(jf, loss->nll_sum);
        fprintf(jf, ", \"seconds\": %.3f}", r->loss_seconds);
    } else {
        fputs("null", jf);
    }
    fprintf(jf, ",\n  \"experts\": ");
    expert_analysis_report(&r->xa, NULL, jf);
    fprintf(jf, ",\n  \"expert_tokens\": ");
    expert_tokens_report(&r->xa, r->have_tok ? &r->tokenizer : NULL, NULL, jf);
    fprintf(jf, ",\n  \"domains\": [");
    for (int d = 0; d < r->xa.num_domains; d++) { if (d) fputs(", ", jf); json_write_cstr(jf, r->xa.domain_names[d]); }
    fputs("]", jf);
    fprintf(jf, ",\n  \"mc\": ");
    if (r->did_mc) {
        const MCResult* mc = &r->mc;
        fprintf(jf, "{\"file\": ");
        json_write_cstr(jf, r->mc_path);
        fprintf(jf, ", \"format\": \"%s\", \"in_file\": %d, \"examples\": %d, \"scored\": %d, \"truncated\": %d, \"skipped\": %d, "
                    "\"correct\": %d, \"correct_norm\": %d, \"acc\": ", r->set.format, r->set.n, mc->examples, mc->scored,
                mc->truncated, mc->skipped, mc->correct, mc->correct_norm);
        json_write_number(jf, mc->acc);
        fprintf(jf, ", \"acc_norm\": ");
        json_write_number(jf, mc->acc_norm);
        fprintf(jf, ", \"chance\": ");
        json_write_number(jf, mc->chance);
        fprintf(jf, ", \"seq_len\": %d, \"batch\": %d, \"seconds\": %.3f}", mc->T_run, r->B, r->mc_seconds);
    } else {
        fputs("null", jf);
    }
    fprintf(jf, ",\n  \"generation\": ");
    if (r->do_generate) {
        fprintf(jf, "{\"temperature\": ");
        json_write_number(jf, r->temperature);
        fprintf(jf, ", \"top_k\": %d, \"length\": %d, \"prompt_tokens\": [", r->top_k, r->gen_len);
        for (int i = 0; i < r->n_prompt_text; i++) fprintf(jf, "%s%d", i ? ", " : "", r->prompt[1 + i]);
        fprintf(jf, "], \"tokens\": [");
        for (int i = 0; i < r->gen_len; i++) fprintf(jf, "%s%d", i ? ", " : "", r->gen[i]);
        fprintf(jf, "], \"text\": ");
        if (r->gen_text != NULL) json_write_string(jf, r->gen_text, r->gen_text_len); else fputs("null", jf);
        fputc('}', jf);
    } else {
        fputs("null", jf);
    }
    fprintf(jf, "\n}\n");
    if (fclose(jf) != 0) die("cannot write %s: %s", r->json_path, strerror(errno));
    printf("wrote %s\n", r->json_path);
}

static void finish(EvalRun* r) {
    free(r->prompt); free(r->gen); free(r->gen_text);
    mc_free(&r->set);
    if (r->have_tok) tokenizer_free(&r->tokenizer);
    expert_analysis_free(&r->xa);
    freeCheck(r->domain_names);
    moe_free(&r->model);
}

int main(int argc, char** argv) {
    static EvalRun run;  // zeroed
    parse_flags(&run, argc, argv);
    load_model(&run);
    set_up_data(&run);
    print_header(&run);
    evaluate_loss(&run);
    report_experts(&run);
    multiple_choice(&run);
    generate_text(&run);
    print_rule();
    write_json(&run);
    finish(&run);
    return 0;
}
