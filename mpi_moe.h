/*
mpi_moe.h — train_moe on several processes (MPI ranks, one machine or many): data parallelism and
ZeRO-1. Built with -DUSE_MPI (make USE_MPI=1, or make train_moe_mpi); without it there is one
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

typedef struct {
    int rank, size;      // this process and how many there are (0 and 1 without MPI)
    int zero;            // ZeRO-1: this rank keeps the AdamW moments of its shard only
    size_t* shard;       // (size+1) rank r owns parameters [shard[r], shard[r+1]): whole norm chunks
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

static void dist_finalize(Dist* d) {
    free(d->shard); free(d->chunk); free(d->recv); free(d->m_shard); free(d->v_shard);
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
// setup: shards of the parameter buffer

// Rank r's shard is norm chunks [floor(r*CH/R), floor((r+1)*CH/R)). Under ZeRO-1 the moments of
// a loaded checkpoint (full, on every rank) are cut down to this rank's shard.
static void dist_setup(Dist* d, MoEModel* m, int zero) {
    if (d->size > GRAD_NORM_CHUNKS) die("at most %d MPI ranks (the gradient is cut into that many chunks), got %d",
                                        GRAD_NORM_CHUNKS, d->size);
    size_t P = m->num_parameters, chunk = grad_norm_chunk(P);
    d->zero = zero;
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
            free(m->m_memory); free(m->v_memory);
            m->m_memory = m->v_memory = NULL;
        }
    }
}

// ----------------------------------------------------------------------------
// data parallelism: gradients, norm, update

// Sums every rank's gradient in rank order. Afterwards rank r holds the sum on its shard and,
// without ZeRO-1, everywhere; under ZeRO-1 the rest of its gradient is zeroed (consumed).
static void dist_reduce_gradients(Dist* d, MoEModel* m) {
    if (d->size == 1) return;
    int R = d->size, me = d->rank;
    int scounts[GRAD_NORM_CHUNKS], sdispls[GRAD_NORM_CHUNKS], rcounts[GRAD_NORM_CHUNKS], rdispls[GRAD_NORM_CHUNKS];
    int mine = (int)(d->shard[me + 1] - d->shard[me]);
    for (int s = 0; s < R; s++) {
        scounts[s] = (int)(d->shard[s + 1] - d->shard[s]);
        sdispls[s] = (int)d->shard[s];  // < INT_MAX? checked below through the shard bound
        rcounts[s] = mine;
        rdispls[s] = s * mine;
    }
    if (m->num_parameters > INT_MAX) die("dist: %zu parameters exceed MPI's int offsets", m->num_parameters);
    comm_alltoallv(d, COMM_GRADS, m->grads_memory, scounts, sdispls, d->recv, rcounts, rdispls);
    float* g = m->grads_memory + d->shard[me];
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
        comm_allgatherv(d, COMM_GRADS, m->grads_memory, scounts, sdispls);
    }
}

// ||g|| of the summed gradient: under ZeRO-1 each rank has its chunks' partial sums, gathered and
// summed in chunk order; the same bits as grad_global_norm on the whole gradient.
static float dist_grad_norm(Dist* d, const MoEModel* m) {
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
}

// Did any rank get a stop signal? Returns the largest signal number (0: none), on every rank.
static int dist_agree_stop(Dist* d, int local_signal) { return dist_max_int(d, local_signal); }

// crc32 of the parameters, compared across ranks: 0 if all ranks hold the same bits, else the
// first rank that differs from rank 0. *crc gets this rank's.
static int dist_check_replicas(Dist* d, const MoEModel* m, uint32_t* crc) {
    *crc = (uint32_t)crc32_big(crc32(0L, Z_NULL, 0), (const unsigned char*)m->params_memory, m->num_parameters * 4);
    double mine = *crc, all[GRAD_NORM_CHUNKS];
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
