//! One task per AMQP connection: read frames, hand them to the session,
//! turn core events into frames, write in bulk, keep heartbeats.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, sleep_until};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use super::codec::AmqpCodec;
use super::error::CONNECTION_FORCED;
use super::session::{FRAME_MAX, Session};
use crate::core::Broker;
use crate::core::event_channel::{EventStream, Round, in_rounds};
use crate::core::publisher_flow::{Wait, wait_for};

/// Events taken from the connection's channel per wake-up.
const EVENT_BATCH: usize = 512;
/// Stop reading while this much output waits for a slow client, so a
/// publisher that never reads its confirms cannot grow our buffers.
const WRITE_HIGH_WATER: usize = 4 * 1024 * 1024;
/// Time a client has to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to answer connection.close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves one AMQP connection until either side closes it.
pub async fn serve<S>(stream: S, peer: SocketAddr, broker: Arc<Broker>, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = crate::core::event_channel::channel();
    let mut durable = broker.durable();
    let mut alarms = broker.alarms.watch();
    let mut session = Session::new(broker, peer, tx);
    session.on_alarm(*alarms.borrow_and_update(), &mut BytesMut::new());
    let mut codec = AmqpCodec::new(FRAME_MAX as usize);
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    let mut writing = BytesMut::new();
    let mut batch = Vec::with_capacity(EVENT_BATCH);
    let started = Instant::now();
    let mut last_read = started;
    let mut last_write = started;
    let mut close_deadline: Option<Instant> = None;
    let mut eof = false;
    // A queue whose consumers this connection's publishes outran, and how
    // long it waits for them (core/publisher_flow.rs).
    let mut behind: Wait = None;

    loop {
        if writing.is_empty() && !wbuf.is_empty() {
            std::mem::swap(&mut writing, &mut wbuf);
            session.after_write();
        }
        if session.is_done() && writing.is_empty() {
            // After close-ok, give the client a moment to read it and close
            // its end first: some clients report an abort if the socket
            // closes before they have processed the close-ok.
            if !session.closed_by_client() {
                break;
            }
            close_deadline.get_or_insert_with(|| Instant::now() + CLOSE_TIMEOUT);
            rbuf.clear();
        }
        if eof && writing.is_empty() {
            break;
        }
        if (session.is_closing() || session.is_done()) && close_deadline.is_none() {
            close_deadline = Some(Instant::now() + CLOSE_TIMEOUT);
        }
        let heartbeat = Duration::from_secs(session.heartbeat().into());
        let deadline = match (close_deadline, heartbeat.is_zero()) {
            (Some(at), _) => at,
            _ if !session.is_open() => started + HANDSHAKE_TIMEOUT,
            (None, true) => Instant::now() + Duration::from_secs(3600),
            (None, false) => (last_write + heartbeat / 2).min(last_read + heartbeat * 2),
        };
        let can_read = !eof
            && (!session.is_done() || session.closed_by_client())
            && !session.is_held()
            && behind.is_none()
            && wbuf.len() < WRITE_HIGH_WATER;
        tokio::select! {
            r = wr.write_buf(&mut writing), if !writing.is_empty() => {
                match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        session.sent(n);
                        last_write = Instant::now();
                    }
                }
            }
            r = rd.read_buf(&mut rbuf), if can_read => {
                match r {
                    Ok(0) | Err(_) => {
                        eof = true;
                        continue;
                    }
                    Ok(n) => session.received(n),
                }
                last_read = Instant::now();
                if !drain_frames(&mut codec, &mut rbuf, &mut session, &mut wbuf, peer, &mut rx).await {
                    eof = true;
                }
                behind = session.flow().take();
            }
            () = wait_for(&behind), if behind.is_some() => {
                session.flow().waited(&mut behind);
                last_read = Instant::now();
                // Frames left in the buffer when the wait began.
                if !session.is_held() && !drain_frames(&mut codec, &mut rbuf, &mut session, &mut wbuf, peer, &mut rx).await {
                    eof = true;
                }
                behind = session.flow().take();
            }
            r = alarms.changed() => {
                if r.is_err() { break; }
                let now = *alarms.borrow_and_update();
                session.on_alarm(now, &mut wbuf);
                last_read = Instant::now();
                // Frames held back while blocked are handled now, unless a
                // wait for a queue's consumers takes them when it ends.
                if !session.is_held() && behind.is_none() {
                    if !drain_frames(&mut codec, &mut rbuf, &mut session, &mut wbuf, peer, &mut rx).await {
                        eof = true;
                    }
                    behind = session.flow().take();
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
                    // The journal stopped: no confirm can become durable.
                    Err(_) => durable = None,
                }
            }
            () = shutdown.cancelled(), if !session.is_closing() && !session.is_done() => {
                session.close_connection(CONNECTION_FORCED, "CONNECTION_FORCED - broker shutdown", (0, 0), &mut wbuf);
                if !session.is_closing() { break; }
            }
            () = sleep_until(deadline) => {
                let now = Instant::now();
                if close_deadline.is_some_and(|d| now >= d) {
                    break;
                }
                if !session.is_open() && !session.is_closing() && now >= started + HANDSHAKE_TIMEOUT {
                    tracing::info!(%peer, "handshake timed out");
                    break;
                }
                if !heartbeat.is_zero() {
                    // A blocked client may stop writing altogether, heart-beats
                    // included; RabbitMQ pauses this check while blocked too.
                    if now >= last_read + heartbeat * 2 && !session.is_blocked() {
                        tracing::info!(%peer, user = session.user_name(), "missed heartbeats from client, closing");
                        break;
                    }
                    if now >= last_write + heartbeat / 2 && wbuf.is_empty() && writing.is_empty() {
                        super::codec::FrameWriter::heartbeat(&mut wbuf);
                        last_write = now;
                    }
                }
            }
        }
    }
    session.release();
    // Releasing requeues the unacked deliveries before it cancels the
    // consumers, so a queue may have handed some straight back to a
    // consumer of this connection. They wait here as events; the session,
    // which no longer knows those consumers, returns them to their queues.
    rx.close();
    let mut discard = BytesMut::new();
    rx.take_queued(|event| session.on_event(event, &mut discard));
    let _ = wr.shutdown().await;
}

