// libFuzzer harness: shard_load on arbitrary bytes, as a .bin and as a .bin.gz (a gzip stream:
// arbitrary bytes test the zlib path's errors; the seed corpus holds real gzip shards).
#include "../../moe.h"
#include "../../dataloader.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    char err[1024];
    const char* suffixes[2] = {".bin", ".bin.gz"};
    for (int i = 0; i < 2; i++) {
        const char* path = fuzz_write_temp(data, size, suffixes[i]);
        Shard s;
        memset(&s, 0, sizeof(s));
        if (shard_load(path, 50304, &s, err, sizeof(err)) == 0) shard_free(&s);
        remove(path);
    }
    return 0;
}
