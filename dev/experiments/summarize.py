#!/usr/bin/env python3
"""Tabulates train_moe run directories (main.log, metrics.tsv, config.txt) as a Markdown table.

    dev/experiments/summarize.py RUN_DIR [RUN_DIR ...]

Columns: the run, final val loss (tel at the last step), the step at which each layer's
zero-token count first drops to <= 10% of E after its worst step (per layer; "-" = never;
"0" = never above 10%),
the mean sibling co-activation rate over all steps and layers (and the random baseline), the
router-weight diversity at the last step (mean |S_ij|, mean angle in degrees, spectral entropy,
averaged over layers), the expert-output similarity at the last validation, the mean
router-competition agreement over competition steps, the realised competition rate, and the
train time (sum of the per-step ms) with its ratio to the first run's. Standard library only.
"""
import math
import os
import sys


def read_config(run):
    cfg = {}
    path = os.path.join(run, "config.txt")
    if os.path.exists(path):
        for line in open(path):
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                cfg[k.strip()] = v.strip()
    return cfg


def read_log(run):
    val, total_ms = {}, 0.0
    for line in open(os.path.join(run, "main.log")):
        fields = dict(f.split(":", 1) for f in line.split() if ":" in f)
        if "tel" in fields:
            val[int(fields["s"])] = float(fields["tel"])
        if "ms" in fields:
            total_ms += float(fields["ms"])
    return val, total_ms


def read_metrics(run):
    rows = {}
    lines = open(os.path.join(run, "metrics.tsv")).read().splitlines()
    header = lines[0].split("\t")
    for line in lines[1:]:
        parts = line.split("\t")
        if len(parts) != len(header):
            continue  # a half-written last line
        r = dict(zip(header, parts))
        rows[(int(r["step"]), int(r["layer"]))] = r  # a resumed run's repeated rows: keep the last
    return rows


def fnum(x):
    try:
        v = float(x)
        return None if math.isnan(v) else v
    except ValueError:
        return None


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def summarize(run, base_ms):
    cfg = read_config(run)
    val, total_ms = read_log(run)
    rows = read_metrics(run)
    steps = sorted({s for s, _ in rows})
    layers = sorted({l for _, l in rows})
    E = int(cfg.get("experts", "8"))
    last = steps[-1]
    zero_step = []
    for l in layers:  # after the layer's worst step, the first step with <= 10% of E idle experts
        counts = [int(rows[(s, l)]["zero_experts"]) for s in steps]
        worst = counts.index(max(counts))
        if counts[worst] <= 0.1 * E:
            zero_step.append("0")
            continue
        hit = next((steps[i] for i in range(worst, len(steps)) if counts[i] <= 0.1 * E), None)
        zero_step.append("-" if hit is None else str(hit))
    coact = mean([fnum(rows[k]["sibling_coact"]) for k in rows])
    coact_random = fnum(rows[(last, layers[0])]["sibling_coact_random"])
    sim_abs = mean([fnum(rows[(last, l)]["router_sim_abs"]) for l in layers])
    angle = mean([fnum(rows[(last, l)]["router_sim_angle"]) for l in layers])
    spec = mean([fnum(rows[(last, l)]["router_spectral_entropy"]) for l in layers])
    sims = [s for s in steps if fnum(rows[(s, layers[0])]["expert_out_sim"]) is not None]
    out_sim = mean([fnum(rows[(sims[-1], l)]["expert_out_sim"]) for l in layers]) if sims else None
    comp = [k for k in rows if rows[k].get("competed") == "1"]
    agree = mean([fnum(rows[k]["compete_agreement"]) for k in comp]) if comp else None
    # agreement over the last third of the run's competition steps: does distillation work?
    late = [k for k in comp if k[0] >= steps[-1] * 2 / 3]
    agree_late = mean([fnum(rows[k]["compete_agreement"]) for k in late]) if late else None
    rate = len(comp) / len(rows) if rows else 0.0
    name = cfg.get("router", "?")
    if name == "gatepro":
        name += f" λ={cfg.get('gatepro-lambda')}"
    if name == "compete":
        name += f" rate={cfg.get('compete-rate')}"
    return {
        "run": f"{name} ({os.path.basename(os.path.normpath(run))})",
        "val": fmt(val[max(val)] if val else None, 4),
        "zero": " ".join(zero_step),
        "coact": f"{fmt(coact)} ({fmt(coact_random)})",
        "div": f"{fmt(sim_abs)} / {fmt(math.degrees(angle) if angle is not None else None, 1)} / {fmt(spec)}",
        "outsim": fmt(out_sim),
        "agree": f"{fmt(agree)} / {fmt(agree_late)}" if comp else "-",
        "rate": f"{rate:.3f}" if name.startswith("compete") else "-",
        "time": f"{total_ms / 1000:.1f} s ({total_ms / base_ms:.2f}x)" if base_ms else f"{total_ms / 1000:.1f} s",
        "ms": total_ms,
    }


def main():
    runs = sys.argv[1:]
    if not runs:
        print(__doc__)
        sys.exit(2)
    base_ms = None
    table = []
    for run in runs:
        try:
            r = summarize(run, base_ms)
        except (OSError, KeyError, IndexError, ValueError) as e:
            print(f"{run}: cannot summarise ({e})", file=sys.stderr)
            continue
        if base_ms is None:
            base_ms = r["ms"]
            r = summarize(run, base_ms)
        table.append(r)
    cols = [("run", "run"), ("val", "final val loss"), ("zero", "step zero-token <= 10% E after its peak, per layer"),
            ("coact", "sibling co-act (random)"), ("div", "|S| / angle° / spectral H (last step)"),
            ("outsim", "expert-out cos"), ("agree", "agreement all / last third"), ("rate", "compete rate"),
            ("time", "train time (vs first)")]
    print("| " + " | ".join(h for _, h in cols) + " |")
    print("|" + "---|" * len(cols))
    for r in table:
        print("| " + " | ".join(r[k] for k, _ in cols) + " |")


if __name__ == "__main__":
    main()
