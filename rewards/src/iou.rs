//! Visual-RFT's detection reward (arXiv 2503.01785; `docs/ALGORITHMS.md`, Rewards): `R = R_IoU + R_conf + R_format`, each in [0, 1].
//!
//! * Predictions are read from `<answer>…</answer>` (or the whole completion): a JSON list of objects with a box
//!   (`Position` / `bbox` / `bbox_2d` / `box`: `[x1, y1, x2, y2]`) and a confidence (`Confidence` / `score`,
//!   default 1), or, if that is not JSON, every `[x1, y1, x2, y2]` in the text paired in order with every
//!   `Confidence: c`.
//! * Duplicate boxes are dropped; predictions are sorted by confidence (highest first); each is greedily matched
//!   to the unmatched ground-truth box of highest IoU; a match counts its IoU only if IoU > 0.5, else 0.
//!   `R_IoU = Σ IoU / max(|GT|, |pred|)`, capped at 1 (both empty → 1).
//! * `R_conf`: per prediction, `c` if it counted a match, else `1 − c`; the mean, clipped to [0, 1] (no
//!   predictions → 0).
//! * `R_format`: 1 iff the completion fully matches `<think>.*?</think>\s*<answer>.*?</answer>`.
//!
//! IoU uses continuous coordinates (no +1 pixel convention).

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::format::{full_match, DEFAULT_PATTERN};
use crate::outcome::component::FORMAT;
use crate::{Outcome, Result, Reward, Task};

/// Visual-RFT's match threshold.
pub const DEFAULT_IOU_THRESHOLD: f64 = 0.5;

/// Component names.
pub mod component {
    /// `R_IoU`.
    pub const IOU: &str = "iou";
    /// `R_conf`.
    pub const CONFIDENCE: &str = "confidence";
}

/// Settings of [`IouReward`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IouConfig {
    /// A matched prediction counts its IoU only above this. Default [`DEFAULT_IOU_THRESHOLD`] (0.5).
    pub iou_threshold: f64,
}

impl Default for IouConfig {
    fn default() -> Self {
        IouConfig { iou_threshold: DEFAULT_IOU_THRESHOLD }
    }
}

/// A predicted box with its confidence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f64; 4],
    /// Confidence in [0, 1].
    pub confidence: f64,
}

/// IoU + confidence + format detection reward.
#[derive(Debug, Clone)]
pub struct IouReward {
    config: IouConfig,
    format: Regex,
    bbox: Regex,
    confidence: Regex,
}

