use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use super::*;
use crate::rules::{
    decide, Destination, Flow, Origin, PortRange, Selectors, Subject, UnitSelector,
};
use crate::unit::{parse_cgroup_path, UnitInfo};

const ASK: u8 = abi::VERDICT_DENY;

fn rule(action: Action, addresses: &[&str], ports: &[(u16, u16)], protocol: Protocol) -> Rule {
    Rule {
        origin: Origin {
            file: PathBuf::from("test.toml"),
            line: 1,
            column: 1,
        },
        action,
        priority: 0,
        selectors: Selectors::default(),
        destination: Destination {
            addresses: addresses
                .iter()
                .map(|text| text.parse::<IpNet>().unwrap())
                .collect(),
            ports: ports
                .iter()
                .map(|&(first, last)| PortRange { first, last })
                .collect(),
            protocol,
        },
    }
}

fn numbered(rules: &[Rule]) -> Vec<NumberedRule<'_>> {
    rules
        .iter()
        .enumerate()
        .map(|(index, rule)| NumberedRule {
            id: index as u32 + 1,
            rule,
            needs_exe: false,
        })
        .collect()
}

fn verdict_of(evaluation: Evaluation) -> Option<u8> {
    match evaluation {
        Evaluation::Matched(candidate) => Some(candidate.verdict),
        _ => None,
    }
}

#[test]
fn longest_prefix_carries_shorter_prefixes() {
    let rules = [
        rule(Action::Deny, &["192.0.2.0/24"], &[], Protocol::Any),
        rule(
            Action::Allow,
            &["192.0.2.7/32"],
            &[(443, 443)],
            Protocol::Tcp,
        ),
    ];
    let compiled = compile(&numbered(&rules), ASK);
    let host: IpAddr = "192.0.2.7".parse().unwrap();
    let tcp = libc::IPPROTO_TCP as u8;
    let udp = libc::IPPROTO_UDP as u8;

    assert_eq!(
        verdict_of(compiled.evaluate(host, tcp, 443)),
        Some(abi::VERDICT_ALLOW),
        "the /32 rule"
    );
    assert_eq!(
        verdict_of(compiled.evaluate(host, tcp, 80)),
        Some(abi::VERDICT_DENY),
        "the /24 below it"
    );
    assert_eq!(
        verdict_of(compiled.evaluate(host, udp, 443)),
        Some(abi::VERDICT_DENY),
        "protocol not covered"
    );
    assert_eq!(
        compiled.evaluate("198.51.100.1".parse().unwrap(), tcp, 443),
        Evaluation::NoMatch
    );
}

#[test]
fn ipv6_prefix_never_contains_ipv4() {
    let rules = [rule(Action::Deny, &["::/0"], &[], Protocol::Any)];
    let compiled = compile(&numbered(&rules), ASK);
    let tcp = libc::IPPROTO_TCP as u8;
    assert_eq!(
        compiled.evaluate("192.0.2.1".parse().unwrap(), tcp, 80),
        Evaluation::NoMatch
    );
    assert_eq!(
        compiled.evaluate("::ffff:192.0.2.1".parse().unwrap(), tcp, 80),
        Evaluation::NoMatch,
        "mapped is IPv4"
    );
    assert_eq!(
        verdict_of(compiled.evaluate("2001:db8::1".parse().unwrap(), tcp, 80)),
        Some(abi::VERDICT_DENY)
    );
}

#[test]
fn mapped_address_is_judged_as_ipv4() {
    let rules = [rule(Action::Deny, &["192.0.2.0/24"], &[], Protocol::Any)];
    let compiled = compile(&numbered(&rules), ASK);
    let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
    assert_eq!(
        verdict_of(compiled.evaluate(mapped, libc::IPPROTO_UDP as u8, 53)),
        Some(abi::VERDICT_DENY)
    );
}

#[test]
fn rules_without_address_reach_every_prefix() {
    let rules = [
        rule(Action::Allow, &["192.0.2.0/24"], &[], Protocol::Any),
        rule(Action::Deny, &[], &[(25, 25)], Protocol::Tcp),
    ];
    let compiled = compile(&numbered(&rules), ASK);
    let tcp = libc::IPPROTO_TCP as u8;
    // Port 25 deny is less specific by address, so the /24 allow wins inside it...
    assert_eq!(
        verdict_of(compiled.evaluate("192.0.2.1".parse().unwrap(), tcp, 25)),
        Some(abi::VERDICT_ALLOW)
    );
    // ...and the deny applies everywhere else.
    assert_eq!(
        verdict_of(compiled.evaluate("198.51.100.1".parse().unwrap(), tcp, 25)),
        Some(abi::VERDICT_DENY)
    );
    assert_eq!(
        verdict_of(compiled.evaluate("2001:db8::1".parse().unwrap(), tcp, 25)),
        Some(abi::VERDICT_DENY)
    );
}

