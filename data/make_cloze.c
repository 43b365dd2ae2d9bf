/*
make_cloze -- a multiple-choice cloze benchmark from held-out data, for `eval_moe --mc`.

    data/make_cloze -i held_out.txt -o cloze.jsonl
    data/make_cloze --shard data/tinyshakespeare/tiny_shakespeare_val.bin -o data/tinyshakespeare/cloze.jsonl
    data/make_cloze --synthetic -o data/synthetic_cloze.bin

Text (-i FILE, or --shard FILE decoded with --tokenizer, default tokenizer.bin beside the shard; an
end-of-text token separates documents): the text is cut into lines; a line of only spaces, tabs
and '\r' is blank and belongs to the separator between the lines around it. An example is
-c consecutive non-blank lines of one document as the context (the exact text from the first
line's start to the last line's end, blank lines inside included), the next non-blank line as the
true ending, and 3 distractors: non-blank lines drawn uniformly from the whole held-out text,
outside the example's own lines and different in text from the true ending and from each other.
With --split-line the true line is cut at the word boundary nearest its middle (lines of four or
more words only): its first half joins the context and the ending is its second half, against the
second halves of three other lines; a small model that knows the corpus's phrasing but not its
plot can do that, where whole lines mostly test the plot. "sep" is the exact text between the
context and the true ending (e.g. "\n", "\n\n" before a new speaker, or " " with --split-line),
so that encode(ctx) + encode(sep + ending) tokenizes the true ending as it was in the running
text. Contexts are chosen without repetition at random positions; the label position
is random. JSONL line: {"ind": i, "ctx": ..., "sep": ..., "endings": [...], "label": k, "line": L}
with L the 1-based line number of the true ending in its document's text.

Synthetic (--synthetic): the built-in corpus's val split, generated from --seed exactly as
train_moe does (dataloader.h's synthetic_corpus_generate; --synthetic-tokens as train_moe's, the
val split being 1/16 of it). An example is --context-tokens consecutive tokens of one document
(from a random offset; a document starts with end-of-text), the true ending its next
--ending-tokens tokens, and each distractor that many tokens from a random position (after the
end-of-text) of a random document of another domain; with 4 domains and 4 endings, one distractor
per other domain. The synthetic corpus has no text, so this writes llm.c's hellaswag .bin format.

All randomness comes from --seed through one stream (moe.h's derive_seed(seed, 100)), so the same
flags give the same file. Build: gcc -O2 -fopenmp data/make_cloze.c -o data/make_cloze -lm -lz
(it includes eval_moe.c for the multiple-choice file writer and the JSON string writer).
*/
#define EVAL_NO_MAIN
#include "../eval_moe.c"

// ----------------------------------------------------------------------------
// the flags: one table, with defaults and help

typedef enum {
    CF_INPUT, CF_SHARD, CF_TOKENIZER, CF_SYNTHETIC, CF_OUTPUT, CF_COUNT, CF_CONTEXT_LINES, CF_ENDINGS, CF_SEED,
    CF_CONTEXT_TOKENS, CF_ENDING_TOKENS, CF_SYNTH_TOKENS, CF_SPLIT_LINE, CF_HELP, CLOZE_NUM_FLAGS
} ClozeFlagId;

