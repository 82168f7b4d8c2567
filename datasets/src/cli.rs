//! Command-line flags for the dataset side of a job, to `#[command(flatten)]` into a subcommand's `Args`.
//!
//! Every flag mirrors a TOML key: flags given on the command line override the job file's values
//! ([`SourceArgs::apply`], [`PairArgs::apply`]). `--seed` is the job's (it seeds both sampling and `--shuffle`), so it
//! is not here: the job sets [`TaskSource::seed`] from it.

use std::path::PathBuf;

use crate::loaders::{OnBadRow, TaskKind, TaskSource};
use crate::record::PairFormat;
use crate::select::{PairSelection, PairStrategy};

/// Where tasks come from (TOML table `[source]`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SourceArgs {
    /// Dataset: gsm8k, svamp, humaneval (built in) or jsonl, json, parquet (with --path). TOML: `source.task`.
    #[arg(long)]
    pub task: Option<TaskKind>,
    /// Split of a built-in dataset (gsm8k: train|test; svamp, humaneval: test). TOML: `source.split`.
    #[arg(long)]
    pub split: Option<String>,
    /// Read this file instead of the built-in data. TOML: `source.path`.
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// Use at most N tasks (after shuffling). TOML: `source.limit`.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Shuffle tasks (with --seed) before --limit. TOML: `source.shuffle`.
    #[arg(long)]
    pub shuffle: bool,
    /// Invalid rows: skip (report and count) or fail. TOML: `source.on_bad_row`.
    #[arg(long)]
    pub on_bad_row: Option<OnBadRow>,
    /// Column holding the prompt (jsonl/json/parquet). TOML: `source.fields.prompt`.
    #[arg(long)]
    pub prompt_field: Option<String>,
    /// Column holding a stable row id. TOML: `source.fields.id`.
    #[arg(long)]
    pub id_field: Option<String>,
    /// Column holding chat messages. TOML: `source.fields.messages`.
    #[arg(long)]
    pub messages_field: Option<String>,
    /// Column holding the reference answer. TOML: `source.fields.reference`.
    #[arg(long)]
    pub reference_field: Option<String>,
    /// Column holding unit tests. TOML: `source.fields.tests`.
    #[arg(long)]
    pub tests_field: Option<String>,
    /// Column holding the tests' entry point. TOML: `source.fields.entry_point`.
    #[arg(long)]
    pub entry_point_field: Option<String>,
}

impl SourceArgs {
    /// `base` (from the job file, or the default) with every given flag applied.
    pub fn apply(&self, mut base: TaskSource) -> TaskSource {
        let set = |slot: &mut Option<String>, v: &Option<String>| {
            if v.is_some() {
                slot.clone_from(v);
            }
        };
        if let Some(task) = self.task {
            base.task = task;
        }
        set(&mut base.split, &self.split);
        if self.path.is_some() {
            base.path.clone_from(&self.path);
        }
        if self.limit.is_some() {
            base.limit = self.limit;
        }
        base.shuffle |= self.shuffle;
        if let Some(on_bad_row) = self.on_bad_row {
            base.on_bad_row = on_bad_row;
        }
        if let Some(prompt) = &self.prompt_field {
            base.fields.prompt.clone_from(prompt);
        }
        set(&mut base.fields.id, &self.id_field);
        set(&mut base.fields.messages, &self.messages_field);
        set(&mut base.fields.reference, &self.reference_field);
        set(&mut base.fields.tests, &self.tests_field);
        set(&mut base.fields.entry_point, &self.entry_point_field);
        base
    }
}

/// How pairs are chosen and laid out (TOML table `[pairs]` and key `pair_format`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PairArgs {
    /// Pairing rule: all-correct-incorrect or best-vs-worst. TOML: `pairs.strategy`.
    #[arg(long = "pairs")]
    pub strategy: Option<PairStrategy>,
    /// At most K pairs per prompt. TOML: `pairs.max_per_prompt`.
    #[arg(long = "max-pairs-per-prompt")]
    pub max_per_prompt: Option<usize>,
    /// Minimum score margin of a pair. TOML: `pairs.min_margin`.
    #[arg(long)]
    pub min_margin: Option<f64>,
    /// Score at or above which a completion is correct. TOML: `pairs.correct_threshold`.
    #[arg(long)]
    pub correct_threshold: Option<f64>,
    /// TRL layout of pairs/: standard or conversational. TOML: `pair_format`.
    #[arg(long)]
    pub pair_format: Option<PairFormat>,
}

impl PairArgs {
    /// `(policy, format)` from the job file's values with every given flag applied.
    pub fn apply(&self, mut policy: PairSelection, mut format: PairFormat) -> (PairSelection, PairFormat) {
        if let Some(s) = self.strategy {
            policy.strategy = s;
        }
        if self.max_per_prompt.is_some() {
            policy.max_per_prompt = self.max_per_prompt;
        }
        if let Some(m) = self.min_margin {
            policy.min_margin = m;
        }
        if let Some(t) = self.correct_threshold {
            policy.correct_threshold = t;
        }
        if let Some(f) = self.pair_format {
            format = f;
        }
        (policy, format)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        pairs: PairArgs,
    }

    #[test]
    fn flags_override_the_job_file() -> crate::Result<()> {
        let cli = Cli::try_parse_from([
            "x",
            "--task",
            "jsonl",
            "--path",
            "q.jsonl",
            "--prompt-field",
            "q",
            "--limit",
            "5",
            "--on-bad-row",
            "fail",
            "--pairs",
            "best-vs-worst",
            "--max-pairs-per-prompt",
            "2",
            "--pair-format",
            "conversational",
        ])
        .map_err(|e| crate::Error::Source(e.to_string()))?;
        let file: TaskSource = toml::from_str("task = \"gsm8k\"\nlimit = 50\nshuffle = true\nseed = 3\n")
            .map_err(|e| crate::Error::Source(e.to_string()))?;
        let source = cli.source.apply(file);
        assert_eq!((source.task, source.limit, source.shuffle, source.seed), (TaskKind::Jsonl, Some(5), true, 3));
        assert_eq!(source.fields.prompt, "q");
        assert_eq!(source.on_bad_row, OnBadRow::Fail);
        let (policy, format) = cli.pairs.apply(PairSelection::default(), PairFormat::Standard);
        assert_eq!((policy.strategy, policy.max_per_prompt), (PairStrategy::BestVsWorst, Some(2)));
        assert_eq!(format, PairFormat::Conversational);
        Ok(())
    }
}
