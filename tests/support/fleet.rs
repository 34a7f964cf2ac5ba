//! A replica process for the fleet tests: the test binary runs itself with
//! `LAYERCACHE_FLEET_REPLICA=<url> <namespace>` and `--exact fleet_replica_process`, and that
//! "test" serves commands on stdin. Answers are stdout lines starting with [`PREFIX`] (the test
//! harness prints lines of its own).
//!
//! | command | answer |
//! |---|---|
//! | `get KEY` | `val VALUE` or `none` |
//! | `set KEY VALUE` / `del KEY` | `ok` |
//! | `watch KEY VALUE` | `armed` once `get` returns VALUE, then `changed NANOS` (Unix time) when it no longer does, or `timeout` after 10 s |
//! | `state` | `subscribed true` or `subscribed false` |
//! | `stampede PREFIX KEYS CALLERS LOAD_MS LEASE` | `loads N errors E`: `CALLERS` concurrent `get_or_load`s on each of `KEYS` cold keys `PREFIX0…`, each load taking `LOAD_MS`, with the fleet lease when `LEASE` is 1 |
//! | `hold KEY LOAD_MS` | `loading` when its load starts, `done` when it ends |
//! | `load KEY` | `val VALUE` (and whether this process loaded it: `loaded` or `served`), or `error …` |
//! | `leases` | `won W waited S timed_out T holder_lost L` |
//! | `diag` | `pending N health … stats …`: L2 writes waiting for the catch-up, circuits, `stats()` |
//! | `fill PREFIX N TAG` | `ok`: `get_or_load` of keys `PREFIX0…` with tag `TAG` |
//! | `fresh PREFIX N` | `fresh K`: how many of those keys `get_value` returns |
//! | `untag TAG` / `clear` | `ok` or `error …`: `invalidate_tag` / `clear` |
//! | `expire KEY` / `prefix PREFIX` / `setmany VALUE KEY…` | `ok` or `error …`: `expire` / `invalidate_prefix` / `set_many` |
//! | any command, then ` !exit` | its answer, then the process exits at once (`std::process::exit`: no destructor, no task left runs) |

use std::io::{BufRead, BufReader, Lines, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use layercache::{Cache, CacheExt, Layered, RedisCache};

/// Marks the replica's answers among the test harness's own output.
pub const PREFIX: &str = "@@ ";
/// The environment variable that turns the test binary into a replica.
pub const REPLICA_ENV: &str = "LAYERCACHE_FLEET_REPLICA";

/// A replica's cache: memory L1, Redis L2, the backplane; `namespace` may end with
/// ` LEASE_MS` to set the lease lifetime.
pub async fn replica_cache(
    url: &str,
    namespace: &str,
) -> Result<Layered<String>, Box<dyn std::error::Error>> {
    let (namespace, lease) = match namespace.split_once(' ') {
        Some((ns, ms)) => (ns, Some(Duration::from_millis(ms.parse()?))),
        None => (namespace, None),
    };
    let l2 = RedisCache::<String>::builder()
        .url(url)
        .namespace(namespace)
        .build()
        .await?;
    let backplane = l2.backplane().await?;
    let builder = Layered::builder(super::memory_builder().build()?, l2)
        .name("fleet")
        .backplane(backplane);
    Ok(match lease {
        Some(ttl) => builder.lease_ttl(ttl),
        None => builder,
    }
    .build()?)
}

/// Wait (at most 10 s) until every one of `caches` hears its own backplane.
pub async fn wait_subscribed(caches: &[&Layered<String>]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !caches
        .iter()
        .all(|c| c.backplane().is_some_and(|bp| bp.is_subscribed()))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "every replica subscribed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The backplane's counters of `cache`.
pub fn backplane_state(cache: &Layered<String>) -> layercache::fleet::BackplaneState {
    cache.backplane().map(|b| b.state()).unwrap_or_default()
}

/// `callers` concurrent loads of each of `keys` cold keys; (loader runs, errors).
pub async fn stampede(
    cache: &Layered<String>,
    prefix: &str,
    keys: usize,
    callers: usize,
    load: Duration,
    lease: bool,
) -> (usize, usize) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let loads = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..keys {
        for _ in 0..callers {
            let (cache, loads) = (cache.clone(), Arc::clone(&loads));
            let key = format!("{prefix}{k}");
            tasks.spawn(async move {
                let options =
                    layercache::LoadOptions::ttl(Duration::from_secs(600)).with_fleet_lease(lease);
                let value = format!("value of {key}");
                cache
                    .get_or_load(
                        &key,
                        move || async move {
                            loads.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(load).await;
                            Ok::<_, std::io::Error>(value)
                        },
                        options,
                    )
                    .await
            });
        }
    }
    let mut errors = 0;
    while let Some(done) = tasks.join_next().await {
        if !matches!(done, Ok(Ok(_))) {
            errors += 1;
        }
    }
    (loads.load(Ordering::SeqCst), errors)
}

/// `t` in µs since the Unix epoch.
fn micros(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros())
}