static const FlagSpec CLOZE_FLAGS[CLOZE_NUM_FLAGS] = {
    [CF_INPUT]          = {"input", 'i', 1, "", "held-out text file"},
    [CF_SHARD]          = {"shard", 's', 1, "", "or: a held-out token shard (e.g. *_val.bin), decoded with --tokenizer"},
    [CF_TOKENIZER]      = {"tokenizer", 0, 1, "", "tokenizer for --shard (default: tokenizer.bin beside the shard)"},
    [CF_SYNTHETIC]      = {"synthetic", 0, 0, "", "or: the built-in synthetic corpus's val split (writes the .bin format)"},
    [CF_OUTPUT]         = {"output", 'o', 1, "", "output file: JSONL for text, llm.c .bin for --synthetic (required)"},
    [CF_COUNT]          = {"count", 'n', 1, "1000", "number of examples (fewer if the data holds fewer)"},
    [CF_CONTEXT_LINES]  = {"context-lines", 'c', 1, "3", "text: non-blank lines of context"},
    [CF_ENDINGS]        = {"endings", 0, 1, "4", "endings per example (the true one and endings-1 distractors)"},
    [CF_SEED]           = {"seed", 0, 1, "1337", "seed of the example choice (and of the synthetic corpus)"},
    [CF_CONTEXT_TOKENS] = {"context-tokens", 0, 1, "32", "synthetic: context length in tokens"},
    [CF_ENDING_TOKENS]  = {"ending-tokens", 0, 1, "8", "synthetic: ending length in tokens"},
    [CF_SYNTH_TOKENS]   = {"synthetic-tokens", 0, 1, "4000000", "synthetic: train_moe's --synthetic-tokens (val split = 1/16)"},
    [CF_SPLIT_LINE]     = {"split-line", 0, 0, "", "text: the ending is the second half of the next line (its first half joins the context)"},
    [CF_HELP]           = {"help", 'h', 0, "", "print this help"},
};

// ----------------------------------------------------------------------------
// randomness: one stream from the seed

#define CLOZE_STREAM 100
static uint64_t cloze_rand(uint64_t* rng, uint64_t n) {  // uniform in [0, n), n >= 1
    uint64_t x = (uint64_t)random_u32(rng) << 32 | random_u32(rng);
    return x % n;
}

// ----------------------------------------------------------------------------
// text mode

typedef struct {
    size_t start, len;  // the line's bytes in the text (without '\n' or a trailing '\r')
    int doc;            // document it belongs to
    int line_number;    // 1-based, within its document
} ClozeLine;

typedef struct {
    ClozeLine* lines;
    int n, cap;
} ClozeLines;

// Appends the non-blank lines of text[start..end) (document doc) to out.
static void cloze_split_lines(const unsigned char* text, size_t start, size_t end, int doc, ClozeLines* out) {
    int number = 0;
    for (size_t pos = start; pos < end;) {
        size_t e = pos;
        while (e < end && text[e] != '\n') e++;
        number++;
        size_t len = e - pos;
        if (len > 0 && text[pos + len - 1] == '\r') len--;
        int blank = 1;
        for (size_t i = pos; i < pos + len; i++) if (text[i] != ' ' && text[i] != '\t' && text[i] != '\r') { blank = 0; break; }
        if (!blank) {
            if (out->n == out->cap) {
                out->cap = out->cap ? 2 * out->cap : 1024;
                out->lines = (ClozeLine*)realloc(out->lines, sizeof(ClozeLine) * (size_t)out->cap);
                if (out->lines == NULL) die("out of memory splitting lines");
            }
            out->lines[out->n++] = (ClozeLine){pos, len, doc, number};
        }
        pos = e < end ? e + 1 : e;
    }
}

// --split-line: where a line is cut into a context half and an ending half. The cut is the space
// between words nearest the line's middle word boundary, with at least two words on each side; 0
// when the line has fewer than four words. The ending is what follows that space.
static size_t cloze_split_point(const unsigned char* text, const ClozeLine* ln) {
    const unsigned char* p = text + ln->start;
    size_t gaps[512];
    int n = 0;
    for (size_t i = 1; i + 1 < ln->len && n < 512; i++)
        if (p[i] == ' ' && p[i - 1] != ' ' && p[i + 1] != ' ') gaps[n++] = i;
    return n >= 3 ? gaps[n / 2] : 0;
}

// The ending a line contributes: all of it, or (split) what follows its split point.
static void cloze_ending(const unsigned char* text, const ClozeLine* ln, int split, size_t* start, size_t* len) {
    size_t cut = split ? cloze_split_point(text, ln) + 1 : 0;
    *start = ln->start + cut;
    *len = ln->len - cut;
}

