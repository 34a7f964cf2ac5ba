//! The stored form of an HTTP response.

use ::http::header::{
    HeaderName, HeaderValue, AGE, CACHE_CONTROL, CONTENT_LENGTH, SET_COOKIE, VARY,
};
use ::http::response::Parts;
use ::http::{Response, StatusCode};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{HttpCacheBody, X_CACHE};

/// Statuses a response may be stored with (cacheable by default in RFC 9111, less 206 and 405,
/// 414 and 501, which a per-route cache has no use for).
const STORABLE: [u16; 8] = [200, 203, 204, 300, 301, 308, 404, 410];

/// Headers never stored: hop-by-hop ones, and those the cache sets itself.
const NOT_STORED: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    X_CACHE,
];

/// The stored headers a `304 Not Modified` repeats (RFC 9110 §15.4.5), plus `Last-Modified` and
/// an upstream's `Age`.
const NOT_MODIFIED_KEEPS: [&str; 8] = [
    "cache-control",
    "content-location",
    "date",
    "etag",
    "expires",
    "vary",
    "last-modified",
    "age",
];

/// The directives of comma-separated header values, trimmed and lower-cased.
fn directives<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    values
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .collect()
}

/// A delta-seconds value (RFC 9111 §1.2.2): digits, saturating when too large; `None` if not
/// digits.
fn seconds(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// How many more seconds a shared cache may use a response: `s-maxage`, else `max-age` (an
/// invalid value counts as 0: RFC 9111 §4.2.1 treats the response as stale), less `age`.
fn fresh_secs(cache_control: &[String], age: Option<u64>) -> Option<u64> {
    let directive = |name: &str| {
        cache_control.iter().find_map(|d| {
            let value = d.strip_prefix(name)?.trim_start().strip_prefix('=')?;
            Some(seconds(value.trim().trim_matches('"').as_bytes()).unwrap_or(0))
        })
    };
    let max_age = directive("s-maxage").or_else(|| directive("max-age"))?;
    Some(max_age.saturating_sub(age.unwrap_or(0)))
}

/// An HTTP response as the cache keeps it: status, end-to-end headers and the whole body.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedResponse {
    status: u16,
    headers: Vec<(String, ByteBuf)>,
    body: ByteBuf,
    /// Whether it may be stored (see [`CachedResponse::is_storable`]).
    storable: bool,
    /// Whether it may answer other requests that waited on the same upstream call: not when it
    /// is meant for one client. A stored response always may, so this is not stored.
    #[serde(skip, default = "shareable_when_read")]
    shareable: bool,
}

/// A response read back was stored, so it may be shared.
fn shareable_when_read() -> bool {
    true
}

impl std::fmt::Debug for CachedResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedResponse")
            .field("status", &self.status)
            .field("headers", &self.headers.len())
            .field("body_bytes", &self.body.0.len())
            .field("storable", &self.storable)
            .field("shareable", &self.shareable)
            .finish()
    }
}

