"""
bench_torch.py -- the PyTorch side of dev/bench: the same MoE GPT as train_moe, in float32, written
the way a researcher would write it, timed the way dev/bench times train_moe.

Model (docs/model.md): GPT-2 pre-LayerNorm, learned position embeddings, GELU (tanh), tied
input/output embedding (Vp rows), no dropout. Every block's FFN is an MoE layer: a linear router
without bias, top-k on the logits (ties: torch.topk's choice), softmax over the selected
(topk_softmax), the Switch load-balance loss a*E*sum_i f_i P_i (f detached) with a = 0.01; sparse
dispatch: the (token, slot) pairs are sorted by expert once, each expert runs its two Linear layers
(weights stored [E,H,C] / [E,C,H] as nn.Parameters, unbound once per forward, F.linear) on its
gathered tokens only, and the gate-weighted result is index_add_'ed back. Attention: F.scaled_dot_product_attention(is_causal=True)
when this torch has it (>= 2.0), else torch 1.13's F._scaled_dot_product_attention (the same fused
math kernel under its pre-2.0 private name), else an explicit masked softmax.
Optimizer: torch.optim.AdamW(lr=1e-3, betas=(0.9,0.95), eps=1e-8, weight_decay=0.1, foreach=True)
with weight decay on the matrices and embeddings only (docs/model.md), clip_grad_norm_(1.0).

Timing per step with time.perf_counter: fwd+bwd = forward + loss.backward(); opt = clip + step +
zero_grad (set_to_none=False by default: torch 1.x's default; it keeps the gradient buffers). The first --warmup steps are discarded, medians of the rest. Prints
machine-readable "key value" lines (dev/bench parses them) unless --human.

Run with Debian's python (python3-torch): /usr/bin/python3 dev/bench_torch.py --help
Thread count: torch.set_num_threads(N); OpenBLAS (pthread build) has its own pool, sized by
OPENBLAS_NUM_THREADS, which this script sets to N before importing torch unless already set.
"""
import argparse
import math
import os
import resource
import statistics
import sys
import time

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--layers", type=int, default=4)
ap.add_argument("--channels", type=int, default=256)
ap.add_argument("--heads", type=int, default=4)
ap.add_argument("--experts", type=int, default=8)
ap.add_argument("--top-k", type=int, default=2)
ap.add_argument("--expert-hidden", type=int, default=512)
ap.add_argument("--vocab", type=int, default=4096, help="V; Vp = 128*ceil(V/128)")
ap.add_argument("-t", "--seq-len", type=int, default=256)
ap.add_argument("-b", "--batch", type=int, default=8)
ap.add_argument("-x", "--steps", type=int, default=12)
ap.add_argument("--warmup", type=int, default=2, help="steps discarded before the medians")
ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or os.cpu_count())
ap.add_argument("--seed", type=int, default=1337)
ap.add_argument("--attn", choices=["auto", "sdpa", "manual"], default="auto",
                help="auto: the fused scaled_dot_product_attention if this torch has one")
ap.add_argument("--set-to-none", type=int, default=0,
                help="optimizer.zero_grad(set_to_none=...): 0 (torch 1.x's default) keeps the gradient "
                     "buffers; 1 (torch 2.x's default) frees them and backward allocates them again")
ap.add_argument("--verbose", action="store_true", help="print torch's build configuration (BLAS)")
ap.add_argument("--human", action="store_true", help="per-step lines as well")
args = ap.parse_args()

os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))
os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

import torch  # noqa: E402  (after the thread environment is set)
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(args.threads)
torch.manual_seed(args.seed)

