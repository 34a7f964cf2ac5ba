//! `RedisCache` against a real single `redis-server`: typed round trips in every format, exact
//! lifetimes, corrupted bytes, batches, and `invalidate_prefix` without `KEYS`.

#![cfg(all(feature = "redis", feature = "msgpack"))]

mod support;

use std::time::Duration;

use fred::bytes::Bytes;
use fred::prelude::KeysInterface;
use layercache::codec::{Codec, Format, ValueCodec};
use layercache::{Cache, CacheExt, Entry, RedisCache};
use support::chat::{reply, ChatReply};
use support::redis::{raw_client, RedisServer};

fn entry(seed: u64, size: usize) -> Entry<ChatReply> {
    Entry::new(reply(seed, size), Duration::from_secs(60)).with_max_stale(Duration::from_secs(60))
}

async fn round_trip<F: Format + Clone>(server: &RedisServer, format: F) {
    for compress in [false, true] {
        let cache =
            support::redis::cache_with_format(&server.url(), "t", format.clone(), compress).await;
        for (i, size) in [100usize, 4096, 100_000].into_iter().enumerate() {
            let key = format!("{}-{compress}-{i}", format.name());
            let e = entry(i as u64, size);
            cache.set(&key, e.clone()).await.expect("set");
            let got = cache.get(&key).await.expect("get").expect("hit");
            assert_eq!(got.value(), e.value(), "{key}");
            assert_eq!(got.fresh_until(), e.fresh_until());
            assert_eq!(got.stale_until(), e.stale_until());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_round_trip_in_every_format() {
    let server = RedisServer::start();
    #[cfg(feature = "postcard")]
    round_trip(&server, layercache::codec::Postcard).await;
    #[cfg(feature = "json")]
    round_trip(&server, layercache::codec::Json).await;
    #[cfg(feature = "msgpack")]
    round_trip(&server, layercache::codec::MessagePack).await;
    #[cfg(feature = "bincode")]
    round_trip(&server, layercache::codec::Bincode).await;
    let keys = server.cli(&["dbsize"]);
    assert!(keys.trim().parse::<u32>().expect("dbsize") >= 6);
}

#[cfg(feature = "msgpack")]
async fn default_cache(server: &RedisServer) -> RedisCache<ChatReply> {
    RedisCache::builder()
        .url(server.url())
        .namespace("t")
        .build()
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_is_gone_from_redis_after_its_lifetime() {
    let server = RedisServer::start();
    let cache = default_cache(&server).await;
    cache
        .set(
            "short",
            Entry::new(reply(1, 300), Duration::from_millis(200)),
        )
        .await
        .expect("set");
    let pttl: i64 = server
        .cli(&["pttl", "t:short"])
        .trim()
        .parse()
        .expect("pttl");
    assert!(
        (1..=200).contains(&pttl),
        "Redis expiry follows the entry: {pttl} ms"
    );
    // With a stale period, Redis keeps the value until the stale deadline.
    cache
        .set(
            "stale",
            Entry::new(reply(2, 300), Duration::from_millis(100))
                .with_max_stale(Duration::from_secs(30)),
        )
        .await
        .expect("set");
    let pttl: i64 = server
        .cli(&["pttl", "t:stale"])
        .trim()
        .parse()
        .expect("pttl");
    assert!(pttl > 29_000, "{pttl}");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        server.cli(&["exists", "t:short"]).trim(),
        "0",
        "gone from Redis"
    );
    assert!(cache.get("short").await.expect("get").is_none());
    let stale = cache
        .get("stale")
        .await
        .expect("get")
        .expect("kept for fail-safe");
    assert!(!stale.is_fresh());
    assert_eq!(cache.get_value("stale").await.expect("get"), None);
    // An already expired entry deletes the key.
    cache
        .set("stale", Entry::new(reply(3, 10), Duration::ZERO))
        .await
        .expect("set");
    assert_eq!(server.cli(&["exists", "t:stale"]).trim(), "0");
}

/// `Duration::MAX` ("forever") is accepted and kept: Redis refuses an expiry that overflows its
/// clock, so the key gets a 100-year one while the entry keeps its own deadlines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifetime_of_duration_max_is_kept_in_redis() {
    let server = RedisServer::start();
    let cache = default_cache(&server).await;
    cache
        .set_value("forever", reply(1, 300), Duration::MAX)
        .await
        .expect("set with Duration::MAX");
    let entry = Entry::new(reply(2, 300), Duration::MAX).with_max_stale(Duration::MAX);
    assert!(cache
        .set_if_newer("forever2", entry.clone())
        .await
        .expect("set_if_newer"));
    cache
        .set_many(vec![("forever3", entry)])
        .await
        .expect("set_many");
    const CENTURY_MS: i64 = 100 * 365 * 24 * 3600 * 1000;
    for key in ["t:forever", "t:forever2", "t:forever3"] {
        let pttl: i64 = server.cli(&["pttl", key]).trim().parse().expect("pttl");
        assert!(
            (CENTURY_MS - 60_000..=CENTURY_MS).contains(&pttl),
            "{key}: {pttl} ms"
        );
    }
    assert_eq!(
        cache.get_value("forever").await.expect("get"),
        Some(reply(1, 300))
    );
    let read = cache.get("forever2").await.expect("get").expect("kept");
    assert!(read.is_fresh());
    assert!(read.time_to_stale() > Duration::from_secs(1000 * 365 * 24 * 3600));
    assert!(cache.get("forever3").await.expect("get").is_some());
}

fn flipped_copy(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut flipped = bytes.to_vec();
    flipped[bit / 8] ^= 1 << (bit % 8);
    flipped
}

#[cfg(feature = "zstd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bytes_are_a_miss_and_corrupted_ones_are_deleted() {
    let server = RedisServer::start();
    let cache = default_cache(&server).await;
    let raw = raw_client(&server.url()).await;
    let codec: Codec<_> = Codec::builder().build().expect("codec");
    let original = entry(42, 4096);
    let valid = codec.encode(&original).expect("encode");
    assert_eq!(valid[3] & 1, 1, "compressed frame");

    #[cfg_attr(not(feature = "json"), allow(unused_mut))]
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        (
            "garbage".into(),
            (0..3000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        ),
        ("empty".into(), Vec::new()),
        ("truncated".into(), valid[..valid.len() / 2].to_vec()),
        ("header-only".into(), valid[..41].to_vec()),
    ];
    #[cfg(feature = "json")]
    {
        let json = Codec::with_format(layercache::codec::Json)
            .build()
            .expect("codec");
        cases.push((
            "other-format".into(),
            json.encode(&original).expect("encode"),
        ));
    }
    for (name, bytes) in &cases {
        let key = format!("t:{name}");
        let _: () = raw
            .set(&key, Bytes::from(bytes.clone()), None, None, false)
            .await
            .expect("raw set");
        assert!(
            cache
                .get(name)
                .await
                .expect("a decode failure is a miss, not an error")
                .is_none(),
            "{name}"
        );
        let exists: i64 = raw.exists(&key).await.expect("exists");
        // An intact frame of another format may be read by another deployment: kept.
        let expected = i64::from(name == "other-format");
        assert_eq!(
            exists, expected,
            "{name}: corrupted keys are deleted, foreign ones kept"
        );
    }

    // Every single-bit flip of the compressed frame.
    use layercache::Error;
    let (mut misses, mut identical, mut foreign_kept) = (0, 0, 0u64);
    for bit in 0..valid.len() * 8 {
        let mut flipped = valid.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let _: () = raw
            .set("t:flip", Bytes::from(flipped), None, None, false)
            .await
            .expect("raw set");
        match cache.get("flip").await.expect("never an error") {
            None => {
                misses += 1;
                // Corruption the frame proves (checksum, lengths, magic) is deleted; a flip that
                // makes the header name another version, format or size is a miss left in place
                // (it reads as another deployment's value).
                let foreign =
                    match ValueCodec::<ChatReply>::decode(&codec, &flipped_copy(&valid, bit)) {
                        Err(Error::Decode { kind, .. }) => kind.is_foreign(),
                        other => panic!("bit {bit}: a miss must be a decode error, got {other:?}"),
                    };
                let exists: i64 = raw.exists("t:flip").await.expect("exists");
                assert_eq!(
                    exists,
                    i64::from(foreign),
                    "bit {bit}: deleted unless foreign"
                );
                foreign_kept += u64::from(foreign);
            }
            Some(got) => {
                assert_eq!(got.value(), original.value(), "bit {bit}: never wrong data");
                identical += 1;
            }
        }
    }
    println!("{} bit flips through Redis: {misses} misses ({foreign_kept} of them foreign-looking, kept), {identical} decoded to the original", valid.len() * 8);
    let stats = cache.stats();
    assert_eq!(
        stats.errors,
        (cases.len() + misses) as u64,
        "each bad value counted once as a decode error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_use_mget_and_pipelines() {
    let server = RedisServer::start();
    let cache = default_cache(&server).await;
    let keys: Vec<String> = (0..100).map(|i| format!("batch-{i}")).collect();
    let entries: Vec<(&str, Entry<ChatReply>)> = keys
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(i, k)| (k.as_str(), entry(i as u64, 500)))
        .collect();
    cache.set_many(entries).await.expect("set_many");
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let got = cache.get_many(&refs).await.expect("get_many");
    assert_eq!(got.len(), 100);
    for (i, e) in got.iter().enumerate() {
        if i % 3 == 0 {
            assert!(e.is_none(), "{i} was never set");
        } else {
            assert_eq!(
                e.as_ref().expect("present").value(),
                &reply(i as u64, 500),
                "{i}"
            );
        }
    }
    let stats = server.cli(&["info", "commandstats"]);
    assert!(
        stats.contains("cmdstat_mget:calls=1,"),
        "one MGET for 100 keys:\n{stats}"
    );
    assert!(!stats.contains("cmdstat_get:"), "no single GETs");
    assert!(cache.get_many(&[]).await.expect("empty").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_prefix_removes_exactly_the_prefixed_keys_without_keys_command() {
    let server = RedisServer::start();
    let cache = default_cache(&server).await;
    populate(&cache, "user:1:", 100_000).await;
    populate(&cache, "user:2:", 1_000).await;
    populate(&cache, "user:1*", 10).await; // glob characters in keys are matched literally
    server.cli(&["set", "user:1:outside-namespace", "x"]);
    assert_eq!(server.cli(&["dbsize"]).trim(), "101011");

    let removed = cache
        .invalidate_prefix("user:1:")
        .await
        .expect("invalidate");
    assert_eq!(removed, 100_000);
    assert_eq!(server.cli(&["dbsize"]).trim(), "1011");
    assert!(cache.get("user:2:7").await.expect("get").is_some());
    assert!(cache.get("user:1*7").await.expect("get").is_some());
    assert_eq!(
        server.cli(&["exists", "user:1:outside-namespace"]).trim(),
        "1"
    );
    let stats = server.cli(&["info", "commandstats"]);
    assert!(
        !stats.contains("cmdstat_keys"),
        "KEYS was never used:\n{stats}"
    );
    assert!(stats.contains("cmdstat_scan"), "SCAN was used");

    // An empty prefix empties a namespace, never a whole database: without a namespace it is
    // refused, through a `Layered` too, and nothing is removed anywhere.
    let bare: RedisCache<ChatReply> = RedisCache::builder()
        .url(server.url())
        .build()
        .await
        .expect("connect");
    let refused = bare.invalidate_prefix("").await;
    assert!(
        matches!(refused, Err(layercache::Error::Config { .. })),
        "{refused:?}"
    );
    let stack = layercache::Layered::builder(
        layercache::MemoryCache::builder().build().expect("l1"),
        bare.clone(),
    )
    .build()
    .expect("layered");
    stack
        .set("own", Entry::new(reply(1, 64), Duration::from_secs(600)))
        .await
        .expect("set");
    for _ in 0..10 {
        let refused = stack.invalidate_prefix("").await;
        assert!(
            matches!(refused, Err(layercache::Error::Config { .. })),
            "{refused:?}"
        );
    }
    assert!(stack.get("own").await.expect("get").is_some(), "L1 kept");
    assert_eq!(server.cli(&["dbsize"]).trim(), "1012");
    assert_eq!(
        stack.health()[1].circuit,
        layercache::CircuitState::Closed,
        "a refused request is not a failure of Redis"
    );
    assert_eq!(bare.invalidate_prefix("own").await.expect("prefix"), 1);
    // A delete's tombstone (`redis::TOMBSTONE_TTL`) is removed but not counted as a value; a
    // key of another type under the prefix is.
    for key in ["tomb:a", "tomb:b", "tomb:c"] {
        stack
            .set(key, Entry::new(reply(2, 64), Duration::from_secs(600)))
            .await
            .expect("set");
    }
    stack.delete("tomb:b").await.expect("delete");
    assert_eq!(
        server.cli(&["exists", "tomb:b"]).trim(),
        "1",
        "its tombstone"
    );
    assert!(stack.get("tomb:b").await.expect("get").is_none());
    server.cli(&["hset", "tomb:h", "field", "value"]);
    assert_eq!(bare.invalidate_prefix("tomb:").await.expect("prefix"), 3);
    assert_eq!(server.cli(&["exists", "tomb:b", "tomb:h"]).trim(), "0");
    assert_eq!(cache.invalidate_prefix("").await.expect("namespace"), 1_010);
}

pub async fn populate(cache: &RedisCache<ChatReply>, prefix: &str, n: usize) {
    let value = reply(0, 64);
    let keys: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    for chunk in keys.chunks(2000) {
        let entries = chunk
            .iter()
            .map(|k| {
                (
                    k.as_str(),
                    Entry::new(value.clone(), Duration::from_secs(600)),
                )
            })
            .collect();
        cache.set_many(entries).await.expect("set_many");
    }
}

/// Per-operation metrics carry the cache, layer and operation: a timed-out `get` on a hung server
/// is one `layercache_layer_errors_total{op="get"}`, and every `get` is one duration sample.
#[tokio::test] // one thread: the local recorder must be current where the handles are made
async fn layer_errors_and_durations_are_labelled_by_operation() {
    use layercache::metrics::{LAYER_ERRORS_TOTAL, OP_DURATION_SECONDS};
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let server = RedisServer::start();
    let recorder = DebuggingRecorder::new();
    let cache: RedisCache<ChatReply> = {
        let _current = metrics::set_default_local_recorder(&recorder);
        RedisCache::builder()
            .url(server.url())
            .name("chat")
            .command_timeout(Duration::from_millis(200))
            .build()
            .await
            .expect("connect")
    };
    cache.set("k", entry(1, 100)).await.expect("set");
    assert!(cache.get("k").await.expect("get").is_some());
    server.pause();
    let hung = cache.get("k").await;
    server.resume();
    assert!(
        hung.is_err(),
        "a get on a hung server must fail, got {hung:?}"
    );

    let mut errors = Vec::new();
    let mut get_samples = 0;
    for (key, _, _, value) in recorder.snapshotter().snapshot().into_vec() {
        let key = key.key();
        let mut labels: Vec<(String, String)> = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        labels.sort();
        let op = labels
            .iter()
            .find(|(k, _)| k == "op")
            .map(|(_, v)| v.clone());
        match value {
            DebugValue::Counter(n) if key.name() == LAYER_ERRORS_TOTAL && n > 0 => {
                errors.push((labels, n));
            }
            DebugValue::Histogram(samples)
                if key.name() == OP_DURATION_SECONDS && op.as_deref() == Some("get") =>
            {
                assert!(
                    labels.contains(&("cache".into(), "chat".into())),
                    "{labels:?}"
                );
                assert!(
                    labels.contains(&("layer".into(), "redis".into())),
                    "{labels:?}"
                );
                get_samples += samples.len();
            }
            _ => {}
        }
    }
    let expected: Vec<(String, String)> = [("cache", "chat"), ("layer", "redis"), ("op", "get")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(errors, vec![(expected, 1)]);
    assert!(get_samples >= 1, "successful gets are timed: {get_samples}");
}

#[tokio::test]
async fn set_if_newer_compares_creation_times_in_redis() {
    use std::time::{SystemTime, UNIX_EPOCH};
    let server = RedisServer::start();
    let cache: RedisCache<ChatReply> = RedisCache::builder()
        .url(server.url())
        .namespace("t")
        .build()
        .await
        .expect("connect");
    let at = |s: u64| UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s);
    let newer = entry(2, 64).with_created_at(at(20));
    let older = entry(1, 64).with_created_at(at(10));
    assert!(cache.set_if_newer("k", newer.clone()).await.expect("first"));
    assert!(!cache.set_if_newer("k", older).await.expect("older"));
    let stored = cache.get("k").await.expect("get").expect("present");
    assert_eq!(stored.value(), newer.value());
    assert_eq!(stored.created_at(), at(20));
    let newest = entry(3, 64).with_created_at(at(30));
    assert!(cache
        .set_if_newer("k", newest.clone())
        .await
        .expect("newest"));
    assert_eq!(
        cache.get("k").await.expect("get").expect("present").value(),
        newest.value()
    );
    // A frame without a creation time (an earlier version's) counts as older.
    let legacy = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/v1-postcard-plain.frame"),
    )
    .expect("golden");
    let raw = raw_client(&server.url()).await;
    let _: () = raw
        .set("t:legacy", Bytes::from(legacy), None, None, false)
        .await
        .expect("raw set");
    let now = entry(4, 64).with_created_at(SystemTime::now());
    assert!(cache
        .set_if_newer("legacy", now)
        .await
        .expect("over a legacy frame"));
}

/// The batch and delete forms compare in Redis too; and the scripts go by their hash
/// (`EVALSHA`), sent whole only when the server does not know them (after `SCRIPT FLUSH`, as
/// after a restart or a failover), singly and in a pipelined batch.
#[tokio::test]
async fn conditional_batches_and_deletes_compare_in_redis_and_go_by_hash() {
    use std::time::UNIX_EPOCH;
    let server = RedisServer::start();
    let cache: RedisCache<ChatReply> = RedisCache::builder()
        .url(server.url())
        .namespace("c")
        .build()
        .await
        .expect("connect");
    let at = |s: u64| UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s);
    cache
        .set("a", entry(1, 64).with_created_at(at(20)))
        .await
        .expect("set");

    // Unknown scripts: sent whole once, then by hash.
    server.cli(&["SCRIPT", "FLUSH"]);
    let batch = vec![
        ("a", entry(2, 64).with_created_at(at(10))),
        ("b", entry(3, 100_000).with_created_at(at(10))),
        ("c", entry(4, 64).with_created_at(at(10))),
    ];
    assert_eq!(
        cache.set_many_if_newer(batch).await.expect("batch"),
        vec![false, true, true],
        "\"a\" holds a newer entry"
    );
    let (eval, evalsha) = (
        server.command_calls("eval"),
        server.command_calls("evalsha"),
    );
    assert!(eval >= 1, "the script was sent whole after NOSCRIPT");
    let again = vec![
        ("a", entry(5, 64).with_created_at(at(30))),
        ("b", entry(6, 64).with_created_at(at(5))),
    ];
    assert_eq!(
        cache.set_many_if_newer(again).await.expect("batch"),
        vec![true, false]
    );
    assert_eq!(server.command_calls("eval"), eval, "known now: by hash");
    assert_eq!(server.command_calls("evalsha"), evalsha + 2);
    assert_eq!(
        cache.get("a").await.expect("get").expect("a").value(),
        entry(5, 64).value()
    );
    assert_eq!(
        cache.get("b").await.expect("get").expect("b").value(),
        entry(3, 100_000).value()
    );

    // Deletes: only what was created before the given time.
    server.cli(&["SCRIPT", "FLUSH"]);
    assert!(!cache.delete_if_older("a", at(30)).await.expect("delete"));
    assert!(cache.get("a").await.expect("get").is_some(), "kept: as new");
    assert!(cache.delete_if_older("a", at(31)).await.expect("delete"));
    assert!(cache.get("a").await.expect("get").is_none());
    assert!(
        cache
            .delete_if_older("missing", at(31))
            .await
            .expect("delete"),
        "nothing newer there"
    );
    let eval = server.command_calls("eval");
    assert!(cache.delete_if_older("c", at(11)).await.expect("delete"));
    assert_eq!(server.command_calls("eval"), eval, "by hash");
    assert!(cache.get("c").await.expect("get").is_none());
    // A delete leaves a tombstone for TOMBSTONE_TTL: an entry created before the delete (a load
    // that read its data before it) is kept out; one created after it is written.
    let pttl = server.pttl("c:a");
    assert!(
        pttl > 0 && pttl <= layercache::redis::TOMBSTONE_TTL.as_millis() as i64,
        "{pttl}"
    );
    assert!(!cache
        .set_if_newer("a", entry(9, 64).with_created_at(at(30)))
        .await
        .expect("write"));
    assert!(cache.get("a").await.expect("get").is_none(), "kept out");
    assert!(
        !cache.delete_if_older("a", at(31)).await.expect("delete"),
        "as new"
    );
    assert!(cache
        .set_if_newer("a", entry(10, 64).with_created_at(at(32)))
        .await
        .expect("write"));
    assert_eq!(
        cache.get("a").await.expect("get").expect("a").value(),
        entry(10, 64).value()
    );
    // The tombstone's format is pinned (tests/golden): read as a miss, never an error.
    let stone = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1-tombstone.frame"),
    )
    .expect("golden");
    let raw = raw_client(&server.url()).await;
    let _: () = raw
        .set("c:stone", Bytes::from(stone), None, None, false)
        .await
        .expect("raw set");
    assert!(cache.get("stone").await.expect("a miss").is_none());
    assert_eq!(
        server.cli(&["exists", "c:stone"]).trim(),
        "1",
        "not evicted"
    );
    assert!(!cache
        .set_if_newer(
            "stone",
            entry(11, 64).with_created_at(UNIX_EPOCH + Duration::from_secs(1_799_999_999))
        )
        .await
        .expect("write"));
    // Single conditional writes by hash, too.
    server.cli(&["SCRIPT", "FLUSH"]);
    assert!(cache
        .set_if_newer("d", entry(7, 64).with_created_at(at(1)))
        .await
        .expect("write"));
    let eval = server.command_calls("eval");
    assert!(cache
        .set_if_newer("d", entry(8, 64).with_created_at(at(2)))
        .await
        .expect("write"));
    assert_eq!(server.command_calls("eval"), eval, "by hash");
}

