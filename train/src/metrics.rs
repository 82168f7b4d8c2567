//! Per-step metrics (TRL's key names), the `metrics.jsonl` log and an SVG plot of the curves.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One optimizer step's metrics; one JSON line of `metrics.jsonl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateMetrics {
    /// Optimizer step, 1-based.
    pub step: usize,
    /// Fractional epoch at the end of the step.
    pub epoch: f64,
    /// The step's loss.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Prompt + completion tokens run per second of the step.
    #[serde(rename = "tokens_per_s")]
    pub tokens_per_s: f64,
    /// Tokens run in the step.
    pub tokens: usize,
    /// Wall seconds of the step.
    pub seconds: f64,
    /// Preference metrics (DPO family).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub preference: Option<PreferenceMetrics>,
    /// TOPR metrics.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub topr: Option<ToprMetrics>,
    /// SFT metrics.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub sft: Option<SftMetrics>,
}

/// Sums and means over the step's SFT examples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SftMetrics {
    /// Masked Thought's ratio at this step (0 when off).
    #[serde(rename = "sft/mask_ratio")]
    pub mask_ratio: f64,
    /// Completion tokens replaced by the mask token in the input.
    #[serde(rename = "sft/masked_tokens")]
    pub masked_tokens: usize,
    /// Completion tokens trained on (TRL's `num_tokens` counts prompt tokens too; this does not).
    #[serde(rename = "sft/completion_tokens")]
    pub completion_tokens: usize,
    /// Summed completion log-prob (internal; the mean is `nll_per_token`).
    #[serde(skip)]
    pub logps: f64,
    /// Mean negative log-likelihood per completion token (unweighted).
    #[serde(rename = "sft/nll")]
    pub nll_per_token: f64,
}

/// Means over the step's pairs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PreferenceMetrics {
    /// β × chosen log-ratio (reference-free losses: β × average log-prob).
    #[serde(rename = "rewards/chosen")]
    pub chosen: f64,
    /// Same for rejected.
    #[serde(rename = "rewards/rejected")]
    pub rejected: f64,
    /// chosen − rejected.
    #[serde(rename = "rewards/margins")]
    pub margins: f64,
    /// Fraction of pairs with chosen reward above rejected.
    #[serde(rename = "rewards/accuracies")]
    pub accuracy: f64,
    /// Policy log-prob sum of the chosen completions.
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: f64,
    /// Same for rejected.
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: f64,
}

/// Means over the step's trajectories.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToprMetrics {
    /// Reward.
    #[serde(rename = "topr/reward")]
    pub reward: f64,
    /// Truncated importance weight.
    #[serde(rename = "topr/weight")]
    pub weight: f64,
    /// Untruncated ratio π/μ.
    #[serde(rename = "topr/ratio")]
    pub ratio: f64,
    /// Fraction of trajectories with non-negative advantage.
    #[serde(rename = "topr/positive_fraction")]
    pub positive: f64,
    /// Policy log-prob sum.
    #[serde(rename = "logps/policy")]
    pub logps: f64,
}

/// Appends rows to `metrics.jsonl`. On resume it first drops rows past the checkpoint's step.
#[derive(Debug)]
pub struct MetricsLog {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl MetricsLog {
    /// Opens `path` for appending, keeping only rows with `step <= keep_through`.
    pub fn open(path: &Path, keep_through: usize) -> Result<Self> {
        let kept: Vec<String> = match std::fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s as usize <= keep_through)
                })
                .map(str::to_string)
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        for l in kept {
            writeln!(file, "{l}").map_err(|e| Error::io(path, e))?;
        }
        Ok(MetricsLog { file, path: path.to_path_buf() })
    }

    /// Appends one row.
    pub fn push(&mut self, m: &UpdateMetrics) -> Result<()> {
        let line = serde_json::to_string(m)?;
        writeln!(self.file, "{line}").map_err(|e| Error::io(&self.path, e))
    }
}

/// Reads `metrics.jsonl`.
pub fn read(path: &Path) -> Result<Vec<UpdateMetrics>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| Ok(serde_json::from_str(l)?)).collect()
}

/// Draws the curves of `rows` (loss, reward accuracy or TOPR weight, margins or reward, gradient norm) as an SVG.
pub fn plot(rows: &[UpdateMetrics], path: &Path) -> Result<()> {
    type Series = (&'static str, fn(&UpdateMetrics) -> Option<f64>);
    let panels: [Series; 4] = [
        ("loss", |m| Some(m.loss)),
        ("rewards/accuracies | topr/weight", |m| {
            m.preference.as_ref().map(|p| p.accuracy).or(m.topr.as_ref().map(|t| t.weight))
        }),
        ("rewards/margins | topr/reward", |m| {
            m.preference.as_ref().map(|p| p.margins).or(m.topr.as_ref().map(|t| t.reward))
        }),
        ("grad_norm", |m| Some(m.grad_norm)),
    ];
    let curves: Vec<Curve> = panels
        .iter()
        .map(|(name, get)| (*name, rows.iter().filter_map(|m| get(m).map(|v| (m.step as f64, v))).collect()))
        .collect();
    plot_curves(&curves, (2, 2), path)
}

/// A named curve of (step, value) points.
pub type Curve = (&'static str, Vec<(f64, f64)>);

/// Draws one panel per curve, `grid` = (rows, columns), against the step, as an SVG (non-finite points skipped).
pub fn plot_curves(curves: &[Curve], grid: (usize, usize), path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: String| Error::io(path, std::io::Error::other(e));
    let root = SVGBackend::new(path, (500 * grid.1 as u32, 350 * grid.0 as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let areas = root.split_evenly(grid);
    let last = curves.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)).fold(1.0, f64::max);
    for (area, (name, pts)) in areas.iter().zip(curves) {
        let pts: Vec<(f64, f64)> = pts.iter().copied().filter(|p| p.1.is_finite()).collect();
        let (lo, hi) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let (lo, hi) = if lo.is_finite() { (lo, if hi > lo { hi } else { lo + 1.0 }) } else { (0.0, 1.0) };
        let pad = (hi - lo) * 0.05;
        let mut chart = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..last, (lo - pad)..(hi + pad))
            .map_err(|e| err(e.to_string()))?;
        chart.configure_mesh().x_desc("step").draw().map_err(|e| err(e.to_string()))?;
        chart.draw_series(LineSeries::new(pts, &BLUE)).map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}
