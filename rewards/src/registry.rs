//! [`RewardSpec`]: build a reward by name (`--reward gsm8k`) or from TOML (`kind = "weighted"` …).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::code::{ProgramOfThought, UnitTests};
use crate::composite::{Gate, Term, Weighted};
use crate::error::{Error, Result};
use crate::format::{FormatConfig, FormatReward};
use crate::iou::{IouConfig, IouReward};
use crate::math::{MathConfig, MathReward, MultipleChoiceReward};
use crate::sandbox::{Executor, Sandbox, SandboxPolicy};
use crate::sql::{SqlConfig, SqlReward};
use crate::tool_star::{ToolStarConfig, ToolStarReward};
use crate::toolrl::ToolRlReward;
use crate::Reward;

/// Names accepted by [`RewardSpec::from_name`] (and as TOML `kind`; TOML also has the composites `weighted` and
/// `gate`).
pub const KNOWN_REWARDS: [&str; 12] = [
    "gsm8k",
    "svamp",
    "math",
    "mathqa",
    "pot",
    "humaneval",
    "unit-tests",
    "sql",
    "iou",
    "toolrl",
    "tool-star",
    "format",
];

/// A reward description: a name with its settings, or a composite of them. Deserialises from TOML/JSON with a
/// `kind` field, e.g.
///
/// ```toml
/// kind = "weighted"
/// [[terms]]
/// weight = 0.85
/// reward = { kind = "sql", score = "ex" }
/// [[terms]]
/// weight = 0.15
/// reward = { kind = "format" }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub enum RewardSpec {
    /// GSM8K-style numeric answer.
    Gsm8k(MathConfig),
    /// SVAMP (same rules as GSM8K).
    Svamp(MathConfig),
    /// Numeric or normalised-text answer (`text_answers` on by default from the name).
    Math(MathConfig),
    /// MathQA-style multiple choice.
    Mathqa(MathConfig),
    /// Program-of-thought: `solution()` run in the sandbox.
    Pot {
        /// Grading of the returned value.
        #[serde(default)]
        math: MathConfig,
        /// Sandbox limits.
        #[serde(default)]
        policy: SandboxPolicy,
    },
    /// HumanEval-style unit tests (`humaneval` and `unit-tests` are the same reward).
    #[serde(alias = "unit-tests")]
    Humaneval {
        /// Sandbox limits.
        #[serde(default)]
        policy: SandboxPolicy,
    },
    /// Think2SQL execution rewards.
    Sql(SqlConfig),
    /// Visual-RFT IoU + confidence + format.
    Iou(IouConfig),
    /// ToolRL format + correctness.
    Toolrl,
    /// Tool-Star hierarchical.
    ToolStar(ToolStarConfig),
    /// Format regex / tag count.
    Format(FormatConfig),
    /// Weighted sum of terms.
    Weighted {
        /// The terms.
        terms: Vec<TermSpec>,
    },
    /// Hierarchical gate.
    Gate {
        /// The gating reward.
        gate: Box<RewardSpec>,
        /// Gate score needed to pass. Default 1.
        #[serde(default = "one")]
        threshold: f64,
        /// Score when the gate fails. Default −1.
        #[serde(default = "minus_one")]
        otherwise: f64,
        /// The reward scored when the gate passes.
        then: Box<RewardSpec>,
    },
}

/// One term of a weighted composite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TermSpec {
    /// Component prefix; default: the reward's kind.
    #[serde(default)]
    pub name: Option<String>,
    /// Weight. Must be finite.
    pub weight: f64,
    /// The reward.
    pub reward: RewardSpec,
}

fn one() -> f64 {
    1.0
}

fn minus_one() -> f64 {
    -1.0
}

