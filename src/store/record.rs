//! One journal record on disk:
//!
//! ```text
//! [len u32 LE][crc32 u32 LE][seq u64 LE][payload: postcard(Entry)]
//! ```
//! `len` counts seq + payload; the CRC covers seq + payload, so a torn or
//! corrupted record is recognised and recovery stops there.
//!
//! Each segment file opens with `FMQJ` and the format's version (u32 LE),
//! so that a journal written in another format, by a later release or by
//! something else entirely, is refused by name instead of being read as
//! damage (and its tail cut off as torn).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::core::auth::{PermissionSpec, User};
use crate::core::change::{BROKER_WIDE, Change, LogPosition};
use crate::core::exchange::{BindingSpec, ExchangeSpec};
use crate::core::queue::QueueSpec;
use crate::core::sessions::StoredSession;
use crate::core::{ExchangeName, Message, QueueName, RoutingKey, VHostName};

/// Bytes before the payload.
pub const HEADER_LEN: usize = 16;
/// The first bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 4] = *b"FMQJ";
/// The record format this build writes and reads. Raise it with any change
/// a reader of the previous version would misread, and teach recovery to
/// read the older one.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the segment header: the magic and the version.
pub const SEGMENT_HEADER_LEN: usize = 8;
/// No record is larger than this (a 16 MiB body plus headers fits well).
pub const MAX_RECORD: usize = 64 * 1024 * 1024;

/// The durable metadata of every vhost, as of one point in the log.
/// Written at the head of each segment so older segments can be deleted
/// without losing declarations. Retained messages count as metadata here:
/// few, small, and replaced rather than consumed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Definitions {
    /// Per vhost.
    pub vhosts: BTreeMap<VHostName, VHostDefinitions>,
    /// Vhosts deleted at runtime, so a configured one stays deleted.
    pub deleted_vhosts: BTreeSet<VHostName>,
    /// Users changed at runtime; `None` is one deleted. Applied over the
    /// configured users at start.
    pub users: BTreeMap<String, Option<User>>,
}

/// One vhost's durable metadata.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VHostDefinitions {
    /// Durable exchanges.
    pub exchanges: BTreeMap<ExchangeName, ExchangeSpec>,
    /// Durable queues by name, with their incarnation uid.
    pub queues: BTreeMap<QueueName, (u64, QueueSpec)>,
    /// Bindings between durable ends, by `binding_key`, so that replaying
    /// a binding costs the same however many there are.
    pub bindings: BTreeMap<String, BindingSpec>,
    /// Retained messages by routing key.
    pub retained: BTreeMap<RoutingKey, Message>,
    /// Named client sessions that outlive their connections.
    pub sessions: BTreeMap<String, StoredSession>,
    /// Permissions changed at runtime, by user; `None` is one cleared.
    pub permissions: BTreeMap<String, Option<PermissionSpec>>,
}

/// A binding's identity as one string: source, destination, key and
/// arguments (whose `Debug` form is ordered, being a `BTreeMap`).
fn binding_key(b: &BindingSpec) -> String {
    format!(
        "{}\0{:?}\0{}\0{:?}",
        b.source, b.destination, b.key, b.arguments
    )
}

impl Definitions {
    /// The records that follow a checkpoint because its encoding leaves
    /// them out: each stored session's will still waiting.
    pub fn trailer(&self) -> Vec<(VHostName, Change)> {
        self.vhosts
            .iter()
            .flat_map(|(vhost, v)| {
                v.sessions.iter().filter_map(move |(name, s)| {
                    let will = s.will.clone()?;
                    Some((
                        vhost.clone(),
                        Change::SessionWill {
                            name: name.clone(),
                            will: Some(will),
                        },
                    ))
                })
            })
            .collect()
    }