pub fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

async fn value(cache: &Layered<String>, key: &str) -> Option<String> {
    cache.get_value(key).await.ok().flatten()
}

/// The body of the `fleet_replica_process` "test" of a binary that starts replicas: serve as a
/// replica when [`REPLICA_ENV`] is set, do nothing otherwise.
pub fn replica_process() {
    let Ok(spec) = std::env::var(REPLICA_ENV) else {
        return;
    };
    let (url, namespace) = spec.split_once(' ').expect("url and namespace");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(replica(url, namespace)).expect("replica");
}

/// Answer commands from stdin until it closes (the protocol is in the module docs).
pub async fn replica(url: &str, namespace: &str) -> Result<(), Box<dyn std::error::Error>> {
    let cache = replica_cache(url, namespace).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else {
                return;
            };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    say("ready".into());
    while let Some(line) = rx.recv().await {
        let (line, exit) = match line.strip_suffix(" !exit") {
            Some(command) => (command.to_owned(), true),
            None => (line, false),
        };
        answer(&cache, &line).await;
        if exit {
            std::process::exit(0);
        }
    }
    Ok(())
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{PREFIX}{line}");
    let _ = out.flush();
}

fn done<T>(result: layercache::Result<T>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => format!("error {e}"),
    }
}

/// Run one command and say its answer.
async fn answer(cache: &Layered<String>, line: &str) {
    {
        let parts: Vec<&str> = line.splitn(3, ' ').collect();
        match parts.as_slice() {
            ["get", key] => say(match value(cache, key).await {
                Some(v) => format!("val {v}"),
                None => "none".into(),
            }),
            ["set", key, v] => {
                let _ = cache
                    .set_value(key, (*v).to_owned(), Duration::from_secs(600))
                    .await;
                say("ok".into());
            }
            ["del", key] => {
                let _ = cache.delete(key).await;
                say("ok".into());
            }
            ["watch", key, v] => {
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut armed = false;
                let answer = loop {
                    let now = value(cache, key).await;
                    if !armed {
                        if now.as_deref() == Some(*v) {
                            armed = true;
                            say("armed".into());
                        }
                    } else if now.as_deref() != Some(*v) {
                        break format!("changed {}", unix_nanos());
                    }
                    if Instant::now() > deadline {
                        break "timeout".to_string();
                    }
                    // A short blocking pause: finer than tokio's 1 ms timer, light on the CPU.
                    std::thread::sleep(Duration::from_micros(100));
                };
                say(answer);
            }
            ["state"] => say(format!(
                "subscribed {}",
                cache
                    .health()
                    .iter()
                    .any(|h| h.position == "backplane" && h.is_up())
            )),
            ["stampede", prefix, rest] => {
                let n: Vec<u64> = rest.split(' ').filter_map(|x| x.parse().ok()).collect();
                let [keys, callers, load_ms, lease] = n[..] else {
                    say(format!("error bad stampede: {line}"));
                    return;
                };
                let (loads, errors) = stampede(
                    cache,
                    prefix,
                    keys as usize,
                    callers as usize,
                    Duration::from_millis(load_ms),
                    lease == 1,
                )
                .await;
                say(format!("loads {loads} errors {errors}"));
            }
            ["hold", key, ms] => {
                let ms: u64 = ms.parse().unwrap_or(1000);
                let key = (*key).to_owned();
                let options = layercache::LoadOptions::ttl(Duration::from_secs(600));
                let _ = cache
                    .get_or_load(
                        &key,
                        move || async move {
                            say("loading".into());
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            Ok::<_, std::io::Error>("held".to_string())
                        },
                        options,
                    )
                    .await;
                say("done".into());
            }
            ["load", key] => {
                let loaded = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let flag = std::sync::Arc::clone(&loaded);
                let options = layercache::LoadOptions::ttl(Duration::from_secs(600));
                let got = cache
                    .get_or_load(
                        key,
                        || async move {
                            flag.store(true, std::sync::atomic::Ordering::SeqCst);
                            Ok::<_, std::io::Error>(format!("loaded-by-{}", std::process::id()))
                        },
                        options,
                    )
                    .await;
                let how = if loaded.load(std::sync::atomic::Ordering::SeqCst) {
                    "loaded"
                } else {
                    "served"
                };
                say(match got {
                    Ok(v) => format!("val {v} {how}"),
                    Err(e) => format!("error {e}"),
                });
            }
            ["fill", prefix, rest] => {
                let Some((n, tag)) = rest.split_once(' ') else {
                    say(format!("error bad fill: {line}"));
                    return;
                };
                let n: usize = n.parse().unwrap_or(0);
                let options = layercache::LoadOptions::ttl(Duration::from_secs(600))
                    .with_tags([tag])
                    .with_fleet_lease(false);
                let mut failed = 0;
                for i in 0..n {
                    let key = format!("{prefix}{i}");
                    let got = cache
                        .get_or_load(
                            &key,
                            move || async move { Ok::<_, std::io::Error>(format!("v{i}")) },
                            options.clone(),
                        )
                        .await;
                    failed += usize::from(got.is_err());
                }
                say(if failed == 0 {
                    "ok".into()
                } else {
                    format!("error {failed} failed")
                });
            }
            ["fresh", prefix, n] => {
                let n: usize = n.parse().unwrap_or(0);
                let mut fresh = 0;
                for i in 0..n {
                    fresh += usize::from(value(cache, &format!("{prefix}{i}")).await.is_some());
                }
                say(format!("fresh {fresh}"));
            }
            ["untag", tag] => say(match cache.invalidate_tag(tag).await {
                Ok(()) => "ok".into(),
                Err(e) => format!("error {e}"),
            }),
            ["clear"] => say(match cache.clear().await {
                Ok(()) => "ok".into(),
                Err(e) => format!("error {e}"),
            }),
            ["expire", key] => say(done(cache.expire(key).await)),
            ["prefix", prefix] => say(done(cache.invalidate_prefix(prefix).await)),
            ["setmany", v, keys] => {
                let entry = layercache::Entry::new((*v).to_owned(), Duration::from_secs(600));
                let entries = keys.split(' ').map(|k| (k, entry.clone())).collect();
                say(done(cache.set_many(entries).await));
            }
            // What the stack finds for `key` (L1, then L2), with its times in µs since the
            // epoch: to tell why a replica serves what it does.
            ["why", key] => say(match layercache::Cache::peek(cache, key).await {
                Ok(Some(entry)) => format!(
                    "entry {:?} tags {:?} created {} fresh {} fresh_until {} now {}",
                    entry.value(),
                    entry.tags().collect::<Vec<_>>(),
                    micros(entry.created_at()),
                    entry.is_fresh(),
                    micros(entry.fresh_until()),
                    micros(SystemTime::now()),
                ),
                Ok(None) => "nothing".into(),
                Err(e) => format!("error {e}"),
            }),
            ["diag"] => say(format!(
                "pending {} health {:?} backplane {:?} stats {:?}",
                cache.pending_l2_writes(),
                cache
                    .health()
                    .iter()
                    .map(|h| (h.position, h.circuit))
                    .collect::<Vec<_>>(),
                backplane_state(cache),
                cache.stats()
            )),
            ["leases"] => {
                let s = backplane_state(cache);
                say(format!(
                    "won {} waited {} timed_out {} holder_lost {} bypassed {}",
                    s.leases_won,
                    s.lease_waits,
                    s.lease_timeouts,
                    s.lease_holders_lost,
                    s.lease_bypassed
                ));
            }
            _ => say(format!("error unknown command: {line}")),
        }
    }
}

