//! [`Layered::flush`]: finishing the background work before the process exits.

use std::time::Duration;

use super::Layered;
use crate::error::{Error, Result};

/// How often `flush` looks whether the loads it waits for are done.
const POLL: Duration = Duration::from_millis(1);

impl<V> Layered<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// Wait until the work this cache still does in the background is done, for at most
    /// `timeout`: loads that outlived their callers (a caller that left, a soft or hard timeout,
    /// an early refresh) and their writes to L2, changes whose callers stopped waiting, and,
    /// with a backplane, the announcements of its loaded values. Call it when shutting down, after the server stopped taking requests
    /// and before the process exits: a load already paid for (an LLM call) then reaches Redis
    /// instead of being lost with the process.
    ///
    /// The writes kept for L2 because it failed them ([`pending_l2_writes`](Self::pending_l2_writes):
    /// a Redis blip, a failover) are tried once more, so those a blip failed reach Redis before
    /// the process exits. What cannot be done now is not waited for: those writes while Redis
    /// cannot be reached (or its circuit is open) — `pending_l2_writes()` afterwards tells how
    /// many would be lost — and announcements that cannot be published (only L1 evictions: a
    /// replica that cannot hear the fleet does not trust its L1 anyway).
    /// A change (`set`, `delete`, `invalidate_tag`…) whose caller waited needs no flush unless
    /// L2 failed it: it returned once it was in L2 and announced.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when work is still running after `timeout`; it goes on in the
    /// background (and is lost if the process exits).
    ///
    /// ```no_run
    /// # async fn demo(cache: layercache::Layered<String>) -> layercache::Result<()> {
    /// use std::time::Duration;
    ///
    /// // … the server has stopped (axum's `with_graceful_shutdown` returned):
    /// cache.flush(Duration::from_secs(10)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        let work = async {
            let changes = &self.inner.changes_running;
            while self.inner.flights.len() > 0
                || changes.load(std::sync::atomic::Ordering::SeqCst) > 0
            {
                tokio::time::sleep(POLL).await;
            }
            if self.pending_l2_writes() > 0 {
                // One more pass (after one already running): what a blip failed reaches L2;
                // during an outage it stays kept, and is not waited for.
                while self
                    .inner
                    .flushing
                    .load(std::sync::atomic::Ordering::SeqCst)
                {
                    tokio::time::sleep(POLL).await;
                }
                // On a task of its own: past the timeout, the pass goes on in the background
                // rather than stopping half-way.
                let inner = std::sync::Arc::clone(&self.inner);
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => {
                        let _ = runtime
                            .spawn(async move { inner.try_catch_up().await })
                            .await;
                    }
                    Err(_) => inner.try_catch_up().await,
                }
            }
            #[cfg(feature = "redis")]
            if let Some(backplane) = &self.inner.backplane {
                backplane.flushed().await;
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| Error::Timeout { after: timeout })
    }
}
