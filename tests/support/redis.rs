//! Real `redis-server` processes for tests: a single server or a 3-master cluster, each on free
//! loopback ports, stopped (SIGKILL) when the handle drops — also when the test panics.
//!
//! A missing `redis-server` fails the test with the command that installs it; it never skips.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "redis-server was not found on PATH. These tests need a real Redis \
     (6.2 or later). Install it with `sudo apt-get install -y redis-server redis-tools` \
     (Debian/Ubuntu), `brew install redis` (macOS), or run scripts/test.sh, which installs it.";

/// The server under test: `redis` (default) or `valkey`, from `LAYERCACHE_TEST_SERVER`.
pub fn server_kind() -> &'static str {
    match std::env::var("LAYERCACHE_TEST_SERVER").as_deref() {
        Err(_) | Ok("") | Ok("redis") => "redis",
        Ok("valkey") => "valkey",
        Ok(other) => panic!("LAYERCACHE_TEST_SERVER={other}: use redis or valkey"),
    }
}

/// The path of `name` (`redis-server`, `redis-cli`) for the server under test: with
/// `LAYERCACHE_TEST_SERVER=valkey`, `valkey-server` and `valkey-cli` instead.
pub fn binary(name: &str) -> PathBuf {
    let name = if server_kind() == "valkey" {
        name.replacen("redis", "valkey", 1)
    } else {
        name.to_owned()
    };
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(&name))
            .find(|candidate| candidate.is_file())
    });
    match found {
        Some(path) => path,
        None if server_kind() == "valkey" => panic!(
            "{name} was not found on PATH. The Valkey suite needs Valkey 8: on Debian bookworm, \
             `apt-get install -t bookworm-backports valkey-server valkey-tools` (scripts/test.sh \
             adds the backports suite and installs it)."
        ),
        None => panic!("{INSTALL_HINT} (missing: {name})"),
    }
}

/// A free TCP port on 127.0.0.1 (and its cluster bus port, +10000, also free), never one this
/// process was given before: a port handed out for a server that is not started yet is not
/// bound, and the kernel could hand it to the next caller.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local addr").port();
        drop(listener);
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            let mut given = GIVEN
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !given.contains(&port) {
                given.push(port);
                return port;
            }
        }
    }
}

