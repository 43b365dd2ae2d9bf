#!/bin/sh
# CI smoke test of the benchmark (no timing is asserted: CI machines vary):
#   dev/bench --quick --no-torch   every train_moe section runs once, 1 step per run; the report and its goals print
#   train_moe --profile            one step; the time-per-op table prints with every row
# Prints "N passed, N failed" last. Budget: well under a minute on 2 cores without PyTorch.
cd "$(dirname "$0")/../.." || exit 1
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "PASS $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }
out=$(mktemp)
trap 'rm -f "$out"' EXIT

if dev/bench --quick --no-torch > "$out" 2>&1; then ok "dev/bench --quick exits 0"; else bad "dev/bench --quick exits non-zero"; tail -20 "$out"; fi
# the report's sections (the 1-thread row only where there is more than one CPU)
{
    echo "^small  train_moe  "
    echo "^small  router-compete"
    echo "AdamW step <= 1.3x the memory-traffic floor (small)"
    echo "small  all six together"
    echo "performance goals:"
    [ "$(nproc)" -gt 1 ] && echo "threads speed-up on small"
    [ "$(nproc)" -gt 1 ] && echo "other load [0-9.]*  cores [0-9]"   # the host probe ran before the runs
    echo "  mem [0-9]"   # and the memory-bandwidth probe
} > "$out.patterns"
while IFS= read -r pattern; do
    if grep -q -- "$pattern" "$out"; then ok "report has '$pattern'"; else bad "report lacks '$pattern'"; fi
done < "$out.patterns"
rm -f "$out.patterns"

# dev/bench_sgemm --kernel (dev/bench built it): the micro-kernel's three settings, each a figure
if dev/bench_sgemm --kernel > "$out" 2>&1 && [ "$(grep -c '^kernel .* GFLOP/s .* of peak$' "$out")" -eq 3 ] \
   && ! grep -q ' 0.00 GFLOP/s' "$out"; then ok "dev/bench_sgemm --kernel prints its three settings"
else bad "dev/bench_sgemm --kernel"; cat "$out"; fi

# train_moe --profile: one step of the default model; the table and its every row
dir=$(mktemp -d)
if ./train_moe -x 1 -v 0 --synthetic-tokens 200000 --profile -o "$dir" > "$out" 2>&1; then ok "train_moe --profile exits 0"
else bad "train_moe --profile exits non-zero"; tail -20 "$out"; fi
for row in "profile: time per op" "  embedding " "  attention " "  expert FFN " "  LM head + cross-entropy " \
           "  optimizer (norm, clip, AdamW) " "  metrics " "  step "; do
    if grep -q -- "$row" "$out"; then ok "--profile table has '$row'"; else bad "--profile table lacks '$row'"; fi
done
rm -rf "$dir"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
