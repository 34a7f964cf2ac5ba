//! An axum service whose answer endpoint is cached by `HttpCacheLayer`: per-route lifetimes,
//! one answer per `Authorization` token, `x-cache` on every response, one upstream call for a
//! burst of identical requests, and the last good answer served when the upstream fails.
//!
//! ```text
//! cargo run -p layercache-ecosystem --example axum_cache
//! ```
//!
//! It serves on a free loopback port, sends itself a few requests with a real HTTP client, prints
//! what came back, and exits. Add `REDIS_URL=redis://127.0.0.1:6379` to the builder's L2 (see
//! `examples/fleet.rs`) to share responses between replicas.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use layercache::http::{CachedResponse, HttpCacheLayer};
use layercache::{Layered, MemoryCache};
use serde_json::{json, Value};

#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<AtomicU32>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

/// Stands in for a model call: slow, paid for, sometimes down.
async fn answer(State(up): State<Upstream>, headers: HeaderMap) -> Result<Json<Value>, StatusCode> {
    up.calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    if up.failing.load(Ordering::SeqCst) {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    let user = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous");
    Ok(Json(json!({
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("hello, {user}")}}],
    })))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let l1 = MemoryCache::<CachedResponse>::builder()
        .max_bytes(64 << 20)
        .weigher(|response: &CachedResponse| response.body().len() + 256)
        .build()?;
    let layer = HttpCacheLayer::builder(Layered::single(l1))
        .route("/v1/answer", Duration::from_secs(1)) // short, to show fail-safe below
        .vary("authorization")
        .fail_safe(Duration::from_secs(3600))
        .build()?;
    let upstream = Upstream::default();
    let app = Router::new()
        .route("/v1/answer", get(answer))
        .with_state(upstream.clone())
        .layer(layer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = reqwest::Client::new();
    let ask = |token: &'static str| {
        let request = client
            .get(format!("{base}/v1/answer?q=hi"))
            .header("authorization", token);
        async move {
            let response = request.send().await?;
            let x_cache = response
                .headers()
                .get("x-cache")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            let status = response.status();
            Ok::<_, reqwest::Error>((status, x_cache, response.text().await?))
        }
    };

    // A burst of 20 identical requests: one upstream call.
    let burst: Vec<_> = (0..20).map(|_| ask("Bearer alice")).collect();
    for result in futures_join_all(burst).await {
        let (status, x_cache, _) = result?;
        assert!(status.is_success(), "{status}");
        let _ = x_cache;
    }
    println!(
        "20 concurrent requests: {} upstream call(s)",
        upstream.calls.load(Ordering::SeqCst)
    );
    let (_, x_cache, body) = ask("Bearer alice").await?;
    println!("alice again: x-cache {x_cache}: {body}");
    let (_, x_cache, body) = ask("Bearer bob").await?;
    println!("bob:         x-cache {x_cache}: {body}");

    // The answer expires (it is kept for fail-safe), then the upstream goes down.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    upstream.failing.store(true, Ordering::SeqCst);
    let (status, x_cache, body) = ask("Bearer alice").await?;
    println!("upstream down: {status}, x-cache {x_cache}: {body}");
    println!("cache stats: {:?}", layer.cache().stats());
    Ok(())
}

/// Await every future (what `futures::future::join_all` does), on spawned tasks.
async fn futures_join_all<F, T>(futures: Vec<F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("no panic"));
    }
    out
}
