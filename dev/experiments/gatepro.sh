#!/usr/bin/env bash
# GatePro penalty ablation (SPEC §3.2): topk against gatepro with lambda in {1e-4, 1e-2, 1, 1e4},
# same seed, model and step budget, on the built-in synthetic corpus and on tinyshakespeare.
# Writes one run directory per run and a Markdown table per corpus (dev/experiments/summarize.py).
#   dev/experiments/gatepro.sh [TINYSHAKESPEARE_TXT] [OUTDIR]
# The text is only needed if data/tinyshakespeare/ is not prepared yet (default
# ../shared/data/tinyshakespeare.txt). Runs without a load-balance loss (--aux-loss 0), so the
# zero-token experts GatePro is meant to revive are there to see; E=16, K=2, H=4C/K. About 15
# minutes on 2 cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
text=${1:-../shared/data/tinyshakespeare.txt}
out=${2:-runs/gatepro}
make -s train_moe data/prepare_text
[ -f data/tinyshakespeare/tiny_shakespeare_train.bin ] || sh data/tinyshakespeare.sh "$text"
common="--layers 4 --channels 128 --heads 4 --experts 16 --top-k 2 --expert-hidden 256 --aux-loss 0 -b 16 -t 64 -x 300 -v 50 -m 16 --seed 1337"
for corpus in synthetic shakespeare; do
    data=""
    [ "$corpus" = shakespeare ] && data="-i data/tinyshakespeare/tiny_shakespeare_train.bin -j data/tinyshakespeare/tiny_shakespeare_val.bin"
    mkdir -p "$out/$corpus"
    runs="$out/$corpus/topk"
    echo "== $corpus: topk"
    ./train_moe $common $data -o "$out/$corpus/topk" > "$out/$corpus/topk.txt" 2>&1
    for lambda in 1e-4 1e-2 1 1e4; do
        echo "== $corpus: gatepro lambda $lambda"
        ./train_moe $common $data --router gatepro --gatepro-lambda "$lambda" -o "$out/$corpus/gatepro_$lambda" \
            > "$out/$corpus/gatepro_$lambda.txt" 2>&1
        runs="$runs $out/$corpus/gatepro_$lambda"
    done
    python3 dev/experiments/summarize.py $runs | tee "$out/$corpus/table.md"
done
