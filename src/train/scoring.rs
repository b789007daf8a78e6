//! Scores of responses computed on the host, whatever computes them: a data set's verifier
//! (`arith.correct`) or an external reward (`command(...)`, `http(...)`), which gets the whole
//! batch in one request together with each prompt's reference answer and data row.

use std::collections::HashMap;

use crate::ir::graph::ScorerRef;
use crate::rewards::{Item, Rewards};
use crate::tasks::Task;

/// What scores on the host: the run's data sets and its external rewards.
#[derive(Clone, Copy)]
pub struct HostScorers<'a> {
    pub tasks: &'a HashMap<String, Task>,
    pub rewards: &'a Rewards,
}

impl HostScorers<'_> {
    /// One score per (prompt, response). Reward models are not host scorers.
    pub fn score(
        &self,
        scorer: &ScorerRef,
        prompts: &[&str],
        responses: &[&str],
    ) -> Result<Vec<f32>, String> {
        match scorer {
            ScorerRef::Verifier { data, member } => {
                let task = self.tasks.get(data).ok_or_else(|| format!("no data set `{data}`"))?;
                Ok(prompts.iter().zip(responses).map(|(p, r)| task.verify(member, p, r)).collect())
            }
            ScorerRef::External { reward, part } => {
                // Data sets in name order, so a prompt two of them share finds the same one.
                let mut tasks: Vec<(&String, &Task)> = self.tasks.iter().collect();
                tasks.sort_by_key(|(name, _)| *name);
                let found: Vec<Option<(&str, &Task)>> = prompts
                    .iter()
                    .map(|p| tasks.iter().find(|(_, t)| t.knows(p)).map(|(n, t)| (n.as_str(), *t)))
                    .collect();
                let answers: Vec<Option<String>> = prompts
                    .iter()
                    .zip(&found)
                    .map(|(p, f)| f.and_then(|(_, t)| t.reference(p)))
                    .collect();
                let items: Vec<Item<'_>> = prompts
                    .iter()
                    .zip(responses)
                    .zip(found.iter().zip(&answers))
                    .map(|((p, r), (f, a))| Item {
                        prompt: p,
                        response: r,
                        answer: a.as_deref(),
                        data: f.map_or("", |(n, _)| n),
                        row: f.and_then(|(_, t)| t.rows.get(*p)),
                    })
                    .collect();
                self.rewards.score(reward, part.as_deref(), &items)
            }
            ScorerRef::Model(m) => Err(format!("reward model `{m}` is not scored on the host")),
        }
    }
}
