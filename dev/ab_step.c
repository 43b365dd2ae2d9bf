// In-process A/B of two training runs: which one's step is slower, and by how much?
//
// dev/ab_sgemm does this for two builds of the matmul; this does it for two sets of train_moe flags
// (a router against another, E = 64 against E = 8, one thread against two). Both runs are set up in
// one process, as train_moe sets up one, and then take turns, one optimizer step each (A B, B A,
// A B, ...): each pair of steps sees the same machine, so the neighbours' load, which on a shared
// host moves a whole step's time by 30% from one process to the next, cancels in the pair's ratio.
// Reported: each side's median step time (forward + backward + optimizer, as train_moe's ms), the
// median of the pairs' ratios B/A with its quartiles, and the ratio of the two sides' mean step
// times (the right figure when some steps cost more, as CompeteSMoE's competition steps do).
//
//   make dev/ab_step
//   OMP_PROC_BIND=true dev/ab_step [--pairs N] [--threads-a N] [--threads-b N] [--profile] --a "FLAGS" --b "FLAGS"
//
// FLAGS are train_moe's (split at spaces; no quoting inside). No files are written: the runs have
// no output directory, no validation, no checkpoints. Each side steps through its own data from
// step 0, with its own schedule (pass -x at least the pairs + 2 warm-up steps).
// --threads-a/-b: the OpenMP threads each side's steps run on (default: OMP_NUM_THREADS).
// --profile: also each op's mean time on both sides (train_moe --profile's ops), to see where a
// difference comes from.
// The runs' results are their own: the same flags give the same losses as train_moe's.
#define TRAIN_MOE_NO_MAIN
#include "../train_moe.c"

static int cmp_doubles(const void* x, const void* y) {
    double a = *(const double*)x, b = *(const double*)y;
    return (a > b) - (a < b);
}

// a run set up as train_moe's main does, from a flag string, without its output files
static void ab_setup(Run* run, char* flags, char** argv, int max_args) {
    int argc = 0;
    argv[argc++] = "ab_step";
    for (char* tok = strtok(flags, " "); tok != NULL; tok = strtok(NULL, " ")) {
        if (argc >= max_args - 1) die("ab_step: too many flags");
        argv[argc++] = tok;
    }
    argv[argc] = NULL;
    dist_init(&run->dist, &argc, &argv);
    static FlagSpec flag_specs[NUM_FLAGS];
    memcpy(flag_specs, FLAGS, sizeof(FLAGS));
    flags_parse(&run->flags, flag_specs, NUM_FLAGS, "ab_step --a \"train_moe flags\" --b \"train_moe flags\"", argc, argv);
    if (run->flags.given[F_INIT]) die("ab_step: -e is not supported here (start both runs from scratch)");
    parse_settings(&run->set, &run->flags, run->dist.size);
    setup_data(&run->data, &run->set, &run->flags);
    setup_model(run);
    open_data_loaders(&run->data, &run->set, &run->flags);
    setup_schedule(run);
    dist_setup(&run->dist, &run->model, run->set.zero, run->set.expert_parallel);
    alloc_step_outputs(run);
    run->out.profiling = 0;
}

static int ab_int(const char* text, const char* flag, int lo, int hi) {   // a whole integer in [lo, hi], or a clear error
    char* end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < lo || v > hi) die("ab_step: %s needs an integer in %d..%d, got '%s'", flag, lo, hi, text);
    return (int)v;
}

