"""rlx's blocks in torch, for recipes exported to verl (`rlx export verl`).

Each function is the torch form of the rlx block of the same name, with the same parameters and
the same conventions (masks, groups, singletons, variance, epsilons) as `rlx blocks NAME`
documents. `tests/verl/parity.py` checks every exported recipe against `rlx eval` in float64.
Tensors are [B] (one value per sequence) or [B, T] (one per response token); `mask` is the
[B, T] response mask as floats; `group` is a [B] tensor of group ids (samples of one prompt).
"""

import builtins

import numpy as np
import torch


def group_ids(index, like):
    """verl's `index` (one uid per sample) as integer group ids in order of first appearance."""
    if index is None:
        raise ValueError("this recipe groups samples by prompt: verl must pass `index` (uid)")
    seen, ids = {}, []
    for uid in np.asarray(index, dtype=object).tolist():
        ids.append(seen.setdefault(uid, len(seen)))
    return torch.tensor(ids, dtype=torch.long, device=like.device)


def _members(group):
    return [torch.nonzero(group == g, as_tuple=True)[0] for g in torch.unique(group, sorted=False)]


def _mean_var(xs, ws, unbiased):
    """Mean and variance of `xs` weighted by `ws` (a 0/1 mask, or counts), as rlx's
    `host::mean_var`: Bessel's correction on the total weight; a total of 1 or less: variance 0."""
    n = ws.sum().item()
    if n <= 0:
        return xs.sum() * 0.0, 0.0
    mean = (xs * ws).sum() / n
    ss = (ws * (xs - mean) ** 2).sum().item()
    if unbiased:
        return mean, ss / (n - 1) if n > 1 else 0.0
    return mean, ss / n


def _inverse_std(var, eps, floor_max=False):
    denom = builtins.max(var, eps) if floor_max else var + eps
    s = 1.0 / denom**0.5 if denom > 0 else float("inf")
    return s if s != float("inf") else 0.0


# ---- maths -------------------------------------------------------------------------------

def add(a, b):
    return a + b


def sub(a, b):
    return a - b


def mul(a, b):
    return a * b


def div(a, b):
    return a / b


def neg(x):
    return -x


def pow(a, b):  # noqa: A001 - the block's name
    return torch.pow(a, b)


def min(a, b):  # noqa: A001
    return torch.minimum(torch.as_tensor(a), torch.as_tensor(b))


def max(a, b):  # noqa: A001
    return torch.maximum(torch.as_tensor(a), torch.as_tensor(b))


def abs(x):  # noqa: A001
    return torch.abs(x)


def square(x):
    return x * x


def sqrt(x):
    return torch.sqrt(x)


def exp(x):
    return torch.exp(x)


def log(x):
    return torch.log(x)


def stopgrad(x):
    return x.detach()


def clamp(x, *, lo=None, hi=None):
    return torch.clamp(x, min=lo, max=hi)


def where(cond, then, otherwise):
    return torch.where(torch.as_tensor(cond) != 0, torch.as_tensor(then), torch.as_tensor(otherwise))


# ---- shaping ------------------------------------------------------------------------------

def spread(x, *, mask):
    """out[b, t] = x[b] · mask[b, t]"""
    return x.unsqueeze(-1) * mask


def at_end(x, *, mask):
    """x[b] on the last unmasked token of b, zero elsewhere."""
    t = mask.shape[-1]
    positions = torch.arange(t, device=mask.device).expand_as(mask)
    last = torch.where(mask != 0, positions, torch.full_like(positions, -1)).max(dim=-1).values
    onehot = (positions == last.unsqueeze(-1)).to(x.dtype)
    return onehot * x.unsqueeze(-1)


def kl(logp, ref, *, estimator="k1", clamp=None, gradient="estimator"):
    """d = logp − ref; k1 = d, k2 = mse = d²/2, k3 = e^x − x − 1 with x = clamp(−d, ±20), abs = |d|."""
    d = logp - ref
    if estimator == "k1":
        k = d
    elif estimator in ("k2", "mse"):
        k = 0.5 * d * d
    elif estimator == "k3":
        x = torch.clamp(-d, -20.0, 20.0)
        k = torch.exp(x) - x - 1.0
    elif estimator == "abs":
        k = torch.abs(d)
    else:
        raise ValueError(f"unknown KL estimator {estimator!r}")
    if clamp is not None:
        k = torch.clamp(k, -clamp, clamp)
    if gradient == "k2":
        k2 = 0.5 * d * d
        return k2 - k2.detach() + k.detach()
    return k


