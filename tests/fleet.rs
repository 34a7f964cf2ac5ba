//! A fleet of replicas as separate OS processes (this test binary run again as a replica, see
//! `support::fleet`) sharing one real `redis-server`: invalidations cross processes through the backplane,
//! and a lost subscription or a Redis restart never lets a replica serve an invalidated value
//! for longer than the documented bound.

#![cfg(all(feature = "redis", feature = "msgpack"))]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use layercache::fleet::TRUST_WINDOW;
use layercache::{Cache, CacheExt, Layered};
use support::fleet::{replica_behind_proxy, unix_nanos, wait_subscribed, Replica};
use support::redis::RedisServer;

/// Not a test of its own: the body of a replica process (see `support::fleet`). Run by the
/// other tests as a child process; without the environment variable it does nothing.
#[test]
fn fleet_replica_process() {
    support::fleet::replica_process();
}

async fn replica_here(url: &str, namespace: &str) -> Layered<String> {
    support::fleet::replica_cache(url, namespace)
        .await
        .expect("replica")
}

/// `value` is in the replicas' L1s; `change` replaces it; every replica reports when it stopped
/// seeing `value`. Returns each replica's visibility time.
async fn measure(
    a: &Layered<String>,
    replicas: &mut [Replica],
    key: &str,
    value: &str,
    change: impl std::future::Future<Output = ()>,
) -> Vec<Duration> {
    measure_tagged(a, replicas, key, value, None, change).await
}

