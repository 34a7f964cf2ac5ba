//! A circuit breaker for a remote layer (L2).
//!
//! * **Closed**: calls go through; failures are counted in a window. When the failures reach the
//!   threshold — a count, or a rate over a minimum number of calls — the circuit opens.
//! * **Open**: the layer is skipped (L1 and the loader still serve) for the break duration.
//! * **Half-open**: one probe call goes through; success closes the circuit, failure opens it
//!   again. A probe whose caller vanished without reporting is replaced after a break duration.
//!
//! Unlike FusionCache's breaker, one error does not trip it, and it probes before closing.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use metrics::Gauge;

/// The longest break: a year (longer would overflow the clock arithmetic, and means the same).
const MAX_BREAK: Duration = Duration::from_secs(365 * 24 * 3600);

/// When the circuit breaker of a layer opens and for how long. Defaults: open after 5 failures
/// within 10 s (or, if set, a failure rate over at least `min_calls` calls in the window), stay
/// open 500 ms, then let one probe through. A layer that reports a new connection
/// ([`Cache::connections`](crate::Cache::connections)) is probed at once.
///
/// A failure is a call that did not reach the layer or got no answer in time (a timeout, a lost
/// connection). An error the server answered with (`OOM` from a full Redis, `READONLY`,
/// `LOADING`, `NOPERM`) and a value the codec refused are not failures: the server is up, and a
/// full Redis still serves every value it holds.
///
/// ```
/// use std::time::Duration;
/// use layercache::BreakerConfig;
///
/// let breaker = BreakerConfig::default()
///     .failure_threshold(3)
///     .failure_rate(0.5, 20)
///     .window(Duration::from_secs(5))
///     .break_duration(Duration::from_millis(500));
/// # let _ = breaker;
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct BreakerConfig {
    failure_threshold: u32,
    failure_rate: Option<(f64, u32)>,
    window: Duration,
    break_duration: Duration,
    enabled: bool,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            failure_rate: None,
            window: Duration::from_secs(10),
            break_duration: Duration::from_millis(500),
            enabled: true,
        }
    }
}

impl BreakerConfig {
    /// Open after this many failures within the window (default 5; at least 1).
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.failure_threshold = failures.max(1);
        self
    }

    /// Also open when at least `min_calls` calls were made in the window and this fraction
    /// (0–1; values outside are clamped) of them failed. A NaN rate is refused with
    /// [`Error::Config`](crate::Error::Config) when the cache is built.
    pub fn failure_rate(mut self, rate: f64, min_calls: u32) -> Self {
        let rate = if rate.is_nan() {
            rate
        } else {
            rate.clamp(0.0, 1.0)
        };
        self.failure_rate = Some((rate, min_calls.max(1)));
        self
    }

    /// The window failures are counted in (default 10 s).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// How long the circuit stays open before a probe (default 500 ms: a recovered Redis is used
    /// again within about half a second, at the cost of one probe call per half second while
    /// it is down).
    ///
    /// Anything over a year (up to `Duration::MAX`) counts as a year.
    pub fn break_duration(mut self, duration: Duration) -> Self {
        self.break_duration = duration.min(MAX_BREAK);
        self
    }

    /// Settings that cannot be honoured: [`Error::Config`](crate::Error::Config).
    pub(crate) fn check(&self) -> crate::Result<()> {
        match self.failure_rate {
            Some((rate, _)) if rate.is_nan() => Err(crate::Error::config(
                "the breaker's failure_rate must be a fraction from 0 to 1, not NaN",
            )),
            _ => Ok(()),
        }
    }

    /// Never open: always call the layer.
    pub fn disabled(mut self) -> Self {
        self.enabled = false;
        self
    }
}

/// The state of a layer's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// The layer is skipped.
    Open,
    /// One probe call is allowed, to see whether the layer is back.
    HalfOpen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Allow {
    Yes,
    Probe,
    No,
}

