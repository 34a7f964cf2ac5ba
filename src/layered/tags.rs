//! Group invalidations on a [`Layered`] cache: tags and clear (see [`crate::tags`]), and
//! prefixes.

use std::sync::Arc;

use super::{Inner, Layered};
use crate::entry::{now_us, Entry};
use crate::error::{Error, Result};
use crate::tags::{Check, Tags, CLEAR};

/// How much longer than the tag retention a tag's invalidation time is kept in Redis (at most;
/// as long as the retention when that is shorter): replicas' clocks may differ.
#[cfg(feature = "redis")]
const CLOCK_MARGIN_MS: u64 = 3_600_000;

impl<V> Inner<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// Whether a fresh L1 entry may be served on the hit path as it is: untagged, or every tag
    /// known and not invalidated since it was created. Two atomic loads for a tagged entry.
    #[inline]
    pub(crate) fn tags_allow(&self, entry: &Entry<V>) -> bool {
        self.tags_valid(entry.tag_set(), entry.created_us())
    }

    /// [`tags_allow`](Self::tags_allow) for an entry's tags and creation time.
    #[inline]
    pub(crate) fn tags_valid(&self, tags: &Tags, created_us: u64) -> bool {
        tags.is_empty() || self.tag_times.check(tags, created_us, false) == Check::Valid
    }

    /// [`checked`](Self::checked) without reading unknown times (they make the entry stale).
    pub(crate) fn checked_now(&self, entry: Entry<V>) -> Entry<V> {
        match self
            .tag_times
            .check(entry.tag_set(), entry.created_us(), false)
        {
            Check::Valid => entry,
            // Expired: no longer fresh, still a fail-safe fallback.
            Check::Invalidated(_) | Check::Unknown => entry.cap_fresh_ms(0),
        }
    }

    /// `entry` as the tag times see it: expired (fresh no longer, still a fail-safe fallback) if
    /// one of its tags — or, with `with_clear`, the whole cache — was invalidated after it was
    /// created. Tag times this replica does not know are read from Redis first; if they cannot
    /// be, the entry is not served as fresh.
    pub(crate) async fn checked(&self, entry: Entry<V>, with_clear: bool) -> Entry<V> {
        let tags = entry.tag_set();
        if tags.is_empty() && !with_clear {
            return entry;
        }
        let mut check = self.tag_times.check(tags, entry.created_us(), with_clear);
        if check == Check::Unknown {
            self.learn_tags(&entry, with_clear).await;
            check = self
                .tag_times
                .check(entry.tag_set(), entry.created_us(), with_clear);
        }
        match check {
            Check::Valid => entry,
            // Expired: no longer fresh, still a fail-safe fallback.
            Check::Invalidated(_) | Check::Unknown => entry.cap_fresh_ms(0),
        }
    }

    /// How the tag times and the clear time judge `entry`, those this replica does not know
    /// read from Redis first; [`Check::Unknown`] when they could not be.
    #[cfg(feature = "redis")]
    pub(crate) async fn check_with_clear(&self, entry: &Entry<V>) -> Check {
        let check = self
            .tag_times
            .check(entry.tag_set(), entry.created_us(), true);
        if check != Check::Unknown {
            return check;
        }
        self.learn_tags(entry, true).await;
        self.tag_times
            .check(entry.tag_set(), entry.created_us(), true)
    }

    /// Read the unknown tag times of `entry` from Redis (through the backplane).
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    async fn learn_tags(&self, entry: &Entry<V>, with_clear: bool) {
        #[cfg(feature = "redis")]
        if let Some(backplane) = &self.backplane {
            // Before the read: a resync that forgets the times while it is on its way voids it.
            let generation = self.tag_times.generation();
            let unknown = self.tag_times.unknown(entry.tag_set(), with_clear);
            if unknown.is_empty() {
                return;
            }
            if let Ok(times) = backplane.tag_times(&unknown).await {
                self.tag_times
                    .learn(unknown.into_iter().zip(times), generation);
            }
        }
    }

    /// Record an invalidation of `tag` (or of everything, for [`CLEAR`]) at `us` (µs since the
    /// epoch): in Redis and on the backplane first when there is one, then here. When Redis
    /// cannot take it now, it is retried in the background (see `retry_tags_later`) and the
    /// error returned.
    pub(crate) async fn invalidate_tag_at(self: &Arc<Self>, tag: &str, us: u64) -> Result<()> {
        #[cfg(feature = "redis")]
        if self.backplane.is_some() {
            return match self.store_tag_time(tag, us).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    {
                        let mut pending = self
                            .pending_tags
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        let at = pending.entry(tag.to_owned()).or_insert(us);
                        *at = (*at).max(us);
                    }
                    self.retry_tags_later();
                    Err(Error::redis("invalidate_tag", e))
                }
            };
        }
        if self.l2.is_some() {
            return Err(Error::config(
                "invalidating a tag or clearing a cache with an L2 needs a backplane: the \
                 invalidation time is kept in Redis and announced to every replica through it",
            ));
        }
        self.tag_times.set(tag, us);
        crate::metrics::count_invalidation(&self.name, if tag == CLEAR { "clear" } else { "tag" });
        Ok(())
    }

    /// Store `tag`'s time `us` in Redis, announce it, and apply it here.
    #[cfg(feature = "redis")]
    async fn store_tag_time(
        &self,
        tag: &str,
        us: u64,
    ) -> std::result::Result<(), fred::error::Error> {
        let Some(backplane) = &self.backplane else {
            return Ok(());
        };
        // A tag's time outlives every entry it could invalidate (the retention), plus a
        // margin for the replicas' clock differences; the clear time is kept for good.
        let keep_ms = self
            .tag_retention_ms
            .filter(|_| tag != CLEAR)
            .map(|retention| retention.saturating_add(retention.min(CLOCK_MARGIN_MS)));
        let announced = backplane.invalidate_tag(tag, us, keep_ms).await?;
        self.tag_times.set(tag, us);
        crate::metrics::count_invalidation(&self.name, if tag == CLEAR { "clear" } else { "tag" });
        self.told(announced.into()).await;
        Ok(())
    }

    /// Make sure the invalidations in `pending_tags` are tried again every
    /// [`CATCH_UP_EVERY`](super::l2::CATCH_UP_EVERY) until Redis took each (one task per cache,
    /// holding it weakly: a dropped cache ends it). Storing a tag's time keeps the later of two,
    /// so trying again is safe however often the first write reached Redis.
    #[cfg(feature = "redis")]
    fn retry_tags_later(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.retrying_tags.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.retrying_tags.store(false, Ordering::Release);
            return;
        };
        let weak = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(super::l2::CATCH_UP_EVERY).await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let waiting: Vec<(String, u64)> = inner
                    .pending_tags
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .iter()
                    .map(|(tag, us)| (tag.clone(), *us))
                    .collect();
                for (tag, us) in waiting {
                    if inner.store_tag_time(&tag, us).await.is_err() {
                        break;
                    }
                    if tag == CLEAR {
                        // A memory L1 is not checked against the clear time on a hit: what it
                        // took in since the failed `clear` emptied it, created before, goes now.
                        if let Some(memory) = &inner.l1_memory {
                            inner.changing_all_here();
                            inner.flights.supersede_prefix("");
                            memory.retain(|_, entry| entry.created_us() > us);
                        }
                    }
                    let mut pending = inner
                        .pending_tags
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if pending.get(&tag) == Some(&us) {
                        pending.remove(&tag);
                    }
                }
                let pending = inner
                    .pending_tags
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if pending.is_empty() {
                    // Lowered under the lock: a tag queued after this sees it down and starts
                    // a new task.
                    inner.retrying_tags.store(false, Ordering::Release);
                    return;
                }
                drop(pending);
            }
        });
    }
}

