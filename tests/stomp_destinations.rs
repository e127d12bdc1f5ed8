//! STOMP destinations as RabbitMQ's and ActiveMQ's clients use them:
//! queues, topics with wildcards, exchanges, temp queues for
//! request/response, durable topic subscriptions and queue headers.

mod common;
mod stomp_common;

use common::start;
use ferrymq::stomp::codec::Command;
use stomp_common::{Client, frame, header};

#[tokio::test]
async fn topic_subscribers_each_get_every_matching_message() {
    let server = start().await;
    let mut star = Client::connect(&server, "1.2").await;
    let mut hash = Client::connect(&server, "1.2").await;
    let mut greater = Client::connect(&server, "1.1").await;
    star.subscribe("/topic/orders.*", "s", &[]).await;
    hash.subscribe("/topic/orders.#", "h", &[]).await;
    greater.subscribe("/topic/orders.>", "g", &[]).await;
    let mut sender = Client::connect(&server, "1.2").await;
    sender.publish("/topic/orders.eu", "one word").await;
    sender.publish("/topic/orders.eu.fr", "two words").await;
    sender.publish("/topic/invoices.eu", "no match").await;
    let m = star.message("orders.* to match orders.eu").await;
    assert_eq!(
        (&m.body[..], header(&m, "destination")),
        (&b"one word"[..], "/topic/orders.eu")
    );
    for (c, who) in [(&mut hash, "orders.#"), (&mut greater, "orders.>")] {
        let a = c.message(&format!("{who}: the first message")).await;
        let b = c.message(&format!("{who}: the second message")).await;
        assert_eq!(
            (&a.body[..], &b.body[..]),
            (&b"one word"[..], &b"two words"[..]),
            "{who}"
        );
        assert_eq!(header(&b, "destination"), "/topic/orders.eu.fr");
    }
    // orders.* must not have had the two-word message: prove it with a
    // marker sent after everything else.
    sender.publish("/topic/orders.marker", "marker").await;
    let next = star.message("the marker").await;
    assert_eq!(&next.body[..], b"marker");
}

#[tokio::test]
async fn exchange_destinations_bind_and_publish_through_named_exchanges() {
    let server = start().await;
    let vhost = server.broker.vhost("/").unwrap();
    let mut c = Client::connect(&server, "1.2").await;
    c.subscribe("/exchange/amq.direct/blue", "d", &[]).await;
    c.subscribe("/exchange/amq.fanout", "f", &[]).await;
    c.publish("/exchange/amq.direct/blue", "direct").await;
    c.publish("/exchange/amq.direct/red", "unrouted").await;
    c.publish("/exchange/amq.fanout", "fanned").await;
    let a = c.message("the direct message").await;
    let b = c.message("the fanout message").await;
    assert_eq!(
        (header(&a, "subscription"), &a.body[..]),
        ("d", &b"direct"[..])
    );
    assert_eq!(header(&a, "destination"), "/exchange/amq.direct/blue");
    assert_eq!(
        (header(&b, "subscription"), &b.body[..]),
        ("f", &b"fanned"[..])
    );
    assert_eq!(header(&b, "destination"), "/exchange/amq.fanout");
    // Each subscription's queue is its own and goes with the subscription.
    let before = vhost.queues().len();
    c.send_receipted(frame(Command::Unsubscribe, &[("id", "d")]), "gone")
        .await;
    assert_eq!(vhost.queues().len(), before - 1);

    c.send(frame(
        Command::Subscribe,
        &[("destination", "/exchange/nope/k"), ("id", "x")],
    ))
    .await;
    let e = c.error("ERROR for a missing exchange").await;
    assert_eq!(header(&e, "message"), "not_found");
}

#[tokio::test]
async fn amq_queue_destinations_need_an_existing_queue() {
    let server = start().await;
    let mut c = Client::connect(&server, "1.2").await;
    c.send(frame(
        Command::Subscribe,
        &[("destination", "/amq/queue/absent"), ("id", "1")],
    ))
    .await;
    let e = c.error("ERROR for a missing queue").await;
    assert_eq!(header(&e, "message"), "not_found");
    assert!(String::from_utf8_lossy(&e.body).contains("absent"));

    let mut c = Client::connect(&server, "1.2").await;
    c.subscribe("/queue/present", "declare", &[]).await;
    c.subscribe("/amq/queue/present", "existing", &[]).await;
    c.publish("/amq/queue/present", "hi").await;
    let m = c.message("a message through /amq/queue").await;
    assert_eq!(&m.body[..], b"hi");
}

