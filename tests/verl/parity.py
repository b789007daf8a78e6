"""Exported recipes against `rlx eval`, through verl's own code (tests/verl/run.sh runs this).

For each package written by `rlx export verl`:
1. verl's Hydra config composes with the package's overrides (an unknown or mistyped key fails),
   and the actor, critic and algorithm sections convert to verl's config dataclasses;
2. the registered names resolve through verl's registries;
3. on random batches (ragged masks, groups of several sizes with singletons, binary and
   continuous scores, equal scores within a group, both signs of advantages and ratios near the
   clip bounds), in float64: the score goes on each response's last token as verl's reward
   managers put it; verl's `apply_kl_penalty` and `compute_advantage` (the trainer's own
   functions) make the advantages; the actor's loss is composed as verl's
   `workers/utils/losses.py::ppo_loss` does (registered policy loss + `agg_loss` of
   `kl_penalty` × `kl_loss_coef`), plus the critic's `compute_value_loss` times the recipe's
   weight; and it is compared with `rlx eval --dtype f64` on the same batch: the loss, and its
   gradient with respect to the log-probabilities (and the value predictions).

usage: parity.py RLX_BINARY MODEL_DIR EXPORT_DIR...

MODEL_DIR is a Hugging Face checkpoint (a tiny one from `rlx tiny-checkpoint`): launch.sh
sets the actor's and the critic's model path to the user's model, and verl's critic config
reads the model's config.
"""

import importlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import verl
from hydra import compose, initialize_config_dir
from verl import DataProto
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.core_algos import agg_loss, compute_value_loss, kl_penalty
from verl.trainer.ppo.ray_trainer import apply_kl_penalty, compute_advantage
from verl.utils.config import omega_conf_to_dataclass

RTOL, ATOL = 1e-6, 1e-9
CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")


def compose_config(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="ppo_trainer", overrides=list(overrides))


def check_config(manifest, model):
    """verl composes the overrides; its dataclasses accept the sections; the names resolve."""
    launch = [f"actor_rollout_ref.model.path={model}"]
    if manifest["critic"]:
        launch.append(f"critic.model.path={model}")
    cfg = compose_config(list(manifest["overrides"]) + launch)
    algo = omega_conf_to_dataclass(cfg.algorithm)
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    critic = omega_conf_to_dataclass(cfg.critic) if manifest["critic"] else None
    assert cfg.algorithm.adv_estimator == manifest["adv_estimator"]
    core_algos.get_adv_estimator_fn(cfg.algorithm.adv_estimator)
    core_algos.get_policy_loss_fn(cfg.actor_rollout_ref.actor.policy_loss.loss_mode)
    # A mistyped key must fail to compose: the check above is only worth something if so.
    try:
        compose_config(list(manifest["overrides"]) + ["actor_rollout_ref.actor.loss_agg_mdoe=token-mean"])
    except Exception:
        pass
    else:
        raise AssertionError("verl's config accepted a mistyped key: the config check proves nothing")
    return algo, actor, critic


def make_batch(manifest, seed, kind):
    """Random inputs: B responses of at most T tokens in groups (with a singleton)."""
    g = torch.Generator().manual_seed(seed)
    # Seeds 0 and 1 have a singleton group (rlx's and verl's conventions differ there); 2 and 3
    # are verl-like (every prompt sampled several times).
    sizes = [[4, 1, 3, 4], [2, 5, 1, 4], [3, 3, 3, 3], [2, 4, 4, 2]][seed % 4]
    groups = torch.cat([torch.full((s,), i, dtype=torch.long) for i, s in enumerate(sizes)])
    b, t = len(groups), 7 + seed % 5
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[0] = t  # one full-length response
    mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).double()
    n = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    logp = -(n(b, t).abs() * 1.5) - 0.05
    old = logp + 0.3 * n(b, t)
    ref = logp + 0.5 * n(b, t)
    values = n(b, t)
    vpreds = values + 0.3 * n(b, t)
    scores = {}
    for name in manifest["components"]:
        if kind == "binary":
            s = (torch.rand(b, generator=g) < 0.5).double()
        elif kind == "ties":
            s = (groups % 2).double()  # equal within every group: zero spread
        else:
            s = n(b)
        scores[name] = s
    greedy = (torch.rand(b, generator=g) < 0.5).double() if kind == "binary" else n(b)
    return dict(mask=mask, groups=groups, logp=logp, old=old, ref=ref, values=values,
                vpreds=vpreds, scores=scores, greedy=greedy, lengths=lengths)


def rlx_inputs(manifest, x):
    """The batch under the names `rlx eval` reads (from the manifest's input list)."""
    by_name = {"mask": x["mask"], "group": x["groups"], "policy.logp": x["logp"],
               "old.logp": x["old"], "ref.logp": x["ref"], "old.values": x["values"],
               "policy.values": x["vpreds"]}
    by_name.update(x["scores"])
    if manifest["greedy"]:
        by_name[manifest["greedy"]] = x["greedy"]
    out = {}
    for inp in manifest["inputs"]:
        name = inp["name"]
        if name not in by_name:
            raise AssertionError(f"{manifest['recipe']}: the test has no value for rlx input `{name}`")
        out[name] = by_name[name].contiguous()
    return out


