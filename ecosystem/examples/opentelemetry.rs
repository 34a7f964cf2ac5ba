//! layercache's spans exported to OpenTelemetry through `tracing-opentelemetry`.
//!
//! ```text
//! cargo run -p layercache-ecosystem --example opentelemetry
//! ```
//!
//! Each request's span (`chat_request`) has a `layercache.get_or_load` child saying how it was
//! answered (`source`, `layer`, `joined`, `outcome`); a load adds a `layercache.load` child that
//! runs on the detached load task, and a Redis layer adds a `layercache.redis` span per command.
//! The spans are printed by OpenTelemetry's stdout exporter; in a service, swap it for the OTLP
//! exporter of `opentelemetry-otlp` and point it at your collector.

use std::time::Duration;

use layercache::{Layered, LoadOptions, MemoryCache};
use opentelemetry::trace::TracerProvider as _;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(opentelemetry_stdout::SpanExporter::default())
        .build();
    let tracer = provider.tracer("layercache-example");
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
    tracing::subscriber::set_global_default(subscriber)?;

    let cache = Layered::single(MemoryCache::<String>::builder().build()?)
        .name("chat")
        .build()?;
    for request in 0..2 {
        let reply = cache
            .get_or_load(
                "prompt:what-is-a-cache",
                || async {
                    tokio::time::sleep(Duration::from_millis(50)).await; // the model call
                    Ok::<_, std::io::Error>("a place to keep answers".to_string())
                },
                LoadOptions::ttl(Duration::from_secs(60)),
            )
            .instrument(tracing::info_span!("chat_request", request))
            .await?;
        println!("request {request}: {reply}");
    }
    // Let the detached load's span end, then flush.
    tokio::time::sleep(Duration::from_millis(100)).await;
    provider.shutdown()?;
    Ok(())
}
