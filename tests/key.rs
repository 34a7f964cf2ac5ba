//! Key building: golden vectors (the same inputs give the same key in every process, on every
//! machine) and unambiguous separation. The digests below were computed with an independent
//! BLAKE3 implementation, not with this crate.

use layercache::KeyBuilder;

const PROMPT: &str = "You are a helpful assistant. Summarise the following support ticket in two \
                      sentences, keeping any order numbers: my parcel #4471 never arrived.";

#[test]
fn golden_vectors() {
    assert_eq!(PROMPT.len(), 143);
    let cases = [
        (KeyBuilder::new("chat").build(), "chat:v0"),
        (
            KeyBuilder::new("chat")
                .version(3)
                .part("gpt-4o")
                .part_u64(42)
                .build(),
            "chat:v3:gpt-4o:42",
        ),
        (
            KeyBuilder::new("chat")
                .version(3)
                .part("gpt-4o")
                .part(PROMPT)
                .build(),
            "chat:v3:gpt-4o:#97dfe6c0b68cb467696f6548ef46a4b04406b51b2f71eba7bdfebf1f894d11b5",
        ),
        (
            KeyBuilder::new("emb").part_bytes(&[]).build(),
            "emb:v0:#af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
        ),
        (
            KeyBuilder::new("emb")
                .part_bytes(&(0..=255u8).collect::<Vec<_>>())
                .build(),
            "emb:v0:#4a495ba42461748eca8fdad618f976aa726cc2903de9fcb40735a786ac1c196b",
        ),
        (
            KeyBuilder::new("a:b")
                .part("c:d")
                .part(r"e\")
                .part("#f")
                .build(),
            r"a\:b:v0:c\:d:e\\:\#f",
        ),
        (KeyBuilder::new("t").part("").part("").build(), "t:v0::"),
    ];
    for (built, expected) in cases {
        assert_eq!(built.as_str(), expected);
    }
}

#[test]
fn hash_threshold_is_inclusive_at_the_limit() {
    let at_limit = "x".repeat(64);
    let over = "x".repeat(65);
    assert_eq!(
        KeyBuilder::new("n").part(&at_limit).build().as_str(),
        format!("n:v0:{at_limit}")
    );
    assert!(KeyBuilder::new("n")
        .part(&over)
        .build()
        .as_str()
        .starts_with("n:v0:#"));
    let custom = KeyBuilder::new("n").hash_threshold(4).part("abcde").build();
    assert!(custom.as_str().starts_with("n:v0:#"));
}

#[test]
fn separation_is_unambiguous() {
    let pairs = [
        (vec!["ab", "c"], vec!["a", "bc"]),
        (vec!["a:b"], vec!["a", "b"]),
        (vec![r"a\", "b"], vec![r"a\:b"]),
        (vec!["", "a"], vec![":a"]),
        (vec!["a"], vec!["a", ""]),
    ];
    for (left, right) in pairs {
        let build = |parts: &[&str]| {
            parts
                .iter()
                .fold(KeyBuilder::new("ns"), |b, p| b.part(p))
                .build()
        };
        assert_ne!(build(&left), build(&right), "{left:?} vs {right:?}");
    }
    // Namespace and version cannot be confused with parts either.
    assert_ne!(
        KeyBuilder::new("a:v0:b").build(),
        KeyBuilder::new("a").part("b").build()
    );
    assert_ne!(
        KeyBuilder::new("a").version(1).build(),
        KeyBuilder::new("a").part("v1").build()
    );
}

#[test]
fn long_parts_with_a_shared_prefix_do_not_collide() {
    let base = "p".repeat(200);
    let a = KeyBuilder::new("n").part(format!("{base}a")).build();
    let b = KeyBuilder::new("n").part(format!("{base}b")).build();
    assert_ne!(a, b);
    assert_eq!(a.len(), "n:v0:#".len() + 64);
}

#[test]
fn floats_have_one_canonical_form() {
    let k = |t: f64| KeyBuilder::new("chat").part_f64(t).build();
    assert_eq!(k(0.7), k("0.70".parse().expect("float")));
    assert_eq!(k(0.7), k(7e-1));
    assert_eq!(k(0.0), k(-0.0), "negative zero is zero");
    assert_ne!(k(0.7), k(0.70000001));
    assert_eq!(k(0.7).as_str(), "chat:v0:0.7");
    assert_eq!(k(1.0).as_str(), "chat:v0:1");
    // An f32 keeps its own shortest form, not that of the f64 it widens to.
    assert_eq!(
        KeyBuilder::new("chat").part_f32(0.7).build().as_str(),
        "chat:v0:0.7"
    );
}

#[test]
fn optional_parts_never_collide() {
    let k = |p: Option<&str>| KeyBuilder::new("chat").part_opt(p).build();
    let keys = [k(None), k(Some("")), k(Some("none")), k(Some("#none"))];
    for (i, a) in keys.iter().enumerate() {
        for b in &keys[i + 1..] {
            assert_ne!(a, b);
        }
    }
    assert_eq!(
        k(Some("gpt-4o")),
        KeyBuilder::new("chat").part("gpt-4o").build()
    );
}

#[test]
fn serialized_requests_are_keyed_canonically() {
    use serde::Serialize;
    use serde_json::json;

    #[derive(Serialize)]
    struct Message<'a> {
        role: &'a str,
        content: &'a str,
    }
    #[derive(Serialize)]
    struct Request<'a> {
        model: &'a str,
        temperature: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        max_tokens: Option<u32>,
        messages: Vec<Message<'a>>,
        metadata: std::collections::HashMap<&'a str, &'a str>,
    }
    let request = |temperature: f64, order: &[(&'static str, &'static str)]| Request {
        model: "gpt-4o",
        temperature,
        max_tokens: None,
        messages: vec![Message {
            role: "user",
            content: PROMPT,
        }],
        metadata: order.iter().copied().collect(),
    };
    let key = |r: &Request<'_>| {
        KeyBuilder::new("chat")
            .part_json(r)
            .expect("serializable")
            .build()
    };
    // Map order (a HashMap's iteration order differs between processes) and 0.7 vs 0.70 do not
    // change the key; a different temperature does.
    let a = key(&request(0.7, &[("user", "u1"), ("team", "t1")]));
    let b = key(&request(
        "0.70".parse().expect("float"),
        &[("team", "t1"), ("user", "u1")],
    ));
    assert_eq!(a, b);
    assert_ne!(a, key(&request(0.8, &[("user", "u1"), ("team", "t1")])));
    // The same JSON written by hand, keys in another order: the same key.
    let by_hand = json!({
        "temperature": 0.7,
        "metadata": {"team": "t1", "user": "u1"},
        "model": "gpt-4o",
        "messages": [{"content": PROMPT, "role": "user"}],
    });
    assert_eq!(
        a,
        KeyBuilder::new("chat")
            .part_json(&by_hand)
            .expect("json")
            .build()
    );
    // The request text never appears in the key.
    assert!(!a.as_str().contains("assistant"));
    assert!(a.as_str().starts_with("chat:v0:#"));
    // A value serde_json cannot represent is an error, not a panic.
    let bad: std::collections::HashMap<(u8, u8), u8> = [((1, 2), 3)].into_iter().collect();
    assert!(matches!(
        KeyBuilder::new("chat").part_json(&bad),
        Err(layercache::Error::Encode { .. })
    ));
}
