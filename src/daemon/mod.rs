//! `slicewalld`: loads the gate, installs the rules, identifies the processes the gate reports,
//! decides what the gate cannot, and audits every decision.

mod answers;
mod held;
mod identify;
mod nftables;
pub mod options;
mod prompts;
mod records;
mod tables;
mod units;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};

use crate::audit::{self, Audit, AuditOptions};
use crate::cgroup::{self, CgroupIndex};
use crate::control::{self, Command, Notice, SharedStatus};
use crate::exe::{ExeCache, ExeIdentity};
use crate::kernel::abi::{self, Event};
use crate::kernel::gate::{self, Gate, GateOptions, MapSizes};
use crate::rules;
use crate::systemd::{self, Manager, Update};
use crate::unit::UnitInfo;
use answers::MemoryRule;
use nftables::NftLayer;
use options::{AskFallback, FailMode, Mode, Options};
use prompts::{PromptSettings, Prompts};
use tables::Tables;
use units::UnitDirectory;

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
/// Ticks of 10 ms between sweeps for removed cgroups (one minute).
const CGROUP_SWEEP_TICKS: u32 = 6000;
/// Ticks of 10 ms between checks that table inet slicewall is whole, which also read its
/// counters (five seconds).
const NFT_CHECK_TICKS: u32 = 500;
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
        if options.nftables.enabled(systemd::systemd_booted()) {
            match crate::nft::Nft::new().remove() {
                Ok(()) => tracing::info!("removed table inet slicewall"),
                Err(error) => tracing::warn!("failed to remove table inet slicewall: {error}"),
            }
        }
        return Ok(());
    }

    let (command_sender, mut commands) = tokio::sync::mpsc::unbounded_channel();
    let (notice_sender, notices) = tokio::sync::mpsc::unbounded_channel();
    let mut daemon = Daemon::start(&options, notice_sender)?;
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

    let (unit_sender, mut unit_updates) = tokio::sync::mpsc::unbounded_channel();
    let booted = systemd::systemd_booted();
    if options.nftables.enabled(booted) {
        daemon.nft = Some(NftLayer::new());
        daemon.sync_nftables();
    }
    if booted {
        systemd::follow(daemon.cgroup_mount.clone(), unit_sender);
        daemon.following = Following::Connecting("connecting to the system manager".to_owned());
    } else {
        drop(unit_sender);
        tracing::info!(
            "systemd is not the init system here; units are known from cgroup paths only"
        );
    }
    daemon.publish_status();
    if options.no_bus {
        drop(command_sender);
        drop(notices);
    } else {
        control::serve(daemon.status.clone(), command_sender, notices);
    }

    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&daemon.status_text),
    ]);
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
                if ticks % 10 == 0 {
                    daemon.check_prompts();
                }
                if ticks % 100 == 0 {
                    daemon.every_second();
                }
                if ticks % 10 == 0 && daemon.sync_nftables() {
                    daemon.publish_status();
                }
                if ticks % NFT_CHECK_TICKS == 0 {
                    daemon.check_nftables();
                    daemon.publish_status();
                }
                if ticks % CGROUP_SWEEP_TICKS == 0 {
                    daemon.forget_removed_cgroups();
                }
            }
            Some(update) = unit_updates.recv() => {
                daemon.unit_update(update);
                while let Ok(update) = unit_updates.try_recv() {
                    daemon.unit_update(update);
                }
                daemon.publish_status();
            }
            Some(command) = commands.recv() => {
                daemon.handle_command(command);
            }
            _ = hangup.recv() => {
                daemon.reload();
                daemon.publish_status();
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&daemon.status_text)]);
            }
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

/// Whether the daemon follows the system manager.
enum Following {
    /// systemd is not the init system.
    NotBooted,
    /// Not connected, with the reason.
    Connecting(String),
    Up,
}

