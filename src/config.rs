//! ferrymq.toml: every key has a default, so no file at all is a valid
//! configuration. Command-line flags override keys (main.rs).

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::path::PathBuf;

use serde::Deserialize;

use crate::core::User;
use crate::core::change::MemoryWindow;

/// A listener address: `host:port`, or `off`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// Not listening.
    Off,
    /// Listening here.
    On(String),
}

impl Listen {
    /// Parses `host:port` or `off`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Self::Off);
        }
        match s.rsplit_once(':') {
            Some((_, port)) if port.parse::<u16>().is_ok() => Ok(Self::On(s.to_owned())),
            _ => Err(format!("'{s}' is not host:port or off")),
        }
    }

    /// The address, when on.
    pub fn addr(&self) -> Option<&str> {
        match self {
            Self::Off => None,
            Self::On(a) => Some(a),
        }
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Listen::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A user as written in the config file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Login name.
    pub name: String,
    /// Password.
    pub password: String,
    /// Tags such as `administrator`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Only from loopback addresses.
    #[serde(default)]
    pub loopback_only: bool,
    /// Vhosts the user may open; empty means all.
    #[serde(default)]
    pub vhosts: Vec<String>,
}

impl From<UserConfig> for User {
    fn from(u: UserConfig) -> Self {
        User {
            name: u.name,
            password: u.password,
            tags: u.tags,
            loopback_only: u.loopback_only,
            vhosts: u.vhosts,
        }
    }
}

fn listen(addr: &str) -> Listen {
    Listen::On(addr.into())
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where durable state lives.
    pub data_dir: PathBuf,
    /// AMQP 0-9-1 listener.
    pub amqp: Listen,
    /// MQTT listener.
    pub mqtt: Listen,
    /// STOMP listener.
    pub stomp: Listen,
    /// Management HTTP listener.
    pub http: Listen,
    /// AMQP over TLS listener (needs tls_cert and tls_key).
    pub amqps: Listen,
    /// MQTT over TLS listener.
    pub mqtts: Listen,
    /// STOMP over TLS listener.
    pub stomps: Listen,
    /// Server certificate chain, PEM.
    pub tls_cert: Option<PathBuf>,
    /// Server private key, PEM.
    pub tls_key: Option<PathBuf>,
    /// Largest message body accepted, bytes.
    pub max_message_bytes: usize,
    /// A journal segment is closed and a new one begun past this size.
    pub journal_segment_bytes: u64,
    /// Records the journal waits to gather before one fsync...
    pub group_commit_records: usize,
    /// ...for at most this many microseconds.
    pub group_commit_delay_micros: u64,
    /// Ready messages per queue that keep their bodies in memory; a
    /// journalled message behind more stays on disk until its turn.
    pub queue_memory_messages: usize,
    /// ...and the ready body bytes per queue that do.
    pub queue_memory_bytes: u64,
    /// Publishers are blocked while the data directory's file system has
    /// less free space than this.
    pub disk_free_limit_bytes: u64,
    /// Publishers are blocked while the broker's resident memory is above
    /// this; 0 means 40% of the machine's memory.
    pub memory_limit_bytes: u64,
    /// Vhosts created at start.
    pub vhosts: Vec<String>,
    /// Users; guest/guest (loopback only) when none are configured.
    pub users: Vec<UserConfig>,
    /// MQTT clients that send no user name log in as `mqtt_default_user`.
    pub mqtt_allow_anonymous: bool,
    /// The user anonymous MQTT clients log in as.
    pub mqtt_default_user: String,
    /// Its password.
    pub mqtt_default_pass: String,
    /// Receive Maximum announced to MQTT 5 clients: QoS 2 publishes a
    /// client may have awaiting PUBREL; one more ends its connection.
    pub mqtt_receive_maximum: NonZeroU16,
    /// Topic aliases an MQTT 5 client may set up toward the broker
    /// (Topic Alias Maximum); 0 allows none.
    pub mqtt_topic_alias_maximum: u16,
    /// Longest MQTT keepalive accepted, seconds: a longer one, or none, is
    /// replaced with this (announced to MQTT 5 clients as Server Keep
    /// Alive). 0: the client's own keepalive holds.
    pub mqtt_max_keep_alive: u16,
    /// Queues with their own series on /metrics, deepest first
    /// (/metrics/per-object has every queue).
    pub metrics_queue_cap: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            amqp: listen("0.0.0.0:5672"),
            mqtt: listen("0.0.0.0:1883"),
            stomp: listen("0.0.0.0:61613"),
            http: listen("0.0.0.0:15672"),
            amqps: listen("0.0.0.0:5671"),
            mqtts: listen("0.0.0.0:8883"),
            stomps: listen("0.0.0.0:61614"),
            tls_cert: None,
            tls_key: None,
            max_message_bytes: 16 * 1024 * 1024,
            journal_segment_bytes: 64 * 1024 * 1024,
            group_commit_records: 1,
            group_commit_delay_micros: 0,
            queue_memory_messages: MemoryWindow::default().messages,
            queue_memory_bytes: MemoryWindow::default().bytes,
            disk_free_limit_bytes: 50_000_000,
            memory_limit_bytes: 0,
            vhosts: vec!["/".into()],
            users: Vec::new(),
            mqtt_allow_anonymous: true,
            mqtt_default_user: "guest".into(),
            mqtt_default_pass: "guest".into(),
            mqtt_receive_maximum: NonZeroU16::new(1024).expect("not zero"),
            mqtt_topic_alias_maximum: 64,
            mqtt_max_keep_alive: 0,
            metrics_queue_cap: crate::admin::metrics::DEFAULT_QUEUE_CAP,
        }
    }
}

