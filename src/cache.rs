//! The [`Cache`] trait every layer implements, and [`CacheExt`] conveniences on top of it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;

use crate::entry::Entry;
use crate::error::Result;

/// An async key–value store of [`Entry`] values: one layer of a cache stack.
///
/// The trait is object safe, so stacks can be composed at run time from `Arc<dyn Cache<V>>`.
/// Implementations must never return an entry past its [`stale_until`](Entry::stale_until)
/// deadline; they may return entries that are stale but still usable (the caller decides
/// whether a stale value is acceptable — see [`Entry::is_fresh`]).
///
/// `get_many` and `set_many` have default implementations that loop over `get` and `set`; layers
/// with a native batch operation (Redis `MGET`, pipelines) override them. The conditional
/// forms a [`Layered`](crate::Layered) cache writes its L2 with — `set_if_newer`,
/// `set_many_if_newer`, `delete_if_older` — default to a read, then a write; a layer shared by
/// several processes should override them with one atomic step, as
/// [`RedisCache`](crate::RedisCache) does.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use layercache::{Cache, CacheExt, Entry, MemoryCache};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> layercache::Result<()> {
/// let cache: Arc<dyn Cache<String>> = Arc::new(MemoryCache::builder().build()?);
/// cache.set("greeting", Entry::new("hello".to_string(), Duration::from_secs(60))).await?;
/// assert_eq!(cache.get_value("greeting").await?.as_deref(), Some("hello"));
/// cache.delete("greeting").await?;
/// assert!(cache.get("greeting").await?.is_none());
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait Cache<V>: Send + Sync
where
    V: Send + Sync + 'static,
{
    /// A short name for this layer, used in metric labels and error messages.
    fn name(&self) -> &str;

    /// The entry stored under `key`, if there is one that has not passed its stale deadline.
    ///
    /// Await the returned [`CacheGet`] like any future. A layer that can answer at once (an
    /// in-memory one) returns [`CacheGet::ready`], which costs no allocation; others wrap their
    /// async code in [`CacheGet::new`]:
    ///
    /// ```
    /// use layercache::{Cache, CacheGet, Entry, Result};
    ///
    /// struct Empty;
    ///
    /// #[async_trait::async_trait]
    /// impl Cache<String> for Empty {
    ///     fn name(&self) -> &str {
    ///         "empty"
    ///     }
    ///     fn get<'a>(&'a self, key: &'a str) -> CacheGet<'a, String> {
    ///         CacheGet::new(async move {
    ///             let _ = key; // e.g. a network call
    ///             Ok(None)
    ///         })
    ///     }
    ///     async fn set(&self, _: &str, _: Entry<String>) -> Result<()> {
    ///         Ok(())
    ///     }
    ///     async fn delete(&self, _: &str) -> Result<()> {
    ///         Ok(())
    ///     }
    /// }
    /// ```
    fn get<'a>(&'a self, key: &'a str) -> CacheGet<'a, V>;

    /// The answer [`CacheExt::get_value`] gives for `key` (the value if it is there and fresh),
    /// when this layer can give it at once; `None` when it must wait, and then nothing has been
    /// read or counted: `get_value` goes on to await [`get`](Cache::get).
    ///
    /// `get_value` calls it first, so a layer that answers from memory hands back the value
    /// alone instead of building an [`Entry`] inside a future. [`MemoryCache`](crate::MemoryCache)
    /// always answers (it is its
    /// [`get_value_sync`](crate::MemoryCache::get_value_sync)), and [`Layered`](crate::Layered)
    /// answers a fresh L1 hit; the default answers nothing. An answer must be counted as `get`
    /// would count it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use layercache::{Cache, CacheExt, MemoryCache};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> layercache::Result<()> {
    /// let cache = MemoryCache::<String>::builder().build()?;
    /// cache.set_value("k", "v".to_string(), Duration::from_secs(60)).await?;
    /// assert_eq!(cache.get_value_now("k").transpose()?, Some(Some("v".to_string())));
    /// # Ok(())
    /// # }
    /// ```
    fn get_value_now(&self, key: &str) -> Option<Result<Option<V>>> {
        let _ = key;
        None
    }

    /// Like [`get`](Cache::get), but not counted in the layer's hit/miss metrics and without side
    /// effects such as refreshing an idle timer. `get_or_load` uses it to re-check a key just
    /// before paying for a load. Defaults to `get`.
    async fn peek(&self, key: &str) -> Result<Option<Entry<V>>> {
        self.get(key).await
    }

    /// Store `entry` under `key`, replacing what was there. The entry's own deadlines decide how
    /// long it lives; an entry already past its stale deadline removes the key instead.
    async fn set(&self, key: &str, entry: Entry<V>) -> Result<()>;

    /// Remove `key`. Removing a key that is not there is not an error.
    async fn delete(&self, key: &str) -> Result<()>;

    /// The entries for `keys`, in the same order (`None` for each miss).
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Entry<V>>>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(key).await?);
        }
        Ok(out)
    }

    /// Store every `(key, entry)` pair.
    async fn set_many(&self, entries: Vec<(&str, Entry<V>)>) -> Result<()> {
        for (key, entry) in entries {
            self.set(key, entry).await?;
        }
        Ok(())
    }

    /// Remove every key that starts with `prefix`; how many were removed (as far as the layer
    /// can tell). Memory and Redis layers and `Layered` implement it; the default fails with
    /// [`Error::Config`](crate::Error::Config) naming the layer.
    async fn invalidate_prefix(&self, prefix: &str) -> Result<u64> {
        let _ = prefix;
        Err(crate::Error::config(format!(
            "the layer {:?} cannot remove keys by prefix",
            self.name()
        )))
    }

    /// Store `entry` unless the layer holds an entry for `key` created at the same time or later
    /// ([`Entry::created_at`]); whether it was stored. The expired copy that
    /// [`Layered::expire`](crate::Layered::expire) leaves counts as created at the expire (its
    /// `created_at` stays the value's own), so a value read before the expire is kept out.
    ///
    /// A [`Layered`](crate::Layered) cache writes its L2 with this, never with [`Cache::set`]: its
    /// `set`s, its loaded values, and what it kept during an L2 outage. A write can reach Redis
    /// long after its caller gave up on it (a timeout on a slow link); compared by creation
    /// time, such a late write never replaces a newer value another replica wrote meanwhile.
    /// [`RedisCache`](crate::RedisCache) compares and writes in one server-side step; the
    /// default reads, then writes (not atomic, enough for a layer only this process writes).
    ///
    /// ```
    /// use std::time::Duration;
    /// use layercache::{Cache, Entry, MemoryCache};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> layercache::Result<()> {
    /// let cache = MemoryCache::<String>::builder().build()?;
    /// let older = Entry::new("first".to_string(), Duration::from_secs(60));
    /// let newer = Entry::new("second".to_string(), Duration::from_secs(60));
    /// assert!(cache.set_if_newer("k", newer).await?);
    /// // Created earlier: Redis (or any layer) keeps the newer value.
    /// assert!(!cache.set_if_newer("k", older).await?);
    /// assert_eq!(cache.peek("k").await?.map(|e| e.into_value()).as_deref(), Some("second"));
    /// # Ok(())
    /// # }
    /// ```
    async fn set_if_newer(&self, key: &str, entry: Entry<V>) -> Result<bool> {
        if let Some(current) = self.peek(key).await? {
            if current.ordered_us() >= entry.ordered_us() {
                return Ok(false);
            }
        }
        self.set(key, entry).await.map(|()| true)
    }

    /// Delete `key` unless the layer holds an entry of it created at `than` or later; `false`
    /// when such a newer entry was kept. A [`Layered`](crate::Layered) cache deletes from its
    /// L2 with this, `than` being the time of the delete: a delete that reaches Redis late
    /// (see [`Cache::set_if_newer`]) does not remove a value another replica wrote after it.
    /// [`RedisCache`](crate::RedisCache) compares and deletes in one server-side step, and
    /// leaves a tombstone for [`TOMBSTONE_TTL`](crate::redis::TOMBSTONE_TTL) (read as a miss):
    /// a conditional write of an entry created before `than` — a load that read its data
    /// before the delete — is kept out. The default reads, then deletes (not atomic).
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use layercache::{Cache, Entry, MemoryCache};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> layercache::Result<()> {
    /// let cache = MemoryCache::<String>::builder().build()?;
    /// let asked = SystemTime::now();
    /// let written_since = Entry::new("newer".to_string(), Duration::from_secs(60))
    ///     .with_created_at(asked + Duration::from_millis(5));
    /// cache.set("k", written_since).await?;
    /// // The entry was written after the delete was asked for: it stays.
    /// assert!(!cache.delete_if_older("k", asked).await?);
    /// assert!(cache.delete_if_older("k", asked + Duration::from_secs(1)).await?);
    /// assert!(cache.peek("k").await?.is_none());
    /// # Ok(())
    /// # }
    /// ```
    async fn delete_if_older(&self, key: &str, than: std::time::SystemTime) -> Result<bool> {
        if let Some(current) = self.peek(key).await? {
            if current.ordered_us() >= crate::clock::to_us(than) {
                return Ok(false);
            }
        }
        self.delete(key).await.map(|()| true)
    }

    /// [`Cache::set_if_newer`] for every `(key, entry)` pair; whether each was stored, in the
    /// order given. [`RedisCache`](crate::RedisCache) pipelines them (one script call each);
    /// the default calls `set_if_newer` for each in turn and stops at the first error.
    async fn set_many_if_newer(&self, entries: Vec<(&str, Entry<V>)>) -> Result<Vec<bool>> {
        let mut stored = Vec::with_capacity(entries.len());
        for (key, entry) in entries {
            stored.push(self.set_if_newer(key, entry).await?);
        }
        Ok(stored)
    }

    /// A count that goes up each time this layer (re)connects to the store behind it — for a
    /// [`RedisCache`](crate::RedisCache), each connection it opens, including the first one
    /// made in the background when Redis was down at start-up. A [`Layered`](crate::Layered)
    /// stack whose L2 circuit is open probes at once when the count changes, instead of waiting
    /// out the break. Layers with no connection (the default) return 0 forever.
    fn connections(&self) -> u64 {
        0
    }

    /// Whether the last read of `key` found a value another deployment wrote recently: intact,
    /// but in a format, schema or value type this layer cannot read (a rolling deploy that
    /// changed the value type), written less than
    /// [`OTHER_DEPLOYMENT_GRACE`](crate::redis::OTHER_DEPLOYMENT_GRACE) ago. A
    /// [`Layered`](crate::Layered) cache does not overwrite such a value with one it loaded: it
    /// keeps its own in L1 only, so that two versions serving side by side do not take turns
    /// overwriting (and evicting) each other's values on every read. A
    /// [`RedisCache`](crate::RedisCache) notes it on every read; layers that only ever hold
    /// their own values (the default) return `false`.
    fn holds_other_deployment(&self, key: &str) -> bool {
        let _ = key;
        false
    }
}