/// A replica process, driven through its stdin.
pub struct Replica {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Replica {
    /// Start this test binary as a replica of `namespace` on `url` (the test named
    /// `fleet_replica_process` must call [`replica`] when [`REPLICA_ENV`] is set).
    pub fn start(url: &str, namespace: &str) -> Replica {
        Self::start_with(url, namespace, None)
    }

    /// [`start`](Self::start) with a lease lifetime.
    pub fn start_with(url: &str, namespace: &str, lease: Option<Duration>) -> Replica {
        let spec = match lease {
            Some(ttl) => format!("{url} {namespace} {}", ttl.as_millis()),
            None => format!("{url} {namespace}"),
        };
        let exe = std::env::current_exe().expect("test binary");
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "fleet_replica_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(REPLICA_ENV, spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a replica");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut replica = Replica {
            child,
            stdin,
            stdout,
        };
        assert_eq!(replica.read(), "ready");
        replica
    }

    /// Send one command.
    pub fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("write");
        self.stdin.flush().expect("flush");
    }

    /// The next answer.
    pub fn read(&mut self) -> String {
        loop {
            let line = self
                .stdout
                .next()
                .expect("the replica answered")
                .expect("a line");
            // The harness may start a line of its own ("test … ") before ours.
            if let Some(at) = line.find(PREFIX) {
                return line[at + PREFIX.len()..].to_owned();
            }
        }
    }

    /// Send a command and read its answer.
    pub fn ask(&mut self, command: &str) -> String {
        self.send(command);
        self.read()
    }
}

