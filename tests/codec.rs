//! The codec: every format round-trips; corrupted, truncated, foreign and malicious bytes are
//! rejected (never a panic, never wrong data); golden frames of version 1 still decode.
//! Compiled with the default `postcard` format (the other formats are checked beside it).

#![cfg(feature = "postcard")]

mod support;

use std::time::Duration;

use layercache::codec::{Codec, Format, ValueCodec};
use layercache::{DecodeErrorKind, Entry, Error};
use support::chat::{reply, ChatReply};
use support::frames::frame;
#[cfg(feature = "zstd")]
use support::frames::zstd_bomb;

fn entry(seed: u64, bytes: usize) -> Entry<ChatReply> {
    Entry::new(reply(seed, bytes), Duration::from_secs(60))
        .with_max_stale(Duration::from_secs(600))
        .with_load_duration(Duration::from_millis(1234))
}

fn assert_same(a: &Entry<ChatReply>, b: &Entry<ChatReply>) {
    assert_eq!(a.value(), b.value());
    assert_eq!(a.fresh_until(), b.fresh_until());
    assert_eq!(a.stale_until(), b.stale_until());
    assert_eq!(a.load_duration(), b.load_duration());
}

/// Decode as chat replies.
fn dec<F: Format>(codec: &Codec<F>, bytes: &[u8]) -> layercache::Result<Entry<ChatReply>> {
    codec.decode(bytes)
}

fn kind(err: Error) -> DecodeErrorKind {
    match err {
        Error::Decode { kind, .. } => *kind,
        other => panic!("expected a decode error, got {other:?}"),
    }
}

fn round_trip<F: Format + Clone>(format: F) {
    let plain = Codec::with_format(format.clone())
        .no_compression()
        .build()
        .expect("valid");
    for (seed, size) in [(1, 200), (2, 4096), (3, 64 * 1024)] {
        let e = entry(seed, size);
        let bytes = plain.encode(&e).expect("encode");
        assert_eq!(bytes[3] & 1, 0, "{}: not compressed", format.name());
        assert_same(&dec(&plain, &bytes).expect("decode"), &e);
    }
    #[cfg(feature = "zstd")]
    {
        let zstd = Codec::with_format(format.clone())
            .compress_above(1024)
            .build()
            .expect("valid");
        let small = entry(4, 200);
        let bytes = zstd.encode(&small).expect("encode");
        assert_eq!(bytes[3] & 1, 0, "below the threshold stays uncompressed");
        assert_same(&dec(&zstd, &bytes).expect("decode"), &small);
        let big = entry(5, 4096);
        let bytes = zstd.encode(&big).expect("encode");
        assert_eq!(bytes[3] & 1, 1, "{}: compressed", format.name());
        assert!(bytes.len() < plain.encode(&big).expect("encode").len());
        assert_same(&dec(&zstd, &bytes).expect("decode"), &big);
    }
}

#[test]
fn every_format_round_trips_with_and_without_compression() {
    #[cfg(feature = "postcard")]
    round_trip(layercache::codec::Postcard);
    #[cfg(feature = "json")]
    round_trip(layercache::codec::Json);
    #[cfg(feature = "msgpack")]
    round_trip(layercache::codec::MessagePack);
    #[cfg(feature = "bincode")]
    round_trip(layercache::codec::Bincode);
}

