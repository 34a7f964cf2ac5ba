//! Cache-aside loading: one `get_or_load` contract for every cache.
//!
//! [`Layered`](crate::Layered) (memory-only with `Layered::single`, or memory + Redis),
//! [`MemoryCache`](crate::MemoryCache) and [`LoadingCache`] (any [`Cache`](crate::Cache)) all run the same
//! engine, so every [`LoadOptions`] setting — lifetime, jitter, fail-safe, soft and hard
//! timeouts, early refresh — means the same on each; options that contradict each other are
//! rejected with [`Error::Config`], never ignored. Code that should work
//! with any of them is written against the [`GetOrLoad`] trait.
//!
//! # Single-flight
//!
//! Callers of one missing key share one *flight*: the L2 read, the load and the writes. A
//! stampede of a thousand callers on a cold key makes one L2 read and one load; the first caller
//! is counted as a miss, the others as `joined` (never as misses).
//!
//! A loaded value is in L1 when the callers get it; the write to L2 (and, with a backplane, the
//! announcement to the other replicas) follows at once, within the Redis command timeout, so a
//! slow or unreachable Redis never delays an answer. In that moment another replica's `get` can
//! still miss the value; its `get_or_load` does not load it again when a backplane is set (the
//! fleet lease, held until the write is done, makes it wait for the value).
//!
//! A change of the key while it loads wins over the load: a `set`, `set_many`, `delete`,
//! `expire` or `invalidate_prefix` through the same cache — or, with a backplane, on another
//! replica, once its message arrives — marks the running load. Its value, read before the
//! change (a row updated, then its key deleted), still answers the callers that were waiting,
//! but is stored in no layer; if the change comes while the value is being stored, it is taken
//! out again. (A change on another replica whose message arrives after the load's writes is an
//! ordinary later change: it evicts the value from L1; in Redis its `set`, `delete` or `expire`
//! is ordered after the value read before it, which Redis keeps out or expires.) `invalidate_tag` and `clear` need none of this: an entry
//! counts as created when its load started, so an invalidation during the load expires it.
//!
//! # Which lifetime wins
//!
//! * A loaded value is fresh for the call's `ttl`, else the cache's `default_options` ttl, else
//!   the `MemoryCache`'s `time_to_live` (for its own `get_or_load`), else [`DEFAULT_TTL`]; plus
//!   a random part of `jitter`. With fail-safe it stays usable as a stale fallback for
//!   `max_stale` more.
//! * In L1, a `Layered`'s `l1_ttl` caps how long the value counts as fresh; a `MemoryCache`'s
//!   `time_to_live` / `time_to_idle` cap how long it is kept at all.
//! * In Redis, the key expires at the entry's stale deadline.
//! * A value copied from L2 into L1 keeps the lifetime it has *left*.
//!
//! # Loads are detached
//!
//! A loader (an LLM call that costs money) runs on its own tokio task, not inside the caller's
//! future. If the caller that started it is cancelled (a client hung up, a `select!` lost a race),
//! the load still finishes, is paid for once, is cached, and every other waiting caller gets it.
//! That is why the loader's future must be `Send + 'static`: it cannot borrow from the caller.
//!
//! Move owned data into the loader — clone the `Arc` around your client and move (or clone) the
//! request:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use layercache::{KeyBuilder, LoadOptions, MemoryCache};
//!
//! # #[derive(Debug)] struct LlmError;
//! # impl std::fmt::Display for LlmError { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("llm") } }
//! # impl std::error::Error for LlmError {}
//! struct LlmClient;
//! impl LlmClient {
//!     async fn complete(&self, prompt: &str) -> Result<String, LlmError> {
//!         Ok(format!("answer to {prompt}"))
//!     }
//! }
//!
//! async fn answer(
//!     cache: &MemoryCache<String>,
//!     client: &Arc<LlmClient>,
//!     prompt: &str,
//! ) -> layercache::Result<String> {
//!     let key = KeyBuilder::request("chat").version(1).part(prompt).build();
//!     let client = Arc::clone(client);        // shared client: clone the Arc
//!     let prompt = prompt.to_owned();         // borrowed request: make it owned
//!     cache
//!         .get_or_load(&key, move || async move { client.complete(&prompt).await },
//!                      LoadOptions::ttl(Duration::from_secs(3600)))
//!         .await
//! }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> layercache::Result<()> {
//! # let cache = MemoryCache::builder().build()?;
//! # let client = Arc::new(LlmClient);
//! # assert_eq!(answer(&cache, &client, "hi").await?, "answer to hi");
//! # Ok(())
//! # }
//! ```

