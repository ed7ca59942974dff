//! Compiles rules into the tables the kernel gate evaluates, with no I/O.
//!
//! A *policy* is the set of rules that apply to one kind of identity. The gate looks a flow's
//! destination up in an LPM trie keyed by (policy, family, address) and gets a *list* of
//! candidates. The list contains every (rule, port range, protocol) whose address prefix
//! contains the longest prefix that matched, including the rules with no address, sorted by
//! [`rank`] with the best first. The
//! first candidate that matches the port and protocol is the policy's answer. The gate asks two
//! policies, the identity's own and the global one (rules without selectors), and keeps the
//! answer of higher rank, so it reaches the same verdict as [`crate::rules::decide`].
//!
//! IPv4 and IPv6 prefixes live in separate trees of the trie; an IPv4-mapped IPv6 destination is
//! looked up as the IPv4 address it carries. Rules without an address sit at the policy's root
//! and match both families.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::kernel::abi::{self, Candidate, List};

use crate::rules::{rank, Action, Protocol, Rule, Selectors, Subject};
use crate::unit::UnitInfo;

/// One rule with the identifier the gate reports when the rule decides a flow.
#[derive(Clone, Copy, Debug)]
pub struct NumberedRule<'a> {
    pub id: u32,
    pub rule: &'a Rule,
    /// Set for a rule that names an executable (`exe` or `sha256`), in a policy compiled for
    /// processes whose executable the gate does not have yet. Such a rule may or may not apply,
    /// so it is marked [`abi::CANDIDATE_NEEDS_EXE`], and a flow it would decide goes to the
    /// daemon.
    pub needs_exe: bool,
}

/// Returns the indexes of the rules in the policy of one identity: the rules with selectors,
/// all of which match `subject` (`except` included). Rules without selectors are in the global
/// policy instead.
pub fn identity_rule_indexes(rules: &[Rule], subject: &Subject<'_>) -> Vec<usize> {
    (0..rules.len())
        .filter(|&index| {
            let selectors = &rules[index].selectors;
            !selectors.is_empty() && selectors.matches(subject)
        })
        .collect()
}

/// Returns the indexes of the rules in the policy for processes of `unit` and `uid` whose
/// executable is not known yet: the rules with selectors whose selectors other than `exe` and
/// `sha256` match. Compile it with [`NumberedRule::needs_exe`] set from [`names_executable`].
pub fn unit_rule_indexes(rules: &[Rule], unit: &UnitInfo, uid: u32) -> Vec<usize> {
    let subject = Subject {
        unit,
        exe: None,
        sha256: None,
        uid,
    };
    (0..rules.len())
        .filter(|&index| {
            let selectors = &rules[index].selectors;
            let without_exe = Selectors {
                exe: None,
                sha256: None,
                ..selectors.clone()
            };
            !selectors.is_empty() && without_exe.matches(&subject)
        })
        .collect()
}

/// Checks whether a rule names an executable (`exe` or `sha256`), so that it may or may not
/// apply to a process whose executable is not known yet.
pub fn names_executable(rule: &Rule) -> bool {
    rule.selectors.exe.is_some() || rule.selectors.sha256.is_some()
}

/// An address prefix as the gate's LPM trie keys it: a family, then the address bits. IPv4 and
/// IPv6 are separate trees, so no IPv6 prefix (not even `::/0`) contains an IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    /// 0 for "any address of either family", else [`abi::FAMILY_IPV4`] or [`abi::FAMILY_IPV6`].
    pub family: u8,
    /// IPv4 in the first 4 bytes.
    pub address: [u8; 16],
    /// Bits of `address` that count.
    pub length: u8,
}

impl Prefix {
    /// The prefix that contains every address of both families.
    pub const ANY: Prefix = Prefix {
        family: 0,
        address: [0; 16],
        length: 0,
    };

    pub fn from_net(net: &IpNet) -> Self {
        match net {
            IpNet::V4(v4) => {
                let mut address = [0; 16];
                address[..4].copy_from_slice(&v4.network().octets());
                Prefix::new(abi::FAMILY_IPV4, address, v4.prefix_len())
            }
            IpNet::V6(v6) => Prefix::new(abi::FAMILY_IPV6, v6.network().octets(), v6.prefix_len()),
        }
    }

