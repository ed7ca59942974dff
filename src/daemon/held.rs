//! Flows the gate handed to the daemon: held connects and rejected datagrams, their decision,
//! and the sockets of denied connects, which are aborted from outside.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::options::Mode;
use super::tables::{SubjectInfo, Verdict};
use super::{Daemon, PendingDestroy, DESTROY_ATTEMPTS};
use crate::kernel::abi::{self, Event};
use crate::kernel::destroy::{self, DestroyError, HeldSocket};
use crate::rules::{Flow, Protocol};

impl Daemon {
    /// Decides a flow the gate handed over: a held connect or a rejected datagram.
    pub(super) fn decide_pending(&mut self, event: &Event) {
        self.add_unit(event.cgroup_id, event.uid);
        let held = self.gate.held.get(&event.cookie, 0).ok();
        let is_held = held
            .is_some_and(|held| held.state == abi::HELD_WAITING && held.flow.tgid == event.tgid);
        let Some((_, info)) = self.identify(event.tgid, event.exec_ns, event.cgroup_id, event.uid)
        else {
            // The process is gone, or it replaced its program, so the executable that made the
            // flow cannot be determined. A held socket gets the fail mode's verdict.
            let verdict = if is_held {
                let verdict = Verdict {
                    verdict: self.fail_verdict,
                    reason: abi::REASON_FAIL_MODE,
                    rule_id: 0,
                };
                self.release_held(event, verdict);
                verdict
            } else {
                Verdict {
                    verdict: abi::VERDICT_DENY,
                    reason: abi::REASON_PENDING,
                    rule_id: 0,
                }
            };
            self.audit_event(event, verdict.verdict, verdict.reason, 0);
            return;
        };
        let verdict = self.decide_flow(event, &info);
        if verdict.reason == abi::REASON_ASK_FALLBACK && self.prompting() {
            self.ask(event, &info, verdict.rule_id, is_held);
            return;
        }
        if !is_held {
            // A datagram the gate rejected while the identity was unknown; the next one is
            // decided in the gate.
            self.audit_identified(
                event,
                &info,
                Verdict {
                    verdict: abi::VERDICT_DENY,
                    reason: abi::REASON_PENDING,
                    rule_id: 0,
                },
            );
            return;
        }

        self.release_held(event, verdict);
        self.audit_identified(event, &info, verdict);
    }

    pub(super) fn decide_flow(&self, event: &Event, info: &SubjectInfo) -> Verdict {
        let protocol = if i32::from(event.protocol) == libc::IPPROTO_TCP {
            Protocol::Tcp
        } else {
            Protocol::Udp
        };
        let flow = Flow {
            protocol,
            address: event.address(),
            port: event.port,
        };
        let verdict = self.tables.decide(&info.subject(), &flow);
        if verdict.reason != abi::REASON_ASK_FALLBACK {
            return verdict;
        }
        match self.mode {
            Mode::SilentAllow => Verdict {
                verdict: abi::VERDICT_ALLOW,
                reason: abi::REASON_SILENT_ALLOW,
                ..verdict
            },
            Mode::SilentDeny => Verdict {
                verdict: abi::VERDICT_DENY,
                reason: abi::REASON_SILENT_DENY,
                ..verdict
            },
            Mode::Alert => verdict,
        }
    }

    /// Checks whether `ask` verdicts open prompts now: mode alert, with the daemon on the bus.
    pub(super) fn prompting(&self) -> bool {
        self.mode == Mode::Alert && self.bus_up
    }

    pub(super) fn release_held(&mut self, event: &Event, verdict: Verdict) {
        if verdict.verdict == abi::VERDICT_ALLOW {
            let _ = self.gate.held.remove(&event.cookie);
            return;
        }
        if let Ok(mut held) = self.gate.held.get(&event.cookie, 0) {
            held.state = abi::HELD_DENIED;
            let _ = self.gate.held.insert(event.cookie, held, 0);
        }
        if i32::from(event.protocol) == libc::IPPROTO_TCP {
            self.destroys.push(PendingDestroy {
                cookie: event.cookie,
                attempts: 0,
            });
            self.retry_destroys();
        }
    }

    /// Aborts denied held TCP sockets. The gate learns a socket's source address from its first
    /// SYN, which may leave after the daemon has decided, so an attempt waits for it.
    pub(super) fn retry_destroys(&mut self) {
        let mut waiting = Vec::new();
        for mut pending in std::mem::take(&mut self.destroys) {
            let Ok(held) = self.gate.held.get(&pending.cookie, 0) else {
                continue;
            };
            if held.source_port == 0 {
                pending.attempts += 1;
                if pending.attempts < DESTROY_ATTEMPTS {
                    waiting.push(pending);
                } else {
                    tracing::warn!(cookie = pending.cookie, "gave up destroying a denied held socket that sent no SYN; its packets stay dropped");
                }
                continue;
            }
            let source = SocketAddr::new(address_of(held.source_address), held.source_port);
            let destination = SocketAddr::new(held.flow.address(), held.flow.port);
            let socket = HeldSocket {
                pid: held.flow.tgid,
                cookie: pending.cookie,
                source,
                destination,
            };
            match destroy::destroy_tcp_socket(&socket) {
                Ok(()) | Err(DestroyError::NotFound { .. }) => {}
                Err(error) => {
                    tracing::warn!("{}; its packets stay dropped", crate::error_chain(&error))
                }
            }
        }
        self.destroys = waiting;
    }

    /// Decides held flows whose hold began at least `min_age` ago: those an earlier daemon left
    /// after a restart, and those whose event was lost because the ring buffer was full.
    pub(super) fn decide_held_flows(&mut self, min_age: Duration) {
        let now = monotonic_ns();
        let min_age = u64::try_from(min_age.as_nanos()).unwrap_or(u64::MAX);
        let held: Vec<(u64, abi::Held)> = self.gate.held.iter().filter_map(Result::ok).collect();
        for (cookie, entry) in held {
            if entry.state == abi::HELD_WAITING
                && now.saturating_sub(entry.since_ns) >= min_age
                && !self.prompts.waiting.contains_key(&cookie)
            {
                let mut event = entry.flow;
                event.cookie = cookie;
                self.decide_pending(&event);
            }
        }
    }
}

/// Reads CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns(), in nanoseconds.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0)
}

fn address_of(bytes: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(bytes);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}