class RlxRefused(Exception):
    """`rlx eval` rejected the batch (exit 1 with a diagnostic)."""


def run_rlx(rlx, manifest, inputs):
    with tempfile.TemporaryDirectory() as d:
        batch, out = os.path.join(d, "batch.safetensors"), os.path.join(d, "out.safetensors")
        save_file(inputs, batch)
        cmd = [rlx, "eval", manifest["recipe"], "--stage", manifest["stage"], "--batch", batch,
               "--dtype", "f64", "--out", out]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RlxRefused(proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else proc.stdout)
        return load_file(out)


def score_of(reward_module, manifest, x):
    """The recipe's score, from reward.py's own `score` over the components."""
    b = x["mask"].shape[0]
    return torch.tensor([float(reward_module.score({k: v[i].item() for k, v in x["scores"].items()}))
                         for i in range(b)], dtype=torch.float64)


def verl_loss(manifest, algo, actor, critic, reward_module, x):
    mask = x["mask"]
    b, t = mask.shape
    score = score_of(reward_module, manifest, x)
    last = x["lengths"] - 1
    # verl's reward managers: reward_tensor[i, valid_response_length - 1] = score
    token_level_scores = torch.zeros(b, t, dtype=torch.float64)
    token_level_scores[torch.arange(b), last] = score
    tensors = {"token_level_scores": token_level_scores, "old_log_probs": x["old"],
               "ref_log_prob": x["ref"], "response_mask": mask, "values": x["values"]}
    if manifest["greedy"]:
        tensors["reward_baselines"] = x["greedy"]
    uid = np.array([f"prompt-{int(i)}" for i in x["groups"]], dtype=object)
    data = DataProto.from_dict(tensors=tensors, non_tensors={"uid": uid})
    if algo.use_kl_in_reward:
        kl_ctrl = core_algos.FixedKLController(kl_coef=algo.kl_ctrl.kl_coef)
        data, _ = apply_kl_penalty(data, kl_ctrl, kl_penalty=algo.kl_penalty)
    else:
        data.batch["token_level_rewards"] = data.batch["token_level_scores"]
    data = compute_advantage(data, adv_estimator=algo.adv_estimator, gamma=algo.gamma, lam=algo.lam,
                             norm_adv_by_std_in_grpo=algo.norm_adv_by_std_in_grpo, config=algo)
    advantages, returns = data.batch["advantages"], data.batch["returns"]

    # The actor's loss, as verl/workers/utils/losses.py::ppo_loss composes it (one rank, no
    # global batch sizes, the configured loss_scale_factor).
    actor.global_batch_info.update(dp_size=1, batch_num_tokens=None, global_batch_size=None,
                                   loss_scale_factor=actor.loss_scale_factor)
    log_prob = x["logp"].clone().requires_grad_(True)
    response_mask = mask.to(bool)
    policy_loss_fn = core_algos.get_policy_loss_fn(actor.policy_loss.get("loss_mode", "vanilla"))
    pg_loss, _ = policy_loss_fn(old_log_prob=x["old"], log_prob=log_prob, advantages=advantages,
                                response_mask=response_mask, loss_agg_mode=actor.loss_agg_mode,
                                config=actor, rollout_is_weights=None)
    loss = pg_loss
    if actor.entropy_coeff:
        raise AssertionError("the export set an entropy coefficient; the test has no entropy input")
    if actor.use_kl_loss:
        kld = kl_penalty(logprob=log_prob, ref_logprob=x["ref"], kl_penalty=actor.kl_loss_type)
        kl_loss = agg_loss(loss_mat=kld, loss_mask=response_mask, loss_agg_mode=actor.loss_agg_mode,
                           **actor.global_batch_info)
        loss = loss + kl_loss * actor.kl_loss_coef
    vpreds = None
    if critic is not None:
        vpreds = x["vpreds"].clone().requires_grad_(True)
        vf_loss, _ = compute_value_loss(vpreds=vpreds, returns=returns, values=x["values"],
                                        response_mask=response_mask,
                                        cliprange_value=critic.cliprange_value,
                                        loss_agg_mode=critic.loss_agg_mode,
                                        loss_scale_factor=critic.loss_scale_factor)
        loss = loss + manifest["critic"]["coef"] * vf_loss
    loss.backward()
    return loss.detach(), log_prob.grad, None if vpreds is None else vpreds.grad


def close(what, got, want, failures):
    got, want = got.double(), want.double()
    if not torch.allclose(got, want, rtol=RTOL, atol=ATOL):
        err = (got - want).abs().max().item()
        failures.append(f"{what}: max |rlx − verl| = {err:.3e} (rlx {got.flatten()[:4].tolist()}, verl {want.flatten()[:4].tolist()})")