L, C, NH, E, K, H = args.layers, args.channels, args.heads, args.experts, args.top_k, args.expert_hidden
V, T, B = args.vocab, args.seq_len, args.batch
Vp = 128 * ((V + 127) // 128)
AUX = 0.01
assert C % NH == 0 and 1 <= K <= E

if args.attn != "manual" and hasattr(F, "scaled_dot_product_attention"):
    ATTN = "F.scaled_dot_product_attention(is_causal=True)"
    def attention(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
elif args.attn != "manual" and hasattr(F, "_scaled_dot_product_attention"):
    ATTN = "F._scaled_dot_product_attention(is_causal=True) (torch %s has no public sdpa)" % torch.__version__
    def attention(q, k, v):
        return F._scaled_dot_product_attention(q, k, v, None, 0.0, False, True)[0]
else:
    ATTN = "manual masked softmax"
    _mask = {}
    def attention(q, k, v):
        t = q.shape[-2]
        if t not in _mask:
            _mask[t] = torch.ones(t, t, dtype=torch.bool).triu(1)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
        att = att.masked_fill(_mask[t], float("-inf")).softmax(dim=-1)
        return att @ v


class MoE(nn.Module):
    def __init__(self):
        super().__init__()
        self.router = nn.Parameter(torch.randn(E, C) * 0.02)
        self.fcw = nn.Parameter(torch.randn(E, H, C) * 0.02)
        self.fcb = nn.Parameter(torch.zeros(E, H))
        self.fcprojw = nn.Parameter(torch.randn(E, C, H) * (0.02 / math.sqrt(2 * L)))
        self.fcprojb = nn.Parameter(torch.zeros(E, C))

    def forward(self, x):                        # x [N, C]
        N = x.shape[0]
        logits = F.linear(x, self.router)        # [N, E]
        topv, topi = logits.topk(K, dim=-1)      # [N, K]
        gates = topv.softmax(dim=-1)             # topk_softmax
        # Switch load balance: f (fraction of the N*K assignments per expert, a constant) . P
        probs = logits.softmax(dim=-1)
        f = torch.bincount(topi.flatten(), minlength=E).to(x.dtype) / (N * K)
        aux = AUX * E * (f * probs.mean(dim=0)).sum()
        # sparse dispatch: sort the N*K (token, slot) pairs by expert, one gather per expert
        flat = topi.flatten()
        order = flat.argsort(stable=True)
        tok = order // K
        w = gates.flatten()[order]
        counts = torch.bincount(flat, minlength=E).tolist()
        out = torch.zeros_like(x)
        # unbind once: indexing self.fcw[e] per expert would make autograd build a full [E,H,C]
        # zero tensor per expert in backward (select_backward), a cost quadratic in E
        fcw, fcb, fcprojw, fcprojb = (p.unbind(0) for p in (self.fcw, self.fcb, self.fcprojw, self.fcprojb))
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            idx = tok[start:start + n]
            h = F.gelu(F.linear(x[idx], fcw[e], fcb[e]), approximate="tanh")
            y = F.linear(h, fcprojw[e], fcprojb[e])
            out.index_add_(0, idx, y * w[start:start + n, None])
            start += n
        return out, aux


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(C)
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)
        self.ln2 = nn.LayerNorm(C)
        self.moe = MoE()
        nn.init.normal_(self.qkv.weight, std=0.02); nn.init.zeros_(self.qkv.bias)
        nn.init.normal_(self.proj.weight, std=0.02 / math.sqrt(2 * L)); nn.init.zeros_(self.proj.bias)

    def forward(self, x):                        # x [B, T, C]
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q = q.view(b, t, NH, C // NH).transpose(1, 2)
        k = k.view(b, t, NH, C // NH).transpose(1, 2)
        v = v.view(b, t, NH, C // NH).transpose(1, 2)
        y = attention(q, k, v).transpose(1, 2).reshape(b, t, C)
        x = x + self.proj(y)
        m, aux = self.moe(self.ln2(x).view(b * t, C))
        return x + m.view(b, t, C), aux


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Parameter(torch.randn(Vp, C) * 0.02)
        with torch.no_grad():
            self.wte[V:].zero_()
        self.wpe = nn.Parameter(torch.randn(T, C) * 0.02)
        self.blocks = nn.ModuleList([Block() for _ in range(L)])
        self.lnf = nn.LayerNorm(C)

    def forward(self, idx, targets):
        x = self.wte[idx] + self.wpe[: idx.shape[1]]
        aux = 0.0
        for blk in self.blocks:
            x, a = blk(x)
            aux = aux + a
        logits = F.linear(self.lnf(x), self.wte)[..., :V]          # tied, first V columns
        lm = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
        return lm + aux, lm


def blas_info():
    maps = set()
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                p = line.split()[-1]
                if ("blas" in p or "mkl" in p) and p.startswith("/"):
                    maps.add(os.path.realpath(p))
    except OSError:
        pass
    core = ""
    for p in maps:
        if "openblas" in os.path.basename(p):
            try:
                import ctypes
                lib = ctypes.CDLL(p)
                lib.openblas_get_corename.restype = ctypes.c_char_p
                lib.openblas_get_num_threads.restype = ctypes.c_int
                core = "%s, %d threads" % (lib.openblas_get_corename().decode(), lib.openblas_get_num_threads())
            except (OSError, AttributeError):
                pass
    return sorted(maps), core


model = GPT()
decay = [p for n, p in model.named_parameters() if p.dim() >= 2]          # wte wpe qkvw projw router fcw fcprojw
no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
nparams = sum(p.numel() for p in model.parameters())
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=1e-3, betas=(0.9, 0.95), eps=1e-8, foreach=True)
gen = torch.Generator().manual_seed(args.seed + 1)

fb_ms, opt_ms, tot_ms = [], [], []
for step in range(args.steps):
    tokens = torch.randint(0, V, (B, T + 1), generator=gen)
    x, y = tokens[:, :-1], tokens[:, 1:]
    t0 = time.perf_counter()
    loss, lm = model(x, y)
    loss.backward()
    t1 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=bool(args.set_to_none))
    t2 = time.perf_counter()
    if args.human:
        print("step %d loss %.4f fwdbwd %.1f ms opt %.1f ms" % (step, lm.item(), 1e3 * (t1 - t0), 1e3 * (t2 - t1)))
    if not math.isfinite(loss.item()):
        print("bench_torch: non-finite loss at step %d" % step, file=sys.stderr)
        sys.exit(1)
    if step >= args.warmup:
        fb_ms.append(1e3 * (t1 - t0)); opt_ms.append(1e3 * (t2 - t1)); tot_ms.append(1e3 * (t2 - t0))

if not tot_ms:
    print("bench_torch: no steps after warm-up (steps %d, warmup %d)" % (args.steps, args.warmup), file=sys.stderr)
    sys.exit(1)
libs, core = blas_info()
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print("torch_version %s" % torch.__version__)
print("threads %d" % torch.get_num_threads())
print("attention %s" % ATTN)
print("blas_libs %s" % (" ".join(libs) or "none-found"))
print("openblas_core %s" % (core or "n/a"))
print("params %d" % nparams)
print("final_loss %.4f" % lm.item())
print("fwdbwd_ms %.3f" % statistics.median(fb_ms))
print("opt_ms %.3f" % statistics.median(opt_ms))
print("ms %.3f" % statistics.median(tot_ms))
print("tok_per_s %.1f" % (B * T / (statistics.median(tot_ms) / 1e3)))
print("maxrss_mb %.1f" % rss_mb)
if args.verbose:
    cfg = torch.__config__.show()
    for line in cfg.splitlines():
        if "BLAS" in line or "LAPACK" in line or "MKL" in line:
            print("torch_config %s" % line.strip()[:300])
