//! Reading the journal back at start-up.
//!
//! Every segment is read in order. A record that fails its checksum or is
//! cut short in the *last* segment is a torn write from a crash: the file
//! is truncated there and nothing before it is lost. The same in an
//! earlier segment is corruption, and start-up stops rather than guess.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::journal::{read_change_at, segment_path};
use super::record::{self, Definitions, Entry, HeaderError, RecordError};
use crate::core::change::{Change, LogPosition, Logged, MemoryWindow};
use crate::core::queue::Restored;
use crate::core::{Broker, Message};

/// A message that was live at the crash. Only a queue's first messages
/// (the journal's `MemoryWindow`) keep their body; the rest are read back
/// from the journal when their turn comes, so recovering a deep backlog
/// costs memory for its index, not its bodies.
#[derive(Debug)]
pub struct LiveMessage {
    /// The message, if kept in memory.
    pub message: Option<Message>,
    /// Its priority.
    pub priority: Option<u8>,
    /// Its per-message TTL, milliseconds.
    pub ttl: Option<u64>,
    /// Its age when read back (TTLs count from its publication).
    pub age: std::time::Duration,
    /// Body bytes.
    pub size: u32,
    /// Times it was handed out.
    pub deliveries: u32,
    /// Where its `Enqueued` record is.
    pub logged: Logged,
}

/// What the journal held.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Durable metadata.
    pub defs: Definitions,
    /// Live messages per queue uid, by id.
    pub messages: HashMap<u64, BTreeMap<u64, LiveMessage>>,
    /// The next sequence number to use.
    pub next_seq: LogPosition,
    /// Live message count per segment.
    pub live: BTreeMap<LogPosition, i64>,
    /// Records read.
    pub records: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Body bytes of the live messages per queue uid, as a queue counts
    /// its ready bytes: what `window` is measured against.
    queue_bytes: HashMap<u64, u64>,
    /// Which messages keep their bodies.
    window: MemoryWindow,
}

/// Why recovery failed.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The file system failed.
    #[error("journal i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A segment file is not in the format this build reads.
    #[error("journal segment {segment}: {error}")]
    Header {
        /// The segment's first sequence number.
        segment: LogPosition,
        /// What is wrong with its header.
        error: HeaderError,
    },
    /// A record before the last segment's tail is damaged.
    #[error("journal segment {segment} is corrupt at byte {offset}: {error}")]
    Corrupt {
        /// The segment's first sequence number.
        segment: LogPosition,
        /// Where the bad record starts.
        offset: usize,
        /// What is wrong with it.
        error: RecordError,
    },
}