    /// Applies a metadata change; message changes are ignored.
    pub fn apply(&mut self, vhost: &VHostName, change: &Change) {
        match change {
            // Message records, most of the journal, change no definition:
            // their queue's declaration already made the vhost's entry.
            Change::Enqueued { .. } | Change::Delivered { .. } | Change::Removed { .. } => return,
            Change::UserPut(user) if vhost.as_str() == BROKER_WIDE => {
                self.users.insert(user.name.clone(), Some(user.clone()));
                return;
            }
            Change::UserDeleted(name) if vhost.as_str() == BROKER_WIDE => {
                self.users.insert(name.clone(), None);
                for v in self.vhosts.values_mut() {
                    v.permissions.remove(name);
                }
                return;
            }
            Change::VHostDeleted => {
                self.vhosts.remove(vhost);
                self.deleted_vhosts.insert(vhost.clone());
                return;
            }
            _ => {}
        }
        self.deleted_vhosts.remove(vhost);
        let v = self.vhosts.entry(vhost.clone()).or_default();
        match change {
            Change::ExchangeDeclared(spec) => {
                v.exchanges.insert(spec.name.clone(), spec.clone());
            }
            Change::ExchangeDeleted(name) => {
                v.exchanges.remove(name);
                v.bindings.retain(|_, b| {
                    &b.source != name
                        && b.destination
                            != crate::core::exchange::Destination::Exchange(name.clone())
                });
            }
            Change::QueueDeclared { uid, spec } => {
                v.queues.insert(spec.name.clone(), (*uid, spec.clone()));
            }
            Change::QueueDeleted { name, uid } => {
                if v.queues.get(name).is_some_and(|(u, _)| u == uid) {
                    v.queues.remove(name);
                    v.bindings.retain(|_, b| {
                        b.destination != crate::core::exchange::Destination::Queue(name.clone())
                    });
                }
            }
            Change::Bound(spec) => {
                v.bindings
                    .entry(binding_key(spec))
                    .or_insert_with(|| spec.clone());
            }
            Change::Unbound(spec) => {
                v.bindings.remove(&binding_key(spec));
            }
            Change::RetainedSet(message) => {
                v.retained
                    .insert(message.routing_key().clone(), message.clone());
            }
            Change::RetainedCleared(key) => {
                v.retained.remove(key);
            }
            Change::SessionOpened {
                name,
                expiry_secs,
                fresh,
            } => {
                let s = v.sessions.entry(name.clone()).or_default();
                if *fresh {
                    *s = StoredSession::default();
                }
                s.expiry_secs = *expiry_secs;
                s.parked_at_ms = None;
                // Its client is back: a will still waiting is never sent.
                s.will = None;
            }
            Change::SessionParked {
                name,
                expiry_secs,
                at_ms,
            } => {
                let s = v.sessions.entry(name.clone()).or_default();
                s.expiry_secs = *expiry_secs;
                s.parked_at_ms = Some(*at_ms);
            }
            Change::SessionEnded { name } => {
                v.sessions.remove(name);
            }
            Change::SessionId {
                name,
                outbound,
                id,
                held,
            } => {
                if let Some(s) = v.sessions.get_mut(name) {
                    let ids = if *outbound {
                        &mut s.outbound
                    } else {
                        &mut s.inbound
                    };
                    if *held {
                        ids.insert(*id);
                    } else {
                        ids.remove(id);
                    }
                }
            }
            Change::SessionWill { name, will } => {
                if let Some(s) = v.sessions.get_mut(name) {
                    s.will.clone_from(will);
                }
            }
            Change::PermissionSet { user, permission } => {
                v.permissions.insert(user.clone(), Some(permission.clone()));
            }
            Change::PermissionCleared { user } => {
                v.permissions.insert(user.clone(), None);
            }
            Change::Enqueued { .. }
            | Change::Delivered { .. }
            | Change::Removed { .. }
            | Change::VHostCreated
            | Change::VHostDeleted
            | Change::UserPut(_)
            | Change::UserDeleted(_) => {}
        }
    }

