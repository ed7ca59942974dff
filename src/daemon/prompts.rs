//! Prompts: flows whose verdict is `ask` wait while the user's agent is asked over D-Bus.
//!
//! One prompt covers every flow of one (uid, cgroup, executable and digest, address, port,
//! protocol), however many connections wait on it, and nothing of it passes while it is open.
//! Flows of other programs or to other destinations never wait on it. A prompt closes when it
//! is answered, when it times out (the timeout answer applies), or when every connection that
//! waited on it has closed (outcome "gone"). A prompt raised by datagrams alone has no waiting
//! connection, so it stays open until it is answered or times out.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use super::tables::{SubjectInfo, Verdict};
use super::Daemon;
use crate::control::{Notice, PromptRow};
use crate::kernel::abi::{self, Event};

/// Key of a prompt, shared by the flows that share one answer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PromptKey {
    pub uid: u32,
    pub cgroup_id: u64,
    pub exe: std::path::PathBuf,
    pub sha256: String,
    pub address: std::net::IpAddr,
    pub port: u16,
    /// `libc::IPPROTO_TCP` or `libc::IPPROTO_UDP`.
    pub protocol: u8,
}

pub struct Prompt {
    pub id: u64,
    pub key: PromptKey,
    pub info: SubjectInfo,
    /// The flow that raised the prompt; the rule of an answer always covers it.
    pub first: Event,
    /// Held connects that wait on the prompt.
    pub waiting: Vec<Event>,
    /// Whether a held connect ever waited; only then does the prompt close as "gone".
    pub had_connections: bool,
    pub deadline: Instant,
    /// The deadline in CLOCK_REALTIME microseconds, as clients see it.
    pub deadline_usec: u64,
    /// Priority of the `ask` rule that matched; an answer's rule gets one more, so it wins.
    pub ask_priority: i16,
    /// Destination of the `ask` rule that matched, which bounds what an answer's rule covers.
    pub ask_destination: crate::rules::Destination,
}

impl Prompt {
    pub fn row(&self) -> PromptRow {
        let unit = &self.info.unit;
        let exe = self.info.exe.path.display().to_string();
        let app_name = match &unit.app_id {
            Some(app_id) => app_id.rsplit('.').next().unwrap_or(app_id).to_owned(),
            None => self
                .info
                .exe
                .path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        (
            self.id,
            self.key.uid,
            unit.unit.clone().unwrap_or_default(),
            unit.app_id.clone().unwrap_or_default(),
            app_name,
            exe,
            self.key.sha256.clone(),
            String::new(),
            self.key.address.to_string(),
            self.key.port,
            protocol_name(self.key.protocol).to_owned(),
            unit.cgroup_path.clone(),
            self.deadline_usec,
        )
    }
}

pub fn protocol_name(protocol: u8) -> &'static str {
    if i32::from(protocol) == libc::IPPROTO_TCP {
        "tcp"
    } else {
        "udp"
    }
}

/// Settings of prompts, from the command line.
#[derive(Clone, Copy, Debug)]
pub struct PromptSettings {
    pub timeout: Duration,
    pub timeout_verdict: u8,
    pub no_agent_verdict: u8,
    pub max_per_user: u32,
}

/// The open prompts and the agents that receive them.
#[derive(Default)]
pub struct Prompts {
    pub open: HashMap<u64, Prompt>,
    by_key: HashMap<PromptKey, u64>,
    /// Held connects that wait on a prompt, by socket cookie.
    pub waiting: HashMap<u64, u64>,
    next_id: u64,
    /// The agent of each uid: its unique bus name.
    pub agents: HashMap<u32, String>,
}

impl Prompts {
    fn count_for(&self, uid: u32) -> usize {
        self.open
            .values()
            .filter(|prompt| prompt.key.uid == uid)
            .count()
    }

    pub fn rows(&self) -> Vec<PromptRow> {
        let mut rows: Vec<PromptRow> = self.open.values().map(Prompt::row).collect();
        rows.sort_by_key(|row| row.0);
        rows
    }
}

/// End of a prompt, for its `PromptClosed` signal and its flows' audit records.
pub struct Closing {
    pub outcome: &'static str,
    pub verdict: u8,
    pub reason: u8,
    pub answered_by: Option<crate::audit::Answerer>,
}

fn realtime_usec(after: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from((now + after).as_micros()).unwrap_or(u64::MAX)
}

