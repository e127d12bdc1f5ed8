//! Raw bytes against ferrymq's STOMP listener: bad input gets an ERROR
//! frame and closes only the offending connection.

mod common;
mod stomp_common;

use common::start;
use ferrymq::server::Server;
use ferrymq::stomp::codec::Command;
use stomp_common::{Client, addr, frame, header};

/// Connects with `version`, writes `bytes`, and returns the ERROR's
/// `message` header once the broker has closed the connection.
async fn error_for(server: &Server, version: &str, bytes: &[u8]) -> (String, String) {
    let mut c = Client::connect(server, version).await;
    c.send_raw(bytes).await;
    let e = c.error("an ERROR frame").await;
    c.closed("the broker to close the connection after ERROR")
        .await;
    (
        header(&e, "message").to_owned(),
        String::from_utf8_lossy(&e.body).into_owned(),
    )
}

/// Another connection still works: publish and consume one message.
async fn still_serving(server: &Server, bystander: &mut Client, queue: &str) {
    let mut c = Client::connect(server, "1.2").await;
    c.publish(queue, "still here").await;
    let m = bystander
        .message("a message on an unaffected connection")
        .await;
    assert_eq!(&m.body[..], b"still here");
}

#[tokio::test]
async fn bad_input_closes_only_the_offending_connection() {
    let server = start().await;
    let mut bystander = Client::connect(&server, "1.2").await;
    bystander.subscribe("/queue/bystander", "b", &[]).await;
    let cases: &[(&str, &[u8], &str, &str)] = &[
        ("unknown command", b"FROB\n\n\0", "Bad command", "FROB"),
        (
            "frame over the size limit",
            b"SEND\ndestination:/queue/q\ncontent-length:999999999999\n\n",
            "Frame too large",
            "larger than",
        ),
        (
            "missing header",
            b"SEND\n\nbody\0",
            "Missing header",
            "destination",
        ),
        (
            "bad destination",
            b"SEND\ndestination:/nowhere/x\n\n\0",
            "Unknown destination",
            "/nowhere/x",
        ),
        (
            "content-length body not followed by NUL",
            b"SEND\ndestination:/queue/q\ncontent-length:2\n\nabcdef\0",
            "Malformed frame",
            "NUL",
        ),
        (
            "undefined escape",
            b"SEND\ndestination:/queue/q\nx:\\t\n\n\0",
            "Malformed frame",
            "escape",
        ),
        (
            "header without colon",
            b"SEND\ndestination\n\n\0",
            "Malformed frame",
            "':'",
        ),
        (
            "second CONNECT",
            b"CONNECT\nlogin:guest\npasscode:guest\n\n\0",
            "Illegal command",
            "already",
        ),
        (
            "server frame from a client",
            b"RECEIPT\nreceipt-id:1\n\n\0",
            "Illegal command",
            "servers",
        ),
    ];
    for (what, bytes, message, detail) in cases {
        let (got, body) = error_for(&server, "1.2", bytes).await;
        assert_eq!(got, *message, "{what}");
        assert!(body.contains(detail), "{what}: {body}");
    }
    still_serving(&server, &mut bystander, "/queue/bystander").await;
}

#[tokio::test]
async fn frames_before_connect_are_refused() {
    let server = start().await;
    let mut c = Client::open(addr(&server)).await;
    c.send(frame(
        Command::Subscribe,
        &[("destination", "/queue/q"), ("id", "1"), ("receipt", "r")],
    ))
    .await;
    let e = c.error("ERROR for a frame before CONNECT").await;
    assert_eq!(header(&e, "message"), "Illegal command");
    assert_eq!(header(&e, "receipt-id"), "r");
    c.closed("the connection to close").await;
}

#[tokio::test]
async fn a_message_over_the_configured_limit_is_refused() {
    let mut config = ferrymq::config::Config::ephemeral();
    config.data_dir = common::fresh_dir();
    config.max_message_bytes = 1024;
    let server = Server::start(&config).await.expect("broker starts");
    let mut body = b"SEND\ndestination:/queue/big\n\n".to_vec();
    body.extend(std::iter::repeat_n(b'x', 2048));
    body.push(0);
    let (message, details) = error_for(&server, "1.1", &body).await;
    assert_eq!(message, "Message too large", "{details}");
    assert!(server.broker.vhost("/").unwrap().queue("big").is_none());
}

#[tokio::test]
async fn an_unsupported_version_is_refused_with_the_supported_ones() {
    let server = start().await;
    let mut c = Client::open(addr(&server)).await;
    c.send(frame(
        Command::Connect,
        &[
            ("accept-version", "2.0"),
            ("login", "guest"),
            ("passcode", "guest"),
        ],
    ))
    .await;
    let e = c.error("ERROR for an unsupported version").await;
    assert_eq!(header(&e, "message"), "Version mismatch");
    assert!(String::from_utf8_lossy(&e.body).contains("1.0,1.1,1.2"));
    c.closed("the connection to close").await;
}

#[tokio::test]
async fn a_client_that_never_connects_is_not_waited_for_past_the_deadline() {
    let server = start().await;
    let mut c = Client::open(addr(&server)).await;
    // A frame that never ends: the broker holds no more than its limits.
    c.send_raw(b"CONNECT\nlogin:guest\n").await;
    c.closed("the broker to give up on a CONNECT that never finishes")
        .await;
}

#[tokio::test]
async fn stomp_1_0_escapes_nothing_and_1_1_escapes_colons_and_newlines() {
    let server = start().await;
    let mut sub = Client::connect(&server, "1.1").await;
    sub.subscribe("/queue/escapes", "s", &[]).await;
    let mut old = Client::connect(&server, "1.0").await;
    // In 1.0 a backslash is just a backslash.
    old.send_raw(b"SEND\ndestination:/queue/escapes\nx-path:C:\\dir\n\n1.0\0")
        .await;
    let m = sub.message("the 1.0 message").await;
    assert_eq!(header(&m, "x-path"), "C:\\dir");
    let mut new = Client::connect(&server, "1.2").await;
    new.send(
        frame(
            Command::Send,
            &[
                ("destination", "/queue/escapes"),
                ("x-multi", "a:b\nc"),
                ("x-cr", "ends\r"),
            ],
        )
        .with_body("1.2"),
    )
    .await;
    let m = sub.message("the 1.2 message").await;
    assert_eq!(header(&m, "x-multi"), "a:b\nc");
    assert_eq!(
        m.header("x-cr"),
        None,
        "1.1 has no escape for a trailing CR: left out"
    );
}
