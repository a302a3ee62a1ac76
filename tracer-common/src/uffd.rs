//! userfaultfd ioctl operations, indexed 0..COUNT, and their `_IOC_NR` (type 0xAA); the key
//! and roles of the kernel's table of handler tasks.

/// Key of `UFFD_HANDLERS`: a task seen issuing ioctls on a userfaultfd context.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UffdHandlerKey {
    pub ctx: u64,
    pub tid: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<UffdHandlerKey>() == 16);

/// Values of `UFFD_HANDLERS`: the strongest role the task was seen in on that context. A
/// snapshot of the table restores handlers whose first ioctl record was lost.
pub mod handler_role {
    /// Only setup ioctls (API, REGISTER, UNREGISTER).
    pub const SETUP: u64 = 1;
    /// Resolved faults (COPY, ZEROPAGE, WAKE, CONTINUE, …).
    pub const RESOLVER: u64 = 2;

    pub const fn of_op(op: u8) -> u64 {
        if op <= super::uffd_op::UNREGISTER {
            SETUP
        } else {
            RESOLVER
        }
    }
}

pub mod uffd_op {
    pub const API: u8 = 0;
    pub const REGISTER: u8 = 1;
    pub const UNREGISTER: u8 = 2;
    pub const WAKE: u8 = 3;
    pub const COPY: u8 = 4;
    pub const ZEROPAGE: u8 = 5;
    pub const WRITEPROTECT: u8 = 6;
    pub const CONTINUE: u8 = 7;
    pub const POISON: u8 = 8;
    pub const MOVE: u8 = 9;
    pub const COUNT: u8 = 10;
    /// `_IOC_TYPE` of every userfaultfd ioctl.
    pub const IOC_TYPE: u32 = 0xAA;

    /// The ioctl numbers (linux/userfaultfd.h, x86_64) of the ops the workloads issue.
    pub const UFFDIO_API: u32 = 0xc018_aa3f;
    pub const UFFDIO_REGISTER: u32 = 0xc020_aa00;
    pub const UFFDIO_COPY: u32 = 0xc028_aa03;
    pub const UFFDIO_WAKE: u32 = 0x8010_aa02;
    /// `uffdio_api.api`, and the register mode for missing pages.
    pub const UFFD_API: u64 = 0xaa;
    pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

    /// The op for an ioctl `cmd`, if it is a userfaultfd one.
    pub const fn from_cmd(cmd: u32) -> Option<u8> {
        if (cmd >> 8) & 0xff != IOC_TYPE {
            return None;
        }
        match cmd & 0xff {
            0x3f => Some(API),
            0x00 => Some(REGISTER),
            0x01 => Some(UNREGISTER),
            0x02 => Some(WAKE),
            0x03 => Some(COPY),
            0x04 => Some(ZEROPAGE),
            0x05 => Some(MOVE),
            0x06 => Some(WRITEPROTECT),
            0x07 => Some(CONTINUE),
            0x08 => Some(POISON),
            _ => None,
        }
    }

    /// Errno buckets of the per-op error counters.
    pub const ERRNOS: [i64; 9] = [11, 17, 2, 12, 16, 22, 14, 3, 1];
    pub const ERRNO_NAMES: [&str; 10] = [
        "EAGAIN", "EEXIST", "ENOENT", "ENOMEM", "EBUSY", "EINVAL", "EFAULT", "ESRCH", "EPERM",
        "other",
    ];
    pub const ERRNO_BUCKETS: u32 = 10;

    pub fn errno_bucket(ret: i64) -> u32 {
        let mut i = 0;
        while i < ERRNOS.len() {
            if -ret == ERRNOS[i] {
                return i as u32;
            }
            i += 1;
        }
        ERRNOS.len() as u32
    }
}
