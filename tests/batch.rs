//! Batched reads through a `Layered` stack on a real Redis: `get_many` answers from L1 what it
//! can and asks Redis for the rest in **one** `MGET`, copying what it finds into L1, each key
//! counted once as `get` counts it; an L2 outage leaves L1's answers standing.

#![cfg(all(feature = "redis", feature = "msgpack"))]

mod support;

use std::time::Duration;

use layercache::{Cache, CacheExt, Layered, MemoryCache, RedisCache};
use support::openai::{completion, ChatCompletion};
use support::redis::RedisServer;

fn key(i: u64) -> String {
    format!("prompt:{i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_reads_l1_then_one_mget_and_fills_l1() {
    let mut server = RedisServer::start();
    let l1 = MemoryCache::<ChatCompletion>::builder()
        .max_entries(1_000)
        .build()
        .expect("l1");
    let l2 = RedisCache::<ChatCompletion>::builder()
        .url(server.url())
        .namespace("batch")
        .build()
        .await
        .expect("redis");
    let cache = Layered::builder(l1.clone(), l2.clone())
        .name("batch")
        .build()
        .expect("layered");
    let ttl = Duration::from_secs(600);
    // 0..30 in both layers, 30..90 in Redis only (another replica wrote them), 90..100 nowhere.
    for i in 0..30 {
        cache
            .set_value(&key(i), completion(i), ttl)
            .await
            .expect("set");
    }
    for i in 30..90 {
        l2.set_value(&key(i), completion(i), ttl)
            .await
            .expect("set in Redis");
    }
    let keys: Vec<String> = (0..100).map(key).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();

    server.cli(&["CONFIG", "RESETSTAT"]);
    let found = cache.get_many(&keys).await.expect("get_many");
    assert_eq!(found.len(), 100);
    for (i, entry) in found.iter().enumerate() {
        let i = i as u64;
        match entry {
            Some(entry) => assert_eq!(entry.value(), &completion(i), "key {i}"),
            None => assert!(i >= 90, "key {i} missing"),
        }
    }
    assert_eq!(server.command_calls("mget"), 1, "one batch for 70 keys");
    assert_eq!(server.command_calls("get"), 0);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.l2_hits, stats.misses), (90, 60, 10));
    // What Redis had is in L1 now: the next batch asks Redis for the 10 missing keys only.
    for i in 30..90 {
        assert_eq!(l1.get_value_sync(&key(i)), Some(completion(i)), "key {i}");
    }
    server.cli(&["CONFIG", "RESETSTAT"]);
    let again = cache.get_many(&keys).await.expect("get_many");
    assert_eq!(again.iter().filter(|e| e.is_some()).count(), 90);
    assert_eq!(server.command_calls("mget"), 1);
    assert_eq!(cache.stats().l2_hits, 60, "all 90 from L1 this time");

    // Redis gone: L1 answers what it holds, the rest are misses, no error reaches the caller.
    server.kill();
    let without = cache.get_many(&keys).await.expect("no error without L2");
    assert_eq!(without.iter().filter(|e| e.is_some()).count(), 90);
    assert!(cache.stats().errors >= 1, "{:?}", cache.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_prefers_a_fresher_l2_entry_over_a_stale_l1_one() {
    let server = RedisServer::start();
    let l1 = MemoryCache::<String>::builder().build().expect("l1");
    let l2 = RedisCache::<String>::builder()
        .url(server.url())
        .namespace("fresher")
        .build()
        .await
        .expect("redis");
    let cache = Layered::builder(l1.clone(), l2.clone())
        .build()
        .expect("layered");
    // L1 holds a stale copy (kept for fail-safe), Redis a fresh one another replica wrote.
    let stale = layercache::Entry::new("old".to_string(), Duration::ZERO)
        .with_max_stale(Duration::from_secs(600));
    l1.set("k", stale).await.expect("set");
    l2.set_value("k", "new".into(), Duration::from_secs(600))
        .await
        .expect("set");
    let found = cache.get_many(&["k", "absent"]).await.expect("get_many");
    assert_eq!(found[0].as_ref().map(|e| e.value().as_str()), Some("new"));
    assert!(found[1].is_none());
    assert_eq!(
        l1.get_value_sync("k").as_deref(),
        Some("new"),
        "copied into L1"
    );
    let stats = cache.stats();
    assert_eq!((stats.l2_hits, stats.misses), (1, 1));
}

/// Watches the server's `MONITOR` stream: the client address that sent each `SET`, by key.
struct Monitor {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Monitor {
    fn start(server: &RedisServer) -> Monitor {
        use std::io::BufRead;
        let mut child = std::process::Command::new(support::redis::binary("redis-cli"))
            .args(["-p", &server.port.to_string(), "monitor"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("redis-cli monitor");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        // MONITOR answers OK once it watches.
        let first = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("monitor started");
        assert_eq!(first.trim(), "OK");
        Monitor { child, lines }
    }

    /// The sender of each of the next `count` `SET`s, by key (without the namespace).
    fn sets(&self, count: usize) -> std::collections::HashMap<String, String> {
        self.senders("SET", false, count)
    }

    /// The sender of each key of the next `command`s (every argument a key when `multi_key`,
    /// else the first), until `count` keys were seen.
    fn senders(
        &self,
        command: &str,
        multi_key: bool,
        count: usize,
    ) -> std::collections::HashMap<String, String> {
        let wanted = command;
        let mut found = std::collections::HashMap::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while found.len() < count {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.lines.recv_timeout(left).expect("the SETs in time");
            // 1700000000.123456 [0 127.0.0.1:54321] "SET" "ns:key" ...
            let Some((_, rest)) = line.split_once('[') else {
                continue;
            };
            let Some((client, command)) = rest.split_once(']') else {
                continue;
            };
            let mut words = command.split('"').filter(|w| !w.trim().is_empty());
            if words.next() != Some(wanted) {
                continue;
            }
            let sender = client.split_whitespace().last().expect("address");
            let keys: Vec<&str> = if multi_key {
                words.collect()
            } else {
                words.next().into_iter().collect()
            };
            for key in keys {
                found.insert(key.trim_start_matches("w:").to_owned(), sender.to_owned());
            }
        }
        found
    }
}

/// A cache on a pool of 6 connections (3 writers), namespace `w`.
async fn pool_of_six(server: &RedisServer) -> RedisCache<String> {
    RedisCache::<String>::builder()
        .url(server.url())
        .namespace("w")
        .pool_size(6)
        .build()
        .await
        .expect("redis")
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes of one key must go through one connection, or a batch could overtake a later
/// `delete` of the same key (on a pool with several writer connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_many_writes_each_key_through_the_connection_set_uses() {
    let server = RedisServer::start();
    let cache = pool_of_six(&server).await;
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
    let ttl = Duration::from_secs(600);
    let monitor = Monitor::start(&server);
    for key in &keys {
        cache.set_value(key, "one".into(), ttl).await.expect("set");
    }
    let single = monitor.sets(keys.len());
    let senders: std::collections::HashSet<&String> = single.values().collect();
    assert_eq!(senders.len(), 3, "three writer connections in a pool of 6");
    let batch = keys
        .iter()
        .map(|k| (k.as_str(), layercache::Entry::new("two".to_string(), ttl)))
        .collect();
    cache.set_many(batch).await.expect("set_many");
    let batched = monitor.sets(keys.len());
    for key in &keys {
        assert_eq!(
            batched[key], single[key],
            "{key}: the batch used another connection"
        );
    }
    assert_eq!(
        cache.get_value(&keys[7]).await.expect("get").as_deref(),
        Some("two")
    );
}

/// `invalidate_prefix` is a delete of many keys: each key's `UNLINK` goes through the
/// connection its writes use, or a write still on its way could land after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_prefix_unlinks_each_key_through_its_writer_connection() {
    let server = RedisServer::start();
    let cache = pool_of_six(&server).await;
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
    let monitor = Monitor::start(&server);
    for key in &keys {
        cache
            .set_value(key, "v".into(), Duration::from_secs(600))
            .await
            .expect("set");
    }
    let written = monitor.sets(keys.len());
    assert_eq!(
        cache.invalidate_prefix("key-").await.expect("invalidate"),
        40
    );
    let unlinked = monitor.senders("UNLINK", true, keys.len());
    for key in &keys {
        assert_eq!(
            unlinked[key], written[key],
            "{key}: unlinked on another connection"
        );
    }
}

/// `set_many` through a stack: one L2 batch, then L1, every value readable from another
/// replica; a value L2 refuses is kept in L1 only, as `set` keeps it; with Redis gone every key
/// is remembered for the catch-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_many_through_a_stack_writes_both_layers_in_one_batch() {
    use layercache::codec::{Codec, DefaultFormat};
    let mut server = RedisServer::start();
    let codec = Codec::<DefaultFormat>::builder()
        .max_value_bytes(64 * 1024)
        .no_compression()
        .build()
        .expect("codec");
    let l2 = RedisCache::<ChatCompletion>::builder_with_codec(codec)
        .url(server.url())
        .namespace("many")
        .build()
        .await
        .expect("redis");
    let l1 = MemoryCache::<ChatCompletion>::builder()
        .build()
        .expect("l1");
    let cache = Layered::builder(l1.clone(), l2.clone())
        .build()
        .expect("layered");
    let ttl = Duration::from_secs(600);
    let keys: Vec<String> = (0..50).map(key).collect();
    let entries = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            (
                k.as_str(),
                layercache::Entry::new(completion(i as u64), ttl),
            )
        })
        .collect();
    server.cli(&["CONFIG", "RESETSTAT"]);
    cache.set_many(entries).await.expect("set_many");
    assert_eq!(server.command_calls("set"), 50);
    for (i, k) in keys.iter().enumerate() {
        let i = i as u64;
        assert_eq!(l1.get_value_sync(k), Some(completion(i)), "{k} in L1");
        assert_eq!(
            l2.get_value(k).await.expect("get"),
            Some(completion(i)),
            "{k} in Redis"
        );
    }

    // One value over L2's limit: the batch falls back to one `set` each.
    let mut big = completion(4);
    big.id = "x".repeat(128 * 1024);
    let mixed = vec![
        ("small", layercache::Entry::new(completion(1), ttl)),
        ("big", layercache::Entry::new(big.clone(), ttl)),
    ];
    cache
        .set_many(mixed)
        .await
        .expect("a refusal is not an error");
    assert_eq!(
        l2.get_value("small").await.expect("get"),
        Some(completion(1))
    );
    assert_eq!(
        l2.get_value("big").await.expect("get"),
        None,
        "not in Redis"
    );
    assert_eq!(l1.get_value_sync("big"), Some(big), "kept in L1");

    // Redis gone: answered, every key remembered for the catch-up.
    server.kill();
    let later = keys
        .iter()
        .map(|k| (k.as_str(), layercache::Entry::new(completion(0), ttl)))
        .collect();
    cache.set_many(later).await.expect("no error without L2");
    assert_eq!(cache.pending_l2_writes(), 50);
    assert_eq!(l1.get_value_sync(&keys[9]), Some(completion(0)));
}
