"""
moe_ref.py -- an independent PyTorch reference for moe.c (the role of llm.c's train_gpt2.py).

Builds a small Mixture-of-Experts GPT-2 (docs/model.md, docs/routers.md), computes in
float64 with torch autograd (so the gradients do not share a line with moe.h's hand-written
backward), and writes, for each test case, a moe.c checkpoint and a "debug state" that test_moe.c
compares against: logits, losses, every parameter gradient, the routing decisions and 10 AdamW
steps (docs/model.md, Training).

Run with Debian's python (the one that has python3-torch):
    /usr/bin/python3 dev/moe_ref.py --outdir dev/ref          # writes <case>_model.bin, <case>_state.bin
    /usr/bin/python3 dev/moe_ref.py --outdir dev/ref --check  # re-reads them: sizes, crc, and a recompute

Cases:
    topk_ts  router topk, gate_norm 0 (topk_softmax), aux a = 0.01, z = 0.001
    topk_st  router topk, gate_norm 1 (softmax_topk), aux a = 0.01, z = 0.001
    dense    E = 1, K = 1: no router, no aux losses (a dense GPT-2 MLP)
    gatepro_ts    router gatepro, gate_norm 0, lambda 0.3, aux a = 0.01, z = 0.001
    gatepro_st    router gatepro, gate_norm 1, lambda 0.3, aux a = 0.01, z = 0.001
    gatepro_hard  router gatepro, gate_norm 0, lambda 1e4 (a hard mask: a loser's gate weight is
                  exp(-1e4) = 0; at this seed layer 0 has tokens with a single non-loser, so the
                  K-th selected expert is a loser that runs with weight 0), aux 0.01, z 0.001
    compete_norm     router compete, --compete-weights norm, alpha 0.1, router coef 0.5, div coef 0.3,
                     bal coef 0.2 (larger than the defaults so every gradient path shows); layer 0
                     competes and layer 1 is a router step (topk, gate_norm 0, aux 0.01, z 0.001),
                     at every one of the 10 steps
    compete_softmax  the same with --compete-weights softmax and alpha 0
    auxfree_ts  router auxfree, gate_norm 0, bias rate u = 0.05, aux 0 (the router's default), z 0.001;
                router_bias drawn N(0, 0.5) (as after some training) so that it changes the first
                selection; after each of the 10 AdamW steps b_i += u sign(mean_j c_j - c_i)
    auxfree_st  the same with gate_norm 1 and aux 0.01
    xmoe_ts     router xmoe, d_e 6, gate_norm 0, aux 0.01, z 0.001: l_i = cos(W_p x, e_i) / tau,
                tau = exp(log_temp) = 0.07 at the start; W_p and e drawn N(0, 0.5)
    xmoe_st     the same with gate_norm 1

GatePro (docs/routers.md, gatepro), penalty active at every forward of the 10 steps (start 0, stop -1): per
layer per forward, S_ij = cosine of router rows i,j (F.normalize's max(|w|,1e-12)), j*(i) =
argmax_{j != i} S_ij (ties -> lower j), from the current weights and detached; per token expert i
loses when l_i < l_{j*(i)} (strict) and l~_i = l_i - lambda, else l_i. Top-k (ties -> lower index)
and the gate weights use l~ (gate_norm 0: softmax over the selected l~; 1: softmax(l~) over all E,
not renormalised); dl~/dl = I (the mask is a constant). The load-balance P and the z-loss use the
unpenalised l; f counts the experts actually selected, T_k(l~). The script prints, per step, how
many token-layer selections differ from plain top-k on l, and requires > 0 at the first forward.

CompeteSMoE (docs/routers.md, compete), on a competing layer (state header [16]), every forward: all E
experts run on every token, o_i = E_i(x) (N,C); response s_i = mean_c softplus(o_ic); winners
I_C = top-k of s (ties -> lower index, a constant); weights w_i = s_i / sum_{j in I_C} s_j (norm)
or softmax of the winners' s (softmax); y = sum_{i in I_C} w_i o_i, with gradient through o_i and
through w_i -> s_i -> o_i. Losses (the layer's "compete loss" = router_coef*L_D + div_coef*L_div
+ bal_coef*L_bal, summed over competing layers; no Switch balance loss and no z-loss there):
    L_D   = mean_{t,i} (p^R_i - p^C_i)^2 + alpha * mean_t (1/K) sum_{j in I_C} (p^C_j - p^R_j)^2,
            p^R = softmax(router logits) over all E, p^C = softmax(s) over all E, DETACHED: the
            router weights' only gradient; the layer input x gets L_D's gradient through the logits
    L_div = mean_t (1/K^2) sum_{i != j in I_C} cos(o_i, o_j), cos = <a,b>/(max(|a|,1e-12) max(|b|,1e-12))
    L_bal = E * sum_i f_i P_i, f_i = #{t: i in I_C(t)}/(N K) (a constant), P_i = mean_t p^C_ti
            (NOT detached: gradient into the experts)
The recorded routing of a competing layer is I_C, sorted ascending. Because p^C is detached in
L_D, the gradient is not the derivative of the loss; --check's finite differences hold p^C at its
base-point value. The compete cases draw fcw and fcprojw with std 0.5 instead of 0.02 / 0.01 (the
same draws, scaled): at GPT-2's scale the responses barely depend on the token (one winner set for
all tokens, margins ~1e-5); at 0.5 the first forward has 3-5 distinct winner sets among the 33
tokens and later steps 5-6 (printed per step).

Config (all cases): maxT=16 V=61 (Vp=128, so padded vocab columns are exercised) L=2 NH=3 C=24
(hs=8) H=32, E=4 K=2 for the MoE cases; batch B=3 T=11 (T < maxT on purpose: wpe rows T..maxT-1
get no gradient, only weight decay). The sizes are all different from one another where
possible (B=3, T=11, maxT=16, C=24, H=32, hs=8, E=4), so a transposed index shows up.

Everything is little-endian. The float32 values written are the float64 results rounded once.

---------------------------------------------------------------------------------------------
Checkpoint file <case>_model.bin (docs/formats.md)
---------------------------------------------------------------------------------------------
    int32   header[256]
              [0]  20261122 (magic)     [1]  2 (version)     [2]  maxT     [3]  V     [4]  Vp
              [5]  L    [6]  NH    [7]  C    [8]  E    [9]  K    [10] H
              [11] router (0 = topk, 1 = gatepro, 2 = compete, 3 = auxfree, 4 = xmoe)
              [12] gate_norm (0 topk_softmax, 1 softmax_topk)
              [13] 0 (no optimizer state)   [14] 0 (updates applied)
              [15] float32 bits of the GatePro lambda (the topk cases: 1e-4, the default,
                   unused; gatepro cases: their lambda)   [16] 0 (gatepro-start)
              [17] -1 (gatepro-stop)    [18] seed actually used (after near-tie redraws)
              compete cases only (else 0): [22] float32 bits of the compete rate (0.05)
              [23] float32 bits of the compete warm-up (0.05)   [24] compete max layers (3)
              [25] compete weights (0 norm, 1 softmax)   [26] float32 bits of alpha
              [27] float32 bits of the router coef   [28] ... of the div coef   [29] ... of the bal coef
              (rate, warm-up and max layers are not used by the reference: the competing layers are
              the state file's [16], at every forward)
              [30] X-MoE d_e (0 unless xmoe)   [31] float32 bits of the auxfree rate
              rest 0 (also [19] aux coef, [20] z coef, [21] total steps: the test takes aux and z
              from the state file)
    float32 params[num_params]        the order of docs/model.md:
              wte [Vp,C]  wpe [maxT,C]  ln1w [L,C]  ln1b [L,C]  qkvw [L,3C,C]  qkvb [L,3C]
              attprojw [L,C,C]  attprojb [L,C]  ln2w [L,C]  ln2b [L,C]  routerw [L,E,C]
              fcw [L,E,H,C]  fcb [L,E,H]  fcprojw [L,E,C,H]  fcprojb [L,E,C]  lnfw [C]  lnfb [C]
              router_bias [L,E]  xmoe_proj [L,De,C]  xmoe_experts [L,E,De]  xmoe_log_temp [L or 0]
    uint32  crc32 (zlib, initial value 0) of every byte before it
  size = 1024 + 4*num_params + 4

---------------------------------------------------------------------------------------------
Debug state file <case>_state.bin (read by test_moe.c)
---------------------------------------------------------------------------------------------
    int32   header[256]
              [0]  20261128 (magic)   [1]  1 (version)   [2]  B   [3]  T   [4]  nsteps (10)
              [5]  float32 bits of lr               [6]  float32 bits of weight decay
              [7]  float32 bits of grad clip        [8]  float32 bits of aux coef a
              [9]  float32 bits of z-loss coef z
              [10] float32 bits of GatePro lambda (0 for topk/dense; = checkpoint [15] for gatepro)
              [11] num_params (total floats, = the checkpoint's)
              [12] K   [13] L   [14] router (0 topk, 1 gatepro, 2 compete)   [15] gate_norm
              compete cases only (else 0): [16] bitmask of the competing layers (bit l = layer l;
              1 = layer 0), the same at every forward of the 10 steps
              [17] float32 bits of the compete loss of the first forward (router_coef*L_D +
              div_coef*L_div + bal_coef*L_bal summed over the competing layers)
              rest 0
    int32   inputs[B*T]                  token ids in [0,V)
    int32   targets[B*T]                 token ids in [0,V)
    float32 logits[B*T*Vp]               first forward, before any update; columns V..Vp-1 are
                                         what the model gives (0, since wte rows V.. are 0)
    float32 lm_loss                      mean cross-entropy over B*T tokens, nats (first forward)
    float32 aux_loss                     load-balance loss summed over layers (0 for dense; compete:
                                         the non-competing layers only)
    float32 z_loss                       router z-loss summed over layers (0 for dense; compete: the
                                         non-competing layers only)
    int32   routing[L*B*T*K]             each token's selected experts, sorted ascending (a competing
                                         layer: the winners I_C); index ((l*B + b)*T + t)*K + k
                                         (dense: all 0)
    float32 grads[num_params]            d(lm_loss + aux_loss + z_loss [+ compete loss])/d(param),
                                         §2.1 layout (compete: p^C detached in L_D)
    float32 lm_losses[nsteps]            LM loss at step s, before update s (lm_losses[0] = lm_loss)
    float32 total_losses[nsteps]         total loss at step s, before update s (lm + aux + z, plus
                                         the compete loss in the compete cases)
    uint32  crc32 (zlib, initial 0) of every byte before it
  size = 1024 + 4*(2*B*T + B*T*Vp + 3 + L*B*T*K + num_params + 2*nsteps) + 4

The 10 steps: all on the same batch; each step is forward, backward of the total loss, global
gradient-norm clipping, then AdamW (docs/model.md, Training) with a constant lr (no schedule), t = step+1.
The optimizer is applied to every parameter, including ones whose gradient is exactly 0 (wte
rows V..Vp-1 stay 0; wpe rows >= T, unused experts and, in the dense case, the unused routerw
[L,1,C] only shrink by weight decay, since m = v = 0 there gives a zero Adam term).
The parameters are kept in float64 across the 10 steps (the reference is the truth; moe.c in
float32 is expected to agree to a tolerance, not bit for bit).

Near-tie guard: the router's top-k choice is discontinuous, so a token whose K-th and (K+1)-th
logits nearly tie could be routed differently by float32 C code. After the first forward the
minimum over layers and tokens of (K-th largest logit - (K+1)-th largest) must be >= 1e-3, and at
each of the 10 steps also >= 1e-3 (float32 parameters drift from float64 ones over the steps,
so the later margins get the same room); otherwise the init is redrawn with the next seed.
GatePro cases add three more discontinuities, all guarded at the first forward and each step:
  (a) the margin above is taken on l~ (the selection logits); when either of the two compared
      values was penalised, the float32 spacing at their magnitude is subtracted first (the C
      rounds l - lambda to float32: ~1e-3 at lambda = 1e4, ~2e-8 at 0.3);  >= 1e-3
  (b) min over layers, tokens, experts of |l_i - l_{j*(i)}| (a loser flips);  >= 1e-3
  (c) min over layers and rows i of best S_ij - second-best S_ij (j* flips);  >= 1e-4
and the penalty must change at least one routing decision versus plain top-k at the first forward.
CompeteSMoE cases: the top-k above (>= 1e-3) is taken on the router step layers only (a competing
layer's router logits select nothing); on a competing layer, min over tokens of (K-th largest
response s - (K+1)-th) >= 1e-4 (absolute; responses are O(1)), at the first forward and each
step; and the first forward must have more than one distinct winner set.
A draw that gives NaN/inf anywhere (logits, loss, gradient) stops the script.
"""

