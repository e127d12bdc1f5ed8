//! Resource alarms block publishers and let consumers drain.

mod common;
mod mqtt_common;
mod stomp_common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::{connect, start, within};
use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::FieldTable;
use rumqttc::{Packet, QoS};
use stomp_common::{Client, frame, header};

/// How long a held publish is watched for not getting through. Only a
/// broken broker can fail this way; a slow machine can only make the
/// check weaker.
const HELD: Duration = Duration::from_millis(500);

async fn raise_disk_alarm(server: &ferrymq::server::Server) {
    let mut alarms = server.broker.alarms.watch();
    server.resource_limits.disk_free.store(u64::MAX, Relaxed);
    within("the disk alarm", alarms.wait_for(|a| a.disk))
        .await
        .expect("alarm raised");
}

async fn clear_alarms(server: &ferrymq::server::Server) {
    let mut alarms = server.broker.alarms.watch();
    server.resource_limits.disk_free.store(0, Relaxed);
    within("the alarm to clear", alarms.wait_for(|a| !a.any()))
        .await
        .expect("alarm cleared");
}

#[tokio::test]
async fn a_disk_alarm_blocks_publishers_while_consumers_keep_draining() {
    let server = start().await;
    let publisher = connect(&server).await;
    let pch = publisher.create_channel().await.expect("channel");
    pch.queue_declare(
        "work".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue");
    pch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for i in 0..10u8 {
        pch.basic_publish(
            "".into(),
            "work".into(),
            BasicPublishOptions::default(),
            &[i],
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm before the alarm");
    }
    let mut alarms = server.broker.alarms.watch();
    server.resource_limits.disk_free.store(u64::MAX, Relaxed);
    within("the disk alarm", alarms.wait_for(|a| a.disk))
        .await
        .expect("alarm raised");
    within("connection.blocked at the publisher", async {
        while !publisher.status().blocked() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // lapin holds the publish itself while blocked: send it from a task.
    let late = tokio::spawn(async move {
        pch.basic_publish(
            "".into(),
            "work".into(),
            BasicPublishOptions::default(),
            b"late",
            BasicProperties::default(),
        )
        .await
        .expect("publish sent after the alarm")
        .await
        .expect("confirm")
    });

    // A consumer on another connection still gets everything queued.
    let consumer = connect(&server).await;
    let cch = consumer.create_channel().await.expect("channel");
    let mut c = cch
        .basic_consume(
            "work".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume during the alarm");
    for i in 0..10u8 {
        let d = within("a message during the alarm", c.next())
            .await
            .expect("open")
            .expect("delivery");
        assert_eq!(d.data, [i]);
    }

    server.resource_limits.disk_free.store(0, Relaxed);
    within("the alarm to clear", alarms.wait_for(|a| !a.any()))
        .await
        .expect("alarm cleared");
    assert!(
        within("the held publish's confirm", late)
            .await
            .expect("task")
            .is_ack()
    );
    let d = within("the held message", c.next())
        .await
        .expect("open")
        .expect("delivery");
    assert_eq!(d.data, b"late");
    assert!(!publisher.status().blocked());
}

#[tokio::test]
async fn an_mqtt_publisher_is_held_after_its_first_publish_during_an_alarm() {
    let server = start().await;
    let mut sub = mqtt_common::v4(&server, "alarm-sub").await;
    sub.client
        .subscribe("alarm/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe queued");
    sub.expect("SUBACK", |p| matches!(p, Packet::SubAck(_)).then_some(()))
        .await;
    let mut publisher = mqtt_common::v4(&server, "alarm-pub").await;
    raise_disk_alarm(&server).await;
    for n in ["1", "2"] {
        publisher
            .client
            .publish(format!("alarm/{n}"), QoS::AtLeastOnce, false, n)
            .await
            .expect("publish queued");
    }
    let first = sub
        .expect("the publish read before holding", |p| match p {
            Packet::Publish(p) => Some(p.payload),
            _ => None,
        })
        .await;
    assert_eq!(&first[..], b"1");
    let early = tokio::time::timeout(HELD, sub.next("nothing during the alarm")).await;
    assert!(early.is_err(), "the second publish got through: {early:?}");

    clear_alarms(&server).await;
    let second = sub
        .expect("the held publish", |p| match p {
            Packet::Publish(p) => Some(p.payload),
            _ => None,
        })
        .await;
    assert_eq!(&second[..], b"2");
    for _ in 0..2 {
        publisher
            .expect("PUBACK", |p| matches!(p, Packet::PubAck(_)).then_some(()))
            .await;
    }
}

#[tokio::test]
async fn a_stomp_sender_is_held_after_its_first_send_during_an_alarm() {
    let server = start().await;
    let mut sub = Client::connect(&server, "1.2").await;
    sub.subscribe("/queue/held", "s", &[]).await;
    let mut publisher = Client::connect(&server, "1.2").await;
    raise_disk_alarm(&server).await;
    for n in ["1", "2"] {
        publisher
            .send(
                frame(
                    ferrymq::stomp::codec::Command::Send,
                    &[("destination", "/queue/held"), ("receipt", n)],
                )
                .with_body(bytes::Bytes::copy_from_slice(n.as_bytes())),
            )
            .await;
    }
    let m = sub.message("the SEND read before holding").await;
    assert_eq!(&m.body[..], b"1");
    let r = publisher.recv("RECEIPT 1").await;
    assert_eq!(header(&r, "receipt-id"), "1");
    let early = tokio::time::timeout(HELD, sub.recv("nothing during the alarm")).await;
    assert!(early.is_err(), "the second SEND got through: {early:?}");

    clear_alarms(&server).await;
    let m = sub.message("the held SEND").await;
    assert_eq!(&m.body[..], b"2");
    let r = publisher.recv("RECEIPT 2").await;
    assert_eq!(header(&r, "receipt-id"), "2");
}
