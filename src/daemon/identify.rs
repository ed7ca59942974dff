//! Process identification, the daemon's side. It hashes executables, hands the gate the
//! identifiers it keys its tables with, and keeps the policies of identities and of
//! cgroup-and-user pairs up to date.

use std::sync::Arc;

use super::tables::SubjectInfo;
use super::Daemon;
use crate::exe::{ExeError, ExeIdentity};
use crate::kernel::abi::{self, SubjectKey, Task, UnitKey};
use crate::unit::{self, UnitInfo};

impl Daemon {
    /// Identifies a process: hashes its executable, records it in the gate, and makes sure the
    /// identity (cgroup, executable, uid) has its policy entry.
    ///
    /// `exec_ns` is the process's last exec as the gate saw it when it sent the event. Returns
    /// `None` when the process is gone, or when it has called execve() again since, because the
    /// executable read here may then belong to another program than the event's.
    pub(super) fn identify(
        &mut self,
        tgid: u32,
        exec_ns: u64,
        cgroup_id: u64,
        uid: u32,
    ) -> Option<(SubjectKey, SubjectInfo)> {
        let exe = match self.exes.identify_pid(tgid) {
            Ok(exe) => exe,
            // The process exited (or is a zombie) before the daemon looked: nothing to decide.
            Err(ExeError::ProcessGone(_) | ExeError::NoExecutable(_)) => return None,
            Err(error) => {
                tracing::warn!(
                    "failed to identify the executable of pid {tgid}: {error}, ignoring"
                );
                return None;
            }
        };
        // The executable was read after the exec of `exec_ns`. If no exec came between that one
        // and now, it is that exec's program; otherwise the newer exec's event identifies it.
        if self.gate.exec_ns(tgid) != exec_ns {
            tracing::debug!(
                tgid,
                "process called execve() again before it was identified"
            );
            return None;
        }
        let exe_id = self.exe_id(&exe);
        self.recent.put((tgid, exec_ns), exe_id);
        let task = Task {
            exe_id,
            padding: 0,
            exec_ns,
        };
        if let Err(error) = self.gate.tasks.insert(tgid, task, 0) {
            tracing::warn!(
                "failed to record pid {tgid} in the gate: {error}, its flows go through the daemon"
            );
        }

        let key = SubjectKey {
            cgroup_id,
            exe_id,
            uid,
        };
        if let Some(info) = self.tables.subject(&key) {
            return Some((key, info.clone()));
        }
        let info = SubjectInfo {
            unit: self.unit_of(cgroup_id),
            exe,
            uid,
            policy: abi::POLICY_NONE,
        };
        match self.tables.add_subject(&mut self.gate, key, info.clone()) {
            Ok(policy) => Some((key, SubjectInfo { policy, ..info })),
            Err(error) => {
                tracing::warn!("failed to record an identity in the gate: {error}, its flows go through the daemon");
                Some((key, info))
            }
        }
    }

    /// Gives the gate the policy for a cgroup and user, used while a new program of theirs is
    /// still being identified.
    pub(super) fn add_unit(&mut self, cgroup_id: u64, uid: u32) {
        let key = UnitKey {
            cgroup_id,
            uid,
            padding: 0,
        };
        let unit = self.unit_of(cgroup_id);
        if let Err(error) = self.tables.add_unit(&mut self.gate, key, unit) {
            tracing::warn!("failed to record cgroup {cgroup_id} in the gate: {error}, its new programs' flows go through the daemon");
        }
    }

    pub(super) fn exe_id(&mut self, exe: &Arc<ExeIdentity>) -> u32 {
        let key = (exe.path.clone(), exe.sha256.to_string(), exe.path_verified);
        if let Some(&id) = self.exe_ids.get(&key) {
            return id;
        }
        let id = self.tables.allocate();
        self.exe_ids.insert(key, id);
        self.exe_by_id.insert(id, Arc::clone(exe));
        id
    }

    pub(super) fn unit_of(&mut self, cgroup_id: u64) -> Arc<UnitInfo> {
        if let Some(unit) = self.units.get(&cgroup_id) {
            return Arc::clone(unit);
        }
        let path = self.cgroups.path_of(cgroup_id).unwrap_or_default();
        let unit = Arc::new(unit::parse_cgroup_path(&path));
        if !path.is_empty() {
            self.units.insert(cgroup_id, Arc::clone(&unit));
        }
        unit
    }
}
