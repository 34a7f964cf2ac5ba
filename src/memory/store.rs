//! The engines behind [`MemoryCache`](super::MemoryCache): moka (default) or quick_cache.
//!
//! Both keep `Entry` values under `Arc<str>` keys and enforce each entry's own deadlines the same
//! way: a lookup never returns an entry past its stale deadline (checked against the request's
//! clock reading, exact to the millisecond) and removes it; what is never read again is
//! reclaimed by a sweep — at most every [`SWEEP_EVERY_MS`] after an insert, on a blocking
//! thread so no caller waits for it, and on `run_pending_tasks` — or evicted by capacity first.
//!
//! moka's own per-entry expiry (`Expiry`) would do the reclaiming too, but it costs every hit
//! ~40 ns of timer bookkeeping (the moka-engine hit took ~235 ns with it, ~195 ns without, on
//! the benchmark VM); sweeping costs nothing per hit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
#[cfg(feature = "quick-cache")]
use std::time::Duration;

use crate::entry::Entry;

/// Which engine stores a [`MemoryCache`](super::MemoryCache)'s entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Engine {
    /// moka (`moka::sync::Cache`): TinyLFU admission, time-to-idle, exact per-entry expiry. The
    /// default.
    #[default]
    Moka,
    /// quick_cache (feature `quick-cache`): S3-FIFO eviction and a much cheaper hit. No
    /// time-to-idle.
    #[cfg(feature = "quick-cache")]
    QuickCache,
}

pub(crate) type Weigher<V> = Arc<dyn Fn(&V) -> usize + Send + Sync>;

/// Per-entry bookkeeping charged to a byte-bounded cache on top of the key and the weigher's
/// figure: the engine's own node plus our entry header, measured roughly.
pub(crate) const ENTRY_OVERHEAD_BYTES: usize = 96;

/// The weight of one entry: its value's bytes, key and overhead (bytes mode), or 1.
pub(crate) fn weight<V>(weigher: Option<&Weigher<V>>, key: &str, entry: &Entry<V>) -> u64 {
    match weigher {
        Some(weigher) => weigher(entry.value())
            .saturating_add(key.len())
            .saturating_add(ENTRY_OVERHEAD_BYTES) as u64,
        None => 1,
    }
}

/// Sweep for expired entries after an insert at most this often (ms).
pub(crate) const SWEEP_EVERY_MS: u64 = 5_000;

pub(crate) struct Store<V> {
    engine: Backend<V>,
    /// When the last sweep started (ms since the epoch).
    last_sweep_ms: AtomicU64,
}

#[derive(Clone)]
pub(crate) enum Backend<V> {
    Moka(moka::sync::Cache<Arc<str>, Entry<V>>),
    #[cfg(feature = "quick-cache")]
    Quick(Arc<QuickStore<V>>),
}

impl<V> Store<V>
where
    V: Clone + Send + Sync + 'static,
{
    pub(crate) fn new(engine: Backend<V>) -> Self {
        Store {
            engine,
            last_sweep_ms: AtomicU64::new(crate::entry::now_ms()),
        }
    }

    /// The entry under `key` if it is still usable at `now` (ms since the epoch); an expired
    /// one is removed.
    #[inline]
    pub(crate) fn get(&self, key: &str, now: u64) -> Option<Entry<V>> {
        let found = match &self.engine {
            Backend::Moka(moka) => moka.get(key),
            #[cfg(feature = "quick-cache")]
            Backend::Quick(quick) => quick.cache.get(key),
        }?;
        if found.is_usable_at(now) {
            Some(found)
        } else {
            self.remove(key);
            None
        }
    }

    pub(crate) fn insert(&self, key: Arc<str>, entry: Entry<V>) {
        match &self.engine {
            Backend::Moka(moka) => moka.insert(key, entry),
            #[cfg(feature = "quick-cache")]
            Backend::Quick(quick) => quick.insert(key, entry),
        }
        self.maybe_sweep();
    }

    /// Remove every entry whose key starts with `prefix`; how many.
    pub(crate) fn remove_prefix(&self, prefix: &str) -> u64 {
        self.engine.remove_prefix(prefix)
    }

    pub(crate) fn remove(&self, key: &str) {
        match &self.engine {
            Backend::Moka(moka) => moka.invalidate(key),
            #[cfg(feature = "quick-cache")]
            Backend::Quick(quick) => {
                quick.cache.remove(key);
            }
        }
    }

    pub(crate) fn entry_count(&self) -> u64 {
        match &self.engine {
            Backend::Moka(moka) => moka.entry_count(),
            #[cfg(feature = "quick-cache")]
            Backend::Quick(quick) => quick.cache.len() as u64,
        }
    }

    pub(crate) fn weighted_size(&self) -> u64 {
        match &self.engine {
            Backend::Moka(moka) => moka.weighted_size(),
            #[cfg(feature = "quick-cache")]
            Backend::Quick(quick) => quick.cache.weight(),
        }
    }

    /// Sweep expired entries now, then let the engine apply its pending evictions.
    pub(crate) fn run_pending_tasks(&self) {
        let now = crate::entry::now_ms();
        self.last_sweep_ms.store(now, Ordering::Relaxed);
        self.engine.sweep(now);
    }

    pub(crate) fn clear(&self) {
        match &self.engine {
            Backend::Moka(moka) => moka.invalidate_all(),
            #[cfg(feature = "quick-cache")]
            Backend::Quick(quick) => quick.cache.clear(),
        }
    }

    /// Start a sweep if the last one is [`SWEEP_EVERY_MS`] old: on tokio's blocking pool when
    /// there is a runtime (the caller does not wait), else right here.
    fn maybe_sweep(&self) {
        let now = crate::entry::now_ms();
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SWEEP_EVERY_MS
            || self
                .last_sweep_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let engine = self.engine.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || engine.sweep(now));
            }
            Err(_) => engine.sweep(now),
        }
    }
}

