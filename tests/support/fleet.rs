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

use std::io::{BufRead, BufReader, Lines, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use layercache::{Cache, CacheExt, Layered, MemoryCache, RedisCache};

/// Marks the replica's answers among the test harness's own output.
pub const PREFIX: &str = "@@ ";
/// The environment variable that turns the test binary into a replica.
pub const REPLICA_ENV: &str = "LAYERCACHE_FLEET_REPLICA";

pub async fn replica_cache(
    url: &str,
    namespace: &str,
) -> Result<Layered<String>, Box<dyn std::error::Error>> {
    let l2 = RedisCache::<String>::builder()
        .url(url)
        .namespace(namespace)
        .build()
        .await?;
    let backplane = l2.backplane().await?;
    Ok(Layered::builder(MemoryCache::builder().build()?, l2)
        .name("fleet")
        .backplane(backplane)
        .build()?)
}

pub fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

async fn value(cache: &Layered<String>, key: &str) -> Option<String> {
    cache.get_value(key).await.ok().flatten()
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
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{PREFIX}{line}");
        let _ = out.flush();
    };
    say("ready".into());
    while let Some(line) = rx.recv().await {
        let parts: Vec<&str> = line.splitn(3, ' ').collect();
        match parts.as_slice() {
            ["get", key] => say(match value(&cache, key).await {
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
                    let now = value(&cache, key).await;
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
            _ => say(format!("error unknown command: {line}")),
        }
    }
    Ok(())
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
        let exe = std::env::current_exe().expect("test binary");
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "fleet_replica_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(REPLICA_ENV, format!("{url} {namespace}"))
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

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
