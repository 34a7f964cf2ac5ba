//! The main job: put a cache in front of a slow, costly AI call and see what it saves.
//!
//! A simulated chat-completion API (≈300 ms and a fraction of a cent per call) is called by eight
//! concurrent workers with a realistic mix of prompts: a few popular ones asked again and again,
//! and a long tail of new ones. The same workload runs twice — straight to the API, then through
//! `layercache` — and a short report compares calls, cost and latency.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Needs nothing installed: the cache is in memory. With `REDIS_URL` set (for example
//! `REDIS_URL=redis://127.0.0.1:6379 cargo run --example quickstart`) it is a layered cache:
//! memory in front of Redis, shared by every process that uses the same URL — run it twice and
//! the second run is served from what the first one stored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use layercache::instrument::{LatencySnapshot, Timer};
use layercache::{KeyBuilder, Layered, LoadOptions, MemoryCache, Source};
use serde::{Deserialize, Serialize};

const WORKERS: usize = 8;
const REQUESTS_PER_WORKER: usize = 40;
const DISTINCT_PROMPTS: usize = 60;
const COST_PER_1K_TOKENS_USD: f64 = 0.002;

/// What the simulated model returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChatReply {
    text: String,
    prompt_tokens: u32,
    completion_tokens: u32,
}

impl ChatReply {
    fn cost_usd(&self) -> f64 {
        f64::from(self.prompt_tokens + self.completion_tokens) / 1000.0 * COST_PER_1K_TOKENS_USD
    }
}

#[derive(Debug)]
struct ApiError(String);
impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ApiError {}

/// A stand-in for an LLM client: slow, metered, and shared behind an `Arc`.
#[derive(Debug, Default)]
struct SimulatedLlm {
    calls: AtomicU64,
    spent_micro_usd: AtomicU64,
}

impl SimulatedLlm {
    async fn chat(&self, prompt: &str) -> Result<ChatReply, ApiError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        // 250–350 ms, varying with the prompt.
        let jitter = prompt
            .bytes()
            .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(b)))
            % 100;
        tokio::time::sleep(Duration::from_millis(250 + jitter)).await;
        let reply = ChatReply {
            text: format!("Here is a thoughtful answer to: {prompt}"),
            prompt_tokens: 40 + prompt.len() as u32 / 4,
            completion_tokens: 180 + jitter as u32,
        };
        self.spent_micro_usd
            .fetch_add((reply.cost_usd() * 1e6) as u64, Ordering::Relaxed);
        Ok(reply)
    }

    fn spent_usd(&self) -> f64 {
        self.spent_micro_usd.load(Ordering::Relaxed) as f64 / 1e6
    }
}

/// The prompts each worker sends: skewed towards a few popular ones (as real traffic is), from a
/// small deterministic generator so every run sees the same mix.
fn workload(worker: usize) -> Vec<String> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (worker as u64 + 1);
    (0..REQUESTS_PER_WORKER)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            let index = (u * u * u * DISTINCT_PROMPTS as f64) as usize;
            format!(
                "Question #{index}: how do I reset my password on device model {}?",
                index * 7
            )
        })
        .collect()
}

/// Run the workload through `call`, each request timed by a `Timer` named `name`; the timer's
/// histogram gives the percentiles (no sorting by hand).
async fn run<F, Fut>(name: &str, call: F) -> LatencySnapshot
where
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let timer = Timer::new(name);
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (call, timer) = (call.clone(), timer.clone());
            tokio::spawn(async move {
                for prompt in workload(w) {
                    timer.time_infallible(call(prompt)).await;
                }
            })
        })
        .collect();
    for worker in workers {
        if let Err(e) = worker.await {
            eprintln!("worker failed: {e}");
        }
    }
    timer.snapshot()
}

