//! `coffer probe URL`: one plain-HTTP GET, exit 0 when the answer is
//! `200`, 1 otherwise. It is the health check of the container image,
//! which is `FROM scratch` and so has neither a shell nor curl: Docker and
//! compose run the coffer binary itself against a daemon's admin port
//! (`/livez`, `/readyz`).
//!
//! Only `http://HOST:PORT/PATH` is accepted, because the admin port speaks
//! plain HTTP; a URL this does not understand is a usage error (exit 2),
//! so that a typo in a health check does not read as an unhealthy node.
//! The whole exchange (connect, request, status line) runs within
//! `--timeout`; nothing but the status line is read.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::config::UsageError;

/// A URL split into what the request needs.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// `host:port`, as given (a bracketed IPv6 address stays bracketed).
    authority: String,
    path: String,
}

fn parse(url: &str) -> Result<Target, UsageError> {
    let bad = |why: &str| UsageError(format!("probe: URL {url:?}: {why} (expected http://HOST:PORT/PATH)"));
    let rest = url.strip_prefix("http://").ok_or_else(|| bad("only http:// is supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    // The port is required: the admin port has no well-known number to
    // fall back on, and guessing 80 would probe the wrong thing.
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p),
        _ => return Err(bad("no port")),
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if port.parse::<u16>().is_err() {
        return Err(bad("the port is not a number from 0 to 65535"));
    }
    if path.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return Err(bad("the path holds white space or control characters"));
    }
    Ok(Target { authority: authority.to_string(), path: path.to_string() })
}

/// The status code of a response's first line (`HTTP/1.x CODE REASON`).
fn status_code(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

async fn fetch_status(t: &Target) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(&t.authority).await.with_context(|| format!("connect to {}", t.authority))?;
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: coffer-probe\r\nConnection: close\r\n\r\n",
        t.path, t.authority
    );
    stream.write_all(req.as_bytes()).await.context("send the request")?;
    // A status line longer than this is not an HTTP server we know.
    let mut reader = BufReader::new(stream).take(8 * 1024);
    let mut line = String::new();
    reader.read_line(&mut line).await.context("read the status line")?;
    let line = line.trim_end().to_string();
    match status_code(&line) {
        Some(code) => Ok((code, line)),
        None if line.is_empty() => bail!("the server closed the connection without answering"),
        None => bail!("not an HTTP status line: {line:?}"),
    }
}

/// Runs the probe; `Ok(0)` when the server answered 200, `Ok(1)` when it
/// answered anything else or could not be reached (said on stderr).
pub async fn run(url: &str, timeout: Duration) -> anyhow::Result<i32> {
    let target = parse(url).map_err(anyhow::Error::new)?;
    match tokio::time::timeout(timeout, fetch_status(&target)).await {
        Ok(Ok((200, _))) => Ok(0),
        Ok(Ok((_, line))) => {
            eprintln!("coffer probe: {url}: {line}");
            Ok(1)
        }
        Ok(Err(e)) => {
            eprintln!("coffer probe: {url}: {e:#}");
            Ok(1)
        }
        Err(_) => {
            eprintln!("coffer probe: {url}: no answer within {timeout:?}");
            Ok(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn parses_what_health_checks_write_and_refuses_the_rest() {
        assert_eq!(
            parse("http://127.0.0.1:9090/readyz").unwrap(),
            Target { authority: "127.0.0.1:9090".into(), path: "/readyz".into() }
        );
        assert_eq!(parse("http://[::1]:9090").unwrap(), Target { authority: "[::1]:9090".into(), path: "/".into() });
        for bad in ["https://a:1/", "a:1/readyz", "http://a/readyz", "http://[::1]/x", "http://:9/x", "http://a:1/x y"]
        {
            let e = parse(bad).unwrap_err();
            assert!(e.0.contains(bad), "{e}");
        }
    }

    #[test]
    fn reads_the_status_code() {
        assert_eq!(status_code("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(status_code("HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(status_code("SSH-2.0-OpenSSH"), None);
        assert_eq!(status_code(""), None);
    }

    /// A one-shot server answering `status` to the first request, which it
    /// hands back so the test can check what was sent.
    async fn serve_once(status: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0; 1024];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (addr, h)
    }

    #[tokio::test]
    async fn exit_code_follows_the_status() {
        let (addr, h) = serve_once("200 OK").await;
        assert_eq!(run(&format!("http://{addr}/readyz"), Duration::from_secs(5)).await.unwrap(), 0);
        let req = h.await.unwrap();
        assert!(req.starts_with("GET /readyz HTTP/1.1\r\n"), "{req}");
        assert!(req.contains(&format!("Host: {addr}\r\n")), "{req}");

        let (addr, _h) = serve_once("503 Service Unavailable").await;
        assert_eq!(run(&format!("http://{addr}/readyz"), Duration::from_secs(5)).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn nothing_listening_is_unhealthy_not_an_error() {
        // Bind then drop, so the port is (almost certainly) closed.
        let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        assert_eq!(run(&format!("http://{addr}/livez"), Duration::from_secs(5)).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        // Accepts and then says nothing; held until the probe gives up.
        let _h = tokio::spawn(async move {
            let (_s, _) = l.accept().await.unwrap();
            std::future::pending::<()>().await
        });
        assert_eq!(run(&format!("http://{addr}/readyz"), Duration::from_millis(200)).await.unwrap(), 1);
    }
}
