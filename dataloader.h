/*
dataloader.h — token shards (llm.c's format, docs/formats.md) and the batches served from them.

A shard is   int32 header[256]   then the tokens:
    header[0] = 20240520, header[1] = 1  -> uint16 tokens (GPT-2 sized vocabularies, V <= 65536)
    header[0] = 20240801, header[1] = 7  -> uint32 tokens (LLaMA-3 sized vocabularies)
    header[2] = number of tokens; the file is exactly 1024 + token_size * header[2] bytes.
Everything is little-endian. A shard may be gzip-compressed (.bin.gz); it is then decompressed
whole, in one streaming pass (seeking in a gzip stream is quadratic). Whether a file is gzip is
decided by its first two bytes (0x1f 0x8b), so a misnamed file still loads.

Batches, as in llm.c: a batch is B*T+1 contiguous tokens, inputs = tokens[0..BT),
targets = tokens[1..BT]; a shard of n tokens holds floor((n-1)/(B*T)) batches, at offsets k*B*T.

Order:
- shuffle = 0 (validation): shards in sorted name order, batches in order, wrapping to the start.
- shuffle = 1 (training): epoch e visits the shards in a permutation, and each shard's batches in
  a permutation, both drawn from (seed, e, shard index) with splitmix64 + Fisher–Yates. So the
  position (epoch, shard_pos, sample_pos) alone reproduces the exact stream after a resume.

  The position is that of the *next* batch; shard_pos and sample_pos index epoch e's orders.
  The streams are seeded by hashing (seed, epoch, 0) for the shard order and (seed, epoch, s+1)
  for shard s's batches, so they are independent of every other use of the run's seed.

Files: a pattern is a glob, sorted by byte order; one ending in ".bin" also matches the same
names + ".gz". If both x.bin and x.bin.gz match, init refuses (the data would be read twice).

Domain labels (optional): beside shard X.bin (or X.bin.gz) a file X.domains holds one uint8 domain
id per token of the shard, after a 16-byte header: uint32 magic 20261201, uint32 version 1,
uint32 number of tokens (must equal the shard's), uint32 number of domains D (every id < D).
domains.txt beside the shards names the domains, one per line, in id order (data/prepare_text
writes both). Either every matched shard has a label file or none has; a label file whose count
disagrees with its shard, an id >= D, or shards with different D are refused by name. With labels,
input_domains holds each input token's domain, for shuffled batches too.

Memory: only the current shard is held (as uint32). Every shard is read once at init to validate
it (header, size, token ids, length >= B*T+1), one at a time, and freed again. The in-memory
loader (the built-in synthetic corpus) keeps its own copy of the tokens and domains.

Errors: the *_open and shard_* functions return -1 and write a message naming the file into err;
dataloader_init / dataloader_init_memory print that message and exit(1). A damaged gzip stream
is reported before a count mismatch, and that before an id >= V.

inputs/targets are int: pass vocab_size > 0 so that no id above INT_MAX can reach them.
The public functions are `static inline` only so that a program using a few of them compiles
without unused-function warnings.
*/
#ifndef DATALOADER_H
#define DATALOADER_H

#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <glob.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>
#include <zlib.h>

#define SHARD_HEADER_INTS 256
#define SHARD_HEADER_BYTES (SHARD_HEADER_INTS * 4)
#define SHARD_MAGIC_U16 20240520
#define SHARD_VERSION_U16 1
#define SHARD_MAGIC_U32 20240801
#define SHARD_VERSION_U32 7

// writes a message into err (a message longer than errlen is cut short, which is fine)
__attribute__((format(printf, 3, 4)))
static void dl_error(char* err, size_t errlen, const char* format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(err, errlen, format, args);
    va_end(args);
}

// ----------------------------------------------------------------------------
// little-endian helpers (the files are little-endian whatever the host is)

