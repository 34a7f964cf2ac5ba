//! # layercache
//!
//! Multi-layer caching for expensive async calls — LLM requests above all, slow queries too —
//! with a stampede-proof [`get_or_load`](MemoryCache::get_or_load) and metrics built in.
//!
//! ```
//! use std::time::Duration;
//! use layercache::{KeyBuilder, LoadOptions, MemoryCache};
//!
//! #[derive(Clone, Debug)]
//! struct ChatReply { text: String }
//!
//! async fn call_llm(prompt: String) -> Result<ChatReply, std::io::Error> {
//!     Ok(ChatReply { text: format!("reply to {prompt}") }) // the slow, costly call
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> layercache::Result<()> {
//! let cache = MemoryCache::builder()
//!     .name("chat")
//!     .max_entries(10_000)
//!     .build()?;
//!
//! let prompt = "What is a cache?".to_string();
//! let key = KeyBuilder::request("chat").version(1).part(&prompt).build();
//! let reply = cache
//!     .get_or_load(&key, move || call_llm(prompt), LoadOptions::ttl(Duration::from_secs(3600)))
//!     .await?;
//! assert_eq!(reply.text, "reply to What is a cache?");
//! # Ok(())
//! # }
//! ```
//!
//! ## Map of the crate
//!
//! | module | holds |
//! |---|---|
//! | [`cache`] | the object-safe [`Cache`] trait every layer implements, [`CacheExt`] |
//! | [`entry`] | [`Entry`]: a value plus its fresh and stale deadlines |
//! | [`memory`] | [`MemoryCache`], the in-process layer over moka (or quick_cache) |
//! | [`layered`] | [`Layered`]: L1 alone or L1 + L2, with the resilient `get_or_load` and an L2 circuit breaker |
//! | [`load`] | the one `get_or_load` engine: single-flight, detached loads, [`LoadOptions`], [`Answer`] / [`Source`], [`GetOrLoad`], [`LoadingCache`] |
//! | [`codec`] | [`Codec`]: serde format + zstd + a checked frame, for byte layers |
//! | [`fleet`] | [`Backplane`](fleet::Backplane): cross-replica L1 invalidation over Redis pub/sub, one load per cold key across the fleet (lease), tags and clear for every replica (feature `redis`) |
//! | [`tags`] | tag entries, then expire a group (or everything) at once in O(1): [`Layered::invalidate_tag`], [`Layered::clear`] |
//! | `http` | `HttpCacheLayer`: HTTP response caching for axum and any tower service (per-route lifetimes, `Vary`, `x-cache`, stampede protection and fail-safe; feature `tower`) |
//! | [`instrument`] | [`Timer`](instrument::Timer) for any call (durations, outcomes, in-flight, streams); [`LatencyHistogram`](instrument::LatencyHistogram) percentiles without a recorder |
//! | [`key`] | [`KeyBuilder`]: stable, unambiguous keys; long parts hashed with BLAKE3 |
//! | [`redis`] | [`RedisCache`], the shared layer over fred (feature `redis`) |
//! | [`metrics`] | metric names, and the [`Stats`] snapshot |
//! | [`error`] | the one [`Error`] enum and [`Result`] |

#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// The docs link to items of optional features (RedisCache, fleet, the formats, the quick_cache
// engine). They are checked with every feature on (`cargo doc --all-features`, as docs.rs
// builds); a build without some features leaves those links as plain text instead of warning.
#![cfg_attr(
    not(all(
        feature = "redis",
        feature = "msgpack",
        feature = "postcard",
        feature = "json",
        feature = "zstd",
        feature = "quick-cache"
    )),
    allow(rustdoc::broken_intra_doc_links)
)]

/// A warning through `tracing` (feature `tracing`); nothing without it.
#[cfg(feature = "tracing")]
#[allow(unused_macros)]
macro_rules! log_warn {
    ($($arg:tt)*) => { ::tracing::warn!($($arg)*) };
}
#[cfg(not(feature = "tracing"))]
#[allow(unused_macros)]
macro_rules! log_warn {
    ($($arg:tt)*) => {};
}
/// An info line through `tracing` (feature `tracing`); nothing without it.
#[cfg(feature = "tracing")]
#[allow(unused_macros)]
macro_rules! log_info {
    ($($arg:tt)*) => { ::tracing::info!($($arg)*) };
}
#[cfg(not(feature = "tracing"))]
#[allow(unused_macros)]
macro_rules! log_info {
    ($($arg:tt)*) => {};
}
/// `$future` inside the span `$span` (feature `tracing`); the bare future without it. The span
/// expression is not evaluated without the feature.
#[cfg(feature = "tracing")]
macro_rules! traced {
    ($span:expr, $future:expr) => {
        ::tracing::Instrument::instrument($future, $span)
    };
}
#[cfg(not(feature = "tracing"))]
macro_rules! traced {
    ($span:expr, $future:expr) => {
        $future
    };
}
#[allow(unused_imports)]
pub(crate) use {log_info, log_warn, traced};

pub mod cache;
mod clock;
pub mod codec;
pub mod entry;
pub mod error;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod fleet;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod http;
pub mod instrument;
pub mod key;
pub mod layered;
pub mod load;
pub mod memory;
pub mod metrics;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
pub mod tags;

/// The README's examples, compiled and run as doctests (they use the default features).
#[cfg(all(doctest, feature = "redis", feature = "msgpack"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use crate::cache::{Cache, CacheExt, CacheGet};
pub use crate::codec::{Codec, ValueCodec};
pub use crate::entry::Entry;
pub use crate::error::{BoxError, DecodeErrorKind, Error, Result, SharedError};
#[cfg(feature = "redis")]
pub use crate::error::{RedisError, RedisErrorKind};
pub use crate::key::{CacheKey, KeyBuilder};
pub use crate::layered::{LayerHealth, Layered, LayeredBuilder, WarmReport};
pub use crate::load::breaker::{BreakerConfig, CircuitState};
pub use crate::load::{Answer, GetOrLoad, LoadOptions, LoadingCache, Source};
pub use crate::memory::{Engine, MemoryCache, MemoryCacheBuilder};
pub use crate::metrics::Stats;
#[cfg(feature = "redis")]
pub use crate::redis::{Reconnect, RedisCache, RedisCacheBuilder, RedisOp};
