//! Conditional and range requests on a cached route.
//!
//! A browser revalidating what it holds sends `If-None-Match` / `If-Modified-Since`; a download
//! client may send `Range`. Forwarded as they are, the upstream answers `304 Not Modified` or
//! `206 Partial Content` — an answer for that one request, which must neither be stored nor
//! handed to the other requests that waited on the same upstream call. So the cache asks the
//! upstream for the whole response (these headers are taken off the request it forwards),
//! stores and shares that, and answers each request from it: `304` when the request's
//! validators still match the stored response, else the whole response (a `200` is a valid
//! answer to a `Range` request: a server may ignore the range).
//!
//! `If-Match` and `If-Unmodified-Since` (a precondition that must fail with `412`, rare on a
//! `GET`) are not evaluated: such requests bypass the cache.

use ::http::header::{
    HeaderMap, HeaderValue, ETAG, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE,
    IF_UNMODIFIED_SINCE, LAST_MODIFIED, RANGE,
};

use super::CachedResponse;

/// The validators a request sent, checked against the response the cache answers it with.
#[derive(Debug, Default)]
pub(super) struct Condition {
    /// The `If-None-Match` lists (each header's value).
    if_none_match: Vec<HeaderValue>,
    /// `If-Modified-Since`, used only without `If-None-Match` (RFC 9110 §13.1.3).
    if_modified_since: Option<HeaderValue>,
}

impl Condition {
    /// Whether the request carries a precondition the cache does not evaluate, so it must go to
    /// the upstream as it is.
    pub(super) fn is_unsupported(headers: &HeaderMap) -> bool {
        headers.contains_key(IF_MATCH) || headers.contains_key(IF_UNMODIFIED_SINCE)
    }

    /// The request's validators, if it sent any.
    pub(super) fn of(headers: &HeaderMap) -> Option<Condition> {
        let if_none_match: Vec<HeaderValue> =
            headers.get_all(IF_NONE_MATCH).iter().cloned().collect();
        let if_modified_since = headers.get(IF_MODIFIED_SINCE).cloned();
        (!if_none_match.is_empty() || if_modified_since.is_some()).then_some(Condition {
            if_none_match,
            if_modified_since,
        })
    }

    /// Take off the headers that would make the upstream answer for this request alone.
    pub(super) fn strip(headers: &mut HeaderMap) {
        for name in [IF_NONE_MATCH, IF_MODIFIED_SINCE, RANGE, IF_RANGE] {
            headers.remove(name);
        }
    }

    /// Whether `response` is what the client already holds: a `2xx` whose `ETag` is in
    /// `If-None-Match` (weak comparison, or `*`), or — without `If-None-Match` — whose
    /// `Last-Modified` is the `If-Modified-Since` date the client sent back. Anything else (a
    /// date that is not the stored one byte for byte, a malformed list) is answered in full,
    /// which is always a correct answer to a conditional `GET`.
    pub(super) fn is_met_by(&self, response: &CachedResponse) -> bool {
        if !(200..300).contains(&response.status()) {
            return false;
        }
        if !self.if_none_match.is_empty() {
            let etag = response.header(ETAG.as_str());
            return self
                .if_none_match
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(entity_tags)
                .any(|tag| tag == "*" || etag.is_some_and(|etag| weak_eq(tag, etag)));
        }
        match (
            &self.if_modified_since,
            response.header(LAST_MODIFIED.as_str()),
        ) {
            (Some(since), Some(modified)) => since.as_bytes() == modified,
            _ => false,
        }
    }
}

/// The entity tags of an `If-None-Match` value (`"a", W/"b"`, or `*`). Commas may sit inside a
/// quoted tag, so the list is split on the quotes, not on commas.
fn entity_tags(list: &str) -> Vec<&str> {
    let mut tags = Vec::new();
    let mut rest = list.trim();
    while !rest.is_empty() {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        if let Some(after) = rest.strip_prefix('*') {
            tags.push("*");
            rest = after;
            continue;
        }
        let start = usize::from(rest.starts_with("W/")) * 2;
        let Some(open) = rest[start..].strip_prefix('"') else {
            break; // not a list of entity tags: match nothing
        };
        let Some(close) = open.find('"') else {
            break;
        };
        let end = start + 1 + close + 1;
        tags.push(&rest[..end]);
        rest = &rest[end..];
    }
    tags
}

/// Weak comparison (RFC 9110 §8.8.3.2): the opaque tags are equal, `W/` or not.
fn weak_eq(tag: &str, etag: &[u8]) -> bool {
    let opaque = |t: &[u8]| -> Vec<u8> { t.strip_prefix(b"W/").unwrap_or(t).to_vec() };
    opaque(tag.as_bytes()) == opaque(trim(etag))
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().take_while(|b| b.is_ascii_whitespace()).count();
    let end = bytes.len()
        - bytes
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
    bytes.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_tag_lists_are_read_as_rfc_9110_writes_them() {
        assert_eq!(entity_tags(r#""a""#), vec![r#""a""#]);
        assert_eq!(
            entity_tags(r#""a", W/"b",  "c,d""#),
            vec![r#""a""#, r#"W/"b""#, r#""c,d""#]
        );
        assert_eq!(entity_tags("*"), vec!["*"]);
        assert!(entity_tags("not-a-tag").is_empty());
        assert_eq!(entity_tags(r#""a", junk"#), vec![r#""a""#]);
        assert!(entity_tags(r#""unterminated"#).is_empty());
    }

    #[test]
    fn weak_comparison_ignores_the_weak_marker_only() {
        assert!(weak_eq(r#""v1""#, br#""v1""#));
        assert!(weak_eq(r#"W/"v1""#, br#""v1""#));
        assert!(weak_eq(r#""v1""#, br#" W/"v1" "#));
        assert!(!weak_eq(r#""v1""#, br#""v2""#));
        assert!(!weak_eq(r#""v1""#, b"v1"));
    }
}