/// The boxed future an `#[async_trait]` method returns.
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The future [`Cache::get`] returns: either an answer that is already there (an in-memory hit
/// or miss, no allocation) or a boxed future that produces it.
///
/// ```
/// use std::time::Duration;
/// use layercache::{Cache, Entry, MemoryCache};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> layercache::Result<()> {
/// let cache = MemoryCache::builder().build()?;
/// cache.set("k", Entry::new(1u32, Duration::from_secs(60))).await?;
/// // Awaited like any future…
/// assert!(cache.get("k").await?.is_some());
/// // …or, from synchronous code, taken at once when the layer answered without waiting.
/// let answer = cache.get("k").into_ready().ok().expect("in-memory layers answer at once");
/// assert_eq!(answer?.map(|e| *e.value()), Some(1));
/// # Ok(())
/// # }
/// ```
#[must_use = "futures do nothing unless awaited"]
pub struct CacheGet<'a, V> {
    state: GetState<'a, V>,
}

enum GetState<'a, V> {
    /// The answer, until it is taken by `poll`.
    Ready(Option<Result<Option<Entry<V>>>>),
    Pending(BoxFuture<'a, Result<Option<Entry<V>>>>),
}

impl<'a, V> CacheGet<'a, V> {
    /// An answer that is already known.
    pub fn ready(answer: Result<Option<Entry<V>>>) -> Self {
        CacheGet {
            state: GetState::Ready(Some(answer)),
        }
    }

