//! `terminal`: the hub's terminal WebSocket (`GET /v1/terminal/{id}`, issue 6; see
//! [`crate::terminal`]).
//!
//! Two modes:
//! - `echo`: one viewer types into a real PTY and times each keystroke's echo. The host is
//!   `hub terminal-agent` running a raw-mode echo program (default `stty raw -echo && echo
//!   lt-ready && exec cat`): started by the scenario with `--agent <hub binary>`, or already
//!   running on `--id`. The echo comes from the program, not the line discipline, so a keystroke
//!   crosses every hop a real one does: viewer → hub → agent → PTY → program → PTY → agent → hub
//!   → viewer. Typing waits for `--ready` in the output (the program is then in raw mode; a key
//!   typed before would be echoed twice). The first `--warmup` keystrokes (the first one makes
//!   this viewer the driver) are not timed; then `--count` keystrokes are, one at a time, each
//!   sent when the previous echo arrived (`--interval 0ms`, back to back) or on a fixed schedule
//!   (`--interval 30ms`, typing pace). Each key is a letter cycling `a`..`z` and must come back
//!   as exactly that byte; anything else is counted as stray output.
//! - `output`: this process is the host (a WebSocket client with `role=host`) and writes
//!   `--chunk`-byte output frames as fast as the hub takes them (or at `--host-rate`) for
//!   `--duration`, while `--viewers` viewers read. The bytes follow [`Pattern`], so each viewer
//!   checks every byte at its offset (one `memcmp` per frame): nothing lost, repeated or out of
//!   order. A viewer the hub closes as slow (4008) reconnects with its cursor, as a browser
//!   would; a resume the scrollback no longer covers is a gap and ends that viewer.
//!
//!   "As fast as the hub takes it" needs a bound: the hub reads a host's output as fast as it
//!   arrives and never slows the host for its viewers; a viewer whose queue passes
//!   `HUB_OUTBOX_BYTES` (4 MiB) is closed as slow, and resuming 4 MiB back is beyond the 256 KiB
//!   scrollback, so an unbounded host loses every viewer within milliseconds (`--window 0`
//!   shows it). The host therefore stays at most `--window` bytes (1 MiB) ahead of the slowest
//!   viewer, which makes the run measure what the hub delivers to every viewer, in full.
//!
//! Both need a fresh terminal: the default `--id` is `lt-<pid>`. The token is the service
//! role's (it may host, and it may drive a terminal that is not a build session's).
//!
//! The hub limits input to `HUB_TERMINAL_INPUT_PER_SEC` frames per second per viewer (1,000 by
//! default, bursts of as many); back to back typing goes faster than that, so refused
//! keystrokes are counted (`input refused`), not timed, and typing resumes after the wait the
//! refusal names. Start the hub with a higher limit (or 0, none) to time every keystroke.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use channels::ws_frame::Opcode;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{Ctx, Window, cpu_delta};
use crate::agent::Agent;
use crate::args::{TerminalArgs, TerminalMode};
use crate::client::{ReadError, WsConn};
use crate::live::Live;
use crate::metrics::{self, Hist, Summary};
use crate::proc::Procs;
use crate::progress::Progress;
use crate::report::{Num, Report};
use crate::session::CLOSE_GRACE;
use crate::terminal::{self, Marker, Pattern, Role, Text};
use crate::{clock, token};

/// Read buffer of the typing viewer: echoes are single bytes.
const ECHO_READ_BUF: usize = 4 * 1024;

/// Read buffer of an output viewer: many 16 KiB frames per read when it falls behind.
const VIEWER_READ_BUF: usize = 256 * 1024;

/// Read buffer of the output host, which only gets control messages.
const HOST_READ_BUF: usize = 4 * 1024;

/// How often waits check that the started agent is still running.
const AGENT_POLL: Duration = Duration::from_millis(100);

/// Most slow-reader reconnects of one output viewer before it gives up.
const MAX_RECONNECTS: u32 = 100;

/// Bytes in a megabyte of the MB/s figures (decimal, as network rates are quoted).
const MB: f64 = 1e6;

