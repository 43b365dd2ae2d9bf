/*
tokenizer.h -- byte-level BPE in llm.c's tokenizer file format (docs/formats.md).

The file: uint32 header[256]; header[0] = 20240328, header[1] = version, header[2] = V.
  version 1: V = 50257, end-of-text = 50256, no merges (llm.c's gpt2_tokenizer.bin).
  version 2: header[3] = end-of-text id, header[4] = M.
Then for each token id a uint8 length (1..255) and its bytes; then (version 2) M merges as uint32
pairs (left id, right id) in rank order. llm.c's reader stops after the token table, so it still
loads our files.

What this header does:
  tokenizer_load / tokenizer_write   the file, every field checked (never a crash on a bad file)
  tokenizer_decode / tokenizer_token ids -> bytes, byte-exact; an id >= V is refused
  tokenizer_encode                   bytes -> ids: GPT-2 pre-tokenizer, then rank merging
  tokenizer_train                    a byte-level BPE of vocabulary size V learned from a text
All functions that can fail return 0 on success and -1 with a message in err[errlen].

Encoding:
 1. Split the text into pre-tokens with GPT-2's pattern
      's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    implemented by hand in tokenizer_pretoken_end(). \p{L}, \p{N} and \s come from the generated
    tables in data/unicode_tables.h (\s as JavaScript defines it, because the reference client we
    check against, npm gpt-3-encoder, is JavaScript). An invalid UTF-8 byte is one code point of
    class "other".
 2. Each byte becomes the id of the length-1 token holding it.
 3. Within a pre-token, repeatedly merge the adjacent pair with the lowest merge rank, leftmost
    first. A file without merges (M = 0, e.g. llm.c's own) falls back to merging the adjacent pair
    whose concatenation is the lowest-id token. That is APPROXIMATE: it equals rank merging when
    ids follow merge order (GPT-2's do: id = 256 + rank) except where a pair spells a token by
    another split than the merge that made it. (On tinyshakespeare and the hard strings of
    dev/gpt2_tokenizer/ it still gives GPT-2's ids exactly.) End-of-text is never a merge result.
*/
#ifndef TOKENIZER_H
#define TOKENIZER_H

#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <stdarg.h>
#include <zlib.h>
#include "data/unicode_tables.h"

#define TOKENIZER_MAGIC 20240328
#define TOKENIZER_HEADER_BYTES 1024
#define TOKENIZER_MAX_TOKEN_BYTES 255
#define TOKENIZER_NONE 0xFFFFFFFFu
#define TOKENIZER_EOT_TEXT "<|endoftext|>"

// every failure fills err (errlen bytes) with one line naming the file or the position at fault
__attribute__((format(printf, 3, 4)))
static void tokenizer_error(char* err, size_t errlen, const char* format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(err, errlen, format, args);
    va_end(args);
}

// ----------------------------------------------------------------------------
// Two small open-addressing hash maps (linear probing, power-of-two capacity).

// PairMap: a pair of token ids (left << 32 | right) -> uint32 value.
typedef struct {
    uint64_t* keys;    // UINT64_MAX marks an empty slot (ids are < 2^32 - 1)
    uint32_t* values;
    size_t capacity, count;
} PairMap;

static inline uint64_t pair_key(uint32_t left, uint32_t right) { return ((uint64_t)left << 32) | right; }

static inline size_t hash_u64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
    return (size_t)x;
}

static int pairmap_init(PairMap* m, size_t expected) {
    size_t cap = 16;
    while (cap < 2 * expected + 16) cap *= 2;
    m->keys = (uint64_t*)malloc(cap * sizeof(uint64_t));
    m->values = (uint32_t*)malloc(cap * sizeof(uint32_t));
    m->capacity = cap; m->count = 0;
    if (m->keys == NULL || m->values == NULL) { free(m->keys); free(m->values); m->keys = NULL; m->values = NULL; return -1; }
    memset(m->keys, 0xFF, cap * sizeof(uint64_t));
    return 0;
}

static void pairmap_free(PairMap* m) { free(m->keys); free(m->values); memset(m, 0, sizeof(*m)); }

// returns the value, or TOKENIZER_NONE if absent
static inline uint32_t pairmap_get(const PairMap* m, uint64_t key) {
    if (m->capacity == 0) return TOKENIZER_NONE;
    size_t mask = m->capacity - 1;
    for (size_t i = hash_u64(key) & mask;; i = (i + 1) & mask) {
        if (m->keys[i] == key) return m->values[i];
        if (m->keys[i] == UINT64_MAX) return TOKENIZER_NONE;
    }
}

// inserts key -> value unless key is present; returns the value now stored, TOKENIZER_NONE on OOM
static uint32_t pairmap_put_new(PairMap* m, uint64_t key, uint32_t value) {
    if (2 * (m->count + 1) > m->capacity) {  // grow at half full
        PairMap bigger;
        if (pairmap_init(&bigger, m->capacity) != 0) return TOKENIZER_NONE;
        for (size_t i = 0; i < m->capacity; i++)
            if (m->keys[i] != UINT64_MAX) pairmap_put_new(&bigger, m->keys[i], m->values[i]);
        pairmap_free(m);
        *m = bigger;
    }
    size_t mask = m->capacity - 1;
    for (size_t i = hash_u64(key) & mask;; i = (i + 1) & mask) {
        if (m->keys[i] == key) return m->values[i];
        if (m->keys[i] == UINT64_MAX) { m->keys[i] = key; m->values[i] = value; m->count++; return value; }
    }
}

// BytesMap: a byte string (not copied: the caller keeps it alive) -> uint32 value.
typedef struct { const unsigned char* bytes; uint32_t len; uint32_t value; uint64_t hash; } BytesMapEntry;
typedef struct { BytesMapEntry* slots; size_t capacity, count; } BytesMap;  // len == 0 and bytes == NULL: empty

static inline uint64_t hash_bytes(const unsigned char* s, size_t n) {
    uint64_t h = 1469598103934665603ULL;  // FNV-1a
    for (size_t i = 0; i < n; i++) { h ^= s[i]; h *= 1099511628211ULL; }
    return h ^ (h >> 29);
}

static int bytesmap_init(BytesMap* m, size_t expected) {
    size_t cap = 16;
    while (cap < 2 * expected + 16) cap *= 2;
    m->slots = (BytesMapEntry*)calloc(cap, sizeof(BytesMapEntry));
    m->capacity = cap; m->count = 0;
    return m->slots == NULL ? -1 : 0;
}

static void bytesmap_free(BytesMap* m) { free(m->slots); memset(m, 0, sizeof(*m)); }

