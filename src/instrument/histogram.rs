//! [`LatencyHistogram`]: fixed memory, lock-free, ≤ 1 % relative error, readable without a
//! metrics recorder.
//!
//! # Why our own
//!
//! `hdrhistogram` is the well-kept reference, but its `Histogram` takes `&mut self` to record:
//! shared between tasks it needs a lock (or its `SyncHistogram`, which records into per-thread
//! buffers and needs an explicit refresh before reading). A cache records from every task at
//! once. Here each thread records into a shard of its own (allocated on its first record; there
//! are twice as many as the CPUs, at least 16, and threads beyond them share one), with a plain
//! load and store — no locked instruction, no lock, no allocation after the first — and a
//! reader sums the shards. Readers never write to a shard, so no record is ever lost;
//! [`LatencyHistogram::take`] remembers what it has handed out instead of clearing. `ecosystem/benches/instrument.rs` (`histogram_record`) measures it beside `hdrhistogram`.
//!
//! # Buckets
//!
//! Log-linear, over nanoseconds: values below 64 ns have a bucket each; above, every power of two
//! is split into 64 equal buckets. A quantile is reported as the middle of its bucket, so it is
//! within 1/128 (0.78 %) of the exact value; the maximum is tracked exactly. Values up to 2^44 ns
//! (about 4.9 hours) are resolved; longer ones count in the last bucket. 2,496 buckets of 8 bytes:
//! about 20 KiB per recording thread.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use crate::metrics::local::{slot, slots, SHARED};

/// Sub-bucket bits: 64 buckets per power of two.
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Values from 2^MAX_EXP ns on share the last bucket.
const MAX_EXP: u32 = 44;
/// Number of buckets.
const BUCKETS: usize = (SUB + (MAX_EXP - SUB_BITS) as u64 * SUB) as usize;

/// The bucket of a value in nanoseconds.
#[inline]
fn index(ns: u64) -> usize {
    if ns < SUB {
        return ns as usize;
    }
    let exp = 63 - ns.leading_zeros(); // ≥ SUB_BITS
    if exp >= MAX_EXP {
        return BUCKETS - 1;
    }
    let shift = exp - SUB_BITS;
    // (ns >> shift) is in [SUB, 2·SUB).
    (SUB + u64::from(shift) * SUB + ((ns >> shift) - SUB)) as usize
}

/// The value reported for bucket `i`: its middle (exact below 64 ns).
fn midpoint(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = (i - SUB) / SUB;
    let low = (SUB + (i - SUB) % SUB) << shift;
    let width = 1u64 << shift;
    low + width / 2
}

/// A concurrent latency histogram: record from any number of threads, read a
/// [`LatencySnapshot`] at any time.
///
/// ```
/// use std::time::Duration;
/// use layercache::instrument::LatencyHistogram;
///
/// let h = LatencyHistogram::new();
/// for ms in 1..=100 {
///     h.record(Duration::from_millis(ms));
/// }
/// let s = h.snapshot();
/// assert_eq!(s.count(), 100);
/// assert!((s.p50().as_secs_f64() - 0.050).abs() < 0.050 * 0.01);
/// assert_eq!(s.max(), Duration::from_millis(100));
/// // A window: read and start again.
/// let last_minute = h.take();
/// assert_eq!(last_minute.count(), 100);
/// assert_eq!(h.snapshot().count(), 0);
/// ```
pub struct LatencyHistogram {
    /// One per thread slot (the shared one first); each allocated on its first record, and
    /// read-only once set (each shard is its own allocation: no two threads write to one cache
    /// line).
    shards: Box<[OnceLock<Box<Shard>>]>,
    /// What [`take`](Self::take) has handed out so far.
    taken: Mutex<Option<LatencySnapshot>>,
}

/// One thread's counts.
struct Shard {
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Shard {
    fn new() -> Box<Self> {
        Box::new(Shard {
            sum_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
        })
    }
}

/// Add `n` to a cell only this thread writes (a plain load and store), or to the shared one.
#[inline]
fn bump(cell: &AtomicU64, n: u64, owned: bool) {
    if owned {
        cell.store(
            cell.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    } else {
        cell.fetch_add(n, Ordering::Relaxed);
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.snapshot(), f)
    }
}

impl LatencyHistogram {
    /// An empty histogram. It takes memory (about 20 KiB) for each thread that records into it.
    pub fn new() -> Self {
        LatencyHistogram {
            shards: (0..slots()).map(|_| OnceLock::new()).collect(),
            taken: Mutex::new(None),
        }
    }

