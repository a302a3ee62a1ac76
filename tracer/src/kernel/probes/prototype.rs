//! Tracepoint prototypes from kernel BTF: the arguments a `tp_btf` program sees, by position.
//!
//! A `tp_btf` program's context is the tracepoint's C arguments, and those change between
//! kernels: before 6.14 the mmap_lock tracepoints are `(mm, memcg_path, write[, success])`,
//! from 6.14 on `(mm, write[, success])`. A program that reads argument 1 as `write` is right on
//! one kernel and reads a pointer as a flag on the other, so the positions are looked up here, in
//! the running kernel's BTF, and handed to the programs.
//!
//! Two BTF records describe a tracepoint `X`:
//! - `typedef void (*btf_trace_X)(void *__data, <args>)`: always present (the verifier checks
//!   `tp_btf` programs against it), but its parameters usually carry types only, no names;
//! - the function `__bpf_trace_X(void *__data, <args>)`, whose parameters carry the names from
//!   the tracepoint's `TP_PROTO`; present whenever pahole kept it, which is the normal case.
//!
//! Both start with `void *__data`, which `tp_btf` programs do not see: argument 0 of the
//! program is the first argument after it.

use btf_rs::{Btf, BtfType, Type};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrototypeError {
    #[error("tracepoint {0} is not in this kernel's BTF (no btf_trace_{0} typedef)")]
    NoTracepoint(String),
    #[error("btf_trace_{tracepoint} is not a function pointer typedef ({found})")]
    NotAFunction { tracepoint: String, found: String },
    #[error(
        "tracepoint {tracepoint} has no argument `{arg}` on this kernel (its arguments: {args})"
    )]
    NoArgument {
        tracepoint: String,
        arg: String,
        args: String,
    },
    #[error("kernel BTF: {0}")]
    Btf(String),
}

/// One argument as a `tp_btf` program sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arg {
    /// The `TP_PROTO` name; empty when the kernel's BTF kept no name for it.
    pub name: String,
    /// The C type, e.g. `struct mm_struct *`, `const char *`, `bool`.
    pub ty: String,
}

/// A tracepoint's arguments, without the leading `__data`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prototype {
    pub tracepoint: String,
    pub args: Vec<Arg>,
}

impl Prototype {
    /// Reads the prototype of tracepoint `name` (e.g. `mmap_lock_acquire_returned`).
    pub fn from_btf(btf: &Btf, name: &str) -> Result<Self, PrototypeError> {
        let typed = typedef_args(btf, name)?;
        // Names come from __bpf_trace_X when the kernel has it with the same arity; the
        // typedef is the authority for how many arguments there are.
        let named = named_args(btf, name, &typed);
        let args = match named {
            Some(named) => named,
            None => typed,
        };
        Ok(Self {
            tracepoint: name.to_owned(),
            args,
        })
    }

    /// The argument names (empty strings where BTF has none).
    pub fn names(&self) -> Vec<String> {
        self.args.iter().map(|a| a.name.clone()).collect()
    }

    /// The program-side position of argument `arg`.
    pub fn position(&self, arg: &str) -> Option<usize> {
        self.args.iter().position(|a| a.name == arg)
    }

    /// Like `position`, failing with the arguments this kernel has.
    pub fn require(&self, arg: &str) -> Result<usize, PrototypeError> {
        self.position(arg)
            .ok_or_else(|| PrototypeError::NoArgument {
                tracepoint: self.tracepoint.clone(),
                arg: arg.to_owned(),
                args: self.to_string(),
            })
    }
}

impl std::fmt::Display for Prototype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| {
                if a.name.is_empty() {
                    a.ty.clone()
                } else if a.ty.ends_with('*') {
                    format!("{}{}", a.ty, a.name)
                } else {
                    format!("{} {}", a.ty, a.name)
                }
            })
            .collect();
        write!(f, "{}({})", self.tracepoint, args.join(", "))
    }
}

/// The argument names of tracepoint `name` as a `tp_btf` program sees them.
pub fn tracepoint_args(btf: &Btf, name: &str) -> Result<Vec<String>, PrototypeError> {
    Prototype::from_btf(btf, name).map(|p| p.names())
}