static inline uint32_t bytesmap_get(const BytesMap* m, const unsigned char* s, size_t n) {
    if (m->capacity == 0) return TOKENIZER_NONE;
    uint64_t h = hash_bytes(s, n);
    size_t mask = m->capacity - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        const BytesMapEntry* e = &m->slots[i];
        if (e->bytes == NULL) return TOKENIZER_NONE;
        if (e->hash == h && e->len == n && memcmp(e->bytes, s, n) == 0) return e->value;
    }
}

// inserts s -> value unless s is present; returns a pointer to the stored value, NULL on OOM
static uint32_t* bytesmap_put_new(BytesMap* m, const unsigned char* s, size_t n, uint32_t value) {
    if (2 * (m->count + 1) > m->capacity) {
        BytesMap bigger;
        if (bytesmap_init(&bigger, m->capacity) != 0) return NULL;
        for (size_t i = 0; i < m->capacity; i++) {
            BytesMapEntry* e = &m->slots[i];
            if (e->bytes == NULL) continue;
            size_t j = (size_t)e->hash & (bigger.capacity - 1);
            while (bigger.slots[j].bytes != NULL) j = (j + 1) & (bigger.capacity - 1);
            bigger.slots[j] = *e;
        }
        bigger.count = m->count;
        bytesmap_free(m);
        *m = bigger;
    }
    uint64_t h = hash_bytes(s, n);
    size_t mask = m->capacity - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        BytesMapEntry* e = &m->slots[i];
        if (e->bytes == NULL) {
            e->bytes = s; e->len = (uint32_t)n; e->value = value; e->hash = h; m->count++;
            return &e->value;
        }
        if (e->hash == h && e->len == n && memcmp(e->bytes, s, n) == 0) return &e->value;
    }
}

// ----------------------------------------------------------------------------
// The GPT-2 pre-tokenizer.

enum { CP_LETTER, CP_NUMBER, CP_SPACE, CP_OTHER };

// Decodes the UTF-8 code point at s[i] (i < n) into *cp and returns its length in bytes, or
// returns 1 with *cp = -1 if s[i] does not start a valid sequence (overlong forms, surrogates and
// values above U+10FFFF are invalid): that byte alone is then one code point of class "other".
static inline int utf8_decode(const unsigned char* s, size_t n, size_t i, int32_t* cp) {
    unsigned char b = s[i];
    if (b < 0x80) { *cp = b; return 1; }
    int len; uint32_t v; unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (b >= 0xC2 && b <= 0xDF) { len = 2; v = b & 0x1F; }
    else if (b >= 0xE0 && b <= 0xEF) {
        len = 3; v = b & 0x0F;
        if (b == 0xE0) lo = 0xA0;       // no overlongs
        if (b == 0xED) hi = 0x9F;       // no surrogates
    } else if (b >= 0xF0 && b <= 0xF4) {
        len = 4; v = b & 0x07;
        if (b == 0xF0) lo = 0x90;       // no overlongs
        if (b == 0xF4) hi = 0x8F;       // nothing above U+10FFFF
    } else { *cp = -1; return 1; }
    if (i + (size_t)len > n || s[i + 1] < lo || s[i + 1] > hi) { *cp = -1; return 1; }
    for (int k = 1; k < len; k++) {
        if ((s[i + k] & 0xC0) != 0x80) { *cp = -1; return 1; }
        v = (v << 6) | (s[i + k] & 0x3F);
    }
    *cp = (int32_t)v;
    return len;
}

static inline int in_ranges(const uint32_t (*ranges)[2], size_t count, uint32_t cp) {
    size_t lo = 0, hi = count;  // binary search for the last range starting at or before cp
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (ranges[mid][0] <= cp) lo = mid + 1; else hi = mid;
    }
    return lo > 0 && cp <= ranges[lo - 1][1];
}

#define TABLE_COUNT(t) (sizeof(t) / sizeof((t)[0]))

static inline int codepoint_class(int32_t cp) {
    if (cp < 0) return CP_OTHER;
    if (cp < 128) {
        if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return CP_LETTER;
        if (cp >= '0' && cp <= '9') return CP_NUMBER;
        if (cp == ' ' || (cp >= 9 && cp <= 13)) return CP_SPACE;
        return CP_OTHER;
    }
    uint32_t u = (uint32_t)cp;
    if (in_ranges(unicode_letter_ranges, TABLE_COUNT(unicode_letter_ranges), u)) return CP_LETTER;
    if (in_ranges(unicode_number_ranges, TABLE_COUNT(unicode_number_ranges), u)) return CP_NUMBER;
    if (in_ranges(unicode_space_ranges, TABLE_COUNT(unicode_space_ranges), u)) return CP_SPACE;
    return CP_OTHER;
}

// class of the code point at s[i], its length in *len
static inline int class_at(const unsigned char* s, size_t n, size_t i, int* len) {
    int32_t cp;
    *len = utf8_decode(s, n, i, &cp);
    return codepoint_class(cp);
}

// end of the run of code points of class cls starting at i
static inline size_t run_end(const unsigned char* s, size_t n, size_t i, int cls) {
    int len;
    while (i < n && class_at(s, n, i, &len) == cls) i += (size_t)len;
    return i;
}

// Returns the end of the pre-token that starts at s[i] (i < n), following GPT-2's pattern
// alternative by alternative, first match wins:
//   's|'t|'re|'ve|'m|'ll|'d     contractions, lower case only ("I'LL" is not one)
//   ' ?\p{L}+' ' ?\p{N}+' ' ?[^\s\p{L}\p{N}]+'   an optional single space, then a run of one class
//   \s+(?!\S)                   whitespace not followed by non-space: a run of n >= 2 spaces
//                               before a word gives up its last one (it becomes the word's ' ?');
//                               a run reaching the end of the text is taken whole
//   \s+                         what is left: a single whitespace code point before a non-space
static inline size_t tokenizer_pretoken_end(const unsigned char* s, size_t n, size_t i) {
    if (s[i] == '\'' && i + 1 < n) {
        unsigned char c = s[i + 1];
        if (c == 's' || c == 't' || c == 'm' || c == 'd') return i + 2;
        if (i + 2 < n) {
            unsigned char c2 = s[i + 2];
            if ((c == 'r' && c2 == 'e') || (c == 'v' && c2 == 'e') || (c == 'l' && c2 == 'l')) return i + 3;
        }
    }
    int len;
    int cls = class_at(s, n, i, &len);
    if (s[i] == ' ' && i + 1 < n) {  // the ' ?' of the three run alternatives
        int next = class_at(s, n, i + 1, &len);
        if (next != CP_SPACE) return run_end(s, n, i + 1, next);
    }
    if (cls != CP_SPACE) return run_end(s, n, i, cls);
    // \s+(?!\S) or \s+: find the run's end and where its last code point starts
    size_t j = i, last = i;
    int count = 0;
    while (j < n && class_at(s, n, j, &len) == CP_SPACE) { last = j; j += (size_t)len; count++; }
    if (j == n || count == 1) return j;
    return last;
}

