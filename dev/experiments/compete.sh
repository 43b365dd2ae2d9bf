#!/usr/bin/env bash
# CompeteSMoE ablation (COMPETESMOE.md): topk against compete at --compete-rate in
# {0.02, 0.05, 0.2, 1.0}, same seed, model and step budget, on the built-in synthetic corpus and on
# tinyshakespeare. Tabulates final val loss, router-competition agreement, expert-output
# similarity (representation collapse) and the wall-clock overhead relative to topk
# (dev/experiments/summarize.py; time = the sum of the per-step times, validation excluded; run it
# on an otherwise idle machine).
#   dev/experiments/compete.sh [TINYSHAKESPEARE_TXT] [OUTDIR]
# The model is train_moe's default (L=4, C=128, E=8, K=2). About 12 minutes on 2 cores.
source "$(dirname "$0")/ablation.sh"
ablation compete --compete-rate "0.02 0.05 0.2 1.0" "${2:-runs/compete}" "${1:-../shared/data/tinyshakespeare.txt}" \
    "--layers 4 --channels 128 --heads 4 --experts 8 --top-k 2 -b 16 -t 64 -x 300 -v 50 -m 16 --seed 1337"
