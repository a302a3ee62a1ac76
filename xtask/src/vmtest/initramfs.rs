//! The guest's root file system: a `newc` cpio archive (what the kernel unpacks as initramfs)
//! built from the host's own files, so the guest runs exactly the binaries that were tested here.

use std::{
    collections::BTreeSet,
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

/// A `newc` cpio archive under construction. Parent directories are added before their
/// children, which the kernel's unpacker needs.
pub struct Cpio {
    buf: Vec<u8>,
    next_ino: u32,
    entries: BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

impl Default for Cpio {
    fn default() -> Self {
        Self::new()
    }
}

impl Cpio {
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            next_ino: 1,
            entries: BTreeSet::new(),
        }
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let name = name.trim_start_matches('/');
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    /// Adds `path` and every missing ancestor as directories.
    pub fn dir(&mut self, path: &str) {
        let mut cur = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            cur.push('/');
            cur.push_str(part);
            if self.entries.insert(cur.clone()) {
                let c = cur.clone();
                self.entry(&c, S_IFDIR | 0o755, (0, 0), &[]);
            }
        }
    }

    fn parent(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
    }

    /// Adds a regular file; a path already present is left as it is.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.parent(path);
        if self.entries.insert(path.to_owned()) {
            self.entry(path, S_IFREG | mode, (0, 0), data);
        }
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.parent(path);
        if self.entries.insert(path.to_owned()) {
            self.entry(path, S_IFCHR | 0o600, (major, minor), &[]);
        }
    }

    /// Copies a host file to the same path in the guest (following symlinks), with its
    /// permission bits; when the host path is a symlink, its resolved path gets the file too.
    pub fn host_file(&mut self, path: &Path) -> Result<()> {
        let guest = path
            .to_str()
            .with_context(|| format!("{} is not UTF-8", path.display()))?;
        if self.entries.contains(guest) {
            return Ok(());
        }
        let data = read_maybe_compressed(path)?;
        let mode = fs::metadata(path)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
            .unwrap_or(0o755);
        self.file(guest, mode, &data);
        Ok(())
    }

    /// Whether the archive has an entry at `path` (a host path as `host_file` stores it).
    pub fn contains(&self, path: &Path) -> bool {
        path.to_str().is_some_and(|p| self.entries.contains(p))
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        // The kernel reads the archive in 512-byte blocks.
        while !self.buf.len().is_multiple_of(512) {
            self.buf.push(0);
        }
        self.buf
    }
}

/// A file's bytes; `.ko.xz` and `.ko.zst` modules are decompressed (busybox's insmod loads
/// plain ELF only).
pub fn read_maybe_compressed(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else {
        None
    };
    match tool {
        Some(tool) => {
            let out = Command::new(tool)
                .args(["-dc"])
                .arg(path)
                .output()
                .with_context(|| format!("running {tool} on {}", path.display()))?;
            if !out.status.success() {
                bail!("{tool} -dc {} failed", path.display());
            }
            Ok(out.stdout)
        }
        None => {
            let mut data = Vec::new();
            fs::File::open(path)
                .and_then(|mut f| f.read_to_end(&mut data))
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(data)
        }
    }
}

/// The shared libraries `ldd` lists for a dynamically linked binary (none for a static one); a
/// library ldd cannot find is an error naming it.
pub fn libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": nothing to copy.
        return Ok(vec![]);
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        if line.contains("=> not found") {
            bail!(
                "{} needs {}, which ldd cannot find on this host",
                binary.display(),
                line.split_whitespace().next().unwrap_or(line)
            );
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// Adds a binary and its libraries at their host paths.
pub fn add_binary(cpio: &mut Cpio, binary: &Path) -> Result<()> {
    cpio.host_file(binary)?;
    for lib in libraries(binary)? {
        cpio.host_file(&lib)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_entries_have_newc_headers_parents_first_and_a_trailer() {
        let mut c = Cpio::new();
        c.file("/a/b/c.txt", 0o644, b"hello");
        c.char_device("/dev/console", 5, 1);
        let buf = c.finish();
        assert_eq!(buf.len() % 512, 0);
        let text = String::from_utf8_lossy(&buf);
        let a = text.find("a\0").expect("directory a");
        let ab = text.find("a/b\0").expect("directory a/b");
        let f = text.find("a/b/c.txt\0").expect("the file");
        assert!(a < ab && ab < f, "parents come first");
        assert!(text.contains("hello"));
        assert!(text.contains("TRAILER!!!"));
        // The character device header: mode 020600, rdev 5:1.
        let dev = text.find("dev/console\0").expect("console node");
        let header = &text[dev - 110..dev];
        assert_eq!(&header[14..22], "00002180");
        assert_eq!(&header[78..86], "00000005");
        assert_eq!(&header[86..94], "00000001");
    }

    #[test]
    fn ldd_lists_libc_for_a_dynamic_binary() {
        let libs = libraries(Path::new("/bin/sh")).expect("ldd runs");
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
    }
}
