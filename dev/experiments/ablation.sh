#!/usr/bin/env bash
# The shared body of gatepro.sh and compete.sh: a topk baseline and one run per value of a router
# flag, for each seed, on the built-in synthetic corpus and on tinyshakespeare, same model and step
# budget; then a Markdown table per corpus (summarize.py; mean ± std over seeds with several).
# Sourced, not run. The calling script sets ROUTER, FLAG, VALUES and COMMON, then calls
#   ablation "$@"
# which parses the options every ablation script takes:
#   --steps N         optimizer steps per run (default: the script's)
#   --values "A B"    the flag's values (default: the script's)
#   --seeds "1 2 3"   seeds (default 1337)
#   --corpora "synthetic shakespeare"   which corpora (default both)
#   --text FILE       tinyshakespeare's text, if data/tinyshakespeare/ is not prepared yet
#                     (default: download it, as data/tinyshakespeare.sh does)
#   -o DIR            output directory (default runs/<router>)
#   --dry-run         print the runs and which are finished; run nothing
# A finished run (its final checkpoint and done.txt) is skipped, so an interrupted ablation
# continues where it stopped; a run cut short is redone from its start. One progress line per run
# gives its time and the ETA of the rest, from the runs measured so far (no guess before the first
# one: on an idle 2-core machine a 300-step default-model run takes about 1-2 minutes, on a loaded
# one several times that). The table's time column is the median step time with the machine load.
set -euo pipefail
ablation() {
    local steps="$STEPS" values="$VALUES" seeds="1337" corpora="synthetic shakespeare" text="" out="runs/$ROUTER" dry=0
    while [ $# -gt 0 ]; do
        case "$1" in
            --steps) steps=$2; shift 2 ;;
            --values) values=$2; shift 2 ;;
            --seeds) seeds=$2; shift 2 ;;
            --corpora) corpora=$2; shift 2 ;;
            --text) text=$2; shift 2 ;;
            -o) out=$2; shift 2 ;;
            --dry-run) dry=1; shift ;;
            -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; echo
                       awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; return 0 ;;
            *) echo "$(basename "$0"): unknown option '$1' (see --help)" >&2; return 1 ;;
        esac
    done
    case "$steps" in ''|*[!0-9]*) echo "--steps $steps: give a positive integer" >&2; return 1 ;; esac
    local root
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    cd "$root"
    make -s train_moe data/prepare_text
    local common="$COMMON -x $steps"
    if [[ " $corpora " == *" shakespeare "* ]] && [ ! -f data/tinyshakespeare/tiny_shakespeare_train.bin ] && [ "$dry" = 0 ]; then
        sh data/tinyshakespeare.sh $text
    fi
    # the run list: corpus, name, extra flags
    local list=()
    for corpus in $corpora; do
        for seed in $seeds; do
            list+=("$corpus|topk|seed$seed|--seed $seed")
            for value in $values; do list+=("$corpus|${ROUTER}_$value|seed$seed|--router $ROUTER $FLAG $value --seed $seed"); done
        done
    done
    local total=${#list[@]} todo=0 i=0 spent=0 measured=0
    for item in "${list[@]}"; do
        IFS='|' read -r corpus name seed flags <<< "$item"
        [ -f "$out/$corpus/$name/$seed/done.txt" ] || todo=$((todo + 1))
    done
    echo "$(basename "$0"): $total runs, $((total - todo)) finished earlier, $todo to do; output $out; load $(cut -d' ' -f1 /proc/loadavg 2>/dev/null)"
    local t_start
    t_start=$(date +%s)
    for item in "${list[@]}"; do
        IFS='|' read -r corpus name seed flags <<< "$item"
        local dir="$out/$corpus/$name/$seed" data=""
        [ "$corpus" = shakespeare ] && data="-i data/tinyshakespeare/tiny_shakespeare_train.bin -j data/tinyshakespeare/tiny_shakespeare_val.bin"
        if [ -f "$dir/done.txt" ]; then continue; fi
        i=$((i + 1))
        if [ "$dry" = 1 ]; then echo "to do: ./train_moe $common $data $flags -o $dir"; continue; fi
        rm -rf "$dir"
        mkdir -p "$dir"
        local t0 t1
        t0=$(date +%s)
        OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive} ./train_moe $common $data $flags -o "$dir" > "$dir/train.txt" 2>&1 \
            || { echo "train_moe failed: see $dir/train.txt" >&2; return 1; }
        t1=$(date +%s)
        echo "seconds $((t1 - t0)) load $(cut -d' ' -f1 /proc/loadavg 2>/dev/null)" > "$dir/done.txt"
        spent=$((spent + t1 - t0)); measured=$((measured + 1))
        local left=$(( spent * (todo - i) / measured ))
        printf '[%2d/%d] %-11s %-16s %s: %4d s, val %s | elapsed %dm%02ds, ETA %dm%02ds | load %s\n' "$i" "$todo" "$corpus" \
            "$name" "$seed" $((t1 - t0)) "$(grep -o 'tel:[0-9.]*' "$dir/main.log" | tail -1 | cut -d: -f2)" \
            $(( (t1 - t_start) / 60 )) $(( (t1 - t_start) % 60 )) $((left / 60)) $((left % 60)) "$(cut -d' ' -f1 /proc/loadavg 2>/dev/null)"
    done
    [ "$dry" = 1 ] && return 0
    for corpus in $corpora; do
        python3 dev/experiments/summarize.py --group --time-base topk "$out/$corpus"/*/seed* | tee "$out/$corpus/table.md"
    done
}