static int cloze_same_ending(const unsigned char* text, const ClozeLine* a, const ClozeLine* b, int split) {
    size_t sa, la, sb, lb;
    cloze_ending(text, a, split, &sa, &la);
    cloze_ending(text, b, split, &sb, &lb);
    return la == lb && memcmp(text + sa, text + sb, la) == 0;
}

// Writes up to count examples as JSONL to path. Returns the number written; -1 with err.
static int cloze_text(const unsigned char* text, const size_t* doc_start, int n_docs, int count, int context_lines,
                      int n_endings, int split, uint64_t seed, const char* path, char* err, size_t errlen) {
    ClozeLines L = {0};
    for (int d = 0; d < n_docs; d++) cloze_split_lines(text, doc_start[d], doc_start[d + 1], d, &L);
    // candidate positions: i such that lines i .. i+c are one document's
    int* cand = (int*)mallocCheck(sizeof(int) * (size_t)(L.n + 1));
    int n_cand = 0;
    for (int i = 0; i + context_lines < L.n; i++)
        if (L.lines[i].doc == L.lines[i + context_lines].doc && (!split || cloze_split_point(text, &L.lines[i + context_lines])))
            cand[n_cand++] = i;
    if (n_cand == 0 || L.n < context_lines + n_endings) {
        free(cand); free(L.lines);
        return set_err(err, errlen, "the text has %d non-blank lines: too few for %d context lines and %d endings",
                       L.n, context_lines, n_endings);
    }
    uint64_t rng = derive_seed(seed, CLOZE_STREAM);
    for (int i = n_cand - 1; i > 0; i--) {  // Fisher-Yates, then take the first count in text order
        int j = (int)cloze_rand(&rng, (uint64_t)i + 1);
        int t = cand[i]; cand[i] = cand[j]; cand[j] = t;
    }
    int n = count < n_cand ? count : n_cand;
    for (int a = 1; a < n; a++) {  // insertion sort of the chosen positions (n is small)
        int v = cand[a], b = a - 1;
        while (b >= 0 && cand[b] > v) { cand[b + 1] = cand[b]; b--; }
        cand[b + 1] = v;
    }
    FILE* f = fopen(path, "w");
    if (f == NULL) { free(cand); free(L.lines); return set_err(err, errlen, "%s: cannot create: %s", path, strerror(errno)); }
    int written = 0, skipped = 0;
    int* chosen = (int*)mallocCheck(sizeof(int) * (size_t)n_endings);
    for (int k = 0; k < n; k++) {
        int i = cand[k], truth = i + context_lines;
        const ClozeLine* first = &L.lines[i];
        const ClozeLine* last = &L.lines[truth - 1];
        const ClozeLine* true_line = &L.lines[truth];
        int label = (int)cloze_rand(&rng, (uint64_t)n_endings);
        int ok = 1;
        for (int j = 0; j < n_endings && ok; j++) {
            if (j == label) { chosen[j] = truth; continue; }
            int tries = 0, r;
            for (;;) {
                if (++tries > 1000) { ok = 0; break; }
                r = (int)cloze_rand(&rng, (uint64_t)L.n);
                if (r >= i && r <= truth) continue;
                if (split && !cloze_split_point(text, &L.lines[r])) continue;
                if (cloze_same_ending(text, &L.lines[r], true_line, split)) continue;
                int dup = 0;
                for (int q = 0; q < j; q++) if (q != label && cloze_same_ending(text, &L.lines[r], &L.lines[chosen[q]], split)) dup = 1;
                if (dup) continue;
                break;
            }
            if (ok) chosen[j] = r;
        }
        if (!ok) { skipped++; continue; }
        // the context runs to the end of the last context line, or (split) into the true line up
        // to its split point; sep is the exact text between the context and the true ending
        size_t true_start, true_len;
        cloze_ending(text, true_line, split, &true_start, &true_len);
        size_t ctx_end = split ? true_start - 1 : last->start + last->len;
        fprintf(f, "{\"ind\": %d, \"ctx\": ", written);
        json_write_string(f, text + first->start, ctx_end - first->start);
        fprintf(f, ", \"sep\": ");
        json_write_string(f, text + ctx_end, true_start - ctx_end);
        fprintf(f, ", \"endings\": [");
        for (int j = 0; j < n_endings; j++) {
            size_t es, el;
            cloze_ending(text, &L.lines[chosen[j]], split, &es, &el);
            if (j) fprintf(f, ", ");
            json_write_string(f, text + es, el);
        }
        fprintf(f, "], \"label\": %d, \"line\": %d}\n", label, true_line->line_number);
        written++;
    }
    int bad = fclose(f) != 0;
    free(chosen); free(cand); free(L.lines);
    if (bad) return set_err(err, errlen, "%s: write failed: %s", path, strerror(errno));
    if (skipped > 0) fprintf(stderr, "make_cloze: %d examples skipped (no distinct distractor lines found)\n", skipped);
    return written;
}

