//! Wall-clock milliseconds for entry deadlines, read cheaply.
//!
//! Every cache hit compares an entry's deadlines with the current time. `SystemTime::now()` and
//! its conversion to milliseconds cost ~35 ns on the 2-core benchmark VM, more than a whole
//! quick_cache lookup (~21 ns), so on the hot path we read the CPU's time-stamp counter instead
//! (~10 ns), calibrated by [quanta](https://docs.rs/quanta), scaled to nanoseconds and anchored
//! to the wall clock. Where quanta has chosen the counter (an invariant TSC) we read it with an
//! inlined `RDTSC` ([`read_tsc`], the crate's one `unsafe` block) rather than through quanta's
//! out-of-line `Clock::raw`:
//!
//! * `wall ms = monotonic ms + offset`, where the offset is re-read from `SystemTime` once a
//!   second, so the clock follows NTP adjustments and steps within a second;
//! * quanta calibrates the counter once per process (~0.6 ms here, at most 200 ms on unusual
//!   hardware). That runs on a short-lived background thread started by the first reading, so no
//!   caller waits for it: until it is done — or when no thread can be started, or the CPU has no
//!   invariant counter (quanta then uses the OS clock) — readings come from `SystemTime`.
//!
//! Deadlines are shared across processes through Redis, so the result must stay wall-clock time;
//! a monotonic clock alone would not do.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the wall-clock offset is read again, in ms.
const REANCHOR_EVERY_MS: u64 = 1_000;

static CLOCK: OnceLock<Anchored> = OnceLock::new();
static CALIBRATE: Once = Once::new();

/// Milliseconds since the Unix epoch, now. A clock before 1970 reads as 0.
#[inline]
pub(crate) fn now_ms() -> u64 {
    match CLOCK.get() {
        Some(clock) => clock.now_ms(),
        None => {
            calibrate_in_background();
            system_ms()
        }
    }
}

/// The wall clock in microseconds since the Unix epoch (creation and invalidation times, which
/// are compared across processes and must tell apart events within one millisecond).
///
/// Strictly increasing within this process: each reading is later than the one before, even
/// two in one microsecond or across a step back of the wall clock (an NTP correction). A
/// replica's later write of a key is thereby always the newer one where writes are compared by
/// creation time (Redis keeps the newer of two writes of a key), so it never loses to its own
/// earlier write.
pub(crate) fn now_us() -> u64 {
    static LAST_US: AtomicU64 = AtomicU64::new(0);
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let mut last = LAST_US.load(Ordering::Relaxed);
    loop {
        let next = wall.max(last.saturating_add(1));
        match LAST_US.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// `SystemTime::now()` in milliseconds since the epoch.
pub(crate) fn system_ms() -> u64 {
    to_ms(SystemTime::now())
}

/// `t` in milliseconds since the epoch (0 before it).
#[inline]
pub(crate) fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, duration_ms)
}

/// `t` in microseconds since the epoch (0 before it, saturating).
pub(crate) fn to_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Whole milliseconds of `d`, saturating, without 128-bit arithmetic.
#[inline]
fn duration_ms(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(d.subsec_millis()))
}

/// A start time for measuring how long something takes, read from the calibrated counter
/// when it is ready (a few ns) and from `std::time::Instant` until then.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stopwatch {
    /// A time-stamp counter reading (the clock is calibrated and reads the counter directly).
    Tsc(u64),
    /// A reading of quanta's clock (calibrated, but not on the counter).
    Ticks(&'static Anchored, u64),
    Std(std::time::Instant),
}

/// Set once the calibrated clock reads the time-stamp counter directly; [`TSC_NS_PER_TICK`] is
/// then its scale. Two plain statics, so a stopwatch reads one flag, not the `OnceLock`.
static TSC_READY: AtomicBool = AtomicBool::new(false);
/// Nanoseconds per counter tick, 32.32 fixed point (valid once [`TSC_READY`]).
static TSC_NS_PER_TICK: AtomicU64 = AtomicU64::new(0);

impl Stopwatch {
    /// Now.
    #[inline]
    pub(crate) fn start() -> Self {
        if TSC_READY.load(Ordering::Acquire) {
            return Stopwatch::Tsc(read_tsc());
        }
        Self::start_slow()
    }

    #[cold]
    fn start_slow() -> Self {
        match CLOCK.get() {
            Some(clock) => Stopwatch::Ticks(clock, clock.raw()),
            None => {
                calibrate_in_background();
                Stopwatch::Std(std::time::Instant::now())
            }
        }
    }

    /// Nanoseconds since [`start`](Self::start).
    #[inline]
    pub(crate) fn elapsed_ns(self) -> u64 {
        match self {
            Stopwatch::Tsc(start) => {
                let ticks = read_tsc().saturating_sub(start);
                ticks_as_ns(ticks, TSC_NS_PER_TICK.load(Ordering::Relaxed))
            }
            Stopwatch::Ticks(clock, start) => clock.ticks_to_ns(clock.raw().saturating_sub(start)),
            Stopwatch::Std(start) => u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX),
        }
    }
}

