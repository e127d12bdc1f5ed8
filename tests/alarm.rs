//! Resource alarms block publishers and let consumers drain.

mod common;

use std::sync::atomic::Ordering::Relaxed;

use common::{connect, start, within};
use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::FieldTable;

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
