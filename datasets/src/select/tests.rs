use proptest::prelude::*;

use super::*;
use crate::record::RewardRecord;

fn traj(task: &str, index: u32, completion: &str, score: f64) -> Trajectory {
    Trajectory {
        id: Trajectory::make_id(task, index),
        run_id: "run-x".into(),
        task_id: task.into(),
        sample_index: index,
        prompt: "Q?".into(),
        completion: completion.into(),
        token_logprobs: vec![-1.0; completion.len().min(4)],
        reward: RewardRecord::new(score),
        ..Default::default()
    }
}

fn ids(pairs: &[PreferencePair]) -> Vec<(String, String)> {
    pairs.iter().map(|p| (p.chosen.trajectory_id.clone(), p.rejected.trajectory_id.clone())).collect()
}

fn pair_ids(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn all_correct_incorrect_pairs_every_combination_in_diagonal_order() {
    let t = [traj("t", 0, "a", 1.0), traj("t", 1, "b", 0.0), traj("t", 2, "c", 1.0), traj("t", 3, "d", 0.0)];
    let pairs = select_pairs(&t, &PairSelection::default());
    assert_eq!(ids(&pairs), pair_ids(&[("t#0", "t#1"), ("t#2", "t#3"), ("t#0", "t#3"), ("t#2", "t#1")]));
    let p = &pairs[0];
    assert_eq!((p.kind, p.terminal, p.margin()), (PairKind::Outcome, true, 1.0));
    assert_eq!(p.chosen.behaviour_logp, -1.0);
    assert_eq!(p.prompt, "Q?");
    // At most k per prompt keeps the first, distinct-on-both-sides pairs.
    let k2 = select_pairs(&t, &PairSelection { max_per_prompt: Some(2), ..Default::default() });
    assert_eq!(ids(&k2), pair_ids(&[("t#0", "t#1"), ("t#2", "t#3")]));
}

#[test]
fn identical_completions_are_deduplicated_before_pairing() {
    let t =
        [traj("t", 0, "same", 1.0), traj("t", 1, "same", 1.0), traj("t", 2, "wrong", 0.0), traj("t", 3, "wrong", 0.0)];
    assert_eq!(ids(&select_pairs(&t, &PairSelection::default())), pair_ids(&[("t#0", "t#2")]));
}

#[test]
fn margins_thresholds_and_unscorable_rows_filter_pairs() {
    let mut broken = traj("t", 4, "err", 0.0);
    broken.reward.error = Some("no reference".into());
    let t = [traj("t", 0, "a", 1.0), traj("t", 1, "b", 0.1), traj("t", 2, "c", 0.0), traj("t", 3, "d", 0.95), broken];
    let all = select_pairs(&t, &PairSelection::default());
    // 0.95 is below the default threshold 1.0, so it is an (incorrect) rejected; the errored row never appears.
    assert_eq!(ids(&all), pair_ids(&[("t#0", "t#2"), ("t#0", "t#1"), ("t#0", "t#3")]));
    let wide = select_pairs(&t, &PairSelection { min_margin: 0.5, ..Default::default() });
    assert_eq!(ids(&wide), pair_ids(&[("t#0", "t#2"), ("t#0", "t#1")]));
    let low = select_pairs(&t, &PairSelection { correct_threshold: 0.9, ..Default::default() });
    assert_eq!(low.len(), 4);
}

#[test]
fn best_vs_worst_pairs_extremes_and_stops_at_zero_margin() {
    let t = [traj("t", 0, "a", 0.5), traj("t", 1, "b", 1.0), traj("t", 2, "c", 0.0), traj("t", 3, "d", 0.5)];
    let policy = PairSelection { strategy: PairStrategy::BestVsWorst, ..Default::default() };
    assert_eq!(ids(&select_pairs(&t, &policy)), pair_ids(&[("t#1", "t#2")]));
    let k = PairSelection { max_per_prompt: Some(5), ..policy };
    // Second pair would be 0.5 vs 0.5: no preference, so it stops.
    assert_eq!(ids(&select_pairs(&t, &k)), pair_ids(&[("t#1", "t#2")]));
    let same = [traj("t", 0, "a", 1.0), traj("t", 1, "b", 1.0)];
    assert!(select_pairs(&same, &policy).is_empty());
}

#[test]
fn trajectories_of_several_tasks_pair_within_their_task() {
    let t = [traj("a", 0, "x", 1.0), traj("b", 0, "x", 1.0), traj("a", 1, "y", 0.0), traj("b", 1, "y", 0.0)];
    let pairs = select_pairs(&t, &PairSelection::default());
    assert_eq!(ids(&pairs), pair_ids(&[("a#0", "a#1"), ("b#0", "b#1")]));
}

proptest! {
    #[test]
    fn selection_is_order_independent_and_respects_the_policy(
        scores in proptest::collection::vec((0u8..4, 0u8..6), 0..12),
        k in proptest::option::of(1usize..5), min_margin in 0f64..1.0, best in any::<bool>(), seed in any::<u64>(),
    ) {
        let t: Vec<Trajectory> = scores.iter().enumerate()
            .map(|(i, (s, text))| traj("t", i as u32, &format!("c{text}"), f64::from(*s) / 3.0)).collect();
        let strategy = if best { PairStrategy::BestVsWorst } else { PairStrategy::AllCorrectIncorrect };
        let policy = PairSelection { strategy, max_per_prompt: k, min_margin, correct_threshold: 0.5 };
        let pairs = select_pairs(&t, &policy);
        let mut shuffled = t.clone();
        crate::loaders::shuffle(&mut shuffled, seed);
        prop_assert_eq!(&select_pairs(&shuffled, &policy), &pairs);
        let cap = k.unwrap_or(if best { 1 } else { usize::MAX });
        prop_assert!(pairs.len() <= cap);
        let mut seen = std::collections::HashSet::new();
        for p in &pairs {
            prop_assert!(p.margin() > 0.0 && p.margin() >= min_margin);
            prop_assert!(p.chosen.text != p.rejected.text);
            prop_assert!(seen.insert((p.chosen.text.clone(), p.rejected.text.clone())), "duplicate pair");
            if !best {
                prop_assert!(p.chosen.score >= 0.5 && p.rejected.score < 0.5);
            }
        }
    }
}
