//! Changes whose fate in L2 is unknown: a write or delete that failed without an answer (a
//! timeout, a connection lost after the command was sent) may still reach Redis later — a slow
//! link, a stalled server. Landing after this replica announced the change, it changes what
//! Redis holds after the other replicas (and this one) read it again: they would serve the value
//! they read in between for its whole lifetime.
//!
//! So each such key is noted, and re-read twice: [`FIRST_REREAD_MS`] after the failure (a write
//! that missed its command timeout on a slow link has landed by then), and again
//! [`LAST_REREAD_MS`] after it (past the default unresponsive time, after which the watchdog
//! replaces a connection that does not answer, dropping what it had not delivered). A re-read
//! drops this replica's L1 copy of the key and announces the key to the fleet (with a
//! backplane), whose replicas drop theirs; writes still waiting for the catch-up stay, here and
//! there. A change that landed later still than that is not re-read.
//!
//! An `invalidate_prefix` that failed so is re-read the same way, by prefix: this replica drops
//! its L1 entries under the prefix, and the fleet is told to resync (the other replicas cannot
//! be told a prefix without also forgetting their own writes under it that wait for the
//! catch-up; a resync drops their whole L1 but keeps those).
//!
//! An error that Redis answered (`OOM`, `READONLY`) or a refusal of the codec is an answer: the
//! change did not happen, and nothing is noted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::l2::MAX_PENDING;
use super::Inner;
use crate::entry::now_ms;
use crate::error::Error;

/// The first re-read of a key whose change failed without an answer, this long (ms) after.
pub(super) const FIRST_REREAD_MS: u64 = 500;
/// The last re-read, this long (ms) after the failure.
pub(super) const LAST_REREAD_MS: u64 = 3_000;
/// The most prefixes kept for a re-read; beyond it, everything is re-read.
const MAX_PREFIXES: usize = 64;

/// The keys to re-read (see the module docs), bounded by `l2::MAX_PENDING`; beyond it, the
/// whole of L1 is re-read instead (every replica drops its L1, writes waiting for the catch-up
/// apart).
#[derive(Default)]
pub(crate) struct Unsettled {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    keys: HashMap<Arc<str>, Due>,
    prefixes: HashMap<Box<str>, Due>,
    /// Set when more keys failed than are kept: everything is re-read.
    all: Option<Due>,
}

/// When a key (or everything) failed, and whether its first re-read is done.
#[derive(Clone, Copy)]
struct Due {
    failed_ms: u64,
    first_done: bool,
}

impl Due {
    fn new(now_ms: u64) -> Due {
        Due {
            failed_ms: now_ms,
            first_done: false,
        }
    }

    /// Whether a re-read is due at `now_ms`; if so, moves on to the next one (`false`: none
    /// left after this one).
    fn take(&mut self, now_ms: u64) -> Option<bool> {
        let wait = if self.first_done {
            LAST_REREAD_MS
        } else {
            FIRST_REREAD_MS
        };
        if now_ms < self.failed_ms.saturating_add(wait) {
            return None;
        }
        let more = !self.first_done;
        self.first_done = true;
        Some(more)
    }
}

/// What is due for a re-read now.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Rereads {
    pub(crate) keys: Vec<Arc<str>>,
    pub(crate) prefixes: Vec<Box<str>>,
    pub(crate) all: bool,
}

impl Unsettled {
    /// Note that a change of `key` failed at `now_ms` without an answer (again: its re-reads
    /// start over).
    pub(crate) fn note(&self, key: &str, now_ms: u64) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let State { keys, all, .. } = &mut *state;
        note_in(keys, MAX_PENDING, all, key, now_ms);
    }

    /// Note that an invalidation of the keys under `prefix` failed at `now_ms` without an
    /// answer.
    pub(crate) fn note_prefix(&self, prefix: &str, now_ms: u64) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let State { prefixes, all, .. } = &mut *state;
        note_in(prefixes, MAX_PREFIXES, all, prefix, now_ms);
    }

    pub(crate) fn is_empty(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.keys.is_empty() && state.prefixes.is_empty() && state.all.is_none()
    }

    /// The re-reads due at `now_ms`, each moved on to its next one or forgotten.
    pub(crate) fn take_due(&self, now_ms: u64) -> Rereads {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut due = Rereads::default();
        take_due_in(&mut state.keys, now_ms, &mut due.keys);
        take_due_in(&mut state.prefixes, now_ms, &mut due.prefixes);
        if let Some(when) = &mut state.all {
            if let Some(more) = when.take(now_ms) {
                due.all = true;
                if !more {
                    state.all = None;
                }
            }
        }
        due
    }
}

