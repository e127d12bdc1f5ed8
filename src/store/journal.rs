//! The journal: an append-only log of `Change` records in segment files,
//! written by one thread with group commit.
//!
//! Appenders (queue and vhost code, under their own locks) serialise a
//! record, take the journal's mutex only to copy it into the pending
//! buffer and get its sequence number, and go on. The writer thread takes
//! everything pending, writes it with one `write_all`, makes it durable
//! with one `fdatasync`, and publishes the highest durable sequence number
//! on a watch channel that adapters wait on before confirming.
//!
//! Segments are named by the sequence number of their first record and
//! begin with a checkpoint of every vhost's durable metadata, so the
//! oldest segments can be deleted once no message in them is live.
//! Deletion only ever takes the oldest segment: a later segment may hold
//! the `Removed` record of a message in an earlier one. And only once the
//! segment after it is on disk, whose checkpoint holds what the deleted
//! one declared.
//!
//! A failed write (disk full, I/O error) confirms nothing: the batch is cut
//! off the file and retried, the broker's disk alarm blocks publishers,
//! and consumers go on. Their acknowledgements empty old segments, which
//! are deleted between retries, so a full disk frees up and writing
//! resumes by itself.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use super::record::{self, Definitions};
use crate::core::VHostName;
use crate::core::change::{Change, ChangeLog, LogPosition, Logged, MemoryWindow};

/// How the journal writes.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    /// Directory holding the segment files.
    pub dir: PathBuf,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// The writer waits for this many records before committing, up to
    /// `group_commit_delay`; 0 or 1 commits whatever is pending at once.
    pub group_commit_records: usize,
    /// The longest the writer waits to gather `group_commit_records`.
    pub group_commit_delay: Duration,
    /// How much of each queue's backlog keeps its bodies in memory.
    pub memory_window: MemoryWindow,
}

/// Borrowed form of `record::Entry` so appenders serialise without
/// cloning; variant order must match `Entry`.
#[derive(Serialize)]
enum EntryRef<'a> {
    Change(&'a VHostName, &'a Change),
    Checkpoint(&'a Definitions),
}

#[derive(Debug)]
struct Chunk {
    /// Segment the bytes belong to.
    segment: LogPosition,
    /// The chunk starts that segment's file.
    starts_segment: bool,
    bytes: Vec<u8>,
}

#[derive(Debug)]
struct State {
    next_seq: LogPosition,
    chunks: Vec<Chunk>,
    pending_records: usize,
    active: LogPosition,
    active_bytes: u64,
    defs: Definitions,
    /// Live (enqueued, not removed) messages per segment, oldest first.
    live: BTreeMap<LogPosition, i64>,
    closed: bool,
    /// The writer sleeps on `wake`: only then does a record need to wake
    /// it (a notify is a system call even with no one waiting).
    writer_waiting: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    durable: watch::Sender<LogPosition>,
    config: JournalConfig,
    /// The last write failed and is being retried.
    failed: std::sync::atomic::AtomicBool,
    /// Open segment files for reading paged-out messages back.
    files: Mutex<std::collections::HashMap<LogPosition, Arc<File>>>,
    /// Where the seconds each group commit took (write and fdatasync) go.
    commit_seconds: std::sync::OnceLock<metrics::Histogram>,
}