/// What the module docs promise of the default format: `flatten` (with the rest of a reply's
/// fields kept as JSON), adjacently tagged enums and 128-bit integers read back; the one thing
/// it documents it cannot keep apart is `Some(None)` from `None`.
#[cfg(feature = "msgpack")]
#[test]
fn message_pack_reads_back_flatten_and_documents_double_options() {
    use std::collections::HashMap;

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Usage {
        prompt_tokens: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        cached_tokens: Option<u32>,
    }
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(tag = "kind", content = "data")]
    enum Finish {
        Stop,
        Length { limit: u32 },
    }
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Reply {
        id: String,
        #[serde(flatten)]
        usage: Usage,
        finish: Finish,
        total: u128,
        #[serde(flatten)]
        rest: HashMap<String, serde_json::Value>,
    }
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Patch {
        temperature: Option<Option<f32>>,
    }

    fn back<T>(value: T) -> T
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let codec = Codec::builder().build().expect("valid");
        let bytes = codec
            .encode(&Entry::new(value, Duration::from_secs(60)))
            .expect("encode");
        let entry: Entry<T> = codec.decode(&bytes).expect("decode");
        entry.into_value()
    }

    let mut rest = HashMap::new();
    rest.insert(
        "system_fingerprint".to_string(),
        serde_json::json!({"fp": "fp_3", "weights": [0.5, null, -1]}),
    );
    for finish in [Finish::Stop, Finish::Length { limit: 4096 }] {
        let reply = Reply {
            id: "chatcmpl-1".into(),
            usage: Usage {
                prompt_tokens: 12,
                cached_tokens: None,
            },
            finish,
            total: u128::MAX,
            rest: rest.clone(),
        };
        assert_eq!(back(reply.clone()), reply);
    }
    let set = Patch {
        temperature: Some(Some(0.7)),
    };
    assert_eq!(back(set.clone()), set);
    // Documented: nil is nil, whichever `Option` wrote it.
    let cleared = Patch {
        temperature: Some(None),
    };
    assert_eq!(back(cleared), Patch { temperature: None });
}

#[cfg(feature = "postcard")]
fn postcard() -> Codec<layercache::codec::Postcard> {
    Codec::with_format(layercache::codec::Postcard)
        .build()
        .expect("valid")
}

#[cfg(feature = "postcard")]
#[test]
fn every_truncation_is_rejected() {
    let codec = postcard();
    let bytes = codec.encode(&entry(7, 3000)).expect("encode");
    for len in 0..bytes.len() {
        let err = dec(&codec, &bytes[..len]).expect_err("a truncated frame never decodes");
        let _ = kind(err);
    }
    // Extra bytes after a frame are corruption too.
    let mut longer = bytes.clone();
    longer.push(0);
    let _ = kind(dec(&codec, &longer).expect_err("trailing byte"));
}

#[cfg(all(feature = "postcard", feature = "zstd"))]
#[test]
fn every_single_bit_flip_of_a_compressed_frame_is_caught() {
    let codec = postcard();
    let original = entry(8, 4096);
    let bytes = codec.encode(&original).expect("encode");
    assert_eq!(bytes[3] & 1, 1, "compressed");
    let (mut rejected, mut harmless) = (0usize, 0usize);
    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        match dec(&codec, &flipped) {
            Err(e) => {
                let _ = kind(e);
                rejected += 1;
            }
            // A flip zstd ignores (e.g. in an unused header bit) may decode; it must then be the
            // very same value, verified by the checksum.
            Ok(decoded) => {
                assert_same(&decoded, &original);
                harmless += 1;
            }
        }
    }
    println!(
        "{} bit flips: {rejected} rejected, {harmless} decoded to the original",
        bytes.len() * 8
    );
    assert!(rejected > bytes.len() * 8 * 99 / 100);
}

#[cfg(feature = "postcard")]
#[test]
fn random_garbage_is_rejected() {
    let codec = postcard();
    let mut state = 0x1234_5678_9abc_def1u64;
    for len in [0usize, 1, 2, 5, 40, 41, 42, 100, 1000, 70_000] {
        for round in 0..20 {
            let mut garbage: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            if round % 2 == 1 && len >= 5 {
                // Looks like our frame at first glance.
                garbage[..5].copy_from_slice(&[b'L', b'C', 1, 0, 1]);
            }
            let _ = kind(dec(&codec, &garbage).expect_err("garbage never decodes"));
        }
    }
}