/// Note `name` as failed at `now_ms` in `map` (again: its re-reads start over); past `bound`
/// names, everything is re-read instead.
fn note_in<K>(
    map: &mut HashMap<K, Due>,
    bound: usize,
    all: &mut Option<Due>,
    name: &str,
    now_ms: u64,
) where
    K: std::borrow::Borrow<str> + std::hash::Hash + Eq + for<'a> From<&'a str>,
{
    if let Some(due) = map.get_mut(name) {
        *due = Due::new(now_ms);
    } else if map.len() < bound {
        map.insert(K::from(name), Due::new(now_ms));
    } else {
        *all = Some(Due::new(now_ms));
    }
}

/// Move the names of `map` due at `now_ms` to `due`, each moved on to its next re-read or
/// forgotten.
fn take_due_in<K: Clone>(map: &mut HashMap<K, Due>, now_ms: u64, due: &mut Vec<K>) {
    map.retain(|name, when| match when.take(now_ms) {
        None => true,
        Some(more) => {
            due.push(name.clone());
            more
        }
    });
}

/// Whether L2 may have carried out a change that failed with `error`: anything but an answer of
/// the server or a refusal of the codec.
pub(crate) fn may_land_later(error: &Error) -> bool {
    !error.is_refusal() && !error.is_server_reply()
}

