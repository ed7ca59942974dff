//! systemd unit names: where a cgroup v2 path sits in the unit tree, and the application ID that
//! a desktop environment or snapd encodes in a unit name.
//!
//! Everything here is pure string work on names that reach the daemon from the kernel, so a
//! hostile name (overlong, control characters, malformed escapes) yields `None` instead of a
//! panic.

/// Maximum length of a unit name in bytes. systemd's `UNIT_NAME_MAX` is 256 including the
/// trailing NUL.
pub(crate) const UNIT_NAME_MAX: usize = 255;

/// Suffixes of the unit types that own a cgroup and can hold processes. Slices own a cgroup too,
/// but a slice only groups other units.
const LEAF_UNIT_SUFFIXES: [&str; 5] = [".service", ".scope", ".socket", ".mount", ".swap"];

/// The position of a cgroup in the systemd unit tree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct UnitInfo {
    /// The cgroup path relative to the cgroup2 mount, always starting with '/'.
    pub cgroup_path: String,
    /// Innermost unit that is not a slice, or `None` for the root cgroup, a bare slice or a
    /// cgroup outside the unit tree.
    pub unit: Option<String>,
    /// Every slice on the path, outermost first.
    pub slices: Vec<String>,
    /// The per-user service manager (`user@UID.service`) that the cgroup belongs to, if any.
    pub user_manager: Option<String>,
    /// Application ID derived from `unit`, unescaped (see [`app_id_from_unit`]).
    pub app_id: Option<String>,
}

/// Parses a cgroup v2 path such as
/// `/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-org.gnome.Terminal-4321.scope`.
///
/// The walk goes down from the root. Slices are collected until the first unit of another type.
/// That unit is the leaf, and the walk stops there, because cgroups below a unit belong to the
/// unit's own process tree (delegation) and their names need not be units at all. The one
/// exception is `user@UID.service`: the walk continues into the units that the user manager
/// runs, and stops at the first of those. A component that is not a valid unit name also ends
/// the walk, since nothing below it is managed by systemd.
pub fn parse_cgroup_path(path: &str) -> UnitInfo {
    let cgroup_path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let mut info = UnitInfo {
        cgroup_path,
        ..UnitInfo::default()
    };

    for component in path.split('/').filter(|component| !component.is_empty()) {
        if !is_valid_unit_name(component) {
            break;
        }
        if component.ends_with(".slice") {
            info.slices.push(component.to_owned());
            continue;
        }
        if !is_leaf_unit_name(component) {
            break;
        }

        info.unit = Some(component.to_owned());
        if info.user_manager.is_none() && is_user_manager(component) {
            info.user_manager = Some(component.to_owned());
            continue;
        }
        break;
    }

    info.app_id = info.unit.as_deref().and_then(app_id_from_unit);
    info
}

/// Extracts the application ID from a unit name, unescaped.
///
/// Recognized forms come from the conventions in systemd's `docs/DESKTOP_ENVIRONMENTS.md`
/// ("XDG standardization for applications") and from snapd, which names an application's scope
/// `<security tag>-<UUID>.scope` (`sandbox/cgroup/tracking.go`) and a snap daemon
/// `<security tag>.service`:
///
/// | unit name                                  | application ID         |
/// |--------------------------------------------|------------------------|
/// | `app-<launcher>-<AppID>-<RANDOM>.scope`    | `<AppID>`              |
/// | `app-<AppID>-<RANDOM>.scope`               | `<AppID>`              |
/// | `app-<launcher>-<AppID>[@<RANDOM>].service`| `<AppID>`              |
/// | `app-<AppID>[@<RANDOM>].service`           | `<AppID>`              |
/// | `snap.<name>.<app>-<UUID>.scope`           | `<name>.<app>`         |
/// | `snap.<name>.<app>.service`                | `<name>.<app>`         |
///
/// Flatpak uses the launcher `flatpak`. A launcher never contains a dot, so the first
/// '-'-separated part of an `app-` name is the launcher exactly when it has no dot. A reverse-DNS
/// AppID always has dots, so it is never taken for a launcher. An AppID without dots (`firefox`)
/// is read correctly only when no launcher precedes it. `<RANDOM>` must be ASCII alphanumeric,
/// which keeps a dotted AppID from being split at its last '-'.
///
/// For snaps the ID keeps the application name after the snap name (`firefox.firefox`,
/// `lxd.daemon`, hooks as `<name>.hook.<hook>`), so a rule for every application of one snap is
/// the glob `<name>.*`.
///
/// Returns `None` for any other name, for an invalid unit name, and when the unescaped ID is
/// empty, not UTF-8, or contains control characters.
pub fn app_id_from_unit(unit: &str) -> Option<String> {
    if !is_valid_unit_name(unit) {
        return None;
    }
    // From here on the name is ASCII, so byte-index slicing cannot split a character.

    let escaped_id = if unit.starts_with("snap.") {
        snap_escaped_id(unit)?
    } else {
        desktop_escaped_id(unit)?
    };
    unescape_app_id(escaped_id)
}

