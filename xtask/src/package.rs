//! `cargo xtask package`: a Debian package of the agent, built with `dpkg-deb` from a staged
//! tree (no extra build tool to install or pin).
//!
//! Contents: `/usr/bin/faultline`, the systemd unit (`/lib/systemd/system/faultline.service`,
//! not enabled: an operator turns the tracer on), the example config as a conffile
//! (`/etc/faultline/faultline.toml`, every key commented out, so defaults apply), the Grafana
//! dashboard and provisioning files and the Prometheus alert rules (`/usr/share/faultline/`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::run;

#[derive(clap::Args)]
pub struct PackageArgs {
    /// Package this binary instead of building one (`cargo build --release`).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Directory the .deb is written to.
    #[arg(long, default_value = "target/debian")]
    out: PathBuf,
}

const NAME: &str = "faultline";

fn workspace_root() -> PathBuf {
    // xtask lives one level under the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    for entry in fs::read_dir(from).with_context(|| from.display().to_string())? {
        let entry = entry?;
        let path = entry.path();
        let dest = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &dest)?;
        } else {
            copy(&path, &dest)?;
        }
    }
    Ok(())
}

fn architecture() -> Result<String> {
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .context("dpkg --print-architecture (packaging needs dpkg)")?;
    if !out.status.success() {
        bail!("dpkg --print-architecture failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The unit as installed by the package: the binary lives in /usr/bin, not /usr/local/bin.
fn packaged_unit(text: &str) -> String {
    text.replace("/usr/local/bin/faultline", "/usr/bin/faultline")
}

fn du_kib(dir: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => fs::read_dir(p)
                .map(|rd| rd.filter_map(Result::ok).map(|e| walk(&e.path())).sum())
                .unwrap_or(0),
            Ok(m) => m.len().div_ceil(1024),
            Err(_) => 0,
        }
    }
    walk(dir)
}

/// Stages the package tree under `stage`, the control file included.
fn stage_tree(root: &Path, binary: &Path, stage: &Path, version: &str, arch: &str) -> Result<()> {
    let bin = stage.join("usr/bin/faultline");
    copy(binary, &bin)?;
    // Symbols and debug info are most of the file; the embedded eBPF object is data and stays.
    run(Command::new("strip").arg(&bin)).context("strip (binutils)")?;
    let unit = fs::read_to_string(root.join("tracer/packaging/faultline.service"))
        .context("reading the systemd unit")?;
    let unit_path = stage.join("lib/systemd/system/faultline.service");
    copy(&root.join("tracer/packaging/faultline.service"), &unit_path)?;
    fs::write(&unit_path, packaged_unit(&unit))?;
    copy(
        &root.join("tracer/packaging/faultline.toml"),
        &stage.join("etc/faultline/faultline.toml"),
    )?;
    let share = stage.join("usr/share/faultline");
    copy_dir(&root.join("dashboards/grafana"), &share.join("grafana"))?;
    copy_dir(
        &root.join("dashboards/provisioning"),
        &share.join("provisioning"),
    )?;
    copy_dir(&root.join("dashboards/alerts"), &share.join("alerts"))?;
    let doc = stage.join("usr/share/doc/faultline");
    copy(&root.join("README.md"), &doc.join("README.md"))?;
    fs::write(
        doc.join("copyright"),
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: faultline\n\nFiles: *\nLicense: GPL-2.0-only\n \
         On Debian systems the full text is in /usr/share/common-licenses/GPL-2.\n",
    )?;
    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    fs::write(debian.join("conffiles"), "/etc/faultline/faultline.toml\n")?;
    let control = format!(
        "Package: {NAME}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: faultline developers <faultline@example.invalid>\n\
         Installed-Size: {}\n\
         Depends: libc6\n\
         Section: admin\n\
         Priority: optional\n\
         Homepage: https://example.invalid/faultline\n\
         Description: eBPF tracer of mmap_lock, kernel lock and userfaultfd deadlocks\n \
         faultline attaches to the kernel's mmap_lock, lock contention, page-fault and\n \
         userfaultfd tracepoints, keeps a live waits-for graph and raises deadlock,\n \
         read-write-read inversion and stall alerts, with Prometheus metrics.\n \
         The systemd unit is installed but not enabled: systemctl enable --now faultline.\n",
        du_kib(stage)
    );
    fs::write(debian.join("control"), control)?;
    Ok(())
}

pub fn run_package(args: &PackageArgs) -> Result<PathBuf> {
    let root = workspace_root();
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => {
            crate::setup::ensure()?;
            run(crate::cargo().current_dir(&root).args([
                "build",
                "--release",
                "-p",
                "tracer",
                "--bin",
                "faultline",
            ]))?;
            root.join("target/release/faultline")
        }
    };
    if !binary.is_file() {
        bail!(
            "{} is not a file: build faultline first or pass --binary",
            binary.display()
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    let arch = architecture()?;
    let out = if args.out.is_absolute() {
        args.out.clone()
    } else {
        root.join(&args.out)
    };
    let stage = out.join(format!("{NAME}_{version}_{arch}"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| stage.display().to_string())?;
    }
    stage_tree(&root, &binary, &stage, version, &arch)?;
    let deb = out.join(format!("{NAME}_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    fs::remove_dir_all(&stage).with_context(|| stage.display().to_string())?;
    println!("{}", deb.display());
    Ok(deb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_unit_starts_the_packaged_binary() {
        let text = fs::read_to_string(workspace_root().join("tracer/packaging/faultline.service"))
            .expect("unit");
        let unit = packaged_unit(&text);
        assert!(
            unit.contains("ExecStart=/usr/bin/faultline agent"),
            "{unit}"
        );
        assert!(!unit.contains("/usr/local/bin"), "{unit}");
    }
}