impl<V> Inner<V>
where
    V: Clone + Send + Sync + 'static,
{
    /// A change of `keys` failed in L2 with `error`: if it may still land there, re-read the
    /// keys later (see the module docs).
    pub(crate) fn unsettled_after(self: &Arc<Self>, error: &Error, keys: &[&str]) {
        if !may_land_later(error) || keys.is_empty() {
            return;
        }
        let now = now_ms();
        for key in keys {
            self.unsettled.note(key, now);
        }
        self.catch_up_later();
    }

    /// An invalidation of the keys under `prefix` failed in L2 with `error`: if it may still
    /// land there, re-read them later (see the module docs).
    pub(crate) fn unsettled_prefix_after(self: &Arc<Self>, error: &Error, prefix: &str) {
        if !may_land_later(error) {
            return;
        }
        self.unsettled.note_prefix(prefix, now_ms());
        self.catch_up_later();
    }

    /// Re-read the keys whose time has come: drop their L1 copies (not writes waiting for the
    /// catch-up) and tell the fleet to drop theirs.
    pub(super) async fn reread_unsettled(&self) {
        let due = self.unsettled.take_due(now_ms());
        if due.all {
            self.changing_all_here();
            match &self.l1_memory {
                Some(memory) => memory.retain(|key, _| self.is_pending(key)),
                None => {
                    // Another kind of L1 cannot be walked: each key still noted is re-read below.
                }
            }
        }
        for prefix in &due.prefixes {
            self.changing_all_here();
            match &self.l1_memory {
                Some(memory) => {
                    memory.retain(|key, _| !key.starts_with(&**prefix) || self.is_pending(key));
                }
                None => {
                    let _ = self.l1_done(self.l1.invalidate_prefix(prefix).await);
                }
            }
        }
        // The fleet drops its L1, writes waiting for the catch-up apart (see the module docs).
        #[cfg(feature = "redis")]
        if due.all || !due.prefixes.is_empty() {
            if let Some(backplane) = &self.backplane {
                let _ = backplane.announce(crate::fleet::backplane::Action::Resync, "");
            }
        }
        for key in &due.keys {
            self.changing_here(key);
            match &self.l1_memory {
                // Judged in one step with the pending set: a write remembering itself meanwhile
                // stays.
                Some(memory) => memory.remove_unless(key, |_| self.is_pending(key)),
                None => {
                    if !self.is_pending(key) {
                        self.l1_done(self.l1.delete(key).await);
                    }
                }
            }
            self.tell_reread(key);
        }
    }

    /// Tell the other replicas (with a backplane) to drop their L1 copies of `key` and read it
    /// again from L2. The message carries time 0: they forget no write of their own waiting for
    /// the catch-up.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) fn tell_reread(&self, key: &str) {
        #[cfg(feature = "redis")]
        if let Some(backplane) = &self.backplane {
            let _ = backplane.announce_at(crate::fleet::backplane::Action::Set, key, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_reread_twice_then_forgotten() {
        let unsettled = Unsettled::default();
        unsettled.note("k", 1_000);
        assert_eq!(
            unsettled.take_due(1_000 + FIRST_REREAD_MS - 1),
            Rereads::default()
        );
        let first = unsettled.take_due(1_000 + FIRST_REREAD_MS);
        assert_eq!(first.keys, vec![Arc::<str>::from("k")]);
        assert!(!unsettled.is_empty());
        assert!(unsettled
            .take_due(1_000 + LAST_REREAD_MS - 1)
            .keys
            .is_empty());
        let last = unsettled.take_due(1_000 + LAST_REREAD_MS);
        assert_eq!(last.keys, vec![Arc::<str>::from("k")]);
        assert!(unsettled.is_empty());
    }

    #[test]
    fn a_key_that_fails_again_starts_over() {
        let unsettled = Unsettled::default();
        unsettled.note("k", 1_000);
        assert_eq!(unsettled.take_due(1_000 + FIRST_REREAD_MS).keys.len(), 1);
        unsettled.note("k", 2_000);
        assert!(unsettled.take_due(1_000 + LAST_REREAD_MS).keys.len() == 1);
        // The second failure's own last re-read is still to come.
        assert!(!unsettled.is_empty());
        assert_eq!(unsettled.take_due(2_000 + LAST_REREAD_MS).keys.len(), 1);
        assert!(unsettled.is_empty());
    }

    #[test]
    fn beyond_the_bound_everything_is_reread() {
        let unsettled = Unsettled::default();
        for i in 0..=MAX_PENDING {
            unsettled.note(&format!("k{i}"), 0);
        }
        let first = unsettled.take_due(FIRST_REREAD_MS);
        assert!(first.all);
        assert_eq!(first.keys.len(), MAX_PENDING);
        let last = unsettled.take_due(LAST_REREAD_MS);
        assert!(last.all);
        assert!(unsettled.is_empty());
    }

    #[test]
    fn a_prefix_is_reread_twice_and_too_many_reread_everything() {
        let unsettled = Unsettled::default();
        unsettled.note_prefix("user:", 1_000);
        let first = unsettled.take_due(1_000 + FIRST_REREAD_MS);
        assert_eq!(first.prefixes, vec![Box::<str>::from("user:")]);
        assert!(!first.all && first.keys.is_empty());
        let last = unsettled.take_due(1_000 + LAST_REREAD_MS);
        assert_eq!(last.prefixes.len(), 1);
        assert!(unsettled.is_empty());
        for i in 0..=MAX_PREFIXES {
            unsettled.note_prefix(&format!("p{i}:"), 0);
        }
        let due = unsettled.take_due(FIRST_REREAD_MS);
        assert!(due.all);
        assert_eq!(due.prefixes.len(), MAX_PREFIXES);
    }

    #[test]
    fn answers_of_the_server_and_refusals_do_not_land_later() {
        assert!(!may_land_later(&Error::ValueTooLarge { len: 10, max: 1 }));
        assert!(may_land_later(&Error::Timeout {
            after: std::time::Duration::from_millis(250)
        }));
    }
}
