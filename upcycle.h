/*
upcycle.h — start a Mixture-of-Experts from a trained dense GPT-2 ("sparse upcycling",
Komatsuzaki et al. 2022, arXiv 2212.05055), and read and write llm.c's GPT-2 model file.

    dense model  --upcycle-->  MoE with E experts per layer, every expert = that layer's dense MLP

The dense model comes from this project's E=1 checkpoint or from llm.c's model file
(gpt2_124M.bin and friends). What the MoE receives, tensor by tensor, by name:
  - wte wpe ln1w ln1b qkvw qkvb attprojw attprojb ln2w ln2b lnfw lnfb: copied as they are;
  - fcw fcb fcprojw fcprojb (the MLP): copied into each of the E expert slots of the layer,
    optionally perturbed (--upcycle-noise, below);
  - everything else (routerw, and what a router adds: router_bias, xmoe_proj, xmoe_experts,
    xmoe_log_temp, any later one): left exactly as the model's own initialiser set it
    (moe_init_params, --router-init-std), so a new router needs nothing here.
Optimizer state starts fresh (zero), as for a new run.

Why the upcycled model starts where the dense one stopped: all E experts compute the same
function f, so under topk_softmax (weights renormalised over the K chosen experts, summing to 1)
the MoE layer outputs sum_k alpha_k f(x) = f(x): the same logits as the dense model, to float
round-off. Under softmax_topk the weights are the K largest of softmax over all E, which sum to
s(x) < 1, so the MoE layer outputs s(x) f(x): a down-scaled MLP (with a router initialised near
0, s ~ K/E). test_moe checks both relations.

--upcycle-noise S (default 0). Expert e of layer l gets W + S * rms(W) * n, n ~ N(0,1) drawn from
its own random stream (STREAM_UPCYCLE), for each of fcw fcb fcprojw fcprojb (rms over that layer's
dense tensor, so S is relative: 0.01 is a 1% perturbation; a zero tensor stays zero). The default
is 0 because the copies need no noise to diverge: the randomly initialised router sends different
tokens to different experts from the first step, so their gradients differ, and with 0 the exact
start (same logits as the dense model) holds. Noise is there to study symmetry breaking.

llm.c's model file (docs/formats.md, "llm.c model file"): int32 header[256] with [0] = 20240326,
[1] = 3 (float32 parameters) or 5 (bfloat16 parameters, llm.c's CUDA trainer), [2] maxT, [3] V,
[4] L, [5] NH, [6] C, [7] Vp; then the 16 GPT-2 tensors in the order of GPT2_TENSORS below, sizes as
an E=1 model with H = 4C, nothing after. Version 5 is converted to float32 on reading (bfloat16
is the top half of a float32, so the conversion is exact). Written files are always version 3.
*/
#ifndef UPCYCLE_H
#define UPCYCLE_H

#include "moe.h"

#define LLMC_MODEL_MAGIC 20240326
#define LLMC_VERSION_FP32 3
#define LLMC_VERSION_BF16 5
enum { STREAM_UPCYCLE = 16 };  // beside moe.h's STREAM_* streams, far from them

// The dense GPT-2's tensors in llm.c's file order; per_expert marks the MLP, which becomes E experts.
#define GPT2_NUM_TENSORS 16
static const struct { const char* name; int per_expert; } GPT2_TENSORS[GPT2_NUM_TENSORS] = {
    {"wte", 0}, {"wpe", 0}, {"ln1w", 0}, {"ln1b", 0}, {"qkvw", 0}, {"qkvb", 0}, {"attprojw", 0},
    {"attprojb", 0}, {"ln2w", 0}, {"ln2b", 0}, {"fcw", 1}, {"fcb", 1}, {"fcprojw", 1}, {"fcprojb", 1},
    {"lnfw", 0}, {"lnfb", 0}};

// The tensor called name in m's parameter buffer and its number of floats; NULL if m has none.
static float* moe_param_tensor(const MoEModel* m, const char* name, size_t* count) {
    float* p = m->params_memory;
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++) {
        if (strcmp(PARAM_NAMES[i], name) == 0) { *count = m->param_sizes[i]; return p; }
        p += m->param_sizes[i];
    }
    *count = 0;
    return NULL;
}

// ----------------------------------------------------------------------------
// llm.c's model file

