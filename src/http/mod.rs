//! HTTP response caching for tower services (feature `tower`): axum, hyper, tonic's HTTP side.
//!
//! [`HttpCacheLayer`] puts a [`Layered`] cache in front of a service. Responses go through the
//! same `get_or_load` as everything else, so they get its stampede protection (concurrent
//! requests for one missing response make **one** upstream call), fail-safe (an upstream `5xx`,
//! `429 Too Many Requests` or error answered with the last good response, marked
//! `x-cache: stale`), timeouts, L2 and the fleet backplane.
//!
//! What is cached, and what never is:
//!
//! * only `GET` requests on a configured route ([`HttpCacheBuilder::route`]: a path prefix and
//!   its time to live) are cached; a `HEAD` there is answered from the fresh `GET` response
//!   stored for it (status, headers and its `Content-Length`, no body; a `304` when its
//!   validators match), and forwarded when there is none; everything else passes through
//!   untouched;
//! * a request with `Cache-Control: no-store` or `no-cache` bypasses the cache, and so does one
//!   carrying `Authorization` or `Cookie` unless the route varies on that header
//!   ([`HttpCacheBuilder::vary`]): a shared cache must never hand one user's response to another.
//!   Credentials in a header of your own (`x-api-key`, Azure OpenAI's `api-key`) are not known to
//!   the cache: name them with `vary`, so each key gets its own responses;
//! * a response is stored only when its status is cacheable (200, 203, 204, 300, 301, 308, 404,
//!   410), it has no `Cache-Control: no-store`, `no-cache` or `private`, it is not stale on
//!   arrival (`max-age=0`, an `Age` past its `max-age`, an invalid `max-age`), no `Set-Cookie`, no
//!   `Vary` naming a request header the route does not vary on (nor `Vary: *`: with
//!   `Accept-Encoding` varied upstream, a stored gzip body would reach clients that cannot read
//!   it), and its body is at most [`HttpCacheBuilder::max_body_bytes`] (1 MiB by default); other
//!   responses are forwarded as they are. One meant for a single client (`Set-Cookie`,
//!   `private`, `no-store`, `no-cache`, a foreign `Vary`) is not shared either: a request that
//!   waited on another's upstream call for it makes its own (each visitor gets its own
//!   `Set-Cookie`); one kept out only by its status or size answers every request that waited;
//! * a successful (`2xx`, `3xx`) unsafe request — `POST`, `PUT`, `PATCH`, `DELETE`, any method
//!   but `GET`, `HEAD`, `OPTIONS` and `TRACE` — on a cached route invalidates every response
//!   stored for its URI (host, path and query), whatever the varied headers (RFC 9111 §4.4):
//!   responses are tagged with their URI's bucket (one of 65,536, so that a replica keeps every
//!   tag time it needs; an update also expires about one in 65,536 of the other stored URIs),
//!   and the tag is invalidated, on every replica when the [`Layered`] has a backplane. Over an L2 without a backplane, tags cannot be invalidated:
//!   only the response stored for the request itself is deleted;
//! * a stored response is fresh for its route's lifetime, or for what its own `Cache-Control`
//!   allows a shared cache when that is shorter: `s-maxage`, else `max-age`, less the `Age` it
//!   arrived with ([`CachedResponse::fresh_for`]; `Expires` is not read);
//! * every answer from a cached route carries `x-cache: hit`, `miss` or `stale` (`bypass` when
//!   the request was not eligible), and one from the cache an `Age` (seconds since it was
//!   fetched, added to any `Age` the upstream sent), so that a browser or proxy further on
//!   counts its time here against the response's own `max-age`.
//!
//! Conditional and range requests share the cache too. A miss asks the upstream for the whole
//! response (`If-None-Match`, `If-Modified-Since`, `Range` and `If-Range` are taken off the
//! request it forwards), so a `304` or `206` meant for one request is never stored or handed to
//! the requests that waited on the same call. Each request is then answered from the stored
//! response: `304 Not Modified` (no body; `ETag`, `Cache-Control`, `Last-Modified` and the like
//! kept) when its `If-None-Match` holds the response's `ETag` (weak comparison, or `*`), or
//! when, without `If-None-Match`, its `If-Modified-Since` is the response's `Last-Modified`
//! byte for byte (as browsers send it back); otherwise the whole response, a `Range` request
//! included (a server may ignore a range). A request with `If-Match` or
//! `If-Unmodified-Since`, which the cache does not evaluate, bypasses it.
//!
//! A response is keyed on the host it was asked of (the URI's authority, else the `Host`
//! header; its name, not its port), the path and query, and the varied headers: a service that answers several hosts
//! (a tenant per subdomain) never hands one host's response to another (behind a proxy that
//! rewrites `Host` and passes the original on, vary on that header: `x-forwarded-host`). Keys
//! are private ([`KeyBuilder::request`](crate::KeyBuilder::request)): the method stays
//! readable, the host, path, query and varied header values (an `Authorization` token) are
//! hashed.
//!
//! A server-sent event stream (`Content-Type: text/event-stream`: an LLM's token stream) is
//! handed to the request that fetched it as it comes, never buffered, stored or shared (the
//! requests that waited on it make their own calls), marked `x-cache: miss`. Other bodies are
//! buffered whole on a cached route, those over the size limit too (they are shared with the
//! requests that waited, just not stored): keep large downloads off the routes. An error of the inner service, which cannot be shared between the callers that
//! waited on it, is answered with `502 Bad Gateway`; a hard timeout with `504 Gateway Timeout`.
//!
//! ```
//! # #[cfg(feature = "msgpack")] {
//! use std::time::Duration;
//! use layercache::http::{CachedResponse, HttpCacheLayer};
//! use layercache::{Layered, MemoryCache};
//!
//! # fn main() -> layercache::Result<()> {
//! let l1 = MemoryCache::<CachedResponse>::builder()
//!     .max_bytes(64 << 20)
//!     .weigher(|response: &CachedResponse| response.body().len() + 256)
//!     .build()?;
//! let layer = HttpCacheLayer::builder(Layered::single(l1))
//!     .route("/v1/models", Duration::from_secs(300))
//!     .route("/v1/answers", Duration::from_secs(60))
//!     .vary("authorization")
//!     .fail_safe(Duration::from_secs(3600))
//!     .build()?;
//! // axum: Router::new().route(...).layer(layer)
//! # let _ = layer; Ok(()) }
//! # main().unwrap(); }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use ::http::header::{HeaderName, HeaderValue, AGE, AUTHORIZATION, CACHE_CONTROL, COOKIE, HOST};
use ::http::{Method, Request, Response, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;

use crate::entry::Entry;
use crate::error::{BoxError, Error, Result};
use crate::layered::{Layered, LayeredBuilder};
use crate::load::LoadOptions;

mod body;
mod conditional;
mod response;

pub use self::body::HttpCacheBody;
use self::conditional::Condition;
pub use self::response::CachedResponse;

/// Default largest body stored: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// The response header that says how a request was answered.
pub const X_CACHE: &str = "x-cache";

/// Builds an [`HttpCacheLayer`].
#[must_use]
pub struct HttpCacheBuilder {
    cache: LayeredBuilder<CachedResponse>,
    routes: Vec<(String, Duration)>,
    vary: Vec<HeaderName>,
    max_body_bytes: usize,
    fail_safe: Option<Duration>,
    options: LoadOptions,
    bad_header: Option<String>,
}

impl std::fmt::Debug for HttpCacheBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCacheBuilder")
            .field("routes", &self.routes)
            .field("vary", &self.vary)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("fail_safe", &self.fail_safe)
            .finish_non_exhaustive()
    }
}