/// Signed values: a frame planted by a writer without the key, or a genuine frame copied under
/// another key, is a miss (counted, never served, not deleted); rotation reads old values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_values_refuse_forged_and_copied_frames() {
    let server = RedisServer::start();
    let raw = raw_client(&server.url()).await;
    let signed = |keys: &[(u8, [u8; 32], bool)]| {
        let mut builder = Codec::builder();
        for &(id, key, signs) in keys {
            builder = if signs {
                builder.signing_key(id, key)
            } else {
                builder.accept_signing_key(id, key)
            };
        }
        builder.build().expect("codec")
    };
    let (old_key, new_key) = ([0x5a; 32], [0xc3; 32]);
    let cache = |codec: Codec<_>| {
        RedisCache::<ChatReply>::builder_with_codec(codec)
            .url(server.url())
            .namespace("sig")
            .build()
    };
    let writer = cache(signed(&[(1, old_key, true)])).await.expect("connect");
    writer
        .set("genuine", entry(1, 2_000))
        .await
        .expect("a signed write");
    assert_eq!(
        writer.get_value("genuine").await.expect("get"),
        Some(reply(1, 2_000))
    );

    // Planted by someone with write access but without the key: an unsigned frame, and one
    // signed with another key.
    let unsigned = Codec::builder().build().expect("codec");
    let other = signed(&[(1, [0x11; 32], true)]);
    for (key, codec) in [("planted-plain", &unsigned), ("planted-other", &other)] {
        let bytes =
            ValueCodec::<ChatReply>::encode_for_key(codec, &format!("sig:{key}"), &entry(9, 300))
                .expect("encode");
        let _: () = raw
            .set(format!("sig:{key}"), Bytes::from(bytes), None, None, false)
            .await
            .expect("raw set");
    }
    // A genuine frame copied under another key.
    let genuine: Bytes = raw.get("sig:genuine").await.expect("raw get");
    let _: () = raw
        .set("sig:copied", genuine, None, None, false)
        .await
        .expect("raw set");

    let errors_before = writer.stats().errors;
    for key in ["planted-plain", "planted-other", "copied"] {
        assert_eq!(
            writer.get_value(key).await.expect("get"),
            None,
            "{key} was served"
        );
        let exists: i64 = raw.exists(format!("sig:{key}")).await.expect("exists");
        assert_eq!(exists, 1, "{key}: a refused frame is left for its writer");
    }
    assert_eq!(
        writer.stats().errors,
        errors_before + 3,
        "each refusal is counted"
    );

    // Rotation: a replica signing with the new key and accepting the old reads old values; one
    // that dropped the old key does not.
    let rotated = cache(signed(&[(2, new_key, true), (1, old_key, false)]))
        .await
        .expect("connect");
    assert_eq!(
        rotated.get_value("genuine").await.expect("get"),
        Some(reply(1, 2_000))
    );
    rotated.set("fresh", entry(2, 50)).await.expect("set");
    assert!(
        writer.get_value("fresh").await.expect("get").is_none(),
        "old replicas lack key 2"
    );
    let dropped = cache(signed(&[(2, new_key, true)])).await.expect("connect");
    assert_eq!(dropped.get_value("genuine").await.expect("get"), None);
    assert_eq!(
        dropped.get_value("fresh").await.expect("get"),
        Some(reply(2, 50))
    );
    // Accepting without signing (a fleet starting to sign) still reads unsigned frames.
    let accepting = cache(signed(&[(1, old_key, false)]))
        .await
        .expect("connect");
    assert!(accepting
        .get_value("planted-plain")
        .await
        .expect("get")
        .is_some());
    assert!(accepting
        .get_value("planted-other")
        .await
        .expect("get")
        .is_none());
    // Keys never show in Debug.
    let shown = format!("{:?}", signed(&[(1, old_key, true)]));
    assert!(
        !shown.contains("90, 90") && !shown.contains("5a5a"),
        "{shown}"
    );
}

