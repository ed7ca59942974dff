//! The audit stream: one journal record per decision of the gate, plus records of the daemon's
//! lifecycle, each with a fixed MESSAGE_ID and structured `SLICEWALL_*` fields.
//!
//! Records go to journald over its native protocol, through `libsystemd`. `tracing-journald` was
//! not used: it drops send errors, adds `TARGET` and `CODE_*` fields to every record, and takes
//! field names only from `tracing` call sites, fixed at compile time, while [`Audit::event`]
//! takes them at run time. When the journal socket is missing, records are written to stderr as
//! one line each.
//!
//! A flood of identical decisions (a process retrying a denied connection in a loop) must neither
//! fill the journal nor vanish. Per flow, the first [`AuditOptions::burst`] decisions of each
//! interval are written one by one, and the rest are counted and written as one coalesced record
//! with `SLICEWALL_COUNT`. A global cap coalesces everything once [`AuditOptions::global_burst`]
//! records were written in an interval.
//!
//! NOTE: journald rate-limits each service too and drops what exceeds the limit. The default in
//! journald.conf(5) of systemd 252 is 10,000 messages in 30 s, multiplied by a factor that grows
//! with free disk space. The unit that runs the daemon needs `LogRateLimitIntervalSec=` and
//! `LogRateLimitBurst=` (systemd.exec(5)) that let the global cap through.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use libsystemd::logging::{journal_send, Priority, SD_JOURNAL_SOCK_PATH};

/// `SYSLOG_IDENTIFIER` of every record, which `journalctl -t slicewalld` selects.
pub const SYSLOG_IDENTIFIER: &str = "slicewalld";

/// MESSAGE_ID of each kind of record, generated once with Python's `uuid.uuid4()`.
/// `units/slicewall.catalog` explains each one for `journalctl -x`.
pub mod message_id {
    /// decision-allow: the gate allowed a new flow.
    pub const DECISION_ALLOW: &str = "f1bcb6ad412b41bbaa6c2ef80235b14c";
    /// decision-deny: the gate denied a new flow.
    pub const DECISION_DENY: &str = "a3d3a38dcbfe46b192074f44d8f04965";
    /// coalesced: a count of decisions not written one by one during a flood.
    pub const COALESCED: &str = "d96a81074250419ea3d86081a515b930";
    /// lost-events: the kernel dropped decision events before the daemon read them.
    pub const LOST_EVENTS: &str = "b82630904fa64ad8be388dcd26cfeea5";
    /// nftables-restored: someone else deleted or changed table inet slicewall, and the daemon
    /// restored it.
    pub const NFTABLES_RESTORED: &str = "1de1248fc59342299b82548b9f897c99";
    /// started: the daemon attached the gate and began deciding.
    pub const STARTED: &str = "a8ea7f7f08594e7da6dc39b3304d72e5";
    /// stopped: the daemon stopped.
    pub const STOPPED: &str = "4da3c74f41ba4128801df9b4ecaffd88";
    /// rules-loaded: a rule set was loaded and is in force.
    pub const RULES_LOADED: &str = "32dc7c991f764cb6852204a892137fe1";
    /// rules-rejected: a rule set was invalid and was not loaded.
    pub const RULES_REJECTED: &str = "12072fc6f38d445399e24e1268586854";
}

/// Number of distinct flows whose coalesced counts are kept apart between two flushes. Beyond
/// it, decisions are counted per verdict only, so a scan across many addresses cannot grow
/// memory without bound.
const MAX_COALESCED_FLOWS: usize = 4096;

const FIELD_PREFIX: &str = "SLICEWALL_";

/// Fields that every record gets from [`Audit`] itself.
const RESERVED_FIELDS: [&str; 4] = ["MESSAGE", "PRIORITY", "MESSAGE_ID", "SYSLOG_IDENTIFIER"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    fn priority(self) -> Priority {
        match self {
            Verdict::Allow => Priority::Info,
            Verdict::Deny => Priority::Notice,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        })
    }
}

/// Cause of a verdict, written as `SLICEWALL_REASON`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A rule matched the flow.
    Rule,
    /// No rule matched, so the default action applied.
    NoRule,
    /// An `ask` rule matched, and the gate applied its fallback action.
    AskFallback,
    /// The gate could not decide and no daemon was running, so the configured failure verdict
    /// applied.
    FailMode,
    /// The gate could not decide in the kernel and handed the flow to the daemon.
    Pending,
    /// A resource limit decided the flow, not a rule.
    Limit,
    /// An `ask` rule matched in mode silent-allow.
    SilentAllow,
    /// An `ask` rule matched in mode silent-deny.
    SilentDeny,
    /// A user answered the prompt for the flow.
    PromptAnswer,
    /// The prompt for the flow timed out, so the timeout answer applied.
    Timeout,
    /// The user had no agent registered, so the no-agent answer applied.
    NoAgent,
    /// The user had too many open prompts, so the timeout answer applied.
    PromptLimit,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Rule => "rule",
            Reason::NoRule => "no-rule",
            Reason::AskFallback => "ask-fallback",
            Reason::FailMode => "fail-mode",
            Reason::Pending => "pending",
            Reason::Limit => "limit",
            Reason::SilentAllow => "silent-allow",
            Reason::SilentDeny => "silent-deny",
            Reason::PromptAnswer => "prompt-answer",
            Reason::Timeout => "timeout",
            Reason::NoAgent => "no-agent",
            Reason::PromptLimit => "prompt-limit",
        })
    }
}

/// One decision of the gate about a new flow. `None` fields are left out of the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
    /// Rule that decided, as "file:line".
    pub rule: Option<String>,
    pub unit: Option<String>,
    pub app: Option<String>,
    /// cgroup v2 path, relative to the mount point.
    pub cgroup: Option<String>,
    pub exe: Option<String>,
    /// Hexadecimal SHA-256 of the executable.
    pub sha256: Option<String>,
    pub pid: u32,
    pub uid: u32,
    /// Process name, which the process chooses itself. The daemon replaces bytes that are not
    /// UTF-8 with U+FFFD. `SLICEWALL_COMM` carries it unescaped, because the length-prefixed
    /// native protocol keeps it apart from other fields, and it is escaped wherever it becomes
    /// part of a line of text.
    pub comm: String,
    /// "tcp" or "udp".
    pub protocol: &'static str,
    pub address: IpAddr,
    pub port: u16,
    /// Who answered the prompt that decided the flow.
    pub answered_by: Option<Answerer>,
}

