//! The daemon's D-Bus interface on the system bus: `org.slicewall.Firewall1` at
//! `/org/slicewall/Firewall1`, described in `dbus/org.slicewall.Firewall1.xml`.
//!
//! Reading members reply from a [`Status`] that the daemon's main loop keeps up to date.
//! Members that change state check the caller with polkit here, then send a [`Command`] to the
//! main loop and wait for its reply, so a slow client or a polkit dialog never delays a
//! decision. The main loop sends signals back through [`Notice`]s.

// The PromptAdded signal carries the 13 fields of a prompt unpacked, as the interface fixes, and
// the code zbus generates for it is outside the reach of an item-level allow.
#![allow(clippy::too_many_arguments)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use zbus::interface;
use zbus::names::BusName;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::Value;

/// Well-known name of the daemon on the system bus.
pub const BUS_NAME: &str = "org.slicewall.Firewall1";
/// Object path of the firewall object.
pub const OBJECT_PATH: &str = "/org/slicewall/Firewall1";
/// Interface name.
pub const INTERFACE: &str = "org.slicewall.Firewall1";
/// Wait between attempts to reach the system bus, which starts after the daemon at boot.
const BUS_RETRY: Duration = Duration::from_secs(2);

/// polkit actions checked before a call changes state.
pub const ACTION_ANSWER_OWN: &str = "org.slicewall.Firewall1.answer-own";
pub const ACTION_ANSWER_OTHER: &str = "org.slicewall.Firewall1.answer-other";
pub const ACTION_MANAGE_RULES: &str = "org.slicewall.Firewall1.manage-rules";
pub const ACTION_RELOAD: &str = "org.slicewall.Firewall1.reload";
pub const ACTION_SET_MODE: &str = "org.slicewall.Firewall1.set-mode";

/// One row of `ListUnits`: unit name, manager (`system` or `user@UID.service`), description,
/// application ID, cgroup path, cgroup ID, main executable, policy, number of rules naming the
/// unit, packets and bytes counted by nftables. Empty strings and zeros stand for unknown.
pub type UnitRow = (
    String,
    String,
    String,
    String,
    String,
    u64,
    String,
    String,
    u32,
    u64,
    u64,
);

/// One open prompt, `(tusssssssqsst)`: id, uid, unit, application ID, display name,
/// executable, SHA-256, host, address, port, protocol, cgroup path, and the deadline in
/// CLOCK_REALTIME microseconds.
pub type PromptRow = (
    u64,
    u32,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    u16,
    String,
    String,
    u64,
);

/// One rule in force, `(ssss)`: id, lifetime, origin and the rule as a `[[rule]]` table.
pub type RuleRow = (String, String, String, String);

/// State that the D-Bus interface reports, kept current by the daemon.
#[derive(Clone, Default)]
pub struct Status {
    pub fail_mode: String,
    pub ask_fallback: String,
    /// Reasons the daemon works with less than its full configuration, empty when healthy.
    pub degraded_reasons: Vec<String>,
    pub rule_count: u32,
    pub rule_files: Vec<String>,
    /// Whether the daemon follows the system manager now.
    pub following_systemd: bool,
    pub units: Vec<UnitRow>,
    /// "alert", "silent-allow" or "silent-deny".
    pub mode: String,
    pub prompt_timeout_sec: u32,
    pub prompts: Vec<PromptRow>,
}

pub type SharedStatus = Arc<Mutex<Status>>;

/// Errors of the interface, `org.slicewall.Firewall1.Error.*`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.slicewall.Firewall1.Error")]
pub enum ControlError {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// An argument is invalid; the message names it and the accepted values.
    InvalidArgument(String),
    /// polkit did not authorize the call.
    NotAuthorized(String),
    /// polkit could not be asked, so the call is rejected.
    PolkitUnavailable(String),
    NoSuchPrompt(String),
    NoSuchRule(String),
    /// The daemon failed to carry out the call; the message gives the cause.
    Failed(String),
}

/// An answer to a prompt, checked against the accepted values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    Once,
    UntilAppQuits,
    UntilLogout,
    UntilReboot,
    Forever,
}

impl Lifetime {
    pub const ACCEPTED: &'static str =
        "\"once\", \"until-app-quits\", \"until-logout\", \"until-reboot\" or \"forever\"";

