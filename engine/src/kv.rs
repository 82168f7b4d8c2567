//! The KV cache: an explicit value per sequence, made of reference-counted blocks of [`BLOCK_TOKENS`] positions.
//!
//! Forking a sequence (`clone`) shares every block with its parent. Blocks are append-only; before a write, the
//! block that receives it is made unique (`Arc::make_mut`), so a fork copies at most its partial last block and no
//! two sequences ever write the same storage. Freeing a branch (dropping its cache) frees only the blocks no other
//! sequence holds. Every block's bytes are counted in the [`KvPool`] the cache was created from.
//!
//! Paged on a device: a pool made with [`KvPool::paged`] gives its blocks no host storage but a *slot* in a
//! [`SlotTable`] — the block's index in the device's KV tensors (`device.rs`). A sequence's blocks are then its block
//! table; sharing, copy-on-write, truncation and the prefix index work on them exactly as on host blocks. The table
//! only does the bookkeeping: a copy-on-write records (from, to) and the device carries the copies out before its
//! next write, and a dropped block's slot goes back to the free list.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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

/// Accounting shared by every cache of one model: live blocks and their bytes; for a paged (device) pool, the slot
/// table its blocks live in.
#[derive(Debug, Default)]
pub struct KvPool {
    blocks: AtomicUsize,
    bytes: AtomicUsize,
    slots: Option<Arc<SlotTable>>,
}

impl KvPool {
    /// A pool whose blocks are slots of `slots` (KV held on a device), each the table's `block_bytes` there.
    pub fn paged(slots: Arc<SlotTable>) -> Self {
        KvPool { slots: Some(slots), ..KvPool::default() }
    }
    /// Blocks alive now.
    pub fn live_blocks(&self) -> usize {
        self.blocks.load(Ordering::Relaxed)
    }
    /// Bytes of KV storage alive now.
    pub fn live_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Host-side bookkeeping of a device's KV blocks: which slots are free, how many the device must hold, and the
/// copy-on-write copies it has yet to make. Slots are handed out lowest-free-first, so the device's tensors grow
/// only when every slot is in use.
#[derive(Debug)]
pub struct SlotTable {
    block_bytes: usize,
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    /// Freed slots.
    free: Vec<u32>,
    /// Slots ever handed out: the device must hold `0..high`.
    high: u32,
    /// Copies (from, to) to make, in order, before the next write.
    copies: Vec<(u32, u32)>,
}

impl SlotTable {
    /// An empty table for blocks of `block_bytes` bytes on the device.
    pub fn new(block_bytes: usize) -> Self {
        SlotTable { block_bytes, state: Mutex::new(SlotState::default()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        // The state is consistent after every operation (no operation panics midway): a poisoned lock is usable.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn alloc(&self) -> u32 {
        let mut st = self.state();
        // Reuse the lowest free slot: keeps the live slots dense at the bottom of the device tensors.
        if let Some((i, _)) = st.free.iter().enumerate().min_by_key(|(_, &s)| s) {
            return st.free.swap_remove(i);
        }
        st.high += 1;
        st.high - 1
    }

    fn release(&self, slot: u32) {
        self.state().free.push(slot);
    }

    fn copy(&self, from: u32, to: u32) {
        self.state().copies.push((from, to));
    }

    /// Slots the device must hold (every slot handed out so far lies below it).
    pub fn high_water(&self) -> usize {
        self.state().high as usize
    }

    /// Slots in use now.
    pub fn live(&self) -> usize {
        let st = self.state();
        st.high as usize - st.free.len()
    }

    /// Takes the copy-on-write copies recorded since the last call, in the order they must be made.
    pub fn take_copies(&self) -> Vec<(u32, u32)> {
        std::mem::take(&mut self.state().copies)
    }
}

/// One block of keys and values for every layer: floats on the host, or a slot of a device's KV tensors.
#[derive(Debug)]
pub struct KvBlock {
    data: Vec<f32>,
    slot: Option<u32>,
    layout: KvLayout,
    pool: Arc<KvPool>,
}

impl KvBlock {
    fn new(layout: KvLayout, pool: &Arc<KvPool>) -> Self {
        let (data, slot, bytes) = match &pool.slots {
            Some(t) => (Vec::new(), Some(t.alloc()), t.block_bytes),
            None => (vec![0.0; layout.block_floats()], None, layout.block_floats() * 4),
        };
        pool.blocks.fetch_add(1, Ordering::Relaxed);
        pool.bytes.fetch_add(bytes, Ordering::Relaxed);
        KvBlock { data, slot, layout, pool: pool.clone() }
    }

    fn bytes(&self) -> usize {
        match &self.pool.slots {
            Some(t) => t.block_bytes,
            None => self.data.len() * 4,
        }
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
        if let (Some(t), Some(from), Some(to)) = (&self.pool.slots, self.slot, b.slot) {
            t.copy(from, to);
        }
        b
    }
}

impl Drop for KvBlock {
    fn drop(&mut self) {
        self.pool.blocks.fetch_sub(1, Ordering::Relaxed);
        self.pool.bytes.fetch_sub(self.bytes(), Ordering::Relaxed);
        if let (Some(t), Some(slot)) = (&self.pool.slots, self.slot) {
            t.release(slot);
        }
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
        debug_assert!(self.pool.slots.is_none(), "a paged cache is written on its device");
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

    /// The device slot of every block, in position order (the block table of a paged cache).
    pub fn block_table(&self) -> Vec<u32> {
        self.blocks.iter().filter_map(|b| b.slot).collect()
    }

    /// The slot table of a paged cache (its blocks live on a device), `None` for host blocks.
    pub fn slot_table(&self) -> Option<&Arc<SlotTable>> {
        self.pool.slots.as_ref()
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
    fn paged_blocks_share_fork_copy_on_write_and_free_slots() {
        let slots = Arc::new(SlotTable::new(1000));
        let pool = Arc::new(KvPool::paged(slots.clone()));
        let mut parent = KvCache::new(layout(), pool.clone());
        parent.reserve(20);
        parent.commit(20);
        assert_eq!(parent.block_table(), vec![0, 1]);
        assert_eq!((pool.live_blocks(), pool.live_bytes()), (2, 2000));
        let mut child = parent.clone();
        assert!(slots.take_copies().is_empty(), "a fork copies nothing until it writes");
        child.reserve(3);
        child.commit(3);
        // The child's partial last block was made unique: a new slot, one recorded device copy from the parent's.
        assert_eq!(child.block_table(), vec![0, 2]);
        assert_eq!(slots.take_copies(), vec![(1, 2)]);
        assert!(slots.take_copies().is_empty());
        // A fork at a block boundary shares everything and appends a fresh block: no copy.
        let mut full = parent.clone();
        full.truncate(16);
        full.reserve(1);
        assert_eq!(full.block_table(), vec![0, 3]);
        assert!(slots.take_copies().is_empty());
        drop(child);
        assert_eq!((slots.live(), slots.high_water()), (3, 4));
        // Freed slots are reused lowest first, before the table grows.
        let mut again = KvCache::new(layout(), pool.clone());
        again.reserve(1);
        assert_eq!(again.block_table(), vec![2]);
        drop((parent, full, again));
        assert_eq!((slots.live(), pool.live_blocks(), pool.live_bytes()), (0, 0, 0));
        assert_eq!(slots.high_water(), 4);
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
