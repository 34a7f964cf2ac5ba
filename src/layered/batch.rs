//! Batched reads of a [`Layered`](super::Layered) stack: L1 for every key, then **one** L2 batch
//! (Redis: `MGET`) for the keys L1 could not answer on its own.
//!
//! Each key is decided exactly as a single [`get`](crate::Cache::get) decides it — both end in
//! [`merge`](Inner::merge): a fresh, trusted L1 entry answers; otherwise L2 is asked, an L2
//! entry fresher than L1's is copied into L1, and L1 backs the answer up when L2 cannot give
//! one. Each answer is counted once, as `get` counts it.

use std::sync::Arc;

use super::Inner;
use crate::entry::{now_ms, Entry};
use crate::load::answer::Origin;
use crate::load::L2Read;

impl<V> Inner<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// The entries for `keys`, in order, each with the layer that answered; counted.
    pub(crate) async fn lookup_many(self: &Arc<Self>, keys: &[&str]) -> Vec<Option<Entry<V>>> {
        let now = now_ms();
        let trusted = self.l1_trusted_at(now);
        let mut l1: Vec<Option<Entry<V>>> = Vec::with_capacity(keys.len());
        // Indexes of the keys L2 is asked for.
        let mut ask: Vec<usize> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let entry = self.read_l1(key, now).await;
            let answered = trusted && entry.as_ref().is_some_and(|e| e.is_fresh_at(now));
            if !answered && self.l2.is_some() {
                ask.push(i);
            }
            l1.push(entry);
        }
        let mut l2: Vec<L2Read<V>> = Vec::new();
        // Each asked key's counter, read before the one L2 read of them all.
        let epochs: Vec<u64> = ask.iter().map(|&i| self.epoch(keys[i])).collect();
        if !ask.is_empty() {
            let asked: Vec<&str> = ask.iter().map(|&i| keys[i]).collect();
            let read = self
                .via_l2(|layer| async move { layer.get_many(&asked).await })
                .await;
            if let Some(Ok(entries)) = read {
                for entry in entries {
                    l2.push(match entry {
                        Some(entry) if entry.is_usable() => {
                            L2Read::Found(self.checked(entry, true).await)
                        }
                        _ => L2Read::Missing,
                    });
                }
            }
        }
        // A layer that answered fewer entries than asked for said nothing about the rest.
        l2.resize_with(ask.len(), || L2Read::Unavailable);

        let mut answers: Vec<Option<(Entry<V>, Origin)>> =
            l1.into_iter().map(|e| e.map(|e| (e, Origin::L1))).collect();
        for ((&i, from_l2), epoch) in ask.iter().zip(l2).zip(epochs) {
            let from_l1 = answers[i].take().map(|(e, _)| e);
            answers[i] = self
                .merge(keys[i], from_l1, from_l2, trusted, now, epoch)
                .await;
        }
        answers
            .into_iter()
            .map(|found| {
                self.count_get(&found, now);
                found.map(|(e, _)| e)
            })
            .collect()
    }

    /// One key's answer from its L1 entry and what L2 said (read after the invalidation
    /// counter showed `epoch`), for `lookup_at` and `lookup_many` alike.
    pub(super) async fn merge(
        &self,
        key: &str,
        l1: Option<Entry<V>>,
        l2: L2Read<V>,
        trusted: bool,
        now: u64,
        epoch: u64,
    ) -> Option<(Entry<V>, Origin)> {
        let l1_fresh = l1.as_ref().is_some_and(|e| e.is_fresh_at(now));
        match l2 {
            // L1 fresh but not trusted on its own: L2 decides.
            L2Read::Missing if l1_fresh && !trusted => {
                self.l1_done(self.l1.delete(key).await);
                None
            }
            L2Read::Found(l2)
                if !l1_fresh
                    && l1
                        .as_ref()
                        .is_some_and(|l1| l1.fresh_until_ms() >= l2.fresh_until_ms()) =>
            {
                l1.map(|e| (e, Origin::L1))
            }
            L2Read::Found(l2) => {
                self.backfill(key, l2.clone(), epoch).await;
                Some((l2, Origin::L2))
            }
            L2Read::Missing | L2Read::Unavailable => l1.map(|e| (e, Origin::L1)),
        }
    }
}
