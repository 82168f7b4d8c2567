use std::sync::Arc;

use arrow_array::{BooleanArray, Float64Array, RecordBatch, StringArray};
use orchard_engine::testing::{random_weights, tiny_config, write_hf_dir};
use orchard_engine::Arch;

use super::*;

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn tiny_engine(dir: &Path) -> Result<Engine> {
    let cfg = tiny_config(Arch::Llama);
    write_hf_dir(dir, &cfg, &random_weights(&cfg, 3))?;
    Ok(Engine::load(dir.to_str().expect("utf-8 path"))?)
}

/// Writes string columns (and optional float/bool ones) as one Parquet file.
fn write(
    path: &Path,
    cols: Vec<(&str, Vec<&str>)>,
    floats: Vec<(&str, Vec<f64>)>,
    bools: Vec<(&str, Vec<bool>)>,
) -> Result<()> {
    let mut arrays: Vec<(&str, ArrayRef)> =
        cols.into_iter().map(|(n, v)| (n, Arc::new(StringArray::from(v)) as ArrayRef)).collect();
    arrays.extend(floats.into_iter().map(|(n, v)| (n, Arc::new(Float64Array::from(v)) as ArrayRef)));
    arrays.extend(bools.into_iter().map(|(n, v)| (n, Arc::new(BooleanArray::from(v)) as ArrayRef)));
    let batch = RecordBatch::try_from_iter(arrays)?;
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None)?;
    w.write(&batch)?;
    w.close()?;
    Ok(())
}

const LIMITS: Limits = Limits { max_length: 512, skip_long: false };

#[test]
fn pairs_are_tokenized_with_eos_on_terminal_completions() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = tiny_engine(&dir.path().join("m"))?;
    let f = dir.path().join("pairs.parquet");
    write(
        &f,
        vec![
            ("prompt", vec!["what is 2+2?", "and 3+3?"]),
            ("chosen", vec!["4", "6"]),
            ("rejected", vec!["5", "7 or so"]),
        ],
        vec![(META_BEHAVIOUR_LOGP_CHOSEN, vec![-1.0, -2.0]), (META_BEHAVIOUR_LOGP_REJECTED, vec![-3.0, -4.0])],
        vec![(META_TERMINAL, vec![true, false])],
    )?;
    let cols = PairColumns { behaviour: true, label_smoothing: None };
    let loaded = read_pairs(&f, &cols, LIMITS, &engine)?;
    let eos = engine.tokenizer().eos()[0];
    let [a, b] = &loaded.examples[..] else { panic!("two pairs") };
    assert_eq!(a.prompt, engine.tokenizer().encode("what is 2+2?", false)?);
    assert_eq!(a.chosen.last(), Some(&eos), "terminal pairs end with EOS");
    assert_ne!(b.chosen.last(), Some(&eos), "step pairs do not");
    assert_eq!(a.behaviour, Some((-1.0, -3.0)));
    assert!(a.origin.ends_with("row 1") && b.origin.ends_with("row 2"));
    Ok(())
}

#[test]
fn a_missing_column_is_named_with_the_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = tiny_engine(&dir.path().join("m"))?;
    let f = dir.path().join("no-rejected.parquet");
    write(&f, vec![("prompt", vec!["q"]), ("chosen", vec!["a"])], vec![], vec![])?;
    let err = read_pairs(&f, &PairColumns::default(), LIMITS, &engine).unwrap_err().to_string();
    assert!(err.contains("no-rejected.parquet") && err.contains("missing column `rejected`"), "{err}");
    assert!(err.contains("columns found: prompt, chosen"), "{err}");
    // Behaviour log-probs asked for but absent.
    let g = dir.path().join("no-logps.parquet");
    write(&g, vec![("prompt", vec!["q"]), ("chosen", vec!["a"]), ("rejected", vec!["b"])], vec![], vec![])?;
    let cols = PairColumns { behaviour: true, label_smoothing: None };
    let err = read_pairs(&g, &cols, LIMITS, &engine).unwrap_err().to_string();
    assert!(err.contains(META_BEHAVIOUR_LOGP_CHOSEN), "{err}");
    Ok(())
}

#[test]
fn empty_completions_and_wrong_types_name_the_row_or_column() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = tiny_engine(&dir.path().join("m"))?;
    let f = dir.path().join("empty.parquet");
    write(
        &f,
        vec![("prompt", vec!["q1", "q2", "q3"]), ("chosen", vec!["a", "b", "c"]), ("rejected", vec!["x", "", "z"])],
        vec![],
        vec![],
    )?;
    let err = read_pairs(&f, &PairColumns::default(), LIMITS, &engine).unwrap_err().to_string();
    assert!(
        err.contains("empty.parquet") && err.contains("row 2") && err.contains("rejected completion is empty"),
        "{err}"
    );
    let g = dir.path().join("typed.parquet");
    write(&g, vec![("prompt", vec!["q"]), ("chosen", vec!["a"])], vec![("rejected", vec![1.0])], vec![])?;
    let err = read_pairs(&g, &PairColumns::default(), LIMITS, &engine).unwrap_err().to_string();
    assert!(err.contains("column `rejected` is Float64, expected a string"), "{err}");
    Ok(())
}

#[test]
fn over_long_pairs_fail_with_the_row_or_are_skipped_when_asked() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = tiny_engine(&dir.path().join("m"))?;
    let f = dir.path().join("long.parquet");
    let long = "word ".repeat(400);
    write(
        &f,
        vec![("prompt", vec!["q", long.as_str()]), ("chosen", vec!["a", "b"]), ("rejected", vec!["c", "d"])],
        vec![],
        vec![],
    )?;
    let err = read_pairs(&f, &PairColumns::default(), LIMITS, &engine).unwrap_err().to_string();
    assert!(err.contains("long.parquet:row 2") && err.contains("longer than the limit of 512"), "{err}");
    let loaded = read_pairs(&f, &PairColumns::default(), Limits { skip_long: true, ..LIMITS }, &engine)?;
    assert_eq!((loaded.examples.len(), loaded.skipped), (1, 1));
    Ok(())
}

#[test]
fn trajectories_skip_unscored_rows_and_check_columns() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = tiny_engine(&dir.path().join("m"))?;
    let f = dir.path().join("traj.parquet");
    write(
        &f,
        vec![("prompt", vec!["q", "q"]), ("completion", vec!["a", "b"]), ("finish_reason", vec!["stop", "length"])],
        vec![("logprob_sum", vec![-1.5, -2.5]), ("reward", vec![1.0, 0.0])],
        vec![],
    )?;
    let loaded = read_trajectories(&f, LIMITS, &engine)?;
    let eos = engine.tokenizer().eos()[0];
    assert_eq!(loaded.examples.len(), 2);
    assert_eq!(loaded.examples[0].completion.last(), Some(&eos));
    assert_ne!(loaded.examples[1].completion.last(), Some(&eos), "a cut-off completion gets no EOS");
    assert_eq!((loaded.examples[0].behaviour, loaded.examples[1].reward), (-1.5, 0.0));
    let g = dir.path().join("noreward.parquet");
    write(&g, vec![("prompt", vec!["q"]), ("completion", vec!["a"])], vec![("logprob_sum", vec![-1.0])], vec![])?;
    let err = read_trajectories(&g, LIMITS, &engine).unwrap_err().to_string();
    assert!(err.contains("noreward.parquet") && err.contains("missing column `reward`"), "{err}");
    Ok(())
}
