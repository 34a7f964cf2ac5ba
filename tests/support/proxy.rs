//! A loopback TCP fault proxy (tokio) between a client and a real server. Tests switch its mode
//! while connections are live:
//!
//! * `Pass` — bytes flow both ways;
//! * `Latency(d)` — every chunk is held for `d` before it is forwarded;
//! * `Blackhole` — connections are accepted and read, but nothing is forwarded or answered;
//! * `Reset` — new connections are closed with a TCP RST, open ones are closed;
//! * `HalfOpen` — requests still reach the server, but its replies are dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Latency(Duration),
    Blackhole,
    Reset,
    HalfOpen,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
    connections: Arc<Mutex<u64>>,
}

impl FaultProxy {
    /// Start a proxy on a free loopback port, forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, _) = watch::channel(Mode::Pass);
        let connections = Arc::new(Mutex::new(0));
        let (modes, count) = (mode.clone(), Arc::clone(&connections));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                *count.lock().expect("lock") += 1;
                tokio::spawn(serve(client, upstream, modes.subscribe()));
            }
        });
        FaultProxy {
            addr,
            mode,
            task,
            connections,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        *self.connections.lock().expect("lock")
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reset(stream: TcpStream) {
    // SO_LINGER 0: closing sends RST instead of FIN. (tokio deprecates set_linger because a
    // non-zero linger blocks on drop; zero does not.)
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn serve(client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let current = *mode.borrow_and_update();
    match current {
        Mode::Reset => return reset(client),
        Mode::Blackhole => return swallow(client, mode).await,
        _ => {}
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return reset(client);
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (mut up_mode, mut down_mode) = (mode.clone(), mode.clone());
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = tokio::select! {
                read = client_read.read(&mut buf) => match read { Ok(0) | Err(_) => return, Ok(n) => n },
                _ = up_mode.changed() => {
                    if *up_mode.borrow() == Mode::Reset { return; }
                    continue;
                }
            };
            let m = *up_mode.borrow();
            match m {
                Mode::Reset => return,
                Mode::Blackhole => continue,
                Mode::Latency(d) => tokio::time::sleep(d).await,
                Mode::Pass | Mode::HalfOpen => {}
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = tokio::select! {
                read = server_read.read(&mut buf) => match read { Ok(0) | Err(_) => return, Ok(n) => n },
                _ = down_mode.changed() => {
                    if *down_mode.borrow() == Mode::Reset { return; }
                    continue;
                }
            };
            let m = *down_mode.borrow();
            match m {
                Mode::Reset => return,
                Mode::Blackhole | Mode::HalfOpen => continue,
                Mode::Latency(d) => tokio::time::sleep(d).await,
                Mode::Pass => {}
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
    // Both halves drop here: the client sees the connection close.
    let _ = mode.borrow_and_update();
}

/// Blackhole: read and discard until the peer goes away or the mode changes to Reset.
async fn swallow(mut client: TcpStream, mut mode: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            read = client.read(&mut buf) => if matches!(read, Ok(0) | Err(_)) { return },
            _ = mode.changed() => if *mode.borrow() == Mode::Reset { return reset(client) },
        }
    }
}
