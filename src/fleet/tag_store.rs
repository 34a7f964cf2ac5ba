//! Tag invalidation times in Redis (see [`crate::tags`]): one small key per invalidated tag,
//! `layercache:tag:v1:{<namespace>}:<tag>`, holding the time in µs since the Unix epoch. The braces put every tag key
//! of a namespace in one cluster slot, so the times of an entry's tags are read with one `MGET`.
//!
//! A tag key expires once no entry it could invalidate is left: tagged entries live at most the
//! cache's tag retention after they were created, and the key is kept that long after the
//! invalidation (plus a margin for clock differences). The clear time never expires (it
//! concerns untagged entries too, whose lifetimes have no bound; it is one key).

use fred::interfaces::{KeysInterface, LuaInterface};
use fred::prelude::ClientLike;

use crate::redis::cluster::follow_on;

use super::backplane::{Action, Backplane};
use crate::tags::CLEAR;

/// Keep the later of the stored time and ours (replicas' clocks differ a little); with a third
/// argument, the key expires that many ms after the later time was stored.
const STORE_LATER: &str = "local t = tonumber(redis.call('GET', KEYS[1]) or '0') \
     if tonumber(ARGV[1]) > t then \
       if ARGV[2] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) \
       else redis.call('SET', KEYS[1], ARGV[1]) end \
     end return 1";

impl Backplane {
    fn tag_key(&self, tag: &str) -> String {
        format!("layercache:tag:v1:{{{}}}:{tag}", self.shared.namespace)
    }

    /// Store that `tag` (or, for [`CLEAR`], everything) was invalidated at `us`, kept for
    /// `keep_ms` (for good with `None`), and announce it to the fleet: one script call and one
    /// message, however many entries carry the tag.
    pub(crate) async fn invalidate_tag(
        &self,
        tag: &str,
        us: u64,
        keep_ms: Option<u64>,
    ) -> Result<(), fred::error::Error> {
        let (client, key) = (&self.shared.publisher, self.tag_key(tag));
        let mut args = vec![us.to_string()];
        args.extend(keep_ms.map(|ms| ms.max(1).to_string()));
        let _: i64 = follow_on(client, |o| {
            let (c, key, args) = (client.with_options(o), key.clone(), args.clone());
            async move { c.eval(STORE_LATER, key, args).await }
        })
        .await?;
        self.announce_at(
            if tag == CLEAR {
                Action::Clear
            } else {
                Action::Tag
            },
            tag,
            us,
        );
        Ok(())
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
        .await?;
        Ok(values
            .into_iter()
            .map(|v| v.and_then(|v| v.parse().ok()).unwrap_or(0))
            .collect())
    }
}
