//! The tower HTTP cache speaking HTTP with a real axum upstream and reqwest client: an event
//! stream passed through as it comes, a revalidation answered `304` from the stored response,
//! responses kept apart per host, and `HEAD` answered from the stored `GET`.

#![cfg(all(feature = "tower", feature = "msgpack"))]

#[path = "support/upstream.rs"]
mod upstream;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use upstream::*;

/// A server-sent event stream on a cached route reaches its client event by event — never
/// buffered whole (an LLM's token stream would otherwise arrive at its end) — and is never
/// stored: the next request streams from the upstream again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_is_streamed_to_its_caller_and_never_stored() {
    let server = serve(l1()).await;
    let url = format!("{}/cached/events", server.base);
    // The headers and the first event arrive while the upstream still holds the last event
    // back: a layer that buffered the body would answer only once the stream ended.
    let mut response = tokio::time::timeout(Duration::from_secs(5), server.client.get(&url).send())
        .await
        .expect("the headers before the stream ends: not buffered")
        .expect("request");
    assert_eq!(response.headers()["x-cache"], "miss");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let first = tokio::time::timeout(Duration::from_secs(5), response.chunk())
        .await
        .expect("the first event before the stream ends: not buffered")
        .expect("chunk")
        .expect("an event");
    assert_eq!(&first[..], b"data: first\n\n");
    server.upstream.gate.add_permits(1);
    let rest = response.text().await.expect("rest");
    assert_eq!(rest, "data: last\n\n");

    server.upstream.gate.add_permits(1);
    let again = server.get("/cached/events", &[]).await;
    assert_eq!(again.body, "data: first\n\ndata: last\n\n");
    assert_eq!(again.x_cache.as_deref(), Some("miss"));
    assert_eq!(server.upstream.calls("/cached/events"), 2, "never stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revalidating_request_gets_304_and_never_hands_it_to_the_requests_that_waited() {
    let server = serve(l1()).await;
    let path = "/cached/etag-gated";
    // A browser revalidates what it holds while 10 new visitors ask for the same cold page;
    // the upstream call is held until all 11 requests have reached the server.
    let revalidate = server.get(path, &[("if-none-match", "\"reply-v1\"")]);
    let open_the_gate = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.upstream.entered.load(Ordering::SeqCst) < 11 {
            assert!(Instant::now() < deadline, "the requests never arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.upstream.gate.add_permits(1000);
    };
    let visitors = async {
        // The revalidation reaches the upstream first (it runs the load).
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.upstream.calls(path) < 1 {
            assert!(Instant::now() < deadline, "the first request never arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.burst(path, 10).await
    };
    let (revalidated, visitors, ()) = tokio::join!(revalidate, visitors, open_the_gate);
    assert_eq!(revalidated.status, 304, "the browser's copy is still good");
    assert!(revalidated.body.is_empty());
    assert_eq!(revalidated.etag.as_deref(), Some("\"reply-v1\""));
    for (status, headers, body) in &visitors {
        assert_eq!(*status, 200, "a visitor without a copy got {status}");
        assert!(body.contains("chat.completion"), "{body:?}");
        assert_eq!(headers.get("etag").expect("etag"), "\"reply-v1\"");
    }
    assert_eq!(server.upstream.calls(path), 1, "one upstream call, stored");
    assert_eq!(
        server.upstream.conditional.load(Ordering::SeqCst),
        0,
        "the upstream is asked for the whole response"
    );

    // From the cache: a matching validator (strong, weak, in a list, `*`) is a 304; another one
    // gets the whole response; If-None-Match outranks If-Modified-Since.
    let last_modified = "Sun, 29 Nov 2026 10:00:00 GMT";
    for (name, value, status) in [
        ("if-none-match", "\"reply-v1\"", 304),
        ("if-none-match", "W/\"reply-v1\"", 304),
        ("if-none-match", "\"old\", \"reply-v1\"", 304),
        ("if-none-match", "*", 304),
        ("if-none-match", "\"reply-v0\"", 200),
        ("if-modified-since", last_modified, 304),
        ("if-modified-since", "Sat, 28 Nov 2026 10:00:00 GMT", 200),
    ] {
        let r = server.get(path, &[(name, value)]).await;
        assert_eq!(
            (r.status, r.x_cache.as_deref()),
            (status, Some("hit")),
            "{name}: {value}"
        );
        assert_eq!(r.body.is_empty(), status == 304, "{name}: {value}");
        assert_eq!(r.etag.as_deref(), Some("\"reply-v1\""));
    }
    let both = server
        .get(
            path,
            &[
                ("if-none-match", "\"reply-v0\""),
                ("if-modified-since", last_modified),
            ],
        )
        .await;
    assert_eq!(both.status, 200);
    assert_eq!(server.upstream.calls(path), 1);

    // A range request on a cold route gets (and stores) the whole response, as a server that
    // ignores ranges answers; so does everyone after it.
    let ranged = server
        .get("/cached/etag-ranged", &[("range", "bytes=0-4")])
        .await;
    assert_eq!(
        (ranged.status, ranged.x_cache.as_deref()),
        (200, Some("miss"))
    );
    assert!(ranged.body.contains("chat.completion"));
    let plain = server.get("/cached/etag-ranged", &[]).await;
    assert_eq!((plain.status, plain.x_cache.as_deref()), (200, Some("hit")));
    assert_eq!(plain.body, ranged.body);
    assert_eq!(server.upstream.conditional.load(Ordering::SeqCst), 0);

    // A precondition the cache does not evaluate goes to the upstream as it is.
    let if_match = server.get(path, &[("if-match", "\"reply-v1\"")]).await;
    assert_eq!(
        (if_match.status, if_match.x_cache.as_deref()),
        (200, Some("bypass"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_host_gets_its_own_responses() {
    let server = serve(l1()).await;
    let port = server.base.rsplit(':').next().expect("port").to_owned();
    let (a, b) = (format!("a.example:{port}"), format!("b.example:{port}"));
    let first_a = server.get("/cached/tenant", &[("host", &a)]).await;
    let first_b = server.get("/cached/tenant", &[("host", &b)]).await;
    assert_eq!(first_a.body, format!("tenant {a}, call 1"));
    assert_eq!(
        first_b.body,
        format!("tenant {b}, call 2"),
        "b was served a's response"
    );
    // Each host's response is cached for that host (the host's case does not matter).
    let again_a = server
        .get("/cached/tenant", &[("host", &a.to_uppercase())])
        .await;
    let again_b = server.get("/cached/tenant", &[("host", &b)]).await;
    assert_eq!(
        (again_a.body.as_str(), again_a.x_cache.as_deref()),
        (first_a.body.as_str(), Some("hit"))
    );
    assert_eq!(
        (again_b.body, again_b.x_cache.as_deref()),
        (first_b.body, Some("hit"))
    );
    // The port is not part of the host: replicas listening on other ports share.
    let other_port = server
        .get("/cached/tenant", &[("host", "a.example:1")])
        .await;
    assert_eq!(other_port.body, first_a.body);
    assert_eq!(server.upstream.calls("/cached/tenant"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_request_is_answered_from_the_stored_get_response() {
    let server = serve(l1()).await;
    let head = |path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let mut request = server.client.head(format!("{}{path}", server.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        async move { request.send().await.expect("HEAD") }
    };
    // Nothing stored yet: forwarded (a HEAD's answer has no body to store).
    let cold = head("/cached/etag-head", &[]).await;
    assert_eq!(cold.status(), 200);
    assert_eq!(cold.headers()["x-cache"], "miss");
    assert_eq!(server.upstream.calls("/cached/etag-head"), 1);

    let got = server.get("/cached/etag-head", &[]).await;
    assert_eq!((got.status, got.x_cache.as_deref()), (200, Some("miss")));
    let hit = head("/cached/etag-head", &[]).await;
    assert_eq!(hit.status(), 200);
    assert_eq!(hit.headers()["x-cache"], "hit");
    assert_eq!(hit.headers()["etag"], "\"reply-v1\"");
    assert_eq!(hit.headers()["content-type"], "application/json");
    assert!(hit.headers().contains_key("age"));
    assert_eq!(
        hit.headers()["content-length"],
        got.body.len().to_string().as_str(),
        "the length of the GET's body"
    );
    assert!(hit.text().await.expect("body").is_empty());
    let revalidated = head("/cached/etag-head", &[("if-none-match", "\"reply-v1\"")]).await;
    assert_eq!(revalidated.status(), 304);
    assert_eq!(
        server.upstream.calls("/cached/etag-head"),
        2,
        "one HEAD forwarded, one GET; the rest from the cache"
    );
}
