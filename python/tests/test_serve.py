"""The shim's calling conventions, without rlx: run with `python3 -m unittest discover python/tests`."""

import io
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from rlx_reward import serve  # noqa: E402

ITEMS = [
    {"prompt": "q1", "response": "a1", "answer": "1", "data": "d",
     "row": {"prompt": "q1", "solution": "s1", "reward_model": {"ground_truth": "g1"},
             "data_source": "gsm8k", "extra_info": {"k": 1}}},
    {"prompt": "q2", "response": "a2", "answer": "2", "data": "d", "row": {"prompt": "q2"}},
]


class Calls(unittest.TestCase):
    def test_trl_functions_get_the_batch_and_every_column_by_keyword(self):
        seen = {}

        def reward(prompts, completions, **kwargs):
            seen.update(kwargs, prompts=prompts, completions=completions)
            return [1, 0.5]

        self.assertEqual(serve.style_of(reward), serve.TRL)
        self.assertEqual(serve.score_batch([("r", reward, serve.TRL)], ITEMS), [1.0, 0.5])
        self.assertEqual(seen["prompts"], ["q1", "q2"])
        self.assertEqual(seen["completions"], ["a1", "a2"])
        self.assertEqual(seen["solution"], ["s1", None])
        self.assertEqual(seen["answer"], ["1", "2"], "the reference answer when the row has none")
        self.assertNotIn("prompt", seen, "the prompt column is `prompts`, as in TRL")

    def test_functions_without_kwargs_get_only_what_they_name(self):
        def reward(completions, solution):
            return [float(c == s) for c, s in zip(completions, solution)]

        self.assertEqual(serve.score_batch([("r", reward, serve.TRL)], ITEMS), [0.0, 0.0])

    def test_verl_functions_are_called_per_response_with_verls_ground_truth(self):
        calls = []

        def compute_score(data_source, solution_str, ground_truth, extra_info=None):
            calls.append((data_source, solution_str, ground_truth, extra_info))
            return {"score": 2.0, "acc": True} if solution_str == "a1" else 0

        self.assertEqual(serve.style_of(compute_score), serve.VERL)
        self.assertEqual(serve.score_batch([("r", compute_score, serve.VERL)], ITEMS), [2.0, 0.0])
        self.assertEqual(calls[0], ("gsm8k", "a1", "g1", {"k": 1}))
        self.assertEqual(calls[1], ("d", "a2", "2", None))

    def test_several_functions_reply_by_name_and_conversational_lists(self):
        def fmt(completions, **kw):
            return [len(c[0]["content"]) for c in completions]

        def one(prompts, completions, **kw):
            return [1] * len(prompts)

        out = serve.score_batch([("fmt", fmt, serve.TRL), ("one", one, serve.TRL)], ITEMS, True)
        self.assertEqual(out, {"fmt": [2.0, 2.0], "one": [1.0, 1.0]})

    def test_the_loop_writes_one_line_per_request_and_keeps_prints_off_stdout(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "mine.py")
            with open(path, "w") as f:
                f.write("def r(completions, **kw):\n    print('noise')\n    return [0.25 for _ in completions]\n")
            stdin, stdout, stderr = sys.stdin, sys.stdout, sys.stderr
            sys.stdin = io.StringIO(json.dumps({"items": ITEMS}) + "\n" + json.dumps({"items": ITEMS[:1]}) + "\n")
            sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
            out, err = sys.stdout, sys.stderr
            try:
                self.assertEqual(serve.main([f"{path}:r"]), 0)
            finally:
                sys.stdin, sys.stdout, sys.stderr = stdin, stdout, stderr
            lines = out.getvalue().splitlines()
            self.assertEqual([json.loads(l) for l in lines], [{"rewards": [0.25, 0.25]}, {"rewards": [0.25]}])
            self.assertIn("noise", err.getvalue())

    def test_bad_targets_are_named(self):
        for spec in ["nocolon", "json:no_such_function"]:
            with self.assertRaises(SystemExit) as e:
                serve.load(spec)
            self.assertIn("rlx_reward", str(e.exception))


if __name__ == "__main__":
    unittest.main()
