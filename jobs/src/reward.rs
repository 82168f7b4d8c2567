//! A job's reward with what it holds: built from a name (`gsm8k`, `humaneval`, `python:FILE:FUNCTION`, …) or a TOML
//! description, with its sandbox when it runs code and a loader for judge models. The binary (after applying its
//! sandbox flags to the description) and the Python package build rewards through it.

use std::path::Path;
use std::sync::Arc;

use orchard_rewards::judge::JudgeLoader;
use orchard_rewards::sandbox::Sandbox;
use orchard_rewards::{Explanation, Resources, Reward, RewardSpec, Task};

use crate::error::{Error, Result};

/// A reward built for a job, and the sandbox and judge loader it uses.
pub struct JobReward {
    reward: Box<dyn Reward>,
    spec: RewardSpec,
    loader: Box<JudgeLoader>,
    /// Kept alive for the reward's lifetime.
    sandbox: Option<Arc<dyn Sandbox>>,
}

impl JobReward {
    /// The description of the reward named `name`, or in the TOML file `config` (which wins; errors name it).
    pub fn spec(name: Option<&str>, config: Option<&Path>) -> Result<RewardSpec> {
        match (name, config) {
            (_, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::Config(format!("{}: cannot read: {e}", path.display())))?;
                RewardSpec::from_toml(&text).map_err(|e| Error::Config(format!("in {}: {e}", path.display())))
            }
            (Some(name), None) => Ok(RewardSpec::from_name(name)?),
            (None, None) => Err(Error::Config("no reward: give --reward NAME or --reward-config FILE.toml".into())),
        }
    }

    /// Builds `spec` with `sandbox` (the caller opens it when [`RewardSpec::needs_sandbox`]); a judge whose
    /// configuration names no model loads `judge_model`.
    pub fn new(spec: RewardSpec, sandbox: Option<Arc<dyn Sandbox>>, judge_model: String) -> Result<Self> {
        let loader = crate::judge::loader(judge_model);
        let reward = spec.build_with(&Resources { sandbox: sandbox.as_ref(), judge: Some(loader.as_ref()) })?;
        Ok(JobReward { reward, spec, loader, sandbox })
    }

    /// Scores one row with the reward and each of its terms (`orchard reward --explain`).
    pub fn explain(&self, task: &Task, completion: &str) -> Result<Explanation> {
        let res = Resources { sandbox: self.sandbox.as_ref(), judge: Some(self.loader.as_ref()) };
        Ok(self.spec.explain(&res, task, completion)?)
    }

    /// The reward itself.
    pub fn reward(&self) -> &dyn Reward {
        self.reward.as_ref()
    }
}
