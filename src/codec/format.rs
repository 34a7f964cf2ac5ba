//! Serde formats a [`Codec`](super::Codec) can write, and the [`Format`] trait to add your own.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::BoxError;

/// A serde data format, identified in every frame by its [`id`](Format::id) so that a reader
/// never guesses how a value was written.
///
/// Ids 1–127 are reserved for formats built into `layercache`; pick an id of 128 or above for
/// your own. Id 0 is invalid.
///
/// ```
/// use layercache::codec::Format;
/// use layercache::BoxError;
///
/// /// JSON written by a hand-rolled serializer, under a custom id.
/// #[derive(Debug)]
/// struct MyJson;
///
/// impl Format for MyJson {
///     fn id(&self) -> u8 { 200 }
///     fn name(&self) -> &'static str { "my-json" }
///     fn serialize<T: serde::Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>) -> Result<(), BoxError> {
/// #       let _ = (value, out);
///         // write `value` into `out`
///         Ok(())
///     }
///     fn deserialize<T: serde::de::DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, BoxError> {
/// #       let _ = bytes;
///         Err("not implemented in this example".into())
///     }
/// }
/// ```
pub trait Format: Debug + Send + Sync + 'static {
    /// The id written into each frame (1–127 built-in, 128–255 user-defined).
    fn id(&self) -> u8;

    /// A short name for messages and metrics.
    fn name(&self) -> &'static str;

    /// Append the serialized `value` to `out`.
    fn serialize<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), BoxError>;

    /// Read a value from exactly `bytes`.
    fn deserialize<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, BoxError>;
}

/// [postcard](https://docs.rs/postcard): compact and fast, but **not self-describing**. Format id 1.
///
/// postcard cannot read back `#[serde(skip_serializing_if)]` fields, `serde_json::Value`,
/// internally tagged or untagged enums, or `#[serde(flatten)]`. Use it only for types known to
/// suit it; a [`Codec`](super::Codec) refuses at write time a value that does not read back.
#[cfg(feature = "postcard")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

#[cfg(feature = "postcard")]
impl Format for Postcard {
    fn id(&self) -> u8 {
        1
    }
    fn name(&self) -> &'static str {
        "postcard"
    }
    fn serialize<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), BoxError> {
        let buf = std::mem::take(out);
        *out = postcard::to_extend(value, buf)?;
        Ok(())
    }
    fn deserialize<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, BoxError> {
        let (value, rest) = postcard::take_from_bytes(bytes)?;
        if rest.is_empty() {
            Ok(value)
        } else {
            Err(format!("{} trailing bytes after the value", rest.len()).into())
        }
    }
}

/// JSON via serde_json, for readers in other languages. Format id 2.
#[cfg(feature = "json")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

#[cfg(feature = "json")]
impl Format for Json {
    fn id(&self) -> u8 {
        2
    }
    fn name(&self) -> &'static str {
        "json"
    }
    fn serialize<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), BoxError> {
        serde_json::to_writer(out, value)?;
        Ok(())
    }
    fn deserialize<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, BoxError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// MessagePack via rmp-serde, with structs as maps of field names: self-describing, so it reads
/// back nearly everything serde expresses, and other languages can read it. The default. Format
/// id 3.
///
/// What it cannot tell apart (nor can JSON): `None` and `Some(None)` of an `Option<Option<T>>`
/// are both written as nil and read back as `None`. Give such a field a serde adapter that
/// reads nil as `Some(None)` (as `serde_with`'s `double_option` does, with `default` and
/// `skip_serializing_if` for the outer `None`), or use `Postcard` (feature `postcard`), which
/// keeps the two apart.
#[cfg(feature = "msgpack")]
#[derive(Debug, Clone, Copy, Default)]
pub struct MessagePack;

#[cfg(feature = "msgpack")]
impl Format for MessagePack {
    fn id(&self) -> u8 {
        3
    }
    fn name(&self) -> &'static str {
        "msgpack"
    }
    fn serialize<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), BoxError> {
        rmp_serde::encode::write_named(out, value)?;
        Ok(())
    }
    fn deserialize<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, BoxError> {
        Ok(rmp_serde::from_slice(bytes)?)
    }
}

/// bincode 2.0.x (standard configuration), to read values written by older services. Format id 4.
///
/// bincode is unmaintained upstream: its last release, 3.0.0, is a `compile_error!`, and
/// RUSTSEC-2025-0141 marks it unmaintained. Use [`MessagePack`] (the default) for new data.
#[cfg(feature = "bincode")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Bincode;

#[cfg(feature = "bincode")]
impl Format for Bincode {
    fn id(&self) -> u8 {
        4
    }
    fn name(&self) -> &'static str {
        "bincode"
    }
    fn serialize<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), BoxError> {
        bincode::serde::encode_into_std_write(value, out, bincode::config::standard())?;
        Ok(())
    }
    fn deserialize<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, BoxError> {
        let (value, read) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())?;
        if read == bytes.len() {
            Ok(value)
        } else {
            Err(format!("{} trailing bytes after the value", bytes.len() - read).into())
        }
    }
}
