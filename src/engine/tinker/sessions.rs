//! Sampling sessions, as the `tinker` SDK 0.38 samples: each sampler (a snapshot's weights, or
//! the base model) gets a session of its own, opened once with `create_sampling_session` and
//! numbered in the run's session (`sampling_session_seq_id`, from 0), and each `asample` names
//! the session and its own `seq_id` in it (from 0). SkyRL 0.4 resolves the session to the
//! same weights an `asample` naming them would (`api.py` `create_sampling_session`).

use std::collections::HashMap;

use crate::engine::Sampler;

#[derive(Debug, Default)]
pub struct SamplingSessions {
    /// Each sampler's session id and the next `seq_id` in it.
    open: HashMap<String, (String, u64)>,
}

fn key(sampler: &Sampler) -> String {
    match sampler {
        Sampler::Base => String::new(),
        Sampler::Weights(path) => format!("weights:{path}"),
    }
}

impl SamplingSessions {
    /// How many were opened: the next one's `sampling_session_seq_id`.
    pub fn opened(&self) -> usize {
        self.open.len()
    }

    /// The session of `sampler` and the `seq_id` of its next request, if it has one.
    pub fn next(&mut self, sampler: &Sampler) -> Option<(String, u64)> {
        let (id, seq) = self.open.get_mut(&key(sampler))?;
        *seq += 1;
        Some((id.clone(), *seq - 1))
    }

    /// Records `id` as `sampler`'s session; its first request's `seq_id`.
    pub fn open(&mut self, sampler: &Sampler, id: String) -> (String, u64) {
        self.open.insert(key(sampler), (id.clone(), 1));
        (id, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sampler_has_its_session_and_its_own_request_numbers() {
        let mut s = SamplingSessions::default();
        let base = Sampler::Base;
        let snap = Sampler::Weights("tinker://m/s1".into());
        assert_eq!(s.next(&base), None);
        assert_eq!(s.opened(), 0);
        assert_eq!(s.open(&base, "b".into()), ("b".to_string(), 0));
        assert_eq!(s.opened(), 1);
        assert_eq!(s.next(&base), Some(("b".to_string(), 1)));
        assert_eq!(s.next(&snap), None);
        assert_eq!(s.open(&snap, "w".into()), ("w".to_string(), 0));
        assert_eq!(s.next(&snap), Some(("w".to_string(), 1)));
        assert_eq!(s.next(&base), Some(("b".to_string(), 2)));
        assert_eq!(s.opened(), 2);
    }
}
