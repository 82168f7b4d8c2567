//! Online policy-gradient objectives over groups of sampled completions (GRPO family, RLOO, REINFORCE++), as pure
//! functions of per-token log-probs — what TRL's `GRPOTrainer` / `RLOOTrainer` and verl compute, with TRL's names.
//!
//! Per completion `i` of a group of `G` sharing a prompt, with reward `r_i`:
//! ```text
//! advantage   grpo      A_i = (r_i − mean_g r) / (std_g r + 1e-4)        (std with Bessel's correction, as torch)
//!             dr_grpo   A_i =  r_i − mean_g r                              (Liu et al. 2025: no std normalisation)
//!             rloo      A_i =  r_i − (Σ_g r − r_i) / (G − 1)              (leave-one-out baseline)
//!             reinforce_pp  A_i = r_i − mean_g r, then whitened over the whole batch (OpenRLHF's REINFORCE++-baseline)
//! per token   ρ_t = exp(logp_t − old_t)
//!             ℓ_t = −min(ρ_t A_i, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_i) + β (exp(ref_t − logp_t) − (ref_t − logp_t) − 1)
//! aggregate   token      Σ_t ℓ_t / Σ_i |y_i|                 (DAPO, TRL "dapo"/"bnpo")
//!             sequence   mean_i (Σ_t ℓ_t / |y_i|)            (GRPO as published, TRL "grpo")
//!             constant   Σ_t ℓ_t / (n · L_max)                (Dr. GRPO, TRL "dr_grpo")
//! ```
//! Tokens of masked completions (DAPO's overlong masking, failed rewards) are left out of every sum. The values
//! are checked against a transcription of TRL's code in PyTorch (`tests/reference/rl_objectives.py`).

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// GRPO's std epsilon (TRL: `std + 1e-4`).
pub const GRPO_STD_EPS: f64 = 1e-4;
/// REINFORCE++'s whitening epsilon (OpenRLHF: `std + 1e-8`).
pub const WHITEN_EPS: f64 = 1e-8;
/// Default PPO clip ε (TRL `epsilon`).
pub const DEFAULT_EPSILON: f64 = 0.2;
/// DAPO's clip-higher ε_high.
pub const DAPO_EPSILON_HIGH: f64 = 0.28;

/// How a group's rewards become advantages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdvantageKind {
    /// Group mean and std (GRPO).
    Grpo,
    /// Group mean only (Dr. GRPO, DAPO).
    DrGrpo,
    /// Leave-one-out mean (RLOO).
    Rloo,
    /// Group mean, then whitened across the batch (REINFORCE++-baseline).
    ReinforcePp,
}

/// How per-token losses are reduced.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Aggregation {
    /// Over all tokens of the batch (DAPO; TRL "dapo"/"bnpo").
    Token,
    /// Mean over completions of each completion's token mean (GRPO; TRL "grpo").
    Sequence,
    /// Sum over tokens divided by completions × a constant length (Dr. GRPO; TRL "dr_grpo").
    Constant {
        /// The constant length (TRL: `max_completion_length`).
        length: usize,
    },
}

/// Advantages of `rewards`, laid out group after group (`group` completions each).
pub fn advantages(rewards: &[f64], group: usize, kind: AdvantageKind) -> Result<Vec<f64>> {
    if group < 2 {
        return Err(Error::Config(format!(
            "group size {group}: group-relative advantages need at least 2 completions per prompt"
        )));
    }
    if !rewards.len().is_multiple_of(group) {
        return Err(Error::Config(format!("{} rewards do not split into groups of {group}", rewards.len())));
    }
    if let Some(i) = rewards.iter().position(|r| !r.is_finite()) {
        return Err(Error::Numeric(format!("reward {i} is {}", rewards[i])));
    }
    let g = group as f64;
    let mut out = Vec::with_capacity(rewards.len());
    for chunk in rewards.chunks(group) {
        if rewards_equal(chunk) {
            // Equal rewards carry no signal: the advantage is exactly 0 (the float mean of eight 0.1s is not 0.1,
            // and the difference divided by GRPO's 1e-4 would be noise the size of 1e-13 to train on).
            out.extend(std::iter::repeat_n(0.0, group));
            continue;
        }
        let mean = chunk.iter().sum::<f64>() / g;
        match kind {
            AdvantageKind::Grpo => {
                let var = chunk.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (g - 1.0);
                out.extend(chunk.iter().map(|r| (r - mean) / (var.sqrt() + GRPO_STD_EPS)));
            }
            AdvantageKind::DrGrpo | AdvantageKind::ReinforcePp => out.extend(chunk.iter().map(|r| r - mean)),
            AdvantageKind::Rloo => {
                let sum: f64 = chunk.iter().sum();
                out.extend(chunk.iter().map(|r| r - (sum - r) / (g - 1.0)));
            }
        }
    }
    if kind == AdvantageKind::ReinforcePp {
        let n = out.len() as f64;
        let mean = out.iter().sum::<f64>() / n;
        let var = out.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        for a in &mut out {
            *a = (*a - mean) / (var.sqrt() + WHITEN_EPS);
        }
    }
    Ok(out)
}

