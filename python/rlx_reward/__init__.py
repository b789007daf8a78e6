"""Serve existing Python reward functions to rlx, unchanged.

A recipe declares::

    reward r = command("python3 -m rlx_reward my_rewards:accuracy_reward")

and rlx starts this process once per run, sends one JSON line per batch on stdin and reads one
JSON line of scores back (the protocol is in rlx's ``src/rewards/mod.rs``). Two signatures are
recognised by their parameter names:

* TRL's ``reward_func(prompts, completions, **kwargs) -> list[float]``: called once per batch
  with the data set's other columns as keyword lists, as ``GRPOTrainer`` calls it.
* verl's ``compute_score(data_source, solution_str, ground_truth, extra_info=None)`` returning a
  number or a dict with ``"score"``: called once per response, as verl's naive reward manager
  calls it. ``ground_truth`` is the row's ``reward_model.ground_truth`` when it has one (verl's
  Parquet layout), else the data set's reference answer.

Several functions (``mod:f mod:g``, or ``name=mod:f``) reply as named rewards, which a recipe
reads as ``r.f(response)`` and ``r.g(response)``. Anything a function prints goes to stderr
(rlx keeps it in ``runs/…/rewards/NAME.log``); stdout carries only the protocol.
"""

from .serve import load, main, score_batch, style_of

__all__ = ["load", "main", "score_batch", "style_of"]