/// The journal; a `ChangeLog` for the core.
#[derive(Debug)]
pub struct Journal {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// Writes the segment header and frames the records that open segment
/// `seg`: the checkpoint of `defs`,
/// numbered `seg`, then its trailer (`Definitions::trailer`). Leaves
/// `next` at the number after the last; returns how many were framed.
fn segment_head(
    out: &mut Vec<u8>,
    seg: LogPosition,
    defs: &Definitions,
    next: &mut LogPosition,
) -> usize {
    record::segment_header(out);
    let checkpoint = postcard::to_stdvec(&EntryRef::Checkpoint(defs)).expect("serialises");
    record::encode(out, seg, &checkpoint);
    *next = seg + 1;
    let trailer = defs.trailer();
    for (vhost, change) in &trailer {
        let payload = postcard::to_stdvec(&EntryRef::Change(vhost, change)).expect("serialises");
        record::encode(out, *next, &payload);
        *next += 1;
    }
    1 + trailer.len()
}

/// Segment file name for a first sequence number.
pub fn segment_path(dir: &Path, first: LogPosition) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

impl Journal {
    /// Starts a journal after recovery: `next_seq` follows the last
    /// recovered record, `defs` and `live` are what recovery rebuilt.
    pub fn start(
        config: JournalConfig,
        next_seq: LogPosition,
        defs: Definitions,
        mut live: BTreeMap<LogPosition, i64>,
    ) -> std::io::Result<Self> {
        fs::create_dir_all(&config.dir)?;
        // Every run starts a fresh segment headed by a checkpoint, so the
        // recovered segments are never appended to.
        let active = next_seq;
        live.insert(active, 0);
        let mut first = Vec::new();
        let mut after = active;
        let records = segment_head(&mut first, active, &defs, &mut after);
        let state = State {
            next_seq: after,
            active_bytes: first.len() as u64,
            chunks: vec![Chunk {
                segment: active,
                starts_segment: true,
                bytes: first,
            }],
            pending_records: records,
            active,
            defs,
            live,
            closed: false,
            writer_waiting: false,
        };
        let (durable, _) = watch::channel(active.saturating_sub(1));
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            wake: Condvar::new(),
            durable,
            config,
            failed: std::sync::atomic::AtomicBool::new(false),
            files: Mutex::new(std::collections::HashMap::new()),
            commit_seconds: std::sync::OnceLock::new(),
        });
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("ferrymq-journal".into())
            .spawn(move || writer_loop(&writer_shared))?;
        Ok(Self {
            shared,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Records how long each group commit takes from now on.
    pub fn time_commits(&self, histogram: metrics::Histogram) {
        let _ = self.shared.commit_seconds.set(histogram);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a framed record for `payload` and says where it goes.
    fn push(&self, st: &mut State, payload: &[u8]) -> Logged {
        if st.active_bytes >= self.shared.config.segment_bytes {
            let seg = st.next_seq;
            st.active = seg;
            st.live.insert(seg, 0);
            let mut bytes = Vec::new();
            let mut after = seg;
            let records = segment_head(&mut bytes, seg, &st.defs, &mut after);
            st.next_seq = after;
            st.active_bytes = bytes.len() as u64;
            st.chunks.push(Chunk {
                segment: seg,
                starts_segment: true,
                bytes,
            });
            st.pending_records += records;
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let active = st.active;
        let chunk = match st.chunks.last_mut() {
            Some(c) if c.segment == active => c,
            _ => {
                st.chunks.push(Chunk {
                    segment: active,
                    starts_segment: false,
                    bytes: Vec::new(),
                });
                st.chunks.last_mut().expect("just pushed")
            }
        };
        let before = chunk.bytes.len();
        record::encode(&mut chunk.bytes, seq, payload);
        let offset = st.active_bytes;
        st.active_bytes += (chunk.bytes.len() - before) as u64;
        st.pending_records += 1;
        Logged {
            seq,
            segment: active,
            offset,
        }
    }

    /// Appends one serialised change and keeps the definitions and live
    /// counts up to date.
    fn append(&self, vhost: &VHostName, change: &Change, payload: &[u8]) -> Option<Logged> {
        let mut st = self.lock();
        if st.closed {
            return None;
        }
        let logged = self.note(&mut st, vhost, change, payload);
        self.wake_writer(st);
        Some(logged)
    }

    /// Pushes one change's record and accounts for it.
    fn note(&self, st: &mut State, vhost: &VHostName, change: &Change, payload: &[u8]) -> Logged {
        let logged = self.push(st, payload);
        st.defs.apply(vhost, change);
        match change {
            Change::Enqueued { .. } => *st.live.entry(logged.segment).or_insert(0) += 1,
            Change::Removed { segment, .. } => {
                if let Some(n) = st.live.get_mut(segment) {
                    *n -= 1;
                }
            }
            _ => {}
        }
        logged
    }

    /// Releases the lock, waking the writer if it sleeps.
    fn wake_writer(&self, st: MutexGuard<'_, State>) {
        let wake = st.writer_waiting;
        drop(st);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// Flushes everything and stops the writer.
    pub fn shutdown(&self) {
        self.lock().closed = true;
        self.shared.wake.notify_all();
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Number of segment files currently kept (for tests and metrics).
    pub fn segments(&self) -> usize {
        self.lock().live.len()
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.shutdown();
    }
}

thread_local! {
    // Records are serialised outside the journal's lock, into a buffer each
    // thread reuses rather than one allocation per record.
    static PAYLOAD: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Serialises `changes` into the thread's buffer, back to back, and hands
/// `with` the buffer and where each change's bytes end.
fn serialised<R>(
    vhost: &VHostName,
    changes: &[Change],
    with: impl FnOnce(&[u8], &[usize]) -> R,
) -> R {
    PAYLOAD.with_borrow_mut(|payload| {
        payload.clear();
        let mut ends = Vec::with_capacity(changes.len());
        for change in changes {
            *payload =
                postcard::to_extend(&EntryRef::Change(vhost, change), std::mem::take(payload))
                    .expect("core types serialise");
            ends.push(payload.len());
        }
        let out = with(payload, &ends);
        if payload.capacity() > 64 * 1024 {
            *payload = Vec::new();
        }
        out
    })
}

impl ChangeLog for Journal {
    fn record(&self, vhost: &VHostName, change: Change) -> Option<Logged> {
        let changes = std::slice::from_ref(&change);
        serialised(vhost, changes, |payload, _| {
            self.append(vhost, &change, payload)
        })
    }

    fn record_all(&self, vhost: &VHostName, changes: &mut Vec<Change>) {
        serialised(vhost, changes, |payload, ends| {
            let mut st = self.lock();
            if st.closed {
                return;
            }
            let mut start = 0;
            for (change, &end) in changes.iter().zip(ends) {
                self.note(&mut st, vhost, change, &payload[start..end]);
                start = end;
            }
            self.wake_writer(st);
        });
        changes.clear();
    }

    fn read(&self, segment: LogPosition, offset: u64) -> Option<Change> {
        let file = {
            let mut files = self.shared.files.lock().unwrap_or_else(|p| p.into_inner());
            match files.get(&segment) {
                Some(f) => f.clone(),
                None => {
                    let f =
                        Arc::new(File::open(segment_path(&self.shared.config.dir, segment)).ok()?);
                    files.insert(segment, f.clone());
                    f
                }
            }
        };
        read_change_at(&file, offset)
    }

    fn memory_window(&self) -> MemoryWindow {
        self.shared.config.memory_window
    }

    fn healthy(&self) -> bool {
        !self
            .shared
            .failed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn durable_position(&self) -> LogPosition {
        *self.shared.durable.borrow()
    }

    fn durable(&self) -> Option<watch::Receiver<LogPosition>> {
        Some(self.shared.durable.subscribe())
    }

    fn close(&self) {
        self.shutdown();
    }
}

/// Reads the change recorded at `offset` of a segment file: a paged-out
/// message, or a recovered one whose body comes back into memory.
pub fn read_change_at(file: &File, offset: u64) -> Option<Change> {
    use std::os::unix::fs::FileExt;
    let mut head = [0u8; 4];
    file.read_exact_at(&mut head, offset).ok()?;
    let len = u32::from_le_bytes(head) as usize;
    if len > record::MAX_RECORD {
        return None;
    }
    let mut buf = vec![0u8; 8 + len];
    file.read_exact_at(&mut buf, offset).ok()?;
    match record::decode(&buf) {
        Ok((_, record::Entry::Change(_, change), _)) => Some(change),
        _ => None,
    }
}

/// How long a failed journal write waits before it is tried again.
const WRITE_RETRY: Duration = Duration::from_millis(500);

fn writer_loop(shared: &Shared) {
    let dir = shared.config.dir.clone();
    let mut file: Option<File> = None;
    loop {
        let (chunks, last) = {
            let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            while st.chunks.is_empty() && !st.closed {
                st.writer_waiting = true;
                st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                st.writer_waiting = false;
            }
            if st.chunks.is_empty() && st.closed {
                break;
            }
            let want = shared.config.group_commit_records;
            if want > 1 && st.pending_records < want && !st.closed {
                let delay = shared.config.group_commit_delay;
                st.writer_waiting = true;
                st = shared
                    .wake
                    .wait_timeout_while(st, delay, |s| s.pending_records < want && !s.closed)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                st.writer_waiting = false;
            }
            st.pending_records = 0;
            let chunks = std::mem::take(&mut st.chunks);
            let last = st.next_seq - 1;
            (chunks, last)
        };
        // Timed from the first attempt: retries are latency publishers see.
        let started = std::time::Instant::now();
        // On failure (disk full, I/O error) nothing is confirmed: the
        // partial write is cut off, the broker raises its disk alarm so
        // publishers wait, and the same batch is retried until it lands.
        while let Err(e) = write_chunks(&dir, &mut file, &chunks) {
            if !shared
                .failed
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::error!(error = %e, dir = %dir.display(), "journal write failed; confirms are withheld and publishers blocked until it succeeds");
            }
            // A full disk frees up as consumers acknowledge: segments with
            // nothing live left go now rather than after the write, or the
            // write waiting for their space would never happen.
            reclaim(shared, &dir);
            std::thread::sleep(WRITE_RETRY);
            if shared
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .closed
                && shared.failed.load(std::sync::atomic::Ordering::Relaxed)
            {
                // Shutting down with the disk still failing: what is not
                // written was never confirmed.
                return;
            }
        }
        if shared
            .failed
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::info!("journal writes succeed again");
        }
        if let Some(h) = shared.commit_seconds.get() {
            h.record(started.elapsed().as_secs_f64());
        }
        shared.durable.send_replace(last);
        reclaim(shared, &dir);
    }
    if let Some(f) = file {
        let _ = f.sync_data();
    }
}

/// Deletes the oldest segments with nothing live whose successor is
/// already on disk: the successor's checkpoint then holds the metadata
/// they recorded, so none is lost even before pending records land.
fn reclaim(shared: &Shared, dir: &Path) {
    let durable = *shared.durable.borrow();
    let mut dead = Vec::new();
    {
        let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((&seg, &n)) = st.live.first_key_value() {
            let successor_durable = st
                .live
                .range(seg + 1..)
                .next()
                .is_some_and(|(&next, _)| next <= durable);
            if n > 0 || seg == st.active || !successor_durable {
                break;
            }
            st.live.remove(&seg);
            dead.push(seg);
        }
    }
    for seg in dead {
        shared
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&seg);
        if let Err(e) = fs::remove_file(segment_path(dir, seg)) {
            tracing::warn!(error = %e, segment = seg, "could not delete a reclaimed segment");
        }
    }
}

/// Writes a batch and syncs it; on error, undoes what it wrote, so the
/// same batch can be written again.
fn write_chunks(dir: &Path, file: &mut Option<File>, chunks: &[Chunk]) -> std::io::Result<()> {
    let before = match file {
        Some(f) => Some((f.try_clone()?, f.metadata()?.len())),
        None => None,
    };
    let result = append_chunks(dir, file, chunks);
    if result.is_err() {
        if let Some((f, len)) = before {
            let _ = f.set_len(len);
        }
        for c in chunks.iter().filter(|c| c.starts_segment) {
            let _ = fs::remove_file(segment_path(dir, c.segment));
        }
        // Reopened (in append mode, at the cut length) by the retry.
        *file = None;
    }
    result
}

fn append_chunks(dir: &Path, file: &mut Option<File>, chunks: &[Chunk]) -> std::io::Result<()> {
    for chunk in chunks {
        if chunk.starts_segment || file.is_none() {
            if let Some(old) = file.take() {
                old.sync_data()?;
            }
            // A new segment's file starts empty: one that recovery found
            // holding no record (a crash as it was created) takes the
            // same name, and its header must not be followed by a second.
            let f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(chunk.starts_segment)
                .append(!chunk.starts_segment)
                .open(segment_path(dir, chunk.segment))?;
            // The new file's name must survive a crash too.
            File::open(dir)?.sync_all()?;
            *file = Some(f);
        }
        file.as_mut()
            .expect("opened above")
            .write_all(&chunk.bytes)?;
    }
    if let Some(f) = file {
        f.sync_data()?;
    }
    Ok(())
}
