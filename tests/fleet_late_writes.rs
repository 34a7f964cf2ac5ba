//! Writes and deletes that reach Redis late — after their caller gave up on them (a timeout on
//! a slow link), after the change was announced, after another replica wrote the key again —
//! leave the fleet serving one value: the newest by creation time.
//!
//! The late commands are held by a layer of the test's over a real Redis (`LateWrites`, in
//! `support/late.rs`) and then sent as the stack sent them, so that the order in which they
//! reach Redis is the test's to choose. `fleet_recovery.rs` `replicas_converge_on_redis_after_random_faults` reaches the
//! same cases through a real proxy that delays replies past the command timeout.

#![cfg(all(feature = "redis", feature = "msgpack"))]

#[path = "support/late.rs"]
mod late;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use late::{
    all_serve, caught_up, no_longer_hears_the_fleet, redis_at, serves, writer_and_reader,
    writer_with_proxied_backplane, LateWrites,
};
use layercache::{Cache, CacheExt, Entry, Layered, MemoryCache, RedisCache};
use support::fleet::wait_subscribed;
use support::redis::RedisServer;

/// A `set` whose write reached Redis only after another replica's later `set` of the key, and
/// a `delete` that reached Redis only after another replica wrote the key again: neither
/// replaces the newer value, in Redis or on any replica. Before writes were conditional, the
/// late `SET` replaced the newer value in Redis, the writer's catch-up found its own write there
/// and announced it again, and the fleet settled on the *older* value; the late `UNLINK` left
/// Redis empty while the other replica served the value it had written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_deletes_that_reach_redis_late_do_not_replace_a_newer_value() {
    let server = RedisServer::start();
    let (writer, l2, reader) = writer_and_reader(&server, "later").await;
    let redis = RedisCache::<String>::builder()
        .url(server.url())
        .namespace("later")
        .build()
        .await
        .expect("redis");
    let ttl = Duration::from_secs(600);

    // A set that times out here and lands after the reader's newer set.
    l2.hold(true);
    writer
        .set_value("k", "older".to_owned(), ttl)
        .await
        .expect("a set whose L2 write failed is kept for the catch-up");
    reader
        .set_value("k", "newer".to_owned(), ttl)
        .await
        .expect("set");
    assert_eq!(l2.land().await, vec![false], "the late write is refused");
    l2.hold(false);
    // The writer's catch-up finds the newer value and drops its own.
    caught_up(&writer).await;
    all_serve(&redis, [&writer, &reader], "k", "newer").await;

    // A delete that times out here and lands after the reader wrote the key again.
    reader
        .set_value("d", "first".to_owned(), ttl)
        .await
        .expect("set");
    serves(&writer, "d", Some("first"), "the writer").await;
    l2.hold(true);
    let failed = writer.delete("d").await;
    assert!(failed.is_err(), "the delete timed out here: {failed:?}");
    reader
        .set_value("d", "second".to_owned(), ttl)
        .await
        .expect("set");
    assert_eq!(l2.land().await, vec![false], "the late delete is refused");
    l2.hold(false);
    all_serve(&redis, [&writer, &reader], "d", "second").await;

    // On time, both still do what they are asked.
    writer
        .set_value("k", "latest".to_owned(), ttl)
        .await
        .expect("set");
    serves(&reader, "k", Some("latest"), "the reader").await;
    writer.delete("k").await.expect("delete");
    assert_eq!(redis.get_value("k").await.expect("read"), None);
    serves(&reader, "k", None, "the reader").await;
}

