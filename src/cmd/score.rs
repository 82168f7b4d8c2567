//! `orchard score`: teacher-forced log-probs of completions given prompts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use orchard_engine::{Message, Prompt};
use serde::{Deserialize, Serialize};

use super::common::{read_jsonl_lines, ModelArgs, Output};

/// Score completions: log p(completion | prompt) per token, on the f32 path (the numerics the trainer uses).
///
/// Input rows: {"prompt": "text" or [messages], "completion": "text"}. The prompt is chat-templated (with the
/// assistant turn opened) unless --raw; the completion is tokenized on its own, without special tokens added
/// (write `<|im_end|>` or the model's EOS text into it to score the end of turn). Output rows, in input order:
/// {"logprob_sum", "token_logprobs", "n_tokens"}.
///
/// Example:
///   orchard score --input pairs.jsonl --out scores.jsonl
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: super::common::DeviceArgs,
    /// JSON-lines file of {"prompt", "completion"} rows.
    #[arg(long, short = 'i', value_name = "FILE.jsonl")]
    pub input: PathBuf,
    /// Use prompts as-is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// A system message put before each templated prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Write rows here (atomically, when done) instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE.jsonl")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct InRow {
    prompt: Option<PromptField>,
    completion: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PromptField {
    Text(String),
    Messages(Vec<Message>),
}

#[derive(Debug, Serialize)]
struct OutRow<'a> {
    logprob_sum: f64,
    token_logprobs: &'a [f32],
    n_tokens: usize,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rows: Vec<(usize, InRow)> = read_jsonl_lines(&args.input)?;
    let path = args.input.display().to_string();
    let mut parsed = Vec::with_capacity(rows.len());
    for (line, row) in rows {
        let Some(prompt) = row.prompt else { bail!("{path}:{line}: missing field `prompt`") };
        let Some(completion) = row.completion else { bail!("{path}:{line}: missing field `completion`") };
        let prompt = match prompt {
            PromptField::Text(t) => Prompt::Text(t),
            PromptField::Messages(m) => Prompt::Messages(m),
        };
        parsed.push((line, prompt, completion));
    }
    let out = Output::new(args.out.as_deref())?;
    let engine = args.device.place_any(args.model.load_any()?)?;
    let mut pairs = Vec::with_capacity(parsed.len());
    for (line, prompt, completion) in &parsed {
        let p = engine
            .prompt_tokens(prompt, args.system.as_deref(), args.raw)
            .with_context(|| format!("{path}:{line}: field `prompt`"))?;
        let c = engine
            .tokenizer()
            .encode(completion, false)
            .with_context(|| format!("{path}:{line}: field `completion`"))?;
        pairs.push((p, c));
    }
    let scored = engine.score(&pairs).with_context(|| format!("scoring {path}"))?;
    let mut out = out;
    for s in &scored {
        out.row(&OutRow { logprob_sum: s.logprob_sum, token_logprobs: &s.token_logprobs, n_tokens: s.n_tokens })?;
    }
    out.finish()?;
    Ok(ExitCode::SUCCESS)
}