pub mod answer;
pub mod breaker;
mod flight;
mod front;
mod limit;
mod loading;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use self::answer::{Answer, Source};
#[cfg(feature = "redis")]
pub(crate) use self::flight::{FleetLease, LeaseGuard};
pub(crate) use self::flight::{Flights, L2Read};
pub use self::loading::{GetOrLoad, LoadingCache};
use crate::error::{Error, Result};
use crate::tags::Tags;

/// Lifetime given to loaded values when neither the call nor the cache sets one: one hour.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// Per-call settings for `get_or_load`. Anything left unset falls back to the cache's defaults
/// (set with the builder's `default_options`), and then to the built-in default. Every setting
/// is honoured by every cache that has `get_or_load`.
///
/// | setting | default | effect |
/// |---|---|---|
/// | `ttl` | cache default, else [`DEFAULT_TTL`] (1 h) | how long a loaded value is fresh |
/// | `jitter` | none | up to this much extra lifetime, at random |
/// | `fail_safe` | off | keep values as stale fallbacks this long; serve them when the loader fails |
/// | `fail_safe_throttle` | [`DEFAULT_FAIL_SAFE_THROTTLE`] (30 s) | after a fail-safe answer, wait this long before loading again |
/// | `soft_timeout` | none | with a stale value at hand, answer with it after this long |
/// | `hard_timeout` | none | never wait longer: stale value (fail-safe) or [`Error::Timeout`] |
/// | `early_refresh` / `xfetch` | off | refresh in the background before expiry |
///
/// ```
/// use std::time::Duration;
/// use layercache::LoadOptions;
///
/// let opts = LoadOptions::ttl(Duration::from_secs(600))
///     .with_jitter(Duration::from_secs(30))            // spread expiries by up to 30 s
///     .with_fail_safe(Duration::from_secs(3600))       // serve stale up to 1 h if the loader fails
///     .with_fail_safe_throttle(Duration::from_secs(30))
///     .with_soft_timeout(Duration::from_millis(200))   // with a stale value, answer after 200 ms
///     .with_hard_timeout(Duration::from_secs(10))      // never wait longer than 10 s
///     .with_early_refresh(0.8);                        // refresh in the background at 80 % of ttl
/// assert_eq!(opts.time_to_live(), Some(Duration::from_secs(600)));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
#[must_use]
pub struct LoadOptions {
    // Compact optionals (8 bytes each, not 16): every `get_or_load` future carries these options,
    // and at 128 bytes they were half of a hit's future.
    pub(crate) ttl: OptDuration,
    pub(crate) jitter: OptDuration,
    pub(crate) max_stale: OptDuration,
    pub(crate) fail_safe_throttle: OptDuration,
    pub(crate) soft_timeout: OptDuration,
    pub(crate) hard_timeout: OptDuration,
    pub(crate) early_refresh: OptF64,
    pub(crate) xfetch_beta: OptF64,
    /// Rarely set options (tags, the fleet lease), behind one pointer.
    pub(crate) extra: Option<Arc<Extra>>,
}

/// The rarely set options of [`LoadOptions`].
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Extra {
    pub(crate) tags: Option<Tags>,
    /// Why the tags are not acceptable, checked once when they are set (not on every hit).
    pub(crate) tags_invalid: Option<String>,
    pub(crate) lease: Option<bool>,
}

/// An optional [`Duration`] in 8 bytes: whole nanoseconds, `u64::MAX` for none. Durations of
/// 584 years or more are stored as just under that, which is the same for every use here.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct OptDuration(u64);

impl OptDuration {
    const NONE: OptDuration = OptDuration(u64::MAX);

    pub(crate) fn some(d: Duration) -> Self {
        OptDuration(u64::try_from(d.as_nanos()).map_or(u64::MAX - 1, |n| n.min(u64::MAX - 1)))
    }

    #[inline]
    pub(crate) fn get(self) -> Option<Duration> {
        (self != Self::NONE).then(|| Duration::from_nanos(self.0))
    }

    #[inline]
    pub(crate) fn is_some(self) -> bool {
        self != Self::NONE
    }

