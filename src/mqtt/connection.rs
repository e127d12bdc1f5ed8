//! One task per MQTT connection: read packets, hand them to the session,
//! turn core events into packets, write in bulk, enforce the keepalive;
//! after the socket closes, time the will and the session's expiry.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures::FutureExt;
use rmqtt_codec::v5::{self, DisconnectReasonCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::{CancellationToken, ReusableBoxFuture, WaitForCancellationFutureOwned};

use super::codec::{Decoder, Inbound};
use super::deadlines::Deadlines;
use super::error::Disconnect;
use super::session::{Farewell, SHUTTING_DOWN, Session, Settings, publish_will};
use crate::core::change::LogPosition;
use crate::core::event_channel::{EventStream, PUBLISHES_PER_YIELD, WakeBatch};
use crate::core::{Broker, Event, Protocol};

/// Events taken from the connection's channel per wake-up.
const EVENT_BATCH: usize = 512;
/// Stop reading while this much output waits for a slow client, so a
/// publisher that never reads its acks cannot grow our buffers.
const WRITE_HIGH_WATER: usize = 4 * 1024 * 1024;
/// Bytes made room for before a read while the client is sending a lot.
/// With 8 KiB, a publisher of 1 KiB messages took seven or eight per
/// read, and every read's round wrote its PUBACKs and its subscribers'
/// deliveries: 64 KiB cut the broker's write calls in QoS 1 1 KiB from
/// 27 000 to 4 200 per 200 000 messages and its CPU time by a third.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes read at a time while it sends little (pings, small publishes),
/// through a buffer on the stack: an idle connection holds no read buffer.
const READ_SMALL: usize = 64;
/// Bytes of a read buffer's capacity a read leaves free (see `poll_read`).
const READ_HEADROOM: usize = 16;
/// Buffers larger than this are let go once drained, so an idle
/// connection holds almost no memory (thousands of idle devices are the
/// common case for MQTT).
const IDLE_BUFFER: usize = 1024;
/// A PUBLISH's bytes besides its topic and payload (fixed header, lengths,
/// packet id), as reserved for a delivery; MQTT 5 properties may need more.
const PUBLISH_OVERHEAD: usize = 16;
/// Time a client has to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a closing connection has to flush its last packets (a DISCONNECT,
/// acks) to a client that is slow to read them.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Rounds of work one poll of the task does at most.
const WAKES_PER_POLL: usize = 64;

/// Waits for a watched value to change; gives the receiver back, or
/// `None` once the sender is gone.
type Change<T> = ReusableBoxFuture<'static, Option<watch::Receiver<T>>>;

async fn changed<T: Send + Sync>(mut rx: watch::Receiver<T>) -> Option<watch::Receiver<T>> {
    rx.changed().await.ok().map(|()| rx)
}

/// Points `slot` at a wait for `rx`'s next change, reusing its box.
fn arm<T: Send + Sync + 'static>(slot: &mut Option<Change<T>>, rx: watch::Receiver<T>) {
    match slot {
        Some(f) => f.set(changed(rx)),
        None => *slot = Some(ReusableBoxFuture::new(changed(rx))),
    }
}

/// Everything one connection's task holds while it waits. Kept small:
/// an idle connection costs what this costs. The waits for a resource
/// alarm to clear and for the journal are boxed and made only while
/// something waits for them; the broker's shutdown reaches a connection
/// past CONNECT as an event on its channel (see `close_on_shutdown`).
struct Connection<S> {
    stream: S,
    events: EventStream,
    decoder: Decoder,
    session: Session,
    bufs: Buffers,
    last_read: Instant,
    /// The clock the connection's next deadline is filed with.
    deadlines: Arc<Deadlines>,
    /// The tick it is filed under; 0: none.
    timer: u32,
    /// The client sends a lot: read in `READ_CHUNK`s into `rbuf`.
    busy: bool,
    eof: bool,
    /// A PUBLISH arrived during a resource alarm: nothing more is read
    /// until it clears, so the publisher feels TCP back-pressure (as
    /// RabbitMQ's MQTT adapter does), while what was sent to it still
    /// goes out.
    held: bool,
    /// The broker's shutdown, watched until CONNECT is accepted.
    before_connect: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// Made the first time a PUBLISH is held or an ack waits for the journal.
    waits: Option<Box<Waits>>,
}

