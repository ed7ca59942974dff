//! Following systemd: the units of the system manager and of every user manager, as they start,
//! restart and stop.
//!
//! The daemon talks to the system manager on the system bus, and to each user manager on that
//! user's bus (`/run/user/UID/bus`). Both may appear after the daemon starts (it runs before
//! `dbus.service` at boot), so the follower retries until they do.
//!
//! After `Subscribe()` a manager sends `UnitNew`, `UnitRemoved`, `JobRemoved` and
//! `PropertiesChanged` signals. Any of them makes the follower read the unit's properties again
//! and send the result to the daemon as an [`Update`]. Nothing is polled. A unit that restarts
//! keeps its name and cgroup path but gets a new cgroup directory, so its cgroup ID is read from
//! the cgroup file system on every update.
//!
//! A user's bus and everything on it is under that user's control. So the daemon connects to it
//! with the user's credentials (see [`connect_as_user`]) and takes nothing a user manager reports
//! on trust. A unit whose cgroup is invalid or not below that user's `user@UID.service` is
//! ignored, and the number of units per user is bounded. The eBPF gate never depends on these
//! reports, because it reads the cgroup of each socket from the kernel.
//!
//! systemd's private sockets (`/run/systemd/private`) would avoid the bus, but systemd marks the
//! messages it sends there with a well-known sender name, which zbus rejects.

pub mod summary;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use zbus::message::Type as MessageType;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

use crate::cgroup;
use crate::unit::{self, UnitInfo};

/// Bus name of the service managers.
const SYSTEMD_NAME: &str = "org.freedesktop.systemd1";
/// Exists when systemd is the init system (`sd_booted()`).
const SYSTEMD_RUNTIME: &str = "/run/systemd/system";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER_INTERFACE: &str = "org.freedesktop.systemd1.Manager";
const UNIT_INTERFACE: &str = "org.freedesktop.systemd1.Unit";
const PROPERTIES_INTERFACE: &str = "org.freedesktop.DBus.Properties";
/// Wait between attempts to reach a manager that is not there yet.
const RECONNECT_DELAY: Duration = Duration::from_secs(2);
/// Failed attempts to reach a running user manager after which a warning is logged. The
/// follower keeps trying while the manager runs, with delays that double up to
/// [`MAX_USER_RETRY_DELAY`].
const USER_MANAGER_ATTEMPTS: u32 = 10;
const FIRST_USER_RETRY_DELAY: Duration = Duration::from_millis(300);
const MAX_USER_RETRY_DELAY: Duration = Duration::from_secs(30);
/// Maximum number of units of a user manager that the follower tracks at all, running or not.
const MAX_KNOWN_USER_UNITS: usize = 65_536;
/// Maximum number of signals waiting to be handled. A manager, or a fake one on a user's bus,
/// that sends more is disconnected and listed again from scratch.
const MAX_QUEUED_SIGNALS: usize = 100_000;
/// Maximum number of running units reported per user manager, because a user can make a manager
/// report any number of them. Units that do not run do not count.
const MAX_USER_UNITS: usize = 4096;

/// The service manager that runs a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Manager {
    System,
    /// The manager of this user ID, `user@UID.service`.
    User(u32),
}

impl Manager {
    /// Returns `system`, or the user manager's unit name `user@UID.service`.
    pub fn name(&self) -> String {
        match self {
            Manager::System => "system".to_owned(),
            Manager::User(uid) => format!("user@{uid}.service"),
        }
    }
}

/// Facts the daemon keeps about one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitRecord {
    pub manager: Manager,
    /// Unit name, such as `nginx.service` or `app-gnome-org.gnome.Terminal-4321.scope`.
    pub name: String,
    pub description: String,
    /// `ActiveState`: active, reloading, inactive, failed, activating or deactivating.
    pub active_state: String,
    /// Position in the unit tree: cgroup path (relative to the cgroup2 mount), slice chain, the
    /// user manager above it and the application ID from the unit name.
    pub info: Arc<UnitInfo>,
    /// ID of the unit's cgroup now, or `None` while the unit has no cgroup.
    pub cgroup_id: Option<u64>,
    /// Program of the first `ExecStart=` command of a service, as systemd reports it.
    pub main_exe: Option<PathBuf>,
    /// The user the unit's processes run as: the manager's user for user units, `User=` of a
    /// system service (a name or a number), or empty for root.
    pub user: String,
}

