//! Timers and the latency histogram: quantiles within 1 % of the exact values, no lost samples
//! under concurrency, cancelled calls counted once, streams timed to their first item, and the
//! metrics through the facade.

use std::sync::Arc;
use std::time::Duration;

use layercache::instrument::{LatencyHistogram, Timer, CALLS_IN_FLIGHT, CALL_DURATION_SECONDS};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

/// A seeded xorshift generator: the same samples on every run.
struct Rng(u64);
impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// A standard normal draw (Box–Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn check_quantiles(name: &str, samples_ns: &mut [u64]) {
    let h = LatencyHistogram::new();
    for &ns in samples_ns.iter() {
        h.record_ns(ns);
    }
    samples_ns.sort_unstable();
    let s = h.snapshot();
    assert_eq!(s.count(), samples_ns.len() as u64);
    for q in [0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
        let rank = ((q * samples_ns.len() as f64).ceil() as usize).clamp(1, samples_ns.len());
        let exact = samples_ns[rank - 1] as f64;
        let ours = s.quantile(q).as_nanos() as f64;
        let error = (ours - exact).abs() / exact;
        println!(
            "{name}: q{q}: exact {exact:.0} ns, ours {ours:.0} ns, error {:.3} %",
            error * 100.0
        );
        assert!(
            error <= 0.01,
            "{name} q{q}: {ours} vs exact {exact} ({:.3} %)",
            error * 100.0
        );
    }
    assert_eq!(
        s.max().as_nanos() as u64,
        *samples_ns.last().expect("samples")
    );
    let mean = samples_ns.iter().map(|&n| n as f64).sum::<f64>() / samples_ns.len() as f64;
    assert!(
        (s.mean().as_nanos() as f64 - mean).abs() <= 1.0 + mean * 1e-9,
        "the mean is exact"
    );
}

#[test]
fn quantiles_are_within_one_percent_on_three_distributions() {
    const N: usize = 1_000_000;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // Uniform between 1 ms and 2 s.
    let mut uniform: Vec<u64> = (0..N)
        .map(|_| 1_000_000 + (rng.unit() * 1_999_000_000.0) as u64)
        .collect();
    check_quantiles("uniform", &mut uniform);
    // Log-normal around 20 ms (a database call).
    let mut lognormal: Vec<u64> = (0..N)
        .map(|_| ((20e6f64).ln() + 0.8 * rng.normal()).exp() as u64)
        .collect();
    check_quantiles("log-normal", &mut lognormal);
    // Bimodal, LLM-like: 70 % cache-fast (~2 ms), 30 % model calls (~1.5 s) with a tail to 30 s.
    let mut bimodal: Vec<u64> = (0..N)
        .map(|_| {
            if rng.unit() < 0.7 {
                ((2e6f64).ln() + 0.3 * rng.normal()).exp() as u64
            } else if rng.unit() < 0.97 {
                ((1.5e9f64).ln() + 0.5 * rng.normal()).exp() as u64
            } else {
                (5e9 + rng.unit() * 25e9) as u64
            }
        })
        .collect();
    check_quantiles("bimodal LLM", &mut bimodal);
}

#[test]
fn eight_threads_lose_no_sample() {
    const PER_THREAD: u64 = 1_000_000;
    let h = Arc::new(LatencyHistogram::new());
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let h = Arc::clone(&h);
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    h.record_ns(1 + (i * 7919 + t * 104_729) % 5_000_000_000);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("no panic");
    }
    assert_eq!(h.snapshot().count(), 8 * PER_THREAD, "every sample counted");
    assert_eq!(h.take().count(), 8 * PER_THREAD);
    assert_eq!(h.snapshot().count(), 0, "take leaves it empty");
}

#[derive(Debug)]
enum LlmError {
    RateLimited,
    Down,
}

/// A two-worker runtime, as a service runs its calls on.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Wait (with a deadline) until a call of `timer` is in flight: a call enters the count when its
/// first poll returns `Pending`, just after whatever it signalled from inside that poll.
async fn until_in_flight(timer: &Timer) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while timer.in_flight() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "never counted in flight"
        );
        tokio::task::yield_now().await;
    }
}

