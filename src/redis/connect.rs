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

use std::sync::Weak;
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::prelude::{ClientLike, Pool};
use fred::types::{ClientState, ConnectHandle};

/// The pause before a client whose connection task ended is started again.
const RETRY: Duration = Duration::from_millis(100);

/// How often the connection state is looked at while `build` waits for the first connections.
const POLL: Duration = Duration::from_millis(1);

/// Start a connection task for every client of `pool` and wait, at most `timeout`, until all of
/// them are connected. Returns `None` when they are, or the first error a client's task ended
/// with (or a timeout error). Either way every client is kept connecting in the background (see
/// [`supervise`]) until `alive` can no longer be upgraded; a caller that gives up on the pool
/// quits it.
pub(super) async fn connect_pool(
    pool: &Pool,
    alive: Weak<()>,
    timeout: Duration,
) -> Option<fred::error::Error> {
    let clients: Vec<Client> = pool.clients().to_vec();
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

/// Keep `client` connecting: whenever its connection task ends while the cache is alive, start
/// a new one after [`RETRY`]. Only one task per client runs at any time. `handle` is `None` when
/// the task has ended and its end was read already.
async fn supervise(client: Client, handle: Option<ConnectHandle>, alive: Weak<()>) {
    let mut handle = handle;
    loop {
        if let Some(running) = handle.take() {
            let _ended = running.await;
        }
        if alive.upgrade().is_none() {
            return;
        }
        tokio::time::sleep(RETRY).await;
        if alive.upgrade().is_none() {
            return;
        }
        handle = Some(client.connect());
    }
}

/// Log once that Redis is in use, when every client of `pool` is connected (after a start
/// without Redis). Ends then, or when the cache is dropped.
pub(super) async fn announce_when_connected(pool: Pool, alive: Weak<()>) {
    while alive.upgrade().is_some() {
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
