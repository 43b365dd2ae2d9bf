#!/bin/sh
# CI smoke test of the benchmark (no timing is asserted: CI machines vary):
#   dev/bench --quick --no-torch   every train_moe section runs once, 1 step per run; the report and its goals print
#   train_moe --profile            one step; the time-per-op table prints with every row
#   dev/ab_sgemm                   two builds of matmul.h in one process: the same bits when only the
#                                  blocking differs, different bits when KC does (the check can fail)
#   dev/ab_step                    two runs in one process: each side's losses are train_moe's own
# Prints "N passed, N failed" last. Budget: about a minute on 2 cores without PyTorch (73 s here).
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
    echo "^performance goals"
    echo "the same ratios paired in one process"
    echo "^  gatepro/topk  *step .*  cores [0-9.-]"   # with the cores the host gave the pairs
    echo "^  compete/topk  *step "
    [ "$(nproc)" -gt 1 ] && echo "^  1thread/[0-9]*  *step "
    [ "$(nproc)" -gt 1 ] && echo "threads speed-up on small"
    [ "$(nproc)" -gt 1 ] && echo "other load [0-9.]*  cores [0-9]"   # the host probe ran before the runs
    echo "  mem [0-9]"   # and the memory-bandwidth probe
    echo "of the 1-thread peak on cached operands.* (start; end [0-9.]*/[0-9.]*/[0-9.]*%)"   # the kernel at both ends
} > "$out.patterns"
while IFS= read -r pattern; do
    if grep -q -- "$pattern" "$out"; then ok "report has '$pattern'"; else bad "report lacks '$pattern'"; fi
done < "$out.patterns"
rm -f "$out.patterns"

# dev/bench_sgemm --kernel (dev/bench built it): the micro-kernel's three settings, each a figure
if dev/bench_sgemm --kernel > "$out" 2>&1 && [ "$(grep -c '^kernel .* GFLOP/s .* of peak$' "$out")" -eq 3 ] \
   && ! grep -q ' 0.00 GFLOP/s' "$out"; then ok "dev/bench_sgemm --kernel prints its three settings"
else bad "dev/bench_sgemm --kernel"; cat "$out"; fi

# dev/ab_sgemm: its own build against itself, against other blocking (MC, NC change only the speed),
# and against another K block (KC = 128 changes the sums of every shape whose K is longer than 128,
# and of no other: the check can fail both ways)
for variant in "same:" "blocking:-DSGEMM_MC=48 -DSGEMM_NC=256" "kc:-DSGEMM_KC=128"; do
    name=${variant%%:*}; flags=${variant#*:}
    if make -s dev/ab_sgemm AB_BFLAGS="$flags" > "$out" 2>&1 && dev/ab_sgemm --quick > "$out" 2>&1; then
        # per shape line (a two-word name first): K is field 8, the verdict the last; count the lines that are as expected
        as_expected=$(awk -v kc="$name" '$NF == "same" || $NF == "DIFFER" {
            want = (kc == "kc" && $8 > 128) ? "DIFFER" : "same"; n += ($NF == want) } END { print n + 0 }' "$out")
        if [ "$as_expected" -eq 27 ] && grep -q "^sum of the median times" "$out"; then
            ok "dev/ab_sgemm ($name): all 27 shapes' bits as expected"
        else bad "dev/ab_sgemm ($name): $as_expected of 27 shapes' bits as expected"; cat "$out"; fi
    else bad "dev/ab_sgemm ($name) did not build or run"; cat "$out"; fi
done
make -s dev/ab_sgemm > /dev/null 2>&1   # (leave the default build behind)

# dev/ab_step: two identical runs in one process each give train_moe's own loss at every step
dir=$(mktemp -d)
run="-x 3 -v 0 -s 0 --synthetic-tokens 200000"
if ./train_moe $run -o "$dir" > /dev/null 2>&1 && dev/ab_step --pairs 1 --a "$run" --b "$run" > "$out" 2>&1; then
    want=$(awk '/^s:2 trl:/{sub("trl:", "", $2); print $2}' "$dir/main.log")
    got=$(awk '$1=="A" || $1=="B"{print $NF}' "$out" | sort -u)
    if [ -n "$want" ] && [ "$got" = "$want" ]; then ok "dev/ab_step: both runs' step-2 loss is train_moe's ($want)"
    else bad "dev/ab_step: losses '$got', train_moe's '$want'"; cat "$out"; fi
    if grep -q '^ab_step step   B/A median [0-9.]* q25' "$out"; then ok "dev/ab_step prints its ratio line"
    else bad "dev/ab_step's ratio line"; cat "$out"; fi
else bad "dev/ab_step or train_moe did not run"; cat "$out"; fi
rm -rf "$dir"

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
