//! Turning values into the bytes a shared layer (Redis) stores, and back — safely.
//!
//! A [`Codec`] serializes a value with a serde [`Format`] (MessagePack with field names by
//! default — see [Choosing a format](#choosing-a-format)), compresses it
//! with zstd when it is large enough (feature `zstd`), and wraps it in a checked frame that
//! records the format, the entry's deadlines, the raw length and a checksum (layout in
//! [`frame`](self#frame)).
//!
//! Decoding trusts nothing: the magic, version, flags, format id and length are checked before any
//! allocation; a buffer is never sized from anything but our own length field, and only after it
//! has been checked against [`max_value_bytes`](CodecBuilder::max_value_bytes); decompression
//! writes into exactly that buffer; the checksum is verified before the value is deserialized.
//! Any failure is an [`Error::Decode`] — never a panic, never wrong bytes.
//!
//! ```
//! # #[cfg(all(feature = "msgpack", feature = "zstd"))] {
//! use std::time::Duration;
//! use layercache::codec::{Codec, ValueCodec};
//! use layercache::Entry;
//!
//! let codec = Codec::builder().compress_above(1024).zstd_level(3).build().unwrap();
//! let entry = Entry::new("a long chat reply ".repeat(200), Duration::from_secs(60));
//! let bytes = codec.encode(&entry).unwrap();
//! assert!(bytes.len() < 1000, "compressed");
//! let back: Entry<String> = codec.decode(&bytes).unwrap();
//! assert_eq!(back.value(), entry.value());
//! # }
//! ```
//!
//! # Choosing a format
//!
//! The default, [`MessagePack`] with field names, is self-describing: it reads back everything
//! serde expresses — `#[serde(skip_serializing_if = "Option::is_none")]` fields (every OpenAI
//! client type has them), `serde_json::Value`, internally tagged and untagged enums, `flatten`.
//! [`Postcard`] (feature `postcard`) is smaller and faster but not self-describing: it cannot read
//! back any of those, so use it only for types you know suit it. [`Json`] is for readers in other
//! languages. Measured figures are in BENCHMARKS.md (`codec_4k`). Like JSON, MessagePack writes
//! `None` and `Some(None)` of an `Option<Option<T>>` the same way (see [`MessagePack`]).
//!
//! Whatever the format, a codec **checks each value it writes by decoding it back** (see
//! [`CodecBuilder::verify_writes`]): a value that would not read back fails at write time with
//! [`Error::RoundTrip`], instead of being stored to fail on every read.
//!
//! # Binary values
//!
//! serde writes a plain `Vec<u8>` (or `[u8; N]`) as a *sequence of numbers*, not as bytes, and
//! no format can tell the difference. Cache speech audio, images or any other blob as
//! `bytes::Bytes` (its `serde` feature), `serde_bytes::ByteBuf`, or a field marked
//! `#[serde(with = "serde_bytes")]`: those are written as one binary string. Measured on
//! 100 KB of random bytes with the default codec (release build, the 2-core benchmark VM):
//! stored in ~100 KB, encoded in ~0.2 ms and decoded in ~0.02 ms as bytes; as a `Vec<u8>`,
//! ~119 KB, ~4.6 ms and ~1.5 ms (in JSON, which has no binary type, either way ~140 KB).
//!
//! # Rolling deploys
//!
//! A frame that is intact but cannot be read by this codec — another format, dictionary or
//! [schema](CodecBuilder::schema), or a value type that changed shape — is a miss for this reader
//! but not corruption: [`DecodeErrorKind::is_foreign`] tells the two apart, and `RedisCache` only
//! deletes corrupted frames, so old and new replicas do not destroy each other's entries. Nor
//! does a `Layered` cache overwrite a recent one with a value it loaded (see
//! [`Cache::holds_other_deployment`](crate::Cache::holds_other_deployment)): two versions serving
//! side by side would otherwise take turns loading on every read.
//!
//! # Frame
//!
//! ```text
//! offset size field
//!      0    2 magic "LC"
//!      2    1 frame version (1)
//!      3    1 flags: bit 0 compressed (zstd), bit 1 dictionary, bit 2 schema id; others must be 0
//!      4    1 format id (see Format::id)
//!      5    8 fresh_until, ms since the Unix epoch (little endian, as all integers here)
//!     13    8 stale_until, ms since the Unix epoch
//!     21    4 load duration of the value, ms (0 = unknown)
//!     25    4 dictionary id (0 = none)
//!     29    4 raw length: bytes of the serialized value before compression
//!     33    8 checksum: xxh3-64 of bytes 0..33, the schema id if present, and the raw value
//!     41    4 schema id, only when flag bit 2 is set (a codec with schema 0 writes none)
//! 41/45     … payload: the serialized value, zstd-compressed when bit 0 is set
//! ```

