//! The crate's one error type.
//!
//! Every fallible call in `layercache` returns [`Result<T>`], whose error is [`Error`]. The enum is
//! `#[non_exhaustive]`: later versions add variants (for example for new backends) without a breaking
//! change, so match it with a wildcard arm.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A boxed error as returned by user-supplied loaders.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// `Result` with [`Error`] as its error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `layercache`.
///
/// Errors keep their cause: [`std::error::Error::source`] returns the underlying error (for
/// example the error your loader returned), so error reporters such as `anyhow` print the whole chain.
///
/// ```
/// use layercache::Error;
///
/// fn describe(err: &Error) -> &'static str {
///     match err {
///         Error::Loader(_) => "the loader failed",
///         Error::LoaderPanicked { .. } => "the loader panicked",
///         Error::Timeout { .. } => "took too long",
///         _ => "something else",
///     }
/// }
/// # let _ = describe;
/// ```
// Every lookup and `get_or_load` returns a `Result` of this type by value, hits included, so its
// size and layout are on the hot path: at 56 bytes a `Result<Option<Entry<V>>>` cost ~10 ns more
// per hit than at 48, and variants with 1-byte payloads (`DecodeErrorKind` and
// `TryCurrentError`, before they were boxed) made every move of a `Result<V>` a run of misaligned
// byte copies, ~20 ns per `get_or_load` hit. Rare, large or oddly shaped payloads are therefore
// boxed; see the size test below before adding a variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A builder was given settings that do not fit together.
    #[error("invalid configuration: {reason}")]
    Config {
        /// What is wrong, in words.
        reason: String,
    },

    /// The loader passed to `get_or_load` returned an error.
    ///
    /// Every caller that waited on the same load gets a clone of this error; the original error is
    /// reachable through [`SharedError::downcast_ref`] and [`std::error::Error::source`].
    #[error("loader failed")]
    Loader(#[source] SharedError),

    /// The loader panicked. The panic was contained: the process keeps running, nothing was cached,
    /// and the next call for the key runs the loader again.
    #[error("loader panicked: {message}")]
    LoaderPanicked {
        /// The panic payload, when it was a string.
        message: String,
    },

    /// The task that ran the load ended before producing a value (for example because the tokio
    /// runtime was shutting down); also returned by a change (`set`, `delete`…) of a
    /// [`Layered`](crate::Layered) whose task the runtime dropped before it ended.
    #[error("the load was cancelled before it completed")]
    LoadCancelled,

    /// A loader asked its own cache for the key it is loading, directly or through loads it
    /// started itself: the call would wait for its own load forever, so it fails at once.
    #[error("the load of `{key}` asked for `{key}` itself: it would wait for itself forever")]
    RecursiveLoad {
        /// The key.
        key: String,
    },

    /// The operation did not finish within its time limit.
    #[error("timed out after {after:?}")]
    Timeout {
        /// The limit that was exceeded.
        after: Duration,
    },

    /// A value could not be serialized.
    #[error("could not encode the value")]
    Encode {
        /// The serializer's error.
        #[source]
        source: BoxError,
    },

    /// A value serialized fine but does not decode back with the same format (for example a
    /// `#[serde(skip_serializing_if)]` field or a `serde_json::Value` under postcard). It was not
    /// stored: a self-describing format (the default, MessagePack) reads such types back.
    #[error("the value does not read back from its serialized form, so it was not stored (use a self-describing format such as the default MessagePack, or fix the type)")]
    RoundTrip {
        /// Which format failed to read the value back, and why.
        #[source]
        source: BoxError,
    },

    /// A value is larger than the configured limit.
    #[error("value of {len} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge {
        /// The value's serialized size.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// Stored bytes are not a valid frame for this codec. Layers treat this as a miss and delete
    /// the key; it is returned only by direct [`ValueCodec::decode`](crate::codec::ValueCodec)
    /// calls.
    #[error("could not decode a stored value: {kind}")]
    Decode {
        /// What was wrong with the bytes (boxed, like the other rare payloads, to keep `Error`
        /// small: see the note on [`Error`]).
        kind: Box<DecodeErrorKind>,
        /// The underlying decompressor or deserializer error, when there is one.
        #[source]
        source: Option<BoxError>,
    },

    /// A Redis command failed (connection refused or lost, server error, command timeout); what
    /// kind of failure it was is [`RedisError::kind`].
    ///
    /// ```
    /// use layercache::{Error, RedisErrorKind};
    ///
    /// fn worth_a_retry(err: &Error) -> bool {
    ///     match err {
    ///         Error::Redis { source, .. } => matches!(
    ///             source.kind(),
    ///             RedisErrorKind::Timeout | RedisErrorKind::Connection
    ///         ),
    ///         _ => false,
    ///     }
    /// }
    /// # let _ = worth_a_retry;
    /// ```
    #[cfg(feature = "redis")]
    #[error("redis {op} failed: {source}")]
    Redis {
        /// The operation: `get`, `set`, `delete`, `get_many`, `set_many`, `scan`, `connect`,
        /// `config`, `ping`, `subscribe`.
        op: &'static str,
        /// What went wrong (boxed: every `Result` of this crate, cache hits included, would
        /// otherwise carry its size).
        #[source]
        source: Box<RedisError>,
    },

    /// A layer was skipped because its circuit breaker is open (returned by `delete` and
    /// `expire`, where skipping a layer would leave the value behind).
    #[error("the circuit of layer {layer} is open")]
    CircuitOpen {
        /// The layer's name.
        layer: String,
    },

    /// `get_or_load` was called outside a tokio runtime; detached loads need one. The source is
    /// tokio's own explanation (boxed, so that no tokio type is part of this API).
    #[error("no tokio runtime is running; get_or_load must be called from within a tokio runtime")]
    NoRuntime(#[source] BoxError),
}

/// What was wrong with bytes that failed to decode (see [`Error::Decode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// Shorter than a frame header.
    #[error("truncated frame")]
    Truncated,
    /// Not a layercache frame.
    #[error("bad magic bytes")]
    BadMagic,
    /// A frame version this build does not know.
    #[error("unsupported frame version {0}")]
    UnsupportedVersion(u8),
    /// Flag bits this build does not know, or an impossible combination.
    #[error("unknown flags {0:#04x}")]
    UnknownFlags(u8),
    /// Written with another serde format.
    #[error("written with format id {found}, this codec reads format id {expected}")]
    FormatMismatch {
        /// This codec's format id.
        expected: u8,
        /// The frame's format id.
        found: u8,
    },
    /// The frame claims a value larger than the limit.
    #[error("frame claims {len} bytes, over the limit of {max}")]
    TooLarge {
        /// The claimed raw length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload length does not match the frame's raw length.
    #[error("payload length does not match the header")]
    LengthMismatch,
    /// The frame is compressed but this codec cannot decompress (no `zstd` feature or compression
    /// turned off).
    #[error("frame is compressed but compression is unavailable")]
    CompressionUnavailable,
    /// Compressed with another dictionary (or with/without one when this codec differs).
    #[error("compressed with dictionary id {found}, not this codec's")]
    DictionaryMismatch {
        /// The frame's dictionary id (0 = none).
        found: u32,
    },
    /// zstd rejected the payload.
    #[error("decompression failed")]
    Decompress,
    /// The checksum does not match: the bytes were corrupted.
    #[error("checksum mismatch")]
    Checksum,
    /// The frame is not signed by a key this codec accepts, or is unsigned where signatures are
    /// required (see `CodecBuilder::signing_key`): forged, written under another key, or by a
    /// cache with other keys. Such a frame is never served (and is not deleted: a replica with
    /// other keys may be its writer).
    #[error("signature missing or not valid")]
    BadSignature,
    /// The serde format rejected the payload (for example a changed struct).
    #[error("deserialization failed")]
    Deserialize,
    /// The frame was written with another schema id (see `CodecBuilder::schema`).
    #[error("written with schema {found}, this codec reads schema {expected}")]
    SchemaMismatch {
        /// The schema this codec reads.
        expected: u32,
        /// The schema in the frame.
        found: u32,
    },
}

impl DecodeErrorKind {
    /// Whether the frame is intact but was written by another deployment: another frame version,
    /// format, dictionary, schema or value type, or a larger size limit. Such a value is a miss
    /// for this reader but may still be read by another replica, so it is not deleted. Corrupted
    /// frames (truncated, not starting with the frame magic that every version writes, bad
    /// checksum, lengths that do not add up, failed decompression) are not foreign.
    pub fn is_foreign(&self) -> bool {
        !matches!(
            self,
            DecodeErrorKind::Truncated
                | DecodeErrorKind::BadMagic
                | DecodeErrorKind::LengthMismatch
                | DecodeErrorKind::Decompress
                | DecodeErrorKind::Checksum
        )
    }
}

impl Error {
    pub(crate) fn config(reason: impl Into<String>) -> Self {
        Error::Config {
            reason: reason.into(),
        }
    }

    /// Whether the error is a client-side refusal to store a value — too large
    /// ([`Error::ValueTooLarge`]), not serializable ([`Error::Encode`]) or not readable back
    /// ([`Error::RoundTrip`]) — rather than a failure of the layer. A refusal says nothing about
    /// the layer's health: `Layered` never counts it against the circuit breaker and never
    /// retries it.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::ValueTooLarge { .. } | Error::Encode { .. } | Error::RoundTrip { .. }
        )
    }

    /// Whether the error is the server's own answer to a command (`OOM` when Redis is full and
    /// evicts nothing, `READONLY`, `LOADING`, `NOPERM`, …): the server is up and answered at
    /// once, so it says nothing about reaching it, and reads may well still succeed. A command
    /// that found its connection too busy to take it ([`RedisErrorKind::Busy`]) counts too: the
    /// server was answering the others.
    pub(crate) fn is_server_reply(&self) -> bool {
        match self {
            #[cfg(feature = "redis")]
            Error::Redis { source, .. } => {
                matches!(
                    source.kind(),
                    RedisErrorKind::Server | RedisErrorKind::Auth | RedisErrorKind::Busy
                )
            }
            _ => false,
        }
    }

    /// Whether a Redis command was turned away unsent: too many at once on its connection.
    #[cfg(feature = "tracing")]
    pub(crate) fn is_busy(&self) -> bool {
        match self {
            #[cfg(feature = "redis")]
            Error::Redis { source, .. } => source.kind() == RedisErrorKind::Busy,
            _ => false,
        }
    }

    #[cfg(feature = "redis")]
    pub(crate) fn redis(op: &'static str, source: fred::error::Error) -> Self {
        Error::Redis {
            op,
            source: Box::new(RedisError::from_client(source)),
        }
    }
}

