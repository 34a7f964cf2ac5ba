//! A read from L2 that races with a change made on the same replica: the value read before the
//! change is answered to its caller, but never outlives the change in L1. And only a change of
//! the key read takes the read's copy out of L1 again: changes of other keys, here or in the
//! fleet, leave it.
//!
//! L2 is a layer of the test's over a real Redis ([`GatedReads`]) that holds each read's
//! answer until the test lets it go, so that the change lands while the read is on its way.

#![cfg(all(feature = "redis", feature = "msgpack"))]

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use layercache::{Cache, CacheExt, Entry, Layered, MemoryCache, RedisCache};
use support::fleet::{replica_cache, wait_subscribed};
use support::redis::RedisServer;
use support::Rng;

/// Holds the next call that passes it, once closed, until the test opens it (the calls after
/// that one pass).
struct Gate {
    closed: AtomicBool,
    waiting: AtomicUsize,
    permits: tokio::sync::Semaphore,
}

impl Default for Gate {
    fn default() -> Gate {
        Gate {
            closed: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            permits: tokio::sync::Semaphore::new(0),
        }
    }
}

impl Gate {
    /// Hold the next call.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Let the call held go.
    fn open(&self) {
        self.permits
            .add_permits(self.waiting.swap(0, Ordering::SeqCst));
    }

    /// Wait (5 s at most) until a call is held.
    async fn holds_a_call(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.waiting.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "no call reached the gate");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Called by the layer: waits here if the gate is closed for this call.
    async fn pass(&self) {
        if self.closed.swap(false, Ordering::SeqCst) {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            self.permits.acquire().await.expect("gate").forget();
        }
    }
}

/// An L2 over Redis with three gates: `reads` holds a read's answer (Redis already read),
/// `writes` a conditional write's answer (Redis already written), `deletes` holds a delete
/// before it is sent to Redis.
struct GatedReads {
    inner: RedisCache<String>,
    reads: Gate,
    writes: Gate,
    deletes: Gate,
}

impl GatedReads {
    fn over(inner: RedisCache<String>) -> Arc<GatedReads> {
        Arc::new(GatedReads {
            inner,
            reads: Gate::default(),
            writes: Gate::default(),
            deletes: Gate::default(),
        })
    }
}

#[async_trait::async_trait]
impl Cache<String> for GatedReads {
    fn name(&self) -> &str {
        "gated-reads"
    }
    fn get<'a>(&'a self, key: &'a str) -> layercache::CacheGet<'a, String> {
        self.inner.get(key)
    }
    async fn peek(&self, key: &str) -> layercache::Result<Option<Entry<String>>> {
        let read = self.inner.peek(key).await;
        self.reads.pass().await;
        read
    }
    async fn set(&self, key: &str, entry: Entry<String>) -> layercache::Result<()> {
        self.inner.set(key, entry).await
    }
    async fn set_if_newer(&self, key: &str, entry: Entry<String>) -> layercache::Result<bool> {
        let written = self.inner.set_if_newer(key, entry).await;
        self.writes.pass().await;
        written
    }
    async fn delete(&self, key: &str) -> layercache::Result<()> {
        self.inner.delete(key).await
    }
    async fn delete_if_older(
        &self,
        key: &str,
        than: std::time::SystemTime,
    ) -> layercache::Result<bool> {
        self.deletes.pass().await;
        self.inner.delete_if_older(key, than).await
    }
}

/// A cache over a gated Redis L2 of its own namespace, and that Redis itself; `key` holds
/// "old" in Redis alone (the cache's L1 is cold).
async fn cache_with_old(
    server: &RedisServer,
    namespace: &str,
    key: &str,
) -> (Layered<String>, Arc<GatedReads>, RedisCache<String>) {
    let redis = RedisCache::<String>::builder()
        .url(server.url())
        .namespace(namespace)
        .build()
        .await
        .expect("redis");
    let gated = GatedReads::over(redis.clone());
    let cache = Layered::builder(MemoryCache::builder().build().expect("l1"), gated.clone())
        .build()
        .expect("cache");
    redis
        .set_value(key, "old".to_owned(), Duration::from_secs(600))
        .await
        .expect("set");
    (cache, gated, redis)
}

