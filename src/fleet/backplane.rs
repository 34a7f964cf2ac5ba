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
use tokio::sync::{broadcast, watch, Notify};

use super::outbox::{Outbox, Progress, Ticket};
use crate::entry::{now_ms, now_us};

pub(crate) const WIRE: u8 = WIRE_VERSION;

/// How often each replica publishes a heartbeat it expects to hear back.
pub const HEARTBEAT: Duration = Duration::from_millis(250);
/// How long a replica trusts its L1 without hearing its own heartbeat: the bound on how long a
/// lost invalidation can be served.
pub const TRUST_WINDOW: Duration = Duration::from_secs(1);
/// [`TRUST_WINDOW`] in milliseconds.
const TRUST_WINDOW_MS: u64 = TRUST_WINDOW.as_millis() as u64;

/// How many incoming messages a replica's subscriber holds for the backplane to apply. A
/// burst of changes from another replica (a `set_many` or a loop of deletes: one message per
/// key) arrives faster than a busy replica applies it; past this many waiting, messages are
/// lost and the replica must drop its whole L1 to stay correct (counted in
/// [`BackplaneState::dropped`] and `resyncs`). 2,048 carried bursts of 26,000 changes (5,000
/// keys per `set_many`) to a replica on a single-threaded runtime with both CPUs busy, where
/// fred's default of 32 lost most of them; it costs ~1.5 MB per backplane.
pub const SUBSCRIBER_BUFFER: usize = 2_048;

/// Most changes (distinct keys) waiting to be published. While Redis cannot be reached the
/// outbox keeps the latest change per key; when this many are waiting, they are replaced by one
/// `resync` message that makes the other replicas drop their whole L1, so a long outage costs
/// bounded memory and loses no invalidation.
pub const MAX_OUTBOX: usize = 10_000;

/// The wire version, in every message and in the channel name.
const WIRE_VERSION: u8 = 1;
/// version(1) + action(1) + source(16) + timestamp(8: µs since the epoch; for `tag` and `clear`
/// the invalidation time).
const HEADER: usize = 26;

/// What a message announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Action {
    Set = 1,
    Delete = 2,
    Expire = 3,
    Clear = 4,
    Heartbeat = 5,
    /// A lease holder is done (loaded or failed): replicas waiting for the key look again.
    Released = 6,
    /// A tag was invalidated (the key is the tag, the timestamp its invalidation time).
    Tag = 7,
    /// Every key starting with the message's key was removed.
    Prefix = 8,
    /// The sender's outbox overflowed and some of its changes were never announced: drop
    /// everything in L1 (no key).
    Resync = 9,
}

impl Action {
    /// Which outbox slot the action takes: changes of a key replace each other (latest wins),
    /// but never a lease release or a tag invalidation of the same name.
    pub(super) fn class(self) -> u8 {
        match self {
            Action::Released => 1,
            Action::Tag | Action::Clear => 2,
            Action::Prefix => 3,
            Action::Resync => 4,
            _ => 0,
        }
    }
}

impl Action {
    fn from_byte(b: u8) -> Option<Action> {
        Some(match b {
            1 => Action::Set,
            2 => Action::Delete,
            3 => Action::Expire,
            4 => Action::Clear,
            5 => Action::Heartbeat,
            6 => Action::Released,
            7 => Action::Tag,
            8 => Action::Prefix,
            9 => Action::Resync,
            _ => return None,
        })
    }
}

/// What a cache must do to its L1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// Another replica set or deleted `key` at this time (µs).
    Evict(Arc<str>, u64),
    /// Another replica expired `key` at this time (µs): keep it only as a stale fallback.
    Expire(Arc<str>, u64),
    /// Anything may have been missed: drop all of L1 and forget the tag times.
    ClearAll,
    /// Another replica invalidated a tag at this time (µs).
    Tag(Arc<str>, u64),
    /// Another replica cleared the cache at this time (µs).
    Clear(u64),
    /// Another replica removed every key starting with this prefix, at this time (µs: when its
    /// removal started; an earlier version of the crate sends the time it announced the
    /// removal, just after it).
    Prefix(Arc<str>, u64),
}