impl<V> Layered<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// Expire every entry tagged `tag` (with [`LoadOptions::with_tags`](crate::LoadOptions::with_tags)
    /// or [`Entry::with_tags`]), in every layer and, with a backplane, on every replica: they
    /// stop being fresh (the next `get_or_load` loads again) and stay usable as fail-safe
    /// fallbacks until their stale deadline. O(1): one Redis script call and one backplane
    /// message, however many entries carry the tag. See [`crate::tags`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an empty or over-long tag, or for a cache with an L2 but no
    /// backplane (the invalidation could not reach L2's other readers); the Redis error when the
    /// invalidation time could not be stored now. The invalidation is not dropped then: it is
    /// tried again in the background every 250 ms until Redis takes it, and applied on every
    /// replica from then on (a write that timed out may have reached Redis already, where a
    /// replica reading tag times afresh would find it). Calling again is safe.
    ///
    /// ```
    /// use std::time::Duration;
    /// use layercache::{Layered, LoadOptions, MemoryCache};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> layercache::Result<()> {
    /// let cache = Layered::single(MemoryCache::<String>::builder().build()?).build()?;
    /// let options = LoadOptions::ttl(Duration::from_secs(3600)).with_tags(["user:42"]);
    /// cache.get_or_load("q:1", || async { Ok::<_, std::io::Error>("a".to_string()) }, options.clone()).await?;
    /// cache.invalidate_tag("user:42").await?;
    /// // Expired: loaded again.
    /// let again = cache.get_or_load("q:1", || async { Ok::<_, std::io::Error>("b".to_string()) }, options).await?;
    /// assert_eq!(again, "b");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn invalidate_tag(&self, tag: &str) -> Result<()> {
        crate::tags::validate(&[tag])?;
        let (this, tag) = (self.clone(), tag.to_owned());
        self.to_completion(async move { this.inner.invalidate_tag_at(&tag, now_us()).await })
            .await
    }

    /// Remove every key starting with `prefix` from L2 (Redis: `SCAN` + `UNLINK`), from L1 and,
    /// with a backplane, from every other replica's L1; returns how many keys L2 removed (L1's
    /// count when there is no L2). For a group of entries known in advance, tags are cheaper:
    /// see [`invalidate_tag`](Self::invalidate_tag).
    ///
    /// # Errors
    ///
    /// The L2 error, or [`Error::CircuitOpen`], when L2 could not be reached (L1s are cleared
    /// anyway); [`Error::Config`] when a layer cannot remove by prefix, or for an empty prefix
    /// over a Redis L2 without a namespace (which would delete every key of its database). When
    /// L2 refuses the request so, nothing is removed from any layer and nothing is announced.
    /// After a timeout (the removal may still reach Redis), the keys under `prefix` are dropped
    /// from this L1 again 0.5 s and 3 s later, and the other replicas resync then.
    ///
    /// A load of a key under `prefix` running on another replica, which read its source before
    /// this call and writes to Redis after the removal passed the key, is taken back from Redis
    /// by that replica when this call's message reaches it (within 10 s of its write, up to
    /// 10,000 such writes a replica; see the `fleet` module).
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<u64> {
        let (this, prefix) = (self.clone(), prefix.to_owned());
        self.to_completion(async move { this.invalidate_prefix_now(&prefix).await })
            .await
    }

    async fn invalidate_prefix_now(&self, prefix: &str) -> Result<u64> {
        let inner = &self.inner;
        // What was loaded before this time is removed: the other replicas take back the loads
        // they wrote to L2 since (see `layered::recent`).
        #[cfg(feature = "redis")]
        let started_us = crate::entry::now_us();
        // Loads of the keys that run now must not store what they read before the change
        // (`""` may yet be refused below: then nothing changes).
        if !prefix.is_empty() {
            inner.flights.supersede_prefix(prefix);
        }
        let l2 = inner
            .via_l2(|l2| async move { l2.invalidate_prefix(prefix).await })
            .await;
        if let Some(Err(refused @ Error::Config { .. })) = l2 {
            // L2 refused the request itself (an empty prefix over a whole database): nothing
            // was removed anywhere, and nothing is announced.
            return Err(refused);
        }
        if let Some(Err(e)) = &l2 {
            // Keys removed late from Redis: see `unsettled`.
            inner.unsettled_prefix_after(e, prefix);
        }
        inner.forget_pending_prefix(prefix);
        inner.changing_all_here();
        if prefix.is_empty() {
            inner.flights.supersede_prefix(prefix);
        }
        let l1 = inner.l1.invalidate_prefix(prefix).await.inspect_err(|_| {
            inner
                .layer_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        crate::metrics::count_invalidation(&inner.name, "prefix");
        #[cfg(feature = "redis")]
        if let Some(backplane) = &inner.backplane {
            let announced =
                backplane.announce_at(crate::fleet::backplane::Action::Prefix, prefix, started_us);
            inner.told(announced.into()).await;
        }
        match (l2, &inner.l2) {
            (Some(result), _) => result,
            (None, None) => l1,
            (None, Some(l2)) => Err(Error::CircuitOpen {
                layer: l2.name().to_owned(),
            }),
        }
    }

    /// Expire every entry of the cache, in every layer and, with a backplane, on every replica,
    /// in O(1) Redis writes: L1 is emptied (here and on the other replicas), and L2 entries
    /// created before now are no longer fresh (still fail-safe fallbacks until their stale
    /// deadline). The clear time, like tag times, belongs to the backplane's namespace: caches
    /// that share one (two value types under one namespace) are cleared together, so give each
    /// cache a namespace of its own.
    ///
    /// # Errors
    ///
    /// As [`invalidate_tag`](Self::invalidate_tag). When the error is Redis's, this replica's
    /// L1 is emptied all the same, and the clear time is stored and announced by the retry
    /// (whatever this L1 took in meanwhile, created before the clear, goes then).
    pub async fn clear(&self) -> Result<()> {
        let this = self.clone();
        self.to_completion(async move {
            let cleared = this.inner.invalidate_tag_at(CLEAR, now_us()).await;
            // Here at once, even when Redis could not take the clear time now (it is retried:
            // see `invalidate_tag`); a memory L1 is not checked against that time on a hit.
            if let Some(memory) = &this.inner.l1_memory {
                if !matches!(cleared, Err(Error::Config { .. })) {
                    this.inner.changing_all_here();
                    // Loads running now are not stored over the clear (see `apply_events`).
                    this.inner.flights.supersede_prefix("");
                    memory.invalidate_all();
                }
            }
            cleared
        })
        .await
    }
}