impl HttpCacheBuilder {
    /// Cache `GET` responses of paths starting with `prefix` for `ttl` (the longest matching
    /// prefix wins). Paths under no route pass through.
    pub fn route(mut self, prefix: impl Into<String>, ttl: Duration) -> Self {
        self.routes.push((prefix.into(), ttl));
        self
    }

    /// Keep a separate response per value of request header `name` (for example
    /// `authorization`, `accept-language`). A request without the header is its own variant.
    /// Only responses whose own `Vary` names nothing but headers given here are stored: vary on
    /// `accept-encoding` to cache an upstream that compresses by it (a `tracing` warning, once
    /// per process, names the first header that kept a response out).
    pub fn vary(mut self, name: &str) -> Self {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => self.vary.push(name),
            Err(_) => self.bad_header = Some(name.to_owned()),
        }
        self
    }

    /// Store bodies of at most `bytes` (default [`DEFAULT_MAX_BODY_BYTES`]); larger responses are
    /// forwarded (buffered whole, and shared with the requests that waited on them), not
    /// stored.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Keep responses `max_stale` past their lifetime and serve them (`x-cache: stale`) when the
    /// upstream answers `5xx` or `429 Too Many Requests` (a rate-limited LLM API), fails or times
    /// out. After such a failure the stale response answers for the fail-safe throttle (30 s by
    /// default, [`LoadOptions::with_fail_safe_throttle`]) before the upstream is asked again.
    pub fn fail_safe(mut self, max_stale: Duration) -> Self {
        self.fail_safe = Some(max_stale);
        self
    }

    /// Further load options (soft and hard timeouts, early refresh, jitter); the route's time
    /// to live and [`fail_safe`](Self::fail_safe) are set on top of them.
    pub fn load_options(mut self, options: LoadOptions) -> Self {
        self.options = options;
        self
    }

    /// Build the layer (and its cache, which refuses responses that must not be stored).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for no route, a route prefix that does not start with `/` or is given
    /// twice, a zero time to live, a header name that is not one, a zero body limit, or load
    /// options that do not fit together.
    pub fn build(self) -> Result<HttpCacheLayer> {
        if let Some(name) = self.bad_header {
            return Err(Error::config(format!("`{name}` is not a header name")));
        }
        if self.routes.is_empty() {
            return Err(Error::config("give at least one route to cache"));
        }
        if let Some((prefix, _)) = self.routes.iter().find(|(p, _)| !p.starts_with('/')) {
            return Err(Error::config(format!(
                "route `{prefix}` must start with `/`: request paths do, so it would match none"
            )));
        }
        for (i, (prefix, _)) in self.routes.iter().enumerate() {
            if self.routes[..i].iter().any(|(p, _)| p == prefix) {
                return Err(Error::config(format!("route `{prefix}` is given twice")));
            }
        }
        if self.routes.iter().any(|(_, ttl)| ttl.is_zero()) {
            return Err(Error::config(
                "a route's time to live must be greater than zero",
            ));
        }
        if self.max_body_bytes == 0 {
            return Err(Error::config("max_body_bytes must be at least 1"));
        }
        let mut routes = self.routes;
        // Longest prefix first, so the first match is the most specific.
        routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        let mut options = self.options;
        if let Some(max_stale) = self.fail_safe {
            options = options.with_fail_safe(max_stale);
        }
        options
            .clone()
            .with_ttl(Duration::from_secs(1))
            .validate()?;
        let cache = self
            .cache
            .admit(CachedResponse::is_storable)
            .fresh_for(CachedResponse::fresh_for)
            .build()?;
        Ok(HttpCacheLayer {
            shared: Arc::new(Shared {
                cache,
                routes,
                vary: self.vary,
                max_body_bytes: self.max_body_bytes,
                options,
            }),
        })
    }
}