/// Where a `tp_btf` program finds `write` and, for `acquire_returned`, `success` of an
/// mmap_lock tracepoint on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmapLockArgs {
    pub mm: usize,
    pub write: usize,
    pub success: Option<usize>,
}

/// Positions for one mmap_lock tracepoint (`mmap_lock_start_locking`, `_acquire_returned`,
/// `_released`). Names are used when BTF has them; without names the types decide: the
/// `struct mm_struct *` is `mm`, the first `bool` is `write`, the second `success`.
pub fn mmap_lock_args(btf: &Btf, tracepoint: &str) -> Result<MmapLockArgs, PrototypeError> {
    let p = Prototype::from_btf(btf, tracepoint)?;
    let by_type = |ty: &str, nth: usize| {
        p.args
            .iter()
            .enumerate()
            .filter(|(_, a)| a.ty == ty)
            .nth(nth)
            .map(|(i, _)| i)
    };
    let find = |name: &str, ty: &str, nth: usize| {
        p.position(name).or_else(|| {
            // Only when no argument is named at all: a kernel whose BTF names other arguments
            // but not this one has really renamed or dropped it.
            p.args
                .iter()
                .all(|a| a.name.is_empty())
                .then(|| by_type(ty, nth))
                .flatten()
        })
    };
    let mm = find("mm", "struct mm_struct *", 0).ok_or_else(|| p.require("mm").unwrap_err())?;
    let write = find("write", "bool", 0).ok_or_else(|| p.require("write").unwrap_err())?;
    let success = if tracepoint.ends_with("acquire_returned") {
        Some(find("success", "bool", 1).ok_or_else(|| p.require("success").unwrap_err())?)
    } else {
        None
    };
    Ok(MmapLockArgs { mm, write, success })
}

fn btf_err(e: impl std::fmt::Display) -> PrototypeError {
    PrototypeError::Btf(e.to_string())
}

/// The typedef's function prototype, without `__data`; names as BTF has them (often none).
fn typedef_args(btf: &Btf, name: &str) -> Result<Vec<Arg>, PrototypeError> {
    let typedef_name = format!("btf_trace_{name}");
    let types = btf
        .resolve_types_by_name(&typedef_name)
        .map_err(|_| PrototypeError::NoTracepoint(name.to_owned()))?;
    let typedef = types
        .iter()
        .find_map(|t| match t {
            Type::Typedef(td) => Some(td.clone()),
            _ => None,
        })
        .ok_or_else(|| PrototypeError::NoTracepoint(name.to_owned()))?;
    let mut cur = btf.resolve_chained_type(&typedef).map_err(btf_err)?;
    // typedef → pointer → function prototype, possibly through qualifiers.
    for _ in 0..8 {
        let next = match &cur {
            Type::FuncProto(proto) => return params(btf, proto),
            Type::Ptr(p) => btf.resolve_chained_type(p),
            Type::Const(c) => btf.resolve_chained_type(c),
            Type::Volatile(v) => btf.resolve_chained_type(v),
            Type::Typedef(t) => btf.resolve_chained_type(t),
            Type::TypeTag(t) => btf.resolve_chained_type(t),
            other => {
                return Err(PrototypeError::NotAFunction {
                    tracepoint: name.to_owned(),
                    found: other.name().to_owned(),
                })
            }
        };
        cur = next.map_err(btf_err)?;
    }
    Err(PrototypeError::NotAFunction {
        tracepoint: name.to_owned(),
        found: "a chain of more than 8 types".into(),
    })
}

