//! Precedence: which of the rules that match a flow decides it.
//!
//! A rule matches when all its selectors match the process and its destination matches the
//! flow. Of the matching rules, the one with the highest [`rank`] wins. The rank compares, in
//! this order:
//!
//! 1. `priority`, higher first.
//! 2. Identity level, how precisely the selectors name the process: 7 with `sha256`, 6 with
//!    `exe`, 5 with an exact `unit`, 4 with `app`, 3 with a unit glob, 2 with a slice, 1 with
//!    `user` only, 0 without selectors. A rule with several selectors counts its highest level.
//! 3. The matched address prefix, longer first. A rule may list several prefixes, and the
//!    longest one that contains the destination counts. IPv6 /n counts n and IPv4 /n counts
//!    96 + n, so 0.0.0.0/0 (96) still ranks above a rule without `address` (0).
//! 4. The port set, narrower first: fewer distinct ports in `port`. A single port beats a
//!    range, and a rule without `port` comes last.
//! 5. A rule with `protocol = "tcp"` or `"udp"` over one with `"any"`.
//! 6. The action: `deny` over `ask` over `allow`.
//!
//! Rules equal in all six have the same action, so the verdict does not depend on the names
//! or order of rule files. Which of those equal rules [`decide`] returns, and so which origin
//! the daemon reports, is fixed by comparing their content. Only rules whose content is
//! identical fall back to their origin (line, column, then file name).
//!
//! [`rank`] packs the six keys into one `u64`, most significant first:
//!
//! | bits   | key                                                              |
//! |--------|------------------------------------------------------------------|
//! | 63..41 | zero                                                             |
//! | 40..30 | priority + 1000, 0..=2000, so priority -1000 sorts lowest       |
//! | 29..27 | identity level, 0..=7                                            |
//! | 26..19 | matched prefix length on the scale above, 0..=128                |
//! | 18..3  | 65536 minus the number of distinct ports, 1..=65535; 0 for any   |
//! | 2      | 1 when a protocol is given                                       |
//! | 1..0   | action: deny 2, ask 1, allow 0                                   |

use std::cmp::Ordering;

use super::model::{Action, Flow, GlobPattern, Protocol, Rule, Subject, UnitSelector};

const PRIORITY_SHIFT: u32 = 30;
const IDENTITY_SHIFT: u32 = 27;
const PREFIX_SHIFT: u32 = 19;
const PORT_SHIFT: u32 = 3;
const PROTOCOL_SHIFT: u32 = 2;

const MAX_PRIORITY: i16 = 1000;
const MAX_PREFIX_LEN: u8 = 128;

/// Packs the precedence keys of a rule that matched with `matched_prefix_len` (see
/// [`super::DestinationMatch::prefix_len`]) into a number. A larger number wins.
///
/// A priority outside -1000..=1000 or a prefix length above 128, which the parser never
/// produces, is clamped so that one key cannot spill into the next.
pub fn rank(rule: &Rule, matched_prefix_len: u8) -> u64 {
    let priority = rule.priority.clamp(-MAX_PRIORITY, MAX_PRIORITY) + MAX_PRIORITY;
    let identity = rule.selectors.identity_level().min(7);
    let prefix_len = matched_prefix_len.min(MAX_PREFIX_LEN);
    let port_specificity = match rule.destination.port_count() {
        Some(count) => 65536 - u64::from(count.clamp(1, 65535)),
        None => 0,
    };
    let protocol_given = rule.destination.protocol != Protocol::Any;
    let action = match rule.action {
        Action::Deny => 2,
        Action::Ask => 1,
        Action::Allow => 0,
    };

    (priority as u64) << PRIORITY_SHIFT
        | u64::from(identity) << IDENTITY_SHIFT
        | u64::from(prefix_len) << PREFIX_SHIFT
        | port_specificity << PORT_SHIFT
        | u64::from(protocol_given) << PROTOCOL_SHIFT
        | action
}

/// Finds the rule that decides `flow` from `subject`, or `None` when no rule matches.
pub fn decide<'r>(
    rules: impl IntoIterator<Item = &'r Rule>,
    subject: &Subject,
    flow: &Flow,
) -> Option<&'r Rule> {
    let mut best: Option<(u64, &'r Rule)> = None;
    for rule in rules {
        if !rule.selectors.matches(subject) {
            continue;
        }
        let Some(matched) = rule.destination.matches(flow) else {
            continue;
        };

        let rule_rank = rank(rule, matched.prefix_len);
        let wins = match best {
            None => true,
            Some((best_rank, best_rule)) => match rule_rank.cmp(&best_rank) {
                Ordering::Greater => true,
                Ordering::Less => false,
                Ordering::Equal => compare_content(rule, best_rule) == Ordering::Less,
            },
        };
        if wins {
            best = Some((rule_rank, rule));
        }
    }
    best.map(|(_, rule)| rule)
}

