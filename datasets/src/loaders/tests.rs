use std::io::Write;

use super::*;

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::io::Result<PathBuf> {
    let path = dir.path().join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

fn skip(task: TaskKind, path: &Path) -> TaskSource {
    TaskSource::file(task, path)
}

fn bad(report: &LoadReport) -> Vec<(usize, &str)> {
    report.bad_rows.iter().map(|b| (b.line, b.field.as_str())).collect()
}

#[test]
fn builtin_datasets_load_every_row_with_stable_ids() -> TestResult {
    let cases = [
        (TaskKind::Gsm8k, Some("train"), 7473, "gsm8k/train/0", "72"),
        (TaskKind::Gsm8k, Some("test"), 1319, "gsm8k/test/0", "18"),
        (TaskKind::Svamp, None, 1000, "svamp/test/chal-1", "51"),
        (TaskKind::Svamp, Some("train"), 500, "svamp/train/chal-2", "1"),
        (TaskKind::Svamp, Some("heldout"), 500, "svamp/heldout/chal-1", "51"),
        (TaskKind::HumanEval, None, 164, "humaneval/test/HumanEval/0", ""),
    ];
    for (kind, split, rows, first_id, first_ref) in cases {
        let loaded = TaskSource::builtin(kind, split).load()?;
        assert_eq!(loaded.tasks.len(), rows, "{kind}");
        assert_eq!(loaded.report.bad_rows_skipped, 0, "{kind}: {:?}", loaded.report.bad_rows);
        assert_eq!(loaded.tasks[0].id, first_id);
        if kind == TaskKind::HumanEval {
            let t = &loaded.tasks[0];
            assert_eq!(t.entry_point.as_deref(), Some("has_close_elements"));
            assert!(t.tests.as_deref().is_some_and(|s| s.contains("def check")));
        } else {
            assert_eq!(loaded.tasks[0].reference.as_deref(), Some(first_ref));
        }
    }
    let svamp = TaskSource::builtin(TaskKind::Svamp, None).load()?;
    assert_eq!(
        svamp.tasks[0].prompt,
        "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack. \
         How much do you have to pay to buy each pack?"
    );
    Ok(())
}

/// The fixed SVAMP split: train and heldout are disjoint and together are the whole file.
#[test]
fn svamp_train_and_heldout_partition_the_file() -> TestResult {
    let native = |split| -> Result<Vec<String>> {
        let loaded = TaskSource::builtin(TaskKind::Svamp, Some(split)).load()?;
        Ok(loaded.tasks.into_iter().map(|t| t.id.rsplit('/').next().unwrap_or_default().to_string()).collect())
    };
    let (train, heldout, all) = (native("train")?, native("heldout")?, native("test")?);
    assert!(train.iter().all(|id| !heldout.contains(id)));
    let mut both = [train, heldout].concat();
    both.sort();
    let mut all = all;
    all.sort();
    assert_eq!(both, all);
    Ok(())
}

#[test]
fn unknown_split_or_missing_path_is_a_clear_error() {
    let err = TaskSource::builtin(TaskKind::Svamp, Some("dev")).load().unwrap_err().to_string();
    assert!(err.contains("svamp has no split \"dev\"; available: test, train, heldout"), "{err}");
    let err = TaskSource::builtin(TaskKind::Jsonl, None).load().unwrap_err().to_string();
    assert!(err.contains("needs a --path"), "{err}");
    assert!("gsm9k".parse::<TaskKind>().is_err());
}

#[test]
fn gsm8k_bad_rows_are_reported_with_line_and_field_and_skipped() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = write(
        &dir,
        "mini.jsonl",
        concat!(
            "{\"question\": \"1+1?\", \"answer\": \"1+1=2\\n#### 2\"}",
            "\n",
            "{not json\n",
            "\n",
            "{\"answer\": \"#### 3\"}",
            "\n",
            r##"{"question": "q", "answer": "no marker"}"##,
            "\n",
            "{\"question\": \"q\", \"answer\": \"#### lots\"}",
            "\n",
            "{\"question\": 7, \"answer\": \"#### 1\"}",
            "\n",
            r##"[1, 2]"##,
            "\n",
            "{\"question\": \"big\", \"answer\": \"#### 1,234\"}",
            "\n",
        ),
    )?;
    let loaded = skip(TaskKind::Gsm8k, &path).load()?;
    assert_eq!(loaded.tasks.len(), 2);
    assert_eq!(loaded.tasks[1].reference.as_deref(), Some("1234"));
    // Ids count rows (blank lines excluded), so they do not move when a row is skipped.
    assert_eq!(loaded.tasks[1].id, "mini/7");
    assert_eq!(loaded.report.rows_read, 8);
    assert_eq!(loaded.report.bad_rows_skipped, 6);
    assert_eq!(
        bad(&loaded.report),
        vec![(2, "(row)"), (4, "question"), (5, "answer"), (6, "answer"), (7, "question"), (8, "(row)")]
    );
    assert!(loaded.report.bad_rows[4].reason.contains("expected a string, found a number"));
    assert!(loaded.report.bad_rows[0].file.ends_with("mini.jsonl"));

    let err = TaskSource { on_bad_row: OnBadRow::Fail, ..skip(TaskKind::Gsm8k, &path) }.load().unwrap_err();
    let Error::BadRow(row) = &err else { panic!("{err}") };
    assert_eq!((row.line, row.field.as_str()), (2, "(row)"));
    assert!(err.to_string().contains("mini.jsonl:2: field `(row)`: invalid JSON"), "{err}");
    Ok(())
}