/// Checks the characters and length that systemd allows in a unit name: ASCII letters, digits,
/// `:-_.\@`, at most 255 bytes, and a non-empty name before the type suffix.
fn is_valid_unit_name(name: &str) -> bool {
    if name.is_empty() || name.len() > UNIT_NAME_MAX {
        return false;
    }
    if !name.bytes().all(is_unit_name_byte) {
        return false;
    }
    match name.rsplit_once('.') {
        Some((stem, suffix)) => !stem.is_empty() && !suffix.is_empty(),
        None => false,
    }
}

/// Checks one byte against the characters systemd allows in unit names. Other characters
/// appear in names only as `\xNN` escapes.
pub(crate) fn is_unit_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b":-_.\\@".contains(&byte)
}

fn is_leaf_unit_name(name: &str) -> bool {
    LEAF_UNIT_SUFFIXES
        .iter()
        .any(|suffix| name.len() > suffix.len() && name.ends_with(suffix))
}

/// Matches `user@UID.service`, the unit of a per-user service manager.
fn is_user_manager(name: &str) -> bool {
    let Some(uid) = name
        .strip_prefix("user@")
        .and_then(|rest| rest.strip_suffix(".service"))
    else {
        return false;
    };
    !uid.is_empty() && uid.bytes().all(|byte| byte.is_ascii_digit()) && uid.parse::<u32>().is_ok()
}

/// Returns the still escaped AppID of an `app-` scope or service.
fn desktop_escaped_id(unit: &str) -> Option<&str> {
    let rest = unit.strip_prefix("app-")?;

    let body = if let Some(stem) = rest.strip_suffix(".scope") {
        let (body, random) = stem.rsplit_once('-')?;
        if !is_random_part(random) {
            return None;
        }
        body
    } else if let Some(stem) = rest.strip_suffix(".service") {
        match stem.rsplit_once('@') {
            Some((body, random)) if is_random_part(random) => body,
            Some(_) => return None,
            None => stem,
        }
    } else {
        return None;
    };

    let id = match body.split_once('-') {
        Some((launcher, id)) if !launcher.is_empty() && !launcher.contains('.') => id,
        _ => body,
    };
    Some(id)
}

fn is_random_part(random: &str) -> bool {
    !random.is_empty() && random.bytes().all(|byte| byte.is_ascii_alphanumeric())
}

/// Returns the still escaped `<name>.<app>` of a snap scope or service.
fn snap_escaped_id(unit: &str) -> Option<&str> {
    let rest = unit.strip_prefix("snap.")?;

    let tag = if let Some(stem) = rest.strip_suffix(".scope") {
        // "-" followed by a 36-character UUID.
        const UUID_LEN: usize = 36;
        if stem.len() <= UUID_LEN + 1 {
            return None;
        }
        let (tag, dash_uuid) = stem.split_at(stem.len() - UUID_LEN - 1);
        let uuid = dash_uuid.strip_prefix('-')?;
        if !is_uuid(uuid) {
            return None;
        }
        tag
    } else {
        rest.strip_suffix(".service")?
    };

    let (name, app) = tag.split_once('.')?;
    if name.is_empty() || app.is_empty() || app.starts_with('.') || app.ends_with('.') {
        return None;
    }
    Some(tag)
}

/// Checks the textual UUID form 8-4-4-4-12 of hexadecimal digits.
fn is_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(index, byte)| match index {
            8 | 13 | 18 | 23 => *byte == b'-',
            _ => byte.is_ascii_hexdigit(),
        })
}

