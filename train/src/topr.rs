//! TOPR, Tapered Off-Policy REINFORCE (Le Roux et al., arXiv 2503.14286; `docs/ALGORITHMS.md`).
//!
//! For trajectories τ sampled by a behaviour policy μ with rewards `R(τ)` and advantage `A = R − c` (baseline `c`):
//!
//! ```text
//! ∇J = Σ_{A ≥ 0} [π(τ)/μ(τ)]_{a⁺}^{b⁺} A ∇log π(τ)  +  Σ_{A < 0} [π(τ)/μ(τ)]_{a⁻}^{b⁻} A ∇log π(τ)      (Eqs. 7–8)
//! ```
//!
//! with `[x]_a^b = clip(x, a, b)`. Canonical TOPR is `a⁺ = b⁺ = 1, a⁻ = 0, b⁻ = 1`: SFT on positives, truncated
//! importance sampling on negatives. Per trajectory the loss is `−sg(w) · A · log π(τ)` (divided by `|τ|` when
//! length-normalised, as the paper trains), `w` the clipped ratio; the step's loss is the mean over its
//! trajectories.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Truncation bounds of the importance ratio, `(a⁺, b⁺)` for non-negative and `(a⁻, b⁻)` for negative advantages.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    /// a⁺ (default 1).
    pub pos_low: f64,
    /// b⁺ (default 1).
    pub pos_high: f64,
    /// a⁻ (default 0).
    pub neg_low: f64,
    /// b⁻ (default 1).
    pub neg_high: f64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds { pos_low: 1.0, pos_high: 1.0, neg_low: 0.0, neg_high: 1.0 }
    }
}

/// How the importance ratio π(τ)/μ(τ) is formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RatioMode {
    /// `exp(log π(τ) − log μ(τ))`, the paper's sequence ratio. The default.
    #[default]
    Sequence,
    /// `exp((log π(τ) − log μ(τ)) / |τ|)`, the geometric mean of token ratios (verl's TOPR).
    LengthNormalised,
}

/// TOPR's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Topr {
    /// Ratio truncation. Default [`Bounds::default`] (1, 1, 0, 1).
    pub bounds: Bounds,
    /// Sequence or length-normalised ratio. Default [`RatioMode::Sequence`].
    pub ratio: RatioMode,
    /// Baseline `c` subtracted from rewards. Default 0 (the paper's main experiments).
    pub baseline: f64,
    /// Divide each trajectory's loss by its token count (the paper's "loss/len"). Default true.
    pub length_normalise: bool,
}

impl Default for Topr {
    fn default() -> Self {
        Topr { bounds: Bounds::default(), ratio: RatioMode::Sequence, baseline: 0.0, length_normalise: true }
    }
}

impl Topr {
    /// Checks the bounds (`0 ≤ a ≤ b` on each side).
    pub fn validate(&self) -> Result<()> {
        let b = self.bounds;
        for (name, lo, hi) in [("positive", b.pos_low, b.pos_high), ("negative", b.neg_low, b.neg_high)] {
            if !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo <= hi) {
                return Err(Error::Config(format!("topr: {name} bounds must satisfy 0 ≤ a ≤ b, got [{lo}, {hi}]")));
            }
        }
        if !self.baseline.is_finite() {
            return Err(Error::Config(format!("topr: baseline must be finite, got {}", self.baseline)));
        }
        Ok(())
    }
}

/// Per-trajectory inputs, each `(B,)`.
#[derive(Debug, Clone)]
pub struct TrajectoryLogps {
    /// `log π(τ)`: the policy's log-prob sum over the completion (differentiable).
    pub policy: Tensor,
    /// `log μ(τ)`: the behaviour policy's (the sampler's log-prob sum).
    pub behaviour: Tensor,
    /// `R(τ)`.
    pub reward: Tensor,
    /// `|τ|`: completion tokens.
    pub tokens: Tensor,
}

/// What [`topr_loss`] returns.
#[derive(Debug, Clone)]
pub struct ToprTerms {
    /// This micro-batch's share of the step loss.
    pub loss: Tensor,
    /// The truncated ratio `w` of each trajectory, detached.
    pub weights: Tensor,
    /// The untruncated ratio, detached (for the logged mean).
    pub ratios: Tensor,
}

