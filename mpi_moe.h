/*
mpi_moe.h — train_moe on several processes (MPI ranks, one machine or many): data parallelism,
ZeRO-1 and expert parallelism (its own section below). Built with -DUSE_MPI (make USE_MPI=1, or make train_moe_mpi); without it there is one
rank, every collective is a copy or nothing, and train_moe runs exactly as before.

Data parallelism. A step's micro-batches (-d / (B*T) of them) are dealt round-robin: rank r
runs micro-batches r, r+R, r+2R, ... All ranks read the same data stream (they skip the batches
that are not theirs), so the data position, the checkpoint and a resume do not depend on R.
Each rank accumulates its own gradient; then they are summed *in rank order* (g_0 + g_1 + ...):
  reduce-scatter: rank s receives every rank's copy of shard s (MPI_Alltoallv) and sums them in
                  rank order, so the sum has the same bits whatever MPI's own algorithms are;
  all-gather:     every rank gets every summed shard (MPI_Allgatherv).
Shards are whole chunks of the gradient-norm sum (GRAD_NORM_CHUNKS in moe.h), so the norm is
the same sum of the same partials on any number of ranks. Every rank then takes the same AdamW
step on the same numbers: the parameters stay identical on all ranks (--comm-stats checks a
crc32 of them every step).

ZeRO-1 (--zero). Rank r keeps the AdamW moments of its shard only (2P/R floats instead of 2P),
skips the all-gather of the gradient, updates its shard of the parameters, and all-gathers the
parameters instead. AdamW is elementwise, so the result has the same bits as without --zero.
A checkpoint gathers the moments to rank 0, which writes the usual single-process file.

Losses and metrics. The per-micro-batch losses are gathered and averaged in micro-batch order,
as one process would; the MoE routing counts are summed over ranks. Only rank 0 prints and
writes files; the others send stdout to /dev/null (errors still reach stderr).
*/
#ifndef MPI_MOE_H
#define MPI_MOE_H

#include <limits.h>
#ifdef USE_MPI
#include <mpi.h>
#endif

// What a rank communicates, by purpose: bytes it receives from other ranks (the payload; an MPI
// library's algorithm may forward more on the wire) and seconds spent inside MPI calls.
enum { COMM_GRADS, COMM_PARAMS, COMM_TOKENS, COMM_OTHER, COMM_KINDS };
static const char* const COMM_NAMES[COMM_KINDS] = {"grads", "params", "tokens", "other"};

struct ExpertParallel;

typedef struct {
    int rank, size;      // this process and how many there are (0 and 1 without MPI)
    int zero;            // ZeRO-1: this rank keeps the AdamW moments of its shard only
    struct ExpertParallel* ep;  // expert parallelism, or NULL
    // The gradient the ranks sum: the whole buffer, or under expert parallelism the parameters
    // every rank holds (all but the experts), packed into `packed` (reduce_n floats).
    size_t reduce_n;
    float* packed;
    size_t* shard;       // (size+1) rank r owns [shard[r], shard[r+1]) of it: whole norm chunks
    int* chunk;          // (size+1) the same shards in norm chunks
    float* recv;         // (size * largest shard) the reduce-scatter's receive buffer
    float* m_shard;      // ZeRO-1: AdamW moments of parameters [shard[rank], shard[rank+1])
    float* v_shard;
    double bytes[COMM_KINDS];  // since the last dist_take_comm_stats
    double seconds;
} Dist;

static double dist_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Starts MPI (if built with it) and sends non-root stdout to /dev/null. A build without MPI
// refuses to run under mpirun: every rank would train the whole model and write the same files.
static void dist_init(Dist* d, int* argc, char*** argv) {
    memset(d, 0, sizeof(*d));
    d->size = 1;
#ifdef USE_MPI
    MPI_Init(argc, argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &d->size);
    if (d->rank != 0 && freopen("/dev/null", "w", stdout) == NULL) die("rank %d: cannot redirect stdout", d->rank);
#else
    (void)argc; (void)argv;
    const char* vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"};
    for (int i = 0; i < 3; i++) {
        const char* v = getenv(vars[i]);
        if (v != NULL && atoi(v) > 1)
            die("this train_moe was built without MPI but runs as one of %s processes (%s): rebuild with "
                "`make USE_MPI=1` (needs mpicc: apt-get install openmpi-bin libopenmpi-dev)", v, vars[i]);
    }
#endif
}

static void ep_free(struct ExpertParallel* ep);
static void dist_finalize(Dist* d) {
    free(d->shard); free(d->chunk); free(d->recv); freeCheck(d->m_shard); freeCheck(d->v_shard); free(d->packed);
    ep_free(d->ep);
#ifdef USE_MPI
    MPI_Finalize();
#endif
    memset(d, 0, sizeof(*d));
}