impl IouReward {
    /// Build (compiles the patterns once).
    pub fn new(config: IouConfig) -> Result<Self> {
        let num = r"(-?\d+(?:\.\d+)?)";
        let bbox = Regex::new(&format!(r"\[\s*{num}\s*,\s*{num}\s*,\s*{num}\s*,\s*{num}\s*\]"))
            .map_err(|e| crate::Error::InvalidConfig(e.to_string()))?;
        let confidence = Regex::new(r#"(?i)(?:confidence|score)['"]?\s*:\s*(\d*\.?\d+)"#)
            .map_err(|e| crate::Error::InvalidConfig(e.to_string()))?;
        Ok(IouReward { config, format: full_match(DEFAULT_PATTERN)?, bbox, confidence })
    }

    /// Parse the detections in a completion.
    pub fn detections(&self, completion: &str) -> Vec<Detection> {
        let answer = answer_block(completion).unwrap_or(completion).trim();
        if let Ok(serde_json::Value::Array(items)) = serde_json::from_str::<serde_json::Value>(answer) {
            let parsed: Vec<Detection> = items.iter().filter_map(detection_from_json).collect();
            if !parsed.is_empty() {
                return parsed;
            }
        }
        let confs: Vec<f64> = self.confidence.captures_iter(answer).filter_map(|c| c[1].parse().ok()).collect();
        self.bbox
            .captures_iter(answer)
            .enumerate()
            .filter_map(|(i, c)| {
                let v: Vec<f64> = (1..=4).filter_map(|k| c[k].parse().ok()).collect();
                let bbox: [f64; 4] = v.try_into().ok()?;
                Some(Detection { bbox, confidence: confs.get(i).copied().unwrap_or(1.0) })
            })
            .collect()
    }
}

fn answer_block(text: &str) -> Option<&str> {
    let start = text.find("<answer>")? + "<answer>".len();
    let end = text[start..].find("</answer>").map_or(text.len(), |e| start + e);
    Some(&text[start..end])
}

fn detection_from_json(v: &serde_json::Value) -> Option<Detection> {
    let obj = v.as_object()?;
    let get =
        |names: &[&str]| obj.iter().find(|(k, _)| names.iter().any(|n| k.eq_ignore_ascii_case(n))).map(|(_, v)| v);
    let coords = get(&["position", "bbox", "bbox_2d", "box"])?.as_array()?;
    let v: Vec<f64> = coords.iter().filter_map(serde_json::Value::as_f64).collect();
    let bbox: [f64; 4] = v.try_into().ok()?;
    let confidence = get(&["confidence", "score"]).and_then(serde_json::Value::as_f64).unwrap_or(1.0);
    Some(Detection { bbox, confidence })
}

/// Intersection over union of two `[x1, y1, x2, y2]` boxes (0 when the union is empty).
pub fn iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &[f64; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// (R_IoU, R_conf) for predictions against ground truth.
pub fn iou_and_confidence(gt: &[[f64; 4]], preds: &[Detection], threshold: f64) -> (f64, f64) {
    let mut preds: Vec<Detection> = preds.iter().fold(Vec::new(), |mut acc, d| {
        if !acc.iter().any(|e: &Detection| e.bbox == d.bbox) {
            acc.push(*d);
        }
        acc
    });
    preds.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    let mut used = vec![false; gt.len()];
    let mut sum = 0.0;
    let mut conf = 0.0;
    for p in &preds {
        let best = gt
            .iter()
            .enumerate()
            .filter(|(i, _)| !used[*i])
            .map(|(i, g)| (i, iou(g, &p.bbox)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let counted = match best {
            Some((i, v)) if v > threshold => {
                used[i] = true;
                v
            }
            _ => 0.0,
        };
        sum += counted;
        let c = p.confidence.clamp(0.0, 1.0);
        conf += if counted > 0.0 { c } else { 1.0 - c };
    }
    let denom = gt.len().max(preds.len());
    let r_iou = if denom == 0 { 1.0 } else { (sum / denom as f64).min(1.0) };
    let r_conf = if preds.is_empty() { 0.0 } else { (conf / preds.len() as f64).clamp(0.0, 1.0) };
    (r_iou, r_conf)
}

impl Reward for IouReward {
    fn score(&self, task: &Task, completion: &str) -> Outcome {
        let Some(gt) = task.boxes.as_deref() else {
            return Outcome::task_error("task has no ground-truth `boxes`");
        };
        let preds = self.detections(completion);
        let (r_iou, r_conf) = iou_and_confidence(gt, &preds, self.config.iou_threshold);
        let r_format = f64::from(u8::from(self.format.is_match(completion)));
        let extracted = serde_json::to_string(&preds.iter().map(|d| (d.bbox, d.confidence)).collect::<Vec<_>>())
            .unwrap_or_default();
        let mut o = Outcome::new(r_iou + r_conf + r_format)
            .with_component(component::IOU, r_iou)
            .with_component(component::CONFIDENCE, r_conf)
            .with_component(FORMAT, r_format)
            .with_extracted(extracted);
        if preds.is_empty() {
            o = o.with_failure("no boxes found in the completion");
        } else if r_iou < 1.0 {
            o = o.with_failure(format!(
                "{} predicted vs {} ground-truth boxes, R_IoU {r_iou:.3}",
                preds.len(),
                gt.len()
            ));
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_known_boxes() {
        assert_eq!(iou(&[0.0, 0.0, 2.0, 2.0], &[1.0, 1.0, 3.0, 3.0]), 1.0 / 7.0);
        assert_eq!(iou(&[0.0, 0.0, 1.0, 1.0], &[0.0, 0.0, 1.0, 1.0]), 1.0);
        assert_eq!(iou(&[0.0, 0.0, 1.0, 1.0], &[2.0, 2.0, 3.0, 3.0]), 0.0);
    }

    #[test]
    fn visual_rft_reward_on_a_two_box_scene() -> anyhow::Result<()> {
        let r = IouReward::new(IouConfig::default())?;
        let task = Task::default().with_boxes(vec![[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]);
        let perfect = "<think>two cats</think><answer>[{\"Position\": [0, 0, 10, 10], \"Confidence\": 0.9}, \
                       {\"Position\": [20, 20, 30, 30], \"Confidence\": 0.8}]</answer>";
        let o = r.score(&task, perfect);
        assert_eq!(o.components[component::IOU], 1.0);
        assert!((o.components[component::CONFIDENCE] - 0.85).abs() < 1e-12);
        assert_eq!(o.components[FORMAT], 1.0);
        assert!((o.score - 2.85).abs() < 1e-12);
        // One good box, one miss with low confidence, non-JSON form, no think block.
        let partial = "<answer>[0, 0, 10, 10] Confidence: 1.0, [50, 50, 60, 60] Confidence: 0.2</answer>";
        let o = r.score(&task, partial);
        assert_eq!(o.components[component::IOU], 0.5);
        assert!((o.components[component::CONFIDENCE] - 0.9).abs() < 1e-12);
        assert_eq!(o.components[FORMAT], 0.0);
        Ok(())
    }

    #[test]
    fn low_overlap_counts_nothing_and_duplicates_are_dropped() {
        let gt = [[0.0, 0.0, 10.0, 10.0]];
        let d = Detection { bbox: [5.0, 0.0, 15.0, 10.0], confidence: 0.5 };
        assert_eq!(iou_and_confidence(&gt, &[d], 0.5).0, 0.0);
        let same = Detection { bbox: [0.0, 0.0, 10.0, 10.0], confidence: 1.0 };
        assert_eq!(iou_and_confidence(&gt, &[same, same], 0.5), (1.0, 1.0));
        assert_eq!(iou_and_confidence(&[], &[], 0.5), (1.0, 0.0));
    }
}
