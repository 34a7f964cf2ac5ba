//! The counters behind [`Stats`](super::Stats): one set per thread, so that counting a hit
//! takes no locked instruction and no cache line is shared between cores.
//!
//! A hit costs a few atomic read-modify-writes already (the value's `Arc`, the engine's lock);
//! counting it with `fetch_add` added ~4 ns more per counter on the benchmark VM, and a single
//! counter shared by all threads made the 8-task `l1_hit_parallel` benchmark ~2× slower than raw
//! moka. Here each live thread *owns* one slot of every counter group — claimed from a global
//! bitmask on the thread's first count, given back when the thread exits — and increments it
//! with a plain load and store: no other thread writes that slot, so no increment is lost.
//! Threads beyond [`OWNED`] share one extra slot and use `fetch_add` there. Reading a counter
//! sums the slots.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Slots owned by one live thread each (tokio's workers, the application's threads).
pub(crate) const OWNED: usize = 16;

/// The slot every thread without an owned one shares, incremented atomically.
pub(crate) const SHARED: usize = OWNED;

/// Bit `i` set: slot `i` is owned by a live thread.
static CLAIMED: AtomicU32 = AtomicU32::new(0);

/// This thread's slot, given back when the thread exits.
struct Claim(usize);

impl Claim {
    fn new() -> Self {
        let mut claimed = CLAIMED.load(Ordering::Relaxed);
        loop {
            let free = (!claimed).trailing_zeros() as usize;
            if free >= OWNED {
                return Claim(SHARED);
            }
            // Acquire: see every count the slot's previous owner made.
            match CLAIMED.compare_exchange_weak(
                claimed,
                claimed | 1 << free,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Claim(free),
                Err(now) => claimed = now,
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Counts made after this (from other thread-locals' destructors) go to the shared slot.
        let _ = FAST.try_with(|fast| fast.set(SHARED));
        if self.0 < OWNED {
            // Release: the next owner continues from this thread's last counts.
            CLAIMED.fetch_and(!(1 << self.0), Ordering::Release);
        }
    }
}

/// [`FAST`] before the thread's first count.
const UNCLAIMED: usize = usize::MAX;

thread_local! {
    /// The thread's slot once claimed. A `const`, destructor-free thread-local, so reading it is
    /// a single load with no lazy-initialisation check (the hot path of every count).
    static FAST: Cell<usize> = const { Cell::new(UNCLAIMED) };
    /// Owns the claim and gives it back when the thread exits.
    static CLAIM: Claim = Claim::new();
}

/// This thread's slot; [`SHARED`] once its own is given back (counting from a thread-local
/// destructor at thread exit).
#[inline]
pub(crate) fn slot() -> usize {
    match FAST.try_with(Cell::get) {
        Ok(UNCLAIMED) => claim(),
        Ok(slot) => slot,
        Err(_) => SHARED,
    }
}

/// The thread's first count: claim a slot (or, while the thread exits, use the shared one).
#[cold]
#[inline(never)]
fn claim() -> usize {
    let slot = CLAIM.try_with(|claim| claim.0).unwrap_or(SHARED);
    let _ = FAST.try_with(|fast| fast.set(slot));
    slot
}

/// `K` counters, kept per thread.
pub(crate) struct Local<const K: usize> {
    slots: Box<[Slot<K>; OWNED + 1]>,
}

/// One thread's counters, alone on their (pair of) cache lines.
#[repr(align(128))]
struct Slot<const K: usize>([AtomicU64; K]);

impl<const K: usize> Default for Local<K> {
    fn default() -> Self {
        Local {
            slots: Box::new(std::array::from_fn(|_| {
                Slot(std::array::from_fn(|_| AtomicU64::new(0)))
            })),
        }
    }
}

impl<const K: usize> Local<K> {
    /// Add one to counter `which` (`< K`).
    #[inline]
    pub(crate) fn incr(&self, which: usize) {
        self.incr_at(slot(), which);
    }

    /// [`incr`](Self::incr) with this thread's [`slot`] already looked up.
    #[inline]
    pub(crate) fn incr_at(&self, slot: usize, which: usize) {
        let cell = &self.slots[slot].0[which];
        if slot == SHARED {
            cell.fetch_add(1, Ordering::Relaxed);
        } else {
            // This thread is the slot's only writer.
            cell.store(
                cell.load(Ordering::Relaxed).wrapping_add(1),
                Ordering::Relaxed,
            );
        }
    }

    /// The total of counter `which` over all threads.
    pub(crate) fn get(&self, which: usize) -> u64 {
        self.slots
            .iter()
            .map(|slot| slot.0[which].load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

impl<const K: usize> std::fmt::Debug for Local<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let totals: [u64; K] = std::array::from_fn(|which| self.get(which));
        f.debug_tuple("Local").field(&totals).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    #[test]
    fn counts_from_many_threads_are_all_kept() {
        // More threads than owned slots, all counting at once: some share the atomic slot.
        const THREADS: usize = OWNED + 8;
        const EACH: u64 = 20_000;
        let counters = Arc::new(Local::<2>::default());
        let start = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let counters = Arc::clone(&counters);
                let start = Arc::clone(&start);
                std::thread::spawn(move || {
                    start.wait();
                    for _ in 0..EACH {
                        counters.incr(0);
                    }
                    counters.incr(1);
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("counting thread");
        }
        assert_eq!(counters.get(0), THREADS as u64 * EACH);
        assert_eq!(counters.get(1), THREADS as u64);
    }

    #[test]
    fn a_slot_given_back_at_thread_exit_keeps_its_counts() {
        let counters = Arc::new(Local::<1>::default());
        // Threads one after another: each takes over a slot a finished thread gave back.
        for _ in 0..(OWNED * 3) {
            let counters = Arc::clone(&counters);
            std::thread::spawn(move || {
                for _ in 0..100 {
                    counters.incr(0);
                }
            })
            .join()
            .expect("counting thread");
        }
        assert_eq!(counters.get(0), OWNED as u64 * 3 * 100);
    }
}
