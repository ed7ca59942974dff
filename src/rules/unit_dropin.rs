//! Names of per-unit drop-in directories, such as `sshd.service.d` or `app-flatpak-.scope.d`,
//! and which of two such directories is the more specific for the units both apply to.
//!
//! A directory name is a unit name followed by `.d`, of one of these kinds:
//!
//! - an exact unit, `sshd.service.d`: the unit, and for `user@UID.service.d` every unit of that
//!   user manager too, like `unit = "sshd.service"`;
//! - a unit prefix, `app-flatpak-.scope.d`: every unit of that type whose name starts with the
//!   part before the type suffix, which ends in '-' as in systemd's drop-ins;
//! - a slice, `user.slice.d`, or a slice prefix, `user-.slice.d`: every unit inside a matching
//!   slice at any depth. `-.slice.d` is the root slice and applies to every process.
//!
//! When a file name appears in several directories that apply to one unit, the file in the most
//! specific directory replaces the others for that unit. [`UnitDirectory::outranks`] orders the
//! directories, most specific first:
//!
//! 1. exact units other than user managers,
//! 2. unit prefixes, longer first,
//! 3. exact user managers (`user@UID.service.d`), which apply to every unit that manager runs,
//! 4. slices and slice prefixes, longer name first, so an inner slice wins over the slice that
//!    contains it (`a-b.slice` is inside `a.slice`, and `a-.slice` matches only slices inside
//!    `a.slice`), with a slice over a slice prefix of the same length. `-.slice.d` comes last.
//!
//! Two directories of the same kind and length never apply to the same unit on a system whose
//! cgroup paths systemd created. Otherwise the name decides, the later name in byte order
//! being the more specific.

use std::cmp::Ordering;
use std::ffi::OsStr;

use super::model::UnitSelector;
use super::parse::check_unit_name;

/// A validated per-unit drop-in directory name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitDirectory {
    /// The directory name, with its `.d` suffix.
    name: String,
    selector: UnitSelector,
    specificity: Specificity,
}

/// Sort key of a directory among those that apply to one unit. Field order is comparison order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Specificity {
    tier: Tier,
    /// Bytes of the name before the type suffix, the '-' of a prefix included. 0 for `-.slice`.
    length: usize,
    /// Set for an exact name, so that it wins over a prefix of the same length.
    exact: bool,
}

/// The kinds of directory, least specific first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tier {
    Slice,
    UserManager,
    UnitPrefix,
    Unit,
}

impl UnitDirectory {
    /// Validates a directory name. Returns the reason when it is invalid.
    pub fn parse(name: &OsStr) -> Result<Self, String> {
        let Some(name) = name.to_str() else {
            return Err("the name is not valid UTF-8".to_owned());
        };
        let unit = match name.strip_suffix(".d") {
            Some(unit) if !unit.is_empty() => unit,
            _ => {
                return Err(
                    "expected a unit name followed by \".d\", such as \"sshd.service.d\""
                        .to_owned(),
                )
            }
        };
        let selector = check_unit_name(unit)
            .map_err(|reason| format!("{unit:?} is not a valid unit name: {reason}"))?;
        let is_slice = matches!(selector, UnitSelector::Slice(_));
        // check_unit_name found a '.' with a name before it.
        let (stem, _suffix) = unit.rsplit_once('.').unwrap_or((unit, ""));

        let (selector, specificity) = if unit == "-.slice" {
            let specificity = Specificity {
                tier: Tier::Slice,
                length: 0,
                exact: true,
            };
            (selector, specificity)
        } else if stem.ends_with('-') {
            if stem == "-" {
                return Err(format!(
                    "{unit:?} is a prefix without a name before the '-', name a prefix such as \"app-{}\"",
                    &unit[1..]
                ));
            }
            let tier = if is_slice {
                Tier::Slice
            } else {
                Tier::UnitPrefix
            };
            let specificity = Specificity {
                tier,
                length: stem.len(),
                exact: false,
            };
            (UnitSelector::Prefix(unit.to_owned()), specificity)
        } else if stem.ends_with('@') {
            // TODO: systemd applies `foo@.service.d` to every instance of the template. It is
            // rejected until instance matching is built, so that it cannot silently match nothing.
            return Err(format!(
                "{unit:?} is a unit template, and drop-in directories for templates are not supported, name each instance such as \"{stem}1.{}.d\"",
                &unit[stem.len() + 1..]
            ));
        } else {
            let tier = if is_slice {
                Tier::Slice
            } else if is_user_manager(unit) {
                Tier::UserManager
            } else {
                Tier::Unit
            };
            let specificity = Specificity {
                tier,
                length: stem.len(),
                exact: true,
            };
            (selector, specificity)
        };

        Ok(UnitDirectory {
            name: name.to_owned(),
            selector,
            specificity,
        })
    }

    /// Returns the directory name, with its `.d` suffix.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the unit selector that the rules in this directory get.
    pub fn selector(&self) -> UnitSelector {
        self.selector.clone()
    }

    /// Checks whether a file in this directory replaces a file of the same name in `other`, for
    /// the units that both directories apply to.
    pub fn outranks(&self, other: &UnitDirectory) -> bool {
        let ordering = self
            .specificity
            .cmp(&other.specificity)
            .then_with(|| self.name.cmp(&other.name));
        ordering == Ordering::Greater
    }
}