/// Two `set`s of one key by one replica, the first timing out and landing after the second:
/// the second stands (a replica's own writes are stamped in the order it made them, even
/// within one microsecond).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicas_own_late_write_does_not_replace_its_next_one() {
    let server = RedisServer::start();
    let (writer, l2, reader) = writer_and_reader(&server, "own").await;
    let ttl = Duration::from_secs(600);
    l2.hold(true);
    writer
        .set_value("k", "first".to_owned(), ttl)
        .await
        .expect("set");
    l2.hold(false);
    writer
        .set_value("k", "second".to_owned(), ttl)
        .await
        .expect("set");
    l2.hold(true);
    assert_eq!(
        l2.land().await,
        vec![false],
        "the late first write is refused"
    );
    l2.hold(false);
    serves(&writer, "k", Some("second"), "the writer").await;
    serves(&reader, "k", Some("second"), "the reader").await;
    caught_up(&writer).await;
    serves(&reader, "k", Some("second"), "the reader").await;
}

/// A `set` whose write to Redis timed out here but reached Redis later — after the change was
/// announced, and after another replica had read the old value back from Redis — is announced
/// again when the catch-up finds it there, so that replica stops serving the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_reached_redis_after_its_announcement_is_announced_again() {
    let server = RedisServer::start();
    let (writer, l2, reader) = writer_and_reader(&server, "late").await;
    let ttl = Duration::from_secs(600);
    writer
        .set_value("k", "v1".to_owned(), ttl)
        .await
        .expect("set");
    assert_eq!(
        reader.get_value("k").await.expect("get").as_deref(),
        Some("v1")
    );

    // The write of v2 times out here; its announcement goes out.
    let heard = || reader.backplane().map_or(0, |b| b.state().received);
    let before = heard();
    l2.hold(true);
    writer
        .set_value("k", "v2".to_owned(), ttl)
        .await
        .expect("set");
    let deadline = Instant::now() + Duration::from_secs(5);
    while heard() == before {
        assert!(Instant::now() < deadline, "the reader heard of the change");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The reader evicted v1 and reads it back from Redis, which still holds it.
    assert_eq!(
        reader.get_value("k").await.expect("get").as_deref(),
        Some("v1")
    );

    // Now the late write reaches Redis; the writer's catch-up finds it there.
    l2.hold(false);
    assert_eq!(l2.land().await, vec![true], "one write held, and stored");
    serves(&reader, "k", Some("v2"), "the reader").await;
    assert_eq!(
        writer.get_value("k").await.expect("get").as_deref(),
        Some("v2")
    );
    // The reader may have read v2 from Redis before the catch-up's announcement (its copy of
    // v1 into L1 skipped, as an invalidation arrived during the read): the catch-up still runs.
    caught_up(&writer).await;
}

