//! Server resource use read from /proc: RSS from `/proc/<pid>/status` (`VmRSS`) and CPU time
//! from `/proc/<pid>/stat` (`utime + stime`), summed over every `--server-pid`.
//!
//! Reading /proc instead of asking the server keeps the measurement independent of the code
//! under test, and summing several pids covers a hub split over processes. The same reader on
//! our own pid tells whether the client, not the server, was the bottleneck.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;

/// Clock ticks per second when `getconf CLK_TCK` cannot be run; 100 on every Linux platform in
/// practice.
const DEFAULT_CLK_TCK: u64 = 100;

/// A set of processes to watch.
#[derive(Debug, Clone)]
pub struct Procs {
    pids: Vec<u32>,
    /// Clock ticks per second, for converting `utime`/`stime`.
    clk_tck: u64,
}

/// Resource use of a set of processes at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Resident set size, bytes, summed.
    pub rss: u64,
    /// User plus system CPU time, summed.
    pub cpu: Duration,
}

impl Procs {
    /// Watches `pids`; fails early when one is not readable, so a typo is not a silent zero.
    pub fn new(pids: Vec<u32>) -> anyhow::Result<Self> {
        let procs = Self {
            pids,
            clk_tck: clk_tck(),
        };
        procs.sample()?;
        Ok(procs)
    }

    /// This process, for the client's own CPU use.
    pub fn own() -> anyhow::Result<Self> {
        Self::new(vec![std::process::id()])
    }

    /// Reads the current figures.
    pub fn sample(&self) -> anyhow::Result<Sample> {
        let mut total = Sample::default();
        for pid in &self.pids {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .with_context(|| format!("reading /proc/{pid}/status"))?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .with_context(|| format!("reading /proc/{pid}/stat"))?;
            let rss_kib = parse_vm_rss_kib(&status)
                .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
            let ticks =
                parse_cpu_ticks(&stat).with_context(|| format!("unparsable /proc/{pid}/stat"))?;
            total.rss += rss_kib * 1024;
            total.cpu += ticks_to_duration(ticks, self.clk_tck);
        }
        Ok(total)
    }
}

/// `VmRSS:   12345 kB` → 12345.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `utime + stime` (fields 14 and 15) of a stat line. The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses, so fields are counted from the
/// last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // After the name: state (3), ppid (4) … utime is field 14, i.e. index 11 here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn ticks_to_duration(ticks: u64, clk_tck: u64) -> Duration {
    let tck = clk_tck.max(1);
    Duration::from_secs(ticks / tck) + Duration::from_nanos((ticks % tck) * 1_000_000_000 / tck)
}

/// Clock ticks per second from `getconf CLK_TCK` (`sysconf` would need `unsafe`, which the
/// workspace forbids).
fn clk_tck() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(DEFAULT_CLK_TCK)
    })
}

/// CPU time of the whole machine, all cores, from the `cpu` line of `/proc/stat`; compared with
/// the server's and our own, it shows how much other processes took during a measurement.
pub fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks = parse_machine_busy_ticks(&stat)?;
    Some(ticks_to_duration(ticks, clk_tck()))
}

/// Busy ticks (everything but idle and iowait) of the aggregate `cpu` line. Guest time is
/// already included in user time, so it is not added again.
fn parse_machine_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = v[..] else {
        return None;
    };
    Some(user + nice + system + irq + softirq + steal)
}

/// CPU time of each of `pids` that can still be read (processes that ended are left out).
pub fn cpu_by_pid(pids: &[u32]) -> BTreeMap<u32, Duration> {
    let tck = clk_tck();
    pids.iter()
        .filter_map(|&pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, ticks_to_duration(parse_cpu_ticks(&stat)?, tck)))
        })
        .collect()
}

