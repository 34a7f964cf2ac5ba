//! The types a user really caches: replies of the OpenAI API as the `async-openai` crate defines
//! them (chat completions with tool calls and log probabilities, a collected stream of chunks,
//! embeddings, and the Responses API's internally tagged and untagged enums), parsed from
//! replies shaped as the API sends them (`tests/data/openai/`).
//!
//! Each must read back equal through every self-describing format, be refused at its first
//! write by postcard (never stored to fail on every read), and cross replicas through a real
//! `redis-server` — also after that server restarts empty. Binary values (speech audio, images)
//! are stored as bytes when serde knows they are bytes (the codec module's "Binary values").

#![cfg(all(
    feature = "redis",
    feature = "msgpack",
    feature = "json",
    feature = "postcard"
))]

#[path = "../../tests/support/mod.rs"]
mod support;

use std::fmt::Debug;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_openai::types::chat::{CreateChatCompletionResponse, CreateChatCompletionStreamResponse};
use async_openai::types::embeddings::CreateEmbeddingResponse;
use async_openai::types::responses::{OutputItem, Response};
use layercache::codec::{Json, Postcard};
use layercache::{
    Cache, Codec, Entry, Error, Layered, LoadOptions, MemoryCache, RedisCache, Source, ValueCodec,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use support::redis::RedisServer;

const CHAT: &str = include_str!("data/openai/chat_completion.json");
const TOOL_CALLS: &str = include_str!("data/openai/chat_tool_calls.json");
const STREAM: &str = include_str!("data/openai/chat_stream.json");
const EMBEDDING: &str = include_str!("data/openai/embedding.json");
const RESPONSE: &str = include_str!("data/openai/response.json");

/// What every value here is.
trait Reply: Serialize + DeserializeOwned + PartialEq + Debug + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + PartialEq + Debug + Clone + Send + Sync + 'static> Reply
    for T
{
}

fn parse<V: DeserializeOwned>(name: &str, json: &str) -> V {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{name}: not a valid reply: {e}"))
}

fn chat() -> CreateChatCompletionResponse {
    parse("chat_completion.json", CHAT)
}

/// One step of a seeded generator (a 64-bit LCG): test data that is the same on every run.
fn next(state: u64) -> u64 {
    state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407)
}

/// A chat reply whose text is ~64 KB of varied words (seeded): a long answer, compressed.
fn long_chat() -> CreateChatCompletionResponse {
    const WORDS: [&str; 12] = [
        "cache", "replica", "token", "résumé", "latency", "模型", "stream", "🦄", "vector", "tool",
        "answer", "prompt",
    ];
    let mut reply = chat();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut text = String::new();
    while text.len() < 64 * 1024 {
        state = next(state);
        text.push_str(WORDS[(state >> 60) as usize % WORDS.len()]);
        text.push(if state & 0xF == 0 { '\n' } else { ' ' });
    }
    reply.choices[0].message.content = Some(text);
    reply
}

/// `value` encoded and decoded by `codec`.
fn through<V: Reply, C: ValueCodec<V>>(codec: &C, value: &V) -> layercache::Result<V> {
    let entry = Entry::new(value.clone(), Duration::from_secs(60));
    let bytes = codec.encode(&entry)?;
    Ok(codec.decode(&bytes)?.into_value())
}

fn reads_back<V: Reply>(name: &str, value: &V) {
    let default = Codec::builder().build().expect("the default codec");
    let json = Codec::with_format(Json).build().expect("a JSON codec");
    for (format, back) in [
        ("MessagePack", through(&default, value)),
        ("JSON", through(&json, value)),
    ] {
        match back {
            Ok(back) => assert_eq!(&back, value, "{name} through {format}"),
            Err(e) => panic!("{name} through {format}: {e}"),
        }
    }
}