    /// Builds the single-address prefix of a flow's destination. An IPv4-mapped IPv6 address
    /// is IPv4.
    pub fn from_address(address: IpAddr) -> Self {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            IpAddr::V4(_) => address,
        };
        Prefix::from_net(&IpNet::from(address))
    }

    /// Builds a prefix with the bits past `length` cleared.
    pub fn new(family: u8, address: [u8; 16], length: u8) -> Self {
        Prefix {
            family,
            address: mask(address, length),
            length,
        }
    }

    pub fn contains(&self, other: &Prefix) -> bool {
        if self.family == 0 {
            return true;
        }
        self.family == other.family
            && self.length <= other.length
            && mask(other.address, self.length) == self.address
    }

    /// Length of the LPM trie key past the policy: the family byte and the address bits.
    pub fn key_bits(&self) -> u32 {
        if self.family == 0 {
            0
        } else {
            8 + u32::from(self.length)
        }
    }

    /// Prefix length on the precedence scale of [`crate::rules::rank`]: IPv4 /n counts 96 + n.
    fn rank_length(&self) -> u8 {
        match self.family {
            0 => 0,
            abi::FAMILY_IPV4 => 96 + self.length,
            _ => self.length,
        }
    }
}

fn mask(address: [u8; 16], length: u8) -> [u8; 16] {
    let bits = u128::from_be_bytes(address);
    let kept = if length == 0 {
        0
    } else {
        bits & (u128::MAX << (128 - u32::from(length)))
    };
    kept.to_be_bytes()
}

/// One compiled policy: for each prefix, the candidate list the gate scans.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub prefixes: Vec<(Prefix, CandidateList)>,
}

/// Compiles the rules of one policy. `ask_verdict` is what an `ask` rule decides while no prompt
/// can be shown.
pub fn compile(rules: &[NumberedRule<'_>], ask_verdict: u8) -> CompiledPolicy {
    let mut by_prefix: HashMap<Prefix, Vec<Candidate>> = HashMap::new();
    for numbered in rules {
        let destination = &numbered.rule.destination;
        let prefixes: Vec<Prefix> = if destination.addresses.is_empty() {
            vec![Prefix::ANY]
        } else {
            destination.addresses.iter().map(Prefix::from_net).collect()
        };
        for prefix in prefixes {
            let entry = by_prefix.entry(prefix).or_default();
            entry.extend(candidates_of(numbered, prefix.rank_length(), ask_verdict));
        }
    }

    // A flow's longest matching prefix selects one list, so each list also carries the
    // candidates of every shorter prefix that contains it.
    let lengths: BTreeSet<(u8, u8)> = by_prefix
        .keys()
        .map(|prefix| (prefix.family, prefix.length))
        .collect();
    let mut compiled = CompiledPolicy::default();
    let mut prefixes: Vec<Prefix> = by_prefix.keys().copied().collect();
    prefixes.sort();
    for prefix in prefixes {
        let mut candidates = Vec::new();
        if prefix.family != 0 {
            candidates
                .extend_from_slice(by_prefix.get(&Prefix::ANY).map_or(&[][..], Vec::as_slice));
            for &(_, length) in lengths.range((prefix.family, 0)..=(prefix.family, prefix.length)) {
                let ancestor = Prefix::new(prefix.family, prefix.address, length);
                if let Some(found) = by_prefix.get(&ancestor) {
                    candidates.extend_from_slice(found);
                }
            }
        } else {
            candidates.extend_from_slice(&by_prefix[&prefix]);
        }
        compiled.prefixes.push((prefix, build_list(candidates)));
    }
    compiled
}

fn candidates_of<'a>(
    numbered: &'a NumberedRule<'_>,
    prefix_length: u8,
    ask_verdict: u8,
) -> impl Iterator<Item = Candidate> + 'a {
    let rule = numbered.rule;
    let (verdict, mut flags) = match rule.action {
        Action::Allow => (abi::VERDICT_ALLOW, 0),
        Action::Deny => (abi::VERDICT_DENY, 0),
        Action::Ask => (ask_verdict, abi::CANDIDATE_ASK),
    };
    if numbered.needs_exe {
        flags |= abi::CANDIDATE_NEEDS_EXE;
    }
    let protocol = match rule.destination.protocol {
        Protocol::Any => 0,
        Protocol::Tcp => libc::IPPROTO_TCP as u8,
        Protocol::Udp => libc::IPPROTO_UDP as u8,
    };
    let ports: Vec<(u16, u16)> = if rule.destination.ports.is_empty() {
        vec![(0, u16::MAX)]
    } else {
        rule.destination
            .ports
            .iter()
            .map(|range| (range.first, range.last))
            .collect()
    };
    let rank = rank(rule, prefix_length);
    ports
        .into_iter()
        .map(move |(port_first, port_last)| Candidate {
            rank,
            rule_id: numbered.id,
            port_first,
            port_last,
            protocol,
            verdict,
            flags,
            padding: [0; 5],
        })
}

