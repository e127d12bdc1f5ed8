//! HTTP Basic authentication against the broker's users, with RabbitMQ's
//! tags deciding what a user may do over HTTP: `management`,
//! `policymaker` or `monitoring` may read, `administrator` may do
//! everything. No credentials or wrong ones get 401 with a challenge; a
//! user whose tags do not allow the request gets 403.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::http::{AdminState, ApiError};
use crate::core::User;

/// Tags that may use the management API at all.
const READ_TAGS: [&str; 4] = ["management", "policymaker", "monitoring", "administrator"];

/// The authenticated user of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub user: User,
}

impl Caller {
    fn has(&self, tag: &str) -> bool {
        self.user.tags.iter().any(|t| t == tag)
    }

    /// Refuses with 403 unless the user is an administrator.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.has("administrator") {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not_authorised",
                "Not administrator user",
            ))
        }
    }
}

/// Decodes an `Authorization: Basic ...` header value.
pub fn parse_basic(value: &str) -> Option<(String, String)> {
    let encoded = value.strip_prefix("Basic ")?.trim();
    let decoded = BASE64.decode(encoded).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

impl FromRequestParts<AdminState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AdminState,
    ) -> Result<Self, Self::Rejection> {
        let unauthorised =
            || ApiError::new(StatusCode::UNAUTHORIZED, "not_authorized", "Login failed");
        let (name, password) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_basic)
            .ok_or_else(unauthorised)?;
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
        let user = state
            .broker
            .users
            .authenticate(&name, &password, peer)
            .map_err(|_| unauthorised())?;
        let caller = Caller { user };
        if !READ_TAGS.iter().any(|t| caller.has(t)) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not_authorised",
                "Not management user",
            ));
        }
        Ok(caller)
    }
}