static uint32_t dl_read_u32le(const unsigned char* p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static void dl_write_u32le(unsigned char* p, uint32_t x) {
    p[0] = (unsigned char)x; p[1] = (unsigned char)(x >> 8);
    p[2] = (unsigned char)(x >> 16); p[3] = (unsigned char)(x >> 24);
}

// ----------------------------------------------------------------------------
// DlReader: the bytes of a file, plain or gzip, read front to back.
// gzip members may be concatenated (as `cat a.gz b.gz` makes); the CRC of each member is checked
// by zlib when its end is reached, which is why readers always drain to the end of the file.

#define DL_CHUNK (1 << 16)

typedef struct {
    FILE* file;
    int gzip;
    z_stream zs;
    int zs_ready;         // inflateInit2 was called
    int member_done;      // the last gzip member ended (Z_STREAM_END) and no more input followed
    unsigned char in[DL_CHUNK];
    int failed;           // set on an I/O or gzip error; message in error
    char error[160];
} DlReader;

// opens path; returns 0, or -1 with a message in err
static int dl_reader_open(DlReader* r, const char* path, char* err, size_t errlen) {
    memset(r, 0, sizeof(*r));
    r->file = fopen(path, "rb");
    if (r->file == NULL) {
        dl_error(err, errlen, "shard %s: cannot open (%s)", path, strerror(errno));
        return -1;
    }
    int c0 = fgetc(r->file), c1 = fgetc(r->file);
    rewind(r->file);
    r->gzip = (c0 == 0x1f && c1 == 0x8b);
    size_t len = strlen(path);
    if (!r->gzip && len >= 3 && strcmp(path + len - 3, ".gz") == 0) {
        dl_error(err, errlen, "shard %s: name ends in .gz but the file is not gzip data", path);
        fclose(r->file);
        r->file = NULL;
        return -1;
    }
    if (r->gzip) {
        // 15 + 16: a gzip wrapper, 32K window
        if (inflateInit2(&r->zs, 15 + 16) != Z_OK) {
            dl_error(err, errlen, "shard %s: zlib inflateInit2 failed", path);
            fclose(r->file);
            r->file = NULL;
            return -1;
        }
        r->zs_ready = 1;
    }
    return 0;
}

// reads up to n bytes into buf; returns how many were read. Fewer than n means the end of the
// data or an error (r->failed).
static size_t dl_reader_read(DlReader* r, void* buf, size_t n) {
    if (r->failed) return 0;
    if (!r->gzip) {
        size_t got = fread(buf, 1, n, r->file);
        if (got < n && ferror(r->file)) {
            r->failed = 1;
            snprintf(r->error, sizeof(r->error), "read error (%s)", strerror(errno));
        }
        return got;
    }
    r->zs.next_out = (Bytef*)buf;
    size_t produced = 0;
    while (produced < n) {
        if (r->zs.avail_in == 0) {
            size_t got = fread(r->in, 1, DL_CHUNK, r->file);
            if (got == 0) {
                if (ferror(r->file)) {
                    r->failed = 1;
                    snprintf(r->error, sizeof(r->error), "read error (%s)", strerror(errno));
                } else if (!r->member_done) {
                    r->failed = 1;
                    snprintf(r->error, sizeof(r->error), "gzip data truncated (the stream ends early)");
                }
                break;
            }
            r->zs.next_in = r->in;
            r->zs.avail_in = (uInt)got;
            if (r->member_done) {
                // more bytes after a finished member: another member follows
                inflateReset(&r->zs);
                r->member_done = 0;
            }
        }
        size_t want = n - produced;
        uInt avail = want > (1u << 30) ? (1u << 30) : (uInt)want;
        r->zs.avail_out = avail;
        int ret = inflate(&r->zs, Z_NO_FLUSH);
        produced += avail - r->zs.avail_out;
        if (ret == Z_STREAM_END) {
            r->member_done = 1;
            if (r->zs.avail_in > 0) { inflateReset(&r->zs); r->member_done = 0; }
        } else if (ret != Z_OK && ret != Z_BUF_ERROR) {
            r->failed = 1;
            snprintf(r->error, sizeof(r->error), "gzip data corrupt (%s)",
                     r->zs.msg ? r->zs.msg : "inflate error");
            break;
        }
    }
    return produced;
}

static void dl_reader_close(DlReader* r) {
    if (r->zs_ready) inflateEnd(&r->zs);
    if (r->file) fclose(r->file);
    r->file = NULL;
    r->zs_ready = 0;
}

// ----------------------------------------------------------------------------
// Shard: load (and validate) one file, write one file atomically

// One shard's tokens in memory, converted to uint32.
typedef struct {
    uint32_t* tokens;
    size_t num_tokens;
} Shard;

static inline void shard_free(Shard* s) {
    free(s->tokens);
    s->tokens = NULL;
    s->num_tokens = 0;
}

// Load + validate one shard. vocab_size <= 0 skips the token id check.
// Returns 0, or -1 with err naming the file and what is wrong (out is then empty).
static inline int shard_load(const char* path, int vocab_size, Shard* out, char* err, size_t errlen) {
    out->tokens = NULL;
    out->num_tokens = 0;
    DlReader* r = (DlReader*)malloc(sizeof(DlReader));
    unsigned char* chunk = (unsigned char*)malloc(DL_CHUNK);
    uint32_t* tokens = NULL;
    if (r == NULL || chunk == NULL) {
        dl_error(err, errlen, "shard %s: out of memory", path);
        free(r); free(chunk);
        return -1;
    }
    if (dl_reader_open(r, path, err, errlen) != 0) { free(r); free(chunk); return -1; }
    const char* kind = r->gzip ? "decompressed data" : "file";

    // header
    unsigned char header[SHARD_HEADER_BYTES];
    size_t got = dl_reader_read(r, header, SHARD_HEADER_BYTES);
    if (r->failed) { dl_error(err, errlen, "shard %s: %s", path, r->error); goto fail; }
    if (got < SHARD_HEADER_BYTES) {
        dl_error(err, errlen, "shard %s: truncated header: %s holds %zu bytes, a shard header needs %d",
                 path, kind, got, SHARD_HEADER_BYTES);
        goto fail;
    }
    uint32_t magic = dl_read_u32le(header), version = dl_read_u32le(header + 4);
    int32_t header_count = (int32_t)dl_read_u32le(header + 8);
    size_t token_size;
    if (magic == SHARD_MAGIC_U16 && version == SHARD_VERSION_U16) token_size = 2;
    else if (magic == SHARD_MAGIC_U32 && version == SHARD_VERSION_U32) token_size = 4;
    else if (magic == SHARD_MAGIC_U16 || magic == SHARD_MAGIC_U32) {
        dl_error(err, errlen, "shard %s: magic %u with version %u; expected version %d for magic %d (uint16) "
                 "or version %d for magic %d (uint32)", path, magic, version,
                 SHARD_VERSION_U16, SHARD_MAGIC_U16, SHARD_VERSION_U32, SHARD_MAGIC_U32);
        goto fail;
    } else {
        dl_error(err, errlen, "shard %s: bad magic %u (expected %d for uint16 tokens or %d for uint32 "
                 "tokens): not an llm.c token shard", path, magic, SHARD_MAGIC_U16, SHARD_MAGIC_U32);
        goto fail;
    }
    if (header_count < 0) {
        dl_error(err, errlen, "shard %s: header says %d tokens (negative)", path, header_count);
        goto fail;
    }
    size_t count = (size_t)header_count;

    // a plain file's size is known up front: check it before reading anything
    if (!r->gzip) {
        struct stat st;
        if (fstat(fileno(r->file), &st) == 0 && S_ISREG(st.st_mode)) {
            size_t body = (size_t)st.st_size - SHARD_HEADER_BYTES;
            if (body != count * token_size) {
                size_t stray = body % token_size;
                dl_error(err, errlen, "shard %s: header says %zu tokens, file holds %zu%s", path, count,
                         body / token_size, stray ? " and a partial token" : "");
                goto fail;
            }
        }
    }

    // tokens, read chunk by chunk and widened to uint32. The array grows as data arrives, so a
    // gzip file whose header lies about its count cannot make us allocate gigabytes up front.
    size_t capacity = count < (1u << 20) ? count : (1u << 20);
    tokens = (uint32_t*)malloc((capacity > 0 ? capacity : 1) * sizeof(uint32_t));
    if (tokens == NULL) { dl_error(err, errlen, "shard %s: out of memory", path); goto fail; }
    // Problems are reported in order of how basic they are: a damaged gzip stream first (its
    // garbage could decode to ids >= V), then a count mismatch, then the first id >= V.
    size_t n = 0, partial = 0;              // partial: bytes of an incomplete last token
    int has_bad_id = 0;
    uint32_t bad_id = 0;
    size_t bad_position = 0;
    while (n < count) {
        size_t want = count - n;
        if (want > DL_CHUNK / token_size) want = DL_CHUNK / token_size;
        got = dl_reader_read(r, chunk, want * token_size);
        if (r->failed) break;
        size_t m = got / token_size;
        if (n + m > capacity) {
            while (capacity < n + m) capacity *= 2;
            if (capacity > count) capacity = count;
            uint32_t* grown = (uint32_t*)realloc(tokens, capacity * sizeof(uint32_t));
            if (grown == NULL) { dl_error(err, errlen, "shard %s: out of memory", path); goto fail; }
            tokens = grown;
        }
        for (size_t i = 0; i < m; i++) {
            const unsigned char* p = chunk + i * token_size;
            uint32_t id = token_size == 2 ? (uint32_t)p[0] | ((uint32_t)p[1] << 8) : dl_read_u32le(p);
            if (vocab_size > 0 && id >= (uint32_t)vocab_size && !has_bad_id) {
                has_bad_id = 1;
                bad_id = id;
                bad_position = n + i;
            }
            tokens[n + i] = id;
        }
        n += m;
        if (got < want * token_size) { partial = got % token_size; break; }
    }
    // nothing may follow the tokens; draining to the end also makes zlib check the gzip CRC
    size_t extra = 0;
    if (n == count && !r->failed) {
        while ((got = dl_reader_read(r, chunk, DL_CHUNK)) > 0) extra += got;
    }
    if (r->failed) {
        dl_error(err, errlen, "shard %s: %s", path, r->error);
        goto fail;
    }
    if (n < count || extra > 0) {
        size_t holds = n + extra / token_size;
        int stray = (partial + extra % token_size) != 0;
        dl_error(err, errlen, "shard %s: header says %zu tokens, %s holds %zu%s", path, count, kind,
                 holds, stray ? " and a partial token" : "");
        goto fail;
    }
    if (has_bad_id) {
        dl_error(err, errlen, "shard %s: token %u at position %zu is >= vocab size %d",
                 path, bad_id, bad_position, vocab_size);
        goto fail;
    }

    dl_reader_close(r);
    free(r);
    free(chunk);
    out->tokens = tokens;
    out->num_tokens = count;
    return 0;

fail:
    dl_reader_close(r);
    free(r);
    free(chunk);
    free(tokens);
    return -1;
}

// runs deflate over what zs holds as input and writes its output to f; flush is Z_NO_FLUSH, or
// Z_FINISH to end the gzip stream. Returns 0 or -1.
static int dl_deflate_to_file(FILE* f, z_stream* zs, int flush) {
    unsigned char out[DL_CHUNK];
    int ret;
    do {
        zs->next_out = out;
        zs->avail_out = DL_CHUNK;
        ret = deflate(zs, flush);
        if (ret == Z_STREAM_ERROR) return -1;
        size_t have = DL_CHUNK - zs->avail_out;
        if (fwrite(out, 1, have, f) != have) return -1;
    } while (zs->avail_out == 0 || (flush == Z_FINISH && ret != Z_STREAM_END));
    return 0;
}

// writes n bytes (n <= DL_CHUNK) to f, through the deflate stream zs when it is not NULL; 0 or -1
static int dl_write_bytes(FILE* f, z_stream* zs, const void* data, size_t n) {
    if (zs == NULL) return fwrite(data, 1, n, f) == n ? 0 : -1;
    zs->next_in = (Bytef*)data;
    zs->avail_in = (uInt)n;
    return dl_deflate_to_file(f, zs, Z_NO_FLUSH);
}

// Write a shard: the uint16 kind (20240520, 1) iff vocab_size <= 65536, else the uint32 kind
// (20240801, 7); gzip-compressed when use_gzip (path should then end in .bin.gz). Written atomically:
// a temporary file beside path, fsync, rename. vocab_size > 0 also checks every id < vocab_size;
// vocab_size <= 0 picks the uint16 kind iff every id <= 65535. Returns 0, or -1 with err.
static inline int shard_write(const char* path, const uint32_t* tokens, size_t n, int vocab_size, int use_gzip,
                       char* err, size_t errlen) {
    size_t token_size = vocab_size <= 65536 ? 2 : 4;
    if (vocab_size <= 0) {
        // no vocabulary given: the smallest kind that holds every id
        for (size_t i = 0; i < n; i++) if (tokens[i] > 65535) { token_size = 4; break; }
    }
    if (n > (size_t)INT32_MAX) {
        dl_error(err, errlen, "shard %s: %zu tokens do not fit the int32 count in the header", path, n);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (vocab_size > 0 && tokens[i] >= (uint32_t)vocab_size) {
            dl_error(err, errlen, "shard %s: token %u at position %zu is >= vocab size %d",
                     path, tokens[i], i, vocab_size);
            return -1;
        }
    }
    size_t tmplen = strlen(path) + 32;
    char* tmp = (char*)malloc(tmplen);
    if (tmp == NULL) { dl_error(err, errlen, "shard %s: out of memory", path); return -1; }
    snprintf(tmp, tmplen, "%s.tmp.%ld", path, (long)getpid());
    FILE* f = fopen(tmp, "wb");
    if (f == NULL) {
        dl_error(err, errlen, "shard %s: cannot create %s (%s)", path, tmp, strerror(errno));
        free(tmp);
        return -1;
    }
    z_stream zs_storage;
    z_stream* zs = NULL;
    if (use_gzip) {
        memset(&zs_storage, 0, sizeof(zs_storage));
        if (deflateInit2(&zs_storage, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
            dl_error(err, errlen, "shard %s: zlib deflateInit2 failed", path);
            fclose(f); remove(tmp); free(tmp);
            return -1;
        }
        zs = &zs_storage;
    }
    int bad = 0;
    unsigned char header[SHARD_HEADER_BYTES];
    memset(header, 0, sizeof(header));
    dl_write_u32le(header, token_size == 2 ? SHARD_MAGIC_U16 : SHARD_MAGIC_U32);
    dl_write_u32le(header + 4, token_size == 2 ? SHARD_VERSION_U16 : SHARD_VERSION_U32);
    dl_write_u32le(header + 8, (uint32_t)n);
    bad |= dl_write_bytes(f, zs, header, sizeof(header));
    unsigned char chunk[DL_CHUNK];
    size_t per_chunk = DL_CHUNK / token_size;
    for (size_t start = 0; start < n && !bad; start += per_chunk) {
        size_t m = n - start < per_chunk ? n - start : per_chunk;
        for (size_t i = 0; i < m; i++) {
            uint32_t id = tokens[start + i];
            if (token_size == 2) { chunk[2 * i] = (unsigned char)id; chunk[2 * i + 1] = (unsigned char)(id >> 8); }
            else dl_write_u32le(chunk + 4 * i, id);
        }
        bad |= dl_write_bytes(f, zs, chunk, m * token_size);
    }
    if (zs != NULL) {
        if (!bad) bad |= dl_deflate_to_file(f, zs, Z_FINISH);
        deflateEnd(zs);
    }
    if (fflush(f) != 0) bad = 1;
    if (!bad && fsync(fileno(f)) != 0) bad = 1;
    if (fclose(f) != 0) bad = 1;
    if (bad) {
        dl_error(err, errlen, "shard %s: write to %s failed (%s)", path, tmp, strerror(errno));
        remove(tmp);
        free(tmp);
        return -1;
    }
    if (rename(tmp, path) != 0) {
        dl_error(err, errlen, "shard %s: rename from %s failed (%s)", path, tmp, strerror(errno));
        remove(tmp);
        free(tmp);
        return -1;
    }
    free(tmp);
    // make the rename itself durable: fsync the directory (best effort)
    char* dir = strdup(path);
    if (dir != NULL) {
        char* slash = strrchr(dir, '/');
        const char* d = slash == NULL ? "." : (slash == dir ? "/" : (*slash = '\0', dir));
        int fd = open(d, O_RDONLY);
        if (fd >= 0) { fsync(fd); close(fd); }
        free(dir);
    }
    return 0;
}

// ----------------------------------------------------------------------------
// Domain labels: X.bin / X.bin.gz -> X.domains (format at the top of this file)

#define DOMAIN_MAGIC 20261201
#define DOMAIN_VERSION 1
#define DOMAIN_HEADER_BYTES 16
#define DOMAIN_MAX 255

// the label file's path for a shard path: ".gz" then ".bin" stripped, ".domains" appended
static inline void domain_label_path(const char* shard_path, char* out, size_t n) {
    snprintf(out, n, "%s", shard_path);
    size_t len = strlen(out);
    if (len >= 3 && strcmp(out + len - 3, ".gz") == 0) out[len -= 3] = 0;
    if (len >= 4 && strcmp(out + len - 4, ".bin") == 0) out[len -= 4] = 0;
    snprintf(out + len, n - len, ".domains");
}

// Writes n labels (each < num_domains) to path atomically; 0, or -1 with err.
static inline int domain_labels_write(const char* path, const uint8_t* labels, size_t n, int num_domains,
                                      char* err, size_t errlen) {
    if (num_domains < 1 || num_domains > DOMAIN_MAX || n > (size_t)INT32_MAX) {
        dl_error(err, errlen, "domain labels %s: %d domains / %zu tokens out of range", path, num_domains, n);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if (labels[i] >= num_domains) {
            dl_error(err, errlen, "domain labels %s: label %u at %zu >= %d domains", path, labels[i], i, num_domains);
            return -1;
        }
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    FILE* f = fopen(tmp, "wb");
    if (f == NULL) { dl_error(err, errlen, "domain labels %s: cannot create (%s)", path, strerror(errno)); return -1; }
    unsigned char header[DOMAIN_HEADER_BYTES];
    dl_write_u32le(header, DOMAIN_MAGIC);
    dl_write_u32le(header + 4, DOMAIN_VERSION);
    dl_write_u32le(header + 8, (uint32_t)n);
    dl_write_u32le(header + 12, (uint32_t)num_domains);
    int bad = fwrite(header, 1, sizeof(header), f) != sizeof(header) || fwrite(labels, 1, n, f) != n;
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) bad = 1;
    if (fclose(f) != 0) bad = 1;
    if (bad || rename(tmp, path) != 0) {
        dl_error(err, errlen, "domain labels %s: write failed (%s)", path, strerror(errno));
        remove(tmp);
        return -1;
    }
    return 0;
}

// Loads path's labels into *labels (malloc'd) and its D into *num_domains, checking the header,
// the size, the count against expect_n (the shard's tokens) and every id < D; 0, or -1 with err.
static inline int domain_labels_load(const char* path, size_t expect_n, uint8_t** labels, int* num_domains,
                                     char* err, size_t errlen) {
    *labels = NULL;
    FILE* f = fopen(path, "rb");
    if (f == NULL) { dl_error(err, errlen, "domain labels %s: cannot open (%s)", path, strerror(errno)); return -1; }
    unsigned char header[DOMAIN_HEADER_BYTES];
    struct stat st;
    if (fread(header, 1, sizeof(header), f) != sizeof(header)) {
        dl_error(err, errlen, "domain labels %s: truncated header (%d bytes expected)", path, DOMAIN_HEADER_BYTES);
        fclose(f);
        return -1;
    }
    uint32_t magic = dl_read_u32le(header), version = dl_read_u32le(header + 4);
    uint32_t n = dl_read_u32le(header + 8), D = dl_read_u32le(header + 12);
    if (magic != DOMAIN_MAGIC || version != DOMAIN_VERSION) {
        dl_error(err, errlen, "domain labels %s: magic %u version %u, expected %d version %d: not a domain-label file",
                 path, magic, version, DOMAIN_MAGIC, DOMAIN_VERSION);
        fclose(f);
        return -1;
    }
    if (D < 1 || D > DOMAIN_MAX) {
        dl_error(err, errlen, "domain labels %s: header says %u domains (1..%d allowed)", path, D, DOMAIN_MAX);
        fclose(f);
        return -1;
    }
    if (n != expect_n) {
        dl_error(err, errlen, "domain labels %s: labels %u tokens but its shard holds %zu; re-run data/prepare_text",
                 path, n, expect_n);
        fclose(f);
        return -1;
    }
    if (fstat(fileno(f), &st) != 0 || (size_t)st.st_size != DOMAIN_HEADER_BYTES + (size_t)n) {
        dl_error(err, errlen, "domain labels %s: header says %u labels, the file holds %lld bytes after the header",
                 path, n, (long long)st.st_size - DOMAIN_HEADER_BYTES);
        fclose(f);
        return -1;
    }
    uint8_t* data = (uint8_t*)malloc(n > 0 ? n : 1);
    if (data == NULL || fread(data, 1, n, f) != n) {
        dl_error(err, errlen, "domain labels %s: %s", path, data == NULL ? "out of memory" : "read error");
        free(data);
        fclose(f);
        return -1;
    }
    fclose(f);
    for (uint32_t i = 0; i < n; i++)
        if (data[i] >= D) {
            dl_error(err, errlen, "domain labels %s: label %u at position %u is >= its %u domains", path, data[i], i, D);
            free(data);
            return -1;
        }
    *labels = data;
    *num_domains = (int)D;
    return 0;
}

#define DOMAIN_NAME_MAX 64
// Reads the D domain names from domains.txt in the directory of path (a shard or a glob), one per
// line; a missing file gives the names "domain0".."domain{D-1}" and returns 1; 0 when read;
// -1 with err when the file exists but does not hold exactly D non-empty names (a name of up to
// DOMAIN_NAME_MAX - 1 bytes is kept, longer ones are cut; a line over 510 bytes or a comma is refused).
static inline int domain_names_load(const char* path, int D, char names[][DOMAIN_NAME_MAX], char* err, size_t errlen) {
    char file[4096];
    snprintf(file, sizeof(file), "%s", path);
    char* slash = strrchr(file, '/');
    if (slash != NULL) snprintf(slash + 1, sizeof(file) - (size_t)(slash + 1 - file), "domains.txt");
    else snprintf(file, sizeof(file), "domains.txt");
    for (int d = 0; d < D; d++) snprintf(names[d], DOMAIN_NAME_MAX, "domain%d", d);
    FILE* f = fopen(file, "r");
    if (f == NULL) return 1;
    char line[512];
    int n = 0, lineno = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        lineno++;
        if (strchr(line, '\n') == NULL && !feof(f)) {   // a line longer than the buffer: not a name
            fclose(f);
            dl_error(err, errlen, "%s: line %d is longer than %d bytes: not a domain name", file, lineno, (int)sizeof(line) - 2);
            return -1;
        }
        line[strcspn(line, "\r\n")] = 0;
        if (line[0] == 0) continue;
        if (strchr(line, ',') != NULL) {   // config.txt lists the names joined by commas
            fclose(f);
            dl_error(err, errlen, "%s: line %d: a domain name cannot hold a comma", file, lineno);
            return -1;
        }
        line[DOMAIN_NAME_MAX - 1] = 0;  // a longer name is cut
        if (n < D) memcpy(names[n], line, strlen(line) + 1);
        n++;
    }
    fclose(f);
    if (n != D) {
        dl_error(err, errlen, "%s: holds %d domain names but the label files have %d domains", file, n, D);
        return -1;
    }
    return 0;
}

// ----------------------------------------------------------------------------
// splitmix64 and Fisher–Yates: the data order's own small, self-contained RNG

static uint64_t dl_splitmix64(uint64_t* state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// one 64-bit seed per (seed, epoch, stream): stream 0 orders the shards, stream s+1 the batches of shard s
static uint64_t dl_stream_seed(uint64_t seed, int64_t epoch, uint64_t stream) {
    uint64_t s = seed;
    uint64_t h = dl_splitmix64(&s);
    s = h ^ (uint64_t)epoch;
    h = dl_splitmix64(&s);
    s = h ^ stream;
    return dl_splitmix64(&s);
}

// order[i] = i, then shuffled by Fisher–Yates when shuffle. The modulo's bias is below 2^-32 for
// n < 2^32, far below anything a data order could show.
static void dl_permutation(int64_t* order, int64_t n, int shuffle, uint64_t seed) {
    for (int64_t i = 0; i < n; i++) order[i] = i;
    if (!shuffle) return;
    uint64_t state = seed;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(dl_splitmix64(&state) % (uint64_t)(i + 1));
        int64_t t = order[i]; order[i] = order[j]; order[j] = t;
    }
}

// ----------------------------------------------------------------------------
// DataLoader

typedef struct {
    int B, T, vocab_size, shuffle;
    uint64_t seed;
    int num_shards;
    char** shard_paths;               // (num_shards) sorted glob results; NULL for the in-memory corpus
    size_t* shard_num_tokens;         // (num_shards) as validated at init
    int64_t* shard_num_batches;       // (num_shards) floor((n-1)/(B*T))
    int64_t num_batches;              // per epoch, summed over shards
    size_t num_tokens;                // summed over shards
    // resumable position of the *next* batch: shard_pos/sample_pos index this epoch's orders
    int64_t epoch, shard_pos, sample_pos;
    int* inputs;                      // (B*T) filled by dataloader_next_batch
    int* targets;                     // (B*T)
    uint8_t* input_domains;           // (B*T) domain of each input token, or NULL (no labels)
    int num_domains;                  // D of the shards' label files (0 = no labels; the in-memory corpus: 0)
    // caches, rebuilt from the position whenever it moves on
    int64_t* shard_order;             // (num_shards) this epoch's order of shards
    int64_t shard_order_epoch;        // epoch shard_order was built for, -1 none
    Shard shard;                      // the one shard in memory
    int current_shard;                // index of the loaded shard, -1 none
    int64_t* batch_order;             // (batches of the current shard) this epoch's order of its batches
    int64_t batch_order_epoch;        // (epoch, shard) batch_order was built for
    int batch_order_shard;
    int in_memory;                    // 1: the in-memory corpus (shard holds a private copy)
    uint8_t* domains;                 // (tokens of the shard in memory) its domains, or NULL
} DataLoader;

typedef struct { int64_t epoch, shard_pos, sample_pos; } DataLoaderState;

static inline void dataloader_free(DataLoader* dl) {
    if (dl->shard_paths != NULL) {
        for (int i = 0; i < dl->num_shards; i++) free(dl->shard_paths[i]);
    }
    free(dl->shard_paths);
    free(dl->shard_num_tokens);
    free(dl->shard_num_batches);
    free(dl->inputs);
    free(dl->targets);
    free(dl->input_domains);
    free(dl->shard_order);
    free(dl->batch_order);
    free(dl->domains);
    shard_free(&dl->shard);
    memset(dl, 0, sizeof(*dl));
}

static int dl_compare_strings(const void* a, const void* b) {
    return strcmp(*(const char* const*)a, *(const char* const*)b);
}

// appends the matches of pattern to (*paths, *n); returns 0 or -1 (out of memory / read error)
static int dl_glob_append(const char* pattern, char*** paths, int* n) {
    glob_t g;
    int ret = glob(pattern, 0, NULL, &g);
    if (ret == GLOB_NOMATCH) return 0;
    if (ret != 0) return -1;
    char** grown = (char**)realloc(*paths, (size_t)(*n + (int)g.gl_pathc + 1) * sizeof(char*));
    if (grown == NULL) { globfree(&g); return -1; }
    *paths = grown;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        (*paths)[*n] = strdup(g.gl_pathv[i]);
        if ((*paths)[*n] == NULL) { globfree(&g); return -1; }
        (*n)++;
    }
    globfree(&g);
    return 0;
}

