//! The kernel's symbol table (the text of `/proc/kallsyms`): function names for stack frames,
//! data symbols for static locks (listed only with `CONFIG_KALLSYMS_ALL`), and which frames
//! are the locking functions themselves (the `.spinlock.text` and `.sched.text` sections, where
//! the kernel puts its lock slow paths: what perf's lock contention skips too).

/// A function or data symbol at an address: 16 bytes, its name in the table's arena. A table
/// of String-named symbols took ~100 bytes a symbol (17 MiB for a 6.18 host's 121k), held by
/// the agent and built again every minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Symbol {
    addr: u64,
    /// Where its name starts in `KernelSymbols::names`.
    name: u32,
    len: u16,
    /// 0: the kernel's own; else 1 + its index in `KernelSymbols::modules`.
    module: u16,
}

#[derive(Clone, Debug, Default)]
pub struct KernelSymbols {
    /// Text symbols, sorted by address.
    text: Vec<Symbol>,
    /// Data symbols (`d D b B r R`), sorted by address.
    data: Vec<Symbol>,
    /// Every symbol's name, one after the other.
    names: String,
    /// Module names, each once.
    modules: Vec<String>,
    /// `[__lock_text_start, __lock_text_end)` and `[__sched_text_start, __sched_text_end)`.
    lock_text: Vec<(u64, u64)>,
}

impl KernelSymbols {
    /// Parses the text of `/proc/kallsyms`. A reader without CAP_SYSLOG sees every address as
    /// zero: the table is then empty, and [`Self::is_empty`] says so.
    pub fn parse(text: &str) -> Self {
        Self::read(text.as_bytes())
    }

    /// Reads `/proc/kallsyms` (or its text) line by line: the file is 5 MiB on a 6.18 host,
    /// and the table keeps a third of it.
    pub fn read(mut input: impl std::io::BufRead) -> Self {
        let mut t = Self::default();
        let mut module_ids: std::collections::HashMap<String, u16> = Default::default();
        let mut line = String::new();
        loop {
            line.clear();
            match input.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let mut parts = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            let is_text = matches!(kind, "t" | "T" | "w" | "W");
            let is_data = matches!(kind, "d" | "D" | "b" | "B" | "r" | "R");
            if addr == 0 || !(is_text || is_data) {
                continue;
            }
            let (Ok(start), Ok(len)) = (u32::try_from(t.names.len()), u16::try_from(name.len()))
            else {
                continue; // past 4 GiB of names, or a name longer than the kernel allows
            };
            let module = match parts.next() {
                Some(m) => {
                    let m = m.trim_matches(|c| c == '[' || c == ']');
                    match module_ids.get(m) {
                        Some(&id) => id,
                        None => {
                            let Ok(id) = u16::try_from(t.modules.len() + 1) else {
                                continue;
                            };
                            t.modules.push(m.to_owned());
                            module_ids.insert(m.to_owned(), id);
                            id
                        }
                    }
                }
                None => 0,
            };
            t.names.push_str(name);
            let sym = Symbol {
                addr,
                name: start,
                len,
                module,
            };
            if is_text {
                t.text.push(sym);
            } else {
                t.data.push(sym);
            }
        }
        t.text.sort_by_key(|s| s.addr);
        t.data.sort_by_key(|s| s.addr);
        t.names.shrink_to_fit();
        t.text.shrink_to_fit();
        t.data.shrink_to_fit();
        let at = |name: &str| t.text.iter().find(|s| t.name(s) == name).map(|s| s.addr);
        let mut lock_text = Vec::new();
        for (start, end) in [
            ("__lock_text_start", "__lock_text_end"),
            ("__sched_text_start", "__sched_text_end"),
        ] {
            if let (Some(s), Some(e)) = (at(start), at(end)) {
                lock_text.push((s, e));
            }
        }
        t.lock_text = lock_text;
        t
    }

    fn name(&self, s: &Symbol) -> &str {
        let start = s.name as usize;
        self.names
            .get(start..start + usize::from(s.len))
            .unwrap_or_default()
    }

