//! `orchard bench`: prefill and decode throughput of a model on this machine (like llama.cpp's `llama-bench`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use orchard_engine::bench::{median, prompt_ids, time_decode, time_prefill};
use orchard_engine::device::DType;
use serde::Serialize;

use super::common::{ModelArgs, PrecisionArg};

/// Built-in prompt text (a GSM8K question, repeated to the prompt length).
const DEFAULT_TEXT: &str = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May? Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn? Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. Her parents decided to give her $15 for that purpose, and her grandparents twice as much as her parents. How much more money does Betty need to buy the wallet?";

/// Measure prefill tokens/s (one prompt), aggregate greedy decode tokens/s at several batch sizes, and scoring
/// tokens/s (8 prompt/completion pairs, f32 path).
///
/// Each batch size B decodes --new-tokens tokens for B distinct prompts of --prompt-tokens tokens after prefilling
/// them (prefill is not timed there). Prints one JSON line per measurement, then a summary line. Medians over
/// --repeat runs.
///
/// Example:
///   orchard bench --batch 1,16,64 --threads 2
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub device: super::common::DeviceArgs,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 200)]
    pub prompt_tokens: usize,
    /// Batch sizes to decode at (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub batch: Vec<usize>,
    /// Tokens decoded per sequence.
    #[arg(long, default_value_t = 32)]
    pub new_tokens: usize,
    /// Runs per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Numeric path for decode (prefill is measured on the same path).
    #[arg(long, value_enum, default_value_t = PrecisionArg::Auto)]
    pub precision: PrecisionArg,
    /// Text whose tokens make the prompts (default: built-in GSM8K questions).
    #[arg(long, value_name = "FILE")]
    pub text: Option<PathBuf>,
    /// Run the tree workload instead (`small`: 4 GSM8K prompts, `full`: 16): per prompt 4 children × 48 tokens,
    /// 4 grandchildren each × 48, one 128-token rollout per grandchild, through the continuous-batching scheduler.
    #[arg(long, value_name = "PRESET")]
    pub tree: Option<String>,
    /// Tree workload: recompute every branch's whole prefix (no prefix sharing).
    #[arg(long, requires = "tree")]
    pub no_sharing: bool,
    /// Tree workload: KV memory budget (e.g. 512MiB); cached prefixes are evicted and sequences preempted to fit.
    #[arg(long, value_parser = super::exec::parse_size_arg, requires = "tree")]
    pub kv_budget: Option<u64>,
}

#[derive(Serialize)]
struct Row<'a> {
    kind: &'a str,
    batch: usize,
    tokens: usize,
    seconds: f64,
    tok_per_s: f64,
    precision: orchard_engine::Precision,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(preset) = &args.tree {
        return tree(&args, preset);
    }
    let engine = args.device.place(args.model.load()?)?;
    let text = match &args.text {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?,
        None => DEFAULT_TEXT.to_string(),
    };
    let base = engine.tokenizer().encode(&text, false)?;
    anyhow::ensure!(!base.is_empty(), "the prompt text has no tokens");
    let model = engine.model();
    let precision = args.precision.resolve().unwrap_or_else(|| model.default_precision());
    let repeat = args.repeat.max(1);
    let prompt = prompt_ids(&base, args.prompt_tokens, 0);
    time_prefill(model, &prompt, precision)?; // warm-up (and the f32 copy, if needed)
    let runs = (0..repeat).map(|_| time_prefill(model, &prompt, precision)).collect::<Result<Vec<_>, _>>()?;
    let secs = median(runs);
    let mut summary = device_summary(&args, &engine, &base)?;
    let prefill = args.prompt_tokens as f64 / secs;
    summary.insert("prefill_tok_per_s".into(), prefill.into());
    println!(
        "{}",
        serde_json::to_string(&Row {
            kind: "prefill",
            batch: 1,
            tokens: args.prompt_tokens,
            seconds: secs,
            tok_per_s: prefill,
            precision
        })?
    );
    for &b in &args.batch {
        let prompts: Vec<_> = (0..b).map(|i| prompt_ids(&base, args.prompt_tokens, i)).collect();
        let runs = (0..repeat)
            .map(|_| time_decode(model, &prompts, args.new_tokens, precision))
            .collect::<Result<Vec<_>, _>>()?;
        let secs = median(runs);
        let tokens = b * args.new_tokens;
        let tps = tokens as f64 / secs;
        summary.insert(format!("decode_b{b}_tok_per_s"), tps.into());
        println!(
            "{}",
            serde_json::to_string(&Row { kind: "decode", batch: b, tokens, seconds: secs, tok_per_s: tps, precision })?
        );
    }
    // Scoring: teacher-forced log-probs of 8 (prompt, completion) pairs on the f32 path, all tokens counted.
    let pairs: Vec<_> = (0..8)
        .map(|i| {
            let ids = prompt_ids(&base, args.prompt_tokens, i);
            let half = ids.len() / 2;
            (ids[..half].to_vec(), ids[half..].to_vec())
        })
        .collect();
    engine.score(&pairs[..1])?;
    let mut runs = Vec::new();
    for _ in 0..repeat {
        let start = std::time::Instant::now();
        engine.score(&pairs)?;
        runs.push(start.elapsed().as_secs_f64());
    }
    let secs = median(runs);
    let tokens = 8 * args.prompt_tokens;
    let tps = tokens as f64 / secs;
    summary.insert("score_tok_per_s".into(), tps.into());
    println!(
        "{}",
        serde_json::to_string(&Row {
            kind: "score",
            batch: 8,
            tokens,
            seconds: secs,
            tok_per_s: tps,
            precision: orchard_engine::Precision::F32
        })?
    );
    summary.insert("threads".into(), rayon_threads().into());
    println!("{}", serde_json::Value::Object(summary));
    Ok(ExitCode::SUCCESS)
}

