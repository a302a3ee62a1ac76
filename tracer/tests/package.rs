//! `cargo xtask package` makes a .deb that installs into a clean root with dpkg (its own
//! database there, not the host's), puts the binary, unit, config, dashboards and rules where
//! the unit and the docs say, runs `faultline check` from the installed binary, and purges
//! cleanly.

mod common;

use std::{path::Path, process::Command};

use common::FAULTLINE;

fn run(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn xtask_package(binary: &Path, out: &Path) -> std::path::PathBuf {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let printed = run(Command::new(cargo)
        .current_dir(repo)
        .args(["run", "--quiet", "-p", "xtask", "--", "package", "--binary"])
        .arg(binary)
        .arg("--out")
        .arg(out));
    let deb = printed
        .lines()
        .last()
        .expect("xtask prints the .deb path")
        .trim();
    assert!(deb.ends_with(".deb"), "{printed}");
    deb.into()
}

#[test]
fn the_deb_installs_into_a_clean_root_and_its_faultline_runs() {
    if !common::require_root("the_deb_installs_into_a_clean_root_and_its_faultline_runs") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // The test build carries ~100 MB of debug info that dpkg-deb would spend minutes
    // compressing; the release build `cargo xtask package` makes is stripped the same way.
    let stripped = dir.path().join("faultline");
    run(Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(FAULTLINE));
    let deb = xtask_package(&stripped, &dir.path().join("out"));
    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb));
    assert!(info.contains("Package: faultline"), "{info}");

    // A clean root with an empty dpkg database of its own.
    let root = dir.path().join("root");
    let admin = root.join("var/lib/dpkg");
    for d in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(d)).expect("mkdir");
    }
    std::fs::write(admin.join("status"), "").expect("status");
    let root_arg = format!("--root={}", root.display());
    // libc6 is not in that empty database; the host's libc serves the binary.
    run(Command::new("dpkg")
        .args([&root_arg, "--force-depends", "-i"])
        .arg(&deb));

    let listed = run(Command::new("dpkg").args([&root_arg, "-L", "faultline"]));
    for path in [
        "/usr/bin/faultline",
        "/lib/systemd/system/faultline.service",
        "/etc/faultline/faultline.toml",
        "/usr/share/faultline/alerts/faultline.rules.yml",
        "/usr/share/faultline/grafana/faultline.json",
        "/usr/share/faultline/provisioning/dashboards/faultline.yaml",
    ] {
        assert!(listed.lines().any(|l| l == path), "{path} in {listed}");
        assert!(root.join(&path[1..]).exists(), "{path} installed");
    }
    let conffiles = run(Command::new("dpkg-query")
        .arg(format!("--admindir={}", admin.display()))
        .args(["-W", "-f=${Conffiles}", "faultline"]));
    assert!(
        conffiles.contains("/etc/faultline/faultline.toml"),
        "the config is a conffile: {conffiles}"
    );

    // The unit starts the binary the package installed.
    let unit =
        std::fs::read_to_string(root.join("lib/systemd/system/faultline.service")).expect("unit");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .and_then(|l| l.split_whitespace().next())
        .expect("ExecStart");
    assert_eq!(exec, "/usr/bin/faultline", "{unit}");

    // The installed binary runs, and reads the installed config.
    let bin = root.join("usr/bin/faultline");
    let check = run(Command::new(&bin).args(["check", "--json"]));
    let items: serde_json::Value = serde_json::from_str(&check).expect("check --json");
    assert!(items.as_array().is_some_and(|a| !a.is_empty()), "{check}");
    let help = run(Command::new(&bin)
        .args(["agent", "--config"])
        .arg(root.join("etc/faultline/faultline.toml"))
        .arg("--help"));
    assert!(help.contains("--scope"), "{help}");

    run(Command::new("dpkg").args([&root_arg, "--purge", "faultline"]));
    assert!(!bin.exists(), "purged");
    assert!(
        !root.join("etc/faultline/faultline.toml").exists(),
        "config purged"
    );
}