def check_dir(rlx, model, directory):
    with open(os.path.join(directory, "rlx_export.json")) as f:
        manifest = json.load(f)
    sys.path.insert(0, os.path.abspath(directory))
    importlib.import_module(manifest["package"])  # registers with verl
    reward_module = importlib.import_module(manifest["package"] + ".reward")
    algo, actor, critic = check_config(manifest, model)
    failures, cases, refused = [], 0, 0
    for seed in range(4):
        for kind in ("binary", "gaussian", "ties"):
            x = make_batch(manifest, seed, kind)
            where = f"{manifest['recipe']} seed {seed} {kind}"
            try:
                got = run_rlx(rlx, manifest, rlx_inputs(manifest, x))
            except RlxRefused as err:
                # A batch rlx refuses (e.g. pass@k with a singleton group) must fail in verl too.
                try:
                    verl_loss(manifest, algo, actor, critic, reward_module, x)
                except Exception:  # noqa: BLE001 - any refusal agrees
                    refused += 1
                    continue
                failures.append(f"{where}: rlx refuses the batch, verl computes it: {err}")
                continue
            loss, grad, vgrad = verl_loss(manifest, algo, actor, critic, reward_module, x)
            close(f"{where}: loss", got["loss"], loss, failures)
            close(f"{where}: ∂loss/∂logp", got["grad.policy.logp"] * x["mask"], grad * x["mask"], failures)
            if vgrad is not None:
                close(f"{where}: ∂loss/∂values", got["grad.policy.values"] * x["mask"], vgrad * x["mask"], failures)
            cases += 1
    # Negative control: the same comparison must see a wrong reward (scores flipped for verl).
    x = make_batch(manifest, 2, "gaussian")
    if x["scores"]:
        got = run_rlx(rlx, manifest, rlx_inputs(manifest, x))
        flipped = dict(x, scores={k: -v for k, v in x["scores"].items()})
        loss, grad, _ = verl_loss(manifest, algo, actor, critic, reward_module, flipped)
        control = []
        close("control", got["grad.policy.logp"] * x["mask"], grad * x["mask"], control)
        if not control:
            failures.append("negative control: flipping the reward's sign changed nothing the test sees")
    sys.path.remove(os.path.abspath(directory))
    return manifest["recipe"], cases, refused, failures


def check_verifiers():
    """The Python verifiers read answers as rlx's (cases from src/tasks/{arith,answers}.rs)."""
    from importlib.util import module_from_spec, spec_from_file_location
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "..", "src", "export", "verl", "verifiers.py")
    spec = spec_from_file_location("rlx_verifiers", path)
    v = module_from_spec(spec)
    spec.loader.exec_module(v)
    cases = [
        (v.arith_correct("12", "3 + 4 = 7\n7 + 5 = 12\nanswer: 12"), 1.0),
        (v.arith_correct("-3", "answer: -3"), 1.0),
        (v.arith_correct("12", "answer: 13"), 0.0),
        (v.arith_correct("12", "12"), 0.0),
        (v.arith_correct("5", "answer: 4\nanswer: 5"), 1.0),
        (v.answer_correct("gsm8k", "1072", "so the total is 1072.\n#### 1072"), 1.0),
        (v.answer_correct("gsm8k", "1072", "#### 1,072"), 1.0),
        (v.answer_correct("gsm8k", "10", "9+1 is 10\n#### 10"), 1.0),
        (v.answer_correct("gsm8k", "10", "#### 11"), 0.0),
        (v.answer_correct("gsm8k", "10", "the answer is 10 apples"), 1.0),
        (v.answer_correct("boxed", "\\frac{1}{2}", "so $\\boxed{\\dfrac{1}{2}}$."), 1.0),
        (v.answer_correct("boxed", "(1, 2)", "\\boxed{(1,2)}"), 1.0),
        (v.answer_correct("exact", "Paris", " Paris\n"), 1.0),
        (v.answer_correct("exact", "Paris", "paris"), 0.0),
        (v.answer_correct("gsm8k", "1000", "#### 1_000"), 0.0),
    ]
    bad = [i for i, (got, want) in enumerate(cases) if got != want]
    if bad:
        raise AssertionError(f"Python verifiers disagree with rlx's on cases {bad}")
    print(f"ok   verifiers: {len(cases)} cases read as rlx reads them")


def main():
    rlx, model, dirs = sys.argv[1], os.path.abspath(sys.argv[2]), sys.argv[3:]
    torch.set_default_dtype(torch.float64)
    check_verifiers()
    failed = False
    for d in dirs:
        recipe, cases, refused, failures = check_dir(rlx, model, d)
        both = f"; {refused} refused by both" if refused else ""
        if failures or cases < 6:
            failed = True
            print(f"FAIL {recipe}: {len(failures)} of {cases} batches differ{both}")
            for f in failures[:8]:
                print(f"  {f}")
        else:
            print(f"ok   {recipe}: config composes; loss and gradients equal on {cases} batches (rtol {RTOL}){both}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
