//! Tags: drop a group of entries at once, in O(1), across the fleet.
//!
//! An entry may carry a few tags ([`LoadOptions::with_tags`](crate::LoadOptions::with_tags),
//! [`Entry::with_tags`](crate::Entry::with_tags)).
//! [`Layered::invalidate_tag`](crate::Layered::invalidate_tag) does not look for the entries
//! that carry the tag: it records the tag's *invalidation time* (in Redis with a fleet backplane,
//! and announces it to every replica). An entry created at or before the invalidation time of
//! one of its tags is expired from then on: no longer fresh, still usable as a fail-safe
//! fallback until its stale deadline. [`Layered::clear`](crate::Layered::clear) does the same for
//! every entry.
//!
//! Each replica keeps the times of the tags it has met, kept current by the backplane. An entry
//! with a tag whose time this replica does not know yet (never met, or forgotten after the
//! backplane lost messages) is not served as fresh before the time was read from Redis. A time
//! that reaches a replica for a tag it does not know — a message, or the replica's own
//! invalidation — only says the tag was invalidated *at least* then (Redis may hold a later one
//! the replica missed): entries created before it are expired at once, newer ones still wait for
//! the read.
//!
//! The check costs nothing for untagged entries; a tagged entry remembers that it was found
//! valid until any tag time changes, so its hits cost two atomic loads more.
//!
//! Retention: an entry that carries tags lives at most
//! [`tag_retention`](crate::LayeredBuilder::tag_retention) after it was created (default
//! [`DEFAULT_TAG_RETENTION`], 30 days), in every layer, and a tag's invalidation time is kept in
//! Redis that long (plus up to an hour for clock differences), after which later invalidations
//! delete it (up to 100 each): by then no entry it could invalidate is left. So `invalidate_tag`
//! with a new tag per user or document leaves no key in Redis for good. The times carry no
//! expiry of their own, so a Redis evicting keys that have one (`maxmemory-policy volatile-lru`,
//! the right policy for a cache whose entries all have lifetimes) never drops one early; under
//! an `allkeys-*` policy Redis may evict a tag's time, and entries it invalidated would count as
//! fresh again. The clear time is one key, kept for good.
//!
//! Memory: a replica of a fleet remembers at most 100,000 tag times and then reads them again
//! from Redis. A cache without a backplane (where the times have no other copy) keeps at most
//! 100,000 too: past that, it folds them into one time, the latest of them, and a tagged entry
//! created before that time counts as invalidated whatever its tags (an extra miss, never a
//! stale hit). So `invalidate_tag` with a new tag per user or document costs bounded memory.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::error::{Error, Result};

/// How long a tagged entry may live, and a tag's invalidation time is kept, unless
/// [`LayeredBuilder::tag_retention`](crate::LayeredBuilder::tag_retention) says otherwise: 30
/// days.
pub const DEFAULT_TAG_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(30 * 24 * 3600);

/// The most tags an entry may carry.
pub const MAX_TAGS: usize = 32;
/// The longest tag, in bytes.
pub const MAX_TAG_LEN: usize = 255;
/// Tag times a replica of a fleet remembers before it forgets them all (and reads them again
/// from Redis as needed). A cache without a shared store folds them into one floor time instead
/// (see [`TagTimes::set`]).
const MAX_KNOWN: usize = 100_000;

/// The clear time is kept as the time of this tag, which every entry carries implicitly (user
/// tags are never empty).
pub(crate) const CLEAR: &str = "";

/// Check user tags: 1 to [`MAX_TAG_LEN`] bytes each, at most [`MAX_TAGS`].
pub(crate) fn validate<S: AsRef<str>>(tags: &[S]) -> Result<()> {
    if tags.len() > MAX_TAGS {
        return Err(Error::config(format!(
            "an entry carries at most {MAX_TAGS} tags, not {}",
            tags.len()
        )));
    }
    for tag in tags {
        let tag = tag.as_ref();
        if tag.is_empty() || tag.len() > MAX_TAG_LEN {
            // An over-long tag is shown by its first 40 characters only.
            let shown: String = tag.chars().take(40).collect();
            let more = if shown.len() < tag.len() { "…" } else { "" };
            return Err(Error::config(format!(
                "a tag is 1 to {MAX_TAG_LEN} bytes long, not {} ({shown:?}{more})",
                tag.len()
            )));
        }
    }
    Ok(())
}

