//! Signed frames: a BLAKE3 keyed hash over the whole frame and the key it is stored under.
//!
//! The frame checksum catches corruption, not forgery: anyone who can write to the Redis can
//! write a well-formed frame every replica will serve. With signing keys (see
//! [`CodecBuilder::signing_key`](super::CodecBuilder::signing_key)) a frame carries flag bit 4 and
//! ends with a trailer:
//!
//! ```text
//!   1  key id
//!  32  BLAKE3 keyed hash (key = the signing key) of: the storage key's length (u64, little
//!      endian), the storage key, then every byte of the frame before the hash
//! ```
//!
//! The storage key is covered so that a signed value copied under another key (another user's
//! entry, another namespace) does not verify either. The trailer is checked before anything is
//! decompressed or deserialized, so a forger cannot make a reader inflate a zstd bomb.

use std::fmt;

use crate::error::{DecodeErrorKind, Error, Result};

/// Bytes of the trailer: key id and hash.
pub(crate) const TRAILER_LEN: usize = 1 + 32;

/// The keys of a codec: the one it signs with (if any) and every one it accepts.
#[derive(Clone, Default)]
pub(crate) struct Keys {
    signing: Option<u8>,
    accepted: Vec<(u8, [u8; 32])>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<u8> = self.accepted.iter().map(|(id, _)| *id).collect();
        f.debug_struct("SigningKeys")
            .field("signing", &self.signing)
            .field("accepted", &ids)
            .finish()
    }
}

impl Keys {
    /// Add `key` under `id`, signing with it when `sign`.
    pub(crate) fn add(&mut self, id: u8, key: [u8; 32], sign: bool) -> Result<()> {
        if key == [0; 32] {
            return Err(Error::config(
                "a signing key of all zero bytes is not a key",
            ));
        }
        match self.accepted.iter().find(|(known, _)| *known == id) {
            Some((_, existing)) if *existing != key => {
                return Err(Error::config(format!(
                    "signing key id {id} was given two different keys"
                )))
            }
            Some(_) => {}
            None => self.accepted.push((id, key)),
        }
        if sign {
            if self.signing.is_some_and(|current| current != id) {
                return Err(Error::config(
                    "only one signing key signs; accept the others",
                ));
            }
            self.signing = Some(id);
        }
        Ok(())
    }

    /// Whether frames are signed.
    pub(crate) fn signs(&self) -> bool {
        self.signing.is_some()
    }

    fn key(&self, id: u8) -> Option<&[u8; 32]> {
        self.accepted
            .iter()
            .find(|(known, _)| *known == id)
            .map(|(_, key)| key)
    }

    /// Append the trailer to the complete frame `out` (its flags already say "signed").
    pub(crate) fn sign(&self, storage_key: &str, out: &mut Vec<u8>) {
        let Some(id) = self.signing else { return };
        let Some(key) = self.key(id) else { return };
        out.push(id);
        let hash = mac(key, storage_key, out);
        out.extend_from_slice(hash.as_bytes());
    }

    /// Check `bytes` (a frame whose flags say `signed`) and return it without its trailer.
    ///
    /// * signing: only signed frames that verify are accepted;
    /// * accepting only (keys but none to sign with, while a fleet rolls signing out): signed
    ///   frames must verify, unsigned ones are accepted;
    /// * no keys: signed frames are refused (they cannot be checked).
    pub(crate) fn verify<'a>(
        &self,
        storage_key: &str,
        bytes: &'a [u8],
        signed: bool,
    ) -> Result<&'a [u8]> {
        if !signed {
            return if self.signs() {
                Err(bad_signature())
            } else {
                Ok(bytes)
            };
        }
        let split = bytes
            .len()
            .checked_sub(TRAILER_LEN)
            .ok_or_else(bad_signature)?;
        let (frame, trailer) = bytes.split_at(split);
        let key = self.key(trailer[0]).ok_or_else(bad_signature)?;
        let hash = mac(key, storage_key, &bytes[..split + 1]);
        // `blake3::Hash` compares in constant time.
        let given = blake3::Hash::from_bytes(trailer[1..].try_into().map_err(|_| bad_signature())?);
        if hash == given {
            Ok(frame)
        } else {
            Err(bad_signature())
        }
    }
}

fn mac(key: &[u8; 32], storage_key: &str, signed: &[u8]) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new_keyed(key);
    hasher.update(&(storage_key.len() as u64).to_le_bytes());
    hasher.update(storage_key.as_bytes());
    hasher.update(signed);
    hasher.finalize()
}

fn bad_signature() -> Error {
    Error::Decode {
        kind: Box::new(DecodeErrorKind::BadSignature),
        source: None,
    }
}
