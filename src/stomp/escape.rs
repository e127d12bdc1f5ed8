//! Header escaping, which is what differs between STOMP versions.
//!
//! STOMP 1.2 "Value Encoding": in every frame but CONNECT and CONNECTED,
//! `\r`, `\n`, `\c` and `\\` stand for CR, LF, `:` and a backslash, in names
//! and values alike, and any other backslash sequence is a fatal error. 1.1
//! has the same rules without `\r`; 1.0 has no escaping at all.

use bytes::{BufMut, BytesMut};

use super::codec::CodecError;
use super::frame::{Command, Version};

/// How one frame's header names and values are escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Escaping {
    /// No escaping: 1.0, and CONNECT / STOMP / CONNECTED in every version.
    Raw,
    /// `\n`, `\c`, `\\`.
    V1_1,
    /// `\r`, `\n`, `\c`, `\\`.
    V1_2,
}

impl Escaping {
    /// The rules for a `command` frame once `version` is in force.
    pub(super) fn of(version: Version, command: Command) -> Escaping {
        if !command.escapes_headers() {
            return Escaping::Raw;
        }
        match version {
            Version::V1_0 => Escaping::Raw,
            Version::V1_1 => Escaping::V1_1,
            Version::V1_2 => Escaping::V1_2,
        }
    }

