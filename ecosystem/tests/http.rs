//! The tower HTTP cache against a real axum server on loopback, called by a real HTTP client
//! (reqwest): stampede protection (1,000 concurrent identical requests), per-route lifetimes, `Vary`, what is never stored, body cap,
//! `x-cache`, fail-safe, and responses shared through a real Redis L2.

#![cfg(all(feature = "tower", feature = "msgpack"))]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::Router;
use layercache::http::{CachedResponse, HttpCacheLayer};
use layercache::{Error, Layered, LayeredBuilder, MemoryCache};

#[derive(Clone)]
struct Upstream {
    calls: Arc<Mutex<HashMap<String, u32>>>,
    failing: Arc<AtomicBool>,
    /// Requests that reached the server (counted in front of the cache).
    entered: Arc<AtomicU32>,
    /// Holds `/cached/big-gated` until the test adds permits.
    gate: Arc<tokio::sync::Semaphore>,
    /// Requests that reached the upstream with `If-None-Match`, `If-Modified-Since` or `Range`.
    conditional: Arc<AtomicU32>,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            calls: Arc::default(),
            failing: Arc::default(),
            entered: Arc::default(),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            conditional: Arc::default(),
        }
    }
}

/// Count every request that reaches the server, before the cache sees it.
async fn count_entered(
    State(up): State<Upstream>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    up.entered.fetch_add(1, Ordering::SeqCst);
    next.run(request).await
}

impl Upstream {
    fn calls(&self, path: &str) -> u32 {
        self.calls
            .lock()
            .expect("lock")
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

/// One handler for every path; the path says how to answer.
async fn upstream(State(up): State<Upstream>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let call = {
        let mut calls = up.calls.lock().expect("lock");
        let n = calls.entry(path.clone()).or_insert(0);
        *n += 1;
        *n
    };
    // Slow enough that concurrent requests overlap.
    tokio::time::sleep(Duration::from_millis(50)).await;
    if path == "/cached/big-gated" || path == "/cached/etag-gated" {
        let _held = up.gate.acquire().await.expect("gate");
    }
    let auth = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("nobody")
        .to_owned();
    let accept_encoding = request
        .headers()
        .get("accept-encoding")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut response = Response::new(Body::from(format!(
        "{{\"object\":\"chat.completion\",\"path\":\"{path}\",\"call\":{call},\"user\":\"{auth}\"}}"
    )));
    if path.starts_with("/cached/etag") {
        return validated(&up, &request, response);
    }
    if path == "/cached/tenant" {
        // A tenant per subdomain: the answer depends on the host asked.
        let host = request
            .headers()
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        *response.body_mut() = Body::from(format!("tenant {host}, call {call}"));
    }
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    match path.as_str() {
        "/cached/private" => {
            headers.insert(
                "cache-control",
                HeaderValue::from_static("private, max-age=60"),
            );
        }
        "/cached/no-store" => {
            headers.insert("cache-control", HeaderValue::from_static("no-store"));
        }
        "/cached/cookie" => {
            headers.insert("set-cookie", HeaderValue::from_static("session=abc"));
        }
        "/cached/session" => {
            let cookie = format!("session={call}");
            headers.insert(
                "set-cookie",
                HeaderValue::from_str(&cookie).expect("cookie"),
            );
        }
        "/cached/no-cache" => {
            headers.insert("cache-control", HeaderValue::from_static("no-cache"));
        }
        "/cached/aged" => {
            // It came from a cache in front of the upstream, 100 s after that cache fetched it.
            headers.insert("age", HeaderValue::from_static("100"));
        }
        "/cached/max-age-1" => {
            headers.insert(
                "cache-control",
                HeaderValue::from_static("public, max-age=1"),
            );
        }
        "/cached/s-maxage-1" => {
            // A shared cache goes by `s-maxage`: browsers may keep it 10 minutes, we 1 s.
            headers.insert(
                "cache-control",
                HeaderValue::from_static("max-age=600, s-maxage=1"),
            );
        }
        "/cached/max-age-0" => {
            headers.insert("cache-control", HeaderValue::from_static("max-age=0"));
        }
        "/cached/aged-out" => {
            // From a cache in front of the upstream that kept it its whole minute already.
            headers.insert("cache-control", HeaderValue::from_static("max-age=60"));
            headers.insert("age", HeaderValue::from_static("60"));
        }
        "/cached/max-age-bad" => {
            headers.insert("cache-control", HeaderValue::from_static("max-age=soon"));
        }
        "/cached/short/long-lived" => {
            headers.insert("cache-control", HeaderValue::from_static("max-age=3600"));
        }
        "/cached/vary-star" => {
            headers.insert("vary", HeaderValue::from_static("*"));
        }
        "/cached/encoded" => {
            // Compressed or not by the request's Accept-Encoding, as a compression layer does.
            headers.insert("vary", HeaderValue::from_static("Accept-Encoding"));
            if accept_encoding.contains("gzip") {
                headers.insert("content-encoding", HeaderValue::from_static("gzip"));
                *response.body_mut() = Body::from(format!("gzip:{call}"));
            } else {
                *response.body_mut() = Body::from(format!("plain:{call}"));
            }
        }
        "/cached/missing" => *response.status_mut() = StatusCode::NOT_FOUND,
        "/cached/created" => *response.status_mut() = StatusCode::CREATED,
        "/cached/big" | "/cached/big-gated" => *response.body_mut() = Body::from("x".repeat(4096)),
        "/cached/huge" => *response.body_mut() = Body::from(vec![b'y'; 10 << 20]),
        "/cached/events" => {
            // Server-sent events: the first one at once, the last once the gate opens.
            headers.insert(
                "content-type",
                HeaderValue::from_static("text/event-stream"),
            );
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let gate = Arc::clone(&up.gate);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"data: first\n\n")).await;
                let _held = gate.acquire().await.expect("gate");
                let _ = tx.send(Bytes::from_static(b"data: last\n\n")).await;
            });
            *response.body_mut() = Body::from_stream(Events(rx));
        }
        "/cached/down-session" => {
            // An error page that still hands out a session cookie.
            let cookie = format!("session={call}");
            headers.insert(
                "set-cookie",
                HeaderValue::from_str(&cookie).expect("cookie"),
            );
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        p if p.ends_with("/limited") && up.failing.load(Ordering::SeqCst) => {
            // A rate-limited LLM API.
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            *response.body_mut() = Body::from("rate limited");
        }
        p if p.ends_with("/flaky") && up.failing.load(Ordering::SeqCst) => {
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            *response.body_mut() = Body::from("down");
        }
        _ => {}
    }
    response
}

