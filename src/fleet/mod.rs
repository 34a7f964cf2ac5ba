//! Making a fleet of replicas behave as one cache (feature `redis`).
//!
//! Every replica has its own L1 (memory) in front of the shared L2 (Redis). Without help, a
//! replica keeps serving its L1 copy of a key another replica has deleted or overwritten until
//! that copy's own lifetime ends. A [`Backplane`] fixes that: each change a replica makes is
//! announced on a Redis pub/sub channel, and every other replica evicts the key from its L1.
//!
//! ```no_run
//! use layercache::{Layered, MemoryCache, RedisCache};
//!
//! # async fn demo() -> layercache::Result<()> {
//! let l2 = RedisCache::<String>::builder().url("redis://127.0.0.1:6379").namespace("chat").build().await?;
//! let backplane = l2.backplane().await?; // same server, channel per namespace
//! let cache = Layered::builder(MemoryCache::builder().build()?, l2)
//!     .name("chat")
//!     .backplane(backplane)
//!     .build()?;
//! # let _ = cache;
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees and bounds
//!
//! * **Messages carry no values**: wire version, the sender's instance id, a timestamp, the action
//!   (`set`, `delete`, `expire`, `tag`, `clear`, `prefix`, `released`, `resync`) and the key. A receiver evicts the key from its L1 (or,
//!   for `expire`, keeps it only as a stale fallback); it never re-reads L2 per message, so one
//!   write never becomes a read storm across the fleet. A replica ignores its own messages.
//! * **The channel name carries the namespace and the wire version**
//!   (`layercache:backplane:v1:<namespace>`), so two versions of the crate can run side by side
//!   during a deploy without misreading each other.
//! * **Publishing never fails the caller's operation**: changes go to an outbox that a background
//!   task publishes; a failed publish is counted and retried, the latest action per key winning.
//!   The outbox is bounded: when [`MAX_OUTBOX`] (10,000) keys wait — Redis unreachable for a
//!   long time — they are replaced by one `resync` message, on which every other replica drops
//!   its whole L1 (counted in [`BackplaneState::outbox_overflows`]). Memory stays bounded
//!   through any outage, and no invalidation is lost, only widened. A `set_many` of more keys
//!   than that, with Redis up, does not overflow it: its keys are announced 1,000 at a time,
//!   each chunk published before the next is queued.
//! * **A change returns once it is announced**: `set`, `set_many`, `delete`, `expire`,
//!   `invalidate_tag`, `clear` and `invalidate_prefix` on a `Layered` wait until their message is
//!   published (one round trip: the publisher sends what the outbox holds pipelined), at most
//!   [`ANNOUNCE_WAIT`] (1 s), and no longer than the first failed publish (Redis unreachable:
//!   the message stays queued). A process that exits right after a change — a CLI or a cron
//!   job, a replica shut down mid-deploy — has therefore told the fleet. A change also runs to
//!   its end on a task of its own when its caller stops waiting (a dropped request handler), so
//!   it is never left in Redis but unannounced. A loaded value's
//!   message is not waited for: it mainly wakes replicas waiting for the value, and those look
//!   at L2 again when their wait ends.
//! * **Lost messages are bounded**: each replica publishes a heartbeat every [`HEARTBEAT`]
//!   (250 ms) on the fleet's channel and expects to hear its own. Every replica receives every
//!   heartbeat, so a fleet of N replicas costs Redis 4·N² deliveries a second (10,000 for 50
//!   replicas, 160,000 for 200): size the Redis for it, or split a very large fleet by
//!   namespace (on a cluster, one master carries a namespace's channel, and namespaces spread
//!   over the masters by their channel's slot). (Heartbeats on a channel of each replica's own were tried: on a cluster whose
//!   subscription master hung, changes then crossed after the failover later, or not within
//!   10 s, in 3 of 8 runs against none of 3.) When it has heard nothing for [`TRUST_WINDOW`] (1 s)
//!   — the subscription hangs, Redis restarted — or its subscriber reconnected (messages may
//!   have been lost in the gap, however short), its L1 is no longer trusted: reads go to L2, and
//!   L1 only backs them up when L2 cannot answer. When its own heartbeat comes through again,
//!   everything in L1 that could have missed an invalidation is dropped. So a replica serves a
//!   value another replica invalidated at most `TRUST_WINDOW + HEARTBEAT` (1.25 s) plus the
//!   delivery delay after the invalidation, whatever happened to the subscription. The silence
//!   is measured by each read, not only by the backplane's tasks: a replica whose process or
//!   runtime stalled (a CPU quota, a VM pause, `SIGSTOP`, a blocked worker) does not answer its
//!   first reads after the stall from L1 while the messages the stall held back wait unread.
//! * **A replica can start while Redis is down**: the backplane starts unsubscribed (so L1 is not
//!   trusted), keeps connecting, subscribes once Redis answers and is trusted once it hears its
//!   own heartbeat — the replica rejoins the fleet without help.
//! * **A deaf replica rebuilds its subscriber**: when it has not heard its own heartbeat for
//!   the cache's unresponsive time
//!   ([`RedisCacheBuilder::unresponsive_after`](crate::RedisCacheBuilder::unresponsive_after),
//!   default 2 s) although Redis took the heartbeat (or the heartbeat timed out), the
//!   subscriber is forced to reconnect — never while a rebuild is still reconnecting, and at
//!   most once per that time after one — and subscribes again; the publisher (heartbeats,
//!   tag times, leases) has the connection watchdog of a `RedisCache`. A server that hangs
//!   without closing its connections (a frozen VM, a network partition) is noticed by nothing
//!   else: a subscriber sends nothing that could time out. Behind sentinels that replaced such a
//!   master, the fleet heard itself again 1.9–2.4 s after the promotion; on a cluster that failed
//!   over the master the subscriptions were on, within 2.3 s of it (counted in
//!   [`BackplaneState::connections_rebuilt`]). Without it: never while the old master stayed
//!   hung, every L1 untrusted and every read going to Redis.
//! * **A burst of changes does not cost the other replicas their L1**: a `set_many` of
//!   thousands of keys, or a loop of deletes, sends one message per key, and they arrive faster
//!   than a busy replica applies them. Its subscriber holds up to [`SUBSCRIBER_BUFFER`] (2,048)
//!   for it; only past that are messages lost, and then (as after any possible loss) the replica
//!   drops its whole L1 (counted in [`BackplaneState::dropped`] and
//!   [`resyncs`](BackplaneState::resyncs)). fred's default of 32 lost most of a 3,500-change
//!   burst and dropped every other replica's L1 each time.
//! * **On a cluster the channel is a shard channel** (`SPUBLISH`/`SSUBSCRIBE`, Redis or Valkey
//!   7+): every replica publishes to and listens on the master owning the channel's slot, so
//!   its own heartbeat proves the path the other replicas' messages take. Classic pub/sub
//!   forwards each message from the node it was published on to the others over the cluster
//!   bus, and loses what crosses a link that is being re-established (a node slow for half the
//!   node timeout, a restart): a replica subscribed on another node missed the change while it
//!   went on hearing its own heartbeat on its own node, and served the old value until it
//!   expired. A resharding that moves the channel's slot unsubscribes the replicas at the old
//!   owner: they go deaf, so their L1 is distrusted within the bound, and the rebuild of a deaf
//!   replica subscribes again at the new owner (heard again 2.2–2.4 s after the move). A cluster
//!   older than Redis 7 falls back to classic pub/sub (logged once). Behind sentinels the
//!   subscriber follows the master like any client.
//!
//! # One load per cold key: the lease
//!
//! On a key that neither L1 nor L2 holds, a replica tries for the key's lease in Redis
//! (`layercache:lease:v1:<namespace>:<key>`, `SET NX PX` with a random token). The winner reads
//! L2 once more (another replica may have just written it), loads, writes L2, announces the
//! value and releases the lease (a script deletes it only if the token is still its own); while
//! the load runs it extends the lease every third of its lifetime
//! ([`LayeredBuilder::lease_ttl`](crate::LayeredBuilder::lease_ttl), default
//! [`DEFAULT_LEASE_TTL`] = 5 s). The others **wait for the value, not the lock**: the winner's
//! backplane message (`set`, or `released` if its load failed or Redis refused its value for a
//! newer change) wakes them, and they read L2 —
//! no Redis command while they wait. If no message comes before the lease would expire, they
//! look again: a holder that died (its lease expired unextended) is replaced by the next replica
//! to win the lease. A replica loads on its own whenever the lease cannot help: Redis does not
//! answer, the replica cannot hear the backplane, it has waited [`MAX_LEASE_WAIT`], or L2 holds
//! another deployment's recent value (a rolling deploy that changed the value type: what this
//! version loads stays in each replica's L1, so waiting could serve nobody, see
//! [`OTHER_DEPLOYMENT_GRACE`](crate::redis::OTHER_DEPLOYMENT_GRACE)). Each
//! caller's own timeouts (soft, hard, fail-safe) apply to the wait as to a load. Opt a call out
//! with [`LoadOptions::with_fleet_lease`](crate::LoadOptions::with_fleet_lease).
//!
//! # Tags, clear and prefixes
//!
//! [`Layered::invalidate_tag`](crate::Layered::invalidate_tag) and
//! [`Layered::clear`](crate::Layered::clear) store one invalidation time in Redis
//! (`layercache:tag:v1:{<namespace>}:<tag>`) and announce it; every replica keeps the times it
//! has met and expires an entry created before a time of its tags (see [`crate::tags`]). After a
//! gap in the subscription the times are forgotten with L1 and read again as needed.
//! [`Layered::invalidate_prefix`](crate::Layered::invalidate_prefix) removes the keys from Redis
//! and announces the prefix: every replica drops it from its L1, and takes back from Redis the
//! values its loads wrote there lately (within 10 s, up to 10,000 of them) that were created
//! before the removal: a load that read the source before it and wrote after the removal had
//! passed the key.
//!
//! # Catch-up after an outage
//!
//! A write a replica kept in L1 while Redis was unreachable (or failed, or timed out) is copied
//! to Redis afterwards with [`Cache::set_if_newer`](crate::Cache::set_if_newer): one script
//! compares the creation time of what Redis holds with ours and writes only if ours is later,
//! and the key is announced again. It is announced again too when Redis already holds that very
//! write (same creation time): the write that failed here reached Redis after all, maybe after
//! its announcement, and a replica that re-read Redis in between holds the older value. A
//! backplane message about the key (another replica changed
//! it) drops it from the catch-up, unless the write waiting is newer than that change (the
//! message may arrive while the write is still storing itself; L1 and the writes waiting are
//! judged and changed in one step). The catch-up is tried every 250 ms while writes wait (not
//! while the circuit is open), so it does not depend on the replica calling Redis again: a
//! replica that went quiet after its write failed would otherwise hold the value alone, while
//! the replicas it announced the change to read Redis.
//!
//! A loaded value (`get_or_load`) is written to Redis the same way, only if Redis holds
//! nothing newer: a write that timed out on a slow link or a stalled server may still reach
//! Redis later, and a loaded value landing after a newer `set` must not replace it unannounced.
//! A `set` replaces what Redis holds, as its caller asked. Its limit: a `set` whose write timed
//! out may also reach Redis later, after a newer `set` of the same key from another replica,
//! and replace it there. The replicas that hold the newer value in L1 serve it until it leaves
//! their L1 ([`l1_ttl`](crate::LayeredBuilder::l1_ttl)), the others read the older one from
//! Redis: a short `l1_ttl` bounds that disagreement.
//!
//! Times are wall-clock (µs) from each replica's clock: keep the fleet's clocks in sync.
//!
//! # Not built: server-assisted client-side caching
//!
//! Redis 6's `CLIENT TRACKING` (RESP3, `BCAST` prefixes) could replace the backplane's
//! invalidation messages. It was not built: it has no equivalent for tags, `clear`, the lease's
//! wake-up or the heartbeat bound, so the backplane would still be needed beside it.

pub mod backplane;
mod lease;
mod outbox;
mod tag_store;

pub use self::backplane::{
    Backplane, BackplaneState, HEARTBEAT, MAX_OUTBOX, SUBSCRIBER_BUFFER, TRUST_WINDOW,
};
pub(crate) use self::lease::{Attempt, Held, WaitOutcome};
pub use self::lease::{DEFAULT_LEASE_TTL, MAX_LEASE_WAIT};
pub(crate) use self::outbox::Ticket;
pub use self::outbox::ANNOUNCE_WAIT;
