// Tests of tokenizer.h, for test_moe.c: test_tokenizer() uses only the CHECK macro (and the
// tests_passed/tests_failed counters behind it) defined by the file that includes this one.
// Everything is built here: hand-made tokenizer files in a mkdtemp directory and small texts.
#include <unistd.h>
#include "../tokenizer.h"

// the pre-tokens of s joined by '|' into out
static void tok_test_split(const char* s, char* out, size_t outlen) {
    size_t n = strlen(s), k = 0;
    for (size_t i = 0; i < n;) {
        size_t end = tokenizer_pretoken_end((const unsigned char*)s, n, i);
        if (i > 0 && k + 1 < outlen) out[k++] = '|';
        for (; i < end && k + 1 < outlen; i++) out[k++] = s[i];
        i = end;
    }
    out[k] = 0;
}

static void tok_test_write(const char* path, const void* data, size_t n) {
    FILE* f = fopen(path, "wb");
    if (f != NULL) { fwrite(data, 1, n, f); fclose(f); }
}

// An llm.c tokenizer file in memory: version, the tokens (as C strings, or single bytes for ids
// below n_bytes), end-of-text, merges. Returns its size; *buf is malloc'd.
static size_t tok_test_file(unsigned char** buf, uint32_t version, uint32_t n_bytes, const char** extra,
                            uint32_t n_extra, uint32_t eot, const uint32_t* merges, uint32_t n_merges) {
    size_t cap = 1024 + 2 * (size_t)n_bytes + 8 * (size_t)n_merges;
    for (uint32_t k = 0; k < n_extra; k++) cap += 1 + strlen(extra[k]);
    *buf = (unsigned char*)calloc(cap, 1);
    uint32_t header[256] = {0};
    header[0] = TOKENIZER_MAGIC; header[1] = version; header[2] = n_bytes + n_extra;
    header[3] = eot; header[4] = n_merges;
    memcpy(*buf, header, sizeof(header));
    size_t pos = 1024;
    for (uint32_t b = 0; b < n_bytes; b++) { (*buf)[pos++] = 1; (*buf)[pos++] = (unsigned char)b; }
    for (uint32_t k = 0; k < n_extra; k++) {
        size_t len = strlen(extra[k]);
        (*buf)[pos++] = (unsigned char)len;
        memcpy(*buf + pos, extra[k], len); pos += len;
    }
    if (n_merges > 0) memcpy(*buf + pos, merges, 8 * (size_t)n_merges);
    return pos + 8 * (size_t)n_merges;
}

// encodes s and compares with the expected ids
static int tok_test_encodes_to(const Tokenizer* t, const char* s, const uint32_t* want, size_t n_want) {
    uint32_t* ids; size_t n; char err[256];
    if (tokenizer_encode(t, (const unsigned char*)s, strlen(s), &ids, &n, err, sizeof(err)) != 0) return 0;
    int same = n == n_want && (n == 0 || memcmp(ids, want, n * sizeof(uint32_t)) == 0);
    free(ids);
    return same;
}

// encode then decode gives back exactly text[0..n)
static int tok_test_round_trip(const Tokenizer* t, const unsigned char* text, size_t n) {
    uint32_t* ids; size_t n_ids; unsigned char* back; size_t n_back; char err[256];
    if (tokenizer_encode(t, text, n, &ids, &n_ids, err, sizeof(err)) != 0) return 0;
    int ok = tokenizer_decode(t, ids, n_ids, &back, &n_back, err, sizeof(err)) == 0 &&
             n_back == n && memcmp(back, text, n) == 0;
    for (size_t i = 0; i < n_ids; i++) if (ids[i] == t->eot_token) ok = 0;  // never produced
    free(ids);
    if (ok) free(back);
    return ok;
}

