//! The agent's local control socket: a Unix socket (mode 0600, so only the
//! agent's user and root may trigger backups), JSON lines both ways.
//!
//! ```text
//!   {"op":"status"}                                        → {"sources":[...]}
//!   {"op":"trigger","source":"NAME","kind":"full","wait":true} → {"source","queued":true}
//!                                                            or, with wait, the run: {"source","snapshot_id","result","error",...}
//!   anything else                                          → {"error":"..."}
//! ```
//!
//! The invariant: a request gets exactly one answer line, an error one
//! for anything malformed; nothing a client sends can stop the agent.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use coffer_types::BackupKind;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::daemon::{find, status_json, Sources};

/// The longest request line accepted.
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub op: String,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub wait: bool,
}

/// Binds `path` (replacing a stale socket, refusing when another agent
/// answers on it) and serves it until the handle is aborted.
pub async fn serve(path: &Path, sources: Sources) -> Result<JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create the directory of control {}", path.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            anyhow::bail!("control {}: another agent is running on this socket", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("remove the stale control socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("bind control {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restrict control {}", path.display()))?;
    let path: PathBuf = path.to_path_buf();
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, sources.clone()));
                }
                Err(e) => {
                    tracing::warn!(control = %path.display(), error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }))
}

async fn connection(stream: UnixStream, sources: Sources) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_LINE as u64 * 64)).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let answer = if line.len() > MAX_LINE {
            json!({"error": "request line too long"})
        } else {
            answer(&line, &sources).await
        };
        let mut out = answer.to_string();
        out.push('\n');
        if write.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn answer(line: &str, sources: &Sources) -> Value {
    let req: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return json!({"error": format!("bad request: {e}")}),
    };
    match req.op.as_str() {
        "status" => status_json(sources),
        "trigger" => {
            let Some(name) = req.source else { return json!({"error": "trigger needs a source"}) };
            let Some(src) = find(sources, &name) else {
                return json!({"error": format!("no source {name:?} in this agent's configuration")});
            };
            let kind = match req.kind.as_deref().map(str::parse::<BackupKind>).transpose() {
                Ok(k) => k,
                Err(e) => return json!({"error": format!("kind: {e}")}),
            };
            match src.trigger(kind, req.wait) {
                None => json!({"source": name, "queued": true}),
                Some(rx) => match rx.await {
                    Ok(r) => json!({
                        "source": name,
                        "snapshot_id": r.snapshot_id,
                        "result": r.result,
                        "error": r.error,
                        "kind": r.kind,
                        "duration_s": r.duration_s,
                        "bytes": r.bytes,
                    }),
                    Err(_) => json!({"source": name, "error": "the agent stopped or reloaded before the run finished"}),
                },
            }
        }
        other => json!({"error": format!("unknown op {other:?} (status, trigger)")}),
    }
}

/// The client side, for `coffer agent status|trigger`: sends one request
/// and returns the answer.
pub async fn request(path: &Path, req: &Value) -> Result<Value> {
    let stream = UnixStream::connect(path)
        .await
        .with_context(|| format!("connect to the agent's control socket {} (is the agent running?)", path.display()))?;
    let (read, mut write) = stream.into_split();
    let mut line = req.to_string();
    line.push('\n');
    write.write_all(line.as_bytes()).await.context("send the request")?;
    let mut lines = BufReader::new(read).lines();
    let answer = lines.next_line().await.context("read the answer")?.context("the agent closed the socket")?;
    serde_json::from_str(&answer).context("parse the agent's answer")
}