// ----------------------------------------------------------------------------
// The tokenizer.

typedef struct {
    uint32_t vocab_size;        // V
    uint32_t eot_token;         // end-of-text id
    int version;                // 1 or 2, as read (tokenizer_write always writes 2)
    uint32_t n_merges;          // M (0 for version-1 files)
    uint32_t* merges;           // (M, 2): left id, right id, in rank order
    uint32_t* merge_result;     // (M): id of the token that merge r produces
    uint32_t* token_offset;     // (V+1): token i is token_data[token_offset[i] .. token_offset[i+1])
    unsigned char* token_data;
    uint32_t byte_token[256];   // id of the length-1 token holding each byte, or TOKENIZER_NONE
    PairMap merge_rank;         // (left, right) -> rank
    BytesMap token_index;       // token bytes -> lowest id with those bytes (end-of-text excluded)
    uint32_t file_crc32;        // zlib crc32 of the file tokenizer_load read (train_moe records it in config.txt)
} Tokenizer;

static inline void tokenizer_free(Tokenizer* t) {
    free(t->merges); free(t->merge_result); free(t->token_offset); free(t->token_data);
    pairmap_free(&t->merge_rank);
    bytesmap_free(&t->token_index);
    memset(t, 0, sizeof(*t));
}

// bytes of token id (length in *len), or NULL if id >= V
static inline const unsigned char* tokenizer_token(const Tokenizer* t, uint32_t id, size_t* len) {
    if (id >= t->vocab_size) { *len = 0; return NULL; }
    *len = t->token_offset[id + 1] - t->token_offset[id];
    return t->token_data + t->token_offset[id];
}

// Builds the lookups encoding needs (byte_token, token_index, merge_rank, merge_result) from the
// token table and merge list, and checks the merges: ids in range, not end-of-text, and the
// concatenation of each pair is a token. name is used in messages.
static inline int tokenizer_build_lookups(Tokenizer* t, const char* name, char* err, size_t errlen) {
    uint32_t V = t->vocab_size;
    for (int b = 0; b < 256; b++) t->byte_token[b] = TOKENIZER_NONE;
    if (bytesmap_init(&t->token_index, V) != 0) goto oom;
    for (uint32_t id = 0; id < V; id++) {
        if (id == t->eot_token) continue;
        size_t len;
        const unsigned char* p = tokenizer_token(t, id, &len);
        if (len == 1 && t->byte_token[p[0]] == TOKENIZER_NONE) t->byte_token[p[0]] = id;
        if (bytesmap_put_new(&t->token_index, p, len, id) == NULL) goto oom;
    }
    uint32_t M = t->n_merges;
    t->merge_result = (uint32_t*)malloc(((size_t)M + 1) * sizeof(uint32_t));
    if (t->merge_result == NULL || pairmap_init(&t->merge_rank, M) != 0) goto oom;
    for (uint32_t r = 0; r < M; r++) {
        uint32_t left = t->merges[2 * r], right = t->merges[2 * r + 1];
        if (left >= V || right >= V) {
            tokenizer_error(err, errlen, "tokenizer %s: merge %u is (%u, %u) but the vocabulary has %u tokens",
                     name, r, left, right, V);
            return -1;
        }
        if (left == t->eot_token || right == t->eot_token) {
            tokenizer_error(err, errlen, "tokenizer %s: merge %u (%u, %u) uses the end-of-text token %u",
                     name, r, left, right, t->eot_token);
            return -1;
        }
        size_t llen, rlen;
        const unsigned char* lp = tokenizer_token(t, left, &llen);
        const unsigned char* rp = tokenizer_token(t, right, &rlen);
        uint32_t result = TOKENIZER_NONE;
        if (llen + rlen <= TOKENIZER_MAX_TOKEN_BYTES) {
            unsigned char buf[2 * TOKENIZER_MAX_TOKEN_BYTES];
            memcpy(buf, lp, llen); memcpy(buf + llen, rp, rlen);
            // merge r makes token 256 + r when that token holds the concatenation (the layout of
            // GPT-2's vocabulary and of tokenizer_train, where two merges may spell the same bytes);
            // otherwise the lowest id holding it
            size_t own_len;
            const unsigned char* own = (256 + (uint64_t)r < V && 256 + r != t->eot_token)
                                       ? tokenizer_token(t, 256 + r, &own_len) : NULL;
            if (own != NULL && own_len == llen + rlen && memcmp(own, buf, own_len) == 0) result = 256 + r;
            else result = bytesmap_get(&t->token_index, buf, llen + rlen);
        }
        if (result == TOKENIZER_NONE) {
            tokenizer_error(err, errlen, "tokenizer %s: merge %u (%u, %u): their concatenation is not a token",
                     name, r, left, right);
            return -1;
        }
        t->merge_result[r] = result;
        if (pairmap_put_new(&t->merge_rank, pair_key(left, right), r) == TOKENIZER_NONE) goto oom;
    }
    return 0;
oom:
    tokenizer_error(err, errlen, "tokenizer %s: out of memory", name);
    return -1;
}

