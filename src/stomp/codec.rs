//! The STOMP 1.0 / 1.1 / 1.2 codec: bytes ⇄ [`Frame`]s and heart-beats,
//! behind tokio-util's `Decoder` and `Encoder`.
//!
//! Hand-written because no crate does the server side (DEPS.md §3):
//! `stomp-parser` parses one *complete* 1.2 frame out of a `Vec<u8>`, with no
//! incremental framing and no 1.0/1.1, and rejects the heart-beat EOL that
//! clients send between frames; `async-stomp` has only a client codec (it
//! decodes server frames) and is EUPL-licensed; `tokio-stomp` and `stomp-rs`
//! are old clients.
//!
//! Choices where the spec leaves room, or where being lenient costs nothing:
//!
//! - An EOL is LF or CR LF in every version, not only 1.2: CONNECT arrives
//!   before the version is known, and a CR before LF means nothing else.
//! - A header line splits at its first `:`, and everything after it is the
//!   value. 1.1 and 1.2 say a `:` inside a value must be sent as `\c`, but a
//!   raw one is accepted in every version: the first colon already ends the
//!   name, so nothing is ambiguous, and RabbitMQ's parser accepts it too.
//!   The encoder always writes `\c` in escaped frames.
//! - Names and values are not trimmed. Only `content-length` tolerates spaces
//!   or tabs around its digits (RabbitMQ strips spaces there too).
//! - Where a CR cannot be escaped (1.0, 1.1, and CONNECT, STOMP and CONNECTED
//!   frames in every version), a value ending in CR is rejected: written back
//!   it would read as a CR LF line end. Likewise the encoder refuses, with
//!   [`CodecError::Unencodable`] and nothing written, a header that the frame
//!   cannot carry (a line break in a 1.0 header, `:` in a 1.0 name) rather
//!   than altering it; the adapter decides what to send instead.
//! - Every EOL between frames is one [`Item::Heartbeat`], including the EOLs
//!   that many clients put after each NUL, so the items do not depend on how
//!   the bytes were split into reads.
//! - After an error the codec's state is unspecified: the adapter answers
//!   with an ERROR frame and closes the connection (STOMP 1.2, "ERROR").
//!
//! The decoder parses each header line as soon as it is complete and drops it
//! from the buffer, and remembers how far it searched an incomplete line or
//! body, so a frame arriving in many reads is scanned once. Limits are checked
//! on every call, before more bytes are buffered: a declared `content-length`
//! above the frame limit fails as soon as its header line is read.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::escape::Escaping;
pub use super::frame::{Command, Frame, Version};

/// What the decoder yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A complete frame.
    Frame(Frame),
    /// A bare EOL between frames (`\n` or `\r\n`): the peer is alive.
    Heartbeat,
}

/// Why bytes could not be decoded, or a frame encoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The frame, or its declared `content-length`, exceeds `max_frame_bytes`.
    #[error("frame larger than {limit} bytes")]
    TooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// The frame has more than `max_headers` headers.
    #[error("more than {limit} headers")]
    TooManyHeaders {
        /// The limit in force.
        limit: usize,
    },
    /// A command or header line, counting its EOL, exceeds `max_line_bytes`.
    #[error("header line longer than {limit} bytes")]
    LineTooLong {
        /// The limit in force.
        limit: usize,
    },
    /// The command line names no STOMP command.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// A header line has no `:`.
    #[error("header line without ':'")]
    MissingColon,
    /// A backslash starts a sequence this version does not define.
    #[error("undefined escape sequence {0:?} in a header")]
    BadEscape(String),
    /// `content-length` is not a decimal number, or on encoding does not
    /// match the body.
    #[error("bad content-length {0:?}")]
    BadContentLength(String),
    /// A command or header is not UTF-8.
    #[error("header is not UTF-8")]
    BadUtf8,
    /// The `content-length` bytes of the body are not followed by NUL.
    #[error("body is not terminated by NUL after content-length bytes")]
    MissingNul,
    /// A header value ends in CR where CR cannot be escaped (see the top of
    /// this file).
    #[error("header value ends in a carriage return")]
    TrailingCr,
    /// The encoder cannot write this header in this version or frame
    /// without changing it.
    #[error("header {0:?} cannot be written unescaped")]
    Unencodable(String),
    /// The transport failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The least the buffer grows by while a body of known size arrives.
const RESERVE_STEP: usize = 64 << 10;

/// How much of an unknown command line its error repeats.
const MAX_SHOWN_COMMAND: usize = 40;

/// Bounds on what one peer may make the decoder buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest frame: command, headers, body and NUL.
    pub max_frame_bytes: usize,
    /// Most headers in one frame.
    pub max_headers: usize,
    /// Longest command or header line, counting its EOL.
    pub max_line_bytes: usize,
}

impl Default for Limits {
    /// 16 MiB frames; 1000 headers as ActiveMQ allows; 16 KiB lines, room
    /// for a bearer token in `passcode` (ActiveMQ allows 10 KiB).
    fn default() -> Limits {
        Limits {
            max_frame_bytes: 16 << 20,
            max_headers: 1000,
            max_line_bytes: 16 << 10,
        }
    }
}

/// The STOMP codec for one connection. Decodes client frames and encodes
/// server frames (and the reverse, which the tests and the fuzzer use).
///
/// Between calls to `decode` the buffer may only grow at its end, as
/// `FramedRead` does: the codec remembers positions in it.
#[derive(Debug, Default)]
pub struct StompCodec {
    version: Version,
    limits: Limits,
    /// The frame being decoded, once its command line has been read.
    partial: Option<Partial>,
    /// How much of the buffer was searched, in vain, for the LF that ends
    /// the current line or the NUL that ends the current body.
    scanned: usize,
}

/// A frame whose command line has been read and dropped from the buffer.
#[derive(Debug)]
struct Partial {
    command: Command,
    headers: Vec<(String, String)>,
    escaping: Escaping,
    /// From the first `content-length` header.
    content_length: Option<usize>,
    /// Bytes of this frame already dropped from the buffer.
    consumed: usize,
    /// The blank line after the headers has been read.
    in_body: bool,
}

impl StompCodec {
    /// A codec with these limits, decoding as 1.0 until told otherwise.
    pub fn new(limits: Limits) -> StompCodec {
        StompCodec {
            limits,
            ..StompCodec::default()
        }
    }

    /// Switches the escaping rules, once CONNECT / CONNECTED have settled
    /// the version. Call it between frames.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    /// The version whose escaping rules are in force.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Writes `frame` to `dst`. Unlike [`Encoder::encode`] it borrows the
    /// frame, so one frame can go to many connections. On error nothing is
    /// written.
    pub fn encode_frame(&self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let start = dst.len();
        let written = write_frame(frame, Escaping::of(self.version, frame.command), dst);
        if written.is_err() {
            dst.truncate(start);
        }
        written
    }