/// The tags of an entry, shared by its clones.
pub(crate) struct TagSet {
    tags: Box<[Box<str>]>,
    /// 1 + the tag epoch at which the entry was last found valid (0: never).
    checked: AtomicU64,
}

/// An entry's tags: none (the common case, free) or a shared set.
#[derive(Clone, Default)]
pub(crate) struct Tags(Option<Arc<TagSet>>);

impl Tags {
    pub(crate) fn new<I, S>(tags: I) -> Tags
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut tags: Vec<Box<str>> = tags
            .into_iter()
            .map(|t| t.into().into_boxed_str())
            .collect();
        tags.sort();
        tags.dedup();
        if tags.is_empty() {
            return Tags(None);
        }
        Tags(Some(Arc::new(TagSet {
            tags: tags.into_boxed_slice(),
            checked: AtomicU64::new(0),
        })))
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub(crate) fn as_slice(&self) -> &[Box<str>] {
        self.0.as_ref().map_or(&[], |set| &set.tags)
    }
}

impl PartialEq for Tags {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Tags {}

impl fmt::Debug for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

/// What the tag times say about an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// No tag of the entry was invalidated after it was created.
    Valid,
    /// A tag was invalidated at this time (µs since the epoch), at or after the entry was created.
    Invalidated(u64),
    /// The time of some tag is not known here yet.
    Unknown,
}

/// What a replica knows of one tag's invalidation time.
#[derive(Debug, Clone, Copy)]
struct Known {
    /// µs since the epoch (0: never invalidated).
    us: u64,
    /// Whether `us` is the tag's time (read from the shared store, kept current since by the
    /// backplane, or set by the only process that can invalidate), or only a time the tag was
    /// invalidated at or after (announced while its time here was unknown: the store may hold a
    /// later one whose message this replica missed).
    exact: bool,
}

/// The invalidation times of the tags this replica has met.
pub(crate) struct TagTimes {
    /// Bumped after every change of a known time (and when all are forgotten).
    epoch: AtomicU64,
    times: RwLock<HashMap<Box<str>, Known>>,
    /// Whether a tag not in `times` was never invalidated (no shared store: this process is the
    /// only one that can invalidate), or its time must be read first.
    local_only: bool,
    /// Without a shared store: the latest of the times folded away when `MAX_KNOWN` were kept.
    /// A tag not in `times` may have been invalidated at any time up to it.
    floor_us: AtomicU64,
    /// Bumped, under the write lock, whenever known times are dropped (`forget`, or a fleet
    /// replica's map full): a time read from Redis before that may predate an invalidation
    /// whose message was applied to, or lost with, what was dropped, so it is not recorded
    /// (see [`learn`](Self::learn)).
    forgotten: AtomicU64,
}

impl fmt::Debug for TagTimes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TagTimes")
            .field("known", &self.read().len())
            .field("local_only", &self.local_only)
            .finish()
    }
}