struct Shared {
    cache: Layered<CachedResponse>,
    routes: Vec<(String, Duration)>,
    vary: Vec<HeaderName>,
    max_body_bytes: usize,
    options: LoadOptions,
}

/// A tower [`Layer`](tower_layer::Layer) that caches HTTP responses; see the
/// [module docs](self). Cloning is cheap; every clone shares one cache.
#[derive(Clone)]
pub struct HttpCacheLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for HttpCacheLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCacheLayer")
            .field("routes", &self.shared.routes)
            .field("vary", &self.shared.vary)
            .finish_non_exhaustive()
    }
}

impl HttpCacheLayer {
    /// A builder over `cache` (memory only, or with a Redis L2 and a backplane: a fleet of
    /// servers then shares responses and invalidations).
    pub fn builder(cache: LayeredBuilder<CachedResponse>) -> HttpCacheBuilder {
        HttpCacheBuilder {
            cache,
            routes: Vec::new(),
            vary: Vec::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            fail_safe: None,
            options: LoadOptions::default(),
            bad_header: None,
        }
    }

    /// The cache behind the layer: its stats, `clear()`, `invalidate_prefix("http:v1:GET")`.
    pub fn cache(&self) -> &Layered<CachedResponse> {
        &self.shared.cache
    }
}

