//! `slicewalld`: loads the gate, installs the rules, identifies the processes the gate reports,
//! decides what the gate cannot, and audits every decision.

pub mod options;
mod tables;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};

use crate::audit::{self, Audit, AuditOptions, Decision};
use crate::cgroup::{self, CgroupIndex};
use crate::exe::{ExeCache, ExeError, ExeIdentity};
use crate::kernel::abi::{self, Event, SubjectKey, Task, UnitKey};
use crate::kernel::destroy::{self, DestroyError, HeldSocket};
use crate::kernel::gate::{self, Gate, GateOptions, MapSizes};
use crate::rules::{self, Flow, Protocol};
use crate::unit::{self, UnitInfo};
use options::{AskFallback, FailMode, Options};
use tables::{SubjectInfo, Tables, Verdict};

/// Executables whose hashes are kept; beyond it the oldest are hashed again when seen.
const EXE_CACHE_ENTRIES: usize = 4096;
/// Age after which a held flow with no decision is decided from the held map, in case its event
/// was lost.
const HELD_EVENT_GRACE: Duration = Duration::from_secs(1);
/// Processes whose executable is remembered for audit records.
const RECENT_PROCESSES: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(16_384) {
    Some(count) => count,
    None => unreachable!(),
};
/// Attempts to destroy a denied held socket whose SYN the gate has not yet seen.
const DESTROY_ATTEMPTS: u32 = 50;

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(options: Options) -> anyhow::Result<()> {
    if options.cleanup {
        gate::remove_pins(&options.pin_dir).with_context(|| {
            format!(
                "failed to remove the pins under {}",
                options.pin_dir.display()
            )
        })?;
        tracing::info!(pin_dir = %options.pin_dir.display(), "removed the gate's programs and maps");
        return Ok(());
    }

    let mut daemon = Daemon::start(&options)?;
    let ring = daemon
        .gate
        .events
        .take()
        .context("the event ring buffer is missing")?;
    // SAFETY: the ring buffer owns its map descriptor and keeps it open, unchanged, until the
    // AsyncFd that owns the ring buffer drops it.
    let mut events =
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|error| error.into_parts().1)
            .context("failed to watch the event ring buffer")?;
    let mut hangup = signal(SignalKind::hangup()).context("failed to handle SIGHUP")?;
    let mut terminate = signal(SignalKind::terminate()).context("failed to handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("failed to handle SIGINT")?;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut ticks: u32 = 0;

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    loop {
        tokio::select! {
            guard = events.readable_mut() => {
                let mut guard = guard.context("failed to wait for gate events")?;
                let batch = drain(guard.get_inner_mut());
                guard.clear_ready();
                daemon.handle_events(&batch);
            }
            _ = tick.tick() => {
                // Audit records do not wake the daemon, so they are read here.
                let batch = drain(events.get_mut());
                daemon.handle_events(&batch);
                daemon.retry_destroys();
                ticks = ticks.wrapping_add(1);
                if ticks % 100 == 0 {
                    daemon.every_second();
                }
            }
            _ = hangup.recv() => daemon.reload(),
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }

    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    daemon.stop();
    Ok(())
}

/// Reads every record in the ring buffer.
fn drain(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<Event> {
    let mut batch = Vec::new();
    while let Some(record) = ring.next() {
        if let Some(event) = Event::from_bytes(&record) {
            batch.push(event);
        }
    }
    batch
}

struct PendingDestroy {
    cookie: u64,
    attempts: u32,
}

struct Daemon {
    gate: Gate,
    tables: Tables,
    root: PathBuf,
    cgroups: CgroupIndex,
    units: HashMap<u64, Arc<UnitInfo>>,
    exes: ExeCache,
    /// Identifiers of executables by path, digest and whether the path was verified, so a file
    /// shown under a trusted path from another mount namespace is another identity.
    exe_ids: HashMap<(PathBuf, String, bool), u32>,
    exe_by_id: HashMap<u32, Arc<ExeIdentity>>,
    /// Executables identified lately, by process and exec, for audit records of flows the gate
    /// decided before it knew the executable.
    recent: lru::LruCache<(u32, u64), u32>,
    audit: Audit,
    destroys: Vec<PendingDestroy>,
    /// Verdict of the configured fail mode, for flows nobody can attribute.
    fail_verdict: u8,
    events_lost: u64,
    degraded: Vec<String>,
}

impl Daemon {
    fn start(options: &Options) -> anyhow::Result<Daemon> {
        let cgroup_mount =
            cgroup::find_cgroup2_mount().context("failed to find the cgroup v2 mount")?;
        let guarded = match &options.cgroup {
            Some(path) => path
                .canonicalize()
                .with_context(|| format!("invalid --cgroup {}", path.display()))?,
            None => cgroup_mount.clone(),
        };
        let Ok(relative) = guarded.strip_prefix(&cgroup_mount) else {
            bail!(
                "invalid --cgroup {}: not inside the cgroup v2 mount {}",
                guarded.display(),
                cgroup_mount.display()
            );
        };
        let guard_level = relative.components().count() as u32;
        let guard_cgroup_id = cgroup::cgroup_id(&guarded)
            .with_context(|| format!("failed to read the cgroup ID of {}", guarded.display()))?;

        let audit = Audit::open(AuditOptions {
            force_stderr: options.audit_stderr,
            ..AuditOptions::default()
        });
        let (rule_set, errors) = rules::load(&options.root);
        let mut degraded = Vec::new();
        for error in &errors {
            tracing::error!("{}, skipping the file", crate::error_chain(error));
            degraded.push(error.to_string());
        }

        let mut gate = Gate::open(&GateOptions {
            pin_dir: options.pin_dir.clone(),
            cgroup_dir: guarded.clone(),
            sizes: MapSizes::default(),
        })
        .with_context(|| format!("failed to set up the gate on {}", guarded.display()))?;

        let previous = gate.read_config()?;
        let fail_verdict = match options.fail_mode {
            FailMode::Closed => abi::VERDICT_DENY,
            FailMode::Open => abi::VERDICT_ALLOW,
        };
        let ask_verdict = match options.ask_fallback {
            AskFallback::Allow => abi::VERDICT_ALLOW,
            AskFallback::Deny => abi::VERDICT_DENY,
        };
        // An earlier daemon's identities refer to executable IDs this daemon does not know, so
        // they are dropped: until each process is identified again its flows are held or
        // rejected, never let through.
        let adopted = previous.next_id != 0;
        gate.forget_identities();
        gate.write_config(gate::initial_config(
            previous,
            fail_verdict,
            guard_level,
            guard_cgroup_id,
        ))?;

        let mut tables = Tables::new(previous.next_id, ask_verdict);
        tables
            .install(&mut gate, rule_set.rules)
            .context("failed to install the rules in the gate")?;

        let mut daemon = Daemon {
            gate,
            tables,
            root: options.root.clone(),
            cgroups: CgroupIndex::new(cgroup_mount, guarded.clone()),
            units: HashMap::new(),
            exes: ExeCache::new(EXE_CACHE_ENTRIES),
            exe_ids: HashMap::new(),
            exe_by_id: HashMap::new(),
            recent: lru::LruCache::new(RECENT_PROCESSES),
            audit,
            destroys: Vec::new(),
            fail_verdict,
            events_lost: 0,
            degraded,
        };
        daemon.decide_held_flows(Duration::ZERO);
        release_free_memory();

        let message = format!(
            "slicewalld started: guarding {}, {} rules from {} files{}{}",
            guarded.display(),
            daemon.tables.rule_count(),
            rule_set.files.len(),
            if adopted {
                ", adopted the pinned gate"
            } else {
                ""
            },
            if daemon.degraded.is_empty() {
                String::new()
            } else {
                format!(
                    ", degraded: {} errors in rule files, those files skipped",
                    daemon.degraded.len()
                )
            },
        );
        daemon.audit.event(audit::EventKind::Started, &message, &[]);
        Ok(daemon)
    }

    fn stop(&mut self) {
        // Flows that need a daemon get the fail mode's verdict from now on. The pinned gate goes
        // on deciding every identity in its maps.
        if let Ok(mut config) = self.gate.read_config() {
            config.daemon_present = 0;
            let _ = self.gate.write_config(config);
        }
        self.audit.flush();
        self.audit.event(
            audit::EventKind::Stopped,
            "slicewalld stopped; the pinned gate stays in force",
            &[],
        );
    }

    fn reload(&mut self) {
        match rules::load_strict(&self.root) {
            Ok(rule_set) => {
                let count = rule_set.rules.len();
                if let Err(error) = self.tables.install(&mut self.gate, rule_set.rules) {
                    tracing::error!("failed to install reloaded rules: {error:#}");
                    return;
                }
                self.degraded.clear();
                release_free_memory();
                let message = format!("reloaded {count} rules from {} files", rule_set.files.len());
                self.audit
                    .event(audit::EventKind::RulesLoaded, &message, &[]);
            }
            Err(errors) => {
                for error in &errors {
                    tracing::error!("{}", crate::error_chain(error));
                }
                let message = format!(
                    "rejected the reload: {} errors, the previous rules stay in force",
                    errors.len()
                );
                self.audit
                    .event(audit::EventKind::RulesRejected, &message, &[]);
            }
        }
    }

    fn every_second(&mut self) {
        self.audit.flush();
        self.decide_held_flows(HELD_EVENT_GRACE);
        let lost = self.gate.stat(abi::STAT_EVENTS_LOST);
        if lost > self.events_lost {
            let message = format!(
                "the gate dropped {} events because the ring buffer was full",
                lost - self.events_lost
            );
            tracing::warn!("{message}");
            self.audit.event(
                audit::EventKind::LostEvents,
                &message,
                &[("SLICEWALL_COUNT", (lost - self.events_lost).to_string())],
            );
            self.events_lost = lost;
        }
    }

    fn handle_events(&mut self, events: &[Event]) {
        for event in events {
            self.handle_event(event);
        }
    }

    fn handle_event(&mut self, event: &Event) {
        match event.kind {
            abi::EVENT_EXEC => {
                self.add_unit(event.cgroup_id, event.uid);
                let _ = self.identify(event.tgid, event.exec_ns, event.cgroup_id, event.uid);
            }
            abi::EVENT_DECISION => {
                self.audit_event(event, event.verdict, event.reason, event.rule_id)
            }
            abi::EVENT_PENDING => self.decide_pending(event),
            other => tracing::debug!(kind = other, "ignoring an unknown gate event"),
        }
    }

    /// Identifies a process: hashes its executable, records it in the gate, and makes sure the
    /// identity (cgroup, executable, uid) has its policy entry.
    ///
    /// `exec_ns` is the process's last exec as the gate saw it when it sent the event. Returns
    /// `None` when the process is gone, or when it has called execve() again since, because the
    /// executable read here may then belong to another program than the event's.
    fn identify(
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
    fn add_unit(&mut self, cgroup_id: u64, uid: u32) {
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

    fn exe_id(&mut self, exe: &Arc<ExeIdentity>) -> u32 {
        let key = (exe.path.clone(), exe.sha256.to_string(), exe.path_verified);
        if let Some(&id) = self.exe_ids.get(&key) {
            return id;
        }
        let id = self.tables.allocate();
        self.exe_ids.insert(key, id);
        self.exe_by_id.insert(id, Arc::clone(exe));
        id
    }

    fn unit_of(&mut self, cgroup_id: u64) -> Arc<UnitInfo> {
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

    /// Decides a flow the gate handed over: a held connect or a rejected datagram.
    fn decide_pending(&mut self, event: &Event) {
        self.add_unit(event.cgroup_id, event.uid);
        let held = self.gate.held.get(&event.cookie, 0).ok();
        let is_held = held
            .is_some_and(|held| held.state == abi::HELD_WAITING && held.flow.tgid == event.tgid);
        let Some((_, info)) = self.identify(event.tgid, event.exec_ns, event.cgroup_id, event.uid)
        else {
            // The process is gone, or it replaced its program, so nobody can say which executable
            // made the flow: a held socket gets the fail mode's verdict.
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

        let verdict = self.decide_flow(event, &info);
        self.release_held(event, verdict);
        self.audit_identified(event, &info, verdict);
    }

    fn decide_flow(&self, event: &Event, info: &SubjectInfo) -> Verdict {
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
        self.tables.decide(&info.subject(), &flow)
    }

    fn release_held(&mut self, event: &Event, verdict: Verdict) {
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
    fn retry_destroys(&mut self) {
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
    fn decide_held_flows(&mut self, min_age: Duration) {
        let now = monotonic_ns();
        let min_age = u64::try_from(min_age.as_nanos()).unwrap_or(u64::MAX);
        let held: Vec<(u64, abi::Held)> = self.gate.held.iter().filter_map(Result::ok).collect();
        for (cookie, entry) in held {
            if entry.state == abi::HELD_WAITING && now.saturating_sub(entry.since_ns) >= min_age {
                let mut event = entry.flow;
                event.cookie = cookie;
                self.decide_pending(&event);
            }
        }
    }

    fn audit_event(&mut self, event: &Event, verdict: u8, reason: u8, rule_id: u32) {
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

    fn audit_identified(&mut self, event: &Event, info: &SubjectInfo, verdict: Verdict) {
        let decision = self.decision(event, &info.unit, Some(&info.exe), verdict);
        self.audit.record(decision);
    }

    fn decision(
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

/// Hands the memory freed after parsing and compiling a large rule set back to the kernel;
/// glibc's allocator otherwise keeps it mapped.
fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) };
}

fn address_of(bytes: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(bytes);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}
