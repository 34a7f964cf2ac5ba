//! The quick_cache engine behind [`MemoryCache`](super::MemoryCache) (feature `quick-cache`):
//! entries kept with their idle time, each entry's own deadlines judged on every hit, a value too
//! heavy for one shard refused aloud.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::store::{weight, Lookup, Verdict, Weigher};
use crate::clock::Now;
use crate::entry::Entry;
use crate::tags::Tags;

/// quick_cache's weigher, over our optional byte weigher.
pub(crate) struct QuickWeighter<V>(pub(crate) Option<Weigher<V>>);

impl<V> Clone for QuickWeighter<V> {
    fn clone(&self) -> Self {
        QuickWeighter(self.0.clone())
    }
}

impl<V> quick_cache::Weighter<Arc<str>, Stored<V>> for QuickWeighter<V> {
    fn weight(&self, key: &Arc<str>, stored: &Stored<V>) -> u64 {
        weight(self.0.as_ref(), key, &stored.entry.value)
    }
}

/// An entry as the quick_cache engine keeps it: with the time it goes idle (`u64::MAX` without
/// a time-to-idle).
///
/// `repr(C)` keeps the entry at offset 0: a hit copies the entry out of the clone quick_cache
/// returns, and with the entry 8 bytes in (where the compiler put it), every 16-byte load of
/// that copy straddled two stores of the clone and missed store forwarding.
#[derive(Clone)]
#[repr(C)]
pub(crate) struct Stored<V> {
    pub(super) entry: Entry<V>,
    pub(super) idle_until_ms: u64,
}

/// The most shards a byte-bounded quick_cache engine splits its budget into, so that a value up
/// to 12 % of `max_bytes` (97 % of an eighth: quick_cache's hot section) is always kept.
pub(crate) const QUICK_BYTE_SHARDS: usize = 8;

pub(crate) struct QuickStore<V> {
    pub(crate) cache: quick_cache::sync::Cache<Arc<str>, Stored<V>, QuickWeighter<V>>,
    /// The byte weigher (also inside `cache`, which does not hand it back).
    pub(crate) weigher: Option<Weigher<V>>,
    /// Whether a value too heavy for one shard has been reported (once per cache).
    pub(crate) warned_too_large: std::sync::atomic::AtomicBool,
    /// Cache-wide cap on an entry's life.
    pub(crate) time_to_live: Option<Duration>,
    /// Remove an entry not read for this long (ms).
    pub(crate) time_to_idle_ms: Option<u64>,
}

