#!/usr/bin/env bash
# GatePro penalty ablation (SPEC §3.2): topk against gatepro with lambda in {1e-4, 1e-2, 1, 1e4},
# same seed, model and step budget, on the built-in synthetic corpus and on tinyshakespeare.
# Writes one run directory per run and a Markdown table per corpus (dev/experiments/summarize.py).
#   dev/experiments/gatepro.sh [TINYSHAKESPEARE_TXT] [OUTDIR]
# The text is only needed if data/tinyshakespeare/ is not prepared yet (default
# ../shared/data/tinyshakespeare.txt). Runs without a load-balance loss (--aux-loss 0), so the
# zero-token experts GatePro is meant to revive are there to see; E=16, K=2, H=4C/K. About 10
# minutes on 2 cores.
source "$(dirname "$0")/ablation.sh"
ablation gatepro --gatepro-lambda "1e-4 1e-2 1 1e4" "${2:-runs/gatepro}" "${1:-../shared/data/tinyshakespeare.txt}" \
    "--layers 4 --channels 128 --heads 4 --experts 16 --top-k 2 --expert-hidden 256 --aux-loss 0 -b 16 -t 64 -x 300 -v 50 -m 16 --seed 1337"