// Parses a tokenizer file held in memory (size bytes). name is used in messages.
static inline int tokenizer_parse(Tokenizer* t, const unsigned char* data, size_t size, const char* name,
                           char* err, size_t errlen) {
    memset(t, 0, sizeof(*t));
    if (size < TOKENIZER_HEADER_BYTES) {
        tokenizer_error(err, errlen, "tokenizer %s: truncated: %zu bytes, the header alone is %d", name, size,
                 TOKENIZER_HEADER_BYTES);
        return -1;
    }
    if (size > UINT32_MAX) {  // token offsets are uint32
        tokenizer_error(err, errlen, "tokenizer %s: %zu bytes is too large for a tokenizer file", name, size);
        return -1;
    }
    uint32_t header[256];
    memcpy(header, data, sizeof(header));
    if (header[0] != TOKENIZER_MAGIC) {
        tokenizer_error(err, errlen, "tokenizer %s: bad magic %u (an llm.c tokenizer file starts with %d)",
                 name, header[0], TOKENIZER_MAGIC);
        return -1;
    }
    uint32_t V = header[2];
    t->version = (int)header[1];
    if (t->version == 1) {
        if (V != 50257) {
            tokenizer_error(err, errlen, "tokenizer %s: version 1 means GPT-2's 50257 tokens, header says %u", name, V);
            return -1;
        }
        t->eot_token = 50256;
    } else if (t->version == 2) {
        t->eot_token = header[3];
        t->n_merges = header[4];
    } else {
        tokenizer_error(err, errlen, "tokenizer %s: unknown version %u (known: 1, 2)", name, header[1]);
        return -1;
    }
    size_t left = size - TOKENIZER_HEADER_BYTES;
    if (V == 0 || V > left / 2) {  // every token takes at least 2 bytes (length and one byte)
        tokenizer_error(err, errlen, "tokenizer %s: header says %u tokens but the file holds %zu bytes after the header%s",
                 name, V, left, V == 0 ? "" : " (truncated?)");
        return -1;
    }
    if (t->eot_token >= V) {
        tokenizer_error(err, errlen, "tokenizer %s: end-of-text id %u is not below the vocabulary size %u",
                 name, t->eot_token, V);
        return -1;
    }
    t->vocab_size = V;
    t->token_offset = (uint32_t*)malloc(((size_t)V + 1) * sizeof(uint32_t));
    t->token_data = (unsigned char*)malloc(left);  // token bytes take less than the rest of the file
    if (t->token_offset == NULL || t->token_data == NULL) {
        tokenizer_error(err, errlen, "tokenizer %s: out of memory for %u tokens", name, V);
        tokenizer_free(t);
        return -1;
    }
    size_t pos = TOKENIZER_HEADER_BYTES, out = 0;
    for (uint32_t id = 0; id < V; id++) {
        if (pos >= size) {
            tokenizer_error(err, errlen, "tokenizer %s: truncated in the token table at token %u of %u", name, id, V);
            tokenizer_free(t);
            return -1;
        }
        size_t len = data[pos++];
        if (len == 0) {
            tokenizer_error(err, errlen, "tokenizer %s: token %u has length 0", name, id);
            tokenizer_free(t);
            return -1;
        }
        if (pos + len > size) {
            tokenizer_error(err, errlen, "tokenizer %s: truncated in the token table at token %u of %u "
                     "(length %zu, %zu bytes left)", name, id, V, len, size - pos);
            tokenizer_free(t);
            return -1;
        }
        t->token_offset[id] = (uint32_t)out;
        memcpy(t->token_data + out, data + pos, len);
        out += len; pos += len;
    }
    t->token_offset[V] = (uint32_t)out;
    uint32_t M = t->n_merges;
    if ((size - pos) / 8 < M) {
        tokenizer_error(err, errlen, "tokenizer %s: truncated: header says %u merges (%llu bytes), only %zu bytes follow "
                 "the token table", name, M, 8ULL * M, size - pos);
        tokenizer_free(t);
        return -1;
    }
    if (size - pos != 8 * (size_t)M) {
        tokenizer_error(err, errlen, "tokenizer %s: %zu unexpected bytes after the %s", name,
                 size - pos - 8 * (size_t)M, M > 0 ? "merges" : "token table");
        tokenizer_free(t);
        return -1;
    }
    t->merges = (uint32_t*)malloc(((size_t)M + 1) * 2 * sizeof(uint32_t));
    if (t->merges == NULL) {
        tokenizer_error(err, errlen, "tokenizer %s: out of memory for %u merges", name, M);
        tokenizer_free(t);
        return -1;
    }
    if (M > 0) memcpy(t->merges, data + pos, 8 * (size_t)M);
    if (tokenizer_build_lookups(t, name, err, errlen) != 0) { tokenizer_free(t); return -1; }
    return 0;
}

// Loads an llm.c tokenizer file (version 1 or 2).
static inline int tokenizer_load(Tokenizer* t, const char* path, char* err, size_t errlen) {
    memset(t, 0, sizeof(*t));
    FILE* f = fopen(path, "rb");
    if (f == NULL) {
        tokenizer_error(err, errlen, "tokenizer %s: cannot open (%s)", path, strerror(errno));
        return -1;
    }
    size_t cap = 1 << 20, size = 0, got;
    unsigned char* data = (unsigned char*)malloc(cap);
    while (data != NULL && (got = fread(data + size, 1, cap - size, f)) > 0) {
        size += got;
        if (size == cap) {
            unsigned char* bigger = (unsigned char*)realloc(data, 2 * cap);
            if (bigger == NULL) { free(data); data = NULL; break; }
            data = bigger; cap *= 2;
        }
    }
    int read_error = ferror(f);
    fclose(f);
    if (data == NULL || read_error) {
        tokenizer_error(err, errlen, "tokenizer %s: %s", path, data == NULL ? "out of memory" : "read error");
        free(data);
        return -1;
    }
    int status = tokenizer_parse(t, data, size, path, err, errlen);
    uLong crc = crc32(0L, Z_NULL, 0);
    for (size_t pos = 0; pos < size; pos += 1u << 30)
        crc = crc32(crc, data + pos, (uInt)(size - pos < (1u << 30) ? size - pos : (1u << 30)));
    t->file_crc32 = (uint32_t)crc;
    free(data);
    return status;
}

// Writes t as a version-2 file (token table, then the merges), via a temporary file and rename.
static inline int tokenizer_write(const Tokenizer* t, const char* path, char* err, size_t errlen) {
    size_t tmplen = strlen(path) + 8;
    char* tmp = (char*)malloc(tmplen);
    if (tmp == NULL) { tokenizer_error(err, errlen, "tokenizer %s: out of memory", path); return -1; }
    snprintf(tmp, tmplen, "%s.tmp", path);
    FILE* f = fopen(tmp, "wb");
    if (f == NULL) {
        tokenizer_error(err, errlen, "tokenizer %s: cannot create %s (%s)", path, tmp, strerror(errno));
        free(tmp);
        return -1;
    }
    uint32_t header[256] = {0};
    header[0] = TOKENIZER_MAGIC; header[1] = 2; header[2] = t->vocab_size;
    header[3] = t->eot_token; header[4] = t->n_merges;
    int ok = fwrite(header, sizeof(header), 1, f) == 1;
    for (uint32_t id = 0; ok && id < t->vocab_size; id++) {
        size_t len;
        const unsigned char* p = tokenizer_token(t, id, &len);
        unsigned char len8 = (unsigned char)len;
        ok = len >= 1 && len <= TOKENIZER_MAX_TOKEN_BYTES && fwrite(&len8, 1, 1, f) == 1 && fwrite(p, 1, len, f) == len;
    }
    if (ok && t->n_merges > 0) ok = fwrite(t->merges, 8, t->n_merges, f) == t->n_merges;
    if (fclose(f) != 0) ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        tokenizer_error(err, errlen, "tokenizer %s: write failed (%s)", path, strerror(errno));
        remove(tmp);
        free(tmp);
        return -1;
    }
    free(tmp);
    return 0;
}

