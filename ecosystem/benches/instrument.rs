//! Instrumentation costs, each beside its peer in the same run.
//!
//! * `instrument`: `bare` (an async call, polled to completion), `timed` (the same call through a
//!   `Timer`, no recorder installed) and `timed_prometheus` (with metrics-exporter-prometheus's
//!   recorder installed). Target: `timed` − `bare` ≤ 30 ns.
//! * `histogram_record`: one record into `hdrhistogram` (single thread, `&mut`) vs ours (`&self`,
//!   lock-free), and `ours_8_threads` (8 threads recording into one histogram at once; the time
//!   per record as each thread sees it, contention included). Target: ours ≤ 1.0× hdrhistogram.
//!
//! ```text
//! cargo bench -p layercache-ecosystem --bench instrument
//! ```

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use layercache::instrument::{LatencyHistogram, Timer};

/// Poll a future that is ready at once, pinned where it is built — as an executor polls a task
/// in place — with no runtime (the cost measured is ours, not a scheduler's; the no-op waker
/// keeps reference counting out of both sides). A helper taking the future by value would copy
/// it first: for the 48-byte timed future that copy stalls on store forwarding (~6 ns on the
/// benchmark VM), a cost of the harness, not of timing (BENCHMARKS.md).
macro_rules! run {
    ($future:expr) => {{
        let mut future = pin!($future);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                break out;
            }
        }
    }};
}

/// The call being timed: an async fn that does a little work.
async fn call(x: u64) -> Result<u64, std::io::Error> {
    Ok(black_box(x).wrapping_mul(0x9E37_79B9))
}

fn instrument(c: &mut Criterion) {
    let mut group = c.benchmark_group("instrument");
    let timer = Timer::new("bench");
    // Warm the calibrated clock (it calibrates in the background on first use).
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(300) {
        let _ = run!(timer.time(call(1)));
    }
    group.bench_function("bare", |b| b.iter(|| run!(call(black_box(7)))));
    group.bench_function("timed", |b| b.iter(|| run!(timer.time(call(black_box(7))))));
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(layercache::instrument::LLM_BUCKETS_SECONDS)
        .expect("buckets")
        .build_recorder();
    let with_prometheus = metrics::with_local_recorder(&recorder, || Timer::new("bench_prom"));
    group.bench_function("timed_prometheus", |b| {
        b.iter(|| run!(with_prometheus.time(call(black_box(7)))))
    });
    group.finish();
}

fn histogram_record(c: &mut Criterion) {
    let mut group = c.benchmark_group("histogram_record");
    // Durations of 1 µs to ~1 s, spread over the buckets.
    let values: Vec<u64> = (0..4096u64)
        .map(|i| 1_000 + (i * 2_654_435_761) % 1_000_000_000)
        .collect();
    let mut hdr =
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 2).expect("bounds");
    let mut i = 0usize;
    group.bench_function("hdrhistogram", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            hdr.saturating_record(black_box(values[i]));
        })
    });
    let ours = LatencyHistogram::new();
    let mut j = 0usize;
    group.bench_function("ours", |b| {
        b.iter(|| {
            j = (j + 1) & 4095;
            ours.record_ns(black_box(values[j]));
        })
    });
    let shared = Arc::new(LatencyHistogram::new());
    let values = Arc::new(values);
    group.bench_function("ours_8_threads", |b| {
        b.iter_custom(|iters| {
            // Each of 8 threads records `iters` values at once: the wall time is the time per
            // record as each thread sees it, contention included.
            let per_thread = iters.max(1);
            let started = Instant::now();
            let threads: Vec<_> = (0..8)
                .map(|t| {
                    let (h, values) = (Arc::clone(&shared), Arc::clone(&values));
                    std::thread::spawn(move || {
                        for k in 0..per_thread as usize {
                            h.record_ns(values[(k + t * 512) & 4095]);
                        }
                    })
                })
                .collect();
            for t in threads {
                let _ = t.join();
            }
            started.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, instrument, histogram_record);
criterion_main!(benches);