static void test_tokenizer(void) {
    char got[512], err[512], dir[] = "/tmp/moe_tokenizer_test_XXXXXX", path[600];
    if (mkdtemp(dir) == NULL) { CHECK(0, "tokenizer: mkdtemp failed"); return; }

    // --- the pre-tokenizer, on hand-split examples of each alternative of GPT-2's pattern
    static const char* split_cases[][2] = {
        {"Hello world", "Hello| world"},
        {"don't I'LL it's", "don|'t| I|'|LL| it|'s"},                  // contractions: lower case only
        {"we're they've I'm you'll he'd", "we|'re| they|'ve| I|'m| you|'ll| he|'d"},
        {"'s's  'll", "'s|'s| | '|ll"},                                 // "  'll": a space, then " '" + "ll"
        {"12345 3.14", "12345| 3|.|14"},
        {"x=1;y+=2.5", "x|=|1|;|y|+=|2|.|5"},
        {"hello!!! ?", "hello|!!!| ?"},
        {"a  \n\n  b   ", "a|  \n\n | b|   "},                         // \s+(?!\S), then " b", then the tail
        {"a \tb", "a| |\t|b"},                                          // only ' ' joins the next word
        {"a\tb\n", "a|\t|b|\n"},
        {"na\xc3\xafve caf\xc3\xa9 \xe6\x9d\xb1\xe4\xba\xac \xc2\xbd\xd9\xa3",  // naïve café 東京 ½٣
         "na\xc3\xafve| caf\xc3\xa9| \xe6\x9d\xb1\xe4\xba\xac| \xc2\xbd\xd9\xa3"},
        {"e\xcc\x81t\xc3\xa9", "e|\xcc\x81|t\xc3\xa9"},                  // a combining mark is "other"
        {"hi\xf0\x9f\x98\x80!", "hi|\xf0\x9f\x98\x80!"},                 // emoji and '!' are both "other"
        {"a\xc2\xa0" "b", "a|\xc2\xa0|b"},                              // no-break space is \s
        {"ab\xff\xfe" "cd \x80x", "ab|\xff\xfe|cd| \x80|x"},            // invalid bytes are "other"
        {"\xe6\x9d", "\xe6\x9d"},                                       // a truncated sequence too
    };
    for (size_t k = 0; k < sizeof(split_cases) / sizeof(split_cases[0]); k++) {
        tok_test_split(split_cases[k][0], got, sizeof(got));
        CHECK(strcmp(got, split_cases[k][1]) == 0, "pretokenize case %zu: got [%s] want [%s]", k, got, split_cases[k][1]);
    }

    // --- a hand-built tokenizer: bytes, then merge r makes id 256 + r; the answers are by hand
    // A: r0 (a,b)->ab  r1 (b,c)->bc  r2 (ab,c)->abc  r3 (c,c)->cc, end-of-text 260
    const char* extra_a[] = {"ab", "bc", "abc", "cc", "<|endoftext|>"};
    uint32_t merges_a[] = {'a', 'b', 'b', 'c', 256, 'c', 'c', 'c'};
    unsigned char* file;
    size_t size = tok_test_file(&file, 2, 256, extra_a, 5, 260, merges_a, 4);
    Tokenizer t;
    int status = tokenizer_parse(&t, file, size, "A", err, sizeof(err));
    CHECK(status == 0, "hand-built tokenizer A refused: %s", err);
    if (status == 0) {
        uint32_t w1[] = {258, 'c'};                 // abcc: ab (r0) then abc (r2); cc (r3) comes too late
        uint32_t w2[] = {259, 259};                 // cccc: leftmost cc first, then the other
        uint32_t w3[] = {259, 'c'};
        uint32_t w4[] = {256, ' ', 258};            // "ab abc": two pre-tokens, the space stays alone
        CHECK(tok_test_encodes_to(&t, "abcc", w1, 2), "merge order: abcc should be [abc, c]");
        CHECK(tok_test_encodes_to(&t, "cccc", w2, 2), "leftmost first: cccc should be [cc, cc]");
        CHECK(tok_test_encodes_to(&t, "ccc", w3, 2), "leftmost first: ccc should be [cc, c]");
        CHECK(tok_test_encodes_to(&t, "ab abc", w4, 3), "\"ab abc\" should be [ab, ' ', abc]");
        CHECK(tok_test_encodes_to(&t, "", NULL, 0), "empty text should give no ids");
        CHECK(t.merge_result[2] == 258, "merge 2 should make token 258, made %u", t.merge_result[2]);
        tokenizer_free(&t);
    }
    free(file);
    // B: the same tokens, (b,c) ranked before (a,b): abcc -> [a, bc, c]
    const char* extra_b[] = {"bc", "ab", "abc", "cc", "<|endoftext|>"};
    uint32_t merges_b[] = {'b', 'c', 'a', 'b', 257, 'c', 'c', 'c'};
    size = tok_test_file(&file, 2, 256, extra_b, 5, 260, merges_b, 4);
    status = tokenizer_parse(&t, file, size, "B", err, sizeof(err));
    CHECK(status == 0, "hand-built tokenizer B refused: %s", err);
    if (status == 0) {
        uint32_t w[] = {'a', 256, 'c'};
        CHECK(tok_test_encodes_to(&t, "abcc", w, 3), "rank order: with (b,c) first abcc should be [a, bc, c]");
        tokenizer_free(&t);
    }
    free(file);
    // C: no merges (the approximate fallback: lowest-id concatenation first); end-of-text "xy"
    // is never the result of merging x and y
    const char* extra_c[] = {"ab", "bc", "abc", "cc", "xy"};
    size = tok_test_file(&file, 2, 256, extra_c, 5, 260, NULL, 0);
    status = tokenizer_parse(&t, file, size, "C", err, sizeof(err));
    CHECK(status == 0, "hand-built tokenizer C refused: %s", err);
    if (status == 0) {
        uint32_t w1[] = {258, 'c'}, w2[] = {'x', 'y'};
        CHECK(tok_test_encodes_to(&t, "abcc", w1, 2), "no-merge fallback: abcc should be [abc, c]");
        CHECK(tok_test_encodes_to(&t, "xy", w2, 2), "end-of-text must never come from a merge");
        tokenizer_free(&t);
    }
    free(file);

    // --- a version-1 file (llm.c's GPT-2 layout: 50257 tokens, end-of-text 50256, no merges)
    {
        const char** extra = (const char**)malloc((50257 - 256) * sizeof(char*));
        static char names[50257 - 256][6];
        for (int k = 0; k < 50257 - 256 - 1; k++) { snprintf(names[k], sizeof(names[k]), "%d", k + 256); extra[k] = names[k]; }
        extra[50257 - 256 - 1] = "<|endoftext|>";
        size = tok_test_file(&file, 1, 256, extra, 50257 - 256, 0, NULL, 0);
        snprintf(path, sizeof(path), "%s/v1.bin", dir);
        tok_test_write(path, file, size);
        status = tokenizer_load(&t, path, err, sizeof(err));
        CHECK(status == 0, "version-1 file refused: %s", err);
        if (status == 0) {
            CHECK(t.version == 1 && t.vocab_size == 50257 && t.eot_token == 50256 && t.n_merges == 0,
                  "version 1: got version %d V %u eot %u merges %u", t.version, t.vocab_size, t.eot_token, t.n_merges);
            uint32_t ids[] = {50256, 300, 'h'};
            unsigned char* out; size_t n;
            status = tokenizer_decode(&t, ids, 3, &out, &n, err, sizeof(err));
            CHECK(status == 0 && n == 17 && memcmp(out, "<|endoftext|>300h", 17) == 0, "version 1: decode wrong");
            if (status == 0) free(out);
            uint32_t w[] = {'3', '0', '0', '3', '0', '1'};  // no 2-byte tokens here, so nothing merges
            CHECK(tok_test_encodes_to(&t, "300301", w, 6), "version 1: fallback encoding of 300301");
            tokenizer_free(&t);
        }
        free(file); free(extra);
        remove(path);
    }

    // --- malformed files are refused with a message naming the file
    size = tok_test_file(&file, 2, 256, extra_a, 5, 260, merges_a, 4);
    snprintf(path, sizeof(path), "%s/bad.bin", dir);
    size_t cuts[] = {0, 10, 1023, 1024, 1030, 1546, size - 200, size - 1};  // header, tokens, merges
    for (size_t k = 0; k < sizeof(cuts) / sizeof(cuts[0]); k++) {
        tok_test_write(path, file, cuts[k]);
        status = tokenizer_load(&t, path, err, sizeof(err));
        CHECK(status != 0 && strstr(err, path) && strstr(err, "truncated"),
              "a file cut to %zu bytes should be refused as truncated, got %d [%s]", cuts[k], status, err);
    }
    unsigned char* bad = (unsigned char*)malloc(size + 8);
    memcpy(bad, file, size);
    bad[0] ^= 1;                                                  // bad magic
    tok_test_write(path, bad, size);
    status = tokenizer_load(&t, path, err, sizeof(err));
    CHECK(status != 0 && strstr(err, path) && strstr(err, "magic"), "bad magic should be refused [%s]", err);
    memcpy(bad, file, size);
    bad[4] = 3;                                                   // unknown version
    tok_test_write(path, bad, size);
    status = tokenizer_load(&t, path, err, sizeof(err));
    CHECK(status != 0 && strstr(err, "version"), "version 3 should be refused [%s]", err);
    memcpy(bad, file, size);
    uint32_t out_of_range = 261;
    memcpy(bad + size - 8, &out_of_range, 4);                     // last merge (c, c) -> (261, c)
    tok_test_write(path, bad, size);
    status = tokenizer_load(&t, path, err, sizeof(err));
    CHECK(status != 0 && strstr(err, path) && strstr(err, "merge 3"), "an out-of-range merge id should be refused [%s]", err);
    memcpy(bad, file, size);
    uint32_t eot = 260;
    memcpy(bad + size - 8, &eot, 4);                              // a merge using end-of-text
    tok_test_write(path, bad, size);
    status = tokenizer_load(&t, path, err, sizeof(err));
    CHECK(status != 0 && strstr(err, "end-of-text"), "a merge of end-of-text should be refused [%s]", err);
    memcpy(bad, file, size);
    uint32_t not_concat[2] = {'a', 'c'};                         // "ac" is not a token
    memcpy(bad + size - 8, not_concat, 8);
    tok_test_write(path, bad, size);
    status = tokenizer_load(&t, path, err, sizeof(err));
    CHECK(status != 0 && strstr(err, "concatenation"), "a merge whose result is no token should be refused [%s]", err);
    memcpy(bad, file, size);
    bad[1024 + 2 * 7] = 0;                                        // token 7 of length 0
    tok_test_write(path, bad, size);
    status = tokenizer_load(&t, path, err, sizeof(err));
    CHECK(status != 0 && strstr(err, "token 7 has length 0"), "a length-0 token should be refused [%s]", err);
    memcpy(bad, file, size);
    memset(bad + size, 0, 8);                                     // trailing garbage
    tok_test_write(path, bad, size + 3);
    status = tokenizer_load(&t, path, err, sizeof(err));
    CHECK(status != 0 && strstr(err, "unexpected"), "trailing bytes should be refused [%s]", err);
    memcpy(bad, file, size);
    uint32_t big_v = 0x7FFFFFFF;                                  // V far beyond the file
    memcpy(bad + 8, &big_v, 4);
    tok_test_write(path, bad, size);
    status = tokenizer_load(&t, path, err, sizeof(err));
    CHECK(status != 0 && strstr(err, path), "a huge V should be refused [%s]", err);
    free(bad); free(file);
    remove(path);
    snprintf(path, sizeof(path), "%s/missing.bin", dir);
    status = tokenizer_load(&t, path, err, sizeof(err));
    CHECK(status != 0 && strstr(err, path), "a missing file should be refused by name [%s]", err);

    // --- training, hand-computed: "ab ab ab abc" has pre-tokens ab, " ab" x2, " abc":
    // (a,b) 4 times -> 256; then (' ', 256) 3 times -> 257; then (257, c) once -> 258
    const char* small = "ab ab ab abc";
    status = tokenizer_train(&t, (const unsigned char*)small, strlen(small), 260, err, sizeof(err));
    CHECK(status == 0, "training on \"%s\" failed: %s", small, err);
    if (status == 0) {
        uint32_t want[] = {'a', 'b', ' ', 256, 257, 'c'};
        CHECK(t.n_merges == 3 && memcmp(t.merges, want, sizeof(want)) == 0,
              "merges of \"%s\": got (%u,%u) (%u,%u) (%u,%u)", small, t.merges[0], t.merges[1], t.merges[2],
              t.merges[3], t.merges[4], t.merges[5]);
        size_t len;
        const unsigned char* p = tokenizer_token(&t, 258, &len);
        CHECK(len == 4 && memcmp(p, " abc", 4) == 0, "token 258 should be \" abc\"");
        p = tokenizer_token(&t, 259, &len);
        CHECK(t.eot_token == 259 && len == 13 && memcmp(p, TOKENIZER_EOT_TEXT, 13) == 0, "end-of-text should be V-1");
        tokenizer_free(&t);
    }
    status = tokenizer_train(&t, (const unsigned char*)small, strlen(small), 261, err, sizeof(err));
    CHECK(status != 0 && strstr(err, "no pairs left"), "a 4th merge does not exist and should be refused [%s]", err);
    // ties go to the lowest left id, then the lowest right id: "ba,ac,ab" has (b,a), (a,c), (a,b) once
    status = tokenizer_train(&t, (const unsigned char*)"ba,ac,ab", 8, 258, err, sizeof(err));
    CHECK(status == 0 && t.merges[0] == 'a' && t.merges[1] == 'b', "tie-break: want merge (a,b), got (%u,%u)",
          status == 0 ? t.merges[0] : 0, status == 0 ? t.merges[1] : 0);
    if (status == 0) tokenizer_free(&t);
    status = tokenizer_train(&t, (const unsigned char*)small, strlen(small), 100, err, sizeof(err));
    CHECK(status != 0, "a vocabulary below 257 should be refused");

    // --- training on a small text: structure, determinism, write + load, round trips
    const char* verse =
        "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n"
        "Rough winds do shake the darling buds of May,\nAnd summer's lease hath all too short a date;\n"
        "Sometime too hot the eye of heaven shines,\nAnd often is his gold complexion dimm'd;\n"
        "And every fair from fair sometime declines,\nBy chance or nature's changing course untrimm'd;\n"
        "But thy eternal summer shall not fade,\nNor lose possession of that fair thou ow'st;\n"
        "Nor shall Death brag thou wander'st in his shade,\nWhen in eternal lines to time thou grow'st:\n"
        "   So long as men can breathe or eyes can see,\n   So long lives this, and this gives life to thee.  \n"
        "<|endoftext|> 1609 \xe2\x80\x94 Sonnet 18 \xe2\x80\x94 caf\xc3\xa9 \xf0\x9f\x98\x80\n";
    size_t verse_len = strlen(verse);
    Tokenizer t2;
    status = tokenizer_train(&t, (const unsigned char*)verse, verse_len, 400, err, sizeof(err));
    CHECK(status == 0, "training on the sonnet failed: %s", err);
    if (status == 0) {
        CHECK(t.vocab_size == 400 && t.eot_token == 399 && t.n_merges == 143, "sonnet: V %u eot %u merges %u",
              t.vocab_size, t.eot_token, t.n_merges);
        int structure = 1;
        for (uint32_t id = 0; id < 256; id++) {
            size_t len; const unsigned char* p = tokenizer_token(&t, id, &len);
            if (len != 1 || p[0] != id) structure = 0;
        }
        for (uint32_t r = 0; r < t.n_merges; r++) {  // token 256 + r = left + right
            size_t l, a, b;
            const unsigned char* p = tokenizer_token(&t, 256 + r, &l);
            const unsigned char* pa = tokenizer_token(&t, t.merges[2 * r], &a);
            const unsigned char* pb = tokenizer_token(&t, t.merges[2 * r + 1], &b);
            if (l != a + b || memcmp(p, pa, a) != 0 || memcmp(p + a, pb, b) != 0 || t.merge_result[r] != 256 + r) structure = 0;
        }
        CHECK(structure, "sonnet: ids 0..255 must be the bytes and token 256+r merge r");
        CHECK(tok_test_round_trip(&t, (const unsigned char*)verse, verse_len), "sonnet: round trip not byte-exact");
        unsigned char all[256 + 64];
        for (int b = 0; b < 256; b++) all[b] = (unsigned char)b;
        uint32_t state = 12345;
        for (int k = 256; k < 256 + 64; k++) { state = state * 1664525u + 1013904223u; all[k] = (unsigned char)(state >> 24); }
        CHECK(tok_test_round_trip(&t, all, sizeof(all)), "all 256 bytes and random bytes: round trip not byte-exact");
        const char* invalid = "\xc0\xaf \xed\xa0\x80 \xf4\x90\x80\x80 \xff\xfe abc\xe2\x82 x\x80\x80";
        CHECK(tok_test_round_trip(&t, (const unsigned char*)invalid, strlen(invalid)), "invalid UTF-8: round trip");
        // encoding the training text segments it as training did: fewer ids than bytes
        uint32_t* ids; size_t n_ids;
        status = tokenizer_encode(&t, (const unsigned char*)verse, verse_len, &ids, &n_ids, err, sizeof(err));
        CHECK(status == 0 && n_ids < verse_len / 2, "sonnet: %zu ids for %zu bytes", n_ids, verse_len);
        // write, load back: the same merges and the same ids
        snprintf(path, sizeof(path), "%s/sonnet.bin", dir);
        status = tokenizer_write(&t, path, err, sizeof(err));
        CHECK(status == 0, "tokenizer_write: %s", err);
        status = tokenizer_load(&t2, path, err, sizeof(err));
        CHECK(status == 0, "tokenizer_load of a written file: %s", err);
        if (status == 0) {
            uint32_t* ids2; size_t n2;
            CHECK(t2.version == 2 && t2.n_merges == t.n_merges && memcmp(t2.merges, t.merges, 8 * t.n_merges) == 0,
                  "written and loaded merges differ");
            int enc = tokenizer_encode(&t2, (const unsigned char*)verse, verse_len, &ids2, &n2, err, sizeof(err));
            CHECK(enc == 0 && n2 == n_ids && memcmp(ids, ids2, n2 * sizeof(uint32_t)) == 0, "loaded tokenizer encodes differently");
            if (enc == 0) free(ids2);
            tokenizer_free(&t2);
        }
        remove(path);
        free(ids);
        // training is deterministic
        status = tokenizer_train(&t2, (const unsigned char*)verse, verse_len, 400, err, sizeof(err));
        CHECK(status == 0 && memcmp(t2.merges, t.merges, 8 * t.n_merges) == 0, "training twice gave different merges");
        if (status == 0) tokenizer_free(&t2);
        // decoding an unknown id is refused, clearly
        uint32_t unknown[] = {'a', 400};
        unsigned char* out; size_t n_out;
        status = tokenizer_decode(&t, unknown, 2, &out, &n_out, err, sizeof(err));
        CHECK(status != 0 && strstr(err, "400") && strstr(err, "position 1"), "decode of id 400 (V = 400) should fail [%s]", err);
        status = tokenizer_decode(&t, unknown, 0, &out, &n_out, err, sizeof(err));
        CHECK(status == 0 && n_out == 0, "decode of no ids should give no bytes");
        if (status == 0) free(out);
        size_t len;
        CHECK(tokenizer_token(&t, 400, &len) == NULL, "tokenizer_token of an unknown id should be NULL");
        tokenizer_free(&t);
    }

    // --- no token longer than 255 bytes: one pre-token of 1000 'a's wants (a^128, a^128) next
    unsigned char* run = (unsigned char*)malloc(1000);
    memset(run, 'a', 1000);
    status = tokenizer_train(&t, run, 1000, 257 + 10, err, sizeof(err));
    CHECK(status == 0, "training on 1000 a's failed: %s", err);
    if (status == 0) {
        size_t longest = 0;
        for (uint32_t id = 0; id < t.vocab_size; id++) {
            size_t len; tokenizer_token(&t, id, &len);
            if (len > longest) longest = len;
        }
        CHECK(longest <= 255 && longest >= 192, "longest token %zu bytes: want at most 255 (and the run used)", longest);
        CHECK(tok_test_round_trip(&t, run, 1000), "1000 a's: round trip");
        tokenizer_free(&t);
    }
    free(run);
    rmdir(dir);
}