// ----------------------------------------------------------------------------
// Decoding: ids -> bytes.

// Concatenates the bytes of ids[0..n) into a new buffer *out (NUL-terminated for convenience, the
// NUL not counted in *out_len). End-of-text decodes to its own bytes. An id >= V is refused.
static inline int tokenizer_decode(const Tokenizer* t, const uint32_t* ids, size_t n, unsigned char** out,
                            size_t* out_len, char* err, size_t errlen) {
    *out = NULL; *out_len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] >= t->vocab_size) {
            tokenizer_error(err, errlen, "decode: id %u at position %zu is not in the vocabulary (V = %u)",
                     ids[i], i, t->vocab_size);
            return -1;
        }
        total += t->token_offset[ids[i] + 1] - t->token_offset[ids[i]];
    }
    unsigned char* buf = (unsigned char*)malloc(total + 1);
    if (buf == NULL) { tokenizer_error(err, errlen, "decode: out of memory for %zu bytes", total); return -1; }
    size_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const unsigned char* p = tokenizer_token(t, ids[i], &len);
        memcpy(buf + pos, p, len);
        pos += len;
    }
    buf[pos] = 0;
    *out = buf; *out_len = pos;
    return 0;
}

// ----------------------------------------------------------------------------
// Encoding: bytes -> ids.

// Rank of merging (left, right) and, in *result, the token it makes; TOKENIZER_NONE if no merge.
// Without a merge list the rank is the id of the concatenation (the approximate fallback).
static inline uint32_t merge_lookup(const Tokenizer* t, uint32_t left, uint32_t right, uint32_t* result) {
    if (t->n_merges > 0) {
        uint32_t rank = pairmap_get(&t->merge_rank, pair_key(left, right));
        if (rank != TOKENIZER_NONE) *result = t->merge_result[rank];
        return rank;
    }
    size_t llen, rlen;
    const unsigned char* lp = tokenizer_token(t, left, &llen);
    const unsigned char* rp = tokenizer_token(t, right, &rlen);
    if (llen + rlen > TOKENIZER_MAX_TOKEN_BYTES) return TOKENIZER_NONE;
    unsigned char buf[2 * TOKENIZER_MAX_TOKEN_BYTES];
    memcpy(buf, lp, llen); memcpy(buf + llen, rp, rlen);
    *result = bytesmap_get(&t->token_index, buf, llen + rlen);
    return *result;
}

// Scratch space for merging one pre-token: its symbols as a linked list, and a min-heap of
// candidate merges ordered by (rank, position), so "lowest rank, leftmost first" is the heap top.
typedef struct { uint32_t rank; uint32_t pos; } MergeCandidate;
typedef struct {
    uint32_t* id; int32_t* prev; int32_t* next;  // (n) symbol i; id TOKENIZER_NONE once merged away
    MergeCandidate* heap; size_t heap_size;     // n-1 first candidates, then at most 2 per merge
    size_t capacity;
} MergeScratch;

static inline int candidate_before(MergeCandidate a, MergeCandidate b) {
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

static void heap_push(MergeScratch* s, MergeCandidate c) {
    size_t i = s->heap_size++;
    while (i > 0 && candidate_before(c, s->heap[(i - 1) / 2])) { s->heap[i] = s->heap[(i - 1) / 2]; i = (i - 1) / 2; }
    s->heap[i] = c;
}

static MergeCandidate heap_pop(MergeScratch* s) {
    MergeCandidate top = s->heap[0], last = s->heap[--s->heap_size];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= s->heap_size) break;
        if (child + 1 < s->heap_size && candidate_before(s->heap[child + 1], s->heap[child])) child++;
        if (!candidate_before(s->heap[child], last)) break;
        s->heap[i] = s->heap[child]; i = child;
    }
    if (s->heap_size > 0) s->heap[i] = last;
    return top;
}

static void push_candidate(const Tokenizer* t, MergeScratch* s, int32_t pos) {
    if (pos < 0 || s->next[pos] < 0) return;
    uint32_t result;
    uint32_t rank = merge_lookup(t, s->id[pos], s->id[s->next[pos]], &result);
    if (rank != TOKENIZER_NONE) heap_push(s, (MergeCandidate){rank, (uint32_t)pos});
}

// Merges the byte ids s->id[0..n) of one pre-token and appends the final ids to out[*n_out].
static void merge_pretoken(const Tokenizer* t, MergeScratch* s, size_t n, uint32_t* out, size_t* n_out) {
    s->heap_size = 0;
    for (size_t i = 0; i < n; i++) { s->prev[i] = (int32_t)i - 1; s->next[i] = i + 1 < n ? (int32_t)i + 1 : -1; }
    for (size_t i = 0; i + 1 < n; i++) push_candidate(t, s, (int32_t)i);
    while (s->heap_size > 0) {
        MergeCandidate c = heap_pop(s);
        int32_t left = (int32_t)c.pos, right = s->next[left];
        uint32_t result = 0;
        // a candidate is stale if a symbol went away or changed since it was pushed
        if (s->id[left] == TOKENIZER_NONE || right < 0 ||
            merge_lookup(t, s->id[left], s->id[right], &result) != c.rank) continue;
        s->id[left] = result;
        s->id[right] = TOKENIZER_NONE;
        s->next[left] = s->next[right];
        if (s->next[right] >= 0) s->prev[s->next[right]] = left;
        push_candidate(t, s, s->prev[left]);
        push_candidate(t, s, left);
    }
    for (int32_t i = 0; i >= 0; i = s->next[i]) out[(*n_out)++] = s->id[i];
}

