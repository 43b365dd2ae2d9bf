// Tests of eval_moe.c and data/make_cloze.c, for test_moe.c: test_eval() uses only the CHECK macro
// (and the tests_passed/tests_failed counters behind it) defined by the file that includes this one.
// eval_moe.c and make_cloze.c are included with their main()s left out (EVAL_NO_MAIN,
// MAKE_CLOZE_NO_MAIN); the command line is exercised through eval_main() in a forked child.
// Everything is built here, in a mkdtemp directory: tiny models, a hand-made tokenizer, shards,
// multiple-choice files (good and malformed).
#include <sys/wait.h>
#include <fcntl.h>
#define EVAL_NO_MAIN
#define MAKE_CLOZE_NO_MAIN
#include "../data/make_cloze.c"

// ----------------------------------------------------------------------------
// helpers

static char evt_dir[256];

static void evt_path(char* out, size_t n, const char* name) { snprintf(out, n, "%s/%s", evt_dir, name); }

static void evt_write(const char* path, const void* data, size_t n) {
    FILE* f = fopen(path, "wb");
    if (f != NULL) { fwrite(data, 1, n, f); fclose(f); }
}

static int evt_contains(const char* haystack, const char* needle) { return strstr(haystack, needle) != NULL; }

// A tiny model: L=2, NH=2, C=32, E=4, K=2, H=64.
static void evt_model(MoEModel* m, int V, int maxT) {
    MoEConfig c = {maxT, V, pad_vocab(V), 2, 2, 32, 4, 2, 64};
    moe_build(m, &c);
    moe_init_params(m, 7, 0.02f);
}

// The test tokenizer: ids 0..255 the bytes, 256 = "\x01\x02", 257 = "\x03\x04\x05",
// 258 = "\x06\x07\x08\x0e\x0f", 259 = end-of-text; no merges (version 2, M = 0).
#define EVT_V 260
#define EVT_EOT 259
static const double EVT_BYTES[4] = {2, 3, 5, 0};  // bytes of ids 256..259 (end-of-text counts 0)
static void evt_write_tokenizer(const char* path) {
    static const char* extra[4] = {"\x01\x02", "\x03\x04\x05", "\x06\x07\x08\x0e\x0f", TOKENIZER_EOT_TEXT};
    unsigned char* buf = (unsigned char*)calloc(1024 + 2 * 256 + 64, 1);
    uint32_t header[256] = {0};
    header[0] = TOKENIZER_MAGIC; header[1] = 2; header[2] = EVT_V; header[3] = EVT_EOT; header[4] = 0;
    memcpy(buf, header, sizeof(header));
    size_t pos = 1024;
    for (int b = 0; b < 256; b++) { buf[pos++] = 1; buf[pos++] = (unsigned char)b; }
    for (int k = 0; k < 4; k++) {
        size_t len = strlen(extra[k]);
        buf[pos++] = (unsigned char)len;
        memcpy(buf + pos, extra[k], len);
        pos += len;
    }
    evt_write(path, buf, pos);
    free(buf);
}

// Runs eval_main(args) in a child with stdout/stderr to files; returns its exit status (-1 if it
// did not exit normally). stderr_text (if not NULL) receives the start of its stderr.
static int evt_run_eval(char** args, int nargs, char* stderr_text, size_t n) {
    char out_path[512], err_path[512];
    evt_path(out_path, sizeof(out_path), "child_stdout.txt");
    evt_path(err_path, sizeof(err_path), "child_stderr.txt");
    fflush(stdout); fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        int fo = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644), fe = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fo, 1); dup2(fe, 2);
#ifdef _OPENMP
        omp_set_num_threads(1);  // libgomp's thread pool does not survive fork(): stay on this thread
