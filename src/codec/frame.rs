//! The frame around every value a byte layer stores.
//!
//! ```text
//! offset size field
//!      0    2 magic "LC"
//!      2    1 frame version (1)
//!      3    1 flags: bit 0 compressed (zstd), bit 1 dictionary, bit 2 schema id, bit 3
//!             metadata, bit 4 signed, bit 5 tombstone, bit 6 ordered (both below); bit 7
//!             must be 0
//!      4    1 format id (see `Format::id`)
//!      5    8 fresh_until, ms since the Unix epoch (little endian, as all integers here)
//!     13    8 stale_until, ms since the Unix epoch
//!     21    4 load duration of the value, ms (0 = unknown)
//!     25    4 dictionary id (0 = none)
//!     29    4 raw length: bytes of the serialized value before compression
//!     33    8 checksum: xxh3-64 of bytes 0..33, the schema id if present, and the raw value
//!     41    4 schema id, only when flag bit 2 is set (see `CodecBuilder::schema`)
//!      …      metadata, only when flag bit 3 is set:
//!           8   created, µs since the Unix epoch (with bit 6: the time the frame is ordered at)
//!           1   number of tags (at most 32)
//!           …   each tag: 1 byte length, then its UTF-8 bytes (1 to 255)
//!           8   only with bit 6: created, µs since the Unix epoch
//!      …    … payload: the serialized value, zstd-compressed when bit 0 is set
//!      …   33 signature trailer, only when flag bit 4 is set: key id, then a BLAKE3 keyed hash
//!             (see `sign.rs`)
//! ```
//!
//! The schema id is optional so that a codec with the default schema (0) writes the same
//! header as earlier versions. The metadata block (creation time and tags, which `clear()`, tag
//! invalidation and the safe catch-up after an L2 outage compare) is written on every frame since
//! 0.2; frames without it (golden files in `tests/golden/` prove they still decode) read as
//! created at the Unix epoch, untagged.
//!
//! A **tombstone** marks a key a `delete_if_older` emptied (see `redis::TOMBSTONE_TTL`): flags
//! metadata + tombstone, format 0, both deadlines and the creation time the delete's, no tags,
//! an empty payload. Read, it is a miss; the conditional writes compare its creation time like
//! any frame's, so a value read before the delete cannot be written after it. Codecs never see
//! one (its flag is unknown to them: to an earlier version it is a foreign frame, a miss).
//!
//! An **ordered** frame (bit 6) is an expired copy that stands in for an `expire`: the value it
//! read, with its own creation time (after the tags), placed in the conditional writes' order at
//! the expire's time (the first metadata field, where the scripts read it). A value read before
//! the expire (a load on another replica that has not heard of it yet) is then older than what
//! Redis holds and is kept out, while the value's age and its tags' checks stay its own. Written
//! only when that time is after the creation time; to an earlier version it is a foreign frame.
//!
//! The checksum covers the header as well as the value, so a flipped bit in a deadline is caught
//! as surely as one in the payload. (zstd without a content checksum decodes many corrupted frames
//! into wrong bytes without complaint.)

use xxhash_rust::xxh3::Xxh3;

pub(crate) const MAGIC: [u8; 2] = *b"LC";
pub(crate) const VERSION: u8 = 1;
pub(crate) const HEADER_LEN: usize = 41;
pub(crate) const CHECKED_LEN: usize = 33;

pub(crate) const FLAG_COMPRESSED: u8 = 0b01;
pub(crate) const FLAG_DICTIONARY: u8 = 0b10;
pub(crate) const FLAG_SCHEMA: u8 = 0b100;
pub(crate) const FLAG_META: u8 = 0b1000;
pub(crate) const FLAG_SIGNED: u8 = 0b1_0000;
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) const FLAG_TOMBSTONE: u8 = 0b10_0000;
/// The frame is ordered at the time in its metadata, and created at the time after its tags.
pub(crate) const FLAG_ORDERED: u8 = 0b100_0000;
pub(crate) const KNOWN_FLAGS: u8 =
    FLAG_COMPRESSED | FLAG_DICTIONARY | FLAG_SCHEMA | FLAG_META | FLAG_SIGNED | FLAG_ORDERED;
