//! End-to-end tests of the `orchard` binary: one module per user-visible command.

mod device;
mod export;
mod generate;
mod merge;
mod models;
mod rounds;
mod runs;
mod sample;
mod search;
mod train;
mod util;

mod exec;
mod hostile;
mod reward;
mod reward_python;
mod rl;
