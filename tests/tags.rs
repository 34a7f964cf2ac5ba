//! Tags and clear: `invalidate_tag` expires every entry carrying the tag at once (lazily, by
//! time), leaves other entries alone, keeps expired values as fail-safe fallbacks; `clear`
//! expires everything. Memory-only here; across processes in `fleet.rs`.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use layercache::{Cache, CacheExt, Entry, Error, Layered, LoadOptions, Source};
use support::openai::{completion, ChatCompletion};

fn cache() -> Layered<ChatCompletion> {
    Layered::single(support::memory_builder().build().expect("memory"))
        .name("tags")
        .build()
        .expect("cache")
}

/// `get_or_load` of `key` with `options`, counting loads in `loads`.
async fn load(
    cache: &Layered<ChatCompletion>,
    key: &str,
    n: u64,
    options: &LoadOptions,
    loads: &Arc<AtomicUsize>,
) -> layercache::Result<layercache::Answer<ChatCompletion>> {
    let loads = Arc::clone(loads);
    cache
        .get_or_load_answer(
            key,
            move || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(completion(n))
            },
            options.clone(),
        )
        .await
}

#[tokio::test]
async fn invalidating_a_tag_reloads_its_entries_only() {
    let cache = cache();
    let loads = Arc::new(AtomicUsize::new(0));
    let ttl = LoadOptions::ttl(Duration::from_secs(3600));
    let user = ttl.clone().with_tags(["user:1", "model:gpt-4o"]);
    let other = ttl.clone().with_tags(["user:2", "model:gpt-4o"]);
    load(&cache, "a", 1, &user, &loads).await.expect("a");
    load(&cache, "b", 2, &other, &loads).await.expect("b");
    load(&cache, "c", 3, &ttl, &loads).await.expect("c");
    assert_eq!(loads.load(Ordering::SeqCst), 3);
    // Hits, tagged or not.
    for key in ["a", "b", "c"] {
        let hit = load(&cache, key, 0, &ttl, &loads).await.expect("hit");
        assert_eq!(hit.source, Source::L1Hit, "{key}");
    }
    cache.invalidate_tag("user:1").await.expect("invalidate");
    assert_eq!(cache.get_value("a").await.expect("get"), None, "expired");
    assert!(cache.get_value("b").await.expect("get").is_some());
    assert!(cache.get_value("c").await.expect("get").is_some());
    let again = load(&cache, "a", 11, &user, &loads).await.expect("reload");
    assert_eq!(again.source, Source::Loaded);
    assert_eq!(again.value.id, completion(11).id);
    // The new entry was created after the invalidation: a hit.
    assert_eq!(
        load(&cache, "a", 0, &user, &loads)
            .await
            .expect("hit")
            .source,
        Source::L1Hit
    );
    // A shared tag reaches both.
    cache
        .invalidate_tag("model:gpt-4o")
        .await
        .expect("invalidate");
    assert_eq!(cache.get_value("a").await.expect("get"), None);
    assert_eq!(cache.get_value("b").await.expect("get"), None);
    assert!(cache.get_value("c").await.expect("get").is_some());
}

#[tokio::test]
async fn an_invalidated_entry_is_still_a_fail_safe_fallback() {
    let cache = cache();
    let options = LoadOptions::ttl(Duration::from_secs(3600))
        .with_fail_safe(Duration::from_secs(3600))
        .with_tags(["doc:9"]);
    let loads = Arc::new(AtomicUsize::new(0));
    load(&cache, "q", 1, &options, &loads).await.expect("load");
    cache.invalidate_tag("doc:9").await.expect("invalidate");
    let answer = cache
        .get_or_load_answer(
            "q",
            || async { Err::<ChatCompletion, _>(std::io::Error::other("provider down")) },
            options,
        )
        .await
        .expect("fail-safe");
    assert_eq!(answer.source, Source::FailSafe);
    assert_eq!(answer.value.id, completion(1).id);
}