// ----------------------------------------------------------------------------
// the few collectives used, counted. Without MPI (size 1) each is a copy or nothing.

// send (size, counts[s] floats at displs[s]) to every rank s; recv likewise from every rank
static void comm_alltoallv(Dist* d, int kind, const float* send, const int* scounts, const int* sdispls, float* recv,
                           const int* rcounts, const int* rdispls) {
    double t0 = dist_now();
#ifdef USE_MPI
    MPI_Alltoallv(send, scounts, sdispls, MPI_FLOAT, recv, rcounts, rdispls, MPI_FLOAT, MPI_COMM_WORLD);
#else
    memcpy(recv + rdispls[0], send + sdispls[0], sizeof(float) * (size_t)scounts[0]);
#endif
    for (int s = 0; s < d->size; s++) if (s != d->rank) d->bytes[kind] += 4.0 * rcounts[s];
    d->seconds += dist_now() - t0;
}

// in place: rank s contributes buf[displs[s] .. + counts[s]); afterwards every rank holds all
static void comm_allgatherv(Dist* d, int kind, float* buf, const int* counts, const int* displs) {
    double t0 = dist_now();
#ifdef USE_MPI
    MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, counts, displs, MPI_FLOAT, MPI_COMM_WORLD);
#else
    (void)buf; (void)displs;
#endif
    for (int s = 0; s < d->size; s++) if (s != d->rank) d->bytes[kind] += 4.0 * counts[s];
    d->seconds += dist_now() - t0;
}

// every rank's n doubles, in rank order, into recv (size * n)
static void comm_allgather_doubles(Dist* d, const double* send, int n, double* recv) {
    double t0 = dist_now();
#ifdef USE_MPI
    MPI_Allgather(send, n, MPI_DOUBLE, recv, n, MPI_DOUBLE, MPI_COMM_WORLD);
#else
    memcpy(recv, send, sizeof(double) * (size_t)n);
#endif
    d->bytes[COMM_OTHER] += 8.0 * n * (d->size - 1);
    d->seconds += dist_now() - t0;
}

static void comm_bcast(Dist* d, void* buf, size_t bytes, int root) {
    double t0 = dist_now();
#ifdef USE_MPI
    if (bytes > INT_MAX) die("dist: broadcast of %zu bytes is larger than one MPI message", bytes);
    MPI_Bcast(buf, (int)bytes, MPI_BYTE, root, MPI_COMM_WORLD);
#else
    (void)buf; (void)root;
#endif
    if (d->rank != root) d->bytes[COMM_OTHER] += (double)bytes;
    d->seconds += dist_now() - t0;
}

static int dist_max_int(Dist* d, int x) {
    int out = x;
#ifdef USE_MPI
    double t0 = dist_now();
    MPI_Allreduce(&x, &out, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);  // a max is exact in any order
    d->bytes[COMM_OTHER] += 4.0 * (d->size - 1);
    d->seconds += dist_now() - t0;
#else
    (void)d;
#endif
    return out;
}

// ----------------------------------------------------------------------------
// expert parallelism (--expert-parallel)
//
// Each layer's E experts are split over the R ranks: rank s owns experts [s*E/R, (s+1)*E/R) and
// alone computes, and updates, them. Everything else stays data parallel (each rank its own
// micro-batches, those gradients summed as above). In a layer, after the router and the dispatch
// have grouped this rank's (token, expert) rows by expert:
//   1. the row count of every (rank, expert) pair goes to the expert's owner (MPI_Alltoall);
//   2. the rows go to their experts' owners (MPI_Alltoallv), which put each expert's rows in one
//      block (from rank 0, then rank 1, ...) and run experts_ffn_forward on their experts;
//   3. the outputs come back the same way (MPI_Alltoallv), into the dispatch's blocks.
// Backward mirrors it: the gradients of the outputs go to the owners, which run
// experts_ffn_backward (their experts' weight gradients from every rank's tokens) and send the
// gradients of the inputs back. Routers, aux losses, metrics and CompeteSMoE's every-expert
// responses see the same blocks as in one process.
//
// Every rank keeps the full parameter buffer (the checkpoint layout), but another rank's experts
// are stale there: before validation, samples and checkpoints the owners' experts are
// all-gathered (dist_experts_gather), and validation and samples then run every expert locally.

typedef struct {      // the rows of one layer that this rank's experts ran, kept for backward
    int cap;          // rows allocated
    float *x, *dgelu, *gelu, *out, *dout, *din;  // (cap, C), (cap, H) x2 (rows sgemm_row_stride(H) apart), (cap, C) x3
    int* send_rows;   // (E) rows of each expert this rank sent (its own tokens)
    int* recv_rows;   // (R, E/R) rows from each rank for each of this rank's experts
} EPLayer;