    pub fn parse(text: &str) -> Option<Lifetime> {
        match text {
            "once" => Some(Lifetime::Once),
            "until-app-quits" => Some(Lifetime::UntilAppQuits),
            "until-logout" => Some(Lifetime::UntilLogout),
            "until-reboot" => Some(Lifetime::UntilReboot),
            "forever" => Some(Lifetime::Forever),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lifetime::Once => "once",
            Lifetime::UntilAppQuits => "until-app-quits",
            Lifetime::UntilLogout => "until-logout",
            Lifetime::UntilReboot => "until-reboot",
            Lifetime::Forever => "forever",
        }
    }
}

/// Destinations that an answer's rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Address, port and protocol of the flow.
    Destination,
    /// The host's domain. The daemon learns no host names yet, so this is the address, any port.
    Domain,
    Any,
}

impl Scope {
    pub const ACCEPTED: &'static str = "\"destination\", \"domain\" or \"any\"";

    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "destination" => Some(Scope::Destination),
            "domain" => Some(Scope::Domain),
            "any" => Some(Scope::Any),
            _ => None,
        }
    }
}

/// Lifetime of a rule added with `AddRule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddedLifetime {
    Forever,
    UntilReboot,
    Memory,
}

/// A request from the interface to the daemon's main loop. Each carries the channel its reply
/// goes back on; the interface has checked the arguments and polkit before sending it.
#[derive(Debug)]
pub enum Command {
    /// The interface is on the bus now (true) or lost it (false).
    Bus(bool),
    Answer {
        id: u64,
        allow: bool,
        lifetime: Lifetime,
        scope: Scope,
        caller_uid: u32,
        caller_name: String,
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    RegisterAgent {
        uid: u32,
        name: String,
    },
    UnregisterAgent {
        uid: u32,
        name: String,
    },
    /// A bus name went away; an agent that had it is unregistered.
    NameVanished(String),
    AddRule {
        toml: String,
        lifetime: AddedLifetime,
        caller_uid: u32,
        reply: oneshot::Sender<Result<String, ControlError>>,
    },
    RemoveRule {
        id: String,
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    ListRules {
        caller_uid: u32,
        reply: oneshot::Sender<Result<Vec<RuleRow>, ControlError>>,
    },
    Reload {
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
    SetMode {
        mode: String,
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
}

/// Message the daemon's main loop hands the interface to send.
#[derive(Clone)]
pub enum Notice {
    /// `PromptAdded`, unicast to the agent `destination`.
    PromptAdded {
        destination: String,
        prompt: Box<PromptRow>,
    },
    /// `PromptClosed`, unicast to the agent `destination`.
    PromptClosed {
        destination: String,
        id: u64,
        outcome: String,
    },
    RulesChanged,
    /// `PropertiesChanged` for Mode, PromptTimeoutSec and OpenPrompts, from the status.
    PropertiesChanged,
}

/// D-Bus error names of the interface, shared by the daemon and its clients.
pub mod errors {
    pub const INVALID_ARGUMENT: &str = "org.slicewall.Firewall1.Error.InvalidArgument";
    pub const NOT_AUTHORIZED: &str = "org.slicewall.Firewall1.Error.NotAuthorized";
    pub const POLKIT_UNAVAILABLE: &str = "org.slicewall.Firewall1.Error.PolkitUnavailable";
    pub const NO_SUCH_PROMPT: &str = "org.slicewall.Firewall1.Error.NoSuchPrompt";
    pub const NO_SUCH_RULE: &str = "org.slicewall.Firewall1.Error.NoSuchRule";
    pub const FAILED: &str = "org.slicewall.Firewall1.Error.Failed";
}

struct Firewall {
    status: SharedStatus,
    commands: mpsc::UnboundedSender<Command>,
}

impl Firewall {
    fn read<T>(&self, read: impl FnOnce(&Status) -> T) -> T {
        // A poisoned lock only means a writer panicked half way; the fields are still valid.
        let status = self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        read(&status)
    }

    /// Sends a command and waits for the main loop's reply.
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ControlError>>) -> Command,
    ) -> Result<T, ControlError> {
        let (sender, receiver) = oneshot::channel();
        self.commands
            .send(make(sender))
            .map_err(|_| ControlError::Failed("the daemon is stopping".to_owned()))?;
        receiver
            .await
            .map_err(|_| ControlError::Failed("the daemon is stopping".to_owned()))?
    }
}

/// Returns the caller's unique bus name from a method call's header.
fn sender_of(header: &zbus::message::Header<'_>) -> Result<String, ControlError> {
    header
        .sender()
        .map(ToString::to_string)
        .ok_or_else(|| ControlError::Failed("the call has no sender".to_owned()))
}

/// Asks the bus for the uid of the process that owns `name`.
async fn caller_uid(connection: &zbus::Connection, name: &str) -> Result<u32, ControlError> {
    let proxy = zbus::fdo::DBusProxy::new(connection).await?;
    let bus_name = BusName::try_from(name)
        .map_err(|error| ControlError::Failed(format!("invalid sender {name:?}: {error}")))?;
    proxy
        .get_connection_unix_user(bus_name)
        .await
        .map_err(|error| ControlError::Failed(format!("failed to read the uid of {name}: {error}")))
}

/// Checks whether the process behind bus name `name` runs in cgroup `cgroup` or below it. A
/// caller whose process cannot be read counts as inside, the safer answer.
///
/// NOTE: the bus reports a PID, which the process could free and another take before it is
/// read here; dbus-daemon 1.14 has no process file descriptor to pin it. A program can also
/// start a helper in another unit (`systemd-run --user --scope`), which this does not catch.
async fn caller_inside(connection: &zbus::Connection, name: &str, cgroup: &str) -> bool {
    let Ok(proxy) = zbus::fdo::DBusProxy::new(connection).await else {
        return true;
    };
    let Ok(bus_name) = BusName::try_from(name) else {
        return true;
    };
    let Ok(pid) = proxy.get_connection_unix_process_id(bus_name).await else {
        return true;
    };
    let Ok(caller_cgroup) = crate::cgroup::cgroup_of_pid(pid) else {
        return true;
    };
    let cgroup = cgroup.trim_end_matches('/');
    caller_cgroup == cgroup || caller_cgroup.starts_with(&format!("{cgroup}/"))
}

/// Checks with polkit (`CheckAuthorization`, flag AllowUserInteraction) that the caller `name`
/// may perform `action`. Any failure to reach polkit rejects the call.
async fn authorize(
    connection: &zbus::Connection,
    name: &str,
    action: &str,
) -> Result<(), ControlError> {
    const ALLOW_USER_INTERACTION: u32 = 1;
    let mut subject_details: HashMap<&str, Value<'_>> = HashMap::new();
    subject_details.insert("name", Value::from(name));
    let subject = ("system-bus-name", subject_details);
    let details: HashMap<&str, &str> = HashMap::new();
    let reply = connection
        .call_method(
            Some("org.freedesktop.PolicyKit1"),
            "/org/freedesktop/PolicyKit1/Authority",
            Some("org.freedesktop.PolicyKit1.Authority"),
            "CheckAuthorization",
            &(subject, action, details, ALLOW_USER_INTERACTION, ""),
        )
        .await
        .map_err(|error| {
            ControlError::PolkitUnavailable(format!(
                "polkit could not check {action} for {name}: {error}"
            ))
        })?;
    let (authorized, _challenge, _details): (bool, bool, HashMap<String, String>) =
        reply.body().deserialize().map_err(|error| {
            ControlError::PolkitUnavailable(format!(
                "polkit sent an unreadable reply for {action}: {error}"
            ))
        })?;
    if authorized {
        Ok(())
    } else {
        Err(ControlError::NotAuthorized(format!(
            "polkit did not authorize {action} for {name}"
        )))
    }
}

#[interface(name = "org.slicewall.Firewall1")]
impl Firewall {
    /// Lists the units the daemon follows, sorted by manager and name.
    #[zbus(name = "ListUnits")]
    fn list_units(&self) -> Vec<UnitRow> {
        self.read(|status| status.units.clone())
    }

    /// Lists the open prompts: every prompt for root, the caller's own for other users.
    #[zbus(name = "ListPrompts")]
    async fn list_prompts(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] connection: &zbus::Connection,
    ) -> Result<Vec<PromptRow>, ControlError> {
        let uid = caller_uid(connection, &sender_of(&header)?).await?;
        Ok(self.read(|status| {
            status
                .prompts
                .iter()
                .filter(|prompt| uid == 0 || prompt.1 == uid)
                .cloned()
                .collect()
        }))
    }

    /// Answers a prompt for every connection waiting on it.
    #[zbus(name = "AnswerPrompt")]
    async fn answer_prompt(
        &self,
        id: u64,
        action: &str,
        lifetime: &str,
        scope: &str,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] connection: &zbus::Connection,
    ) -> Result<(), ControlError> {
        let allow = match action {
            "allow" => true,
            "deny" => false,
            other => {
                return Err(ControlError::InvalidArgument(format!(
                    "invalid action {other:?}: expected \"allow\" or \"deny\""
                )))
            }
        };
        let lifetime = Lifetime::parse(lifetime).ok_or_else(|| {
            ControlError::InvalidArgument(format!(
                "invalid lifetime {lifetime:?}: expected {}",
                Lifetime::ACCEPTED
            ))
        })?;
        let scope = Scope::parse(scope).ok_or_else(|| {
            ControlError::InvalidArgument(format!(
                "invalid scope {scope:?}: expected {}",
                Scope::ACCEPTED
            ))
        })?;
        let name = sender_of(&header)?;
        let uid = caller_uid(connection, &name).await?;
        let (prompt_uid, prompt_cgroup) = self
            .read(|status| {
                status
                    .prompts
                    .iter()
                    .find(|row| row.0 == id)
                    .map(|row| (row.1, row.11.clone()))
            })
            .ok_or_else(|| ControlError::NoSuchPrompt(format!("no open prompt has id {id}")))?;
        // A program must not answer about itself: a caller inside the cgroup that made the
        // flow answers only as an administrator would.
        let inside = caller_inside(connection, &name, &prompt_cgroup).await;
        let action = if prompt_uid == uid && !inside {
            ACTION_ANSWER_OWN
        } else {
            ACTION_ANSWER_OTHER
        };
        authorize(connection, &name, action).await?;
        self.request(|reply| Command::Answer {
            id,
            allow,
            lifetime,
            scope,
            caller_uid: uid,
            caller_name: name,
            reply,
        })
        .await
    }