fn wait_until_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(out) = Command::new(binary("redis-cli"))
            .args(["-p", &port.to_string(), "ping"])
            .stderr(Stdio::null())
            .output()
        {
            if String::from_utf8_lossy(&out.stdout).trim() == "PONG" {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "redis-server on port {port} did not start within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `redis-server` process.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    /// Start a fresh server on a free port (no persistence).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A free port for a server that is not started yet: `restart()` starts it. For tests of a
    /// client that comes up before its server.
    pub fn not_started() -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("layercache-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        RedisServer {
            port,
            child: None,
            dir,
            extra: Vec::new(),
        }
    }

    /// Start a server with extra `--option value` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("layercache-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        let mut server = RedisServer {
            port,
            child: None,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new(binary("redis-server"))
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start redis-server: {e}. {INSTALL_HINT}"));
        self.child = Some(child);
        wait_until_ready(self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGSTOP: the server hangs, connections stay open.
    pub fn pause(&self) {
        signal(self.pid(), "-STOP");
    }

    /// SIGCONT: the server resumes.
    pub fn resume(&self) {
        signal(self.pid(), "-CONT");
    }

    /// SIGKILL and reap: connections drop, data is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port after [`kill`](Self::kill).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Run a `redis-cli` command against this server and return its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// The PTTL of `key` in ms (-1: no expiry, -2: no such key).
    pub fn pttl(&self, key: &str) -> i64 {
        self.cli(&["pttl", key])
            .trim()
            .parse()
            .expect("PTTL is a number")
    }

    /// How many times `command` (lower case: `get`, `mget`, `set`) ran since the server started
    /// or since `CONFIG RESETSTAT` (`INFO commandstats`).
    pub fn command_calls(&self, command: &str) -> u64 {
        let info = self.cli(&["INFO", "commandstats"]);
        info.lines()
            .find_map(|line| {
                let rest = line.strip_prefix(&format!("cmdstat_{command}:calls="))?;
                rest.split(',').next()?.trim().parse().ok()
            })
            .unwrap_or(0)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped process must be continued to die promptly on some kernels.
            signal(child.id(), "-CONT");
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid} failed");
}

/// Run `redis-cli -p port args…` and return stdout.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new(binary("redis-cli"))
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `redis-cli [cli_args] --cluster create addrs… --cluster-replicas replicas`, which must succeed.
pub fn cluster_create(addrs: &[String], cli_args: &[&str], replicas: usize) {
    let out = Command::new(binary("redis-cli"))
        .args(cli_args)
        .args(["--cluster", "create"])
        .args(addrs)
        .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
        .output()
        .expect("run redis-cli --cluster create");
    assert!(
        out.status.success(),
        "cluster create failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 3-master Redis Cluster on loopback, built with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A cluster whose nodes also get the `extra` server options.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_topology(0, extra)
    }

    /// 3 masters with `replicas` replicas each (nodes 0–2 start as masters).
    pub fn start_topology(replicas: usize, extra: &[&str]) -> Self {
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| {
                let mut args = vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    // Without this a replica's first sync waits 5 s for company and can time
                    // out; an unsynced replica refuses to fail over ("data too old").
                    "--repl-diskless-sync-delay",
                    "0",
                ];
                args.extend_from_slice(extra);
                RedisServer::start_with(&args)
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        cluster_create(&addrs, &[], replicas);
        let cluster = RedisCluster { nodes };
        let deadline = Instant::now() + Duration::from_secs(20);
        let total = cluster.nodes.len();
        let ready = |n: &RedisServer| {
            let view = n.cli(&["cluster", "nodes"]);
            let replication = n.cli(&["info", "replication"]);
            // Every node linked to every other over the cluster bus: a PUBLISH reaches only
            // the nodes linked to the one it was sent to, and `cluster_state:ok` comes first
            // (a fleet test lost its first change to a node still in handshake).
            let linked = view.lines().count() == total
                && view
                    .lines()
                    .all(|l| l.contains(" connected") && !l.contains("handshake"));
            n.cli(&["cluster", "info"]).contains("cluster_state:ok")
                && linked
                && view.lines().filter(|l| l.contains("slave")).count() == 3 * replicas
                && (!replication.contains("role:slave")
                    || replication.contains("master_link_status:up"))
        };
        while !cluster.nodes.iter().all(ready) {
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach state ok, every node linked to every other and every replica synced, within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// The index in `nodes` of the node serving `port`.
    pub fn index_of_port(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// The port of the master serving `slot`, from `CLUSTER NODES` as node 0 sees it.
    pub fn master_port_of_slot(&self, slot: u16) -> u16 {
        let nodes = self.nodes[0].cli(&["cluster", "nodes"]);
        nodes
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let serves = fields.iter().skip(8).any(|range| {
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    matches!((lo.parse::<u16>(), hi.parse::<u16>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
                });
                serves.then(|| address_port(fields[1]))
            })
            .unwrap_or_else(|| panic!("no master serves slot {slot}: {nodes}"))
    }

    /// The index in `nodes` of the replica of the master on `master_port`.
    pub fn replica_of(&self, master_port: u16) -> usize {
        let nodes = self.nodes[0].cli(&["cluster", "nodes"]);
        let lines: Vec<Vec<&str>> = nodes
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let master_id = lines
            .iter()
            .find(|f| f.len() > 1 && address_port(f[1]) == master_port)
            .map(|f| f[0])
            .unwrap_or_else(|| panic!("no node on port {master_port}: {nodes}"));
        let port = lines
            .iter()
            .find(|f| f.len() > 3 && f[3] == master_id)
            .map(|f| address_port(f[1]))
            .unwrap_or_else(|| panic!("no replica of {master_port}: {nodes}"));
        self.index_of_port(port)
    }

    /// Ports of the nodes that are masters right now (as the node itself reports).
    pub fn master_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .filter(|n| n.cli(&["role"]).starts_with("master"))
            .map(|n| n.port)
            .collect()
    }

    /// A URL fred understands for this cluster.
    pub fn url(&self) -> String {
        let first = &self.nodes[0];
        let rest: Vec<String> = self.nodes[1..]
            .iter()
            .map(|n| format!("node=127.0.0.1:{}", n.port))
            .collect();
        format!(
            "redis-cluster://127.0.0.1:{}?{}",
            first.port,
            rest.join("&")
        )
    }

    /// Number of keys on each master.
    pub fn key_counts(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| n.cli(&["dbsize"]).trim().parse().unwrap_or(0))
            .collect()
    }
}

/// The port of a `CLUSTER NODES` address (`ip:port@busport`).
fn address_port(address: &str) -> u16 {
    address
        .split(['@', ','])
        .next()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("bad node address {address}"))
}

/// A plain fred client, for writing and inspecting raw bytes behind the cache's back.
pub async fn raw_client(url: &str) -> fred::clients::Client {
    use fred::prelude::ClientLike;
    let config = fred::prelude::Config::from_url(url).expect("valid url");
    let client = fred::types::Builder::from_config(config)
        .build()
        .expect("client");
    client.init().await.expect("raw client connects");
    client
}

/// Peak resident memory of this process so far (VmHWM), in bytes.
pub fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmHWM in /proc/self/status")
}

