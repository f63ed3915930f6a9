//! A minimal HTTP/1.0 GET for talking to the admin endpoint (kmeshctl, tests).
//! HTTP/1.0 keeps the response framing trivial: the body runs to EOF.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the kmesh admin endpoint at {addr}: {source} (is kmesh-daemon running? pass --admin-address)")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed HTTP response from {addr}")]
    Malformed { addr: SocketAddr },
}

/// GET `path`; returns the status code and the body.
pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), ClientError> {
    request(addr, "GET", path, None)
}

/// POST a JSON body to `path`; returns the status code and the body.
pub fn post_json(addr: SocketAddr, path: &str, body: &str) -> Result<(u16, String), ClientError> {
    request(addr, "POST", path, Some(body))
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), ClientError> {
    let io = |source| ClientError::Io { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|source| ClientError::Connect { addr, source })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    let request = match body {
        None => format!("{head}\r\n"),
        Some(b) => format!(
            "{head}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ),
    };
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(ClientError::Malformed { addr })?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(ClientError::Malformed { addr })?;
    Ok((status, body.to_string()))
}
