//! Names for guest kernel addresses: a vCPU sampled through the QEMU monitor gives a bare
//! `rip`, which says nothing until it reads `__schedule+0x1bc`. The kernel package ships its
//! `System.map`; the guest prints where `_stext` landed after KASLR (`STEXT_LINE`), and the
//! difference is the slide applied to every symbol.

use std::{fs, path::Path};

use anyhow::{Context as _, Result};

/// The guest's /init prints this, then `_stext`'s address from /proc/kallsyms.
pub const STEXT_LINE: &str = "stext";

/// A kernel's symbol table, sorted by address.
pub struct Symbols {
    sorted: Vec<(u64, String)>,
    stext: u64,
}

impl Symbols {
    /// Reads `System.map` (`ffffffff81000000 T _stext` per line).
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("{}: no _stext symbol", path.display()))
    }

    fn parse(text: &str) -> Option<Self> {
        let mut sorted: Vec<(u64, String)> = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let addr = u64::from_str_radix(f.next()?, 16).ok()?;
                let _kind = f.next()?;
                Some((addr, f.next()?.to_owned()))
            })
            .collect();
        sorted.sort_unstable();
        let stext = sorted.iter().find(|(_, n)| n == "_stext")?.0;
        Some(Self { sorted, stext })
    }

    /// `name+0xoff` for an address of a guest whose `_stext` was at `guest_stext`.
    pub fn name(&self, addr: u64, guest_stext: u64) -> Option<String> {
        let unslid = addr.wrapping_sub(guest_stext.wrapping_sub(self.stext));
        let i = self.sorted.partition_point(|(a, _)| *a <= unslid);
        let (base, name) = self.sorted.get(i.checked_sub(1)?)?;
        // Past the last symbol, or in a gap wider than any function: not a text address.
        (unslid - base < 0x10_0000).then(|| format!("{name}+{:#x}", unslid - base))
    }
}

/// `_stext`'s address as the guest printed it (`@@VMTEST stext ffffffff9a000000`).
pub fn guest_stext(lines: &[String], mark: &str) -> Option<u64> {
    let prefix = format!("{mark} {STEXT_LINE} ");
    lines.iter().find_map(|l| {
        let hex = l.trim().strip_prefix(&prefix)?;
        u64::from_str_radix(hex.trim(), 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "ffffffff81000000 T _stext\n\
        ffffffff81000000 T _text\n\
        ffffffff81a523d0 t __schedule\n\
        ffffffff81a52c00 T schedule\n\
        ffffffff81c00ba0 T asm_exc_int3\n";

    #[test]
    fn a_slid_address_is_named_by_its_function_and_offset() {
        let syms = Symbols::parse(MAP).expect("has _stext");
        // KASLR moved the kernel by 0x1a000000.
        let stext = 0xffffffff9b000000;
        assert_eq!(
            syms.name(0xffffffff9ba5258c, stext).as_deref(),
            Some("__schedule+0x1bc")
        );
        assert_eq!(
            syms.name(0xffffffff9bc00ba0, stext).as_deref(),
            Some("asm_exc_int3+0x0")
        );
        // Below the first symbol, and far past the last one.
        assert_eq!(syms.name(0xffffffff9a000000, stext), None);
        assert_eq!(syms.name(0xffffffffc0001000, stext), None);
    }

    #[test]
    fn the_guest_line_gives_stext() {
        let lines = vec![
            "@@VMTEST kernel 6.1.0-57-amd64 nproc=2".to_owned(),
            "@@VMTEST stext ffffffff9b000000".to_owned(),
        ];
        assert_eq!(guest_stext(&lines, "@@VMTEST"), Some(0xffffffff9b000000));
        assert_eq!(guest_stext(&lines[..1], "@@VMTEST"), None);
    }
}
