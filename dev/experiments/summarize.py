#!/usr/bin/env python3
"""Tabulates train_moe run directories (main.log, metrics.tsv, config.txt, and eval_moe's JSON
files when present) as a Markdown table.

    dev/experiments/summarize.py [--group] RUN_DIR [RUN_DIR ...]

One row per run, or with --group one row per group of runs that differ only in --seed (a group is
named by its runs' parent directory when they share one, e.g. runs/topk/seed1, runs/topk/seed2),
each cell then "mean ± std over the seeds" (sample std, n-1; "±" left out for one seed).

Columns (docs/metrics.md defines every metric):
  val loss        eval_moe's full validation pass when RUN/eval.json exists, else the trainer's last
                  validation (tel, a few batches; marked *)
  bits/byte       eval_moe's bits per byte (needs a tokenizer: real text only)
  cloze           eval_moe --mc accuracy (acc_norm) on RUN/eval_cloze*.json, one column per file
  zero-token settle  per layer, the first step from which the zero-token count stays <= 10% of E to
                  the end; the run's value is the largest over layers (all layers settled);
                  "never" = still above at the last step (counted apart, not averaged)
  sibling co-act  fraction of selected experts whose nearest router sibling is selected too, on the
                  eval pass (else the mean over training steps); (random = (K-1)/(E-1))
  router |S|      mean |cos| between router rows, at the end (mean over layers)
  expert-out cos  expert-output similarity on the probe at the final validation (mean over layers)
  MI/H(d)         MI(expert; domain)/H(domain) on the eval pass, with its chance level (the same with
                  the domains shuffled) in parentheses; mean over layers
  agreement       (CompeteSMoE runs only) mean router-competition agreement over the competition
                  steps, with its chance level K/E; and the share of (layer, step) rows that competed
  ms/step         median of the per-step wall times in main.log (validation excluded), and its ratio
                  to the group (or run) named by --time-base (default: the first). A median resists
                  short bursts of machine load but not sustained load: the load column is the
                  1-minute load average around the run (run_info.json), to judge it by.
Standard library only.
"""
import json
import math
import os
import statistics
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
    val, ms = {}, {}
    for line in open(os.path.join(run, "main.log")):
        fields = dict(f.split(":", 1) for f in line.split() if ":" in f)
        if "s" not in fields:
            continue
        step = int(fields["s"])
        if "tel" in fields:
            val[step] = float(fields["tel"])
        if "ms" in fields:
            ms[step] = float(fields["ms"])  # a resumed run's repeated steps: the last wins
    return val, ms


def read_metrics(run):
    rows = {}
    path = os.path.join(run, "metrics.tsv")
    if not os.path.exists(path):
        return rows
    lines = open(path).read().splitlines()
    header = None
    for line in lines:
        parts = line.split("\t")
        if parts[0] == "step":
            header = parts
            continue
        if header is None or len(parts) != len(header):
            continue  # a half-written last line
        r = dict(zip(header, parts))
        rows[(int(r["step"]), int(r["layer"]))] = r
    return rows


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fnum(x):
    try:
        v = float(x)
        return None if math.isnan(v) else v
    except (TypeError, ValueError):
        return None


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def settle_step(rows, E):
    """Per layer: the first step from which zero_experts <= 10% of E holds to the last step
    (None = not settled at the end). Rows of the final validation (tokens 0) are left out."""
    steps = sorted({s for s, _ in rows if fnum(rows[(s, _)].get("tokens")) not in (None, 0.0)})
    layers = sorted({l for _, l in rows})
    out = []
    for l in layers:
        settled = 0
        for s in steps:
            z = fnum(rows[(s, l)]["zero_experts"])
            if z is not None and z > 0.1 * E:
                settled = None if s == steps[-1] else s + 1
        out.append(settled)
    return out


