//! `ferrymq ctl`: the management API from a shell. Every subcommand is one
//! or two API calls; what they print is returned as text for main.rs to
//! write.

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::{Value as Json, json};

use super::client::{Client, Response, segment};

/// Where the API is and who is asking.
#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// The broker's http listener.
    #[arg(long, env = "FERRYMQ_URL", default_value = "http://127.0.0.1:15672")]
    pub url: String,
    /// User name (an administrator for changes).
    #[arg(long, env = "FERRYMQ_USER", default_value = "guest")]
    pub user: String,
    /// Password.
    #[arg(long, env = "FERRYMQ_PASSWORD", default_value = "guest")]
    pub password: String,
    /// The vhost queues, exchanges and permissions belong to.
    #[arg(long, global = true, default_value = "/")]
    pub vhost: String,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// Objects `list` can show.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Listable {
    /// Queues with their depths.
    Queues,
    /// Exchanges.
    Exchanges,
    /// Client connections.
    Connections,
    /// Bindings.
    Bindings,
    /// Consumers.
    Consumers,
    /// Vhosts.
    Vhosts,
    /// Users.
    Users,
    /// Permissions.
    Permissions,
}

/// `ferrymq ctl` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum CtlCommand {
    /// List queues, exchanges, connections, bindings, consumers, vhosts,
    /// users or permissions.
    List {
        /// What to list.
        what: Listable,
    },
    /// Drop a queue's ready messages.
    Purge {
        /// The queue.
        queue: String,
    },
    /// Delete a queue.
    DeleteQueue {
        /// The queue.
        queue: String,
    },
    /// Delete an exchange.
    DeleteExchange {
        /// The exchange.
        exchange: String,
    },
    /// Close a client connection (its name or id from `list connections`).
    CloseConnection {
        /// The connection.
        name: String,
    },
    /// Move ready messages from one queue to another (redrive a
    /// dead-letter queue).
    Move {
        /// Where messages are now.
        source: String,
        /// Where they go.
        destination: String,
        /// At most this many (default: every message ready now).
        #[arg(long)]
        count: Option<usize>,
    },
    /// Add a user, or change its password and tags.
    AddUser {
        /// Login name.
        name: String,
        /// Password.
        password: String,
        /// Comma-separated tags, such as `administrator` or `management`.
        #[arg(long, default_value = "")]
        tags: String,
    },
    /// Delete a user (its connections are closed).
    DeleteUser {
        /// Login name.
        name: String,
    },
    /// Set a user's configure, write and read patterns in `--vhost`.
    SetPermissions {
        /// Login name.
        user: String,
        /// Regex of resources the user may declare and delete.
        configure: String,
        /// Regex of resources the user may publish to or bind to.
        write: String,
        /// Regex of resources the user may consume from or bind from.
        read: String,
    },
    /// Write the broker's definitions as JSON (to stdout without a file).
    Export {
        /// Output file.
        file: Option<PathBuf>,
    },
    /// Apply a definitions JSON file.
    Import {
        /// Input file.
        file: PathBuf,
    },
}

fn check(r: Response, what: &str) -> anyhow::Result<Response> {
    if (200..300).contains(&r.status) {
        return Ok(r);
    }
    let reason = r
        .json()
        .get("reason")
        .and_then(Json::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| r.text());
    bail!("{what}: HTTP {}: {reason}", r.status)
}

/// Formats rows as aligned columns under a header.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