    /// Reads the rest of the frame whose command line was already read.
    fn decode_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, CodecError> {
        let limits = self.limits;
        let Some(partial) = self.partial.as_mut() else {
            return Ok(None);
        };
        while !partial.in_body {
            let Some(line) = find_line(buf, &mut self.scanned, &limits, partial.consumed)? else {
                return Ok(None);
            };
            partial.consumed += line.len;
            if line.content == 0 {
                partial.in_body = true;
                if let Some(length) = partial.content_length {
                    check_body_fits(partial.consumed, length, &limits)?;
                }
            } else {
                if partial.headers.len() >= limits.max_headers {
                    return Err(CodecError::TooManyHeaders {
                        limit: limits.max_headers,
                    });
                }
                let (name, value) = parse_header(&buf[..line.content], partial.escaping)?;
                if partial.content_length.is_none() && name == "content-length" {
                    let length = parse_content_length(&value, &limits)?;
                    check_body_fits(partial.consumed, length, &limits)?;
                    partial.content_length = Some(length);
                }
                partial.headers.push((name, value));
            }
            buf.advance(line.len);
        }

        let body_len = match partial.content_length {
            Some(length) => match buf.get(length) {
                Some(0) => length,
                Some(_) => return Err(CodecError::MissingNul),
                None => {
                    // Grow toward the known size geometrically, so a big body
                    // is not copied read after read, but never by much more
                    // than has arrived: a peer that declares 16 MiB and sends
                    // nothing gets 64 KiB.
                    let wanted = length + 1 - buf.len();
                    buf.reserve(wanted.min(buf.capacity().max(RESERVE_STEP)));
                    return Ok(None);
                }
            },
            None => {
                let from = self.scanned.min(buf.len());
                match find_byte(0, &buf[from..]) {
                    Some(at) => {
                        let nul = from + at;
                        check_body_fits(partial.consumed, nul, &limits)?;
                        nul
                    }
                    None => {
                        self.scanned = buf.len();
                        check_body_fits(partial.consumed, buf.len(), &limits)?;
                        return Ok(None);
                    }
                }
            }
        };
        self.scanned = 0;
        let body = buf.split_to(body_len).freeze();
        buf.advance(1);
        let Some(partial) = self.partial.take() else {
            return Ok(None);
        };
        Ok(Some(Item::Frame(Frame {
            command: partial.command,
            headers: partial.headers,
            body,
        })))
    }
}

impl Decoder for StompCodec {
    type Item = Item;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, CodecError> {
        if self.partial.is_none() {
            match buf.first() {
                None => return Ok(None),
                Some(b'\n') => {
                    buf.advance(1);
                    return Ok(Some(Item::Heartbeat));
                }
                Some(b'\r') => match buf.get(1) {
                    None => return Ok(None),
                    Some(b'\n') => {
                        buf.advance(2);
                        return Ok(Some(Item::Heartbeat));
                    }
                    Some(_) => {}
                },
                Some(_) => {}
            }
            let Some(line) = find_line(buf, &mut self.scanned, &self.limits, 0)? else {
                return Ok(None);
            };
            let text = &buf[..line.content];
            let command = Command::from_bytes(text).ok_or_else(|| {
                // Enough to recognise, too little to flood the ERROR frame.
                let shown = &text[..text.len().min(MAX_SHOWN_COMMAND)];
                CodecError::UnknownCommand(String::from_utf8_lossy(shown).into_owned())
            })?;
            buf.advance(line.len);
            self.partial = Some(Partial {
                command,
                headers: Vec::new(),
                escaping: Escaping::of(self.version, command),
                content_length: None,
                consumed: line.len,
                in_body: false,
            });
        }
        self.decode_frame(buf)
    }

    /// Like the default, but a frame whose header lines were already taken
    /// from the buffer still counts as unfinished.
    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Item>, CodecError> {
        match self.decode(buf)? {
            Some(item) => Ok(Some(item)),
            None if buf.is_empty() && self.partial.is_none() => Ok(None),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed inside a frame",
            )
            .into()),
        }
    }
}

impl Encoder<Frame> for StompCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_frame(&frame, dst)
    }
}

impl Encoder<Item> for StompCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Item, dst: &mut BytesMut) -> Result<(), CodecError> {
        match item {
            Item::Frame(frame) => self.encode_frame(&frame, dst),
            Item::Heartbeat => {
                dst.put_u8(b'\n');
                Ok(())
            }
        }
    }
}

/// A complete line at the start of the buffer.
struct Line {
    /// Bytes before the EOL.
    content: usize,
    /// Bytes including the EOL.
    len: usize,
}

/// Finds the LF ending the line at the start of `buf`, searching only past
/// `scanned`, and checks the line and frame limits either way.
fn find_line(
    buf: &[u8],
    scanned: &mut usize,
    limits: &Limits,
    consumed: usize,
) -> Result<Option<Line>, CodecError> {
    let from = (*scanned).min(buf.len());
    let Some(at) = find_byte(b'\n', &buf[from..]) else {
        *scanned = buf.len();
        // The LF is still to come, so the line will be at least one longer.
        check_line_fits(consumed, buf.len() + 1, limits)?;
        return Ok(None);
    };
    *scanned = 0;
    let lf = from + at;
    check_line_fits(consumed, lf + 1, limits)?;
    let content = if lf > 0 && buf[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    };
    Ok(Some(Line {
        content,
        len: lf + 1,
    }))
}

fn check_line_fits(consumed: usize, line: usize, limits: &Limits) -> Result<(), CodecError> {
    if line > limits.max_line_bytes {
        return Err(CodecError::LineTooLong {
            limit: limits.max_line_bytes,
        });
    }
    if consumed + line > limits.max_frame_bytes {
        return Err(CodecError::TooLarge {
            limit: limits.max_frame_bytes,
        });
    }
    Ok(())
}

/// Fails if `consumed` bytes of headers, a body of `body` bytes and the NUL
/// exceed the frame limit.
fn check_body_fits(consumed: usize, body: usize, limits: &Limits) -> Result<(), CodecError> {
    match consumed.checked_add(body) {
        Some(total) if total < limits.max_frame_bytes => Ok(()),
        _ => Err(CodecError::TooLarge {
            limit: limits.max_frame_bytes,
        }),
    }
}

/// Splits a header line (without its EOL) at the first `:` and unescapes
/// both halves.
fn parse_header(line: &[u8], escaping: Escaping) -> Result<(String, String), CodecError> {
    let line = std::str::from_utf8(line).map_err(|_| CodecError::BadUtf8)?;
    let (name, value) = line.split_once(':').ok_or(CodecError::MissingColon)?;
    if escaping != Escaping::V1_2 && value.ends_with('\r') {
        return Err(CodecError::TrailingCr);
    }
    if escaping == Escaping::Raw || !line.contains('\\') {
        return Ok((name.to_owned(), value.to_owned()));
    }
    Ok((escaping.unescape(name)?, escaping.unescape(value)?))
}