pub(super) fn encode(id: u128, action: Action, us: u64, key: &str) -> Bytes {
    let mut out = Vec::with_capacity(HEADER + key.len());
    out.push(WIRE_VERSION);
    out.push(action as u8);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&us.to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    Bytes::from(out)
}

/// A message as read: (source, action, timestamp in µs since the epoch, key).
type Decoded<'a> = (u128, Action, u64, &'a str);

/// A message, or `None` for anything not of our wire version.
fn decode(bytes: &[u8]) -> Option<Decoded<'_>> {
    if bytes.len() < HEADER || bytes[0] != WIRE_VERSION {
        return None;
    }
    let action = Action::from_byte(bytes[1])?;
    let id = u128::from_le_bytes(bytes[2..18].try_into().ok()?);
    let ms = u64::from_le_bytes(bytes[18..26].try_into().ok()?);
    let key = std::str::from_utf8(&bytes[HEADER..]).ok()?;
    Some((id, action, ms, key))
}

/// A random 128-bit instance id (not secret: it only tells replicas apart).
pub(crate) fn instance_id() -> u128 {
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
    /// Messages ignored: not of our wire version, garbled, or lost because this replica fell
    /// behind (which drops its L1, see [`resyncs`](Self::resyncs)).
    pub dropped: u64,
    /// Times this replica's outbox reached [`MAX_OUTBOX`] changes it could not publish (Redis
    /// unreachable for long): the queued changes were replaced by one message that makes every
    /// other replica drop its whole L1 once it can be published.
    pub outbox_overflows: u64,
    /// Fleet leases this replica won (it loaded the key for the fleet).
    pub leases_won: u64,
    /// Loads this replica did not run because another replica held the lease and its value
    /// arrived.
    pub lease_waits: u64,
    /// Waits for another replica's value that ended without it: this replica loaded after all
    /// (the holder's load failed or outlasted the wait).
    pub lease_timeouts: u64,
    /// Waits that ended because the holder vanished (its lease expired unreleased), after which
    /// this replica took the lease over.
    pub lease_holders_lost: u64,
    /// Cold-key loads this replica ran without the lease, because it could not hear its own
    /// heartbeat (it would not be woken by the holder) or Redis did not answer (the L2 read
    /// before the lease, or the lease request): the fleet stays available, at the cost of a
    /// possible second load of the key.
    pub lease_bypassed: u64,
    /// Times this replica rebuilt its backplane connections because it had not heard its own
    /// heartbeat for the cache's unresponsive time
    /// ([`RedisCacheBuilder::unresponsive_after`](crate::RedisCacheBuilder::unresponsive_after)):
    /// a server that hangs without closing its connections, such as a frozen master the
    /// sentinels have since replaced.
    pub connections_rebuilt: u64,
}

/// Cross-replica L1 invalidation over Redis pub/sub. Made by
/// [`RedisCache::backplane`](crate::RedisCache::backplane); given to a `Layered` with
/// [`LayeredBuilder::backplane`](crate::LayeredBuilder::backplane). Cloning is cheap.
#[derive(Clone)]
pub struct Backplane {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) id: u128,
    pub(crate) namespace: String,
    pub(super) channel: String,
    /// Whether the channel is a shard channel (`SPUBLISH`/`SSUBSCRIBE`): on a cluster, unless
    /// the server does not know the commands (before Redis 7). See [`publish`].
    pub(super) sharded: Arc<AtomicBool>,
    pub(crate) publisher: Client,
    subscriber: SubscriberClient,
    /// Flights waiting for another replica's value, by key: bumped when a `set`, `delete` or
    /// `released` message for the key arrives.
    pub(crate) waiters: Mutex<HashMap<Arc<str>, Waiters>>,
    pub(crate) counters: Counters,
    /// Latest action per key, waiting to be published. A lease's `released` has a slot of its
    /// own, so that it never replaces a change (which must reach every replica).
    pub(super) outbox: Mutex<Outbox>,
    /// How far the outbox is published (see [`super::outbox`]).
    pub(super) progress: watch::Sender<Progress>,
    pub(super) wake: Arc<Notify>,
    events: broadcast::Sender<Event>,
    /// When this replica last heard its own heartbeat (ms since the epoch).
    last_heard_ms: AtomicU64,
    trusted: AtomicBool,
    pub(super) published: AtomicU64,
    pub(super) publish_failures: AtomicU64,
    received: AtomicU64,
    resyncs: AtomicU64,
    dropped: AtomicU64,
    outbox_overflows: AtomicU64,
    /// Times the connections were rebuilt because this replica was deaf (see [`heartbeat`]).
    rebuilds: AtomicU64,
    /// Replaces the publisher's connection when its commands only time out (a hung server; on
    /// a cluster, a hung master the cluster has replaced): see [`crate::redis::watchdog`].
    watchdog: Arc<crate::redis::watchdog::Watchdog>,
    /// Keeps the clients' connection attempts going while the backplane lives.
    pub(super) connecting: crate::redis::connect::Alive,
    /// Dropped with the backplane: tells the tasks that wait on the subscriber's streams to end
    /// (the streams themselves stay open when the client never connected).
    _stop: watch::Sender<()>,
    /// fred's task that resubscribes after a reconnect; ended with the backplane.
    resubscriber: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The flights of this process waiting for messages about one key: a version bumped by each
