//! Seeds from (run seed, task id, node path): every random draw of a search is fixed by them, never by thread
//! timing or arrival order, so the same configuration grows the same trees whatever the thread count or batch
//! composition.
//!
//! The root's seed is [`orchard_datasets::task_seed`]`(run seed, task id)` (as `orchard sample` seeds a task); a
//! child's seed mixes its parent's seed with its index among the parent's children, so a seed names a path.
//! Draws that are not children (a rollout, a critic question, a pool choice) mix in a distinct tag.

/// Tag of a node's rollout.
pub const ROLLOUT: u64 = 0x524f_4c4c_4f55_5400;
/// Tag of a critic question about a node's children.
pub const CRITIC: u64 = 0x4352_4954_4943_0000;
/// Tag of Tree-of-Code's prompt choice.
pub const PROMPT_POOL: u64 = 0x5052_4f4d_5054_0000;
/// Tag of Tree-of-Code's model choice.
pub const MODEL_POOL: u64 = 0x4d4f_4445_4c00_0000;

/// SplitMix64's first output from state `z`: a bijective mix of 64 bits.
pub fn splitmix64(z: u64) -> u64 {
    orchard_core::seed::splitmix64_at(z, 1)
}

/// `seed` mixed with `value` (a child index or a tag).
pub fn mix(seed: u64, value: u64) -> u64 {
    splitmix64(seed ^ splitmix64(value))
}

/// The root seed of `task_id`'s tree under `run_seed`.
pub fn tree_seed(run_seed: u64, task_id: &str) -> u64 {
    orchard_datasets::task_seed(run_seed, task_id)
}

/// The seed of child `index` of a node with seed `parent`.
pub fn child(parent: u64, index: usize) -> u64 {
    mix(parent, index as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_seeds_differ_by_index_and_by_parent() {
        let a = tree_seed(0, "gsm8k/train/1");
        assert_ne!(child(a, 0), child(a, 1));
        assert_ne!(child(child(a, 0), 1), child(child(a, 1), 0));
        assert_ne!(mix(a, ROLLOUT), child(a, 0));
        assert_eq!(tree_seed(0, "x"), tree_seed(0, "x"));
        assert_ne!(tree_seed(0, "x"), tree_seed(1, "x"));
    }
}
