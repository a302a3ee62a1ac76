//! Debian's kernel packages: finding the newest of a series, downloading it with apt and
//! unpacking it once into a cache keyed by package and version.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// Where a kernel series is published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// The host's own sources (bookworm).
    Host,
    /// bookworm-backports, added to the host's sources when missing.
    Backports,
    /// bullseye, through a private apt state so the host's sources stay as they are.
    Bullseye,
}

/// One kernel of the matrix.
#[derive(Clone, Copy, Debug)]
pub struct Series {
    /// What `--kernel` calls it.
    pub label: &'static str,
    pub suite: Suite,
    /// `apt-cache search --names-only` pattern of its unsigned generic image packages.
    pub pattern: &'static str,
    /// Whether a failure to obtain it only skips it (with a line saying why).
    pub optional: bool,
}

pub const SERIES: [Series; 3] = [
    Series {
        label: "5.10",
        suite: Suite::Bullseye,
        pattern: r"^linux-image-5\.10\.0-[0-9]+-amd64-unsigned$",
        optional: true,
    },
    Series {
        label: "6.1",
        suite: Suite::Host,
        pattern: r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$",
        optional: false,
    },
    Series {
        label: "6.12",
        suite: Suite::Backports,
        pattern: r"^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$",
        optional: false,
    },
];

/// The series a `--kernel` label names, and the exact package when it names one ABI of it
/// (`6.1.0-56` → the 6.1 series, `linux-image-6.1.0-56-amd64-unsigned`).
pub fn resolve(label: &str) -> Option<(&'static Series, Option<String>)> {
    if let Some(s) = SERIES.iter().find(|s| s.label == label) {
        return Some((s, None));
    }
    let ok = label
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'));
    SERIES
        .iter()
        .filter(|s| ok && label.starts_with(&format!("{}.", s.label)))
        .max_by_key(|s| s.label.len())
        .map(|s| (s, Some(format!("linux-image-{label}-amd64-unsigned"))))
}

/// An unpacked kernel package.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub label: &'static str,
    pub package: String,
    pub version: String,
    pub vmlinuz: PathBuf,
    pub modules: PathBuf,
}

const BACKPORTS_LINE: &str = "deb http://deb.debian.org/debian bookworm-backports main";
const BACKPORTS_FILE: &str = "/etc/apt/sources.list.d/faultline-bookworm-backports.list";
const BULLSEYE_LINE: &str = "deb http://deb.debian.org/debian bullseye main";

/// apt invocations for one suite: the host's, or a private state directory for bullseye.
struct Apt {
    options: Vec<String>,
}

