//! Why a session ends a connection, and core errors as MQTT 5 reason codes.
//! MQTT 3.1.1 has no server DISCONNECT: there the same failures simply
//! close the socket (codec.rs lowers nothing for them).

use rmqtt_codec::v5::{DisconnectReasonCode, PublishAckReason, SubscribeAckReason};

use super::codec::CodecError;
use super::topic::TopicError;
use crate::core::CoreError;

/// A failure that ends the connection: the DISCONNECT reason code an MQTT 5
/// client is sent, and a reason string for it and for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {text}")]
pub struct Disconnect {
    /// MQTT 5 reason code.
    pub code: DisconnectReasonCode,
    /// Reason string.
    pub text: String,
}

impl Disconnect {
    /// A failure with a reason code and text.
    pub fn new(code: DisconnectReasonCode, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
        }
    }

    /// The client broke a rule of the protocol.
    pub fn protocol(text: impl Into<String>) -> Self {
        Self::new(DisconnectReasonCode::ProtocolError, text)
    }
}

/// A codec failure as a DISCONNECT.
pub fn from_codec(err: &CodecError) -> Disconnect {
    let code = match err {
        CodecError::TooLarge { .. } => DisconnectReasonCode::PacketTooLarge,
        CodecError::UnsupportedProtocol | CodecError::InvalidClientId => {
            DisconnectReasonCode::ProtocolError
        }
        CodecError::Malformed(_) => DisconnectReasonCode::MalformedPacket,
        CodecError::TopicAliasZero => DisconnectReasonCode::TopicAliasInvalid,
    };
    Disconnect::new(code, err.to_string())
}

/// A refused topic name in a PUBLISH or will.
pub fn from_topic(err: TopicError) -> Disconnect {
    Disconnect::new(DisconnectReasonCode::TopicNameInvalid, err.to_string())
}

/// A core error on a SUBSCRIBE, as the filter's reason code.
pub fn subscribe_reason(err: &CoreError) -> SubscribeAckReason {
    match err {
        CoreError::AccessRefused(_) | CoreError::ResourceLocked(_) => {
            SubscribeAckReason::NotAuthorized
        }
        CoreError::InvalidArgument(_) | CoreError::CommandInvalid(_) => {
            SubscribeAckReason::TopicFilterInvalid
        }
        _ => SubscribeAckReason::ImplementationSpecificError,
    }
}

/// A core error on a PUBLISH, as the PUBACK / PUBREC reason code.
pub fn publish_reason(err: &CoreError) -> PublishAckReason {
    match err {
        CoreError::AccessRefused(_) => PublishAckReason::NotAuthorized,
        _ => PublishAckReason::ImplementationSpecificError,
    }
}