/// The caller that answered a prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answerer {
    pub uid: u32,
    /// Unique name of the caller on the system bus.
    pub bus_name: String,
}

/// Kinds of daemon lifecycle records written with [`Audit::event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Started,
    Stopped,
    RulesLoaded,
    RulesRejected,
    LostEvents,
    NftablesRestored,
}

impl EventKind {
    fn message_id(self) -> &'static str {
        match self {
            EventKind::Started => message_id::STARTED,
            EventKind::Stopped => message_id::STOPPED,
            EventKind::RulesLoaded => message_id::RULES_LOADED,
            EventKind::RulesRejected => message_id::RULES_REJECTED,
            EventKind::LostEvents => message_id::LOST_EVENTS,
            EventKind::NftablesRestored => message_id::NFTABLES_RESTORED,
        }
    }

    fn priority(self) -> Priority {
        match self {
            EventKind::Started | EventKind::Stopped | EventKind::RulesLoaded => Priority::Info,
            EventKind::LostEvents | EventKind::NftablesRestored => Priority::Warning,
            EventKind::RulesRejected => Priority::Error,
        }
    }
}

#[derive(Clone, Debug)]
pub struct AuditOptions {
    /// Decisions of one flow written one by one in each interval; the rest are coalesced.
    pub burst: u32,
    /// Decisions of all flows written one by one in each interval; the rest are coalesced.
    pub global_burst: u32,
    /// Length of the window that `burst` and `global_burst` count in.
    pub interval: Duration,
    /// Write records to stderr even when the journal is reachable.
    pub force_stderr: bool,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            burst: 200,
            global_burst: 10_000,
            interval: Duration::from_secs(1),
            force_stderr: false,
        }
    }
}

/// One record as journald receives it, apart from `SYSLOG_IDENTIFIER`, which all share.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    priority: u8,
    message_id: &'static str,
    message: String,
    fields: Vec<(Cow<'static, str>, String)>,
}

impl Record {
    fn new(priority: Priority, message_id: &'static str, message: String) -> Self {
        Record {
            priority: u8::from(priority),
            message_id,
            message,
            fields: Vec::new(),
        }
    }

    fn push(&mut self, name: &'static str, value: impl ToString) {
        self.fields.push((Cow::Borrowed(name), value.to_string()));
    }

    fn push_some(&mut self, name: &'static str, value: Option<&str>) {
        if let Some(value) = value {
            self.push(name, value);
        }
    }
}

enum Sink {
    Journal,
    Stderr,
    #[cfg(test)]
    Memory(std::sync::Arc<std::sync::Mutex<Vec<Record>>>),
}

/// The audit stream of the daemon. Dropping it writes the coalesced counts that are pending.
pub struct Audit {
    sink: Sink,
    limiter: FloodLimiter,
    journal_failures: u64,
}

impl Audit {
    /// Opens the stream to the journal, or to stderr if the journal socket does not accept a
    /// datagram or `options.force_stderr` is set.
    pub fn open(options: AuditOptions) -> Self {
        let sink = if options.force_stderr {
            Sink::Stderr
        } else {
            match probe_journal() {
                Ok(()) => Sink::Journal,
                Err(error) => {
                    tracing::debug!(%error, socket = SD_JOURNAL_SOCK_PATH, "journal not reachable, auditing to stderr");
                    Sink::Stderr
                }
            }
        };
        Audit::with_sink(&options, sink)
    }

    fn with_sink(options: &AuditOptions, sink: Sink) -> Self {
        Audit {
            sink,
            limiter: FloodLimiter::new(options, MAX_COALESCED_FLOWS),
            journal_failures: 0,
        }
    }

    /// Returns whether records go to the journal rather than to stderr.
    pub fn writes_to_journal(&self) -> bool {
        matches!(self.sink, Sink::Journal)
    }

    /// Returns how many records the journal rejected; each of them went to stderr instead.
    pub fn journal_failures(&self) -> u64 {
        self.journal_failures
    }

    /// Writes `decision` now, or counts it for a coalesced record if its flow or the whole
    /// stream is over its limit for this interval.
    pub fn record(&mut self, decision: Decision) {
        self.record_at(decision, Instant::now());
    }

    fn record_at(&mut self, decision: Decision, now: Instant) {
        // Counts from the previous interval go out before that interval's first new record.
        if self.limiter.window_elapsed(now) {
            self.flush_at(now);
        }
        if self.limiter.admit(FlowKey::of(&decision), now) {
            self.write(&decision_record(&decision));
        }
    }

    /// Writes one coalesced record for each flow with decisions counted since the last flush.
    /// Call it about once per interval, so counts are not held back when a flood stops.
    pub fn flush(&mut self) {
        self.flush_at(Instant::now());
    }

    fn flush_at(&mut self, now: Instant) {
        for coalesced in self.limiter.take_coalesced(now) {
            self.write(&coalesced_record(&coalesced));
        }
    }

    /// Writes a lifecycle record with `message` and extra `fields`.
    ///
    /// Field names are meant to be journal field names such as "SLICEWALL_RULES_DIR". Other
    /// names are upper-cased, with every character other than an ASCII letter, a digit or '_'
    /// replaced by '_'. MESSAGE, PRIORITY, MESSAGE_ID and SYSLOG_IDENTIFIER are set here, so
    /// they must not be passed.
    pub fn event(&mut self, kind: EventKind, message: &str, fields: &[(&str, String)]) {
        let mut record = Record::new(kind.priority(), kind.message_id(), message.to_owned());
        for (name, value) in fields {
            let name = journal_field_name(name);
            debug_assert!(
                !RESERVED_FIELDS.contains(&name.as_str()),
                "field {name} is set by the audit stream"
            );
            record.fields.push((Cow::Owned(name), value.clone()));
        }
        self.write(&record);
    }

