//! Tag invalidation times in Redis (see [`crate::tags`]): one small key per invalidated tag,
//! `layercache:tag:v1:{<namespace>}:<tag>` (`{:}` for no namespace), holding the time in µs
//! since the Unix epoch. The braces put every tag key of a namespace in one cluster slot, so the
//! times of an entry's tags are read with one `MGET`.
//!
//! A tag's time is kept as long as an entry it could invalidate may be left — tagged entries live
//! at most the cache's tag retention after they were created — plus a margin for clock
//! differences, and then deleted. The keys carry no expiry of their own: a Redis evicting under
//! a `volatile-*` policy must never drop one while the entries it invalidated are still there
//! (they would be served as fresh again). Instead each invalidation records its tag in a sorted
//! set by time (`layercache:tags:v1:{<namespace>}`) and then deletes up to [`SWEEP_BATCH`] tag
//! times past their retention (a second script, which keeps a tag invalidated again meanwhile):
//! more than it adds, so the times kept stay bounded by the invalidations made within the
//! retention. The clear time is kept for good (it concerns untagged entries too, whose
//! lifetimes have no bound; it is one key). Scripts touch only the keys they are given (Redis
//! Cluster, Dragonfly).

use fred::interfaces::{KeysInterface, LuaInterface};
use fred::prelude::ClientLike;

use crate::redis::cluster::follow_on;

use super::backplane::{Action, Backplane};
use crate::tags::CLEAR;

/// Tag times past their retention deleted by one invalidation, at most.
const SWEEP_BATCH: usize = 100;

/// Keep the later of the stored time and ours (replicas' clocks differ a little). With a
/// retention (ARGV[2], ms), also record the tag in the index (KEYS[2]) at our time, and return
/// up to ARGV[3] tag keys recorded more than the retention before it. Only declared keys are
/// touched (Redis Cluster, Dragonfly).
const STORE_LATER: &str = "local t = tonumber(redis.call('GET', KEYS[1]) or '0') \
     local us = tonumber(ARGV[1]) \
     if us > t then redis.call('SET', KEYS[1], ARGV[1]) end \
     if not ARGV[2] then return {} end \
     local now = math.floor(us / 1000) \
     local seen = tonumber(redis.call('ZSCORE', KEYS[2], KEYS[1]) or '0') \
     if now > seen then redis.call('ZADD', KEYS[2], now, KEYS[1]) end \
     return redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]), \
       'LIMIT', 0, tonumber(ARGV[3]))";

/// Delete the tag keys KEYS[1..n-1] whose time is at most ARGV[1] (µs), and their entries in the
/// index KEYS[n]; a tag invalidated again meanwhile (a later time) stays.
const SWEEP: &str = "local index = KEYS[#KEYS] \
     for i = 1, #KEYS - 1 do \
       local t = tonumber(redis.call('GET', KEYS[i]) or '0') \
       if t <= tonumber(ARGV[1]) then redis.call('DEL', KEYS[i]) redis.call('ZREM', index, KEYS[i]) end \
     end return 1";

impl Backplane {
    fn tag_key(&self, tag: &str) -> String {
        format!("layercache:tag:v1:{{{}}}:{tag}", self.slot_tag())
    }

    /// The sorted set of this namespace's tag keys by invalidation time (ms).
    fn tag_index_key(&self) -> String {
        format!("layercache:tags:v1:{{{}}}", self.slot_tag())
    }

    /// What goes between the braces of the namespace's tag keys, so that they share one cluster
    /// slot: the namespace, or `:` for none (an empty `{}` would hash each whole key apart; no
    /// namespace is `:`, as a trailing `:` is not part of one).
    fn slot_tag(&self) -> &str {
        match self.shared.namespace.as_str() {
            "" => ":",
            namespace => namespace,
        }
    }

    /// Store that `tag` (or, for [`CLEAR`], everything) was invalidated at `us`, to be kept
    /// `keep_ms` (for good with `None`), and announce it to the fleet: one script call and one
    /// message, however many entries carry the tag. The ticket is the announcement's.
    pub(crate) async fn invalidate_tag(
        &self,
        tag: &str,
        us: u64,
        keep_ms: Option<u64>,
    ) -> Result<super::Ticket, fred::error::Error> {
        let (client, keys) = (
            &self.shared.publisher,
            vec![self.tag_key(tag), self.tag_index_key()],
        );
        let mut args = vec![us.to_string()];
        if let Some(keep_ms) = keep_ms {
            args.push(keep_ms.min(1 << 52).to_string());
            args.push(SWEEP_BATCH.to_string());
        }
        let old: Vec<String> = follow_on(client, |o| {
            let (c, keys, args) = (client.with_options(o), keys.clone(), args.clone());
            async move { c.eval(STORE_LATER, keys, args).await }
        })
        .await
        .inspect_err(|e| self.shared.publisher_failed(e))?;
        if let (false, Some(keep_ms)) = (old.is_empty(), keep_ms) {
            // Best effort: what is left is swept by a later invalidation.
            let cutoff_us = (us / 1_000).saturating_sub(keep_ms).saturating_mul(1_000);
            let mut keys = old;
            keys.push(self.tag_index_key());
            let _: Result<i64, _> = follow_on(client, |o| {
                let (c, keys) = (client.with_options(o), keys.clone());
                async move { c.eval(SWEEP, keys, cutoff_us.to_string()).await }
            })
            .await;
        }
        Ok(self.announce_at(
            if tag == CLEAR {
                Action::Clear
            } else {
                Action::Tag
            },
            tag,
            us,
        ))
    }

    /// The stored invalidation times of `tags` (0: never invalidated).
    pub(crate) async fn tag_times(
        &self,
        tags: &[Box<str>],
    ) -> Result<Vec<u64>, fred::error::Error> {
        let keys: Vec<String> = tags.iter().map(|t| self.tag_key(t)).collect();
        let client = &self.shared.publisher;
        let values: Vec<Option<String>> = follow_on(client, |o| {
            let (c, keys) = (client.with_options(o), keys.clone());
            async move { c.mget(keys).await }
        })
        .await
        .inspect_err(|e| self.shared.publisher_failed(e))?;
        Ok(values
            .into_iter()
            .map(|v| v.and_then(|v| v.parse().ok()).unwrap_or(0))
            .collect())
    }
}
