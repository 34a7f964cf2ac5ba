//! A fleet under a burst of changes stays one cache, and no replica loses its L1 to it:
//!
//! * a burst of changes on one replica (a `set_many` of thousands of keys, a loop of deletes)
//!   reaches another replica — a separate OS process — whole, and leaves what that replica's
//!   L1 holds otherwise in place (no message lost on its side, so no L1 dropped);
//! * a `set_many` of more keys than the outbox holds is announced whole, not replaced by a
//!   resync that would drop every other replica's L1;
//! * nor are thousands of concurrent changes: a change waits for room in the outbox (while the
//!   publisher makes progress) rather than overflow it.

#![cfg(all(feature = "redis", feature = "msgpack"))]

mod support;

use std::time::{Duration, Instant};

use layercache::{Cache, Entry, Layered};
use support::fleet::{backplane_state, replica_cache, Replica};
use support::redis::RedisServer;

/// Not a test of its own: the body of a replica process (see `support::fleet`). Run by the
/// other tests as a child process; without the environment variable it does nothing.
#[test]
fn fleet_replica_process() {
    support::fleet::replica_process();
}

/// A counter out of a replica's `diag` answer (`name: N` in its backplane state).
fn counter(diag: &str, name: &str) -> u64 {
    let at = diag
        .find(&format!("{name}: "))
        .unwrap_or_else(|| panic!("no {name} in {diag}"));
    diag[at + name.len() + 2..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("a number after {name} in {diag}"))
}