impl Config {
    /// Reads a TOML file.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|span| where_in(&text, span.start))
                .unwrap_or_default();
            format!("bad config {}{at}: {}", path.display(), e.message().trim())
        })
    }

    /// The users to serve: the configured ones, or guest from loopback.
    pub fn effective_users(&self) -> Vec<User> {
        if self.users.is_empty() {
            return vec![User {
                name: "guest".into(),
                password: "guest".into(),
                tags: vec!["administrator".into()],
                loopback_only: true,
                vhosts: Vec::new(),
            }];
        }
        self.users.iter().cloned().map(User::from).collect()
    }

    /// A configuration for tests: every listener on an ephemeral loopback port.
    pub fn ephemeral() -> Self {
        let any = listen("127.0.0.1:0");
        Self {
            amqp: any.clone(),
            mqtt: any.clone(),
            stomp: any.clone(),
            http: any,
            amqps: Listen::Off,
            mqtts: Listen::Off,
            stomps: Listen::Off,
            ..Self::default()
        }
    }
}

/// ` line N (text)` for an error at byte `offset`, so the one-line reason
/// names the offending key.
fn where_in(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line = text[..offset].matches('\n').count() + 1;
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let rest = &text[start..];
    let source = rest[..rest.find('\n').unwrap_or(rest.len())].trim();
    let source: String = source.chars().take(60).collect();
    format!(" line {line} ({source})")
}

/// Resolves `host:port` to socket addresses.
pub fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("no address for {addr}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_file_matches_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ferrymq.toml");
        assert_eq!(
            Config::load(&path).expect("config/ferrymq.toml parses"),
            Config::default()
        );
    }

    #[test]
    fn listen_accepts_host_port_and_off() {
        assert_eq!(Listen::parse("off"), Ok(Listen::Off));
        assert_eq!(
            Listen::parse("[::1]:5672"),
            Ok(Listen::On("[::1]:5672".into()))
        );
        assert!(Listen::parse("5672").is_err());
        assert!(Listen::parse("host:port").is_err());
    }

    #[test]
    fn a_bad_value_is_reported_on_one_line_naming_its_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "vhosts = [\"/\"]\nmax_message_bytes = -1\n").expect("write");
        let err = Config::load(&path).expect_err("-1 is not a size");
        assert!(!err.contains('\n'), "one line: {err}");
        assert!(err.contains("line 2 (max_message_bytes = -1)"), "{err}");
    }

    #[test]
    fn a_zero_mqtt_receive_maximum_is_refused() {
        // MQTT 5 forbids announcing Receive Maximum 0 (§3.2.2.3.3).
        assert!(toml::from_str::<Config>("mqtt_receive_maximum = 0").is_err());
        let c: Config = toml::from_str("mqtt_receive_maximum = 10").expect("parses");
        assert_eq!(c.mqtt_receive_maximum.get(), 10);
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("amqp_port = 1").is_err());
    }
}
