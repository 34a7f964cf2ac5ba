//! The one `get_or_load` engine. [`Layered`] runs it over its layers; `MemoryCache` and
//! `LoadingCache` run it over a single layer, so every `LoadOptions` setting means the same on
//! every cache.
//!
//! The hit path (a fresh value in a memory L1, no early refresh configured) is answered in place:
//! no allocation, one clock reading. Everything else — L2, loads, fail-safe — lives in one boxed
//! future that only misses pay for.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::answer::{Answer, Origin, Source};
use super::flight::{FleetLease, Joined, L2Read, LoadSpec, LoadTarget, Resolved, Waiter};
use super::{random_unit, LoadOptions, DEFAULT_FAIL_SAFE_THROTTLE};
use crate::clock::Now;
use crate::entry::{now_ms, Entry};
use crate::error::{BoxError, Error, Result};
use crate::layered::{Inner, Layered, Written};
use crate::memory::{Lookup, MemoryCache};
use crate::metrics::Counted;

/// Where a flight of a [`Layered`] reads and stores: L1 before answering, L2 after.
struct Target<V>(Arc<Inner<V>>);

#[async_trait]
impl<V> LoadTarget<V> for Target<V>
where
    V: Clone + Send + Sync + 'static,
{
    async fn recheck(&self, key: &str) -> Option<Entry<V>> {
        // Only L1: every flight writes L1 before it answers.
        self.0.read_l1(key, now_ms()).await
    }
    async fn read_l2(&self, key: &str) -> L2Read<V> {
        self.0.read_l2_state(key).await
    }
    fn epoch(&self, key: &str) -> u64 {
        self.0.epoch(key)
    }
    async fn backfill(&self, key: &str, entry: Entry<V>, epoch: u64) {
        self.0.backfill(key, entry, epoch).await;
    }
    async fn store_before_answer(&self, key: &str, entry: Entry<V>) {
        self.0
            .l1_done(self.0.l1.set(key, self.0.for_l1(entry)).await);
    }
    async fn store_after_answer(&self, key: &str, entry: Entry<V>) -> bool {
        // L2 holds another deployment's recent value (a rolling deploy that changed the value
        // type): ours stays in L1 only, neither written over it nor announced, so that two
        // versions do not take turns overwriting each other (see `redis::deploy`).
        if self.0.holds_other_deployment(key) {
            return true;
        }
        // A refusal has been counted and reported by `write_l2`; the callers have their value.
        // A load's value, not a replacement: what L2 holds (a fail-safe fallback for the other
        // replicas) stays if L2 refuses the write.
        #[cfg(feature = "redis")]
        let created_us = entry.created_us();
        let written = self.0.write_l2(key, entry, false).await;
        // Not waited for: the caller has its value, and a waiting replica that misses this
        // message looks at L2 again when its wait ends.
        if matches!(written, Written::Kept) {
            #[cfg(feature = "redis")]
            self.0.note_load_written(key, created_us);
        }
        if matches!(written, Written::Superseded) {
            // L2 holds a newer change, announced by whoever made it. Announcing a `set` here
            // would make the other replicas take this stale value for a change of theirs: drop
            // their copies of the key, and mark a load of it they started after that change as
            // superseded (not stored). Waiting replicas are only woken.
            let _ = self.0.announce_released(key);
            return false;
        }
        let _ = self.0.announce_set(key);
        true
    }
    async fn unstore(&self, key: &str, created_us: u64, in_l2: bool) {
        // Only this load's value (or an older one): a value the change itself wrote (a `set`,
        // created later) stays.
        let ours = move |e: &Entry<V>| e.created_us() <= created_us;
        match &self.0.l1_memory {
            Some(memory) => memory.remove_unless(key, |e| !ours(e)),
            None => {
                if let Ok(Some(found)) = self.0.l1.peek(key).await {
                    if ours(&found) {
                        self.0.l1_done(self.0.l1.delete(key).await);
                    }
                }
            }
        }
        // A value Redis refused never reached it: no conditional delete to send.
        if in_l2 {
            self.0.undo_l2(key, created_us).await;
        }
    }
    async fn throttle(&self, key: &str, stale: Entry<V>, until_ms: u64) {
        self.0
            .l1_done(self.0.l1.set(key, stale.refreshed_until_ms(until_ms)).await);
    }
    #[cfg(feature = "redis")]
    async fn fleet_lease(&self, key: &str, fresher_than_ms: u64) -> FleetLease<V> {
        self.0.fleet_lease(key, fresher_than_ms).await
    }
    #[cfg(not(feature = "redis"))]
    async fn fleet_lease(&self, _key: &str, _fresher_than_ms: u64) -> FleetLease<V> {
        FleetLease::Load(None)
    }
    fn lease_bypassed(&self) {
        #[cfg(feature = "redis")]
        if let Some(backplane) = &self.0.backplane {
            backplane.count_wait(crate::fleet::WaitOutcome::Bypassed);
        }
    }
}

