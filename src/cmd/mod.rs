//! One module per subcommand; each exposes `Args` (clap) and `run(Args) -> anyhow::Result<ExitCode>`.

pub mod bench;
pub mod common;
pub mod convert;
pub mod eval;
pub mod exec;
pub mod export;
pub mod fetch_model;
pub mod generate;
pub mod info;
pub mod merge;
pub mod pairs;
pub mod reward;
pub mod rl;
pub mod rounds;
pub mod sample;
pub mod score;
pub mod search;
pub mod tokenize;
pub mod train;
pub mod tree;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (event fields, the enclosing spans, and a `close` event with the busy/idle time of
    /// every span that ends: rounds, RL steps, training steps, sample groups, generate calls, reward batches).
    Json,
}

/// Logs go to stderr; `RUST_LOG` (e.g. `RUST_LOG=orchard_jobs=info,orchard_engine=debug`) raises the level
/// (default: warnings only); `--log-level` sets it when `RUST_LOG` is unset.
pub fn init_logging(format: LogFormat, level: Option<&str>) {
    use tracing_subscriber::fmt::format::FmtSpan;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.unwrap_or("warn")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().with_span_events(FmtSpan::CLOSE).with_current_span(true).try_init(),
    };
}
