//! Rewards that execute model-written Python in the sandbox: program-of-thought (ReFT P-CoT: `solution()`'s
//! return value is the answer) and unit tests (HumanEval: completion + tests + `check(entry_point)`).
//! [`run_solution`] is the execution primitive Tree-of-Code builds on (status, stdout, error text, return value).

use std::sync::Arc;

use crate::math::{number, MathReward};
use crate::outcome::component::CORRECT;
use crate::sandbox::{python, ExecResult, Executor, Status};
use crate::{Outcome, Result, Reward, Task};

/// Component: 1 when the program ran to completion (exit 0), else 0.
pub const EXECUTED: &str = "executed";

/// The code in a completion: the first fenced block (```` ```python … ``` ````) if there is one, else the whole
/// completion.
pub fn extract_code(completion: &str) -> &str {
    let Some(open) = completion.find("```") else {
        return completion;
    };
    let after = &completion[open + 3..];
    // Skip the info string (`python`, `py`) up to the end of the line.
    let body_start = after.find('\n').map_or(after.len(), |n| n + 1);
    let body = &after[body_start..];
    match body.find("```") {
        Some(close) => &body[..close],
        None => body,
    }
}

/// One execution of a program that defines `solution()`.
#[derive(Debug, Clone, PartialEq)]
pub struct SolutionRun {
    /// The run (the result marker line is removed from `stdout`).
    pub exec: ExecResult,
    /// `repr()` of `solution()`'s return value, when it returned.
    pub value: Option<String>,
}

/// Run `code` (which defines `solution()`) and return the run and `solution()`'s `repr()`. Prepends `import math`
/// (and `sympy` when the code mentions it and it is installed), as ReFT's executor does.
pub fn run_solution(executor: &Executor, code: &str) -> Result<SolutionRun> {
    let mut prelude = String::from("import math\n");
    if code.contains("sympy") {
        prelude.push_str("try:\n    import sympy\nexcept ImportError:\n    pass\n");
    }
    let program = python::with_solution_call(&format!("{prelude}{code}"));
    let mut exec = executor.run(&program)?;
    let value = python::take_result(&mut exec.stdout);
    Ok(SolutionRun { exec, value })
}

/// ReFT's program-of-thought reward: run the completion's `solution()` in the sandbox and grade its return value
/// as a math answer (1 if within tolerance of the reference, partial credit if it returned something else, 0 if
/// the program failed).
#[derive(Debug, Clone)]
pub struct ProgramOfThought {
    executor: Arc<Executor>,
    math: MathReward,
}

impl ProgramOfThought {
    /// A program-of-thought reward running programs through `executor` and grading with `math`.
    pub fn new(executor: Arc<Executor>, math: MathReward) -> Self {
        ProgramOfThought { executor, math }
    }
}

impl Reward for ProgramOfThought {
    fn score(&self, task: &Task, completion: &str) -> Outcome {
        let run = match run_solution(&self.executor, extract_code(completion)) {
            Ok(r) => r,
            Err(e) => return Outcome::task_error(format!("sandbox: {e}")),
        };
        let executed = f64::from(u8::from(run.exec.status == Status::Ok));
        let outcome = match (&run.exec.status, run.value.as_deref()) {
            (Status::Ok, Some(repr)) => {
                let value = number::first_number(repr.trim_matches(['\'', '"']));
                // A value that is not a number was still extracted: ReFT's partial credit applies.
                let mut o = self.math.score_value(task, Some(value.unwrap_or(f64::NAN)), Some(repr));
                if value.is_none() && o.error.is_none() {
                    o.failure = Some(format!("solution() returned {repr}, not a number"));
                }
                o
            }
            (Status::Ok, None) => self.math.score_value(task, None, None).with_failure("solution() did not return"),
            (status, _) => self
                .math
                .score_value(task, None, None)
                .with_failure(format!("program {status}: {}", run.exec.reason.as_deref().unwrap_or("no reason"))),
        };
        outcome.with_component(EXECUTED, executed)
    }
}

/// HumanEval-style unit-test reward: `prompt + completion + "\n" + tests + "\ncheck(entry_point)\n"` runs in the
/// sandbox; 1 if it exits cleanly, else 0 with the failing assertion or exception (and its source line) as the
/// failure. With a fenced completion, the fenced code is used. Without an `entry_point`, the tests are plain
/// top-level asserts.
#[derive(Debug, Clone)]
pub struct UnitTests {
    executor: Arc<Executor>,
}

