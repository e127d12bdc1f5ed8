//! STOMP against an in-process ferrymq over real sockets: versions, login,
//! SEND / SUBSCRIBE / ACK / NACK, transactions, receipts, heart-beats,
//! DISCONNECT and shutdown.

mod common;
mod stomp_common;

use std::time::Duration;

use common::{fresh_dir, start, start_in};
use ferrymq::stomp::codec::{Command, Item};
use stomp_common::{Client, addr, frame, header};

#[tokio::test]
async fn each_version_connects_and_gets_its_own_connected_frame() {
    let server = start().await;
    for (accept, version) in [
        (None, None),
        (Some("1.0"), None),
        (Some("1.1"), Some("1.1")),
        (Some("1.0,1.1,1.2"), Some("1.2")),
    ] {
        let mut headers = vec![];
        if let Some(a) = accept {
            headers.push(("accept-version", a));
        }
        let (_c, connected) = Client::connect_with(&server, &headers).await;
        assert_eq!(
            connected.header("version"),
            version,
            "accept-version {accept:?}"
        );
        assert!(header(&connected, "server").starts_with("ferrymq/"));
        assert!(!header(&connected, "session").is_empty());
        assert_eq!(header(&connected, "heart-beat"), "0,0");
    }
}

#[tokio::test]
async fn a_wrong_passcode_gets_an_error_and_the_connection_closes() {
    let server = start().await;
    let mut c = Client::open(addr(&server)).await;
    c.send(frame(
        Command::Connect,
        &[
            ("accept-version", "1.2"),
            ("login", "guest"),
            ("passcode", "wrong"),
        ],
    ))
    .await;
    let e = c.error("ERROR for a bad login").await;
    assert_eq!(header(&e, "message"), "Bad CONNECT");
    assert!(String::from_utf8_lossy(&e.body).contains("Access refused"));
    c.closed("the connection to close after a bad login").await;
    // Without a login, the default user (guest, from loopback) gets in.
    let mut c = Client::open(addr(&server)).await;
    c.send(frame(Command::Connect, &[("accept-version", "1.2")]))
        .await;
    assert_eq!(
        c.recv("CONNECTED for an anonymous client").await.command,
        Command::Connected
    );
}

#[tokio::test]
async fn send_subscribe_and_acknowledge_per_version() {
    let server = start().await;
    for version in ["1.0", "1.1", "1.2"] {
        let queue = format!("/queue/work-{version}");
        let mut c = Client::connect(&server, version).await;
        c.subscribe(&queue, "s", &[("ack", "client-individual")])
            .await;
        c.publish(&queue, "one").await;
        c.publish(&queue, "two").await;
        let first = c.message("the first message").await;
        let second = c.message("the second message").await;
        assert_eq!(
            (&first.body[..], &second.body[..]),
            (&b"one"[..], &b"two"[..])
        );
        assert_eq!(header(&first, "subscription"), "s");
        assert_eq!(header(&first, "destination"), queue);
        // Acknowledge the second only, with the version's own header.
        let ack = match version {
            "1.2" => frame(Command::Ack, &[("id", header(&second, "ack"))]),
            _ => frame(
                Command::Ack,
                &[
                    ("message-id", header(&second, "message-id")),
                    ("subscription", "s"),
                ],
            ),
        };
        c.send_receipted(ack, "acked").await;
        c.send_receipted(frame(Command::Disconnect, &[]), "bye")
            .await;
        c.closed("the connection to close after DISCONNECT").await;
        // The unacknowledged first message is redelivered to the next subscriber.
        let mut c = Client::connect(&server, version).await;
        c.subscribe(&queue, "again", &[]).await;
        let again = c.message("the redelivered message").await;
        assert_eq!(&again.body[..], b"one", "{version}");
        assert_eq!(header(&again, "redelivered"), "true");
    }
}

