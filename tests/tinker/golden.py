"""Protobuf goldens of the Tinker wire, with the `tinker` SDK's own generated module.

`write DIR`: the messages a server sends (a forward_backward output, a sample response) and a
forward_backward request, encoded by `tinker_public_pb2` (tinker 0.38.0), into DIR.
`check DIR`: decodes the request rlx encoded (`request.rust.bin`, written by
`RLX_BLESS=1 cargo test --test tinker goldens`) with `tinker_public_pb2` and checks every field.
The Rust side (tests/tinker/goldens.rs) decodes the Python files and compares with the same
values, so both directions meet in the committed bytes.
"""

import importlib.metadata
import importlib.util
import pathlib
import struct
import sys

# The generated module alone: importing the `tinker` package needs httpx and more.
_root = importlib.util.find_spec("tinker").submodule_search_locations[0]
_path = pathlib.Path(_root) / "proto" / "tinker_public_pb2.py"
_spec = importlib.util.spec_from_file_location("tinker_public_pb2", _path)
pb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pb)


def f32(xs):
    return struct.pack(f"<{len(xs)}f", *xs)


def i32(xs):
    return struct.pack(f"<{len(xs)}i", *xs)


def i64(xs):
    return struct.pack(f"<{len(xs)}q", *xs)


TOKENS = [5, 10, 110, 20]
TARGETS = [10, 110, 20, 111]
WEIGHTS = [0.0, 0.0, 1.0, 1.0]
LOGPROBS = [0.0, 0.0, -0.5, -1.25]
ADVANTAGES = [0.0, 0.0, 2.0, -3.0]


def request():
    r = pb.ForwardBackwardRequest(model_id="model_7", seq_id=3, loss_fn="importance_sampling")
    d = r.data.add()
    d.model_input.add().encoded_text.tokens = i32(TOKENS)
    t = d.loss_fn_inputs["target_tokens"]
    t.dense, t.dtype = i64(TARGETS), pb.DTYPE_INT64
    t.shape.append(len(TARGETS))
    for name, xs in [("weights", WEIGHTS), ("logprobs", LOGPROBS), ("advantages", ADVANTAGES)]:
        t = d.loss_fn_inputs[name]
        t.dense, t.dtype = f32(xs), pb.DTYPE_FLOAT32
        t.shape.append(len(xs))
    return r


def write(out):
    out.mkdir(parents=True, exist_ok=True)
    o = pb.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord")
    rec = o.loss_fn_outputs.add(type_tag="ArrayRecord", num_datums=2)
    rows = [[-1.0, -2.0], [-3.0]]
    bt = rec.fields["logprobs"]
    bt.data = f32(rows[0] + rows[1])
    bt.offsets = i64([0, 8, 12])
    bt.dtype = pb.DTYPE_FLOAT32
    o.metrics["loss:sum"] = 1.5
    (out / "forward_backward_output.python.bin").write_bytes(o.SerializeToString(deterministic=True))
    s = pb.SampleResponse(prompt_cache_hit_tokens=2)
    s.prompt_logprobs = f32([float("nan"), -0.25, -0.75])
    seq = s.sequences.add(stop_reason=pb.STOP_REASON_LENGTH)
    seq.tokens, seq.logprobs = i32([7, 8, 9]), f32([-0.5, -0.125, -2.0])
    s.sequences.add(stop_reason=pb.STOP_REASON_STOP, tokens=i32([4]), logprobs=f32([-1.0]))
    (out / "sample_response.python.bin").write_bytes(s.SerializeToString(deterministic=True))
    (out / "request.python.bin").write_bytes(request().SerializeToString(deterministic=True))


def check(golden):
    got = pb.ForwardBackwardRequest()
    got.ParseFromString((golden / "request.rust.bin").read_bytes())
    want = request()
    assert got.model_id == want.model_id and got.seq_id == want.seq_id, got
    assert got.loss_fn == want.loss_fn and got.forward_only is False, got
    assert len(got.data) == 1 and got.data[0].model_input[0].encoded_text.tokens == i32(TOKENS)
    for name in ["target_tokens", "weights", "logprobs", "advantages"]:
        g, w = got.data[0].loss_fn_inputs[name], want.data[0].loss_fn_inputs[name]
        assert (g.dense, g.dtype, list(g.shape)) == (w.dense, w.dtype, list(w.shape)), name
    # Byte for byte what the Python side writes, map order aside: equal as messages.
    assert got == want
    version = importlib.metadata.version("tinker")
    print(f"tinker protobuf goldens: rlx's request decodes with tinker_public_pb2 (tinker {version})")


if __name__ == "__main__":
    {"write": write, "check": check}[sys.argv[1]](pathlib.Path(sys.argv[2]))
