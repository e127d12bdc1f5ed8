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
use tokio::time::{Instant, Sleep, sleep, sleep_until};
use tokio_util::sync::{CancellationToken, ReusableBoxFuture, WaitForCancellationFutureOwned};

use super::codec::{Decoder, Inbound};
use super::error::Disconnect;
use super::session::{Farewell, SHUTTING_DOWN, Session, Settings, publish_will};
use crate::core::change::LogPosition;
use crate::core::event_channel::EventStream;
use crate::core::{Broker, Event, Protocol};

/// Events taken from the connection's channel per wake-up.
const EVENT_BATCH: usize = 512;
/// Stop reading while this much output waits for a slow client, so a
/// publisher that never reads its acks cannot grow our buffers.
const WRITE_HIGH_WATER: usize = 4 * 1024 * 1024;
/// Bytes made room for before a read while the client is sending a lot.
const READ_CHUNK: usize = 8 * 1024;
/// Bytes read at a time while it sends little (pings, small publishes),
/// through a buffer on the stack: an idle connection holds no read buffer.
const READ_SMALL: usize = 64;
/// Buffers larger than this are let go once drained, so an idle
/// connection holds almost no memory (thousands of idle devices are the
/// common case for MQTT).
const IDLE_BUFFER: usize = 1024;
/// Time a client has to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a closing connection has to flush its last packets (a DISCONNECT,
/// acks) to a client that is slow to read them.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Rounds of work one poll of the task does at most.
const WAKES_PER_POLL: usize = 64;
/// How far off "no deadline" is.
const NO_DEADLINE: Duration = Duration::from_secs(3600);

/// Waits for a watched value to change; gives the receiver back, or
/// `None` once the sender is gone.
type Change<T> = ReusableBoxFuture<'static, Option<watch::Receiver<T>>>;

async fn changed<T: Send + Sync>(mut rx: watch::Receiver<T>) -> Option<watch::Receiver<T>> {
    rx.changed().await.ok().map(|()| rx)
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
    rbuf: BytesMut,
    wbuf: BytesMut,
    writing: BytesMut,
    last_read: Instant,
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
    timer: bool,
}

