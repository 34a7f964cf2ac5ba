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

#[cfg(feature = "quick-cache")]
use super::quick::QuickStore;
use crate::clock::Now;
use crate::entry::Entry;
use crate::tags::Tags;

/// Which engine stores a [`MemoryCache`](super::MemoryCache)'s entries.
///
/// Both honour the same builder: entry or byte capacity, time-to-live, time-to-idle and each
/// entry's own deadlines. Measured on a 2-core AMD EPYC VM (BENCHMARKS.md: `ratios`,
/// `l1_scaling`, `hit_ratio`, `memory_per_entry`):
///
/// | | moka (default) | quick_cache |
/// |---|---|---|
/// | a hit, one thread (`Cache::get`) | ~165 ns | ~50 ns |
/// | a hit, value alone (`get_value_sync`, `get_value`) | 1.05–1.11× raw moka (~150 ns) | 1.3–1.6× raw quick_cache (~29 ns against ~23 ns in a quiet run) |
/// | hits/s, 1 → 2 threads, uniform keys | ~6.0 → 7.8 M/s (1.31×) | ~20.0 → 31.0 M/s (1.56×); `get_value_sync` ~32.4 → 40.8 M/s |
/// | hits/s, 1 → 2 threads, one hot key | ~6.7 → 6.0 M/s | ~19.6 → 12.3 M/s |
/// | hit ratio (Zipf, scans, shifting sets) | within 0.01 of quick_cache | within 0.01; better on a shifting set |
/// | heap per 1 KB entry | ~1,410 B | ~1,225 B |
/// | filled exactly to `max_entries` | holds them all | may evict early: its shards fill unevenly (e.g. 93–98 of 100, ~970 of 1,000, ~9,890 of 10,000) |
/// | largest value a `max_bytes` cache keeps | `max_bytes` | 12 % of `max_bytes`: the budget is split over up to 8 shards; a heavier value is not kept (a `tracing` warning, once per cache) |
/// | time-to-idle | exact, moka's timer wheel | pushed back at most once per eighth of it |
///
/// moka stays the default because it keeps the builder's capacity promises exactly (every entry
/// up to `max_entries`, any value up to `max_bytes`); its TinyLFU admission bought no hit ratio
/// in these streams. Pick quick_cache for a hot L1 on many cores where a soft bound will do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Engine {
    /// moka (`moka::sync::Cache`): TinyLFU admission, exact time-to-idle. The default.
    #[default]
    Moka,
    /// quick_cache (feature `quick-cache`): S3-FIFO eviction and a much cheaper hit that scales
    /// with cores.
    #[cfg(feature = "quick-cache")]
    QuickCache,
}

pub(crate) type Weigher<V> = Arc<dyn Fn(&V) -> usize + Send + Sync>;

/// Per-entry bookkeeping charged to a byte-bounded cache on top of the key and the weigher's
/// figure: the engine's own node plus our entry header, measured roughly.
pub(crate) const ENTRY_OVERHEAD_BYTES: usize = 96;