impl<S> tower_layer::Layer<S> for HttpCacheLayer {
    type Service = HttpCache<S>;

    fn layer(&self, inner: S) -> HttpCache<S> {
        HttpCache {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service [`HttpCacheLayer`] wraps around an inner service.
#[derive(Clone)]
pub struct HttpCache<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for HttpCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCache").finish_non_exhaustive()
    }
}

/// What to do with a request.
enum Plan {
    /// Not on a cached route: untouched.
    Untouched,
    /// On a cached route but not eligible: forwarded, marked `bypass`.
    Bypass,
    /// Cached under `key` for `ttl`; answered `304` when `condition` (the request's
    /// validators) matches the response.
    Cache {
        key: String,
        ttl: Duration,
        condition: Option<Condition>,
        /// The tag of every response stored for the request's URI.
        tag: String,
    },
    /// An unsafe request (`POST`, `PUT`, `PATCH`, `DELETE`…) on a cached route: forwarded, and
    /// once it succeeded every response stored for its URI is invalidated (RFC 9111 §4.4), by
    /// `tag`, or, where tags cannot be invalidated, the one stored under `key`.
    Invalidate { tag: String, key: String },
    /// A `HEAD` on a cached route: answered from the `GET` response stored under `key` when
    /// there is a fresh one, else forwarded (its answer has no body to store).
    Head {
        key: String,
        condition: Option<Condition>,
    },
}

impl Shared {
    fn plan<B>(&self, request: &Request<B>) -> Plan {
        let method = request.method();
        let head = method == Method::HEAD;
        let unsafe_method = !matches!(
            *method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        if method != Method::GET && !head && !unsafe_method {
            return Plan::Untouched;
        }
        let path = request.uri().path();
        let Some((_, ttl)) = self
            .routes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix))
        else {
            return Plan::Untouched;
        };
        let headers = request.headers();
        if unsafe_method {
            let (tag, key) = self.tag_and_key(request);
            return Plan::Invalidate { tag, key };
        }
        let no_store = headers.get_all(CACHE_CONTROL).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .map(|d| d.trim().to_ascii_lowercase())
                    .any(|d| d == "no-store" || d == "no-cache")
            })
        });
        let personal = [AUTHORIZATION, COOKIE]
            .iter()
            .any(|h| headers.contains_key(h) && !self.vary.contains(h));
        if no_store || personal || Condition::is_unsupported(headers) {
            return Plan::Bypass;
        }
        let (tag, key) = self.tag_and_key(request);
        let condition = Condition::of(headers);
        if head {
            return Plan::Head { key, condition };
        }
        Plan::Cache {
            key,
            ttl: *ttl,
            condition,
            tag,
        }
    }

    /// The tag of every response stored for the request's URI (its host and path with query,
    /// whatever the varied headers), and the key of the `GET` response for this request.
    fn tag_and_key<B>(&self, request: &Request<B>) -> (String, String) {
        let headers = request.headers();
        let path = request.uri().path();
        // The host: a service answering several (a tenant per subdomain) keeps them apart.
        let host = request
            .uri()
            .authority()
            .map(|a| a.as_str().as_bytes())
            .or_else(|| headers.get(HOST).map(HeaderValue::as_bytes))
            .map(without_port);
        let target = request
            .uri()
            .path_and_query()
            .map_or(path, |pq| pq.as_str());
        let host = host.map(<[u8]>::to_ascii_lowercase);
        let with_host = |key: crate::KeyBuilder| match &host {
            Some(host) => key.part_bytes(host),
            None => key.part_opt(None::<&str>),
        };
        let tag = uri_bucket(host.as_deref(), target);
        let mut key = with_host(
            crate::KeyBuilder::request("http")
                .version(1)
                // A `HEAD` is answered from the `GET` response.
                .label(Method::GET.as_str())
                .part(target),
        );
        for name in &self.vary {
            let values: Vec<&[u8]> = headers
                .get_all(name)
                .iter()
                .map(HeaderValue::as_bytes)
                .collect();
            key = key.part(name.as_str());
            key = if values.is_empty() {
                key.part_opt(None::<&str>)
            } else {
                key.part_bytes(&values.join(&b"\n"[..]))
            };
        }
        (tag, key.build().as_str().to_owned())
    }
}

