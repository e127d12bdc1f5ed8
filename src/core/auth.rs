//! Users, who may log in from where, and what each may do in each vhost.
//! Protocol adapters call `authenticate` with whatever their handshake
//! carried, `check_access` when a vhost is opened, and `allows` (or a
//! cached `Permission`) before declaring, binding, publishing and consuming.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use super::change::{BROKER_WIDE, Change, ChangeLog};
use super::names::VHostName;

/// A broker user.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Password, compared as given.
    pub password: String,
    /// Tags such as `administrator`.
    pub tags: Vec<String>,
    /// May log in only over loopback (RabbitMQ's `loopback_users`).
    pub loopback_only: bool,
    /// Vhosts the user may open; empty means all.
    pub vhosts: Vec<String>,
}

/// Why a login failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// Unknown user or wrong password.
    #[error("ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN")]
    BadCredentials,
    /// The user may only connect from loopback.
    #[error("ACCESS_REFUSED - user '{0}' can only connect via localhost")]
    NotFromHere(String),
    /// The user may not open this vhost.
    #[error("access to vhost '{vhost}' refused for user '{user}'")]
    VHostRefused {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
    },
}

/// What a permission grants: RabbitMQ's three kinds of access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Declare and delete queues and exchanges.
    Configure,
    /// Publish to an exchange; bind to a queue or exchange.
    Write,
    /// Consume from or purge a queue; bind from an exchange.
    Read,
}

impl Access {
    /// The word RabbitMQ uses in refusals.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Configure => "configure",
            Access::Write => "write",
            Access::Read => "read",
        }
    }
}

/// One user's permissions in one vhost: a regular expression per kind of
/// access, matched against resource names as RabbitMQ does (unanchored;
/// an empty pattern matches nothing; the default exchange is named
/// `amq.default`).
#[derive(Clone, Debug)]
pub struct Permission {
    /// Pattern for configure access.
    pub configure: String,
    /// Pattern for write access.
    pub write: String,
    /// Pattern for read access.
    pub read: String,
    compiled: [Option<regex::Regex>; 3],
}

/// A permission's three patterns, as recorded in the journal.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PermissionSpec {
    /// Pattern for configure access.
    pub configure: String,
    /// Pattern for write access.
    pub write: String,
    /// Pattern for read access.
    pub read: String,
}

impl PermissionSpec {
    fn of(p: &Permission) -> Self {
        Self {
            configure: p.configure.clone(),
            write: p.write.clone(),
            read: p.read.clone(),
        }
    }
}

impl PartialEq for Permission {
    fn eq(&self, other: &Self) -> bool {
        (&self.configure, &self.write, &self.read) == (&other.configure, &other.write, &other.read)
    }
}

impl Permission {
    /// Compiles the three patterns.
    pub fn new(configure: &str, write: &str, read: &str) -> Result<Self, String> {
        let compile = |p: &str| -> Result<Option<regex::Regex>, String> {
            if p.is_empty() {
                return Ok(None);
            }
            regex::Regex::new(p)
                .map(Some)
                .map_err(|e| format!("invalid pattern '{p}': {e}"))
        };
        Ok(Self {
            compiled: [compile(configure)?, compile(write)?, compile(read)?],
            configure: configure.into(),
            write: write.into(),
            read: read.into(),
        })
    }

    /// Everything: `.*` for all three.
    pub fn full() -> Self {
        Self::new(".*", ".*", ".*").expect("'.*' is a valid pattern")
    }

    /// Whether this grants `access` to the resource `name`.
    pub fn allows(&self, access: Access, name: &str) -> bool {
        let name = if name.is_empty() { "amq.default" } else { name };
        self.compiled[access as usize]
            .as_ref()
            .is_some_and(|re| re.is_match(name))
    }
}

/// A connection's remembered answers to "may this user publish to that
/// exchange?", asked once per message: a hit costs no lock and no regex.
/// Forgotten whenever the user table changes, and bounded, since a client
/// may publish to any number of names.
#[derive(Debug, Default)]
pub struct WriteCache {
    generation: u64,
    answers: HashMap<String, bool>,
}