// common part of both inits: sizes, buffers, position 0
static int dl_setup(DataLoader* dl, int B, int T, int vocab_size, int shuffle, uint64_t seed,
                    char* err, size_t errlen) {
    if (B <= 0 || T <= 0) {
        dl_error(err, errlen, "dataloader: B and T must be positive (got B=%d T=%d)", B, T);
        return -1;
    }
    dl->B = B; dl->T = T; dl->vocab_size = vocab_size; dl->shuffle = shuffle != 0; dl->seed = seed;
    dl->current_shard = -1;
    dl->shard_order_epoch = -1;
    dl->batch_order_epoch = -1;
    dl->batch_order_shard = -1;
    size_t BT = (size_t)B * (size_t)T;
    dl->inputs = (int*)malloc(BT * sizeof(int));
    dl->targets = (int*)malloc(BT * sizeof(int));
    if (dl->inputs == NULL || dl->targets == NULL) {
        dl_error(err, errlen, "dataloader: out of memory for B*T = %zu", BT);
        return -1;
    }
    return 0;
}

// Open over the shards matching pattern (a glob; a pattern ending in ".bin" also matches the same
// names + ".gz"). Every shard is validated now. Returns 0, or -1 with err (dl is then freed).
static inline int dataloader_open(DataLoader* dl, const char* pattern, int B, int T, int vocab_size, int shuffle,
                           uint64_t seed, char* err, size_t errlen) {
    memset(dl, 0, sizeof(*dl));
    if (dl_setup(dl, B, T, vocab_size, shuffle, seed, err, errlen) != 0) goto fail;

    // expand the pattern
    int n = 0;
    int bad = dl_glob_append(pattern, &dl->shard_paths, &n);
    size_t plen = strlen(pattern);
    if (!bad && plen >= 4 && strcmp(pattern + plen - 4, ".bin") == 0) {
        char* gz_pattern = (char*)malloc(plen + 4);
        if (gz_pattern == NULL) bad = 1;
        else {
            snprintf(gz_pattern, plen + 4, "%s.gz", pattern);
            bad = dl_glob_append(gz_pattern, &dl->shard_paths, &n);
            free(gz_pattern);
        }
    }
    dl->num_shards = n;
    if (bad) { dl_error(err, errlen, "dataloader: cannot expand pattern %s", pattern); goto fail; }
    if (n == 0) {
        dl_error(err, errlen, "dataloader: no files match %s%s", pattern,
                 plen >= 4 && strcmp(pattern + plen - 4, ".bin") == 0 ? " (nor its .gz form)" : "");
        goto fail;
    }
    // sorted by byte order (not the locale's), so every machine sees the same order
    qsort(dl->shard_paths, (size_t)n, sizeof(char*), dl_compare_strings);
    for (int i = 1; i < n; i++) {
        size_t len = strlen(dl->shard_paths[i - 1]);
        if (strcmp(dl->shard_paths[i - 1], dl->shard_paths[i]) == 0
            || (strncmp(dl->shard_paths[i - 1], dl->shard_paths[i], len) == 0
                && strcmp(dl->shard_paths[i] + len, ".gz") == 0)) {
            dl_error(err, errlen, "dataloader: %s and %s are both matched by %s; the same shard would be "
                     "read twice: remove one of them", dl->shard_paths[i - 1], dl->shard_paths[i], pattern);
            goto fail;
        }
    }

    // validate every shard, one at a time
    dl->shard_num_tokens = (size_t*)calloc((size_t)n, sizeof(size_t));
    dl->shard_num_batches = (int64_t*)calloc((size_t)n, sizeof(int64_t));
    dl->shard_order = (int64_t*)calloc((size_t)n, sizeof(int64_t));
    if (!dl->shard_num_tokens || !dl->shard_num_batches || !dl->shard_order) {
        dl_error(err, errlen, "dataloader: out of memory");
        goto fail;
    }
    size_t BT = (size_t)B * (size_t)T;
    for (int i = 0; i < n; i++) {
        Shard s;
        if (shard_load(dl->shard_paths[i], vocab_size, &s, err, errlen) != 0) goto fail;
        size_t num_tokens = s.num_tokens;
        shard_free(&s);
        if (num_tokens < BT + 1) {
            dl_error(err, errlen, "shard %s: holds %zu tokens, fewer than the B*T+1 = %zu one batch needs "
                     "(B=%d, T=%d)", dl->shard_paths[i], num_tokens, BT + 1, B, T);
            goto fail;
        }
        char label_path[4096];
        domain_label_path(dl->shard_paths[i], label_path, sizeof(label_path));
        int has_labels = access(label_path, F_OK) == 0;
        if (i > 0 && has_labels != (dl->num_domains > 0)) {
            dl_error(err, errlen, "shard %s %s a domain-label file (%s) but %s %s: label every shard or none",
                     dl->shard_paths[i], has_labels ? "has" : "lacks", label_path, dl->shard_paths[0],
                     has_labels ? "has none" : "has one");
            goto fail;
        }
        if (has_labels) {
            uint8_t* labels;
            int D;
            if (domain_labels_load(label_path, num_tokens, &labels, &D, err, errlen) != 0) goto fail;
            free(labels);
            if (i > 0 && D != dl->num_domains) {
                dl_error(err, errlen, "domain labels %s: %d domains, but %d in the labels of %s", label_path, D,
                         dl->num_domains, dl->shard_paths[0]);
                goto fail;
            }
            dl->num_domains = D;
        }
        dl->shard_num_tokens[i] = num_tokens;
        dl->shard_num_batches[i] = (int64_t)((num_tokens - 1) / BT);
        dl->num_batches += dl->shard_num_batches[i];
        dl->num_tokens += num_tokens;
    }
    if (dl->num_domains > 0) {
        dl->input_domains = (uint8_t*)malloc(BT);
        if (dl->input_domains == NULL) { dl_error(err, errlen, "dataloader: out of memory"); goto fail; }
    }
    return 0;
fail:
    dataloader_free(dl);
    return -1;
}

