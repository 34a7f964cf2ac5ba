//! Wall-clock milliseconds for entry deadlines, read cheaply.
//!
//! Every cache hit compares an entry's deadlines with the current time. `SystemTime::now()` and
//! its conversion to milliseconds cost ~35 ns on the 2-core benchmark VM, more than a whole
//! quick_cache lookup (~21 ns), so on the hot path we read the CPU's time-stamp counter instead
//! (~10 ns), calibrated by [quanta](https://docs.rs/quanta), scaled to nanoseconds and anchored
//! to the wall clock. Where quanta has chosen the counter (an invariant TSC) we read it with an
//! inlined `RDTSC` ([`read_tsc`], one of the crate's two `unsafe` blocks; the other,
//! [`coarse_ms`], reads the coarse clock below) rather than through quanta's out-of-line
//! `Clock::raw`:
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
//!
//! A hit does not always need the counter. [`Now`] is the clock of one lookup: it is read only
//! when a deadline is compared, and first from the kernel's coarse wall clock
//! (`CLOCK_REALTIME_COARSE`, Linux: a read of the time the kernel stored at its last tick,
//! through the vDSO — no system call). That reading lags the true time by at most a tick
//! (1–10 ms), so it can only say "well before": a deadline more than [`COARSE_MARGIN_MS`] after
//! it has certainly not passed. Only an entry within that margin of a deadline (or a clock
//! whose coarse reading is not cheap, or another OS) reads the counter, so every deadline is
//! still judged to the millisecond. On an Intel VM the counter read inside a lookup cost ~33 ns
//! (BENCHMARKS.md), about what a whole quick_cache hit costs; the coarse read took that hit from
//! 2.4× a raw quick_cache hit to 1.35×.

use std::cell::Cell;
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

/// How far before a deadline a coarse reading still answers for it, in ms. The coarse clock
/// lags by at most one kernel tick (10 ms at the slowest common rate, 100 Hz); the margin
/// leaves room for a tick held up several times over (Linux hands the time-keeping over to
/// another CPU after a few missed ticks).
pub(crate) const COARSE_MARGIN_MS: u64 = 100;

/// Set by the calibration thread when the coarse clock can be read and costs under
/// [`COARSE_MAX_NS`] a reading (the vDSO, not a system call).
static COARSE_READY: AtomicBool = AtomicBool::new(false);

/// The most a coarse reading may cost to be used: a vDSO read takes a few ns; a system call
/// (a sandbox without the vDSO) takes far more than the counter it would replace.
const COARSE_MAX_NS: u64 = 40;

/// The clock of one lookup: read when a deadline is first compared, then kept, so that every
/// comparison of the lookup sees one time. A deadline well ahead is answered from the coarse
/// clock (see the module docs); [`ms`](Self::ms) and any deadline within
/// [`COARSE_MARGIN_MS`] read the precise clock.
///
/// Not `Sync`: made, used and dropped within one synchronous stretch of a call.
#[derive(Debug)]
pub(crate) struct Now {
    /// The precise reading, 0 until read.
    precise: Cell<u64>,
    /// The coarse reading, 0 until read (or when the coarse clock is not used).
    coarse: Cell<u64>,
}

impl Now {
    /// The clock, not read yet.
    #[inline]
    pub(crate) fn lazy() -> Self {
        Now {
            precise: Cell::new(0),
            coarse: Cell::new(0),
        }
    }

    /// A clock fixed at `ms` (a reading the caller already has).
    #[inline]
    #[cfg_attr(not(feature = "quick-cache"), allow(dead_code))]
    pub(crate) fn at(ms: u64) -> Self {
        Now {
            precise: Cell::new(ms.max(1)),
            coarse: Cell::new(0),
        }
    }

    /// Whether it is still before `deadline` (ms since the epoch): `now < deadline`.
    #[inline(always)]
    pub(crate) fn before(&self, deadline: u64) -> bool {
        let precise = self.precise.get();
        if precise != 0 {
            return precise < deadline;
        }
        if COARSE_READY.load(Ordering::Relaxed) {
            let mut coarse = self.coarse.get();
            if coarse == 0 {
                coarse = coarse_ms();
                self.coarse.set(coarse);
            }
            // 0: the coarse clock could not be read; the precise one answers.
            if coarse != 0 && coarse.saturating_add(COARSE_MARGIN_MS) < deadline {
                return true;
            }
        }
        let precise = now_ms().max(1);
        self.precise.set(precise);
        precise < deadline
    }

