//! Who is connected: one entry per open client connection, whatever its
//! protocol. Adapters register once the client has logged in and keep the
//! returned `Registration` for the connection's life; dropping it removes
//! the entry. Operators list entries and close one by sending its
//! connection `Event::CloseConnection`, so closing is the adapter's own
//! polite close, in its own protocol.
//!
//! The table is read by listings and scrapes and written on connect,
//! disconnect and on rare per-connection changes (a new lane, a consumer);
//! never per message.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use super::delivery::{Event, EventSink};
use super::names::{ConnectionId, VHostName};
use super::stats::Count;

/// The wire protocol a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// AMQP 0-9-1.
    Amqp = 0,
    /// MQTT 3.1, 3.1.1 and 5.0.
    Mqtt = 1,
    /// STOMP 1.0 to 1.2.
    Stomp = 2,
}

impl Protocol {
    /// Every protocol, in label order.
    pub const ALL: [Protocol; 3] = [Protocol::Amqp, Protocol::Mqtt, Protocol::Stomp];

    /// The lower-case name used in labels and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Amqp => "amqp",
            Protocol::Mqtt => "mqtt",
            Protocol::Stomp => "stomp",
        }
    }
}

/// What a connection is, fixed once it has logged in.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// The broker's id for it.
    pub id: ConnectionId,
    /// Its protocol.
    pub protocol: Protocol,
    /// The client's address.
    pub peer: SocketAddr,
    /// The user it logged in as.
    pub user: String,
    /// The vhost it uses.
    pub vhost: VHostName,
    /// A name the client gave itself, if any (AMQP `connection_name`,
    /// MQTT client id, STOMP `client-id`). Shared: MQTT's session keeps
    /// the same client id, and an idle connection need not copy it.
    pub client_name: Option<Arc<str>>,
    /// The client library, if it said (AMQP `product`). A `Box<str>`:
    /// 8 bytes fewer in every entry, and only AMQP clients say.
    pub client_product: Option<Box<str>>,
    /// When it connected, milliseconds since the Unix epoch.
    pub connected_at_ms: u64,
}

/// One independent lane multiplexed over a connection, as the adapter
/// counts them (a protocol without multiplexing has one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LaneInfo {
    /// Its number within the connection.
    pub number: u32,
    /// Consumers attached through it.
    pub consumers: u32,
    /// Per-consumer prefetch; 0 is unlimited.
    pub prefetch: u32,
    /// Publisher confirms are on.
    pub confirm: bool,
    /// Publishes and settlements are transactional.
    pub transactional: bool,
}

#[derive(Debug)]
struct Entry {
    info: ConnectionInfo,
    sink: EventSink,
    lanes: Mutex<Lanes>,
    received: Count,
    sent: Count,
}

/// A connection's lanes, by number. Most connections have one, kept in
/// place: a Vec of one is an allocation per connection, and a BTreeMap
/// a 232-byte node.
#[derive(Debug)]
enum Lanes {
    One(LaneInfo),
    Many(Vec<LaneInfo>),
}

impl Lanes {
    fn as_slice(&self) -> &[LaneInfo] {
        match self {
            Lanes::One(lane) => std::slice::from_ref(lane),
            Lanes::Many(lanes) => lanes,
        }
    }

    fn set(&mut self, lane: LaneInfo) {
        match self {
            Lanes::One(one) if one.number == lane.number => *one = lane,
            Lanes::One(one) => {
                let mut lanes = vec![one.clone(), lane];
                lanes.sort_by_key(|l| l.number);
                *self = Lanes::Many(lanes);
            }
            Lanes::Many(lanes) if lanes.is_empty() => *self = Lanes::One(lane),
            Lanes::Many(lanes) => match lanes.binary_search_by_key(&lane.number, |l| l.number) {
                Ok(i) => lanes[i] = lane,
                Err(i) => lanes.insert(i, lane),
            },
        }
    }

    fn remove(&mut self, number: u32) {
        match self {
            Lanes::One(one) if one.number == number => *self = Lanes::Many(Vec::new()),
            Lanes::One(_) => {}
            Lanes::Many(lanes) => {
                if let Ok(i) = lanes.binary_search_by_key(&number, |l| l.number) {
                    lanes.remove(i);
                }
            }
        }
    }
}

/// A copy of one entry, for listings.
#[derive(Clone, Debug)]
pub struct ConnectionSnapshot {
    /// What it is.
    pub info: ConnectionInfo,
    /// Its lanes, by number.
    pub lanes: Vec<LaneInfo>,
    /// Bytes read from the client.
    pub received_bytes: u64,
    /// Bytes written to the client.
    pub sent_bytes: u64,
}

type Table = RwLock<HashMap<ConnectionId, Arc<Entry>>>;

/// The registry of open connections.
#[derive(Debug, Default)]
pub struct Connections {
    table: Arc<Table>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Connections {
    /// Adds a connection; it stays listed until the registration drops.
    /// `sink` is the connection's event channel, used to close it.
    pub fn register(&self, info: ConnectionInfo, sink: EventSink) -> Registration {
        let entry = Arc::new(Entry {
            info,
            sink,
            lanes: Mutex::new(Lanes::Many(Vec::new())),
            received: Count::default(),
            sent: Count::default(),
        });
        self.table
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry.info.id, entry.clone());
        Registration {
            table: self.table.clone(),
            entry,
        }
    }

