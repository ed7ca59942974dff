//! The daemon's side of the gate's tables: numbered rules, policies per identity, and the
//! candidate lists they compile to. Every identifier in the gate's maps comes from one counter
//! that is kept in the gate's configuration map, so a restarted daemon never reuses the identifier
//! of an entry an earlier daemon left behind.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::exe::ExeIdentity;
use crate::kernel::abi::{self, SubjectKey, UnitKey};
use crate::kernel::gate::{Gate, GateError};
use crate::policy::{self, CandidateList, NumberedRule};
use crate::rules::{self, Action, Flow, Rule, Subject};
use crate::unit::UnitInfo;

/// Unit, executable, user and policy of one identity the gate reported.
#[derive(Clone, Debug)]
pub struct SubjectInfo {
    pub unit: Arc<UnitInfo>,
    pub exe: Arc<ExeIdentity>,
    pub uid: u32,
    pub policy: u32,
}

impl SubjectInfo {
    pub fn subject(&self) -> Subject<'_> {
        Subject {
            unit: &self.unit,
            // A path that does not name the running file in the daemon's mount namespace matches
            // no `exe` rule; the digest still matches `sha256` rules.
            exe: self.exe.path_verified.then_some(self.exe.path.as_path()),
            sha256: Some(&self.exe.sha256),
            uid: self.uid,
        }
    }
}

/// A verdict reached in user space, in the gate's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub verdict: u8,
    pub reason: u8,
    pub rule_id: u32,
}

#[derive(Default)]
struct Generation {
    rules: Vec<Rule>,
    ids: Vec<u32>,
    global_policy: u32,
    policies: HashMap<Vec<u32>, u32>,
    /// Policies for processes whose executable is not known yet, by the rules they contain.
    unit_policies: HashMap<Vec<u32>, u32>,
    lists: HashMap<CandidateList, u32>,
}

pub struct Tables {
    next_id: u32,
    ask_verdict: u8,
    current: Generation,
    /// Rule origins ("file:line") of the current and the previous rule set, so events the gate
    /// sent just before a reload are still attributed.
    origins: HashMap<u32, String>,
    previous_origins: HashMap<u32, String>,
    subjects: HashMap<SubjectKey, SubjectInfo>,
    units: HashMap<UnitKey, Arc<UnitInfo>>,
}

impl Tables {
    pub fn new(next_id: u32, ask_verdict: u8) -> Self {
        Tables {
            next_id: next_id.max(1),
            ask_verdict,
            current: Generation::default(),
            origins: HashMap::new(),
            previous_origins: HashMap::new(),
            subjects: HashMap::new(),
            units: HashMap::new(),
        }
    }

    pub fn rule_count(&self) -> usize {
        self.current.rules.len()
    }

    /// Returns the rules in force.
    pub fn rules(&self) -> &[Rule] {
        &self.current.rules
    }