/// Private keys: prompts keyed with `KeyBuilder::request` never appear in Redis key names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_keys_keep_prompts_out_of_redis() {
    use layercache::KeyBuilder;
    let server = RedisServer::start();
    let cache = default_cache(&server).await;
    let prompts: Vec<String> = (0..40)
        .map(|i| {
            format!(
                "user {i} asks: what is the refund policy for order {}?",
                9000 + i
            )
        })
        .collect();
    for (i, prompt) in prompts.iter().enumerate() {
        let key = KeyBuilder::request("chat")
            .version(1)
            .label("gpt-4o-mini")
            .part(prompt)
            .build();
        cache.set(&key, entry(i as u64, 200)).await.expect("set");
        assert!(cache.get(&key).await.expect("get").is_some());
    }
    let raw = raw_client(&server.url()).await;
    // What `redis-cli --scan` or `MONITOR` would show.
    let names: Vec<String> = fred::prelude::ClientLike::custom(&raw, fred::cmd!("KEYS"), vec!["*"])
        .await
        .expect("KEYS");
    assert_eq!(names.len(), prompts.len(), "{names:?}");
    for name in &names {
        assert!(name.contains("chat:v1:gpt-4o-mini:#"), "{name}");
        for word in ["refund", "policy", "order", "asks", "user"] {
            assert!(!name.contains(word), "prompt text in a key name: {name}");
        }
    }
}

/// The harness runs the server `LAYERCACHE_TEST_SERVER` names (scripts/test.sh runs the Redis
/// test files once on Redis and once on Valkey 8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_under_test_is_the_one_asked_for() {
    let server = RedisServer::start();
    let info = server.cli(&["INFO", "server"]);
    match support::redis::server_kind() {
        "valkey" => assert!(info.contains("valkey_version:8."), "{info}"),
        _ => assert!(!info.contains("valkey_version"), "{info}"),
    }
    let cache = default_cache(&server).await;
    cache.set("k", entry(1, 100)).await.expect("set");
    assert!(cache.get("k").await.expect("get").is_some());
}
