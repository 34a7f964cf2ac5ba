//! The L2 side of a [`Layered`](super::Layered) stack: every call through the circuit breaker,
//! writes that could not reach L2 remembered and caught up, and client-side refusals kept apart
//! from outages.
//!
//! A refusal — a value too large for L2's codec, one that cannot be serialized, or one that would
//! not read back ([`Error::is_refusal`]) — says nothing about L2's health: it never counts
//! against the breaker, never enters the catch-up queue, and is reported once per cache (a
//! `tracing` warning with the `tracing` feature); a `RedisCache` counts each one in
//! `layercache_layer_errors_total{op="encode"}`. One refused key in a catch-up batch never fails
//! the rest: the batch is retried key by key.
//!
//! An error the L2 server answers with (`OOM` from a Redis full under `noeviction`, `READONLY`,
//! `LOADING`, `NOPERM`) is not an outage either: the server is up and answered at once, and
//! reads may well still succeed — a full Redis still serves everything it holds, and opening the
//! circuit on its refused writes would reload every value it holds from the loader. So such an
//! error never counts against the breaker. It is a failed write all the same: the key waits for
//! the catch-up, which tries again at most every [`REPLY_RETRY_MS`], and the first one is
//! reported (a `tracing` warning, once per cache).

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use super::Inner;
use crate::cache::Cache;
use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::load::breaker::Allow;
use crate::load::L2Read;

/// Most keys remembered for writing to L2 after an outage; beyond it, later keys are dropped
/// (they reach L2 on their next load).
pub(super) const MAX_PENDING: usize = 10_000;
/// Keys written to L2 per batch when catching up after an outage.
const FLUSH_BATCH: usize = 100;
/// After L2 answered a catch-up write with an error of its own (full, read-only), the catch-up
/// waits this long (ms) before it tries again.
pub(crate) const REPLY_RETRY_MS: u64 = 1_000;
/// While writes wait for the catch-up, it is tried this often even if nothing else on this
/// replica calls L2: a replica that went quiet after a failed write (a Redis blip, a failover)
/// would otherwise keep the value in its L1 alone, while the fleet it announced the change to
/// reads L2.
pub(crate) const CATCH_UP_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
/// A write remembers its key for the catch-up before it stores its L1 entry (see
/// `Inner::pending`); a key remembered less than this long ago (µs) whose L1 entry is missing
/// or older is left for the next pass instead of being forgotten.
const SETTLING_US: u64 = 1_000_000;

/// What became of a write to L2 ([`Inner::write_l2`]).
#[derive(Debug)]
pub(crate) enum Written {
    /// Stored, or remembered for the catch-up while L2 is unavailable (or there is no L2).
    Kept,
    /// Not stored: L2 holds an entry of the key created at the same time or later (another
    /// replica's newer write).
    Superseded,
    /// L2's codec refused the value (too large, cannot encode); not remembered.
    Refused(Error),
}

