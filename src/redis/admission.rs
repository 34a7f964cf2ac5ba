//! Turns on a connection: at most [`MAX_IN_FLIGHT`] commands of a `RedisCache` in flight on
//! each pool connection, the others waiting their turn in the cache.
//!
//! Without it, a burst of concurrent calls (a batch job's `join_all` over 40,000 prompts, a
//! replica restarted under full traffic) went to the connection all at once. Redis answers a
//! connection's commands in order, so the last of them waited for all the others, and every one
//! that waited longer than the command timeout (250 ms) failed as if Redis were down: on the
//! 2-core VM, 16,097 of 40,000 cached values were loaded again (LLM calls), and the breaker
//! opened. A command's timeout now runs from its turn, not from its call.
//!
//! Waiting for a turn is not a failure while the connection keeps answering: a caller waits at
//! most the unresponsive time
//! ([`RedisCacheBuilder::unresponsive_after`](super::RedisCacheBuilder::unresponsive_after),
//! 2 s by default), after which it gives up unsent with
//! [`RedisErrorKind::Busy`](crate::RedisErrorKind) — the server answered everything, it was
//! only too much at once — which a `Layered` stack's circuit breaker does not count. When the
//! last command to come back on the connection timed out while others are still in flight (the
//! server hangs), a waiter gives up with a timeout instead, as its command would have: a hang
//! costs a caller little more than the command timeout (5,000 callers behind a hung server:
//! the slowest failed after 268–281 ms with a 250 ms timeout), never a wait behind every other
//! caller's. (Only a timeout marks a hang: an answer the caller notes late, because its runtime
//! is busy, must not.)

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::entry::now_ms;

/// Most commands (or pipelines) of a cache in flight on one connection. Enough to keep the
/// connection's pipeline full — 256 small reads are answered in a few milliseconds — and few
/// enough that the last of them is answered well within the command timeout.
pub(crate) const MAX_IN_FLIGHT: usize = 256;

/// The turns of each connection of a pool.
pub(crate) struct Admission {
    lanes: Box<[Lane]>,
    /// The command timeout: how often a waiter looks whether the connection hangs.
    patience: Duration,
    /// The longest wait for a turn while the connection answers (the unresponsive time).
    longest: Duration,
}

/// One connection's turns. Not a `tokio::sync::Semaphore`: its release takes a lock each time,
/// which two threads at 200,000 commands a second contend for (a fifth of the reads at 256 in
/// flight); here a command in flight costs two atomic additions, and a lock only while
/// someone waits.
struct Lane {
    in_flight: AtomicUsize,
    /// Callers waiting for a turn: a turn that ends wakes one.
    waiting: AtomicUsize,
    freed: Notify,
    /// When a command on this connection last came back answered, and last timed out (ms since
    /// the epoch). Noted by the caller once it runs again, which may be late on a busy runtime:
    /// a late answer must not look like a hang, so only a timeout marks one.
    answered_ms: AtomicU64,
    timed_out_ms: AtomicU64,
}

/// Why no turn was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoTurn {
    /// Commands are in flight on the connection, and the last one to come back timed out.
    Stalled,
    /// The connection answers, but the wait reached the unresponsive time.
    Busy,
}

/// A command's turn: one of [`MAX_IN_FLIGHT`] on its connection until dropped.
pub(crate) struct Turn<'a> {
    lane: &'a Lane,
}

impl Turn<'_> {
    /// The server answered the command (an error reply counts: it is alive).
    pub(crate) fn answered(&self) {
        // Only an answer after a timeout is news: the common case is two shared reads.
        let lane = self.lane;
        if lane.timed_out_ms.load(Ordering::Acquire) >= lane.answered_ms.load(Ordering::Acquire) {
            lane.answered_ms.fetch_max(now_ms(), Ordering::AcqRel);
        }
    }

    /// The command got no answer within its timeout.
    pub(crate) fn timed_out(&self) {
        self.lane.timed_out_ms.fetch_max(now_ms(), Ordering::AcqRel);
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let lane = self.lane;
        lane.in_flight.fetch_sub(1, Ordering::AcqRel);
        if lane.waiting.load(Ordering::Acquire) > 0 {
            lane.freed.notify_one();
        }
    }
}