    /// The precise time in ms since the epoch (read once).
    #[inline]
    pub(crate) fn ms(&self) -> u64 {
        let precise = self.precise.get();
        if precise != 0 {
            return precise;
        }
        let precise = now_ms().max(1);
        self.precise.set(precise);
        precise
    }
}

/// `CLOCK_REALTIME_COARSE` in ms since the epoch; 0 when it cannot be read.
#[cfg(target_os = "linux")]
#[inline]
#[allow(unsafe_code)]
fn coarse_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable `timespec`, the only memory `clock_gettime` writes, and
    // `CLOCK_REALTIME_COARSE` is a clock id Linux has had since 2.6.32 (an unknown one is an
    // `EINVAL` return, not undefined behaviour).
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    match (rc, u64::try_from(ts.tv_sec), u64::try_from(ts.tv_nsec)) {
        (0, Ok(secs), Ok(nanos)) => secs.saturating_mul(1000).saturating_add(nanos / 1_000_000),
        _ => 0,
    }
}

#[cfg(not(target_os = "linux"))]
#[inline]
fn coarse_ms() -> u64 {
    0
}

/// Whether the coarse clock is worth using here: it reads, agrees with the system clock to
/// within its margin, and a reading costs under [`COARSE_MAX_NS`] (the cheapest of a few
/// batches, so a busy moment does not decide it).
fn coarse_usable() -> bool {
    const READS: u32 = 256;
    let first = coarse_ms();
    if first == 0 || first.abs_diff(system_ms()) > COARSE_MARGIN_MS {
        return false;
    }
    let mut best = u128::MAX;
    for _ in 0..8 {
        let start = std::time::Instant::now();
        for _ in 0..READS {
            std::hint::black_box(coarse_ms());
        }
        best = best.min(start.elapsed().as_nanos() / u128::from(READS));
    }
    best < u128::from(COARSE_MAX_NS)
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
                if coarse_usable() {
                    COARSE_READY.store(true, Ordering::Relaxed);
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

    /// Wait (with a deadline) for the calibration thread, which also decides the coarse clock.
    fn calibrated() {
        let _ = now_ms();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while CLOCK.get().is_none() || !CALIBRATE.is_completed() {
            assert!(
                std::time::Instant::now() < deadline,
                "calibration did not finish within 5 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_coarse_clock_trails_the_system_clock_by_less_than_its_margin() {
        for _ in 0..200 {
            let before = system_ms();
            let coarse = coarse_ms();
            let after = system_ms();
            assert!(coarse != 0, "CLOCK_REALTIME_COARSE could not be read");
            assert!(
                coarse <= after + 1 && coarse + COARSE_MARGIN_MS > before,
                "{before} <= {coarse} <= {after}"
            );
        }
    }

    #[test]
    fn a_lookup_clock_never_calls_a_passed_deadline_ahead() {
        calibrated();
        // Where the coarse clock reads at all, take it whatever calibration made of its cost,
        // so that both paths are compared here.
        if coarse_ms() != 0 {
            COARSE_READY.store(true, Ordering::Relaxed);
        }
        // Deadlines from just passed to well beyond the margin: "before" must agree with the
        // system clock read around it, whichever clock answered.
        let mut ahead = 0;
        for round in 0..2_000u64 {
            let offset = round % (2 * COARSE_MARGIN_MS + 10);
            let t0 = system_ms();
            let deadline = t0 + offset;
            let deadline = deadline.saturating_sub(5);
            let now = Now::lazy();
            let before = now.before(deadline);
            let t1 = system_ms();
            if before {
                ahead += 1;
                assert!(deadline + 1 > t0, "{deadline} called ahead at {t0}..{t1}");
            } else {
                assert!(deadline <= t1 + 1, "{deadline} called passed at {t0}..{t1}");
            }
            // The clock, once read, stays one time for the lookup.
            assert_eq!(now.before(deadline), before);
        }
        assert!(ahead > 0);
    }

    #[test]
    fn a_fixed_lookup_clock_compares_exactly() {
        let now = Now::at(1_000);
        assert!(now.before(1_001));
        assert!(!now.before(1_000));
        assert!(!now.before(999));
        assert_eq!(now.ms(), 1_000);
        let lazy = Now::lazy();
        let read = lazy.ms();
        assert!(read.abs_diff(system_ms()) <= 1);
        assert!(lazy.before(read + 1) && !lazy.before(read));
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
