//! Integration tests of the engine: tiny random models for equivalences and loading, the real default model
//! against HF transformers reference values (`tests/reference/`).

mod device;
mod equivalence;
mod gemma3;
mod handoff;
mod loading;
mod reference;
mod scheduler;
mod util;
