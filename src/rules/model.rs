//! The rule model: what a rule selects (who connects) and where to (destination), and how one
//! rule matches one connection attempt.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use globset::{GlobBuilder, GlobMatcher};
use ipnet::IpNet;

use crate::unit::UnitInfo;

/// The verdict of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Allow,
    Deny,
    /// Hold the flow and let the user decide.
    Ask,
}

impl Action {
    /// Returns the spelling used in rule files.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Ask => "ask",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Transport protocol of a rule or a flow. A flow is always `Tcp` or `Udp`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    #[default]
    Any,
    Tcp,
    Udp,
}

impl Protocol {
    /// Returns the spelling used in rule files.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Any => "any",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Inclusive range of ports, `first <= last`, both in 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(formatter, "{}", self.first)
        } else {
            write!(formatter, "{}-{}", self.first, self.last)
        }
    }
}

/// Position of a rule's `[[rule]]` header in its file. Line and column are 1-based, and the
/// column counts characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    pub file: PathBuf,
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Origin {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:{}", self.file.display(), self.line)
    }
}

/// A glob over unit names or application IDs, kept with its source text.
///
/// `*`, `?`, `[...]` and `{a,b}` have their usual meaning. A backslash is a literal character
/// and not an escape, because escaped unit names contain `\x2d`. Unit names never contain a
/// glob metacharacter. An application ID that does can be matched with a class such as `[*]`.
#[derive(Clone)]
pub struct GlobPattern {
    source: String,
    matcher: GlobMatcher,
}

impl GlobPattern {
    pub fn new(source: &str) -> Result<Self, globset::Error> {
        let glob = GlobBuilder::new(source).backslash_escape(false).build()?;
        Ok(GlobPattern {
            source: source.to_owned(),
            matcher: glob.compile_matcher(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.matcher.is_match(text)
    }

    /// Checks whether `text` contains a glob metacharacter, which makes it a glob rather than
    /// a plain name.
    pub fn is_glob(text: &str) -> bool {
        text.contains(['*', '?', '[', ']', '{', '}'])
    }
}

impl PartialEq for GlobPattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for GlobPattern {}

impl fmt::Debug for GlobPattern {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "GlobPattern({:?})", self.source)
    }
}

/// The `unit` selector of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitSelector {
    /// A unit name. It matches the leaf unit, and `user@UID.service` also matches every unit
    /// that user manager runs.
    Exact(String),
    /// A unit glob, matched like `Exact`. A glob that ends in `.slice` instead matches when
    /// any slice on the path matches it.
    Glob(GlobPattern),
    /// A slice name: any unit inside that slice at any depth. `-.slice`, the root slice,
    /// contains every unit.
    Slice(String),
    /// A unit name prefix in systemd's drop-in form, such as `app-flatpak-.scope`: the part
    /// before the type suffix ends in '-', and the selector matches every name that starts with
    /// that part and has the same suffix. It is matched like `Exact`, or with the suffix
    /// `.slice` against every slice on the path, like `Slice`. Only per-unit drop-in
    /// directories create it, no rule file key does.
    Prefix(String),
}

impl UnitSelector {
    /// Returns the selector as written in the rule file.
    pub fn as_str(&self) -> &str {
        match self {
            UnitSelector::Exact(name) | UnitSelector::Slice(name) | UnitSelector::Prefix(name) => {
                name
            }
            UnitSelector::Glob(pattern) => pattern.as_str(),
        }
    }

    pub fn matches(&self, unit: &UnitInfo) -> bool {
        // NOTE: units under user@UID.service are named by that user, who can create a user
        // service with any name. A rule that allows by `unit` alone therefore also admits such
        // a look-alike. Pair it with `user`, `exe` or `sha256` where that matters.
        let units = || unit.unit.iter().chain(unit.user_manager.iter());
        match self {
            UnitSelector::Exact(name) => units().any(|candidate| candidate == name),
            UnitSelector::Glob(pattern) if pattern.as_str().ends_with(".slice") => {
                unit.slices.iter().any(|slice| pattern.is_match(slice))
            }
            UnitSelector::Glob(pattern) => units().any(|candidate| pattern.is_match(candidate)),
            UnitSelector::Slice(name) => name == "-.slice" || unit.slices.contains(name),
            UnitSelector::Prefix(name) if name.ends_with(".slice") => {
                unit.slices.iter().any(|slice| has_name_prefix(slice, name))
            }
            UnitSelector::Prefix(name) => units().any(|candidate| has_name_prefix(candidate, name)),
        }
    }

