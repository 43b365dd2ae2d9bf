#!/usr/bin/env bash
# CompeteSMoE ablation: topk against compete at --compete-rate in {0.02, 0.05, 0.2, 1.0} (--values),
# same seed(s), model and step budget, on the built-in synthetic corpus and on tinyshakespeare.
# The table has the final val loss, router-competition agreement, expert-output similarity
# (representation collapse) and the median step time against topk with the machine load.
#   dev/experiments/compete.sh [--steps N] [--values "0.05 0.2"] [--seeds "1 2 3"] [--corpora ...]
#                              [--text TINYSHAKESPEARE_TXT] [-o DIR] [--dry-run]
# The model is train_moe's default (L=4, C=128, E=8, K=2), 300 steps (--steps). 10 runs by
# default; each takes 1-2 minutes on an idle 2-core machine (rate 1.0 about twice that). The
# options are ablation.sh's.
ROUTER=compete FLAG=--compete-rate VALUES="0.02 0.05 0.2 1.0"
COMMON="--layers 4 --channels 128 --heads 4 --experts 8 --top-k 2 -b 16 -t 64 -v 50 -m 16"
STEPS=300
source "$(dirname "$0")/ablation.sh"
ablation "$@"