/// Wait (5 s at most) until `reader` has heard more messages of the fleet than `before`.
async fn heard_more_than(reader: &Layered<String>, before: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while reader.backplane().map_or(0, |b| b.state().received) <= before {
        assert!(Instant::now() < deadline, "the reader heard of the change");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Wait (5 s at most) until `reader` reads `want` for `key` from Redis and then serves it from
/// its L1: the copy stayed.
async fn copied_back(reader: &Layered<String>, key: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut from_redis = false;
    loop {
        let before = reader.stats().l2_hits;
        let seen = reader.get_value(key).await.expect("get");
        assert_eq!(
            seen.as_deref(),
            Some(want),
            "the reader reads what Redis holds"
        );
        let read_redis = reader.stats().l2_hits > before;
        if from_redis && !read_redis {
            return;
        }
        from_redis = read_redis;
        assert!(Instant::now() < deadline, "the reader copied {key} into L1");
        tokio::task::yield_now().await;
    }
}

/// A `delete` whose command timed out here but reached Redis later — after its announcement,
/// after both replicas had read the value back from Redis, which still held it — does not
/// leave them serving that value: the key is read again once such a command could have
/// landed, here and on the fleet. Before, both served the deleted value for its lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_that_reached_redis_after_its_announcement_is_read_again_everywhere() {
    let server = RedisServer::start();
    let (writer, l2, reader) = writer_and_reader(&server, "late-delete").await;
    let ttl = Duration::from_secs(600);
    writer
        .set_value("k", "v1".to_owned(), ttl)
        .await
        .expect("set");
    serves(&reader, "k", Some("v1"), "the reader").await;

    let before = reader.backplane().map_or(0, |b| b.state().received);
    l2.hold(true);
    let failed = writer.delete("k").await;
    assert!(failed.is_err(), "the delete timed out here: {failed:?}");
    l2.hold(false);
    heard_more_than(&reader, before).await;
    // Both read v1 back from Redis, which still holds it, into their L1.
    copied_back(&reader, "k", "v1").await;
    copied_back(&writer, "k", "v1").await;
    // Now the late delete reaches Redis.
    assert_eq!(
        l2.land().await,
        vec![true],
        "one delete held, and carried out"
    );
    serves(&reader, "k", None, "the reader").await;
    serves(&writer, "k", None, "the writer").await;
}

/// An `invalidate_prefix` that timed out here but removed the keys from Redis later — after
/// both replicas read them back from Redis, which still held them — does not leave the removed
/// values served: this replica drops its entries under the prefix, the others resync. Seen
/// first as seed 839 of `replicas_converge_on_redis_after_random_faults` (`prefix k1` timed
/// out; two replicas served `k10` 20 s on, Redis held nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_invalidation_that_reached_redis_late_is_read_again_everywhere() {
    let server = RedisServer::start();
    let (writer, l2, reader) = writer_and_reader(&server, "late-prefix").await;
    let ttl = Duration::from_secs(600);
    for key in ["user:1", "user:2", "other"] {
        writer
            .set_value(key, format!("{key} v1"), ttl)
            .await
            .expect("set");
        serves(&reader, key, Some(&format!("{key} v1")), "the reader").await;
    }

    let before = reader.backplane().map_or(0, |b| b.state().received);
    l2.hold(true);
    let failed = writer.invalidate_prefix("user:").await;
    assert!(
        failed.is_err(),
        "the invalidation timed out here: {failed:?}"
    );
    l2.hold(false);
    heard_more_than(&reader, before).await;
    // Both read user:1 back from Redis, which still holds it, into their L1.
    copied_back(&reader, "user:1", "user:1 v1").await;
    copied_back(&writer, "user:1", "user:1 v1").await;
    // Now the late invalidation reaches Redis.
    assert_eq!(
        l2.land().await,
        vec![true],
        "one invalidation held, and carried out"
    );
    for cache in [(&reader, "the reader"), (&writer, "the writer")] {
        serves(cache.0, "user:1", None, cache.1).await;
        serves(cache.0, "user:2", None, cache.1).await;
        serves(cache.0, "other", Some("other v1"), cache.1).await;
    }
}

/// A `set` and then a `delete` of one key, both timing out here and both reaching Redis after
/// their announcements: the catch-up finds the key deleted in L1 and has nothing to write, and
/// Redis ends up empty after the other replica read the old value back. That replica reads the
/// key again all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_and_a_delete_that_both_reached_redis_late_are_read_again_everywhere() {
    let server = RedisServer::start();
    let (writer, l2, reader) = writer_and_reader(&server, "late-both").await;
    let ttl = Duration::from_secs(600);
    writer
        .set_value("k", "v1".to_owned(), ttl)
        .await
        .expect("set");
    serves(&reader, "k", Some("v1"), "the reader").await;

    let state = |cache: &Layered<String>| cache.backplane().map(|b| b.state()).expect("backplane");
    let (published, received) = (state(&writer).published, state(&reader).received);
    l2.hold(true);
    writer
        .set_value("k", "v2".to_owned(), ttl)
        .await
        .expect("a set whose L2 write failed is kept for the catch-up");
    let failed = writer.delete("k").await;
    assert!(failed.is_err(), "the delete timed out here: {failed:?}");
    // Both announcements are out (perhaps as one): the reader hears all of them, then reads v1
    // back from Redis, which still holds it, into its L1.
    let sent = state(&writer).published - published;
    assert!(sent > 0, "the changes were announced");
    heard_more_than(&reader, received + sent - 1).await;
    copied_back(&reader, "k", "v1").await;
    // The catch-up has nothing left to write: the key is gone from the writer's L1.
    caught_up(&writer).await;
    // The set lands, then the delete, which removes it.
    assert_eq!(l2.land().await, vec![true, true], "both carried out");
    l2.hold(false);
    serves(&reader, "k", None, "the reader").await;
    serves(&writer, "k", None, "the writer").await;
}