import argparse
import math
import os
import struct
import sys
import zlib

import numpy as np
import torch

CHECKPOINT_MAGIC = 20261122
STATE_MAGIC = 20261128
HEADER_INTS = 256
DTYPE = torch.float64                  # compute dtype: the reference is the truth

FIRST_MARGIN_MIN = 1e-3                # near-tie guard on the first forward
STEP_MARGIN_MIN = 1e-3                 # near-tie guard on each training step (1e-4 would do for
                                       # float32 rounding; 1e-3 also leaves room for the drift of
                                       # float32 parameters over 10 AdamW steps)


# ------------------------------------------------------------------------------------------
# configuration and the parameter table (docs/model.md)

class Config:
    def __init__(self, maxT, V, L, NH, C, E, K, H, gate_norm, router=0, gatepro_lambda=0.0,
                 compete=None, auxfree_rate=1e-3, xmoe_dim=0):
        self.maxT, self.V, self.L, self.NH, self.C = maxT, V, L, NH, C
        self.E, self.K, self.H = E, K, H
        self.Vp = 128 * ((V + 127) // 128)       # llm.c's padding rule
        self.router = router                     # 0 = topk, 1 = gatepro (penalty on at every forward),
                                                 # 2 = compete (the layers in compete_mask compete),
                                                 # 3 = auxfree, 4 = xmoe
        self.auxfree_rate = bits_f32(f32_bits(auxfree_rate))   # auxfree's u, as the C reads it
        self.xmoe_dim = xmoe_dim                 # X-MoE's d_e (0: no X-MoE parameters)
        self.gate_norm = gate_norm               # 0 topk_softmax, 1 softmax_topk
        # GatePro's lambda as the C reads it (float32); only used when router == 1
        self.gatepro_lambda = bits_f32(f32_bits(gatepro_lambda))
        # CompeteSMoE settings (router == 2), float ones as the C reads them (float32):
        # rate, warmup, max_layers (checkpoint only: the schedule is not the reference's business),
        # weights (0 norm, 1 softmax), alpha, router_coef, div_coef, bal_coef
        self.compete = None
        if router == 2:
            self.compete = {k: (v if k in ("max_layers", "weights") else bits_f32(f32_bits(v)))
                            for k, v in compete.items()}
        self.compete_mask = 0                    # bit l set: layer l competes (every forward)
        # finite differences only: {layer: p^C} held fixed (see finite_difference_check)
        self.compete_frozen_pC = None
        assert C % NH == 0 and 1 <= K <= E and router in (0, 1, 2, 3, 4)
        assert (router == 4) == (xmoe_dim > 0)
        assert router == 0 or E >= 2             # docs/routers.md, gatepro: --router gatepro requires E >= 2

    def param_shapes(self):
        """(name, shape) in the order of docs/model.md; the flat buffer is these, row-major, back to back."""
        Vp, maxT, L, C, E, H = self.Vp, self.maxT, self.L, self.C, self.E, self.H
        return [
            ("wte", (Vp, C)), ("wpe", (maxT, C)),
            ("ln1w", (L, C)), ("ln1b", (L, C)),
            ("qkvw", (L, 3 * C, C)), ("qkvb", (L, 3 * C)),
            ("attprojw", (L, C, C)), ("attprojb", (L, C)),
            ("ln2w", (L, C)), ("ln2b", (L, C)),
            ("routerw", (L, E, C)),
            ("fcw", (L, E, H, C)), ("fcb", (L, E, H)),
            ("fcprojw", (L, E, C, H)), ("fcprojb", (L, E, C)),
            ("lnfw", (C,)), ("lnfb", (C,)),
            # checkpoint version 2: the routers' tensors after GPT-2's (version 1 ends at lnfb)
            ("router_bias", (L, E)),                     # auxfree's b: state, gradient 0, no decay
            ("xmoe_proj", (L, self.xmoe_dim, C)),        # X-MoE W_p
            ("xmoe_experts", (L, E, self.xmoe_dim)),     # X-MoE expert embeddings e_i
            ("xmoe_log_temp", (L if self.xmoe_dim > 0 else 0,)),  # X-MoE log tau
        ]

    def num_params(self):
        return sum(math.prod(shape) for _, shape in self.param_shapes())


# docs/model.md, Training: weight decay on these matrices only, none on biases or LayerNorm parameters
DECAYED = {"wte", "wpe", "qkvw", "attprojw", "routerw", "fcw", "fcprojw", "xmoe_proj", "xmoe_experts"}


def split_params(cfg, flat):
    """Views of the flat buffer, one per parameter tensor (gradients flow back to `flat`)."""
    params, offset = {}, 0
    for name, shape in cfg.param_shapes():
        n = math.prod(shape)
        params[name] = flat[offset:offset + n].view(shape)
        offset += n
    assert offset == flat.numel()
    return params


def init_params(cfg, seed, router_std=0.5, expert_std=None):
    """GPT-2's init (docs/model.md) drawn from one seeded generator in the order of docs/model.md, except that
    the reference wants every gradient path exercised: biases N(0, 0.02) instead of 0,
    LayerNorm weights 1 + N(0, 0.1) instead of 1, and a large router std (0.5) so routing
    decisions are well separated. wte rows V..Vp-1 are exactly 0. expert_std (the CompeteSMoE
    cases): fcw and fcprojw drawn with this std instead (the same draws, scaled), so the experts'
    responses differ by token and the competition picks different winners. Returns float32 numpy."""
    gen = torch.Generator().manual_seed(seed)
    residual_std = 0.02 / math.sqrt(2 * cfg.L)

    def normal(shape, std, mean=0.0):
        return mean + std * torch.randn(shape, generator=gen, dtype=DTYPE)

    chunks = []
    for name, shape in cfg.param_shapes():
        if name == "wte":
            real_rows = normal((cfg.V, cfg.C), 0.02)
            t = torch.cat([real_rows, torch.zeros(cfg.Vp - cfg.V, cfg.C, dtype=DTYPE)])
        elif expert_std is not None and name in ("fcw", "fcprojw"):
            t = normal(shape, expert_std)
        elif name in ("wpe", "qkvw", "fcw"):
            t = normal(shape, 0.02)
        elif name in ("attprojw", "fcprojw"):
            t = normal(shape, residual_std)
        elif name == "routerw":
            t = normal(shape, router_std)
        elif name in ("ln1w", "ln2w", "lnfw"):
            t = normal(shape, 0.1, mean=1.0)
        elif name == "router_bias":
            # auxfree: a nonzero bias (as after some training) so it changes the first selection
            t = normal(shape, 0.5) if cfg.router == 3 else torch.zeros(shape, dtype=DTYPE)
        elif name in ("xmoe_proj", "xmoe_experts"):
            t = normal(shape, 0.5)                       # only directions matter (cosine)
        elif name == "xmoe_log_temp":
            t = torch.full(shape, math.log(0.07), dtype=DTYPE)   # X-MoE's tau = 0.07
        else:  # ln biases and linear biases
            t = normal(shape, 0.02)
        chunks.append(t.reshape(-1))
    return torch.cat(chunks).to(torch.float32).numpy()


# ------------------------------------------------------------------------------------------
# the model, written as plainly as possible (float64, autograd does the backward)

def layernorm(x, w, b, eps=1e-5):
    # x (..., C); biased variance, as GPT-2 / llm.c
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def gelu(x):
    # tanh form, as GPT-2 and llm.c
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def attention(x, qkvw, qkvb, projw, projb, NH):
    # x (B,T,C); qkvw (3C,C): q rows [0,C), k rows [C,2C), v rows [2C,3C); head h = channels [h*hs,(h+1)*hs)
    B, T, C = x.shape
    hs = C // NH
    qkv = x @ qkvw.T + qkvb                                    # (B,T,3C)
    q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
    q = q.view(B, T, NH, hs).transpose(1, 2)                   # (B,NH,T,hs)
    k = k.view(B, T, NH, hs).transpose(1, 2)
    v = v.view(B, T, NH, hs).transpose(1, 2)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)         # (B,NH,T,T)
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    scores = scores.masked_fill(~causal, float("-inf"))
    att = torch.softmax(scores, dim=-1)
    y = (att @ v).transpose(1, 2).reshape(B, T, C)             # heads back side by side
    return y @ projw.T + projb