// Reads an llm.c model file into m as a dense E=1 model (K=1, H=4C). Every header field is checked
// before anything is allocated, and the file size must match the header exactly. 0, or -1 with err.
static int llmc_load_model(MoEModel* m, const char* path, char* err, size_t errlen) {
    FILE* f = fopen(path, "rb");
    if (f == NULL) return set_err(err, errlen, "llm.c model %s: cannot open: %s", path, strerror(errno));
    int32_t h[256];
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return set_err(err, errlen, "llm.c model %s: cannot seek", path); }
    long fsize = ftell(f);
    rewind(f);
    if (fsize < (long)sizeof(h) || fread(h, sizeof(h), 1, f) != 1) {
        fclose(f);
        return set_err(err, errlen, "llm.c model %s: %ld bytes, shorter than its 1024-byte header", path, fsize);
    }
    int rc = 0;
    if (h[0] != LLMC_MODEL_MAGIC) {
        rc = set_err(err, errlen, "llm.c model %s: bad magic %d (expected %d)", path, h[0], LLMC_MODEL_MAGIC);
        goto done;
    }
    if (h[1] != LLMC_VERSION_FP32 && h[1] != LLMC_VERSION_BF16) {
        rc = set_err(err, errlen, "llm.c model %s: version %d; this reader knows 3 (float32) and 5 (bfloat16)%s", path,
                     h[1], h[1] < 3 ? " (older files lack the padded vocab: re-export them with llm.c's train_gpt2.py)" : "");
        goto done;
    }
    int maxT = h[2], V = h[3], L = h[4], NH = h[5], C = h[6], Vp = h[7];
    // bounds generous for any GPT-2 (1.5B: L=48, C=1600, maxT=1024, Vp=50304) and small enough that
    // no size below can overflow
    const struct { const char* what; int value, lo, hi; } fields[] = {
        {"maxT (header[2])", maxT, 1, 1 << 20}, {"V (header[3])", V, 2, 1 << 24}, {"L (header[4])", L, 1, 1 << 10},
        {"NH (header[5])", NH, 1, 1 << 12}, {"C (header[6])", C, 1, 1 << 16}, {"Vp (header[7])", Vp, 2, 1 << 24}};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        if (fields[i].value < fields[i].lo || fields[i].value > fields[i].hi) {
            rc = set_err(err, errlen, "llm.c model %s: %s = %d is outside [%d, %d]", path, fields[i].what, fields[i].value,
                         fields[i].lo, fields[i].hi);
            goto done;
        }
    MoEConfig cfg = {maxT, V, Vp, L, NH, C, 1, 1, 4 * C, 0};
    char why[256];
    if (config_check(&cfg, why, sizeof(why)) != 0) { rc = set_err(err, errlen, "llm.c model %s: %s", path, why); goto done; }
    size_t sizes[NUM_PARAMETER_TENSORS], nparams = 0;
    fill_param_sizes(sizes, &cfg);
    for (int i = 0; i < NUM_PARAMETER_TENSORS; i++)
        for (int j = 0; j < GPT2_NUM_TENSORS; j++)
            if (strcmp(PARAM_NAMES[i], GPT2_TENSORS[j].name) == 0) nparams += sizes[i];
    size_t bytes_per = h[1] == LLMC_VERSION_FP32 ? 4 : 2;
    size_t expect = sizeof(h) + nparams * bytes_per;
    if ((size_t)fsize != expect) {
        rc = set_err(err, errlen, "llm.c model %s: header (maxT=%d V=%d Vp=%d L=%d NH=%d C=%d, %s) describes %zu bytes, "
                     "the file holds %ld (truncated, or not this format)", path, maxT, V, Vp, L, NH, C,
                     bytes_per == 4 ? "float32" : "bfloat16", expect, fsize);
        goto done;
    }
    moe_build(m, &cfg);
    uint16_t* half = bytes_per == 2 ? (uint16_t*)mallocCheck(sizeof(uint16_t) * (1 << 20)) : NULL;
    for (int j = 0; j < GPT2_NUM_TENSORS && rc == 0; j++) {
        size_t n;
        float* t = moe_param_tensor(m, GPT2_TENSORS[j].name, &n);
        if (bytes_per == 4) {
            if (fread(t, 4, n, f) != n) rc = set_err(err, errlen, "llm.c model %s: short read in %s", path, GPT2_TENSORS[j].name);
        } else {
            for (size_t done = 0; done < n && rc == 0;) {  // in pieces of 1M values
                size_t piece = n - done < (1u << 20) ? n - done : (1u << 20);
                if (fread(half, 2, piece, f) != piece) {
                    rc = set_err(err, errlen, "llm.c model %s: short read in %s", path, GPT2_TENSORS[j].name);
                    break;
                }
                for (size_t i = 0; i < piece; i++) t[done + i] = bits_float((uint32_t)half[i] << 16);
                done += piece;
            }
        }
        for (size_t i = 0; i < n && rc == 0; i++)
            if (!isfinite(t[i]))
                rc = set_err(err, errlen, "llm.c model %s: %s[%zu] = %g is not finite", path, GPT2_TENSORS[j].name, i, t[i]);
    }
    free(half);
    if (rc != 0) moe_free(m);
