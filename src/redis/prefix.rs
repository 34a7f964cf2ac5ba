//! [`RedisCache::invalidate_prefix`]: `SCAN` + `UNLINK` on every primary, each key through its
//! writer connection.

use std::time::Instant;

use fred::bytes::Bytes;
use fred::interfaces::ClusterInterface;
use fred::prelude::{ClientLike, KeysInterface, Server, Value};

use super::ops::Op;
use super::{cluster, RedisCache, BATCH};
use crate::error::{Error, Result};

impl<V> RedisCache<V>
where
    V: Send + Sync + 'static,
{
    /// Delete every key of this cache (within its namespace) that starts with `prefix`, using
    /// `SCAN` + `UNLINK` on every primary; returns how many keys were removed. An empty prefix
    /// clears the whole namespace.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an empty prefix on a cache without a
    /// [`namespace`](super::RedisCacheBuilder::namespace): that would delete every key of the database,
    /// whoever wrote it. The Redis error when a node could not be scanned.
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<u64> {
        if prefix.is_empty() && self.inner.prefix.is_empty() {
            return Err(Error::config(
                "invalidate_prefix(\"\") on a cache without a namespace would delete every key of \
                 the database: give the cache a namespace, or a prefix",
            ));
        }
        let started = Instant::now();
        let pattern = format!(
            "{}{}*",
            glob_escape(&self.inner.prefix),
            glob_escape(prefix)
        );
        let client = self.inner.pool.next();
        let nodes: Vec<Option<Server>> = if self.inner.clustered {
            match client.cached_cluster_state() {
                Some(state) => state.unique_primary_nodes().into_iter().map(Some).collect(),
                None => {
                    return Err(self.redis_error(
                        Op::Invalidate,
                        fred::error::Error::new(
                            fred::error::ErrorKind::Cluster,
                            "no cluster state yet",
                        ),
                    ))
                }
            }
        } else {
            vec![None]
        };
        let mut removed = 0u64;
        for node in nodes {
            let mut options = self.inner.bulk_options.clone();
            options.cluster_node = node;
            let mut cursor = "0".to_string();
            loop {
                let page: Value = client
                    .with_options(&options)
                    .custom(
                        fred::cmd!("SCAN"),
                        vec![
                            cursor.clone(),
                            "MATCH".into(),
                            pattern.clone(),
                            "COUNT".into(),
                            BATCH.to_string(),
                        ],
                    )
                    .await
                    .map_err(|e| self.redis_error(Op::Invalidate, e))?;
                let (next, keys) =
                    parse_scan_page(page).map_err(|e| self.redis_error(Op::Invalidate, e))?;
                removed += self.unlink_all(keys).await?;
                if next == "0" {
                    break;
                }
                cursor = next;
            }
        }
        self.inner.ops.took(Op::Invalidate, started);
        Ok(removed)
    }

    /// UNLINK `keys`, grouped by hash slot on a cluster (a multi-key command must stay in a slot).
    async fn unlink_all(&self, keys: Vec<Bytes>) -> Result<u64> {
        // Each key through its writer connection, as `delete` sends it: a write of the key
        // still on its way (timed out, or held by a paused server) cannot land after it.
        let writers = (self.inner.pool.size() / 2).max(1);
        let mut by_writer: Vec<Vec<Bytes>> = (0..writers).map(|_| Vec::new()).collect();
        for key in keys {
            let index = key
                .strip_prefix(self.inner.prefix.as_bytes())
                .and_then(|user| std::str::from_utf8(user).ok())
                .map_or(0, |user| self.writer_for(user));
            by_writer[index].push(key);
        }
        let mut removed = 0;
        for (index, keys) in by_writer.into_iter().enumerate() {
            removed += self.unlink_on(index, keys).await?;
        }
        Ok(removed)
    }

    /// `UNLINK` `keys` through pool client `index`, pipelined (per slot on a cluster); how many
    /// held a value (a delete's tombstone, read first, does not count: see `TOMBSTONE_TTL`).
    async fn unlink_on(&self, index: usize, keys: Vec<Bytes>) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let client = self.client(index);
        let groups = if self.inner.clustered {
            cluster::group_by_slot(keys)
        } else {
            vec![keys]
        };
        let groups: Vec<Vec<fred::types::Key>> = groups
            .into_iter()
            .map(|group| group.into_iter().map(fred::types::Key::from).collect())
            .collect();
        // Whether each key held a value (its first bytes read before the UNLINK of its group).
        let held: Vec<bool> = cluster::follow(Instant::now(), &self.inner.bulk_options, |_| {
            let groups = &groups;
            async move {
                let pipeline = client.pipeline();
                for group in groups {
                    for key in group {
                        let _: () = pipeline.getrange(key.clone(), 0, 3).await?;
                    }
                    let _: () = pipeline.unlink(group.clone()).await?;
                }
                let mut replies = pipeline.try_all::<Value>().await.into_iter();
                let mut held = Vec::new();
                for group in groups {
                    for _ in group {
                        held.push(match replies.next() {
                            Some(Ok(head)) => {
                                let head = head.as_bytes().unwrap_or_default();
                                !head.is_empty() && !crate::codec::starts_like_tombstone(head)
                            }
                            // Not a string (a key of another type under the prefix): a value.
                            Some(Err(_)) | None => true,
                        });
                    }
                    // A failed UNLINK fails the round (a redirection is followed).
                    if let Some(Err(e)) = replies.next() {
                        return Err(e);
                    }
                }
                Ok(held)
            }
        })
        .await
        .map_err(|e| self.redis_error(Op::Invalidate, e))?;
        let removed = held.iter().filter(|&&h| h).count() as u64;
        Ok(removed)
    }
}

fn parse_scan_page(page: Value) -> std::result::Result<(String, Vec<Bytes>), fred::error::Error> {
    let bad = || fred::error::Error::new(fred::error::ErrorKind::Protocol, "unexpected SCAN reply");
    let Value::Array(mut parts) = page else {
        return Err(bad());
    };
    if parts.len() != 2 {
        return Err(bad());
    }
    let keys = parts.pop().ok_or_else(bad)?;
    let cursor = parts.pop().ok_or_else(bad)?.into_string().ok_or_else(bad)?;
    let Value::Array(keys) = keys else {
        return Err(bad());
    };
    let keys = keys
        .into_iter()
        .map(|k| k.into_bytes().ok_or_else(bad))
        .collect::<std::result::Result<_, _>>()?;
    Ok((cursor, keys))
}

/// Escapes Redis glob metacharacters so that a prefix matches only itself.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^' | '-') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