impl WriteCache {
    /// At most this many names are remembered before starting afresh.
    const CAPACITY: usize = 1024;

    /// Whether `user` may write to `exchange` in `vhost`.
    pub fn allows(&mut self, users: &Users, user: &str, vhost: &str, exchange: &str) -> bool {
        let generation = users.generation();
        if self.generation != generation || self.answers.len() >= Self::CAPACITY {
            self.generation = generation;
            self.answers.clear();
        }
        if let Some(allowed) = self.answers.get(exchange) {
            return *allowed;
        }
        let allowed = users.allows(user, vhost, Access::Write, exchange);
        self.answers.insert(exchange.to_owned(), allowed);
        allowed
    }
}

/// Whether `user` may do `access` to the resource `kind` `name` in
/// `vhost`; publish checks (write on an exchange) go through the
/// connection's `cache`. The refusal reads as RabbitMQ words it, after its
/// `ACCESS_REFUSED - ` prefix, so each protocol wraps it in its own error.
pub fn check_permission(
    users: &Users,
    cache: &mut WriteCache,
    user: &str,
    vhost: &str,
    access: Access,
    kind: &str,
    name: &str,
) -> Result<(), String> {
    let allowed = if access == Access::Write && kind == "exchange" {
        cache.allows(users, user, vhost, name)
    } else {
        users.allows(user, vhost, access, name)
    };
    if allowed {
        return Ok(());
    }
    Err(refusal(user, vhost, access, kind, name))
}

/// Why `user` may not do `access` to `kind` `name`, in RabbitMQ's words
/// (after its `ACCESS_REFUSED - ` prefix).
pub fn refusal(user: &str, vhost: &str, access: Access, kind: &str, name: &str) -> String {
    let shown = if name.is_empty() { "amq.default" } else { name };
    format!(
        "{} access to {kind} '{shown}' in vhost '{vhost}' refused for user '{user}'",
        access.as_str()
    )
}

#[derive(Debug, Default)]
struct Table {
    users: HashMap<String, User>,
    /// (user, vhost) -> permission.
    permissions: HashMap<(String, String), Arc<Permission>>,
}

/// The user table and permissions. Mutable at runtime (management API);
/// the lock is held only to copy out or replace an entry, never across
/// `.await`.
#[derive(Debug, Default)]
pub struct Users {
    table: RwLock<Table>,
    generation: AtomicU64,
    /// Where runtime changes are recorded; unset while the configured
    /// users are loaded and the journal's are restored, which are not
    /// changes.
    journal: OnceLock<Arc<dyn ChangeLog>>,
}

impl Users {
    /// A table holding these users, with no permissions yet
    /// (`grant_configured` gives them what their `vhosts` say).
    pub fn new(users: impl IntoIterator<Item = User>) -> Self {
        Self {
            table: RwLock::new(Table {
                users: users.into_iter().map(|u| (u.name.clone(), u)).collect(),
                permissions: HashMap::new(),
            }),
            generation: AtomicU64::new(0),
            journal: OnceLock::new(),
        }
    }

    /// Records every later change in `journal`.
    pub fn record_to(&self, journal: Arc<dyn ChangeLog>) {
        let _ = self.journal.set(journal);
    }

    /// Called with the table's write lock held, so the journal's order is
    /// the table's.
    fn record(&self, vhost: &str, change: Change) {
        if let Some(j) = self.journal.get() {
            j.record(&VHostName::from(vhost), change);
        }
    }

