//! How addresses leave faultline: raw, or as opaque ids.
//!
//! A kernel pointer (an `mm_struct`, a lock, a userfaultfd context) in an API answer defeats
//! KASLR, and another process's fault address defeats its ASLR. Views built for readers who
//! may not see them (the agent's API, alerts, incidents, pictures, logs) name each address by
//! a keyed hash instead: the same address gets the same id for as long as the key lives (one
//! agent run), so ids still join across endpoints, and without the key an id says nothing
//! about the address.
//!
//! The hash is SipHash-2-4 (the `siphasher` crate): a pseudo-random function with a 128-bit
//! key, whose output its specification fixes. `std`'s `DefaultHasher` is unkeyed when built
//! with `new()` (anyone could hash candidate addresses and compare: a kernel address has few
//! unknown bits) and its algorithm may change between Rust releases. The key comes from the
//! caller (the agent draws it from the OS at start), so the core stays deterministic.

use std::{fmt, hash::Hasher as _};

use serde::{Serialize, Serializer};
use siphasher::sip::SipHasher24;

use crate::event::Addr;

/// What an address points at, which names its ids (`mm-…`, `lock-…`, `uffd-…`, `addr-…`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddrKind {
    /// A process's `mm_struct` (its mmap_lock).
    Mm,
    /// A kernel lock (mutex, rwsem, semaphore, spinlock…).
    Lock,
    /// A userfaultfd context.
    Uffd,
    /// A user-space address (where a process faulted).
    User,
}

impl AddrKind {
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Mm => "mm",
            Self::Lock => "lock",
            Self::Uffd => "uffd",
            Self::User => "addr",
        }
    }

    /// Hashed with the address, so the same value as two kinds gives unrelated ids.
    fn domain(self) -> u8 {
        match self {
            Self::Mm => 1,
            Self::Lock => 2,
            Self::Uffd => 3,
            Self::User => 4,
        }
    }
}

/// The secret of one run's ids. Its `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct AddrKey([u8; 16]);

impl AddrKey {
    pub fn new(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The id of `addr` as `kind`: 48 bits of SipHash-2-4 (12 hex digits: no collision in
    /// practice among the thousands of addresses a host shows, and short enough to read).
    fn id(&self, kind: AddrKind, addr: Addr) -> u64 {
        let (k0, k1) = self.0.split_at(8);
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        let mut h = SipHasher24::new_with_keys(word(k0), word(k1));
        h.write_u8(kind.domain());
        h.write_u64(addr.0);
        h.finish() & ID_MASK
    }
}

const ID_MASK: u64 = (1 << 48) - 1;

impl fmt::Debug for AddrKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AddrKey(..)")
    }
}

/// Whether a view shows raw addresses or opaque ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Exposure {
    /// Raw addresses: for readers who could read them anyway (root on the host: `replay` of a
    /// trace, `diagnose`, an agent run with `--expose-addresses` on loopback).
    #[default]
    Raw,
    /// Opaque ids under this key.
    Opaque(AddrKey),
}

impl Exposure {
    /// `addr`, as this exposure shows a `kind` address.
    pub fn show(&self, kind: AddrKind, addr: Addr) -> Shown {
        match self {
            Self::Raw => Shown::Raw(addr),
            Self::Opaque(key) => Shown::Opaque {
                kind,
                id: key.id(kind, addr),
            },
        }
    }

    pub fn is_raw(&self) -> bool {
        matches!(self, Self::Raw)
    }
}

/// An address as a view shows it: `0xffff…` or `mm-3f9a1c2b0e4d`. Ordered and hashable so
/// pictures can group by it; serialized as its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Shown {
    Raw(Addr),
    Opaque { kind: AddrKind, id: u64 },
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Raw(a) => a.fmt(f),
            Self::Opaque { kind, id } => write!(f, "{}-{id:012x}", kind.prefix()),
        }
    }
}

impl Serialize for Shown {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn key(seed: u8) -> Exposure {
        Exposure::Opaque(AddrKey::new([seed; 16]))
    }

    #[test]
    fn an_address_gets_the_same_id_under_one_key_and_another_under_another() {
        let a = Addr(0xffff_8880_1234_5000);
        let one = key(1);
        assert_eq!(one.show(AddrKind::Mm, a), one.show(AddrKind::Mm, a));
        assert_eq!(
            one.show(AddrKind::Mm, a).to_string(),
            key(1).show(AddrKind::Mm, a).to_string(),
            "the id depends on the key's value only"
        );
        assert_ne!(one.show(AddrKind::Mm, a), key(2).show(AddrKind::Mm, a));
        assert_ne!(
            one.show(AddrKind::Mm, a).to_string(),
            one.show(AddrKind::Lock, a).to_string()
        );
    }

    #[test]
    fn opaque_ids_are_named_by_kind_and_never_read_as_addresses() {
        let a = Addr(0xffff_8880_1234_5000);
        let ex = key(7);
        for (kind, prefix) in [
            (AddrKind::Mm, "mm-"),
            (AddrKind::Lock, "lock-"),
            (AddrKind::Uffd, "uffd-"),
            (AddrKind::User, "addr-"),
        ] {
            let s = ex.show(kind, a).to_string();
            let hex = s.strip_prefix(prefix).unwrap_or_else(|| panic!("{s}"));
            assert_eq!(hex.len(), 12, "{s}");
            assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{s}");
            assert!(!s.contains("0x") && !s.contains("ffff8880"), "{s}");
            assert_eq!(
                serde_json::to_value(ex.show(kind, a)).expect("JSON"),
                serde_json::Value::String(s)
            );
        }
        assert_eq!(
            Exposure::Raw.show(AddrKind::Mm, a).to_string(),
            "0xffff888012345000"
        );
        assert_eq!(format!("{:?}", AddrKey::new([9; 16])), "AddrKey(..)");
    }

    #[test]
    fn distinct_addresses_get_distinct_ids() {
        let ex = key(3);
        // Neighbouring slab objects and pages: the addresses a host really shows differ in
        // few bits.
        let ids: HashSet<String> = (0..20_000u64)
            .map(|i| {
                ex.show(AddrKind::Lock, Addr(0xffff_8880_0000_0000 + i * 64))
                    .to_string()
            })
            .collect();
        assert_eq!(ids.len(), 20_000);
    }
}
