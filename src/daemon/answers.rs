//! Answers that become rules, and rules added over D-Bus: written to the answers file under
//! `/etc` or `/run`, or kept in memory until a process exits or a user logs out.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::prompts::{protocol_name, Closing, Prompt};
use super::Daemon;
use crate::control::{AddedLifetime, ControlError, Lifetime, Notice, RuleRow, Scope};
use crate::kernel::abi;
use crate::rules::{self, Rule};

/// Name of the file in `etc/slicewall/rules.d` under `--root` that answers and added rules with
/// lifetime forever are appended to.
pub const ANSWERS_FILE: &str = "70-slicewall-answers.toml";
/// Name of the file in `run/slicewall/rules.d` for lifetime until-reboot. It differs from
/// [`ANSWERS_FILE`] because a file in `/etc` masks the file of the same name in `/run`.
pub const REBOOT_ANSWERS_FILE: &str = "71-slicewall-answers-until-reboot.toml";

/// When an in-memory rule ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Only when it is removed, or the daemon stops.
    Never,
    /// When the process ends: its pid and its start time in clock ticks since boot, which tells
    /// it apart from a later process with the same pid.
    Process { pid: u32, start_time: u64 },
    /// When the user's service manager, `user@UID.service`, stops.
    Logout { uid: u32 },
}

/// A rule kept in memory.
pub struct MemoryRule {
    pub number: u64,
    pub lifetime: &'static str,
    pub origin: String,
    pub toml: String,
    pub rule: Rule,
    pub expiry: Expiry,
}

/// Builds the `[[rule]]` table of an answer to `prompt`. It names the program by `exe` and
/// `sha256` (`sha256` alone when the path could not be verified), the user, and the
/// destination by `scope` within the `ask` rule's destination, and outranks the `ask` rule that
/// raised the prompt.
pub fn answer_rule(prompt: &Prompt, allow: bool, scope: Scope) -> String {
    let mut text = String::from("[[rule]]\n");
    let _ = writeln!(
        text,
        "action = {}",
        quote(if allow { "allow" } else { "deny" })
    );
    if prompt.info.exe.path_verified {
        let _ = writeln!(
            text,
            "exe = {}",
            quote(&prompt.info.exe.path.to_string_lossy())
        );
    }
    let _ = writeln!(text, "sha256 = {}", quote(&prompt.key.sha256));
    let _ = writeln!(text, "user = {}", prompt.key.uid);
    match scope {
        Scope::Destination => {
            let _ = writeln!(text, "address = {}", quote(&prompt.key.address.to_string()));
            let _ = writeln!(text, "port = {}", prompt.key.port);
            let _ = writeln!(
                text,
                "protocol = {}",
                quote(protocol_name(prompt.key.protocol))
            );
        }
        // A wider scope still covers only destinations the `ask` rule covers, so an answer
        // never decides flows the administrator did not leave to the user.
        // TODO: the daemon does not learn host names yet, so "domain" covers the address.
        Scope::Domain => {
            let destination = rules::Destination {
                addresses: vec![ipnet::IpNet::from(prompt.key.address)],
                ..prompt.ask_destination.clone()
            };
            write_destination(&mut text, &destination);
        }
        Scope::Any => write_destination(&mut text, &prompt.ask_destination),
    }
    let priority = prompt.ask_priority.saturating_add(1).min(1000);
    let _ = writeln!(text, "priority = {priority}");
    text
}

/// Builds the comment lines written above the rule of an answer. The executable's path and the
/// cgroup path come from the program that raised the prompt, so their control characters are
/// escaped: a newline would end the comment and let the name add TOML of its own to the file.
pub fn answer_comment(
    prompt: &Prompt,
    action: &str,
    lifetime: Lifetime,
    caller_uid: u32,
    caller_name: &str,
    when: &str,
) -> String {
    format!(
        "# {action} {lifetime}: answer by uid {caller_uid} ({}) at {when} to a prompt for\n# {} {}:{} from {} (uid {}, cgroup {})\n",
        comment_text(caller_name),
        protocol_name(prompt.key.protocol),
        prompt.key.address,
        prompt.key.port,
        comment_text(&prompt.info.exe.path.to_string_lossy()),
        prompt.key.uid,
        comment_text(&prompt.info.unit.cgroup_path),
        lifetime = lifetime.as_str(),
    )
}