#endif
        char* argv[64];
        argv[0] = (char*)"eval_moe";
        for (int i = 0; i < nargs; i++) argv[i + 1] = args[i];
        argv[nargs + 1] = NULL;
        int rc = eval_main(nargs + 1, argv);
        fflush(stdout); fflush(stderr);
        _exit(rc);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (stderr_text != NULL) {
        stderr_text[0] = 0;
        FILE* f = fopen(err_path, "rb");
        if (f != NULL) { size_t got = fread(stderr_text, 1, n - 1, f); stderr_text[got] = 0; fclose(f); }
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// reads a JSON file and returns the number at obj.key (NAN if absent)
static double evt_json_number(const JsonValue* root, const char* obj, const char* key) {
    const JsonValue* o = json_get(root, obj);
    const JsonValue* v = o != NULL ? json_get(o, key) : NULL;
    return v != NULL && v->type == JSON_NUMBER ? v->number : NAN;
}

// cross-entropy of token v at row position t of the last forward (B=1): logsumexp over V - logit
static double evt_ce(const MoEModel* m, int t, int v) {
    const float* x = m->acts.logits + (size_t)t * m->config.padded_vocab_size;
    int V = m->config.vocab_size;
    double mx = x[0], s = 0.0;
    for (int i = 1; i < V; i++) if (x[i] > mx) mx = x[i];
    for (int i = 0; i < V; i++) s += exp(x[i] - mx);
    return mx + log(s) - x[v];
}

// ----------------------------------------------------------------------------
// the tests

static void test_eval_json_parser(void) {
    const char* doc = " {\"a\": [1, -2.5e2, true, false, null, {\"b\": \"x\\\"y\\\\\\/\\n\\t\"}], "
                      "\"u\": \"\\u00e9\\ud83d\\ude00\\u0000z\", \"a\": 7} ";
    JsonValue v;
    char err[256];
    int rc = json_parse((const unsigned char*)doc, strlen(doc), &v, err, sizeof(err));
    CHECK(rc == 0, "json: a valid document failed to parse: %s", err);
    if (rc == 0) {
        const JsonValue* a = json_get(&v, "a");
        CHECK(a != NULL && a->type == JSON_NUMBER && a->number == 7, "json: a repeated key should give the last value");
        const JsonValue* arr = v.n > 0 ? &v.items[0] : NULL;
        CHECK(arr != NULL && arr->type == JSON_ARRAY && arr->n == 6, "json: array of 6 expected");
        if (arr != NULL && arr->n == 6) {
            CHECK(arr->items[0].number == 1 && arr->items[1].number == -250.0, "json: numbers 1 and -2.5e2");
            CHECK(arr->items[2].type == JSON_TRUE && arr->items[3].type == JSON_FALSE && arr->items[4].type == JSON_NULL,
                  "json: true/false/null");
            const JsonValue* b = json_get(&arr->items[5], "b");
            CHECK(b != NULL && b->len == 7 && memcmp(b->str, "x\"y\\/\n\t", 7) == 0, "json: simple escapes");
        }
        const JsonValue* u = json_get(&v, "u");
        const unsigned char want[] = {0xC3, 0xA9, 0xF0, 0x9F, 0x98, 0x80, 0x00, 'z'};
        CHECK(u != NULL && u->len == 8 && memcmp(u->str, want, 8) == 0,
              "json: \\u00e9, a surrogate pair and \\u0000 should give C3 A9 F0 9F 98 80 00 7A");
        json_free(&v);
    }
    struct { const char* text; const char* needle; } bad[] = {
        {"{\"a\": tru}", "column 7"}, {"[1, 2", "expected ',' or ']'"}, {"\"abc", "unterminated string"},
        {"\"\\ud83d\"", "high surrogate"}, {"\"\\ude00\"", "lone low surrogate"}, {"\"a\\qb\"", "unknown escape"},
        {"01", "unexpected text"}, {"1.", "digits must follow"}, {"{\"a\" 1}", "expected ':'"}, {"{} x", "unexpected text"},
        {"\"a\tb\"", "control character"}, {"", "unexpected end"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = 0;
        rc = json_parse((const unsigned char*)bad[i].text, strlen(bad[i].text), &v, err, sizeof(err));
        CHECK(rc != 0 && evt_contains(err, bad[i].needle), "json: '%s' should fail with '%s', got rc %d '%s'",
              bad[i].text, bad[i].needle, rc, err);
    }
    char deep[300];
    memset(deep, '[', 200); deep[200] = 0;
    rc = json_parse((const unsigned char*)deep, 200, &v, err, sizeof(err));
    CHECK(rc != 0 && evt_contains(err, "nested too deeply"), "json: 200 nested arrays should be refused, got '%s'", err);
}

// eval_loss on one batch gives exactly moe_forward's mean_loss; bits per byte by hand
static void test_eval_loss_and_bpb(void) {
    MoEModel m;
    evt_model(&m, EVT_V, 16);
    int B = 2, T = 8, nb = 3;
    size_t n = (size_t)B * T * nb + 1;
    uint32_t* tokens = (uint32_t*)malloc(sizeof(uint32_t) * n);
    uint64_t rng = 99;
    for (size_t i = 0; i < n; i++) tokens[i] = random_u32(&rng) % EVT_V;
    tokens[3] = EVT_EOT; tokens[5] = 256; tokens[6] = 257; tokens[9] = 258; tokens[12] = EVT_EOT;  // targets of every kind
    DataLoader dl;
    char err[512];
    CHECK(dataloader_open_memory(&dl, tokens, NULL, n, B, T, EVT_V, 0, 0, err, sizeof(err)) == 0, "loader: %s", err);
    // the direct forward of batch 0
    int* in = (int*)malloc(sizeof(int) * B * T);
    int* tg = (int*)malloc(sizeof(int) * B * T);
    for (int i = 0; i < B * T; i++) { in[i] = (int)tokens[i]; tg[i] = (int)tokens[i + 1]; }
    moe_forward(&m, in, tg, B, T);
    float mean_loss = m.mean_loss;
    double nll = 0.0, bytes = 0.0;
    for (int i = 0; i < B * T; i++) {
        nll += m.acts.losses[i];
        bytes += tg[i] < 256 ? 1.0 : EVT_BYTES[tg[i] - 256];
    }
    double bpb_hand = nll / log(2.0) / bytes;
    // eval_loss with the tokenizer's byte counts
    char tok_path[512];
    evt_path(tok_path, sizeof(tok_path), "tokenizer.bin");
    evt_write_tokenizer(tok_path);
    Tokenizer tok;
    CHECK(tokenizer_load(&tok, tok_path, err, sizeof(err)) == 0, "tokenizer: %s", err);
    double* tb = token_byte_counts(&tok);
    LossResult r;
    eval_loss(&m, &dl, 1, tb, NULL, &r);
    CHECK(r.batches == 1 && r.tokens == B * T, "eval_loss: 1 batch of %d tokens expected, got %d / %ld", B * T, r.batches, r.tokens);
    CHECK((float)r.loss == mean_loss, "eval_loss: loss %.9g differs from moe_forward's mean_loss %.9g", r.loss, mean_loss);
    CHECK(fabs(r.perplexity - exp(r.loss)) < 1e-12 * r.perplexity, "eval_loss: perplexity is not exp(loss)");
    CHECK(r.have_bpb && fabs(r.bpb - bpb_hand) < 1e-12 * bpb_hand && r.bytes == bytes,
          "bpb: %.12g (bytes %.0f) differs from the hand computation %.12g (bytes %.0f)", r.bpb, r.bytes, bpb_hand, bytes);
    // all batches: the mean of the per-batch means (equal batch sizes)
    double mean3 = 0.0;
    for (int b = 0; b < nb; b++) {
        for (int i = 0; i < B * T; i++) { in[i] = (int)tokens[b * B * T + i]; tg[i] = (int)tokens[b * B * T + i + 1]; }
        moe_forward(&m, in, tg, B, T);
        mean3 += m.mean_loss / nb;
    }
    eval_loss(&m, &dl, -1, NULL, NULL, &r);
    CHECK(r.batches == nb && fabs(r.loss - mean3) < 1e-6 && !r.have_bpb,
          "eval_loss: %d batches, loss %.7f, expected %d batches, %.7f (no bpb without a tokenizer)", r.batches, r.loss, nb, mean3);

    // the command line: checkpoint + shard + tokenizer beside it; the JSON holds the same numbers
    char ckpt[512], shard[512], json[512], stderr_text[2048];
    evt_path(ckpt, sizeof(ckpt), "model.bin");
    evt_path(shard, sizeof(shard), "x_val.bin");
    evt_path(json, sizeof(json), "out.json");
    CHECK(moe_save_checkpoint(&m, ckpt, 0, 5, 1234, 5, NULL, err, sizeof(err)) == 0, "checkpoint: %s", err);
    CHECK(shard_write(shard, tokens, n, EVT_V, 0, err, sizeof(err)) == 0, "shard: %s", err);
    char* args[] = {"-e", ckpt, "-j", shard, "-b", "2", "-t", "8", "-m", "1", "--json", json, "-g", "5", "--temperature", "0"};
    int rc = evt_run_eval(args, 16, stderr_text, sizeof(stderr_text));
    CHECK(rc == 0, "eval_main: exit %d, stderr: %s", rc, stderr_text);
    unsigned char* text;
    size_t size;
    JsonValue v;
    if (rc == 0 && eval_read_file(json, &text, &size, err, sizeof(err)) == 0) {
        CHECK(json_parse(text, size, &v, err, sizeof(err)) == 0, "eval_main's JSON does not parse: %s", err);
        double jl = evt_json_number(&v, "loss", "loss"), jb = evt_json_number(&v, "loss", "bits_per_byte");
        CHECK(fabs(jl - mean_loss) < 1e-6 && fabs(jb - bpb_hand) < 1e-6 * bpb_hand,
              "eval_main JSON: loss %.9g bpb %.9g, expected %.9g %.9g", jl, jb, mean_loss, bpb_hand);
        const JsonValue* tk = json_get(&v, "tokenizer");
        CHECK(tk != NULL && tk->type == JSON_STRING && evt_contains(tk->str, "tokenizer.bin"),
              "eval_main should find tokenizer.bin beside the shard");
        const JsonValue* gen = json_get(&v, "generation");
        const JsonValue* gt = gen != NULL ? json_get(gen, "tokens") : NULL;
        CHECK(gt != NULL && gt->type == JSON_ARRAY && gt->n == 5, "eval_main JSON: 5 generated tokens expected");
        // greedy generation from end-of-text = the argmax of a direct forward (first token)
        if (gt != NULL && gt->n == 5) {
            int start = EVT_EOT;
            moe_forward(&m, &start, NULL, 1, 1);
            int best = 0;
            for (int vv = 1; vv < EVT_V; vv++) if (m.acts.logits[vv] > m.acts.logits[best]) best = vv;
            CHECK((int)gt->items[0].number == best, "greedy generation: first token %d, argmax %d", (int)gt->items[0].number, best);
        }
        json_free(&v);
        free(text);
    }
    // a wrong -t and a missing checkpoint fail with a message, not a crash
    char* bad_t[] = {"-e", ckpt, "-j", shard, "-t", "17", "--json", json};
    rc = evt_run_eval(bad_t, 8, stderr_text, sizeof(stderr_text));
    CHECK(rc == 1 && evt_contains(stderr_text, "exceeds the checkpoint's maxT"), "-t 17 > maxT: exit %d, '%s'", rc, stderr_text);
    free(tb);
    tokenizer_free(&tok);
    dataloader_free(&dl);
    free(in); free(tg); free(tokens);
    moe_free(&m);
}

// Forced answers: the correct ending is the model's greedy continuation; every distractor token has
// a cross-entropy above the largest of the greedy ending's, so both L_sum and L_mean single it out.
// Tokens are printable ASCII (32..126), so JSONL text and ids map one to one with the test tokenizer.
static void evt_build_forced(MoEModel* m, MCSet* set, int n_examples) {
    memset(set, 0, sizeof(*set));
    set->examples = (MCExample*)calloc((size_t)n_examples, sizeof(MCExample));
    set->n = n_examples;
    set->format = "bin";
    uint64_t rng = 5;
    int seq[64];
    for (int e = 0; e < n_examples; e++) {
        MCExample* ex = &set->examples[e];
        int ctx_len = 4 + e % 3, greedy_len = 2 + e % 2, dis_len = 3;
        ex->index = 100 + e; ex->label = e % 4; ex->n_endings = 4; ex->ctx_len = ctx_len;
        ex->ending_len = (int*)malloc(sizeof(int) * 4);
        ex->tokens = (int*)malloc(sizeof(int) * 64);
        for (int t = 0; t < ctx_len; t++) ex->tokens[t] = seq[t] = 32 + (int)(random_u32(&rng) % 95);
        // greedy ending and G, its largest per-token CE
        int greedy[8];
        double G = 0.0;
        for (int s = 0; s < greedy_len; s++) {
            int len = ctx_len + s;
            moe_forward(m, seq, NULL, 1, len);
            int best = 32;
            for (int v = 33; v < 127; v++) if (evt_ce(m, len - 1, v) < evt_ce(m, len - 1, best)) best = v;
            double ce = evt_ce(m, len - 1, best);
            if (ce > G) G = ce;
            greedy[s] = seq[len] = best;
        }
        int pos = ctx_len;
        for (int j = 0; j < 4; j++) {
            if (j == ex->label) {
                ex->ending_len[j] = greedy_len;
                for (int s = 0; s < greedy_len; s++) ex->tokens[pos++] = greedy[s];
                continue;
            }
            ex->ending_len[j] = dis_len;
            for (int s = 0; s < dis_len; s++) {
                int len = ctx_len + s;
                moe_forward(m, seq, NULL, 1, len);
                // the (j+1)-th printable token, from a rotating start, whose CE exceeds G by a margin
                int found = -1, skip = j;
                for (int k = 0; k < 95 && found < 0; k++) {
                    int v = 32 + (k + 17 * e + 31 * s) % 95;
                    if (evt_ce(m, len - 1, v) > G + 0.01 && skip-- == 0) found = v;
                }
                CHECK(found >= 0, "forced mc: no distractor token with CE > %.4f at example %d step %d", G + 0.01, e, s);
                if (found < 0) found = 32;
                ex->tokens[pos++] = seq[len] = found;
            }
        }
    }
}

static void evt_write_jsonl_forced(const char* path, const MCSet* set) {
    FILE* f = fopen(path, "w");
    for (int e = 0; e < set->n; e++) {
        const MCExample* ex = &set->examples[e];
        unsigned char buf[64];
        for (int t = 0; t < ex->ctx_len; t++) buf[t] = (unsigned char)ex->tokens[t];
        fprintf(f, "{\"ctx\": ");
        json_write_string(f, buf, (size_t)ex->ctx_len);
        fprintf(f, ", \"sep\": \"\", \"endings\": [");
        for (int j = 0; j < ex->n_endings; j++) {
            const int* end = mc_ending(ex, j);
            for (int t = 0; t < ex->ending_len[j]; t++) buf[t] = (unsigned char)end[t];
            if (j) fprintf(f, ", ");
            json_write_string(f, buf, (size_t)ex->ending_len[j]);
        }
        fprintf(f, "], \"label\": %d}\n", ex->label);
        if (e == 1) fprintf(f, "\n");  // a blank line is skipped
    }
    fclose(f);
}

static int evt_same_tokens(const MCSet* a, const MCSet* b) {
    if (a->n != b->n) return 0;
    for (int e = 0; e < a->n; e++) {
        const MCExample *x = &a->examples[e], *y = &b->examples[e];
        if (x->label != y->label || x->n_endings != y->n_endings || x->ctx_len != y->ctx_len) return 0;
        int total = x->ctx_len;
        for (int j = 0; j < x->n_endings; j++) { if (x->ending_len[j] != y->ending_len[j]) return 0; total += x->ending_len[j]; }
        if (memcmp(x->tokens, y->tokens, sizeof(int) * (size_t)total) != 0) return 0;
    }
    return 1;
}

static void test_eval_mc_forced(void) {
    MoEModel m;
    evt_model(&m, EVT_V, 16);
    MCSet set, bin, jl;
    evt_build_forced(&m, &set, 8);
    char bin_path[512], jsonl_path[512], tok_path[512], err[512];
    evt_path(bin_path, sizeof(bin_path), "forced.bin");
    evt_path(jsonl_path, sizeof(jsonl_path), "forced.jsonl");
    evt_path(tok_path, sizeof(tok_path), "tokenizer.bin");
    evt_write_tokenizer(tok_path);
    Tokenizer tok;
    CHECK(tokenizer_load(&tok, tok_path, err, sizeof(err)) == 0, "tokenizer: %s", err);
    CHECK(mc_write_bin(bin_path, &set, err, sizeof(err)) == 0, "mc_write_bin: %s", err);
    evt_write_jsonl_forced(jsonl_path, &set);
    int rc = mc_load(bin_path, NULL, EVT_V, EVT_EOT, &bin, err, sizeof(err));
    CHECK(rc == 0 && evt_same_tokens(&set, &bin) && strcmp(bin.format, "bin") == 0, "forced .bin: reload differs (%s)", err);
    rc = mc_load(jsonl_path, &tok, EVT_V, EVT_EOT, &jl, err, sizeof(err));
    CHECK(rc == 0 && evt_same_tokens(&set, &jl) && strcmp(jl.format, "jsonl") == 0, "forced JSONL: tokens differ (%s)", err);
    CHECK(rc == 0 && jl.examples[2].index == 4, "JSONL example index = line number (4 after a blank line), got %d",
          rc == 0 ? jl.examples[2].index : -1);
    CHECK(bin.n > 0 && bin.examples[0].index == 100, "bin example index from the file");
    // B = 3: examples straddle batches; B = 1 and 16 too
    int Bs[3] = {3, 1, 16};
    for (int i = 0; i < 3; i++) {
        MCResult r;
        mc_evaluate(&m, &bin, -1, Bs[i], 16, EVT_EOT, &r, NULL);
        CHECK(r.scored == 8 && r.correct == 8 && r.correct_norm == 8 && r.acc == 1.0 && r.acc_norm == 1.0 && r.chance == 0.25,
              "forced .bin, B=%d: acc %d/%d acc_norm %d/%d (chance %.3f), expected 8/8", Bs[i], r.correct, r.scored,
              r.correct_norm, r.scored, r.chance);
        mc_evaluate(&m, &jl, -1, Bs[i], 16, EVT_EOT, &r, NULL);
        CHECK(r.correct == 8 && r.correct_norm == 8, "forced JSONL, B=%d: acc %d/8 acc_norm %d/8", Bs[i], r.correct, r.correct_norm);
    }
    MCResult r;
    mc_evaluate(&m, &bin, 3, 4, 16, EVT_EOT, &r, NULL);
    CHECK(r.examples == 3 && r.scored == 3, "--mc-limit 3: %d examples scored", r.scored);

    // L_sum of every ending equals a direct single-sequence forward
    double lsum[64];
    mc_evaluate(&m, &bin, -1, 3, 16, EVT_EOT, &r, lsum);
    int worst = 0;
    double maxdiff = 0.0;
    for (int e = 0, job = 0; e < bin.n; e++) {
        const MCExample* ex = &bin.examples[e];
        for (int j = 0; j < ex->n_endings; j++, job++) {
            int seq[64], len = ex->ctx_len + ex->ending_len[j];
            memcpy(seq, ex->tokens, sizeof(int) * (size_t)ex->ctx_len);
            memcpy(seq + ex->ctx_len, mc_ending(ex, j), sizeof(int) * (size_t)ex->ending_len[j]);
            moe_forward(&m, seq, NULL, 1, len - 1);
            double s = 0.0;
            for (int t = ex->ctx_len - 1; t < len - 1; t++) s += evt_ce(&m, t, seq[t + 1]);
            if (fabs(s - lsum[job]) > maxdiff) { maxdiff = fabs(s - lsum[job]); worst = job; }
        }
    }
    CHECK(maxdiff < 1e-4, "mc: L_sum differs from a direct forward by %.3g at ending %d", maxdiff, worst);

    // JSONL fields: ctx_a + " " + ctx_b, default sep " ", \u escapes
    const char* line = "{\"ctx_a\": \"ab\", \"ctx_b\": \"c\", \"endings\": [\"\\u00e9\", \"x\"], \"label\": 1}\n";
    char p2[512];
    evt_path(p2, sizeof(p2), "fields.jsonl");
    evt_write(p2, line, strlen(line));
    MCSet f;
    rc = mc_load(p2, &tok, EVT_V, EVT_EOT, &f, err, sizeof(err));
    int want[] = {'a', 'b', ' ', 'c', ' ', 0xC3, 0xA9, ' ', 'x'};
    CHECK(rc == 0 && f.n == 1 && f.examples[0].ctx_len == 4 && f.examples[0].ending_len[0] == 3 &&
          f.examples[0].ending_len[1] == 2 && memcmp(f.examples[0].tokens, want, sizeof(want)) == 0,
          "JSONL ctx_a/ctx_b/default sep: wrong tokens (%s)", rc ? err : "");
    if (rc == 0) mc_free(&f);

    // the command line: --mc with the JSONL and the tokenizer beside it
    char ckpt[512], json[512], stderr_text[2048];
    evt_path(ckpt, sizeof(ckpt), "model_mc.bin");
    evt_path(json, sizeof(json), "mc.json");
    CHECK(moe_save_checkpoint(&m, ckpt, 0, 0, 1, 0, NULL, err, sizeof(err)) == 0, "checkpoint: %s", err);
    char* args[] = {"-e", ckpt, "--mc", jsonl_path, "-b", "5", "--json", json};
    rc = evt_run_eval(args, 8, stderr_text, sizeof(stderr_text));
    CHECK(rc == 0, "eval_main --mc: exit %d, stderr: %s", rc, stderr_text);
    unsigned char* text;
    size_t size;
    JsonValue v;
    if (rc == 0 && eval_read_file(json, &text, &size, err, sizeof(err)) == 0) {
        if (json_parse(text, size, &v, err, sizeof(err)) == 0) {
            CHECK(evt_json_number(&v, "mc", "acc") == 1.0 && evt_json_number(&v, "mc", "acc_norm") == 1.0 &&
                  evt_json_number(&v, "mc", "examples") == 8, "eval_main --mc: JSON acc %g acc_norm %g",
                  evt_json_number(&v, "mc", "acc"), evt_json_number(&v, "mc", "acc_norm"));
            const JsonValue* loss = json_get(&v, "loss");
            CHECK(loss != NULL && loss->type == JSON_NULL, "no -j and V != 512: loss should be null");
            json_free(&v);
        } else {
            CHECK(0, "eval_main --mc JSON does not parse: %s", err);
        }
        free(text);
    }
    mc_free(&set); mc_free(&bin); mc_free(&jl);
    tokenizer_free(&tok);
    moe_free(&m);
}

// Truncation and skipping: maxT = 8
static void test_eval_mc_truncation(void) {
    MoEModel m;
    evt_model(&m, EVT_V, 8);
    MCSet set = {0};
    set.n = 3;
    set.examples = (MCExample*)calloc(3, sizeof(MCExample));
    int ctx_lens[3] = {10, 2, 3}, end_lens[3] = {3, 9, 2};
    for (int e = 0; e < 3; e++) {
        MCExample* ex = &set.examples[e];
        ex->index = e; ex->label = 0; ex->n_endings = 2; ex->ctx_len = ctx_lens[e];
        ex->ending_len = (int*)malloc(sizeof(int) * 2);
        ex->ending_len[0] = end_lens[e]; ex->ending_len[1] = 1;
        int total = ctx_lens[e] + end_lens[e] + 1;
        ex->tokens = (int*)malloc(sizeof(int) * (size_t)total);
        for (int t = 0; t < total; t++) ex->tokens[t] = 40 + (7 * t + e) % 50;
    }
    MCResult r;
    double lsum[6];
    mc_evaluate(&m, &set, -1, 2, 8, EVT_EOT, &r, lsum);
    CHECK(r.examples == 3 && r.scored == 2 && r.truncated == 1 && r.skipped == 1,
          "truncation: scored %d truncated %d skipped %d, expected 2 1 1", r.scored, r.truncated, r.skipped);
    CHECK(isnan(lsum[2]) && isnan(lsum[3]), "a skipped example's L_sum should be NAN");
    // example 0 keeps its last 8 + 1 - 3 = 6 context tokens for both endings
    const MCExample* ex = &set.examples[0];
    int seq[16];
    memcpy(seq, ex->tokens + 4, sizeof(int) * 6);
    memcpy(seq + 6, ex->tokens + 10, sizeof(int) * 3);
    moe_forward(&m, seq, NULL, 1, 8);
    double s = evt_ce(&m, 5, seq[6]) + evt_ce(&m, 6, seq[7]) + evt_ce(&m, 7, seq[8]);
    CHECK(fabs(s - lsum[0]) < 1e-4, "truncated example: L_sum %.6f, direct %.6f", lsum[0], s);
    mc_free(&set);
    moe_free(&m);
}

// Malformed files are reported with their line / record number, never a crash.
static void test_eval_mc_malformed(void) {
    char path[512], tok_path[512], err[512];
    evt_path(path, sizeof(path), "bad.jsonl");
    evt_path(tok_path, sizeof(tok_path), "tokenizer.bin");
    evt_write_tokenizer(tok_path);
    Tokenizer tok;
    CHECK(tokenizer_load(&tok, tok_path, err, sizeof(err)) == 0, "tokenizer: %s", err);
    const char* good = "{\"ctx\": \"hi\", \"endings\": [\"a\", \"b\"], \"label\": 0}\n";
    struct { const char* line; int at; const char* needle; } cases[] = {
        {"{\"ctx\": \"a\", \"endings\": [\"b\", }", 3, "bad JSON"},
        {"{\"ctx\": \"a\", \"label\": 0}", 3, "missing field \"endings\""},
        {"{\"endings\": [\"a\", \"b\"], \"label\": 0}", 3, "missing field \"ctx\""},
        {"{\"ctx\": \"a\", \"endings\": [\"b\", \"c\"]}", 3, "missing field \"label\""},
        {"{\"ctx\": \"a\", \"endings\": [\"b\", \"c\"], \"label\": 2}", 3, "label 2 is out of range"},
        {"{\"ctx\": \"a\", \"endings\": [\"b\", \"c\"], \"label\": -1}", 3, "out of range"},
        {"{\"ctx\": \"a\", \"endings\": [\"b\", \"c\"], \"label\": 0.5}", 3, "not an integer"},
        {"{\"ctx\": \"a\", \"endings\": [\"b\", 3], \"label\": 0}", 3, "ending 1 is not a string"},
        {"{\"ctx\": \"a\", \"endings\": [\"b\"], \"label\": 0}", 3, "2 to 1024"},
        {"{\"ctx\": 5, \"endings\": [\"b\", \"c\"], \"label\": 0}", 3, "\"ctx\" is not a string"},
        {"{\"ctx\": \"a\", \"endings\": [\"b\", \"\"], \"label\": 0, \"sep\": \"\"}", 3, "ending 1 has no tokens"},
        {"[1, 2]", 3, "not a JSON object"},
        {"{\"ctx\": \"\\ud800\", \"endings\": [\"b\", \"c\"], \"label\": 0}", 3, "surrogate"},
        {"{\"ctx\": \"a\"", 3, "bad JSON"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char content[1024];
        snprintf(content, sizeof(content), "%s\n%s%s\n%s", good, good, cases[i].line, good);
        if (i == 0) snprintf(content, sizeof(content), "%s\n%s\n%s", good, cases[i].line, good);  // blank line 2 counts
        evt_write(path, content, strlen(content));
        MCSet set;
        err[0] = 0;
        int rc = mc_load(path, &tok, EVT_V, EVT_EOT, &set, err, sizeof(err));
        char where[600];
        snprintf(where, sizeof(where), "%s:%d:", path, i == 0 ? 3 : cases[i].at + 1);
        CHECK(rc != 0 && evt_contains(err, where) && evt_contains(err, cases[i].needle),
              "malformed JSONL case %zu: expected '%s' and '%s', got rc %d '%s'", i, where, cases[i].needle, rc, err);
    }
    MCSet s0;
    evt_write(path, good, strlen(good));
    CHECK(mc_load(path, NULL, EVT_V, EVT_EOT, &s0, err, sizeof(err)) != 0 && evt_contains(err, "needs a tokenizer"),
          "JSONL without a tokenizer: '%s'", err);

    // .bin: three good records, then corrupted copies
    MCSet set = {0};
    set.n = 3;
    set.examples = (MCExample*)calloc(3, sizeof(MCExample));
    for (int e = 0; e < 3; e++) {
        MCExample* ex = &set.examples[e];
        ex->index = e; ex->label = 1; ex->n_endings = 2; ex->ctx_len = 3;
        ex->ending_len = (int*)malloc(sizeof(int) * 2);
        ex->ending_len[0] = 2; ex->ending_len[1] = 2;
        ex->tokens = (int*)malloc(sizeof(int) * 7);
        for (int t = 0; t < 7; t++) ex->tokens[t] = 50 + t;
    }
    char bpath[512];
    evt_path(bpath, sizeof(bpath), "bad.bin");
    CHECK(mc_write_bin(bpath, &set, err, sizeof(err)) == 0, "mc_write_bin: %s", err);
    unsigned char* good_bin;
    size_t size;
    CHECK(eval_read_file(bpath, &good_bin, &size, err, sizeof(err)) == 0, "read: %s", err);
    size_t rec = 2 * (5 + 1 + 2 + 7);  // bytes per record
    CHECK(size == 1024 + 3 * rec, ".bin size %zu, expected %zu", size, 1024 + 3 * rec);
    int32_t longest;
    memcpy(&longest, good_bin + 12, 4);
    CHECK(longest == (int32_t)rec, ".bin header[3] (longest example) %d, expected %zu", longest, rec);
    MCSet ok;
    CHECK(mc_load(bpath, NULL, EVT_V, EVT_EOT, &ok, err, sizeof(err)) == 0 && ok.n == 3, "good .bin: %s", err);
    mc_free(&ok);
    struct { size_t offset; uint16_t value; size_t truncate; const char* needle1; const char* needle2; } bins[] = {
        {1024 + rec, 1234, 0, "record 2", "bad marker 1234"},
        {0, 0, 1024 + 2 * rec + 10, "record 3", "runs past the end of the file"},
        {1024 + 10, 60000, 0, "record 1", "context length 60000 runs past"},
        {1024 + rec + 6, 2, 0, "record 2", "label 2 but only 2 endings"},
        {1024 + rec + 8, 1, 0, "record 2", "1 endings"},
        {1024 + 2, 32, 0, "record 1", "holds 32 bytes but its fields use 30"},
        {1024 + rec + 18, 0, 0, "record 2", "ending 0 has no tokens"},
        {1024 + 2 * rec + 2, 28, 0, "record 3", "ending 1 length 2 runs past the record's end"},
        {1024 + rec + 14, 300, 0, "example index 1", "token id 300"},
        {8, 5, 0, "header says 5 examples", "3 records"},
        {0, 7, 0, "not a .bin", "needs a tokenizer"},
    };
    // record layout (uint16 words): 0 marker, 1 bytes, 2 index, 3 label, 4 endings, 5 ctx len, 6..8 ctx,
    // 9 len0, 10..11, 12 len1, 13..14. So ending 0's length is word 9 (byte 18), a token is word 7 (byte 14).
    for (size_t i = 0; i < sizeof(bins) / sizeof(bins[0]); i++) {
        unsigned char* copy = (unsigned char*)malloc(size);
        memcpy(copy, good_bin, size);
        size_t n = bins[i].truncate ? bins[i].truncate : size;
        if (!bins[i].truncate) {
            if (bins[i].offset == 8) { int32_t five = 5; memcpy(copy + 8, &five, 4); }
            else if (bins[i].offset == 0) { int32_t magic = 7; memcpy(copy, &magic, 4); }
            else { copy[bins[i].offset] = bins[i].value & 0xff; copy[bins[i].offset + 1] = bins[i].value >> 8; }
        }
        evt_write(bpath, copy, n);
        free(copy);
        MCSet bad;
        err[0] = 0;
        int rc = mc_load(bpath, NULL, EVT_V, EVT_EOT, &bad, err, sizeof(err));
        CHECK(rc != 0 && evt_contains(err, bins[i].needle1) && evt_contains(err, bins[i].needle2),
              "malformed .bin case %zu: expected '%s' and '%s', got rc %d '%s'", i, bins[i].needle1, bins[i].needle2, rc, err);
    }
    // the command line exits 1 with the record number on stderr
    MoEModel m;
    evt_model(&m, EVT_V, 16);
    char ckpt[512], stderr_text[2048];
    evt_path(ckpt, sizeof(ckpt), "model_bad.bin");
    CHECK(moe_save_checkpoint(&m, ckpt, 0, 0, 1, 0, NULL, err, sizeof(err)) == 0, "checkpoint: %s", err);
    unsigned char* copy = (unsigned char*)malloc(size);
    memcpy(copy, good_bin, size);
    copy[1024 + rec] = 0x34; copy[1024 + rec + 1] = 0x12;
    evt_write(bpath, copy, size);
    free(copy);
    char json[512];
    evt_path(json, sizeof(json), "bad.json");
    char* args[] = {"-e", ckpt, "--mc", bpath, "--json", json};
    int rc = evt_run_eval(args, 6, stderr_text, sizeof(stderr_text));
    CHECK(rc == 1 && evt_contains(stderr_text, "record 2") && evt_contains(stderr_text, "bad marker"),
          "eval_main with a bad .bin record: exit %d, stderr '%s'", rc, stderr_text);
    evt_write(path, "{\"ctx\": \"a\", \"endings\": [\"b\", \"c\"], \"label\": 0}\n{oops}\n", 52);
    char* args2[] = {"-e", ckpt, "--mc", path, "--tokenizer", tok_path, "--json", json};
    rc = evt_run_eval(args2, 8, stderr_text, sizeof(stderr_text));
    CHECK(rc == 1 && evt_contains(stderr_text, ":2: bad JSON"), "eval_main with a bad JSONL line: exit %d, stderr '%s'", rc, stderr_text);
    free(good_bin);
    mc_free(&set);
    tokenizer_free(&tok);
    moe_free(&m);
}

// make_cloze: the synthetic .bin and the text JSONL load back and hold what they should
static void test_eval_make_cloze(void) {
    char path[512], path2[512], err[512];
    evt_path(path, sizeof(path), "syn.bin");
    evt_path(path2, sizeof(path2), "syn2.bin");
    int n = cloze_synthetic(5, 160000, 40, 32, 8, 4, path, err, sizeof(err));
    int n2 = cloze_synthetic(5, 160000, 40, 32, 8, 4, path2, err, sizeof(err));
    CHECK(n == 40 && n2 == 40, "cloze_synthetic: %d examples (%s)", n, err);
    unsigned char *a, *b;
    size_t sa, sb;
    if (eval_read_file(path, &a, &sa, err, sizeof(err)) == 0 && eval_read_file(path2, &b, &sb, err, sizeof(err)) == 0) {
        CHECK(sa == sb && memcmp(a, b, sa) == 0, "cloze_synthetic: the same seed must give the same file");
        free(a); free(b);
    }
    MCSet set;
    int rc = mc_load(path, NULL, SYNTH_VOCAB, SYNTH_VOCAB - 1, &set, err, sizeof(err));
    CHECK(rc == 0 && set.n == 40, "synthetic cloze reload: %s", err);
    SyntheticCorpus c;
    synthetic_corpus_generate(&c, 1, 10000, 5);
    const int block = (SYNTH_VOCAB - 1 - SYNTH_SHARED) / SYNTH_DOMAINS;
    int bad_true = 0, bad_dis = 0, labels[4] = {0};
    for (int e = 0; rc == 0 && e < set.n; e++) {
        const MCExample* ex = &set.examples[e];
        if (ex->ctx_len != 32 || ex->n_endings != 4) { bad_true++; continue; }
        labels[ex->label]++;
        // the context + true ending occur contiguously in the val stream
        int found = -1;
        for (size_t i = 0; i + 40 <= c.val_len && found < 0; i++) {
            int same = 1;
            for (int t = 0; t < 32 && same; t++) same = (int)c.val_tokens[i + t] == ex->tokens[t];
            const int* tr = mc_ending(ex, ex->label);
            for (int t = 0; t < 8 && same; t++) same = (int)c.val_tokens[i + 32 + t] == tr[t];
            if (same) found = (int)i;
        }
        if (found < 0) { bad_true++; continue; }
        int dom = c.val_domains[found + 32];
        // no distractor token is a content token of the context's domain
        for (int j = 0; j < 4; j++) {
            if (j == ex->label) continue;
            const int* d = mc_ending(ex, j);
            for (int t = 0; t < 8; t++)
                if (d[t] >= SYNTH_SHARED && d[t] < SYNTH_VOCAB - 1 && (d[t] - SYNTH_SHARED) / block == dom) { bad_dis++; break; }
        }
    }
    CHECK(bad_true == 0, "synthetic cloze: %d examples whose context + true ending is not in the val stream", bad_true);
    CHECK(bad_dis == 0, "synthetic cloze: %d distractors hold content tokens of the context's domain", bad_dis);
    CHECK(labels[0] > 0 && labels[1] > 0 && labels[2] > 0 && labels[3] > 0, "synthetic cloze: labels should vary");
    synthetic_corpus_free(&c);
    if (rc == 0) mc_free(&set);

    // text: 40 numbered lines, blank lines between some, two documents
    char text[4096];
    size_t len = 0;
    for (int i = 1; i <= 40; i++) len += (size_t)snprintf(text + len, sizeof(text) - len, "line %02d says %d\n%s", i, i * 7, i % 5 == 0 ? "\n" : "");
    size_t docs[3] = {0, 0, len};
    docs[1] = (size_t)(strstr(text, "line 21") - text);
    char jpath[512];
    evt_path(jpath, sizeof(jpath), "cloze.jsonl");
    n = cloze_text((const unsigned char*)text, docs, 2, 12, 2, 4, 9, jpath, err, sizeof(err));
    CHECK(n == 12, "cloze_text: %d examples (%s)", n, err);
    unsigned char* data;
    size_t size;
    int bad = 0;
    if (n > 0 && eval_read_file(jpath, &data, &size, err, sizeof(err)) == 0) {
        char* line = (char*)data;
        for (int e = 0; e < n; e++) {
            char* nl = strchr(line, '\n');
            JsonValue v;
            if (nl == NULL || json_parse((unsigned char*)line, (size_t)(nl - line), &v, err, sizeof(err)) != 0) { bad++; break; }
            const JsonValue *ctx = json_get(&v, "ctx"), *sep = json_get(&v, "sep"), *ends = json_get(&v, "endings");
            int label = (int)json_get(&v, "label")->number;
            // ctx + sep + true ending is a piece of the text that ends at a line end, inside one document
            char joined[1024];
            snprintf(joined, sizeof(joined), "%s%s%s\n", ctx->str, sep->str, ends->items[label].str);
            char* at = strstr(text, joined);
            int ok = at != NULL && (at == text || at[-1] == '\n') && (sep->len == 1 || sep->len == 2);
            ok = ok && ((size_t)(at - text) >= docs[1] || (size_t)(at - text) + strlen(joined) <= docs[1]);
            int ctx_first = atoi(ctx->str + 5);
            for (int j = 0; ok && j < 4; j++) {
                if (j == label) continue;
                int num = atoi(ends->items[j].str + 5);
                ok = strcmp(ends->items[j].str, ends->items[label].str) != 0 && (num < ctx_first || num > ctx_first + 2);
            }
            bad += !ok;
            json_free(&v);
            line = nl + 1;
        }
        free(data);
    }
    CHECK(bad == 0, "cloze_text: %d examples are not context + next line + 3 other lines", bad);
}

static void test_eval_sampling(void) {
    float logits[6] = {0.1f, 2.0f, -1.0f, 2.0f, 0.5f, 1.9f};
    float scratch[6];
    uint64_t rng = 1;
    CHECK(sample_token(logits, 6, 0.0f, 0, &rng, scratch) == 1, "greedy: ties go to the lower id");
    int ok = 1, seen[6] = {0};
    for (int i = 0; i < 200; i++) {
        int t = sample_token(logits, 6, 1.0f, 2, &rng, scratch);
        ok &= t == 1 || t == 3;
        seen[t]++;
    }
    CHECK(ok && seen[1] > 0 && seen[3] > 0, "top-k 2 must sample only ids 1 and 3 (and both)");
    for (int i = 0; i < 50; i++) ok &= sample_token(logits, 6, 1.0f, 1, &rng, scratch) == 1;
    CHECK(ok, "top-k 1 is greedy");
    uint64_t r1 = 77, r2 = 77;
    int same = 1;
    for (int i = 0; i < 50; i++) same &= sample_token(logits, 6, 0.7f, 0, &r1, scratch) == sample_token(logits, 6, 0.7f, 0, &r2, scratch);
    CHECK(same, "sampling: the same seed must give the same tokens");
}

static void test_eval(void) {
    snprintf(evt_dir, sizeof(evt_dir), "/tmp/moe_eval_testXXXXXX");
    if (mkdtemp(evt_dir) == NULL) { CHECK(0, "mkdtemp failed: %s", strerror(errno)); return; }
    test_eval_json_parser();
    test_eval_sampling();
    test_eval_loss_and_bpb();
    test_eval_mc_forced();
    test_eval_mc_truncation();
    test_eval_mc_malformed();
    test_eval_make_cloze();
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", evt_dir);
    if (system(cmd) != 0) printf("warning: could not remove %s\n", evt_dir);
}
