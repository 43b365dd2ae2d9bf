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
    EF_ROUTER, EF_GATE_NORM, EF_GATEPRO_LAMBDA, EF_JSON, EF_HELP, EVAL_NUM_FLAGS
} EvalFlagId;

static const FlagSpec EVAL_FLAGS[EVAL_NUM_FLAGS] = {
    [EF_CHECKPOINT]     = {"checkpoint", 'e', 1, "", "checkpoint to evaluate (required)"},
    [EF_VAL]            = {"val-data", 'j', 1, "", "validation shards (glob); empty = the synthetic corpus's val split if V=512, else no loss"},
    [EF_BATCH]          = {"batch", 'b', 1, "16", "batch size B (loss: rows per batch; multiple choice: endings per forward)"},
    [EF_SEQ_LEN]        = {"seq-len", 't', 1, "0", "sequence length T (0 = the checkpoint's maxT)"},
    [EF_VAL_BATCHES]    = {"val-batches", 'm', 1, "-1", "loss batches (-1 = one full pass, 0 = skip the loss)"},
    [EF_TOKENIZER]      = {"tokenizer", 0, 1, "", "tokenizer file (default: tokenizer.bin beside the -j shards, else beside --mc)"},
    [EF_SYNTH_TOKENS]   = {"synthetic-tokens", 0, 1, "4000000", "train_moe's --synthetic-tokens: the synthetic val split is 1/16 of it"},
    [EF_MC]             = {"mc", 0, 1, "", "multiple-choice file: llm.c hellaswag .bin, or JSONL (ctx|ctx_a+ctx_b, endings, label, sep)"},
    [EF_MC_LIMIT]       = {"mc-limit", 0, 1, "-1", "score at most this many examples (-1 = all)"},
    [EF_PROMPT]         = {"prompt", 0, 1, "", "generate after this text (token ids separated by spaces when there is no tokenizer)"},
    [EF_GEN_LEN]        = {"gen-len", 'g', 1, "64", "tokens to generate (generation runs when --prompt or -g is given)"},
    [EF_TEMPERATURE]    = {"temperature", 0, 1, "1.0", "sampling temperature (0 = greedy)"},
    [EF_TOP_K_SAMPLE]   = {"top-k-sample", 0, 1, "0", "sample from the k most likely tokens only (0 = all V)"},
    [EF_SEED]           = {"seed", 0, 1, "", "seed of the sampling stream and the synthetic corpus (default: the checkpoint's)"},
    [EF_ROUTER]         = {"router", 0, 1, "", "override the checkpoint's router: topk | gatepro | compete (compete evaluates as topk)"},
    [EF_GATE_NORM]      = {"gate-norm", 0, 1, "", "override the checkpoint's gate weights: topk_softmax | softmax_topk"},
    [EF_GATEPRO_LAMBDA] = {"gatepro-lambda", 0, 1, "", "override the checkpoint's GatePro lambda (with router gatepro)"},
    [EF_JSON]           = {"json", 0, 1, "", "machine-readable results (default: <checkpoint>.eval.json)"},
    [EF_HELP]           = {"help", 'h', 0, "", "print this help"},
};

// ----------------------------------------------------------------------------
// the program

static void print_rule(void) { printf("------------------------------------------------------------------------\n"); }

