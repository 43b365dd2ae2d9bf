// Tests of dataloader.h, written as one function for test_moe.c: static void test_dataloader(void).
// Uses only CHECK(cond, fmt, ...) and the counters tests_passed / tests_failed, which the includer
// defines. Every file is created under a fresh mkdtemp directory in /tmp and removed at the end.
#include <dirent.h>
#include "../dataloader.h"

// ----------------------------------------------------------------------------
// small helpers (prefixed dlt_ so they cannot clash with the rest of test_moe.c)

static char dlt_dir[256];

// dlt_dir + "/" + name, in a rotating set of static buffers (enough for one statement)
static const char* dlt_path(const char* name) {
    static char buffers[8][512];
    static int next = 0;
    char* p = buffers[next++ % 8];
    snprintf(p, 512, "%s/%s", dlt_dir, name);
    return p;
}

// writes raw bytes to a file (used to build broken shards by hand)
static void dlt_write_raw(const char* path, const void* data, size_t n) {
    FILE* f = fopen(path, "wb");
    if (f == NULL) { printf("cannot create %s\n", path); return; }
    if (n > 0) fwrite(data, 1, n, f);
    fclose(f);
}

// reads a whole file; *n gets its size; caller frees
static unsigned char* dlt_read_raw(const char* path, size_t* n) {
    FILE* f = fopen(path, "rb");
    *n = 0;
    if (f == NULL) return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char* data = (unsigned char*)malloc(size > 0 ? (size_t)size : 1);
    *n = fread(data, 1, (size_t)size, f);
    fclose(f);
    return data;
}

// a shard as llm.c's dev/data/data_common.py writes it: int32 header[256] (magic, version, count,
// zeros), then the tokens as uint16 (its `toks_np.tobytes()`), no compression
static void dlt_write_llmc_shard(const char* path, const uint16_t* tokens, int32_t count_in_header,
                                 size_t n, int32_t magic, int32_t version) {
    int32_t header[256];
    memset(header, 0, sizeof(header));
    header[0] = magic;
    header[1] = version;
    header[2] = count_in_header;
    FILE* f = fopen(path, "wb");
    if (f == NULL) { printf("cannot create %s\n", path); return; }
    fwrite(header, sizeof(int32_t), 256, f);   // the test host is little-endian, like llm.c's
    fwrite(tokens, sizeof(uint16_t), n, f);
    fclose(f);
}

static int dlt_contains(const char* haystack, const char* needle) { return strstr(haystack, needle) != NULL; }

static void dlt_remove_dir(void) {
    DIR* d = opendir(dlt_dir);
    if (d == NULL) return;
    struct dirent* e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        remove(dlt_path(e->d_name));
    }
    closedir(d);
    rmdir(dlt_dir);
}

// writes shard `name` with n tokens whose values are base, base+1, ... so every token in a test
// corpus is unique and a batch's first input names the window it came from
static int dlt_write_counting_shard(const char* name, uint32_t base, size_t n, int V, int gz) {
    uint32_t* t = (uint32_t*)malloc(n * sizeof(uint32_t));
    for (size_t i = 0; i < n; i++) t[i] = base + (uint32_t)i;
    char err[512];
    int ret = shard_write(dlt_path(name), t, n, V, gz, err, sizeof(err));
    if (ret != 0) printf("shard_write: %s\n", err);
    free(t);
    return ret;
}

// 1 iff the loader's current batch is exactly the window of B*T+1 tokens starting at value `first`
// of a counting corpus (inputs = first.., targets = first+1..)
static int dlt_batch_is_window(const DataLoader* dl, uint32_t first) {
    int BT = dl->B * dl->T;
    for (int i = 0; i < BT; i++) {
        if (dl->inputs[i] != (int)(first + (uint32_t)i)) return 0;
        if (dl->targets[i] != (int)(first + (uint32_t)i + 1)) return 0;
    }
    return 1;
}

// ----------------------------------------------------------------------------