/// A response with validators (`ETag`, `Last-Modified`) from an upstream that honours
/// `If-None-Match` (a bodiless `304`) and `Range` (a `206` of the bytes asked for), as a static
/// file server or a CDN does.
fn validated(up: &Upstream, request: &Request, mut response: Response) -> Response {
    const ETAG: &str = "\"reply-v1\"";
    const LAST_MODIFIED: &str = "Sun, 29 Nov 2026 10:00:00 GMT";
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (if_none_match, range) = (header("if-none-match"), header("range"));
    if if_none_match.is_some() || range.is_some() || header("if-modified-since").is_some() {
        up.conditional.fetch_add(1, Ordering::SeqCst);
    }
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("etag", HeaderValue::from_static(ETAG));
    headers.insert("last-modified", HeaderValue::from_static(LAST_MODIFIED));
    headers.insert("cache-control", HeaderValue::from_static("max-age=60"));
    if if_none_match.is_some_and(|v| v.contains(ETAG)) {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        *response.body_mut() = Body::empty();
    } else if range.as_deref() == Some("bytes=0-4") {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        *response.body_mut() = Body::from("{\"obj");
    }
    response
}

/// A body that yields what a channel receives, as it arrives.
struct Events(tokio::sync::mpsc::Receiver<Bytes>);

impl futures_core::Stream for Events {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|event| event.map(Ok))
    }
}

fn l1() -> LayeredBuilder<CachedResponse> {
    Layered::single(
        MemoryCache::builder()
            .max_bytes(16 << 20)
            .weigher(|r: &CachedResponse| r.body().len() + 256)
            .build()
            .expect("l1"),
    )
}

struct Server {
    base: String,
    upstream: Upstream,
    layer: HttpCacheLayer,
    client: reqwest::Client,
}

async fn serve(cache: LayeredBuilder<CachedResponse>) -> Server {
    serve_with(
        HttpCacheLayer::builder(cache)
            .route("/cached", Duration::from_secs(60))
            .route("/cached/short", Duration::from_millis(300))
            .vary("authorization")
            .max_body_bytes(2048)
            .fail_safe(Duration::from_secs(600))
            .build()
            .expect("layer"),
    )
    .await
}

