"""The zoo blocks verl also ships, against verl 0.9.1's own functions at their edge cases, through
`rlx eval --dtype f64` (tests/verl/run.sh runs this after parity.py).

parity.py checks whole exported recipes; the blocks here do not export (or export only as part
of a recipe whose batches never reach their edges), so each is compared on its own, on batches
built to hit what the source does at the edge: ragged masks with holes, groups of one, a unique
longest response, ties in length, advantages that are exactly 0, ratios past every clip and
truncation, and divergences on both sides of each bound. Values and gradients must agree to
1e-9 (absolute, plus 1e-9 relative).

| rlx | verl 0.9.1 |
|---|---|
| `optimal_baseline` | `core_algos.compute_optimal_token_baseline_advantage` (handle_zero_tail on) |
| `gmpo` + `seq_mean` | `core_algos.compute_policy_loss_geo_mean` |
| `dppo(cap = 3)` + `token_mean` | `core_algos.compute_policy_loss_dppo_tv` with verl's `clip_ratio_c` 3.0 |
| `kl_cov(coef = 0.1)` + `token_mean` | `core_algos.compute_policy_loss_kl_cov` (actor.yaml's `ppo_kl_coef` 0.1) |
| `rollout_reject(divergence = k1, lo = ln l, hi = ln u)` | `rollout_corr_helper.compute_rollout_rejection_mask` with `"l_u"` |
| `tis(cap = 2)` | `rollout_corr_helper.compute_rollout_correction_weights` (threshold 2.0) |
| `group_zscore(baseline = leave_one_out)` | NeMo-RL's leave-one-out GRPO advantage, written from its formula (not on PyPI) |

usage: zoo.py RLX_BINARY
"""

import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from verl.trainer.ppo import core_algos
from verl.trainer.ppo.rollout_corr_helper import (
    compute_rollout_correction_weights,
    compute_rollout_rejection_mask,
)

from parity import compose_config, omega_conf_to_dataclass

TOL = 1e-9

HEADER = """recipe {name} "zoo block against verl"

data  arith  = builtin("arith")
model policy = builtin("tiny")

stage rl {{
    train   policy
    prompts arith.problems
    sample  {{ n = 4, max_tokens = 16 }}

{body}

    optim {{ lr = 1e-5, steps = 1, batch = 8 }}
}}
"""

RECIPES = {
    "otb": """    let r   = at_end(arith.correct(response))
    let adv = optimal_baseline(r, old.logp, old.sum_p2)
    loss    = seq_mean_token_mean(ppo_clip(policy.logp, old.logp, adv, eps = 0.2))""",
    "gmpo": """    let adv = spread(group_zscore(arith.correct(response)))
    loss    = seq_mean(gmpo(policy.logp, old.logp, adv, eps = 0.4, eps_high = 0.3))""",
    "dppo": """    let adv = spread(group_zscore(arith.correct(response)))
    loss    = token_mean(dppo(policy.logp, old.logp, adv, divergence = tv, eps = 0.2, eps_high = 0.25, cap = 3))""",
    "kl_cov": """    let adv = spread(group_zscore(arith.correct(response)))
    loss    = token_mean(kl_cov(policy.logp, old.logp, adv, ratio = 0.1, coef = 0.1))""",
    "loo": """    let adv = group_zscore(arith.correct(response), baseline = leave_one_out)
    loss    = token_mean(ppo_clip(policy.logp, old.logp, spread(adv), eps = 0.2))""",
    "correct": """    let adv  = spread(group_zscore(arith.correct(response)))
    let keep = rollout_reject(old.logp, rollout.logp, divergence = k1, over = {over}, lo = {lo}, hi = {hi})
    let w    = tis(old.logp, rollout.logp, cap = 2, level = {level})
    loss     = token_mean(keep * w * ppo_clip(policy.logp, old.logp, adv, eps = 0.2))""",
}


def write_recipe(directory, name, body):
    path = os.path.join(directory, f"{name}.rlx")
    with open(path, "w") as f:
        f.write(HEADER.format(name=name, body=body))
    return path


