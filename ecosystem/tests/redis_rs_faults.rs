//! The fault scenarios of `tests/redis_faults.rs`, run on redis-rs 1.x's `ConnectionManager` (the
//! client a user would pick instead of ours), against a real `redis-server`: what the comparison
//! in the `redis` module docs says is measured here. Each scenario prints its figures and asserts
//! what the docs state about redis-rs.
//!
//! Both clients get the same budget: 250 ms a command, 2 s to connect.

#![cfg(feature = "redis")]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use support::redis::RedisServer;

const TIMEOUT: Duration = Duration::from_millis(250);
const SLACK: Duration = Duration::from_millis(100);

async fn manager(server: &RedisServer) -> ConnectionManager {
    let client = redis::Client::open(server.url()).expect("a valid URL");
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(TIMEOUT))
        .set_connection_timeout(Some(Duration::from_secs(2)));
    client
        .get_connection_manager_with_config(config)
        .await
        .expect("connect")
}

async fn get(con: &mut ConnectionManager, key: &str) -> redis::RedisResult<Option<String>> {
    con.get(key).await
}

async fn set(con: &mut ConnectionManager, key: &str, value: &str) -> redis::RedisResult<()> {
    con.set(key, value).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rs_on_a_hung_server() {
    let server = RedisServer::start();
    let mut con = manager(&server).await;
    for i in 0..8 {
        set(&mut con, &format!("k{i}"), &format!("v{i}"))
            .await
            .expect("set");
    }
    server.pause();
    let mut worst = Duration::ZERO;
    let mut errors = 0;
    for i in 0..8 {
        let started = Instant::now();
        errors += usize::from(get(&mut con, &format!("k{i}")).await.is_err());
        worst = worst.max(started.elapsed());
        let started = Instant::now();
        errors += usize::from(set(&mut con, &format!("n{i}"), "x").await.is_err());
        worst = worst.max(started.elapsed());
    }
    // As long as the hang of the redis_faults test: 4 s in all.
    tokio::time::sleep(Duration::from_millis(4_000).saturating_sub(worst * 16)).await;
    server.resume();
    let resumed = Instant::now();
    let first = loop {
        if get(&mut con, "k0").await.is_ok() {
            break resumed.elapsed();
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(5),
            "no reply 5 s after SIGCONT"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut after = 0;
    for i in 0..8 {
        after += usize::from(get(&mut con, &format!("k{i}")).await.is_err());
    }
    println!(
        "redis-rs, hung server: {errors} of 16 calls failed, slowest {worst:?} (timeout {TIMEOUT:?}); \
         first reply {first:?} after SIGCONT; {after} of 8 reads failed after it"
    );
    assert_eq!(errors, 16, "every call against the hung server fails");
    assert!(worst <= TIMEOUT + SLACK, "{worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rs_on_a_killed_and_restarted_server() {
    let mut server = RedisServer::start();
    let mut con = manager(&server).await;
    set(&mut con, "k", "before").await.expect("set");

    server.kill();
    // Two reads while the server is down, each given up after 3 s: the first finds the
    // connection gone; the second waits on the reconnection redis-rs then runs (its retries, not
    // the response timeout, bound it).
    let mut while_down = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        let waited = tokio::time::timeout(Duration::from_secs(3), get(&mut con, "k")).await;
        let outcome = match &waited {
            Ok(Ok(_)) => "answered",
            Ok(Err(_)) => "failed",
            Err(_) => "still waiting, given up",
        };
        while_down.push(format!("{outcome} after {:?}", started.elapsed()));
    }
    server.restart();
    let restarted = Instant::now();
    let mut failed_after_restart = 0;
    let recovered = loop {
        if set(&mut con, "k", "after").await.is_ok() && get(&mut con, "k").await.is_ok() {
            break restarted.elapsed();
        }
        failed_after_restart += 1;
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "not reconnected within 5 s of the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "redis-rs, killed server: reads while down: {while_down:?} (timeout {TIMEOUT:?}); \
         recovered {recovered:?} after the restart ({failed_after_restart} failed \
         tries first)"
    );
    assert_eq!(
        get(&mut con, "k").await.expect("get").as_deref(),
        Some("after")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rs_and_a_write_that_timed_out() {
    let server = RedisServer::start();
    let mut con = manager(&server).await;
    let mut watcher = manager(&server).await;
    let mut resurrected = 0;
    for round in 0..5 {
        let key = format!("zombie-{round}");
        server.pause();
        let wrote = set(&mut con, &key, "v1").await;
        assert!(wrote.is_err(), "the write timed out");
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.resume();
        let deleted: redis::RedisResult<i64> = con.del(&key).await;
        let deleted = match deleted {
            Ok(n) => n,
            // A client that dropped its connection on the timeout reconnects first.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                con.del(&key).await.expect("delete after resume")
            }
        };
        let _ = deleted;
        let deadline = Instant::now() + Duration::from_millis(1_500);
        while Instant::now() < deadline {
            let exists: i64 = watcher.exists(&key).await.expect("exists");
            if exists == 1 {
                resurrected += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!(
        "redis-rs, timed-out write then delete: the write came back in {resurrected} of 5 rounds"
    );
    assert_eq!(resurrected, 0, "no abandoned write lands after the delete");
}