/// Indices of the groups whose rewards are not all equal (DAPO's dynamic sampling keeps only these: a group with
/// zero variance has zero advantage everywhere and no gradient).
pub fn informative_groups(rewards: &[f64], group: usize) -> Vec<usize> {
    rewards.chunks(group.max(1)).enumerate().filter(|(_, c)| !rewards_equal(c)).map(|(i, _)| i).collect()
}

/// Whether a group's rewards are all equal (within 1e-12): such a group has zero variance, zero advantage and no
/// gradient.
fn rewards_equal(group: &[f64]) -> bool {
    group.iter().all(|r| (r - group[0]).abs() <= 1e-12)
}

/// The clipped surrogate's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Surrogate {
    /// Lower clip ε (ratio ≥ 1 − ε_low).
    pub epsilon_low: f64,
    /// Upper clip ε (ratio ≤ 1 + ε_high; DAPO's clip-higher raises it).
    pub epsilon_high: f64,
    /// KL coefficient β (0: no reference model).
    pub beta: f64,
    /// Reduction.
    pub aggregation: Aggregation,
}

impl Default for Surrogate {
    fn default() -> Self {
        Surrogate {
            epsilon_low: DEFAULT_EPSILON,
            epsilon_high: DEFAULT_EPSILON,
            beta: 0.0,
            aggregation: Aggregation::Sequence,
        }
    }
}

/// One batch of completions for [`surrogate_loss`]: tokens of completion 0, then completion 1, …
#[derive(Debug, Clone)]
pub struct TokenBatch<'a> {
    /// Current policy log-probs of every token, `(N,)` (differentiable).
    pub logps: &'a Tensor,
    /// Log-probs of the policy that sampled them (the importance ratio's denominator), `N` values.
    pub old: &'a [f32],
    /// Reference-model log-probs, `N` values, when β > 0.
    pub reference: Option<&'a [f32]>,
    /// Tokens per completion (their sum is `N`).
    pub lengths: &'a [usize],
    /// Per completion: its advantage.
    pub advantages: &'a [f64],
    /// Per completion: whether it counts (false: overlong-masked or unscored).
    pub keep: &'a [bool],
    /// Totals of the whole optimizer step when this batch is one micro-batch of it (`None`: the batch is the step).
    pub step: Option<UpdateCounts>,
}

/// What the reductions divide by, over a whole optimizer step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UpdateCounts {
    /// Tokens of kept completions.
    pub kept_tokens: usize,
    /// Kept completions.
    pub kept: usize,
    /// All completions.
    pub completions: usize,
}

impl UpdateCounts {
    /// The counts of completions with these lengths and keep flags.
    pub fn of(lengths: &[usize], keep: &[bool]) -> Self {
        UpdateCounts {
            kept_tokens: lengths.iter().zip(keep).filter(|(_, k)| **k).map(|(l, _)| l).sum(),
            kept: keep.iter().filter(|k| **k).count(),
            completions: lengths.len(),
        }
    }

    /// Field-wise sum.
    pub fn plus(self, o: UpdateCounts) -> Self {
        UpdateCounts {
            kept_tokens: self.kept_tokens + o.kept_tokens,
            kept: self.kept + o.kept,
            completions: self.completions + o.completions,
        }
    }
}

/// What a surrogate loss computed.
#[derive(Debug, Clone)]
pub struct SurrogateTerms {
    /// The loss (scalar, f64).
    pub loss: Tensor,
    /// Share of kept tokens whose ratio was clipped (TRL `clip_ratio/region_mean`).
    pub clip_fraction: f64,
    /// Mean per-token KL estimate over kept tokens (0 without a reference).
    pub kl: f64,
    /// Kept completions.
    pub kept: usize,
}

