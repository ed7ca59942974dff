//! The nftables layer: table `inet slicewall`, which cuts the established connections of units
//! that get a unit-wide deny and counts bytes and packets per unit.
//!
//! The eBPF gate decides each new flow when it starts. It cannot take back a connection that it
//! allowed before a unit was denied, and it keeps no traffic counts. Both jobs fall to this
//! table, which the daemon owns alone: it is created, replaced and deleted here, and no other
//! table is touched, nor is the rule set ever flushed.
//!
//! # Identity: sets of cgroup IDs at a level
//!
//! Both layers name a unit by the cgroup v2 ID of the socket's cgroup. nft matches it with
//! `socket cgroupv2 level N`, which takes the socket's cgroup, walks up to its ancestor at depth N
//! below the cgroup2 root and yields that ancestor's ID. A socket of
//! `/system.slice/foo.service/sub` therefore matches `foo.service` at level 2 and
//! `system.slice` at level 1. nft turns a cgroup path into an ID once, when it loads a rule, and
//! a unit's cgroup gets a new ID each time the unit restarts. So, like systemd's `NFTSet=`, the
//! rules here never name a cgroup. They look the ID up in sets of type `cgroupsv2`, and only the
//! set contents follow the units:
//!
//! - `deny`: cgroups whose sockets are cut;
//! - `tx` and `rx`: every unit's cgroup, with a counter per element, updated by the output and
//!   the input chain.
//!
//! Each chain gets three rules per level that occurs among the units, so a socket is compared
//! with its ancestor at each of those levels. An ID sits at one depth only, so one set serves all
//! levels. A socket below both a denied slice and a counted service is cut by the slice and
//! counted for both.
//!
//! # Cutting: reset for TCP, drop for the rest
//!
//! A TCP packet of a denied socket is rejected with a TCP reset. In the output chain the reset
//! goes to the local socket, whose next `send()` or `recv()` then fails with `ECONNRESET` at once
//! instead of after minutes of retransmits. In the input chain it goes to the peer. Reset packets
//! themselves pass, or the reset sent to a local socket would be dropped on its way in. Other
//! protocols have no such signal, so their packets are dropped.
//!
//! Both base chains hook at priority `filter - 10` (-10). They run after conntrack (-200),
//! mangle (-150) and destination NAT (-100), and before the usual filter chains at priority 0.
//! A drop in any base chain is final, so running first does not let another table's accept
//! override a deny. It does mean a denied TCP socket is reset even when a later table would have
//! dropped the packet silently, and the counters include packets that a later table drops.
//!
//! # Which cgroup a socket belongs to
//!
//! The kernel records a socket's cgroup when the socket is created (`sk_cgrp_data`), and that is
//! what `socket cgroupv2` reads. The eBPF gate's `sock_create` record uses the same cgroup. A
//! process that creates a socket in unit A and then moves to unit B keeps being judged and
//! counted as A for that socket. Its new sockets belong to B. The test "moved process judged by
//! creation cgroup" in `tests/nft.rs` checks this.
//!
//! # What nft 1.0.6 and the `nftables` crate can express
//!
//! nft 1.0.6 accepts `cgroupsv2` set elements only as paths, relative to `/sys/fs/cgroup`: a
//! number is read as a path as well, in JSON input too. Hence each [`NftUnit`] carries its path
//! next to its ID. The path is checked against the ID right before each transaction, and a unit
//! whose cgroup is gone or was replaced is left out and reported in [`Applied::skipped`]. nft
//! prints elements back as paths, or as the bare ID when no cgroup has that ID any more, and
//! [`Nft::counters`] maps both forms back to IDs.
//!
//! To print an element as a path, nft 1.0.6 walks the whole tree below `/sys/fs/cgroup` once per
//! element: listing 1,000 elements took 84 s on a hybrid layout. So listings run nft in a private
//! mount namespace with an empty tmpfs over `/sys/fs/cgroup`, where every element prints as its
//! ID. Where creating that namespace is not allowed (for example under
//! `RestrictNamespaces=net`), the listing falls back to the slow walk.
//!
//! The JSON parser of nft 1.0.6 rejects the `socket cgroupv2` expression ("Invalid socket key
//! value"), and the schema of the `nftables` crate 0.6 has no `level` and no `cgroupsv2` set
//! type. nft 1.0.6 given `-j` and a text script exits 0 without applying anything. So every
//! transaction that creates rules ([`Nft::install`], and [`Nft::sync`] when the levels change)
//! is an nft text script. Transactions that only change set elements, deletions and listings
//! are built with the crate's typed schema and passed as JSON. Both kinds run through
//! [`Nft::run`] rather than the crate's helpers, because the helpers of `nftables` 0.6.3 do not
//! capture nft's standard error, which [`NftError::Failed`] reports.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nftables::batch::Batch;
use nftables::expr::Expression;
use nftables::schema::{Element, NfCmd, NfListObject, Table};
use nftables::types::NfFamily;

