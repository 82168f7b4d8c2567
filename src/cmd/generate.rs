//! `orchard generate`: sample completions, one JSON line per sample.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use orchard_engine::{GenerateOptions, GenerateRequest, Message, Prompt, SamplingParams};
use serde::{Deserialize, Serialize};

use super::common::{progress_bar, read_jsonl_lines, ModelArgs, Output, PrecisionArg};

/// Sample completions from a model.
///
/// Prompts are chat-templated with the model's own template (as one user turn, after an optional --system turn)
/// unless --raw. Output: one JSON object per sample, in prompt then sample order:
/// {"prompt_index", "sample_index", "text", "token_ids", "token_logprobs", "finish_reason", "seed"}.
/// `token_logprobs` are the model's log-probs of the sampled tokens (raw logits, temperature 1), the behaviour
/// log-probs off-policy trainers need. A (seed, prompt) pair gives the same samples whatever else is batched with it.
///
/// Examples:
///   orchard generate --prompt "What is 7 * 8?" --n 4 --temperature 0.7
///   orchard generate --model model.gguf --prompts prompts.jsonl --max-new-tokens 128 --out samples.jsonl
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: super::common::DeviceArgs,
    /// One prompt.
    #[arg(long, conflicts_with = "prompts", required_unless_present = "prompts")]
    pub prompt: Option<String>,
    /// JSON-lines file of prompts: {"prompt": "text"} or {"messages": [{"role": "user", "content": "..."}]}.
    #[arg(long, value_name = "FILE.jsonl")]
    pub prompts: Option<PathBuf>,
    /// A system message put before each prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Use prompts as-is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// Samples per prompt.
    #[arg(long, short = 'n', default_value_t = 1)]
    pub n: usize,
    /// Softmax temperature; 0 = greedy.
    #[arg(long, default_value_t = orchard_engine::sampling::DEFAULT_TEMPERATURE)]
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Drop tokens less likely than P × the most likely one (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Most tokens to generate per sample.
    #[arg(long, default_value_t = orchard_engine::sampling::DEFAULT_MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
    /// Stop when this string appears (repeatable); the text is cut before it.
    #[arg(long = "stop", value_name = "S")]
    pub stop: Vec<String>,
    /// Extra token id that ends a sample (repeatable); the model's EOS always does.
    #[arg(long = "stop-token-id", value_name = "ID")]
    pub stop_token_ids: Vec<u32>,
    /// Keep generating through EOS.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Base seed: sample j of a prompt is seeded from (seed, j).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write rows here (atomically, when done) instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE.jsonl")]
    pub out: Option<PathBuf>,
    /// Numeric path.
    #[arg(long, value_enum, default_value_t = PrecisionArg::Auto)]
    pub precision: PrecisionArg,
    /// Most sequences decoded together.
    #[arg(long, default_value_t = orchard_engine::engine::DEFAULT_MAX_BATCH)]
    pub max_batch: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptRow {
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
    #[serde(default, rename = "id")]
    _id: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct OutRow<'a> {
    prompt_index: usize,
    sample_index: usize,
    text: &'a str,
    token_ids: &'a [u32],
    token_logprobs: &'a [f32],
    finish_reason: orchard_engine::FinishReason,
    seed: u64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        max_new_tokens: args.max_new_tokens,
        stop_token_ids: args.stop_token_ids.clone(),
        stop: args.stop.clone(),
        ignore_eos: args.ignore_eos,
    };
    params.validate()?;
    if args.n == 0 {
        bail!("--n must be at least 1");
    }
    let prompts = read_prompts(&args)?;
    let out = Output::new(args.out.as_deref())?;
    let engine = args.device.place_any(args.model.load_any()?)?;
    let source = args.prompts.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "--prompt".into());
    let mut requests = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let tokens = engine
            .prompt_tokens(p, args.system.as_deref(), args.raw)
            .with_context(|| format!("{source}: prompt {}", i + 1))?;
        requests.push(GenerateRequest { prompt: tokens, n: args.n, params: params.clone(), seed: args.seed });
    }
    let opts = GenerateOptions {
        precision: args.precision.resolve(),
        max_batch: args.max_batch,
        ..GenerateOptions::default()
    };
    let total = (prompts.len() * args.n) as u64;
    let bar = progress_bar(total, "samples");
    let start = Instant::now();
    let samples = engine.generate(&requests, &opts, &mut |p| {
        bar.set_position(p.samples_done as u64);
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("{:.1} tok/s", p.generated_tokens as f64 / secs));
    })?;
    bar.finish_and_clear();
    let mut out = out;
    let mut generated = 0;
    for (pi, per_prompt) in samples.iter().enumerate() {
        for (si, s) in per_prompt.iter().enumerate() {
            generated += s.token_ids.len();
            out.row(&OutRow {
                prompt_index: pi,
                sample_index: si,
                text: &s.text,
                token_ids: &s.token_ids,
                token_logprobs: &s.token_logprobs,
                finish_reason: s.finish_reason,
                seed: s.seed,
            })?;
        }
    }
    out.finish()?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "orchard: {total} samples, {generated} tokens in {secs:.1}s ({:.1} tok/s)",
        generated as f64 / secs.max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}

/// The prompts of `--prompt` or of a `--prompts` JSONL file (`prompt` text or chat `messages` per line).
fn read_prompts(args: &Args) -> anyhow::Result<Vec<Prompt>> {
    Ok(match (&args.prompt, &args.prompts) {
        (Some(p), _) => vec![Prompt::Text(p.clone())],
        (None, Some(path)) => {
            let rows: Vec<(usize, PromptRow)> = read_jsonl_lines(path)?;
            let mut prompts = Vec::with_capacity(rows.len());
            for (line, row) in rows {
                prompts.push(match (row.prompt, row.messages) {
                    (Some(p), None) => Prompt::Text(p),
                    (None, Some(m)) => Prompt::Messages(m),
                    (Some(_), Some(_)) => {
                        bail!("{}:{line}: give either `prompt` or `messages`, not both", path.display())
                    }
                    (None, None) => bail!("{}:{line}: missing field `prompt` (or `messages`)", path.display()),
                });
            }
            if prompts.is_empty() {
                bail!("{}: no prompts", path.display());
            }
            prompts
        }
        (None, None) => bail!("give --prompt or --prompts"),
    })
}
