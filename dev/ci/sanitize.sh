#!/bin/sh
# make sanitize: the whole fast test suite (test_moe, which also runs train_moe and eval_moe as a
# user would, and dev/test_sgemm) built with AddressSanitizer and UndefinedBehaviorSanitizer, in a copy of the tree so
# the normal binaries are untouched. Any sanitizer report fails the run (halt_on_error). Leak
# checking is off: the tools exit through die() with their buffers live, by design.
set -u
cd "$(dirname "$0")/../.."
CC=${CC:-gcc}
dir=$(mktemp -d /tmp/moe_sanitize_XXXXXX)
trap 'rm -rf "$dir"' EXIT
if git rev-parse --git-dir > /dev/null 2>&1; then git ls-files | tar cf - -T - | (cd "$dir" && tar xf -); else cp -r . "$dir"; fi
cd "$dir"
SAN="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined"
if ! make -s CC="$CC" CFLAGS="$SAN -march=native -Wall -Wextra -Wno-unused-function -Wno-psabi" all test_moe dev/test_sgemm > build.txt 2>&1; then
    echo "FAIL: the sanitizer build failed"; tail -30 build.txt; echo "0 passed, 1 failed"; exit 1
fi
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:halt_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
./test_moe > test.txt 2>&1
rc=$?
./dev/test_sgemm > sgemm.txt 2>&1   # the matmul kernels, whose in-place reads must stay inside the operands
rc2=$?
cat sgemm.txt >> test.txt
grep -E '^(FAIL|==[0-9]+==ERROR)|runtime error' test.txt | head -20
grep -c 'runtime error\|==ERROR' test.txt > /dev/null && { echo "FAIL: sanitizer reports above"; }
line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' test.txt | head -1)
line2=$(grep -E '^[0-9]+ passed, [0-9]+ failed' sgemm.txt | tail -1)
echo "test_moe under ASan+UBSan: ${line:-no result line (crashed: exit $rc)}"
echo "dev/test_sgemm under ASan+UBSan: ${line2:-no result line (crashed: exit $rc2)}"
passed=$(( $(echo "${line:-0 passed, 0 failed}" | cut -d' ' -f1) + $(echo "${line2:-0 passed, 0 failed}" | cut -d' ' -f1) ))
failed=$(( $(echo "${line:-0 passed, 0 failed}" | cut -d' ' -f3) + $(echo "${line2:-0 passed, 0 failed}" | cut -d' ' -f3) ))
if grep -q 'runtime error\|==ERROR' test.txt || [ -z "$line" ] || [ -z "$line2" ]; then
    echo "$passed passed, $((failed + 1)) failed"; exit 1
fi
echo "$passed passed, $failed failed"
[ $rc -eq 0 ] && [ $rc2 -eq 0 ]