/// Bytes the schema id adds after the header when [`FLAG_SCHEMA`] is set.
pub(crate) const SCHEMA_LEN: usize = 4;

/// The parsed fixed part of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) flags: u8,
    pub(crate) format: u8,
    pub(crate) fresh_until_ms: u64,
    pub(crate) stale_until_ms: u64,
    pub(crate) load_ms: u32,
    pub(crate) dictionary: u32,
    pub(crate) raw_len: u32,
    pub(crate) checksum: u64,
}

impl Header {
    /// Writes the header (with `checksum` as given) into the first `HEADER_LEN` bytes of `out`.
    pub(crate) fn write(&self, out: &mut [u8; HEADER_LEN]) {
        out[0..2].copy_from_slice(&MAGIC);
        out[2] = VERSION;
        out[3] = self.flags;
        out[4] = self.format;
        out[5..13].copy_from_slice(&self.fresh_until_ms.to_le_bytes());
        out[13..21].copy_from_slice(&self.stale_until_ms.to_le_bytes());
        out[21..25].copy_from_slice(&self.load_ms.to_le_bytes());
        out[25..29].copy_from_slice(&self.dictionary.to_le_bytes());
        out[29..33].copy_from_slice(&self.raw_len.to_le_bytes());
        out[33..41].copy_from_slice(&self.checksum.to_le_bytes());
    }

    /// Reads the fixed fields; magic and version are checked by the caller first.
    pub(crate) fn read(bytes: &[u8; HEADER_LEN]) -> Header {
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(b)
        };
        Header {
            flags: bytes[3],
            format: bytes[4],
            fresh_until_ms: u64_at(5),
            stale_until_ms: u64_at(13),
            load_ms: u32_at(21),
            dictionary: u32_at(25),
            raw_len: u32_at(29),
            checksum: u64_at(33),
        }
    }
}

/// xxh3-64 over the checked header bytes, the schema id (when the frame has one), the metadata
/// block (when it has one) and the raw serialized value.
pub(crate) fn checksum(
    header: &[u8; HEADER_LEN],
    schema: Option<u32>,
    meta: &[u8],
    raw: &[u8],
) -> u64 {
    let mut h = Xxh3::new();
    h.update(&header[..CHECKED_LEN]);
    if let Some(schema) = schema {
        h.update(&schema.to_le_bytes());
    }
    h.update(meta);
    h.update(raw);
    h.digest()
}

/// The metadata block: creation time and tags (validated by the caller: at most 32 tags of 1 to
/// 255 bytes).
pub(crate) fn write_meta(created_us: u64, tags: &[Box<str>], out: &mut Vec<u8>) {
    out.extend_from_slice(&created_us.to_le_bytes());
    out.push(tags.len() as u8);
    for tag in tags {
        out.push(tag.len() as u8);
        out.extend_from_slice(tag.as_bytes());
    }
}

/// A frame's metadata block, parsed: creation time (µs), tags, and the time the frame is
/// ordered at when that is later (bit 6, see the module docs).
pub(crate) struct Meta {
    pub(crate) created_us: u64,
    pub(crate) tags: Vec<String>,
    pub(crate) ordered_us: Option<u64>,
}

/// Write the metadata block of an entry created at `created_us`, tagged `tags` (validated by
/// the caller) and ordered at `ordered_us`; whether the frame is an ordered one (flag bit 6:
/// `ordered_us` after `created_us`).
pub(crate) fn write_meta_block(
    (created_us, tags, ordered_us): (u64, &[Box<str>], u64),
    out: &mut Vec<u8>,
) -> bool {
    if ordered_us > created_us {
        write_meta(ordered_us, tags, out);
        out.extend_from_slice(&created_us.to_le_bytes());
        true
    } else {
        write_meta(created_us, tags, out);
        false
    }
}

/// Parse the metadata block at the start of `bytes` (of an ordered frame: `ordered`): it and
/// its length, or `None` if it is truncated or not UTF-8.
pub(crate) fn read_meta_block(bytes: &[u8], ordered: bool) -> Option<(Meta, usize)> {
    let (time, tags, len) = read_meta(bytes)?;
    if !ordered {
        let meta = Meta {
            created_us: time,
            tags,
            ordered_us: None,
        };
        return Some((meta, len));
    }
    let created = u64::from_le_bytes(bytes.get(len..len + 8)?.try_into().ok()?);
    let meta = Meta {
        created_us: created,
        tags,
        ordered_us: Some(time),
    };
    Some((meta, len + 8))
}