    /// Turns a raw name or value from the wire into text. Escapes are
    /// ASCII, so the UTF-8 that the line was checked to be stays valid.
    pub(super) fn unescape(self, raw: &str) -> Result<String, CodecError> {
        let first = match self {
            Escaping::Raw => None,
            Escaping::V1_1 | Escaping::V1_2 => raw.find('\\'),
        };
        let Some(first) = first else {
            return Ok(raw.to_owned());
        };
        let mut out = String::with_capacity(raw.len());
        out.push_str(&raw[..first]);
        let mut rest = &raw[first..];
        while let Some(at) = rest.find('\\') {
            out.push_str(&rest[..at]);
            let mut sequence = rest[at + 1..].chars();
            let decoded = match (sequence.next(), self) {
                (Some('n'), _) => '\n',
                (Some('c'), _) => ':',
                (Some('\\'), _) => '\\',
                (Some('r'), Escaping::V1_2) => '\r',
                (Some(other), _) => return Err(CodecError::BadEscape(format!("\\{other}"))),
                (None, _) => return Err(CodecError::BadEscape("\\".to_owned())),
            };
            out.push(decoded);
            rest = sequence.as_str();
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Writes a header name (`is_name`) or value, escaped. Fails, having
    /// written nothing, when these rules cannot carry the text: a line break
    /// in a raw header or a `:` in a raw name; and a value ending in CR
    /// wherever CR has no escape, since it would read back as a CR LF line end.
    pub(super) fn write(
        self,
        text: &str,
        is_name: bool,
        dst: &mut BytesMut,
    ) -> Result<(), CodecError> {
        let bytes = text.as_bytes();
        let trailing_cr = !is_name && bytes.last() == Some(&b'\r');
        match self {
            Escaping::Raw => {
                if trailing_cr || bytes.contains(&b'\n') || (is_name && bytes.contains(&b':')) {
                    return Err(CodecError::Unencodable(text.to_owned()));
                }
                dst.put_slice(bytes);
            }
            Escaping::V1_1 | Escaping::V1_2 => {
                if trailing_cr && self == Escaping::V1_1 {
                    return Err(CodecError::Unencodable(text.to_owned()));
                }
                let mut copied = 0;
                for (at, &byte) in bytes.iter().enumerate() {
                    let sequence: &[u8] = match byte {
                        b'\\' => b"\\\\",
                        b'\n' => b"\\n",
                        b':' => b"\\c",
                        b'\r' if self == Escaping::V1_2 => b"\\r",
                        _ => continue,
                    };
                    dst.put_slice(&bytes[copied..at]);
                    dst.put_slice(sequence);
                    copied = at + 1;
                }
                dst.put_slice(&bytes[copied..]);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Escaping; 3] = [Escaping::Raw, Escaping::V1_1, Escaping::V1_2];

    fn written(escaping: Escaping, text: &str, is_name: bool) -> Result<String, CodecError> {
        let mut dst = BytesMut::new();
        escaping.write(text, is_name, &mut dst)?;
        Ok(String::from_utf8(dst.to_vec()).expect("escaping keeps UTF-8"))
    }

    #[test]
    fn each_version_and_command_has_its_rules() {
        for version in Version::ALL {
            for command in [Command::Connect, Command::Stomp, Command::Connected] {
                assert_eq!(Escaping::of(version, command), Escaping::Raw);
            }
        }
        assert_eq!(Escaping::of(Version::V1_0, Command::Send), Escaping::Raw);
        assert_eq!(
            Escaping::of(Version::V1_1, Command::Message),
            Escaping::V1_1
        );
        assert_eq!(Escaping::of(Version::V1_2, Command::Error), Escaping::V1_2);
    }

    #[test]
    fn unescaping_follows_each_version() {
        /// Raw text; as 1.2, 1.1 and 1.0 read it (`None`: an error).
        type Case = (
            &'static str,
            Option<&'static str>,
            Option<&'static str>,
            &'static str,
        );
        let cases: [Case; 8] = [
            ("plain", Some("plain"), Some("plain"), "plain"),
            ("a\\nb", Some("a\nb"), Some("a\nb"), "a\\nb"),
            ("a\\cb", Some("a:b"), Some("a:b"), "a\\cb"),
            ("a\\\\b", Some("a\\b"), Some("a\\b"), "a\\\\b"),
            ("a\\rb", Some("a\rb"), None, "a\\rb"),
            ("\\\\n", Some("\\n"), Some("\\n"), "\\\\n"),
            ("a\\tb", None, None, "a\\tb"),
            ("a\\", None, None, "a\\"),
        ];
        for (raw, v12, v11, v10) in cases {
            assert_eq!(Escaping::V1_2.unescape(raw).ok().as_deref(), v12, "{raw:?}");
            assert_eq!(Escaping::V1_1.unescape(raw).ok().as_deref(), v11, "{raw:?}");
            assert_eq!(Escaping::Raw.unescape(raw).unwrap(), v10, "{raw:?}");
        }
    }

    #[test]
    fn an_undefined_escape_names_the_sequence() {
        for (raw, sequence) in [
            ("x\\ty", "\\t"),
            ("x\\C", "\\C"),
            ("x\\", "\\"),
            ("\\é", "\\é"),
        ] {
            for escaping in [Escaping::V1_1, Escaping::V1_2] {
                match escaping.unescape(raw) {
                    Err(CodecError::BadEscape(s)) => assert_eq!(s, sequence),
                    other => panic!("{raw:?}: {other:?}"),
                }
            }
        }
        assert!(matches!(
            Escaping::V1_1.unescape("\\r"),
            Err(CodecError::BadEscape(s)) if s == "\\r"
        ));
    }

    #[test]
    fn non_ascii_text_passes_through() {
        for escaping in ALL {
            assert_eq!(
                escaping.unescape("é\\\\ü").unwrap(),
                if escaping == Escaping::Raw {
                    "é\\\\ü"
                } else {
                    "é\\ü"
                }
            );
        }
    }

    #[test]
    fn escaping_follows_each_version() {
        let text = "a:b\\c\nd\re";
        assert_eq!(
            written(Escaping::V1_2, text, false).unwrap(),
            "a\\cb\\\\c\\nd\\re"
        );
        assert_eq!(
            written(Escaping::V1_1, text, false).unwrap(),
            "a\\cb\\\\c\\nd\re"
        );
        assert!(written(Escaping::Raw, text, false).is_err());
        assert_eq!(
            written(Escaping::Raw, "a:b\\c\re", false).unwrap(),
            "a:b\\c\re"
        );
        assert_eq!(written(Escaping::V1_2, "k:\\", true).unwrap(), "k\\c\\\\");
    }

    #[test]
    fn what_a_version_cannot_carry_is_refused() {
        let refused = [
            (Escaping::Raw, "a\nb", false),
            (Escaping::Raw, "a\nb", true),
            (Escaping::Raw, "a:b", true),
            (Escaping::Raw, "b\r", false),
            (Escaping::V1_1, "b\r", false),
        ];
        for (escaping, text, is_name) in refused {
            let mut dst = BytesMut::new();
            let error = escaping.write(text, is_name, &mut dst).unwrap_err();
            assert!(
                matches!(error, CodecError::Unencodable(_)),
                "{escaping:?} {text:?}"
            );
            assert!(dst.is_empty());
        }
        // A name is followed by ':', so a CR at its end is unambiguous.
        assert_eq!(written(Escaping::Raw, "a\r", true).unwrap(), "a\r");
        assert_eq!(written(Escaping::V1_1, "a\rb", false).unwrap(), "a\rb");
    }

    proptest! {
        #[test]
        fn escaping_round_trips(
            text in "[a-c:\\\\\r\n \té\u{0}-]{0,16}",
            is_name in any::<bool>(),
        ) {
            for escaping in ALL {
                let mut dst = BytesMut::new();
                match escaping.write(&text, is_name, &mut dst) {
                    Ok(()) => {
                        let wire = std::str::from_utf8(&dst).expect("escaping keeps UTF-8");
                        prop_assert_eq!(escaping.unescape(wire).unwrap(), text.clone());
                    }
                    Err(_) => prop_assert!(escaping != Escaping::V1_2),
                }
            }
        }
    }
}