/// Returns `text` with every control character written as a Rust escape (`\n`, `\u{1b}`), so it
/// fits on one TOML comment line, which allows no control character but tab.
fn comment_text(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        if character.is_control() {
            escaped.extend(character.escape_default());
        } else {
            escaped.push(character);
        }
    }
    escaped
}

/// Writes a rule back as a `[[rule]]` table.
pub fn rule_toml(rule: &Rule) -> String {
    let mut text = String::from("[[rule]]\n");
    let _ = writeln!(text, "action = {}", quote(rule.action.as_str()));
    let selectors = &rule.selectors;
    if let Some(unit) = &selectors.unit {
        let _ = writeln!(text, "unit = {}", quote(unit.as_str()));
    }
    if let Some(app) = &selectors.app {
        let _ = writeln!(text, "app = {}", quote(app.as_str()));
    }
    if let Some(exe) = &selectors.exe {
        let _ = writeln!(text, "exe = {}", quote(&exe.to_string_lossy()));
    }
    if let Some(sha256) = &selectors.sha256 {
        let _ = writeln!(text, "sha256 = {}", quote(&sha256.to_string()));
    }
    if let Some(user) = selectors.user {
        let _ = writeln!(text, "user = {user}");
    }
    write_destination(&mut text, &rule.destination);
    if rule.priority != 0 {
        let _ = writeln!(text, "priority = {}", rule.priority);
    }
    text
}

/// Writes the `address`, `port` and `protocol` keys of a destination; an empty list or the
/// protocol `any` writes no key.
fn write_destination(text: &mut String, destination: &rules::Destination) {
    if !destination.addresses.is_empty() {
        let list: Vec<String> = destination
            .addresses
            .iter()
            .map(|network| quote(&network.to_string()))
            .collect();
        let _ = writeln!(text, "address = [{}]", list.join(", "));
    }
    if !destination.ports.is_empty() {
        let list: Vec<String> = destination
            .ports
            .iter()
            .map(|range| quote(&range.to_string()))
            .collect();
        let _ = writeln!(text, "port = [{}]", list.join(", "));
    }
    if destination.protocol != rules::Protocol::Any {
        let _ = writeln!(text, "protocol = {}", quote(destination.protocol.as_str()));
    }
}

fn quote(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// Appends `addition` to the file at `path`, keeping what the file contains byte for byte:
/// writes a temporary file in the same directory, syncs it, renames it over the file, and syncs
/// the directory.
pub fn append_atomically(path: &Path, addition: &str) -> std::io::Result<()> {
    let directory = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(directory)?;
    let existing = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(error),
    };
    replace_atomically(path, &appended(&existing, addition))
}

/// Returns `existing` with `addition` appended after a blank line.
pub fn appended(existing: &[u8], addition: &str) -> Vec<u8> {
    let mut contents = existing.to_vec();
    if !contents.is_empty() && !contents.ends_with(b"\n") {
        contents.push(b'\n');
    }
    if !contents.is_empty() {
        contents.push(b'\n');
    }
    contents.extend_from_slice(addition.as_bytes());
    contents
}

/// Checks that `contents`, the file at `path` once a rule was appended to its `existing`
/// bytes, reads back with exactly one rule more, and returns the line of the new rule's
/// header. A table valid on its own can change the rule before it once appended, for example
/// `rule = [{ action = "allow" }]`, which becomes a key of the file's last table.
pub fn added_rule_line(path: &Path, existing: &[u8], contents: &[u8]) -> Result<u32, ControlError> {
    let before = rules::parse::parse_file_bytes(path, existing).map_err(|errors| {
        ControlError::Failed(format!(
            "refusing to add to {}, which has errors: {}",
            path.display(),
            join_errors(&errors)
        ))
    })?;
    let after = rules::parse::parse_file_bytes(path, contents).map_err(|errors| {
        ControlError::InvalidArgument(format!(
            "invalid argument toml: appended to {} it gives: {}; write the rule as a [[rule]] table",
            path.display(),
            join_errors(&errors)
        ))
    })?;
    match after.last() {
        Some(rule) if after.len() == before.len() + 1 => Ok(rule.origin.line),
        _ => Err(ControlError::InvalidArgument(format!(
            "invalid argument toml: appended to {} it does not add exactly one rule; write the rule as a [[rule]] table",
            path.display()
        ))),
    }
}

