//! Builds `tracer-ebpf` for the BPF target with aya-build and leaves the object in OUT_DIR, where
//! `probes::load` embeds it: one `cargo build` gives one self-contained binary.
//!
//! The eBPF build needs `-Z build-std=core`, so a toolchain with `rust-src`. Chosen in order:
//! 1. `FAULTLINE_EBPF_TOOLCHAIN` (a rustup toolchain name), if set;
//! 2. rustup's `nightly`, when it has `rust-src` (the standard aya path);
//! 3. `faultline-system`: Debian's rustc-web + rust-web-src linked into rustup by
//!    `cargo xtask setup`, with RUSTC_BOOTSTRAP=1 to allow build-std on a stable compiler.
use std::{env, path::Path, process::Command};

use anyhow::{anyhow, bail, Context as _};
use aya_build::Toolchain;

const SYSTEM_TOOLCHAIN: &str = "faultline-system";

fn has_rust_src(toolchain: &str) -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
}

fn select_toolchain() -> anyhow::Result<String> {
    println!("cargo:rerun-if-env-changed=FAULTLINE_EBPF_TOOLCHAIN");
    if let Ok(name) = env::var("FAULTLINE_EBPF_TOOLCHAIN") {
        if !has_rust_src(&name) {
            bail!("FAULTLINE_EBPF_TOOLCHAIN={name} has no rust-src; run `cargo xtask setup`");
        }
        return Ok(name);
    }
    for name in ["nightly", SYSTEM_TOOLCHAIN] {
        if has_rust_src(name) {
            return Ok(name.to_owned());
        }
    }
    bail!(
        "no toolchain with rust-src to build the eBPF programs: run `cargo xtask setup` \
         (installs Debian's rustc-web and rust-web-src and links them as `{SYSTEM_TOOLCHAIN}`)"
    )
}

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "tracer-ebpf")
        .ok_or_else(|| anyhow!("tracer-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?
        .to_string();

    let toolchain = select_toolchain()?;
    if toolchain != "nightly" {
        // A stable compiler refuses -Z flags unless bootstrapping is allowed; this only reaches
        // the nested eBPF cargo, not the outer build.
        env::set_var("RUSTC_BOOTSTRAP", "1");
    }
    // The nested build must find bpf-linker where `cargo install` puts it.
    if let Some(home) = env::var_os("CARGO_HOME")
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo").into_os_string()))
    {
        let bin = Path::new(&home).join("bin");
        let path = env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<_> = env::split_paths(&path).collect();
        if !dirs.contains(&bin) {
            dirs.push(bin);
            env::set_var("PATH", env::join_paths(dirs).context("PATH")?);
        }
    }
    let package = aya_build::Package {
        name: "tracer-ebpf",
        root_dir: &root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::Custom(&toolchain))
}