/// Serves one MQTT connection until either side closes it.
// Not an `async fn`: its arguments would stay in the task beside the
// `Connection` made of them.
pub fn serve<S>(
    stream: S,
    peer: SocketAddr,
    broker: Arc<Broker>,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, events) = crate::core::event_channel::channel();
    let mut c = Connection {
        stream,
        events,
        decoder: Decoder::new(settings.max_packet),
        session: Session::new(broker, settings, peer, tx),
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        writing: BytesMut::new(),
        last_read: Instant::now(),
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
        let timer = sleep_until(Instant::now() + CONNECT_TIMEOUT);
        tokio::pin!(timer);
        poll_fn(|cx| self.poll_serve(cx, timer.as_mut())).await;
        // Ahead of the socket's shutdown, which may wait: the farewell
        // need not be kept across it.
        linger(self.session.release());
        let _ = self.stream.shutdown().await;
    }

    /// The connection's loop, as one poll: ready when the connection is over.
    fn poll_serve(&mut self, cx: &mut Context<'_>, mut timer: Pin<&mut Sleep>) -> Poll<()> {
        // Events taken from the channel: on the stack, not in the task.
        let mut batch = Vec::new();
        for round in 0..WAKES_PER_POLL {
            if !self.prepare() {
                return Poll::Ready(());
            }
            if let Some(target) = self.deadline()
                && target < timer.deadline()
            {
                timer.as_mut().reset(target);
            }
            let can_read = self.can_read();
            let polled = self.poll_wake(cx, timer.as_mut(), &mut batch, can_read, round == 0);
            let Poll::Ready(wake) = polled else {
                return Poll::Pending;
            };
            if !self.handle(wake, &mut batch, timer.as_mut()) {
                return Poll::Ready(());
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
        if self.writing.is_empty() && !self.wbuf.is_empty() {
            std::mem::swap(&mut self.writing, &mut self.wbuf);
            self.session.after_write();
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > IDLE_BUFFER {
            self.wbuf = BytesMut::new();
        }
        if self.rbuf.is_empty() && (self.rbuf.capacity() > IDLE_BUFFER || !self.busy) {
            self.rbuf = BytesMut::new();
        }
        if (self.session.is_done() || self.eof) && self.writing.is_empty() {
            return false;
        }
        let read_size = if self.busy { READ_CHUNK } else { READ_SMALL };
        // An idle client's small reads go through the stack instead.
        let into_rbuf = self.busy || !self.rbuf.is_empty();
        if into_rbuf && self.can_read() && self.rbuf.capacity() - self.rbuf.len() < read_size / 2 {
            self.rbuf.reserve(read_size);
        }
        true
    }

    fn can_read(&self) -> bool {
        !self.eof && !self.held && !self.session.is_done() && self.wbuf.len() < WRITE_HIGH_WATER
    }

    /// When the timer should fire; `None`: where it was set first (the
    /// CONNECT timeout). It is only ever moved earlier here, later when it
    /// fires early.
    fn deadline(&self) -> Option<Instant> {
        let keep_alive = self.session.keep_alive();
        if self.session.is_done() {
            // Counted from the first look, as the timer only moves earlier.
            Some(Instant::now() + CLOSE_GRACE)
        } else if !self.session.is_open() {
            None
        } else if keep_alive > 0 && !self.held {
            // MQTT-3.1.2-24: one and a half keepalives without a packet.
            Some(self.last_read + Duration::from_millis(u64::from(keep_alive) * 1500))
        } else {
            Some(Instant::now() + NO_DEADLINE)
        }
    }

    fn shutting_down(&mut self) {
        self.session.fail(
            Disconnect::new(DisconnectReasonCode::ServerShuttingDown, SHUTTING_DOWN),
            &mut self.wbuf,
        );
    }

    /// Waits for the alarm that holds a PUBLISH to clear.
    fn wait_for_alarm(&mut self) {
        let rx = self.session.broker().alarms.watch();
        if !rx.borrow().any() {
            // Cleared before we looked.
            self.release_held();
            return;
        }
        let waits = self.waits.get_or_insert_with(Box::default);
        match &mut waits.alarm {
            Some(f) => f.set(changed(rx)),
            None => waits.alarm = Some(ReusableBoxFuture::new(changed(rx))),
        }
        waits.alarm_waiting = true;
    }

    /// Goes on reading once the alarms have cleared.
    fn release_held(&mut self) {
        // Packets that came in behind the held PUBLISH go first.
        self.last_read = Instant::now();
        self.held = decode_input(
            &mut self.decoder,
            &mut self.rbuf,
            &mut self.session,
            &mut self.wbuf,
        );
    }

    /// Catches up with the journal, then waits for it to move on while
    /// acks wait.
    fn wait_for_journal(&mut self) {
        let Some(mut rx) = self.session.broker().durable() else {
            self.waits.get_or_insert_with(Box::default).journal_gone = true;
            return;
        };
        let at = *rx.borrow_and_update();
        self.session.set_durable(at, &mut self.wbuf);
        self.await_journal(rx);
    }

    fn await_journal(&mut self, rx: watch::Receiver<LogPosition>) {
        if !self.session.awaits_durability() {
            return;
        }
        let waits = self.waits.get_or_insert_with(Box::default);
        match &mut waits.durable {
            Some(f) => f.set(changed(rx)),
            None => waits.durable = Some(ReusableBoxFuture::new(changed(rx))),
        }
        waits.durable_waiting = true;
    }

    /// Polls whatever the connection waits for; ready when anything is.
    fn poll_wake(
        &mut self,
        cx: &mut Context<'_>,
        timer: Pin<&mut Sleep>,
        batch: &mut Vec<Event>,
        can_read: bool,
        first: bool,
    ) -> Poll<Wake> {
        let mut w = Wake::default();
        if !self.writing.is_empty() {
            // The futures of `write_buf` and `read_buf` keep nothing
            // between polls: the socket remembers who waits.
            let write = self.stream.write_buf(&mut self.writing);
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
        // The timer is looked at in a task's first round and whenever
        // nothing else is ready, which is before every wait.
        if (first || !busy) && timer.poll(cx).is_ready() {
            w.timer = true;
        }
        if busy || w.timer {
            Poll::Ready(w)
        } else {
            Poll::Pending
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> Option<io::Result<usize>> {
        if self.rbuf.is_empty() && !self.busy {
            let stream = Pin::new(&mut self.stream);
            let mut small = [0u8; READ_SMALL];
            let mut buf = ReadBuf::new(&mut small);
            return match stream.poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    self.rbuf.extend_from_slice(buf.filled());
                    Some(Ok(buf.filled().len()))
                }
                Poll::Ready(Err(e)) => Some(Err(e)),
                Poll::Pending => None,
            };
        }
        let read = self.stream.read_buf(&mut self.rbuf);
        match std::pin::pin!(read).poll(cx) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    /// Acts on what a wake-up found; false when the connection is over.
    fn handle(&mut self, w: Wake, batch: &mut Vec<Event>, timer: Pin<&mut Sleep>) -> bool {
        let was_done = self.session.is_done();
        if let Some(r) = w.wrote {
            match r {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.session.sent(n),
            }
            if self.writing.is_empty() {
                self.writing = BytesMut::new();
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
                _ => self.release_held(),
            }
        }
        if let Some(r) = w.durable {
            match r {
                Some(mut rx) => {
                    let at = *rx.borrow_and_update();
                    self.session.set_durable(at, &mut self.wbuf);
                    self.await_journal(rx);
                }
                None => self.waits.get_or_insert_with(Box::default).journal_gone = true,
            }
        }
        if let Some(n) = w.events {
            if n == 0 {
                return false;
            }
            for event in batch.drain(..) {
                self.session.on_event(event, &mut self.wbuf);
            }
            self.session.end_of_batch();
        }
        if let Some(r) = w.read {
            match r {
                Ok(0) | Err(_) => self.eof = true,
                Ok(n) => {
                    self.session.received(n);
                    self.busy = n >= READ_SMALL / 2;
                    self.last_read = Instant::now();
                    self.held = decode_input(
                        &mut self.decoder,
                        &mut self.rbuf,
                        &mut self.session,
                        &mut self.wbuf,
                    );
                }
            }
        }
        if w.timer {
            let peer = self.session.peer();
            if was_done {
                // Its last packets have had their time to go out.
                return false;
            }
            if !self.session.is_open() && !self.session.is_done() {
                tracing::info!(%peer, "no CONNECT in time");
                return false;
            }
            let Some(target) = self.deadline() else {
                return true;
            };
            if self.session.is_open()
                && self.session.keep_alive() > 0
                && !self.held
                && Instant::now() >= target
            {
                tracing::info!(%peer, client = self.session.client_id(), "keepalive expired");
                self.session.fail(
                    Disconnect::new(DisconnectReasonCode::KeepAliveTimeout, "keepalive expired"),
                    &mut self.wbuf,
                );
            } else {
                timer.reset(target);
            }
        }
        true
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

/// Decodes and handles the packets in `rbuf`. Returns true when a PUBLISH
/// was handled during a resource alarm: the rest waits in `rbuf`.
fn decode_input(
    decoder: &mut Decoder,
    rbuf: &mut BytesMut,
    session: &mut Session,
    wbuf: &mut BytesMut,
) -> bool {
    let mut held = false;
    loop {
        match decoder.decode(rbuf) {
            Ok(Some(packet)) => {
                let publish = matches!(packet, Inbound::Packet(v5::Packet::Publish(_)));
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
    held
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
    tokio::spawn(async move {
        let start = Instant::now();
        if let Some(w) = will {
            sleep(Duration::from_secs(w.delay.into())).await;
            if vhost.sessions().is_current(&client_id, generation) {
                publish_will(&vhost, &w);
            }
        }
        if let Some(expiry) = f.expiry {
            sleep_until(start + Duration::from_secs(expiry.into())).await;
            super::durable::expire(&vhost, &client_id, generation, queue.as_ref());
        }
    });
}
