// libFuzzer harness: the multiple-choice readers on arbitrary bytes: llm.c's .bin and the JSONL
// (tokenized with a byte-level tokenizer built here).
#include "../../moe.h"
#include "../../tokenizer.h"
#include "../../mc.h"
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    char err[1024];
    MCSet set;
    memset(&set, 0, sizeof(set));
    if (mc_parse_bin(data, size, "fuzz.bin", &set, err, sizeof(err)) == 0) mc_free(&set);
    memset(&set, 0, sizeof(set));
    if (mc_parse_jsonl(data, size, "fuzz.jsonl", byte_tokenizer(), &set, err, sizeof(err)) == 0) mc_free(&set);
    return 0;
}
