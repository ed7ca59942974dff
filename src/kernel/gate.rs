//! Loads, pins and attaches the eBPF gate, and gives typed access to its maps.
//!
//! Everything is pinned under one directory on a bpf file system: the maps in `maps/` and the
//! attachments in `links/`. A pinned link keeps its program attached after the daemon exits,
//! so enforcement outlives the daemon. A new daemon reuses the pinned maps, attaches its own
//! programs next to the old ones (cgroup links always allow several programs), and only then
//! removes the old links: at every moment some program gates the cgroup.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, ProgramError,
    RawTracePoint, SockOps,
};
use aya::{Ebpf, EbpfError, EbpfLoader};

use super::abi::{self, Config, Held, List, PrefixData, SubjectKey, Task, UnitKey};

/// The compiled gate, embedded at build time by build.rs.
static GATE_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gate.bpf.o"));

/// `statfs` magic number of the bpf file system.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Maximum entries of each map. When a map is full, the daemon cannot record an identity, so the
/// flows of that identity go through the daemon, which logs the failure.
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    pub tasks: u32,
    pub subjects: u32,
    pub prefixes: u32,
    pub lists: u32,
    pub held: u32,
    /// Size of the event ring buffer in bytes; a power of two and a multiple of the page size.
    pub events: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            tasks: 65_536,
            subjects: 65_536,
            prefixes: 1 << 20,
            lists: 1 << 18,
            held: 16_384,
            events: 4 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(
        "pin directory {path} is not on a bpf file system (mount one with `mount -t bpf bpf DIR`)"
    )]
    NotBpfFs { path: PathBuf },
    #[error("another slicewalld is using pin directory {path}; stop it first")]
    Busy { path: PathBuf },
    #[error("failed to lock pin directory {path}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("failed to prepare pin directory {path}")]
    PinDirectory { path: PathBuf, source: io::Error },
    #[error("failed to open cgroup {path}")]
    Cgroup { path: PathBuf, source: io::Error },
    #[error("failed to load the eBPF object")]
    Load(#[source] Box<EbpfError>),
    #[error("eBPF program {name} is missing from the object")]
    MissingProgram { name: &'static str },
    #[error("failed to load or attach eBPF program {name}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("failed to pin the link of eBPF program {name} at {path}")]
    PinLink {
        name: &'static str,
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("eBPF map {name} is missing or has an unexpected type")]
    Map {
        name: &'static str,
        source: Option<MapError>,
    },
    #[error("failed to update eBPF map {name}")]
    MapUpdate {
        name: &'static str,
        source: MapError,
    },
}

/// Attach point of one of the gate's programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    SockAddr,
    Sock,
    Skb,
    SockOps,
    RawTracepoint(&'static str),
}

/// Every program of the gate, in attach order: the hooks that record and release socket state
/// come before the connect hooks that rely on it.
const PROGRAMS: &[(&str, Hook)] = &[
    ("slicewall_exec", Hook::RawTracepoint("sched_process_exec")),
    ("slicewall_exit", Hook::RawTracepoint("sched_process_exit")),
    ("slicewall_sock_create", Hook::Sock),
    ("slicewall_sock_release", Hook::Sock),
    ("slicewall_egress", Hook::Skb),
    ("slicewall_sockops", Hook::SockOps),
    ("slicewall_connect4", Hook::SockAddr),
    ("slicewall_connect6", Hook::SockAddr),
    ("slicewall_sendmsg4", Hook::SockAddr),
    ("slicewall_sendmsg6", Hook::SockAddr),
];

/// The loaded gate and its maps.
pub struct Gate {
    pub config: Array<MapData, Config>,
    pub tasks: HashMap<MapData, u32, Task>,
    pub execs: HashMap<MapData, u32, u64>,
    pub subjects: HashMap<MapData, SubjectKey, u32>,
    pub units: HashMap<MapData, UnitKey, u32>,
    pub prefixes: LpmTrie<MapData, PrefixData, u32>,
    pub lists: HashMap<MapData, u32, List>,
    pub held: HashMap<MapData, u64, Held>,
    pub stats: PerCpuArray<MapData, u64>,
    pub events: Option<RingBuf<MapData>>,
    /// Kept so the loaded programs stay open until every link is pinned.
    _ebpf: Ebpf,
    /// Held for the daemon's lifetime, so a second daemon or a cleanup cannot use the same pins.
    _lock: PinLock,
}

/// An exclusive lock on a pin directory (flock on the directory itself, because a bpf file
/// system holds no regular files). The kernel releases it when the process exits, however it
/// exits.
pub struct PinLock {
    _directory: fs::File,
}

/// Locks a pin directory, failing at once if another process holds it.
pub fn lock_pin_dir(pin_dir: &Path) -> Result<PinLock, GateError> {
    use std::os::fd::AsRawFd;

    let directory = fs::File::open(pin_dir).map_err(|source| GateError::Lock {
        path: pin_dir.to_owned(),
        source,
    })?;
    // SAFETY: flock on a descriptor this function owns.
    let result = unsafe { libc::flock(directory.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if result == 0 {
        return Ok(PinLock {
            _directory: directory,
        });
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Err(GateError::Busy {
            path: pin_dir.to_owned(),
        });
    }
    Err(GateError::Lock {
        path: pin_dir.to_owned(),
        source: error,
    })
}

/// Pin directory, guarded cgroup and map sizes of a gate.
#[derive(Clone, Debug)]
pub struct GateOptions {
    pub pin_dir: PathBuf,
    /// Directory of the guarded cgroup in the cgroup v2 file system.
    pub cgroup_dir: PathBuf,
    pub sizes: MapSizes,
}

impl Gate {
    /// Loads the gate, reusing maps already pinned by an earlier daemon, and attaches it to the
    /// guarded cgroup, replacing the links of the earlier daemon's programs without a gap.
    pub fn open(options: &GateOptions) -> Result<Gate, GateError> {
        let maps_dir = options.pin_dir.join("maps");
        let links_dir = options.pin_dir.join("links");
        prepare_pin_dir(&options.pin_dir)?;
        let lock = lock_pin_dir(&options.pin_dir)?;
        for dir in [&maps_dir, &links_dir] {
            fs::create_dir_all(dir).map_err(|source| GateError::PinDirectory {
                path: dir.clone(),
                source,
            })?;
        }

        let sizes = options.sizes;
        // TODO: maps pinned by a daemon with another layout of a shared structure (such as the
        // config map, which grew by the PID namespace fields) are reused as they are. Only the
        // verifier's bounds check on the new programs stops the start. Compare the pinned maps'
        // key and value sizes and name the map to remove with --cleanup.
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .map_max_entries("slicewall_tasks", sizes.tasks)
            .map_max_entries("slicewall_execs", sizes.tasks)
            .map_max_entries("slicewall_subjects", sizes.subjects)
            .map_max_entries("slicewall_units", sizes.subjects)
            .map_max_entries("slicewall_prefixes", sizes.prefixes)
            .map_max_entries("slicewall_lists", sizes.lists)
            .map_max_entries("slicewall_held", sizes.held)
            .map_max_entries("slicewall_events", sizes.events)
            .load(GATE_OBJECT)
            .map_err(|error| GateError::Load(Box::new(error)))?;

        let cgroup = fs::File::open(&options.cgroup_dir).map_err(|source| GateError::Cgroup {
            path: options.cgroup_dir.clone(),
            source,
        })?;
        for &(name, hook) in PROGRAMS {
            let link = attach(&mut ebpf, name, hook, &cgroup)?;
            replace_pinned_link(&links_dir, name, link)?;
        }

        Ok(Gate {
            config: take_map(&mut ebpf, "slicewall_config")?,
            tasks: take_map(&mut ebpf, "slicewall_tasks")?,
            execs: take_map(&mut ebpf, "slicewall_execs")?,
            subjects: take_map(&mut ebpf, "slicewall_subjects")?,
            units: take_map(&mut ebpf, "slicewall_units")?,
            prefixes: take_map(&mut ebpf, "slicewall_prefixes")?,
            lists: take_map(&mut ebpf, "slicewall_lists")?,
            held: take_map(&mut ebpf, "slicewall_held")?,
            stats: take_map(&mut ebpf, "slicewall_stats")?,
            events: Some(take_map(&mut ebpf, "slicewall_events")?),
            _ebpf: ebpf,
            _lock: lock,
        })
    }

    pub fn read_config(&self) -> Result<Config, GateError> {
        self.config.get(&0, 0).map_err(|source| GateError::Map {
            name: "slicewall_config",
            source: Some(source),
        })
    }

    pub fn write_config(&mut self, config: Config) -> Result<(), GateError> {
        self.config
            .set(0, config, 0)
            .map_err(|source| GateError::MapUpdate {
                name: "slicewall_config",
                source,
            })
    }

    /// Sums a per-CPU counter.
    pub fn stat(&self, index: u32) -> u64 {
        self.stats
            .get(&index, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    /// Points an identity at its policy.
    pub fn set_subject(&mut self, key: SubjectKey, policy: u32) -> Result<(), GateError> {
        self.subjects
            .insert(key, policy, 0)
            .map_err(|source| GateError::MapUpdate {
                name: "slicewall_subjects",
                source,
            })
    }

    /// Points a cgroup-and-user pair at the policy for its programs not identified yet.
    pub fn set_unit(&mut self, key: UnitKey, policy: u32) -> Result<(), GateError> {
        self.units
            .insert(key, policy, 0)
            .map_err(|source| GateError::MapUpdate {
                name: "slicewall_units",
                source,
            })
    }

    /// Points `policy`'s entry for an address prefix at a candidate list. `key_bits` counts the
    /// family byte and the address bits (0 for the policy's root, which matches any address).
    pub fn set_prefix(
        &mut self,
        policy: u32,
        key_bits: u32,
        family: u8,
        address: [u8; 16],
        list: u32,
    ) -> Result<(), GateError> {
        let key = LpmKey::new(
            32 + key_bits,
            PrefixData {
                policy,
                family,
                address,
                padding: [0; 3],
            },
        );
        self.prefixes
            .insert(&key, list, 0)
            .map_err(|source| GateError::MapUpdate {
                name: "slicewall_prefixes",
                source,
            })
    }

    /// Removes every prefix whose policy `keep` rejects, with the lists no kept prefix uses.
    pub fn prune_policies(&mut self, keep: impl Fn(u32) -> bool, keep_list: impl Fn(u32) -> bool) {
        let stale: Vec<LpmKey<PrefixData>> = self
            .prefixes
            .keys()
            .filter_map(Result::ok)
            .filter(|key| !keep(key.data().policy))
            .collect();
        for key in stale {
            let _ = self.prefixes.remove(&key);
        }
        let stale_lists: Vec<u32> = self
            .lists
            .keys()
            .filter_map(Result::ok)
            .filter(|id| !keep_list(*id))
            .collect();
        for id in stale_lists {
            let _ = self.lists.remove(&id);
        }
    }

    /// Returns when the process last called execve() as the gate recorded it, 0 if never.
    pub fn exec_ns(&self, tgid: u32) -> u64 {
        self.execs.get(&tgid, 0).unwrap_or(0)
    }

    /// Removes every process and identity entry, so each flow is identified afresh.
    pub fn forget_identities(&mut self) {
        let tasks: Vec<u32> = self.tasks.keys().filter_map(Result::ok).collect();
        for tgid in tasks {
            let _ = self.tasks.remove(&tgid);
        }
        let subjects: Vec<SubjectKey> = self.subjects.keys().filter_map(Result::ok).collect();
        for key in subjects {
            let _ = self.subjects.remove(&key);
        }
        let units: Vec<UnitKey> = self.units.keys().filter_map(Result::ok).collect();
        for key in units {
            let _ = self.units.remove(&key);
        }
    }
}

/// Removes the gate's links and maps, which detaches the programs. Fails while a daemon runs on
/// the same pin directory, because that daemon would go on as if the gate were in force.
pub fn remove_pins(pin_dir: &Path) -> Result<(), GateError> {
    if !pin_dir.exists() {
        return Ok(());
    }
    let _lock = lock_pin_dir(pin_dir)?;
    remove_pin_files(pin_dir).map_err(|source| GateError::PinDirectory {
        path: pin_dir.to_owned(),
        source,
    })
}

fn remove_pin_files(pin_dir: &Path) -> io::Result<()> {
    for sub in ["links", "maps"] {
        let dir = pin_dir.join(sub);
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    fs::remove_file(entry?.path())?;
                }
                fs::remove_dir(&dir)?;
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    match fs::remove_dir(pin_dir) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// The usual mount point of the bpf file system; systemd mounts it at boot.
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

fn prepare_pin_dir(pin_dir: &Path) -> Result<(), GateError> {
    let mut existing = pin_dir;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    if !is_bpffs(existing)
        && pin_dir.starts_with(DEFAULT_BPFFS)
        && Path::new(DEFAULT_BPFFS).is_dir()
    {
        // Machines booted without systemd may not have mounted it.
        mount_bpffs(Path::new(DEFAULT_BPFFS)).map_err(|source| GateError::PinDirectory {
            path: DEFAULT_BPFFS.into(),
            source,
        })?;
        existing = Path::new(DEFAULT_BPFFS);
    }
    if !is_bpffs(existing) {
        return Err(GateError::NotBpfFs {
            path: existing.to_owned(),
        });
    }
    fs::create_dir_all(pin_dir).map_err(|source| GateError::PinDirectory {
        path: pin_dir.to_owned(),
        source,
    })
}

fn mount_bpffs(target: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;

    let target = std::ffi::CString::new(target.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: every pointer is a valid NUL-terminated string; data may be null.
    let result = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Checks whether `path` lies on a bpf file system.
pub fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;

    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: c_path is a valid NUL-terminated string and stat points to writable memory of
    // the right type; statfs writes it completely on success.
    let result = unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    // SAFETY: statfs returned 0, so it filled the structure.
    result == 0 && unsafe { stat.assume_init() }.f_type == BPF_FS_MAGIC
}

fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    hook: Hook,
    cgroup: &fs::File,
) -> Result<FdLink, GateError> {
    let program = ebpf
        .program_mut(name)
        .ok_or(GateError::MissingProgram { name })?;
    let failed = |source: ProgramError| GateError::Program { name, source };
    let pin_failed = |source: Box<dyn std::error::Error + Send + Sync>| GateError::PinLink {
        name,
        path: PathBuf::new(),
        source,
    };
    let fd = cgroup.as_fd();
    // bpf_link_create takes no attach flags for cgroups: a cgroup link always runs next to the
    // other programs on the cgroup, as BPF_F_ALLOW_MULTI does. Single is aya's "no flags".
    let mode = CgroupAttachMode::Single;
    let link: FdLink = match hook {
        Hook::SockAddr => {
            let program: &mut CgroupSockAddr = program.try_into().map_err(failed)?;
            program.load().map_err(failed)?;
            let id = program.attach(fd, mode).map_err(failed)?;
            let link = program.take_link(id).map_err(failed)?;
            FdLink::try_from(link).map_err(|error| pin_failed(Box::new(error)))?
        }
        Hook::Sock => {
            let program: &mut CgroupSock = program.try_into().map_err(failed)?;
            program.load().map_err(failed)?;
            let id = program.attach(fd, mode).map_err(failed)?;
            let link = program.take_link(id).map_err(failed)?;
            FdLink::try_from(link).map_err(|error| pin_failed(Box::new(error)))?
        }
        Hook::Skb => {
            let program: &mut CgroupSkb = program.try_into().map_err(failed)?;
            program.load().map_err(failed)?;
            let id = program
                .attach(fd, CgroupSkbAttachType::Egress, mode)
                .map_err(failed)?;
            let link = program.take_link(id).map_err(failed)?;
            FdLink::try_from(link).map_err(|error| pin_failed(Box::new(error)))?
        }
        Hook::SockOps => {
            let program: &mut SockOps = program.try_into().map_err(failed)?;
            program.load().map_err(failed)?;
            let id = program.attach(fd, mode).map_err(failed)?;
            let link = program.take_link(id).map_err(failed)?;
            FdLink::try_from(link).map_err(|error| pin_failed(Box::new(error)))?
        }
        Hook::RawTracepoint(tracepoint) => {
            let program: &mut RawTracePoint = program.try_into().map_err(failed)?;
            program.load().map_err(failed)?;
            let id = program.attach(tracepoint).map_err(failed)?;
            program.take_link(id).map_err(failed)?.into()
        }
    };
    Ok(link)
}

/// Pins the new link, then removes the previous daemon's link of the same program, so the old
/// program detaches only after the new one is attached.
fn replace_pinned_link(
    links_dir: &Path,
    name: &'static str,
    link: FdLink,
) -> Result<(), GateError> {
    let path = links_dir.join(name);
    // bpffs rejects names with a dot, so the staging name uses an underscore.
    let staging = links_dir.join(format!("{name}_new"));
    let _ = fs::remove_file(&staging);
    let pinned: PinnedLink = link.pin(&staging).map_err(|source| GateError::PinLink {
        name,
        path: staging.clone(),
        source: Box::new(source),
    })?;
    drop(pinned);
    let _ = fs::remove_file(&path);
    fs::rename(&staging, &path).map_err(|source| GateError::PinLink {
        name,
        path,
        source: Box::new(source),
    })
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, GateError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(GateError::Map { name, source: None })?;
    T::try_from(map).map_err(|source| GateError::Map {
        name,
        source: Some(source),
    })
}

/// Timer frequency the kernel assumes when none can be read: Debian's and Fedora's CONFIG_HZ.
const FALLBACK_HZ: u32 = 250;

/// Reads the kernel's timer frequency (CONFIG_HZ), the unit of sock_ops timeouts, from
/// /boot/config-RELEASE or /proc/config.gz, because no system call reports it.
pub fn kernel_hz() -> u32 {
    use std::io::Read;

    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut text =
        fs::read_to_string(format!("/boot/config-{}", release.trim())).unwrap_or_default();
    if text.is_empty() {
        if let Ok(file) = fs::File::open("/proc/config.gz") {
            let _ = flate2::read::GzDecoder::new(file).read_to_string(&mut text);
        }
    }
    parse_config_hz(&text).unwrap_or(FALLBACK_HZ)
}

fn parse_config_hz(config: &str) -> Option<u32> {
    config
        .lines()
        .find_map(|line| line.strip_prefix("CONFIG_HZ="))
        .and_then(|value| value.trim().parse().ok())
}

/// Held sockets retransmit their SYN after this long, then back off exponentially.
pub const HOLD_RETRANSMIT_MS: u32 = 20;

/// Maximum retransmission timeout of a held socket: the lowest value TCP_RTO_MAX_MS accepts
/// (Linux 6.15 and later). A SYN that waits for an answer is retransmitted at least this often,
/// so an allowed connection completes at most this long after the answer.
pub const HOLD_RTO_MAX_MS: u32 = 1000;

/// SYN retransmissions that a held socket needs to outlast a hold of `hold`: the backoff from
/// [`HOLD_RETRANSMIT_MS`] reaches [`HOLD_RTO_MAX_MS`] after six retransmissions (1.26 s), then
/// one follows each second. Two more cover scheduling delays. The kernel allows at most 127.
pub fn hold_syn_retries(hold: std::time::Duration) -> u32 {
    let seconds = u32::try_from(hold.as_secs()).unwrap_or(u32::MAX);
    seconds.saturating_add(6 + 2).min(127)
}

pub fn hold_rto_jiffies() -> u32 {
    (kernel_hz() * HOLD_RETRANSMIT_MS / 1000).max(1)
}

/// Inode number of the initial PID namespace, fixed in the kernel (`PROC_PID_INIT_INO`).
const INITIAL_PID_NAMESPACE_INO: u64 = 0xEFFF_FFFC;

/// Reads the daemon's PID namespace as the gate identifies it: the device and inode numbers of
/// `/proc/self/ns/pid`, the device in the kernel's internal encoding that
/// `bpf_get_ns_current_pid_tgid()` compares against. Returns `(0, 0)` in the initial PID
/// namespace, where the gate reads process IDs with `bpf_get_current_pid_tgid()`, which also
/// covers the tasks of nested PID namespaces.
pub fn pid_namespace() -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;

    let metadata = fs::metadata("/proc/self/ns/pid")?;
    if metadata.ino() == INITIAL_PID_NAMESPACE_INO {
        return Ok((0, 0));
    }
    let dev = metadata.dev();
    // The kernel's dev_t is MAJOR << 20 | MINOR; stat reports the glibc encoding.
    let kernel_dev = (u64::from(libc::major(dev)) << 20) | u64::from(libc::minor(dev));
    Ok((kernel_dev, metadata.ino()))
}

/// Builds the configuration the gate starts with. `pid_namespace` is what [`pid_namespace`]
/// returns.
pub fn initial_config(
    previous: Config,
    fail_verdict: u8,
    guard_level: u32,
    guard_cgroup_id: u64,
    pid_namespace: (u64, u64),
) -> Config {
    Config {
        daemon_present: 1,
        fail_verdict: u32::from(fail_verdict),
        hold_rto_jiffies: hold_rto_jiffies(),
        global_policy: previous.global_policy,
        next_id: previous.next_id.max(1),
        guard_level,
        guard_cgroup_id,
        generation: previous.generation,
        ask_mode: abi::ASK_FALLBACK,
        pidns_dev: pid_namespace.0,
        pidns_ino: pid_namespace.1,
        hold_syn_retries: 0,
        hold_rto_max_ms: HOLD_RTO_MAX_MS,
    }
}

pub use abi::POLICY_NONE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_hz_parsed() {
        assert_eq!(
            parse_config_hz("CONFIG_HZ_250=y\nCONFIG_HZ=250\n"),
            Some(250)
        );
        assert_eq!(parse_config_hz("CONFIG_HZ_1000=y\n"), None);
    }
}
