//! Preference losses of the DPO family (`docs/ALGORITHMS.md`), one pure function per variant, computed in f64
//! on per-pair sequence log-probabilities.
//!
//! Notation: `h = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)]` with sums over completion tokens;
//! `avg(y)` = that sum divided by `|y|`. Every function returns one loss per pair; [`DpoLoss::compute`] reduces
//! them over the optimizer step and adds the batch-level NLL of RPO and ORPO, normalised by the *step's* totals
//! ([`UpdateTotals`]) so that micro-batches of one step add up to exactly the full-batch loss.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Default β (TRL's default; also the DPO paper's typical value).
pub const DEFAULT_BETA: f64 = 0.1;
/// Default label smoothing ε of cDPO and robust DPO.
pub const DEFAULT_LABEL_SMOOTHING: f64 = 0.1;
/// Default weight α of RPO's NLL term (the recommended 1.0).
pub const DEFAULT_RPO_ALPHA: f64 = 1.0;
/// Default SimPO target margin γ.
pub const DEFAULT_SIMPO_GAMMA: f64 = 0.5;

/// A preference loss with its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DpoLoss {
    /// DPO (Rafailov et al. 2023): `−log σ(β h)`.
    Sigmoid {
        /// β.
        beta: f64,
    },
    /// cDPO / label smoothing (Mitchell 2023): `−(1−ε) log σ(β h) − ε log σ(−β h)`. A per-pair ε column (MCTS-DPO's
    /// visit-count smoothing) overrides `label_smoothing`.
    Cdpo {
        /// β.
        beta: f64,
        /// ε ∈ [0, 0.5).
        label_smoothing: f64,
    },
    /// Robust DPO (Chowdhury et al. 2024): `[−(1−ε) log σ(β h) + ε log σ(−β h)] / (1 − 2ε)`.
    Robust {
        /// β.
        beta: f64,
        /// ε ∈ [0, 0.5).
        label_smoothing: f64,
    },
    /// IPO (Azar et al. 2023), per-token averaged log-ratios as TRL: `(h̄ − 1/(2β))²`.
    Ipo {
        /// β (IPO's τ).
        beta: f64,
    },
    /// Hinge (SLiC / RSO): `max(0, 1 − β h)`.
    Hinge {
        /// β (1 / margin).
        beta: f64,
    },
    /// RPO (Pang et al. 2024): DPO plus `α ·` the token-mean NLL of the chosen completions of the step.
    Rpo {
        /// β.
        beta: f64,
        /// α.
        alpha: f64,
    },
    /// SimPO (Meng et al. 2024), reference-free: `−log σ(β avg(y_w) − β avg(y_l) − γ)`.
    Simpo {
        /// β.
        beta: f64,
        /// Target margin γ.
        gamma: f64,
    },
    /// ORPO (Hong et al. 2024), reference-free: token-mean NLL of the chosen completions `− β · log σ(log-odds)`,
    /// odds on average log-probs.
    Orpo {
        /// β (ORPO's λ).
        beta: f64,
    },
}

impl DpoLoss {
    /// β of any variant (the scale of the logged rewards).
    pub fn beta(&self) -> f64 {
        match *self {
            DpoLoss::Sigmoid { beta }
            | DpoLoss::Cdpo { beta, .. }
            | DpoLoss::Robust { beta, .. }
            | DpoLoss::Ipo { beta }
            | DpoLoss::Hinge { beta }
            | DpoLoss::Rpo { beta, .. }
            | DpoLoss::Simpo { beta, .. }
            | DpoLoss::Orpo { beta } => beta,
        }
    }

    /// Whether the loss compares against reference log-probs (all but SimPO and ORPO).
    pub fn needs_reference(&self) -> bool {
        !matches!(self, DpoLoss::Simpo { .. } | DpoLoss::Orpo { .. })
    }

