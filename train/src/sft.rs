//! Supervised fine-tuning: the negative log-likelihood of completion tokens (never the prompt), averaged per
//! token over the optimizer step, as TRL's `SFTTrainer` computes it with `completion_only_loss` — ReFT's warm-up
//! on gold solutions, rejection-sampling fine-tuning (RFT/STaR) on a run's correct trajectories — with optional
//! per-example weights and Masked Thought (Chen et al. 2024): a ratio of the completion tokens in the *input*
//! replaced by a mask token while the targets stay the original tokens, the ratio ramped from 0 to its maximum.
//!
//! ```text
//! loss = − Σ_i w_i Σ_t log π(y_i,t | x_i, ỹ_i,<t) / Σ_i |y_i|        (sums over the step's examples)
//! ```
//! `ỹ` is `y` with Masked Thought's replacements (`ỹ = y` without it). With all `w_i = 1` this is the per-token
//! mean of cross-entropy over the step's completion tokens (`tests/reference/sft_loss.py`).

use candle_core::Tensor;
use orchard_engine::TokenId;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Masked Thought's maximum ratio on GSM8K (paper §4).
pub const DEFAULT_MASK_RATIO: f64 = 0.4;
/// Default share of the run over which the mask ratio ramps from 0 to its maximum (the paper's GSM8K recipe,
/// `mask_rate_warmup 0.66`).
pub const DEFAULT_MASK_RAMP: f64 = 0.66;

/// Masked Thought settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskedThought {
    /// Largest share of completion tokens masked in the input. Default [`DEFAULT_MASK_RATIO`].
    pub max_ratio: f64,
    /// Share of the planned steps over which the ratio ramps linearly from 0 to `max_ratio`. Default
    /// [`DEFAULT_MASK_RAMP`].
    pub ramp: f64,
    /// The token written in place of masked ones.
    pub mask_token: TokenId,
}

impl MaskedThought {
    /// The ratio at optimizer step `step` (0-based) of `total`.
    pub fn ratio_at(&self, step: usize, total: usize) -> f64 {
        let ramp_steps = self.ramp * total as f64;
        if ramp_steps <= 0.0 {
            return self.max_ratio;
        }
        self.max_ratio * (step as f64 / ramp_steps).min(1.0)
    }

    /// `completion` with `round(ratio × len)` tokens replaced by the mask token, at positions chosen by `seed`
    /// (a partial Fisher–Yates shuffle of the positions: a pure function of its inputs, so resumes retrace it).
    /// The paper draws each token independently with probability `ratio`; an exact count has the same mean and
    /// makes the schedule checkable example by example.
    pub fn mask(&self, completion: &[TokenId], ratio: f64, seed: u64) -> Vec<TokenId> {
        let mut out = completion.to_vec();
        let k = ((ratio.clamp(0.0, 1.0) * completion.len() as f64).round() as usize).min(completion.len());
        let mut positions: Vec<usize> = (0..completion.len()).collect();
        let mut state = seed;
        for j in 0..k {
            let r = orchard_datasets::loaders::splitmix64(&mut state);
            let pick = j + (r % (positions.len() - j) as u64) as usize;
            positions.swap(j, pick);
            out[positions[j]] = self.mask_token;
        }
        out
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.max_ratio) || !(0.0..=1.0).contains(&self.ramp) {
            return Err(Error::Config(format!(
                "masked thought: ratio {} and ramp {} must lie in [0, 1]",
                self.max_ratio, self.ramp
            )));
        }
        Ok(())
    }
}

/// The SFT objective.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sft {
    /// Masked Thought, off by default.
    pub masked_thought: Option<MaskedThought>,
}

impl Sft {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        self.masked_thought.as_ref().map_or(Ok(()), MaskedThought::validate)
    }
}

