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

/// Logs go to stderr; `RUST_LOG` (e.g. `RUST_LOG=orchard_engine=debug`) raises the level.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
