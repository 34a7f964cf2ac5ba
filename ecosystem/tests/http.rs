//! The tower HTTP cache against a real axum server on loopback, called by a real HTTP client
//! (reqwest): stampede protection (1,000 concurrent identical requests), per-route lifetimes, `Vary`, what is never stored, body cap,
//! `x-cache`, fail-safe, and responses shared through a real Redis L2.

#![cfg(all(feature = "tower", feature = "msgpack"))]

#[path = "../../tests/support/mod.rs"]
mod support;
#[path = "support/upstream.rs"]
mod upstream;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use layercache::http::{CachedResponse, HttpCacheLayer};
use layercache::Error;
use upstream::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_makes_one_upstream_call_and_later_requests_hit() {
    let server = serve(l1()).await;
    let mut bodies = Vec::new();
    for (status, headers, body) in server.burst("/cached/models?page=1", 1000).await {
        assert_eq!(status, 200);
        assert!(headers.contains_key("x-cache"));
        bodies.push(body);
    }
    assert_eq!(
        server.upstream.calls("/cached/models"),
        1,
        "one call for 50 requests"
    );
    assert!(bodies.iter().all(|b| b == &bodies[0]));
    let again = server.get("/cached/models?page=1", &[]).await;
    assert_eq!(again.x_cache.as_deref(), Some("hit"));
    assert_eq!(again.body, bodies[0]);
    // Another query string is another response.
    let other = server.get("/cached/models?page=2", &[]).await;
    assert_eq!(other.x_cache.as_deref(), Some("miss"));
    assert_eq!(server.upstream.calls("/cached/models"), 2);
    // Routes not configured, and other methods, pass through untouched.
    let untouched = server.get("/elsewhere", &[]).await;
    assert_eq!(untouched.x_cache, None);
    let post = server
        .client
        .post(format!("{}/cached/models?page=1", server.base))
        .send()
        .await
        .expect("post");
    assert!(post.headers().get("x-cache").is_none());
    assert_eq!(
        server.upstream.calls("/cached/models"),
        3,
        "POST reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_route_lifetimes_and_vary_keep_users_apart() {
    let server = serve(l1()).await;
    let alice = server
        .get("/cached/answer", &[("authorization", "Bearer alice")])
        .await;
    let bob = server
        .get("/cached/answer", &[("authorization", "Bearer bob")])
        .await;
    assert!(alice.body.contains("Bearer alice") && bob.body.contains("Bearer bob"));
    let alice_again = server
        .get("/cached/answer", &[("authorization", "Bearer alice")])
        .await;
    assert_eq!(alice_again.x_cache.as_deref(), Some("hit"));
    assert!(
        alice_again.body.contains("Bearer alice"),
        "{}",
        alice_again.body
    );
    let anonymous = server.get("/cached/answer", &[]).await;
    assert!(anonymous.body.contains("nobody"));
    assert_eq!(server.upstream.calls("/cached/answer"), 3);

    // A cookie the route does not vary on: never cached, never served from the cache.
    for _ in 0..2 {
        let r = server
            .get("/cached/answer", &[("cookie", "session=1")])
            .await;
        assert_eq!(r.x_cache.as_deref(), Some("bypass"));
    }
    // The request says no-store.
    let r = server
        .get("/cached/answer", &[("cache-control", "no-store")])
        .await;
    assert_eq!(r.x_cache.as_deref(), Some("bypass"));
    assert_eq!(server.upstream.calls("/cached/answer"), 6);

    // The short route (300 ms, the longest prefix) is loaded again once it expired.
    let first = server.get("/cached/short", &[]).await;
    assert_eq!(first.x_cache.as_deref(), Some("miss"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.upstream.calls("/cached/short") < 2 {
        assert!(Instant::now() < deadline, "the short route never expired");
        let r = server.get("/cached/short", &[]).await;
        assert_eq!(r.status, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The 60 s route was not reloaded meanwhile.
    let long = server
        .get("/cached/answer", &[("authorization", "Bearer alice")])
        .await;
    assert_eq!(long.x_cache.as_deref(), Some("hit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_that_must_not_be_stored_are_forwarded_every_time() {
    let server = serve(l1()).await;
    for path in [
        "/cached/private",
        "/cached/no-store",
        "/cached/cookie",
        "/cached/no-cache",
        "/cached/vary-star",
        "/cached/created",
        "/cached/big",
        "/cached/huge",
    ] {
        for round in 0..2 {
            let r = server.get(path, &[]).await;
            assert_eq!(r.x_cache.as_deref(), Some("miss"), "{path} round {round}");
            if path == "/cached/big" {
                assert_eq!(r.body.len(), 4096, "a body over the cap is forwarded whole");
            }
            if path == "/cached/huge" {
                assert_eq!(r.body.len(), 10 << 20, "a 10 MB body passes through whole");
            }
        }
        assert_eq!(server.upstream.calls(path), 2, "{path} was stored");
    }
    // A 404 is cacheable.
    let missing = server.get("/cached/missing", &[]).await;
    assert_eq!(missing.status, 404);
    let again = server.get("/cached/missing", &[]).await;
    assert_eq!((again.status, again.x_cache.as_deref()), (404, Some("hit")));
    assert_eq!(server.upstream.calls("/cached/missing"), 1);
    // Headers survive the cache.
    let response = server
        .client
        .get(format!("{}/cached/missing", server.base))
        .send()
        .await
        .expect("request");
    assert_eq!(
        response.headers().get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
}

/// A response's own freshness caps its route's lifetime (RFC 9111 §4.2.1): a handler that says
/// `max-age=1` is not served from the cache for its route's 60 s, `s-maxage` wins over
/// `max-age`, and the route's lifetime still wins when it is the shorter. A response stale on
/// arrival (`max-age=0`, an `Age` past its `max-age`, a `max-age` that is not a number) is not
/// stored at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_is_kept_no_longer_than_its_own_max_age() {
    let server = serve(l1()).await;
    for (path, fresh_for) in [
        ("/cached/max-age-1", Duration::from_secs(1)),
        ("/cached/s-maxage-1", Duration::from_secs(1)),
        ("/cached/short/long-lived", Duration::from_millis(300)),
    ] {
        let asked = Instant::now();
        assert_eq!(server.get(path, &[]).await.x_cache.as_deref(), Some("miss"));
        // Hits until the shorter lifetime has passed, then the upstream is asked again.
        let deadline = asked + Duration::from_secs(10);
        loop {
            let reply = server.get(path, &[]).await;
            if reply.x_cache.as_deref() == Some("miss") {
                break;
            }
            assert_eq!(reply.x_cache.as_deref(), Some("hit"), "{path}");
            assert!(
                Instant::now() < deadline,
                "{path} was still served from the cache after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // (Deadlines are whole milliseconds of the wall clock.)
        let kept = asked.elapsed();
        assert!(
            kept + Duration::from_millis(10) >= fresh_for,
            "{path} expired after {kept:?}, before its {fresh_for:?}"
        );
        assert_eq!(server.upstream.calls(path), 2, "{path}");
        println!("{path}: served from the cache for {kept:?} (fresh for {fresh_for:?})");
    }
    for path in [
        "/cached/max-age-0",
        "/cached/aged-out",
        "/cached/max-age-bad",
    ] {
        for round in 0..2 {
            let reply = server.get(path, &[]).await;
            assert_eq!(reply.status, 200);
            assert_eq!(
                reply.x_cache.as_deref(),
                Some("miss"),
                "{path} round {round}"
            );
        }
        assert_eq!(server.upstream.calls(path), 2, "{path} was stored");
    }
}

/// A successful unsafe request (`POST`, `PUT`, `PATCH`, `DELETE`) invalidates every response
/// stored for its URI, whatever the headers they vary on (RFC 9111 §4.4): after Alice updates a
/// document, neither she nor Bob is answered from the cache with the old one. A failed unsafe
/// request, or one to another URI, invalidates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_unsafe_request_invalidates_what_is_stored_for_its_uri() {
    let server = serve(l1()).await;
    let alice = [("authorization", "Bearer alice")];
    let bob = [("authorization", "Bearer bob")];
    let x_cache = |reply: Reply| reply.x_cache.unwrap_or_default();
    for who in [&alice, &bob] {
        assert_eq!(x_cache(server.get("/cached/doc", who).await), "miss");
        assert_eq!(x_cache(server.get("/cached/doc", who).await), "hit");
    }
    assert_eq!(
        x_cache(server.get("/cached/doc?page=2", &alice).await),
        "miss"
    );
    assert_eq!(x_cache(server.get("/cached/missing", &[]).await), "miss");
    for (round, method) in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
        reqwest::Method::DELETE,
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(
            server.send(method.clone(), "/cached/doc", &alice).await,
            200
        );
        for who in [&alice, &bob] {
            let reply = server.get("/cached/doc", who).await;
            assert_eq!(x_cache(reply), "miss", "after a {method}");
        }
        let calls = server.upstream.calls("/cached/doc");
        // (Counted by path: the first 3 loads, `?page=2` included.) Each round: the unsafe
        // request and 2 reloads.
        assert_eq!(calls, 3 + 3 * (round as u32 + 1), "after a {method}");
    }
    // Another URI (another query) keeps its response.
    assert_eq!(
        x_cache(server.get("/cached/doc?page=2", &alice).await),
        "hit"
    );
    // A failed unsafe request changed nothing: the stored response stays.
    assert_eq!(
        server
            .send(reqwest::Method::DELETE, "/cached/missing", &[])
            .await,
        404
    );
    assert_eq!(x_cache(server.get("/cached/missing", &[]).await), "hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_from_the_cache_say_their_age() {
    let server = serve(l1()).await;
    let age = |path: &'static str| {
        let (client, url) = (server.client.clone(), format!("{}{path}", server.base));
        async move {
            let r = client.get(url).send().await.expect("request");
            let x_cache = r.headers().get("x-cache").cloned().expect("x-cache");
            let age = r.headers().get("age").map(|v| {
                v.to_str()
                    .expect("ascii")
                    .parse::<u64>()
                    .expect("Age is whole seconds")
            });
            (x_cache, age)
        }
    };
    let started = Instant::now();
    // A fresh upstream answer has no Age of ours; one from the cache does.
    let (x_cache, first) = age("/cached/plain").await;
    assert_eq!((x_cache.as_bytes(), first), (&b"miss"[..], None));
    let (x_cache, hit) = age("/cached/plain").await;
    assert_eq!(x_cache.as_bytes(), b"hit");
    let hit = hit.expect("a hit says its age");
    assert!(hit <= started.elapsed().as_secs(), "{hit}");
    // The upstream's own Age is kept on the miss, and added to on the hit.
    let (_, first) = age("/cached/aged").await;
    assert_eq!(first, Some(100));
    let (x_cache, hit) = age("/cached/aged").await;
    assert_eq!(x_cache.as_bytes(), b"hit");
    let hit = hit.expect("age");
    assert!(
        (100..=100 + started.elapsed().as_secs()).contains(&hit),
        "{hit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_that_varies_on_what_the_key_does_not_hold_is_not_reused() {
    let server = serve(l1()).await;
    // The upstream compresses by Accept-Encoding and says so with `Vary`; the route does not
    // vary on it, so no client may get another's encoding.
    for round in 0..2 {
        let gzip = server
            .get("/cached/encoded", &[("accept-encoding", "gzip")])
            .await;
        assert!(
            gzip.body.starts_with("gzip:"),
            "round {round}: {}",
            gzip.body
        );
        let plain = server
            .get("/cached/encoded", &[("accept-encoding", "identity")])
            .await;
        assert!(
            plain.body.starts_with("plain:"),
            "round {round}: {}",
            plain.body
        );
        assert_eq!(plain.x_cache.as_deref(), Some("miss"));
    }
    assert_eq!(server.upstream.calls("/cached/encoded"), 4);

    // Varied on by the route, the same response is stored per encoding.
    let varied = serve_with(
        HttpCacheLayer::builder(l1())
            .route("/cached", Duration::from_secs(60))
            .vary("accept-encoding")
            .build()
            .expect("layer"),
    )
    .await;
    for encoding in ["gzip", "identity", "gzip", "identity"] {
        let r = varied
            .get("/cached/encoded", &[("accept-encoding", encoding)])
            .await;
        let expected = if encoding == "gzip" {
            "gzip:"
        } else {
            "plain:"
        };
        assert!(r.body.starts_with(expected), "{encoding}: {}", r.body);
    }
    assert_eq!(
        varied.upstream.calls("/cached/encoded"),
        2,
        "one per encoding"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_wait_on_a_response_that_may_not_be_stored_make_their_own_calls() {
    let server = serve(l1()).await;
    // A burst on a page that hands every visitor a session cookie: the requests coalesce onto
    // one upstream call, but its Set-Cookie must reach one visitor only.
    let cookies: Vec<_> = server
        .burst("/cached/session", 20)
        .await
        .into_iter()
        .map(|(_, headers, _)| headers.get("set-cookie").cloned().expect("a set-cookie"))
        .collect();
    let distinct: std::collections::HashSet<_> = cookies.iter().collect();
    assert_eq!(
        distinct.len(),
        20,
        "a session cookie was shared: {cookies:?}"
    );
    assert_eq!(server.upstream.calls("/cached/session"), 20);

    // The same for a failed upstream answer (nothing stale to serve instead).
    let replies = server.burst("/cached/down-session", 10).await;
    assert!(replies.iter().all(|(status, ..)| *status == 503));
    let cookies: std::collections::HashSet<_> = replies
        .iter()
        .map(|(_, headers, _)| headers.get("set-cookie").cloned().expect("a set-cookie"))
        .collect();
    assert_eq!(
        cookies.len(),
        10,
        "a session cookie was shared: {cookies:?}"
    );
    assert_eq!(server.upstream.calls("/cached/down-session"), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_kept_out_only_by_its_size_still_answers_every_request_that_waited() {
    let server = serve(l1()).await;
    // The upstream call is held until all 20 requests have reached the server: they wait on
    // the one call, whose body is over the cap (not stored) but meant for anyone.
    let open_the_gate = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.upstream.entered.load(Ordering::SeqCst) < 20 {
            assert!(Instant::now() < deadline, "the requests never arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.upstream.gate.add_permits(1000);
    };
    let (replies, ()) = tokio::join!(server.burst("/cached/big-gated", 20), open_the_gate);
    let x_cache = |r: &(u16, reqwest::header::HeaderMap, String)| {
        r.1.get("x-cache").cloned().expect("x-cache")
    };
    assert!(replies.iter().all(|r| r.0 == 200 && r.2.len() == 4096));
    let misses = replies.iter().filter(|r| x_cache(r) == "miss").count();
    let shared = replies.iter().filter(|r| x_cache(r) == "hit").count();
    assert_eq!(misses + shared, 20);
    assert_eq!(
        server.upstream.calls("/cached/big-gated") as usize,
        misses,
        "each upstream call answered one request, the others were shared"
    );
    assert!(shared > 0, "no request shared the call: {misses} misses");
}

/// With the upstream now failing on `path`: once the 300 ms lifetime is over, the failure is
/// hidden by the stale copy of `good` (never passed on to the client).
async fn rides_out_the_failure(server: &Server, path: &str, good: &Reply) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = server.get(path, &[]).await;
        assert_eq!(r.status, 200, "{path}: the failure reached the client");
        assert_eq!(r.body, good.body);
        if r.x_cache.as_deref() == Some("stale") {
            return;
        }
        assert!(Instant::now() < deadline, "{path}: never served stale");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_failure_serves_the_last_good_response_as_stale() {
    let server = serve(l1()).await;
    let good = server.get("/cached/short/flaky", &[]).await;
    assert_eq!(good.status, 200);
    server.upstream.failing.store(true, Ordering::SeqCst);
    rides_out_the_failure(&server, "/cached/short/flaky", &good).await;
    // Without a good copy, the 503 itself reaches the client (not a cached one).
    let cold = server.get("/cached/flaky", &[]).await;
    assert_eq!((cold.status, cold.body.as_str()), (503, "down"));
    let cold_again = server.get("/cached/flaky", &[]).await;
    assert_eq!(cold_again.status, 503);
    assert_eq!(
        server.upstream.calls("/cached/flaky"),
        2,
        "a 5xx is never stored"
    );

    // A rate limit (429) is ridden out the same way.
    server.upstream.failing.store(false, Ordering::SeqCst);
    let good = server.get("/cached/short/limited", &[]).await;
    assert_eq!(good.status, 200);
    server.upstream.failing.store(true, Ordering::SeqCst);
    rides_out_the_failure(&server, "/cached/short/limited", &good).await;
    let cold = server.get("/cached/limited", &[]).await;
    assert_eq!((cold.status, cold.body.as_str()), (429, "rate limited"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_errors_are_clear() {
    let no_route = HttpCacheLayer::builder(l1()).build();
    assert!(matches!(no_route, Err(Error::Config { .. })));
    let bad_header = HttpCacheLayer::builder(l1())
        .route("/x", Duration::from_secs(1))
        .vary("not a header")
        .build();
    assert!(matches!(bad_header, Err(Error::Config { .. })));
    let zero = HttpCacheLayer::builder(l1())
        .route("/x", Duration::ZERO)
        .build();
    assert!(matches!(zero, Err(Error::Config { .. })));
    // A prefix no path can start with would cache nothing, silently.
    match HttpCacheLayer::builder(l1())
        .route("v1/models", Duration::from_secs(1))
        .build()
    {
        Err(Error::Config { reason }) => assert!(reason.contains("v1/models"), "{reason}"),
        other => panic!("a prefix without its leading `/` was taken: {other:?}"),
    }
    // The same prefix twice: which lifetime holds would be a guess.
    let twice = HttpCacheLayer::builder(l1())
        .route("/v1/models", Duration::from_secs(1))
        .route("/v1/models", Duration::from_secs(60))
        .build();
    assert!(matches!(twice, Err(Error::Config { .. })));
}

/// Two servers with their own L1 over one real Redis: a response loaded by one is a hit on the
/// other.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_responses_through_redis() {
    use layercache::RedisCache;
    let redis = support::redis::RedisServer::start();
    let stack = || async {
        let l2 = RedisCache::<CachedResponse>::builder()
            .url(redis.url())
            .namespace("http-test")
            // A loaded machine must not turn this test into a timeout test.
            .command_timeout(Duration::from_secs(2))
            .build()
            .await
            .expect("redis");
        l1().l2(l2)
    };
    let (one, two) = (serve(stack().await).await, serve(stack().await).await);
    // Two replicas of one service (here on two ports of one host) share their responses.
    let asked = [("authorization", "Bearer carol")];
    let first = one.get("/cached/answer", &asked).await;
    assert_eq!(first.x_cache.as_deref(), Some("miss"));
    // The write to L2 may finish after the answer: wait until Redis holds the response.
    let raw = support::redis::raw_client(&redis.url()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stored: Vec<String> =
            fred::prelude::ClientLike::custom(&raw, fred::cmd!("KEYS"), vec!["http-test:*"])
                .await
                .expect("KEYS");
        if !stored.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the response never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let shared = two.get("/cached/answer", &asked).await;
    assert_eq!(shared.x_cache.as_deref(), Some("hit"));
    assert_eq!(shared.body, first.body);
    assert_eq!(two.upstream.calls("/cached/answer"), 0);
    assert_eq!(two.layer.cache().stats().l2_hits, 1);
}

/// With Redis and a backplane, an update on one replica invalidates what every replica stored
/// for the URI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_on_one_replica_invalidates_the_uri_on_every_replica() {
    use layercache::RedisCache;
    let redis = support::redis::RedisServer::start();
    let stack = || async {
        let l2 = RedisCache::<CachedResponse>::builder()
            .url(redis.url())
            .namespace("http-fleet")
            .command_timeout(Duration::from_secs(2))
            .build()
            .await
            .expect("redis");
        let backplane = l2.backplane().await.expect("backplane");
        l1().l2(l2).backplane(backplane)
    };
    let (one, two) = (serve(stack().await).await, serve(stack().await).await);
    let subscribed = Instant::now() + Duration::from_secs(10);
    for server in [&one, &two] {
        while !server
            .layer
            .cache()
            .backplane()
            .is_some_and(|b| b.is_subscribed())
        {
            assert!(Instant::now() < subscribed, "subscribed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let dave = [("authorization", "Bearer dave")];
    for server in [&one, &two] {
        server.get("/cached/shared-doc", &dave).await;
        let again = server.get("/cached/shared-doc", &dave).await;
        assert_eq!(again.x_cache.as_deref(), Some("hit"));
    }
    // The update returns once every replica has been told.
    assert_eq!(
        one.send(reqwest::Method::PUT, "/cached/shared-doc", &dave)
            .await,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = two.get("/cached/shared-doc", &dave).await;
        if reply.x_cache.as_deref() == Some("miss") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the other replica still answers from its cache"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