/// Runs the scenario.
pub async fn run(args: &TerminalArgs, ctx: Arc<Ctx>) -> anyhow::Result<Report> {
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("lt-{}", std::process::id()));
    let token = service_token(&ctx)?;
    let host = ctx
        .targets
        .first()
        .map(|t| t.host.clone())
        .context("no --url")?;
    let mut report = match args.mode {
        TerminalMode::Echo => echo(args, &ctx, &id, &host, &token).await?,
        TerminalMode::Output => output(args, &ctx, &id, &host, &token).await?,
    };
    let r = &mut report;
    r.param("mode", format!("{:?}", args.mode).to_lowercase());
    r.param("id", id);
    Ok(report)
}

/// `--token` as given, else a service-role token minted from the secret.
fn service_token(ctx: &Ctx) -> anyhow::Result<String> {
    let c = &ctx.common;
    match (&c.token, &c.jwt_secret) {
        (Some(t), _) => Ok(t.clone()),
        (None, Some(secret)) => token::mint(
            secret.as_bytes(),
            token::SERVICE_ROLE,
            &format!("loadtest-{}", std::process::id()),
            clock::unix_secs(),
            c.duration.as_secs() + 600,
        ),
        (None, None) => bail!("no credentials: pass --token or --jwt-secret (or HUB_JWT_SECRET)"),
    }
}

/// The `i`-th keystroke: letters `a`..`z` in turn, so a late or misplaced echo is not taken
/// for the current one's.
fn key(i: u64) -> u8 {
    b'a' + (i % 26) as u8
}

/// What became of one keystroke.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    /// Its echo arrived after this long.
    Echoed(Duration),
    /// No echo within `--echo-timeout`.
    Lost,
    /// The hub refused it with this message.
    Refused(String),
}

/// Output that was not the echo awaited.
#[derive(Debug, Default)]
struct Stray {
    bytes: u64,
}

