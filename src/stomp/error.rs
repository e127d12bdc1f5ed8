//! Why a STOMP frame failed, as the ERROR frame says it: a short `message`
//! header (RabbitMQ's wording, which clients and their users know) and a
//! readable body. Core errors are mapped here and nowhere else.

use super::codec::CodecError;
use super::destination::DestinationError;
use super::properties::BadHeader;
use crate::core::{AuthError, CoreError};

/// An error to report in an ERROR frame, after which the connection closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StompError {
    /// The `message` header: a few words.
    pub message: String,
    /// The body: what happened and, where it helps, what to do instead.
    pub details: String,
}

impl StompError {
    /// An error with a summary and details.
    pub fn new(message: impl Into<String>, details: impl Into<String>) -> StompError {
        StompError {
            message: message.into(),
            details: details.into(),
        }
    }

    /// A frame lacks a header it must have.
    pub fn missing_header(command: &str, header: &str) -> StompError {
        StompError::new(
            "Missing header",
            format!("{command} frames must include a '{header}' header"),
        )
    }

    /// A header's value is unusable.
    pub fn invalid_header(header: &str, value: &str, why: &str) -> StompError {
        StompError::new(
            "Invalid header",
            format!("'{header}' header {value:?} {why}"),
        )
    }
}

/// The one mapping from core errors to ERROR frames. The message names
/// the AMQP condition, as RabbitMQ's STOMP adapter writes it, so that an
/// operator reads the same words whichever protocol tripped over it.
pub fn from_core(err: &CoreError) -> StompError {
    let message = match err {
        CoreError::NotFound(_) => "not_found",
        CoreError::PreconditionFailed(_) | CoreError::InvalidArgument(_) => "precondition_failed",
        CoreError::AccessRefused(_) => "access_refused",
        CoreError::ResourceLocked(_) => "resource_locked",
        CoreError::NotImplemented(_) => "not_implemented",
        CoreError::CommandInvalid(_) => "command_invalid",
        CoreError::Storage(_) => {
            return StompError::new("internal_error", "storage failure");
        }
    };
    StompError::new(message, err.to_string())
}

impl From<CoreError> for StompError {
    fn from(err: CoreError) -> StompError {
        from_core(&err)
    }
}

impl From<DestinationError> for StompError {
    fn from(err: DestinationError) -> StompError {
        let message = match err {
            DestinationError::Unknown(_) => "Unknown destination",
            DestinationError::Invalid(..) => "Invalid destination",
        };
        StompError::new(message, err.to_string())
    }
}

impl From<BadHeader> for StompError {
    fn from(err: BadHeader) -> StompError {
        StompError::new("Invalid header", err.to_string())
    }
}

impl From<&AuthError> for StompError {
    fn from(err: &AuthError) -> StompError {
        let details = match err {
            AuthError::BadCredentials => "Access refused: bad login or passcode".to_owned(),
            AuthError::NotFromHere(user) => {
                format!("Access refused: user '{user}' can only connect from localhost")
            }
            AuthError::VHostRefused { user, vhost } => {
                format!("Access refused: user '{user}' may not use virtual host '{vhost}'")
            }
        };
        StompError::new("Bad CONNECT", details)
    }
}

/// Input the codec could not read.
pub fn from_codec(err: &CodecError) -> StompError {
    let message = match err {
        CodecError::TooLarge { .. }
        | CodecError::TooManyHeaders { .. }
        | CodecError::LineTooLong { .. } => "Frame too large",
        CodecError::UnknownCommand(_) => "Bad command",
        _ => "Malformed frame",
    };
    StompError::new(message, err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_errors_keep_their_explanation() {
        let e = from_core(&CoreError::NotFound("no queue 'q' in vhost '/'".into()));
        assert_eq!(e.message, "not_found");
        assert!(e.details.contains("no queue 'q'"), "{}", e.details);
        let e = from_core(&CoreError::Storage("disk on fire".into()));
        assert_eq!(e.details, "storage failure", "internals stay internal");
    }

    #[test]
    fn codec_errors_say_what_was_wrong() {
        assert_eq!(
            from_codec(&CodecError::UnknownCommand("FOO".into())).message,
            "Bad command"
        );
        assert_eq!(
            from_codec(&CodecError::TooLarge { limit: 10 }).message,
            "Frame too large"
        );
        assert_eq!(
            from_codec(&CodecError::MissingNul).message,
            "Malformed frame"
        );
    }
}
