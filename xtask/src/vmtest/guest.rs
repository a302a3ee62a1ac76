//! What the guest runs and where it finds it: the file systems its init mounts, and the check,
//! made before booting, that every program and library the guest will run is in the archive
//! and still visible once those file systems are mounted.
//!
//! Binaries go into the archive at their host paths, because the test executables have those
//! paths compiled in (`CARGO_BIN_EXE_faultline`, their own `target/<profile>` directory). A
//! checkout under `/tmp` therefore puts them under `/tmp` in the guest too, and a tmpfs mounted
//! there would hide them: every test then exits with 127 ("not found"). So a scratch tmpfs is
//! not mounted over archive files (the initramfs root is itself a writable tmpfs), and the
//! check below refuses to boot a guest that would miss a file.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use super::initramfs::{self, Cpio};

/// What a mount is to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountKind {
    /// A kernel file system the tests need (`/proc`, `/sys`, `/dev`): nothing the guest runs
    /// may live under it.
    Kernel,
    /// A kernel file system some tests use when the kernel has it; a failure is ignored.
    Optional,
    /// A scratch tmpfs: left out where the archive has files the guest runs under it.
    Scratch,
}

#[derive(Clone, Copy, Debug)]
pub struct Mount {
    pub fstype: &'static str,
    pub at: &'static str,
    pub kind: MountKind,
}

const fn mount(fstype: &'static str, at: &'static str, kind: MountKind) -> Mount {
    Mount { fstype, at, kind }
}

/// Every mount of the guest's init, in order (parents first).
pub const MOUNTS: [Mount; 10] = [
    mount("proc", "/proc", MountKind::Kernel),
    mount("sysfs", "/sys", MountKind::Kernel),
    mount("devtmpfs", "/dev", MountKind::Optional),
    mount("tmpfs", "/dev/shm", MountKind::Scratch),
    mount("tmpfs", "/tmp", MountKind::Scratch),
    mount("tmpfs", "/run", MountKind::Scratch),
    mount("tracefs", "/sys/kernel/tracing", MountKind::Optional),
    mount("debugfs", "/sys/kernel/debug", MountKind::Optional),
    mount("bpf", "/sys/fs/bpf", MountKind::Optional),
    mount("cgroup2", "/sys/fs/cgroup", MountKind::Optional),
];

/// The guest's PATH, in order: host binaries (util-linux's setpriv...) before busybox applets
/// of the same name.
pub const PATH: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// Commands the guest runs by name: the init script's, and those the kernel tests spawn
/// (tracer/tests/common: `sh`, `ip`, `nsenter`, `setpriv`; tracer/tests/record: `mount`,
/// `umount` for its small tmpfs).
pub const COMMANDS: [&str; 18] = [
    "sh", "mount", "umount", "mkdir", "insmod", "ip", "ifconfig", "uname", "nproc", "tr",
    "timeout", "sync", "poweroff", "echo", "nsenter", "setpriv", "cat", "awk",
];

fn under(path: &Path, dir: &str) -> bool {
    path.starts_with(dir)
}

/// The mounts to make: every mount, but a scratch tmpfs over any of `needed`. Fails with one
/// line when a file the guest needs lies under a kernel file system.
pub fn plan_mounts(needed: &[PathBuf]) -> Result<Vec<Mount>> {
    let mut out = Vec::new();
    for m in MOUNTS {
        let hidden = needed.iter().find(|p| under(p, m.at));
        match (m.kind, hidden) {
            (_, None) => out.push(m),
            (MountKind::Scratch, Some(p)) => eprintln!(
                "vmtest: the guest keeps {} on its root file system instead of a tmpfs: {} lives there",
                m.at,
                p.display()
            ),
            (_, Some(p)) => bail!(
                "{} would be hidden in the guest by the {} mounted on {}: build outside {}",
                p.display(),
                m.fstype,
                m.at,
                m.at
            ),
        }
    }
    Ok(out)
}