def summarize(run):
    """The numbers of one run, as a dict (None where a number is missing)."""
    cfg = read_config(run)
    val, ms = read_log(run)
    rows = read_metrics(run)
    E = int(cfg.get("experts", "8"))
    K = int(cfg.get("top-k", "2"))
    ev = read_json(os.path.join(run, "eval.json"))
    info = read_json(os.path.join(run, "run_info.json")) or {}
    r = {"run": run, "config": cfg, "E": E, "K": K}
    r["val_loss"] = ev["loss"]["loss"] if ev and ev.get("loss") else (val[max(val)] if val else None)
    r["val_from_eval"] = bool(ev and ev.get("loss"))
    r["bpb"] = ev["loss"].get("bits_per_byte") if ev and ev.get("loss") else None
    r["cloze"] = {}
    for name in sorted(os.listdir(run)):
        if name.startswith("eval_cloze") and name.endswith(".json"):
            j = read_json(os.path.join(run, name))
            if j and j.get("mc"):
                key = name[len("eval_cloze"):-len(".json")].strip("_") or "cloze"
                r["cloze"][key] = j["mc"]["acc_norm"]
    experts = ev.get("experts") if ev else None
    steps = sorted({s for s, _ in rows})
    layers = sorted({l for _, l in rows})
    r["settle_per_layer"] = settle_step(rows, E) if rows and E > 1 else []
    r["settle"] = (None if any(x is None for x in r["settle_per_layer"]) else max(r["settle_per_layer"])) \
        if r["settle_per_layer"] else None
    r["never"] = any(x is None for x in r["settle_per_layer"])
    if experts:
        r["coact"] = mean([fnum(x["sibling_coact"]) for x in experts])
        r["coact_random"] = fnum(experts[0]["sibling_coact_random"])
        r["sim_abs"] = mean([fnum(x["router_sim_abs"]) for x in experts])
        r["out_sim"] = mean([fnum(x["expert_out_sim"]) for x in experts])
        r["mi"] = mean([fnum(x.get("domain_mi")) for x in experts])
        r["mi_chance"] = mean([fnum(x.get("domain_mi_chance")) for x in experts])
    elif rows and E > 1:
        last = steps[-1]
        r["coact"] = mean([fnum(rows[k]["sibling_coact"]) for k in rows])
        r["coact_random"] = fnum(rows[(last, layers[0])]["sibling_coact_random"])
        r["sim_abs"] = mean([fnum(rows[(last, l)]["router_sim_abs"]) for l in layers])
        sims = [s for s in steps if fnum(rows[(s, layers[0])]["expert_out_sim"]) is not None]
        r["out_sim"] = mean([fnum(rows[(sims[-1], l)]["expert_out_sim"]) for l in layers]) if sims else None
        r["mi"] = mean([fnum(rows[(s, l)].get("domain_mi")) for s in steps[-max(1, len(steps) // 10):] for l in layers])
        r["mi_chance"] = mean([fnum(rows[(s, l)].get("domain_mi_chance")) for s in steps[-max(1, len(steps) // 10):]
                               for l in layers])
    else:
        for k in ("coact", "coact_random", "sim_abs", "out_sim", "mi", "mi_chance"):
            r[k] = None
    comp = [k for k in rows if rows[k].get("competed") == "1"]
    r["agree"] = mean([fnum(rows[k].get("compete_agreement")) for k in comp]) if comp else None
    r["compete_rate"] = len(comp) / len(rows) if comp else None
    train_rows = [k for k in rows if fnum(rows[k].get("tokens")) not in (None, 0.0)]
    r["idle"] = mean([fnum(rows[k]["zero_experts"]) for k in train_rows]) if train_rows and E > 1 else None
    r["ms"] = statistics.median(ms.values()) if ms else None
    r["load"] = info.get("load_mean")
    r["seed"] = cfg.get("seed")
    return r


def label(r):
    c = r["config"]
    router = c.get("router", "?")
    if r["E"] == 1:
        name = "dense"
    elif router == "gatepro":
        name = "gatepro λ=%s" % c.get("gatepro-lambda")
    else:
        name = router
    return name


def fmt_ms(values, digits=3):
    """mean ± std of the numbers in values (None ignored); '-' when there are none."""
    xs = [x for x in values if x is not None]
    if not xs:
        return "-"
    m = sum(xs) / len(xs)
    if len(xs) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def group_runs(runs, grouped):
    """[(name, [summary, ...])] in first-seen order."""
    groups = []
    index = {}
    for run in runs:
        try:
            s = summarize(run)
        except (OSError, KeyError, IndexError, ValueError) as e:
            print(f"{run}: cannot summarise ({e})", file=sys.stderr)
            continue
        if grouped:
            parent = os.path.dirname(os.path.normpath(run))
            key = parent
            name = label(s) if label(s).replace(" λ=", "_") == os.path.basename(parent) else \
                f"{label(s)} ({os.path.basename(parent)})"
        else:
            key = run
            name = f"{label(s)} ({os.path.basename(os.path.normpath(run))})"
        if key not in index:
            index[key] = len(groups)
            groups.append((name, []))
        groups[index[key]][1].append(s)
    return groups


def table(groups, time_base=None):
    """The Markdown table (a list of lines) of groups = [(name, [summary, ...])]."""
    cloze_keys = sorted({k for _, ss in groups for s in ss for k in s["cloze"]})
    base = None
    for name, ss in groups:
        if time_base is None or time_base in name:
            base = mean([s["ms"] for s in ss])
            base_name = name
            break
    compete = any(s["agree"] is not None for _, ss in groups for s in ss)
    head = ["run", "seeds", "val loss", "bits/byte"] + [f"cloze {k} acc" for k in cloze_keys] + \
        ["zero-token settle step (never)", "sibling co-act (random)", "router abs(S)", "expert-out cos",
         "MI/H(d) (chance)"] + (["agreement (K/E)", "competed (layer, step) share"] if compete else []) + \
        ["ms/step (ratio)", "load"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, ss in groups:
        never = sum(1 for s in ss if s["never"])
        settle = fmt_ms([s["settle"] for s in ss], 0) if any(s["settle"] is not None for s in ss) else "-"
        if ss[0]["E"] == 1:
            settle = "n/a"
        elif never:
            settle += f" ({never}/{len(ss)} never)"
        star = "" if all(s["val_from_eval"] for s in ss) else "*"
        ms = mean([s["ms"] for s in ss])
        ratio = f" ({ms / base:.2f}x)" if ms is not None and base else ""
        loads = [s["load"] for s in ss if s["load"] is not None]
        row = [name, str(len(ss)), fmt_ms([s["val_loss"] for s in ss], 4) + star, fmt_ms([s["bpb"] for s in ss], 4)]
        row += [fmt_ms([s["cloze"].get(k) for s in ss], 3) for k in cloze_keys]
        coact = fmt_ms([s["coact"] for s in ss])
        rnd = ss[0]["coact_random"]
        row += [settle, coact + (f" ({rnd:.3f})" if rnd is not None else ""), fmt_ms([s["sim_abs"] for s in ss]),
                fmt_ms([s["out_sim"] for s in ss]),
                fmt_ms([s["mi"] for s in ss]) + (f" ({fmt_ms([s['mi_chance'] for s in ss], 4)})"
                                                  if any(s["mi_chance"] is not None for s in ss) else ""),
] + ([fmt_ms([s["agree"] for s in ss]) + (f" ({ss[0]['K'] / ss[0]['E']:.3f})" if any(s["agree"] is not None for s in ss)
                                                  else ""), fmt_ms([s["compete_rate"] for s in ss])]
               if compete else []) + [
                (f"{ms:.1f}" if ms is not None else "-") + ratio,
                f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-"]
        lines.append("| " + " | ".join(row) + " |")
    if base is not None:
        lines.append("")
        lines.append(f"ms/step: median per-step wall time; ratio to {base_name}. load: the 1-minute load "
                     f"average during the runs (this machine has {os.cpu_count()} cores): above that, "
                     "times are inflated by other work.")
    if any(not all(s["val_from_eval"] for s in ss) for _, ss in groups):
        lines.append("*: the trainer's last validation (a few batches), no eval_moe pass found.")
    return lines


PAIRED = [("val loss", "val_loss", 4), ("bits/byte", "bpb", 4), ("router abs(S)", "sim_abs", 3),
          ("sibling co-act", "coact", 3), ("expert-out cos", "out_sim", 3), ("MI/H(d)", "mi", 3),
          ("zero-token settle step", "settle", 0), ("idle experts per layer-step", "idle", 2), ("ms/step", "ms", 1)]


def paired_table(groups, base_name="topk"):
    """Each group against the base group, seed by seed: the mean of (run - base run of the same
    seed), the sample std of those differences ("paired sd") and the base's own seed-to-seed std.
    A list of Markdown lines; empty when there is no base group or no common seed."""
    base = next((ss for name, ss in groups if name == base_name), None)
    if base is None:
        return []
    by_seed = {s["seed"]: s for s in base}
    cloze_keys = sorted({k for _, ss in groups for s in ss for k in s["cloze"]})
    metrics = PAIRED[:2] + [(f"cloze {k}", ("cloze", k), 3) for k in cloze_keys] + PAIRED[2:]

    def value(s, key):
        return s["cloze"].get(key[1]) if isinstance(key, tuple) else s.get(key)

    head = ["run − " + base_name, "seeds"] + [m[0] for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    row = [f"({base_name}: seed sd)", str(len(base))]
    for _, key, digits in metrics:
        xs = [value(s, key) for s in base if value(s, key) is not None]
        row.append(f"{statistics.stdev(xs):.{digits}f}" if len(xs) > 1 else "-")
    lines.append("| " + " | ".join(row) + " |")
    for name, ss in groups:
        if name == base_name:
            continue
        pairs = [(s, by_seed[s["seed"]]) for s in ss if s["seed"] in by_seed]
        row = [name, str(len(pairs))]
        for _, key, digits in metrics:
            d = [value(a, key) - value(b, key) for a, b in pairs if value(a, key) is not None and value(b, key) is not None]
            if not d:
                row.append("-")
            elif len(d) == 1:
                row.append(f"{d[0]:+.{digits}f}")
            else:
                row.append(f"{sum(d) / len(d):+.{digits}f} ± {statistics.stdev(d):.{digits}f}")
        lines.append("| " + " | ".join(row) + " |")
    if len(lines) <= 3:
        return []
    return lines + ["", f"Each cell: mean over the seeds of (run − {base_name} with the same seed) ± the std of those "
                    f"differences (paired sd); first row: {base_name}'s own std over seeds. A difference well inside "
                    "the seed sd is not told apart from zero by this many seeds. Settle step: over the seeds where "
                    "both runs settle. Idle experts: zero_experts of metrics.tsv averaged over every training step "
                    "and layer (the means: " + ", ".join(f"{name} {mean([s['idle'] for s in ss]):.2f}"
                    for name, ss in groups if mean([s['idle'] for s in ss]) is not None) + ")."]


def main():
    args = sys.argv[1:]
    grouped = False
    time_base = None
    while args and args[0].startswith("--"):
        if args[0] == "--group":
            grouped = True
            args = args[1:]
        elif args[0] == "--time-base" and len(args) > 1:
            time_base = args[1]
            args = args[2:]
        else:
            print(__doc__)
            sys.exit(2)
    if not args:
        print(__doc__)
        sys.exit(2)
    print("\n".join(table(group_runs(args, grouped), time_base)))


if __name__ == "__main__":
    main()
