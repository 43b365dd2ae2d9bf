/*
prepare_text -- text files -> a BPE tokenizer file + train/val token shards, in llm.c's formats.

    data/prepare_text -i data/tinyshakespeare/input.txt -o data/tinyshakespeare -n tiny_shakespeare

writes <outdir>/tokenizer.bin, <outdir>/<name>_train.bin and <outdir>/<name>_val.bin.

Several inputs (-i repeated, or -i DIR for every file in DIR, sorted) make a multi-domain corpus:
each file is a domain named after the file (its base name without extension). Each file is split
on its own (its last F is val, cut at a line start as below), so every domain is in val. Each part
is cut into documents of about --doc-bytes bytes (at a line end); the documents of all domains are
interleaved in a seeded random order (--seed), each starting with end-of-text. Beside each shard
goes <shard>.domains: one uint8 domain id per token (end-of-text takes its document's domain),
after a 16-byte header (dataloader.h); <outdir>/domains.txt names the domains in id order.

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
#include <dirent.h>
#include "../tokenizer.h"
#include "../dataloader.h"

// ----------------------------------------------------------------------------
// every flag, its default and its help, in one table

typedef struct {
    const char* long_name; int short_name; int has_arg; const char* arg; const char* default_value; const char* help;
} Flag;

static const Flag flags[] = {
    {"input",        'i', 1, "FILE", "(required)", "text file (or a directory of them); repeat for several: each file is a domain"},
    {"outdir",       'o', 1, "DIR",  "data/<name>", "output directory, created if missing"},
    {"name",         'n', 1, "NAME", "input's base name", "shards are <outdir>/<name>_train.bin and <name>_val.bin (several inputs: the directory's name, else multidomain)"},
    {"vocab-size",   'v', 1, "V",    "4096", "vocabulary size of the BPE to train (>= 257: bytes, merges, end-of-text)"},
    {"val-fraction", 'f', 1, "F",    "0.1",  "the last F of the text (by bytes, cut at a line start) is val; 0 = no val"},
    {"tokenizer",    't', 1, "FILE", "(train one)", "encode with this llm.c tokenizer file instead of training a BPE"},
    {"gzip",         'z', 0, NULL,   "off",  "write gzip-compressed shards (.bin.gz)"},
    {"ids",          'I', 1, "FILE", "(off)", "only encode the whole input with -t and write the ids, one per line"},
    {"doc-bytes",    'D', 1, "N",    "2048", "several inputs: documents of about N bytes (cut at a line end), interleaved across domains"},
    {"seed",         'S', 1, "N",    "1",    "several inputs: seed of the documents' interleaving order"},
    {"help",         'h', 0, NULL,   "",     "print this help"},
};
#define N_FLAGS (sizeof(flags) / sizeof(flags[0]))

static void print_help(void) {
    printf("usage: data/prepare_text -i TEXT [-i TEXT ...] [options]\n"
           "text -> <outdir>/tokenizer.bin + <outdir>/<name>_train.bin + <outdir>/<name>_val.bin (llm.c formats);\n"
           "several inputs also write <shard>.domains (a domain id per token) and <outdir>/domains.txt\n\n");
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

// ----------------------------------------------------------------------------
// several inputs: a multi-domain corpus (see the top of this file)

#define MAX_INPUTS 64
#define METRICS_DOMAINS_LIMIT 16  // metrics.h holds at most this many domains

typedef struct { int domain; const unsigned char* text; size_t n; } Document;

static int compare_cstr(const void* a, const void* b) { return strcmp(*(char* const*)a, *(char* const*)b); }

// adds path to inputs; a directory adds its regular files (not hidden ones), sorted by name
static void add_input(const char* path, char** inputs, int* n, int* saw_directory) {
    char msg[4096];
    struct stat st;
    if (stat(path, &st) != 0) { snprintf(msg, sizeof(msg), "input %s: cannot open (%s)", path, strerror(errno)); die(msg); }
    if (!S_ISDIR(st.st_mode)) {
        if (*n == MAX_INPUTS) { snprintf(msg, sizeof(msg), "more than %d inputs", MAX_INPUTS); die(msg); }
        inputs[(*n)++] = strdup(path);
        return;
    }
    *saw_directory = 1;
    DIR* dir = opendir(path);
    if (dir == NULL) { snprintf(msg, sizeof(msg), "input directory %s: cannot open (%s)", path, strerror(errno)); die(msg); }
    int first = *n;
    struct dirent* e;
    while ((e = readdir(dir)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char full[2048];
        snprintf(full, sizeof(full), "%s/%s", path, e->d_name);
        if (stat(full, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (*n == MAX_INPUTS) { snprintf(msg, sizeof(msg), "input directory %s: more than %d files", path, MAX_INPUTS); die(msg); }
        inputs[(*n)++] = strdup(full);
    }
    closedir(dir);
    if (*n == first) { snprintf(msg, sizeof(msg), "input directory %s: no files in it", path); die(msg); }
    qsort(inputs + first, (size_t)(*n - first), sizeof(char*), compare_cstr);
}

// a file's domain name: its base name up to the first '.'
static void domain_name(const char* path, char* out, size_t n) {
    const char* base = strrchr(path, '/');
    snprintf(out, n, "%s", base ? base + 1 : path);
    char* dot = strchr(out, '.');
    if (dot != NULL && dot != out) *dot = 0;
    for (char* c = out; *c; c++)   // config.txt joins the names with commas; domains.txt is one per line
        if (*c == ',' || *c == '\n' || *c == '\r') *c = '_';
}

// cuts text[0, n) into documents of about doc_bytes, each ending at a line end (or at n)
static void cut_documents(int domain, const unsigned char* text, size_t n, size_t doc_bytes, Document** docs,
                          size_t* count, size_t* cap) {
    size_t start = 0;
    while (start < n) {
        size_t end = start + doc_bytes < n ? start + doc_bytes : n;
        while (end < n && text[end - 1] != '\n') end++;
        if (*count == *cap) {
            *cap = *cap ? 2 * *cap : 1024;
            *docs = (Document*)realloc(*docs, *cap * sizeof(Document));
            if (*docs == NULL) die("out of memory");
        }
        (*docs)[(*count)++] = (Document){domain, text + start, end - start};
        start = end;
    }
}

static uint64_t splitmix64(uint64_t* state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// encodes the documents in a seeded random order, each as end-of-text + its tokens, with a domain
// label per token; writes the shard and its label file; returns the tokens per domain in counts
static void write_domain_shard(const char* path, Document* docs, size_t count, int num_domains, uint64_t seed,
                               const Tokenizer* t, int gzip, size_t* counts) {
    uint64_t state = seed;
    for (size_t i = count; i > 1; i--) {  // Fisher-Yates
        size_t j = (size_t)(splitmix64(&state) % i);
        Document tmp = docs[i - 1]; docs[i - 1] = docs[j]; docs[j] = tmp;
    }
    size_t n = 0, cap = 1 << 20;
    uint32_t* ids = (uint32_t*)malloc(cap * sizeof(uint32_t));
    uint8_t* labels = (uint8_t*)malloc(cap);
    if (ids == NULL || labels == NULL) die("out of memory");
    for (size_t i = 0; i < count; i++) {
        uint32_t* doc_ids;
        size_t m = encode_document(t, docs[i].text, docs[i].n, &doc_ids);
        while (n + m > cap) {
            cap *= 2;
            ids = (uint32_t*)realloc(ids, cap * sizeof(uint32_t));
            labels = (uint8_t*)realloc(labels, cap);
            if (ids == NULL || labels == NULL) die("out of memory");
        }
        memcpy(ids + n, doc_ids, m * sizeof(uint32_t));
        memset(labels + n, docs[i].domain, m);
        counts[docs[i].domain] += m;
        n += m;
        free(doc_ids);
    }
    write_shard(path, ids, n, t, gzip);
    char label_path[1200], err[4096];
    domain_label_path(path, label_path, sizeof(label_path));
    if (domain_labels_write(label_path, labels, n, num_domains, err, sizeof(err)) != 0) die(err);
    printf("wrote %s (%zu labels, %d domains)\n", label_path, n, num_domains);
    free(ids);
    free(labels);
}

static void prepare_domains(char** inputs, int num_inputs, const char* outdir, const char* name, long vocab_size,
                            double val_fraction, const char* tokenizer_path, int gzip, size_t doc_bytes, uint64_t seed) {
    char msg[8192], err[4096], path[1100];
    char names[MAX_INPUTS][DOMAIN_NAME_MAX];
    unsigned char* texts[MAX_INPUTS];
    size_t sizes[MAX_INPUTS], cuts[MAX_INPUTS], train_bytes = 0;
    if (num_inputs > METRICS_DOMAINS_LIMIT) {
        snprintf(msg, sizeof(msg), "%d inputs: at most %d domains (the MoE metrics hold that many)", num_inputs,
                 METRICS_DOMAINS_LIMIT);
        die(msg);
    }
    for (int d = 0; d < num_inputs; d++) {
        domain_name(inputs[d], names[d], DOMAIN_NAME_MAX);
        for (int e = 0; e < d; e++)
            if (strcmp(names[d], names[e]) == 0) {
                snprintf(msg, sizeof(msg), "inputs %s and %s give the same domain name '%s': rename one", inputs[e],
                         inputs[d], names[d]);
                die(msg);
            }
        texts[d] = read_whole_file("input", inputs[d], &sizes[d]);
        if (sizes[d] == 0) { snprintf(msg, sizeof(msg), "input %s: the file is empty", inputs[d]); die(msg); }
        cuts[d] = split_point(texts[d], sizes[d], val_fraction);
        if (val_fraction > 0 && cuts[d] == sizes[d]) {
            snprintf(msg, sizeof(msg), "input %s: too small for a val part (-f %g)", inputs[d], val_fraction);
            die(msg);
        }
        train_bytes += cuts[d];
        printf("domain %d '%s': %s, %zu bytes; train [0, %zu), val [%zu, %zu)\n", d, names[d], inputs[d], sizes[d],
               cuts[d], cuts[d], sizes[d]);
    }
    make_dirs(outdir);
    Tokenizer t;
    snprintf(path, sizeof(path), "%s/tokenizer.bin", outdir);
    if (tokenizer_path != NULL) {
        if (tokenizer_load(&t, tokenizer_path, err, sizeof(err)) != 0) die(err);
        copy_file(tokenizer_path, path);
        printf("tokenizer %s: V = %u; copied to %s\n", tokenizer_path, t.vocab_size, path);
    } else {  // one BPE on the train parts of every domain, concatenated
        unsigned char* all = (unsigned char*)malloc(train_bytes > 0 ? train_bytes : 1);
        if (all == NULL) die("out of memory");
        size_t at = 0;
        for (int d = 0; d < num_inputs; d++) { memcpy(all + at, texts[d], cuts[d]); at += cuts[d]; }
        double t0 = now_seconds();
        if (tokenizer_train(&t, all, train_bytes, (uint32_t)vocab_size, err, sizeof(err)) != 0) die(err);
        printf("bpe: trained V = %ld (%u merges) on %zu bytes of %d domains in %.3fs\n", vocab_size, t.n_merges,
               train_bytes, num_inputs, now_seconds() - t0);
        free(all);
        if (tokenizer_write(&t, path, err, sizeof(err)) != 0) die(err);
        printf("wrote %s\n", path);
    }
    snprintf(path, sizeof(path), "%s/domains.txt", outdir);
    FILE* f = fopen(path, "w");
    if (f == NULL) { snprintf(msg, sizeof(msg), "%s: cannot create (%s)", path, strerror(errno)); die(msg); }
    for (int d = 0; d < num_inputs; d++) fprintf(f, "%s\n", names[d]);
    if (fclose(f) != 0) { snprintf(msg, sizeof(msg), "%s: write failed", path); die(msg); }
    printf("wrote %s\n", path);

    const char* ext = gzip ? ".bin.gz" : ".bin";
    for (int split = 0; split < 2; split++) {
        if (split == 1 && val_fraction <= 0) break;
        Document* docs = NULL;
        size_t count = 0, cap = 0, counts[MAX_INPUTS] = {0};
        for (int d = 0; d < num_inputs; d++) {
            size_t a = split == 0 ? 0 : cuts[d], b = split == 0 ? cuts[d] : sizes[d];
            cut_documents(d, texts[d] + a, b - a, doc_bytes, &docs, &count, &cap);
        }
        snprintf(path, sizeof(path), "%s/%s_%s%s", outdir, name, split == 0 ? "train" : "val", ext);
        write_domain_shard(path, docs, count, num_inputs, seed * 2 + (uint64_t)split, &t, gzip, counts);
        printf("  %s: %zu documents; tokens per domain:", split == 0 ? "train" : "val", count);
        for (int d = 0; d < num_inputs; d++) printf(" %s %zu", names[d], counts[d]);
        printf("\n");
        free(docs);
    }
    for (int d = 0; d < num_inputs; d++) free(texts[d]);
    tokenizer_free(&t);
}

int main(int argc, char** argv) {
    const char* input = NULL; const char* outdir = NULL; const char* name = NULL;
    char* inputs[MAX_INPUTS];
    int num_inputs = 0, saw_directory = 0;
    long doc_bytes = 2048;
    uint64_t seed = 1;
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
        case 'i': add_input(optarg, inputs, &num_inputs, &saw_directory); input = optarg; break;
        case 'D':
            errno = 0;
            doc_bytes = strtol(optarg, &end, 10);
            if (errno || *end || end == optarg || doc_bytes < 1 || doc_bytes > (1L << 30)) {
                snprintf(msg, sizeof(msg), "--doc-bytes %s: give a positive integer", optarg);
                die(msg);
            }
            break;
        case 'S':
            errno = 0;
            seed = strtoull(optarg, &end, 10);
            if (errno || *end || end == optarg) {
                snprintf(msg, sizeof(msg), "--seed %s: give a non-negative integer", optarg);
                die(msg);
            }
            break;
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
    if (num_inputs > 1 || saw_directory) {
        if (ids_path != NULL) die("--ids takes one input file");
        if (num_inputs < 2) die("a multi-domain corpus needs at least two input files (one per domain)");
        char dir_name[256], outdir_buf[300];
        if (name == NULL) {
            if (saw_directory) {
                char trimmed[2048];
                snprintf(trimmed, sizeof(trimmed), "%s", input);
                size_t len = strlen(trimmed);
                while (len > 1 && trimmed[len - 1] == '/') trimmed[--len] = 0;
                const char* base = strrchr(trimmed, '/');
                snprintf(dir_name, sizeof(dir_name), "%s", base ? base + 1 : trimmed);
            } else {
                snprintf(dir_name, sizeof(dir_name), "multidomain");
            }
            name = dir_name;
        }
        if (outdir == NULL) { snprintf(outdir_buf, sizeof(outdir_buf), "data/%s", name); outdir = outdir_buf; }
        prepare_domains(inputs, num_inputs, outdir, name, vocab_size, val_fraction, tokenizer_path, gzip,
                        (size_t)doc_bytes, seed);
        for (int i = 0; i < num_inputs; i++) free(inputs[i]);
        return 0;
    }
    for (int i = 0; i < num_inputs; i++) free(inputs[i]);

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