#[derive(Debug)]
struct State {
    circuit: CircuitState,
    window_start: Instant,
    failures: u32,
    calls: u32,
    open_until: Instant,
    probe_started: Option<Instant>,
    /// The layer's connection count last seen.
    connections: u64,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    config: BreakerConfig,
    state: Mutex<State>,
    gauge: Gauge,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig, gauge: Gauge) -> Self {
        gauge.set(0.0);
        let now = Instant::now();
        Breaker {
            config,
            state: Mutex::new(State {
                circuit: CircuitState::Closed,
                window_start: now,
                failures: 0,
                calls: 0,
                open_until: now,
                probe_started: None,
                connections: 0,
            }),
            gauge,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn state(&self) -> CircuitState {
        let state = self.lock();
        if state.circuit == CircuitState::Open && Instant::now() >= state.open_until {
            CircuitState::HalfOpen
        } else {
            state.circuit
        }
    }

    /// May a call go to the layer now? `connections` is the layer's connection count
    /// ([`Cache::connections`](crate::Cache::connections)): when it changed while the circuit
    /// was open, the break is cut short and this call is the probe.
    pub(crate) fn allow(&self, connections: u64) -> Allow {
        if !self.config.enabled {
            return Allow::Yes;
        }
        let mut state = self.lock();
        if state.connections != connections {
            state.connections = connections;
            if state.circuit != CircuitState::Closed {
                state.open_until = Instant::now();
                state.probe_started = None;
            }
        }
        match state.circuit {
            CircuitState::Closed => Allow::Yes,
            CircuitState::Open | CircuitState::HalfOpen => {
                let now = Instant::now();
                if now < state.open_until {
                    return Allow::No;
                }
                let probe_alive = state
                    .probe_started
                    .is_some_and(|t| now.duration_since(t) < self.config.break_duration);
                if probe_alive {
                    Allow::No
                } else {
                    state.circuit = CircuitState::HalfOpen;
                    state.probe_started = Some(now);
                    Allow::Probe
                }
            }
        }
    }

    /// Report a call that was allowed but said nothing about the layer's health (a value the
    /// client refused to send): a probe slot it held is freed for the next call.
    pub(crate) fn neutral(&self, allowed: Allow) {
        if self.config.enabled && allowed == Allow::Probe {
            self.lock().probe_started = None;
        }
    }

    /// Report how a call that was allowed went; `connections` is the count the call was
    /// allowed with. A failed probe made before the layer's last new connection leaves the way
    /// open for another probe at once (a pool connects one connection at a time).
    pub(crate) fn record(&self, allowed: Allow, ok: bool, connections: u64) {
        if !self.config.enabled || allowed == Allow::No {
            return;
        }
        let now = Instant::now();
        let mut state = self.lock();
        if allowed == Allow::Probe || state.circuit != CircuitState::Closed {
            if allowed != Allow::Probe {
                // A call let through before the circuit opened: it says nothing new.
                return;
            }
            state.probe_started = None;
            if ok {
                state.circuit = CircuitState::Closed;
                state.window_start = now;
                state.failures = 0;
                state.calls = 0;
                self.gauge.set(0.0);
            } else {
                state.circuit = CircuitState::Open;
                state.open_until = now + self.config.break_duration;
                state.connections = connections;
            }
            return;
        }
        if now.duration_since(state.window_start) > self.config.window {
            state.window_start = now;
            state.failures = 0;
            state.calls = 0;
        }
        state.calls += 1;
        if !ok {
            state.failures += 1;
        }
        let by_count = state.failures >= self.config.failure_threshold;
        let by_rate = self.config.failure_rate.is_some_and(|(rate, min_calls)| {
            state.calls >= min_calls && f64::from(state.failures) / f64::from(state.calls) >= rate
        });
        if by_count || by_rate {
            state.circuit = CircuitState::Open;
            state.open_until = now + self.config.break_duration;
            state.probe_started = None;
            self.gauge.set(1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Allow, Breaker, BreakerConfig, CircuitState};
    use std::time::Duration;

    fn open_breaker() -> Breaker {
        let breaker = Breaker::new(
            BreakerConfig::default()
                .failure_threshold(1)
                .break_duration(Duration::from_secs(3600)),
            metrics::Gauge::noop(),
        );
        let allowed = breaker.allow(0);
        breaker.record(allowed, false, 0);
        assert_eq!(breaker.state(), CircuitState::Open);
        breaker
    }

    #[test]
    fn a_new_connection_cuts_the_break_short() {
        let breaker = open_breaker();
        assert_eq!(breaker.allow(0), Allow::No, "no new connection: wait");
        let probe = breaker.allow(1);
        assert_eq!(probe, Allow::Probe);
        assert_eq!(breaker.allow(1), Allow::No, "one probe at a time");
        breaker.record(probe, true, 1);
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    #[test]
    fn a_probe_that_failed_before_the_last_connection_lets_another_through() {
        let breaker = open_breaker();
        let first = breaker.allow(1);
        assert_eq!(first, Allow::Probe);
        // The pool's other connections come up while the first probe is out; it fails.
        let second = breaker.allow(4);
        assert_eq!(second, Allow::Probe);
        breaker.record(first, false, 1);
        assert_eq!(breaker.state(), CircuitState::Open);
        // The second probe is still out; a further call sees a count newer than the failed one.
        let third = breaker.allow(4);
        assert_eq!(third, Allow::Probe);
        breaker.record(second, true, 4);
        breaker.record(third, true, 4);
        assert_eq!(breaker.state(), CircuitState::Closed);
        // Without a further connection, a failure opens it for the whole break again.
        let allowed = breaker.allow(4);
        breaker.record(allowed, false, 4);
        assert_eq!(breaker.allow(4), Allow::No);
    }
}
