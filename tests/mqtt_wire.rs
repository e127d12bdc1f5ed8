//! MQTT on raw sockets: the bytes a hostile or broken client sends, and
//! the reason codes (MQTT 5) or closed sockets (3.1.1) it gets back. Only
//! the offending connection closes.

mod common;
mod mqtt_common;

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::{start, within};
use ferrymq::server::Server;
use mqtt_common::{port, v4};
use rmqtt_codec::v5;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};

async fn socket(server: &Server) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port(server)))
        .await
        .expect("TCP connect")
}

/// A 3.1.1 CONNECT: clean session, the given keepalive and client id.
fn connect_v311(client_id: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(b"\x00\x04MQTT\x04\x02");
    body.extend_from_slice(&keep_alive.to_be_bytes());
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut p = vec![0x10, body.len() as u8];
    p.extend_from_slice(&body);
    p
}

fn encode_v5(packet: v5::Packet) -> BytesMut {
    let mut out = BytesMut::new();
    v5::Codec::new(1 << 20, 1 << 20)
        .encode(packet, &mut out)
        .expect("encodes");
    out
}

fn connect_v5(client_id: &str) -> BytesMut {
    encode_v5(v5::Packet::Connect(Box::new(v5::Connect {
        clean_start: true,
        keep_alive: 30,
        client_id: client_id.into(),
        ..Default::default()
    })))
}

/// Reads until the broker closes the socket; returns everything it sent.
async fn read_to_close(s: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    within(what, s.read_to_end(&mut got))
        .await
        .expect("read until EOF");
    got
}

/// Decodes MQTT 5 packets from what the broker sent.
fn decode_v5(bytes: &[u8]) -> Vec<v5::Packet> {
    let mut buf = BytesMut::from(bytes);
    let mut codec = v5::Codec::new(1 << 20, 1 << 20);
    let mut out = Vec::new();
    while let Some((p, _)) = codec.decode(&mut buf).expect("broker output decodes") {
        out.push(p);
    }
    out
}

fn disconnect_reason(packets: &[v5::Packet]) -> Option<v5::DisconnectReasonCode> {
    packets.iter().find_map(|p| match p {
        v5::Packet::Disconnect(d) => Some(d.reason_code),
        _ => None,
    })
}

