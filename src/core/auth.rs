//! Users and who may log in from where. Protocol adapters call
//! `authenticate` with whatever their handshake carried.

use std::collections::HashMap;
use std::net::IpAddr;

/// A broker user.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// The user table.
#[derive(Debug, Default)]
pub struct Users {
    users: HashMap<String, User>,
}

impl Users {
    /// A table holding these users.
    pub fn new(users: impl IntoIterator<Item = User>) -> Self {
        Self {
            users: users.into_iter().map(|u| (u.name.clone(), u)).collect(),
        }
    }

    /// Checks a user name and password from a peer address.
    pub fn authenticate(
        &self,
        name: &str,
        password: &str,
        peer: IpAddr,
    ) -> Result<User, AuthError> {
        let user = self
            .users
            .get(name)
            .filter(|u| u.password == password)
            .ok_or(AuthError::BadCredentials)?;
        if user.loopback_only && !is_loopback(peer) {
            return Err(AuthError::NotFromHere(name.into()));
        }
        Ok(user.clone())
    }

    /// Checks the user may open a vhost.
    pub fn check_vhost(user: &User, vhost: &str) -> Result<(), AuthError> {
        if user.vhosts.is_empty() || user.vhosts.iter().any(|v| v == vhost) {
            Ok(())
        } else {
            Err(AuthError::VHostRefused {
                user: user.name.clone(),
                vhost: vhost.into(),
            })
        }
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
}
