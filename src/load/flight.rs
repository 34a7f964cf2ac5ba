//! Single-flight: at most one flight per key at a time, shared by every caller that asks meanwhile.
//!
//! A flight covers everything a missing key costs: the second look at L1, the L2 read, the load
//! and the writes. So a stampede of callers on a cold key makes one L2 read and at most one load;
//! every caller but the first joins the flight.
//!
//! The flight runs on its own tokio task, detached from the callers' futures. Each caller (the one
//! that started it included) only *waits* for the result on a `watch` channel — or does not wait
//! at all (a background refresh) — so dropping any caller, even the first, neither cancels the
//! load nor stalls the others. The loader itself runs on a further task so that a panic in it is
//! caught by tokio and turned into an error.
//!
//! While the loader runs, the flight publishes the stale value it found (if any), so a waiter with
//! fail-safe can answer with it at its soft timeout even when its own L1 had nothing.
//!
//! The table entry for a key is removed by a drop guard owned by the flight task, so it goes away
//! on every outcome: success, error, panic, and the task being dropped by a shutting-down runtime.
//! A flight stays in the table after answering while it finishes writing to L2; a caller never
//! joins it then, nor after its key changed: it starts a flight in its place (see
//! [`Flight::joinable`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{watch, Semaphore};

use super::limit::{self, Held, Waiver};
use crate::entry::Entry;
use crate::error::{BoxError, Error, Result, SharedError};
use crate::load::answer::{Origin, Source};
use crate::metrics::{LoadMetrics, Stats};

/// How long a flight's callers wait for the value to reach the slow layers (L2) before they are
/// answered anyway (the write then goes on without them).
pub(crate) const STORE_WAIT: Duration = Duration::from_millis(50);

/// What an L2 read found.
pub(crate) enum L2Read<V> {
    /// An entry that is still usable.
    Found(Entry<V>),
    /// L2 answered: nothing usable there.
    Missing,
    /// No answer: no L2, an open circuit, or an error.
    Unavailable,
}

/// A lease on a key held for the fleet (cross-process single-flight), released when dropped.
pub(crate) trait LeaseGuard: Send {
    /// The value was stored and announced: the waiting replicas are woken by that.
    fn stored(&mut self);
}

/// What the fleet lease step decided.
pub(crate) enum FleetLease<V> {
    /// Load here (with the lease, when one was won).
    Load(Option<Box<dyn LeaseGuard>>),
    /// Another replica loaded the value meanwhile; it was read from L2 (and copied into L1).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Found(Entry<V>),
}

/// The layers a flight reads and writes.
#[async_trait]
pub(crate) trait LoadTarget<V>: Send + Sync + 'static {
    /// A second look at L1 before paying for a load (uncounted).
    async fn recheck(&self, key: &str) -> Option<Entry<V>>;
    /// The L2 entry for `key` (uncounted). A fresh one answers the flight (and is copied into
    /// L1 by the target).
    async fn read_l2(&self, key: &str) -> L2Read<V>;
    /// A reading of `key`'s L1 invalidation counter, taken before an L2 read of it.
    fn epoch(&self, key: &str) -> u64;
    /// Copy an entry read from L2 into L1, unless an invalidation since `epoch` may make it old.
    async fn backfill(&self, key: &str, entry: Entry<V>, epoch: u64);
    /// Store before the waiters are answered (fast, local layers).
    async fn store_before_answer(&self, key: &str, entry: Entry<V>);
    /// Store after the waiters are answered (slow, remote layers); the flight stays in the table
    /// meanwhile, so new callers get the value at once instead of loading again. `false` when a
    /// slow layer holds a change of the key newer than the load (another replica's write,
    /// delete or expire, whose message may not have arrived yet): the value is not stored there.
    async fn store_after_answer(&self, key: &str, entry: Entry<V>) -> bool;
    /// Take back what the flight stored for `key`: the key changed while it was being stored.
    /// `in_l2` is `false` when the slow layers refused the value (nothing to take back there).
    async fn unstore(&self, key: &str, created_us: u64, in_l2: bool);
    /// The loader failed and fail-safe serves `stale`: keep it in L1 until `until_ms` so the
    /// loader is not called again before then.
    async fn throttle(&self, key: &str, stale: Entry<V>, until_ms: u64);
    /// Before a load that L2 could not answer: with a fleet backplane, win the key's lease or
    /// wait for the replica that holds it. A found entry answers only if fresh and fresher than
    /// `fresher_than_ms`.
    async fn fleet_lease(&self, key: &str, fresher_than_ms: u64) -> FleetLease<V>;
    /// A load that would have tried the fleet lease runs without it (L2 did not answer): count
    /// it, where there is a fleet.
    fn lease_bypassed(&self);
}

