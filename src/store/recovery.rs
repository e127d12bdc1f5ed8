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

use super::journal::segment_path;
use super::record::{self, Definitions, Entry, RecordError};
use crate::core::change::{Change, LogPosition};
use crate::core::{Broker, Message};

/// A message that was live at the crash.
#[derive(Debug)]
pub struct LiveMessage {
    /// The message.
    pub message: Message,
    /// Times it was handed out.
    pub deliveries: u32,
    /// Where its `Enqueued` record is.
    pub at: LogPosition,
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
}

/// Why recovery failed.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The file system failed.
    #[error("journal i/o: {0}")]
    Io(#[from] std::io::Error),
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

/// Reads every segment in `dir`.
pub fn recover(dir: &Path) -> Result<Recovered, RecoveryError> {
    let mut out = Recovered {
        next_seq: 1,
        ..Default::default()
    };
    let segs = segments(dir)?;
    for (i, &seg) in segs.iter().enumerate() {
        let path = segment_path(dir, seg);
        let data = fs::read(&path)?;
        out.live.entry(seg).or_insert(0);
        let mut at = 0;
        while at < data.len() {
            match record::decode(&data[at..]) {
                Ok((seq, entry, used)) => {
                    apply(&mut out, seg, seq, entry);
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
    Ok(out)
}

fn apply(out: &mut Recovered, segment: LogPosition, seq: LogPosition, entry: Entry) {
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
            *out.live.entry(segment).or_insert(0) += 1;
            out.messages.entry(queue).or_default().insert(
                id,
                LiveMessage {
                    message,
                    deliveries: 0,
                    at: seq,
                },
            );
        }
        Change::Delivered { queue, id } => {
            if let Some(m) = out.messages.get_mut(&queue).and_then(|q| q.get_mut(&id)) {
                m.deliveries += 1;
            }
        }
        Change::Removed { queue, id, at } => {
            let removed = out.messages.get_mut(&queue).and_then(|q| q.remove(&id));
            if removed.is_some()
                && let Some((_, n)) = out.live.range_mut(..=at).next_back()
            {
                *n -= 1;
            }
        }
        Change::QueueDeleted { uid, .. } => {
            out.messages.remove(&uid);
        }
        _ => {}
    }
}

/// Rebuilds the broker's durable state from what was recovered, without
/// journalling it again. Returns the number of messages restored.
pub fn restore(broker: &Arc<Broker>, rec: &mut Recovered) -> usize {
    let mut restored = 0;
    for (vhost_name, defs) in &rec.defs.vhosts {
        let vhost = broker.add_vhost(vhost_name.as_str());
        for spec in defs.exchanges.values() {
            vhost.restore_exchange(spec.clone());
        }
        for (uid, spec) in defs.queues.values() {
            let messages = rec.messages.remove(uid).unwrap_or_default();
            restored += messages.len();
            vhost.restore_queue(
                spec.clone(),
                *uid,
                messages
                    .into_iter()
                    .map(|(id, m)| (id, m.message, m.deliveries, m.at)),
            );
        }
        for b in &defs.bindings {
            vhost.restore_binding(b.clone());
        }
    }
    restored
}

/// Recovers, logs what it took, and returns the state.
pub fn recover_logged(dir: &Path) -> Result<Recovered, RecoveryError> {
    let started = Instant::now();
    let rec = recover(dir)?;
    tracing::info!(
        records = rec.records,
        bytes = rec.bytes,
        seconds = started.elapsed().as_secs_f64(),
        "journal recovered"
    );
    Ok(rec)
}