    /// Applies users and permissions read back from the journal over the
    /// configured ones: `None` is a user deleted or a permission cleared
    /// at runtime.
    pub fn restore(
        &self,
        users: &std::collections::BTreeMap<String, Option<User>>,
        permissions: &[(String, String, Option<PermissionSpec>)],
    ) {
        let mut t = self.write();
        for (name, user) in users {
            match user {
                Some(u) => {
                    t.users.insert(name.clone(), u.clone());
                }
                None => {
                    t.users.remove(name);
                    t.permissions.retain(|(u, _), _| u != name);
                }
            }
        }
        for (user, vhost, spec) in permissions {
            let key = (user.clone(), vhost.clone());
            match spec
                .as_ref()
                .map(|s| Permission::new(&s.configure, &s.write, &s.read))
            {
                Some(Ok(p)) => {
                    t.permissions.insert(key, Arc::new(p));
                }
                Some(Err(e)) => {
                    tracing::warn!(%user, %vhost, error = %e, "journalled permission not restored")
                }
                None => {
                    t.permissions.remove(&key);
                }
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.generation.fetch_add(1, Ordering::Release);
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Grants each configured user full permissions on the vhosts its
    /// `vhosts` list names, or on all of `vhosts` when the list is empty.
    pub fn grant_configured(&self, vhosts: &[&str]) {
        let mut t = self.write();
        let grants: Vec<(String, String)> = t
            .users
            .values()
            .flat_map(|u| {
                vhosts
                    .iter()
                    .filter(|v| u.vhosts.is_empty() || u.vhosts.iter().any(|w| w == *v))
                    .map(|v| (u.name.clone(), (*v).to_owned()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let full = Arc::new(Permission::full());
        for key in grants {
            t.permissions.entry(key).or_insert_with(|| full.clone());
        }
    }

    /// Changes whenever a user or permission changes, so callers can cache
    /// permission checks and notice when to drop the cache.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Checks a user name and password from a peer address.
    pub fn authenticate(
        &self,
        name: &str,
        password: &str,
        peer: IpAddr,
    ) -> Result<User, AuthError> {
        let user = self
            .read()
            .users
            .get(name)
            .filter(|u| u.password == password)
            .cloned()
            .ok_or(AuthError::BadCredentials)?;
        if user.loopback_only && !is_loopback(peer) {
            return Err(AuthError::NotFromHere(name.into()));
        }
        Ok(user)
    }

    /// Checks the user holds a permission in the vhost, as RabbitMQ
    /// requires to open it.
    pub fn check_access(&self, user: &str, vhost: &str) -> Result<(), AuthError> {
        match self.permission(user, vhost) {
            Some(_) => Ok(()),
            None => Err(AuthError::VHostRefused {
                user: user.into(),
                vhost: vhost.into(),
            }),
        }
    }

    /// Whether `user` may do `access` to the resource `name` in `vhost`.
    pub fn allows(&self, user: &str, vhost: &str, access: Access, name: &str) -> bool {
        self.permission(user, vhost)
            .is_some_and(|p| p.allows(access, name))
    }

    /// One user.
    pub fn get(&self, name: &str) -> Option<User> {
        self.read().users.get(name).cloned()
    }

    /// Every user, by name.
    pub fn list(&self) -> Vec<User> {
        let mut all: Vec<User> = self.read().users.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Adds or replaces a user; its permissions are kept.
    pub fn put(&self, user: User) {
        let mut t = self.write();
        self.record(BROKER_WIDE, Change::UserPut(user.clone()));
        t.users.insert(user.name.clone(), user);
    }

    /// Removes a user and its permissions; false if there was none.
    pub fn delete(&self, name: &str) -> bool {
        let mut t = self.write();
        t.permissions.retain(|(u, _), _| u != name);
        let found = t.users.remove(name).is_some();
        if found {
            self.record(BROKER_WIDE, Change::UserDeleted(name.to_owned()));
        }
        found
    }

    /// A user's permission in a vhost.
    pub fn permission(&self, user: &str, vhost: &str) -> Option<Arc<Permission>> {
        self.read()
            .permissions
            .get(&(user.to_owned(), vhost.to_owned()))
            .cloned()
    }

    /// Every permission as (user, vhost, permission), sorted.
    pub fn permissions(&self) -> Vec<(String, String, Arc<Permission>)> {
        let mut all: Vec<_> = self
            .read()
            .permissions
            .iter()
            .map(|((u, v), p)| (u.clone(), v.clone(), p.clone()))
            .collect();
        all.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        all
    }

    /// Sets a user's permission in a vhost; false if the user is unknown.
    pub fn set_permission(&self, user: &str, vhost: &str, permission: Permission) -> bool {
        let mut t = self.write();
        if !t.users.contains_key(user) {
            return false;
        }
        self.record(
            vhost,
            Change::PermissionSet {
                user: user.to_owned(),
                permission: PermissionSpec::of(&permission),
            },
        );
        t.permissions
            .insert((user.into(), vhost.into()), Arc::new(permission));
        true
    }

    /// Removes a user's permission in a vhost; false if there was none.
    pub fn clear_permission(&self, user: &str, vhost: &str) -> bool {
        let mut t = self.write();
        let found = t
            .permissions
            .remove(&(user.to_owned(), vhost.to_owned()))
            .is_some();
        if found {
            self.record(
                vhost,
                Change::PermissionCleared {
                    user: user.to_owned(),
                },
            );
        }
        found
    }

    /// Removes every permission in a vhost (the vhost is gone; its
    /// deletion record implies this, so nothing is recorded).
    pub fn clear_vhost(&self, vhost: &str) {
        self.write().permissions.retain(|(_, v), _| v != vhost);
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest() -> Users {
        Users::new([User {
            name: "guest".into(),
            password: "guest".into(),
            tags: vec!["administrator".into()],
            loopback_only: true,
            vhosts: vec![],
        }])
    }

    #[test]
    fn guest_logs_in_from_loopback_only() {
        let users = guest();
        assert!(
            users
                .authenticate("guest", "guest", "127.0.0.1".parse().unwrap())
                .is_ok()
        );
        assert!(
            users
                .authenticate("guest", "guest", "::1".parse().unwrap())
                .is_ok()
        );
        assert_eq!(
            users.authenticate("guest", "guest", "10.0.0.2".parse().unwrap()),
            Err(AuthError::NotFromHere("guest".into()))
        );
        assert_eq!(
            users.authenticate("guest", "nope", "127.0.0.1".parse().unwrap()),
            Err(AuthError::BadCredentials)
        );
    }

    #[test]
    fn permissions_follow_rabbitmq_pattern_semantics() {
        let p = Permission::new("^app\\.", "", ".*").expect("valid patterns");
        assert!(p.allows(Access::Configure, "app.q"));
        assert!(!p.allows(Access::Configure, "other"));
        assert!(
            !p.allows(Access::Write, "app.q"),
            "empty pattern grants nothing"
        );
        assert!(
            p.allows(Access::Read, ""),
            "the default exchange has a name"
        );
        // unanchored, as in RabbitMQ
        let q = Permission::new("q", "q", "q").expect("valid patterns");
        assert!(q.allows(Access::Read, "xqx"));
        assert!(Permission::new("(", "", "").is_err());
    }

    #[test]
    fn configured_users_get_their_vhosts_and_changes_bump_the_generation() {
        let users = guest();
        users.put(User {
            name: "app".into(),
            password: "p".into(),
            tags: vec![],
            loopback_only: false,
            vhosts: vec!["a".into()],
        });
        users.grant_configured(&["/", "a"]);
        assert!(users.check_access("guest", "/").is_ok());
        assert!(users.check_access("guest", "a").is_ok());
        assert!(users.check_access("app", "a").is_ok());
        assert!(users.check_access("app", "/").is_err());
        let g = users.generation();
        assert!(users.set_permission("app", "/", Permission::new("", "", "^q$").expect("valid")));
        assert!(users.generation() > g);
        assert!(users.allows("app", "/", Access::Read, "q"));
        assert!(!users.allows("app", "/", Access::Write, "q"));
        assert!(!users.set_permission("nobody", "/", Permission::full()));
        assert!(users.delete("app"));
        assert!(users.permission("app", "/").is_none());
    }
}
