//! Failover on real Redis deployments: a cluster master killed and its replica promoted, and a
//! sentinel-managed master hung until the sentinels promote its replica. In both, writes must
//! resume on the new master within 6 s, every failed call must end within its deadline, and
//! nothing may panic.

#![cfg(all(feature = "redis", feature = "postcard"))]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use layercache::{CacheExt, RedisCache};
use support::redis::{RedisCluster, RedisSentinel};

const TIMEOUT: Duration = Duration::from_millis(250);
/// A failed call may overrun its command timeout by scheduling noise, never by more.
const DEADLINE: Duration = Duration::from_millis(350);
const RESUME_WITHIN: Duration = Duration::from_secs(6);

/// What one writer saw while it wrote `keys` round-robin until `stop_after` past `fault_at`.
#[derive(Debug, Default)]
struct WriteLog {
    /// (offset from the fault, key index, ok) for every write.
    writes: Vec<(Duration, usize, bool)>,
    worst_failure: Duration,
}

impl WriteLog {
    /// When writes to the keys in `watched` succeeded from then on (offset from the fault).
    fn resumed_at(&self, watched: &dyn Fn(usize) -> bool) -> Option<Duration> {
        let mine: Vec<_> = self.writes.iter().filter(|w| watched(w.1)).collect();
        let last_failure = mine.iter().rposition(|w| !w.2);
        match last_failure {
            None => Some(Duration::ZERO),
            Some(i) if i + 1 < mine.len() => Some(mine[i + 1].0),
            Some(_) => None,
        }
    }

    fn failures(&self) -> usize {
        self.writes.iter().filter(|w| !w.2).count()
    }
}

/// A cache at `url` under `namespace`, with keys `k0…` each written once.
async fn connect_and_fill(
    url: &str,
    namespace: &str,
    count: usize,
) -> (RedisCache<String>, Arc<Vec<String>>) {
    let cache: RedisCache<String> = RedisCache::builder()
        .url(url)
        .namespace(namespace)
        .command_timeout(TIMEOUT)
        .build()
        .await
        .expect("connect");
    let keys: Arc<Vec<String>> = Arc::new((0..count).map(|i| format!("k{i}")).collect());
    for k in keys.iter() {
        cache
            .set_value(k, format!("{k}-0"), Duration::from_secs(300))
            .await
            .expect("set before the fault");
    }
    (cache, keys)
}

/// Writes resumed in time, no failed write outlived its deadline, and every key reads back a
/// value it was written with.
async fn assert_recovered(
    log: &WriteLog,
    resumed: Duration,
    cache: &RedisCache<String>,
    keys: &[String],
) {
    assert!(resumed <= RESUME_WITHIN, "resumed at {resumed:?}");
    assert!(
        log.worst_failure <= DEADLINE,
        "a failed write took {:?}",
        log.worst_failure
    );
    for k in keys {
        let got = cache.get_value(k).await.expect("read after failover");
        assert!(got.is_some_and(|v| v.starts_with(&format!("{k}-"))), "{k}");
    }
}

