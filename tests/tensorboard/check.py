"""Reads a run directory's TensorBoard event file with the `tensorboard` package's own reader
and requires every number of `metrics.jsonl` to be there as a scalar `STAGE/NAME` at its step,
with the same value (as float32), and nothing else."""

import json
import struct
import sys

from tensorboard.backend.event_processing import event_accumulator

run = sys.argv[1]
acc = event_accumulator.EventAccumulator(run, size_guidance={event_accumulator.SCALARS: 0})
acc.Reload()
got = {}
for tag in acc.Tags()["scalars"]:
    for e in acc.Scalars(tag):
        assert (tag, e.step) not in got, f"{tag} at step {e.step} twice"
        got[(tag, e.step)] = e.value

want = {}
for line in open(f"{run}/metrics.jsonl"):
    rec = json.loads(line)
    for key, value in rec.items():
        if key in ("stage_index", "step") or isinstance(value, (str, bool)) or value is None:
            continue
        f32 = struct.unpack("f", struct.pack("f", value))[0]
        want[(f"{rec['stage']}/{key}", rec["step"])] = f32

missing = sorted(set(want) - set(got))
extra = sorted(set(got) - set(want))
assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
wrong = [(k, want[k], got[k]) for k in want if want[k] != got[k]]
assert not wrong, f"values differ: {wrong[:5]}"
print(f"tensorboard: {len(want)} scalars of {run}/metrics.jsonl read back exactly")
