//! [`Backplane`]: cross-replica L1 invalidation over Redis pub/sub (see the [module docs](super)).

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fred::bytes::Bytes;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use tokio::sync::{broadcast, Notify};

use crate::entry::now_ms;

pub(crate) const WIRE: u8 = WIRE_VERSION;

/// How often each replica publishes a heartbeat it expects to hear back.
pub const HEARTBEAT: Duration = Duration::from_millis(250);
/// How long a replica trusts its L1 without hearing its own heartbeat: the bound on how long a
/// lost invalidation can be served.
pub const TRUST_WINDOW: Duration = Duration::from_secs(1);

/// The wire version, in every message and in the channel name.
const WIRE_VERSION: u8 = 1;
/// version(1) + action(1) + source(16) + timestamp(8).
const HEADER: usize = 26;

/// What a message announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Action {
    Set = 1,
    Delete = 2,
    Expire = 3,
    Clear = 4,
    Heartbeat = 5,
}

impl Action {
    fn from_byte(b: u8) -> Option<Action> {
        Some(match b {
            1 => Action::Set,
            2 => Action::Delete,
            3 => Action::Expire,
            4 => Action::Clear,
            5 => Action::Heartbeat,
            _ => return None,
        })
    }
}

/// What a cache must do to its L1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// Another replica set or deleted `key`.
    Evict(Arc<str>),
    /// Another replica expired `key`: keep it only as a stale fallback.
    Expire(Arc<str>),
    /// Anything may have been missed (or another replica cleared): drop all of L1.
    ClearAll,
}

fn encode(id: u128, action: Action, key: &str) -> Bytes {
    let mut out = Vec::with_capacity(HEADER + key.len());
    out.push(WIRE_VERSION);
    out.push(action as u8);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&now_ms().to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    Bytes::from(out)
}

/// (source, action, key) of a message, or `None` for anything not of our wire version.
fn decode(bytes: &[u8]) -> Option<(u128, Action, &str)> {
    if bytes.len() < HEADER || bytes[0] != WIRE_VERSION {
        return None;
    }
    let action = Action::from_byte(bytes[1])?;
    let mut id = [0u8; 16];
    id.copy_from_slice(&bytes[2..18]);
    let key = std::str::from_utf8(&bytes[HEADER..]).ok()?;
    Some((u128::from_le_bytes(id), action, key))
}

/// A random 128-bit instance id (not secret: it only tells replicas apart).
fn instance_id() -> u128 {
    let state = std::collections::hash_map::RandomState::new();
    let mut a = state.build_hasher();
    a.write_u128(u128::from(now_ms()) << 32 | u128::from(std::process::id()));
    let mut b = state.build_hasher();
    b.write_u64(a.finish());
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

/// Counters of a [`Backplane`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackplaneState {
    /// Whether this replica currently hears its own heartbeat (its L1 is trusted).
    pub subscribed: bool,
    /// Change messages published.
    pub published: u64,
    /// Publish attempts that failed (retried, latest action per key winning).
    pub publish_failures: u64,
    /// Change messages received from other replicas.
    pub received: u64,
    /// Times the whole L1 was dropped because messages could have been missed.
    pub resyncs: u64,
}

/// Cross-replica L1 invalidation over Redis pub/sub. Made by
/// [`RedisCache::backplane`](crate::RedisCache::backplane); given to a `Layered` with
/// [`LayeredBuilder::backplane`](crate::LayeredBuilder::backplane). Cloning is cheap.
#[derive(Clone)]
pub struct Backplane {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    id: u128,
    channel: String,
    publisher: Client,
    subscriber: SubscriberClient,
    /// Latest action per key, waiting to be published.
    outbox: Mutex<HashMap<Arc<str>, Action>>,
    wake: Notify,
    events: broadcast::Sender<Event>,
    /// When this replica last heard its own heartbeat (ms since the epoch).
    last_heard_ms: AtomicU64,
    trusted: AtomicBool,
    published: AtomicU64,
    publish_failures: AtomicU64,
    received: AtomicU64,
    resyncs: AtomicU64,
}

impl fmt::Debug for Backplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backplane")
            .field("channel", &self.shared.channel)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (subscriber, publisher) = (self.subscriber.clone(), self.publisher.clone());
            runtime.spawn(async move {
                let _ = subscriber.quit().await;
                let _ = publisher.quit().await;
            });
        }
    }
}

impl Backplane {
    /// Start a backplane on `channel` with connected `publisher` and `subscriber` clients.
    pub(crate) async fn start(
        channel: String,
        publisher: Client,
        subscriber: SubscriberClient,
    ) -> Result<Backplane, fred::error::Error> {
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            id: instance_id(),
            channel,
            publisher,
            subscriber,
            outbox: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            events,
            last_heard_ms: AtomicU64::new(now_ms()),
            trusted: AtomicBool::new(true),
            published: AtomicU64::new(0),
            publish_failures: AtomicU64::new(0),
            received: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
        });
        let messages = shared.subscriber.message_rx();
        let reconnects = shared.subscriber.reconnect_rx();
        shared.subscriber.subscribe(shared.channel.as_str()).await?;
        // The task resubscribes after every reconnect; it ends with the client.
        drop(shared.subscriber.manage_subscriptions());
        let weak = Arc::downgrade(&shared);
        tokio::spawn(receive(weak.clone(), messages));
        tokio::spawn(distrust_on_reconnect(weak.clone(), reconnects));
        tokio::spawn(publish_loop(weak.clone()));
        tokio::spawn(heartbeat(weak));
        Ok(Backplane { shared })
    }

    /// The pub/sub channel: `layercache:backplane:v1:<namespace>`.
    pub fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// Whether this replica hears the channel (its own heartbeat within [`TRUST_WINDOW`]); while
    /// it does not, a `Layered` does not trust its L1.
    pub fn is_subscribed(&self) -> bool {
        self.shared.trusted.load(Ordering::Acquire)
    }

    /// Counters and the subscription state.
    pub fn state(&self) -> BackplaneState {
        let s = &self.shared;
        BackplaneState {
            subscribed: self.is_subscribed(),
            published: s.published.load(Ordering::Relaxed),
            publish_failures: s.publish_failures.load(Ordering::Relaxed),
            received: s.received.load(Ordering::Relaxed),
            resyncs: s.resyncs.load(Ordering::Relaxed),
        }
    }

    /// Announce `action` on `key` (queued; never waits, never fails).
    pub(crate) fn announce(&self, action: Action, key: &str) {
        let mut outbox = self
            .shared
            .outbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        outbox.insert(Arc::from(key), action);
        drop(outbox);
        self.shared.wake.notify_one();
    }

    /// The events a cache applies to its L1.
    pub(crate) fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }
}