/// Write keys round-robin from `start` until `run_for` has passed; `fault_at` is filled in by the
/// test when it injects the fault, and offsets are measured from it.
async fn write_loop(
    cache: RedisCache<String>,
    keys: Arc<Vec<String>>,
    fault_at: Arc<std::sync::OnceLock<Instant>>,
    run_for: Duration,
) -> WriteLog {
    let mut log = WriteLog::default();
    let started = Instant::now();
    let mut round = 0u64;
    while started.elapsed() < run_for {
        round += 1;
        for (i, key) in keys.iter().enumerate() {
            let began = Instant::now();
            let ok = cache
                .set_value(key, format!("{key}-{round}"), Duration::from_secs(300))
                .await
                .is_ok();
            let took = began.elapsed();
            if !ok {
                log.worst_failure = log.worst_failure.max(took);
            }
            if let Some(fault) = fault_at.get() {
                log.writes
                    .push((began.saturating_duration_since(*fault), i, ok));
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_writes_resume_on_the_promoted_replica() {
    let mut cluster = RedisCluster::start_topology(1, &[]);
    let (cache, keys) = connect_and_fill(&cluster.url(), "fo", 60).await;

    // The victim is the master holding key k0; its replica is the one that must take over.
    let victim_port: u16 =
        support::redis::cli(cluster.nodes[0].port, &["cluster", "keyslot", "fo:k0"])
            .trim()
            .parse::<u16>()
            .map(|slot| cluster.master_port_of_slot(slot))
            .expect("keyslot");
    let victim = cluster.index_of_port(victim_port);
    let on_victim: std::collections::HashSet<usize> = cluster.nodes[victim]
        .cli(&["--scan", "--pattern", "fo:*"])
        .lines()
        .filter_map(|l| l.trim().strip_prefix("fo:k")?.parse().ok())
        .collect();
    assert!(
        on_victim.contains(&0) && on_victim.len() < keys.len(),
        "{} of {} keys on the victim",
        on_victim.len(),
        keys.len()
    );
    let replica = cluster.replica_of(victim_port);

    let fault_at = Arc::new(std::sync::OnceLock::new());
    let writer = tokio::spawn(write_loop(
        cache.clone(),
        keys.clone(),
        fault_at.clone(),
        Duration::from_secs(12),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    fault_at.set(Instant::now()).expect("set once");
    cluster.nodes[victim].kill();

    let promoted = loop {
        if cluster.nodes[replica].cli(&["role"]).starts_with("master") {
            break fault_at.get().expect("set").elapsed();
        }
        assert!(
            fault_at.get().expect("set").elapsed() < Duration::from_secs(11),
            "the replica was not promoted within 11 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = writer.await.expect("the writer did not panic");

    let resumed = log
        .resumed_at(&|i| on_victim.contains(&i))
        .expect("writes to the victim's keys succeed again before the run ends");
    let others_resumed = log
        .resumed_at(&|i| !on_victim.contains(&i))
        .expect("writes to the other masters' keys succeed again");
    println!(
        "cluster failover: replica promoted {promoted:?} after kill -9; writes to its keys resumed \
         at {resumed:?}, to other keys at {others_resumed:?}; {} of {} writes failed, worst failure \
         took {:?}",
        log.failures(),
        log.writes.len(),
        log.worst_failure
    );
    // The victim's keys are on the new master.
    assert_recovered(&log, resumed, &cache, &keys).await;
    let on_new_master = cluster.nodes[replica].cli(&["--scan", "--pattern", "fo:*"]);
    assert_eq!(on_new_master.lines().count(), on_victim.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_writes_resume_on_the_promoted_replica() {
    let group = RedisSentinel::start();
    let (cache, keys) = connect_and_fill(&group.url(), "so", 20).await;

    let fault_at = Arc::new(std::sync::OnceLock::new());
    let writer = tokio::spawn(write_loop(
        cache.clone(),
        keys.clone(),
        fault_at.clone(),
        Duration::from_secs(12),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    fault_at.set(Instant::now()).expect("set once");
    group.master.pause();

    let promoted = loop {
        if group.replica.cli(&["role"]).starts_with("master") {
            break fault_at.get().expect("set").elapsed();
        }
        assert!(
            fault_at.get().expect("set").elapsed() < Duration::from_secs(11),
            "the sentinels did not promote the replica within 11 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = writer.await.expect("the writer did not panic");
    group.master.resume();
    let resumed = log
        .resumed_at(&|_| true)
        .expect("writes succeed again before the run ends");
    println!(
        "sentinel failover: replica promoted {promoted:?} after SIGSTOP; writes resumed at \
         {resumed:?}; {} of {} writes failed, worst failure took {:?}",
        log.failures(),
        log.writes.len(),
        log.worst_failure
    );
    assert_recovered(&log, resumed, &cache, &keys).await;
    let on_new_master = group.replica.cli(&["--scan", "--pattern", "so:*"]);
    assert_eq!(on_new_master.lines().count(), keys.len());
}