typedef struct ExpertParallel {
    ExpertRunner runner;  // first: moe.h calls runner.forward/backward with a pointer to it
    Dist* dist;
    int E, per_rank;      // experts per layer, per rank: the owner of expert e is e / per_rank
    int L;
    EPLayer* layer;       // (L)
    float *send, *recv;   // staging buffers of send_cap / recv_cap floats
    size_t send_cap, recv_cap;
    size_t (*own)[2];     // this rank's experts' ranges of the parameter buffer (4 tensors x L)
    int n_own;
    size_t (*rep)[2];     // the ranges every rank holds: everything but the experts
    int n_rep;
} ExpertParallel;

static void ep_free(ExpertParallel* ep) {
    if (ep == NULL) return;
    for (int l = 0; l < ep->L; l++) {
        EPLayer* y = &ep->layer[l];
        free(y->x); free(y->dgelu); free(y->gelu); free(y->out); free(y->dout); free(y->din);
        freeCheck(y->send_rows); freeCheck(y->recv_rows);
    }
    freeCheck(ep->layer); free(ep->send); free(ep->recv); free(ep->own); free(ep->rep);
    freeCheck(ep);
}

static float* ep_grow(float* buf, size_t* cap, size_t need) {
    if (need <= *cap) return buf;
    free(buf);
    *cap = need;
    return (float*)mallocCheck(sizeof(float) * need);
}

// Copies (rank, expert)-major blocks of rows into (expert, rank)-major order (to_expert = 1) or
// back. rows (R, P): rows of rank q for the rank's local expert j; width floats per row.
static void ep_reorder(float* dst, const float* src, const int* rows, int R, int P, int width, int to_expert) {
    size_t rank_major = 0;
    for (int q = 0; q < R; q++) {
        for (int j = 0; j < P; j++) {
            size_t expert_major = 0;  // offset of (j, q) in expert-major order
            for (int jj = 0; jj < j; jj++) for (int qq = 0; qq < R; qq++) expert_major += rows[qq * P + jj];
            for (int qq = 0; qq < q; qq++) expert_major += rows[qq * P + j];
            size_t n = (size_t)rows[q * P + j] * width;
            if (to_expert) memcpy(dst + expert_major * width, src + rank_major * width, n * sizeof(float));
            else memcpy(dst + rank_major * width, src + expert_major * width, n * sizeof(float));
            rank_major += rows[q * P + j];
        }
    }
}

// Sends rows (width floats each) of the blocks in `from` (E pointers, rows send_rows[e], in
// expert order) to the experts' owners; the owner receives them (rank, expert)-major and
// `into` gets them (expert, rank)-major. back = 1 runs it the other way (owner -> token rank).
static void ep_exchange(ExpertParallel* ep, EPLayer* y, int width, const float* const* blocks, float* owner_rows,
                        float* const* out_blocks, int back) {
    Dist* d = ep->dist;
    int R = d->size, P = ep->per_rank, E = ep->E;
    int scounts[GRAD_NORM_CHUNKS], sdispls[GRAD_NORM_CHUNKS], rcounts[GRAD_NORM_CHUNKS], rdispls[GRAD_NORM_CHUNKS];
    size_t mine = 0, theirs = 0;  // rows this rank sends as a token rank, receives as an owner
    for (int s = 0; s < R; s++) {
        long a = 0, b = 0;
        for (int j = 0; j < P; j++) { a += y->send_rows[s * P + j]; b += y->recv_rows[s * P + j]; }
        if (a * width > INT_MAX || b * width > INT_MAX) die("expert parallel: a message of %ld rows is too large", a > b ? a : b);
        scounts[s] = (int)(a * width); sdispls[s] = (int)(mine * width);
        rcounts[s] = (int)(b * width); rdispls[s] = (int)(theirs * width);
        mine += a; theirs += b;
    }
    ep->send = ep_grow(ep->send, &ep->send_cap, (mine > theirs ? mine : theirs) * width + 1);
    ep->recv = ep_grow(ep->recv, &ep->recv_cap, (mine > theirs ? mine : theirs) * width + 1);
    if (!back) {
        size_t off = 0;
        for (int e = 0; e < E; e++) {
            memcpy(ep->send + off, blocks[e], sizeof(float) * (size_t)y->send_rows[e] * width);
            off += (size_t)y->send_rows[e] * width;
        }
        comm_alltoallv(d, COMM_TOKENS, ep->send, scounts, sdispls, ep->recv, rcounts, rdispls);
        ep_reorder(owner_rows, ep->recv, y->recv_rows, R, P, width, 1);
    } else {
        ep_reorder(ep->send, owner_rows, y->recv_rows, R, P, width, 0);
        comm_alltoallv(d, COMM_TOKENS, ep->send, rcounts, rdispls, ep->recv, scounts, sdispls);
        size_t off = 0;
        for (int e = 0; e < E; e++) {
            memcpy(out_blocks[e], ep->recv + off, sizeof(float) * (size_t)y->send_rows[e] * width);
            off += (size_t)y->send_rows[e] * width;
        }
    }
}