fn rayon_threads() -> usize {
    orchard_engine::compute_threads()
}

/// The tree workload through the scheduler; prints one JSON line (the [`TreeReport`] plus peak RSS).
fn tree(args: &Args, preset: &str) -> anyhow::Result<ExitCode> {
    use orchard_engine::bench::{run_tree, TreeShape};
    use orchard_engine::{Scheduler, SchedulerConfig};
    let shape = TreeShape::preset(preset).with_context(|| format!("unknown tree preset `{preset}` (small, full)"))?;
    let engine = std::sync::Arc::new(args.device.place(args.model.load()?)?);
    let prompts = tree_prompts(&engine, shape)?;
    let config = SchedulerConfig {
        prefix_cache: !args.no_sharing,
        kv_budget: args.kv_budget.map(|b| b as usize),
        precision: args.precision.resolve(),
        ..SchedulerConfig::default()
    };
    let scheduler = Scheduler::start(engine.clone(), config);
    let report = run_tree(&scheduler, &prompts, shape, !args.no_sharing)?;
    let mut row = serde_json::to_value(&report)?;
    row["peak_rss_bytes"] = peak_rss_bytes().into();
    row["weights_bytes"] = engine.model().weight_bytes().into();
    row["kv_budget"] = args.kv_budget.into();
    if let Some(obj) = row.as_object_mut() {
        obj.extend(device_summary(args, &engine, &engine.tokenizer().encode(DEFAULT_TEXT, false)?)?);
    }
    println!("{row}");
    Ok(ExitCode::SUCCESS)
}

/// The tree workload's prompts: the first GSM8K train questions, chat-templated, one per tree.
fn tree_prompts(
    engine: &orchard_engine::Engine,
    shape: orchard_engine::bench::TreeShape,
) -> anyhow::Result<Vec<Vec<orchard_engine::TokenId>>> {
    use orchard_datasets::{TaskKind, TaskSource};
    let mut source = TaskSource::builtin(TaskKind::Gsm8k, Some("train"));
    source.limit = Some(shape.prompts);
    let tasks = source.load()?.tasks;
    let prompts =
        tasks.iter().map(|t| engine.prompt_tokens(&orchard_engine::Prompt::Text(t.prompt.clone()), None, false));
    Ok(prompts.collect::<Result<Vec<_>, _>>()?)
}

/// Peak resident set size of this process (`VmHWM`), 0 where /proc is unavailable.
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// On a device: which one, its dtype, and its parity with the CPU engine's f32 path (next-token log-probs of four
/// ragged prompts, [`orchard_engine::device::logprob_diff`]). Nothing on the CPU engine.
fn device_summary(
    args: &Args,
    engine: &orchard_engine::Engine,
    base: &[orchard_engine::TokenId],
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut summary = serde_json::Map::new();
    if args.device.device == orchard_engine::Placement::Cpu {
        return Ok(summary);
    }
    let cpu = args.model.load()?;
    let check: Vec<_> = (0..4).map(|i| prompt_ids(base, 40 + 30 * i, i)).collect();
    let diff = orchard_engine::device::logprob_diff(cpu.model(), engine.model(), &check)?;
    summary.insert("device".into(), args.device.device.to_string().into());
    summary.insert("dtype".into(), format!("{:?}", args.device.dtype).to_lowercase().into());
    summary.insert("max_abs_logsoftmax_diff_vs_cpu_f32".into(), diff.all.into());
    summary.insert("max_abs_logprob_diff_likely_vs_cpu_f32".into(), diff.likely.into());
    summary.insert(
        "parity_within_bound".into(),
        diff.within_bound(engine.model().device().map_or(DType::F32, |d| d.dtype())).into(),
    );
    Ok(summary)
}
