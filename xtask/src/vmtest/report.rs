//! Reading a guest's console into a result, the summary file kept between runs, and the
//! README table generated from it.

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
    /// `binary::test` of every failed test, and binaries that died without a result.
    pub failures: Vec<String>,
    /// `faultline check` items reported unavailable: (name, why).
    pub unavailable: Vec<(String, String)>,
    /// What went wrong outside the tests (timeout, crash, no check output).
    pub problems: Vec<String>,
    pub console_log: String,
}

impl KernelRun {
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.problems.is_empty() && self.passed > 0
    }

    /// The one line printed per kernel.
    pub fn line(&self) -> String {
        let mut s = format!(
            "vmtest {}: {} ({}, {}, {} s): {} passed, {} failed",
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
            self.failed
        );
        if !self.failures.is_empty() {
            s.push_str(&format!(" [{}]", self.failures.join(", ")));
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
            "failures": self.failures,
            "unavailable": self.unavailable.iter()
                .map(|(n, w)| json!({"name": n, "why": w}))
                .collect::<Vec<_>>(),
            "problems": self.problems,
            "ok": self.ok(),
        })
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Parses the `@@VMTEST` lines and libtest's own lines of one run.
pub fn parse_guest(lines: &[String]) -> KernelRun {
    let mut run = KernelRun::default();
    let mut current: Option<String> = None;
    let mut failed_in_binary = 0;
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
                "begin" => {
                    current = Some(tail.to_owned());
                    failed_in_binary = 0;
                }
                "end" => {
                    let rc = tail
                        .rsplit_once("rc=")
                        .and_then(|(_, n)| n.trim().parse::<i32>().ok())
                        .unwrap_or(-1);
                    if rc != 0 && failed_in_binary == 0 {
                        let name = current.clone().unwrap_or_default();
                        run.failed += 1;
                        run.failures
                            .push(format!("{name} exited with {rc} and no test result"));
                    }
                    current = None;
                }
                _ => {}
            }
            continue;
        }
        let Some(binary) = &current else { continue };
        if let Some(rest) = line.strip_prefix("test ") {
            if let Some((name, outcome)) = rest.rsplit_once(" ... ") {
                match outcome.trim() {
                    "ok" => run.passed += 1,
                    "FAILED" => {
                        run.failed += 1;
                        failed_in_binary += 1;
                        run.failures.push(format!("{binary}::{name}"));
                    }
                    o if o.starts_with("ignored") => run.ignored += 1,
                    _ => {}
                }
            }
        }
    }
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
                        .filter_map(|u| u["name"].as_str().map(str::to_owned))
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
        let run = parse_guest(&console);
        assert_eq!(run.release, "6.1.0-56-amd64");
        assert_eq!((run.passed, run.failed, run.ignored), (1, 2, 1));
        assert_eq!(
            run.failures,
            vec![
                "kernel::uffd_waits".to_string(),
                "diagnose exited with 137 and no test result".to_string()
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
    fn a_run_without_check_output_or_tests_is_not_ok() {
        let run = parse_guest(&lines("@@VMTEST kernel 6.12.1 nproc=2\n@@VMTEST done"));
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