#[tokio::test]
async fn client_ack_mode_acknowledges_everything_up_to_the_message() {
    let server = start().await;
    let mut c = Client::connect(&server, "1.2").await;
    c.subscribe(
        "/queue/cumulative",
        "s",
        &[("ack", "client"), ("prefetch-count", "3")],
    )
    .await;
    for i in 0..5 {
        c.publish("/queue/cumulative", &i.to_string()).await;
    }
    let mut got = Vec::new();
    for i in 0..3 {
        got.push(c.message(&format!("message {i} of the first three")).await);
    }
    // Prefetch 3: the fourth waits until an ACK makes room, and one ACK
    // of the third makes room for both remaining messages.
    c.send(frame(Command::Ack, &[("id", header(&got[2], "ack"))]))
        .await;
    let fourth = c.message("the fourth message").await;
    let fifth = c.message("the fifth message").await;
    assert_eq!((&fourth.body[..], &fifth.body[..]), (&b"3"[..], &b"4"[..]));
}

#[tokio::test]
async fn nack_requeues_by_default_and_discards_with_requeue_false() {
    let server = start().await;
    let mut c = Client::connect(&server, "1.2").await;
    c.subscribe("/queue/nacked", "s", &[("ack", "client-individual")])
        .await;
    c.publish("/queue/nacked", "retry me").await;
    let m = c.message("the message").await;
    c.send(frame(Command::Nack, &[("id", header(&m, "ack"))]))
        .await;
    let again = c.message("the message again after NACK").await;
    assert_eq!(header(&again, "redelivered"), "true");
    c.send_receipted(
        frame(
            Command::Nack,
            &[("id", header(&again, "ack")), ("requeue", "false")],
        ),
        "dropped",
    )
    .await;
    let q = server.broker.vhost("/").unwrap().queue("nacked").unwrap();
    assert_eq!((q.message_count(), q.unacked_count()), (0, 0));
}

#[tokio::test]
async fn transactions_publish_and_acknowledge_on_commit_only() {
    let server = start().await;
    let mut c = Client::connect(&server, "1.2").await;
    c.subscribe("/queue/tx", "s", &[("ack", "client-individual")])
        .await;
    c.publish("/queue/tx", "before").await;
    let before = c.message("the message sent before BEGIN").await;
    c.send(frame(Command::Begin, &[("transaction", "t1")]))
        .await;
    c.send(
        frame(
            Command::Send,
            &[("destination", "/queue/tx"), ("transaction", "t1")],
        )
        .with_body("inside"),
    )
    .await;
    c.send(frame(
        Command::Ack,
        &[("id", header(&before, "ack")), ("transaction", "t1")],
    ))
    .await;
    c.send_receipted(frame(Command::Begin, &[("transaction", "t2")]), "t2")
        .await;
    let q = server.broker.vhost("/").unwrap().queue("tx").unwrap();
    assert_eq!(
        (q.message_count(), q.unacked_count()),
        (0, 1),
        "nothing happens before COMMIT"
    );
    c.send(
        frame(
            Command::Send,
            &[("destination", "/queue/tx"), ("transaction", "t2")],
        )
        .with_body("aborted"),
    )
    .await;
    c.send_receipted(frame(Command::Abort, &[("transaction", "t2")]), "abort")
        .await;
    c.send_receipted(frame(Command::Commit, &[("transaction", "t1")]), "commit")
        .await;
    let inside = c.message("the message sent in the transaction").await;
    assert_eq!(&inside.body[..], b"inside");
    c.send_receipted(
        frame(Command::Ack, &[("id", header(&inside, "ack"))]),
        "acked",
    )
    .await;
    assert_eq!(
        (q.message_count(), q.unacked_count()),
        (0, 0),
        "the aborted SEND never arrived"
    );
}

#[tokio::test]
async fn a_receipted_persistent_send_survives_a_restart() {
    let dir = fresh_dir();
    {
        let server = start_in(&dir).await;
        let mut c = Client::connect(&server, "1.2").await;
        let send = frame(
            Command::Send,
            &[
                ("destination", "/queue/kept"),
                ("persistent", "true"),
                ("x-note", "durable"),
            ],
        )
        .with_body("on disk");
        c.send_receipted(send, "stored").await;
        server.shutdown(Duration::from_secs(5)).await;
    }
    let server = start_in(&dir).await;
    let mut c = Client::connect(&server, "1.1").await;
    c.subscribe("/queue/kept", "s", &[]).await;
    let m = c.message("the persistent message after a restart").await;
    assert_eq!(&m.body[..], b"on disk");
    assert_eq!(header(&m, "persistent"), "true");
    assert_eq!(header(&m, "x-note"), "durable");
}

