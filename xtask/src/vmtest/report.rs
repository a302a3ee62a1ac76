//! Reading a guest's console into a result, the summary file kept between runs, and the
//! README table generated from it.
//!
//! (Over 500 lines, about half of it tests of console parsing on real guest output.)

use std::{fs, path::Path};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use super::MARK;

/// What one kernel's run gave.
#[derive(Clone, Debug, Default)]
pub struct KernelRun {
    pub label: String,
    /// `uname -r` in the guest.
    pub release: String,
    pub package: String,
    pub accel: String,
    pub wall_secs: u64,
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    /// Tests that returned early because this kernel lacks a feature they need.
    pub needs: u64,
    /// `binary::test: feature (kernel ≥ X)` of each of those.
    pub needs_list: Vec<String>,
    /// `binary::test` of every failed test, and binaries that died without a result.
    pub failures: Vec<String>,
    /// `faultline check` items reported unavailable: (name, why).
    pub unavailable: Vec<(String, String)>,
    /// Processes a test binary left running: `binary: pid args; …`.
    pub leftovers: Vec<String>,
    /// What went wrong outside the tests (timeout, crash, no check output).
    pub problems: Vec<String>,
    /// Where a guest that stopped before its end was (`binary::test`, or between tests).
    pub stalled_in: Option<String>,
    /// The first line the guest kernel printed about a stall, lockup or panic, if any.
    pub kernel_said: Option<String>,
    /// What each failed test said when it panicked (`binary: panicked at …` and the message),
    /// shown when the run is not ok: the console's tail is mostly the backtrace.
    pub panics: Vec<String>,
    /// The console's last lines, shown when the run is not ok.
    pub console_tail: Vec<String>,
    pub console_log: String,
}

