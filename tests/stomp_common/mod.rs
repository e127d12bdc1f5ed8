//! A raw STOMP client over TCP, built on ferrymq's own codec, for tests
//! that need to see every frame (and every missing one).

#![allow(dead_code)]

use std::net::SocketAddr;

use bytes::Bytes;
use ferrymq::server::Server;
use ferrymq::stomp::codec::{Command, Frame, Item, StompCodec, Version};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::common::WAIT;

/// One STOMP connection.
pub struct Client {
    framed: Framed<TcpStream, StompCodec>,
}

/// The broker's STOMP address.
pub fn addr(server: &Server) -> SocketAddr {
    server.stomp.expect("STOMP listener is on")
}

/// A frame from a command and header pairs.
pub fn frame(command: Command, headers: &[(&str, &str)]) -> Frame {
    headers
        .iter()
        .fold(Frame::new(command), |f, (k, v)| f.with_header(*k, *v))
}

/// A header every test expects the frame to have.
pub fn header<'a>(f: &'a Frame, name: &str) -> &'a str {
    f.header(name)
        .unwrap_or_else(|| panic!("{} frame without '{name}': {f:?}", f.command))
}

impl Client {
    /// A TCP connection that has sent nothing yet.
    pub async fn open(addr: SocketAddr) -> Client {
        let tcp = crate::common::within("a TCP connection to STOMP", TcpStream::connect(addr))
            .await
            .expect("connect");
        Client {
            framed: Framed::new(tcp, StompCodec::default()),
        }
    }

    /// Connects as guest, accepting `versions` (e.g. "1.2"), and returns
    /// the client and the CONNECTED frame.
    pub async fn connect_with(server: &Server, headers: &[(&str, &str)]) -> (Client, Frame) {
        let mut c = Client::open(addr(server)).await;
        let mut f = frame(
            Command::Connect,
            &[("login", "guest"), ("passcode", "guest")],
        );
        for (k, v) in headers {
            f = f.with_header(*k, *v);
        }
        c.send(f).await;
        let connected = c.recv("CONNECTED").await;
        assert_eq!(connected.command, Command::Connected, "{connected:?}");
        let version = connected
            .header("version")
            .and_then(Version::parse)
            .unwrap_or(Version::V1_0);
        c.framed.codec_mut().set_version(version);
        (c, connected)
    }

    /// Connects as guest with STOMP `version`.
    pub async fn connect(server: &Server, version: &str) -> Client {
        Client::connect_with(server, &[("accept-version", version), ("host", "/")])
            .await
            .0
    }

    /// Writes a frame.
    pub async fn send(&mut self, f: Frame) {
        crate::common::within("writing a frame", self.framed.send(f))
            .await
            .expect("write a frame");
    }

    /// Writes raw bytes, bypassing the codec.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.framed
            .get_mut()
            .write_all(bytes)
            .await
            .expect("write raw bytes");
    }

    /// Writes a frame with `receipt:id` and waits for that RECEIPT.
    pub async fn send_receipted(&mut self, f: Frame, id: &str) {
        self.send(f.with_header("receipt", id)).await;
        let r = self.recv(&format!("RECEIPT {id}")).await;
        assert_eq!(r.command, Command::Receipt, "{r:?}");
        assert_eq!(header(&r, "receipt-id"), id);
    }

    /// SEND with a body.
    pub async fn publish(&mut self, destination: &str, body: &str) {
        self.send(
            frame(Command::Send, &[("destination", destination)])
                .with_body(Bytes::copy_from_slice(body.as_bytes())),
        )
        .await;
    }

    /// The next item, heart-beats included, failing after WAIT.
    pub async fn next_item(&mut self, what: &str) -> Option<Item> {
        match tokio::time::timeout(WAIT, self.framed.next()).await {
            Ok(Some(Ok(item))) => Some(item),
            Ok(Some(Err(e))) => panic!("bad bytes from the broker while waiting for {what}: {e}"),
            Ok(None) => None,
            Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
        }
    }

    /// The next frame, skipping heart-beats; panics on EOF.
    pub async fn recv(&mut self, what: &str) -> Frame {
        loop {
            match self.next_item(what).await {
                Some(Item::Frame(f)) => return f,
                Some(Item::Heartbeat) => {}
                None => panic!("connection closed while waiting for {what}"),
            }
        }
    }

    /// The next frame, which must be a MESSAGE.
    pub async fn message(&mut self, what: &str) -> Frame {
        let f = self.recv(what).await;
        assert_eq!(f.command, Command::Message, "waiting for {what}: {f:?}");
        f
    }

    /// The next frame, which must be an ERROR; returns it.
    pub async fn error(&mut self, what: &str) -> Frame {
        let f = self.recv(what).await;
        assert_eq!(f.command, Command::Error, "waiting for {what}: {f:?}");
        f
    }

    /// Waits for the broker to close the connection, skipping anything
    /// it writes first.
    pub async fn closed(&mut self, what: &str) {
        loop {
            match tokio::time::timeout(WAIT, self.framed.next()).await {
                Ok(None) | Ok(Some(Err(_))) => return,
                Ok(Some(Ok(_))) => {}
                Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
            }
        }
    }

    /// SUBSCRIBE with a receipt, so the subscription is in place on return.
    pub async fn subscribe(&mut self, destination: &str, id: &str, extra: &[(&str, &str)]) {
        let mut f = frame(
            Command::Subscribe,
            &[("destination", destination), ("id", id)],
        );
        for (k, v) in extra {
            f = f.with_header(*k, *v);
        }
        self.send_receipted(f, &format!("sub-{id}")).await;
    }
}
