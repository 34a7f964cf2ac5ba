//! zstd compression with reused contexts.
//!
//! Creating a zstd context costs more than compressing a kilobyte with it, so each codec keeps a
//! small pool of compressors and decompressors (with its dictionary already loaded) and reuses them.

use std::io;
use std::sync::{Mutex, PoisonError};

/// How many idle contexts of each kind a codec keeps.
const POOL_LIMIT: usize = 16;

/// A pool of zstd contexts for one level and dictionary.
pub(crate) struct Zstd {
    level: i32,
    dictionary: Option<Vec<u8>>,
    compressors: Mutex<Vec<zstd::bulk::Compressor<'static>>>,
    decompressors: Mutex<Vec<zstd::bulk::Decompressor<'static>>>,
}

impl std::fmt::Debug for Zstd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zstd")
            .field("level", &self.level)
            .field("dictionary_bytes", &self.dictionary.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

impl Zstd {
    pub(crate) fn new(level: i32, dictionary: Option<Vec<u8>>) -> io::Result<Self> {
        let zstd = Zstd {
            level,
            dictionary,
            compressors: Mutex::new(Vec::new()),
            decompressors: Mutex::new(Vec::new()),
        };
        // Fail at build time, not on the first value, if the level or dictionary is unusable.
        let c = zstd.new_compressor()?;
        let d = zstd.new_decompressor()?;
        zstd.put_compressor(c);
        zstd.put_decompressor(d);
        Ok(zstd)
    }

    fn new_compressor(&self) -> io::Result<zstd::bulk::Compressor<'static>> {
        match &self.dictionary {
            Some(dict) => zstd::bulk::Compressor::with_dictionary(self.level, dict),
            None => zstd::bulk::Compressor::new(self.level),
        }
    }

    fn new_decompressor(&self) -> io::Result<zstd::bulk::Decompressor<'static>> {
        match &self.dictionary {
            Some(dict) => zstd::bulk::Decompressor::with_dictionary(dict),
            None => zstd::bulk::Decompressor::new(),
        }
    }

    fn put_compressor(&self, c: zstd::bulk::Compressor<'static>) {
        let mut pool = self
            .compressors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if pool.len() < POOL_LIMIT {
            pool.push(c);
        }
    }

    fn put_decompressor(&self, d: zstd::bulk::Decompressor<'static>) {
        let mut pool = self
            .decompressors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if pool.len() < POOL_LIMIT {
            pool.push(d);
        }
    }

    pub(crate) fn has_dictionary(&self) -> bool {
        self.dictionary.is_some()
    }

    /// Compresses `raw` into a new buffer.
    pub(crate) fn compress(&self, raw: &[u8]) -> io::Result<Vec<u8>> {
        let pooled = self
            .compressors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut c = match pooled {
            Some(c) => c,
            None => self.new_compressor()?,
        };
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(raw.len()));
        let result = c.compress_to_buffer(raw, &mut out);
        // A context that failed mid-frame is dropped rather than reused.
        if result.is_ok() {
            self.put_compressor(c);
        }
        result.map(|_| out)
    }

    /// Decompresses `frame` into a buffer of exactly `raw_len` bytes. Never allocates more than
    /// `raw_len` (which the caller has checked against its limit), whatever the zstd frame header
    /// claims; output that would not fit is an error.
    pub(crate) fn decompress(&self, frame: &[u8], raw_len: usize) -> io::Result<Vec<u8>> {
        let pooled = self
            .decompressors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut d = match pooled {
            Some(d) => d,
            None => self.new_decompressor()?,
        };
        let mut out = Vec::with_capacity(raw_len);
        let result = d.decompress_to_buffer(frame, &mut out);
        if result.is_ok() {
            self.put_decompressor(d);
        }
        let written = result?;
        if written != raw_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("decompressed to {written} bytes, the frame says {raw_len}"),
            ));
        }
        Ok(out)
    }
}