#[cfg(feature = "zstd")]
mod compress;
mod format;
mod frame;
mod sign;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

#[cfg(feature = "bincode")]
pub use self::format::Bincode;
pub use self::format::Format;
#[cfg(feature = "json")]
pub use self::format::Json;
#[cfg(feature = "msgpack")]
pub use self::format::MessagePack;
#[cfg(feature = "postcard")]
pub use self::format::Postcard;
#[cfg(feature = "redis")]
pub(crate) use self::frame::{
    declared_raw_len, frame_created_us, is_tombstone, starts_like_tombstone, tombstone,
};
use self::frame::{
    Header, FLAG_COMPRESSED, FLAG_DICTIONARY, FLAG_META, FLAG_ORDERED, FLAG_SCHEMA, FLAG_SIGNED,
    HEADER_LEN, KNOWN_FLAGS, SCHEMA_LEN,
};
use crate::entry::Entry;
use crate::error::{DecodeErrorKind, Error, Result};

/// Largest value a codec encodes or decodes unless told otherwise: 64 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 64 << 20;
/// Values whose serialized form is at least this many bytes are compressed: 1 KiB.
pub const DEFAULT_COMPRESS_ABOVE: usize = 1024;
/// zstd level used unless told otherwise.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// Encodes entries of `V` into framed bytes and back. Object safe, so a layer can hold
/// `Arc<dyn ValueCodec<V>>`; [`Codec`] implements it for every serde type. Implement it yourself
/// to take over the byte format entirely.
pub trait ValueCodec<V>: fmt::Debug + Send + Sync {
    /// The bytes to store for `entry`.
    fn encode(&self, entry: &Entry<V>) -> Result<Vec<u8>>;
    /// The entry stored as `bytes`, or [`Error::Decode`].
    fn decode(&self, bytes: &[u8]) -> Result<Entry<V>>;

    /// The bytes to store for `entry` under `key` (the full storage key). Layers call this one;
    /// a codec that signs its frames binds them to the key, so that a frame copied under another
    /// key does not verify. By default the key is ignored and [`encode`](Self::encode) is used.
    fn encode_for_key(&self, key: &str, entry: &Entry<V>) -> Result<Vec<u8>> {
        let _ = key;
        self.encode(entry)
    }

    /// The entry stored as `bytes` under `key`; see [`encode_for_key`](Self::encode_for_key).
    fn decode_for_key(&self, key: &str, bytes: &[u8]) -> Result<Entry<V>> {
        let _ = key;
        self.decode(bytes)
    }
}

impl<V, C: ValueCodec<V> + ?Sized> ValueCodec<V> for Arc<C> {
    fn encode(&self, entry: &Entry<V>) -> Result<Vec<u8>> {
        (**self).encode(entry)
    }
    fn decode(&self, bytes: &[u8]) -> Result<Entry<V>> {
        (**self).decode(bytes)
    }
    fn encode_for_key(&self, key: &str, entry: &Entry<V>) -> Result<Vec<u8>> {
        (**self).encode_for_key(key, entry)
    }
    fn decode_for_key(&self, key: &str, bytes: &[u8]) -> Result<Entry<V>> {
        (**self).decode_for_key(key, bytes)
    }
}