    /// Returns the identity level of [`Selectors::identity_level`]. A prefix of slice names
    /// ranks like a slice, and a prefix of other unit names like a unit glob.
    fn identity_level(&self) -> u8 {
        match self {
            UnitSelector::Exact(_) => 5,
            UnitSelector::Glob(_) => 3,
            UnitSelector::Prefix(name) if name.ends_with(".slice") => 2,
            UnitSelector::Prefix(_) => 3,
            UnitSelector::Slice(_) => 2,
        }
    }
}

/// Checks whether `name` starts with the part of `prefix` (such as `app-.scope`) before its
/// type suffix, and ends with that suffix.
fn has_name_prefix(name: &str, prefix: &str) -> bool {
    let Some(dot) = prefix.rfind('.') else {
        return false;
    };
    let (stem, suffix) = prefix.split_at(dot);
    name.len() >= prefix.len() && name.starts_with(stem) && name.ends_with(suffix)
}

/// SHA-256 digest of an executable file.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<[u8; 32]> for Sha256Digest {
    fn from(bytes: [u8; 32]) -> Self {
        Sha256Digest(bytes)
    }
}

/// Error from parsing a [`Sha256Digest`] that is not 64 hexadecimal digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid SHA-256 digest {value:?}: expected 64 hexadecimal digits")]
pub struct InvalidDigest {
    pub value: String,
}

impl FromStr for Sha256Digest {
    type Err = InvalidDigest;

    /// Parses 64 hexadecimal digits in either case.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| InvalidDigest {
            value: text.to_owned(),
        })?;
        Ok(Sha256Digest(bytes))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "Sha256Digest({self})")
    }
}

/// The process side of a rule: who connects. Every selector that is present must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selectors {
    pub unit: Option<UnitSelector>,
    /// Glob over the application ID, see [`crate::unit::app_id_from_unit`].
    pub app: Option<GlobPattern>,
    /// Resolved absolute path of the executable, compared byte for byte.
    pub exe: Option<PathBuf>,
    pub sha256: Option<Sha256Digest>,
    pub user: Option<u32>,
    /// Units the rule does not apply to, even when every other selector matches. A rule from a
    /// per-unit drop-in file lists here the more specific drop-in directories that contain a
    /// file of the same name, because that file replaces it for their units. No rule file key
    /// sets it.
    pub except: Vec<UnitSelector>,
}

impl Selectors {
    /// Checks every selector that is present against the subject. A selector that needs a fact
    /// the subject lacks (no executable path, no digest, no application ID) does not match.
    pub fn matches(&self, subject: &Subject) -> bool {
        if let Some(unit) = &self.unit {
            if !unit.matches(subject.unit) {
                return false;
            }
        }
        if self.except.iter().any(|unit| unit.matches(subject.unit)) {
            return false;
        }
        if let Some(app) = &self.app {
            match &subject.unit.app_id {
                Some(app_id) if app.is_match(app_id) => {}
                _ => return false,
            }
        }
        if let Some(exe) = &self.exe {
            if subject.exe != Some(exe.as_path()) {
                return false;
            }
        }
        if let Some(sha256) = &self.sha256 {
            if subject.sha256 != Some(sha256) {
                return false;
            }
        }
        if let Some(user) = self.user {
            if subject.uid != user {
                return false;
            }
        }
        true
    }

    /// Checks the selectors that concern the unit (`unit`, `app`) against a unit, and ignores
    /// those that concern the process. `true` means that some process of the unit may match.
    pub fn may_match_unit(&self, unit: &UnitInfo) -> bool {
        if let Some(selector) = &self.unit {
            if !selector.matches(unit) {
                return false;
            }
        }
        if self.except.iter().any(|excepted| excepted.matches(unit)) {
            return false;
        }
        match (&self.app, &unit.app_id) {
            (None, _) => true,
            (Some(app), Some(app_id)) => app.is_match(app_id),
            (Some(_), None) => false,
        }
    }

    /// Checks whether the rule selects by unit or application rather than by process alone.
    pub fn names_unit(&self) -> bool {
        self.unit.is_some() || self.app.is_some()
    }

    /// Checks whether no selector is present, which makes the rule global.
    pub fn is_empty(&self) -> bool {
        self.unit.is_none()
            && self.app.is_none()
            && self.exe.is_none()
            && self.sha256.is_none()
            && self.user.is_none()
            && self.except.is_empty()
    }