/// The read buffer, the buffer packets are written into, and the bytes
/// being written to the socket: boxed, and there only while one of them
/// holds bytes or room. Three empty `BytesMut` in the task would cost
/// every idle connection 96 bytes, and a larger task cell.
#[derive(Default)]
struct Buffers(Option<Box<Io>>);

#[derive(Default)]
struct Io {
    read: BytesMut,
    write: BytesMut,
    writing: BytesMut,
    /// PUBLISH packets handled since the task last yielded.
    published: u32,
}

impl Buffers {
    fn get(&mut self) -> &mut Io {
        self.0.get_or_insert_with(Box::default)
    }

    fn read_is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|b| b.read.is_empty())
    }

    fn writing_is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|b| b.writing.is_empty())
    }

    fn write_len(&self) -> usize {
        self.0.as_ref().map_or(0, |b| b.write.len())
    }

    /// Lets the box go once nothing in it holds memory.
    fn release_if_empty(&mut self) {
        if self.0.as_ref().is_some_and(|b| {
            b.read.capacity() == 0 && b.write.capacity() == 0 && b.writing.capacity() == 0
        }) {
            self.0 = None;
        }
    }
}

#[derive(Default)]
struct Waits {
    alarm: Option<Change<crate::core::alarm::Alarms>>,
    alarm_waiting: bool,
    /// The journal's durable position, watched while acks wait for it.
    durable: Option<Change<LogPosition>>,
    durable_waiting: bool,
    /// The journal stopped, or there is none: no ack can become durable.
    journal_gone: bool,
}

/// What one wake-up found ready.
#[derive(Default)]
struct Wake {
    wrote: Option<io::Result<usize>>,
    read: Option<io::Result<usize>>,
    events: Option<usize>,
    alarm: Option<Option<watch::Receiver<crate::core::alarm::Alarms>>>,
    durable: Option<Option<watch::Receiver<LogPosition>>>,
    shutdown: bool,
}

