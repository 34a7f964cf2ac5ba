//! Decoding arbitrary bytes never panics, never allocates beyond `max_value_bytes` (libFuzzer's
//! `-rss_limit_mb` / `-malloc_limit_mb` catch that), and whatever decodes re-encodes to a frame
//! that decodes to the same value.
#![no_main]

use std::sync::OnceLock;

use layercache::codec::{Codec, Json, Postcard, ValueCodec};
use layercache::Entry;
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reply {
    text: String,
    tokens: Vec<u32>,
    finish: Option<String>,
}

struct Codecs {
    postcard: Codec<Postcard>,
    plain: Codec<Postcard>,
    json: Codec<Json>,
}

fn codecs() -> &'static Codecs {
    static CODECS: OnceLock<Codecs> = OnceLock::new();
    CODECS.get_or_init(|| Codecs {
        postcard: Codec::builder().max_value_bytes(1 << 20).compress_above(32).build().expect("codec"),
        plain: Codec::builder().max_value_bytes(1 << 20).no_compression().build().expect("codec"),
        json: Codec::with_format(Json).max_value_bytes(1 << 20).build().expect("codec"),
    })
}

fn round_trip<C: ValueCodec<Reply>>(codec: &C, data: &[u8]) {
    if let Ok(entry) = codec.decode(data) {
        let again = codec.encode(&entry).expect("a decoded value encodes");
        let back = codec.decode(&again).expect("and decodes again");
        assert_eq!(back.value(), entry.value());
    }
}

fuzz_target!(|data: &[u8]| {
    let c = codecs();
    round_trip(&c.postcard, data);
    round_trip(&c.plain, data);
    round_trip(&c.json, data);
    let _: Result<Entry<Vec<String>>, _> = c.postcard.decode(data);
});