/// A tag invalidation whose time Redis took only after the caller's timeout (a slow link) is
/// not left there unannounced: it is stored again until Redis answers, and then announced, so a
/// replica that already knew the tag's old time stops serving the tagged entries. Before, the
/// caller got the error and the time reached Redis unannounced: replicas that read tag times
/// afresh (after a reconnection) applied it, the others never did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_invalidation_redis_took_late_reaches_every_replica() {
    use support::proxy::{FaultProxy, Mode};
    let server = RedisServer::start();
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", server.port)
        .parse()
        .expect("address");
    let proxy = FaultProxy::start(upstream).await;
    let slow = RedisCache::<String>::builder()
        .url(proxy.url())
        .namespace("tagged")
        .build()
        .await
        .expect("redis through the proxy");
    let writer = Layered::builder(MemoryCache::builder().build().expect("l1"), slow.clone())
        .name("writer")
        .backplane(slow.backplane().await.expect("backplane"))
        .build()
        .expect("writer");
    let reader = support::fleet::replica_cache(&server.url(), "tagged")
        .await
        .expect("reader");
    wait_subscribed(&[&writer, &reader]).await;
    // The reader caches a tagged reply, and with it the tag's time (never invalidated).
    let options = layercache::LoadOptions::ttl(Duration::from_secs(600)).with_tags(["user:7"]);
    let first = reader
        .get_or_load(
            "reply",
            || async { Ok::<_, std::io::Error>("before".to_owned()) },
            options.clone(),
        )
        .await
        .expect("load");
    assert_eq!(first, "before");
    assert_eq!(
        reader.get_value("reply").await.expect("get").as_deref(),
        Some("before")
    );

    // Every reply now comes 800 ms late, past the 250 ms command timeout.
    proxy.set(Mode::Latency(Duration::from_millis(800)));
    let failed = writer.invalidate_tag("user:7").await;
    assert!(
        failed.is_err(),
        "the invalidation timed out here: {failed:?}"
    );
    proxy.set(Mode::Pass);

    // The reader stops serving the tagged reply once the retry is announced, and loads anew.
    let deadline = Instant::now() + Duration::from_secs(10);
    while reader.get_value("reply").await.expect("get").is_some() {
        assert!(
            Instant::now() < deadline,
            "the reader still serves the tagged reply 10 s after the invalidation"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = reader
        .get_or_load(
            "reply",
            || async { Ok::<_, std::io::Error>("after".to_owned()) },
            options,
        )
        .await
        .expect("load");
    assert_eq!(again, "after");
}

/// Conditional writes keep what a plain `set` did in the two cases where the creation times
/// do not differ: a clone of an entry set again (the same creation time) stays in L1 and in
/// Redis, and an entry already past its stale deadline removes the older value from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_set_again_stays_and_an_expired_entry_removes_the_older_value() {
    let server = RedisServer::start();
    let (writer, _l2, reader) = writer_and_reader(&server, "same").await;
    let redis = RedisCache::<String>::builder()
        .url(server.url())
        .namespace("same")
        .build()
        .await
        .expect("redis");
    let entry = Entry::new("reply".to_owned(), Duration::from_secs(600));
    writer.set("k", entry.clone()).await.expect("set");
    writer.set("k", entry.clone()).await.expect("set again");
    let l2_reads = writer.stats().l2_hits;
    assert_eq!(
        writer.get_value("k").await.expect("get").as_deref(),
        Some("reply")
    );
    assert_eq!(
        writer.stats().l2_hits,
        l2_reads,
        "served from L1: the second set was not taken as superseded"
    );
    all_serve(&redis, [&writer, &reader], "k", "reply").await;

    // A newer entry already past its stale deadline: the key is gone everywhere.
    let now = SystemTime::now();
    let expired = Entry::with_deadlines(
        "expired".to_owned(),
        now - Duration::from_secs(2),
        now - Duration::from_secs(1),
    );
    writer
        .set("k", expired)
        .await
        .expect("set an expired entry");
    assert_eq!(redis.get_value("k").await.expect("read"), None);
    serves(&writer, "k", None, "the writer").await;
    serves(&reader, "k", None, "the reader").await;
}