def sum_tokens(x, *, mask, masked=True):
    """out[b] = Σ_t x·m"""
    return torch.where(mask != 0, x, torch.zeros_like(x)).sum(dim=-1)


def mean_tokens(x, *, mask, masked=True):
    """out[b] = Σ_t x·m / Σ_t m (`masked=False`: over every position)"""
    count = mask.sum(dim=-1) if masked else torch.full_like(mask.sum(dim=-1), mask.shape[-1])
    return sum_tokens(x, mask=mask) / count


# ---- advantages ---------------------------------------------------------------------------

def group_zscore(rewards, *, group, scale="std", eps=1e-6, var="unbiased", singleton="zero",
                 baseline="mean"):
    r = rewards.detach()
    out = torch.zeros_like(r)
    by_std = scale == "std"
    for idx in _members(group):
        xs = r[idx]
        if len(idx) == 1:
            x = xs[0]
            out[idx] = (x / (1.0 + eps) if by_std else x) if singleton == "raw" else 0.0 * x
            continue
        if baseline == "leave_one_out":
            for k in range(len(idx)):
                others = torch.cat([xs[:k], xs[k + 1:]])
                mean = others.mean()
                # NeMo-RL: the others' std (unbiased by default), plus eps, only where positive.
                std = others.var(unbiased=(var == "unbiased")).sqrt() if len(others) > 1 \
                    else torch.zeros((), dtype=xs.dtype)
                centred = xs[k] - mean
                out[idx[k]] = centred / (std + eps) if by_std and std > 0 else centred
            continue
        mean = xs.mean()
        std = xs.var(unbiased=(var == "unbiased")).sqrt()
        denom = std + eps
        centred = xs - mean
        if not by_std:
            out[idx] = centred
        elif denom == 0:
            out[idx] = 0.0 * centred
        else:
            out[idx] = centred / denom
    return out


def rloo(rewards, *, group, singleton="zero"):
    r = rewards.detach()
    out = torch.zeros_like(r)
    for idx in _members(group):
        n = len(idx)
        if n == 1:
            out[idx] = r[idx] if singleton == "raw" else 0.0 * r[idx]
            continue
        total = r[idx].sum()
        out[idx] = r[idx] - (total - r[idx]) / (n - 1)
    return out


def whiten(x, *, mask, group=None, scope="batch", var="unbiased", eps=1e-8, shift_mean=True,
           floor="add", masked=True):
    """(x − μ) / sqrt(σ² + eps) over the unmasked entries of the scope (`masked=False`: every
    position, padding read as 0)."""
    x = x.detach()
    token = x.dim() == 2
    if token:
        m = mask if masked else torch.ones_like(mask)
        xs = x if masked else torch.where(mask != 0, x, torch.zeros_like(x))
    else:
        m, xs = torch.ones_like(x), x
    parts = _members(group) if scope == "group" else [torch.arange(x.shape[0], device=x.device)]
    out = torch.zeros_like(xs)
    for idx in parts:
        xp, mp = xs[idx], m[idx]
        mean, v = _mean_var(xp, mp, var == "unbiased")
        s = _inverse_std(v, eps, floor == "max")
        back = 0.0 if shift_mean else mean
        w = (xp - mean) * s + back
        out[idx] = w * mp if (token and masked) else w
    return out


def returns(rewards, *, mask, gamma=1.0, holes="skip"):
    """G_t = Σ_{k≥t} γ^{k−t} r_k over unmasked tokens; `skip` carries through masked holes."""
    r = rewards.detach()
    out = torch.zeros_like(r)
    g = torch.zeros(r.shape[0], dtype=r.dtype, device=r.device)
    for t in reversed(range(r.shape[1])):
        real = mask[:, t] != 0
        step = torch.where(real, r[:, t], torch.zeros_like(g)) + gamma * g
        g = step if holes == "zero" else torch.where(real, step, g)
        out[:, t] = torch.where(real, g, out[:, t])
    return out


def reinforce_pp(rewards, *, mask, gamma=1.0, eps=1e-8, holes="skip"):
    """whiten_batch(G): REINFORCE++'s returns whitened over every response token (unbiased)."""
    g = returns(rewards, mask=mask, gamma=gamma, holes=holes)
    mean, v = _mean_var(g, mask, unbiased=True)
    return (g - mean) * _inverse_std(v, eps) * mask


