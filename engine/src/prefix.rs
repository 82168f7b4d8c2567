//! Automatic prefix reuse: a radix index over token ids whose nodes are full KV blocks.
//!
//! Each node is one block of [`BLOCK_TOKENS`] positions, reached from its parent by that block's token ids, so a
//! path from the root spells a token prefix and holds its keys and values. A new sequence walks the index with its
//! tokens and starts from the deepest match: only the suffix is computed (SGLang's radix cache and vLLM's
//! automatic prefix caching work the same way, at block granularity here). The index belongs to one model
//! instance — weights that change (a training step) make a new [`crate::Model`] with a new, empty index — and is
//! keyed by that model's version as a second guard.
//!
//! Nodes hold a reference to their block; a block used by a live sequence is never evicted. Eviction takes
//! least-recently-used leaves whose block nobody else holds.

use std::collections::HashMap;
use std::sync::Arc;

use crate::kv::{KvBlock, KvCache, BLOCK_TOKENS};
use crate::model::TokenId;

type NodeId = usize;

#[derive(Debug)]
struct Node {
    block: Arc<KvBlock>,
    parent: Option<NodeId>,
    key: Box<[TokenId]>,
    children: HashMap<Box<[TokenId]>, NodeId>,
    last_used: u64,
}

/// The prefix index of one model.
#[derive(Debug)]
pub struct PrefixIndex {
    version: u64,
    nodes: Vec<Option<Node>>,
    free: Vec<NodeId>,
    roots: HashMap<Box<[TokenId]>, NodeId>,
    clock: u64,
    len: usize,
}

impl PrefixIndex {
    /// An empty index for the model with this weights version.
    pub fn new(version: u64) -> Self {
        PrefixIndex { version, nodes: Vec::new(), free: Vec::new(), roots: HashMap::new(), clock: 0, len: 0 }
    }

    /// The weights version the index belongs to.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Number of cached blocks.
    pub fn blocks(&self) -> usize {
        self.len
    }

    fn node(&self, id: NodeId) -> &Node {
        self.nodes[id].as_ref().expect("ids in the index point at live nodes")
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes[id].as_mut().expect("ids in the index point at live nodes")
    }

    fn child(&self, parent: Option<NodeId>, key: &[TokenId]) -> Option<NodeId> {
        match parent {
            None => self.roots.get(key).copied(),
            Some(p) => self.node(p).children.get(key).copied(),
        }
    }

    /// The longest cached prefix of `tokens` (whole blocks), as blocks in order. Marks them used.
    pub fn lookup(&mut self, version: u64, tokens: &[TokenId]) -> Vec<Arc<KvBlock>> {
        if version != self.version {
            return Vec::new();
        }
        self.clock += 1;
        let mut out = Vec::new();
        let mut at = None;
        for key in tokens.chunks_exact(BLOCK_TOKENS) {
            let Some(id) = self.child(at, key) else { break };
            let clock = self.clock;
            let node = self.node_mut(id);
            node.last_used = clock;
            out.push(node.block.clone());
            at = Some(id);
        }
        out
    }

    /// Adds the full blocks of `cache` (which holds the keys/values of `tokens[..cache.len()]`) to the index.
    /// Returns how many blocks were new.
    pub fn insert(&mut self, version: u64, tokens: &[TokenId], cache: &KvCache) -> usize {
        if version != self.version {
            return 0;
        }
        self.clock += 1;
        let full = cache.len().min(tokens.len()) / BLOCK_TOKENS;
        let mut at = None;
        let mut added = 0;
        for (b, key) in tokens.chunks_exact(BLOCK_TOKENS).take(full).enumerate() {
            let id = match self.child(at, key) {
                Some(id) => id,
                None => {
                    let node = Node {
                        block: cache.blocks()[b].clone(),
                        parent: at,
                        key: key.into(),
                        children: HashMap::new(),
                        last_used: self.clock,
                    };
                    let id = match self.free.pop() {
                        Some(id) => {
                            self.nodes[id] = Some(node);
                            id
                        }
                        None => {
                            self.nodes.push(Some(node));
                            self.nodes.len() - 1
                        }
                    };
                    match at {
                        None => self.roots.insert(key.into(), id),
                        Some(p) => self.node_mut(p).children.insert(key.into(), id),
                    };
                    self.len += 1;
                    added += 1;
                    id
                }
            };
            let clock = self.clock;
            self.node_mut(id).last_used = clock;
            at = Some(id);
        }
        added
    }

