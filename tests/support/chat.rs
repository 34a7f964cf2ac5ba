//! A realistic cached value: an LLM chat completion, with varied (not repeated) text.

use serde::{Deserialize, Serialize};

/// A chat-completion reply as a service would cache it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatReply {
    pub id: String,
    pub model: String,
    pub created: u64,
    pub choices: Vec<Choice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub index: u32,
    pub role: String,
    pub content: String,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

const WORDS: &[&str] = &[
    "cache",
    "latency",
    "the",
    "request",
    "model",
    "token",
    "response",
    "server",
    "a",
    "of",
    "to",
    "and",
    "replica",
    "invalidate",
    "stale",
    "fresh",
    "prompt",
    "embedding",
    "vector",
    "cluster",
    "timeout",
    "retry",
    "budget",
    "answer",
    "question",
    "customer",
    "order",
    "shipping",
    "refund",
    "account",
    "password",
    "reset",
    "device",
    "firmware",
    "update",
    "error",
    "message",
    "log",
    "metric",
    "dashboard",
    "alert",
    "queue",
    "worker",
    "thread",
    "memory",
    "disk",
    "network",
];

/// Deterministic pseudo-random text of about `bytes` bytes, different for each `seed`.
pub fn text(seed: u64, bytes: usize) -> String {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = String::with_capacity(bytes + 16);
    let mut sentence_len = 0;
    while out.len() < bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let word = WORDS[(state % WORDS.len() as u64) as usize];
        if sentence_len == 0 {
            let mut c = word.chars();
            if let Some(first) = c.next() {
                out.extend(first.to_uppercase());
                out.push_str(c.as_str());
            }
        } else {
            out.push_str(word);
        }
        sentence_len += 1;
        if sentence_len > 6 && state.is_multiple_of(5) {
            out.push_str(if state.is_multiple_of(3) { ". " } else { "? " });
            sentence_len = 0;
        } else if state.is_multiple_of(11) {
            out.push_str(&format!(" #{} ", state % 10_000));
        } else {
            out.push(' ');
        }
    }
    out
}

/// A reply whose serialized size is about `bytes`.
pub fn reply(seed: u64, bytes: usize) -> ChatReply {
    let content = text(seed, bytes.saturating_sub(120));
    ChatReply {
        id: format!("chatcmpl-{seed:016x}"),
        model: "gpt-4o-mini-2024-07-18".into(),
        created: 1_732_000_000 + seed,
        choices: vec![Choice {
            index: 0,
            role: "assistant".into(),
            content,
            finish_reason: Some("stop".into()),
        }],
        usage: Usage {
            prompt_tokens: 50 + (seed % 200) as u32,
            completion_tokens: (bytes / 4) as u32,
            total_tokens: 50 + (seed % 200) as u32 + (bytes / 4) as u32,
        },
    }
}
