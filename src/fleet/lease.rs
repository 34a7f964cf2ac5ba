//! Cross-process single-flight: one replica of the fleet loads a cold key, the others wait for
//! its value (see the [module docs](super)).
//!
//! The lease is a Redis key `layercache:lease:v1:<namespace>:<key>` set with `SET NX PX` to a
//! random token. Its holder extends it every third of its lifetime while the load runs and
//! deletes it when done, both by scripts that first compare the token (so a holder that lost
//! its lease — paused past the expiry — never deletes another replica's). The others wait for
//! the holder's backplane message for the key, never polling Redis; past the lease's remaining
//! lifetime they look again, so a holder that died is replaced once its lease expires.
//!
//! The lease is for efficiency, not correctness: whenever Redis cannot answer, a replica loads
//! on its own.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use fred::interfaces::LuaInterface;
use fred::prelude::ClientLike;
use tokio::sync::watch;

use super::backplane::{instance_id, Action, Backplane, Shared};
use crate::redis::cluster::follow_on;

/// How long a lease lasts unless its holder extends it; the holder extends it every third of
/// this while its load runs. Set with
/// [`LayeredBuilder::lease_ttl`](crate::LayeredBuilder::lease_ttl).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);

/// The longest a replica waits for another replica's load before loading itself, however often
/// the holder extends its lease (callers stop waiting earlier at their own timeouts).
pub const MAX_LEASE_WAIT: Duration = Duration::from_secs(600);

/// Set the lease if free (-3), else its remaining lifetime in ms (PTTL: -2 if it just went).
const ACQUIRE: &str = "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then \
     return -3 end return redis.call('PTTL', KEYS[1])";
/// Delete the lease if it is still ours.
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     return redis.call('DEL', KEYS[1]) end return 0";
/// Extend the lease if it is still ours.
const EXTEND: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0";

/// The result of one try for a lease.
pub(crate) enum Attempt {
    /// This replica holds the lease.
    Won(Held),
    /// Another replica holds it, for at most this much longer unless it extends it.
    Busy(Duration),
    /// Redis did not answer: load locally.
    Unavailable,
}

/// A lease this replica holds. Dropping it releases it (in the background): the lease key is
/// deleted if still ours, and unless the value was stored, a `released` message tells the
/// waiting replicas to look again.
pub(crate) struct Held {
    backplane: Backplane,
    key: Arc<str>,
    lease_key: String,
    token: String,
    extender: tokio::task::JoinHandle<()>,
    stored: bool,
}

impl Held {
    /// The value was stored in L2 and announced: waiters are woken by the `set` message.
    pub(crate) fn stored(&mut self) {
        self.stored = true;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.extender.abort();
        if !self.stored {
            let _ = self.backplane.announce(Action::Released, &self.key);
        }
        let (client, lease_key, token) = (
            self.backplane.shared.publisher.clone(),
            std::mem::take(&mut self.lease_key),
            std::mem::take(&mut self.token),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                // Bounded by the client's command timeout; if it fails, the lease expires.
                let _: Result<i64, _> = follow_on(&client, |o| {
                    let c = client.with_options(o);
                    let (lease_key, token) = (lease_key.clone(), token.clone());
                    async move { c.eval(RELEASE, lease_key, token).await }
                })
                .await;
            });
        }
    }
}

/// A registration for the messages about one key; see [`Backplane::watch`].
pub(crate) struct KeyWatch {
    shared: Arc<Shared>,
    key: Arc<str>,
    rx: watch::Receiver<u64>,
}

impl KeyWatch {
    /// Wait until a `set`, `delete` or `released` message for the key arrived since the watch
    /// was made (or since the last call), at most `limit`. Whether one did.
    pub(crate) async fn changed_within(&mut self, limit: Duration) -> bool {
        matches!(
            tokio::time::timeout(limit, self.rx.changed()).await,
            Ok(Ok(()))
        )
    }
}

impl Drop for KeyWatch {
    fn drop(&mut self) {
        let mut waiters = self
            .shared
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, count)) = waiters.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                waiters.remove(&self.key);
            }
        }
    }
}

