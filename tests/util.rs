//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use assert_cmd::Command;

/// The `orchard` binary under test.
pub fn orchard() -> Command {
    Command::cargo_bin("orchard").expect("the orchard binary is built for tests")
}
