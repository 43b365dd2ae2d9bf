#!/usr/bin/env bash
# The shared body of gatepro.sh and compete.sh: one baseline run and one run per value of a router
# flag, on the built-in synthetic corpus and on tinyshakespeare, same seed, model and step budget;
# then a Markdown table per corpus (summarize.py). Sourced, not run:
#   ablation ROUTER FLAG "VALUES" OUTDIR TEXT COMMON_FLAGS
set -euo pipefail
ablation() {
    local router=$1 flag=$2 values=$3 out=$4 text=$5 common=$6
    local root
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    cd "$root"
    make -s train_moe data/prepare_text
    [ -f data/tinyshakespeare/tiny_shakespeare_train.bin ] || sh data/tinyshakespeare.sh "$text"
    for corpus in synthetic shakespeare; do
        local data="" runs="$out/$corpus/topk"
        [ "$corpus" = shakespeare ] && data="-i data/tinyshakespeare/tiny_shakespeare_train.bin -j data/tinyshakespeare/tiny_shakespeare_val.bin"
        mkdir -p "$out/$corpus"
        echo "== $corpus: topk"
        ./train_moe $common $data -o "$out/$corpus/topk" > "$out/$corpus/topk.txt" 2>&1
        for value in $values; do
            echo "== $corpus: $router $flag $value"
            ./train_moe $common $data --router "$router" "$flag" "$value" -o "$out/$corpus/${router}_$value" \
                > "$out/$corpus/${router}_$value.txt" 2>&1
            runs="$runs $out/$corpus/${router}_$value"
        done
        python3 dev/experiments/summarize.py $runs | tee "$out/$corpus/table.md"
    done
}
