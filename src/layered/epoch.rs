//! Counters of the changes that take keys out of L1, so that a value read from L2 before a
//! change cannot be copied into L1 after it.
//!
//! A copy from L2 into L1 reads the key's counter before the L2 read, and again once it has
//! stored the value; if the counter moved, it takes the value out again. A change bumps the
//! counter after its L2 part is done and before its L1 part. So either the copy's second reading
//! comes before the bump — then its value was stored before the change's L1 part, which takes it
//! out — or it sees the bump and undoes itself. (A copy whose first reading comes after the bump
//! read L2 after the change reached it.)
//!
//! Keys share counters by a hash of the key ([`STRIPES`] of them), plus one counter that changes
//! affecting many keys bump (a resync, `clear`, `invalidate_prefix`): a change of one key undoes
//! only the copies of keys that share its counter, not every copy then on its way.

use std::sync::atomic::{AtomicU64, Ordering};

/// How many counters the keys share.
const STRIPES: usize = 256;

/// The counters (see the module docs).
pub(crate) struct Epochs {
    /// Bumped by changes that affect any number of keys.
    all: AtomicU64,
    /// Bumped by a change of one key: the counter its hash picks.
    keys: Box<[AtomicU64]>,
}

impl Epochs {
    pub(crate) fn new() -> Epochs {
        Epochs {
            all: AtomicU64::new(0),
            keys: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The reading for `key`: it moves whenever a change of `key`, or of all keys, bumps.
    #[inline]
    pub(crate) fn of(&self, key: &str) -> u64 {
        // Both only grow, so their sum moves exactly when one of them does.
        self.all
            .load(Ordering::SeqCst)
            .wrapping_add(self.stripe(key).load(Ordering::SeqCst))
    }

    /// A change of `key` is about to reach L1.
    #[inline]
    pub(crate) fn bump(&self, key: &str) {
        self.stripe(key).fetch_add(1, Ordering::SeqCst);
    }

    /// A change of any number of keys is about to reach L1.
    #[inline]
    pub(crate) fn bump_all(&self) {
        self.all.fetch_add(1, Ordering::SeqCst);
    }

    fn stripe(&self, key: &str) -> &AtomicU64 {
        &self.keys[stripe_of(key.as_bytes())]
    }
}

/// The counter `key` uses: a multiply-and-rotate hash over 8 bytes at a time (a 64-byte key,
/// as `KeyBuilder::request` makes, is 8 steps), the same in every run.
fn stripe_of(key: &[u8]) -> usize {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut hash = key.len() as u64;
    for chunk in key.chunks(8) {
        let mut word = [0_u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        hash = (hash ^ u64::from_le_bytes(word))
            .wrapping_mul(K)
            .rotate_left(29);
    }
    (hash.wrapping_mul(K) >> 56) as usize % STRIPES
}

impl std::fmt::Debug for Epochs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Epochs")
            .field("all", &self.all.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::Epochs;

    #[test]
    fn a_key_s_reading_moves_with_its_own_changes_and_with_changes_of_all_keys() {
        let epochs = Epochs::new();
        // Two keys on different counters (the hash is fixed, so this holds in every run).
        let (a, b) = ("a", "b");
        assert!(!std::ptr::eq(epochs.stripe(a), epochs.stripe(b)));
        let (a0, b0) = (epochs.of(a), epochs.of(b));
        epochs.bump(a);
        assert_ne!(epochs.of(a), a0);
        assert_eq!(epochs.of(b), b0, "another key's change leaves b's reading");
        let b1 = epochs.of(b);
        epochs.bump_all();
        assert_ne!(epochs.of(b), b1);
    }

    #[test]
    fn keys_spread_over_the_counters() {
        let epochs = Epochs::new();
        let mut used = std::collections::HashSet::new();
        for i in 0..4096 {
            used.insert(epochs.stripe(&format!("chat:v1:{i:064x}")) as *const _ as usize);
        }
        assert!(
            used.len() > super::STRIPES * 9 / 10,
            "{} counters",
            used.len()
        );
    }
}
