/*
make_cloze -- a multiple-choice cloze benchmark from held-out data, for `eval_moe --mc`.

    data/make_cloze -i held_out.txt -o cloze.jsonl
    data/make_cloze --shard data/tinyshakespeare/tiny_shakespeare_val.bin -o data/tinyshakespeare/cloze.jsonl
    data/make_cloze --synthetic -o data/synthetic_cloze.bin

Text (-i FILE, or --shard FILE decoded with --tokenizer, default tokenizer.bin beside the shard; an
end-of-text token separates documents): the text is cut into lines; a line of only spaces, tabs
and '\r' is blank and belongs to the separator between the lines around it. An example is
-c consecutive non-blank lines of one document as the context (the exact text from the first
line's start to the last line's end, blank lines inside included), the next non-blank line as the
true ending, and 3 distractors: non-blank lines drawn uniformly from the whole held-out text,
outside the example's own lines and different in text from the true ending and from each other.
With --split-line the true line is cut at the word boundary nearest its middle (lines of four or
more words only): its first half joins the context and the ending is its second half, against the
second halves of three other lines; a small model that knows the corpus's phrasing but not its
plot can do that, where whole lines mostly test the plot. "sep" is the exact text between the
context and the true ending (e.g. "\n", "\n\n" before a new speaker, or " " with --split-line),
so that encode(ctx) + encode(sep + ending) tokenizes the true ending as it was in the running
text. Contexts are chosen without repetition at random positions; the label position
is random. JSONL line: {"ind": i, "ctx": ..., "sep": ..., "endings": [...], "label": k, "line": L}
with L the 1-based line number of the true ending in its document's text.

Synthetic (--synthetic): the built-in corpus's val split, generated from --seed exactly as
train_moe does (dataloader.h's synthetic_corpus_generate; --synthetic-tokens as train_moe's, the
val split being 1/16 of it). An example is --context-tokens consecutive tokens of one document
(from a random offset; a document starts with end-of-text), the true ending its next
--ending-tokens tokens, and each distractor that many tokens from a random position (after the
end-of-text) of a random document of another domain; with 4 domains and 4 endings, one distractor
per other domain. The synthetic corpus has no text, so this writes llm.c's hellaswag .bin format.

All randomness comes from --seed through one stream (moe.h's derive_seed(seed, 100)), so the same
flags give the same file. Build: gcc -O2 -fopenmp data/make_cloze.c -o data/make_cloze -lm -lz
(the builders are in data/cloze.h; the multiple-choice file writer in mc.h).
*/
#include "cloze.h"
#include "../flags.h"

// ----------------------------------------------------------------------------
// the flags: one table, with defaults and help

typedef enum {
    CF_INPUT, CF_SHARD, CF_TOKENIZER, CF_SYNTHETIC, CF_OUTPUT, CF_COUNT, CF_CONTEXT_LINES, CF_ENDINGS, CF_SEED,
    CF_CONTEXT_TOKENS, CF_ENDING_TOKENS, CF_SYNTH_TOKENS, CF_SPLIT_LINE, CF_SEQ_LEN, CF_HELP, CLOZE_NUM_FLAGS
} ClozeFlagId;

static const FlagSpec CLOZE_FLAGS[CLOZE_NUM_FLAGS] = {
    [CF_INPUT]          = {"input", 'i', 1, "", "held-out text file"},
    [CF_SHARD]          = {"shard", 's', 1, "", "or: a held-out token shard (e.g. *_val.bin), decoded with --tokenizer"},
    [CF_TOKENIZER]      = {"tokenizer", 0, 1, "", "tokenizer for --shard (default: tokenizer.bin beside the shard)"},
    [CF_SYNTHETIC]      = {"synthetic", 0, 0, "", "or: the built-in synthetic corpus's val split (writes the .bin format)"},
    [CF_OUTPUT]         = {"output", 'o', 1, "", "output file: JSONL for text, llm.c .bin for --synthetic (required)"},
    [CF_COUNT]          = {"count", 'n', 1, "1000", "number of examples (fewer if the data holds fewer)"},
    [CF_CONTEXT_LINES]  = {"context-lines", 'c', 1, "3", "text: non-blank lines of context"},
    [CF_ENDINGS]        = {"endings", 0, 1, "4", "endings per example (the true one and endings-1 distractors)"},
    [CF_SEED]           = {"seed", 0, 1, "1337", "seed of the example choice (and of the synthetic corpus)"},
    [CF_CONTEXT_TOKENS] = {"context-tokens", 0, 1, "32", "synthetic: context length in tokens"},
    [CF_ENDING_TOKENS]  = {"ending-tokens", 0, 1, "8", "synthetic: ending length in tokens"},
    [CF_SYNTH_TOKENS]   = {"synthetic-tokens", 0, 1, "4000000", "synthetic: train_moe's --synthetic-tokens (val split = 1/16)"},
    [CF_SPLIT_LINE]     = {"split-line", 0, 0, "", "text: the ending is the second half of the next line (its first half joins the context)"},
    [CF_SEQ_LEN]        = {"seq-len", 't', 1, "0", "text: the model's T: keep only examples that fit T (contexts cut by whole lines, counted); needs a tokenizer (0 = no check)"},
    [CF_HELP]           = {"help", 'h', 0, "", "print this help"},
};

