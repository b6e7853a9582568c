//! The end-of-run report: a table for people, JSON for scripts, and the pass/fail checks that
//! decide the exit code.
//!
//! Scenarios fill a [`Report`] with named figures; the report knows nothing about scenarios, so
//! adding one never touches this file.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use crate::metrics::Summary;

/// A number in the report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    /// A count.
    Int(u64),
    /// A measured quantity.
    Float(f64),
    /// A ratio such as delivered/expected, shown with six decimals so 0.9999 never reads as 1.
    Ratio(f64),
    /// Not measured in this run (e.g. no `--server-pid`).
    Missing,
}

impl Num {
    /// `Float`, or `Missing` when `v` is not finite (a ratio over zero).
    pub fn float(v: f64) -> Self {
        if v.is_finite() {
            Self::Float(v)
        } else {
            Self::Missing
        }
    }

    /// `Ratio` of `part / whole`, or `Missing` when `whole` is zero.
    pub fn ratio(part: u64, whole: u64) -> Self {
        if whole == 0 {
            Self::Missing
        } else {
            Self::Ratio(part as f64 / whole as f64)
        }
    }

    /// The value as a float, if measured.
    pub fn as_f64(self) -> Option<f64> {
        match self {
            Self::Int(n) => Some(n as f64),
            Self::Float(f) | Self::Ratio(f) => Some(f),
            Self::Missing => None,
        }
    }

    fn json(self) -> Value {
        match self {
            Self::Int(n) => json!(n),
            // Rounded so the JSON is readable; more digits than this are noise here.
            Self::Float(f) => json!((f * 1e6).round() / 1e6),
            Self::Ratio(f) => json!(f),
            Self::Missing => Value::Null,
        }
    }
}

/// One figure: a key for JSON, a label and unit for the table.
#[derive(Debug, Clone)]
struct Figure {
    key: &'static str,
    label: &'static str,
    value: Num,
    unit: &'static str,
}

/// A threshold check from `--expect-*`.
#[derive(Debug, Clone)]
pub struct Check {
    /// Which figure and how it is compared, e.g. `p99 publish→receive <= 50 ms`.
    pub name: String,
    /// The measured value (`None` when not measured, which fails the check).
    pub actual: Option<f64>,
    /// Whether it passed.
    pub ok: bool,
}

/// Everything a run found.
#[derive(Debug, Clone)]
pub struct Report {
    scenario: &'static str,
    params: Map<String, Value>,
    figures: Vec<Figure>,
    latencies: Vec<(&'static str, &'static str, Summary)>,
    errors: BTreeMap<String, u64>,
    checks: Vec<Check>,
    /// How to read the figures (what a latency spans, what a figure includes).
    notes: Vec<String>,
    /// Ctrl-C cut the run short: the figures are partial.
    interrupted: bool,
}

impl Report {
    /// An empty report for `scenario`.
    pub fn new(scenario: &'static str) -> Self {
        Self {
            scenario,
            params: Map::new(),
            figures: Vec::new(),
            latencies: Vec::new(),
            errors: BTreeMap::new(),
            checks: Vec::new(),
            notes: Vec::new(),
            interrupted: false,
        }
    }

    /// Names the report after the scenario that ran, when it reused another's run (`rooms` and
    /// `multinode` are `fanout` runs).
    pub fn set_scenario(&mut self, scenario: &'static str) {
        self.scenario = scenario;
    }

