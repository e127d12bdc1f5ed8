//! Why a core operation failed, in core words. Each adapter says it in its
//! own protocol, in one place (amqp/error.rs and its peers).

/// A failed core operation.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CoreError {
    /// The named exchange, queue or vhost does not exist.
    #[error("NOT_FOUND - {0}")]
    NotFound(String),
    /// The request conflicts with existing state (different arguments,
    /// unknown delivery, in use, not empty).
    #[error("PRECONDITION_FAILED - {0}")]
    PreconditionFailed(String),
    /// The user may not do this.
    #[error("ACCESS_REFUSED - {0}")]
    AccessRefused(String),
    /// Another connection holds the resource exclusively.
    #[error("RESOURCE_LOCKED - {0}")]
    ResourceLocked(String),
    /// An argument's value is unusable.
    #[error("PRECONDITION_FAILED - {0}")]
    InvalidArgument(String),
    /// The operation is not supported by this broker.
    #[error("NOT_IMPLEMENTED - {0}")]
    NotImplemented(String),
    /// The request makes no sense (an unknown exchange type).
    #[error("COMMAND_INVALID - {0}")]
    CommandInvalid(String),
    /// The store refused the change.
    #[error("storage failure: {0}")]
    Storage(String),
}

/// Result of a core operation.
pub type CoreResult<T> = Result<T, CoreError>;
