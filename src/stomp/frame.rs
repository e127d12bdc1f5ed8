//! STOMP frames as the codec hands them over: a command, the headers in wire
//! order, and a body that shares the read buffer.

use std::fmt;

use bytes::Bytes;

/// A STOMP protocol version. The codec needs it because header escaping
/// differs between versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Version {
    /// STOMP 1.0: no escaping. The codec starts here, since CONNECT is read
    /// before any version is negotiated (and is never escaped anyway).
    #[default]
    V1_0,
    /// STOMP 1.1: `\n`, `\c` and `\\` escapes.
    V1_1,
    /// STOMP 1.2: 1.1's escapes plus `\r`.
    V1_2,
}

impl Version {
    /// Every version, oldest first.
    pub const ALL: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

    /// The version as `accept-version` and `version` headers spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    /// Reads one entry of an `accept-version` list, or a `version` header.
    pub fn parse(s: &str) -> Option<Version> {
        Version::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A frame's command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    // Client frames.
    /// `CONNECT`: opens the connection.
    Connect,
    /// `STOMP`: the 1.1+ spelling of CONNECT.
    Stomp,
    /// `SEND`: publish a message to a destination.
    Send,
    /// `SUBSCRIBE`: start consuming from a destination.
    Subscribe,
    /// `UNSUBSCRIBE`: stop a subscription.
    Unsubscribe,
    /// `ACK`: settle a message.
    Ack,
    /// `NACK`: reject a message (1.1+).
    Nack,
    /// `BEGIN`: open a transaction.
    Begin,
    /// `COMMIT`: commit a transaction.
    Commit,
    /// `ABORT`: roll a transaction back.
    Abort,
    /// `DISCONNECT`: closes the connection politely.
    Disconnect,
    // Server frames.
    /// `CONNECTED`: the answer to CONNECT / STOMP.
    Connected,
    /// `MESSAGE`: a delivery to a subscription.
    Message,
    /// `RECEIPT`: confirms a client frame that asked for a receipt.
    Receipt,
    /// `ERROR`: says what went wrong; the server then closes the connection.
    Error,
}

impl Command {
    /// Every command, client frames first.
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Connected,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    /// The command as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Connected => "CONNECTED",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// Reads a command line (without its EOL). Commands are case-sensitive.
    pub fn from_bytes(line: &[u8]) -> Option<Command> {
        Some(match line {
            b"CONNECT" => Command::Connect,
            b"STOMP" => Command::Stomp,
            b"SEND" => Command::Send,
            b"SUBSCRIBE" => Command::Subscribe,
            b"UNSUBSCRIBE" => Command::Unsubscribe,
            b"ACK" => Command::Ack,
            b"NACK" => Command::Nack,
            b"BEGIN" => Command::Begin,
            b"COMMIT" => Command::Commit,
            b"ABORT" => Command::Abort,
            b"DISCONNECT" => Command::Disconnect,
            b"CONNECTED" => Command::Connected,
            b"MESSAGE" => Command::Message,
            b"RECEIPT" => Command::Receipt,
            b"ERROR" => Command::Error,
            _ => return None,
        })
    }

    /// Whether a client sends this frame (a server sends the others).
    pub const fn is_client(self) -> bool {
        !matches!(
            self,
            Command::Connected | Command::Message | Command::Receipt | Command::Error
        )
    }

    /// Whether this frame's headers are escaped in 1.1 and 1.2. CONNECT and
    /// CONNECTED never are, so that a 1.0 peer can read them (STOMP 1.2,
    /// "Value Encoding"); STOMP is CONNECT by another name.
    pub const fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One STOMP frame. Headers keep their wire order and repeats: when a name
/// repeats, the first occurrence is the one that counts (STOMP 1.2,
/// "Repeated Header Entries").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command line.
    pub command: Command,
    /// Header names and values, unescaped, in wire order.
    pub headers: Vec<(String, String)>,
    /// The body; when decoded, a slice of the read buffer, not a copy.
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and an empty body.
    pub fn new(command: Command) -> Frame {
        Frame {
            command,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Appends a header. A name already present keeps its first value.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Frame {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the body.
    #[must_use]
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `CONNECTED`, with the `version` header from 1.1 on (a 1.0 client
    /// expects none). The adapter adds `heart-beat`, `server` and `session`.
    pub fn connected(version: Version) -> Frame {
        let frame = Frame::new(Command::Connected);
        match version {
            Version::V1_0 => frame,
            Version::V1_1 | Version::V1_2 => frame.with_header("version", version.as_str()),
        }
    }

    /// `MESSAGE` for a subscription, headers in the order of the spec's
    /// example. The adapter adds `ack` (1.2 client-ack modes), `content-type`
    /// and the message's own headers, and sets the body.
    pub fn message(destination: &str, message_id: &str, subscription: &str) -> Frame {
        Frame::new(Command::Message)
            .with_header("subscription", subscription)
            .with_header("message-id", message_id)
            .with_header("destination", destination)
    }

    /// `RECEIPT` for the client frame that carried `receipt:receipt_id`.
    pub fn receipt(receipt_id: &str) -> Frame {
        Frame::new(Command::Receipt).with_header("receipt-id", receipt_id)
    }

    /// `ERROR` with a short `message` header and, when `details` is not
    /// empty, a plain-text body. Line breaks and other control characters in
    /// `message` become spaces: a one-line summary is what clients show, and
    /// it then encodes in every version, even 1.0 which cannot escape them.
    /// The adapter adds `receipt-id` when the failed frame asked for one.
    pub fn error(message: &str, details: &str) -> Frame {
        let summary: String = message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let frame = Frame::new(Command::Error).with_header("message", summary);
        if details.is_empty() {
            frame
        } else {
            frame
                .with_header("content-type", "text/plain")
                .with_body(Bytes::copy_from_slice(details.as_bytes()))
        }
    }
}