#[test]
fn timers_count_outcomes_cancellations_and_in_flight_through_the_facade() {
    let recorder = DebuggingRecorder::new();
    let timer = metrics::with_local_recorder(&recorder, || {
        Timer::builder("chat")
            .label("model", "gpt-4o")
            .classify(&["rate_limited", "timeout"], |e: &LlmError| match e {
                LlmError::RateLimited => Some("rate_limited"),
                LlmError::Down => None,
            })
            .build()
    });
    let runtime = runtime();
    runtime.block_on(async {
        for _ in 0..3 {
            let r: Result<u8, LlmError> = timer.time(async { Ok(1) }).await;
            assert!(r.is_ok());
        }
        let _ = timer.time(async { Err::<u8, _>(LlmError::Down) }).await;
        let _ = timer
            .time(async { Err::<u8, _>(LlmError::RateLimited) })
            .await;
        // A call dropped mid-flight: counted once as cancelled, and no longer in flight.
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
        let slow = {
            let timer = timer.clone();
            tokio::spawn(async move {
                timer
                    .time(async move {
                        let _ = entered_tx.send(());
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        Ok::<u8, LlmError>(0)
                    })
                    .await
            })
        };
        entered_rx.await.expect("the call started");
        // In flight once its first poll has returned `Pending` (just after it signalled).
        until_in_flight(&timer).await;
        assert_eq!(timer.in_flight(), 1);
        slow.abort();
        let _ = slow.await;
        assert_eq!(timer.in_flight(), 0, "the in-flight count returns to 0");
        // `None` is a failure for an `Option` output.
        let _ = timer.time(async { None::<u8> }).await;
    });
    let counts = timer.counts();
    assert_eq!((counts.ok, counts.error, counts.cancelled), (3, 2, 1));
    assert_eq!(counts.kinds, vec![("rate_limited", 1)]);
    assert_eq!(timer.snapshot().count(), 7);

    let mut durations = std::collections::HashMap::new();
    let mut in_flight = None;
    for (key, _, _, value) in recorder.snapshotter().snapshot().into_vec() {
        let (_, key) = key.into_parts();
        let label = |name: &str| {
            key.labels()
                .find(|l| l.key() == name)
                .map(|l| l.value().to_owned())
        };
        assert_eq!(label("call").as_deref(), Some("chat"));
        assert_eq!(label("model").as_deref(), Some("gpt-4o"), "static labels");
        match (key.name(), value) {
            (CALL_DURATION_SECONDS, DebugValue::Histogram(samples)) => {
                durations.insert(label("outcome").expect("outcome"), samples.len());
            }
            (CALLS_IN_FLIGHT, DebugValue::Gauge(g)) => in_flight = Some(g.into_inner()),
            _ => {}
        }
    }
    assert_eq!(durations.get("ok"), Some(&3));
    assert_eq!(durations.get("error"), Some(&2));
    assert_eq!(durations.get("rate_limited"), Some(&1));
    assert_eq!(durations.get("cancelled"), Some(&1));
    assert_eq!(in_flight, Some(0.0));
}

/// Labels reach every series once by name: a key set twice keeps its last value, and the keys
/// the timer sets itself (`call`, `outcome`) are not taken from the user — a series with two
/// labels of one name makes Prometheus reject the whole scrape.
#[test]
fn timer_labels_are_unique_by_name() {
    let recorder = DebuggingRecorder::new();
    let timer = metrics::with_local_recorder(&recorder, || {
        Timer::builder("chat")
            .label("model", "gpt-4")
            .label("model", "gpt-4o")
            .label("call", "other")
            .label("outcome", "ok")
            .label("region", "eu")
            .build()
    });
    runtime().block_on(async {
        let _ = timer.time(async { Ok::<u8, LlmError>(1) }).await;
    });
    let mut seen = 0;
    for (key, _, _, _) in recorder.snapshotter().snapshot().into_vec() {
        let (_, key) = key.into_parts();
        let mut names: Vec<&str> = key.labels().map(|l| l.key()).collect();
        let values = |name: &str| {
            key.labels()
                .filter(|l| l.key() == name)
                .map(|l| l.value().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(values("call"), ["chat"]);
        assert_eq!(values("model"), ["gpt-4o"]);
        assert_eq!(values("region"), ["eu"]);
        let total = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), total, "no label twice in {:?}", key);
        seen += 1;
    }
    assert!(seen > 0);
}

