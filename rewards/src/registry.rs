//! [`RewardSpec`]: build a reward by name (`--reward gsm8k`) or from TOML (`kind = "weighted"` …).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::code::{ProgramOfThought, UnitTests};
use crate::composite::{Gate, Term, Weighted};
use crate::error::{Error, Result};
use crate::format::{FormatConfig, FormatReward};
use crate::iou::{IouConfig, IouReward};
use crate::judge::{JudgeConfig, JudgeLoader, JudgeReward};
use crate::math::{MathConfig, MathReward, MultipleChoiceReward};
use crate::pyfunc::{PythonConfig, PythonReward};
use crate::sandbox::{Executor, Sandbox, SandboxLimits};
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
        /// Sandbox limits (TOML key `policy`).
        #[serde(default, rename = "policy")]
        limits: SandboxLimits,
    },
    /// HumanEval-style unit tests (`humaneval` and `unit-tests` are the same reward).
    #[serde(alias = "unit-tests")]
    Humaneval {
        /// Sandbox limits (TOML key `policy`).
        #[serde(default, rename = "policy")]
        limits: SandboxLimits,
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
    /// A judge model asked a templated question (TOML only).
    Judge(JudgeConfig),
    /// A user's Python function (TRL `reward_funcs` or verl `compute_score` signature); `--reward
    /// python:FILE:FUNCTION`.
    Python(PythonConfig),
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
        if name.starts_with("python:") {
            return Ok(RewardSpec::Python(PythonConfig::from_spec(name)?));
        }
        Ok(match name {
            "gsm8k" => RewardSpec::Gsm8k(MathConfig::default()),
            "svamp" => RewardSpec::Svamp(MathConfig::default()),
            "math" => RewardSpec::Math(MathConfig { text_answers: true, ..Default::default() }),
            "mathqa" => RewardSpec::Mathqa(MathConfig::default()),
            "pot" => RewardSpec::Pot { math: MathConfig::default(), limits: SandboxLimits::default() },
            "humaneval" | "unit-tests" => RewardSpec::Humaneval { limits: SandboxLimits::default() },
            "sql" => RewardSpec::Sql(SqlConfig::default()),
            "iou" => RewardSpec::Iou(IouConfig::default()),
            "toolrl" => RewardSpec::Toolrl,
            "tool-star" => RewardSpec::ToolStar(ToolStarConfig::default()),
            "format" => RewardSpec::Format(FormatConfig::default()),
            _ => {
                return Err(Error::UnknownReward {
                    name: name.to_string(),
                    known: format!(
                        "{}, python:FILE:FUNCTION; composites `weighted` and `gate` come from TOML",
                        KNOWN_REWARDS.join(", ")
                    ),
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
            RewardSpec::Python(_) => "python",
            RewardSpec::Judge(_) => "judge",
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

    /// The sandbox limits of the sandboxed rewards inside, in order (for `--timeout`-style overrides).
    pub fn limits_mut(&mut self) -> Vec<&mut SandboxLimits> {
        match self {
            RewardSpec::Pot { limits, .. } | RewardSpec::Humaneval { limits } => vec![limits],
            RewardSpec::Weighted { terms } => terms.iter_mut().flat_map(|t| t.reward.limits_mut()).collect(),
            RewardSpec::Gate { gate, then, .. } => {
                let mut v = gate.limits_mut();
                v.extend(then.limits_mut());
                v
            }
            _ => Vec::new(),
        }
    }

    /// The settings of the Python rewards inside, in order (for `--python` / `--sandbox` overrides).
    pub fn python_mut(&mut self) -> Vec<&mut PythonConfig> {
        match self {
            RewardSpec::Python(c) => vec![c],
            RewardSpec::Weighted { terms } => terms.iter_mut().flat_map(|t| t.reward.python_mut()).collect(),
            RewardSpec::Gate { gate, then, .. } => {
                let mut v = gate.python_mut();
                v.extend(then.python_mut());
                v
            }
            _ => Vec::new(),
        }
    }

    /// Whether building this reward needs a judge model (a [`Resources::judge`] loader).
    pub fn needs_judge(&self) -> bool {
        match self {
            RewardSpec::Judge(_) => true,
            RewardSpec::Weighted { terms } => terms.iter().any(|t| t.reward.needs_judge()),
            RewardSpec::Gate { gate, then, .. } => gate.needs_judge() || then.needs_judge(),
            _ => false,
        }
    }

    /// Build a reward that needs no sandbox; a sandboxed one is an error.
    pub fn build_pure(&self) -> Result<Box<dyn Reward>> {
        self.build(None)
    }

    /// Build the reward. `sandbox` is required when [`needs_sandbox`](Self::needs_sandbox); each sandboxed reward
    /// gets its own [`Executor`] (cache) with its limits.
    pub fn build(&self, sandbox: Option<&Arc<dyn Sandbox>>) -> Result<Box<dyn Reward>> {
        self.build_with(&Resources { sandbox, judge: None })
    }

    /// Build the reward with what it may need: a sandbox for code rewards, a model loader for judges.
    pub fn build_with(&self, res: &Resources<'_>) -> Result<Box<dyn Reward>> {
        let sandbox = res.sandbox;
        let executor = |limits: &SandboxLimits| -> Result<Arc<Executor>> {
            let sb = sandbox.ok_or_else(|| {
                Error::InvalidConfig(format!("reward `{}` executes code and needs a sandbox", self.kind()))
            })?;
            Ok(Arc::new(Executor::new(Arc::clone(sb), limits.clone())))
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
            RewardSpec::Pot { math, limits } => {
                validate_math(math)?;
                Box::new(ProgramOfThought::new(executor(limits)?, MathReward::new(math.clone())))
            }
            RewardSpec::Humaneval { limits } => Box::new(UnitTests::new(executor(limits)?)),
            RewardSpec::Sql(c) => Box::new(SqlReward::new(c.clone())),
            RewardSpec::Iou(c) => Box::new(IouReward::new(c.clone())?),
            RewardSpec::Toolrl => Box::new(ToolRlReward),
            RewardSpec::ToolStar(c) => Box::new(ToolStarReward::new(c.clone())),
            RewardSpec::Format(c) => Box::new(FormatReward::new(c)?),
            RewardSpec::Python(c) => Box::new(PythonReward::new(c.clone())?),
            RewardSpec::Judge(c) => {
                let load = res.judge.ok_or_else(|| {
                    Error::InvalidConfig("reward `judge` needs a model: this command has none to give it".into())
                })?;
                Box::new(JudgeReward::new(c.clone(), load(c)?)?)
            }
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
                        Ok(Term { name, weight: t.weight, reward: t.reward.build_with(res)? })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Box::new(Weighted::new(built))
            }
            RewardSpec::Gate { gate, threshold, otherwise, then } => {
                Box::new(Gate::new(gate.build_with(res)?, *threshold, *otherwise, then.build_with(res)?))
            }
        })
    }
}

/// One reward's score on one row, with the scores of its terms (composites), for `orchard reward --explain`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    /// The term's name (its kind, unless the composite names it; `gate`/`then` for a gate's parts).
    pub name: String,
    /// The reward kind.
    pub kind: &'static str,
    /// The term's weight in a weighted composite.
    pub weight: Option<f64>,
    /// What this reward gave the row.
    pub outcome: crate::Outcome,
    /// The parts of a composite, each explained the same way.
    pub parts: Vec<Explanation>,
}

impl RewardSpec {
    /// Score one row with this reward and, for composites, with each of its terms separately (each built anew).
    pub fn explain(&self, res: &Resources<'_>, task: &crate::Task, completion: &str) -> Result<Explanation> {
        let outcome = crate::score_caught(self.build_with(res)?.as_ref(), task, completion);
        let named = |spec: &RewardSpec, name: String, weight: Option<f64>| -> Result<Explanation> {
            Ok(Explanation { name, weight, ..spec.explain(res, task, completion)? })
        };
        let parts = match self {
            RewardSpec::Weighted { terms } => terms
                .iter()
                .map(|t| named(&t.reward, t.name.clone().unwrap_or_else(|| t.reward.kind().into()), Some(t.weight)))
                .collect::<Result<Vec<_>>>()?,
            RewardSpec::Gate { gate, then, .. } => {
                vec![named(gate, "gate".into(), None)?, named(then, "then".into(), None)?]
            }
            _ => Vec::new(),
        };
        Ok(Explanation { name: self.kind().into(), kind: self.kind(), weight: None, outcome, parts })
    }
}

/// One entry of `orchard reward --list`.
#[derive(Debug, Clone, Serialize)]
pub struct CatalogEntry {
    /// The name (`--reward`, TOML `kind`).
    pub name: &'static str,
    /// What it scores.
    pub summary: &'static str,
    /// The row fields it reads.
    pub reads: &'static str,
    /// Its settings with their defaults, as TOML.
    pub defaults: String,
}

/// Every reward with its settings and defaults.
pub fn catalog() -> Vec<CatalogEntry> {
    const ABOUT: [(&str, &str, &str); 12] = [
        ("gsm8k", "numeric final answer (`####`, \"the answer is\", \\boxed{}, last number); 0.1 partial credit when an answer is extractable but wrong (ReFT)", "answer"),
        ("svamp", "as gsm8k", "answer"),
        ("math", "numeric or normalised-text final answer", "answer"),
        ("mathqa", "multiple-choice letter", "answer, choices"),
        ("pot", "program of thought: runs `solution()` in the sandbox and grades its return value", "answer"),
        ("humaneval", "unit tests: completion + tests + `check(entry_point)` in the sandbox", "prompt, tests, entry_point"),
        ("unit-tests", "the same reward as humaneval", "prompt, tests, entry_point"),
        ("sql", "Think2SQL execution accuracy, cell precision/recall, tuple cardinality on SQLite", "sql, db"),
        ("iou", "Visual-RFT box IoU + confidence + format", "boxes"),
        ("toolrl", "ToolRL tool-call format {0,1} + correctness [-3, 3]", "answer"),
        ("tool-star", "Tool-Star hierarchical: -1 bad format, 0 wrong, F1, F1 + 0.1 with tool use", "answer"),
        ("format", "regex full match or tag count", "-"),
    ];
    let toml_of = |spec: &RewardSpec| toml::to_string(spec).unwrap_or_else(|e| format!("# cannot show: {e}"));
    let mut out: Vec<CatalogEntry> = ABOUT
        .iter()
        .map(|&(name, summary, reads)| CatalogEntry {
            name,
            summary,
            reads,
            defaults: RewardSpec::from_name(name).map(|s| toml_of(&s)).unwrap_or_default(),
        })
        .collect();
    out.push(CatalogEntry {
        name: "python",
        summary: "your Python function with TRL's reward_funcs(prompts, completions, **columns) or verl's \
                  compute_score(data_source, solution_str, ground_truth, extra_info) signature, in sandboxed \
                  worker processes; `--reward python:FILE:FUNCTION`",
        reads: "prompt, every task field and column",
        defaults: toml_of(&RewardSpec::Python(PythonConfig::new("rewards.py", "my_reward"))),
    });
    out.push(CatalogEntry {
        name: "judge",
        summary: "a model asked a templated question about the completion; score from the choices' log-probs or a \
                  number in its reply (Agent Q self-critique); the job's model unless `model` / --judge-model",
        reads: "whatever the template names (prompt, completion, answer, columns)",
        defaults: toml_of(&RewardSpec::Judge(JudgeConfig::default())),
    });
    out.push(CatalogEntry {
        name: "weighted",
        summary: "sum of weighted terms; components prefixed by the term name",
        reads: "what its terms read",
        defaults: "kind = \"weighted\"\n[[terms]]\nweight = 0.85\nreward = { kind = \"sql\" }\n[[terms]]\nweight = 0.15\nreward = { kind = \"format\" }\n".into(),
    });
    out.push(CatalogEntry {
        name: "gate",
        summary: "score `otherwise` unless the gate reaches `threshold`, else the `then` reward",
        reads: "what its parts read",
        defaults: "kind = \"gate\"\nthreshold = 1.0\notherwise = -1.0\ngate = { kind = \"format\", tags = [\"answer\"] }\nthen = { kind = \"gsm8k\" }\n".into(),
    });
    out
}

/// What building a reward may need besides its spec.
#[derive(Default, Clone, Copy)]
pub struct Resources<'a> {
    /// The sandbox for code rewards.
    pub sandbox: Option<&'a Arc<dyn Sandbox>>,
    /// Loads the model of a judge reward.
    pub judge: Option<&'a JudgeLoader>,
}

impl std::fmt::Debug for Resources<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resources").field("sandbox", &self.sandbox).field("judge", &self.judge.is_some()).finish()
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
        let spec = RewardSpec::from_name("python:dir/my rewards.py:len_reward")?;
        let RewardSpec::Python(c) = &spec else { anyhow::bail!("not python: {spec:?}") };
        assert_eq!((c.file.to_str(), c.function.as_str()), (Some("dir/my rewards.py"), "len_reward"));
        assert!(RewardSpec::from_name("python:rewards.py").is_err(), "the function must be named");
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
        let limits = spec.limits_mut();
        assert_eq!(limits.len(), 1);
        assert_eq!(limits[0].timeout, std::time::Duration::from_secs(2));
        assert!(RewardSpec::from_toml("kind = \"gsm8k\"\ntolerances = 1").is_err(), "unknown fields are rejected");
        Ok(())
    }

    #[test]
    fn the_catalog_lists_every_reward_with_defaults_that_parse_back() -> anyhow::Result<()> {
        let entries = catalog();
        for name in KNOWN_REWARDS.iter().chain(&["python", "judge", "weighted", "gate"]) {
            let e = entries.iter().find(|e| e.name == *name).ok_or_else(|| anyhow::anyhow!("{name} not listed"))?;
            let spec =
                RewardSpec::from_toml(&e.defaults).map_err(|err| anyhow::anyhow!("{name}: {err}\n{}", e.defaults))?;
            assert_eq!(spec.kind(), if *name == "unit-tests" { "humaneval" } else { *name });
        }
        Ok(())
    }

    #[test]
    fn explain_scores_each_term() -> anyhow::Result<()> {
        let spec = RewardSpec::from_toml(
            r#"
            kind = "weighted"
            [[terms]]
            weight = 0.85
            reward = { kind = "gsm8k" }
            [[terms]]
            name = "fmt"
            weight = 0.15
            reward = { kind = "format", pattern = '<answer>.*</answer>' }
            "#,
        )?;
        let e = spec.explain(&Resources::default(), &Task::default().with_answer("10"), "The answer is 10.")?;
        assert!((e.outcome.score - 0.85).abs() < 1e-12);
        assert_eq!(e.parts.len(), 2);
        assert_eq!((e.parts[0].name.as_str(), e.parts[0].weight, e.parts[0].outcome.score), ("gsm8k", Some(0.85), 1.0));
        assert_eq!(e.parts[0].outcome.extracted.as_deref(), Some("10"));
        assert_eq!((e.parts[1].name.as_str(), e.parts[1].outcome.score), ("fmt", 0.0));
        assert!(e.parts[1].outcome.failure.is_some(), "the format term says why it failed");
        Ok(())
    }
}
