//! A burst of concurrent calls — a batch job's `join_all` over tens of thousands of prompts, a
//! replica restarted under full traffic — is served by Redis, not by the loader: commands wait
//! their turn on their connection, and their timeout runs from that turn. Behind a hung server,
//! no caller waits for the others' timeouts.
//!
//! The two bursts never run at once: each is the only work of its 2 CPUs.

#![cfg(all(feature = "redis", feature = "msgpack"))]

mod support;

use std::time::{Duration, Instant};

use layercache::{
    Cache, CircuitState, Entry, Error, Layered, LoadOptions, MemoryCache, RedisCache,
    RedisErrorKind,
};
use support::openai::{completion, ChatCompletion};
use support::redis::RedisServer;

const COMMAND_TIMEOUT: Duration = Duration::from_millis(250);

/// Held by each burst, so that the two never share the CPUs.
static ONE_BURST_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn l2(url: &str, unresponsive: Duration) -> RedisCache<ChatCompletion> {
    RedisCache::builder()
        .url(url)
        .namespace("burst")
        .command_timeout(COMMAND_TIMEOUT)
        .unresponsive_after(unresponsive)
        .build()
        .await
        .expect("redis cache")
}

/// `count` OpenAI-shaped replies in Redis under `q0`, `q1`, …
async fn fill(url: &str, count: usize) {
    let writer = l2(url, Duration::from_secs(2)).await;
    let entries: Vec<(String, Entry<ChatCompletion>)> = (0..count)
        .map(|i| {
            let reply = completion(i as u64);
            (format!("q{i}"), Entry::new(reply, Duration::from_secs(600)))
        })
        .collect();
    for chunk in entries.chunks(5_000) {
        let chunk = chunk.iter().map(|(k, e)| (k.as_str(), e.clone())).collect();
        writer.set_many(chunk).await.expect("fill");
    }
}

fn redis_kind(error: &Error) -> Option<RedisErrorKind> {
    match error {
        Error::Redis { source, .. } => Some(source.kind()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_40000_concurrent_reads_waits_for_redis_instead_of_timing_out() {
    const CALLS: usize = 40_000;
    let _alone = ONE_BURST_AT_A_TIME.lock().await;
    let server = RedisServer::start();
    let url = server.url();
    fill(&url, CALLS).await;
    // A replica that starts cold, every read at once; the defaults but the unresponsive time
    // (10 minutes here, so that a loaded test machine cannot turn a slow burst into `Busy`: the
    // next test covers that; with 30 s, a CI machine running two suites at once did). The callers run on a runtime of their own: 40,000 tasks of a debug
    // build sharing 2 CPUs with the connections (and, in CI, with a build) keep the
    // connections from reading their replies in time, which times out any client's commands
    // in flight (the documented limit); what is tested here is the wait for a turn.
    let redis = l2(&url, Duration::from_secs(600)).await;
    let callers = support::callers_runtime();
    let started = Instant::now();
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let redis = redis.clone();
            callers.spawn(async move { redis.get(&format!("q{i}")).await })
        })
        .collect();
    let (mut served, mut wrong, mut failed) = (0, 0, std::collections::BTreeMap::new());
    for (i, call) in calls.into_iter().enumerate() {
        match call.await.expect("task") {
            Ok(Some(entry)) if *entry.value() == completion(i as u64) => served += 1,
            Ok(_) => wrong += 1,
            Err(e) => *failed.entry(format!("{:?}", redis_kind(&e))).or_insert(0) += 1,
        }
    }
    let took = started.elapsed();
    // Dropping a runtime inside another one panics.
    callers.shutdown_background();
    println!("{CALLS} concurrent reads in {took:?}: {served} served, failed: {failed:?}");
    assert_eq!(
        (served, wrong, failed.len()),
        (CALLS, 0, 0),
        "every reply was in Redis; failed: {failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_waits_past_the_unresponsive_time_is_busy_not_an_outage() {
    const CALLS: usize = 40_000;
    let _alone = ONE_BURST_AT_A_TIME.lock().await;
    let server = RedisServer::start();
    let url = server.url();
    fill(&url, CALLS).await;
    // The shortest bound the builder takes above the command timeout: a burst this large
    // cannot be served within it, so the last callers give up unsent.
    let redis = l2(&url, Duration::from_millis(300)).await;
    let callers = support::callers_runtime();
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let redis = redis.clone();
            callers.spawn(async move { redis.get(&format!("q{i}")).await })
        })
        .collect();
    let (mut served, mut busy, mut other) = (0, 0, Vec::new());
    for call in calls {
        match call.await.expect("task") {
            Ok(Some(_)) => served += 1,
            Err(e) if redis_kind(&e) == Some(RedisErrorKind::Busy) => busy += 1,
            unexpected => other.push(format!("{unexpected:?}")),
        }
    }
    println!("{served} served, {busy} busy");
    assert!(
        other.is_empty(),
        "{} others, first: {}",
        other.len(),
        other[0]
    );
    assert!(served > 0 && busy > 0, "{served} served, {busy} busy");

    // Through a stack: Busy is not counted against Redis (the breaker stays closed), and the
    // callers it turned away are answered by their loader.
    let cache = Layered::builder(MemoryCache::builder().build().expect("l1"), redis)
        .build()
        .expect("layered");
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let cache = cache.clone();
            callers.spawn(async move {
                cache
                    .get_or_load(
                        &format!("q{i}"),
                        move || async move { Ok::<_, std::io::Error>(completion(i as u64)) },
                        LoadOptions::ttl(Duration::from_secs(600)),
                    )
                    .await
            })
        })
        .collect();
    for call in calls {
        call.await.expect("task").expect("answered");
    }
    let stats = cache.stats();
    println!("through a stack: {stats:?}");
    assert!(stats.loads > 0, "{stats:?}");
    assert!(
        cache
            .health()
            .iter()
            .all(|h| h.circuit == CircuitState::Closed),
        "{:?}",
        cache.health()
    );
    callers.shutdown_background();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_hung_server_no_caller_of_a_burst_waits_for_the_others() {
    const CALLS: usize = 5_000;
    let server = RedisServer::start();
    let url = server.url();
    fill(&url, 10).await;
    let redis = l2(&url, Duration::from_secs(30)).await;
    server.pause();
    let started = Instant::now();
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let redis = redis.clone();
            tokio::spawn(async move {
                let result = redis.get(&format!("q{i}")).await;
                (result, Instant::now())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for call in calls {
        let (result, ended) = call.await.expect("task");
        let error = result.expect_err("the server hangs");
        assert_eq!(redis_kind(&error), Some(RedisErrorKind::Timeout), "{error}");
        slowest = slowest.max(ended - started);
    }
    server.resume();
    println!("{CALLS} calls into a hung server: the slowest failed after {slowest:?}");
    // Without the check for unanswered commands, callers beyond the first 256 would be sent in
    // waves, each waiting the whole timeout: ~20 waves, 5 s.
    assert!(
        slowest < COMMAND_TIMEOUT * 8,
        "the slowest caller failed after {slowest:?}"
    );
}
