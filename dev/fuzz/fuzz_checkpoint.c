// libFuzzer harness: moe_load_checkpoint on arbitrary bytes, as written and with the crc32 fixed
// (so the fuzzer also reaches the header, size and settings checks behind the crc).
// Build and run: sh dev/ci/fuzz.sh (clang -fsanitize=fuzzer,address,undefined).
#include "../../moe.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    char err[1024];
    for (int fix_crc = 0; fix_crc <= 1; fix_crc++) {
        if (fix_crc && size < 1028) break;
        unsigned char* copy = (unsigned char*)malloc(size ? size : 1);
        memcpy(copy, data, size);
        if (fix_crc) {
            uint32_t crc = (uint32_t)crc32(0L, copy, (uInt)(size - 4));
            memcpy(copy + size - 4, &crc, 4);
        }
        const char* path = fuzz_write_temp(copy, size, ".bin");
        free(copy);
        MoEModel m;
        memset(&m, 0, sizeof(m));
        CheckpointInfo info;
        TrainState ts;
        if (moe_load_checkpoint(&m, path, &info, &ts, err, sizeof(err)) == 0) moe_free(&m);
    }
    return 0;
}
