//! `orchard loop`: rounds of generate → train → hand the weights back in memory → evaluate (the library's
//! [`orchard_jobs::rounds`]).

use std::path::PathBuf;
use std::process::ExitCode;

use orchard_jobs::rounds::{run_loop, LoopConfig};

use super::common::{Bars, ModelArgs};
use crate::job::build_reward;

/// Make a model better: R rounds of *generate with the current policy on the train questions → train from it →
/// hand the trained weights to the engine in memory → evaluate greedy (and maj@K) on a held-out split*, each
/// with 95% intervals. Round 0 evaluates the starting model; an optional warm-up round fine-tunes on the train
/// questions' gold solutions first (ReFT).
///
/// Everything is set in the TOML file (every key has a default; unknown keys are refused): `model`, `rounds`,
/// `seed`, `handoff` (q8|f32), `reward`, `system`, `max_batch`, tables `[train_tasks]` and `[eval_tasks]` (task,
/// split, path, limit, …; they must not share a question), `[eval]` (n, temperature, max_new_tokens), `[warmup]`
/// and `[train]` (every `orchard train` setting: loss = sft|dpo|simpo|…|topr, lr, epochs, batch_size,
/// lora_rank, mask_ratio, …), `[generate]` (n, `[generate.sampling]`, `[generate.pairs]`).
/// `mode = "online"` with an `[online]` table (every `orchard rl` key) runs online RL on the train questions
/// instead, writing base_eval.json, online/ (an `orchard rl` directory) and online.json (before / after); with a
/// `[warmup]` too it is ReFT: rounds 0–1 (the base evaluation, SFT on gold solutions), then online RL from the
/// warmed-up weights (online.json: base, warmup, trained). A larger `[online] steps` continues a finished run.
///
/// Writes into --out: loop.json (every round), loop.jsonl, loop.svg (accuracy per round with intervals, the
/// training loss), round-R/{data,train,eval} (an `orchard sample` run, an `orchard train` directory, eval.json)
/// and final/ (the last policy as an HF directory). Rerun the same command to resume after a kill; a finished
/// loop does nothing; a larger --rounds continues it.
///
/// Examples:
///   orchard loop --config examples/loop.toml --out runs/svamp-loop
///   orchard loop --config examples/rft.toml --out runs/rft --rounds 3
///   orchard loop --config examples/reft_grpo.toml --out runs/svamp-reft
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The loop's TOML file.
    #[arg(long, value_name = "FILE.toml")]
    pub config: PathBuf,
    /// Output directory.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Rounds (overrides the file's `rounds`).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Compute threads (default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub device: super::common::DeviceArgs,
    /// Check the configuration (keys, splits, overlap) and print it with every default filled in; run nothing.
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub sandbox: crate::job::RewardArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut cfg = LoopConfig::from_toml(&args.config)?;
    if let Some(r) = args.rounds {
        cfg.rounds = r;
    }
    if args.check {
        let (train, eval) = orchard_jobs::rounds::check(&cfg)?;
        println!("{}", toml::to_string(&cfg)?);
        eprintln!(
            "orchard: {} ok: {train} train tasks, {eval} held-out tasks, no shared question",
            args.config.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let reward = build_reward(Some(&cfg.reward), None, &args.sandbox, Some(&cfg.model))?;
    let engine = args.device.place(ModelArgs { model: cfg.model.clone(), threads: args.threads }.load()?)?;
    let mut bars = Bars::default();
    if cfg.mode == orchard_jobs::rounds::LoopMode::Online {
        let r =
            orchard_jobs::rounds::run_online(&cfg, std::sync::Arc::new(engine), reward.reward(), &args.out, &mut bars)?;
        let show = |a: &orchard_jobs::eval::Accuracy| {
            format!("{}/{} = {:.3} [{:.3}, {:.3}]", a.correct, a.total, a.accuracy, a.ci95[0], a.ci95[1])
        };
        eprintln!("orchard: online loop: held-out greedy {} before", show(&r.base));
        if let Some(w) = &r.warmup {
            eprintln!("orchard: after the SFT warm-up: {}", show(w));
        }
        match &r.trained {
            Some(a) => eprintln!("orchard: after {} RL steps: {}", r.rl.steps, show(a)),
            None => eprintln!("orchard: {} RL steps done; rerun to continue", r.rl.steps),
        }
        eprintln!("orchard: wrote {}", args.out.join("online.json").display());
        return Ok(ExitCode::SUCCESS);
    }
    let report = run_loop(&cfg, std::sync::Arc::new(engine), reward.reward(), &args.out, &mut bars)?;
    for r in &report.rounds {
        let g = &r.eval.greedy;
        eprintln!(
            "orchard: round {} ({}): greedy {}/{} = {:.3} [{:.3}, {:.3}]; generate {:.0}s, train {:.0}s, hand-off {:.2}s, eval {:.0}s",
            r.round, r.kind, g.correct, g.total, g.accuracy, g.ci95[0], g.ci95[1],
            r.seconds.generate, r.seconds.train, r.seconds.handoff, r.seconds.eval
        );
    }
    eprintln!(
        "orchard: {}; wrote {}",
        if report.gain_is_significant() {
            "the last round's interval lies above round 0's"
        } else {
            "no gain beyond the intervals yet"
        },
        args.out.join(orchard_jobs::rounds::REPORT_FILE).display()
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(ExitCode::SUCCESS)
}