/// The clipped surrogate with optional k3 KL, reduced as `s.aggregation` says.
pub fn surrogate_loss(s: &Surrogate, b: &TokenBatch<'_>) -> Result<SurrogateTerms> {
    let n: usize = b.lengths.iter().sum();
    let seqs = b.lengths.len();
    if b.old.len() != n || b.reference.is_some_and(|r| r.len() != n) || b.logps.dims1()? != n {
        return Err(Error::Config(format!(
            "token batch: {} lengths sum to {n}, but there are {} log-probs, {} old log-probs and {} reference ones",
            seqs,
            b.logps.dims1()?,
            b.old.len(),
            b.reference.map_or(0, <[f32]>::len)
        )));
    }
    if b.advantages.len() != seqs || b.keep.len() != seqs {
        return Err(Error::Config("token batch: one advantage and one keep flag per completion".into()));
    }
    if s.beta > 0.0 && b.reference.is_none() {
        return Err(Error::Config("β > 0 needs reference log-probs".into()));
    }
    let dev = Device::Cpu;
    let own = UpdateCounts::of(b.lengths, b.keep);
    let step = b.step.unwrap_or(own);
    let (kept_tokens, kept) = (own.kept_tokens, own.kept);
    // Per-token weight of the reduction (0 for dropped completions) and advantage.
    let (mut weight, mut adv) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for ((&len, &a), &k) in b.lengths.iter().zip(b.advantages).zip(b.keep) {
        let w = match (k, s.aggregation) {
            (false, _) => 0.0,
            (true, Aggregation::Token) => 1.0 / step.kept_tokens.max(1) as f64,
            (true, Aggregation::Sequence) => 1.0 / (len.max(1) as f64 * step.kept.max(1) as f64),
            (true, Aggregation::Constant { length }) => 1.0 / (length.max(1) * step.completions.max(1)) as f64,
        };
        weight.extend(std::iter::repeat_n(w, len));
        adv.extend(std::iter::repeat_n(a, len));
    }
    let lp = b.logps.to_dtype(DType::F64)?;
    let old = Tensor::from_vec(b.old.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), n, &dev)?;
    let adv_t = Tensor::from_vec(adv.clone(), n, &dev)?;
    let ratio = (&lp - &old)?.exp()?;
    let clipped = ratio.clamp(1.0 - s.epsilon_low, 1.0 + s.epsilon_high)?;
    let surrogate = ratio.mul(&adv_t)?.minimum(&clipped.mul(&adv_t)?)?.neg()?;
    let ratios: Vec<f64> = ratio.to_vec1()?;
    let clip_count = ratios
        .iter()
        .zip(&adv)
        .zip(&weight)
        .filter(|((r, a), w)| {
            **w > 0.0 && ((**r < 1.0 - s.epsilon_low && **a < 0.0) || (**r > 1.0 + s.epsilon_high && **a > 0.0))
        })
        .count();
    let (per_token, kl) = match (s.beta > 0.0, b.reference) {
        (true, Some(r)) => {
            let r = Tensor::from_vec(r.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), n, &dev)?;
            let d = (&r - &lp)?;
            let k3 = ((d.exp()? - &d)? - 1.0)?;
            let kv: Vec<f64> = k3.to_vec1()?;
            let kl = kv.iter().zip(&weight).filter(|(_, w)| **w > 0.0).map(|(k, _)| k).sum::<f64>()
                / kept_tokens.max(1) as f64;
            ((surrogate + (k3 * s.beta)?)?, kl)
        }
        _ => (surrogate, 0.0),
    };
    let w = Tensor::from_vec(weight, n, &dev)?;
    let loss = per_token.mul(&w)?.sum_all()?;
    let loss = loss.to_dtype(DType::F64)?;
    if !loss.to_scalar::<f64>()?.is_finite() {
        return Err(Error::Numeric("the policy-gradient loss is not finite".into()));
    }
    Ok(SurrogateTerms { loss, clip_fraction: clip_count as f64 / kept_tokens.max(1) as f64, kl, kept })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equal rewards whose float mean is not their value (0.1 × 8 sums to 0.7999…) give advantages of exactly 0.
    #[test]
    fn equal_rewards_have_exactly_zero_advantage() -> Result<()> {
        let r = [0.1; 8];
        assert_ne!(r.iter().sum::<f64>() / 8.0, 0.1, "the case this test is about");
        for kind in [AdvantageKind::Grpo, AdvantageKind::DrGrpo, AdvantageKind::Rloo] {
            assert!(advantages(&r, 8, kind)?.iter().all(|a| *a == 0.0), "{kind:?}");
        }
        let mixed = advantages(&[0.1, 0.1, 0.1, 0.0], 4, AdvantageKind::Grpo)?;
        assert!(mixed.iter().all(|a| *a != 0.0), "{mixed:?}");
        Ok(())
    }

    /// Reference: `tests/reference/rl_objectives.py` (TRL's GRPOTrainer / RLOO / OpenRLHF formulas in PyTorch).
    #[test]
    fn advantages_equal_the_reference() -> Result<()> {
        let r = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.2, 0.9];
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9) && a.len() == b.len();
        let grpo = advantages(&r, 4, AdvantageKind::Grpo)?;
        let d = -0.025_000_000_000_000_022;
        assert!(
            close(
                &grpo,
                &[
                    0.8658754297607016,
                    -0.8658754297607016,
                    -0.8658754297607016,
                    0.8658754297607016,
                    -0.08700853549403513,
                    -0.08700853549403513,
                    -1.1311109614224557,
                    1.3051280324105257
                ]
            ),
            "{grpo:?}"
        );
        assert!(close(&advantages(&r, 4, AdvantageKind::DrGrpo)?, &[0.5, -0.5, -0.5, 0.5, d, d, -0.325, 0.375]));
        let rloo = advantages(&r, 4, AdvantageKind::Rloo)?;
        assert!(
            close(
                &rloo,
                &[
                    0.6666666666666667,
                    -0.6666666666666666,
                    -0.6666666666666666,
                    0.6666666666666667,
                    -0.033333333333333326,
                    -0.033333333333333326,
                    -0.4333333333333334,
                    0.49999999999999994
                ]
            ),
            "{rloo:?}"
        );
        let pp = advantages(&r, 4, AdvantageKind::ReinforcePp)?;
        assert!(
            close(
                &pp,
                &[
                    1.1844009223075922,
                    -1.1844009223075922,
                    -1.1844009223075922,
                    1.1844009223075922,
                    -0.05922004611537966,
                    -0.05922004611537966,
                    -0.769860599499935,
                    0.8883006917306941
                ]
            ),
            "{pp:?}"
        );
        assert!(advantages(&r, 1, AdvantageKind::Grpo).unwrap_err().to_string().contains("at least 2"));
        assert!(advantages(&r[..7], 4, AdvantageKind::Grpo).is_err());
        assert_eq!(informative_groups(&r, 4), vec![0, 1]);
        assert_eq!(informative_groups(&[1.0, 1.0, 0.0, 1.0], 2), vec![1]);
        Ok(())
    }

    /// (log-probs, old log-probs, reference log-probs, lengths, advantages) of a hand-built batch.
    type Values = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<usize>, Vec<f64>);

    fn batch_values() -> Values {
        let logps = vec![-1.0f32, -0.5, -2.0, -0.3, -1.2, -0.8, -0.1];
        let old = vec![-1.1f32, -0.2, -2.5, -0.3, -0.9, -0.8, -0.6];
        let reference = vec![-1.0f32, -0.6, -1.8, -0.4, -1.0, -0.9, -0.2];
        (logps, old, reference, vec![3, 2, 2], vec![1.0, -0.5, 0.25])
    }

    /// Each reduction and β against `tests/reference/rl_objectives.py`, value and gradient.
    #[test]
    fn surrogate_losses_equal_trls_formulas() -> Result<()> {
        let (logps, old, reference, lengths, adv) = batch_values();
        let cases = [
            (
                Aggregation::Sequence,
                0.0,
                0.2,
                0.2,
                -0.2801099043063739,
                [-0.12279676867507196, -0.08231313563130198, 0.0, 0.08333333333333333, 0.0, -0.041666666666666664, 0.0],
            ),
            (
                Aggregation::Token,
                0.0,
                0.2,
                0.28,
                -0.3994270198224808,
                [-0.15788155972509252, -0.10583117438310255, 0.0, 0.07142857142857142, 0.0, -0.03571428571428571, 0.0],
            ),
            (
                Aggregation::Constant { length: 4 },
                0.04,
                0.2,
                0.2,
                -0.2244585776015665,
                [
                    -0.09209757650630397,
                    -0.06141764311692969,
                    -0.0007380091938672326,
                    0.04198387527321347,
                    -0.0007380091938672326,
                    -0.02051612472678653,
                    0.00031720860654680175,
                ],
            ),
        ];
        for (agg, beta, lo, hi, want, grad) in cases {
            let s = Surrogate { epsilon_low: lo, epsilon_high: hi, beta, aggregation: agg };
            let var = candle_core::Var::from_vec(logps.clone(), logps.len(), &Device::Cpu)?;
            let b = TokenBatch {
                logps: var.as_tensor(),
                old: &old,
                reference: Some(&reference),
                lengths: &lengths,
                advantages: &adv,
                keep: &[true, true, true],
                step: None,
            };
            let t = surrogate_loss(&s, &b)?;
            let v = t.loss.to_scalar::<f64>()?;
            assert!((v - want).abs() < 1e-6, "{agg:?}: {v} vs {want}");
            let g: Vec<f32> =
                t.loss.backward()?.get(var.as_tensor()).ok_or(Error::Numeric("no grad".into()))?.to_vec1()?;
            for (x, y) in g.iter().zip(&grad) {
                assert!((f64::from(*x) - y).abs() < 1e-5, "{agg:?}: grad {g:?} vs {grad:?}");
            }
        }
        Ok(())
    }

    /// A dropped completion (overlong-masked, failed reward) adds nothing and is not counted.
    #[test]
    fn masked_completions_drop_out_of_every_sum() -> Result<()> {
        let (logps, old, reference, lengths, adv) = batch_values();
        let s = Surrogate { aggregation: Aggregation::Token, ..Surrogate::default() };
        let lp = Tensor::new(logps.as_slice(), &Device::Cpu)?;
        let all = |keep: &[bool]| -> Result<SurrogateTerms> {
            surrogate_loss(
                &s,
                &TokenBatch {
                    logps: &lp,
                    old: &old,
                    reference: Some(&reference),
                    lengths: &lengths,
                    advantages: &adv,
                    keep,
                    step: None,
                },
            )
        };
        let without = all(&[true, false, true])?;
        // The same as a batch holding only completions 0 and 2.
        let lp02 = Tensor::new(&[-1.0f32, -0.5, -2.0, -0.8, -0.1], &Device::Cpu)?;
        let only = surrogate_loss(
            &s,
            &TokenBatch {
                logps: &lp02,
                old: &[-1.1, -0.2, -2.5, -0.8, -0.6],
                reference: None,
                lengths: &[3, 2],
                advantages: &[1.0, 0.25],
                keep: &[true, true],
                step: None,
            },
        )?;
        assert!((without.loss.to_scalar::<f64>()? - only.loss.to_scalar::<f64>()?).abs() < 1e-9);
        assert_eq!(without.kept, 2);
        assert!(surrogate_loss(
            &Surrogate { beta: 0.1, ..s },
            &TokenBatch {
                reference: None,
                ..TokenBatch {
                    logps: &lp,
                    old: &old,
                    reference: None,
                    lengths: &lengths,
                    advantages: &adv,
                    keep: &[true; 3],
                    step: None,
                }
            }
        )
        .is_err());
        Ok(())
    }

    /// A step split into micro-batches (completion 0 | completions 1, 2), each reduced with the step's counts, sums
    /// to the whole step's loss, for every reduction.
    #[test]
    fn micro_batches_with_step_counts_add_up_to_the_step() -> Result<()> {
        let (logps, old, reference, lengths, adv) = batch_values();
        for aggregation in [Aggregation::Token, Aggregation::Sequence, Aggregation::Constant { length: 4 }] {
            let s = Surrogate { aggregation, beta: 0.04, ..Surrogate::default() };
            let lp = Tensor::new(logps.as_slice(), &Device::Cpu)?;
            let keep = [true; 3];
            let part = |r: std::ops::Range<usize>, c: std::ops::Range<usize>, step| -> Result<f64> {
                let b = TokenBatch {
                    logps: &lp.narrow(0, r.start, r.len())?,
                    old: &old[r.clone()],
                    reference: Some(&reference[r]),
                    lengths: &lengths[c.clone()],
                    advantages: &adv[c.clone()],
                    keep: &keep[c],
                    step,
                };
                Ok(surrogate_loss(&s, &b)?.loss.to_scalar::<f64>()?)
            };
            let counts = UpdateCounts::of(&lengths, &keep);
            let whole = part(0..7, 0..3, None)?;
            let sum = part(0..3, 0..1, Some(counts))? + part(3..7, 1..3, Some(counts))?;
            assert!((sum - whole).abs() < 1e-12, "{aggregation:?}: {sum} vs {whole}");
        }
        Ok(())
    }
}