    /// Returns how precisely the selectors name the process, the maximum over those present:
    /// 7 `sha256`, 6 `exe`, 5 exact `unit`, 4 `app`, 3 unit glob or unit name prefix, 2 slice
    /// or slice name prefix, 1 `user`, 0 none. `except` does not count.
    pub fn identity_level(&self) -> u8 {
        let levels = [
            self.sha256.as_ref().map(|_| 7),
            self.exe.as_ref().map(|_| 6),
            self.unit.as_ref().map(UnitSelector::identity_level),
            self.app.as_ref().map(|_| 4),
            self.user.map(|_| 1),
        ];
        levels.into_iter().flatten().max().unwrap_or(0)
    }
}

/// The network side of a rule. An empty `addresses` or `ports` list matches any value.
///
/// IPv4 addresses are stored as [`IpNet::V4`]. Rule files cannot contain IPv4-mapped IPv6
/// prefixes (`::ffff:0:0/96`), and a flow to a mapped address is matched as the IPv4 address,
/// so an IPv4 prefix covers connections made through dual-stack IPv6 sockets too. An IPv6
/// prefix never matches such a flow, even `::/0`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Destination {
    pub addresses: Vec<IpNet>,
    pub ports: Vec<PortRange>,
    pub protocol: Protocol,
}

/// Specificity of a destination's match against one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DestinationMatch {
    /// Longest prefix in the rule that contains the flow's address, on one scale for both
    /// families: IPv6 /n counts n, IPv4 /n counts 96 + n. 0 when the rule lists no address.
    pub prefix_len: u8,
}

impl Destination {
    /// Matches the flow's protocol, port and address. Returns `None` when any of them does not
    /// match.
    pub fn matches(&self, flow: &Flow) -> Option<DestinationMatch> {
        if self.protocol != Protocol::Any && self.protocol != flow.protocol {
            return None;
        }
        if !self.ports.is_empty() && !self.ports.iter().any(|range| range.contains(flow.port)) {
            return None;
        }
        if self.addresses.is_empty() {
            return Some(DestinationMatch { prefix_len: 0 });
        }

        let address = flow.normalized_address();
        self.addresses
            .iter()
            .filter(|network| network.contains(&address))
            .map(|network| match network {
                IpNet::V4(network) => 96 + network.prefix_len(),
                IpNet::V6(network) => network.prefix_len(),
            })
            .max()
            .map(|prefix_len| DestinationMatch { prefix_len })
    }

    /// Counts the distinct ports that the `ports` list covers, or returns `None` for any port.
    pub fn port_count(&self) -> Option<u32> {
        if self.ports.is_empty() {
            return None;
        }
        let mut ranges = self.ports.clone();
        ranges.sort();

        // Ranges are sorted by start, so an overlap can only be with the previous range.
        let mut count = 0;
        let mut covered_up_to: u32 = 0;
        for range in ranges {
            let first = u32::from(range.first).max(covered_up_to + 1);
            let last = u32::from(range.last);
            if first <= last {
                count += last - first + 1;
                covered_up_to = last;
            }
        }
        Some(count)
    }
}

/// One rule from a rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub origin: Origin,
    pub action: Action,
    /// In -1000..=1000, higher first.
    pub priority: i16,
    pub selectors: Selectors,
    pub destination: Destination,
}

/// The process that attempts a connection.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub unit: &'a UnitInfo,
    /// Resolved path of the executable, or `None` when it could not be read.
    pub exe: Option<&'a Path>,
    pub sha256: Option<&'a Sha256Digest>,
    pub uid: u32,
}

/// A new outbound flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// `Tcp` or `Udp`. `Any` matches only rules without a protocol.
    pub protocol: Protocol,
    /// Destination address. An IPv4-mapped IPv6 address is judged as its IPv4 address.
    pub address: IpAddr,
    pub port: u16,
}

