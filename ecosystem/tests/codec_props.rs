//! Property tests over mutated valid frames: bit flips, truncations, splices of two frames and
//! random bytes never panic, and never decode to a value other than the one encoded.

#![cfg(all(feature = "postcard", feature = "zstd"))]

use std::time::Duration;

use layercache::codec::{Codec, Postcard, ValueCodec};
use layercache::Entry;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reply {
    text: String,
    tokens: Vec<u32>,
    finish: Option<String>,
}

fn reply() -> impl Strategy<Value = Reply> {
    (
        ".{0,600}",
        prop::collection::vec(any::<u32>(), 0..64),
        proptest::option::of("[a-z_]{1,12}"),
    )
        .prop_map(|(text, tokens, finish)| Reply {
            text,
            tokens,
            finish,
        })
}

fn codec(compress: bool) -> Codec<Postcard> {
    let builder = Codec::with_format(Postcard).max_value_bytes(1 << 20);
    let builder = if compress {
        builder.compress_above(64)
    } else {
        builder.no_compression()
    };
    builder.build().expect("codec")
}

/// Decoding `bytes` either fails or gives back exactly `original`.
fn check(codec: &Codec<Postcard>, bytes: &[u8], original: &Reply) -> Result<(), TestCaseError> {
    if let Ok(entry) = ValueCodec::<Reply>::decode(codec, bytes) {
        prop_assert_eq!(entry.value(), original);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn valid_frames_round_trip(value in reply(), compress in any::<bool>()) {
        let codec = codec(compress);
        let bytes = codec.encode(&Entry::new(value.clone(), Duration::from_secs(60))).expect("encode");
        let back: Entry<Reply> = codec.decode(&bytes).expect("decode");
        prop_assert_eq!(back.value(), &value);
    }

    #[test]
    fn bit_flips_never_yield_another_value(
        value in reply(),
        compress in any::<bool>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..4),
    ) {
        let codec = codec(compress);
        let mut bytes = codec.encode(&Entry::new(value.clone(), Duration::from_secs(60))).expect("encode");
        for (at, bit) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        check(&codec, &bytes, &value)?;
    }

    #[test]
    fn truncations_and_extensions_are_rejected(value in reply(), compress in any::<bool>(), cut in any::<prop::sample::Index>(), tail in prop::collection::vec(any::<u8>(), 1..16)) {
        let codec = codec(compress);
        let bytes = codec.encode(&Entry::new(value.clone(), Duration::from_secs(60))).expect("encode");
        let truncated = &bytes[..cut.index(bytes.len())];
        prop_assert!(ValueCodec::<Reply>::decode(&codec, truncated).is_err());
        let mut extended = bytes.clone();
        extended.extend_from_slice(&tail);
        prop_assert!(ValueCodec::<Reply>::decode(&codec, &extended).is_err());
    }

    #[test]
    fn splices_of_two_frames_never_yield_a_wrong_value(
        a in reply(),
        b in reply(),
        compress in any::<bool>(),
        split_a in any::<prop::sample::Index>(),
        split_b in any::<prop::sample::Index>(),
    ) {
        let codec = codec(compress);
        let fa = codec.encode(&Entry::new(a.clone(), Duration::from_secs(60))).expect("encode");
        let fb = codec.encode(&Entry::new(b.clone(), Duration::from_secs(60))).expect("encode");
        let mut spliced = fa[..split_a.index(fa.len())].to_vec();
        spliced.extend_from_slice(&fb[split_b.index(fb.len())..]);
        // A splice may happen to reproduce one of the frames exactly; anything else is rejected.
        if let Ok(entry) = ValueCodec::<Reply>::decode(&codec, &spliced) {
            prop_assert!(entry.value() == &a || entry.value() == &b);
        }
    }

    #[test]
    fn random_bytes_never_decode(bytes in prop::collection::vec(any::<u8>(), 0..2048), magic in any::<bool>()) {
        let codec = codec(true);
        let mut bytes = bytes;
        if magic && bytes.len() >= 5 {
            let flags = bytes[3] & 3;
            bytes[..5].copy_from_slice(&[b'L', b'C', 1, flags, 1]);
        }
        prop_assert!(ValueCodec::<Reply>::decode(&codec, &bytes).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// A signed frame with any bit flipped — header, payload or signature — is refused: the
    /// keyed hash covers every byte, so not even a flip the checksum would miss gets through.
    #[test]
    fn a_signed_frame_with_any_bit_flipped_is_refused(
        value in reply(),
        compress in any::<bool>(),
        bit in any::<prop::sample::Index>(),
    ) {
        let builder = Codec::with_format(Postcard).signing_key(3, [0x42; 32]);
        let codec = if compress { builder.compress_above(64) } else { builder.no_compression() }
            .build()
            .expect("codec");
        let entry = Entry::new(value.clone(), Duration::from_secs(60));
        let mut bytes = codec.encode_for_key("ns:chat:1", &entry).expect("encode");
        let back: Entry<Reply> = codec.decode_for_key("ns:chat:1", &bytes).expect("decode");
        prop_assert_eq!(back.value(), &value);
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(ValueCodec::<Reply>::decode_for_key(&codec, "ns:chat:1", &bytes).is_err());
    }
}
