//! One task per MQTT connection: read packets, hand them to the session,
//! turn core events into packets, write in bulk, enforce the keepalive;
//! after the socket closes, time the will and the session's expiry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rmqtt_codec::v5::{self, DisconnectReasonCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use super::codec::{Decoder, Inbound};
use super::error::Disconnect;
use super::session::{Farewell, Session, Settings, publish_will};
use crate::core::Broker;
use crate::core::alarm::Alarms;

/// Events taken from the connection's channel per wake-up.
const EVENT_BATCH: usize = 512;
/// Stop reading while this much output waits for a slow client, so a
/// publisher that never reads its acks cannot grow our buffers.
const WRITE_HIGH_WATER: usize = 4 * 1024 * 1024;
/// Bytes made room for before a read while the client is sending a lot.
const READ_CHUNK: usize = 8 * 1024;
/// Bytes made room for while it sends little (pings, small publishes):
/// an idle connection waits on a buffer this small.
const READ_SMALL: usize = 64;
/// Buffers larger than this are let go once drained, so an idle
/// connection holds almost no memory (thousands of idle devices are the
/// common case for MQTT).
const IDLE_BUFFER: usize = 1024;
/// Time a client has to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one MQTT connection until either side closes it.
pub async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    broker: Arc<Broker>,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let (tx, mut rx) = crate::core::event_channel::channel();
    let mut durable = broker.durable();
    let mut alarms = Some(broker.alarms.watch());
    // A PUBLISH arrived during a resource alarm: nothing more is read until
    // it clears, so the publisher feels TCP back-pressure (as RabbitMQ's
    // MQTT adapter does), while what was sent to it still goes out.
    let mut held = false;
    let mut decoder = Decoder::new(settings.max_packet);
    let mut session = Session::new(broker, settings, peer, tx);
    let mut rbuf = BytesMut::new();
    let mut wbuf = BytesMut::new();
    let mut writing = BytesMut::new();
    let mut batch = Vec::new();
    let started = Instant::now();
    let mut last_read = started;
    let mut eof = false;
    let mut read_size = READ_SMALL;

    loop {
        if writing.is_empty() && !wbuf.is_empty() {
            std::mem::swap(&mut writing, &mut wbuf);
            session.after_write();
        }
        if wbuf.is_empty() && wbuf.capacity() > IDLE_BUFFER {
            wbuf = BytesMut::new();
        }
        if rbuf.is_empty() && rbuf.capacity() > IDLE_BUFFER {
            rbuf = BytesMut::new();
        }
        if (session.is_done() || eof) && writing.is_empty() {
            break;
        }
        let keep_alive = session.keep_alive();
        let deadline = if !session.is_open() {
            started + CONNECT_TIMEOUT
        } else if keep_alive > 0 && !held {
            // MQTT-3.1.2-24: one and a half keepalives without a packet.
            last_read + Duration::from_millis(u64::from(keep_alive) * 1500)
        } else {
            Instant::now() + Duration::from_secs(3600)
        };
        let can_read = !eof && !held && !session.is_done() && wbuf.len() < WRITE_HIGH_WATER;
        if can_read && rbuf.capacity() - rbuf.len() < read_size / 2 {
            rbuf.reserve(read_size);
        }
        tokio::select! {
            r = wr.write_buf(&mut writing), if !writing.is_empty() => {
                match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => session.sent(n),
                }
                if writing.is_empty() {
                    writing = BytesMut::new();
                }
            }
            r = rd.read_buf(&mut rbuf), if can_read => {
                let n = match r {
                    Ok(0) | Err(_) => {
                        eof = true;
                        continue;
                    }
                    Ok(n) => n,
                };
                session.received(n);
                read_size = if n >= READ_SMALL / 2 { READ_CHUNK } else { READ_SMALL };
                last_read = Instant::now();
                held = decode_input(&mut decoder, &mut rbuf, &mut session, &mut wbuf, alarms.as_ref(), peer);
            }
            r = async { alarms.as_mut().expect("guarded by is_some").changed().await },
                if alarms.is_some() && held => {
                if r.is_err() {
                    alarms = None;
                }
                if alarms.as_ref().is_none_or(|a| !a.borrow().any()) {
                    // Packets that came in behind the held PUBLISH go first.
                    last_read = Instant::now();
                    held = decode_input(&mut decoder, &mut rbuf, &mut session, &mut wbuf, alarms.as_ref(), peer);
                }
            }
            n = rx.recv_many(&mut batch, EVENT_BATCH) => {
                if n == 0 { break; }
                for event in batch.drain(..) {
                    session.on_event(event, &mut wbuf);
                }
                if batch.capacity() > 64 {
                    batch = Vec::new();
                }
                session.end_of_batch();
            }
            r = async { durable.as_mut().expect("guarded by is_some").changed().await },
                if durable.is_some() && session.awaits_durability() => {
                match r {
                    Ok(()) => {
                        let at = *durable.as_mut().expect("guarded by is_some").borrow_and_update();
                        session.set_durable(at, &mut wbuf);
                    }
                    // The journal stopped: no ack can become durable.
                    Err(_) => durable = None,
                }
            }
            () = shutdown.cancelled(), if !session.is_done() => {
                session.fail(Disconnect::new(DisconnectReasonCode::ServerShuttingDown, "broker shutdown"), &mut wbuf);
            }
            () = sleep_until(deadline) => {
                if !session.is_open() {
                    tracing::info!(%peer, "no CONNECT in time");
                    break;
                }
                if keep_alive > 0 && Instant::now() >= deadline {
                    tracing::info!(%peer, client = session.client_id(), "keepalive expired");
                    session.fail(Disconnect::new(DisconnectReasonCode::KeepAliveTimeout, "keepalive expired"), &mut wbuf);
                }
            }
        }
    }
    let farewell = session.release();
    let _ = wr.shutdown().await;
    linger(farewell).await;
}

/// Decodes and handles the packets in `rbuf`. Returns true when a PUBLISH
/// was handled during a resource alarm: the rest waits in `rbuf`.
fn decode_input(
    decoder: &mut Decoder,
    rbuf: &mut BytesMut,
    session: &mut Session,
    wbuf: &mut BytesMut,
    alarms: Option<&watch::Receiver<Alarms>>,
    peer: SocketAddr,
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
                if publish && alarms.is_some_and(|a| a.borrow().any()) {
                    held = true;
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::info!(%peer, client = session.client_id(), error = %e, "bad MQTT input");
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
async fn linger(f: Farewell) {
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
