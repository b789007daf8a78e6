"""Reward functions as TRL and verl users write them, for `trl_and_verl.rlx` (arith task)."""

import re


def _stated(text):
    found = re.findall(r"answer:\s*(-?\d+)", text)
    return found[-1] if found else None


def format_reward(completions, **kwargs):
    """TRL's signature: 1 when the response states a final answer the way the task asks."""
    return [1.0 if _stated(c) is not None else 0.0 for c in completions]


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    """verl's signature: 1 when the stated answer is the reference."""
    return 1.0 if _stated(solution_str) == str(ground_truth) else 0.0
