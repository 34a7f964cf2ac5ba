//! `codec_4k`: encode + decode of a ~4 KB chat-completion reply (varied text), postcard alone vs
//! postcard + zstd (level 3, reused contexts), and `postcard_zstd_dict` with a zstd dictionary.
//!
//! Before timing it measures stored sizes at ~1 KB and ~4 KB — framed postcard, + zstd, + zstd
//! with a dictionary trained on *other* replies (seeds 100–399; measured: 1000–1099) — prints
//! them and writes them to `target/criterion/codec_sizes.json` for `scripts/bench_report.py`.
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

/// Mean stored bytes of replies of about `size` bytes: (framed postcard, + zstd, + zstd and a
/// dictionary trained on other replies of that size).
fn sizes(size: usize) -> (usize, usize, usize) {
    let samples: Vec<Vec<u8>> = (100..400)
        .map(|seed| postcard::to_allocvec(&chat::reply(seed, size)).expect("serialize"))
        .collect();
    let dict = layercache::codec::train_dictionary(&samples, 16 * 1024).expect("train");
    let plain = Codec::builder().no_compression().build().expect("codec");
    let zstd = Codec::builder().compress_above(64).build().expect("codec");
    let with_dict = Codec::builder()
        .compress_above(64)
        .with_dictionary(dict)
        .build()
        .expect("codec");
    let (mut a, mut b, mut c) = (0, 0, 0);
    let n = 100;
    for seed in 1000..1000 + n as u64 {
        let e = Entry::new(chat::reply(seed, size), Duration::from_secs(3600));
        a += plain.encode(&e).expect("encode").len();
        b += zstd.encode(&e).expect("encode").len();
        c += with_dict.encode(&e).expect("encode").len();
    }
    (a / n, b / n, c / n)
}

fn write_sizes() {
    let mut rows = Vec::new();
    for (label, size) in [("1k", 1024usize), ("4k", 4096)] {
        let (plain, zstd, dict) = sizes(size);
        eprintln!(
            "stored size ~{label}: framed postcard {plain} B; zstd {zstd} B ({:.2}x); zstd + \
             dictionary {dict} B ({:.2}x; {:.2} of plain zstd)",
            plain as f64 / zstd as f64,
            plain as f64 / dict as f64,
            dict as f64 / zstd as f64
        );
        rows.push(format!(
            "\"{label}\": {{\"postcard\": {plain}, \"zstd\": {zstd}, \"zstd_dict\": {dict}}}"
        ));
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/criterion");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(
            dir.join("codec_sizes.json"),
            format!("{{{}}}\n", rows.join(", ")),
        );
    }
}

fn codec_4k(c: &mut Criterion) {
    write_sizes();
    let entry = Entry::new(chat::reply(7, 4096), Duration::from_secs(3600));
    let plain = Codec::builder().no_compression().build().expect("codec");
    let zstd = Codec::builder()
        .compress_above(1024)
        .zstd_level(3)
        .build()
        .expect("codec");
    let mut group = c.benchmark_group("codec_4k");
    group.bench_function("postcard", |b| {
        b.iter(|| {
            let bytes = plain.encode(black_box(&entry)).expect("encode");
            let back: Entry<chat::ChatReply> = plain.decode(&bytes).expect("decode");
            black_box(back)
        })
    });
    let samples: Vec<Vec<u8>> = (100..400)
        .map(|seed| postcard::to_allocvec(&chat::reply(seed, 4096)).expect("serialize"))
        .collect();
    let dict = Codec::builder()
        .compress_above(1024)
        .with_dictionary(layercache::codec::train_dictionary(&samples, 16 * 1024).expect("train"))
        .build()
        .expect("codec");
    group.bench_function("postcard_zstd_dict", |b| {
        b.iter(|| {
            let bytes = dict.encode(black_box(&entry)).expect("encode");
            let back: Entry<chat::ChatReply> = dict.decode(&bytes).expect("decode");
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