// Encodes text[0..len) into a new array *ids of *n_ids ids (free() it). Never produces end-of-text.
// Fails only if a byte has no length-1 token in the vocabulary (or on out of memory).
static inline int tokenizer_encode(const Tokenizer* t, const unsigned char* text, size_t len, uint32_t** ids,
                            size_t* n_ids, char* err, size_t errlen) {
    *ids = NULL; *n_ids = 0;
    uint32_t* out = (uint32_t*)malloc((len + 1) * sizeof(uint32_t));  // never more ids than bytes
    MergeScratch s = {0};
    size_t n_out = 0;
    if (out == NULL) goto oom;
    for (size_t i = 0; i < len;) {
        size_t end = tokenizer_pretoken_end(text, len, i), n = end - i;
        if (n > s.capacity) {
            size_t cap = n < 64 ? 64 : n;
            free(s.id); free(s.prev); free(s.next); free(s.heap);
            s.id = (uint32_t*)malloc(cap * sizeof(uint32_t));
            s.prev = (int32_t*)malloc(cap * sizeof(int32_t));
            s.next = (int32_t*)malloc(cap * sizeof(int32_t));
            s.heap = (MergeCandidate*)malloc(3 * cap * sizeof(MergeCandidate));
            s.capacity = cap;
            if (!s.id || !s.prev || !s.next || !s.heap || cap > INT32_MAX) goto oom;
        }
        for (size_t k = 0; k < n; k++) {
            s.id[k] = t->byte_token[text[i + k]];
            if (s.id[k] == TOKENIZER_NONE) {
                tokenizer_error(err, errlen, "encode: byte 0x%02x at offset %zu has no single-byte token in the vocabulary",
                         text[i + k], i + k);
                free(out); free(s.id); free(s.prev); free(s.next); free(s.heap);
                return -1;
            }
        }
        if (n == 1) out[n_out++] = s.id[0];
        else merge_pretoken(t, &s, n, out, &n_out);
        i = end;
    }
    free(s.id); free(s.prev); free(s.next); free(s.heap);
    *ids = out; *n_ids = n_out;
    return 0;
oom:
    tokenizer_error(err, errlen, "encode: out of memory for %zu bytes of text", len);
    free(out); free(s.id); free(s.prev); free(s.next); free(s.heap);
    return -1;
}

// ----------------------------------------------------------------------------
// Training a byte-level BPE.
//
// Ids 0..255 are the single bytes, merge r makes id 256 + r, end-of-text is V-1 with the bytes
// "<|endoftext|>"; so V-257 merges. The text is cut into GPT-2 pre-tokens first and merges never
// cross their boundaries, so training only needs the unique pre-tokens ("words") with their counts.
// Each step merges the most frequent adjacent pair (ties: lowest left id, then lowest right id)
// whose token would be at most 255 bytes, everywhere, left to right. Pair counts are kept up to
// date incrementally: each pair remembers the words it occurs in, a merge visits only those words
// and changes only the counts next to each merge site, and a max-heap with lazy deletion finds the
// next best pair.

typedef struct { int64_t count; uint32_t left, right; } PairCandidate;  // heap entry

typedef struct {
    // words: the unique pre-tokens, each a run of symbols in symbols[]
    uint32_t* symbols; size_t* word_start; uint32_t* word_len; int64_t* word_count; size_t n_words;
    uint32_t* word_stamp;       // last merge step that visited the word (skips repeated visits)
    // pairs: index p for each (left, right) ever seen
    PairMap pair_index;
    uint32_t* pair_left; uint32_t* pair_right; int64_t* pair_count;
    uint32_t** pair_words; uint32_t* pair_n_words; uint32_t* pair_cap_words;  // words that held it
    int64_t* pair_old_count; uint32_t* pair_stamp;   // count before this step; step that touched it
    size_t n_pairs, cap_pairs;
    uint32_t* touched; size_t n_touched, cap_touched;
    PairCandidate* heap; size_t heap_size, heap_cap;
    uint32_t* token_len;        // bytes in each id so far
} BpeTrainer;

static int pair_candidate_before(PairCandidate a, PairCandidate b) {  // "better" = higher in max-heap
    if (a.count != b.count) return a.count > b.count;
    if (a.left != b.left) return a.left < b.left;
    return a.right < b.right;
}

static int trainer_heap_push(BpeTrainer* bt, PairCandidate c) {
    if (bt->heap_size == bt->heap_cap) {
        size_t cap = bt->heap_cap ? 2 * bt->heap_cap : 1024;
        PairCandidate* h = (PairCandidate*)realloc(bt->heap, cap * sizeof(PairCandidate));
        if (h == NULL) return -1;
        bt->heap = h; bt->heap_cap = cap;
    }
    size_t i = bt->heap_size++;
    while (i > 0 && pair_candidate_before(c, bt->heap[(i - 1) / 2])) { bt->heap[i] = bt->heap[(i - 1) / 2]; i = (i - 1) / 2; }
    bt->heap[i] = c;
    return 0;
}

static PairCandidate trainer_heap_pop(BpeTrainer* bt) {
    PairCandidate top = bt->heap[0], last = bt->heap[--bt->heap_size];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= bt->heap_size) break;
        if (child + 1 < bt->heap_size && pair_candidate_before(bt->heap[child + 1], bt->heap[child])) child++;
        if (!pair_candidate_before(bt->heap[child], last)) break;
        bt->heap[i] = bt->heap[child]; i = child;
    }
    if (bt->heap_size > 0) bt->heap[i] = last;
    return top;
}

// index of pair (left, right), created if new; TOKENIZER_NONE on out of memory
static uint32_t trainer_pair(BpeTrainer* bt, uint32_t left, uint32_t right) {
    uint32_t p = pairmap_put_new(&bt->pair_index, pair_key(left, right), (uint32_t)bt->n_pairs);
    if (p != bt->n_pairs) return p;  // existing pair (or TOKENIZER_NONE on OOM)
    if (bt->n_pairs == bt->cap_pairs) {
        size_t cap = bt->cap_pairs ? 2 * bt->cap_pairs : 4096;
        void* a = realloc(bt->pair_left, cap * sizeof(uint32_t)); if (a) bt->pair_left = (uint32_t*)a;
        void* b = realloc(bt->pair_right, cap * sizeof(uint32_t)); if (b) bt->pair_right = (uint32_t*)b;
        void* c = realloc(bt->pair_count, cap * sizeof(int64_t)); if (c) bt->pair_count = (int64_t*)c;
        void* d = realloc(bt->pair_words, cap * sizeof(uint32_t*)); if (d) bt->pair_words = (uint32_t**)d;
        void* e = realloc(bt->pair_n_words, cap * sizeof(uint32_t)); if (e) bt->pair_n_words = (uint32_t*)e;
        void* f = realloc(bt->pair_cap_words, cap * sizeof(uint32_t)); if (f) bt->pair_cap_words = (uint32_t*)f;
        void* g = realloc(bt->pair_old_count, cap * sizeof(int64_t)); if (g) bt->pair_old_count = (int64_t*)g;
        void* h = realloc(bt->pair_stamp, cap * sizeof(uint32_t)); if (h) bt->pair_stamp = (uint32_t*)h;
        if (!a || !b || !c || !d || !e || !f || !g || !h) return TOKENIZER_NONE;
        bt->cap_pairs = cap;
    }
    bt->pair_left[p] = left; bt->pair_right[p] = right; bt->pair_count[p] = 0;
    bt->pair_words[p] = NULL; bt->pair_n_words[p] = 0; bt->pair_cap_words[p] = 0;
    bt->pair_stamp[p] = TOKENIZER_NONE; bt->pair_old_count[p] = 0;
    bt->n_pairs++;
    return p;
}

