"""GSM8K answers checked by Hugging Face's `math-verify` (pip install math-verify), in verl's
`compute_score` signature: the response's text after its last `####` (or the whole response)
against the reference answer rlx extracted from the data set's `#### N` line. Equivalent forms
count: `72`, `72.0`, `$\\frac{144}{2}$`."""

from math_verify import parse, verify


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    stated = solution_str.rsplit("####", 1)[-1]
    gold, answer = parse(str(ground_truth)), parse(stated)
    return 1.0 if gold and answer and verify(gold, answer) else 0.0
