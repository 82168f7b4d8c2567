//! Composite rewards: weighted sums (Think2SQL's `[EX, format]` with weights `[0.85, 0.15]`) and hierarchical
//! gates (score `otherwise` unless a gate reward reaches a threshold). Built from TOML through
//! [`RewardSpec`](crate::RewardSpec).

use crate::{Outcome, Reward, Task};

/// One term of a [`Weighted`] sum.
pub struct Term {
    /// Prefix of the term's components (`sql` → `sql/ex`), and the component holding the term's score.
    pub name: String,
    /// Weight of the term's score.
    pub weight: f64,
    /// The reward.
    pub reward: Box<dyn Reward>,
}

impl std::fmt::Debug for Term {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Term").field("name", &self.name).field("weight", &self.weight).finish_non_exhaustive()
    }
}

/// `score = Σ weight_i · score_i`. Components: each term's score under its name and its components under
/// `name/component`. `extracted` is the first term's that has one; failures are joined; any term's task error makes
/// the whole outcome a task error.
#[derive(Debug)]
pub struct Weighted {
    terms: Vec<Term>,
}

impl Weighted {
    /// A weighted sum of `terms`.
    pub fn new(terms: Vec<Term>) -> Self {
        Weighted { terms }
    }
}

fn merge_components(into: &mut Outcome, name: &str, part: &Outcome) {
    into.components.insert(name.to_string(), part.score);
    for (k, v) in &part.components {
        into.components.insert(format!("{name}/{k}"), *v);
    }
}

impl Weighted {
    /// Combine one row's term outcomes (in term order).
    fn combine(&self, parts: impl Iterator<Item = Outcome>) -> Outcome {
        let mut total = Outcome::new(0.0);
        let mut failures = Vec::new();
        let mut applicable = 0;
        for (term, part) in self.terms.iter().zip(parts) {
            if part.is_not_applicable() {
                // TRL's nansum: a term that does not apply adds nothing.
                failures.push(format!("{}: {}", term.name, part.error.as_deref().unwrap_or_default()));
                continue;
            }
            if let Some(e) = &part.error {
                return Outcome::task_error(format!("{}: {e}", term.name));
            }
            applicable += 1;
            total.score += term.weight * part.score;
            merge_components(&mut total, &term.name, &part);
            if total.extracted.is_none() {
                total.extracted.clone_from(&part.extracted);
            }
            if let Some(f) = &part.failure {
                failures.push(format!("{}: {f}", term.name));
            }
        }
        if applicable == 0 {
            return Outcome::not_applicable(format!("no term applies ({})", failures.join("; ")));
        }
        if !failures.is_empty() {
            total.failure = Some(failures.join("; "));
        }
        total
    }
}

impl Reward for Weighted {
    fn score(&self, task: &Task, completion: &str) -> Outcome {
        self.combine(self.terms.iter().map(|t| t.reward.score(task, completion)))
    }

    fn score_batch(&self, items: &[(&Task, &str)]) -> Vec<Outcome> {
        let mut per_term: Vec<std::vec::IntoIter<Outcome>> =
            self.terms.iter().map(|t| t.reward.score_batch(items).into_iter()).collect();
        (0..items.len()).map(|_| self.combine(per_term.iter_mut().map(|it| it.next().unwrap_or_default()))).collect()
    }
}

/// Hierarchical gate: if `gate` scores below `threshold`, the outcome is `otherwise` (e.g. −1 for a bad format);
/// else it is `then`'s outcome. The gate's score is the component `gate`.
pub struct Gate {
    gate: Box<dyn Reward>,
    threshold: f64,
    otherwise: f64,
    then: Box<dyn Reward>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("threshold", &self.threshold)
            .field("otherwise", &self.otherwise)
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// Gate `then` behind `gate ≥ threshold`, scoring `otherwise` below it.
    pub fn new(gate: Box<dyn Reward>, threshold: f64, otherwise: f64, then: Box<dyn Reward>) -> Self {
        Gate { gate, threshold, otherwise, then }
    }
}

impl Gate {
    /// The outcome of a row whose gate scored `g`, or `None` when the gate passed and `then` decides.
    fn gated(&self, g: &Outcome) -> Option<Outcome> {
        if g.error.is_some() {
            return Some(g.clone());
        }
        if g.score < self.threshold {
            let why = g.failure.clone().unwrap_or_else(|| format!("gate scored {} < {}", g.score, self.threshold));
            let mut o = Outcome::new(self.otherwise).with_failure(format!("gate: {why}"));
            merge_components(&mut o, "gate", g);
            return Some(o);
        }
        None
    }
}