/// The candidates of one prefix, best first, in the compact form the daemon keeps; [`List`] is
/// the fixed-size form the gate reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CandidateList {
    Candidates(Vec<Candidate>),
    /// More candidates than the gate scans ([`abi::LIST_MAX`]), so the daemon decides.
    Overflow,
}

impl CandidateList {
    /// Converts the list to the fixed-size form the gate reads.
    pub fn to_gate(&self) -> List {
        let mut list = List::default();
        match self {
            CandidateList::Overflow => list.length = abi::LIST_OVERFLOW,
            CandidateList::Candidates(candidates) => {
                list.length = candidates.len() as u32;
                list.candidates[..candidates.len()].copy_from_slice(candidates);
            }
        }
        list
    }
}

/// Sorts candidates best first and drops those an earlier candidate always shadows.
fn build_list(mut candidates: Vec<Candidate>) -> CandidateList {
    candidates.sort_by(|a, b| {
        b.rank
            .cmp(&a.rank)
            .then(a.rule_id.cmp(&b.rule_id))
            .then(a.port_first.cmp(&b.port_first))
    });
    let mut kept: Vec<Candidate> = Vec::new();
    for candidate in candidates {
        // A candidate that needs the executable may not apply, so it shadows nothing.
        let shadowed = kept.iter().any(|earlier| {
            earlier.flags & abi::CANDIDATE_NEEDS_EXE == 0
                && (earlier.protocol == 0 || earlier.protocol == candidate.protocol)
                && earlier.port_first <= candidate.port_first
                && earlier.port_last >= candidate.port_last
        });
        if !shadowed {
            kept.push(candidate);
        }
    }
    if kept.len() > abi::LIST_MAX {
        return CandidateList::Overflow;
    }
    kept.shrink_to_fit();
    CandidateList::Candidates(kept)
}

/// Result of one policy for a flow, found with the gate's algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evaluation {
    /// No candidate matched.
    NoMatch,
    /// The list was too long for the gate, so the daemon decides.
    Overflow,
    Matched(Candidate),
}

impl CompiledPolicy {
    /// Evaluates a flow with the gate's algorithm: longest prefix, then first matching candidate.
    pub fn evaluate(&self, address: IpAddr, protocol: u8, port: u16) -> Evaluation {
        let point = Prefix::from_address(address);
        let longest = self
            .prefixes
            .iter()
            .filter(|(prefix, _)| prefix.contains(&point))
            .max_by_key(|(prefix, _)| prefix.key_bits());
        let Some((_, list)) = longest else {
            return Evaluation::NoMatch;
        };
        let CandidateList::Candidates(candidates) = list else {
            return Evaluation::Overflow;
        };
        candidates
            .iter()
            .find(|candidate| {
                (candidate.protocol == 0 || candidate.protocol == protocol)
                    && candidate.port_first <= port
                    && port <= candidate.port_last
            })
            .map_or(Evaluation::NoMatch, |candidate| {
                Evaluation::Matched(*candidate)
            })
    }
}

#[cfg(test)]
mod tests;