/// [`measure`], the value carrying `tag`.
async fn measure_tagged(
    a: &Layered<String>,
    replicas: &mut [Replica],
    key: &str,
    value: &str,
    tag: Option<&str>,
    change: impl std::future::Future<Output = ()>,
) -> Vec<Duration> {
    let entry = layercache::Entry::new(value.to_owned(), Duration::from_secs(600));
    a.set(key, entry.with_tags(tag)).await.expect("set");
    for r in replicas.iter_mut() {
        r.send(&format!("watch {key} {value}"));
    }
    for r in replicas.iter_mut() {
        assert_eq!(r.read(), "armed", "the replica saw {value}");
    }
    let started = unix_nanos();
    change.await;
    replicas
        .iter_mut()
        .map(|r| {
            let answer = r.read();
            let seen: Option<u128> = answer.strip_prefix("changed ").and_then(|n| n.parse().ok());
            let Some(seen) = seen else {
                let state = r.ask("state");
                let now = r.ask(&format!("get {key}"));
                panic!(
                    "{key}: no change from {value} seen ({answer}); replica: {state}, reads {now}"
                );
            };
            Duration::from_nanos(seen.saturating_sub(started) as u64)
        })
        .collect()
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_cross_four_processes() {
    let changes: usize = std::env::var("LAYERCACHE_FLEET_CHANGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let server = RedisServer::start();
    let p99 = invalidations_across(&server.url(), "f4", changes, "a single server").await;
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_cross_processes_on_a_cluster() {
    let cluster = support::redis::RedisCluster::start();
    let p99 = invalidations_across(&cluster.url(), "fc3", 200, "a 3-master cluster").await;
    assert!(p99 < Duration::from_millis(250), "p99 {p99:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_cross_processes_behind_a_sentinel() {
    let sentinel = support::redis::RedisSentinel::start();
    let p99 = invalidations_across(&sentinel.url(), "fs", 200, "a sentinel-managed master").await;
    assert!(p99 < Duration::from_millis(250), "p99 {p99:?}");
}

/// `changes` changes of five kinds in this process, watched by 3 replica processes on `url`;
/// prints the visibility times and returns their p99.
async fn invalidations_across(url: &str, namespace: &str, changes: usize, what: &str) -> Duration {
    let a = replica_here(url, namespace).await;
    let mut others: Vec<Replica> = (0..3).map(|_| Replica::start(url, namespace)).collect();
    let mut times = Vec::with_capacity(changes * 3);
    let mut by_kind: [Vec<Duration>; 5] = Default::default();
    for i in 0..changes {
        let key = format!("k{}", i % 10);
        let value = format!("v{i}");
        let kind = i % 5;
        let a2 = a.clone();
        let key2 = key.clone();
        let tag = format!("tag{}", i % 7);
        let tag2 = tag.clone();
        let tagged = (kind == 3).then_some(tag.as_str());
        let took = measure_tagged(&a, &mut others, &key, &value, tagged, async move {
            match kind {
                0 => a2
                    .set_value(&key2, format!("w{i}"), Duration::from_secs(600))
                    .await
                    .expect("overwrite"),
                1 => a2.delete(&key2).await.expect("delete"),
                2 => a2.expire(&key2).await.expect("expire"),
                3 => a2.invalidate_tag(&tag2).await.expect("invalidate_tag"),
                _ => a2.clear().await.expect("clear"),
            }
        })
        .await;
        by_kind[kind].extend(took.iter().copied());
        times.extend(took);
    }
    times.sort();
    let (p50, p99, max) = (
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[times.len() - 1],
    );
    println!(
        "{what}: {changes} changes (overwrite, delete, expire, tag invalidation, clear) seen by 3 other processes: visibility p50 {p50:?}, p99 {p99:?}, max {max:?}"
    );
    for (name, kind) in ["overwrite", "delete", "expire", "invalidate_tag", "clear"]
        .iter()
        .zip(by_kind.iter_mut())
    {
        kind.sort();
        println!(
            "  {name}: p50 {:?}, p99 {:?}, max {:?} ({} observations)",
            percentile(kind, 0.5),
            percentile(kind, 0.99),
            kind[kind.len() - 1],
            kind.len()
        );
    }
    assert!(
        max < TRUST_WINDOW + Duration::from_millis(500),
        "max {max:?}"
    );
    // A replica ignores its own messages: its L1 keeps what it wrote.
    a.set_value("own", "mine".into(), Duration::from_secs(600))
        .await
        .expect("set");
    assert_eq!(
        a.get_value("own").await.expect("get").as_deref(),
        Some("mine")
    );
    p99
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_subscription_or_a_restart_stays_within_the_bound() {
    let mut server = RedisServer::start();
    let a = replica_here(&server.url(), "fb").await;
    let mut others = vec![Replica::start(&server.url(), "fb")];

    // The subscription connections are killed; a change made meanwhile is seen within the bound.
    let killed = server.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    println!("CLIENT KILL TYPE pubsub: {}", killed.trim());
    let a2 = a.clone();
    let took = measure(&a, &mut others, "k", "before-kill", async move {
        a2.set_value("k", "after-kill".into(), Duration::from_secs(600))
            .await
            .expect("set");
    })
    .await;
    println!("after killing the subscriptions: change seen after {took:?}");
    assert!(
        took[0] < TRUST_WINDOW + Duration::from_millis(500),
        "{took:?}"
    );

    // Redis restarts (data gone); A writes again once Redis is back: the other replica must not
    // keep serving its L1 copy beyond the bound.
    assert_eq!(others[0].ask("get r"), "none");
    a.set_value("r", "old".into(), Duration::from_secs(600))
        .await
        .expect("set");
    let deadline = Instant::now() + Duration::from_secs(5);
    while others[0].ask("get r") != "val old" {
        assert!(Instant::now() < deadline, "the replica never saw r");
    }
    others[0].send("watch r old");
    assert_eq!(others[0].read(), "armed");
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let written = loop {
        let _ = a
            .set_value("r", "new".into(), Duration::from_secs(600))
            .await;
        if server.cli(&["EXISTS", "fb:r"]).trim() == "1" {
            break unix_nanos();
        }
        assert!(
            Instant::now() < deadline,
            "A could not write after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let answer = others[0].read();
    let seen: u128 = answer
        .strip_prefix("changed ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no change seen: {answer}"));
    let late = Duration::from_nanos(seen.saturating_sub(written) as u64);
    println!("after a Redis restart: the new value was seen {late:?} after it was written");
    assert!(late < TRUST_WINDOW + Duration::from_millis(500), "{late:?}");
    // The backplane recovers by itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    while others[0].ask("state") != "subscribed true" {
        assert!(Instant::now() < deadline, "the backplane did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sum of Redis's per-command call counts for `commands` (from `INFO commandstats`).
fn calls(server: &RedisServer, commands: &[&str]) -> u64 {
    server
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            commands.contains(&name).then_some(())?;
            rest.split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Run one stampede on every replica at once; the total loader runs and errors.
fn stampede_all(replicas: &mut [Replica], prefix: &str, lease: bool) -> (u64, u64) {
    let command = format!("stampede {prefix} 100 25 300 {}", u8::from(lease));
    for r in replicas.iter_mut() {
        r.send(&command);
    }
    let (mut loads, mut errors) = (0, 0);
    for r in replicas.iter_mut() {
        let answer = r.read();
        let n: Vec<u64> = answer.split(' ').filter_map(|x| x.parse().ok()).collect();
        assert_eq!(n.len(), 2, "{answer}");
        loads += n[0];
        errors += n[1];
    }
    (loads, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_lease_loads_each_cold_key_once() {
    let server = RedisServer::start();
    let mut replicas: Vec<Replica> = (0..4)
        .map(|_| Replica::start(&server.url(), "fl"))
        .collect();
    // 4 processes × 100 cold keys × 25 concurrent callers per key per process.
    let (with, errors) = stampede_all(&mut replicas, "leased", true);
    assert_eq!(errors, 0);
    let (without, errors_without) = stampede_all(&mut replicas, "unleased", false);
    assert_eq!(errors_without, 0);
    let leases: Vec<String> = replicas.iter_mut().map(|r| r.ask("leases")).collect();
    println!(
        "fleet_stampede: 4 processes × 100 cold keys × 25 callers: {with} loads with the lease, \
         {without} without; per replica: {leases:?}"
    );
    if let Ok(path) = std::env::var("LAYERCACHE_FLEET_REPORT") {
        let report = format!(
            "{{\"processes\": 4, \"keys\": 100, \"callers\": 25, \"load_ms\": 300, \
             \"with_lease\": {with}, \"without_lease\": {without}}}\n"
        );
        std::fs::write(&path, report).expect("write the fleet_stampede report");
    }
    // Every key is loaded once by a lease winner. A replica that cannot use the lease (on a
    // starved machine it may miss its own heartbeat, or a lease request its command timeout)
    // loads on its own, by design — and counts it as `bypassed`: only those may add loads.
    let count = |answer: &str, name: &str| -> u64 {
        let mut words = answer.split(' ');
        while let Some(word) = words.next() {
            if word == name {
                return words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            }
        }
        panic!("no {name} in {answer}")
    };
    let bypassed: u64 = leases.iter().map(|l| count(l, "bypassed")).sum();
    assert!(with >= 100, "every key was loaded: {with}");
    assert!(
        with <= 100 + bypassed,
        "{with} loads with the lease, {bypassed} of them bypassed it"
    );
    // Half of the 400 cold loads at least went through the lease (on an idle machine: all).
    assert!(bypassed < 200, "{bypassed} loads bypassed the lease");
    assert!(without > with, "{without} loads without the lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_replicas_are_woken_not_polling() {
    let server = RedisServer::start();
    let mut replicas: Vec<Replica> = (0..4)
        .map(|_| Replica::start(&server.url(), "fw"))
        .collect();
    let watched = ["get", "eval", "evalsha", "set", "pttl", "exists", "del"];
    let before = calls(&server, &watched);
    // One replica loads for 2 s; three others ask meanwhile and wait for its value.
    replicas[0].send("hold slow 2000");
    assert_eq!(replicas[0].read(), "loading");
    for r in replicas[1..].iter_mut() {
        r.send("load slow");
    }
    for r in replicas[1..].iter_mut() {
        assert_eq!(r.read(), "val held served");
    }
    assert_eq!(replicas[0].read(), "done");
    let used = calls(&server, &watched) - before;
    let by_command: Vec<String> = watched
        .iter()
        .map(|c| format!("{c} {}", calls(&server, &[c])))
        .collect();
    println!("commands since the server started: {by_command:?}");
    println!(
        "a 2 s load with 3 replicas waiting: {used} Redis commands in all (reads, lease tries, \
         the lease's extension and release, the write)"
    );
    // 4 L2 reads, 4 lease tries (EVAL, with the SET and PTTL inside counted too), 3 reads after
    // the wake, an extension and a release (EVAL, GET, PEXPIRE/DEL), the write: about 25.
    // Polling every 10 ms for 2 s would be hundreds; nothing here grows with the wait.
    assert!(used <= 30, "{used} commands during the wait");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_lease_holder_is_replaced_after_its_lease_expires() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(600);
    let mut holder = Replica::start_with(&server.url(), "fk", Some(lease));
    let mut other = Replica::start_with(&server.url(), "fk", Some(lease));
    holder.send("hold orphan 60000");
    assert_eq!(holder.read(), "loading");
    let killed_at = Instant::now();
    holder.kill();
    let answer = other.ask("load orphan");
    let took = killed_at.elapsed();
    println!(
        "lease holder killed mid-load: another replica loaded after {took:?} (lease {lease:?})"
    );
    assert!(
        answer.starts_with("val loaded-by-") && answer.ends_with(" loaded"),
        "{answer}"
    );
    assert!(took < lease * 3, "{took:?}");
    let leases = other.ask("leases");
    assert!(leases.contains("holder_lost 1"), "{leases}");
}

/// Ask until `want` comes back, at most `within`; the last answer.
fn ask_until(r: &mut Replica, command: &str, want: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let answer = r.ask(command);
        if answer == want || Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidation_reaches_every_process_in_constant_redis_commands() {
    let server = RedisServer::start();
    let mut replicas: Vec<Replica> = (0..3)
        .map(|_| Replica::start(&server.url(), "ft"))
        .collect();
    assert_eq!(replicas[0].ask("fill doc 10000 doc:9"), "ok");
    assert_eq!(replicas[0].ask("fill other 100 doc:10"), "ok");
    // `get_or_load` answers before its L2 write (write-behind), so the last value filled may
    // reach Redis a moment after "ok": the other replicas are asked until they see it.
    for r in replicas.iter_mut() {
        assert_eq!(
            ask_until(r, "fresh doc 10000", "fresh 10000", Duration::from_secs(5)),
            "fresh 10000"
        );
    }
    let watched = [
        "eval", "evalsha", "get", "set", "mget", "del", "unlink", "scan", "keys",
    ];
    let (before, published_before) = (calls(&server, &watched), calls(&server, &["publish"]));
    let started = Instant::now();
    assert_eq!(replicas[0].ask("untag doc:9"), "ok");
    let used = calls(&server, &watched) - before;
    let published = calls(&server, &["publish"]) - published_before;
    println!(
        "invalidate_tag over 10,000 tagged entries on 3 processes: {used} key commands \
         (one EVAL with its GET and SET), {published} PUBLISH (heartbeats included)"
    );
    assert!(used <= 3, "{used} commands");
    for (i, r) in replicas.iter_mut().enumerate() {
        let answer = ask_until(r, "fresh doc 10000", "fresh 0", Duration::from_secs(5));
        assert_eq!(answer, "fresh 0", "replica {i}");
        assert_eq!(
            ask_until(r, "fresh other 100", "fresh 100", Duration::from_secs(5)),
            "fresh 100",
            "another tag is untouched"
        );
    }
    println!(
        "every process was checked and serves none of the tagged entries {:?} after the invalidation",
        started.elapsed()
    );
    // A process started afterwards reads the tag's time from Redis before serving.
    let mut late = Replica::start(&server.url(), "ft");
    assert_eq!(late.ask("fresh doc 100"), "fresh 0");
    assert_eq!(late.ask("fresh other 100"), "fresh 100");

    // clear(): everything, everywhere, in O(1) Redis writes.
    let before = calls(&server, &watched);
    assert_eq!(replicas[1].ask("clear"), "ok");
    assert!(calls(&server, &watched) - before <= 3);
    for r in replicas.iter_mut().chain(std::iter::once(&mut late)) {
        assert_eq!(
            ask_until(r, "fresh other 100", "fresh 0", Duration::from_secs(5)),
            "fresh 0"
        );
    }
    // New values after the clear are served as usual (once the last one's write-behind to L2
    // has landed; failed under load when asked once).
    assert_eq!(replicas[2].ask("fill other 10 doc:10"), "ok");
    assert_eq!(
        ask_until(
            &mut replicas[0],
            "fresh other 10",
            "fresh 10",
            Duration::from_secs(5)
        ),
        "fresh 10"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_prefix_reaches_every_replicas_l1() {
    let server = RedisServer::start();
    let a = replica_here(&server.url(), "fp").await;
    let mut others: Vec<Replica> = (0..2)
        .map(|_| Replica::start(&server.url(), "fp"))
        .collect();
    let ttl = Duration::from_secs(600);
    for key in ["user:1:a", "user:1:b", "user:2:a"] {
        a.set_value(key, format!("v-{key}"), ttl)
            .await
            .expect("set");
    }
    for r in others.iter_mut() {
        for key in ["user:1:a", "user:1:b", "user:2:a"] {
            assert_eq!(
                r.ask(&format!("get {key}")),
                format!("val v-{key}"),
                "L1 warm"
            );
        }
    }
    let removed = a
        .invalidate_prefix("user:1:")
        .await
        .expect("invalidate_prefix");
    assert_eq!(removed, 2, "removed from Redis");
    assert_eq!(a.get_value("user:1:a").await.expect("get"), None);
    for r in others.iter_mut() {
        for key in ["user:1:a", "user:1:b"] {
            assert_eq!(
                ask_until(r, &format!("get {key}"), "none", Duration::from_secs(5)),
                "none"
            );
        }
        assert_eq!(r.ask("get user:2:a"), "val v-user:2:a");
    }
}

/// A change returns only once the other replicas have been told of it, so a process that exits
/// right after its change — a CLI or a cron job that updates the cache, a replica shut down
/// by a rolling deploy — leaves no replica serving the old value. Each change here is made by
/// a process that exits (`std::process::exit`) the moment the call returns; the replica in
/// this process holds every key in its L1 for 10 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_just_before_a_process_exits_reaches_every_replica() {
    let server = RedisServer::start();
    let b = replica_here(&server.url(), "fx").await;
    wait_subscribed(&[&b]).await;
    let ttl = Duration::from_secs(600);
    // (the writer's command, the key the reader watches, what the reader must come to see)
    let cases: [(&str, &str, Option<&str>); 8] = [
        ("set k1 new", "k1", Some("new")),
        ("del k2", "k2", None),
        ("expire k3", "k3", None),
        ("untag t4", "k4", None),
        ("prefix p5:", "p5:a", None),
        ("setmany new k6 k7", "k7", Some("new")),
        ("clear", "k8", None),
        ("set k9 new", "k9", Some("new")),
    ];
    for (command, key, want) in cases {
        let entry = layercache::Entry::new("old".to_string(), ttl).with_tags(["t4"]);
        b.set(key, entry).await.expect("set");
        assert_eq!(b.get_value(key).await.expect("get").as_deref(), Some("old"));
        let mut writer = Replica::start(&server.url(), "fx");
        assert_eq!(writer.ask(&format!("{command} !exit")), "ok", "{command}");
        let exited = writer.wait();
        assert!(exited.success(), "the writer exited: {exited:?}");
        let started = Instant::now();
        let deadline = started + Duration::from_secs(5);
        loop {
            let now = b.get_value(key).await.expect("get");
            if now.as_deref() == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "`{command}` returned and its process exited, but another replica still \
                 serves {now:?} for {key} after 5 s (want {want:?})"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        println!(
            "{command}: seen by the other replica {:?} after the writer exited",
            started.elapsed()
        );
    }
}

/// A change another replica makes to a key while this replica loads it (a row updated there,
/// then its key deleted or set) wins over the load: the loaded value, read before the change,
/// answers its caller but is stored in no layer, so neither replica serves it afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_another_replica_during_a_load_wins_over_it() {
    let server = RedisServer::start();
    let a = replica_here(&server.url(), "fw").await;
    let mut b = Replica::start(&server.url(), "fw");
    wait_subscribed(&[&a]).await;
    for (change, want) in [("del", None), ("set", Some("set on B"))] {
        let key = format!("row-{change}");
        let (started, gate) = (
            Arc::new(tokio::sync::Notify::new()),
            Arc::new(tokio::sync::Semaphore::new(0)),
        );
        let running = {
            let (a, key) = (a.clone(), key.clone());
            let (started, gate) = (Arc::clone(&started), Arc::clone(&gate));
            tokio::spawn(async move {
                a.get_or_load(
                    &key,
                    move || async move {
                        started.notify_one();
                        let _open = gate.acquire().await;
                        Ok::<_, std::io::Error>("read on A before the change".to_string())
                    },
                    layercache::LoadOptions::ttl(Duration::from_secs(600)),
                )
                .await
            })
        };
        started.notified().await;
        // B changes the key, then deletes a sentinel A holds in L1: A applies B's messages in
        // order, so once the sentinel is gone from A, A has heard of the change.
        a.set_value("sentinel", "in A's L1".into(), Duration::from_secs(600))
            .await
            .expect("sentinel");
        let command = match change {
            "del" => format!("del {key}"),
            _ => format!("set {key} set on B"),
        };
        assert_eq!(b.ask(&command), "ok");
        assert_eq!(b.ask("del sentinel"), "ok");
        let heard = Instant::now() + Duration::from_secs(5);
        while a.get_value("sentinel").await.expect("get").is_some() {
            assert!(Instant::now() < heard, "A heard B's changes");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        gate.add_permits(1);
        let answered = running.await.expect("task").expect("load");
        assert_eq!(answered, "read on A before the change");
        // A's flight may still be finishing: wait for what both replicas serve to settle on B's
        // change (it never does without the fix: A stores its value in L1 and Redis).
        let settled = Instant::now() + Duration::from_secs(5);
        loop {
            let on_a = a.get_value(&key).await.expect("get");
            let on_b = b.ask(&format!("get {key}"));
            let want_b = want.map_or("none".to_string(), |v| format!("val {v}"));
            if on_a.as_deref() == want && on_b == want_b && a.pending_loads() == 0 {
                break;
            }
            assert!(
                Instant::now() < settled,
                "after B's {change} during A's load: A serves {on_a:?}, B {on_b:?} (want {want:?})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A change whose caller stops waiting — an axum handler dropped because its client hung up
/// while the change was on the wire to a slow Redis — is still made whole: in Redis *and*
/// announced, so no replica keeps serving the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_caller_hung_up_still_reaches_every_replica() {
    use support::proxy::Mode;
    let server = RedisServer::start();
    let (w, proxy) = replica_behind_proxy(&server, "fh").await;
    let r = replica_here(&server.url(), "fh").await;
    wait_subscribed(&[&w, &r]).await;
    // 60 ms each way to Redis (within the 200 ms command timeout of `w`'s client).
    proxy.set(Mode::Latency(Duration::from_millis(60)));
    for change in ["delete", "set", "expire", "untag"] {
        let key = format!("hung-up-{change}");
        let entry =
            layercache::Entry::new("old".to_string(), Duration::from_secs(600)).with_tags(["t"]);
        w.set(&key, entry).await.expect("set");
        assert_eq!(
            r.get_value(&key).await.expect("get").as_deref(),
            Some("old")
        );
        let made = async {
            let _ = match change {
                "delete" => w.delete(&key).await,
                "set" => {
                    w.set_value(&key, "new".into(), Duration::from_secs(600))
                        .await
                }
                "expire" => w.expire(&key).await,
                _ => w.invalidate_tag("t").await,
            };
        };
        // The client hangs up 20 ms in: the change's first Redis command is on the wire.
        let hung_up = tokio::time::timeout(Duration::from_millis(20), made).await;
        assert!(hung_up.is_err(), "{change} outlasted 20 ms");
        // A replica shutting down now would wait for it.
        w.flush(Duration::from_secs(5))
            .await
            .expect("the change ends within 5 s");
        let want = (change == "set").then_some("new");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = r.get_value(&key).await.expect("get");
            if now.as_deref() == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a {change} whose caller hung up left the other replica serving {now:?} (want {want:?})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Pub/sub channels are server-wide: two deployments on different databases of one Redis
/// (staging on 1 beside production on 0, same namespace) must not act on each other's
/// invalidations — a staging `clear()` used to make every production entry a miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_on_other_databases_of_one_server_do_not_hear_each_other() {
    let server = RedisServer::start();
    let (production, staging) = (server.url(), format!("{}/1", server.url()));
    let mut production_b = Replica::start(&production, "chat");
    let mut staging_b = Replica::start(&staging, "chat");
    let production_a = replica_here(&production, "chat").await;
    let staging_a = replica_here(&staging, "chat").await;
    for r in [&mut production_b, &mut staging_b] {
        assert_eq!(
            ask_until(r, "state", "subscribed true", Duration::from_secs(10)),
            "subscribed true"
        );
    }
    assert_eq!(production_b.ask("fill p 20 user:1"), "ok");
    assert_eq!(staging_b.ask("fill s 20 user:1"), "ok");

    staging_a
        .invalidate_tag("user:1")
        .await
        .expect("invalidate_tag");
    staging_a.clear().await.expect("clear");
    // Staging's own replica hears it...
    assert_eq!(
        ask_until(
            &mut staging_b,
            "fresh s 20",
            "fresh 0",
            Duration::from_secs(10)
        ),
        "fresh 0"
    );
    // ...and production's has read everything published before this change of its own fleet
    // (one server delivers a channel's messages in order) when it sees the change.
    production_a
        .set_value("marker", "m1".into(), Duration::from_secs(600))
        .await
        .expect("set");
    assert_eq!(production_b.ask("get marker"), "val m1");
    production_a
        .set_value("marker", "m2".into(), Duration::from_secs(600))
        .await
        .expect("set");
    assert_eq!(
        ask_until(
            &mut production_b,
            "get marker",
            "val m2",
            Duration::from_secs(10)
        ),
        "val m2"
    );
    assert_eq!(
        production_b.ask("fresh p 20"),
        "fresh 20",
        "staging's clear and tag invalidation reached production"
    );
}