/// Family and name of the one table this module manages.
pub const TABLE: &str = "slicewall";

/// The directory below which nft resolves `socket cgroupv2` paths (`SYSFS_CGROUPSV2_PATH` in the
/// nftables sources).
const NFT_CGROUP_BASE: &str = "/sys/fs/cgroup";

/// Priority of both base chains, see the module documentation.
const CHAIN_PRIORITY: &str = "filter - 10";

/// Set names. `deny` has no counters. `tx` and `rx` have one counter per element.
const DENY_SET: &str = "deny";
const TX_SET: &str = "tx";
const RX_SET: &str = "rx";

/// Rules per level in each chain: TCP reset, drop for other protocols, counter lookup.
const RULES_PER_LEVEL: usize = 3;

/// Elements of gone cgroups that the sets may keep before [`Nft::sync`] rebuilds the table.
/// nft 1.0.6 deletes elements by path only, so a gone cgroup's element cannot be deleted.
const STALE_ELEMENTS_LIMIT: usize = 1024;

/// A unit in the terms of the nftables layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftUnit {
    /// The cgroup v2 ID of the unit's cgroup.
    pub cgroup_id: u64,
    /// Path of the cgroup relative to the root of the cgroup2 mount, such as
    /// `/system.slice/foo.service`, as `/proc/PID/cgroup` shows it.
    pub path: String,
    /// Depth of the cgroup below the root of the hierarchy, at least 1. It equals the number of
    /// components of `path`. Inside a cgroup namespace nft counts levels from the namespace's
    /// root too (checked on kernel 6.18 in a systemd-nspawn container), so the path in this
    /// process's cgroup namespace gives the level.
    pub level: u8,
    /// Whether the unit's sockets are cut.
    pub deny: bool,
}

/// Traffic of one unit since its cgroup was added to the sets. A counter starts from zero again
/// when [`Nft::install`] recreates the table, which [`Nft::sync`] also does when too many
/// elements of gone cgroups have piled up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets sent by the unit's sockets (output chain).
    pub tx_packets: u64,
    /// Bytes sent, IP headers included.
    pub tx_bytes: u64,
    /// Packets received by the unit's sockets (input chain).
    pub rx_packets: u64,
    /// Bytes received, IP headers included.
    pub rx_bytes: u64,
}

/// A unit that [`Nft::install`] or [`Nft::sync`] left out of the sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub cgroup_id: u64,
    pub path: String,
    /// Reason, such as "the cgroup at this path now has ID 41027".
    pub reason: String,
}

/// Outcome of a successful [`Nft::install`] or [`Nft::sync`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct Applied {
    /// Units left out because their cgroup is gone or now has another ID. The caller should
    /// drop them or pass their current ID.
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("failed to run {program:?}")]
    Spawn {
        program: OsString,
        #[source]
        source: std::io::Error,
    },
    #[error("nft failed to {action}: {stderr}")]
    Failed { action: String, stderr: String },
    #[error("invalid unit at index {index} (cgroup ID {cgroup_id}): {reason}")]
    InvalidUnit {
        index: usize,
        cgroup_id: u64,
        reason: String,
    },
    #[error(
        "the cgroup2 mount {mount} is not below {NFT_CGROUP_BASE}, where nft resolves cgroup paths"
    )]
    MountOutsideBase { mount: PathBuf },
    #[error("no cgroup v2 mount")]
    NoCgroupMount(#[source] crate::cgroup::CgroupError),
    #[error("unexpected output of nft while trying to {action}: {reason}")]
    Output { action: String, reason: String },
}

/// Set membership of one unit, as last applied.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// Path relative to the cgroup2 root, without the leading slash.
    path: String,
    /// Path as nft names it, relative to `/sys/fs/cgroup`.
    nft_path: String,
    level: u8,
    deny: bool,
}

