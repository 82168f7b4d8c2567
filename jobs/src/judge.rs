//! The engine as a judge model ([`orchard_rewards::judge::JudgeModel`]): greedy replies through the engine's
//! batched generation, choice log-probs through its batched teacher-forced scoring.

use std::sync::Arc;

use orchard_engine::engine::DEFAULT_PREFILL_CHUNK;
use orchard_engine::{Engine, GenerateOptions, GenerateRequest, Precision, Prompt, SamplingParams};
use orchard_rewards::judge::JudgeModel;

/// A judge backed by an engine (shared: the job's own model or one loaded for the judge).
#[derive(Debug, Clone)]
pub struct EngineJudge {
    engine: Arc<Engine>,
}

impl EngineJudge {
    /// Judge with `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        EngineJudge { engine }
    }

    fn prompt_ids(&self, prompts: &[String], system: Option<&str>) -> Result<Vec<Vec<u32>>, String> {
        prompts
            .iter()
            .map(|p| self.engine.prompt_tokens(&Prompt::Text(p.clone()), system, false).map_err(|e| e.to_string()))
            .collect()
    }
}

impl JudgeModel for EngineJudge {
    fn reply(&self, prompts: &[String], system: Option<&str>, max_new_tokens: usize) -> Result<Vec<String>, String> {
        let params = SamplingParams { temperature: 0.0, max_new_tokens, ..Default::default() };
        let requests: Vec<GenerateRequest> = self
            .prompt_ids(prompts, system)?
            .into_iter()
            .map(|prompt| GenerateRequest { prompt, n: 1, params: params.clone(), seed: 0 })
            .collect();
        let samples =
            self.engine.generate(&requests, &GenerateOptions::default(), &mut |_| {}).map_err(|e| e.to_string())?;
        Ok(samples.into_iter().map(|mut s| s.pop().map(|s| s.text).unwrap_or_default()).collect())
    }

    fn choice_logprobs(
        &self,
        prompts: &[String],
        system: Option<&str>,
        choices: &[String],
    ) -> Result<Vec<Vec<f64>>, String> {
        let tokenizer = self.engine.tokenizer();
        let choice_ids: Vec<Vec<u32>> =
            choices.iter().map(|c| tokenizer.encode(c, false).map_err(|e| e.to_string())).collect::<Result<_, _>>()?;
        if let Some(i) = choice_ids.iter().position(Vec::is_empty) {
            return Err(format!("choice {:?} encodes to no tokens", choices[i]));
        }
        let prompt_ids = self.prompt_ids(prompts, system)?;
        if choice_ids.iter().all(|c| c.len() == 1) {
            // Single-token replies: one forward per prompt reads every choice's log-prob.
            let candidates: Vec<u32> = choice_ids.iter().map(|c| c[0]).collect();
            let rows = self
                .engine
                .next_token_logprobs(&prompt_ids, &candidates, Precision::Quantized)
                .map_err(|e| e.to_string())?;
            return Ok(rows.into_iter().map(|r| r.into_iter().map(f64::from).collect()).collect());
        }
        let pairs: Vec<(Vec<u32>, Vec<u32>)> =
            prompt_ids.iter().flat_map(|p| choice_ids.iter().map(move |c| (p.clone(), c.clone()))).collect();
        let scored =
            self.engine.score_with(&pairs, Precision::Quantized, DEFAULT_PREFILL_CHUNK).map_err(|e| e.to_string())?;
        Ok(scored.chunks(choices.len()).map(|c| c.iter().map(|s| s.logprob_sum).collect()).collect())
    }

    fn name(&self) -> String {
        self.engine.info().id.clone()
    }
}

/// Loads judge models by spec (`default`, a path), each once per process; a judge config that names no model uses
/// `fallback` (the job's model, or `--judge-model`).
pub fn loader(fallback: String) -> Box<orchard_rewards::judge::JudgeLoader> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    let loaded: Mutex<HashMap<String, Arc<EngineJudge>>> = Mutex::default();
    Box::new(move |cfg: &orchard_rewards::judge::JudgeConfig| {
        let spec = cfg.model.clone().unwrap_or_else(|| fallback.clone());
        let mut map = loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(j) = map.get(&spec) {
            return Ok(Arc::clone(j) as Arc<dyn JudgeModel>);
        }
        let engine = Engine::load(&spec)
            .map_err(|e| orchard_rewards::Error::InvalidConfig(format!("judge model `{spec}` does not load: {e}")))?;
        let judge = Arc::new(EngineJudge::new(Arc::new(engine)));
        map.insert(spec, Arc::clone(&judge));
        Ok(judge as Arc<dyn JudgeModel>)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchard_rewards::judge::{JudgeConfig, JudgeParse, JudgeReward};
    use orchard_rewards::{Reward, Task};

    #[test]
    fn a_tiny_model_judges_in_batches_like_one_by_one() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let cfg = orchard_engine::testing::tiny_config(orchard_engine::Arch::Llama);
        orchard_engine::testing::write_hf_dir(dir.path(), &cfg, &orchard_engine::testing::random_weights(&cfg, 7))?;
        let engine = Arc::new(Engine::load(dir.path().to_str().unwrap_or_default())?);
        let judge = Arc::new(EngineJudge::new(engine));
        let choices = JudgeReward::new(JudgeConfig::default(), judge.clone())?;
        let t = Task::new("What is 2 + 2?").with_answer("4");
        let rows = [(&t, "4"), (&t, "5"), (&t, "four")];
        let batch = choices.score_batch(&rows);
        assert_eq!(batch.len(), rows.len());
        for ((t, c), b) in rows.iter().zip(&batch) {
            let one = choices.score(t, c);
            assert!(b.error.is_none(), "{b:?}");
            assert!((0.0..=1.0).contains(&b.score));
            assert!((one.score - b.score).abs() < 1e-4, "batched {} vs alone {}", b.score, one.score);
        }
        let cfg = JudgeConfig {
            parse: JudgeParse::Regex { pattern: r"(\d+)".into(), scale: 1.0 },
            max_new_tokens: 4,
            ..Default::default()
        };
        let regex = JudgeReward::new(cfg, judge)?;
        // A random model's reply rarely holds a number: either a score or an error naming the reply, never a
        // silent zero.
        for o in regex.score_batch(&rows) {
            assert!(o.error.as_deref().is_none_or(|e| e.contains("judge reply has no score")), "{o:?}");
        }
        Ok(())
    }
}