done:
    fclose(f);
    return rc;
}

// Writes the dense model m (E=1, H=4C) as an llm.c float32 model file (version 3), which llm.c's
// train_gpt2.c loads. The router weights of an E=1 model are never used, so they are left out.
// maxT is m's (llm.c's own files have 1024; llm.c runs at T <= maxT). 0, or -1 with err.
static int llmc_save_model(const MoEModel* m, const char* path, char* err, size_t errlen) {
    const MoEConfig* c = &m->config;
    if (c->n_expert != 1)
        return set_err(err, errlen, "llm.c model %s: the model has E=%d experts; llm.c's GPT-2 is dense (E=1)", path, c->n_expert);
    if (c->expert_hidden != 4 * c->channels)
        return set_err(err, errlen, "llm.c model %s: the MLP hidden size is H=%d; llm.c's GPT-2 has H = 4C = %d", path,
                       c->expert_hidden, 4 * c->channels);
    int32_t h[256] = {0};
    h[0] = LLMC_MODEL_MAGIC; h[1] = LLMC_VERSION_FP32; h[2] = c->max_seq_len; h[3] = c->vocab_size;
    h[4] = c->num_layers; h[5] = c->num_heads; h[6] = c->channels; h[7] = c->padded_vocab_size;
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp%d", path, (int)getpid());
    FILE* f = fopen(tmp, "wb");
    if (f == NULL) return set_err(err, errlen, "llm.c model %s: cannot create %s: %s", path, tmp, strerror(errno));
    int bad = fwrite(h, sizeof(h), 1, f) != 1;
    for (int j = 0; j < GPT2_NUM_TENSORS && !bad; j++) {
        size_t n;
        const float* t = moe_param_tensor(m, GPT2_TENSORS[j].name, &n);
        bad = fwrite(t, 4, n, f) != n;
    }
    if (fclose(f) != 0) bad = 1;
    if (bad || rename(tmp, path) != 0) {
        remove(tmp);
        return set_err(err, errlen, "llm.c model %s: write failed: %s", path, strerror(errno));
    }
    return 0;
}

// ----------------------------------------------------------------------------
// the dense model, from either file

// Loads a dense model from this project's checkpoint (it must be E=1) or llm.c's model file,
// told apart by the magic number. Optimizer state in a checkpoint is dropped. 0, or -1 with err.
static int dense_load(MoEModel* dense, const char* path, char* err, size_t errlen) {
    FILE* f = fopen(path, "rb");
    if (f == NULL) return set_err(err, errlen, "dense model %s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 1024) {
        int regular = fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode);
        fclose(f);
        return set_err(err, errlen, "dense model %s: %s", path,
                       regular ? "shorter than a 1024-byte header (empty or truncated)" : "not a regular file");
    }
    int32_t magic = 0;
    size_t got = fread(&magic, 4, 1, f);
    fclose(f);
    memset(dense, 0, sizeof(*dense));
    if (got == 1 && magic == LLMC_MODEL_MAGIC) return llmc_load_model(dense, path, err, errlen);
    if (got != 1 || magic != CHECKPOINT_MAGIC)
        return set_err(err, errlen, "dense model %s: magic %d is neither a moe.c checkpoint's (%d) nor an llm.c model "
                       "file's (%d)", path, got == 1 ? magic : -1, CHECKPOINT_MAGIC, LLMC_MODEL_MAGIC);
    if (moe_load_checkpoint(dense, path, NULL, NULL, err, errlen) != 0) return -1;
    freeCheck(dense->m_memory); freeCheck(dense->v_memory);
    dense->m_memory = dense->v_memory = NULL;
    if (dense->config.n_expert != 1) {
        int E = dense->config.n_expert;
        moe_free(dense);
        return set_err(err, errlen, "dense model %s: a checkpoint with E=%d experts; upcycling starts from a dense "
                       "(E=1) model", path, E);
    }
    return 0;
}