def topk_lower_index(logits, K):
    """Top-K expert indices per row, ties toward the lower expert index (docs/routers.md).
    A stable descending sort keeps equal values in index order. Returns (N,K) in rank order."""
    order = torch.sort(logits.detach(), dim=-1, descending=True, stable=True).indices
    return order[:, :K]


def routing_margin(logits, K):
    """min over rows of (K-th largest logit - (K+1)-th largest): how close a routing tie is."""
    if logits.shape[-1] <= K:
        return math.inf
    s = torch.sort(logits.detach(), dim=-1, descending=True).values
    return (s[:, K - 1] - s[:, K]).min().item()


def gatepro_siblings(routerw):
    """docs/routers.md, gatepro: S and each expert's nearest sibling j*, from the current router weights (E,C), no gradient:
    S_ij = <w_i,w_j> / (max(|w_i|,1e-12) max(|w_j|,1e-12)) (F.normalize's convention), and
    j*(i) = argmax_{j != i} S_ij, ties toward the lower j (torch.argmax returns the first maximum).
    Returns (sibling (E,) long, the smallest gap between a row's best and second-best S_ij)."""
    w = routerw.detach()
    wn = torch.nn.functional.normalize(w, dim=-1, eps=1e-12)
    S = wn @ wn.T
    E = S.shape[0]
    off = S.masked_fill(torch.eye(E, dtype=torch.bool), -math.inf)   # exclude j == i
    sibling = off.argmax(dim=-1)
    if E <= 2:
        return sibling, math.inf                   # one candidate per row: j* cannot flip
    top2 = torch.sort(off, dim=-1, descending=True).values[:, :2]
    return sibling, (top2[:, 0] - top2[:, 1]).min().item()


def selection_margin(sel, penalised, K):
    """The near-tie margin (a) on the selection logits sel (N,E): min over rows of K-th largest minus
    (K+1)-th largest, less the float32 rounding room when either of the two was penalised (the C
    rounds l - lambda to float32; at lambda = 1e4 that spacing is ~1e-3, not negligible)."""
    E = sel.shape[-1]
    if E <= K:
        return math.inf
    order = torch.sort(sel.detach(), dim=-1, descending=True, stable=True)
    s, idx = order.values, order.indices
    gap = s[:, K - 1] - s[:, K]
    pen = penalised.gather(1, idx[:, K - 1:K + 1]).any(dim=1)
    mag = torch.maximum(s[:, K - 1].abs(), s[:, K].abs()).numpy().astype(np.float32)
    room = torch.tensor(np.spacing(mag).astype(np.float64)) * pen
    return (gap - room).min().item()


