//! A cached value together with its lifetimes.
//!
//! Every layer stores [`Entry`] values, not bare values, so that the deadlines travel with the value:
//! an entry read from Redis and copied into memory keeps the lifetime it has *left*, and a stale
//! entry can still be served when the loader fails (fail-safe).
//!
//! Deadlines are wall-clock times with millisecond precision, because entries are shared between
//! processes (through Redis) that do not share a monotonic clock.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::tags::Tags;

pub(crate) use crate::clock::{now_ms, now_us, to_ms};

#[inline]
fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .unwrap_or(UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 100))
}

#[inline]
fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A value and its lifetimes: fresh until one deadline, still usable as a stale fallback until a
/// second, later one.
///
/// * **Fresh** (now < `fresh_until`): served as a normal hit.
/// * **Stale** (`fresh_until` ≤ now < `stale_until`): kept only so that fail-safe can return it when
///   the loader fails; a plain [`get_value`](crate::CacheExt::get_value) treats it as a miss.
/// * **Expired** (now ≥ `stale_until`): gone; layers never return it.
///
/// ```
/// use std::time::Duration;
/// use layercache::Entry;
///
/// let entry = Entry::new("reply".to_string(), Duration::from_secs(60))
///     .with_max_stale(Duration::from_secs(3600));
/// assert!(entry.is_fresh());
/// assert!(entry.time_to_stale() > Duration::from_secs(3600));
/// assert_eq!(entry.value(), "reply");
/// ```
#[derive(Clone)]
pub struct Entry<V> {
    // Crate-visible so that a memory hit can take the value alone out of an entry it judged in
    // place (`memory::store`): moving the whole entry cost the hit a store-forwarding stall.
    pub(crate) value: V,
    /// Microseconds since the Unix epoch.
    pub(crate) created_us: u64,
    pub(crate) fresh_until_ms: u64,
    pub(crate) stale_until_ms: u64,
    pub(crate) load_duration: Option<Duration>,
    pub(crate) tags: Tags,
    /// Writes of values created before this time (µs) are older than this entry, although it
    /// was created earlier: set on the expired copy an `expire` writes to L2 (the value it
    /// read, created then, standing in for the expire), so that a value read before the expire
    /// — a load on another replica that has not heard of it — is kept out. 0, or anything
    /// before `created_us`, means its creation time.
    pub(crate) supersedes_us: u64,
}

// By hand: the order an `expire`'s copy takes among writes (`supersedes_us`) is bookkeeping of
// the conditional writes, not part of what a caller can see of an entry.
impl<V: fmt::Debug> fmt::Debug for Entry<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("value", &self.value)
            .field("created_us", &self.created_us)
            .field("fresh_until_ms", &self.fresh_until_ms)
            .field("stale_until_ms", &self.stale_until_ms)
            .field("load_duration", &self.load_duration)
            .field("tags", &self.tags)
            .finish()
    }
}

impl<V: PartialEq> PartialEq for Entry<V> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
            && self.created_us == other.created_us
            && self.fresh_until_ms == other.fresh_until_ms
            && self.stale_until_ms == other.stale_until_ms
            && self.load_duration == other.load_duration
            && self.tags == other.tags
    }
}

impl<V: Eq> Eq for Entry<V> {}

impl<V> Entry<V> {
    /// An entry that is fresh for `ttl` from now, with no stale period.
    pub fn new(value: V, ttl: Duration) -> Self {
        let now = now_ms();
        let fresh = now.saturating_add(duration_ms(ttl));
        Entry {
            value,
            created_us: now_us(),
            fresh_until_ms: fresh,
            stale_until_ms: fresh,
            load_duration: None,
            tags: Tags::default(),
            supersedes_us: 0,
        }
    }

    /// An entry with explicit deadlines, as read back from a store.
    ///
    /// A `stale_until` earlier than `fresh_until` is raised to `fresh_until`.
    pub fn with_deadlines(value: V, fresh_until: SystemTime, stale_until: SystemTime) -> Self {
        Self::from_ms(value, to_ms(fresh_until), to_ms(stale_until))
    }

