//! [`Answer`]: a value from `get_or_load` with where it came from and its entry's lifetimes.

use std::time::{Duration, SystemTime};

use crate::entry::Entry;

/// How a `get_or_load` call was answered.
///
/// ```
/// use layercache::Source;
///
/// fn x_cache_header(source: Source) -> &'static str {
///     source.as_header_value() // "hit", "stale" or "miss"
/// }
/// assert_eq!(x_cache_header(Source::L2Hit), "hit");
/// assert_eq!(x_cache_header(Source::Joined), "hit");
/// assert_eq!(x_cache_header(Source::FailSafe), "stale");
/// assert_eq!(x_cache_header(Source::Loaded), "miss");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// A fresh value from L1 (memory).
    L1Hit,
    /// A fresh value from L2 (Redis), copied into L1 on the way.
    L2Hit,
    /// This caller's load produced the value.
    Loaded,
    /// Another caller's load produced the value; this caller waited for it instead of loading.
    Joined,
    /// A stale value, because the load failed or passed the hard timeout (fail-safe).
    FailSafe,
    /// A stale value, because the load passed the soft timeout; it goes on in the background.
    SoftTimeout,
    /// This caller's load produced a value the cache's `negative` rule matched (stored with the
    /// negative lifetime).
    Negative,
}

impl Source {
    /// Whether the value came from the cache fresh, without a load of this caller's: an L1 or L2
    /// hit, or a joined load.
    pub fn is_hit(self) -> bool {
        matches!(self, Source::L1Hit | Source::L2Hit | Source::Joined)
    }

    /// Whether the value is stale (fail-safe or soft timeout).
    pub fn is_stale(self) -> bool {
        matches!(self, Source::FailSafe | Source::SoftTimeout)
    }

    /// Whether this caller ran the loader.
    pub fn is_load(self) -> bool {
        matches!(self, Source::Loaded | Source::Negative)
    }

    /// `"hit"`, `"stale"` or `"miss"`: for an `x-cache` response header.
    pub fn as_header_value(self) -> &'static str {
        if self.is_hit() {
            "hit"
        } else if self.is_stale() {
            "stale"
        } else {
            "miss"
        }
    }

    /// A short lowercase name: `l1_hit`, `l2_hit`, `loaded`, `joined`, `fail_safe`,
    /// `soft_timeout`, `negative`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::L1Hit => "l1_hit",
            Source::L2Hit => "l2_hit",
            Source::Loaded => "loaded",
            Source::Joined => "joined",
            Source::FailSafe => "fail_safe",
            Source::SoftTimeout => "soft_timeout",
            Source::Negative => "negative",
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which layer a stale value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    L1,
    L2,
}

/// A value answered by `get_or_load_answer`, with its [`Source`] and its entry's lifetimes.
///
/// ```
/// use std::time::Duration;
/// use layercache::{Layered, LoadOptions, MemoryCache, Source};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> layercache::Result<()> {
/// let cache = Layered::single(MemoryCache::<String>::builder().build()?).build()?;
/// let load = || async { Ok::<_, std::io::Error>("42".to_string()) };
/// let first = cache.get_or_load_answer("q", load, LoadOptions::ttl(Duration::from_secs(60))).await?;
/// assert_eq!(first.source, Source::Loaded);
/// let again = cache.get_or_load_answer("q", load, LoadOptions::default()).await?;
/// assert_eq!(again.source, Source::L1Hit);
/// assert_eq!(again.value, "42");
/// assert!(again.time_to_fresh_end() <= Duration::from_secs(60));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Answer<V> {
    /// The value.
    pub value: V,
    /// How the call was answered.
    pub source: Source,
    entry: Entry<()>,
}

impl<V> Answer<V> {
    pub(crate) fn new(entry: Entry<V>, source: Source) -> Self {
        let (value, entry) = entry.split();
        Answer {
            value,
            source,
            entry,
        }
    }

    /// The value, by value.
    pub fn into_value(self) -> V {
        self.value
    }

    /// When the value was created: when its load started, here or on the replica that wrote it
    /// to L2 (that replica's clock; see [`Entry::created_at`]).
    pub fn created_at(&self) -> SystemTime {
        self.entry.created_at()
    }

    /// How long ago the value was created ([`created_at`](Self::created_at); zero if that is in
    /// the future by this clock).
    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.entry.created_at())
            .unwrap_or_default()
    }

    /// When the entry stops being fresh.
    pub fn fresh_until(&self) -> SystemTime {
        self.entry.fresh_until()
    }

    /// When the entry stops being usable even as a stale fallback.
    pub fn stale_until(&self) -> SystemTime {
        self.entry.stale_until()
    }

    /// Time left until the entry stops being fresh (zero for a stale answer).
    pub fn time_to_fresh_end(&self) -> Duration {
        self.entry.time_to_fresh_end()
    }

    /// How long the value took to load, if known (carried through Redis, too).
    pub fn load_duration(&self) -> Option<Duration> {
        self.entry.load_duration()
    }
}
