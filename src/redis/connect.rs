//! Connecting a pool, and keeping each of its clients connected for the life of the cache.
//!
//! Each client gets exactly one connection task at a time, started with fred's `connect` and
//! watched through its join handle. A task that ends (its first connection failed: the client is
//! built with `fail_fast`, so fred does not retry that one itself) is started again after a short
//! pause, until the cache is dropped. Once a task has connected, fred's reconnect policy keeps it
//! connected through later drops.
//!
//! Why not `Pool::init` in a loop: `init` connects every client of the pool and, when one of them
//! fails, resets the connection tasks of all of them, including those that had connected. When
//! Redis came up in the middle of an attempt, a reset task could still be closing while its
//! replacement connected, and the closing one could leave the client marked disconnected under a
//! live connection. With `fail_fast` commands, such a client fails every command at once and
//! nothing ever reconnects it: a cache built while Redis was down could ignore Redis for good.
//! Starting a task only when the previous one has ended rules that out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

use fred::prelude::{ClientLike, Pool};
use fred::types::{ClientState, ConnectHandle};

/// Held by the owner of some clients (a cache, a backplane): while it lives, their connection
/// attempts go on; when it is dropped, their supervisors stop them.
#[derive(Debug)]
pub(crate) struct Alive {
    owner: watch::Sender<()>,
    runtime_gone: Arc<AtomicBool>,
}

impl Alive {
    pub(crate) fn new() -> Self {
        Alive {
            owner: watch::channel(()).0,
            runtime_gone: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A token that tells when this owner is gone.
    pub(crate) fn token(&self) -> Token {
        Token {
            owner: self.owner.subscribe(),
            runtime_gone: Arc::clone(&self.runtime_gone),
        }
    }

    /// Whether the tokio runtime that ran the clients' tasks has shut down while the owner
    /// lived. fred's clients then have no task left to carry their commands, and none can be
    /// started again: every command fails at once ("Failed to send command to router"), on any
    /// runtime. Typical cause: a cache built once (a `static`) and used from several
    /// `#[tokio::test]`s, each of which runs and drops its own runtime.
    pub(crate) fn runtime_gone(&self) -> bool {
        self.runtime_gone.load(Ordering::Acquire)
    }
}

/// Tells whether the [`Alive`] it came from was dropped.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    owner: watch::Receiver<()>,
    runtime_gone: Arc<AtomicBool>,
}

/// Lives inside a supervisor task. A supervisor ends by itself only once its owner is gone, so
/// when it is dropped while the owner still lives, its runtime dropped it: shut down.
struct RuntimeWatch(Token);

impl Drop for RuntimeWatch {
    fn drop(&mut self) {
        if !self.0.is_dead() {
            self.0.runtime_gone.store(true, Ordering::Release);
        }
    }
}

impl Token {
    fn is_dead(&self) -> bool {
        self.owner.has_changed().is_err()
    }

    /// Resolves when the owner is dropped.
    async fn dropped(&mut self) {
        while self.owner.changed().await.is_ok() {}
    }
}

/// How long a stopped owner's connection task gets to end by itself (a `QUIT` on the way)
/// before it is aborted.
const GRACE: Duration = Duration::from_secs(1);

/// How long a stopped owner's `QUIT` may take. A client that is reconnecting holds the command
/// until a connection comes back, which for a server that is gone is never: the task sending it
/// must not outlive its owner for good.
pub(crate) const QUIT_WAIT: Duration = GRACE;

/// `QUIT` on `client`, given up after [`QUIT_WAIT`].
pub(crate) async fn quit_within<C: ClientLike>(client: &C) {
    let _ = tokio::time::timeout(QUIT_WAIT, client.quit()).await;
}

/// The pause before a client whose connection task ended is started again.
const RETRY: Duration = Duration::from_millis(100);

/// How often the connection state is looked at while `build` waits for the first connections.
const POLL: Duration = Duration::from_millis(1);

/// Start a connection task for every one of `clients` and wait, at most `timeout`, until all of
/// them are connected. Returns `None` when they are, or the first error a client's task ended
/// with (or a timeout error). Either way every client is kept connecting in the background (see
/// [`supervise`]) until the owner of `alive` is dropped; a caller that gives up on the
/// clients quits them.
pub(super) async fn connect_clients<C>(
    clients: &[C],
    alive: Token,
    timeout: Duration,
) -> Option<fred::error::Error>
where
    C: ClientLike + Clone + Send + Sync + 'static,
{
    let clients: Vec<C> = clients.to_vec();
    // A handle is taken out once its task's end has been read (a join handle is read once).
    let mut handles: Vec<Option<ConnectHandle>> =
        clients.iter().map(|c| Some(c.connect())).collect();
    let deadline = Instant::now() + timeout;
    let failure = loop {
        if clients.iter().all(|c| c.state() == ClientState::Connected) {
            break None;
        }
        let ended = handles
            .iter_mut()
            .find(|h| h.as_ref().is_some_and(ConnectHandle::is_finished))
            .and_then(Option::take);
        if let Some(ended) = ended {
            break Some(match ended.await {
                Ok(Err(error)) => error,
                Ok(Ok(())) => fred::error::Error::new(
                    fred::error::ErrorKind::Canceled,
                    "the connection task ended before it connected",
                ),
                Err(join) => fred::error::Error::new(
                    fred::error::ErrorKind::Unknown,
                    format!("the connection task failed: {join}"),
                ),
            });
        }
        if Instant::now() >= deadline {
            break Some(fred::error::Error::new(
                fred::error::ErrorKind::Timeout,
                format!("could not connect within {timeout:?}"),
            ));
        }
        tokio::time::sleep(POLL).await;
    };
    for (client, handle) in clients.into_iter().zip(handles) {
        tokio::spawn(supervise(client, handle, alive.clone()));
    }
    failure
}

/// Keep `client` connecting: whenever its connection task ends while the owner lives, start a
/// new one after [`RETRY`]. Only one task per client runs at any time. `handle` is `None` when
/// the task has ended and its end was read already. When the owner is dropped, a running task
/// gets [`GRACE`] to end (the owner's drop sends `QUIT`) and is then aborted: a `QUIT` that
/// arrives while fred is between two reconnection attempts can go unseen, and the task would
/// otherwise reconnect for good on behalf of nobody.
async fn supervise<C: ClientLike>(client: C, handle: Option<ConnectHandle>, mut alive: Token) {
    let _watch = RuntimeWatch(alive.clone());
    let mut handle = handle;
    loop {
        if let Some(mut running) = handle.take() {
            tokio::select! {
                _ = &mut running => {}
                () = alive.dropped() => {
                    if tokio::time::timeout(GRACE, &mut running).await.is_err() {
                        running.abort();
                    }
                    return;
                }
            }
        }
        if alive.is_dead() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY) => {}
            () = alive.dropped() => return,
        }
        handle = Some(client.connect());
    }
}

/// Log once that Redis is in use, when every client of `pool` is connected (after a start
/// without Redis). Ends then, or when the cache is dropped.
pub(super) async fn announce_when_connected(pool: Pool, alive: Token) {
    while !alive.is_dead() {
        if pool
            .clients()
            .iter()
            .all(|c| c.state() == ClientState::Connected)
        {
            crate::log_info!("layercache: Redis is reachable now; the cache uses it");
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}