/// Serves one MQTT connection until either side closes it.
// Not an `async fn`: its arguments would stay in the task beside the
// `Connection` made of them.
pub fn serve<S>(
    stream: S,
    peer: SocketAddr,
    broker: Arc<Broker>,
    settings: Arc<Settings>,
    deadlines: Arc<Deadlines>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, events) = crate::core::event_channel::channel();
    let session = Session::new(broker, settings.clone(), peer, tx);
    let now = Instant::now();
    let timer = deadlines.file(
        now + CONNECT_TIMEOUT,
        session.id(),
        session.events().clone(),
    );
    let mut c = Connection {
        stream,
        events,
        decoder: Decoder::new(settings.max_packet),
        session,
        bufs: Buffers::default(),
        last_read: now,
        deadlines,
        timer,
        busy: false,
        eof: false,
        held: false,
        before_connect: Some(Box::pin(shutdown.cancelled_owned())),
        waits: None,
    };
    async move { c.run().await }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    async fn run(&mut self) {
        poll_fn(|cx| self.poll_serve(cx)).await;
        self.unfile();
        // Ahead of the socket's shutdown, which may wait: the farewell
        // need not be kept across it.
        linger(self.session.release());
        let _ = self.stream.shutdown().await;
    }

    /// The connection's loop, as one poll: ready when the connection is over.
    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // The clock wakes the task when the filed tick comes; so does
        // anything else, and a look at the time is cheap.
        if self.timer != 0 && Instant::now() >= self.deadlines.at(self.timer) && !self.on_timer() {
            return Poll::Ready(());
        }
        if let Some(b) = &mut self.bufs.0 {
            b.published = 0;
        }
        // The consumers this poll's publishes reach are woken as it ends.
        let _wakes = WakeBatch::begin();
        // Events taken from the channel: on the stack, not in the task.
        let mut batch = Vec::new();
        for _ in 0..WAKES_PER_POLL {
            if !self.prepare() {
                return Poll::Ready(());
            }
            if let Some(target) = self.deadline()
                && (self.timer == 0 || target < self.deadlines.at(self.timer))
            {
                self.unfile();
                let (id, sink) = (self.session.id(), self.session.events().clone());
                self.timer = self.deadlines.file(target, id, sink);
            }
            let can_read = self.can_read();
            let Poll::Ready(wake) = self.poll_wake(cx, &mut batch, can_read) else {
                return Poll::Pending;
            };
            if !self.handle(wake, &mut batch) {
                return Poll::Ready(());
            }
            if self
                .bufs
                .0
                .as_ref()
                .is_some_and(|b| b.published >= PUBLISHES_PER_YIELD)
            {
                // The subscribers these publishes woke wait in this
                // worker's LIFO slot, which no idle worker may steal:
                // they run once this task yields (as `in_rounds` does for
                // AMQP and STOMP).
                break;
            }
        }
        // Busy: let the worker's other tasks run before going on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Readies the next wait; false when the connection is over.
    fn prepare(&mut self) -> bool {
        if self.before_connect.is_some() && !self.session.is_done() && self.session.is_open() {
            // From here on the shutdown comes as an event: the session is
            // in the connection registry, which `close_on_shutdown` reads
            // after the token is cancelled.
            let cancelled = self.before_connect.take().and_then(FutureExt::now_or_never);
            if cancelled.is_some() {
                self.shutting_down();
            }
        }
        if self.held && !self.waits.as_ref().is_some_and(|w| w.alarm_waiting) {
            self.wait_for_alarm();
        }
        if self.session.awaits_durability()
            && !self
                .waits
                .as_ref()
                .is_some_and(|w| w.durable_waiting || w.journal_gone)
        {
            self.wait_for_journal();
        }
        // Nothing to tidy while no buffer exists: an idle connection's
        // rounds make no box.
        if let Some(b) = &mut self.bufs.0 {
            if b.writing.is_empty() && !self.session.output_held() {
                if b.write.is_empty() {
                    // Nothing more to send: the spent buffer goes.
                    b.writing = BytesMut::new();
                } else {
                    // The spent buffer takes the next packets: writing into
                    // it reclaims its whole allocation, where a new one
                    // would be grown again by doubling (a fifth of a
                    // fan-out subscriber's copying went to regrowth).
                    std::mem::swap(&mut b.writing, &mut b.write);
                    self.session.after_write();
                }
            }
            if b.writing.is_empty() && b.write.is_empty() && b.write.capacity() > IDLE_BUFFER {
                b.write = BytesMut::new();
            }
            if b.read.is_empty() && (b.read.capacity() > IDLE_BUFFER || !self.busy) {
                b.read = BytesMut::new();
            }
        }
        if (self.session.is_done() || self.eof) && self.bufs.writing_is_empty() {
            return false;
        }
        // An idle client's small reads go through the stack instead.
        let into_rbuf = self.busy || !self.bufs.read_is_empty();
        if into_rbuf && self.can_read() {
            let read_size = if self.busy { READ_CHUNK } else { READ_SMALL };
            let b = self.bufs.get();
            if b.read.capacity() - b.read.len() < read_size / 2 {
                b.read.reserve(read_size);
            }
        }
        self.bufs.release_if_empty();
        true
    }

    fn can_read(&self) -> bool {
        !self.eof
            && !self.held
            && !self.session.is_done()
            && self.bufs.write_len() < WRITE_HIGH_WATER
    }

    /// When the timer should fire; `None`: where it is (the CONNECT
    /// timeout, filed at the start), or nowhere. It is only ever moved
    /// earlier here, later once its tick has come.
    fn deadline(&self) -> Option<Instant> {
        let keep_alive = self.session.keep_alive();
        if self.session.is_done() {
            // Counted from the first look, as the timer only moves earlier.
            Some(Instant::now() + CLOSE_GRACE)
        } else if self.session.is_open() && keep_alive > 0 && !self.held {
            // MQTT-3.1.2-24: one and a half keepalives without a packet.
            Some(self.last_read + Duration::from_millis(u64::from(keep_alive) * 1500))
        } else {
            None
        }
    }

    fn unfile(&mut self) {
        if self.timer != 0 {
            self.deadlines.unfile(self.timer, self.session.id());
            self.timer = 0;
        }
    }

    /// The filed tick has come; false when the connection is over.
    fn on_timer(&mut self) -> bool {
        // Taken off the clock already, unless the clock is a little behind.
        self.unfile();
        let peer = self.session.peer();
        if self.session.is_done() {
            // Its last packets have had their time to go out.
            return false;
        }
        if !self.session.is_open() {
            tracing::info!(%peer, "no CONNECT in time");
            return false;
        }
        if let Some(target) = self.deadline()
            && Instant::now() >= target
        {
            tracing::info!(%peer, client = self.session.client_id(), "keepalive expired");
            self.session.fail(
                Disconnect::new(DisconnectReasonCode::KeepAliveTimeout, "keepalive expired"),
                &mut self.bufs.get().write,
            );
        }
        // Filed again, at the deadline now in force, by the next round.
        true
    }

    fn shutting_down(&mut self) {
        self.session.fail(
            Disconnect::new(DisconnectReasonCode::ServerShuttingDown, SHUTTING_DOWN),
            &mut self.bufs.get().write,
        );
    }

    /// Waits for the alarm that holds a PUBLISH to clear.
    fn wait_for_alarm(&mut self) {
        let rx = self.session.broker().alarms.watch();
        if !rx.borrow().any() {
            // Cleared before we looked.
            self.take_input();
            return;
        }
        let waits = self.waits.get_or_insert_with(Box::default);
        arm(&mut waits.alarm, rx);
        waits.alarm_waiting = true;
    }

    /// Handles the packets waiting in the read buffer: after a read, or
    /// once the alarm that held a PUBLISH clears (the packets that came in
    /// behind it go first).
    fn take_input(&mut self) {
        self.last_read = Instant::now();
        let b = self.bufs.get();
        let (held, published) = decode_input(
            &mut self.decoder,
            &mut b.read,
            &mut self.session,
            &mut b.write,
        );
        self.held = held;
        b.published += published;
    }

    /// Catches up with the journal, then waits for it to move on while
    /// acks wait.
    fn wait_for_journal(&mut self) {
        let Some(mut rx) = self.session.broker().durable() else {
            self.waits.get_or_insert_with(Box::default).journal_gone = true;
            return;
        };
        let at = *rx.borrow_and_update();
        self.session.set_durable(at, &mut self.bufs.get().write);
        self.await_journal(rx);
    }

    fn await_journal(&mut self, rx: watch::Receiver<LogPosition>) {
        if !self.session.awaits_durability() {
            return;
        }
        let waits = self.waits.get_or_insert_with(Box::default);
        arm(&mut waits.durable, rx);
        waits.durable_waiting = true;
    }

    /// Polls whatever the connection waits for; ready when anything is.
    fn poll_wake(
        &mut self,
        cx: &mut Context<'_>,
        batch: &mut Vec<Event>,
        can_read: bool,
    ) -> Poll<Wake> {
        let mut w = Wake::default();
        if let Some(b) = &mut self.bufs.0
            && !b.writing.is_empty()
        {
            // The futures of `write_buf` and `read_buf` keep nothing
            // between polls: the socket remembers who waits.
            let write = self.stream.write_buf(&mut b.writing);
            if let Poll::Ready(r) = std::pin::pin!(write).poll(cx) {
                w.wrote = Some(r);
            }
        }
        if let Some(f) = &mut self.before_connect
            && f.as_mut().poll(cx).is_ready()
        {
            self.before_connect = None;
            w.shutdown = true;
        }
        if let Some(waits) = &mut self.waits {
            if waits.alarm_waiting
                && let Some(f) = &mut waits.alarm
                && let Poll::Ready(r) = f.poll(cx)
            {
                waits.alarm_waiting = false;
                w.alarm = Some(r);
            }
            if waits.durable_waiting
                && let Some(f) = &mut waits.durable
                && let Poll::Ready(r) = f.poll(cx)
            {
                waits.durable_waiting = false;
                w.durable = Some(r);
            }
        }
        if let Poll::Ready(n) = self.events.poll_recv_many(cx, batch, EVENT_BATCH) {
            w.events = Some(n);
        }
        if can_read {
            w.read = self.poll_read(cx);
        }
        let busy = w.wrote.is_some()
            || w.read.is_some()
            || w.events.is_some()
            || w.alarm.is_some()
            || w.durable.is_some()
            || w.shutdown;
        if busy { Poll::Ready(w) } else { Poll::Pending }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Option<io::Result<usize>> {
        if self.bufs.read_is_empty() && !self.busy {
            let stream = Pin::new(&mut self.stream);
            let mut small = [0u8; READ_SMALL];
            let mut buf = ReadBuf::new(&mut small);
            return match stream.poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    self.bufs.get().read.extend_from_slice(buf.filled());
                    Some(Ok(buf.filled().len()))
                }
                Poll::Ready(Err(e)) => Some(Err(e)),
                Poll::Pending => None,
            };
        }
        let rbuf = &mut self.bufs.get().read;
        // The buffer's last bytes are left unread into: rmqtt-codec reserves
        // two bytes after every packet it decodes, and a buffer read full
        // to its end, still shared with the bodies of the packets before,
        // was copied whole into a new one for them: a second copy of all
        // a publisher sent (6% of the broker's CPU with 1 KiB publishes).
        let room = rbuf.capacity() - rbuf.len();
        let limit = room.saturating_sub(READ_HEADROOM).max(1) as u64;
        let mut limited = (&mut self.stream).take(limit);
        let read = limited.read_buf(rbuf);
        match std::pin::pin!(read).poll(cx) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    /// Acts on what a wake-up found; false when the connection is over.
    fn handle(&mut self, w: Wake, batch: &mut Vec<Event>) -> bool {
        if let Some(r) = w.wrote {
            match r {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.session.sent(n),
            }
        }
        if w.shutdown && !self.session.is_done() {
            self.shutting_down();
        }
        if let Some(r) = w.alarm {
            match r {
                Some(rx) if rx.borrow().any() => {
                    if let Some(waits) = &mut self.waits
                        && let Some(f) = &mut waits.alarm
                    {
                        f.set(changed(rx));
                        waits.alarm_waiting = true;
                    }
                }
                // Cleared, or the broker is going away.
                _ => self.take_input(),
            }
        }
        if let Some(r) = w.durable {
            match r {
                Some(mut rx) => {
                    let at = *rx.borrow_and_update();
                    self.session.set_durable(at, &mut self.bufs.get().write);
                    self.await_journal(rx);
                }
                None => self.waits.get_or_insert_with(Box::default).journal_gone = true,
            }
        }
        if let Some(n) = w.events {
            if n == 0 {
                return false;
            }
            // One reservation for the batch: packet by packet, the buffer
            // would grow by doubling and copy what it holds each time.
            let wanted: usize = batch
                .iter()
                .map(|e| match e {
                    Event::Deliver(d) => {
                        d.message.size() + d.message.routing_key().as_str().len() + PUBLISH_OVERHEAD
                    }
                    _ => 0,
                })
                .sum();
            let write = &mut self.bufs.get().write;
            write.reserve(wanted);
            for event in batch.drain(..) {
                self.session.on_event(event, write);
            }
            self.session.end_of_batch();
        }
        if let Some(r) = w.read {
            match r {
                Ok(0) | Err(_) => self.eof = true,
                Ok(n) => {
                    self.session.received(n);
                    self.busy = n >= READ_SMALL / 2;
                    self.take_input();
                }
            }
        }
        true
    }
}

