//! Single-flight: at most one load per key at a time, shared by every caller that asks meanwhile.
//!
//! The load runs on its own tokio task, detached from the callers' futures. Each caller (the one
//! that started the load included) only *waits* for the result on a `watch` channel — or does not
//! wait at all (a background refresh) — so dropping any caller, even the first, neither cancels
//! the load nor stalls the others. The loader itself runs on a further task so that a panic in it
//! is caught by tokio and turned into an error.
//!
//! The table entry for a key is removed by a drop guard owned by the load task, so it goes away on
//! every outcome: success, error, panic, and the task being dropped by a shutting-down runtime.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{watch, Semaphore};

use crate::cache::Cache;
use crate::entry::Entry;
use crate::error::{BoxError, Error, Result, SharedError};
use crate::metrics::{LoadMetrics, Stats};

/// Where a flight stores what it loaded.
#[async_trait]
pub(crate) trait LoadTarget<V>: Send + Sync + 'static {
    /// A second look before paying for a load (uncounted).
    async fn recheck(&self, key: &str) -> Option<Entry<V>>;
    /// Store before the waiters are answered (fast, local layers).
    async fn store_before_answer(&self, key: &str, entry: Entry<V>);
    /// Store after the waiters are answered (slow, remote layers); the flight stays in the table
    /// meanwhile, so new callers get the value at once instead of loading again.
    async fn store_after_answer(&self, key: &str, entry: Entry<V>);
}

/// Any [`Cache`] as a load target: re-check with `peek`, store with `set` before answering.
pub(crate) struct CacheTarget<S>(pub(crate) S);

#[async_trait]
impl<V, S> LoadTarget<V> for CacheTarget<S>
where
    V: Send + Sync + 'static,
    S: Cache<V> + 'static,
{
    async fn recheck(&self, key: &str) -> Option<Entry<V>> {
        self.0.peek(key).await.ok().flatten()
    }
    async fn store_before_answer(&self, key: &str, entry: Entry<V>) {
        // A failed write must not cost the callers the value they paid for; the layer has
        // counted its error.
        let _ = self.0.set(key, entry).await;
    }
    async fn store_after_answer(&self, _key: &str, _entry: Entry<V>) {}
}

/// Turns a loaded value (and the load's duration) into the entry to store, or `None`.
pub(crate) type MakeEntry<V> = Box<dyn FnOnce(&V, Duration) -> Option<Entry<V>> + Send>;

/// How a loaded value becomes an entry, and the rules around the load.
pub(crate) struct LoadSpec<V> {
    /// The entry to store for a loaded value (given the load's duration), or `None` to return
    /// the value without storing it.
    pub(crate) make_entry: MakeEntry<V>,
    /// A re-checked entry only counts if it is fresh and fresher than this (ms since the epoch):
    /// a refresh must not be satisfied by the very entry it is refreshing.
    pub(crate) fresher_than_ms: u64,
    /// Limits concurrent loads of the cache, when set.
    pub(crate) limit: Option<Arc<Semaphore>>,
}

/// What every waiter of one flight receives. Cloned once per waiter.
#[derive(Clone)]
enum Outcome<V> {
    Value(V),
    Loader(SharedError),
    Panicked(Arc<str>),
    Cancelled,
}

type Slot<V> = watch::Receiver<Option<Outcome<V>>>;

struct Flight<V> {
    id: u64,
    rx: Slot<V>,
}

/// A handle on a running flight; [`Waiter::wait`] resolves to its value or shared error.
pub(crate) struct Waiter<V>(Slot<V>);

impl<V: Clone> Waiter<V> {
    pub(crate) async fn wait(mut self) -> Result<V> {
        let outcome = match self.0.wait_for(Option::is_some).await {
            Ok(slot) => slot.clone(),
            // The load task was dropped before answering (runtime shutdown).
            Err(_) => return Err(Error::LoadCancelled),
        };
        match outcome {
            Some(Outcome::Value(v)) => Ok(v),
            Some(Outcome::Loader(e)) => Err(Error::Loader(e)),
            Some(Outcome::Panicked(message)) => Err(Error::LoaderPanicked {
                message: message.to_string(),
            }),
            Some(Outcome::Cancelled) | None => Err(Error::LoadCancelled),
        }
    }
}