#[tokio::test]
async fn queue_destinations_are_durable_unless_told_otherwise() {
    let server = start().await;
    let vhost = server.broker.vhost("/").unwrap();
    let mut c = Client::connect(&server, "1.2").await;
    c.subscribe("/queue/default", "a", &[]).await;
    c.subscribe(
        "/queue/shaped",
        "b",
        &[
            ("durable", "false"),
            ("auto-delete", "true"),
            ("x-max-length", "1"),
            ("x-message-ttl", "60000"),
        ],
    )
    .await;
    assert!(vhost.queue("default").unwrap().spec().durable);
    let shaped = vhost.queue("shaped").unwrap();
    assert!(!shaped.spec().durable && shaped.spec().auto_delete);
    assert_eq!(shaped.args().max_length, Some(1));
    assert_eq!(shaped.args().message_ttl, Some(60_000));
    c.send_receipted(frame(Command::Unsubscribe, &[("id", "b")]), "unsub")
        .await;
    assert!(
        vhost.queue("shaped").is_none(),
        "auto-delete after its last subscriber"
    );
}

#[tokio::test]
async fn an_exclusive_queue_belongs_to_its_connection() {
    let server = start().await;
    let mut owner = Client::connect(&server, "1.2").await;
    owner
        .subscribe("/queue/mine", "m", &[("exclusive", "true")])
        .await;
    let mut other = Client::connect(&server, "1.2").await;
    other
        .send(frame(
            Command::Subscribe,
            &[("destination", "/amq/queue/mine"), ("id", "o")],
        ))
        .await;
    let e = other
        .error("ERROR for someone else's exclusive queue")
        .await;
    assert_eq!(header(&e, "message"), "resource_locked");
    owner
        .send_receipted(frame(Command::Disconnect, &[]), "bye")
        .await;
    owner.closed("the owner's connection to close").await;
    assert!(server.broker.vhost("/").unwrap().queue("mine").is_none());
}

#[tokio::test]
async fn temp_queue_reply_to_gives_request_response_between_clients() {
    let server = start().await;
    let mut responder = Client::connect(&server, "1.2").await;
    responder.subscribe("/queue/rpc", "requests", &[]).await;
    let mut requester = Client::connect(&server, "1.1").await;
    requester
        .send(
            frame(
                Command::Send,
                &[
                    ("destination", "/queue/rpc"),
                    ("reply-to", "/temp-queue/answers"),
                    ("correlation-id", "42"),
                ],
            )
            .with_body("question"),
        )
        .await;
    let request = responder.message("the request").await;
    let reply_to = header(&request, "reply-to");
    assert!(reply_to.starts_with("/reply-queue/"), "{reply_to}");
    assert_eq!(header(&request, "correlation-id"), "42");
    responder
        .send(
            frame(
                Command::Send,
                &[("destination", reply_to), ("correlation-id", "42")],
            )
            .with_body("answer"),
        )
        .await;
    let reply = requester.message("the reply on the temp queue").await;
    assert_eq!(&reply.body[..], b"answer");
    assert_eq!(header(&reply, "subscription"), "/temp-queue/answers");
    assert_eq!(header(&reply, "destination"), "/temp-queue/answers");
    assert_eq!(header(&reply, "correlation-id"), "42");
}