/// message, and how many watch it.
pub(crate) type Waiters = (watch::Sender<u64>, usize);

/// Lease counters, and the facade handles of every backplane series.
pub(crate) struct Counters {
    pub(crate) leases_won: AtomicU64,
    pub(crate) lease_waits: AtomicU64,
    pub(crate) lease_timeouts: AtomicU64,
    pub(crate) lease_holders_lost: AtomicU64,
    pub(crate) lease_bypassed: AtomicU64,
    pub(super) published: ::metrics::Counter,
    pub(super) publish_failed: ::metrics::Counter,
    received: ::metrics::Counter,
    dropped: ::metrics::Counter,
    overflowed: ::metrics::Counter,
    subscribed: ::metrics::Gauge,
    pub(crate) lease: [::metrics::Counter; 5],
}

impl Counters {
    fn new(namespace: &str) -> Self {
        use crate::metrics::{BACKPLANE_MESSAGES_TOTAL, BACKPLANE_SUBSCRIBED, LEASES_TOTAL};
        crate::metrics::describe_fleet();
        let ns = namespace.to_owned();
        let message = |event: &'static str| ::metrics::counter!(BACKPLANE_MESSAGES_TOTAL, "namespace" => ns.clone(), "event" => event);
        let lease = |result: &'static str| ::metrics::counter!(LEASES_TOTAL, "namespace" => ns.clone(), "result" => result);
        Counters {
            leases_won: AtomicU64::new(0),
            lease_waits: AtomicU64::new(0),
            lease_timeouts: AtomicU64::new(0),
            lease_holders_lost: AtomicU64::new(0),
            lease_bypassed: AtomicU64::new(0),
            published: message("published"),
            publish_failed: message("publish_failed"),
            received: message("received"),
            dropped: message("dropped"),
            overflowed: message("overflowed"),
            subscribed: ::metrics::gauge!(BACKPLANE_SUBSCRIBED, "namespace" => ns.clone()),
            lease: [
                lease("won"),
                lease("waited"),
                lease("timed_out"),
                lease("holder_lost"),
                lease("bypassed"),
            ],
        }
    }
}

impl Shared {
    /// `lost` messages were dropped because this replica fell behind: counted as dropped, and
    /// as one resync (the caller drops L1).
    pub(crate) fn fell_behind(&self, lost: u64) {
        self.dropped.fetch_add(lost, Ordering::Relaxed);
        self.counters.dropped.increment(lost);
        self.resyncs.fetch_add(1, Ordering::Relaxed);
    }

    /// Subscribe to the backplane's channel.
    async fn subscribe(&self) -> Result<(), fred::error::Error> {
        subscribe(&self.subscriber, &self.channel, &self.sharded).await
    }

    /// A command on the publisher failed: a timeout starts the watchdog's probe of it.
    pub(crate) fn publisher_failed(&self, error: &fred::error::Error) {
        if *error.kind() == fred::error::ErrorKind::Timeout {
            let options = fred::prelude::Options {
                timeout: Some(self.publisher.perf_config().default_command_timeout),
                ..Default::default()
            };
            self.watchdog.timed_out(0, &self.publisher, &options);
        }
    }

