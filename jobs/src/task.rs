//! What a job needs of a dataset task: its chat prompt and its reward task.

use orchard_datasets::Task;
use orchard_engine::Prompt;
use orchard_rewards::{score_batch_caught, Outcome, Reward};

/// What the rewards crate needs of a dataset task.
pub fn reward_task(task: &Task) -> orchard_rewards::Task {
    let mut t = orchard_rewards::Task::new(task.prompt.clone());
    if let Some(r) = &task.reference {
        t = t.with_answer(r.clone());
    }
    if let Some(tests) = &task.tests {
        t = t.with_tests(tests.clone(), task.entry_point.clone());
    }
    // The source row's columns, for rewards that read more (Python rewards get them as TRL passes dataset
    // columns); the typed fields above win over a column of the same name.
    for (k, v) in &task.raw {
        t = t.with_column(k.clone(), v.clone());
    }
    t
}

/// Score groups of completions, one group per task, in one batch (Python and judge rewards batch their calls,
/// the others run side by side); outcomes come back grouped as the completions were.
pub fn score_groups(reward: &dyn Reward, groups: &[(orchard_rewards::Task, Vec<&str>)]) -> Vec<Vec<Outcome>> {
    let items: Vec<(&orchard_rewards::Task, &str)> =
        groups.iter().flat_map(|(t, cs)| cs.iter().map(move |c| (t, *c))).collect();
    let mut outcomes = score_batch_caught(reward, &items).into_iter();
    groups.iter().map(|(_, cs)| outcomes.by_ref().take(cs.len()).collect()).collect()
}

/// The model as recorded in run outputs: its id and the SHA-256 of the weights it holds.
pub fn model_record(engine: &orchard_engine::Engine) -> orchard_engine::Result<orchard_datasets::ModelRecord> {
    Ok(orchard_datasets::ModelRecord { id: engine.info().id.clone(), hash: format!("sha256:{}", engine.identity()?) })
}

/// The chat prompt of a task ([`Task::chat`]).
pub fn task_prompt(task: &Task, system: Option<&str>) -> Prompt {
    Prompt::Messages(task.chat(system))
}