static void test_dataloader_shards(void) {
    char err[512];
    // write + load round trips: uint16 and uint32 kinds, plain and gzip
    const int vocabs[2] = { 50257, 128256 };
    const size_t n = 100003;   // more than one 64 KiB read chunk
    uint32_t* tokens = (uint32_t*)malloc(n * sizeof(uint32_t));
    for (int kind = 0; kind < 2; kind++) {
        int V = vocabs[kind];
        uint64_t state = 42 + (uint64_t)kind;
        for (size_t i = 0; i < n; i++) tokens[i] = (uint32_t)(dl_splitmix64(&state) % (uint64_t)V);
        tokens[0] = 0;
        tokens[1] = (uint32_t)V - 1;   // both extremes of the id range
        for (int gz = 0; gz < 2; gz++) {
            char name[64];
            snprintf(name, sizeof(name), "round_%d.bin%s", V, gz ? ".gz" : "");
            const char* path = dlt_path(name);
            int ret = shard_write(path, tokens, n, V, gz, err, sizeof(err));
            CHECK(ret == 0, "shard_write %s: %s", path, err);
            size_t size;
            unsigned char* raw = dlt_read_raw(path, &size);
            if (gz) {
                CHECK(size >= 2 && raw[0] == 0x1f && raw[1] == 0x8b, "%s is not gzip", path);
            } else {
                size_t token_size = V <= 65536 ? 2 : 4;
                CHECK(size == 1024 + token_size * n, "%s: size %zu, expected %zu", path, size, 1024 + token_size * n);
                CHECK(size >= 12 && dl_read_u32le(raw) == (V <= 65536 ? 20240520u : 20240801u)
                      && dl_read_u32le(raw + 4) == (V <= 65536 ? 1u : 7u) && dl_read_u32le(raw + 8) == n,
                      "%s: header magic/version/count wrong", path);
            }
            free(raw);
            Shard s;
            ret = shard_load(path, V, &s, err, sizeof(err));
            CHECK(ret == 0, "shard_load %s: %s", path, err);
            if (ret == 0) {
                CHECK(s.num_tokens == n, "%s: %zu tokens, expected %zu", path, s.num_tokens, n);
                CHECK(s.num_tokens == n && memcmp(s.tokens, tokens, n * sizeof(uint32_t)) == 0,
                      "%s: tokens differ after the round trip", path);
                shard_free(&s);
            }
        }
    }
    // no temporary files left behind by the atomic writes
    {
        DIR* d = opendir(dlt_dir);
        int stray = 0;
        struct dirent* e;
        while (d != NULL && (e = readdir(d)) != NULL) stray += strstr(e->d_name, ".tmp.") != NULL;
        if (d != NULL) closedir(d);
        CHECK(stray == 0, "%d temporary files left in %s", stray, dlt_dir);
    }
    // vocab_size <= 0 on write picks the kind from the ids
    {
        uint32_t big[3] = { 1, 70000, 2 };
        CHECK(shard_write(dlt_path("novocab.bin"), big, 3, 0, 0, err, sizeof(err)) == 0, "%s", err);
        Shard s;
        CHECK(shard_load(dlt_path("novocab.bin"), 0, &s, err, sizeof(err)) == 0 && s.tokens[1] == 70000,
              "vocab 0 write/load: %s", err);
        shard_free(&s);
        CHECK(shard_write(dlt_path("bad.bin"), big, 3, 50257, 0, err, sizeof(err)) == -1
              && dlt_contains(err, "token 70000 at position 1"), "write of an id >= V: '%s'", err);
    }

    // a shard exactly as llm.c writes it loads unchanged
    {
        uint16_t t[2000];
        for (int i = 0; i < 2000; i++) t[i] = (uint16_t)((i * 7919) % 50257);
        dlt_write_llmc_shard(dlt_path("llmc_val_000000.bin"), t, 2000, 2000, 20240520, 1);
        Shard s;
        int ret = shard_load(dlt_path("llmc_val_000000.bin"), 50257, &s, err, sizeof(err));
        CHECK(ret == 0, "llm.c shard: %s", err);
        int same = ret == 0 && s.num_tokens == 2000;
        for (int i = 0; same && i < 2000; i++) same = s.tokens[i] == t[i];
        CHECK(same, "llm.c shard: tokens differ");
        shard_free(&s);
    }

    // broken files: each refused with a message naming the file and the problem
    {
        uint16_t t[1010];
        for (int i = 0; i < 1010; i++) t[i] = (uint16_t)i;
        Shard s;
        const char* p;

        p = dlt_path("missing.bin");
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p) && dlt_contains(err, "cannot open"),
              "missing file: '%s'", err);

        p = dlt_path("empty.bin");
        dlt_write_raw(p, "", 0);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p)
              && dlt_contains(err, "truncated header"), "empty file: '%s'", err);

        p = dlt_path("short_header.bin");
        unsigned char junk[100];
        memset(junk, 0, sizeof(junk));
        dl_write_u32le(junk, 20240520);
        dlt_write_raw(p, junk, sizeof(junk));
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p)
              && dlt_contains(err, "truncated header") && dlt_contains(err, "100 bytes"), "short header: '%s'", err);

        p = dlt_path("magic.bin");
        dlt_write_llmc_shard(p, t, 1000, 1000, 12345, 1);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p) && dlt_contains(err, "bad magic 12345"),
              "wrong magic: '%s'", err);

        p = dlt_path("version.bin");
        dlt_write_llmc_shard(p, t, 1000, 1000, 20240520, 7);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p) && dlt_contains(err, "version 7"),
              "wrong version: '%s'", err);

        p = dlt_path("count_more.bin");   // header says fewer tokens than the file holds
        dlt_write_llmc_shard(p, t, 1000, 1010, 20240520, 1);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p)
              && dlt_contains(err, "header says 1000 tokens, file holds 1010"), "count mismatch: '%s'", err);

        p = dlt_path("count_less.bin");   // header says more: a truncated body
        dlt_write_llmc_shard(p, t, 1010, 1000, 20240520, 1);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p)
              && dlt_contains(err, "header says 1010 tokens, file holds 1000"), "truncated body: '%s'", err);

        p = dlt_path("odd_bytes.bin");    // truncated in the middle of a token
        size_t size;
        dlt_write_llmc_shard(p, t, 1000, 1000, 20240520, 1);
        unsigned char* raw = dlt_read_raw(p, &size);
        dlt_write_raw(p, raw, size - 3);
        free(raw);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p)
              && dlt_contains(err, "file holds 998 and a partial token"), "odd bytes: '%s'", err);

        p = dlt_path("negative.bin");
        dlt_write_llmc_shard(p, t, -5, 0, 20240520, 1);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p) && dlt_contains(err, "negative"),
              "negative count: '%s'", err);

        // id >= V, reported with its position (uint32 kind so 70000 fits)
        uint32_t* big = (uint32_t*)calloc(2000, sizeof(uint32_t));
        big[1234] = 70000;
        p = dlt_path("big_id.bin");
        CHECK(shard_write(p, big, 2000, 100000, 0, err, sizeof(err)) == 0, "%s", err);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p)
              && dlt_contains(err, "token 70000 at position 1234 is >= vocab size 50257"), "id >= V: '%s'", err);
        CHECK(shard_load(p, 0, &s, err, sizeof(err)) == 0 && s.tokens[1234] == 70000, "vocab 0 skips the id check: %s", err);
        shard_free(&s);
        p = dlt_path("big_id.bin.gz");
        CHECK(shard_write(p, big, 2000, 100000, 1, err, sizeof(err)) == 0, "%s", err);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p)
              && dlt_contains(err, "token 70000 at position 1234 is >= vocab size 50257"), "gz id >= V: '%s'", err);
        free(big);

        // gzip problems
        uint32_t t32[5000];
        for (int i = 0; i < 5000; i++) t32[i] = (uint32_t)(i % 1000);
        p = dlt_path("good.bin.gz");
        CHECK(shard_write(p, t32, 5000, 50257, 1, err, sizeof(err)) == 0, "%s", err);
        raw = dlt_read_raw(p, &size);

        p = dlt_path("truncated.bin.gz");
        dlt_write_raw(p, raw, size / 2);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p) && dlt_contains(err, "gzip"),
              "truncated gzip: '%s'", err);
        p = dlt_path("no_trailer.bin.gz");   // all the data, but the CRC/size trailer cut off
        dlt_write_raw(p, raw, size - 8);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p)
              && dlt_contains(err, "gzip data truncated"), "gzip without trailer: '%s'", err);

        p = dlt_path("bad_crc.bin.gz");      // a flipped bit in the stored CRC-32
        raw[size - 8] ^= 1;
        dlt_write_raw(p, raw, size);
        raw[size - 8] ^= 1;
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p)
              && dlt_contains(err, "gzip data corrupt"), "gzip bad crc: '%s'", err);

        p = dlt_path("garbled.bin.gz");      // garbage in the middle of the deflate stream
        memset(raw + size / 3, 0xff, 16);
        dlt_write_raw(p, raw, size);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p) && dlt_contains(err, "gzip data corrupt"),
              "garbled gzip: '%s'", err);
        free(raw);

        p = dlt_path("count_gz.bin.gz");     // gzip whose header count disagrees with its data
        dlt_write_llmc_shard(dlt_path("count_gz_src.bin"), t, 1000, 1010, 20240520, 1);
        raw = dlt_read_raw(dlt_path("count_gz_src.bin"), &size);
        gzFile gzf = gzopen(p, "wb");
        gzwrite(gzf, raw, (unsigned)size);
        gzclose(gzf);
        free(raw);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p)
              && dlt_contains(err, "header says 1000 tokens, decompressed data holds 1010"), "gz count: '%s'", err);

        p = dlt_path("not_gzip.bin.gz");
        dlt_write_llmc_shard(p, t, 1000, 1000, 20240520, 1);
        CHECK(shard_load(p, 50257, &s, err, sizeof(err)) == -1 && dlt_contains(err, p) && dlt_contains(err, "not gzip"),
              "plain data named .gz: '%s'", err);

        // two concatenated gzip members (as `cat a.gz b.gz` makes) are one stream
        dlt_write_llmc_shard(dlt_path("two_members_src.bin"), t, 1000, 1000, 20240520, 1);
        raw = dlt_read_raw(dlt_path("two_members_src.bin"), &size);
        p = dlt_path("two_members.bin.gz");
        gzf = gzopen(p, "wb");
        gzwrite(gzf, raw, 1500);
        gzclose(gzf);
        gzf = gzopen(p, "ab");
        gzwrite(gzf, raw + 1500, (unsigned)(size - 1500));
        gzclose(gzf);
        free(raw);
        int ret = shard_load(p, 50257, &s, err, sizeof(err));
        CHECK(ret == 0 && s.num_tokens == 1000 && s.tokens[999] == 999, "two gzip members: %s", err);
        shard_free(&s);
    }
    free(tokens);
}

