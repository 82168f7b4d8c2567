//! Unit and property tests of the searches and pair policies with the scripted policy and hand-built trees.

use orchard_datasets::{Message, PairKind, TreeNode};
use orchard_rewards::{Outcome, Reward, Task};
use proptest::prelude::*;

use crate::bon::BonConfig;
use crate::grow::{grow_all, grow_tree, Algo, SearchTask};
use crate::mcts::{length_penalised_prior, puct, ucb1, Backup, Mcts, MctsConfig, Selection};
use crate::pairs::{extract, word_overlap, PairRule};
use crate::policy::{EndReason, Extension};
use crate::testing::{ScriptedPolicy, ScriptedReward};
use crate::toc::TocConfig;
use crate::tree::{NodeId, NodeKind, Tree, Verdict};

type R = anyhow::Result<()>;

fn task(i: usize) -> SearchTask {
    let q = format!("question {i}");
    SearchTask {
        id: format!("t/{i}"),
        messages: vec![Message::user(q.clone())],
        question: q.clone(),
        reward_task: Task::new(q),
    }
}

fn ext(text: &str, ended: bool, lp: f32) -> Extension {
    Extension {
        tokens: text.bytes().map(u32::from).collect(),
        logprobs: vec![lp; text.len()],
        text: text.into(),
        generated: text.len(),
        end: Some(if ended { EndReason::Eos } else { EndReason::Step }),
    }
}

/// A hand-built tree: root → children with the given (visits, q), as step nodes.
fn star(children: &[(u64, f64)]) -> Tree {
    let mut t = Tree::new("t/1", vec![Message::user("q")], "Q\n", b"Q\n".iter().map(|&b| u32::from(b)).collect(), 1);
    for (i, &(n, q)) in children.iter().enumerate() {
        let id = t.add_child(0, NodeKind::Step, ext(&format!("step {i}\n"), false, -0.1), i as u64);
        t.nodes[id].visits = n;
        t.nodes[id].q = q;
        t.nodes[0].visits += n;
    }
    t
}

#[test]
fn ucb1_and_puct_match_their_formulas() {
    // Python: q + c*sqrt(log(max(N,1))/(1+n)) ; q + c*p*sqrt(N)/(1+n)
    // >>> 0.5 + 1.4142135623730951*math.sqrt(math.log(10)/(1+3))  -> 1.5729830131446736
    assert!((ucb1(0.5, 10.0, 3.0, std::f64::consts::SQRT_2) - 1.572_983_013_144_673_6).abs() < 1e-12);
    // An unvisited parent: ln(1) = 0, only Q counts.
    assert_eq!(ucb1(0.25, 0.0, 0.0, 2.0), 0.25);
    // >>> 0.5 + 1.0*0.3*math.sqrt(9)/(1+2) -> 0.8
    assert!((puct(0.5, 0.3, 9.0, 2.0, 1.0) - 0.8).abs() < 1e-12);
    // >>> math.exp(-2.0 / 4**1.25) -> 0.7021885013265596
    assert!((length_penalised_prior(-2.0, 4, 1.25) - 0.702_188_501_326_559_6).abs() < 1e-15);
}

#[test]
fn ucb1_selection_picks_the_child_the_formula_ranks_first() -> R {
    // N(parent) = 10. Child a: n=6, q=0.5 -> 0.5 + √2·sqrt(ln10/7) = 1.3111; child b: n=3, q=0.3 -> 1.3730;
    // child c: n=1, q=0.0 -> 1.5174. UCB1 picks c.
    let t = star(&[(6, 0.5), (3, 0.3), (1, 0.0)]);
    let m =
        Mcts::new(MctsConfig { selection: Selection::Ucb1 { c_exp: std::f64::consts::SQRT_2 }, ..Default::default() })?;
    let scores: Vec<f64> = (1..=3).map(|c| m.child_score(&t, 0, c)).collect();
    // >>> [0.5 + math.sqrt(2*math.log(10)/7), 0.3 + math.sqrt(2*math.log(10)/4), math.sqrt(2*math.log(10)/2)]
    let want = [1.311_098_918_222_158_6, 1.372_983_013_144_673_6, 1.517_427_129_385_146_5];
    assert_eq!(scores.len(), want.len());
    for (s, w) in scores.iter().zip(want) {
        assert!((s - w).abs() < 1e-12, "{s} vs {w}");
    }
    assert_eq!(m.select_child(&t, 0), Some(3));
    // With little exploration, the best Q wins.
    let greedy = Mcts::new(MctsConfig { selection: Selection::Ucb1 { c_exp: 0.01 }, ..Default::default() })?;
    assert_eq!(greedy.select_child(&t, 0), Some(1));
    Ok(())
}