    pub(crate) fn from_ms(value: V, fresh_until_ms: u64, stale_until_ms: u64) -> Self {
        Entry {
            value,
            created_us: now_us(),
            fresh_until_ms,
            stale_until_ms: stale_until_ms.max(fresh_until_ms),
            load_duration: None,
            tags: Tags::default(),
            supersedes_us: 0,
        }
    }

    /// Keep the entry usable as a stale fallback for `max_stale` after it stops being fresh.
    #[must_use]
    pub fn with_max_stale(mut self, max_stale: Duration) -> Self {
        self.stale_until_ms = self.fresh_until_ms.saturating_add(duration_ms(max_stale));
        self
    }

    /// Record how long the value took to load (used to schedule early refreshes).
    #[must_use]
    pub fn with_load_duration(mut self, took: Duration) -> Self {
        self.load_duration = Some(took);
        self
    }

    /// Tag the entry, replacing its tags (duplicates are dropped, order does not matter): see
    /// [`crate::tags`]. A cache refuses to store more than [`MAX_TAGS`](crate::tags::MAX_TAGS)
    /// tags or an empty or over-long one ([`Error::Config`](crate::Error::Config)). A `Layered`
    /// cache keeps a tagged entry at most its
    /// [`tag_retention`](crate::LayeredBuilder::tag_retention) after it was created.
    ///
    /// ```
    /// use std::time::Duration;
    /// use layercache::Entry;
    ///
    /// let entry = Entry::new(1u32, Duration::from_secs(60)).with_tags(["user:7", "model:gpt-4o"]);
    /// assert_eq!(entry.tags().collect::<Vec<_>>(), ["model:gpt-4o", "user:7"]);
    /// ```
    #[must_use]
    pub fn with_tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tags = Tags::new(tags);
        self
    }

    /// The entry's tags, sorted.
    pub fn tags(&self) -> impl Iterator<Item = &str> + '_ {
        self.tags.as_slice().iter().map(|t| &**t)
    }

    pub(crate) fn tag_set(&self) -> &Tags {
        &self.tags
    }

    pub(crate) fn set_tags(&mut self, tags: Tags) {
        self.tags = tags;
    }

    /// The same entry with its creation time set (as recorded by a store: a custom
    /// [`ValueCodec`](crate::ValueCodec) that keeps it should restore it, since `clear()` and tag
    /// invalidation compare it).
    #[must_use]
    pub fn with_created_at(self, created: SystemTime) -> Self {
        self.with_created_us(crate::clock::to_us(created))
    }

    /// The same entry, created at `created_us` (µs since the epoch, as recorded in a frame).
    pub(crate) fn with_created_us(mut self, created_us: u64) -> Self {
        self.created_us = created_us;
        self
    }

    /// When the value was created, in µs since the epoch.
    #[inline]
    pub(crate) fn created_us(&self) -> u64 {
        self.created_us
    }

    /// The time (µs) the conditional writes compare: writes of values created before it are
    /// older than this entry. Its creation time, unless it stands in for a later `expire`.
    pub(crate) fn ordered_us(&self) -> u64 {
        self.created_us.max(self.supersedes_us)
    }

    /// The same entry, standing in for a change made at `at_us`: ordered at `at_us` if that is
    /// after its creation (see [`ordered_us`](Self::ordered_us)).
    pub(crate) fn superseding_from_us(mut self, at_us: u64) -> Self {
        self.supersedes_us = self.supersedes_us.max(at_us);
        self
    }

    /// The cached value.
    pub fn value(&self) -> &V {
        &self.value
    }

    /// The cached value, by value.
    pub fn into_value(self) -> V {
        self.value
    }

    /// The value and the same lifetimes around `()`.
    pub(crate) fn split(self) -> (V, Entry<()>) {
        (
            self.value,
            Entry {
                value: (),
                created_us: self.created_us,
                fresh_until_ms: self.fresh_until_ms,
                stale_until_ms: self.stale_until_ms,
                load_duration: self.load_duration,
                tags: self.tags,
                supersedes_us: self.supersedes_us,
            },
        )
    }

    /// The same lifetimes around another value.
    pub fn map<U>(self, f: impl FnOnce(V) -> U) -> Entry<U> {
        Entry {
            value: f(self.value),
            created_us: self.created_us,
            fresh_until_ms: self.fresh_until_ms,
            stale_until_ms: self.stale_until_ms,
            load_duration: self.load_duration,
            tags: self.tags,
            supersedes_us: self.supersedes_us,
        }
    }

    /// When the value was created (loaded or set), as recorded with it: for a frame read from
    /// Redis, the writer's clock. A frame written by a version of this crate without creation
    /// times says the Unix epoch (so `clear()` and tag invalidations treat it as older than
    /// themselves); a custom [`ValueCodec`](crate::ValueCodec) that does not record it says
    /// when it was read.
    pub fn created_at(&self) -> SystemTime {
        UNIX_EPOCH
            .checked_add(Duration::from_micros(self.created_us))
            .unwrap_or(UNIX_EPOCH)
    }

    /// When the entry stops being fresh.
    pub fn fresh_until(&self) -> SystemTime {
        from_ms(self.fresh_until_ms)
    }

    /// When the entry stops being usable at all, even as a stale fallback.
    pub fn stale_until(&self) -> SystemTime {
        from_ms(self.stale_until_ms)
    }

    /// How long the value took to load, if known.
    pub fn load_duration(&self) -> Option<Duration> {
        self.load_duration
    }

    /// Whether the entry is fresh now.
    pub fn is_fresh(&self) -> bool {
        self.is_fresh_at(now_ms())
    }

    /// Whether the entry can still be used, fresh or stale.
    pub fn is_usable(&self) -> bool {
        self.is_usable_at(now_ms())
    }

    /// Time left until the entry stops being fresh (zero if it already has).
    pub fn time_to_fresh_end(&self) -> Duration {
        Duration::from_millis(self.fresh_until_ms.saturating_sub(now_ms()))
    }

    /// Time left until the entry expires completely (zero if it already has).
    pub fn time_to_stale(&self) -> Duration {
        Duration::from_millis(self.stale_until_ms.saturating_sub(now_ms()))
    }

    #[inline]
    pub(crate) fn is_fresh_at(&self, now_ms: u64) -> bool {
        now_ms < self.fresh_until_ms
    }

    #[inline]
    pub(crate) fn is_usable_at(&self, now_ms: u64) -> bool {
        now_ms < self.stale_until_ms
    }

    /// [`is_fresh_at`](Self::is_fresh_at) by a lookup's clock.
    #[inline]
    pub(crate) fn is_fresh_by(&self, now: &crate::clock::Now) -> bool {
        now.before(self.fresh_until_ms)
    }

    /// [`is_usable_at`](Self::is_usable_at) by a lookup's clock.
    #[inline]
    pub(crate) fn is_usable_by(&self, now: &crate::clock::Now) -> bool {
        now.before(self.stale_until_ms)
    }

    /// The same entry, fresh until `fresh_until_ms` at the latest (the stale deadline is kept).
    pub(crate) fn cap_fresh_ms(mut self, fresh_until_ms: u64) -> Self {
        self.fresh_until_ms = self.fresh_until_ms.min(fresh_until_ms);
        self
    }

    /// The same entry, gone (fresh and stale) by `until_ms` at the latest.
    pub(crate) fn cap_life_ms(mut self, until_ms: u64) -> Self {
        self.fresh_until_ms = self.fresh_until_ms.min(until_ms);
        self.stale_until_ms = self.stale_until_ms.min(until_ms);
        self
    }

    /// The same entry, fresh until exactly `fresh_until_ms`; the stale deadline is raised to it
    /// if needed.
    pub(crate) fn refreshed_until_ms(mut self, fresh_until_ms: u64) -> Self {
        self.fresh_until_ms = fresh_until_ms;
        self.stale_until_ms = self.stale_until_ms.max(fresh_until_ms);
        self
    }

    #[inline]
    pub(crate) fn fresh_until_ms(&self) -> u64 {
        self.fresh_until_ms
    }

    #[inline]
    pub(crate) fn stale_until_ms(&self) -> u64 {
        self.stale_until_ms
    }
}