/// The in-flight table of one cache, plus its loader metrics.
pub(crate) struct Flights<V> {
    table: Mutex<HashMap<Arc<str>, Flight<V>>>,
    next_id: AtomicU64,
    /// Bumped each time a load stores its value; lets a new flight skip the re-check when nothing
    /// completed since its caller looked.
    completed: AtomicU64,
    pub(crate) metrics: LoadMetrics,
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
}

impl<V> Drop for FlightGuard<V> {
    fn drop(&mut self) {
        let mut table = self.flights.lock();
        if table.get(&*self.key).is_some_and(|f| f.id == self.id) {
            table.remove(&*self.key);
        }
    }
}

impl<V> Flights<V> {
    pub(crate) fn new(cache_name: &str) -> Self {
        Flights {
            table: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            metrics: LoadMetrics::new(cache_name),
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

    /// Number of loads currently running.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether a load for `key` is running.
    pub(crate) fn is_loading(&self, key: &str) -> bool {
        self.lock().contains_key(key)
    }

    pub(crate) fn fill(&self, stats: &mut Stats) {
        self.metrics.fill(stats);
    }
}

/// Whether [`Flights::start_or_join`] started a load or joined a running one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Joined {
    Started,
    Joined,
}

impl<V> Flights<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// Join the load running for `key`, or start one on a detached task.
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
        let mut table = self.lock();
        if let Some(flight) = table.get(key) {
            return Ok((Waiter(flight.rx.clone()), Joined::Joined));
        }
        let (tx, rx) = watch::channel(None);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let key: Arc<str> = Arc::from(key);
        table.insert(Arc::clone(&key), Flight { id, rx: rx.clone() });
        drop(table);
        let guard = FlightGuard {
            flights: Arc::clone(self),
            key,
            id,
        };
        // A caller can miss the cache just before an earlier flight for this key stored its
        // value, and get here just after that flight left the table. Only then is a second look
        // needed before paying for a load (and always for a refresh, which must not load twice).
        let recheck = self.generation() != generation || spec.fresher_than_ms > 0;
        runtime.spawn(run_flight(guard, tx, target, recheck, loader, spec));
        Ok((Waiter(rx), Joined::Started))
    }
}

async fn run_flight<V, T, F, Fut, E>(
    guard: FlightGuard<V>,
    tx: watch::Sender<Option<Outcome<V>>>,
    target: Arc<T>,
    recheck: bool,
    loader: F,
    spec: LoadSpec<V>,
) where
    V: Clone + Send + Sync + 'static,
    T: LoadTarget<V> + ?Sized,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    if recheck {
        if let Some(entry) = target.recheck(&guard.key).await {
            if entry.is_fresh() && entry.fresh_until_ms() > spec.fresher_than_ms {
                drop(guard);
                tx.send_replace(Some(Outcome::Value(entry.into_value())));
                return;
            }
        }
    }

    // Waiting for a permit is part of the load: the callers' timeouts apply to it.
    let _permit = match &spec.limit {
        // The semaphore is never closed, so acquiring only fails in theory.
        Some(limit) => Arc::clone(limit).acquire_owned().await.ok(),
        None => None,
    };
    let started = Instant::now();
    // The loader runs on its own task so that tokio catches a panic in it (or in the closure call).
    let joined = tokio::spawn(async move { loader().await.map_err(Into::into) }).await;
    let took = started.elapsed();
    drop(_permit);
    let flights = Arc::clone(&guard.flights);
    match joined {
        Ok(Ok(value)) => {
            flights.metrics.load_ok(took);
            let entry = (spec.make_entry)(&value, took);
            if let Some(entry) = &entry {
                target.store_before_answer(&guard.key, entry.clone()).await;
                flights.completed.fetch_add(1, Ordering::Release);
            }
            tx.send_replace(Some(Outcome::Value(value)));
            if let Some(entry) = entry {
                target.store_after_answer(&guard.key, entry).await;
            }
            drop(guard);
        }
        Ok(Err(err)) => {
            flights.metrics.load_error(took);
            // Leave the table first, so that a caller who sees this error and calls again starts
            // afresh.
            drop(guard);
            tx.send_replace(Some(Outcome::Loader(SharedError::new(err))));
        }
        Err(join) => {
            flights.metrics.load_error(took);
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
            tx.send_replace(Some(outcome));
        }
    }
}