/// The digits of a `content-length` value: decimal, optionally between
/// spaces or tabs (RabbitMQ strips spaces there too).
fn length_digits(value: &str) -> Option<&str> {
    let digits = value.trim_matches([' ', '\t']);
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

/// Reads a decoded `content-length`. A number too big for memory is simply
/// too large.
fn parse_content_length(value: &str, limits: &Limits) -> Result<usize, CodecError> {
    let digits =
        length_digits(value).ok_or_else(|| CodecError::BadContentLength(value.to_owned()))?;
    digits.parse().map_err(|_| CodecError::TooLarge {
        limit: limits.max_frame_bytes,
    })
}

/// Whether the encoder appends `content-length`, after checking one the
/// caller set. MESSAGE and ERROR bodies always get one, so that clients need
/// not search them for NUL; other frames only when the body holds a NUL.
fn adds_content_length(frame: &Frame) -> Result<bool, CodecError> {
    if let Some(value) = frame.header("content-length") {
        return match length_digits(value).and_then(|digits| digits.parse::<usize>().ok()) {
            Some(length) if length == frame.body.len() => Ok(false),
            _ => Err(CodecError::BadContentLength(value.to_owned())),
        };
    }
    Ok(!frame.body.is_empty()
        && (matches!(frame.command, Command::Message | Command::Error)
            || find_byte(0, &frame.body).is_some()))
}

fn write_frame(frame: &Frame, escaping: Escaping, dst: &mut BytesMut) -> Result<(), CodecError> {
    let add_length = adds_content_length(frame)?;
    let headers: usize = frame
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len() + 2)
        .sum();
    // Room for the command, headers, a content-length line, the blank line,
    // the body and NUL; escaping may add a little more.
    dst.reserve(frame.command.as_str().len() + headers + frame.body.len() + 40);
    dst.put_slice(frame.command.as_str().as_bytes());
    dst.put_u8(b'\n');
    for (name, value) in &frame.headers {
        escaping.write(name, true, dst)?;
        dst.put_u8(b':');
        escaping.write(value, false, dst)?;
        dst.put_u8(b'\n');
    }
    if add_length {
        dst.put_slice(b"content-length:");
        put_decimal(frame.body.len(), dst);
        dst.put_u8(b'\n');
    }
    dst.put_u8(b'\n');
    dst.put_slice(&frame.body);
    dst.put_u8(0);
    Ok(())
}

fn put_decimal(mut n: usize, dst: &mut BytesMut) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    dst.put_slice(&digits[start..]);
}

/// The index of the first `needle` in `haystack`, 32 bytes per step (the
/// standard library keeps its `memchr` private). Bodies without
/// `content-length` are searched this way for their NUL.
pub(super) fn find_byte(needle: u8, haystack: &[u8]) -> Option<usize> {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let pattern = LOW * u64::from(needle);
    // The lowest byte of `word` equal to `needle` gets its high bit set;
    // bytes above it may be flagged falsely, so only the lowest flag counts.
    let matches = |word: &[u8; 8]| {
        let x = u64::from_le_bytes(*word) ^ pattern;
        x.wrapping_sub(LOW) & !x & HIGH
    };
    let (blocks, tail) = haystack.as_chunks::<32>();
    for (i, block) in blocks.iter().enumerate() {
        let (words, _) = block.as_chunks::<8>();
        if words.iter().fold(0, |any, word| any | matches(word)) != 0 {
            return words.iter().enumerate().find_map(|(j, word)| {
                let found = matches(word);
                (found != 0).then(|| i * 32 + j * 8 + (found.trailing_zeros() / 8) as usize)
            });
        }
    }
    tail.iter()
        .position(|&b| b == needle)
        .map(|at| blocks.len() * 32 + at)
}

/// The fuzz target (`fuzz/fuzz_targets/stomp.rs`). The input is decoded whole
/// and split in two at a cut it chooses, as reads split it on a socket; both
/// must yield the same items, and every item must survive
/// `decode(encode(item))`. Its second byte picks the version and whether the
/// limits are small enough to be reached.
#[cfg(any(fuzzing, test))]
pub fn fuzz_decode(data: &[u8]) {
    let cut = data
        .first()
        .map_or(0, |b| usize::from(*b) % (data.len() + 1));
    let knobs = data.get(1).copied().unwrap_or(0);
    let version = Version::ALL[usize::from(knobs % 3)];
    let limits = if knobs & 4 == 0 {
        Limits::default()
    } else {
        Limits {
            max_frame_bytes: 200,
            max_headers: 4,
            max_line_bytes: 40,
        }
    };
    let (whole, whole_error) = decode_pieces(version, limits, &[data]);
    let (split, split_error) = decode_pieces(version, limits, &[&data[..cut], &data[cut..]]);
    assert_eq!(
        whole, split,
        "items do not depend on how reads split the bytes"
    );
    assert_eq!(
        whole_error.is_some(),
        split_error.is_some(),
        "nor do errors"
    );
    for item in whole {
        let mut codec = StompCodec::default();
        codec.set_version(version);
        let mut wire = BytesMut::new();
        codec
            .encode(item.clone(), &mut wire)
            .expect("a decoded item re-encodes");
        let again = codec.decode(&mut wire).expect("an encoded item decodes");
        assert_eq!(again, Some(as_encoded(item)), "decode(encode(f)) == f");
        assert!(wire.is_empty(), "an encoded item is exactly one item");
    }
}

/// Feeds `pieces` to one codec in turn, decoding all it can after each.
/// Returns the items, and the error that stopped decoding, if any.
#[cfg(any(fuzzing, test))]
fn decode_pieces(
    version: Version,
    limits: Limits,
    pieces: &[&[u8]],
) -> (Vec<Item>, Option<CodecError>) {
    let mut codec = StompCodec::new(limits);
    codec.set_version(version);
    let (mut buf, mut items) = (BytesMut::new(), Vec::new());
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(error) => return (items, Some(error)),
            }
        }
    }
    (items, None)
}

