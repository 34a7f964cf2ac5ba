//! Helpers the harness-less benchmarks share (`mod support;` in each).

#![allow(dead_code)] // each benchmark uses its own subset

use std::future::Future;
use std::task::{Context, Poll, Waker};

/// Poll a future that must be ready at once (a warm cache hit, an instrumented ready call); the
/// figure is then the call's own path, not an executor's.
pub fn now<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a warm call had to wait"),
    }
}

/// [`now`] for a future pinned where it is built, with no copy of it first (as an executor polls
/// a task in place). A by-value helper copies the future before polling it, and for a larger
/// future that copy can stall on store forwarding for several ns: a cost of the harness that
/// the `instrument` pair must not carry on one side only.
#[macro_export]
macro_rules! now_in_place {
    ($future:expr) => {{
        let mut future = std::pin::pin!($future);
        match std::future::Future::poll(
            future.as_mut(),
            &mut std::task::Context::from_waker(std::task::Waker::noop()),
        ) {
            std::task::Poll::Ready(output) => output,
            std::task::Poll::Pending => panic!("a warm call had to wait"),
        }
    }};
}

/// A small, seeded generator (xorshift64*): the same stream on every machine.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A uniform float in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
