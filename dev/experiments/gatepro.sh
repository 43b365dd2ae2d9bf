#!/usr/bin/env bash
# GatePro penalty ablation: topk against gatepro with lambda in {1e-4, 1e-2, 1, 1e4} (--values),
# same seed(s), model and step budget, on the built-in synthetic corpus and on tinyshakespeare.
# Runs without a load-balance loss (--aux-loss 0), so the zero-token experts GatePro is meant to
# revive are there to see; E=16, K=2, H=4C/K, 300 steps (--steps).
#   dev/experiments/gatepro.sh [--steps N] [--values "1e-4 1"] [--seeds "1 2 3"] [--corpora ...]
#                              [--text TINYSHAKESPEARE_TXT] [-o DIR] [--dry-run]
# 10 runs by default; each takes 1-2 minutes on an idle 2-core machine (the progress line gives the
# measured ETA). The options are ablation.sh's.
ROUTER=gatepro FLAG=--gatepro-lambda VALUES="1e-4 1e-2 1 1e4"
COMMON="--layers 4 --channels 128 --heads 4 --experts 16 --top-k 2 --expert-hidden 256 --aux-loss 0 -b 16 -t 64 -v 50 -m 16"
STEPS=300
source "$(dirname "$0")/ablation.sh"
ablation "$@"