#[test]
fn ask_rules_compile_to_the_fallback() {
    let rules = [rule(Action::Ask, &[], &[], Protocol::Any)];
    let compiled = compile(&numbered(&rules), abi::VERDICT_ALLOW);
    let Evaluation::Matched(candidate) = compiled.evaluate("192.0.2.1".parse().unwrap(), 6, 80)
    else {
        panic!("ask rule did not match");
    };
    assert_eq!(candidate.verdict, abi::VERDICT_ALLOW);
    assert_eq!(candidate.flags & abi::CANDIDATE_ASK, abi::CANDIDATE_ASK);
}

#[test]
fn shadowed_candidates_are_dropped_and_long_lists_overflow() {
    let mut rules = vec![rule(Action::Deny, &["192.0.2.0/24"], &[], Protocol::Any)];
    rules.push(rule(
        Action::Allow,
        &["192.0.2.0/24"],
        &[(80, 80)],
        Protocol::Tcp,
    ));
    let compiled = compile(&numbered(&rules), ASK);
    // Both rules match; the port rule ranks higher (narrower port), and the any-port deny after
    // it stays because it covers other ports.
    assert!(matches!(&compiled.prefixes[0].1, CandidateList::Candidates(list) if list.len() == 2));

    let many: Vec<Rule> = (1..=40)
        .map(|port| rule(Action::Deny, &[], &[(port, port)], Protocol::Any))
        .collect();
    let compiled = compile(&numbered(&many), ASK);
    assert_eq!(compiled.prefixes[0].1, CandidateList::Overflow);
    assert_eq!(compiled.prefixes[0].1.to_gate().length, abi::LIST_OVERFLOW);
    assert_eq!(
        compiled.evaluate("192.0.2.1".parse().unwrap(), 6, 5),
        Evaluation::Overflow
    );
}

/// Cgroup paths of the subjects in the randomized tests: units that the unit selectors of
/// [`random_unit_selectors`] match in different combinations.
const SUBJECT_CGROUPS: [&str; 5] = [
    "/system.slice/app.service",
    "/system.slice/other.service",
    "/user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.foo.App-12.scope",
    "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-org.gnome.Terminal-3.scope",
    "/user.slice/user-1001.slice/user@1001.service/app.slice/app-flatpak-org.foo.App-12.scope",
];

/// Unit selectors of every kind, including those that per-unit drop-in directories produce.
fn unit_selector_pool() -> [UnitSelector; 9] {
    [
        UnitSelector::Exact("app.service".into()),
        UnitSelector::Exact("app-flatpak-org.foo.App-12.scope".into()),
        UnitSelector::Exact("user@1000.service".into()),
        UnitSelector::Prefix("app-.scope".into()),
        UnitSelector::Prefix("app-flatpak-.scope".into()),
        UnitSelector::Prefix("user-.slice".into()),
        UnitSelector::Slice("system.slice".into()),
        UnitSelector::Slice("user.slice".into()),
        UnitSelector::Slice("-.slice".into()),
    ]
}

/// Gives a rule a random unit selector, or none, and sometimes units it excludes, as a rule
/// from a per-unit drop-in file replaced by more specific directories has.
fn random_unit_selectors(random: &mut fastrand::Rng, selectors: &mut Selectors) {
    let pool = unit_selector_pool();
    if random.bool() {
        selectors.unit = Some(pool[random.usize(0..pool.len())].clone());
    }
    if random.usize(0..3) == 0 {
        selectors.except = (0..random.usize(1..3))
            .map(|_| pool[random.usize(0..pool.len())].clone())
            .collect();
    }
}