/// Turns a loaded value (and the load's duration, and the wall-clock time in µs it started at)
/// into the entry to store (or `None` to return the value without storing it) and whether it is
/// a negative entry.
pub(crate) type MakeEntry<V> =
    Box<dyn FnOnce(&V, Duration, u64) -> (Option<Entry<V>>, bool) + Send>;

/// How a loaded value becomes an entry, and the rules around the load.
pub(crate) struct LoadSpec<V> {
    pub(crate) make_entry: MakeEntry<V>,
    /// A found entry only answers the flight if it is fresh and fresher than this (ms since the
    /// epoch): a refresh must not be satisfied by the very entry it is refreshing.
    pub(crate) fresher_than_ms: u64,
    /// Limits concurrent loads of the cache, when set.
    pub(crate) limit: Option<Arc<Semaphore>>,
    /// The stale entry the starting caller found in L1, if any.
    pub(crate) stale: Option<Entry<V>>,
    /// A fresh L1 entry not trusted on its own (the backplane could not hear the fleet): it
    /// answers only when L2 cannot.
    pub(crate) l1_backup: Option<Entry<V>>,
    /// With fail-safe on: how long a stale value is served after the loader failed.
    pub(crate) fail_safe_throttle: Option<Duration>,
    /// Whether to take the fleet's lease before loading (with a backplane).
    pub(crate) lease: bool,
    /// The span the loader runs in (the starting caller's).
    #[cfg(feature = "tracing")]
    pub(crate) span: tracing::Span,
}

/// A value a flight produced, with where it came from.
#[derive(Clone)]
pub(crate) struct Resolved<V> {
    pub(crate) entry: Entry<V>,
    pub(crate) source: Source,
}

/// What every waiter of one flight receives. Cloned once per waiter.
#[derive(Clone)]
enum Outcome<V> {
    Value(Resolved<V>),
    Loader(SharedError),
    Panicked(Arc<str>),
    Cancelled,
}

/// The state of a flight as its waiters see it.
#[derive(Clone)]
struct Slot<V> {
    /// The stale value found so far, if any (kept after the flight is done, for fail-safe).
    stale: Option<(Entry<V>, Origin)>,
    /// The result, once there is one.
    done: Option<Outcome<V>>,
}

type Channel<V> = watch::Receiver<Slot<V>>;

struct Flight<V> {
    id: u64,
    rx: Channel<V>,
    /// Set when the key changes while the flight runs (see [`Flights::supersede`]).
    superseded: Arc<AtomicBool>,
    /// Lets the flight go ahead without a permit (see [`limit`](super::limit)).
    waiver: Arc<Waiver>,
}

impl<V> Flight<V> {
    /// Whether a caller may join this flight: not once it has answered (it may still be
    /// storing its value, and a caller who asks after the answer must not be handed a value
    /// that was never stored, as with a zero lifetime) nor once its key changed (its value was
    /// read before the change).
    fn joinable(&self) -> bool {
        !self.superseded.load(Ordering::SeqCst) && self.rx.borrow().done.is_none()
    }
}

