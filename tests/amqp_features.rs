//! lapin against an in-process ferrymq: dead-lettering, TTL, RPC,
//! exclusivity and shutdown.

mod common;

use common::{connect, start, within};
use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, ExchangeKind};

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

#[tokio::test]
async fn expired_messages_are_dead_lettered_with_x_death() {
    let server = start().await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.exchange_declare(
        "dlx".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("dlx");
    ch.queue_declare(
        "dead".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("dead queue");
    ch.queue_bind(
        "dead".into(),
        "dlx".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    let args = table(&[
        ("x-message-ttl", AMQPValue::LongInt(50)),
        ("x-dead-letter-exchange", long("dlx")),
    ]);
    ch.queue_declare("short-lived".into(), QueueDeclareOptions::default(), args)
        .await
        .expect("ttl queue");
    ch.basic_publish(
        "".into(),
        "short-lived".into(),
        BasicPublishOptions::default(),
        b"tick",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    let mut dead = ch
        .basic_consume(
            "dead".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume dead letters");
    let d = within("the expired message on the dead-letter queue", dead.next())
        .await
        .expect("stream open")
        .expect("delivery");
    assert_eq!(d.data, b"tick");
    assert_eq!(d.exchange.as_str(), "dlx");
    let headers = d.properties.headers().clone().expect("headers");
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        panic!("x-death header: {headers:?}")
    };
    let Some(AMQPValue::FieldTable(first)) = deaths.as_slice().first() else {
        panic!("x-death entry")
    };
    assert_eq!(first.inner().get("reason"), Some(&long("expired")));
    assert_eq!(first.inner().get("queue"), Some(&long("short-lived")));
    assert_eq!(first.inner().get("count"), Some(&AMQPValue::LongLongInt(1)));
}

#[tokio::test]
async fn direct_reply_to_round_trip() {
    let server = start().await;
    let conn = connect(&server).await;
    let server_ch = conn.create_channel().await.expect("server channel");
    server_ch
        .queue_declare(
            "rpc".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("rpc queue");
    let mut requests = server_ch
        .basic_consume(
            "rpc".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume requests");

    let client = conn.create_channel().await.expect("client channel");
    let mut replies = client
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume replies");
    client
        .basic_publish(
            "".into(),
            "rpc".into(),
            BasicPublishOptions::default(),
            b"ping",
            BasicProperties::default()
                .with_reply_to("amq.rabbitmq.reply-to".into())
                .with_correlation_id("1".into()),
        )
        .await
        .expect("request");
    let req = within("the request", requests.next())
        .await
        .expect("open")
        .expect("delivery");
    let reply_to = req.properties.reply_to().clone().expect("reply_to set");
    assert!(
        reply_to.as_str().starts_with("amq.rabbitmq.reply-to."),
        "{reply_to}"
    );
    server_ch
        .basic_publish(
            "".into(),
            reply_to,
            BasicPublishOptions::default(),
            b"pong",
            BasicProperties::default().with_correlation_id("1".into()),
        )
        .await
        .expect("reply");
    let rep = within("the reply", replies.next())
        .await
        .expect("open")
        .expect("delivery");
    assert_eq!(rep.data, b"pong");
    assert_eq!(
        rep.properties.correlation_id().as_ref().map(|c| c.as_str()),
        Some("1")
    );
}

#[tokio::test]
async fn exclusive_queue_is_locked_to_its_connection_and_deleted_with_it() {
    let server = start().await;
    let owner = connect(&server).await;
    let ch = owner.create_channel().await.expect("channel");
    ch.queue_declare(
        "mine".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exclusive queue");
    let other = connect(&server).await;
    let och = other.create_channel().await.expect("channel");
    let err = och
        .basic_consume(
            "mine".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("another connection may not consume");
    assert!(
        err.to_string().contains("405") || err.to_string().contains("RESOURCE_LOCKED"),
        "{err}"
    );
    owner.close(200, "bye".into()).await.expect("close");
    let och = other.create_channel().await.expect("channel");
    let err = och
        .queue_declare(
            "mine".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("the queue went with its owner");
    assert!(
        err.to_string().contains("404") || err.to_string().contains("NOT_FOUND"),
        "{err}"
    );
}

#[tokio::test]
async fn nack_with_requeue_redelivers_in_place_and_reject_dead_letters() {
    let server = start().await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        "rejects".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("dlq");
    let args = table(&[
        ("x-dead-letter-exchange", long("")),
        ("x-dead-letter-routing-key", long("rejects")),
    ]);
    ch.queue_declare("jobs".into(), QueueDeclareOptions::default(), args)
        .await
        .expect("jobs");
    for b in ["a", "b", "c"] {
        ch.basic_publish(
            "".into(),
            "jobs".into(),
            BasicPublishOptions::default(),
            b.as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    ch.basic_qos(3, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut c = ch
        .basic_consume(
            "jobs".into(),
            "w".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let a = within("a", c.next()).await.expect("open").expect("a");
    let b = within("b", c.next()).await.expect("open").expect("b");
    let _c = within("c", c.next()).await.expect("open").expect("c");
    b.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    })
    .await
    .expect("nack b");
    let b2 = within("b again", c.next())
        .await
        .expect("open")
        .expect("b2");
    assert_eq!(b2.data, b"b");
    assert!(b2.redelivered);
    a.reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject a");
    let dead = within("the rejected message", async {
        loop {
            if let Some(m) = ch
                .basic_get("rejects".into(), BasicGetOptions { no_ack: true })
                .await
                .expect("get")
            {
                return m;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(dead.delivery.data, b"a");
}

#[tokio::test]
async fn shutdown_closes_clients_with_connection_forced() {
    let server = start().await;
    let conn = connect(&server).await;
    let _ch = conn.create_channel().await.expect("channel");
    within(
        "shutdown",
        server.shutdown(std::time::Duration::from_secs(5)),
    )
    .await;
    within("client sees the close", async {
        while conn.status().connected() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}