/// Decodes and handles every complete frame in `rbuf`, stopping early when
/// the session holds a publisher back. Returns false when the input is
/// unusable and the connection must end.
/// The consumers its publishes reach get to run as it goes (`in_rounds`).
///
/// After frames that closed a channel, the events already queued for the
/// connection are handled too. Deliveries a queue handed the channel's
/// consumers before the close (or before a basic.cancel ahead of it) wait
/// there, and `Session::on_event` gives those of consumers no longer known
/// back to their queues: they are ready again before the close-ok is
/// written, as with RabbitMQ. Nothing is handed to a cancelled consumer
/// after its cancel, so every such delivery is queued by then.
async fn drain_frames(
    codec: &mut AmqpCodec,
    rbuf: &mut BytesMut,
    session: &mut Session,
    wbuf: &mut BytesMut,
    peer: SocketAddr,
    rx: &mut EventStream,
) -> bool {
    let ok = in_rounds(|quota| {
        while !session.is_held() && !session.flow().is_behind() && !session.is_done() {
            match codec.decode(rbuf) {
                Ok(Some(frame)) => {
                    // Only a publish carries a content header from a client.
                    let publish = matches!(frame, super::codec::Inbound::Header(..));
                    session.on_frame(frame, wbuf);
                    codec.set_frame_max(session.frame_max());
                    if publish && quota.published() {
                        return Round::Full;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(%peer, user = session.user_name(), error = %e, "bad AMQP input");
                    session.on_codec_error(&e, wbuf);
                    rbuf.clear();
                    return Round::Done(false);
                }
            }
        }
        Round::Done(true)
    })
    .await;
    if session.take_channel_closed() {
        rx.take_queued(|event| session.on_event(event, wbuf));
    }
    session.flush_confirms(wbuf);
    ok
}
