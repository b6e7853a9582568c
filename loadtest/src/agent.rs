//! The PTY host the terminal echo scenario types into: `hub terminal-agent` started as a child
//! process, so a run measures the real path (hub → agent → PTY → program → agent → hub) with
//! one command and cleans up after itself.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;

/// A running `hub terminal-agent`; killed when dropped.
#[derive(Debug)]
pub struct Agent {
    child: Child,
}

impl Agent {
    /// Starts `<hub> terminal-agent --hub ws://<host> --id <id> -- sh -c <command>`. The token
    /// goes in the environment (`HUB_TOKEN`), not on the command line other users can read.
    /// The agent logs warnings only, to our stderr.
    pub fn spawn(
        hub: &Path,
        host: &str,
        id: &str,
        token: &str,
        command: &str,
    ) -> anyhow::Result<Self> {
        let child = Command::new(hub)
            .args([
                "terminal-agent",
                "--hub",
                &format!("ws://{host}"),
                "--id",
                id,
            ])
            .args(["--", "sh", "-c", command])
            .env("HUB_TOKEN", token)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} terminal-agent", hub.display()))?;
        Ok(Self { child })
    }

    /// The agent's process id, to watch its CPU.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited (it should not before we stop it): its status if so.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Agent {
    /// Kills the agent; its PTY closes with it, which hangs up the program it ran.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