/// The default format: [`MessagePack`] with field names (feature `msgpack`, on by default).
#[cfg(feature = "msgpack")]
pub type DefaultFormat = MessagePack;

/// Serde format + optional zstd + checked frame. Cheap to share (`Arc` it); safe to use from many
/// threads at once.
pub struct Codec<F> {
    format: F,
    max_value_bytes: usize,
    schema: u32,
    verify_writes: bool,
    compress_above: Option<usize>,
    keys: sign::Keys,
    #[cfg(feature = "zstd")]
    zstd: Option<compress::Zstd>,
    #[cfg(feature = "zstd")]
    dictionary_id: u32,
}

impl<F: Format> fmt::Debug for Codec<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Codec");
        d.field("format", &self.format.name())
            .field("max_value_bytes", &self.max_value_bytes)
            .field("schema", &self.schema)
            .field("verify_writes", &self.verify_writes)
            .field("compress_above", &self.compress_above)
            .field("signing", &self.keys);
        #[cfg(feature = "zstd")]
        d.field("zstd", &self.zstd);
        d.finish()
    }
}

#[cfg(feature = "msgpack")]
impl Codec<MessagePack> {
    /// A builder for a codec with the default format, [`MessagePack`] (see [`CodecBuilder`] for
    /// the defaults). Other formats: [`Codec::with_format`].
    pub fn builder() -> CodecBuilder<MessagePack> {
        CodecBuilder::new(MessagePack)
    }
}

#[cfg(feature = "msgpack")]
impl Default for Codec<MessagePack> {
    /// MessagePack with field names, zstd level 3 above 1 KiB (with the `zstd` feature), 64 MiB
    /// limit, schema 0, every write verified.
    fn default() -> Self {
        Codec {
            format: MessagePack,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            schema: 0,
            verify_writes: true,
            #[cfg(feature = "zstd")]
            compress_above: Some(DEFAULT_COMPRESS_ABOVE),
            #[cfg(not(feature = "zstd"))]
            compress_above: None,
            keys: sign::Keys::default(),
            #[cfg(feature = "zstd")]
            zstd: compress::Zstd::new(DEFAULT_ZSTD_LEVEL, None).ok(),
            #[cfg(feature = "zstd")]
            dictionary_id: 0,
        }
    }
}

impl<F: Format> Codec<F> {
    /// A builder for a codec writing `format`.
    pub fn with_format(format: F) -> CodecBuilder<F> {
        CodecBuilder::new(format)
    }

    /// The format this codec writes.
    pub fn format(&self) -> &F {
        &self.format
    }

