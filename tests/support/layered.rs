//! A `Layered` stack of a memory L1 over a real Redis L2, and counting loaders: what the
//! `layered*` test files share.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use layercache::{Layered, MemoryCache, RedisCache, Stats};

use super::redis::RedisServer;

pub struct Stack {
    pub cache: Layered<String>,
    pub l1: MemoryCache<String>,
    pub l2: RedisCache<String>,
    pub _server: RedisServer,
}

pub async fn stack_with(
    configure: impl FnOnce(layercache::LayeredBuilder<String>) -> layercache::LayeredBuilder<String>,
) -> Stack {
    let server = RedisServer::start();
    let l1 = MemoryCache::builder().name("l1").build().expect("l1");
    let l2 = RedisCache::builder()
        .name("l2")
        .url(server.url())
        .namespace("lay")
        .build()
        .await
        .expect("l2");
    let cache = configure(Layered::builder(l1.clone(), l2.clone()).name("stack"))
        .build()
        .expect("layered");
    Stack {
        cache,
        l1,
        l2,
        _server: server,
    }
}

pub async fn stack() -> Stack {
    stack_with(|b| b).await
}

/// Every answer counted exactly once; loads equal the loader's own count.
pub fn assert_accounting(stats: Stats, calls: usize, loader_calls: usize) {
    assert_eq!(
        stats.requests(),
        calls as u64,
        "hits + misses + stale + joined = requests: {stats:?}"
    );
    assert_eq!(
        stats.loads, loader_calls as u64,
        "loads = loader invocations: {stats:?}"
    );
}

#[derive(Debug)]
pub struct Down;
impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("provider down")
    }
}
impl std::error::Error for Down {}

pub fn counting(
    calls: &Arc<AtomicUsize>,
    result: Result<&'static str, Down>,
    delay: Duration,
) -> impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, Down>> + Send>>
{
    let calls = Arc::clone(calls);
    move || {
        Box::pin(async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            result.map(str::to_owned)
        })
    }
}