impl Replica {
    /// Wait for the process to exit on its own.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait for the replica")
    }

    /// Kill the process (SIGKILL) and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A replica behind a fault proxy: its cache and the proxy.
pub async fn replica_behind_proxy(
    server: &super::redis::RedisServer,
    namespace: &str,
) -> (Layered<String>, super::proxy::FaultProxy) {
    replica_with_l2_behind_proxy(server, namespace, false).await
}

/// A replica whose L2 goes through a fault proxy, and its backplane too unless
/// `backplane_direct`: its cache and the proxy.
pub async fn replica_with_l2_behind_proxy(
    server: &super::redis::RedisServer,
    namespace: &str,
    backplane_direct: bool,
) -> (Layered<String>, super::proxy::FaultProxy) {
    let upstream = format!("127.0.0.1:{}", server.port)
        .parse()
        .expect("address");
    let proxy = super::proxy::FaultProxy::start(upstream).await;
    let l2 = layercache::RedisCache::<String>::builder()
        .url(proxy.url())
        .namespace(namespace)
        .command_timeout(Duration::from_millis(200))
        .build()
        .await
        .expect("l2");
    let backplane = if backplane_direct {
        let direct = layercache::RedisCache::<String>::builder()
            .url(server.url())
            .namespace(namespace)
            .build()
            .await
            .expect("direct");
        direct.backplane().await.expect("backplane")
    } else {
        l2.backplane().await.expect("backplane")
    };
    let cache = Layered::builder(layercache::MemoryCache::builder().build().expect("l1"), l2)
        .name("behind-proxy")
        .backplane(backplane)
        .build()
        .expect("cache");
    (cache, proxy)
}
