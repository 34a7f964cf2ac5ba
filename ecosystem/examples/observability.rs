//! A service-shaped example for dashboards: cached calls to a simulated LLM under steady load,
//! with every metric served at `/metrics` by `metrics-exporter-prometheus` as real histograms
//! (LLM-length buckets, not summaries).
//!
//! ```text
//! cargo run -p layercache-ecosystem --example observability   # serves http://127.0.0.1:9898/metrics
//! METRICS_ADDR=127.0.0.1:9100 RUN_SECONDS=60 cargo run -p layercache-ecosystem --example observability
//! ```
//!
//! `observability/` holds a Grafana dashboard and Prometheus rules for these metrics, and
//! `scripts/observability_test.sh` scrapes this example with a real Prometheus server.
//! With `REDIS_URL` set the cache is memory + Redis.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use layercache::instrument::{Timer, LLM_BUCKETS_SECONDS};
use layercache::{KeyBuilder, Layered, LoadOptions, MemoryCache};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WORKERS: u64 = 8;
const PROMPTS: u64 = 200;

#[derive(Debug)]
enum LlmError {
    RateLimited,
    Timeout,
}

impl std::fmt::Display for LlmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LlmError::RateLimited => "rate limited",
            LlmError::Timeout => "timed out",
        })
    }
}
impl std::error::Error for LlmError {}

/// A simulated model API: 50–400 ms, a slow tail of a few seconds, 3 % failures.
async fn llm_chat(prompt: u64, nonce: u64) -> Result<String, LlmError> {
    let h = (prompt.wrapping_mul(0x9E37_79B9) ^ nonce.wrapping_mul(0x85EB_CA6B)) % 1000;
    let millis = if h < 20 { 2000 + h * 100 } else { 50 + h % 350 };
    tokio::time::sleep(Duration::from_millis(millis)).await;
    match h % 100 {
        0 => Err(LlmError::RateLimited),
        1 | 2 => Err(LlmError::Timeout),
        _ => Ok(format!("answer to prompt {prompt}")),
    }
}

/// Serve `GET /metrics` from `handle` on `addr`, with a plain tokio listener.
async fn serve_metrics(addr: &str, handle: PrometheusHandle) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("serving http://{}/metrics", listener.local_addr()?);
    loop {
        let (mut socket, _) = listener.accept().await?;
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let (status, body) = if request.starts_with(b"GET /metrics") {
                handle.run_upkeep();
                ("200 OK", handle.render())
            } else {
                ("404 Not Found", "not found\n".to_string())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Real histograms with buckets up to 10 minutes for every `_seconds` metric; install the
    // recorder before building caches and timers (they register their handles when built).
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LLM_BUCKETS_SECONDS)?
        .set_buckets_for_metric(
            Matcher::Full("layercache_value_bytes".into()),
            &[256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0],
        )?
        .install_recorder()?;

    let memory = MemoryCache::<String>::builder()
        .name("chat-l1")
        .max_entries(150)
        .build()?;
    #[cfg_attr(not(feature = "redis"), allow(unused_mut))]
    let mut builder = Layered::single(memory).name("chat").default_options(
        LoadOptions::ttl(Duration::from_secs(20))
            .with_jitter(Duration::from_secs(5))
            .with_fail_safe(Duration::from_secs(600))
            .with_hard_timeout(Duration::from_secs(3)),
    );
    #[cfg(feature = "redis")]
    if let Ok(url) = std::env::var("REDIS_URL") {
        builder = builder.l2(layercache::RedisCache::builder()
            .name("chat-l2")
            .url(&url)
            .namespace("observability")
            .build()
            .await?);
    }
    let cache = builder.build()?;
    let llm = Timer::builder("llm_chat")
        .label("model", "sim-1")
        .classify(&["rate_limited", "timeout"], |e: &LlmError| match e {
            LlmError::RateLimited => Some("rate_limited"),
            LlmError::Timeout => Some("timeout"),
        })
        .build();
    let requests = Timer::new("chat_request");

    let addr = std::env::var("METRICS_ADDR").unwrap_or_else(|_| "127.0.0.1:9898".into());
    tokio::spawn(async move {
        if let Err(e) = serve_metrics(&addr, handle).await {
            eprintln!("metrics server failed: {e}");
            std::process::exit(1);
        }
    });

    let run_for = std::env::var("RUN_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let started = Instant::now();
    let nonce = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (cache, llm, requests, nonce) = (
                cache.clone(),
                llm.clone(),
                requests.clone(),
                Arc::clone(&nonce),
            );
            tokio::spawn(async move {
                let mut state = 0x2545_F491_4F6C_DD1Du64 ^ (w + 1);
                while run_for.is_none_or(|d| started.elapsed() < d) {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    // Skewed towards a few popular prompts, as real traffic is.
                    let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                    let prompt = (u * u * u * PROMPTS as f64) as u64;
                    let key = KeyBuilder::new("chat").version(1).part_u64(prompt).build();
                    let (llm, n) = (llm.clone(), nonce.fetch_add(1, Ordering::Relaxed));
                    let _ = requests
                        .time(cache.get_or_load(
                            &key,
                            move || async move { llm.time(llm_chat(prompt, n)).await },
                            LoadOptions::default(),
                        ))
                        .await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    let mut report = tokio::time::interval(Duration::from_secs(10));
    report.tick().await;
    loop {
        tokio::select! {
            _ = report.tick() => {
                let (stats, calls) = (cache.stats(), llm.snapshot());
                println!(
                    "{:>4}s: {} answers, {:.1}% served from cache; LLM p50 {:.0?} p95 {:.0?} p99 {:.0?}",
                    started.elapsed().as_secs(),
                    stats.requests(),
                    stats.served_from_cache_ratio() * 100.0,
                    calls.p50(),
                    calls.p95(),
                    calls.p99()
                );
            }
            _ = async { for w in &workers { while !w.is_finished() { tokio::time::sleep(Duration::from_millis(100)).await; } } } => break,
        }
    }
    Ok(())
}