/// What kind of Redis failure an [`Error::Redis`] is.
#[cfg(feature = "redis")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RedisErrorKind {
    /// The command (or connecting) took longer than its timeout.
    Timeout,
    /// No connection: refused, reset, closed, or not yet re-established.
    Connection,
    /// The server refused the credentials or the ACL user lacks a permission (`WRONGPASS`,
    /// `NOAUTH`, `NOPERM`).
    Auth,
    /// The TLS handshake failed: an untrusted or mismatched certificate, or TLS spoken to a
    /// plain port (or the other way round).
    Tls,
    /// The URL or the connection settings are invalid.
    Config,
    /// Cluster routing failed: no node serves the slot, or the cluster state is unknown.
    Cluster,
    /// The server answered with an error (`OOM`, `READONLY`, a script error, …).
    Server,
    /// Too many commands at once: this one waited its turn on its connection for the
    /// unresponsive time while the server kept answering the others, and was not sent (see
    /// [`RedisCacheBuilder::unresponsive_after`](crate::RedisCacheBuilder::unresponsive_after)).
    /// Not an outage: a `Layered` stack's circuit breaker does not count it.
    Busy,
    /// A reply the client could not understand.
    Protocol,
    /// The tokio runtime the cache was built on has shut down, and the cache's connections with
    /// it: every command fails, on any runtime, until the cache is built again. A cache must be
    /// built on the runtime that uses it; the usual cause is one cache (a `static`) shared by
    /// several `#[tokio::test]`s, each of which starts and drops its own runtime. Not worth a
    /// retry.
    RuntimeGone,
    /// Anything else.
    Other,
}