def reinforce_pp_baseline(rewards, *, mask, group, eps=1e-8, var="unbiased"):
    r = rewards.detach()
    centred = r.clone()
    for idx in _members(group):
        if len(idx) > 1:
            centred[idx] = r[idx] - r[idx].mean()
    # Each sequence's value counts once per response token.
    mean, v = _mean_var(centred, mask.sum(dim=-1), var == "unbiased")
    return mask * (centred - mean).unsqueeze(-1) * _inverse_std(v, eps)


# ---- losses (per token; aggregation is verl's `agg_loss`) ---------------------------------

def ppo_clip(logp, old, adv, *, eps=0.2, eps_high=None, dual_clip=None, max_log_ratio=20.0):
    eps_high = eps if eps_high is None else eps_high
    m = 80.0 if max_log_ratio is None else float(np.minimum(max_log_ratio, 80.0))
    ratio = torch.exp(torch.clamp(logp - old, -m, m))
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - eps, 1.0 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip), loss)
    return loss


def pg(logp, adv):
    return -adv * logp


def cispo(logp, old, adv, *, bound="relative", eps=0.2, eps_high=None):
    eps_high = eps if eps_high is None else eps_high
    ratio = torch.exp(torch.clamp(logp - old, -20.0, 20.0)).detach()
    w = torch.clamp(ratio, max=eps_high) if bound == "absolute" else torch.clamp(
        ratio, 1.0 - eps, 1.0 + eps_high)
    return -(w * adv * logp)


def gspo(logp, old, adv, *, mask, eps=3e-4, eps_high=4e-4):
    """Sequence-level ratio: value e^{s_b}, gradient e^{s_b}·∇logp, s_b the mean log-ratio."""
    keep = mask != 0
    zero = torch.zeros_like(logp)
    delta = torch.where(keep, (logp - old).detach(), zero)
    lengths = torch.clamp(keep.to(logp.dtype).sum(dim=-1, keepdim=True), min=1.0)
    s = delta.sum(dim=-1, keepdim=True) / lengths
    lp = torch.where(keep, logp, zero)
    ratio = torch.exp(torch.clamp(lp - lp.detach() + s, max=10.0))
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - eps, 1.0 + eps_high)
    return torch.maximum(unclipped, clipped)


def sapo(logp, old, adv, *, tau_pos=1.0, tau_neg=1.05):
    """−(4/τ)·σ(τ(ρ − 1))·A with τ by the advantage's sign."""
    ratio = torch.exp(torch.clamp(logp - old, -20.0, 20.0))
    tau = torch.where(adv > 0, torch.full_like(adv, tau_pos), torch.full_like(adv, tau_neg))
    return -(4.0 / tau) * torch.sigmoid(tau * (ratio - 1.0)) * adv


def reward_clip(x, *, lo=-10.0, hi=10.0):
    return torch.clamp(x, min=lo, max=hi)


def opo(rewards, *, mask, group):
    """Length-weighted group baseline: A[b, t] = m·(r_b − Σ L_j r_j / Σ L_j); a lone sample: b = 0."""
    r = rewards.detach()
    lengths = mask.sum(dim=-1)
    baseline = torch.zeros_like(r)
    for idx in _members(group):
        total = lengths[idx].sum()
        if len(idx) > 1 and total > 0:
            baseline[idx] = (lengths[idx] * r[idx]).sum() / total
    return mask * (r - baseline).unsqueeze(-1)


def grpo_passk(rewards, *, group, scale="std", eps=1e-6):
    """Per group: the best sample (first on ties) gets (r_max − r_2nd) / (std + eps); others 0."""
    r = rewards.detach()
    out = torch.zeros_like(r)
    for idx in _members(group):
        if len(idx) < 2:
            raise ValueError("pass@k advantages need at least 2 samples per prompt")
        xs = r[idx]
        order = sorted(range(len(idx)), key=lambda k: (-xs[k].item(), k))
        best, second = order[0], order[1]
        margin = xs[best] - xs[second]
        out[idx[best]] = margin / (xs.var(unbiased=True).sqrt() + eps) if scale == "std" else margin
    return out


def gpg(rewards, *, group):
    """α·(r − mean_g r), α = B / max(#nonzero rewards, 1); a lone sample: mean 0."""
    r = rewards.detach()
    alpha = r.shape[0] / builtins.max(int((r != 0).sum().item()), 1)
    out = r.clone()
    for idx in _members(group):
        mean = r[idx].mean() if len(idx) > 1 else 0.0
        out[idx] = alpha * (r[idx] - mean)
    return out