    /// A latency summary by key.
    pub fn latency_of(&self, key: &str) -> Option<&Summary> {
        self.latencies
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, _, s)| s)
    }

    /// Takes over `other`'s error counts and checks, each named with `prefix` (the part of a
    /// scenario made of several runs that they came from).
    pub fn absorb(&mut self, other: &Report, prefix: &str) {
        for (k, n) in &other.errors {
            self.error(format!("{prefix}: {k}"), *n);
        }
        for c in &other.checks {
            self.checks.push(Check {
                name: format!("{prefix}: {}", c.name),
                ..c.clone()
            });
        }
        if other.interrupted {
            self.interrupted = true;
        }
    }

    /// Adds a sentence on how to read the figures, shown under the latencies.
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// Marks the report as cut short by Ctrl-C.
    pub fn set_interrupted(&mut self) {
        self.interrupted = true;
    }

    /// Whether Ctrl-C cut the run short.
    pub fn interrupted(&self) -> bool {
        self.interrupted
    }

    /// Records a run parameter (JSON only; the command line already shows them).
    pub fn param(&mut self, key: &str, value: impl Into<Value>) {
        self.params.insert(key.to_owned(), value.into());
    }

    /// Adds a figure.
    pub fn figure(
        &mut self,
        key: &'static str,
        label: &'static str,
        value: Num,
        unit: &'static str,
    ) {
        self.figures.push(Figure {
            key,
            label,
            value,
            unit,
        });
    }

    /// A figure's value by key.
    pub fn get(&self, key: &str) -> Option<Num> {
        self.figures.iter().find(|f| f.key == key).map(|f| f.value)
    }

    /// Adds a latency summary.
    pub fn latency(&mut self, key: &'static str, label: &'static str, summary: Summary) {
        self.latencies.push((key, label, summary));
    }

    /// Adds `n` to the error count `kind`.
    pub fn error(&mut self, kind: impl Into<String>, n: u64) {
        if n > 0 {
            *self.errors.entry(kind.into()).or_default() += n;
        }
    }

    /// Adds every error count of `errors`.
    pub fn errors(&mut self, errors: &BTreeMap<String, u64>) {
        for (k, n) in errors {
            self.error(k.clone(), *n);
        }
    }

    /// Checks `actual <= limit` (`at_most`) or `actual >= limit`.
    pub fn check(
        &mut self,
        what: &str,
        actual: Option<f64>,
        limit: f64,
        at_most: bool,
        unit: &str,
    ) {
        let op = if at_most { "<=" } else { ">=" };
        let ok = actual.is_some_and(|a| if at_most { a <= limit } else { a >= limit });
        self.checks.push(Check {
            name: format!("{what} {op} {limit}{unit}"),
            actual,
            ok,
        });
    }

    /// Whether every check passed (true when there are none).
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// The human-readable summary.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "== loadtest {} ==", self.scenario);
        let width = self
            .figures
            .iter()
            .map(|f| f.label.chars().count())
            .max()
            .unwrap_or(0);
        for f in &self.figures {
            let _ = writeln!(
                s,
                "  {:<width$}  {:>16}  {}",
                f.label,
                format_num(f.value),
                f.unit
            );
        }
        if !self.latencies.is_empty() {
            let w = self
                .latencies
                .iter()
                .map(|(_, l, _)| l.chars().count())
                .max()
                .unwrap_or(0)
                .max(7);
            let _ = writeln!(
                s,
                "  {:<w$}  {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "latency (ms)", "count", "mean", "p50", "p90", "p99", "p99.9", "max"
            );
            for (_, label, l) in &self.latencies {
                let _ = writeln!(
                    s,
                    "  {:<w$}  {:>10} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                    label, l.count, l.mean_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
                );
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        if self.errors.is_empty() {
            let _ = writeln!(s, "  errors: none");
        } else {
            let _ = writeln!(s, "  errors:");
            for (k, n) in &self.errors {
                let _ = writeln!(s, "    {n:>10}  {k}");
            }
        }
        if self.interrupted {
            let _ = writeln!(
                s,
                "  INTERRUPTED: the run was cut short; figures are partial"
            );
        }
        for c in &self.checks {
            let actual = c.actual.map_or("not measured".to_owned(), trim_float);
            let verdict = if c.ok { "PASS" } else { "FAIL" };
            let _ = writeln!(s, "  {verdict}  {} (measured {actual})", c.name);
        }
        s
    }

    /// Every figure as JSON.
    pub fn to_json(&self) -> Value {
        let figures: Map<String, Value> = self
            .figures
            .iter()
            .map(|f| (f.key.to_owned(), f.value.json()))
            .collect();
        let latencies: Map<String, Value> = self
            .latencies
            .iter()
            .map(|(k, _, s)| ((*k).to_owned(), json!(s)))
            .collect();
        let checks: Vec<Value> = self
            .checks
            .iter()
            .map(|c| json!({"check": c.name, "actual": c.actual, "ok": c.ok}))
            .collect();
        json!({
            "scenario": self.scenario,
            "params": self.params,
            "figures": figures,
            "latency": latencies,
            "errors": self.errors,
            "checks": checks,
            "notes": self.notes,
            "passed": self.passed(),
            "interrupted": self.interrupted,
        })
    }
}