def rlx_eval(rlx, recipe, inputs):
    with tempfile.TemporaryDirectory() as d:
        batch, out = os.path.join(d, "batch.safetensors"), os.path.join(d, "out.safetensors")
        save_file({k: v.contiguous() for k, v in inputs.items()}, batch)
        cmd = [rlx, "eval", recipe, "--batch", batch, "--dtype", "f64", "--out", out]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise AssertionError(f"rlx eval {recipe} failed:\n{proc.stderr}")
        return load_file(out)


def batch(seed, holes):
    """12 responses of at most 9 tokens; groups of 4, 1 (a singleton), 3 and 4; group 0 has a
    unique longest response, group 2 two of the same longest length; with `holes`, masks have
    zeros between real tokens (a multi-turn response's tool output, say)."""
    g = torch.Generator().manual_seed(seed)
    sizes = [4, 1, 3, 4]
    groups = torch.cat([torch.full((s,), i, dtype=torch.long) for i, s in enumerate(sizes)])
    b, t = len(groups), 9
    lengths = torch.randint(2, 7, (b,), generator=g)
    lengths[0] = t  # group 0: one response longer than the rest
    lengths[1:4] = torch.clamp(lengths[1:4], max=6)
    lengths[5] = lengths[6] = 8  # group 2: two of the longest length
    lengths[7] = 3
    mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).double()
    if holes:
        hole = torch.rand(b, t, generator=g) < 0.25
        hole[:, 0] = False
        mask = mask * (~hole).double()
    n = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    logp = -(n(b, t).abs() * 1.2) - 0.02
    old = logp + 0.8 * n(b, t)  # ratios well past every clip and the truncation at 3
    old = torch.minimum(old, torch.full_like(old, -1e-3))
    rollout = old + 0.5 * n(b, t)
    # Σπ² lies in [π², 1]: a valid next-token distribution's, for w = 1 − 2π + Σπ² ≥ 0.
    pi = old.exp()
    sum_p2 = pi.square() + (1 - pi.square()) * torch.rand(b, t, generator=g, dtype=torch.float64)
    # Token advantages with exact zeros (a tied group's, or GRPO's zero-spread group).
    adv = n(b, t)
    adv[torch.rand(b, t, generator=g) < 0.2] = 0.0
    adv[4] = 0.0  # a whole sequence of zero advantages
    rewards = torch.zeros(b, t, dtype=torch.float64)
    last = torch.tensor([int(torch.nonzero(mask[i])[-1]) for i in range(b)])
    rewards[torch.arange(b), last] = (torch.rand(b, generator=g) < 0.5).double()
    rewards += 0.3 * n(b, t) * mask * (torch.rand(b, t, generator=g) < 0.3)  # some process rewards
    return dict(groups=groups, mask=mask, logp=logp, old=old, rollout=rollout, sum_p2=sum_p2,
                adv=adv, rewards=rewards)


