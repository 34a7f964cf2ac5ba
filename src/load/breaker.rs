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

/// When the circuit breaker of a layer opens and for how long. Defaults: open after 5 failures
/// within 10 s (or, if set, a failure rate over at least 10 calls in the window), stay open 1 s,
/// then let one probe through.
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
    /// (0–1) of them failed.
    pub fn failure_rate(mut self, rate: f64, min_calls: u32) -> Self {
        self.failure_rate = Some((rate.clamp(0.0, 1.0), min_calls.max(1)));
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
    pub fn break_duration(mut self, duration: Duration) -> Self {
        self.break_duration = duration;
        self
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

    /// May a call go to the layer now?
    pub(crate) fn allow(&self) -> Allow {
        if !self.config.enabled {
            return Allow::Yes;
        }
        let mut state = self.lock();
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

    /// Report how a call that was allowed went.
    pub(crate) fn record(&self, allowed: Allow, ok: bool) {
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
