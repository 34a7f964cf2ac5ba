//! Loads this replica wrote to L2 lately, kept so that another replica's `invalidate_prefix`
//! can reach them when its message arrives after they ended.
//!
//! The cache-aside race across replicas, with a prefix: a load here reads the source, the
//! source is updated and another replica removes every key under a prefix from Redis (`SCAN` +
//! `UNLINK`), then the load ends and writes its value — read before the update — to Redis,
//! before this replica has heard of the removal (a slow link, a stalled process). A delete or
//! an expire leaves a tombstone that refuses such a write, but a removal by prefix cannot: it
//! does not know the keys that do not exist yet. So each load's write to L2 is noted here, with
//! the value's creation time, for [`WINDOW_MS`]; when a `prefix` message arrives, the noted
//! loads under the prefix created before the removal are taken back from L2 (compared and
//! deleted in one step: a newer value stays). A message later than the window, or a load
//! pushed out by [`MAX_RECENT`] newer ones, is not reached.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use super::Inner;
use crate::entry::now_ms;

/// How long (ms) a load's write is kept: as long as a delete's tombstone
/// ([`redis::TOMBSTONE_TTL`](crate::redis::TOMBSTONE_TTL)), which covers the same race for a
/// single key.
pub(super) const WINDOW_MS: u64 = 10_000;
/// The most writes kept (the oldest go first).
pub(super) const MAX_RECENT: usize = 10_000;

/// A load's write to L2: key, the value's creation time (µs), when it was noted (ms).
type Noted = (Arc<str>, u64, u64);

/// Loads written to L2 within the last [`WINDOW_MS`] (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct RecentLoads {
    noted: Mutex<VecDeque<Noted>>,
}

impl RecentLoads {
    /// Note that a load's value of `key`, created at `created_us`, was written to L2 now.
    pub(crate) fn note(&self, key: &str, created_us: u64) {
        self.note_at(key, created_us, now_ms());
    }

    fn note_at(&self, key: &str, created_us: u64, now_ms: u64) {
        let mut noted = self.noted.lock().unwrap_or_else(PoisonError::into_inner);
        prune(&mut noted, now_ms);
        if noted.len() >= MAX_RECENT {
            noted.pop_front();
        }
        noted.push_back((Arc::from(key), created_us, now_ms));
    }

    /// Take out the noted loads of keys under `prefix` (every key for `""`) created before
    /// `before_us`: what a removal by prefix at that time should have removed.
    pub(crate) fn take_under(&self, prefix: &str, before_us: u64) -> Vec<(Arc<str>, u64)> {
        self.take_under_at(prefix, before_us, now_ms())
    }

    fn take_under_at(&self, prefix: &str, before_us: u64, now_ms: u64) -> Vec<(Arc<str>, u64)> {
        let mut noted = self.noted.lock().unwrap_or_else(PoisonError::into_inner);
        prune(&mut noted, now_ms);
        let mut taken = Vec::new();
        noted.retain(|(key, created_us, _)| {
            let under = key.starts_with(prefix) && *created_us < before_us;
            if under {
                taken.push((Arc::clone(key), *created_us));
            }
            !under
        });
        taken
    }
}

impl<V> Inner<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// A load's value of `key`, created at `created_us`, was written to L2 (noted with a
    /// backplane only: without one, no other replica removes keys).
    pub(crate) fn note_load_written(&self, key: &str, created_us: u64) {
        if self.backplane.is_some() {
            self.recent_loads.note(key, created_us);
        }
    }

    /// Another replica removed the keys under `prefix` from L2 at `at_us`: take back from L2,
    /// on a task of its own, the loads of this replica under it created before then.
    pub(crate) fn undo_loads_under(self: &Arc<Self>, prefix: &str, at_us: u64) {
        let taken = self.recent_loads.take_under(prefix, at_us);
        if taken.is_empty() {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            for (key, created_us) in taken {
                this.undo_l2(&key, created_us).await;
            }
        });
    }
}

/// Drop what was noted longer than [`WINDOW_MS`] ago.
fn prune(noted: &mut VecDeque<Noted>, now_ms: u64) {
    while noted
        .front()
        .is_some_and(|(_, _, at)| now_ms.saturating_sub(*at) > WINDOW_MS)
    {
        noted.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_under_the_prefix_created_before_the_removal_are_taken_once() {
        let recent = RecentLoads::default();
        recent.note_at("user:7:profile", 100, 1_000);
        recent.note_at("user:7:orders", 300, 1_000);
        recent.note_at("user:8:profile", 100, 1_000);
        let taken = recent.take_under_at("user:7:", 200, 1_500);
        assert_eq!(taken, vec![(Arc::from("user:7:profile"), 100)]);
        assert!(recent.take_under_at("user:7:", 200, 1_500).is_empty());
        // A load created after the removal stays; the empty prefix reaches every key.
        let all = recent.take_under_at("", 1_000, 1_500);
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn writes_older_than_the_window_or_beyond_the_bound_are_forgotten() {
        let recent = RecentLoads::default();
        recent.note_at("old", 1, 1_000);
        recent.note_at("new", 1, 1_000 + WINDOW_MS);
        let taken = recent.take_under_at("", 2, 1_001 + WINDOW_MS);
        assert_eq!(taken, vec![(Arc::from("new"), 1)]);

        for i in 0..=MAX_RECENT {
            recent.note_at(&format!("k{i}"), 1, 5_000);
        }
        let taken = recent.take_under_at("k", 2, 5_000);
        assert_eq!(taken.len(), MAX_RECENT);
        assert!(!taken.iter().any(|(key, _)| &**key == "k0"));
    }
}
