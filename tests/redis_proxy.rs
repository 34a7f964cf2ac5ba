//! `RedisCache` and `Layered` behind a TCP fault proxy in front of a real `redis-server`:
//! blackhole at startup and mid-run, added latency, reset, half-open connections.

#![cfg(all(feature = "redis", feature = "postcard"))]

mod support;

use std::time::{Duration, Instant};

use layercache::{Cache, CacheExt, Error, Layered, LoadOptions, MemoryCache, RedisCache};
use support::proxy::{FaultProxy, Mode};
use support::redis::RedisServer;

const TIMEOUT: Duration = Duration::from_millis(250);
const SLACK: Duration = Duration::from_millis(50);

fn upstream(server: &RedisServer) -> std::net::SocketAddr {
    format!("127.0.0.1:{}", server.port)
        .parse()
        .expect("address")
}

async fn cache(proxy: &FaultProxy) -> layercache::Result<RedisCache<String>> {
    RedisCache::builder()
        .url(proxy.url())
        .namespace("x")
        .command_timeout(TIMEOUT)
        .connect_timeout(Duration::from_millis(500))
        .build()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_at_startup_starts_without_redis_and_connects_later() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(upstream(&server)).await;
    proxy.set(Mode::Blackhole);
    let started = Instant::now();
    let built = cache(&proxy)
        .await
        .expect("an unanswering server does not fail the build");
    let took = started.elapsed();
    println!("build against a blackhole returned after {took:?} (connect timeout 500 ms)");
    assert!(took < Duration::from_millis(500) + SLACK, "{took:?}");
    assert!(proxy.connections() > 0, "the proxy was reached");
    assert!(built.get("k").await.is_err(), "no connection yet");

    // The server answers again: the cache connects in the background.
    proxy.set(Mode::Pass);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if built
            .set_value("k", "v".into(), Duration::from_secs(60))
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "connected within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        built.get_value("k").await.expect("get").as_deref(),
        Some("v")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_blackhole_half_open_and_reset_mid_run() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(upstream(&server)).await;
    let l2 = cache(&proxy).await.expect("connect through the proxy");
    l2.set_value("k", "v".into(), Duration::from_secs(60))
        .await
        .expect("set");

    // Added latency below the timeout: slower, still answered.
    proxy.set(Mode::Latency(Duration::from_millis(60)));
    let started = Instant::now();
    assert_eq!(l2.get_value("k").await.expect("get").as_deref(), Some("v"));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(60) && took < TIMEOUT,
        "{took:?}"
    );

    // Blackhole and half-open: every call errors within the command timeout.
    for mode in [Mode::Blackhole, Mode::HalfOpen] {
        proxy.set(mode);
        for _ in 0..3 {
            let started = Instant::now();
            let got = l2.get_value("k").await;
            let took = started.elapsed();
            assert!(got.is_err(), "{mode:?}: {got:?}");
            assert!(took <= TIMEOUT + SLACK, "{mode:?}: {took:?}");
        }
    }

    // Reset: connections drop; calls fail fast; back to Pass: the client reconnects by itself.
    proxy.set(Mode::Reset);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got = l2.get_value("k").await;
    assert!(got.is_err(), "{got:?}");
    proxy.set(Mode::Pass);
    let back = Instant::now();
    loop {
        if l2.get_value("k").await.is_ok()
            && l2
                .set_value("k2", "w".into(), Duration::from_secs(60))
                .await
                .is_ok()
        {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "not reconnected within 5 s of the reset ending"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("reconnected {:?} after the reset ended", back.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layered_degrades_to_l1_and_the_loader_behind_a_blackhole() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(upstream(&server)).await;
    let l2 = cache(&proxy).await.expect("connect");
    let l1 = MemoryCache::builder().name("l1").build().expect("l1");
    let cache = Layered::builder(l1, l2)
        .name("px")
        .build()
        .expect("layered");
    let opts = LoadOptions::ttl(Duration::from_secs(60));
    for i in 0..20 {
        cache
            .get_or_load(
                &format!("warm{i}"),
                move || async move { Ok::<_, std::io::Error>(format!("w{i}")) },
                opts.clone(),
            )
            .await
            .expect("warm");
    }
    proxy.set(Mode::Blackhole);
    let mut worst = Duration::ZERO;
    for i in 0..200 {
        let key = if i % 2 == 0 {
            format!("warm{}", i % 20)
        } else {
            format!("cold{i}")
        };
        let started = Instant::now();
        let v = cache
            .get_or_load(
                &key,
                move || async move { Ok::<_, std::io::Error>(format!("loaded {i}")) },
                opts.clone(),
            )
            .await
            .expect("answered despite the blackholed L2");
        worst = worst.max(started.elapsed());
        assert!(!v.is_empty());
    }
    println!(
        "200 calls with L2 blackholed: worst {worst:?}; L2 up: {}",
        cache.health()[1].is_up()
    );
    assert!(worst <= TIMEOUT + SLACK, "{worst:?}");
    assert!(!cache.health()[1].is_up(), "the breaker opened");
}

/// A write swallowed by a blackhole times out; its bytes never reach Redis. If the client ever
/// re-sent it — after the watchdog rebuilds the connection, or after a reset — the key would
/// appear. It must not: a command whose caller timed out is never written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_write_is_never_replayed_after_a_reconnect() {
    use layercache::{Cache, Entry};

    let server = RedisServer::start();
    let proxy = FaultProxy::start(upstream(&server)).await;
    let cache = cache(&proxy).await.expect("connect");
    let raw = support::redis::raw_client(&server.url()).await;
    for (round, heal) in [(0, "watchdog reconnect"), (1, "reset")].into_iter() {
        let key = format!("swallowed-{round}");
        let before = proxy.connections();
        proxy.set(Mode::Blackhole);
        let set = cache
            .set(&key, Entry::new("v1".to_string(), Duration::from_secs(60)))
            .await;
        assert!(matches!(set, Err(Error::Redis { .. })), "{set:?}");
        if round == 0 {
            // Long enough for the watchdog (2 s) to force a reconnect into the blackhole.
            tokio::time::sleep(Duration::from_millis(2600)).await;
        } else {
            proxy.set(Mode::Reset);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        proxy.set(Mode::Pass);
        let healed = Instant::now();
        while cache.get_value("absent").await.is_err() {
            assert!(
                healed.elapsed() < Duration::from_secs(3),
                "{heal}: no recovery"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            proxy.connections() > before,
            "{heal}: the client made new connections"
        );
        let watch_until = Instant::now() + Duration::from_millis(1000);
        while Instant::now() < watch_until {
            let exists: i64 = fred::prelude::KeysInterface::exists(&raw, format!("x:{key}"))
                .await
                .expect("exists");
            assert_eq!(exists, 0, "{heal}: the timed-out write was replayed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "{heal}: recovered {:?} after the fault ended; the swallowed write never landed",
            healed.elapsed()
        );
    }
}
