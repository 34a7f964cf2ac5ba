//! Cluster redirections, followed by us rather than by fred.
//!
//! fred 10.1 follows an `ASK` redirection by writing `ASKING` to the target node and then
//! reading *the next reply on that connection* as its answer. fred pipelines every connection,
//! so with other commands in flight that reply belongs to another command, and from then on
//! every reply on the connection goes to the command queued before its own: a `GET` answered
//! with another key's value, and the last command never answered (it times out). Under load, a
//! reshard showed both: values of other keys served, and bursts of timeouts.
//!
//! So a cluster client is built to follow no redirection itself (`max_redirections` 0). fred still
//! refreshes its slot map when it sees `MOVED`, then hands the command back as a "too many
//! redirections" error; an `ASK` (slot being migrated) comes back the same way, and so does a
//! multi-key command's `TRYAGAIN` while its slot is split between two nodes. [`follow`] sends
//! such a command again, after a short pause, until it is answered or its time is up. The
//! command was not run by the node that redirected it, so sending it again is safe.

use std::future::Future;
use std::time::{Duration, Instant};

use fred::prelude::Options;

/// Whether `error` is a redirection fred handed back instead of following (see the module docs).
pub(crate) fn is_redirection(error: &fred::error::Error) -> bool {
    let details = error.details();
    (*error.kind() == fred::error::ErrorKind::Routing
        && details.starts_with("Too many redirections"))
        || details.starts_with("TRYAGAIN")
        || details.starts_with("ASK ")
        || details.starts_with("MOVED ")
}

/// What is left of the time of `options` (counted from `started`) after a `pause`, if at least
/// a millisecond: the timeout of a retry.
fn time_left(started: Instant, options: &Options, pause: Duration) -> Option<Duration> {
    let within = options.timeout.unwrap_or(super::DEFAULT_COMMAND_TIMEOUT);
    Some(within.saturating_sub(started.elapsed() + pause))
        .filter(|left| *left >= Duration::from_millis(1))
}

/// Run `attempt` until it is not answered with a redirection or the time of `options` (counted
/// from `started`) is up; each retry gets what is left of it as its timeout. Pauses 1 ms before the
/// first retry, then twice as long each time up to 20 ms (a slot's keys move in milliseconds;
/// after `MOVED` no pause is needed, as fred has refreshed its slot map by then).
pub(crate) async fn follow<T, F, Fut>(
    started: Instant,
    options: &Options,
    mut attempt: F,
) -> Result<T, fred::error::Error>
where
    F: FnMut(&Options) -> Fut,
    Fut: Future<Output = Result<T, fred::error::Error>>,
{
    // Each attempt is boxed: fred's command futures are several KB, and every future around
    // this one (the retries, a span, the caller's own, the trait's box) would otherwise hold
    // that much and copy it whole when built (a `RedisCache::get` future: 11.6 KB unboxed,
    // under 1 KB boxed; ~2,400 fewer instructions a read).
    let error = match Box::pin(attempt(options)).await {
        Err(e) if is_redirection(&e) => e,
        answer => return answer,
    };
    let mut retry = options.clone();
    let mut pause = Duration::from_millis(1);
    let mut last = error;
    loop {
        let Some(left) = time_left(started, options, pause) else {
            return Err(last);
        };
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
        retry.timeout = Some(left);
        match Box::pin(attempt(&retry)).await {
            Err(e) if is_redirection(&e) => last = e,
            answer => return answer,
        }
    }
}

/// [`follow`] for a read: a read whose connection was closed under it (a reconnection forced by
/// the watchdog cancels what was in flight) is sent once
/// more within what is left of its time. A read is safe to repeat; a write is not (it could land
/// after a later delete), so writes keep the plain [`follow`]. Only once: while the client is
/// disconnected every command fails at once, and a read must keep failing fast then.
pub(crate) async fn follow_read<T, F, Fut>(
    started: Instant,
    options: &Options,
    mut attempt: F,
) -> Result<T, fred::error::Error>
where
    F: FnMut(&Options) -> Fut,
    Fut: Future<Output = Result<T, fred::error::Error>>,
{
    let error = match follow(started, options, &mut attempt).await {
        Err(e) if *e.kind() == fred::error::ErrorKind::Canceled => e,
        answer => return answer,
    };
    let pause = Duration::from_millis(1);
    let Some(left) = time_left(started, options, pause) else {
        return Err(error);
    };
    tokio::time::sleep(pause).await;
    let retry = Options {
        timeout: Some(left),
        ..options.clone()
    };
    follow(Instant::now(), &retry, attempt).await
}

/// [`follow`] for one command on `client`, within its default command timeout (the fleet's
/// lease and tag commands).
pub(crate) async fn follow_on<T, F, Fut>(
    client: &fred::clients::Client,
    attempt: F,
) -> Result<T, fred::error::Error>
where
    F: FnMut(&Options) -> Fut,
    Fut: Future<Output = Result<T, fred::error::Error>>,
{
    use fred::interfaces::ClientLike;
    let options = Options {
        timeout: Some(client.perf_config().default_command_timeout),
        ..Options::default()
    };
    follow(Instant::now(), &options, attempt).await
}

/// `keys` grouped by hash slot (a multi-key command must stay within one slot).
pub(crate) fn group_by_slot<K: AsRef<[u8]>>(keys: Vec<K>) -> Vec<Vec<K>> {
    let mut groups: std::collections::BTreeMap<u16, Vec<K>> = std::collections::BTreeMap::new();
    for key in keys {
        groups
            .entry(fred::util::redis_keyslot(key.as_ref()))
            .or_default()
            .push(key);
    }
    groups.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::error::{Error, ErrorKind};

    fn within(ms: u64) -> Options {
        Options {
            timeout: Some(Duration::from_millis(ms)),
            ..Options::default()
        }
    }

    #[test]
    fn redirections_are_told_from_other_errors() {
        assert!(is_redirection(&Error::new(
            ErrorKind::Routing,
            "Too many redirections."
        )));
        assert!(is_redirection(&Error::new(
            ErrorKind::Unknown,
            "TRYAGAIN Multiple keys request during rehashing of slot"
        )));
        assert!(!is_redirection(&Error::new(
            ErrorKind::Timeout,
            "Request timed out."
        )));
        assert!(!is_redirection(&Error::new(
            ErrorKind::Routing,
            "Failed to route command."
        )));
    }

    #[tokio::test]
    async fn follow_retries_redirections_within_its_time_only() {
        let mut tries = 0;
        let answer: Result<u32, _> = follow(Instant::now(), &within(5_000), |_| {
            tries += 1;
            let n = tries;
            async move {
                if n < 3 {
                    Err(Error::new(ErrorKind::Routing, "Too many redirections."))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(answer.ok(), Some(3));

        let mut tries = 0;
        let answer: Result<u32, _> = follow(Instant::now(), &within(30), |_| {
            tries += 1;
            async { Err(Error::new(ErrorKind::Routing, "Too many redirections.")) }
        })
        .await;
        assert!(answer.is_err());
        assert!((2..=6).contains(&tries), "{tries} tries within 30 ms");

        let mut tries = 0;
        let answer: Result<u32, _> = follow(Instant::now(), &within(5_000), |_| {
            tries += 1;
            async { Err(Error::new(ErrorKind::Timeout, "Request timed out.")) }
        })
        .await;
        assert!(answer.is_err());
        assert_eq!(tries, 1, "other errors are not retried");
    }
}
