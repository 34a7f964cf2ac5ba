//! Values another deployment wrote: what a rolling deploy leaves in Redis when the value type
//! changed (a renamed or retyped field, another format or schema id).
//!
//! Such a frame is intact but unreadable here, so it is a miss — and not deleted, since the
//! other deployment still reads it. But if the load that follows wrote its value over it, two
//! versions serving side by side would take turns: each overwrites the other's value and
//! announces it, which evicts the other version's L1 copies, whose next read loads and writes
//! again. Measured before this rule: every read of a key both versions served was a load, 40
//! loads for 40 reads (an LLM call each), for as long as the deploy lasted.
//!
//! So a `RedisCache` notes, on each read, whether the key holds another deployment's value
//! written less than [`OTHER_DEPLOYMENT_GRACE`] ago (the frame's creation time), and
//! [`Cache::holds_other_deployment`](crate::Cache::holds_other_deployment) tells a `Layered`,
//! which then keeps what it loaded in its own L1 only: no Redis write, no announcement. The
//! version that wrote first keeps Redis; the other loads each key once per replica instead of
//! once per read. A foreign value older than the grace — written before the deploy started,
//! by a version that has since stopped writing it — is overwritten as before, so after a deploy
//! the new version takes Redis over within the grace. A frame with a bad or missing signature
//! (see `CodecBuilder::signing_key`) is never protected: it was planted, not written by a
//! deployment.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::entry::now_ms;
use crate::error::{DecodeErrorKind, Error};

/// How long a value another deployment wrote is not overwritten by a loaded value: 5 minutes.
///
/// A frame this cache cannot read although it is intact — another format, schema id or value
/// type: a rolling deploy that changed the value type — is a miss. When it was written less
/// than this long ago, a [`Layered`](crate::Layered) cache keeps the value it then loads in its
/// own L1 instead of writing it over the other version's (see
/// [`Cache::holds_other_deployment`](crate::Cache::holds_other_deployment)), so that two versions
/// serving side by side each load a key once instead of taking turns on every read. An older
/// one, written before the deploy by a version that has stopped writing it, is overwritten.
pub const OTHER_DEPLOYMENT_GRACE: Duration = Duration::from_secs(300);

/// Keys noted at most; past it, notes past their time go, and if none has, all of them (a note
/// lost only means one overwrite, as before this rule).
const MAX_NOTES: usize = 10_000;

/// Keys whose last read found a recent value of another deployment: key → until (ms).
#[derive(Default)]
pub(super) struct OtherDeployments {
    notes: Mutex<HashMap<Box<str>, u64>>,
    /// Whether `notes` may hold anything: lets a read of the key's own value (every read, but
    /// mid-deploy) skip the lock.
    any: AtomicBool,
    /// Whether the first such value has been reported (once per cache).
    reported: AtomicBool,
}

impl OtherDeployments {
    /// After a read of `key`: `foreign` holds the frame it found when it could not be decoded
    /// here (with why), `None` when the read found the key's own value or nothing.
    pub(super) fn read(&self, cache: &str, key: &str, foreign: Option<(&Error, &[u8])>) {
        let until = foreign.and_then(|(error, bytes)| {
            let deployed = matches!(error, Error::Decode { kind, .. }
                if kind.is_foreign() && !matches!(**kind, DecodeErrorKind::BadSignature));
            let created_ms = crate::codec::frame_created_us(bytes)? / 1_000;
            let until = created_ms.saturating_add(OTHER_DEPLOYMENT_GRACE.as_millis() as u64);
            (deployed && until > now_ms()).then_some(until)
        });
        if until.is_none() && !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut notes = self.notes.lock().unwrap_or_else(PoisonError::into_inner);
        match until {
            Some(until) => {
                #[cfg(not(feature = "tracing"))]
                let _ = cache;
                if !self.reported.swap(true, Ordering::Relaxed) {
                    crate::log_info!(
                        cache,
                        reason = %foreign.map(|(e, _)| e.to_string()).unwrap_or_default(),
                        "layercache: Redis holds values another deployment wrote recently (another value type, format or schema: a rolling deploy?); values loaded for them stay in this replica's memory instead of overwriting them (reported once per cache)"
                    );
                }
                if notes.len() >= MAX_NOTES {
                    let now = now_ms();
                    notes.retain(|_, until| *until > now);
                    if notes.len() >= MAX_NOTES {
                        notes.clear();
                    }
                }
                notes.insert(key.into(), until);
            }
            None => {
                notes.remove(key);
            }
        }
        self.any.store(!notes.is_empty(), Ordering::Release);
    }

    /// Whether the last read of `key` found another deployment's value, still within the grace.
    pub(super) fn holds(&self, key: &str) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let notes = self.notes.lock().unwrap_or_else(PoisonError::into_inner);
        notes.get(key).is_some_and(|until| *until > now_ms())
    }
}