    /// The CLI name (`dpo`, `cdpo` …).
    pub fn name(&self) -> &'static str {
        match self {
            DpoLoss::Sigmoid { .. } => "dpo",
            DpoLoss::Cdpo { .. } => "cdpo",
            DpoLoss::Robust { .. } => "robust",
            DpoLoss::Ipo { .. } => "ipo",
            DpoLoss::Hinge { .. } => "hinge",
            DpoLoss::Rpo { .. } => "rpo",
            DpoLoss::Simpo { .. } => "simpo",
            DpoLoss::Orpo { .. } => "orpo",
        }
    }

    /// Checks the hyper-parameters.
    pub fn validate(&self) -> Result<()> {
        let beta = self.beta();
        if !(beta.is_finite() && beta > 0.0) {
            return Err(Error::Config(format!("{}: beta must be positive, got {beta}", self.name())));
        }
        match *self {
            DpoLoss::Cdpo { label_smoothing: e, .. } | DpoLoss::Robust { label_smoothing: e, .. }
                if !(0.0..0.5).contains(&e) =>
            {
                Err(Error::Config(format!("{}: label smoothing must be in [0, 0.5), got {e}", self.name())))
            }
            DpoLoss::Rpo { alpha, .. } if !alpha.is_finite() => {
                Err(Error::Config(format!("rpo: alpha must be finite, got {alpha}")))
            }
            DpoLoss::Simpo { gamma, .. } if !gamma.is_finite() => {
                Err(Error::Config(format!("simpo: gamma must be finite, got {gamma}")))
            }
            _ => Ok(()),
        }
    }

    /// The loss of one micro-batch as its share of the step's loss, with the logged rewards.
    ///
    /// `smoothing` (per-pair ε, `(B,)`) applies to [`DpoLoss::Cdpo`] only; `reference` is required unless the loss
    /// is reference-free.
    pub fn compute(
        &self,
        policy: &PolicyLogps,
        reference: Option<&ReferenceLogps>,
        smoothing: Option<&Tensor>,
        totals: UpdateTotals,
    ) -> Result<LossTerms> {
        let p = policy.to_f64()?;
        let smoothing = smoothing.map(|s| s.to_device(&candle_core::Device::Cpu)).transpose()?;
        let pairs = p.chosen.dim(0)?;
        let (avg_w, avg_l) = ((&p.chosen / &p.chosen_tokens)?, (&p.rejected / &p.rejected_tokens)?);
        let ratios = match (self.needs_reference(), reference) {
            (true, Some(r)) => {
                let r = r.to_f64()?;
                Some(((&p.chosen - &r.chosen)?, (&p.rejected - &r.rejected)?))
            }
            (true, None) => return Err(Error::Config(format!("{} needs reference log-probs", self.name()))),
            (false, _) => None,
        };
        let h = match &ratios {
            Some((w, l)) => Some((w - l)?),
            None => None,
        };
        let need = |h: &Option<Tensor>| h.clone().ok_or_else(|| Error::Config("reference log-ratios".into()));
        let per_pair = match *self {
            DpoLoss::Sigmoid { beta } | DpoLoss::Rpo { beta, .. } => sigmoid(beta, &need(&h)?)?,
            DpoLoss::Cdpo { beta, label_smoothing } => {
                let eps = match &smoothing {
                    Some(e) => e.to_dtype(DType::F64)?,
                    None => Tensor::full(label_smoothing, pairs, p.chosen.device())?,
                };
                cdpo(beta, &eps, &need(&h)?)?
            }
            DpoLoss::Robust { beta, label_smoothing } => robust(beta, label_smoothing, &need(&h)?)?,
            DpoLoss::Ipo { beta } => {
                let (w, l) = ratios.as_ref().ok_or_else(|| Error::Config("reference".into()))?;
                ipo(beta, &((w / &p.chosen_tokens)? - (l / &p.rejected_tokens)?)?)?
            }
            DpoLoss::Hinge { beta } => hinge(beta, &need(&h)?)?,
            DpoLoss::Simpo { beta, gamma } => simpo(beta, gamma, &avg_w, &avg_l)?,
            DpoLoss::Orpo { beta } => (orpo_log_odds_ratio(&avg_w, &avg_l)? * -beta)?,
        };
        // Σ over this micro-batch's pairs / pairs in the step, plus the batch-level NLL share where it applies.
        let mut loss = (per_pair.sum_all()? / totals.pairs.max(1) as f64)?;
        let nll = (p.chosen.sum_all()? * (-1.0 / totals.chosen_tokens.max(1) as f64))?;
        match *self {
            DpoLoss::Rpo { alpha, .. } => loss = (loss + (nll * alpha)?)?,
            DpoLoss::Orpo { .. } => loss = (loss + nll)?,
            _ => {}
        }
        let beta = self.beta();
        let (chosen_rewards, rejected_rewards) = match &ratios {
            Some((w, l)) => ((w * beta)?, (l * beta)?),
            None => ((&avg_w * beta)?, (&avg_l * beta)?),
        };
        Ok(LossTerms {
            loss,
            per_pair: per_pair.detach(),
            chosen_rewards: chosen_rewards.detach(),
            rejected_rewards: rejected_rewards.detach(),
        })
    }
}