/// Parse a metadata block at the start of `bytes`: (created, tags, its length), or `None` if it
/// is truncated or not UTF-8.
pub(crate) fn read_meta(bytes: &[u8]) -> Option<(u64, Vec<String>, usize)> {
    let created = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let count = *bytes.get(8)? as usize;
    let mut at = 9;
    let mut tags = Vec::with_capacity(count);
    for _ in 0..count {
        let len = *bytes.get(at)? as usize;
        let tag = std::str::from_utf8(bytes.get(at + 1..at + 1 + len)?).ok()?;
        tags.push(tag.to_owned());
        at += 1 + len;
    }
    Some((created, tags, at))
}

#[cfg(feature = "redis")]
/// The raw (serialized, uncompressed) length a frame declares, if `bytes` starts like a frame.
pub(crate) fn declared_raw_len(bytes: &[u8]) -> Option<u32> {
    let field = bytes.get(29..33)?;
    (bytes.get(0..2)? == MAGIC)
        .then(|| u32::from_le_bytes([field[0], field[1], field[2], field[3]]))
}

#[cfg(feature = "redis")]
/// The creation time (µs) a version-1 frame records in its metadata block (an ordered frame's:
/// the time it is ordered at, the one the scripts compare), read without
/// checking the rest of the frame (for a frame this codec cannot decode: another deployment's);
/// `None` for anything else, or a frame without the block.
pub(crate) fn frame_created_us(bytes: &[u8]) -> Option<u64> {
    if bytes.get(0..2)? != MAGIC || *bytes.get(2)? != VERSION {
        return None;
    }
    let flags = *bytes.get(3)?;
    if flags & FLAG_META == 0 {
        return None;
    }
    let at = HEADER_LEN + if flags & FLAG_SCHEMA != 0 { 4 } else { 0 };
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(feature = "redis")]
/// The tombstone of a delete made at `created_us` (µs since the Unix epoch): 50 bytes.
pub(crate) fn tombstone(created_us: u64) -> Vec<u8> {
    let created_ms = created_us / 1_000;
    let mut header = Header {
        flags: FLAG_META | FLAG_TOMBSTONE,
        format: 0,
        fresh_until_ms: created_ms,
        stale_until_ms: created_ms,
        load_ms: 0,
        dictionary: 0,
        raw_len: 0,
        checksum: 0,
    };
    let mut meta = Vec::with_capacity(9);
    write_meta(created_us, &[], &mut meta);
    let mut head = [0u8; HEADER_LEN];
    header.write(&mut head);
    header.checksum = checksum(&head, None, &meta, &[]);
    header.write(&mut head);
    let mut out = Vec::with_capacity(HEADER_LEN + meta.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(&meta);
    out
}

#[cfg(feature = "redis")]
/// Whether `bytes` is an intact tombstone (see the module docs): a miss. A frame whose flags a
/// flipped bit made look like one is not (its length or checksum differs): it stays corrupted.
pub(crate) fn is_tombstone(bytes: &[u8]) -> bool {
    const LEN: usize = HEADER_LEN + 9;
    let Some(head) = bytes
        .get(..HEADER_LEN)
        .and_then(|h| <&[u8; HEADER_LEN]>::try_from(h).ok())
    else {
        return false;
    };
    bytes.len() == LEN
        && starts_like_tombstone(bytes)
        && checksum(head, None, &bytes[HEADER_LEN..], &[]) == Header::read(head).checksum
}

#[cfg(feature = "redis")]
/// Whether `head` (a value's first 4 bytes or more) starts as a tombstone does.
pub(crate) fn starts_like_tombstone(head: &[u8]) -> bool {
    head.get(0..2) == Some(&MAGIC[..])
        && head.get(2) == Some(&VERSION)
        && head.get(3) == Some(&(FLAG_META | FLAG_TOMBSTONE))
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::*;

    #[test]
    fn a_tombstone_records_its_time_where_the_write_scripts_read_it() {
        let created_us = 1_764_000_000_123_456;
        let stone = tombstone(created_us);
        assert_eq!(stone.len(), 50);
        assert!(is_tombstone(&stone));
        // Where the Lua scripts and `frame_created_us` read a frame's creation time.
        assert_eq!(frame_created_us(&stone), Some(created_us));
        assert_eq!(stone[3] % 16 / 8, 1, "the scripts' metadata test");
        let header = Header::read(stone[..HEADER_LEN].try_into().expect("header"));
        assert_eq!(header.stale_until_ms, created_us / 1_000);
        assert_eq!(header.raw_len, 0);
        assert_eq!(
            checksum(
                stone[..HEADER_LEN].try_into().expect("header"),
                None,
                &stone[HEADER_LEN..],
                &[]
            ),
            header.checksum
        );
        // A value's frame, or anything else, is not one.
        assert!(!is_tombstone(b"LC"));
        assert!(!is_tombstone(b"plain value"));
        let mut other = stone.clone();
        other[3] = FLAG_META;
        assert!(!is_tombstone(&other));
        // Any flipped bit: no longer an intact tombstone.
        for bit in 0..stone.len() * 8 {
            let mut flipped = stone.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(!is_tombstone(&flipped), "bit {bit}");
        }
        assert!(starts_like_tombstone(&stone[..4]));
    }

    #[test]
    fn the_tombstone_format_is_pinned() {
        // tests/golden/v1-tombstone.frame: the tombstone of a delete at 1,800,000,000,000,000 µs.
        let golden = include_bytes!("../../tests/golden/v1-tombstone.frame");
        assert_eq!(tombstone(1_800_000_000_000_000), golden.to_vec());
        assert!(is_tombstone(golden));
    }
}

#[cfg(all(test, feature = "postcard", feature = "zstd"))]
mod ordered_tests {
    use super::*;
    use crate::codec::{Codec, Postcard, ValueCodec};
    use crate::entry::Entry;
    use std::time::{Duration, UNIX_EPOCH};

    /// The expired copy an `expire` leaves: the golden metadata frame's entry (tests/golden.rs),
    /// expired and ordered at 1,800,000,000,000,000 µs.
    fn ordered_entry() -> Entry<(String, u32)> {
        Entry::with_deadlines(
            ("hello".to_string(), 42u32),
            UNIX_EPOCH + Duration::from_millis(1_800_000_000_000),
            UNIX_EPOCH + Duration::from_millis(1_800_000_060_000),
        )
        .with_created_at(UNIX_EPOCH + Duration::from_millis(1_799_999_000_000))
        .with_tags(["user:1", "doc:9"])
        .superseding_from_us(1_800_000_000_000_000)
    }

    #[test]
    fn an_ordered_frame_is_pinned_and_keeps_both_times() {
        let codec = Codec::with_format(Postcard)
            .no_compression()
            .build()
            .expect("codec");
        let entry = ordered_entry();
        let bytes = codec.encode(&entry).expect("encode");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/v1-postcard-ordered.frame");
        if std::env::var_os("LAYERCACHE_WRITE_GOLDEN").is_some() {
            std::fs::write(&path, &bytes).expect("write golden");
        }
        let golden = std::fs::read(&path).expect("read golden");
        assert_eq!(bytes, golden, "the ordered frame's layout changed");
        assert_eq!(bytes[3], FLAG_META | FLAG_ORDERED);
        // Where the scripts read the time they compare: the expire's.
        #[cfg(feature = "redis")]
        assert_eq!(frame_created_us(&bytes), Some(1_800_000_000_000_000));
        let back: Entry<(String, u32)> = codec.decode(&bytes).expect("decode");
        assert_eq!(back, entry);
        assert_eq!(back.created_us(), 1_799_999_000_000_000);
        assert_eq!(back.ordered_us(), 1_800_000_000_000_000);
        // The creation time after the tags is checked like the rest.
        let mut flipped = bytes.clone();
        let at = flipped.len() - 7 - 8;
        flipped[at] ^= 1;
        let broken: crate::error::Result<Entry<(String, u32)>> = codec.decode(&flipped);
        assert!(broken.is_err());
        // Not ordered after its creation: a plain frame.
        let plain =
            ordered_entry().with_created_at(UNIX_EPOCH + Duration::from_secs(1_800_000_001));
        assert_eq!(codec.encode(&plain).expect("encode")[3], FLAG_META);
    }
}