    fn or(self, other: Self) -> Self {
        if self.is_some() {
            self
        } else {
            other
        }
    }
}

impl Default for OptDuration {
    fn default() -> Self {
        Self::NONE
    }
}

impl fmt::Debug for OptDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.get(), f)
    }
}

/// An optional fraction or factor in 4 bytes (`f32` precision is plenty for these). "None" is
/// one particular NaN bit pattern that no setting produces: a NaN *setting* is kept as a
/// value, so that validation refuses it instead of it silently meaning "off".
#[derive(Clone, Copy)]
pub(crate) struct OptF64(f32);

/// The bits of [`OptF64`]'s "none": a quiet NaN with a payload, never the result of converting
/// a setting (a NaN setting is stored as the canonical `f32::NAN`).
const OPT_F64_NONE: u32 = 0x7fc0_0001;

impl OptF64 {
    /// `x` to the nearest `f32`, except that rounding never carries a setting across a bound
    /// that validation checks: a finite value stays finite, a non-zero one non-zero, and one
    /// below (above) 1 stays below (above) it — `0.999_999_999` is a fraction, `1e300` a finite
    /// XFetch beta.
    fn some(x: f64) -> Self {
        if x.is_nan() {
            return OptF64(f32::NAN);
        }
        let mut y = x as f32;
        if x.is_finite() && y.is_infinite() {
            y = f32::MAX.copysign(y);
        } else if x != 0.0 && y == 0.0 {
            y = f32::from_bits(1).copysign(x as f32);
        } else if x < 1.0 && y >= 1.0 {
            y = 1.0f32.next_down();
        } else if x > 1.0 && y <= 1.0 {
            y = 1.0f32.next_up();
        }
        OptF64(y)
    }

    #[inline]
    pub(crate) fn get(self) -> Option<f64> {
        self.is_some().then_some(f64::from(self.0))
    }

    #[inline]
    pub(crate) fn is_some(self) -> bool {
        self.0.to_bits() != OPT_F64_NONE
    }

    fn or(self, other: Self) -> Self {
        if self.is_some() {
            self
        } else {
            other
        }
    }
}

impl Default for OptF64 {
    fn default() -> Self {
        OptF64(f32::from_bits(OPT_F64_NONE))
    }
}

impl PartialEq for OptF64 {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl fmt::Debug for OptF64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.get(), f)
    }
}

/// How long a fail-safe value is served before the loader is tried again, unless set: 30 s.
pub const DEFAULT_FAIL_SAFE_THROTTLE: Duration = Duration::from_secs(30);