/// The upstream on loopback behind `layer`.
async fn serve_with(layer: HttpCacheLayer) -> Server {
    let upstream = Upstream::default();
    let app = Router::new()
        .fallback(upstream_handler)
        .with_state(upstream.clone())
        .layer(layer.clone())
        .layer(axum::middleware::from_fn_with_state(
            upstream.clone(),
            count_entered,
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        base,
        upstream,
        layer,
        client: reqwest::Client::new(),
    }
}

async fn upstream_handler(state: State<Upstream>, request: Request) -> Response {
    upstream(state, request).await
}

struct Reply {
    status: u16,
    x_cache: Option<String>,
    etag: Option<String>,
    body: String,
}

impl Server {
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.client.get(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request");
        Reply {
            status: response.status().as_u16(),
            x_cache: response
                .headers()
                .get("x-cache")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            etag: response
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: response.text().await.expect("body"),
        }
    }

    /// A request of `method` to `path`: its status.
    async fn send(&self, method: reqwest::Method, path: &str, headers: &[(&str, &str)]) -> u16 {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("request").status().as_u16()
    }

    /// `n` concurrent GETs of `path`: status, headers and body of each.
    async fn burst(&self, path: &str, n: usize) -> Vec<(u16, reqwest::header::HeaderMap, String)> {
        let requests: Vec<_> = (0..n)
            .map(|_| {
                let (client, url) = (self.client.clone(), format!("{}{path}", self.base));
                tokio::spawn(async move {
                    let r = client.get(url).send().await.expect("request");
                    let (status, headers) = (r.status().as_u16(), r.headers().clone());
                    (status, headers, r.text().await.expect("body"))
                })
            })
            .collect();
        let mut replies = Vec::with_capacity(n);
        for request in requests {
            replies.push(request.await.expect("task"));
        }
        replies
    }
}

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

/// A server-sent event stream on a cached route reaches its client event by event — never
/// buffered whole (an LLM's token stream would otherwise arrive at its end) — and is never
/// stored: the next request streams from the upstream again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_is_streamed_to_its_caller_and_never_stored() {
    let server = serve(l1()).await;
    let url = format!("{}/cached/events", server.base);
    // The headers and the first event arrive while the upstream still holds the last event
    // back: a layer that buffered the body would answer only once the stream ended.
    let mut response = tokio::time::timeout(Duration::from_secs(5), server.client.get(&url).send())
        .await
        .expect("the headers before the stream ends: not buffered")
        .expect("request");
    assert_eq!(response.headers()["x-cache"], "miss");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let first = tokio::time::timeout(Duration::from_secs(5), response.chunk())
        .await
        .expect("the first event before the stream ends: not buffered")
        .expect("chunk")
        .expect("an event");
    assert_eq!(&first[..], b"data: first\n\n");
    server.upstream.gate.add_permits(1);
    let rest = response.text().await.expect("rest");
    assert_eq!(rest, "data: last\n\n");

    server.upstream.gate.add_permits(1);
    let again = server.get("/cached/events", &[]).await;
    assert_eq!(again.body, "data: first\n\ndata: last\n\n");
    assert_eq!(again.x_cache.as_deref(), Some("miss"));
    assert_eq!(server.upstream.calls("/cached/events"), 2, "never stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revalidating_request_gets_304_and_never_hands_it_to_the_requests_that_waited() {
    let server = serve(l1()).await;
    let path = "/cached/etag-gated";
    // A browser revalidates what it holds while 10 new visitors ask for the same cold page;
    // the upstream call is held until all 11 requests have reached the server.
    let revalidate = server.get(path, &[("if-none-match", "\"reply-v1\"")]);
    let open_the_gate = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.upstream.entered.load(Ordering::SeqCst) < 11 {
            assert!(Instant::now() < deadline, "the requests never arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.upstream.gate.add_permits(1000);
    };
    let visitors = async {
        // The revalidation reaches the upstream first (it runs the load).
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.upstream.calls(path) < 1 {
            assert!(Instant::now() < deadline, "the first request never arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.burst(path, 10).await
    };
    let (revalidated, visitors, ()) = tokio::join!(revalidate, visitors, open_the_gate);
    assert_eq!(revalidated.status, 304, "the browser's copy is still good");
    assert!(revalidated.body.is_empty());
    assert_eq!(revalidated.etag.as_deref(), Some("\"reply-v1\""));
    for (status, headers, body) in &visitors {
        assert_eq!(*status, 200, "a visitor without a copy got {status}");
        assert!(body.contains("chat.completion"), "{body:?}");
        assert_eq!(headers.get("etag").expect("etag"), "\"reply-v1\"");
    }
    assert_eq!(server.upstream.calls(path), 1, "one upstream call, stored");
    assert_eq!(
        server.upstream.conditional.load(Ordering::SeqCst),
        0,
        "the upstream is asked for the whole response"
    );

    // From the cache: a matching validator (strong, weak, in a list, `*`) is a 304; another one
    // gets the whole response; If-None-Match outranks If-Modified-Since.
    let last_modified = "Sun, 29 Nov 2026 10:00:00 GMT";
    for (name, value, status) in [
        ("if-none-match", "\"reply-v1\"", 304),
        ("if-none-match", "W/\"reply-v1\"", 304),
        ("if-none-match", "\"old\", \"reply-v1\"", 304),
        ("if-none-match", "*", 304),
        ("if-none-match", "\"reply-v0\"", 200),
        ("if-modified-since", last_modified, 304),
        ("if-modified-since", "Sat, 28 Nov 2026 10:00:00 GMT", 200),
    ] {
        let r = server.get(path, &[(name, value)]).await;
        assert_eq!(
            (r.status, r.x_cache.as_deref()),
            (status, Some("hit")),
            "{name}: {value}"
        );
        assert_eq!(r.body.is_empty(), status == 304, "{name}: {value}");
        assert_eq!(r.etag.as_deref(), Some("\"reply-v1\""));
    }
    let both = server
        .get(
            path,
            &[
                ("if-none-match", "\"reply-v0\""),
                ("if-modified-since", last_modified),
            ],
        )
        .await;
    assert_eq!(both.status, 200);
    assert_eq!(server.upstream.calls(path), 1);

    // A range request on a cold route gets (and stores) the whole response, as a server that
    // ignores ranges answers; so does everyone after it.
    let ranged = server
        .get("/cached/etag-ranged", &[("range", "bytes=0-4")])
        .await;
    assert_eq!(
        (ranged.status, ranged.x_cache.as_deref()),
        (200, Some("miss"))
    );
    assert!(ranged.body.contains("chat.completion"));
    let plain = server.get("/cached/etag-ranged", &[]).await;
    assert_eq!((plain.status, plain.x_cache.as_deref()), (200, Some("hit")));
    assert_eq!(plain.body, ranged.body);
    assert_eq!(server.upstream.conditional.load(Ordering::SeqCst), 0);

    // A precondition the cache does not evaluate goes to the upstream as it is.
    let if_match = server.get(path, &[("if-match", "\"reply-v1\"")]).await;
    assert_eq!(
        (if_match.status, if_match.x_cache.as_deref()),
        (200, Some("bypass"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_host_gets_its_own_responses() {
    let server = serve(l1()).await;
    let port = server.base.rsplit(':').next().expect("port").to_owned();
    let (a, b) = (format!("a.example:{port}"), format!("b.example:{port}"));
    let first_a = server.get("/cached/tenant", &[("host", &a)]).await;
    let first_b = server.get("/cached/tenant", &[("host", &b)]).await;
    assert_eq!(first_a.body, format!("tenant {a}, call 1"));
    assert_eq!(
        first_b.body,
        format!("tenant {b}, call 2"),
        "b was served a's response"
    );
    // Each host's response is cached for that host (the host's case does not matter).
    let again_a = server
        .get("/cached/tenant", &[("host", &a.to_uppercase())])
        .await;
    let again_b = server.get("/cached/tenant", &[("host", &b)]).await;
    assert_eq!(
        (again_a.body.as_str(), again_a.x_cache.as_deref()),
        (first_a.body.as_str(), Some("hit"))
    );
    assert_eq!(
        (again_b.body, again_b.x_cache.as_deref()),
        (first_b.body, Some("hit"))
    );
    // The port is not part of the host: replicas listening on other ports share.
    let other_port = server
        .get("/cached/tenant", &[("host", "a.example:1")])
        .await;
    assert_eq!(other_port.body, first_a.body);
    assert_eq!(server.upstream.calls("/cached/tenant"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_request_is_answered_from_the_stored_get_response() {
    let server = serve(l1()).await;
    let head = |path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let mut request = server.client.head(format!("{}{path}", server.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        async move { request.send().await.expect("HEAD") }
    };
    // Nothing stored yet: forwarded (a HEAD's answer has no body to store).
    let cold = head("/cached/etag-head", &[]).await;
    assert_eq!(cold.status(), 200);
    assert_eq!(cold.headers()["x-cache"], "miss");
    assert_eq!(server.upstream.calls("/cached/etag-head"), 1);

    let got = server.get("/cached/etag-head", &[]).await;
    assert_eq!((got.status, got.x_cache.as_deref()), (200, Some("miss")));
    let hit = head("/cached/etag-head", &[]).await;
    assert_eq!(hit.status(), 200);
    assert_eq!(hit.headers()["x-cache"], "hit");
    assert_eq!(hit.headers()["etag"], "\"reply-v1\"");
    assert_eq!(hit.headers()["content-type"], "application/json");
    assert!(hit.headers().contains_key("age"));
    assert_eq!(
        hit.headers()["content-length"],
        got.body.len().to_string().as_str(),
        "the length of the GET's body"
    );
    assert!(hit.text().await.expect("body").is_empty());
    let revalidated = head("/cached/etag-head", &[("if-none-match", "\"reply-v1\"")]).await;
    assert_eq!(revalidated.status(), 304);
    assert_eq!(
        server.upstream.calls("/cached/etag-head"),
        2,
        "one HEAD forwarded, one GET; the rest from the cache"
    );
}
