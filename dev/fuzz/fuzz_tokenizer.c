// libFuzzer harness: tokenizer_parse on arbitrary bytes; a file that loads is then used to
// encode and decode a short text.
#include "../../moe.h"
#include "../../tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    char err[1024];
    Tokenizer t;
    memset(&t, 0, sizeof(t));
    if (tokenizer_parse(&t, data, size, "fuzz", err, sizeof(err)) != 0) return 0;
    static const unsigned char text[] = "Hello, world! It's 2024: caf\xc3\xa9 \xff\xfe  tabs\tand\nnewlines.";
    uint32_t* ids = NULL;
    size_t n = 0;
    if (tokenizer_encode(&t, text, sizeof(text) - 1, &ids, &n, err, sizeof(err)) == 0) {
        unsigned char* out = NULL;
        size_t out_len = 0;
        if (tokenizer_decode(&t, ids, n, &out, &out_len, err, sizeof(err)) == 0) free(out);
        free(ids);
    }
    tokenizer_free(&t);
    return 0;
}