/// The tag of the responses stored for a URI (its host, lower-cased and without its port, and
/// its path and query): one of 65,536 buckets, by BLAKE3, so that no URI shows in tag names.
/// Buckets, not a tag per URI: a fleet replica keeps the invalidation times of at most 100,000
/// tags before reading them from Redis again, and one tag per URI would turn the hits of a
/// large URI space into Redis reads. An update invalidates its URI's bucket: about one in
/// 65,536 of the other stored URIs with it.
fn uri_bucket(host: Option<&[u8]>, target: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    match host {
        Some(host) => {
            hasher.update(&(host.len() as u64).to_le_bytes());
            hasher.update(host);
        }
        None => {
            hasher.update(&u64::MAX.to_le_bytes());
        }
    }
    hasher.update(target.as_bytes());
    let digest = hasher.finalize();
    let bytes = digest.as_bytes();
    let bucket = u16::from_le_bytes([bytes[0], bytes[1]]);
    format!("http-uri:v1:{bucket:04x}")
}

/// A host as a key holds it: without its port (replicas listening on different ports share
/// their responses; `[::1]:8080` keeps its brackets).
fn without_port(authority: &[u8]) -> &[u8] {
    let name_end = match authority.first() {
        Some(b'[') => authority.iter().position(|&b| b == b']').map(|i| i + 1),
        _ => authority.iter().rposition(|&b| b == b':'),
    };
    match name_end.map(|end| (end, &authority[end..])) {
        Some((end, [b':', port @ ..])) if port.iter().all(u8::is_ascii_digit) => &authority[..end],
        _ => authority,
    }
}

/// Whether a response is a server-sent event stream (`Content-Type: text/event-stream`).
fn is_event_stream(headers: &::http::HeaderMap) -> bool {
    headers
        .get(::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// An upstream `5xx` or `429`, carried through the shared load error so every waiter answers with it
/// (or fail-safe answers with the stale response).
#[derive(Debug)]
struct UpstreamFailed(CachedResponse);

impl std::fmt::Display for UpstreamFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upstream answered {}", self.0.status())
    }
}

impl std::error::Error for UpstreamFailed {}