/// Replaces the file at `path` with `contents` through a synced temporary file and a rename.
pub fn replace_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let directory = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A leading '.' keeps the temporary file out of the rule files that are read.
    let temporary = directory.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = fs::File::create(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temporary, path)?;
        fs::File::open(directory)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// Reads the start time of a process (field 22 of /proc/PID/stat), in clock ticks since boot.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may contain spaces, so fields are counted after it.
    let after = &text[text.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

fn now_text() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Returns the answers file under `root` for lifetime forever or until reboot.
fn answers_path(root: &Path, lifetime_forever: bool) -> PathBuf {
    if lifetime_forever {
        root.join("etc/slicewall/rules.d").join(ANSWERS_FILE)
    } else {
        root.join("run/slicewall/rules.d").join(REBOOT_ANSWERS_FILE)
    }
}

impl Daemon {
    /// Reloads the rules after the daemon changed an answers file. When another rule file
    /// blocks the reload, the rules of this answers file alone replace its rules in force, so an
    /// answer applies at once whatever the state of the other files.
    fn reload_answers(&mut self, path: &Path) {
        if self.reload() {
            return;
        }
        let parsed = fs::read(path)
            .map_err(|error| error.to_string())
            .and_then(|bytes| {
                rules::parse_file(path, &String::from_utf8_lossy(&bytes))
                    .map_err(|errors| join_errors(&errors))
            });
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(error) => {
                tracing::error!("failed to apply {} alone: {error}", path.display());
                return;
            }
        };
        let mut file_rules = self.file_rules().to_vec();
        file_rules.retain(|rule| rule.origin.file != path);
        file_rules.extend(parsed);
        if self.install_rules(file_rules) {
            tracing::warn!(
                "applied {} alone, because another rule file blocks the reload",
                path.display()
            );
        }
    }

    fn answers_path(&self, lifetime_forever: bool) -> PathBuf {
        answers_path(&self.root, lifetime_forever)
    }

    /// Carries out `AnswerPrompt`: records the rule the lifetime asks for, then decides every
    /// connection waiting on the prompt.
    pub(super) fn answer_prompt(
        &mut self,
        id: u64,
        allow: bool,
        lifetime: Lifetime,
        scope: Scope,
        caller_uid: u32,
        caller_name: &str,
    ) -> Result<(), ControlError> {
        let Some(prompt) = self.prompts.open.get(&id) else {
            return Err(ControlError::NoSuchPrompt(format!(
                "no open prompt has id {id}"
            )));
        };
        let when = now_text();
        let action = if allow { "allow" } else { "deny" };
        let table = answer_rule(prompt, allow, scope);
        let comment = answer_comment(prompt, action, lifetime, caller_uid, caller_name, &when);
        let origin = format!("answer by UID {caller_uid} at {when}");
        let expiry = match lifetime {
            Lifetime::UntilAppQuits => {
                let pid = prompt.first.tgid;
                Some(Expiry::Process {
                    pid,
                    start_time: process_start_time(pid).unwrap_or(0),
                })
            }
            Lifetime::UntilLogout => Some(Expiry::Logout {
                uid: prompt.key.uid,
            }),
            _ => None,
        };
        match lifetime {
            Lifetime::Once => {}
            Lifetime::Forever | Lifetime::UntilReboot => {
                let path = self.answers_path(lifetime == Lifetime::Forever);
                append_atomically(&path, &format!("{comment}{table}")).map_err(|error| {
                    ControlError::Failed(format!("failed to write {}: {error}", path.display()))
                })?;
                self.reload_answers(&path);
                self.notify(Notice::RulesChanged);
            }
            Lifetime::UntilAppQuits | Lifetime::UntilLogout => {
                self.add_memory_rule(
                    &table,
                    lifetime.as_str(),
                    origin,
                    expiry.unwrap_or(Expiry::Never),
                )?;
            }
        }
        self.close_prompt(
            id,
            &Closing {
                outcome: if allow { "allow" } else { "deny" },
                verdict: if allow {
                    abi::VERDICT_ALLOW
                } else {
                    abi::VERDICT_DENY
                },
                reason: abi::REASON_PROMPT_ANSWER,
                answered_by: Some(crate::audit::Answerer {
                    uid: caller_uid,
                    bus_name: caller_name.to_string(),
                }),
            },
        );
        Ok(())
    }

    fn add_memory_rule(
        &mut self,
        table: &str,
        lifetime: &'static str,
        origin: String,
        expiry: Expiry,
    ) -> Result<String, ControlError> {
        self.memory_rule_counter += 1;
        let number = self.memory_rule_counter;
        let mut parsed =
            rules::parse::parse_file(Path::new("memory"), table).map_err(|errors| {
                ControlError::InvalidArgument(format!(
                    "invalid rule in argument toml: {}",
                    join_errors(&errors)
                ))
            })?;
        if parsed.len() != 1 {
            return Err(ControlError::InvalidArgument(format!(
                "invalid argument toml: expected one [[rule]] table, found {}",
                parsed.len()
            )));
        }
        let mut rule = parsed.remove(0);
        rule.origin.line = u32::try_from(number).unwrap_or(u32::MAX);
        rule.origin.column = 1;
        self.memory_rules.push(MemoryRule {
            number,
            lifetime,
            origin,
            toml: table.to_owned(),
            rule,
            expiry,
        });
        self.install_rules(self.file_rules().to_vec());
        self.notify(Notice::RulesChanged);
        Ok(format!("memory:{number}"))
    }

    /// Carries out `AddRule`.
    pub(super) fn add_rule(
        &mut self,
        toml_text: &str,
        lifetime: AddedLifetime,
        caller_uid: u32,
    ) -> Result<String, ControlError> {
        let parsed = rules::parse::parse_file(Path::new("toml"), toml_text).map_err(|errors| {
            ControlError::InvalidArgument(format!(
                "invalid rule in argument toml: {}",
                join_errors(&errors)
            ))
        })?;
        if parsed.len() != 1 {
            return Err(ControlError::InvalidArgument(format!(
                "invalid argument toml: expected one [[rule]] table, found {}",
                parsed.len()
            )));
        }
        let when = now_text();
        match lifetime {
            AddedLifetime::Memory => self.add_memory_rule(
                toml_text,
                "memory",
                format!("added by UID {caller_uid} at {when}"),
                Expiry::Never,
            ),
            AddedLifetime::Forever | AddedLifetime::UntilReboot => {
                let path = self.answers_path(lifetime == AddedLifetime::Forever);
                let comment = format!("# added by uid {caller_uid} at {when}\n");
                let mut addition = format!("{comment}{}", toml_text.trim_end());
                addition.push('\n');
                let existing = match fs::read(&path) {
                    Ok(bytes) => bytes,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                    Err(error) => {
                        return Err(ControlError::Failed(format!(
                            "failed to read {}: {error}",
                            path.display()
                        )))
                    }
                };
                let contents = appended(&existing, &addition);
                let line = added_rule_line(&path, &existing, &contents)?;
                replace_atomically(&path, &contents).map_err(|error| {
                    ControlError::Failed(format!("failed to write {}: {error}", path.display()))
                })?;
                self.reload_answers(&path);
                self.notify(Notice::RulesChanged);
                Ok(format!("{}:{line}", path.display()))
            }
        }
    }

    /// Carries out `RemoveRule`.
    pub(super) fn remove_rule(&mut self, id: &str) -> Result<(), ControlError> {
        if let Some(number) = id.strip_prefix("memory:") {
            let before = self.memory_rules.len();
            self.memory_rules
                .retain(|rule| number.parse::<u64>().ok() != Some(rule.number));
            if self.memory_rules.len() == before {
                return Err(ControlError::NoSuchRule(format!("no rule has id {id}")));
            }
            self.install_rules(self.file_rules().to_vec());
            self.notify(Notice::RulesChanged);
            return Ok(());
        }
        let Some((file, line)) = id.rsplit_once(':') else {
            return Err(ControlError::InvalidArgument(format!(
                "invalid id {id:?}: expected \"FILE:LINE\" or \"memory:N\""
            )));
        };
        let Ok(line) = line.parse::<usize>() else {
            return Err(ControlError::InvalidArgument(format!(
                "invalid id {id:?}: expected \"FILE:LINE\" or \"memory:N\""
            )));
        };
        let path = PathBuf::from(file);
        let Some(in_force) = self
            .tables
            .rules()
            .iter()
            .find(|rule| rule.origin.file == path && rule.origin.line as usize == line)
            .map(rule_toml)
        else {
            return Err(ControlError::NoSuchRule(format!("no rule has id {id}")));
        };
        if path != self.answers_path(true) && path != self.answers_path(false) {
            return Err(ControlError::InvalidArgument(format!(
                "invalid id {id:?}: only rules of {ANSWERS_FILE}, {REBOOT_ANSWERS_FILE} and in-memory rules can be removed, edit {file} instead"
            )));
        }
        let text = fs::read_to_string(&path)
            .map_err(|error| ControlError::Failed(format!("failed to read {file}: {error}")))?;
        check_unchanged(&path, &text, line, &in_force)?;
        let kept = remove_table(&text, line);
        replace_atomically(&path, kept.as_bytes())
            .map_err(|error| ControlError::Failed(format!("failed to write {file}: {error}")))?;
        self.reload_answers(&path);
        self.notify(Notice::RulesChanged);
        Ok(())
    }

    /// Drops the in-memory rules whose process exited or whose user logged out.
    pub(super) fn expire_memory_rules(&mut self) {
        let cgroup_mount = self.cgroup_mount.clone();
        let before = self.memory_rules.len();
        self.memory_rules.retain(|rule| match &rule.expiry {
            Expiry::Never => true,
            Expiry::Process { pid, start_time } => process_start_time(*pid) == Some(*start_time),
            Expiry::Logout { uid } => cgroup_mount
                .join(format!("user.slice/user-{uid}.slice/user@{uid}.service"))
                .is_dir(),
        });
        if self.memory_rules.len() != before {
            tracing::info!(
                count = before - self.memory_rules.len(),
                "in-memory rules expired"
            );
            self.install_rules(self.file_rules().to_vec());
            self.notify(Notice::RulesChanged);
        }
    }

    /// Returns the rows of `ListRules` for a caller. Root sees every rule. Another user sees
    /// the rules that name no user or name that user, so no user reads another's answers.
    pub(super) fn rule_rows(&self, caller_uid: u32) -> Vec<RuleRow> {
        let visible = |rule: &Rule| {
            caller_uid == 0 || rule.selectors.user.is_none_or(|uid| uid == caller_uid)
        };
        let forever = self.answers_path(true);
        let until_reboot = self.answers_path(false);
        let mut rows: Vec<RuleRow> = self
            .file_rules()
            .iter()
            .filter(|rule| visible(rule))
            .map(|rule| {
                let lifetime = if rule.origin.file == forever {
                    "forever"
                } else if rule.origin.file == until_reboot {
                    "until-reboot"
                } else {
                    "file"
                };
                (
                    rule.origin.to_string(),
                    lifetime.to_owned(),
                    rule.origin.file.display().to_string(),
                    rule_toml(rule),
                )
            })
            .collect();
        rows.extend(
            self.memory_rules
                .iter()
                .filter(|rule| visible(&rule.rule))
                .map(|rule| {
                    (
                        format!("memory:{}", rule.number),
                        rule.lifetime.to_owned(),
                        rule.origin.clone(),
                        rule.toml.clone(),
                    )
                }),
        );
        rows
    }
}

