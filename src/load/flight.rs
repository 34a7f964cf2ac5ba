//! Single-flight: at most one load per key at a time, shared by every caller that asks meanwhile.
//!
//! The load runs on its own tokio task, detached from the callers' futures. Each caller (the one
//! that started the load included) only *waits* for the result on a `watch` channel, so dropping
//! any caller — even the first — neither cancels the load nor stalls the others. The loader itself
//! runs on a further task so that a panic in it is caught by tokio and turned into an error.
//!
//! The table entry for a key is removed by a drop guard owned by the load task, so it goes away on
//! every outcome: success, error, panic, and the task being dropped by a shutting-down runtime.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::cache::Cache;
use crate::entry::Entry;
use crate::error::{BoxError, Error, Result, SharedError};
use crate::metrics::{LoadMetrics, Stats};

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
    /// The table stays consistent even if a thread panicked while holding the lock (every
    /// critical section is a single map operation), so a poisoned lock is simply taken over.
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Flight<V>>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Read before looking a key up; pass to [`Flights::load`].
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.completed.load(Ordering::Acquire)
    }

    /// Number of loads currently running.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

impl<V> Flights<V>
where
    V: Clone + Send + Sync + 'static,
{
    pub(crate) fn new(cache_name: &str) -> Self {
        Flights {
            table: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            metrics: LoadMetrics::new(cache_name),
        }
    }

    pub(crate) fn fill(&self, stats: &mut Stats) {
        self.metrics.fill(stats);
    }

    /// Join the load running for `key`, or start one. Resolves to the loaded value or the shared
    /// error. `store` receives the loaded value (built into an entry by `make_entry`) before any
    /// waiter is answered.
    pub(crate) async fn load<S, F, Fut, E>(
        self: &Arc<Self>,
        store: S,
        key: &str,
        generation: u64,
        loader: F,
        make_entry: impl FnOnce(V, Duration) -> Entry<V> + Send + 'static,
    ) -> Result<V>
    where
        S: Cache<V> + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let runtime = tokio::runtime::Handle::try_current().map_err(Error::NoRuntime)?;
        let mut rx = {
            let mut table = self.lock();
            if let Some(flight) = table.get(key) {
                self.metrics.coalesced();
                flight.rx.clone()
            } else {
                let (tx, rx) = watch::channel(None);
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let key: Arc<str> = Arc::from(key);
                table.insert(Arc::clone(&key), Flight { id, rx: rx.clone() });
                let guard = FlightGuard {
                    flights: Arc::clone(self),
                    key,
                    id,
                };
                // A caller can miss the cache just before an earlier flight for this key stored
                // its value, and get here just after that flight left the table. Only then is a
                // second look needed before paying for a load.
                let recheck = self.generation() != generation;
                runtime.spawn(run_flight(guard, tx, store, recheck, loader, make_entry));
                rx
            }
        };
        let outcome = match rx.wait_for(Option::is_some).await {
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

async fn run_flight<V, S, F, Fut, E>(
    guard: FlightGuard<V>,
    tx: watch::Sender<Option<Outcome<V>>>,
    store: S,
    recheck: bool,
    loader: F,
    make_entry: impl FnOnce(V, Duration) -> Entry<V>,
) where
    V: Clone + Send + Sync + 'static,
    S: Cache<V>,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    if recheck {
        if let Ok(Some(entry)) = store.peek(&guard.key).await {
            if entry.is_fresh() {
                drop(guard);
                tx.send_replace(Some(Outcome::Value(entry.into_value())));
                return;
            }
        }
    }

    let started = Instant::now();
    // The loader runs on its own task so that tokio catches a panic in it (or in the closure call).
    let joined = tokio::spawn(async move { loader().await.map_err(Into::into) }).await;
    let took = started.elapsed();
    let flights = Arc::clone(&guard.flights);
    let outcome = match joined {
        Ok(Ok(value)) => {
            flights.metrics.load_ok(took);
            let entry = make_entry(value.clone(), took);
            // A failed write must not cost the callers the value they paid for; the layer has
            // counted its error.
            let _ = store.set(&guard.key, entry).await;
            flights.completed.fetch_add(1, Ordering::Release);
            Outcome::Value(value)
        }
        Ok(Err(err)) => {
            flights.metrics.load_error(took);
            Outcome::Loader(SharedError::new(err))
        }
        Err(join) => {
            flights.metrics.load_error(took);
            if join.is_panic() {
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
            }
        }
    };
    // Leave the table first, so that a caller who sees this outcome and calls again starts afresh.
    drop(guard);
    tx.send_replace(Some(outcome));
}
