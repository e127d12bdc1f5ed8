//! Durable state survives a restart: exchanges, queues, bindings and
//! persistent messages in order, with redelivered flags.

mod common;

use std::time::Duration;

use common::{connect, fresh_dir, start_configured, start_in, within};
use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};

#[tokio::test]
async fn durable_topology_and_persistent_messages_survive_a_restart() {
    let dir = fresh_dir();
    {
        let server = start_in(&dir).await;
        let conn = connect(&server).await;
        let ch = conn.create_channel().await.expect("channel");
        ch.exchange_declare(
            "orders".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange");
        ch.queue_declare(
            "eu".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("durable queue");
        ch.queue_declare(
            "scratch".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("transient queue");
        ch.queue_bind(
            "eu".into(),
            "orders".into(),
            "eu.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        for i in 0..50u32 {
            let persistent = if i % 2 == 0 { 2 } else { 1 };
            ch.basic_publish(
                "orders".into(),
                "eu.fr".into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default().with_delivery_mode(persistent),
            )
            .await
            .expect("publish")
            .await
            .expect("confirmed");
        }
        // take one and leave it unacknowledged: it comes back redelivered
        let got = ch
            .basic_get("eu".into(), BasicGetOptions::default())
            .await
            .expect("get")
            .expect("a message");
        assert_eq!(got.delivery.data, 0u32.to_be_bytes());
        // ack the next two (1 is transient, 2 persistent): 2 is gone after the restart
        for expected in [1u32, 2] {
            let got = ch
                .basic_get("eu".into(), BasicGetOptions::default())
                .await
                .expect("get")
                .expect("a message");
            assert_eq!(got.delivery.data, expected.to_be_bytes());
            got.delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
        }
        // a round trip on the same channel: the broker handled the acks before replying
        ch.queue_declare(
            "eu".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
        server.shutdown(Duration::from_secs(5)).await;
    }
    let server = start_in(&dir).await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.exchange_declare(
        "orders".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exchange survived");
    let err = ch
        .queue_declare(
            "scratch".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(err.is_err(), "transient queue is gone");
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            "eu".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue survived");
    // persistent: 0,2,4,...,48 = 25 messages; 2 was acked
    assert_eq!(q.message_count(), 24);
    let mut c = ch
        .basic_consume(
            "eu".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let first = within("first recovered message", c.next())
        .await
        .expect("open")
        .expect("delivery");
    assert_eq!(first.data, 0u32.to_be_bytes());
    assert!(
        first.redelivered,
        "it had been delivered before the restart"
    );
    let mut rest = Vec::new();
    for _ in 0..23 {
        let d = within("recovered message", c.next())
            .await
            .expect("open")
            .expect("delivery");
        assert!(!d.redelivered);
        rest.push(u32::from_be_bytes(d.data[..4].try_into().expect("4 bytes")));
    }
    let expected: Vec<u32> = (4..50).step_by(2).collect();
    assert_eq!(rest, expected, "order is kept");
    // the binding survived too
    ch.basic_publish(
        "orders".into(),
        "eu.de".into(),
        BasicPublishOptions::default(),
        b"after",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    let d = within("a message routed by the recovered binding", c.next())
        .await
        .expect("open")
        .expect("delivery");
    assert_eq!(d.data, b"after");
}

#[tokio::test]
async fn a_second_broker_on_the_same_data_directory_is_refused() {
    let dir = fresh_dir();
    let _first = start_in(&dir).await;
    let mut config = ferrymq::config::Config::ephemeral();
    config.data_dir = dir;
    let err = ferrymq::server::Server::start(&config)
        .await
        .expect_err("directory is locked");
    assert!(err.to_string().contains("in use"), "{err}");
}

#[tokio::test]
async fn a_deep_backlog_is_paged_to_disk_and_delivered_in_order_across_a_restart() {
    const N: u32 = 20_000;
    // 512-byte bodies: the byte bound (1 MiB) keeps the first 2048 in
    // memory, before the message bound (4096) would.
    const KEPT: usize = 2048;
    let window = |c: &mut ferrymq::config::Config| {
        c.queue_memory_messages = 4096;
        c.queue_memory_bytes = 1024 * 1024;
    };
    let dir = fresh_dir();
    {
        let server = start_configured(&dir, window).await;
        let conn = connect(&server).await;
        let ch = conn.create_channel().await.expect("channel");
        ch.queue_declare(
            "backlog".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let body = vec![7u8; 512];
        let mut confirms = Vec::with_capacity(N as usize);
        for i in 0..N {
            let mut b = body.clone();
            b[..4].copy_from_slice(&i.to_be_bytes());
            confirms.push(
                ch.basic_publish(
                    "".into(),
                    "backlog".into(),
                    BasicPublishOptions::default(),
                    &b,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish"),
            );
        }
        for c in confirms {
            assert!(
                within("publisher confirm", c)
                    .await
                    .expect("confirm")
                    .is_ack()
            );
        }
        let queue = server
            .broker
            .vhost("/")
            .expect("vhost")
            .queue("backlog")
            .expect("queue");
        // Everything past the in-memory window that is durable is on disk only.
        let paged = queue.paged_count();
        assert!(paged + KEPT + 1024 >= N as usize, "only {paged} paged out");
        assert!(
            paged <= N as usize - KEPT,
            "{paged} paged out: the first {KEPT} keep their bodies"
        );
        // Consume and acknowledge half now: paged messages are read back in order.
        ch.basic_qos(500, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut c = ch
            .basic_consume(
                "backlog".into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        for i in 0..N / 2 {
            let d = within("a backlog message", c.next())
                .await
                .expect("open")
                .expect("delivery");
            assert_eq!(d.data[..4], i.to_be_bytes(), "in order");
            assert_eq!(d.data.len(), 512);
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
        // a round trip on the channel: every ack above was handled
        ch.basic_qos(500, BasicQosOptions::default())
            .await
            .expect("qos");
        conn.close(200, "bye".into()).await.expect("close");
        server.shutdown(Duration::from_secs(5)).await;
    }
    let server = start_configured(&dir, window).await;
    let q = server
        .broker
        .vhost("/")
        .expect("vhost")
        .queue("backlog")
        .expect("queue survived");
    assert_eq!(q.message_count(), (N / 2) as usize);
    assert!(
        q.paged_count() >= (N / 2) as usize - KEPT,
        "recovered bodies past the window stay on disk"
    );
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    let mut c = ch
        .basic_consume(
            "backlog".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    // Unacknowledged deliveries went back to the queue at the close.
    let first = within("first message after restart", c.next())
        .await
        .expect("open")
        .expect("delivery");
    assert_eq!(
        first.data[..4],
        (N / 2).to_be_bytes(),
        "resumes after the last ack"
    );
    assert!(first.redelivered, "it was in flight at the close");
    let mut next = N / 2 + 1;
    while next < N {
        let d = within("a recovered backlog message", c.next())
            .await
            .expect("open")
            .expect("delivery");
        assert_eq!(
            d.data[..4],
            next.to_be_bytes(),
            "in order after the restart"
        );
        next += 1;
    }
}

#[tokio::test]
async fn users_vhosts_and_permissions_changed_at_runtime_survive_a_restart() {
    use ferrymq::core::{Access, Permission, User};
    let dir = fresh_dir();
    let loopback = "127.0.0.1".parse().expect("address");
    {
        let server = start_in(&dir).await;
        let b = &server.broker;
        b.add_vhost("staging");
        b.add_vhost("scratch");
        b.users.put(User {
            name: "deployer".into(),
            password: "s3cret".into(),
            tags: vec!["management".into()],
            loopback_only: false,
            vhosts: vec![],
        });
        b.users.put(User {
            name: "temp".into(),
            password: "t".into(),
            tags: vec![],
            loopback_only: false,
            vhosts: vec![],
        });
        assert!(b.users.set_permission(
            "deployer",
            "staging",
            Permission::new("^app\\.", ".*", "").expect("valid")
        ));
        assert!(b.users.set_permission("temp", "/", Permission::full()));
        assert!(b.users.delete("temp"));
        // A configured user's configured grant, taken away at runtime.
        assert!(b.users.clear_permission("guest", "/"));
        assert!(b.remove_vhost("scratch"));
        server.shutdown(Duration::from_secs(5)).await;
    }
    let server = start_in(&dir).await;
    let b = &server.broker;
    assert!(b.vhost("staging").is_some(), "a created vhost survives");
    assert!(
        b.vhost("scratch").is_none(),
        "a deleted vhost stays deleted"
    );
    let u = b
        .users
        .authenticate("deployer", "s3cret", loopback)
        .expect("the added user logs in");
    assert_eq!(u.tags, ["management"]);
    assert!(
        b.users.get("temp").is_none(),
        "a deleted user stays deleted"
    );
    assert!(
        b.users
            .allows("deployer", "staging", Access::Configure, "app.q")
    );
    assert!(
        !b.users
            .allows("deployer", "staging", Access::Configure, "other")
    );
    assert!(!b.users.allows("deployer", "staging", Access::Read, "app.q"));
    assert!(
        b.users.check_access("guest", "/").is_err(),
        "a permission cleared at runtime stays cleared"
    );
    assert!(
        b.users.authenticate("guest", "guest", loopback).is_ok(),
        "configured users are still there"
    );
}

#[tokio::test]
async fn ttls_keep_counting_while_the_broker_is_down() {
    let dir = fresh_dir();
    {
        let server = start_in(&dir).await;
        let conn = connect(&server).await;
        let ch = conn.create_channel().await.expect("channel");
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare("expired".into(), durable, FieldTable::default())
            .await
            .expect("dead-letter queue");
        let mut args = FieldTable::default();
        args.insert(
            "x-message-ttl".into(),
            lapin::types::AMQPValue::LongInt(300),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            lapin::types::AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            lapin::types::AMQPValue::LongString("expired".into()),
        );
        ch.queue_declare("short-lived".into(), durable, args)
            .await
            .expect("queue with x-message-ttl");
        ch.queue_declare("mixed".into(), durable, FieldTable::default())
            .await
            .expect("plain queue");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let persistent = BasicProperties::default().with_delivery_mode(2);
        let publishes = [
            ("short-lived", b"queue ttl".as_slice(), persistent.clone()),
            (
                "mixed",
                b"per-message ttl",
                persistent.clone().with_expiration("300".into()),
            ),
            (
                "mixed",
                b"long ttl",
                persistent.clone().with_expiration("3600000".into()),
            ),
        ];
        for (queue, body, props) in publishes {
            ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirmed");
        }
        server.shutdown(Duration::from_secs(5)).await;
    }
    // The outage itself: longer than the short TTLs, which must not start
    // over when the broker comes back.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let server = start_in(&dir).await;
    let vhost = server.broker.vhost("/").expect("vhost");
    let (short, expired) = (
        vhost.queue("short-lived").expect("queue"),
        vhost.queue("expired").expect("queue"),
    );
    common::within("the expired message to be dead-lettered", async {
        while !(short.message_count() == 0 && expired.message_count() == 1) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let conn = connect(&server).await;
    let ch = conn.create_channel().await.expect("channel");
    let got = ch
        .basic_get("mixed".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("the long-lived message");
    assert_eq!(
        got.delivery.data, b"long ttl",
        "the message whose TTL ran out while the broker was down is not delivered"
    );
    let got = ch
        .basic_get("expired".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("the dead letter");
    assert_eq!(got.delivery.data, b"queue ttl");
}
