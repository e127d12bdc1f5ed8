//! Core errors and protocol violations as AMQP replies: a reply code, its
//! text, and whether it closes the channel or the whole connection.

use crate::core::CoreError;

/// 311: message too large.
pub const CONTENT_TOO_LARGE: u16 = 311;
/// 312: unroutable mandatory message.
pub const NO_ROUTE: u16 = 312;
/// 403.
pub const ACCESS_REFUSED: u16 = 403;
/// 404.
pub const NOT_FOUND: u16 = 404;
/// 405.
pub const RESOURCE_LOCKED: u16 = 405;
/// 406.
pub const PRECONDITION_FAILED: u16 = 406;
/// 320: the broker closes the connection (shutdown, admin).
pub const CONNECTION_FORCED: u16 = 320;
/// 501.
pub const FRAME_ERROR: u16 = 501;
/// 502.
pub const SYNTAX_ERROR: u16 = 502;
/// 503.
pub const COMMAND_INVALID: u16 = 503;
/// 504.
pub const CHANNEL_ERROR: u16 = 504;
/// 505.
pub const UNEXPECTED_FRAME: u16 = 505;
/// 506.
pub const RESOURCE_ERROR: u16 = 506;
/// 530.
pub const NOT_ALLOWED: u16 = 530;
/// 540.
pub const NOT_IMPLEMENTED: u16 = 540;
/// 541.
pub const INTERNAL_ERROR: u16 = 541;

/// Which scope an error closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// channel.close
    Channel,
    /// connection.close
    Connection,
}

/// An error to report to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// What it closes.
    pub scope: Scope,
    /// AMQP reply code.
    pub code: u16,
    /// Reply text, prefixed with the code's name as RabbitMQ writes it.
    pub text: String,
    /// The method that failed, as (class id, method id), or (0, 0).
    pub cause: (u16, u16),
}

impl Reply {
    /// A channel error.
    pub fn channel(code: u16, text: impl Into<String>) -> Self {
        Self {
            scope: Scope::Channel,
            code,
            text: text.into(),
            cause: (0, 0),
        }
    }
    /// A connection error.
    pub fn connection(code: u16, text: impl Into<String>) -> Self {
        Self {
            scope: Scope::Connection,
            code,
            text: text.into(),
            cause: (0, 0),
        }
    }
    /// Names the method that failed.
    pub fn caused_by(mut self, cause: (u16, u16)) -> Self {
        self.cause = cause;
        self
    }
}

/// The one mapping from core errors to AMQP replies.
pub fn reply(err: &CoreError) -> Reply {
    let text = err.to_string();
    match err {
        CoreError::NotFound(_) => Reply::channel(NOT_FOUND, text),
        CoreError::PreconditionFailed(_) | CoreError::InvalidArgument(_) => {
            Reply::channel(PRECONDITION_FAILED, text)
        }
        CoreError::AccessRefused(_) => Reply::channel(ACCESS_REFUSED, text),
        CoreError::ResourceLocked(_) => Reply::channel(RESOURCE_LOCKED, text),
        CoreError::NotImplemented(_) => Reply::connection(NOT_IMPLEMENTED, text),
        CoreError::CommandInvalid(_) => Reply::connection(COMMAND_INVALID, text),
        CoreError::Storage(_) => {
            Reply::connection(INTERNAL_ERROR, "INTERNAL_ERROR - storage failure")
        }
    }
}
