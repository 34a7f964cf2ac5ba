//! The engines behind [`MemoryCache`](super::MemoryCache): moka (default) or quick_cache.
//!
//! Both keep `Entry` values under `Arc<str>` keys and enforce each entry's own deadlines:
//! moka through its per-entry expiry policy, quick_cache (which has none) by removing an expired
//! entry when it is read and by sweeping — in `run_pending_tasks`, and on inserts at most once a
//! second — so expired entries are never returned and are reclaimed.

#[cfg(feature = "quick-cache")]
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

pub(crate) enum Store<V> {
    Moka(moka::sync::Cache<Arc<str>, Entry<V>>),
    #[cfg(feature = "quick-cache")]
    Quick(QuickStore<V>),
}

impl<V> Store<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// The entry under `key` if it is still usable at `now` (ms since the epoch).
    #[inline]
    pub(crate) fn get(&self, key: &str, now: u64) -> Option<Entry<V>> {
        match self {
            Store::Moka(moka) => moka.get(key).filter(|e| e.is_usable_at(now)),
            #[cfg(feature = "quick-cache")]
            Store::Quick(quick) => quick.get(key, now),
        }
    }

    pub(crate) fn insert(&self, key: Arc<str>, entry: Entry<V>) {
        match self {
            Store::Moka(moka) => moka.insert(key, entry),
            #[cfg(feature = "quick-cache")]
            Store::Quick(quick) => quick.insert(key, entry),
        }
    }

    pub(crate) fn remove(&self, key: &str) {
        match self {
            Store::Moka(moka) => moka.invalidate(key),
            #[cfg(feature = "quick-cache")]
            Store::Quick(quick) => {
                quick.cache.remove(key);
            }
        }
    }

    pub(crate) fn entry_count(&self) -> u64 {
        match self {
            Store::Moka(moka) => moka.entry_count(),
            #[cfg(feature = "quick-cache")]
            Store::Quick(quick) => quick.cache.len() as u64,
        }
    }

    pub(crate) fn weighted_size(&self) -> u64 {
        match self {
            Store::Moka(moka) => moka.weighted_size(),
            #[cfg(feature = "quick-cache")]
            Store::Quick(quick) => quick.cache.weight(),
        }
    }

    pub(crate) fn run_pending_tasks(&self) {
        match self {
            Store::Moka(moka) => moka.run_pending_tasks(),
            #[cfg(feature = "quick-cache")]
            Store::Quick(quick) => quick.sweep(crate::entry::now_ms()),
        }
    }

    pub(crate) fn clear(&self) {
        match self {
            Store::Moka(moka) => moka.invalidate_all(),
            #[cfg(feature = "quick-cache")]
            Store::Quick(quick) => quick.cache.clear(),
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
    /// When the last sweep for expired entries ran (ms since the epoch).
    pub(crate) last_sweep_ms: AtomicU64,
}

#[cfg(feature = "quick-cache")]
impl<V> QuickStore<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// Sweep expired entries on insert at most this often.
    const SWEEP_EVERY_MS: u64 = 1_000;

    #[inline]
    fn get(&self, key: &str, now: u64) -> Option<Entry<V>> {
        let entry = self.cache.get(key)?;
        if entry.is_usable_at(now) {
            Some(entry)
        } else {
            self.cache.remove(key);
            None
        }
    }

    fn insert(&self, key: Arc<str>, entry: Entry<V>) {
        let now = crate::entry::now_ms();
        let entry = match self.time_to_live {
            Some(ttl) => entry.cap_life_ms(now.saturating_add(ttl.as_millis() as u64)),
            None => entry,
        };
        self.cache.insert(key, entry);
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= Self::SWEEP_EVERY_MS
            && self
                .last_sweep_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.sweep(now);
        }
    }

    fn sweep(&self, now: u64) {
        self.cache.retain(|_, entry| entry.is_usable_at(now));
    }
}