#[tokio::test]
async fn a_content_length_body_may_hold_nul_bytes() {
    let server = start().await;
    let mut c = Client::connect(&server, "1.2").await;
    c.subscribe("/queue/binary", "s", &[]).await;
    c.send(frame(Command::Send, &[("destination", "/queue/binary")]).with_body(&b"a\0b\0"[..]))
        .await;
    let m = c.message("the binary message").await;
    assert_eq!(&m.body[..], b"a\0b\0");
    assert_eq!(header(&m, "content-length"), "4");
}

#[tokio::test]
async fn the_broker_sends_heart_beats_when_asked() {
    let server = start().await;
    let (mut c, connected) = Client::connect_with(
        &server,
        &[("accept-version", "1.2"), ("heart-beat", "0,100")],
    )
    .await;
    assert_eq!(header(&connected, "heart-beat"), "100,0");
    for i in 0..3 {
        assert_eq!(
            c.next_item(&format!("heart-beat {i}")).await,
            Some(Item::Heartbeat)
        );
    }
}

#[tokio::test]
async fn a_silent_client_is_closed_after_two_of_its_heart_beat_intervals() {
    let server = start().await;
    let (mut c, connected) = Client::connect_with(
        &server,
        &[("accept-version", "1.2"), ("heart-beat", "150,0")],
    )
    .await;
    assert_eq!(header(&connected, "heart-beat"), "0,150");
    let started = tokio::time::Instant::now();
    c.closed("the broker to drop a client that stopped sending heart-beats")
        .await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_client_that_keeps_sending_heart_beats_stays_connected() {
    let server = start().await;
    let (mut c, connected) = Client::connect_with(
        &server,
        &[("accept-version", "1.2"), ("heart-beat", "100,100")],
    )
    .await;
    assert_eq!(header(&connected, "heart-beat"), "100,100");
    // The broker's heart-beats are the clock: answer each with ours, for
    // four dead-peer periods, then prove the connection is alive.
    for i in 0..8 {
        assert_eq!(
            c.next_item(&format!("heart-beat {i}")).await,
            Some(Item::Heartbeat)
        );
        c.send_raw(b"\n").await;
    }
    c.send_receipted(frame(Command::Begin, &[("transaction", "alive")]), "alive")
        .await;
}

#[tokio::test]
async fn disconnect_receipt_comes_last_and_the_connection_closes() {
    let server = start().await;
    let mut c = Client::connect(&server, "1.2").await;
    c.send(frame(
        Command::Send,
        &[
            ("destination", "/queue/d"),
            ("persistent", "true"),
            ("receipt", "s1"),
        ],
    ))
    .await;
    c.send(frame(Command::Disconnect, &[("receipt", "d1")]))
        .await;
    let r1 = c.recv("the SEND's receipt").await;
    let r2 = c.recv("the DISCONNECT's receipt").await;
    assert_eq!(
        (header(&r1, "receipt-id"), header(&r2, "receipt-id")),
        ("s1", "d1")
    );
    c.closed("the connection to close after the DISCONNECT receipt")
        .await;
}

#[tokio::test]
async fn shutdown_closes_stomp_connections_with_an_error_frame() {
    let server = start().await;
    let mut c = Client::connect(&server, "1.2").await;
    c.subscribe("/queue/shutdown", "s", &[]).await;
    let stopping = tokio::spawn(server.shutdown(Duration::from_secs(5)));
    let e = c.error("ERROR at shutdown").await;
    assert_eq!(header(&e, "message"), "Server shutdown");
    c.closed("the connection to close at shutdown").await;
    common::within("shutdown to finish", stopping)
        .await
        .expect("shutdown task");
}
