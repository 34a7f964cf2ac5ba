//! What a [`Layered`](super::Layered) tells the other replicas of its changes, through its
//! backplane (nothing without one): the announcements, and waiting until one is published.

use super::Inner;

/// What a change made to a key, for [`Inner::announce_change`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Set,
    Delete,
    Expire,
}

/// A change this replica announced to the fleet (nothing without a backplane), to wait for
/// with `Inner::told` before the change returns.
#[derive(Debug, Clone, Copy, Default)]
#[must_use]
pub(crate) struct Announced(#[cfg(feature = "redis")] Option<crate::fleet::Ticket>);

impl Announced {
    /// Both announcements: waiting for it waits for the later one.
    pub(crate) fn and(self, other: Announced) -> Announced {
        #[cfg(feature = "redis")]
        return Announced(match (self.0, other.0) {
            (Some(a), Some(b)) => Some(a.later(b)),
            (a, b) => a.or(b),
        });
        #[cfg(not(feature = "redis"))]
        {
            let _ = other;
            self
        }
    }
}

#[cfg(feature = "redis")]
impl From<crate::fleet::Ticket> for Announced {
    fn from(ticket: crate::fleet::Ticket) -> Self {
        Announced(Some(ticket))
    }
}

impl<V> Inner<V> {
    /// Tell the other replicas that `key` changed (with a backplane).
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) fn announce_set(&self, key: &str) -> Announced {
        #[cfg(feature = "redis")]
        if let Some(backplane) = &self.backplane {
            return Announced::from(backplane.announce(crate::fleet::backplane::Action::Set, key));
        }
        Announced::default()
    }

    /// Wake the replicas (and flights of this process) waiting for `key`'s lease, without
    /// announcing a change of it (with a backplane).
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) fn announce_released(&self, key: &str) -> Announced {
        #[cfg(feature = "redis")]
        if let Some(backplane) = &self.backplane {
            return Announced::from(
                backplane.announce(crate::fleet::backplane::Action::Released, key),
            );
        }
        Announced::default()
    }

    /// Tell the other replicas that this replica changed `key` — set it, or deleted or expired
    /// it — (with a backplane), once the outbox has room: a change waits while it is half full
    /// and publishing goes through, so that thousands of concurrent changes cannot overflow it
    /// into a resync that drops every other replica's L1.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) async fn announce_change(&self, key: &str, change: Change) -> Announced {
        #[cfg(feature = "redis")]
        if let Some(backplane) = &self.backplane {
            use crate::fleet::backplane::Action;
            let action = match change {
                Change::Set => Action::Set,
                Change::Delete => Action::Delete,
                Change::Expire => Action::Expire,
            };
            return Announced::from(backplane.announce_paced(action, key).await);
        }
        Announced::default()
    }

    /// Wait until the other replicas have been told of this replica's change (its announcement
    /// is published), at most [`fleet::ANNOUNCE_WAIT`](crate::fleet::ANNOUNCE_WAIT): a change
    /// that returned is not lost when the process exits right after it.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) async fn told(&self, announced: Announced) {
        #[cfg(feature = "redis")]
        if let (Some(backplane), Some(ticket)) = (&self.backplane, announced.0) {
            backplane.published(ticket).await;
        }
    }
}