    /// Hands out the next identifier for a rule, policy, list or executable.
    pub fn allocate(&mut self) -> u32 {
        let id = self.next_id;
        // Zero means "none" in every table, so the counter skips it when it wraps.
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    /// Installs a new rule set: compiles it under fresh identifiers, points the gate at it, then
    /// removes the previous set's entries.
    ///
    /// TODO: an error part way (a full map) leaves some identities on the new policies and the
    /// global policy on the old one; the previous rules should be restored instead.
    pub fn install(&mut self, gate: &mut Gate, rules: Vec<Rule>) -> Result<(), GateError> {
        let previous = std::mem::take(&mut self.current);
        self.current.ids = rules.iter().map(|_| self.allocate()).collect();
        self.current.rules = rules;
        self.previous_origins = std::mem::take(&mut self.origins);
        self.origins = self
            .current
            .ids
            .iter()
            .zip(&self.current.rules)
            .map(|(id, rule)| (*id, rule.origin.to_string()))
            .collect();

        let global: Vec<usize> = (0..self.current.rules.len())
            .filter(|&index| self.current.rules[index].selectors.is_empty())
            .collect();
        let global_policy = self.write_policy(gate, &global)?;
        self.current.global_policy = global_policy;

        let keys: Vec<SubjectKey> = self.subjects.keys().copied().collect();
        for key in keys {
            let info = self.subjects[&key].clone();
            let policy = self.policy_for(gate, &info.subject())?;
            gate.set_subject(key, policy)?;
            if let Some(entry) = self.subjects.get_mut(&key) {
                entry.policy = policy;
            }
        }

        let units: Vec<(UnitKey, Arc<UnitInfo>)> = self
            .units
            .iter()
            .map(|(key, unit)| (*key, Arc::clone(unit)))
            .collect();
        for (key, unit) in units {
            let policy = self.unit_policy_for(gate, &unit, key.uid)?;
            gate.set_unit(key, policy)?;
        }

        let mut config = gate.read_config()?;
        config.global_policy = global_policy;
        config.next_id = self.next_id;
        // Voids the verdicts sockets cached under the previous rules; zero is never used, so a
        // fresh socket's zeroed cache never matches.
        config.generation = config.generation.wrapping_add(1).max(1);
        gate.write_config(config)?;

        let policies: HashSet<u32> = self
            .current
            .policies
            .values()
            .chain(self.current.unit_policies.values())
            .copied()
            .chain(std::iter::once(global_policy))
            .collect();
        let lists: HashSet<u32> = self.current.lists.values().copied().collect();
        drop(previous);
        gate.prune_policies(
            |policy| policies.contains(&policy),
            |list| lists.contains(&list),
        );
        Ok(())
    }

    /// Records an identity and points the gate's subject entry at its policy.
    pub fn add_subject(
        &mut self,
        gate: &mut Gate,
        key: SubjectKey,
        mut info: SubjectInfo,
    ) -> Result<u32, GateError> {
        let policy = self.policy_for(gate, &info.subject())?;
        info.policy = policy;
        gate.set_subject(key, policy)?;
        self.subjects.insert(key, info);
        Ok(policy)
    }

    /// Points the gate's entry for a cgroup and user at the policy used while a process's
    /// executable is not known yet. Does nothing for a pair already recorded.
    pub fn add_unit(
        &mut self,
        gate: &mut Gate,
        key: UnitKey,
        unit: Arc<UnitInfo>,
    ) -> Result<(), GateError> {
        if self.units.contains_key(&key) {
            return Ok(());
        }
        let policy = self.unit_policy_for(gate, &unit, key.uid)?;
        gate.set_unit(key, policy)?;
        self.units.insert(key, unit);
        Ok(())
    }

    /// Returns every cgroup that an identity or a cgroup-and-user policy refers to.
    pub fn cgroup_ids(&self) -> HashSet<u64> {
        self.subjects
            .keys()
            .map(|key| key.cgroup_id)
            .chain(self.units.keys().map(|key| key.cgroup_id))
            .collect()
    }

    /// Forgets the identities and cgroup-and-user policies of cgroups that no longer exist, in
    /// memory and in the gate, so the maps do not fill up as units come and go.
    pub fn forget_cgroups(&mut self, gate: &mut Gate, gone: &HashSet<u64>) {
        self.subjects.retain(|key, _| {
            let keep = !gone.contains(&key.cgroup_id);
            if !keep {
                let _ = gate.subjects.remove(key);
            }
            keep
        });
        self.units.retain(|key, _| {
            let keep = !gone.contains(&key.cgroup_id);
            if !keep {
                let _ = gate.units.remove(key);
            }
            keep
        });
    }

    pub fn subject(&self, key: &SubjectKey) -> Option<&SubjectInfo> {
        self.subjects.get(key)
    }

    /// Finds or compiles the policy of the identity-specific rules that match `subject`.
    fn policy_for(&mut self, gate: &mut Gate, subject: &Subject<'_>) -> Result<u32, GateError> {
        let matching = policy::identity_rule_indexes(&self.current.rules, subject);
        self.policy_of(gate, &matching, false)
    }

    /// Finds or compiles the policy for processes of `unit` and `uid` whose executable is not
    /// known yet. It contains the identity rules whose other selectors match. Those that name an
    /// executable are marked, so the gate leaves the flows they could decide to the daemon.
    fn unit_policy_for(
        &mut self,
        gate: &mut Gate,
        unit: &UnitInfo,
        uid: u32,
    ) -> Result<u32, GateError> {
        let matching = policy::unit_rule_indexes(&self.current.rules, unit, uid);
        self.policy_of(gate, &matching, true)
    }

    /// Finds or compiles the policy of the rules at `indexes`. With `exe_unknown`, the policy is
    /// for processes whose executable is not known yet, and rules that name one are marked.
    fn policy_of(
        &mut self,
        gate: &mut Gate,
        indexes: &[usize],
        exe_unknown: bool,
    ) -> Result<u32, GateError> {
        if indexes.is_empty() {
            return Ok(abi::POLICY_NONE);
        }
        let ids: Vec<u32> = indexes
            .iter()
            .map(|&index| self.current.ids[index])
            .collect();
        let cached = if exe_unknown {
            self.current.unit_policies.get(&ids)
        } else {
            self.current.policies.get(&ids)
        };
        if let Some(&policy) = cached {
            return Ok(policy);
        }
        let policy = self.write_policy_marked(gate, indexes, exe_unknown)?;
        if exe_unknown {
            self.current.unit_policies.insert(ids, policy);
        } else {
            self.current.policies.insert(ids, policy);
        }
        Ok(policy)
    }

    fn write_policy(&mut self, gate: &mut Gate, indexes: &[usize]) -> Result<u32, GateError> {
        self.write_policy_marked(gate, indexes, false)
    }

    /// Compiles and writes a policy. With `mark_exe_rules`, rules that name an executable are
    /// marked as needing it.
    fn write_policy_marked(
        &mut self,
        gate: &mut Gate,
        indexes: &[usize],
        mark_exe_rules: bool,
    ) -> Result<u32, GateError> {
        let policy_id = self.allocate();
        let numbered: Vec<NumberedRule<'_>> = indexes
            .iter()
            .map(|&index| {
                let rule = &self.current.rules[index];
                NumberedRule {
                    id: self.current.ids[index],
                    rule,
                    needs_exe: mark_exe_rules && policy::names_executable(rule),
                }
            })
            .collect();
        let compiled = policy::compile(&numbered, self.ask_verdict);
        for (prefix, list) in compiled.prefixes {
            let list_id = match self.current.lists.get(&list) {
                Some(&id) => id,
                None => {
                    let id = self.allocate();
                    gate.lists.insert(id, list.to_gate(), 0).map_err(|source| {
                        GateError::MapUpdate {
                            name: "slicewall_lists",
                            source,
                        }
                    })?;
                    self.current.lists.insert(list, id);
                    id
                }
            };
            gate.set_prefix(
                policy_id,
                prefix.key_bits(),
                prefix.family,
                prefix.address,
                list_id,
            )?;
        }
        Ok(policy_id)
    }

    /// Decides a flow in user space, with the same precedence the compiled tables encode.
    pub fn decide(&self, subject: &Subject<'_>, flow: &Flow) -> Verdict {
        let Some(rule) = rules::decide(self.current.rules.iter(), subject, flow) else {
            return Verdict {
                verdict: abi::VERDICT_ALLOW,
                reason: abi::REASON_NO_RULE,
                rule_id: 0,
            };
        };
        let index = self
            .current
            .rules
            .iter()
            .position(|candidate| std::ptr::eq(candidate, rule))
            .expect("decide returns one of the rules it was given");
        let rule_id = self.current.ids[index];
        match rule.action {
            Action::Allow => Verdict {
                verdict: abi::VERDICT_ALLOW,
                reason: abi::REASON_RULE,
                rule_id,
            },
            Action::Deny => Verdict {
                verdict: abi::VERDICT_DENY,
                reason: abi::REASON_RULE,
                rule_id,
            },
            Action::Ask => Verdict {
                verdict: self.ask_verdict,
                reason: abi::REASON_ASK_FALLBACK,
                rule_id,
            },
        }
    }

    /// Finds a rule of the current set by its identifier in the gate.
    pub fn rule(&self, rule_id: u32) -> Option<&Rule> {
        let index = self.current.ids.iter().position(|&id| id == rule_id)?;
        self.current.rules.get(index)
    }

    /// Looks up the "file:line" of a rule, for audit records.
    pub fn origin(&self, rule_id: u32) -> Option<&str> {
        self.origins
            .get(&rule_id)
            .or_else(|| self.previous_origins.get(&rule_id))
            .map(String::as_str)
    }
}
