//! The agent's user-lock profile: the kernel's tables read on handles of their own (never under
//! the agent's lock) and named by a `UserNamer`, which the snapshots prime so that stacks of
//! short-lived processes are symbolised while those processes still live.

use std::sync::Arc;

use crate::{
    core::user_profile::UserProfile,
    kernel::{
        probes::{families::futex::UserProfileMaps, Aggregates},
        user_stacks::UserNamer,
    },
};

use super::lock_profile::LockProfile;

pub struct UserLockProfile {
    maps: UserProfileMaps,
    aggregates: Arc<Aggregates>,
    namer: UserNamer,
    /// Its kernel symbols (shared with the kernel-lock profile's, parsed at most once a minute).
    kernel: Arc<LockProfile>,
}

impl UserLockProfile {
    pub fn new(
        maps: UserProfileMaps,
        aggregates: Arc<Aggregates>,
        kernel: Arc<LockProfile>,
    ) -> Self {
        Self {
            maps,
            aggregates,
            namer: UserNamer::new(),
            kernel,
        }
    }

    fn raw(&self) -> Result<crate::kernel::probes::families::futex::RawUserProfile, String> {
        let counters = self.aggregates.counters().map_err(|e| e.to_string())?;
        Ok(self.maps.read(&counters))
    }

    /// Names the stacks and locks of processes new since the last look, while they live.
    pub fn prime(&self) {
        match self.raw() {
            Ok(raw) => self.namer.prime(&raw),
            Err(e) => log::debug!("user-lock profile: priming skipped: {e}"),
        }
    }

    /// The cumulative profile since the agent started, named.
    pub fn read(&self) -> Result<UserProfile, String> {
        let raw = self.raw()?;
        let ksyms = self.kernel.kernel_symbols();
        Ok(self.namer.resolve(&raw, ksyms.symbols()))
    }
}
