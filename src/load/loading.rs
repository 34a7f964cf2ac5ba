//! [`LoadingCache`] (`get_or_load` over any [`Cache`]) and [`GetOrLoad`], the trait every cache
//! with a `get_or_load` implements.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Answer, LoadOptions};
use crate::cache::Cache;
use crate::entry::Entry;
use crate::error::{BoxError, Result};
use crate::layered::Layered;
use crate::metrics::Stats;

/// Adds `get_or_load` — the same engine and options as [`Layered`] — to any [`Cache`].
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use layercache::{Cache, LoadOptions, LoadingCache, MemoryCache};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> layercache::Result<()> {
/// let layer: Arc<dyn Cache<u64>> = Arc::new(MemoryCache::builder().build()?);
/// let cache = LoadingCache::new(layer);
/// let v = cache
///     .get_or_load("answer", || async { Ok::<_, std::io::Error>(42) }, LoadOptions::default())
///     .await?;
/// assert_eq!(v, 42);
/// assert_eq!(cache.stats().loads, 1);
/// # Ok(())
/// # }
/// ```
pub struct LoadingCache<C, V> {
    inner: Arc<C>,
    front: Layered<V>,
}

impl<C, V> fmt::Debug for LoadingCache<C, V>
where
    C: fmt::Debug,
    V: Send + Sync + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadingCache")
            .field("inner", &self.inner)
            .field("front", &self.front)
            .finish()
    }
}

impl<C, V> LoadingCache<C, V>
where
    C: Cache<V> + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Wrap `cache`. Metrics are labelled with `cache.name()`; values loaded without an explicit
    /// lifetime live for [`DEFAULT_TTL`](super::DEFAULT_TTL).
    pub fn new(cache: C) -> Self {
        let inner = Arc::new(cache);
        let front = Self::front(&inner, LoadOptions::default());
        LoadingCache { inner, front }
    }

    /// The loading front over `inner` (default options already checked).
    fn front(inner: &Arc<C>, defaults: LoadOptions) -> Layered<V> {
        let name = match inner.name() {
            "" => "loading",
            name => name,
        };
        Layered::single(Arc::clone(inner))
            .name(name)
            .default_options(defaults)
            .assemble()
    }

    /// Wrap `cache` with default options for every call (each call's options override them).
    ///
    /// # Errors
    ///
    /// [`Error::Config`](crate::Error::Config) when [`LoadOptions::validate`] rejects `defaults`.
    pub fn with_options(cache: C, defaults: LoadOptions) -> Result<Self> {
        defaults.validate()?;
        let inner = Arc::new(cache);
        let front = Self::front(&inner, defaults);
        Ok(LoadingCache { inner, front })
    }

    /// Lifetime of loaded values when the call does not set one.
    #[must_use]
    pub fn with_default_ttl(self, ttl: Duration) -> Self {
        let defaults = self.front.inner.defaults.clone().with_ttl(ttl);
        let front = Self::front(&self.inner, defaults);
        LoadingCache {
            inner: self.inner,
            front,
        }
    }

    /// The wrapped cache.
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// The value under `key` if it is fresh; otherwise run `loader` once — however many callers
    /// ask at the same time — store its value and return it to all of them. Every
    /// [`LoadOptions`] setting applies, as on [`Layered::get_or_load`].
    ///
    /// See the [module docs](crate::load) for how the loader may capture data.
    ///
    /// # Errors
    ///
    /// As [`Layered::get_or_load`].
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
        self.front.get_or_load(key, loader, options).await
    }

    /// [`get_or_load`](Self::get_or_load) with the answer's [`Source`](super::Source) and lifetimes.
    ///
    /// # Errors
    ///
    /// As [`Layered::get_or_load`].
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
        self.front.get_or_load_answer(key, loader, options).await
    }

    /// Loader run times since creation (see [`Layered::load_latency`]).
    pub fn load_latency(&self) -> crate::instrument::LatencySnapshot {
        self.front.load_latency()
    }

    /// Loads running right now.
    pub fn pending_loads(&self) -> usize {
        self.front.pending_loads()
    }

    /// Counters since creation: answers of `get_or_load`, loads and joined callers, and in
    /// `errors` the wrapped cache's operations that failed (each such call was answered by the
    /// loader).
    pub fn stats(&self) -> Stats {
        self.front.stats()
    }
}