/// A change the follower reports to the daemon.
#[derive(Debug, Clone)]
pub enum Update {
    /// A unit was loaded, or changed state or cgroup.
    Unit(UnitRecord),
    /// A unit was unloaded.
    Removed { manager: Manager, name: String },
    /// The connection to a manager is up and every unit it had then was reported.
    ManagerUp(Manager),
    /// The connection to a manager ended, with the reason. Its units are gone or unknown.
    ManagerDown { manager: Manager, reason: String },
}

/// Checks whether systemd is the init system here.
pub fn systemd_booted() -> bool {
    Path::new(SYSTEMD_RUNTIME).is_dir()
}

/// Starts following the system manager and, through it, every user manager. Updates go to
/// `updates`; the tasks end when the receiver is dropped. `cgroup_mount` is where the cgroup2
/// hierarchy is mounted, to turn cgroup paths into IDs.
pub fn follow(cgroup_mount: PathBuf, updates: mpsc::UnboundedSender<Update>) {
    let follower = Follower {
        cgroup_mount: Arc::new(cgroup_mount),
        updates,
    };
    tokio::spawn(follower.run_system());
}

#[derive(Clone)]
struct Follower {
    cgroup_mount: Arc<PathBuf>,
    updates: mpsc::UnboundedSender<Update>,
}

impl Follower {
    /// Follows the system manager for as long as the daemon runs, reconnecting when the
    /// connection ends (the bus daemon restarted, for example).
    async fn run_system(self) {
        let mut user_managers: HashMap<u32, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut last_error = String::new();
        loop {
            let result = match zbus::Connection::system().await {
                Ok(connection) => {
                    last_error.clear();
                    self.follow_manager(connection, Manager::System, None, &mut user_managers)
                        .await
                }
                Err(error) => Err(anyhow::Error::new(error).context("no system bus")),
            };
            let reason = match result {
                Ok(()) => "the system bus connection ended".to_owned(),
                Err(error) => format!("{error:#}"),
            };
            if reason != last_error {
                tracing::warn!("cannot follow the system manager: {reason}");
                last_error = reason.clone();
            }
            let down = Update::ManagerDown {
                manager: Manager::System,
                reason,
            };
            if self.updates.send(down).is_err() {
                break;
            }
            tokio::time::sleep(RECONNECT_DELAY).await;
        }
        for (_, task) in user_managers {
            task.abort();
        }
    }

