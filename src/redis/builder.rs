//! [`RedisCacheBuilder`]: settings, connecting, and the client setup shared with the backplane.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{
    ClientLike, Config, EventInterface, Options, PerformanceConfig, ReconnectPolicy,
};
use fred::types::config::{ConnectionConfig, TcpConfig, UnresponsiveConfig};

use super::ops::OpMetrics;
use super::{
    connect, tls, watchdog, Inner, RedisCache, ATTEMPTS, DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_POOL_SIZE, MAX_POOL_SIZE,
};
use crate::codec::ValueCodec;
use crate::error::{Error, Result};
use crate::metrics::LayerMetrics;

/// How the client reconnects after losing a connection.
///
/// Each delay gets a random extra of up to a quarter of the longest delay (at most 50 ms), so
/// the replicas of a fleet do not all reconnect at the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reconnect {
    /// Wait `min`, then twice as long each time, up to `max`; retry forever. The default:
    /// 10 ms to 150 ms, so a restarted Redis is used again within about 0.2 s (with a
    /// [`Layered`](crate::Layered) in front, its circuit is probed as soon as a connection
    /// opens). A refused connection costs Redis next to nothing; raise `max` for a very large
    /// fleet.
    Exponential {
        /// First delay.
        min: Duration,
        /// Longest delay.
        max: Duration,
    },
    /// Wait the same delay between attempts; retry forever.
    Constant(Duration),
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect::Exponential {
            min: Duration::from_millis(10),
            max: Duration::from_millis(150),
        }
    }
}

impl Reconnect {
    fn to_fred(self) -> ReconnectPolicy {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1);
        let (mut policy, longest) = match self {
            Reconnect::Exponential { min, max } => {
                let max = ms(max).max(ms(min));
                (ReconnectPolicy::new_exponential(0, ms(min), max, 2), max)
            }
            Reconnect::Constant(delay) => (ReconnectPolicy::new_constant(0, ms(delay)), ms(delay)),
        };
        policy.set_jitter((longest / 4).min(50));
        policy
    }
}

/// The settings a client of this cache is built from.
#[derive(Clone)]
pub(crate) struct Setup {
    pub(crate) config: Config,
    pub(crate) policy: ReconnectPolicy,
    pub(crate) connection: ConnectionConfig,
    pub(crate) performance: PerformanceConfig,
    pub(crate) connect_timeout: Duration,
}

impl Setup {
    pub(crate) fn builder(&self) -> fred::types::Builder {
        let mut builder = fred::types::Builder::from_config(self.config.clone());
        builder
            .set_policy(self.policy.clone())
            .set_connection_config(self.connection.clone())
            .set_performance_config(self.performance.clone());
        builder
    }
}

/// Whether a failure to connect is a mistake in the settings (bad URL, wrong password, TLS), so
/// that `build` must fail, rather than a server that is not reachable yet.
pub(super) fn is_fatal(error: &fred::error::Error) -> bool {
    use fred::error::ErrorKind;
    let message = error.details().to_ascii_lowercase();
    matches!(
        error.kind(),
        ErrorKind::Auth
            | ErrorKind::Config
            | ErrorKind::Url
            | ErrorKind::InvalidArgument
            | ErrorKind::InvalidCommand
    ) || message.contains("wrongpass")
        || message.contains("certificate")
        || message.contains("tls handshake")
        || message.contains("noauth")
        || message.contains("invalid password")
        || message.contains("invalid username")
        || refuses_database(&message)
}

/// Whether the server refused the URL's database number (`ERR DB index is out of range`, or
/// `SELECT` on a cluster node): a setting, not a passing state.
pub(crate) fn refuses_database(lowercase_message: &str) -> bool {
    lowercase_message.contains("db index") || lowercase_message.contains("select is not allowed")
}

/// The URL schemes a Redis (or Valkey) server is reached by: fred would take any other scheme
/// (`http://…`) for a single server, so it is checked here.
fn check_scheme(url: &str) -> Result<()> {
    let Some((scheme, _)) = url.split_once("://") else {
        return Ok(()); // not a URL at all: fred's parser says so
    };
    let lower = scheme.to_ascii_lowercase();
    let base = lower
        .strip_suffix("-cluster")
        .or_else(|| lower.strip_suffix("-sentinel"))
        .unwrap_or(&lower);
    if matches!(base, "redis" | "rediss" | "valkey" | "valkeys") {
        return Ok(());
    }
    let shown: String = scheme.chars().take(32).collect();
    Err(Error::config(format!(
        "a Redis URL starts with redis://, rediss://, redis-cluster://, redis-sentinel:// \
         (or the same with valkey), not {shown}://"
    )))
}