/// A handle on a running flight.
pub(crate) struct Waiter<V>(Channel<V>);

impl<V: Clone> Waiter<V> {
    /// The flight's result: a value with its source, or the shared error.
    pub(crate) async fn wait(&mut self) -> Result<Resolved<V>> {
        let outcome = match self.0.wait_for(|s| s.done.is_some()).await {
            Ok(slot) => slot.done.clone().unwrap_or(Outcome::Cancelled),
            // The flight task was dropped before answering (runtime shutdown).
            Err(_) => return Err(Error::LoadCancelled),
        };
        match outcome {
            Outcome::Value(resolved) => Ok(resolved),
            Outcome::Loader(e) => Err(Error::Loader(e)),
            Outcome::Panicked(message) => Err(Error::LoaderPanicked {
                message: message.to_string(),
            }),
            Outcome::Cancelled => Err(Error::LoadCancelled),
        }
    }

    /// The stale value the flight found, if it published one.
    pub(crate) fn stale(&self) -> Option<(Entry<V>, Origin)> {
        self.0.borrow().stale.clone()
    }
}

/// The in-flight table of one cache, plus its loader metrics.
pub(crate) struct Flights<V> {
    table: Mutex<HashMap<Arc<str>, Flight<V>>>,
    /// Flight tasks not finished yet, those a newer flight replaced in the table included.
    running: AtomicUsize,
    next_id: AtomicU64,
    /// Bumped each time a load stores its value; lets a new flight skip the re-check when nothing
    /// completed since its caller looked.
    completed: AtomicU64,
    pub(crate) metrics: LoadMetrics,
    /// The cache's name, for spans.
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    name: Arc<str>,
}

impl<V> std::fmt::Debug for Flights<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights")
            .field("in_flight", &self.len())
            .finish_non_exhaustive()
    }
}

/// Removes one flight from the table when dropped, unless a newer flight replaced it.
struct FlightGuard<V> {
    flights: Arc<Flights<V>>,
    key: Arc<str>,
    id: u64,
    superseded: Arc<AtomicBool>,
}

impl<V> FlightGuard<V> {
    /// Whether the key changed since the flight started.
    fn superseded(&self) -> bool {
        self.superseded.load(Ordering::SeqCst)
    }
}