static void test_dataloader_glob_and_order(void) {
    char err[512];
    const int B = 2, T = 8, BT = 16, V = 50257;
    // three shards: plain, gzip, plain; sizes give 3, 2 and 4 batches (with some tokens left over)
    const size_t sizes[3] = { 3 * BT + 1 + 5, 2 * BT + 1, 4 * BT + 1 + 15 };
    const char* names[3] = { "tr_000.bin", "tr_001.bin.gz", "tr_002.bin" };
    uint32_t bases[3] = { 0, 1000, 2000 };
    for (int i = 0; i < 3; i++) dlt_write_counting_shard(names[i], bases[i], sizes[i], V, i == 1);
    char pattern[512];
    snprintf(pattern, sizeof(pattern), "%s/tr_*.bin", dlt_dir);

    // the .bin pattern matches the .bin.gz shard too, and the paths come out sorted
    DataLoader dl;
    int ret = dataloader_open(&dl, pattern, B, T, V, 0, 1337, err, sizeof(err));
    CHECK(ret == 0, "dataloader_open %s: %s", pattern, err);
    if (ret != 0) return;
    CHECK(dl.num_shards == 3, "glob found %d shards, expected 3", dl.num_shards);
    for (int i = 0; i < dl.num_shards && i < 3; i++)
        CHECK(strcmp(dl.shard_paths[i], dlt_path(names[i])) == 0, "shard %d is %s, expected %s", i,
              dl.shard_paths[i], dlt_path(names[i]));
    CHECK(dataloader_num_batches(&dl) == 9, "num_batches %lld, expected 9", (long long)dataloader_num_batches(&dl));
    CHECK(dl.input_domains == NULL, "file loader has input_domains");

    // validation order: every shard in order, every batch in order, the exact windows, wrapping
    uint32_t expected_first[9];
    int e = 0;
    for (int s = 0; s < 3; s++)
        for (size_t k = 0; k < (sizes[s] - 1) / BT; k++) expected_first[e++] = bases[s] + (uint32_t)(k * BT);
    int all_ok = 1;
    for (int i = 0; i < 9 * 2 + 3; i++) {
        dataloader_next_batch(&dl);
        int ok = dlt_batch_is_window(&dl, expected_first[i % 9]);
        if (!ok) CHECK(ok, "validation batch %d: inputs[0]=%d, expected window at %u", i, dl.inputs[0], expected_first[i % 9]);
        all_ok &= ok;
    }
    CHECK(all_ok, "validation order");
    DataLoaderState st = dataloader_get_state(&dl);
    CHECK(st.epoch == 2 && st.shard_pos == 1 && st.sample_pos == 0, "state after 21 batches: %lld %lld %lld",
          (long long)st.epoch, (long long)st.shard_pos, (long long)st.sample_pos);
    dataloader_reset(&dl);
    dataloader_next_batch(&dl);
    CHECK(dlt_batch_is_window(&dl, 0), "after reset the first batch is the first window");
    dataloader_free(&dl);

    // a literal path works as a pattern
    ret = dataloader_open(&dl, dlt_path("tr_001.bin.gz"), B, T, V, 0, 1, err, sizeof(err));
    CHECK(ret == 0 && dl.num_shards == 1 && dataloader_num_batches(&dl) == 2, "literal path: %s", err);
    if (ret == 0) dataloader_free(&dl);

    // training order: each epoch visits every batch exactly once, each shard's batches together
    const int epochs = 3;
    uint32_t stream_a[3 * 9], stream_b[3 * 9], stream_c[3 * 9];
    uint64_t seeds[3] = { 1337, 1337, 4242 };
    uint32_t* streams[3] = { stream_a, stream_b, stream_c };
    for (int r = 0; r < 3; r++) {
        ret = dataloader_open(&dl, pattern, B, T, V, 1, seeds[r], err, sizeof(err));
        CHECK(ret == 0, "dataloader_open shuffled: %s", err);
        if (ret != 0) return;
        for (int i = 0; i < epochs * 9; i++) {
            dataloader_next_batch(&dl);
            streams[r][i] = (uint32_t)dl.inputs[0];
            // still a contiguous window of one shard
            int first = dl.inputs[0], ok = 0;
            for (int s = 0; s < 3; s++) {
                uint32_t off = (uint32_t)first - bases[s];
                if ((uint32_t)first >= bases[s] && off < sizes[s] && off % BT == 0 && off + BT < sizes[s]) ok = 1;
            }
            CHECK(ok && dlt_batch_is_window(&dl, (uint32_t)first), "shuffled batch %d is not a window (inputs[0]=%d)", i, first);
        }
        dataloader_free(&dl);
    }
    for (int ep = 0; ep < epochs; ep++) {
        int covered = 1;
        for (int k = 0; k < 9; k++) {
            int count = 0;
            for (int i = 0; i < 9; i++) count += stream_a[ep * 9 + i] == expected_first[k];
            covered &= count == 1;
        }
        CHECK(covered, "epoch %d does not visit every batch exactly once", ep);
        // shard-by-shard: the shard changes exactly twice within an epoch
        int changes = 0;
        for (int i = 1; i < 9; i++) changes += stream_a[ep * 9 + i] / 1000 != stream_a[ep * 9 + i - 1] / 1000;
        CHECK(changes == 2, "epoch %d switches shards %d times, expected 2", ep, changes);
    }
    CHECK(memcmp(stream_a, stream_b, sizeof(stream_a)) == 0, "same seed, different stream");
    CHECK(memcmp(stream_a, stream_c, sizeof(stream_a)) != 0, "different seed, same stream");
    CHECK(memcmp(stream_a, stream_a + 9, 9 * sizeof(uint32_t)) != 0 || memcmp(stream_a + 9, stream_a + 18, 9 * sizeof(uint32_t)) != 0,
          "the order does not change between epochs");
    int any_shuffled = 0;
    for (int i = 0; i < 9; i++) any_shuffled |= stream_a[i] != expected_first[i];
    CHECK(any_shuffled, "shuffled epoch 0 is the sequential order");
}

