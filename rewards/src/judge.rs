//! A judge reward: a generative verifier. A model (the job's own, or `model = …` / `--judge-model`) is asked a
//! templated question about each completion and a score is read from its answer — Agent Q's self-critique as a
//! reward usable anywhere a reward is (sample, search, eval, the loop, online RL).
//!
//! The question is a [minijinja](https://docs.rs/minijinja) template over the row: `prompt`, `completion`,
//! `answer` (the first reference answer, or empty), and every other task field and column by name. Two ways to read
//! the score:
//!
//! * `parse = { kind = "choices", choices = { Yes = 1.0, No = 0.0 } }` (the default): no text is generated; the
//!   model's log-probability of each choice as the start of its reply is read, the choices are renormalised
//!   (softmax over their log-probs) and the score is the expected value `Σ p(choice) · value`. Components:
//!   `p(<choice>)` for each choice; `extracted` is the most likely choice.
//! * `parse = { kind = "regex", pattern = '…', scale = 10 }`: the model replies greedily (`max_new_tokens`), the
//!   first capture group of `pattern` is read as a number and divided by `scale`. A reply without a match is not
//!   scored (a task error naming the reply), never a silent 0.
//!
//! The model is behind [`JudgeModel`], so this crate needs no engine: the jobs crate implements it on the engine,
//! batched through its scheduler, and tests use a scripted double.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::{Outcome, Reward, Task};

/// Default question (the choices default reads Yes/No after it).
pub const DEFAULT_TEMPLATE: &str = "Question: {{ prompt }}\n\nProposed answer: {{ completion }}\n\n\
Is the proposed answer correct? Reply with Yes or No.";
/// Default pattern of the regex parser: a number after "score" (`Score: 7`, `score = 0.5`).
pub const DEFAULT_PATTERN: &str = r"(?i)score\s*[:=]?\s*(-?\d+(?:\.\d+)?)";
/// Default most tokens of a judge's reply (regex parser).
pub const DEFAULT_MAX_NEW_TOKENS: usize = 48;

/// What a judge needs of a model. Both calls take the rendered user turns of one batch and return one result per
/// prompt, in order; an `Err` fails the whole batch (each row then gets the message).
pub trait JudgeModel: Send + Sync {
    /// Greedy replies (chat template applied, `system` first when given), at most `max_new_tokens` each.
    fn reply(
        &self,
        prompts: &[String],
        system: Option<&str>,
        max_new_tokens: usize,
    ) -> std::result::Result<Vec<String>, String>;

    /// For each prompt, the log-probability of each of `choices` as the start of the reply.
    fn choice_logprobs(
        &self,
        prompts: &[String],
        system: Option<&str>,
        choices: &[String],
    ) -> std::result::Result<Vec<Vec<f64>>, String>;

    /// The model's name, for logs and `--explain`.
    fn name(&self) -> String;
}

/// How the score is read from the judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum JudgeParse {
    /// Expected value over the choices' renormalised probabilities.
    Choices {
        /// Reply text → value. Default `{ Yes = 1.0, No = 0.0 }`.
        #[serde(default = "default_choices")]
        choices: BTreeMap<String, f64>,
    },
    /// A number captured from a greedy reply.
    Regex {
        /// The pattern; its first capture group is the number. Default [`DEFAULT_PATTERN`].
        #[serde(default = "default_pattern")]
        pattern: String,
        /// The number is divided by this. Default 1.
        #[serde(default = "one")]
        scale: f64,
    },
}

impl Default for JudgeParse {
    fn default() -> Self {
        JudgeParse::Choices { choices: default_choices() }
    }
}

fn default_choices() -> BTreeMap<String, f64> {
    BTreeMap::from([("Yes".to_string(), 1.0), ("No".to_string(), 0.0)])
}

fn default_pattern() -> String {
    DEFAULT_PATTERN.to_string()
}

fn one() -> f64 {
    1.0
}

fn default_template() -> String {
    DEFAULT_TEMPLATE.to_string()
}

fn default_max_new_tokens() -> usize {
    DEFAULT_MAX_NEW_TOKENS
}

/// Settings of a judge reward. TOML: `{ kind = "judge", template = "…", parse = { kind = "choices" } }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeConfig {
    /// The question (minijinja). Default [`DEFAULT_TEMPLATE`].
    #[serde(default = "default_template")]
    pub template: String,
    /// A system prompt for the judge. Default none.
    #[serde(default)]
    pub system: Option<String>,
    /// The judge model (`default` or a path); default: the job's model, else `--judge-model`, else the default
    /// model.
    #[serde(default)]
    pub model: Option<String>,
    /// How the score is read. Default: choices Yes = 1, No = 0.
    #[serde(default)]
    pub parse: JudgeParse,
    /// Most tokens of a reply (regex parser). Default [`DEFAULT_MAX_NEW_TOKENS`].
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig {
            template: default_template(),
            system: None,
            model: None,
            parse: JudgeParse::default(),
            max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
        }
    }
}