    /// Follows one user manager until it goes away. `cgroup` is the cgroup path of its
    /// `user@UID.service`, as the system manager reports it. The future is boxed because
    /// following a manager can start followers of user managers, which makes the future's type
    /// recursive.
    fn run_user(
        self,
        uid: u32,
        cgroup: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move { self.follow_user(uid, cgroup).await })
    }

    async fn follow_user(&self, uid: u32, cgroup: String) {
        let manager = Manager::User(uid);
        let mut failures = 0;
        let mut delay = FIRST_USER_RETRY_DELAY;
        loop {
            let result = match connect_as_user(uid).await {
                Ok(connection) => {
                    self.follow_manager(connection, manager, Some(&cgroup), &mut HashMap::new())
                        .await
                }
                Err(error) => Err(error),
            };
            let reason = match result {
                Ok(()) => {
                    failures = 0;
                    delay = FIRST_USER_RETRY_DELAY;
                    "the connection ended".to_owned()
                }
                Err(error) => {
                    failures += 1;
                    if failures == USER_MANAGER_ATTEMPTS {
                        tracing::warn!(
                            "cannot follow the manager of user {uid}, still trying: {error:#}"
                        );
                    } else {
                        tracing::debug!("cannot reach the manager of user {uid}: {error:#}");
                    }
                    format!("{error:#}")
                }
            };
            // The manager's units are dropped until it is followed again.
            if self
                .updates
                .send(Update::ManagerDown { manager, reason })
                .is_err()
            {
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_USER_RETRY_DELAY);
        }
    }

    /// Reports every unit a manager has, then every change, until the connection ends. Returns
    /// `Ok` when the connection ended without an error. For a user manager, `user_cgroup` is the
    /// cgroup of its `user@UID.service`: units it reports elsewhere are ignored.
    async fn follow_manager(
        &self,
        connection: zbus::Connection,
        manager: Manager,
        user_cgroup: Option<&str>,
        user_managers: &mut HashMap<u32, tokio::task::JoinHandle<()>>,
    ) -> anyhow::Result<()> {
        use anyhow::Context;

        // Signals arrive on this stream from the moment it exists, so none is lost between the
        // subscription and the listing below.
        let rule = zbus::MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(SYSTEMD_NAME)?
            .build();
        let mut messages = zbus::MessageStream::for_match_rule(rule, &connection, None)
            .await
            .context("AddMatch failed")?;
        // zbus stops reading the connection while a stream's queue is full, and the calls below
        // wait for replies on the same connection. So a task of its own moves each signal into an
        // unbounded queue at once; otherwise a burst of signals during a call deadlocks both.
        // The queue is bounded by a count, and the reader stops when the count is reached, which
        // ends this follower once the queue is drained.
        let (signal_sender, mut signals) = mpsc::unbounded_channel::<zbus::Result<zbus::Message>>();
        let queued = Arc::new(AtomicUsize::new(0));
        let overflowed = Arc::new(AtomicBool::new(false));
        let _reader = AbortOnDrop(tokio::spawn({
            let queued = Arc::clone(&queued);
            let overflowed = Arc::clone(&overflowed);
            async move {
                while let Some(message) = messages.next().await {
                    if queued.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED_SIGNALS {
                        overflowed.store(true, Ordering::Relaxed);
                        break;
                    }
                    if signal_sender.send(message).is_err() {
                        break;
                    }
                }
            }
        }));
        let session = Session {
            connection,
            manager,
            user_cgroup: user_cgroup.map(|path| format!("{}/", path.trim_end_matches('/'))),
            cgroup_mount: self.cgroup_mount.clone(),
        };
        session
            .call(MANAGER_PATH, MANAGER_INTERFACE, "Subscribe", &())
            .await
            .context("Subscribe failed")?;

        let listed: Vec<ListedUnit> = session
            .call(MANAGER_PATH, MANAGER_INTERFACE, "ListUnits", &())
            .await
            .context("ListUnits failed")?
            .body()
            .deserialize()
            .context("ListUnits returned an unexpected reply")?;
        let mut units = FollowedUnits::new(manager);
        for unit in listed {
            if units.insert(&unit.0, &unit.6) {
                self.refresh(&session, &unit.6, &mut units, user_managers)
                    .await;
            }
        }
        if self.updates.send(Update::ManagerUp(manager)).is_err() {
            return Ok(());
        }

        while let Some(first) = signals.recv().await {
            // A restart sends about ten signals for one unit, and one read of its properties
            // after the burst is enough, so the signals that are already queued are taken
            // together.
            let mut batch = vec![first];
            while let Ok(message) = signals.try_recv() {
                batch.push(message);
            }
            queued.fetch_sub(batch.len(), Ordering::Relaxed);
            let mut changed: Vec<OwnedObjectPath> = Vec::new();
            for message in batch {
                let message = message.context("failed to read from the manager")?;
                let path = match ManagerSignal::parse(&message) {
                    Some(ManagerSignal::UnitNew { name, path }) if units.insert(&name, &path) => {
                        path
                    }
                    Some(ManagerSignal::UnitRemoved { name, path }) => {
                        if units.remove(&path) {
                            self.removed(manager, name, user_managers);
                        }
                        continue;
                    }
                    Some(ManagerSignal::JobRemoved { name }) => match units.path_of(&name) {
                        Some(path) => path.clone(),
                        None => continue,
                    },
                    Some(ManagerSignal::PropertiesChanged { path }) if units.contains(&path) => {
                        path
                    }
                    _ => continue,
                };
                if !changed.contains(&path) {
                    changed.push(path);
                }
            }
            for path in changed {
                // A unit removed later in the same batch is not read again.
                if units.contains(&path) {
                    self.refresh(&session, &path, &mut units, user_managers)
                        .await;
                }
            }
            if self.updates.is_closed() {
                return Ok(());
            }
        }
        if overflowed.load(Ordering::Relaxed) {
            anyhow::bail!(
                "{} sent more than {MAX_QUEUED_SIGNALS} signals faster than they were handled",
                manager.name()
            );
        }
        Ok(())
    }

    /// Reads a unit's properties and reports them. A unit that vanished in between is left to
    /// its `UnitRemoved` signal.
    async fn refresh(
        &self,
        session: &Session,
        path: &OwnedObjectPath,
        units: &mut FollowedUnits,
        user_managers: &mut HashMap<u32, tokio::task::JoinHandle<()>>,
    ) {
        let record = match session.read_unit(path).await {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(error) => {
                tracing::debug!("failed to read unit {}: {error:#}", path.as_str());
                return;
            }
        };
        match units.admit(path, record.cgroup_id.is_some()) {
            Admission::Report => {}
            Admission::Withdraw => {
                let _ = self.updates.send(Update::Removed {
                    manager: record.manager,
                    name: record.name,
                });
                return;
            }
            Admission::Skip => return,
        }
        if record.manager == Manager::System {
            if let Some(uid) = user_manager_uid(&record.name) {
                let running = matches!(record.active_state.as_str(), "active" | "reloading");
                let cgroup = record.info.cgroup_path.clone();
                match (running && !cgroup.is_empty(), user_managers.get(&uid)) {
                    (true, Some(task)) if !task.is_finished() => {}
                    (true, _) => {
                        let task = tokio::spawn(self.clone().run_user(uid, cgroup));
                        user_managers.insert(uid, task);
                    }
                    // A follower retries for as long as its manager runs, and no longer.
                    (false, Some(_)) => self.stop_user_follower(uid, &record.name, user_managers),
                    (false, None) => {}
                }
            }
        }
        let _ = self.updates.send(Update::Unit(record));
    }

    fn removed(
        &self,
        manager: Manager,
        name: String,
        user_managers: &mut HashMap<u32, tokio::task::JoinHandle<()>>,
    ) {
        if manager == Manager::System {
            if let Some(uid) = user_manager_uid(&name) {
                self.stop_user_follower(uid, &name, user_managers);
            }
        }
        let _ = self.updates.send(Update::Removed { manager, name });
    }

    fn stop_user_follower(
        &self,
        uid: u32,
        unit: &str,
        user_managers: &mut HashMap<u32, tokio::task::JoinHandle<()>>,
    ) {
        if let Some(task) = user_managers.remove(&uid) {
            task.abort();
            let _ = self.updates.send(Update::ManagerDown {
                manager: Manager::User(uid),
                reason: format!("{unit} stopped"),
            });
        }
    }
}

