//! The agent's lock-contention profile: the kernel's tables read on handles of their own (never
//! under the agent's lock), named with a symbol table parsed at most once a minute (module
//! loads change it; a parse costs tens of ms, too much for every scrape).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    core::lock_profile::Profile,
    kernel::probes::ProfileOptions,
    kernel::{
        lock_names::Namer,
        probes::{
            families::lock_profile::{ProfileMaps, RawProfile},
            Aggregates,
        },
    },
    sinks::metrics::{LockSeriesMemory, ProfileScrape},
};

use super::profile_ageing::Ageing;

const NAMES_TTL: Duration = Duration::from_secs(60);

pub struct LockProfile {
    maps: ProfileMaps,
    aggregates: Arc<Aggregates>,
    /// The profile's options: off (`--no-lock-profile`: the tables stay empty and no series is
    /// shown by lock) and the tables' capacities.
    opts: ProfileOptions,
    namer: Mutex<Option<(Instant, Arc<Namer>)>>,
    /// The `lock` series of /metrics: their own lock, so a scrape never waits on the agent's.
    series: Mutex<LockSeriesMemory>,
    /// Idle aggregates moved out of the kernel's table (`profile_ageing`).
    ageing: Mutex<Ageing>,
}

impl LockProfile {
    pub fn new(
        maps: ProfileMaps,
        aggregates: Arc<Aggregates>,
        opts: ProfileOptions,
        idle_after: Duration,
    ) -> Self {
        Self {
            maps,
            aggregates,
            opts,
            namer: Mutex::new(None),
            series: Mutex::new(LockSeriesMemory::default()),
            ageing: Mutex::new(Ageing::new(idle_after)),
        }
    }

    /// What /metrics shows of the profile: the `lock` series and how full its tables are;
    /// `None` with the profile off.
    pub fn scrape(&self) -> Result<Option<ProfileScrape>, String> {
        if !self.opts.enabled {
            return Ok(None);
        }
        let raw = self.raw()?;
        let aged_out = self
            .ageing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retired();
        let profile = self.namer().resolve(&raw);
        let mut memory = self.series.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Some(ProfileScrape {
            series: memory.fold(&profile),
            entries: (raw.keys_in_table, self.opts.entries),
            stacks: (raw.stacks.len(), self.opts.stacks),
            aged_out,
        }))
    }

    /// The kernel's symbols, as this profile names its frames (the user-lock profile's kernel
    /// frames too).
    pub fn kernel_symbols(&self) -> Arc<Namer> {
        self.namer()
    }

    fn namer(&self) -> Arc<Namer> {
        let mut slot = self.namer.lock().unwrap_or_else(|e| e.into_inner());
        match &*slot {
            Some((at, n)) if at.elapsed() < NAMES_TTL => n.clone(),
            _ => {
                let n = Arc::new(Namer::new());
                *slot = Some((Instant::now(), n.clone()));
                n
            }
        }
    }

    /// The cumulative profile since the agent started, named.
    pub fn read(&self) -> Result<Profile, String> {
        let raw = self.raw()?;
        Ok(self.namer().resolve(&raw))
    }

    /// The kernel's tables read, idle aggregates aged out when due, and those held in user
    /// space added back: everything since the agent started.
    fn raw(&self) -> Result<RawProfile, String> {
        // Held across the walk: a reading must not see a key both in the table and among the
        // aged-out ones (the timer's ageing taking it mid-walk), nor walk a table another
        // reading is deleting from.
        let mut ageing = self.ageing.lock().unwrap_or_else(|e| e.into_inner());
        let counters = self.aggregates.counters().map_err(|e| e.to_string())?;
        let mut raw = self.maps.read(&counters);
        if self.opts.enabled {
            let moved = ageing.age(&self.maps, &raw);
            if moved > 0 {
                log::debug!(
                    "lock profile: {moved} idle aggregates moved out of the kernel's table ({} held)",
                    ageing.retired()
                );
                // What was moved is no longer in the table: read it again, then add back.
                raw = self.maps.read(&counters);
            }
        }
        ageing.add_to(&mut raw);
        Ok(raw)
    }

    /// Ages the table out of band (the agent's timer): a reading nobody asked for, so idle
    /// aggregates move even when nothing scrapes.
    pub fn age(&self) {
        if let Err(e) = self.raw() {
            log::debug!("lock profile: ageing skipped: {e}");
        }
    }
}
