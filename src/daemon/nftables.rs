//! The daemon's side of the nftables layer: which units go into table `inet slicewall`, when the
//! table is synced, and what happens when someone else removes it.

use std::collections::HashMap;

use crate::nft::{Nft, NftUnit};
use crate::systemd::summary::UnitPolicy;

use super::units::UnitDirectory;

pub struct NftLayer {
    nft: Nft,
    /// Set when the units or their policies changed since the last sync.
    dirty: bool,
    /// Error of the last failed sync or check, reported as a degraded reason until one succeeds.
    error: Option<String>,
    /// Packets and bytes per cgroup ID, both directions, as of the last check.
    counters: HashMap<u64, (u64, u64)>,
}

impl NftLayer {
    pub fn new() -> Self {
        NftLayer {
            nft: Nft::new(),
            dirty: true,
            error: None,
            counters: HashMap::new(),
        }
    }

    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    pub fn counters(&self) -> &HashMap<u64, (u64, u64)> {
        &self.counters
    }

    /// Syncs the table with the units if they changed. Returns true when it ran.
    pub fn sync_if_dirty(&mut self, units: &UnitDirectory) -> bool {
        if !self.dirty {
            return false;
        }
        self.dirty = false;
        let desired = self.units(units);
        match self.nft.sync(&desired) {
            Ok(applied) => {
                for skipped in applied.skipped {
                    tracing::debug!(
                        cgroup = %skipped.path,
                        reason = %skipped.reason,
                        "left a unit out of the nftables sets"
                    );
                }
                if self.error.take().is_some() {
                    tracing::info!("nftables table inet slicewall is in force again");
                }
            }
            Err(error) => self.failed(&error),
        }
        true
    }

    /// Checks that table `inet slicewall` is still whole and restores it if not. Returns a
    /// warning to audit when it had to be restored. Also reads the counters.
    pub fn check(&mut self, units: &UnitDirectory) -> Option<String> {
        let intact = match self.nft.is_intact() {
            Ok(intact) => intact,
            Err(error) => {
                self.failed(&error);
                return None;
            }
        };
        let mut warning = None;
        if !intact {
            let message =
                "table inet slicewall was deleted or changed by someone else; restored it"
                    .to_owned();
            tracing::warn!("{message}");
            let desired = self.units(units);
            match self.nft.install(&desired) {
                Ok(_) => warning = Some(message),
                Err(error) => self.failed(&error),
            }
        }
        match self.nft.counters() {
            Ok(counters) => {
                self.counters = counters
                    .into_iter()
                    .map(|(id, c)| (id, (c.tx_packets + c.rx_packets, c.tx_bytes + c.rx_bytes)))
                    .collect();
            }
            Err(error) => tracing::debug!("failed to read the nftables counters: {error}"),
        }
        warning
    }

    fn failed(&mut self, error: &crate::nft::NftError) {
        let text = crate::error_chain(error);
        if self.error.as_deref() != Some(text.as_str()) {
            tracing::error!("nftables: {text}");
        }
        self.error = Some(text);
        // Try again at the next sync.
        self.dirty = true;
    }

    fn units(&self, units: &UnitDirectory) -> Vec<NftUnit> {
        units
            .live()
            .filter_map(|(record, cgroup_id, policy)| {
                let path = &record.info.cgroup_path;
                let depth = path.split('/').filter(|part| !part.is_empty()).count();
                let level = u8::try_from(depth).ok()?;
                (depth > 0).then(|| NftUnit {
                    cgroup_id,
                    path: path.clone(),
                    level,
                    deny: policy == UnitPolicy::Deny,
                })
            })
            .collect()
    }
}