    /// The largest value this codec encodes or decodes.
    pub fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }

    /// The schema id written into (and expected in) every frame; 0 by default.
    pub fn schema(&self) -> u32 {
        self.schema
    }

    /// Frame `value` with the given deadlines (ms since the epoch) and load duration, and
    /// metadata (creation time, tags, the time it is ordered at). `check` sees the serialized
    /// bytes before they are framed (the round-trip check).
    fn encode_parts<V: Serialize + ?Sized>(
        &self,
        value: &V,
        (fresh_until_ms, stale_until_ms): (u64, u64),
        load: Option<Duration>,
        meta: (u64, &[Box<str>], u64),
        storage_key: &str,
        check: impl FnOnce(&[u8]) -> Result<()>,
    ) -> Result<Vec<u8>> {
        crate::tags::validate(meta.1)?;
        let mut raw = Vec::new();
        self.format
            .serialize(value, &mut raw)
            .map_err(|source| Error::Encode { source })?;
        check(&raw)?;
        if raw.len() > self.max_value_bytes {
            return Err(Error::ValueTooLarge {
                len: raw.len(),
                max: self.max_value_bytes,
            });
        }
        let raw_len = u32::try_from(raw.len()).map_err(|_| Error::ValueTooLarge {
            len: raw.len(),
            max: u32::MAX as usize,
        })?;
        let load_ms = load.map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX));
        let schema = (self.schema != 0).then_some(self.schema);
        let mut meta_block =
            Vec::with_capacity(17 + meta.1.iter().map(|t| 1 + t.len()).sum::<usize>());
        let ordered = frame::write_meta_block(meta, &mut meta_block);
        let mut header = Header {
            flags: FLAG_META
                | if ordered { FLAG_ORDERED } else { 0 }
                | if schema.is_some() { FLAG_SCHEMA } else { 0 }
                | if self.keys.signs() { FLAG_SIGNED } else { 0 },
            format: self.format.id(),
            fresh_until_ms,
            stale_until_ms,
            load_ms,
            dictionary: 0,
            raw_len,
            checksum: 0,
        };
        let compressed = self.maybe_compress(&raw, &mut header)?;
        let mut head = [0u8; HEADER_LEN];
        header.write(&mut head);
        header.checksum = frame::checksum(&head, schema, &meta_block, &raw);
        header.write(&mut head);
        let payload = compressed.as_deref().unwrap_or(&raw);
        let mut out = Vec::with_capacity(
            HEADER_LEN + SCHEMA_LEN + meta_block.len() + payload.len() + sign::TRAILER_LEN,
        );
        out.extend_from_slice(&head);
        if let Some(schema) = schema {
            out.extend_from_slice(&schema.to_le_bytes());
        }
        out.extend_from_slice(&meta_block);
        out.extend_from_slice(payload);
        self.keys.sign(storage_key, &mut out);
        Ok(out)
    }

    #[cfg(feature = "zstd")]
    fn maybe_compress(&self, raw: &[u8], header: &mut Header) -> Result<Option<Vec<u8>>> {
        let (Some(threshold), Some(zstd)) = (self.compress_above, &self.zstd) else {
            return Ok(None);
        };
        if raw.len() < threshold {
            return Ok(None);
        }
        let compressed = zstd.compress(raw).map_err(|e| Error::Encode {
            source: Box::new(e),
        })?;
        // Keep the smaller form: incompressible data is stored as it is.
        if compressed.len() >= raw.len() {
            return Ok(None);
        }
        header.flags |= FLAG_COMPRESSED;
        if zstd.has_dictionary() {
            header.flags |= FLAG_DICTIONARY;
            header.dictionary = self.dictionary_id;
        }
        Ok(Some(compressed))
    }

    #[cfg(not(feature = "zstd"))]
    fn maybe_compress(&self, _raw: &[u8], _header: &mut Header) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }

    /// Check a frame and return its header, metadata (creation time and tags, if the frame has
    /// them) and raw (decompressed, verified) payload.
    /// An uncompressed payload is borrowed from `bytes`, not copied.
    fn open<'a>(
        &self,
        bytes: &'a [u8],
        storage_key: &str,
    ) -> Result<(Header, Option<frame::Meta>, Cow<'a, [u8]>)> {
        let head: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| decode_error(DecodeErrorKind::Truncated))?;
        if head[0..2] != frame::MAGIC {
            return Err(decode_error(DecodeErrorKind::BadMagic));
        }
        if head[2] != frame::VERSION {
            return Err(decode_error(DecodeErrorKind::UnsupportedVersion(head[2])));
        }
        let header = Header::read(head);
        if header.flags & !KNOWN_FLAGS != 0 {
            return Err(decode_error(DecodeErrorKind::UnknownFlags(header.flags)));
        }
        // Before anything is decompressed or deserialized.
        let bytes = self
            .keys
            .verify(storage_key, bytes, header.flags & FLAG_SIGNED != 0)?;
        if header.format != self.format.id() {
            return Err(decode_error(DecodeErrorKind::FormatMismatch {
                expected: self.format.id(),
                found: header.format,
            }));
        }
        let raw_len = header.raw_len as usize;
        if raw_len > self.max_value_bytes {
            return Err(decode_error(DecodeErrorKind::TooLarge {
                len: raw_len,
                max: self.max_value_bytes,
            }));
        }
        let (schema, payload) = if header.flags & FLAG_SCHEMA != 0 {
            let field = bytes
                .get(HEADER_LEN..HEADER_LEN + SCHEMA_LEN)
                .ok_or_else(|| decode_error(DecodeErrorKind::Truncated))?;
            let schema = u32::from_le_bytes([field[0], field[1], field[2], field[3]]);
            (Some(schema), &bytes[HEADER_LEN + SCHEMA_LEN..])
        } else {
            (None, &bytes[HEADER_LEN..])
        };
        let (meta, meta_bytes, payload) = if header.flags & FLAG_META != 0 {
            let (meta, len) = frame::read_meta_block(payload, header.flags & FLAG_ORDERED != 0)
                .ok_or_else(|| decode_error(DecodeErrorKind::Truncated))?;
            (Some(meta), &payload[..len], &payload[len..])
        } else if header.flags & FLAG_ORDERED != 0 {
            // The ordering time lives in the metadata block.
            return Err(decode_error(DecodeErrorKind::UnknownFlags(header.flags)));
        } else {
            (None, &payload[..0], payload)
        };
        let found_schema = schema.unwrap_or(0);
        if found_schema != self.schema {
            return Err(decode_error(DecodeErrorKind::SchemaMismatch {
                expected: self.schema,
                found: found_schema,
            }));
        }
        let raw = if header.flags & FLAG_COMPRESSED != 0 {
            Cow::Owned(self.decompress(&header, payload, raw_len)?)
        } else {
            if header.flags & FLAG_DICTIONARY != 0 {
                return Err(decode_error(DecodeErrorKind::UnknownFlags(header.flags)));
            }
            if payload.len() != raw_len {
                return Err(decode_error(DecodeErrorKind::LengthMismatch));
            }
            Cow::Borrowed(payload)
        };
        if frame::checksum(head, schema, meta_bytes, &raw) != header.checksum {
            return Err(decode_error(DecodeErrorKind::Checksum));
        }
        Ok((header, meta, raw))
    }

    #[cfg(feature = "zstd")]
    fn decompress(&self, header: &Header, payload: &[u8], raw_len: usize) -> Result<Vec<u8>> {
        let zstd = self
            .zstd
            .as_ref()
            .ok_or_else(|| decode_error(DecodeErrorKind::CompressionUnavailable))?;
        let wants_dictionary = header.flags & FLAG_DICTIONARY != 0;
        if wants_dictionary != zstd.has_dictionary()
            || (wants_dictionary && header.dictionary != self.dictionary_id)
        {
            return Err(decode_error(DecodeErrorKind::DictionaryMismatch {
                found: header.dictionary,
            }));
        }
        zstd.decompress(payload, raw_len)
            .map_err(|e| Error::Decode {
                kind: Box::new(DecodeErrorKind::Decompress),
                source: Some(Box::new(e)),
            })
    }

    #[cfg(not(feature = "zstd"))]
    fn decompress(&self, _header: &Header, _payload: &[u8], _raw_len: usize) -> Result<Vec<u8>> {
        Err(decode_error(DecodeErrorKind::CompressionUnavailable))
    }
}