/// `ticks` counter ticks in nanoseconds, given nanoseconds per tick in 32.32 fixed point.
///
/// A timed call's duration goes from this straight into its histogram bucket, so it is on the
/// path that ends every timed call: when both numbers fit in 32 bits (durations under ~1.7 s
/// of a GHz counter, and any counter faster than 1 tick per ns) one 64-bit multiplication does,
/// which measured ~0.8 ns a timed call less than the 128-bit product (`instrument` benchmark).
#[inline]
fn ticks_as_ns(ticks: u64, ns_per_tick: u64) -> u64 {
    if (ticks | ns_per_tick) >> 32 == 0 {
        (ticks * ns_per_tick) >> 32
    } else {
        ((u128::from(ticks) * u128::from(ns_per_tick)) >> 32) as u64
    }
}

/// Start quanta's calibration on its own thread, once per process.
#[cold]
fn calibrate_in_background() {
    CALIBRATE.call_once(|| {
        // If the thread cannot be started, readings simply stay on SystemTime.
        let _ = std::thread::Builder::new()
            .name("layercache-clock".into())
            .spawn(|| {
                let _ = CLOCK.set(Anchored::new());
                if let Some(clock) = CLOCK.get().filter(|clock| clock.direct) {
                    TSC_NS_PER_TICK.store(clock.ns_per_tick, Ordering::Relaxed);
                    TSC_READY.store(true, Ordering::Release);
                }
            });
    });
}

/// The number of ticks [`ms_per_tick`] is measured over: 2^40, about six minutes of a 3 GHz
/// counter, so the result keeps ~12 significant digits.
const TICKS_SAMPLE: u64 = 1 << 40;

