//! Shared test helpers. Each test file includes what it needs with `mod support;`.
#![allow(dead_code, unreachable_pub)]

pub mod chat;
#[cfg(all(feature = "redis", feature = "msgpack"))]
pub mod fleet;
pub mod frames;
#[cfg(all(feature = "redis", feature = "postcard"))]
pub mod layered;
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

/// `get_or_load` of key `k{i}` whose loader answers `v{i}` (60 s lifetime), failing the test on
/// any caller error: what the start-up and restart tests ask while Redis comes and goes.
pub async fn load_kv(cache: &layercache::Layered<String>, i: u64) -> String {
    cache
        .get_or_load(
            &format!("k{i}"),
            move || async move { Ok::<_, std::io::Error>(format!("v{i}")) },
            layercache::LoadOptions::ttl(std::time::Duration::from_secs(60)),
        )
        .await
        .expect("no caller error while Redis comes and goes")
}

/// A runtime of its own for the callers of a burst, beside the one a cache's connections (and
/// its backplane's publisher) run on: tens of thousands of tasks of a debug build on 2 CPUs
/// would otherwise keep those from reading replies in time.
pub fn callers_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("callers' runtime")
}

/// A small seeded generator (xorshift64*), so a failing run can be replayed.
pub struct Rng(pub u64);

impl Rng {
    /// The next draw, in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// The number in environment variable `name`, else `default` (the random tests' seed and length).
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