fn cell(j: &Json, key: &str) -> String {
    match j.get(key) {
        Some(Json::String(s)) => s.clone(),
        Some(Json::Null) | None => String::new(),
        Some(Json::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

fn rows(list: &Json, keys: &[&str]) -> Vec<Vec<String>> {
    list.as_array()
        .map(|items| {
            items
                .iter()
                .map(|j| keys.iter().map(|k| cell(j, k)).collect())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs one subcommand; returns what to print.
pub async fn run(args: CtlArgs) -> anyhow::Result<String> {
    let api = Client::new(&args.url)?.with_credentials(&args.user, &args.password);
    let v = segment(&args.vhost);
    match args.command {
        CtlCommand::List { what } => {
            let (path, header, keys): (String, &[&str], &[&str]) = match what {
                Listable::Queues => (
                    format!("/api/queues/{v}"),
                    &["name", "ready", "unacked", "consumers", "durable"],
                    &[
                        "name",
                        "messages_ready",
                        "messages_unacknowledged",
                        "consumers",
                        "durable",
                    ],
                ),
                Listable::Exchanges => (
                    format!("/api/exchanges/{v}"),
                    &["name", "type", "durable", "auto_delete", "internal"],
                    &["name", "type", "durable", "auto_delete", "internal"],
                ),
                Listable::Connections => (
                    "/api/connections".into(),
                    &["name", "protocol", "user", "vhost", "channels"],
                    &["name", "protocol", "user", "vhost", "channels"],
                ),
                Listable::Bindings => (
                    format!("/api/bindings/{v}"),
                    &["source", "destination", "type", "routing_key"],
                    &["source", "destination", "destination_type", "routing_key"],
                ),
                Listable::Consumers => (
                    format!("/api/consumers/{v}"),
                    &["tag", "ack_required", "prefetch"],
                    &["consumer_tag", "ack_required", "prefetch_count"],
                ),
                Listable::Vhosts => (
                    "/api/vhosts".into(),
                    &["name", "messages"],
                    &["name", "messages"],
                ),
                Listable::Users => ("/api/users".into(), &["name", "tags"], &["name", "tags"]),
                Listable::Permissions => (
                    "/api/permissions".into(),
                    &["user", "vhost", "configure", "write", "read"],
                    &["user", "vhost", "configure", "write", "read"],
                ),
            };
            let list = check(api.get(&path).await?, "list")?.json();
            let mut r = rows(&list, keys);
            if let Listable::Consumers = what {
                // The queue is nested; show it first.
                for (row, item) in r.iter_mut().zip(list.as_array().into_iter().flatten()) {
                    row.insert(0, cell(&item["queue"], "name"));
                }
                let mut h = vec!["queue"];
                h.extend_from_slice(header);
                return Ok(table(&h, r));
            }
            Ok(table(header, r))
        }
        CtlCommand::Purge { queue } => {
            let path = format!("/api/queues/{v}/{}/contents", segment(&queue));
            check(api.delete(&path).await?, "purge")?;
            Ok(format!("purged queue '{queue}'\n"))
        }
        CtlCommand::DeleteQueue { queue } => {
            let path = format!("/api/queues/{v}/{}", segment(&queue));
            check(api.delete(&path).await?, "delete queue")?;
            Ok(format!("deleted queue '{queue}'\n"))
        }
        CtlCommand::DeleteExchange { exchange } => {
            let path = format!("/api/exchanges/{v}/{}", segment(&exchange));
            check(api.delete(&path).await?, "delete exchange")?;
            Ok(format!("deleted exchange '{exchange}'\n"))
        }
        CtlCommand::CloseConnection { name } => {
            let path = format!("/api/connections/{}", segment(&name));
            check(api.delete(&path).await?, "close connection")?;
            Ok(format!("closed connection '{name}'\n"))
        }
        CtlCommand::Move {
            source,
            destination,
            count,
        } => {
            let path = format!("/api/queues/{v}/{}/move", segment(&source));
            let mut body = json!({"destination": destination});
            if let Some(n) = count {
                body["count"] = json!(n);
            }
            let r = check(api.post(&path, &body).await?, "move")?.json();
            Ok(format!(
                "moved {} messages from '{source}' to '{destination}'\n",
                r["moved"]
            ))
        }
        CtlCommand::AddUser {
            name,
            password,
            tags,
        } => {
            let path = format!("/api/users/{}", segment(&name));
            let body = json!({"password": password, "tags": tags});
            check(api.put(&path, &body).await?, "add user")?;
            Ok(format!("user '{name}' saved\n"))
        }
        CtlCommand::DeleteUser { name } => {
            let path = format!("/api/users/{}", segment(&name));
            check(api.delete(&path).await?, "delete user")?;
            Ok(format!("deleted user '{name}'\n"))
        }
        CtlCommand::SetPermissions {
            user,
            configure,
            write,
            read,
        } => {
            let path = format!("/api/permissions/{v}/{}", segment(&user));
            let body = json!({"configure": configure, "write": write, "read": read});
            check(api.put(&path, &body).await?, "set permissions")?;
            Ok(format!(
                "permissions of '{user}' in vhost '{}' set\n",
                args.vhost
            ))
        }
        CtlCommand::Export { file } => {
            let defs = check(api.get("/api/definitions").await?, "export")?.json();
            let text = serde_json::to_string_pretty(&defs)? + "\n";
            match file {
                Some(path) => {
                    std::fs::write(&path, text)
                        .with_context(|| format!("writing {}", path.display()))?;
                    Ok(format!("definitions written to {}\n", path.display()))
                }
                None => Ok(text),
            }
        }
        CtlCommand::Import { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let defs: Json = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            check(api.post("/api/definitions", &defs).await?, "import")?;
            Ok(format!("definitions imported from {}\n", file.display()))
        }
    }
}
