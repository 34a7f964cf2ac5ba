//! The backplane's outbox: changes waiting to be published, the task that publishes them, and
//! the wait of a change made through a `Layered` for its announcement.
//!
//! Every change gets a sequence number. The outbox keeps the latest action per key (a slot keeps
//! the *first* number of the changes it stands for), the publisher sends all it holds at once
//! (pipelined), and after each batch it publishes how far everything is out: every change
//! numbered up to `done` reached Redis, or was replaced by a later one that did. A caller that
//! waits for its change waits for `done` to reach its number — or for a publish to fail (Redis
//! cannot be reached; the change stays queued and is retried), or for [`ANNOUNCE_WAIT`]. While
//! publishing fails, changes do not wait at all.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use super::backplane::{encode, Action, Shared, HEARTBEAT, MAX_OUTBOX};

/// The longest a change made through a `Layered` with a backplane (`set`, `set_many`,
/// `delete`, `expire`, `invalidate_tag`, `clear`, `invalidate_prefix`) waits for its
/// announcement to be published before the call returns: 1 s. It returns sooner when the
/// announcement is out (normally one Redis round trip) or when a publish fails (Redis cannot be
/// reached: the announcement is retried in the background); while publishing keeps failing,
/// changes do not wait at all. A process that exits right after such a call has therefore told
/// the other replicas.
pub const ANNOUNCE_WAIT: Duration = Duration::from_secs(1);

/// Most announcements in flight at once on the publisher's connection.
const ROUND: usize = 512;

/// Changes waiting to be published.
#[derive(Default)]
pub(super) struct Outbox {
    /// Latest action per slot, not yet taken by the publisher, with the time it carries and the
    /// lowest sequence number of the changes it stands for.
    slots: HashMap<Slot, Queued>,
    /// Changes the publisher has taken and not yet published or put back: with `slots`, what
    /// [`MAX_OUTBOX`] bounds.
    in_flight: usize,
    /// The lowest sequence number the publisher holds (meaningful while `in_flight > 0`).
    in_flight_low: u64,
    /// Bumped by each overflow: the publisher drops what it had taken (the resync covers it).
    generation: u64,
    /// The last sequence number given out.
    last_seq: u64,
}

/// An outbox slot: a key (or tag) and the [`Action::class`] of what is announced about it.
type Slot = (Arc<str>, u8);

/// A queued announcement: the action, the time it carries (µs) and its sequence number.
type Queued = (Action, u64, u64);

/// How far the announcements are out, as the publisher last saw it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Progress {
    /// Every change numbered up to this one is published (or replaced by one that is).
    done: u64,
    /// Publish attempts that failed so far.
    failures: u64,
    /// Whether nothing of the last batch went out (Redis cannot be reached): until something
    /// does, changes do not wait for their announcement, nor for room in the outbox.
    failing: bool,
    /// Since when nothing goes out (ms since the epoch; meaningful while `failing`).
    failing_since_ms: u64,
}

/// A queued announcement, to wait for with [`Backplane::published`](super::Backplane).
#[derive(Debug, Clone, Copy)]
#[must_use]
pub(crate) struct Ticket {
    seq: u64,
    /// [`Progress::failures`] when the change was queued.
    failures: u64,
}

impl Ticket {
    /// The later of two tickets (a batch waits for its last change).
    pub(crate) fn later(self, other: Ticket) -> Ticket {
        Ticket {
            seq: self.seq.max(other.seq),
            failures: self.failures.min(other.failures),
        }
    }
}

impl Outbox {
    /// Queue `action` on `key` at `us`. Returns its sequence number and whether the outbox
    /// overflowed (every queued change replaced by one resync).
    pub(super) fn queue(&mut self, action: Action, key: &str, us: u64) -> (u64, bool) {
        self.last_seq += 1;
        let seq = self.last_seq;
        let slot: Slot = (Arc::from(key), action.class());
        if self.slots.len() + self.in_flight >= MAX_OUTBOX && !self.slots.contains_key(&slot) {
            // Every queued change, those the publisher holds and this one, is covered by the
            // other replicas dropping their whole L1: the resync stands for all of them.
            let lowest = self.pending_low().unwrap_or(seq);
            self.slots.clear();
            self.in_flight = 0;
            self.generation = self.generation.wrapping_add(1);
            self.slots.insert(
                (Arc::from(""), Action::Resync.class()),
                (Action::Resync, us, lowest),
            );
            return (seq, true);
        }
        self.slots
            .entry(slot)
            // The slot keeps its first number (until it is out, no change since is) and the
            // latest time of the changes it stands for (a re-read announced at time 0 must not
            // hide a change's time).
            .and_modify(|queued| (queued.0, queued.1) = (action, queued.1.max(us)))
            .or_insert((action, us, seq));
        (seq, false)
    }

