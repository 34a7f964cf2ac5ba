//! Replaces connections that only time out.
//!
//! fred's own unresponsive check measures the time since the *last write* on a connection, so
//! steady traffic to a hung server (every command timing out after 250 ms) keeps resetting it and
//! the dead connection is never replaced. Behind a sentinel that is fatal: the sentinels promote
//! the replica, but the client keeps writing into the old, hung master and never asks them again.
//! On a cluster the same holds for the hung master's slots: the cluster fails it over, but the
//! client keeps sending those keys to the old node.
//!
//! The watchdog costs nothing on the success path, so the pool's clients run without fred's
//! check (which re-armed a timer on every command): every command they send has a timeout, and
//! whatever hang fred's check would catch makes a command time out first. The first timeout on
//! a pool client starts one probe task for that client:
//!
//! * **one server** (or sentinels): it `PING`s the server until one answers. If pings still time
//!   out after `after`, the client is forced to reconnect, which re-asks the sentinels for the
//!   master. Any other error ends the probe: fred already knows the connection is broken and is
//!   reconnecting by itself.
//! * **a cluster**: a forced reconnect would also cut the connections to the healthy masters,
//!   and a routing refresh (`CLUSTER SLOTS`) runs inside the client's single router task, so
//!   asking the hung node stalls every command of that client — keys on healthy masters started
//!   timing out in the hung-master test when every timeout led to one. So the probe `PING`s each
//!   master on its own connection; while one still times out after `after`, it asks a master that
//!   answers for its `CLUSTER SLOTS`, and refreshes the client's routing only once that view no
//!   longer has the hung node as a master (the cluster failed it over). A master that hangs and
//!   is not replaced costs its own keys their timeouts, and nothing more (the probe gives up
//!   after 30 times `after`; the next timeout starts another). A killed master needs
//!   no help: fred refreshes the routing table itself when the connection drops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::error::ErrorKind;
use fred::interfaces::{ClientLike, ClusterInterface};
use fred::prelude::{Options, Server, Value};
use fred::types::cluster::ClusterRouting;

/// One probe flag per pool client.
pub(crate) struct Watchdog {
    after: Duration,
    clustered: bool,
    probing: Box<[AtomicBool]>,
}

impl Watchdog {
    /// A watchdog for `clients` pool clients (see the module docs).
    pub(crate) fn new(clients: usize, after: Duration, clustered: bool) -> Self {
        Watchdog {
            after,
            clustered,
            probing: (0..clients).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// A command on pool client `index` timed out.
    pub(crate) fn timed_out(self: &Arc<Self>, index: usize, client: &Client, options: &Options) {
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
            if this.clustered {
                this.probe_cluster(&client, &options, pause).await;
                if let Some(flag) = this.probing.get(index) {
                    flag.store(false, Ordering::Release);
                }
                return;
            }
            let started = Instant::now();
            loop {
                match client.with_options(&options).ping::<Value>(None).await {
                    Ok(_) => break,
                    Err(e) if *e.kind() == ErrorKind::Timeout => {
                        if started.elapsed() >= this.after {
                            // Capped: a reconnection to a server that is gone never ends, and
                            // the probe must not outlive its cache for good.
                            let _ =
                                tokio::time::timeout(this.after * 4, client.force_reconnection())
                                    .await;
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

    /// A cluster client's probe (see the module docs): until every master answers, or the
    /// routing was refreshed after the cluster replaced a hung one.
    async fn probe_cluster(&self, client: &Client, options: &Options, pause: Duration) {
        let started = Instant::now();
        loop {
            let Some(routing) = client.cached_cluster_state() else {
                return;
            };
            let masters = routing.unique_primary_nodes();
            let mut pings = tokio::task::JoinSet::new();
            for master in &masters {
                let node = Options {
                    cluster_node: Some(master.clone()),
                    ..options.clone()
                };
                let (client, master) = (client.clone(), master.clone());
                pings.spawn(async move {
                    let answer = client.with_options(&node).ping::<Value>(None).await;
                    let hung = matches!(&answer, Err(e) if *e.kind() == ErrorKind::Timeout);
                    (master, hung)
                });
            }
            let (mut hung, mut answering) = (Vec::new(), Vec::new());
            while let Some(Ok((master, is_hung))) = pings.join_next().await {
                if is_hung {
                    hung.push(master);
                } else {
                    answering.push(master);
                }
            }
            // A master that stays hung and is never replaced: the probe ends after a while (a
            // later timeout starts another), so that it never outlives its cache for long.
            if hung.is_empty() || started.elapsed() >= self.after * 30 {
                return;
            }
            if started.elapsed() >= self.after && replaced(client, options, &hung, &answering).await
            {
                // The cluster failed the hung master over: route its slots to the new one.
                let _ = tokio::time::timeout(self.after * 4, client.sync_cluster()).await;
                return;
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// Whether a master that answers no longer counts any of `hung` among the masters.
async fn replaced(
    client: &Client,
    options: &Options,
    hung: &[Server],
    answering: &[Server],
) -> bool {
    for witness in answering {
        let node = Options {
            cluster_node: Some(witness.clone()),
            ..options.clone()
        };
        let Ok(slots) = client.with_options(&node).cluster_slots::<Value>().await else {
            continue;
        };
        let Ok(view) = ClusterRouting::from_cluster_slots(slots, witness.host.clone()) else {
            continue;
        };
        let masters = view.unique_primary_nodes();
        return hung
            .iter()
            .any(|h| !masters.iter().any(|m| m.host == h.host && m.port == h.port));
    }
    false
}
