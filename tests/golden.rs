//! Format stability: frames written by released versions (files under `tests/golden/`) still
//! decode to the same value; frames of an unknown version or magic decode as a miss.

#![cfg(all(feature = "postcard", feature = "zstd"))]

use std::time::{Duration, UNIX_EPOCH};

use layercache::codec::{Codec, ValueCodec};
use layercache::{DecodeErrorKind, Entry, Error};

const FRESH_MS: u64 = 1_800_000_000_000;
const STALE_MS: u64 = 1_800_000_060_000;

fn decode(name: &str) -> layercache::Result<Entry<(String, u32)>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    Codec::with_format(layercache::codec::Postcard)
        .build()
        .expect("codec")
        .decode(&bytes)
}

#[test]
fn v1_frames_still_decode() {
    let plain = decode("v1-postcard-plain.frame").expect("v1 plain");
    assert_eq!(plain.value(), &("hello".to_string(), 42));
    assert_eq!(
        plain.fresh_until(),
        UNIX_EPOCH + Duration::from_millis(FRESH_MS)
    );
    assert_eq!(
        plain.stale_until(),
        UNIX_EPOCH + Duration::from_millis(STALE_MS)
    );

    let zstd = decode("v1-postcard-zstd.frame").expect("v1 zstd");
    assert_eq!(zstd.value(), &(["hello"; 8].join(" "), 42));
    assert_eq!(
        zstd.stale_until(),
        UNIX_EPOCH + Duration::from_millis(STALE_MS)
    );
}

#[test]
fn unknown_versions_and_magic_are_rejected() {
    match decode("unknown-version-2.frame") {
        Err(Error::Decode { kind, .. }) if *kind == DecodeErrorKind::UnsupportedVersion(2) => {}
        other => panic!("expected UnsupportedVersion(2), got {other:?}"),
    }
    match decode("unknown-magic.frame") {
        Err(Error::Decode { kind, .. }) if *kind == DecodeErrorKind::BadMagic => {}
        other => panic!("expected BadMagic, got {other:?}"),
    }
}

const CREATED_MS: u64 = 1_799_999_000_000;

#[test]
fn frames_without_metadata_read_as_created_at_the_epoch_and_untagged() {
    let plain = decode("v1-postcard-plain.frame").expect("v1 plain");
    assert_eq!(plain.created_at(), UNIX_EPOCH);
    assert_eq!(plain.tags().count(), 0);
}

#[test]
fn frames_with_metadata_still_decode() {
    let meta = decode("v1-postcard-meta.frame").expect("v1 with metadata");
    assert_eq!(meta.value(), &("hello".to_string(), 42));
    assert_eq!(
        meta.created_at(),
        UNIX_EPOCH + Duration::from_millis(CREATED_MS)
    );
    assert_eq!(meta.tags().collect::<Vec<_>>(), ["doc:9", "user:1"]);
    assert_eq!(
        meta.stale_until(),
        UNIX_EPOCH + Duration::from_millis(STALE_MS)
    );
}

/// The expired copy a `Layered::expire` leaves in Redis (flag bit 6, since 0.2): the metadata
/// frame's entry, ordered at the expire's time for the conditional writes (where they read it,
/// the first metadata field), its own creation time after the tags.
#[test]
fn ordered_frames_keep_the_values_own_creation_time() {
    let ordered = decode("v1-postcard-ordered.frame").expect("v1 ordered");
    assert_eq!(ordered.value(), &("hello".to_string(), 42));
    assert_eq!(
        ordered.created_at(),
        UNIX_EPOCH + Duration::from_millis(CREATED_MS)
    );
    assert_eq!(ordered.tags().collect::<Vec<_>>(), ["doc:9", "user:1"]);
    assert_eq!(
        ordered.stale_until(),
        UNIX_EPOCH + Duration::from_millis(STALE_MS)
    );
    let bytes = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/v1-postcard-ordered.frame"),
    )
    .expect("read golden");
    let at = u64::from_le_bytes(bytes[41..49].try_into().expect("8 bytes"));
    assert_eq!(at, 1_800_000_000_000_000, "the time the scripts compare");
}

#[test]
fn the_current_encoder_still_writes_the_v1_metadata_frame() {
    let entry = Entry::with_deadlines(
        ("hello".to_string(), 42u32),
        UNIX_EPOCH + Duration::from_millis(FRESH_MS),
        UNIX_EPOCH + Duration::from_millis(STALE_MS),
    )
    .with_created_at(UNIX_EPOCH + Duration::from_millis(CREATED_MS))
    .with_tags(["user:1", "doc:9"]);
    let bytes = Codec::with_format(layercache::codec::Postcard)
        .no_compression()
        .build()
        .expect("codec")
        .encode(&entry)
        .expect("encode");
    if std::env::var_os("LAYERCACHE_WRITE_GOLDEN").is_some() {
        std::fs::write(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/golden/v1-postcard-meta.frame"),
            &bytes,
        )
        .expect("write golden");
    }
    let golden = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/v1-postcard-meta.frame"),
    )
    .expect("read golden");
    assert_eq!(
        bytes, golden,
        "the frame layout changed: bump the frame version and add golden files"
    );
}

/// The signed frame (flag bit 4, trailer of key id + BLAKE3 keyed hash) is pinned too: the
/// metadata frame's entry, signed with key id 7 = [0x42; 32] for the storage key `ns:chat:1`.
#[test]
fn signed_frames_are_pinned_and_bound_to_key_and_signing_key() {
    let entry = Entry::with_deadlines(
        ("hello".to_string(), 42u32),
        UNIX_EPOCH + Duration::from_millis(FRESH_MS),
        UNIX_EPOCH + Duration::from_millis(STALE_MS),
    )
    .with_created_at(UNIX_EPOCH + Duration::from_millis(CREATED_MS))
    .with_tags(["user:1", "doc:9"]);
    let signing = |key: [u8; 32]| {
        Codec::with_format(layercache::codec::Postcard)
            .no_compression()
            .signing_key(7, key)
            .build()
            .expect("codec")
    };
    let codec = signing([0x42; 32]);
    let bytes = codec.encode_for_key("ns:chat:1", &entry).expect("encode");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/v1-postcard-signed.frame");
    if std::env::var_os("LAYERCACHE_WRITE_GOLDEN").is_some() {
        std::fs::write(&path, &bytes).expect("write golden");
    }
    let golden = std::fs::read(&path).expect("read golden");
    assert_eq!(
        bytes, golden,
        "the signed frame layout changed: bump the frame version and add golden files"
    );
    let back: Entry<(String, u32)> = codec.decode_for_key("ns:chat:1", &golden).expect("decode");
    assert_eq!(back.value(), &("hello".to_string(), 42));
    // Another storage key (another namespace), another signing key, no key at all: refused.
    let refused = |result: layercache::Result<Entry<(String, u32)>>| matches!(result, Err(Error::Decode { kind, .. }) if *kind == DecodeErrorKind::BadSignature);
    assert!(refused(codec.decode_for_key("other-ns:chat:1", &golden)));
    assert!(refused(
        signing([0x43; 32]).decode_for_key("ns:chat:1", &golden)
    ));
    let unsigned = Codec::with_format(layercache::codec::Postcard)
        .no_compression()
        .build()
        .expect("codec");
    assert!(refused(unsigned.decode_for_key("ns:chat:1", &golden)));
}