#[cfg(all(feature = "postcard", feature = "json"))]
#[test]
fn a_frame_of_another_format_is_rejected_not_guessed() {
    let json = Codec::with_format(layercache::codec::Json)
        .build()
        .expect("valid");
    let bytes = json.encode(&entry(9, 500)).expect("encode");
    match kind(dec(&postcard(), &bytes).expect_err("other format")) {
        DecodeErrorKind::FormatMismatch {
            expected: 1,
            found: 2,
        } => {}
        other => panic!("unexpected {other:?}"),
    }
}

#[cfg(all(feature = "postcard", feature = "zstd"))]
#[test]
fn a_zstd_bomb_is_rejected_without_inflating() {
    let bomb = zstd_bomb();
    assert!(
        bomb.len() < 64 * 1024,
        "bomb is small: {} bytes",
        bomb.len()
    );
    let codec = Codec::builder()
        .max_value_bytes(1 << 20)
        .build()
        .expect("valid");
    // Claims its true size: over the limit, rejected before any allocation.
    let honest = frame(1, 3, &[], &bomb, 512 << 20);
    assert!(matches!(
        kind(dec(&codec, &honest).expect_err("bomb")),
        DecodeErrorKind::TooLarge { .. }
    ));
    // Lies about its size: decompression stops at the claimed size.
    for claimed in [0u32, 1000, 1 << 20] {
        let liar = frame(1, 3, &[], &bomb, claimed);
        assert!(matches!(
            kind(dec(&codec, &liar).expect_err("bomb")),
            DecodeErrorKind::Decompress
        ));
    }
}

