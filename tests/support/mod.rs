//! Shared test helpers. Each test file includes what it needs with `mod support;`.
#![allow(dead_code, unreachable_pub)]

pub mod chat;
#[cfg(all(feature = "redis", feature = "msgpack"))]
pub mod fleet;
pub mod frames;
pub mod openai;
#[cfg(feature = "redis")]
pub mod proxy;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "tls")]
pub mod tls;

/// A `MemoryCache` builder on the engine named by `LAYERCACHE_TEST_ENGINE` (`moka`, the default,
/// or `quick-cache`), so the same tests run on both engines (scripts/test.sh runs both).
pub fn memory_builder<V: Clone + Send + Sync + 'static>() -> layercache::MemoryCacheBuilder<V> {
    layercache::MemoryCache::builder().engine(test_engine())
}

/// The engine selected for this test run.
pub fn test_engine() -> layercache::Engine {
    match std::env::var("LAYERCACHE_TEST_ENGINE").as_deref() {
        Err(_) | Ok("") | Ok("moka") => layercache::Engine::Moka,
        #[cfg(feature = "quick-cache")]
        Ok("quick-cache") => layercache::Engine::QuickCache,
        Ok(other) => panic!(
            "LAYERCACHE_TEST_ENGINE={other} is not available in this build (moka, or quick-cache with --features quick-cache)"
        ),
    }
}