#[tokio::test]
async fn set_with_tags_and_clear() {
    let cache = cache();
    let ttl = Duration::from_secs(3600);
    cache
        .set("x", Entry::new(completion(1), ttl).with_tags(["t"]))
        .await
        .expect("set");
    cache.set_value("y", completion(2), ttl).await.expect("set");
    cache.invalidate_tag("t").await.expect("invalidate");
    assert_eq!(cache.get_value("x").await.expect("get"), None);
    assert!(cache.get_value("y").await.expect("get").is_some());
    cache.clear().await.expect("clear");
    assert_eq!(cache.get_value("y").await.expect("get"), None);
    cache.set_value("z", completion(3), ttl).await.expect("set");
    assert!(
        cache.get_value("z").await.expect("get").is_some(),
        "after clear"
    );
}

/// A load that started before a `clear` and ends after it answers its callers, but its value
/// (created when the load started, so older than the clear) is not kept: a hit in memory does
/// not look at the clear time, and the value would have been served for its whole lifetime.
#[tokio::test]
async fn a_load_that_spans_a_clear_answers_its_callers_but_is_not_kept() {
    use tokio::sync::Notify;
    let cache = cache();
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let load = tokio::spawn({
        let (cache, started, release) = (cache.clone(), started.clone(), release.clone());
        async move {
            cache
                .get_or_load(
                    "k",
                    move || async move {
                        started.notify_one();
                        release.notified().await;
                        Ok::<_, std::io::Error>(completion(1))
                    },
                    LoadOptions::ttl(Duration::from_secs(3600)),
                )
                .await
        }
    });
    started.notified().await;
    cache.clear().await.expect("clear");
    release.notify_one();
    let answered = load.await.expect("task").expect("load");
    assert_eq!(answered.id, completion(1).id, "the caller has its value");
    assert_eq!(
        cache.get_value("k").await.expect("get"),
        None,
        "a value loaded from before the clear is not kept"
    );
}