type ResponseFuture<B, E> =
    Pin<Box<dyn Future<Output = std::result::Result<Response<HttpCacheBody<B>>, E>> + Send>>;

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for HttpCache<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    ReqBody: Send + 'static,
    ResBody: http_body::Body + Send + 'static,
    ResBody::Data: Send,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<HttpCacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The service that was polled ready serves this call; a fresh clone stays for the next.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let shared = Arc::clone(&self.shared);
        match shared.plan(&request) {
            Plan::Untouched => Box::pin(async move {
                let response = inner.call(request).await?;
                Ok(response.map(HttpCacheBody::inner))
            }),
            Plan::Head { key, condition } => Box::pin(async move {
                let stored = crate::cache::Cache::get(&shared.cache, &key)
                    .await
                    .ok()
                    .flatten()
                    .filter(Entry::is_fresh);
                let Some(stored) = stored else {
                    let mut response = inner.call(request).await?.map(HttpCacheBody::inner);
                    response
                        .headers_mut()
                        .insert(X_CACHE, HeaderValue::from_static("miss"));
                    return Ok(response);
                };
                let mut response = match &condition {
                    Some(condition) if condition.is_met_by(stored.value()) => {
                        stored.value().to_not_modified("hit")
                    }
                    _ => stored.value().to_head("hit"),
                };
                let age = SystemTime::now()
                    .duration_since(stored.created_at())
                    .unwrap_or_default();
                set_age(&mut response, age);
                Ok(response)
            }),
            Plan::Bypass => Box::pin(async move {
                let mut response = inner.call(request).await?.map(HttpCacheBody::inner);
                response
                    .headers_mut()
                    .insert(X_CACHE, HeaderValue::from_static("bypass"));
                Ok(response)
            }),
            Plan::Invalidate { tag, key } => Box::pin(async move {
                let response = inner.call(request).await?;
                let status = response.status();
                if status.is_success() || status.is_redirection() {
                    // The resource changed: no replica may answer from what it stored for it.
                    // (Without a backplane over an L2, tags cannot be invalidated: the response
                    // stored for this request goes, others run out their lifetime.)
                    if shared.cache.invalidate_tag(&tag).await.is_err() {
                        let _ = crate::cache::Cache::delete(&shared.cache, &key).await;
                    }
                }
                Ok(response.map(HttpCacheBody::inner))
            }),
            Plan::Cache {
                key,
                ttl,
                condition,
                tag,
            } => Box::pin(async move {
                // The service and the request go to the loader if this caller runs the load, and
                // stay here if it joins another caller's load.
                let mine = Arc::new(std::sync::Mutex::new(Some((inner, request))));
                let slot = Arc::clone(&mine);
                // An event stream is handed to the caller whose load fetched it, unbuffered.
                let streamed: Arc<std::sync::Mutex<Option<Response<HttpCacheBody<ResBody>>>>> =
                    Arc::default();
                let stream_slot = Arc::clone(&streamed);
                let loader_shared = Arc::clone(&shared);
                let loader = move || async move {
                    let taken = slot.lock().ok().and_then(|mut taken| taken.take());
                    let Some((mut inner, mut request)) = taken else {
                        return Err::<CachedResponse, BoxError>("the request was taken".into());
                    };
                    // The whole response, to store and share: not a 304 or 206 for this
                    // request alone (its validators are checked against it below).
                    Condition::strip(request.headers_mut());
                    let response = inner.call(request).await.map_err(Into::into)?;
                    let (parts, body) = response.into_parts();
                    if is_event_stream(&parts.headers) {
                        let marker = CachedResponse::unshared(&parts);
                        let response = Response::from_parts(parts, HttpCacheBody::inner(body));
                        if let Ok(mut stream_slot) = stream_slot.lock() {
                            *stream_slot = Some(response);
                        }
                        return Ok(marker);
                    }
                    let body = body.collect().await.map_err(Into::into)?.to_bytes();
                    let cached = CachedResponse::from_parts(
                        &parts,
                        body,
                        loader_shared.max_body_bytes,
                        &loader_shared.vary,
                    );
                    // A failure of the upstream, not an answer: fail-safe serves the last good
                    // response instead (a rate limit above all is worth riding out).
                    if parts.status.is_server_error()
                        || parts.status == StatusCode::TOO_MANY_REQUESTS
                    {
                        Err(Box::new(UpstreamFailed(cached)))
                    } else {
                        Ok(cached)
                    }
                };
                let mut tags: Vec<String> = shared
                    .options
                    .tags()
                    .as_slice()
                    .iter()
                    .map(|t| t.to_string())
                    .collect();
                tags.push(tag);
                let options = shared.options.clone().with_ttl(ttl).with_tags(tags);
                let answered = shared.cache.get_or_load_answer(&key, loader, options).await;
                let stream = streamed.lock().ok().and_then(|mut stream| stream.take());
                if let Some(mut response) = stream {
                    response
                        .headers_mut()
                        .insert(X_CACHE, HeaderValue::from_static("miss"));
                    return Ok(response);
                }
                // A response meant for one client (a `Set-Cookie`, `private`, a `Vary` the key
                // does not hold), a failed one included, is not handed to another request: one
                // that waited on it (its request is still here) asks the upstream itself.
                let personal = match &answered {
                    Ok(answer) => !answer.value.is_shareable(),
                    Err(Error::Loader(shared_error)) => shared_error
                        .downcast_ref::<UpstreamFailed>()
                        .is_some_and(|UpstreamFailed(failed)| !failed.is_shareable()),
                    Err(_) => false,
                };
                if personal {
                    let own = mine.lock().ok().and_then(|mut own| own.take());
                    if let Some((mut inner, request)) = own {
                        let mut response = inner.call(request).await?.map(HttpCacheBody::inner);
                        response
                            .headers_mut()
                            .insert(X_CACHE, HeaderValue::from_static("miss"));
                        return Ok(response);
                    }
                }
                Ok(match answered {
                    Ok(answer) => {
                        let x_cache = answer.source.as_header_value();
                        let mut response = match &condition {
                            Some(condition)
                                if answer.value.is_shareable()
                                    && condition.is_met_by(&answer.value) =>
                            {
                                answer.value.to_not_modified(x_cache)
                            }
                            _ => answer.value.to_response(x_cache),
                        };
                        if !matches!(
                            answer.source,
                            crate::Source::Loaded | crate::Source::Negative
                        ) {
                            set_age(&mut response, answer.age());
                        }
                        response
                    }
                    Err(Error::Loader(shared_error)) => {
                        match shared_error.downcast_ref::<UpstreamFailed>() {
                            Some(UpstreamFailed(failed)) => failed.to_response("miss"),
                            None => status_response(StatusCode::BAD_GATEWAY),
                        }
                    }
                    Err(Error::Timeout { .. }) => status_response(StatusCode::GATEWAY_TIMEOUT),
                    Err(_) => status_response(StatusCode::BAD_GATEWAY),
                })
            }),
        }
    }
}

