// Truncation and bit-flip campaign over every parser: each file of dev/fuzz/corpus/KIND/ is cut at
// many offsets and has single bits flipped at many positions; each variant goes through its
// parser. Zero crashes (built with ASan/UBSan by dev/ci/fuzz.sh), zero hangs (alarm), and zero
// bit-flipped or truncated checkpoints accepted (their crc32 and exact size must refuse them all).
//   ./corrupt dev/fuzz/corpus        prints the counts and "N passed, N failed"
#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include "../../moe.h"
#include "../../dataloader.h"
#include "../../tokenizer.h"
#include "../../mc.h"
#include "fuzz_common.h"

static void on_alarm(int sig) { (void)sig; fprintf(stderr, "hang: a parser ran for over 20 s\n"); _exit(2); }

// 0 if the parser of `kind` refused the bytes, 1 if it accepted them
static int parse(const char* kind, const char* name, const uint8_t* data, size_t size) {
    char err[1024];
    int ok = 0;
    if (strcmp(kind, "checkpoint") == 0) {
        MoEModel m;
        memset(&m, 0, sizeof(m));
        ok = moe_load_checkpoint(&m, fuzz_write_temp(data, size, ".bin"), NULL, NULL, err, sizeof(err)) == 0;
        if (ok) moe_free(&m);
    } else if (strcmp(kind, "shard") == 0) {
        Shard s;
        memset(&s, 0, sizeof(s));
        const char* suffix = strstr(name, ".gz") ? ".bin.gz" : ".bin";
        ok = shard_load(fuzz_write_temp(data, size, suffix), 50304, &s, err, sizeof(err)) == 0;
        if (ok) shard_free(&s);
    } else if (strcmp(kind, "tokenizer") == 0) {
        Tokenizer t;
        memset(&t, 0, sizeof(t));
        ok = tokenizer_parse(&t, data, size, name, err, sizeof(err)) == 0;
        if (ok) tokenizer_free(&t);
    } else if (strcmp(kind, "mc") == 0) {
        MCSet set;
        memset(&set, 0, sizeof(set));
        if (strstr(name, ".jsonl")) ok = mc_parse_jsonl(data, size, name, byte_tokenizer(), &set, err, sizeof(err)) == 0;
        else ok = mc_parse_bin(data, size, name, &set, err, sizeof(err)) == 0;
        if (ok) mc_free(&set);
    } else if (strcmp(kind, "domains") == 0) {  // label files X.domains, and domains.txt name lists
        if (strstr(name, ".txt")) {
            static char names[DOMAIN_MAX][DOMAIN_NAME_MAX];
            ok = 0;  // domains.txt sits beside the shards: write it into a directory of its own
            char dir[256], file[300];
            snprintf(dir, sizeof(dir), "/tmp/moe_corrupt_names_%d", (int)getpid());
            mkdir(dir, 0700);
            snprintf(file, sizeof(file), "%s/domains.txt", dir);
            FILE* f = fopen(file, "wb");
            if (f != NULL) {
                if (size > 0) fwrite(data, 1, size, f);
                fclose(f);
                snprintf(file, sizeof(file), "%s/x.bin", dir);
                ok = domain_names_load(file, 1 + (size > 0 ? data[0] % DOMAIN_MAX : 0), names, err, sizeof(err)) == 0;
                snprintf(file, sizeof(file), "%s/domains.txt", dir);
                remove(file);
            }
            rmdir(dir);
        } else {
            uint8_t* labels = NULL;
            int D = 0;
            ok = domain_labels_load(fuzz_write_temp(data, size, ".domains"),
                                    size >= DOMAIN_HEADER_BYTES ? size - DOMAIN_HEADER_BYTES : 0, &labels, &D, err, sizeof(err)) == 0;
            free(labels);
        }
    }
    return ok;
}

int main(int argc, char** argv) {
    const char* root = argc > 1 ? argv[1] : "dev/fuzz/corpus";
    const char* kinds[] = {"checkpoint", "shard", "tokenizer", "mc", "domains"};
    signal(SIGALRM, on_alarm);
    int failed = 0, passed = 0;
    for (int k = 0; k < 5; k++) {
        char dirpath[512];
        snprintf(dirpath, sizeof(dirpath), "%s/%s", root, kinds[k]);
        DIR* d = opendir(dirpath);
        if (d == NULL) { printf("FAIL no corpus %s\n", dirpath); failed++; continue; }
        long cases = 0, accepted_bad = 0, flips = 0, cuts = 0;
        struct dirent* e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.') continue;
            char path[1024];
            snprintf(path, sizeof(path), "%s/%s", dirpath, e->d_name);
            unsigned char* data;
            size_t size;
            char err[512];
            if (eval_read_file(path, &data, &size, err, sizeof(err)) != 0) { printf("FAIL %s\n", err); failed++; continue; }
            int original_ok = parse(kinds[k], e->d_name, data, size);
            unsigned char* copy = (unsigned char*)malloc(size + 1);
            size_t step = size > 400 ? size / 400 : 1;  // ~400 cuts and ~400 flipped bytes a file
            for (size_t cut = 0; cut < size; cut += step) {
                alarm(20);
                int ok = parse(kinds[k], e->d_name, data, cut);
                cases++; cuts++;
                if (ok && strcmp(kinds[k], "checkpoint") == 0) accepted_bad++;
            }
            for (size_t pos = 0; pos < size; pos += step) {
                for (int bit = 0; bit < 8; bit += 3) {
                    memcpy(copy, data, size);
                    copy[pos] ^= (unsigned char)(1u << bit);
                    alarm(20);
                    int ok = parse(kinds[k], e->d_name, copy, size);
                    cases++; flips++;
                    if (ok && strcmp(kinds[k], "checkpoint") == 0) accepted_bad++;
                }
            }
            alarm(0);
            free(copy);
            free(data);
            if (!original_ok && strncmp(e->d_name, "bad_", 4) != 0) { printf("FAIL %s: the uncorrupted seed file is refused\n", path); failed++; }
        }
        closedir(d);
        printf("%s %s: %ld corrupted variants (%ld truncations, %ld bit flips), no crash or hang%s\n",
               accepted_bad ? "FAIL" : "PASS", kinds[k], cases, cuts, flips,
               strcmp(kinds[k], "checkpoint") == 0 ? (accepted_bad ? ", but some checkpoints were ACCEPTED" :
                                                       ", every corrupted checkpoint refused") : "");
        if (accepted_bad) failed++; else passed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
