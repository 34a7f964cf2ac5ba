//! Shared test helpers. Each test file includes what it needs with `mod support;`.
#![allow(dead_code, unreachable_pub)]

pub mod chat;
pub mod frames;
#[cfg(feature = "redis")]
pub mod redis;
