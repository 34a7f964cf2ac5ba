//! TLS and authentication against a real `redis-server --tls-port` with certificates made by
//! the test: trusted and untrusted CAs, the server-name check, client certificates, ACL users
//! over TLS. A failed handshake fails `build()` at once with a typed error.

#![cfg(all(feature = "tls", feature = "msgpack"))]

mod support;

use std::time::{Duration, Instant};

use layercache::{CacheExt, Error, RedisCache, RedisErrorKind};
use support::redis::{free_port, RedisServer};
use support::tls::{make, Certs};

struct TlsServer {
    _server: RedisServer,
    tls_port: u16,
}

/// A server with a TLS port whose clients must present a certificate of our CA, and an ACL
/// user `svc`.
fn tls_server(certs: &Certs) -> TlsServer {
    let tls_port = free_port().to_string();
    let path = |name: &str| certs.path(name).to_string_lossy().into_owned();
    let (cert, key, ca) = (path("server.crt"), path("server.key"), path("ca.crt"));
    let server = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "yes",
    ]);
    server.cli(&["ACL", "SETUSER", "svc", "on", ">tls-Pa55", "~*", "+@all"]);
    TlsServer {
        _server: server,
        tls_port: tls_port.parse().expect("port"),
    }
}

fn builder(certs: &Certs, url: String) -> layercache::RedisCacheBuilder<String> {
    RedisCache::<String>::builder()
        .url(url)
        .tls_ca_file(certs.path("ca.crt"))
        .tls_client_cert(certs.path("client.crt"), certs.path("client.key"))
        .connect_timeout(Duration::from_secs(2))
}

fn assert_kind(result: layercache::Result<RedisCache<String>>, kind: RedisErrorKind, what: &str) {
    match result {
        Err(Error::Redis {
            op: "connect",
            source,
        }) => {
            assert_eq!(source.kind(), kind, "{what}: {source}")
        }
        Err(other) => panic!("{what}: expected a connect error of kind {kind:?}, got {other:?}"),
        Ok(_) => panic!("{what}: the build succeeded"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_trusted_ca_and_a_client_certificate_round_trips() {
    let certs = make();
    let server = tls_server(&certs);
    let cache = builder(
        &certs,
        format!("rediss://svc:tls-Pa55@localhost:{}", server.tls_port),
    )
    .namespace("tls")
    .build()
    .await
    .expect("TLS with our CA, a client certificate and an ACL user");
    cache
        .set_value("k", "over TLS".to_string(), Duration::from_secs(60))
        .await
        .expect("set");
    assert_eq!(
        cache.get_value("k").await.expect("get").as_deref(),
        Some("over TLS")
    );
    // By IP address, the certificate (for `localhost`) matches only with the server name set.
    let by_ip = builder(
        &certs,
        format!("rediss://svc:tls-Pa55@127.0.0.1:{}", server.tls_port),
    )
    .tls_server_name("localhost")
    .namespace("tls")
    .build()
    .await
    .expect("the server name is checked against the certificate");
    assert!(by_ip.get_value("k").await.expect("get").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_handshake_fails_the_build_at_once_with_a_typed_error() {
    let certs = make();
    let server = tls_server(&certs);
    let url = |host: &str| format!("rediss://svc:tls-Pa55@{host}:{}", server.tls_port);

    // A server certificate our CA did not sign.
    let started = Instant::now();
    let untrusted = RedisCache::<String>::builder()
        .url(url("localhost"))
        .tls_ca_file(certs.path("other-ca.crt"))
        .tls_client_cert(certs.path("client.crt"), certs.path("client.key"))
        .build()
        .await;
    assert_kind(
        untrusted,
        RedisErrorKind::Tls,
        "untrusted server certificate",
    );
    assert!(started.elapsed() < Duration::from_secs(2), "no retry loop");

    // The certificate names `localhost`, not 127.0.0.1.
    let mismatch = builder(&certs, url("127.0.0.1")).build().await;
    assert_kind(mismatch, RedisErrorKind::Tls, "server name mismatch");

    // The server asks for a client certificate and gets none.
    let anonymous = RedisCache::<String>::builder()
        .url(url("localhost"))
        .tls_ca_file(certs.path("ca.crt"))
        .build()
        .await;
    assert!(
        matches!(anonymous, Err(Error::Redis { op: "connect", .. })),
        "no client certificate: {anonymous:?}"
    );

    // Wrong ACL password over TLS: an auth error, the password nowhere in it.
    let wrong = builder(
        &certs,
        format!("rediss://svc:not-the-Pa55@localhost:{}", server.tls_port),
    )
    .build()
    .await;
    let text = format!("{wrong:?}");
    assert!(!text.contains("Pa55"), "{text}");
    assert_kind(wrong, RedisErrorKind::Auth, "wrong password over TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_settings_that_cannot_be_honoured_are_errors() {
    let certs = make();
    // TLS options with a plain URL.
    let plain = RedisCache::<String>::builder()
        .url("redis://127.0.0.1:6379")
        .tls_ca_file(certs.path("ca.crt"))
        .build()
        .await;
    assert!(matches!(plain, Err(Error::Config { .. })), "{plain:?}");
    // A CA file that does not exist or holds no certificate.
    for bad in [certs.path("missing.crt"), certs.path("server.ext")] {
        let result = RedisCache::<String>::builder()
            .url("rediss://localhost:6380")
            .tls_ca_file(&bad)
            .build()
            .await;
        assert!(
            matches!(result, Err(Error::Config { .. })),
            "{bad:?}: {result:?}"
        );
    }
}

/// A 3-master cluster whose client ports and cluster bus speak only TLS (`tls-cluster yes`), made
/// with `redis-cli --tls --cluster create`. Returns the nodes and their TLS ports.
fn tls_cluster(certs: &Certs) -> (Vec<RedisServer>, Vec<u16>) {
    let path = |name: &str| certs.path(name).to_string_lossy().into_owned();
    let (cert, key, ca) = (path("node.crt"), path("node.key"), path("ca.crt"));
    let mut nodes = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..3 {
        let tls_port = free_port();
        let port = tls_port.to_string();
        nodes.push(RedisServer::start_with(&[
            "--tls-port",
            &port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "optional",
            "--tls-cluster",
            "yes",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ]));
        ports.push(tls_port);
    }
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    support::redis::cluster_create(
        &addrs,
        &["--tls", "--cacert", &ca, "--cert", &cert, "--key", &key],
        0,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes
        .iter()
        .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
    {
        assert!(
            Instant::now() < deadline,
            "the TLS cluster never reached state ok"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (nodes, ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_works_on_a_cluster_and_an_untrusted_ca_fails_there_too() {
    let certs = make();
    let (_nodes, ports) = tls_cluster(&certs);
    let url = format!("rediss-cluster://127.0.0.1:{}", ports[0]);
    let cache = builder(&certs, url.clone())
        .namespace("tlsc")
        .build()
        .await
        .expect("TLS to every master of the cluster");
    // Keys over every master, written and read back.
    for i in 0..200 {
        cache
            .set_value(&format!("k{i}"), format!("v{i}"), Duration::from_secs(60))
            .await
            .expect("set");
    }
    for i in 0..200 {
        assert_eq!(
            cache.get_value(&format!("k{i}")).await.expect("get"),
            Some(format!("v{i}"))
        );
    }
    let untrusted = RedisCache::<String>::builder()
        .url(url)
        .tls_ca_file(certs.path("other-ca.crt"))
        .build()
        .await;
    assert_kind(untrusted, RedisErrorKind::Tls, "untrusted CA on a cluster");
}