impl Daemon {
    /// Takes a flow whose verdict is `ask` while prompts are possible. A held connect waits on
    /// the prompt for its flow, opened here if needed; a datagram was already rejected.
    pub(super) fn ask(&mut self, event: &Event, info: &SubjectInfo, rule_id: u32, is_held: bool) {
        let key = PromptKey {
            uid: event.uid,
            cgroup_id: event.cgroup_id,
            exe: info.exe.path.clone(),
            sha256: info.exe.sha256.to_string(),
            address: event.address(),
            port: event.port,
            protocol: event.protocol,
        };
        if let Some(&id) = self.prompts.by_key.get(&key) {
            if is_held {
                self.wait_on(id, event);
            } else {
                self.audit_datagram(event, info);
            }
            return;
        }

        let settings = self.prompt_settings;
        if !self.prompts.agents.contains_key(&event.uid) {
            self.decide_without_prompt(
                event,
                info,
                is_held,
                settings.no_agent_verdict,
                abi::REASON_NO_AGENT,
            );
            return;
        }
        let limit = usize::try_from(settings.max_per_user).unwrap_or(usize::MAX);
        if self.prompts.count_for(event.uid) >= limit {
            self.decide_without_prompt(
                event,
                info,
                is_held,
                settings.timeout_verdict,
                abi::REASON_PROMPT_LIMIT,
            );
            return;
        }

        self.prompts.next_id += 1;
        let id = self.prompts.next_id;
        let ask_rule = self.tables.rule(rule_id);
        let ask_priority = ask_rule.map_or(0, |rule| rule.priority);
        // A rule set replaced since the flow was decided may no longer have the `ask` rule;
        // then answers cover no more than the flow's own destination.
        let ask_destination = match ask_rule {
            Some(rule) => rule.destination.clone(),
            None => crate::rules::Destination {
                addresses: vec![ipnet::IpNet::from(key.address)],
                ports: vec![crate::rules::PortRange {
                    first: key.port,
                    last: key.port,
                }],
                protocol: if i32::from(key.protocol) == libc::IPPROTO_TCP {
                    crate::rules::Protocol::Tcp
                } else {
                    crate::rules::Protocol::Udp
                },
            },
        };
        let prompt = Prompt {
            id,
            key: key.clone(),
            info: info.clone(),
            first: *event,
            waiting: Vec::new(),
            had_connections: false,
            deadline: Instant::now() + settings.timeout,
            deadline_usec: realtime_usec(settings.timeout),
            ask_priority,
            ask_destination,
        };
        let row = prompt.row();
        self.prompts.by_key.insert(key, id);
        self.prompts.open.insert(id, prompt);
        if is_held {
            self.wait_on(id, event);
        } else {
            self.audit_datagram(event, info);
        }
        tracing::info!(id, uid = event.uid, exe = %info.exe.path.display(), address = %event.address(), port = event.port, "opened a prompt");
        if let Some(agent) = self.prompts.agents.get(&event.uid) {
            self.notify(Notice::PromptAdded {
                destination: agent.clone(),
                prompt: Box::new(row),
            });
        }
        self.prompts_changed();
    }

    fn wait_on(&mut self, id: u64, event: &Event) {
        if let Some(prompt) = self.prompts.open.get_mut(&id) {
            if !prompt
                .waiting
                .iter()
                .any(|waiting| waiting.cookie == event.cookie)
            {
                prompt.waiting.push(*event);
            }
            prompt.had_connections = true;
            self.prompts.waiting.insert(event.cookie, id);
        }
    }

    fn audit_datagram(&mut self, event: &Event, info: &SubjectInfo) {
        self.audit_identified(
            event,
            info,
            Verdict {
                verdict: abi::VERDICT_DENY,
                reason: abi::REASON_PENDING,
                rule_id: 0,
            },
        );
    }

    fn decide_without_prompt(
        &mut self,
        event: &Event,
        info: &SubjectInfo,
        is_held: bool,
        verdict: u8,
        reason: u8,
    ) {
        let verdict = Verdict {
            verdict,
            reason,
            rule_id: 0,
        };
        if is_held {
            self.release_held(event, verdict);
        } else {
            // The datagram was rejected already; the answer applies to the next one only if a
            // rule says so, so this one is reported as it went.
            self.audit_datagram(event, info);
            return;
        }
        self.audit_identified(event, info, verdict);
    }

