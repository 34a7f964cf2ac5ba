//! A flaky, slow AI provider served through `Layered` with fail-safe and soft/hard timeouts.
//!
//! The simulated provider fails 30 % of calls, answers in 50–400 ms, and now and then hangs for
//! 3 s. Eight workers ask about twenty prompts for ten seconds, once straight to the provider and
//! once through the cache; the report compares what callers saw.
//!
//! ```text
//! cargo run --example ai_resilience                                   # L2 = a second memory layer
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example ai_resilience  # L2 = Redis
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use layercache::instrument::LatencyHistogram;
use layercache::{Cache, KeyBuilder, Layered, LoadOptions, MemoryCache};

const WORKERS: u64 = 8;
const PROMPTS: u64 = 20;
const RUN: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct ProviderError(&'static str);
impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}
impl std::error::Error for ProviderError {}

/// A provider that is slow, fails often, and sometimes hangs.
#[derive(Debug, Default)]
struct FlakyProvider {
    calls: AtomicU64,
    failures: AtomicU64,
}

impl FlakyProvider {
    async fn complete(&self, prompt: u64, seed: u64) -> Result<String, ProviderError> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let roll = (seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .wrapping_mul(0xBF58_476D_1CE4_E5B9)
            >> 40;
        if roll.is_multiple_of(25) {
            tokio::time::sleep(Duration::from_secs(3)).await; // a hang
        } else {
            tokio::time::sleep(Duration::from_millis(50 + roll % 350)).await;
        }
        if roll % 10 < 3 {
            self.failures.fetch_add(1, Ordering::Relaxed);
            return Err(ProviderError("503 from the model API"));
        }
        Ok(format!("answer to prompt {prompt} (call {n})"))
    }
}

/// Request latencies in a lock-free histogram (percentiles without sorting by hand).
#[derive(Debug, Default)]
struct Report {
    latencies: LatencyHistogram,
    errors: AtomicU64,
    requests: AtomicU64,
}

impl Report {
    fn record(&self, took: Duration, ok: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latencies.record(took);
    }

    fn percentile(&self, p: f64) -> Duration {
        self.latencies.snapshot().quantile(p)
    }
}

async fn drive<F, Fut>(call: F) -> Arc<Report>
where
    F: Fn(u64, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let report = Arc::new(Report::default());
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (call, report) = (call.clone(), Arc::clone(&report));
            tokio::spawn(async move {
                let mut i = 0u64;
                while started.elapsed() < RUN {
                    i += 1;
                    let prompt = (w * 7 + i * 3) % PROMPTS;
                    let t = Instant::now();
                    let ok = call(prompt, w * 1_000_003 + i).await;
                    report.record(t.elapsed(), ok);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    report
}

async fn l2() -> Result<(Arc<dyn Cache<String>>, String), Box<dyn std::error::Error>> {
    #[cfg(feature = "redis")]
    if let Ok(url) = std::env::var("REDIS_URL") {
        let redis = layercache::RedisCache::<String>::builder()
            .name("l2")
            .url(&url)
            .namespace("resilience-demo")
            .build()
            .await?;
        // Start from a clean slate so the run is comparable.
        redis.invalidate_prefix("").await?;
        return Ok((Arc::new(redis), format!("Redis at {url}")));
    }
    Ok((
        Arc::new(MemoryCache::<String>::builder().name("l2").build()?),
        "a second memory layer".into(),
    ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("running each scenario for {RUN:?}...");
    let direct = Arc::new(FlakyProvider::default());
    let p = Arc::clone(&direct);
    let without = drive(move |prompt, seed| {
        let p = Arc::clone(&p);
        async move { p.complete(prompt, seed).await.is_ok() }
    })
    .await;

    let provider = Arc::new(FlakyProvider::default());
    let (l2, l2_name) = l2().await?;
    let l1 = MemoryCache::<String>::builder().name("l1").build()?;
    let cache = Layered::builder(l1, l2)
        .name("resilience")
        .default_options(
            LoadOptions::ttl(Duration::from_secs(2)) // short, so values expire during the run
                .with_jitter(Duration::from_millis(500))
                .with_fail_safe(Duration::from_secs(600)) // serve stale up to 10 min
                .with_fail_safe_throttle(Duration::from_secs(1))
                .with_soft_timeout(Duration::from_millis(150)) // stale after 150 ms if we have it
                .with_hard_timeout(Duration::from_secs(2)), // never wait more than 2 s
        )
        .max_concurrent_loads(4)
        .build()?;
    let (p, c) = (Arc::clone(&provider), cache.clone());
    let with = drive(move |prompt, seed| {
        let (p, c) = (Arc::clone(&p), c.clone());
        async move {
            let key = KeyBuilder::new("demo").part_u64(prompt).build();
            c.get_or_load(
                &key,
                move || async move { p.complete(prompt, seed).await },
                LoadOptions::default(),
            )
            .await
            .is_ok()
        }
    })
    .await;

    let stats = cache.stats();
    println!("\nlayercache resilience demo: {WORKERS} workers, {PROMPTS} prompts, flaky provider (30 % errors, 50–400 ms, 4 % hangs of 3 s)");
    println!("L2: {l2_name}\n");
    println!("                            provider directly    through layercache");
    println!(
        "  requests                  {:>17}    {:>18}",
        without.requests.load(Ordering::Relaxed),
        with.requests.load(Ordering::Relaxed)
    );
    println!(
        "  errors seen by callers    {:>17}    {:>18}",
        without.errors.load(Ordering::Relaxed),
        with.errors.load(Ordering::Relaxed)
    );
    println!(
        "  provider calls            {:>17}    {:>18}",
        direct.calls.load(Ordering::Relaxed),
        provider.calls.load(Ordering::Relaxed)
    );
    println!(
        "  provider failures         {:>17}    {:>18}",
        direct.failures.load(Ordering::Relaxed),
        provider.failures.load(Ordering::Relaxed)
    );
    println!(
        "  p50 latency               {:>17.1?}    {:>18.1?}",
        without.percentile(0.5),
        with.percentile(0.5)
    );
    println!(
        "  p99 latency               {:>17.1?}    {:>18.1?}",
        without.percentile(0.99),
        with.percentile(0.99)
    );
    println!(
        "  max latency               {:>17.1?}    {:>18.1?}",
        without.percentile(1.0),
        with.percentile(1.0)
    );
    println!(
        "\n  cache: {} fresh hits, {} stale answers ({} fail-safe, {} timeouts), {} joined another caller's load, {} misses, {} loads ({} failed)",
        stats.hits, stats.stale_hits, stats.fail_safe, stats.timeouts, stats.coalesced, stats.misses, stats.loads, stats.load_errors
    );
    let loads = cache.load_latency();
    println!(
        "  provider calls made by the cache: p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        loads.p50(),
        loads.p99(),
        loads.max()
    );
    Ok(())
}