/// The weight of one entry: its value's bytes, key and overhead (bytes mode), or 1.
pub(crate) fn weight<V>(weigher: Option<&Weigher<V>>, key: &str, value: &V) -> u64 {
    match weigher {
        Some(weigher) => weigher(value)
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
    /// The capacity promise, kept on inserts where the engine alone would let it slip (moka;
    /// quick_cache applies its capacity on every insert itself).
    bound: Option<Bound<V>>,
}

/// A moka cache applies its capacity in batches: an insert is logged, and the log is applied
/// (evicting down to capacity) every 64 writes or so. Until then the cache holds more than its
/// capacity — 64 values more, whatever their size, or a value heavier than the whole budget.
/// `Bound` keeps the promise closer: a value heavier than the budget is refused at once, and
/// the log is applied as soon as what it holds would take the cache more than an eighth over
/// its capacity (so a small cache is never more than one entry over, and a large one keeps
/// moka's batching).
pub(crate) struct Bound<V> {
    /// Capacity in weight units (bytes with a weigher, entries without).
    capacity: u64,
    weigher: Option<Weigher<V>>,
    /// Weight inserted since the log was last applied by us.
    pending: AtomicU64,
}

impl<V> Bound<V> {
    pub(crate) fn new(capacity: u64, weigher: Option<Weigher<V>>) -> Self {
        Bound {
            capacity,
            weigher,
            pending: AtomicU64::new(0),
        }
    }

    /// The weight moka charges for `value` under `key` (clamped to `u32`, as its weigher is).
    pub(crate) fn weight_of(&self, key: &str, value: &V) -> u64 {
        weight(self.weigher.as_ref(), key, value).min(u64::from(u32::MAX))
    }

    /// `weight` was just inserted into `moka`: apply its log if the cache may be more than an
    /// eighth over its capacity.
    fn added(&self, moka: &moka::sync::Cache<Arc<str>, Entry<V>>, weight: u64)
    where
        V: Clone + Send + Sync + 'static,
    {
        let pending = self.pending.fetch_add(weight, Ordering::Relaxed) + weight;
        if moka.weighted_size().saturating_add(pending)
            > self.capacity.saturating_add(self.capacity / 8)
        {
            self.pending.store(0, Ordering::Relaxed);
            moka.run_pending_tasks();
        }
    }
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
    pub(crate) fn new(engine: Backend<V>, bound: Option<Bound<V>>) -> Self {
        Store {
            engine,
            last_sweep_ms: AtomicU64::new(crate::entry::now_ms()),
            bound,
        }
    }

    /// The entry under `key` if it is still usable at `now` (ms since the epoch); an expired
    /// one is removed.
    #[inline(always)]
    pub(crate) fn get(&self, key: &str, now: &Now) -> Option<Entry<V>> {
        let found = match &self.engine {
            Backend::Moka(moka) => moka.get(key),
            #[cfg(feature = "quick-cache")]
            Backend::Quick(quick) => quick.get(key, now),
        }?;
        if found.is_usable_by(now) {
            Some(found)
        } else {
            self.remove(key);
            None
        }
    }

    /// [`get`](Self::get) at a fixed time.
    #[cfg(test)]
    pub(crate) fn get_at(&self, key: &str, now: u64) -> Option<Entry<V>> {
        self.get(key, &Now::at(now))
    }

    /// The value under `key` if its entry is fresh at `now` and `allow` accepts it, read in place
    /// (the entry is not copied out); an expired entry is removed. The clock is read only once
    /// an entry is found, and from the coarse clock when its deadlines are far off.
    #[inline(always)]
    pub(crate) fn get_value(
        &self,
        key: &str,
        now: &Now,
        allow: impl FnOnce(&Tags, u64) -> bool,
    ) -> Lookup<V> {
        match &self.engine {
            Backend::Moka(moka) => {
                let Some(entry) = moka.get(key) else {
                    return Lookup::Miss;
                };
                let Entry {
                    value,
                    created_us,
                    fresh_until_ms,
                    stale_until_ms,
                    tags,
                    ..
                } = entry;
                let verdict = Verdict::of(fresh_until_ms, stale_until_ms, now, || {
                    tags.is_empty() || allow(&tags, created_us)
                });
                verdict.answer(value, || self.remove(key))
            }
            #[cfg(feature = "quick-cache")]
            Backend::Quick(quick) => quick.get_value(key, now, allow, || self.remove(key)),
        }
    }

    pub(crate) fn insert(&self, key: Arc<str>, entry: Entry<V>) {
        match &self.engine {
            Backend::Moka(moka) => self.insert_moka(moka, key, entry),
            #[cfg(feature = "quick-cache")]
            Backend::Quick(quick) => quick.insert(key, entry),
        }
        self.maybe_sweep();
    }

    fn insert_moka(
        &self,
        moka: &moka::sync::Cache<Arc<str>, Entry<V>>,
        key: Arc<str>,
        entry: Entry<V>,
    ) {
        let Some(bound) = &self.bound else {
            moka.insert(key, entry);
            return;
        };
        let weight = bound.weight_of(&key, entry.value());
        if weight > bound.capacity {
            // moka would take it and evict it at its next maintenance; refuse it now, and remove
            // what the key held before, as a set that cannot be kept does.
            moka.invalidate(&*key);
            return;
        }
        moka.insert(key, entry);
        bound.added(moka, weight);
    }

    /// Store `entry` under `key` unless the key holds a usable entry created after it, judged
    /// and stored in one step (a value read from a shared layer must not replace this
    /// process's newer write that the layer did not have yet). Whether it was stored.
    pub(crate) fn insert_unless_newer(&self, key: &str, entry: Entry<V>) -> bool {
        let stored = match &self.engine {
            Backend::Moka(moka) => self.insert_moka_unless_newer(moka, key, entry),
            #[cfg(feature = "quick-cache")]
            Backend::Quick(quick) => quick.insert_unless_newer(key, entry),
        };
        if stored {
            self.maybe_sweep();
        }
        stored
    }

    fn insert_moka_unless_newer(
        &self,
        moka: &moka::sync::Cache<Arc<str>, Entry<V>>,
        key: &str,
        entry: Entry<V>,
    ) -> bool {
        let weight = match &self.bound {
            Some(bound) => {
                let weight = bound.weight_of(key, entry.value());
                if weight > bound.capacity {
                    return false;
                }
                weight
            }
            None => 0,
        };
        let (created, now) = (entry.created_us(), crate::entry::now_ms());
        let mut stored = false;
        let _ = moka
            .entry(Arc::from(key))
            .and_compute_with(|found| match found {
                Some(found)
                    if found.value().created_us() > created && found.value().is_usable_at(now) =>
                {
                    moka::ops::compute::Op::Nop
                }
                _ => {
                    stored = true;
                    moka::ops::compute::Op::Put(entry)
                }
            });
        if let (true, Some(bound)) = (stored, &self.bound) {
            bound.added(moka, weight);
        }
        stored
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

    /// Remove `key`'s entry unless `keep` accepts it, judged and removed in one step under the
    /// engine's lock for the key: a write of the key stored meanwhile is judged, never removed
    /// unseen. (The backplane's events race this replica's own writes.) `keep` must not touch
    /// this store.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn remove_unless(&self, key: &str, keep: impl FnOnce(&Entry<V>) -> bool) {
        match &self.engine {
            Backend::Moka(moka) => {
                let _ = moka
                    .entry(Arc::from(key))
                    .and_compute_with(|found| match found {
                        Some(found) if !keep(found.value()) => moka::ops::compute::Op::Remove,
                        _ => moka::ops::compute::Op::Nop,
                    });
            }
            #[cfg(feature = "quick-cache")]
            Backend::Quick(quick) => {
                quick.cache.remove_if(key, |stored| !keep(&stored.entry));
            }
        }
    }

    /// End `key`'s entry's freshness at `now` (ms) unless `keep` accepts it, in one step (see
    /// [`remove_unless`](Self::remove_unless)).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn expire_unless(&self, key: &str, now: u64, keep: impl FnOnce(&Entry<V>) -> bool) {
        match &self.engine {
            Backend::Moka(moka) => {
                let _ = moka
                    .entry(Arc::from(key))
                    .and_compute_with(|found| match found {
                        Some(found) if !keep(found.value()) => {
                            moka::ops::compute::Op::Put(found.into_value().cap_fresh_ms(now))
                        }
                        _ => moka::ops::compute::Op::Nop,
                    });
            }
            #[cfg(feature = "quick-cache")]
            Backend::Quick(quick) => {
                // A vacant key yields a placeholder guard, dropped (and removed) at once.
                let _ =
                    quick
                        .cache
                        .entry(&Arc::<str>::from(key), Some(Duration::ZERO), |_, stored| {
                            if !keep(&stored.entry) {
                                stored.entry.fresh_until_ms = stored.entry.fresh_until_ms.min(now);
                            }
                            quick_cache::sync::EntryAction::Retain(())
                        });
            }
        }
    }

    /// Remove every entry except those `keep` accepts, each judged and removed in one step (see
    /// [`remove_unless`](Self::remove_unless)).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn retain(&self, keep: impl Fn(&str, &Entry<V>) -> bool) {
        match &self.engine {
            Backend::Moka(moka) => {
                let keys: Vec<Arc<str>> = moka.iter().map(|(key, _)| Arc::clone(&*key)).collect();
                for key in keys {
                    let _ = moka
                        .entry(Arc::clone(&key))
                        .and_compute_with(|found| match found {
                            Some(found) if !keep(&key, found.value()) => {
                                moka::ops::compute::Op::Remove
                            }
                            _ => moka::ops::compute::Op::Nop,
                        });
                }
            }
            #[cfg(feature = "quick-cache")]
            Backend::Quick(quick) => quick.cache.retain(|key, stored| keep(key, &stored.entry)),
        }
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
            Backend::Quick(quick) => quick
                .cache
                .retain(|_, stored| stored.entry.is_usable_at(now) && now < stored.idle_until_ms),
        }
    }
}

