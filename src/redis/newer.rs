//! Conditional writes and deletes: store an entry only if Redis holds nothing newer of its key,
//! delete a key only if what it holds is older than the delete, each compared and done in one
//! server-side step (a Lua script, sent by its hash).
//!
//! A command can reach Redis long after its caller gave up on it: a command already on the
//! wire when its timeout fired, held up by a slow link, a stalled proxy or a connection the
//! kernel has not yet given up on. A plain `SET` or `UNLINK` landing that late replaces (or
//! removes) whatever another replica wrote meanwhile, and the fleet then serves two values of
//! one key. A conditional command landing late finds the newer value and leaves it, so "newer"
//! is decided by creation time ([`Entry::created_at`]), not by arrival order.

use std::time::Instant;

use fred::bytes::Bytes;
use fred::interfaces::LuaInterface;
use fred::prelude::{ClientLike, Value};
use fred::types::{ClusterHash, CustomCommand};

use super::{cluster, now_ms, redis_px, settle, Op, RedisCache, Result, TOMBSTONE_TTL};
use crate::entry::Entry;

/// A Lua script and its SHA-1, the name Redis caches it under: `EVALSHA` sends the 40 bytes of
/// the hash instead of the whole script. A server that does not know it (restarted, failed
/// over, `SCRIPT FLUSH`) answers `NOSCRIPT`, and the script is then sent whole with `EVAL`,
/// which caches it again. `tests/redis.rs` checks that writes go by the hash.
struct Script {
    lua: &'static str,
    sha1: &'static str,
}

