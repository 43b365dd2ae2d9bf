#!/bin/sh
# Router-study smoke suite: dev/experiments/router_study --quick (tiny models, 2 seeds, every
# router, both corpora, the wide setting), then checks that the table and figures are produced and
# that a second invocation redoes nothing. Needs python3 and python3-matplotlib (groff for the man
# pages domain: optional). Run from anywhere: sh dev/ci/study.sh. Prints "N passed, N failed" last.
# About 3 minutes on 2 idle cores.
cd "$(dirname "$0")/../.." || exit 1
. dev/ci/lib.sh
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
t0=$(date +%s)
python3 dev/experiments/router_study --quick -o "$dir/study" > "$dir/log.txt" 2>&1
rc=$?
tail -25 "$dir/log.txt"
check $rc "router_study --quick exits 0 ($(( $(date +%s) - t0 )) s)"
table="$dir/study/router_study.md"
check "$([ -s "$table" ] && echo 0 || echo 1)" "the table router_study.md is written"
for section in "## synthetic" "## multidomain" "## multidomain-wide-E16"; do
    check "$(grep -qx "$section" "$table" && echo 0 || echo 1)" "table section '$section'"
done
for row in "| topk |" "| gatepro λ=1e-4 |" "| gatepro λ=1e4 |" "| compete |" "| dense |"; do
    n=$(grep -c "^$row 2 | [0-9.]* ± [0-9.]*" "$table")
    check "$([ "$n" -ge 2 ] && echo 0 || echo 1)" "row '$row' with mean ± std over 2 seeds on both corpora (and the wide setting: $n rows)"
done
n=$(grep -c "^| gatepro λ=1e4 | 2 | [+-][0-9.]* ± [0-9.]* |" "$table")
check "$([ "$n" -ge 3 ] && [ "$(grep -c "^Paired differences against topk:" "$table")" -ge 3 ] && echo 0 || echo 1)" \
    "paired differences against topk (run - topk of the same seed, mean ± paired sd) in every setting ($n gatepro λ=1e4 rows)"
check "$(grep -q "MI/H(d) (chance)" "$table" && grep -q "bits/byte" "$table" && grep -q "cloze split acc" "$table" && echo 0 || echo 1)" \
    "MI with its chance level, bits/byte and both cloze columns"
for f in loss zero_tokens diversity; do
    check "$([ -s "$dir/study/figures/synthetic/$f.png" ] && [ -s "$dir/study/figures/multidomain/$f.png" ] && echo 0 || echo 1)" \
        "figure $f.png for both corpora"
done
python3 dev/experiments/router_study --quick -o "$dir/study" > "$dir/log2.txt" 2>&1
check "$(grep -Eq "\([0-9]+ finished earlier, 0 to do\)" "$dir/log2.txt" && echo 0 || echo 1)" "a second invocation redoes nothing: $(head -1 "$dir/log2.txt" | cut -c1-80)"
finish