/// Counts the (rule, subject) pairs in which `except` alone keeps the rule from applying, to
/// show that the randomized rules exercise it.
fn count_exclusions(rules: &[Rule], units: &[UnitInfo]) -> usize {
    let mut count = 0;
    for rule in rules {
        let without_except = Selectors {
            except: Vec::new(),
            ..rule.selectors.clone()
        };
        for unit in units {
            let subject = Subject {
                unit,
                exe: None,
                sha256: None,
                uid: 1000,
            };
            if without_except.matches(&subject) && !rule.selectors.matches(&subject) {
                count += 1;
            }
        }
    }
    count
}

/// The gate's two lookups (identity policy, then global policy, best rank wins) must reach the
/// verdict that [`decide`] reaches over all rules, for random rule sets, subjects and flows.
#[test]
fn compiled_tables_agree_with_decide() {
    let prefixes = [
        "192.0.2.0/24",
        "192.0.2.128/25",
        "192.0.2.7/32",
        "198.51.100.0/24",
        "0.0.0.0/0",
        "2001:db8::/32",
        "2001:db8:1::/48",
        "2001:db8:1::7/128",
        "::/0",
    ];
    let addresses = [
        "192.0.2.7",
        "192.0.2.200",
        "192.0.2.1",
        "198.51.100.3",
        "203.0.113.1",
        "::ffff:192.0.2.7",
        "2001:db8:1::7",
        "2001:db8:2::1",
        "2001:db9::1",
    ];
    let ports = [(53, 53), (80, 80), (443, 443), (8000, 8099), (1, 1023)];
    let units: Vec<UnitInfo> = SUBJECT_CGROUPS
        .iter()
        .map(|path| parse_cgroup_path(path))
        .collect();
    let mut random = fastrand::Rng::with_seed(7);
    let mut exclusions = 0;

    for round in 0..300 {
        let count = random.usize(1..12);
        let rules: Vec<Rule> = (0..count)
            .map(|_| {
                let action = [Action::Allow, Action::Deny, Action::Ask][random.usize(0..3)];
                let address_count = random.usize(0..3);
                let chosen: Vec<&str> = (0..address_count)
                    .map(|_| prefixes[random.usize(0..prefixes.len())])
                    .collect();
                let port_count = random.usize(0..3);
                let chosen_ports: Vec<(u16, u16)> = (0..port_count)
                    .map(|_| ports[random.usize(0..ports.len())])
                    .collect();
                let protocol = [Protocol::Any, Protocol::Tcp, Protocol::Udp][random.usize(0..3)];
                let mut rule = rule(action, &chosen, &chosen_ports, protocol);
                rule.priority = [0, 0, 0, 5, -5][random.usize(0..5)];
                random_unit_selectors(&mut random, &mut rule.selectors);
                rule
            })
            .collect();
        exclusions += count_exclusions(&rules, &units);
        let all = numbered(&rules);
        let global: Vec<NumberedRule<'_>> = all
            .iter()
            .filter(|numbered| numbered.rule.selectors.is_empty())
            .copied()
            .collect();
        let global = compile(&global, ASK);

        for unit in &units {
            let subject = Subject {
                unit,
                exe: None,
                sha256: None,
                uid: 1000,
            };
            let identity: Vec<NumberedRule<'_>> = identity_rule_indexes(&rules, &subject)
                .into_iter()
                .map(|index| all[index])
                .collect();
            let identity = compile(&identity, ASK);

            for address in addresses {
                for port in [53, 80, 443, 8050, 9000] {
                    for (protocol, protocol_number) in [(Protocol::Tcp, 6u8), (Protocol::Udp, 17u8)]
                    {
                        let address: IpAddr = address.parse().unwrap();
                        let flow = Flow {
                            protocol,
                            address,
                            port,
                        };
                        let expected =
                            decide(&rules, &subject, &flow).map(|rule| match rule.action {
                                Action::Allow => abi::VERDICT_ALLOW,
                                _ => abi::VERDICT_DENY,
                            });
                        let evaluations = [
                            identity.evaluate(address, protocol_number, port),
                            global.evaluate(address, protocol_number, port),
                        ];
                        if evaluations.contains(&Evaluation::Overflow) {
                            continue;
                        }
                        let best = evaluations
                            .iter()
                            .filter_map(|evaluation| match evaluation {
                                Evaluation::Matched(candidate) => Some(*candidate),
                                _ => None,
                            })
                            .max_by_key(|candidate| candidate.rank)
                            .map(|candidate| candidate.verdict);
                        assert_eq!(
                            best, expected,
                            "round {round}, {}, {flow:?}, rules {rules:#?}",
                            unit.cgroup_path
                        );
                    }
                }
            }
        }
    }
    assert!(
        exclusions > 100,
        "except decided only {exclusions} rule and subject pairs"
    );
}

