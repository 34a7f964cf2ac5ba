//! The counters behind [`Stats`](super::Stats): one set per thread, so that counting a hit
//! takes no locked instruction and no cache line is shared between cores.
//!
//! A hit costs a few atomic read-modify-writes already (the value's `Arc`, the engine's lock);
//! counting it with `fetch_add` added ~4 ns more per counter on the benchmark VM, and a single
//! counter shared by all threads made the 8-task `l1_hit_parallel` benchmark ~2× slower than raw
//! moka. Here each live thread *owns* one slot of every counter group — claimed on the thread's
//! first count, given back when the thread exits — and increments it with a plain load and
//! store: no other thread writes that slot, so no increment is lost. There are [`owned`] such
//! slots: twice the CPUs, at least 16 (a runtime's workers, its blocking threads and the
//! application's own all count); threads beyond them share slot [`SHARED`] and use `fetch_add`
//! there. Reading a counter sums the slots.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

/// The slot every thread without an owned one shares, incremented atomically. The owned slots
/// are `1..=owned()`.
pub(crate) const SHARED: usize = 0;

/// The fewest slots threads can own, whatever the CPU count.
const MIN_OWNED: usize = 16;
/// The most slots threads can own (a counter group takes 128 bytes a slot).
const MAX_OWNED: usize = 1024;

/// How many slots threads can own: twice the CPUs the process may use, at least
/// [`MIN_OWNED`], at most [`MAX_OWNED`]; fixed on first use.
pub(crate) fn owned() -> usize {
    static OWNED: OnceLock<usize> = OnceLock::new();
    *OWNED.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        cpus.saturating_mul(2).clamp(MIN_OWNED, MAX_OWNED)
    })
}

/// Slots of a counter group: the shared one and the owned ones.
pub(crate) fn slots() -> usize {
    owned() + 1
}

/// Which owned slots a live thread holds (index `i` is slot `i + 1`). Taken once per thread
/// (its first count and its exit), so a lock is cheap enough; it also hands a slot's counts
/// over from the thread that gave it back to the next owner (release, then acquire).
static CLAIMED: Mutex<Vec<bool>> = Mutex::new(Vec::new());

/// This thread's slot, given back when the thread exits.
struct Claim(usize);

impl Claim {
    fn new() -> Self {
        let mut claimed = CLAIMED.lock().unwrap_or_else(PoisonError::into_inner);
        if claimed.is_empty() {
            claimed.resize(owned(), false);
        }
        match claimed.iter().position(|taken| !taken) {
            Some(free) => {
                claimed[free] = true;
                Claim(free + 1)
            }
            None => Claim(SHARED),
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        // Counts made after this (from other thread-locals' destructors) go to the shared slot.
        let _ = FAST.try_with(|fast| fast.set(SHARED));
        if self.0 != SHARED {
            let mut claimed = CLAIMED.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(taken) = claimed.get_mut(self.0 - 1) {
                *taken = false;
            }
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
    /// [`slots`] of them: index [`SHARED`], then one per owned slot.
    slots: Box<[Slot<K>]>,
}

/// One thread's counters, alone on their (pair of) cache lines.
#[repr(align(128))]
struct Slot<const K: usize>([AtomicU64; K]);

impl<const K: usize> Default for Local<K> {
    fn default() -> Self {
        Local {
            slots: (0..slots())
                .map(|_| Slot(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
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
        let threads_n = owned() + 8;
        const EACH: u64 = 20_000;
        let counters = Arc::new(Local::<2>::default());
        let start = Arc::new(Barrier::new(threads_n));
        let threads: Vec<_> = (0..threads_n)
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
        assert_eq!(counters.get(0), threads_n as u64 * EACH);
        assert_eq!(counters.get(1), threads_n as u64);
    }

    #[test]
    fn every_cpu_can_own_a_slot_twice_over() {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        assert!(owned() >= MIN_OWNED.max((2 * cpus).min(MAX_OWNED)));
        assert_eq!(slots(), owned() + 1);
        assert_eq!(Local::<3>::default().slots.len(), slots());
    }

    #[test]
    fn a_slot_given_back_at_thread_exit_keeps_its_counts() {
        let counters = Arc::new(Local::<1>::default());
        // Threads one after another: each takes over a slot a finished thread gave back.
        for _ in 0..(owned() * 3) {
            let counters = Arc::clone(&counters);
            std::thread::spawn(move || {
                for _ in 0..100 {
                    counters.incr(0);
                }
            })
            .join()
            .expect("counting thread");
        }
        assert_eq!(counters.get(0), owned() as u64 * 3 * 100);
    }
}
