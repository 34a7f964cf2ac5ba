//! `codec_4k`: encode + decode of a ~4 KB chat-completion reply (varied text), in each format
//! beside postcard in the same run: `postcard`, `msgpack` (the default format), `json`, each alone
//! and with zstd (level 3, reused contexts); `postcard_zstd_dict` with a zstd dictionary; and
//! `default`, the default codec as a `RedisCache` uses it (MessagePack + zstd above 1 KiB + the
//! write-time round-trip check). The format ids measure the format alone (no write check).
//!
//! Before timing it measures stored sizes at ~1 KB and ~4 KB — framed postcard, MessagePack and
//! JSON, each + zstd, and postcard + zstd with a dictionary trained on *other* replies (seeds
//! 100–399; measured: 1000–1099) — prints them and writes them to
//! `target/criterion/codec_sizes.json` for `scripts/bench_report.py`.
//!
//! `codec_read`: decode alone — what an L2 hit pays after the round trip — of MessagePack chat
//! replies of ~1, ~4 and ~16 KB stored uncompressed (`<size>_off`), with zstd at level 3 (the
//! default above 1 KiB, `<size>_zstd3`), at the fast level −3 (`<size>_zstd-3`), and at level 3
//! with a 16 KiB dictionary trained on other replies (`<size>_zstd3_dict`); their stored sizes
//! are printed first.
//!
//! ```text
//! cargo bench -p layercache-ecosystem --bench codec
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use layercache::codec::{Codec, Format, Json, MessagePack, Postcard, ValueCodec};
use layercache::Entry;

#[path = "../../tests/support/chat.rs"]
#[allow(dead_code, unreachable_pub)]
mod chat;

/// A codec writing `format`, zstd above `compress` bytes (or none), without the write check.
fn codec<F: Format>(format: F, compress: Option<usize>) -> Codec<F> {
    let builder = Codec::with_format(format).verify_writes(false);
    match compress {
        Some(above) => builder.compress_above(above),
        None => builder.no_compression(),
    }
    .build()
    .expect("codec")
}

/// Mean stored bytes of 100 replies of about `size` bytes, by codec.
fn sizes(size: usize) -> Vec<(&'static str, usize)> {
    let samples: Vec<Vec<u8>> = (100..400)
        .map(|seed| postcard::to_allocvec(&chat::reply(seed, size)).expect("serialize"))
        .collect();
    let dict = layercache::codec::train_dictionary(&samples, 16 * 1024).expect("train");
    let with_dict = Codec::with_format(Postcard)
        .compress_above(64)
        .with_dictionary(dict)
        .build()
        .expect("codec");
    let codecs: Vec<(&'static str, Box<dyn ValueCodec<chat::ChatReply>>)> = vec![
        ("postcard", Box::new(codec(Postcard, None))),
        ("zstd", Box::new(codec(Postcard, Some(64)))),
        ("zstd_dict", Box::new(with_dict)),
        ("msgpack", Box::new(codec(MessagePack, None))),
        ("msgpack_zstd", Box::new(codec(MessagePack, Some(64)))),
        ("json", Box::new(codec(Json, None))),
        ("json_zstd", Box::new(codec(Json, Some(64)))),
    ];
    let n = 100;
    codecs
        .iter()
        .map(|(name, codec)| {
            let total: usize = (1000..1000 + n as u64)
                .map(|seed| {
                    let e = Entry::new(chat::reply(seed, size), Duration::from_secs(3600));
                    codec.encode(&e).expect("encode").len()
                })
                .sum();
            (*name, total / n)
        })
        .collect()
}

fn write_sizes() {
    let mut rows = Vec::new();
    for (label, size) in [("1k", 1024usize), ("4k", 4096)] {
        let sizes = sizes(size);
        let line: Vec<String> = sizes.iter().map(|(n, b)| format!("{n} {b} B")).collect();
        eprintln!("stored size ~{label}: {}", line.join("; "));
        let fields: Vec<String> = sizes.iter().map(|(n, b)| format!("\"{n}\": {b}")).collect();
        rows.push(format!("\"{label}\": {{{}}}", fields.join(", ")));
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/criterion");
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
    let samples: Vec<Vec<u8>> = (100..400)
        .map(|seed| postcard::to_allocvec(&chat::reply(seed, 4096)).expect("serialize"))
        .collect();
    let dict = Codec::with_format(Postcard)
        .compress_above(1024)
        .verify_writes(false)
        .with_dictionary(layercache::codec::train_dictionary(&samples, 16 * 1024).expect("train"))
        .build()
        .expect("codec");
    let codecs: Vec<(&'static str, Box<dyn ValueCodec<chat::ChatReply>>)> = vec![
        ("postcard", Box::new(codec(Postcard, None))),
        ("postcard_zstd", Box::new(codec(Postcard, Some(1024)))),
        ("postcard_zstd_dict", Box::new(dict)),
        ("msgpack", Box::new(codec(MessagePack, None))),
        ("msgpack_zstd", Box::new(codec(MessagePack, Some(1024)))),
        ("json", Box::new(codec(Json, None))),
        ("json_zstd", Box::new(codec(Json, Some(1024)))),
        ("default", Box::new(Codec::default())),
    ];
    let mut group = c.benchmark_group("codec_4k");
    for (id, codec) in &codecs {
        group.bench_function(*id, |b| {
            b.iter(|| {
                let bytes = codec.encode(black_box(&entry)).expect("encode");
                let back: Entry<chat::ChatReply> = codec.decode(&bytes).expect("decode");
                black_box(back)
            })
        });
    }
    group.finish();
}

fn codec_read(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec_read");
    for (label, size) in [("1k", 1024usize), ("4k", 4096), ("16k", 16384)] {
        let replies: Vec<Entry<chat::ChatReply>> = (0..100)
            .map(|seed| Entry::new(chat::reply(seed, size), Duration::from_secs(3600)))
            .collect();
        // Trained on other replies (seeds 100–399), as a user trains on a sample of traffic.
        let samples: Vec<Vec<u8>> = (100..400)
            .map(|seed| rmp_serde::to_vec_named(&chat::reply(seed, size)).expect("serialize"))
            .collect();
        let dict = layercache::codec::train_dictionary(&samples, 16 * 1024).expect("train");
        let variants = [
            ("off", None, None),
            ("zstd3", Some(3), None),
            ("zstd-3", Some(-3), None),
            ("zstd3_dict", Some(3), Some(dict)),
        ];
        for (variant, level, dict) in variants {
            let builder = Codec::with_format(MessagePack).verify_writes(false);
            let builder = match level {
                Some(level) => builder.compress_above(64).zstd_level(level),
                None => builder.no_compression(),
            };
            let builder = match dict {
                Some(dict) => builder.with_dictionary(dict),
                None => builder,
            };
            let codec = builder.build().expect("codec");
            let frames: Vec<Vec<u8>> = replies
                .iter()
                .map(|e| codec.encode(e).expect("encode"))
                .collect();
            let stored = frames.iter().map(Vec::len).sum::<usize>() / frames.len();
            eprintln!("codec_read {label}_{variant}: {stored} B stored");
            let mut next = 0;
            group.bench_function(format!("{label}_{variant}"), |b| {
                b.iter(|| {
                    next = (next + 1) % frames.len();
                    let back: Entry<chat::ChatReply> =
                        codec.decode(black_box(&frames[next])).expect("decode");
                    black_box(back)
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, codec_4k, codec_read);
criterion_main!(benches);
