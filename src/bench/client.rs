//! A minimal AMQP 0-9-1 client: the handshake, one channel, and the few
//! synchronous methods a benchmark needs. Publishing and consuming happen in
//! `producer.rs` and `consumer.rs` on the split halves of the same socket.

use super::wire::{CLIENT_FRAME_MAX, FrameReader, FrameWriter, Incoming};
use amq_protocol::frame::{AMQPFrame, ProtocolVersion};
use amq_protocol::protocol::{AMQPClass, basic, channel, confirm, connection, queue};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use anyhow::{Context, Result, anyhow, bail};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The one channel each benchmark connection uses.
pub const CHANNEL: u16 = 1;
/// How long any synchronous method (handshake, declare, consume…) may take.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(15);

/// Where to connect and as whom.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: String,
    pub user: String,
    pub password: String,
    pub vhost: String,
}

/// An open connection with channel [`CHANNEL`] open on it.
pub struct Connection {
    pub reader: FrameReader<OwnedReadHalf>,
    pub writer: FrameWriter<OwnedWriteHalf>,
    /// The negotiated frame-max: the smaller of ours and the broker's.
    pub frame_max: u32,
}

/// A short string we built ourselves; `ShortString::from` would panic above 255 bytes.
pub fn short(s: &str) -> Result<ShortString> {
    ShortString::try_new(s)
        .map_err(|_| anyhow!("{} bytes is too long for a short string: {s:?}", s.len()))
}

/// The broker's reason when it closes the channel or the connection on us.
pub fn refusal(method: &AMQPClass) -> Option<anyhow::Error> {
    match method {
        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => Some(anyhow!(
            "broker closed the connection: {} {} (class {} method {})",
            c.reply_code,
            c.reply_text,
            c.class_id,
            c.method_id
        )),
        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => Some(anyhow!(
            "broker closed the channel: {} {} (class {} method {})",
            c.reply_code,
            c.reply_text,
            c.class_id,
            c.method_id
        )),
        _ => None,
    }
}

impl Connection {
    /// Connects, authenticates with PLAIN, tunes, opens the vhost and channel 1.
    pub async fn open(target: &Target) -> Result<Self> {
        let socket = tokio::time::timeout(RPC_TIMEOUT, TcpStream::connect(&target.addr))
            .await
            .map_err(|_| anyhow!("timed out connecting to {}", target.addr))?
            .with_context(|| format!("connecting to {}", target.addr))?;
        socket.set_nodelay(true)?;
        let (rd, wr) = socket.into_split();
        let mut conn = Self {
            reader: FrameReader::new(rd, CHANNEL),
            writer: FrameWriter::new(wr),
            frame_max: CLIENT_FRAME_MAX,
        };
        conn.handshake(target)
            .await
            .with_context(|| format!("AMQP handshake with {}", target.addr))?;
        Ok(conn)
    }