// The blocks of this rank's experts over the rows it received: expert e of another rank has none.
static void ep_local_blocks(const ExpertParallel* ep, const EPLayer* y, int C, int H, int with_din, ExpertBlock* lb) {
    int R = ep->dist->size, P = ep->per_rank, me = ep->dist->rank;
    size_t Hs = (size_t)sgemm_row_stride(H);
    memset(lb, 0, sizeof(ExpertBlock) * ep->E);
    size_t off = 0;
    for (int j = 0; j < P; j++) {
        int rows = 0;
        for (int q = 0; q < R; q++) rows += y->recv_rows[q * P + j];
        lb[me * P + j] = (ExpertBlock){rows, y->x + off * C, y->dgelu + off * Hs, y->gelu + off * Hs, y->out + off * C,
                                       y->dout + off * C, with_din ? y->din + off * C : NULL};
        off += rows;
    }
}

static void ep_forward(ExpertRunner* runner, MoEModel* m, int l, const ExpertBlock* blk) {
    ExpertParallel* ep = (ExpertParallel*)runner;
    Dist* d = ep->dist;
    int E = ep->E, P = ep->per_rank, C = m->config.channels, H = m->config.expert_hidden;
    int Hs = sgemm_row_stride(H);
    EPLayer* y = &ep->layer[l];
    for (int e = 0; e < E; e++) y->send_rows[e] = blk[e].rows;
    double t0 = dist_now();
#ifdef USE_MPI
    MPI_Alltoall(y->send_rows, P, MPI_INT, y->recv_rows, P, MPI_INT, MPI_COMM_WORLD);
#else
    memcpy(y->recv_rows, y->send_rows, sizeof(int) * E);
#endif
    d->bytes[COMM_TOKENS] += 4.0 * P * (d->size - 1);
    d->seconds += dist_now() - t0;
    int total = 0;
    for (int i = 0; i < d->size * P; i++) total += y->recv_rows[i];
    if (total > y->cap) {  // grow this layer's buffers to the rows received
        free(y->x); free(y->dgelu); free(y->gelu); free(y->out); free(y->dout); free(y->din);
        y->cap = total + total / 4 + 16;
        y->x = (float*)mallocCheck(sizeof(float) * (size_t)y->cap * C);
        y->dgelu = (float*)mallocCheck(sizeof(float) * (size_t)y->cap * Hs);
        y->gelu = (float*)mallocCheck(sizeof(float) * (size_t)y->cap * Hs);
        y->out = (float*)mallocCheck(sizeof(float) * (size_t)y->cap * C);
        y->dout = (float*)mallocCheck(sizeof(float) * (size_t)y->cap * C);
        y->din = (float*)mallocCheck(sizeof(float) * (size_t)y->cap * C);
    }
    const float* xs[256] = {0};
    float* outs[256] = {0};
    for (int e = 0; e < E; e++) { xs[e] = blk[e].x; outs[e] = blk[e].out; }
    ep_exchange(ep, y, C, xs, y->x, NULL, 0);
    ExpertBlock lb[256];
    ep_local_blocks(ep, y, C, H, 0, lb);
    experts_ffn_forward(m, l, lb);
    ep_exchange(ep, y, C, NULL, y->out, outs, 1);
}

static void ep_backward(ExpertRunner* runner, MoEModel* m, int l, const ExpertBlock* blk) {
    ExpertParallel* ep = (ExpertParallel*)runner;
    int E = ep->E, C = m->config.channels, H = m->config.expert_hidden;
    EPLayer* y = &ep->layer[l];
    int with_din = 0;
    for (int e = 0; e < E; e++) with_din |= blk[e].din != NULL;
    const float* douts[256] = {0};
    float* dins[256] = {0};
    for (int e = 0; e < E; e++) { douts[e] = blk[e].dout; dins[e] = blk[e].din; }
    ep_exchange(ep, y, C, douts, y->dout, NULL, 0);
    ExpertBlock lb[256];
    ep_local_blocks(ep, y, C, H, with_din, lb);
    experts_ffn_backward(m, l, lb);
    if (with_din) ep_exchange(ep, y, C, NULL, y->din, dins, 1);
}