impl<V> Inner<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// Whether a fresh hit should start a background refresh.
    fn due_for_refresh(&self, entry: &Entry<V>, options: &LoadOptions, now: u64) -> bool {
        let fresh_until = entry.fresh_until_ms();
        if let Some(fraction) = options.early_refresh.get() {
            let ttl = options.resolve_ttl(super::DEFAULT_TTL).as_millis() as f64;
            let refresh_at = fresh_until as f64 - (1.0 - fraction) * ttl;
            if now as f64 >= refresh_at {
                return true;
            }
        }
        if let (Some(beta), Some(delta)) = (options.xfetch_beta.get(), entry.load_duration()) {
            // XFetch: refresh when now − Δ·β·ln(u) ≥ expiry, u uniform in (0, 1].
            let delta_ms = delta.as_secs_f64() * 1000.0;
            if now as f64 - delta_ms * beta * random_unit().ln() >= fresh_until as f64 {
                return true;
            }
        }
        false
    }

    fn spec(
        &self,
        options: &LoadOptions,
        fresher_than_ms: u64,
        stale: Option<Entry<V>>,
        l1_backup: Option<Entry<V>>,
    ) -> LoadSpec<V> {
        let ttl = options.resolve_ttl(super::DEFAULT_TTL);
        let jitter = options
            .jitter
            .get()
            .map_or(Duration::ZERO, |j| j.mul_f64(random_unit()));
        let max_stale = options.max_stale.get();
        let admit = self.admit.clone();
        let negative = self.negative.clone();
        let fresh_for = self.fresh_for.clone();
        let tags = options.tags();
        let retention = self.tag_retention_ms;
        LoadSpec {
            make_entry: Box::new(move |value: &V, took, started_us| {
                let (entry, is_negative) = match &negative {
                    Some((is_negative, negative_ttl)) if is_negative(value) => {
                        (Entry::new(value.clone(), *negative_ttl), true)
                    }
                    _ => {
                        if admit.as_ref().is_some_and(|admit| !admit(value)) {
                            return (None, false);
                        }
                        let lifetime = ttl + jitter;
                        let lifetime = match fresh_for.as_ref().and_then(|f| f(value)) {
                            Some(own) => lifetime.min(own),
                            None => lifetime,
                        };
                        let entry = Entry::new(value.clone(), lifetime);
                        let entry = match max_stale {
                            Some(max_stale) => entry.with_max_stale(max_stale),
                            None => entry,
                        };
                        (entry, false)
                    }
                };
                // Created when the load started: a tag invalidated while it ran expires it.
                let mut entry = entry.with_load_duration(took).with_created_us(started_us);
                entry.set_tags(tags.clone());
                // Within the tag retention (a no-op for an untagged entry).
                let entry = match retention {
                    Some(retention) if !tags.is_empty() => {
                        entry.cap_life_ms((started_us / 1_000).saturating_add(retention))
                    }
                    _ => entry,
                };
                (Some(entry), is_negative)
            }),
            fresher_than_ms,
            limit: self.limit.clone(),
            stale,
            l1_backup,
            lease: options.lease(),
            fail_safe_throttle: max_stale.map(|_| {
                options
                    .fail_safe_throttle
                    .get()
                    .unwrap_or(DEFAULT_FAIL_SAFE_THROTTLE)
            }),
            #[cfg(feature = "tracing")]
            span: tracing::Span::current(),
        }
    }
}