static void test_dataloader_resume(void) {
    char err[512];
    const int B = 2, T = 4, BT = 8, V = 60000;
    // 4 shards of 7..10 batches: 34 batches per epoch
    char pattern[512];
    for (int s = 0; s < 4; s++) {
        char name[64];
        snprintf(name, sizeof(name), "rs_%03d.bin", s);
        dlt_write_counting_shard(name, (uint32_t)(s * 10000), (size_t)(7 + s) * BT + 1 + (size_t)s, V, s % 2);
    }
    snprintf(pattern, sizeof(pattern), "%s/rs_*.bin", dlt_dir);
    DataLoader a, b;
    int ret = dataloader_open(&a, pattern, B, T, V, 1, 7, err, sizeof(err));
    CHECK(ret == 0, "resume open: %s", err);
    if (ret != 0) return;
    CHECK(dataloader_num_batches(&a) == 34, "resume num_batches %lld", (long long)dataloader_num_batches(&a));
    // stop 20 batches before the end of epoch 1, so the next 50 cross the epoch 1 -> 2 boundary
    int64_t skip = 34 + 34 - 20;
    for (int64_t i = 0; i < skip; i++) dataloader_next_batch(&a);
    DataLoaderState st = dataloader_get_state(&a);
    CHECK(st.epoch == 1, "resume state epoch %lld", (long long)st.epoch);
    int* expected_in = (int*)malloc(50 * BT * sizeof(int));
    int* expected_tg = (int*)malloc(50 * BT * sizeof(int));
    for (int i = 0; i < 50; i++) {
        dataloader_next_batch(&a);
        memcpy(expected_in + i * BT, a.inputs, BT * sizeof(int));
        memcpy(expected_tg + i * BT, a.targets, BT * sizeof(int));
    }
    // a fresh loader (nothing in memory) given only the state reproduces the stream bit for bit
    ret = dataloader_open(&b, pattern, B, T, V, 1, 7, err, sizeof(err));
    CHECK(ret == 0 && dataloader_set_state(&b, st, err, sizeof(err)) == 0, "set_state: %s", err);
    int same = 1;
    for (int i = 0; i < 50; i++) {
        dataloader_next_batch(&b);
        same &= memcmp(expected_in + i * BT, b.inputs, BT * sizeof(int)) == 0;
        same &= memcmp(expected_tg + i * BT, b.targets, BT * sizeof(int)) == 0;
    }
    CHECK(same, "resume does not reproduce the next 50 batches");
    DataLoaderState sa = dataloader_get_state(&a), sb = dataloader_get_state(&b);
    CHECK(sa.epoch == sb.epoch && sa.shard_pos == sb.shard_pos && sa.sample_pos == sb.sample_pos,
          "states differ after the resumed stream");
    // and the same loader moved back in time reproduces it too
    CHECK(dataloader_set_state(&a, st, err, sizeof(err)) == 0, "set_state back: %s", err);
    dataloader_next_batch(&a);
    CHECK(memcmp(expected_in, a.inputs, BT * sizeof(int)) == 0, "set_state back in the same loader");

    // out-of-range states are refused and leave the position alone
    DataLoaderState before = dataloader_get_state(&b);
    DataLoaderState bad[4] = { { -1, 0, 0 }, { 0, 4, 0 }, { 0, 0, 11 }, { 0, -1, 0 } };
    for (int i = 0; i < 4; i++) {
        err[0] = '\0';
        CHECK(dataloader_set_state(&b, bad[i], err, sizeof(err)) == -1 && dlt_contains(err, "bad state"),
              "bad state %d accepted ('%s')", i, err);
    }
    DataLoaderState after = dataloader_get_state(&b);
    CHECK(before.epoch == after.epoch && before.shard_pos == after.shard_pos && before.sample_pos == after.sample_pos,
          "a refused set_state moved the loader");
    free(expected_in);
    free(expected_tg);
    dataloader_free(&a);
    dataloader_free(&b);
}