    /// Evicts least-recently-used leaves whose block only the index holds, until `enough()` says stop or nothing
    /// evictable is left. Returns the number of blocks dropped.
    pub fn evict(&mut self, mut enough: impl FnMut() -> bool) -> usize {
        let mut dropped = 0;
        while !enough() {
            // The oldest evictable leaf.
            let victim = self
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
                .filter(|(_, n)| n.children.is_empty() && Arc::strong_count(&n.block) == 1)
                .min_by_key(|(i, n)| (n.last_used, *i))
                .map(|(i, _)| i);
            let Some(id) = victim else { break };
            self.remove(id);
            dropped += 1;
        }
        dropped
    }

    fn remove(&mut self, id: NodeId) {
        let node = self.nodes[id].take().expect("a live node");
        match node.parent {
            None => self.roots.remove(&node.key),
            Some(p) => self.node_mut(p).children.remove(&node.key),
        };
        self.free.push(id);
        self.len -= 1;
    }

    /// Drops every cached block (live sequences keep theirs).
    pub fn clear(&mut self) {
        self.nodes.clear();
        self.free.clear();
        self.roots.clear();
        self.len = 0;
    }

    /// Checks the index's invariants (tests): parents and children agree, counts match.
    pub fn check(&self) -> Result<(), String> {
        let live = self.nodes.iter().filter(|n| n.is_some()).count();
        if live != self.len {
            return Err(format!("{live} live nodes, len says {}", self.len));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(n) = n else { continue };
            let back = match n.parent {
                None => self.roots.get(&n.key),
                Some(p) => self.nodes[p].as_ref().ok_or("dangling parent")?.children.get(&n.key),
            };
            if back != Some(&i) {
                return Err(format!("node {i} is not its parent's child"));
            }
            for &c in n.children.values() {
                if self.nodes[c].as_ref().ok_or("dangling child")?.parent != Some(i) {
                    return Err(format!("child {c} of {i} has another parent"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{KvLayout, KvPool};

    fn layout() -> KvLayout {
        KvLayout { layers: 1, kv_heads: 1, head_dim: 2 }
    }

    /// A cache "computed" for `n` positions (contents do not matter to the index).
    fn computed(pool: &Arc<KvPool>, n: usize) -> KvCache {
        let mut c = KvCache::new(layout(), pool.clone());
        let start = c.reserve(n);
        for p in start..start + n {
            c.write(0, p, &[p as f32, 0.0], &[0.0, 0.0]);
        }
        c.commit(n);
        c
    }

    #[test]
    fn a_shared_prefix_is_found_block_by_block() {
        let pool = Arc::new(KvPool::default());
        let mut idx = PrefixIndex::new(1);
        let a: Vec<TokenId> = (0..40).collect();
        let cache = computed(&pool, 40);
        assert_eq!(idx.insert(1, &a, &cache), 2, "two full blocks of 40 positions");
        let mut b = a[..32].to_vec();
        b.extend([900, 901, 902]);
        let hit = idx.lookup(1, &b);
        assert_eq!(hit.len(), 2);
        assert!(Arc::ptr_eq(&hit[0], &cache.blocks()[0]));
        let mut c = a[..16].to_vec();
        c.extend(100..120);
        assert_eq!(idx.lookup(1, &c).len(), 1);
        assert_eq!(idx.lookup(2, &a).len(), 0, "another weights version never matches");
        idx.check().expect("invariants");
    }

    #[test]
    fn eviction_spares_blocks_in_use_and_takes_oldest_leaves_first() {
        let pool = Arc::new(KvPool::default());
        let mut idx = PrefixIndex::new(0);
        let a: Vec<TokenId> = (0..48).collect();
        let live = computed(&pool, 48);
        idx.insert(0, &a, &live);
        let other: Vec<TokenId> = (500..532).collect();
        idx.insert(0, &other, &computed(&pool, 32));
        // `live` still holds a's blocks: only `other`'s can go.
        assert_eq!(idx.evict(|| false), 2);
        assert_eq!(idx.blocks(), 3);
        drop(live);
        assert_eq!(idx.evict(|| false), 3, "leaves first, then their parents");
        assert_eq!(pool.live_blocks(), 0);
        idx.check().expect("invariants");
    }
}

#[cfg(test)]
mod props {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;
    use crate::kv::{KvLayout, KvPool};

    #[derive(Debug, Clone)]
    enum Op {
        /// Start a sequence from the longest indexed prefix of a token string drawn from a small alphabet.
        Start(Vec<TokenId>),
        /// Fork sequence i.
        Fork(usize),
        /// Extend sequence i by n positions.
        Extend(usize, usize),
        /// Give sequence i's full blocks to the index.
        Publish(usize),
        /// Drop sequence i.
        Drop(usize),
        /// Evict cached prefixes until at most n blocks are alive.
        Evict(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            prop::collection::vec(0u32..3, 0..70).prop_map(Op::Start),
            (0usize..8).prop_map(Op::Fork),
            (0usize..8, 1usize..40).prop_map(|(i, n)| Op::Extend(i, n)),
            (0usize..8).prop_map(Op::Publish),
            (0usize..8).prop_map(Op::Drop),
            (0usize..12).prop_map(Op::Evict),
        ]
    }

    fn extend(c: &mut KvCache, tokens: &mut Vec<TokenId>, n: usize) {
        let start = c.reserve(n);
        for p in start..start + n {
            // The stored value encodes the token at that position: a sequence's contents are checkable.
            let t = (p as u32 * 7 + 1) % 3;
            tokens.push(t);
            c.write(0, p, &[t as f32, p as f32], &[0.0, 0.0]);
        }
        c.commit(n);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn blocks_are_neither_leaked_nor_aliased(ops in prop::collection::vec(op(), 1..60)) {
            let layout = KvLayout { layers: 1, kv_heads: 1, head_dim: 2 };
            let pool = Arc::new(KvPool::default());
            let mut idx = PrefixIndex::new(3);
            let mut seqs: Vec<(KvCache, Vec<TokenId>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Start(want) => {
                        let blocks = idx.lookup(3, &want);
                        let n = blocks.len() * BLOCK_TOKENS;
                        let cache = KvCache::from_blocks(layout, pool.clone(), blocks);
                        seqs.push((cache, want[..n].to_vec()));
                    }
                    Op::Fork(i) if i < seqs.len() => {
                        let s = seqs[i].clone();
                        seqs.push(s);
                    }
                    Op::Extend(i, n) if i < seqs.len() => {
                        let (c, t) = &mut seqs[i];
                        extend(c, t, n);
                    }
                    Op::Publish(i) if i < seqs.len() => {
                        let (c, t) = &seqs[i];
                        idx.insert(3, t, c);
                    }
                    Op::Drop(i) if i < seqs.len() => {
                        seqs.swap_remove(i);
                    }
                    Op::Evict(budget) => {
                        // The budget holds unless every cached block is in use by a sequence.
                        let p = pool.clone();
                        idx.evict(|| p.live_blocks() <= budget);
                        prop_assert!(pool.live_blocks() <= budget || idx.evict(|| false) == 0);
                    }
                    _ => {}
                }
                idx.check().map_err(TestCaseError::fail)?;
                // Every live block is held by a sequence or the index; the pool counts exactly those.
                let mut live: HashSet<*const KvBlock> = HashSet::new();
                for (c, _) in &seqs {
                    live.extend(c.blocks().iter().map(Arc::as_ptr));
                }
                let from_seqs = live.len();
                prop_assert!(pool.live_blocks() >= from_seqs);
                prop_assert!(pool.live_blocks() <= from_seqs + idx.blocks());
                // Every sequence still reads its own tokens (no fork or index entry aliased its writes).
                for (c, t) in &seqs {
                    for (p, &tok) in t.iter().enumerate().take(c.len()) {
                        let key = c.blocks()[p / BLOCK_TOKENS].keys_t(0, 0)[p % BLOCK_TOKENS];
                        prop_assert_eq!(key, tok as f32);
                    }
                }
            }
            drop(seqs);
            idx.clear();
            prop_assert_eq!(pool.live_blocks(), 0);
            prop_assert_eq!(pool.live_bytes(), 0);
        }
    }
}
