//! Installs the eBPF build prerequisites, idempotently, saying what and why.
//!
//! Building Rust eBPF needs `-Z build-std=core`, so a toolchain with `rust-src`, and `bpf-linker`.
//! rustup's nightly is used when it has `rust-src` (the standard aya path); otherwise Debian's
//! `rustc-web`/`rust-web-src` (1.96, with sources) are linked into rustup as `faultline-system`
//! and `tracer/build.rs` builds with them under RUSTC_BOOTSTRAP=1. Only registry packages are
//! downloaded: Debian's and crates.io.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::run;

const SYSTEM_TOOLCHAIN: &str = "faultline-system";
const BPF_LINKER_VERSION: &str = "0.13";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Debian packages and why each is needed.
const PACKAGES: [(&str, &str); 18] = [
    (
        "rustc-web",
        "a Rust 1.96 compiler whose sources can build `core` for the BPF target",
    ),
    (
        "rust-web-src",
        "the Rust standard library sources for -Z build-std=core",
    ),
    (
        "cargo-web",
        "the cargo matching rustc-web, run for the nested eBPF build",
    ),
    ("llvm-22-dev", "LLVM 22, which bpf-linker links against"),
    (
        "libpolly-22-dev",
        "LLVM's Polly, which llvm-22-dev's link line names",
    ),
    ("libzstd-dev", "zstd, a link dependency of LLVM"),
    ("zlib1g-dev", "zlib, a link dependency of LLVM"),
    (
        "prometheus",
        "a real Prometheus server and promtool for the metrics, dashboard and rule tests",
    ),
    (
        "rust-web-clippy",
        "clippy for Debian's compiler, to lint the eBPF crate with the toolchain that builds it",
    ),
    (
        "golang-go",
        "`go tool pprof`, a real reader of the lock-contention profile for its tests",
    ),
    (
        "protobuf-compiler",
        "`protoc --decode`, which checks the lock-contention profile against profile.proto",
    ),
    (
        "golang-github-google-pprof-dev",
        "the published profile.proto (google/pprof, Apache-2.0), read from the system by the \
         protoc test rather than copied into this GPL-2.0 tree",
    ),
    (
        "stress-ng",
        "third-party workloads (mprotect, fault, userfaultfd, ...) for the benchmark and soak",
    ),
    (
        "bpftrace",
        "the hand-written peer scripts `cargo xtask bench overhead` measures faultline against",
    ),
    (
        "chromium",
        "a headless browser for the tests that look at the live page and the HTML reports",
    ),
    (
        "prometheus-alertmanager",
        "a real Alertmanager for the end-to-end alert routing test (tracer/tests/fleet.rs)",
    ),
    (
        "qemu-system-x86",
        "QEMU, which boots Debian's kernels for `cargo xtask vmtest` (6.1 in `cargo xtask test`)",
    ),
    (
        "busybox-static",
        "the static shell and tools of the initramfs the vmtest guests boot",
    ),
];

/// PyPI's kubernetes-validate, pinned: checks deploy/kubernetes against the Kubernetes schemas
/// offline (its schemas ship in the package).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

fn kubernetes_validate_ok() -> bool {
    output_ok(Command::new("kubernetes-validate").arg("--version"))
        .is_some_and(|v| v.trim() == KUBERNETES_VALIDATE.rsplit('=').next().unwrap_or_default())
}

fn ensure_kubernetes_validate() -> Result<()> {
    if kubernetes_validate_ok() {
        return Ok(());
    }
    eprintln!("xtask setup: installing {KUBERNETES_VALIDATE} from PyPI: offline validation of the Kubernetes manifests");
    // Debian's python3 lacks pip until python3-pip is installed; a pyenv or venv python has it.
    if output_ok(Command::new("python3").args(["-m", "pip", "--version"])).is_none() {
        ensure_packages(&[("python3-pip", "pip, to install kubernetes-validate")])?;
    }
    // Debian marks its python as externally managed; this is a tool for the tests, installed
    // for root like bpf-linker is.
    run(Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--break-system-packages"])
        .arg(KUBERNETES_VALIDATE))?;
    if !kubernetes_validate_ok() {
        bail!("{KUBERNETES_VALIDATE} installed but `kubernetes-validate --version` does not say so (is pip's bin directory on PATH?)");
    }
    Ok(())
}