#[tokio::test]
async fn bad_tags_are_config_errors() {
    let cache = cache();
    let too_many: Vec<String> = (0..=layercache::tags::MAX_TAGS)
        .map(|i| format!("t{i}"))
        .collect();
    let loads = Arc::new(AtomicUsize::new(0));
    for options in [
        LoadOptions::new().with_tags([""]),
        LoadOptions::new().with_tags(["x".repeat(256)]),
        LoadOptions::new().with_tags(too_many.clone()),
    ] {
        let got = load(&cache, "k", 1, &options, &loads).await;
        assert!(matches!(got, Err(Error::Config { .. })), "{got:?}");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 0);
    let set = cache
        .set(
            "k",
            Entry::new(completion(1), Duration::from_secs(1)).with_tags(too_many),
        )
        .await;
    assert!(matches!(set, Err(Error::Config { .. })), "{set:?}");
    assert!(matches!(
        cache.invalidate_tag("").await,
        Err(Error::Config { .. })
    ));
    // An over-long tag (a whole prompt by mistake) is named by its start, not copied whole into
    // the error.
    match cache.invalidate_tag(&"p".repeat(100_000)).await {
        Err(Error::Config { reason }) => {
            assert!(reason.contains("100000"), "{reason}");
            assert!(reason.len() < 200, "{} bytes", reason.len());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_memory_cache_invalidates_its_tags_too() {
    let memory = support::memory_builder::<ChatCompletion>()
        .build()
        .expect("memory");
    let options = LoadOptions::ttl(Duration::from_secs(3600)).with_tags(["user:7"]);
    memory
        .get_or_load(
            "m",
            || async { Ok::<_, std::io::Error>(completion(1)) },
            options.clone(),
        )
        .await
        .expect("load");
    assert!(memory.get_value("m").await.expect("get").is_some());
    memory.invalidate_tag("user:7").await.expect("invalidate");
    assert_eq!(memory.get_value("m").await.expect("get"), None);
    let reloaded = memory
        .get_or_load(
            "m",
            || async { Ok::<_, std::io::Error>(completion(2)) },
            options,
        )
        .await
        .expect("reload");
    assert_eq!(reloaded.id, completion(2).id);
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn an_l2_without_a_backplane_cannot_take_an_invalidation() {
    let server = support::redis::RedisServer::start();
    let l2 = layercache::RedisCache::<ChatCompletion>::builder()
        .url(server.url())
        .namespace("tags")
        .build()
        .await
        .expect("redis");
    let cache = Layered::builder(support::memory_builder().build().expect("memory"), l2)
        .build()
        .expect("cache");
    let got = cache.invalidate_tag("user:1").await;
    assert!(matches!(got, Err(Error::Config { .. })), "{got:?}");
    assert!(matches!(cache.clear().await, Err(Error::Config { .. })));
}

/// Creation times come from the wall clock, deadlines are compared with the crate's calibrated
/// clock; the two may differ by a millisecond or so.
const SLACK: Duration = Duration::from_millis(100);

/// Time from now until `when` (zero once past).
fn left(when: std::time::SystemTime) -> Duration {
    when.duration_since(std::time::SystemTime::now())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_tagged_entry_lives_at_most_the_tag_retention() {
    let retention = Duration::from_secs(5);
    let cache = Layered::single(support::memory_builder().build().expect("memory"))
        .tag_retention(retention)
        .build()
        .expect("cache");
    let loads = Arc::new(AtomicUsize::new(0));
    let ttl =
        LoadOptions::ttl(Duration::from_secs(3600)).with_fail_safe(Duration::from_secs(86_400));
    let tagged = load(
        &cache,
        "tagged",
        1,
        &ttl.clone().with_tags(["user:1"]),
        &loads,
    )
    .await
    .expect("tagged");
    assert!(
        left(tagged.stale_until()) <= retention + SLACK,
        "{:?}",
        left(tagged.stale_until())
    );
    assert!(
        tagged.time_to_fresh_end() <= retention + SLACK,
        "{:?} {:?}",
        tagged.time_to_fresh_end(),
        tagged.source
    );
    let plain = load(&cache, "plain", 2, &ttl, &loads).await.expect("plain");
    assert!(
        plain.time_to_fresh_end() > Duration::from_secs(3000),
        "untagged entries keep theirs"
    );
    let hit = load(&cache, "tagged", 0, &ttl, &loads).await.expect("hit");
    assert_eq!(hit.source, Source::L1Hit);
    assert!(left(hit.stale_until()) <= retention + SLACK);

    // Under a second, or zero, is refused; `Duration::MAX` keeps whole lifetimes.
    for bad in [Duration::ZERO, Duration::from_millis(999)] {
        let refused: layercache::Result<Layered<ChatCompletion>> =
            Layered::single(support::memory_builder().build().expect("memory"))
                .tag_retention(bad)
                .build();
        assert!(matches!(refused, Err(Error::Config { .. })), "{bad:?}");
    }
    let unbounded = Layered::single(support::memory_builder().build().expect("memory"))
        .tag_retention(Duration::MAX)
        .build()
        .expect("cache");
    let kept = load(
        &unbounded,
        "tagged",
        3,
        &ttl.clone().with_tags(["user:1"]),
        &loads,
    )
    .await
    .expect("tagged");
    assert!(kept.time_to_fresh_end() > Duration::from_secs(3000));
    // A MemoryCache's own get_or_load keeps every entry's lifetime (no tag time leaves it).
    let memory = support::memory_builder().build().expect("memory");
    let own = memory
        .get_or_load_answer(
            "tagged",
            || async { Ok::<_, std::io::Error>(completion(4)) },
            ttl.with_tags(["user:1"]),
        )
        .await
        .expect("tagged");
    assert!(own.time_to_fresh_end() > Duration::from_secs(3000));
}