static int trainer_pair_add_word(BpeTrainer* bt, uint32_t p, uint32_t w) {
    uint32_t n = bt->pair_n_words[p];
    if (n > 0 && bt->pair_words[p][n - 1] == w) return 0;  // cheap dedup of repeats within a word
    if (n == bt->pair_cap_words[p]) {
        uint32_t cap = n ? 2 * n : 4;
        uint32_t* words = (uint32_t*)realloc(bt->pair_words[p], cap * sizeof(uint32_t));
        if (words == NULL) return -1;
        bt->pair_words[p] = words; bt->pair_cap_words[p] = cap;
    }
    bt->pair_words[p][bt->pair_n_words[p]++] = w;
    return 0;
}

// adds delta to the count of pair (left, right) during merge step `step`, remembering the count it
// had before the step so only pairs that really changed go back on the heap
static int trainer_count(BpeTrainer* bt, uint32_t left, uint32_t right, int64_t delta, uint32_t step,
                         uint32_t word) {
    uint32_t p = trainer_pair(bt, left, right);
    if (p == TOKENIZER_NONE) return -1;
    if (bt->pair_stamp[p] != step) {
        bt->pair_stamp[p] = step;
        bt->pair_old_count[p] = bt->pair_count[p];
        if (bt->n_touched == bt->cap_touched) {
            size_t cap = bt->cap_touched ? 2 * bt->cap_touched : 1024;
            uint32_t* tl = (uint32_t*)realloc(bt->touched, cap * sizeof(uint32_t));
            if (tl == NULL) return -1;
            bt->touched = tl; bt->cap_touched = cap;
        }
        bt->touched[bt->n_touched++] = p;
    }
    bt->pair_count[p] += delta;
    if (delta > 0 && trainer_pair_add_word(bt, p, word) != 0) return -1;
    return 0;
}

static void trainer_free(BpeTrainer* bt) {
    free(bt->symbols); free(bt->word_start); free(bt->word_len); free(bt->word_count); free(bt->word_stamp);
    pairmap_free(&bt->pair_index);
    for (size_t p = 0; p < bt->n_pairs; p++) free(bt->pair_words[p]);
    free(bt->pair_left); free(bt->pair_right); free(bt->pair_count); free(bt->pair_words);
    free(bt->pair_n_words); free(bt->pair_cap_words); free(bt->pair_old_count); free(bt->pair_stamp);
    free(bt->touched); free(bt->heap); free(bt->token_len);
    memset(bt, 0, sizeof(*bt));
}

// Merges every occurrence of (a, b) in word w into id new_id (left to right) and updates the pair
// counts next to each merge site. Old pairs destroyed: those at indices m-1, m, m+1 around each site
// m; new pairs created: those touching new_id (which did not exist before this step).
static int trainer_merge_word(BpeTrainer* bt, uint32_t w, uint32_t a, uint32_t b, uint32_t new_id, uint32_t step) {
    uint32_t* s = bt->symbols + bt->word_start[w];
    uint32_t n = bt->word_len[w];
    int64_t c = bt->word_count[w];
    // pass 1: decrement the destroyed pairs; last_done avoids decrementing one index twice
    int64_t last_done = -1;
    int found = 0;
    for (uint32_t i = 0; i + 1 < n; i++) {
        if (s[i] != a || s[i + 1] != b) continue;
        found = 1;
        for (int64_t q = (int64_t)i - 1; q <= (int64_t)i + 1; q++) {
            if (q < 0 || q + 1 >= (int64_t)n || q <= last_done) continue;
            if (trainer_count(bt, s[q], s[q + 1], -c, step, w) != 0) return -1;
            last_done = q;
        }
        i++;  // non-overlapping: the next site starts at i + 2 or later
    }
    if (!found) return 0;  // stale entry in the pair's word list
    // pass 2: rewrite the word in place
    uint32_t k = 0;
    for (uint32_t i = 0; i < n;) {
        if (i + 1 < n && s[i] == a && s[i + 1] == b) { s[k++] = new_id; i += 2; }
        else s[k++] = s[i++];
    }
    bt->word_len[w] = n = k;
    // pass 3: increment the created pairs
    for (uint32_t j = 0; j < n; j++) {
        if (s[j] != new_id) continue;
        if (j > 0 && s[j - 1] != new_id && trainer_count(bt, s[j - 1], s[j], c, step, w) != 0) return -1;
        if (j + 1 < n && trainer_count(bt, s[j], s[j + 1], c, step, w) != 0) return -1;
    }
    return 0;
}