// ----------------------------------------------------------------------------
// upcycling

// Copies dense (E=1) into m, which must have dense's shape but any E and K and must already hold
// its own initialisation (moe_init_params): shared tensors copied, the MLP into every expert slot
// (+ noise * rms * N(0,1) if noise > 0, from seed's STREAM_UPCYCLE), other tensors untouched.
static int moe_upcycle(MoEModel* m, const MoEModel* dense, float noise, uint64_t seed, char* err, size_t errlen) {
    const MoEConfig *c = &m->config, *d = &dense->config;
    if (d->n_expert != 1) return set_err(err, errlen, "upcycle: the dense model has E=%d (must be 1)", d->n_expert);
    if (c->max_seq_len != d->max_seq_len || c->vocab_size != d->vocab_size || c->padded_vocab_size != d->padded_vocab_size ||
        c->num_layers != d->num_layers || c->num_heads != d->num_heads || c->channels != d->channels ||
        c->expert_hidden != d->expert_hidden)
        return set_err(err, errlen, "upcycle: the MoE's shape (maxT, V, Vp, L, NH, C, H) differs from the dense model's");
    uint64_t rng = derive_seed(seed, STREAM_UPCYCLE);
    int L = c->num_layers, E = c->n_expert;
    for (int j = 0; j < GPT2_NUM_TENSORS; j++) {
        size_t n_dense, n_moe;
        const float* src = moe_param_tensor(dense, GPT2_TENSORS[j].name, &n_dense);
        float* dst = moe_param_tensor(m, GPT2_TENSORS[j].name, &n_moe);
        if (src == NULL || dst == NULL) return set_err(err, errlen, "upcycle: no tensor %s", GPT2_TENSORS[j].name);
        if (!GPT2_TENSORS[j].per_expert) {
            if (n_dense != n_moe) return set_err(err, errlen, "upcycle: %s has %zu values, the MoE's %zu", GPT2_TENSORS[j].name, n_dense, n_moe);
            memcpy(dst, src, n_dense * sizeof(float));
            continue;
        }
        size_t per_layer = n_dense / L;  // (L, E, ...) in the MoE, (L, 1, ...) in the dense model
        if (n_moe != per_layer * L * E) return set_err(err, errlen, "upcycle: %s sizes do not match", GPT2_TENSORS[j].name);
        for (int l = 0; l < L; l++) {
            const float* w = src + (size_t)l * per_layer;
            double ss = 0.0;
            for (size_t i = 0; i < per_layer; i++) ss += (double)w[i] * w[i];
            float scale = noise * (float)sqrt(ss / per_layer);
            for (int e = 0; e < E; e++) {
                float* out = dst + ((size_t)l * E + e) * per_layer;
                memcpy(out, w, per_layer * sizeof(float));
                if (noise > 0.0f)
                    for (size_t i = 0; i < per_layer; i++) out[i] += scale * random_normal(&rng);
            }
        }
    }
    return 0;
}

// The whole of `train_moe --upcycle`: reads the dense model at path, builds an MoE of its shape
// with E experts, top-k K and X-MoE routing dim xmoe_dim (0: none), initialises it (seed,
// router_init_std), upcycles. 0, or -1 with err.
static int moe_build_upcycled(MoEModel* m, const char* path, int E, int K, int xmoe_dim, uint64_t seed,
                              float router_init_std, float noise, char* err, size_t errlen) {
    MoEModel dense;
    if (dense_load(&dense, path, err, errlen) != 0) return -1;
    MoEConfig cfg = dense.config;
    cfg.n_expert = E;
    cfg.top_k = K;
    cfg.xmoe_dim = xmoe_dim;
    char why[256];
    if (config_check(&cfg, why, sizeof(why)) != 0) { moe_free(&dense); return set_err(err, errlen, "--upcycle %s: %s", path, why); }
    moe_build(m, &cfg);
    moe_init_params(m, seed, router_init_std);
    int rc = moe_upcycle(m, &dense, noise, seed, err, errlen);
    moe_free(&dense);
    if (rc != 0) moe_free(m);
    return rc;
}

#endif // UPCYCLE_H
