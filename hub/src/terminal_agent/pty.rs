//! The PTY and the command in it, on `pty-process` (tokio-native: the master is registered with
//! the runtime's reactor, so reads and writes are plain async I/O with no thread hop in the
//! keystroke path).

use std::ffi::OsString;
use std::process::ExitStatus;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use super::outbox::Outbox;
use super::protocol::Size;

/// Largest chunk read from the PTY at once (and so the largest output frame).
pub const READ_CHUNK: usize = 16 * 1024;

/// What the connection hands to the PTY writer. Input and resizes share one queue so they reach
/// the PTY in the order the hub sent them (a program sees its new size before keys typed after).
#[derive(Debug)]
pub enum Input {
    /// Bytes typed by the driver.
    Data(Bytes),
    /// A new size.
    Resize(Size),
}

/// Capacity of the input queue. When it is full, the connection stops reading from the hub (TCP
/// pushes back on the hub) until the program reads its input; nothing is dropped.
pub const INPUT_QUEUE: usize = 64;

/// A command running in a new PTY.
#[derive(Debug)]
pub struct PtyProcess {
    /// The command, to wait for.
    pub child: tokio::process::Child,
    /// The master's read half: the command's output.
    pub reader: pty_process::OwnedReadPty,
    /// The master's write half: the command's input and the window size.
    pub writer: pty_process::OwnedWritePty,
}

impl PtyProcess {
    /// Starts `program args…` as the session leader of a new PTY of `size`, with `TERM` set to
    /// `term` (the hub's viewers are xterm-compatible whatever terminal started the agent).
    pub fn spawn(
        program: &OsString,
        args: &[OsString],
        size: Size,
        term: &str,
    ) -> anyhow::Result<Self> {
        let (pty, pts) = pty_process::open().context("opening a PTY")?;
        pty.resize(pty_size(size)).context("setting the PTY size")?;
        let child = pty_process::Command::new(program)
            .args(args)
            .env("TERM", term)
            .spawn(pts)
            .with_context(|| format!("starting {program:?} in the PTY"))?;
        // `spawn` consumed the slave end, so only the child holds it: once the child (and
        // anything it left running on the terminal) exits, reads from the master end.
        let (reader, writer) = pty.into_split();
        Ok(Self {
            child,
            reader,
            writer,
        })
    }
}

fn pty_size(size: Size) -> pty_process::Size {
    pty_process::Size::new(size.rows, size.cols)
}

/// The exit code the agent reports for `status`: the command's own, or 128 + the signal that
/// killed it (what shells report).
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    }
}

/// `EIO`: what reading a PTY master returns once no process holds the slave end (Linux and the
/// BSDs alike), i.e. the end of the output.
const EIO: i32 = 5;

/// Copies the PTY's output into `outbox` until the output ends, then closes the outbox. Each
/// read is queued at once: no batching delay in the echo path.
pub async fn pump_output(mut reader: pty_process::OwnedReadPty, outbox: Arc<Outbox>) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                outbox.push(Bytes::copy_from_slice(&buf[..n])).await;
            }
            Err(e) if e.raw_os_error() == Some(EIO) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading the PTY failed; no more output");
                break;
            }
        }
    }
    outbox.close();
}

/// Applies the hub's input and resizes to the PTY until the queue's senders are all gone.
/// Failures are logged and the item skipped: the command may have exited while input was on its
/// way, and the agent's exit is driven by the command, not by this task.
pub async fn apply_input(mut writer: pty_process::OwnedWritePty, mut input: mpsc::Receiver<Input>) {
    while let Some(item) = input.recv().await {
        match item {
            Input::Data(bytes) => {
                if let Err(e) = writer.write_all(&bytes).await {
                    tracing::debug!(error = %e, len = bytes.len(), "writing input to the PTY failed");
                }
            }
            Input::Resize(size) => {
                if let Err(e) = writer.resize(pty_size(size)) {
                    tracing::warn!(error = %e, ?size, "resizing the PTY failed");
                } else {
                    tracing::debug!(?size, "resized the PTY");
                }
            }
        }
    }
}