/// Aborts a task when dropped, so a follower's reader task ends with the follower.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One entry of `ListUnits()`: name, description, load state, active state, sub state,
/// following, object path, job ID, job type, job path.
type ListedUnit = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

/// One entry of a service's `ExecStart`: path, argv, ignore failure, then timestamps and status.
type ExecCommand = (String, Vec<String>, bool, u64, u64, u64, u64, u32, i32, i32);

struct Session {
    connection: zbus::Connection,
    manager: Manager,
    /// For a user manager, the cgroup path of its `user@UID.service` with a trailing '/'.
    user_cgroup: Option<String>,
    cgroup_mount: Arc<PathBuf>,
}

impl Session {
    async fn call<B>(
        &self,
        path: &str,
        interface: &str,
        method: &str,
        body: &B,
    ) -> zbus::Result<zbus::Message>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        self.connection
            .call_method(Some(SYSTEMD_NAME), path, Some(interface), method, body)
            .await
    }

    async fn properties(
        &self,
        path: &OwnedObjectPath,
        interface: &str,
    ) -> anyhow::Result<HashMap<String, OwnedValue>> {
        let reply = self
            .call(path.as_str(), PROPERTIES_INTERFACE, "GetAll", &(interface,))
            .await?;
        Ok(reply.body().deserialize()?)
    }

    /// Checks a unit's cgroup path as the manager reports it: a valid path, and for a user
    /// manager one below its own cgroup. Logs a warning and returns false otherwise.
    fn accepts_cgroup(&self, name: &str, control_group: &str) -> bool {
        if let Err(reason) = cgroup::check_relative_path(control_group) {
            tracing::warn!(
                unit = %name,
                "ignoring a unit that {} reports with an invalid cgroup: {reason}",
                self.manager.name()
            );
            return false;
        }
        if let Some(prefix) = &self.user_cgroup {
            if !control_group.starts_with(prefix.as_str()) {
                tracing::warn!(
                    unit = %name,
                    cgroup = %control_group,
                    "ignoring a unit that {} reports outside its own cgroup",
                    self.manager.name()
                );
                return false;
            }
        }
        true
    }

    /// Reads one unit, or `None` for a unit type the daemon does not follow.
    async fn read_unit(&self, path: &OwnedObjectPath) -> anyhow::Result<Option<UnitRecord>> {
        let common = self.properties(path, UNIT_INTERFACE).await?;
        let name = string_property(&common, "Id");
        let Some(interface) = type_interface(&name) else {
            return Ok(None);
        };
        let specific = self.properties(path, interface).await?;
        let control_group = string_property(&specific, "ControlGroup");
        if !control_group.is_empty() && !self.accepts_cgroup(&name, &control_group) {
            return Ok(None);
        }

        let info = unit_info(&name, &control_group, self.manager);
        let cgroup_id = if control_group.is_empty() {
            None
        } else {
            cgroup::cgroup_id(
                &self
                    .cgroup_mount
                    .join(control_group.trim_start_matches('/')),
            )
            .ok()
        };

        let main_exe = specific
            .get("ExecStart")
            .and_then(|value| Vec::<ExecCommand>::try_from(value.try_clone().ok()?).ok())
            .and_then(|commands| commands.into_iter().next())
            .map(|command| PathBuf::from(command.0));
        let user = match self.manager {
            Manager::System => string_property(&specific, "User"),
            Manager::User(uid) => uid.to_string(),
        };

        Ok(Some(UnitRecord {
            manager: self.manager,
            name,
            description: string_property(&common, "Description"),
            active_state: string_property(&common, "ActiveState"),
            info: Arc::new(info),
            cgroup_id,
            main_exe,
            user,
        }))
    }
}