/// `1234567` → `1,234,567`; floats get a precision that suits their size.
pub fn format_num(n: Num) -> String {
    match n {
        Num::Int(i) => group(i),
        Num::Ratio(f) => format!("{f:.6}"),
        Num::Float(f) if f.abs() >= 10_000.0 => {
            let sign = if f < 0.0 { "-" } else { "" };
            format!("{sign}{}", group(f.abs().round() as u64))
        }
        Num::Float(f) if f.abs() >= 100.0 => format!("{f:.1}"),
        Num::Float(f) if f.abs() >= 1.0 => format!("{f:.3}"),
        Num::Float(f) => format!("{f:.4}"),
        Num::Missing => "-".to_owned(),
    }
}

/// Six decimals without trailing zeros: `31.663`, `0.99999`, `1`.
fn trim_float(f: f64) -> String {
    let s = format!("{f:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn group(mut n: u64) -> String {
    let mut parts = Vec::new();
    while n >= 1000 {
        parts.push(format!("{:03}", n % 1000));
        n /= 1000;
    }
    parts.push(n.to_string());
    parts.reverse();
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut r = Report::new("fanout");
        r.param("rate", 1000);
        r.figure("delivered", "delivered", Num::Int(9_999_000), "msgs");
        r.figure(
            "delivered_ratio",
            "delivered / expected",
            Num::float(0.9999),
            "",
        );
        r.figure("server_cpu_s", "server CPU", Num::Missing, "s");
        r.latency(
            "publish_receive",
            "publish→receive",
            Summary {
                count: 10,
                mean_ms: 1.5,
                p50_ms: 1.0,
                p90_ms: 2.0,
                p99_ms: 3.0,
                p999_ms: 4.0,
                max_ms: 5.0,
            },
        );
        r.error("connect timeout", 2);
        r.error("nothing", 0);
        r.note("publish→receive runs from the publisher's write");
        r
    }

    #[test]
    fn numbers_format_for_people() {
        assert_eq!(format_num(Num::Int(0)), "0");
        assert_eq!(format_num(Num::Int(1_234_567)), "1,234,567");
        assert_eq!(format_num(Num::Int(1_000)), "1,000");
        assert_eq!(format_num(Num::Float(1_234_567.8)), "1,234,568");
        assert_eq!(format_num(Num::Float(2.5)), "2.500");
        assert_eq!(format_num(Num::Float(0.99991)), "0.9999");
        assert_eq!(format_num(Num::float(f64::NAN)), "-");
        assert_eq!(format_num(Num::ratio(99_999, 100_000)), "0.999990");
        assert_eq!(format_num(Num::ratio(1, 0)), "-");
        assert_eq!(trim_float(31.6630001), "31.663");
        assert_eq!(trim_float(1.0), "1");
        assert_eq!(trim_float(0.99999), "0.99999");
    }

    #[test]
    fn table_lists_figures_latencies_errors_and_checks() {
        let mut r = sample();
        r.check("p99 publish→receive", Some(3.0), 50.0, true, " ms");
        r.check("delivered/expected", Some(0.9999), 1.0, false, "");
        let t = r.table();
        assert!(t.contains("== loadtest fanout =="), "{t}");
        assert!(t.contains("9,999,000  msgs"), "{t}");
        assert!(t.contains("publish→receive"), "{t}");
        assert!(t.contains("3.000"), "{t}");
        assert!(t.contains("2  connect timeout"), "{t}");
        assert!(
            t.contains("note: publish→receive runs from the publisher's write"),
            "{t}"
        );
        assert!(!t.contains("nothing"), "{t}");
        assert!(t.contains("PASS  p99 publish→receive <= 50 ms"), "{t}");
        assert!(t.contains("FAIL  delivered/expected >= 1"), "{t}");
        assert!(!r.passed());
    }

    #[test]
    fn json_carries_every_figure() {
        let r = sample();
        let j = r.to_json();
        assert_eq!(j["scenario"], "fanout");
        assert_eq!(j["params"]["rate"], 1000);
        assert_eq!(j["figures"]["delivered"], 9_999_000);
        assert_eq!(j["figures"]["delivered_ratio"], 0.9999);
        assert!(j["figures"]["server_cpu_s"].is_null());
        assert_eq!(j["latency"]["publish_receive"]["p99_ms"], 3.0);
        assert_eq!(j["errors"]["connect timeout"], 2);
        assert_eq!(
            j["notes"][0],
            "publish→receive runs from the publisher's write"
        );
        assert_eq!(j["passed"], true);
    }

    #[test]
    fn unmeasured_values_fail_checks() {
        let mut r = Report::new("idle");
        r.check("x", None, 1.0, true, "");
        assert!(!r.passed());
    }
}
