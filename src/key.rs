//! Building cache keys that are stable across processes and unambiguous.
//!
//! A key is `namespace:v<version>:<part>:<part>…`. Parts are escaped so that no choice of part
//! contents can produce another key's text (`("ab", "c")` and `("a", "bc")` differ, and a part
//! containing `:` cannot fake a separator). A part longer than the hashing threshold (a prompt, a
//! document) is replaced by `#` followed by the hex BLAKE3-256 digest of its bytes, so keys stay
//! short while remaining collision resistant — one tenant cannot craft input that lands on another
//! tenant's key, which a non-cryptographic hash such as xxh3 would allow.
//!
//! The result is the same in every process, on every machine, in every run: no per-process random
//! hash state is involved.
//!
//! # Private keys
//!
//! A key is visible to anyone who can run `SCAN`, `MONITOR` or read the slowlog of the Redis, and a
//! prompt of 64 bytes or less would appear there as it is. [`KeyBuilder::request`] (the way to key
//! requests such as prompts) and [`KeyBuilder::private`] hash **every** part into one BLAKE3
//! digest: `chat:v1:gpt-4o:#<64 hex digits>`, where only the namespace, the version and the parts
//! added with [`KeyBuilder::label`] stay readable. The trade-off: in `redis-cli` such keys say
//! nothing about what they hold, and `invalidate_prefix` can only select by namespace, version and
//! labels (use tags for anything finer).
//!
//! ```
//! use layercache::KeyBuilder;
//!
//! let prompt = "Summarise the following support ticket in two sentences: ...";
//! let key = KeyBuilder::new("chat").version(3).part("gpt-4o").part(prompt).build();
//! assert!(key.as_str().starts_with("chat:v3:gpt-4o:"));
//! // The same inputs give the same key anywhere.
//! assert_eq!(key, KeyBuilder::new("chat").version(3).part("gpt-4o").part(prompt).build());
//! ```

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// Parts longer than this many bytes are hashed, unless the builder says otherwise.
pub const DEFAULT_HASH_THRESHOLD: usize = 64;

/// A finished cache key: an immutable, cheaply clonable string.
///
/// It dereferences to `str`, so it can be passed anywhere a key is expected (`&key`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(Arc<str>);

impl CacheKey {
    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for CacheKey {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for CacheKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for CacheKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<CacheKey> for Arc<str> {
    fn from(key: CacheKey) -> Self {
        key.0
    }
}

/// Builds a [`CacheKey`] from a namespace, a version and any number of parts.
///
/// Bump the version when the cached value's type or meaning changes: old entries are then simply
/// never read again.
///
/// ```
/// use layercache::KeyBuilder;
///
/// let a = KeyBuilder::new("kv").part("ab").part("c").build();
/// let b = KeyBuilder::new("kv").part("a").part("bc").build();
/// assert_ne!(a, b);
/// assert_eq!(a.as_str(), "kv:v0:ab:c");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct KeyBuilder {
    out: String,
    hash_threshold: usize,
    /// In private mode, the escaped parts that are hashed into one digest by `build`.
    hidden: Option<String>,
}

impl KeyBuilder {
    /// Start a key in `namespace` (escaped like a part), version 0.
    pub fn new(namespace: &str) -> Self {
        let mut out = String::with_capacity(namespace.len() + 48);
        push_escaped(&mut out, namespace);
        KeyBuilder {
            out,
            hash_threshold: DEFAULT_HASH_THRESHOLD,
            hidden: None,
        }
        .with_version(0)
    }

    /// Start a private key in `namespace` for a request (a prompt, its parameters, a user's
    /// question): [`new`](Self::new) then [`private`](Self::private), so that no part of the
    /// request appears in Redis. Name the parts that may stay readable with
    /// [`label`](Self::label).
    ///
    /// ```
    /// use layercache::KeyBuilder;
    ///
    /// let key = KeyBuilder::request("chat")
    ///     .version(1)
    ///     .label("gpt-4o")
    ///     .part_f64(0.7)
    ///     .part("What is my account balance?")
    ///     .build();
    /// assert!(key.as_str().starts_with("chat:v1:gpt-4o:#"));
    /// assert!(!key.as_str().contains("balance"));
    /// ```
    pub fn request(namespace: &str) -> Self {
        Self::new(namespace).private()
    }

    /// Private mode: every part added from now on — text of any length, numbers, JSON, bytes —
    /// is hashed, all of them into one BLAKE3 digest that ends the key; only the namespace, the
    /// version, parts added before this call and [`label`](Self::label)s are readable. See the
    /// [module docs](self) for the trade-off.
    pub fn private(mut self) -> Self {
        if self.hidden.is_none() {
            self.hidden = Some(String::new());
        }
        self
    }