static void test_dataloader_init_errors(void) {
    char err[512];
    DataLoader dl;
    const char* p;
    // no match
    char pattern[512];
    snprintf(pattern, sizeof(pattern), "%s/nothing_*.bin", dlt_dir);
    CHECK(dataloader_open(&dl, pattern, 2, 4, 100, 0, 1, err, sizeof(err)) == -1 && dlt_contains(err, "no files match")
          && dlt_contains(err, pattern), "no match: '%s'", err);
    // a shard shorter than B*T+1 among good ones is refused by name
    dlt_write_counting_shard("sh_000.bin", 0, 100, 1000, 0);
    dlt_write_counting_shard("sh_001.bin", 0, 8, 1000, 0);   // B*T+1 = 9 needed
    snprintf(pattern, sizeof(pattern), "%s/sh_*.bin", dlt_dir);
    p = dlt_path("sh_001.bin");
    CHECK(dataloader_open(&dl, pattern, 2, 4, 1000, 1, 1, err, sizeof(err)) == -1 && dlt_contains(err, p)
          && dlt_contains(err, "holds 8 tokens, fewer than the B*T+1 = 9"), "short shard: '%s'", err);
    CHECK(dataloader_open(&dl, pattern, 2, 3, 1000, 1, 1, err, sizeof(err)) == 0, "7 tokens suffice for B=2 T=3: %s", err);
    dataloader_free(&dl);
    // a broken shard stops init with its name
    dlt_write_counting_shard("bd_000.bin", 0, 100, 1000, 0);
    dlt_write_counting_shard("bd_001.bin", 990, 100, 2000, 0);   // ids up to 1089
    snprintf(pattern, sizeof(pattern), "%s/bd_*.bin", dlt_dir);
    p = dlt_path("bd_001.bin");
    CHECK(dataloader_open(&dl, pattern, 2, 4, 1000, 0, 1, err, sizeof(err)) == -1 && dlt_contains(err, p)
          && dlt_contains(err, "token 1000 at position 10 is >= vocab size 1000"), "bad id at init: '%s'", err);
    // x.bin and x.bin.gz both present: the same data twice, refused
    dlt_write_counting_shard("dup_000.bin", 0, 100, 1000, 0);
    dlt_write_counting_shard("dup_000.bin.gz", 0, 100, 1000, 1);
    snprintf(pattern, sizeof(pattern), "%s/dup_*.bin", dlt_dir);
    CHECK(dataloader_open(&dl, pattern, 2, 4, 1000, 0, 1, err, sizeof(err)) == -1 && dlt_contains(err, "dup_000.bin.gz")
          && dlt_contains(err, "twice"), "x.bin + x.bin.gz: '%s'", err);
    // bad B, T
    CHECK(dataloader_open(&dl, dlt_path("sh_000.bin"), 0, 4, 1000, 0, 1, err, sizeof(err)) == -1, "B=0 accepted");
}

