//! `codec_4k`: encode + decode of a ~4 KB chat-completion reply (varied text), postcard alone vs
//! postcard + zstd (level 3, reused contexts). Prints the sizes once so the ratio can be reported.
//!
//! ```text
//! cargo bench --bench codec
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use layercache::codec::{Codec, ValueCodec};
use layercache::Entry;

#[path = "../tests/support/chat.rs"]
#[allow(dead_code, unreachable_pub)]
mod chat;

fn codec_4k(c: &mut Criterion) {
    let entry = Entry::new(chat::reply(7, 4096), Duration::from_secs(3600));
    let plain = Codec::builder().no_compression().build().expect("codec");
    let zstd = Codec::builder()
        .compress_above(1024)
        .zstd_level(3)
        .build()
        .expect("codec");
    let plain_len = plain.encode(&entry).expect("encode").len();
    let zstd_len = zstd.encode(&entry).expect("encode").len();
    eprintln!(
        "codec_4k: framed postcard {plain_len} B, postcard+zstd {zstd_len} B (ratio {:.2}x)",
        plain_len as f64 / zstd_len as f64
    );

    let mut group = c.benchmark_group("codec_4k");
    group.bench_function("postcard", |b| {
        b.iter(|| {
            let bytes = plain.encode(black_box(&entry)).expect("encode");
            let back: Entry<chat::ChatReply> = plain.decode(&bytes).expect("decode");
            black_box(back)
        })
    });
    group.bench_function("postcard_zstd", |b| {
        b.iter(|| {
            let bytes = zstd.encode(black_box(&entry)).expect("encode");
            let back: Entry<chat::ChatReply> = zstd.decode(&bytes).expect("decode");
            black_box(back)
        })
    });
    group.finish();
}

criterion_group!(benches, codec_4k);
criterion_main!(benches);
