/*
prepare_text -- a text file -> a BPE tokenizer file + train/val token shards, in llm.c's formats.

    data/prepare_text -i data/tinyshakespeare/input.txt -o data/tinyshakespeare -n tiny_shakespeare

writes <outdir>/tokenizer.bin, <outdir>/<name>_train.bin and <outdir>/<name>_val.bin.

The split (documented, deterministic): val is the last F of the text by bytes (-f, default 0.1),
starting at the beginning of a line: the cut is just after the first '\n' at or after byte
floor((1-F) * size) (or, if there is none, after the last '\n' before it; with no '\n' at all, at
that byte). Train is everything before the cut.
The tokenizer: a byte-level BPE of -v tokens trained on the train part only (so val is unseen),
or, with -t, an existing llm.c tokenizer file (e.g. GPT-2's), which is copied to <outdir>.
Each shard is one document: end-of-text first, as llm.c's data scripts do, then the encoded text.
Shards are uint16 when V <= 65536 (uint32 otherwise), gzip-compressed with -z.

--ids FILE only encodes the whole input with -t's tokenizer (no split, no end-of-text) and writes
the ids one per line: dev/gpt2_tokenizer/check.sh compares them with a reference encoder.
*/
#include <getopt.h>
#include <time.h>
#include <sys/stat.h>
#include "../tokenizer.h"
#include "../dataloader.h"

// ----------------------------------------------------------------------------
// every flag, its default and its help, in one table

typedef struct {
    const char* long_name; int short_name; int has_arg; const char* arg; const char* default_value; const char* help;
} Flag;

static const Flag flags[] = {
    {"input",        'i', 1, "FILE", "(required)", "text file to prepare (any bytes; UTF-8 expected)"},
    {"outdir",       'o', 1, "DIR",  "data/<name>", "output directory, created if missing"},
    {"name",         'n', 1, "NAME", "input's base name", "shards are <outdir>/<name>_train.bin and <name>_val.bin"},
    {"vocab-size",   'v', 1, "V",    "4096", "vocabulary size of the BPE to train (>= 257: bytes, merges, end-of-text)"},
    {"val-fraction", 'f', 1, "F",    "0.1",  "the last F of the text (by bytes, cut at a line start) is val; 0 = no val"},
    {"tokenizer",    't', 1, "FILE", "(train one)", "encode with this llm.c tokenizer file instead of training a BPE"},
    {"gzip",         'z', 0, NULL,   "off",  "write gzip-compressed shards (.bin.gz)"},
    {"ids",          'I', 1, "FILE", "(off)", "only encode the whole input with -t and write the ids, one per line"},
    {"help",         'h', 0, NULL,   "",     "print this help"},
};
#define N_FLAGS (sizeof(flags) / sizeof(flags[0]))

static void print_help(void) {
    printf("usage: data/prepare_text -i TEXT [options]\n"
           "text -> <outdir>/tokenizer.bin + <outdir>/<name>_train.bin + <outdir>/<name>_val.bin (llm.c formats)\n\n");
    for (size_t k = 0; k < N_FLAGS; k++) {
        char left[64];
        snprintf(left, sizeof(left), "-%c, --%s%s%s", flags[k].short_name, flags[k].long_name,
                 flags[k].arg ? " " : "", flags[k].arg ? flags[k].arg : "");
        printf("  %-28s %s%s%s%s\n", left, flags[k].help, flags[k].default_value[0] ? " [default: " : "",
               flags[k].default_value, flags[k].default_value[0] ? "]" : "");
    }
}

static void die(const char* message) {
    fprintf(stderr, "prepare_text: %s\n", message);
    exit(1);
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

// reads a whole file into memory; exits with a message naming the file on failure
static unsigned char* read_whole_file(const char* what, const char* path, size_t* size) {
    char msg[1024];
    FILE* f = fopen(path, "rb");
    if (f == NULL) { snprintf(msg, sizeof(msg), "%s %s: cannot open (%s)", what, path, strerror(errno)); die(msg); }
    size_t cap = 1 << 20, n = 0, got;
    unsigned char* data = (unsigned char*)malloc(cap);
    while (data != NULL && (got = fread(data + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) { cap *= 2; unsigned char* bigger = (unsigned char*)realloc(data, cap); if (!bigger) free(data); data = bigger; }
    }
    if (data == NULL || ferror(f)) {
        snprintf(msg, sizeof(msg), "%s %s: %s", what, path, data == NULL ? "out of memory" : "read error");
        die(msg);
    }
    fclose(f);
    *size = n;
    return data;
}

// mkdir -p
static void make_dirs(const char* path) {
    char buf[1024], msg[4096];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char* p = buf + 1;; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
                snprintf(msg, sizeof(msg), "output directory %s: cannot create %s (%s)", path, buf, strerror(errno));
                die(msg);
            }
            *p = c;
            if (c == 0) break;
        }
    }
}