/// One micro-batch's share of the step's loss: `−Σ w_t · logp_t / step_tokens`, where `token_logps` (N,) are the
/// log-probs of the micro-batch's completion tokens and `token_weights` (N,) their examples' weights.
pub fn sft_loss(token_logps: &Tensor, token_weights: &Tensor, step_tokens: usize) -> Result<Tensor> {
    if step_tokens == 0 {
        return Err(Error::Config("an SFT step has no completion tokens".into()));
    }
    // In f64, as every loss of the trainer (the backward casts back to the model's f32).
    let lp = token_logps.to_dtype(candle_core::DType::F64)?;
    let weights = token_weights.to_dtype(candle_core::DType::F64)?;
    Ok((lp.mul(&weights)?.sum_all()?.neg()? / step_tokens as f64)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Reference: `tests/reference/sft_loss.py` (PyTorch's `cross_entropy` with `ignore_index=-100` on the prompt
    /// positions, `reduction="mean"`, as TRL's SFTTrainer with `completion_only_loss`), on these logits:
    /// vocab 5, two sequences, prompt lengths 2 and 1, completions [3, 1, 4] and [0, 2].
    #[test]
    fn sft_loss_equals_torch_cross_entropy_over_completion_tokens() -> Result<()> {
        let logits: [[f32; 5]; 8] = [
            [0.1, -0.3, 0.8, 0.0, 0.5],
            [1.2, 0.4, -0.7, 0.3, 0.0],
            [-0.5, 0.9, 0.2, 1.1, -0.2],
            [0.0, 0.3, 0.6, -0.4, 0.7],
            [0.9, -1.0, 0.1, 0.2, 0.4],
            [0.3, 0.2, -0.1, 0.0, 0.6],
            [-0.2, 0.5, 1.3, -0.6, 0.1],
            [0.7, 0.0, -0.3, 0.9, -0.8],
        ];
        // Rows whose logits predict completion tokens: seq 0 (rows 0..4, prompt 2) predicts with rows 1, 2, 3;
        // seq 1 (rows 4..8 hold prompt 1 + completion 2 + one pad) predicts with rows 4, 5.
        let picks = [(1usize, 3usize), (2, 1), (3, 4), (4, 0), (5, 2)];
        let lp: Vec<f32> = picks
            .iter()
            .map(|&(r, t)| {
                let m = logits[r].iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let lse = m + logits[r].iter().map(|x| (x - m).exp()).sum::<f32>().ln();
                logits[r][t] - lse
            })
            .collect();
        let lp = Tensor::new(lp.as_slice(), &Device::Cpu)?;
        let ones = Tensor::ones(5, candle_core::DType::F32, &Device::Cpu)?;
        let loss = sft_loss(&lp, &ones, 5)?.to_scalar::<f64>()?;
        // torch: F.cross_entropy(logits, labels, ignore_index=-100) = 1.4176695997769801
        assert!((loss - 1.417_669_599_776_980_1).abs() < 1e-5, "{loss}");
        // Split into micro-batches of 3 and 2 tokens, each normalised by the step's 5: the same sum.
        let a = sft_loss(&lp.narrow(0, 0, 3)?, &ones.narrow(0, 0, 3)?, 5)?.to_scalar::<f64>()?;
        let b = sft_loss(&lp.narrow(0, 3, 2)?, &ones.narrow(0, 3, 2)?, 5)?.to_scalar::<f64>()?;
        assert!((a + b - loss).abs() < 1e-6);
        // Weights scale each example's tokens: weight 0 on seq 1 leaves seq 0's sum over all 5 tokens.
        let w = Tensor::new(&[1f32, 1., 1., 0., 0.], &Device::Cpu)?;
        let part = sft_loss(&lp, &w, 5)?.to_scalar::<f64>()?;
        assert!((part - a).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn masked_thought_masks_the_scheduled_share_of_completion_tokens() {
        let mt = MaskedThought { max_ratio: 0.4, ramp: 0.5, mask_token: 0 };
        assert_eq!(mt.ratio_at(0, 100), 0.0);
        assert!((mt.ratio_at(25, 100) - 0.2).abs() < 1e-12);
        assert_eq!(mt.ratio_at(50, 100), 0.4);
        assert_eq!(mt.ratio_at(99, 100), 0.4);
        let completion: Vec<TokenId> = (1..=50).collect();
        for (ratio, want) in [(0.0, 0), (0.2, 10), (0.4, 20), (1.0, 50)] {
            let masked = mt.mask(&completion, ratio, 7);
            assert_eq!(masked.len(), completion.len());
            assert_eq!(masked.iter().filter(|&&t| t == 0).count(), want, "ratio {ratio}");
            // Unmasked positions keep their token.
            assert!(masked.iter().zip(&completion).all(|(m, c)| *m == 0 || m == c));
        }
        assert_eq!(mt.mask(&completion, 0.4, 7), mt.mask(&completion, 0.4, 7));
        assert_ne!(mt.mask(&completion, 0.4, 7), mt.mask(&completion, 0.4, 8));
        assert!(MaskedThought { max_ratio: 1.5, ..mt }.validate().is_err());
    }
}
