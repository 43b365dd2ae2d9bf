/*
flags.h — the command-line flags of train_moe, eval_moe and make_cloze: each program declares
one table (name, llm.c-style short letter, whether it takes a value, default, help); --help
prints that table, getopt_long reads the command line, and flag_int/flag_float/flag_choice turn
values into numbers with a clear error naming the flag. Needs moe.h's die().
*/
#ifndef FLAGS_H
#define FLAGS_H

#include <getopt.h>

typedef struct {
    const char* name;   // long name
    int short_name;     // llm.c's short flag where one exists, else 0
    int takes_value;
    const char* def;    // default, as text
    const char* help;
} FlagSpec;

#define MAX_FLAGS 64
typedef struct {
    const FlagSpec* spec;
    int count;
    const char* value[MAX_FLAGS];  // the value given, else the default
    int given[MAX_FLAGS];          // 1 if on the command line
} Flags;

static void flags_print_help(const FlagSpec* spec, int count, const char* usage) {
    printf("usage: %s\n\n", usage);
    for (int i = 0; i < count; i++) {
        char names[64];
        if (spec[i].short_name) snprintf(names, sizeof(names), "-%c, --%s", spec[i].short_name, spec[i].name);
        else snprintf(names, sizeof(names), "    --%s", spec[i].name);
        printf("  %-26s %s", names, spec[i].help);
        if (spec[i].takes_value && spec[i].def[0]) printf(" [%s]", spec[i].def);
        printf("\n");
    }
}

// Reads argv against the table; a flag named "help" prints the table and exits 0.
static void flags_parse(Flags* f, const FlagSpec* spec, int count, const char* usage, int argc, char** argv) {
    if (count > MAX_FLAGS) die("flags.h: %d flags, MAX_FLAGS is %d", count, MAX_FLAGS);
    struct option longopts[MAX_FLAGS + 1];
    char shortopts[3 * MAX_FLAGS + 2] = ":";
    f->spec = spec;
    f->count = count;
    for (int i = 0; i < count; i++) {
        f->value[i] = spec[i].def;
        f->given[i] = 0;
        longopts[i] = (struct option){spec[i].name, spec[i].takes_value ? required_argument : no_argument, NULL, 1000 + i};
        if (spec[i].short_name) {
            size_t len = strlen(shortopts);
            shortopts[len] = (char)spec[i].short_name;
            shortopts[len + 1] = spec[i].takes_value ? ':' : '\0';
            shortopts[len + 2] = '\0';
        }
    }
    longopts[count] = (struct option){0, 0, 0, 0};
    optind = 0;  // a full re-initialisation (glibc), so a program's main can run twice in one process (tests)
    int opt;
    while ((opt = getopt_long(argc, argv, shortopts, longopts, NULL)) != -1) {
        int id = -1;
        if (opt >= 1000) id = opt - 1000;
        else if (opt == '?') die("unknown flag '%s' (see --help)", argv[optind - 1]);
        else if (opt == ':') die("flag '%s' needs a value (see --help)", argv[optind - 1]);
        else for (int i = 0; i < count; i++) if (spec[i].short_name == opt) id = i;
        if (id < 0) die("unknown flag (see --help)");
        f->value[id] = spec[id].takes_value ? optarg : "1";
        f->given[id] = 1;
    }
    if (optind < argc) die("unexpected argument '%s' (flags only; see --help)", argv[optind]);
    for (int i = 0; i < count; i++)
        if (f->given[i] && strcmp(spec[i].name, "help") == 0) { flags_print_help(spec, count, usage); exit(0); }
}

static long flag_int(const Flags* f, int id, long lo, long hi) {
    const char* s = f->value[id];
    char* end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end) die("--%s: '%s' is not an integer", f->spec[id].name, s);
    if (v < lo || v > hi) die("--%s: %ld is outside [%ld, %ld]", f->spec[id].name, v, lo, hi);
    return v;
}
static float flag_float(const Flags* f, int id, float lo, float hi) {
    const char* s = f->value[id];
    char* end;
    errno = 0;
    float v = strtof(s, &end);
    if (end == s || *end || !isfinite(v) || (errno && fabsf(v) > 1.0f))
        die("--%s: '%s' is not a finite number", f->spec[id].name, s);
    if (errno) die("--%s: '%s' is too small for a float (it would be 0 or lose precision)", f->spec[id].name, s);
    if (v < lo || v > hi) die("--%s: %g is outside [%g, %g]", f->spec[id].name, v, lo, hi);
    return v;
}
static int flag_choice(const Flags* f, int id, const char* const* names, int n) {
    for (int i = 0; i < n; i++) if (strcmp(f->value[id], names[i]) == 0) return i;
    die("--%s: '%s' is not one of the choices (see --help)", f->spec[id].name, f->value[id]);
    return -1;
}

#endif // FLAGS_H