/// Checks that the file's `text` still has, on `line`, the header of the rule in force written
/// as `in_force`. A file edited by hand since the last reload can have another table there, or
/// the middle of one, and removing from that line would cut off another rule's keys.
fn check_unchanged(
    path: &Path,
    text: &str,
    line: usize,
    in_force: &str,
) -> Result<(), ControlError> {
    let now = rules::parse::parse_file(path, text)
        .ok()
        .and_then(|parsed| {
            parsed
                .iter()
                .find(|rule| rule.origin.line as usize == line)
                .map(rule_toml)
        });
    if now.as_deref() == Some(in_force) {
        Ok(())
    } else {
        Err(ControlError::Failed(format!(
            "{}:{line} changed since the rules were last loaded; reload, list the rules and remove by the new id",
            path.display()
        )))
    }
}

/// Removes the `[[rule]]` table whose header is on `line` (1-based), with the comment lines
/// right above it, and keeps every other byte.
pub fn remove_table(text: &str, line: usize) -> String {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let header = line.saturating_sub(1);
    let mut start = header;
    while start > 0 && lines[start - 1].trim_start().starts_with('#') {
        start -= 1;
    }
    let mut end = header + 1;
    while end < lines.len() && !lines[end].trim_start().starts_with("[[") {
        end += 1;
    }
    // Comments right above the next table belong to it.
    while end > header + 1 && lines[end - 1].trim_start().starts_with('#') {
        end -= 1;
    }
    let mut kept = String::new();
    for (index, line) in lines.iter().enumerate() {
        if index < start || index >= end {
            kept.push_str(line);
        }
    }
    kept
}

