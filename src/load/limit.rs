//! The limit on concurrent loads
//! ([`LayeredBuilder::max_concurrent_loads`](crate::LayeredBuilder::max_concurrent_loads)), safe
//! for loads that start loads.
//!
//! A loader that calls `get_or_load` on the same cache (an answer that needs a cached embedding)
//! would deadlock a plain semaphore: once every permit is held by a load waiting for its inner
//! load, the inner loads wait for a permit forever. So a permit covers the loads its loader
//! starts. The loader's task carries the limits whose permits it runs under (a task-local); a
//! load started from that task takes no permit of them; and a load already waiting for a permit
//! goes ahead without one as soon as a caller running under that limit joins it (the caller's
//! permit is idle while it waits on this load). The limit therefore bounds the loads callers
//! start, not the loads their loaders start inside them. A load started from a task the loader
//! spawns itself is a caller's load again.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

tokio::task_local! {
    /// The limits (semaphore addresses) whose permits the current task's loads run under.
    static HOLDING: Held;
}

/// The limits a task runs under, and the loads it runs inside (a loader's task, and the tasks of
/// loads it starts).
#[derive(Clone, Default)]
pub(crate) struct Held {
    limits: Arc<[usize]>,
    /// (cache, key) of each enclosing load: a cache's flight table by address.
    loading: Arc<[(usize, Arc<str>)]>,
}

/// An address that names a limit while it lives.
fn id(limit: &Arc<Semaphore>) -> usize {
    Arc::as_ptr(limit) as usize
}

impl Held {
    /// The limits of the current task (none outside a loader).
    pub(crate) fn current() -> Held {
        HOLDING.try_with(Clone::clone).unwrap_or_default()
    }

    /// Whether a load under `limit` started from here takes no permit.
    pub(crate) fn covers(&self, limit: Option<&Arc<Semaphore>>) -> bool {
        limit.is_some_and(|limit| self.limits.contains(&id(limit)))
    }

    /// Whether this task runs inside the load of `key` by the cache whose flight table is at
    /// `cache`.
    pub(crate) fn is_loading(&self, cache: usize, key: &str) -> bool {
        self.loading.iter().any(|(c, k)| *c == cache && &**k == key)
    }

    fn with(&self, limit: &Arc<Semaphore>) -> Held {
        if self.covers(Some(limit)) {
            return self.clone();
        }
        Held {
            limits: self.limits.iter().copied().chain([id(limit)]).collect(),
            loading: Arc::clone(&self.loading),
        }
    }

    /// These, inside the load of `key` by `cache` too.
    pub(crate) fn loading(&self, cache: usize, key: Arc<str>) -> Held {
        Held {
            limits: Arc::clone(&self.limits),
            loading: self.loading.iter().cloned().chain([(cache, key)]).collect(),
        }
    }

    /// Run `load` (a loader's future) under these limits.
    pub(crate) fn scope<F: Future>(self, load: F) -> impl Future<Output = F::Output> {
        HOLDING.scope(self, load)
    }
}

/// Lets a load that waits for a permit go ahead without one.
pub(crate) struct Waiver(Semaphore);

impl Default for Waiver {
    fn default() -> Self {
        Waiver(Semaphore::new(0))
    }
}

impl Waiver {
    /// A caller running under the limit waits on this load: it need not wait for a permit.
    pub(crate) fn waive(&self) {
        self.0.add_permits(1);
    }

    async fn waived(&self) {
        // Never closed; a waiver's permit is never given back, so one waive is enough for good.
        let _ = self
            .0
            .acquire()
            .await
            .map(tokio::sync::SemaphorePermit::forget);
    }
}

/// Wait for a permit of `limit` (if any), unless `held` covers it or the wait is waived. Returns
/// the permit, if one was taken, and the limits the loader runs under.
pub(crate) async fn admit(
    limit: Option<&Arc<Semaphore>>,
    held: Held,
    waiver: &Waiver,
) -> (Option<OwnedSemaphorePermit>, Held) {
    let Some(limit) = limit else {
        return (None, held);
    };
    if held.covers(Some(limit)) {
        return (None, held);
    }
    let permit = tokio::select! {
        // The semaphore is never closed, so acquiring only fails in theory.
        permit = Arc::clone(limit).acquire_owned() => permit.ok(),
        () = waiver.waived() => None,
    };
    (permit, held.with(limit))
}