/// A call is in flight from its first `Pending` until it ends; a call that completes in its first
/// poll is timed and counted but never enters the in-flight count (nor moves the gauge), and one
/// that panics in its first poll is counted once as cancelled.
#[test]
fn a_call_is_in_flight_only_while_it_waits() {
    let recorder = DebuggingRecorder::new();
    let timer = metrics::with_local_recorder(&recorder, || Timer::new("llm"));
    // The debugging recorder hands out a gauge's movement since the last snapshot (it swaps the
    // value to 0), so the gauge's level is the sum of what the snapshots have read.
    let level = std::cell::Cell::new(0.0);
    let gauge = || {
        let moved = recorder
            .snapshotter()
            .snapshot()
            .into_vec()
            .into_iter()
            .find_map(|(key, _, _, value)| match value {
                DebugValue::Gauge(g) if key.key().name() == CALLS_IN_FLIGHT => Some(g.into_inner()),
                _ => None,
            });
        moved.map(|m| {
            level.set(level.get() + m);
            level.get()
        })
    };
    let runtime = runtime();
    runtime.block_on(async {
        // Ready at once: no in-flight accounting at all.
        for i in 0..100u32 {
            let r: Result<u32, std::io::Error> = timer.time(async move { Ok(i) }).await;
            assert_eq!(r.ok(), Some(i));
        }
        assert_eq!(timer.in_flight(), 0);
        assert_eq!(gauge(), Some(0.0), "the gauge was never moved");

        // Waits for a reply: in flight until it has it.
        let (reply_tx, reply_rx) = tokio::sync::oneshot::channel::<u32>();
        let waiting = {
            let timer = timer.clone();
            tokio::spawn(async move {
                timer
                    .time(async move { reply_rx.await.map_err(|_| "no reply") })
                    .await
            })
        };
        until_in_flight(&timer).await;
        assert_eq!(timer.in_flight(), 1);
        assert_eq!(gauge(), Some(1.0));
        reply_tx.send(7).expect("the call waits");
        assert_eq!(waiting.await.expect("joined"), Ok(7));
        assert_eq!(timer.in_flight(), 0);
        assert_eq!(gauge(), Some(0.0));

        // Panics in its first poll: dropped while running, so cancelled, never in flight.
        let panicking = {
            let timer = timer.clone();
            tokio::spawn(async move {
                timer
                    .time(async {
                        if timer_should_panic() {
                            panic!("the upstream client panicked");
                        }
                        Ok::<u8, std::io::Error>(0)
                    })
                    .await
            })
        };
        assert!(panicking.await.is_err(), "the task panicked");
    });
    let counts = timer.counts();
    assert_eq!((counts.ok, counts.error, counts.cancelled), (101, 0, 1));
    assert_eq!(timer.in_flight(), 0);
    assert_eq!(gauge(), Some(0.0));
    assert_eq!(timer.snapshot().count(), 102);
}

/// Keeps the panic in the test above from being seen as unconditional.
fn timer_should_panic() -> bool {
    std::hint::black_box(true)
}

/// A stream of `n` items, one every `every`.
fn tokens(n: usize, every: Duration) -> impl futures_core::Stream<Item = String> {
    struct Tokens {
        left: usize,
        every: Duration,
        sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    }
    impl futures_core::Stream for Tokens {
        type Item = String;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<String>> {
            if self.left == 0 {
                return std::task::Poll::Ready(None);
            }
            match self.sleep.as_mut().poll(cx) {
                std::task::Poll::Pending => std::task::Poll::Pending,
                std::task::Poll::Ready(()) => {
                    self.left -= 1;
                    let every = self.every;
                    self.sleep = Box::pin(tokio::time::sleep(every));
                    std::task::Poll::Ready(Some(format!("tok{}", self.left)))
                }
            }
        }
    }
    use std::future::Future;
    Tokens {
        left: n,
        every,
        sleep: Box::pin(tokio::time::sleep(every * 5)),
    }
}