impl<V> Drop for FlightGuard<V> {
    fn drop(&mut self) {
        let mut table = self.flights.lock();
        if table.get(&*self.key).is_some_and(|f| f.id == self.id) {
            table.remove(&*self.key);
        }
        self.flights.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<V> Flights<V> {
    pub(crate) fn new(cache_name: &str) -> Self {
        Flights {
            table: Mutex::new(HashMap::new()),
            running: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            metrics: LoadMetrics::new(cache_name),
            name: Arc::from(cache_name),
        }
    }

    /// The table stays consistent even if a thread panicked while holding the lock (every
    /// critical section is a single map operation), so a poisoned lock is simply taken over.
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Flight<V>>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Read before looking a key up; pass to [`Flights::start_or_join`].
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.completed.load(Ordering::Acquire)
    }

    /// Number of flights currently running (a flight runs until its value is stored).
    pub(crate) fn len(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Whether a flight for `key` is running.
    pub(crate) fn is_loading(&self, key: &str) -> bool {
        self.lock().contains_key(key)
    }

    /// `key` changed (a `set`, `delete` or `expire` here, or one another replica announced):
    /// the load running for it, if any, read the source before the change, so its value answers
    /// the callers that were waiting for it but is not stored over the change. Call it before
    /// the change is written.
    pub(crate) fn supersede(&self, key: &str) {
        if let Some(flight) = self.lock().get(key) {
            flight.superseded.store(true, Ordering::SeqCst);
        }
    }

    /// [`supersede`](Self::supersede) every key starting with `prefix` (every key for `""`).
    pub(crate) fn supersede_prefix(&self, prefix: &str) {
        for (key, flight) in self.lock().iter() {
            if key.starts_with(prefix) {
                flight.superseded.store(true, Ordering::SeqCst);
            }
        }
    }

    pub(crate) fn fill(&self, stats: &mut Stats) {
        self.metrics.fill(stats);
    }
}

/// Whether [`Flights::start_or_join`] started a flight or joined a running one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Joined {
    Started,
    Joined,
}

impl<V> Flights<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// Join the flight running for `key`, or start one on a detached task (in place of a flight
    /// that may no longer be joined: see [`Flight::joinable`]).
    pub(crate) fn start_or_join<T, F, Fut, E>(
        self: &Arc<Self>,
        target: Arc<T>,
        key: &str,
        generation: u64,
        loader: F,
        spec: LoadSpec<V>,
    ) -> Result<(Waiter<V>, Joined)>
    where
        T: LoadTarget<V> + ?Sized,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|e| Error::NoRuntime(Box::new(e)))?;
        let held = Held::current();
        let cache = Arc::as_ptr(self) as usize;
        let mut table = self.lock();
        let mut superseded = None;
        if let Some(flight) = table.get(key) {
            if held.is_loading(cache, key) {
                return Err(Error::RecursiveLoad {
                    key: key.to_owned(),
                });
            }
            if flight.joinable() {
                if held.covers(spec.limit.as_ref()) {
                    // This caller is a load of this cache: its permit is idle while it waits
                    // here.
                    flight.waiver.waive();
                }
                return Ok((Waiter(flight.rx.clone()), Joined::Joined));
            }
            if !flight.superseded.load(Ordering::SeqCst) {
                // It answered and is still storing its value: a change from now on must reach
                // it as well as the new flight (its late write must not outlive the change).
                superseded = Some(Arc::clone(&flight.superseded));
            }
        }
        let initial = Slot {
            stale: spec.stale.clone().map(|e| (e, Origin::L1)),
            done: None,
        };
        let (tx, rx) = watch::channel(initial);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let key: Arc<str> = Arc::from(key);
        let waiver = Arc::new(Waiver::default());
        let superseded = superseded.unwrap_or_else(|| Arc::new(AtomicBool::new(false)));
        table.insert(
            Arc::clone(&key),
            Flight {
                id,
                rx: rx.clone(),
                waiver: Arc::clone(&waiver),
                superseded: Arc::clone(&superseded),
            },
        );
        self.running.fetch_add(1, Ordering::SeqCst);
        drop(table);
        let guard = FlightGuard {
            flights: Arc::clone(self),
            key,
            id,
            superseded,
        };
        // A caller can miss L1 just before an earlier flight for this key stored its value, and
        // get here just after that flight left the table. Only then is a second look at L1
        // needed before reading L2 and paying for a load (and always for a refresh).
        let recheck = self.generation() != generation || spec.fresher_than_ms > 0;
        let limits = (held, waiver);
        runtime.spawn(run_flight(guard, tx, target, recheck, loader, spec, limits));
        Ok((Waiter(rx), Joined::Started))
    }
}

/// The better of two stale candidates: the one usable for longer.
fn later<V>(
    a: Option<(Entry<V>, Origin)>,
    b: Option<(Entry<V>, Origin)>,
) -> Option<(Entry<V>, Origin)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.0.stale_until_ms() > a.0.stale_until_ms() {
            b
        } else {
            a
        }),
        (a, b) => a.or(b),
    }
}

