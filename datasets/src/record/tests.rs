//! Round trips of every record through Parquet in memory (proptest), and the TRL-facing schema contract.

use std::collections::BTreeMap;

use arrow_schema::DataType;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use super::*;
use crate::part::{read_bytes, write_to, ParquetOptions};
use crate::task::Message;

fn round_trip<R: Record>(rows: &[R], layout: R::Layout) -> crate::Result<Vec<R>> {
    let bytes = write_to(Vec::new(), rows, layout, &ParquetOptions { batch_rows: 3, ..Default::default() })?;
    read_bytes::<R>(bytes)
}

fn text() -> impl Strategy<Value = String> {
    // Unicode, empty strings, newlines and chat markup all must survive.
    prop_oneof![Just(String::new()), "[a-z ]{1,12}", "\\PC{0,20}", Just("<|im_start|>user\n½ × 3\n".to_string())]
}

fn finite() -> impl Strategy<Value = f64> {
    -1e6f64..1e6
}

fn messages(ending: &'static str) -> impl Strategy<Value = Vec<Message>> {
    (vec((prop_oneof![Just("system"), Just("user"), Just("assistant")], text()), 0..3), text()).prop_map(
        move |(head, last)| {
            let mut m: Vec<Message> = head.into_iter().map(|(r, c)| Message::new(r, c)).collect();
            m.push(Message::new(ending, last));
            m
        },
    )
}

prop_compose! {
    fn trajectory()(
        task in "[a-z]{1,5}/[0-9]{1,3}", index in 0u32..64, prompt in text(), prompt_messages in messages("user"),
        completion in text(), tokens in vec((any::<u32>(), -20f32..0.0), 0..40), finish in "stop|length",
        score in finite(), components in proptest::collection::btree_map("[a-z/]{1,8}", finite(), 0..3),
        extracted in option::of(text()), error in option::of(text()), seed in any::<u64>(),
        temperature in 0f32..2.0, top_k in 0u32..100, max_new in 1u32..4096,
    ) -> Trajectory {
        Trajectory {
            id: Trajectory::make_id(&task, index),
            run_id: "run-0123456789abcdef".into(),
            task_id: task,
            sample_index: index,
            prompt,
            prompt_messages,
            completion,
            token_ids: tokens.iter().map(|t| t.0).collect(),
            token_logprobs: tokens.iter().map(|t| t.1).collect(),
            finish_reason: finish,
            reward: RewardRecord { score, components, extracted, failure: None, error },
            sampling: SamplingRecord { temperature, top_p: 0.95, top_k, min_p: 0.0, max_new_tokens: max_new },
            seed,
            model: ModelRecord { id: "smollm2".into(), hash: "sha256:ab".into() },
        }
    }
}

fn side() -> impl Strategy<Value = PairSide> {
    ("[a-z]{1,4}#[0-9]", text(), finite(), -500f64..0.0).prop_map(|(trajectory_id, text, score, behaviour_logp)| {
        PairSide { trajectory_id, text, score, behaviour_logp }
    })
}

prop_compose! {
    fn pair()(
        task in "[a-z]{1,5}/[0-9]{1,3}", prompt in text(), prompt_messages in messages("user"), step in any::<bool>(),
        prefix in text(), chosen in side(), rejected in side(), terminal in any::<bool>(),
        weight in 0f64..4.0, label_smoothing in 0f64..0.5,
    ) -> PreferencePair {
        let kind = if step { PairKind::Step } else { PairKind::Outcome };
        PreferencePair {
            run_id: "run-1".into(),
            task_id: task,
            prompt,
            prompt_messages,
            prefix: if step { prefix } else { String::new() },
            chosen,
            rejected,
            kind,
            terminal: !step || terminal,
            weight,
            label_smoothing,
        }
    }
}

prop_compose! {
    fn node()(
        node_id in 0u64..1000, parent in option::of(0u64..1000), depth in 0u32..20, text in text(),
        tokens in vec(any::<u32>(), 0..20), lp in -100f64..0.0, visits in any::<u64>(), value in finite(),
        reward in option::of(finite()), terminal in any::<bool>(), detail in detail(),
    ) -> TreeNode {
        TreeNode {
            run_id: "run-1".into(), task_id: "t/1".into(), tree_id: "t/1/tree0".into(), node_id, parent_id: parent,
            depth, text, token_ids: tokens, logprob_sum: lp, visits, value, reward, terminal, detail,
        }
    }
}