/// A sentinel deployment as service `mymaster`: one master, one replica and three sentinels
/// (`redis-server <conf> --sentinel`, quorum 2, master down after 1 s).
pub struct RedisSentinel {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinel_ports: Vec<u16>,
    sentinels: Vec<Child>,
    dirs: Vec<PathBuf>,
}

impl RedisSentinel {
    pub fn start() -> Self {
        let master = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]);
        let replica = RedisServer::start_with(&[
            "--replicaof",
            "127.0.0.1",
            &master.port.to_string(),
            "--repl-diskless-sync-delay",
            "0",
        ]);
        let mut group = RedisSentinel {
            master,
            replica,
            sentinel_ports: Vec::new(),
            sentinels: Vec::new(),
            dirs: Vec::new(),
        };
        let synced = Instant::now() + Duration::from_secs(10);
        while !group
            .replica
            .cli(&["info", "replication"])
            .contains("master_link_status:up")
        {
            assert!(
                Instant::now() < synced,
                "the replica did not sync within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        for _ in 0..3 {
            let port = free_port();
            let dir = std::env::temp_dir()
                .join(format!("layercache-sentinel-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("create the sentinel's directory");
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
                     sentinel monitor mymaster 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds mymaster 1000\n\
                     sentinel failover-timeout mymaster 10000\n",
                    dir.display(),
                    group.master.port
                ),
            )
            .expect("write sentinel.conf");
            let child = Command::new(binary("redis-server"))
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("could not start redis-server --sentinel: {e}. {INSTALL_HINT}")
                });
            group.sentinels.push(child);
            group.sentinel_ports.push(port);
            group.dirs.push(dir);
        }
        // Ready when every sentinel knows the master, the replica and the two other sentinels.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !group.sentinel_ports.iter().all(|&port| {
            let master = cli(port, &["sentinel", "master", "mymaster"]);
            let field = |name: &str| {
                let mut lines = master.lines();
                lines.find(|l| l.trim() == name);
                lines.next().map(|v| v.trim().to_owned())
            };
            field("num-slaves").as_deref() == Some("1")
                && field("num-other-sentinels").as_deref() == Some("2")
        }) {
            assert!(
                Instant::now() < deadline,
                "the sentinels did not discover each other and the replica within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        group
    }

    /// A URL fred understands for this deployment, naming all three sentinels.
    pub fn url(&self) -> String {
        let rest: Vec<String> = self.sentinel_ports[1..]
            .iter()
            .map(|p| format!("&node=127.0.0.1:{p}"))
            .collect();
        format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName=mymaster{}",
            self.sentinel_ports[0],
            rest.concat()
        )
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for child in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A `RedisCache` of chat replies at `url` under `namespace`, writing `format`, zstd-compressed
/// above 256 bytes when `compress`.
pub async fn cache_with_format<F: layercache::codec::Format>(
    url: &str,
    namespace: &str,
    format: F,
    compress: bool,
) -> layercache::RedisCache<super::chat::ChatReply> {
    let codec = layercache::codec::Codec::with_format(format);
    let codec = if compress {
        codec.compress_above(256)
    } else {
        codec.no_compression()
    };
    layercache::RedisCache::builder_with_codec(codec.build().expect("codec"))
        .url(url)
        .namespace(namespace)
        .build()
        .await
        .expect("connect")
}
