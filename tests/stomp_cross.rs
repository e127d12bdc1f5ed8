//! STOMP and AMQP through one core: lapin on one side, a raw STOMP client
//! on the other, properties and headers carried both ways.

mod common;
mod stomp_common;

use common::{connect, start, within};
use ferrymq::stomp::codec::Command;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use stomp_common::{Client, frame, header};

async fn amqp_queue(ch: &Channel, name: &str, exchange: &str, key: &str) -> lapin::Consumer {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    if !exchange.is_empty() {
        ch.queue_bind(
            name.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    }
    ch.basic_consume(
        name.into(),
        "".into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("consume")
}

async fn next_delivery(consumer: &mut lapin::Consumer, what: &str) -> lapin::message::Delivery {
    within(what, consumer.next())
        .await
        .expect("a delivery")
        .expect("not an error")
}

fn string_header(p: &BasicProperties, name: &str) -> Option<String> {
    match p.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        other => panic!("header {name} is {other:?}"),
    }
}

#[tokio::test]
async fn stomp_send_to_a_topic_reaches_an_amqp_queue_bound_to_amq_topic() {
    let server = start().await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    let mut consumer = amqp_queue(&ch, "from-stomp", "amq.topic", "a.b").await;
    let mut c = Client::connect(&server, "1.2").await;
    let send = frame(
        Command::Send,
        &[
            ("destination", "/topic/a.b"),
            ("content-type", "application/json"),
            ("correlation-id", "corr-1"),
            ("reply-to", "/queue/replies"),
            ("expiration", "60000"),
            ("priority", "5"),
            ("persistent", "true"),
            ("amqp-message-id", "m-1"),
            ("type", "order"),
            ("x-trace", "t-9"),
            ("custom", "value with: colon"),
        ],
    )
    .with_body(&b"{\"n\":1}"[..]);
    c.send_receipted(send, "sent").await;
    let d = next_delivery(&mut consumer, "the STOMP message over AMQP").await;
    assert_eq!(d.data, b"{\"n\":1}");
    assert_eq!(d.exchange.as_str(), "amq.topic");
    assert_eq!(d.routing_key.as_str(), "a.b");
    let p = &d.properties;
    assert_eq!(
        p.content_type().as_ref().map(ShortString::as_str),
        Some("application/json")
    );
    assert_eq!(
        p.correlation_id().as_ref().map(ShortString::as_str),
        Some("corr-1")
    );
    assert_eq!(
        p.reply_to().as_ref().map(ShortString::as_str),
        Some("/queue/replies")
    );
    assert_eq!(
        p.expiration().as_ref().map(ShortString::as_str),
        Some("60000")
    );
    assert_eq!(*p.priority(), Some(5));
    assert_eq!(*p.delivery_mode(), Some(2));
    assert_eq!(
        p.message_id().as_ref().map(ShortString::as_str),
        Some("m-1")
    );
    assert_eq!(p.kind().as_ref().map(ShortString::as_str), Some("order"));
    assert_eq!(string_header(p, "x-trace").as_deref(), Some("t-9"));
    assert_eq!(
        string_header(p, "custom").as_deref(),
        Some("value with: colon")
    );
    assert_eq!(
        string_header(p, "destination"),
        None,
        "frame headers stay in STOMP"
    );
}

#[tokio::test]
async fn an_amqp_publish_reaches_a_stomp_subscriber_with_its_properties() {
    let server = start().await;
    let mut c = Client::connect(&server, "1.2").await;
    c.subscribe("/topic/sensors.*", "s", &[]).await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    let mut headers = FieldTable::default();
    headers.insert(
        "x-site".into(),
        AMQPValue::LongString(LongString::from("north")),
    );
    headers.insert("reading".into(), AMQPValue::LongInt(-12));
    headers.insert("calibrated".into(), AMQPValue::Boolean(true));
    headers.insert(
        "nested".into(),
        AMQPValue::FieldTable(FieldTable::default()),
    );
    let props = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_correlation_id("c-7".into())
        .with_reply_to("amq.gen-requester".into())
        .with_expiration("30000".into())
        .with_priority(3)
        .with_delivery_mode(2)
        .with_message_id("app-id-1".into())
        .with_timestamp(1_700_000_000)
        .with_app_id("probe".into())
        .with_headers(headers);
    ch.basic_publish(
        "amq.topic".into(),
        "sensors.t1".into(),
        BasicPublishOptions::default(),
        b"21.5",
        props,
    )
    .await
    .expect("publish");
    let m = c.message("the AMQP message over STOMP").await;
    assert_eq!(&m.body[..], b"21.5");
    assert_eq!(header(&m, "destination"), "/topic/sensors.t1");
    assert_eq!(header(&m, "content-type"), "text/plain");
    assert_eq!(header(&m, "content-length"), "4");
    assert_eq!(header(&m, "correlation-id"), "c-7");
    assert_eq!(header(&m, "reply-to"), "/reply-queue/amq.gen-requester");
    assert_eq!(header(&m, "expiration"), "30000");
    assert!(header(&m, "expires").parse::<u64>().is_ok());
    assert_eq!(header(&m, "priority"), "3");
    assert_eq!(header(&m, "persistent"), "true");
    assert_eq!(header(&m, "amqp-message-id"), "app-id-1");
    assert_eq!(header(&m, "timestamp"), "1700000000");
    assert_eq!(header(&m, "app-id"), "probe");
    assert_eq!(header(&m, "x-site"), "north");
    assert_eq!(header(&m, "reading"), "-12");
    assert_eq!(header(&m, "calibrated"), "true");
    assert_eq!(m.header("nested"), None, "tables have no STOMP form");
    assert_ne!(
        header(&m, "message-id"),
        "app-id-1",
        "STOMP's message-id is the ack handle"
    );
}

#[tokio::test]
async fn an_amqp_publish_to_the_default_exchange_reaches_a_stomp_queue_subscriber() {
    let server = start().await;
    let mut c = Client::connect(&server, "1.0").await;
    c.subscribe("/queue/jobs", "s", &[("ack", "client")]).await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_publish(
        "".into(),
        "jobs".into(),
        BasicPublishOptions::default(),
        b"job",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    let m = c.message("the AMQP job").await;
    assert_eq!(header(&m, "destination"), "/queue/jobs");
    c.send_receipted(
        frame(Command::Ack, &[("message-id", header(&m, "message-id"))]),
        "acked",
    )
    .await;
}

#[tokio::test]
async fn a_stomp_requester_gets_its_reply_from_an_amqp_responder() {
    let server = start().await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    let mut requests = amqp_queue(&ch, "service", "", "").await;
    let mut c = Client::connect(&server, "1.2").await;
    c.send(
        frame(
            Command::Send,
            &[
                ("destination", "/queue/service"),
                ("reply-to", "/temp-queue/mine"),
                ("correlation-id", "q1"),
            ],
        )
        .with_body("ping"),
    )
    .await;
    let request = next_delivery(&mut requests, "the STOMP request over AMQP").await;
    let reply_to = request.properties.reply_to().clone().expect("a reply-to");
    assert!(
        reply_to.as_str().starts_with("amq.gen-"),
        "a bare queue name: {reply_to}"
    );
    ch.basic_publish(
        "".into(),
        reply_to.as_str().into(),
        BasicPublishOptions::default(),
        b"pong",
        BasicProperties::default().with_correlation_id("q1".into()),
    )
    .await
    .expect("reply");
    let reply = c.message("the AMQP reply on the temp queue").await;
    assert_eq!(&reply.body[..], b"pong");
    assert_eq!(header(&reply, "subscription"), "/temp-queue/mine");
    assert_eq!(header(&reply, "correlation-id"), "q1");
}

#[tokio::test]
async fn an_amqp_requester_gets_its_reply_from_a_stomp_responder() {
    let server = start().await;
    let mut responder = Client::connect(&server, "1.1").await;
    responder.subscribe("/queue/stomp-service", "s", &[]).await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    let replies = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("reply queue");
    let mut consumer = ch
        .basic_consume(
            replies.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume replies");
    ch.basic_publish(
        "".into(),
        "stomp-service".into(),
        BasicPublishOptions::default(),
        b"ping",
        BasicProperties::default().with_reply_to(replies.name().clone()),
    )
    .await
    .expect("request");
    let request = responder.message("the AMQP request").await;
    let reply_to = header(&request, "reply-to").to_owned();
    assert_eq!(reply_to, format!("/reply-queue/{}", replies.name()));
    responder.publish(&reply_to, "pong").await;
    let d = next_delivery(&mut consumer, "the STOMP reply over AMQP").await;
    assert_eq!(d.data, b"pong");
}
