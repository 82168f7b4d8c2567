//! End-to-end tests of the `orchard` binary: one module per user-visible command.

mod util;

mod exec;
mod hostile;
mod reward;
