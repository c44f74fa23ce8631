//! The crate's one error type.

use std::fmt;
use std::path::Path;

/// A boxed error that can cross threads, as `http_body` and `tower` use.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A specialised `Result` whose error is this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Reading or writing the cache directory failed.
    Io,
    /// The body being stored or passed through failed.
    Body,
    /// Stored bytes no longer match the digest they were stored under.
    Integrity,
    /// A stored record could not be encoded or decoded.
    Record,
    /// The body ended before, or ran past, the length it announced.
    Length,
    /// The entry was not stored because its body did not complete.
    Incomplete,
    /// The argument given cannot be used (for example a response that cannot be recorded).
    InvalidInput,
    /// The body is longer than the store keeps
    /// ([`max_body_size`](crate::StreamingManagerBuilder::max_body_size)).
    TooLarge,
    /// The bodies being stored at once take all of the store's
    /// [`max_size`](crate::StreamingManagerBuilder::max_size): this one is not stored.
    NoRoom,
    /// The storage does not do what was asked (a [`Storage`](crate::storage::Storage)
    /// that keeps no notes).
    Unsupported,
    /// As many of these as the store takes at once are under way (listings of entries):
    /// ask again later.
    Busy,
}

impl ErrorKind {
    fn describe(self) -> &'static str {
        match self {
            ErrorKind::Io => "cache I/O failed",
            ErrorKind::Body => "body failed",
            ErrorKind::Integrity => "stored content does not match its digest",
            ErrorKind::Record => "cache record is unusable",
            ErrorKind::Length => "body length differs from its Content-Length",
            ErrorKind::Incomplete => "body did not complete, entry not stored",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::TooLarge => "body longer than the store keeps",
            ErrorKind::NoRoom => "no room in the store for another body being stored",
            ErrorKind::Unsupported => "not supported by this storage",
            ErrorKind::Busy => "as many of these as the store takes at once are under way",
        }
    }
}

/// An error from the cache: what failed ([`Error::kind`]), on what (a path or a key), and why
/// ([`std::error::Error::source`]).
pub struct Error {
    kind: ErrorKind,
    subject: Option<Box<str>>,
    source: Option<BoxError>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind) -> Self {
        Error {
            kind,
            subject: None,
            source: None,
        }
    }

    pub(crate) fn io(err: std::io::Error, path: &Path) -> Self {
        Error::new(ErrorKind::Io)
            .with_subject(path.display().to_string())
            .with_source(err)
    }

    pub(crate) fn body(err: impl Into<BoxError>) -> Self {
        let err = err.into();
        // A body error that already is ours (a tee over a cached body) keeps its kind.
        match err.downcast::<Error>() {
            Ok(ours) => *ours,
            Err(other) => Error::new(ErrorKind::Body).with_boxed_source(other),
        }
    }

    /// An error of the same kind that says the same, for another party to hold (an
    /// `Error` is not `Clone`: its source is boxed).
    pub(crate) fn retold(&self) -> Self {
        Error::new(self.kind).with_subject(self.to_string())
    }

    pub(crate) fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into().into_boxed_str());
        self
    }

    pub(crate) fn with_source(self, source: impl Into<BoxError>) -> Self {
        self.with_boxed_source(source.into())
    }

    fn with_boxed_source(mut self, source: BoxError) -> Self {
        self.source = Some(source);
        self
    }

    /// An error of `kind` caused by `source`: how an implementation of
    /// [`Storage`](crate::storage::Storage) outside this crate reports its failures.
    ///
    /// ```
    /// use http_cache_streaming::{Error, ErrorKind};
    ///
    /// let refused = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "bucket policy");
    /// let error = Error::other(ErrorKind::Io, refused);
    /// assert!(error.is_io());
    /// assert!(std::error::Error::source(&error).is_some());
    /// ```
    pub fn other(kind: ErrorKind, source: impl Into<BoxError>) -> Self {
        Error::new(kind).with_source(source)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The path or key the failure concerns, when there is one.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// True when the cache directory could not be read or written.
    pub fn is_io(&self) -> bool {
        self.kind == ErrorKind::Io
    }

    /// True when the body being stored or served failed, or ended short or long.
    pub fn is_body(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Body | ErrorKind::Length | ErrorKind::Incomplete
        )
    }

    /// True when stored bytes failed their digest check.
    pub fn is_integrity(&self) -> bool {
        self.kind == ErrorKind::Integrity
    }
}

/// An I/O failure: [`ErrorKind::Io`], with the I/O error as its source.
impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Self {
        Error::new(ErrorKind::Io).with_source(error)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind);
        if let Some(subject) = &self.subject {
            d.field("subject", subject);
        }
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.describe())?;
        if let Some(subject) = &self.subject {
            write!(f, " ({subject})")?;
        }
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_kind_subject_and_cause() {
        let err = Error::io(
            std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
            Path::new("/c/x"),
        );
        assert_eq!(err.to_string(), "cache I/O failed (/c/x): gone");
        assert!(err.is_io());
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn body_error_keeps_our_kind() {
        let inner = Error::new(ErrorKind::Integrity);
        let err = Error::body(inner);
        assert!(err.is_integrity());
        let err = Error::body("boom");
        assert_eq!(err.kind(), ErrorKind::Body);
        assert_eq!(err.to_string(), "body failed: boom");
    }

    #[test]
    fn error_is_send_sync_static() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Error>();
    }
}