impl UnitTests {
    /// A unit-test reward running programs through `executor`.
    pub fn new(executor: Arc<Executor>) -> Self {
        UnitTests { executor }
    }

    /// The program that is executed for `completion` (exposed for benches and debugging).
    pub fn program(task: &Task, completion: &str) -> std::result::Result<String, String> {
        let tests = task.tests.as_deref().ok_or("task has no `tests`")?;
        let code = extract_code(completion);
        let check = task.entry_point.as_deref().map(|e| format!("check({e})\n")).unwrap_or_default();
        Ok(format!("{}{code}\n{tests}\n{check}", task.prompt))
    }
}

impl Reward for UnitTests {
    fn score(&self, task: &Task, completion: &str) -> Outcome {
        let program = match Self::program(task, completion) {
            Ok(p) => p,
            Err(e) => return Outcome::task_error(e),
        };
        let exec = match self.executor.run(&program) {
            Ok(r) => r,
            Err(e) => return Outcome::task_error(format!("sandbox: {e}")),
        };
        if exec.status == Status::Ok {
            Outcome::new(1.0).with_component(CORRECT, 1.0).with_component(EXECUTED, 1.0)
        } else {
            Outcome::new(0.0).with_component(CORRECT, 0.0).with_component(EXECUTED, 0.0).with_failure(format!(
                "{}: {}",
                exec.status,
                exec.reason.as_deref().unwrap_or("no reason")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{self, NullSandbox, SandboxChoice, SandboxConfig, SandboxLimits};

    fn executor() -> Arc<Executor> {
        let sb = sandbox::open(SandboxChoice::Auto, SandboxConfig::default()).expect("a sandbox opens here");
        Arc::new(Executor::new(sb, SandboxLimits::default()))
    }

    #[test]
    fn code_is_taken_from_the_first_fence() {
        assert_eq!(extract_code("text\n```python\nx = 1\n```\nmore ```y```"), "x = 1\n");
        assert_eq!(extract_code("x = 2"), "x = 2");
        assert_eq!(extract_code("```\nunclosed"), "unclosed");
    }

    #[test]
    fn program_of_thought_grades_the_return_value() {
        let r = ProgramOfThought::new(executor(), MathReward::default());
        let t = Task::default().with_answer("#### 72");
        let good = r.score(&t, "def solution():\n    a = 48\n    return a + a / 2\n");
        assert_eq!(good.score, 1.0, "{good:?}");
        assert_eq!(good.extracted.as_deref(), Some("72.0"));
        let wrong = r.score(&t, "def solution():\n    return 70\n");
        assert_eq!(wrong.score, 0.1);
        let text = r.score(&t, "def solution():\n    return 'seventy'\n");
        assert_eq!(text.score, 0.1, "{text:?}");
        let crash = r.score(&t, "def solution():\n    return 1 / 0\n");
        assert_eq!(crash.score, 0.0);
        assert!(crash.failure.as_deref().is_some_and(|f| f.contains("ZeroDivisionError")), "{crash:?}");
        assert_eq!(crash.components.get(EXECUTED), Some(&0.0));
    }

    #[test]
    fn unit_tests_pass_fail_and_name_the_assertion() {
        let r = UnitTests::new(executor());
        let t = Task::new("def add(a, b):\n").with_tests(
            "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(0, 0) == 0\n",
            Some("add".into()),
        );
        assert_eq!(r.score(&t, "    return a + b\n").score, 1.0);
        let bad = r.score(&t, "    return a * b\n");
        assert_eq!(bad.score, 0.0);
        assert_eq!(bad.failure.as_deref(), Some("error: AssertionError at line 5: assert candidate(2, 3) == 5"));
        let missing = r.score(&Task::new("x"), "pass");
        assert!(missing.error.is_some());
    }

    #[test]
    fn sandbox_failures_are_task_errors_not_zero_scores() {
        let ex = Arc::new(Executor::new(Arc::new(NullSandbox), SandboxLimits::default()));
        let o = UnitTests::new(ex).score(&Task::new("").with_tests("assert True", None), "pass");
        assert!(o.error.as_deref().is_some_and(|e| e.starts_with("sandbox:")), "{o:?}");
    }
}
