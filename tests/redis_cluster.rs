//! `RedisCache` on a real 3-master Redis Cluster: typed round trips in every format with keys on
//! all three masters, `get_many` across slots, `invalidate_prefix` on every master, tags, and the
//! backplane on a shard channel (changes cross while the cluster bus reconnects).

#![cfg(all(feature = "redis", feature = "postcard"))]

mod support;

use std::time::Duration;

use layercache::codec::Format;
use layercache::{Cache, Entry, RedisCache};
use support::chat::reply;
use support::redis::RedisCluster;

/// One cluster at a time: three 3-node clusters (one loading 100,000 keys) at once on a 2-core
/// machine starve each other, and these tests measure per-call time bounds.
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn round_trip<F: Format + Clone>(cluster: &RedisCluster, format: F) {
    for compress in [false, true] {
        let cache =
            support::redis::cache_with_format(&cluster.url(), "c", format.clone(), compress).await;
        for i in 0..60u64 {
            let key = format!("{}-{compress}-{i}", format.name());
            let e = Entry::new(
                reply(i, 300 + (i as usize % 5) * 900),
                Duration::from_secs(60),
            );
            cache.set(&key, e.clone()).await.expect("set");
            let got = cache.get(&key).await.expect("get").expect("hit");
            assert_eq!(got.value(), e.value(), "{key}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_round_trips_batches_and_invalidates() {
    let _one_cluster = ONE_CLUSTER.lock().await;
    let cluster = RedisCluster::start();

    round_trip(&cluster, layercache::codec::Postcard).await;
    #[cfg(feature = "json")]
    round_trip(&cluster, layercache::codec::Json).await;
    #[cfg(feature = "msgpack")]
    round_trip(&cluster, layercache::codec::MessagePack).await;
    #[cfg(feature = "bincode")]
    round_trip(&cluster, layercache::codec::Bincode).await;
    let counts = cluster.key_counts();
    println!("keys per master after the round trips: {counts:?}");
    assert!(
        counts.iter().all(|&n| n > 0),
        "keys on all three masters: {counts:?}"
    );

    // get_many of 100 keys spread over many slots (some missing), written with set_many.
    let cache =
        support::redis::cache_with_format(&cluster.url(), "c", layercache::codec::Postcard, true)
            .await;
    let keys: Vec<String> = (0..100).map(|i| format!("many-{i}")).collect();
    let entries = keys
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 4 != 0)
        .map(|(i, k)| {
            (
                k.as_str(),
                Entry::new(reply(i as u64, 700), Duration::from_secs(60)),
            )
        })
        .collect();
    cache
        .set_many(entries)
        .await
        .expect("set_many across slots");
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let got = cache.get_many(&refs).await.expect("get_many across slots");
    for (i, e) in got.iter().enumerate() {
        if i % 4 == 0 {
            assert!(e.is_none(), "{i}");
        } else {
            assert_eq!(
                e.as_ref().expect("present").value(),
                &reply(i as u64, 700),
                "{i}"
            );
        }
    }

    // Conditional writes and deletes across slots (each master loads the scripts itself).
    let newer: Vec<(&str, Entry<_>)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            (
                k.as_str(),
                Entry::new(reply(1000 + i as u64, 80), Duration::from_secs(60)),
            )
        })
        .collect();
    let stored = cache
        .set_many_if_newer(newer)
        .await
        .expect("set_many_if_newer across slots");
    assert!(
        stored.iter().all(|s| *s),
        "every entry was newer: {stored:?}"
    );
    let older: Vec<(&str, Entry<_>)> = keys
        .iter()
        .map(|k| {
            let e = Entry::new(reply(7, 80), Duration::from_secs(60))
                .with_created_at(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000));
            (k.as_str(), e)
        })
        .collect();
    let stored = cache.set_many_if_newer(older).await.expect("older batch");
    assert!(stored.iter().all(|s| !*s), "none was newer: {stored:?}");
    let got = cache.get_many(&refs).await.expect("get_many across slots");
    for (i, e) in got.iter().enumerate() {
        assert_eq!(
            e.as_ref().expect("present").value(),
            &reply(1000 + i as u64, 80),
            "{i}"
        );
    }
    // invalidate_prefix over 100k keys, on every master, without KEYS.
    let value = reply(0, 64);
    let doomed: Vec<String> = (0..100_000).map(|i| format!("doomed:{i}")).collect();
    for chunk in doomed.chunks(5000) {
        let entries = chunk
            .iter()
            .map(|k| {
                (
                    k.as_str(),
                    Entry::new(value.clone(), Duration::from_secs(600)),
                )
            })
            .collect();
        cache.set_many(entries).await.expect("populate");
    }
    let before: Vec<u64> = cluster.key_counts();
    let removed = cache
        .invalidate_prefix("doomed:")
        .await
        .expect("invalidate");
    assert_eq!(removed, 100_000);
    let after = cluster.key_counts();
    println!("keys per master before/after invalidating 100k: {before:?} -> {after:?}");
    for (b, a) in before.iter().zip(&after) {
        assert!(
            b - a > 30_000,
            "each master lost its share of the prefixed keys: {before:?} -> {after:?}"
        );
    }
    assert_eq!(
        after.iter().sum::<u64>(),
        before.iter().sum::<u64>() - 100_000
    );
    assert!(
        cache.get("many-50").await.expect("get").is_some(),
        "other keys survive"
    );
    for node in &cluster.nodes {
        let stats = node.cli(&["info", "commandstats"]);
        assert!(
            !stats.contains("cmdstat_keys"),
            "no KEYS on {}:\n{stats}",
            node.port
        );
        assert!(
            stats.contains("cmdstat_scan"),
            "SCAN ran on every master ({})",
            node.port
        );
    }
    // Conditional deletes last: each leaves a tombstone that expires on its own after
    // `redis::TOMBSTONE_TTL`, which would make the key counts above depend on how long the
    // 100k writes took.
    let asked = std::time::SystemTime::now() + Duration::from_secs(1);
    for key in &refs[..20] {
        assert!(cache.delete_if_older(key, asked).await.expect("delete"));
    }
    let got = cache.get_many(&refs[..20]).await.expect("get_many");
    assert!(got.iter().all(Option::is_none));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_on_healthy_masters_keep_hitting_while_one_master_hangs() {
    let _one_cluster = ONE_CLUSTER.lock().await;
    use layercache::CacheExt;
    use std::time::Instant;

    let cluster = RedisCluster::start_with(&["--cluster-require-full-coverage", "no"]);
    let cache: RedisCache<String> = RedisCache::builder()
        .url(cluster.url())
        .namespace("h")
        .command_timeout(Duration::from_millis(250))
        .build()
        .await
        .expect("connect");
    let keys: Vec<String> = (0..90).map(|i| format!("k{i}")).collect();
    for k in &keys {
        cache
            .set_value(k, format!("v-{k}"), Duration::from_secs(120))
            .await
            .expect("set");
    }
    // Which keys live on the master we will hang: SCAN is local to each node.
    let on_hung: std::collections::HashSet<String> = cluster.nodes[0]
        .cli(&["--scan", "--pattern", "h:*"])
        .lines()
        .filter_map(|l| l.trim().strip_prefix("h:").map(str::to_owned))
        .collect();
    assert!(
        !on_hung.is_empty() && on_hung.len() < keys.len(),
        "{} keys on node 0",
        on_hung.len()
    );

    cluster.nodes[0].pause();
    let (mut hits, mut failed, mut worst) = (0, 0, Duration::ZERO);
    for k in &keys {
        let started = Instant::now();
        let got = cache.get_value(k).await;
        worst = worst.max(started.elapsed());
        if on_hung.contains(k) {
            assert!(got.is_err(), "{k} lives on the hung master: {got:?}");
            failed += 1;
        } else {
            assert_eq!(
                got.expect("healthy master").as_deref(),
                Some(format!("v-{k}").as_str())
            );
            hits += 1;
        }
    }
    cluster.nodes[0].resume();
    println!("one master hung: {hits} hits on the other masters, {failed} bounded failures, worst call {worst:?}");
    // The timeout (250 ms) plus scheduling slack on a busy machine.
    assert!(
        worst <= Duration::from_millis(400),
        "every call bounded by its timeout: {worst:?}"
    );
    assert_eq!(hits + failed, keys.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_under_traffic_never_reaches_a_caller() {
    let _one_cluster = ONE_CLUSTER.lock().await;
    use layercache::CacheExt;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let cluster = RedisCluster::start();
    let cache: RedisCache<String> = RedisCache::builder()
        .url(cluster.url())
        .namespace("r")
        .build()
        .await
        .expect("connect");
    let keys: Arc<Vec<String>> = Arc::new((0..400).map(|i| format!("k{i}")).collect());
    for k in keys.iter() {
        cache
            .set_value(k, format!("{k}-0"), Duration::from_secs(300))
            .await
            .expect("set");
    }
    let source = cluster.nodes[0].port;
    let target = cluster.nodes[1].port;
    let owner_before: Vec<u16> = keys
        .iter()
        .map(|k| {
            cluster.master_port_of_slot(fred::util::redis_keyslot(format!("r:{k}").as_bytes()))
        })
        .collect();

    // Readers check every value they get; writers keep rewriting keys with a round number.
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, errors, wrong) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut tasks = Vec::new();
    for t in 0..4usize {
        let (cache, keys, stop) = (cache.clone(), keys.clone(), stop.clone());
        let (calls, errors, wrong) = (calls.clone(), errors.clone(), wrong.clone());
        tasks.push(tokio::spawn(async move {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                for (i, k) in keys.iter().enumerate().skip(t).step_by(4) {
                    calls.fetch_add(1, Ordering::Relaxed);
                    let result = if i % 2 == 0 {
                        cache
                            .set_value(k, format!("{k}-{round}"), Duration::from_secs(300))
                            .await
                            .map(|_| ())
                    } else {
                        cache.get_value(k).await.map(|v| {
                            if !v.as_ref().is_some_and(|v| v.starts_with(&format!("{k}-"))) {
                                wrong.fetch_add(1, Ordering::Relaxed);
                                eprintln!("{k}: wrong value {v:?}");
                            }
                        })
                    };
                    if let Err(e) = result {
                        errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("{k}: {e:?}");
                    }
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids: Vec<String> = [source, target]
        .iter()
        .map(|&port| {
            support::redis::cli(port, &["cluster", "myid"])
                .trim()
                .to_owned()
        })
        .collect();
    let (from, to) = (ids[0].clone(), ids[1].clone());
    let seed = format!("127.0.0.1:{source}");
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(support::redis::binary("redis-cli"))
            .args(["--cluster", "reshard", &seed])
            .args(["--cluster-from", &from, "--cluster-to", &to])
            .args(["--cluster-slots", "2000", "--cluster-yes"])
            .args(["--cluster-pipeline", "10"])
            .output()
            .expect("run redis-cli --cluster reshard")
    })
    .await
    .expect("reshard task");
    let resharding = started.elapsed();
    assert!(
        out.status.success(),
        "reshard failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("no panic in the traffic tasks");
    }

    let moved = keys
        .iter()
        .zip(&owner_before)
        .filter(|(k, &before)| {
            before == source
                && cluster
                    .master_port_of_slot(fred::util::redis_keyslot(format!("r:{k}").as_bytes()))
                    == target
        })
        .count();
    let (calls, errors, wrong) = (
        calls.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed),
    );
    println!(
        "resharding 2000 slots took {resharding:?}: {moved} of our keys moved master; {calls} calls \
         during it, {errors} errors, {wrong} wrong values"
    );
    assert!(moved > 10, "the reshard moved keys we use: {moved}");
    assert_eq!(errors, 0, "no MOVED/ASK (or any) error reached a caller");
    assert_eq!(wrong, 0);
    assert_eq!(cache.stats().errors, 0);
    for k in keys.iter() {
        assert!(
            cache.get_value(k).await.expect("get").is_some(),
            "{k} survived the move"
        );
    }
}

/// A replica on `cluster`: a memory L1 over the cluster, with a backplane, in `namespace`.
async fn replica(cluster: &RedisCluster, namespace: Option<&str>) -> layercache::Layered<String> {
    let mut l2 = RedisCache::<String>::builder().url(cluster.url());
    if let Some(namespace) = namespace {
        l2 = l2.namespace(namespace);
    }
    let l2 = l2.build().await.expect("l2");
    let backplane = l2.backplane().await.expect("backplane");
    let l1 = layercache::MemoryCache::builder().build().expect("l1");
    layercache::Layered::builder(l1, l2)
        .backplane(backplane)
        .build()
        .expect("cache")
}

/// Tags on a cluster, with and without a namespace: the times of an entry's tags are read
/// together and an invalidation stores its time and index together, so a namespace's tag keys
/// must share one slot — the empty namespace too (an empty `{}` hash tag hashes the whole key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_work_on_a_cluster_with_or_without_a_namespace() {
    use layercache::{CacheExt, LoadOptions};

    let _one = ONE_CLUSTER.lock().await;
    let cluster = RedisCluster::start();
    for namespace in [Some("tagged"), None] {
        let (writer, reader) = (
            replica(&cluster, namespace).await,
            replica(&cluster, namespace).await,
        );
        let options = LoadOptions::ttl(Duration::from_secs(600));
        for i in 0..20u64 {
            let tags = [
                format!("user:{i}"),
                format!("team:{}", i % 3),
                "all".to_owned(),
            ];
            writer
                .get_or_load(
                    &format!("k{i}"),
                    move || async move { Ok::<_, std::io::Error>(format!("v{i}")) },
                    options.clone().with_tags(tags),
                )
                .await
                .expect("load");
        }
        for tag in ["user:1", "team:2", "nobody"] {
            writer.invalidate_tag(tag).await.unwrap_or_else(|e| {
                panic!("invalidate_tag {tag} with namespace {namespace:?}: {e}")
            });
        }
        // A replica that learns the tag times from Redis (several tags per entry, one read).
        let mut fresh = Vec::new();
        for i in 0..20u64 {
            if reader
                .get_value(&format!("k{i}"))
                .await
                .expect("get")
                .is_some()
            {
                fresh.push(i);
            }
        }
        let expected: Vec<u64> = (0..20).filter(|i| *i != 1 && i % 3 != 2).collect();
        assert_eq!(fresh, expected, "namespace {namespace:?}");
        writer.clear().await.expect("clear");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while reader.get_value("k0").await.expect("get").is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the clear never reached the reader"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Every node's links to the others on the cluster bus dropped (and reconnecting), so that a
/// message a node forwards to the others in that instant is lost. Only each node's outbound
/// links, and only live ones: Redis 7.0 crashes when asked to kill a link that is not there.
fn cut_the_cluster_bus(cluster: &RedisCluster) {
    let ids: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.cli(&["cluster", "myid"]).trim().to_owned())
        .collect();
    let linked = |node: &support::redis::RedisServer, id: &str| {
        let links = node.cli(&["cluster", "links"]);
        let fields: Vec<&str> = links.lines().map(str::trim).collect();
        fields
            .windows(4)
            .any(|w| w == ["direction", "to", "node", id])
    };
    for (i, node) in cluster.nodes.iter().enumerate() {
        for (_, id) in ids.iter().enumerate().filter(|(j, _)| *j != i) {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !linked(node, id) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "node {i} has no link to {id} after 10 s"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            let killed = node.cli(&["debug", "clusterlink", "kill", "to", id]);
            assert_eq!(killed.trim(), "OK", "DEBUG CLUSTERLINK KILL to {id}");
        }
    }
}

/// Classic pub/sub on a cluster crosses the cluster bus: a change published while the links
/// between nodes reconnect never reaches replicas subscribed on another node, and they go on
/// hearing their own heartbeats (on their own node), so their L1 would serve the old value
/// until it expired. The backplane uses a shard channel instead: every replica publishes to,
/// and hears from, the master owning the channel's slot — the path its own heartbeat proves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_every_replica_while_the_cluster_bus_reconnects() {
    use layercache::CacheExt;

    let _one = ONE_CLUSTER.lock().await;
    let cluster = RedisCluster::start_with(&["--enable-debug-command", "yes"]);
    let (writer, reader) = (
        replica(&cluster, Some("bus")).await,
        replica(&cluster, Some("bus")).await,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ![&writer, &reader]
        .iter()
        .all(|c| c.backplane().is_some_and(|b| b.is_subscribed()))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "both replicas subscribed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ttl = Duration::from_secs(600);
    for round in 0..6 {
        let key = format!("answer:{round}");
        writer
            .set_value(&key, "old".to_owned(), ttl)
            .await
            .expect("set");
        // In the reader's L1 (a hit there answers without Redis).
        assert_eq!(
            reader.get_value(&key).await.expect("get").as_deref(),
            Some("old")
        );
        cut_the_cluster_bus(&cluster);
        writer
            .set_value(&key, "new".to_owned(), ttl)
            .await
            .expect("set");
        // The bound on a lost message is 1.25 s; a message that arrives takes milliseconds.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let seen = reader.get_value(&key).await.expect("get");
            if seen.as_deref() == Some("new") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the reader still serves {seen:?} 5 s after the change"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The subscriptions dropped: each replica subscribes to the shard channel again (a change
    // heard after the kill can only have come through a new subscription).
    let heard = || reader.backplane().map_or(0, |b| b.state().received);
    let before = heard();
    let killed: u32 = cluster
        .nodes
        .iter()
        .map(|n| {
            let killed = n.cli(&["client", "kill", "type", "pubsub"]);
            killed.trim().parse::<u32>().unwrap_or(0)
        })
        .sum();
    assert!(
        killed >= 2,
        "both replicas' subscriptions killed ({killed})"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for n in 0.. {
        if heard() > before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reader heard nothing within 10 s of losing its subscription"
        );
        writer
            .set_value("after", format!("v{n}"), ttl)
            .await
            .expect("set");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer
        .set_value("after", "last".to_owned(), ttl)
        .await
        .expect("set");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while reader.get_value("after").await.expect("get").as_deref() != Some("last") {
        assert!(
            std::time::Instant::now() < deadline,
            "a change after the resubscription did not cross"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Move `slot` (keys and all) from the master serving it to another master.
fn move_slot(cluster: &RedisCluster, slot: u16) {
    let source = cluster.index_of_port(cluster.master_port_of_slot(slot));
    let target = (0..cluster.nodes.len())
        .find(|&i| i != source)
        .expect("another master");
    let id = |i: usize| cluster.nodes[i].cli(&["cluster", "myid"]).trim().to_owned();
    let (source_id, target_id) = (id(source), id(target));
    let slot = slot.to_string();
    let ok = |node: usize, args: &[&str]| {
        let answer = cluster.nodes[node].cli(args);
        assert_eq!(answer.trim(), "OK", "{args:?} on node {node}");
    };
    ok(
        target,
        &["cluster", "setslot", &slot, "importing", &source_id],
    );
    ok(
        source,
        &["cluster", "setslot", &slot, "migrating", &target_id],
    );
    loop {
        let keys = cluster.nodes[source].cli(&["cluster", "getkeysinslot", &slot, "100"]);
        let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        if keys.is_empty() {
            break;
        }
        let port = cluster.nodes[target].port.to_string();
        let mut args = vec!["migrate", "127.0.0.1", &port, "", "0", "5000", "keys"];
        args.extend(keys);
        ok(source, &args);
    }
    for node in [target, source] {
        ok(node, &["cluster", "setslot", &slot, "node", &target_id]);
    }
    let other = 3 - source - target;
    ok(other, &["cluster", "setslot", &slot, "node", &target_id]);
}

/// The master owning the backplane's shard channel changes (a resharding moved its slot): the
/// old owner unsubscribes the replicas, which go deaf — their L1 is distrusted within the
/// bound, so a change they did not hear is not served past it — and they subscribe again at
/// the new owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backplane_follows_its_channel_when_its_slot_moves() {
    use layercache::CacheExt;

    let _one = ONE_CLUSTER.lock().await;
    let cluster = RedisCluster::start();
    let (writer, reader) = (
        replica(&cluster, Some("moved")).await,
        replica(&cluster, Some("moved")).await,
    );
    let subscribed = || {
        [&writer, &reader]
            .iter()
            .all(|c| c.backplane().is_some_and(|b| b.is_subscribed()))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !subscribed() {
        assert!(
            std::time::Instant::now() < deadline,
            "both replicas subscribed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ttl = Duration::from_secs(600);
    writer
        .set_value("k", "old".to_owned(), ttl)
        .await
        .expect("set");
    assert_eq!(
        reader.get_value("k").await.expect("get").as_deref(),
        Some("old")
    );

    let channel = writer.backplane().expect("backplane").channel().to_owned();
    let slot = fred::util::redis_keyslot(channel.as_bytes());
    move_slot(&cluster, slot);
    // Published at the new owner: the reader, still subscribed at the old one, cannot hear it.
    writer
        .set_value("k", "new".to_owned(), ttl)
        .await
        .expect("set");
    let changed = std::time::Instant::now();
    while reader.get_value("k").await.expect("get").as_deref() != Some("new") {
        // The bound (1.25 s) with room for a loaded machine; without it, the old value until
        // the entry expires in 10 minutes.
        assert!(
            changed.elapsed() < Duration::from_secs(4),
            "the reader served the old value 4 s after the change"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("the change was seen after {:?}", changed.elapsed());

    // Both subscribe again at the new owner, and hear each other's changes there.
    let heard = || reader.backplane().map_or(0, |b| b.state().received);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let before = heard();
    for n in 0.. {
        if subscribed() && heard() > before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replicas did not hear each other at the new owner within 20 s: {:?}, subscribers per node {:?}",
            reader.backplane().map(|b| b.state()),
            cluster
                .nodes
                .iter()
                .map(|n| n.cli(&["pubsub", "shardnumsub", &channel]))
                .collect::<Vec<_>>(),
        );
        writer
            .set_value("after", format!("v{n}"), ttl)
            .await
            .expect("set");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("heard each other again after {:?}", changed.elapsed());
    let new_owner = cluster.master_port_of_slot(slot);
    let owner = &cluster.nodes[cluster.index_of_port(new_owner)];
    let numsub = owner.cli(&["pubsub", "shardnumsub", &channel]);
    assert_eq!(
        numsub.lines().last().map(str::trim),
        Some("2"),
        "both replicas subscribed at the new owner: {numsub}"
    );
}