impl Reward for Gate {
    fn score(&self, task: &Task, completion: &str) -> Outcome {
        let g = self.gate.score(task, completion);
        if let Some(o) = self.gated(&g) {
            return o;
        }
        let mut o = self.then.score(task, completion);
        merge_components(&mut o, "gate", &g);
        o
    }

    fn score_batch(&self, items: &[(&Task, &str)]) -> Vec<Outcome> {
        let gates = self.gate.score_batch(items);
        let mut out: Vec<Option<Outcome>> = gates.iter().map(|g| self.gated(g)).collect();
        let passed: Vec<usize> = (0..items.len()).filter(|&i| out[i].is_none()).collect();
        let thens = self.then.score_batch(&passed.iter().map(|&i| items[i]).collect::<Vec<_>>());
        for (i, mut o) in passed.into_iter().zip(thens) {
            merge_components(&mut o, "gate", &gates[i]);
            out[i] = Some(o);
        }
        out.into_iter().map(Option::unwrap_or_default).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(f64, Option<&'static str>);
    impl Reward for Fixed {
        fn score(&self, _: &Task, _: &str) -> Outcome {
            let o = Outcome::new(self.0).with_component("c", self.0);
            match self.1 {
                Some(e) => Outcome::task_error(e),
                None => o,
            }
        }
    }

    fn term(name: &str, weight: f64, score: f64) -> Term {
        Term { name: name.into(), weight, reward: Box::new(Fixed(score, None)) }
    }

    #[test]
    fn weighted_sums_and_prefixes_components() {
        let w = Weighted::new(vec![term("ex", 0.85, 1.0), term("format", 0.15, 0.0)]);
        let o = w.score(&Task::default(), "");
        assert!((o.score - 0.85).abs() < 1e-12);
        assert_eq!(o.components["ex"], 1.0);
        assert_eq!(o.components["format/c"], 0.0);
    }

    #[test]
    fn a_term_error_is_the_composites_error() {
        let w = Weighted::new(vec![
            term("a", 1.0, 1.0),
            Term { name: "b".into(), weight: 1.0, reward: Box::new(Fixed(0.0, Some("no db"))) },
        ]);
        assert_eq!(w.score(&Task::default(), "").error.as_deref(), Some("b: no db"));
    }

    struct NotApplicable;
    impl Reward for NotApplicable {
        fn score(&self, _: &Task, _: &str) -> Outcome {
            Outcome::not_applicable("returned None")
        }
    }

    #[test]
    fn a_term_that_does_not_apply_adds_nothing_and_batches_agree() {
        let w = Weighted::new(vec![
            term("a", 0.5, 1.0),
            Term { name: "py".into(), weight: 2.0, reward: Box::new(NotApplicable) },
        ]);
        let task = Task::default();
        let o = w.score(&task, "");
        assert_eq!(o.score, 0.5);
        assert!(o.failure.as_deref().is_some_and(|f| f.contains("py: not applicable")));
        let batch = w.score_batch(&[(&task, "x"), (&task, "y")]);
        assert_eq!(batch, vec![o.clone(), o]);
        let none = Weighted::new(vec![Term { name: "py".into(), weight: 1.0, reward: Box::new(NotApplicable) }]);
        assert!(none.score(&task, "").is_not_applicable());
    }

    #[test]
    fn gate_batches_score_then_only_where_the_gate_passes() {
        struct ByText;
        impl Reward for ByText {
            fn score(&self, _: &Task, c: &str) -> Outcome {
                Outcome::new(if c == "ok" { 1.0 } else { 0.0 })
            }
        }
        let g = Gate::new(Box::new(ByText), 1.0, -1.0, Box::new(Fixed(0.7, None)));
        let t = Task::default();
        let rows = [(&t, "ok"), (&t, "bad"), (&t, "ok")];
        let batch = g.score_batch(&rows);
        let one: Vec<Outcome> = rows.iter().map(|(t, c)| g.score(t, c)).collect();
        assert_eq!(batch, one);
        assert_eq!(batch.iter().map(|o| o.score).collect::<Vec<_>>(), [0.7, -1.0, 0.7]);
    }

    #[test]
    fn gate_scores_otherwise_below_threshold() {
        let g = Gate::new(Box::new(Fixed(0.0, None)), 1.0, -1.0, Box::new(Fixed(0.7, None)));
        assert_eq!(g.score(&Task::default(), "").score, -1.0);
        let g = Gate::new(Box::new(Fixed(1.0, None)), 1.0, -1.0, Box::new(Fixed(0.7, None)));
        let o = g.score(&Task::default(), "");
        assert_eq!((o.score, o.components["gate"]), (0.7, 1.0));
    }
}