/// What every cache with a `get_or_load` offers — [`Layered`], [`MemoryCache`](crate::MemoryCache)
/// and [`LoadingCache`] — so that code can be written once against any of them.
///
/// ```
/// use std::time::Duration;
/// use layercache::{GetOrLoad, Layered, LoadOptions, MemoryCache};
///
/// async fn reply<C: GetOrLoad<String>>(cache: &C, prompt: &str) -> layercache::Result<String> {
///     let prompt = prompt.to_owned();
///     cache
///         .get_or_load(&format!("chat:{prompt}"), move || async move {
///             Ok::<_, std::io::Error>(format!("echo {prompt}"))
///         }, LoadOptions::ttl(Duration::from_secs(60)))
///         .await
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> layercache::Result<()> {
/// let memory = MemoryCache::builder().build()?;
/// assert_eq!(reply(&memory, "hi").await?, "echo hi");
/// let layered = Layered::single(MemoryCache::builder().build()?).build()?;
/// assert_eq!(reply(&layered, "hi").await?, "echo hi");
/// # Ok(())
/// # }
/// ```
pub trait GetOrLoad<V>: Send + Sync
where
    V: Clone + Send + Sync + 'static,
{
    /// See [`Layered::get_or_load`].
    fn get_or_load<F, Fut, E>(
        &self,
        key: &str,
        loader: F,
        options: LoadOptions,
    ) -> impl Future<Output = Result<V>> + Send
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static;

    /// See [`Layered::get_or_load_answer`].
    fn get_or_load_answer<F, Fut, E>(
        &self,
        key: &str,
        loader: F,
        options: LoadOptions,
    ) -> impl Future<Output = Result<Answer<V>>> + Send
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static;

    /// The cache's counters.
    fn stats(&self) -> Stats;
}

macro_rules! impl_get_or_load {
    ($(impl[$($gen:tt)*] for $ty:ty where [$($bounds:tt)*];)*) => {$(
        impl<$($gen)*> GetOrLoad<V> for $ty
        where
            V: Clone + Send + Sync + 'static,
            $($bounds)*
        {
            fn get_or_load<F, Fut, E>(
                &self,
                key: &str,
                loader: F,
                options: LoadOptions,
            ) -> impl Future<Output = Result<V>> + Send
            where
                F: FnOnce() -> Fut + Send + 'static,
                Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
                E: Into<BoxError> + 'static,
            {
                <$ty>::get_or_load(self, key, loader, options)
            }

            fn get_or_load_answer<F, Fut, E>(
                &self,
                key: &str,
                loader: F,
                options: LoadOptions,
            ) -> impl Future<Output = Result<Answer<V>>> + Send
            where
                F: FnOnce() -> Fut + Send + 'static,
                Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
                E: Into<BoxError> + 'static,
            {
                <$ty>::get_or_load_answer(self, key, loader, options)
            }

            fn stats(&self) -> Stats {
                <$ty>::stats(self)
            }
        }
    )*};
}

impl_get_or_load! {
    impl[V] for Layered<V> where [];
    impl[V] for crate::memory::MemoryCache<V> where [];
    impl[C, V] for LoadingCache<C, V> where [C: Cache<V> + 'static,];
}

#[async_trait]
impl<C, V> Cache<V> for LoadingCache<C, V>
where
    C: Cache<V> + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn get<'a>(&'a self, key: &'a str) -> crate::cache::CacheGet<'a, V> {
        self.inner.get(key)
    }
    async fn peek(&self, key: &str) -> Result<Option<Entry<V>>> {
        self.inner.peek(key).await
    }
    async fn set(&self, key: &str, entry: Entry<V>) -> Result<()> {
        self.front.inner.flights.supersede(key);
        self.inner.set(key, entry).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.front.inner.flights.supersede(key);
        self.inner.delete(key).await
    }
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Entry<V>>>> {
        self.inner.get_many(keys).await
    }
    async fn set_many(&self, entries: Vec<(&str, Entry<V>)>) -> Result<()> {
        for (key, _) in &entries {
            self.front.inner.flights.supersede(key);
        }
        self.inner.set_many(entries).await
    }
    async fn set_if_newer(&self, key: &str, entry: Entry<V>) -> Result<bool> {
        self.front.inner.flights.supersede(key);
        self.inner.set_if_newer(key, entry).await
    }
    async fn delete_if_older(&self, key: &str, than: std::time::SystemTime) -> Result<bool> {
        self.front.inner.flights.supersede(key);
        self.inner.delete_if_older(key, than).await
    }
    async fn set_many_if_newer(&self, entries: Vec<(&str, Entry<V>)>) -> Result<Vec<bool>> {
        for (key, _) in &entries {
            self.front.inner.flights.supersede(key);
        }
        self.inner.set_many_if_newer(entries).await
    }
}