#[test]
fn sdk_replies_read_back_equal_through_every_self_describing_format() {
    reads_back("chat completion", &chat());
    reads_back("long chat completion", &long_chat());
    let tools: CreateChatCompletionResponse = parse("chat_tool_calls.json", TOOL_CALLS);
    assert!(tools.choices[0].message.tool_calls.is_some());
    assert!(tools.choices[0].logprobs.is_some());
    reads_back("tool calls", &tools);
    let stream: Vec<CreateChatCompletionStreamResponse> = parse("chat_stream.json", STREAM);
    reads_back("collected stream", &stream);
    let embedding: CreateEmbeddingResponse = parse("embedding.json", EMBEDDING);
    reads_back("embedding", &embedding);
    let response: Response = parse("response.json", RESPONSE);
    // Internally tagged (`"type": "message"`, ...) items of three kinds.
    assert!(matches!(response.output[0], OutputItem::Reasoning(_)));
    assert!(matches!(response.output[1], OutputItem::Message(_)));
    assert!(matches!(response.output[2], OutputItem::FunctionCall(_)));
    reads_back("Responses API reply", &response);
    reads_back(
        "serde_json::Value",
        &parse::<serde_json::Value>("response.json", RESPONSE),
    );
}

/// postcard is not self-describing: these types skip `None` fields and hold tagged enums, so
/// their bytes do not read back. The write check refuses them at the first write.
#[test]
fn postcard_refuses_sdk_replies_at_the_first_write() {
    fn refused<V: Reply>(name: &str, value: &V) {
        let codec = Codec::with_format(Postcard)
            .build()
            .expect("a postcard codec");
        let entry = Entry::new(value.clone(), Duration::from_secs(60));
        match codec.encode(&entry) {
            Err(Error::RoundTrip { .. }) => {}
            Err(e) => panic!("{name}: refused with the wrong error: {e:?}"),
            Ok(_) => panic!("{name}: postcard stored a value that does not read back"),
        }
    }
    refused("chat completion", &chat());
    refused(
        "Responses API reply",
        &parse::<Response>("response.json", RESPONSE),
    );
}

/// A replica: a `Layered` stack over `server` with a backplane, and its L1.
async fn replica<V: Reply>(server: &RedisServer, name: &str) -> (Layered<V>, MemoryCache<V>) {
    let l2 = RedisCache::<V>::builder()
        .url(server.url())
        .namespace("sdk")
        .build()
        .await
        .expect("RedisCache");
    let backplane = l2.backplane().await.expect("backplane");
    let l1 = MemoryCache::builder().build().expect("L1");
    let stack = Layered::builder(l1.clone(), l2)
        .name(name)
        .backplane(backplane)
        .build()
        .expect("Layered");
    (stack, l1)
}