    /// As `register`, for protocols with one lane per connection (MQTT,
    /// STOMP): the lane is listed at once, with no consumers yet.
    pub fn register_single_lane(&self, info: ConnectionInfo, sink: EventSink) -> Registration {
        let registration = self.register(info, sink);
        registration.set_lane(LaneInfo {
            number: 1,
            ..LaneInfo::default()
        });
        registration
    }

    fn entries(&self) -> Vec<Arc<Entry>> {
        self.table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Every open connection, oldest first.
    pub fn list(&self) -> Vec<ConnectionSnapshot> {
        let mut all: Vec<ConnectionSnapshot> = self
            .entries()
            .iter()
            .map(|e| ConnectionSnapshot {
                info: e.info.clone(),
                lanes: e
                    .lanes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_slice()
                    .to_vec(),
                received_bytes: e.received.get(),
                sent_bytes: e.sent.get(),
            })
            .collect();
        all.sort_by_key(|c| (c.info.connected_at_ms, c.info.id));
        all
    }

    /// How many connections each protocol has open.
    pub fn count(&self, protocol: Protocol) -> usize {
        self.entries()
            .iter()
            .filter(|e| e.info.protocol == protocol)
            .count()
    }

    /// Asks a connection to close with `reason`; false if it is not open.
    pub fn close(&self, id: ConnectionId, reason: &str) -> bool {
        let entry = self
            .table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        match entry {
            Some(e) => e.sink.send(Event::CloseConnection(reason.into())).is_ok(),
            None => false,
        }
    }

    /// Closes every connection matching `which`; returns how many.
    pub fn close_where(&self, which: impl Fn(&ConnectionInfo) -> bool, reason: &str) -> usize {
        self.entries()
            .iter()
            .filter(|e| which(&e.info))
            .filter(|e| e.sink.send(Event::CloseConnection(reason.into())).is_ok())
            .count()
    }
}

/// A connection's place in the registry; dropping it unlists the connection.
#[derive(Debug)]
pub struct Registration {
    table: Arc<Table>,
    entry: Arc<Entry>,
}

impl Registration {
    /// The connection's id.
    pub fn id(&self) -> ConnectionId {
        self.entry.info.id
    }

    /// What the connection is.
    pub fn info(&self) -> &ConnectionInfo {
        &self.entry.info
    }

    /// Records a lane's current state (opened or changed).
    pub fn set_lane(&self, lane: LaneInfo) {
        let mut lanes = self.entry.lanes.lock().unwrap_or_else(|p| p.into_inner());
        lanes.set(lane);
    }

    /// Forgets a closed lane.
    pub fn remove_lane(&self, number: u32) {
        let mut lanes = self.entry.lanes.lock().unwrap_or_else(|p| p.into_inner());
        lanes.remove(number);
    }

    /// Counts bytes read from the client.
    pub fn received(&self, n: usize) {
        self.entry.received.add(n as u64);
    }

    /// Counts bytes written to the client.
    pub fn sent(&self, n: usize) {
        self.entry.sent.add(n as u64);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.table
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.entry.info.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u64) -> ConnectionInfo {
        ConnectionInfo {
            id: ConnectionId(id),
            protocol: Protocol::Amqp,
            peer: "127.0.0.1:5555".parse().expect("address"),
            user: "guest".into(),
            vhost: "/".into(),
            client_name: None,
            client_product: None,
            connected_at_ms: id,
        }
    }

    #[test]
    fn registration_lists_until_dropped_and_close_reaches_the_connection() {
        let registry = Connections::default();
        let (tx, mut rx) = crate::core::event_channel::channel();
        let reg = registry.register(info(1), tx);
        reg.set_lane(LaneInfo {
            number: 1,
            consumers: 2,
            ..Default::default()
        });
        reg.set_lane(LaneInfo {
            number: 3,
            ..Default::default()
        });
        reg.set_lane(LaneInfo {
            number: 2,
            ..Default::default()
        });
        reg.remove_lane(3);
        reg.remove_lane(7);
        let listed = registry.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].lanes[0].consumers, 2);
        let numbers: Vec<u32> = listed[0].lanes.iter().map(|l| l.number).collect();
        assert_eq!(numbers, [1, 2]);
        assert_eq!(registry.count(Protocol::Amqp), 1);
        assert!(registry.close(ConnectionId(1), "bye"));
        assert!(matches!(rx.try_recv(), Ok(Event::CloseConnection(r)) if r == "bye"));
        drop(reg);
        assert!(registry.list().is_empty());
        let (tx, _rx) = crate::core::event_channel::channel();
        let one = registry.register_single_lane(info(2), tx);
        one.set_lane(LaneInfo {
            number: 1,
            consumers: 1,
            ..Default::default()
        });
        assert_eq!(registry.list()[0].lanes.len(), 1);
        assert_eq!(registry.list()[0].lanes[0].consumers, 1);
        one.remove_lane(1);
        assert!(registry.list()[0].lanes.is_empty());
        one.set_lane(LaneInfo::default());
        one.set_lane(LaneInfo {
            number: 2,
            ..Default::default()
        });
        one.remove_lane(0);
        let numbers: Vec<u32> = registry.list()[0].lanes.iter().map(|l| l.number).collect();
        assert_eq!(numbers, [2]);
        assert!(!registry.close(ConnectionId(1), "bye"));
    }
}