/// Until the gate has a process's executable, it evaluates the cgroup's policy, in which rules
/// that name an executable are marked. Whenever that evaluation decides (the best candidate is
/// not marked), the verdict must be the one [`decide`] reaches for every possible executable.
#[test]
fn unit_policy_decides_only_what_no_executable_changes() {
    let prefixes = ["192.0.2.0/24", "192.0.2.7/32", "0.0.0.0/0", "2001:db8::/32"];
    let addresses = ["192.0.2.7", "192.0.2.1", "198.51.100.3", "2001:db8::1"];
    let executables = ["/usr/bin/curl", "/usr/bin/wget"];
    let units: Vec<UnitInfo> = SUBJECT_CGROUPS
        .iter()
        .map(|path| parse_cgroup_path(path))
        .collect();
    let mut random = fastrand::Rng::with_seed(11);
    let mut decided = 0;
    let mut exclusions = 0;

    for round in 0..300 {
        let count = random.usize(1..8);
        let rules: Vec<Rule> = (0..count)
            .map(|_| {
                let action = [Action::Allow, Action::Deny][random.usize(0..2)];
                let chosen: Vec<&str> = (0..random.usize(0..2))
                    .map(|_| prefixes[random.usize(0..prefixes.len())])
                    .collect();
                let ports: &[(u16, u16)] = if random.bool() { &[(443, 443)] } else { &[] };
                let mut rule = rule(action, &chosen, ports, Protocol::Any);
                rule.priority = [0, 0, 5][random.usize(0..3)];
                if random.bool() {
                    rule.selectors.exe = Some(PathBuf::from(executables[random.usize(0..2)]));
                }
                random_unit_selectors(&mut random, &mut rule.selectors);
                rule
            })
            .collect();
        exclusions += count_exclusions(&rules, &units);
        let numbered_rules: Vec<NumberedRule<'_>> = rules
            .iter()
            .enumerate()
            .map(|(index, rule)| NumberedRule {
                id: index as u32 + 1,
                rule,
                needs_exe: names_executable(rule),
            })
            .collect();
        let global: Vec<NumberedRule<'_>> = numbered_rules
            .iter()
            .filter(|numbered| numbered.rule.selectors.is_empty())
            .copied()
            .collect();
        let global = compile(&global, ASK);

        for unit in &units {
            let unit_rules: Vec<NumberedRule<'_>> = unit_rule_indexes(&rules, unit, 1000)
                .into_iter()
                .map(|index| numbered_rules[index])
                .collect();
            let unit_policy = compile(&unit_rules, ASK);

            for address in addresses {
                for port in [443, 80] {
                    let address: IpAddr = address.parse().unwrap();
                    let best = [
                        unit_policy.evaluate(address, 6, port),
                        global.evaluate(address, 6, port),
                    ]
                    .iter()
                    .filter_map(|evaluation| match evaluation {
                        Evaluation::Matched(candidate) => Some(*candidate),
                        _ => None,
                    })
                    .max_by_key(|candidate| candidate.rank);
                    if best.is_some_and(|candidate| candidate.flags & abi::CANDIDATE_NEEDS_EXE != 0)
                    {
                        continue;
                    }
                    decided += 1;
                    let verdict = best.map(|candidate| candidate.verdict);
                    for exe in executables {
                        let subject = Subject {
                            unit,
                            exe: Some(std::path::Path::new(exe)),
                            sha256: None,
                            uid: 1000,
                        };
                        let flow = Flow {
                            protocol: Protocol::Tcp,
                            address,
                            port,
                        };
                        let expected =
                            decide(&rules, &subject, &flow).map(|rule| match rule.action {
                                Action::Allow => abi::VERDICT_ALLOW,
                                _ => abi::VERDICT_DENY,
                            });
                        assert_eq!(
                            verdict, expected,
                            "round {round}, {}, {exe}, {flow:?}, rules {rules:#?}",
                            unit.cgroup_path
                        );
                    }
                }
            }
        }
    }
    assert!(
        decided > 2500,
        "the unit policy decided only {decided} flows"
    );
    assert!(
        exclusions > 100,
        "except decided only {exclusions} rule and subject pairs"
    );
}