    /// Makes the caller the agent of its uid.
    #[zbus(name = "RegisterAgent")]
    async fn register_agent(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] connection: &zbus::Connection,
    ) -> Result<(), ControlError> {
        let name = sender_of(&header)?;
        let uid = caller_uid(connection, &name).await?;
        self.commands
            .send(Command::RegisterAgent { uid, name })
            .map_err(|_| ControlError::Failed("the daemon is stopping".to_owned()))
    }

    /// Stops the caller being the agent of its uid.
    #[zbus(name = "UnregisterAgent")]
    async fn unregister_agent(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] connection: &zbus::Connection,
    ) -> Result<(), ControlError> {
        let name = sender_of(&header)?;
        let uid = caller_uid(connection, &name).await?;
        self.commands
            .send(Command::UnregisterAgent { uid, name })
            .map_err(|_| ControlError::Failed("the daemon is stopping".to_owned()))
    }

    /// Lists the rules in force. Root sees every rule; another user sees the rules that name no
    /// user or name that user, so no user learns another user's answers.
    #[zbus(name = "ListRules")]
    async fn list_rules(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] connection: &zbus::Connection,
    ) -> Result<Vec<RuleRow>, ControlError> {
        let name = sender_of(&header)?;
        let caller_uid = caller_uid(connection, &name).await?;
        self.request(|reply| Command::ListRules { caller_uid, reply })
            .await
    }

    /// Adds a rule given as a `[[rule]]` TOML table, returns its id.
    #[zbus(name = "AddRule")]
    async fn add_rule(
        &self,
        toml: String,
        lifetime: &str,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] connection: &zbus::Connection,
    ) -> Result<String, ControlError> {
        let lifetime = match lifetime {
            "forever" => AddedLifetime::Forever,
            "until-reboot" => AddedLifetime::UntilReboot,
            "memory" => AddedLifetime::Memory,
            other => {
                return Err(ControlError::InvalidArgument(format!(
                "invalid lifetime {other:?}: expected \"forever\", \"until-reboot\" or \"memory\""
            )))
            }
        };
        let name = sender_of(&header)?;
        let uid = caller_uid(connection, &name).await?;
        authorize(connection, &name, ACTION_MANAGE_RULES).await?;
        self.request(|reply| Command::AddRule {
            toml,
            lifetime,
            caller_uid: uid,
            reply,
        })
        .await
    }

    /// Removes an answer or memory rule.
    #[zbus(name = "RemoveRule")]
    async fn remove_rule(
        &self,
        id: String,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] connection: &zbus::Connection,
    ) -> Result<(), ControlError> {
        let name = sender_of(&header)?;
        authorize(connection, &name, ACTION_MANAGE_RULES).await?;
        self.request(|reply| Command::RemoveRule { id, reply })
            .await
    }

    /// Reloads the rule files, as SIGHUP does.
    #[zbus(name = "Reload")]
    async fn reload(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] connection: &zbus::Connection,
    ) -> Result<(), ControlError> {
        let name = sender_of(&header)?;
        authorize(connection, &name, ACTION_RELOAD).await?;
        self.request(|reply| Command::Reload { reply }).await
    }

    /// Sets what `ask` rules do: "alert", "silent-allow" or "silent-deny".
    #[zbus(name = "SetMode")]
    async fn set_mode(
        &self,
        mode: String,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(connection)] connection: &zbus::Connection,
    ) -> Result<(), ControlError> {
        if !matches!(mode.as_str(), "alert" | "silent-allow" | "silent-deny") {
            return Err(ControlError::InvalidArgument(format!(
                "invalid mode {mode:?}: expected \"alert\", \"silent-allow\" or \"silent-deny\""
            )));
        }
        let name = sender_of(&header)?;
        authorize(connection, &name, ACTION_SET_MODE).await?;
        self.request(|reply| Command::SetMode { mode, reply }).await
    }

    /// Sends that a prompt was opened, to the uid's agent only.
    #[zbus(signal, name = "PromptAdded")]
    async fn prompt_added(
        emitter: &SignalEmitter<'_>,
        id: u64,
        uid: u32,
        unit: &str,
        app_id: &str,
        app_name: &str,
        exe: &str,
        sha256: &str,
        host: &str,
        address: &str,
        port: u16,
        protocol: &str,
        cgroup: &str,
        deadline_usec: u64,
    ) -> zbus::Result<()>;

    /// Sends that a prompt was closed, with its outcome, to the uid's agent only.
    #[zbus(signal, name = "PromptClosed")]
    async fn prompt_closed(emitter: &SignalEmitter<'_>, id: u64, outcome: &str)
        -> zbus::Result<()>;

    /// Sends that the rules in force changed.
    #[zbus(signal, name = "RulesChanged")]
    async fn rules_changed(emitter: &SignalEmitter<'_>) -> zbus::Result<()>;

    #[zbus(property, name = "Mode")]
    fn mode(&self) -> String {
        self.read(|status| status.mode.clone())
    }

    #[zbus(property, name = "PromptTimeoutSec")]
    fn prompt_timeout_sec(&self) -> u32 {
        self.read(|status| status.prompt_timeout_sec)
    }

    #[zbus(property, name = "OpenPrompts")]
    fn open_prompts(&self) -> u32 {
        self.read(|status| u32::try_from(status.prompts.len()).unwrap_or(u32::MAX))
    }

    #[zbus(property(emits_changed_signal = "false"), name = "Version")]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }

    #[zbus(property(emits_changed_signal = "false"), name = "FailMode")]
    fn fail_mode(&self) -> String {
        self.read(|status| status.fail_mode.clone())
    }

    #[zbus(property(emits_changed_signal = "false"), name = "AskFallback")]
    fn ask_fallback(&self) -> String {
        self.read(|status| status.ask_fallback.clone())
    }

    #[zbus(property(emits_changed_signal = "false"), name = "Degraded")]
    fn degraded(&self) -> bool {
        self.read(|status| !status.degraded_reasons.is_empty())
    }

    #[zbus(property(emits_changed_signal = "false"), name = "DegradedReasons")]
    fn degraded_reasons(&self) -> Vec<String> {
        self.read(|status| status.degraded_reasons.clone())
    }

    #[zbus(property(emits_changed_signal = "false"), name = "RuleCount")]
    fn rule_count(&self) -> u32 {
        self.read(|status| status.rule_count)
    }

    #[zbus(property(emits_changed_signal = "false"), name = "RuleFiles")]
    fn rule_files(&self) -> Vec<String> {
        self.read(|status| status.rule_files.clone())
    }

    #[zbus(property(emits_changed_signal = "false"), name = "FollowingSystemd")]
    fn following_systemd(&self) -> bool {
        self.read(|status| status.following_systemd)
    }
}

/// Serves the interface on the system bus for as long as the daemon runs. The bus may not exist
/// yet (the daemon starts before `dbus.service`), so this retries until it does, and again if
/// the bus daemon restarts. `commands` reaches the main loop, which sends `notices` back.
pub fn serve(
    status: SharedStatus,
    commands: mpsc::UnboundedSender<Command>,
    mut notices: mpsc::UnboundedReceiver<Notice>,
) {
    tokio::spawn(async move {
        let mut last_error = String::new();
        loop {
            match connect(status.clone(), commands.clone()).await {
                Ok(connection) => {
                    tracing::info!("serving {BUS_NAME} on the system bus");
                    last_error.clear();
                    let _ = commands.send(Command::Bus(true));
                    run_connection(&connection, &commands, &mut notices).await;
                    let _ = commands.send(Command::Bus(false));
                    tracing::warn!("lost the system bus; reconnecting");
                }
                Err(error) => {
                    let text = crate::error_chain(&error);
                    if text != last_error {
                        tracing::info!("the system bus is not available yet: {text}");
                        last_error = text;
                    }
                }
            }
            // Notices for the lost connection are dropped: its agents are gone with it.
            while notices.try_recv().is_ok() {}
            tokio::time::sleep(BUS_RETRY).await;
        }
    });
}

async fn connect(
    status: SharedStatus,
    commands: mpsc::UnboundedSender<Command>,
) -> zbus::Result<zbus::Connection> {
    zbus::connection::Builder::system()?
        .name(BUS_NAME)?
        .serve_at(OBJECT_PATH, Firewall { status, commands })?
        .build()
        .await
}

/// Sends the main loop's notices and reports vanished bus names until the connection drops.
async fn run_connection(
    connection: &zbus::Connection,
    commands: &mpsc::UnboundedSender<Command>,
    notices: &mut mpsc::UnboundedReceiver<Notice>,
) {
    let mut owners = match zbus::fdo::DBusProxy::new(connection).await {
        Ok(proxy) => {
            match proxy.receive_name_owner_changed().await {
                Ok(stream) => Some(stream),
                Err(error) => {
                    tracing::warn!("failed to follow NameOwnerChanged, agents that leave stay registered: {error}");
                    None
                }
            }
        }
        Err(error) => {
            tracing::warn!(
                "failed to follow NameOwnerChanged, agents that leave stay registered: {error}"
            );
            None
        }
    };
    let mut messages = zbus::MessageStream::from(connection);
    loop {
        tokio::select! {
            message = messages.next() => {
                if !matches!(message, Some(Ok(_))) {
                    return;
                }
            }
            Some(changed) = async {
                match owners.as_mut() {
                    Some(stream) => stream.next().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Ok(args) = changed.args() {
                    if args.new_owner().is_none() && args.name().starts_with(':') {
                        let _ = commands.send(Command::NameVanished(args.name().to_string()));
                    }
                }
            }
            notice = notices.recv() => {
                let Some(notice) = notice else { return };
                if let Err(error) = send_notice(connection, notice).await {
                    tracing::warn!("failed to send a D-Bus signal: {error}");
                }
            }
        }
    }
}

async fn send_notice(connection: &zbus::Connection, notice: Notice) -> zbus::Result<()> {
    let emitter = SignalEmitter::new(connection, OBJECT_PATH)?;
    match notice {
        Notice::PromptAdded {
            destination,
            prompt,
        } => {
            let emitter = emitter.set_destination(BusName::try_from(destination)?);
            Firewall::prompt_added(
                &emitter, prompt.0, prompt.1, &prompt.2, &prompt.3, &prompt.4, &prompt.5,
                &prompt.6, &prompt.7, &prompt.8, prompt.9, &prompt.10, &prompt.11, prompt.12,
            )
            .await
        }
        Notice::PromptClosed {
            destination,
            id,
            outcome,
        } => {
            let emitter = emitter.set_destination(BusName::try_from(destination)?);
            Firewall::prompt_closed(&emitter, id, &outcome).await
        }
        Notice::RulesChanged => Firewall::rules_changed(&emitter).await,
        Notice::PropertiesChanged => {
            let interface = connection
                .object_server()
                .interface::<_, Firewall>(OBJECT_PATH)
                .await?;
            let firewall = interface.get().await;
            firewall.mode_changed(interface.signal_emitter()).await?;
            firewall
                .prompt_timeout_sec_changed(interface.signal_emitter())
                .await?;
            firewall
                .open_prompts_changed(interface.signal_emitter())
                .await
        }
    }
}

/// Client side of the interface, for `slicewallctl`.
#[zbus::proxy(
    interface = "org.slicewall.Firewall1",
    default_service = "org.slicewall.Firewall1",
    default_path = "/org/slicewall/Firewall1"
)]
pub trait Firewall1 {
    #[zbus(name = "ListUnits")]
    fn list_units(&self) -> zbus::Result<Vec<UnitRow>>;