def xmoe_scores(x, proj, experts, log_temp):
    """X-MoE (arXiv 2204.09179): l_i = cos(W_p x, e_i) / tau, tau = exp(log_temp); F.normalize's
    max(|v|, 1e-12) convention on both sides. x (N,C), proj (De,C), experts (E,De)."""
    z = x @ proj.T                                             # (N,De)
    zh = z / torch.clamp(z.norm(dim=-1, keepdim=True), min=1e-12)
    eh = experts / torch.clamp(experts.norm(dim=-1, keepdim=True), min=1e-12)
    return (zh @ eh.T) * torch.exp(-log_temp)


def moe_layer(x, routerw, fcw, fcb, fcprojw, fcprojb, cfg, aux_coef, z_coef, bias=None, xmoe=None):
    """x (N,C) -> y (N,C), plus this layer's aux loss, z-loss, selected experts (N,K) and a dict of
    near-tie diagnostics (see forward). routerw (E,C), fcw (E,H,C), fcb (E,H), fcprojw (E,C,H),
    fcprojb (E,C). bias (E): auxfree's selection bias; xmoe: (proj, experts, log_temp)."""
    N, C = x.shape
    E, K = cfg.E, cfg.K
    zero = torch.zeros((), dtype=x.dtype)
    diag = dict(margin=math.inf, loser_margin=math.inf, sim_gap=math.inf, topk_diff=0)
    if E == 1:
        # dense GPT-2 MLP: no router, weight 1, no aux losses
        selected = torch.zeros(N, 1, dtype=torch.long)
        gates = torch.ones(N, 1, dtype=x.dtype)
        aux, z = zero, zero
    else:
        if cfg.router == 4:
            logits = xmoe_scores(x, *xmoe)                     # (N,E) cosine / tau
        else:
            logits = x @ routerw.T                             # (N,E), no router bias
        if cfg.router == 1:
            # GatePro (docs/routers.md, gatepro): expert i loses when l_i < l_{j*(i)} (strict: a tie is no loss)
            # and its logit drops by lambda. The mask is a constant (detached), so dl~/dl = I and no
            # gradient reaches S or j*.
            sibling, diag["sim_gap"] = gatepro_siblings(routerw)
            ld = logits.detach()
            loses = ld < ld[:, sibling]                        # (N,E) bool
            sel = logits - cfg.gatepro_lambda * loses.to(logits.dtype)
            diag["loser_margin"] = (ld - ld[:, sibling]).abs().min().item()
            plain = torch.sort(topk_lower_index(logits, K), dim=-1).values
        else:
            loses = torch.zeros(logits.shape, dtype=torch.bool)
            sel = logits
        if cfg.router == 3:
            # auxfree: top-k on l + b (b a constant: no gradient), the weights from the unbiased l
            biased = logits.detach() + bias.detach()
            selected = topk_lower_index(biased, K)
            diag["margin"] = routing_margin(biased, K)
            plain = torch.sort(topk_lower_index(logits, K), dim=-1).values
        else:
            selected = topk_lower_index(sel, K)                # top-k on l~, not differentiable
            diag["margin"] = selection_margin(sel, loses, K) if cfg.router == 1 else routing_margin(logits, K)
        if cfg.router in (1, 3):
            diag["topk_diff"] = int((torch.sort(selected, dim=-1).values != plain).any(dim=1).sum())
        chosen = sel.gather(1, selected)                       # (N,K)
        # the aux losses' P and the z-loss use the unpenalised logits l (docs/routers.md, gatepro).
        # (Op order kept as before GatePro was added: autograd's accumulation order, and so the
        # last bits of the topk cases' float64 gradients, depend on it.)
        probs = torch.softmax(logits, dim=-1)                  # over all E experts
        if cfg.gate_norm == 0:      # topk_softmax: softmax over the selected l~ only
            gates = torch.softmax(chosen, dim=-1)
        else:                       # softmax_topk: softmax(l~) over all E, keep selected, no renormalising
            gates = (probs if sel is logits else torch.softmax(sel, dim=-1)).gather(1, selected)
        # load balance (Switch): a * E * sum_i f_i P_i; f_i is a count, a constant for the gradient.
        # Under GatePro f counts the experts actually selected, T_k(l~) (the documented choice, docs/routers.md).
        counts = torch.zeros(E, dtype=x.dtype).index_add_(
            0, selected.reshape(-1), torch.ones(N * K, dtype=x.dtype))
        f = counts / (N * K)
        P = probs.mean(0)
        aux = aux_coef * E * (f * P).sum()
        # router z-loss: z * mean_t (logsumexp l_t)^2
        z = z_coef * (torch.logsumexp(logits, dim=-1) ** 2).mean()

    # dispatch: run expert e on the tokens that chose it, add its weighted output back
    y = torch.zeros_like(x)
    for e in range(E):
        token, slot = (selected == e).nonzero(as_tuple=True)
        if token.numel() == 0:
            continue
        h = gelu(x[token] @ fcw[e].T + fcb[e])                 # (n,H)
        out = h @ fcprojw[e].T + fcprojb[e]                    # (n,C)
        y = y.index_add(0, token, gates[token, slot].unsqueeze(1) * out)
    return y, aux, z, selected, diag


def compete_layer(x, routerw, fcw, fcb, fcprojw, fcprojb, cfg, frozen_pC=None):
    """A competition step (docs/routers.md, compete) of one layer: x (N,C) -> y (N,C), this layer's
    weighted competition loss router_coef*L_D + div_coef*L_div + bal_coef*L_bal, the winners I_C
    (N,K) in rank order, and near-tie diagnostics (with the detached p^C). No Switch balance
    loss, no z-loss here. frozen_pC (N,E), finite differences only: L_D's target p^C taken as
    this constant instead of softmax(s) of the current parameters (the same values at the base
    point), so that the loss's derivative is the stop-gradient gradient autograd computes."""
    N, C = x.shape
    E, K = cfg.E, cfg.K
    cp = cfg.compete
    # 1. every expert on every token: o (N,E,C)
    outs = []
    for e in range(E):
        h = gelu(x @ fcw[e].T + fcb[e])                        # (N,H)
        outs.append(h @ fcprojw[e].T + fcprojb[e])             # (N,C)
    o = torch.stack(outs, dim=1)                               # (N,E,C)
    # 2. neural response s_i = mean_c softplus(o_ic)
    s = torch.nn.functional.softplus(o).mean(-1)               # (N,E)
    # 3. winners: top-k of s, ties -> lower index, not differentiable
    selected = topk_lower_index(s, K)                          # (N,K)
    s_sel = s.gather(1, selected)                              # (N,K)
    o_sel = o.gather(1, selected.unsqueeze(-1).expand(N, K, C))  # (N,K,C)
    # 4. weights from the winners' responses (gradient through s into the experts)
    if cp["weights"] == 0:      # norm: w_i = s_i / sum_{j in I_C} s_j
        w = s_sel / s_sel.sum(-1, keepdim=True)
    else:                       # softmax over the winners' responses
        w = torch.softmax(s_sel, dim=-1)
    # 5. output
    y = (w.unsqueeze(-1) * o_sel).sum(1)                       # (N,C)
    # 6. router distillation: p^R = softmax(l) over all E, p^C = softmax(s) over all E, detached.
    # The router's only gradient here; x gets L_D's gradient through l as well.
    logits = x @ routerw.T                                     # (N,E)
    pR = torch.softmax(logits, dim=-1)
    pC_live = torch.softmax(s, dim=-1)                         # not detached: the balance loss's P
    pC = pC_live.detach() if frozen_pC is None else frozen_pC
    L_D = ((pR - pC) ** 2).mean()
    L_D = L_D + cp["alpha"] * ((pC.gather(1, selected) - pR.gather(1, selected)) ** 2).sum(-1).div(K).mean()
    # 7. diversity: mean_t (1/K^2) sum_{i != j in I_C} cos(o_i, o_j), F.normalize's eps convention
    on = o_sel / torch.clamp(o_sel.norm(dim=-1, keepdim=True), min=1e-12)
    cos = on @ on.transpose(1, 2)                              # (N,K,K)
    cos = cos * (1.0 - torch.eye(K, dtype=cos.dtype))         # diagonal zeroed
    L_div = (cos.sum((1, 2)) / (K * K)).mean()
    # 8. balance on the competition: E * sum_i f_i P_i, f from I_C (constant), P = mean_t p^C (live)
    counts = torch.zeros(E, dtype=x.dtype).index_add_(
        0, selected.reshape(-1), torch.ones(N * K, dtype=x.dtype))
    f = counts / (N * K)
    L_bal = E * (f * pC_live.mean(0)).sum()
    loss = cp["router_coef"] * L_D + cp["div_coef"] * L_div + cp["bal_coef"] * L_bal
    winner_sets = len(set(tuple(r) for r in torch.sort(selected, dim=-1).values.tolist()))
    diag = dict(compete_margin=routing_margin(s, K), winner_sets=winner_sets,
                L_D=L_D.item(), L_div=L_div.item(), L_bal=L_bal.item(), pC=pC)
    return y, loss, selected, diag