impl RewardSpec {
    /// The default spec for a name (`gsm8k`, `svamp`, `math`, `mathqa`, `pot`, `humaneval`, `unit-tests`, `sql`,
    /// `iou`, `toolrl`, `tool-star`, `format`).
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "gsm8k" => RewardSpec::Gsm8k(MathConfig::default()),
            "svamp" => RewardSpec::Svamp(MathConfig::default()),
            "math" => RewardSpec::Math(MathConfig { text_answers: true, ..Default::default() }),
            "mathqa" => RewardSpec::Mathqa(MathConfig::default()),
            "pot" => RewardSpec::Pot { math: MathConfig::default(), policy: SandboxPolicy::default() },
            "humaneval" | "unit-tests" => RewardSpec::Humaneval { policy: SandboxPolicy::default() },
            "sql" => RewardSpec::Sql(SqlConfig::default()),
            "iou" => RewardSpec::Iou(IouConfig::default()),
            "toolrl" => RewardSpec::Toolrl,
            "tool-star" => RewardSpec::ToolStar(ToolStarConfig::default()),
            "format" => RewardSpec::Format(FormatConfig::default()),
            _ => {
                return Err(Error::UnknownReward {
                    name: name.to_string(),
                    known: format!("{}; composites `weighted` and `gate` come from TOML", KNOWN_REWARDS.join(", ")),
                })
            }
        })
    }

    /// Parse a TOML description.
    pub fn from_toml(text: &str) -> Result<Self> {
        Ok(toml::from_str(text)?)
    }

    /// The kind name (`gsm8k`, `weighted` …).
    pub fn kind(&self) -> &'static str {
        match self {
            RewardSpec::Gsm8k(_) => "gsm8k",
            RewardSpec::Svamp(_) => "svamp",
            RewardSpec::Math(_) => "math",
            RewardSpec::Mathqa(_) => "mathqa",
            RewardSpec::Pot { .. } => "pot",
            RewardSpec::Humaneval { .. } => "humaneval",
            RewardSpec::Sql(_) => "sql",
            RewardSpec::Iou(_) => "iou",
            RewardSpec::Toolrl => "toolrl",
            RewardSpec::ToolStar(_) => "tool-star",
            RewardSpec::Format(_) => "format",
            RewardSpec::Weighted { .. } => "weighted",
            RewardSpec::Gate { .. } => "gate",
        }
    }

    /// Whether building this reward needs a sandbox (so callers open one only when needed).
    pub fn needs_sandbox(&self) -> bool {
        match self {
            RewardSpec::Pot { .. } | RewardSpec::Humaneval { .. } => true,
            RewardSpec::Weighted { terms } => terms.iter().any(|t| t.reward.needs_sandbox()),
            RewardSpec::Gate { gate, then, .. } => gate.needs_sandbox() || then.needs_sandbox(),
            _ => false,
        }
    }

    /// The sandbox policies of the sandboxed rewards inside, in order (for `--timeout`-style overrides).
    pub fn policies_mut(&mut self) -> Vec<&mut SandboxPolicy> {
        match self {
            RewardSpec::Pot { policy, .. } | RewardSpec::Humaneval { policy } => vec![policy],
            RewardSpec::Weighted { terms } => terms.iter_mut().flat_map(|t| t.reward.policies_mut()).collect(),
            RewardSpec::Gate { gate, then, .. } => {
                let mut v = gate.policies_mut();
                v.extend(then.policies_mut());
                v
            }
            _ => Vec::new(),
        }
    }

    /// Build a reward that needs no sandbox; a sandboxed one is an error.
    pub fn build_pure(&self) -> Result<Box<dyn Reward>> {
        self.build(None)
    }

    /// Build the reward. `sandbox` is required when [`needs_sandbox`](Self::needs_sandbox); each sandboxed reward
    /// gets its own [`Executor`] (cache) with its policy.
    pub fn build(&self, sandbox: Option<&Arc<dyn Sandbox>>) -> Result<Box<dyn Reward>> {
        let executor = |policy: &SandboxPolicy| -> Result<Arc<Executor>> {
            let sb = sandbox.ok_or_else(|| {
                Error::InvalidConfig(format!("reward `{}` executes code and needs a sandbox", self.kind()))
            })?;
            Ok(Arc::new(Executor::new(Arc::clone(sb), policy.clone())))
        };
        Ok(match self {
            RewardSpec::Gsm8k(c) | RewardSpec::Svamp(c) | RewardSpec::Math(c) => {
                validate_math(c)?;
                Box::new(MathReward::new(c.clone()))
            }
            RewardSpec::Mathqa(c) => {
                validate_math(c)?;
                Box::new(MultipleChoiceReward::new(c.clone()))
            }
            RewardSpec::Pot { math, policy } => {
                validate_math(math)?;
                Box::new(ProgramOfThought::new(executor(policy)?, MathReward::new(math.clone())))
            }
            RewardSpec::Humaneval { policy } => Box::new(UnitTests::new(executor(policy)?)),
            RewardSpec::Sql(c) => Box::new(SqlReward::new(c.clone())),
            RewardSpec::Iou(c) => Box::new(IouReward::new(c.clone())?),
            RewardSpec::Toolrl => Box::new(ToolRlReward),
            RewardSpec::ToolStar(c) => Box::new(ToolStarReward::new(c.clone())),
            RewardSpec::Format(c) => Box::new(FormatReward::new(c)?),
            RewardSpec::Weighted { terms } => {
                if terms.is_empty() {
                    return Err(Error::InvalidConfig("a weighted reward needs at least one term".into()));
                }
                let built = terms
                    .iter()
                    .map(|t| {
                        if !t.weight.is_finite() {
                            return Err(Error::InvalidConfig(format!("weight {} is not finite", t.weight)));
                        }
                        let name = t.name.clone().unwrap_or_else(|| t.reward.kind().to_string());
                        Ok(Term { name, weight: t.weight, reward: t.reward.build(sandbox)? })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Box::new(Weighted::new(built))
            }
            RewardSpec::Gate { gate, threshold, otherwise, then } => {
                Box::new(Gate::new(gate.build(sandbox)?, *threshold, *otherwise, then.build(sandbox)?))
            }
        })
    }
}

fn validate_math(c: &MathConfig) -> Result<()> {
    if !(c.tolerance.is_finite() && c.tolerance >= 0.0) {
        return Err(Error::InvalidConfig(format!("tolerance {} must be a finite number ≥ 0", c.tolerance)));
    }
    if !c.partial_credit.is_finite() {
        return Err(Error::InvalidConfig("partial_credit must be finite".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Task;

    #[test]
    fn every_name_builds() -> anyhow::Result<()> {
        for name in KNOWN_REWARDS {
            let spec = RewardSpec::from_name(name)?;
            if spec.needs_sandbox() {
                assert!(spec.build_pure().is_err(), "{name} must ask for a sandbox");
                spec.build(Some(&(Arc::new(crate::sandbox::NullSandbox) as Arc<dyn Sandbox>)))?;
            } else {
                spec.build_pure()?;
            }
        }
        assert!(matches!(RewardSpec::from_name("nope"), Err(Error::UnknownReward { .. })));
        Ok(())
    }

    #[test]
    fn think2sql_composite_from_toml() -> anyhow::Result<()> {
        let spec = RewardSpec::from_toml(
            r#"
            kind = "weighted"
            [[terms]]
            weight = 0.85
            reward = { kind = "gsm8k", tolerance = 0.5 }
            [[terms]]
            name = "fmt"
            weight = 0.15
            reward = { kind = "format", pattern = '<answer>.*</answer>' }
            "#,
        )?;
        let r = spec.build_pure()?;
        let o = r.score(&Task::default().with_answer("10"), "<answer>10.4</answer>");
        assert!((o.score - 1.0).abs() < 1e-12, "{o:?}");
        assert_eq!(o.components["fmt"], 1.0);
        assert_eq!(o.components["gsm8k/correct"], 1.0);
        Ok(())
    }

    #[test]
    fn gate_and_policy_from_toml() -> anyhow::Result<()> {
        let mut spec = RewardSpec::from_toml(
            r#"
            kind = "gate"
            gate = { kind = "format", tags = ["answer"] }
            then = { kind = "pot", policy = { timeout = "2s", memory = "256MiB" } }
            "#,
        )?;
        assert!(spec.needs_sandbox());
        let policies = spec.policies_mut();
        assert_eq!(policies.len(), 1);
        assert_eq!(policies[0].timeout, std::time::Duration::from_secs(2));
        assert!(RewardSpec::from_toml("kind = \"gsm8k\"\ntolerances = 1").is_err(), "unknown fields are rejected");
        Ok(())
    }
}