/// The state this module last applied to the kernel.
#[derive(Debug, Clone, Default)]
struct Synced {
    entries: BTreeMap<u64, Entry>,
    levels: BTreeSet<u8>,
    /// IDs of gone cgroups whose elements stay in the sets, with their `deny` membership.
    stale: BTreeMap<u64, bool>,
}

/// The nft program and the state of table `inet slicewall`.
#[derive(Debug)]
pub struct Nft {
    program: OsString,
    args: Vec<OsString>,
    /// The cgroup2 mount in this process's mount namespace, used to check each unit's ID.
    mount: Result<PathBuf, String>,
    /// Path of the cgroup2 root as nft sees it, relative to `/sys/fs/cgroup` ("" when the
    /// hierarchy is mounted there, "unified" on a hybrid layout).
    nft_root: Option<String>,
    synced: Option<Synced>,
    transactions: u64,
}

impl Default for Nft {
    fn default() -> Self {
        Self::new()
    }
}

impl Nft {
    /// Uses the program `nft` from `PATH` and the cgroup2 mount of this process.
    pub fn new() -> Self {
        let mount = crate::cgroup::find_cgroup2_mount().map_err(|error| crate::error_chain(&error));
        Nft {
            program: "nft".into(),
            args: Vec::new(),
            mount,
            nft_root: None,
            synced: None,
            transactions: 0,
        }
    }

