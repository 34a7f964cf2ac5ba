//! Frames built by hand from the documented v1 layout (so tests check the format itself), and a
//! zstd bomb.

/// Builds a frame by hand from the documented layout, so the test checks the format itself.
pub fn frame(flags: u8, format: u8, raw: &[u8], payload: &[u8], raw_len: u32) -> Vec<u8> {
    let mut head = Vec::with_capacity(41);
    head.extend_from_slice(b"LC");
    head.push(1);
    head.push(flags);
    head.push(format);
    head.extend_from_slice(&u64::MAX.to_le_bytes());
    head.extend_from_slice(&u64::MAX.to_le_bytes());
    head.extend_from_slice(&0u32.to_le_bytes());
    head.extend_from_slice(&0u32.to_le_bytes());
    head.extend_from_slice(&raw_len.to_le_bytes());
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&head);
    h.update(raw);
    head.extend_from_slice(&h.digest().to_le_bytes());
    head.extend_from_slice(payload);
    head
}

/// A zstd frame of about 16 KB that expands to 512 MiB of zeros. With `declare_size` the zstd
/// header states the 512 MiB (a decoder could size a buffer from it); without, it does not (a
/// decoder only learns the size by decompressing).
#[cfg(feature = "zstd")]
pub fn zstd_bomb_with(declare_size: bool) -> Vec<u8> {
    use std::io::Write;
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 19).expect("encoder");
    enc.include_contentsize(declare_size)
        .expect("content size flag");
    if declare_size {
        enc.set_pledged_src_size(Some(512 << 20)).expect("pledge");
    }
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..512 {
        enc.write_all(&chunk).expect("write");
    }
    enc.finish().expect("finish")
}

/// A zstd bomb that declares its 512 MiB size in its header.
#[cfg(feature = "zstd")]
pub fn zstd_bomb() -> Vec<u8> {
    zstd_bomb_with(true)
}