    /// Append a part that stays readable even in private mode (a model name, a tenant id, to
    /// select keys by prefix); outside private mode it is the same as [`part`](Self::part).
    pub fn label(mut self, part: impl AsRef<str>) -> Self {
        match self.hidden.take() {
            Some(hidden) => {
                let threshold = self.hash_threshold;
                self = self.hash_threshold(usize::MAX).part(part);
                self.hash_threshold = threshold;
                self.hidden = Some(hidden);
                self
            }
            None => self.part(part),
        }
    }

    /// Where parts go: the hidden buffer in private mode, else the key text.
    fn sink(&mut self) -> &mut String {
        match &mut self.hidden {
            Some(hidden) => hidden,
            None => &mut self.out,
        }
    }

    fn with_version(mut self, version: u32) -> Self {
        self.out.push_str(":v");
        self.out.push_str(&version.to_string());
        self
    }

    /// Set the key version (default 0). Call it before adding parts.
    pub fn version(mut self, version: u32) -> Self {
        // Replace the version written by `new` (or an earlier call). Parts added so far are kept.
        let ns_end = self.namespace_end();
        let rest_start = self.out[ns_end + 2..]
            .find(':')
            .map_or(self.out.len(), |i| ns_end + 2 + i);
        let rest = self.out[rest_start..].to_owned();
        self.out.truncate(ns_end);
        self = self.with_version(version);
        self.out.push_str(&rest);
        self
    }

    /// Position of the `:v` that ends the namespace (the first unescaped `:`).
    fn namespace_end(&self) -> usize {
        let bytes = self.out.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b':' => return i,
                _ => i += 1,
            }
        }
        bytes.len()
    }

    /// Parts longer than `bytes` are hashed (default [`DEFAULT_HASH_THRESHOLD`]). Changing it changes
    /// the keys produced, so keep it fixed for a namespace.
    pub fn hash_threshold(mut self, bytes: usize) -> Self {
        self.hash_threshold = bytes;
        self
    }

    /// Append a text part.
    pub fn part(mut self, part: impl AsRef<str>) -> Self {
        let part = part.as_ref();
        let threshold = self.hash_threshold;
        let private = self.hidden.is_some();
        let out = self.sink();
        out.push(':');
        if part.len() > threshold && !private {
            push_digest(out, part.as_bytes());
        } else {
            push_escaped(out, part);
        }
        self
    }

    /// Append a number.
    pub fn part_u64(mut self, part: u64) -> Self {
        let out = self.sink();
        out.push(':');
        out.push_str(&part.to_string());
        self
    }

    /// Append a float in canonical form: the shortest text that reads back as the same `f64`, so
    /// `0.7`, `0.70` and `7e-1` give one key; `-0.0` is written as `0`.
    ///
    /// ```
    /// use layercache::KeyBuilder;
    /// let a = KeyBuilder::new("chat").part_f64(0.70).build();
    /// let b = KeyBuilder::new("chat").part_f64("0.7".parse().unwrap()).build();
    /// assert_eq!(a, b);
    /// assert_eq!(a.as_str(), "chat:v0:0.7");
    /// ```
    pub fn part_f64(mut self, part: f64) -> Self {
        let out = self.sink();
        out.push(':');
        let part = if part == 0.0 { 0.0 } else { part };
        out.push_str(&part.to_string());
        self
    }

    /// Append an `f32` in canonical form (its own shortest text, not that of the `f64` it
    /// widens to: `0.7f32` is written `0.7`).
    pub fn part_f32(mut self, part: f32) -> Self {
        let out = self.sink();
        out.push(':');
        let part = if part == 0.0 { 0.0 } else { part };
        out.push_str(&part.to_string());
        self
    }

    /// Append an optional text part: `None` is a marker no text part can produce, so a missing
    /// value never collides with any present one (the empty string included).
    ///
    /// ```
    /// use layercache::KeyBuilder;
    /// let none = KeyBuilder::new("chat").part_opt(None::<&str>).build();
    /// let empty = KeyBuilder::new("chat").part_opt(Some("")).build();
    /// let literal = KeyBuilder::new("chat").part_opt(Some("#none")).build();
    /// assert_ne!(none, empty);
    /// assert_ne!(none, literal);
    /// ```
    pub fn part_opt<T: AsRef<str>>(self, part: Option<T>) -> Self {
        match part {
            Some(part) => self.part(part),
            None => {
                let mut this = self;
                // A text part starting with `#` is escaped, and digests are hex: `#none` is ours.
                this.sink().push_str(":#none");
                this
            }
        }
    }

    /// Append any `Serialize` value (a whole request: model, messages, temperature, tools) as
    /// canonical JSON — object keys sorted, no whitespace, floats in shortest form — hashed with
    /// BLAKE3. Two requests that serialize to equal JSON give the same key, whatever the field
    /// order of their maps.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`](crate::Error::Encode) when serde_json cannot represent the value (a map
    /// with non-string keys, a float that is NaN or infinite).
    ///
    /// ```
    /// use layercache::KeyBuilder;
    /// use serde_json::json;
    ///
    /// let a = KeyBuilder::new("chat").part_json(&json!({"model": "gpt-4o", "temperature": 0.7}))?.build();
    /// let b = KeyBuilder::new("chat").part_json(&json!({"temperature": 0.70, "model": "gpt-4o"}))?.build();
    /// assert_eq!(a, b);
    /// # Ok::<(), layercache::Error>(())
    /// ```
    pub fn part_json<T: serde::Serialize + ?Sized>(mut self, part: &T) -> crate::Result<Self> {
        let value = serde_json::to_value(part).map_err(|e| crate::Error::Encode {
            source: Box::new(e),
        })?;
        let mut canonical = String::new();
        write_canonical(&mut canonical, &value);
        let out = self.sink();
        out.push(':');
        push_digest(out, canonical.as_bytes());
        Ok(self)
    }

    /// Append binary data (always hashed: raw bytes are not key text).
    pub fn part_bytes(mut self, part: &[u8]) -> Self {
        let out = self.sink();
        out.push(':');
        push_digest(out, part);
        self
    }

    /// The finished key.
    pub fn build(mut self) -> CacheKey {
        if let Some(hidden) = self.hidden.take() {
            // Domain-separated, so that no other key form can produce the same digest.
            let mut hasher = blake3::Hasher::new();
            hasher.update(b"layercache private key v1\0");
            hasher.update(hidden.as_bytes());
            self.out.push_str(":#");
            self.out.push_str(hasher.finalize().to_hex().as_str());
        }
        CacheKey(Arc::from(self.out))
    }
}