impl<S> Drop for Connection<S> {
    fn drop(&mut self) {
        // Also when the task is dropped unfinished (the runtime stopping).
        if self.timer != 0 {
            self.deadlines.unfile(self.timer, self.session.id());
        }
    }
}

/// Tells each open MQTT connection when the broker shuts down, as an event
/// on its channel, so that an idle connection need not keep a waiter on
/// the shutdown token of its own. A connection still waiting for CONNECT
/// is not in the registry yet and watches the token itself.
pub async fn close_on_shutdown(broker: Arc<Broker>, shutdown: CancellationToken) {
    shutdown.cancelled().await;
    broker
        .connections
        .close_where(|c| c.protocol == Protocol::Mqtt, SHUTTING_DOWN);
}

/// Decodes and handles the packets in `rbuf`. Returns whether a PUBLISH
/// was handled during a resource alarm (the rest waits in `rbuf`), and how
/// many PUBLISH packets were handled.
fn decode_input(
    decoder: &mut Decoder,
    rbuf: &mut BytesMut,
    session: &mut Session,
    wbuf: &mut BytesMut,
) -> (bool, u32) {
    let mut held = false;
    let mut published = 0;
    loop {
        match decoder.decode(rbuf) {
            Ok(Some(packet)) => {
                let publish = matches!(packet, Inbound::Packet(v5::Packet::Publish(_)));
                published += u32::from(publish);
                session.on_packet(packet, wbuf);
                if session.is_done() {
                    break;
                }
                if publish && session.broker().alarms.current().any() {
                    held = true;
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::info!(peer = %session.peer(), client = session.client_id(), error = %e, "bad MQTT input");
                session.on_codec_error(&e, decoder.version(), wbuf);
                rbuf.clear();
                break;
            }
        }
    }
    session.end_of_batch();
    (held, published)
}

/// Publishes the will and expires the parked session when their times
/// come, unless a new connection resumed the session first.
fn linger(f: Farewell) {
    let Some(vhost) = f.vhost else { return };
    let mut will = f.will;
    if will.as_ref().is_some_and(|w| w.delay == 0)
        && let Some(w) = will.take()
    {
        publish_will(&vhost, &w);
    }
    let Some(generation) = f.generation else {
        return;
    };
    if will.is_none() && f.expiry.is_none() {
        return;
    }
    let client_id = f.client_id;
    let queue = f.queue;
    if let Some(w) = &will {
        super::durable::will_waits(&vhost, &client_id, w);
    }
    tokio::spawn(async move {
        let start = Instant::now();
        if let Some(w) = will {
            sleep(Duration::from_secs(w.delay.into())).await;
            if vhost.sessions().is_current(&client_id, generation) {
                publish_will(&vhost, &w);
                super::durable::will_sent(&vhost, &client_id);
            }
        }
        if let Some(expiry) = f.expiry {
            sleep_until(start + Duration::from_secs(expiry.into())).await;
            super::durable::expire(&vhost, &client_id, generation, queue.as_ref());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::session::tests::broker;
    use tokio::io::DuplexStream;
    use tokio::task::JoinHandle;

    /// A connection served over an in-memory pipe, with its clock ticking.
    fn start() -> (DuplexStream, JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(4096);
        let deadlines = Arc::new(Deadlines::default());
        tokio::spawn(deadlines.ticker());
        let task = tokio::spawn(serve(
            server,
            "127.0.0.1:5000".parse().expect("address"),
            broker(),
            Arc::new(Settings::default()),
            deadlines,
            CancellationToken::new(),
        ));
        (client, task)
    }

    /// Reads until the broker closes; returns how long that took.
    async fn until_closed(client: &mut DuplexStream) -> Duration {
        let start = Instant::now();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("read");
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_sends_connect_is_closed_after_the_connect_timeout() {
        let (mut client, task) = start();
        client.write_all(&[0x10]).await.expect("write");
        let waited = until_closed(&mut client).await;
        assert!(
            waited >= CONNECT_TIMEOUT && waited <= CONNECT_TIMEOUT + Duration::from_secs(1),
            "closed after {waited:?}"
        );
        task.await.expect("no panic");
    }

    #[tokio::test(start_paused = true)]
    async fn a_keepalive_is_enforced_at_one_and_a_half_times_and_pings_move_it() {
        let (mut client, task) = start();
        // 3.1.1 CONNECT, clean session, keepalive 4 s.
        let connect = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x04\x00\x04ping".to_vec();
        client.write_all(&connect).await.expect("write");
        let mut ack = [0u8; 4];
        client.read_exact(&mut ack).await.expect("CONNACK");
        assert_eq!(ack, [0x20, 2, 0, 0]);
        // Pings every 5 s keep it open past the first deadline (6 s).
        for _ in 0..3 {
            sleep(Duration::from_secs(5)).await;
            client.write_all(&[0xc0, 0]).await.expect("PINGREQ");
            client.read_exact(&mut ack[..2]).await.expect("PINGRESP");
            assert_eq!(ack[..2], [0xd0, 0]);
        }
        let waited = until_closed(&mut client).await;
        assert!(
            waited >= Duration::from_secs(6) && waited <= Duration::from_secs(7),
            "closed after {waited:?}"
        );
        task.await.expect("no panic");
    }
}