def forward(cfg, params, inputs, targets, aux_coef, z_coef):
    """inputs, targets (B,T) long. Returns a dict with logits (B,T,Vp), the losses, routing
    (L,B,T,K) sorted ascending, and the near-tie diagnostics, each the worst over layers:
      margin        (a) min (K-th - (K+1)-th) of the selection logits (l, or l~ under GatePro)
      loser_margin  (b) GatePro: min over tokens and experts of |l_i - l_{j*(i)}| (a loser flips)
      sim_gap       (c) GatePro: min over rows i of best S_ij - second-best S_ij (j* flips)
      topk_diff     GatePro: token-layers whose selected set differs from plain top-k on l
    CompeteSMoE (router 2): the layers in cfg.compete_mask compete (compete_layer); "compete" is
    the sum of their weighted losses and is part of "total"; "compete_diag" lists their
    diagnostics (compete_margin: min K-th - (K+1)-th response; winner_sets; L_D, L_div, L_bal)."""
    p = params
    B, T = inputs.shape
    x = p["wte"][inputs] + p["wpe"][:T]                        # (B,T,C)
    aux_total = torch.zeros((), dtype=DTYPE)
    z_total = torch.zeros((), dtype=DTYPE)
    routing = []
    diag = dict(margin=math.inf, loser_margin=math.inf, sim_gap=math.inf, topk_diff=0)
    compete_total = torch.zeros((), dtype=DTYPE)
    compete_diag = []
    for l in range(cfg.L):
        x = x + attention(layernorm(x, p["ln1w"][l], p["ln1b"][l]),
                          p["qkvw"][l], p["qkvb"][l], p["attprojw"][l], p["attprojb"][l], cfg.NH)
        h = layernorm(x, p["ln2w"][l], p["ln2b"][l]).reshape(B * T, cfg.C)
        if cfg.router == 2 and (cfg.compete_mask >> l) & 1:
            frozen = None if cfg.compete_frozen_pC is None else cfg.compete_frozen_pC[l]
            y, closs, selected, cd = compete_layer(h, p["routerw"][l], p["fcw"][l], p["fcb"][l],
                                                   p["fcprojw"][l], p["fcprojb"][l], cfg, frozen)
            x = x + y.view(B, T, cfg.C)
            compete_total = compete_total + closs
            compete_diag.append(dict(cd, layer=l))
            routing.append(torch.sort(selected, dim=-1).values.view(B, T, cfg.K))
            continue
        xmoe = (p["xmoe_proj"][l], p["xmoe_experts"][l], p["xmoe_log_temp"][l]) if cfg.router == 4 else None
        y, aux, z, selected, d = moe_layer(h, p["routerw"][l], p["fcw"][l], p["fcb"][l],
                                           p["fcprojw"][l], p["fcprojb"][l], cfg, aux_coef, z_coef,
                                           bias=p["router_bias"][l], xmoe=xmoe)
        x = x + y.view(B, T, cfg.C)
        aux_total = aux_total + aux
        z_total = z_total + z
        routing.append(torch.sort(selected, dim=-1).values.view(B, T, cfg.K))
        for key in diag:
            diag[key] = diag[key] + d[key] if key == "topk_diff" else min(diag[key], d[key])
    x = layernorm(x, p["lnfw"], p["lnfb"])
    logits = x @ p["wte"].T                                    # (B,T,Vp), tied embedding
    # cross-entropy over the first V columns only
    lm_loss = torch.nn.functional.cross_entropy(
        logits[..., :cfg.V].reshape(B * T, cfg.V), targets.reshape(-1))
    total = lm_loss + aux_total + z_total
    if cfg.router == 2:
        total = total + compete_total
    return dict(logits=logits, lm_loss=lm_loss, aux=aux_total, z=z_total, compete=compete_total,
                total=total, routing=torch.stack(routing), compete_diag=compete_diag, **diag)


# ------------------------------------------------------------------------------------------
# AdamW by hand, exactly docs/model.md, Training (with global-norm clipping first)

def decay_mask(cfg):
    parts = [torch.full((math.prod(shape),), 1.0 if name in DECAYED else 0.0, dtype=DTYPE)
             for name, shape in cfg.param_shapes()]
    return torch.cat(parts)


def adamw_step(param, grad, m, v, step, lr, wd, clip, mask, beta1=0.9, beta2=0.95, eps=1e-8):
    """In place on float64 tensors. step is 0-based; t = step+1. Returns the pre-clip norm."""
    norm = torch.sqrt((grad * grad).sum()).item()
    grad = grad * min(1.0, clip / (norm + 1e-6))
    m.mul_(beta1).add_((1 - beta1) * grad)
    v.mul_(beta2).add_((1 - beta2) * grad * grad)
    t = step + 1
    mhat = m / (1 - beta1 ** t)
    vhat = v / (1 - beta2 ** t)
    param.sub_(lr * (mhat / (torch.sqrt(vhat) + eps) + wd * mask * param))
    return norm


# ------------------------------------------------------------------------------------------
# running a case

