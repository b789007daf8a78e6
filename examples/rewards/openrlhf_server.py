"""A reward server in OpenRLHF's remote protocol, standard library only: POST
{"query": [prompt + response], "prompts": [...], "labels": [...]} -> {"rewards": [...]}.
Scores arith answers (`answer: N`) against the labels. Serve it, then point a recipe at it:
    python3 examples/rewards/openrlhf_server.py 5000 &
    reward r = http("http://127.0.0.1:5000/get_reward")"""

import json
import re
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Reward(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        rewards = []
        for query, prompt, label in zip(body["query"], body["prompts"], body["labels"]):
            found = re.findall(r"answer:\s*(-?\d+)", query[len(prompt):])
            rewards.append(1.0 if found and found[-1] == label else 0.0)
        reply = json.dumps({"rewards": rewards, "scores": rewards, "extra_logs": {}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    HTTPServer(("127.0.0.1", port), Reward).serve_forever()
