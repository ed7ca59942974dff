//! The verdict of the rules for a unit as a whole, whatever program in it connects and wherever
//! to.
//!
//! The eBPF gate decides each flow from all of its facts. nftables sees only the cgroup of a
//! socket, so it can enforce a verdict only where the unit alone settles it: a unit whose every
//! flow is denied. [`unit_policy`] finds those units, and `slicewallctl units` shows the result.

use crate::rules::precedence::rank;
use crate::rules::{Action, Rule};
use crate::unit::UnitInfo;

/// The verdict of a unit's flows, as far as the unit alone decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitPolicy {
    /// Every flow of every process in the unit is denied.
    Deny,
    /// Every flow of every process in the unit is allowed.
    Allow,
    /// Every flow is asked about.
    Ask,
    /// The verdict depends on the program, the user or the destination.
    Rules,
}

impl UnitPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            UnitPolicy::Deny => "deny",
            UnitPolicy::Allow => "allow",
            UnitPolicy::Ask => "ask",
            UnitPolicy::Rules => "rules",
        }
    }
}

/// Checks whether the unit-level selectors (`unit`, `app`) of a rule match the unit. Selectors
/// about the process (`exe`, `sha256`, `user`) are not checked: such a rule may match some
/// process of the unit.
pub fn may_match_unit(rule: &Rule, unit: &UnitInfo) -> bool {
    rule.selectors.may_match_unit(unit)
}

/// Counts the rules that name the unit, by `unit` or `app` (or a per-unit drop-in directory).
/// Global rules, and rules that select by process alone, are not counted.
pub fn rule_count(rules: &[Rule], unit: &UnitInfo) -> usize {
    rules
        .iter()
        .filter(|rule| rule.selectors.names_unit() && may_match_unit(rule, unit))
        .count()
}

/// Returns the unit's policy. A verdict other than [`UnitPolicy::Rules`] holds only when a rule
/// that covers every flow of the unit (no process selector, no destination) outranks every rule
/// with another action that may match any flow of the unit.
pub fn unit_policy(rules: &[Rule], unit: &UnitInfo) -> UnitPolicy {
    // The best rule that covers the whole unit, and its rank with no matched prefix.
    let covering = rules
        .iter()
        .filter(|rule| covers_unit(rule, unit))
        .map(|rule| (rank(rule, 0), rule.action))
        .max_by_key(|(rank, _)| *rank);
    let Some((covering_rank, action)) = covering else {
        return UnitPolicy::Rules;
    };
    let outranked = rules.iter().any(|rule| {
        rule.action != action
            && may_match_unit(rule, unit)
            && rank(rule, longest_prefix(rule)) > covering_rank
    });
    if outranked {
        return UnitPolicy::Rules;
    }
    match action {
        Action::Deny => UnitPolicy::Deny,
        Action::Allow => UnitPolicy::Allow,
        Action::Ask => UnitPolicy::Ask,
    }
}

/// Checks whether a rule matches every flow of every process in the unit.
fn covers_unit(rule: &Rule, unit: &UnitInfo) -> bool {
    let selectors = &rule.selectors;
    selectors.exe.is_none()
        && selectors.sha256.is_none()
        && selectors.user.is_none()
        && rule.destination.addresses.is_empty()
        && rule.destination.ports.is_empty()
        && rule.destination.protocol == crate::rules::Protocol::Any
        && may_match_unit(rule, unit)
}

/// Returns the longest prefix length, on the precedence scale, with which the rule can match a
/// flow.
fn longest_prefix(rule: &Rule) -> u8 {
    rule.destination
        .addresses
        .iter()
        .map(|net| match net {
            ipnet::IpNet::V4(net) => 96 + net.prefix_len(),
            ipnet::IpNet::V6(net) => net.prefix_len(),
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::parse_file;
    use crate::unit::parse_cgroup_path;
    use std::path::Path;

    fn rules(text: &str) -> Vec<Rule> {
        parse_file(Path::new("test.toml"), text).expect("test rules parse")
    }

    fn web() -> UnitInfo {
        parse_cgroup_path("/system.slice/web.service")
    }

    #[test]
    fn unit_deny_outranks_global_allow() {
        let rules = rules(
            r#"
            [[rule]]
            action = "allow"
            address = ["127.0.0.0/8"]
            [[rule]]
            action = "deny"
            unit = "web.service"
            "#,
        );
        assert_eq!(unit_policy(&rules, &web()), UnitPolicy::Deny);
        let other = parse_cgroup_path("/system.slice/db.service");
        assert_eq!(unit_policy(&rules, &other), UnitPolicy::Rules);
        assert_eq!(rule_count(&rules, &web()), 1);
        assert_eq!(rule_count(&rules, &other), 0);
    }

    #[test]
    fn exe_allow_breaks_unit_deny() {
        let rules = rules(
            r#"
            [[rule]]
            action = "deny"
            unit = "web.service"
            [[rule]]
            action = "allow"
            unit = "web.service"
            exe = "/usr/bin/curl"
            "#,
        );
        assert_eq!(unit_policy(&rules, &web()), UnitPolicy::Rules);
    }

    #[test]
    fn higher_priority_allow_breaks_a_unit_deny() {
        let rules = rules(
            r#"
            [[rule]]
            action = "deny"
            unit = "web.service"
            [[rule]]
            action = "allow"
            priority = 10
            address = ["192.0.2.1"]
            "#,
        );
        assert_eq!(unit_policy(&rules, &web()), UnitPolicy::Rules);
    }

    #[test]
    fn narrower_destination_deny_is_not_unit_wide() {
        let rules = rules(
            r#"
            [[rule]]
            action = "deny"
            unit = "web.service"
            port = [443]
            "#,
        );
        assert_eq!(unit_policy(&rules, &web()), UnitPolicy::Rules);
    }

    #[test]
    fn slice_and_app_rules_cover_units() {
        let rules = rules(
            r#"
            [[rule]]
            action = "allow"
            unit = "system.slice"
            [[rule]]
            action = "ask"
            app = "org.example.*"
            "#,
        );
        assert_eq!(unit_policy(&rules, &web()), UnitPolicy::Allow);
        let app = parse_cgroup_path(
            "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-org.example.App-7.scope",
        );
        assert_eq!(unit_policy(&rules, &app), UnitPolicy::Ask);
        assert_eq!(rule_count(&rules, &app), 1);
    }
}