// Open over one in-memory token array (the built-in synthetic corpus). The loader keeps its own
// copy of tokens and domains (domains may be NULL), so the caller may free them afterwards.
static inline int dataloader_open_memory(DataLoader* dl, const uint32_t* tokens, const uint8_t* domains, size_t n,
                                  int B, int T, int vocab_size, int shuffle, uint64_t seed,
                                  char* err, size_t errlen) {
    memset(dl, 0, sizeof(*dl));
    if (dl_setup(dl, B, T, vocab_size, shuffle, seed, err, errlen) != 0) goto fail;
    size_t BT = (size_t)B * (size_t)T;
    if (n < BT + 1) {
        dl_error(err, errlen, "dataloader: the in-memory corpus holds %zu tokens, fewer than the B*T+1 = %zu "
                 "one batch needs (B=%d, T=%d)", n, BT + 1, B, T);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        if (vocab_size > 0 && tokens[i] >= (uint32_t)vocab_size) {
            dl_error(err, errlen, "dataloader: in-memory corpus: token %u at position %zu is >= vocab size %d",
                     tokens[i], i, vocab_size);
            goto fail;
        }
    }
    dl->in_memory = 1;
    dl->num_shards = 1;
    dl->shard_num_tokens = (size_t*)malloc(sizeof(size_t));
    dl->shard_num_batches = (int64_t*)malloc(sizeof(int64_t));
    dl->shard_order = (int64_t*)malloc(sizeof(int64_t));
    dl->shard.tokens = (uint32_t*)malloc(n * sizeof(uint32_t));
    if (!dl->shard_num_tokens || !dl->shard_num_batches || !dl->shard_order || !dl->shard.tokens) {
        dl_error(err, errlen, "dataloader: out of memory for the in-memory corpus (%zu tokens)", n);
        goto fail;
    }
    memcpy(dl->shard.tokens, tokens, n * sizeof(uint32_t));
    dl->shard.num_tokens = n;
    dl->current_shard = 0;
    if (domains != NULL) {
        dl->domains = (uint8_t*)malloc(n);
        dl->input_domains = (uint8_t*)malloc(BT);
        if (!dl->domains || !dl->input_domains) {
            dl_error(err, errlen, "dataloader: out of memory for the corpus domains");
            goto fail;
        }
        memcpy(dl->domains, domains, n);
    }
    dl->shard_num_tokens[0] = n;
    dl->shard_num_batches[0] = (int64_t)((n - 1) / BT);
    dl->num_batches = dl->shard_num_batches[0];
    dl->num_tokens = n;
    return 0;
fail:
    dataloader_free(dl);
    return -1;
}