/// The units of one manager that a follower reads, by object path and by name, and which of
/// them run.
struct FollowedUnits {
    manager: Manager,
    by_path: HashMap<OwnedObjectPath, String>,
    by_name: HashMap<String, OwnedObjectPath>,
    /// Units reported to the daemon as running. Only these count against [`MAX_USER_UNITS`].
    running: HashSet<OwnedObjectPath>,
    /// Set once a limit of a user manager was reached, so it is logged once.
    full: bool,
}

/// What the follower does with a unit it has just read.
#[derive(Debug, PartialEq, Eq)]
enum Admission {
    /// Report the unit's state.
    Report,
    /// Report that the unit is gone: a user unit that stopped running.
    Withdraw,
    /// Report nothing.
    Skip,
}

impl FollowedUnits {
    fn new(manager: Manager) -> Self {
        FollowedUnits {
            manager,
            by_path: HashMap::new(),
            by_name: HashMap::new(),
            running: HashSet::new(),
            full: false,
        }
    }

    /// Adds a unit of a followed type. Returns false for another type, and for a new unit of a
    /// user manager that already has [`MAX_KNOWN_USER_UNITS`].
    fn insert(&mut self, name: &str, path: &OwnedObjectPath) -> bool {
        if !is_followed(name) {
            return false;
        }
        let limited = self.manager != Manager::System && self.by_path.len() >= MAX_KNOWN_USER_UNITS;
        if limited && !self.by_path.contains_key(path) {
            self.report_full(MAX_KNOWN_USER_UNITS);
            return false;
        }
        self.by_path.insert(path.clone(), name.to_owned());
        self.by_name.insert(name.to_owned(), path.clone());
        true
    }

    /// Decides whether a unit just read is reported. Every unit of the system manager is. Of a
    /// user manager, only running units are, at most [`MAX_USER_UNITS`] of them, so a user's
    /// failed and stopped units cannot crowd out the running ones.
    fn admit(&mut self, path: &OwnedObjectPath, running: bool) -> Admission {
        if self.manager == Manager::System {
            return Admission::Report;
        }
        if !running {
            return if self.running.remove(path) {
                Admission::Withdraw
            } else {
                Admission::Skip
            };
        }
        if self.running.contains(path) || self.running.len() < MAX_USER_UNITS {
            self.running.insert(path.clone());
            return Admission::Report;
        }
        self.report_full(MAX_USER_UNITS);
        Admission::Skip
    }