async fn next<S: futures_core::Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *s).poll_next(cx)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_timed_to_their_first_item_and_their_end() {
    let timer = Timer::new("chat_stream");
    let mut stream = timer.time_stream(tokens(10, Duration::from_millis(10)));
    let mut got = 0;
    while next(&mut stream).await.is_some() {
        got += 1;
    }
    assert_eq!(got, 10);
    let first = timer.first_item_snapshot();
    let whole = timer.snapshot();
    assert_eq!((first.count(), whole.count()), (1, 1));
    assert!(first.max() >= Duration::from_millis(50), "{first:?}");
    assert!(whole.max() >= Duration::from_millis(140), "{whole:?}");
    assert!(first.max() < whole.max());
    assert_eq!(timer.counts().ok, 1);

    // A stream dropped after its first token: cancelled, not in flight.
    let mut stream = timer.time_stream(tokens(10, Duration::from_millis(10)));
    assert!(next(&mut stream).await.is_some());
    assert_eq!(timer.in_flight(), 1);
    drop(stream);
    assert_eq!(timer.in_flight(), 0);
    assert_eq!(timer.counts().cancelled, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_results_counts_a_failed_item_as_the_calls_error() {
    let timer = Timer::builder("chat_stream")
        .classify(&["rate_limited"], |e: &LlmError| match e {
            LlmError::RateLimited => Some("rate_limited"),
            LlmError::Down => None,
        })
        .build();
    // OpenAI-shaped chunks, then a failure after `fail_after` of them (or none).
    let chunks = |fail_after: Option<(usize, LlmError)>| {
        let mut n = 0;
        let mut fail = fail_after;
        let tokens = tokens(6, Duration::from_millis(2));
        futures_stream_map(tokens, move |token| {
            n += 1;
            match fail.take_if(|(after, _)| n > *after) {
                Some((_, error)) => Err(error),
                None => Ok(serde_json::json!({
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": token}}],
                })),
            }
        })
    };

    // The consumer stops at the error (`?`) and drops the stream: an error, not a cancellation.
    async fn consume<S>(stream: S) -> Result<usize, LlmError>
    where
        S: futures_core::Stream<Item = Result<serde_json::Value, LlmError>> + Unpin,
    {
        let mut stream = stream;
        let mut got = 0;
        while let Some(chunk) = next(&mut stream).await {
            chunk?;
            got += 1;
        }
        Ok(got)
    }
    // Sendable and 'static, as an SSE body or a spawned task needs.
    let ok = tokio::spawn(consume(timer.time_try_stream(chunks(None))))
        .await
        .expect("task");
    assert_eq!(ok.ok(), Some(6));
    let down = consume(timer.time_try_stream(chunks(Some((2, LlmError::Down))))).await;
    assert!(matches!(down, Err(LlmError::Down)));
    let limited = timer.time_try_stream(chunks(Some((0, LlmError::RateLimited))));
    assert!(matches!(consume(limited).await, Err(LlmError::RateLimited)));

    // Read to its end after the error, the first failure still decides.
    let mut drained = timer.time_try_stream(chunks(Some((3, LlmError::Down))));
    let mut items = 0;
    while next(&mut drained).await.is_some() {
        items += 1;
    }
    assert_eq!(items, 6);
    drop(drained);

    // Dropped before any failure: cancelled.
    let mut early = timer.time_try_stream(chunks(None));
    assert!(matches!(next(&mut early).await, Some(Ok(_))));
    drop(early);

    let counts = timer.counts();
    assert_eq!(
        (counts.ok, counts.error, counts.cancelled),
        (1, 2, 1),
        "{counts:?}"
    );
    assert_eq!(counts.kinds, vec![("rate_limited", 1)]);
    assert_eq!(timer.in_flight(), 0);
    assert_eq!(timer.first_item_snapshot().count(), 5);
}

/// `stream` with `f` applied to each item.
fn futures_stream_map<S, F, T>(stream: S, f: F) -> impl futures_core::Stream<Item = T> + Unpin
where
    S: futures_core::Stream + Unpin,
    F: FnMut(S::Item) -> T + Unpin,
{
    struct Map<S, F>(S, F);
    impl<S, F, T> futures_core::Stream for Map<S, F>
    where
        S: futures_core::Stream + Unpin,
        F: FnMut(S::Item) -> T + Unpin,
    {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            let this = &mut *self;
            std::pin::Pin::new(&mut this.0)
                .poll_next(cx)
                .map(|item| item.map(&mut this.1))
        }
    }
    Map(stream, f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_expose_load_latency_without_a_recorder() {
    let cache = layercache::MemoryCache::<u32>::builder()
        .build()
        .expect("cache");
    for i in 0..20u32 {
        cache
            .get_or_load(
                &format!("k{i}"),
                move || async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok::<_, std::io::Error>(i)
                },
                layercache::LoadOptions::default(),
            )
            .await
            .expect("load");
    }
    let loads = cache.load_latency();
    assert_eq!(loads.count(), 20);
    assert!(loads.p50() >= Duration::from_millis(5), "{loads:?}");
}
