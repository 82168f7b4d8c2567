//! `orchard tokenize`: how the model's tokenizer splits a text.

use std::process::ExitCode;

use orchard_engine::Prompt;
use serde::Serialize;

use super::common::ModelArgs;

/// Show the token ids and pieces of a text, as the model's own tokenizer produces them (ids equal HF
/// transformers' `tokenizer(text)`; with --chat, `apply_chat_template([{"role": "user", "content": text}],
/// add_generation_prompt=True)`). Output: {"ids": [...], "pieces": [...]}.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text.
    #[arg(long, short = 't')]
    pub text: String,
    /// Render the text as a user turn of the model's chat template first.
    #[arg(long)]
    pub chat: bool,
}

#[derive(Debug, Serialize)]
struct OutRow {
    ids: Vec<u32>,
    pieces: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let engine = args.model.load()?;
    let ids = engine.prompt_tokens(&Prompt::Text(args.text.clone()), None, !args.chat)?;
    let pieces = ids.iter().map(|&i| engine.tokenizer().piece(i).unwrap_or_default()).collect();
    println!("{}", serde_json::to_string(&OutRow { ids, pieces })?);
    Ok(ExitCode::SUCCESS)
}
