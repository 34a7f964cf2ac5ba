//! Per-operation metrics of [`RedisCache`](super::RedisCache): error counters, latency
//! histograms, stored sizes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use metrics::{Counter, Histogram};

use crate::metrics::{LayerMetrics, VALUE_BYTES};

/// A Redis command kind of a [`RedisCache`](super::RedisCache), for
/// [`RedisCache::op_latency`](super::RedisCache::op_latency).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RedisOp {
    /// `GET` of one key.
    Get,
    /// `SET` of one key.
    Set,
    /// `UNLINK` of one key.
    Delete,
    /// `MGET` batches.
    GetMany,
    /// Pipelined `SET` batches.
    SetMany,
    /// `SCAN` + `UNLINK` of a prefix.
    Invalidate,
}

impl RedisOp {
    pub(crate) fn op(self) -> Op {
        match self {
            RedisOp::Get => Op::Get,
            RedisOp::Set => Op::Set,
            RedisOp::Delete => Op::Delete,
            RedisOp::GetMany => Op::GetMany,
            RedisOp::SetMany => Op::SetMany,
            RedisOp::Invalidate => Op::Invalidate,
        }
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Op {
    Get,
    Set,
    Delete,
    GetMany,
    SetMany,
    Invalidate,
    Decode,
    Encode,
}

impl Op {
    const ALL: [Op; 8] = [
        Op::Get,
        Op::Set,
        Op::Delete,
        Op::GetMany,
        Op::SetMany,
        Op::Invalidate,
        Op::Decode,
        Op::Encode,
    ];

    /// Whether the operation is a Redis command (timed), not a local step.
    pub(crate) fn is_command(self) -> bool {
        !matches!(self, Op::Decode | Op::Encode)
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Delete => "delete",
            Op::GetMany => "get_many",
            Op::SetMany => "set_many",
            Op::Invalidate => "invalidate",
            Op::Decode => "decode",
            Op::Encode => "encode",
        }
    }
}

/// Handles made once at build time, per operation.
pub(crate) struct OpMetrics {
    pub(crate) errors: Vec<Counter>,
    /// `None` for local steps (decode, encode), which are not timed.
    pub(crate) durations: Vec<Option<Histogram>>,
    /// The same durations, readable without a recorder.
    pub(crate) latency: Vec<crate::instrument::LatencyHistogram>,
    pub(crate) encoded_bytes: Histogram,
    pub(crate) stored_bytes: Histogram,
    pub(crate) error_total: AtomicU64,
}

impl OpMetrics {
    pub(crate) fn new(layer: &LayerMetrics, cache: &str) -> Self {
        OpMetrics {
            errors: Op::ALL
                .iter()
                .map(|op| layer.error_counter(op.name()))
                .collect(),
            durations: Op::ALL
                .iter()
                .map(|op| op.is_command().then(|| layer.op_histogram(op.name())))
                .collect(),
            latency: Op::ALL
                .iter()
                .map(|_| crate::instrument::LatencyHistogram::new())
                .collect(),
            encoded_bytes: metrics::histogram!(VALUE_BYTES, "cache" => cache.to_owned(), "stage" => "encoded"),
            stored_bytes: metrics::histogram!(VALUE_BYTES, "cache" => cache.to_owned(), "stage" => "stored"),
            error_total: AtomicU64::new(0),
        }
    }

    pub(crate) fn error(&self, op: Op) {
        self.errors[op as usize].increment(1);
        self.error_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn took(&self, op: Op, started: Instant) {
        if let Some(histogram) = &self.durations[op as usize] {
            let took = started.elapsed();
            histogram.record(took.as_secs_f64());
            self.latency[op as usize].record(took);
        }
    }

    /// Record the sizes of a frame about to be stored: serialized and as sent.
    pub(crate) fn sizes(&self, frame: &[u8]) {
        if let Some(raw) = crate::codec::declared_raw_len(frame) {
            self.encoded_bytes.record(f64::from(raw));
        }
        self.stored_bytes.record(frame.len() as f64);
    }
}
