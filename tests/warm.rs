//! `Layered::warm` over a long key list: memory stays flat (alone in its own test binary, so
//! the process's peak memory is this test's).

#![cfg(target_os = "linux")]

use std::time::Duration;

use layercache::{Layered, LoadOptions, MemoryCache};

/// The process's peak resident memory (`VmHWM`), in KiB.
fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Every load of a warm used to stay in memory until the whole list was done (a finished task
/// is kept until joined): 1,000,000 keys peaked at ~690 MB. Finished loads are reaped as it
/// goes now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_a_long_key_list_keeps_memory_flat() {
    const KEYS: u64 = 200_000;
    let cache: Layered<u64> = Layered::single(
        MemoryCache::builder()
            .max_entries(1_000)
            .build()
            .expect("l1"),
    )
    .build()
    .expect("layered");
    let before = peak_kib();
    let report = cache
        .warm(
            (0..KEYS).map(|i| format!("document:{i}")),
            |key: String| async move { Ok::<_, std::io::Error>(key.len() as u64) },
            8,
            LoadOptions::ttl(Duration::from_secs(60)),
        )
        .await
        .expect("warm");
    assert_eq!(report.loaded, KEYS as usize);
    assert_eq!(report.failed, 0);
    let grown_mib = peak_kib().saturating_sub(before) / 1024;
    println!("warm of {KEYS} keys: peak memory grew by {grown_mib} MiB");
    assert!(
        grown_mib < 40,
        "peak memory grew by {grown_mib} MiB for {KEYS} keys"
    );
}