/// The TOPR loss of a micro-batch as its share of a step of `step_trajectories` trajectories.
pub fn topr_loss(cfg: &Topr, x: &TrajectoryLogps, step_trajectories: usize) -> Result<ToprTerms> {
    let cpu = &candle_core::Device::Cpu;
    let f64 = |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(cpu)?.to_dtype(DType::F64)?) };
    let (logp, mu, reward, tokens) = (f64(&x.policy)?, f64(&x.behaviour)?.detach(), f64(&x.reward)?, f64(&x.tokens)?);
    let advantage = (reward - cfg.baseline)?;
    let log_ratio = (logp.detach() - &mu)?;
    let log_ratio = match cfg.ratio {
        RatioMode::Sequence => log_ratio,
        RatioMode::LengthNormalised => (log_ratio / &tokens)?,
    };
    let ratio = log_ratio.exp()?;
    let b = cfg.bounds;
    let positive = advantage.ge(0.0)?;
    let w = positive.where_cond(&ratio.clamp(b.pos_low, b.pos_high)?, &ratio.clamp(b.neg_low, b.neg_high)?)?;
    let mut per = ((&w * &advantage)? * &logp)?.neg()?;
    if cfg.length_normalise {
        per = (per / &tokens)?;
    }
    Ok(ToprTerms { loss: (per.sum_all()? / step_trajectories.max(1) as f64)?, weights: w, ratios: ratio })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f64]) -> Tensor {
        Tensor::new(v, &candle_core::Device::Cpu).expect("tensor")
    }

    #[test]
    fn canonical_bounds_are_sft_on_positives_and_truncated_is_on_negatives() -> Result<()> {
        let x = TrajectoryLogps {
            policy: t(&[-5.0, -5.0, -9.0]),
            behaviour: t(&[-6.0, -4.0, -8.0]),
            reward: t(&[1.0, -1.0, -1.0]),
            tokens: t(&[1.0, 1.0, 1.0]),
        };
        let cfg = Topr { length_normalise: false, ..Topr::default() };
        let out = topr_loss(&cfg, &x, 3)?;
        let w: Vec<f64> = out.weights.to_vec1()?;
        // Positive: w = 1 whatever the ratio (e¹ here); negatives: min(π/μ, 1) = e⁻¹ for both.
        let e1 = (-1f64).exp();
        assert_eq!(w[0], 1.0);
        assert!((w[1] - e1).abs() < 1e-15 && (w[2] - e1).abs() < 1e-15, "{w:?}");
        // loss = −(1·1·(−5) + e⁻¹·(−1)·(−5) + e⁻¹·(−1)·(−9)) / 3
        let want = -(-5.0 + e1 * 5.0 + e1 * 9.0) / 3.0;
        assert!((out.loss.to_scalar::<f64>()? - want).abs() < 1e-12);
        Ok(())
    }

    /// The paper's gradient (Eqs. 7–8), transcribed directly per trajectory in plain f64:
    /// `∇J = (1/N) Σ_τ [π(τ)/μ(τ)]_{a}^{b} · A(τ) · ∇log π(τ)` (divided by |τ| when length-normalised), with
    /// `[·]` the bounds of the advantage's sign; the loss is `−J`, so `∂loss/∂log π(τ) = −w · A / (N · |τ|)`.
    #[test]
    fn value_and_gradient_equal_a_direct_transcription_of_the_paper() -> Result<()> {
        let logp = [-4.0, -7.5, -3.2, -12.0, -6.0];
        let mu = [-5.0, -7.0, -3.0, -11.0, -6.5];
        let reward = [1.0, 1.0, -1.0, -1.0, 0.2];
        let len = [4.0, 9.0, 3.0, 12.0, 5.0];
        let cases = [
            Topr::default(),
            Topr { baseline: 0.5, ratio: RatioMode::LengthNormalised, ..Topr::default() },
            Topr {
                bounds: Bounds { pos_low: 0.5, pos_high: 2.0, neg_low: 0.1, neg_high: 0.8 },
                length_normalise: false,
                baseline: -0.1,
                ..Topr::default()
            },
        ];
        for cfg in cases {
            let var = candle_core::Var::from_tensor(&t(&logp))?;
            let x = TrajectoryLogps {
                policy: var.as_tensor().clone(),
                behaviour: t(&mu),
                reward: t(&reward),
                tokens: t(&len),
            };
            let n = logp.len() as f64;
            let out = topr_loss(&cfg, &x, logp.len())?;
            let grad: Vec<f64> = out.loss.backward()?.get(var.as_tensor()).expect("gradient").to_vec1()?;
            let (mut want, b) = (0.0, cfg.bounds);
            for i in 0..logp.len() {
                let a = reward[i] - cfg.baseline;
                let log_ratio = logp[i] - mu[i];
                let ratio = match cfg.ratio {
                    RatioMode::Sequence => log_ratio.exp(),
                    RatioMode::LengthNormalised => (log_ratio / len[i]).exp(),
                };
                let w = if a >= 0.0 { ratio.clamp(b.pos_low, b.pos_high) } else { ratio.clamp(b.neg_low, b.neg_high) };
                let norm = if cfg.length_normalise { len[i] } else { 1.0 };
                want += -w * a * logp[i] / norm / n;
                let g = -w * a / norm / n;
                assert!((grad[i] - g).abs() < 1e-12, "{cfg:?} [{i}]: gradient {} vs {g}", grad[i]);
            }
            let got = out.loss.to_scalar::<f64>()?;
            assert!((got - want).abs() < 1e-12, "{cfg:?}: loss {got} vs {want}");
        }
        Ok(())
    }
}
