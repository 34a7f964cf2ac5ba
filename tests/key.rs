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