#[test]
fn puct_selection_uses_the_length_penalised_prior() -> R {
    // Two unvisited-equal children with different log-probs: the likelier step has the larger prior and wins.
    let mut t = star(&[(2, 0.5), (2, 0.5)]);
    t.nodes[1].logprobs = vec![-2.0; 7];
    t.nodes[2].logprobs = vec![-0.1; 7];
    let m = Mcts::new(MctsConfig {
        selection: Selection::Puct { c_puct: 1.0, length_penalty: 1.25 },
        ..Default::default()
    })?;
    // >>> p = lambda lp: math.exp(lp*7/7**1.25); [0.5 + p(lp)*math.sqrt(4)/3 for lp in (-2.0, -0.1)]
    assert!((m.child_score(&t, 0, 1) - 0.694_944_297_706_773_9).abs() < 1e-9);
    assert!((m.child_score(&t, 0, 2) - 1.126_915_244_700_049_4).abs() < 1e-6);
    assert_eq!(m.select_child(&t, 0), Some(2));
    Ok(())
}

#[test]
fn mean_backup_matches_agent_q_eq_8() -> R {
    // root(N=2,Q=0.5) → a(N=1,Q=1) → b(N=0). Back up R=0 along root,a,b:
    // root: (0.5*2+0)/3 = 1/3; a: (1*1+0)/2 = 0.5; b: 0.
    let mut t = star(&[(1, 1.0)]);
    t.nodes[0].visits = 2;
    t.nodes[0].q = 0.5;
    let b = t.add_child(1, NodeKind::Step, ext("x\n", false, -0.1), 9);
    let m = Mcts::new(MctsConfig { backup: Backup::Mean, ..Default::default() })?;
    m.backup(&mut t, &[0, 1, b], 0.0);
    assert_eq!((t.nodes[0].visits, t.nodes[1].visits, t.nodes[b].visits), (3, 2, 1));
    assert!((t.nodes[0].q - 1.0 / 3.0).abs() < 1e-12);
    assert!((t.nodes[1].q - 0.5).abs() < 1e-12);
    assert_eq!(t.nodes[b].q, 0.0);
    Ok(())
}

#[test]
fn visit_weighted_backup_matches_mcts_dpo() -> R {
    // root → a(N=3, Q=0.2), c(N=1, Q=1.0); back up R=1 into a new child b of a with γ = 0.9.
    // b: N=1, Q=1. a: its visited children = {b}: Q = 0.9*1 = 0.9, N=4.
    // root: children a (N=4,Q=0.9), c (N=1,Q=1): Q = 0.9*(4*0.9 + 1*1)/5 = 0.828, N=5.
    let mut t = star(&[(3, 0.2), (1, 1.0)]);
    let b = t.add_child(1, NodeKind::Step, ext("x\n", false, -0.1), 9);
    let m = Mcts::new(MctsConfig { backup: Backup::VisitWeighted { gamma: 0.9 }, ..Default::default() })?;
    m.backup(&mut t, &[0, 1, b], 1.0);
    assert_eq!(t.nodes[b].q, 1.0);
    assert!((t.nodes[1].q - 0.9).abs() < 1e-12);
    assert_eq!(t.nodes[1].visits, 4);
    assert!((t.nodes[0].q - 0.828).abs() < 1e-12, "{}", t.nodes[0].q);
    assert_eq!(t.nodes[0].visits, 5);
    Ok(())
}