    /// Forgets a unit. Returns false when it was not followed.
    fn remove(&mut self, path: &OwnedObjectPath) -> bool {
        let Some(name) = self.by_path.remove(path) else {
            return false;
        };
        self.by_name.remove(&name);
        self.running.remove(path);
        true
    }

    fn contains(&self, path: &OwnedObjectPath) -> bool {
        self.by_path.contains_key(path)
    }

    fn path_of(&self, name: &str) -> Option<&OwnedObjectPath> {
        self.by_name.get(name)
    }

    fn report_full(&mut self, limit: usize) {
        if !self.full {
            self.full = true;
            tracing::warn!(
                "{} reports more than {limit} units; not following the others",
                self.manager.name()
            );
        }
    }
}

/// A signal of a service manager that can change what the daemon stores about a unit.
enum ManagerSignal {
    UnitNew {
        name: String,
        path: OwnedObjectPath,
    },
    UnitRemoved {
        name: String,
        path: OwnedObjectPath,
    },
    /// A job of the unit finished: it started, stopped or restarted.
    JobRemoved {
        name: String,
    },
    /// Properties of the unit at this object path changed.
    PropertiesChanged {
        path: OwnedObjectPath,
    },
}

impl ManagerSignal {
    /// Parses a signal, or returns `None` for any other message and for a malformed body.
    fn parse(message: &zbus::Message) -> Option<ManagerSignal> {
        if message.message_type() != MessageType::Signal {
            return None;
        }
        let header = message.header();
        let body = message.body();
        match header.member()?.as_str() {
            "UnitNew" => {
                let (name, path) = body.deserialize::<(String, OwnedObjectPath)>().ok()?;
                Some(ManagerSignal::UnitNew { name, path })
            }
            "UnitRemoved" => {
                let (name, path) = body.deserialize::<(String, OwnedObjectPath)>().ok()?;
                Some(ManagerSignal::UnitRemoved { name, path })
            }
            "JobRemoved" => {
                let (_, _, name, _) = body
                    .deserialize::<(u32, OwnedObjectPath, String, String)>()
                    .ok()?;
                Some(ManagerSignal::JobRemoved { name })
            }
            "PropertiesChanged" => Some(ManagerSignal::PropertiesChanged {
                path: OwnedObjectPath::from(header.path()?.to_owned()),
            }),
            _ => None,
        }
    }
}

/// Connects to the bus of user `uid` with that user's credentials.
///
/// The user owns the socket path and may point it anywhere, or run any bus behind it. Connecting
/// as the user means the daemon reaches no more than the user could.
async fn connect_as_user(uid: u32) -> anyhow::Result<zbus::Connection> {
    use anyhow::Context;

    let path = PathBuf::from(format!("/run/user/{uid}/bus"));
    let gid = primary_gid(uid)?;
    let socket_path = path.clone();
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = sender.send(connect_stream_as(uid, gid, &socket_path));
    });
    let stream = receiver
        .await
        .context("the connecting thread ended without a result")?
        .with_context(|| format!("failed to connect to {} as user {uid}", path.display()))?;
    stream.set_nonblocking(true)?;
    let stream = tokio::net::UnixStream::from_std(stream)?;
    zbus::connection::Builder::unix_stream(stream)
        .user_id(uid)
        .build()
        .await
        .with_context(|| format!("failed to open a D-Bus connection on {}", path.display()))
}

