//! Protobuf goldens both ways against the `tinker` SDK's generated module (tinker 0.38.0):
//! `golden/*.python.bin` were written by `tinker_public_pb2` (`golden.py write`) and must
//! decode here to the values it wrote; `golden/request.rust.bin` is rlx's encoding of the
//! same request, which `golden.py check` decodes in CI (`tests/tinker/goldens.sh`).

use std::path::PathBuf;

use prost::Message;
use rlx::engine::tinker::proto::{
    self, Chunk, Datum, ForwardBackwardOutput, ForwardBackwardRequest, SampleResponse, StopReason,
    Tensor,
};

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tinker/golden").join(name)
}

/// The request `golden.py` builds, as rlx builds it.
fn request() -> ForwardBackwardRequest {
    let d = Datum {
        model_input: vec![Chunk::tokens(&[5, 10, 110, 20])],
        loss_fn_inputs: [
            ("target_tokens".to_string(), Tensor::i64(&[10, 110, 20, 111])),
            ("weights".to_string(), Tensor::f32(&[0.0, 0.0, 1.0, 1.0])),
            ("logprobs".to_string(), Tensor::f32(&[0.0, 0.0, -0.5, -1.25])),
            ("advantages".to_string(), Tensor::f32(&[0.0, 0.0, 2.0, -3.0])),
        ]
        .into(),
    };
    ForwardBackwardRequest {
        model_id: "model_7".into(),
        seq_id: 3,
        data: vec![d],
        loss_fn: "importance_sampling".into(),
        loss_fn_config: Default::default(),
        forward_only: false,
    }
}

#[test]
fn the_request_python_encodes_is_the_one_rlx_encodes() {
    let python = std::fs::read(golden("request.python.bin")).unwrap();
    assert_eq!(ForwardBackwardRequest::decode(python.as_slice()).unwrap(), request());
    let path = golden("request.rust.bin");
    let ours = request().encode_to_vec();
    if std::env::var_os("RLX_BLESS").is_some() {
        std::fs::write(&path, &ours).unwrap();
    }
    // prost writes a map's entries in hash order: equal as messages, not always as bytes.
    let committed = std::fs::read(&path).unwrap();
    assert_eq!(ForwardBackwardRequest::decode(committed.as_slice()).unwrap(), request());
    assert_eq!(committed.len(), ours.len());
}

#[test]
fn a_forward_backward_output_from_python_decodes() {
    let bytes = std::fs::read(golden("forward_backward_output.python.bin")).unwrap();
    let out = ForwardBackwardOutput::decode(bytes.as_slice()).unwrap();
    assert_eq!(out.metrics["loss:sum"], 1.5);
    let rec = &out.loss_fn_outputs[0];
    assert_eq!(rec.num_datums, 2);
    let rows = rec.fields["logprobs"].rows_f32(2).unwrap();
    assert_eq!(rows, vec![vec![-1.0, -2.0], vec![-3.0]]);
}

#[test]
fn a_sample_response_from_python_decodes() {
    let bytes = std::fs::read(golden("sample_response.python.bin")).unwrap();
    let s = SampleResponse::decode(bytes.as_slice()).unwrap();
    assert_eq!(s.prompt_cache_hit_tokens, 2);
    let prompt = proto::read_f32(s.prompt_logprobs.as_deref().unwrap(), "p").unwrap();
    assert!(prompt[0].is_nan());
    assert_eq!(&prompt[1..], [-0.25, -0.75]);
    assert_eq!(s.sequences.len(), 2);
    assert_eq!(s.sequences[0].stop_reason, StopReason::Length as i32);
    assert_eq!(proto::read_i32(&s.sequences[0].tokens, "t").unwrap(), [7, 8, 9]);
    let lp = proto::read_f32(s.sequences[0].logprobs.as_deref().unwrap(), "l").unwrap();
    assert_eq!(lp, [-0.5, -0.125, -2.0]);
    assert_eq!(s.sequences[1].stop_reason, StopReason::Stop as i32);
}