impl<V> Layered<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// The value under `key` if it is fresh in L1 or L2; otherwise run `loader` once — however
    /// many callers ask at the same time — store its value in L1, return it, and write it to L2
    /// right after (see [`crate::load#single-flight`]: a slow Redis never delays the answer).
    ///
    /// With the options (per call, over the builder's defaults): a stale value is returned when
    /// the loader fails or times out (fail-safe), or when the soft timeout passes; a hard timeout
    /// bounds the wait; a hit past the early-refresh point starts one background refresh. See
    /// [`crate::load`] for the whole contract, and [`get_or_load_answer`](Self::get_or_load_answer)
    /// to learn how the call was answered.
    ///
    /// # Errors
    ///
    /// [`Error::Loader`] / [`Error::LoaderPanicked`] when the load fails and no stale value can be
    /// served; [`Error::Timeout`] when the hard timeout passes first; [`Error::Config`] when the
    /// options contradict each other ([`LoadOptions::validate`]); [`Error::RecursiveLoad`] when
    /// called by the loader of the same key (it would wait for itself). L2 failures are never
    /// returned: a failing L2 is a miss.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        key: &str,
        loader: F,
        options: LoadOptions,
    ) -> Result<V>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        match self.hit_value_in_place(key, &options) {
            Ok(Some(value)) => Ok(value),
            Ok(None) => Box::pin(self.resolve_traced(key, loader, options))
                .await
                .map(Answer::into_value),
            Err(e) => Err(e),
        }
    }

    /// [`get_or_load`](Self::get_or_load), answering with the value's [`Source`] (L1 hit, L2 hit,
    /// loaded, joined, fail-safe, soft timeout, negative) and its entry's lifetimes: for an
    /// `x-cache` header, counting tokens saved, or telling a stale answer from a fresh one.
    ///
    /// # Errors
    ///
    /// As [`get_or_load`](Self::get_or_load).
    pub async fn get_or_load_answer<F, Fut, E>(
        &self,
        key: &str,
        loader: F,
        options: LoadOptions,
    ) -> Result<Answer<V>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        match self.hit_in_place(key, &options) {
            Ok(Some(entry)) => Ok(Answer::new(entry, Source::L1Hit)),
            Ok(None) => Box::pin(self.resolve_traced(key, loader, options)).await,
            Err(e) => Err(e),
        }
    }

    /// A fresh memory-L1 hit that needs no refresh check, counted; `None` for everything else.
    #[inline]
    fn hit_in_place(&self, key: &str, options: &LoadOptions) -> Result<Option<Entry<V>>> {
        let Some((memory, now)) = self.in_place(options)? else {
            return Ok(None);
        };
        let now = now.ms();
        let inner = &self.inner;
        match memory.peek_at(key, now) {
            Some(entry) if entry.is_fresh_at(now) && inner.tags_allow(&entry) => {
                self.count_hit_in_place();
                Ok(Some(entry))
            }
            _ => Ok(None),
        }
    }

    /// [`hit_in_place`](Self::hit_in_place) for the value alone (no entry is copied out).
    #[inline]
    fn hit_value_in_place(&self, key: &str, options: &LoadOptions) -> Result<Option<V>> {
        let Some((memory, now)) = self.in_place(options)? else {
            return Ok(None);
        };
        let inner = &self.inner;
        match memory.peek_value_at(key, &now, |tags, created_us| {
            inner.tags_valid(tags, created_us)
        }) {
            Lookup::Fresh(value) => {
                self.count_hit_in_place();
                Ok(Some(value))
            }
            Lookup::Stale | Lookup::Miss => Ok(None),
        }
    }

    /// The memory L1 and the clock reading when a call may be answered by an L1 hit in place:
    /// valid options that ask for no refresh check, and an L1 no other replica's write can have
    /// outdated unseen.
    #[inline]
    fn in_place(&self, options: &LoadOptions) -> Result<Option<(&MemoryCache<V>, Now)>> {
        let inner = &self.inner;
        options.validate_over(&inner.defaults)?;
        let Some(memory) = &inner.l1_memory else {
            return Ok(None);
        };
        if options.refreshes() || inner.defaults.refreshes() {
            return Ok(None);
        }
        let now = Now::lazy();
        Ok(inner.l1_trusted(&now).then_some((memory, now)))
    }

    /// Count an answer of [`hit_in_place`](Self::hit_in_place), in a `layercache.get_or_load`
    /// span (feature `tracing`; a disabled span costs one check of a cached flag).
    #[inline]
    fn count_hit_in_place(&self) {
        let inner = &self.inner;
        inner.metrics.count(Counted::L1Hit);
        #[cfg(feature = "tracing")]
        let _span = tracing::debug_span!(
            "layercache.get_or_load",
            cache = %inner.name,
            source = "l1_hit",
            layer = "l1",
            joined = false,
            outcome = "ok",
        )
        .entered();
    }

    /// [`resolve`](Self::resolve) in a `layercache.get_or_load` span (feature `tracing`) that
    /// records how the call was answered.
    async fn resolve_traced<F, Fut, E>(
        &self,
        key: &str,
        loader: F,
        options: LoadOptions,
    ) -> Result<Answer<V>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        #[cfg(feature = "tracing")]
        {
            use tracing::field::Empty;
            let span = tracing::debug_span!(
                "layercache.get_or_load",
                cache = %self.inner.name,
                source = Empty,
                layer = Empty,
                joined = Empty,
                outcome = Empty,
            );
            let result =
                tracing::Instrument::instrument(self.resolve(key, loader, options), span.clone())
                    .await;
            match &result {
                Ok(answer) => {
                    span.record("source", answer.source.as_str());
                    span.record(
                        "layer",
                        match answer.source {
                            Source::L1Hit => "l1",
                            Source::L2Hit => "l2",
                            Source::FailSafe | Source::SoftTimeout => "stale",
                            _ => "loader",
                        },
                    );
                    span.record("joined", answer.source == Source::Joined);
                    span.record("outcome", "ok");
                }
                Err(e) => {
                    span.record(
                        "outcome",
                        match e {
                            Error::Timeout { .. } => "timeout",
                            Error::Config { .. } => "config",
                            _ => "error",
                        },
                    );
                }
            }
            result
        }
        #[cfg(not(feature = "tracing"))]
        self.resolve(key, loader, options).await
    }

    /// Everything past an in-place hit.
    async fn resolve<F, Fut, E>(
        &self,
        key: &str,
        loader: F,
        options: LoadOptions,
    ) -> Result<Answer<V>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let inner = &self.inner;
        let generation = inner.flights.generation();
        let now = now_ms();
        let options = options.or(&inner.defaults);
        let trusted = inner.l1_trusted_at(now);
        let mut l1_backup = None;
        let l1 = match inner.read_l1(key, now).await {
            // Not trusted on its own: L2 decides, L1 answers only when L2 cannot.
            Some(entry) if entry.is_fresh_at(now) && !trusted => {
                l1_backup = Some(entry);
                None
            }
            Some(entry) if entry.is_fresh_at(now) && inner.tags_allow(&entry) => {
                inner.metrics.count(Counted::L1Hit);
                if inner.due_for_refresh(&entry, &options, now) && !inner.flights.is_loading(key) {
                    let spec = inner.spec(&options, entry.fresh_until_ms(), None, None);
                    let target = Arc::new(Target(Arc::clone(inner)));
                    // Started and left running; this caller does not wait for it.
                    let _ = inner
                        .flights
                        .start_or_join(target, key, generation, loader, spec);
                }
                return Ok(Answer::new(entry, Source::L1Hit));
            }
            other => other,
        };
        let fail_safe = options.max_stale.is_some();
        let own_stale = l1.filter(|e| fail_safe && e.is_usable());
        let spec = inner.spec(&options, 0, own_stale.clone(), l1_backup);
        let target = Arc::new(Target(Arc::clone(inner)));
        let (waiter, joined) = inner
            .flights
            .start_or_join(target, key, generation, loader, spec)?;
        self.await_flight(waiter, joined, own_stale, &options).await
    }

    /// Wait for a flight within the options' timeouts, falling back to a stale value where
    /// fail-safe allows; count the answer.
    async fn await_flight(
        &self,
        mut waiter: Waiter<V>,
        joined: Joined,
        own_stale: Option<Entry<V>>,
        options: &LoadOptions,
    ) -> Result<Answer<V>> {
        let inner = &self.inner;
        let fail_safe = options.max_stale.is_some();
        let stale = |waiter: &Waiter<V>| -> Option<(Entry<V>, Origin)> {
            if !fail_safe {
                return None;
            }
            let own = own_stale.clone().map(|e| (e, Origin::L1));
            let theirs = waiter.stale();
            let best = match (own, theirs) {
                (Some(a), Some(b)) => Some(if b.0.stale_until_ms() > a.0.stale_until_ms() {
                    b
                } else {
                    a
                }),
                (a, b) => a.or(b),
            };
            best.filter(|(e, _)| e.is_usable())
        };
        let serve_stale = |(entry, origin): (Entry<V>, Origin), source: Source| {
            inner.metrics.count(match origin {
                Origin::L1 => Counted::L1Stale,
                Origin::L2 => Counted::L2Stale,
            });
            Ok(Answer::new(entry, source))
        };
        let no_answer = || match joined {
            Joined::Started => inner.metrics.count(Counted::Miss),
            Joined::Joined => {
                inner.metrics.count(Counted::Joined);
                inner.flights.metrics.coalesced();
            }
        };

        let started = Instant::now();
        let soft = options.soft_timeout.get().filter(|_| fail_safe);
        let hard = options.hard_timeout.get();
        let mut result = None;
        if let Some(soft) = soft {
            match tokio::time::timeout(soft, waiter.wait()).await {
                Ok(r) => result = Some(r),
                Err(_) => {
                    if let Some(found) = stale(&waiter) {
                        // The load goes on in the background and will update the layers.
                        inner.flights.metrics.timeout();
                        return serve_stale(found, Source::SoftTimeout);
                    }
                }
            }
        }
        let result = match result {
            Some(r) => r,
            None => match hard {
                Some(hard) => {
                    let left = hard.saturating_sub(started.elapsed());
                    match tokio::time::timeout(left, waiter.wait()).await {
                        Ok(r) => r,
                        Err(_) => {
                            inner.flights.metrics.timeout();
                            if let Some(found) = stale(&waiter) {
                                inner.flights.metrics.fail_safe();
                                return serve_stale(found, Source::FailSafe);
                            }
                            no_answer();
                            return Err(Error::Timeout { after: hard });
                        }
                    }
                }
                None => waiter.wait().await,
            },
        };
        match result {
            Ok(Resolved { entry, source }) => {
                let source = match (source, joined) {
                    (Source::Loaded | Source::Negative, Joined::Joined) => Source::Joined,
                    (source, _) => source,
                };
                match source {
                    Source::L1Hit => inner.metrics.count(Counted::L1Hit),
                    Source::L2Hit => inner.metrics.count(Counted::L2Hit),
                    Source::Joined => {
                        inner.metrics.count(Counted::Joined);
                        inner.flights.metrics.coalesced();
                    }
                    _ => inner.metrics.count(Counted::Miss),
                }
                Ok(Answer::new(entry, source))
            }
            Err(err) => match stale(&waiter) {
                Some(found) => {
                    // The loader failed: serve the stale value; the flight keeps it in L1 for
                    // the throttle period before the loader is tried again.
                    inner.flights.metrics.fail_safe();
                    serve_stale(found, Source::FailSafe)
                }
                None => {
                    no_answer();
                    Err(err)
                }
            },
        }
    }
}