def run_case(cfg, flat32, inputs, targets, hp, verbose=True):
    """Forward + backward on the float32-stored init, then nsteps AdamW steps on the same batch.
    hp: dict lr, wd, clip, aux, z, nsteps. Returns everything the state file holds, plus margins."""
    flat = torch.tensor(flat32, dtype=DTYPE)
    mask = decay_mask(cfg)
    m = torch.zeros_like(flat)
    v = torch.zeros_like(flat)
    result = dict(lm_losses=[], total_losses=[], margins=[], loser_margins=[], sim_gaps=[],
                  topk_diffs=[], norms=[], compete_margins=[], winner_sets=[], compete_parts=[])
    for step in range(hp["nsteps"]):
        leaf = flat.clone().requires_grad_(True)
        out = forward(cfg, split_params(cfg, leaf), inputs, targets, hp["aux"], hp["z"])
        out["total"].backward()
        grad = leaf.grad.detach()
        if not (torch.isfinite(out["logits"]).all() and torch.isfinite(out["total"])
                and torch.isfinite(grad).all()):
            sys.exit(f"step {step}: NaN/inf in the logits, loss or gradient")
        if step == 0:
            result.update(logits=out["logits"].detach(), lm_loss=out["lm_loss"].item(),
                          aux=out["aux"].item(), z=out["z"].item(), compete=out["compete"].item(),
                          routing=out["routing"], grads=grad.clone())
        result["lm_losses"].append(out["lm_loss"].item())
        result["total_losses"].append(out["total"].item())
        result["margins"].append(out["margin"])
        result["loser_margins"].append(out["loser_margin"])
        result["sim_gaps"].append(out["sim_gap"])
        result["topk_diffs"].append(out["topk_diff"])
        cds = out["compete_diag"]
        result["compete_margins"].append(min([cd["compete_margin"] for cd in cds], default=math.inf))
        result["winner_sets"].append([cd["winner_sets"] for cd in cds])
        result["compete_parts"].append([(cd["L_D"], cd["L_div"], cd["L_bal"]) for cd in cds])
        norm = adamw_step(flat, grad, m, v, step, hp["lr"], hp["wd"], hp["clip"], mask)
        if cfg.router == 3:
            auxfree_update(cfg, flat, out["routing"])
        result["norms"].append(norm)
        if verbose:
            clipped = "clipped" if norm > hp["clip"] else ""
            gp = (f"loser {out['loser_margin']:.3e}  S-gap {out['sim_gap']:.3e}  "
                  f"vs-topk {out['topk_diff']}  " if cfg.router == 1 else "")
            if cfg.router == 2:
                gp = (f"compete {out['compete'].item():.6f} (" + "; ".join(
                    f"L{cd['layer']}: L_D {cd['L_D']:.3e} L_div {cd['L_div']:.4f} L_bal {cd['L_bal']:.4f} "
                    f"margin {cd['compete_margin']:.3e} sets {cd['winner_sets']}"
                    for cd in out["compete_diag"]) + ")  ")
            print(f"  step {step:2d}: lm {out['lm_loss'].item():.6f} "
                  f"total {out['total'].item():.6f}  margin {out['margin']:.3e}  {gp}"
                  f"|g| {norm:.4f} {clipped}")
    return result


def auxfree_update(cfg, flat, routing):
    """auxfree after an optimizer step (arXiv 2408.15664): per layer b_i += u sign(mean_j c_j - c_i),
    c_i = tokens routed to expert i in the step (routing (L,B,T,K)). In place on flat (float64)."""
    b = split_params(cfg, flat)["router_bias"]                 # a view into flat
    for l in range(cfg.L):
        c = torch.bincount(routing[l].reshape(-1), minlength=cfg.E).to(DTYPE)
        b[l] += cfg.auxfree_rate * torch.sign(c.mean() - c)


def make_batch(cfg, B, T, seed):
    # the data has its own stream, derived from the seed (streams never shift each other)
    gen = torch.Generator().manual_seed(seed + 1_000_003)
    tokens = torch.randint(0, cfg.V, (B, T + 1), generator=gen)
    return tokens[:, :T].contiguous(), tokens[:, 1:].contiguous()


# ------------------------------------------------------------------------------------------
# file writing / reading

def f32_bits(x):
    return struct.unpack("<i", struct.pack("<f", x))[0]


def bits_f32(i):
    return struct.unpack("<f", struct.pack("<i", i))[0]


def write_with_crc(path, payload):
    crc = zlib.crc32(payload) & 0xFFFFFFFF
    with open(path, "wb") as f:
        f.write(payload)
        f.write(struct.pack("<I", crc))


def checkpoint_bytes(cfg, flat32, seed):
    # topk cases carry the default lambda 1e-4 (unused by the topk router); gatepro its own
    gatepro_lambda = cfg.gatepro_lambda if cfg.router == 1 else 1e-4
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:19] = [CHECKPOINT_MAGIC, 2, cfg.maxT, cfg.V, cfg.Vp, cfg.L, cfg.NH, cfg.C,
                   cfg.E, cfg.K, cfg.H, cfg.router, cfg.gate_norm, 0, 0,
                   f32_bits(gatepro_lambda), 0, -1, seed]
    if cfg.router == 2:
        cp = cfg.compete
        header[22:30] = [f32_bits(cp["rate"]), f32_bits(cp["warmup"]), cp["max_layers"], cp["weights"],
                         f32_bits(cp["alpha"]), f32_bits(cp["router_coef"]), f32_bits(cp["div_coef"]),
                         f32_bits(cp["bal_coef"])]
    header[30:32] = [cfg.xmoe_dim, f32_bits(cfg.auxfree_rate)]
    return header.tobytes() + np.asarray(flat32, dtype="<f4").tobytes()


def state_bytes(cfg, B, T, hp, inputs, targets, res):
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:16] = [STATE_MAGIC, 1, B, T, hp["nsteps"], f32_bits(hp["lr"]), f32_bits(hp["wd"]),
                   f32_bits(hp["clip"]), f32_bits(hp["aux"]), f32_bits(hp["z"]),
                   f32_bits(cfg.gatepro_lambda if cfg.router == 1 else 0.0),
                   cfg.num_params(), cfg.K, cfg.L, cfg.router, cfg.gate_norm]
    if cfg.router == 2:
        header[16:18] = [cfg.compete_mask, f32_bits(res["compete"])]
    parts = [
        header.tobytes(),
        inputs.numpy().astype("<i4").tobytes(),
        targets.numpy().astype("<i4").tobytes(),
        res["logits"].numpy().astype("<f4").tobytes(),
        np.array([res["lm_loss"], res["aux"], res["z"]], dtype="<f4").tobytes(),
        res["routing"].numpy().astype("<i4").tobytes(),          # (L,B,T,K)
        res["grads"].numpy().astype("<f4").tobytes(),
        np.array(res["lm_losses"], dtype="<f4").tobytes(),
        np.array(res["total_losses"], dtype="<f4").tobytes(),
    ]
    return b"".join(parts)


class Reader:
    """Sequential little-endian reader over a file's bytes, after its crc has been checked."""

    def __init__(self, path):
        data = open(path, "rb").read()
        if len(data) < 4 * HEADER_INTS + 4:
            raise ValueError(f"{path}: {len(data)} bytes, too short for a header")
        stored = struct.unpack("<I", data[-4:])[0]
        computed = zlib.crc32(data[:-4]) & 0xFFFFFFFF
        if stored != computed:
            raise ValueError(f"{path}: crc32 stored {stored:08x}, computed {computed:08x}")
        self.path, self.data, self.pos = path, data[:-4], 0

    def take(self, dtype, count):
        n = np.dtype(dtype).itemsize * count
        if self.pos + n > len(self.data):
            raise ValueError(f"{self.path}: wants {n} bytes at {self.pos}, file body has {len(self.data)}")
        a = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += n
        return a

    def done(self):
        if self.pos != len(self.data):
            raise ValueError(f"{self.path}: {len(self.data) - self.pos} bytes left over")


def read_checkpoint(path):
    r = Reader(path)
    h = r.take("<i4", HEADER_INTS)
    if h[0] != CHECKPOINT_MAGIC or h[1] != 2:
        raise ValueError(f"{path}: bad magic/version {h[0]}/{h[1]}")
    compete = None
    if h[11] == 2:
        compete = dict(rate=bits_f32(h[22]), warmup=bits_f32(h[23]), max_layers=int(h[24]),
                       weights=int(h[25]), alpha=bits_f32(h[26]), router_coef=bits_f32(h[27]),
                       div_coef=bits_f32(h[28]), bal_coef=bits_f32(h[29]))
        if compete["weights"] not in (0, 1):
            raise ValueError(f"{path}: compete weights {h[25]}, expected 0 or 1")
    cfg = Config(maxT=h[2], V=h[3], L=h[5], NH=h[6], C=h[7], E=h[8], K=h[9], H=h[10],
                 gate_norm=h[12], router=h[11], gatepro_lambda=bits_f32(h[15]) if h[11] == 1 else 0.0,
                 compete=compete, auxfree_rate=bits_f32(h[31]), xmoe_dim=int(h[30]))
    if h[11] == 1 and (h[16] != 0 or h[17] != -1):
        raise ValueError(f"{path}: gatepro start/stop {h[16]}/{h[17]}, the reference has 0/-1")
    if cfg.Vp != h[4]:
        raise ValueError(f"{path}: Vp {h[4]} but V {h[3]} gives {cfg.Vp}")
    if h[13] != 0:
        raise ValueError(f"{path}: has optimizer state; the reference never writes it")
    flat32 = r.take("<f4", cfg.num_params()).copy()
    r.done()
    return cfg, h, flat32