/// The named parameters of the tracepoint's `__bpf_trace_<class>` function, without `__data`.
///
/// That function is generated per event *class*, not per event: `mmap_lock_start_locking` and
/// `mmap_lock_released` share `__bpf_trace_mmap_lock`, `sched_waking` uses
/// `__bpf_trace_sched_wakeup_template`. So: the event's own name, then its `_`-prefixes
/// (longest first), and last every `__bpf_trace_*` function; a candidate counts only when its
/// parameter types equal the typedef's, and the scan's matches must all agree on the names.
fn named_args(btf: &Btf, name: &str, typed: &[Arg]) -> Option<Vec<Arg>> {
    let same_types = |args: &[Arg]| {
        args.len() == typed.len() && args.iter().zip(typed).all(|(a, t)| a.ty == t.ty)
    };
    let func_args = |t: &Type| match t {
        Type::Func(f) => match btf.resolve_chained_type(f).ok()? {
            Type::FuncProto(proto) => params(btf, &proto).ok(),
            _ => None,
        },
        _ => None,
    };
    let parts: Vec<&str> = name.split('_').collect();
    for n in (1..=parts.len()).rev() {
        let class = parts[..n].join("_");
        let Ok(types) = btf.resolve_types_by_name(&format!("__bpf_trace_{class}")) else {
            continue;
        };
        if let Some(args) = types.iter().filter_map(func_args).find(|a| same_types(a)) {
            return Some(args);
        }
    }
    let mut found: Option<Vec<Arg>> = None;
    // Type ids are dense from 1; the first id that does not resolve is the end.
    for t in (1u32..).map_while(|id| btf.resolve_type_by_id(id).ok()) {
        let Type::Func(f) = &t else { continue };
        if !btf
            .resolve_name(f)
            .is_ok_and(|n| n.starts_with("__bpf_trace_"))
        {
            continue;
        }
        let Some(args) = func_args(&t).filter(|a| same_types(a)) else {
            continue;
        };
        match &found {
            None => found = Some(args),
            // Two classes with these types but other names: no way to tell which is ours.
            Some(prev) if *prev != args => return None,
            Some(_) => {}
        }
    }
    found
}

fn params(btf: &Btf, proto: &btf_rs::FuncProto) -> Result<Vec<Arg>, PrototypeError> {
    proto
        .parameters
        .iter()
        // The first parameter is `void *__data`, the tracepoint's private pointer.
        .skip(1)
        .filter(|p| !p.is_variadic())
        .map(|p| {
            Ok(Arg {
                name: btf.resolve_name(p).unwrap_or_default(),
                ty: type_name(btf, &btf.resolve_chained_type(p).map_err(btf_err)?, 0),
            })
        })
        .collect()
}

