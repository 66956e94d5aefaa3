//! What the domain layer answers when it refuses or fails. It knows nothing of HTTP:
//! `crate::error` maps each kind to a status in one place.

use ringfence_store::StoreError;

/// The cause of an internal failure, kept whole for the log.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or breaks a rule; the message says which, for the caller.
    #[error("{0}")]
    Invalid(String),
    #[error("not found")]
    NotFound,
    /// The request contradicts what is stored (a version already taken, a state that forbids it).
    #[error("{0}")]
    Conflict(String),
    #[error("larger than {0} bytes")]
    TooLarge(u64),
    /// A proof (signature, token, session) did not hold. Says nothing more, on purpose.
    #[error("authentication required")]
    Unauthenticated,
    /// The caller is known and may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// A bound on what callers may make the server hold was reached; nothing was changed.
    #[error("{what}; retry later")]
    Bounded { what: &'static str, retry_after_secs: u64 },
    /// Anything else: logged with its whole source chain, never shown to the caller.
    #[error("internal error")]
    Internal(#[source] Cause),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn internal(cause: impl Into<Cause>) -> Self {
        Error::Internal(cause.into())
    }

    pub fn invalid(message: impl std::fmt::Display) -> Self {
        Error::Invalid(message.to_string())
    }
}

/// The whole chain of causes, outermost first, for the log.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => Error::Conflict(what),
            StoreError::NotFound => Error::NotFound,
            StoreError::TooLarge { limit } => Error::TooLarge(limit),
            StoreError::Refused(why) => Error::Invalid(why),
            StoreError::HashMismatch { expected, actual } => {
                Error::Invalid(format!("content hash is {actual}, expected {expected}"))
            }
            other => Error::internal(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_failures_keep_their_cause_and_refusals_their_message() {
        let e = Error::from(StoreError::Io(std::io::Error::other("disk on fire")));
        assert_eq!(e.to_string(), "internal error");
        let cause = std::error::Error::source(&e).map(|c| c.to_string()).unwrap_or_default();
        assert!(cause.contains("disk on fire"), "{cause}");
        assert!(matches!(Error::from(StoreError::Refused("too many".into())), Error::Invalid(m) if m == "too many"));
        assert!(matches!(Error::from(StoreError::Conflict("taken".into())), Error::Conflict(m) if m == "taken"));
    }
}
