// Shared by the fuzz harnesses: the loaders under test read files, so each input is written to a
// per-process temp file first (in /dev/shm when it exists, else /tmp).
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>
static const char* fuzz_write_temp(const uint8_t* data, size_t size, const char* suffix) {
    static char path[256];
    const char* dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(path, sizeof(path), "%s/moe_fuzz_%d%s", dir, (int)getpid(), suffix);
    FILE* f = fopen(path, "wb");
    if (f == NULL) { perror(path); abort(); }
    if (size > 0 && fwrite(data, 1, size, f) != size) { perror(path); abort(); }
    fclose(f);
    return path;
}

#ifdef TOKENIZER_H
// a byte-level tokenizer (256 single bytes and end-of-text, no merges) for the JSONL reader
static Tokenizer* byte_tokenizer(void) {  // 256 single bytes and end-of-text, no merges
    static Tokenizer t;
    static int ready = 0;
    if (ready) return &t;
    size_t size = 1024 + 256 * 2 + 1 + 13;
    unsigned char* buf = (unsigned char*)calloc(1, size);
    uint32_t header[256] = {20240328, 2, 257, 256, 0};
    memcpy(buf, header, sizeof(header));
    unsigned char* p = buf + 1024;
    for (int b = 0; b < 256; b++) { *p++ = 1; *p++ = (unsigned char)b; }
    *p++ = 13;
    memcpy(p, "<|endoftext|>", 13);
    char err[512];
    if (tokenizer_parse(&t, buf, size, "bytes", err, sizeof(err)) != 0) { fprintf(stderr, "%s\n", err); abort(); }
    free(buf);
    ready = 1;
    return &t;
}

#endif
