//! `orchard export`: one Parquet file in a trainer's format from a run directory.

use std::path::PathBuf;
use std::process::ExitCode;

use orchard_datasets::part::{ParquetOptions, DEFAULT_ZSTD_LEVEL};
use orchard_datasets::{export, ExportFormat, ExportOptions, StepPairs};

/// Export a run as one Parquet file: `trl` / `trl-conversational` (DPO pairs, TRL's standard or conversational
/// layout), `kto` (unpaired prompt/completion/label) or `prm` (stepwise, from trees). See docs/FORMATS.md.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run directory.
    #[arg(long)]
    pub run: PathBuf,
    /// Output format: trl, trl-conversational, kto or prm.
    #[arg(long)]
    pub format: ExportFormat,
    /// The Parquet file to write (atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Non-terminal step pairs: drop (default; TRL would append EOS to a mid-solution step) or keep (standard form
    /// only, flagged meta_terminal=false, for trainers that do not append EOS).
    #[arg(long, value_enum, default_value = "drop")]
    pub step_pairs: StepPairsArg,
    /// KTO label threshold (default: the run's pairs.correct_threshold, else 1.0).
    #[arg(long)]
    pub correct_threshold: Option<f64>,
    /// zstd level of the output.
    #[arg(long, default_value_t = DEFAULT_ZSTD_LEVEL)]
    pub zstd_level: i32,
}

/// `--step-pairs` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StepPairsArg {
    /// Leave non-terminal step pairs out.
    Drop,
    /// Keep them (standard form only).
    Keep,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let opts = ExportOptions {
        step_pairs: match args.step_pairs {
            StepPairsArg::Drop => StepPairs::Drop,
            StepPairsArg::Keep => StepPairs::Keep,
        },
        correct_threshold: args.correct_threshold,
        parquet: ParquetOptions { zstd_level: args.zstd_level, ..ParquetOptions::default() },
        ..ExportOptions::new(args.format)
    };
    let summary = export(&args.run, &args.out, &opts)?;
    println!("wrote {} {} rows to {}", summary.rows, args.format, args.out.display());
    for (why, n) in &summary.dropped {
        if *n > 0 {
            eprintln!("left out {n} {why}");
        }
    }
    if summary.rows == 0 {
        eprintln!("warning: the export is empty");
    }
    Ok(ExitCode::SUCCESS)
}
