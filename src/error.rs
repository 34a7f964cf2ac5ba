//! The crate's one error type.
//!
//! Every fallible call in `layercache` returns [`Result<T>`], whose error is [`Error`]. The enum is
//! `#[non_exhaustive]`: later versions add variants (for example for new backends) without a breaking
//! change, so match it with a wildcard arm.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A boxed error as returned by user-supplied loaders.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// `Result` with [`Error`] as its error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `layercache`.
///
/// Errors keep their cause: [`std::error::Error::source`] returns the underlying error (for
/// example the error your loader returned), so error reporters such as `anyhow` print the whole chain.
///
/// ```
/// use layercache::Error;
///
/// fn describe(err: &Error) -> &'static str {
///     match err {
///         Error::Loader(_) => "the loader failed",
///         Error::LoaderPanicked { .. } => "the loader panicked",
///         Error::Timeout { .. } => "took too long",
///         _ => "something else",
///     }
/// }
/// # let _ = describe;
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A builder was given settings that do not fit together.
    #[error("invalid configuration: {reason}")]
    Config {
        /// What is wrong, in words.
        reason: String,
    },

    /// The loader passed to `get_or_load` returned an error.
    ///
    /// Every caller that waited on the same load gets a clone of this error; the original error is
    /// reachable through [`SharedError::downcast_ref`] and [`std::error::Error::source`].
    #[error("loader failed")]
    Loader(#[source] SharedError),

    /// The loader panicked. The panic was contained: the process keeps running, nothing was cached,
    /// and the next call for the key runs the loader again.
    #[error("loader panicked: {message}")]
    LoaderPanicked {
        /// The panic payload, when it was a string.
        message: String,
    },

    /// The task that ran the load ended before producing a value (for example because the tokio
    /// runtime was shutting down).
    #[error("the load was cancelled before it completed")]
    LoadCancelled,

    /// The operation did not finish within its time limit.
    #[error("timed out after {after:?}")]
    Timeout {
        /// The limit that was exceeded.
        after: Duration,
    },

    /// `get_or_load` was called outside a tokio runtime; detached loads need one.
    #[error("no tokio runtime is running; get_or_load must be called from within a tokio runtime")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
}

impl Error {
    pub(crate) fn config(reason: impl Into<String>) -> Self {
        Error::Config {
            reason: reason.into(),
        }
    }
}

/// An error shared by every caller that waited on the same load.
///
/// Cloning is cheap (an [`Arc`]). Use [`SharedError::downcast_ref`] to get at the concrete error
/// type your loader returned.
#[derive(Clone)]
pub struct SharedError(Arc<dyn StdError + Send + Sync + 'static>);

impl SharedError {
    pub(crate) fn new(err: BoxError) -> Self {
        SharedError(Arc::from(err))
    }

    /// The loader's error as its concrete type, if it is a `T`.
    ///
    /// ```
    /// # use layercache::SharedError;
    /// # fn check(e: &SharedError) {
    /// if let Some(io) = e.downcast_ref::<std::io::Error>() {
    ///     println!("I/O error: {io}");
    /// }
    /// # }
    /// ```
    pub fn downcast_ref<T: StdError + 'static>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }
}

impl fmt::Debug for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

// `SharedError` is a transparent wrapper: it displays as the loader's error and continues the
// chain with that error's own source, so a report does not print the loader's message twice.
impl StdError for SharedError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}