    async fn handshake(&mut self, target: &Target) -> Result<()> {
        self.writer
            .push(&AMQPFrame::ProtocolHeader(ProtocolVersion::amqp_0_9_1()))?;
        self.writer.flush(RPC_TIMEOUT).await?;
        let start = match self.next_method("connection.start").await? {
            AMQPClass::Connection(connection::AMQPMethod::Start(start)) => start,
            other => bail!("expected connection.start, got {other:?}"),
        };
        let mechanisms = start.mechanisms.to_string();
        if !mechanisms.split_whitespace().any(|m| m == "PLAIN") {
            bail!("broker does not offer PLAIN authentication (offers {mechanisms:?})");
        }

        let mut capabilities = FieldTable::default();
        for cap in [
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
        ] {
            capabilities.insert(short(cap)?, AMQPValue::Boolean(true));
        }
        // Tables hold LongString values: a ShortString would be tagged '_', which brokers reject.
        let mut properties = FieldTable::default();
        properties.insert(
            short("product")?,
            AMQPValue::LongString(LongString::from("ferrymq bench")),
        );
        properties.insert(short("capabilities")?, AMQPValue::FieldTable(capabilities));
        let response = format!("\0{}\0{}", target.user, target.password);
        self.writer.push_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: properties,
                mechanism: short("PLAIN")?,
                response: LongString::from(response),
                locale: short("en_US")?,
            })),
        )?;
        self.writer.flush(RPC_TIMEOUT).await?;

        let tune = match self
            .next_method("connection.tune (a refusal here usually means bad credentials)")
            .await?
        {
            AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) => tune,
            other => bail!("expected connection.tune, got {other:?}"),
        };
        // Zero means "no limit" for both numbers (AMQP 0-9-1 §1.4.2.6).
        self.frame_max = match tune.frame_max {
            0 => CLIENT_FRAME_MAX,
            theirs => theirs.min(CLIENT_FRAME_MAX),
        };
        self.reader.decoder.set_frame_max(self.frame_max);
        let channel_max = match tune.channel_max {
            0 => 2047,
            theirs => theirs.min(2047),
        };
        self.writer.push_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max,
                frame_max: self.frame_max,
                // Heartbeats off: every benchmark connection is busy or short-lived,
                // and a stray heartbeat from the broker is simply skipped.
                heartbeat: 0,
            })),
        )?;
        self.writer.push_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: short(&target.vhost)?,
            })),
        )?;
        self.writer.flush(RPC_TIMEOUT).await?;
        match self.next_method("connection.open-ok").await? {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => {}
            other => bail!("expected connection.open-ok, got {other:?}"),
        }
        self.rpc(
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
            "channel.open-ok",
            |m| matches!(m, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))),
        )
        .await?;
        Ok(())
    }

    /// The next method frame, skipping heartbeats; a close from the broker is an error.
    async fn next_method(&mut self, what: &str) -> Result<AMQPClass> {
        loop {
            match self.reader.next(RPC_TIMEOUT, what).await? {
                Incoming::Heartbeat => continue,
                Incoming::Method(_, method) => match refusal(&method) {
                    Some(err) => return Err(err.context(format!("while waiting for {what}"))),
                    None => return Ok(method),
                },
                other => bail!("expected {what}, got {other:?}"),
            }
        }
    }

    /// Sends `method` on [`CHANNEL`] and waits for the reply that `is_reply` accepts.
    async fn rpc(
        &mut self,
        method: AMQPClass,
        what: &str,
        is_reply: impl Fn(&AMQPClass) -> bool,
    ) -> Result<AMQPClass> {
        self.writer.push_method(CHANNEL, method)?;
        self.writer.flush(RPC_TIMEOUT).await?;
        loop {
            let reply = self.next_method(what).await?;
            if is_reply(&reply) {
                return Ok(reply);
            }
            if let AMQPClass::Connection(connection::AMQPMethod::Blocked(b)) = &reply {
                tracing::warn!(reason = %b.reason, "broker blocked the connection");
                continue;
            }
            bail!("expected {what}, got {reply:?}");
        }
    }

    pub async fn declare_queue(&mut self, name: &str, durable: bool) -> Result<()> {
        self.declare_queue_with(name, durable, FieldTable::default())
            .await
    }

    /// queue.declare with `x-` arguments (e.g. `x-queue-type`).
    pub async fn declare_queue_with(
        &mut self,
        name: &str,
        durable: bool,
        arguments: FieldTable,
    ) -> Result<()> {
        let declare = queue::Declare {
            queue: short(name)?,
            passive: false,
            durable,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments,
        };
        self.rpc(
            AMQPClass::Queue(queue::AMQPMethod::Declare(declare)),
            "queue.declare-ok",
            |m| matches!(m, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))),
        )
        .await?;
        Ok(())
    }

    pub async fn bind_queue(&mut self, queue: &str, exchange: &str, key: &str) -> Result<()> {
        let bind = queue::Bind {
            queue: short(queue)?,
            exchange: short(exchange)?,
            routing_key: short(key)?,
            nowait: false,
            arguments: FieldTable::default(),
        };
        self.rpc(
            AMQPClass::Queue(queue::AMQPMethod::Bind(bind)),
            "queue.bind-ok",
            |m| matches!(m, AMQPClass::Queue(queue::AMQPMethod::BindOk(_))),
        )
        .await?;
        Ok(())
    }

    /// Deletes the queue and returns how many messages it still held.
    pub async fn delete_queue(&mut self, name: &str) -> Result<u32> {
        let delete = queue::Delete {
            queue: short(name)?,
            if_unused: false,
            if_empty: false,
            nowait: false,
        };
        let reply = self
            .rpc(
                AMQPClass::Queue(queue::AMQPMethod::Delete(delete)),
                "queue.delete-ok",
                |m| matches!(m, AMQPClass::Queue(queue::AMQPMethod::DeleteOk(_))),
            )
            .await?;
        match reply {
            AMQPClass::Queue(queue::AMQPMethod::DeleteOk(ok)) => Ok(ok.message_count),
            _ => Ok(0),
        }
    }

    pub async fn confirm_select(&mut self) -> Result<()> {
        self.rpc(
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
            "confirm.select-ok",
            |m| matches!(m, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))),
        )
        .await?;
        Ok(())
    }

    pub async fn qos(&mut self, prefetch_count: u16) -> Result<()> {
        self.rpc(
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count,
                global: false,
            })),
            "basic.qos-ok",
            |m| matches!(m, AMQPClass::Basic(basic::AMQPMethod::QosOk(_))),
        )
        .await?;
        Ok(())
    }

    /// Starts a consumer; deliveries may follow in the reader's buffer.
    pub async fn consume(&mut self, queue: &str, consumer_tag: &str, no_ack: bool) -> Result<()> {
        let consume = basic::Consume {
            queue: short(queue)?,
            consumer_tag: short(consumer_tag)?,
            no_local: false,
            no_ack,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        };
        self.rpc(
            AMQPClass::Basic(basic::AMQPMethod::Consume(consume)),
            "basic.consume-ok",
            |m| matches!(m, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))),
        )
        .await?;
        Ok(())
    }

    /// Closes the connection politely and waits for close-ok.
    pub async fn close(mut self) -> Result<()> {
        self.writer.push_method(0, close_method())?;
        self.writer.flush(RPC_TIMEOUT).await?;
        loop {
            // Deliveries or confirms still in flight may come first.
            match self.reader.next(RPC_TIMEOUT, "connection.close-ok").await? {
                Incoming::Method(_, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {
                    return Ok(());
                }
                Incoming::Method(_, m) if refusal(&m).is_some() => return Ok(()),
                _ => continue,
            }
        }
    }
}

/// connection.close with reply 200, as a client that is simply done sends it.
pub fn close_method() -> AMQPClass {
    AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
        reply_code: 200,
        reply_text: "bench done".into(),
        class_id: 0,
        method_id: 0,
    }))
}