/// Say how long a response from the cache has been there (`Age`, RFC 9111 §5.1): a client or
/// proxy further on counts it against the response's own `max-age`. An `Age` the upstream sent
/// (it had the response from a cache of its own) is added to.
fn set_age<B>(response: &mut Response<B>, resident: Duration) {
    let upstream = response
        .headers()
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let age = upstream.saturating_add(resident.as_secs());
    response.headers_mut().insert(AGE, HeaderValue::from(age));
}

/// An empty response with `status`, marked `x-cache: miss`.
fn status_response<B>(status: StatusCode) -> Response<HttpCacheBody<B>> {
    let mut response = Response::new(HttpCacheBody::full(Bytes::new()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(X_CACHE, HeaderValue::from_static("miss"));
    response
}

#[cfg(test)]
mod tests {
    use super::{uri_bucket, without_port};

    #[test]
    fn a_uri_bucket_is_stable_and_keeps_no_uri() {
        let doc = uri_bucket(Some(b"a.example"), "/v1/doc?id=7");
        assert_eq!(doc, uri_bucket(Some(b"a.example"), "/v1/doc?id=7"));
        assert!(doc.starts_with("http-uri:v1:") && doc.len() == "http-uri:v1:".len() + 4);
        assert!(!doc.contains("doc"));
        // 1,000 URIs spread over the buckets (a bucket per URI, but for a rare collision).
        let buckets: std::collections::HashSet<String> = (0..1000)
            .map(|i| uri_bucket(Some(b"a.example"), &format!("/v1/doc?id={i}")))
            .collect();
        assert!(buckets.len() > 980, "{}", buckets.len());
        assert_ne!(
            uri_bucket(Some(b"ab"), "c"),
            uri_bucket(Some(b"a"), "bc"),
            "the host is delimited"
        );
    }

    #[test]
    fn a_host_is_keyed_without_its_port() {
        let cases: [(&str, &str); 7] = [
            ("a.example:8080", "a.example"),
            ("a.example", "a.example"),
            ("a.example:", "a.example"),
            ("[::1]:8080", "[::1]"),
            ("[::1]", "[::1]"),
            ("a.example:http", "a.example:http"),
            ("", ""),
        ];
        for (authority, host) in cases {
            assert_eq!(
                without_port(authority.as_bytes()),
                host.as_bytes(),
                "{authority}"
            );
        }
    }
}