async fn run_flight<V, T, F, Fut, E>(
    guard: FlightGuard<V>,
    tx: watch::Sender<Slot<V>>,
    target: Arc<T>,
    recheck: bool,
    loader: F,
    spec: LoadSpec<V>,
    (held, waiver): (Held, Arc<Waiver>),
) where
    V: Clone + Send + Sync + 'static,
    T: LoadTarget<V> + ?Sized,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    let answers =
        |entry: &Entry<V>| entry.is_fresh() && entry.fresh_until_ms() > spec.fresher_than_ms;
    let finish = |tx: &watch::Sender<Slot<V>>, outcome: Outcome<V>| {
        tx.send_modify(|slot| slot.done = Some(outcome));
    };
    let done = |tx: &watch::Sender<Slot<V>>, entry: Entry<V>, source| {
        finish(tx, Outcome::Value(Resolved { entry, source }));
    };
    if recheck {
        if let Some(entry) = target.recheck(&guard.key).await {
            if answers(&entry) {
                drop(guard);
                done(&tx, entry, Source::L1Hit);
                return;
            }
        }
    }
    let mut stale = spec.stale.clone().map(|e| (e, Origin::L1));
    let epoch = target.epoch(&guard.key);
    let mut l2_answered = true;
    match target.read_l2(&guard.key).await {
        L2Read::Found(entry) => {
            if answers(&entry) {
                target.backfill(&guard.key, entry.clone(), epoch).await;
                guard.flights.completed.fetch_add(1, Ordering::Release);
                drop(guard);
                done(&tx, entry, Source::L2Hit);
                return;
            }
            if entry.is_usable() {
                stale = later(stale, Some((entry, Origin::L2)));
                let published = stale.clone();
                tx.send_modify(|slot| slot.stale = published);
            }
        }
        L2Read::Unavailable => {
            l2_answered = false;
            if let Some(entry) = spec.l1_backup.clone().filter(|e| answers(e)) {
                drop(guard);
                done(&tx, entry, Source::L1Hit);
                return;
            }
        }
        L2Read::Missing => {}
    }

    // One replica of the fleet loads; the others wait for its value (never without L2: the
    // lease is for efficiency, and a replica that cannot reach Redis loads on its own).
    let mut lease = None;
    if spec.lease && !l2_answered {
        target.lease_bypassed();
    }
    if spec.lease && l2_answered {
        match target.fleet_lease(&guard.key, spec.fresher_than_ms).await {
            FleetLease::Found(entry) => {
                guard.flights.completed.fetch_add(1, Ordering::Release);
                drop(guard);
                done(&tx, entry, Source::L2Hit);
                return;
            }
            FleetLease::Load(held) => lease = held,
        }
    }

    // Waiting for a permit is part of the load: the callers' timeouts apply to it. A load
    // started by a loader of this cache runs under that loader's permit.
    let (_permit, held) = limit::admit(spec.limit.as_ref(), held, &waiver).await;
    // Read before the loader runs: the entry counts as created then (compared with changes made
    // meanwhile, here or on another replica). Derived afterwards from the duration, it came out
    // late by however long this task waited for the CPU in between.
    let started_us = crate::entry::now_us();
    let started = Instant::now();
    // The loader runs on its own task so that tokio catches a panic in it (or in the closure
    // call), inside the span of the caller that started it.
    let load = async move { loader().await.map_err(Into::into) };
    // The load runs in a span of its own, a child of the span of the caller that started it.
    #[cfg(feature = "tracing")]
    let load_span = tracing::debug_span!(
        parent: &spec.span,
        "layercache.load",
        cache = %guard.flights.name,
        outcome = tracing::field::Empty,
    );
    let load = crate::traced!(load_span.clone(), load);
    let held = held.loading(Arc::as_ptr(&guard.flights) as usize, Arc::clone(&guard.key));
    let joined = tokio::spawn(held.scope(load)).await;
    #[cfg(feature = "tracing")]
    load_span.record(
        "outcome",
        match &joined {
            Ok(Ok(_)) => "ok",
            Ok(Err(_)) => "error",
            Err(e) if e.is_panic() => "panicked",
            Err(_) => "cancelled",
        },
    );
    let took = started.elapsed();
    drop(_permit);
    let flights = Arc::clone(&guard.flights);
    match joined {
        Ok(Ok(value)) => {
            flights.metrics.load_ok(took);
            let (entry, negative) = (spec.make_entry)(&value, took, started_us);
            let source = if negative {
                Source::Negative
            } else {
                Source::Loaded
            };
            match entry {
                Some(entry) if guard.superseded() => {
                    // The key changed while it loaded (deleted once its source changed, or set
                    // to a newer value): this value answers the callers that asked before the
                    // change, and is not stored over it.
                    drop(lease);
                    drop(guard);
                    done(&tx, entry, source);
                }
                Some(entry) => {
                    target.store_before_answer(&guard.key, entry.clone()).await;
                    flights.completed.fetch_add(1, Ordering::Release);
                    // Answer once the value is in the slow layers too, so that a read after the
                    // answer — here or on another replica — finds it there; but never wait for
                    // them longer than `STORE_WAIT`, nor at all when L2 did not answer this
                    // flight's read (a call pays for an unresponsive L2 once): then answer, and
                    // finish storing meanwhile.
                    let mut store = target.store_after_answer(&guard.key, entry.clone());
                    let mut kept = std::future::poll_fn(|cx| {
                        std::task::Poll::Ready(match store.as_mut().poll(cx) {
                            std::task::Poll::Ready(kept) => Some(kept),
                            std::task::Poll::Pending => None,
                        })
                    })
                    .await;
                    // Nothing to wait for (no L2, an open circuit) takes no timer.
                    if kept.is_none() && l2_answered {
                        kept = tokio::time::timeout(STORE_WAIT, store.as_mut()).await.ok();
                    }
                    let created_us = entry.created_us();
                    done(&tx, entry, source);
                    let kept = match kept {
                        Some(kept) => {
                            drop(store);
                            kept
                        }
                        None => store.await,
                    };
                    if guard.superseded() || !kept {
                        // Changed while this value was loaded or stored (here, or on another
                        // replica whose message has not arrived yet: L2 held the newer change):
                        // the change wins, whichever of the two writes reached a layer last (a
                        // newer value it wrote stays).
                        target.unstore(&guard.key, created_us, kept).await;
                    }
                    if let Some(lease) = &mut lease {
                        lease.stored();
                    }
                    drop(lease);
                    drop(guard);
                }
                None => {
                    // Not admitted: answered, not stored. Leave the table first, so that a
                    // caller who calls again loads again instead of joining this flight.
                    drop(lease);
                    drop(guard);
                    done(&tx, Entry::new(value, Duration::ZERO), source);
                }
            }
        }
        Ok(Err(err)) => {
            flights.metrics.load_error(took);
            if let (Some(throttle), Some((stale, _)), false) =
                (spec.fail_safe_throttle, &stale, guard.superseded())
            {
                let until = crate::entry::now_ms()
                    .saturating_add(throttle.as_millis() as u64)
                    .min(stale.stale_until_ms());
                target.throttle(&guard.key, stale.clone(), until).await;
            }
            // Leave the table first, so that a caller who sees this error and calls again starts
            // afresh.
            drop(guard);
            finish(&tx, Outcome::Loader(SharedError::new(err)));
        }
        Err(join) => {
            flights.metrics.load_error(took);
            if let (Some(throttle), Some((stale, _)), false) =
                (spec.fail_safe_throttle, &stale, guard.superseded())
            {
                let until = crate::entry::now_ms()
                    .saturating_add(throttle.as_millis() as u64)
                    .min(stale.stale_until_ms());
                target.throttle(&guard.key, stale.clone(), until).await;
            }
            let outcome = if join.is_panic() {
                let payload = join.into_panic();
                let message: Arc<str> = if let Some(s) = payload.downcast_ref::<&str>() {
                    Arc::from(*s)
                } else if let Some(s) = payload.downcast_ref::<String>() {
                    Arc::from(s.as_str())
                } else {
                    Arc::from("non-string panic payload")
                };
                Outcome::Panicked(message)
            } else {
                Outcome::Cancelled
            };
            drop(guard);
            finish(&tx, outcome);
        }
    }
}
