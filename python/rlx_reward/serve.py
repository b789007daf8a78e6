"""The process loop: read a batch, call the functions, write the scores."""

import importlib
import importlib.util
import inspect
import json
import os
import sys

TRL = "trl"
VERL = "verl"
VERL_PARAMS = {"solution_str", "ground_truth", "data_source"}


def load(spec):
    """``module:function`` or ``path/to/file.py:function`` -> the function."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise SystemExit(f"rlx_reward: expected MODULE:FUNCTION or FILE.py:FUNCTION, got {spec!r}")
    if target.endswith(".py") or os.sep in target:
        module_name = os.path.splitext(os.path.basename(target))[0]
        loader = importlib.util.spec_from_file_location(module_name, target)
        if loader is None:
            raise SystemExit(f"rlx_reward: cannot load {target!r}")
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        module = importlib.import_module(target)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise SystemExit(f"rlx_reward: {target!r} has no function {name!r}")
    return fn


def style_of(fn):
    """``"verl"`` for ``compute_score(data_source, solution_str, ground_truth, ...)``, else ``"trl"``."""
    params = set(inspect.signature(fn).parameters)
    return VERL if params & VERL_PARAMS else TRL


def _accepts(fn):
    """The keyword names a function takes, or None when it takes ``**kwargs``."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def _trl(fn, items, conversational=False):
    prompts = [it["prompt"] for it in items]
    completions = [it["response"] for it in items]
    if conversational:
        # TRL's conversational data sets: each prompt and completion a list of messages.
        prompts = [[{"role": "user", "content": p}] for p in prompts]
        completions = [[{"role": "assistant", "content": c}] for c in completions]
    rows = [it.get("row") or {} for it in items]
    columns = {}
    for row in rows:
        for key in row:
            if key not in ("prompt", "completion", "completion_ids") and key not in columns:
                columns[key] = [r.get(key) for r in rows]
    if "answer" not in columns:
        columns["answer"] = [it.get("answer") for it in items]
    kwargs = {"prompts": prompts, "completions": completions, **columns}
    accepts = _accepts(fn)
    if accepts is not None:
        kwargs = {k: v for k, v in kwargs.items() if k in accepts}
    scores = fn(**kwargs)
    return [None if s is None else float(s) for s in scores]


def _verl(fn, items):
    out = []
    for it in items:
        row = it.get("row") or {}
        rm = row.get("reward_model")
        truth = rm.get("ground_truth") if isinstance(rm, dict) and "ground_truth" in rm else it.get("answer")
        score = fn(
            data_source=row.get("data_source", it.get("data")),
            solution_str=it["response"],
            ground_truth=truth,
            extra_info=row.get("extra_info"),
        )
        if isinstance(score, dict):
            score = score["score"]
        out.append(None if score is None else float(score))
    return out


def score_batch(functions, items, conversational=False):
    """``functions``: ``[(name, fn, style)]`` -> the ``rewards`` field of a reply."""
    scored = {}
    for name, fn, style in functions:
        scored[name] = _verl(fn, items) if style == VERL else _trl(fn, items, conversational)
    if len(functions) == 1:
        return next(iter(scored.values()))
    return scored


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: python3 -m rlx_reward [--conversational] [NAME=]MODULE:FUNCTION ...\n"
            "  --conversational  TRL-style functions get prompts and completions as message lists",
            file=sys.stderr,
        )
        return 2
    conversational = "--conversational" in argv
    argv = [a for a in argv if a != "--conversational"]
    functions = []
    for spec in argv:
        name, eq, target = spec.partition("=")
        if not eq:
            name, target = spec.rpartition(":")[2], spec
        fn = load(target)
        functions.append((name, fn, style_of(fn)))
    names = [n for n, _, _ in functions]
    if len(set(names)) != len(names):
        raise SystemExit(f"rlx_reward: two functions are named alike ({names}); name them NAME=MODULE:FUNCTION")
    # stdout carries the protocol alone: whatever the functions print goes to stderr.
    out = sys.stdout
    sys.stdout = sys.stderr
    for line in sys.stdin:
        request = json.loads(line)
        rewards = score_batch(functions, request["items"], conversational)
        out.write(json.dumps({"rewards": rewards}) + "\n")
        out.flush()
    return 0
