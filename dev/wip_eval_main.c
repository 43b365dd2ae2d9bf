// Standalone driver for dev/wip_eval_tests.c (test_moe.c defines the same two things):
//   gcc -O2 -fopenmp -Wall -Wextra -Wno-unused-function dev/wip_eval_main.c -o /tmp/evaltest -lz -lm && /tmp/evaltest
#include <stdio.h>

static int tests_passed, tests_failed;
#define CHECK(cond, ...) do { if (cond) tests_passed++; else { tests_failed++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } while (0)

#include "wip_eval_tests.c"

int main(void) {
    test_eval();
    printf("eval: %d passed, %d failed\n", tests_passed, tests_failed);
    return tests_failed == 0 ? 0 : 1;
}
