//! An agent process (`coffer agent --config FILE`) beside a test cluster:
//! start, SIGKILL, restart on the same state, and the `status` / `trigger`
//! commands against its control socket.
//!
//! It runs with the cluster's environment (the admin token, the password)
//! and the agent's `client` certificate, as an agent host would; its log
//! is `agent-NAME.log` in the cluster's directory, so an unexpected
//! `ERROR` line in it fails the test like any node's.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{wait_until, Cluster, Output};

pub struct AgentProc {
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl AgentProc {
    /// Starts `coffer agent --config CONFIG`, logging to `agent-NAME.log`.
    pub fn start(c: &Cluster, config: &Path, name: &str) -> Result<AgentProc> {
        let mut a =
            AgentProc { config: config.to_path_buf(), log: c.dir().join(format!("agent-{name}.log")), child: None };
        a.spawn(c)?;
        Ok(a)
    }

    fn spawn(&mut self, c: &Cluster) -> Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let cfg = self.config.display().to_string();
        let mut cmd = c.command(&["agent", "--config", &cfg]);
        cmd.env("COFFER_LOG", std::env::var("COFFER_IT_LOG").unwrap_or_else(|_| "info".into()))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if !c.spec().insecure {
            let tls = c.tls_dir();
            cmd.env("COFFER_CERT", tls.join("agent.crt")).env("COFFER_KEY", tls.join("agent.key"));
        }
        self.child = Some(cmd.spawn().context("spawn coffer agent")?);
        Ok(())
    }

    /// Restarts a killed or stopped agent on the same configuration and state.
    pub fn restart(&mut self, c: &Cluster) -> Result<()> {
        self.kill();
        self.spawn(c)
    }

    /// SIGKILL: no chance to record anything.
    pub fn kill(&mut self) {
        if let Some(mut ch) = self.child.take() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// `coffer agent ARGS --config CONFIG`.
    pub fn cli(&self, c: &Cluster, args: &[&str]) -> Result<Output> {
        let cfg = self.config.display().to_string();
        let mut all = vec!["agent"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", &cfg]);
        c.cli(&all)
    }

    /// `agent status --json`, once the control socket answers.
    pub fn status(&self, c: &Cluster) -> Result<Value> {
        self.cli(c, &["status", "--json"])?.ok()?.json()
    }

    /// The status entry of source `name`.
    pub fn source_status(&self, c: &Cluster, name: &str) -> Result<Value> {
        let s = self.status(c)?;
        s["sources"]
            .as_array()
            .and_then(|l| l.iter().find(|e| e["name"] == name).cloned())
            .with_context(|| format!("no source {name} in {s}"))
    }

    /// Waits until the agent answers on its control socket.
    pub fn wait_ready(&self, c: &Cluster, timeout: Duration) -> Result<()> {
        wait_until("the agent's control socket", timeout, || self.status(c).ok().map(|_| ()))
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}
