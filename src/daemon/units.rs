//! The units the daemon follows, each with the verdict of the rules for the unit as a whole.

use std::collections::{BTreeMap, HashMap};

use crate::control::UnitRow;
use crate::rules::Rule;
use crate::systemd::summary::{self, UnitPolicy};
use crate::systemd::{Manager, UnitRecord};

struct Entry {
    record: UnitRecord,
    policy: UnitPolicy,
    rule_count: usize,
}

/// Units by manager and name, and by their current cgroup ID.
#[derive(Default)]
pub struct UnitDirectory {
    entries: BTreeMap<(Manager, String), Entry>,
    by_cgroup: HashMap<u64, (Manager, String)>,
}

impl UnitDirectory {
    /// Records a unit's new state. Returns the cgroup ID the unit had before, when it changed
    /// (the unit restarted, or stopped and lost its cgroup).
    pub fn update(&mut self, record: UnitRecord, rules: &[Rule]) -> Option<u64> {
        let key = (record.manager, record.name.clone());
        // Most updates change only the state or the cgroup ID, and the summary depends only on
        // the unit's position in the tree, so it is computed again only when that moved.
        let (policy, rule_count) = match self.entries.get(&key) {
            Some(old) if old.record.info == record.info => (old.policy, old.rule_count),
            _ => (
                summary::unit_policy(rules, &record.info),
                summary::rule_count(rules, &record.info),
            ),
        };
        let entry = Entry {
            policy,
            rule_count,
            record,
        };
        let new_id = entry.record.cgroup_id;
        if let Some(id) = new_id {
            self.by_cgroup.insert(id, key.clone());
        }
        let old_id = self
            .entries
            .insert(key, entry)
            .and_then(|old| old.record.cgroup_id);
        match old_id {
            Some(old) if Some(old) != new_id => {
                self.by_cgroup.remove(&old);
                Some(old)
            }
            _ => None,
        }
    }

    /// Forgets a unit. Returns its cgroup ID, if it had one.
    pub fn remove(&mut self, manager: Manager, name: &str) -> Option<u64> {
        let entry = self.entries.remove(&(manager, name.to_owned()))?;
        let id = entry.record.cgroup_id?;
        self.by_cgroup.remove(&id);
        Some(id)
    }

    /// Forgets every unit of a manager. Returns their cgroup IDs.
    pub fn remove_manager(&mut self, manager: Manager) -> Vec<u64> {
        let names: Vec<String> = self
            .entries
            .keys()
            .filter(|(owner, _)| *owner == manager)
            .map(|(_, name)| name.clone())
            .collect();
        names
            .iter()
            .filter_map(|name| self.remove(manager, name))
            .collect()
    }

    /// Summarizes every unit again under a new rule set.
    pub fn resummarize(&mut self, rules: &[Rule]) {
        for entry in self.entries.values_mut() {
            entry.policy = summary::unit_policy(rules, &entry.record.info);
            entry.rule_count = summary::rule_count(rules, &entry.record.info);
        }
    }

    /// Units that hold a cgroup now, with the cgroup ID and the unit policy.
    pub fn live(&self) -> impl Iterator<Item = (&UnitRecord, u64, UnitPolicy)> {
        self.entries.values().filter_map(|entry| {
            let id = entry.record.cgroup_id?;
            Some((&entry.record, id, entry.policy))
        })
    }

    /// Rows for `ListUnits`, with the packet and byte counts of each cgroup ID.
    pub fn rows(&self, counters: &HashMap<u64, (u64, u64)>) -> Vec<UnitRow> {
        self.entries
            .values()
            .map(|entry| {
                let record = &entry.record;
                let id = record.cgroup_id.unwrap_or(0);
                let (packets, bytes) = counters.get(&id).copied().unwrap_or((0, 0));
                (
                    record.name.clone(),
                    record.manager.name(),
                    record.description.clone(),
                    record.info.app_id.clone().unwrap_or_default(),
                    record.info.cgroup_path.clone(),
                    id,
                    record
                        .main_exe
                        .as_ref()
                        .map(|path| path.display().to_string())
                        .unwrap_or_default(),
                    entry.policy.as_str().to_owned(),
                    u32::try_from(entry.rule_count).unwrap_or(u32::MAX),
                    packets,
                    bytes,
                )
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}