fn join_errors(errors: &[rules::RuleError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt_from(exe: &str, cgroup_path: &str) -> Prompt {
        use crate::exe::ExeIdentity;
        use crate::unit::UnitInfo;
        let first = abi::Event {
            uid: 1000,
            port: 443,
            protocol: 6,
            ..abi::Event::default()
        };
        Prompt {
            id: 1,
            key: super::super::prompts::PromptKey {
                uid: 1000,
                cgroup_id: 7,
                exe: PathBuf::from(exe),
                sha256: "0".repeat(64),
                address: "192.0.2.1".parse().unwrap(),
                port: 443,
                protocol: 6,
            },
            info: super::super::tables::SubjectInfo {
                unit: std::sync::Arc::new(UnitInfo {
                    cgroup_path: cgroup_path.to_owned(),
                    ..UnitInfo::default()
                }),
                exe: std::sync::Arc::new(ExeIdentity {
                    path: PathBuf::from(exe),
                    sha256: [0; 32].into(),
                    deleted: false,
                    path_verified: true,
                }),
                uid: 1000,
                policy: 0,
            },
            first,
            waiting: Vec::new(),
            had_connections: false,
            deadline: std::time::Instant::now(),
            deadline_usec: 0,
            ask_priority: 0,
            ask_destination: rules::Destination {
                addresses: vec!["192.0.2.0/24".parse().unwrap()],
                ports: vec![rules::PortRange {
                    first: 443,
                    last: 443,
                }],
                protocol: rules::Protocol::Tcp,
            },
        }
    }

    #[test]
    fn wide_answers_stay_within_the_ask_rule() {
        let prompt = prompt_from("/usr/bin/app", "/user.slice/app.scope");

        let any = answer_rule(&prompt, true, Scope::Any);
        assert!(any.contains("address = [\"192.0.2.0/24\"]"), "{any}");
        assert!(any.contains("port = [\"443\"]"), "{any}");
        assert!(any.contains("protocol = \"tcp\""), "{any}");

        let domain = answer_rule(&prompt, true, Scope::Domain);
        assert!(domain.contains("address = [\"192.0.2.1/32\"]"), "{domain}");
        assert!(domain.contains("port = [\"443\"]"), "{domain}");

        for text in [any, domain] {
            let rules = rules::parse_file(Path::new("answer.toml"), &text).unwrap();
            assert_eq!(rules.len(), 1);
        }
    }

    #[test]
    fn hostile_names_stay_in_the_comment() {
        let injected = "\n[[rule]]\naction = \"allow\"\npriority = 1000\n# ";
        let prompt = prompt_from(
            &format!("/home/u/app{injected}"),
            &format!("/user.slice/a\r\u{1b}[2J{injected}"),
        );
        let comment = answer_comment(
            &prompt,
            "allow",
            Lifetime::Forever,
            1000,
            ":1.5",
            "2024-01-01T00:00:00Z",
        );
        let text = format!(
            "{comment}{}",
            answer_rule(&prompt, true, Scope::Destination)
        );

        let rules = rules::parse::parse_file(Path::new("answers.toml"), &text)
            .unwrap_or_else(|errors| panic!("{}\n{text}", join_errors(&errors)));

        assert_eq!(rules.len(), 1, "{text}");
        assert_eq!(comment.lines().count(), 2, "{comment}");
        assert!(comment.contains("/home/u/app\\n[[rule]]"), "{comment}");
    }

    #[test]
    fn added_rules_must_stay_tables_of_their_own() {
        let path = Path::new("70-slicewall-answers.toml");
        let existing = b"[[rule]]\naction = \"deny\"\nport = 22\n";
        // Valid on its own as one rule, but appended it becomes a key of the table before.
        let inline = "# added\nrule = [{ action = \"allow\" }]\n";
        assert_eq!(
            rules::parse_file(path, inline).map(|r| r.len()).ok(),
            Some(1)
        );

        let error = added_rule_line(path, existing, &appended(existing, inline)).unwrap_err();

        assert!(
            matches!(&error, ControlError::InvalidArgument(message) if message.contains("[[rule]] table")),
            "{error:?}"
        );
    }

    #[test]
    fn added_rule_line_names_the_header() {
        let path = Path::new("70-slicewall-answers.toml");
        let existing = b"[[rule]]\naction = \"deny\"\nport = 22";
        let addition = "# added\n# more\n[[ rule ]]\naction = \"allow\"\n";

        let line = added_rule_line(path, existing, &appended(existing, addition)).unwrap();

        assert_eq!(line, 7);
    }

    #[test]
    fn removal_needs_the_rule_in_force() {
        let path = Path::new("70-slicewall-answers.toml");
        let loaded = "[[rule]]\naction = \"allow\"\nport = 22\n\n[[rule]]\naction = \"deny\"\n";
        let in_force = rule_toml(&rules::parse_file(path, loaded).unwrap()[1]);
        // A rule added by hand at the top moves both down. Line 5, the deny rule's old id, now
        // holds the allow rule, which removing by that id would drop instead.
        let edited = format!("[[rule]]\naction = \"deny\"\nport = 80\n\n{loaded}");

        assert!(check_unchanged(path, loaded, 5, &in_force).is_ok());
        assert!(check_unchanged(path, &edited, 5, &in_force).is_err());
        assert!(remove_table(&edited, 5).contains("port = 80"));
        assert!(!remove_table(&edited, 5).contains("port = 22"));
    }

    #[test]
    fn remove_table_keeps_others() {
        let text = "# a\n[[rule]]\naction = \"allow\"\n\n# b\n[[rule]]\naction = \"deny\"\n";
        assert_eq!(remove_table(text, 2), "# b\n[[rule]]\naction = \"deny\"\n");
        assert_eq!(
            remove_table(text, 6),
            "# a\n[[rule]]\naction = \"allow\"\n\n"
        );
    }

    #[test]
    fn reboot_answers_survive_forever_answers() {
        let root = tempfile::tempdir().unwrap();
        for forever in [true, false] {
            let path = answers_path(root.path(), forever);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            append_atomically(&path, "[[rule]]\naction = \"allow\"\nport = 80\n").unwrap();
        }

        let loaded = rules::load_strict(root.path()).unwrap();

        assert_eq!(loaded.files.len(), 2, "{:?}", loaded.files);
        assert_eq!(loaded.rules.len(), 2);
    }

    #[test]
    fn append_keeps_existing_bytes() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("a.toml");
        fs::write(&path, "# kept  \n[[rule]]\naction = \"deny\"").unwrap();
        append_atomically(&path, "[[rule]]\naction = \"allow\"\n").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "# kept  \n[[rule]]\naction = \"deny\"\n\n[[rule]]\naction = \"allow\"\n"
        );
    }
}