/// What decoding the encoder's output of `item` gives: the item itself, with
/// the `content-length` header the encoder appends, if it does.
#[cfg(any(fuzzing, test))]
fn as_encoded(item: Item) -> Item {
    match item {
        Item::Frame(frame) if matches!(adds_content_length(&frame), Ok(true)) => {
            let length = frame.body.len().to_string();
            Item::Frame(frame.with_header("content-length", length))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    const V10: Version = Version::V1_0;
    const V11: Version = Version::V1_1;
    const V12: Version = Version::V1_2;

    /// Decodes `input` whole and one byte at a time with `limits`; both must
    /// agree. Returns the items, or the error.
    fn decode_with(
        limits: Limits,
        version: Version,
        input: &[u8],
    ) -> Result<Vec<Item>, CodecError> {
        let (whole, whole_error) = decode_pieces(version, limits, &[input]);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let (bytewise, bytewise_error) = decode_pieces(version, limits, &bytes);
        assert_eq!(whole, bytewise, "whole and byte-at-a-time items differ");
        assert_eq!(
            whole_error.as_ref().map(ToString::to_string),
            bytewise_error.as_ref().map(ToString::to_string),
            "whole and byte-at-a-time errors differ"
        );
        match whole_error {
            Some(error) => Err(error),
            None => Ok(whole),
        }
    }

    fn decode(version: Version, input: &[u8]) -> Result<Vec<Item>, CodecError> {
        decode_with(Limits::default(), version, input)
    }

    /// The one frame that `input` holds, heart-beats aside.
    fn decode_frame(version: Version, input: &[u8]) -> Frame {
        let items = decode(version, input).expect("input decodes");
        let mut frames = items.into_iter().filter_map(|item| match item {
            Item::Frame(frame) => Some(frame),
            Item::Heartbeat => None,
        });
        let frame = frames.next().expect("input holds a frame");
        assert_eq!(frames.next(), None, "input holds one frame");
        frame
    }

    fn decode_error(version: Version, input: &[u8]) -> CodecError {
        decode(version, input).expect_err("input is rejected")
    }

    fn encode(version: Version, frame: &Frame) -> Result<Vec<u8>, CodecError> {
        let mut codec = StompCodec::default();
        codec.set_version(version);
        let mut dst = BytesMut::new();
        codec.encode_frame(frame, &mut dst)?;
        Ok(dst.to_vec())
    }

    fn small_limits() -> Limits {
        Limits {
            max_frame_bytes: 100,
            max_headers: 2,
            max_line_bytes: 16,
        }
    }

    fn header(frame: &Frame, name: &str) -> String {
        frame.header(name).expect("header present").to_owned()
    }

    // The examples of the STOMP 1.2 specification, byte for byte.

    #[test]
    fn connect_from_the_spec_decodes() {
        let frame = decode_frame(
            V10,
            b"CONNECT\naccept-version:1.2\nhost:stomp.github.org\n\n\0",
        );
        assert_eq!(frame.command, Command::Connect);
        assert_eq!(
            frame.headers,
            [
                ("accept-version".to_owned(), "1.2".to_owned()),
                ("host".to_owned(), "stomp.github.org".to_owned())
            ]
        );
        assert!(frame.body.is_empty());
    }

    #[test]
    fn stomp_frame_decodes_like_connect() {
        let frame = decode_frame(
            V10,
            b"STOMP\naccept-version:1.2\nhost:stomp.github.org\n\n\0",
        );
        assert_eq!(frame.command, Command::Stomp);
        assert_eq!(header(&frame, "host"), "stomp.github.org");
    }

    #[test]
    fn send_from_the_spec_keeps_the_newline_before_nul_in_its_body() {
        let frame = decode_frame(
            V12,
            b"SEND\ndestination:/queue/a\ncontent-type:text/plain\n\nhello queue a\n\0",
        );
        assert_eq!(frame.command, Command::Send);
        assert_eq!(header(&frame, "destination"), "/queue/a");
        assert_eq!(header(&frame, "content-type"), "text/plain");
        assert_eq!(frame.body, "hello queue a\n");
    }

    #[test]
    fn the_other_client_frames_from_the_spec_decode() {
        let cases: [(&[u8], Command, &str, &str); 9] = [
            (
                b"SUBSCRIBE\nid:0\ndestination:/queue/foo\nack:client\n\n\0",
                Command::Subscribe,
                "ack",
                "client",
            ),
            (b"UNSUBSCRIBE\nid:0\n\n\0", Command::Unsubscribe, "id", "0"),
            (
                b"ACK\nid:12345\ntransaction:tx1\n\n\0",
                Command::Ack,
                "transaction",
                "tx1",
            ),
            (
                b"NACK\nid:12345\ntransaction:tx1\n\n\0",
                Command::Nack,
                "id",
                "12345",
            ),
            (
                b"BEGIN\ntransaction:tx1\n\n\0",
                Command::Begin,
                "transaction",
                "tx1",
            ),
            (
                b"COMMIT\ntransaction:tx1\n\n\0",
                Command::Commit,
                "transaction",
                "tx1",
            ),
            (
                b"ABORT\ntransaction:tx1\n\n\0",
                Command::Abort,
                "transaction",
                "tx1",
            ),
            (
                b"DISCONNECT\nreceipt:77\n\n\0",
                Command::Disconnect,
                "receipt",
                "77",
            ),
            (
                b"RECEIPT\nreceipt-id:77\n\n\0",
                Command::Receipt,
                "receipt-id",
                "77",
            ),
        ];
        for version in Version::ALL {
            for (input, command, name, value) in cases {
                let frame = decode_frame(version, input);
                assert_eq!(frame.command, command);
                assert_eq!(header(&frame, name), value);
            }
        }
    }

    #[test]
    fn connected_encodes_as_in_the_spec() {
        assert_eq!(
            encode(V12, &Frame::connected(V12)).unwrap(),
            b"CONNECTED\nversion:1.2\n\n\0"
        );
        assert_eq!(
            encode(V11, &Frame::connected(V11)).unwrap(),
            b"CONNECTED\nversion:1.1\n\n\0"
        );
        assert_eq!(
            encode(V10, &Frame::connected(V10)).unwrap(),
            b"CONNECTED\n\n\0"
        );
    }

    #[test]
    fn message_encodes_as_in_the_spec_plus_its_content_length() {
        let frame = Frame::message("/queue/a", "007", "0")
            .with_header("content-type", "text/plain")
            .with_body("hello queue a");
        assert_eq!(
            encode(V12, &frame).unwrap(),
            b"MESSAGE\nsubscription:0\nmessage-id:007\ndestination:/queue/a\n\
              content-type:text/plain\ncontent-length:13\n\nhello queue a\0"
        );
    }

    #[test]
    fn receipt_encodes_as_in_the_spec() {
        assert_eq!(
            encode(V12, &Frame::receipt("message-12345")).unwrap(),
            b"RECEIPT\nreceipt-id:message-12345\n\n\0"
        );
    }

    const SPEC_ERROR: &[u8] = b"ERROR\nreceipt-id:message-12345\ncontent-type:text/plain\n\
        content-length:170\nmessage:malformed frame received\n\nThe message:\n-----\nMESSAGE\n\
        destined:/queue/a\nreceipt:message-12345\n\nHello queue a!\n-----\n\
        Did not contain a destination header, which is REQUIRED\nfor message propagation.\n\0";

    #[test]
    fn error_from_the_spec_decodes_and_encodes_back_to_the_same_bytes() {
        let frame = decode_frame(V12, SPEC_ERROR);
        assert_eq!(frame.command, Command::Error);
        assert_eq!(header(&frame, "message"), "malformed frame received");
        assert_eq!(frame.body.len(), 170);
        assert!(frame.body.starts_with(b"The message:\n-----\nMESSAGE\n"));
        assert_eq!(encode(V12, &frame).unwrap(), SPEC_ERROR);
    }

    #[test]
    fn error_builder_flattens_line_breaks_so_every_version_can_send_it() {
        let frame = Frame::error("unknown command \"FOO\r\n\"", "details\nhere");
        assert_eq!(header(&frame, "message"), "unknown command \"FOO  \"");
        assert_eq!(header(&frame, "content-type"), "text/plain");
        assert_eq!(
            encode(V10, &frame).unwrap(),
            b"ERROR\nmessage:unknown command \"FOO  \"\ncontent-type:text/plain\n\
              content-length:12\n\ndetails\nhere\0"
        );
        assert_eq!(
            encode(V10, &Frame::error("bye", "")).unwrap(),
            b"ERROR\nmessage:bye\n\n\0"
        );
    }

    // Escaping, version by version.

    #[test]
    fn v1_2_unescapes_cr_lf_colon_and_backslash_in_names_and_values() {
        let frame = decode_frame(V12, b"SEND\na\\cb\\\\:x\\r\\n\\cy\\\\z\n\n\0");
        assert_eq!(
            frame.headers,
            [("a:b\\".to_owned(), "x\r\n:y\\z".to_owned())]
        );
    }

    #[test]
    fn v1_1_unescapes_lf_colon_and_backslash_but_not_cr() {
        let frame = decode_frame(V11, b"MESSAGE\na\\cb:x\\n\\cy\\\\z\n\n\0");
        assert_eq!(frame.headers, [("a:b".to_owned(), "x\n:y\\z".to_owned())]);
        assert!(matches!(
            decode_error(V11, b"SEND\na:x\\ry\n\n\0"),
            CodecError::BadEscape(s) if s == "\\r"
        ));
    }

    #[test]
    fn v1_0_leaves_backslashes_alone() {
        let frame = decode_frame(V10, b"SEND\na\\c:x\\n\\ty\\\n\n\0");
        assert_eq!(
            frame.headers,
            [("a\\c".to_owned(), "x\\n\\ty\\".to_owned())]
        );
    }

    #[test]
    fn connect_stomp_and_connected_are_never_unescaped() {
        for version in Version::ALL {
            for command in ["CONNECT", "STOMP", "CONNECTED"] {
                let input = format!("{command}\nlogin:a\\cb\\t\npasscode:p:w\\\n\n\0");
                let frame = decode_frame(version, input.as_bytes());
                assert_eq!(header(&frame, "login"), "a\\cb\\t", "{command} {version}");
                assert_eq!(header(&frame, "passcode"), "p:w\\", "{command} {version}");
            }
        }
    }

    #[test]
    fn an_undefined_escape_is_an_error_in_1_1_and_1_2_only() {
        let input = b"SEND\na:x\\ty\n\n\0";
        assert_eq!(header(&decode_frame(V10, input), "a"), "x\\ty");
        for version in [V11, V12] {
            assert!(matches!(decode_error(version, input), CodecError::BadEscape(s) if s == "\\t"));
        }
    }

    #[test]
    fn encoder_escapes_by_the_same_rules() {
        let frame = Frame::new(Command::Message).with_header("k:\\", "a:b\\c\nd\re");
        assert_eq!(
            encode(V12, &frame).unwrap(),
            b"MESSAGE\nk\\c\\\\:a\\cb\\\\c\\nd\\re\n\n\0"
        );
        assert_eq!(
            encode(V11, &frame).unwrap(),
            b"MESSAGE\nk\\c\\\\:a\\cb\\\\c\\nd\re\n\n\0"
        );
        let plain = Frame::new(Command::Message).with_header("k\\", "a:b\\c\re");
        assert_eq!(
            encode(V10, &plain).unwrap(),
            b"MESSAGE\nk\\:a:b\\c\re\n\n\0"
        );
    }

    #[test]
    fn connected_headers_are_written_unescaped_in_every_version() {
        let frame = Frame::connected(V12)
            .with_header("server", "ferrymq/0.1:x")
            .with_header("session", "s\\1");
        assert_eq!(
            encode(V12, &frame).unwrap(),
            b"CONNECTED\nversion:1.2\nserver:ferrymq/0.1:x\nsession:s\\1\n\n\0"
        );
    }

    #[test]
    fn a_raw_colon_in_a_value_is_accepted_in_every_version() {
        for version in Version::ALL {
            let frame = decode_frame(version, b"SEND\ndestination:/queue/a:b:c\n\n\0");
            assert_eq!(header(&frame, "destination"), "/queue/a:b:c");
        }
    }

    #[test]
    fn a_value_ending_in_cr_is_rejected_where_cr_cannot_be_escaped() {
        let input = b"SEND\na:b\r\r\n\n\0";
        assert!(matches!(decode_error(V10, input), CodecError::TrailingCr));
        assert!(matches!(decode_error(V11, input), CodecError::TrailingCr));
        assert_eq!(header(&decode_frame(V12, input), "a"), "b\r");
        assert!(matches!(
            decode_error(V12, b"CONNECT\na:b\r\r\n\n\0"),
            CodecError::TrailingCr
        ));
    }

    #[test]
    fn encoder_refuses_headers_the_frame_cannot_carry_and_writes_nothing() {
        let cases = [
            (V10, Frame::new(Command::Message).with_header("a", "b\nc")),
            (V10, Frame::new(Command::Message).with_header("a:b", "c")),
            (V10, Frame::new(Command::Message).with_header("a\nb", "c")),
            (V10, Frame::new(Command::Message).with_header("a", "b\r")),
            (V11, Frame::new(Command::Message).with_header("a", "b\r")),
            (V12, Frame::connected(V12).with_header("a", "b\nc")),
            (V12, Frame::connected(V12).with_header("a:b", "c")),
        ];
        for (version, frame) in cases {
            let mut codec = StompCodec::default();
            codec.set_version(version);
            let mut dst = BytesMut::from(&b"earlier bytes"[..]);
            let error = codec
                .encode_frame(&frame, &mut dst)
                .expect_err("unencodable");
            assert!(
                matches!(error, CodecError::Unencodable(_)),
                "{version}: {error}"
            );
            assert_eq!(dst, &b"earlier bytes"[..]);
        }
    }

    // Line ends.

    #[test]
    fn crlf_line_ends_are_accepted_anywhere_in_every_version() {
        for version in Version::ALL {
            for input in [
                &b"SEND\r\ndestination:/queue/a\r\nreceipt:1\r\n\r\nhi\0"[..],
                b"SEND\ndestination:/queue/a\r\nreceipt:1\n\r\nhi\0",
                b"SEND\r\ndestination:/queue/a\nreceipt:1\r\n\nhi\0",
            ] {
                let frame = decode_frame(version, input);
                assert_eq!(frame.command, Command::Send);
                assert_eq!(header(&frame, "destination"), "/queue/a");
                assert_eq!(header(&frame, "receipt"), "1");
                assert_eq!(frame.body, "hi");
            }
        }
    }

    #[test]
    fn a_cr_inside_a_value_is_kept() {
        for version in Version::ALL {
            assert_eq!(
                header(&decode_frame(version, b"SEND\na:b\rc\r\n\n\0"), "a"),
                "b\rc"
            );
        }
    }

    // Headers and bodies.

    #[test]
    fn repeated_headers_keep_wire_order_and_the_first_wins() {
        let frame = decode_frame(V12, b"MESSAGE\nfoo:World\nfoo:Hello\nbar:1\n\n\0");
        assert_eq!(frame.header("foo"), Some("World"));
        assert_eq!(frame.headers.len(), 3);
        assert_eq!(frame.headers[1], ("foo".to_owned(), "Hello".to_owned()));
        assert_eq!(frame.header("baz"), None);
    }

    #[test]
    fn the_first_content_length_wins() {
        let frame = decode_frame(V12, b"SEND\ncontent-length:3\ncontent-length:x\n\na\0c\0");
        assert_eq!(frame.body, &b"a\0c"[..]);
    }

    #[test]
    fn a_content_length_body_may_hold_nul() {
        for version in Version::ALL {
            let frame = decode_frame(version, b"SEND\ncontent-length:5\n\nab\0cd\0");
            assert_eq!(frame.body, &b"ab\0cd"[..]);
        }
    }

    #[test]
    fn without_content_length_the_body_ends_at_the_first_nul() {
        let items = decode(V12, b"SEND\n\nab\0SEND\n\ncd\0").unwrap();
        let bodies: Vec<Bytes> = items
            .into_iter()
            .map(|item| match item {
                Item::Frame(frame) => frame.body,
                Item::Heartbeat => panic!("no heart-beat here"),
            })
            .collect();
        assert_eq!(bodies, ["ab", "cd"]);
    }

    #[test]
    fn content_length_may_have_spaces_around_its_digits() {
        for value in ["2", " 2", "2 ", "\t2", "002"] {
            let input = format!("SEND\ncontent-length:{value}\n\nab\0");
            let frame = decode_frame(V10, input.as_bytes());
            assert_eq!(frame.body, "ab");
            assert_eq!(encode(V10, &frame).unwrap(), input.as_bytes(), "{value:?}");
        }
    }

    #[test]
    fn empty_bodies_decode_with_or_without_content_length() {
        assert!(decode_frame(V12, b"SEND\n\n\0").body.is_empty());
        assert!(
            decode_frame(V12, b"SEND\ncontent-length:0\n\n\0")
                .body
                .is_empty()
        );
    }

    #[test]
    fn a_body_need_not_be_utf8() {
        let frame = decode_frame(V12, b"SEND\n\n\xff\xfe\x01\0");
        assert_eq!(frame.body, &b"\xff\xfe\x01"[..]);
    }

    #[test]
    fn a_decoded_body_shares_the_read_buffer() {
        let mut codec = StompCodec::default();
        let mut buf = BytesMut::from(&b"SEND\ncontent-length:4\n\nbody\0"[..]);
        let start = buf.as_ptr() as usize;
        let Some(Item::Frame(frame)) = codec.decode(&mut buf).unwrap() else {
            panic!("a frame");
        };
        assert_eq!(frame.body.as_ptr() as usize, start + 23);
    }

    // Heart-beats.

    #[test]
    fn eols_between_frames_are_heartbeats() {
        let items = decode(V12, b"\n\r\nSEND\n\nx\0\n\r\n\nDISCONNECT\n\n\0\r\n").unwrap();
        let kinds: Vec<&str> = items
            .iter()
            .map(|item| match item {
                Item::Heartbeat => "beat",
                Item::Frame(frame) => frame.command.as_str(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "beat",
                "beat",
                "SEND",
                "beat",
                "beat",
                "beat",
                "DISCONNECT",
                "beat"
            ]
        );
    }

    #[test]
    fn a_lone_cr_waits_for_its_lf() {
        let mut codec = StompCodec::default();
        let mut buf = BytesMut::from(&b"\r"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"\n");
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(Item::Heartbeat));
        assert!(buf.is_empty());
    }

    #[test]
    fn a_heartbeat_encodes_as_one_lf() {
        let mut dst = BytesMut::new();
        StompCodec::default()
            .encode(Item::Heartbeat, &mut dst)
            .unwrap();
        assert_eq!(dst, &b"\n"[..]);
    }

    #[test]
    fn end_of_stream_is_clean_between_frames_and_an_error_inside_one() {
        let mut codec = StompCodec::default();
        let mut buf = BytesMut::from(&b"SEND\n\nx\0\n"[..]);
        assert!(matches!(
            codec.decode_eof(&mut buf).unwrap(),
            Some(Item::Frame(_))
        ));
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), Some(Item::Heartbeat));
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
        for truncated in [
            &b"SEND\ndestination:/queue/a\n"[..],
            b"SEND\n\nab",
            b"SE",
            b"\r",
        ] {
            let mut codec = StompCodec::default();
            let mut buf = BytesMut::from(truncated);
            assert!(
                matches!(codec.decode_eof(&mut buf), Err(CodecError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof),
                "{truncated:?}"
            );
        }
    }

    // Errors.

    #[test]
    fn an_unknown_command_is_an_error_that_names_it() {
        for (input, name) in [
            (&b"FOO\n\n\0"[..], "FOO"),
            (b"send\n\n\0", "send"),
            (b"SEND \n\n\0", "SEND "),
            (b"\rSEND\n\n\0", "\rSEND"),
            (b"SEND\r\r\n\n\0", "SEND\r"),
            (
                b"SUBSCRIBE-AND-THEN-SOME-MORE-WORDS-AND-MORE\n\n\0",
                "SUBSCRIBE-AND-THEN-SOME-MORE-WORDS-AND-M",
            ),
        ] {
            match decode_error(V12, input) {
                CodecError::UnknownCommand(s) => assert_eq!(s, name),
                other => panic!("{other}"),
            }
        }
    }

    #[test]
    fn a_header_line_without_colon_is_an_error() {
        assert!(matches!(
            decode_error(V12, b"SEND\nnocolon\n\n\0"),
            CodecError::MissingColon
        ));
        assert!(matches!(
            decode_error(V10, b"SEND\na:b\r\r\n\0"),
            CodecError::TrailingCr
        ));
    }

    #[test]
    fn an_empty_name_or_value_is_allowed() {
        let frame = decode_frame(V12, b"SEND\n:\na:\n\n\0");
        assert_eq!(
            frame.headers,
            [
                (String::new(), String::new()),
                ("a".to_owned(), String::new())
            ]
        );
    }

    #[test]
    fn a_content_length_that_is_not_a_number_is_an_error() {
        for value in ["", "x", "-1", "+5", "1 2", "0x10", "٣"] {
            let input = format!("SEND\ncontent-length:{value}\n\n\0");
            match decode_error(V12, input.as_bytes()) {
                CodecError::BadContentLength(s) => assert_eq!(s, value),
                other => panic!("{value:?}: {other}"),
            }
        }
    }

    #[test]
    fn a_content_length_beyond_any_memory_is_too_large() {
        assert!(matches!(
            decode_error(V12, b"SEND\ncontent-length:99999999999999999999999\n\n\0"),
            CodecError::TooLarge { .. }
        ));
    }

    #[test]
    fn a_content_length_over_the_limit_fails_before_the_body_arrives() {
        let limits = Limits {
            max_line_bytes: 40,
            ..small_limits()
        };
        let too_large = |input: &[u8]| {
            let mut codec = StompCodec::new(limits);
            let mut buf = BytesMut::from(input);
            matches!(
                codec.decode(&mut buf),
                Err(CodecError::TooLarge { limit: 100 })
            )
        };
        // Known too large from the header line alone.
        assert!(too_large(b"SEND\ncontent-length:95\n"));
        // 5 + 18 + 1 bytes of lines, 75 of body and NUL: exactly 100.
        let mut input = b"SEND\ncontent-length:75\n\n".to_vec();
        input.extend_from_slice(&[b'x'; 75]);
        input.push(0);
        assert_eq!(input.len(), 100);
        assert_eq!(decode_frame_with(limits, &input).body.len(), 75);
        // One more byte is known too large at the blank line.
        assert!(!too_large(b"SEND\ncontent-length:76\n"));
        assert!(too_large(b"SEND\ncontent-length:76\n\n"));
    }

    fn decode_frame_with(limits: Limits, input: &[u8]) -> Frame {
        match decode_with(limits, V12, input).expect("decodes").pop() {
            Some(Item::Frame(frame)) => frame,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unterminated_body_fails_as_soon_as_it_passes_the_limit() {
        let mut input = b"SEND\n\n".to_vec();
        input.extend_from_slice(&[b'x'; 93]);
        input.push(0);
        assert_eq!(decode_frame_with(small_limits(), &input).body.len(), 93);

        let mut codec = StompCodec::new(small_limits());
        let mut buf = BytesMut::new();
        let endless = b"SEND\n\n".iter().chain(std::iter::repeat(&b'x'));
        for (fed, byte) in endless.enumerate() {
            buf.extend_from_slice(&[*byte]);
            match codec.decode(&mut buf) {
                Ok(None) => assert!(fed < 100, "still buffering after {fed} bytes"),
                Err(CodecError::TooLarge { limit: 100 }) => {
                    assert_eq!(fed + 1, 100, "100 bytes and no NUL yet");
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn an_unterminated_header_block_fails_as_soon_as_it_passes_the_limit() {
        let limits = Limits {
            max_headers: 100,
            ..small_limits()
        };
        let mut input = b"SEND\n".to_vec();
        for _ in 0..20 {
            input.extend_from_slice(b"a:bcdefg\n");
        }
        assert!(matches!(
            decode_with(limits, V12, &input),
            Err(CodecError::TooLarge { limit: 100 })
        ));
    }

    #[test]
    fn too_many_headers_is_an_error() {
        assert_eq!(
            decode_frame_with(small_limits(), b"SEND\na:1\nb:2\n\n\0")
                .headers
                .len(),
            2
        );
        assert!(matches!(
            decode_with(small_limits(), V12, b"SEND\na:1\nb:2\nc:3\n"),
            Err(CodecError::TooManyHeaders { limit: 2 })
        ));
    }

    #[test]
    fn an_overlong_line_fails_before_its_end_arrives() {
        // 16 bytes counting the LF fit; 17 do not.
        assert_eq!(
            header(
                &decode_frame_with(small_limits(), b"SEND\na:0123456789abc\n\n\0"),
                "a"
            ),
            "0123456789abc"
        );
        let mut codec = StompCodec::new(small_limits());
        let mut buf = BytesMut::from(&b"SEND\na:0123456789abcd"[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::LineTooLong { limit: 16 })
        ));
        let mut codec = StompCodec::new(small_limits());
        let mut buf = BytesMut::from(&b"SUBSCRIBE-AND-MORE"[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::LineTooLong { limit: 16 })
        ));
    }

    #[test]
    fn a_body_not_followed_by_nul_is_an_error() {
        assert!(matches!(
            decode_error(V12, b"SEND\ncontent-length:2\n\nabc\0"),
            CodecError::MissingNul
        ));
    }

    #[test]
    fn headers_that_are_not_utf8_are_an_error() {
        for version in Version::ALL {
            assert!(matches!(
                decode_error(version, b"SEND\na:\xff\n\n\0"),
                CodecError::BadUtf8
            ));
            assert!(matches!(
                decode_error(version, b"SEND\n\xc3:b\n\n\0"),
                CodecError::BadUtf8
            ));
        }
        assert!(matches!(
            decode_error(V12, b"SEND\na:\\n\xc3\n\n\0"),
            CodecError::BadUtf8
        ));
        assert_eq!(
            header(
                &decode_frame(V12, "SEND\nclé:é\\cà\n\n\0".as_bytes()),
                "clé"
            ),
            "é:à"
        );
    }

    #[test]
    fn every_error_says_why() {
        let errors = [
            CodecError::TooLarge { limit: 100 },
            CodecError::TooManyHeaders { limit: 2 },
            CodecError::LineTooLong { limit: 16 },
            CodecError::UnknownCommand("FOO".to_owned()),
            CodecError::MissingColon,
            CodecError::BadEscape("\\t".to_owned()),
            CodecError::BadContentLength("x".to_owned()),
            CodecError::BadUtf8,
            CodecError::MissingNul,
            CodecError::TrailingCr,
            CodecError::Unencodable("a".to_owned()),
        ];
        for error in errors {
            assert!(error.to_string().len() > 10, "{error:?}");
        }
    }

    // Encoding.

    #[test]
    fn message_and_error_bodies_get_one_content_length() {
        let message = Frame::message("/queue/a", "1", "0").with_body("hi");
        assert!(
            encode(V12, &message)
                .unwrap()
                .ends_with(b"content-length:2\n\nhi\0")
        );
        let preset = message.with_header("content-length", "2");
        let wire = encode(V12, &preset).unwrap();
        assert_eq!(
            wire.windows(15).filter(|w| w == b"content-length:").count(),
            1
        );
        let empty = Frame::message("/queue/a", "1", "0");
        assert!(
            encode(V12, &empty)
                .unwrap()
                .ends_with(b"destination:/queue/a\n\n\0")
        );
        let send = Frame::new(Command::Send).with_body("hi");
        assert_eq!(encode(V12, &send).unwrap(), b"SEND\n\nhi\0");
    }

    #[test]
    fn a_body_holding_nul_gets_a_content_length_in_any_frame() {
        let send = Frame::new(Command::Send).with_body(&b"a\0b"[..]);
        assert_eq!(
            encode(V12, &send).unwrap(),
            b"SEND\ncontent-length:3\n\na\0b\0"
        );
    }

    #[test]
    fn a_content_length_that_disagrees_with_the_body_is_refused() {
        for value in ["3", "x", ""] {
            let frame = Frame::message("/queue/a", "1", "0")
                .with_header("content-length", value)
                .with_body("hi");
            let mut dst = BytesMut::new();
            let error = StompCodec::default()
                .encode_frame(&frame, &mut dst)
                .unwrap_err();
            assert!(
                matches!(error, CodecError::BadContentLength(_)),
                "{value:?}"
            );
            assert!(dst.is_empty());
        }
    }

    // Incremental decoding.

    #[test]
    fn a_frame_arriving_in_pieces_is_searched_once() {
        let mut codec = StompCodec::default();
        let mut buf = BytesMut::new();
        let mut input = b"SEND\ndestination:".to_vec();
        input.extend_from_slice(&[b'd'; 3000]);
        input.extend_from_slice(b"\n\n");
        input.extend_from_slice(&[b'b'; 64 << 10]);
        input.push(0);
        for (i, piece) in input.chunks(1000).enumerate() {
            buf.extend_from_slice(piece);
            match codec.decode(&mut buf).unwrap() {
                None => assert_eq!(codec.scanned, buf.len(), "piece {i}"),
                Some(Item::Frame(frame)) => {
                    assert_eq!(frame.body.len(), 64 << 10);
                    assert_eq!(header(&frame, "destination").len(), 3000);
                    assert!(buf.is_empty());
                    return;
                }
                Some(Item::Heartbeat) => panic!("no heart-beat here"),
            }
        }
        panic!("the frame never completed");
    }

    #[test]
    fn a_declared_body_size_grows_the_buffer_in_steps_not_at_once() {
        let mut codec = StompCodec::default();
        let mut buf = BytesMut::from(&b"SEND\ncontent-length:1000000\n\nabc"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(
            buf.capacity() >= RESERVE_STEP,
            "capacity {}",
            buf.capacity()
        );
        assert!(
            buf.capacity() < 2 * RESERVE_STEP,
            "capacity {}",
            buf.capacity()
        );
        let mut steps = 0;
        let mut body = 3;
        while body < 1_000_000 {
            let read = (buf.capacity() - buf.len()).min(1_000_000 - body);
            buf.extend_from_slice(&vec![b'x'; read]);
            body += read;
            assert_eq!(codec.decode(&mut buf).unwrap(), None);
            steps += 1;
        }
        assert!(steps <= 6, "{steps} steps to a 1 MB body");
        buf.extend_from_slice(b"\0");
        assert!(
            matches!(codec.decode(&mut buf).unwrap(), Some(Item::Frame(f)) if f.body.len() == 1_000_000)
        );
    }

    #[test]
    fn find_byte_finds_each_position_of_a_block_and_its_tail() {
        for len in 0..80 {
            for at in 0..len {
                let mut haystack = vec![b'a'; len];
                haystack[at] = b'\n';
                if at + 3 < len {
                    haystack[at + 3] = b'\n';
                }
                assert_eq!(find_byte(b'\n', &haystack), Some(at), "len {len} at {at}");
            }
            assert_eq!(find_byte(b'\n', &vec![b'a'; len]), None);
        }
        assert_eq!(find_byte(0x80, &[0x7f, 0x00, 0xff, 0x80]), Some(3));
        assert_eq!(find_byte(0, &[1, 1, 1, 1, 1, 1, 1, 0x01, 0x00]), Some(8));
    }

    // Properties.

    fn tricky_text() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a-c:\\\\\r\n \té\u{0}-]{0,12}").expect("a valid regex")
    }

    fn any_frame() -> impl Strategy<Value = Frame> {
        (
            proptest::sample::select(Command::ALL.to_vec()),
            proptest::collection::vec((tricky_text(), tricky_text()), 0..5),
            proptest::collection::vec(
                proptest::sample::select(vec![0u8, b'\n', b'a', 0xff]),
                0..40,
            ),
        )
            .prop_map(|(command, headers, body)| Frame {
                command,
                headers: headers
                    .into_iter()
                    .filter(|(name, _)| name != "content-length")
                    .collect(),
                body: Bytes::from(body),
            })
    }

    proptest! {
        #[test]
        fn frames_round_trip(frame in any_frame(), version in proptest::sample::select(Version::ALL.to_vec())) {
            match encode(version, &frame) {
                Ok(wire) => {
                    let items = decode(version, &wire).expect("encoded frames decode");
                    prop_assert_eq!(items, vec![as_encoded(Item::Frame(frame))]);
                }
                Err(error) => {
                    prop_assert!(matches!(error, CodecError::Unencodable(_)));
                    prop_assert!(Escaping::of(version, frame.command) != Escaping::V1_2);
                }
            }
        }

        #[test]
        fn the_fuzz_invariants_hold_for_stomp_like_bytes(
            data in proptest::collection::vec(proptest::sample::select(
                b"\0\n\r:\\cnrtx-SENDCONT-LEGHMA0123456789 \xff".to_vec()), 0..200),
            prefix in proptest::sample::select(vec![&b""[..], b"SEND\n", b"MESSAGE\ncontent-length:", b"CONNECT\n"]),
        ) {
            let mut input = prefix.to_vec();
            input.extend_from_slice(&data);
            fuzz_decode(&input);
        }

        #[test]
        fn find_byte_agrees_with_a_plain_search(haystack in proptest::collection::vec(any::<u8>(), 0..80), needle in any::<u8>()) {
            prop_assert_eq!(find_byte(needle, &haystack), haystack.iter().position(|&b| b == needle));
        }
    }

    #[test]
    fn the_committed_fuzz_corpus_replays() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/stomp");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries {
            let path = entry.expect("readable corpus directory").path();
            let data = std::fs::read(&path).expect("readable corpus file");
            fuzz_decode(&data);
        }
    }

    /// `cargo test --release --lib -- --ignored --nocapture codec_throughput`
    ///
    /// Decodes from 64 KiB reads into one reused buffer, as `FramedRead`
    /// does, and encodes into a write buffer drained every 64 frames. Prints
    /// the best of three runs, per second of CPU time.
    #[test]
    #[ignore = "a measurement, not a check; run it in release mode"]
    fn codec_throughput() {
        const FRAMES: usize = 200_000;
        const READ: usize = 64 << 10;
        // Seconds on a CPU for this thread, so that other builds sharing the
        // machine skew the figures less; wall time where that is unknown.
        let cpu_secs = || {
            let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
            let nanos: u64 = stat.split_whitespace().next()?.parse().ok()?;
            Some(nanos as f64 / 1e9)
        };
        let best_of_three = |run: &mut dyn FnMut()| {
            (0..3)
                .map(|_| {
                    let (wall, cpu) = (std::time::Instant::now(), cpu_secs());
                    run();
                    match (cpu, cpu_secs()) {
                        (Some(before), Some(after)) => after - before,
                        _ => wall.elapsed().as_secs_f64(),
                    }
                })
                .fold(f64::INFINITY, f64::min)
        };
        let send = Frame::new(Command::Send)
            .with_header("destination", "/queue/bench")
            .with_header("content-type", "application/octet-stream")
            .with_header("receipt", "r-1")
            .with_body(vec![b'x'; 1024]);
        for (label, frame) in [
            (
                "with content-length",
                send.clone().with_header("content-length", "1024"),
            ),
            ("NUL-terminated", send),
        ] {
            let one = encode(V12, &frame).unwrap();
            let stream = one.repeat(FRAMES);
            let secs = best_of_three(&mut || {
                let mut codec = StompCodec::default();
                codec.set_version(V12);
                let (mut buf, mut decoded) = (BytesMut::with_capacity(READ), 0);
                for read in stream.chunks(READ) {
                    buf.extend_from_slice(read);
                    while let Some(item) = codec.decode(&mut buf).unwrap() {
                        if let Item::Frame(frame) = item {
                            assert_eq!(frame.body.len(), 1024);
                            decoded += 1;
                        }
                    }
                }
                assert_eq!(decoded, FRAMES);
            });
            println!(
                "decode 1 KiB SEND {label}: {:.2}M frames/s, {:.2} GB/s",
                FRAMES as f64 / secs / 1e6,
                stream.len() as f64 / secs / 1e9
            );
        }
        let message = Frame::message("/queue/bench", "m-1", "0")
            .with_header("content-type", "application/octet-stream")
            .with_body(vec![b'x'; 1024]);
        let mut codec = StompCodec::default();
        codec.set_version(V12);
        let mut dst = BytesMut::new();
        let secs = best_of_three(&mut || {
            for i in 0..FRAMES {
                codec.encode_frame(&message, &mut dst).unwrap();
                if i % 64 == 63 {
                    dst.clear();
                }
            }
        });
        println!(
            "encode 1 KiB MESSAGE: {:.2}M frames/s",
            FRAMES as f64 / secs / 1e6
        );
    }
}