// Decodes a shard with tok into one text; documents split at end-of-text. *doc_start gets
// n_docs + 1 offsets. 0, or -1 with err.
static int cloze_decode_shard(const char* shard_path, const Tokenizer* tok, unsigned char** text, size_t** doc_start,
                              int* n_docs, char* err, size_t errlen) {
    Shard s;
    if (shard_load(shard_path, (int)tok->vocab_size, &s, err, errlen) != 0) return -1;
    size_t total = 0;
    for (size_t i = 0; i < s.num_tokens; i++) {
        size_t len;
        if (s.tokens[i] != tok->eot_token) { tokenizer_token(tok, s.tokens[i], &len); total += len; }
    }
    *text = (unsigned char*)mallocCheck(total + 1);
    *doc_start = (size_t*)mallocCheck(sizeof(size_t) * (s.num_tokens + 2));
    size_t pos = 0;
    int nd = 0;
    (*doc_start)[nd++] = 0;
    for (size_t i = 0; i < s.num_tokens; i++) {
        if (s.tokens[i] == tok->eot_token) {
            if (pos > (*doc_start)[nd - 1]) (*doc_start)[nd++] = pos;  // a new document (skip empty ones)
            continue;
        }
        size_t len;
        const unsigned char* p = tokenizer_token(tok, s.tokens[i], &len);
        memcpy(*text + pos, p, len);
        pos += len;
    }
    if (pos > (*doc_start)[nd - 1]) (*doc_start)[nd++] = pos;
    *n_docs = nd - 1;
    (*text)[pos] = 0;
    shard_free(&s);
    return 0;
}

// ----------------------------------------------------------------------------
// synthetic mode