// Sets up the ownership and the parameter ranges; refuses what it cannot split.
static ExpertParallel* ep_create(Dist* d, MoEModel* m) {
    const MoEConfig* c = &m->config;
    int E = c->n_expert, L = c->num_layers, R = d->size;
    if (E % R != 0 || E < R)
        die("--expert-parallel: the %d experts of a layer do not split evenly over %d MPI ranks", E, R);
    ExpertParallel* ep = (ExpertParallel*)callocCheck(1, sizeof(ExpertParallel));
    ep->runner.forward = ep_forward;
    ep->runner.backward = ep_backward;
    ep->dist = d;
    ep->E = E;
    ep->per_rank = E / R;
    ep->L = L;
    ep->layer = (EPLayer*)callocCheck((size_t)L, sizeof(EPLayer));
    for (int l = 0; l < L; l++) {
        ep->layer[l].send_rows = (int*)callocCheck((size_t)E, sizeof(int));
        ep->layer[l].recv_rows = (int*)callocCheck((size_t)E, sizeof(int));
    }
    const float* experts[4] = {m->params.fcw, m->params.fcb, m->params.fcprojw, m->params.fcprojb};
    ep->own = (size_t(*)[2])mallocCheck(sizeof(size_t[2]) * 4 * L);
    ep->rep = (size_t(*)[2])mallocCheck(sizeof(size_t[2]) * NUM_PARAMETER_TENSORS);
    size_t start = 0;
    for (int ti = 0; ti < NUM_PARAMETER_TENSORS; ti++) {
        size_t n = m->param_sizes[ti];
        const float* t = m->params_memory + start;
        int expert = 0;
        for (int i = 0; i < 4; i++) expert |= t == experts[i];
        if (expert) {
            size_t per_expert = n / ((size_t)L * E);
            for (int l = 0; l < L; l++) {
                size_t lo = start + ((size_t)l * E + (size_t)d->rank * ep->per_rank) * per_expert;
                ep->own[ep->n_own][0] = lo;
                ep->own[ep->n_own][1] = lo + ep->per_rank * per_expert;
                ep->n_own++;
            }
        } else if (n > 0) {
            if (ep->n_rep > 0 && ep->rep[ep->n_rep - 1][1] == start) ep->rep[ep->n_rep - 1][1] = start + n;
            else { ep->rep[ep->n_rep][0] = start; ep->rep[ep->n_rep][1] = start + n; ep->n_rep++; }
        }
        start += n;
    }
    return ep;
}

// Every rank's copy of buf's expert tensors (the parameters, or an AdamW moment) gets the owners'
// values: one MPI_Allgatherv per expert tensor and layer.
static void ep_gather_tensors(Dist* d, const MoEModel* m, float* buf) {
    ExpertParallel* ep = d->ep;
    int L = m->config.num_layers, P = ep->per_rank, counts[GRAD_NORM_CHUNKS], displs[GRAD_NORM_CHUNKS];
    (void)L; (void)P;
    for (int i = 0; i < ep->n_own; i++) {  // own[i]: one expert tensor and layer; rank s holds its s-th part
        size_t n = ep->own[i][1] - ep->own[i][0];
        if (n * d->size > INT_MAX) die("expert parallel: one layer's experts exceed one MPI message");
        size_t layer_start = ep->own[i][0] - (size_t)d->rank * n;  // expert 0 of this tensor and layer
        for (int s = 0; s < d->size; s++) { counts[s] = (int)n; displs[s] = (int)(s * n); }
        comm_allgatherv(d, COMM_PARAMS, buf + layer_start, counts, displs);
    }
}

// Before validation, samples or a checkpoint: every rank gets every expert's current weights,
// and (with_moments) AdamW's moments; then the experts can run locally (expert_runner NULL).
static void dist_experts_gather(Dist* d, MoEModel* m, int with_moments) {
    if (d->ep == NULL) return;
    ep_gather_tensors(d, m, m->params_memory);
    if (with_moments && m->m_memory != NULL) { ep_gather_tensors(d, m, m->m_memory); ep_gather_tensors(d, m, m->v_memory); }
}

// ----------------------------------------------------------------------------
// setup: shards of the parameter buffer