impl<V> Inner<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// Run `op` against L2 if there is one and the breaker allows, reporting the outcome to the
    /// breaker (a refusal is neither a success nor a failure).
    pub(crate) async fn via_l2<T, Fut>(
        self: &Arc<Self>,
        op: impl FnOnce(Arc<dyn Cache<V>>) -> Fut,
    ) -> Option<Result<T>>
    where
        Fut: Future<Output = Result<T>>,
    {
        let l2 = self.l2.as_ref()?;
        let connections = l2.connections();
        let allowed = self.breaker.allow(connections);
        if allowed == Allow::No {
            return None;
        }
        let result = op(Arc::clone(l2)).await;
        if result.is_err() {
            self.layer_errors.fetch_add(1, Ordering::Relaxed);
        }
        match &result {
            Err(e) if e.is_refusal() => {
                self.breaker.neutral(allowed);
                self.refused(e);
            }
            Err(e) if e.is_server_reply() => {
                self.breaker.neutral(allowed);
                self.answered_with_error(e);
            }
            // A request the layer refuses as such says nothing about its health either.
            Err(Error::Config { .. }) => self.breaker.neutral(allowed),
            _ => {
                self.breaker.record(allowed, result.is_ok(), connections);
                if result.is_ok() {
                    self.flush_pending_soon();
                }
            }
        }
        Some(result)
    }

    /// Whether L2's last read of `key` found another deployment's recent value (see
    /// [`Cache::holds_other_deployment`]).
    pub(crate) fn holds_other_deployment(&self, key: &str) -> bool {
        self.l2
            .as_ref()
            .is_some_and(|l2| l2.holds_other_deployment(key))
    }

    /// Report the first refusal of this cache (the layer counts each one).
    pub(super) fn refused(&self, error: &Error) {
        if !self.refusal_reported.swap(true, Ordering::Relaxed) {
            #[cfg(feature = "tracing")]
            tracing::warn!(
                cache = &*self.name,
                error = %error,
                source = ?std::error::Error::source(error).map(ToString::to_string),
                "layercache: L2 refused a value; it was not stored there (reported once per cache, each refusal is counted by the layer)"
            );
            #[cfg(not(feature = "tracing"))]
            let _ = error;
        }
    }

    /// Report the first error the L2 server answered with (the layer counts each one).
    fn answered_with_error(&self, error: &Error) {
        if !self.reply_reported.swap(true, Ordering::Relaxed) {
            #[cfg(feature = "tracing")]
            {
                let hint = if error.to_string().contains("OOM") {
                    "; Redis is at its maxmemory and evicts nothing: give it an eviction policy (maxmemory-policy volatile-lru: every cache entry has a lifetime, the tag invalidation times that must stay have none)"
                } else if error.is_busy() {
                    "; more commands at once than the connection answered within the unresponsive time: RedisCacheBuilder::unresponsive_after lets them wait longer"
                } else {
                    ""
                };
                tracing::warn!(
                    cache = &*self.name,
                    error = %error,
                    "layercache: the L2 server answered with an error; L2 stays in use, writes it refused are tried again later{hint} (reported once per cache, each error is counted)"
                );
            }
            #[cfg(not(feature = "tracing"))]
            let _ = error;
        }
    }

    /// Read `key` from L2 without counting, telling a miss from no answer.
    pub(crate) async fn read_l2_state(self: &Arc<Self>, key: &str) -> L2Read<V> {
        match self.via_l2(|l2| async move { l2.peek(key).await }).await {
            Some(Ok(Some(entry))) if entry.is_usable() => {
                L2Read::Found(self.checked(entry, true).await)
            }
            Some(Ok(_)) => L2Read::Missing,
            Some(Err(_)) | None => L2Read::Unavailable,
        }
    }

    /// Write `entry` to L2 unless L2 holds a newer entry of `key`, or remember the key for
    /// later if L2 is unavailable.
    ///
    /// Every write is conditional on creation time, compared in L2 (one script on Redis): a
    /// write that timed out here may still reach Redis later (a slow link, a stalled server),
    /// and landing after another replica's newer write it must not replace it. A `set` is
    /// replaced only by a later one; the caller of a superseded `set` is told
    /// ([`Written::Superseded`]), so that it does not keep its older value in L1.
    ///
    /// `replacing`: the write replaces what the key held (a `set`, announced to the fleet). If
    /// L2 answers it with an error of its own (a full Redis: `OOM`), the older value it still
    /// holds is deleted (a full Redis takes deletes), so that the replicas told of the change do
    /// not read that value back until the catch-up writes this one.
    pub(crate) async fn write_l2(
        self: &Arc<Self>,
        key: &str,
        entry: Entry<V>,
        replacing: bool,
    ) -> Written {
        if self.l2.is_none() {
            return Written::Kept;
        }
        let entry = self.retained(entry);
        let created_us = entry.created_us();
        let written = self
            .via_l2(|l2| async move { l2.set_if_newer(key, entry).await })
            .await;
        match written {
            Some(Ok(true)) => Written::Kept,
            Some(Ok(false)) if !self.superseded(key, created_us).await => Written::Kept,
            Some(Ok(false)) => Written::Superseded,
            Some(Err(e)) if e.is_refusal() => Written::Refused(e),
            failed => {
                self.remember(std::iter::once((Arc::from(key), created_us)));
                if let Some(Err(e)) = &failed {
                    self.unsettled_after(e, &[key]);
                }
                self.catch_up_later();
                if replacing && matches!(&failed, Some(Err(e)) if e.is_server_reply()) {
                    self.clear_older(&[key]).await;
                }
                Written::Kept
            }
        }
    }

    /// After L2 did not store a write of `key` created at `created_us`: whether it holds
    /// another entry (one created later, by another replica), this one expired by a later
    /// `expire` (its stand-in, ordered after it), or nothing (a later delete's tombstone, see
    /// `redis::TOMBSTONE_TTL`) rather than this very one (the same entry written again: `set`
    /// of a clone). Not superseded if L2 cannot tell.
    async fn superseded(&self, key: &str, created_us: u64) -> bool {
        let Some(l2) = &self.l2 else {
            return false;
        };
        match l2.peek(key).await {
            Ok(Some(found)) => found.created_us() != created_us || found.ordered_us() != created_us,
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Take this replica's value of `key`, created at `created_us`, back from L2 (best effort):
    /// deleted only if L2 holds it or an older entry, compared and deleted in one step, so that
    /// another replica's newer write stays.
    pub(crate) async fn undo_l2(self: &Arc<Self>, key: &str, created_us: u64) {
        let after = std::time::SystemTime::UNIX_EPOCH
            + std::time::Duration::from_micros(created_us.saturating_add(1));
        let deleted = self
            .via_l2(|l2| async move { l2.delete_if_older(key, after).await })
            .await;
        match deleted {
            // A replica may have read the value back from L2 since the change was announced.
            Some(Ok(true)) => self.tell_reread(key),
            Some(Err(e)) => self.unsettled_after(&e, &[key]),
            _ => {}
        }
    }

    /// Whether L2 holds, under `key`, an entry created at `created_us` (this replica's own
    /// write), not expired since by an `expire` (which leaves a stand-in ordered after it).
    async fn l2_holds_created(&self, l2: &Arc<dyn Cache<V>>, key: &str, created_us: u64) -> bool {
        matches!(l2.peek(key).await, Ok(Some(found))
            if found.created_us() == created_us && found.ordered_us() == created_us)
    }

    /// Delete `keys` from L2 (best effort): their writes were refused by the server, and what
    /// it holds for them is older than what this replica announced.
    async fn clear_older(self: &Arc<Self>, keys: &[&str]) {
        for key in keys {
            if let Some(Err(e)) = self.via_l2(|l2| async move { l2.delete(key).await }).await {
                self.unsettled_after(&e, &[key]);
            }
        }
    }

    /// Write `entries` to L2 in one batch, each unless L2 holds a newer entry of its key (see
    /// [`Inner::write_l2`]); which of them L2 superseded, in order. None superseded also when
    /// L2 is unavailable (the keys are remembered for the catch-up); the error when L2 refused
    /// the batch (a value too large or not encodable: the caller then writes key by key, so
    /// each value meets its own fate).
    pub(crate) async fn write_l2_many(
        self: &Arc<Self>,
        entries: Vec<(&str, Entry<V>)>,
    ) -> std::result::Result<Vec<bool>, Error> {
        let none_superseded = vec![false; entries.len()];
        if self.l2.is_none() || entries.is_empty() {
            return Ok(none_superseded);
        }
        let keys: Vec<(Arc<str>, u64)> = entries
            .iter()
            .map(|(k, e)| (Arc::from(*k), e.created_us()))
            .collect();
        let names: Vec<&str> = entries.iter().map(|(k, _)| *k).collect();
        let created: Vec<u64> = entries.iter().map(|(_, e)| e.created_us()).collect();
        let entries: Vec<(&str, Entry<V>)> = entries
            .into_iter()
            .map(|(key, entry)| (key, self.retained(entry)))
            .collect();
        let written = self
            .via_l2(|l2| async move { l2.set_many_if_newer(entries).await })
            .await;
        match written {
            Some(Ok(stored)) if stored.len() == names.len() => {
                let mut superseded = Vec::with_capacity(stored.len());
                for ((name, created_us), stored) in names.iter().zip(created).zip(stored) {
                    superseded.push(!stored && self.superseded(name, created_us).await);
                }
                Ok(superseded)
            }
            // A layer that answered for another number of keys: none is taken as superseded.
            Some(Ok(_)) => Ok(none_superseded),
            Some(Err(e)) if e.is_refusal() => Err(e),
            failed => {
                self.remember(keys);
                if let Some(Err(e)) = &failed {
                    self.unsettled_after(e, &names);
                }
                self.catch_up_later();
                // These writes replace what the keys held (see `write_l2`).
                if matches!(&failed, Some(Err(e)) if e.is_server_reply()) {
                    self.clear_older(&names).await;
                }
                Ok(none_superseded)
            }
        }
    }

    /// After a successful L2 call: if writes are pending, start one task to catch them up.
    fn flush_pending_soon(self: &Arc<Self>) {
        let has_pending = !self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty();
        if !has_pending
            || crate::entry::now_ms() < self.flush_not_before_ms.load(Ordering::Relaxed)
            || self.flushing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.flushing.store(false, Ordering::Release);
            return;
        };
        let inner = Arc::clone(self);
        runtime.spawn(async move {
            inner.flush_pending().await;
            inner.flushing.store(false, Ordering::Release);
        });
    }

    /// Make sure the pending writes are tried again every [`CATCH_UP_EVERY`] until none is left
    /// (one task per cache, holding it weakly: a dropped cache ends it), whether or not other
    /// L2 calls succeed meanwhile. Each try skips an open circuit, so an outage costs no Redis
    /// call beyond the breaker's own probes.
    pub(super) fn catch_up_later(self: &Arc<Self>) {
        if self.catching_up.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.catching_up.store(false, Ordering::Release);
            return;
        };
        let weak = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(CATCH_UP_EVERY).await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                inner.reread_unsettled().await;
                if inner.pending_is_empty() && inner.unsettled.is_empty() {
                    inner.catching_up.store(false, Ordering::Release);
                    // A key queued just before the flag went down found it up and left the
                    // retries to this task: take them back unless another task did.
                    if (inner.pending_is_empty() && inner.unsettled.is_empty())
                        || inner.catching_up.swap(true, Ordering::AcqRel)
                    {
                        return;
                    }
                    continue;
                }
                inner.try_catch_up().await;
            }
        });
    }

    pub(super) fn pending_is_empty(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// One catch-up pass now, unless the circuit is open, L2 asked for a pause, or a pass is
    /// already running. Run it on a task of its own (a pass dropped half-way would lose the
    /// batch it took out of the pending set).
    pub(super) async fn try_catch_up(self: &Arc<Self>) {
        if self.breaker.state() == crate::load::breaker::CircuitState::Open
            || crate::entry::now_ms() < self.flush_not_before_ms.load(Ordering::Relaxed)
            || self.flushing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        // Lowers the flag however the pass ends.
        struct Running<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _running = Running(&self.flushing);
        self.flush_pending().await;
    }

    /// Copy pending keys' current L1 entries to L2, a batch at a time, each only if L2 holds
    /// nothing newer; stop at the first failure of L2 (the keys stay pending). A refused value
    /// (too large, cannot encode) is dropped and never holds back the others.
    ///
    /// A key stays in the pending set until its write is settled, so that the backplane's events
    /// meanwhile still see it (an older change announced by another replica must not make this
    /// replica forget its newer write; a newer one makes it forget, and the script's comparison
    /// in L2 then keeps the newer value).
    async fn flush_pending(self: &Arc<Self>) {
        let Some(l2) = self.l2.clone() else {
            return;
        };
        // Keys left for a later pass: their write is remembered but its L1 entry not stored yet.
        let mut later: HashSet<Arc<str>> = HashSet::new();
        loop {
            let batch: Vec<(Arc<str>, u64)> = {
                let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                pending
                    .iter()
                    .filter(|(key, _)| !later.contains(*key))
                    .take(FLUSH_BATCH)
                    .map(|(key, us)| (Arc::clone(key), *us))
                    .collect()
            };
            if batch.is_empty() {
                return;
            }
            let now_us = crate::entry::now_us();
            let mut entries = Vec::with_capacity(batch.len());
            for (key, us) in batch {
                let found = self.l1_done(self.l1.peek(&key).await).flatten();
                match found {
                    Some(entry) if entry.created_us() >= us => entries.push((key, us, entry)),
                    // The write remembered itself an instant ago and is storing its L1 entry.
                    _ if now_us.saturating_sub(us) < SETTLING_US => {
                        later.insert(key);
                    }
                    // An older entry of this replica's (the remembered write was not stored in
                    // L1): copied all the same, as L2 may hold nothing newer.
                    Some(entry) => entries.push((key, us, entry)),
                    // Gone from L1 since (deleted here, or evicted): nothing left to copy.
                    None => {
                        self.settled(&key, us);
                    }
                }
            }
            if entries.is_empty() {
                // Nothing of this batch to write: the breaker is not asked (a probe would be
                // spent, and a success recorded, without any call to L2).
                continue;
            }
            let connections = l2.connections();
            let allowed = self.breaker.allow(connections);
            if allowed == Allow::No {
                return;
            }
            // Each key only if L2 holds nothing newer (another replica may have written it
            // while this one could not reach L2), compared and written in one step.
            for (key, us, entry) in entries {
                let created_us = entry.created_us();
                match l2.set_if_newer(&key, entry).await {
                    // Announced again: a replica that re-read L2 between the first announcement
                    // and this write holds the older value.
                    Ok(true) => {
                        self.settled(&key, us);
                        let _ = self.announce_set(&key);
                    }
                    // L2 holds the remembered write itself (L1 held it too): the write that
                    // failed here reached Redis after all (a timeout on a slow link), maybe after
                    // its announcement, and a replica that re-read L2 in between holds the older
                    // value. Announced again.
                    Ok(false)
                        if created_us == us
                            && self.l2_holds_created(&l2, &key, created_us).await =>
                    {
                        self.settled(&key, us);
                        let _ = self.announce_set(&key);
                    }
                    // L2 holds a newer value (another replica wrote it meanwhile): ours is
                    // dropped from L1 too, so this replica reads the newer one.
                    Ok(false) => {
                        if self.settled(&key, us) || !self.is_pending(&key) {
                            self.changing_here(&key);
                            self.l1_done(self.l1.delete(&key).await);
                        }
                    }
                    // Refused (too large, cannot encode): counted and reported by the codec;
                    // not an outage, and not retried.
                    Err(e) if e.is_refusal() => {
                        self.settled(&key, us);
                        self.layer_errors.fetch_add(1, Ordering::Relaxed);
                        self.refused(&e);
                    }
                    Err(e) => {
                        self.layer_errors.fetch_add(1, Ordering::Relaxed);
                        // This write too may still land.
                        self.unsettled_after(&e, &[&*key]);
                        if e.is_server_reply() {
                            // Full or read-only, not down: try again later, and leave the
                            // circuit as it is.
                            self.breaker.neutral(allowed);
                            self.answered_with_error(&e);
                            self.flush_not_before_ms
                                .store(crate::entry::now_ms() + REPLY_RETRY_MS, Ordering::Relaxed);
                        } else {
                            self.breaker.record(allowed, false, connections);
                        }
                        // This key and the rest of the batch stay pending.
                        return;
                    }
                }
            }
            self.breaker.record(allowed, true, connections);
        }
    }

    /// The catch-up is done with the write of `key` created at `us`: forget the key unless a
    /// later write of it was remembered meanwhile (then it stays for the next pass). Whether
    /// it was forgotten.
    fn settled(&self, key: &str, us: u64) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.get(key) == Some(&us) {
            pending.remove(key);
            true
        } else {
            false
        }
    }

    /// Another replica cleared the cache: what this one remembered during an outage is older
    /// and must not be copied to L2.
    #[cfg(feature = "redis")]
    pub(crate) fn forget_all_pending(&self) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// The keys waiting for the catch-up.
    #[cfg(feature = "redis")]
    pub(crate) fn pending_keys(&self) -> Vec<Arc<str>> {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Whether `key` waits for the catch-up.
    pub(crate) fn is_pending(&self, key: &str) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(key)
    }

    /// Another replica changed `key` at `us`: forget what this one remembered for it unless
    /// that write is newer (judged and forgotten in one step, so a write remembering itself
    /// meanwhile is never forgotten unseen).
    #[cfg(feature = "redis")]
    pub(crate) fn forget_pending_unless_newer(&self, key: &str, us: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.get(key).is_some_and(|created| *created <= us) {
            pending.remove(key);
        }
    }

    /// Whether `key` waits for the catch-up with a write created after `us`. The time is the one
    /// remembered with the key, not read from L1: the write stores its L1 entry only after its
    /// L2 write failed and the key was remembered, and an older change announced in between
    /// would otherwise find nothing in L1 and make this replica forget its newer write.
    #[cfg(feature = "redis")]
    pub(crate) fn pending_newer_than(&self, key: &str, us: u64) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .is_some_and(|created| *created > us)
    }

    /// Forget what was remembered for the keys starting with `prefix`.
    pub(crate) fn forget_pending_prefix(&self, prefix: &str) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|key, _| !key.starts_with(prefix));
    }

    /// Remember `keys` (with their writes' creation times) for the catch-up, up to
    /// [`MAX_PENDING`] keys; a key remembered already keeps the later of the two times.
    fn remember(&self, keys: impl IntoIterator<Item = (Arc<str>, u64)>) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, us) in keys {
            if let Some(known) = pending.get_mut(&key) {
                *known = (*known).max(us);
            } else if pending.len() < MAX_PENDING {
                pending.insert(key, us);
            }
        }
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use std::sync::Arc;

    use crate::{Layered, MemoryCache, Result};

    fn layered() -> Result<Layered<String>> {
        Layered::builder(
            MemoryCache::<String>::builder().build()?,
            MemoryCache::<String>::builder().build()?,
        )
        .build()
    }

    /// The field failure: a write fails to reach L2 and is remembered, and an older change of
    /// the same key announced by another replica arrives before the write has stored its L1
    /// entry. The write is newer, so it must stay remembered for the catch-up.
    #[test]
    fn a_remembered_write_outranks_an_older_change_before_its_l1_entry_exists() -> Result<()> {
        let cache = layered()?;
        let inner = &cache.inner;
        inner.remember([(Arc::from("k"), 2_000)]);
        assert!(inner.pending_newer_than("k", 1_999), "older change");
        assert!(
            !inner.pending_newer_than("k", 2_000),
            "same time: not newer"
        );
        assert!(!inner.pending_newer_than("k", 2_001), "newer change");
        assert!(!inner.pending_newer_than("other", 0), "not remembered");
        Ok(())
    }

    #[test]
    fn a_key_remembered_twice_keeps_its_later_write_until_that_one_is_settled() -> Result<()> {
        let cache = layered()?;
        let inner = &cache.inner;
        inner.remember([(Arc::from("k"), 5_000)]);
        inner.remember([(Arc::from("k"), 3_000)]);
        assert!(inner.pending_newer_than("k", 4_999));
        // The catch-up wrote the first write while the second was remembered: the key stays.
        assert!(!inner.settled("k", 3_000));
        assert_eq!(cache.pending_l2_writes(), 1);
        assert!(inner.settled("k", 5_000));
        assert_eq!(cache.pending_l2_writes(), 0);
        Ok(())
    }
}
