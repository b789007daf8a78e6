"""rlx's verifiers in Python, for verl's reward function (`rlx export verl`).

`arith_correct` is rlx's `arith.correct`; `answer_correct` is a `jsonl` data set's `correct` in
the gsm8k, boxed or exact answer format (src/tasks/arith.rs and src/tasks/answers.rs).
"""

import re


def _stated_answer(response):
    """The integer after the last `answer:`, as rlx's arith verifier reads it."""
    at = response.rfind("answer:")
    if at < 0:
        return None
    rest = response[at + len("answer:"):].lstrip()
    m = re.match(r"[0-9-]*", rest)
    try:
        return int(m.group(0))
    except ValueError:
        return None


def arith_correct(ground_truth, response):
    """1 if the stated final answer equals the true answer, else 0."""
    stated = _stated_answer(response)
    return 1.0 if stated is not None and stated == int(ground_truth) else 0.0


def _last_number(text):
    for end in range(len(text), 0, -1):
        if text[end - 1].isdigit() and text[end - 1].isascii():
            start = end
            while start > 0 and ((text[start - 1].isascii() and text[start - 1].isdigit()) or text[start - 1] in ",."):
                start -= 1
            if start > 0 and text[start - 1] == "-":
                start -= 1
            return text[start:end].lstrip(",.")
    return None


def _last_boxed(text):
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
    if start < 0:
        return None
    rest = text[start:]
    open_at = rest.find("{")
    if open_at < 0:
        return None
    depth = 0
    for i, ch in enumerate(rest[open_at:]):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return rest[open_at + 1:open_at + i].strip()
    return None


def extract(fmt, text):
    if fmt == "gsm8k":
        i = text.rfind("####")
        if i >= 0:
            line = text[i + 4:].split("\n")[0].strip()
            return line or None
        return _last_number(text)
    if fmt == "boxed":
        return _last_boxed(text)
    return text.strip() or None


def _normalize(s):
    t = (s.replace("\\left", "").replace("\\right", "").replace("\\!", "")
         .replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("$", ""))
    t = "".join(c for c in t if not c.isspace()).rstrip(".")
    unthousanded = t.replace(",", "")
    if "," in t and _number(unthousanded) is not None and all(len(g) == 3 for g in t.split(",")[1:]):
        return unthousanded
    return t


def _number(s):
    if "_" in s:  # Python's float reads `1_000`; Rust's (and rlx's) does not
        return None
    try:
        return float(s)
    except ValueError:
        return None


def equivalent(a, b):
    a, b = _normalize(a), _normalize(b)
    x, y = _number(a), _number(b)
    if x is not None and y is not None:
        return abs(x - y) <= 1e-6 * max(abs(x), abs(y), 1.0)
    return a == b


def answer_correct(fmt, ground_truth, response):
    """1 if the response's final answer equals the reference, else 0."""
    a = extract(fmt, response)
    return 1.0 if a is not None and equivalent(a, ground_truth) else 0.0