/// An `expire` whose write reached Redis only after another replica wrote the key again does
/// not turn that newer value into the older one, expired; on time, it expires the entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_expire_leaves_a_newer_value_alone() {
    let server = RedisServer::start();
    let (writer, l2, reader) = writer_and_reader(&server, "expire").await;
    let redis = RedisCache::<String>::builder()
        .url(server.url())
        .namespace("expire")
        .build()
        .await
        .expect("redis");
    let ttl = Duration::from_secs(600);
    reader
        .set_value("k", "first".to_owned(), ttl)
        .await
        .expect("set");
    serves(&writer, "k", Some("first"), "the writer").await;
    l2.hold(true);
    let failed = writer.expire("k").await;
    assert!(failed.is_err(), "the expire timed out here: {failed:?}");
    reader
        .set_value("k", "second".to_owned(), ttl)
        .await
        .expect("set");
    assert_eq!(l2.land().await, vec![false], "the late expire is refused");
    l2.hold(false);
    all_serve(&redis, [&writer, &reader], "k", "second").await;

    // On time: the entry is expired in Redis (still there as a fail-safe fallback) and on
    // every replica.
    writer.expire("k").await.expect("expire");
    let expired = redis
        .peek("k")
        .await
        .expect("read")
        .expect("kept as a fallback");
    assert_eq!(expired.value(), "second");
    assert!(!expired.is_fresh());
    serves(&writer, "k", None, "the writer").await;
    serves(&reader, "k", None, "the reader").await;
}

/// A replica whose writes wait for the catch-up (L2 failed them) and whose backplane missed a
/// `clear` (the connection dropped as the message came) resyncs when it hears the fleet again.
/// The resync keeps its own pending writes in L1; those created before the clear it missed are
/// expired there (the clear time is read from Redis), those created after stay and reach the
/// fleet. Before, the older one was served as fresh from L1 for its whole lifetime, and the
/// catch-up copied it to Redis while every other replica had it cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_writes_kept_by_a_resync_do_not_outlive_a_clear_it_missed() {
    use support::proxy::Mode;
    let server = RedisServer::start();
    let direct = redis_at(&server, "missed").await;
    let l2 = LateWrites::over(direct);
    let (writer, proxy, reader) =
        writer_with_proxied_backplane(&server, "missed", l2.clone(), false).await;
    let ttl = Duration::from_secs(600);

    l2.hold(true);
    writer
        .set_value("before", "old".to_owned(), ttl)
        .await
        .expect("kept in L1 for the catch-up");
    assert_eq!(writer.pending_l2_writes(), 1, "the write timed out at L2");
    serves(&writer, "before", Some("old"), "the writer").await;

    // The clear's message comes as the writer's backplane connection drops.
    let resyncs = support::fleet::backplane_state(&writer).resyncs;
    proxy.set(Mode::Reset);
    reader.clear().await.expect("clear");
    no_longer_hears_the_fleet(&writer).await;
    writer
        .set_value("after", "new".to_owned(), ttl)
        .await
        .expect("kept in L1 for the catch-up");

    proxy.set(Mode::Pass);
    let deadline = Instant::now() + Duration::from_secs(10);
    while support::fleet::backplane_state(&writer).resyncs == resyncs {
        assert!(
            Instant::now() < deadline,
            "the writer resynced when it heard the fleet again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(writer.pending_l2_writes(), 2, "both writes wait for L2");
    serves(&writer, "before", None, "the writer").await;
    serves(&writer, "after", Some("new"), "the writer").await;

    l2.hold(false);
    caught_up(&writer).await;
    serves(&reader, "before", None, "the reader").await;
    serves(&reader, "after", Some("new"), "the reader").await;
    serves(&writer, "before", None, "the writer").await;
}

/// A `clear` that Redis could not take when it was made is retried; once it lands, the
/// replica that made it stops serving what its L1 took in meanwhile (created before the clear),
/// like every other replica. Before, the retry recorded the clear time here but left L1 as it
/// was, and a memory L1 does not look at the clear time on a hit: that replica served the old
/// entry for its whole lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_that_failed_here_also_empties_this_l1_when_its_retry_lands() {
    use support::proxy::Mode;
    let server = RedisServer::start();
    let direct = redis_at(&server, "cleared").await;
    // The backplane, which stores the clear time, goes through the proxy; L2 reads do not.
    let (writer, proxy, reader) =
        writer_with_proxied_backplane(&server, "cleared", Arc::new(direct), false).await;
    let ttl = Duration::from_secs(600);
    reader
        .set_value("k", "old".to_owned(), ttl)
        .await
        .expect("set");
    serves(&writer, "k", Some("old"), "the writer").await;

    proxy.set(Mode::Blackhole);
    let failed = writer.clear().await;
    assert!(failed.is_err(), "the clear timed out here: {failed:?}");
    // Redis does not know of the clear yet: read from L2 again, and kept in this L1.
    assert_eq!(
        writer.get_value("k").await.expect("get").as_deref(),
        Some("old")
    );

    proxy.set(Mode::Pass);
    serves(&writer, "k", None, "the writer").await;
    serves(&reader, "k", None, "the reader").await;
}

