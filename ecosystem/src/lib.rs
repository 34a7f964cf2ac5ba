//! Not a library: the package that holds layercache's benchmarks, the tests that run a peer crate
//! beside it, and the examples that need an exporter or a web framework (see its `Cargo.toml`
//! for why they live apart from the root package).
#![forbid(unsafe_code)]