    /// An answer that `future` will produce (boxed once).
    pub fn new(future: impl Future<Output = Result<Option<Entry<V>>>> + Send + 'a) -> Self {
        CacheGet {
            state: GetState::Pending(Box::pin(future)),
        }
    }

    /// The answer if it is already known, or the future back to await.
    ///
    /// # Errors
    ///
    /// Returns `Err(self)` when the answer needs awaiting (or was already taken by a poll).
    pub fn into_ready(self) -> std::result::Result<Result<Option<Entry<V>>>, Self> {
        match self.state {
            GetState::Ready(Some(answer)) => Ok(answer),
            state => Err(CacheGet { state }),
        }
    }
}

// The ready answer is moved out, never pinned in place, and the pending future is already boxed
// and pinned: the wrapper itself can move freely whatever `V` is.
impl<V> Unpin for CacheGet<'_, V> {}

impl<V> Future for CacheGet<'_, V> {
    type Output = Result<Option<Entry<V>>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            GetState::Ready(answer) => match answer.take() {
                Some(answer) => Poll::Ready(answer),
                None => panic!("CacheGet polled after it completed"),
            },
            GetState::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

impl<V> fmt::Debug for CacheGet<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            GetState::Ready(Some(_)) => "ready",
            GetState::Ready(None) => "taken",
            GetState::Pending(_) => "pending",
        };
        f.debug_struct("CacheGet").field("state", &state).finish()
    }
}

