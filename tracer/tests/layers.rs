//! The layers of `tracer/src` depend downwards only, and each does only its own job:
//!
//! - kernel adapters know nothing of sinks or commands;
//! - sinks know nothing of commands or of the kernel: they receive finished views (the core's
//!   `GraphView`, `MetricsInput`, alerts) and never the probes, /proc or the agent's lock;
//! - commands are wiring: a file under `commands/` calls the layers below and never reaches the
//!   host itself. It names no `/proc` or `/sys` path and uses neither `aya::` (loading and
//!   reading BPF is the kernel layer's) nor `libc::` or `unsafe` (system calls are the kernel
//!   layer's). The few files that still do are listed in `NOT_YET_WIRING` with the reason, and
//!   an entry that is no longer needed fails too, so the list only shrinks.
//!
//! (The core is a crate of its own, so its rule is its Cargo.toml.) A path or a call that breaks
//! a rule fails here, naming the file and the line.

use std::path::{Path, PathBuf};

/// Commands that still reach the host themselves: (file under `commands/`, what it uses, why).
const NOT_YET_WIRING: &[(&str, &str, &str)] = &[
    (
        "diagnose/gather.rs",
        "libc::",
        "asks geteuid() for its root check",
    ),
    (
        "diagnose/gather.rs",
        "unsafe",
        "asks geteuid() for its root check",
    ),
    (
        "single.rs",
        "libc::",
        "reads the claiming agent's pid with SO_PEERCRED",
    ),
    (
        "single.rs",
        "unsafe",
        "reads the claiming agent's pid with SO_PEERCRED",
    ),
];

/// What a command file must not use to reach the host itself.
const HOST_ACCESS: &[&str] = &["\"/proc", "\"/sys", "aya::", "libc::", "unsafe"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("source dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source file");
                out.push((path, text));
            }
        }
    }
    out.sort();
    out
}

/// Every `crate::<layer>` path in the `.rs` files under `dir`, as "file:line: text".
fn upward_paths(dir: &Path, forbidden: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in sources(dir) {
        // `use crate::{a::b, c::d}` groups span lines: look at whole statements too.
        let flat = text.replace('\n', " ");
        for layer in forbidden {
            let direct = format!("crate::{layer}::");
            let grouped = flat.split("use crate::{").skip(1).any(|g| {
                g.split("};").next().is_some_and(|g| {
                    g.split(',')
                        .any(|item| item.trim().starts_with(&format!("{layer}::")))
                })
            });
            for (n, line) in text.lines().enumerate() {
                if line.contains(&direct) {
                    found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
            if grouped {
                found.push(format!(
                    "{}: a `use crate::{{..}}` group names {layer}",
                    path.display()
                ));
            }
        }
    }
    found
}

#[test]
fn kernel_adapters_and_sinks_do_not_reach_up_a_layer() {
    let src = src();
    let mut wrong = upward_paths(&src.join("kernel"), &["sinks", "commands"]);
    wrong.extend(upward_paths(&src.join("sinks"), &["commands"]));
    assert!(
        wrong.is_empty(),
        "paths that reach up a layer:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn sinks_receive_finished_views_and_never_import_the_kernel() {
    let wrong = upward_paths(&src().join("sinks"), &["kernel"]);
    assert!(
        wrong.is_empty(),
        "sinks that import from crate::kernel (hand them a finished view instead, gathered \
         in commands/):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn commands_are_wiring_and_never_reach_the_host_themselves() {
    let dir = src().join("commands");
    let mut wrong = Vec::new();
    let mut excused = vec![false; NOT_YET_WIRING.len()];
    for (path, text) in sources(&dir) {
        let rel = path
            .strip_prefix(&dir)
            .expect("under commands/")
            .to_string_lossy()
            .into_owned();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim();
            if code.starts_with("//") {
                continue;
            }
            for pattern in HOST_ACCESS {
                if !code.contains(pattern) {
                    continue;
                }
                match NOT_YET_WIRING
                    .iter()
                    .position(|(f, p, _)| *f == rel && p == pattern)
                {
                    Some(i) => excused[i] = true,
                    None => wrong.push(format!("commands/{rel}:{}: {code}", n + 1)),
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "commands that reach the host themselves (a /proc or /sys path, aya, libc or unsafe): \
         move that into a kernel adapter and call it:\n{}",
        wrong.join("\n")
    );
    let stale: Vec<String> = NOT_YET_WIRING
        .iter()
        .zip(&excused)
        .filter(|(_, used)| !**used)
        .map(|((f, p, _), _)| format!("commands/{f} no longer uses {p}"))
        .collect();
    assert!(
        stale.is_empty(),
        "remove these entries from NOT_YET_WIRING in tests/layers.rs:\n{}",
        stale.join("\n")
    );
}
