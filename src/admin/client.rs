//! A small HTTP/1.1 client for the management API, used by `ferrymq ctl`
//! and the admin tests. It is hyper's own connection-level client: hyper
//! already serves the API through axum, so the client adds no second HTTP
//! implementation to the build. One connection per request keeps it
//! simple; the CLI makes a handful of calls.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::Value as Json;
use tokio::net::TcpStream;

/// Why a request failed before any response arrived.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `http://host:port`.
    #[error("bad URL '{0}': expected http://host:port")]
    BadUrl(String),
    /// Connecting or talking failed.
    #[error("cannot reach {addr}: {source}")]
    Io {
        /// Where.
        addr: String,
        /// What happened.
        source: std::io::Error,
    },
    /// HTTP went wrong.
    #[error("HTTP error: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built.
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
}

/// A response: its status and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Response headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

impl Response {
    /// The body as JSON (`Null` when empty or not JSON).
    pub fn json(&self) -> Json {
        serde_json::from_slice(&self.body).unwrap_or(Json::Null)
    }
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Talks to one broker's http listener.
#[derive(Debug, Clone)]
pub struct Client {
    addr: String,
    authorization: Option<String>,
}

/// Percent-encodes one path segment (RabbitMQ's vhost `/` is `%2F`).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    /// A client for `http://host:port` (or bare `host:port`).
    pub fn new(url: &str) -> Result<Self, ClientError> {
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let addr = rest.trim_end_matches('/');
        if addr.is_empty() || addr.contains('/') || !addr.contains(':') {
            return Err(ClientError::BadUrl(url.into()));
        }
        Ok(Self {
            addr: addr.into(),
            authorization: None,
        })
    }

    /// Sends these credentials with every request.
    pub fn with_credentials(mut self, user: &str, password: &str) -> Self {
        let token = BASE64.encode(format!("{user}:{password}"));
        self.authorization = Some(format!("Basic {token}"));
        self
    }

    /// Sends one request; `body`, when given, is sent as JSON.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Json>,
    ) -> Result<Response, ClientError> {
        let stream = TcpStream::connect(&self.addr)
            .await
            .map_err(|source| ClientError::Io {
                addr: self.addr.clone(),
                source,
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.addr);
        if let Some(auth) = &self.authorization {
            req = req.header(hyper::header::AUTHORIZATION, auth);
        }
        let payload = match body {
            Some(j) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(j.to_string())
            }
            None => Bytes::new(),
        };
        let response = sender.send_request(req.body(Full::new(payload))?).await?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let body = response.into_body().collect().await?.to_bytes();
        driver.abort();
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// GET.
    pub async fn get(&self, path: &str) -> Result<Response, ClientError> {
        self.request(Method::GET, path, None).await
    }
    /// PUT with a JSON body.
    pub async fn put(&self, path: &str, body: &Json) -> Result<Response, ClientError> {
        self.request(Method::PUT, path, Some(body)).await
    }
    /// POST with a JSON body.
    pub async fn post(&self, path: &str, body: &Json) -> Result<Response, ClientError> {
        self.request(Method::POST, path, Some(body)).await
    }
    /// DELETE.
    pub async fn delete(&self, path: &str) -> Result<Response, ClientError> {
        self.request(Method::DELETE, path, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded_and_urls_checked() {
        assert_eq!(segment("/"), "%2F");
        assert_eq!(segment("a b.c"), "a%20b.c");
        assert!(Client::new("http://127.0.0.1:15672").is_ok());
        assert!(Client::new("127.0.0.1:15672").is_ok());
        assert!(Client::new("https://x/y").is_err());
    }
}