impl CachedResponse {
    /// The stored form of a response. `varied` are the request headers the route keys on: a
    /// response whose `Vary` names any other header (or `*`) depends on something the key does
    /// not hold, and is not storable.
    pub(crate) fn from_parts(
        parts: &Parts,
        body: Bytes,
        max_body: usize,
        varied: &[HeaderName],
    ) -> Self {
        let directives = |name: &HeaderName| -> Vec<String> {
            directives(
                parts
                    .headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok()),
            )
        };
        let cache_control = directives(&CACHE_CONTROL);
        // `no-cache` (with or without field names): reuse needs a revalidation this cache
        // does not do.
        let forbidden = |d: &String| {
            ["no-store", "no-cache", "private"]
                .iter()
                .any(|f| d == f || d.strip_prefix(f).is_some_and(|rest| rest.starts_with('=')))
        };
        let varies_elsewhere = directives(&VARY)
            .into_iter()
            .filter(|name| !name.is_empty())
            .find(|name| name == "*" || !varied.iter().any(|v| v.as_str() == name));
        if let Some(name) = &varies_elsewhere {
            report_foreign_vary(name);
        }
        // Meant for one client: neither stored nor handed to another request. (A status not
        // stored, or a body over the limit, concerns the cache only: requests that waited on
        // the same call still share it.)
        let personal = cache_control.iter().any(forbidden)
            || varies_elsewhere.is_some()
            || parts.headers.contains_key(SET_COOKIE);
        // Stale on arrival (`max-age=0`, or an `Age` past it): a shared cache may not reuse it
        // without a revalidation (RFC 9111 §4.2), which this one does not do.
        let age = parts.headers.get(AGE).and_then(|v| seconds(v.as_bytes()));
        let stale = fresh_secs(&cache_control, age) == Some(0);
        let storable = !personal
            && !stale
            && STORABLE.contains(&parts.status.as_u16())
            && body.len() <= max_body;
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| !NOT_STORED.contains(&name.as_str()))
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    ByteBuf(Bytes::copy_from_slice(value.as_bytes())),
                )
            })
            .collect();
        CachedResponse {
            status: parts.status.as_u16(),
            headers,
            body: ByteBuf(body),
            storable,
            shareable: !personal,
        }
    }

    /// The stand-in for a response that went to its caller unbuffered (an event stream): neither
    /// stored nor shared, so every request that waited on it makes its own call.
    pub(crate) fn unshared(parts: &Parts) -> Self {
        CachedResponse {
            status: parts.status.as_u16(),
            headers: Vec::new(),
            body: ByteBuf(Bytes::new()),
            storable: false,
            shareable: false,
        }
    }

    /// How long the response says a shared cache may use it (RFC 9111 §4.2.1): its
    /// `s-maxage`, else its `max-age`, less the `Age` it arrived with; `None` when it says
    /// nothing (`Expires` is not read). The cache keeps a response fresh for the shorter of this
    /// and its route's lifetime.
    pub fn fresh_for(&self) -> Option<std::time::Duration> {
        let cache_control = directives(
            self.headers
                .iter()
                .filter(|(name, _)| name == "cache-control")
                .filter_map(|(_, value)| std::str::from_utf8(&value.0).ok()),
        );
        let age = self.header("age").and_then(seconds);
        fresh_secs(&cache_control, age).map(std::time::Duration::from_secs)
    }

    /// Whether the response may be stored: a cacheable status, no `Cache-Control: no-store`,
    /// `no-cache` or `private`, no `Vary` on a request header the route does not vary on (nor
    /// `Vary: *`), no `Set-Cookie`, a body within the limit.
    pub fn is_storable(&self) -> bool {
        self.storable
    }

    /// Whether requests that waited on the upstream call for this response may be answered with
    /// it. Not when it is meant for one client (`Set-Cookie`, `Cache-Control: private`,
    /// `no-store` or `no-cache`, a `Vary` the key does not hold): each of them then makes its own
    /// call. A response kept out of the cache only by its status or its size is shared.
    pub fn is_shareable(&self) -> bool {
        self.shareable
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body.0
    }

    /// The first stored value of header `name` (lower case).
    pub(crate) fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(stored, _)| stored == name)
            .map(|(_, value)| &value.0[..])
    }

    /// `304 Not Modified` for a request whose validators match this response: no body, and of
    /// the stored headers those a `304` carries (RFC 9110 §15.4.5), with `x-cache: <x_cache>`.
    pub(crate) fn to_not_modified<B>(&self, x_cache: &'static str) -> Response<HttpCacheBody<B>> {
        self.build(StatusCode::NOT_MODIFIED, Bytes::new(), x_cache, |name| {
            NOT_MODIFIED_KEEPS.contains(&name)
        })
    }

    /// The answer to a `HEAD`: this response's status and headers (`Content-Length` included),
    /// no body, with `x-cache: <x_cache>`.
    pub(crate) fn to_head<B>(&self, x_cache: &'static str) -> Response<HttpCacheBody<B>> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let mut response = self.build(status, Bytes::new(), x_cache, |_| true);
        // The length the `GET` sends (the server computed it there, so it is seldom stored).
        response
            .headers_mut()
            .entry(CONTENT_LENGTH)
            .or_insert_with(|| HeaderValue::from(self.body.0.len()));
        response
    }

    /// The response to send, with `x-cache: <x_cache>`.
    pub(crate) fn to_response<B>(&self, x_cache: &'static str) -> Response<HttpCacheBody<B>> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        self.build(status, self.body.0.clone(), x_cache, |_| true)
    }

    /// A response with `status` and `body`, the stored headers `keep` accepts, and `x-cache`.
    fn build<B>(
        &self,
        status: StatusCode,
        body: Bytes,
        x_cache: &'static str,
        keep: impl Fn(&str) -> bool,
    ) -> Response<HttpCacheBody<B>> {
        let mut response = Response::new(HttpCacheBody::full(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        for (name, value) in self.headers.iter().filter(|(name, _)| keep(name)) {
            // Stored by this type from valid headers; anything else (a frame from elsewhere) is
            // dropped rather than trusted.
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(&value.0),
            ) {
                headers.append(name, value);
            }
        }
        headers.insert(X_CACHE, HeaderValue::from_static(x_cache));
        response
    }
}

