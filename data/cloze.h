/*
cloze.h -- the cloze benchmark builders of data/make_cloze (see make_cloze.c for what they build):
cloze_text from held-out text, cloze_decode_shard to get that text from a token shard, and
cloze_synthetic from the built-in corpus's val split.
*/
#ifndef CLOZE_H
#define CLOZE_H

#include "../mc.h"
#include "../dataloader.h"

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
// Fitting examples to a model's T (make_cloze --seq-len): with tok and T > 0, an example is kept only
// if its tokens fit one row of T+1 (eval_moe's rule: context tokens + longest ending's tokens <= T+1,
// ending = encode(sep + ending)); a context too long loses whole lines from its start (at least
// the last line, or with split the true line's first half, stays), counted in shortened; an
// example that still does not fit is not written, counted in dropped.
typedef struct {
    const Tokenizer* tok;
    int T;
    int shortened, dropped;
} ClozeFit;

// tokens of text[0, n) under tok
static int cloze_token_count(const Tokenizer* tok, const unsigned char* text, size_t n) {
    uint32_t* ids;
    size_t n_ids;
    char err[256];
    if (tokenizer_encode(tok, text, n, &ids, &n_ids, err, sizeof(err)) != 0) return 1 << 30;
    free(ids);
    return (int)n_ids;
}

static int cloze_text(const unsigned char* text, const size_t* doc_start, int n_docs, int count, int context_lines,
                      int n_endings, int split, uint64_t seed, ClozeFit* fit, const char* path, char* err, size_t errlen) {
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
        if (fit != NULL && fit->tok != NULL && fit->T > 0) {
            int max_end = 0;
            for (int j = 0; j < n_endings; j++) {  // encode(sep + ending), as eval_moe does
                size_t es, el, sep_len = true_start - ctx_end;
                cloze_ending(text, &L.lines[chosen[j]], split, &es, &el);
                unsigned char* joined = (unsigned char*)mallocCheck(sep_len + el + 1);
                memcpy(joined, text + ctx_end, sep_len);
                memcpy(joined + sep_len, text + es, el);
                int n_end = cloze_token_count(fit->tok, joined, sep_len + el);
                free(joined);
                if (n_end > max_end) max_end = n_end;
            }
            int first_line = i, min_first = split ? truth : truth - 1, fits = 0;
            while (max_end <= fit->T) {
                size_t start = L.lines[first_line].start;
                int n_ctx = ctx_end > start ? cloze_token_count(fit->tok, text + start, ctx_end - start) : 1;
                if (n_ctx + max_end <= fit->T + 1) { fits = 1; break; }
                if (first_line == min_first) break;
                first_line++;
            }
            if (!fits) { fit->dropped++; continue; }
            if (first_line != i) fit->shortened++;
            first = &L.lines[first_line];
        }
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

#endif // CLOZE_H