static void test_dataloader_memory(void) {
    char err[512];
    const int B = 3, T = 5, BT = 15, V = 5000;
    const size_t n = 10 * BT + 7;   // 10 batches
    uint32_t* tokens = (uint32_t*)malloc(n * sizeof(uint32_t));
    uint8_t* domains = (uint8_t*)malloc(n);
    for (size_t i = 0; i < n; i++) { tokens[i] = (uint32_t)i; domains[i] = (uint8_t)((i / 37) % 4); }
    DataLoader dl;
    int ret = dataloader_open_memory(&dl, tokens, domains, n, B, T, V, 0, 1, err, sizeof(err));
    CHECK(ret == 0, "open_memory: %s", err);
    if (ret != 0) { free(tokens); free(domains); return; }
    // the loader keeps its own copy: scribbling on the caller's arrays changes nothing
    for (size_t i = 0; i < n; i++) { tokens[i] = 4999; domains[i] = 9; }
    CHECK(dataloader_num_batches(&dl) == 10, "memory num_batches %lld", (long long)dataloader_num_batches(&dl));
    CHECK(dl.input_domains != NULL, "memory loader with domains has no input_domains");
    int ok = 1;
    for (int i = 0; i < 23; i++) {
        dataloader_next_batch(&dl);
        uint32_t first = (uint32_t)((i % 10) * BT);
        ok &= dlt_batch_is_window(&dl, first);
        for (int j = 0; j < BT; j++) ok &= dl.input_domains[j] == (uint8_t)(((first + (uint32_t)j) / 37) % 4);
    }
    CHECK(ok, "memory loader: windows or domains wrong (sequential, wrapping)");
    dataloader_free(&dl);

    // shuffled: a permutation of the 10 windows per epoch, domains following their tokens
    for (size_t i = 0; i < n; i++) { tokens[i] = (uint32_t)i; domains[i] = (uint8_t)((i / 37) % 4); }
    ret = dataloader_open_memory(&dl, tokens, domains, n, B, T, V, 1, 99, err, sizeof(err));
    CHECK(ret == 0, "open_memory shuffled: %s", err);
    int seen[10] = { 0 };
    ok = 1;
    for (int i = 0; i < 10; i++) {
        dataloader_next_batch(&dl);
        int k = dl.inputs[0] / BT;
        ok &= dl.inputs[0] % BT == 0 && k >= 0 && k < 10 && dlt_batch_is_window(&dl, (uint32_t)dl.inputs[0]);
        if (k >= 0 && k < 10) seen[k]++;
        for (int j = 0; j < BT; j++) ok &= dl.input_domains[j] == (uint8_t)(((dl.inputs[0] + j) / 37) % 4);
    }
    for (int k = 0; k < 10; k++) ok &= seen[k] == 1;
    CHECK(ok, "memory loader shuffled epoch is not a permutation of the windows");
    dataloader_free(&dl);

    // no domains, too short, id >= V
    ret = dataloader_open_memory(&dl, tokens, NULL, n, B, T, V, 0, 1, err, sizeof(err));
    CHECK(ret == 0 && dl.input_domains == NULL, "memory loader without domains: %s", err);
    if (ret == 0) { dataloader_next_batch(&dl); CHECK(dlt_batch_is_window(&dl, 0), "memory loader without domains"); dataloader_free(&dl); }
    CHECK(dataloader_open_memory(&dl, tokens, NULL, BT, B, T, V, 0, 1, err, sizeof(err)) == -1
          && dlt_contains(err, "fewer than the B*T+1 = 16"), "short memory corpus: '%s'", err);
    tokens[77] = V;
    CHECK(dataloader_open_memory(&dl, tokens, NULL, n, B, T, V, 0, 1, err, sizeof(err)) == -1
          && dlt_contains(err, "token 5000 at position 77 is >= vocab size 5000"), "memory id >= V: '%s'", err);
    free(tokens);
    free(domains);
}

static void test_dataloader(void) {
    snprintf(dlt_dir, sizeof(dlt_dir), "/tmp/moe_dataloader_test_XXXXXX");
    if (mkdtemp(dlt_dir) == NULL) {
        CHECK(0, "mkdtemp %s failed", dlt_dir);
        return;
    }
    test_dataloader_shards();
    test_dataloader_glob_and_order();
    test_dataloader_resume();
    test_dataloader_init_errors();
    test_dataloader_memory();
    dlt_remove_dir();
}