/// Loads the model a judge config names (the binary and the jobs crate provide one).
pub type JudgeLoader = dyn Fn(&JudgeConfig) -> Result<Arc<dyn JudgeModel>> + Send + Sync;

/// The judge reward.
pub struct JudgeReward {
    config: JudgeConfig,
    env: minijinja::Environment<'static>,
    model: Arc<dyn JudgeModel>,
    regex: Option<regex::Regex>,
    choices: Vec<(String, f64)>,
}

impl std::fmt::Debug for JudgeReward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JudgeReward").field("config", &self.config).field("model", &self.model.name()).finish()
    }
}

const TEMPLATE_NAME: &str = "judge";

impl JudgeReward {
    /// Check the template and the parser once, here.
    pub fn new(config: JudgeConfig, model: Arc<dyn JudgeModel>) -> Result<Self> {
        let bad = |why: String| Error::InvalidConfig(format!("judge: {why}"));
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_template_owned(TEMPLATE_NAME, config.template.clone()).map_err(|e| bad(format!("template: {e}")))?;
        let (regex, choices) = match &config.parse {
            JudgeParse::Choices { choices } => {
                if choices.len() < 2 || choices.values().any(|v| !v.is_finite()) || choices.keys().any(String::is_empty)
                {
                    return Err(bad("`choices` needs at least two non-empty replies with finite values".into()));
                }
                (None, choices.iter().map(|(k, v)| (k.clone(), *v)).collect())
            }
            JudgeParse::Regex { pattern, scale } => {
                let re = regex::Regex::new(pattern).map_err(|e| bad(format!("pattern: {e}")))?;
                if re.captures_len() < 2 {
                    return Err(bad(format!("pattern `{pattern}` has no capture group for the number")));
                }
                if !(scale.is_finite() && *scale != 0.0) {
                    return Err(bad(format!("scale {scale} must be a finite non-zero number")));
                }
                (Some(re), Vec::new())
            }
        };
        if config.max_new_tokens == 0 {
            return Err(bad("max_new_tokens must be at least 1".into()));
        }
        Ok(JudgeReward { config, env, model, regex, choices })
    }

    /// The question for one row.
    pub fn question(&self, task: &Task, completion: &str) -> std::result::Result<String, String> {
        let mut ctx = serde_json::to_value(task).map_err(|e| e.to_string())?;
        if let Some(obj) = ctx.as_object_mut() {
            obj.insert("completion".into(), completion.into());
            obj.insert("answer".into(), task.answer().unwrap_or_default().into());
            obj.entry("prompt").or_insert_with(|| "".into());
        }
        let tmpl = self.env.get_template(TEMPLATE_NAME).map_err(|e| e.to_string())?;
        tmpl.render(ctx).map_err(|e| format!("judge template: {e}"))
    }

    fn outcome_of_choices(&self, logprobs: &[f64]) -> Outcome {
        if logprobs.len() != self.choices.len() || logprobs.iter().any(|l| !l.is_finite()) {
            return Outcome::task_error(format!("judge: no finite log-probs for the choices ({logprobs:?})"));
        }
        let max = logprobs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = logprobs.iter().map(|l| (l - max).exp()).sum();
        let mut o = Outcome::new(0.0);
        let mut best = (f64::NEG_INFINITY, "");
        for ((name, value), l) in self.choices.iter().zip(logprobs) {
            let p = (l - max).exp() / z;
            o.score += p * value;
            o.components.insert(format!("p({name})"), p);
            if *l > best.0 {
                best = (*l, name);
            }
        }
        o.with_extracted(best.1)
    }

    fn outcome_of_reply(&self, reply: &str) -> Outcome {
        let (Some(re), JudgeParse::Regex { scale, .. }) = (&self.regex, &self.config.parse) else {
            return Outcome::task_error("judge: no pattern");
        };
        let number = re.captures(reply).and_then(|c| c.get(1)).map(|m| m.as_str().to_string());
        match number.as_deref().map(str::parse::<f64>) {
            Some(Ok(v)) if v.is_finite() => Outcome::new(v / scale).with_extracted(reply.trim()),
            _ => Outcome::task_error(format!("judge reply has no score matching `{}`: {:?}", re.as_str(), clip(reply))),
        }
    }
}

fn clip(text: &str) -> String {
    let t: String = text.chars().take(160).collect();
    if t.len() < text.len() {
        format!("{t}…")
    } else {
        t
    }
}

impl Reward for JudgeReward {
    fn score(&self, task: &Task, completion: &str) -> Outcome {
        self.score_batch(&[(task, completion)]).pop().unwrap_or_default()
    }

