//! The KV cache: an explicit value per sequence, made of reference-counted blocks of [`BLOCK_TOKENS`] positions.
//!
//! Forking a sequence (`clone`) shares every block with its parent. Blocks are append-only; before a write, the
//! block that receives it is made unique (`Arc::make_mut`), so a fork copies at most its partial last block and no
//! two sequences ever write the same storage. Freeing a branch (dropping its cache) frees only the blocks no other
//! sequence holds. Every block's bytes are counted in the [`KvPool`] the cache was created from.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Positions per block.
pub const BLOCK_TOKENS: usize = 16;

/// Shape of one model's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    /// Decoder layers.
    pub layers: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head width.
    pub head_dim: usize,
}

impl KvLayout {
    /// Floats in one block: `layers × {k, v} × kv_heads × BLOCK_TOKENS × head_dim`.
    pub fn block_floats(&self) -> usize {
        self.layers * 2 * self.kv_heads * BLOCK_TOKENS * self.head_dim
    }
    /// Bytes of KV state per cached position.
    pub fn bytes_per_token(&self) -> usize {
        self.layers * 2 * self.kv_heads * self.head_dim * std::mem::size_of::<f32>()
    }
}

/// Accounting shared by every cache of one model: live blocks and their bytes.
#[derive(Debug, Default)]
pub struct KvPool {
    blocks: AtomicUsize,
    bytes: AtomicUsize,
}

impl KvPool {
    /// Blocks alive now.
    pub fn live_blocks(&self) -> usize {
        self.blocks.load(Ordering::Relaxed)
    }
    /// Bytes of KV storage alive now.
    pub fn live_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// One block of keys and values for every layer.
#[derive(Debug)]
pub struct KvBlock {
    data: Vec<f32>,
    layout: KvLayout,
    pool: Arc<KvPool>,
}

impl KvBlock {
    fn new(layout: KvLayout, pool: &Arc<KvPool>) -> Self {
        pool.blocks.fetch_add(1, Ordering::Relaxed);
        pool.bytes.fetch_add(layout.block_floats() * 4, Ordering::Relaxed);
        KvBlock { data: vec![0.0; layout.block_floats()], layout, pool: pool.clone() }
    }

    fn offset(&self, layer: usize, kind: usize, head: usize) -> usize {
        ((layer * 2 + kind) * self.layout.kv_heads + head) * BLOCK_TOKENS * self.layout.head_dim
    }

    /// Keys of `head` in `layer`, transposed: `head_dim × BLOCK_TOKENS` (dimension-major), so that one vector of
    /// [`BLOCK_TOKENS`] lanes holds one dimension of every key of the block.
    pub fn keys_t(&self, layer: usize, head: usize) -> &[f32] {
        let at = self.offset(layer, 0, head);
        &self.data[at..at + BLOCK_TOKENS * self.layout.head_dim]
    }

    /// Values of `head` in `layer`: `BLOCK_TOKENS × head_dim`, position-major.
    pub fn values(&self, layer: usize, head: usize) -> &[f32] {
        let at = self.offset(layer, 1, head);
        &self.data[at..at + BLOCK_TOKENS * self.layout.head_dim]
    }
}

impl Clone for KvBlock {
    fn clone(&self) -> Self {
        let mut b = KvBlock::new(self.layout, &self.pool);
        b.data.copy_from_slice(&self.data);
        b
    }
}

impl Drop for KvBlock {
    fn drop(&mut self) {
        self.pool.blocks.fetch_sub(1, Ordering::Relaxed);
        self.pool.bytes.fetch_sub(self.data.len() * 4, Ordering::Relaxed);
    }
}

/// The cached keys and values of one sequence. `clone()` is a cheap fork.
#[derive(Debug, Clone)]
pub struct KvCache {
    layout: KvLayout,
    pool: Arc<KvPool>,
    blocks: Vec<Arc<KvBlock>>,
    len: usize,
}

impl KvCache {
    /// An empty cache drawing its blocks from `pool`.
    pub fn new(layout: KvLayout, pool: Arc<KvPool>) -> Self {
        KvCache { layout, pool, blocks: Vec::new(), len: 0 }
    }

    /// A cache made of already computed full blocks (a prefix-index hit), holding their positions.
    pub fn from_blocks(layout: KvLayout, pool: Arc<KvPool>, blocks: Vec<Arc<KvBlock>>) -> Self {
        let len = blocks.len() * BLOCK_TOKENS;
        KvCache { layout, pool, blocks, len }
    }

