//! Spans (feature `tracing`): `layercache.get_or_load` with how the call was answered,
//! `layercache.load` as its child running the loader — so the caller's span follows its load onto
//! the detached task — and `layercache.redis` for each Redis command. Asserted with a test
//! subscriber that records names, fields and parents.

#![cfg(feature = "tracing")]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use layercache::{Layered, LoadOptions, MemoryCache};
use tracing::span::{Attributes, Id, Record};
use tracing::Instrument;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// A span as the test saw it.
#[derive(Debug, Clone, Default)]
struct Seen {
    name: &'static str,
    parent: Option<&'static str>,
    fields: HashMap<&'static str, String>,
}

#[derive(Default)]
struct Spans(Mutex<HashMap<u64, Seen>>);

struct Fields<'a>(&'a mut HashMap<&'static str, String>);
impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
}

struct Recorder(Arc<Spans>);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut seen = Seen {
            name: attrs.metadata().name(),
            parent: ctx.span(id).and_then(|s| s.parent()).map(|p| p.name()),
            ..Seen::default()
        };
        attrs.record(&mut Fields(&mut seen.fields));
        if let Ok(mut spans) = self.0 .0.lock() {
            spans.insert(id.into_u64(), seen);
        }
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Ok(mut spans) = self.0 .0.lock() {
            if let Some(seen) = spans.get_mut(&id.into_u64()) {
                values.record(&mut Fields(&mut seen.fields));
            }
        }
    }
}

/// The one subscriber of this test binary (the load runs on a worker thread).
fn spans() -> Arc<Spans> {
    static SPANS: OnceLock<Arc<Spans>> = OnceLock::new();
    SPANS
        .get_or_init(|| {
            let spans = Arc::new(Spans::default());
            let subscriber = tracing_subscriber::registry().with(Recorder(Arc::clone(&spans)));
            tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
            spans
        })
        .clone()
}

fn find(spans: &Spans, name: &str, cache: &str) -> Vec<Seen> {
    spans
        .0
        .lock()
        .expect("lock")
        .values()
        .filter(|s| s.name == name && s.fields.get("cache").map(String::as_str) == Some(cache))
        .cloned()
        .collect()
}

#[test]
fn get_or_load_and_its_load_are_spans_under_the_callers_span() {
    let spans = spans();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let cache = Layered::single(MemoryCache::builder().build().expect("cache"))
            .name("traced")
            .build()
            .expect("layered");
        let parent_in_loader = cache
            .get_or_load(
                "a",
                || async {
                    // The loader runs on a detached task, in the load span.
                    let name = tracing::Span::current()
                        .metadata()
                        .map_or("<none>", |m| m.name());
                    Ok::<_, std::io::Error>(name.to_owned())
                },
                LoadOptions::ttl(Duration::from_secs(60)),
            )
            .instrument(tracing::info_span!("chat_request", user = 7))
            .await
            .expect("load");
        assert_eq!(parent_in_loader, "layercache.load");
        // A hit.
        cache
            .get_or_load(
                "a",
                || async { Ok::<_, std::io::Error>(String::new()) },
                LoadOptions::default(),
            )
            .instrument(tracing::info_span!("chat_request", user = 8))
            .await
            .expect("hit");
    });
    let calls = find(&spans, "layercache.get_or_load", "traced");
    assert_eq!(calls.len(), 2, "{calls:?}");
    let loaded = calls
        .iter()
        .find(|s| s.fields.get("source").map(String::as_str) == Some("loaded"))
        .expect("the loading call");
    assert_eq!(
        loaded.parent,
        Some("chat_request"),
        "a child of the caller's span"
    );
    assert_eq!(
        loaded.fields.get("layer").map(String::as_str),
        Some("loader")
    );
    assert_eq!(
        loaded.fields.get("joined").map(String::as_str),
        Some("false")
    );
    assert_eq!(loaded.fields.get("outcome").map(String::as_str), Some("ok"));
    let hit = calls
        .iter()
        .find(|s| s.fields.get("source").map(String::as_str) == Some("l1_hit"))
        .expect("the hit");
    assert_eq!(hit.fields.get("layer").map(String::as_str), Some("l1"));
    assert_eq!(hit.parent, Some("chat_request"));
    let loads = find(&spans, "layercache.load", "traced");
    assert_eq!(loads.len(), 1);
    assert_eq!(loads[0].parent, Some("layercache.get_or_load"));
    assert_eq!(
        loads[0].fields.get("outcome").map(String::as_str),
        Some("ok")
    );
}

#[cfg(all(feature = "redis", feature = "msgpack"))]
#[test]
fn each_redis_command_is_a_span() {
    use layercache::{Cache, CacheExt, Layered, MemoryCache, RedisCache};
    let spans = spans();
    let server = support::redis::RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let l2 = RedisCache::<String>::builder()
            .name("traced-redis")
            .url(server.url())
            .build()
            .await
            .expect("redis");
        l2.set_value("k", "v".into(), Duration::from_secs(60))
            .await
            .expect("set");
        assert!(l2.get("k").await.expect("get").is_some());
        l2.delete("k").await.expect("delete");
        // A change through a `Layered` runs on a task of its own, in the caller's span.
        let stack = Layered::builder(MemoryCache::builder().build().expect("l1"), l2.clone())
            .build()
            .expect("stack");
        stack
            .set_value("k2", "v".into(), Duration::from_secs(60))
            .instrument(tracing::info_span!("update_request"))
            .await
            .expect("set through the stack");
    });
    let under_request = find(&spans, "layercache.redis", "traced-redis")
        .into_iter()
        .filter(|s| s.parent == Some("update_request"))
        .count();
    assert_eq!(
        under_request, 1,
        "the stack's Redis set is the request's child"
    );
    let ops: Vec<String> = find(&spans, "layercache.redis", "traced-redis")
        .into_iter()
        .filter_map(|s| s.fields.get("op").cloned())
        .collect();
    for op in ["set", "get", "delete"] {
        assert!(ops.iter().any(|o| o == op), "{op} in {ops:?}");
    }
}
