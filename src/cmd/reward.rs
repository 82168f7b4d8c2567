//! `orchard reward`: score a JSONL file of (task, completion) rows with a reward and print one JSON row each.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use orchard_rewards::{score_caught, Outcome, Reward, RewardSpec, Task};
use rayon::prelude::*;

use super::exec::SandboxArgs;

/// Rows scored in parallel per chunk; output stays in input order.
const CHUNK_ROWS: usize = 512;

/// Score each row of a JSONL file and print one JSON object per row, in input order:
/// `{row, line, score, components, extracted, failure, error}`.
///
/// A row holds `completion` plus the task fields the reward needs: `answer` (math, ToolRL, Tool-Star), `choices`
/// (mathqa), `prompt`/`question`, `tests`/`test` and `entry_point` (humaneval), `sql` and `db` (sql; relative paths
/// are resolved against the input file's directory), `boxes` (iou). A row that cannot be read (malformed JSON,
/// non-UTF-8, missing or mistyped field) or scored (missing database ...) gets `score: null` and an `error` naming
/// file, line and field; the other rows are still scored. Exit code 0 when every row was scored, 1 otherwise.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Reward name: gsm8k, svamp, math, mathqa, pot, humaneval, unit-tests, sql, iou, toolrl, tool-star, format.
    #[arg(long, required_unless_present = "config", conflicts_with = "config")]
    pub kind: Option<String>,
    /// TOML reward description instead of --kind (composites: `kind = "weighted"` / `"gate"`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Input JSONL (`-` for stdin).
    #[arg(long)]
    pub input: PathBuf,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut spec = match (&args.kind, &args.config) {
        (Some(kind), _) => RewardSpec::from_name(kind)?,
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            RewardSpec::from_toml(&text).with_context(|| format!("in {}", path.display()))?
        }
        (None, None) => anyhow::bail!("give --kind or --config"),
    };
    for policy in spec.policies_mut() {
        args.sandbox.apply(policy);
    }
    let sandbox = if spec.needs_sandbox() { Some(args.sandbox.open()?) } else { None };
    let reward = spec.build(sandbox.as_ref())?;
    let bytes = super::exec::read_input(&args.input)?;
    let base = args.input.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let lines: Vec<(usize, &[u8])> = bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
        .map(|(k, l)| (k + 1, l))
        .collect();
    let mut out = std::io::stdout().lock();
    let (mut scored, mut errors, mut sum) = (0usize, 0usize, 0.0);
    for (chunk_index, chunk) in lines.chunks(CHUNK_ROWS).enumerate() {
        let rows: Vec<serde_json::Value> = chunk
            .par_iter()
            .enumerate()
            .map(|(k, (line, text))| {
                let row = chunk_index * CHUNK_ROWS + k;
                let outcome = parse_row(text, base)
                    .map(|(task, completion)| score_caught(reward.as_ref() as &dyn Reward, &task, &completion))
                    .map_err(|e| format!("{}:{line}: {e}", args.input.display()));
                row_json(row, *line, outcome)
            })
            .collect();
        for r in rows {
            if r["score"].is_null() {
                errors += 1;
            } else {
                scored += 1;
                sum += r["score"].as_f64().unwrap_or(0.0);
            }
            writeln!(out, "{r}")?;
        }
    }
    out.flush()?;
    let mean = if scored > 0 { sum / scored as f64 } else { 0.0 };
    eprintln!("{}: {scored} rows scored (mean score {mean:.4}), {errors} rows with errors", args.input.display());
    Ok(if errors == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn row_json(row: usize, line: usize, outcome: Result<Outcome, String>) -> serde_json::Value {
    let mut v = match outcome {
        Ok(o) if o.error.is_none() => serde_json::to_value(&o).unwrap_or_default(),
        Ok(o) => {
            let mut v = serde_json::to_value(&o).unwrap_or_default();
            v["score"] = serde_json::Value::Null;
            v
        }
        Err(e) => serde_json::json!({
            "score": null, "components": {}, "extracted": null, "failure": null, "error": e,
        }),
    };
    v["row"] = row.into();
    v["line"] = line.into();
    v
}

/// Read one row: UTF-8, a JSON object, a string `completion`, and a task whose fields have the right types.
fn parse_row(text: &[u8], base: &Path) -> Result<(Task, String), String> {
    let text = std::str::from_utf8(text).map_err(|e| format!("not valid UTF-8 (at byte {})", e.valid_up_to()))?;
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}"))?;
    let obj = value.as_object().ok_or("row is not a JSON object")?;
    let completion = match obj.get("completion") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => return Err(format!("field `completion`: expected a string, got {}", json_type(other))),
        None => return Err("field `completion`: missing".into()),
    };
    let mut task: Task = serde_json::from_value(value.clone()).map_err(|e| {
        // Name the field: the first one that fails on its own.
        let field =
            obj.iter().find(|(k, v)| serde_json::from_value::<Task>(serde_json::json!({ k.as_str(): v })).is_err());
        match field {
            Some((k, _)) => format!("field `{k}`: {e}"),
            None => e.to_string(),
        }
    })?;
    if let Some(db) = task.db.as_mut().filter(|d| d.is_relative()) {
        *db = base.join(&*db);
    }
    Ok((task, completion))
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