int main(int argc, char** argv) {
    int pairs = 20, threads[2] = {0, 0}, profile = 0;
    char* flags[2] = {NULL, NULL};
    for (int i = 1; i < argc; i++) {
        int last = i + 1 >= argc;
        if (strcmp(argv[i], "--pairs") == 0 && !last) pairs = ab_int(argv[++i], "--pairs", 1, 100000);
        else if (strcmp(argv[i], "--threads-a") == 0 && !last) threads[0] = ab_int(argv[++i], "--threads-a", 1, 1024);
        else if (strcmp(argv[i], "--threads-b") == 0 && !last) threads[1] = ab_int(argv[++i], "--threads-b", 1, 1024);
        else if (strcmp(argv[i], "--profile") == 0) profile = 1;
        else if (strcmp(argv[i], "--a") == 0 && !last) flags[0] = strdup(argv[++i]);
        else if (strcmp(argv[i], "--b") == 0 && !last) flags[1] = strdup(argv[++i]);
        else die("usage: dev/ab_step [--pairs N] [--threads-a N] [--threads-b N] [--profile] --a \"FLAGS\" --b \"FLAGS\"");
    }
    if (flags[0] == NULL || flags[1] == NULL) die("ab_step: give both --a and --b (train_moe flags)");
    int default_threads = omp_get_max_threads();
    for (int s = 0; s < 2; s++) {
        if (threads[s] == 0) threads[s] = default_threads;
    }
    // step 1: both runs, set up with the most threads either side uses (per-thread buffers)
    static Run runs[2];
    static char* run_argv[2][512];
    omp_set_num_threads(threads[0] > threads[1] ? threads[0] : threads[1]);
    for (int s = 0; s < 2; s++) {
        ab_setup(&runs[s], flags[s], run_argv[s], 512);
        if (runs[s].set.steps < pairs + 2) die("ab_step: side %c runs %d steps (-x); it needs at least %d (--pairs + 2 warm-up)",
                                               'A' + s, runs[s].set.steps, pairs + 2);
        const MoEConfig* c = &runs[s].model.config;
        printf("%c: L=%d C=%d E=%d K=%d H=%d B=%d T=%d router %s, %d thread%s, %zu parameters\n", 'A' + s, c->num_layers,
               c->channels, c->n_expert, c->top_k, c->expert_hidden, runs[s].set.B, runs[s].set.T,
               ROUTER_NAMES[runs[s].model.router.router], threads[s], threads[s] == 1 ? "" : "s", runs[s].model.num_parameters);
    }
    // step 2: the steps, in turns; the first pair is a warm-up (page faults, packing buffers)
    double* ms[2] = {(double*)callocCheck(pairs, sizeof(double)), (double*)callocCheck(pairs, sizeof(double))};
    double* fb[2] = {(double*)callocCheck(pairs, sizeof(double)), (double*)callocCheck(pairs, sizeof(double))};
    double* ratio = (double*)callocCheck(pairs, sizeof(double));
    double* fb_ratio = (double*)callocCheck(pairs, sizeof(double));
    double sum[2] = {0.0, 0.0}, fwdbwd[2] = {0.0, 0.0}, opt[2] = {0.0, 0.0};
    int step[2] = {0, 0};
    float last_loss[2] = {0.0f, 0.0f};
    for (int r = -2; r < pairs; r++) {
        for (int s = 0; s < 2 && r == 0; s++) {   // the profile starts after the warm-up
            runs[s].out.profiling = profile;
            memset(&runs[s].out.profile, 0, sizeof(MoEProfile));
        }
        for (int k = 0; k < 2; k++) {
            int s = (r & 1) ? k : 1 - k;   // A B, then B A: a slow drift costs both alike
            omp_set_num_threads(threads[s]);
            StepStats st;
            double metrics_seconds = 0.0;
            if (optimizer_step(&runs[s], step[s], &st, &metrics_seconds) != 0)
                die("ab_step: side %c, step %d: loss or gradient norm not finite", 'A' + s, step[s]);
            step[s]++;
            last_loss[s] = st.loss;
            if (r < 0) continue;
            ms[s][r] = st.ms;
            fb[s][r] = st.fwdbwd_ms;
            sum[s] += st.ms;
            fwdbwd[s] += st.fwdbwd_ms;
            opt[s] += st.opt_ms;
        }
    }
    // step 3: the figures
    for (int r = 0; r < pairs; r++) { ratio[r] = ms[1][r] / ms[0][r]; fb_ratio[r] = fb[1][r] / fb[0][r]; }
    qsort(ratio, pairs, sizeof(double), cmp_doubles);
    qsort(fb_ratio, pairs, sizeof(double), cmp_doubles);
    for (int s = 0; s < 2; s++) { qsort(ms[s], pairs, sizeof(double), cmp_doubles); qsort(fb[s], pairs, sizeof(double), cmp_doubles); }
    printf("%d pairs after 2 warm-up pairs; per side, median ms per step (mean fwd+bwd, mean opt), and the last step's loss:\n", pairs);
    for (int s = 0; s < 2; s++)
        printf("  %c  %8.1f ms  (%.1f, %.1f)  step %d loss %.6f\n", 'A' + s, ms[s][pairs / 2], fwdbwd[s] / pairs, opt[s] / pairs,
               step[s] - 1, last_loss[s]);
    if (profile) {   // each op's mean ms per step on both sides (forward + backward), as train_moe --profile
        printf("  %-30s %9s %9s %9s\n", "op (fwd + bwd)", "A ms", "B ms", "B - A");
        for (int op = 0; op < PROF_OPS; op++) {
            double a = 0.0, b = 0.0;
            for (int pass = 0; pass < 2; pass++) {
                a += runs[0].out.profile.seconds[pass][op] * 1000.0 / pairs;
                b += runs[1].out.profile.seconds[pass][op] * 1000.0 / pairs;
            }
            printf("  %-30s %9.2f %9.2f %+9.2f\n", PROF_NAMES[op], a, b, b - a);
        }
    }
    // one machine-readable line per figure (dev/bench reads them): the pairs' median ratio B/A,
    // its quartiles, and the ratio of the two sides' means
    printf("ab_step step   B/A median %.4f q25 %.4f q75 %.4f means %.4f\n", ratio[pairs / 2], ratio[pairs / 4],
           ratio[(3 * pairs) / 4], sum[1] / sum[0]);
    printf("ab_step fwdbwd B/A median %.4f q25 %.4f q75 %.4f means %.4f\n", fb_ratio[pairs / 2], fb_ratio[pairs / 4],
           fb_ratio[(3 * pairs) / 4], fwdbwd[1] / fwdbwd[0]);
    return 0;
}
