//! One task per STOMP connection: read and decode frames, hand them to the
//! session, turn core events into frames, write in bulk, keep heart-beats
//! and watch for a dead peer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use super::codec::{Command, Item, StompCodec};
use super::session::{Session, Settings};
use crate::core::Broker;
use crate::core::alarm::Alarms;
use crate::core::event_channel::{EventStream, Round, in_rounds};
use crate::core::publisher_flow::{Wait, wait_for};

/// Events taken from the connection's channel per wake-up.
const EVENT_BATCH: usize = 512;
/// Stop reading while this much output waits for a slow client, so a
/// publisher that never reads its receipts cannot grow our buffers.
const WRITE_HIGH_WATER: usize = 4 * 1024 * 1024;
/// Time a client has to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time owed receipts have to become durable at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A client that stops sending is declared dead after this many of its
/// heart-beat intervals (STOMP 1.2 "Heart-beating": allow an error margin).
const DEAD_PEER_INTERVALS: u32 = 2;
/// "No deadline": far enough away, near enough not to overflow an Instant.
const IDLE: Duration = Duration::from_secs(3600);

/// Serves one STOMP connection until either side closes it.
pub async fn serve<S>(stream: S, peer: SocketAddr, broker: Arc<Broker>, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let settings = Arc::new(Settings::for_broker(&broker));
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = crate::core::event_channel::channel();
    let mut durable = broker.durable();
    let mut alarms = Some(broker.alarms.watch());
    // A SEND arrived during a resource alarm: nothing more is read until it
    // clears, so the publisher feels TCP back-pressure (as RabbitMQ's STOMP
    // adapter does), while what was sent to it still goes out.
    let mut held = false;
    let mut codec = StompCodec::new(settings.limits);
    let mut session = Session::new(broker, settings, peer, tx);
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    let mut writing = BytesMut::new();
    let mut batch = Vec::with_capacity(EVENT_BATCH);
    if let Some(d) = durable.as_mut() {
        let at = *d.borrow_and_update();
        session.set_durable(at, &mut wbuf);
    }
    let started = Instant::now();
    let mut last_read = started;
    let mut last_write = started;
    let mut close_deadline: Option<Instant> = None;
    let mut eof = false;
    // A queue whose consumers this connection's SENDs outran, and how long
    // it waits for them (core/publisher_flow.rs).
    let mut behind: Wait = None;

    loop {
        if writing.is_empty() && !wbuf.is_empty() {
            std::mem::swap(&mut writing, &mut wbuf);
            session.after_write();
        }
        if writing.is_empty() && (session.is_done() || eof) {
            break;
        }
        let beat = session.heartbeat();
        let can_read = !eof
            && !held
            && behind.is_none()
            && session.is_reading()
            && wbuf.len() < WRITE_HIGH_WATER;
        let idle_out = wbuf.is_empty() && writing.is_empty();
        let now = Instant::now();
        let deadline = if let Some(at) = close_deadline {
            at
        } else if !session.is_connected() {
            started + CONNECT_TIMEOUT
        } else {
            // Only an idle output owes a heart-beat, and only a client we
            // are reading from can be late with one.
            let send = beat
                .send
                .filter(|_| idle_out)
                .map_or(now + IDLE, |i| last_write + i);
            let receive = beat
                .receive
                .filter(|_| can_read)
                .map_or(now + IDLE, |i| last_read + i * DEAD_PEER_INTERVALS);
            send.min(receive)
        };
        tokio::select! {
            r = wr.write_buf(&mut writing), if !writing.is_empty() => {
                match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        last_write = Instant::now();
                        session.sent(n);
                    }
                }
            }
            r = rd.read_buf(&mut rbuf), if can_read => {
                // A read error ends the stream as EOF does.
                let n: usize = r.unwrap_or_default();
                if n > 0 {
                    last_read = Instant::now();
                    session.received(n);
                }
                held = decode_input(&mut codec, &mut rbuf, n == 0, &mut session, &mut wbuf, alarms.as_ref(), peer, &mut rx).await;
                if n == 0 {
                    eof = true;
                }
                behind = session.flow().take();
            }
            () = wait_for(&behind), if behind.is_some() => {
                session.flow().waited(&mut behind);
                last_read = Instant::now();
                // Frames that came in behind the SEND that began the wait.
                if !held {
                    held = decode_input(&mut codec, &mut rbuf, eof, &mut session, &mut wbuf, alarms.as_ref(), peer, &mut rx).await;
                    behind = session.flow().take();
                }
            }
            r = async { alarms.as_mut().expect("guarded by is_some").changed().await },
                if alarms.is_some() && held => {
                if r.is_err() {
                    alarms = None;
                }
                if alarms.as_ref().is_none_or(|a| !a.borrow().any()) {
                    // Frames that came in behind the held SEND go first,
                    // unless a wait for a queue's consumers takes them
                    // when it ends.
                    held = false;
                    if behind.is_none() {
                        last_read = Instant::now();
                        held = decode_input(&mut codec, &mut rbuf, eof, &mut session, &mut wbuf, alarms.as_ref(), peer, &mut rx).await;
                        behind = session.flow().take();
                    }
                }
            }
            n = rx.recv_many(&mut batch, EVENT_BATCH) => {
                if n == 0 { break; }
                for event in batch.drain(..) {
                    session.on_event(event, &mut wbuf);
                }
            }
            r = async { durable.as_mut().expect("guarded by is_some").changed().await },
                if durable.is_some() && session.awaits_durability() => {
                match r {
                    Ok(()) => {
                        let at = *durable.as_mut().expect("guarded by is_some").borrow_and_update();
                        session.set_durable(at, &mut wbuf);
                    }
                    // The journal stopped: no receipt can become durable.
                    Err(_) => durable = None,
                }
            }
            () = shutdown.cancelled(), if close_deadline.is_none() && !session.is_done() => {
                session.shutdown(&mut wbuf);
                close_deadline = Some(Instant::now() + CLOSE_TIMEOUT);
            }
            () = sleep_until(deadline) => {
                let now = Instant::now();
                if let Some(at) = close_deadline {
                    if now < at {
                        continue;
                    }
                    if session.is_done() {
                        // The client is not reading its ERROR: give up on it.
                        break;
                    }
                    session.close_for_shutdown(&mut wbuf);
                    close_deadline = Some(now + CLOSE_TIMEOUT);
                    continue;
                }
                if !session.is_connected() {
                    if now >= started + CONNECT_TIMEOUT {
                        tracing::info!(%peer, "no CONNECT in time, closing");
                        break;
                    }
                    continue;
                }
                if let Some(i) = beat.receive
                    && can_read
                    && now >= last_read + i * DEAD_PEER_INTERVALS
                {
                    tracing::info!(%peer, user = session.user_name(), vhost = session.vhost_name(),
                        "missed heart-beats from client, closing");
                    break;
                }
                if let Some(i) = beat.send
                    && idle_out
                    && now >= last_write + i
                {
                    // An EOL between frames is a heart-beat.
                    wbuf.extend_from_slice(b"\n");
                }
            }
        }
    }
    session.release();
    session.give_back_unwritten();
    // Deliveries sent before the consumers were cancelled go back to their
    // queues rather than vanish with the channel.
    rx.close();
    let mut discard = BytesMut::new();
    rx.take_queued(|event| {
        session.on_event(event, &mut discard);
        discard.clear();
    });
    let _ = wr.shutdown().await;
}

