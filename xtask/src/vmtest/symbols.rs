//! Names for guest kernel addresses: a vCPU sampled through the QEMU monitor gives a bare
//! `rip`, which says nothing until it reads `__schedule+0x1bc`. Debian's packages ship a
//! placeholder `System.map` ("the real System.map is in the -dbg package"), so the guest itself
//! prints, at boot, the runtime range of each function a verdict needs (`SYM_LINE` lines, from
//! /proc/kallsyms after KASLR).

/// The guest's /init prints `<mark> sym <name> <start> <end>` for each of these.
pub const SYM_LINE: &str = "sym";

/// Functions a stalled vCPU is worth naming in: text patching (x86's names before and from
/// 6.16), the scheduler, cross-CPU calls, idle.
pub const NAMED: [&str; 14] = [
    "asm_exc_int3",
    "exc_int3",
    "poke_int3_handler",
    "text_poke_bp_batch",
    "text_poke_bp",
    "smp_text_poke_int3_handler",
    "smp_text_poke_batch_finish",
    "__schedule",
    "smp_call_function_many_cond",
    "on_each_cpu_cond_mask",
    "default_idle",
    "pv_native_safe_halt",
    "native_safe_halt",
    "rcu_dump_cpu_stacks",
];

/// The busybox awk program the guest runs over /proc/kallsyms (sorted by address for the core
/// kernel): each wanted function with its start and the next symbol's address as its end.
pub fn awk_program(mark: &str) -> String {
    let wanted: Vec<String> = NAMED.iter().map(|n| format!("w[\"{n}\"]=1")).collect();
    format!(
        "BEGIN{{{}}} p!=\"\"{{print \"{mark} {SYM_LINE} \" p \" \" s \" \" $1; p=\"\"}} ($3 in w)&&NF==3{{p=$3; s=$1}}",
        wanted.join(";")
    )
}

/// Functions' runtime ranges, as the guest printed them.
#[derive(Default)]
pub struct Symbols {
    ranges: Vec<(u64, u64, String)>,
}

impl Symbols {
    /// From the console's `<mark> sym name start end` lines.
    pub fn from_guest(lines: &[String], mark: &str) -> Self {
        let prefix = format!("{mark} {SYM_LINE} ");
        let ranges = lines
            .iter()
            .filter_map(|l| {
                let mut f = l.trim().strip_prefix(&prefix)?.split_whitespace();
                let name = f.next()?.to_owned();
                let start = u64::from_str_radix(f.next()?, 16).ok()?;
                let end = u64::from_str_radix(f.next()?, 16).ok()?;
                (start != 0 && end > start).then_some((start, end, name))
            })
            .collect();
        Self { ranges }
    }

    /// `name+0xoff` when `addr` is inside one of the printed functions.
    pub fn name(&self, addr: u64) -> Option<String> {
        self.ranges
            .iter()
            .find(|(start, end, _)| (*start..*end).contains(&addr))
            .map(|(start, _, name)| format!("{name}+{:#x}", addr - start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_inside_a_printed_function_is_named_with_its_offset() {
        let lines = vec![
            "@@VMTEST kernel 6.1.0-57-amd64 nproc=2".to_owned(),
            "@@VMTEST sym __schedule ffffffffa1a523d0 ffffffffa1a52c00".to_owned(),
            "@@VMTEST sym asm_exc_int3 ffffffffa1c00ba0 ffffffffa1c00bf0".to_owned(),
            // A non-root guest sees zeros: no range.
            "@@VMTEST sym exc_int3 0000000000000000 0000000000000000".to_owned(),
        ];
        let syms = Symbols::from_guest(&lines, "@@VMTEST");
        assert_eq!(
            syms.name(0xffffffffa1a5258c).as_deref(),
            Some("__schedule+0x1bc")
        );
        assert_eq!(
            syms.name(0xffffffffa1c00ba0).as_deref(),
            Some("asm_exc_int3+0x0")
        );
        assert_eq!(syms.name(0xffffffffa1c00bf0), None, "the end is exclusive");
        assert_eq!(syms.name(0), None);
    }

    #[test]
    fn the_awk_program_names_every_wanted_function() {
        let p = awk_program("@@VMTEST");
        for n in NAMED {
            assert!(p.contains(&format!("w[\"{n}\"]=1")), "{n}");
        }
        assert!(p.contains("print \"@@VMTEST sym \""), "{p}");
    }
}