fn unit_key(unit: &UnitSelector) -> (u8, &str) {
    let kind = match unit {
        UnitSelector::Exact(_) => 0,
        UnitSelector::Glob(_) => 1,
        UnitSelector::Slice(_) => 2,
        UnitSelector::Prefix(_) => 3,
    };
    (kind, unit.as_str())
}

/// Orders rules of equal rank by what they contain, and identical rules by origin.
fn compare_content(left: &Rule, right: &Rule) -> Ordering {
    content_key(left).cmp(&content_key(right))
}

#[allow(clippy::type_complexity)]
fn content_key(
    rule: &Rule,
) -> (
    Option<(u8, &str)>,
    Option<&str>,
    Option<&std::path::Path>,
    Option<super::Sha256Digest>,
    Option<u32>,
    Vec<(u8, &str)>,
    &[ipnet::IpNet],
    &[super::PortRange],
    Protocol,
    (u32, u32, &std::path::Path),
) {
    let selectors = &rule.selectors;
    (
        selectors.unit.as_ref().map(unit_key),
        selectors.app.as_ref().map(GlobPattern::as_str),
        selectors.exe.as_deref(),
        selectors.sha256,
        selectors.user,
        selectors.except.iter().map(unit_key).collect(),
        &rule.destination.addresses,
        &rule.destination.ports,
        rule.destination.protocol,
        (rule.origin.line, rule.origin.column, &rule.origin.file),
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::rules::parse::parse_file;
    use crate::rules::Sha256Digest;
    use crate::unit::{parse_cgroup_path, UnitInfo};

    const DIGEST: &str = "5d41402abc4b2a76b9719d911017c5925d41402abc4b2a76b9719d911017c592";

    fn rules(text: &str) -> Vec<Rule> {
        parse_file(Path::new("/test.toml"), text).unwrap()
    }

    fn terminal() -> UnitInfo {
        parse_cgroup_path("/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-org.gnome.Terminal-4321.scope")
    }

    fn flow(protocol: Protocol, address: &str, port: u16) -> Flow {
        Flow {
            protocol,
            address: address.parse().unwrap(),
            port,
        }
    }

    /// Decides with the Terminal subject (curl, uid 1000) and returns the index of the winning
    /// rule in the file.
    fn winner(text: &str, flow: &Flow) -> Option<usize> {
        let unit = terminal();
        let digest: Sha256Digest = DIGEST.parse().unwrap();
        let subject = Subject {
            unit: &unit,
            exe: Some(Path::new("/usr/bin/curl")),
            sha256: Some(&digest),
            uid: 1000,
        };
        let rules = rules(text);
        let decided = decide(&rules, &subject, flow)?;
        rules.iter().position(|rule| std::ptr::eq(rule, decided))
    }

    #[test]
    fn precedence_table() {
        let web = flow(Protocol::Tcp, "10.1.2.3", 443);
        let sha = format!("sha256 = \"{DIGEST}\"");
        // Each case: the selectors of two rules, the flow, and the index of the rule that must win.
        let cases: Vec<(&str, String, String, Flow, usize)> = vec![
            (
                "priority beats identity",
                sha.clone(),
                "priority = 1".into(),
                web,
                1,
            ),
            (
                "negative priority loses",
                "priority = -1000".into(),
                "user = 1000".into(),
                web,
                1,
            ),
            (
                "sha256 beats exe",
                "exe = \"/usr/bin/curl\"".into(),
                sha.clone(),
                web,
                1,
            ),
            (
                "exe beats exact unit",
                "exe = \"/usr/bin/curl\"".into(),
                "unit = \"app-gnome-org.gnome.Terminal-4321.scope\"".into(),
                web,
                0,
            ),
            (
                "exact unit beats app",
                "app = \"org.gnome.Terminal\"".into(),
                "unit = \"app-gnome-org.gnome.Terminal-4321.scope\"".into(),
                web,
                1,
            ),
            (
                "app beats unit glob",
                "unit = \"app-*.scope\"".into(),
                "app = \"org.gnome.*\"".into(),
                web,
                1,
            ),
            (
                "unit glob beats slice",
                "unit = \"app.slice\"".into(),
                "unit = \"app-*.scope\"".into(),
                web,
                1,
            ),
            (
                "slice beats user",
                "user = 1000".into(),
                "unit = \"user.slice\"".into(),
                web,
                1,
            ),
            (
                "user beats global",
                "user = 1000".into(),
                "comment = \"global\"".into(),
                web,
                0,
            ),
            (
                "highest selector counts",
                "exe = \"/usr/bin/curl\"\nuser = 1000".into(),
                sha.clone(),
                web,
                1,
            ),
            (
                "identity beats address",
                "exe = \"/usr/bin/curl\"".into(),
                "address = \"10.1.2.3\"".into(),
                web,
                0,
            ),
            (
                "longer prefix wins",
                "address = \"10.0.0.0/8\"".into(),
                "address = \"10.1.0.0/16\"".into(),
                web,
                1,
            ),
            (
                "longest listed prefix counts",
                "address = [\"10.0.0.0/8\", \"10.1.2.3\"]".into(),
                "address = \"10.1.0.0/16\"".into(),
                web,
                0,
            ),
            (
                "any ipv4 beats no address",
                "comment = \"x\"".into(),
                "address = \"0.0.0.0/0\"".into(),
                web,
                1,
            ),
            (
                "address beats port",
                "port = 443".into(),
                "address = \"0.0.0.0/0\"".into(),
                web,
                1,
            ),
            (
                "single port beats range",
                "port = \"1-1024\"".into(),
                "port = 443".into(),
                web,
                1,
            ),
            (
                "narrow range beats wide",
                "port = \"1-1024\"".into(),
                "port = \"440-450\"".into(),
                web,
                1,
            ),
            (
                "two ports beat a range",
                "port = \"440-450\"".into(),
                "port = [443, 8443]".into(),
                web,
                1,
            ),
            (
                "range beats any port",
                "port = \"1-65535\"".into(),
                "protocol = \"tcp\"".into(),
                web,
                0,
            ),
            (
                "port beats protocol",
                "port = 443".into(),
                "protocol = \"tcp\"".into(),
                web,
                0,
            ),
            (
                "protocol beats any",
                "protocol = \"any\"".into(),
                "protocol = \"tcp\"".into(),
                web,
                1,
            ),
            (
                "mapped flow uses ipv4 prefix",
                "address = \"::/0\"".into(),
                "address = \"10.0.0.0/8\"".into(),
                flow(Protocol::Tcp, "::ffff:10.1.2.3", 443),
                1,
            ),
        ];
        for (name, first, second, flow, expected) in cases {
            // Opposite actions in both orders, so that the action tie-break cannot decide.
            for (first_action, second_action) in [("allow", "deny"), ("deny", "allow")] {
                let text = format!(
                    "[[rule]]\naction = \"{first_action}\"\n{first}\n[[rule]]\naction = \"{second_action}\"\n{second}\n"
                );
                assert_eq!(
                    winner(&text, &flow),
                    Some(expected),
                    "case {name:?}\n{text}"
                );
            }
        }
    }

    #[test]
    fn action_breaks_full_tie() {
        let web = flow(Protocol::Tcp, "10.1.2.3", 443);
        let text = "[[rule]]\naction = \"allow\"\n[[rule]]\naction = \"ask\"\n[[rule]]\naction = \"deny\"\n";
        assert_eq!(winner(text, &web), Some(2));
        let text = "[[rule]]\naction = \"ask\"\n[[rule]]\naction = \"allow\"\n";
        assert_eq!(winner(text, &web), Some(0));
    }

    #[test]
    fn no_match_is_none() {
        let web = flow(Protocol::Tcp, "10.1.2.3", 443);
        let text = "[[rule]]\naction = \"deny\"\nuser = 0\n[[rule]]\naction = \"deny\"\nport = 80\n[[rule]]\naction = \"deny\"\nprotocol = \"udp\"\n";
        assert_eq!(winner(text, &web), None);
        assert_eq!(winner("", &web), None);
    }

    #[test]
    fn rank_layout() {
        let rule = |text: &str| rules(&format!("[[rule]]\naction = \"allow\"\n{text}\n")).remove(0);

        assert_eq!(rank(&rule("priority = -1000"), 0), 0);
        assert_eq!(rank(&rule(""), 0), 1000 << 30);
        assert_eq!(rank(&rule("priority = 1000"), 0), 2000 << 30);
        assert_eq!(
            rank(
                &rule(&format!("sha256 = \"{DIGEST}\"\npriority = -1000")),
                0
            ),
            7 << 27
        );
        assert_eq!(rank(&rule("priority = -1000"), 128), 128 << 19);
        assert_eq!(rank(&rule("priority = -1000\nport = 443"), 0), 65535 << 3);
        assert_eq!(
            rank(&rule("priority = -1000\nport = \"1-65535\""), 0),
            1 << 3
        );
        assert_eq!(
            rank(&rule("priority = -1000\nprotocol = \"udp\""), 0),
            1 << 2
        );

        let deny = rules("[[rule]]\naction = \"deny\"\npriority = -1000\n").remove(0);
        let ask = rules("[[rule]]\naction = \"ask\"\npriority = -1000\n").remove(0);
        assert_eq!(rank(&deny, 0), 2);
        assert_eq!(rank(&ask, 0), 1);

        let everything = rule(&format!(
            "sha256 = \"{DIGEST}\"\npriority = 1000\nport = 443\nprotocol = \"tcp\""
        ));
        let mut everything_deny = everything.clone();
        everything_deny.action = Action::Deny;
        assert_eq!(
            rank(&everything_deny, 128),
            (2000 << 30) | (7 << 27) | (128 << 19) | (65535 << 3) | 4 | 2
        );
        assert!(rank(&everything_deny, 128) < 1 << 41);
    }

    #[test]
    fn rank_clamps_out_of_range_inputs() {
        let mut rule = rules("[[rule]]\naction = \"allow\"\n").remove(0);
        rule.priority = i16::MAX;
        assert_eq!(rank(&rule, 255), (2000 << 30) | (128 << 19));
        rule.priority = i16::MIN;
        assert_eq!(rank(&rule, 0), 0);
    }

    #[test]
    fn order_of_rules_does_not_matter() {
        let text = format!(
            "[[rule]]\naction = \"allow\"\nport = 443\n\
             [[rule]]\naction = \"deny\"\naddress = \"10.0.0.0/8\"\n\
             [[rule]]\naction = \"ask\"\nunit = \"app.slice\"\n\
             [[rule]]\naction = \"ask\"\nunit = \"user.slice\"\n\
             [[rule]]\naction = \"deny\"\nsha256 = \"{DIGEST}\"\nport = 80\n\
             [[rule]]\naction = \"allow\"\nuser = 1000\n\
             [[rule]]\naction = \"allow\"\nuser = 1000\n"
        );
        let all = rules(&text);
        let unit = terminal();
        let digest: Sha256Digest = DIGEST.parse().unwrap();
        let subject = Subject {
            unit: &unit,
            exe: Some(Path::new("/usr/bin/curl")),
            sha256: Some(&digest),
            uid: 1000,
        };
        let flows = [
            flow(Protocol::Tcp, "10.1.2.3", 443),
            flow(Protocol::Tcp, "10.1.2.3", 80),
            flow(Protocol::Udp, "192.0.2.1", 53),
            flow(Protocol::Udp, "2001:db8::1", 443),
        ];

        let mut indexes: Vec<usize> = (0..all.len()).collect();
        let expected: Vec<Option<Rule>> = flows
            .iter()
            .map(|flow| decide(&all, &subject, flow).cloned())
            .collect();
        // Heap's algorithm visits every permutation of the seven rules.
        let mut counters = vec![0; indexes.len()];
        let mut position = 0;
        let mut checked = 1;
        while position < indexes.len() {
            if counters[position] < position {
                let swap_with = if position % 2 == 0 {
                    0
                } else {
                    counters[position]
                };
                indexes.swap(swap_with, position);
                let permuted: Vec<&Rule> = indexes.iter().map(|&index| &all[index]).collect();
                for (flow, expected) in flows.iter().zip(&expected) {
                    let decided = decide(permuted.iter().copied(), &subject, flow).cloned();
                    assert_eq!(&decided, expected, "order {indexes:?}, flow {flow:?}");
                }
                checked += 1;
                counters[position] += 1;
                position = 0;
            } else {
                counters[position] = 0;
                position += 1;
            }
        }
        assert_eq!(checked, 5040);
    }
}