/// Matches `user@UID.service`, whose exact selector also covers the units of that user manager.
fn is_user_manager(unit: &str) -> bool {
    unit.strip_prefix("user@")
        .and_then(|rest| rest.strip_suffix(".service"))
        .is_some_and(|uid| !uid.is_empty() && uid.bytes().all(|byte| byte.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Selectors, Subject};
    use crate::unit::parse_cgroup_path;

    fn directory(name: &str) -> UnitDirectory {
        UnitDirectory::parse(OsStr::new(name)).unwrap_or_else(|reason| panic!("{name}: {reason}"))
    }

    fn reason(name: &str) -> String {
        UnitDirectory::parse(OsStr::new(name)).unwrap_err()
    }

    #[test]
    fn name_kinds() {
        let cases = [
            ("foo.service.d", UnitSelector::Exact("foo.service".into())),
            (
                "app-gnome-org.gnome.Terminal-123.scope.d",
                UnitSelector::Exact("app-gnome-org.gnome.Terminal-123.scope".into()),
            ),
            (
                "user@1000.service.d",
                UnitSelector::Exact("user@1000.service".into()),
            ),
            ("app-.scope.d", UnitSelector::Prefix("app-.scope".into())),
            (
                "foo-bar-.service.d",
                UnitSelector::Prefix("foo-bar-.service".into()),
            ),
            ("foo.slice.d", UnitSelector::Slice("foo.slice".into())),
            ("user-.slice.d", UnitSelector::Prefix("user-.slice".into())),
            ("-.slice.d", UnitSelector::Slice("-.slice".into())),
            ("db.socket.d", UnitSelector::Exact("db.socket".into())),
        ];
        for (name, selector) in cases {
            let parsed = directory(name);
            assert_eq!(parsed.selector(), selector, "{name}");
            assert_eq!(parsed.name(), name);
        }
    }

    #[test]
    fn invalid_names() {
        let cases = [
            ("foo.service", "expected a unit name followed by \".d\""),
            (".d", "expected a unit name followed by \".d\""),
            ("foo.d", "\"foo\" is not a valid unit name: expected a name ending in .service"),
            ("backup.timer.d", "\"backup.timer\" is not a valid unit name: expected a name ending in .service"),
            ("my app.service.d", "\"my app.service\" is not a valid unit name: unit names contain only"),
            ("app-*.scope.d", "\"app-*.scope\" is not a valid unit name: unit names contain only"),
            (".service.d", "\".service\" is not a valid unit name: the name before the unit type suffix is empty"),
            ("getty@.service.d", "\"getty@.service\" is a unit template, and drop-in directories for templates are not supported, name each instance such as \"getty@1.service.d\""),
            ("-.service.d", "\"-.service\" is a prefix without a name before the '-', name a prefix such as \"app-.service\""),
        ];
        for (name, expected) in cases {
            let reason = reason(name);
            assert!(reason.starts_with(expected), "{name}: {reason}");
        }

        let long = format!("{}.service.d", "a".repeat(250));
        assert!(reason(&long).ends_with("unit names are at most 255 bytes long"));

        use std::os::unix::ffi::OsStrExt;
        let not_utf8 = UnitDirectory::parse(OsStr::from_bytes(b"f\xffo.service.d")).unwrap_err();
        assert_eq!(not_utf8, "the name is not valid UTF-8");
    }

    #[test]
    fn specificity_order() {
        // Most specific first. Every pair in this list that applies to one unit keeps this order.
        let ordered = [
            "app-flatpak-org.foo.App-12.scope.d",
            "app-flatpak-org.foo.App-.scope.d",
            "app-flatpak-.scope.d",
            "app-.scope.d",
            "user@1000.service.d",
            "user-1000-.slice.d",
            "user-1000.slice.d",
            "user-.slice.d",
            "user.slice.d",
            "-.slice.d",
        ];
        for (index, higher) in ordered.iter().enumerate() {
            for lower in &ordered[index + 1..] {
                assert!(
                    directory(higher).outranks(&directory(lower)),
                    "{higher} over {lower}"
                );
                assert!(
                    !directory(lower).outranks(&directory(higher)),
                    "{lower} under {higher}"
                );
            }
        }
        let same = directory("app-.scope.d");
        assert!(!same.outranks(&same.clone()));
    }

    /// Every directory of the specificity list applies to this unit, so each rule must see its
    /// directory's units and nothing else.
    #[test]
    fn selectors_of_directories_match_the_unit() {
        let unit = parse_cgroup_path("/user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.foo.App-12.scope");
        let other = parse_cgroup_path("/system.slice/cron.service");
        let subject = |unit| Subject {
            unit,
            exe: None,
            sha256: None,
            uid: 1000,
        };
        for name in [
            "app-flatpak-org.foo.App-12.scope.d",
            "app-flatpak-org.foo.App-.scope.d",
            "app-flatpak-.scope.d",
            "app-.scope.d",
            "user@1000.service.d",
            "app.slice.d",
            "user-1000.slice.d",
            "user-.slice.d",
            "user.slice.d",
            "-.slice.d",
        ] {
            let selectors = Selectors {
                unit: Some(directory(name).selector()),
                ..Selectors::default()
            };
            assert!(selectors.matches(&subject(&unit)), "{name}");
            assert_eq!(
                selectors.matches(&subject(&other)),
                name == "-.slice.d",
                "{name} for cron.service"
            );
        }
    }
}