    fn write(&mut self, record: &Record) {
        match &self.sink {
            Sink::Journal => {
                if let Err(error) = send_to_journal(record) {
                    self.journal_failures += 1;
                    tracing::debug!(%error, message_id = record.message_id, "journal rejected a record, writing it to stderr");
                    write_to_stderr(record);
                }
            }
            Sink::Stderr => write_to_stderr(record),
            #[cfg(test)]
            Sink::Memory(records) => records.lock().unwrap().push(record.clone()),
        }
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Sends an empty datagram to the journal socket, which journald discards, to learn whether
/// anything listens there.
fn probe_journal() -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    socket.send_to(&[], SD_JOURNAL_SOCK_PATH)?;
    Ok(())
}

fn send_to_journal(record: &Record) -> Result<(), libsystemd::errors::SdError> {
    let identity = [
        ("MESSAGE_ID", record.message_id),
        ("SYSLOG_IDENTIFIER", SYSLOG_IDENTIFIER),
    ];
    let fields = record
        .fields
        .iter()
        .map(|(name, value)| (name.as_ref(), value.as_str()));
    journal_send(
        priority_of(record.priority),
        &record.message,
        identity.into_iter().chain(fields),
    )
}

fn priority_of(value: u8) -> Priority {
    match value {
        0 => Priority::Emergency,
        1 => Priority::Alert,
        2 => Priority::Critical,
        3 => Priority::Error,
        4 => Priority::Warning,
        5 => Priority::Notice,
        6 => Priority::Info,
        _ => Priority::Debug,
    }
}

fn write_to_stderr(record: &Record) {
    let mut line = stderr_line(record);
    line.push('\n');
    // One write per record keeps lines whole when other threads write to stderr too. A failed
    // write to stderr has nowhere left to be reported.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Formats `record` as one line of `key=value` pairs. Keys are the journal field names in lower
/// case without the "slicewall_" prefix. Values other than the priority and MESSAGE_ID are
/// quoted and escaped as Rust string literals, so control characters cannot break the line or
/// reach a terminal.
fn stderr_line(record: &Record) -> String {
    let mut line = format!(
        "priority={} message_id={} message={:?}",
        record.priority, record.message_id, record.message
    );
    for (name, value) in &record.fields {
        let key = name
            .strip_prefix(FIELD_PREFIX)
            .unwrap_or(name)
            .to_ascii_lowercase();
        write!(line, " {key}={value:?}").expect("writing to a String cannot fail");
    }
    line
}

/// Builds the record of one decision.
fn decision_record(decision: &Decision) -> Record {
    let message_id = match decision.verdict {
        Verdict::Allow => message_id::DECISION_ALLOW,
        Verdict::Deny => message_id::DECISION_DENY,
    };
    let mut record = Record::new(
        decision.verdict.priority(),
        message_id,
        decision_message(decision),
    );
    record.push("SLICEWALL_VERDICT", decision.verdict);
    record.push("SLICEWALL_REASON", decision.reason);
    record.push_some("SLICEWALL_RULE", decision.rule.as_deref());
    record.push_some("SLICEWALL_UNIT", decision.unit.as_deref());
    record.push_some("SLICEWALL_APP", decision.app.as_deref());
    record.push_some("SLICEWALL_CGROUP", decision.cgroup.as_deref());
    record.push_some("SLICEWALL_EXE", decision.exe.as_deref());
    record.push_some("SLICEWALL_SHA256", decision.sha256.as_deref());
    record.push("SLICEWALL_PID", decision.pid);
    record.push("SLICEWALL_UID", decision.uid);
    record.push("SLICEWALL_COMM", &decision.comm);
    record.push("SLICEWALL_PROTOCOL", decision.protocol);
    record.push("SLICEWALL_ADDRESS", decision.address.to_canonical());
    record.push("SLICEWALL_PORT", decision.port);
    if let Some(answerer) = &decision.answered_by {
        record.push("SLICEWALL_ANSWERED_BY", answerer.uid.to_string());
        record.push("SLICEWALL_ANSWERED_BUS_NAME", answerer.bus_name.clone());
    }
    record
}

/// Builds the MESSAGE of a decision, for example
/// "deny tcp 192.0.2.1:80 from /usr/bin/curl (pid 123, unit foo.service): rule /etc/slicewall/rules.d/10-x.toml:3".
fn decision_message(decision: &Decision) -> String {
    let destination = SocketAddr::new(decision.address.to_canonical(), decision.port);
    let source = match &decision.exe {
        Some(exe) => printable(exe),
        None => Cow::Owned(format!("process {:?}", decision.comm)),
    };
    let unit = match &decision.unit {
        Some(unit) => format!(", unit {}", printable(unit)),
        None => String::new(),
    };
    let rule = match &decision.rule {
        Some(rule) => format!(" {}", printable(rule)),
        None => String::new(),
    };
    format!(
        "{} {} {destination} from {source} (pid {}{unit}): {}{rule}",
        decision.verdict, decision.protocol, decision.pid, decision.reason
    )
}

/// Builds the record that reports decisions counted instead of written.
fn coalesced_record(coalesced: &Coalesced) -> Record {
    match coalesced {
        Coalesced::Flow(flow, count) => {
            let destination = SocketAddr::new(flow.address, flow.port);
            let source = flow
                .exe
                .as_deref()
                .map_or(Cow::Borrowed("an unknown executable"), printable);
            let unit = match &flow.unit {
                Some(unit) => format!(" (unit {})", printable(unit)),
                None => String::new(),
            };
            let message = format!(
                "{} {} {destination} from {source}{unit}: {count} more {} coalesced",
                flow.verdict,
                flow.protocol,
                if *count == 1 { "decision" } else { "decisions" }
            );

            let mut record = Record::new(flow.verdict.priority(), message_id::COALESCED, message);
            record.push("SLICEWALL_VERDICT", flow.verdict);
            record.push_some("SLICEWALL_UNIT", flow.unit.as_deref());
            record.push_some("SLICEWALL_EXE", flow.exe.as_deref());
            record.push("SLICEWALL_PROTOCOL", flow.protocol);
            record.push("SLICEWALL_ADDRESS", flow.address);
            record.push("SLICEWALL_PORT", flow.port);
            record.push("SLICEWALL_COUNT", count);
            record
        }
        Coalesced::Untracked(verdict, count) => {
            let message = format!(
                "{verdict}: {count} more decisions coalesced without their flows, because more than {MAX_COALESCED_FLOWS} flows were over their limit"
            );
            let mut record = Record::new(Priority::Warning, message_id::COALESCED, message);
            record.push("SLICEWALL_VERDICT", verdict);
            record.push("SLICEWALL_COUNT", count);
            record
        }
    }
}

/// Returns `text` as it is if every character is printable, and otherwise quoted and escaped
/// as a Rust string literal, so a file or unit name cannot forge the rest of a line.
fn printable(text: &str) -> Cow<'_, str> {
    let harmless = |c: char| matches!(c, ' ' | '"' | '\'' | '\\') || c.escape_debug().len() == 1;
    if text.chars().all(harmless) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(format!("{text:?}"))
    }
}