    #[zbus(property, name = "Version")]
    fn version(&self) -> zbus::Result<String>;

    #[zbus(property, name = "FailMode")]
    fn fail_mode(&self) -> zbus::Result<String>;

    #[zbus(property, name = "AskFallback")]
    fn ask_fallback(&self) -> zbus::Result<String>;

    #[zbus(property, name = "DegradedReasons")]
    fn degraded_reasons(&self) -> zbus::Result<Vec<String>>;

    #[zbus(property, name = "RuleCount")]
    fn rule_count(&self) -> zbus::Result<u32>;

    #[zbus(property, name = "RuleFiles")]
    fn rule_files(&self) -> zbus::Result<Vec<String>>;

    #[zbus(property, name = "FollowingSystemd")]
    fn following_systemd(&self) -> zbus::Result<bool>;

    /// Lists open prompts: all of them for root, the caller's own for other users.
    #[zbus(name = "ListPrompts")]
    fn list_prompts(&self) -> zbus::Result<Vec<PromptRow>>;

    /// Answers a prompt. `action` is `allow` or `deny`; `lifetime` is `once`,
    /// `until-app-quits`, `until-logout`, `until-reboot` or `forever`; `scope` is
    /// `destination`, `domain` or `any`.
    #[zbus(name = "AnswerPrompt")]
    fn answer_prompt(&self, id: u64, action: &str, lifetime: &str, scope: &str)
        -> zbus::Result<()>;