/// The longest timeout kept: a year. Longer ones (up to `Duration::MAX`, "no limit") mean the
/// same, and would overflow the clock arithmetic of the layers below.
const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// `url` with its secrets replaced by `<redacted>`: the password of the user part (all of it
/// when it has no `:`, as a lone token may be a password), and the value of every query
/// parameter whose name holds `password` (`sentinelPassword`). A password may hold `/`, `?`,
/// `#` or `@`, so the user part ends at the last `@` before any such parameter.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<not a URL>".to_owned();
    };
    // (start, end) of the values of query parameters that carry a password.
    let mut secrets = Vec::new();
    for (i, c) in rest.char_indices() {
        if c != '?' && c != '&' {
            continue;
        }
        let param_end = rest[i + 1..].find('&').map_or(rest.len(), |e| i + 1 + e);
        if let Some(eq) = rest[i + 1..param_end].find('=') {
            if rest[i + 1..i + 1 + eq]
                .to_ascii_lowercase()
                .contains("password")
            {
                secrets.push((i + 2 + eq, param_end));
            }
        }
    }
    let user_part_end = secrets.first().map_or(rest.len(), |&(start, _)| start);
    let mut out = format!("{scheme}://");
    let mut shown = 0;
    if let Some(at) = rest[..user_part_end].rfind('@') {
        match rest[..at].split_once(':') {
            Some((user, _)) => {
                out.push_str(user);
                out.push_str(":<redacted>@");
            }
            None => out.push_str("<redacted>@"),
        }
        shown = at + 1;
    }
    for (start, end) in secrets {
        if start < shown {
            continue;
        }
        out.push_str(&rest[shown..start]);
        out.push_str("<redacted>");
        shown = end;
    }
    out.push_str(&rest[shown..]);
    out
}

/// Builds a [`RedisCache`]; see the [module docs](crate::redis) for the defaults and why.
#[must_use]
pub struct RedisCacheBuilder<V> {
    url: Option<String>,
    username: Option<String>,
    password: Option<String>,
    tls: tls::TlsSettings,
    name: String,
    namespace: Option<String>,
    pool_size: usize,
    command_timeout: Duration,
    connect_timeout: Duration,
    unresponsive_after: Option<Duration>,
    reconnect: Reconnect,
    codec: Arc<dyn ValueCodec<V>>,
}

impl<V> fmt::Debug for RedisCacheBuilder<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCacheBuilder")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("pool_size", &self.pool_size)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect", &self.reconnect)
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