struct Daemon {
    gate: Gate,
    tables: Tables,
    root: PathBuf,
    cgroup_mount: PathBuf,
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
    /// Verdict of the configured fail mode, for flows that cannot be attributed to an executable.
    fail_verdict: u8,
    events_lost: u64,
    /// Errors in rule files that were skipped at start.
    degraded: Vec<String>,
    /// Why the last reload was rejected, until a reload succeeds.
    rejected_reload: Option<String>,
    rule_files: Vec<PathBuf>,
    unit_directory: UnitDirectory,
    following: Following,
    status: SharedStatus,
    fail_mode: FailMode,
    ask_fallback: AskFallback,
    /// The nftables layer, when turned on.
    nft: Option<NftLayer>,
    /// The last start or reload message, sent to systemd as the unit's status text.
    status_text: String,
    /// The rules of the rule files; the in-memory rules are installed with them.
    /// Number of rules from files at the start of the rules in force; the in-memory rules
    /// follow them.
    file_rule_count: usize,
    memory_rules: Vec<MemoryRule>,
    memory_rule_counter: u64,
    mode: Mode,
    /// Whether the D-Bus interface is on the bus, which prompts need.
    bus_up: bool,
    prompts: Prompts,
    prompt_settings: PromptSettings,
    notices: tokio::sync::mpsc::UnboundedSender<Notice>,
}