impl<V> Backend<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// Remove every entry whose key starts with `prefix`; how many.
    pub(crate) fn remove_prefix(&self, prefix: &str) -> u64 {
        match self {
            Backend::Moka(moka) => {
                let keys: Vec<Arc<str>> = moka
                    .iter()
                    .filter(|(key, _)| key.starts_with(prefix))
                    .map(|(key, _)| Arc::clone(&*key))
                    .collect();
                for key in &keys {
                    moka.invalidate(key);
                }
                keys.len() as u64
            }
            #[cfg(feature = "quick-cache")]
            Backend::Quick(quick) => {
                let before = quick.cache.len();
                quick.cache.retain(|key, _| !key.starts_with(prefix));
                before.saturating_sub(quick.cache.len()) as u64
            }
        }
    }

    /// Remove every entry past its stale deadline at `now`.
    fn sweep(&self, now: u64) {
        match self {
            Backend::Moka(moka) => {
                let expired: Vec<Arc<str>> = moka
                    .iter()
                    .filter(|(_, entry)| !entry.is_usable_at(now))
                    .map(|(key, _)| Arc::clone(&*key))
                    .collect();
                for key in expired {
                    moka.invalidate(&key);
                }
                moka.run_pending_tasks();
            }
            #[cfg(feature = "quick-cache")]
            Backend::Quick(quick) => quick.cache.retain(|_, entry| entry.is_usable_at(now)),
        }
    }
}

/// quick_cache's weigher, over our optional byte weigher.
#[cfg(feature = "quick-cache")]
pub(crate) struct QuickWeighter<V>(pub(crate) Option<Weigher<V>>);

#[cfg(feature = "quick-cache")]
impl<V> Clone for QuickWeighter<V> {
    fn clone(&self) -> Self {
        QuickWeighter(self.0.clone())
    }
}

#[cfg(feature = "quick-cache")]
impl<V> quick_cache::Weighter<Arc<str>, Entry<V>> for QuickWeighter<V> {
    fn weight(&self, key: &Arc<str>, entry: &Entry<V>) -> u64 {
        weight(self.0.as_ref(), key, entry)
    }
}

#[cfg(feature = "quick-cache")]
pub(crate) struct QuickStore<V> {
    pub(crate) cache: quick_cache::sync::Cache<Arc<str>, Entry<V>, QuickWeighter<V>>,
    /// Cache-wide cap on an entry's life.
    pub(crate) time_to_live: Option<Duration>,
}

#[cfg(feature = "quick-cache")]
impl<V> QuickStore<V>
where
    V: Clone + Send + Sync + 'static,
{
    fn insert(&self, key: Arc<str>, entry: Entry<V>) {
        let entry = match self.time_to_live {
            Some(ttl) => {
                entry.cap_life_ms(crate::entry::now_ms().saturating_add(ttl.as_millis() as u64))
            }
            None => entry,
        };
        self.cache.insert(key, entry);
    }
}