def read_state(path, cfg):
    r = Reader(path)
    h = r.take("<i4", HEADER_INTS)
    if h[0] != STATE_MAGIC or h[1] != 1:
        raise ValueError(f"{path}: bad magic/version {h[0]}/{h[1]}")
    B, T, nsteps = int(h[2]), int(h[3]), int(h[4])
    if h[11] != cfg.num_params() or h[12] != cfg.K or h[13] != cfg.L:
        raise ValueError(f"{path}: header disagrees with the checkpoint (num_params/K/L)")
    if h[14] != cfg.router or h[15] != cfg.gate_norm:
        raise ValueError(f"{path}: header disagrees with the checkpoint (router/gate_norm)")
    if cfg.router == 1 and bits_f32(h[10]) != cfg.gatepro_lambda:
        raise ValueError(f"{path}: GatePro lambda {bits_f32(h[10])}, checkpoint {cfg.gatepro_lambda}")
    s = dict(B=B, T=T, nsteps=nsteps, lr=bits_f32(h[5]), wd=bits_f32(h[6]), clip=bits_f32(h[7]),
             aux_coef=bits_f32(h[8]), z_coef=bits_f32(h[9]))
    if cfg.router == 2:
        s["compete_mask"], s["compete"] = int(h[16]), bits_f32(h[17])
    s["inputs"] = r.take("<i4", B * T).reshape(B, T)
    s["targets"] = r.take("<i4", B * T).reshape(B, T)
    s["logits"] = r.take("<f4", B * T * cfg.Vp).reshape(B, T, cfg.Vp)
    s["lm_loss"], s["aux"], s["z"] = r.take("<f4", 3)
    s["routing"] = r.take("<i4", cfg.L * B * T * cfg.K).reshape(cfg.L, B, T, cfg.K)
    s["grads"] = r.take("<f4", cfg.num_params())
    s["lm_losses"] = r.take("<f4", nsteps)
    s["total_losses"] = r.take("<f4", nsteps)
    r.done()
    return s


# ------------------------------------------------------------------------------------------
# the cases

BASE = dict(maxT=16, V=61, L=2, NH=3, C=24, H=32)
B, T = 3, 11
SEED = 1337
# clip 1.0 is the default; at this init the global gradient norm is above 1 at the first
# steps (clipping active) and falls below it later, so both branches of the clip are compared.
HP = dict(lr=1e-2, wd=0.1, clip=1.0, nsteps=10)

# CompeteSMoE: the schedule settings only go into the checkpoint (the reference applies a fixed
# pattern: the layers in COMPETE_MASK compete at every forward); coefficients larger than the
# defaults so every gradient path shows in the comparison.
COMPETE_FILE = dict(rate=0.05, warmup=0.05, max_layers=3)
COMPETE_COEFS = dict(router_coef=0.5, div_coef=0.3, bal_coef=0.2)
COMPETE_MASK = 0b01                    # layer 0 competes, layer 1 is a plain topk router step
COMPETE_EXPERT_STD = 0.5               # fcw/fcprojw init std for the compete cases (see init_params)
COMPETE_MARGIN_MIN = 1e-4              # K-th minus (K+1)-th response s, first forward and every step

CASES = [
    ("topk_ts", dict(E=4, K=2, gate_norm=0), dict(aux=0.01, z=0.001)),
    ("topk_st", dict(E=4, K=2, gate_norm=1), dict(aux=0.01, z=0.001)),
    ("dense",   dict(E=1, K=1, gate_norm=0), dict(aux=0.0, z=0.0)),
    ("gatepro_ts",   dict(E=4, K=2, gate_norm=0, router=1, gatepro_lambda=0.3), dict(aux=0.01, z=0.001)),
    ("gatepro_st",   dict(E=4, K=2, gate_norm=1, router=1, gatepro_lambda=0.3), dict(aux=0.01, z=0.001)),
    ("gatepro_hard", dict(E=4, K=2, gate_norm=0, router=1, gatepro_lambda=1e4), dict(aux=0.01, z=0.001)),
    ("compete_norm", dict(E=4, K=2, gate_norm=0, router=2,
                          compete=dict(COMPETE_FILE, weights=0, alpha=0.1, **COMPETE_COEFS)),
     dict(aux=0.01, z=0.001)),
    ("compete_softmax", dict(E=4, K=2, gate_norm=0, router=2,
                             compete=dict(COMPETE_FILE, weights=1, alpha=0.0, **COMPETE_COEFS)),
     dict(aux=0.01, z=0.001)),
    ("auxfree_ts", dict(E=4, K=2, gate_norm=0, router=3, auxfree_rate=0.05), dict(aux=0.0, z=0.001)),
    ("auxfree_st", dict(E=4, K=2, gate_norm=1, router=3, auxfree_rate=0.05), dict(aux=0.01, z=0.001)),
    ("xmoe_ts", dict(E=4, K=2, gate_norm=0, router=4, xmoe_dim=6), dict(aux=0.01, z=0.001)),
    ("xmoe_st", dict(E=4, K=2, gate_norm=1, router=4, xmoe_dim=6), dict(aux=0.01, z=0.001)),
]
LOSER_MARGIN_MIN = 1e-3                # GatePro (b): |l_i - l_{j*(i)}|, first forward and every step
SIM_GAP_MIN = 1e-4                     # GatePro (c): best minus second-best S_ij of every row


def near_tie(cfg, res):
    """Why this draw is rejected, or None. Every guard holds at the first forward and each step."""
    first, worst = res["margins"][0], min(res["margins"])
    if first < FIRST_MARGIN_MIN or worst < STEP_MARGIN_MIN:
        return f"top-k margin: first forward {first:.3e}, worst step {worst:.3e}"
    if cfg.router == 1:
        if min(res["loser_margins"]) < LOSER_MARGIN_MIN:
            return f"loser margin |l_i - l_j*| {min(res['loser_margins']):.3e}"
        if min(res["sim_gaps"]) < SIM_GAP_MIN:
            return f"sibling gap of S {min(res['sim_gaps']):.3e}"
        if res["topk_diffs"][0] == 0:
            return "the penalty changes no routing decision at the first forward"
    if cfg.router == 3 and res["topk_diffs"][0] == 0:
        return "the bias changes no routing decision at the first forward"
    if cfg.router == 2:
        if min(res["compete_margins"]) < COMPETE_MARGIN_MIN:
            return (f"competition margin: first forward {res['compete_margins'][0]:.3e}, "
                    f"worst step {min(res['compete_margins']):.3e}")
        if min(res["winner_sets"][0]) < 2:
            return "the competition picks the same winners for every token at the first forward"
    return None