#[cfg(feature = "postcard")]
#[test]
fn oversized_values_are_refused_on_encode() {
    let codec = Codec::builder()
        .max_value_bytes(1000)
        .build()
        .expect("valid");
    match codec.encode(&entry(10, 5000)) {
        Err(Error::ValueTooLarge { len, max: 1000 }) => assert!(len > 1000),
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
}

#[cfg(all(feature = "postcard", feature = "zstd"))]
#[test]
fn the_builder_rejects_bad_settings() {
    for built in [
        Codec::builder().zstd_level(100).build(),
        Codec::builder().max_value_bytes(0).build(),
        Codec::builder()
            .with_dictionary(vec![1, 2, 3])
            .zstd_level(-1_000_000)
            .build(),
        Codec::builder().with_dictionary(Vec::new()).build(),
    ] {
        assert!(matches!(built, Err(Error::Config { .. })), "{built:?}");
    }
}

#[cfg(all(feature = "postcard", feature = "zstd"))]
#[test]
fn dictionaries_help_small_values_and_are_checked() {
    use layercache::codec::train_dictionary;
    let plain = Codec::builder().compress_above(64).build().expect("valid");
    let uncompressed = Codec::builder().no_compression().build().expect("valid");
    let samples: Vec<Vec<u8>> = (100..400)
        .map(|seed| postcard::to_allocvec(&reply(seed, 1024)).expect("serialize"))
        .collect();
    let dict = train_dictionary(&samples, 16 * 1024).expect("train");
    let with_dict = Codec::builder()
        .compress_above(64)
        .with_dictionary(dict.clone())
        .build()
        .expect("valid");

    let (mut raw, mut without, mut with) = (0usize, 0usize, 0usize);
    for seed in 1000..1100 {
        let e = entry(seed, 1024);
        raw += uncompressed.encode(&e).expect("encode").len();
        without += plain.encode(&e).expect("encode").len();
        let bytes = with_dict.encode(&e).expect("encode");
        with += bytes.len();
        assert_same(&dec(&with_dict, &bytes).expect("decode"), &e);
        // Another reader without the dictionary, or with another one, refuses the frame.
        assert!(matches!(
            kind(dec(&plain, &bytes).expect_err("no dict")),
            DecodeErrorKind::DictionaryMismatch { .. }
        ));
    }
    println!(
        "~1 KiB chat replies, 100 values: framed raw {raw} B; zstd {without} B ({:.2}x); zstd+dictionary {with} B ({:.2}x)",
        raw as f64 / without as f64,
        raw as f64 / with as f64
    );
    assert!(with < without, "the dictionary helps small values");
    let other_dict = train_dictionary(&samples[..150], 8 * 1024).expect("train");
    let other = Codec::builder()
        .with_dictionary(other_dict)
        .build()
        .expect("valid");
    let bytes = with_dict.encode(&entry(1, 1024)).expect("encode");
    assert!(matches!(
        kind(dec(&other, &bytes).expect_err("other dict")),
        DecodeErrorKind::DictionaryMismatch { .. }
    ));
}

#[cfg(feature = "msgpack")]
#[test]
fn a_schema_id_travels_in_the_frame_and_a_mismatch_is_foreign() {
    let entry = Entry::new(("reply".to_string(), 7u32), Duration::from_secs(60));
    let v0 = Codec::builder().no_compression().build().expect("codec");
    let v1 = Codec::builder()
        .no_compression()
        .schema(1)
        .build()
        .expect("codec");
    let v2 = Codec::builder()
        .no_compression()
        .schema(2)
        .build()
        .expect("codec");
    let plain = v0.encode(&entry).expect("encode");
    let with_schema = v1.encode(&entry).expect("encode");
    assert_eq!(with_schema.len(), plain.len() + 4, "4 bytes of schema id");
    assert_eq!(plain[3] & 0b100, 0, "schema 0 writes no schema field");
    assert_eq!(with_schema[3] & 0b100, 0b100);
    let back: Entry<(String, u32)> = v1.decode(&with_schema).expect("same schema");
    assert_eq!(back.value(), entry.value());
    for (reader, bytes) in [(&v2, &with_schema), (&v1, &plain), (&v0, &with_schema)] {
        match ValueCodec::<(String, u32)>::decode(reader, bytes) {
            Err(Error::Decode { kind, .. }) => {
                assert!(
                    matches!(*kind, DecodeErrorKind::SchemaMismatch { .. }),
                    "{kind:?}"
                );
                assert!(
                    kind.is_foreign(),
                    "another deployment's value, not corruption"
                );
            }
            other => panic!("expected a schema mismatch, got {other:?}"),
        }
    }
    // The schema id is covered by the checksum: a flipped schema bit is not misread.
    let mut flipped = with_schema.clone();
    flipped[41] ^= 0b11; // schema 1 → 2
    assert!(ValueCodec::<(String, u32)>::decode(&v2, &flipped).is_err());
}

#[cfg(feature = "postcard")]
#[test]
fn a_value_that_does_not_read_back_is_refused_at_write() {
    use layercache::codec::Postcard;
    #[derive(serde::Serialize, serde::Deserialize, Debug)]
    struct Reply {
        text: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        refusal: Option<String>,
    }
    let codec = Codec::with_format(Postcard).build().expect("codec");
    let fine = Entry::new(
        Reply {
            text: "a".into(),
            refusal: Some("b".into()),
        },
        Duration::from_secs(60),
    );
    assert!(codec.encode(&fine).is_ok(), "present options read back");
    let skipped = Entry::new(
        Reply {
            text: "a".into(),
            refusal: None,
        },
        Duration::from_secs(60),
    );
    let err = codec
        .encode(&skipped)
        .expect_err("a skipped field does not read back");
    assert!(
        matches!(err, Error::RoundTrip { .. }) && err.is_refusal(),
        "{err:?}"
    );
    // Without the check (an explicit choice) the bytes are produced — and do not decode.
    let unchecked = Codec::with_format(Postcard)
        .verify_writes(false)
        .build()
        .expect("codec");
    let bytes = unchecked.encode(&skipped).expect("encodes");
    assert!(ValueCodec::<Reply>::decode(&unchecked, &bytes).is_err());
    let value: Entry<serde_json::Value> = Entry::new(
        serde_json::json!({"a": [1, {"b": null}]}),
        Duration::from_secs(60),
    );
    assert!(matches!(codec.encode(&value), Err(Error::RoundTrip { .. })));
}
