/*
eval_moe — judge a trained checkpoint: validation loss, perplexity and bits per byte; multiple-choice
accuracy (llm.c's hellaswag .bin format or a JSONL file); text generation; and (hook below) the
per-layer expert analysis of SPEC §6.

    ./eval_moe -e out/model_00000300.bin                     # synthetic corpus: its val split
    ./eval_moe -e out/model_00000300.bin -j data/tinyshakespeare/tiny_shakespeare_val.bin \
               --mc data/tinyshakespeare/cloze.jsonl --prompt "ROMEO:" -g 64

Every flag is declared once, in EVAL_FLAGS below; --help prints that table. Everything printed on
the terminal is also written to a JSON file (--json, default <checkpoint>.eval.json).

Layout of this file: flags; small helpers (JSON writer, JSON parser); the multiple-choice files
(reader of both formats and the .bin writer data/make_cloze.c uses); the three evaluations (loss,
multiple choice, generation); the expert-analysis hook; main. Defining EVAL_NO_MAIN before
including this file leaves main out, so tests (dev/wip_eval_tests.c) and data/make_cloze.c can
use its functions; eval_main(argc, argv) is the whole program as a function.

Multiple choice (SPEC §5.4). Each ending is scored by the cross-entropy of its tokens given the
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
#ifndef EVAL_MOE_C
#define EVAL_MOE_C

#include <time.h>
#include <sys/stat.h>
#include "moe.h"
#include "dataloader.h"
#include "tokenizer.h"
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
// small helpers: time, files

static double eval_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int eval_file_exists(const char* path) { struct stat st; return stat(path, &st) == 0 && S_ISREG(st.st_mode); }

// Reads a whole file into a new buffer (NUL-terminated, the NUL not counted). 0, or -1 with err.
static int eval_read_file(const char* path, unsigned char** data, size_t* size, char* err, size_t errlen) {
    *data = NULL; *size = 0;
    FILE* f = fopen(path, "rb");
    if (f == NULL) return set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0, got;
    unsigned char* buf = (unsigned char*)mallocCheck(cap + 1);
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            unsigned char* bigger = (unsigned char*)realloc(buf, cap + 1);
            if (bigger == NULL) { free(buf); fclose(f); return set_err(err, errlen, "%s: out of memory", path); }
            buf = bigger;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) { free(buf); return set_err(err, errlen, "%s: read error", path); }
    buf[n] = 0;
    *data = buf; *size = n;
    return 0;
}

// "dir/of/pattern/" + name into out: the file beside the files a glob names.
static void eval_beside(char* out, size_t n, const char* pattern, const char* name) {
    snprintf(out, n, "%s", pattern);
    char* slash = strrchr(out, '/');
    if (slash != NULL) snprintf(slash + 1, n - (size_t)(slash + 1 - out), "%s", name);
    else snprintf(out, n, "%s", name);
}

// ----------------------------------------------------------------------------
// JSON out: a string with the escapes JSON needs. Bytes >= 0x80 go out as they are (UTF-8 text
// stays UTF-8; the reader below passes such bytes through unchanged as well).

static void json_write_string(FILE* f, const unsigned char* s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        switch (c) {
            case '"': fputs("\\\"", f); break;
            case '\\': fputs("\\\\", f); break;
            case '\n': fputs("\\n", f); break;
            case '\r': fputs("\\r", f); break;
            case '\t': fputs("\\t", f); break;
            case '\b': fputs("\\b", f); break;
            case '\f': fputs("\\f", f); break;
            default:
                if (c < 0x20 || c == 0x7f) fprintf(f, "\\u%04x", c);
                else fputc(c, f);
        }
    }
    fputc('"', f);
}
static void json_write_cstr(FILE* f, const char* s) { json_write_string(f, (const unsigned char*)s, strlen(s)); }
// a number, or null when it is not finite (JSON has no NaN)
static void json_write_number(FILE* f, double x) {
    if (isfinite(x)) fprintf(f, "%.9g", x);
    else fputs("null", f);
}

// ----------------------------------------------------------------------------
// JSON in: a small DOM parser, enough for JSONL benchmark files. Strings may hold any bytes
// (escapes \" \\ \/ \b \f \n \r \t \uXXXX, surrogate pairs joined into one code point, a lone
// surrogate refused); numbers follow JSON's grammar; nesting is limited to 64 levels.

typedef enum { JSON_NULL, JSON_FALSE, JSON_TRUE, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } JsonType;

typedef struct JsonValue {
    JsonType type;
    double number;             // JSON_NUMBER
    char* str;                 // JSON_STRING: the bytes (NUL-terminated; may hold NULs)
    size_t len;                //   and their count
    struct JsonValue* items;   // JSON_ARRAY / JSON_OBJECT: the n values
    char** keys;               // JSON_OBJECT: the n keys (NUL-terminated)
    size_t n;
} JsonValue;

typedef struct {
    const unsigned char* s;
    size_t n, pos;
    int depth;
    char* err;
    size_t errlen;
} JsonParser;

#define JSON_MAX_DEPTH 64

static int json_fail(JsonParser* p, const char* what) {
    return set_err(p->err, p->errlen, "column %zu: %s", p->pos + 1, what);
}

static void json_free(JsonValue* v) {
    free(v->str);
    for (size_t i = 0; i < v->n; i++) {
        if (v->items != NULL) json_free(&v->items[i]);
        if (v->keys != NULL) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    memset(v, 0, sizeof(*v));
}

static void json_skip_space(JsonParser* p) {
    while (p->pos < p->n && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
        p->pos++;
}

typedef struct { char* data; size_t len, cap; } JsonBuf;
static void jbuf_push(JsonBuf* b, const void* bytes, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 32;
        while (cap < b->len + n + 1) cap *= 2;
        char* bigger = (char*)realloc(b->data, cap);
        if (bigger == NULL) die("out of memory parsing JSON");
        b->data = bigger; b->cap = cap;
    }
    memcpy(b->data + b->len, bytes, n);
    b->len += n;
    b->data[b->len] = 0;
}

static int json_hex4(JsonParser* p, uint32_t* out) {
    if (p->pos + 4 > p->n) return json_fail(p, "truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p->s[p->pos + i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return json_fail(p, "bad hex digit in \\u escape");
        v = v * 16 + (uint32_t)d;
    }
    p->pos += 4;
    *out = v;
    return 0;
}

static void utf8_append(JsonBuf* b, uint32_t cp) {
    unsigned char u[4];
    size_t n;
    if (cp < 0x80) { u[0] = (unsigned char)cp; n = 1; }
    else if (cp < 0x800) { u[0] = (unsigned char)(0xC0 | cp >> 6); u[1] = (unsigned char)(0x80 | (cp & 63)); n = 2; }
    else if (cp < 0x10000) {
        u[0] = (unsigned char)(0xE0 | cp >> 12); u[1] = (unsigned char)(0x80 | (cp >> 6 & 63));
        u[2] = (unsigned char)(0x80 | (cp & 63)); n = 3;
    } else {
        u[0] = (unsigned char)(0xF0 | cp >> 18); u[1] = (unsigned char)(0x80 | (cp >> 12 & 63));
        u[2] = (unsigned char)(0x80 | (cp >> 6 & 63)); u[3] = (unsigned char)(0x80 | (cp & 63)); n = 4;
    }
    jbuf_push(b, u, n);
}

// p->pos is at the opening quote
static int json_parse_string(JsonParser* p, char** out, size_t* out_len) {
    JsonBuf b = {0};
    jbuf_push(&b, "", 0);
    p->pos++;
    for (;;) {
        if (p->pos >= p->n) { free(b.data); return json_fail(p, "unterminated string"); }
        unsigned char c = p->s[p->pos];
        if (c == '"') { p->pos++; break; }
        if (c < 0x20) { free(b.data); return json_fail(p, "control character inside a string (escape it)"); }
        if (c != '\\') { jbuf_push(&b, &c, 1); p->pos++; continue; }
        p->pos++;
        if (p->pos >= p->n) { free(b.data); return json_fail(p, "unterminated escape"); }
        c = p->s[p->pos++];
        char simple = 0;
        switch (c) {
            case '"': simple = '"'; break;
            case '\\': simple = '\\'; break;
            case '/': simple = '/'; break;
            case 'b': simple = '\b'; break;
            case 'f': simple = '\f'; break;
            case 'n': simple = '\n'; break;
            case 'r': simple = '\r'; break;
            case 't': simple = '\t'; break;
            case 'u': {
                uint32_t cp;
                if (json_hex4(p, &cp) != 0) { free(b.data); return -1; }
                if (cp >= 0xDC00 && cp <= 0xDFFF) { free(b.data); return json_fail(p, "lone low surrogate in \\u escape"); }
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    uint32_t lo;
                    if (p->pos + 2 > p->n || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u') {
                        free(b.data);
                        return json_fail(p, "high surrogate not followed by a \\u low surrogate");
                    }
                    p->pos += 2;
                    if (json_hex4(p, &lo) != 0) { free(b.data); return -1; }
                    if (lo < 0xDC00 || lo > 0xDFFF) { free(b.data); return json_fail(p, "high surrogate not followed by a low surrogate"); }
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                utf8_append(&b, cp);
                continue;
            }
            default: p->pos--; free(b.data); return json_fail(p, "unknown escape in string");
        }
        jbuf_push(&b, &simple, 1);
    }
    *out = b.data;
    *out_len = b.len;
    return 0;
}

static int json_parse_number(JsonParser* p, double* out) {
    size_t start = p->pos, i = p->pos;
    const unsigned char* s = p->s;
    if (i < p->n && s[i] == '-') i++;
    if (i < p->n && s[i] == '0') i++;
    else if (i < p->n && s[i] >= '1' && s[i] <= '9') { while (i < p->n && s[i] >= '0' && s[i] <= '9') i++; }
    else return json_fail(p, "bad number");
    if (i < p->n && s[i] == '.') {
        i++;
        if (i >= p->n || s[i] < '0' || s[i] > '9') { p->pos = i; return json_fail(p, "bad number: digits must follow '.'"); }
        while (i < p->n && s[i] >= '0' && s[i] <= '9') i++;
    }
    if (i < p->n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < p->n && (s[i] == '+' || s[i] == '-')) i++;
        if (i >= p->n || s[i] < '0' || s[i] > '9') { p->pos = i; return json_fail(p, "bad number: digits must follow the exponent"); }
        while (i < p->n && s[i] >= '0' && s[i] <= '9') i++;
    }
    char tmp[64];
    size_t len = i - start;
    if (len >= sizeof(tmp)) return json_fail(p, "number too long");
    memcpy(tmp, s + start, len);
    tmp[len] = 0;
    *out = strtod(tmp, NULL);
    p->pos = i;
    return 0;
}

static int json_parse_value(JsonParser* p, JsonValue* v);

static int json_parse_container(JsonParser* p, JsonValue* v, int is_object) {
    if (++p->depth > JSON_MAX_DEPTH) return json_fail(p, "nested too deeply");
    v->type = is_object ? JSON_OBJECT : JSON_ARRAY;
    char close = is_object ? '}' : ']';
    size_t cap = 0;
    p->pos++;
    json_skip_space(p);
    if (p->pos < p->n && p->s[p->pos] == close) { p->pos++; p->depth--; return 0; }
    for (;;) {
        if (v->n == cap) {
            cap = cap ? 2 * cap : 4;
            JsonValue* items = (JsonValue*)realloc(v->items, cap * sizeof(JsonValue));
            if (items == NULL) die("out of memory parsing JSON");
            v->items = items;
            if (is_object) {
                char** keys = (char**)realloc(v->keys, cap * sizeof(char*));
                if (keys == NULL) die("out of memory parsing JSON");
                v->keys = keys;
            }
        }
        memset(&v->items[v->n], 0, sizeof(JsonValue));
        if (is_object) {
            v->keys[v->n] = NULL;
            json_skip_space(p);
            if (p->pos >= p->n || p->s[p->pos] != '"') return json_fail(p, "expected a string key");
            size_t klen;
            if (json_parse_string(p, &v->keys[v->n], &klen) != 0) return -1;
            json_skip_space(p);
            if (p->pos >= p->n || p->s[p->pos] != ':') { v->n++; return json_fail(p, "expected ':' after the key"); }
            p->pos++;
        }
        v->n++;  // counted before parsing, so json_free releases a half-parsed item too
        if (json_parse_value(p, &v->items[v->n - 1]) != 0) return -1;
        json_skip_space(p);
        if (p->pos < p->n && p->s[p->pos] == ',') { p->pos++; continue; }
        if (p->pos < p->n && p->s[p->pos] == close) { p->pos++; break; }
        return json_fail(p, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
    p->depth--;
    return 0;
}

static int json_parse_value(JsonParser* p, JsonValue* v) {
    memset(v, 0, sizeof(*v));
    json_skip_space(p);
    if (p->pos >= p->n) return json_fail(p, "unexpected end of input");
    unsigned char c = p->s[p->pos];
    if (c == '{' || c == '[') return json_parse_container(p, v, c == '{');
    if (c == '"') { v->type = JSON_STRING; return json_parse_string(p, &v->str, &v->len); }
    if (c == '-' || (c >= '0' && c <= '9')) { v->type = JSON_NUMBER; return json_parse_number(p, &v->number); }
    static const struct { const char* word; JsonType type; } literals[] = {
        {"true", JSON_TRUE}, {"false", JSON_FALSE}, {"null", JSON_NULL}};
    for (int i = 0; i < 3; i++) {
        size_t len = strlen(literals[i].word);
        if (p->pos + len <= p->n && memcmp(p->s + p->pos, literals[i].word, len) == 0) {
            v->type = literals[i].type;
            p->pos += len;
            return 0;
        }
    }
    return json_fail(p, "unexpected character (not a JSON value)");
}

// Parses one JSON value filling text[0..n) (whitespace around it allowed). 0, or -1 with err
// "column C: what"; *out is then empty.
static int json_parse(const unsigned char* text, size_t n, JsonValue* out, char* err, size_t errlen) {
    JsonParser p = {text, n, 0, 0, err, errlen};
    if (json_parse_value(&p, out) != 0) { json_free(out); return -1; }
    json_skip_space(&p);
    if (p.pos != n) { json_free(out); return json_fail(&p, "unexpected text after the JSON value"); }
    return 0;
}

// the value of key in an object (the last one if repeated), or NULL
static const JsonValue* json_get(const JsonValue* obj, const char* key) {
    if (obj->type != JSON_OBJECT) return NULL;
    for (size_t i = obj->n; i-- > 0;) if (strcmp(obj->keys[i], key) == 0) return &obj->items[i];
    return NULL;
}

// ----------------------------------------------------------------------------
// multiple-choice files (SPEC §5.4)
//
// llm.c's eval .bin (its dev/data/data_common.py write_evalfile): int32 header[256], [0] 20240522,
// [1] 1, [2] number of examples, [3] longest example in bytes; then per example a uint16 stream:
// 65535, the example's byte count (all of its uint16s, these two included), its index, label,
// number of endings, context length, context tokens, then per ending its length and tokens.

#define MC_MAGIC 20240522
#define MC_VERSION 1
#define MC_MAX_ENDINGS 1024

typedef struct {
    int index;        // .bin: the example's index field; JSONL: its line number
    int label;
    int n_endings;
    int ctx_len;
    int* tokens;      // the context, then each ending, concatenated
    int* ending_len;  // (n_endings)
} MCExample;

typedef struct {
    MCExample* examples;
    int n;
    const char* format;  // "bin" or "jsonl"
} MCSet;

static void mc_free(MCSet* set) {
    for (int i = 0; i < set->n; i++) { free(set->examples[i].tokens); free(set->examples[i].ending_len); }
    free(set->examples);
    memset(set, 0, sizeof(*set));
}

// pointer to ending j's tokens
static const int* mc_ending(const MCExample* ex, int j) {
    const int* p = ex->tokens + ex->ctx_len;
    for (int k = 0; k < j; k++) p += ex->ending_len[k];
    return p;
}

static MCExample* mc_push(MCSet* set, int* cap) {
    if (set->n == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        MCExample* bigger = (MCExample*)realloc(set->examples, (size_t)*cap * sizeof(MCExample));
        if (bigger == NULL) die("out of memory reading a multiple-choice file");
        set->examples = bigger;
    }
    MCExample* ex = &set->examples[set->n++];
    memset(ex, 0, sizeof(*ex));
    return ex;
}

static uint32_t mc_u16(const unsigned char* p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }

// Reads llm.c's .bin from memory. name is used in messages. 0, or -1 with err naming the record.
static int mc_parse_bin(const unsigned char* data, size_t size, const char* name, MCSet* set, char* err, size_t errlen) {
    memset(set, 0, sizeof(*set));
    set->format = "bin";
    if (size < 1024) return set_err(err, errlen, "%s: %zu bytes, shorter than the 1024-byte header", name, size);
    int32_t header[256];
    memcpy(header, data, sizeof(header));
    if (header[0] != MC_MAGIC) return set_err(err, errlen, "%s: bad magic %d (expected %d): not a multiple-choice .bin", name, header[0], MC_MAGIC);
    if (header[1] != MC_VERSION) return set_err(err, errlen, "%s: version %d, this build reads version %d", name, header[1], MC_VERSION);
    if (header[2] < 0) return set_err(err, errlen, "%s: header says %d examples", name, header[2]);
    int cap = 0;
    size_t pos = 1024;
    int record = 0;  // 1-based number of the record being read
    while (pos < size) {
        record++;
        if (size - pos < 6) {
            mc_free(set);
            return set_err(err, errlen, "%s: record %d (byte offset %zu): truncated: %zu bytes left, a record header is 6",
                           name, record, pos, size - pos);
        }
        uint32_t marker = mc_u16(data + pos), nbytes = mc_u16(data + pos + 2);
        const char* why = NULL;
        char whybuf[256];
        if (marker != 65535) {
            snprintf(whybuf, sizeof(whybuf), "bad marker %u (expected 65535)", marker); why = whybuf;
        } else if (nbytes < 12 || nbytes % 2 != 0) {
            snprintf(whybuf, sizeof(whybuf), "byte count %u is odd or below the 12-byte minimum", nbytes); why = whybuf;
        } else if (pos + nbytes > size) {
            snprintf(whybuf, sizeof(whybuf), "byte count %u runs past the end of the file (%zu bytes left)", nbytes, size - pos);
            why = whybuf;
        }
        size_t nwords = nbytes / 2, w = 2;
        const unsigned char* rec = data + pos;
        MCExample* ex = NULL;
        if (why == NULL) {
            ex = mc_push(set, &cap);
            ex->index = (int)mc_u16(rec + 4);
            ex->label = (int)mc_u16(rec + 6);
            ex->n_endings = (int)mc_u16(rec + 8);
            w = 5;
            if (ex->n_endings < 2 || ex->n_endings > MC_MAX_ENDINGS) {
                snprintf(whybuf, sizeof(whybuf), "%d endings (2..%d allowed)", ex->n_endings, MC_MAX_ENDINGS); why = whybuf;
            } else if (ex->label >= ex->n_endings) {
                snprintf(whybuf, sizeof(whybuf), "label %d but only %d endings", ex->label, ex->n_endings); why = whybuf;
            }
        }
        if (why == NULL) {
            ex->ending_len = (int*)mallocCheck(sizeof(int) * (size_t)ex->n_endings);
            ex->tokens = (int*)mallocCheck(sizeof(int) * nwords);  // never more tokens than words
            size_t ntok = 0;
            for (int part = -1; part < ex->n_endings && why == NULL; part++) {
                if (w >= nwords) {
                    if (part < 0) snprintf(whybuf, sizeof(whybuf), "the record (%u bytes) ends before the context length", nbytes);
                    else snprintf(whybuf, sizeof(whybuf), "the record (%u bytes) ends before the length of ending %d", nbytes, part);
                    why = whybuf;
                    break;
                }
                uint32_t len = mc_u16(rec + 2 * w);
                w++;
                if (w + len > nwords) {
                    if (part < 0) snprintf(whybuf, sizeof(whybuf), "context length %u runs past the record's end (%u bytes)", len, nbytes);
                    else snprintf(whybuf, sizeof(whybuf), "ending %d length %u runs past the record's end (%u bytes)", part, len, nbytes);
                    why = whybuf;
                    break;
                }
                if (part >= 0 && len == 0) { snprintf(whybuf, sizeof(whybuf), "ending %d has no tokens", part); why = whybuf; break; }
                for (uint32_t k = 0; k < len; k++) ex->tokens[ntok++] = (int)mc_u16(rec + 2 * (w + k));
                w += len;
                if (part < 0) ex->ctx_len = (int)len;
                else ex->ending_len[part] = (int)len;
            }
            if (why == NULL && w != nwords) {
                snprintf(whybuf, sizeof(whybuf), "the record holds %u bytes but its fields use %zu", nbytes, 2 * w);
                why = whybuf;
            }
        }
        if (why != NULL) {
            mc_free(set);
            return set_err(err, errlen, "%s: record %d (byte offset %zu): %s", name, record, pos, why);
        }
        pos += nbytes;
    }
    if (set->n != header[2]) {
        int n = set->n;
        mc_free(set);
        return set_err(err, errlen, "%s: header says %d examples, the file holds %d records", name, header[2], n);
    }
    set->format = "bin";
    return 0;
}

// Reads a JSONL benchmark from memory, tokenizing with tok. 0, or -1 with err "name:LINE: what".
static int mc_parse_jsonl(const unsigned char* data, size_t size, const char* name, const Tokenizer* tok,
                          MCSet* set, char* err, size_t errlen) {
    memset(set, 0, sizeof(*set));
    set->format = "jsonl";
    int cap = 0, line = 0;
    char why[512];
    for (size_t pos = 0; pos < size;) {
        line++;
        size_t end = pos;
        while (end < size && data[end] != '\n') end++;
        size_t next = end < size ? end + 1 : end, len = end - pos;
        if (len > 0 && data[pos + len - 1] == '\r') len--;
        int blank = 1;
        for (size_t i = pos; i < pos + len; i++) if (data[i] != ' ' && data[i] != '\t') { blank = 0; break; }
        if (blank) { pos = next; continue; }
        JsonValue v;
        if (json_parse(data + pos, len, &v, why, sizeof(why)) != 0) {
            mc_free(set);
            return set_err(err, errlen, "%s:%d: bad JSON: %s", name, line, why);
        }
        const char* fail = NULL;
        const JsonValue* ctx = json_get(&v, "ctx");
        const JsonValue* ctx_a = json_get(&v, "ctx_a");
        const JsonValue* ctx_b = json_get(&v, "ctx_b");
        const JsonValue* endings = json_get(&v, "endings");
        const JsonValue* label = json_get(&v, "label");
        const JsonValue* sep = json_get(&v, "sep");
        if (v.type != JSON_OBJECT) fail = "the line is not a JSON object";
        else if (ctx != NULL && ctx->type != JSON_STRING) fail = "field \"ctx\" is not a string";
        else if (ctx == NULL && (ctx_a == NULL || ctx_b == NULL)) fail = "missing field \"ctx\" (or \"ctx_a\" and \"ctx_b\")";
        else if (ctx == NULL && (ctx_a->type != JSON_STRING || ctx_b->type != JSON_STRING)) fail = "fields \"ctx_a\"/\"ctx_b\" are not strings";
        else if (endings == NULL) fail = "missing field \"endings\"";
        else if (endings->type != JSON_ARRAY) fail = "field \"endings\" is not an array";
        else if (endings->n < 2 || endings->n > MC_MAX_ENDINGS) fail = "field \"endings\" needs 2 to 1024 strings";
        else if (label == NULL) fail = "missing field \"label\"";
        else if (label->type != JSON_NUMBER || label->number != floor(label->number)) fail = "field \"label\" is not an integer";
        else if (label->number < 0 || label->number >= (double)endings->n) {
            snprintf(why, sizeof(why), "label %g is out of range for %zu endings", label->number, endings->n);
            fail = why;
        } else if (sep != NULL && sep->type != JSON_STRING) fail = "field \"sep\" is not a string";
        for (size_t j = 0; fail == NULL && j < endings->n; j++)
            if (endings->items[j].type != JSON_STRING) { snprintf(why, sizeof(why), "ending %zu is not a string", j); fail = why; }
        if (fail != NULL) {
            json_free(&v);
            mc_free(set);
            return set_err(err, errlen, "%s:%d: %s", name, line, fail);
        }
        // the texts: context, then sep + each ending
        JsonBuf text = {0};
        jbuf_push(&text, "", 0);
        if (ctx != NULL) jbuf_push(&text, ctx->str, ctx->len);
        else { jbuf_push(&text, ctx_a->str, ctx_a->len); jbuf_push(&text, " ", 1); jbuf_push(&text, ctx_b->str, ctx_b->len); }
        uint32_t* ids = NULL;
        size_t n_ids = 0;
        int n_end = (int)endings->n;
        MCExample* ex = mc_push(set, &cap);
        ex->index = line;
        ex->label = (int)label->number;
        ex->n_endings = n_end;
        ex->ending_len = (int*)mallocCheck(sizeof(int) * (size_t)n_end);
        size_t tok_cap = 64, ntok = 0;
        ex->tokens = (int*)mallocCheck(sizeof(int) * tok_cap);
        for (int part = -1; part < n_end && fail == NULL; part++) {
            if (part >= 0) {
                text.len = 0;
                if (sep != NULL) jbuf_push(&text, sep->str, sep->len); else jbuf_push(&text, " ", 1);
                jbuf_push(&text, endings->items[part].str, endings->items[part].len);
            }
            char terr[256];
            if (tokenizer_encode(tok, (const unsigned char*)text.data, text.len, &ids, &n_ids, terr, sizeof(terr)) != 0) {
                snprintf(why, sizeof(why), "%s: %s", part < 0 ? "context" : "ending", terr);
                fail = why;
                break;
            }
            if (part >= 0 && n_ids == 0) { snprintf(why, sizeof(why), "ending %d has no tokens", part); fail = why; }
            if (ntok + n_ids > tok_cap) {
                while (ntok + n_ids > tok_cap) tok_cap *= 2;
                int* bigger = (int*)realloc(ex->tokens, sizeof(int) * tok_cap);
                if (bigger == NULL) die("out of memory reading %s", name);
                ex->tokens = bigger;
            }
            for (size_t k = 0; k < n_ids; k++) ex->tokens[ntok++] = (int)ids[k];
            if (part < 0) ex->ctx_len = (int)n_ids; else ex->ending_len[part] = (int)n_ids;
            free(ids);
            ids = NULL;
        }
        free(text.data);
        json_free(&v);
        if (fail != NULL) {
            mc_free(set);
            return set_err(err, errlen, "%s:%d: %s", name, line, fail);
        }
        pos = next;
    }
    return 0;
}

// Loads a multiple-choice file: .bin when it starts with the magic, else JSONL (needs tok). Then:
// every id must be < V (refused with the example's index), an empty context becomes [eot].
static int mc_load(const char* path, const Tokenizer* tok, int V, int eot, MCSet* set, char* err, size_t errlen) {
    memset(set, 0, sizeof(*set));
    unsigned char* data;
    size_t size;
    if (eval_read_file(path, &data, &size, err, errlen) != 0) return -1;
    int32_t magic = 0;
    if (size >= 4) memcpy(&magic, data, 4);
    int rc;
    if (magic == MC_MAGIC) {
        rc = mc_parse_bin(data, size, path, set, err, errlen);
    } else if (tok == NULL) {
        rc = set_err(err, errlen, "%s: not a .bin (magic %d), so JSONL: that needs a tokenizer (--tokenizer FILE)", path, MC_MAGIC);
    } else {
        rc = mc_parse_jsonl(data, size, path, tok, set, err, errlen);
    }
    free(data);
    if (rc != 0) return -1;
    for (int i = 0; i < set->n; i++) {
        MCExample* ex = &set->examples[i];
        int total = ex->ctx_len;
        for (int j = 0; j < ex->n_endings; j++) total += ex->ending_len[j];
        for (int k = 0; k < total; k++) {
            if (ex->tokens[k] < 0 || ex->tokens[k] >= V) {
                int id = ex->tokens[k], index = ex->index;
                mc_free(set);
                return set_err(err, errlen, "%s: example index %d: token id %d is not below the model's V=%d", path, index, id, V);
            }
        }
        if (ex->ctx_len == 0) {
            int* t = (int*)mallocCheck(sizeof(int) * (size_t)(total + 1));
            t[0] = eot;
            memcpy(t + 1, ex->tokens, sizeof(int) * (size_t)total);
            free(ex->tokens);
            ex->tokens = t;
            ex->ctx_len = 1;
        }
    }
    return 0;
}

// Writes examples in llm.c's .bin format (ids must be < 65535). 0, or -1 with err.
static int mc_write_bin(const char* path, const MCSet* set, char* err, size_t errlen) {
    if (set->n > 65535) return set_err(err, errlen, "%s: %d examples, the format holds at most 65535", path, set->n);
    FILE* f = fopen(path, "wb");
    if (f == NULL) return set_err(err, errlen, "%s: cannot create: %s", path, strerror(errno));
    int32_t header[256] = {0};
    header[0] = MC_MAGIC; header[1] = MC_VERSION; header[2] = set->n;
    for (int pass = 0; pass < 2; pass++) {  // pass 0 finds the longest example, pass 1 writes
        if (pass == 1 && fwrite(header, sizeof(header), 1, f) != 1) goto fail;
        for (int i = 0; i < set->n; i++) {
            const MCExample* ex = &set->examples[i];
            size_t total = (size_t)ex->ctx_len;
            for (int j = 0; j < ex->n_endings; j++) total += (size_t)ex->ending_len[j];
            size_t words = 5 + 1 + (size_t)ex->n_endings + total;
            if (2 * words > 65535) { fclose(f); return set_err(err, errlen, "%s: example %d is %zu bytes, over the 65535 limit", path, i, 2 * words); }
            if (pass == 0) { if ((int32_t)(2 * words) > header[3]) header[3] = (int32_t)(2 * words); continue; }
            uint16_t* w = (uint16_t*)mallocCheck(words * sizeof(uint16_t));
            size_t k = 0;
            w[k++] = 65535; w[k++] = (uint16_t)(2 * words); w[k++] = (uint16_t)ex->index;
            w[k++] = (uint16_t)ex->label; w[k++] = (uint16_t)ex->n_endings;
            w[k++] = (uint16_t)ex->ctx_len;
            for (int t = 0; t < ex->ctx_len; t++) w[k++] = (uint16_t)ex->tokens[t];
            for (int j = 0; j < ex->n_endings; j++) {
                const int* e = mc_ending(ex, j);
                w[k++] = (uint16_t)ex->ending_len[j];
                for (int t = 0; t < ex->ending_len[j]; t++) w[k++] = (uint16_t)e[t];
            }
            int ok = fwrite(w, sizeof(uint16_t), words, f) == words;
            free(w);
            if (!ok) goto fail;
        }
    }
    if (fclose(f) != 0) return set_err(err, errlen, "%s: write failed: %s", path, strerror(errno));
    return 0;
fail:
    fclose(f);
    return set_err(err, errlen, "%s: write failed: %s", path, strerror(errno));
}

// ----------------------------------------------------------------------------
// EXPERT ANALYSIS (SPEC §6): the per-layer MoE metrics, by the same moe.h code train_moe logs, over
// the loss pass's tokens (the probe set: -j, or the synthetic val split; -m batches). The
// expert-output similarity runs every expert on the first batch's tokens. The multiple-choice
// pass has padding tokens and is deliberately not fed.

typedef struct {
    int enabled;         // a loss pass ran on an MoE model (E > 1)
    const MoEModel* m;
    MoEMetrics metrics;
    float* probe_sim;    // (L) expert-output similarity on the first batch
    int batches;
} ExpertAnalysis;

static void expert_analysis_begin(ExpertAnalysis* xa, const MoEModel* m) {
    memset(xa, 0, sizeof(*xa));
    xa->m = m;
    metrics_init(&xa->metrics, m->config.num_layers, m->config.n_expert, m->config.top_k,
                 m->config.vocab_size == SYNTH_VOCAB ? SYNTH_DOMAINS : 0);
    xa->probe_sim = (float*)callocCheck((size_t)m->config.num_layers, sizeof(float));
}
static void expert_analysis_batch(ExpertAnalysis* xa, const MoEModel* m, const uint8_t* domains) {
    if (m->config.n_expert < 2) return;
    metrics_accumulate(&xa->metrics, m, domains);
    if (xa->batches++ == 0)
        for (int l = 0; l < m->config.num_layers; l++) xa->probe_sim[l] = expert_output_similarity(m, l);
    xa->enabled = 1;
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
        fprintf(terminal, "  layer  zero  load_cv  max/mean  load_ent  |S|    angle  spec_ent  sib_coact (random)  out_cos  MI/H(d)\n");
    }
    if (json != NULL) fputs("[", json);
    for (int l = 0; l < mm->L; l++) {
        LayerMetrics lm;
        moe_metrics_layer(mm, xa->m, l, &lm);
        if (terminal != NULL) {
            fprintf(terminal, "  %5d  %4d  %7.4f  %8.3f  %8.4f  %5.3f  %5.3f  %8.4f  %9.4f (%.4f)  %7.4f  ", l, lm.zero_experts,
                    lm.load_cv, lm.load_max_mean, lm.load_entropy, lm.sim_abs_mean, lm.sim_angle_mean, lm.spectral_entropy,
                    lm.sibling_coact, lm.sibling_coact_random, xa->probe_sim[l]);
            if (lm.domain_mi >= 0) fprintf(terminal, "%7.4f\n", lm.domain_mi); else fprintf(terminal, "      -\n");
        }
        if (json != NULL) {
            fprintf(json, "%s{\"layer\": %d, \"tokens\": %.0f, \"zero_experts\": %d, \"load_cv\": %.6f, \"load_max_mean\": %.6f, "
                    "\"load_entropy\": %.6f, \"router_sim_abs\": %.6f, \"router_sim_angle\": %.6f, "
                    "\"router_spectral_entropy\": %.6f, \"sibling_coact\": %.6f, \"sibling_coact_random\": %.6f, "
                    "\"expert_out_sim\": %.6f, \"domain_mi\": ", l ? ", " : "", l, mm->tokens, lm.zero_experts, lm.load_cv,
                    lm.load_max_mean, lm.load_entropy, lm.sim_abs_mean, lm.sim_angle_mean, lm.spectral_entropy,
                    lm.sibling_coact, lm.sibling_coact_random, xa->probe_sim[l]);
            if (lm.domain_mi >= 0) fprintf(json, "%.6f", lm.domain_mi); else fputs("null", json);
            fputs(", \"expert_counts\": [", json);
            for (int e = 0; e < mm->E; e++) fprintf(json, "%s%.0f", e ? ", " : "", mm->counts[(size_t)l * mm->E + e]);
            fputs("]}", json);
        }
    }
    if (json != NULL) fputs("]", json);
}

static void expert_analysis_free(ExpertAnalysis* xa) {
    metrics_free(&xa->metrics);
    free(xa->probe_sim);
}

// ----------------------------------------------------------------------------
// 1. loss, perplexity, bits per byte

typedef struct {
    int batches;
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
static void eval_loss(MoEModel* m, DataLoader* dl, int max_batches, const double* token_bytes,
                      ExpertAnalysis* xa, LossResult* r) {
    memset(r, 0, sizeof(*r));
    int64_t nb = dataloader_num_batches(dl);
    int batches = max_batches < 0 || max_batches > nb ? (int)nb : max_batches;
    int N = dl->B * dl->T;
    dataloader_reset(dl);
    for (int b = 0; b < batches; b++) {
        dataloader_next_batch(dl);
        moe_forward(m, dl->inputs, dl->targets, dl->B, dl->T);
        double s = 0.0;
        for (int n = 0; n < N; n++) s += m->acts.losses[n];
        r->nll_sum += s;
        if (token_bytes != NULL) for (int n = 0; n < N; n++) r->bytes += token_bytes[dl->targets[n]];
        if (xa != NULL) expert_analysis_batch(xa, m, dl->input_domains);
    }
    r->batches = batches;
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
static void mc_evaluate(MoEModel* m, const MCSet* set, int limit, int B, int T, int eot, MCResult* r, double* lsum_out) {
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
    for (;;) {
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
        moe_forward(m, inputs, targets, B, T_run);
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
static void generate(MoEModel* m, const int* prompt, int n_prompt, int gen_len, float temperature, int top_k,
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
        moe_forward(m, window, NULL, 1, T);
        const float* logits = m->acts.logits + (size_t)(len - start - 1) * Vp;
        text[len] = out[i] = sample_token(logits, V, temperature, top_k, rng, scratch);
    }
    free(text); free(window); free(scratch);
}

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

#ifndef EVAL_NO_MAIN
int main(int argc, char** argv) { return eval_main(argc, argv); }
#endif

#endif // EVAL_MOE_C