fn wait_subscribed(replica: &mut Replica) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while replica.ask("state") != "subscribed true" {
        assert!(
            Instant::now() < deadline,
            "the replica never heard the fleet"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn wait_subscribed_here(cache: &Layered<String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !backplane_state(cache).subscribed {
        assert!(
            Instant::now() < deadline,
            "the writer never heard the fleet"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The entries the reader fills its L1 with, which no change of a burst concerns.
const KEPT: usize = 2_000;

/// A reader process holding [`KEPT`] entries of its own, and a writer here, both on `namespace`.
async fn reader_and_writer(url: &str, namespace: &str) -> (Replica, Layered<String>) {
    let mut reader = Replica::start(url, namespace);
    wait_subscribed(&mut reader);
    assert_eq!(reader.ask(&format!("fill kept {KEPT} mine")), "ok");
    let writer = replica_cache(url, namespace).await.expect("writer");
    wait_subscribed_here(&writer).await;
    (reader, writer)
}

/// `writer.set_many` of `count` OpenAI-sized replies under `prefix`.
async fn write_many(writer: &Layered<String>, prefix: &str, count: usize) {
    let entries: Vec<(String, Entry<String>)> = (0..count)
        .map(|i| {
            let reply = support::chat::text(i as u64, 200);
            (
                format!("{prefix}{i}"),
                Entry::new(reply, Duration::from_secs(600)),
            )
        })
        .collect();
    let entries = entries
        .iter()
        .map(|(k, e)| (k.as_str(), e.clone()))
        .collect();
    writer.set_many(entries).await.expect("set_many");
}

/// Every one of `changes` messages since `before` (the reader's `diag`) reached the reader, which
/// lost none and still serves its own entries from its L1.
fn assert_reader_kept_its_l1(reader: &mut Replica, before: &str, changes: usize) {
    // Messages the reader lost would not count as received.
    let want = counter(before, "received") + changes as u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let diag = reader.ask("diag");
        if counter(&diag, "received") >= want || counter(&diag, "dropped") > 0 {
            break diag;
        }
        assert!(
            Instant::now() < deadline,
            "the changes never arrived whole: {diag}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        (counter(&after, "dropped"), counter(&after, "resyncs")),
        (0, counter(before, "resyncs")),
        "the reader lost messages and dropped its L1: {after}"
    );
    // Its own entries are still served from its L1: not one more read of Redis.
    assert_eq!(
        reader.ask(&format!("fresh kept {KEPT}")),
        format!("fresh {KEPT}")
    );
    let served = reader.ask("diag");
    assert_eq!(
        counter(&served, "l2_hits"),
        counter(&after, "l2_hits"),
        "the reader's own entries had left its L1: {served}"
    );
    assert_eq!(reader.ask("state"), "subscribed true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_changes_leaves_the_other_replicas_l1_alone() {
    const ROUNDS: usize = 5;
    const PER_SET_MANY: usize = 2_000;
    const DELETES: usize = 500;
    let server = RedisServer::start();
    let (mut reader, writer) = reader_and_writer(&server.url(), "burst").await;
    let before = reader.ask("diag");
    let mut changes = 0;
    for round in 0..ROUNDS {
        let prefix = format!("burst{round}-");
        write_many(&writer, &prefix, PER_SET_MANY).await;
        for i in 0..DELETES {
            writer
                .delete(&format!("{prefix}{i}"))
                .await
                .expect("delete");
        }
        changes += PER_SET_MANY + DELETES;
    }
    assert_eq!(backplane_state(&writer).published as usize, changes);
    assert_reader_kept_its_l1(&mut reader, &before, changes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_many_larger_than_the_outbox_leaves_the_other_replicas_l1_alone() {
    // More keys than the outbox holds: queued at once, they overflowed it into a resync.
    let keys = layercache::fleet::MAX_OUTBOX + 2_000;
    let server = RedisServer::start();
    let (mut reader, writer) = reader_and_writer(&server.url(), "bulk").await;
    let before = reader.ask("diag");
    write_many(&writer, "bulk", keys).await;
    let state = backplane_state(&writer);
    assert_eq!(
        (state.outbox_overflows, state.published as usize),
        (0, keys),
        "{state:?}"
    );
    assert_reader_kept_its_l1(&mut reader, &before, keys);
    // And every key of the write is in Redis and readable on the other replica.
    assert_eq!(
        reader.ask(&format!("fresh bulk {keys}")),
        format!("fresh {keys}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_concurrent_changes_leave_the_other_replicas_l1_alone() {
    // Concurrent, each on its own task (a batch job, or as many request handlers), faster than
    // the backplane publishes them: here its connection goes through a proxy that holds every
    // chunk for 20 ms (a publisher that falls behind, as on a busy runtime or a distant Redis),
    // while the writes go to Redis directly. Queued all at once, they overflowed the outbox
    // into a resync. The callers run on a runtime of their own, so that only the proxy, not a
    // starved runtime, sets the publisher's pace.
    const CHANGES: usize = 40_000;
    let server = RedisServer::start();
    let url = server.url();
    let mut reader = Replica::start(&url, "concurrent");
    wait_subscribed(&mut reader);
    assert_eq!(reader.ask(&format!("fill kept {KEPT} mine")), "ok");
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", server.port)
        .parse()
        .expect("address");
    let proxy = support::proxy::FaultProxy::start(upstream).await;
    let l2 = layercache::RedisCache::<String>::builder()
        .url(&url)
        .namespace("concurrent")
        .build()
        .await
        .expect("l2");
    let backplane = layercache::RedisCache::<String>::builder()
        .url(proxy.url())
        .namespace("concurrent")
        .build()
        .await
        .expect("the backplane's cache")
        .backplane()
        .await
        .expect("backplane");
    let writer = Layered::builder(layercache::MemoryCache::builder().build().expect("l1"), l2)
        .backplane(backplane)
        .build()
        .expect("writer");
    wait_subscribed_here(&writer).await;
    proxy.set(support::proxy::Mode::Latency(Duration::from_millis(20)));
    let before = reader.ask("diag");
    let callers = support::callers_runtime();
    let changes: Vec<_> = (0..CHANGES)
        .map(|i| {
            let writer = writer.clone();
            callers.spawn(async move {
                let key = format!("c{i}");
                if i % 4 == 3 {
                    writer.delete(&key).await
                } else {
                    let reply = support::chat::text(i as u64, 200);
                    writer
                        .set(&key, Entry::new(reply, Duration::from_secs(600)))
                        .await
                }
            })
        })
        .collect();
    // So many writes at once on 2 CPUs, some may be turned away (`Busy`): a delete says so, a
    // set is caught up later. Every change is announced either way, and that is what is
    // checked here.
    let mut failed = std::collections::BTreeMap::<String, usize>::new();
    for change in changes {
        if let Err(e) = change.await.expect("task") {
            *failed
                .entry(e.to_string().chars().take(60).collect())
                .or_default() += 1;
        }
    }
    callers.shutdown_background();
    let state = backplane_state(&writer);
    println!("{CHANGES} concurrent changes, failed: {failed:?}; {state:?}");
    assert_eq!(state.outbox_overflows, 0, "{state:?}");
    assert!(state.published as usize >= CHANGES, "{state:?}");
    assert_reader_kept_its_l1(&mut reader, &before, CHANGES);
}