async fn a_healthy_client_still_works(server: &Server) {
    let mut c = v4(server, "bystander").await;
    c.client
        .subscribe("ok", rumqttc::QoS::AtMostOnce)
        .await
        .expect("subscribe queued");
    c.expect("SUBACK on a healthy connection", |p| {
        matches!(p, rumqttc::Packet::SubAck(_)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_malformed_packet_closes_only_that_v311_connection() {
    let server = start().await;
    let mut s = socket(&server).await;
    s.write_all(&connect_v311("broken", 30))
        .await
        .expect("write");
    // Packet type 0 is reserved.
    s.write_all(&[0x00, 0x00]).await.expect("write");
    let got = read_to_close(&mut s, "the broker to close the connection").await;
    assert_eq!(&got[..4], [0x20, 0x02, 0x00, 0x00], "CONNACK, then close");
    assert_eq!(got.len(), 4, "3.1.1 has no server DISCONNECT");
    a_healthy_client_still_works(&server).await;
}

#[tokio::test]
async fn a_second_connect_is_a_protocol_error_in_mqtt5() {
    let server = start().await;
    let mut s = socket(&server).await;
    s.write_all(&connect_v5("twice")).await.expect("write");
    s.write_all(&connect_v5("twice")).await.expect("write");
    let got = decode_v5(&read_to_close(&mut s, "the broker to close the connection").await);
    assert!(matches!(got[0], v5::Packet::ConnectAck(_)));
    assert_eq!(
        disconnect_reason(&got),
        Some(v5::DisconnectReasonCode::ProtocolError)
    );
    a_healthy_client_still_works(&server).await;
}

#[tokio::test]
async fn an_oversized_packet_is_refused_from_its_header() {
    let server = start().await;
    let mut s = socket(&server).await;
    s.write_all(&connect_v5("greedy")).await.expect("write");
    // A PUBLISH announcing 268,435,455 bytes; none of them follow.
    s.write_all(&[0x30, 0xff, 0xff, 0xff, 0x7f])
        .await
        .expect("write");
    let got = decode_v5(&read_to_close(&mut s, "the broker to refuse the packet").await);
    assert_eq!(
        disconnect_reason(&got),
        Some(v5::DisconnectReasonCode::PacketTooLarge)
    );
    a_healthy_client_still_works(&server).await;
}

#[tokio::test]
async fn a_malformed_mqtt5_packet_gets_malformed_packet() {
    let server = start().await;
    let mut s = socket(&server).await;
    s.write_all(&connect_v5("garbled")).await.expect("write");
    // SUBSCRIBE whose property length runs past the packet.
    s.write_all(&[0x82, 0x04, 0x00, 0x01, 0x09, 0x00])
        .await
        .expect("write");
    let got = decode_v5(&read_to_close(&mut s, "the broker to refuse the packet").await);
    assert_eq!(
        disconnect_reason(&got),
        Some(v5::DisconnectReasonCode::MalformedPacket)
    );
}

#[tokio::test]
async fn an_unknown_protocol_level_gets_connack_1() {
    let server = start().await;
    let mut s = socket(&server).await;
    let mut p = connect_v311("future", 30);
    p[8] = 9; // protocol level 9
    s.write_all(&p).await.expect("write");
    let got = read_to_close(&mut s, "the refusal").await;
    assert_eq!(got, [0x20, 0x02, 0x00, 0x01]);
}

#[tokio::test]
async fn mqtt_3_1_clients_are_served() {
    let server = start().await;
    let mut s = socket(&server).await;
    let mut body = Vec::new();
    body.extend_from_slice(b"\x00\x06MQIsdp\x03\x02\x00\x1e\x00\x03old");
    let mut p = vec![0x10, body.len() as u8];
    p.extend_from_slice(&body);
    s.write_all(&p).await.expect("write");
    let mut ack = [0u8; 4];
    within("CONNACK for MQTT 3.1", s.read_exact(&mut ack))
        .await
        .expect("read");
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
}

#[tokio::test]
async fn invalid_filters_get_topic_filter_invalid() {
    let server = start().await;
    let mut s = socket(&server).await;
    s.write_all(&connect_v5("filters")).await.expect("write");
    let sub = encode_v5(v5::Packet::Subscribe(v5::Subscribe {
        packet_id: std::num::NonZeroU16::new(1).unwrap(),
        id: None,
        user_properties: vec![],
        topic_filters: vec![
            ("a/#/b".into(), v5::SubscriptionOptions::default()),
            ("a/+".into(), v5::SubscriptionOptions::default()),
        ],
    }));
    s.write_all(&sub).await.expect("write");
    let mut buf = BytesMut::new();
    let mut codec = v5::Codec::new(1 << 20, 1 << 20);
    let status = loop {
        within("SUBACK", s.read_buf(&mut buf)).await.expect("read");
        let mut found = None;
        while let Some((p, _)) = codec.decode(&mut buf).expect("decodes") {
            if let v5::Packet::SubscribeAck(a) = p {
                found = Some(a.status);
            }
        }
        if let Some(s) = found {
            break s;
        }
    };
    assert_eq!(
        status,
        [
            v5::SubscribeAckReason::TopicFilterInvalid,
            v5::SubscribeAckReason::GrantedQos0
        ]
    );
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_one_and_a_half_keepalives() {
    let server = start().await;
    let mut s = socket(&server).await;
    s.write_all(&connect_v311("sleepy", 1))
        .await
        .expect("write");
    let mut ack = [0u8; 4];
    within("CONNACK", s.read_exact(&mut ack))
        .await
        .expect("read");
    let since = tokio::time::Instant::now();
    let rest = read_to_close(&mut s, "the keepalive to expire").await;
    assert!(rest.is_empty());
    let waited = since.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(5),
        "closed after {waited:?}, expected about 1.5 s"
    );
}

#[tokio::test]
async fn a_packet_before_connect_closes_the_connection() {
    let server = start().await;
    let mut s = socket(&server).await;
    let mut b = BytesMut::new();
    b.put_slice(&[0xc0, 0x00]); // PINGREQ before CONNECT
    s.write_all(&b).await.expect("write");
    let got = read_to_close(&mut s, "the broker to close").await;
    assert!(got.is_empty());
}

#[tokio::test]
async fn shutdown_disconnects_open_clients_and_closes_those_before_connect() {
    let server = start().await;
    let mut open = socket(&server).await;
    open.write_all(&connect_v5("leaving")).await.expect("write");
    let mut ack = [0u8; 64];
    let n = within("CONNACK", open.read(&mut ack)).await.expect("read");
    assert!(matches!(
        decode_v5(&ack[..n]).first(),
        Some(v5::Packet::ConnectAck(_))
    ));
    // The first byte of a CONNECT that never comes.
    let mut silent = socket(&server).await;
    silent.write_all(&[0x10]).await.expect("write");
    // Time for the broker to take the connection and read the byte.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let since = tokio::time::Instant::now();
    server.shutdown(Duration::from_secs(5)).await;
    assert!(
        since.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        since.elapsed()
    );
    let got = read_to_close(&mut open, "DISCONNECT and close").await;
    assert_eq!(
        disconnect_reason(&decode_v5(&got)),
        Some(v5::DisconnectReasonCode::ServerShuttingDown)
    );
    assert!(read_to_close(&mut silent, "the close").await.is_empty());
}