/// A Redis failure: its [`kind`](RedisError::kind), a message, and the Redis client's own
/// error as its [`source`](std::error::Error::source) (a detail of this version: match on the
/// kind, not on the source's type).
#[cfg(feature = "redis")]
#[derive(Debug)]
pub struct RedisError {
    kind: RedisErrorKind,
    message: String,
    source: Option<BoxError>,
}

#[cfg(feature = "redis")]
impl RedisError {
    /// What kind of failure this is.
    pub fn kind(&self) -> RedisErrorKind {
        self.kind
    }

    /// Whether the command timed out.
    pub fn is_timeout(&self) -> bool {
        self.kind == RedisErrorKind::Timeout
    }

    /// `error`, explained: the runtime that ran the connections has shut down.
    pub(crate) fn runtime_gone(error: fred::error::Error) -> Self {
        RedisError {
            kind: RedisErrorKind::RuntimeGone,
            message: format!(
                "the tokio runtime this cache was built on has shut down, and its connections with it: build the cache on the runtime that uses it ({})",
                error.details()
            ),
            source: Some(Box::new(error)),
        }
    }

    pub(crate) fn from_client(error: fred::error::Error) -> Self {
        use fred::error::ErrorKind as K;
        let details = error.details();
        let first_word = details.split_whitespace().next().unwrap_or("");
        let lower = details.to_ascii_lowercase();
        let kind = if matches!(first_word, "WRONGPASS" | "NOAUTH" | "NOPERM") {
            RedisErrorKind::Auth
        } else if lower.contains("certificate") || lower.contains("tls handshake") {
            RedisErrorKind::Tls
        } else if crate::redis::builder::refuses_database(&lower) {
            RedisErrorKind::Config
        } else {
            match error.kind() {
                K::Timeout => RedisErrorKind::Timeout,
                K::IO | K::Canceled => RedisErrorKind::Connection,
                K::Auth => RedisErrorKind::Auth,
                K::Config | K::Url => RedisErrorKind::Config,
                K::Cluster | K::Routing => RedisErrorKind::Cluster,
                K::Protocol | K::Parse => RedisErrorKind::Protocol,
                K::Backpressure => RedisErrorKind::Busy,
                K::Unknown if lower.contains("channel closed") => RedisErrorKind::Connection,
                #[cfg(feature = "tls")]
                K::Tls => RedisErrorKind::Tls,
                // A reply such as `OOM …` or `READONLY …`: an error word in capitals.
                _ if first_word.len() > 2 && first_word.chars().all(|c| c.is_ascii_uppercase()) => {
                    RedisErrorKind::Server
                }
                _ => RedisErrorKind::Other,
            }
        };
        RedisError {
            kind,
            message: details.to_owned(),
            source: Some(Box::new(error)),
        }
    }
}

