//! `cargo xtask image`: builds the container image from `Containerfile` with buildah, on a host
//! without a container engine or registry access, and checks that the binary in it runs.
//!
//! The Containerfile starts from Debian 12; here that base is made with debootstrap from
//! Debian's archive (cached under ~/.cache/faultline/image) and given to the build as
//! `DEBIAN`/`DEBIAN_SLIM`. The host's extra CA certificates (`/usr/local/share/ca-certificates`)
//! go into that base, so a build behind a TLS-inspecting proxy trusts what the host trusts; the
//! Containerfile's own `ca-certificates` install picks them up. buildah runs rootful with the vfs
//! driver and chroot isolation: no daemon, no overlay or user namespaces needed.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::run;

/// The local base image the build starts from.
const BASE: &str = "localhost/faultline-base:bookworm";
const IMAGE: &str = concat!("localhost/faultline:", env!("CARGO_PKG_VERSION"));

fn buildah() -> Command {
    let mut c = Command::new("buildah");
    c.args(["--storage-driver", "vfs"]);
    c
}

fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/faultline/image")
}

fn ensure_tools() -> Result<()> {
    let missing: Vec<&str> = [("buildah", "buildah"), ("debootstrap", "debootstrap")]
        .into_iter()
        .filter(|(bin, _)| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {bin}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|(_, pkg)| pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .context("installing buildah and debootstrap (needs root)")
}

/// A Debian 12 root file system as a tar, made once.
fn base_tar() -> Result<PathBuf> {
    let dir = cache_dir();
    let tar = dir.join("bookworm.tar");
    if tar.is_file() {
        return Ok(tar);
    }
    let rootfs = dir.join("rootfs");
    if rootfs.exists() {
        fs::remove_dir_all(&rootfs).with_context(|| rootfs.display().to_string())?;
    }
    fs::create_dir_all(&rootfs).with_context(|| rootfs.display().to_string())?;
    run(Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(&rootfs)
        .arg("http://deb.debian.org/debian"))
    .context("debootstrap of Debian 12")?;
    let partial = dir.join("bookworm.tar.partial");
    run(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&partial)
        .arg("."))?;
    fs::rename(&partial, &tar).with_context(|| tar.display().to_string())?;
    fs::remove_dir_all(&rootfs).with_context(|| rootfs.display().to_string())?;
    Ok(tar)
}

/// The base image: the debootstrapped tree plus the host's extra CA certificates.
fn build_base(tar: &Path) -> Result<()> {
    let ctx = tempfile_dir("faultline-image-base")?;
    fs::copy(tar, ctx.join("rootfs.tar")).context("staging the base tree")?;
    let mut file = String::from("FROM scratch\nADD rootfs.tar /\n");
    let cas = Path::new("/usr/local/share/ca-certificates");
    if cas.is_dir() {
        fs::create_dir_all(ctx.join("ca")).context("staging CA certificates")?;
        for entry in fs::read_dir(cas).context("reading the host's CA certificates")? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "crt") {
                if let Some(name) = path.file_name() {
                    fs::copy(&path, ctx.join("ca").join(name))
                        .with_context(|| path.display().to_string())?;
                }
            }
        }
        file.push_str("COPY ca/ /usr/local/share/ca-certificates/\n");
    }
    file.push_str("CMD [\"/bin/bash\"]\n");
    fs::write(ctx.join("Containerfile"), file).context("writing the base Containerfile")?;
    let built = run(buildah()
        .args(["bud", "--isolation", "chroot", "-t", BASE])
        .arg(&ctx));
    let _ = fs::remove_dir_all(&ctx);
    built
}

fn tempfile_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    Ok(dir)
}

pub fn run_image() -> Result<()> {
    ensure_tools()?;
    let tar = base_tar()?;
    build_base(&tar)?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    run(buildah()
        .current_dir(&root)
        .args(["bud", "--isolation", "chroot", "--layers=false"])
        .args(["--build-arg", &format!("DEBIAN={BASE}")])
        .args(["--build-arg", &format!("DEBIAN_SLIM={BASE}")])
        .args(["-t", IMAGE, "-f", "Containerfile", "."]))
    .context("building the image from Containerfile")?;
    // The image's binary runs, and knows this host's kernel from inside the container.
    let out = buildah()
        .args(["from", IMAGE])
        .output()
        .context("buildah from")?;
    if !out.status.success() {
        bail!(
            "buildah from {IMAGE}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let container = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let checked = buildah()
        .args([
            "run",
            "--isolation",
            "chroot",
            &container,
            "--",
            "/usr/bin/faultline",
            "--version",
        ])
        .output()
        .context("running faultline in the image");
    let _ = buildah().args(["rm", &container]).output();
    let checked = checked?;
    let version = String::from_utf8_lossy(&checked.stdout);
    if !checked.status.success() || !version.contains(env!("CARGO_PKG_VERSION")) {
        bail!(
            "faultline --version in {IMAGE} failed: {}{}",
            version,
            String::from_utf8_lossy(&checked.stderr)
        );
    }
    println!("xtask image: built {IMAGE}; in it: {}", version.trim());
    Ok(())
}