impl<V> QuickStore<V>
where
    V: Clone + Send + Sync + 'static,
{
    pub(super) fn insert(&self, key: Arc<str>, entry: Entry<V>) {
        if let Some(stored) = self.stored(&key, entry) {
            self.cache.insert(key, stored);
        }
    }

    /// `entry` as this engine keeps it, or `None` (and what the key held removed) when it is too
    /// heavy to keep.
    fn stored(&self, key: &str, entry: Entry<V>) -> Option<Stored<V>> {
        let now = crate::entry::now_ms();
        let entry = match self.time_to_live {
            Some(ttl) => entry.cap_life_ms(now.saturating_add(ttl.as_millis() as u64)),
            None => entry,
        };
        let idle_until_ms = self
            .time_to_idle_ms
            .map_or(u64::MAX, |tti| now.saturating_add(tti));
        if let Some(weigher) = &self.weigher {
            let weight = weight(Some(weigher), key, entry.value());
            if weight > self.value_limit() {
                // quick_cache would drop it without a word (and evict nothing for it): say so
                // once, and remove what the key held before, as a set that cannot be kept does.
                self.report_too_large(key, weight);
                self.cache.remove(key);
                return None;
            }
        }
        Some(Stored {
            entry,
            idle_until_ms,
        })
    }

    /// See [`Store::insert_unless_newer`]. A key another thread holds a placeholder for (this
    /// same call, racing) is left to it.
    pub(super) fn insert_unless_newer(&self, key: &str, entry: Entry<V>) -> bool {
        use quick_cache::sync::{EntryAction, EntryResult};
        let (created, now) = (entry.created_us(), crate::entry::now_ms());
        let Some(stored) = self.stored(key, entry) else {
            return false;
        };
        let found = self.cache.entry(
            &Arc::<str>::from(key),
            Some(Duration::ZERO),
            |_, held: &mut Stored<V>| {
                if held.entry.created_us() > created && held.entry.is_usable_at(now) {
                    EntryAction::Retain(())
                } else {
                    EntryAction::ReplaceWithGuard
                }
            },
        );
        match found {
            EntryResult::Replaced(guard, _) | EntryResult::Vacant(guard) => {
                guard.insert(stored).is_ok()
            }
            EntryResult::Retained(()) | EntryResult::Removed(..) | EntryResult::Timeout => false,
        }
    }

    /// The heaviest entry quick_cache keeps: its hot section's share of one shard (97 %).
    fn value_limit(&self) -> u64 {
        (self.cache.shard_capacity() as f64 * 0.97) as u64
    }

    /// Warn, once per cache, that a value heavier than one shard's part of the budget was not
    /// kept.
    #[cold]
    fn report_too_large(&self, key: &str, weight: u64) {
        if !self.warned_too_large.swap(true, Ordering::Relaxed) {
            crate::log_warn!(
                key,
                weight,
                limit = self.value_limit(),
                "layercache: a value heavier than one shard's part of max_bytes is not kept on the quick_cache engine (reported once per cache)"
            );
        }
        #[cfg(not(feature = "tracing"))]
        let _ = (key, weight);
    }

    /// The entry under `key` unless it has been idle too long (then it is removed). With a
    /// time-to-idle, a hit pushes the idle time back — but writes it only when an eighth of the
    /// time-to-idle has passed since the last push, so a hot key costs one write per interval
    /// instead of one per hit.
    #[inline(always)]
    pub(super) fn get(&self, key: &str, now: &Now) -> Option<Entry<V>> {
        let Stored {
            entry:
                Entry {
                    value,
                    created_us,
                    fresh_until_ms,
                    stale_until_ms,
                    load_duration,
                    tags,
                    supersedes_us,
                },
            idle_until_ms,
        } = self.cache.get(key)?;
        if self.went_idle(key, created_us, idle_until_ms, now) {
            return None;
        }
        Some(Entry {
            value,
            created_us,
            fresh_until_ms,
            stale_until_ms,
            load_duration,
            tags,
            supersedes_us,
        })
    }

    /// With a time-to-idle: whether the entry found (created at `created`, idle at `idle_until_ms`) has been
    /// idle too long — then it is removed — else push its idle time back when due.
    #[inline(always)]
    fn went_idle(&self, key: &str, created: u64, idle_until_ms: u64, now: &Now) -> bool {
        let Some(tti) = self.time_to_idle_ms else {
            return false;
        };
        if !now.before(idle_until_ms) {
            self.cache.remove_if(key, |s| s.entry.created_us == created);
            return true;
        }
        // Due when less than seven eighths of the time-to-idle is left:
        // `idle_until_ms - now < tti - tti / 8`.
        if !now.before(
            idle_until_ms
                .saturating_sub(tti - tti / 8)
                .saturating_add(1),
        ) {
            self.touch(key, created, now.ms().saturating_add(tti));
        }
        false
    }

    /// [`get`](Self::get) for the value alone: the entry is judged field by field where
    /// quick_cache put it, and only the value is moved out.
    #[inline(always)]
    pub(super) fn get_value(
        &self,
        key: &str,
        now: &Now,
        allow: impl FnOnce(&Tags, u64) -> bool,
        remove: impl FnOnce(),
    ) -> Lookup<V> {
        let Some(Stored {
            entry:
                Entry {
                    value,
                    created_us,
                    fresh_until_ms,
                    stale_until_ms,
                    tags,
                    ..
                },
            idle_until_ms,
        }) = self.cache.get(key)
        else {
            return Lookup::Miss;
        };
        if self.went_idle(key, created_us, idle_until_ms, now) {
            return Lookup::Miss;
        }
        let verdict = Verdict::of(fresh_until_ms, stale_until_ms, now, || {
            tags.is_empty() || allow(&tags, created_us)
        });
        verdict.answer(value, remove)
    }

    /// Push back the idle time of the entry under `key`, if it is still the one created at
    /// `created_us` (a newer value written meanwhile keeps its own).
    #[cold]
    fn touch(&self, key: &str, created_us: u64, idle_until_ms: u64) {
        let key: Arc<str> = Arc::from(key);
        // A vacant key (removed meanwhile) gets a placeholder guard back, dropped at once; a key
        // another thread is loading into is left alone (no wait).
        let _ = self.cache.entry(&key, Some(Duration::ZERO), |_, stored| {
            if stored.entry.created_us == created_us {
                stored.idle_until_ms = stored.idle_until_ms.max(idle_until_ms);
            }
            quick_cache::sync::EntryAction::Retain(())
        });
    }
}
