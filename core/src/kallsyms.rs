//! The kernel's symbol table (the text of `/proc/kallsyms`): function names for stack frames,
//! data symbols for static locks (listed only with `CONFIG_KALLSYMS_ALL`), and which frames
//! are the locking functions themselves (the `.spinlock.text` and `.sched.text` sections, where
//! the kernel puts its lock slow paths: what perf's lock contention skips too).

/// A function or data symbol at an address.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Symbol {
    addr: u64,
    name: String,
    /// `[module]` for a module's symbol.
    module: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct KernelSymbols {
    /// Text symbols, sorted by address.
    text: Vec<Symbol>,
    /// Data symbols (`d D b B r R`), sorted by address.
    data: Vec<Symbol>,
    /// `[__lock_text_start, __lock_text_end)` and `[__sched_text_start, __sched_text_end)`.
    lock_text: Vec<(u64, u64)>,
}

impl KernelSymbols {
    /// Parses the text of `/proc/kallsyms`. A reader without CAP_SYSLOG sees every address as
    /// zero: the table is then empty, and [`Self::is_empty`] says so.
    pub fn parse(text: &str) -> Self {
        let mut t = Self::default();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if addr == 0 {
                continue;
            }
            let module = parts
                .next()
                .map(|m| m.trim_matches(|c| c == '[' || c == ']').to_owned());
            let sym = Symbol {
                addr,
                name: name.to_owned(),
                module,
            };
            match kind {
                "t" | "T" | "w" | "W" => t.text.push(sym),
                "d" | "D" | "b" | "B" | "r" | "R" => t.data.push(sym),
                _ => {}
            }
        }
        t.text.sort_by_key(|s| s.addr);
        t.data.sort_by_key(|s| s.addr);
        let at = |name: &str| t.text.iter().find(|s| s.name == name).map(|s| s.addr);
        for (start, end) in [
            ("__lock_text_start", "__lock_text_end"),
            ("__sched_text_start", "__sched_text_end"),
        ] {
            if let (Some(s), Some(e)) = (at(start), at(end)) {
                t.lock_text.push((s, e));
            }
        }
        t
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
                match &s.module {
                    Some(m) => format!("{}+{off:#x} [{m}]", s.name),
                    None => format!("{}+{off:#x}", s.name),
                }
            }
            None => format!("{addr:#x}"),
        }
    }

    /// The bare function name at `addr`.
    pub fn function_name(&self, addr: u64) -> Option<&str> {
        below(&self.text, addr).map(|s| s.name.as_str())
    }

    /// The data symbol a static lock at `addr` is (or lies in: `sym+0xoff`); `None` without data
    /// symbols, or past 64 KiB from the nearest one (then it is not a static object's).
    pub fn data(&self, addr: u64) -> Option<String> {
        if !self.has_data_symbols() {
            return None;
        }
        let s = below(&self.data, addr)?;
        match addr - s.addr {
            0 => Some(s.name.clone()),
            off if off < 1 << 16 => Some(format!("{}+{off:#x}", s.name)),
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