    /// Runs `program` with `args` in front of nft's own arguments, such as
    /// `nsenter --net=/run/netns/NAME nft`. The program must accept nft's arguments after them.
    pub fn with_command<I, S>(mut self, program: impl Into<OsString>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.program = program.into();
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the cgroup2 mount of this process and where nft sees the same hierarchy, relative to
    /// `/sys/fs/cgroup`. Needed when nft runs in another mount namespace.
    pub fn with_cgroup_mount(mut self, mount: PathBuf, nft_root: &str) -> Self {
        self.mount = Ok(mount);
        self.nft_root = Some(nft_root.trim_matches('/').to_owned());
        self
    }

    /// Number of nft transactions that changed the table so far.
    pub fn transactions(&self) -> u64 {
        self.transactions
    }

    /// Creates table `inet slicewall` with its sets, chains, rules and the elements for `units`
    /// in one transaction. An old table of that name is replaced in the same transaction.
    pub fn install(&mut self, units: &[NftUnit]) -> Result<Applied, NftError> {
        let (desired, skipped) = self.resolve(units)?;
        let mut script = String::new();
        // Adding first makes the delete succeed when no old table exists.
        writeln!(script, "add table inet {TABLE}").unwrap();
        writeln!(script, "delete table inet {TABLE}").unwrap();
        writeln!(script, "add table inet {TABLE}").unwrap();
        writeln!(
            script,
            "add set inet {TABLE} {DENY_SET} {{ type cgroupsv2; }}"
        )
        .unwrap();
        for set in [TX_SET, RX_SET] {
            writeln!(
                script,
                "add set inet {TABLE} {set} {{ type cgroupsv2; counter; }}"
            )
            .unwrap();
        }
        for hook in ["output", "input"] {
            writeln!(
                script,
                "add chain inet {TABLE} {hook} {{ type filter hook {hook} priority {CHAIN_PRIORITY}; policy accept; }}"
            )
            .unwrap();
        }
        let levels = levels_of(&desired);
        write_rules(&mut script, &levels);
        let adds: Vec<(u64, &Entry)> = desired.iter().map(|(id, entry)| (*id, entry)).collect();
        write_elements(&mut script, "add", &adds);

        self.run_script(&script, "create table inet slicewall")?;
        self.synced = Some(Synced {
            entries: desired,
            levels,
            stale: BTreeMap::new(),
        });
        Ok(Applied { skipped })
    }

    /// Makes the set contents, and the rules if the levels changed, match `units` in one
    /// transaction. Runs no transaction when nothing changed. Installs the table when this
    /// `Nft` has not installed it yet.
    pub fn sync(&mut self, units: &[NftUnit]) -> Result<Applied, NftError> {
        let Some(synced) = &self.synced else {
            return self.install(units);
        };
        if unchanged(synced, units) {
            return Ok(Applied::default());
        }
        match self.try_sync(units) {
            // A cgroup may vanish between the check of its ID and the transaction. The check
            // then finds it gone on the second try.
            Err(NftError::Failed { stderr, .. }) if stderr.contains("cgroupv2 path fails") => {
                self.try_sync(units)
            }
            result => result,
        }
    }

    fn try_sync(&mut self, units: &[NftUnit]) -> Result<Applied, NftError> {
        let (desired, skipped) = self.resolve(units)?;
        let synced = self.synced.clone().unwrap_or_default();

        let mut removed: Vec<(u64, Entry)> = Vec::new();
        let mut stale = synced.stale.clone();
        for (id, entry) in &synced.entries {
            if desired
                .get(id)
                .is_some_and(|new| new.nft_path == entry.nft_path)
            {
                continue;
            }
            if self.still_names(entry, *id) {
                removed.push((*id, entry.clone()));
            } else {
                stale.insert(*id, entry.deny);
            }
        }
        if stale.len() > STALE_ELEMENTS_LIMIT {
            // NOTE: rebuilding resets the counters of every unit, because nft 1.0.6 neither
            // deletes elements of gone cgroups nor takes initial counter values for elements
            // given in JSON.
            return self.install(units);
        }

        let mut add_counted = Vec::new();
        let mut add_deny = Vec::new();
        let mut delete_counted = Vec::new();
        let mut delete_deny = Vec::new();
        for (id, entry) in &removed {
            delete_counted.push((*id, entry));
            if entry.deny {
                delete_deny.push((*id, entry));
            }
        }
        for (id, entry) in &desired {
            match synced.entries.get(id) {
                Some(old) if old.nft_path == entry.nft_path => {
                    if entry.deny && !old.deny {
                        add_deny.push((*id, entry));
                    } else if !entry.deny && old.deny {
                        delete_deny.push((*id, entry));
                    }
                }
                _ => {
                    add_counted.push((*id, entry));
                    if entry.deny {
                        add_deny.push((*id, entry));
                    }
                }
            }
        }

        let levels = levels_of(&desired);
        let nothing_to_do = add_counted.is_empty()
            && add_deny.is_empty()
            && delete_counted.is_empty()
            && delete_deny.is_empty()
            && levels == synced.levels;
        if !nothing_to_do {
            if levels != synced.levels {
                let mut script = String::new();
                writeln!(script, "flush chain inet {TABLE} output").unwrap();
                writeln!(script, "flush chain inet {TABLE} input").unwrap();
                write_rules(&mut script, &levels);
                write_set_elements(&mut script, "delete", DENY_SET, &delete_deny);
                write_elements(&mut script, "delete", &delete_counted);
                write_elements(&mut script, "add", &add_counted);
                write_set_elements(&mut script, "add", DENY_SET, &add_deny);
                self.run_script(&script, "update table inet slicewall")?;
            } else {
                let mut batch = Batch::new();
                push_elements(&mut batch, false, DENY_SET, &delete_deny);
                for set in [TX_SET, RX_SET] {
                    push_elements(&mut batch, false, set, &delete_counted);
                    push_elements(&mut batch, true, set, &add_counted);
                }
                push_elements(&mut batch, true, DENY_SET, &add_deny);
                self.apply_batch(batch, "update the sets of table inet slicewall")?;
            }
        }
        self.synced = Some(Synced {
            entries: desired,
            levels,
            stale,
        });
        Ok(Applied { skipped })
    }

    /// Reads the counters of every unit passed to the last [`Nft::install`] or [`Nft::sync`],
    /// by cgroup ID.
    pub fn counters(&self) -> Result<HashMap<u64, Counters>, NftError> {
        let action = "list table inet slicewall";
        let listing = self.list_table()?.ok_or_else(|| NftError::Failed {
            action: action.into(),
            stderr: "table inet slicewall does not exist".into(),
        })?;
        let synced = self.synced.clone().unwrap_or_default();
        let by_path = paths_to_ids(&synced);

        let mut counters: HashMap<u64, Counters> = HashMap::new();
        for (set, is_tx) in [(TX_SET, true), (RX_SET, false)] {
            let elements = set_elements(&listing, set).ok_or_else(|| NftError::Output {
                action: action.into(),
                reason: format!("set {set} is missing"),
            })?;
            for element in elements {
                let Some((_, packets, bytes)) = element_counter(element) else {
                    return Err(NftError::Output {
                        action: action.into(),
                        reason: format!("element without a counter in set {set}: {element}"),
                    });
                };
                let Some(id) = element_id(element, &by_path) else {
                    continue;
                };
                if !synced.entries.contains_key(&id) {
                    continue;
                }
                let entry = counters.entry(id).or_default();
                if is_tx {
                    entry.tx_packets = packets;
                    entry.tx_bytes = bytes;
                } else {
                    entry.rx_packets = packets;
                    entry.rx_bytes = bytes;
                }
            }
        }
        Ok(counters)
    }

    /// Checks that table `inet slicewall` exists with its sets, chains, rules and the elements
    /// the last [`Nft::install`] or [`Nft::sync`] left. Returns false when someone
    /// deleted or flushed it, or when this `Nft` never installed it.
    pub fn is_intact(&self) -> Result<bool, NftError> {
        let Some(synced) = &self.synced else {
            return Ok(false);
        };
        let Some(listing) = self.list_table()? else {
            return Ok(false);
        };
        // The elements themselves are compared, not only their number, so an element swapped
        // for another is found too.
        let by_path = paths_to_ids(synced);
        let counted: BTreeSet<u64> = synced
            .entries
            .keys()
            .chain(synced.stale.keys())
            .copied()
            .collect();
        let denied: BTreeSet<u64> = synced
            .entries
            .iter()
            .filter(|(_, entry)| entry.deny)
            .map(|(id, _)| *id)
            .chain(
                synced
                    .stale
                    .iter()
                    .filter(|(_, deny)| **deny)
                    .map(|(id, _)| *id),
            )
            .collect();
        for (set, expected) in [(DENY_SET, &denied), (TX_SET, &counted), (RX_SET, &counted)] {
            let Some(elements) = set_elements(&listing, set) else {
                return Ok(false);
            };
            let found: Option<BTreeSet<u64>> = elements
                .iter()
                .map(|element| element_id(element, &by_path))
                .collect();
            if found.as_ref() != Some(expected) || elements.len() != expected.len() {
                return Ok(false);
            }
        }
        let rules = RULES_PER_LEVEL * synced.levels.len();
        for hook in ["output", "input"] {
            if !has_base_chain(&listing, hook) || rule_count(&listing, hook) != rules {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Deletes table `inet slicewall`, if it exists, and nothing else.
    pub fn remove(&mut self) -> Result<(), NftError> {
        let table = Table {
            family: NfFamily::INet,
            name: TABLE.into(),
            handle: None,
        };
        let mut batch = Batch::new();
        // Adding first makes the delete succeed when the table does not exist.
        batch.add(NfListObject::Table(table.clone()));
        batch.delete(NfListObject::Table(table));
        self.apply_batch(batch, "delete table inet slicewall")?;
        self.synced = None;
        Ok(())
    }

    /// Validates `units` and returns the entries whose path still names their cgroup ID, with
    /// the units left out.
    fn resolve(&self, units: &[NftUnit]) -> Result<(BTreeMap<u64, Entry>, Vec<Skipped>), NftError> {
        let mount = self.mount.as_ref().map_err(|reason| NftError::Output {
            action: "find the cgroup2 mount".into(),
            reason: reason.clone(),
        })?;
        let nft_root = match &self.nft_root {
            Some(root) => root.clone(),
            None => nft_root_of(mount)?,
        };
        let mut desired = BTreeMap::new();
        let mut skipped = Vec::new();
        for (index, unit) in units.iter().enumerate() {
            let invalid = |reason: String| NftError::InvalidUnit {
                index,
                cgroup_id: unit.cgroup_id,
                reason,
            };
            let relative = crate::cgroup::check_relative_path(&unit.path).map_err(invalid)?;
            let depth = relative.split('/').count();
            if unit.level == 0 || usize::from(unit.level) != depth {
                return Err(invalid(format!(
                    "level {} does not match path {:?}, which is {depth} levels deep",
                    unit.level, unit.path
                )));
            }
            let nft_path = if nft_root.is_empty() {
                relative.to_owned()
            } else {
                format!("{nft_root}/{relative}")
            };
            let entry = Entry {
                path: relative.to_owned(),
                nft_path,
                level: unit.level,
                deny: unit.deny,
            };
            if let Some(previous) = desired.get(&unit.cgroup_id) {
                if *previous != entry {
                    return Err(invalid(
                        "another unit has the same cgroup ID with another path or deny flag".into(),
                    ));
                }
                continue;
            }
            match crate::cgroup::cgroup_id(&mount.join(relative)) {
                Ok(id) if id == unit.cgroup_id => {
                    desired.insert(unit.cgroup_id, entry);
                }
                Ok(id) => skipped.push(Skipped {
                    cgroup_id: unit.cgroup_id,
                    path: unit.path.clone(),
                    reason: format!("the cgroup at this path now has ID {id}"),
                }),
                Err(error) => skipped.push(Skipped {
                    cgroup_id: unit.cgroup_id,
                    path: unit.path.clone(),
                    reason: format!("the cgroup cannot be read: {error}"),
                }),
            }
        }
        Ok((desired, skipped))
    }

    /// Checks whether the cgroup at `entry`'s path still has ID `id`, so that nft can delete its
    /// element by that path.
    fn still_names(&self, entry: &Entry, id: u64) -> bool {
        let Ok(mount) = &self.mount else {
            return false;
        };
        crate::cgroup::cgroup_id(&mount.join(&entry.path)).is_ok_and(|found| found == id)
    }

    /// Runs an nft text script as one transaction with `nft -f -`.
    fn run_script(&mut self, script: &str, action: &str) -> Result<(), NftError> {
        self.run(&["-f", "-"], script, false, action)?;
        self.transactions += 1;
        Ok(())
    }

    /// Runs a batch of the crate's typed schema as one transaction with `nft -j -f -`.
    fn apply_batch(&mut self, batch: Batch, action: &str) -> Result<(), NftError> {
        let payload = serde_json::to_string(&batch.to_nftables()).expect("serializable batch");
        self.run(&["-j", "-f", "-"], &payload, false, action)?;
        self.transactions += 1;
        Ok(())
    }

    /// Runs the nft command with `nft_args`, writes `input` to it and returns its standard
    /// output. With `hide_cgroups`, nft runs in a mount namespace of its own with an empty
    /// `/sys/fs/cgroup`, so that it prints cgroup IDs without walking the hierarchy.
    fn run(
        &self,
        nft_args: &[&str],
        input: &str,
        hide_cgroups: bool,
        action: &str,
    ) -> Result<String, NftError> {
        let spawn_error = |source| NftError::Spawn {
            program: self.program.clone(),
            source,
        };
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .args(nft_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if hide_cgroups {
            // SAFETY: the closure runs in the child between fork and exec and makes only
            // async-signal-safe system calls (unshare, mount) on constant strings.
            unsafe {
                command.pre_exec(hide_cgroup_tree);
            }
        }
        let mut child = command.spawn().map_err(spawn_error)?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // A second thread writes the input while this one reads the output. Otherwise nft could block
        // on a full stdout pipe while this thread blocks on a full stdin pipe.
        let input = input.to_owned();
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let output = child.wait_with_output().map_err(spawn_error)?;
        let written = writer.join().expect("stdin writer panicked");
        if !output.status.success() {
            return Err(NftError::Failed {
                action: action.into(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        written.map_err(spawn_error)?;
        String::from_utf8(output.stdout).map_err(|error| NftError::Output {
            action: action.into(),
            reason: format!("output is not UTF-8: {error}"),
        })
    }

    /// Lists our table as JSON, or returns `None` when it does not exist.
    ///
    /// The listing is parsed as plain JSON: the crate's typed schema has no `cgroupsv2` set type
    /// and would reject the whole document.
    fn list_table(&self) -> Result<Option<serde_json::Value>, NftError> {
        let action = "list table inet slicewall";
        let mut batch = Batch::new();
        batch.add_cmd(NfCmd::List(NfListObject::Table(Table {
            family: NfFamily::INet,
            name: TABLE.into(),
            handle: None,
        })));
        let payload = serde_json::to_string(&batch.to_nftables()).expect("serializable batch");
        let args = ["-j", "-f", "-"];
        let result = match self.run(&args, &payload, true, action) {
            Err(NftError::Spawn { .. }) => self.run(&args, &payload, false, action),
            result => result,
        };
        let stdout = match result {
            Ok(stdout) => stdout,
            Err(NftError::Failed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                return Ok(None);
            }
            Err(error) => return Err(error),
        };
        serde_json::from_str(&stdout)
            .map(Some)
            .map_err(|error| NftError::Output {
                action: action.into(),
                reason: format!("invalid JSON: {error}"),
            })
    }
}

/// Gives the calling process a mount namespace of its own with an empty, read-only tmpfs over
/// `/sys/fs/cgroup`. Runs in a forked child before exec.
fn hide_cgroup_tree() -> std::io::Result<()> {
    // SAFETY: unshare and mount get constant NUL-terminated strings or null pointers, which
    // these calls accept.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Keeps the tmpfs out of the parent's namespace, whatever the propagation of `/` is.
        if libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if libc::mount(
            c"tmpfs".as_ptr(),
            c"/sys/fs/cgroup".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Returns where the hierarchy mounted at `mount` appears below `/sys/fs/cgroup`, for nft.
fn nft_root_of(mount: &Path) -> Result<String, NftError> {
    mount
        .strip_prefix(NFT_CGROUP_BASE)
        .map(|rest| rest.to_string_lossy().trim_matches('/').to_owned())
        .map_err(|_| NftError::MountOutsideBase {
            mount: mount.to_owned(),
        })
}

/// Checks whether `units` describe exactly what was last applied, so that no transaction is
/// needed.
fn unchanged(synced: &Synced, units: &[NftUnit]) -> bool {
    let mut seen = 0;
    for unit in units {
        let Some(entry) = synced.entries.get(&unit.cgroup_id) else {
            return false;
        };
        if entry.path != unit.path.trim_matches('/')
            || entry.level != unit.level
            || entry.deny != unit.deny
        {
            return false;
        }
        seen += 1;
    }
    // Duplicates in `units` make `seen` larger than the number of distinct IDs, and then the
    // full comparison decides.
    seen == synced.entries.len()
}

fn levels_of(entries: &BTreeMap<u64, Entry>) -> BTreeSet<u8> {
    entries.values().map(|entry| entry.level).collect()
}

/// Appends the rules of both chains for `levels`.
fn write_rules(script: &mut String, levels: &BTreeSet<u8>) {
    for (hook, set) in [("output", TX_SET), ("input", RX_SET)] {
        for level in levels {
            let socket = format!("socket cgroupv2 level {level}");
            writeln!(
                script,
                "add rule inet {TABLE} {hook} meta l4proto tcp tcp flags & rst == 0 {socket} @{DENY_SET} reject with tcp reset"
            )
            .unwrap();
            writeln!(
                script,
                "add rule inet {TABLE} {hook} meta l4proto != tcp {socket} @{DENY_SET} drop"
            )
            .unwrap();
            writeln!(script, "add rule inet {TABLE} {hook} {socket} @{set}").unwrap();
        }
    }
}

/// Appends `verb` (add or delete) of the entries to the counted sets, and to `deny` for those
/// with `deny` set.
fn write_elements(script: &mut String, verb: &str, entries: &[(u64, &Entry)]) {
    for set in [TX_SET, RX_SET] {
        write_set_elements(script, verb, set, entries);
    }
    if verb == "add" {
        let denied: Vec<(u64, &Entry)> = entries
            .iter()
            .filter(|(_, entry)| entry.deny)
            .copied()
            .collect();
        write_set_elements(script, verb, DENY_SET, &denied);
    }
}

fn write_set_elements(script: &mut String, verb: &str, set: &str, entries: &[(u64, &Entry)]) {
    if entries.is_empty() {
        return;
    }
    let elements: Vec<String> = entries
        .iter()
        .map(|(_, entry)| format!("\"{}\"", entry.nft_path))
        .collect();
    writeln!(
        script,
        "{verb} element inet {TABLE} {set} {{ {} }}",
        elements.join(", ")
    )
    .unwrap();
}

fn push_elements(batch: &mut Batch, add: bool, set: &str, entries: &[(u64, &Entry)]) {
    if entries.is_empty() {
        return;
    }
    let elements: Vec<Expression> = entries
        .iter()
        .map(|(_, entry)| Expression::String(entry.nft_path.clone().into()))
        .collect();
    let element = NfListObject::Element(Element {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: set.to_owned().into(),
        elem: elements.into(),
    });
    if add {
        batch.add(element);
    } else {
        batch.delete(element);
    }
}

/// Returns the objects of kind `kind` ("set", "chain", "rule") in an nft JSON listing.
fn objects<'a>(
    listing: &'a serde_json::Value,
    kind: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(move |object| object.get(kind))
}

/// Returns the elements of set `name`, or `None` when the set does not exist.
fn set_elements<'a>(listing: &'a serde_json::Value, name: &str) -> Option<&'a [serde_json::Value]> {
    let set = objects(listing, "set").find(|set| set["name"] == name)?;
    Some(set["elem"].as_array().map_or(&[], Vec::as_slice))
}

/// Returns the value and the counter of one set element as nft lists it:
/// `{"elem": {"val": V, "counter": {"packets": P, "bytes": B}}}`.
fn element_counter(element: &serde_json::Value) -> Option<(&str, u64, u64)> {
    let elem = element.get("elem")?;
    let value = elem["val"].as_str()?;
    let counter = elem.get("counter")?;
    Some((
        value,
        counter["packets"].as_u64()?,
        counter["bytes"].as_u64()?,
    ))
}

/// Maps the paths by which nft names the synced elements to their cgroup IDs.
fn paths_to_ids(synced: &Synced) -> HashMap<&str, u64> {
    synced
        .entries
        .iter()
        .map(|(id, entry)| (entry.nft_path.as_str(), *id))
        .collect()
}

/// Returns the cgroup ID of a set element as nft lists it: a plain value for a set without
/// counters, or `{"elem": {"val": V, ...}}`. nft prints a path while a cgroup with that ID exists,
/// and the ID otherwise.
fn element_id(element: &serde_json::Value, by_path: &HashMap<&str, u64>) -> Option<u64> {
    let value = element
        .get("elem")
        .and_then(|elem| elem.get("val"))
        .unwrap_or(element);
    if let Some(id) = value.as_u64() {
        return Some(id);
    }
    let text = value.as_str()?;
    match text.parse::<u64>() {
        Ok(id) => Some(id),
        Err(_) => by_path.get(text).copied(),
    }
}

fn has_base_chain(listing: &serde_json::Value, hook: &str) -> bool {
    objects(listing, "chain").any(|chain| chain["name"] == hook && chain["hook"] == hook)
}

fn rule_count(listing: &serde_json::Value, chain: &str) -> usize {
    objects(listing, "rule")
        .filter(|rule| rule["chain"] == chain)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, level: u8, deny: bool) -> Entry {
        Entry {
            path: path.trim_start_matches("unified/").into(),
            nft_path: path.into(),
            level,
            deny,
        }
    }

    #[test]
    fn nft_root_is_relative_to_sys_fs_cgroup() {
        assert_eq!(nft_root_of(Path::new("/sys/fs/cgroup")).unwrap(), "");
        assert_eq!(
            nft_root_of(Path::new("/sys/fs/cgroup/unified")).unwrap(),
            "unified"
        );
        assert!(nft_root_of(Path::new("/mnt/cgroup")).is_err());
    }

    #[test]
    fn rules_cover_each_level_in_both_chains() {
        let mut script = String::new();
        write_rules(&mut script, &BTreeSet::from([1, 3]));
        assert_eq!(script.lines().count(), 2 * 2 * RULES_PER_LEVEL);
        assert!(script.contains(
            "add rule inet slicewall output meta l4proto tcp tcp flags & rst == 0 socket cgroupv2 level 3 @deny reject with tcp reset"
        ));
        assert!(script.contains("add rule inet slicewall input socket cgroupv2 level 1 @rx"));
        assert!(!script.contains("level 2"));
    }

    #[test]
    fn elements_added_to_deny_only_when_denied() {
        let allowed = entry("unified/a.slice", 1, false);
        let denied = entry("unified/b.slice", 1, true);
        let mut script = String::new();
        write_elements(&mut script, "add", &[(1, &allowed), (2, &denied)]);
        assert!(script.contains(
            "add element inet slicewall tx { \"unified/a.slice\", \"unified/b.slice\" }"
        ));
        assert!(script.contains("add element inet slicewall deny { \"unified/b.slice\" }"));
    }

    #[test]
    fn counters_parsed_from_listing() {
        let listing: serde_json::Value = serde_json::from_str(
            r#"{"nftables": [{"set": {"name": "tx", "elem": [
                {"elem": {"val": "unified/a.slice", "counter": {"packets": 3, "bytes": 180}}},
                {"elem": {"val": "41027", "counter": {"packets": 0, "bytes": 0}}}]}}]}"#,
        )
        .unwrap();
        let elements = set_elements(&listing, "tx").unwrap();
        assert_eq!(
            element_counter(&elements[0]),
            Some(("unified/a.slice", 3, 180))
        );
        assert_eq!(element_counter(&elements[1]), Some(("41027", 0, 0)));
        assert!(set_elements(&listing, "rx").is_none());
    }
}
