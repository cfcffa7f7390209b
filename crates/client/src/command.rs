//! A command whose standard output is a backup (`pg_dump`, `mysqldump`):
//! `CommandOutput` reads it and, at its end, fails unless the command
//! exited successfully, so a failed dump never becomes a snapshot. A reader
//! dropped before the end (a backup that stopped early) kills the command
//! rather than leave it running.

use std::io::Read;
use std::process::{Child, ChildStdout, Command, Stdio};

pub struct CommandOutput {
    child: Child,
    stdout: ChildStdout,
    command: String,
    finished: bool,
}

impl CommandOutput {
    /// Runs `command` with `sh -c`, stdin closed, with `env` added to its
    /// environment.
    pub fn spawn(command: &str, env: &[(&str, &str)]) -> std::io::Result<CommandOutput> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| std::io::Error::other("the command has no stdout"))?;
        Ok(CommandOutput { child, stdout, command: command.to_string(), finished: false })
    }
}

impl Read for CommandOutput {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.finished {
            return Ok(0);
        }
        let n = self.stdout.read(buf)?;
        if n == 0 {
            self.finished = true;
            let status = self.child.wait()?;
            if !status.success() {
                return Err(std::io::Error::other(format!("command {:?} failed: {status}", self.command)));
            }
        }
        Ok(n)
    }
}

impl Drop for CommandOutput {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