/// A value read from Redis never replaces this replica's newer write in L1, such as one still
/// waiting for the catch-up: here read while the replica could not hear the fleet (its L1 not
/// trusted on its own, so Redis decides what is served). The write reaches Redis and every
/// replica once Redis takes it. Before, the older value read from Redis replaced it in L1; the
/// catch-up then found only that older value, and the write was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_read_from_redis_does_not_replace_a_newer_write_waiting_in_l1() {
    use support::proxy::Mode;
    let server = RedisServer::start();
    let redis = redis_at(&server, "kept").await;
    let l2 = LateWrites::over(redis.clone());
    // The catch-up's failed attempts while the write is held must not open the circuit: the
    // read below is to reach Redis.
    let (writer, proxy, reader) =
        writer_with_proxied_backplane(&server, "kept", l2.clone(), true).await;
    let ttl = Duration::from_secs(600);
    reader
        .set_value("k", "old".to_owned(), ttl)
        .await
        .expect("set");
    serves(&writer, "k", Some("old"), "the writer").await;

    l2.hold(true);
    writer
        .set_value("k", "new".to_owned(), ttl)
        .await
        .expect("kept in L1 for the catch-up");
    assert_eq!(writer.pending_l2_writes(), 1, "the write timed out at L2");

    // The writer stops hearing the fleet (its connection drops at the next message).
    proxy.set(Mode::Reset);
    reader
        .set_value("other", "x".to_owned(), ttl)
        .await
        .expect("set");
    no_longer_hears_the_fleet(&writer).await;
    // Redis decides while the writer cannot hear the fleet: it still holds the old value.
    let seen = writer.get_value("k").await.expect("get");
    assert_eq!(seen.as_deref(), Some("old"));

    l2.hold(false);
    proxy.set(Mode::Pass);
    wait_subscribed(&[&writer]).await;
    caught_up(&writer).await;
    all_serve(&redis, [&writer, &reader], "k", "new").await;
}