fn decode_error(kind: DecodeErrorKind) -> Error {
    Error::Decode {
        kind: Box::new(kind),
        source: None,
    }
}

impl<V, F> ValueCodec<V> for Codec<F>
where
    V: Serialize + DeserializeOwned,
    F: Format,
{
    fn encode(&self, entry: &Entry<V>) -> Result<Vec<u8>> {
        self.encode_for_key("", entry)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Entry<V>> {
        self.decode_for_key("", bytes)
    }

    fn encode_for_key(&self, key: &str, entry: &Entry<V>) -> Result<Vec<u8>> {
        let format = &self.format;
        let verify = self.verify_writes;
        self.encode_parts(
            entry.value(),
            (entry.fresh_until_ms(), entry.stale_until_ms()),
            entry.load_duration(),
            (
                entry.created_us(),
                entry.tag_set().as_slice(),
                entry.ordered_us(),
            ),
            key,
            |raw| {
                if verify {
                    format
                        .deserialize::<V>(raw)
                        .map(drop)
                        .map_err(|error| Error::RoundTrip {
                            source: format!(
                                "{} could not read the value back: {error}",
                                format.name()
                            )
                            .into(),
                        })
                } else {
                    Ok(())
                }
            },
        )
    }

    fn decode_for_key(&self, key: &str, bytes: &[u8]) -> Result<Entry<V>> {
        let (header, meta, raw) = self.open(bytes, key)?;
        let value: V = self
            .format
            .deserialize(&raw)
            .map_err(|source| Error::Decode {
                kind: Box::new(DecodeErrorKind::Deserialize),
                source: Some(source),
            })?;
        let mut entry = Entry::from_ms(value, header.fresh_until_ms, header.stale_until_ms);
        entry = match meta {
            Some(meta) => {
                let mut entry = entry.with_created_us(meta.created_us);
                if let Some(at) = meta.ordered_us {
                    entry = entry.superseding_from_us(at);
                }
                if !meta.tags.is_empty() {
                    entry.set_tags(crate::tags::Tags::new(meta.tags));
                }
                entry
            }
            // Written before frames carried a creation time: older than any invalidation.
            None => entry.with_created_us(0),
        };
        Ok(if header.load_ms > 0 {
            entry.with_load_duration(Duration::from_millis(u64::from(header.load_ms)))
        } else {
            entry
        })
    }
}

/// Builds a [`Codec`]. Defaults: zstd level 3 for values of 1 KiB and more (with the `zstd`
/// feature; none without it), no dictionary, 64 MiB value limit, schema 0, every write verified.
#[must_use]
pub struct CodecBuilder<F> {
    format: F,
    max_value_bytes: usize,
    schema: u32,
    verify_writes: bool,
    compress_above: Option<usize>,
    zstd_level: i32,
    dictionary: Option<Vec<u8>>,
    keys: Vec<(u8, [u8; 32], bool)>,
}

// By hand: the signing keys are secrets.
impl<F: fmt::Debug> fmt::Debug for CodecBuilder<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key_ids: Vec<u8> = self.keys.iter().map(|(id, _, _)| *id).collect();
        f.debug_struct("CodecBuilder")
            .field("format", &self.format)
            .field("max_value_bytes", &self.max_value_bytes)
            .field("schema", &self.schema)
            .field("verify_writes", &self.verify_writes)
            .field("compress_above", &self.compress_above)
            .field("zstd_level", &self.zstd_level)
            .field("dictionary", &self.dictionary.as_ref().map(Vec::len))
            .field("signing_key_ids", &key_ids)
            .finish()
    }
}