// pattern is a glob; no match or any bad shard prints a message naming the file and exits
static inline void dataloader_init(DataLoader* dl, const char* pattern, int B, int T, int vocab_size, int shuffle,
                            uint64_t seed) {
    char err[512];
    if (dataloader_open(dl, pattern, B, T, vocab_size, shuffle, seed, err, sizeof(err)) != 0) {
        fprintf(stderr, "Error: %s\n", err);
        exit(EXIT_FAILURE);
    }
}

static inline void dataloader_init_memory(DataLoader* dl, const uint32_t* tokens, const uint8_t* domains, size_t n,
                                   int B, int T, int vocab_size, int shuffle, uint64_t seed) {
    char err[512];
    if (dataloader_open_memory(dl, tokens, domains, n, B, T, vocab_size, shuffle, seed, err, sizeof(err)) != 0) {
        fprintf(stderr, "Error: %s\n", err);
        exit(EXIT_FAILURE);
    }
}

static inline int64_t dataloader_num_batches(const DataLoader* dl) { return dl->num_batches; }

// makes shard_order hold the order of dl->epoch
static void dl_build_shard_order(DataLoader* dl) {
    if (dl->shard_order_epoch == dl->epoch) return;
    dl_permutation(dl->shard_order, dl->num_shards, dl->shuffle, dl_stream_seed(dl->seed, dl->epoch, 0));
    dl->shard_order_epoch = dl->epoch;
}