    fn set_trusted(&self, trusted: bool) -> bool {
        let was = self.trusted.swap(trusted, Ordering::AcqRel);
        self.counters
            .subscribed
            .set(if trusted { 1.0 } else { 0.0 });
        was
    }

    fn drop_message(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        self.counters.dropped.increment(1);
    }

    /// Wake the flights waiting for another replica's value of `key`.
    fn wake(&self, key: &str) {
        let waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((tx, _)) = waiters.get(key) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
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
        if let Some(task) = self
            .resubscriber
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (subscriber, publisher) = (self.subscriber.clone(), self.publisher.clone());
            runtime.spawn(async move {
                crate::redis::connect::quit_within(&subscriber).await;
                crate::redis::connect::quit_within(&publisher).await;
            });
        }
    }
}

impl Backplane {
    /// Start a backplane on `channel` with `publisher` and `subscriber` clients, kept connecting
    /// while `connecting` lives. A subscriber that is not connected yet subscribes once it is;
    /// until then (and until this replica hears its own heartbeat) the backplane is not trusted.
    /// Connections that leave this replica deaf for `unresponsive` are rebuilt (see
    /// [`heartbeat`]).
    pub(crate) async fn start(
        namespace: &str,
        channel: String,
        (publisher, subscriber): (Client, SubscriberClient),
        connecting: crate::redis::connect::Alive,
        unresponsive: Duration,
    ) -> Result<Backplane, fred::error::Error> {
        let (events, _) = broadcast::channel(4096);
        let (stop, stopped) = watch::channel(());
        let connected = subscriber.is_connected();
        let watchdog = Arc::new(crate::redis::watchdog::Watchdog::new(
            1,
            unresponsive,
            publisher.is_clustered(),
        ));
        let shared = Arc::new(Shared {
            id: instance_id(),
            namespace: namespace.to_owned(),
            channel,
            sharded: Arc::new(AtomicBool::new(publisher.is_clustered())),
            publisher,
            subscriber,
            waiters: Mutex::new(HashMap::new()),
            counters: Counters::new(namespace),
            outbox: Mutex::new(Outbox::default()),
            progress: watch::channel(Progress::default()).0,
            wake: Arc::new(Notify::new()),
            events,
            last_heard_ms: AtomicU64::new(now_ms()),
            trusted: AtomicBool::new(connected),
            published: AtomicU64::new(0),
            publish_failures: AtomicU64::new(0),
            received: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            outbox_overflows: AtomicU64::new(0),
            rebuilds: AtomicU64::new(0),
            watchdog,
            connecting,
            _stop: stop,
            resubscriber: Mutex::new(None),
        });
        shared
            .counters
            .subscribed
            .set(if connected { 1.0 } else { 0.0 });
        let messages = shared.subscriber.message_rx();
        let reconnects = shared.subscriber.reconnect_rx();
        // The task resubscribes after every reconnect; it ends with the backplane.
        *shared
            .resubscriber
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            Some(shared.subscriber.manage_subscriptions());
        let weak = Arc::downgrade(&shared);
        if connected {
            shared.subscribe().await?;
        } else {
            tokio::spawn(subscribe_once_connected(weak.clone()));
        }
        tokio::spawn(receive(weak.clone(), messages, stopped.clone()));
        tokio::spawn(distrust_on_reconnect(weak.clone(), reconnects, stopped));
        tokio::spawn(super::outbox::publish_loop(weak.clone()));
        tokio::spawn(heartbeat(weak, unresponsive));
        Ok(Backplane { shared })
    }

    /// The pub/sub channel: `layercache:backplane:v1:<namespace>` (with `db<N>:` before the
    /// namespace on a database `N` other than 0).
    pub fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// Whether this replica hears the channel (its own heartbeat within [`TRUST_WINDOW`]); while
    /// it does not, a `Layered` does not trust its L1. Never again once the runtime the
    /// backplane was started on has shut down (its tasks and connections went with it).
    ///
    /// The silence is measured when asked, not only by the backplane's own tasks: after the
    /// process or its runtime stalled (a CPU quota, a VM pause, `SIGSTOP`, a blocked worker),
    /// the first reads run before those tasks had a turn, and must not trust what the stall
    /// kept them from hearing.
    pub fn is_subscribed(&self) -> bool {
        self.trusted_at(now_ms())
    }