impl<F: Format> CodecBuilder<F> {
    fn new(format: F) -> Self {
        CodecBuilder {
            format,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            schema: 0,
            verify_writes: true,
            compress_above: cfg!(feature = "zstd").then_some(DEFAULT_COMPRESS_ABOVE),
            zstd_level: DEFAULT_ZSTD_LEVEL,
            dictionary: None,
            keys: Vec::new(),
        }
    }

    /// Largest serialized value accepted, when encoding and when decoding (default 64 MiB, at most
    /// 4 GiB − 1). Decoding never allocates more than this for a value.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// The schema id of the values (default 0). Bump it when the value type changes in a way old
    /// readers cannot read: frames of another schema are a miss (counted, not deleted), so during
    /// a rolling deploy old and new replicas never misread or destroy each other's entries. A
    /// codec with schema 0 writes the same frames as earlier versions of this crate.
    ///
    /// ```
    /// # #[cfg(feature = "msgpack")] {
    /// use std::time::Duration;
    /// use layercache::codec::{Codec, ValueCodec};
    /// use layercache::{DecodeErrorKind, Entry, Error};
    ///
    /// let v1 = Codec::builder().schema(1).build().unwrap();
    /// let v2 = Codec::builder().schema(2).build().unwrap();
    /// let bytes = v1.encode(&Entry::new("reply".to_string(), Duration::from_secs(60))).unwrap();
    /// match ValueCodec::<String>::decode(&v2, &bytes) {
    ///     Err(Error::Decode { kind, .. }) => assert!(kind.is_foreign()),
    ///     other => panic!("{other:?}"),
    /// }
    /// # }
    /// ```
    pub fn schema(mut self, schema: u32) -> Self {
        self.schema = schema;
        self
    }