static void copy_file(const char* from, const char* to) {
    struct stat a, b;
    if (stat(from, &a) == 0 && stat(to, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino) return;
    size_t n;
    unsigned char* data = read_whole_file("tokenizer", from, &n);
    char tmp[1100], msg[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", to);
    FILE* f = fopen(tmp, "wb");
    int ok = f != NULL && fwrite(data, 1, n, f) == n;
    if (f != NULL && fclose(f) != 0) ok = 0;
    if (!ok || rename(tmp, to) != 0) {
        snprintf(msg, sizeof(msg), "tokenizer %s: cannot write (%s)", to, strerror(errno));
        remove(tmp);
        die(msg);
    }
    free(data);
}

// where val starts: see the comment at the top of this file
static size_t split_point(const unsigned char* text, size_t n, double val_fraction) {
    if (val_fraction <= 0) return n;
    size_t cut = (size_t)((1.0 - val_fraction) * (double)n);
    for (size_t i = cut; i < n; i++) if (i > 0 && text[i - 1] == '\n') return i;
    for (size_t i = cut; i > 0; i--) if (text[i - 1] == '\n') return i;
    return cut;
}

// end-of-text followed by the encoded text, into *ids (free it)
static size_t encode_document(const Tokenizer* t, const unsigned char* text, size_t n, uint32_t** ids) {
    char err[4096];
    uint32_t* body;
    size_t n_body;
    if (tokenizer_encode(t, text, n, &body, &n_body, err, sizeof(err)) != 0) die(err);
    *ids = (uint32_t*)malloc((n_body + 1) * sizeof(uint32_t));
    if (*ids == NULL) die("out of memory");
    (*ids)[0] = t->eot_token;
    if (n_body > 0) memcpy(*ids + 1, body, n_body * sizeof(uint32_t));
    free(body);
    return n_body + 1;
}

static void write_shard(const char* path, const uint32_t* ids, size_t n, const Tokenizer* t, int gzip) {
    char err[4096];
    if (shard_write(path, ids, n, (int)t->vocab_size, gzip, err, sizeof(err)) != 0) die(err);
    printf("wrote %s (%zu tokens, uint%d)\n", path, n, t->vocab_size <= 65536 ? 16 : 32);
}

int main(int argc, char** argv) {
    const char* input = NULL; const char* outdir = NULL; const char* name = NULL;
    const char* tokenizer_path = NULL; const char* ids_path = NULL;
    long vocab_size = 4096;
    double val_fraction = 0.1;
    int gzip = 0;

    struct option options[N_FLAGS + 1];
    char short_options[3 * N_FLAGS + 1] = "";
    for (size_t k = 0; k < N_FLAGS; k++) {
        options[k] = (struct option){flags[k].long_name, flags[k].has_arg ? required_argument : no_argument, NULL,
                                     flags[k].short_name};
        char s[3] = {(char)flags[k].short_name, flags[k].has_arg ? ':' : 0, 0};
        strcat(short_options, s);
    }
    options[N_FLAGS] = (struct option){NULL, 0, NULL, 0};
    char msg[4096];
    int c;
    while ((c = getopt_long(argc, argv, short_options, options, NULL)) != -1) {
        char* end;
        switch (c) {
        case 'i': input = optarg; break;
        case 'o': outdir = optarg; break;
        case 'n': name = optarg; break;
        case 't': tokenizer_path = optarg; break;
        case 'I': ids_path = optarg; break;
        case 'z': gzip = 1; break;
        case 'v':
            errno = 0;
            vocab_size = strtol(optarg, &end, 10);
            if (errno || *end || end == optarg || vocab_size < 257 || vocab_size > (1L << 30)) {
                snprintf(msg, sizeof(msg), "-v %s: the vocabulary size must be an integer in [257, 2^30]", optarg);
                die(msg);
            }
            break;
        case 'f':
            val_fraction = strtod(optarg, &end);
            if (*end || end == optarg || !(val_fraction >= 0 && val_fraction < 1)) {
                snprintf(msg, sizeof(msg), "-f %s: the val fraction must be a number in [0, 1)", optarg);
                die(msg);
            }
            break;
        case 'h': print_help(); return 0;
        default: fprintf(stderr, "(see data/prepare_text --help)\n"); return 1;
        }
    }
    if (optind < argc) { snprintf(msg, sizeof(msg), "unexpected argument '%s' (see --help)", argv[optind]); die(msg); }
    if (input == NULL) die("no input: give a text file with -i (see --help)");

    size_t n_text;
    unsigned char* text = read_whole_file("input", input, &n_text);
    char err[4096];
    Tokenizer t;

    if (ids_path != NULL) {  // encode-only mode for the GPT-2 check
        if (tokenizer_path == NULL) die("--ids needs a tokenizer file (-t)");
        if (tokenizer_load(&t, tokenizer_path, err, sizeof(err)) != 0) die(err);
        double t0 = now_seconds();
        uint32_t* ids; size_t n_ids;
        if (tokenizer_encode(&t, text, n_text, &ids, &n_ids, err, sizeof(err)) != 0) die(err);
        double t1 = now_seconds();
        FILE* f = fopen(ids_path, "w");
        if (f == NULL) { snprintf(msg, sizeof(msg), "ids %s: cannot create (%s)", ids_path, strerror(errno)); die(msg); }
        for (size_t i = 0; i < n_ids; i++) fprintf(f, "%u\n", ids[i]);
        if (fclose(f) != 0) { snprintf(msg, sizeof(msg), "ids %s: write failed", ids_path); die(msg); }
        printf("encoded %s: %zu bytes -> %zu tokens (%.4f tokens/byte) in %.2fs\n", input, n_text, n_ids,
               n_text ? (double)n_ids / n_text : 0.0, t1 - t0);
        free(ids); free(text); tokenizer_free(&t);
        return 0;
    }
    if (n_text == 0) { snprintf(msg, sizeof(msg), "input %s: the file is empty", input); die(msg); }

    // names: <name> defaults to the input's base name without extension
    char name_buf[256], outdir_buf[300], path[1100];
    if (name == NULL) {
        const char* base = strrchr(input, '/');
        snprintf(name_buf, sizeof(name_buf), "%s", base ? base + 1 : input);
        char* dot = strrchr(name_buf, '.');
        if (dot != NULL && dot != name_buf) *dot = 0;
        name = name_buf;
    }
    if (outdir == NULL) { snprintf(outdir_buf, sizeof(outdir_buf), "data/%s", name); outdir = outdir_buf; }
    make_dirs(outdir);

    size_t cut = split_point(text, n_text, val_fraction);
    printf("input %s: %zu bytes; train = bytes [0, %zu), val = bytes [%zu, %zu)\n", input, n_text, cut, cut, n_text);

    snprintf(path, sizeof(path), "%s/tokenizer.bin", outdir);
    if (tokenizer_path != NULL) {
        if (tokenizer_load(&t, tokenizer_path, err, sizeof(err)) != 0) die(err);
        copy_file(tokenizer_path, path);
        printf("tokenizer %s: V = %u, %u merges%s; copied to %s\n", tokenizer_path, t.vocab_size, t.n_merges,
               t.n_merges ? "" : " (encoding without merges is approximate)", path);
    } else {
        if (cut == 0) die("the train part is empty: use a smaller val fraction (-f)");
        double t0 = now_seconds();
        if (tokenizer_train(&t, text, cut, (uint32_t)vocab_size, err, sizeof(err)) != 0) die(err);
        double t1 = now_seconds();
        printf("bpe: trained V = %ld (%u merges) on %zu bytes in %.3fs\n", vocab_size, t.n_merges, cut, t1 - t0);
        if (tokenizer_write(&t, path, err, sizeof(err)) != 0) die(err);
        printf("wrote %s\n", path);
    }

    const char* ext = gzip ? ".bin.gz" : ".bin";
    double t0 = now_seconds();
    uint32_t* ids;
    size_t n_train = encode_document(&t, text, cut, &ids);
    snprintf(path, sizeof(path), "%s/%s_train%s", outdir, name, ext);
    write_shard(path, ids, n_train, &t, gzip);
    free(ids);
    size_t n_val = 0;
    if (cut < n_text) {
        n_val = encode_document(&t, text + cut, n_text - cut, &ids);
        snprintf(path, sizeof(path), "%s/%s_val%s", outdir, name, ext);
        write_shard(path, ids, n_val, &t, gzip);
        free(ids);
    } else {
        printf("no val shard (val fraction 0)\n");
    }
    double t1 = now_seconds();
    // counts exclude the end-of-text that starts each shard
    printf("tokens: train %zu (%.4f tokens/byte)", n_train - 1, cut ? (double)(n_train - 1) / cut : 0.0);
    if (n_val > 0) printf(", val %zu (%.4f tokens/byte)", n_val - 1, (double)(n_val - 1) / (n_text - cut));
    printf("; encoded in %.2fs\n", t1 - t0);
    free(text);
    tokenizer_free(&t);
    return 0;
}
