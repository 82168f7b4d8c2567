//! What a job needs of a dataset task: its chat prompt in the engine's message type and its reward task.

use orchard_datasets::Task;
use orchard_engine::{Message, Prompt};

/// What the rewards crate needs of a dataset task.
pub fn reward_task(task: &Task) -> orchard_rewards::Task {
    let mut t = orchard_rewards::Task::new(task.prompt.clone());
    if let Some(r) = &task.reference {
        t = t.with_answer(r.clone());
    }
    if let Some(tests) = &task.tests {
        t = t.with_tests(tests.clone(), task.entry_point.clone());
    }
    t
}

/// The model as recorded in run outputs: its id and the SHA-256 of the weights it holds.
pub fn model_record(engine: &orchard_engine::Engine) -> orchard_engine::Result<orchard_datasets::ModelRecord> {
    Ok(orchard_datasets::ModelRecord { id: engine.info().id.clone(), hash: format!("sha256:{}", engine.identity()?) })
}

/// The chat prompt of a task, in the engine's message type.
pub fn task_prompt(task: &Task, system: Option<&str>) -> Prompt {
    Prompt::Messages(task.chat(system).into_iter().map(|m| Message::new(&m.role, m.content)).collect())
}