/// The cache: memory alone, or — with `REDIS_URL` set — memory (L1) in front of Redis (L2).
/// Either way it is one `Layered`: adding Redis is one builder line.
async fn connect() -> Result<(Layered<ChatReply>, String), Box<dyn std::error::Error>> {
    let memory = MemoryCache::<ChatReply>::builder()
        .name("chat-l1")
        .max_bytes(64 << 20)
        .weigher(|reply| reply.text.len())
        .build()?;
    #[cfg_attr(not(feature = "redis"), allow(unused_mut))]
    let mut builder = Layered::single(memory)
        .name("chat")
        .l1_ttl(Duration::from_secs(60))
        // Serve a stale reply for up to a day if the model API fails.
        .default_options(LoadOptions::new().with_fail_safe(Duration::from_secs(86_400)));
    #[cfg_attr(not(feature = "redis"), allow(unused_mut))]
    let mut where_ = "memory".to_string();
    if let Ok(url) = std::env::var("REDIS_URL") {
        #[cfg(feature = "redis")]
        {
            builder = builder.l2(layercache::RedisCache::<ChatReply>::builder()
                .name("chat-l2")
                .url(&url)
                .namespace("quickstart:v1")
                .build()
                .await?);
            where_ = format!("memory (L1) + Redis at {url} (L2, namespace quickstart:v1)");
        }
        #[cfg(not(feature = "redis"))]
        println!(
            "note: REDIS_URL={url} is set but this build has no `redis` feature; using memory.\n"
        );
    }
    Ok((builder.build()?, where_))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (cache, where_) = connect().await?;

    // 1. Without a cache: every request pays for a model call.
    let direct = Arc::new(SimulatedLlm::default());
    let started = Instant::now();
    let api = Arc::clone(&direct);
    let uncached = run("uncached", move |prompt: String| {
        let api = Arc::clone(&api);
        async move {
            if let Err(e) = api.chat(&prompt).await {
                eprintln!("call failed: {e}");
            }
        }
    })
    .await;
    let uncached_wall = started.elapsed();

    // 2. The same traffic through layercache.
    let cached_api = Arc::new(SimulatedLlm::default());
    let started = Instant::now();
    let (api, c) = (Arc::clone(&cached_api), cache.clone());
    let failures = Arc::new(AtomicU64::new(0));
    let failed = Arc::clone(&failures);
    // How each request was answered, by `Source` (what an `x-cache` header would say).
    let sources = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        &'static str,
        u64,
    >::new()));
    let seen = Arc::clone(&sources);
    let cached = run("cached", move |prompt: String| {
        let (api, cache, failed, seen) = (
            Arc::clone(&api),
            c.clone(),
            Arc::clone(&failed),
            Arc::clone(&seen),
        );
        async move {
            // A private key: the prompt is hashed, only the model name stays readable.
            let key = KeyBuilder::request("chat")
                .version(1)
                .label("sim-model")
                .part(&prompt)
                .build();
            let loaded = cache
                .get_or_load_answer(
                    &key,
                    move || async move { api.chat(&prompt).await },
                    LoadOptions::ttl(Duration::from_secs(3600)),
                )
                .await;
            match loaded {
                Ok(answer) => {
                    let source: Source = answer.source;
                    if let Ok(mut seen) = seen.lock() {
                        *seen.entry(source.as_str()).or_default() += 1;
                    }
                }
                Err(e) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("call failed: {e}");
                }
            }
        }
    })
    .await;
    let cached_wall = started.elapsed();

    let stats = cache.stats();
    let requests = WORKERS * REQUESTS_PER_WORKER;
    let calls = cached_api.calls.load(Ordering::Relaxed);
    // The skew leaves a few rare prompts unasked: a cold cache calls the model once per prompt
    // asked, so that is the count to compare "model calls made" with.
    let asked = (0..WORKERS)
        .flat_map(workload)
        .collect::<std::collections::HashSet<_>>()
        .len();
    println!(
        "layercache quickstart: {requests} chat requests from {WORKERS} concurrent workers, \
         {asked} distinct prompts (of {DISTINCT_PROMPTS})"
    );
    println!("cache: {where_}\n");
    println!("                         without cache     with cache");
    println!(
        "  model calls made       {:>13}  {:>13}",
        direct.calls.load(Ordering::Relaxed),
        calls
    );
    println!(
        "  served from cache      {:>13}  {:>13}",
        0,
        requests as u64 - calls
    );
    println!(
        "  money spent            {:>12.4}$  {:>12.4}$",
        direct.spent_usd(),
        cached_api.spent_usd()
    );
    println!(
        "  p50 latency            {:>13.1?}  {:>13.1?}",
        uncached.p50(),
        cached.p50()
    );
    println!(
        "  p95 latency            {:>13.1?}  {:>13.1?}",
        uncached.p95(),
        cached.p95()
    );
    println!(
        "  wall time              {:>13.1?}  {:>13.1?}",
        uncached_wall, cached_wall
    );
    println!();
    println!(
        "  cache: {} hits, {} joined another caller's load, {} misses; served from cache {:.1}% (hit ratio {:.1}%), {} loads, {} failures",
        stats.hits,
        stats.coalesced,
        stats.misses,
        stats.served_from_cache_ratio() * 100.0,
        stats.hit_ratio() * 100.0,
        stats.loads,
        failures.load(Ordering::Relaxed),
    );
    if let Ok(sources) = sources.lock() {
        let list: Vec<String> = sources.iter().map(|(s, n)| format!("{s} {n}")).collect();
        println!("  answers by source: {}", list.join(", "));
    }
    Ok(())
}
