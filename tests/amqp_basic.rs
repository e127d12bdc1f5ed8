//! lapin against an in-process ferrymq: the everyday AMQP paths.

mod common;

use common::{connect, start, within};
use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};

#[tokio::test]
async fn publish_with_confirm_then_consume_and_ack() {
    let server = start().await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel opens");
    ch.queue_declare(
        "work".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue declared");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    for i in 0..100u32 {
        let confirm = ch
            .basic_publish(
                "".into(),
                "work".into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish sent");
        assert!(
            within("publisher confirm", confirm)
                .await
                .expect("confirm arrives")
                .is_ack()
        );
    }
    let declared = ch
        .queue_declare(
            "work".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    assert_eq!(declared.message_count(), 100);

    ch.basic_qos(10, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = ch
        .basic_consume(
            "work".into(),
            "c1".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for i in 0..100u32 {
        let d = within("delivery", consumer.next())
            .await
            .expect("stream open")
            .expect("delivery ok");
        assert_eq!(d.data, i.to_be_bytes(), "messages arrive in order");
        assert!(!d.redelivered);
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    ch.basic_cancel("c1".into(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    let declared = ch
        .queue_declare(
            "work".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    assert_eq!(declared.message_count(), 0);
    conn.close(200, "bye".into()).await.expect("clean close");
}

#[tokio::test]
async fn topic_exchange_routes_by_pattern_and_mandatory_returns_unroutable() {
    let server = start().await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.exchange_declare(
        "events".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange");
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("server-named queue");
    assert!(q.name().as_str().starts_with("amq.gen-"));
    ch.queue_bind(
        q.name().clone(),
        "events".into(),
        "plant.*.temp".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for key in ["plant.3.temp", "plant.3.humidity", "plant.4.temp"] {
        ch.basic_publish(
            "events".into(),
            key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            key.as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    let mut got = Vec::new();
    while let Some(m) = ch
        .basic_get(q.name().clone(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
    {
        got.push(String::from_utf8(m.delivery.data.clone()).expect("utf8"));
    }
    assert_eq!(got, ["plant.3.temp", "plant.4.temp"]);
    // the unroutable mandatory message came back
    let ret = ch
        .basic_publish(
            "events".into(),
            "nowhere".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"x",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let returned = ret.take_message().expect("message returned");
    assert_eq!(returned.reply_code, 312);
}

#[tokio::test]
async fn queue_errors_close_the_channel_not_the_connection() {
    let server = start().await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    let err = ch
        .queue_declare(
            "missing".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("passive declare of a missing queue fails");
    assert!(
        err.to_string().contains("404") || err.to_string().contains("NOT_FOUND"),
        "{err}"
    );
    // the connection survives and a new channel works
    let ch2 = conn.create_channel().await.expect("another channel");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    ch2.queue_declare("q1".into(), QueueDeclareOptions::default(), args)
        .await
        .expect("declare");
    let err = ch2
        .queue_declare(
            "q1".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("redeclare with other arguments");
    assert!(
        err.to_string().contains("406") || err.to_string().contains("PRECONDITION_FAILED"),
        "{err}"
    );
    assert!(conn.status().connected());
}
