//! Audit records of decisions: the gate's events turned into journal records with the unit,
//! executable and rule the daemon has recorded for them.

use super::tables::{SubjectInfo, Verdict};
use super::Daemon;
use crate::audit::{self, Decision};
use crate::exe::ExeIdentity;
use crate::kernel::abi::{self, Event, SubjectKey};
use crate::unit::UnitInfo;

impl Daemon {
    pub(super) fn audit_event(&mut self, event: &Event, verdict: u8, reason: u8, rule_id: u32) {
        // The gate decides some flows before the daemon has identified the program (by the
        // policy of its cgroup), and reports no executable for them. The daemon identified it
        // since, from the exec event that came first, or does so now.
        let exe_id = match event.exe_id {
            0 => self
                .recent
                .get(&(event.tgid, event.exec_ns))
                .copied()
                .or_else(|| {
                    self.identify(event.tgid, event.exec_ns, event.cgroup_id, event.uid)
                        .map(|(key, _)| key.exe_id)
                })
                .unwrap_or(0),
            known => known,
        };
        let key = SubjectKey {
            cgroup_id: event.cgroup_id,
            exe_id,
            uid: event.uid,
        };
        let info = match self.tables.subject(&key) {
            Some(info) => info.clone(),
            None => {
                let exe = self.exe_by_id.get(&exe_id).cloned();
                let unit = self.unit_of(event.cgroup_id);
                let decision = self.decision(
                    event,
                    unit.as_ref(),
                    exe.as_deref(),
                    Verdict {
                        verdict,
                        reason,
                        rule_id,
                    },
                );
                self.audit.record(decision);
                return;
            }
        };
        self.audit_identified(
            event,
            &info,
            Verdict {
                verdict,
                reason,
                rule_id,
            },
        );
    }

    pub(super) fn audit_identified(&mut self, event: &Event, info: &SubjectInfo, verdict: Verdict) {
        let decision = self.decision(event, &info.unit, Some(&info.exe), verdict);
        self.audit.record(decision);
    }

    pub(super) fn decision(
        &self,
        event: &Event,
        unit: &UnitInfo,
        exe: Option<&ExeIdentity>,
        verdict: Verdict,
    ) -> Decision {
        Decision {
            verdict: if verdict.verdict == abi::VERDICT_ALLOW {
                audit::Verdict::Allow
            } else {
                audit::Verdict::Deny
            },
            reason: match verdict.reason {
                abi::REASON_RULE => audit::Reason::Rule,
                abi::REASON_ASK_FALLBACK => audit::Reason::AskFallback,
                abi::REASON_FAIL_MODE => audit::Reason::FailMode,
                abi::REASON_PENDING => audit::Reason::Pending,
                abi::REASON_LIMIT => audit::Reason::Limit,
                abi::REASON_SILENT_ALLOW => audit::Reason::SilentAllow,
                abi::REASON_SILENT_DENY => audit::Reason::SilentDeny,
                abi::REASON_PROMPT_ANSWER => audit::Reason::PromptAnswer,
                abi::REASON_TIMEOUT => audit::Reason::Timeout,
                abi::REASON_NO_AGENT => audit::Reason::NoAgent,
                abi::REASON_PROMPT_LIMIT => audit::Reason::PromptLimit,
                _ => audit::Reason::NoRule,
            },
            rule: self.tables.origin(verdict.rule_id).map(str::to_owned),
            unit: unit.unit.clone(),
            app: unit.app_id.clone(),
            cgroup: Some(unit.cgroup_path.clone()).filter(|path| !path.is_empty()),
            exe: exe.map(|exe| exe.path.display().to_string()),
            sha256: exe.map(|exe| exe.sha256.to_string()),
            pid: event.tgid,
            uid: event.uid,
            comm: event.comm(),
            protocol: if i32::from(event.protocol) == libc::IPPROTO_TCP {
                "tcp"
            } else {
                "udp"
            },
            address: event.address(),
            port: event.port,
            answered_by: None,
        }
    }
}
