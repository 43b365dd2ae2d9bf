#!/usr/bin/env bash
# All five routers on equal terms: the default model, corpus (the built-in synthetic one), seed and
# step budget (300 steps), each router with its own defaults; then one Markdown table of the final
# validation loss, zero-token experts and load CV (both at the last step, over all layers) and the
# mean step time.
#   dev/experiments/routers.sh [OUTDIR] [extra train_moe flags...]
#   PARALLEL=1 dev/experiments/routers.sh ...   runs the five at once, one thread each
# ~35 s per run on an idle 2-core machine (compete a little more).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${1:-$root/out/routers}
shift || true
cd "$root"
make -s train_moe
mkdir -p "$out"
for router in topk gatepro compete auxfree xmoe; do
    echo "== $router"
    if [ "${PARALLEL:-0}" = 1 ]; then  # all five at once, one thread each (the same bits: thread counts never change them)
        OMP_NUM_THREADS=1 ./train_moe --router "$router" --overwrite "$@" -o "$out/$router" > "$out/$router.txt" 2>&1 &
    else
        ./train_moe --router "$router" --overwrite "$@" -o "$out/$router" > "$out/$router.txt" 2>&1
    fi
done
wait
python3 - "$out" <<'EOF' | tee "$out/table.md"
import os, sys
out = sys.argv[1]
print("| router | val loss | zero-token experts (sum over layers) | load CV (mean over layers) | ms/step |")
print("|---|---|---|---|---|")
for router in ["topk", "gatepro", "compete", "auxfree", "xmoe"]:
    run = os.path.join(out, router)
    val, ms, steps = None, 0.0, 0
    for line in open(os.path.join(run, "main.log")):
        f = dict(x.split(":", 1) for x in line.split() if ":" in x)
        if "tel" in f: val = float(f["tel"])
        if "ms" in f: ms += float(f["ms"]); steps += 1
    rows = [l.rstrip("\n").split("\t") for l in open(os.path.join(run, "metrics.tsv"))]
    head, rows = rows[0], rows[1:]
    last = max(int(r[0]) for r in rows)
    rows = [dict(zip(head, r)) for r in rows if int(r[0]) == last]
    zero = sum(int(r["zero_experts"]) for r in rows)
    cv = sum(float(r["load_cv"]) for r in rows) / len(rows)
    print(f"| {router} | {val:.4f} | {zero} | {cv:.3f} | {ms / max(steps, 1):.0f} |")
EOF
