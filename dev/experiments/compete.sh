#!/usr/bin/env bash
# CompeteSMoE ablation (COMPETESMOE.md): topk against compete at --compete-rate in
# {0.02, 0.05, 0.2, 1.0}, same seed, model and step budget, on the built-in synthetic corpus and on
# tinyshakespeare. Tabulates final val loss, router-competition agreement, expert-output
# similarity (representation collapse) and the wall-clock overhead relative to topk
# (dev/experiments/summarize.py; time = the sum of the per-step times, validation excluded).
#   dev/experiments/compete.sh [TINYSHAKESPEARE_TXT] [OUTDIR]
# The model is train_moe's default (L=4, C=128, E=8, K=2). About 15 minutes on 2 cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
text=${1:-../shared/data/tinyshakespeare.txt}
out=${2:-runs/compete}
make -s train_moe data/prepare_text
[ -f data/tinyshakespeare/tiny_shakespeare_train.bin ] || sh data/tinyshakespeare.sh "$text"
common="--layers 4 --channels 128 --heads 4 --experts 8 --top-k 2 -b 16 -t 64 -x 300 -v 50 -m 16 --seed 1337"
for corpus in synthetic shakespeare; do
    data=""
    [ "$corpus" = shakespeare ] && data="-i data/tinyshakespeare/tiny_shakespeare_train.bin -j data/tinyshakespeare/tiny_shakespeare_val.bin"
    mkdir -p "$out/$corpus"
    runs="$out/$corpus/topk"
    echo "== $corpus: topk"
    ./train_moe $common $data -o "$out/$corpus/topk" > "$out/$corpus/topk.txt" 2>&1
    for rate in 0.02 0.05 0.2 1.0; do
        echo "== $corpus: compete rate $rate"
        ./train_moe $common $data --router compete --compete-rate "$rate" -o "$out/$corpus/compete_$rate" \
            > "$out/$corpus/compete_$rate.txt" 2>&1
        runs="$runs $out/$corpus/compete_$rate"
    done
    python3 dev/experiments/summarize.py $runs | tee "$out/$corpus/table.md"
done
