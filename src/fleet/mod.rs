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
//!   (`set`, `delete`, `expire`, `clear`) and the key. A receiver evicts the key from its L1 (or,
//!   for `expire`, keeps it only as a stale fallback); it never re-reads L2 per message, so one
//!   write never becomes a read storm across the fleet. A replica ignores its own messages.
//! * **The channel name carries the namespace and the wire version**
//!   (`layercache:backplane:v1:<namespace>`), so two versions of the crate can run side by side
//!   during a deploy without misreading each other.
//! * **Publishing never fails the caller's operation**: changes go to an outbox that a background
//!   task publishes; a failed publish is counted and retried, the latest action per key winning.
//! * **Lost messages are bounded**: each replica publishes a heartbeat every [`HEARTBEAT`]
//!   (250 ms) and expects to hear its own. When it has heard nothing for [`TRUST_WINDOW`] (1 s)
//!   — the subscription hangs, Redis restarted — or its subscriber reconnected (messages may
//!   have been lost in the gap, however short), its L1 is no longer trusted: reads go to L2, and
//!   L1 only backs them up when L2 cannot answer. When its own heartbeat comes through again,
//!   everything in L1 that could have missed an invalidation is dropped. So a replica serves a
//!   value another replica invalidated at most `TRUST_WINDOW + HEARTBEAT` (1.25 s) plus the
//!   delivery delay after the invalidation, whatever happened to the subscription.
//! * Pub/sub reaches every node of a cluster and works behind sentinels (the subscriber follows
//!   the master like any client).

pub mod backplane;
mod lease;
mod tag_store;

pub use self::backplane::{Backplane, BackplaneState, HEARTBEAT, TRUST_WINDOW};
pub(crate) use self::lease::{Attempt, Held, WaitOutcome};
pub use self::lease::{DEFAULT_LEASE_TTL, MAX_LEASE_WAIT};