// makes the shard at the current position the one in memory, with its batch order for this epoch
static void dl_prepare_position(DataLoader* dl) {
    dl_build_shard_order(dl);
    int s = (int)dl->shard_order[dl->shard_pos];
    if (dl->current_shard != s) {
        char err[512];
        shard_free(&dl->shard);
        dl->current_shard = -1;
        if (shard_load(dl->shard_paths[s], dl->vocab_size, &dl->shard, err, sizeof(err)) != 0) {
            fprintf(stderr, "Error: %s\n", err);
            exit(EXIT_FAILURE);
        }
        if (dl->shard.num_tokens != dl->shard_num_tokens[s]) {
            fprintf(stderr, "Error: shard %s: holds %zu tokens now but %zu when the run started; "
                    "was it rewritten?\n", dl->shard_paths[s], dl->shard.num_tokens, dl->shard_num_tokens[s]);
            exit(EXIT_FAILURE);
        }
        if (dl->num_domains > 0) {  // the shard's labels, checked again (the files may have changed)
            char label_path[4096];
            int D;
            free(dl->domains);
            dl->domains = NULL;
            domain_label_path(dl->shard_paths[s], label_path, sizeof(label_path));
            if (domain_labels_load(label_path, dl->shard.num_tokens, &dl->domains, &D, err, sizeof(err)) != 0) {
                fprintf(stderr, "Error: %s\n", err);
                exit(EXIT_FAILURE);
            }
        }
        dl->current_shard = s;
    }
    if (dl->batch_order_epoch != dl->epoch || dl->batch_order_shard != s) {
        int64_t nb = dl->shard_num_batches[s];
        int64_t* order = (int64_t*)realloc(dl->batch_order, (size_t)nb * sizeof(int64_t));
        if (order == NULL) {
            fprintf(stderr, "Error: dataloader: out of memory for %lld batch offsets\n", (long long)nb);
            exit(EXIT_FAILURE);
        }
        dl->batch_order = order;
        dl_permutation(dl->batch_order, nb, dl->shuffle, dl_stream_seed(dl->seed, dl->epoch, (uint64_t)s + 1));
        dl->batch_order_epoch = dl->epoch;
        dl->batch_order_shard = s;
    }
}