impl<V> RedisCacheBuilder<V>
where
    V: Send + Sync + 'static,
{
    pub(crate) fn with_codec(codec: impl ValueCodec<V> + 'static) -> Self {
        RedisCacheBuilder {
            url: None,
            username: None,
            password: None,
            tls: tls::TlsSettings::default(),
            name: "redis".into(),
            namespace: None,
            pool_size: DEFAULT_POOL_SIZE,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            unresponsive_after: None,
            reconnect: Reconnect::default(),
            codec: Arc::new(codec),
        }
    }

    /// Where Redis is (required):
    ///
    /// * `redis://[user:password@]host:port[/db]`: one server;
    /// * `redis-cluster://[user:password@]host:port?node=host2:port2&node=…`: a cluster, from
    ///   any of its nodes (the others are discovered);
    /// * `redis-sentinel://[user:password@]host:port?sentinelServiceName=name&node=…`: the
    ///   master a group of sentinels names (the credentials are the master's).
    ///
    /// Credentials in the URL are never shown by `Debug`, `Display`, errors or logs.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// The ACL user to authenticate as (overrides one in the URL). Default: the URL's, else
    /// none (`AUTH` with a password only, as the `default` user).
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// The password to authenticate with (overrides one in the URL), for example read from a
    /// secret store so that it never sits in a URL. Never shown by `Debug`.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Trust only the CA certificate(s) in this PEM file for the server's certificate (default:
    /// the system's trusted roots). Needs a `rediss://` URL.
    ///
    /// ```no_run
    /// # async fn run() -> layercache::Result<()> {
    /// use layercache::RedisCache;
    ///
    /// let cache: RedisCache<String> = RedisCache::builder()
    ///     .url("rediss://cache.internal:6380")
    ///     .username("svc")
    ///     .password(std::env::var("REDIS_PASSWORD").unwrap_or_default())
    ///     .tls_ca_file("/etc/redis-tls/ca.pem")
    ///     .tls_client_cert("/etc/redis-tls/client.pem", "/etc/redis-tls/client.key")
    ///     .build()
    ///     .await?;
    /// # let _ = cache; Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls.ca_file = Some(path.into());
        self
    }

    /// Present this client certificate (PEM chain) and key (PEM, PKCS#8, PKCS#1 or SEC1) to a
    /// server that asks for one (`tls-auth-clients yes`). Needs a `rediss://` URL.
    #[cfg(feature = "tls")]
    pub fn tls_client_cert(
        mut self,
        cert_path: impl Into<std::path::PathBuf>,
        key_path: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.tls.client_cert = Some((cert_path.into(), key_path.into()));
        self
    }

    /// Check the server's certificate against this name instead of the URL's host (for example
    /// when connecting by IP address to a server whose certificate names its DNS name). The
    /// check itself is never turned off. Needs a `rediss://` URL.
    #[cfg(feature = "tls")]
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.tls.server_name = Some(name.into());
        self
    }

    /// The layer's name in metric labels (`cache="…"`). Default `"redis"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Prefix every key with `namespace:`, so caches sharing a Redis never collide and
    /// [`invalidate_prefix`](RedisCache::invalidate_prefix) stays inside its own keys. Default: none.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Number of connections (default [`DEFAULT_POOL_SIZE`], 2): half carry writes (each key's
    /// writes always on the same one), half carry reads. With 1, reads and writes share it.
    /// Zero, and more than [`MAX_POOL_SIZE`] (1,024), are refused by [`build`](Self::build).
    ///
    /// More connections rarely read faster: Redis runs commands on one thread, and each
    /// connection pipelines whatever is in flight on it. On 2 cores the default served 13–18 %
    /// more reads per second than a pool of 4 with 16–256 reads in flight (BENCHMARKS.md,
    /// `l2_throughput`); measure before raising it. Reads on one connection are answered in
    /// order, so with values of megabytes a larger pool keeps one large read from holding up
    /// the small ones behind it.
    pub fn pool_size(mut self, connections: usize) -> Self {
        self.pool_size = connections;
        self
    }

    /// Time limit for each command (default 250 ms). A hung server costs a caller at most this.
    /// Zero is refused by [`build`](Self::build); anything over a year (up to `Duration::MAX`)
    /// counts as a year.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Time limit for the first connection, in [`build`](Self::build) (default 2 s). Zero is
    /// refused; anything over a year counts as a year.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Replace a connection that stops answering: once a command on it times out, it is probed
    /// with `PING`, and if it still answers nothing this long after, it is rebuilt (default:
    /// 8 × the command timeout, at least 2 s). A backplane's connections are rebuilt after this
    /// long without a reply, or without hearing their own heartbeat. Zero is refused; anything
    /// over a year counts as a year.
    ///
    /// It also bounds how long a command waits for its turn when more than
    /// 256 commands of this cache are in flight on its connection (a burst of
    /// concurrent calls): while the server keeps answering, a command waits this long at most
    /// and then fails with [`RedisErrorKind::Busy`](crate::RedisErrorKind::Busy), unsent; its
    /// command timeout runs from its turn.
    pub fn unresponsive_after(mut self, after: Duration) -> Self {
        self.unresponsive_after = Some(after);
        self
    }

    /// How to reconnect after a connection is lost (default exponential, 10 ms to 150 ms, forever).
    pub fn reconnect(mut self, policy: Reconnect) -> Self {
        self.reconnect = policy;
        self
    }

    /// Store values with `codec` (default: MessagePack + zstd above 1 KiB, writes verified).
    pub fn codec(mut self, codec: impl ValueCodec<V> + 'static) -> Self {
        self.codec = Arc::new(codec);
        self
    }

    /// Connect and build the cache.
    ///
    /// A server that cannot be reached (connection refused, no answer within the connect
    /// timeout) does not fail the build: the cache starts without it — every command fails at
    /// once, so a [`Layered`](crate::Layered) in front serves from L1 and the loader — keeps
    /// connecting in the background, each connection of the pool every 100 ms on its own until
    /// it is up, and logs one warning (feature `tracing`). Dropping the cache stops the attempts.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for missing or contradictory settings, a zero timeout, a pool size of zero or over [`MAX_POOL_SIZE`], or a
    /// URL scheme that is not Redis's or Valkey's (`http://…`); [`Error::Redis`] (op `config`,
    /// kind [`Config`](crate::RedisErrorKind::Config)) for a URL that cannot be parsed;
    /// [`Error::Redis`] (op `connect`) for a server that refuses the credentials (kind
    /// [`Auth`](crate::RedisErrorKind::Auth)) or the connection settings (kind
    /// [`Config`](crate::RedisErrorKind::Config): a database number it does not have, such as
    /// `/99` on a server with the default 16, or any but 0 on a cluster node).
    pub async fn build(self) -> Result<RedisCache<V>> {
        if self.pool_size == 0 || self.pool_size > MAX_POOL_SIZE {
            return Err(Error::config(format!(
                "pool_size must be 1 to {MAX_POOL_SIZE}, not {}",
                self.pool_size
            )));
        }
        if self.command_timeout.is_zero()
            || self.connect_timeout.is_zero()
            || self.unresponsive_after.is_some_and(|d| d.is_zero())
        {
            return Err(Error::config("timeouts must be greater than zero"));
        }
        if self.name.is_empty() {
            return Err(Error::config("the cache name must not be empty"));
        }
        let Some(url) = self.url else {
            return Err(Error::config("set the Redis url"));
        };
        check_scheme(&url)?;
        let command_timeout = self.command_timeout.min(MAX_TIMEOUT);
        let connect_timeout = self.connect_timeout.min(MAX_TIMEOUT);
        let mut config = Config::from_url(&tls::plain_scheme(&url)).map_err(|_| {
            // fred's message may quote the URL, password included: only ours, redacted.
            let source = fred::error::Error::new(
                fred::error::ErrorKind::Config,
                format!("not a valid Redis URL: {}", redact_url(&url)),
            );
            Error::redis("config", source)
        })?;
        tls::apply(&mut config, &url, &self.tls)?;
        if self.username.is_some() {
            config.username = self.username;
        }
        if self.password.is_some() {
            config.password = self.password;
        }
        if config.password.is_none() && config.username.is_some() {
            return Err(Error::config("an ACL username needs a password"));
        }
        config.fail_fast = true;
        let clustered = config.server.is_clustered();
        let unresponsive = self.unresponsive_after.map_or_else(
            || (command_timeout * 8).max(Duration::from_secs(2)),
            |after| after.min(MAX_TIMEOUT),
        );
        let connection = ConnectionConfig {
            // On a cluster, redirections come back to us and `cluster::follow` retries them:
            // fred's own `ASK` handling mixes up replies on a pipelined connection.
            max_redirections: if clustered { 0 } else { 5 },
            connection_timeout: connect_timeout,
            internal_command_timeout: connect_timeout,
            max_command_attempts: ATTEMPTS,
            unresponsive: UnresponsiveConfig {
                max_timeout: Some(unresponsive),
                interval: (unresponsive / 4).max(Duration::from_millis(50)),
            },
            tcp: TcpConfig {
                nodelay: Some(true),
                ..TcpConfig::default()
            },
            ..ConnectionConfig::default()
        };
        let performance = PerformanceConfig {
            default_command_timeout: command_timeout,
            ..PerformanceConfig::default()
        };
        let setup = Setup {
            config,
            policy: self.reconnect.to_fred(),
            connection,
            performance,
            connect_timeout,
        };
        // The cache's own connections leave fred's unresponsive check off: every command on
        // them has a timeout, and the first one to time out starts the watchdog, which replaces
        // a connection that still does not answer after the unresponsive time — everything
        // fred's check would do. Left on, it re-armed a timer at each turn of the connection's
        // loop: ~1,400 instructions, 5 % of the client's work, on every command. (The
        // backplane's clients keep it.)
        let mut pool = setup.builder();
        pool.set_connection_config(ConnectionConfig {
            unresponsive: UnresponsiveConfig::default(),
            ..setup.connection.clone()
        });
        let pool = pool
            .build_pool(self.pool_size)
            .map_err(|source| Error::redis("config", source))?;
        // Count every connection fred opens (the first ones, those made in the background after
        // a start without Redis, and reconnections): a `Layered` in front probes its open
        // circuit as soon as the count moves. Each listener ends with its client.
        let connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
        for client in pool.clients() {
            let connections = Arc::clone(&connections);
            let _listener = client.on_reconnect(move |_| {
                connections.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                async { Ok(()) }
            });
        }

        // One connection task per client, restarted whenever it ends, for the life of the cache
        // (see `connect`): a start without Redis is not an error.
        let alive = connect::Alive::new();
        let failure =
            connect::connect_clients(pool.clients(), alive.token(), connect_timeout).await;
        if let Some(source) = failure {
            if is_fatal(&source) {
                // Dropping `alive` stops the restarts; close the half-made connections in the
                // background: quitting a pool whose server does not answer can itself take a
                // command timeout, and the caller was promised an answer within the connect
                // timeout.
                drop(alive);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(connect::QUIT_WAIT, pool.quit()).await;
                });
                return Err(Error::redis("connect", source));
            }
            // Unreachable for now (refused, timed out): start anyway; the clients keep
            // connecting in the background. Until then every command fails at once, which a
            // `Layered` in front treats as an L2 outage (circuit open; L1 and the loader serve).
            crate::log_warn!(
                cache = self.name.as_str(),
                error = %source,
                "layercache: Redis is unreachable at start-up; the cache starts without it and keeps connecting in the background"
            );
            tokio::spawn(connect::announce_when_connected(
                pool.clone(),
                alive.token(),
            ));
        }

        let options = Options {
            timeout: Some(command_timeout),
            fail_fast: true,
            max_attempts: Some(ATTEMPTS),
            ..Options::default()
        };
        let bulk_options = Options {
            timeout: Some(command_timeout.max(Duration::from_secs(2))),
            ..options.clone()
        };
        let prefix = self
            .namespace
            .map(|ns| format!("{ns}:"))
            .unwrap_or_default();
        let metrics = LayerMetrics::new(&self.name, "redis");
        let ops = OpMetrics::new(&metrics, &self.name);
        Ok(RedisCache {
            inner: Arc::new(Inner {
                alive,
                runtime_gone_reported: std::sync::atomic::AtomicBool::new(false),
                setup,
                pool,
                clustered,
                prefix,
                codec: self.codec,
                name: Arc::from(self.name),
                options,
                bulk_options,
                metrics,
                ops,
                watchdog: Arc::new(watchdog::Watchdog::new(
                    self.pool_size,
                    unresponsive,
                    clustered,
                )),
                admission: super::admission::Admission::new(
                    self.pool_size,
                    command_timeout,
                    unresponsive,
                ),
                connections,
                deployments: super::deploy::OtherDeployments::default(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            redact_url("redis://svc:s3cret@host:6379/2"),
            "redis://svc:<redacted>@host:6379/2"
        );
        assert_eq!(
            redact_url("redis://:p@ss@host:6379"),
            "redis://:<redacted>@host:6379"
        );
        assert_eq!(
            redact_url("redis-cluster://host:7000?node=h2:7001"),
            "redis-cluster://host:7000?node=h2:7001"
        );
        assert_eq!(redact_url("s3cret"), "<not a URL>");
        // A password holding URL delimiters, unencoded: nothing of it shows.
        let shown = redact_url("redis://:p@ss:/x#y?z%w@127.0.0.1:6379/1");
        assert_eq!(shown, "redis://:<redacted>@127.0.0.1:6379/1");
        // A lone token before the `@` may be a password.
        assert_eq!(redact_url("redis://t0ken@host"), "redis://<redacted>@host");
        // Sentinel credentials in the query.
        assert_eq!(
            redact_url(
                "redis-sentinel://svc:pw1@h:26379/1?sentinelServiceName=m&sentinelPassword=p@w2&node=h2:26380"
            ),
            "redis-sentinel://svc:<redacted>@h:26379/1?sentinelServiceName=m&sentinelPassword=<redacted>&node=h2:26380"
        );
        assert_eq!(
            redact_url("redis-sentinel://h:26379?sentinelPassword=s3cret"),
            "redis-sentinel://h:26379?sentinelPassword=<redacted>"
        );
    }
}
