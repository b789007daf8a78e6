//! The protobuf messages of the Tinker protocol that rlx sends and reads (package
//! `tinker_public`, proto3), written by hand with prost's derive so that no `protoc` runs at
//! build time. Field numbers and types are those of the descriptor shipped in the `tinker` SDK
//! 0.38's `tinker/proto/tinker_public_pb2.py` (`../shared/reference/tinker-2026.md` §4.3);
//! messages rlx never touches (images, provenance spans, top-k) are left out — prost skips
//! their fields when decoding.

use std::collections::HashMap;

/// `DType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum DType {
    Unspecified = 0,
    Float32 = 1,
    Int64 = 2,
    Int32 = 3,
    Bfloat16 = 4,
}

/// `StopReason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum StopReason {
    Stop = 0,
    Length = 1,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ForwardBackwardRequest {
    #[prost(string, tag = "1")]
    pub model_id: String,
    #[prost(int32, tag = "2")]
    pub seq_id: i32,
    #[prost(message, repeated, tag = "3")]
    pub data: Vec<Datum>,
    #[prost(string, tag = "4")]
    pub loss_fn: String,
    #[prost(map = "string, double", tag = "5")]
    pub loss_fn_config: HashMap<String, f64>,
    #[prost(bool, tag = "6")]
    pub forward_only: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Datum {
    #[prost(message, repeated, tag = "1")]
    pub model_input: Vec<Chunk>,
    #[prost(map = "string, message", tag = "2")]
    pub loss_fn_inputs: HashMap<String, Tensor>,
}

/// `Chunk`: only its `encoded_text` case (field 1 of the oneof).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Chunk {
    #[prost(message, optional, tag = "1")]
    pub encoded_text: Option<EncodedTextChunk>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EncodedTextChunk {
    /// int32 little-endian token ids.
    #[prost(bytes = "vec", tag = "1")]
    pub tokens: Vec<u8>,
}

/// `Tensor`: only its `dense` encoding (field 1 of the oneof).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Tensor {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub dense: Option<Vec<u8>>,
    #[prost(enumeration = "DType", tag = "3")]
    pub dtype: i32,
    #[prost(int64, repeated, tag = "4")]
    pub shape: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct BatchedTensor {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
    /// int64 little-endian byte offsets of each datum's slice of `data` (one per datum and a
    /// final end, or one start per datum).
    #[prost(bytes = "vec", tag = "2")]
    pub offsets: Vec<u8>,
    #[prost(enumeration = "DType", tag = "3")]
    pub dtype: i32,
    #[prost(int64, repeated, tag = "4")]
    pub trailing_shape: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ArrayRecord {
    #[prost(string, tag = "1")]
    pub type_tag: String,
    #[prost(map = "string, message", tag = "2")]
    pub fields: HashMap<String, BatchedTensor>,
    #[prost(int64, tag = "3")]
    pub num_datums: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ForwardBackwardOutput {
    #[prost(string, tag = "1")]
    pub loss_fn_output_type: String,
    #[prost(message, repeated, tag = "2")]
    pub loss_fn_outputs: Vec<ArrayRecord>,
    #[prost(map = "string, double", tag = "3")]
    pub metrics: HashMap<String, f64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SampleResponse {
    #[prost(message, repeated, tag = "1")]
    pub sequences: Vec<SampledSequence>,
    /// float32 little-endian; NaN where undefined (the first prompt token on hosted Tinker).
    #[prost(bytes = "vec", optional, tag = "2")]
    pub prompt_logprobs: Option<Vec<u8>>,
    #[prost(int32, tag = "4")]
    pub prompt_cache_hit_tokens: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SampledSequence {
    #[prost(enumeration = "StopReason", tag = "1")]
    pub stop_reason: i32,
    /// int32 little-endian.
    #[prost(bytes = "vec", tag = "2")]
    pub tokens: Vec<u8>,
    /// float32 little-endian.
    #[prost(bytes = "vec", optional, tag = "3")]
    pub logprobs: Option<Vec<u8>>,
}

/// Little-endian packing of the byte fields.
pub fn i32_bytes(v: impl IntoIterator<Item = i32>) -> Vec<u8> {
    v.into_iter().flat_map(i32::to_le_bytes).collect()
}

pub fn i64_bytes(v: impl IntoIterator<Item = i64>) -> Vec<u8> {
    v.into_iter().flat_map(i64::to_le_bytes).collect()
}

pub fn f32_bytes(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
    v.into_iter().flat_map(f32::to_le_bytes).collect()
}

fn chunks<const N: usize>(b: &[u8], what: &str) -> Result<impl Iterator<Item = [u8; N]>, String> {
    if !b.len().is_multiple_of(N) {
        return Err(format!("{what}: {} bytes is not a whole number of {N}-byte values", b.len()));
    }
    Ok(b.chunks_exact(N).map(|c| c.try_into().expect("exact chunk")))
}

pub fn read_i32(b: &[u8], what: &str) -> Result<Vec<i32>, String> {
    Ok(chunks::<4>(b, what)?.map(i32::from_le_bytes).collect())
}

pub fn read_i64(b: &[u8], what: &str) -> Result<Vec<i64>, String> {
    Ok(chunks::<8>(b, what)?.map(i64::from_le_bytes).collect())
}

pub fn read_f32(b: &[u8], what: &str) -> Result<Vec<f32>, String> {
    Ok(chunks::<4>(b, what)?.map(f32::from_le_bytes).collect())
}

impl Tensor {
    pub fn f32(values: &[f32]) -> Tensor {
        Tensor {
            dense: Some(f32_bytes(values.iter().copied())),
            dtype: DType::Float32 as i32,
            shape: vec![values.len() as i64],
        }
    }

    pub fn i64(values: &[i64]) -> Tensor {
        Tensor {
            dense: Some(i64_bytes(values.iter().copied())),
            dtype: DType::Int64 as i32,
            shape: vec![values.len() as i64],
        }
    }

    /// The values as f64, whatever the dtype.
    pub fn values(&self) -> Result<Vec<f64>, String> {
        let b = self.dense.as_deref().ok_or("a tensor without dense data")?;
        Ok(match DType::try_from(self.dtype).unwrap_or(DType::Unspecified) {
            DType::Float32 => read_f32(b, "tensor")?.into_iter().map(f64::from).collect(),
            DType::Int64 => read_i64(b, "tensor")?.into_iter().map(|v| v as f64).collect(),
            DType::Int32 => read_i32(b, "tensor")?.into_iter().map(f64::from).collect(),
            d => return Err(format!("a tensor of dtype {d:?}")),
        })
    }
}

impl BatchedTensor {
    /// One f32 row per datum, from the data and its byte offsets (float32, or bfloat16: the
    /// upper half of a float32).
    pub fn rows_f32(&self, datums: usize) -> Result<Vec<Vec<f32>>, String> {
        let read: fn(&[u8]) -> Result<Vec<f32>, String> = match DType::try_from(self.dtype) {
            Ok(DType::Float32) => |b| read_f32(b, "batched tensor"),
            Ok(DType::Bfloat16) => |b| {
                Ok(chunks::<2>(b, "batched tensor")?
                    .map(|h| f32::from_bits((u16::from_le_bytes(h) as u32) << 16))
                    .collect())
            },
            _ => {
                return Err(format!("a batched tensor of dtype {} (float32 expected)", self.dtype));
            }
        };
        let offsets = read_i64(&self.offsets, "offsets")?;
        let len = self.data.len() as i64;
        // Starts of every datum, then an end: with n offsets for n datums, the end is the data's.
        let mut bounds: Vec<i64> = offsets.clone();
        if bounds.len() == datums {
            bounds.push(len);
        }
        if bounds.len() != datums + 1 {
            return Err(format!("{} offsets for {datums} datums", offsets.len()));
        }
        let mut out = Vec::with_capacity(datums);
        for w in bounds.windows(2) {
            let (a, b) = (w[0], w[1]);
            if a < 0 || b < a || b > len {
                return Err(format!("offsets {a}..{b} outside {len} bytes"));
            }
            out.push(read(&self.data[a as usize..b as usize])?);
        }
        Ok(out)
    }

    /// The batched form of f32 rows (offsets: every start, then the end).
    pub fn from_rows_f32(rows: &[Vec<f32>]) -> BatchedTensor {
        let mut data = Vec::new();
        let mut offsets = vec![0i64];
        for r in rows {
            data.extend(f32_bytes(r.iter().copied()));
            offsets.push(data.len() as i64);
        }
        BatchedTensor {
            data,
            offsets: i64_bytes(offsets),
            dtype: DType::Float32 as i32,
            trailing_shape: vec![],
        }
    }
}

impl Chunk {
    pub fn tokens(tokens: &[u32]) -> Chunk {
        Chunk {
            encoded_text: Some(EncodedTextChunk {
                tokens: i32_bytes(tokens.iter().map(|&t| t as i32)),
            }),
        }
    }
}

impl Datum {
    /// The token ids of the datum's model input (its text chunks, in order).
    pub fn input_tokens(&self) -> Result<Vec<u32>, String> {
        let mut out = Vec::new();
        for c in &self.model_input {
            let t = c.encoded_text.as_ref().ok_or("a model input chunk that is not text")?;
            out.extend(read_i32(&t.tokens, "tokens")?.into_iter().map(|t| t as u32));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_request_round_trips() {
        let d = Datum {
            model_input: vec![Chunk::tokens(&[5, 10, 110])],
            loss_fn_inputs: [
                ("target_tokens".to_string(), Tensor::i64(&[10, 110, 20])),
                ("weights".to_string(), Tensor::f32(&[0.0, 1.0, -0.5])),
            ]
            .into(),
        };
        let r = ForwardBackwardRequest {
            model_id: "m".into(),
            seq_id: 3,
            data: vec![d],
            loss_fn: "cross_entropy".into(),
            loss_fn_config: HashMap::new(),
            forward_only: false,
        };
        let back = ForwardBackwardRequest::decode(r.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.data[0].input_tokens().unwrap(), [5, 10, 110]);
        assert_eq!(back.data[0].loss_fn_inputs["weights"].values().unwrap(), [0.0, 1.0, -0.5]);
    }

    #[test]
    fn batched_rows_both_offset_conventions() {
        let rows = vec![vec![1.0f32, 2.0], vec![], vec![3.0]];
        let b = BatchedTensor::from_rows_f32(&rows);
        assert_eq!(b.rows_f32(3).unwrap(), rows);
        let starts_only = BatchedTensor { offsets: i64_bytes([0, 8, 8]), ..b.clone() };
        assert_eq!(starts_only.rows_f32(3).unwrap(), rows);
        assert!(b.rows_f32(2).is_err());
    }
}