/// Counts a caller among the waiting while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub(crate) fn new(connections: usize, patience: Duration, longest: Duration) -> Self {
        Admission {
            lanes: (0..connections.max(1))
                .map(|_| Lane {
                    in_flight: AtomicUsize::new(0),
                    waiting: AtomicUsize::new(0),
                    freed: Notify::new(),
                    answered_ms: AtomicU64::new(0),
                    timed_out_ms: AtomicU64::new(0),
                })
                .collect(),
            patience,
            longest: longest.max(patience),
        }
    }

    /// A turn on connection `index`: at once while fewer than [`MAX_IN_FLIGHT`] commands are
    /// in flight on it, else once one comes back.
    pub(crate) async fn turn(&self, index: usize) -> Result<Turn<'_>, NoTurn> {
        let lane = &self.lanes[index % self.lanes.len()];
        if lane.try_enter() {
            return Ok(Turn { lane });
        }
        lane.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&lane.waiting);
        let waiting_since = tokio::time::Instant::now();
        let mut look = waiting_since + self.patience;
        loop {
            let freed = lane.freed.notified();
            tokio::pin!(freed);
            // Registered before trying, so that a turn ending in between still wakes us.
            freed.as_mut().enable();
            if lane.try_enter() {
                let turn = Turn { lane };
                // Freed by a command that timed out, while the others still hang.
                if lane.stalled() {
                    return Err(NoTurn::Stalled);
                }
                return Ok(turn);
            }
            tokio::select! {
                () = &mut freed => {}
                () = tokio::time::sleep_until(look) => {
                    if lane.stalled() {
                        return Err(NoTurn::Stalled);
                    }
                    if waiting_since.elapsed() >= self.longest {
                        return Err(NoTurn::Busy);
                    }
                    look += self.patience;
                }
            }
        }
    }
}

impl Lane {
    /// Take a turn if one is free.
    fn try_enter(&self) -> bool {
        let mut in_flight = self.in_flight.load(Ordering::Acquire);
        loop {
            if in_flight >= MAX_IN_FLIGHT {
                return false;
            }
            match self.in_flight.compare_exchange_weak(
                in_flight,
                in_flight + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => in_flight = now,
            }
        }
    }

    /// Commands are in flight, and the last command to come back timed out: the server (or the
    /// way to it) hangs, and a waiter's command would time out too.
    fn stalled(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
            && self.timed_out_ms.load(Ordering::Acquire) > self.answered_ms.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_gets_a_turn_once_a_command_is_answered() {
        let admission = Admission::new(1, Duration::from_millis(250), Duration::from_secs(2));
        let mut turns = Vec::new();
        for _ in 0..MAX_IN_FLIGHT {
            turns.push(admission.turn(0).await.expect("a free turn"));
        }
        let waited = tokio::time::timeout(Duration::from_millis(20), admission.turn(0)).await;
        assert!(waited.is_err(), "a turn beyond MAX_IN_FLIGHT");
        let first = turns.remove(0);
        first.answered();
        drop(first);
        assert!(admission.turn(0).await.is_ok());
    }

    #[tokio::test]
    async fn waiters_give_up_once_a_command_in_flight_timed_out() {
        let patience = Duration::from_millis(50);
        let admission = Admission::new(1, patience, Duration::from_secs(10));
        let mut turns: Vec<Turn<'_>> = futures_all(&admission).await;
        // One command came back answered, then one timed out, while the rest still hang.
        turns[0].answered();
        std::thread::sleep(Duration::from_millis(2));
        turns[1].timed_out();
        let started = std::time::Instant::now();
        assert_eq!(admission.turn(0).await.err(), Some(NoTurn::Stalled));
        assert!(started.elapsed() < patience * 4, "{:?}", started.elapsed());
        // An answer after the timeout ends the stall: the next freed turn is given.
        std::thread::sleep(Duration::from_millis(2));
        turns[2].answered();
        let waiter = admission.turn(0);
        tokio::pin!(waiter);
        let early = tokio::time::timeout(patience * 2, waiter.as_mut()).await;
        assert!(early.is_err(), "no turn is free yet, and no stall");
        drop(turns.pop());
        assert!(waiter.await.is_ok());
    }

    #[tokio::test]
    async fn a_waiter_on_a_connection_that_answers_gives_up_after_the_longest_wait() {
        let patience = Duration::from_millis(30);
        let admission = Admission::new(1, patience, Duration::from_millis(120));
        let turns: Vec<Turn<'_>> = futures_all(&admission).await;
        let answering = async {
            // Answers keep coming, but no turn is freed.
            loop {
                turns[0].answered();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let result = tokio::select! {
            result = admission.turn(0) => result,
            () = answering => unreachable!(),
        };
        assert_eq!(result.err(), Some(NoTurn::Busy));
    }

    async fn futures_all(admission: &Admission) -> Vec<Turn<'_>> {
        let mut turns = Vec::new();
        for _ in 0..MAX_IN_FLIGHT {
            turns.push(admission.turn(0).await.expect("a free turn"));
        }
        turns
    }
}