/// Decodes and handles the frames in `rbuf` (`at_eof`: no more will come).
/// Returns true when a SEND was handled during a resource alarm: the rest
/// waits in `rbuf`. The consumers its SENDs reach get to run as it goes
/// (`in_rounds`).
///
/// After frames that ended a subscription (UNSUBSCRIBE, DISCONNECT), the
/// events already queued are handled too: deliveries made to it before it
/// ended wait there, and `Session::on_event` gives those back to their
/// queues, so they are ready again before its RECEIPT is written.
#[allow(clippy::too_many_arguments)]
async fn decode_input(
    codec: &mut StompCodec,
    rbuf: &mut BytesMut,
    at_eof: bool,
    session: &mut Session,
    wbuf: &mut BytesMut,
    alarms: Option<&watch::Receiver<Alarms>>,
    peer: SocketAddr,
    rx: &mut EventStream,
) -> bool {
    let held = in_rounds(|quota| {
        let held = loop {
            let decoded = if at_eof {
                codec.decode_eof(rbuf)
            } else {
                codec.decode(rbuf)
            };
            match decoded {
                Ok(Some(Item::Frame(frame))) => {
                    let send = frame.command == Command::Send;
                    session.on_frame(frame, wbuf);
                    codec.set_version(session.version());
                    if !session.is_reading() {
                        break false;
                    }
                    if send && alarms.is_some_and(|a| a.borrow().any()) {
                        break true;
                    }
                    if session.flow().is_behind() {
                        break false;
                    }
                    if send && quota.published() {
                        return Round::Full;
                    }
                }
                Ok(Some(Item::Heartbeat)) => {}
                Ok(None) => break false,
                Err(e) => {
                    tracing::info!(%peer, user = session.user_name(), vhost = session.vhost_name(),
                        error = %e, "bad STOMP input");
                    session.on_codec_error(&e, wbuf);
                    rbuf.clear();
                    break false;
                }
            }
        };
        Round::Done(held)
    })
    .await;
    if session.take_unsubscribed() {
        rx.take_queued(|event| session.on_event(event, wbuf));
    }
    held
}