fn segments(dir: &Path) -> std::io::Result<Vec<LogPosition>> {
    let mut found = Vec::new();
    if !dir.exists() {
        return Ok(found);
    }
    for e in fs::read_dir(dir)? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_suffix(".seg").and_then(|n| n.parse().ok()) {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Reads every segment in `dir`; the messages in `window` keep their bodies.
pub fn recover(dir: &Path, window: MemoryWindow) -> Result<Recovered, RecoveryError> {
    let mut out = Recovered {
        next_seq: 1,
        window,
        ..Default::default()
    };
    let segs = segments(dir)?;
    for (i, &seg) in segs.iter().enumerate() {
        let path = segment_path(dir, seg);
        let data = fs::read(&path)?;
        let start = match record::segment_start(&data) {
            Ok(start) => start,
            // A crash while the last segment was being created: it holds
            // no record, and the journal's next segment may take its name.
            Err(HeaderError::Truncated) if i + 1 == segs.len() => {
                tracing::warn!(
                    segment = seg,
                    "removing a journal segment cut short in its header"
                );
                fs::remove_file(&path)?;
                continue;
            }
            Err(error) => {
                return Err(RecoveryError::Header {
                    segment: seg,
                    error,
                });
            }
        };
        out.live.entry(seg).or_insert(0);
        let mut at = start;
        while at < data.len() {
            match record::decode(&data[at..]) {
                Ok((seq, entry, used)) => {
                    let logged = Logged {
                        seq,
                        segment: seg,
                        offset: at as u64,
                    };
                    apply(&mut out, logged, entry);
                    out.next_seq = out.next_seq.max(seq + 1);
                    out.records += 1;
                    at += used;
                }
                Err(error) if i + 1 == segs.len() => {
                    tracing::warn!(segment = seg, offset = at, %error, "discarding a torn journal tail");
                    let f = fs::OpenOptions::new().write(true).open(&path)?;
                    f.set_len(at as u64)?;
                    f.sync_all()?;
                    break;
                }
                Err(error) => {
                    return Err(RecoveryError::Corrupt {
                        segment: seg,
                        offset: at,
                        error,
                    });
                }
            }
        }
        out.bytes += at as u64;
    }
    load_window_bodies(dir, &mut out)?;
    Ok(out)
}

/// Replay decides whether a message keeps its body at its `Enqueued`
/// record, before the removals that follow it: a queue whose head was
/// acknowledged before the restart would have its window's bodies on disk
/// only, and drain its backlog one read per message. Their bodies are read
/// back here, each from where its record is.
fn load_window_bodies(dir: &Path, out: &mut Recovered) -> std::io::Result<()> {
    let mut wanted: BTreeMap<LogPosition, Vec<(u64, u64)>> = BTreeMap::new();
    for (&queue, messages) in &out.messages {
        let (mut ahead, mut ahead_bytes) = (0, 0);
        for (&id, m) in messages {
            if !out.window.keeps_body(ahead, ahead_bytes) {
                break;
            }
            if m.message.is_none() {
                wanted
                    .entry(m.logged.segment)
                    .or_default()
                    .push((queue, id));
            }
            ahead += 1;
            ahead_bytes += u64::from(m.size);
        }
    }
    for (segment, messages) in wanted {
        let file = fs::File::open(segment_path(dir, segment))?;
        for (queue, id) in messages {
            let Some(live) = out.messages.get_mut(&queue).and_then(|q| q.get_mut(&id)) else {
                continue;
            };
            if let Some(Change::Enqueued { message, .. }) =
                read_change_at(&file, live.logged.offset)
            {
                live.message = Some(message);
            }
        }
    }
    Ok(())
}

fn apply(out: &mut Recovered, logged: Logged, entry: Entry) {
    let (vhost, change) = match entry {
        Entry::Checkpoint(defs) => {
            out.defs = defs;
            return;
        }
        Entry::Change(v, c) => (v, c),
    };
    out.defs.apply(&vhost, &change);
    match change {
        Change::Enqueued { queue, id, message } => {
            *out.live.entry(logged.segment).or_insert(0) += 1;
            let q = out.messages.entry(queue).or_default();
            let bytes = out.queue_bytes.entry(queue).or_default();
            let keep = out.window.keeps_body(q.len(), *bytes);
            *bytes += message.size() as u64;
            let live = LiveMessage {
                priority: message.properties().priority,
                ttl: message.properties().ttl_millis(),
                age: message.age(),
                size: message.size() as u32,
                message: keep.then_some(message),
                deliveries: 0,
                logged,
            };
            q.insert(id, live);
        }
        Change::Delivered { queue, id } => {
            if let Some(m) = out.messages.get_mut(&queue).and_then(|q| q.get_mut(&id)) {
                m.deliveries += 1;
            }
        }
        Change::Removed { queue, id, segment } => {
            let removed = out.messages.get_mut(&queue).and_then(|q| q.remove(&id));
            if let Some(m) = &removed
                && let Some(bytes) = out.queue_bytes.get_mut(&queue)
            {
                *bytes -= u64::from(m.size);
            }
            if removed.is_some()
                && let Some(n) = out.live.get_mut(&segment)
            {
                *n -= 1;
            }
        }
        Change::QueueDeleted { uid, .. } => {
            out.messages.remove(&uid);
            out.queue_bytes.remove(&uid);
        }
        _ => {}
    }
}

/// Rebuilds the broker's durable state from what was recovered, without
/// journalling it again. Returns the number of messages restored.
pub fn restore(broker: &Arc<Broker>, rec: &mut Recovered) -> usize {
    let mut restored = 0;
    for name in &rec.defs.deleted_vhosts {
        broker.forget_vhost(name.as_str());
    }
    let mut permissions = Vec::new();
    for (vhost_name, defs) in &rec.defs.vhosts {
        let vhost = broker.restore_vhost(vhost_name.as_str());
        for spec in defs.exchanges.values() {
            vhost.restore_exchange(spec.clone());
        }
        for (uid, spec) in defs.queues.values() {
            vhost.restore_queue(spec.clone(), *uid, std::iter::empty());
        }
        for b in defs.bindings.values() {
            vhost.restore_binding(b.clone());
        }
        // Messages last: one that expired while the broker was down is
        // dead-lettered at once, through bindings that must be back.
        for (uid, spec) in defs.queues.values() {
            let messages = rec.messages.remove(uid).unwrap_or_default();
            restored += messages.len();
            let Some(queue) = vhost.queue(spec.name.as_str()) else {
                continue;
            };
            queue.restore(messages.into_iter().map(|(id, m)| Restored {
                id,
                message: m.message,
                priority: m.priority,
                ttl: m.ttl,
                age: m.age,
                size: m.size,
                deliveries: m.deliveries,
                logged: m.logged,
            }));
        }
        for message in defs.retained.values() {
            vhost.retained().retain(message.clone());
        }
        for (name, session) in &defs.sessions {
            vhost.sessions().park_stored(name, session.clone());
        }
        for (user, spec) in &defs.permissions {
            permissions.push((user.clone(), vhost_name.to_string(), spec.clone()));
        }
    }
    broker.users.restore(&rec.defs.users, &permissions);
    restored
}

/// Recovers, logs what it took, and returns the state.
pub fn recover_logged(dir: &Path, window: MemoryWindow) -> Result<Recovered, RecoveryError> {
    let started = Instant::now();
    let rec = recover(dir, window)?;
    tracing::info!(
        records = rec.records,
        bytes = rec.bytes,
        seconds = started.elapsed().as_secs_f64(),
        "journal recovered"
    );
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::change::ChangeLog;
    use crate::core::queue::QueueSpec;
    use crate::core::{Headers, Properties};
    use crate::store::journal::{Journal, JournalConfig};
    use bytes::Bytes;
    use std::time::Duration;

    fn config(dir: &Path, segment_bytes: u64) -> JournalConfig {
        JournalConfig {
            dir: dir.to_path_buf(),
            segment_bytes,
            group_commit_records: 1,
            group_commit_delay: Duration::ZERO,
            memory_window: MemoryWindow::default(),
        }
    }

    fn message(i: u64) -> Message {
        let props = Properties {
            persistent: true,
            ..Default::default()
        };
        Message::new(
            "".into(),
            "q".into(),
            props,
            Bytes::from(vec![i as u8; 100]),
        )
    }

    /// Writes a queue declaration and `n` messages, removing those `removed` says.
    fn write(dir: &Path, segment_bytes: u64, n: u64, removed: impl Fn(u64) -> bool) {
        write_removing_in(dir, segment_bytes, n, removed, 1);
    }

    /// `write`, recording the removals `batch` at a time with `record_all`
    /// (one at a time with `record` when `batch` is 1).
    fn write_removing_in(
        dir: &Path,
        segment_bytes: u64,
        n: u64,
        removed: impl Fn(u64) -> bool,
        batch: usize,
    ) {
        let journal = Journal::start(
            config(dir, segment_bytes),
            1,
            Definitions::default(),
            BTreeMap::new(),
        )
        .expect("journal starts");
        let vhost = "/".into();
        let spec = QueueSpec {
            name: "q".into(),
            durable: true,
            exclusive: None,
            auto_delete: false,
            arguments: Headers::new(),
        };
        journal.record(&vhost, Change::QueueDeclared { uid: 1, spec });
        let mut at = Vec::new();
        for i in 0..n {
            at.push(
                journal
                    .record(
                        &vhost,
                        Change::Enqueued {
                            queue: 1,
                            id: i,
                            message: message(i),
                        },
                    )
                    .expect("position"),
            );
        }
        let removals: Vec<Change> = (0..n)
            .filter(|i| removed(*i))
            .map(|i| Change::Removed {
                queue: 1,
                id: i,
                segment: at[i as usize].segment,
            })
            .collect();
        for chunk in removals.chunks(batch) {
            if batch == 1 {
                journal.record(&vhost, chunk[0].clone());
            } else {
                journal.record_all(&vhost, &mut chunk.to_vec());
            }
        }
        journal.shutdown();
    }

    fn ids(rec: &Recovered) -> Vec<u64> {
        rec.messages
            .get(&1)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    #[test]
    fn recovery_restores_exactly_the_live_messages_across_segments() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), 2048, 100, |i| i % 3 == 0);
        let rec = recover(dir.path(), MemoryWindow::default()).expect("recovers");
        assert!(rec.defs.vhosts["/"].queues.contains_key("q"));
        let expected: Vec<u64> = (0..100).filter(|i| i % 3 != 0).collect();
        assert_eq!(ids(&rec), expected);
    }

    #[test]
    fn removals_recorded_together_recover_as_removals_recorded_one_by_one() {
        let one = tempfile::tempdir().expect("temp dir");
        let many = tempfile::tempdir().expect("temp dir");
        write_removing_in(one.path(), 2048, 200, |i| i < 190 || i % 3 == 0, 1);
        write_removing_in(many.path(), 2048, 200, |i| i < 190 || i % 3 == 0, 7);
        let (one_rec, many_rec) = (
            recover(one.path(), MemoryWindow::default()).expect("recovers"),
            recover(many.path(), MemoryWindow::default()).expect("recovers"),
        );
        let expected: Vec<u64> = (190..200).filter(|i| i % 3 != 0).collect();
        assert_eq!(ids(&one_rec), expected);
        assert_eq!(ids(&many_rec), expected);
        assert_eq!(
            segments(many.path()).expect("list"),
            segments(one.path()).expect("list"),
            "the same segments are reclaimed"
        );
    }

    #[test]
    fn the_window_holds_the_bodies_of_the_messages_left_after_the_head_was_acknowledged() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), 2048, 200, |i| i < 190);
        let window = MemoryWindow {
            messages: 4,
            bytes: u64::MAX,
        };
        let rec = recover(dir.path(), window).expect("recovers");
        let kept: Vec<u64> = rec.messages[&1]
            .iter()
            .filter(|(_, m)| m.message.is_some())
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(kept, vec![190, 191, 192, 193]);
        let body = rec.messages[&1][&190].message.as_ref().expect("kept");
        assert_eq!(
            body.body().as_ref(),
            &[190u8; 100][..],
            "the body read back"
        );
    }

    #[test]
    fn fully_acknowledged_segments_are_deleted_and_recovery_still_works() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), 2048, 200, |i| i < 190);
        let segs = segments(dir.path()).expect("list");
        // 200 × ~120-byte records over 2 KiB segments is a dozen segments;
        // all but the ones holding messages 190.. and the active one go.
        assert!(segs.len() < 6, "segments left: {segs:?}");
        let rec = recover(dir.path(), MemoryWindow::default()).expect("recovers");
        assert_eq!(ids(&rec), (190..200).collect::<Vec<_>>());
        assert!(
            rec.defs.vhosts["/"].queues.contains_key("q"),
            "metadata survives in checkpoints"
        );
    }

    #[test]
    fn retained_messages_and_sessions_outlive_the_segments_that_recorded_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let journal = Journal::start(
            config(dir.path(), 2048),
            1,
            Definitions::default(),
            BTreeMap::new(),
        )
        .expect("journal starts");
        let vhost = "/".into();
        let mut retained = message(1);
        retained = Message::new(
            "amq.topic".into(),
            "a.b".into(),
            retained.properties().clone(),
            retained.body().clone(),
        );
        journal.record(&vhost, Change::RetainedSet(retained));
        journal.record(
            &vhost,
            Change::SessionOpened {
                name: "c1".into(),
                expiry_secs: 60,
                fresh: true,
            },
        );
        journal.record(
            &vhost,
            Change::SessionId {
                name: "c1".into(),
                outbound: false,
                id: 9,
                held: true,
            },
        );
        journal.record(
            &vhost,
            Change::SessionWill {
                name: "c1".into(),
                will: Some(crate::core::change::PendingWill {
                    due_ms: 12_345,
                    message: message(2),
                }),
            },
        );
        // Enough traffic to roll past, and reclaim, the first segment.
        for i in 0..100 {
            journal.record(
                &vhost,
                Change::RetainedSet(Message::new(
                    "amq.topic".into(),
                    format!("churn.{}", i % 3).as_str().into(),
                    Properties::default(),
                    Bytes::from(vec![0u8; 100]),
                )),
            );
        }
        journal.shutdown();
        assert!(
            !segment_path(dir.path(), 1).exists(),
            "the first segment was reclaimed"
        );
        let rec = recover(dir.path(), MemoryWindow::default()).expect("recovers");
        let v = &rec.defs.vhosts["/"];
        assert_eq!(v.retained.len(), 4);
        assert_eq!(v.retained["a.b"].body().len(), 100);
        let s = &v.sessions["c1"];
        assert_eq!((s.expiry_secs, s.inbound.len()), (60, 1));
        let will = s
            .will
            .as_ref()
            .expect("the waiting will outlives its segment");
        assert_eq!(
            (will.due_ms, will.message.body().clone()),
            (12_345, message(2).body().clone())
        );
    }

    #[test]
    fn a_segment_in_a_later_format_is_refused_by_name_and_left_as_it_is() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), 1 << 20, 5, |_| false);
        let path = segment_path(dir.path(), 1);
        let mut data = fs::read(&path).expect("read");
        data[4..8].copy_from_slice(&2u32.to_le_bytes());
        fs::write(&path, &data).expect("write");
        let err = recover(dir.path(), MemoryWindow::default()).expect_err("format 2 is refused");
        assert!(
            matches!(
                err,
                RecoveryError::Header {
                    segment: 1,
                    error: HeaderError::Version { found: 2 }
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "journal segment 1: written in journal format 2; this ferrymq reads format 1"
        );
        assert_eq!(
            fs::read(&path).expect("read"),
            data,
            "the segment is not touched"
        );
    }

    #[test]
    fn a_segment_without_the_header_is_read_as_format_0() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), 1 << 20, 5, |i| i == 1);
        let path = segment_path(dir.path(), 1);
        let data = fs::read(&path).expect("read");
        fs::write(&path, &data[record::SEGMENT_HEADER_LEN..]).expect("write");
        let rec = recover(dir.path(), MemoryWindow::default()).expect("format 0 reads");
        assert_eq!(ids(&rec), vec![0, 2, 3, 4]);
        // Any other first bytes are refused, even in the last segment,
        // rather than cut off as a torn tail.
        fs::write(&path, b"something else entirely").expect("write");
        let err = recover(dir.path(), MemoryWindow::default()).expect_err("refused");
        assert!(
            matches!(
                err,
                RecoveryError::Header {
                    error: HeaderError::NotAJournal,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(fs::read(&path).expect("read"), b"something else entirely");
    }

    #[test]
    fn a_last_segment_cut_in_its_header_is_removed_and_the_journal_goes_on_under_its_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        write(dir.path(), 1 << 20, 5, |_| false);
        let rec = recover(dir.path(), MemoryWindow::default()).expect("recovers");
        // A crash just as the next run's segment was created: its name is
        // the next sequence number, its header half written.
        let next = segment_path(dir.path(), rec.next_seq);
        fs::write(&next, &b"FMQJ\x01"[..]).expect("write");
        let rec = recover(dir.path(), MemoryWindow::default()).expect("a torn header is not fatal");
        assert_eq!(ids(&rec), vec![0, 1, 2, 3, 4]);
        assert!(!next.exists(), "the torn segment was removed");
        // The same name again, holding only a header: the next run's
        // segment starts over in that file rather than after it.
        let mut header = Vec::new();
        record::segment_header(&mut header);
        fs::write(&next, &header).expect("write");
        let rec = recover(dir.path(), MemoryWindow::default()).expect("a bare header is a segment");
        let journal = Journal::start(
            config(dir.path(), 1 << 20),
            rec.next_seq,
            rec.defs,
            rec.live,
        )
        .expect("journal starts");
        journal.record(
            &"/".into(),
            Change::Enqueued {
                queue: 1,
                id: 5,
                message: message(5),
            },
        );
        journal.shutdown();
        let rec = recover(dir.path(), MemoryWindow::default()).expect("recovers after the restart");
        assert_eq!(ids(&rec), vec![0, 1, 2, 3, 4, 5]);
    }

    /// Record end offsets within one segment file.
    fn boundaries(data: &[u8]) -> Vec<usize> {
        let mut at = record::SEGMENT_HEADER_LEN;
        let mut ends = Vec::new();
        while let Ok((_, _, used)) = record::decode(&data[at..]) {
            at += used;
            ends.push(at);
        }
        ends
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn a_torn_or_corrupted_tail_loses_only_the_damaged_records(cut in 0usize..6000, flip in proptest::option::of(record::SEGMENT_HEADER_LEN..6000)) {
            let dir = tempfile::tempdir().expect("temp dir");
            write(dir.path(), 1 << 20, 40, |_| false);
            let seg = *segments(dir.path()).expect("list").last().expect("a segment");
            let path = segment_path(dir.path(), seg);
            let mut data = fs::read(&path).expect("read");
            let ends = boundaries(&data);
            let cut = cut.min(data.len());
            data.truncate(cut);
            let mut damaged_from = cut;
            if let Some(f) = flip.filter(|f| *f < data.len()) {
                data[f] ^= 0x5A;
                damaged_from = f;
            }
            fs::write(&path, &data).expect("write");
            let rec = recover(dir.path(), MemoryWindow::default()).expect("a damaged tail is not fatal");
            // Records are: checkpoint, queue declaration, then messages 0..40.
            let intact = ends.iter().filter(|&&e| e <= damaged_from).count();
            let expected: Vec<u64> = (0..40u64).take(intact.saturating_sub(2)).collect();
            proptest::prop_assert_eq!(ids(&rec), expected);
            // The file was cut back to the last good record, or to its
            // header; cut inside the header, it was removed.
            let len = fs::metadata(&path).map_or(0, |m| m.len() as usize);
            let kept = if cut < record::SEGMENT_HEADER_LEN {
                0
            } else {
                ends.iter().copied().filter(|&e| e <= damaged_from).max().unwrap_or(record::SEGMENT_HEADER_LEN)
            };
            proptest::prop_assert_eq!(len, kept);
        }
    }
}
