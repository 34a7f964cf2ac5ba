//! Replaces connections that only time out.
//!
//! fred's own unresponsive check measures the time since the *last write* on a connection, so
//! steady traffic to a hung server (every command timing out after 250 ms) keeps resetting it and
//! the dead connection is never replaced. Behind a sentinel that is fatal: the sentinels promote
//! the replica, but the client keeps writing into the old, hung master and never asks them again.
//!
//! The watchdog costs nothing on the success path. The first timeout on a pool client starts one
//! probe task for that client: it `PING`s the server until one answers. If pings still time out
//! after `after`, the client is forced to reconnect, which re-asks the sentinels for the master.
//! Any other error ends the probe: fred already knows the connection is broken and is
//! reconnecting by itself.
//!
//! Clusters are left alone. A forced reconnect there would also cut the connections to the
//! healthy masters, and a routing refresh (`CLUSTER SLOTS`) runs inside the client's single
//! router task, so asking the hung node stalls every command of that client — keys on healthy
//! masters started timing out in the hung-master test. A killed master needs no help: fred
//! refreshes the routing table itself when the connection drops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::error::ErrorKind;
use fred::interfaces::ClientLike;
use fred::prelude::{Options, Value};

/// One probe flag per pool client.
pub(super) struct Watchdog {
    after: Duration,
    probing: Box<[AtomicBool]>,
}

impl Watchdog {
    /// A watchdog for `clients` pool clients; none for a cluster (see the module docs).
    pub(super) fn new(clients: usize, after: Duration, clustered: bool) -> Self {
        let clients = if clustered { 0 } else { clients };
        Watchdog {
            after,
            probing: (0..clients).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// A command on pool client `index` timed out.
    pub(super) fn timed_out(self: &Arc<Self>, index: usize, client: &Client, options: &Options) {
        let Some(flag) = self.probing.get(index) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if flag.swap(true, Ordering::AcqRel) {
            return; // a probe for this client is already running
        }
        let this = Arc::clone(self);
        let client = client.clone();
        let options = options.clone();
        let pause = options
            .timeout
            .unwrap_or(Duration::from_millis(250))
            .min(Duration::from_millis(100));
        runtime.spawn(async move {
            let started = Instant::now();
            loop {
                match client.with_options(&options).ping::<Value>(None).await {
                    Ok(_) => break,
                    Err(e) if *e.kind() == ErrorKind::Timeout => {
                        if started.elapsed() >= this.after {
                            let _ = client.force_reconnection().await;
                            break;
                        }
                        tokio::time::sleep(pause).await;
                    }
                    Err(_) => break,
                }
            }
            if let Some(flag) = this.probing.get(index) {
                flag.store(false, Ordering::Release);
            }
        });
    }
}