impl TagTimes {
    pub(crate) fn new(local_only: bool) -> Self {
        TagTimes {
            epoch: AtomicU64::new(0),
            times: RwLock::new(HashMap::new()),
            local_only,
            floor_us: AtomicU64::new(0),
            forgotten: AtomicU64::new(0),
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    /// Read before asking the shared store for times, and given back to [`learn`](Self::learn).
    pub(crate) fn generation(&self) -> u64 {
        self.forgotten.load(Ordering::Acquire)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Box<str>, Known>> {
        self.times.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Check the tags of an entry created at `created_us` (µs since the epoch; the clear time
    /// included when `with_clear`).
    #[inline]
    pub(crate) fn check(&self, tags: &Tags, created_us: u64, with_clear: bool) -> Check {
        let set = match &tags.0 {
            None if !with_clear => return Check::Valid,
            None => None,
            Some(set) => {
                let epoch = self.epoch.load(Ordering::Acquire);
                if !with_clear && set.checked.load(Ordering::Relaxed) == epoch.wrapping_add(1) {
                    return Check::Valid;
                }
                Some((set, epoch))
            }
        };
        self.check_slow(set, created_us, with_clear)
    }

    #[cold]
    fn check_slow(
        &self,
        set: Option<(&Arc<TagSet>, u64)>,
        created_us: u64,
        with_clear: bool,
    ) -> Check {
        let times = self.read();
        let mut latest = 0u64;
        // A tag whose time is not known exactly: the entry is valid only if it is read.
        let mut unsure = false;
        let clear = with_clear.then_some(CLEAR);
        let tags = set
            .iter()
            .flat_map(|(set, _)| set.tags.iter().map(|t| &**t));
        for tag in clear.into_iter().chain(tags) {
            match times.get(tag) {
                Some(known) => {
                    latest = latest.max(known.us);
                    unsure |= !known.exact;
                }
                // Folded away (or never invalidated: the floor over-approximates).
                None if self.local_only && tag != CLEAR => {
                    latest = latest.max(self.floor_us.load(Ordering::Relaxed));
                }
                None if self.local_only => {}
                None => unsure = true,
            }
        }
        drop(times);
        // Invalidated at or after a time later than the entry: invalid, whatever the rest.
        if latest != 0 && latest >= created_us {
            return Check::Invalidated(latest);
        }
        if unsure {
            return Check::Unknown;
        }
        if let (Some((set, epoch)), false) = (set, with_clear) {
            set.checked.store(epoch.wrapping_add(1), Ordering::Relaxed);
        }
        Check::Valid
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    /// The tags of `tags` (and the clear tag when `with_clear`) whose times are not known
    /// exactly.
    pub(crate) fn unknown(&self, tags: &Tags, with_clear: bool) -> Vec<Box<str>> {
        if self.local_only {
            return Vec::new();
        }
        let times = self.read();
        let clear = with_clear.then_some(CLEAR);
        clear
            .into_iter()
            .chain(tags.as_slice().iter().map(|t| &**t))
            .filter(|t| !times.get(*t).is_some_and(|known| known.exact))
            .map(Box::from)
            .collect()
    }

    /// Record that `tag` was invalidated at `us` (µs since the epoch; a later time known already
    /// wins). On a fleet replica that does not know `tag`'s time, `us` is only a lower bound:
    /// Redis may hold a later invalidation whose message this replica missed before it forgot
    /// the times (an announcement can be late: a retried invalidation carries the time it was
    /// asked at). With `MAX_KNOWN` times kept and a new tag, a fleet replica forgets them all
    /// (they are in Redis); a cache without a shared store folds them into the floor time
    /// instead (the clear time stays apart: it concerns untagged entries too).
    pub(crate) fn set(&self, tag: &str, us: u64) {
        let mut times = self.times.write().unwrap_or_else(PoisonError::into_inner);
        if times.len() >= MAX_KNOWN && !times.contains_key(tag) {
            if self.local_only {
                let latest = times
                    .iter()
                    .filter(|(t, _)| &***t != CLEAR)
                    .map(|(_, known)| known.us)
                    .max()
                    .unwrap_or(0);
                self.floor_us.fetch_max(latest, Ordering::Relaxed);
                times.retain(|t, _| &**t == CLEAR);
            } else {
                times.clear();
                self.forgotten.fetch_add(1, Ordering::Release);
            }
        }
        // Without a shared store this process makes every invalidation: its times are exact.
        let known = times.entry(Box::from(tag)).or_insert(Known {
            us: 0,
            exact: self.local_only,
        });
        known.us = known.us.max(us);
        drop(times);
        self.epoch.fetch_add(1, Ordering::Release);
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    /// Record times read from the shared store (0: never invalidated; from then on known
    /// exactly, a later time announced meanwhile kept), asked for at `generation` (see
    /// [`generation`](Self::generation)). If times were dropped since, none
    /// is recorded: the read may predate an invalidation whose message this replica missed (the
    /// reason for a `forget`) or applied to a time since dropped, and recording it would make
    /// an invalidated entry valid for good. The tags stay unknown, to be read again.
    pub(crate) fn learn(&self, found: impl IntoIterator<Item = (Box<str>, u64)>, generation: u64) {
        let mut changed = false;
        let mut times = self.times.write().unwrap_or_else(PoisonError::into_inner);
        if self.forgotten.load(Ordering::Acquire) != generation {
            return;
        }
        for (tag, ms) in found {
            if !self.local_only && times.len() >= MAX_KNOWN && !times.contains_key(&tag) {
                // Full: forget them all (they are in Redis), and this read's too (another read
                // in flight may hold times from before a message applied to what is dropped).
                times.clear();
                self.forgotten.fetch_add(1, Ordering::Release);
                changed = true;
                break;
            }
            // A lower bound announced meanwhile may be later than what was read.
            let known = times.entry(tag).or_insert(Known {
                us: 0,
                exact: false,
            });
            if ms > known.us || !known.exact {
                known.us = known.us.max(ms);
                known.exact = true;
                changed = true;
            }
        }
        drop(times);
        if changed {
            self.epoch.fetch_add(1, Ordering::Release);
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    /// Forget every time (messages may have been missed): each is read again when needed.
    pub(crate) fn forget(&self) {
        if self.local_only {
            return;
        }
        let mut times = self.times.write().unwrap_or_else(PoisonError::into_inner);
        times.clear();
        self.forgotten.fetch_add(1, Ordering::Release);
        drop(times);
        self.epoch.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_invalid_once_a_tag_is_invalidated_after_it_was_created() {
        let times = TagTimes::new(false);
        let tags = Tags::new(["user:1", "doc:9", "user:1"]);
        assert_eq!(tags.as_slice().len(), 2);
        assert_eq!(times.check(&tags, 100, false), Check::Unknown);
        times.learn(
            [(Box::from("user:1"), 0), (Box::from("doc:9"), 50)],
            times.generation(),
        );
        assert_eq!(times.check(&tags, 100, false), Check::Valid);
        assert_eq!(times.check(&tags, 100, false), Check::Valid, "cached");
        times.set("doc:9", 150);
        assert_eq!(times.check(&tags, 100, false), Check::Invalidated(150));
        assert_eq!(times.check(&tags, 200, false), Check::Valid);
        assert_eq!(times.check(&Tags::default(), 1, false), Check::Valid);
        assert_eq!(times.check(&Tags::default(), 1, true), Check::Unknown);
        times.set(CLEAR, 10);
        assert_eq!(
            times.check(&Tags::default(), 5, true),
            Check::Invalidated(10)
        );
        times.forget();
        assert_eq!(times.check(&tags, 200, false), Check::Unknown);
        let local = TagTimes::new(true);
        assert_eq!(local.check(&tags, 1, true), Check::Valid);
    }

    #[test]
    fn a_cache_without_a_shared_store_folds_its_tag_times_past_the_bound() {
        let times = TagTimes::new(true);
        times.set(CLEAR, 5);
        // With the clear time, MAX_KNOWN in all.
        let users = MAX_KNOWN as u64 - 1;
        for i in 0..users {
            times.set(&format!("user:{i}"), 1_000 + i);
        }
        let last = 1_000 + users - 1;
        let user_7 = Tags::new(["user:7"]);
        let never = Tags::new(["doc:1"]);
        assert_eq!(
            times.check(&user_7, 1_007, false),
            Check::Invalidated(1_007)
        );
        assert_eq!(times.check(&never, 10, false), Check::Valid);
        // One more tag: the others fold into one time, the latest of them.
        times.set("user:new", 5_000_000);
        assert!(times.read().len() <= 2, "bounded: {:?}", times);
        assert_eq!(times.check(&user_7, 1_007, false), Check::Invalidated(last));
        assert_eq!(times.check(&user_7, last + 1, false), Check::Valid);
        // A tag never invalidated is over-approximated (a miss, never a stale hit) …
        assert_eq!(times.check(&never, 10, false), Check::Invalidated(last));
        assert_eq!(
            times.check(&Tags::new(["user:new"]), 4_999_999, false),
            Check::Invalidated(5_000_000)
        );
        // … and untagged entries keep answering to the clear time alone.
        assert_eq!(times.check(&Tags::default(), 10, true), Check::Valid);
        assert_eq!(
            times.check(&Tags::default(), 4, true),
            Check::Invalidated(5)
        );
    }

    #[test]
    fn times_read_before_a_forget_are_not_recorded() {
        let times = TagTimes::new(false);
        let tags = Tags::new(["t2"]);
        // A read of t2's time starts (Redis says 10) …
        let asked = times.generation();
        // … meanwhile the replica learns of an invalidation at 50, then resyncs: it forgets
        // the times (messages were lost, maybe another invalidation).
        times.set("t2", 50);
        times.forget();
        // The read's answer, from before both, is not recorded: t2 stays unknown.
        times.learn([(Box::from("t2"), 10)], asked);
        assert_eq!(times.check(&tags, 20, false), Check::Unknown);
        // A read asked after the forget is.
        times.learn([(Box::from("t2"), 50)], times.generation());
        assert_eq!(times.check(&tags, 20, false), Check::Invalidated(50));
    }

    /// Seed 1266 of the fleet convergence test: a replica forgot its tag times on a resync
    /// (messages lost while it was deaf, among them another replica's invalidation of t0 at 300),
    /// then its own retried invalidation of t0, asked at 100, finally reached Redis. Recording 100
    /// as t0's time made an entry created at 200 valid again for good.
    #[test]
    fn a_time_announced_for_a_forgotten_tag_is_only_a_lower_bound() {
        let times = TagTimes::new(false);
        let tags = Tags::new(["t0"]);
        times.learn([(Box::from("t0"), 50)], times.generation());
        assert_eq!(times.check(&tags, 200, false), Check::Valid, "memo stored");
        times.forget();
        times.set("t0", 100);
        assert_eq!(times.check(&tags, 80, false), Check::Invalidated(100));
        assert_eq!(
            times.check(&tags, 200, false),
            Check::Unknown,
            "t0 may have been invalidated later: read it"
        );
        assert_eq!(times.unknown(&tags, false), vec![Box::from("t0")]);
        times.learn([(Box::from("t0"), 300)], times.generation());
        assert_eq!(times.check(&tags, 200, false), Check::Invalidated(300));
        assert_eq!(times.check(&tags, 400, false), Check::Valid);
        assert!(times.unknown(&tags, false).is_empty());
        // Once exact, an announced time is applied as it comes.
        times.set("t0", 500);
        assert_eq!(times.check(&tags, 400, false), Check::Invalidated(500));
        // A tag invalidated after the entry was created makes it invalid whatever the others.
        let two = Tags::new(["t0", "unknown"]);
        assert_eq!(times.check(&two, 450, false), Check::Invalidated(500));
        assert_eq!(times.check(&two, 600, false), Check::Unknown);
    }

    #[test]
    fn a_read_in_flight_does_not_lower_a_time_announced_meanwhile() {
        let times = TagTimes::new(false);
        let tags = Tags::new(["t1"]);
        let asked = times.generation();
        // The read reached Redis before the invalidation at 90, whose message arrives first.
        times.set("t1", 90);
        times.learn([(Box::from("t1"), 10)], asked);
        assert_eq!(times.check(&tags, 50, false), Check::Invalidated(90));
        assert_eq!(times.check(&tags, 100, false), Check::Valid);
    }

    #[test]
    fn a_full_map_drops_the_times_being_learned_too() {
        let times = TagTimes::new(false);
        let asked = times.generation();
        let many = (0..MAX_KNOWN as u64).map(|i| (Box::from(format!("t{i}")), i + 1));
        times.learn(many, asked);
        assert_eq!(times.read().len(), MAX_KNOWN);
        // A read in flight meanwhile may predate a message applied to a time now dropped.
        let in_flight = times.generation();
        times.set("t1", 500);
        times.learn(
            [(Box::from("new"), 7), (Box::from("t1"), 2)],
            times.generation(),
        );
        assert!(times.read().is_empty(), "full: forgotten");
        times.learn([(Box::from("t1"), 2)], in_flight);
        assert_eq!(
            times.check(&Tags::new(["t1"]), 100, false),
            Check::Unknown,
            "t1's older time, read before the drop, is not recorded"
        );
    }

    #[test]
    fn tags_are_validated() {
        assert!(validate(&["a"; MAX_TAGS]).is_ok());
        assert!(validate(&["a"; MAX_TAGS + 1]).is_err());
        assert!(validate(&[""]).is_err());
        assert!(validate(&["x".repeat(MAX_TAG_LEN + 1)]).is_err());
    }
}
