//! The live progress line, once a second on stderr: overwritten in place on a terminal, plain
//! lines otherwise (CI logs, pipes), nothing with `--progress off`.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::args::ProgressMode;
use crate::live::Live;
use crate::proc::{Procs, Sample};

/// A running progress display; [`Progress::stop`] ends it and leaves the cursor on a new line.
#[derive(Debug)]
pub struct Progress {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts the display. `conns` is the number of connections this run opens.
    pub fn start(mode: ProgressMode, live: Arc<Live>, server: Option<Procs>, conns: u64) -> Self {
        let stop = CancellationToken::new();
        let overwrite = match mode {
            ProgressMode::Off => return Self { stop, task: None },
            ProgressMode::Auto => std::io::stderr().is_terminal(),
            ProgressMode::Plain => false,
        };
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last = Snapshot::take(&live, server.as_ref(), start);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let now = Snapshot::take(&live, server.as_ref(), start);
                let line = render(&live, conns, &last, &now);
                let mut err = std::io::stderr().lock();
                let _ = if overwrite {
                    write!(err, "\r\x1b[2K{line}")
                } else {
                    writeln!(err, "{line}")
                };
                let _ = err.flush();
                last = now;
            }
            if overwrite {
                let _ = writeln!(std::io::stderr());
            }
        });
        Self {
            stop,
            task: Some(task),
        }
    }

    /// Stops the display and waits (briefly) for its last line.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
        }
    }
}

/// Counters at one moment, for rates between two lines.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    elapsed: Duration,
    delivered: u64,
    sent: u64,
    server: Option<Sample>,
}

impl Snapshot {
    fn take(live: &Live, server: Option<&Procs>, start: Instant) -> Self {
        Self {
            elapsed: start.elapsed(),
            delivered: Live::get(&live.delivered),
            sent: Live::get(&live.sent),
            server: server.and_then(|p| p.sample().ok()),
        }
    }
}

fn render(live: &Live, conns: u64, last: &Snapshot, now: &Snapshot) -> String {
    let dt = (now.elapsed - last.elapsed).as_secs_f64().max(1e-3);
    let mut line = format!(
        "[{:>6.1}s] {:<10} conns {}/{} joined {} failed {} dropped {}",
        now.elapsed.as_secs_f64(),
        live.phase(),
        Live::get(&live.opened),
        conns,
        Live::get(&live.joined),
        Live::get(&live.failed),
        Live::get(&live.dropped),
    );
    if now.sent > 0 || now.delivered > 0 {
        line.push_str(&format!(
            " | sent {} ({:.0}/s) recv {} ({:.0}/s)",
            now.sent,
            (now.sent - last.sent) as f64 / dt,
            now.delivered,
            (now.delivered - last.delivered) as f64 / dt,
        ));
    }
    if let (Some(a), Some(b)) = (last.server, now.server) {
        let cpu = b.cpu.saturating_sub(a.cpu).as_secs_f64() / dt * 100.0;
        line.push_str(&format!(
            " | server {:.1} MiB cpu {cpu:.0}%",
            b.rss as f64 / (1024.0 * 1024.0)
        ));
    }
    line
}