#[test]
fn svamp_bad_rows_point_at_the_line_where_the_object_starts() -> TestResult {
    let dir = tempfile::tempdir()?;
    let text = r##"[
  {"ID": "a", "Body": "He has 3 apples.", "Question": "How many?", "Answer": 3.0},
  {"ID": "b", "Body": "x",
   "Question": "y", "Answer": "many"},
  {"ID": "c", "Question": "y", "Answer": 1},
  {"ID": "d", "Body": "b", "Question": "q?", "Answer": "2.5"}
]"##;
    let loaded = skip(TaskKind::Svamp, &write(&dir, "sv.json", text)?).load()?;
    assert_eq!(loaded.tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["sv/a", "sv/d"]);
    assert_eq!(loaded.tasks[0].prompt, "He has 3 apples. How many?");
    assert_eq!(loaded.tasks[1].reference.as_deref(), Some("2.5"));
    assert_eq!(bad(&loaded.report), vec![(3, "Answer"), (5, "Body")]);

    let loaded = skip(TaskKind::Svamp, &write(&dir, "obj.json", "{\"ID\": 1}")?).load()?;
    assert_eq!((loaded.tasks.len(), loaded.report.bad_rows_skipped), (0, 1));
    assert!(loaded.report.bad_rows[0].reason.contains("invalid JSON array"));
    Ok(())
}

#[test]
fn humaneval_rows_need_tests_with_check_and_an_entry_point() -> TestResult {
    let dir = tempfile::tempdir()?;
    let rows = [
        r##"{"task_id": "H/0", "prompt": "def f():\n", "test": "def check(c): pass", "entry_point": "f"}"##,
        r##"{"task_id": "H/1", "prompt": "def g():\n", "test": "assert True", "entry_point": "g"}"##,
        r##"{"task_id": "H/2", "prompt": "def h():\n", "test": "def check(c): pass"}"##,
    ];
    let path = dir.path().join("he.jsonl.gz");
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&path)?, flate2::Compression::default());
    gz.write_all(rows.join("\n").as_bytes())?;
    gz.finish()?;
    let loaded = skip(TaskKind::HumanEval, &path).load()?;
    assert_eq!(loaded.tasks.len(), 1);
    assert_eq!(loaded.tasks[0].id, "he/H/0");
    assert_eq!(bad(&loaded.report), vec![(2, "test"), (3, "entry_point")]);
    Ok(())
}

#[test]
fn generic_jsonl_uses_the_field_map() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = write(
        &dir,
        "mine.jsonl",
        concat!(
            r##"{"uid": "x1", "chat": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}], "gold": 4}"##,
            "\n",
            r##"{"uid": "x2", "chat": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "gold": 1}"##,
            "\n",
            r##"{"uid": "x1", "chat": [{"role": "user", "content": "dup"}], "gold": 1}"##,
            "\n",
            r##"{"uid": "x3", "chat": [{"role": "user", "content": "no gold"}]}"##,
            "\n",
            r##"{"uid": 4, "chat": [{"role": "user", "content": "3+3?"}], "gold": "6"}"##,
            "\n",
        ),
    )?;
    let fields = FieldMap {
        id: Some("uid".into()),
        messages: Some("chat".into()),
        reference: Some("gold".into()),
        ..FieldMap::default()
    };
    let source = TaskSource { fields, split: Some("train".into()), ..skip(TaskKind::Jsonl, &path) };
    let loaded = source.load()?;
    let ids: Vec<&str> = loaded.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["mine/train/x1", "mine/train/4"]);
    assert_eq!(loaded.tasks[0].prompt, "2+2?");
    assert_eq!(loaded.tasks[0].messages.len(), 2);
    assert_eq!(loaded.tasks[0].reference.as_deref(), Some("4"));
    assert_eq!(bad(&loaded.report), vec![(2, "chat"), (3, "id"), (4, "gold")]);
    assert!(loaded.report.bad_rows[1].reason.contains("duplicate task id"));
    Ok(())
}

