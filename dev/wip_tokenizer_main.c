// Standalone driver for dev/wip_tokenizer_tests.c (test_moe.c includes the same tests):
//   gcc -O2 -Wall -Wextra -fsanitize=address,undefined -o dev/wip_tokenizer_main dev/wip_tokenizer_main.c
#include <stdio.h>

static int tests_passed, tests_failed;
#define CHECK(cond, ...) do { if (cond) tests_passed++; else { tests_failed++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } while (0)

#include "wip_tokenizer_tests.c"

int main(void) {
    test_tokenizer();
    printf("%d passed, %d failed\n", tests_passed, tests_failed);
    return tests_failed != 0;
}