/// Replica `a` loads `key` (its loader answers `value`); replica `b`, which must not load, gets it
/// from Redis, equal.
async fn crosses<V: Reply>(a: &Layered<V>, b: &Layered<V>, key: &str, value: &V) {
    let loaded = value.clone();
    let first = a
        .get_or_load_answer(
            key,
            move || async move { Ok::<_, std::io::Error>(loaded) },
            LoadOptions::ttl(Duration::from_secs(600)),
        )
        .await
        .unwrap_or_else(|e| panic!("{key}: replica a: {e}"));
    assert_eq!(first.source, Source::Loaded, "{key}");
    assert_eq!(&first.value, value, "{key}");
    let second = b
        .get_or_load_answer(
            key,
            || async { Err::<V, _>(std::io::Error::other("replica b must not load")) },
            LoadOptions::ttl(Duration::from_secs(600)),
        )
        .await
        .unwrap_or_else(|e| panic!("{key}: replica b: {e}"));
    assert_eq!(second.source, Source::L2Hit, "{key}");
    assert_eq!(&second.value, value, "{key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_replies_cross_replicas_through_redis_and_survive_its_restart() {
    let mut server = RedisServer::start();
    let (a, a_l1) = replica::<CreateChatCompletionResponse>(&server, "a").await;
    let (b, b_l1) = replica::<CreateChatCompletionResponse>(&server, "b").await;
    crosses(&a, &b, "chat", &chat()).await;
    crosses(&a, &b, "long", &long_chat()).await;
    let tools = parse("chat_tool_calls.json", TOOL_CALLS);
    crosses(&a, &b, "tools", &tools).await;

    let (ra, rb) = (
        replica::<Response>(&server, "ra").await.0,
        replica::<Response>(&server, "rb").await.0,
    );
    crosses(&ra, &rb, "response", &parse("response.json", RESPONSE)).await;
    let (ea, eb) = (
        replica::<CreateEmbeddingResponse>(&server, "ea").await.0,
        replica::<CreateEmbeddingResponse>(&server, "eb").await.0,
    );
    crosses(&ea, &eb, "embedding", &parse("embedding.json", EMBEDDING)).await;

    // Redis restarts empty. Each replica's subscription dropped: once it hears the fleet again
    // it drops its L1 (a change announced meanwhile may have been missed), so the fleet starts
    // cold (README) and the next request for a reply is loaded once across the fleet, through
    // the lease, with no error for any caller.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    for (cache, l1) in [(&a, &a_l1), (&b, &b_l1)] {
        loop {
            let subscribed = cache.backplane().is_some_and(|bp| bp.is_subscribed());
            if subscribed && l1.peek("chat").await.expect("peek").is_none() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a replica kept its L1 after the restart, or never subscribed again"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let loads = Arc::new(AtomicUsize::new(0));
    let ask = |cache: Layered<CreateChatCompletionResponse>| {
        let loads = Arc::clone(&loads);
        tokio::spawn(async move {
            cache
                .get_or_load(
                    "chat",
                    move || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, std::io::Error>(chat())
                    },
                    LoadOptions::ttl(Duration::from_secs(600)),
                )
                .await
        })
    };
    let (from_a, from_b) = tokio::join!(ask(a.clone()), ask(b.clone()));
    for reply in [from_a, from_b] {
        let reply = reply
            .expect("no panic")
            .expect("answered after the restart");
        assert_eq!(reply, chat());
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "the cold fleet loaded the reply once"
    );
    // A reply loaded after the restart reaches the new Redis: a plain reader sees it.
    let reader = RedisCache::<CreateChatCompletionResponse>::builder()
        .url(server.url())
        .namespace("sdk")
        .build()
        .await
        .expect("reader");
    let fresh = long_chat();
    let loaded = fresh.clone();
    let got = a
        .get_or_load(
            "after-restart",
            move || async move { Ok::<_, std::io::Error>(loaded) },
            LoadOptions::ttl(Duration::from_secs(600)),
        )
        .await
        .expect("a load after the restart");
    assert_eq!(got, fresh);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(entry)) = reader.get("after-restart").await {
            assert_eq!(entry.value(), &fresh);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reply loaded after the restart never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.flush(Duration::from_secs(5)).await.expect("flush");
}

/// A text-to-speech reply as a user should write it: the audio is one binary string.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Speech {
    #[serde(with = "serde_bytes")]
    audio: Vec<u8>,
    format: String,
}

/// The same with a plain `Vec<u8>`: serde writes it as a sequence of numbers.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct PlainSpeech {
    audio: Vec<u8>,
    format: String,
}

/// 100 KB of seeded pseudo-random bytes: compressed audio does not compress further.
fn audio() -> Vec<u8> {
    let mut state: u64 = 42;
    (0..100_000)
        .map(|_| {
            state = next(state);
            (state >> 56) as u8
        })
        .collect()
}

/// What the codec module docs say about binary values, with the default codec.
#[test]
fn binary_values_are_stored_as_bytes_only_when_serde_knows_they_are_bytes() {
    let codec = Codec::builder().build().expect("the default codec");
    let audio = audio();
    let speech = Speech {
        audio: audio.clone(),
        format: "mp3".into(),
    };
    let as_bytes = codec
        .encode(&Entry::new(speech.clone(), Duration::from_secs(60)))
        .expect("encode");
    assert!(
        as_bytes.len() < audio.len() + 256,
        "stored as one binary string: {} bytes for {} of audio",
        as_bytes.len(),
        audio.len()
    );
    let back: Entry<Speech> = codec.decode(&as_bytes).expect("decode");
    assert_eq!(back.value(), &speech);

    let plain = PlainSpeech {
        audio: audio.clone(),
        format: "mp3".into(),
    };
    let as_numbers = codec
        .encode(&Entry::new(plain.clone(), Duration::from_secs(60)))
        .expect("encode");
    assert!(
        as_numbers.len() > audio.len() * 11 / 10,
        "a plain Vec<u8> is a sequence of numbers: {} bytes for {} of audio",
        as_numbers.len(),
        audio.len()
    );
    let back: Entry<PlainSpeech> = codec.decode(&as_numbers).expect("decode");
    assert_eq!(back.value(), &plain);
}
