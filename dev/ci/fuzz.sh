#!/bin/sh
# libFuzzer on every file parser (checkpoints, shards .bin/.bin.gz, tokenizer files, multiple-choice
# .bin and JSONL, domain-label files and domains.txt), each for FUZZ_SECONDS (default 25) from the seed corpus in dev/fuzz/corpus/,
# under AddressSanitizer and UndefinedBehaviorSanitizer. A crash, leak, UB report or hang (a run
# over 10 s on one input) fails the harness; the reproducer is left in $dir.
# Needs clang with libFuzzer (Debian: clang, libclang-rt-14-dev or the clang version's equivalent).
set -u
cd "$(dirname "$0")/../.."
SECONDS_EACH=${FUZZ_SECONDS:-25}
passed=0; failed=0
if ! command -v clang >/dev/null 2>&1; then echo "SKIP: clang is not installed (apt-get install clang)"; echo "0 passed, 1 failed"; exit 1; fi
dir=$(mktemp -d /tmp/moe_fuzz_XXXXXX)
for h in checkpoint shard tokenizer mc domains; do
    bin="$dir/fuzz_$h"
    if ! clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined "dev/fuzz/fuzz_$h.c" -o "$bin" -lm -lz 2> "$dir/build_$h.txt"; then
        echo "FAIL fuzz_$h: does not build"; cat "$dir/build_$h.txt"; failed=$((failed + 1)); continue
    fi
    mkdir -p "$dir/corpus_$h"
    (cd "$dir" && "$bin" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
        "corpus_$h" "$OLDPWD/dev/fuzz/corpus/$h" > "$dir/log_$h.txt" 2>&1)
    rc=$?
    runs=$(grep -o 'Done [0-9]* runs' "$dir/log_$h.txt" | grep -o '[0-9]*' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$dir/log_$h.txt" | tail -1)
    if [ $rc -eq 0 ]; then
        echo "PASS fuzz_$h: ${runs:-?} inputs in ${SECONDS_EACH} s, ${cov:-cov ?}, no crash, leak, UB or hang"
        passed=$((passed + 1))
    else
        echo "FAIL fuzz_$h (exit $rc): see $dir/log_$h.txt"; tail -30 "$dir/log_$h.txt"; failed=$((failed + 1))
    fi
done
# truncations and bit flips of every seed file through every parser (ASan + UBSan)
if clang -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=undefined dev/fuzz/corrupt.c -o "$dir/corrupt" -lm -lz 2> "$dir/build_corrupt.txt"; then
    "$dir/corrupt" dev/fuzz/corpus > "$dir/corrupt.txt" 2>&1
    rc=$?
    grep -E '^(PASS|FAIL)' "$dir/corrupt.txt"
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$dir/corrupt.txt" | tail -1)
    if [ $rc -ne 0 ] && [ -z "$line" ]; then tail -20 "$dir/corrupt.txt"; failed=$((failed + 1)); fi
    [ -n "$line" ] && passed=$((passed + $(echo "$line" | cut -d' ' -f1))) && failed=$((failed + $(echo "$line" | cut -d' ' -f3)))
else
    echo "FAIL corrupt: does not build"; cat "$dir/build_corrupt.txt"; failed=$((failed + 1))
fi
[ $failed -eq 0 ] && rm -rf "$dir"
rm -f /dev/shm/moe_fuzz_* /tmp/moe_fuzz_*.bin /tmp/moe_fuzz_*.gz 2>/dev/null
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
