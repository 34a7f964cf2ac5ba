//! The [`Cache`] trait every layer implements, and [`CacheExt`] conveniences on top of it.

use std::sync::Arc;
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
/// with a native batch operation (Redis `MGET`, pipelines) override them.
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
    async fn get(&self, key: &str) -> Result<Option<Entry<V>>>;

    /// The answer to [`get`](Cache::get) without awaiting, if this cache can give one at once (an
    /// in-memory layer); `None` means "call `get`". Layered caches use it to skip a boxed future
    /// on the L1-hit path. The default is `None`.
    fn get_immediate(&self, key: &str) -> Option<Option<Entry<V>>> {
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
}

/// The boxed future an `#[async_trait]` method returns.
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

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
            fn get_immediate(&self, key: &str) -> Option<Option<Entry<V>>> {
                (**self).get_immediate(key)
            }
            fn get<'s, 'k, 'f>(&'s self, key: &'k str) -> BoxFuture<'f, Result<Option<Entry<V>>>>
            where
                's: 'f,
                'k: 'f,
                Self: 'f,
            {
                (**self).get(key)
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
        }
    )*};
}

forward_cache_impl!(Arc, Box);

/// Conveniences for every [`Cache`]: work with bare values instead of entries.
#[async_trait]
pub trait CacheExt<V>: Cache<V>
where
    V: Send + Sync + 'static,
{
    /// The value under `key` if it is there and **fresh**; a stale entry counts as absent.
    async fn get_value(&self, key: &str) -> Result<Option<V>> {
        Ok(self
            .get(key)
            .await?
            .filter(Entry::is_fresh)
            .map(Entry::into_value))
    }

    /// Store `value` under `key`, fresh for `ttl`.
    async fn set_value(&self, key: &str, value: V, ttl: Duration) -> Result<()> {
        self.set(key, Entry::new(value, ttl)).await
    }
}

impl<V, C> CacheExt<V> for C
where
    V: Send + Sync + 'static,
    C: Cache<V> + ?Sized,
{
}