/// Say once per process that responses are not stored because they vary on `name`: a CORS or
/// compression layer inside the cache makes every response do so, and the cache then stores
/// nothing, which `x-cache: miss` alone does not explain.
#[cold]
fn report_foreign_vary(name: &str) {
    static REPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !REPORTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        crate::log_warn!(
            vary = name,
            "layercache: a response with `Vary: {name}` is not stored (the route does not vary on it): vary the route on it with HttpCacheBuilder::vary, or put the layer that adds it outside the cache (reported once)"
        );
    }
    #[cfg(not(feature = "tracing"))]
    let _ = name;
}

/// Bytes serialized as one byte string (not a sequence of numbers); shared, not copied, when a
/// response is cloned or sent.
#[derive(Clone, PartialEq, Eq)]
struct ByteBuf(Bytes);

impl Serialize for ByteBuf {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(Bytes::from(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteBuf, E> {
                Ok(ByteBuf(Bytes::copy_from_slice(v.as_bytes())))
            }
            // Formats without a byte-string type (JSON) write a sequence of numbers.
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ByteBuf, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(byte) = seq.next_element::<u8>()? {
                    out.push(byte);
                }
                Ok(ByteBuf(Bytes::from(out)))
            }
        }
        deserializer.deserialize_byte_buf(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response() -> CachedResponse {
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = StatusCode::NOT_FOUND;
        parts
            .headers
            .insert("content-type", HeaderValue::from_static("application/json"));
        parts
            .headers
            .insert("etag", HeaderValue::from_static("\"v1\""));
        let body = Bytes::from_static(b"{\"error\":{\"message\":\"no such model\"}}\xff\x00");
        CachedResponse::from_parts(&parts, body, 1 << 20, &[])
    }

    #[test]
    fn a_response_reads_back_from_every_format() {
        let original = response();
        assert!(original.is_storable());
        let json = serde_json::to_vec(&original).expect("json");
        assert_eq!(
            serde_json::from_slice::<CachedResponse>(&json).expect("json back"),
            original
        );
        #[cfg(feature = "msgpack")]
        {
            let packed = rmp_serde::to_vec(&original).expect("msgpack");
            let back: CachedResponse = rmp_serde::from_slice(&packed).expect("msgpack back");
            assert_eq!(back, original);
        }
        #[cfg(feature = "postcard")]
        {
            let packed = postcard::to_allocvec(&original).expect("postcard");
            let back: CachedResponse = postcard::from_bytes(&packed).expect("postcard back");
            assert_eq!(back, original);
        }
        let sent = original.to_response::<http_body_util::Empty<Bytes>>("hit");
        assert_eq!(sent.status(), StatusCode::NOT_FOUND);
        assert_eq!(sent.headers()["etag"], "\"v1\"");
        assert_eq!(sent.headers()[X_CACHE], "hit");
    }
}
