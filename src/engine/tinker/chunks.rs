//! `forward_backward` requests no larger than a server takes (`client/config`'s
//! `fwdbwd_max_chunk_len` and `fwdbwd_max_chunk_bytes_count`; the `tinker` SDK 0.38 cuts its
//! requests the same way, by datum count and estimated uncompressed size).

use prost::Message;

use super::proto;

/// `data` cut into runs of at most `max_datums` datums and, where more than one datum, at
/// most `max_bytes` encoded bytes (a datum larger than that alone goes in a request of its
/// own), in order.
pub fn chunked(
    data: Vec<proto::Datum>,
    max_datums: usize,
    max_bytes: usize,
) -> Vec<Vec<proto::Datum>> {
    let mut chunks: Vec<Vec<proto::Datum>> = Vec::new();
    let mut bytes = 0;
    for d in data {
        let size = d.encoded_len();
        match chunks.last_mut() {
            Some(last) if last.len() < max_datums.max(1) && bytes + size <= max_bytes => {
                bytes += size;
                last.push(d);
            }
            _ => {
                bytes = size;
                chunks.push(vec![d]);
            }
        }
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datum(tokens: usize) -> proto::Datum {
        let toks: Vec<u32> = (0..tokens as u32).collect();
        proto::Datum {
            model_input: vec![proto::Chunk::tokens(&toks)],
            loss_fn_inputs: Default::default(),
        }
    }

    fn sizes(chunks: &[Vec<proto::Datum>]) -> Vec<usize> {
        chunks.iter().map(Vec::len).collect()
    }

    #[test]
    fn requests_hold_at_most_the_datums_and_bytes_a_server_takes_in_order() {
        let data: Vec<_> = (1..=7).map(datum).collect();
        assert_eq!(sizes(&chunked(data.clone(), 3, usize::MAX)), [3, 3, 1]);
        assert_eq!(sizes(&chunked(data.clone(), 1024, usize::MAX)), [7]);
        let kept: Vec<_> = chunked(data.clone(), 3, usize::MAX).concat();
        assert_eq!(kept, data, "nothing lost or reordered");
        // Bytes: each chunk within the limit, unless one datum alone exceeds it.
        let limit = data[..3].iter().map(Message::encoded_len).sum::<usize>();
        let chunks = chunked(data.clone(), 1024, limit);
        for c in &chunks {
            let bytes: usize = c.iter().map(Message::encoded_len).sum();
            assert!(bytes <= limit || c.len() == 1, "{bytes} > {limit}");
        }
        assert_eq!(chunks.concat(), data);
        assert_eq!(
            sizes(&chunked(data[..2].to_vec(), 1024, 1)),
            [1, 1],
            "one oversized datum each"
        );
        assert!(chunked(vec![], 3, 100).is_empty());
    }
}