#[cfg(feature = "redis")]
impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            RedisErrorKind::Timeout => "timed out",
            RedisErrorKind::Connection => "no connection",
            RedisErrorKind::Auth => "authentication refused",
            RedisErrorKind::Tls => "TLS failed",
            RedisErrorKind::Config => "invalid settings",
            RedisErrorKind::Cluster => "cluster routing failed",
            RedisErrorKind::Server => "server error",
            RedisErrorKind::Busy => "too many commands at once",
            RedisErrorKind::Protocol => "unexpected reply",
            RedisErrorKind::RuntimeGone => "runtime shut down",
            RedisErrorKind::Other => "failed",
        };
        if self.message.is_empty() {
            f.write_str(kind)
        } else {
            write!(f, "{kind}: {}", self.message)
        }
    }
}

#[cfg(feature = "redis")]
impl StdError for RedisError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// An error shared by every caller that waited on the same load.
///
/// Cloning is cheap (an [`Arc`]). Use [`SharedError::downcast_ref`] to get at the concrete error
/// type your loader returned.
#[derive(Clone)]
pub struct SharedError(Arc<dyn StdError + Send + Sync + 'static>);

impl SharedError {
    pub(crate) fn new(err: BoxError) -> Self {
        SharedError(Arc::from(err))
    }

    /// The loader's error as its concrete type, if it is a `T`.
    ///
    /// ```
    /// # use layercache::SharedError;
    /// # fn check(e: &SharedError) {
    /// if let Some(io) = e.downcast_ref::<std::io::Error>() {
    ///     println!("I/O error: {io}");
    /// }
    /// # }
    /// ```
    pub fn downcast_ref<T: StdError + 'static>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }
}

impl fmt::Debug for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

// `SharedError` is a transparent wrapper: it displays as the loader's error and continues the
// chain with that error's own source, so a report does not print the loader's message twice.
impl StdError for SharedError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Entry;

    /// See the note above [`Error`]: hits return these by value.
    #[test]
    fn errors_stay_small_enough_for_cheap_hits() {
        assert!(std::mem::size_of::<Error>() <= 32);
        assert!(std::mem::size_of::<Result<Arc<String>>>() <= 32);
        assert_eq!(
            std::mem::size_of::<Result<Option<Entry<Arc<String>>>>>(),
            std::mem::size_of::<Entry<Arc<String>>>()
        );
    }
}