// Rank r's shard is norm chunks [floor(r*CH/R), floor((r+1)*CH/R)) of the summed gradient (the
// whole buffer; under expert parallelism the packed non-expert part). Under ZeRO-1 the moments of
// a loaded checkpoint (full, on every rank) are cut down to this rank's shard.
static void dist_setup(Dist* d, MoEModel* m, int zero, int expert_parallel) {
    if (d->size > GRAD_NORM_CHUNKS) die("at most %d MPI ranks (the gradient is cut into that many chunks), got %d",
                                        GRAD_NORM_CHUNKS, d->size);
    if (expert_parallel && zero) die("--expert-parallel with --zero is not supported: use one of them");
    d->zero = zero;
    d->reduce_n = m->num_parameters;
    if (expert_parallel) {
        d->ep = ep_create(d, m);
        m->expert_runner = &d->ep->runner;
        d->reduce_n = 0;
        for (int i = 0; i < d->ep->n_rep; i++) d->reduce_n += d->ep->rep[i][1] - d->ep->rep[i][0];
        d->packed = (float*)mallocCheck(sizeof(float) * (d->reduce_n + 1));
    }
    size_t P = d->reduce_n, chunk = grad_norm_chunk(P);
    d->shard = (size_t*)mallocCheck(sizeof(size_t) * (d->size + 1));
    d->chunk = (int*)mallocCheck(sizeof(int) * (d->size + 1));
    size_t largest = 0;
    for (int r = 0; r <= d->size; r++) {
        d->chunk[r] = (int)((long)r * GRAD_NORM_CHUNKS / d->size);
        size_t lo = (size_t)d->chunk[r] * chunk;
        d->shard[r] = lo < P ? lo : P;
        if (r > 0 && d->shard[r] - d->shard[r - 1] > largest) largest = d->shard[r] - d->shard[r - 1];
    }
    if (largest > INT_MAX) die("a rank's shard of %zu parameters exceeds one MPI message: use more ranks", largest);
    if (d->size > 1) d->recv = (float*)mallocCheck(sizeof(float) * largest * d->size);
    if (zero) {
        size_t lo = d->shard[d->rank], n = d->shard[d->rank + 1] - lo;
        d->m_shard = (float*)callocCheck(n > 0 ? n : 1, sizeof(float));
        d->v_shard = (float*)callocCheck(n > 0 ? n : 1, sizeof(float));
        if (m->m_memory != NULL) {  // resuming: keep this rank's part of the loaded moments
            memcpy(d->m_shard, m->m_memory + lo, n * sizeof(float));
            memcpy(d->v_shard, m->v_memory + lo, n * sizeof(float));
            freeCheck(m->m_memory); freeCheck(m->v_memory);
            m->m_memory = m->v_memory = NULL;
        }
    }
}

// Expert parallelism packs the non-expert gradient into d->packed (pack = 1) and back.
static void ep_pack(Dist* d, MoEModel* m, int pack) {
    size_t off = 0;
    for (int i = 0; i < d->ep->n_rep; i++) {
        size_t lo = d->ep->rep[i][0], n = d->ep->rep[i][1] - lo;
        if (pack) memcpy(d->packed + off, m->grads_memory + lo, n * sizeof(float));
        else memcpy(m->grads_memory + lo, d->packed + off, n * sizeof(float));
        off += n;
    }
}

// ----------------------------------------------------------------------------
// data parallelism: gradients, norm, update

// Sums every rank's gradient in rank order. Afterwards rank r holds the sum on its shard and,
// without ZeRO-1, everywhere; under ZeRO-1 the rest of its gradient is zeroed (consumed).
// Under expert parallelism only the non-expert part is summed: each expert's gradient is whole
// on its owner already (it ran that expert on every rank's tokens).
static void dist_reduce_gradients(Dist* d, MoEModel* m) {
    if (d->size == 1) return;
    int R = d->size, me = d->rank;
    float* grads = m->grads_memory;
    if (d->ep != NULL) { ep_pack(d, m, 1); grads = d->packed; }
    int scounts[GRAD_NORM_CHUNKS], sdispls[GRAD_NORM_CHUNKS], rcounts[GRAD_NORM_CHUNKS], rdispls[GRAD_NORM_CHUNKS];
    int mine = (int)(d->shard[me + 1] - d->shard[me]);
    for (int s = 0; s < R; s++) {
        scounts[s] = (int)(d->shard[s + 1] - d->shard[s]);
        sdispls[s] = (int)d->shard[s];  // < INT_MAX? checked below through the shard bound
        rcounts[s] = mine;
        rdispls[s] = s * mine;
    }
    if (d->reduce_n > INT_MAX) die("dist: %zu parameters exceed MPI's int offsets", d->reduce_n);
    comm_alltoallv(d, COMM_GRADS, grads, scounts, sdispls, d->recv, rcounts, rdispls);
    float* g = grads + d->shard[me];
    const float* in = d->recv;
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < mine; i++) {
        float s = in[i];
        for (int r = 1; r < R; r++) s += in[(size_t)r * mine + i];
        g[i] = s;
    }
    if (d->zero) {
        memset(m->grads_memory, 0, d->shard[me] * sizeof(float));
        memset(m->grads_memory + d->shard[me + 1], 0, (m->num_parameters - d->shard[me + 1]) * sizeof(float));
    } else {
        comm_allgatherv(d, COMM_GRADS, grads, scounts, sdispls);
    }
    if (d->ep != NULL) ep_pack(d, m, 0);
}