    fn module(&self, s: &Symbol) -> Option<&str> {
        usize::from(s.module)
            .checked_sub(1)
            .and_then(|i| self.modules.get(i))
            .map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Whether data symbols are listed (`CONFIG_KALLSYMS_ALL`): static locks can be named.
    pub fn has_data_symbols(&self) -> bool {
        // Without KALLSYMS_ALL a few section markers are still listed as data; a real data
        // table has thousands.
        self.data.len() > 1000
    }

    /// `function+0xoff [module]` for a text address; the raw address when no symbol is below.
    pub fn function(&self, addr: u64) -> String {
        match below(&self.text, addr) {
            Some(s) => {
                let off = addr - s.addr;
                let name = self.name(s);
                match self.module(s) {
                    Some(m) => format!("{name}+{off:#x} [{m}]"),
                    None => format!("{name}+{off:#x}"),
                }
            }
            None => format!("{addr:#x}"),
        }
    }

    /// The bare function name at `addr`.
    pub fn function_name(&self, addr: u64) -> Option<&str> {
        below(&self.text, addr).map(|s| self.name(s))
    }

    /// The data symbol a static lock at `addr` is (or lies in: `sym+0xoff`); `None` without data
    /// symbols, or past 64 KiB from the nearest one (then it is not a static object's).
    pub fn data(&self, addr: u64) -> Option<String> {
        if !self.has_data_symbols() {
            return None;
        }
        let s = below(&self.data, addr)?;
        match addr - s.addr {
            0 => Some(self.name(s).to_owned()),
            off if off < 1 << 16 => Some(format!("{}+{off:#x}", self.name(s))),
            _ => None,
        }
    }

    /// Whether `addr` is in the kernel's locking code, or the tracing that called us (the
    /// frames above the contending caller).
    pub fn is_lock_function(&self, addr: u64) -> bool {
        if self.lock_text.iter().any(|&(s, e)| addr >= s && addr < e) {
            return true;
        }
        self.function_name(addr).is_some_and(|n| {
            n.starts_with("bpf_trace_run")
                || n.starts_with("__bpf_trace_")
                || n.starts_with("__traceiter_")
                || n.starts_with("trace_contention")
                || n.starts_with("bpf_prog_")
        })
    }

    /// Where the contending caller is in a waiter's stack (leaf first): past the tracing that
    /// took the stack (a BPF program, unnamed or `bpf_prog_*`, and `bpf_trace_run*`), then
    /// past the locking functions. `frames.len()` when every frame is one of those.
    pub fn caller_index(&self, frames: &[u64]) -> usize {
        let traced = frames
            .iter()
            .rposition(|&ip| {
                self.function_name(ip).is_some_and(|n| {
                    n.starts_with("bpf_trace_run")
                        || n.starts_with("__bpf_trace_")
                        || n.starts_with("__traceiter_")
                })
            })
            .map_or(0, |i| i + 1);
        traced
            + frames[traced..]
                .iter()
                .take_while(|&&ip| self.is_lock_function(ip) || self.function_name(ip).is_none())
                .count()
    }

    /// The contending caller's address.
    pub fn caller(&self, frames: &[u64]) -> Option<u64> {
        frames.get(self.caller_index(frames)).copied()
    }
}

/// No kernel function is this long: an address this far past the last symbol below it is in
/// something kallsyms does not list (a BPF program's JIT image when `bpf_jit_kallsyms` is off).
const MAX_FUNCTION: u64 = 1 << 20;

/// The last symbol at or below `addr`, if `addr` can be inside it.
fn below(syms: &[Symbol], addr: u64) -> Option<&Symbol> {
    let i = syms.partition_point(|s| s.addr <= addr);
    i.checked_sub(1)
        .map(|i| &syms[i])
        .filter(|s| addr - s.addr < MAX_FUNCTION)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
ffffffff81000000 T _stext
ffffffff814cbd50 T bpf_trace_run2
ffffffff814cc000 t __bpf_trace_contention_end
ffffffff81ec1ad0 T rtnl_lock
ffffffff81ec1b00 T rtnl_unlock
ffffffff822467c0 T __sched_text_start
ffffffff8224a9e0 T mutex_lock
ffffffff8224f4e2 T __sched_text_end
ffffffff8224f4f0 T __lock_text_start
ffffffff8224f500 T _raw_spin_lock
ffffffff82250f71 T __lock_text_end
ffffffffc0000000 t dummy_init\t[dummy]
ffffffff82400000 D __start_rodata
";

    #[test]
    fn frames_are_named_and_the_caller_is_past_the_locking_and_tracing_functions() {
        let k = KernelSymbols::parse(TABLE);
        assert_eq!(k.function(0xffffffff81ec1ad5), "rtnl_lock+0x5");
        assert_eq!(k.function(0xffffffffc0000010), "dummy_init+0x10 [dummy]");
        let frames = [
            0xffffffffc0400000, // a BPF program kallsyms does not list
            0xffffffff814cbd60, // bpf_trace_run2
            0xffffffff814cc010, // __bpf_trace_contention_end
            0xffffffff8224aa00, // mutex_lock (sched text)
            0xffffffff8224f510, // _raw_spin_lock (lock text)
            0xffffffff81ec1ad9, // rtnl_lock
        ];
        assert_eq!(k.caller(&frames), Some(0xffffffff81ec1ad9));
        assert_eq!(k.caller_index(&frames), 5);
        assert_eq!(
            k.function(0xffffffffc0400000),
            "0xffffffffc0400000",
            "too far from dummy_init"
        );
        assert!(!k.has_data_symbols(), "a few markers are not a data table");
        assert_eq!(k.data(0xffffffff82400000), None);
    }

    #[test]
    fn a_reader_without_kernel_addresses_gets_an_empty_table() {
        let k = KernelSymbols::parse("0000000000000000 T rtnl_lock\n0000000000000000 D x\n");
        assert!(k.is_empty());
        assert_eq!(k.function(0x1234), "0x1234");
    }
}