/// The classic cache-aside race across replicas: a load reads the database row, the row is
/// updated and another replica deletes the key, then the load ends — before the delete's
/// message reaches its replica (here a backplane link 300 ms slow; a stalled process does the
/// same). The load's value, read before the update, must not reach Redis, where the whole fleet
/// would serve it for its lifetime. The delete's tombstone (`redis::TOMBSTONE_TTL`), newer than
/// the load, keeps it out. Before tombstones, Redis held the old row for the full hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_read_before_another_replicas_delete_does_not_reach_redis_after_it() {
    spanning_load(Spanning::Delete).await;
}

/// The same race with an `expire` instead of the delete: of a key Redis did not hold (a cold
/// key being loaded), and of a value an earlier `expire` already expired (the load was started
/// by that one: the row changed again while it ran). The expire leaves a tombstone, or an
/// expired copy of the value it read ordered at the expire, and the load's value, read before
/// it, is not stored fresh. Before, Redis held the old row, fresh, for the full hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_read_before_another_replicas_expire_is_not_stored_fresh() {
    spanning_load(Spanning::ExpireOfNothing).await;
    spanning_load(Spanning::ExpireOfAnExpiredValue).await;
}

/// The same race with an `invalidate_prefix` of the key's prefix. A removal by prefix leaves
/// no tombstone (it cannot know the keys Redis does not hold yet), so the load's value reaches
/// Redis; the loading replica takes it back when the removal's message arrives (it keeps the
/// loads it wrote to Redis lately for that, see the README). Before, Redis held the old row,
/// fresh, for the full hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_read_before_another_replicas_invalidate_prefix_is_taken_back_from_redis() {
    spanning_load(Spanning::Prefix).await;
}

/// What the updating replica does to the key while the other replica's load runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Spanning {
    Delete,
    ExpireOfNothing,
    ExpireOfAnExpiredValue,
    Prefix,
}

