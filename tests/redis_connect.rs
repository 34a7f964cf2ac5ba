//! Connecting `RedisCache` to a real `redis-server`: clear builder errors, ACL users whose
//! credentials never show, a sentinel in front of the master, and `ping`.

#![cfg(all(feature = "redis", feature = "msgpack"))]

mod support;

use std::time::Duration;

use layercache::codec::Codec;
use layercache::{Cache, CacheExt, Entry, RedisCache, RedisErrorKind};
use support::chat::{reply, ChatReply};
use support::redis::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_errors_are_clear() {
    use layercache::Error;
    let no_url =
        RedisCache::<ChatReply>::builder_with_codec(Codec::builder().build().expect("codec"))
            .build()
            .await;
    assert!(matches!(no_url, Err(Error::Config { .. })), "{no_url:?}");
    let bad_url = RedisCache::<ChatReply>::builder()
        .url("not a url")
        .build()
        .await;
    assert!(
        matches!(bad_url, Err(Error::Redis { op: "config", .. })),
        "{bad_url:?}"
    );
    let zero = RedisCache::<ChatReply>::builder()
        .url("redis://127.0.0.1:1")
        .pool_size(0)
        .build()
        .await;
    assert!(matches!(zero, Err(Error::Config { .. })));
    // A pool no server would accept (it used to try to build usize::MAX clients).
    for size in [layercache::redis::MAX_POOL_SIZE + 1, usize::MAX] {
        let huge = RedisCache::<ChatReply>::builder()
            .url("redis://127.0.0.1:1")
            .pool_size(size)
            .build()
            .await;
        assert!(
            matches!(&huge, Err(Error::Config { reason }) if reason.contains("1024")),
            "{size}: {huge:?}"
        );
    }
    // A scheme that is not Redis's would be taken for a plain server by the client library.
    for url in ["http://127.0.0.1:6379", "mysql://u:p@db:3306"] {
        let wrong = RedisCache::<ChatReply>::builder().url(url).build().await;
        match &wrong {
            Err(Error::Config { reason }) => {
                assert!(reason.contains("redis://"), "{reason}");
                assert!(
                    !reason.contains(":p@"),
                    "no credentials in errors: {reason}"
                );
            }
            other => panic!("{url}: expected a config error, got {other:?}"),
        }
    }
    let zero_timeout = RedisCache::<ChatReply>::builder()
        .url("redis://127.0.0.1:1")
        .unresponsive_after(Duration::ZERO)
        .build()
        .await;
    assert!(matches!(zero_timeout, Err(Error::Config { .. })));
    // Duration::MAX means "no limit": accepted (not an overflow).
    let unlimited = RedisCache::<ChatReply>::builder()
        .url("redis://127.0.0.1:1")
        .command_timeout(Duration::MAX)
        .unresponsive_after(Duration::MAX)
        .connect_timeout(Duration::from_millis(100))
        .build()
        .await;
    assert!(unlimited.is_ok(), "{unlimited:?}");
    // Nothing listens on port 1: not a configuration error. The cache starts without Redis
    // within the connect timeout, and its commands fail at once (a `Layered` in front serves).
    let started = std::time::Instant::now();
    let down = RedisCache::<ChatReply>::builder()
        .url("redis://127.0.0.1:1")
        .connect_timeout(Duration::from_millis(300))
        .build()
        .await
        .expect("an unreachable server does not fail the build");
    assert!(started.elapsed() < Duration::from_secs(1));
    let read = down.get("k").await;
    assert!(matches!(read, Err(Error::Redis { .. })), "{read:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // A wrong password is a configuration error: build fails fast, naming the connect step.
    let server = RedisServer::start();
    server.cli(&["CONFIG", "SET", "requirepass", "s3cret-pass"]);
    let started = std::time::Instant::now();
    let url = format!("redis://:wrong-pass@127.0.0.1:{}", server.port);
    let denied = RedisCache::<ChatReply>::builder()
        .url(&url)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .await;
    match &denied {
        Err(Error::Redis {
            op: "connect",
            source,
        }) => {
            assert_eq!(source.kind(), RedisErrorKind::Auth, "{source}")
        }
        other => panic!("expected an auth error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    let good = format!("redis://:s3cret-pass@127.0.0.1:{}", server.port);
    RedisCache::<ChatReply>::builder()
        .url(&good)
        .build()
        .await
        .expect("the right password connects");

    // A database the server does not have (it has 16 unless configured otherwise) is refused by
    // the server at connect: build fails, rather than starting a cache whose every command fails.
    let missing_db = format!("redis://:s3cret-pass@127.0.0.1:{}/99", server.port);
    match RedisCache::<ChatReply>::builder()
        .url(&missing_db)
        .build()
        .await
    {
        Err(Error::Redis {
            op: "connect",
            source,
        }) => {
            assert_eq!(source.kind(), RedisErrorKind::Config, "{source}");
            assert!(source.to_string().contains("DB index"), "{source}");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
    let db = format!("redis://:s3cret-pass@127.0.0.1:{}/15", server.port);
    let last = RedisCache::<ChatReply>::builder()
        .url(&db)
        .build()
        .await
        .expect("database 15 exists");
    last.set_value("k", reply(1, 500), Duration::from_secs(5))
        .await
        .expect("set in database 15");
}

/// An ACL user from the URL or the builder; wrong credentials are a typed `Auth` error at
/// `build()`, and no password ever shows in `Debug`, `Display` or an error chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_users_authenticate_and_credentials_never_show() {
    use layercache::Error;
    use std::error::Error as _;
    let server = RedisServer::start();
    server.cli(&[
        "ACL",
        "SETUSER",
        "svc",
        "on",
        ">acl-Pa55word",
        "~lc:*",
        "+@all",
    ]);
    let url = format!("redis://svc:acl-Pa55word@127.0.0.1:{}", server.port);
    let cache = RedisCache::<ChatReply>::builder()
        .url(&url)
        .namespace("lc")
        .build()
        .await
        .expect("the ACL user from the URL connects");
    cache
        .set_value("k", reply(1, 300), Duration::from_secs(60))
        .await
        .expect("a key the user may write");
    assert!(cache.get_value("k").await.expect("get").is_some());

    // The same user given to the builder, the password kept out of the URL.
    let builder = RedisCache::<ChatReply>::builder()
        .url(format!("redis://127.0.0.1:{}", server.port))
        .username("svc")
        .password("acl-Pa55word")
        .namespace("lc");
    assert!(
        !format!("{builder:?}").contains("acl-Pa55word"),
        "{builder:?}"
    );
    builder
        .build()
        .await
        .expect("the ACL user from the builder connects");

    // A key outside the user's pattern: a typed permission error, not a hang.
    let outside = RedisCache::<ChatReply>::builder()
        .url(&url)
        .namespace("other")
        .build()
        .await
        .expect("connect");
    match outside
        .set_value("k", reply(1, 300), Duration::from_secs(60))
        .await
    {
        Err(Error::Redis { source, .. }) => assert_eq!(source.kind(), RedisErrorKind::Auth),
        other => panic!("expected NOPERM, got {other:?}"),
    }

    for (url, builder_password) in [
        (
            format!("redis://svc:not-the-Pa55word@127.0.0.1:{}", server.port),
            None,
        ),
        (
            format!("redis://svc@127.0.0.1:{}", server.port),
            Some("not-the-Pa55word"),
        ),
    ] {
        let mut builder = RedisCache::<ChatReply>::builder().url(&url);
        if let Some(p) = builder_password {
            builder = builder.password(p);
        }
        let shown = format!("{builder:?}");
        let err = builder.build().await.expect_err("wrong password");
        let mut text = format!("{shown} {err} {err:?}");
        let mut source = err.source();
        while let Some(s) = source {
            text.push_str(&format!(" {s} {s:?}"));
            source = s.source();
        }
        assert!(!text.contains("Pa55word"), "a password leaked: {text}");
        match err {
            Error::Redis {
                op: "connect",
                source,
            } => {
                assert_eq!(source.kind(), RedisErrorKind::Auth, "{source}")
            }
            other => panic!("expected an auth error, got {other:?}"),
        }
    }
    // A URL that does not parse is not echoed with its password either.
    let err = RedisCache::<ChatReply>::builder()
        .url("redis://svc:acl-Pa55word@127.0.0.1:notaport")
        .build()
        .await
        .expect_err("bad port");
    assert!(!format!("{err} {err:?}").contains("Pa55word"), "{err:?}");
    // Nor is a password holding URL delimiters (unencoded: the URL does not parse), nor a
    // sentinel's password in the query; a URL that does not parse is a `Config` error.
    for url in [
        format!("redis://:Pa55/word#x@127.0.0.1:{}", server.port),
        format!("redis://svc:Pa55?word@127.0.0.1:{}", server.port),
        format!(
            "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName=m&sentinelPassword=Pa55@word&node=127.0.0.1:1",
            server.port
        ),
    ] {
        let builder = RedisCache::<ChatReply>::builder()
            .url(&url)
            .connect_timeout(Duration::from_millis(300));
        let mut text = format!("{builder:?}");
        if let Err(err) = builder.build().await {
            text.push_str(&format!(" {err} {err:?}"));
            if let Error::Redis { op: "config", source } = &err {
                assert_eq!(source.kind(), RedisErrorKind::Config, "{source}");
            }
        }
        assert!(!text.contains("Pa55"), "a password leaked: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_reports_round_trip_time() {
    let server = RedisServer::start();
    let cache: RedisCache<ChatReply> = RedisCache::builder()
        .url(server.url())
        .build()
        .await
        .expect("connect");
    let rtt = cache.ping().await.expect("ping");
    assert!(rtt < Duration::from_millis(250));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_behind_a_sentinel() {
    let sentinel = support::redis::RedisSentinel::start();
    let cache: RedisCache<ChatReply> = RedisCache::builder()
        .url(sentinel.url())
        .namespace("s")
        .build()
        .await
        .expect("connect via the sentinel");
    let e = Entry::new(reply(5, 2000), Duration::from_secs(60));
    cache.set("k", e.clone()).await.expect("set");
    assert_eq!(
        cache.get("k").await.expect("get").expect("hit").value(),
        e.value()
    );
    // The value landed on the master the sentinel named.
    assert_eq!(sentinel.master.cli(&["exists", "s:k"]).trim(), "1");
}