impl LoadOptions {
    /// Options that use the cache's defaults for everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Options whose loaded value stays fresh for `ttl`.
    ///
    /// A zero `ttl` keeps nothing fresh: every call runs the loader (callers arriving during a
    /// load still share it). With [`with_fail_safe`](Self::with_fail_safe) the value is kept
    /// only as a fallback, answered when the loader fails or times out — "always ask the
    /// provider, and answer with its last reply while it is down".
    ///
    /// ```
    /// use std::time::Duration;
    /// use layercache::{Layered, LoadOptions, MemoryCache, Source};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> layercache::Result<()> {
    /// let cache = Layered::single(MemoryCache::<String>::builder().build()?).build()?;
    /// let options = LoadOptions::ttl(Duration::ZERO).with_fail_safe(Duration::from_secs(3600));
    ///
    /// let first = cache
    ///     .get_or_load_answer("rate", || async { Ok::<_, std::io::Error>("1.08".to_string()) }, options.clone())
    ///     .await?;
    /// assert_eq!(first.source, Source::Loaded);
    /// let down = cache
    ///     .get_or_load_answer(
    ///         "rate",
    ///         || async { Err::<String, _>(std::io::Error::other("provider down")) },
    ///         options,
    ///     )
    ///     .await?;
    /// assert_eq!((down.source, down.value.as_str()), (Source::FailSafe, "1.08"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn ttl(ttl: Duration) -> Self {
        LoadOptions {
            ttl: OptDuration::some(ttl),
            ..Self::default()
        }
    }

    /// Set how long a loaded value stays fresh (zero: never fresh, see [`ttl`](Self::ttl)).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = OptDuration::some(ttl);
        self
    }

    /// Add a random extra lifetime between zero and `jitter` to each loaded value, so that keys
    /// written together do not all expire together.
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = OptDuration::some(jitter);
        self
    }

    /// Turn on fail-safe: keep values usable for `max_stale` after they stop being fresh, and when
    /// the loader fails or times out, return the stale value instead of the error (counted as
    /// `outcome="fail_safe"`).
    pub fn with_fail_safe(mut self, max_stale: Duration) -> Self {
        self.max_stale = OptDuration::some(max_stale);
        self
    }

    /// After a fail-safe answer, serve the stale value for this long before calling the loader
    /// again (default [`DEFAULT_FAIL_SAFE_THROTTLE`]), so a failing provider is not hammered.
    pub fn with_fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.fail_safe_throttle = OptDuration::some(throttle);
        self
    }

    /// When a stale value exists (fail-safe on), return it if the load takes longer than this;
    /// the load goes on in the background and updates the cache.
    pub fn with_soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = OptDuration::some(timeout);
        self
    }

    /// Never wait longer than this for a load: return the stale value if there is one (fail-safe
    /// on), else [`Error::Timeout`]. The load goes on and may still be
    /// cached.
    pub fn with_hard_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = OptDuration::some(timeout);
        self
    }

    /// Refresh in the background once a hit finds the value past this fraction of its lifetime
    /// (for example 0.8), returning the current value at once. A fraction outside (0, 1), or
    /// NaN, is refused with [`Error::Config`] when the options are used (see
    /// [`validate`](Self::validate)).
    pub fn with_early_refresh(mut self, fraction: f64) -> Self {
        self.early_refresh = OptF64::some(fraction);
        self
    }

    /// Probabilistic early refresh (XFetch): a hit refreshes early with probability
    /// `exp(-(expiry - now) / (beta × Δ))`, where Δ is how long the value took to load. `beta`
    /// 1.0 is the usual choice; larger refreshes earlier. A `beta` that is not positive and
    /// finite (NaN included) is refused with [`Error::Config`] when the options are used.
    pub fn with_xfetch(mut self, beta: f64) -> Self {
        self.xfetch_beta = OptF64::some(beta);
        self
    }

    /// Whether a load may take the fleet's lease (default `true`). With a
    /// [backplane](crate::LayeredBuilder::backplane), a key that neither L1 nor L2 holds is
    /// loaded by one replica of the fleet while the others wait for its value (woken by the
    /// backplane, never polling Redis; see [`crate::fleet`]). `false` loads here at once, as
    /// without a backplane — for a call whose result must not come from another replica's
    /// load, or that is cheap enough not to wait for one. Without a backplane it changes
    /// nothing.
    pub fn with_fleet_lease(mut self, lease: bool) -> Self {
        Arc::make_mut(self.extra.get_or_insert_with(Default::default)).lease = Some(lease);
        self
    }

    /// Tag every value this call loads (replacing tags set before; duplicates are dropped):
    /// [`Layered::invalidate_tag`](crate::Layered::invalidate_tag) expires them all at once, across the fleet. At most
    /// [`MAX_TAGS`](crate::tags::MAX_TAGS) tags of 1 to 255 bytes (`get_or_load` fails with
    /// [`Error::Config`] otherwise). See [`crate::tags`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use layercache::LoadOptions;
    ///
    /// let options = LoadOptions::ttl(Duration::from_secs(3600)).with_tags(["user:42", "model:gpt-4o"]);
    /// assert!(options.validate().is_ok());
    /// assert!(LoadOptions::new().with_tags([""]).validate().is_err());
    /// ```
    pub fn with_tags<I, S>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let tags = Tags::new(tags);
        let extra = Arc::make_mut(self.extra.get_or_insert_with(Default::default));
        extra.tags_invalid = crate::tags::validate(tags.as_slice())
            .err()
            .map(|e| match e {
                Error::Config { reason } => reason,
                other => other.to_string(),
            });
        extra.tags = Some(tags);
        self
    }

    /// Whether loads may take the fleet lease.
    #[inline]
    pub(crate) fn lease(&self) -> bool {
        self.extra.as_ref().and_then(|e| e.lease).unwrap_or(true)
    }

    /// The tags of loaded values.
    pub(crate) fn tags(&self) -> Tags {
        self.extra
            .as_ref()
            .and_then(|e| e.tags.clone())
            .unwrap_or_default()
    }

    /// Check that the settings fit together: an early-refresh fraction strictly between 0 and 1,
    /// a positive finite XFetch beta, a non-zero hard timeout, a soft timeout only with
    /// fail-safe (it answers with a stale value) and shorter than the hard timeout.
    /// `get_or_load` checks each call's options (over the cache's defaults) the same way.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the setting.
    ///
    /// ```
    /// use std::time::Duration;
    /// use layercache::LoadOptions;
    ///
    /// assert!(LoadOptions::new().with_early_refresh(1.5).validate().is_err());
    /// assert!(LoadOptions::new().with_early_refresh(f64::NAN).validate().is_err());
    /// assert!(LoadOptions::new().with_xfetch(f64::NAN).validate().is_err());
    /// assert!(LoadOptions::new().with_soft_timeout(Duration::from_millis(100)).validate().is_err());
    /// assert!(LoadOptions::new()
    ///     .with_fail_safe(Duration::from_secs(60))
    ///     .with_soft_timeout(Duration::from_millis(100))
    ///     .validate()
    ///     .is_ok());
    /// ```
    pub fn validate(&self) -> Result<()> {
        self.validate_over(&LoadOptions::default())
    }

    /// [`validate`](Self::validate) of these options with unset fields taken from `defaults`,
    /// without building the merged options (this runs on every hit).
    #[inline]
    pub(crate) fn validate_over(&self, defaults: &LoadOptions) -> Result<()> {
        if let Some(invalid) = self.extra.as_ref().and_then(|e| e.tags_invalid.as_ref()) {
            return Err(Error::config(invalid.clone()));
        }
        if let Some(f) = self.early_refresh.get() {
            if !(f > 0.0 && f < 1.0) {
                return Err(Error::config(format!(
                    "early_refresh must be a fraction strictly between 0 and 1, not {f}"
                )));
            }
        }
        if let Some(beta) = self.xfetch_beta.get() {
            if !(beta > 0.0 && beta.is_finite()) {
                return Err(Error::config(format!(
                    "the XFetch beta must be positive and finite, not {beta}"
                )));
            }
        }
        let hard = self.hard_timeout.or(defaults.hard_timeout).get();
        if hard.is_some_and(|h| h.is_zero()) {
            return Err(Error::config("hard_timeout must be greater than zero"));
        }
        if let Some(soft) = self.soft_timeout.or(defaults.soft_timeout).get() {
            if !self.max_stale.or(defaults.max_stale).is_some() {
                return Err(Error::config(
                    "a soft timeout answers with a stale value: also set with_fail_safe(..)",
                ));
            }
            if hard.is_some_and(|h| soft >= h) {
                return Err(Error::config(
                    "soft_timeout must be shorter than hard_timeout",
                ));
            }
        }
        Ok(())
    }

    /// The lifetime set on these options, if any.
    pub fn time_to_live(&self) -> Option<Duration> {
        self.ttl.get()
    }

    pub(crate) fn resolve_ttl(&self, default: Duration) -> Duration {
        self.ttl.get().unwrap_or(default)
    }

    /// Whether these options ask for early refresh (by fraction or XFetch).
    #[inline]
    pub(crate) fn refreshes(&self) -> bool {
        self.early_refresh.is_some() || self.xfetch_beta.is_some()
    }

    /// These options, with unset fields taken from `defaults`.
    pub(crate) fn or(&self, defaults: &LoadOptions) -> LoadOptions {
        LoadOptions {
            ttl: self.ttl.or(defaults.ttl),
            jitter: self.jitter.or(defaults.jitter),
            max_stale: self.max_stale.or(defaults.max_stale),
            fail_safe_throttle: self.fail_safe_throttle.or(defaults.fail_safe_throttle),
            soft_timeout: self.soft_timeout.or(defaults.soft_timeout),
            hard_timeout: self.hard_timeout.or(defaults.hard_timeout),
            early_refresh: self.early_refresh.or(defaults.early_refresh),
            xfetch_beta: self.xfetch_beta.or(defaults.xfetch_beta),
            extra: match (&self.extra, &defaults.extra) {
                (Some(mine), Some(theirs)) => Some(Arc::new(match mine.tags {
                    Some(_) => Extra {
                        lease: mine.lease.or(theirs.lease),
                        ..(**mine).clone()
                    },
                    None => Extra {
                        lease: mine.lease.or(theirs.lease),
                        ..(**theirs).clone()
                    },
                })),
                (mine, theirs) => mine.clone().or_else(|| theirs.clone()),
            },
        }
    }
}