// fills inputs/targets (and input_domains) with the batch at the current position, then advances
static inline void dataloader_next_batch(DataLoader* dl) {
    dl_prepare_position(dl);
    size_t BT = (size_t)dl->B * (size_t)dl->T;
    size_t offset = (size_t)dl->batch_order[dl->sample_pos] * BT;
    const uint32_t* window = dl->shard.tokens + offset;   // B*T+1 tokens
    for (size_t i = 0; i < BT; i++) {
        dl->inputs[i] = (int)window[i];
        dl->targets[i] = (int)window[i + 1];
    }
    if (dl->input_domains != NULL) memcpy(dl->input_domains, dl->domains + offset, BT);
    // advance: next batch of this shard, else next shard, else next epoch
    dl->sample_pos++;
    if (dl->sample_pos == dl->shard_num_batches[dl->current_shard]) {
        dl->sample_pos = 0;
        dl->shard_pos++;
        if (dl->shard_pos == dl->num_shards) {
            dl->shard_pos = 0;
            dl->epoch++;
        }
    }
}

// back to epoch 0, first batch (the loaded shard stays until another is needed)
static inline void dataloader_reset(DataLoader* dl) {
    dl->epoch = 0;
    dl->shard_pos = 0;
    dl->sample_pos = 0;
}

static inline DataLoaderState dataloader_get_state(const DataLoader* dl) {
    DataLoaderState st = { dl->epoch, dl->shard_pos, dl->sample_pos };
    return st;
}

// moves to a position from dataloader_get_state; returns 0, or -1 with err (position unchanged)
static inline int dataloader_set_state(DataLoader* dl, DataLoaderState st, char* err, size_t errlen) {
    if (st.epoch < 0 || st.shard_pos < 0 || st.shard_pos >= dl->num_shards) {
        dl_error(err, errlen, "dataloader: bad state epoch %lld shard_pos %lld (want epoch >= 0 and "
                 "0 <= shard_pos < %d shards)", (long long)st.epoch, (long long)st.shard_pos, dl->num_shards);
        return -1;
    }
    int64_t saved_epoch = dl->epoch;
    dl->epoch = st.epoch;
    dl_build_shard_order(dl);
    int64_t nb = dl->shard_num_batches[dl->shard_order[st.shard_pos]];
    if (st.sample_pos < 0 || st.sample_pos >= nb) {
        dl_error(err, errlen, "dataloader: bad state sample_pos %lld (shard at position %lld holds %lld batches "
                 "of B=%d T=%d; was the data or B/T changed?)", (long long)st.sample_pos,
                 (long long)st.shard_pos, (long long)nb, dl->B, dl->T);
        dl->epoch = saved_epoch;
        return -1;
    }
    dl->shard_pos = st.shard_pos;
    dl->sample_pos = st.sample_pos;
    return 0;
}