impl Daemon {
    fn start(
        options: &Options,
        notices: tokio::sync::mpsc::UnboundedSender<Notice>,
    ) -> anyhow::Result<Daemon> {
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
            tracing::error!("{}, skipping its rules", crate::error_chain(error));
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
        // The gate reports process IDs as this daemon's /proc shows them.
        let pid_namespace =
            gate::pid_namespace().context("failed to read the PID namespace of the daemon")?;
        gate.forget_identities();
        let prompt_timeout = Duration::from_secs(u64::from(options.prompt_timeout));
        let mut config = gate::initial_config(
            previous,
            fail_verdict,
            guard_level,
            guard_cgroup_id,
            pid_namespace,
        );
        config.hold_syn_retries = gate::hold_syn_retries(prompt_timeout);
        config.ask_mode = ask_mode(options.mode, false);
        gate.write_config(config)?;

        let mut tables = Tables::new(previous.next_id, ask_verdict);
        let file_rule_count = rule_set.rules.len();
        tables
            .install(&mut gate, rule_set.rules)
            .context("failed to install the rules in the gate")?;

        let mut daemon = Daemon {
            gate,
            tables,
            root: options.root.clone(),
            cgroups: CgroupIndex::new(cgroup_mount.clone(), guarded.clone()),
            cgroup_mount,
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
            rejected_reload: None,
            rule_files: rule_set.files.clone(),
            unit_directory: UnitDirectory::default(),
            following: Following::NotBooted,
            status: SharedStatus::default(),
            fail_mode: options.fail_mode,
            ask_fallback: options.ask_fallback,
            nft: None,
            status_text: String::new(),
            file_rule_count,
            memory_rules: Vec::new(),
            memory_rule_counter: 0,
            mode: options.mode,
            bus_up: false,
            prompts: Prompts::default(),
            prompt_settings: PromptSettings {
                timeout: prompt_timeout,
                timeout_verdict: verdict_of(options.timeout_answer),
                no_agent_verdict: verdict_of(options.no_agent_answer),
                max_per_user: options.max_prompts_per_user,
            },
            notices,
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
        daemon.status_text = message;
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

    /// Reloads every rule file. Returns false when the files had errors or the gate rejected
    /// the rules, which leaves the previous rules in force.
    fn reload(&mut self) -> bool {
        self.forget_removed_cgroups();
        match rules::load_strict(&self.root) {
            Ok(rule_set) => {
                let count = rule_set.rules.len();
                if !self.install_rules(rule_set.rules) {
                    return false;
                }
                self.degraded.clear();
                self.rejected_reload = None;
                self.rule_files = rule_set.files;
                release_free_memory();
                let message = format!(
                    "reloaded {count} rules from {} files",
                    self.rule_files.len()
                );
                self.audit
                    .event(audit::EventKind::RulesLoaded, &message, &[]);
                self.status_text = message;
                true
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
                // The first error names the file and position; `slicewallctl check` lists all.
                self.rejected_reload = Some(match errors.first() {
                    Some(first) => format!("{message}; the first: {first}"),
                    None => message.clone(),
                });
                self.status_text = message;
                false
            }
        }
    }

    /// Returns the rules from files among the rules in force.
    fn file_rules(&self) -> &[rules::Rule] {
        let rules = self.tables.rules();
        &rules[..self.file_rule_count.min(rules.len())]
    }

    /// Installs `file_rules` and the in-memory rules in the gate. Returns false when the gate
    /// rejected them.
    fn install_rules(&mut self, file_rules: Vec<rules::Rule>) -> bool {
        let count = file_rules.len();
        let mut all = file_rules;
        all.extend(self.memory_rules.iter().map(|rule| rule.rule.clone()));
        if let Err(error) = self.tables.install(&mut self.gate, all) {
            tracing::error!("failed to install the rules: {error:#}");
            return false;
        }
        self.file_rule_count = count;
        self.unit_directory.resummarize(self.tables.rules());
        if let Some(nft) = &mut self.nft {
            nft.mark_dirty();
        }
        self.publish_status();
        true
    }

    /// Tells the gate what `ask` candidates do now, and voids the verdicts sockets cached.
    fn apply_ask_mode(&mut self) {
        let mode = ask_mode(self.mode, self.bus_up);
        match self.gate.read_config() {
            Ok(mut config) if config.ask_mode != mode => {
                config.ask_mode = mode;
                config.generation = config.generation.wrapping_add(1).max(1);
                if let Err(error) = self.gate.write_config(config) {
                    tracing::error!("failed to set what ask rules do in the gate: {error}");
                }
            }
            Ok(_) => {}
            Err(error) => tracing::error!("failed to read the gate's configuration: {error}"),
        }
    }

    /// Carries out a request from the D-Bus interface.
    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Bus(up) => {
                self.bus_up = up;
                self.apply_ask_mode();
                if !up {
                    self.prompts.agents.clear();
                }
            }
            Command::Answer {
                id,
                allow,
                lifetime,
                scope,
                caller_uid,
                caller_name,
                reply,
            } => {
                let result =
                    self.answer_prompt(id, allow, lifetime, scope, caller_uid, &caller_name);
                let _ = reply.send(result);
            }
            Command::RegisterAgent { uid, name } => self.register_agent(uid, name),
            Command::UnregisterAgent { uid, name } => self.unregister_agent(uid, &name),
            Command::NameVanished(name) => self.forget_agent_name(&name),
            Command::AddRule {
                toml,
                lifetime,
                caller_uid,
                reply,
            } => {
                let _ = reply.send(self.add_rule(&toml, lifetime, caller_uid));
            }
            Command::RemoveRule { id, reply } => {
                let _ = reply.send(self.remove_rule(&id));
            }
            Command::ListRules { caller_uid, reply } => {
                let _ = reply.send(Ok(self.rule_rows(caller_uid)));
            }
            Command::Reload { reply } => {
                self.reload();
                self.notify(Notice::RulesChanged);
                let _ = reply.send(Ok(()));
            }
            Command::SetMode { mode, reply } => {
                let Some(mode) = Mode::parse(&mode) else {
                    let _ = reply.send(Err(control::ControlError::InvalidArgument(format!(
                        "invalid mode {mode:?}: expected \"alert\", \"silent-allow\" or \"silent-deny\""
                    ))));
                    return;
                };
                self.mode = mode;
                self.apply_ask_mode();
                tracing::info!(mode = mode.as_str(), "set the mode");
                self.publish_status();
                self.notify(Notice::PropertiesChanged);
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// Drops the identities of cgroups that were removed (every unit start makes a new cgroup),
    /// so the gate's identity maps do not fill up on a long-running system.
    fn forget_removed_cgroups(&mut self) {
        let gone: std::collections::HashSet<u64> = self
            .tables
            .cgroup_ids()
            .into_iter()
            .filter(|&id| !self.cgroup_exists(id))
            .collect();
        if gone.is_empty() {
            return;
        }
        tracing::debug!(count = gone.len(), "forgetting removed cgroups");
        self.forget_cgroups(&gone);
    }

    /// Drops the identities and cgroup-and-user policies of these cgroups, and their paths.
    fn forget_cgroups(&mut self, ids: &std::collections::HashSet<u64>) {
        self.tables.forget_cgroups(&mut self.gate, ids);
        for id in ids {
            self.units.remove(id);
            self.cgroups.forget(*id);
        }
    }

    fn cgroup_exists(&self, id: u64) -> bool {
        let Some(unit) = self.units.get(&id) else {
            // Never resolved to a path, so it cannot be checked; keep it.
            return true;
        };
        let path = self
            .cgroup_mount
            .join(unit.cgroup_path.trim_start_matches('/'));
        cgroup::cgroup_id(&path).is_ok_and(|found| found == id)
    }

    /// Takes in a change reported by the systemd follower.
    fn unit_update(&mut self, update: Update) {
        let mut old_cgroups = Vec::new();
        match update {
            Update::Unit(record) => {
                tracing::debug!(
                    unit = %record.name,
                    manager = %record.manager.name(),
                    state = %record.active_state,
                    cgroup_id = ?record.cgroup_id,
                    "unit changed"
                );
                old_cgroups.extend(self.unit_directory.update(record, self.tables.rules()));
            }
            Update::Removed { manager, name } => {
                tracing::debug!(unit = %name, manager = %manager.name(), "unit removed");
                old_cgroups.extend(self.unit_directory.remove(manager, &name));
            }
            Update::ManagerUp(manager) => {
                tracing::info!(
                    manager = %manager.name(),
                    units = self.unit_directory.len(),
                    "following the service manager"
                );
                if manager == Manager::System {
                    self.following = Following::Up;
                }
            }
            Update::ManagerDown { manager, reason } => match manager {
                Manager::System => self.following = Following::Connecting(reason),
                Manager::User(_) => {
                    tracing::debug!(manager = %manager.name(), %reason, "stopped following");
                    old_cgroups.extend(self.unit_directory.remove_manager(manager));
                }
            },
        }
        if let Some(nft) = &mut self.nft {
            nft.mark_dirty();
        }
        // A unit that restarted or stopped left its old cgroup behind. Once that directory is
        // removed, its identities are dropped at once instead of at the next sweep.
        let removed: std::collections::HashSet<u64> = old_cgroups
            .into_iter()
            .filter(|&id| !self.cgroup_exists(id))
            .collect();
        if !removed.is_empty() {
            self.forget_cgroups(&removed);
        }
    }

    /// Copies what the D-Bus interface reports into the shared status.
    fn publish_status(&mut self) {
        let mut reasons: Vec<String> = self
            .degraded
            .iter()
            .map(|error| format!("rule file skipped: {error}"))
            .collect();
        if let Some(reason) = &self.rejected_reload {
            reasons.push(reason.clone());
        }
        if let Following::Connecting(reason) = &self.following {
            reasons.push(format!("not following the system manager: {reason}"));
        }
        if let Some(error) = self.nft.as_ref().and_then(NftLayer::error) {
            reasons.push(format!("nftables not in force: {error}"));
        }
        let no_counters = HashMap::new();
        let counters = self.nft.as_ref().map_or(&no_counters, NftLayer::counters);
        let rows = self.unit_directory.rows(counters);
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        status.fail_mode = self.fail_mode.as_str().to_owned();
        status.ask_fallback = self.ask_fallback.as_str().to_owned();
        status.degraded_reasons = reasons;
        status.rule_count = u32::try_from(self.tables.rule_count()).unwrap_or(u32::MAX);
        status.rule_files = self
            .rule_files
            .iter()
            .map(|path| path.display().to_string())
            .collect();
        status.following_systemd = matches!(self.following, Following::Up);
        status.units = rows;
        status.mode = self.mode.as_str().to_owned();
        status.prompt_timeout_sec =
            u32::try_from(self.prompt_settings.timeout.as_secs()).unwrap_or(u32::MAX);
        status.prompts = self.prompts.rows();
    }

    /// Syncs table inet slicewall with the units if they changed. Returns true when it synced.
    fn sync_nftables(&mut self) -> bool {
        let Some(nft) = &mut self.nft else {
            return false;
        };
        nft.sync_if_dirty(&self.unit_directory)
    }

    fn check_nftables(&mut self) {
        let Some(nft) = &mut self.nft else {
            return;
        };
        if let Some(warning) = nft.check(&self.unit_directory) {
            self.audit
                .event(audit::EventKind::NftablesRestored, &warning, &[]);
        }
    }

    fn every_second(&mut self) {
        self.audit.flush();
        self.decide_held_flows(HELD_EVENT_GRACE);
        self.expire_memory_rules();
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
}

/// Returns what the gate does with `ask` candidates in `mode`, given whether the daemon is on
/// the bus: prompts need the bus, and `--ask-fallback` applies without it.
fn ask_mode(mode: Mode, bus_up: bool) -> u32 {
    match mode {
        Mode::Alert if bus_up => abi::ASK_PROMPT,
        Mode::Alert => abi::ASK_FALLBACK,
        Mode::SilentAllow => abi::ASK_SILENT_ALLOW,
        Mode::SilentDeny => abi::ASK_SILENT_DENY,
    }
}

fn verdict_of(answer: AskFallback) -> u8 {
    match answer {
        AskFallback::Allow => abi::VERDICT_ALLOW,
        AskFallback::Deny => abi::VERDICT_DENY,
    }
}

/// Hands the memory freed after parsing and compiling a large rule set back to the kernel;
/// glibc's allocator otherwise keeps it mapped.
fn release_free_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) };
}