fn output_ok(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn installed(pkg: &str) -> bool {
    output_ok(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn nightly_has_rust_src() -> bool {
    output_ok(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .map(|s| {
            std::path::Path::new(s.trim())
                .join("lib/rustlib/src/rust/library/core/Cargo.toml")
                .exists()
        })
        .unwrap_or(false)
}

fn cargo_bin(name: &str) -> std::path::PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| "/root/.cargo".into());
    home.join("bin").join(name)
}

fn bpf_linker_ok() -> bool {
    output_ok(Command::new(cargo_bin("bpf-linker")).arg("--version"))
        .is_some_and(|v| v.contains(&format!("bpf-linker {BPF_LINKER_VERSION}")))
}

fn ensure_packages(needed: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<_> = needed.iter().filter(|(p, _)| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    for (p, why) in &missing {
        eprintln!("xtask setup: installing Debian package {p}: {why}");
    }
    run(Command::new("apt-get").arg("update").arg("-qq"))
        .context("apt-get update (setup needs root)")?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(missing.iter().map(|(p, _)| *p))
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .context("installing the eBPF build packages (setup needs root)")
}

/// The toolchain that builds (and lints) the eBPF crate: the same choice `tracer/build.rs`
/// makes, and `RUSTC_BOOTSTRAP` when it is not a nightly.
pub fn ebpf_toolchain() -> (&'static str, bool) {
    if nightly_has_rust_src() {
        ("nightly", false)
    } else {
        (SYSTEM_TOOLCHAIN, true)
    }
}

/// The packages that building faultline needs (a container image's build stage); the rest of
/// `PACKAGES` are test peers and tools.
const BUILD_PACKAGES: [&str; 7] = [
    "rustc-web",
    "rust-web-src",
    "cargo-web",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// Everything the build, the tests and the benchmarks need.
pub fn ensure() -> Result<()> {
    ensure_scoped(false)
}

/// Only what building needs: the eBPF toolchain and bpf-linker (`cargo xtask setup
/// --build-only`, what the Containerfile runs).
pub fn ensure_build_only() -> Result<()> {
    ensure_scoped(true)
}

fn ensure_scoped(build_only: bool) -> Result<()> {
    let use_nightly = nightly_has_rust_src();
    // Debian's LLVM is needed for bpf-linker either way; the Debian compiler only without a
    // nightly that has rust-src.
    let needed: Vec<(&str, &str)> = PACKAGES
        .iter()
        .copied()
        .filter(|(p, _)| !use_nightly || !p.starts_with("rust") && !p.starts_with("cargo"))
        .filter(|(p, _)| !build_only || BUILD_PACKAGES.contains(p))
        .collect();
    ensure_packages(&needed)?;

    if use_nightly {
        eprintln!("xtask setup: using rustup's nightly (it has rust-src) for the eBPF build");
    } else {
        let linked = output_ok(Command::new("rustup").args(["toolchain", "list"]))
            .is_some_and(|l| l.lines().any(|t| t.starts_with(SYSTEM_TOOLCHAIN)));
        if !linked {
            eprintln!(
                "xtask setup: linking Debian's rustc-web into rustup as `{SYSTEM_TOOLCHAIN}` for the eBPF build"
            );
            run(Command::new("rustup").args(["toolchain", "link", SYSTEM_TOOLCHAIN, "/usr"]))?;
        }
    }

    if !bpf_linker_ok() {
        eprintln!(
            "xtask setup: building bpf-linker {BPF_LINKER_VERSION} against Debian's LLVM 22 (a few minutes, once)"
        );
        run(Command::new("cargo")
            .args(["install", "bpf-linker", "--locked", "--force", "--version"])
            .arg(format!("~{BPF_LINKER_VERSION}"))
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX))?;
        if !bpf_linker_ok() {
            bail!("bpf-linker {BPF_LINKER_VERSION} still not runnable after installing it");
        }
    }
    if build_only {
        return Ok(());
    }
    ensure_kubernetes_validate()
}