    /// The uids of every durable queue.
    pub fn queue_uids(&self) -> HashMap<u64, (VHostName, QueueName)> {
        self.vhosts
            .iter()
            .flat_map(|(v, d)| {
                d.queues
                    .iter()
                    .map(move |(n, (uid, _))| (*uid, (v.clone(), n.clone())))
            })
            .collect()
    }
}

/// What a record holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Entry {
    /// A change in one vhost.
    Change(VHostName, Change),
    /// Every vhost's metadata as of this point.
    Checkpoint(Definitions),
}

/// Why bytes could not be read as a record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// Fewer bytes than the record announces: a torn write.
    #[error("truncated record")]
    Truncated,
    /// The checksum does not match.
    #[error("checksum mismatch")]
    BadChecksum,
    /// The length is impossible.
    #[error("bad record length {0}")]
    BadLength(usize),
    /// The payload does not decode.
    #[error("undecodable payload: {0}")]
    Payload(String),
}

/// What is wrong with a segment file's header.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer bytes than a header: the file was cut while it was created.
    #[error("the segment header is cut short")]
    Truncated,
    /// Not a ferrymq journal segment.
    #[error("not a ferrymq journal segment (it does not start with FMQJ)")]
    NotAJournal,
    /// Written in a format this build does not read.
    #[error("written in journal format {found}; this ferrymq reads format {FORMAT_VERSION}")]
    Version {
        /// The version the file gives.
        found: u32,
    },
}