/// Read `key` through `cache` on a task of its own, its L2 read held at the gate; returns once
/// the read is held.
async fn read_held(
    cache: &Layered<String>,
    gated: &GatedReads,
    key: &'static str,
) -> tokio::task::JoinHandle<Option<String>> {
    gated.reads.close();
    let reader = cache.clone();
    let reading =
        tokio::spawn(async move { reader.get_value(key).await.expect("the racing read") });
    gated.reads.holds_a_call().await;
    reading
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_races_with_a_delete_does_not_bring_the_value_back() {
    let server = RedisServer::start();
    let (cache, gated, _redis) = cache_with_old(&server, "race-delete", "k").await;
    let reading = read_held(&cache, &gated, "k").await;
    cache.delete("k").await.expect("delete");
    gated.reads.open();
    // Read before the delete: that caller gets the old value.
    assert_eq!(reading.await.expect("read").as_deref(), Some("old"));
    assert_eq!(cache.get_value("k").await.expect("get"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_races_with_a_set_does_not_replace_the_new_value() {
    let server = RedisServer::start();
    let (cache, gated, redis) = cache_with_old(&server, "race-set", "k").await;
    let reading = read_held(&cache, &gated, "k").await;
    cache
        .set_value("k", "new".to_owned(), Duration::from_secs(600))
        .await
        .expect("set");
    gated.reads.open();
    assert_eq!(reading.await.expect("read").as_deref(), Some("old"));
    assert_eq!(
        cache.get_value("k").await.expect("get").as_deref(),
        Some("new")
    );
    assert_eq!(
        redis.get_value("k").await.expect("read").as_deref(),
        Some("new")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_races_with_an_expire_does_not_make_the_value_fresh_again() {
    let server = RedisServer::start();
    let (cache, gated, _redis) = cache_with_old(&server, "race-expire", "k").await;
    let reading = read_held(&cache, &gated, "k").await;
    cache.expire("k").await.expect("expire");
    gated.reads.open();
    assert_eq!(reading.await.expect("read").as_deref(), Some("old"));
    assert_eq!(cache.get_value("k").await.expect("get"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_starts_while_a_delete_is_on_its_way_does_not_bring_the_value_back() {
    let server = RedisServer::start();
    let (cache, gated, _redis) = cache_with_old(&server, "race-delete-late", "k").await;
    // The delete is held before it reaches Redis; a read then finds "old" there.
    gated.deletes.close();
    let deleter = cache.clone();
    let deleting = tokio::spawn(async move { deleter.delete("k").await });
    gated.deletes.holds_a_call().await;
    let reading = read_held(&cache, &gated, "k").await;
    // The delete ends (Redis, then L1) before the read copies what it found into L1.
    gated.deletes.open();
    deleting.await.expect("delete task").expect("delete");
    gated.reads.open();
    assert_eq!(reading.await.expect("read").as_deref(), Some("old"));
    assert_eq!(cache.get_value("k").await.expect("get"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_starts_while_an_expire_is_on_its_way_does_not_make_the_value_fresh_again() {
    let server = RedisServer::start();
    let (cache, gated, _redis) = cache_with_old(&server, "race-expire-late", "k").await;
    // In L1 too: the expire ends its freshness there first.
    assert_eq!(
        cache.get_value("k").await.expect("get").as_deref(),
        Some("old")
    );
    // The expire's read of Redis is held: Redis still has "old" fresh, and a read meanwhile
    // copies it into L1.
    gated.reads.close();
    let expirer = cache.clone();
    let expiring = tokio::spawn(async move { expirer.expire("k").await });
    gated.reads.holds_a_call().await;
    let _ = cache.get_value("k").await.expect("the read meanwhile");
    gated.reads.open();
    expiring.await.expect("expire task").expect("expire");
    assert_eq!(cache.get_value("k").await.expect("get"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_another_key_leaves_a_read_s_copy_in_l1() {
    let server = RedisServer::start();
    let (cache, gated, redis) = cache_with_old(&server, "race-other-key", "k").await;
    redis
        .set_value("other", "x".to_owned(), Duration::from_secs(600))
        .await
        .expect("set");
    let reading = read_held(&cache, &gated, "k").await;
    // Changes of another key while the read of "k" is on its way ("other" and "k" do not
    // share an invalidation counter).
    cache.delete("other").await.expect("delete");
    cache.expire("other").await.expect("expire");
    gated.reads.open();
    assert_eq!(reading.await.expect("read").as_deref(), Some("old"));
    let l2_hits = cache.stats().l2_hits;
    // The copy stayed: answered from L1.
    assert_eq!(
        cache.get_value("k").await.expect("get").as_deref(),
        Some("old")
    );
    assert_eq!(cache.stats().l2_hits, l2_hits, "read from Redis again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replica_s_writes_of_other_keys_leave_this_replica_s_copies_in_l1() {
    let server = RedisServer::start();
    let reader = replica_cache(&server.url(), "race-busy-fleet")
        .await
        .expect("reader");
    let writer = replica_cache(&server.url(), "race-busy-fleet")
        .await
        .expect("writer");
    wait_subscribed(&[&reader, &writer]).await;
    let keys: Vec<String> = (0..1000).map(|i| format!("read:{i}")).collect();
    for key in &keys {
        writer
            .set_value(key, format!("value of {key}"), Duration::from_secs(600))
            .await
            .expect("set");
    }
    // The writer rewrites one other key as fast as it can: every write is a message the
    // reader applies while its reads of Redis are on their way.
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicUsize::new(0));
    let busy = {
        let (writer, stop, writes) = (writer.clone(), stop.clone(), writes.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                writer
                    .set_value("busy", "x".to_owned(), Duration::from_secs(600))
                    .await
                    .expect("busy write");
                writes.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    for key in &keys {
        reader.get_value(key).await.expect("first read");
    }
    let copied = reader.stats().l2_hits;
    for key in &keys {
        reader.get_value(key).await.expect("second read");
    }
    let read_again = reader.stats().l2_hits - copied;
    stop.store(true, Ordering::Relaxed);
    busy.await.expect("writer task");
    assert_eq!(copied, keys.len() as u64, "the first reads came from Redis");
    assert!(
        writes.load(Ordering::Relaxed) > 100,
        "the writer wrote during the reads"
    );
    // A copy shares its invalidation counter with "busy" for about 1 key in 256 (5 of these);
    // with one counter for all keys, about half were read again here.
    assert!(
        read_again <= keys.len() as u64 / 50,
        "{read_again} of {} copies were taken out of L1 by writes of another key",
        keys.len()
    );
}

/// Set `key` to `value` through `cache` on a task of its own, its write held at the gate once
/// Redis took it; returns once the write is held.
async fn set_held(
    cache: &Layered<String>,
    gated: &GatedReads,
    key: &'static str,
    value: &'static str,
) -> tokio::task::JoinHandle<layercache::Result<()>> {
    gated.writes.close();
    let writer = cache.clone();
    let writing = tokio::spawn(async move {
        writer
            .set_value(key, value.to_owned(), Duration::from_secs(600))
            .await
    });
    gated.writes.holds_a_call().await;
    writing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_sets_on_one_replica_l1_keeps_the_one_redis_keeps() {
    let server = RedisServer::start();
    let (cache, gated, redis) = cache_with_old(&server, "race-two-sets", "k").await;
    // The first set reached Redis; the second, made later, replaces it there and in L1 before
    // the first set stores its value in L1.
    let first = set_held(&cache, &gated, "k", "first").await;
    cache
        .set_value("k", "second".to_owned(), Duration::from_secs(600))
        .await
        .expect("second set");
    gated.writes.open();
    first.await.expect("first set task").expect("first set");
    assert_eq!(
        redis.get_value("k").await.expect("read").as_deref(),
        Some("second")
    );
    assert_eq!(
        cache.get_value("k").await.expect("get").as_deref(),
        Some("second")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_whose_value_a_later_delete_removed_from_redis_leaves_l1_too() {
    let server = RedisServer::start();
    let (cache, gated, redis) = cache_with_old(&server, "race-set-delete", "k").await;
    // The set reached Redis; a delete made later removes it there (and from L1) before the set
    // stores its value in L1.
    let set = set_held(&cache, &gated, "k", "new").await;
    cache.delete("k").await.expect("delete");
    gated.writes.open();
    set.await.expect("set task").expect("set");
    assert_eq!(redis.get_value("k").await.expect("read"), None);
    assert_eq!(cache.get_value("k").await.expect("get"), None);
}

/// A load on one replica that started before another replica's `clear` and ends after this
/// replica applied it answers its callers, but is not kept in L1, where a hit does not look at
/// the clear time (Redis does not serve it either: it is older than the clear). Found by the
/// tagged random mix below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_spans_another_replica_s_clear_is_not_kept() {
    use tokio::sync::Notify;
    let server = RedisServer::start();
    let loader = replica_cache(&server.url(), "race-clear").await.expect("a");
    let clearer = replica_cache(&server.url(), "race-clear").await.expect("b");
    wait_subscribed(&[&loader, &clearer]).await;
    let ttl = Duration::from_secs(600);
    // A marker in the loader's L1, to see when the clear has been applied there.
    loader
        .set_value("marker", "m".to_owned(), ttl)
        .await
        .expect("set");
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let load = tokio::spawn({
        let (loader, started, release) = (loader.clone(), started.clone(), release.clone());
        async move {
            loader
                .get_or_load(
                    "k",
                    move || async move {
                        started.notify_one();
                        release.notified().await;
                        Ok::<_, std::io::Error>("loaded".to_owned())
                    },
                    layercache::LoadOptions::ttl(ttl),
                )
                .await
        }
    });
    started.notified().await;
    clearer.clear().await.expect("clear");
    let deadline = Instant::now() + Duration::from_secs(5);
    while loader.get_value("marker").await.expect("get").is_some() {
        assert!(Instant::now() < deadline, "the loader applied the clear");
        tokio::task::yield_now().await;
    }
    release.notify_one();
    assert_eq!(load.await.expect("task").expect("load"), "loaded");
    for (replica, who) in [(&loader, "the loader"), (&clearer, "the other replica")] {
        assert_eq!(
            replica.get_value("k").await.expect("get"),
            None,
            "{who} does not serve a value loaded from before the clear"
        );
    }
}

/// A load whose value a `delete` superseded while the load was writing it to Redis takes that
/// value out of Redis again — but never a newer value another replica wrote in the meantime.
/// Here the other replica's write (a `set` straight to Redis) comes while the undo is on its
/// way. Before, the undo read the key, found the load's value, and deleted the key in a second
/// command: the newer value was gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undoing_a_superseded_load_leaves_another_replica_s_newer_value() {
    let server = RedisServer::start();
    let (cache, gated, redis) = cache_with_old(&server, "race-unstore", "unused").await;
    let ttl = Duration::from_secs(600);
    // The load's write reaches Redis; its answer is held.
    gated.writes.close();
    let load = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_or_load(
                    "k",
                    || async { Ok::<_, std::io::Error>("loaded".to_owned()) },
                    layercache::LoadOptions::ttl(ttl),
                )
                .await
        }
    });
    gated.writes.holds_a_call().await;
    assert_eq!(
        redis.get_value("k").await.expect("read").as_deref(),
        Some("loaded")
    );
    // A delete supersedes the load; its own Redis call is held before it is sent.
    gated.deletes.close();
    let delete = tokio::spawn({
        let cache = cache.clone();
        async move { cache.delete("k").await }
    });
    gated.deletes.holds_a_call().await;
    // The load's write is answered: the load undoes it. Wait until the undo either holds a read
    // of the key or has taken the load's value out of Redis.
    gated.reads.close();
    gated.writes.open();
    let deadline = Instant::now() + Duration::from_secs(5);
    while gated.reads.waiting.load(Ordering::SeqCst) == 0
        && redis.get_value("k").await.expect("read").is_some()
    {
        assert!(Instant::now() < deadline, "the load did not undo its write");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Another replica writes the key now.
    redis
        .set_value("k", "newer".to_owned(), ttl)
        .await
        .expect("the other replica's set");
    gated.reads.open();
    gated.deletes.open();
    delete.await.expect("task").expect("delete");
    assert_eq!(load.await.expect("task").expect("load"), "loaded");
    assert_eq!(
        redis.get_value("k").await.expect("read").as_deref(),
        Some("newer"),
        "the other replica's newer value stays in Redis"
    );
}

/// Six tasks (three on each of two replicas) make random changes, loads and reads of six keys
/// at once; afterwards every replica serves what Redis holds. Seeded:
/// `LAYERCACHE_RACES_SEED` replays a run, `LAYERCACHE_RACES_STEPS` (default 300 a task) makes it
/// longer. A failure prints what each task did, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_changes_loads_and_reads_on_two_replicas_end_on_what_redis_holds() {
    random_mix("race-many", false, false).await;
}

/// The same with tagged loads, tag invalidations, `clear`, `invalidate_prefix` and `get_many`
/// in the mix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tags_clears_and_batches_on_two_replicas_end_on_what_redis_holds() {
    random_mix("race-many-tags", true, false).await;
}

/// The untagged mix while one replica's connections to Redis (its L2 and its backplane) go
/// through a proxy that, at random, resets them or answers 300 ms late (past the command
/// timeout); afterwards, with Redis reachable again, both replicas serve what Redis holds.
///
/// A soak, not run by default (`--ignored`, with `LAYERCACHE_RACES_SEED`/`_STEPS`): before the
/// fixes of late-landing changes (re-read after an unanswered failure) and of a superseded
/// load's undo (one compare-and-delete), about 1 run in 150 of 1,000 steps a task ended with
/// one replica on an older value than Redis holds; each cause now has a deterministic test of
/// its own in `tests/fleet_late_writes.rs` or above, and RELIABILITY.md gives the sweep figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak of random faults: run with --ignored (see its docs)"]
async fn concurrent_changes_through_faults_on_two_replicas_end_on_what_redis_holds() {
    random_mix("race-many-faults", false, true).await;
}

/// `result` of a step: with faults, an error (Redis unreachable, a timeout) is an answer too.
fn answered<T>(result: layercache::Result<T>, faults: bool, what: &str) {
    if let Err(e) = result {
        assert!(faults, "{what}: {e}");
    }
}

/// See `concurrent_changes_loads_and_reads_on_two_replicas_end_on_what_redis_holds`.
async fn random_mix(namespace: &str, tagged: bool, faults: bool) {
    const KEYS: u64 = 6;
    let seed = support::env_u64("LAYERCACHE_RACES_SEED", 0x0dd_5eed);
    let steps = support::env_u64("LAYERCACHE_RACES_STEPS", 300);
    let server = RedisServer::start();
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", server.port)
        .parse()
        .expect("address");
    let proxy = support::proxy::FaultProxy::start(upstream).await;
    let replicas = [
        replica_cache(&if faults { proxy.url() } else { server.url() }, namespace)
            .await
            .expect("a"),
        replica_cache(&server.url(), namespace).await.expect("b"),
    ];
    // What the replicas should serve: a cache that reads Redis on every call (its L1 keeps
    // nothing past 1 ms), tag and clear times included.
    let truth_l2 = RedisCache::<String>::builder()
        .url(server.url())
        .namespace(namespace)
        .build()
        .await
        .expect("redis");
    let truth = Layered::builder(
        MemoryCache::builder().build().expect("l1"),
        truth_l2.clone(),
    )
    .name("truth")
    .l1_ttl(Duration::from_millis(1))
    .backplane(truth_l2.backplane().await.expect("backplane"))
    .build()
    .expect("truth");
    wait_subscribed(&[&replicas[0], &replicas[1], &truth]).await;
    // Three tasks on each replica, each its own random mix of changes, loads and reads of a
    // few keys: the reads of Redis race with the changes of the same replica and the other's.
    // What each task did, in the order it did it (printed when the replicas diverge).
    let done: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let faulting = faults.then(|| {
        let (stop, done, mut rng) = (stop.clone(), done.clone(), Rng(seed ^ 0xfa17));
        let proxy = &proxy;
        async move {
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(30 + rng.below(120))).await;
                let mode = match rng.below(5) {
                    0 => support::proxy::Mode::Reset,
                    1 => support::proxy::Mode::Latency(Duration::from_millis(300)),
                    _ => support::proxy::Mode::Pass,
                };
                done.lock()
                    .expect("log")
                    .push(format!("{:?} proxy: {mode:?}", started.elapsed()));
                proxy.set(mode);
            }
            proxy.set(support::proxy::Mode::Pass);
        }
    });
    let mut tasks = Vec::new();
    for task in 0..6_u64 {
        let cache = replicas[(task % 2) as usize].clone();
        let mut rng = Rng((seed ^ (task + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let ttl = Duration::from_secs(600);
            for step in 0..steps {
                let key = format!("k{}", rng.below(KEYS));
                let value = format!("t{task}s{step}");
                let pause = Duration::from_micros(rng.below(3_000));
                let op = rng.below(if tagged { 12 } else { 8 });
                let begun = started.elapsed();
                let label = value.clone();
                let what = match op {
                    0 | 1 => {
                        answered(cache.set_value(&key, value, ttl).await, faults, "set");
                        "set"
                    }
                    2 => {
                        answered(cache.delete(&key).await, faults, "delete");
                        "delete"
                    }
                    3 => {
                        answered(cache.expire(&key).await, faults, "expire");
                        "expire"
                    }
                    4 => {
                        let other = format!("k{}", rng.below(KEYS));
                        let entries = [(&*key, value.clone()), (&*other, value)]
                            .into_iter()
                            .map(|(k, v)| (k, Entry::new(v, ttl)))
                            .collect();
                        answered(cache.set_many(entries).await, faults, "set_many");
                        "set_many"
                    }
                    5 => {
                        let mut options = layercache::LoadOptions::ttl(ttl);
                        if tagged {
                            options = options.with_tags([format!("t{}", rng.below(3))]);
                        }
                        let loaded = cache
                            .get_or_load(
                                &key,
                                move || async move {
                                    tokio::time::sleep(pause).await;
                                    Ok::<_, std::io::Error>(value)
                                },
                                options,
                            )
                            .await;
                        answered(loaded, faults, "load");
                        "load"
                    }
                    8 => {
                        let tag = format!("t{}", rng.below(3));
                        answered(cache.invalidate_tag(&tag).await, faults, "invalidate_tag");
                        "invalidate_tag"
                    }
                    9 if rng.below(10) == 0 => {
                        answered(cache.clear().await, faults, "clear");
                        "clear"
                    }
                    10 if rng.below(5) == 0 => {
                        answered(cache.invalidate_prefix("k1").await, faults, "prefix");
                        "invalidate_prefix k1"
                    }
                    11 => {
                        let keys = ["k0", "k2", &*key];
                        answered(cache.get_many(&keys).await, faults, "get_many");
                        "get_many k0 k2"
                    }
                    _ => {
                        answered(cache.get_value(&key).await, faults, "get");
                        "get"
                    }
                };
                done.lock().expect("log").push(format!(
                    "{begun:?}..{:?} replica {} task {task}: {what} {key} ({label})",
                    started.elapsed(),
                    task % 2,
                ));
            }
        }));
    }
    let tasks = async {
        for task in tasks {
            task.await.expect("task");
        }
        stop.store(true, Ordering::SeqCst);
    };
    match faulting {
        Some(faulting) => {
            tokio::join!(tasks, faulting);
        }
        None => tasks.await,
    }
    // Every replica serves what Redis holds once the last messages are applied (and, after
    // faults, once the replica behind the proxy has caught up with Redis and the fleet).
    let deadline = Instant::now() + Duration::from_secs(if faults { 20 } else { 10 });
    loop {
        let mut diverged = Vec::new();
        for k in 0..KEYS {
            let key = format!("k{k}");
            let held = truth.get_value(&key).await.expect("read Redis");
            tokio::time::sleep(Duration::from_millis(2)).await;
            for (i, cache) in replicas.iter().enumerate() {
                let seen = cache.get_value(&key).await.expect("read replica");
                if seen != held {
                    diverged.push(format!("replica {i} {key}: {seen:?}, Redis {held:?}"));
                }
            }
        }
        if diverged.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            for line in done.lock().expect("log").iter() {
                eprintln!("{line}");
            }
            let state: Vec<String> = replicas
                .iter()
                .map(|c| format!("{c:?}, pending L2 writes {}", c.pending_l2_writes()))
                .collect();
            panic!(
                "seed {seed}: replicas still differ from Redis after the last change: {diverged:?}; {state:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
