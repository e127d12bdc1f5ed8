//! rumqttc clients (3.1.1 and 5) against an in-process ferrymq. Each client's
//! event loop runs in its own task and forwards what arrives; tests wait on
//! those packets, each wait bounded and named.

#![allow(dead_code)]

use std::time::Duration;

use ferrymq::server::Server;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Generous bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(20);

/// The MQTT port of a running broker.
pub fn port(server: &Server) -> u16 {
    server.mqtt.expect("MQTT listener is on").port()
}

/// Polls `cond` until it holds, failing with `what` after WAIT. For state
/// that no event announces (a session expiring on the broker).
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

macro_rules! client_type {
    ($name:ident, $mod:path, $packet:ty, $connack:path, $connack_of:ident) => {
        /// A connected client and what its event loop received.
        pub struct $name {
            /// The client handle.
            pub client: <$name as Kind>::Client,
            rx: mpsc::UnboundedReceiver<Result<$packet, String>>,
            task: JoinHandle<()>,
        }

        impl $name {
            /// Connects with these options and waits for CONNACK, or the
            /// error a refusing CONNACK becomes.
            pub async fn try_connect(
                opts: <$name as Kind>::Options,
            ) -> Result<(Self, $connack), String> {
                use $mod as m;
                let (client, mut eventloop) = m::AsyncClient::new(opts, 64);
                let (tx, rx) = mpsc::unbounded_channel();
                let task = tokio::spawn(async move {
                    loop {
                        match eventloop.poll().await {
                            Ok(m::Event::Incoming(p)) => {
                                if tx.send(Ok(p)).is_err() {
                                    return;
                                }
                            }
                            Ok(m::Event::Outgoing(_)) => {}
                            Err(e) => {
                                let _ = tx.send(Err(format!("{e:?}")));
                                return;
                            }
                        }
                    }
                });
                let mut me = Self { client, rx, task };
                loop {
                    match me.next("CONNACK").await {
                        Ok(p) => {
                            if let Some(ack) = $connack_of(p) {
                                return Ok((me, ack));
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
            }

            /// Connects and waits for CONNACK; panics if refused.
            pub async fn connect(opts: <$name as Kind>::Options) -> (Self, $connack) {
                match Self::try_connect(opts).await {
                    Ok(v) => v,
                    Err(e) => panic!("connection refused: {e}"),
                }
            }

            /// The next packet from the broker, or the error that ended
            /// the connection.
            pub async fn next(&mut self, what: &str) -> Result<$packet, String> {
                match tokio::time::timeout(WAIT, self.rx.recv()).await {
                    Ok(Some(r)) => r,
                    Ok(None) => Err("event loop ended".into()),
                    Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
                }
            }

            /// Skips packets until `f` accepts one; panics if the
            /// connection ends first.
            pub async fn expect<T>(
                &mut self,
                what: &str,
                mut f: impl FnMut($packet) -> Option<T>,
            ) -> T {
                loop {
                    match self.next(what).await {
                        Ok(p) => {
                            if let Some(v) = f(p) {
                                return v;
                            }
                        }
                        Err(e) => panic!("connection ended while waiting for {what}: {e}"),
                    }
                }
            }

            /// Waits for the connection to end; returns the error text.
            pub async fn closed(&mut self, what: &str) -> String {
                loop {
                    if let Err(e) = self.next(what).await {
                        return e;
                    }
                }
            }

            /// Drops the socket without DISCONNECT, as a crashed client would.
            pub fn vanish(self) {
                self.task.abort();
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                self.task.abort();
            }
        }
    };
}

/// The client library types behind a client wrapper.
pub trait Kind {
    /// The client handle.
    type Client;
    /// Connection options.
    type Options;
}

impl Kind for V4 {
    type Client = rumqttc::AsyncClient;
    type Options = rumqttc::MqttOptions;
}

impl Kind for V5 {
    type Client = rumqttc::v5::AsyncClient;
    type Options = rumqttc::v5::MqttOptions;
}

fn connack_of_v4(p: rumqttc::Packet) -> Option<rumqttc::ConnAck> {
    match p {
        rumqttc::Packet::ConnAck(a) => Some(a),
        _ => None,
    }
}

fn connack_of_v5(
    p: rumqttc::v5::mqttbytes::v5::Packet,
) -> Option<rumqttc::v5::mqttbytes::v5::ConnAck> {
    match p {
        rumqttc::v5::mqttbytes::v5::Packet::ConnAck(a) => Some(a),
        _ => None,
    }
}

client_type!(
    V4,
    rumqttc,
    rumqttc::Packet,
    rumqttc::ConnAck,
    connack_of_v4
);
client_type!(
    V5,
    rumqttc::v5,
    rumqttc::v5::mqttbytes::v5::Packet,
    rumqttc::v5::mqttbytes::v5::ConnAck,
    connack_of_v5
);

/// 3.1.1 options for a client id, clean session, keepalive 30 s.
pub fn v4_options(server: &Server, id: &str) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port(server));
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// 5.0 options for a client id, clean start, keepalive 30 s.
pub fn v5_options(server: &Server, id: &str) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port(server));
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// A 3.1.1 client, connected with a clean session.
pub async fn v4(server: &Server, id: &str) -> V4 {
    V4::connect(v4_options(server, id)).await.0
}

/// A 5.0 client, connected with clean start.
pub async fn v5(server: &Server, id: &str) -> V5 {
    V5::connect(v5_options(server, id)).await.0
}