#[tokio::test]
async fn rabbitmq_durable_topic_subscriptions_keep_messages_while_away() {
    let server = start().await;
    let durable = [("durable", "true"), ("auto-delete", "false")];
    let mut c = Client::connect(&server, "1.2").await;
    c.subscribe("/topic/news.#", "reader", &durable).await;
    c.send_receipted(frame(Command::Disconnect, &[]), "away")
        .await;
    c.closed("the subscriber to leave").await;

    let mut sender = Client::connect(&server, "1.2").await;
    sender
        .send_receipted(
            frame(Command::Send, &[("destination", "/topic/news.sport")]).with_body("while away"),
            "sent",
        )
        .await;

    let mut c = Client::connect(&server, "1.2").await;
    c.subscribe("/topic/news.#", "reader", &durable).await;
    let m = c
        .message("the message sent while the durable subscriber was away")
        .await;
    assert_eq!(&m.body[..], b"while away");
    // UNSUBSCRIBE repeating durable:true forgets the subscription.
    let queues = server.broker.vhost("/").unwrap().queues().len();
    c.send_receipted(
        frame(
            Command::Unsubscribe,
            &[("id", "reader"), ("durable", "true")],
        ),
        "forget",
    )
    .await;
    assert_eq!(server.broker.vhost("/").unwrap().queues().len(), queues - 1);

    c.send(frame(
        Command::Subscribe,
        &[("destination", "/topic/x"), ("durable", "true")],
    ))
    .await;
    let e = c
        .error("ERROR for a durable subscription without an id")
        .await;
    assert_eq!(header(&e, "message"), "Missing header");
}

#[tokio::test]
async fn activemq_durable_subscriptions_are_named_by_client_id_and_subscription_name() {
    let server = start().await;
    let connect = [("accept-version", "1.1"), ("client-id", "app-7")];
    let sub = [("activemq.subscriptionName", "audit")];
    let (mut c, _) = Client::connect_with(&server, &connect).await;
    c.subscribe("/topic/events.>", "1", &sub).await;
    c.send_receipted(frame(Command::Disconnect, &[]), "away")
        .await;
    c.closed("the subscriber to leave").await;

    let mut sender = Client::connect(&server, "1.2").await;
    sender
        .send_receipted(
            frame(Command::Send, &[("destination", "/topic/events.login")]).with_body("missed"),
            "sent",
        )
        .await;

    // Another subscription id, same client-id and name: the same subscription.
    let (mut c, _) = Client::connect_with(&server, &connect).await;
    c.subscribe("/topic/events.>", "2", &sub).await;
    let m = c
        .message("the message kept for the ActiveMQ durable subscription")
        .await;
    assert_eq!(&m.body[..], b"missed");
    assert_eq!(header(&m, "subscription"), "2");
}

#[tokio::test]
async fn queue_arguments_in_headers_shape_the_queue() {
    let server = start().await;
    let mut c = Client::connect(&server, "1.2").await;
    let shape = [("x-max-length", "2"), ("x-overflow", "drop-head")];
    for body in ["1", "2", "3"] {
        let mut f = frame(Command::Send, &[("destination", "/queue/bounded")]).with_body(body);
        for (k, v) in shape {
            f = f.with_header(k, v);
        }
        c.send_receipted(f, body).await;
    }
    c.subscribe("/queue/bounded", "s", &shape).await;
    let a = c.message("the second message").await;
    let b = c.message("the third message").await;
    assert_eq!(
        (&a.body[..], &b.body[..]),
        (&b"2"[..], &b"3"[..]),
        "the head was dropped"
    );

    c.send(frame(
        Command::Subscribe,
        &[
            ("destination", "/queue/bounded"),
            ("id", "t"),
            ("x-max-length", "5"),
        ],
    ))
    .await;
    let e = c.error("ERROR for redeclaring with other arguments").await;
    assert_eq!(header(&e, "message"), "precondition_failed");
}

#[tokio::test]
async fn the_host_header_picks_an_existing_vhost() {
    let mut config = ferrymq::config::Config::ephemeral();
    config.data_dir = common::fresh_dir();
    config.vhosts = vec!["/".into(), "tenant".into()];
    let server = ferrymq::server::Server::start(&config)
        .await
        .expect("broker starts");
    let (mut c, _) =
        Client::connect_with(&server, &[("accept-version", "1.2"), ("host", "tenant")]).await;
    c.subscribe("/queue/here", "s", &[]).await;
    assert!(
        server
            .broker
            .vhost("tenant")
            .unwrap()
            .queue("here")
            .is_some()
    );
    assert!(server.broker.vhost("/").unwrap().queue("here").is_none());
    // ActiveMQ clients send the broker's host name: the default vhost.
    let (mut c, _) =
        Client::connect_with(&server, &[("accept-version", "1.2"), ("host", "localhost")]).await;
    c.subscribe("/queue/there", "s", &[]).await;
    assert!(server.broker.vhost("/").unwrap().queue("there").is_some());
}