def actor_config(**overrides):
    """verl's own ActorConfig from its composed Hydra config, with the given fields set."""
    cfg = compose_config([f"actor_rollout_ref.actor.{k}={v}" for k, v in overrides.items()]
                         + ["actor_rollout_ref.actor.loss_agg_mode=token-mean",
                            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1"])
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    actor.global_batch_info.update(dp_size=1, batch_num_tokens=None, global_batch_size=None,
                                   loss_scale_factor=None)
    return actor


def close(what, got, want, failures):
    got, want = got.double(), want.double()
    if got.shape != want.shape:
        failures.append(f"{what}: shape {tuple(got.shape)} vs the source's {tuple(want.shape)}")
        return
    if not torch.allclose(got, want, rtol=TOL, atol=TOL):
        err = (got - want).abs().max().item()
        failures.append(f"{what}: max |rlx − source| = {err:.3e}")


def check_otb(rlx, recipe, x, where, failures):
    uid = np.array([f"p{int(i)}" for i in x["groups"]], dtype=object)
    adv, _ = core_algos.compute_optimal_token_baseline_advantage(
        token_level_rewards=x["rewards"], response_mask=x["mask"], index=uid,
        old_log_probs=x["old"], sum_pi_squared=x["sum_p2"])
    got = rlx_eval(rlx, recipe, {"r": x["rewards"], "old.logp": x["old"], "old.sum_p2": x["sum_p2"],
                                 "policy.logp": x["logp"], "mask": x["mask"], "group": x["groups"]})
    close(f"{where}: advantages", got["adv"] * x["mask"], adv, failures)


def check_loss(rlx, recipe, x, where, failures, loss_fn, config):
    """A policy loss on the batch's token advantages: the loss and ∂loss/∂logp."""
    log_prob = x["logp"].clone().requires_grad_(True)
    loss, _ = loss_fn(old_log_prob=x["old"], log_prob=log_prob, advantages=x["adv"],
                      response_mask=x["mask"].bool(), loss_agg_mode="token-mean", config=config,
                      rollout_is_weights=None)
    loss.backward()
    got = rlx_eval(rlx, recipe, {"adv": x["adv"], "old.logp": x["old"], "policy.logp": x["logp"],
                                 "mask": x["mask"]})
    close(f"{where}: loss", got["loss"], loss.detach(), failures)
    close(f"{where}: ∂loss/∂logp", got["grad.policy.logp"] * x["mask"], log_prob.grad * x["mask"],
          failures)


def nemo_rl_leave_one_out(rewards, groups):
    """NeMo-RL's GRPO advantage with `use_leave_one_out_baseline` and `normalize_rewards`, written
    here from its formula (NeMo-RL is not on PyPI): per prompt, with the baseline matrix 1 − I,
    the others' E[r] and E[r²] over m = n − 1, std = √((E[r²] − E[r]²)·m/(m − 1)) with NaN → 0;
    A = r − E[r], divided by std + 1e-6 where std > 0; a prompt with one response gets 0."""
    adv = torch.zeros_like(rewards)
    for g in groups.unique():
        idx = (groups == g).nonzero().flatten()
        r = rewards[idx]
        n = len(idx)
        if n <= 1:
            continue
        others = 1 - torch.eye(n, dtype=rewards.dtype)
        m = n - 1
        mean, mean_sq = others @ r / m, others @ r.square() / m
        std = ((mean_sq - mean.square()) * (m / (m - 1) if m > 1 else math.inf)).sqrt().nan_to_num(0)
        a = r - mean
        adv[idx] = torch.where(std > 0, a / (std + 1e-6), a)
    return adv


def check_loo(rlx, recipe, seed, failures):
    """Leave-one-out GRPO against NeMo-RL's formula, with groups of 1 to 8 and tied rewards."""
    g = torch.Generator().manual_seed(100 + seed)
    sizes = [1, 2, 3, 4, 5, 8]
    groups = torch.cat([torch.full((s,), i, dtype=torch.long) for i, s in enumerate(sizes)])
    b = len(groups)
    rewards = torch.randn(b, generator=g, dtype=torch.float64)
    if seed % 2:
        rewards = (rewards > 0).double()  # binary: ties, and groups whose others agree
    mask = torch.ones(b, 3, dtype=torch.float64)
    got = rlx_eval(rlx, recipe, {"arith.correct(response)": rewards, "group": groups, "mask": mask,
                                 "old.logp": -torch.ones(b, 3), "policy.logp": -torch.ones(b, 3)})
    want = nemo_rl_leave_one_out(rewards, groups)
    # Where the others agree (binary rewards), NeMo-RL's one-pass variance is exactly 0 too
    # (sums of 0s and 1s are exact), so both leave the advantage unscaled.
    close(f"group_zscore leave_one_out seed {seed}", got["adv"], want, failures)


def check_corrections(rlx, directory, x, where, failures, coverage):
    """rollout_reject(k1) with verl's ratio bounds as logarithms, and tis(cap 2), both levels."""
    log_ratio = x["old"] - x["rollout"]
    mask = x["mask"]
    # Bounds that keep some and reject some of each statistic (per-token log-ratios have a std
    # of 0.5 here, their sums over a response ~1.5, their means ~0.2).
    bounds = {"token": (0.6, 1.5), "seq_sum": (0.25, 3.0), "seq_mean": (0.85, 1.2)}
    for over, level in (("token", "token"), ("seq_sum", "sequence"), ("seq_mean", "token")):
        lower, upper = bounds[over]
        recipe = write_recipe(directory, f"correct_{over}", RECIPES["correct"].format(
            over=over, lo=repr(math.log(lower)), hi=repr(math.log(upper)), level=level))
        keep, _ = compute_rollout_rejection_mask(log_ratio=log_ratio, response_mask=mask,
                                                 rollout_rs=f"{over}_k1",
                                                 rollout_rs_threshold=f"{lower}_{upper}")
        weights, _ = compute_rollout_correction_weights(log_ratio=log_ratio, response_mask=mask,
                                                        rollout_is=level, rollout_is_threshold=2.0)
        got = rlx_eval(rlx, recipe, {"adv": x["adv"], "old.logp": x["old"], "policy.logp": x["logp"],
                                     "rollout.logp": x["rollout"], "mask": mask})
        close(f"{where} {over}: rollout_reject k1", got["keep"] * mask, keep * mask, failures)
        close(f"{where} {level}: tis", got["w"] * mask, weights * mask, failures)
        coverage[over][0] += (keep * mask).sum().item()
        coverage[over][1] += mask.sum().item()


def main():
    rlx = sys.argv[1]
    torch.set_default_dtype(torch.float64)
    failures, cases = [], 0
    coverage = {over: [0.0, 0.0] for over in ("token", "seq_sum", "seq_mean")}  # kept, real tokens
    with tempfile.TemporaryDirectory() as d:
        recipes = {k: write_recipe(d, k, v) for k, v in RECIPES.items() if k != "correct"}
        gmpo_cfg = actor_config(clip_ratio_low=0.4, clip_ratio_high=0.3)
        dppo_cfg = actor_config(clip_ratio_low=0.2, clip_ratio_high=0.25)  # clip_ratio_c: verl's 3.0
        assert dppo_cfg.clip_ratio_c == 3.0, "verl's clip_ratio_c default moved: update dppo's peer note"
        kl_cov_cfg = actor_config(**{"policy_loss.kl_cov_ratio": 0.1})
        assert kl_cov_cfg.policy_loss.ppo_kl_coef == 0.1, "verl's ppo_kl_coef moved: update kl_cov's peer note"
        for seed in range(6):
            for holes in (False, True):
                x = batch(seed, holes)
                where = f"seed {seed}{' with holes' if holes else ''}"
                check_otb(rlx, recipes["otb"], x, f"optimal_baseline {where}", failures)
                check_loss(rlx, recipes["gmpo"], x, f"gmpo {where}", failures,
                           core_algos.compute_policy_loss_geo_mean, gmpo_cfg)
                check_loss(rlx, recipes["dppo"], x, f"dppo {where}", failures,
                           core_algos.get_policy_loss_fn("dppo_tv"), dppo_cfg)
                check_loss(rlx, recipes["kl_cov"], x, f"kl_cov {where}", failures,
                           core_algos.get_policy_loss_fn("kl_cov"), kl_cov_cfg)
                check_corrections(rlx, d, x, where, failures, coverage)
                cases += 1
            check_loo(rlx, recipes["loo"], seed, failures)
        for over, (kept, real) in coverage.items():
            if not 0.1 * real < kept < 0.9 * real:
                failures.append(f"rollout_reject {over}: the bounds keep {kept:.0f} of {real:.0f} tokens: "
                                "too few on one side of a bound to test it")
        # Negative control: the comparison must see a changed edge (the old gmpo, sign(0) = +1).
        x = batch(0, False)
        flipped = dict(x, adv=torch.where(x["adv"] == 0, torch.full_like(x["adv"], 1e-300), x["adv"]))
        control = []
        check_loss(rlx, recipes["gmpo"], flipped, "control", control,
                   lambda **kw: core_algos.compute_policy_loss_geo_mean(**dict(kw, advantages=x["adv"])),
                   gmpo_cfg)
        if not control:
            failures.append("negative control: gmpo with sign(0) = +1 agreed with verl; the check sees nothing")
    if failures:
        print(f"FAIL zoo blocks against verl: {len(failures)} differences")
        for f in failures[:20]:
            print(f"  {f}")
        sys.exit(1)
    print(f"ok   zoo blocks (optimal_baseline, gmpo, dppo cap 3, kl_cov, rollout_reject k1, tis) equal "
          f"verl 0.9.1's functions on {cases} edge batches, and leave-one-out group_zscore NeMo-RL's "
          f"formula on 6 (tolerance {TOL})")


if __name__ == "__main__":
    main()
