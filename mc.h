/*
mc.h -- multiple-choice benchmark files: the reader of llm.c's hellaswag .bin format and of JSONL
(ctx | ctx_a + ctx_b, endings, label, optional sep), the .bin writer data/make_cloze uses, and
what they need: reading a whole file, a JSON string writer and a small JSON parser.
*/
#ifndef MC_H
#define MC_H

#include <sys/stat.h>
#include "moe.h"
#include "tokenizer.h"

// ----------------------------------------------------------------------------
// small helpers: files
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
// multiple-choice files (docs/formats.md; README, Multiple choice)
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
    if (set->n == 0) {
        mc_free(set);
        return set_err(err, errlen, "%s: holds no examples (an empty multiple-choice file scores nothing)", path);
    }
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

#endif // MC_H
