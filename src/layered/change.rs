//! Changes made through a [`Layered`]: `set`, `set_many`, `delete`, `expire` (and, through
//! [`Layered::to_completion`], `invalidate_tag`, `clear` and `invalidate_prefix`).
//!
//! A change takes several steps — L2, L1, the announcement to the other replicas — and a caller
//! can stop waiting between any two: a request handler whose client hung up is dropped mid-way.
//! A change half made (gone from Redis, but never announced) would leave the other replicas
//! serving the old value for its whole lifetime, so each change runs to its end on a task of
//! its own, whether or not its caller still waits.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::l2::Written;
use super::{Announced, Change, Layered};
use crate::cache::Cache;
use crate::entry::{now_ms, Entry};
use crate::error::{Error, Result};

/// A `set_many` announces its keys to the fleet this many at a time, each chunk published
/// before the next is queued (unless publishing fails: then nothing waits). Queued all at once,
/// more than `fleet::MAX_OUTBOX` keys (10,000) overflowed the outbox into a
/// `resync`, and every other replica dropped its whole L1 after a healthy bulk write; a chunk
/// also fits in the receivers' `fleet::SUBSCRIBER_BUFFER`.
const ANNOUNCE_CHUNK: usize = 1_000;

impl<V> Layered<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// Run `change` to its end even if the caller stops waiting for it (on a task of its own;
    /// in place outside a tokio runtime). A panic in it reaches the caller.
    ///
    /// # Errors
    ///
    /// The change's own; [`Error::LoadCancelled`] if the runtime shut down before it ended.
    pub(super) async fn to_completion<T, F>(&self, change: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return change.await;
        };
        let running = Running::start(&self.inner.changes_running);
        // In the caller's span, as if it ran in place (its Redis commands are the caller's).
        let change = crate::traced!(tracing::Span::current(), async move {
            let _running = running;
            change.await
        });
        match runtime.spawn(change).await {
            Ok(result) => result,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => Err(Error::LoadCancelled),
        }
    }

    pub(super) async fn expire_now(&self, key: &str) -> Result<()> {
        let inner = &self.inner;
        inner.flights.supersede(key);
        // The newest entry this expire is about: an entry created later is a newer write.
        let expired_at_us = crate::entry::now_us();
        let mut newest_us = expired_at_us;
        let now = now_ms();
        if let Some(entry) = inner.read_l1(key, now).await {
            newest_us = newest_us.max(entry.created_us());
            inner.l1_done(inner.l1.set(key, entry.cap_fresh_ms(now)).await);
        }
        let mut result = Ok(());
        if inner.l2.is_some() {
            let read = inner.via_l2(|l2| async move { l2.peek(key).await }).await;
            if read.is_none() {
                // L2's circuit is open: Redis still holds the entry fresh (as `delete` says).
                result = Err(Error::CircuitOpen {
                    layer: inner
                        .l2
                        .as_ref()
                        .map(|l2| l2.name().to_owned())
                        .unwrap_or_default(),
                });
            }
            if let Some(read) = read {
                match read {
                    Ok(Some(entry)) => {
                        newest_us = newest_us.max(entry.created_us());
                        // The expired copy stands in for this expire: the value read, with its
                        // own creation time, ordered at the expire (after the entry read, if a
                        // clock ahead of this one created that). Written unless L2 holds a
                        // value created since — another replica's write stays, even if this one
                        // reaches Redis late — and a value created before it that reaches Redis
                        // later (a load that read the old data on a replica that has not heard
                        // of this expire yet) is kept out. See `codec::frame`, bit 6.
                        let at = expired_at_us.max(entry.ordered_us().saturating_add(1));
                        let entry = entry.cap_fresh_ms(now).superseding_from_us(at);
                        if let Some(Err(e)) = inner
                            .via_l2(|l2| async move { l2.set_if_newer(key, entry).await })
                            .await
                        {
                            inner.unsettled_after(&e, &[key]);
                            result = Err(e);
                        }
                    }
                    // Nothing to expire: L2 is left as a delete at the expire's time leaves it
                    // (a tombstone in Redis), which keeps out a value read before the expire,
                    // as above.
                    Ok(None) => {
                        let at =
                            std::time::UNIX_EPOCH + std::time::Duration::from_micros(expired_at_us);
                        if let Some(Err(e)) = inner
                            .via_l2(|l2| async move { l2.delete_if_older(key, at).await })
                            .await
                        {
                            inner.unsettled_after(&e, &[key]);
                            result = Err(e);
                        }
                    }
                    Err(e) => result = Err(e),
                }
            }
            // A read of L2 since the expire in L1 above may have copied the entry, still fresh
            // in L2 then, back into L1: expired there again (see `Inner::epoch`).
            inner.changing_here(key);
            let now = now_ms();
            match &inner.l1_memory {
                Some(memory) => memory.expire_unless(key, now, |e| e.created_us() > newest_us),
                None => {
                    let fresh = inner
                        .read_l1(key, now)
                        .await
                        .filter(|e| e.is_fresh_at(now) && e.created_us() <= newest_us);
                    if let Some(entry) = fresh {
                        inner.l1_done(inner.l1.set(key, entry.cap_fresh_ms(now)).await);
                    }
                }
            }
        }
        let announced = inner.announce_change(key, Change::Expire).await;
        inner.told(announced).await;
        result
    }

    pub(super) async fn set_now(&self, key: &str, entry: Entry<V>) -> Result<()> {
        let inner = &self.inner;
        crate::tags::validate(entry.tag_set().as_slice())?;
        inner.flights.supersede(key);
        // Before L2: a change of the key that lands meanwhile undoes this write's L1 copy.
        let epoch = inner.epoch(key);
        let stored = match inner.write_l2(key, entry.clone(), true).await {
            Written::Refused(refused) if !matches!(refused, Error::ValueTooLarge { .. }) => {
                return Err(refused);
            }
            // L2 holds a newer write of the key (another replica's, created later than this
            // one): that one stands, so this replica drops what its L1 holds and reads it.
            Written::Superseded => {
                inner.changing_here(key);
                inner.l1.delete(key).await
            }
            _ => inner.store_written(key, entry, epoch).await,
        };
        let announced = inner.announce_change(key, Change::Set).await;
        inner.told(announced).await;
        stored.inspect_err(|_| {
            inner
                .layer_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
    }

    pub(super) async fn set_many_now(&self, entries: Vec<(&str, Entry<V>)>) -> Result<()> {
        let inner = &self.inner;
        for (_, entry) in &entries {
            crate::tags::validate(entry.tag_set().as_slice())?;
        }
        for (key, _) in &entries {
            inner.flights.supersede(key);
        }
        // Before L2, as in `set_now`.
        let epochs: Vec<u64> = entries.iter().map(|(key, _)| inner.epoch(key)).collect();
        let Ok(superseded) = inner.write_l2_many(entries.clone()).await else {
            for (key, entry) in entries {
                self.set_now(key, entry).await?;
            }
            return Ok(());
        };
        let mut announced = Announced::default();
        let mut failed = Ok(());
        let written = entries.into_iter().zip(superseded).zip(epochs);
        for (i, (((key, entry), superseded), epoch)) in written.enumerate() {
            if i % ANNOUNCE_CHUNK == 0 {
                // Told a chunk at a time (see `ANNOUNCE_CHUNK`).
                inner.told(std::mem::take(&mut announced)).await;
            }
            // A newer write of the key stands in L2 (see `set_now`).
            let stored = if superseded {
                inner.changing_here(key);
                inner.l1.delete(key).await
            } else {
                inner.store_written(key, entry, epoch).await
            };
            announced = announced.and(inner.announce_change(key, Change::Set).await);
            if let Err(e) = stored {
                inner
                    .layer_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                failed = Err(e);
                break;
            }
        }
        inner.told(announced).await;
        failed
    }

    pub(super) async fn delete_now(&self, key: &str) -> Result<()> {
        let inner = &self.inner;
        inner.flights.supersede(key);
        // Only what was written before this delete: the delete may reach Redis late (a slow
        // link), after another replica's newer write of the key, which must stay.
        let asked = std::time::SystemTime::UNIX_EPOCH
            + std::time::Duration::from_micros(crate::entry::now_us());
        let l2 = inner
            .via_l2(|l2| async move { l2.delete_if_older(key, asked).await.map(|_| ()) })
            .await;
        if let Some(Err(e)) = &l2 {
            inner.unsettled_after(e, &[key]);
        }
        let announced = inner.announce_change(key, Change::Delete).await;
        // After L2, before L1: a read of L2 that raced with the delete does not put the value
        // back in L1 (see `Inner::epoch`).
        inner.changing_here(key);
        let l1 = inner.l1.delete(key).await;
        inner.told(announced).await;
        l1.inspect_err(|_| {
            inner
                .layer_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })?;
        match (l2, &inner.l2) {
            (Some(result), _) => result,
            (None, None) => Ok(()),
            (None, Some(l2)) => Err(Error::CircuitOpen {
                layer: l2.name().to_owned(),
            }),
        }
    }
}

/// Counts a change as running until it is dropped (done, or dropped with its runtime).
struct Running(Arc<AtomicUsize>);

impl Running {
    fn start(count: &Arc<AtomicUsize>) -> Running {
        count.fetch_add(1, Ordering::SeqCst);
        Running(Arc::clone(count))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