    /// Makes the caller's unique bus name the prompt agent of the caller's UID.
    #[zbus(name = "RegisterAgent")]
    fn register_agent(&self) -> zbus::Result<()>;

    #[zbus(name = "UnregisterAgent")]
    fn unregister_agent(&self) -> zbus::Result<()>;

    #[zbus(name = "ListRules")]
    fn list_rules(&self) -> zbus::Result<Vec<RuleRow>>;

    /// Adds a rule given as a `[[rule]]` TOML table; `lifetime` is `forever`, `until-reboot` or
    /// `memory`. Returns the new rule's ID.
    #[zbus(name = "AddRule")]
    fn add_rule(&self, toml: &str, lifetime: &str) -> zbus::Result<String>;

    #[zbus(name = "RemoveRule")]
    fn remove_rule(&self, id: &str) -> zbus::Result<()>;

    #[zbus(name = "Reload")]
    fn reload(&self) -> zbus::Result<()>;

    /// Sets the mode: `alert`, `silent-allow` or `silent-deny`.
    #[zbus(name = "SetMode")]
    fn set_mode(&self, mode: &str) -> zbus::Result<()>;

    #[zbus(property, name = "Mode")]
    fn mode(&self) -> zbus::Result<String>;

    #[zbus(property, name = "PromptTimeoutSec")]
    fn prompt_timeout_sec(&self) -> zbus::Result<u32>;

    #[zbus(property, name = "OpenPrompts")]
    fn open_prompts(&self) -> zbus::Result<u32>;

    /// Sent to the registered agent of `uid` (unicast) for each new prompt, and again for every
    /// open prompt when an agent registers.
    #[zbus(signal, name = "PromptAdded")]
    #[allow(clippy::too_many_arguments)]
    fn prompt_added(
        &self,
        id: u64,
        uid: u32,
        unit: &str,
        app_id: &str,
        app_name: &str,
        exe: &str,
        sha256: &str,
        host: &str,
        address: &str,
        port: u16,
        protocol: &str,
        cgroup: &str,
        deadline_usec: u64,
    ) -> zbus::Result<()>;

    /// Sent to the same agent when a prompt closes; `outcome` is `allow`, `deny`, `timeout`,
    /// `no-agent` or `gone`.
    #[zbus(signal, name = "PromptClosed")]
    fn prompt_closed(&self, id: u64, outcome: &str) -> zbus::Result<()>;

    #[zbus(signal, name = "RulesChanged")]
    fn rules_changed(&self) -> zbus::Result<()>;
}
