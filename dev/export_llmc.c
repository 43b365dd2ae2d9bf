/*
export_llmc — write a dense (E=1) moe.c checkpoint as an llm.c GPT-2 model file (float32,
version 3), so a model trained here loads in llm.c's train_gpt2.c (which reads it as
gpt2_124M.bin does). Format: docs/formats.md, "llm.c model file"; code: upcycle.h.

    make dev/export_llmc
    dev/export_llmc out/model_00000400.bin gpt2_ours.bin

The model must be dense with llm.c's MLP width (E=1, H=4C). maxT is the checkpoint's (often
smaller than llm.c's 1024): llm.c then runs at T <= that maxT. Optimizer state is not exported.
*/
#include "../upcycle.h"

int main(int argc, char** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s CHECKPOINT.bin OUT_LLMC.bin\n", argv[0]);
        return EXIT_FAILURE;
    }
    char err[1024];
    MoEModel m;
    memset(&m, 0, sizeof(m));
    if (moe_load_checkpoint(&m, argv[1], NULL, NULL, err, sizeof(err)) != 0) die("%s", err);
    if (llmc_save_model(&m, argv[2], err, sizeof(err)) != 0) die("%s", err);
    const MoEConfig* c = &m.config;
    printf("wrote %s: llm.c GPT-2 float32 (version 3), maxT=%d V=%d Vp=%d L=%d NH=%d C=%d\n", argv[2],
           c->max_seq_len, c->vocab_size, c->padded_vocab_size, c->num_layers, c->num_heads, c->channels);
    moe_free(&m);
    return 0;
}