/// A uniformly distributed number in (0, 1], from the standard library's randomly seeded hasher
/// (good enough for jitter and early-refresh coin flips; not for anything secret).
pub(crate) fn random_unit() -> f64 {
    use std::hash::BuildHasher;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static STATE: std::collections::hash_map::RandomState = std::collections::hash_map::RandomState::new();
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let bits = STATE.with(|s| s.hash_one(n)) >> 11;
    (bits as f64 + 1.0) / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_optionals_keep_what_was_set() {
        assert_eq!(OptDuration::default().get(), None);
        let d = Duration::new(3, 250);
        assert_eq!(OptDuration::some(d).get(), Some(d));
        assert_eq!(
            OptDuration::some(Duration::ZERO).get(),
            Some(Duration::ZERO)
        );
        // Far-future durations saturate just below "none" instead of wrapping or vanishing.
        let huge = OptDuration::some(Duration::MAX);
        assert!(huge.is_some());
        assert!(huge
            .get()
            .is_some_and(|h| h > Duration::from_secs(500 * 365 * 86_400)));

        assert_eq!(OptF64::default().get(), None);
        assert!(OptF64::some(0.8)
            .get()
            .is_some_and(|f| (f - 0.8).abs() < 1e-6));
        // A NaN setting is a setting (refused by validation), not "unset".
        assert!(OptF64::some(f64::NAN).get().is_some_and(f64::is_nan));
        assert_eq!(OptF64::default().get(), None);
        assert!(LoadOptions::new()
            .with_early_refresh(f64::NAN)
            .validate()
            .is_err());
        assert!(LoadOptions::new()
            .with_xfetch(f64::NAN)
            .or(&LoadOptions::new().with_xfetch(1.0))
            .validate()
            .is_err());
    }

    #[test]
    fn rounding_a_setting_to_f32_never_crosses_a_bound_validation_checks() {
        // Valid settings that `as f32` alone would turn into invalid ones (1.0, inf, 0).
        for fraction in [0.999_999_999, 1e-50, f64::MIN_POSITIVE] {
            let options = LoadOptions::new().with_early_refresh(fraction);
            assert!(options.validate().is_ok(), "{fraction}: {options:?}");
            let kept = options.early_refresh.get().unwrap_or(f64::NAN);
            assert!(kept > 0.0 && kept < 1.0, "{fraction} kept as {kept}");
        }
        for beta in [1e300, 1e-300, f64::MAX] {
            let options = LoadOptions::new().with_xfetch(beta);
            assert!(options.validate().is_ok(), "{beta}: {options:?}");
        }
        // Invalid ones stay invalid, and name a value on the same side of the bound.
        for (fraction, shown) in [(1.000_000_001, "1.0000001"), (-1e-50, "-0.0")] {
            let refused = LoadOptions::new().with_early_refresh(fraction).validate();
            assert!(
                matches!(&refused, Err(Error::Config { reason }) if reason.contains(shown)),
                "{fraction}: {refused:?}"
            );
        }
        for beta in [f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0, -1e-300] {
            assert!(
                LoadOptions::new().with_xfetch(beta).validate().is_err(),
                "{beta}"
            );
        }
    }

    #[test]
    fn unset_options_fall_back_to_defaults_and_set_ones_win() {
        let defaults = LoadOptions::new()
            .with_ttl(Duration::from_secs(60))
            .with_fail_safe(Duration::from_secs(600))
            .with_early_refresh(0.8);
        let mine = LoadOptions::new()
            .with_ttl(Duration::from_secs(5))
            .with_xfetch(1.0);
        let merged = mine.or(&defaults);
        assert_eq!(merged.time_to_live(), Some(Duration::from_secs(5)));
        assert_eq!(merged.max_stale.get(), Some(Duration::from_secs(600)));
        assert!(merged
            .early_refresh
            .get()
            .is_some_and(|f| (f - 0.8).abs() < 1e-6));
        assert_eq!(merged.xfetch_beta.get(), Some(1.0));
        assert_eq!(merged.hard_timeout.get(), None);
        assert!(merged.refreshes());
        assert!(!LoadOptions::new().refreshes());
        // Every get_or_load future carries a copy: keep it to one cache line.
        assert!(std::mem::size_of::<LoadOptions>() <= 64);
        assert_eq!(format!("{:?}", LoadOptions::new().hard_timeout), "None");
    }
}