#[test]
fn generic_json_arrays_use_the_field_map() -> TestResult {
    let dir = tempfile::tempdir()?;
    let text = "[\n  {\"q\": \"a?\", \"a\": 1},\n  {\"q\": \"\", \"a\": 2},\n  {\"q\": \"c?\"}\n]";
    let fields = FieldMap { prompt: "q".into(), reference: Some("a".into()), ..FieldMap::default() };
    let loaded = TaskSource { fields, ..skip(TaskKind::Json, &write(&dir, "arr.json", text)?) }.load()?;
    assert_eq!(loaded.tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["arr/0"]);
    assert_eq!(bad(&loaded.report), vec![(3, "q"), (4, "a")]);
    assert_eq!(loaded.report.bad_rows[0].reason, "empty");
    Ok(())
}

#[test]
fn generic_parquet_reports_rows_by_number() -> TestResult {
    use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("t.parquet");
    let batch = RecordBatch::try_from_iter([
        ("question", Arc::new(StringArray::from(vec![Some("a?"), None, Some("c?")])) as ArrayRef),
        ("answer", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
    ])?;
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path)?, batch.schema(), None)?;
    w.write(&batch)?;
    w.close()?;
    let fields = FieldMap { prompt: "question".into(), reference: Some("answer".into()), ..FieldMap::default() };
    let loaded = TaskSource { fields, ..skip(TaskKind::Parquet, &path) }.load()?;
    assert_eq!(loaded.tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["t/0", "t/2"]);
    assert_eq!(loaded.tasks[1].reference.as_deref(), Some("3"));
    assert_eq!(bad(&loaded.report), vec![(2, "question")]);
    Ok(())
}

use std::sync::Arc;

#[test]
fn shuffle_is_pinned_and_limit_applies_after_it() -> TestResult {
    // Python reference (SplitMix64 + Fisher-Yates with multiply-shift, as in `shuffle`):
    //   M = 2**64 - 1
    //   def sm(s):
    //       s = (s + 0x9E3779B97F4A7C15) & M; z = s
    //       z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M; z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    //       return s, z ^ (z >> 31)
    //   def shuffle(xs, seed):
    //       s = seed
    //       for i in range(len(xs) - 1, 0, -1):
    //           s, r = sm(s); j = (r * (i + 1)) >> 64; xs[i], xs[j] = xs[j], xs[i]
    //       return xs
    //   shuffle(list(range(10)), 42)        -> [8, 3, 6, 5, 4, 0, 9, 2, 1, 7]
    //   shuffle(list(range(1319)), 7)[:5]   -> [117, 66, 1191, 844, 977]
    let mut xs: Vec<u32> = (0..10).collect();
    shuffle(&mut xs, 42);
    assert_eq!(xs, [8, 3, 6, 5, 4, 0, 9, 2, 1, 7]);
    let source =
        TaskSource { shuffle: true, seed: 7, limit: Some(5), ..TaskSource::builtin(TaskKind::Gsm8k, Some("test")) };
    let loaded = source.load()?;
    let ids: Vec<&str> = loaded.tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["gsm8k/test/117", "gsm8k/test/66", "gsm8k/test/1191", "gsm8k/test/844", "gsm8k/test/977"]);
    assert_eq!(loaded.report.rows_beyond_limit, 1314);
    Ok(())
}

#[test]
fn task_source_round_trips_through_toml_with_defaults() -> TestResult {
    let source: TaskSource = toml::from_str("task = \"humaneval\"\nlimit = 3\n[fields]\nprompt = \"q\"\n")?;
    assert_eq!(source.task, TaskKind::HumanEval);
    assert_eq!(source.limit, Some(3));
    assert_eq!(source.fields.prompt, "q");
    assert_eq!(source.on_bad_row, OnBadRow::Skip);
    assert!(toml::from_str::<TaskSource>("tsk = \"gsm8k\"").is_err(), "unknown keys are refused");
    Ok(())
}
