//! Rust mirrors of the structures and constants in `bpf/slicewall.h`. The layouts must match
//! the C definitions byte for byte; the size assertions at the bottom catch a drift in either.

pub const VERDICT_ALLOW: u8 = 1;
pub const VERDICT_DENY: u8 = 2;

pub const REASON_RULE: u8 = 1;
pub const REASON_NO_RULE: u8 = 2;
pub const REASON_ASK_FALLBACK: u8 = 3;
pub const REASON_FAIL_MODE: u8 = 4;
pub const REASON_PENDING: u8 = 5;
pub const REASON_LIMIT: u8 = 6;
pub const REASON_SILENT_ALLOW: u8 = 7;
pub const REASON_SILENT_DENY: u8 = 8;
/// Reasons only the daemon gives, for flows that waited on a prompt.
pub const REASON_PROMPT_ANSWER: u8 = 9;
pub const REASON_TIMEOUT: u8 = 10;
pub const REASON_NO_AGENT: u8 = 11;
pub const REASON_PROMPT_LIMIT: u8 = 12;

pub const ASK_FALLBACK: u32 = 0;
pub const ASK_PROMPT: u32 = 1;
pub const ASK_SILENT_ALLOW: u32 = 2;
pub const ASK_SILENT_DENY: u32 = 3;

pub const EVENT_EXEC: u32 = 1;
pub const EVENT_DECISION: u32 = 2;
pub const EVENT_PENDING: u32 = 3;

pub const CANDIDATE_ASK: u8 = 1;
pub const CANDIDATE_NEEDS_EXE: u8 = 2;

pub const HELD_WAITING: u32 = 1;
pub const HELD_DENIED: u32 = 2;

pub const LIST_MAX: usize = 32;
pub const LIST_OVERFLOW: u32 = u32::MAX;

pub const STAT_EVENTS_LOST: u32 = 0;
pub const STAT_DECISIONS: u32 = 1;
pub const STAT_PENDING: u32 = 2;
pub const STAT_RTO_BOUND_FAILED: u32 = 3;

pub const POLICY_NONE: u32 = 0;

pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub daemon_present: u32,
    pub fail_verdict: u32,
    pub hold_rto_jiffies: u32,
    pub global_policy: u32,
    pub next_id: u32,
    pub guard_level: u32,
    pub guard_cgroup_id: u64,
    pub generation: u32,
    /// What an `ask` candidate does: one of the `ASK_*` values.
    pub ask_mode: u32,
    /// The daemon's PID namespace: device number (in the kernel's encoding) and inode number of
    /// its nsfs file. `pidns_ino` 0 means the initial PID namespace.
    pub pidns_dev: u64,
    pub pidns_ino: u64,
    /// TCP_SYNCNT of a held socket, 0 to leave it.
    pub hold_syn_retries: u32,
    /// TCP_RTO_MAX_MS of a held socket, 0 to leave it.
    pub hold_rto_max_ms: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Task {
    pub exe_id: u32,
    pub padding: u32,
    /// The exec this executable was read for; see `slicewall_execs`.
    pub exec_ns: u64,
}

/// Key of `slicewall_units`: the policy for processes of a cgroup and user whose executable the
/// gate does not know yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UnitKey {
    pub cgroup_id: u64,
    pub uid: u32,
    pub padding: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SubjectKey {
    pub cgroup_id: u64,
    pub exe_id: u32,
    pub uid: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
/// The data part of `struct slicewall_prefix_key`; aya's `lpm_trie::Key` adds the prefix length.
pub struct PrefixData {
    pub policy: u32,
    pub family: u8,
    /// IPv4 in the first 4 bytes.
    pub address: [u8; 16],
    pub padding: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Candidate {
    pub rank: u64,
    pub rule_id: u32,
    pub port_first: u16,
    pub port_last: u16,
    pub protocol: u8,
    pub verdict: u8,
    pub flags: u8,
    pub padding: [u8; 5],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct List {
    pub length: u32,
    pub padding: u32,
    pub candidates: [Candidate; LIST_MAX],
}

impl Default for List {
    fn default() -> Self {
        Self {
            length: 0,
            padding: 0,
            candidates: [Candidate::default(); LIST_MAX],
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub kind: u32,
    pub tgid: u32,
    pub cookie: u64,
    /// The process's last exec (bpf_ktime_get_ns), 0 if none was seen.
    pub exec_ns: u64,
    pub cgroup_id: u64,
    pub uid: u32,
    pub exe_id: u32,
    pub rule_id: u32,
    pub verdict: u8,
    pub reason: u8,
    pub protocol: u8,
    pub padding: u8,
    pub port: u16,
    pub padding2: u16,
    pub address: [u8; 16],
    pub comm: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub flow: Event,
    /// CLOCK_MONOTONIC time the hold began, in nanoseconds.
    pub since_ns: u64,
    pub state: u32,
    pub source_port: u16,
    pub padding: u16,
    pub source_address: [u8; 16],
}

// SAFETY: each type is #[repr(C)], made only of integers and integer arrays, with explicit
// padding fields, so every bit pattern is valid and no byte is uninitialized.
unsafe impl aya::Pod for Config {}
// SAFETY: as above.
unsafe impl aya::Pod for Task {}
// SAFETY: as above.
unsafe impl aya::Pod for SubjectKey {}
// SAFETY: as above.
unsafe impl aya::Pod for UnitKey {}
// SAFETY: as above.
unsafe impl aya::Pod for PrefixData {}
// SAFETY: as above.
unsafe impl aya::Pod for List {}
// SAFETY: as above.
unsafe impl aya::Pod for Held {}

const _: () = assert!(std::mem::size_of::<Config>() == 64);
const _: () = assert!(std::mem::size_of::<SubjectKey>() == 16);
const _: () = assert!(std::mem::size_of::<aya::maps::lpm_trie::Key<PrefixData>>() == 28);
const _: () = assert!(std::mem::size_of::<Candidate>() == 24);
const _: () = assert!(std::mem::size_of::<List>() == 8 + 24 * LIST_MAX);
const _: () = assert!(std::mem::size_of::<Event>() == 88);
const _: () = assert!(std::mem::size_of::<Task>() == 16);
const _: () = assert!(std::mem::size_of::<Held>() == 120);

impl Event {
    /// Reads an event from a ring buffer record; `None` if the record is too short.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < std::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: the length was checked, and Event is plain old data valid for any bytes;
        // read_unaligned copes with the record's alignment.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }

    /// Returns the destination as an IP address, with `::ffff:a.b.c.d` as IPv4.
    pub fn address(&self) -> std::net::IpAddr {
        let v6 = std::net::Ipv6Addr::from(self.address);
        match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => std::net::IpAddr::V6(v6),
        }
    }

    /// Returns the process name. The process chose it, so it is for display only.
    pub fn comm(&self) -> String {
        let end = self
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.comm.len());
        String::from_utf8_lossy(&self.comm[..end]).into_owned()
    }
}
