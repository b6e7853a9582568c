//! Where connections go: a parsed `ws://` endpoint with its upgrade request prepared once.
//!
//! The request line and headers are the same for every connection to one endpoint except the
//! `Sec-WebSocket-Key`, so they are built at start-up and each connection only appends its key.

use std::net::{SocketAddr, ToSocketAddrs};

/// One WebSocket endpoint.
#[derive(Debug, Clone)]
pub struct Target {
    /// Resolved server address (resolved once: a load test must not measure DNS).
    pub addr: SocketAddr,
    /// The `Host` header value (`host:port`), for other requests to the same server (SSE).
    pub host: String,
    /// Request line and headers up to (not including) the `Sec-WebSocket-Key` value.
    request_head: String,
}

impl Target {
    /// Parses `ws://host[:port]/path[?query]`, appends `apikey=<token>` and `vsn=2.0.0` to the
    /// query (unless already present) and resolves the host.
    pub fn parse(url: &str, token: &str) -> Result<Self, String> {
        let parts = split_url(url)?;
        let addr = (parts.host.as_str(), parts.port)
            .to_socket_addrs()
            .map_err(|e| format!("{url}: cannot resolve {}: {e}", parts.host))?
            .next()
            .ok_or_else(|| format!("{url}: {} has no address", parts.host))?;
        let path = with_query(&parts.path_and_query, token);
        let host_header = if parts.port == 80 {
            parts.host_literal.clone()
        } else {
            format!("{}:{}", parts.host_literal, parts.port)
        };
        let request_head = format!(
            "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
        );
        Ok(Self {
            addr,
            host: host_header,
            request_head,
        })
    }

    /// The complete upgrade request for one connection's `key`.
    pub fn request(&self, key: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(self.request_head.as_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
    }
}

/// The pieces of a `ws://` URL.
#[derive(Debug, PartialEq, Eq)]
struct UrlParts {
    /// Host without brackets, for resolving.
    host: String,
    /// Host as written (IPv6 keeps its brackets), for the `Host` header.
    host_literal: String,
    port: u16,
    path_and_query: String,
}

fn split_url(url: &str) -> Result<UrlParts, String> {
    let rest = if let Some(r) = url.strip_prefix("ws://") {
        r
    } else if url.starts_with("wss://") {
        return Err(format!(
            "{url}: wss:// is not supported (the load test speaks plain TCP)"
        ));
    } else {
        return Err(format!("{url}: expected ws://host:port/path"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err(format!("{url}: credentials in the URL are not supported"));
    }
    let (host_literal, port) = if let Some(end) = authority.strip_prefix('[') {
        let close = end
            .find(']')
            .ok_or_else(|| format!("{url}: unclosed IPv6 bracket"))?;
        let after = &end[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => parse_port(url, p)?,
            None if after.is_empty() => 80,
            None => return Err(format!("{url}: junk after IPv6 address")),
        };
        (format!("[{}]", &end[..close]), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), parse_port(url, p)?),
            None => (authority.to_owned(), 80),
        }
    };
    if host_literal.is_empty() || host_literal == "[]" {
        return Err(format!("{url}: missing host"));
    }
    let host = host_literal
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok(UrlParts {
        host,
        host_literal,
        port,
        path_and_query: path.to_owned(),
    })
}

fn parse_port(url: &str, p: &str) -> Result<u16, String> {
    p.parse().map_err(|_| format!("{url}: bad port {p:?}"))
}

/// Appends `apikey` and `vsn=2.0.0` unless the query already has them.
fn with_query(path_and_query: &str, token: &str) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, q),
        None => (path_and_query, ""),
    };
    let has = |k: &str| query.split('&').any(|kv| kv.split('=').next() == Some(k));
    let mut params: Vec<String> = query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if !has("apikey") {
        params.insert(0, format!("apikey={token}"));
    }
    if !has("vsn") {
        params.push("vsn=2.0.0".to_owned());
    }
    format!("{path}?{}", params.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_port_path() {
        let p = split_url("ws://127.0.0.1:4000/realtime/v1/websocket").unwrap();
        assert_eq!(p.host, "127.0.0.1");
        assert_eq!(p.port, 4000);
        assert_eq!(p.path_and_query, "/realtime/v1/websocket");
        let p = split_url("ws://[::1]:4001/x?a=b").unwrap();
        assert_eq!(p.host, "::1");
        assert_eq!(p.host_literal, "[::1]");
        assert_eq!(p.port, 4001);
        let p = split_url("ws://localhost").unwrap();
        assert_eq!((p.port, p.path_and_query.as_str()), (80, "/"));
        for bad in [
            "http://x/",
            "wss://x/",
            "ws://:80/",
            "ws://h:99999/",
            "ws://u@h/",
            "ws://[::1/",
        ] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn query_gets_apikey_and_vsn_once() {
        assert_eq!(
            with_query("/realtime/v1/websocket", "T"),
            "/realtime/v1/websocket?apikey=T&vsn=2.0.0"
        );
        assert_eq!(with_query("/ws?x=1", "T"), "/ws?apikey=T&x=1&vsn=2.0.0");
        assert_eq!(
            with_query("/ws?apikey=A&vsn=2.0.0", "T"),
            "/ws?apikey=A&vsn=2.0.0"
        );
    }

    #[test]
    fn request_is_a_complete_upgrade() {
        let t = Target::parse("ws://127.0.0.1:4000/realtime/v1/websocket", "TOKEN").unwrap();
        let mut out = Vec::new();
        t.request("a2V5", &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with(
            "GET /realtime/v1/websocket?apikey=TOKEN&vsn=2.0.0 HTTP/1.1\r\nHost: 127.0.0.1:4000\r\n"
        ));
        assert!(s.ends_with("Sec-WebSocket-Key: a2V5\r\n\r\n"));
        assert!(s.contains("Upgrade: websocket\r\n"));
    }
}
