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

    /// Write `entry` to L2, or remember the key for later if L2 is unavailable. Returns the
    /// refusal, if L2's codec refused the value (it is then not remembered).
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
    ) -> Option<Error> {
        self.l2.as_ref()?;
        let entry = self.retained(entry);
        let written = self
            .via_l2(|l2| async move { l2.set(key, entry).await })
            .await;
        match written {
            Some(Ok(())) => None,
            Some(Err(e)) if e.is_refusal() => Some(e),
            failed => {
                {
                    let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                    if pending.len() < MAX_PENDING {
                        pending.insert(Arc::from(key));
                    }
                }
                self.catch_up_later();
                if replacing && matches!(&failed, Some(Err(e)) if e.is_server_reply()) {
                    self.clear_older(&[key]).await;
                }
                None
            }
        }
    }

    /// Delete `keys` from L2 (best effort): their writes were refused by the server, and what
    /// it holds for them is older than what this replica announced.
    async fn clear_older(self: &Arc<Self>, keys: &[&str]) {
        for key in keys {
            let _ = self.via_l2(|l2| async move { l2.delete(key).await }).await;
        }
    }

    /// Write `entries` to L2 in one batch. `Ok(())` also when L2 is unavailable (the keys are
    /// remembered for the catch-up); the error when L2 refused the batch (a value too large or
    /// not encodable: the caller then writes key by key, so each value meets its own fate).
    pub(crate) async fn write_l2_many(
        self: &Arc<Self>,
        entries: Vec<(&str, Entry<V>)>,
    ) -> std::result::Result<(), Error> {
        if self.l2.is_none() || entries.is_empty() {
            return Ok(());
        }
        let keys: Vec<Arc<str>> = entries.iter().map(|(k, _)| Arc::from(*k)).collect();
        let names: Vec<&str> = entries.iter().map(|(k, _)| *k).collect();
        let entries: Vec<(&str, Entry<V>)> = entries
            .into_iter()
            .map(|(key, entry)| (key, self.retained(entry)))
            .collect();
        let written = self
            .via_l2(|l2| async move { l2.set_many(entries).await })
            .await;
        match written {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) if e.is_refusal() => Err(e),
            failed => {
                {
                    let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                    for key in keys {
                        if pending.len() >= MAX_PENDING {
                            break;
                        }
                        pending.insert(key);
                    }
                }
                self.catch_up_later();
                // These writes replace what the keys held (see `write_l2`).
                if matches!(&failed, Some(Err(e)) if e.is_server_reply()) {
                    self.clear_older(&names).await;
                }
                Ok(())
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
                if inner.pending_is_empty() {
                    inner.catching_up.store(false, Ordering::Release);
                    // A key queued just before the flag went down found it up and left the
                    // retries to this task: take them back unless another task did.
                    if inner.pending_is_empty() || inner.catching_up.swap(true, Ordering::AcqRel) {
                        return;
                    }
                    continue;
                }
                inner.try_catch_up().await;
            }
        });
    }

    fn pending_is_empty(&self) -> bool {
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
    async fn flush_pending(self: &Arc<Self>) {
        let Some(l2) = self.l2.clone() else {
            return;
        };
        loop {
            let batch: Vec<Arc<str>> = {
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                let batch: Vec<Arc<str>> = pending.iter().take(FLUSH_BATCH).cloned().collect();
                for key in &batch {
                    pending.remove(key);
                }
                // Still waiting for L2 while the batch is out of the set.
                self.in_catch_up.store(batch.len(), Ordering::SeqCst);
                batch
            };
            if batch.is_empty() {
                return;
            }
            let mut entries = Vec::with_capacity(batch.len());
            for key in &batch {
                if let Some(Some(entry)) = self.l1_done(self.l1.peek(key).await) {
                    entries.push((Arc::clone(key), entry));
                }
            }
            let connections = l2.connections();
            let allowed = self.breaker.allow(connections);
            if allowed == Allow::No {
                self.requeue(batch);
                return;
            }
            // Each key only if L2 holds nothing newer (another replica may have written it
            // while this one could not reach L2), compared and written in one step.
            let mut rest = entries.into_iter();
            for (key, entry) in rest.by_ref() {
                match l2.set_if_newer(&key, entry).await {
                    // Announced again: a replica that re-read L2 between the first announcement
                    // and this write holds the older value.
                    Ok(true) => {
                        let _ = self.announce_set(&key);
                    }
                    // L2 holds a newer value (another replica wrote it meanwhile): ours is
                    // dropped from L1 too, so this replica reads the newer one.
                    Ok(false) => {
                        self.l1_done(self.l1.delete(&key).await);
                    }
                    // Refused (too large, cannot encode): counted and reported by the codec;
                    // not an outage, and not retried.
                    Err(e) if e.is_refusal() => {
                        self.layer_errors.fetch_add(1, Ordering::Relaxed);
                        self.refused(&e);
                    }
                    Err(e) => {
                        self.layer_errors.fetch_add(1, Ordering::Relaxed);
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
                        let mut left: Vec<Arc<str>> = vec![key];
                        left.extend(rest.map(|(k, _)| k));
                        self.requeue(left);
                        return;
                    }
                }
            }
            self.breaker.record(allowed, true, connections);
            self.in_catch_up.store(0, Ordering::SeqCst);
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    /// Another replica changed `key` (or, with `None`, everything): what this one remembered for
    /// it during an outage is older and must not be copied to L2.
    pub(crate) fn forget_pending(&self, key: Option<&str>) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        match key {
            Some(key) => {
                pending.remove(key);
            }
            None => pending.clear(),
        }
    }

    /// The L1 entries of the keys waiting for the catch-up (kept when L1 is dropped after a gap
    /// in the backplane: they are this replica's own writes, still to be copied to L2).
    #[cfg(feature = "redis")]
    pub(crate) fn pending_entries(
        &self,
        memory: &crate::MemoryCache<V>,
    ) -> Vec<(Arc<str>, Entry<V>)> {
        let now = crate::entry::now_ms();
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|key| memory.peek_at(key, now).map(|e| (Arc::clone(key), e)))
            .collect()
    }

    /// Whether `key` waits for the catch-up with an L1 entry created after `us`.
    #[cfg(feature = "redis")]
    pub(crate) fn pending_newer_than(
        &self,
        memory: &crate::MemoryCache<V>,
        key: &str,
        us: u64,
    ) -> bool {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(key);
        pending
            && memory
                .peek_at(key, crate::entry::now_ms())
                .is_some_and(|e| e.created_us() > us)
    }

    /// Forget what was remembered for the keys starting with `prefix`.
    pub(crate) fn forget_pending_prefix(&self, prefix: &str) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|key| !key.starts_with(prefix));
    }

    fn requeue(&self, batch: Vec<Arc<str>>) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.extend(batch);
        self.in_catch_up.store(0, Ordering::SeqCst);
    }
}