/// CPU used from `before` to `after` by the processes in `after`, split into those in `ours`
/// and the rest. A process that started in between counts from zero; one that ended is missing
/// from `after` and its share is lost.
pub fn cpu_split(
    before: &BTreeMap<u32, Duration>,
    after: &BTreeMap<u32, Duration>,
    ours: &[u32],
) -> (Duration, Duration) {
    let (mut mine, mut rest) = (Duration::ZERO, Duration::ZERO);
    for (pid, cpu) in after {
        let used = cpu.saturating_sub(before.get(pid).copied().unwrap_or_default());
        if ours.contains(pid) {
            mine += used;
        } else {
            rest += used;
        }
    }
    (mine, rest)
}

/// Postgres backend processes serving database `db`, found by their process titles.
pub fn postgres_backends(db: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| is_backend_of(&String::from_utf8_lossy(&c), db))
        })
        .collect()
}

/// Whether a process title is a Postgres backend (or autovacuum worker) of database `db`:
/// `postgres: [<cluster>:] <user> <db> <client> <activity>`.
pub fn is_backend_of(title: &str, db: &str) -> bool {
    let Some(rest) = title.strip_prefix("postgres: ") else {
        return false;
    };
    rest.split(|c: char| c.is_whitespace() || c == '\0')
        .any(|word| word == db)
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files_limit(&limits)
}

fn parse_open_files_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\thub\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss_kib(status), Some(12345));
        assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn cpu_ticks_survive_odd_command_names() {
        let stat = "4242 (we (ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 1000 1000000 300 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn ticks_convert_exactly() {
        assert_eq!(ticks_to_duration(250, 100), Duration::from_millis(2500));
        assert_eq!(ticks_to_duration(1, 3), Duration::from_nanos(333_333_333));
    }

    #[test]
    fn machine_busy_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 50 2 25 500 10 0 1 1 0 0\n";
        assert_eq!(parse_machine_busy_ticks(stat), Some(161));
        assert_eq!(parse_machine_busy_ticks("cpu0 1 2\n"), None);
        assert!(machine_busy().is_some());
    }

    #[test]
    fn postgres_backends_are_told_by_their_titles() {
        let db = "loadtest_pg";
        assert!(is_backend_of(
            "postgres: 15/main: postgres loadtest_pg 127.0.0.1(38044) idle",
            db
        ));
        assert!(is_backend_of(
            "postgres: u loadtest_pg [local] INSERT\0\0",
            db
        ));
        assert!(is_backend_of(
            "postgres: 15/main: autovacuum worker loadtest_pg",
            db
        ));
        assert!(!is_backend_of("postgres: 15/main: checkpointer", db));
        assert!(!is_backend_of(
            "postgres: 15/main: u loadtest_pg2 127.0.0.1(1) idle",
            db
        ));
        assert!(!is_backend_of(
            "/usr/lib/postgresql/15/bin/postgres -D loadtest_pg",
            db
        ));
        assert!(!postgres_backends("no such database here").contains(&std::process::id()));
    }

    #[test]
    fn cpu_splits_into_ours_and_the_rest() {
        let ms = Duration::from_millis;
        let before = BTreeMap::from([(1, ms(100)), (2, ms(50)), (3, ms(10))]);
        // 3 ended; 4 started in between.
        let after = BTreeMap::from([(1, ms(400)), (2, ms(60)), (4, ms(5))]);
        assert_eq!(cpu_split(&before, &after, &[1]), (ms(300), ms(15)));
        assert_eq!(cpu_split(&before, &after, &[]), (ms(0), ms(315)));
        let own = cpu_by_pid(&[std::process::id(), u32::MAX]);
        assert_eq!(own.len(), 1);
    }

    #[test]
    fn open_files_limit_parses() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            20000                20000                files\n";
        assert_eq!(parse_open_files_limit(limits), Some(20000));
    }

    #[test]
    fn own_process_is_readable() {
        let own = Procs::own().unwrap();
        let s = own.sample().unwrap();
        assert!(s.rss > 0);
        assert!(open_files_limit().unwrap_or(1) > 0);
    }
}
