//! `orchard reward`: score a JSONL file of (task, completion) rows with a reward and print one JSON row each.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use orchard_rewards::{score_batch_caught, Outcome, Task};
use rayon::prelude::*;

use crate::job::{build_reward, RewardArgs};

/// Rows scored in parallel per chunk; output stays in input order.
const CHUNK_ROWS: usize = 512;

/// Score each row of a JSONL file and print one JSON object per row, in input order:
/// `{row, line, score, components, extracted, failure, error}`.
///
/// A row holds `completion` plus the task fields the reward needs: `answer` (math, ToolRL, Tool-Star), `choices`
/// (mathqa), `prompt`/`question`, `tests`/`test` and `entry_point` (humaneval), `sql` and `db` (sql; relative paths
/// are resolved against the input file's directory), `boxes` (iou); any other field is a column a Python reward
/// receives by name. A row that cannot be read (malformed JSON, non-UTF-8, missing or mistyped field) or scored
/// (missing database, a Python reward that raised ...) gets `score: null` and an `error` naming file, line and field;
/// the other rows are still scored. Exit code 0 when every row was scored, 1 otherwise.
///
/// Examples:
///   orchard reward --list
///   orchard reward --kind gsm8k --input rows.jsonl
///   orchard reward --kind python:my_rewards.py:format_reward --input rows.jsonl
///   orchard reward --config think2sql.toml --input rows.jsonl --explain 3
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Reward name: gsm8k, svamp, math, mathqa, pot, humaneval, unit-tests, sql, iou, toolrl, tool-star, format, or
    /// python:FILE:FUNCTION (a TRL- or verl-style function; see --list).
    #[arg(long, required_unless_present_any = ["config", "list"], conflicts_with = "config")]
    pub kind: Option<String>,
    /// TOML reward description instead of --kind (composites `weighted` / `gate`, `python`, `judge`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Input JSONL (`-` for stdin).
    #[arg(long, required_unless_present = "list")]
    pub input: Option<PathBuf>,
    /// Print every reward with what it scores, the fields it reads and its settings with their defaults (TOML).
    #[arg(long)]
    pub list: bool,
    /// Explain one row (its 0-based `row` number): each component's and each term's score and why (extracted
    /// answer, failed test, parse error), as text (or JSON with --json).
    #[arg(long, value_name = "ROW")]
    pub explain: Option<usize>,
    /// With --explain or --list: print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sandbox: RewardArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.list {
        return list(args.json);
    }
    let input = args.input.clone().context("give --input FILE.jsonl")?;
    let reward = build_reward(args.kind.as_deref(), args.config.as_deref(), &args.sandbox, None)?;
    let bytes = super::exec::read_input(&input)?;
    let base = input.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let lines: Vec<(usize, &[u8])> = bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
        .map(|(k, l)| (k + 1, l))
        .collect();
    if let Some(row) = args.explain {
        let (line, text) =
            *lines.get(row).with_context(|| format!("{}: no row {row} (it has {})", input.display(), lines.len()))?;
        let (task, completion) =
            parse_row(text, base).map_err(|e| anyhow::anyhow!("{}:{line}: {e}", input.display()))?;
        let e = reward.explain(&task, &completion)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&e)?);
        } else {
            print!("{}:{line} (row {row})\n{}", input.display(), explain_text(&e, 0));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    let (mut scored, mut errors, mut sum) = (0usize, 0usize, 0.0);
    for (chunk_index, chunk) in lines.chunks(CHUNK_ROWS).enumerate() {
        let parsed: Vec<Result<(Task, String), String>> = chunk
            .par_iter()
            .map(|(line, text)| parse_row(text, base).map_err(|e| format!("{}:{line}: {e}", input.display())))
            .collect();
        let items: Vec<(&Task, &str)> =
            parsed.iter().filter_map(|p| p.as_ref().ok()).map(|(t, c)| (t, c.as_str())).collect();
        let mut outcomes = score_batch_caught(reward.reward(), &items).into_iter();
        for (k, ((line, _), p)) in chunk.iter().zip(&parsed).enumerate() {
            let outcome = match p {
                Ok(_) => Ok(outcomes.next().unwrap_or_default()),
                Err(e) => Err(e.clone()),
            };
            let r = row_json(chunk_index * CHUNK_ROWS + k, *line, outcome);
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
    eprintln!("{}: {scored} rows scored (mean score {mean:.4}), {errors} rows with errors", input.display());
    Ok(if errors == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `--list`: every reward, what it scores, what it reads, its defaults.
fn list(json: bool) -> anyhow::Result<ExitCode> {
    let entries = orchard_rewards::catalog();
    let mut out = std::io::stdout().lock();
    if json {
        for e in &entries {
            writeln!(out, "{}", serde_json::to_string(e)?)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    for e in &entries {
        writeln!(
            out,
            "{}\n  {}\n  reads: {}\n  defaults (TOML):",
            e.name,
            e.summary.split_whitespace().collect::<Vec<_>>().join(" "),
            e.reads
        )?;
        for l in e.defaults.lines() {
            writeln!(out, "    {l}")?;
        }
        writeln!(out)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One explanation as indented text: the score, then what was extracted, why it lost points, its components and
/// its terms.
fn explain_text(e: &orchard_rewards::Explanation, depth: usize) -> String {
    let pad = "  ".repeat(depth);
    let o = &e.outcome;
    let weight = e.weight.map(|w| format!(" × {w}")).unwrap_or_default();
    let score = if o.error.is_some() { "not scored".to_string() } else { format!("score {}", o.score) };
    let mut t = format!("{pad}{} ({}){weight}: {score}\n", e.name, e.kind);
    if let Some(x) = &o.extracted {
        t += &format!("{pad}  extracted: {x:?}\n");
    }
    if let Some(f) = &o.failure {
        t += &format!("{pad}  why not full marks: {f}\n");
    }
    if let Some(err) = &o.error {
        t += &format!("{pad}  error: {}\n", err.replace('\n', &format!("\n{pad}    ")));
    }
    if e.parts.is_empty() {
        for (k, v) in &o.components {
            t += &format!("{pad}  {k} = {v}\n");
        }
    }
    for p in &e.parts {
        t += &explain_text(p, depth + 1);
    }
    t
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
    task.extra.remove("completion");
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