    /// Record one duration. Lock-free; allocates only on a thread's first record.
    #[inline]
    pub fn record(&self, duration: Duration) {
        self.record_ns(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Record one duration given in nanoseconds.
    #[inline]
    pub fn record_ns(&self, ns: u64) {
        self.record_at(slot(), ns);
    }

    /// [`record_ns`](Self::record_ns) with the thread's counter slot already looked up.
    #[inline]
    pub(crate) fn record_at(&self, slot: usize, ns: u64) {
        let shard = self.shards[slot].get_or_init(Shard::new);
        let owned = slot != SHARED;
        bump(&shard.buckets[index(ns)], 1, owned);
        bump(&shard.sum_ns, ns, owned);
        if ns > shard.max_ns.load(Ordering::Relaxed) {
            if owned {
                shard.max_ns.store(ns, Ordering::Relaxed);
            } else {
                shard.max_ns.fetch_max(ns, Ordering::Relaxed);
            }
        }
    }

    /// Everything recorded since the histogram was made.
    pub(crate) fn total(&self) -> LatencySnapshot {
        let mut buckets = vec![0u64; BUCKETS].into_boxed_slice();
        let (mut sum_ns, mut max_ns) = (0u64, 0u64);
        for shard in self.shards.iter().filter_map(OnceLock::get) {
            for (total, cell) in buckets.iter_mut().zip(shard.buckets.iter()) {
                *total = total.wrapping_add(cell.load(Ordering::Relaxed));
            }
            sum_ns = sum_ns.wrapping_add(shard.sum_ns.load(Ordering::Relaxed));
            max_ns = max_ns.max(shard.max_ns.load(Ordering::Relaxed));
        }
        LatencySnapshot::from_parts(buckets, sum_ns, max_ns)
    }

    /// The counts since the histogram was made, or since the last [`take`](Self::take).
    /// Recording goes on meanwhile.
    pub fn snapshot(&self) -> LatencySnapshot {
        let total = self.total();
        let taken = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        match &*taken {
            Some(taken) => total.since(taken),
            None => total,
        }
    }

    /// The counts since the last `take` (or since the histogram was made), and start a new
    /// window: call it once a minute for the figures of the last minute. Every recorded value
    /// lands in exactly one `take`. The window's maximum is exact unless a record races the
    /// `take` itself.
    pub fn take(&self) -> LatencySnapshot {
        let total = self.total();
        let mut taken = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        let window = match &*taken {
            Some(before) => total.since(before),
            None => total.clone(),
        };
        *taken = Some(total);
        // The next window's maximum starts from nothing.
        for shard in self.shards.iter().filter_map(OnceLock::get) {
            shard.max_ns.store(0, Ordering::Relaxed);
        }
        window
    }

    /// Start again from empty (the same as a [`take`](Self::take) whose result is dropped).
    pub fn reset(&self) {
        let _ = self.take();
    }
}

/// A point-in-time copy of a [`LatencyHistogram`]: count, mean, max and any quantile.
#[derive(Clone, PartialEq, Eq)]
pub struct LatencySnapshot {
    buckets: Box<[u64]>,
    count: u64,
    sum_ns: u64,
    max_ns: u64,
}

impl fmt::Debug for LatencySnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LatencySnapshot")
            .field("count", &self.count)
            .field("mean", &self.mean())
            .field("p50", &self.p50())
            .field("p90", &self.p90())
            .field("p95", &self.p95())
            .field("p99", &self.p99())
            .field("p999", &self.p999())
            .field("max", &self.max())
            .finish()
    }
}

impl Default for LatencySnapshot {
    fn default() -> Self {
        LatencySnapshot::from_parts(vec![0; BUCKETS].into_boxed_slice(), 0, 0)
    }
}

impl LatencySnapshot {
    fn from_parts(buckets: Box<[u64]>, sum_ns: u64, max_ns: u64) -> Self {
        let count = buckets.iter().copied().fold(0u64, u64::wrapping_add);
        LatencySnapshot {
            buckets,
            count,
            sum_ns,
            max_ns,
        }
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The mean (zero when empty).
    pub fn mean(&self) -> Duration {
        match self.count {
            0 => Duration::ZERO,
            n => Duration::from_nanos(self.sum_ns / n),
        }
    }

    /// The largest value recorded (exact; zero when empty).
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns)
    }

    /// The `q`-quantile (`q` in 0..=1, clamped; a NaN `q` reads as 0.5, the median): the
    /// smallest recorded value with at least `q × count` values at or below it, within 0.78 %.
    /// Zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        if rank == self.count {
            return self.max();
        }
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Duration::from_nanos(midpoint(i).min(self.max_ns));
            }
        }
        self.max()
    }

    /// The median.
    pub fn p50(&self) -> Duration {
        self.quantile(0.50)
    }

    /// The 90th percentile.
    pub fn p90(&self) -> Duration {
        self.quantile(0.90)
    }

    /// The 95th percentile.
    pub fn p95(&self) -> Duration {
        self.quantile(0.95)
    }

    /// The 99th percentile.
    pub fn p99(&self) -> Duration {
        self.quantile(0.99)
    }

    /// The 99.9th percentile.
    pub fn p999(&self) -> Duration {
        self.quantile(0.999)
    }

    /// What was recorded after `earlier` (an earlier snapshot of the same histogram); the
    /// maximum is this snapshot's.
    fn since(&self, earlier: &LatencySnapshot) -> LatencySnapshot {
        let buckets = self
            .buckets
            .iter()
            .zip(earlier.buckets.iter())
            .map(|(now, then)| now.wrapping_sub(*then))
            .collect();
        LatencySnapshot::from_parts(
            buckets,
            self.sum_ns.wrapping_sub(earlier.sum_ns),
            self.max_ns,
        )
    }

    /// This snapshot and `other` together (for example several replicas' or windows').
    #[must_use]
    pub fn merge(&self, other: &LatencySnapshot) -> LatencySnapshot {
        let buckets = self
            .buckets
            .iter()
            .zip(other.buckets.iter())
            .map(|(a, b)| a.wrapping_add(*b))
            .collect();
        LatencySnapshot::from_parts(
            buckets,
            self.sum_ns.wrapping_add(other.sum_ns),
            self.max_ns.max(other.max_ns),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_range_in_order_within_the_error_bound() {
        let mut last = 0;
        for ns in [
            0u64,
            1,
            63,
            64,
            65,
            127,
            128,
            1000,
            123_456,
            1 << 30,
            (1 << 44) - 1,
        ] {
            let i = index(ns);
            assert!(i >= last, "monotonic at {ns}");
            last = i;
            let mid = midpoint(i);
            assert!(
                (mid as f64 - ns as f64).abs() <= ns as f64 / 128.0 + 0.5,
                "{ns} → bucket {i} reports {mid}"
            );
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        assert_eq!(index((1 << 44) - 1), BUCKETS - 1);
    }
}
