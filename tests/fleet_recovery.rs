//! A fleet after Redis faults recovers with no help from its callers:
//!
//! * across a failover (replicas as separate OS processes, see `support::fleet`), once the new
//!   master is in charge every replica hears the fleet again — its backplane subscribed and
//!   trusted, invalidations crossing — even while the old master stays hung (a frozen VM, a
//!   network partition: its TCP connections neither answer nor close);
//! * a write that Redis failed reaches it once Redis answers, and the fleet sees it, even if the
//!   replica that made it never calls Redis again.

#![cfg(all(feature = "redis", feature = "msgpack"))]

mod support;

use std::time::{Duration, Instant};

use layercache::{CacheExt, Layered, MemoryCache, RedisCache};
use support::fleet::Replica;
use support::proxy::{FaultProxy, Mode};
use support::redis::{RedisCluster, RedisSentinel, RedisServer};
use support::Rng;

/// Not a test of its own: the body of a replica process (see `support::fleet`). Run by the
/// other tests as a child process; without the environment variable it does nothing.
#[test]
fn fleet_replica_process() {
    support::fleet::replica_process();
}

/// Ask `replica` for its backplane state until it says `subscribed true`; how long that took.
fn wait_until_subscribed(replica: &mut Replica, within: Duration, what: &str) -> Duration {
    let started = Instant::now();
    while replica.ask("state") != "subscribed true" {
        assert!(
            started.elapsed() < within,
            "{what}: the replica did not hear the fleet again within {within:?}: {}",
            replica.ask("diag")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

/// `b` holds `key` = `old` in its L1 (armed), `a` sets `new`: `b` must stop serving `old`.
fn assert_change_crosses(a: &mut Replica, b: &mut Replica, key: &str, old: &str, new: &str) {
    assert_eq!(a.ask(&format!("set {key} {old}")), "ok");
    b.send(&format!("watch {key} {old}"));
    let armed = b.read();
    if armed != "armed" {
        panic!(
            "{key}: the reader never read {old} ({armed}); writer: {}; reader: {}",
            a.ask("diag"),
            b.ask("diag")
        );
    }
    assert_eq!(a.ask(&format!("set {key} {new}")), "ok");
    let seen = b.read();
    assert!(
        seen.starts_with("changed"),
        "{key}: b still served {old} 10 s after a set it to {new} ({seen})"
    );
}

/// Freeze `victim` for good (SIGSTOP; the caller resumes it at the end), wait until `promoted`
/// reports itself master, then until both replicas hear the fleet again. Prints the times.
fn hang_and_rejoin(
    what: &str,
    victim: &RedisServer,
    promoted: &RedisServer,
    (a, b): (&mut Replica, &mut Replica),
) -> Instant {
    let fault = Instant::now();
    victim.pause();
    let promoted_after = loop {
        if promoted.cli(&["role"]).starts_with("master") {
            break fault.elapsed();
        }
        assert!(
            fault.elapsed() < Duration::from_secs(15),
            "{what}: the replica was not promoted within 15 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // Both replicas find the new master for their backplane too, and trust their L1 again.
    let within = Duration::from_secs(15);
    wait_until_subscribed(a, within, "a, after the failover");
    let a_back = fault.elapsed();
    wait_until_subscribed(b, within, "b, after the failover");
    let b_back = fault.elapsed();
    println!(
        "{what}: promoted {promoted_after:?} after SIGSTOP; replicas subscribed again by \
         {a_back:?} (a) and {b_back:?} (b)"
    );
    fault
}

#[test]
fn a_fleet_behind_a_sentinel_rejoins_the_promoted_master_while_the_old_one_hangs() {
    let group = RedisSentinel::start();
    let url = group.url();
    let mut a = Replica::start(&url, "ffo");
    let mut b = Replica::start(&url, "ffo");
    wait_until_subscribed(&mut a, Duration::from_secs(10), "a, at start");
    wait_until_subscribed(&mut b, Duration::from_secs(10), "b, at start");
    assert_change_crosses(&mut a, &mut b, "before", "v1", "v2");

    // The master freezes for good (SIGSTOP until the end of the test).
    hang_and_rejoin(
        "sentinel failover with the old master hung",
        &group.master,
        &group.replica,
        (&mut a, &mut b),
    );

    // And changes cross again, both ways, through the promoted master.
    assert_change_crosses(&mut a, &mut b, "after", "v1", "v2");
    assert_change_crosses(&mut b, &mut a, "after2", "v1", "v2");
    group.master.resume();
}

/// A Redis cache reaching `server` through a fault proxy (200 ms command timeout).
async fn behind_proxy(server: &RedisServer, namespace: &str) -> (RedisCache<String>, FaultProxy) {
    let upstream = format!("127.0.0.1:{}", server.port)
        .parse()
        .expect("address");
    let proxy = FaultProxy::start(upstream).await;
    let l2 = RedisCache::<String>::builder()
        .url(proxy.url())
        .namespace(namespace)
        .command_timeout(Duration::from_millis(200))
        .build()
        .await
        .expect("l2 behind the proxy");
    (l2, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_redis_failed_reaches_the_fleet_though_its_replica_goes_quiet() {
    let server = RedisServer::start();
    // Replica A reaches Redis through a fault proxy; replica B directly.
    let (a_l2, proxy) = behind_proxy(&server, "fq").await;
    let a = Layered::builder(MemoryCache::builder().build().expect("l1"), a_l2.clone())
        .name("a")
        .backplane(a_l2.backplane().await.expect("backplane of a"))
        .build()
        .expect("a");
    let b = support::fleet::replica_cache(&server.url(), "fq")
        .await
        .expect("b");
    support::fleet::wait_subscribed(&[&a, &b]).await;

    // A's connections to Redis are cut while it writes: the write is kept for the catch-up.
    proxy.set(Mode::Reset);
    a.set_value("k", "from-a".into(), Duration::from_secs(600))
        .await
        .expect("a set answers without L2");
    assert_eq!(a.pending_l2_writes(), 1);
    proxy.set(Mode::Pass);

    // A makes no call at all from here on; B must come to read A's value from Redis.
    let back = Instant::now();
    let deadline = back + Duration::from_secs(5);
    loop {
        let seen = b.get_value("k").await.expect("b reads");
        if seen.as_deref() == Some("from-a") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B still reads {seen:?} 5 s after Redis came back: A's write is in its L1 alone \
             ({} pending)",
            a.pending_l2_writes()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "a write Redis failed reached the fleet {:?} after Redis was back, with no call on its replica",
        back.elapsed()
    );
    assert_eq!(a.pending_l2_writes(), 0);
    assert!(
        server.cli(&["GET", "fq:k"]).len() > 1,
        "the value is in Redis"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_writes_what_a_blip_failed_and_does_not_wait_out_an_outage() {
    let server = RedisServer::start();
    let (l2, proxy) = behind_proxy(&server, "fw").await;
    let cache = Layered::builder(MemoryCache::builder().build().expect("l1"), l2.clone())
        .name("flush")
        .build()
        .expect("cache");
    let ttl = Duration::from_secs(600);

    // Redis unreachable: the kept write cannot be made now; flush says how many are left and
    // does not wait for Redis.
    proxy.set(Mode::Reset);
    cache
        .set_value("kept", "v1".into(), ttl)
        .await
        .expect("set answers without L2");
    assert_eq!(cache.pending_l2_writes(), 1);
    let started = Instant::now();
    cache
        .flush(Duration::from_secs(10))
        .await
        .expect("flush during an outage");
    println!(
        "flush during the outage returned in {:?}",
        started.elapsed()
    );
    assert_eq!(cache.pending_l2_writes(), 1, "still kept, and counted");

    // Redis back (the cache's writes go through again): flush writes it before returning.
    proxy.set(Mode::Pass);
    let deadline = Instant::now() + Duration::from_secs(5);
    while l2.set_value("probe", "p".into(), ttl).await.is_err() {
        assert!(Instant::now() < deadline, "the cache reconnects");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cache
        .flush(Duration::from_secs(10))
        .await
        .expect("flush once Redis answers");
    assert_eq!(cache.pending_l2_writes(), 0);
    assert!(
        server.cli(&["GET", "fw:kept"]).len() > 1,
        "the value is in Redis when flush returns"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_that_timed_out_mid_catch_up_leaves_the_catch_up_working() {
    let server = RedisServer::start();
    let (l2, proxy) = behind_proxy(&server, "fx").await;
    let cache = Layered::builder(MemoryCache::builder().build().expect("l1"), l2.clone())
        .name("flush-timeout")
        .build()
        .expect("cache");
    let ttl = Duration::from_secs(600);
    proxy.set(Mode::Reset);
    cache
        .set_value("first", "v1".into(), ttl)
        .await
        .expect("set answers without L2");
    // Redis answers again, but 1 s late: flush's catch-up pass waits out its command timeout
    // (200 ms), and the flush gives up long before.
    proxy.set(Mode::Latency(Duration::from_secs(1)));
    let flushed = cache.flush(Duration::from_millis(20)).await;
    assert!(
        matches!(flushed, Err(layercache::Error::Timeout { .. })),
        "{flushed:?}"
    );
    // Later writes that fail are still caught up once Redis is back: the pass the flush gave
    // up on did not leave the catch-up stuck.
    proxy.set(Mode::Reset);
    cache
        .set_value("second", "v2".into(), ttl)
        .await
        .expect("set answers without L2");
    proxy.set(Mode::Pass);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.cli(&["EXISTS", "fx:second"]).trim() != "1"
        || server.cli(&["EXISTS", "fx:first"]).trim() != "1"
    {
        assert!(
            Instant::now() < deadline,
            "writes kept after a timed-out flush never reached Redis ({} pending)",
            cache.pending_l2_writes()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cache.pending_l2_writes(), 0);
}

#[test]
fn a_fleet_on_a_cluster_rejoins_after_the_master_it_listened_on_hangs() {
    let cluster = RedisCluster::start_topology(1, &[]);
    let url = cluster.url();
    let mut a = Replica::start(&url, "fcl");
    let mut b = Replica::start(&url, "fcl");
    wait_until_subscribed(&mut a, Duration::from_secs(10), "a, at start");
    wait_until_subscribed(&mut b, Duration::from_secs(10), "b, at start");
    assert_change_crosses(&mut a, &mut b, "before", "v1", "v2");

    // The victim: the master the replicas' subscriptions are on (the owner of the shard
    // channel's slot).
    let channel = "layercache:backplane:v1:fcl";
    let victim = cluster
        .nodes
        .iter()
        .position(|n| {
            n.cli(&["role"]).starts_with("master")
                && n.cli(&["pubsub", "shardchannels"]).contains(channel)
        })
        .expect("a master holds the backplane's subscriptions");
    let victim_port = cluster.nodes[victim].port;
    let replica = cluster.replica_of(victim_port);
    // Keys the victim holds, so that the replicas' reads and writes meet the hung node too.
    let on_victim: Vec<String> = (0..)
        .map(|i| format!("after{i}"))
        .filter(|key| {
            let slot = support::redis::cli(
                cluster.nodes[0].port,
                &["cluster", "keyslot", &format!("fcl:{key}")],
            );
            slot.trim()
                .parse::<u16>()
                .is_ok_and(|slot| cluster.master_port_of_slot(slot) == victim_port)
        })
        .take(2)
        .collect();
    let fault = hang_and_rejoin(
        "cluster failover with the subscriptions' master hung",
        &cluster.nodes[victim],
        &cluster.nodes[replica],
        (&mut a, &mut b),
    );
    assert_change_crosses(&mut a, &mut b, &on_victim[0], "v1", "v2");
    assert_change_crosses(&mut b, &mut a, &on_victim[1], "v1", "v2");
    println!(
        "changes to keys of the failed-over slots crossed by {:?}",
        fault.elapsed()
    );
    cluster.nodes[victim].resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_converge_on_redis_after_random_faults() {
    const KEYS: u64 = 12;
    let seed = support::env_u64("LAYERCACHE_CONVERGE_SEED", 0x5eed_1234);
    let steps = support::env_u64("LAYERCACHE_CONVERGE_STEPS", 300);
    let server = RedisServer::start();
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", server.port)
        .parse()
        .expect("address");
    // Three replica processes, each reaching Redis through its own fault proxy.
    let mut proxies = Vec::new();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let proxy = FaultProxy::start(upstream).await;
        replicas.push(Replica::start(&proxy.url(), "fz"));
        proxies.push(proxy);
    }
    for (i, r) in replicas.iter_mut().enumerate() {
        wait_until_subscribed(r, Duration::from_secs(10), &format!("replica {i} at start"));
    }
    // What the fleet should serve: a cache that reads Redis on every call (its L1 keeps nothing
    // past 1 ms), tag and clear times included.
    let truth_l2 = RedisCache::<String>::builder()
        .url(server.url())
        .namespace("fz")
        .build()
        .await
        .expect("reader");
    let truth = Layered::builder(
        MemoryCache::builder().build().expect("l1"),
        truth_l2.clone(),
    )
    .name("truth")
    .l1_ttl(Duration::from_millis(1))
    .backplane(truth_l2.backplane().await.expect("backplane"))
    .build()
    .expect("truth");

    // Random changes, loads and reads from random replicas, while one replica at a time loses
    // Redis for a while: its connections reset, or stalled (every reply 300 ms to 1.2 s late,
    // past the command timeout). Not the proxy's blackhole or half-open modes: switched back to
    // pass, they leave a gap in the middle of a live stream, which TCP never does (it delivers
    // every byte in order, or breaks the connection) and which no client could survive.
    let mut rng = Rng(seed | 1);
    let modes = [
        Mode::Reset,
        Mode::Latency(Duration::from_millis(300)),
        Mode::Latency(Duration::from_millis(1200)),
    ];
    let mut faulty: Option<(usize, u64)> = None;
    for step in 0..steps {
        match faulty {
            Some((p, until)) if step >= until => {
                proxies[p].set(Mode::Pass);
                faulty = None;
            }
            None if rng.below(25) == 0 => {
                let p = rng.below(3) as usize;
                proxies[p].set(modes[rng.below(3) as usize]);
                faulty = Some((p, step + 5 + rng.below(30)));
            }
            _ => {}
        }
        let which = rng.below(3) as usize;
        let replica = &mut replicas[which];
        let key = format!("k{}", rng.below(KEYS));
        let tag = format!("t{}", rng.below(3));
        let command = match rng.below(11) {
            0 | 1 => format!("set {key} v{step}"),
            2 => format!("del {key}"),
            3 | 4 => format!("load {key}"),
            5 => format!("expire {key}"),
            6 => format!("setmany m{step} {key} k{}", rng.below(KEYS)),
            7 => format!("fill k {KEYS} {tag}"),
            8 => format!("untag {tag}"),
            9 if rng.below(4) == 0 => "prefix k1".to_string(),
            9 if rng.below(3) == 0 => "clear".to_string(),
            _ => format!("get {key}"),
        };
        let trace = std::env::var_os("LAYERCACHE_CONVERGE_TRACE").is_some();
        if trace {
            eprintln!("step {step} faulty {faulty:?}: replica {which}: {command}");
        }
        let answer = replica.ask(&command);
        if trace {
            eprintln!("  -> {answer}");
        }
    }
    for proxy in &proxies {
        proxy.set(Mode::Pass);
    }

    // Once Redis is back for everyone, every replica serves what Redis holds.
    let settled = Instant::now();
    let deadline = settled + Duration::from_secs(20);
    let mut holding;
    loop {
        let mut diverged = Vec::new();
        holding = 0;
        for k in 0..KEYS {
            let key = format!("k{k}");
            let held = truth.get_value(&key).await.expect("read Redis");
            tokio::time::sleep(Duration::from_millis(2)).await;
            holding += usize::from(held.is_some());
            let expected = held.map_or_else(|| "none".to_string(), |v| format!("val {v}"));
            for (i, r) in replicas.iter_mut().enumerate() {
                let seen = r.ask(&format!("get {key}"));
                if seen != expected {
                    let why = r.ask(&format!("why {key}"));
                    let raw = layercache::Cache::peek(&truth_l2, &key)
                        .await
                        .ok()
                        .flatten()
                        .map(|e| {
                            format!(
                                "{:?} tags {:?} created {:?}",
                                e.value(),
                                e.tags().collect::<Vec<_>>(),
                                e.created_at()
                            )
                        });
                    diverged.push(format!(
                        "replica {i} {key}: {seen} (Redis: {expected}, raw {raw:?}; replica finds {why})"
                    ));
                }
            }
        }
        if diverged.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let diag: Vec<String> = replicas.iter_mut().map(|r| r.ask("diag")).collect();
            panic!("seed {seed}: replicas still differ from Redis 20 s after the faults ended: {diverged:?}; {diag:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "seed {seed}, {steps} steps: every replica served what Redis holds ({holding} of {KEYS} \
         keys with a fresh value) {:?} after the faults ended",
        settled.elapsed()
    );
}