// Writes up to count examples in llm.c's .bin format. Returns the number written; -1 with err.
static int cloze_synthetic(uint64_t seed, size_t synth_tokens, int count, int ctx_tokens, int end_tokens, int n_endings,
                           const char* path, char* err, size_t errlen) {
    SyntheticCorpus c;
    synthetic_corpus_generate(&c, 1, synth_tokens / 16, seed);  // only the val split is used
    const int eot = SYNTH_VOCAB - 1, D = c.num_domains;
    // documents: [start, end) of each, with its domain
    size_t* start = (size_t*)mallocCheck(sizeof(size_t) * (c.val_len + 1));
    size_t* end = (size_t*)mallocCheck(sizeof(size_t) * (c.val_len + 1));
    int n_docs = 0;
    for (size_t i = 0; i < c.val_len; i++) {
        if (c.val_tokens[i] == (uint32_t)eot) {
            if (n_docs > 0) end[n_docs - 1] = i;
            start[n_docs++] = i;
        }
    }
    if (n_docs > 0) end[n_docs - 1] = c.val_len;
    // documents long enough for a context + ending, and per domain those long enough for a distractor
    int* ctx_docs = (int*)mallocCheck(sizeof(int) * (size_t)(n_docs + 1));
    int** dom_docs = (int**)mallocCheck(sizeof(int*) * (size_t)D);
    int* n_dom = (int*)callocCheck((size_t)D, sizeof(int));
    int n_ctx_docs = 0;
    for (int d = 0; d < D; d++) dom_docs[d] = (int*)mallocCheck(sizeof(int) * (size_t)(n_docs + 1));
    for (int k = 0; k < n_docs; k++) {
        size_t len = end[k] - start[k];
        int dom = c.val_domains[start[k]];
        if (len >= (size_t)(ctx_tokens + end_tokens)) ctx_docs[n_ctx_docs++] = k;
        if (len >= (size_t)(end_tokens + 1)) dom_docs[dom][n_dom[dom]++] = k;
    }
    int rc = 0;
    MCSet set = {0};
    for (int d = 0; d < D; d++) if (n_dom[d] == 0) rc = set_err(err, errlen, "synthetic val split: domain %d has no document of %d+ tokens (raise --synthetic-tokens)", d, end_tokens + 1);
    if (rc == 0 && n_ctx_docs == 0) rc = set_err(err, errlen, "synthetic val split: no document holds %d tokens", ctx_tokens + end_tokens);
    if (rc == 0) {
        uint64_t rng = derive_seed(seed, CLOZE_STREAM);
        set.format = "bin";
        set.examples = (MCExample*)callocCheck((size_t)count, sizeof(MCExample));
        int others[256];
        for (int e = 0; e < count; e++) {
            MCExample* ex = &set.examples[set.n++];
            int k = ctx_docs[cloze_rand(&rng, (uint64_t)n_ctx_docs)];
            int dom = c.val_domains[start[k]];
            size_t len = end[k] - start[k];
            size_t off = start[k] + cloze_rand(&rng, len - (size_t)(ctx_tokens + end_tokens) + 1);
            ex->index = e;
            ex->label = (int)cloze_rand(&rng, (uint64_t)n_endings);
            ex->n_endings = n_endings;
            ex->ctx_len = ctx_tokens;
            ex->ending_len = (int*)mallocCheck(sizeof(int) * (size_t)n_endings);
            ex->tokens = (int*)mallocCheck(sizeof(int) * (size_t)(ctx_tokens + n_endings * end_tokens));
            for (int t = 0; t < ctx_tokens; t++) ex->tokens[t] = (int)c.val_tokens[off + t];
            // the other domains, shuffled: distractor q comes from others[q % (D-1)]
            int n_others = 0;
            for (int d = 0; d < D; d++) if (d != dom) others[n_others++] = d;
            for (int q = n_others - 1; q > 0; q--) {
                int j = (int)cloze_rand(&rng, (uint64_t)q + 1);
                int t = others[q]; others[q] = others[j]; others[j] = t;
            }
            for (int j = 0, q = 0; j < n_endings; j++) {
                int* out = ex->tokens + ctx_tokens + j * end_tokens;
                ex->ending_len[j] = end_tokens;
                if (j == ex->label) {
                    for (int t = 0; t < end_tokens; t++) out[t] = (int)c.val_tokens[off + ctx_tokens + t];
                    continue;
                }
                int od = others[q++ % n_others];
                int kd = dom_docs[od][cloze_rand(&rng, (uint64_t)n_dom[od])];
                size_t dlen = end[kd] - start[kd];
                size_t doff = start[kd] + 1 + cloze_rand(&rng, dlen - (size_t)end_tokens);  // after the end-of-text
                for (int t = 0; t < end_tokens; t++) out[t] = (int)c.val_tokens[doff + t];
            }
        }
        rc = mc_write_bin(path, &set, err, errlen);
    }
    for (int d = 0; d < D; d++) free(dom_docs[d]);
    free(dom_docs); free(n_dom); free(ctx_docs); free(start); free(end);
    int written = set.n;
    mc_free(&set);
    synthetic_corpus_free(&c);
    return rc != 0 ? -1 : written;
}