/// The init script's lines that mount `mounts`.
pub fn mount_lines(mounts: &[Mount]) -> String {
    let mut s = String::new();
    for m in mounts {
        s.push_str(&format!("mkdir -p {}\n", m.at));
        let quiet = if m.kind == MountKind::Kernel {
            ""
        } else {
            " 2>/dev/null"
        };
        s.push_str(&format!(
            "mount -t {} {} {}{quiet}\n",
            m.fstype, m.fstype, m.at
        ));
    }
    s
}

/// What `exe --list ARGS` prints on stdout; a failure names the program.
pub fn list_output(exe: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(exe)
        .arg("--list")
        .args(args)
        .output()
        .with_context(|| format!("running {} --list", exe.display()))?;
    if !out.status.success() {
        bail!("{} --list failed: {}", exe.display(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The busybox applets the archive's `/bin/busybox` provides (`busybox --list`).
pub fn busybox_applets(busybox: &Path) -> Result<BTreeSet<String>> {
    Ok(list_output(busybox, &[])?
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect())
}

/// The ELF interpreter (`PT_INTERP`) a binary names, if it is dynamically linked.
pub fn interpreter(binary: &Path) -> Result<Option<PathBuf>> {
    use object::read::elf::{ElfFile64, ProgramHeader as _};
    let data = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let elf = ElfFile64::<object::Endianness>::parse(&*data)
        .with_context(|| format!("{} is not a 64-bit ELF file", binary.display()))?;
    let endian = elf.endian();
    for ph in elf.elf_program_headers() {
        if let Some(interp) = ph
            .interpreter(endian, &*data)
            .with_context(|| format!("reading the program headers of {}", binary.display()))?
        {
            let text = String::from_utf8_lossy(interp);
            return Ok(Some(PathBuf::from(text.trim_end_matches('\0'))));
        }
    }
    Ok(None)
}

/// What the guest will run, checked against the archive before booting.
pub struct Manifest<'a> {
    /// Programs the guest runs by path.
    pub programs: &'a [PathBuf],
    /// Other files it reads after mounting (kernel modules, the `--exec` script).
    pub files: &'a [PathBuf],
    pub applets: &'a BTreeSet<String>,
    pub mounts: &'a [Mount],
}

impl Manifest<'_> {
    /// Fails with one line naming the first file the guest would miss, and why.
    pub fn check(&self, cpio: &Cpio) -> Result<()> {
        for program in self.programs {
            self.present(cpio, program, "a program the guest runs")?;
            if let Some(interp) = interpreter(program)? {
                self.present(
                    cpio,
                    &interp,
                    &format!("the ELF interpreter of {}", program.display()),
                )?;
            }
            for lib in initramfs::libraries(program)? {
                self.present(cpio, &lib, &format!("a library of {}", program.display()))?;
            }
        }
        for file in self.files {
            self.present(cpio, file, "a file the guest reads")?;
        }
        for name in COMMANDS {
            let on_path = PATH
                .iter()
                .map(|d| Path::new(d).join(name))
                .find(|p| cpio.contains(p));
            match on_path {
                Some(p) => self.present(cpio, &p, &format!("the guest's `{name}`"))?,
                None if self.applets.contains(name) => {}
                None => bail!(
                    "the guest runs `{name}`, which is neither in its initramfs on PATH ({}) nor a busybox applet",
                    PATH.join(":")
                ),
            }
        }
        Ok(())
    }

    fn present(&self, cpio: &Cpio, path: &Path, what: &str) -> Result<()> {
        if !cpio.contains(path) {
            bail!("the guest's initramfs lacks {} ({what})", path.display());
        }
        if let Some(m) = self.mounts.iter().find(|m| under(path, m.at)) {
            bail!(
                "{} ({what}) would be hidden in the guest by the {} mounted on {}",
                path.display(),
                m.fstype,
                m.at
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busybox_cpio() -> (Cpio, BTreeSet<String>) {
        let mut c = Cpio::new();
        c.file("/bin/busybox", 0o755, b"");
        let applets = COMMANDS
            .iter()
            .filter(|c| **c != "setpriv")
            .map(|c| c.to_string())
            .collect();
        (c, applets)
    }

    #[test]
    fn a_checkout_under_tmp_keeps_tmp_on_the_root_file_system() {
        let needed = [PathBuf::from("/tmp/clone/target/release/faultline")];
        let mounts = plan_mounts(&needed).expect("a scratch mount can be left out");
        assert!(!mounts.iter().any(|m| m.at == "/tmp"), "{mounts:?}");
        assert!(mounts.iter().any(|m| m.at == "/run"));
        assert!(mounts.iter().any(|m| m.at == "/proc"));
    }

    #[test]
    fn a_file_under_a_kernel_file_system_is_refused_with_its_name() {
        let needed = [PathBuf::from("/proc/clone/faultline")];
        let err = plan_mounts(&needed).expect_err("nothing can live under /proc");
        assert!(err.to_string().contains("/proc/clone/faultline"), "{err}");
    }

    #[test]
    fn a_program_hidden_by_a_mount_or_missing_is_named() {
        let sh = PathBuf::from("/bin/sh");
        let (mut cpio, applets) = busybox_cpio();
        cpio.file("/usr/bin/setpriv", 0o755, b"");
        let programs = [sh.clone()];
        // Missing: /bin/sh is a host program with libraries; none are in the archive.
        let all: Vec<Mount> = MOUNTS.to_vec();
        let m = Manifest {
            programs: &programs,
            files: &[],
            applets: &applets,
            mounts: &all,
        };
        let err = m.check(&cpio).expect_err("sh is not in the archive");
        assert!(err.to_string().contains("/bin/sh"), "{err}");

        // Present with its interpreter and libraries, but under a mounted tmpfs.
        let mut cpio2 = Cpio::new();
        let at_tmp = PathBuf::from("/tmp/x/sh");
        cpio2.file("/tmp/x/sh", 0o755, b"");
        cpio2.file("/usr/bin/setpriv", 0o755, b"");
        for lib in initramfs::libraries(&sh).expect("ldd") {
            cpio2.file(lib.to_str().expect("utf-8"), 0o755, b"");
        }
        if let Some(i) = interpreter(&sh).expect("ELF") {
            cpio2.file(i.to_str().expect("utf-8"), 0o755, b"");
        }
        let files = [at_tmp.clone()];
        let m = Manifest {
            programs: &[],
            files: &files,
            applets: &applets,
            mounts: &all,
        };
        let err = m.check(&cpio2).expect_err("/tmp is mounted over it");
        assert!(
            err.to_string().contains("/tmp/x/sh") && err.to_string().contains("hidden"),
            "{err}"
        );
        // The planned mounts leave /tmp alone, and then it passes.
        let planned = plan_mounts(&files).expect("plan");
        let m = Manifest {
            mounts: &planned,
            ..m
        };
        m.check(&cpio2)
            .expect("visible once /tmp is not mounted over");
    }

    #[test]
    fn a_command_neither_on_path_nor_an_applet_is_named() {
        let (cpio, applets) = busybox_cpio();
        let m = Manifest {
            programs: &[],
            files: &[],
            applets: &applets,
            mounts: &[],
        };
        let err = m.check(&cpio).expect_err("setpriv is missing");
        assert!(err.to_string().contains("`setpriv`"), "{err}");
    }

    #[test]
    fn a_dynamic_binary_names_its_interpreter() {
        let i = interpreter(Path::new("/bin/sh")).expect("an ELF file");
        assert!(
            i.is_some_and(|p| p.to_string_lossy().contains("ld-linux")),
            "/bin/sh is dynamically linked"
        );
        assert_eq!(
            interpreter(Path::new("/bin/busybox")).expect("an ELF file"),
            None,
            "busybox-static has no interpreter"
        );
    }
}