/// The start of both scripts: return 0 (do nothing) if the key holds a frame created at
/// `$arg` (µs) or later. Only the frame's first 53 bytes are read (`GETRANGE`, not the whole
/// value, which may be 100 KB): the creation time sits in the metadata block after the 41-byte
/// header and the optional 4-byte schema id (see `codec::frame`). A frame without one (an
/// earlier version's), or a value that is no frame, counts as older. Lua numbers are doubles:
/// exact for µs times until the year 2255.
macro_rules! unless_created_since {
    ($arg:literal) => {
        concat!(
            "
local cur = redis.call('GETRANGE', KEYS[1], 0, 52)
if #cur >= 49 and string.sub(cur, 1, 3) == 'LC\\1' then
  local flags = string.byte(cur, 4)
  if flags % 16 >= 8 then
    local at = 42
    if flags % 8 >= 4 then at = at + 4 end
    if #cur >= at + 7 then
      local created = 0
      for i = 7, 0, -1 do created = created * 256 + string.byte(cur, at + i) end
      if created >= tonumber(",
            $arg,
            ") then return 0 end
    end
  end
end
"
        )
    };
}

/// `set_if_newer` in one step: write ARGV[1] with PX ARGV[3] unless the key holds an entry
/// created at ARGV[2] or later.
const SET_IF_NEWER: Script = Script {
    lua: concat!(
        unless_created_since!("ARGV[2]"),
        "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])\nreturn 1\n"
    ),
    sha1: "a70bda2735997c37d8215916767910dd5abd22e3",
};

/// `delete_if_older` in one step: unless the key holds an entry created at ARGV[1] or later,
/// replace what it holds with the tombstone ARGV[2] (created at ARGV[1]) for ARGV[3] ms.
const DELETE_IF_OLDER: Script = Script {
    lua: concat!(
        unless_created_since!("ARGV[1]"),
        "redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])\nreturn 1\n"
    ),
    sha1: "89c73bac91d28445b9f180f0ba8dc3e43c132617",
};

/// Whether `error` is Redis saying it does not know a script's hash.
fn is_noscript(error: &fred::error::Error) -> bool {
    error.details().starts_with("NOSCRIPT")
}

/// The arguments of one conditional write: the frame, its creation time (µs) and its `PX`.
fn script_args(bytes: Bytes, created_us: u64, px: i64) -> Vec<Value> {
    vec![
        bytes.into(),
        created_us.to_string().into(),
        px.to_string().into(),
    ]
}

impl<V> RedisCache<V>
where
    V: Send + Sync + 'static,
{
    /// One conditional write (see the module docs); whether `entry` was stored.
    pub(super) async fn write_if_newer(&self, key: &str, entry: Entry<V>) -> Result<bool> {
        let ttl_ms = entry.stale_until_ms().saturating_sub(now_ms());
        if ttl_ms == 0 {
            // Already past its stale deadline: stored, it would be gone at once, and so is
            // whatever older entry the key held (as a plain `set` of it deletes the key).
            return self.delete_older(key, entry.ordered_us()).await;
        }
        let full = self.full_key(key);
        let bytes = self.encode_counted(&full, &entry)?;
        let args = script_args(Bytes::from(bytes), entry.ordered_us(), redis_px(ttl_ms));
        self.run_script(Op::Set, key, &full, &SET_IF_NEWER, args)
            .await
            .map(|n| n == 1)
    }

    /// Delete `key` unless Redis holds an entry of it created at `before_us` or later; whether
    /// it is gone. What it held is replaced by a tombstone for [`TOMBSTONE_TTL`]: a value read
    /// before the delete (a load that started before it, on a replica that has not heard of
    /// it yet) is older, so the scripts keep it out.
    pub(super) async fn delete_older(&self, key: &str, before_us: u64) -> Result<bool> {
        let full = self.full_key(key);
        let args = vec![
            Value::from(before_us.to_string()),
            Value::from(Bytes::from(crate::codec::tombstone(before_us))),
            Value::from(TOMBSTONE_TTL.as_millis().to_string()),
        ];
        self.run_script(Op::Delete, key, &full, &DELETE_IF_OLDER, args)
            .await
            .map(|n| n == 1)
    }

    /// Run `script` on `key` (full name `full`) through the key's writer connection, by hash
    /// first; its integer answer.
    async fn run_script(
        &self,
        op: Op,
        key: &str,
        full: &str,
        script: &Script,
        args: Vec<Value>,
    ) -> Result<i64> {
        let started = Instant::now();
        let index = self.writer_for(key);
        let client = self.client(index);
        let turn = self.turn(op, index).await?;
        let answer: std::result::Result<i64, _> = crate::traced!(
            self.op_span(op),
            cluster::follow(Instant::now(), &self.inner.options, |o| {
                let (c, args) = (client.with_options(o), args.clone());
                async move {
                    match c.evalsha(script.sha1, full, args.clone()).await {
                        Err(e) if is_noscript(&e) => c.eval(script.lua, full, args).await,
                        answer => answer,
                    }
                }
            })
        )
        .await;
        settle(turn, &answer);
        self.inner.ops.took(op, started);
        answer.map_err(|e| self.failed(op, index, e))
    }

    /// Conditional writes of a batch, pipelined per writer connection in rounds of
    /// [`PIPELINE_CHUNK`](super::PIPELINE_CHUNK); whether each entry was stored, in order.
    pub(super) async fn write_many_if_newer(
        &self,
        entries: Vec<(&str, Entry<V>)>,
    ) -> Result<Vec<bool>> {
        let mut stored = vec![false; entries.len()];
        if entries.is_empty() {
            return Ok(stored);
        }
        let started = Instant::now();
        let now = now_ms();
        // Each key through its own writer connection, as `set` and `delete` send it (see
        // `set_many`). Entries already past their stale deadline delete what is older instead
        // (see `write_if_newer`), after the batch.
        let writers = (self.inner.pool.size() / 2).max(1);
        let mut groups: Vec<Vec<(usize, String, Vec<Value>)>> =
            (0..writers).map(|_| Vec::new()).collect();
        let mut expired = Vec::new();
        for (i, (key, entry)) in entries.iter().enumerate() {
            let ttl_ms = entry.stale_until_ms().saturating_sub(now);
            if ttl_ms == 0 {
                expired.push(i);
                continue;
            }
            let full = self.full_key(key);
            let bytes = self.encode_counted(&full, entry)?;
            let args = script_args(Bytes::from(bytes), entry.ordered_us(), redis_px(ttl_ms));
            groups[self.writer_for(key)].push((i, full, args));
        }
        for (index, group) in groups.iter().enumerate() {
            for round in group.chunks(super::PIPELINE_CHUNK) {
                let answers = self.write_round(index, round).await?;
                for ((i, _, _), answer) in round.iter().zip(answers) {
                    stored[*i] = answer;
                }
            }
        }
        for i in expired {
            let (key, entry) = &entries[i];
            stored[i] = self.delete_older(key, entry.ordered_us()).await?;
        }
        self.inner.ops.took(Op::SetMany, started);
        Ok(stored)
    }

    /// One pipelined round of conditional writes on writer `index`: by hash, then whole for
    /// those the server answered `NOSCRIPT`.
    async fn write_round(
        &self,
        index: usize,
        round: &[(usize, String, Vec<Value>)],
    ) -> Result<Vec<bool>> {
        let client = self.client(index);
        let mut answers: Vec<Option<bool>> = vec![None; round.len()];
        for by_hash in [true, false] {
            let todo: Vec<usize> = (0..round.len()).filter(|&i| answers[i].is_none()).collect();
            if todo.is_empty() {
                break;
            }
            let todo = &todo;
            let turn = self.turn(Op::SetMany, index).await?;
            let replies = crate::traced!(
                self.op_span(Op::SetMany),
                cluster::follow(Instant::now(), &self.inner.bulk_options, |_| async move {
                    let pipeline = client.pipeline();
                    for &i in todo {
                        let (_, full, args) = &round[i];
                        // fred's pipeline has no `EVALSHA`: sent as a command of our own,
                        // routed on a cluster by its key's slot (fred would hash the first
                        // argument, the script).
                        let (name, script) = if by_hash {
                            ("EVALSHA", SET_IF_NEWER.sha1)
                        } else {
                            ("EVAL", SET_IF_NEWER.lua)
                        };
                        let mut command_args: Vec<Value> = Vec::with_capacity(3 + args.len());
                        command_args.push(script.into());
                        command_args.push(1.into());
                        command_args.push(full.as_str().into());
                        command_args.extend(args.iter().cloned());
                        let _: () = pipeline
                            .custom(
                                CustomCommand::new_static(
                                    name,
                                    ClusterHash::Custom(fred::util::redis_keyslot(full.as_bytes())),
                                    false,
                                ),
                                command_args,
                            )
                            .await?;
                    }
                    let mut replies = Vec::with_capacity(todo.len());
                    for reply in pipeline.try_all::<i64>().await {
                        match reply {
                            Ok(n) => replies.push(Some(n == 1)),
                            Err(e) if by_hash && is_noscript(&e) => replies.push(None),
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(replies)
                })
            )
            .await;
            settle(turn, &replies);
            let replies = replies.map_err(|e| self.failed(Op::SetMany, index, e))?;
            if replies.len() != todo.len() {
                return Err(self.redis_error(
                    Op::SetMany,
                    fred::error::Error::new(
                        fred::error::ErrorKind::Protocol,
                        "pipeline reply count mismatch",
                    ),
                ));
            }
            for (&i, reply) in todo.iter().zip(replies) {
                answers[i] = reply;
            }
        }
        Ok(answers.into_iter().map(|a| a.unwrap_or(false)).collect())
    }
}