    /// The lowest sequence number not yet published, if any is waiting.
    fn pending_low(&self) -> Option<u64> {
        let queued = self.slots.values().map(|q| q.2).min();
        let held = (self.in_flight > 0).then_some(self.in_flight_low);
        match (queued, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Every change numbered up to this one is out.
    fn done(&self) -> u64 {
        self.pending_low().map_or(self.last_seq, |low| low - 1)
    }
}

impl Shared {
    /// The ticket of a change numbered `seq`, queued just now.
    pub(super) fn ticket(&self, seq: u64) -> Ticket {
        Ticket {
            seq,
            failures: self.progress.borrow().failures,
        }
    }

    /// Wait until the change of `ticket` is published, a publish failed since it was queued, or
    /// [`ANNOUNCE_WAIT`] has passed.
    pub(super) async fn published(&self, ticket: Ticket) {
        if self.connecting.runtime_gone() {
            // The publisher went with the runtime it was started on.
            return;
        }
        let mut progress = self.progress.subscribe();
        let _ = tokio::time::timeout(
            ANNOUNCE_WAIT,
            progress
                .wait_for(|p| p.failing || p.done >= ticket.seq || p.failures > ticket.failures),
        )
        .await;
    }
}

/// Outbox fill from which a change made through a `Layered` waits for room before it is
/// queued (while publishing goes through): half of [`MAX_OUTBOX`].
const HIGH_WATER: usize = MAX_OUTBOX / 2;

/// How long nothing must go out before changes stop waiting for room: a batch whose every
/// publish timed out on a busy runtime is not an outage.
const FAILING_FOR: Duration = Duration::from_millis(250);

impl Outbox {
    /// [`queue`](Self::queue) if the outbox holds fewer than [`HIGH_WATER`] changes, or if
    /// `anyway`; `None` otherwise. Checked and queued under one lock, so that any number of
    /// changes let through at once never take it past the mark.
    pub(super) fn queue_within(
        &mut self,
        action: Action,
        key: &str,
        us: u64,
        anyway: bool,
    ) -> Option<(u64, bool)> {
        (anyway || self.slots.len() + self.in_flight < HIGH_WATER)
            .then(|| self.queue(action, key, us))
    }
}

impl Shared {
    /// Queue `action` on `key` once the outbox holds fewer than [`HIGH_WATER`] changes: while
    /// it is fuller, wait as long as the publisher makes progress. Thousands of concurrent
    /// changes would otherwise outrun the publisher (on a busy runtime it falls behind) and
    /// overflow the outbox into a resync, which drops every other replica's L1. Queued at once
    /// while nothing goes out (Redis cannot be reached: the outbox then overflows into one
    /// resync, by design) for [`FAILING_FOR`], or after [`ANNOUNCE_WAIT`] without progress.
    /// Returns its sequence number and whether the outbox overflowed.
    pub(super) async fn queue_paced(&self, action: Action, key: &str) -> (u64, bool) {
        let mut anyway = self.connecting.runtime_gone();
        // The usual case, room at once: no progress to watch.
        if let Some(queued) = self
            .outbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .queue_within(action, key, crate::entry::now_us(), anyway)
        {
            return queued;
        }
        loop {
            // Read before trying, so that progress made in between is not waited for again.
            let mut progress = self.progress.subscribe();
            let (done, failing, failing_since) = {
                let now = progress.borrow_and_update();
                (now.done, now.failing, now.failing_since_ms)
            };
            // Down for a while, not one batch that timed out whole on a busy runtime.
            let down = failing
                && crate::entry::now_ms().saturating_sub(failing_since)
                    >= FAILING_FOR.as_millis() as u64;
            let queued = self
                .outbox
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .queue_within(action, key, crate::entry::now_us(), anyway || down);
            if let Some(queued) = queued {
                return queued;
            }
            let moved = tokio::time::timeout(
                if failing { FAILING_FOR } else { ANNOUNCE_WAIT },
                progress.wait_for(|p| p.done != done || p.failing != failing),
            )
            .await;
            // No progress for the whole wait: queued anyway (a failing state is looked at
            // again: it may have lasted long enough by now).
            anyway = moved.is_err() && !failing;
        }
    }

    /// Wait until every announcement queued so far is published, or publishing fails (no cap:
    /// the caller bounds the wait).
    pub(super) async fn flushed(&self) {
        if self.connecting.runtime_gone() {
            return;
        }
        let last = self
            .outbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last_seq;
        let mut progress = self.progress.subscribe();
        let _ = progress.wait_for(|p| p.failing || p.done >= last).await;
    }
}

/// Publish the outbox, latest action per key, in concurrent rounds; failures are counted and
/// retried.
///
/// The background tasks hold the backplane only between awaits, never across a Redis call or a
/// wait: two tasks that each held it across a 250 ms timed-out call, one picking it up as the
/// other let go, kept a dropped backplane alive for good while Redis was down.
pub(super) async fn publish_loop(shared: std::sync::Weak<Shared>) {
    loop {
        let generation;
        let (publisher, channel, id, wake, batch) = {
            let Some(s) = shared.upgrade() else {
                return;
            };
            let batch: Vec<(Slot, Queued)> = {
                let mut outbox = s.outbox.lock().unwrap_or_else(PoisonError::into_inner);
                let mut batch: Vec<(Slot, Queued)> = outbox.slots.drain().collect();
                batch.sort_unstable_by_key(|(_, queued)| queued.2);
                outbox.in_flight = batch.len();
                outbox.in_flight_low = batch.first().map_or(0, |(_, queued)| queued.2);
                generation = outbox.generation;
                batch
            };
            let wake = Arc::clone(&s.wake);
            let route = (s.channel.clone(), Arc::clone(&s.sharded));
            (s.publisher.clone(), route, s.id, wake, batch)
        };
        if batch.is_empty() {
            // Re-check at least every heartbeat so a dropped backplane ends this task.
            let _ = tokio::time::timeout(HEARTBEAT, wake.notified()).await;
            continue;
        }
        // Concurrently (pipelined on the publisher's connection), oldest first, at most
        // `ROUND` at a time so that none waits behind thousands of others past its timeout.
        let mut sends = tokio::task::JoinSet::new();
        let mut sent = vec![false; batch.len()];
        for (index, (slot, (action, us, _))) in batch.iter().enumerate() {
            if sends.len() >= ROUND {
                if let Some(Ok((index, ok))) = sends.join_next().await {
                    sent[index] = ok;
                }
            }
            let message = encode(id, *action, *us, &slot.0);
            let (publisher, (channel, sharded)) = (publisher.clone(), channel.clone());
            sends.spawn(async move {
                let sent = super::backplane::publish(&publisher, &channel, &sharded, message).await;
                (index, sent.is_ok())
            });
        }
        while let Some(done) = sends.join_next().await {
            if let Ok((index, ok)) = done {
                sent[index] = ok;
            }
        }
        drop((publisher, channel));
        let Some(s) = shared.upgrade() else {
            return;
        };
        let failed = sent.iter().filter(|ok| !**ok).count() as u64;
        let published = batch.len() as u64 - failed;
        s.published.fetch_add(published, Ordering::Relaxed);
        s.counters.published.increment(published);
        s.publish_failures.fetch_add(failed, Ordering::Relaxed);
        s.counters.publish_failed.increment(failed);
        let done = {
            let mut outbox = s.outbox.lock().unwrap_or_else(PoisonError::into_inner);
            // After an overflow meanwhile, the resync covers the whole round.
            if outbox.generation == generation {
                outbox.in_flight = 0;
                for ((slot, queued), ok) in batch.into_iter().zip(&sent) {
                    if !ok {
                        // A newer action for the key, queued meanwhile, wins (and the slot
                        // keeps the lower number: it stands for this change too).
                        outbox
                            .slots
                            .entry(slot)
                            .and_modify(|newer| {
                                newer.1 = newer.1.max(queued.1);
                                newer.2 = newer.2.min(queued.2);
                            })
                            .or_insert(queued);
                    }
                }
            }
            outbox.done()
        };
        s.progress.send_if_modified(|progress| {
            let before = (progress.done, progress.failures, progress.failing);
            progress.done = progress.done.max(done);
            progress.failures += failed;
            // Failing only when nothing went out: a few publishes that timed out on a busy
            // runtime (or on one hung node of a cluster) must not stop changes from waiting for
            // room, or a burst overflows the outbox.
            let failing = failed > 0 && published == 0;
            if failing && !progress.failing {
                progress.failing_since_ms = crate::entry::now_ms();
            }
            progress.failing = failing;
            before != (progress.done, progress.failures, progress.failing)
        });
        drop(s);
        if failed > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_stands_for_its_first_change_until_it_is_out() {
        let mut outbox = Outbox::default();
        assert_eq!(outbox.queue(Action::Set, "a", 1), (1, false));
        assert_eq!(outbox.queue(Action::Set, "b", 2), (2, false));
        assert_eq!(outbox.queue(Action::Delete, "a", 3), (3, false));
        assert_eq!(outbox.done(), 0, "nothing is out");
        assert_eq!(outbox.slots.len(), 2);
        // The publisher takes "a" (numbers 1 and 3): "b" (2) still waits.
        let a = outbox.slots.remove(&(Arc::from("a"), 0)).map(|q| q.2);
        assert_eq!(a, Some(1));
        assert_eq!(outbox.done(), 1);
        outbox.slots.clear();
        assert_eq!(outbox.done(), 3, "everything is out");
    }

    #[test]
    fn an_overflow_resync_stands_for_every_change_it_replaced() {
        let mut outbox = Outbox::default();
        for i in 0..MAX_OUTBOX {
            outbox.queue(Action::Set, &format!("k{i}"), 1);
        }
        let (seq, overflowed) = outbox.queue(Action::Set, "one more", 2);
        assert!(overflowed);
        assert_eq!(seq, MAX_OUTBOX as u64 + 1);
        assert_eq!(outbox.slots.len(), 1);
        assert_eq!(outbox.done(), 0, "the resync stands for change 1 onwards");
    }
}