/// Returns the primary group of user `uid` from the user database.
fn primary_gid(uid: u32) -> anyhow::Result<u32> {
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain data that getpwuid_r fills in.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call, and the buffer length is its real length.
    let error = unsafe {
        libc::getpwuid_r(
            uid,
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if error != 0 {
        let error = std::io::Error::from_raw_os_error(error);
        anyhow::bail!("failed to look up user {uid}: {error}");
    }
    if found.is_null() {
        anyhow::bail!("user {uid} is not in the user database");
    }
    Ok(entry.pw_gid)
}

/// Connects to the socket at `path` with the effective UID `uid`, the effective GID `gid` and no
/// supplementary groups, and ends the calling thread's root privileges, so it must run on a
/// short-lived thread of its own.
///
/// The raw system calls change the calling thread only, unlike the C library's wrappers, which
/// change every thread of the process. So the daemon's other threads stay root. The groups go
/// first, because setting a non-zero effective UID clears the capability that changing them needs.
fn connect_stream_as(
    uid: u32,
    gid: u32,
    path: &Path,
) -> std::io::Result<std::os::unix::net::UnixStream> {
    let check = |result: libc::c_long| {
        if result == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: setgroups with a count of 0 reads no memory. setresgid and setresuid take three
    // integers, where -1 leaves the real and saved IDs (root) as they are.
    unsafe {
        check(libc::syscall(
            libc::SYS_setgroups,
            0 as libc::c_long,
            std::ptr::null::<libc::gid_t>(),
        ))?;
        check(libc::syscall(
            libc::SYS_setresgid,
            -1 as libc::c_long,
            libc::c_long::from(gid),
            -1 as libc::c_long,
        ))?;
        check(libc::syscall(
            libc::SYS_setresuid,
            -1 as libc::c_long,
            libc::c_long::from(uid),
            -1 as libc::c_long,
        ))?;
    }
    std::os::unix::net::UnixStream::connect(path)
}

/// Checks whether a unit is of a type whose processes make connections.
fn is_followed(name: &str) -> bool {
    type_interface(name).is_some()
}

fn type_interface(name: &str) -> Option<&'static str> {
    if name.ends_with(".service") {
        Some("org.freedesktop.systemd1.Service")
    } else if name.ends_with(".scope") {
        Some("org.freedesktop.systemd1.Scope")
    } else {
        None
    }
}

fn string_property(properties: &HashMap<String, OwnedValue>, name: &str) -> String {
    properties
        .get(name)
        .and_then(|value| String::try_from(value.try_clone().ok()?).ok())
        .unwrap_or_default()
}

/// Returns the UID of a user manager's unit name, `user@UID.service`.
fn user_manager_uid(name: &str) -> Option<u32> {
    name.strip_prefix("user@")?
        .strip_suffix(".service")?
        .parse()
        .ok()
}

/// Describes a unit from its name and cgroup path. A unit without a cgroup (inactive) still
/// gets its name, slice-less, and its application ID.
fn unit_info(name: &str, control_group: &str, manager: Manager) -> UnitInfo {
    if !control_group.is_empty() {
        let info = unit::parse_cgroup_path(control_group);
        if info.unit.as_deref() == Some(name) {
            return info;
        }
    }
    UnitInfo {
        cgroup_path: control_group.to_owned(),
        unit: Some(name.to_owned()),
        slices: Vec::new(),
        user_manager: match manager {
            Manager::System => None,
            Manager::User(_) => Some(manager.name()),
        },
        app_id: unit::app_id_from_unit(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_manager_names() {
        assert_eq!(user_manager_uid("user@1000.service"), Some(1000));
        assert_eq!(user_manager_uid("user@0.service"), Some(0));
        assert_eq!(user_manager_uid("user@.service"), None);
        assert_eq!(user_manager_uid("user@x.service"), None);
        assert_eq!(user_manager_uid("user-1000.slice"), None);
        assert_eq!(user_manager_uid("user@1000.scope"), None);
    }

    fn object_path(index: usize) -> OwnedObjectPath {
        OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/unit/u{index}")).unwrap()
    }

    #[test]
    fn followed_units_by_path_and_name() {
        let mut units = FollowedUnits::new(Manager::System);
        assert!(units.insert("web.service", &object_path(1)));
        assert!(!units.insert("web.socket", &object_path(2)));
        assert_eq!(units.path_of("web.service"), Some(&object_path(1)));
        assert!(units.contains(&object_path(1)));
        assert!(!units.contains(&object_path(2)));

        assert!(units.remove(&object_path(1)));
        assert!(!units.remove(&object_path(1)));
        assert_eq!(units.path_of("web.service"), None);
    }

    #[test]
    fn user_manager_units_are_bounded() {
        let mut units = FollowedUnits::new(Manager::User(1000));
        for index in 0..MAX_KNOWN_USER_UNITS {
            assert!(units.insert(&format!("app-{index}.scope"), &object_path(index)));
        }
        let more = object_path(MAX_KNOWN_USER_UNITS);
        assert!(!units.insert("one-more.scope", &more));
        assert!(units.full);
        // A unit already followed still gets its updates.
        assert!(units.insert("app-0.scope", &object_path(0)));

        let mut system = FollowedUnits::new(Manager::System);
        for index in 0..=MAX_KNOWN_USER_UNITS {
            assert!(system.insert(&format!("svc-{index}.service"), &object_path(index)));
        }
    }

    #[test]
    fn only_running_user_units_are_reported() {
        let mut units = FollowedUnits::new(Manager::User(1000));
        // Stopped and failed units neither count nor get reported.
        for index in 0..10 {
            assert_eq!(units.admit(&object_path(index), false), Admission::Skip);
        }
        for index in 0..MAX_USER_UNITS {
            assert_eq!(units.admit(&object_path(index), true), Admission::Report);
        }
        let extra = object_path(MAX_USER_UNITS);
        assert_eq!(units.admit(&extra, true), Admission::Skip);

        // A running unit that stops is withdrawn and makes room for another.
        assert_eq!(units.admit(&object_path(0), false), Admission::Withdraw);
        assert_eq!(units.admit(&object_path(0), false), Admission::Skip);
        assert_eq!(units.admit(&extra, true), Admission::Report);

        let mut system = FollowedUnits::new(Manager::System);
        assert_eq!(system.admit(&object_path(1), false), Admission::Report);
    }

    #[test]
    fn followed_types() {
        assert!(is_followed("nginx.service"));
        assert!(is_followed("app-gnome-org.gnome.Terminal-42.scope"));
        assert!(!is_followed("user.slice"));
        assert!(!is_followed("dbus.socket"));
        assert!(!is_followed("-.mount"));
    }

    #[test]
    fn unit_info_prefers_the_cgroup_path() {
        let info = unit_info(
            "app-gnome-org.gnome.Terminal-42.scope",
            "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-org.gnome.Terminal-42.scope",
            Manager::User(1000),
        );
        assert_eq!(info.slices, ["user.slice", "user-1000.slice", "app.slice"]);
        assert_eq!(info.user_manager.as_deref(), Some("user@1000.service"));
        assert_eq!(info.app_id.as_deref(), Some("org.gnome.Terminal"));
    }

    #[test]
    fn unit_info_without_cgroup_keeps_the_name() {
        let info = unit_info(
            "app-gnome-org.gnome.Terminal-42.scope",
            "",
            Manager::User(1000),
        );
        assert_eq!(
            info.unit.as_deref(),
            Some("app-gnome-org.gnome.Terminal-42.scope")
        );
        assert_eq!(info.user_manager.as_deref(), Some("user@1000.service"));
        assert_eq!(info.app_id.as_deref(), Some("org.gnome.Terminal"));
        assert!(info.slices.is_empty());
    }

    /// A socket in a directory that only root's group may enter is out of the user's reach, so
    /// the daemon must not reach it on the user's behalf either.
    #[test]
    fn connect_as_user_drops_root_groups() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipping: needs root to change the thread's user and groups");
            return;
        }
        use std::os::unix::fs::PermissionsExt;

        let directory = tempfile::tempdir().unwrap();
        let group_only = directory.path().join("root-group-only");
        std::fs::create_dir(&group_only).unwrap();
        std::fs::set_permissions(&group_only, std::fs::Permissions::from_mode(0o750)).unwrap();
        let socket = group_only.join("bus");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::set_permissions(directory.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

        let connect = |gid: u32| {
            let socket = socket.clone();
            std::thread::spawn(move || connect_stream_as(65534, gid, &socket))
                .join()
                .unwrap()
        };
        let error = connect(65534).expect_err("connected through a directory of group root");
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::PermissionDenied,
            "{error}"
        );
        // The test's own thread is still root and still reaches the socket.
        std::os::unix::net::UnixStream::connect(&socket).unwrap();
    }
}
