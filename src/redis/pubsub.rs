//! [`RedisCache::backplane`]: the backplane's own connections on the cache's server.

use std::time::Duration;

use super::{builder, connect, RedisCache};
use crate::error::{Error, Result};

impl<V> RedisCache<V>
where
    V: Send + Sync + 'static,
{
    /// A [`Backplane`](crate::fleet::Backplane) on this cache's server, database and namespace
    /// (channel `layercache:backplane:v1:<namespace>`, or `layercache:backplane:v1:db<N>:<namespace>`
    /// on database `N` other than 0: Redis channels are server-wide, and caches on other
    /// databases of one server — staging beside production — must not hear each other's
    /// invalidations), with connections of its own: a subscriber and a publisher. Give it to
    /// [`LayeredBuilder::backplane`](crate::LayeredBuilder::backplane).
    ///
    /// Like the cache itself, a backplane can start while Redis cannot be reached (refused, no
    /// answer within the connect timeout): it starts unsubscribed — a `Layered` then does not
    /// trust its L1 and each replica loads on its own — keeps connecting in the background,
    /// subscribes once Redis answers, and is trusted once it hears its own heartbeat. A replica
    /// restarted during a Redis outage therefore starts, and joins the fleet when Redis is back.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] (op `connect`) when the server refuses the credentials or the connection
    /// settings (as for [`RedisCacheBuilder::build`](super::RedisCacheBuilder::build)); (op `subscribe`) when the server answers
    /// but refuses the subscription.
    pub async fn backplane(&self) -> Result<crate::fleet::Backplane> {
        let setup = &self.inner.setup;
        // The subscriber hands messages to the backplane through a buffer: one that overflows
        // while the backplane is behind (a burst of changes from another replica, a busy
        // runtime) costs this replica its whole L1. fred's default holds 32 messages.
        let mut subscriber = setup.builder();
        subscriber.set_performance_config(fred::types::config::PerformanceConfig {
            broadcast_channel_capacity: crate::fleet::SUBSCRIBER_BUFFER,
            ..setup.performance.clone()
        });
        let subscriber = subscriber
            .build_subscriber_client()
            .map_err(|e| Error::redis("config", e))?;
        let publisher = setup
            .builder()
            .build()
            .map_err(|e| Error::redis("config", e))?;
        // Both are kept connecting for as long as the backplane lives (it holds `alive`).
        let alive = connect::Alive::new();
        let (heard, told) = tokio::join!(
            connect::connect_clients(
                std::slice::from_ref(&subscriber),
                alive.token(),
                setup.connect_timeout,
            ),
            connect::connect_clients(
                std::slice::from_ref(&publisher),
                alive.token(),
                setup.connect_timeout,
            ),
        );
        if let Some(source) = heard.or(told) {
            if builder::is_fatal(&source) {
                drop(alive);
                tokio::spawn(async move {
                    connect::quit_within(&subscriber).await;
                    connect::quit_within(&publisher).await;
                });
                return Err(Error::redis("connect", source));
            }
            crate::log_warn!(
                cache = self.inner.name.as_ref(),
                error = %source,
                "layercache: Redis is unreachable; the backplane starts unsubscribed (L1 not trusted) and keeps connecting in the background"
            );
        }
        let namespace = self.inner.prefix.trim_end_matches(':');
        let wire = crate::fleet::backplane::WIRE;
        let channel = match setup.config.database.unwrap_or(0) {
            0 => format!("layercache:backplane:v{wire}:{namespace}"),
            database => format!("layercache:backplane:v{wire}:db{database}:{namespace}"),
        };
        let unresponsive = setup
            .connection
            .unresponsive
            .max_timeout
            .unwrap_or(Duration::from_secs(2));
        crate::fleet::Backplane::start(
            namespace,
            channel,
            (publisher, subscriber),
            alive,
            unresponsive,
        )
        .await
        .map_err(|e| Error::redis("subscribe", e))
    }
}