/// Per-pair policy log-probabilities, each `(B,)`: sums over completion tokens and the token counts.
#[derive(Debug, Clone)]
pub struct PolicyLogps {
    /// `log π(y_w | x)`.
    pub chosen: Tensor,
    /// `log π(y_l | x)`.
    pub rejected: Tensor,
    /// `|y_w|`.
    pub chosen_tokens: Tensor,
    /// `|y_l|`.
    pub rejected_tokens: Tensor,
}

impl PolicyLogps {
    fn to_f64(&self) -> Result<PolicyLogps> {
        Ok(PolicyLogps {
            chosen: cpu_f64(&self.chosen)?,
            rejected: cpu_f64(&self.rejected)?,
            chosen_tokens: cpu_f64(&self.chosen_tokens)?,
            rejected_tokens: cpu_f64(&self.rejected_tokens)?,
        })
    }
}

/// Per-pair reference log-probabilities, each `(B,)`, never differentiated.
#[derive(Debug, Clone)]
pub struct ReferenceLogps {
    /// `log π_ref(y_w | x)`.
    pub chosen: Tensor,
    /// `log π_ref(y_l | x)`.
    pub rejected: Tensor,
}

impl ReferenceLogps {
    fn to_f64(&self) -> Result<ReferenceLogps> {
        Ok(ReferenceLogps { chosen: cpu_f64(&self.chosen)?.detach(), rejected: cpu_f64(&self.rejected)?.detach() })
    }
}

/// The loss works on the CPU in f64: its inputs are a few values per pair.
fn cpu_f64(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_device(&candle_core::Device::Cpu)?.to_dtype(DType::F64)?)
}

/// Totals over the whole optimizer step, which normalise every micro-batch's share of the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpdateTotals {
    /// Pairs (or trajectories) in the step.
    pub pairs: usize,
    /// Chosen completion tokens in the step (RPO's and ORPO's token-mean NLL).
    pub chosen_tokens: usize,
}

/// What [`DpoLoss::compute`] returns.
#[derive(Debug, Clone)]
pub struct LossTerms {
    /// This micro-batch's share of the step loss (a scalar to call `backward` on).
    pub loss: Tensor,
    /// The preference loss of each pair (without NLL terms), detached.
    pub per_pair: Tensor,
    /// β × log-ratio of the chosen side (reference-free losses: β × average log-prob), detached.
    pub chosen_rewards: Tensor,
    /// Same for the rejected side.
    pub rejected_rewards: Tensor,
}

/// `log σ(x)`, elementwise, stable for large `|x|` and with the exact gradient `σ(−x)` everywhere (the
/// `min(x, 0) − log(1 + e^{−|x|})` composition gets a wrong subgradient at `x = 0`, where every DPO step starts).
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok(x.apply_op1(LogSigmoid)?)
}

struct LogSigmoid;

