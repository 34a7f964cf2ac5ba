//! The caller's span follows its load: the loader runs on a detached task, inside the span of
//! the caller that started it (feature `tracing`).

#![cfg(feature = "tracing")]

use std::time::Duration;

use layercache::{LoadOptions, MemoryCache};
use tracing::Instrument;

/// The name of the span current inside the loader.
async fn span_seen_by_loader(cache: &MemoryCache<String>, key: &str) -> String {
    cache
        .get_or_load(
            key,
            || async {
                let name = tracing::Span::current()
                    .metadata()
                    .map_or("<none>", |m| m.name());
                Ok::<_, std::io::Error>(name.to_owned())
            },
            LoadOptions::ttl(Duration::from_secs(60)),
        )
        .await
        .expect("load")
}

#[test]
fn the_loader_runs_in_the_callers_span() {
    // A registry tracks the current span per thread, as any real subscriber does; installed for
    // the whole test binary, since the load runs on a runtime worker thread.
    tracing::subscriber::set_global_default(tracing_subscriber::registry())
        .expect("the only subscriber of this test binary");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let cache = MemoryCache::builder().build().expect("cache");
        let seen = span_seen_by_loader(&cache, "a")
            .instrument(tracing::info_span!("chat_request", user = 7))
            .await;
        assert_eq!(seen, "chat_request");
        // Without a span around the caller, the loader has none either.
        let seen = span_seen_by_loader(&cache, "b").await;
        assert_eq!(seen, "<none>");
    });
}
