//! [`Task`]: one prompt with its reference, as every loader produces it.

use serde::{Deserialize, Serialize};

/// One chat message, as in TRL's conversational format and the OpenAI chat schema.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl Message {
    /// A message with this role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message { role: role.into(), content: content.into() }
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Message::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Message::new("assistant", content)
    }
}

/// One unit of work for a job: a prompt and what its completions are scored against.
///
/// `id` is stable across runs, machines and versions (`gsm8k/train/123`): journals, shards, merges and pair
/// sources refer to tasks by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Stable id: `{dataset}/{split}/{row or native id}` for built-in datasets, `{file stem}/{id}` for user files.
    pub id: String,
    /// The prompt text (for chat models: the user turn).
    pub prompt: String,
    /// The prompt as chat messages when the source has them; empty otherwise (see [`Task::chat`]).
    pub messages: Vec<Message>,
    /// The reference answer (GSM8K: the number after `####`; SVAMP: the answer; HumanEval: the canonical solution).
    pub reference: Option<String>,
    /// Unit tests (HumanEval: Python source defining `check(candidate)`).
    pub tests: Option<String>,
    /// The function the tests call.
    pub entry_point: Option<String>,
    /// The source row as read, for rewards that need more fields.
    pub raw: serde_json::Map<String, serde_json::Value>,
}

impl Task {
    /// A task with this id and prompt and nothing else.
    pub fn new(id: impl Into<String>, prompt: impl Into<String>) -> Self {
        Task {
            id: id.into(),
            prompt: prompt.into(),
            messages: Vec::new(),
            reference: None,
            tests: None,
            entry_point: None,
            raw: serde_json::Map::new(),
        }
    }

    /// Set the reference answer.
    pub fn with_reference(mut self, reference: impl Into<String>) -> Self {
        self.reference = Some(reference.into());
        self
    }

    /// The prompt as chat messages: the source's messages if it had any, else an optional system turn and one user
    /// turn with [`Task::prompt`].
    pub fn chat(&self, system: Option<&str>) -> Vec<Message> {
        if !self.messages.is_empty() {
            return self.messages.clone();
        }
        let mut out = Vec::with_capacity(2);
        if let Some(system) = system {
            out.push(Message::new("system", system));
        }
        out.push(Message::user(self.prompt.clone()));
        out
    }
}