    /// [`is_subscribed`](Self::is_subscribed) at `now_ms` (a clock reading the caller has).
    #[inline]
    pub(crate) fn trusted_at(&self, now_ms: u64) -> bool {
        let s = &self.shared;
        s.trusted.load(Ordering::Acquire)
            && now_ms.saturating_sub(s.last_heard_ms.load(Ordering::Acquire)) <= TRUST_WINDOW_MS
            && !s.connecting.runtime_gone()
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
            dropped: s.dropped.load(Ordering::Relaxed),
            outbox_overflows: s.outbox_overflows.load(Ordering::Relaxed),
            leases_won: s.counters.leases_won.load(Ordering::Relaxed),
            lease_waits: s.counters.lease_waits.load(Ordering::Relaxed),
            lease_timeouts: s.counters.lease_timeouts.load(Ordering::Relaxed),
            lease_holders_lost: s.counters.lease_holders_lost.load(Ordering::Relaxed),
            lease_bypassed: s.counters.lease_bypassed.load(Ordering::Relaxed),
            connections_rebuilt: s.rebuilds.load(Ordering::Relaxed),
        }
    }

    /// Announce `action` on `key` (queued; never waits, never fails). The ticket is for
    /// [`published`](Self::published).
    pub(crate) fn announce(&self, action: Action, key: &str) -> Ticket {
        self.announce_at(action, key, now_us())
    }

    /// [`announce`](Self::announce) with the time the message carries (µs since the epoch).
    pub(crate) fn announce_at(&self, action: Action, key: &str, us: u64) -> Ticket {
        let queued = self
            .shared
            .outbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .queue(action, key, us);
        self.queued(queued)
    }

    /// [`announce`](Self::announce) for a change made through a `Layered`: queued once the
    /// outbox has room, while publishing goes through (see `Shared::queue_paced`).
    pub(crate) async fn announce_paced(&self, action: Action, key: &str) -> Ticket {
        let queued = self.shared.queue_paced(action, key).await;
        self.queued(queued)
    }

    /// Count an overflow, wake the publisher, and give the ticket of change `seq`.
    fn queued(&self, (seq, overflowed): (u64, bool)) -> Ticket {
        if overflowed {
            self.shared.outbox_overflows.fetch_add(1, Ordering::Relaxed);
            self.shared.counters.overflowed.increment(1);
        }
        self.shared.wake.notify_one();
        self.shared.ticket(seq)
    }

    /// Wait until the announcement of `ticket` is published, publishing fails (it is retried in
    /// the background), or [`ANNOUNCE_WAIT`](super::ANNOUNCE_WAIT) has passed.
    pub(crate) async fn published(&self, ticket: Ticket) {
        self.shared.published(ticket).await;
    }

    /// Wait until every announcement queued so far is published, or publishing fails.
    pub(crate) async fn flushed(&self) {
        self.shared.flushed().await;
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
    mut stopped: watch::Receiver<()>,
) {
    loop {
        let message = tokio::select! {
            message = messages.recv() => message,
            _ = stopped.changed() => return,
        };
        let Some(s) = shared.upgrade() else {
            return;
        };
        match message {
            Ok(message) => {
                let Some((source, action, ms, key)) = message.value.as_bytes().and_then(decode)
                else {
                    s.drop_message();
                    continue;
                };
                if matches!(action, Action::Set | Action::Delete | Action::Released) {
                    // Flights of this process wait too (another cache on this backplane).
                    s.wake(key);
                }
                if source == s.id {
                    if action == Action::Heartbeat {
                        s.last_heard_ms.store(now_ms(), Ordering::Release);
                        if !s.set_trusted(true) {
                            // Messages may have been missed while we could not hear: start over.
                            s.resyncs.fetch_add(1, Ordering::Relaxed);
                            let _ = s.events.send(Event::ClearAll);
                        }
                    }
                    continue;
                }
                let event = match action {
                    Action::Heartbeat | Action::Released => continue,
                    Action::Resync => {
                        s.resyncs.fetch_add(1, Ordering::Relaxed);
                        Event::ClearAll
                    }
                    Action::Set | Action::Delete => Event::Evict(Arc::from(key), ms),
                    Action::Expire => Event::Expire(Arc::from(key), ms),
                    Action::Tag => Event::Tag(Arc::from(key), ms),
                    Action::Prefix => Event::Prefix(Arc::from(key), ms),
                    Action::Clear => Event::Clear(ms),
                };
                s.received.fetch_add(1, Ordering::Relaxed);
                s.counters.received.increment(1);
                let _ = s.events.send(event);
            }
            Err(broadcast::error::RecvError::Lagged(lost)) => {
                // Messages were dropped on our side: anything may have been missed.
                s.fell_behind(lost);
                let _ = s.events.send(Event::ClearAll);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Whether `error` is the server's refusal of a command it does not know (`SPUBLISH` and
/// `SSUBSCRIBE` before Redis 7).
fn unknown_command(error: &fred::error::Error) -> bool {
    error
        .details()
        .to_ascii_lowercase()
        .contains("unknown command")
}

/// Stop using shard channels on a server that does not know them, saying so once.
#[cfg_attr(not(feature = "tracing"), allow(unused_variables))]
fn unshard(sharded: &AtomicBool, channel: &str) {
    if sharded.swap(false, Ordering::AcqRel) {
        crate::log_warn!(
            channel = channel,
            "layercache: this Redis Cluster has no sharded pub/sub (Redis 7+): the backplane uses classic pub/sub, which a link between two nodes can lose messages on"
        );
    }
}

/// Publish `message` on `channel`: on a cluster, as a shard channel (`SPUBLISH`), so that every
/// replica publishes to and hears from the one master that owns the channel's slot.
///
/// Classic pub/sub on a cluster sends a message to the node the publisher happened to use,
/// which forwards it over the cluster bus to the others; a bus link being re-established (a
/// node slow for half the node timeout, a restart) loses what crosses it then — silently, while
/// each replica keeps hearing its own heartbeat on its own node, so a lost invalidation would
/// be served until the entry expired. On a shard channel the path a replica's own heartbeat
/// proves is the path every other replica's messages take.
pub(crate) async fn publish(
    publisher: &Client,
    channel: &str,
    sharded: &AtomicBool,
    message: Bytes,
) -> Result<i64, fred::error::Error> {
    if sharded.load(Ordering::Acquire) {
        match publisher.spublish(channel, message.clone()).await {
            Err(e) if unknown_command(&e) => unshard(sharded, channel),
            sent => return sent,
        }
    }
    publisher.publish(channel, message).await
}

/// Subscribe `subscriber` to `channel`: a shard channel on a cluster (see [`publish`]).
async fn subscribe(
    subscriber: &SubscriberClient,
    channel: &str,
    sharded: &AtomicBool,
) -> Result<(), fred::error::Error> {
    if sharded.load(Ordering::Acquire) {
        match subscriber.ssubscribe(channel).await {
            Err(e) if unknown_command(&e) => unshard(sharded, channel),
            subscribed => return subscribed,
        }
    }
    subscriber.subscribe(channel).await
}

/// Subscribe as soon as the subscriber is connected (a backplane started while Redis could not
/// be reached); tried again every [`HEARTBEAT`] until it succeeds or the backplane is dropped.
async fn subscribe_once_connected(shared: std::sync::Weak<Shared>) {
    loop {
        let (subscriber, channel, sharded) = {
            let Some(s) = shared.upgrade() else {
                return;
            };
            (
                s.subscriber.clone(),
                s.channel.clone(),
                Arc::clone(&s.sharded),
            )
        };
        if subscriber.is_connected() && subscribe(&subscriber, &channel, &sharded).await.is_ok() {
            return;
        }
        drop(subscriber);
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// After the subscriber reconnects, messages may have been lost however short the gap: stop
/// trusting L1 until our own heartbeat comes through again (which then drops L1).
async fn distrust_on_reconnect(
    shared: std::sync::Weak<Shared>,
    mut reconnects: broadcast::Receiver<fred::types::config::Server>,
    mut stopped: watch::Receiver<()>,
) {
    loop {
        let event = tokio::select! {
            event = reconnects.recv() => event,
            _ = stopped.changed() => return,
        };
        let Some(s) = shared.upgrade() else {
            return;
        };
        match event {
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                s.set_trusted(false);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Publish a heartbeat every [`HEARTBEAT`]; lose trust after [`TRUST_WINDOW`] of silence.
///
/// A replica deaf for `unresponsive` although Redis took its heartbeat rebuilds its subscriber
/// (at most once per `unresponsive`): neither fred nor the kernel notices a connection to a
/// server that hangs without closing it (a frozen VM, a network partition, SIGSTOP), and a
/// subscriber sends nothing that could time out. Behind a sentinel, or on a cluster, such a
/// connection would outlive the failover for good — the fleet's L1s untrusted, every read going
/// to Redis. The rebuilt subscriber re-asks the sentinels (or the cluster) and subscribes again.
/// A heartbeat that timed out is the publisher's hang: the watchdog probes and replaces it
/// ([`Shared::publisher_failed`]), and the subscriber is rebuilt once it still hears nothing.
/// Other failures (refused, disconnected) are left to the clients, which already know and are
/// reconnecting.
async fn heartbeat(shared: std::sync::Weak<Shared>, unresponsive: Duration) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rebuilt_at: Option<tokio::time::Instant> = None;
    let mut rebuilding: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tick.tick().await;
        let (publisher, channel, sharded, id) = {
            let Some(s) = shared.upgrade() else {
                return;
            };
            (
                s.publisher.clone(),
                s.channel.clone(),
                Arc::clone(&s.sharded),
                s.id,
            )
        };
        let message = encode(id, Action::Heartbeat, now_us(), "");
        // Bounded by the client's command timeout; a failure just means no heartbeat.
        let sent = publish(&publisher, &channel, &sharded, message).await;
        let Some(s) = shared.upgrade() else {
            return;
        };
        if let Err(e) = &sent {
            s.publisher_failed(e);
        }
        let silent_for = now_ms().saturating_sub(s.last_heard_ms.load(Ordering::Acquire));
        if silent_for > TRUST_WINDOW_MS {
            s.set_trusted(false);
        }
        // Taken but unheard (the subscriber hangs), or timed out (the server hangs); other
        // failures are the clients' own to handle.
        let hang_suspected = match &sent {
            Ok(_) => true,
            Err(e) => *e.kind() == fred::error::ErrorKind::Timeout,
        };
        // A rebuild still reconnecting (a cluster's routing refresh may wait for the hung node)
        // is never cut short by the next one; the next waits `unresponsive` after it ended.
        if rebuilding.as_ref().is_some_and(|task| task.is_finished()) {
            rebuilding = None;
            rebuilt_at = Some(tokio::time::Instant::now());
        }
        let deaf = Duration::from_millis(silent_for) >= unresponsive
            && rebuilding.is_none()
            && rebuilt_at.is_none_or(|at| at.elapsed() >= unresponsive);
        if deaf && hang_suspected {
            s.rebuilds.fetch_add(1, Ordering::Relaxed);
            let subscriber = s.subscriber.clone();
            let (channel, sharded) = (channel.clone(), Arc::clone(&s.sharded));
            // Not awaited here: the heartbeat goes on while the subscriber reconnects. Capped,
            // so that a reconnection fred never ends cannot stop the rebuilds for good.
            rebuilding = Some(tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(unresponsive * 4, subscriber.force_reconnection()).await;
                // Subscribed again by us too: on a cluster whose nodes did not change, fred keeps
                // its connections (no reconnection, so no resubscription), and a shard channel
                // whose slot moved to another master (a resharding; the old owner unsubscribed
                // us) is only heard again once subscribed at the new owner.
                let _ =
                    tokio::time::timeout(unresponsive, subscribe(&subscriber, &channel, &sharded))
                        .await;
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_foreign_bytes_are_ignored() {
        let bytes = encode(42, Action::Delete, 7, "chat:v1:key");
        assert_eq!(decode(&bytes), Some((42, Action::Delete, 7, "chat:v1:key")));
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