int eval_main(int argc, char** argv) {
    Flags flags;
    flags_parse(&flags, EVAL_FLAGS, EVAL_NUM_FLAGS, "eval_moe -e CHECKPOINT [flags]", argc, argv);
    const char* ckpt_path = flags.value[EF_CHECKPOINT];
    if (!ckpt_path[0]) die("-e CHECKPOINT is required (see --help)");
    int B = (int)flag_int(&flags, EF_BATCH, 1, 1 << 20);
    int T = (int)flag_int(&flags, EF_SEQ_LEN, 0, 1 << 20);
    int val_batches = (int)flag_int(&flags, EF_VAL_BATCHES, -1, 1L << 30);
    int mc_limit = (int)flag_int(&flags, EF_MC_LIMIT, -1, 1L << 30);
    int gen_len = (int)flag_int(&flags, EF_GEN_LEN, 1, 1 << 20);
    float temperature = flag_float(&flags, EF_TEMPERATURE, 0.0f, 1e6f);
    int top_k = (int)flag_int(&flags, EF_TOP_K_SAMPLE, 0, 1L << 30);
    size_t synth_tokens = (size_t)flag_int(&flags, EF_SYNTH_TOKENS, 10000, 1L << 31);
    int do_generate = flags.given[EF_PROMPT] || flags.given[EF_GEN_LEN];

    // --- the checkpoint
    char err[1024];
    MoEModel model;
    memset(&model, 0, sizeof(model));
    CheckpointInfo info;
    memset(&info, 0, sizeof(info));
    if (moe_load_checkpoint(&model, ckpt_path, &info, NULL, err, sizeof(err)) != 0) die("%s", err);
    free(model.m_memory); free(model.v_memory);  // evaluation needs no optimizer state
    model.m_memory = model.v_memory = NULL;
    const MoEConfig* cfg = &model.config;
    int V = cfg->vocab_size;
    if (T == 0) T = cfg->max_seq_len;
    if (T > cfg->max_seq_len) die("-t %d exceeds the checkpoint's maxT = %d", T, cfg->max_seq_len);
    uint64_t seed = flags.value[EF_SEED][0] ? (uint64_t)flag_int(&flags, EF_SEED, 0, 0xFFFFFFFFL) : info.seed;

    // --- router at evaluation: the checkpoint's unless overridden
    int ckpt_router = model.router.router;
    if (flags.given[EF_ROUTER]) model.router.router = flag_choice(&flags, EF_ROUTER, ROUTER_NAMES, 3);
    if (flags.given[EF_GATE_NORM]) model.router.gate_norm = flag_choice(&flags, EF_GATE_NORM, GATE_NORM_NAMES, 2);
    if (flags.given[EF_GATEPRO_LAMBDA]) {
        if (model.router.router != ROUTER_GATEPRO) die("--gatepro-lambda needs router gatepro (give --router gatepro)");
        model.router.gatepro_lambda = flag_float(&flags, EF_GATEPRO_LAMBDA, 0.0f, 3e38f);
    }
    if (model.router.router == ROUTER_GATEPRO && cfg->n_expert < 2) die("router gatepro needs E >= 2 (the checkpoint has E=%d)", cfg->n_expert);
    int eval_router = model.router.router;
    // CompeteSMoE evaluates as its router step: top-k on the trained router's logits.
    if (model.router.router == ROUTER_COMPETE) model.router.router = ROUTER_TOPK;
    model.gatepro_active = model.router.router == ROUTER_GATEPRO;

    // --- tokenizer: --tokenizer, else tokenizer.bin beside the -j shards, else beside --mc
    Tokenizer tokenizer;
    memset(&tokenizer, 0, sizeof(tokenizer));
    int have_tok = 0;
    char tok_path[4096] = "";
    if (flags.value[EF_TOKENIZER][0]) snprintf(tok_path, sizeof(tok_path), "%s", flags.value[EF_TOKENIZER]);
    else {
        char guess[4096];
        if (flags.value[EF_VAL][0]) {
            eval_beside(guess, sizeof(guess), flags.value[EF_VAL], "tokenizer.bin");
            if (eval_file_exists(guess)) snprintf(tok_path, sizeof(tok_path), "%s", guess);
        }
        if (!tok_path[0] && flags.value[EF_MC][0]) {
            eval_beside(guess, sizeof(guess), flags.value[EF_MC], "tokenizer.bin");
            if (eval_file_exists(guess)) snprintf(tok_path, sizeof(tok_path), "%s", guess);
        }
    }
    if (tok_path[0]) {
        if (tokenizer_load(&tokenizer, tok_path, err, sizeof(err)) != 0) die("%s", err);
        if ((int)tokenizer.vocab_size != V)
            die("tokenizer %s has V=%u but the checkpoint has V=%d: not this model's tokenizer", tok_path, tokenizer.vocab_size, V);
        have_tok = 1;
    }
    int eot = have_tok ? (int)tokenizer.eot_token : V - 1;

    // --- header of the report
    char json_path[4096];
    if (flags.value[EF_JSON][0]) snprintf(json_path, sizeof(json_path), "%s", flags.value[EF_JSON]);
    else snprintf(json_path, sizeof(json_path), "%s.eval.json", ckpt_path);
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    printf("eval_moe: %s (step %d), %d threads\n", ckpt_path, info.step, threads);
    printf("model     L=%d NH=%d C=%d E=%d K=%d H=%d maxT=%d V=%d (Vp=%d), %zu parameters\n", cfg->num_layers,
           cfg->num_heads, cfg->channels, cfg->n_expert, cfg->top_k, cfg->expert_hidden, cfg->max_seq_len, V,
           cfg->padded_vocab_size, model.num_parameters);
    printf("router    %s%s (checkpoint: %s), gate-norm %s", ROUTER_NAMES[eval_router],
           eval_router == ROUTER_COMPETE ? " = topk on the trained router" : "", ROUTER_NAMES[ckpt_router],
           GATE_NORM_NAMES[model.router.gate_norm]);
    if (model.router.router == ROUTER_GATEPRO) printf(", GatePro penalty on, lambda %g", model.router.gatepro_lambda);
    printf("\ntokenizer %s\n", have_tok ? tok_path : "(none)");

    // --- 1. loss
    LossResult loss;
    memset(&loss, 0, sizeof(loss));
    int did_loss = 0;
    double loss_seconds = 0.0;
    char loss_data[4096] = "";
    ExpertAnalysis xa;
    expert_analysis_begin(&xa, &model);
    if (val_batches != 0) {
        DataLoader dl;
        int have_dl = 0;
        if (flags.value[EF_VAL][0]) {
            if (dataloader_open(&dl, flags.value[EF_VAL], B, T, V, 0, 0, err, sizeof(err)) != 0) die("%s", err);
            snprintf(loss_data, sizeof(loss_data), "%s", flags.value[EF_VAL]);
            have_dl = 1;
        } else if (V == SYNTH_VOCAB) {
            SyntheticCorpus corpus;
            synthetic_corpus_generate(&corpus, 1, synth_tokens / 16, seed);  // the val split only (train_len 1)
            if (dataloader_open_memory(&dl, corpus.val_tokens, corpus.val_domains, corpus.val_len, B, T, V, 0, 0,
                                       err, sizeof(err)) != 0) die("%s", err);
            synthetic_corpus_free(&corpus);
            snprintf(loss_data, sizeof(loss_data), "synthetic val split (seed %llu, %zu tokens)",
                     (unsigned long long)seed, synth_tokens / 16);
            have_dl = 1;
        }
        if (have_dl) {
            double t0 = eval_now();
            double* token_bytes = have_tok ? token_byte_counts(&tokenizer) : NULL;
            eval_loss(&model, &dl, val_batches, token_bytes, &xa, &loss);
            loss_seconds = eval_now() - t0;
            free(token_bytes);
            dataloader_free(&dl);
            did_loss = 1;
        }
    }
    print_rule();
    if (did_loss) {
        printf("validation     %s\n", loss_data);
        printf("  batches      %d of B=%d x T=%d = %ld tokens (%.1f s)\n", loss.batches, B, T, loss.tokens, loss_seconds);
        printf("  loss         %.6f nats/token\n", loss.loss);
        printf("  perplexity   %.4f\n", loss.perplexity);
        if (loss.have_bpb) printf("  bits/byte    %.6f (%.0f target bytes)\n", loss.bpb, loss.bytes);
        else printf("  bits/byte    - (%s)\n", have_tok ? "no target bytes" : "no tokenizer");
    } else {
        printf("validation     skipped (%s)\n", val_batches == 0 ? "-m 0" : "no -j and not a synthetic-corpus model");
    }
    // the hook: per-layer expert metrics on the loss pass's tokens
    expert_analysis_report(&xa, stdout, NULL);

    // --- 2. multiple choice
    MCResult mc;
    memset(&mc, 0, sizeof(mc));
    MCSet set;
    memset(&set, 0, sizeof(set));
    double mc_seconds = 0.0;
    int did_mc = 0;
    if (flags.value[EF_MC][0]) {
        if (mc_load(flags.value[EF_MC], have_tok ? &tokenizer : NULL, V, eot, &set, err, sizeof(err)) != 0) die("%s", err);
        double t0 = eval_now();
        mc_evaluate(&model, &set, mc_limit, B, T, eot, &mc, NULL);
        mc_seconds = eval_now() - t0;
        did_mc = 1;
        print_rule();
        printf("multiple choice %s (%s), %d examples, T=%d, %.1f s\n", flags.value[EF_MC], set.format, mc.examples,
               mc.T_run, mc_seconds);
        printf("  acc          %.4f (%d/%d)\n", mc.acc, mc.correct, mc.scored);
        printf("  acc_norm     %.4f (%d/%d)\n", mc.acc_norm, mc.correct_norm, mc.scored);
        printf("  chance       %.4f\n", mc.chance);
        printf("  truncated    %d (context cut on the left to fit T=%d)\n", mc.truncated, T);
        printf("  skipped      %d (an ending alone longer than T)\n", mc.skipped);
    }

    // --- 3. generation
    int* prompt = NULL;
    int n_prompt = 0, n_prompt_text = 0;
    int* gen = NULL;
    unsigned char* gen_text = NULL;
    size_t gen_text_len = 0;
    if (do_generate) {
        const char* p = flags.value[EF_PROMPT];
        size_t plen = strlen(p);
        prompt = (int*)mallocCheck(sizeof(int) * (plen + 2));
        prompt[n_prompt++] = eot;  // documents start with end-of-text, as in the shards
        if (have_tok) {
            uint32_t* ids;
            size_t n_ids;
            if (tokenizer_encode(&tokenizer, (const unsigned char*)p, plen, &ids, &n_ids, err, sizeof(err)) != 0)
                die("--prompt: %s", err);
            for (size_t i = 0; i < n_ids; i++) prompt[n_prompt++] = (int)ids[i];
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
                    die("--prompt: without a tokenizer the prompt is token ids in [0, %d) separated by spaces; got '%s'", V, s);
                prompt[n_prompt++] = (int)id;
                s = end;
            }
        }
        n_prompt_text = n_prompt - 1;
        gen = (int*)mallocCheck(sizeof(int) * (size_t)gen_len);
        uint64_t rng = derive_seed(seed, STREAM_SAMPLE);
        generate(&model, prompt, n_prompt, gen_len, temperature, top_k, eot, &rng, gen);
        print_rule();
        printf("generation     %d tokens, temperature %g, top-k %d, seed %llu\n", gen_len, temperature, top_k,
               (unsigned long long)seed);
        if (have_tok) {
            uint32_t* all = (uint32_t*)mallocCheck(sizeof(uint32_t) * (size_t)(n_prompt_text + gen_len));
            for (int i = 0; i < n_prompt_text; i++) all[i] = (uint32_t)prompt[1 + i];
            for (int i = 0; i < gen_len; i++) all[n_prompt_text + i] = (uint32_t)gen[i];
            if (tokenizer_decode(&tokenizer, all, (size_t)(n_prompt_text + gen_len), &gen_text, &gen_text_len, err, sizeof(err)) != 0)
                die("%s", err);
            free(all);
            fwrite(gen_text, 1, gen_text_len, stdout);
            printf("\n");
        } else {
            for (int i = 0; i < n_prompt_text; i++) printf("%d ", prompt[1 + i]);
            printf("|");
            for (int i = 0; i < gen_len; i++) printf(" %d", gen[i]);
            printf("\n");
        }
    }
    print_rule();

    // --- the JSON file: every number above
    FILE* jf = fopen(json_path, "w");
    if (jf == NULL) die("cannot write %s: %s", json_path, strerror(errno));
    fprintf(jf, "{\n  \"checkpoint\": ");
    json_write_cstr(jf, ckpt_path);
    fprintf(jf, ",\n  \"step\": %d,\n  \"seed\": %llu,\n  \"threads\": %d,\n", info.step, (unsigned long long)seed, threads);
    fprintf(jf, "  \"model\": {\"maxT\": %d, \"V\": %d, \"Vp\": %d, \"L\": %d, \"NH\": %d, \"C\": %d, \"E\": %d, \"K\": %d, "
                "\"H\": %d, \"parameters\": %zu},\n", cfg->max_seq_len, V, cfg->padded_vocab_size, cfg->num_layers,
            cfg->num_heads, cfg->channels, cfg->n_expert, cfg->top_k, cfg->expert_hidden, model.num_parameters);
    fprintf(jf, "  \"router\": {\"router\": \"%s\", \"checkpoint_router\": \"%s\", \"forward_router\": \"%s\", "
                "\"gate_norm\": \"%s\", \"gatepro_lambda\": ", ROUTER_NAMES[eval_router], ROUTER_NAMES[ckpt_router],
            ROUTER_NAMES[model.router.router], GATE_NORM_NAMES[model.router.gate_norm]);
    json_write_number(jf, model.router.gatepro_lambda);
    fprintf(jf, ", \"gatepro_active\": %d},\n  \"tokenizer\": ", model.gatepro_active);
    if (have_tok) json_write_cstr(jf, tok_path); else fputs("null", jf);
    fprintf(jf, ",\n  \"loss\": ");
    if (did_loss) {
        fprintf(jf, "{\"data\": ");
        json_write_cstr(jf, loss_data);
        fprintf(jf, ", \"batch\": %d, \"seq_len\": %d, \"batches\": %d, \"tokens\": %ld, \"loss\": ", B, T, loss.batches, loss.tokens);
        json_write_number(jf, loss.loss);
        fprintf(jf, ", \"perplexity\": ");
        json_write_number(jf, loss.perplexity);
        fprintf(jf, ", \"bits_per_byte\": ");
        if (loss.have_bpb) json_write_number(jf, loss.bpb); else fputs("null", jf);
        fprintf(jf, ", \"target_bytes\": %.0f, \"nll_sum\": ", loss.bytes);
        json_write_number(jf, loss.nll_sum);
        fprintf(jf, ", \"seconds\": %.3f}", loss_seconds);
    } else {
        fputs("null", jf);
    }
    fprintf(jf, ",\n  \"experts\": ");
    expert_analysis_report(&xa, NULL, jf);
    fprintf(jf, ",\n  \"mc\": ");
    if (did_mc) {
        fprintf(jf, "{\"file\": ");
        json_write_cstr(jf, flags.value[EF_MC]);
        fprintf(jf, ", \"format\": \"%s\", \"examples\": %d, \"scored\": %d, \"truncated\": %d, \"skipped\": %d, "
                    "\"correct\": %d, \"correct_norm\": %d, \"acc\": ", set.format, mc.examples, mc.scored, mc.truncated,
                mc.skipped, mc.correct, mc.correct_norm);
        json_write_number(jf, mc.acc);
        fprintf(jf, ", \"acc_norm\": ");
        json_write_number(jf, mc.acc_norm);
        fprintf(jf, ", \"chance\": ");
        json_write_number(jf, mc.chance);
        fprintf(jf, ", \"seq_len\": %d, \"batch\": %d, \"seconds\": %.3f}", mc.T_run, B, mc_seconds);
    } else {
        fputs("null", jf);
    }
    fprintf(jf, ",\n  \"generation\": ");
    if (do_generate) {
        fprintf(jf, "{\"temperature\": ");
        json_write_number(jf, temperature);
        fprintf(jf, ", \"top_k\": %d, \"length\": %d, \"prompt_tokens\": [", top_k, gen_len);
        for (int i = 0; i < n_prompt_text; i++) fprintf(jf, "%s%d", i ? ", " : "", prompt[1 + i]);
        fprintf(jf, "], \"tokens\": [");
        for (int i = 0; i < gen_len; i++) fprintf(jf, "%s%d", i ? ", " : "", gen[i]);
        fprintf(jf, "], \"text\": ");
        if (gen_text != NULL) json_write_string(jf, gen_text, gen_text_len); else fputs("null", jf);
        fputc('}', jf);
    } else {
        fputs("null", jf);
    }
    fprintf(jf, "\n}\n");
    if (fclose(jf) != 0) die("cannot write %s: %s", json_path, strerror(errno));
    printf("wrote %s\n", json_path);

    free(prompt); free(gen); free(gen_text);
    mc_free(&set);
    if (have_tok) tokenizer_free(&tokenizer);
    expert_analysis_free(&xa);
    moe_free(&model);
    return 0;
}

int main(int argc, char** argv) { return eval_main(argc, argv); }
