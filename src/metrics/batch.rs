//! Answer counts handed to the recorder once per interval instead of once per answer.
//!
//! A recorder's counter is one atomic shared by every thread, so incrementing it on every cache
//! hit moves its cache line between cores on every hit: with a Prometheus recorder installed,
//! two threads on the 2-core benchmark VM served ~22 % fewer hits than with none, and the cost
//! grows with the core count. The answers are already counted in per-thread slots (for
//! `stats()`); with an interval set, a task publishes what those slots gained since the last
//! publication — one increment per series per interval — and a hit only reads a flag.
//!
//! * An answer that finds no publishing task starts one on the tokio runtime it runs in. The
//!   task publishes every `interval` while answers keep coming; after an interval with none it
//!   lets the next answer start a new task, and publishes once more an interval later (for an
//!   answer that raced it letting go). While a task runs, answers only count locally.
//! * An answer outside a runtime publishes at once.
//! * The task publishes when it ends, however it ends — done, the runtime shut down, or (on a
//!   runtime built without timers) its sleep panicked; in that last case the cache starts no
//!   more tasks and publishes on the first answer `interval` after the last publication instead.
//! * Dropping the cache publishes what is left.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ::metrics::Counter;

use super::local::Local;

/// The longest interval a cache accepts: longer ones would leave Prometheus' `rate()` over
/// usual windows (1–5 minutes) without data points.
pub(crate) const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// Refuse an interval over [`MAX_INTERVAL`].
pub(crate) fn check_interval(interval: Option<Duration>) -> crate::Result<()> {
    match interval {
        Some(interval) if interval > MAX_INTERVAL => Err(crate::Error::config(format!(
            "metrics_interval must be at most {MAX_INTERVAL:?} (counts would reach the recorder too rarely for rate()), not {interval:?}"
        ))),
        _ => Ok(()),
    }
}

/// The publication state of one set of answer counters.
#[derive(Debug)]
pub(crate) struct Batch {
    interval: Duration,
    /// A publication is scheduled: answers need only count locally.
    scheduled: AtomicBool,
    /// A scheduled task could not sleep (a runtime without timers): publish on the first
    /// answer at or after `due_ms` instead.
    untimed: AtomicBool,
    /// Wall-clock ms of the next publication in the untimed mode.
    due_ms: AtomicU64,
    /// The totals already handed to the recorder, per series. The lock also keeps two
    /// publishers from handing over the same counts.
    published: Mutex<Vec<u64>>,
}

impl Batch {
    pub(crate) fn new(interval: Duration, series: usize) -> Self {
        Batch {
            interval,
            scheduled: AtomicBool::new(false),
            untimed: AtomicBool::new(false),
            due_ms: AtomicU64::new(0),
            published: Mutex::new(vec![0; series]),
        }
    }

    /// Whether an answer just counted locally needs a publication arranged.
    #[inline]
    pub(crate) fn needs_attention(&self) -> bool {
        !self.scheduled.load(Ordering::Relaxed)
    }

    /// Hand the recorder everything `local` gained since the last publication; whether there
    /// was anything.
    pub(crate) fn publish<const K: usize>(
        &self,
        local: &Local<K>,
        counters: &[Option<Counter>],
    ) -> bool {
        // A poisoned lock only means a publisher panicked between two increments: the totals
        // it holds are still the ones handed over.
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut any = false;
        for (i, counter) in counters.iter().enumerate() {
            let (Some(counter), Some(done)) = (counter, published.get_mut(i)) else {
                continue;
            };
            let total = local.get(i);
            let gained = total.wrapping_sub(*done);
            if gained != 0 {
                counter.increment(gained);
                *done = total;
                any = true;
            }
        }
        any
    }
}

/// What a [`Batch`] publishes: the counters and their local twins.
pub(crate) trait Publish: Send + Sync + 'static {
    /// The batch state (`None`: counts go to the recorder one by one).
    fn batch(&self) -> Option<&Batch>;
    /// Hand the recorder what was counted since the last publication; whether there was
    /// anything.
    fn publish(&self) -> bool;
}

/// Arrange for `owner`'s counts to reach the recorder (cold: once per interval).
#[cold]
#[inline(never)]
pub(crate) fn attend<P: Publish>(owner: &Arc<P>) {
    let Some(batch) = owner.batch() else {
        return;
    };
    if batch.untimed.load(Ordering::Relaxed) {
        let now = crate::clock::now_ms();
        let due = batch.due_ms.load(Ordering::Relaxed);
        if now >= due
            && batch
                .due_ms
                .compare_exchange(
                    due,
                    now.saturating_add(ms(batch.interval)),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            owner.publish();
        }
        return;
    }
    if batch.scheduled.swap(true, Ordering::AcqRel) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        batch.scheduled.store(false, Ordering::Release);
        owner.publish();
        return;
    };
    // The guard is made here, not in the task: a task dropped before its first poll (a runtime
    // shutting down) must still publish and let go of `scheduled`.
    let guard = PublishOnDrop {
        owner: Arc::downgrade(owner),
        holds_schedule: true,
    };
    runtime.spawn(publish_while_used(guard, batch.interval));
}

/// The publishing task: every `interval` while answers keep coming, then once more an interval
/// after the cache went quiet (for a count made in the instant the task let go of `scheduled`,
/// which saw it still set and did not schedule a task of its own).
async fn publish_while_used<P: Publish>(mut guard: PublishOnDrop<P>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(owner) = guard.owner.upgrade() else {
            return; // the cache is gone; its own drop published
        };
        if !owner.publish() {
            break;
        }
    }
    guard.let_go();
    tokio::time::sleep(interval).await;
    // `guard` publishes as it drops.
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Publishes when the publishing task ends, whichever way it ends, and lets the next answer
/// schedule a task again.
struct PublishOnDrop<P: Publish> {
    owner: Weak<P>,
    /// This task still owns `scheduled` (sets it back when it lets go).
    holds_schedule: bool,
}

impl<P: Publish> PublishOnDrop<P> {
    /// Clear `scheduled`: an answer counted from here on schedules the next publication.
    fn let_go(&mut self) {
        if std::mem::take(&mut self.holds_schedule) {
            if let Some(batch) = self.owner.upgrade().as_deref().and_then(Publish::batch) {
                batch.scheduled.store(false, Ordering::Release);
            }
        }
    }
}

impl<P: Publish> Drop for PublishOnDrop<P> {
    fn drop(&mut self) {
        let Some(owner) = self.owner.upgrade() else {
            return; // the cache is gone; its own drop published
        };
        let Some(batch) = owner.batch() else {
            return;
        };
        if std::thread::panicking() {
            // A sleep failed (a runtime without timers): stop scheduling tasks.
            batch.due_ms.store(
                crate::clock::now_ms().saturating_add(ms(batch.interval)),
                Ordering::Relaxed,
            );
            batch.untimed.store(true, Ordering::Relaxed);
        }
        self.let_go();
        owner.publish();
    }
}
