//! A fleet through a Redis outage (replicas in this process, each L2 behind a fault proxy): what
//! a replica wrote while cut off reaches Redis afterwards without overwriting anything newer,
//! every replica keeps answering from its loader, a replica started while Redis is down joins
//! the fleet once it is back, and a long outage costs one resync instead of an unbounded outbox.

#![cfg(all(feature = "redis", feature = "msgpack"))]

#[path = "support/late.rs"]
mod late;
mod support;

use std::time::{Duration, Instant};

use layercache::{Cache, CacheExt, Layered, LoadOptions};
use support::fleet::{replica_behind_proxy, replica_with_l2_behind_proxy, wait_subscribed};
use support::redis::RedisServer;

async fn replica_here(url: &str, namespace: &str) -> Layered<String> {
    support::fleet::replica_cache(url, namespace)
        .await
        .expect("replica")
}

async fn wait_for_catch_up(cache: &Layered<String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.pending_l2_writes() > 0 {
        assert!(Instant::now() < deadline, "the catch-up never finished");
        // Any call through L2 lets the breaker probe and the catch-up start.
        let _ = cache.get("probe").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn backplane_resyncs(cache: &Layered<String>) -> u64 {
    cache.backplane().expect("backplane").state().resyncs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catch_up_after_an_outage_never_overwrites_a_newer_value() {
    use support::proxy::Mode;
    let server = RedisServer::start();
    let (a, proxy) = replica_behind_proxy(&server, "fc").await;
    let b = replica_here(&server.url(), "fc").await;
    let ttl = Duration::from_secs(600);

    // A cannot reach Redis: its write is kept in L1 and remembered.
    proxy.set(Mode::Reset);
    a.set_value("k", "older-from-a".into(), ttl)
        .await
        .expect("set");
    assert_eq!(a.pending_l2_writes(), 1);
    // B writes a newer value meanwhile.
    b.set_value("k", "newer-from-b".into(), ttl)
        .await
        .expect("set");
    // A is back and catches up: it must not overwrite B's value.
    proxy.set(Mode::Pass);
    wait_for_catch_up(&a).await;
    assert_eq!(
        server.cli(&["EXISTS", "fc:k"]).trim(),
        "1",
        "B's value is in Redis"
    );
    assert_eq!(
        b.get_value("k").await.expect("get").as_deref(),
        Some("newer-from-b")
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // A's L1 copy is dropped when its backplane resynchronises after the outage.
        if a.get_value("k").await.expect("get").as_deref() == Some("newer-from-b") {
            break;
        }
        assert!(Instant::now() < deadline, "A still serves its older value");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The other way round: A's write during the outage is the newer one, and is written.
    b.set_value("j", "older-from-b".into(), ttl)
        .await
        .expect("set");
    proxy.set(Mode::Reset);
    a.set_value("j", "newer-from-a".into(), ttl)
        .await
        .expect("set");
    proxy.set(Mode::Pass);
    wait_for_catch_up(&a).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.get_value("j").await.expect("get").as_deref() != Some("newer-from-a") {
        assert!(
            Instant::now() < deadline,
            "A's newer value never reached L2: A reads {:?}, pending {}, backplane {:?}",
            a.get_value("j").await,
            a.pending_l2_writes(),
            a.backplane().map(|b| b.state())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("catch-up after an outage: the newer value won both ways");
}

/// A write that could not reach L2 races an older change of the same key announced by another
/// replica: the announcement may arrive while the write is between its failed L2 write and its
/// L1 store. Every such write is newer than the change it races, so each must reach L2 in the
/// catch-up. (Before the fix, one in a few hundred was forgotten there, and the older value
/// stayed in L2 for the fleet.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_during_an_outage_survives_an_older_change_announced_meanwhile() {
    use support::proxy::Mode;
    const KEYS: usize = 1_500;
    let server = RedisServer::start();
    // A's L2 goes through the proxy; its backplane does not, so it keeps hearing B's changes
    // while its writes cannot reach L2.
    let (a, proxy) = replica_with_l2_behind_proxy(&server, "race", true).await;
    let b = replica_here(&server.url(), "race").await;
    wait_subscribed(&[&a, &b]).await;
    let ttl = Duration::from_secs(600);

    proxy.set(Mode::Reset);
    for i in 0..KEYS {
        let key = format!("k{i}");
        // Published when `set_value` returns; on its way to A while A writes.
        b.set_value(&key, "older-from-b".into(), ttl)
            .await
            .expect("set");
        a.set_value(&key, "newer-from-a".into(), ttl)
            .await
            .expect("set");
    }
    let received = support::fleet::backplane_state(&a).received;
    proxy.set(Mode::Pass);
    wait_for_catch_up(&a).await;
    let mut older = Vec::new();
    for i in 0..KEYS {
        let key = format!("k{i}");
        if b.get_value(&key).await.expect("get").as_deref() != Some("newer-from-a") {
            older.push(key);
        }
    }
    let mut a_reads = Vec::new();
    for key in older.iter().take(5) {
        a_reads.push(a.get_value(key).await);
    }
    assert!(
        older.is_empty(),
        "{} of {KEYS} newer writes were forgotten, e.g. {:?}, where A reads {a_reads:?}; A heard \
         {received} of B's changes; A's backplane: {:?}",
        older.len(),
        older.iter().take(5).collect::<Vec<_>>(),
        support::fleet::backplane_state(&a)
    );
    println!("{KEYS} outage writes racing older changes (A heard {received}): all reached L2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_unreachable_every_replica_loads_on_its_own() {
    use support::proxy::Mode;
    let server = RedisServer::start();
    let (a, proxy) = replica_behind_proxy(&server, "fd").await;
    proxy.set(Mode::Reset);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let a = a.clone();
        tasks.spawn(async move {
            a.get_or_load(
                &format!("cold{}", i % 4),
                move || async move { Ok::<_, std::io::Error>(format!("local{i}")) },
                layercache::LoadOptions::ttl(Duration::from_secs(60)),
            )
            .await
        });
    }
    while let Some(done) = tasks.join_next().await {
        assert!(matches!(done, Ok(Ok(_))), "{done:?}");
    }
    let took = started.elapsed();
    println!("Redis unreachable: 20 callers on 4 cold keys answered by local loads in {took:?}");
    // The L2 read costs at most its command timeout (200 ms); nothing waits for a lease.
    assert!(took < Duration::from_secs(2), "{took:?}");
    let state = a.backplane().expect("backplane").state();
    assert_eq!(state.leases_won + state.lease_waits, 0, "{state:?}");
}

/// A replica (re)started while Redis is down starts anyway: its backplane is not trusted, so
/// it answers from its loader; once Redis is back it subscribes, trusts its L1 again, and hears
/// the other replicas' invalidations like any replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_while_redis_is_down_joins_the_fleet_when_it_is_back() {
    let mut server = RedisServer::not_started();
    let late = support::fleet::replica_cache(&server.url(), "late")
        .await
        .expect("a replica starts while Redis is down");
    let backplane = late.backplane().expect("backplane");
    assert!(
        !backplane.is_subscribed(),
        "not trusted while Redis is down"
    );
    let ask = |cache: &Layered<String>, value: &'static str| {
        let cache = cache.clone();
        async move {
            cache
                .get_or_load(
                    "doc",
                    move || async move { Ok::<_, std::io::Error>(value.to_owned()) },
                    layercache::LoadOptions::ttl(Duration::from_secs(60)),
                )
                .await
                .expect("no caller error")
        }
    };
    assert_eq!(ask(&late, "from the loader").await, "from the loader");

    tokio::task::block_in_place(|| server.restart());
    let up = Instant::now();
    while !late.backplane().expect("backplane").is_subscribed() {
        assert!(
            up.elapsed() < Duration::from_secs(10),
            "subscribed within 10 s of Redis coming up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "subscribed and trusted {:?} after Redis came up",
        up.elapsed()
    );

    // Another replica changes the key: the late one stops serving its L1 copy (its own value,
    // loaded during the outage, is kept for the catch-up, which gives way to the newer one).
    let other = replica_here(&server.url(), "late").await;
    for (value, before) in [("v1", "from the loader"), ("v2", "v1")] {
        other
            .set_value("doc", value.to_owned(), Duration::from_secs(60))
            .await
            .expect("set");
        let changed = Instant::now();
        loop {
            let seen = ask(&late, "never loaded").await;
            if seen == value {
                break;
            }
            assert_eq!(seen, before, "only the old value until the new one");
            assert!(
                changed.elapsed() < Duration::from_secs(5),
                "the change to {value} reached the late replica"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        println!("{value} seen {:?} after it was set", changed.elapsed());
    }
    assert!(
        late.backplane().expect("backplane").state().received >= 2,
        "messages heard"
    );
}

/// A replica that cannot publish for a long time keeps the latest change per key for later,
/// but not without bound: past `MAX_OUTBOX` keys its outbox becomes one `resync` message, and
/// once it can publish again every other replica drops its whole L1 — so nothing it changed
/// meanwhile is served stale from another replica's memory, and its memory stayed bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_overflows_the_outbox_into_one_resync() {
    use layercache::fleet::MAX_OUTBOX;
    use layercache::MemoryCache;
    use support::proxy::Mode;
    let server = RedisServer::start();
    let (a, proxy) = replica_behind_proxy(&server, "fo").await;
    let b_l1 = MemoryCache::builder().build().expect("l1");
    let b_l2 = layercache::RedisCache::<String>::builder()
        .url(server.url())
        .namespace("fo")
        .build()
        .await
        .expect("l2");
    let b_backplane = b_l2.backplane().await.expect("backplane");
    let b = Layered::builder(b_l1.clone(), b_l2)
        .name("direct")
        .backplane(b_backplane)
        .build()
        .expect("b");
    let ttl = Duration::from_secs(600);
    b.set_value("only-b", "kept by b".into(), ttl)
        .await
        .expect("set");
    assert_eq!(b_l1.get_value_sync("only-b").as_deref(), Some("kept by b"));

    // A cannot reach Redis: more distinct changes than the outbox holds.
    proxy.set(Mode::Reset);
    for i in 0..=MAX_OUTBOX {
        a.set_value(&format!("k{i}"), format!("v{i}"), ttl)
            .await
            .expect("set: answered from L1");
    }
    let overflowed = a.backplane().expect("backplane").state();
    assert_eq!(overflowed.outbox_overflows, 1, "{overflowed:?}");
    // (B drops its L1 on its own only if it stops hearing itself, which a loaded machine can
    // cause: count from here.)
    let before = backplane_resyncs(&b);

    // A is back: its resync reaches B, which drops its L1 (a key A never touched included).
    proxy.set(Mode::Pass);
    let deadline = Instant::now() + Duration::from_secs(10);
    while backplane_resyncs(&b) == before {
        assert!(
            Instant::now() < deadline,
            "B never heard A's resync: A {:?}",
            a.backplane().map(|p| p.state())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while b_l1.get_value_sync("only-b").is_some() {
        assert!(Instant::now() < deadline, "B's L1 was not dropped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Nothing was lost: B reads its own value back from Redis.
    assert_eq!(
        b.get_value("only-b").await.expect("get").as_deref(),
        Some("kept by b")
    );
}

/// Run `replica` with its cache (memory, Redis at `url` under `namespace`, backplane; subscribed)
/// on a runtime of one thread of its own, backplane tasks included: a replica whose thread
/// blocking stalls all of it.
fn on_a_thread_of_its_own<F, Fut>(
    url: String,
    namespace: &'static str,
    replica: F,
) -> std::thread::JoinHandle<()>
where
    F: FnOnce(Layered<String>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let cache = support::fleet::replica_cache(&url, namespace)
                .await
                .expect("replica");
            wait_subscribed(&[&cache]).await;
            replica(cache).await;
        });
    })
}

/// A replica whose runtime stalls (a CPU-starved or paused process: a CFS quota, a VM pause,
/// `SIGSTOP`; here its one runtime thread blocks) hears nothing meanwhile. Its first read after
/// the stall runs before its backplane tasks had a turn to notice the silence or apply the
/// messages waiting in the socket: it must not answer from L1 a value another replica replaced
/// during the stall (it used to: L1 stayed trusted until the heartbeat task ran again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_runtime_stalled_does_not_serve_what_changed_meanwhile() {
    let server = RedisServer::start();
    let url = server.url();
    let writer = replica_here(&url, "stall").await;

    // The stalling replica: its cache, backplane tasks included, on a runtime of one thread.
    // Each command stalls it once, then reads with `get_value` (false) or `get_or_load` (true).
    let (to_stall, mut commands) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let (changed, wait_changed) = std::sync::mpsc::channel::<()>();
    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
    let stalling = on_a_thread_of_its_own(url, "stall", move |cache| async move {
        // Into L1 (read from Redis), then an L1 hit.
        for _ in 0..2 {
            let read = cache.get_value("model:gpt-4o").await.expect("read");
            answers.send(read).expect("answer");
        }
        while let Some(load) = commands.recv().await {
            // Stall: block the runtime's only thread until the other replica's change is
            // published, and 1.5 s more (longer than TRUST_WINDOW) ...
            answers.send(None).expect("stalling");
            wait_changed.recv().expect("changed");
            std::thread::sleep(Duration::from_millis(1_500));
            // ... then read at once, before any other task of this runtime runs.
            let read = if load {
                let loader = || async { Ok::<_, std::io::Error>("loaded".to_string()) };
                let options = LoadOptions::ttl(Duration::from_secs(600));
                Some(
                    cache
                        .get_or_load("model:gpt-4o", loader, options)
                        .await
                        .expect("load"),
                )
            } else {
                cache.get_value("model:gpt-4o").await.expect("read")
            };
            answers.send(read).expect("answer");
            // Back in step (the messages the stall held back are applied) before the next.
            wait_subscribed(&[&cache]).await;
            let _ = cache.get_value("model:gpt-4o").await;
        }
    });

    writer
        .set_value(
            "model:gpt-4o",
            "pricing v1".to_string(),
            Duration::from_secs(600),
        )
        .await
        .expect("set");
    for _ in 0..2 {
        assert_eq!(
            answered.recv().await.expect("answer").as_deref(),
            Some("pricing v1")
        );
    }
    for (load, value) in [(false, "pricing v2"), (true, "pricing v3")] {
        to_stall.send(load).expect("stall");
        assert_eq!(answered.recv().await.expect("stalling"), None);
        // The change returns once its message is published (the stalled replica's socket
        // holds it).
        writer
            .set_value("model:gpt-4o", value.to_string(), Duration::from_secs(600))
            .await
            .expect("set");
        changed.send(()).expect("changed");
        assert_eq!(
            answered.recv().await.expect("answer").as_deref(),
            Some(value),
            "the first read after the stall (get_or_load: {load}) served the value replaced during it"
        );
    }
    drop(to_stall);
    stalling.join().expect("stalling replica");
}

/// A load on a replica that stalls (as above) while another replica deletes the key — the
/// database row it read changed — must not store the value it read before the change: neither
/// in Redis, where the whole fleet would serve it for its lifetime, nor in its own L1. (The
/// delete's tombstone keeps it out of Redis whatever the order in which the resumed replica
/// ends the load and reads the delete's message; `fleet_late_writes.rs` has the order where
/// the message comes last.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_spans_a_stall_and_another_replicas_delete_is_not_stored() {
    let server = RedisServer::start();
    let url = server.url();
    let writer = replica_here(&url, "span").await;
    let raw = late::redis_at(&server, "span").await;

    let (started, mut load_started) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (changed, wait_changed) = std::sync::mpsc::channel::<()>();
    let (done, mut settled) = tokio::sync::mpsc::unbounded_channel::<(String, usize)>();
    let stalling = on_a_thread_of_its_own(url, "span", move |cache| async move {
        let loader = move || async move {
            // Reads the row, then the replica stalls (its only thread blocks) while the
            // other replica deletes the key, and 1.5 s more (past TRUST_WINDOW).
            started.send(()).expect("started");
            wait_changed.recv().expect("changed");
            std::thread::sleep(Duration::from_millis(1_500));
            Ok::<_, std::io::Error>("profile before the update".to_string())
        };
        let options = LoadOptions::ttl(Duration::from_secs(600)).with_fleet_lease(false);
        let answered = cache
            .get_or_load("user:7:profile", loader, options)
            .await
            .expect("load");
        // Back in step: hears itself, no write waiting for Redis.
        wait_subscribed(&[&cache]).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while cache.pending_l2_writes() > 0 || cache.pending_loads() > 0 {
            assert!(Instant::now() < deadline, "writes never settled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        done.send((answered, cache.pending_l2_writes()))
            .expect("done");
        // Its own L1 no longer holds the value either.
        let again = cache.get_value("user:7:profile").await.expect("read");
        done.send((format!("{again:?}"), 0)).expect("done");
    });

    load_started.recv().await.expect("load started");
    // The row changes; the key is deleted (announced: the stalled replica's socket holds it).
    writer.delete("user:7:profile").await.expect("delete");
    changed.send(()).expect("changed");
    let (answered, _) = settled.recv().await.expect("settled");
    assert_eq!(
        answered, "profile before the update",
        "its caller is answered"
    );
    assert_eq!(
        raw.get_value("user:7:profile").await.expect("redis"),
        None,
        "Redis holds the value read before the delete"
    );
    assert_eq!(
        writer.get_value("user:7:profile").await.expect("read"),
        None
    );
    let (again, _) = settled.recv().await.expect("read again");
    assert_eq!(
        again, "None",
        "the stalled replica serves the value read before the delete"
    );
    stalling.join().expect("stalling replica");
}