/// A C spelling of a type, enough to tell arguments apart (`struct mm_struct *`, `bool`).
fn type_name(btf: &Btf, t: &Type, depth: u32) -> String {
    if depth > 8 {
        return "?".into();
    }
    let named = |kind: &str, x: &dyn BtfType| {
        let n = btf.resolve_name(x).unwrap_or_default();
        if kind.is_empty() {
            n
        } else {
            format!("{kind} {n}")
        }
    };
    let inner = |x: &dyn BtfType| match btf.resolve_type_by_id(x.get_type_id().unwrap_or(0)) {
        Ok(t) => type_name(btf, &t, depth + 1),
        Err(_) => "void".into(),
    };
    match t {
        Type::Void => "void".into(),
        Type::Int(i) => named("", i),
        Type::Float(x) => named("", x),
        Type::Typedef(x) => named("", x),
        Type::Struct(x) => named("struct", x),
        Type::Union(x) => named("union", x),
        Type::Enum(x) => named("enum", x),
        Type::Enum64(x) => named("enum", x),
        Type::Fwd(x) => named(if x.is_union() { "union" } else { "struct" }, x),
        Type::Ptr(p) => {
            let i = inner(p);
            if i.ends_with('*') {
                format!("{i}*")
            } else {
                format!("{i} *")
            }
        }
        Type::Const(c) => format!("const {}", inner(c)),
        Type::Volatile(v) => format!("volatile {}", inner(v)),
        Type::TypeTag(t) => inner(t),
        Type::FuncProto(_) => "function".into(),
        Type::Array(_) => "array".into(),
        other => other.name().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian 12's 6.1.0-56 kernel BTF (`.BTF` of the package's vmlinux), a kernel from before
    /// the mmap_lock tracepoints lost their `memcg_path` argument.
    const DEBIAN_6_1_BTF: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/btf/debian-6.1.0-56-amd64.btf"
    );

    fn host() -> Option<Btf> {
        match Btf::from_file(super::super::kernel::VMLINUX_BTF) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("skipping: no kernel BTF here ({e})");
                None
            }
        }
    }

    fn debian_6_1() -> Btf {
        Btf::from_file(DEBIAN_6_1_BTF).expect("the 6.1 BTF fixture parses")
    }

    fn kernel_at_least(major: u32, minor: u32) -> bool {
        let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut it = rel
            .trim()
            .split(['.', '-'])
            .map(|n| n.parse::<u32>().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0)) >= (major, minor)
    }

    #[test]
    fn debian_6_1_mmap_lock_tracepoints_carry_memcg_path_before_write() {
        let btf = debian_6_1();
        assert_eq!(
            tracepoint_args(&btf, "mmap_lock_acquire_returned").expect("prototype"),
            ["mm", "memcg_path", "write", "success"]
        );
        assert_eq!(
            tracepoint_args(&btf, "mmap_lock_start_locking").expect("prototype"),
            ["mm", "memcg_path", "write"]
        );
        assert_eq!(
            mmap_lock_args(&btf, "mmap_lock_acquire_returned").expect("positions"),
            MmapLockArgs {
                mm: 0,
                write: 2,
                success: Some(3)
            }
        );
        assert_eq!(
            mmap_lock_args(&btf, "mmap_lock_released").expect("positions"),
            MmapLockArgs {
                mm: 0,
                write: 2,
                success: None
            }
        );
        let p = Prototype::from_btf(&btf, "mmap_lock_acquire_returned").expect("prototype");
        assert_eq!(p.args[1].ty, "const char *");
        assert_eq!(
            p.to_string(),
            "mmap_lock_acquire_returned(struct mm_struct *mm, const char *memcg_path, bool write, bool success)"
        );
    }

    #[test]
    fn the_typedef_alone_gives_types_and_the_same_positions() {
        let btf = debian_6_1();
        let typed = typedef_args(&btf, "mmap_lock_acquire_returned").expect("typedef");
        let types: Vec<&str> = typed.iter().map(|a| a.ty.as_str()).collect();
        assert_eq!(
            types,
            ["struct mm_struct *", "const char *", "bool", "bool"]
        );
    }

    #[test]
    fn this_kernels_mmap_lock_tracepoints_match_its_version() {
        let Some(btf) = host() else { return };
        let args = tracepoint_args(&btf, "mmap_lock_acquire_returned").expect("prototype");
        if kernel_at_least(6, 14) {
            assert_eq!(args, ["mm", "write", "success"]);
            assert_eq!(
                mmap_lock_args(&btf, "mmap_lock_acquire_returned").expect("positions"),
                MmapLockArgs {
                    mm: 0,
                    write: 1,
                    success: Some(2)
                }
            );
        } else {
            assert_eq!(args, ["mm", "memcg_path", "write", "success"]);
        }
    }

    #[test]
    fn other_tracepoints_resolve_and_unknown_ones_are_named() {
        let btf = debian_6_1();
        assert_eq!(
            tracepoint_args(&btf, "sched_switch").expect("sched_switch"),
            ["preempt", "prev", "next", "prev_state"]
        );
        // Its class, sched_wakeup_template, is no prefix of its name, and other classes take
        // one `struct task_struct *` under other names: the type is known, the name is not.
        let waking = Prototype::from_btf(&btf, "sched_waking").expect("sched_waking");
        assert_eq!(
            waking.args,
            [Arg {
                name: String::new(),
                ty: "struct task_struct *".into()
            }]
        );
        assert_eq!(
            tracepoint_args(&btf, "contention_begin").expect("contention_begin"),
            ["lock", "flags"]
        );
        assert_eq!(
            Prototype::from_btf(&btf, "no_such_tracepoint"),
            Err(PrototypeError::NoTracepoint("no_such_tracepoint".into()))
        );
        let p = Prototype::from_btf(&btf, "mmap_lock_released").expect("released");
        let err = p.require("success").expect_err("released has no success");
        assert_eq!(
            err.to_string(),
            "tracepoint mmap_lock_released has no argument `success` on this kernel (its arguments: mmap_lock_released(struct mm_struct *mm, const char *memcg_path, bool write))"
        );
    }
}