impl Flow {
    /// Returns the destination address with an IPv4-mapped IPv6 address turned into IPv4.
    pub fn normalized_address(&self) -> IpAddr {
        match self.address {
            IpAddr::V6(address) => match address.to_ipv4_mapped() {
                Some(ipv4) => IpAddr::V4(ipv4),
                None => IpAddr::V6(address),
            },
            IpAddr::V4(_) => self.address,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit::parse_cgroup_path;

    const TERMINAL: &str = "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-org.gnome.Terminal-4321.scope";

    fn flow(protocol: Protocol, address: &str, port: u16) -> Flow {
        Flow {
            protocol,
            address: address.parse().unwrap(),
            port,
        }
    }

    fn destination(addresses: &[&str], ports: &[(u16, u16)], protocol: Protocol) -> Destination {
        Destination {
            addresses: addresses.iter().map(|text| text.parse().unwrap()).collect(),
            ports: ports
                .iter()
                .map(|&(first, last)| PortRange { first, last })
                .collect(),
            protocol,
        }
    }

    #[test]
    fn digest_parses_both_cases() {
        let lower = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let digest: Sha256Digest = lower.parse().unwrap();
        assert_eq!(digest.to_string(), lower);

        let upper: Sha256Digest = lower.to_uppercase().parse().unwrap();
        assert_eq!(upper, digest);
    }

    #[test]
    fn digest_rejects_bad_text() {
        let long = "0".repeat(66);
        let non_hex = format!("{}zz", "0".repeat(62));
        for text in ["", "abc", long.as_str(), non_hex.as_str()] {
            let error = text.parse::<Sha256Digest>().unwrap_err();
            assert_eq!(error.value, text);
        }
    }

    #[test]
    fn unit_selector_kinds() {
        let info = parse_cgroup_path(TERMINAL);
        let glob = |text: &str| UnitSelector::Glob(GlobPattern::new(text).unwrap());

        assert!(
            UnitSelector::Exact("app-gnome-org.gnome.Terminal-4321.scope".into()).matches(&info)
        );
        assert!(UnitSelector::Exact("user@1000.service".into()).matches(&info));
        assert!(!UnitSelector::Exact("app.slice".into()).matches(&info));
        assert!(glob("app-*-org.gnome.Terminal-*.scope").matches(&info));
        assert!(glob("user@*.service").matches(&info));
        assert!(!glob("app-*-org.gnome.Nautilus-*.scope").matches(&info));
        assert!(glob("user-*.slice").matches(&info));
        assert!(!glob("system-*.slice").matches(&info));
        assert!(UnitSelector::Slice("app.slice".into()).matches(&info));
        assert!(UnitSelector::Slice("user.slice".into()).matches(&info));
        assert!(UnitSelector::Slice("-.slice".into()).matches(&info));
        assert!(!UnitSelector::Slice("system.slice".into()).matches(&info));
    }

    #[test]
    fn unit_prefix_matches_dash_prefixes() {
        let info = parse_cgroup_path("/user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.foo.App-12.scope");
        let prefix = |text: &str| UnitSelector::Prefix(text.into());

        for matching in [
            "app-.scope",
            "app-flatpak-.scope",
            "app-flatpak-org.foo.App-.scope",
            "user-.slice",
        ] {
            assert!(prefix(matching).matches(&info), "{matching}");
        }
        for other in [
            "app-gnome-.scope",
            "app-.service",
            "app-flatpak-org.foo.App-12-.scope",
            "system-.slice",
            "user-1000-.slice",
        ] {
            assert!(!prefix(other).matches(&info), "{other}");
        }

        // A slice prefix looks at the slices only, never at the unit.
        let service = parse_cgroup_path("/system.slice/app-x.service");
        assert!(!prefix("app-.slice").matches(&service));
        assert!(prefix("app-.service").matches(&service));
    }

    #[test]
    fn except_excludes_units() {
        let terminal = parse_cgroup_path(TERMINAL);
        let sshd = parse_cgroup_path("/system.slice/sshd.service");
        let subject = |unit| Subject {
            unit,
            exe: None,
            sha256: None,
            uid: 1000,
        };
        let selectors = Selectors {
            unit: Some(UnitSelector::Slice("-.slice".into())),
            except: vec![
                UnitSelector::Prefix("app-gnome-.scope".into()),
                UnitSelector::Exact("cron.service".into()),
            ],
            ..Selectors::default()
        };
        assert!(!selectors.matches(&subject(&terminal)));
        assert!(selectors.matches(&subject(&sshd)));

        let by_user_manager = Selectors {
            user: Some(1000),
            except: vec![UnitSelector::Exact("user@1000.service".into())],
            ..Selectors::default()
        };
        assert!(!by_user_manager.matches(&subject(&terminal)));
        assert!(by_user_manager.matches(&subject(&sshd)));
        assert!(!by_user_manager.is_empty());
        assert_eq!(by_user_manager.identity_level(), 1);
    }

    #[test]
    fn unit_glob_backslash_is_literal() {
        let info = parse_cgroup_path("/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-xdg\\x2duser\\x2ddirs-77.scope");
        let pattern = GlobPattern::new("app-gnome-xdg\\x2duser\\x2ddirs-*.scope").unwrap();
        assert!(UnitSelector::Glob(pattern).matches(&info));
    }

    #[test]
    fn selectors_all_must_match() {
        let info = parse_cgroup_path(TERMINAL);
        let digest: Sha256Digest = "ab".repeat(32).parse().unwrap();
        let other_digest: Sha256Digest = "cd".repeat(32).parse().unwrap();
        let subject = Subject {
            unit: &info,
            exe: Some(Path::new("/usr/bin/curl")),
            sha256: Some(&digest),
            uid: 1000,
        };

        let full = Selectors {
            unit: Some(UnitSelector::Slice("app.slice".into())),
            app: Some(GlobPattern::new("org.gnome.*").unwrap()),
            exe: Some("/usr/bin/curl".into()),
            sha256: Some(digest),
            user: Some(1000),
            except: Vec::new(),
        };
        assert!(full.matches(&subject));
        assert!(Selectors::default().matches(&subject));

        let wrong_user = Selectors {
            user: Some(0),
            ..full.clone()
        };
        assert!(!wrong_user.matches(&subject));
        let wrong_exe = Selectors {
            exe: Some("/usr/bin/wget".into()),
            ..full.clone()
        };
        assert!(!wrong_exe.matches(&subject));
        let wrong_digest = Selectors {
            sha256: Some(other_digest),
            ..full.clone()
        };
        assert!(!wrong_digest.matches(&subject));
        let wrong_app = Selectors {
            app: Some(GlobPattern::new("org.kde.*").unwrap()),
            ..full.clone()
        };
        assert!(!wrong_app.matches(&subject));
        let wrong_unit = Selectors {
            unit: Some(UnitSelector::Slice("system.slice".into())),
            ..full
        };
        assert!(!wrong_unit.matches(&subject));
    }

    #[test]
    fn selectors_missing_subject_facts() {
        let info = parse_cgroup_path("/system.slice/sshd.service");
        let subject = Subject {
            unit: &info,
            exe: None,
            sha256: None,
            uid: 0,
        };
        let by_exe = Selectors {
            exe: Some("/usr/sbin/sshd".into()),
            ..Selectors::default()
        };
        assert!(!by_exe.matches(&subject));
        let by_digest = Selectors {
            sha256: Some(Sha256Digest([0; 32])),
            ..Selectors::default()
        };
        assert!(!by_digest.matches(&subject));
        let by_app = Selectors {
            app: Some(GlobPattern::new("*").unwrap()),
            ..Selectors::default()
        };
        assert!(!by_app.matches(&subject));
    }

    #[test]
    fn identity_level_takes_maximum() {
        let exact = Some(UnitSelector::Exact("a.service".into()));
        let cases = [
            (Selectors::default(), 0),
            (
                Selectors {
                    user: Some(1),
                    ..Selectors::default()
                },
                1,
            ),
            (
                Selectors {
                    unit: Some(UnitSelector::Slice("a.slice".into())),
                    ..Selectors::default()
                },
                2,
            ),
            (
                Selectors {
                    unit: Some(UnitSelector::Glob(GlobPattern::new("a*").unwrap())),
                    ..Selectors::default()
                },
                3,
            ),
            (
                Selectors {
                    unit: Some(UnitSelector::Prefix("a-.scope".into())),
                    ..Selectors::default()
                },
                3,
            ),
            (
                Selectors {
                    unit: Some(UnitSelector::Prefix("a-.slice".into())),
                    ..Selectors::default()
                },
                2,
            ),
            (
                Selectors {
                    unit: exact.clone(),
                    except: vec![UnitSelector::Exact("b.service".into())],
                    ..Selectors::default()
                },
                5,
            ),
            (
                Selectors {
                    app: Some(GlobPattern::new("a").unwrap()),
                    user: Some(1),
                    ..Selectors::default()
                },
                4,
            ),
            (
                Selectors {
                    unit: exact.clone(),
                    app: Some(GlobPattern::new("a").unwrap()),
                    ..Selectors::default()
                },
                5,
            ),
            (
                Selectors {
                    unit: exact.clone(),
                    exe: Some("/a".into()),
                    ..Selectors::default()
                },
                6,
            ),
            (
                Selectors {
                    exe: Some("/a".into()),
                    sha256: Some(Sha256Digest([0; 32])),
                    ..Selectors::default()
                },
                7,
            ),
        ];
        for (selectors, expected) in cases {
            assert_eq!(selectors.identity_level(), expected, "{selectors:?}");
        }
        assert!(Selectors::default().is_empty());
        assert!(!Selectors {
            user: Some(0),
            ..Selectors::default()
        }
        .is_empty());
    }

    #[test]
    fn destination_prefix_scale() {
        let rule = destination(
            &["10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32"],
            &[],
            Protocol::Any,
        );
        let matched = |address: &str| {
            rule.matches(&flow(Protocol::Tcp, address, 80))
                .map(|m| m.prefix_len)
        };

        assert_eq!(matched("10.1.2.3"), Some(96 + 16));
        assert_eq!(matched("10.2.0.1"), Some(96 + 8));
        assert_eq!(matched("2001:db8::1"), Some(32));
        assert_eq!(matched("192.0.2.1"), None);
        assert_eq!(matched("::ffff:10.1.2.3"), Some(96 + 16));

        let any_address = destination(&[], &[], Protocol::Any);
        assert_eq!(
            any_address.matches(&flow(Protocol::Udp, "::1", 53)),
            Some(DestinationMatch { prefix_len: 0 })
        );
    }

    #[test]
    fn destination_mapped_flow_is_ipv4() {
        let ipv6_any = destination(&["::/0"], &[], Protocol::Any);
        assert_eq!(
            ipv6_any.matches(&flow(Protocol::Tcp, "::ffff:192.0.2.1", 443)),
            None
        );
        assert!(ipv6_any
            .matches(&flow(Protocol::Tcp, "2001:db8::1", 443))
            .is_some());

        let ipv4_host = destination(&["192.0.2.1/32"], &[], Protocol::Any);
        let matched = ipv4_host.matches(&flow(Protocol::Tcp, "::ffff:192.0.2.1", 443));
        assert_eq!(matched, Some(DestinationMatch { prefix_len: 128 }));
    }

    #[test]
    fn destination_ports_and_protocol() {
        let rule = destination(&[], &[(80, 80), (8000, 8099)], Protocol::Tcp);
        assert!(rule
            .matches(&flow(Protocol::Tcp, "192.0.2.1", 80))
            .is_some());
        assert!(rule
            .matches(&flow(Protocol::Tcp, "192.0.2.1", 8000))
            .is_some());
        assert!(rule
            .matches(&flow(Protocol::Tcp, "192.0.2.1", 8099))
            .is_some());
        assert!(rule
            .matches(&flow(Protocol::Tcp, "192.0.2.1", 8100))
            .is_none());
        assert!(rule
            .matches(&flow(Protocol::Tcp, "192.0.2.1", 81))
            .is_none());
        assert!(rule
            .matches(&flow(Protocol::Udp, "192.0.2.1", 80))
            .is_none());
        assert!(rule
            .matches(&flow(Protocol::Any, "192.0.2.1", 80))
            .is_none());

        let any_protocol = destination(&[], &[], Protocol::Any);
        assert!(any_protocol
            .matches(&flow(Protocol::Udp, "192.0.2.1", 0))
            .is_some());
    }

    #[test]
    fn port_count_merges_overlaps() {
        assert_eq!(destination(&[], &[], Protocol::Any).port_count(), None);
        assert_eq!(
            destination(&[], &[(443, 443)], Protocol::Any).port_count(),
            Some(1)
        );
        assert_eq!(
            destination(&[], &[(80, 80), (443, 443)], Protocol::Any).port_count(),
            Some(2)
        );
        assert_eq!(
            destination(&[], &[(8000, 8099), (8050, 8149)], Protocol::Any).port_count(),
            Some(150)
        );
        assert_eq!(
            destination(&[], &[(8000, 8099), (8010, 8020)], Protocol::Any).port_count(),
            Some(100)
        );
        assert_eq!(
            destination(&[], &[(1, 65535), (1, 65535)], Protocol::Any).port_count(),
            Some(65535)
        );
    }

    #[test]
    fn origin_display_is_file_line() {
        let origin = Origin {
            file: "/etc/slicewall/rules.d/10-web.toml".into(),
            line: 4,
            column: 1,
        };
        assert_eq!(origin.to_string(), "/etc/slicewall/rules.d/10-web.toml:4");
    }
}