// ----------------------------------------------------------------------------
// The built-in synthetic corpus: documents from several "domains" sharing one
// vocabulary, deterministic from a seed, with the domain of every token known.
//
// Vocabulary (V = 512): ids [0, 64) are shared "function" tokens every domain uses; each of the
// 4 domains owns a block of 111 "content" ids; V-1 is end-of-text, which starts every document.
// Domain d is a first-order Markov source: after token a, the next token is one of 4 successors
// drawn once for (d, a) — 30% of them from the shared ids, 70% from d's own block — with
// probabilities 0.5, 0.25, 0.15, 0.1. After a shared token the successor depends on the domain,
// so a model has to read the context to know which source it is in: that is what experts can
// specialise on. Documents have a uniform length in [32, 256] and a uniform domain.
// Per token the source's entropy is H(0.5, 0.25, 0.15, 0.1) = 1.208 nats (plus a little at
// document starts), far below the unigram entropy (about ln 450).

#define SYNTH_VOCAB 512
#define SYNTH_DOMAINS 4
#define SYNTH_SHARED 64
#define SYNTH_SUCCESSORS 4

typedef struct {
    int vocab_size, num_domains;
    uint32_t* train_tokens; uint8_t* train_domains; size_t train_len;
    uint32_t* val_tokens; uint8_t* val_domains; size_t val_len;
    double unigram_entropy;  // nats, of the train stream's token frequencies
    double entropy_rate;     // nats/token, the source's own -log p of the train stream's tokens
} SyntheticCorpus;

static uint64_t synth_next(uint64_t* s) {  // splitmix64
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
static double synth_uniform(uint64_t* s) { return (synth_next(s) >> 11) * (1.0 / 9007199254740992.0); }

// Fills n tokens of documents from the source table succ (D, V, S); returns the sum of -log p.
static double synth_stream(uint32_t* tokens, uint8_t* domains, size_t n, const uint32_t* succ, uint64_t* rng) {
    static const double probs[SYNTH_SUCCESSORS] = {0.5, 0.25, 0.15, 0.1};
    const int V = SYNTH_VOCAB, eot = SYNTH_VOCAB - 1;
    double nll = 0.0;
    size_t i = 0;
    while (i < n) {
        int d = (int)(synth_next(rng) % SYNTH_DOMAINS);
        size_t len = 32 + synth_next(rng) % 225;
        uint32_t prev = (uint32_t)eot;
        for (size_t j = 0; j < len && i < n; j++, i++) {
            if (j == 0) { tokens[i] = (uint32_t)eot; domains[i] = (uint8_t)d; continue; }
            double u = synth_uniform(rng), cdf = 0.0;
            int k = SYNTH_SUCCESSORS - 1;
            for (int s = 0; s < SYNTH_SUCCESSORS; s++) { cdf += probs[s]; if (u < cdf) { k = s; break; } }
            uint32_t next = succ[((size_t)d * V + prev) * SYNTH_SUCCESSORS + k];
            // the same token may appear twice among the successors: its probability is their sum
            double p = 0.0;
            for (int s = 0; s < SYNTH_SUCCESSORS; s++) if (succ[((size_t)d * V + prev) * SYNTH_SUCCESSORS + s] == next) p += probs[s];
            nll -= log(p);
            tokens[i] = next;
            domains[i] = (uint8_t)d;
            prev = next;
        }
    }
    return nll;
}

static inline void synthetic_corpus_generate(SyntheticCorpus* c, size_t train_len, size_t val_len, uint64_t seed) {
    memset(c, 0, sizeof(*c));
    const int V = SYNTH_VOCAB, D = SYNTH_DOMAINS, block = (SYNTH_VOCAB - 1 - SYNTH_SHARED) / SYNTH_DOMAINS;
    c->vocab_size = V;
    c->num_domains = D;
    uint64_t rng = seed * 0x9E3779B97F4A7C15ULL + 5;  // the corpus's own stream
    uint32_t* succ = (uint32_t*)malloc(sizeof(uint32_t) * D * V * SYNTH_SUCCESSORS);
    c->train_tokens = (uint32_t*)malloc(sizeof(uint32_t) * train_len);
    c->train_domains = (uint8_t*)malloc(train_len);
    c->val_tokens = (uint32_t*)malloc(sizeof(uint32_t) * val_len);
    c->val_domains = (uint8_t*)malloc(val_len);
    if (!succ || !c->train_tokens || !c->train_domains || !c->val_tokens || !c->val_domains) {
        fprintf(stderr, "error: out of memory generating the synthetic corpus\n");
        exit(EXIT_FAILURE);
    }
    for (int d = 0; d < D; d++)
        for (int a = 0; a < V; a++)
            for (int s = 0; s < SYNTH_SUCCESSORS; s++) {
                uint32_t t = synth_uniform(&rng) < 0.3 ? (uint32_t)(synth_next(&rng) % SYNTH_SHARED)
                                                       : (uint32_t)(SYNTH_SHARED + d * block + synth_next(&rng) % block);
                succ[((size_t)d * V + a) * SYNTH_SUCCESSORS + s] = t;
            }
    uint64_t train_rng = synth_next(&rng), val_rng = synth_next(&rng);
    double nll = synth_stream(c->train_tokens, c->train_domains, train_len, succ, &train_rng);
    synth_stream(c->val_tokens, c->val_domains, val_len, succ, &val_rng);
    c->train_len = train_len;
    c->val_len = val_len;
    c->entropy_rate = nll / (double)train_len;
    double* count = (double*)calloc(V, sizeof(double));
    for (size_t i = 0; i < train_len; i++) count[c->train_tokens[i]] += 1.0;
    double h = 0.0;
    for (int v = 0; v < V; v++) if (count[v] > 0) { double p = count[v] / train_len; h -= p * log(p); }
    c->unigram_entropy = h;
    free(count);
    free(succ);
}

static inline void synthetic_corpus_free(SyntheticCorpus* c) {
    free(c->train_tokens); free(c->train_domains); free(c->val_tokens); free(c->val_domains);
    memset(c, 0, sizeof(*c));
}

#endif // DATALOADER_H
