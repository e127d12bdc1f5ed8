//! Raw bytes against ferrymq: malformed input closes only the offending
//! connection, with the reply code the spec names.

mod common;

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::FieldTable;
use common::{connect, start, within};
use lapin::options::QueueDeclareOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn read_frame(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<AMQPFrame> {
    loop {
        if let Ok((rest, frame)) = parse_frame(buf.as_slice()) {
            let used = buf.len() - rest.len();
            buf.drain(..used);
            return Some(frame);
        }
        let mut chunk = [0u8; 4096];
        let n = within("a frame from the broker", sock.read(&mut chunk))
            .await
            .expect("read");
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn send(sock: &mut TcpStream, frame: AMQPFrame) {
    let out = gen_frame(&frame)(WriteContext::from(Vec::new()))
        .expect("serialise")
        .write;
    sock.write_all(&out).await.expect("write");
}

/// Completes the handshake on a raw socket.
async fn open_raw(addr: std::net::SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    sock.write_all(b"AMQP\x00\x00\x09\x01")
        .await
        .expect("greet");
    let mut buf = Vec::new();
    assert!(matches!(
        read_frame(&mut sock, &mut buf).await,
        Some(AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(_))
        ))
    ));
    send(
        &mut sock,
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "PLAIN".into(),
                response: "\0guest\0guest".into(),
                locale: "en_US".into(),
            })),
        ),
    )
    .await;
    assert!(matches!(
        read_frame(&mut sock, &mut buf).await,
        Some(AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(_))
        ))
    ));
    send(
        &mut sock,
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 16,
                frame_max: 8192,
                heartbeat: 0,
            })),
        ),
    )
    .await;
    send(
        &mut sock,
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        ),
    )
    .await;
    assert!(matches!(
        read_frame(&mut sock, &mut buf).await,
        Some(AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))
        ))
    ));
    (sock, buf)
}

async fn expect_close(sock: &mut TcpStream, buf: &mut Vec<u8>, code: u16) {
    match read_frame(sock, buf).await {
        Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c)))) => {
            assert_eq!(c.reply_code, code, "reply text: {}", c.reply_text)
        }
        other => panic!("expected connection.close {code}, got {other:?}"),
    }
}

#[tokio::test]
async fn garbled_frame_closes_only_that_connection_with_frame_error() {
    let server = start().await;
    let bystander = connect(&server).await;
    let ch = bystander.create_channel().await.expect("channel");
    let (mut sock, mut buf) = open_raw(server.amqp.expect("amqp")).await;
    // a method frame whose payload is not a method, with a good frame end
    sock.write_all(&[1, 0, 1, 0, 0, 0, 3, 0xAB, 0xCD, 0xEF, 0xCE])
        .await
        .expect("write");
    expect_close(&mut sock, &mut buf, 501).await;
    ch.queue_declare(
        "still-works".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("the other connection is unaffected");
}

#[tokio::test]
async fn frame_above_frame_max_is_refused_before_its_body_arrives() {
    let server = start().await;
    let (mut sock, mut buf) = open_raw(server.amqp.expect("amqp")).await;
    // announce a 1 MiB body frame with frame_max 8192, send none of it
    sock.write_all(&[3, 0, 1, 0, 0x10, 0, 0])
        .await
        .expect("write");
    expect_close(&mut sock, &mut buf, 501).await;
}

#[tokio::test]
async fn body_without_header_is_an_unexpected_frame() {
    let server = start().await;
    let (mut sock, mut buf) = open_raw(server.amqp.expect("amqp")).await;
    send(
        &mut sock,
        AMQPFrame::Method(
            1,
            AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::Open(
                amq_protocol::protocol::channel::Open {},
            )),
        ),
    )
    .await;
    assert!(matches!(
        read_frame(&mut sock, &mut buf).await,
        Some(AMQPFrame::Method(1, _))
    ));
    sock.write_all(&[3, 0, 1, 0, 0, 0, 2, b'h', b'i', 0xCE])
        .await
        .expect("write");
    expect_close(&mut sock, &mut buf, 505).await;
}

#[tokio::test]
async fn method_on_an_unopened_channel_is_a_channel_error() {
    let server = start().await;
    let (mut sock, mut buf) = open_raw(server.amqp.expect("amqp")).await;
    send(
        &mut sock,
        AMQPFrame::Method(
            3,
            AMQPClass::Queue(amq_protocol::protocol::queue::AMQPMethod::Purge(
                amq_protocol::protocol::queue::Purge {
                    queue: "q".into(),
                    nowait: false,
                },
            )),
        ),
    )
    .await;
    expect_close(&mut sock, &mut buf, 504).await;
}

#[tokio::test]
async fn wrong_protocol_header_gets_ours_back() {
    let server = start().await;
    let mut sock = TcpStream::connect(server.amqp.expect("amqp"))
        .await
        .expect("connect");
    sock.write_all(b"AMQP\x01\x01\x00\x0a")
        .await
        .expect("write");
    let mut got = Vec::new();
    within(
        "the broker's protocol header and close",
        sock.read_to_end(&mut got),
    )
    .await
    .expect("read");
    assert_eq!(got, b"AMQP\x00\x00\x09\x01");
}