impl candle_core::CustomOp1 for LogSigmoid {
    fn name(&self) -> &'static str {
        "log-sigmoid"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        // −softplus(−x) = −(max(−x, 0) + ln(1 + e^{−|x|})).
        let f = |x: f64| -((-x).max(0.0) + (-x.abs()).exp().ln_1p());
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("log-sigmoid: the input must be contiguous");
        };
        let out = match storage {
            candle_core::CpuStorage::F64(v) => {
                candle_core::CpuStorage::F64(v[start..end].iter().map(|&x| f(x)).collect())
            }
            candle_core::CpuStorage::F32(v) => {
                candle_core::CpuStorage::F32(v[start..end].iter().map(|&x| f(x as f64) as f32).collect())
            }
            _ => candle_core::bail!("log-sigmoid: f32 or f64 only"),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // d/dx log σ(x) = σ(−x) = 1 / (1 + e^x), which saturates cleanly at both ends.
        let s = (x.detach().exp()? + 1.0)?.recip()?;
        Ok(Some(g.mul(&s)?))
    }
}

/// DPO, Eq. 7 of the DPO paper: `−log σ(β h)`.
pub fn sigmoid(beta: f64, h: &Tensor) -> Result<Tensor> {
    Ok(log_sigmoid(&(h * beta)?)?.neg()?)
}

/// cDPO: `−(1−ε) log σ(β h) − ε log σ(−β h)` with a per-pair `ε`.
pub fn cdpo(beta: f64, eps: &Tensor, h: &Tensor) -> Result<Tensor> {
    let bh = (h * beta)?;
    let keep = (eps.neg()? + 1.0)?;
    Ok(((keep * log_sigmoid(&bh)?)? + (eps * log_sigmoid(&bh.neg()?)?)?)?.neg()?)
}

/// Robust DPO: `[−(1−ε) log σ(β h) + ε log σ(−β h)] / (1 − 2ε)`.
pub fn robust(beta: f64, eps: f64, h: &Tensor) -> Result<Tensor> {
    let bh = (h * beta)?;
    let clean = (log_sigmoid(&bh)? * -(1.0 - eps))?;
    let flipped = (log_sigmoid(&bh.neg()?)? * eps)?;
    Ok(((clean + flipped)? / (1.0 - 2.0 * eps))?)
}

/// IPO, Eq. 17 of the IPO paper with TRL's per-token averaged log-ratios `h̄`: `(h̄ − 1/(2β))²`.
pub fn ipo(beta: f64, h_avg: &Tensor) -> Result<Tensor> {
    Ok((h_avg - 1.0 / (2.0 * beta))?.sqr()?)
}

/// Hinge (SLiC, RSO's hinge-norm): `max(0, 1 − β h)`.
pub fn hinge(beta: f64, h: &Tensor) -> Result<Tensor> {
    Ok(((h * -beta)? + 1.0)?.relu()?)
}

/// SimPO, Eq. 6 of the SimPO paper: `−log σ(β avg(y_w) − β avg(y_l) − γ)`.
pub fn simpo(beta: f64, gamma: f64, avg_chosen: &Tensor, avg_rejected: &Tensor) -> Result<Tensor> {
    let logits = (((avg_chosen - avg_rejected)? * beta)? - gamma)?;
    Ok(log_sigmoid(&logits)?.neg()?)
}

/// ORPO's `log σ(log odds(y_w) − log odds(y_l))`, `odds(y) = P/(1−P)`, `P = exp(avg(y))` (Eqs. 4 and 7 of the
/// ORPO paper); the loss subtracts β times it.
pub fn orpo_log_odds_ratio(avg_chosen: &Tensor, avg_rejected: &Tensor) -> Result<Tensor> {
    // log(1 − e^x) for x < 0, in f64 (the inputs are f64 here, so no expm1 is needed for precision).
    let log1mexp = |x: &Tensor| -> Result<Tensor> { Ok((x.exp()?.neg()? + 1.0)?.log()?) };
    let log_odds = ((avg_chosen - avg_rejected)? - (log1mexp(avg_chosen)? - log1mexp(avg_rejected)?)?)?;
    log_sigmoid(&log_odds)
}

#[cfg(test)]
mod tests;