prop_compose! {
    fn detail()(
        kind in "[a-z]{0,7}", seed in any::<u64>(), token_logprobs in vec(-50f32..0.0, 0..10),
        critic in option::of(finite()), components in vec(("[a-z/]{1,8}", finite()), 0..3),
        texts in vec(option::of(text()), 6), exec_ok in option::of(any::<bool>()),
    ) -> NodeDetail {
        NodeDetail {
            kind, seed, token_logprobs, critic, reward_components: components.into_iter().collect(),
            reward_extracted: texts[0].clone(), reward_failure: texts[1].clone(), reward_error: texts[2].clone(),
            exec_ok, exec_answer: texts[3].clone(), exec_feedback: texts[4].clone(), origin: texts[5].clone(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn trajectories_round_trip(rows in vec(trajectory(), 0..8)) {
        prop_assert_eq!(round_trip(&rows, ()).unwrap(), rows);
    }

    #[test]
    fn pairs_round_trip_in_both_forms(rows in vec(pair(), 0..8)) {
        prop_assert_eq!(round_trip(&rows, PairFormat::Standard).unwrap(), rows.clone());
        prop_assert_eq!(round_trip(&rows, PairFormat::Conversational).unwrap(), rows);
    }

    /// pyarrow and pandas write snappy by default; such files must read as well as Orchard's own zstd ones.
    #[test]
    fn pairs_rewritten_with_snappy_read_back(rows in vec(pair(), 1..6)) {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let zstd = write_to(Vec::new(), &rows, PairFormat::Standard, &ParquetOptions::default()).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(zstd)).unwrap();
        let schema = reader.schema().clone();
        let props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build();
        let mut snappy = Vec::new();
        let mut writer = parquet::arrow::ArrowWriter::try_new(&mut snappy, schema, Some(props)).unwrap();
        for batch in reader.build().unwrap() {
            writer.write(&batch.unwrap()).unwrap();
        }
        writer.close().unwrap();
        prop_assert_eq!(read_bytes::<PreferencePair>(snappy).unwrap(), rows);
    }

    #[test]
    fn tree_nodes_round_trip(rows in vec(node(), 0..8)) {
        prop_assert_eq!(round_trip(&rows, ()).unwrap(), rows);
    }

    #[test]
    fn kto_and_prm_rows_round_trip(
        kto in vec((text(), text(), any::<bool>(), finite()), 0..6),
        prm in vec((text(), vec((text(), finite()), 0..5)), 0..6),
    ) {
        let kto: Vec<KtoRow> = kto.into_iter().enumerate().map(|(i, (p, c, label, score))| KtoRow {
            prompt: p, completion: c, label, task_id: format!("t/{i}"), trajectory_id: format!("t/{i}#0"), score,
            behaviour_logp: -1.5,
        }).collect();
        prop_assert_eq!(round_trip(&kto, ()).unwrap(), kto);
        let prm: Vec<PrmRow> = prm.into_iter().enumerate().map(|(i, (p, steps))| PrmRow {
            prompt: p, completions: steps.iter().map(|s| s.0.clone()).collect(), labels: steps.iter().map(|s| s.1).collect(),
            task_id: format!("t/{i}"), tree_id: format!("t/{i}/tree0"), leaf_id: i as u64,
        }).collect();
        prop_assert_eq!(round_trip(&prm, ()).unwrap(), prm);
    }
}

#[test]
fn trajectory_columns_carry_the_derived_sums() -> crate::Result<()> {
    let t = Trajectory {
        id: "a/1#0".into(),
        task_id: "a/1".into(),
        token_ids: vec![1, 2, 3],
        token_logprobs: vec![-0.5, -0.25, -0.125],
        reward: RewardRecord {
            score: 1.0,
            components: BTreeMap::from([("correct".into(), 1.0)]),
            ..Default::default()
        },
        ..Default::default()
    };
    let batch = Trajectory::to_batch(&[t], ())?;
    let sum = batch.column_by_name(trajectory::LOGPROB_SUM).expect("column");
    let sum = arrow_array::cast::AsArray::as_primitive::<arrow_array::types::Float64Type>(sum.as_ref());
    assert_eq!(sum.value(0), -0.875);
    assert_eq!(batch.schema().as_ref(), Trajectory::schema(()).as_ref());
    Ok(())
}

#[test]
fn pair_schemas_match_trl_dpo_and_namespace_everything_else() {
    const TRL_COLUMNS: [&str; 3] = ["prompt", "chosen", "rejected"];
    // Columns TRL's DPOTrainer reads besides the three above: ours must never take these names.
    const TRL_RESERVED: [&str; 6] =
        ["ref_chosen_logps", "ref_rejected_logps", "tools", "chat_template_kwargs", "images", "image"];
    let standard = pair::schema(PairFormat::Standard);
    let conversational = pair::schema(PairFormat::Conversational);
    for name in TRL_COLUMNS {
        assert_eq!(standard.field_with_name(name).map(|f| f.data_type().clone()).ok(), Some(DataType::Utf8));
        assert_eq!(conversational.field_with_name(name).map(|f| f.data_type().clone()).ok(), Some(message_list_type()));
    }
    for schema in [&standard, &conversational] {
        for f in schema.fields() {
            assert!(TRL_COLUMNS.contains(&f.name().as_str()) || f.name().starts_with("meta_"), "{}", f.name());
            assert!(!TRL_RESERVED.contains(&f.name().as_str()));
        }
    }
    let DataType::List(item) = message_list_type() else { panic!() };
    let DataType::Struct(fields) = item.data_type() else { panic!() };
    assert_eq!(fields.iter().map(|f| f.name().as_str()).collect::<Vec<_>>(), ["role", "content"]);
}

#[test]
fn conversational_pairs_need_a_prompt_ending_in_a_user_turn() {
    let mut p = PreferencePair {
        run_id: "r".into(),
        task_id: "t/1".into(),
        prompt: "q".into(),
        prompt_messages: vec![Message::user("q"), Message::assistant("a")],
        prefix: String::new(),
        chosen: PairSide::default(),
        rejected: PairSide::default(),
        kind: PairKind::Outcome,
        terminal: true,
        weight: 1.0,
        label_smoothing: 0.0,
    };
    let err = PreferencePair::to_batch(std::slice::from_ref(&p), PairFormat::Conversational).unwrap_err();
    assert!(err.to_string().contains("task t/1") && err.to_string().contains("ends with \"assistant\""), "{err}");
    assert!(PreferencePair::to_batch(std::slice::from_ref(&p), PairFormat::Standard).is_ok());
    p.prompt_messages.clear();
    assert!(PreferencePair::to_batch(&[p], PairFormat::Conversational).is_err());
}

#[test]
fn step_pairs_fold_the_prefix_per_form() -> crate::Result<()> {
    let p = PreferencePair {
        run_id: "r".into(),
        task_id: "t/1".into(),
        prompt: "<user>2+3*4?</user>".into(),
        prompt_messages: vec![Message::user("2+3*4?")],
        prefix: "3*4=12. ".into(),
        chosen: PairSide { text: "2+12=14.".into(), score: 1.0, ..Default::default() },
        rejected: PairSide { text: "2+12=15.".into(), ..Default::default() },
        kind: PairKind::Step,
        terminal: true,
        weight: 0.5,
        label_smoothing: 0.25,
    };
    let b = PreferencePair::to_batch(std::slice::from_ref(&p), PairFormat::Standard)?;
    let prompt = arrow_array::cast::AsArray::as_string::<i32>(b.column(0).as_ref()).value(0).to_string();
    assert_eq!(prompt, "<user>2+3*4?</user>3*4=12. ");
    let b = PreferencePair::to_batch(std::slice::from_ref(&p), PairFormat::Conversational)?;
    let rows = PreferencePair::from_batch(&b)?;
    assert_eq!(rows, vec![p]);
    Ok(())
}

/// `batch` without the columns named in `drop`, as a file written before they existed would read.
fn without(batch: &RecordBatch, drop: &[&str]) -> RecordBatch {
    let keep: Vec<usize> =
        (0..batch.num_columns()).filter(|&i| !drop.contains(&batch.schema().field(i).name().as_str())).collect();
    batch.project(&keep).expect("projection")
}

#[test]
fn pairs_and_nodes_written_before_the_search_columns_still_read() -> crate::Result<()> {
    let p = PreferencePair {
        run_id: "r".into(),
        task_id: "t/1".into(),
        prompt: "q".into(),
        prompt_messages: vec![Message::user("q")],
        prefix: String::new(),
        chosen: PairSide { text: "a".into(), score: 1.0, ..Default::default() },
        rejected: PairSide { text: "b".into(), ..Default::default() },
        kind: PairKind::Outcome,
        terminal: true,
        weight: 2.0,
        label_smoothing: 0.1,
    };
    let old = without(
        &PreferencePair::to_batch(std::slice::from_ref(&p), PairFormat::Standard)?,
        &[pair::META_WEIGHT, pair::META_LABEL_SMOOTHING],
    );
    let back = PreferencePair::from_batch(&old)?;
    assert_eq!(back, vec![PreferencePair { weight: 1.0, label_smoothing: 0.0, ..p }]);

    let n = TreeNode {
        run_id: "r".into(),
        task_id: "t/1".into(),
        tree_id: "t/1/tree0".into(),
        text: "x".into(),
        detail: NodeDetail { kind: "step".into(), seed: 9, critic: Some(0.5), ..Default::default() },
        ..Default::default()
    };
    let batch = TreeNode::to_batch(std::slice::from_ref(&n), ())?;
    let detail_columns: Vec<String> = batch.schema().fields().iter().skip(13).map(|f| f.name().clone()).collect();
    let names: Vec<&str> = detail_columns.iter().map(String::as_str).collect();
    let back = TreeNode::from_batch(&without(&batch, &names))?;
    assert_eq!(back, vec![TreeNode { detail: NodeDetail::default(), ..n }]);
    Ok(())
}
