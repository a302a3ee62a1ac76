//! Draining the kernel's ring buffer from async code.

use std::io;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::kernel::decode::{decode, DecodeError, Decoded};

/// The event ring buffer, readable from tokio.
pub struct EventStream {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl EventStream {
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the ring buffer owns its map fd, which stays open and the same for as long as
        // the AsyncFd (which owns the ring buffer) lives.
        let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    /// Waits until records are available, then hands each one to `f`; returns how many.
    pub async fn next_batch(
        &mut self,
        mut f: impl FnMut(Result<Decoded, DecodeError>),
    ) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable_mut().await?;
            let n = drain(guard.get_inner_mut(), &mut f);
            // A full batch may have left records behind: stay ready so the next call reads on
            // without waiting for a wake-up that new records may never send.
            if n < MAX_BATCH {
                guard.clear_ready();
            }
            if n > 0 {
                return Ok(n);
            }
        }
    }

    /// Hands records already in the buffer (at most `MAX_BATCH`) to `f` without waiting.
    pub fn drain_now(&mut self, mut f: impl FnMut(Result<Decoded, DecodeError>)) -> usize {
        drain(self.fd.get_mut(), &mut f)
    }
}

/// Most records handed over per call. A producer faster than the consumer would otherwise keep
/// one drain going forever and starve the agent's other work (snapshots, which are also what
/// confirms the model after a loss).
pub const MAX_BATCH: usize = 4096;

fn drain(ring: &mut RingBuf<MapData>, f: &mut impl FnMut(Result<Decoded, DecodeError>)) -> usize {
    let mut n = 0;
    while n < MAX_BATCH {
        let Some(item) = ring.next() else {
            break;
        };
        f(decode(&item));
        n += 1;
    }
    n
}