/// Apply incoming messages: other replicas' changes become events; our own heartbeat renews
/// trust (and, after a gap, drops L1).
async fn receive(
    shared: std::sync::Weak<Shared>,
    mut messages: broadcast::Receiver<fred::types::Message>,
) {
    loop {
        let message = messages.recv().await;
        let Some(s) = shared.upgrade() else {
            return;
        };
        match message {
            Ok(message) => {
                let Some(bytes) = message.value.as_bytes() else {
                    continue;
                };
                let Some((source, action, key)) = decode(bytes) else {
                    continue;
                };
                if source == s.id {
                    if action == Action::Heartbeat {
                        s.last_heard_ms.store(now_ms(), Ordering::Release);
                        if !s.trusted.swap(true, Ordering::AcqRel) {
                            // Messages may have been missed while we could not hear: start over.
                            s.resyncs.fetch_add(1, Ordering::Relaxed);
                            let _ = s.events.send(Event::ClearAll);
                        }
                    }
                    continue;
                }
                let event = match action {
                    Action::Heartbeat => continue,
                    Action::Set | Action::Delete => Event::Evict(Arc::from(key)),
                    Action::Expire => Event::Expire(Arc::from(key)),
                    Action::Clear => Event::ClearAll,
                };
                s.received.fetch_add(1, Ordering::Relaxed);
                let _ = s.events.send(event);
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Messages were dropped on our side: anything may have been missed.
                s.resyncs.fetch_add(1, Ordering::Relaxed);
                let _ = s.events.send(Event::ClearAll);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// After the subscriber reconnects, messages may have been lost however short the gap: stop
/// trusting L1 until our own heartbeat comes through again (which then drops L1).
async fn distrust_on_reconnect(
    shared: std::sync::Weak<Shared>,
    mut reconnects: broadcast::Receiver<fred::types::config::Server>,
) {
    loop {
        let event = reconnects.recv().await;
        let Some(s) = shared.upgrade() else {
            return;
        };
        match event {
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                s.trusted.store(false, Ordering::Release);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Publish the outbox, latest action per key; failures are counted and retried.
async fn publish_loop(shared: std::sync::Weak<Shared>) {
    loop {
        let wake = {
            let Some(s) = shared.upgrade() else {
                return;
            };
            let batch: Vec<(Arc<str>, Action)> = {
                let mut outbox = s.outbox.lock().unwrap_or_else(PoisonError::into_inner);
                outbox.drain().collect()
            };
            let mut failed = false;
            for (key, action) in batch {
                let message = encode(s.id, action, &key);
                let sent: Result<i64, _> = s.publisher.publish(s.channel.as_str(), message).await;
                if sent.is_ok() {
                    s.published.fetch_add(1, Ordering::Relaxed);
                } else {
                    s.publish_failures.fetch_add(1, Ordering::Relaxed);
                    failed = true;
                    let mut outbox = s.outbox.lock().unwrap_or_else(PoisonError::into_inner);
                    // A newer action for the key, queued meanwhile, wins.
                    outbox.entry(key).or_insert(action);
                }
            }
            failed
        };
        match (wake, shared.upgrade()) {
            (_, None) => return,
            (true, Some(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            (false, Some(s)) => {
                // Re-check at least every heartbeat so a dropped cache ends this task.
                let _ = tokio::time::timeout(HEARTBEAT, s.wake.notified()).await;
            }
        }
    }
}

/// Publish a heartbeat every [`HEARTBEAT`]; lose trust after [`TRUST_WINDOW`] of silence.
async fn heartbeat(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(s) = shared.upgrade() else {
            return;
        };
        let message = encode(s.id, Action::Heartbeat, "");
        // Bounded by the client's command timeout; a failure just means no heartbeat.
        let _: Result<i64, _> = s.publisher.publish(s.channel.as_str(), message).await;
        let silent_for = now_ms().saturating_sub(s.last_heard_ms.load(Ordering::Acquire));
        if silent_for > TRUST_WINDOW.as_millis() as u64 {
            s.trusted.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_foreign_bytes_are_ignored() {
        let bytes = encode(42, Action::Delete, "chat:v1:key");
        assert_eq!(decode(&bytes), Some((42, Action::Delete, "chat:v1:key")));
        let mut newer = bytes.to_vec();
        newer[0] = 2;
        assert_eq!(decode(&newer), None, "another wire version");
        assert_eq!(decode(&bytes[..10]), None);
        let mut unknown = bytes.to_vec();
        unknown[1] = 99;
        assert_eq!(decode(&unknown), None);
        assert_ne!(instance_id(), instance_id());
    }
}
