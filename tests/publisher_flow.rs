//! A publisher whose queue's consumers fall behind waits for them, briefly:
//! never for a consumer that has stopped, nor for one on its own connection
//! (core/publisher_flow.rs), over AMQP and STOMP.

mod common;
mod stomp_common;

use common::{connect, start, within};
use ferrymq::core::Protocol;
use ferrymq::stomp::codec::Command;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use stomp_common::{Client, frame};

/// Above the core's `BEHIND_AT`, so the consumers fall behind in each test.
const MESSAGES: u32 = 5000;

/// Declares `queue` and consumes from it with manual acks at `prefetch`.
async fn consume(ch: &Channel, queue: &str, prefetch: u16) -> lapin::Consumer {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue declared");
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .expect("qos");
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("consume")
}

fn waits(server: &ferrymq::server::Server, protocol: Protocol) -> u64 {
    server.broker.stats.protocol(protocol).publisher_waits.get()
}

/// Publishes `MESSAGES` numbered messages with confirms, all sent before
/// any confirm is awaited; every one must be acked.
async fn publish_confirmed(ch: &Channel, queue: &str) {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let mut confirms = Vec::new();
    for i in 0..MESSAGES {
        let confirm = within(
            "a publish to be sent",
            ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default(),
            ),
        )
        .await
        .expect("publish sent");
        confirms.push(confirm);
    }
    for (i, c) in confirms.into_iter().enumerate() {
        let c = within("a publisher confirm", c).await.expect("confirm");
        assert!(c.is_ack(), "publish {i} was nacked");
    }
}

async fn ready(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive declare")
    .message_count()
}

#[tokio::test]
async fn a_stopped_consumer_slows_its_publisher_once_and_does_not_stop_it() {
    let server = start().await;
    let consuming = connect(&server).await;
    let cch = consuming.create_channel().await.expect("channel");
    let mut consumer = consume(&cch, "stuck", 1).await;

    let publishing = connect(&server).await;
    let pch = publishing.create_channel().await.expect("channel");
    publish_confirmed(&pch, "stuck").await;

    let first = within("the first delivery", consumer.next())
        .await
        .expect("stream open")
        .expect("delivery");
    assert_eq!(first.data, 0u32.to_be_bytes());
    assert_eq!(ready(&pch, "stuck").await, MESSAGES - 1);
    assert_eq!(
        waits(&server, Protocol::Amqp),
        1,
        "one wait, then the consumer counts as stopped"
    );
}

#[tokio::test]
async fn a_consumer_on_the_publishers_own_connection_is_not_waited_for() {
    let server = start().await;
    let conn = connect(&server).await;
    let cch = conn.create_channel().await.expect("channel");
    let _consumer = consume(&cch, "own", 1).await;
    let pch = conn.create_channel().await.expect("channel");
    publish_confirmed(&pch, "own").await;
    assert_eq!(ready(&pch, "own").await, MESSAGES - 1);
    assert_eq!(waits(&server, Protocol::Amqp), 0);
}

#[tokio::test]
async fn a_working_consumer_gets_every_message_in_order_while_its_publisher_waits_for_it() {
    let server = start().await;
    let consuming = connect(&server).await;
    let cch = consuming.create_channel().await.expect("channel");
    let mut consumer = consume(&cch, "paced", 10).await;
    let reader = tokio::spawn(async move {
        for i in 0..MESSAGES {
            let d = within("a delivery", consumer.next())
                .await
                .expect("stream open")
                .expect("delivery");
            assert_eq!(d.data, i.to_be_bytes(), "in order, none lost");
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
    });
    let publishing = connect(&server).await;
    let pch = publishing.create_channel().await.expect("channel");
    publish_confirmed(&pch, "paced").await;
    within("the consumer to take every message", reader)
        .await
        .expect("consumer task");
    assert_eq!(ready(&pch, "paced").await, 0);
}

#[tokio::test]
async fn a_stopped_stomp_subscriber_slows_its_sender_once_and_does_not_stop_it() {
    let server = start().await;
    let mut subscriber = Client::connect(&server, "1.2").await;
    subscriber
        .subscribe(
            "/queue/stuck",
            "s",
            &[("ack", "client"), ("prefetch-count", "1")],
        )
        .await;
    let mut sender = Client::connect(&server, "1.2").await;
    for i in 0..MESSAGES {
        sender.publish("/queue/stuck", &i.to_string()).await;
    }
    // Receipts come in order: this one follows every SEND before it.
    sender
        .send_receipted(
            frame(Command::Send, &[("destination", "/queue/stuck")]),
            "last",
        )
        .await;
    let first = subscriber.message("the first message").await;
    assert_eq!(&first.body[..], b"0");
    let queue = server
        .broker
        .vhost("/")
        .expect("default vhost")
        .queue("stuck")
        .expect("the subscription's queue");
    assert_eq!(queue.message_count(), MESSAGES as usize);
    assert_eq!(
        waits(&server, Protocol::Stomp),
        1,
        "one wait, then the subscriber counts as stopped"
    );
}