/// Writes `part` with `\`, `:` and a leading `#` escaped by a backslash, so that separators and
/// digest markers can only come from the builder itself.
fn push_escaped(out: &mut String, part: &str) {
    for (i, c) in part.char_indices() {
        if c == '\\' || c == ':' || (c == '#' && i == 0) {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Canonical JSON text of `value`: object keys sorted by their UTF-8 bytes, no whitespace,
/// numbers as serde_json writes them (shortest round-trip form for floats).
fn write_canonical(out: &mut String, value: &serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => out.push_str(&Value::String(s.clone()).to_string()),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(out, v);
            }
            out.push('}');
        }
    }
}

fn push_digest(out: &mut String, bytes: &[u8]) {
    out.push('#');
    out.push_str(blake3::hash(bytes).to_hex().as_str());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_parts_apart() {
        let a = KeyBuilder::new("n").part("a:b").build();
        let b = KeyBuilder::new("n").part("a").part("b").build();
        assert_ne!(a, b);
        assert_eq!(a.as_str(), r"n:v0:a\:b");
        let c = KeyBuilder::new("n").part(r"a\").part("b").build();
        let d = KeyBuilder::new("n").part(r"a\:b").build();
        assert_ne!(c, d);
    }

    #[test]
    fn a_part_cannot_pose_as_a_digest() {
        let long = "x".repeat(100);
        let hashed = KeyBuilder::new("n").part(&long).build();
        let digest = hashed.as_str().rsplit(':').next().unwrap_or_default();
        let forged = KeyBuilder::new("n")
            .hash_threshold(1000)
            .part(digest)
            .build();
        assert_ne!(hashed, forged);
    }

    #[test]
    fn private_keys_show_no_part_and_stay_unambiguous() {
        let secret = "my card number is 4242";
        let key = KeyBuilder::request("chat")
            .version(2)
            .label("gpt-4o")
            .part(secret)
            .part_u64(7)
            .build();
        assert!(key.as_str().starts_with("chat:v2:gpt-4o:#"), "{key}");
        assert!(!key.as_str().contains("4242"));
        assert_eq!(key.as_str().len(), "chat:v2:gpt-4o:#".len() + 64);
        // Same inputs, same key; split parts differ; order of labels and parts does not matter
        // for the digest, but the part boundaries do.
        let again = KeyBuilder::request("chat")
            .part(secret)
            .label("gpt-4o")
            .part_u64(7)
            .version(2)
            .build();
        assert_eq!(key, again);
        let split = KeyBuilder::request("chat")
            .version(2)
            .label("gpt-4o")
            .part("my card number")
            .part("is 4242")
            .part_u64(7)
            .build();
        assert_ne!(key, split);
        // Not the key of the same parts outside private mode, nor of an empty private key.
        let public = KeyBuilder::new("chat")
            .version(2)
            .part("gpt-4o")
            .part(secret)
            .part_u64(7)
            .build();
        assert_ne!(key, public);
        assert_ne!(
            KeyBuilder::request("chat").build(),
            KeyBuilder::request("chat").part("").build()
        );
        // Labels stay readable and escaped.
        let labelled = KeyBuilder::request("chat").label("a:b").part("x").build();
        assert!(
            labelled.as_str().starts_with(r"chat:v0:a\:b:#"),
            "{labelled}"
        );
    }

    #[test]
    fn version_can_be_set_after_namespace_with_colons() {
        let k = KeyBuilder::new("a:b")
            .version(7)
            .part("x")
            .version(9)
            .build();
        assert_eq!(k.as_str(), r"a\:b:v9:x");
    }
}