    fn score_batch(&self, items: &[(&Task, &str)]) -> Vec<Outcome> {
        let questions: Vec<std::result::Result<String, String>> =
            items.iter().map(|(t, c)| self.question(t, c)).collect();
        let ok: Vec<String> = questions.iter().filter_map(|q| q.as_ref().ok().cloned()).collect();
        let system = self.config.system.as_deref();
        let answers: std::result::Result<Vec<Outcome>, String> = if ok.is_empty() {
            Ok(Vec::new())
        } else if self.regex.is_some() {
            self.model
                .reply(&ok, system, self.config.max_new_tokens)
                .map(|rs| rs.iter().map(|r| self.outcome_of_reply(r)).collect())
        } else {
            let names: Vec<String> = self.choices.iter().map(|(k, _)| k.clone()).collect();
            self.model
                .choice_logprobs(&ok, system, &names)
                .map(|ls| ls.iter().map(|l| self.outcome_of_choices(l)).collect())
        };
        let mut answers = match answers {
            Ok(a) if a.len() == ok.len() => a.into_iter(),
            Ok(a) => {
                return vec![
                    Outcome::task_error(format!("judge answered {} of {} rows", a.len(), ok.len()));
                    items.len()
                ]
            }
            Err(e) => return vec![Outcome::task_error(format!("judge model {}: {e}", self.model.name())); items.len()],
        };
        questions
            .into_iter()
            .map(|q| match q {
                Ok(_) => answers.next().unwrap_or_default(),
                Err(e) => Outcome::task_error(e),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Says "Yes" (log-prob −0.1 vs −2.3) when the completion contains the answer, else the reverse; replies
    /// "Score: 8" or "I cannot say".
    struct Scripted;
    impl JudgeModel for Scripted {
        fn reply(&self, prompts: &[String], _: Option<&str>, _: usize) -> std::result::Result<Vec<String>, String> {
            Ok(prompts
                .iter()
                .map(|p| if p.contains("is 42") { "Score: 8".into() } else { "I cannot say".into() })
                .collect())
        }
        fn choice_logprobs(
            &self,
            prompts: &[String],
            _: Option<&str>,
            choices: &[String],
        ) -> std::result::Result<Vec<Vec<f64>>, String> {
            assert_eq!(choices, ["No", "Yes"], "choices come sorted by name");
            Ok(prompts
                .iter()
                .map(|p| if p.contains("answer: 42") { vec![-2.3, -0.1] } else { vec![-0.1, -2.3] })
                .collect())
        }
        fn name(&self) -> String {
            "scripted".into()
        }
    }

    #[test]
    fn choices_give_the_expected_value_of_the_renormalised_probabilities() -> anyhow::Result<()> {
        let j = JudgeReward::new(JudgeConfig::default(), Arc::new(Scripted))?;
        let t = Task::new("What is 6 * 7?").with_answer("42");
        let out = j.score_batch(&[(&t, "42"), (&t, "41")]);
        let p_yes = 1.0 / (1.0 + (-2.2f64).exp());
        assert!((out[0].score - p_yes).abs() < 1e-12, "{:?}", out[0]);
        assert!((out[1].score - (1.0 - p_yes)).abs() < 1e-12);
        assert_eq!(out[0].extracted.as_deref(), Some("Yes"));
        assert!((out[0].components["p(Yes)"] + out[0].components["p(No)"] - 1.0).abs() < 1e-12);
        Ok(())
    }

    #[test]
    fn regex_reads_the_number_and_a_reply_without_one_is_not_scored() -> anyhow::Result<()> {
        let cfg = JudgeConfig {
            template: "{{ completion }} vs {{ answer }} ({{ level }})".into(),
            parse: JudgeParse::Regex { pattern: DEFAULT_PATTERN.into(), scale: 10.0 },
            ..Default::default()
        };
        let j = JudgeReward::new(cfg, Arc::new(Scripted))?;
        let t = Task::new("q").with_answer("42").with_column("level", serde_json::json!("easy"));
        let out = j.score_batch(&[(&t, "it is 42"), (&t, "7")]);
        assert_eq!(out[0].score, 0.8);
        assert!(out[1].error.as_deref().unwrap_or_default().contains("I cannot say"), "{:?}", out[1]);
        // A column the template needs but the row lacks is that row's error, naming it.
        let bare = Task::new("q");
        let e = j.score(&bare, "x").error.unwrap_or_default();
        assert!(e.contains("judge template") && e.contains("undefined"), "{e}");
        Ok(())
    }

    #[test]
    fn bad_configs_are_refused_at_construction() {
        let bad = |parse: JudgeParse| JudgeReward::new(JudgeConfig { parse, ..Default::default() }, Arc::new(Scripted));
        assert!(bad(JudgeParse::Regex { pattern: "score".into(), scale: 1.0 }).is_err(), "no capture group");
        assert!(bad(JudgeParse::Regex { pattern: "(".into(), scale: 1.0 }).is_err());
        assert!(bad(JudgeParse::Choices { choices: BTreeMap::from([("Yes".into(), 1.0)]) }).is_err());
        let t = JudgeConfig { template: "{{ unclosed".into(), ..Default::default() };
        assert!(JudgeReward::new(t, Arc::new(Scripted)).is_err());
    }
}