def build_case(name, arch, coefs, outdir):
    cfg = Config(**BASE, **arch)
    # the C reads the hyperparameters as float32, so the reference uses those same values
    hp = {k: (v if k == "nsteps" else bits_f32(f32_bits(v))) for k, v in dict(HP, **coefs).items()}
    if cfg.router == 2:
        cfg.compete_mask = COMPETE_MASK
    for seed in range(SEED, SEED + 100):
        flat32 = init_params(cfg, seed, expert_std=COMPETE_EXPERT_STD if cfg.router == 2 else None)
        inputs, targets = make_batch(cfg, B, T, seed)
        print(f"[{name}] seed {seed}, {cfg.num_params()} params")
        res = run_case(cfg, flat32, inputs, targets, hp)
        why = near_tie(cfg, res)
        if why is None:
            break
        print(f"[{name}] rejected ({why}): redraw")
    else:
        sys.exit(f"[{name}] no seed without a routing near-tie in 100 tries")
    model_path = os.path.join(outdir, f"{name}_model.bin")
    state_path = os.path.join(outdir, f"{name}_state.bin")
    write_with_crc(model_path, checkpoint_bytes(cfg, flat32, seed))
    write_with_crc(state_path, state_bytes(cfg, B, T, hp, inputs, targets, res))
    print(f"[{name}] margin first forward {res['margins'][0]:.3e}, min over steps "
          f"{min(res['margins']):.3e}; clipped at steps "
          f"{[s for s, n in enumerate(res['norms']) if n > hp['clip']]}")
    if cfg.router == 1:
        print(f"[{name}] GatePro lambda {cfg.gatepro_lambda:g}: loser margin min {min(res['loser_margins']):.3e}, "
              f"S sibling gap min {min(res['sim_gaps']):.3e}; token-layer selections differing from "
              f"plain top-k: {res['topk_diffs'][0]} of {cfg.L * B * T} at the first forward, "
              f"per step {res['topk_diffs']}")
    if cfg.router == 2:
        print(f"[{name}] CompeteSMoE: layers mask {cfg.compete_mask:#b}, compete loss {res['compete']:.6f}; "
              f"response margin first forward {res['compete_margins'][0]:.3e}, min over steps "
              f"{min(res['compete_margins']):.3e}; distinct winner sets per step {res['winner_sets']} "
              f"(of {B * T} tokens)")
    print(f"[{name}] wrote {model_path} ({os.path.getsize(model_path)} B), "
          f"{state_path} ({os.path.getsize(state_path)} B)")


def finite_difference_check(cfg, flat32, inputs, targets, hp, grads, count=40, h=1e-6,
                            atol=1e-8, rtol=1e-4):
    """Central differences of the total loss (float64) against the autograd gradient at `count`
    coordinates: a few random ones plus the first of every parameter tensor and all of routerw. Routing does not
    change under a 1e-6 step because the margins are >= 1e-3. Tolerance as numpy.allclose
    (|fd - g| <= atol + rtol*|g|; atol covers the float64 rounding of the differences, ~1e-10,
    on gradients that are 0 or tiny, e.g. the key bias, whose gradient is exactly 0).
    Returns the worst |fd - g| / (atol + rtol*|g|): the check passes when it is <= 1.
    CompeteSMoE: L_D's target p^C is detached, so the autograd gradient is not the derivative of
    the loss as a function of the parameters; the differences are taken with p^C held at its
    value at the base point (cfg.compete_frozen_pC), whose derivative it is."""
    flat = torch.tensor(flat32, dtype=DTYPE)
    if cfg.router == 2:
        with torch.no_grad():
            base = forward(cfg, split_params(cfg, flat), inputs, targets, hp["aux"], hp["z"])
        cfg.compete_frozen_pC = {cd["layer"]: cd["pC"] for cd in base["compete_diag"]}
    gen = torch.Generator().manual_seed(0)
    coords = torch.randint(0, flat.numel(), (count,), generator=gen).tolist()
    offset = 0
    for name, shape in cfg.param_shapes():
        if name in ("routerw", "xmoe_experts", "xmoe_log_temp") and cfg.E > 1:
            # every router weight: the gradient path through the gates (and GatePro's l~) and the
            # aux losses all end here
            coords.extend(range(offset, offset + math.prod(shape)))
        elif name in ("fcprojb", "fcb") and cfg.router == 2:
            # CompeteSMoE: every expert bias (the responses, weights, L_div and L_bal all end here)
            coords.extend(range(offset, offset + math.prod(shape)))
        elif math.prod(shape) > 0:
            coords.append(offset)
        offset += math.prod(shape)

    def loss_at(x):
        with torch.no_grad():
            return forward(cfg, split_params(cfg, x), inputs, targets, hp["aux"], hp["z"])["total"].item()

    worst = 0.0
    for i in coords:
        plus, minus = flat.clone(), flat.clone()
        plus[i] += h
        minus[i] -= h
        fd = (loss_at(plus) - loss_at(minus)) / (2 * h)
        worst = max(worst, abs(fd - grads[i]) / (atol + rtol * abs(grads[i])))
    cfg.compete_frozen_pC = None
    return worst


def check_case(name, outdir):
    """Re-read both files (crc, sizes, headers), recompute from the stored float32 parameters
    and batch, and compare with what the state file holds."""
    model_path = os.path.join(outdir, f"{name}_model.bin")
    state_path = os.path.join(outdir, f"{name}_state.bin")
    cfg, h, flat32 = read_checkpoint(model_path)
    s = read_state(state_path, cfg)
    expect = 4 * HEADER_INTS + 4 * cfg.num_params() + 4
    assert os.path.getsize(model_path) == expect, f"{model_path}: size, expected {expect}"
    BT = s["B"] * s["T"]
    expect = 4 * HEADER_INTS + 4 * (2 * BT + BT * cfg.Vp + 3 + cfg.L * BT * cfg.K
                                    + cfg.num_params() + 2 * s["nsteps"]) + 4
    assert os.path.getsize(state_path) == expect, f"{state_path}: size, expected {expect}"
    hp = dict(lr=s["lr"], wd=s["wd"], clip=s["clip"], aux=s["aux_coef"], z=s["z_coef"],
              nsteps=s["nsteps"])
    if cfg.router == 2:
        cfg.compete_mask = s["compete_mask"]
    res = run_case(cfg, flat32, torch.tensor(s["inputs"], dtype=torch.long),
                   torch.tensor(s["targets"], dtype=torch.long), hp, verbose=False)

    def maxdiff(a, b):
        return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))

    diffs = dict(logits=maxdiff(res["logits"].numpy(), s["logits"]),
                 losses=maxdiff([res["lm_loss"], res["aux"], res["z"]]
                                + ([res["compete"]] if cfg.router == 2 else []),
                                [s["lm_loss"], s["aux"], s["z"]]
                                + ([s["compete"]] if cfg.router == 2 else [])),
                 grads=maxdiff(res["grads"].numpy(), s["grads"]),
                 steps=maxdiff(res["lm_losses"] + res["total_losses"],
                               np.concatenate([s["lm_losses"], s["total_losses"]])))
    routing_ok = np.array_equal(res["routing"].numpy(), s["routing"])
    fd_err = finite_difference_check(cfg, flat32, torch.tensor(s["inputs"], dtype=torch.long),
                                     torch.tensor(s["targets"], dtype=torch.long), hp,
                                     res["grads"].numpy())
    why = near_tie(cfg, res)
    ok = routing_ok and all(d < 1e-6 for d in diffs.values()) and fd_err <= 1.0 and why is None
    print(f"[{name}] crc ok, sizes ok; seed {h[18]}; routing {'same' if routing_ok else 'DIFFERENT'}; "
          + ", ".join(f"{k} max|diff| {d:.1e}" for k, d in diffs.items())
          + f"; finite differences worst err/tol {fd_err:.2f}"
          + ("" if why is None else f"; near tie: {why}") + ("" if ok else "  FAIL"))
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--outdir", default="dev/ref", help="where <case>_model.bin / _state.bin go")
    ap.add_argument("--check", action="store_true", help="re-read and verify the written files")
    args = ap.parse_args()
    torch.set_num_threads(1)            # deterministic reductions
    if args.check:
        ok = all([check_case(name, args.outdir) for name, _, _ in CASES])
        print("all files ok" if ok else "CHECK FAILED")
        sys.exit(0 if ok else 1)
    os.makedirs(args.outdir, exist_ok=True)
    for name, arch, coefs in CASES:
        build_case(name, arch, coefs, args.outdir)


if __name__ == "__main__":
    main()