// ||g|| of the summed gradient: under ZeRO-1 each rank has its chunks' partial sums, gathered and
// summed in chunk order; the same bits as grad_global_norm on the whole gradient.
// Under expert parallelism: the non-expert part's sum (the same on every rank) plus each rank's
// own experts' sums, gathered and added in rank order.
static float dist_grad_norm(Dist* d, const MoEModel* m) {
    if (d->ep != NULL) {
        double sums[2] = {0.0, 0.0}, all[2 * GRAD_NORM_CHUNKS] = {0};
        for (int k = 0; k < 2; k++) {
            int n = k == 0 ? d->ep->n_rep : d->ep->n_own;
            size_t (*ranges)[2] = k == 0 ? d->ep->rep : d->ep->own;
            for (int i = 0; i < n; i++) {
                const float* g = m->grads_memory + ranges[i][0];
                size_t len = ranges[i][1] - ranges[i][0];
                double s = 0.0;
                #pragma omp parallel for schedule(static) reduction(+ : s)
                for (size_t j = 0; j < len; j++) s += (double)g[j] * g[j];
                sums[k] += s;  // (the OpenMP reduction order is fixed for a fixed thread count)
            }
        }
        comm_allgather_doubles(d, sums, 2, all);
        double total = sums[0];
        for (int r = 0; r < d->size; r++) total += all[2 * r + 1];
        return (float)sqrt(total);
    }
    if (!d->zero || d->size == 1) return grad_global_norm(m);
    double partial[GRAD_NORM_CHUNKS] = {0};
    double* gathered = (double*)mallocCheck(sizeof(double) * GRAD_NORM_CHUNKS * d->size);
    grad_sq_partials(m, d->chunk[d->rank], d->chunk[d->rank + 1], partial);
    comm_allgather_doubles(d, partial, GRAD_NORM_CHUNKS, gathered);
    double total = 0.0;
    for (int r = 0; r < d->size; r++)
        for (int i = d->chunk[r]; i < d->chunk[r + 1]; i++) total += gathered[(size_t)r * GRAD_NORM_CHUNKS + i];
    free(gathered);
    return (float)sqrt(total);
}

// One AdamW step. Without ZeRO-1 every rank updates everything (same numbers, same result);
// with it, each rank its shard, then the parameters are all-gathered.
static void dist_adamw_update(Dist* d, MoEModel* m, float lr, float beta1, float beta2, float eps, float weight_decay,
                              float clip_scale, int t) {
    if (d->ep != NULL) {  // the shared parameters and this rank's experts (the others' are theirs)
        if (m->m_memory == NULL) {
            m->m_memory = (float*)callocCheck(m->num_parameters, sizeof(float));
            m->v_memory = (float*)callocCheck(m->num_parameters, sizeof(float));
        }
        for (int k = 0; k < 2; k++) {
            int n = k == 0 ? d->ep->n_rep : d->ep->n_own;
            size_t (*ranges)[2] = k == 0 ? d->ep->rep : d->ep->own;
            for (int i = 0; i < n; i++)
                adamw_update_range(m, ranges[i][0], ranges[i][1], m->m_memory + ranges[i][0], m->v_memory + ranges[i][0],
                                   lr, beta1, beta2, eps, weight_decay, clip_scale, t);
        }
        return;
    }
    if (!d->zero) { moe_adamw_update(m, lr, beta1, beta2, eps, weight_decay, clip_scale, t); return; }
    adamw_update_range(m, d->shard[d->rank], d->shard[d->rank + 1], d->m_shard, d->v_shard, lr, beta1, beta2, eps,
                       weight_decay, clip_scale, t);
    int counts[GRAD_NORM_CHUNKS], displs[GRAD_NORM_CHUNKS];
    for (int s = 0; s < d->size; s++) { counts[s] = (int)(d->shard[s + 1] - d->shard[s]); displs[s] = (int)d->shard[s]; }
    comm_allgatherv(d, COMM_PARAMS, m->params_memory, counts, displs);
}

// ----------------------------------------------------------------------------
// losses, metrics, agreement

// local (n_local, width): this rank's values for its micro-batches j = 0.. (global index
// rank + size*j); global (n_local*size, width) in global micro-batch order on every rank.
static void dist_gather_micro(Dist* d, const double* local, int n_local, int width, double* global) {
    int n = n_local * width;
    double* all = (double*)mallocCheck(sizeof(double) * (size_t)n * d->size);
    comm_allgather_doubles(d, local, n, all);
    for (int r = 0; r < d->size; r++)
        for (int j = 0; j < n_local; j++)
            memcpy(global + ((size_t)j * d->size + r) * width, all + ((size_t)r * n_local + j) * width,
                   sizeof(double) * width);
    free(all);
}

// x (n) <- sum over ranks, in rank order (the same bits on every rank)
static void dist_sum_doubles(Dist* d, double* x, int n) {
    if (d->size == 1) return;
    double* all = (double*)mallocCheck(sizeof(double) * (size_t)n * d->size);
    comm_allgather_doubles(d, x, n, all);
    for (int i = 0; i < n; i++) {
        double s = all[i];
        for (int r = 1; r < d->size; r++) s += all[(size_t)r * n + i];
        x[i] = s;
    }
    free(all);
}