impl Apt {
    fn for_suite(suite: Suite, cache: &Path) -> Result<Self> {
        match suite {
            Suite::Host => Ok(Self { options: vec![] }),
            Suite::Backports => {
                ensure_backports()?;
                Ok(Self { options: vec![] })
            }
            Suite::Bullseye => {
                let root = cache.join("apt-bullseye");
                for d in ["lists/partial", "archives/partial"] {
                    fs::create_dir_all(root.join(d))
                        .with_context(|| format!("creating {}", root.join(d).display()))?;
                }
                let list = root.join("sources.list");
                fs::write(&list, format!("{BULLSEYE_LINE}\n"))
                    .with_context(|| format!("writing {}", list.display()))?;
                let p = |s: &str| root.join(s).display().to_string();
                let apt = Self {
                    options: vec![
                        format!("Dir::Etc::SourceList={}", list.display()),
                        "Dir::Etc::SourceParts=/nonexistent".into(),
                        format!("Dir::State::Lists={}", p("lists")),
                        format!("Dir::Cache={}", p("")),
                        format!("Dir::Cache::Archives={}", p("archives")),
                        "Dir::Cache::pkgcache=".into(),
                        "Dir::Cache::srcpkgcache=".into(),
                    ],
                };
                // Refresh at most daily: the index is what costs time, not the kernel.
                let fresh = fs::read_dir(root.join("lists"))
                    .map(|d| {
                        d.filter_map(Result::ok)
                            .any(|e| e.file_name().to_string_lossy().contains("bullseye"))
                    })
                    .unwrap_or(false);
                if !fresh {
                    apt.run("apt-get", &["update", "-qq"])
                        .context("bullseye is not reachable")?;
                }
                Ok(apt)
            }
        }
    }

    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        for o in &self.options {
            c.arg("-o").arg(o);
        }
        c
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<String> {
        let out = self
            .command(tool)
            .args(args)
            .output()
            .with_context(|| format!("running {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Adds bookworm-backports to apt's sources when no sources file names it, and refreshes only
/// that list.
fn ensure_backports() -> Result<()> {
    let mut files: Vec<PathBuf> = vec!["/etc/apt/sources.list".into()];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(dir.filter_map(Result::ok).map(|e| e.path()));
    }
    let present = files.iter().any(|f| {
        fs::read_to_string(f).is_ok_and(|t| {
            t.lines()
                .any(|l| !l.trim_start().starts_with('#') && l.contains("bookworm-backports"))
        })
    });
    if present {
        return Ok(());
    }
    eprintln!("vmtest: adding bookworm-backports to apt's sources ({BACKPORTS_FILE})");
    fs::write(BACKPORTS_FILE, format!("{BACKPORTS_LINE}\n"))
        .with_context(|| format!("writing {BACKPORTS_FILE} (vmtest needs root)"))?;
    crate::run(Command::new("apt-get").args([
        "update",
        "-qq",
        "-o",
        &format!("Dir::Etc::SourceList={BACKPORTS_FILE}"),
        "-o",
        "Dir::Etc::SourceParts=/nonexistent",
        "-o",
        "APT::Get::List-Cleanup=0",
    ]))
}

/// Orders package names by their numbers (`-9-` before `-10-`).
fn natural_key(s: &str) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut num = String::new();
    let mut text = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !text.is_empty() {
                key.push((0, std::mem::take(&mut text)));
            }
            num.push(c);
        } else {
            if !num.is_empty() {
                key.push((num.parse().unwrap_or(u64::MAX), String::new()));
                num.clear();
            }
            text.push(c);
        }
    }
    if !num.is_empty() {
        key.push((num.parse().unwrap_or(u64::MAX), String::new()));
    }
    if !text.is_empty() {
        key.push((0, text));
    }
    key
}

/// The newest package of a series (or `package`, one of the series), its version, downloaded
/// and unpacked under `cache` (reused when already there).
pub fn fetch(series: &Series, package: Option<&str>, cache: &Path) -> Result<Kernel> {
    let apt = Apt::for_suite(series.suite, cache)?;
    let names = apt.run("apt-cache", &["search", "--names-only", series.pattern])?;
    let mut names = names.lines().filter_map(|l| l.split_whitespace().next());
    let package = match package {
        Some(wanted) => names.find(|n| *n == wanted).with_context(|| {
            format!(
                "{wanted} is not in apt's lists (apt-cache search --names-only '{}')",
                series.pattern
            )
        })?,
        None => names
            .max_by_key(|n| natural_key(n))
            .with_context(|| format!("no package matches {} in apt's lists", series.pattern))?,
    }
    .to_owned();
    let show = apt.run("apt-cache", &["show", "--no-all-versions", &package])?;
    let version = show
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .with_context(|| format!("apt-cache show {package}: no Version"))?
        .trim()
        .to_owned();

    let dir = cache
        .join("kernels")
        .join(format!("{package}_{version}").replace(['/', ':'], "_"));
    let done = dir.join(".unpacked");
    if !done.exists() {
        let debs = cache.join("debs");
        fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
        let deb = find_deb(&debs, &package, &version);
        let deb = match deb {
            Some(d) => d,
            None => {
                eprintln!("vmtest: downloading {package} {version}");
                let status = apt
                    .command("apt-get")
                    .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
                    .arg(format!("{package}={version}"))
                    .current_dir(&debs)
                    .status()
                    .context("running apt-get download")?;
                if !status.success() {
                    bail!("apt-get download {package}={version} failed: {status}");
                }
                find_deb(&debs, &package, &version)
                    .with_context(|| format!("apt-get download left no .deb of {package}"))?
            }
        };
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        crate::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
        fs::write(&done, "").with_context(|| format!("writing {}", done.display()))?;
    }

    let boot = dir.join("boot");
    let vmlinuz = fs::read_dir(&boot)
        .with_context(|| format!("{} has no boot/", package))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("{package} has no boot/vmlinuz-*"))?;
    let release = vmlinuz
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .trim_start_matches("vmlinuz-")
                .to_owned()
        })
        .unwrap_or_default();
    let modules = dir.join("lib/modules").join(&release);
    Ok(Kernel {
        label: series.label,
        package,
        version,
        vmlinuz,
        modules,
    })
}

