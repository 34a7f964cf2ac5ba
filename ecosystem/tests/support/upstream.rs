//! The upstream the HTTP cache tests put `HttpCacheLayer` in front of: an axum app on loopback
//! whose routes answer with the headers each test needs (lifetimes, `Vary`, validators, event
//! streams, failures), counting the calls that reach it, and a reqwest client to call it with.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::Router;
use layercache::http::{CachedResponse, HttpCacheLayer};
use layercache::{Layered, LayeredBuilder, MemoryCache};

#[derive(Clone)]
pub struct Upstream {
    pub calls: Arc<Mutex<HashMap<String, u32>>>,
    pub failing: Arc<AtomicBool>,
    /// Requests that reached the server (counted in front of the cache).
    pub entered: Arc<AtomicU32>,
    /// Holds `/cached/big-gated` until the test adds permits.
    pub gate: Arc<tokio::sync::Semaphore>,
    /// Requests that reached the upstream with `If-None-Match`, `If-Modified-Since` or `Range`.
    pub conditional: Arc<AtomicU32>,
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
pub async fn count_entered(
    State(up): State<Upstream>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    up.entered.fetch_add(1, Ordering::SeqCst);
    next.run(request).await
}

impl Upstream {
    pub fn calls(&self, path: &str) -> u32 {
        self.calls
            .lock()
            .expect("lock")
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

/// One handler for every path; the path says how to answer.
pub async fn upstream(State(up): State<Upstream>, request: Request) -> Response {
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
pub fn validated(up: &Upstream, request: &Request, mut response: Response) -> Response {
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
pub struct Events(tokio::sync::mpsc::Receiver<Bytes>);

impl futures_core::Stream for Events {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|event| event.map(Ok))
    }
}

pub fn l1() -> LayeredBuilder<CachedResponse> {
    Layered::single(
        MemoryCache::builder()
            .max_bytes(16 << 20)
            .weigher(|r: &CachedResponse| r.body().len() + 256)
            .build()
            .expect("l1"),
    )
}

pub struct Server {
    pub base: String,
    pub upstream: Upstream,
    pub layer: HttpCacheLayer,
    pub client: reqwest::Client,
}

pub async fn serve(cache: LayeredBuilder<CachedResponse>) -> Server {
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
pub async fn serve_with(layer: HttpCacheLayer) -> Server {
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

pub async fn upstream_handler(state: State<Upstream>, request: Request) -> Response {
    upstream(state, request).await
}

pub struct Reply {
    pub status: u16,
    pub x_cache: Option<String>,
    pub etag: Option<String>,
    pub body: String,
}

impl Server {
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
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
    pub async fn send(&self, method: reqwest::Method, path: &str, headers: &[(&str, &str)]) -> u16 {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("request").status().as_u16()
    }

    /// `n` concurrent GETs of `path`: status, headers and body of each.
    pub async fn burst(
        &self,
        path: &str,
        n: usize,
    ) -> Vec<(u16, reqwest::header::HeaderMap, String)> {
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