fn mcts(cfg: MctsConfig) -> Algo {
    Algo::Mcts(Mcts::new(cfg).expect("valid config"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever the knobs, no virtual loss survives a search, visit counts add up, and a child's visits never
    /// exceed its parent's.
    #[test]
    fn virtual_loss_is_always_undone(
        k in 1usize..4, parallel in 1usize..6, iterations in 1usize..30, seed in any::<u64>(), critic in any::<bool>(),
        puct_rule in any::<bool>(), weighted in any::<bool>(), fail_after in proptest::option::of(0usize..6),
    ) {
        let cfg = MctsConfig {
            k, parallel, iterations, critic, max_depth: 4,
            selection: if puct_rule { Selection::Puct { c_puct: 1.0, length_penalty: 1.25 } } else { Selection::default() },
            backup: if weighted { Backup::VisitWeighted { gamma: 1.0 } } else { Backup::Mean },
            ..Default::default()
        };
        let m = Mcts::new(cfg).expect("valid");
        let policy = ScriptedPolicy::new(3).failing_after(fail_after);
        let start = crate::Policy::start(&policy, &task(0).messages).expect("start");
        let mut tree = Tree::new("t/0", task(0).messages, &start.text, start.tokens, seed);
        let result = m.grow(&policy, &ScriptedReward::default(), &Task::new("q"), &mut tree);
        prop_assert!(tree.nodes.iter().all(|n| n.virtual_loss == 0));
        if fail_after.is_none() {
            let stats = result.expect("no failure");
            prop_assert!(stats.iterations <= iterations);
            prop_assert_eq!(tree.root().visits as usize, stats.iterations);
        } else {
            prop_assert!(result.is_err() || tree.root().visits as usize <= iterations);
        }
        for (i, n) in tree.nodes.iter().enumerate().skip(1) {
            let p = n.parent.expect("non-root");
            prop_assert!(n.visits <= tree.nodes[p].visits, "node {} has more visits than its parent", i);
        }
    }

    /// Trees round-trip through their rows.
    #[test]
    fn trees_round_trip_through_rows(seed in any::<u64>(), iterations in 1usize..20) {
        let algo = mcts(MctsConfig { iterations, critic: true, ..Default::default() });
        let grown = grow_tree(&algo, &ScriptedPolicy::new(3), &ScriptedReward::default(), &task(seed as usize % 7), seed).expect("grows");
        let back = Tree::from_rows(&grown.tree.to_rows("run")).expect("rebuilds");
        prop_assert_eq!(back, grown.tree);
    }
}

#[test]
fn trees_round_trip_through_parquet_and_give_the_same_pairs() -> R {
    let algo = mcts(MctsConfig { iterations: 24, critic: true, ..Default::default() });
    let tasks: Vec<SearchTask> = (0..4).map(task).collect();
    let mut trees = Vec::new();
    for t in &tasks {
        trees.push(grow_tree(&algo, &ScriptedPolicy::new(3), &ScriptedReward::default(), t, 5)?.tree);
    }
    let rows: Vec<TreeNode> = trees.iter().flat_map(|t| t.to_rows("run")).collect();
    let mut bytes = Vec::new();
    orchard_datasets::part::write_to(&mut bytes, &rows, (), &orchard_datasets::ParquetOptions::default())?;
    let read: Vec<TreeNode> = orchard_datasets::part::read_bytes(bytes)?;
    assert_eq!(read, rows);
    let back = Tree::all_from_rows(read)?;
    assert_eq!(back, trees);
    for rule in [
        PairRule::AgentQ { theta: 0.1, alpha: 0.5 },
        PairRule::MctsDpo { alpha: 0.5 },
        PairRule::StepDpo { correct_threshold: 1.0, alpha: 0.5 },
        PairRule::Outcome { correct_threshold: 1.0, max_per_prompt: None },
    ] {
        for (a, b) in trees.iter().zip(&back) {
            assert_eq!(extract(a, &rule, "run"), extract(b, &rule, "run"), "{rule:?}");
        }
    }
    Ok(())
}

#[test]
fn same_seed_gives_identical_trees_with_one_and_two_workers() -> R {
    let tasks: Vec<SearchTask> = (0..8).map(task).collect();
    for algo in [
        mcts(MctsConfig { iterations: 20, parallel: 3, critic: true, ..Default::default() }),
        Algo::Toc(TocConfig::default()),
        Algo::Bon(BonConfig::default()),
    ] {
        let run = |workers: usize| -> anyhow::Result<Vec<Tree>> {
            let policy = ScriptedPolicy::new(4);
            let mut out: Vec<Option<Tree>> = vec![None; tasks.len()];
            grow_all(&algo, &policy, &ScriptedReward::default(), &tasks, 11, workers, |i, r| {
                out[i] = Some(r?.tree);
                Ok(())
            })?;
            Ok(out.into_iter().map(|t| t.expect("every task grown")).collect())
        };
        let (one, two) = (run(1)?, run(2)?);
        assert_eq!(one, two, "{}", algo.name());
        assert_ne!(one[0], run_other_seed(&algo, &tasks[0])?, "the seed matters");
    }
    Ok(())
}

fn run_other_seed(algo: &Algo, t: &SearchTask) -> anyhow::Result<Tree> {
    Ok(grow_tree(algo, &ScriptedPolicy::new(4), &ScriptedReward::default(), t, 12)?.tree)
}

#[test]
fn several_selections_in_flight_batch_their_expansions() -> R {
    let policy = ScriptedPolicy::new(6);
    let algo = mcts(MctsConfig { iterations: 16, parallel: 4, k: 3, ..Default::default() });
    grow_tree(&algo, &policy, &ScriptedReward::default(), &task(1), 3)?;
    let sizes = policy.batch_sizes();
    assert!(sizes.iter().any(|&s| s > 3), "some batch holds the proposals of several leaves: {sizes:?}");
    Ok(())
}

#[test]
fn a_reward_that_panics_marks_its_node_failed_and_the_search_goes_on() -> R {
    let reward = ScriptedReward { panic_on: Some("answer 2".into()) };
    let algo = mcts(MctsConfig { iterations: 40, ..Default::default() });
    let tree = grow_tree(&algo, &ScriptedPolicy::new(3), &reward, &task(3), 2)?.tree;
    let failed: Vec<&Verdict> =
        tree.nodes.iter().filter_map(|n| n.verdict.as_ref()).filter(|v| v.error.is_some()).collect();
    assert!(!failed.is_empty(), "some solution ends in `answer 2`");
    assert!(failed.iter().all(|v| v.error.as_deref().is_some_and(|e| e.contains("reward panicked"))));
    assert!(tree.nodes.iter().any(|n| n.score().is_some()), "other nodes were scored");
    assert_eq!(tree.root().visits, 40, "every iteration ran");
    // Failed nodes never enter pairs.
    for rule in [
        PairRule::Outcome { correct_threshold: 1.0, max_per_prompt: None },
        PairRule::AgentQ { theta: 0.0, alpha: 1.0 },
    ] {
        for p in extract(&tree, &rule, "run") {
            assert!(!p.chosen.text.contains("answer 2") && !p.rejected.text.contains("answer 2"), "{p:?}");
        }
    }
    Ok(())
}

#[test]
fn budgets_stop_the_search() -> R {
    let algo = mcts(MctsConfig { iterations: 1000, max_tokens: 200, max_depth: 3, ..Default::default() });
    let g = grow_tree(&algo, &ScriptedPolicy::new(6), &ScriptedReward::default(), &task(2), 1)?;
    assert!(
        g.generated >= 200 && g.generated < 200 + 4 * 64 + 256,
        "one walk past the budget at most: {}",
        g.generated
    );
    assert!(g.tree.nodes.iter().all(|n| n.depth <= 4), "steps stop at max depth (rollouts one below)");
    Ok(())
}

// ---- pair policies on hand-built trees ----

/// root → a (Q .9, N 5), b (Q .5, N 3), c (Q .0, N 2), d (unexplored); a → a1 (Q 1, N 3, terminal correct),
/// a2 (Q 0, N 2, terminal wrong).
fn hand_tree() -> Tree {
    let mut t = Tree::new("t/9", vec![Message::user("q")], "Q\n", vec![81, 10], 0);
    let add = |t: &mut Tree, parent: NodeId, text: &str, n: u64, q: f64, score: Option<f64>| {
        let id = t.add_child(parent, NodeKind::Step, ext(text, score.is_some(), -0.5), 0);
        t.nodes[id].visits = n;
        t.nodes[id].q = q;
        t.nodes[id].verdict = score.map(|s| Verdict { score: s, ..Default::default() });
        id
    };
    let a = add(&mut t, 0, "a = 3 * 4 = 12\n", 5, 0.9, None);
    add(&mut t, 0, "b = 3 + 4 = 7\n", 3, 0.5, None);
    add(&mut t, 0, "c = 3 - 4\n", 2, 0.0, None);
    add(&mut t, 0, "d unexplored\n", 0, 0.0, None);
    add(&mut t, a, "answer 12", 3, 1.0, Some(1.0));
    add(&mut t, a, "answer 13", 2, 0.0, Some(0.0));
    t.nodes[0].visits = 10;
    t
}

fn texts(pairs: &[orchard_datasets::PreferencePair]) -> Vec<(String, String, String)> {
    pairs.iter().map(|p| (p.prefix.clone(), p.chosen.text.clone(), p.rejected.text.clone())).collect()
}

#[test]
fn agentq_pairs_every_explored_sibling_pair_with_a_large_enough_gap() {
    let t = hand_tree();
    let got = texts(&extract(&t, &PairRule::AgentQ { theta: 0.45, alpha: 1.0 }, "r"));
    // root: (a,b) gap .4 < .45 no; (a,c) .9 yes; (b,c) .5 yes; d is unexplored. a: (a1,a2) 1.0 yes.
    let want = vec![
        ("".into(), "a = 3 * 4 = 12\n".into(), "c = 3 - 4\n".into()),
        ("".into(), "b = 3 + 4 = 7\n".into(), "c = 3 - 4\n".into()),
        ("a = 3 * 4 = 12\n".into(), "answer 12".into(), "answer 13".into()),
    ];
    assert_eq!(got, want);
    let all = extract(&t, &PairRule::AgentQ { theta: 0.0, alpha: 1.0 }, "r");
    assert_eq!(all.len(), 4);
    assert!(all.iter().all(|p| p.kind == PairKind::Step));
    assert!(all[3].terminal && !all[0].terminal);
}

#[test]
fn mcts_dpo_pairs_best_and_worst_sibling_along_the_most_visited_path() {
    let t = hand_tree();
    let pairs = extract(&t, &PairRule::MctsDpo { alpha: 1.0 }, "r");
    assert_eq!(
        texts(&pairs),
        vec![
            ("".into(), "a = 3 * 4 = 12\n".into(), "c = 3 - 4\n".into()),
            ("a = 3 * 4 = 12\n".into(), "answer 12".into(), "answer 13".into()),
        ]
    );
    // ε = min(1 - 1/(1 + N_l/N_w), .5): root 1 - 1/(1 + 2/5) = 2/7; a 1 - 1/(1 + 2/3) = 0.4.
    assert!((pairs[0].label_smoothing - 2.0 / 7.0).abs() < 1e-12);
    assert!((pairs[1].label_smoothing - 0.4).abs() < 1e-12);
}

#[test]
fn itool_pairs_max_and_min_child_under_its_filters() {
    let mut t = hand_tree();
    let got =
        texts(&extract(&t, &PairRule::ITool { min_gap: 0.1, min_chosen: -0.3, max_overlap: 0.95, alpha: 1.0 }, "r"));
    assert_eq!(
        got,
        vec![
            ("".into(), "a = 3 * 4 = 12\n".into(), "c = 3 - 4\n".into()),
            ("a = 3 * 4 = 12\n".into(), "answer 12".into(), "answer 13".into()),
        ]
    );
    // Gap below 0.1 at the root, chosen below -0.3 under a: no pairs.
    t.nodes[1].q = 0.05;
    t.nodes[2].q = 0.0;
    t.nodes[5].q = -0.4;
    t.nodes[6].q = -0.9;
    assert!(
        extract(&t, &PairRule::ITool { min_gap: 0.1, min_chosen: -0.3, max_overlap: 0.95, alpha: 1.0 }, "r").is_empty()
    );
    // Near-identical texts are filtered by overlap.
    assert!(word_overlap("x = 1 + 2", "x = 1 + 2") > 0.95);
    assert!((word_overlap("a b c d", "a b c e") - 0.75).abs() < 1e-12);
}

#[test]
fn step_dpo_pairs_the_first_wrong_step_with_a_correct_continuation() {
    let mut t = hand_tree();
    // Give b a wrong terminal below it (scored, no correct), leave c unscored (unknown, not "wrong").
    let b1 = t.add_child(2, NodeKind::Rollout, ext("answer 7", true, -0.5), 0);
    t.nodes[b1].verdict = Some(Verdict { score: 0.0, ..Default::default() });
    let got = texts(&extract(&t, &PairRule::StepDpo { correct_threshold: 1.0, alpha: 1.0 }, "r"));
    assert_eq!(
        got,
        vec![
            ("".into(), "a = 3 * 4 = 12\n".into(), "b = 3 + 4 = 7\n".into()),
            ("a = 3 * 4 = 12\n".into(), "answer 12".into(), "answer 13".into()),
        ]
    );
}

#[test]
fn outcome_pairs_are_correct_against_incorrect_solutions() {
    let t = hand_tree();
    let pairs = extract(&t, &PairRule::Outcome { correct_threshold: 1.0, max_per_prompt: None }, "r");
    assert_eq!(pairs.len(), 1);
    assert_eq!(pairs[0].chosen.text, "a = 3 * 4 = 12\nanswer 12");
    assert_eq!(pairs[0].rejected.text, "a = 3 * 4 = 12\nanswer 13");
    assert_eq!(pairs[0].kind, PairKind::Outcome);
}

#[test]
fn near_identical_pairs_are_deduplicated() {
    let mut t = hand_tree();
    // A sibling of c differing only in whitespace and case.
    let e = t.add_child(0, NodeKind::Step, ext("C =  3 - 4\n", false, -0.5), 0);
    t.nodes[e].visits = 1;
    let pairs = extract(&t, &PairRule::AgentQ { theta: 0.45, alpha: 1.0 }, "r");
    assert_eq!(pairs.len(), 3, "{:?}", texts(&pairs));
}

// ---- Tree-of-Code and best-of-N ----

/// Program-of-thought stand-in: the program "ran" when its answer is not 0 (then it extracted the answer), and
/// "raised NameError" when it is.
struct FakeExec;

impl Reward for FakeExec {
    fn score(&self, _: &Task, completion: &str) -> Outcome {
        let answer = completion.lines().last().and_then(|l| l.strip_prefix("answer ")).unwrap_or("0");
        if answer == "0" {
            Outcome::new(0.0).with_component("executed", 0.0).with_failure("program error: NameError: x")
        } else {
            Outcome::new(if answer == "1" { 1.0 } else { 0.1 }).with_component("executed", 1.0).with_extracted(answer)
        }
    }
}

#[test]
fn tree_of_code_grows_failed_programs_with_their_errors_and_votes() -> R {
    let cfg = TocConfig { m: 3, depth: 3, ..Default::default() };
    let mut found_reflection = false;
    for i in 0..6 {
        let tree = grow_tree(&Algo::Toc(cfg.clone()), &ScriptedPolicy::new(3), &FakeExec, &task(i), 4)?.tree;
        assert_eq!(tree.root().children.len(), 3);
        for (id, n) in tree.nodes.iter().enumerate().skip(1) {
            let e = n.execution.as_ref().expect("every program is executed");
            if e.ok {
                assert!(n.children.is_empty(), "a successful program stops growing");
            } else if n.depth < 3 {
                assert_eq!(n.children.len(), 3, "a failed program spawns M children");
                found_reflection = true;
            }
            assert!(n.origin.as_deref().is_some_and(|o| o.starts_with("prompt ")), "node {id}");
        }
        // The vote is the most common successful answer.
        let answers: Vec<&str> = tree.nodes.iter().filter_map(|n| n.execution.as_ref()?.answer.as_deref()).collect();
        let vote = tree.root().execution.as_ref().and_then(|e| e.answer.clone());
        match vote {
            Some(v) => {
                let count = |a: &str| answers.iter().filter(|&&x| x == a).count();
                assert!(answers.iter().all(|a| count(a) <= count(&v)));
            }
            None => assert!(answers.is_empty()),
        }
    }
    assert!(found_reflection, "some program failed");
    // The children's prompts quote the failed code and its error.
    let t = Tree::new("x", vec![Message::user("q")], "p", vec![], 0);
    let mut t = t;
    let p = t.add_child(0, NodeKind::Program, ext("def solution():\n    return x", true, -0.1), 0);
    t.nodes[p].execution =
        Some(crate::tree::Execution { ok: false, answer: None, feedback: Some("NameError: x".into()) });
    let prompt = crate::toc::reflection_prompt(&t, p, "Solve {question}", "2+2");
    assert!(prompt.contains("Solve 2+2") && prompt.contains("return x") && prompt.contains("NameError: x"), "{prompt}");
    Ok(())
}

#[test]
fn best_of_n_is_a_one_level_tree_sharing_the_pair_policies() -> R {
    let cfg = BonConfig { n: 6, ..Default::default() };
    let tree = grow_tree(&Algo::Bon(cfg), &ScriptedPolicy::new(3), &ScriptedReward::default(), &task(5), 8)?.tree;
    assert_eq!(tree.nodes.len(), 7);
    assert!(tree.nodes[1..].iter().all(|n| n.kind == NodeKind::Sample && n.terminal && n.verdict.is_some()));
    let pairs = extract(&tree, &PairRule::Outcome { correct_threshold: 1.0, max_per_prompt: None }, "r");
    let correct = tree.nodes.iter().filter(|n| n.score() == Some(1.0)).count();
    let wrong = tree.nodes.iter().filter(|n| n.score().is_some_and(|s| s < 1.0)).count();
    assert!(pairs.len() <= correct * wrong);
    Ok(())
}

/// The first child simulated uses PUCT's configured length penalty, not the default: a short, less likely step
/// wins without a penalty (length_penalty 0), a long, more likely-per-token one with the default 1.25.
#[test]
fn first_to_simulate_uses_the_configured_length_penalty() {
    let mut t = Tree::new("t/1", vec![Message::user("q")], "Q\n", b"Q\n".iter().map(|&b| u32::from(b)).collect(), 1);
    let short = t.add_child(0, NodeKind::Step, ext("a\n", false, -0.5), 1);
    let long = t.add_child(0, NodeKind::Step, ext("bbbbbbbbb\n", false, -0.12), 2);
    let pick = |length_penalty: f64| {
        let cfg = MctsConfig { selection: Selection::Puct { c_puct: 1.0, length_penalty }, ..MctsConfig::default() };
        Mcts::new(cfg).expect("valid").first_to_simulate(&t, &[short, long])
    };
    assert_eq!(pick(0.0), short);
    assert_eq!(pick(crate::mcts::DEFAULT_LENGTH_PENALTY), long);
}