    /// Decode every value back right after serializing it, and refuse one that does not read
    /// back with [`Error::RoundTrip`] (default: on). It costs one decode per write — about as
    /// much as a cache hit on L2 costs to decode, and far less than the Redis round trip of the
    /// write. Turn it off only for types whose every value is known to round-trip.
    pub fn verify_writes(mut self, verify: bool) -> Self {
        self.verify_writes = verify;
        self
    }

    /// Compress serialized values of at least `bytes` (default 1 KiB). Needs the `zstd` feature.
    ///
    /// Compression trades CPU on every read for Redis memory and network: measured on a 2-core
    /// machine (BENCHMARKS.md, `codec_read`), a ~1 KB chat reply is stored in 55 % of its bytes
    /// at level 3 and its decode takes ~3 µs more (0.6 µs uncompressed), a good part of it a
    /// fixed cost per frame. Where reads are CPU-bound rather than network-bound, raise the
    /// threshold above your typical value, choose a fast level
    /// ([`zstd_level`](Self::zstd_level) −3), or train a [dictionary](Self::with_dictionary),
    /// which for ~1 KB values halves both the stored size and the decode time.
    pub fn compress_above(mut self, bytes: usize) -> Self {
        self.compress_above = Some(bytes);
        self
    }

    /// Never compress.
    pub fn no_compression(mut self) -> Self {
        self.compress_above = None;
        self
    }

    /// zstd compression level (default 3; zstd accepts negative "fast" levels up to 22).
    pub fn zstd_level(mut self, level: i32) -> Self {
        self.zstd_level = level;
        self
    }

    /// Compress with a trained zstd dictionary (see [`train_dictionary`]). Its id is recorded in
    /// each frame, and frames written with another dictionary are rejected, not misread. Every
    /// reader of the data must use the same dictionary.
    pub fn with_dictionary(mut self, dictionary: impl Into<Vec<u8>>) -> Self {
        self.dictionary = Some(dictionary.into());
        self
    }

    /// Sign every frame with `key` (a secret of 32 random bytes, shared by every replica) under
    /// the id `id`, and refuse every frame that is not signed by an accepted key: a value planted
    /// by anyone who can write to the Redis but lacks the key, or copied from another key or from
    /// a cache with other keys, is a miss — counted under
    /// `layercache_layer_errors_total{op="decode"}`, never served. The signature (a BLAKE3 keyed
    /// hash over the frame and the key it is stored under) adds 33 bytes to each value.
    ///
    /// To rotate: first give every replica the new key with
    /// [`accept_signing_key`](Self::accept_signing_key), then make it the signing key (the old one
    /// accepted) everywhere, then drop the old one once its values have expired. To start signing
    /// a fleet that did not, deploy the key as accepted first: a codec that accepts keys but signs
    /// with none also reads unsigned frames.
    ///
    /// ```
    /// # #[cfg(feature = "msgpack")] {
    /// use std::time::Duration;
    /// use layercache::codec::{Codec, ValueCodec};
    /// use layercache::{DecodeErrorKind, Entry, Error};
    ///
    /// let ours = Codec::builder().signing_key(1, [7; 32]).build().unwrap();
    /// let theirs = Codec::builder().signing_key(1, [9; 32]).build().unwrap();
    /// let entry = Entry::new("reply".to_string(), Duration::from_secs(60));
    /// let planted = theirs.encode_for_key("chat:1", &entry).unwrap();
    /// match ValueCodec::<String>::decode_for_key(&ours, "chat:1", &planted) {
    ///     Err(Error::Decode { kind, .. }) => assert_eq!(*kind, DecodeErrorKind::BadSignature),
    ///     other => panic!("{other:?}"),
    /// }
    /// // Our own frame verifies, but only under the key it was written for.
    /// let bytes = ours.encode_for_key("chat:1", &entry).unwrap();
    /// assert!(ValueCodec::<String>::decode_for_key(&ours, "chat:1", &bytes).is_ok());
    /// assert!(ValueCodec::<String>::decode_for_key(&ours, "chat:2", &bytes).is_err());
    /// # }
    /// ```
    pub fn signing_key(mut self, id: u8, key: [u8; 32]) -> Self {
        self.keys.push((id, key, true));
        self
    }