// The step's routing counts over every rank's tokens (counts are whole numbers: exact).
static void dist_sum_metrics(Dist* d, MoEMetrics* mm) {
    if (d->size == 1) return;
    int D = mm->num_domains > 0 ? mm->num_domains : 1;
    dist_sum_doubles(d, &mm->tokens, 1);
    dist_sum_doubles(d, mm->counts, mm->L * mm->E);
    dist_sum_doubles(d, mm->sibling_hits, mm->L);
    dist_sum_doubles(d, mm->domain_joint, mm->L * mm->E * D);
    dist_sum_doubles(d, mm->domain_joint_null, mm->L * mm->E * D);  // MI's chance level
}

// Did any rank get a stop signal? Returns the largest signal number (0: none), on every rank.
static int dist_agree_stop(Dist* d, int local_signal) { return dist_max_int(d, local_signal); }

// crc32 of the parameters, compared across ranks: 0 if all ranks hold the same bits, else the
// first rank that differs from rank 0. *crc gets this rank's.
// Under expert parallelism the experts are each rank's own: only the rest is compared.
static int dist_check_replicas(Dist* d, const MoEModel* m, uint32_t* crc) {
    if (d->ep == NULL) {
        *crc = (uint32_t)crc32_big(crc32(0L, Z_NULL, 0), (const unsigned char*)m->params_memory, m->num_parameters * 4);
    } else {
        uLong c = crc32(0L, Z_NULL, 0);
        for (int i = 0; i < d->ep->n_rep; i++)
            c = crc32_big(c, (const unsigned char*)(m->params_memory + d->ep->rep[i][0]), (d->ep->rep[i][1] - d->ep->rep[i][0]) * 4);
        *crc = (uint32_t)c;
    }
    double mine = *crc, all[GRAD_NORM_CHUNKS] = {0};
    comm_allgather_doubles(d, &mine, 1, all);
    for (int r = 1; r < d->size; r++) if (all[r] != all[0]) return r;
    return 0;
}

// ----------------------------------------------------------------------------
// checkpoints: the single-process file, written by rank 0

// Collective. Under ZeRO-1 the moments are gathered to rank 0 first. Returns 0 or -1 with err
// on every rank (rank 0's outcome).
static int dist_save_checkpoint(Dist* d, MoEModel* m, const char* path, int step, uint64_t seed, int total_steps,
                                const TrainState* ts, char* err, size_t errlen) {
    dist_experts_gather(d, m, 1);  // expert parallelism: rank 0 needs every expert and its moments
    float* full_m = NULL, *full_v = NULL;
    if (d->zero) {
        size_t P = m->num_parameters, lo = d->shard[d->rank], n = d->shard[d->rank + 1] - lo;
        if (d->rank == 0) {
            full_m = (float*)mallocCheck(sizeof(float) * P);
            full_v = (float*)mallocCheck(sizeof(float) * P);
        }
#ifdef USE_MPI
        int counts[GRAD_NORM_CHUNKS], displs[GRAD_NORM_CHUNKS];
        for (int s = 0; s < d->size; s++) { counts[s] = (int)(d->shard[s + 1] - d->shard[s]); displs[s] = (int)d->shard[s]; }
        double t0 = dist_now();
        MPI_Gatherv(d->m_shard, (int)n, MPI_FLOAT, full_m, counts, displs, MPI_FLOAT, 0, MPI_COMM_WORLD);
        MPI_Gatherv(d->v_shard, (int)n, MPI_FLOAT, full_v, counts, displs, MPI_FLOAT, 0, MPI_COMM_WORLD);
        d->seconds += dist_now() - t0;
        if (d->rank == 0) d->bytes[COMM_OTHER] += 8.0 * (P - n);
#else
        memcpy(full_m, d->m_shard, n * sizeof(float));
        memcpy(full_v, d->v_shard, n * sizeof(float));
#endif
        m->m_memory = full_m;
        m->v_memory = full_v;
    }
    int rc = 0;
    if (d->rank == 0) rc = moe_save_checkpoint(m, path, 1, step, seed, total_steps, ts, err, errlen);
    if (d->zero) { free(full_m); free(full_v); m->m_memory = m->v_memory = NULL; }
    comm_bcast(d, &rc, sizeof(rc), 0);
    if (rc != 0 && d->rank != 0) set_err(err, errlen, "checkpoint %s: rank 0 could not write it", path);
    return rc;
}

// Bytes (by kind) and seconds since the last call; resets the counters.
static void dist_take_comm_stats(Dist* d, double* bytes, double* seconds) {
    memcpy(bytes, d->bytes, sizeof(d->bytes));
    *seconds = d->seconds;
    memset(d->bytes, 0, sizeof(d->bytes));
    d->seconds = 0.0;
}

#endif // MPI_MOE_H