/// Appends the header that opens a segment file.
pub fn segment_header(out: &mut Vec<u8>) {
    out.extend_from_slice(&SEGMENT_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
}

/// Where the first record of a segment file's bytes starts: after its
/// header, or at 0 in a segment written before segments had one (format
/// 0, whose records are those of format 1). A headerless file never starts
/// with the magic, which as a record length would exceed `MAX_RECORD`.
pub fn segment_start(data: &[u8]) -> Result<usize, HeaderError> {
    let magic_len = SEGMENT_MAGIC.len().min(data.len());
    if data[..magic_len] != SEGMENT_MAGIC[..magic_len] {
        // Format 0 if its first record reads; else something else.
        return match decode(data) {
            Ok(_) => Ok(0),
            Err(_) => Err(HeaderError::NotAJournal),
        };
    }
    let Some(version) = data.get(SEGMENT_MAGIC.len()..SEGMENT_HEADER_LEN) else {
        return Err(HeaderError::Truncated);
    };
    let found = u32::from_le_bytes(version.try_into().expect("4 bytes"));
    if found != FORMAT_VERSION {
        return Err(HeaderError::Version { found });
    }
    Ok(SEGMENT_HEADER_LEN)
}

/// Appends one framed record to `out`.
pub fn encode(out: &mut Vec<u8>, seq: LogPosition, payload: &[u8]) {
    let len = (8 + payload.len()) as u32;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Serialises an entry's payload.
pub fn payload(entry: &Entry) -> Vec<u8> {
    postcard::to_stdvec(entry).expect("core types always serialise")
}

/// Reads one record from the front of `buf`: its sequence number, entry
/// and total length.
pub fn decode(buf: &[u8]) -> Result<(LogPosition, Entry, usize), RecordError> {
    if buf.len() < 8 {
        return Err(RecordError::Truncated);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(8..=MAX_RECORD).contains(&len) {
        return Err(RecordError::BadLength(len));
    }
    let total = 8 + len;
    if buf.len() < total {
        return Err(RecordError::Truncated);
    }
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = &buf[8..total];
    if crc32fast::hash(body) != crc {
        return Err(RecordError::BadChecksum);
    }
    let seq = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
    let entry =
        postcard::from_bytes(&body[8..]).map_err(|e| RecordError::Payload(e.to_string()))?;
    Ok((seq, entry, total))
}

/// Decodes every record in `data` as recovery reads a segment; must never
/// panic, and every record it accepts must encode back to a record that
/// reads the same. With the first byte odd, the rest is first framed as
/// one record with a valid checksum, so that random input reaches the
/// payload's decoding instead of stopping at the checksum
/// (fuzz/fuzz_targets/journal.rs).
#[cfg(any(fuzzing, test))]
pub fn fuzz_decode(data: &[u8]) {
    // The header check reads the same bytes first, as recovery does.
    let _ = segment_start(data);
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mut framed = Vec::new();
    let data = if first & 1 == 1 {
        encode(&mut framed, u64::from(first), rest);
        &framed[..]
    } else {
        rest
    };
    let mut at = 0;
    while let Ok((seq, entry, used)) = decode(&data[at..]) {
        let mut again = Vec::new();
        encode(&mut again, seq, &payload(&entry));
        assert_eq!(
            decode(&again).map(|(s, _, n)| (s, n)),
            Ok((seq, again.len()))
        );
        at += used;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Message, Properties};
    use bytes::Bytes;

    #[test]
    fn a_segment_starts_after_its_header_or_at_0_in_format_0_and_anything_else_is_refused() {
        let mut data = Vec::new();
        segment_header(&mut data);
        let mut record = Vec::new();
        encode(
            &mut record,
            7,
            &payload(&Entry::Checkpoint(Definitions::default())),
        );
        data.extend_from_slice(&record);
        assert_eq!(segment_start(&data), Ok(SEGMENT_HEADER_LEN));
        // Format 0: the same records, no header.
        assert_eq!(segment_start(&record), Ok(0));
        // Cut anywhere inside the header, the empty file included.
        for cut in 0..SEGMENT_HEADER_LEN {
            assert_eq!(
                segment_start(&data[..cut]),
                Err(HeaderError::Truncated),
                "cut at {cut}"
            );
        }
        let mut later = data.clone();
        later[4..8].copy_from_slice(&2u32.to_le_bytes());
        let refused = segment_start(&later).expect_err("format 2 is refused");
        assert_eq!(refused, HeaderError::Version { found: 2 });
        assert_eq!(
            refused.to_string(),
            "written in journal format 2; this ferrymq reads format 1"
        );
        assert_eq!(
            segment_start(b"not a journal at all"),
            Err(HeaderError::NotAJournal)
        );
        let mut misspelt = data.clone();
        misspelt[0] = b'X';
        assert_eq!(segment_start(&misspelt), Err(HeaderError::NotAJournal));
    }

    proptest::proptest! {
        #[test]
        fn random_segment_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            fuzz_decode(&data);
        }
    }

    #[test]
    fn the_fuzzing_frame_reaches_the_payload() {
        // Odd first byte: the rest becomes one well-framed record, here
        // an entry that decodes, so the fuzzer starts past the checksum.
        let mut data = vec![1u8];
        data.extend_from_slice(&payload(&sample()));
        fuzz_decode(&data);
        let mut framed = Vec::new();
        encode(&mut framed, 1, &data[1..]);
        assert!(decode(&framed).is_ok());
    }

    fn sample() -> Entry {
        let props = Properties {
            persistent: true,
            correlation_id: Some("c".into()),
            ..Default::default()
        };
        Entry::Change(
            "/".into(),
            Change::Enqueued {
                queue: 7,
                id: 3,
                message: Message::new(
                    "ex".into(),
                    "k".into(),
                    props,
                    Bytes::from_static(b"body\0bytes"),
                ),
            },
        )
    }

    #[test]
    fn records_round_trip() {
        let mut buf = Vec::new();
        encode(&mut buf, 42, &payload(&sample()));
        let (seq, entry, used) = decode(&buf).expect("decodes");
        assert_eq!((seq, used), (42, buf.len()));
        let Entry::Change(v, Change::Enqueued { queue, id, message }) = entry else {
            panic!("wrong entry")
        };
        assert_eq!((v.as_str(), queue, id), ("/", 7, 3));
        assert_eq!(message.body().as_ref(), b"body\0bytes");
        assert_eq!(message.properties().correlation_id.as_deref(), Some("c"));
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, &payload(&sample()));
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flip at {i}");
        }
    }
}