// Smart pointers forward to the inner cache's future as it is, instead of boxing a second future
// around it (which `#[async_trait]` on these impls would do): one allocation per call, not two.
macro_rules! forward_cache_impl {
    ($($ptr:ident),*) => {$(
        impl<V, C> Cache<V> for $ptr<C>
        where
            V: Send + Sync + 'static,
            C: Cache<V> + ?Sized,
        {
            fn name(&self) -> &str {
                (**self).name()
            }
            fn get<'a>(&'a self, key: &'a str) -> CacheGet<'a, V> {
                (**self).get(key)
            }
            fn get_value_now(&self, key: &str) -> Option<Result<Option<V>>> {
                (**self).get_value_now(key)
            }
            fn peek<'s, 'k, 'f>(&'s self, key: &'k str) -> BoxFuture<'f, Result<Option<Entry<V>>>>
            where
                's: 'f,
                'k: 'f,
                Self: 'f,
            {
                (**self).peek(key)
            }
            fn set<'s, 'k, 'f>(&'s self, key: &'k str, entry: Entry<V>) -> BoxFuture<'f, Result<()>>
            where
                's: 'f,
                'k: 'f,
                Self: 'f,
            {
                (**self).set(key, entry)
            }
            fn delete<'s, 'k, 'f>(&'s self, key: &'k str) -> BoxFuture<'f, Result<()>>
            where
                's: 'f,
                'k: 'f,
                Self: 'f,
            {
                (**self).delete(key)
            }
            fn invalidate_prefix<'s, 'k, 'f>(&'s self, prefix: &'k str) -> BoxFuture<'f, Result<u64>>
            where
                's: 'f,
                'k: 'f,
                Self: 'f,
            {
                (**self).invalidate_prefix(prefix)
            }
            fn set_if_newer<'s, 'k, 'f>(&'s self, key: &'k str, entry: Entry<V>) -> BoxFuture<'f, Result<bool>>
            where
                's: 'f,
                'k: 'f,
                Self: 'f,
            {
                (**self).set_if_newer(key, entry)
            }
            fn get_many<'s, 'k, 'l, 'f>(
                &'s self,
                keys: &'k [&'l str],
            ) -> BoxFuture<'f, Result<Vec<Option<Entry<V>>>>>
            where
                's: 'f,
                'k: 'f,
                'l: 'f,
                Self: 'f,
            {
                (**self).get_many(keys)
            }
            fn set_many<'s, 'k, 'f>(&'s self, entries: Vec<(&'k str, Entry<V>)>) -> BoxFuture<'f, Result<()>>
            where
                's: 'f,
                'k: 'f,
                Self: 'f,
            {
                (**self).set_many(entries)
            }
            fn delete_if_older<'s, 'k, 'f>(
                &'s self,
                key: &'k str,
                than: std::time::SystemTime,
            ) -> BoxFuture<'f, Result<bool>>
            where
                's: 'f,
                'k: 'f,
                Self: 'f,
            {
                (**self).delete_if_older(key, than)
            }
            fn set_many_if_newer<'s, 'k, 'f>(
                &'s self,
                entries: Vec<(&'k str, Entry<V>)>,
            ) -> BoxFuture<'f, Result<Vec<bool>>>
            where
                's: 'f,
                'k: 'f,
                Self: 'f,
            {
                (**self).set_many_if_newer(entries)
            }
            fn connections(&self) -> u64 {
                (**self).connections()
            }
            fn holds_other_deployment(&self, key: &str) -> bool {
                (**self).holds_other_deployment(key)
            }
        }
    )*};
}

forward_cache_impl!(Arc, Box);

/// Conveniences for every [`Cache`]: work with bare values instead of entries.
///
/// The methods return their futures unboxed (no allocation per call). `get_value` asks
/// [`Cache::get_value_now`] first: through a memory layer (or a `Layered` L1 hit) it costs about
/// what [`MemoryCache::get_value_sync`](crate::MemoryCache::get_value_sync) does.
pub trait CacheExt<V>: Cache<V>
where
    V: Send + Sync + 'static,
{
    /// The value under `key` if it is there and **fresh**; a stale entry counts as absent.
    fn get_value<'a>(
        &'a self,
        key: &'a str,
    ) -> impl Future<Output = Result<Option<V>>> + Send + 'a {
        // Lazy like any future: nothing is read (or counted) until it is polled.
        async move {
            if let Some(answer) = self.get_value_now(key) {
                return answer;
            }
            Ok(self
                .get(key)
                .await?
                .filter(Entry::is_fresh)
                .map(Entry::into_value))
        }
    }

    /// Store `value` under `key`, fresh for `ttl`.
    fn set_value<'a>(
        &'a self,
        key: &'a str,
        value: V,
        ttl: Duration,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        async move { self.set(key, Entry::new(value, ttl)).await }
    }
}

impl<V, C> CacheExt<V> for C
where
    V: Send + Sync + 'static,
    C: Cache<V> + ?Sized,
{
}