/// A downloaded `.deb` of this package and version (apt escapes `:` in versions as `%3a`).
fn find_deb(dir: &Path, package: &str, version: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_{}_", version.replace(':', "%3a"));
    fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
}

/// The module files for `names`, dependencies first. Debian's packages ship no modules.dep
/// (depmod runs at install), so files are found by name and dependencies read from each
/// module's `.modinfo` (`depends=a,b`). A module built into the kernel has no file and is
/// simply not listed.
pub fn module_files(kernel: &Kernel, names: &[&str]) -> Result<Vec<PathBuf>> {
    let mut index = std::collections::HashMap::new();
    let mut stack = vec![kernel.modules.join("kernel")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(n) = p.file_name().map(|n| n.to_string_lossy().into_owned()) {
                if let Some(stem) = n.split(".ko").next().filter(|_| n.contains(".ko")) {
                    // modinfo names use '_' where file names may use '-'.
                    index.insert(stem.replace('-', "_"), p);
                }
            }
        }
    }
    let mut out = Vec::new();
    for name in names {
        add_module(&index, &name.replace('-', "_"), &mut out, 0)?;
    }
    Ok(out)
}

fn add_module(
    index: &std::collections::HashMap<String, PathBuf>,
    name: &str,
    out: &mut Vec<PathBuf>,
    depth: u32,
) -> Result<()> {
    let Some(path) = index.get(name) else {
        return Ok(());
    };
    if out.contains(path) || depth > 16 {
        return Ok(());
    }
    let data = super::initramfs::read_maybe_compressed(path)?;
    let deps = data
        .windows(9)
        .position(|w| w == b"\0depends=")
        .map(|at| {
            let rest = &data[at + 9..];
            let end = rest.iter().position(|b| *b == 0).unwrap_or(0);
            String::from_utf8_lossy(&rest[..end]).into_owned()
        })
        .unwrap_or_default();
    for dep in deps.split(',').filter(|d| !d.is_empty()) {
        add_module(index, dep, out, depth + 1)?;
    }
    out.push(path.clone());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{natural_key, resolve};

    #[test]
    fn a_label_names_a_series_or_one_abi_of_it() {
        assert_eq!(
            resolve("6.1").map(|(s, p)| (s.label, p)),
            Some(("6.1", None))
        );
        let (s, p) = resolve("6.1.0-56").expect("an ABI of 6.1");
        assert_eq!(
            (s.label, p.as_deref()),
            ("6.1", Some("linux-image-6.1.0-56-amd64-unsigned"))
        );
        let (s, _) = resolve("6.12.117+deb12").expect("an ABI of 6.12");
        assert_eq!(s.label, "6.12");
        assert!(resolve("7.0").is_none());
        assert!(resolve("6.1.0-56; rm").is_none());
    }

    #[test]
    fn package_abi_numbers_order_numerically() {
        let mut names = [
            "linux-image-6.1.0-9-amd64-unsigned",
            "linux-image-6.1.0-56-amd64-unsigned",
            "linux-image-6.1.0-10-amd64-unsigned",
        ];
        names.sort_by_key(|n| natural_key(n));
        assert_eq!(names.last(), Some(&"linux-image-6.1.0-56-amd64-unsigned"));
        assert_eq!(names.first(), Some(&"linux-image-6.1.0-9-amd64-unsigned"));
    }
}