/// Milliseconds per tick as a 64-bit binary fraction, from the nanoseconds that
/// [`TICKS_SAMPLE`] ticks take. Saturates for (impossible) counters slower than 1 tick per ms.
fn ms_per_tick(sample_ns: u64) -> u64 {
    let scaled = (u128::from(sample_ns) << 24) / 1_000_000;
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

/// quanta's counter, anchored to the wall clock.
#[derive(Debug)]
pub(crate) struct Anchored {
    clock: quanta::Clock,
    /// quanta reads the CPU's invariant time-stamp counter: read it here, inlined (see
    /// [`read_tsc`]), instead of through quanta's out-of-line `raw()`.
    direct: bool,
    /// The raw counter value all readings are measured from.
    origin: u64,
    /// Milliseconds per counter tick, as a 64-bit binary fraction: `ms = ticks * scale >> 64`.
    /// One multiplication instead of quanta's (not inlined) tick-to-nanosecond conversion and a
    /// division.
    ms_per_tick: u64,
    /// Nanoseconds per tick as a 32.32 fixed-point number.
    ns_per_tick: u64,
    /// Wall-clock ms minus monotonic ms since `origin` (wrapping), as of the last anchoring.
    offset_ms: AtomicU64,
    /// The monotonic ms at which to anchor again.
    next_anchor_ms: AtomicU64,
}

impl Anchored {
    fn new() -> Self {
        let clock = quanta::Clock::new();
        let direct = reads_tsc(&clock);
        let origin = clock.raw();
        let sample_ns = clock.delta_as_nanos(0, TICKS_SAMPLE);
        let ms_per_tick = ms_per_tick(sample_ns);
        // sample_ns / 2^40 ticks, with 32 fractional bits.
        let ns_per_tick = sample_ns >> 8;
        let anchored = Anchored {
            clock,
            direct,
            origin,
            ms_per_tick,
            ns_per_tick,
            offset_ms: AtomicU64::new(0),
            next_anchor_ms: AtomicU64::new(0),
        };
        anchored.anchor(0);
        anchored
    }

    /// A raw counter reading, in quanta's units.
    #[inline(always)]
    fn raw(&self) -> u64 {
        if self.direct {
            read_tsc()
        } else {
            self.clock.raw()
        }
    }

    #[inline]
    fn now_ms(&self) -> u64 {
        // A reading below the origin (a counter not in step across CPUs) counts as the origin.
        let ticks = self.raw().saturating_sub(self.origin);
        let mono = ((u128::from(ticks) * u128::from(self.ms_per_tick)) >> 64) as u64;
        if mono >= self.next_anchor_ms.load(Ordering::Relaxed) {
            return self.anchor(mono);
        }
        mono.wrapping_add(self.offset_ms.load(Ordering::Relaxed))
    }

    #[inline]
    fn ticks_to_ns(&self, ticks: u64) -> u64 {
        ticks_as_ns(ticks, self.ns_per_tick)
    }

    /// Read the wall clock, record its offset from `mono`, and return it.
    #[cold]
    fn anchor(&self, mono: u64) -> u64 {
        let wall = system_ms();
        self.offset_ms
            .store(wall.wrapping_sub(mono), Ordering::Relaxed);
        self.next_anchor_ms
            .store(mono.saturating_add(REANCHOR_EVERY_MS), Ordering::Relaxed);
        wall
    }
}

/// Whether `clock` reads the time-stamp counter itself: quanta chose it only after checking
/// that the CPU has an invariant counter (and has already read it while calibrating), so
/// reading it here is sound.
fn reads_tsc(clock: &quanta::Clock) -> bool {
    cfg!(target_arch = "x86_64") && format!("{clock:?}").contains("Counter(")
}

/// The CPU's time-stamp counter: what quanta's counter clock returns, inlined. quanta's
/// `Clock::raw` is an out-of-line call with a match; inlined, a timed call (two readings) costs
/// ~2.7 ns less on the benchmark VM (`ecosystem/benches/instrument.rs`, BENCHMARKS.md), and a cache hit
/// (one reading) makes one out-of-line call less.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(unsafe_code)]
fn read_tsc() -> u64 {
    // SAFETY: RDTSC reads a register and has no memory effects. It is only reached when quanta
    // chose its counter clock (`reads_tsc`), which it does after finding an invariant TSC and
    // after reading it itself, so the instruction is available and allowed in user mode.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn read_tsc() -> u64 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inlined_counter_reads_what_quanta_reads() {
        let anchored = Anchored::new();
        if !anchored.direct {
            return; // no invariant TSC here: quanta's own clock is used, nothing to compare
        }
        for _ in 0..1_000 {
            let before = read_tsc();
            let theirs = anchored.clock.raw();
            let after = read_tsc();
            assert!(
                before <= theirs && theirs <= after,
                "{before} {theirs} {after}"
            );
        }
    }

    #[test]
    fn the_fast_clock_agrees_with_the_system_clock() {
        let anchored = Anchored::new();
        for _ in 0..50 {
            let before = system_ms();
            let ours = anchored.now_ms();
            let after = system_ms();
            assert!(
                before.saturating_sub(1) <= ours && ours <= after + 1,
                "{before} <= {ours} <= {after}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn ticks_convert_to_milliseconds() {
        // A counter in nanoseconds (quanta's fallback when there is no usable TSC): 1 tick = 1e-6 ms.
        // Readings are re-anchored every second, so being off by a millisecond over a day (the
        // scale is rounded down) is more than enough.
        let mul = |ticks: u64, scale: u64| ((u128::from(ticks) * u128::from(scale)) >> 64) as u64;
        let ns = ms_per_tick(TICKS_SAMPLE);
        assert_eq!(mul(999_999, ns), 0);
        assert_eq!(mul(1_000_001, ns), 1);
        assert_eq!(mul(1_500_000_000, ns), 1_499);
        let day = mul(86_400_000_000_000, ns);
        assert!(day.abs_diff(86_400_000) <= 1, "{day}");
        // A 3 GHz counter: 2^40 ticks take ~366.5 s.
        let ghz3 = ms_per_tick((TICKS_SAMPLE as u128 * 1_000 / 3_000) as u64);
        let day = mul(3_000_000_000 * 86_400, ghz3);
        assert!(day.abs_diff(86_400_000) <= 1, "{day}");
        // A slow counter cannot overflow the scale.
        assert_eq!(ms_per_tick(u64::MAX), u64::MAX);
    }

    #[test]
    fn ticks_convert_to_nanoseconds_on_both_paths() {
        let wide = |ticks: u64, scale: u64| ((u128::from(ticks) * u128::from(scale)) >> 32) as u64;
        // 2.5 GHz (0.4 ns a tick), 1 GHz, 100 MHz (10 ns a tick: the wide path), 1 tick per ns.
        for scale in [1_717_986_918u64, 1 << 32, 10 << 32, (1 << 32) - 1, 0] {
            for ticks in [
                0u64,
                1,
                2_500,
                (1 << 32) - 1,
                1 << 32,
                (1 << 32) + 1,
                1 << 40,
                u64::MAX,
            ] {
                assert_eq!(
                    ticks_as_ns(ticks, scale),
                    wide(ticks, scale),
                    "{ticks} × {scale}"
                );
            }
        }
        assert_eq!(ticks_as_ns(2_500_000_000, 1_717_986_918), 999_999_999);
    }

    #[test]
    fn the_stopwatch_agrees_with_instant() {
        let anchored = Anchored::new();
        let t0 = anchored.raw();
        let std0 = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let ours = anchored.ticks_to_ns(anchored.raw() - t0);
        let theirs = std0.elapsed().as_nanos() as u64;
        assert!(ours.abs_diff(theirs) < 2_000_000, "{ours} vs {theirs}");
    }

    #[test]
    fn it_reanchors_after_a_second() {
        let anchored = Anchored::new();
        let first = anchored.next_anchor_ms.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1_050));
        let ours = anchored.now_ms();
        assert!(anchored.next_anchor_ms.load(Ordering::Relaxed) > first);
        assert!(ours.abs_diff(system_ms()) <= 1);
    }

    #[test]
    fn now_ms_falls_back_then_switches_to_the_fast_clock() {
        let t = now_ms();
        assert!(t.abs_diff(system_ms()) <= 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while CLOCK.get().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "calibration did not finish within 5 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(now_ms().abs_diff(system_ms()) <= 1);
    }
}
