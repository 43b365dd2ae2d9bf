#!/bin/sh
# dev/plot suite: tiny train_moe runs (2 routers x 2 seeds, synthetic corpus), then dev/plot on one
# run, on several, and with --group in PNG, PDF and SVG; checks the files it writes. Needs
# python3-matplotlib. Run from anywhere: sh dev/ci/plot.sh. Prints "N passed, N failed" last.
# About 20 s on 2 cores.
cd "$(dirname "$0")/../.." || exit 1
. dev/ci/lib.sh
if ! /usr/bin/python3 -c "import matplotlib" 2>/dev/null; then
    bad "python3-matplotlib is not installed (apt-get install python3-matplotlib)"
    finish
fi
make -s train_moe >/dev/null 2>&1 || { bad "make train_moe"; finish; }
dir=$(mktemp -d)
trap '[ -n "$KEEP" ] || rm -rf "$dir"' EXIT
export OMP_NUM_THREADS=1
small="--synthetic-tokens 40000 --layers 2 --channels 32 --heads 2 --experts 4 -b 4 -t 16 -x 12 -v 4 -m 2"
for router in topk gatepro; do
    for seed in 1 2; do
        mkdir -p "$dir/runs/$router"
        ./train_moe $small --router $router --seed $seed -o "$dir/runs/$router/seed$seed" > "$dir/train_$router$seed.txt" 2>&1 \
            || bad "train_moe --router $router --seed $seed (see $dir/train_$router$seed.txt)"
    done
done
# the final validation's probe similarity is in metrics.tsv (step 12, one row per layer)
rows=$(awk -F'\t' '$1 == 12 && $13 != "nan"' "$dir/runs/topk/seed1/metrics.tsv" | wc -l)
check "$([ "$rows" -eq 2 ] && echo 0 || echo 1)" "metrics.tsv holds the final validation's expert-output similarity (2 layers: $rows rows)"
# one run: its own directory
dev/plot "$dir/runs/topk/seed1" > "$dir/plot1.txt" 2>&1
check $? "dev/plot on one run"
for f in loss zero_tokens diversity expert_load_seed1 expert_domain_seed1; do
    [ -s "$dir/runs/topk/seed1/$f.png" ] || bad "dev/plot one run: $f.png missing or empty"
done
# several runs, PDF and SVG beside PNG
dev/plot "$dir"/runs/*/seed1 -o "$dir/several" --format png,pdf,svg > "$dir/plot2.txt" 2>&1
check $? "dev/plot on two runs, --format png,pdf,svg"
n=0
for f in loss zero_tokens diversity; do
    for ext in png pdf svg; do [ -s "$dir/several/$f.$ext" ] && n=$((n + 1)); done
done
check "$([ $n -eq 9 ] && echo 0 || echo 1)" "three figures in three formats ($n of 9 files)"
check "$(head -c 4 "$dir/several/loss.pdf" | grep -q '%PDF' && grep -q '<svg' "$dir/several/loss.svg" && echo 0 || echo 1)" \
    "the PDF is a PDF and the SVG an SVG"
# groups: mean ± std over seeds; domain maps of each group's first run on one colour scale
dev/plot --group --no-per-run "$dir"/runs/*/seed* -o "$dir/grouped" > "$dir/plot3.txt" 2>&1
check $? "dev/plot --group on 2 routers x 2 seeds"
n=0
for f in loss zero_tokens diversity expert_domain_topk expert_domain_gatepro; do [ -s "$dir/grouped/$f.png" ] && n=$((n + 1)); done
check "$([ $n -eq 5 ] && echo 0 || echo 1)" "grouped figures: loss, zero_tokens, diversity, a domain map per group ($n of 5)"
check "$(ls "$dir/grouped" | grep -c expert_load | grep -qx 0 && echo 0 || echo 1)" "--no-per-run: no load heat maps"
# a bad format is refused
dev/plot "$dir/runs/topk/seed1" --format jpg > "$dir/plot4.txt" 2>&1
check "$([ $? -ne 0 ] && grep -q "choose among png, pdf, svg" "$dir/plot4.txt" && echo 0 || echo 1)" "--format jpg refused"
finish
