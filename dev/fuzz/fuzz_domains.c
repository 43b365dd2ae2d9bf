// libFuzzer harness: the domain-label reader (X.domains beside a shard, dataloader.h) on arbitrary
// bytes, once expecting the token count its own header claims (so every check past the count is
// reached) and once expecting the count its size implies; and the same bytes as a domains.txt
// name list, read for D = 1 + (first byte mod 255) domains.
#include <sys/stat.h>
#include "../../moe.h"
#include "../../dataloader.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    char err[1024];
    const char* path = fuzz_write_temp(data, size, ".domains");
    size_t claimed = size >= 12 ? dl_read_u32le(data + 8) : 0;
    size_t implied = size >= DOMAIN_HEADER_BYTES ? size - DOMAIN_HEADER_BYTES : 0;
    size_t expect[2] = {claimed, implied};
    for (int i = 0; i < 2; i++) {
        uint8_t* labels = NULL;
        int D = 0;
        if (domain_labels_load(path, expect[i], &labels, &D, err, sizeof(err)) == 0) {
            if (D < 1 || D > DOMAIN_MAX) abort();  // an accepted file must say a valid D
            for (size_t t = 0; t < expect[i]; t++) if (labels[t] >= D) abort();  // and hold only ids < D
            free(labels);
        }
    }
    remove(path);
    // the same bytes as the names file domains.txt, in a directory of this process's own
    char dir[256], shard[300], names_file[300];
    snprintf(dir, sizeof(dir), "/tmp/moe_fuzz_names_%d", (int)getpid());
    mkdir(dir, 0700);
    snprintf(names_file, sizeof(names_file), "%s/domains.txt", dir);
    FILE* f = fopen(names_file, "wb");
    if (f == NULL) abort();
    if (size > 0) fwrite(data, 1, size, f);
    fclose(f);
    snprintf(shard, sizeof(shard), "%s/x_train.bin", dir);
    static char names[DOMAIN_MAX][DOMAIN_NAME_MAX];
    int D = 1 + (size > 0 ? data[0] % DOMAIN_MAX : 0);
    if (domain_names_load(shard, D, names, err, sizeof(err)) == 0)
        for (int d = 0; d < D; d++) if (memchr(names[d], 0, DOMAIN_NAME_MAX) == NULL) abort();  // every name ends
    remove(names_file);
    rmdir(dir);
    return 0;
}
