"""What submitting every `asample` before collecting any saves on a Tinker server.

Usage: pipelining.py SERVER_URL BASE_MODEL [PROMPTS] [ROUNDS]

Against a running server (e.g. the SkyRL 0.4.0 JAX one `tests/tinker/live.sh` starts), base-
model sampling of PROMPTS prompts of the arithmetic task's shape (4 samples of 48 tokens each):
(a) one call at a time, each future collected before the next is sent; (b) all submitted,
then all collected, as rlx's remote engine does. Alternating rounds after one warm-up round of
each (every new shape costs an XLA compile on the JAX backend); medians printed.
"""

import json
import statistics
import sys
import time
import urllib.request

url, base = sys.argv[1].rstrip("/") + "/api/v1/", sys.argv[2]
prompts_n = int(sys.argv[3]) if len(sys.argv) > 3 else 16
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3


def post(path, body):
    req = urllib.request.Request(url + path, json.dumps(body).encode(),
                                 {"Content-Type": "application/json", "X-API-Key": "tml-local"})
    with urllib.request.urlopen(req, timeout=600) as r:
        data = r.read()
        # A sample result comes back as protobuf; only its arrival matters here.
        return json.loads(data) if "json" in r.headers.get("Content-Type", "") else {"bytes": len(data)}


def wait(future):
    while True:
        try:
            out = post("retrieve_future", {"request_id": future["request_id"]})
        except urllib.error.HTTPError as e:
            if e.code == 408:
                continue
            raise
        if out.get("type") != "try_again":
            return out


post("create_session", {"tags": ["pipelining"], "user_metadata": {}, "sdk_version": "bench"})
# Prompts of one length (the task's are 8-20 tokens; one length keeps the comparison about
# the submission, not about compiles).
prompts = [[48 + (i * 7 + j) % 10 for j in range(16)] for i in range(prompts_n)]


def body(i):
    return {"num_samples": 4, "base_model": base,
            "prompt": {"chunks": [{"type": "encoded_text", "tokens": prompts[i]}]},
            "sampling_params": {"max_tokens": 48, "temperature": 1.0, "top_p": 1.0, "seed": i}}


def one_at_a_time():
    for i in range(prompts_n):
        wait(post("asample", body(i)))


def all_then_collect():
    futures = [post("asample", body(i)) for i in range(prompts_n)]
    for f in futures:
        wait(f)


times = {"one at a time": [], "all submitted, then collected": []}
for r in range(rounds + 1):
    for name, f in [("one at a time", one_at_a_time), ("all submitted, then collected", all_then_collect)]:
        t = time.perf_counter()
        f()
        if r > 0:
            times[name].append(time.perf_counter() - t)
for name, ts in times.items():
    print(f"{name}: median {statistics.median(ts):.2f} s for {prompts_n} asample calls ({', '.join(f'{t:.2f}' for t in ts)})")
a, b = (statistics.median(v) for v in times.values())
print(f"pipelining saves {100 * (1 - b / a):.0f}% ({a / b:.1f}x)")
