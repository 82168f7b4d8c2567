//! A counting semaphore bounding how many runs of one sandbox execute at once, so that 100 queued executions do
//! not overload 2 cores: callers beyond the limit wait.

use std::sync::{Condvar, Mutex, PoisonError};

#[derive(Debug)]
pub(crate) struct Slots {
    free: Mutex<usize>,
    available: Condvar,
    count: usize,
}

/// A held slot; returned on drop.
pub(crate) struct Slot<'a> {
    pool: &'a Slots,
}

impl Slots {
    pub(crate) fn new(count: usize) -> Self {
        let count = count.max(1);
        Slots { free: Mutex::new(count), available: Condvar::new(), count }
    }

    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Block until a slot is free. The state is a plain counter, so a poisoned lock is recovered.
    pub(crate) fn acquire(&self) -> Slot<'_> {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        while *free == 0 {
            free = self.available.wait(free).unwrap_or_else(PoisonError::into_inner);
        }
        *free -= 1;
        Slot { pool: self }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.pool.free.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.pool.available.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn never_more_holders_than_slots() {
        let slots = Slots::new(2);
        let inside = AtomicUsize::new(0);
        let max_seen = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..5 {
                        let _slot = slots.acquire();
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        max_seen.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(1));
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(max_seen.load(Ordering::SeqCst), 2);
    }
}