/// What [`Store::get_value`] found.
pub(crate) enum Lookup<V> {
    /// A fresh value.
    Fresh(V),
    /// An entry past its fresh deadline (or refused by `allow`) but still usable as a fallback.
    Stale,
    /// Nothing usable.
    Miss,
}

/// How [`Verdict::of`] judged an entry found.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Fresh,
    Stale,
    /// Past its stale deadline: remove it.
    Expired,
}

impl Verdict {
    /// Judge an entry by its deadlines; `allow` (its tags) is asked only of a fresh one.
    #[inline(always)]
    pub(super) fn of(
        fresh_until_ms: u64,
        stale_until_ms: u64,
        now: &Now,
        allow: impl FnOnce() -> bool,
    ) -> Self {
        if !now.before(stale_until_ms) {
            Verdict::Expired
        } else if now.before(fresh_until_ms) && allow() {
            Verdict::Fresh
        } else {
            Verdict::Stale
        }
    }

    /// The answer for an entry holding `value`; an expired one is removed.
    #[inline(always)]
    pub(super) fn answer<V>(self, value: V, remove: impl FnOnce()) -> Lookup<V> {
        match self {
            Verdict::Fresh => Lookup::Fresh(value),
            Verdict::Stale => Lookup::Stale,
            Verdict::Expired => {
                remove();
                Lookup::Miss
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Engine;
    use crate::entry::{now_ms, Entry};
    use crate::MemoryCache;

    fn engines() -> Vec<Engine> {
        vec![
            Engine::Moka,
            #[cfg(feature = "quick-cache")]
            Engine::QuickCache,
        ]
    }

    fn entry(value: &str, created_us: u64) -> Entry<String> {
        let mut entry = Entry::new(value.to_owned(), Duration::from_secs(600));
        entry.created_us = created_us;
        entry
    }

    #[test]
    fn conditional_changes_judge_the_entry_they_change() {
        for engine in engines() {
            let memory = MemoryCache::<String>::builder()
                .engine(engine)
                .build()
                .expect("memory");
            let store = &memory.inner.store;
            store.insert("old".into(), entry("o", 10));
            store.insert("new".into(), entry("n", 30));
            let newer_than_20 = |e: &Entry<String>| e.created_us() > 20;
            store.remove_unless("old", newer_than_20);
            store.remove_unless("new", newer_than_20);
            store.remove_unless("absent", newer_than_20);
            let now = now_ms();
            assert!(store.get_at("old", now).is_none(), "{engine:?}");
            assert!(store.get_at("new", now).is_some(), "{engine:?}");
            assert!(store.get_at("absent", now).is_none(), "{engine:?}");

            store.insert("old".into(), entry("o", 10));
            store.expire_unless("old", now, newer_than_20);
            store.expire_unless("new", now, newer_than_20);
            store.expire_unless("absent", now, newer_than_20);
            let later = now + 1;
            let old = store
                .get_at("old", later)
                .expect("an expired entry stays, stale");
            assert!(!old.is_fresh_at(later), "{engine:?}");
            let new = store.get_at("new", later).expect("new");
            assert!(new.is_fresh_at(later), "{engine:?}");
            assert!(store.get_at("absent", later).is_none(), "{engine:?}");

            store.retain(|key, _| key == "new");
            assert!(store.get_at("old", later).is_none(), "{engine:?}");
            assert!(store.get_at("new", later).is_some(), "{engine:?}");
        }
    }

    #[test]
    fn a_conditional_insert_keeps_a_newer_usable_entry() {
        for engine in engines() {
            for bytes in [false, true] {
                let builder = MemoryCache::<String>::builder().engine(engine);
                let builder = if bytes {
                    builder
                        .max_bytes(1 << 20)
                        .weigher(|value: &String| value.len())
                } else {
                    builder
                };
                let memory = builder.build().expect("memory");
                let store = &memory.inner.store;
                let now = now_ms();
                let value = |key: &str| store.get_at(key, now).map(|e| e.into_value());
                let case = format!("{engine:?}, bytes {bytes}");

                assert!(store.insert_unless_newer("k", entry("first", 10)), "{case}");
                assert!(!store.insert_unless_newer("k", entry("older", 5)), "{case}");
                assert_eq!(value("k").as_deref(), Some("first"), "{case}");
                assert!(store.insert_unless_newer("k", entry("same", 10)), "{case}");
                assert!(store.insert_unless_newer("k", entry("newer", 20)), "{case}");
                assert_eq!(value("k").as_deref(), Some("newer"), "{case}");

                // A newer entry past its stale deadline does not count.
                let mut gone = entry("gone", 50);
                gone.fresh_until_ms = now.saturating_sub(2);
                gone.stale_until_ms = now.saturating_sub(1);
                store.insert("g".into(), gone);
                assert!(store.insert_unless_newer("g", entry("kept", 40)), "{case}");
                assert_eq!(value("g").as_deref(), Some("kept"), "{case}");
            }
        }
    }
}