    /// Cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The cache's shape.
    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    /// Positions per block.
    pub fn block_tokens(&self) -> usize {
        BLOCK_TOKENS
    }

    /// The blocks, in position order.
    pub fn blocks(&self) -> &[Arc<KvBlock>] {
        &self.blocks
    }

    /// Blocks this cache shares with at least one other sequence.
    pub fn shared_blocks(&self) -> usize {
        self.blocks.iter().filter(|b| Arc::strong_count(b) > 1).count()
    }

    /// Forgets positions from `len` on (blocks past it are released).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.len = len;
            self.blocks.truncate(len.div_ceil(BLOCK_TOKENS));
        }
    }

    /// Makes positions `len..len + extra` writable: allocates missing blocks and un-shares the block that holds
    /// `len` (copy-on-write of the partial last block). Returns the first new position.
    pub(crate) fn reserve(&mut self, extra: usize) -> usize {
        let start = self.len;
        let need = (start + extra).div_ceil(BLOCK_TOKENS);
        if extra > 0 && !start.is_multiple_of(BLOCK_TOKENS) {
            let last = start / BLOCK_TOKENS;
            Arc::make_mut(&mut self.blocks[last]);
        }
        while self.blocks.len() < need {
            self.blocks.push(Arc::new(KvBlock::new(self.layout, &self.pool)));
        }
        start
    }

    /// Writes the keys and values (`kv_heads × head_dim` each) of position `pos` in `layer`. The position must have
    /// been reserved.
    pub(crate) fn write(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let hd = self.layout.head_dim;
        let block = Arc::get_mut(&mut self.blocks[pos / BLOCK_TOKENS])
            .expect("reserve() made every block past the cached length unique");
        let t = pos % BLOCK_TOKENS;
        for h in 0..self.layout.kv_heads {
            let ko = block.offset(layer, 0, h) + t;
            for (d, &kv) in k[h * hd..(h + 1) * hd].iter().enumerate() {
                block.data[ko + d * BLOCK_TOKENS] = kv;
            }
            let vo = block.offset(layer, 1, h) + t * hd;
            block.data[vo..vo + hd].copy_from_slice(&v[h * hd..(h + 1) * hd]);
        }
    }

    /// Marks `extra` reserved positions as cached.
    pub(crate) fn commit(&mut self, extra: usize) {
        self.len += extra;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> KvLayout {
        KvLayout { layers: 2, kv_heads: 2, head_dim: 4 }
    }

    fn fill(cache: &mut KvCache, n: usize, val: f32) {
        let start = cache.reserve(n);
        for p in start..start + n {
            for l in 0..2 {
                cache.write(l, p, &[val + p as f32; 8], &[-val; 8]);
            }
        }
        cache.commit(n);
    }

    #[test]
    fn a_fork_shares_full_blocks_and_copies_only_the_partial_one() {
        let pool = Arc::new(KvPool::default());
        let mut parent = KvCache::new(layout(), pool.clone());
        fill(&mut parent, 20, 1.0); // one full block + 4 positions
        assert_eq!(pool.live_blocks(), 2);
        let mut child = parent.clone();
        assert_eq!(pool.live_blocks(), 2);
        fill(&mut child, 3, 9.0);
        assert_eq!(pool.live_blocks(), 3, "only the partial block is copied");
        assert!(Arc::ptr_eq(&parent.blocks()[0], &child.blocks()[0]));
        // The parent's view is unchanged by the child's writes (position 20 is slot 4 of block 1).
        assert_eq!(parent.blocks()[1].keys_t(0, 0)[4], 0.0);
        assert_eq!(child.blocks()[1].keys_t(0, 0)[4], 9.0 + 20.0);
        assert_eq!(child.blocks()[1].values(0, 0)[4 * 4], -9.0);
        drop(child);
        assert_eq!(pool.live_blocks(), 2);
        drop(parent);
        assert_eq!(pool.live_bytes(), 0);
    }

    #[test]
    fn truncate_releases_blocks() {
        let pool = Arc::new(KvPool::default());
        let mut c = KvCache::new(layout(), pool.clone());
        fill(&mut c, 40, 0.0);
        c.truncate(10);
        assert_eq!((c.len(), pool.live_blocks()), (10, 1));
    }
}