/// Turns `name` into a valid journal field name: upper-case ASCII letters, digits and '_', not
/// starting with '_' or a digit, at most 64 bytes. journald drops fields with other names.
fn journal_field_name(name: &str) -> String {
    let mut normalized: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if !normalized.starts_with(|c: char| c.is_ascii_uppercase()) {
        normalized.insert_str(0, FIELD_PREFIX);
    }
    normalized.truncate(64);
    normalized
}

/// The fields that tell floods apart: decisions with the same key are coalesced together.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FlowKey {
    verdict: Verdict,
    exe: Option<String>,
    unit: Option<String>,
    address: IpAddr,
    port: u16,
    protocol: &'static str,
}

impl FlowKey {
    fn of(decision: &Decision) -> Self {
        FlowKey {
            verdict: decision.verdict,
            exe: decision.exe.clone(),
            unit: decision.unit.clone(),
            address: decision.address.to_canonical(),
            port: decision.port,
            protocol: decision.protocol,
        }
    }
}

/// A count of decisions that were not written one by one.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Coalesced {
    Flow(FlowKey, u64),
    /// Decisions of flows beyond [`MAX_COALESCED_FLOWS`], counted per verdict.
    Untracked(Verdict, u64),
}

/// Decides which decisions are written one by one, in fixed windows of `interval` that start at
/// the first record after the previous window ended. Time is passed in, so tests control it.
struct FloodLimiter {
    burst: u32,
    global_burst: u32,
    interval: Duration,
    max_coalesced_flows: usize,
    window_start: Option<Instant>,
    written_per_flow: HashMap<FlowKey, u32>,
    written_total: u32,
    coalesced: HashMap<FlowKey, u64>,
    untracked_allow: u64,
    untracked_deny: u64,
}

impl FloodLimiter {
    fn new(options: &AuditOptions, max_coalesced_flows: usize) -> Self {
        FloodLimiter {
            burst: options.burst,
            global_burst: options.global_burst,
            interval: options.interval,
            max_coalesced_flows,
            window_start: None,
            written_per_flow: HashMap::new(),
            written_total: 0,
            coalesced: HashMap::new(),
            untracked_allow: 0,
            untracked_deny: 0,
        }
    }

    fn window_elapsed(&self, now: Instant) -> bool {
        match self.window_start {
            None => true,
            Some(start) => now.saturating_duration_since(start) >= self.interval,
        }
    }

    fn start_window_if_elapsed(&mut self, now: Instant) {
        if self.window_elapsed(now) {
            self.window_start = Some(now);
            self.written_per_flow.clear();
            self.written_total = 0;
        }
    }

    /// Returns whether a decision of flow `key` is to be written now, and counts it for a
    /// coalesced record otherwise.
    fn admit(&mut self, key: FlowKey, now: Instant) -> bool {
        self.start_window_if_elapsed(now);
        if self.written_total < self.global_burst {
            if let Some(written) = self.written_per_flow.get_mut(&key) {
                if *written < self.burst {
                    *written += 1;
                    self.written_total += 1;
                    return true;
                }
            } else if self.burst > 0 {
                self.written_per_flow.insert(key, 1);
                self.written_total += 1;
                return true;
            }
        }
        self.count(key);
        false
    }

    fn count(&mut self, key: FlowKey) {
        if let Some(count) = self.coalesced.get_mut(&key) {
            *count += 1;
        } else if self.coalesced.len() < self.max_coalesced_flows {
            self.coalesced.insert(key, 1);
        } else {
            match key.verdict {
                Verdict::Allow => self.untracked_allow += 1,
                Verdict::Deny => self.untracked_deny += 1,
            }
        }
    }