    /// Closes a prompt: decides every connection still waiting on it, and signals the agent.
    pub(super) fn close_prompt(&mut self, id: u64, closing: &Closing) {
        let Some(prompt) = self.prompts.open.remove(&id) else {
            return;
        };
        self.prompts.by_key.remove(&prompt.key);
        let verdict = Verdict {
            verdict: closing.verdict,
            reason: closing.reason,
            rule_id: 0,
        };
        for event in &prompt.waiting {
            self.prompts.waiting.remove(&event.cookie);
            let still_held = self
                .gate
                .held
                .get(&event.cookie, 0)
                .is_ok_and(|held| held.state == abi::HELD_WAITING);
            if !still_held {
                continue;
            }
            self.release_held(event, verdict);
            let mut decision =
                self.decision(event, &prompt.info.unit, Some(&prompt.info.exe), verdict);
            decision.answered_by.clone_from(&closing.answered_by);
            self.audit.record(decision);
        }
        tracing::info!(id, outcome = closing.outcome, "closed a prompt");
        if let Some(agent) = self.prompts.agents.get(&prompt.key.uid) {
            self.notify(Notice::PromptClosed {
                destination: agent.clone(),
                id,
                outcome: closing.outcome.to_owned(),
            });
        }
        self.prompts_changed();
    }

    /// Closes the prompts whose deadline passed, and those whose connections all closed.
    pub(super) fn check_prompts(&mut self) {
        if self.prompts.open.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut expired = Vec::new();
        let mut gone = Vec::new();
        let held = &self.gate.held;
        for prompt in self.prompts.open.values_mut() {
            if prompt.deadline <= now {
                expired.push(prompt.id);
                continue;
            }
            prompt.waiting.retain(|event| {
                held.get(&event.cookie, 0)
                    .is_ok_and(|entry| entry.state == abi::HELD_WAITING)
            });
            if prompt.had_connections && prompt.waiting.is_empty() {
                gone.push(prompt.id);
            }
        }
        let timeout_verdict = self.prompt_settings.timeout_verdict;
        for id in expired {
            self.close_prompt(
                id,
                &Closing {
                    outcome: "timeout",
                    verdict: timeout_verdict,
                    reason: abi::REASON_TIMEOUT,
                    answered_by: None,
                },
            );
        }
        for id in gone {
            self.close_prompt(
                id,
                &Closing {
                    outcome: "gone",
                    verdict: abi::VERDICT_DENY,
                    reason: abi::REASON_TIMEOUT,
                    answered_by: None,
                },
            );
        }
        let held = &self.gate.held;
        self.prompts
            .waiting
            .retain(|cookie, _| held.get(cookie, 0).is_ok());
    }

    /// Makes `name` the agent of `uid` and offers it the uid's open prompts.
    pub(super) fn register_agent(&mut self, uid: u32, name: String) {
        tracing::info!(uid, name = %name, "registered an agent");
        let rows: Vec<PromptRow> = self
            .prompts
            .rows()
            .into_iter()
            .filter(|row| row.1 == uid)
            .collect();
        // The agent this one replaces closes what it shows, so no stale buttons stay on screen.
        let replaced = self
            .prompts
            .agents
            .get(&uid)
            .filter(|old| **old != name)
            .cloned();
        for row in rows {
            if let Some(old) = &replaced {
                self.notify(Notice::PromptClosed {
                    destination: old.clone(),
                    id: row.0,
                    outcome: "agent-replaced".to_owned(),
                });
            }
            self.notify(Notice::PromptAdded {
                destination: name.clone(),
                prompt: Box::new(row),
            });
        }
        self.prompts.agents.insert(uid, name);
    }

    pub(super) fn unregister_agent(&mut self, uid: u32, name: &str) {
        if self
            .prompts
            .agents
            .get(&uid)
            .is_some_and(|agent| agent == name)
        {
            self.prompts.agents.remove(&uid);
            tracing::info!(uid, name, "unregistered an agent");
        }
    }

    pub(super) fn forget_agent_name(&mut self, name: &str) {
        let before = self.prompts.agents.len();
        self.prompts.agents.retain(|_, agent| agent != name);
        if self.prompts.agents.len() != before {
            tracing::info!(name, "unregistered an agent that left the bus");
        }
    }

    pub(super) fn notify(&self, notice: Notice) {
        let _ = self.notices.send(notice);
    }

    /// Publishes the open prompts to the interface and emits PropertiesChanged.
    pub(super) fn prompts_changed(&mut self) {
        let rows = self.prompts.rows();
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .prompts = rows;
        self.notify(Notice::PropertiesChanged);
    }
}