impl Backplane {
    fn lease_key(&self, key: &str) -> String {
        format!("layercache:lease:v1:{}:{key}", self.shared.namespace)
    }

    /// Start listening for messages about `key` (before trying for its lease, so that a value
    /// announced in between is not missed).
    pub(crate) fn watch(&self, key: &str) -> KeyWatch {
        let mut waiters = self
            .shared
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key: Arc<str> = Arc::from(key);
        let entry = waiters
            .entry(Arc::clone(&key))
            .or_insert_with(|| (watch::channel(0).0, 0));
        entry.1 += 1;
        let rx = entry.0.subscribe();
        drop(waiters);
        KeyWatch {
            shared: Arc::clone(&self.shared),
            key,
            rx,
        }
    }

    /// Try once for the lease on `key`, lasting `ttl` (extended while held).
    pub(crate) async fn try_lease(&self, key: &str, ttl: Duration) -> Attempt {
        let lease_key = self.lease_key(key);
        let token = format!("{:032x}", instance_id());
        let ttl_ms = ttl.as_millis().clamp(1, u128::from(u32::MAX)) as i64;
        let client = &self.shared.publisher;
        let answer: Result<i64, _> = follow_on(client, |o| {
            let c = client.with_options(o);
            let (lease_key, args) = (lease_key.clone(), vec![token.clone(), ttl_ms.to_string()]);
            async move { c.eval(ACQUIRE, lease_key, args).await }
        })
        .await;
        if let Err(e) = &answer {
            self.shared.publisher_failed(e);
        }
        match answer {
            Ok(-3) => {
                self.shared
                    .counters
                    .leases_won
                    .fetch_add(1, Ordering::Relaxed);
                self.shared.counters.lease[0].increment(1);
                let extender = tokio::spawn(extend(
                    self.shared.publisher.clone(),
                    lease_key.clone(),
                    token.clone(),
                    ttl,
                ));
                Attempt::Won(Held {
                    backplane: self.clone(),
                    key: Arc::from(key),
                    lease_key,
                    token,
                    extender,
                    stored: false,
                })
            }
            // Gone between the SET and the PTTL: try again at once.
            Ok(ms) if ms < 0 => Attempt::Busy(Duration::ZERO),
            Ok(ms) => Attempt::Busy(Duration::from_millis(ms as u64)),
            Err(_) => Attempt::Unavailable,
        }
    }

    /// Count how a wait for another replica's value ended.
    pub(crate) fn count_wait(&self, outcome: WaitOutcome) {
        let c = &self.shared.counters;
        let (counter, index) = match outcome {
            WaitOutcome::Served => (&c.lease_waits, 1),
            WaitOutcome::TimedOut => (&c.lease_timeouts, 2),
            WaitOutcome::HolderLost => (&c.lease_holders_lost, 3),
            WaitOutcome::Bypassed => (&c.lease_bypassed, 4),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        c.lease[index].increment(1);
    }
}

/// How a wait for another replica's value ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitOutcome {
    /// Its value arrived.
    Served,
    /// It did not arrive in time (or Redis stopped answering): this replica loads.
    TimedOut,
    /// The holder's lease ran out unreleased and this replica took it over.
    HolderLost,
    /// Not a wait: the lease could not be tried (the backplane is not trusted, or Redis did not
    /// answer the first request), so this replica loads on its own.
    Bypassed,
}

/// Extend the lease every third of its lifetime until aborted.
async fn extend(client: fred::clients::Client, lease_key: String, token: String, ttl: Duration) {
    let every = (ttl / 3).max(Duration::from_millis(10));
    let ttl_ms = ttl.as_millis().clamp(1, u128::from(u32::MAX)).to_string();
    loop {
        tokio::time::sleep(every).await;
        let _: Result<i64, _> = follow_on(&client, |o| {
            let c = client.with_options(o);
            let (lease_key, args) = (lease_key.clone(), vec![token.clone(), ttl_ms.clone()]);
            async move { c.eval(EXTEND, lease_key, args).await }
        })
        .await;
    }
}
