//! The Python side of the sandbox: which interpreter, how a program file is named, how a failure reason is read
//! from a traceback, and how `solution()`'s return value comes back.

use std::path::{Path, PathBuf};

/// File name of the program inside the run's private directory (tracebacks name it).
pub const PROGRAM_FILE: &str = "main.py";

/// Marker line prefix that carries `solution()`'s `repr()` back on stdout (see [`with_solution_call`]).
pub const RESULT_MARKER: &str = "\u{1}orchard-result:";

/// `$ORCHARD_PYTHON`, else `/usr/bin/python3` (a system interpreter every sandbox uid can read; version managers
/// such as pyenv put theirs under a home directory and add a shell shim that costs tens of ms per start), else
/// `python3` resolved on `PATH`.
pub fn default_interpreter() -> PathBuf {
    if let Some(p) = std::env::var_os("ORCHARD_PYTHON") {
        return PathBuf::from(p);
    }
    let system = Path::new("/usr/bin/python3");
    if system.exists() {
        return system.to_path_buf();
    }
    which("python3").unwrap_or_else(|| PathBuf::from("python3"))
}

/// Resolve a bare command name on `PATH`; paths with a `/` are returned as they are.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// `program` followed by a `__main__` block that calls `solution()` and prints its `repr()` after
/// [`RESULT_MARKER`] (ReFT P-CoT, Tree-of-Code). Read it back with [`take_result`].
pub fn with_solution_call(program: &str) -> String {
    format!(
        "{program}\n\nif __name__ == \"__main__\":\n    import sys as _orchard_sys\n    _orchard_value = solution()\n    \
         _orchard_sys.stdout.flush()\n    _orchard_sys.stdout.write(\"\\n\\x01orchard-result:\" + repr(_orchard_value) + \"\\n\")\n"
    )
}

/// Remove the result line written by [`with_solution_call`] from `stdout` and return the `repr()` it carries.
pub fn take_result(stdout: &mut String) -> Option<String> {
    let at = stdout.rfind(RESULT_MARKER)?;
    let value_start = at + RESULT_MARKER.len();
    let value_end = stdout[value_start..].find('\n').map_or(stdout.len(), |e| value_start + e);
    let value = stdout[value_start..value_end].to_string();
    // Also drop the newline written before the marker.
    let cut_start = if stdout[..at].ends_with('\n') { at - 1 } else { at };
    let cut_end = (value_end + 1).min(stdout.len());
    stdout.replace_range(cut_start..cut_end, "");
    Some(value)
}

/// A one-line failure reason from a Python traceback: the exception line, plus the source line of the innermost
/// frame in the program (`AssertionError at line 12: assert candidate(3) == 4`), so that reflection prompts and
/// HumanEval failures say which assertion failed.
pub fn failure_reason(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr.lines().collect();
    let tb_start = lines.iter().rposition(|l| l.starts_with("Traceback (most recent call last)"))?;
    let tb = &lines[tb_start..];
    // The exception line: the last line that does not start with whitespace, after the frames.
    let exc = tb.iter().skip(1).rev().find(|l| !l.starts_with(' ') && !l.trim().is_empty())?;
    let mut frame: Option<(String, Option<&str>)> = None;
    for (k, l) in tb.iter().enumerate() {
        let t = l.trim_start();
        if let Some(rest) = t.strip_prefix("File \"") {
            let in_program = rest.starts_with(PROGRAM_FILE) || rest.contains(&format!("/{PROGRAM_FILE}\""));
            if in_program {
                let line_no = rest.split(", line ").nth(1).map(|s| s.split(',').next().unwrap_or(s).to_string());
                let code = tb.get(k + 1).map(|c| c.trim()).filter(|c| !c.starts_with("File \"") && !c.is_empty());
                frame = Some((line_no.unwrap_or_default(), code));
            }
        }
    }
    let exc = exc.trim();
    Some(match frame {
        Some((line, Some(code))) => format!("{exc} at line {line}: {code}"),
        Some((line, None)) if !line.is_empty() => format!("{exc} at line {line}"),
        _ => exc.to_string(),
    })
}

/// Whether stderr ends in a `MemoryError` (Python's report of an allocation refused under `RLIMIT_AS`).
pub fn is_memory_error(stderr: &str) -> bool {
    let tail_start = stderr.len().saturating_sub(4096);
    let tail = stderr.get(tail_start..).unwrap_or(stderr);
    tail.lines().rev().take(4).any(|l| l.starts_with("MemoryError") || l.contains("Cannot allocate memory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_exception_and_failing_line() {
        let tb =
            "Traceback (most recent call last):\n  File \"/tmp/main.py\", line 20, in <module>\n    check(add)\n  \
                  File \"/tmp/main.py\", line 12, in check\n    assert candidate(2, 3) == 5\n           \
                  ^^^^^^^^^^^^^^^\nAssertionError\n";
        assert_eq!(failure_reason(tb).as_deref(), Some("AssertionError at line 12: assert candidate(2, 3) == 5"));
        let tb = "Traceback (most recent call last):\n  File \"main.py\", line 1, in <module>\n    x = y\n\
                  NameError: name 'y' is not defined\n";
        assert_eq!(failure_reason(tb).as_deref(), Some("NameError: name 'y' is not defined at line 1: x = y"));
        assert_eq!(failure_reason("plain text"), None);
    }

    #[test]
    fn result_marker_round_trips_and_is_removed() {
        let mut out = format!("hello\n\n{RESULT_MARKER}42.5\n");
        assert_eq!(take_result(&mut out).as_deref(), Some("42.5"));
        assert_eq!(out, "hello\n");
        let program = with_solution_call("def solution():\n    return 1");
        assert!(program.contains("solution()"));
        assert!(program.contains("\\x01orchard-result:"), "the Python literal spells RESULT_MARKER");
    }

    #[test]
    fn memory_errors_are_recognised() {
        assert!(is_memory_error("Traceback ...\nMemoryError\n"));
        assert!(!is_memory_error("ValueError: x\n"));
    }
}