    /// Accept frames signed with `key` under `id` without signing with it (key rotation; see
    /// [`signing_key`](Self::signing_key)).
    pub fn accept_signing_key(mut self, id: u8, key: [u8; 32]) -> Self {
        self.keys.push((id, key, false));
        self
    }

    /// Build the codec.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a zero or over-4-GiB `max_value_bytes`, a format id of 0, a
    /// compression setting without the `zstd` feature, a level or dictionary zstd rejects (or an
    /// empty dictionary), a
    /// signing key of all zeros, two keys under one id, or two signing keys.
    pub fn build(self) -> Result<Codec<F>> {
        let mut keys = sign::Keys::default();
        for (id, key, signs) in &self.keys {
            keys.add(*id, *key, *signs)?;
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > u32::MAX as usize {
            return Err(Error::config(
                "max_value_bytes must be between 1 and 4 GiB - 1",
            ));
        }
        if self.format.id() == 0 {
            return Err(Error::config("format id 0 is reserved"));
        }
        if self.dictionary.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::config(
                "an empty zstd dictionary is not a dictionary (train one with train_dictionary)",
            ));
        }
        #[cfg(not(feature = "zstd"))]
        {
            if self.compress_above.is_some() || self.dictionary.is_some() {
                return Err(Error::config(
                    "compression needs the `zstd` feature of layercache",
                ));
            }
            Ok(Codec {
                format: self.format,
                max_value_bytes: self.max_value_bytes,
                schema: self.schema,
                verify_writes: self.verify_writes,
                compress_above: None,
                keys,
            })
        }
        #[cfg(feature = "zstd")]
        {
            let range = zstd::compression_level_range();
            if !range.contains(&self.zstd_level) {
                return Err(Error::config(format!(
                    "zstd level {} is outside {}..={}",
                    self.zstd_level,
                    range.start(),
                    range.end()
                )));
            }
            let dictionary_id = self.dictionary.as_deref().map_or(0, dictionary_id);
            let zstd = if self.compress_above.is_some() || self.dictionary.is_some() {
                Some(
                    compress::Zstd::new(self.zstd_level, self.dictionary)
                        .map_err(|e| Error::config(format!("zstd rejected the settings: {e}")))?,
                )
            } else {
                None
            };
            Ok(Codec {
                format: self.format,
                max_value_bytes: self.max_value_bytes,
                schema: self.schema,
                verify_writes: self.verify_writes,
                compress_above: self.compress_above.filter(|_| zstd.is_some()),
                keys,
                zstd,
                dictionary_id,
            })
        }
    }
}

/// A dictionary's id as recorded in frames: never 0 (which means "no dictionary").
#[cfg(feature = "zstd")]
fn dictionary_id(dictionary: &[u8]) -> u32 {
    let id = xxhash_rust::xxh3::xxh3_64(dictionary) as u32;
    id.max(1)
}

/// Train a zstd dictionary of at most `max_bytes` from sample serialized values (at least a few
/// dozen, ideally hundreds). Small values (around 1 KiB) of a similar shape compress much better
/// with one.
///
/// # Errors
///
/// [`Error::Config`] when zstd cannot train from the samples (too few or too small).
#[cfg(feature = "zstd")]
pub fn train_dictionary<S: AsRef<[u8]>>(samples: &[S], max_bytes: usize) -> Result<Vec<u8>> {
    zstd::dict::from_samples(samples, max_bytes)
        .map_err(|e| Error::config(format!("could not train a zstd dictionary: {e}")))
}
