//! Replaces connections that only time out.
//!
//! fred's own unresponsive check measures the time since the *last write* on a connection, so
//! steady traffic to a hung server (every command timing out after 250 ms) keeps resetting it and
//! the dead connection is never replaced. Behind a sentinel that is fatal: the sentinels promote
//! the replica, but the client keeps writing into the old, hung master and never asks them again.
//!
//! The watchdog costs nothing on the success path. The first timeout on a pool client starts one
//! probe task for that client: it `PING`s the node that timed out (on a cluster, the node that
//! owns the key's slot) until one answers. If pings still time out after `after`:
//!
//! * on a single server or behind sentinels, the client is forced to reconnect, which re-asks the
//!   sentinels for the master;
//! * on a cluster, the client re-reads the routing table (`CLUSTER SLOTS`) and keeps probing. A
//!   forced reconnect there would also cut the connections to the healthy masters; a routing
//!   refresh only moves the slots once a replica has been promoted, and changes nothing while the
//!   hung master still owns them.
//!
//! Any other error ends the probe: fred already knows the connection is broken and is
//! reconnecting by itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::error::ErrorKind;
use fred::interfaces::{ClientLike, ClusterInterface};
use fred::prelude::{Options, Value};
use fred::types::ClusterHash;

/// One probe flag per pool client.
pub(super) struct Watchdog {
    after: Duration,
    clustered: bool,
    probing: Box<[AtomicBool]>,
}

impl Watchdog {
    pub(super) fn new(clients: usize, after: Duration, clustered: bool) -> Self {
        Watchdog {
            after,
            clustered,
            probing: (0..clients).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// A command on pool client `index` timed out. `slot` is the key's hash slot on a cluster.
    pub(super) fn timed_out(
        self: &Arc<Self>,
        index: usize,
        client: &Client,
        options: &Options,
        slot: Option<u16>,
    ) {
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
        let mut options = options.clone();
        options.cluster_hash = slot.map(ClusterHash::Custom);
        let pause = options
            .timeout
            .unwrap_or(Duration::from_millis(250))
            .min(Duration::from_millis(100));
        runtime.spawn(async move {
            let mut started = Instant::now();
            loop {
                match client.with_options(&options).ping::<Value>(None).await {
                    Ok(_) => break,
                    Err(e) if *e.kind() == ErrorKind::Timeout => {
                        if started.elapsed() >= this.after {
                            if !this.clustered {
                                let _ = client.force_reconnection().await;
                                break;
                            }
                            let _ = client.sync_cluster().await;
                            started = Instant::now();
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