// ----------------------------------------------------------------------------

int make_cloze_main(int argc, char** argv) {
    Flags flags;
    flags_parse(&flags, CLOZE_FLAGS, CLOZE_NUM_FLAGS, "data/make_cloze (-i TEXT | --shard SHARD | --synthetic) -o OUT [flags]", argc, argv);
    const char* out = flags.value[CF_OUTPUT];
    if (!out[0]) die("-o OUTPUT is required (see --help)");
    int sources = (flags.value[CF_INPUT][0] != 0) + (flags.value[CF_SHARD][0] != 0) + flags.given[CF_SYNTHETIC];
    if (sources != 1) die("give exactly one of -i TEXT, --shard SHARD, --synthetic (see --help)");
    int count = (int)flag_int(&flags, CF_COUNT, 1, 65535);
    int context_lines = (int)flag_int(&flags, CF_CONTEXT_LINES, 1, 1000);
    int n_endings = (int)flag_int(&flags, CF_ENDINGS, 2, 64);
    uint64_t seed = (uint64_t)flag_int(&flags, CF_SEED, 0, 0xFFFFFFFFL);
    char err[1024];
    int written;
    if (flags.given[CF_SYNTHETIC]) {
        int ctx_tokens = (int)flag_int(&flags, CF_CONTEXT_TOKENS, 1, 200);
        int end_tokens = (int)flag_int(&flags, CF_ENDING_TOKENS, 1, 200);
        size_t synth_tokens = (size_t)flag_int(&flags, CF_SYNTH_TOKENS, 10000, 1L << 31);
        written = cloze_synthetic(seed, synth_tokens, count, ctx_tokens, end_tokens, n_endings, out, err, sizeof(err));
        if (written < 0) die("%s", err);
        printf("make_cloze: %d examples (%d endings, %d context + %d ending tokens) from the synthetic val split "
               "(seed %llu) -> %s\n", written, n_endings, ctx_tokens, end_tokens, (unsigned long long)seed, out);
        return 0;
    }
    unsigned char* text = NULL;
    size_t* doc_start = NULL;
    int n_docs = 1;
    const char* source;
    if (flags.value[CF_INPUT][0]) {
        source = flags.value[CF_INPUT];
        size_t size;
        if (eval_read_file(source, &text, &size, err, sizeof(err)) != 0) die("%s", err);
        doc_start = (size_t*)mallocCheck(2 * sizeof(size_t));
        doc_start[0] = 0; doc_start[1] = size;
    }
    // the tokenizer: --shard always needs one; -i only with --seq-len
    ClozeFit fit = {NULL, (int)flag_int(&flags, CF_SEQ_LEN, 0, 1 << 20), 0, 0};
    Tokenizer tok;
    int have_tok = 0;
    if (flags.value[CF_SHARD][0] || fit.T > 0) {
        char tok_path[4096];
        if (flags.value[CF_TOKENIZER][0]) snprintf(tok_path, sizeof(tok_path), "%s", flags.value[CF_TOKENIZER]);
        else if (flags.value[CF_SHARD][0]) eval_beside(tok_path, sizeof(tok_path), flags.value[CF_SHARD], "tokenizer.bin");
        else die("--seq-len with -i TEXT needs --tokenizer (the model's), to count tokens");
        if (tokenizer_load(&tok, tok_path, err, sizeof(err)) != 0) die("%s", err);
        have_tok = 1;
        if (fit.T > 0) fit.tok = &tok;
    }
    if (flags.value[CF_SHARD][0]) {
        source = flags.value[CF_SHARD];
        if (cloze_decode_shard(source, &tok, &text, &doc_start, &n_docs, err, sizeof(err)) != 0) die("%s", err);
    }
    written = cloze_text(text, doc_start, n_docs, count, context_lines, n_endings, flags.given[CF_SPLIT_LINE], seed, &fit,
                         out, err, sizeof(err));
    if (written < 0) die("%s", err);
    printf("make_cloze: %d examples (%d endings, %d context lines) from %s (seed %llu) -> %s\n", written, n_endings,
           context_lines, source, (unsigned long long)seed, out);
    if (fit.T > 0)
        printf("make_cloze: fitted to T=%d: %d contexts shortened by whole lines, %d examples not written (too long even "
               "so)\n", fit.T, fit.shortened, fit.dropped);
    if (have_tok) tokenizer_free(&tok);
    free(text);
    free(doc_start);
    return 0;
}

int main(int argc, char** argv) { return make_cloze_main(argc, argv); }