async fn spanning_load(change: Spanning) {
    use layercache::LoadOptions;
    use support::proxy::Mode;

    const KEY: &str = "user:7:profile";
    let server = RedisServer::start();
    let l2: Arc<dyn Cache<String>> = Arc::new(redis_at(&server, "aside").await);
    let (loader_replica, proxy, updater) =
        writer_with_proxied_backplane(&server, "aside", l2, false).await;
    wait_subscribed(&[&loader_replica, &updater]).await;
    let redis = redis_at(&server, "aside").await;
    let set_at = SystemTime::now();
    if change == Spanning::ExpireOfAnExpiredValue {
        updater
            .set_value(KEY, "profile v0".to_owned(), Duration::from_secs(3600))
            .await
            .expect("set");
        serves(
            &loader_replica,
            KEY,
            Some("profile v0"),
            "the loading replica",
        )
        .await;
        updater.expire(KEY).await.expect("expire");
        serves(&loader_replica, KEY, None, "the loading replica").await;
    }
    let expired_at = SystemTime::now();
    proxy.set(Mode::Latency(Duration::from_millis(300)));

    let (started, load_started) = tokio::sync::oneshot::channel::<()>();
    let (finish, finished) = tokio::sync::oneshot::channel::<()>();
    let loading = {
        let cache = loader_replica.clone();
        tokio::spawn(async move {
            let loader = move || async move {
                // The row as it is before the update.
                let _ = started.send(());
                let _ = finished.await;
                Ok::<_, std::io::Error>("profile before the update".to_string())
            };
            let options = LoadOptions::ttl(Duration::from_secs(3600)).with_fleet_lease(false);
            cache.get_or_load(KEY, loader, options).await
        })
    };
    load_started.await.expect("load started");
    // The row is updated; the updater deletes or expires the key (it returns once the change
    // is announced; the loading replica hears it 300 ms later).
    match change {
        Spanning::Delete => updater.delete(KEY).await.expect("delete"),
        Spanning::Prefix => {
            updater.invalidate_prefix("user:7:").await.expect("prefix");
        }
        Spanning::ExpireOfNothing | Spanning::ExpireOfAnExpiredValue => {
            updater.expire(KEY).await.expect("expire");
        }
    }
    finish.send(()).expect("finish the load");
    let answered = loading.await.expect("task").expect("load");
    assert_eq!(
        answered, "profile before the update",
        "its caller is answered"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while loader_replica.pending_loads() > 0 {
        assert!(Instant::now() < deadline, "the load's writes never ended");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if change == Spanning::Prefix {
        // Redis took the load's write; the removal's message arrives 300 ms later, and the
        // loading replica takes it back.
        let deadline = Instant::now() + Duration::from_secs(5);
        while redis.peek(KEY).await.expect("redis").is_some() {
            assert!(
                Instant::now() < deadline,
                "Prefix: Redis still holds the row read before the change: {:?}",
                redis.peek(KEY).await
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Redis refused the load's write (it held the newer change): the loading replica does not
    // keep serving that value from its L1 until the change's message arrives.
    assert_eq!(
        loader_replica.get_value(KEY).await.expect("get"),
        None,
        "{change:?}: the loading replica serves the row Redis refused"
    );

    assert_eq!(
        redis.get_value(KEY).await.expect("redis"),
        None,
        "{change:?}: Redis holds the row read before the change, fresh"
    );
    let kept = redis.peek(KEY).await.expect("redis");
    match change {
        Spanning::Delete | Spanning::ExpireOfNothing | Spanning::Prefix => {
            assert!(kept.is_none(), "{kept:?}");
        }
        // The value the expire read stays as a fail-safe fallback, with its own age.
        Spanning::ExpireOfAnExpiredValue => {
            let kept = kept.expect("the expired value");
            assert_eq!(kept.value(), "profile v0");
            assert!(!kept.is_fresh());
            let created = kept.created_at();
            assert!(set_at <= created && created < expired_at, "{created:?}");
        }
    }
    serves(&updater, KEY, None, "the updater").await;
    // The loading replica drops its own copy once the change's message arrives.
    serves(&loader_replica, KEY, None, "the loading replica").await;
    // A load after the change is written as usual — well before the tombstone would have
    // expired — even when the loading replica's messages about its refused write arrive while
    // it runs. (Before, that replica announced its refused write as a change: on a busy
    // machine the message came during this load, which was then taken as superseded — its
    // value answered but was not stored.) A change of a marker key, announced by the loading
    // replica after those messages, shows when the updater has applied them all.
    proxy.set(Mode::Pass);
    caught_up(&loader_replica).await;
    let marker = "marker";
    updater
        .set_value(marker, "m1".to_owned(), Duration::from_secs(60))
        .await
        .expect("set the marker");
    if change == Spanning::Prefix {
        // The loading replica announced its load's write (Redis took it), and then, taking it
        // back, the key again (a replica may have read the old row from Redis in between):
        // each is a change of the key that supersedes a load it reaches, and both come through
        // the slow link. Applied before this load starts.
        loader_replica
            .set_value(marker, "m0".to_owned(), Duration::from_secs(60))
            .await
            .expect("change the marker");
        serves(&updater, marker, Some("m0"), "the updater").await;
    }
    let fresh = {
        let (loading, updating) = (loader_replica.clone(), updater.clone());
        updater
            .get_or_load(
                KEY,
                move || async move {
                    loading
                        .set_value(marker, "m2".to_owned(), Duration::from_secs(60))
                        .await
                        .expect("change the marker");
                    serves(&updating, marker, Some("m2"), "the updater").await;
                    Ok::<_, std::io::Error>("profile after the update".to_string())
                },
                LoadOptions::ttl(Duration::from_secs(3600)),
            )
            .await
            .expect("load")
    };
    assert_eq!(fresh, "profile after the update");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let held = redis.get_value(KEY).await.expect("redis");
        if held.as_deref() == Some("profile after the update") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{change:?}: the new row never reached Redis ({:?})",
            redis.peek(KEY).await
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    serves(
        &loader_replica,
        KEY,
        Some("profile after the update"),
        "the loading replica",
    )
    .await;
}