/// Sends `byte` and waits for it to come back. Bytes before it are stray output; bytes after
/// it in the same read stay buffered for the next keystroke (and count as stray there).
async fn keystroke(
    conn: &mut WsConn,
    byte: u8,
    timeout: Duration,
    stray: &mut Stray,
) -> Result<Key, ReadError> {
    let t0 = Instant::now();
    conn.send(Opcode::Binary, &[byte]).await?;
    let deadline = t0 + timeout;
    loop {
        while let Some((op, payload)) = conn.next_frame()? {
            match op {
                Opcode::Binary if payload.contains(&byte) => {
                    let at = t0.elapsed();
                    stray.bytes += (payload.len() - 1) as u64;
                    return Ok(Key::Echoed(at));
                }
                Opcode::Binary => stray.bytes += payload.len() as u64,
                Opcode::Text => {
                    if let Text::Error(m) = Text::parse(payload) {
                        return Ok(Key::Refused(m));
                    }
                }
                Opcode::Close => {
                    let code = terminal::close_code(payload);
                    return Err(ReadError::Io(std::io::Error::other(format!(
                        "the hub closed the connection ({code})"
                    ))));
                }
                _ => {}
            }
        }
        match tokio::time::timeout_at(deadline.into(), conn.read_some()).await {
            Err(_) => return Ok(Key::Lost),
            Ok(Ok(0)) => return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

/// Reads until a host is connected and the output contains `ready` (which may already be in
/// the scrollback that follows `connected`), or fails after `limit`.
async fn await_ready(
    conn: &mut WsConn,
    mut host: bool,
    ready: &str,
    limit: Duration,
    agent: &mut Option<Agent>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let mut marker = Marker::new(ready);
    let mut seen = marker.feed(b"");
    loop {
        while let Some((op, payload)) = conn.next_frame()? {
            match op {
                Opcode::Binary => seen |= marker.feed(payload),
                Opcode::Text => match Text::parse(payload) {
                    Text::HostConnected => host = true,
                    Text::HostDisconnected => host = false,
                    _ => {}
                },
                Opcode::Close => bail!(
                    "the hub closed the viewer ({})",
                    terminal::close_code(payload)
                ),
                _ => {}
            }
        }
        if host && seen {
            return Ok(());
        }
        if let Some(status) = agent.as_mut().and_then(Agent::exited) {
            bail!("the terminal agent exited ({status}) before the terminal was ready");
        }
        if Instant::now() >= deadline {
            bail!(
                "not ready after {limit:?}: {} (is an agent hosting this --id, and does its \
                 command print --ready {ready:?}?)",
                if host {
                    "the output never contained --ready"
                } else {
                    "no host connected"
                }
            );
        }
        let wait = AGENT_POLL.min(deadline.saturating_duration_since(Instant::now()));
        if let Ok(r) = tokio::time::timeout(wait, conn.read_some()).await {
            if r? == 0 {
                bail!("the hub closed the viewer");
            }
        }
    }
}

/// The refusal kind for the error table: the message up to its first `;` (the rest names a
/// wait that differs every time).
fn refusal_kind(message: &str) -> String {
    let head = message.split(';').next().unwrap_or(message);
    format!("input refused: {head}")
}

/// `--mode echo`.
async fn echo(
    args: &TerminalArgs,
    ctx: &Arc<Ctx>,
    id: &str,
    host: &str,
    token: &str,
) -> anyhow::Result<Report> {
    let c = &ctx.common;
    let mut agent = match &args.agent {
        Some(path) => Some(Agent::spawn(path, host, id, token, &args.agent_cmd)?),
        None => None,
    };
    let agent_procs = agent.as_ref().and_then(|a| Procs::new(vec![a.pid()]).ok());
    let progress = Progress::start(c.progress, ctx.live.clone(), ctx.server.clone(), 1);

    ctx.live.set_phase("connecting");
    let url = terminal::url(host, id, Role::Viewer, token, None);
    let (mut conn, connected) = terminal::open(ctx.dial(0, ECHO_READ_BUF), &url)
        .await
        .context("opening the typing viewer")?;
    Live::add(&ctx.live.opened, 1);
    ctx.live.set_phase("waiting for the host");
    await_ready(
        &mut conn,
        connected.host,
        &args.ready,
        args.ready_timeout,
        &mut agent,
    )
    .await?;
    Live::add(&ctx.live.joined, 1);

    let mut r = Report::new("terminal");
    ctx.live.set_phase("warming up");
    let mut warm_stray = Stray::default();
    let mut warm_lost = 0;
    for i in 0..args.warmup {
        match keystroke(&mut conn, key(i), args.echo_timeout, &mut warm_stray).await? {
            Key::Echoed(_) => {}
            Key::Lost => warm_lost += 1,
            Key::Refused(m) => {
                r.error(format!("warm-up {}", refusal_kind(&m)), 1);
                if let Some(wait) = terminal::retry_after(&m) {
                    ctx.sleep(wait).await;
                }
            }
        }
        if ctx.stop.is_cancelled() {
            break;
        }
    }

    ctx.live.set_phase("typing");
    let mut hist = metrics::hist()?;
    let mut stray = Stray::default();
    let (mut lost, mut refused, mut typed) = (0u64, 0u64, 0u64);
    let agent_start = agent_procs.as_ref().and_then(|p| p.sample().ok());
    let mut window = Window::default();
    window.mark_start(ctx);
    let start = Instant::now();
    window.start = Some(start);
    for i in 0..args.count {
        if !args.interval.is_zero() {
            let due = start
                + args
                    .interval
                    .saturating_mul(u32::try_from(i).unwrap_or(u32::MAX));
            let wait = due.saturating_duration_since(Instant::now());
            if !wait.is_zero() && !ctx.sleep(wait).await {
                break;
            }
        }
        if ctx.stop.is_cancelled() {
            break;
        }
        let k = key(args.warmup + i);
        typed += 1;
        Live::add(&ctx.live.sent, 1);
        match keystroke(&mut conn, k, args.echo_timeout, &mut stray).await? {
            Key::Echoed(d) => {
                metrics::record(&mut hist, d);
                Live::add(&ctx.live.delivered, 1);
            }
            Key::Lost => lost += 1,
            Key::Refused(m) => {
                refused += 1;
                r.error(refusal_kind(&m), 1);
                if let Some(wait) = terminal::retry_after(&m) {
                    ctx.sleep(wait).await;
                }
            }
        }
    }
    let elapsed = start.elapsed();
    window.drain_end = Some(Instant::now());
    window.mark_end(ctx);
    let agent_end = agent_procs.as_ref().and_then(|p| p.sample().ok());

    ctx.live.set_phase("closing");
    ctx.stop.cancel();
    let clean = conn.close(CLOSE_GRACE).await;
    progress.stop().await;
    if let Some(status) = agent.as_mut().and_then(Agent::exited) {
        r.error(format!("the agent exited during the run ({status})"), 1);
    }
    drop(agent);

    let echoed = hist.len();
    r.param("interval_ms", args.interval.as_secs_f64() * 1e3);
    r.param("count", args.count);
    r.param("warmup", args.warmup);
    r.param(
        "agent",
        args.agent
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    );
    r.param("agent_cmd", args.agent_cmd.clone());
    r.figure("keystrokes", "keystrokes timed", Num::Int(typed), "");
    r.figure("echoed", "echoes received", Num::Int(echoed), "");
    let ratio = Num::ratio(echoed, typed);
    r.figure("echoed_ratio", "echoed / typed", ratio, "");
    r.figure("lost", "echoes lost (timeout)", Num::Int(lost), "");
    r.figure("refused", "keystrokes refused", Num::Int(refused), "");
    r.figure(
        "stray_bytes",
        "stray output bytes",
        Num::Int(stray.bytes),
        "",
    );
    r.figure(
        "warmup_lost",
        "warm-up echoes lost",
        Num::Int(warm_lost),
        "",
    );
    r.figure(
        "typing_s",
        "typing took",
        Num::Float(elapsed.as_secs_f64()),
        "s",
    );
    r.figure(
        "keystrokes_per_s",
        "keystrokes per second",
        Num::float(typed as f64 / elapsed.as_secs_f64()),
        "/s",
    );
    let cpu = window.server_cpu();
    r.figure("server_cpu_s", "server CPU while typing", cpu, "s");
    r.figure(
        "server_cpu_pct",
        "server CPU utilisation then",
        cpu.as_f64().map_or(Num::Missing, |c| {
            Num::float(c / elapsed.as_secs_f64() * 100.0)
        }),
        "%",
    );
    r.figure(
        "server_cpu_per_key_us",
        "server CPU per keystroke",
        cpu.as_f64()
            .map_or(Num::Missing, |c| Num::float(c * 1e6 / typed.max(1) as f64)),
        "µs",
    );
    r.figure(
        "agent_cpu_s",
        "agent CPU while typing",
        cpu_delta(agent_start, agent_end),
        "s",
    );
    r.figure(
        "client_cpu_window_s",
        "loadtest CPU while typing",
        window.own_cpu(),
        "s",
    );
    r.figure(
        "other_cpu_s",
        "other processes' CPU then",
        window.other_cpu(),
        "s",
    );
    r.figure(
        "closed_clean",
        "closes answered by server",
        Num::Int(u64::from(clean)),
        "",
    );
    r.latency("keystroke_echo", "keystroke→echo", Summary::of(&hist));
    r.note(
        "keystroke→echo: from writing the key's frame to reading its echo, through the hub, \
         the agent, the PTY and the echo program (agent CPU excludes that program)",
    );
    if let Some(limit) = c.expect_p99 {
        r.check("p99 keystroke→echo", p99(&hist), limit, true, " ms");
    }
    if let Some(limit) = c.expect_delivered {
        r.check("echoed/typed", ratio.as_f64(), limit, false, "");
    }
    Ok(r)
}

/// p99 in milliseconds, if anything was recorded.
fn p99(h: &Hist) -> Option<f64> {
    (!h.is_empty()).then(|| Summary::of(h).p99_ms)
}

/// What one output viewer saw.
#[derive(Debug, Default)]
struct ViewerEnd {
    /// Output bytes received (over every reconnect).
    bytes: u64,
    /// Bytes that matched the pattern at their offset, before any mismatch or gap.
    good: u64,
    /// Stream offset of the first wrong byte.
    mismatch_at: Option<u64>,
    /// Reconnects after a slow-reader close.
    reconnects: u32,
    /// A resume the scrollback no longer covered (bytes lost).
    gap: bool,
    /// Bytes the hub skipped for this slow viewer (`snapshot` notices: it resyncs from the
    /// scrollback instead of being disconnected); what follows is still checked at its offset.
    skipped: u64,
    /// It received every byte the host wrote.
    complete: bool,
    /// When its last output byte arrived.
    last_rx: Option<Instant>,
    /// Socket reads.
    reads: u64,
    /// Error and close kinds.
    errors: BTreeMap<String, u64>,
}

impl ViewerEnd {
    fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_default() += 1;
    }
}

/// How far each output viewer has read, so the host can stay within `--window` of the slowest.
#[derive(Debug)]
struct Flow {
    /// Stream offset each viewer has read up to; `u64::MAX` once it has stopped reading.
    offsets: Vec<AtomicU64>,
    /// Woken whenever a viewer moves on.
    moved: Notify,
}

impl Flow {
    fn new(viewers: usize) -> Self {
        Self {
            offsets: (0..viewers).map(|_| AtomicU64::new(0)).collect(),
            moved: Notify::new(),
        }
    }

    /// The slowest reading viewer's offset (`u64::MAX` when none reads any more).
    fn slowest(&self) -> u64 {
        self.offsets
            .iter()
            .map(|o| o.load(Ordering::Acquire))
            .min()
            .unwrap_or(u64::MAX)
    }

    fn set(&self, viewer: usize, offset: u64) {
        if let Some(o) = self.offsets.get(viewer) {
            o.store(offset, Ordering::Release);
        }
        self.moved.notify_waiters();
    }

    /// Waits until the slowest viewer is at `offset` or beyond; false when `limit` came first.
    async fn reached(&self, offset: u64, limit: Instant) -> bool {
        loop {
            let moved = self.moved.notified();
            tokio::pin!(moved);
            // Registered before the check, so a viewer moving in between still wakes us.
            moved.as_mut().enable();
            if self.slowest() >= offset {
                return true;
            }
            if tokio::time::timeout_at(limit.into(), moved).await.is_err() {
                return false;
            }
        }
    }
}

/// Everything an output viewer task needs.
struct ViewerJob {
    ctx: Arc<Ctx>,
    index: usize,
    /// The terminal URL without a cursor, and the pieces to resume with one.
    host: String,
    id: String,
    token: String,
    pattern: Arc<Pattern>,
    /// The stream offset the host stopped at, once it has.
    end: watch::Receiver<Option<u64>>,
    stop: CancellationToken,
    flow: Arc<Flow>,
}

/// One output viewer: checks every byte at its offset until it has the host's last byte (or
/// the run stops), reconnecting with its cursor when the hub closes it as slow.
async fn viewer(job: ViewerJob, conn: WsConn, offset: u64) -> ViewerEnd {
    let flow = job.flow.clone();
    let index = job.index;
    let v = read_output(job, conn, offset).await;
    // Whatever ended it, the host must no longer wait for this viewer.
    flow.set(index, u64::MAX);
    v
}

async fn read_output(job: ViewerJob, mut conn: WsConn, mut offset: u64) -> ViewerEnd {
    let ViewerJob {
        ctx,
        index,
        host,
        id,
        token,
        pattern,
        mut end,
        stop,
        flow,
    } = job;
    let mut v = ViewerEnd::default();
    let mut verifying = true;
    loop {
        let mut closed = None;
        let before = v.bytes;
        loop {
            let frame = match conn.next_frame() {
                Ok(f) => f,
                Err(e) => {
                    v.error(format!("protocol: {e}"));
                    return v;
                }
            };
            match frame {
                None => break,
                Some((Opcode::Binary, p)) => {
                    if verifying {
                        match pattern.check(offset, p) {
                            Ok(()) => v.good += p.len() as u64,
                            Err(i) => {
                                verifying = false;
                                v.good += i as u64;
                                v.mismatch_at = Some(offset + i as u64);
                            }
                        }
                    }
                    offset += p.len() as u64;
                    v.bytes += p.len() as u64;
                }
                Some((Opcode::Text, t)) => match Text::parse(t) {
                    Text::Error(m) => v.error(format!("error message: {m}")),
                    Text::Snapshot(cursor) if cursor >= offset => {
                        v.skipped += cursor - offset;
                        offset = cursor;
                    }
                    Text::Snapshot(cursor) => {
                        v.error(format!("snapshot back to {cursor} from {offset}"));
                    }
                    _ => {}
                },
                Some((Opcode::Close, p)) => {
                    closed = Some(terminal::close_code(p));
                    break;
                }
                Some(_) => {}
            }
        }
        if v.bytes > before {
            v.last_rx = Some(Instant::now());
            Live::add(&ctx.live.delivered, v.bytes - before);
            flow.set(index, offset);
        }
        if let Some(code) = closed {
            if code != 4008 || v.reconnects >= MAX_RECONNECTS {
                v.error(format!("closed by the hub ({code})"));
                return v;
            }
            // A slow reader: resume from our cursor, as a browser would.
            v.reconnects += 1;
            let url = terminal::url(&host, &id, Role::Viewer, &token, Some(offset));
            match terminal::open(ctx.dial(index, VIEWER_READ_BUF), &url).await {
                Ok((c, connected)) if connected.continuous => conn = c,
                Ok((c, _)) => {
                    v.gap = true;
                    let _ = c.close(CLOSE_GRACE).await;
                    return v;
                }
                Err(e) => {
                    v.error(format!("reconnect failed: {e}"));
                    return v;
                }
            }
            continue;
        }
        if end.borrow().is_some_and(|e| offset >= e) {
            v.complete = verifying && v.skipped == 0;
            break;
        }
        tokio::select! {
            r = conn.read_some() => match r {
                Ok(0) => {
                    v.error("eof");
                    return v;
                }
                Ok(_) => v.reads += 1,
                Err(e) => {
                    v.error(format!("io: {}", e.kind()));
                    return v;
                }
            },
            changed = end.changed() => {
                if changed.is_err() {
                    // The coordinator is gone; nothing more to wait for.
                    break;
                }
            }
            () = stop.cancelled() => break,
        }
    }
    let _ = conn.close(CLOSE_GRACE).await;
    v
}

/// `--mode output`.
async fn output(
    args: &TerminalArgs,
    ctx: &Arc<Ctx>,
    id: &str,
    host: &str,
    token: &str,
) -> anyhow::Result<Report> {
    let c = &ctx.common;
    let pattern = Arc::new(Pattern::new());
    let progress = Progress::start(
        c.progress,
        ctx.live.clone(),
        ctx.server.clone(),
        (args.viewers + 1) as u64,
    );
    let server_start = ctx.server_sample();

    // Viewers first, so each gets the whole stream live from offset 0.
    ctx.live.set_phase("opening viewers");
    let (end_tx, end_rx) = watch::channel(None);
    let stop = ctx.stop.child_token();
    let flow = Arc::new(Flow::new(args.viewers));
    let url = terminal::url(host, id, Role::Viewer, token, None);
    let mut tasks = Vec::with_capacity(args.viewers);
    for index in 0..args.viewers {
        let (conn, connected) = terminal::open(ctx.dial(index, VIEWER_READ_BUF), &url)
            .await
            .with_context(|| format!("opening viewer {index}"))?;
        if connected.cursor != 0 {
            bail!(
                "terminal {id} already has output (cursor {}): use a fresh --id",
                connected.cursor
            );
        }
        Live::add(&ctx.live.opened, 1);
        Live::add(&ctx.live.joined, 1);
        let job = ViewerJob {
            ctx: ctx.clone(),
            index,
            host: host.to_owned(),
            id: id.to_owned(),
            token: token.to_owned(),
            pattern: pattern.clone(),
            end: end_rx.clone(),
            stop: stop.clone(),
            flow: flow.clone(),
        };
        tasks.push(tokio::spawn(viewer(job, conn, connected.cursor)));
    }

    ctx.live.set_phase("opening the host");
    let host_url = terminal::url(host, id, Role::Host, token, None);
    let (mut hconn, hc) = terminal::open(ctx.dial(args.viewers, HOST_READ_BUF), &host_url)
        .await
        .context("opening the host connection")?;
    Live::add(&ctx.live.opened, 1);

    // The host writes; it reads nothing meanwhile (the hub sends a host only small control
    // messages, which the socket buffers hold) so each write is one frame and one system call.
    ctx.live.set_phase("writing");
    let mut r = Report::new("terminal");
    let mut window = Window::default();
    window.mark_start(ctx);
    let started = Instant::now();
    window.start = Some(started);
    let write_end = started + c.duration;
    let give_up = write_end + args.grace;
    let rate = args.host_rate.map(|mbps| mbps * MB);
    let mut offset = hc.cursor;
    let mut frames = 0u64;
    while Instant::now() < write_end && !ctx.stop.is_cancelled() {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64((offset - hc.cursor) as f64 / rate);
            let wait = due.saturating_duration_since(Instant::now());
            if !wait.is_zero() && !ctx.sleep(wait).await {
                break;
            }
        }
        let next = offset + args.chunk as u64;
        if args.window > 0
            && !flow
                .reached(next.saturating_sub(args.window), write_end)
                .await
        {
            break;
        }
        hconn.queue(Opcode::Binary, pattern.slice(offset, args.chunk));
        match tokio::time::timeout_at(give_up.into(), hconn.flush()).await {
            Err(_) => {
                r.error("host write timed out (the hub stopped reading)", 1);
                break;
            }
            Ok(Err(e)) => {
                r.error(format!("host write failed: {}", e.kind()), 1);
                break;
            }
            Ok(Ok(())) => {}
        }
        offset += args.chunk as u64;
        frames += 1;
        Live::add(&ctx.live.sent, 1);
    }
    let write_s = started.elapsed().as_secs_f64();
    window.publish_end = Some(Instant::now());
    window.cpu_publish_end = ctx.server_sample();
    let written = offset - hc.cursor;
    // Receivers compare against the absolute offset; tell them where the stream ends.
    let _ = end_tx.send(Some(offset));

    ctx.live.set_phase("draining");
    let drain_deadline = Instant::now().max(write_end) + args.grace;
    let mut ends = Vec::with_capacity(tasks.len());
    let mut lost_tasks = 0u64;
    for mut t in tasks {
        let res = match tokio::time::timeout_at(drain_deadline.into(), &mut t).await {
            Ok(res) => res,
            Err(_) => {
                stop.cancel();
                t.await
            }
        };
        match res {
            Ok(v) => ends.push(v),
            Err(_) => lost_tasks += 1,
        }
    }
    let last_rx = ends.iter().filter_map(|v| v.last_rx).max();
    // Server CPU covers the whole writing time even when every viewer stopped early.
    window.drain_end =
        Some(last_rx.map_or_else(Instant::now, |l| l.max(window.publish_end.unwrap_or(l))));
    window.mark_end(ctx);

    ctx.live.set_phase("closing");
    stop.cancel();
    let host_clean = hconn.close(CLOSE_GRACE).await;
    progress.stop().await;
    let server_end = ctx.server_sample();

    let viewers = ends.len() as u64;
    let received: u64 = ends.iter().map(|v| v.bytes).sum();
    let good: u64 = ends.iter().map(|v| v.good).sum();
    let expected = written.saturating_mul(args.viewers as u64);
    let complete = ends.iter().filter(|v| v.complete).count() as u64;
    let mismatched = ends.iter().filter(|v| v.mismatch_at.is_some()).count() as u64;
    let gaps = ends.iter().filter(|v| v.gap).count() as u64;
    let skipped: u64 = ends.iter().map(|v| v.skipped).sum();
    let skipping = ends.iter().filter(|v| v.skipped > 0).count() as u64;
    let reconnects: u64 = ends.iter().map(|v| u64::from(v.reconnects)).sum();
    let reads: u64 = ends.iter().map(|v| v.reads).sum();
    let span = window.drain_s();
    let total_mbps = span.map_or(Num::Missing, |s| Num::float(received as f64 / MB / s));
    let mut per_viewer: Vec<f64> = ends
        .iter()
        .filter_map(|v| {
            let s = v.last_rx?.saturating_duration_since(started).as_secs_f64();
            (s > 0.0).then(|| v.bytes as f64 / MB / s)
        })
        .collect();
    per_viewer.sort_by(f64::total_cmp);

    r.param("viewers", args.viewers);
    r.param("chunk", args.chunk);
    r.param("host_rate_mbps", args.host_rate);
    r.param("window", args.window);
    r.param("grace_s", args.grace.as_secs_f64());
    r.figure("host_frames", "output frames written", Num::Int(frames), "");
    r.figure(
        "host_bytes",
        "output bytes written",
        Num::Int(written),
        "bytes",
    );
    r.figure(
        "host_mbps",
        "host write rate",
        Num::float(written as f64 / MB / write_s),
        "MB/s",
    );
    r.figure("viewers", "viewers", Num::Int(viewers), "");
    r.figure(
        "expected_bytes",
        "bytes expected (all viewers)",
        Num::Int(expected),
        "bytes",
    );
    r.figure(
        "received_bytes",
        "bytes received (all viewers)",
        Num::Int(received),
        "bytes",
    );
    let ratio = Num::ratio(good, expected);
    r.figure("delivered_ratio", "in-order bytes / expected", ratio, "");
    r.figure(
        "complete_viewers",
        "viewers with every byte in order",
        Num::Int(complete),
        "",
    );
    r.figure(
        "mismatched_viewers",
        "viewers with a wrong byte",
        Num::Int(mismatched),
        "",
    );
    r.figure(
        "gap_viewers",
        "viewers that lost bytes (gap)",
        Num::Int(gaps),
        "",
    );
    r.figure(
        "skipping_viewers",
        "viewers that skipped ahead (snapshot)",
        Num::Int(skipping),
        "",
    );
    r.figure(
        "skipped_bytes",
        "bytes skipped for slow viewers",
        Num::Int(skipped),
        "bytes",
    );
    r.figure(
        "reconnects",
        "slow-reader reconnects",
        Num::Int(reconnects),
        "",
    );
    r.figure(
        "delivery_s",
        "first write to last byte received",
        span.map_or(Num::Missing, Num::Float),
        "s",
    );
    r.figure("total_mbps", "received by all viewers", total_mbps, "MB/s");
    let pick = |q: f64| -> Num {
        if per_viewer.is_empty() {
            return Num::Missing;
        }
        let i = ((per_viewer.len() - 1) as f64 * q).round() as usize;
        Num::Float(per_viewer[i])
    };
    r.figure("viewer_mbps_min", "per viewer, slowest", pick(0.0), "MB/s");
    r.figure(
        "viewer_mbps_median",
        "per viewer, median",
        pick(0.5),
        "MB/s",
    );
    r.figure("viewer_mbps_max", "per viewer, fastest", pick(1.0), "MB/s");
    r.figure(
        "bytes_per_read",
        "bytes per viewer socket read",
        Num::float(received as f64 / reads as f64),
        "bytes",
    );
    let cpu = window.server_cpu();
    r.figure(
        "server_cpu_s",
        "server CPU, first write to last byte",
        cpu,
        "s",
    );
    r.figure(
        "server_cpu_pct",
        "server CPU utilisation then",
        match (cpu.as_f64(), span) {
            (Some(c), Some(d)) => Num::float(c / d * 100.0),
            _ => Num::Missing,
        },
        "%",
    );
    r.figure(
        "mb_per_cpu_s",
        "MB delivered per server CPU-second",
        cpu.as_f64()
            .map_or(Num::Missing, |c| Num::float(received as f64 / MB / c)),
        "MB/cpu-s",
    );
    r.figure(
        "client_cpu_window_s",
        "loadtest CPU then",
        window.own_cpu(),
        "s",
    );
    r.figure(
        "other_cpu_s",
        "other processes' CPU then",
        window.other_cpu(),
        "s",
    );
    r.figure(
        "server_rss_start",
        "server RSS at start",
        super::rss(server_start),
        "bytes",
    );
    r.figure(
        "server_rss_end",
        "server RSS at end",
        super::rss(server_end),
        "bytes",
    );
    r.figure(
        "host_closed_clean",
        "host close answered by server",
        Num::Int(u64::from(host_clean)),
        "",
    );
    r.note("MB = 10^6 bytes; per-viewer rates are its bytes over first write → its last byte");
    for v in &ends {
        r.errors(&v.errors);
        if let Some(at) = v.mismatch_at {
            r.error(format!("wrong byte (first at offset {at})"), 1);
        }
    }
    r.error("viewer task failed", lost_tasks);
    if let Some(limit) = args.expect_mbps {
        r.check(
            "MB/s received by all viewers",
            total_mbps.as_f64(),
            limit,
            false,
            "",
        );
    }
    if let Some(limit) = c.expect_delivered {
        r.check("in-order bytes/expected", ratio.as_f64(), limit, false, "");
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cycle_through_letters() {
        assert_eq!(key(0), b'a');
        assert_eq!(key(25), b'z');
        assert_eq!(key(26), b'a');
    }

    #[tokio::test]
    async fn the_host_waits_for_the_slowest_reading_viewer() {
        let flow = Arc::new(Flow::new(2));
        let soon = || Instant::now() + Duration::from_millis(50);
        assert!(flow.reached(0, soon()).await);
        flow.set(0, 100);
        assert!(!flow.reached(100, soon()).await, "viewer 1 is still at 0");
        let f = flow.clone();
        let waiter = tokio::spawn(async move {
            f.reached(100, Instant::now() + Duration::from_secs(5))
                .await
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        // A viewer that stops reading no longer holds the host back.
        flow.set(1, u64::MAX);
        assert!(waiter.await.unwrap());
        assert_eq!(flow.slowest(), 100);
    }

    #[test]
    fn refusals_group_by_their_head() {
        assert_eq!(
            refusal_kind(
                "RateLimitExceeded: too much terminal input (limit 1000 per second); retry in 4 ms"
            ),
            "input refused: RateLimitExceeded: too much terminal input (limit 1000 per second)"
        );
        assert_eq!(refusal_kind("Forbidden"), "input refused: Forbidden");
    }
}