// ----------------------------------------------------------------------------

int make_cloze_main(int argc, char** argv) {
    Flags flags;
    flags_parse(&flags, CLOZE_FLAGS, CLOZE_NUM_FLAGS, "data/make_cloze (-i TEXT | --shard SHARD | --synthetic) -o OUT [flags]", argc, argv);
    const char* out = flags.value[CF_OUTPUT];
    if (!out[0]) die("-o OUTPUT is required (see --help)");
    int sources = (flags.value[CF_INPUT][0] != 0) + (flags.value[CF_SHARD][0] != 0) + flags.given[CF_SYNTHETIC];
    if (sources != 1) die("give exactly one of -i TEXT, --shard SHARD, --synthetic (see --help)");
    int count = (int)flag_int(&flags, CF_COUNT, 1, 65535);
    int context_lines = (int)flag_int(&flags, CF_CONTEXT_LINES, 1, 1000);
    int n_endings = (int)flag_int(&flags, CF_ENDINGS, 2, 64);
    uint64_t seed = (uint64_t)flag_int(&flags, CF_SEED, 0, 0xFFFFFFFFL);
    char err[1024];
    int written;
    if (flags.given[CF_SYNTHETIC]) {
        int ctx_tokens = (int)flag_int(&flags, CF_CONTEXT_TOKENS, 1, 200);
        int end_tokens = (int)flag_int(&flags, CF_ENDING_TOKENS, 1, 200);
        size_t synth_tokens = (size_t)flag_int(&flags, CF_SYNTH_TOKENS, 10000, 1L << 31);
        written = cloze_synthetic(seed, synth_tokens, count, ctx_tokens, end_tokens, n_endings, out, err, sizeof(err));
        if (written < 0) die("%s", err);
        printf("make_cloze: %d examples (%d endings, %d context + %d ending tokens) from the synthetic val split "
               "(seed %llu) -> %s\n", written, n_endings, ctx_tokens, end_tokens, (unsigned long long)seed, out);
        return 0;
    }
    unsigned char* text = NULL;
    size_t* doc_start = NULL;
    int n_docs = 1;
    const char* source;
    if (flags.value[CF_INPUT][0]) {
        source = flags.value[CF_INPUT];
        size_t size;
        if (eval_read_file(source, &text, &size, err, sizeof(err)) != 0) die("%s", err);
        doc_start = (size_t*)mallocCheck(2 * sizeof(size_t));
        doc_start[0] = 0; doc_start[1] = size;
    } else {
        source = flags.value[CF_SHARD];
        char tok_path[4096];
        if (flags.value[CF_TOKENIZER][0]) snprintf(tok_path, sizeof(tok_path), "%s", flags.value[CF_TOKENIZER]);
        else eval_beside(tok_path, sizeof(tok_path), source, "tokenizer.bin");
        Tokenizer tok;
        if (tokenizer_load(&tok, tok_path, err, sizeof(err)) != 0) die("%s", err);
        if (cloze_decode_shard(source, &tok, &text, &doc_start, &n_docs, err, sizeof(err)) != 0) die("%s", err);
        tokenizer_free(&tok);
    }
    written = cloze_text(text, doc_start, n_docs, count, context_lines, n_endings, flags.given[CF_SPLIT_LINE], seed, out, err, sizeof(err));
    if (written < 0) die("%s", err);
    printf("make_cloze: %d examples (%d endings, %d context lines) from %s (seed %llu) -> %s\n", written, n_endings,
           context_lines, source, (unsigned long long)seed, out);
    free(text);
    free(doc_start);
    return 0;
}

#ifndef MAKE_CLOZE_NO_MAIN
int main(int argc, char** argv) { return make_cloze_main(argc, argv); }
#endif
