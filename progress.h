/*
progress.h -- wall time, a training run's ETA, and the progress line of a long pass.

A pass (eval_moe's loss or multiple-choice pass) reports on stderr at most once every
PROGRESS_EVERY seconds, and only once it has run that long, so short passes print nothing:
    eval_moe: loss pass  37% (120/324 batches), 24 s, ETA 0m41s
*/
#ifndef PROGRESS_H
#define PROGRESS_H

#include <stdio.h>
#include <time.h>

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// "1h05m" from an hour on, else "4m07s"
static void format_eta(char* buf, size_t n, double seconds) {
    if (!(seconds >= 0)) seconds = 0;  // also NaN
    int s = (int)(seconds + 0.5);
    if (s >= 3600) snprintf(buf, n, "%dh%02dm", s / 3600, s / 60 % 60);
    else snprintf(buf, n, "%dm%02ds", s / 60, s % 60);
}

// A training run's time left after a step: the mean optimizer-step time (validation and samples
// excluded, so the step-0 validation does not inflate it) times the steps left, plus the mean
// validation time times the validations left.
static double run_eta_seconds(double step_seconds, int steps_done, int steps_left, double val_seconds, int val_passes,
                              int vals_left) {
    double eta = steps_done > 0 ? step_seconds / steps_done * steps_left : 0.0;
    if (val_passes > 0) eta += val_seconds / val_passes * vals_left;
    return eta;
}

// Validations still to come after optimizer step `step` (0-based) of `steps`: one before every
// step that is a multiple of val_every, and one at the end.
static int validations_left(int step, int steps, int val_every) {
    if (val_every <= 0) return 0;
    return steps / val_every - step / val_every + (steps % val_every != 0);
}

#define PROGRESS_EVERY 2.0
typedef struct {
    const char* what;   // "eval_moe: loss pass"
    const char* unit;   // "batches"
    double t_start, t_last;
} Progress;

static void progress_begin(Progress* p, const char* what, const char* unit, double now) {
    p->what = what; p->unit = unit;
    p->t_start = p->t_last = now;
}

// After `done` of `total` units at time `now`: one line on out when PROGRESS_EVERY seconds have
// passed since the start or the last line. Returns 1 when it printed.
static int progress_tick(Progress* p, long done, long total, double now, FILE* out) {
    if (now - p->t_last < PROGRESS_EVERY || done <= 0 || total <= 0) return 0;
    p->t_last = now;
    double elapsed = now - p->t_start;
    char eta[32];
    format_eta(eta, sizeof(eta), elapsed / done * (total - done));
    fprintf(out, "%s %3.0f%% (%ld/%ld %s), %.0f s, ETA %s\n", p->what, 100.0 * done / total, done, total,
            p->unit, elapsed, eta);
    fflush(out);
    return 1;
}

#endif // PROGRESS_H