// Trains a BPE of vocab_size tokens (>= 257) on text and fills t (free with tokenizer_free).
// Fails if the text runs out of pairs to merge before reaching vocab_size.
static inline int tokenizer_train(Tokenizer* t, const unsigned char* text, size_t len, uint32_t vocab_size,
                           char* err, size_t errlen) {
    memset(t, 0, sizeof(*t));
    if (vocab_size < 257 || vocab_size > (1u << 30)) {
        tokenizer_error(err, errlen, "bpe: vocabulary size %u must be between 257 (bytes and end-of-text) and 2^30", vocab_size);
        return -1;
    }
    uint32_t n_merges = vocab_size - 257;
    BpeTrainer bt = {0};
    BytesMap words = {0};
    size_t cap_words = 1024;
    // 1. unique pre-tokens and their counts
    if (bytesmap_init(&words, 1024) != 0) goto oom;
    bt.word_count = (int64_t*)malloc(cap_words * sizeof(int64_t));
    size_t* word_text = (size_t*)malloc(cap_words * sizeof(size_t));  // where each word first occurs
    bt.word_len = (uint32_t*)malloc(cap_words * sizeof(uint32_t));
    if (!bt.word_count || !word_text || !bt.word_len) { free(word_text); goto oom; }
    size_t total_symbols = 0;
    for (size_t i = 0; i < len;) {
        size_t end = tokenizer_pretoken_end(text, len, i);
        if (end - i >= 2) {  // a 1-byte pre-token has no pairs: it cannot affect training
            uint32_t* slot = bytesmap_put_new(&words, text + i, end - i, (uint32_t)bt.n_words);
            if (slot == NULL || end - i > UINT32_MAX) { free(word_text); goto oom; }
            if (*slot == bt.n_words) {
                if (bt.n_words == cap_words) {
                    cap_words *= 2;
                    void* a = realloc(bt.word_count, cap_words * sizeof(int64_t)); if (a) bt.word_count = (int64_t*)a;
                    void* b = realloc(word_text, cap_words * sizeof(size_t)); if (b) word_text = (size_t*)b;
                    void* c = realloc(bt.word_len, cap_words * sizeof(uint32_t)); if (c) bt.word_len = (uint32_t*)c;
                    if (!a || !b || !c) { free(word_text); goto oom; }
                }
                bt.word_count[bt.n_words] = 0;
                word_text[bt.n_words] = i;
                bt.word_len[bt.n_words] = (uint32_t)(end - i);
                total_symbols += end - i;
                bt.n_words++;
            }
            bt.word_count[*slot]++;
        }
        i = end;
    }
    bt.symbols = (uint32_t*)malloc((total_symbols + 1) * sizeof(uint32_t));
    bt.word_start = (size_t*)malloc((bt.n_words + 1) * sizeof(size_t));
    bt.word_stamp = (uint32_t*)malloc((bt.n_words + 1) * sizeof(uint32_t));
    bt.token_len = (uint32_t*)malloc((size_t)vocab_size * sizeof(uint32_t));
    if (!bt.symbols || !bt.word_start || !bt.word_stamp || !bt.token_len) { free(word_text); goto oom; }
    size_t pos = 0;
    for (size_t w = 0; w < bt.n_words; w++) {
        bt.word_start[w] = pos;
        for (uint32_t k = 0; k < bt.word_len[w]; k++) bt.symbols[pos++] = text[word_text[w] + k];
        bt.word_stamp[w] = TOKENIZER_NONE;
    }
    free(word_text);
    bytesmap_free(&words);
    for (uint32_t id = 0; id < 256; id++) bt.token_len[id] = 1;
    // 2. initial pair counts and word lists, all pairs on the heap
    if (pairmap_init(&bt.pair_index, 4096) != 0) goto oom;
    for (size_t w = 0; w < bt.n_words; w++) {
        uint32_t* s = bt.symbols + bt.word_start[w];
        for (uint32_t k = 0; k + 1 < bt.word_len[w]; k++)
            if (trainer_count(&bt, s[k], s[k + 1], bt.word_count[w], 0, (uint32_t)w) != 0) goto oom;
    }
    for (size_t p = 0; p < bt.n_pairs; p++)
        if (trainer_heap_push(&bt, (PairCandidate){bt.pair_count[p], bt.pair_left[p], bt.pair_right[p]}) != 0) goto oom;
    // 3. the merges
    t->merges = (uint32_t*)malloc(((size_t)n_merges + 1) * 2 * sizeof(uint32_t));
    if (t->merges == NULL) goto oom;
    for (uint32_t r = 0; r < n_merges; r++) {
        uint32_t step = r + 1, new_id = 256 + r, p = TOKENIZER_NONE;
        while (bt.heap_size > 0) {  // the best live candidate: its count must be current
            PairCandidate c = trainer_heap_pop(&bt);
            uint32_t q = pairmap_get(&bt.pair_index, pair_key(c.left, c.right));
            if (bt.pair_count[q] != c.count || c.count <= 0) continue;
            if (bt.token_len[c.left] + bt.token_len[c.right] > TOKENIZER_MAX_TOKEN_BYTES) continue;
            p = q;
            break;
        }
        if (p == TOKENIZER_NONE) {
            tokenizer_error(err, errlen, "bpe: the text (%zu bytes) has no pairs left to merge after %u merges; "
                     "vocabulary size %u needs %u (use a smaller vocabulary or more text)",
                     len, r, vocab_size, n_merges);
            goto fail;
        }
        uint32_t a = bt.pair_left[p], b = bt.pair_right[p];
        t->merges[2 * r] = a; t->merges[2 * r + 1] = b;
        bt.token_len[new_id] = bt.token_len[a] + bt.token_len[b];
        bt.n_touched = 0;
        // the pair's word list may grow while we walk it (only for pairs holding new_id, not this one)
        for (uint32_t k = 0; k < bt.pair_n_words[p]; k++) {
            uint32_t w = bt.pair_words[p][k];
            if (bt.word_stamp[w] == step) continue;
            bt.word_stamp[w] = step;
            if (trainer_merge_word(&bt, w, a, b, new_id, step) != 0) goto oom;
        }
        free(bt.pair_words[p]);  // (a, b) is gone everywhere
        bt.pair_words[p] = NULL; bt.pair_n_words[p] = 0; bt.pair_cap_words[p] = 0;
        for (size_t k = 0; k < bt.n_touched; k++) {
            uint32_t q = bt.touched[k];
            if (bt.pair_count[q] != bt.pair_old_count[q] && bt.pair_count[q] > 0 &&
                trainer_heap_push(&bt, (PairCandidate){bt.pair_count[q], bt.pair_left[q], bt.pair_right[q]}) != 0) goto oom;
        }
    }
    // 4. the token table: bytes, merges, end-of-text
    t->version = 2;
    t->vocab_size = vocab_size;
    t->eot_token = vocab_size - 1;
    t->n_merges = n_merges;
    size_t data_bytes = 256 + strlen(TOKENIZER_EOT_TEXT);
    for (uint32_t r = 0; r < n_merges; r++) data_bytes += bt.token_len[256 + r];
    t->token_offset = (uint32_t*)malloc(((size_t)vocab_size + 1) * sizeof(uint32_t));
    t->token_data = (unsigned char*)malloc(data_bytes);
    if (!t->token_offset || !t->token_data) goto oom;
    size_t out = 0;
    for (uint32_t id = 0; id < vocab_size; id++) {
        t->token_offset[id] = (uint32_t)out;
        if (id < 256) t->token_data[out++] = (unsigned char)id;
        else if (id == t->eot_token) {
            memcpy(t->token_data + out, TOKENIZER_EOT_TEXT, strlen(TOKENIZER_EOT_TEXT));
            out += strlen(TOKENIZER_EOT_TEXT);
        } else {
            uint32_t a = t->merges[2 * (id - 256)], b = t->merges[2 * (id - 256) + 1];
            size_t la = t->token_offset[a + 1] - t->token_offset[a], lb = t->token_offset[b + 1] - t->token_offset[b];
            memcpy(t->token_data + out, t->token_data + t->token_offset[a], la); out += la;
            memcpy(t->token_data + out, t->token_data + t->token_offset[b], lb); out += lb;
        }
    }
    t->token_offset[vocab_size] = (uint32_t)out;
    trainer_free(&bt);
    if (tokenizer_build_lookups(t, "(trained)", err, errlen) != 0) { tokenizer_free(t); return -1; }
    return 0;
oom:
    tokenizer_error(err, errlen, "bpe: out of memory training on %zu bytes", len);
fail:
    bytesmap_free(&words);
    trainer_free(&bt);
    tokenizer_free(t);
    return -1;
}

#endif // TOKENIZER_H
