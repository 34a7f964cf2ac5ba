//! OpenAI-shaped chat completions as client crates define them: optional fields skipped when
//! `None`, `serde_json::Value` tool arguments, tagged and untagged enums, nested vectors. The
//! types a non-self-describing format (postcard) cannot read back.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    pub choices: Vec<ChatChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<CompletionUsage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_tier: Option<ServiceTier>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: ResponseMessage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseMessage {
    pub role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceTier {
    Default,
    Scale,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolCall {
    Function { id: String, function: FunctionCall },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// Parsed tool arguments, whatever JSON the model produced.
    pub arguments: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<TokenDetails>,
}

/// Untagged: serde tries the variants in order, so the one with more fields comes first (as in
/// any client crate; otherwise serde itself, in any format, reads `Audio` back as `Cached`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenDetails {
    Audio {
        audio_tokens: u32,
        cached_tokens: u32,
    },
    Cached {
        cached_tokens: u32,
    },
}

/// Reply `i` of a varied set: plain answers, refusals, tool calls with nested JSON arguments,
/// long and tiny contents, optional fields present or absent.
pub fn completion(i: u64) -> ChatCompletion {
    let long = "The cache answered from Redis without calling the model again. "
        .repeat(1 + (i as usize % 5) * 40);
    let message = match i % 4 {
        0 => ResponseMessage {
            role: Role::Assistant,
            content: Some(format!("Answer {i}: {long}")),
            refusal: None,
            tool_calls: Vec::new(),
        },
        1 => ResponseMessage {
            role: Role::Assistant,
            content: None,
            refusal: Some("I can't help with that.".into()),
            tool_calls: Vec::new(),
        },
        2 => ResponseMessage {
            role: Role::Assistant,
            content: None,
            refusal: None,
            tool_calls: vec![ToolCall::Function {
                id: format!("call_{i}"),
                function: FunctionCall {
                    name: "lookup_order".into(),
                    arguments: json!({
                        "order_id": i,
                        "fields": ["status", "eta", {"nested": [1.5, null, true]}],
                        "filters": {"country": "DE", "max_price": 12.75, "tags": []},
                    }),
                },
            }],
        },
        _ => ResponseMessage {
            role: Role::Assistant,
            content: Some("ok".into()),
            refusal: None,
            tool_calls: Vec::new(),
        },
    };
    ChatCompletion {
        id: format!("chatcmpl-{i:08x}"),
        object: "chat.completion".into(),
        created: 1_732_000_000 + i,
        model: "gpt-4o-2024-08-06".into(),
        system_fingerprint: i.is_multiple_of(3).then(|| format!("fp_{i}")),
        choices: vec![ChatChoice {
            index: 0,
            message,
            finish_reason: match i % 5 {
                0 => None,
                1 => Some(FinishReason::Length),
                2 => Some(FinishReason::ToolCalls),
                _ => Some(FinishReason::Stop),
            },
            logprobs: i
                .is_multiple_of(7)
                .then(|| json!({"content": [{"token": "Hi", "logprob": -0.25}]})),
        }],
        usage: (i % 6 != 5).then(|| CompletionUsage {
            prompt_tokens: 20 + i as u32,
            completion_tokens: 7,
            total_tokens: 27 + i as u32,
            prompt_tokens_details: match i % 3 {
                0 => None,
                1 => Some(TokenDetails::Cached { cached_tokens: 4 }),
                _ => Some(TokenDetails::Audio {
                    audio_tokens: 2,
                    cached_tokens: 0,
                }),
            },
        }),
        service_tier: i.is_multiple_of(2).then_some(ServiceTier::Default),
    }
}
