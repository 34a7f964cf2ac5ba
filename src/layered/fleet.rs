//! The fleet lease step of a [`Layered`](super::Layered) flight (feature `redis`): see
//! [`crate::fleet`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Inner;
use crate::entry::{now_ms, Entry};
use crate::fleet::{Attempt, Held, WaitOutcome, MAX_LEASE_WAIT};
use crate::load::{FleetLease, L2Read, LeaseGuard};

/// How long after a lease's expiry a waiter looks again (clock and delivery slack).
const EXPIRY_SLACK: Duration = Duration::from_millis(20);

impl LeaseGuard for Held {
    fn stored(&mut self) {
        Held::stored(self);
    }
}

impl<V> Inner<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// Win the lease on `key` (then load here), or wait for the replica that holds it and serve
    /// its value from L2. Loads here whenever the backplane or Redis cannot help.
    pub(crate) async fn fleet_lease(
        self: &Arc<Self>,
        key: &str,
        fresher_than_ms: u64,
    ) -> FleetLease<V> {
        let Some(backplane) = &self.backplane else {
            return FleetLease::Load(None);
        };
        // A replica that cannot hear the fleet would not be woken: it loads on its own.
        if !backplane.is_subscribed() {
            backplane.count_wait(WaitOutcome::Bypassed);
            return FleetLease::Load(None);
        }
        // L2 holds another deployment's recent value (a rolling deploy that changed the value
        // type): the value loaded here stays in this L1, so no replica could be served by
        // waiting for another's load — queueing for the lease would only make this version's
        // replicas load one after the other.
        if self.holds_other_deployment(key) {
            return FleetLease::Load(None);
        }
        let answers = |e: &Entry<V>| e.is_fresh() && e.fresh_until_ms() > fresher_than_ms;
        let deadline = Instant::now() + MAX_LEASE_WAIT;
        // Listen before trying, so a value announced in between is not missed.
        let mut watch = backplane.watch(key);
        let mut waited = false;
        loop {
            match backplane.try_lease(key, self.lease_ttl).await {
                Attempt::Unavailable => {
                    backplane.count_wait(if waited {
                        WaitOutcome::TimedOut
                    } else {
                        WaitOutcome::Bypassed
                    });
                    return FleetLease::Load(None);
                }
                Attempt::Won(mut held) => {
                    if waited {
                        backplane.count_wait(WaitOutcome::HolderLost);
                    }
                    // Another replica may have stored the value just before this one won.
                    let epoch = self.epoch(key);
                    if let L2Read::Found(entry) = self.read_l2_state(key).await {
                        if answers(&entry) {
                            held.stored();
                            self.backfill(key, entry.clone(), epoch).await;
                            return FleetLease::Found(entry);
                        }
                    }
                    return FleetLease::Load(Some(Box::new(held)));
                }
                Attempt::Busy(remaining) => {
                    let now = Instant::now();
                    if now >= deadline {
                        backplane.count_wait(WaitOutcome::TimedOut);
                        return FleetLease::Load(None);
                    }
                    waited = true;
                    // Woken by the holder's message; past the lease's expiry, look again.
                    watch
                        .changed_within((remaining + EXPIRY_SLACK).min(deadline - now))
                        .await;
                    let epoch = self.epoch(key);
                    match self.read_l2_state(key).await {
                        L2Read::Found(entry) if answers(&entry) => {
                            backplane.count_wait(WaitOutcome::Served);
                            self.backfill(key, entry.clone(), epoch).await;
                            return FleetLease::Found(entry);
                        }
                        L2Read::Unavailable => {
                            backplane.count_wait(WaitOutcome::TimedOut);
                            return FleetLease::Load(None);
                        }
                        // The holder was of another deployment, or kept its value in its L1.
                        _ if self.holds_other_deployment(key) => {
                            backplane.count_wait(WaitOutcome::TimedOut);
                            return FleetLease::Load(None);
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

impl<V> Inner<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// After a resync that kept the L1 entries of `keys` (writes still to be copied to L2),
    /// expire each one that a `clear` or tag invalidation made after its creation: the
    /// replica may have missed that invalidation's message, and an untagged L1 hit does not
    /// look at the clear time. The times are read from Redis (they were just forgotten); keys
    /// whose times cannot be read now are tried again every
    /// [`CATCH_UP_EVERY`](super::l2::CATCH_UP_EVERY) until they can be, or their entry is gone.
    /// One task per resync, holding the cache weakly.
    pub(super) fn recheck_kept(self: &Arc<Self>, keys: Vec<Arc<str>>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut keys = keys;
            loop {
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                keys = inner.recheck_pass(keys).await;
                if keys.is_empty() {
                    return;
                }
                drop(inner);
                tokio::time::sleep(super::l2::CATCH_UP_EVERY).await;
            }
        });
    }

    /// One pass of [`recheck_kept`](Self::recheck_kept): the keys left to judge.
    async fn recheck_pass(&self, keys: Vec<Arc<str>>) -> Vec<Arc<str>> {
        use crate::tags::Check;
        let Some(memory) = &self.l1_memory else {
            return Vec::new();
        };
        let mut left = Vec::new();
        for key in keys {
            let now = now_ms();
            let Some(entry) = memory.peek_at(&key, now).filter(|e| e.is_fresh_at(now)) else {
                continue;
            };
            let created = entry.created_us();
            match self.check_with_clear(&entry).await {
                Check::Valid => {}
                Check::Invalidated(_) => {
                    // Only the entry judged: a newer write of the key since is left alone.
                    self.changing_here(&key);
                    memory.expire_unless(&key, now_ms(), |e| e.created_us() != created);
                }
                Check::Unknown => left.push(key),
            }
        }
        left
    }
}

/// The time an eviction or expiry event carries.
fn event_us(
    event: &Result<crate::fleet::backplane::Event, tokio::sync::broadcast::error::RecvError>,
) -> u64 {
    use crate::fleet::backplane::Event;
    match event {
        Ok(Event::Evict(_, us)) | Ok(Event::Expire(_, us)) => *us,
        _ => 0,
    }
}

/// Apply the backplane's events to L1 until the cache is dropped.
pub(super) async fn apply_events<V>(inner: std::sync::Weak<Inner<V>>)
where
    V: Clone + Send + Sync + 'static,
{
    use crate::fleet::backplane::Event;
    use tokio::sync::broadcast::error::RecvError;
    let mut events = match inner
        .upgrade()
        .and_then(|i| i.backplane.as_ref().map(|b| b.events()))
    {
        Some(events) => events,
        None => return,
    };
    loop {
        let event = events.recv().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let Some(memory) = &inner.l1_memory else {
            return;
        };
        // Before the eviction itself: see `Inner::backfill`.
        match &event {
            Ok(Event::Evict(key, _)) | Ok(Event::Expire(key, _)) => inner.changing_here(key),
            _ => inner.changing_all_here(),
        }
        // Another replica changed the key: a load of it running here read the old source.
        match &event {
            Ok(Event::Evict(key, _)) | Ok(Event::Expire(key, _)) => inner.flights.supersede(key),
            Ok(Event::Prefix(prefix, _)) => inner.flights.supersede_prefix(prefix),
            // A loaded entry is created when its load started, and a memory L1 hit does not
            // look at the clear time: a load that spans a `clear` must not store its value
            // after the clear emptied L1.
            Ok(Event::Clear(_)) => inner.flights.supersede_prefix(""),
            _ => {}
        }
        match event {
            // A write of ours still waiting for the catch-up and newer than the change
            // announced stays (the catch-up compares with L2 again); anything else goes.
            Ok(Event::Evict(key, _)) | Ok(Event::Expire(key, _))
                if inner.pending_newer_than(&key, event_us(&event)) => {}
            // The write may remember itself (and store its L1 entry) while the event is applied:
            // the pending set and L1 are each judged and changed in one step, and a write newer
            // than the change survives both.
            Ok(Event::Evict(key, us)) => {
                inner.forget_pending_unless_newer(&key, us);
                memory.remove_unless(&key, |entry| {
                    entry.created_us() > us && inner.pending_newer_than(&key, us)
                });
            }
            Ok(Event::Expire(key, us)) => {
                inner.forget_pending_unless_newer(&key, us);
                memory.expire_unless(&key, now_ms(), |entry| {
                    entry.created_us() > us && inner.pending_newer_than(&key, us)
                });
            }
            Ok(Event::ClearAll) | Err(RecvError::Lagged(_)) => {
                if let (Err(RecvError::Lagged(lost)), Some(backplane)) = (&event, &inner.backplane)
                {
                    // This cache fell behind the backplane's events (the backplane itself did not).
                    backplane.shared.fell_behind(*lost);
                }
                // Writes still to be copied to L2 are this replica's own: kept for the catch-up
                // (which drops them if L2 holds something newer). Without any, L1 is dropped at
                // once rather than walked (a write that fails to reach L2 in the instant between
                // the check and the drop loses its L1 copy; it is then not copied to L2).
                if inner.pending_is_empty() {
                    memory.invalidate_all();
                    inner.tag_times.forget();
                } else {
                    memory.retain(|key, _| inner.is_pending(key));
                    inner.tag_times.forget();
                    // A `clear` or tag invalidation this replica missed may postdate them: each
                    // is checked against the times read afresh from Redis.
                    inner.recheck_kept(inner.pending_keys());
                }
            }
            Ok(Event::Tag(tag, ms)) => inner.tag_times.set(&tag, ms),
            Ok(Event::Prefix(prefix, us)) => {
                inner.forget_pending_prefix(&prefix);
                memory.remove_prefix(&prefix);
                // Loads of this replica that read before the removal and wrote to L2 after it
                // had passed: taken back from L2 (see `recent`).
                inner.undo_loads_under(&prefix, us);
            }
            Ok(Event::Clear(ms)) => {
                inner.forget_all_pending();
                inner.tag_times.set(crate::tags::CLEAR, ms);
                memory.invalidate_all();
            }
            Err(RecvError::Closed) => return,
        }
    }
}