impl KernelRun {
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.problems.is_empty() && self.passed > 0
    }

    /// A test that gave no result, with the reason.
    fn no_result(&mut self, test: &str, why: &str) {
        self.failed += 1;
        self.failures.push(format!("{test}: no result: {why}"));
    }

    fn add(&mut self, passed: u64, failed: u64, ignored: u64) {
        self.passed += passed;
        self.failed += failed;
        self.ignored += ignored;
    }

    /// The one line printed per kernel.
    pub fn line(&self) -> String {
        let mut s = format!(
            "vmtest {}: {} ({}, {}, {} s): {} passed, {} failed, {} needs",
            self.label,
            if self.release.is_empty() {
                "?"
            } else {
                &self.release
            },
            self.package,
            self.accel,
            self.wall_secs,
            self.passed,
            self.failed,
            self.needs
        );
        if !self.failures.is_empty() {
            s.push_str(&format!(" [{}]", self.failures.join(", ")));
        }
        if !self.needs_list.is_empty() {
            s.push_str(&format!("; needs: {}", self.needs_list.join(", ")));
        }
        if self.unavailable.is_empty() {
            s.push_str("; every checked feature available");
        } else {
            let items: Vec<String> = self
                .unavailable
                .iter()
                .map(|(n, why)| format!("{n}: {}", first_line(why)))
                .collect();
            s.push_str(&format!("; unavailable: {}", items.join("; ")));
        }
        for l in &self.leftovers {
            s.push_str(&format!("; left running after {l}"));
        }
        for p in &self.problems {
            s.push_str(&format!("; {p}"));
        }
        s
    }

    fn to_json(&self) -> Value {
        json!({
            "kernel": self.label,
            "release": self.release,
            "package": self.package,
            "accel": self.accel,
            "wall_secs": self.wall_secs,
            "passed": self.passed,
            "failed": self.failed,
            "ignored": self.ignored,
            "needs": self.needs,
            "needs_list": self.needs_list,
            "failures": self.failures,
            "unavailable": self.unavailable.iter()
                .map(|(n, w)| json!({"name": n, "why": w}))
                .collect::<Vec<_>>(),
            "problems": self.problems,
            "leftovers": self.leftovers,
            "stalled_in": self.stalled_in,
            "kernel_said": self.kernel_said,
            "ok": self.ok(),
        })
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// The line a test prints (past libtest's capture) when the running kernel lacks a feature it
/// needs: `NEEDS <test>: <feature> (kernel ≥ X)` (tracer/tests/common/needs.rs).
const NEEDS_MARK: &str = "NEEDS ";

/// One test binary's results while its output is read.
#[derive(Default)]
struct Binary {
    name: String,
    /// "running N tests".
    expected: Option<u64>,
    /// test name → "ok" / "FAILED" / "ignored".
    outcomes: Vec<(String, String)>,
    /// A "test x ... " line whose outcome comes on a later line (the test wrote to the console
    /// past libtest's capture, or the kernel printed in between).
    pending: Option<String>,
    /// Tests that said which kernel feature they need: (test, feature).
    needs: Vec<(String, String)>,
    /// libtest's "test result:" totals (passed, failed, ignored).
    totals: Option<(u64, u64, u64)>,
    /// Panic messages: each "panicked at" line with the message lines after it.
    panics: Vec<String>,
    /// Message lines still to take after a "panicked at" line.
    panic_lines_left: usize,
}

/// How many lines of a panic's message are kept (a graph dumped in an assertion is one line).
const PANIC_MESSAGE_LINES: usize = 4;

impl Binary {
    fn outcome(&mut self, name: &str, outcome: &str) {
        let o = if outcome.starts_with("ignored") {
            "ignored"
        } else {
            outcome
        };
        if matches!(o, "ok" | "FAILED" | "ignored") {
            self.outcomes.push((name.to_owned(), o.to_owned()));
        }
    }

    /// One line of libtest output (console noise is ignored).
    fn line(&mut self, line: &str) {
        self.panic_line(line);
        let line = match line.find(NEEDS_MARK) {
            Some(pos) => {
                let (before, needs) = line.split_at(pos);
                if let Some((test, feature)) = needs[NEEDS_MARK.len()..].split_once(": ") {
                    self.needs
                        .push((test.trim().to_owned(), feature.trim().to_owned()));
                }
                before.trim()
            }
            None => line,
        };
        if let Some(n) = line
            .strip_prefix("running ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
        {
            self.expected = Some(n);
        } else if let Some(rest) = line.strip_prefix("test result: ") {
            self.totals = totals(rest);
        } else if let Some(rest) = line.strip_prefix("test ") {
            if let Some((name, outcome)) = rest.rsplit_once(" ...") {
                let outcome = outcome.trim();
                if is_outcome(outcome) {
                    self.pending = None;
                    self.outcome(name, outcome);
                } else {
                    self.pending = Some(name.to_owned());
                }
            }
        } else if let Some(name) = self.pending.take() {
            if is_outcome(line) {
                self.outcome(&name, line);
            } else {
                self.pending = Some(name);
            }
        }
    }

    /// Counts the tests that reported an outcome: (passed, failed, ignored).
    fn tally(&self, run: &mut KernelRun) -> (u64, u64, u64) {
        run.panics.extend(self.panics.iter().cloned());
        let (mut passed, mut failed, mut ignored) = (0, 0, 0);
        for (test, o) in &self.outcomes {
            match (o.as_str(), self.needs_of(test)) {
                ("ok", Some((_, feature))) => {
                    run.needs += 1;
                    run.needs_list
                        .push(format!("{}::{test}: {feature}", self.name));
                }
                ("ok", None) => passed += 1,
                ("FAILED", _) => {
                    failed += 1;
                    run.failures.push(format!("{}::{test}", self.name));
                }
                _ => ignored += 1,
            }
        }
        (passed, failed, ignored)
    }

    /// Keeps a panic's location and message, which libtest prints before the backtrace.
    fn panic_line(&mut self, line: &str) {
        if line.contains("panicked at") {
            self.panics.push(format!("{}: {line}", self.name));
            self.panic_lines_left = PANIC_MESSAGE_LINES;
        } else if self.panic_lines_left > 0 {
            if line.starts_with("stack backtrace:") || line.starts_with("note: ") {
                self.panic_lines_left = 0;
            } else if let Some(last) = self.panics.last_mut() {
                last.push_str(" / ");
                last.push_str(line);
                self.panic_lines_left -= 1;
            }
        }
    }

    fn needs_of(&self, test: &str) -> Option<&(String, String)> {
        self.needs.iter().find(|(n, _)| n == test)
    }

    /// Adds this binary's counts to the run. Every test counts once: a test that returned after
    /// naming a missing feature counts as "needs", not passed; tests that gave no result
    /// because the binary died count as failed, each.
    fn finish(self, rc: i32, run: &mut KernelRun) {
        let (mut passed, mut failed, mut ignored) = self.tally(run);
        let reported = self.outcomes.len() as u64;
        // libtest's own totals win when console noise hid some per-test lines.
        if let Some((p, f, i)) = self.totals {
            let needs = self
                .outcomes
                .iter()
                .filter(|(t, o)| o == "ok" && self.needs_of(t).is_some())
                .count() as u64;
            if p + f + i > reported {
                passed = p.saturating_sub(needs);
                if f > failed {
                    run.failures.push(format!(
                        "{}: {} more failed tests (see the console log)",
                        self.name,
                        f - failed
                    ));
                }
                failed = f;
                ignored = i;
            }
        } else if rc != 0 {
            let missing = match self.expected {
                Some(n) => n.saturating_sub(reported),
                None => 1,
            };
            // A non-zero exit with every test reported and none failed is a failure too.
            let missing = if missing == 0 && failed == 0 {
                1
            } else {
                missing
            };
            if missing == 0 {
                return run.add(passed, failed, ignored);
            }
            failed += missing;
            run.failures.push(format!(
                "{}: {missing} test{} gave no result (exited with {rc}{})",
                self.name,
                if missing == 1 { "" } else { "s" },
                exit_meaning(rc)
            ));
        }
        run.add(passed, failed, ignored);
    }

    /// The guest stopped while this binary ran: the test in progress (the last "test x ..."
    /// line without an outcome, or else the first listed test without one) is where it
    /// stalled; every other listed test without an outcome was not reached. Returns where it
    /// stalled.
    fn finish_stopped(self, listed: Option<&[String]>, run: &mut KernelRun) -> String {
        let (passed, failed, ignored) = self.tally(run);
        run.add(passed, failed, ignored);
        let done = |t: &str| self.outcomes.iter().any(|(n, _)| n == t);
        let unreported: Vec<&str> = listed
            .unwrap_or_default()
            .iter()
            .map(String::as_str)
            .filter(|t| !done(t))
            .collect();
        let stuck = self
            .pending
            .clone()
            .or_else(|| unreported.first().map(|t| t.to_string()));
        let at = match &stuck {
            Some(t) => format!("{}::{t}", self.name),
            None => format!("{} (before its first test)", self.name),
        };
        run.no_result(&at, "the guest stalled in this test");
        for t in unreported.iter().filter(|t| Some(**t) != stuck.as_deref()) {
            run.no_result(
                &format!("{}::{t}", self.name),
                &format!("not reached (the guest stalled in {at})"),
            );
        }
        at
    }
}

/// What a test binary's exit code says, for the failure line.
fn exit_meaning(rc: i32) -> &'static str {
    match rc {
        127 => ": not found in the guest",
        126 => ": not executable in the guest",
        137 => ": killed, by the guest's 900 s timeout or the OOM killer",
        -1 => ": no exit code",
        _ => "",
    }
}

/// Console lines in which the kernel reports that it is stuck or dead.
const KERNEL_DISTRESS: [&str; 8] = [
    "self-detected stall",
    "detected stalls on CPUs",
    "kthread timer wakeup didn't happen",
    "soft lockup",
    "hard LOCKUP",
    "blocked for more than",
    "Kernel panic",
    "Oops:",
];

/// The first line of `lines` in which the kernel says it stalled, locked up or died.
pub fn kernel_distress(lines: &[String]) -> Option<String> {
    lines
        .iter()
        .find(|l| KERNEL_DISTRESS.iter().any(|m| l.contains(m)))
        .map(|l| l.trim().to_owned())
}

fn is_outcome(s: &str) -> bool {
    matches!(s, "ok" | "FAILED") || s.starts_with("ignored")
}

/// "ok. 3 passed; 1 failed; 0 ignored; …" → (3, 1, 0).
fn totals(rest: &str) -> Option<(u64, u64, u64)> {
    let (_, counts) = rest.split_once(". ")?;
    let get = |what: &str| -> Option<u64> {
        counts
            .split(';')
            .find_map(|c| c.trim().strip_suffix(what)?.trim().parse().ok())
    };
    Some((get("passed")?, get("failed")?, get("ignored")?))
}

/// The tests of each kernel test binary (`<binary> --list` on the host), so that a guest that
/// stops early still gives every test a verdict.
pub type Listed = Vec<(String, Vec<String>)>;

/// How many of the console's last lines a failed run shows.
const TAIL_LINES: usize = 25;

/// Parses the `@@VMTEST` lines and libtest's own lines of one run.
pub fn parse_guest(lines: &[String], listed: &Listed) -> KernelRun {
    let mut run = KernelRun::default();
    let mut current: Option<Binary> = None;
    let mut begun: Vec<String> = Vec::new();
    let mut finished = false;
    let mut saw_check = false;
    for raw in lines {
        // The console can put kernel messages on the same line; find the mark anywhere.
        let line = raw.trim();
        if let Some(pos) = line.find(MARK) {
            let rest = line[pos + MARK.len()..].trim();
            let (word, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            match word {
                "kernel" => {
                    run.release = tail.split_whitespace().next().unwrap_or("").to_owned();
                }
                "check" => {
                    saw_check = true;
                    let json_text = tail.split_once(' ').map_or("", |(_, j)| j);
                    match serde_json::from_str::<Value>(json_text) {
                        Ok(v) => run.unavailable = unavailable(&v),
                        Err(_) => run
                            .problems
                            .push(format!("faultline check --json gave no JSON ({tail})")),
                    }
                }
                "done" => finished = true,
                "leftovers" => {
                    if let Some((name, left)) = tail.split_once(' ') {
                        if !left.trim().is_empty() {
                            run.leftovers.push(format!("{name}: {}", left.trim()));
                        }
                    }
                }
                "begin" => {
                    begun.push(tail.to_owned());
                    current = Some(Binary {
                        name: tail.to_owned(),
                        ..Default::default()
                    });
                }
                "end" => {
                    let rc = tail
                        .rsplit_once("rc=")
                        .and_then(|(_, n)| n.trim().parse::<i32>().ok())
                        .unwrap_or(-1);
                    if let Some(b) = current.take() {
                        b.finish(rc, &mut run);
                    }
                }
                _ => {}
            }
            continue;
        }
        if let Some(b) = current.as_mut() {
            b.line(line);
        }
    }
    let tests_of = |name: &str| {
        listed
            .iter()
            .find(|(b, _)| b == name)
            .map(|(_, t)| t.as_slice())
    };
    if !finished {
        // The guest stopped before its end: say where, and give every test without an outcome
        // a verdict.
        let at = match current.take() {
            Some(b) => {
                let list = tests_of(&b.name);
                b.finish_stopped(list, &mut run)
            }
            None => match begun.last() {
                Some(b) => format!("between {b} and the next test binary"),
                None => "before the first test binary".to_owned(),
            },
        };
        for (name, tests) in listed.iter().filter(|(b, _)| !begun.contains(b)) {
            for t in tests {
                run.no_result(
                    &format!("{name}::{t}"),
                    &format!("not reached (the guest stalled in {at})"),
                );
            }
        }
        run.stalled_in = Some(at);
        run.kernel_said = kernel_distress(lines);
    }
    let mut tail: Vec<String> = lines
        .iter()
        .rev()
        .filter(|l| !l.contains(MARK) && !l.trim().is_empty())
        .take(TAIL_LINES)
        .cloned()
        .collect();
    tail.reverse();
    run.console_tail = tail;
    if !saw_check {
        run.problems
            .push("no `faultline check` output from the guest".into());
    }
    run
}

/// Items `faultline check --json` reports unavailable, skipping the "privileges" item's
/// normal case and the kprobes line (faultline does not need kprobes).
fn unavailable(v: &Value) -> Vec<(String, String)> {
    let items = v
        .as_array()
        .or_else(|| v["items"].as_array())
        .cloned()
        .unwrap_or_default();
    items
        .iter()
        .filter(|i| i["available"] == Value::Bool(false))
        .filter_map(|i| {
            let name = i["name"].as_str()?.to_owned();
            if name == "kprobes" {
                return None;
            }
            Some((name, i["detail"].as_str().unwrap_or("").to_owned()))
        })
        .collect()
}

/// The last result per kernel, kept in target/vmtest/summary.json.
#[derive(Default)]
pub struct Summary {
    runs: Vec<Value>,
}

impl Summary {
    pub fn load(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path).with_context(|| {
            format!(
                "reading {} (run `cargo xtask vmtest` first)",
                path.display()
            )
        })?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        Ok(Self {
            runs: v["kernels"].as_array().cloned().unwrap_or_default(),
        })
    }

    pub fn record(&mut self, run: KernelRun) {
        self.runs.retain(|r| r["kernel"] != run.label.as_str());
        self.runs.push(run.to_json());
        self.runs
            .sort_by_key(|r| order(r["kernel"].as_str().unwrap_or("")));
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(&json!({ "kernels": self.runs }))
            .context("encoding the summary")?;
        fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }

    /// The README table: one row per kernel.
    pub fn table(&self) -> String {
        let mut s = String::from(
            "| Kernel | Package | Kernel tests | Unavailable in `faultline check` |\n|---|---|---|---|\n",
        );
        for r in &self.runs {
            let unavailable: Vec<String> = r["unavailable"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|u| {
                            let name = u["name"].as_str()?;
                            Some(match u["why"].as_str().map(first_line) {
                                Some(why) if !why.is_empty() => format!("{name} ({why})"),
                                _ => name.to_owned(),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let problems: Vec<String> = r["problems"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let mut tests = format!(
                "{} passed, {} failed",
                r["passed"].as_u64().unwrap_or(0),
                r["failed"].as_u64().unwrap_or(0)
            );
            let needs: Vec<&str> = r["needs_list"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let failures: Vec<&str> = r["failures"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if !failures.is_empty() {
                tests.push_str(&format!(" ({})", failures.join(", ")));
            }
            if !needs.is_empty() {
                tests.push_str(&format!(", {} needs: {}", needs.len(), needs.join("; ")));
            }
            if !problems.is_empty() {
                tests.push_str(&format!(" ({})", problems.join("; ")));
            }
            s.push_str(&format!(
                "| {} (`{}`) | {} | {} | {} |\n",
                r["kernel"].as_str().unwrap_or("?"),
                r["release"].as_str().unwrap_or("?"),
                r["package"].as_str().unwrap_or("?"),
                tests.replace('|', "/"),
                if unavailable.is_empty() {
                    "none".to_owned()
                } else {
                    unavailable.join(", ").replace('|', "/")
                }
            ));
        }
        s
    }
}

fn order(label: &str) -> (u8, Vec<u64>) {
    if label == "host" {
        return (1, vec![]);
    }
    (0, label.split('.').filter_map(|n| n.parse().ok()).collect())
}

pub const README_BEGIN: &str = "<!-- vmtest:begin (generated by `cargo xtask vmtest --readme`) -->";
pub const README_END: &str = "<!-- vmtest:end -->";

/// Replaces the text between the markers; adds a "Supported kernels" section with them at the
/// end when the README has none yet.
pub fn splice_readme(readme: &str, table: &str) -> String {
    let body = format!("{README_BEGIN}\n{table}{README_END}");
    match (readme.find(README_BEGIN), readme.find(README_END)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{}{}", &readme[..b], body, &readme[e + README_END.len()..])
        }
        _ => format!(
            "{}\n\n## Supported kernels\n\nThe kernel tests on Debian's kernel packages in QEMU and on the host \
             (`cargo xtask vmtest`); last run:\n\n{body}\n",
            readme.trim_end()
        ),
    }
}

pub fn rewrite_readme(path: &Path, summary: &Summary) -> Result<()> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    fs::write(path, splice_readme(&text, &summary.table()))
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_owned).collect()
    }

    #[test]
    fn guest_console_gives_counts_failures_and_missing_features() {
        let console = lines(
            r#"[    1.2] random kernel line
@@VMTEST kernel 6.1.0-56-amd64 nproc=2
@@VMTEST check rc=0 [{"name":"btf","available":true,"detail":"x","without":"y"},{"name":"attach tp_btf","available":false,"detail":"verifier rejected\nmore","without":"z"},{"name":"kprobes","available":false,"detail":"","without":""}]
@@VMTEST begin kernel
running 3 tests
test a_convoy_is_seen ... ok
test uffd_waits ... FAILED
test slow_one ... ignored
@@VMTEST end kernel rc=101
@@VMTEST begin diagnose
@@VMTEST end diagnose rc=137
@@VMTEST done"#,
        );
        let run = parse_guest(&console, &Listed::new());
        assert_eq!(run.release, "6.1.0-56-amd64");
        assert_eq!((run.passed, run.failed, run.ignored), (1, 2, 1));
        assert_eq!(
            run.failures,
            vec![
                "kernel::uffd_waits".to_string(),
                "diagnose: 1 test gave no result (exited with 137: killed, by the guest's 900 s timeout or the OOM killer)".to_string()
            ]
        );
        assert_eq!(
            run.unavailable,
            vec![(
                "attach tp_btf".to_string(),
                "verifier rejected\nmore".to_string()
            )]
        );
        assert!(!run.ok());
        assert!(
            run.line()
                .ends_with("; unavailable: attach tp_btf: verifier rejected"),
            "{}",
            run.line()
        );
    }

    #[test]
    fn every_test_counts_once_and_needs_are_counted_apart() {
        let console = lines(
            r#"@@VMTEST kernel 6.1.0-56-amd64 nproc=2
@@VMTEST check rc=0 []
@@VMTEST begin diagnose
running 4 tests
test a ... ok
test two_hop ... NEEDS two_hop: task_struct.blocker (kernel ≥ 6.16)
ok
test b ... [   12.3] Out of memory: Killed process 99
FAILED
test c ... FAILED
test result: FAILED. 2 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out
@@VMTEST end diagnose rc=101
@@VMTEST begin kernel
running 5 tests
test d ... ok
@@VMTEST end kernel rc=137
@@VMTEST done"#,
        );
        let run = parse_guest(&console, &Listed::new());
        assert_eq!((run.passed, run.failed, run.needs), (2, 6, 1));
        assert_eq!(
            run.needs_list,
            ["diagnose::two_hop: task_struct.blocker (kernel ≥ 6.16)"]
        );
        assert_eq!(
            run.failures,
            [
                "diagnose::b",
                "diagnose::c",
                "kernel: 4 tests gave no result (exited with 137: killed, by the guest's 900 s timeout or the OOM killer)"
            ]
        );
        assert!(run.line().contains("2 passed, 6 failed, 1 needs"));
    }

    #[test]
    fn a_guest_that_stalls_gives_every_test_a_verdict_and_the_kernel_line() {
        let console = lines(
            r#"@@VMTEST kernel 6.1.0-57-amd64 nproc=2
@@VMTEST check rc=0 []
@@VMTEST begin diagnose
running 1 test
test d1 ... ok
test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out
@@VMTEST end diagnose rc=0
@@VMTEST begin kernel
running 3 tests
test k1 ... ok
test k2 ... [  130.1] rcu: INFO: rcu_preempt self-detected stall on CPU
[  130.2] rcu: rcu_preempt kthread timer wakeup didn't happen for 2501 jiffies!"#,
        );
        let listed: Listed = vec![
            ("diagnose".into(), vec!["d1".into()]),
            ("kernel".into(), vec!["k1".into(), "k2".into(), "k3".into()]),
            ("kernel_locks".into(), vec!["l1".into()]),
        ];
        let run = parse_guest(&console, &listed);
        assert_eq!((run.passed, run.failed), (2, 3));
        assert_eq!(run.stalled_in.as_deref(), Some("kernel::k2"));
        assert_eq!(
            run.failures,
            [
                "kernel::k2: no result: the guest stalled in this test",
                "kernel::k3: no result: not reached (the guest stalled in kernel::k2)",
                "kernel_locks::l1: no result: not reached (the guest stalled in kernel::k2)",
            ]
        );
        assert!(run
            .kernel_said
            .as_deref()
            .is_some_and(|l| l.contains("self-detected stall")));
        assert!(run
            .console_tail
            .last()
            .is_some_and(|l| l.contains("jiffies")));
        assert!(!run.ok());
    }

    #[test]
    fn a_failed_test_keeps_its_panic_message_not_only_the_backtrace() {
        let console = "@@VMTEST begin overload\nrunning 1 test\n\
            test storm ... FAILED\nfailures:\n---- storm stdout ----\n\
            thread 'storm' panicked at tracer/tests/overload.rs:226:5:\n\
            a 4 KiB ring buffer lost nothing\n\
            stack backtrace:\n   0: rust_begin_unwind\n\
            test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n\
            @@VMTEST end overload rc=101\n@@VMTEST done";
        let run = parse_guest(&lines(console), &Listed::new());
        assert_eq!(
            run.panics,
            vec!["overload: thread 'storm' panicked at tracer/tests/overload.rs:226:5: / a 4 KiB ring buffer lost nothing"]
        );
        assert_eq!(run.failed, 1);
    }

    #[test]
    fn a_run_without_check_output_or_tests_is_not_ok() {
        let run = parse_guest(
            &lines("@@VMTEST kernel 6.12.1 nproc=2\n@@VMTEST done"),
            &Listed::new(),
        );
        assert!(!run.ok());
        assert_eq!(run.problems.len(), 1);
    }

    #[test]
    fn readme_section_is_replaced_between_markers_only() {
        let readme = format!("# x\nbefore\n{README_BEGIN}\nold table\n{README_END}\nafter\n");
        let out = splice_readme(&readme, "| new |\n");
        assert_eq!(
            out,
            format!("# x\nbefore\n{README_BEGIN}\n| new |\n{README_END}\nafter\n")
        );
        let added = splice_readme("# x\n", "| t |\n");
        assert!(added.contains("## Supported kernels"));
        assert!(added.ends_with(&format!("| t |\n{README_END}\n")));
    }

    #[test]
    fn summary_keeps_the_last_run_per_kernel_in_version_order() {
        let mut s = Summary::default();
        for (label, passed) in [("host", 1), ("6.12", 2), ("6.1", 3), ("6.1", 4)] {
            s.record(KernelRun {
                label: label.into(),
                passed,
                ..Default::default()
            });
        }
        let labels: Vec<&str> = s.runs.iter().filter_map(|r| r["kernel"].as_str()).collect();
        assert_eq!(labels, ["6.1", "6.12", "host"]);
        assert_eq!(s.runs[0]["passed"], 4);
        assert!(s
            .table()
            .contains("| 6.1 (``) |  | 4 passed, 0 failed | none |"));
    }
}