/// Reverses systemd's unit name escaping, which writes each byte outside the allowed set as
/// `\xNN`. Returns `None` for a malformed escape, a result that is not UTF-8, an empty result,
/// or a result with control characters.
fn unescape_app_id(escaped: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(escaped.len());
    let mut input = escaped.bytes();
    while let Some(byte) = input.next() {
        if byte != b'\\' {
            bytes.push(byte);
            continue;
        }
        if input.next() != Some(b'x') {
            return None;
        }
        let high = hex_value(input.next()?)?;
        let low = hex_value(input.next()?)?;
        bytes.push(high << 4 | low);
    }

    let id = String::from_utf8(bytes).ok()?;
    if id.is_empty() || id.chars().any(char::is_control) {
        return None;
    }
    Some(id)
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit).to_digit(16).map(|value| value as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    #[test]
    fn cgroup_path_gnome_terminal() {
        let info = parse_cgroup_path(
            "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-org.gnome.Terminal-4321.scope",
        );
        assert_eq!(
            info.cgroup_path,
            "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-org.gnome.Terminal-4321.scope"
        );
        assert_eq!(
            info.unit.as_deref(),
            Some("app-gnome-org.gnome.Terminal-4321.scope")
        );
        assert_eq!(
            info.slices,
            strings(&["user.slice", "user-1000.slice", "app.slice"])
        );
        assert_eq!(info.user_manager.as_deref(), Some("user@1000.service"));
        assert_eq!(info.app_id.as_deref(), Some("org.gnome.Terminal"));
    }

    #[test]
    fn cgroup_path_system_service() {
        let info = parse_cgroup_path("/system.slice/systemd-resolved.service");
        assert_eq!(info.unit.as_deref(), Some("systemd-resolved.service"));
        assert_eq!(info.slices, strings(&["system.slice"]));
        assert_eq!(info.user_manager, None);
        assert_eq!(info.app_id, None);
    }

    #[test]
    fn cgroup_path_without_leading_slash() {
        let info = parse_cgroup_path("system.slice/cron.service");
        assert_eq!(info.cgroup_path, "/system.slice/cron.service");
        assert_eq!(info.unit.as_deref(), Some("cron.service"));
    }

    #[test]
    fn cgroup_path_root_and_bare_slices() {
        for path in ["/", "", "//"] {
            let info = parse_cgroup_path(path);
            assert!(info.cgroup_path.starts_with('/'), "path {path:?}");
            assert_eq!(info.unit, None, "path {path:?}");
            assert!(info.slices.is_empty(), "path {path:?}");
        }

        let info = parse_cgroup_path("/user.slice/user-1000.slice");
        assert_eq!(info.unit, None);
        assert_eq!(info.slices, strings(&["user.slice", "user-1000.slice"]));
        assert_eq!(info.user_manager, None);
    }

    #[test]
    fn cgroup_path_init_scope() {
        let info = parse_cgroup_path("/init.scope");
        assert_eq!(info.unit.as_deref(), Some("init.scope"));
        assert!(info.slices.is_empty());
    }

    #[test]
    fn cgroup_path_user_manager_itself() {
        let info = parse_cgroup_path("/user.slice/user-1000.slice/user@1000.service/init.scope");
        assert_eq!(info.unit.as_deref(), Some("init.scope"));
        assert_eq!(info.user_manager.as_deref(), Some("user@1000.service"));

        let info = parse_cgroup_path("/user.slice/user-1000.slice/user@1000.service");
        assert_eq!(info.unit.as_deref(), Some("user@1000.service"));
        assert_eq!(info.user_manager.as_deref(), Some("user@1000.service"));

        let info = parse_cgroup_path("/user.slice/user-1000.slice/user@1000.service/app.slice");
        assert_eq!(info.unit.as_deref(), Some("user@1000.service"));
        assert_eq!(
            info.slices,
            strings(&["user.slice", "user-1000.slice", "app.slice"])
        );
    }

    #[test]
    fn cgroup_path_session_scope() {
        let info = parse_cgroup_path("/user.slice/user-1000.slice/session-3.scope");
        assert_eq!(info.unit.as_deref(), Some("session-3.scope"));
        assert_eq!(info.user_manager, None);
        assert_eq!(info.app_id, None);
    }

    #[test]
    fn cgroup_path_ignores_delegated_subtree() {
        // A delegated service names its own sub-cgroups. None of them is a systemd unit, even
        // when the name looks like one.
        let info = parse_cgroup_path(
            "/machine.slice/systemd-nspawn@web.service/payload/system.slice/nginx.service",
        );
        assert_eq!(info.unit.as_deref(), Some("systemd-nspawn@web.service"));
        assert_eq!(info.slices, strings(&["machine.slice"]));

        let info = parse_cgroup_path("/system.slice/docker.service/fake.slice/sshd.service");
        assert_eq!(info.unit.as_deref(), Some("docker.service"));
        assert_eq!(info.slices, strings(&["system.slice"]));

        let info = parse_cgroup_path(
            "/user.slice/user-1000.slice/user@1000.service/app.slice/app-foo-1.scope/sub/x.service",
        );
        assert_eq!(info.unit.as_deref(), Some("app-foo-1.scope"));
    }

    #[test]
    fn cgroup_path_foreign_component_stops() {
        let info = parse_cgroup_path("/docker/0123abcd/system.slice/sshd.service");
        assert_eq!(info.unit, None);
        assert!(info.slices.is_empty());

        let info = parse_cgroup_path("/system.slice/weird dir/sshd.service");
        assert_eq!(info.unit, None);
        assert_eq!(info.slices, strings(&["system.slice"]));

        let info = parse_cgroup_path("/system.slice/foo.target/bar.service");
        assert_eq!(info.unit, None);
    }

    #[test]
    fn cgroup_path_nested_user_manager_is_plain_unit() {
        let info = parse_cgroup_path(
            "/user.slice/user-1000.slice/user@1000.service/app.slice/user@2000.service/x.scope",
        );
        assert_eq!(info.unit.as_deref(), Some("user@2000.service"));
        assert_eq!(info.user_manager.as_deref(), Some("user@1000.service"));
    }

    #[test]
    fn cgroup_path_other_leaf_types() {
        for unit in ["systemd-journald.socket", "home.mount", "dev-sda2.swap"] {
            let info = parse_cgroup_path(&format!("/system.slice/{unit}"));
            assert_eq!(info.unit.as_deref(), Some(unit));
        }
    }

    #[test]
    fn cgroup_path_hostile_names() {
        let long = "a".repeat(100_000);
        let info = parse_cgroup_path(&format!("/system.slice/{long}.service"));
        assert_eq!(info.unit, None);

        let info = parse_cgroup_path("/system.slice/evil\n.service");
        assert_eq!(info.unit, None);

        let info = parse_cgroup_path("/system.slice/\u{7f}\u{0}.service/\u{202e}.scope");
        assert_eq!(info.unit, None);

        let info = parse_cgroup_path(&"/x.slice".repeat(10_000));
        assert_eq!(info.slices.len(), 10_000);
    }

    #[test]
    fn app_id_gnome_and_kde_launchers() {
        let cases = [
            (
                "app-gnome-org.gnome.Terminal-4321.scope",
                "org.gnome.Terminal",
            ),
            (
                "app-gnome-org.gnome.Evolution\\x2dalarm\\x2dnotify-2456.scope",
                "org.gnome.Evolution-alarm-notify",
            ),
            (
                "app-gnome-gnome\\x2dkeyring\\x2dpkcs11-1860.scope",
                "gnome-keyring-pkcs11",
            ),
            (
                "app-gnome-org.gnome.Evince@12345.service",
                "org.gnome.Evince",
            ),
            ("app-KDE-org.kde.okular@12345.service", "org.kde.okular"),
            (
                "app-org.kde.konsole-3fa2b7c1d4e54f6a8b9c0d1e2f3a4b5c.scope",
                "org.kde.konsole",
            ),
            ("app-org.kde.amarok.service", "org.kde.amarok"),
            ("app-org.gnome.Evince-12345.scope", "org.gnome.Evince"),
            (
                "app-flatpak-org.mozilla.firefox-12345.scope",
                "org.mozilla.firefox",
            ),
            (
                "app-flatpak-com.valvesoftware.Steam-98765.scope",
                "com.valvesoftware.Steam",
            ),
            ("app-firefox-1234.scope", "firefox"),
            ("app-xdg\\x2duser\\x2ddirs-1234.scope", "xdg-user-dirs"),
            ("app-gnome-firefox-1234.scope", "firefox"),
            (
                "app-gnome-org.example.Caf\\xc3\\xa9-1.scope",
                "org.example.Café",
            ),
        ];
        for (unit, expected) in cases {
            assert_eq!(
                app_id_from_unit(unit).as_deref(),
                Some(expected),
                "unit {unit}"
            );
        }
    }

    #[test]
    fn app_id_snap() {
        let cases = [
            (
                "snap.firefox.firefox-2d5f0f57-7e1f-4c2a-95dc-6e2d1b84a9a5.scope",
                "firefox.firefox",
            ),
            (
                "snap.foo-bar.my-app-2d5f0f57-7e1f-4c2a-95dc-6e2d1b84a9a5.scope",
                "foo-bar.my-app",
            ),
            (
                "snap.core.hook.configure-2d5f0f57-7e1f-4c2a-95dc-6e2d1b84a9a5.scope",
                "core.hook.configure",
            ),
            ("snap.lxd.daemon.service", "lxd.daemon"),
        ];
        for (unit, expected) in cases {
            assert_eq!(
                app_id_from_unit(unit).as_deref(),
                Some(expected),
                "unit {unit}"
            );
        }
    }

    #[test]
    fn app_id_none_for_other_units() {
        let units = [
            "sshd.service",
            "session-3.scope",
            "app.slice",
            "app-gnome-org.gnome.Terminal.slice",
            "app-org.gnome.Terminal.scope",
            "app-gnome-org.gnome.Terminal-.scope",
            "app--1234.scope",
            "app-gnome-org.gnome.Evince@.service",
            "app-gnome-org.gnome.Foo-12.34.scope",
            "snapd.service",
            "snap.firefox.firefox-notauuid.scope",
            "snap.firefox-2d5f0f57-7e1f-4c2a-95dc-6e2d1b84a9a5.scope",
            "snap.firefox.service",
            "snap-core-1234.mount",
            "dbus-:1.2-org.gnome.OnlineAccounts@0.service",
            "",
            ".scope",
            "app-gnome-org.gnome.Terminal-4321",
        ];
        for unit in units {
            assert_eq!(app_id_from_unit(unit), None, "unit {unit:?}");
        }
    }

    #[test]
    fn app_id_rejects_bad_escapes() {
        let units = [
            "app-gnome-org.gnome.Foo\\x2-1.scope",
            "app-gnome-org.gnome.Foo\\x-1.scope",
            "app-gnome-org.gnome.Foo\\y2d-1.scope",
            "app-gnome-org.gnome.Foo\\-1.scope",
            "app-gnome-org.gnome.Foo\\xzz-1.scope",
            "app-gnome-org.gnome.Foo\\x0a-1.scope",
            "app-gnome-org.gnome.Foo\\x7f-1.scope",
            "app-gnome-org.gnome.Foo\\xff-1.scope",
            "app-gnome-\\x00-1.scope",
        ];
        for unit in units {
            assert_eq!(app_id_from_unit(unit), None, "unit {unit:?}");
        }
    }

    #[test]
    fn app_id_hostile_names() {
        let long = format!("app-gnome-org.{}-1.scope", "a".repeat(300));
        assert_eq!(app_id_from_unit(&long), None);

        let just_fits = format!("app-gnome-org.{}-1.scope", "a".repeat(255 - 22));
        assert_eq!(just_fits.len(), 255);
        assert!(app_id_from_unit(&just_fits).is_some());

        assert_eq!(
            app_id_from_unit("app-gnome-org.gnome\u{0}.Foo-1.scope"),
            None
        );
        assert_eq!(app_id_from_unit("app-gnome-org.gnomé.Foo-1.scope"), None);
        assert_eq!(app_id_from_unit(&"\\".repeat(1000)), None);
        assert_eq!(app_id_from_unit("app-\\x"), None);
    }

    #[test]
    fn user_manager_requires_numeric_uid() {
        assert!(is_user_manager("user@1000.service"));
        assert!(is_user_manager("user@0.service"));
        assert!(!is_user_manager("user@.service"));
        assert!(!is_user_manager("user@alice.service"));
        assert!(!is_user_manager("user@99999999999.service"));
        assert!(!is_user_manager("user-runtime-dir@1000.service"));
    }
}