    /// Returns the counts kept since the last call and starts counting anew.
    fn take_coalesced(&mut self, now: Instant) -> Vec<Coalesced> {
        self.start_window_if_elapsed(now);
        let mut summaries: Vec<Coalesced> = self
            .coalesced
            .drain()
            .map(|(key, count)| Coalesced::Flow(key, count))
            .collect();
        let untracked = [
            (Verdict::Allow, std::mem::take(&mut self.untracked_allow)),
            (Verdict::Deny, std::mem::take(&mut self.untracked_deny)),
        ];
        for (verdict, count) in untracked {
            if count > 0 {
                summaries.push(Coalesced::Untracked(verdict, count));
            }
        }
        summaries
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::{Arc, Mutex};

    use super::*;

    fn decision() -> Decision {
        Decision {
            verdict: Verdict::Deny,
            reason: Reason::Rule,
            rule: Some("/etc/slicewall/rules.d/10-x.toml:3".into()),
            unit: Some("foo.service".into()),
            app: None,
            cgroup: Some("/system.slice/foo.service".into()),
            exe: Some("/usr/bin/curl".into()),
            sha256: Some("ab".repeat(32)),
            pid: 123,
            uid: 1000,
            comm: "curl".into(),
            protocol: "tcp",
            address: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            port: 80,
            answered_by: None,
        }
    }

    fn field<'a>(record: &'a Record, name: &str) -> Option<&'a str> {
        record
            .fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_str())
    }

    fn key(port: u16) -> FlowKey {
        FlowKey::of(&Decision { port, ..decision() })
    }

    fn options(burst: u32, global_burst: u32) -> AuditOptions {
        AuditOptions {
            burst,
            global_burst,
            interval: Duration::from_secs(1),
            force_stderr: false,
        }
    }

    fn flow_count(coalesced: &[Coalesced], key: &FlowKey) -> Option<u64> {
        coalesced.iter().find_map(|c| match c {
            Coalesced::Flow(k, count) if k == key => Some(*count),
            _ => None,
        })
    }

    #[test]
    fn decision_record_fields() {
        let record = decision_record(&decision());

        let names: Vec<&str> = record
            .fields
            .iter()
            .map(|(name, _)| name.as_ref())
            .collect();
        assert_eq!(
            names,
            [
                "SLICEWALL_VERDICT",
                "SLICEWALL_REASON",
                "SLICEWALL_RULE",
                "SLICEWALL_UNIT",
                "SLICEWALL_CGROUP",
                "SLICEWALL_EXE",
                "SLICEWALL_SHA256",
                "SLICEWALL_PID",
                "SLICEWALL_UID",
                "SLICEWALL_COMM",
                "SLICEWALL_PROTOCOL",
                "SLICEWALL_ADDRESS",
                "SLICEWALL_PORT",
            ]
        );
        assert_eq!(field(&record, "SLICEWALL_VERDICT"), Some("deny"));
        assert_eq!(field(&record, "SLICEWALL_REASON"), Some("rule"));
        assert_eq!(
            field(&record, "SLICEWALL_RULE"),
            Some("/etc/slicewall/rules.d/10-x.toml:3")
        );
        assert_eq!(field(&record, "SLICEWALL_PID"), Some("123"));
        assert_eq!(field(&record, "SLICEWALL_UID"), Some("1000"));
        assert_eq!(field(&record, "SLICEWALL_ADDRESS"), Some("192.0.2.1"));
        assert_eq!(field(&record, "SLICEWALL_PORT"), Some("80"));
        assert_eq!(record.priority, 5);
        assert_eq!(record.message_id, message_id::DECISION_DENY);
        assert_eq!(
            record.message,
            "deny tcp 192.0.2.1:80 from /usr/bin/curl (pid 123, unit foo.service): rule /etc/slicewall/rules.d/10-x.toml:3"
        );
    }

    #[test]
    fn decision_record_allow_minimal() {
        let minimal = Decision {
            verdict: Verdict::Allow,
            reason: Reason::NoRule,
            rule: None,
            unit: None,
            app: None,
            cgroup: None,
            exe: None,
            sha256: None,
            protocol: "udp",
            address: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            port: 53,
            ..decision()
        };

        let record = decision_record(&minimal);

        let names: Vec<&str> = record
            .fields
            .iter()
            .map(|(name, _)| name.as_ref())
            .collect();
        assert_eq!(
            names,
            [
                "SLICEWALL_VERDICT",
                "SLICEWALL_REASON",
                "SLICEWALL_PID",
                "SLICEWALL_UID",
                "SLICEWALL_COMM",
                "SLICEWALL_PROTOCOL",
                "SLICEWALL_ADDRESS",
                "SLICEWALL_PORT",
            ]
        );
        assert_eq!(record.priority, 6);
        assert_eq!(record.message_id, message_id::DECISION_ALLOW);
        assert_eq!(field(&record, "SLICEWALL_REASON"), Some("no-rule"));
        assert_eq!(
            record.message,
            "allow udp [2001:db8::1]:53 from process \"curl\" (pid 123): no-rule"
        );
    }

    #[test]
    fn decision_record_unmaps_ipv4() {
        let mapped = Decision {
            address: IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped()),
            ..decision()
        };

        let record = decision_record(&mapped);

        assert_eq!(field(&record, "SLICEWALL_ADDRESS"), Some("192.0.2.7"));
        assert!(
            record.message.contains(" 192.0.2.7:80 "),
            "{}",
            record.message
        );
    }

    #[test]
    fn reason_display_kebab_case() {
        let cases = [
            (Reason::Rule, "rule"),
            (Reason::NoRule, "no-rule"),
            (Reason::AskFallback, "ask-fallback"),
            (Reason::FailMode, "fail-mode"),
            (Reason::Pending, "pending"),
            (Reason::Limit, "limit"),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.to_string(), text);
        }
    }

    #[test]
    fn hostile_comm_escaped_on_stderr() {
        let hostile = Decision {
            comm: "evil\n\"x\"\u{1b}[31m\\".into(),
            exe: None,
            ..decision()
        };
        let record = decision_record(&hostile);

        let line = stderr_line(&record);

        assert!(!line.contains('\n'), "{line}");
        assert!(!line.contains('\u{1b}'), "{line}");
        assert!(
            line.contains(r#" comm="evil\n\"x\"\u{1b}[31m\\" "#),
            "{line}"
        );
        assert!(line.contains(r#" verdict="deny" "#), "{line}");
        assert!(
            line.starts_with(
                "priority=5 message_id=a3d3a38dcbfe46b192074f44d8f04965 message=\"deny tcp"
            ),
            "{line}"
        );
        // The journal field keeps the bytes; only text lines escape them.
        assert_eq!(
            field(&record, "SLICEWALL_COMM"),
            Some("evil\n\"x\"\u{1b}[31m\\")
        );
    }

    #[test]
    fn hostile_exe_escaped_in_message() {
        let hostile = Decision {
            exe: Some("/tmp/x\n\u{202e}fake".into()),
            ..decision()
        };

        let record = decision_record(&hostile);

        assert!(
            record
                .message
                .contains(r#"from "/tmp/x\n\u{202e}fake" (pid"#),
            "{}",
            record.message
        );
        assert_eq!(
            field(&record, "SLICEWALL_EXE"),
            Some("/tmp/x\n\u{202e}fake")
        );
    }

    #[test]
    fn printable_keeps_plain_text() {
        assert_eq!(printable("/usr/bin/my tool"), "/usr/bin/my tool");
        assert_eq!(printable("/opt/ünïcode/bin"), "/opt/ünïcode/bin");
        assert_eq!(printable("tab\there"), "\"tab\\there\"");
    }

    #[test]
    fn event_field_names_normalized() {
        let cases = [
            ("SLICEWALL_RULES_DIR", "SLICEWALL_RULES_DIR"),
            ("slicewall_lost", "SLICEWALL_LOST"),
            ("rules.dir", "RULES_DIR"),
            ("_HIDDEN", "SLICEWALL__HIDDEN"),
            ("2nd", "SLICEWALL_2ND"),
            ("", "SLICEWALL_"),
        ];
        for (name, expected) in cases {
            assert_eq!(journal_field_name(name), expected, "{name:?}");
        }
        assert_eq!(journal_field_name(&"X".repeat(80)).len(), 64);
    }

    #[test]
    fn limiter_writes_burst_then_counts() {
        let mut limiter = FloodLimiter::new(&options(3, 100), 16);
        let start = Instant::now();

        let admitted: Vec<bool> = (0..5).map(|_| limiter.admit(key(80), start)).collect();

        assert_eq!(admitted, [true, true, true, false, false]);
        let coalesced = limiter.take_coalesced(start);
        assert_eq!(coalesced, [Coalesced::Flow(key(80), 2)]);
        assert_eq!(limiter.take_coalesced(start), []);
    }

    #[test]
    fn limiter_new_window_after_interval() {
        let mut limiter = FloodLimiter::new(&options(2, 100), 16);
        let start = Instant::now();
        for _ in 0..3 {
            limiter.admit(key(80), start);
        }

        assert!(!limiter.admit(key(80), start + Duration::from_millis(999)));
        assert!(limiter.admit(key(80), start + Duration::from_secs(1)));
        assert!(limiter.admit(key(80), start + Duration::from_millis(1500)));
        assert!(!limiter.admit(key(80), start + Duration::from_millis(1999)));
        assert_eq!(
            limiter.take_coalesced(start + Duration::from_secs(2)),
            [Coalesced::Flow(key(80), 3)]
        );
    }

    #[test]
    fn limiter_flows_are_independent() {
        let mut limiter = FloodLimiter::new(&options(1, 100), 16);
        let now = Instant::now();

        assert!(limiter.admit(key(80), now));
        assert!(limiter.admit(key(443), now));
        assert!(!limiter.admit(key(80), now));
        let other_verdict = FlowKey {
            verdict: Verdict::Allow,
            ..key(80)
        };
        assert!(limiter.admit(other_verdict, now));
    }

    #[test]
    fn limiter_global_cap() {
        let mut limiter = FloodLimiter::new(&options(3, 4), 16);
        let now = Instant::now();

        let first: Vec<bool> = (0..3).map(|_| limiter.admit(key(1), now)).collect();
        let second: Vec<bool> = (0..3).map(|_| limiter.admit(key(2), now)).collect();

        assert_eq!(first, [true, true, true]);
        assert_eq!(second, [true, false, false]);
        let coalesced = limiter.take_coalesced(now);
        assert_eq!(flow_count(&coalesced, &key(2)), Some(2));
        assert_eq!(flow_count(&coalesced, &key(1)), None);
    }

    #[test]
    fn limiter_untracked_beyond_max_flows() {
        let mut limiter = FloodLimiter::new(&options(0, 100), 2);
        let now = Instant::now();

        for port in 1..=5 {
            assert!(!limiter.admit(key(port), now));
        }
        assert!(!limiter.admit(key(1), now));
        limiter.admit(
            FlowKey {
                verdict: Verdict::Allow,
                ..key(9)
            },
            now,
        );

        let coalesced = limiter.take_coalesced(now);
        assert_eq!(flow_count(&coalesced, &key(1)), Some(2));
        assert_eq!(flow_count(&coalesced, &key(2)), Some(1));
        assert!(
            coalesced.contains(&Coalesced::Untracked(Verdict::Deny, 3)),
            "{coalesced:?}"
        );
        assert!(
            coalesced.contains(&Coalesced::Untracked(Verdict::Allow, 1)),
            "{coalesced:?}"
        );
        assert_eq!(coalesced.len(), 4);
    }

    #[test]
    fn limiter_accounts_for_every_decision() {
        let mut limiter = FloodLimiter::new(&options(7, 50), 8);
        let start = Instant::now();
        let mut written = 0u64;
        let mut coalesced = 0u64;
        let total = 5000u64;

        for i in 0..total {
            let now = start + Duration::from_millis(i / 3);
            let port = u16::try_from(i * 7919 % 23).unwrap();
            if limiter.admit(key(port), now) {
                written += 1;
            }
            if i % 500 == 0 {
                coalesced += limiter
                    .take_coalesced(now)
                    .iter()
                    .map(count_of)
                    .sum::<u64>();
            }
        }
        coalesced += limiter
            .take_coalesced(start + Duration::from_secs(60))
            .iter()
            .map(count_of)
            .sum::<u64>();

        assert_eq!(written + coalesced, total);
        assert!(coalesced > 0, "the pattern should hit the limits");
    }

    fn count_of(coalesced: &Coalesced) -> u64 {
        match coalesced {
            Coalesced::Flow(_, count) | Coalesced::Untracked(_, count) => *count,
        }
    }

    fn memory_audit(burst: u32) -> (Audit, Arc<Mutex<Vec<Record>>>) {
        let records = Arc::new(Mutex::new(Vec::new()));
        let audit = Audit::with_sink(&options(burst, 100), Sink::Memory(Arc::clone(&records)));
        (audit, records)
    }

    #[test]
    fn audit_coalesces_flood() {
        let (mut audit, records) = memory_audit(3);
        let start = Instant::now();

        for _ in 0..5 {
            audit.record_at(decision(), start);
        }
        assert_eq!(records.lock().unwrap().len(), 3);
        audit.flush_at(start + Duration::from_millis(10));

        let records = records.lock().unwrap();
        assert_eq!(records.len(), 4);
        let summary = &records[3];
        assert_eq!(summary.message_id, message_id::COALESCED);
        assert_eq!(field(summary, "SLICEWALL_COUNT"), Some("2"));
        assert_eq!(field(summary, "SLICEWALL_EXE"), Some("/usr/bin/curl"));
        assert_eq!(field(summary, "SLICEWALL_UNIT"), Some("foo.service"));
        assert_eq!(field(summary, "SLICEWALL_ADDRESS"), Some("192.0.2.1"));
        assert_eq!(field(summary, "SLICEWALL_PORT"), Some("80"));
        assert_eq!(field(summary, "SLICEWALL_PROTOCOL"), Some("tcp"));
        assert_eq!(field(summary, "SLICEWALL_VERDICT"), Some("deny"));
        assert_eq!(summary.priority, 5);
        assert_eq!(
            summary.message,
            "deny tcp 192.0.2.1:80 from /usr/bin/curl (unit foo.service): 2 more decisions coalesced"
        );
    }

    #[test]
    fn audit_flushes_before_next_window() {
        let (mut audit, records) = memory_audit(1);
        let start = Instant::now();
        audit.record_at(decision(), start);
        audit.record_at(decision(), start);

        audit.record_at(decision(), start + Duration::from_secs(1));

        let ids: Vec<&str> = records
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.message_id)
            .collect();
        assert_eq!(
            ids,
            [
                message_id::DECISION_DENY,
                message_id::COALESCED,
                message_id::DECISION_DENY
            ]
        );
    }

    #[test]
    fn audit_drop_flushes_counts() {
        let (mut audit, records) = memory_audit(0);
        audit.record(decision());

        drop(audit);

        let records = records.lock().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(field(&records[0], "SLICEWALL_COUNT"), Some("1"));
    }

    #[test]
    fn audit_event_record() {
        let (mut audit, records) = memory_audit(1);

        audit.event(
            EventKind::RulesRejected,
            "rejected /etc/slicewall/rules.d/10-x.toml: invalid port at 3:7",
            &[
                ("SLICEWALL_FILE", "/etc/slicewall/rules.d/10-x.toml".into()),
                ("line", "3".into()),
            ],
        );

        let records = records.lock().unwrap();
        let record = &records[0];
        assert_eq!(record.priority, 3);
        assert_eq!(record.message_id, message_id::RULES_REJECTED);
        assert_eq!(
            record.message,
            "rejected /etc/slicewall/rules.d/10-x.toml: invalid port at 3:7"
        );
        assert_eq!(
            field(record, "SLICEWALL_FILE"),
            Some("/etc/slicewall/rules.d/10-x.toml")
        );
        assert_eq!(field(record, "LINE"), Some("3"));
    }

    #[test]
    fn event_kinds_have_distinct_ids() {
        let kinds = [
            EventKind::Started,
            EventKind::Stopped,
            EventKind::RulesLoaded,
            EventKind::RulesRejected,
            EventKind::LostEvents,
            EventKind::NftablesRestored,
        ];
        let mut ids: Vec<&str> = kinds.iter().map(|kind| kind.message_id()).collect();
        ids.extend([
            message_id::DECISION_ALLOW,
            message_id::DECISION_DENY,
            message_id::COALESCED,
        ]);
        let count = ids.len();

        ids.sort_unstable();
        ids.dedup();

        assert_eq!(ids.len(), count);
        for id in ids {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "{id}"
            );
        }
    }

    #[test]
    fn catalog_describes_every_message_id() {
        let catalog = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/units/slicewall.catalog"
        ));
        let ids = [
            message_id::DECISION_ALLOW,
            message_id::DECISION_DENY,
            message_id::COALESCED,
            message_id::LOST_EVENTS,
            message_id::NFTABLES_RESTORED,
            message_id::STARTED,
            message_id::STOPPED,
            message_id::RULES_LOADED,
            message_id::RULES_REJECTED,
        ];
        let headers: Vec<&str> = catalog
            .lines()
            .filter_map(|line| line.strip_prefix("-- "))
            .collect();

        for id in ids {
            assert!(headers.contains(&id), "no catalog entry for {id}");
        }
        assert_eq!(headers.len(), ids.len(), "{headers:?}");
    }

    #[test]
    fn catalog_compiles_with_journalctl() {
        let root = tempfile::tempdir().unwrap();
        let catalog_dir = root.path().join("usr/lib/systemd/catalog");
        std::fs::create_dir_all(&catalog_dir).unwrap();
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/units/slicewall.catalog");
        std::fs::copy(source, catalog_dir.join("slicewall.catalog")).unwrap();
        let journalctl = |args: &[&str]| {
            std::process::Command::new("journalctl")
                .arg("--root")
                .arg(root.path())
                .args(args)
                .output()
        };

        let Ok(update) = journalctl(&["--update-catalog"]) else {
            println!("skipping: journalctl not installed");
            return;
        };
        assert!(update.status.success(), "{update:?}");
        let listed = journalctl(&["--list-catalog"]).unwrap();

        let listed = String::from_utf8(listed.stdout).unwrap();
        assert_eq!(listed.lines().count(), 9, "{listed}");
        let deny = format!(
            "{} slicewall: slicewall denied a",
            message_id::DECISION_DENY
        );
        assert!(listed.contains(&deny), "{listed}");
    }

    #[test]
    fn stderr_when_forced() {
        let audit = Audit::open(AuditOptions {
            force_stderr: true,
            ..AuditOptions::default()
        });

        assert!(!audit.writes_to_journal());
    }

    mod journald {
        //! Writes records to a real systemd-journald and reads them back with journalctl.
        //!
        //! The test re-runs itself under `unshare --mount`, so that a tmpfs can be mounted on
        //! /run and /var/log/journal, and starts journald there through
        //! systemd-socket-activate. Started without sockets, journald 252 would also open the
        //! kernel audit socket and enable auditing for the whole machine.

        use std::fs;
        use std::os::unix::process::CommandExt;
        use std::path::Path;
        use std::process::{Child, Command, Stdio};
        use std::thread::sleep;

        use super::*;

        /// Set in the environment of the re-run; its value is the parent's mount namespace.
        const CHILD_ENV: &str = "SLICEWALL_TEST_JOURNALD_PARENT_MNT_NS";
        const DONE_MARKER: &str = "journald round trip checked";
        const JOURNALD_PATHS: [&str; 2] = [
            "/lib/systemd/systemd-journald",
            "/usr/lib/systemd/systemd-journald",
        ];
        const JOURNALD_CONFIG: &str = "\
[Journal]
Storage=volatile
ReadKMsg=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
";

        /// A process that is killed and reaped when the test ends, also on failure.
        struct KillOnDrop(Child);

        impl Drop for KillOnDrop {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }

        fn command_works(program: &str, args: &[&str]) -> bool {
            Command::new(program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        }

        /// Returns the mount namespace of `pid`, like "mnt:[4026531841]", or `None` if it cannot
        /// be read (PID 1 can be hidden from root in a sandbox).
        fn mount_namespace(pid: &str) -> Option<String> {
            let link = fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()?;
            Some(link.to_string_lossy().into_owned())
        }

        #[test]
        fn journald_stores_decision_fields() {
            if let Some(parent_namespace) = std::env::var_os(CHILD_ENV) {
                run_in_namespace(&parent_namespace.to_string_lossy());
                return;
            }

            // SAFETY: geteuid() has no preconditions and cannot fail.
            if unsafe { libc::geteuid() } != 0 {
                println!("skipping: mounting a private /run needs root");
                return;
            }
            if !JOURNALD_PATHS.iter().any(|path| Path::new(path).exists()) {
                println!("skipping: systemd-journald not installed");
                return;
            }
            for (program, args) in [
                ("journalctl", &["--version"][..]),
                ("systemd-socket-activate", &["--version"][..]),
                ("mount", &["--version"][..]),
                (
                    "unshare",
                    &["--mount", "--propagation", "private", "true"][..],
                ),
            ] {
                if !command_works(program, args) {
                    println!("skipping: `{program} {}` failed", args.join(" "));
                    return;
                }
            }

            let test_name = format!(
                "{}::journald_stores_decision_fields",
                module_path!().split_once("::").unwrap().1
            );
            let output = Command::new("unshare")
                .args(["--mount", "--propagation", "private", "--"])
                .arg(std::env::current_exe().unwrap())
                .args(["--exact", &test_name, "--nocapture", "--test-threads=1"])
                .env(
                    CHILD_ENV,
                    mount_namespace("self").expect("own mount namespace"),
                )
                .stdin(Stdio::null())
                .output()
                .unwrap();

            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                output.status.success(),
                "re-run failed: {}\n{stdout}\n{stderr}",
                output.status
            );
            assert!(
                stdout.contains(DONE_MARKER),
                "re-run did not check the journal:\n{stdout}\n{stderr}"
            );
            println!("re-run output:\n{stdout}\n{stderr}");
        }

        fn run_in_namespace(parent_namespace: &str) {
            prepare_private_run(parent_namespace);
            let _journald = start_journald();

            let mut audit = Audit::open(AuditOptions::default());
            assert!(audit.writes_to_journal());
            let hostile_comm = "evil\n\u{1b}[31m\"";
            audit.record(Decision {
                comm: hostile_comm.into(),
                ..decision()
            });
            audit.event(
                EventKind::Started,
                "slicewalld started",
                &[("SLICEWALL_RULES", "3".into())],
            );
            assert_eq!(audit.journal_failures(), 0);

            let mut entries = Vec::new();
            wait_for(
                || {
                    entries = read_journal();
                    entries.len() >= 2
                },
                "two slicewalld records in the journal",
            );

            let decision_entry = entries
                .iter()
                .find(|entry| entry["MESSAGE_ID"] == message_id::DECISION_DENY)
                .expect("a decision record");
            let expected = [
                ("MESSAGE", "deny tcp 192.0.2.1:80 from /usr/bin/curl (pid 123, unit foo.service): rule /etc/slicewall/rules.d/10-x.toml:3"),
                ("PRIORITY", "5"),
                ("SYSLOG_IDENTIFIER", "slicewalld"),
                ("SLICEWALL_VERDICT", "deny"),
                ("SLICEWALL_REASON", "rule"),
                ("SLICEWALL_RULE", "/etc/slicewall/rules.d/10-x.toml:3"),
                ("SLICEWALL_UNIT", "foo.service"),
                ("SLICEWALL_CGROUP", "/system.slice/foo.service"),
                ("SLICEWALL_EXE", "/usr/bin/curl"),
                ("SLICEWALL_PID", "123"),
                ("SLICEWALL_UID", "1000"),
                ("SLICEWALL_PROTOCOL", "tcp"),
                ("SLICEWALL_ADDRESS", "192.0.2.1"),
                ("SLICEWALL_PORT", "80"),
            ];
            for (name, value) in expected {
                assert_eq!(
                    decision_entry[name], value,
                    "field {name} in {decision_entry}"
                );
            }
            assert_eq!(decision_entry["SLICEWALL_SHA256"], "ab".repeat(32));
            assert!(
                decision_entry.get("SLICEWALL_APP").is_none(),
                "{decision_entry}"
            );
            // journalctl prints values with control characters as arrays of bytes.
            let comm_bytes: Vec<u64> = hostile_comm.bytes().map(u64::from).collect();
            assert_eq!(
                decision_entry["SLICEWALL_COMM"],
                serde_json::json!(comm_bytes),
                "{decision_entry}"
            );

            let started = entries
                .iter()
                .find(|entry| entry["MESSAGE_ID"] == message_id::STARTED)
                .expect("a started record");
            assert_eq!(started["MESSAGE"], "slicewalld started");
            assert_eq!(started["PRIORITY"], "6");
            assert_eq!(started["SLICEWALL_RULES"], "3");

            println!("{DONE_MARKER}");
        }

        /// Mounts a tmpfs on /run and /var/log/journal, after checking that this process has a
        /// mount namespace of its own, and configures journald there to keep its journal in
        /// memory and forward nothing.
        fn prepare_private_run(parent_namespace: &str) {
            // Mounting over /run in the machine's own namespace would break it, so check first.
            let own_namespace = mount_namespace("self").expect("own mount namespace");
            assert_ne!(
                own_namespace, parent_namespace,
                "not in a mount namespace of its own"
            );
            assert_ne!(
                Some(&own_namespace),
                mount_namespace("1").as_ref(),
                "in the mount namespace of PID 1"
            );

            mount_tmpfs("/run");
            if Path::new("/var/log/journal").is_dir() {
                mount_tmpfs("/var/log/journal");
            }
            fs::create_dir_all("/run/systemd/journald.conf.d").unwrap();
            fs::write(
                "/run/systemd/journald.conf.d/50-slicewall-test.conf",
                JOURNALD_CONFIG,
            )
            .unwrap();
            fs::create_dir_all("/run/systemd/journal").unwrap();
        }

        /// Starts journald on the native socket, with the socket passed in as systemd would.
        fn start_journald() -> KillOnDrop {
            let journald = JOURNALD_PATHS
                .iter()
                .find(|path| Path::new(path).exists())
                .unwrap();
            let mut command = Command::new("systemd-socket-activate");
            command
                .args([
                    "--datagram",
                    "--listen",
                    SD_JOURNAL_SOCK_PATH,
                    "--setenv=SYSTEMD_LOG_TARGET=console",
                    journald,
                ])
                .env("SYSTEMD_LOG_TARGET", "console")
                .stdin(Stdio::null());
            // SAFETY: the closure runs between fork and exec and only calls prctl(), which is
            // async-signal-safe. The kernel then kills journald when the thread that started it
            // exits, also when the test process is killed before KillOnDrop runs.
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let journald = KillOnDrop(command.spawn().unwrap());
            wait_for(
                || Path::new(SD_JOURNAL_SOCK_PATH).exists(),
                "the journal socket",
            );
            journald
        }

        fn mount_tmpfs(target: &str) {
            let status = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "mode=0755", "slicewall-test", target])
                .status()
                .unwrap();
            assert!(status.success(), "mount tmpfs on {target}: {status}");
        }

        fn read_journal() -> Vec<serde_json::Value> {
            let output = Command::new("journalctl")
                .args([
                    "-D",
                    "/run/log/journal",
                    "-o",
                    "json",
                    "--no-pager",
                    "SYSLOG_IDENTIFIER=slicewalld",
                ])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            String::from_utf8(output.stdout)
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect()
        }

        fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
            for _ in 0..100 {
                if condition() {
                    return;
                }
                sleep(Duration::from_millis(100));
            }
            panic!("timed out after 10 s waiting for {what}");
        }
    }
}
