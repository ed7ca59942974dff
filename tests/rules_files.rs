//! Loads rule files from drop-in directories laid out in temporary roots: overriding, masking,
//! file selection and order, error reporting, and decisions that must not depend on file names.
//! The per-unit drop-in directories get the same checks, plus the kinds of directory name and
//! overriding between directories of different specificity.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use slicewall::rules::{
    decide, load, load_strict, rule_directories, unit_directories, Action, Flow, ParseErrorKind,
    Protocol, Rule, RuleError, Sha256Digest, Subject,
};
use slicewall::unit::{parse_cgroup_path, UnitInfo};
use tempfile::TempDir;

/// The three drop-in directories, highest precedence first.
#[derive(Clone, Copy)]
enum Directory {
    Etc,
    Run,
    UsrLib,
}

impl Directory {
    fn relative_path(self) -> &'static str {
        match self {
            Directory::Etc => "etc/slicewall/rules.d",
            Directory::Run => "run/slicewall/rules.d",
            Directory::UsrLib => "usr/lib/slicewall/rules.d",
        }
    }

    /// Returns the directory that contains the per-unit drop-in directories.
    fn units_path(self) -> &'static str {
        match self {
            Directory::Etc => "etc/slicewall/units",
            Directory::Run => "run/slicewall/units",
            Directory::UsrLib => "usr/lib/slicewall/units",
        }
    }
}

/// A temporary root directory, removed on drop.
struct Root {
    directory: TempDir,
}

impl Root {
    fn new() -> Self {
        Root {
            directory: tempfile::tempdir().expect("create temporary root"),
        }
    }

    fn path(&self) -> &Path {
        self.directory.path()
    }

    fn file_path(&self, directory: Directory, name: &str) -> PathBuf {
        let directory = self.path().join(directory.relative_path());
        fs::create_dir_all(&directory).expect("create rule directory");
        directory.join(name)
    }

    fn write(&self, directory: Directory, name: &str, content: &str) -> PathBuf {
        let path = self.file_path(directory, name);
        fs::write(&path, content).expect("write rule file");
        path
    }

    fn symlink(&self, directory: Directory, name: &str, target: &Path) -> PathBuf {
        let path = self.file_path(directory, name);
        symlink(target, &path).expect("create symbolic link");
        path
    }
}

impl Root {
    fn unit_file_path(&self, directory: Directory, unit_directory: &str, name: &str) -> PathBuf {
        let directory = self
            .path()
            .join(directory.units_path())
            .join(unit_directory);
        fs::create_dir_all(&directory).expect("create per-unit directory");
        directory.join(name)
    }

    fn write_unit(
        &self,
        directory: Directory,
        unit_directory: &str,
        name: &str,
        content: &str,
    ) -> PathBuf {
        let path = self.unit_file_path(directory, unit_directory, name);
        fs::write(&path, content).expect("write per-unit rule file");
        path
    }
}

fn rule(action: &str, extra: &str) -> String {
    format!("[[rule]]\naction = \"{action}\"\n{extra}\n")
}

fn actions(rules: &[Rule]) -> Vec<Action> {
    rules.iter().map(|rule| rule.action).collect()
}

fn ports(rules: &[Rule]) -> Vec<u16> {
    rules
        .iter()
        .map(|rule| rule.destination.ports[0].first)
        .collect()
}

#[test]
fn directories_in_precedence_order() {
    let directories = rule_directories(Path::new("/srv/image"));
    assert_eq!(
        directories,
        [
            PathBuf::from("/srv/image/etc/slicewall/rules.d"),
            PathBuf::from("/srv/image/run/slicewall/rules.d"),
            PathBuf::from("/srv/image/usr/lib/slicewall/rules.d"),
        ]
    );
}

#[test]
fn missing_directories_load_empty() {
    let root = Root::new();
    let (rule_set, errors) = load(root.path());
    assert!(rule_set.rules.is_empty());
    assert!(rule_set.files.is_empty());
    assert!(errors.is_empty(), "{errors:?}");
    assert!(load_strict(root.path()).is_ok());
}

#[test]
fn higher_directory_overrides_whole_file() {
    let root = Root::new();
    root.write(
        Directory::UsrLib,
        "10-web.toml",
        &(rule("deny", "port = 80") + &rule("deny", "port = 81")),
    );
    let run = root.write(Directory::Run, "10-web.toml", &rule("ask", "port = 82"));
    let etc = root.write(Directory::Etc, "20-mail.toml", &rule("allow", "port = 25"));
    root.write(
        Directory::UsrLib,
        "20-mail.toml",
        &rule("deny", "port = 26"),
    );

    let rule_set = load_strict(root.path()).unwrap();
    assert_eq!(rule_set.files, [run.clone(), etc.clone()]);
    assert_eq!(ports(&rule_set.rules), [82, 25]);
    assert_eq!(actions(&rule_set.rules), [Action::Ask, Action::Allow]);
    assert_eq!(rule_set.rules[0].origin.file, run);
    assert_eq!(rule_set.rules[1].origin.file, etc);

    let etc_web = root.write(Directory::Etc, "10-web.toml", &rule("allow", "port = 83"));
    let rule_set = load_strict(root.path()).unwrap();
    assert_eq!(rule_set.files, [etc_web, etc]);
    assert_eq!(ports(&rule_set.rules), [83, 25]);
}

#[test]
fn empty_file_masks_name() {
    let root = Root::new();
    root.write(Directory::UsrLib, "10-web.toml", &rule("deny", "port = 80"));
    root.write(
        Directory::UsrLib,
        "20-keep.toml",
        &rule("deny", "port = 90"),
    );
    root.write(Directory::Etc, "10-web.toml", "");

    let rule_set = load_strict(root.path()).unwrap();
    assert_eq!(ports(&rule_set.rules), [90]);
    assert_eq!(rule_set.files.len(), 1);
    assert!(rule_set.files[0].ends_with("usr/lib/slicewall/rules.d/20-keep.toml"));
}

#[test]
fn dev_null_symlink_masks_name() {
    let root = Root::new();
    root.write(Directory::UsrLib, "10-web.toml", &rule("deny", "port = 80"));
    root.symlink(Directory::Run, "10-web.toml", Path::new("/dev/null"));

    let rule_set = load_strict(root.path()).unwrap();
    assert!(rule_set.rules.is_empty());
    assert!(rule_set.files.is_empty());
}

#[test]
fn symlink_to_file_is_followed() {
    let root = Root::new();
    let shared = root.path().join("shared.toml");
    fs::write(&shared, rule("deny", "port = 70")).unwrap();
    let link = root.symlink(Directory::Etc, "10-shared.toml", &shared);
    root.write(
        Directory::UsrLib,
        "10-shared.toml",
        &rule("allow", "port = 71"),
    );

    let rule_set = load_strict(root.path()).unwrap();
    assert_eq!(ports(&rule_set.rules), [70]);
    assert_eq!(rule_set.files, [link]);
}

#[test]
fn dangling_symlink_is_error_and_keeps_name() {
    let root = Root::new();
    let link = root.symlink(
        Directory::Etc,
        "10-web.toml",
        &root.path().join("missing.toml"),
    );
    root.write(
        Directory::UsrLib,
        "10-web.toml",
        &rule("allow", "port = 80"),
    );

    let (rule_set, errors) = load(root.path());
    assert!(
        rule_set.rules.is_empty(),
        "the lower file must not replace a broken override"
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(matches!(&errors[0], RuleError::ReadFile { path, .. } if *path == link));
}

#[test]
fn only_toml_files_count() {
    let root = Root::new();
    root.write(Directory::Etc, "10-a.toml", &rule("deny", "port = 1"));
    root.write(Directory::Etc, "20-b.conf", &rule("deny", "port = 2"));
    root.write(Directory::Etc, "30-c.toml~", &rule("deny", "port = 3"));
    root.write(Directory::Etc, ".40-d.toml", &rule("deny", "port = 4"));
    root.write(Directory::Etc, ".toml", &rule("deny", "port = 5"));
    root.write(Directory::Etc, "60-f.TOML", &rule("deny", "port = 6"));
    fs::create_dir_all(root.file_path(Directory::Etc, "70-g.toml")).unwrap();
    root.write(Directory::UsrLib, "70-g.toml", &rule("deny", "port = 7"));

    let rule_set = load_strict(root.path()).unwrap();
    // A directory named *.toml is skipped and does not take the name from the lower file.
    assert_eq!(ports(&rule_set.rules), [1, 7]);
}

#[test]
fn files_apply_in_lexical_order() {
    let root = Root::new();
    root.write(Directory::UsrLib, "20-b.toml", &rule("deny", "port = 20"));
    root.write(Directory::Etc, "30-c.toml", &rule("deny", "port = 30"));
    root.write(
        Directory::Run,
        "10-a.toml",
        &(rule("deny", "port = 10") + &rule("deny", "port = 11")),
    );
    root.write(Directory::Etc, "B.toml", &rule("deny", "port = 2"));
    root.write(Directory::Run, "a.toml", &rule("deny", "port = 3"));

    let rule_set = load_strict(root.path()).unwrap();
    // Byte order: digits, then upper case, then lower case.
    assert_eq!(ports(&rule_set.rules), [10, 11, 20, 30, 2, 3]);
    let names: Vec<&str> = rule_set
        .files
        .iter()
        .map(|path| path.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["10-a.toml", "20-b.toml", "30-c.toml", "B.toml", "a.toml"]
    );
}

#[test]
fn bad_file_skipped_by_load_rejected_by_strict() {
    let root = Root::new();
    root.write(Directory::Etc, "10-good.toml", &rule("deny", "port = 10"));
    let bad = root.write(
        Directory::Etc,
        "20-bad.toml",
        "[[rule]]\naction = \"deny\"\nport = 20\n\n[[rule]]\naction = \"deny\"\naddress = \"10.0.0.1/8\"\n",
    );
    root.write(
        Directory::UsrLib,
        "30-good.toml",
        &rule("allow", "port = 30"),
    );

    let (rule_set, errors) = load(root.path());
    assert_eq!(
        ports(&rule_set.rules),
        [10, 30],
        "the bad file must contribute no rule"
    );
    assert_eq!(rule_set.files.len(), 2);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].to_string(),
        format!(
            "{}:7:11: field `address`: prefix \"10.0.0.1/8\" has host bits set, write \"10.0.0.0/8\"",
            bad.display()
        )
    );

    let strict_errors = load_strict(root.path()).unwrap_err();
    assert_eq!(strict_errors.len(), 1);
    assert!(matches!(
        &strict_errors[0],
        RuleError::Invalid { file, line: 7, column: 11, kind: ParseErrorKind::HostBitsSet { .. } } if *file == bad
    ));
}

#[test]
fn errors_from_several_files() {
    let root = Root::new();
    let first = root.write(
        Directory::Etc,
        "10-a.toml",
        "[[rule]]\naction = \"deny\"\nport = 0\nprotocol = \"sctp\"\n",
    );
    let second = root.write(Directory::UsrLib, "20-b.toml", "[[rule\n");
    let third = root.file_path(Directory::Run, "30-c.toml");
    fs::write(&third, b"[[rule]]\naction = \"\xfe\"\n").unwrap();

    let errors = load_strict(root.path()).unwrap_err();
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 4, "{messages:?}");
    assert!(
        messages[0].starts_with(&format!("{}:3:8: field `port`", first.display())),
        "{}",
        messages[0]
    );
    assert!(
        messages[1].starts_with(&format!("{}:4:12: field `protocol`", first.display())),
        "{}",
        messages[1]
    );
    assert!(
        messages[2].starts_with(&format!("{}:1:", second.display())),
        "{}",
        messages[2]
    );
    assert_eq!(
        messages[3],
        format!("{}:2:11: invalid UTF-8", third.display())
    );
}

#[test]
fn unlistable_directory_is_error() {
    let root = Root::new();
    // A regular file where the directory belongs cannot be listed.
    fs::create_dir_all(root.path().join("etc/slicewall")).unwrap();
    fs::write(root.path().join("etc/slicewall/rules.d"), "not a directory").unwrap();
    root.write(Directory::UsrLib, "10-a.toml", &rule("deny", "port = 1"));

    let (rule_set, errors) = load(root.path());
    assert_eq!(ports(&rule_set.rules), [1]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        matches!(&errors[0], RuleError::ListDirectory { path, .. } if path.ends_with("etc/slicewall/rules.d"))
    );
    assert!(load_strict(root.path()).is_err());
}

/// Returns the rule contents that the permutation test spreads over differently named files. Some
/// rules tie on rank with a rule of different content (the two slices, the two /8 matches),
/// and some are identical, so a tie-break that depends on file order would show.
fn permutation_contents(digest: &str) -> [String; 5] {
    [
        rule("allow", "port = 443")
            + &rule("deny", "port = 443\naddress = \"10.0.0.0/8\"")
            + &rule(
                "deny",
                "port = 443\naddress = [\"10.0.0.0/8\", \"192.0.2.0/24\"]",
            ),
        rule("ask", "unit = \"app.slice\"")
            + &rule("allow", "unit = \"app.slice\"\nprotocol = \"udp\""),
        rule("deny", &format!("sha256 = \"{digest}\"\nport = 80")) + &rule("allow", "user = 1000"),
        rule("ask", "unit = \"user.slice\"")
            + &rule("allow", "user = 1000")
            + &rule("deny", "exe = \"/usr/sbin/sshd\"\npriority = 5"),
        rule("allow", "app = \"org.mozilla.*\"\naddress = \"::/0\"")
            + &rule("ask", "port = [80, 443]"),
    ]
}

/// Decides every subject-flow pair of the permutation test against one rule set. Returns each
/// winning rule as text without its origin.
fn decisions(rules: &[Rule], units: &[UnitInfo], digest: &Sha256Digest) -> Vec<Option<String>> {
    let flows = [
        Flow {
            protocol: Protocol::Tcp,
            address: "10.1.2.3".parse().unwrap(),
            port: 443,
        },
        Flow {
            protocol: Protocol::Tcp,
            address: "192.0.2.1".parse().unwrap(),
            port: 80,
        },
        Flow {
            protocol: Protocol::Udp,
            address: "192.0.2.1".parse().unwrap(),
            port: 53,
        },
        Flow {
            protocol: Protocol::Tcp,
            address: "2001:db8::1".parse().unwrap(),
            port: 443,
        },
        Flow {
            protocol: Protocol::Tcp,
            address: "::ffff:10.0.0.1".parse().unwrap(),
            port: 22,
        },
    ];
    let executables = [
        None,
        Some(Path::new("/usr/bin/curl")),
        Some(Path::new("/usr/sbin/sshd")),
    ];

    let mut results = Vec::new();
    for unit in units {
        for exe in executables {
            for (sha256, uid) in [(None, 0), (Some(digest), 1000)] {
                let subject = Subject {
                    unit,
                    exe,
                    sha256,
                    uid,
                };
                for flow in &flows {
                    let decided = decide(rules, &subject, flow).map(|rule| {
                        format!(
                            "{:?} {} {:?} {:?}",
                            rule.action, rule.priority, rule.selectors, rule.destination
                        )
                    });
                    results.push(decided);
                }
            }
        }
    }
    results
}

#[test]
fn decisions_independent_of_file_names() {
    let digest_text = "ab".repeat(32);
    let digest: Sha256Digest = digest_text.parse().unwrap();
    let contents = permutation_contents(&digest_text);
    let units = [
        parse_cgroup_path("/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-org.gnome.Terminal-4321.scope"),
        parse_cgroup_path("/user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.mozilla.firefox-777.scope"),
        parse_cgroup_path("/system.slice/sshd.service"),
    ];
    let names = [
        "10-a.toml",
        "20-b.toml",
        "30-c.toml",
        "40-d.toml",
        "50-e.toml",
    ];
    let directories = [Directory::Etc, Directory::Run, Directory::UsrLib];

    let mut expected: Option<Vec<Option<String>>> = None;
    let mut order: Vec<usize> = (0..contents.len()).collect();
    let mut permutations = 0;
    loop {
        let root = Root::new();
        for (slot, &content_index) in order.iter().enumerate() {
            let directory = directories[(slot + content_index) % directories.len()];
            root.write(directory, names[slot], &contents[content_index]);
        }
        let rule_set = load_strict(root.path()).unwrap();
        assert_eq!(rule_set.rules.len(), 12);

        let results = decisions(&rule_set.rules, &units, &digest);
        assert!(results.iter().any(Option::is_some));
        match &expected {
            None => expected = Some(results),
            Some(expected) => assert_eq!(&results, expected, "file order {order:?}"),
        }
        permutations += 1;

        if !next_permutation(&mut order) {
            break;
        }
    }
    assert_eq!(permutations, 120);
}

/// Steps `items` to the next permutation in lexical order. Returns false after the last one.
fn next_permutation(items: &mut [usize]) -> bool {
    let Some(pivot) = items.windows(2).rposition(|pair| pair[0] < pair[1]) else {
        return false;
    };
    let successor = items.iter().rposition(|&item| item > items[pivot]).unwrap();
    items.swap(pivot, successor);
    items[pivot + 1..].reverse();
    true
}

const FLATPAK_APP: &str =
    "/user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.foo.App-12.scope";
const FLATPAK_OTHER: &str =
    "/user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.bar.Game-7.scope";
const GNOME_TERMINAL: &str =
    "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-org.gnome.Terminal-3.scope";
const OTHER_USER_APP: &str =
    "/user.slice/user-1001.slice/user@1001.service/app.slice/app-flatpak-org.foo.App-12.scope";
const SSHD: &str = "/system.slice/sshd.service";

/// Decides a TCP flow to 192.0.2.1 on `port` for a process of uid 1000 in `cgroup`. Returns the
/// action and the file of the deciding rule.
fn decision(rules: &[Rule], cgroup: &str, port: u16) -> Option<(Action, PathBuf)> {
    let unit = parse_cgroup_path(cgroup);
    let subject = Subject {
        unit: &unit,
        exe: None,
        sha256: None,
        uid: 1000,
    };
    let flow = Flow {
        protocol: Protocol::Tcp,
        address: "192.0.2.1".parse().unwrap(),
        port,
    };
    decide(rules, &subject, &flow).map(|rule| (rule.action, rule.origin.file.clone()))
}

/// Returns the ports that some rule decides for a process in `cgroup`, out of `ports`.
fn decided_ports(rules: &[Rule], cgroup: &str, ports: &[u16]) -> Vec<u16> {
    ports
        .iter()
        .copied()
        .filter(|&port| decision(rules, cgroup, port).is_some())
        .collect()
}

#[test]
fn unit_directories_in_precedence_order() {
    assert_eq!(
        unit_directories(Path::new("/srv/image")),
        [
            PathBuf::from("/srv/image/etc/slicewall/units"),
            PathBuf::from("/srv/image/run/slicewall/units"),
            PathBuf::from("/srv/image/usr/lib/slicewall/units"),
        ]
    );
}

#[test]
fn exact_unit_directory() {
    let root = Root::new();
    let sshd = root.write_unit(
        Directory::Etc,
        "sshd.service.d",
        "10-ssh.toml",
        &rule("deny", "port = 22"),
    );
    let manager = root.write_unit(
        Directory::UsrLib,
        "user@1000.service.d",
        "10-proxy.toml",
        &rule("allow", "port = 3128"),
    );
    let terminal = root.write_unit(
        Directory::Run,
        "app-gnome-org.gnome.Terminal-3.scope.d",
        "10-web.toml",
        &rule("allow", "port = 443"),
    );

    let rule_set = load_strict(root.path()).unwrap();
    // Sorted by directory name: '-' sorts before 's' and 'u'.
    assert_eq!(
        rule_set.files,
        [terminal.clone(), sshd.clone(), manager.clone()]
    );
    assert_eq!(
        decision(&rule_set.rules, SSHD, 22),
        Some((Action::Deny, sshd))
    );
    assert_eq!(
        decision(&rule_set.rules, "/system.slice/cron.service", 22),
        None
    );

    // user@1000.service.d covers every unit of that user manager, like unit = "user@1000.service".
    assert_eq!(
        decision(&rule_set.rules, FLATPAK_APP, 3128),
        Some((Action::Allow, manager.clone()))
    );
    assert_eq!(
        decision(
            &rule_set.rules,
            "/user.slice/user-1000.slice/user@1000.service",
            3128
        ),
        Some((Action::Allow, manager))
    );
    assert_eq!(decision(&rule_set.rules, OTHER_USER_APP, 3128), None);

    assert_eq!(
        decision(&rule_set.rules, GNOME_TERMINAL, 443),
        Some((Action::Allow, terminal))
    );
    assert_eq!(decision(&rule_set.rules, FLATPAK_APP, 443), None);
}

#[test]
fn unit_rule_ranks_like_unit_key() {
    let root = Root::new();
    root.write_unit(
        Directory::Etc,
        "sshd.service.d",
        "10-ssh.toml",
        &rule("allow", "user = 1000"),
    );
    root.write(
        Directory::Etc,
        "10-same.toml",
        &rule("deny", "unit = \"sshd.service\"\nuser = 1000"),
    );
    let rule_set = load_strict(root.path()).unwrap();
    let levels: Vec<u8> = rule_set
        .rules
        .iter()
        .map(|rule| rule.selectors.identity_level())
        .collect();
    assert_eq!(levels, [5, 5]);
    // Equal rank but for the action, so deny wins the tie as it would in one rules.d file.
    assert_eq!(
        decision(&rule_set.rules, SSHD, 22).map(|(action, _)| action),
        Some(Action::Deny)
    );
}

#[test]
fn prefix_directories_at_several_levels() {
    let root = Root::new();
    root.write_unit(
        Directory::Etc,
        "app-.scope.d",
        "10-a.toml",
        &rule("deny", "port = 1"),
    );
    root.write_unit(
        Directory::Etc,
        "app-flatpak-.scope.d",
        "20-b.toml",
        &rule("deny", "port = 2"),
    );
    root.write_unit(
        Directory::Run,
        "app-flatpak-org.foo.App-.scope.d",
        "30-c.toml",
        &rule("deny", "port = 3"),
    );
    root.write_unit(
        Directory::UsrLib,
        "app-flatpak-org.foo.App-12.scope.d",
        "40-d.toml",
        &rule("deny", "port = 4"),
    );
    root.write_unit(
        Directory::Etc,
        "app-.service.d",
        "50-e.toml",
        &rule("deny", "port = 5"),
    );

    let rules = load_strict(root.path()).unwrap().rules;
    let all = [1, 2, 3, 4, 5];
    assert_eq!(decided_ports(&rules, FLATPAK_APP, &all), [1, 2, 3, 4]);
    assert_eq!(decided_ports(&rules, FLATPAK_OTHER, &all), [1, 2]);
    assert_eq!(decided_ports(&rules, GNOME_TERMINAL, &all), [1]);
    assert_eq!(
        decided_ports(&rules, "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-org.gnome.Nautilus@3.service", &all),
        [5]
    );
    assert_eq!(decided_ports(&rules, SSHD, &all), Vec::<u16>::new());
}

#[test]
fn slice_and_slice_prefix_directories() {
    let root = Root::new();
    root.write_unit(
        Directory::Etc,
        "user.slice.d",
        "10-a.toml",
        &rule("deny", "port = 1"),
    );
    root.write_unit(
        Directory::Etc,
        "user-1000.slice.d",
        "20-b.toml",
        &rule("deny", "port = 2"),
    );
    root.write_unit(
        Directory::Etc,
        "user-.slice.d",
        "30-c.toml",
        &rule("deny", "port = 3"),
    );
    root.write_unit(
        Directory::Etc,
        "app.slice.d",
        "40-d.toml",
        &rule("deny", "port = 4"),
    );
    root.write_unit(
        Directory::Etc,
        "-.slice.d",
        "50-e.toml",
        &rule("deny", "port = 5"),
    );
    root.write_unit(
        Directory::Etc,
        "system-.slice.d",
        "60-f.toml",
        &rule("deny", "port = 6"),
    );

    let rules = load_strict(root.path()).unwrap().rules;
    let all = [1, 2, 3, 4, 5, 6];
    assert_eq!(decided_ports(&rules, FLATPAK_APP, &all), [1, 2, 3, 4, 5]);
    assert_eq!(decided_ports(&rules, OTHER_USER_APP, &all), [1, 3, 4, 5]);
    assert_eq!(decided_ports(&rules, SSHD, &all), [5]);
    assert_eq!(
        decided_ports(
            &rules,
            "/system.slice/system-getty.slice/getty@tty1.service",
            &all
        ),
        [5, 6]
    );
    // The root slice applies to a process without a unit as well.
    assert_eq!(decided_ports(&rules, "/", &all), [5]);
}

#[test]
fn unit_file_overrides_across_roots() {
    let root = Root::new();
    root.write_unit(
        Directory::UsrLib,
        "sshd.service.d",
        "10-ssh.toml",
        &(rule("deny", "port = 80") + &rule("deny", "port = 81")),
    );
    let run = root.write_unit(
        Directory::Run,
        "sshd.service.d",
        "10-ssh.toml",
        &rule("deny", "port = 82"),
    );
    // The same file name in another directory is a different file.
    let other = root.write_unit(
        Directory::UsrLib,
        "cron.service.d",
        "10-ssh.toml",
        &rule("deny", "port = 83"),
    );
    // And a rules.d file of that name is unrelated too.
    let global = root.write(Directory::UsrLib, "10-ssh.toml", &rule("deny", "port = 84"));

    let rule_set = load_strict(root.path()).unwrap();
    assert_eq!(rule_set.files, [global, other, run.clone()]);
    assert_eq!(ports(&rule_set.rules), [84, 83, 82]);

    let etc = root.write_unit(
        Directory::Etc,
        "sshd.service.d",
        "10-ssh.toml",
        &rule("allow", "port = 85"),
    );
    let rule_set = load_strict(root.path()).unwrap();
    assert_eq!(ports(&rule_set.rules), [84, 83, 85]);
    assert_eq!(rule_set.files[2], etc);
    assert!(!rule_set.files.contains(&run));
}

#[test]
fn specific_directory_overrides_for_its_units() {
    let root = Root::new();
    let everything = root.write_unit(
        Directory::UsrLib,
        "-.slice.d",
        "50-net.toml",
        &rule("deny", "port = 80"),
    );
    let users = root.write_unit(
        Directory::UsrLib,
        "user-.slice.d",
        "50-net.toml",
        &rule("deny", "port = 80\npriority = 1"),
    );
    let apps = root.write_unit(
        Directory::UsrLib,
        "app-.scope.d",
        "50-net.toml",
        &rule("ask", "port = 80"),
    );
    let flatpak = root.write_unit(
        Directory::Etc,
        "app-flatpak-.scope.d",
        "50-net.toml",
        &rule("allow", "port = 80"),
    );
    let manager = root.write_unit(
        Directory::Etc,
        "user@1000.service.d",
        "50-net.toml",
        &rule("deny", "port = 80\npriority = 2"),
    );

    let rule_set = load_strict(root.path()).unwrap();
    assert_eq!(rule_set.files.len(), 5);

    // Each unit gets the file of its most specific directory and no other 50-net.toml, even
    // where a less specific one has a higher priority.
    assert_eq!(
        decision(&rule_set.rules, FLATPAK_APP, 80),
        Some((Action::Allow, flatpak))
    );
    assert_eq!(
        decision(&rule_set.rules, GNOME_TERMINAL, 80),
        Some((Action::Ask, apps))
    );
    assert_eq!(
        decision(
            &rule_set.rules,
            "/user.slice/user-1000.slice/user@1000.service/app.slice/dbus.service",
            80
        ),
        Some((Action::Deny, manager))
    );
    assert_eq!(
        decision(
            &rule_set.rules,
            "/user.slice/user-1001.slice/session-4.scope",
            80
        ),
        Some((Action::Deny, users))
    );
    assert_eq!(
        decision(&rule_set.rules, SSHD, 80),
        Some((Action::Deny, everything))
    );

    // The replaced rules name the directories that replace them.
    let slice_rule = rule_set
        .rules
        .iter()
        .find(|rule| rule.origin.file.ends_with("-.slice.d/50-net.toml"))
        .unwrap();
    assert_eq!(
        slice_rule.selectors.except.len(),
        4,
        "{:?}",
        slice_rule.selectors
    );
    let flatpak_rule = rule_set
        .rules
        .iter()
        .find(|rule| {
            rule.origin
                .file
                .ends_with("app-flatpak-.scope.d/50-net.toml")
        })
        .unwrap();
    assert!(flatpak_rule.selectors.except.is_empty());
}

#[test]
fn empty_unit_file_masks_for_its_units() {
    let root = Root::new();
    root.write_unit(
        Directory::UsrLib,
        "app-.scope.d",
        "50-net.toml",
        &rule("deny", "port = 80"),
    );
    root.write_unit(Directory::Etc, "app-flatpak-.scope.d", "50-net.toml", "");
    root.write_unit(
        Directory::UsrLib,
        "app-.scope.d",
        "60-mail.toml",
        &rule("deny", "port = 25"),
    );
    root.write_unit(Directory::Etc, "app-.scope.d", "60-mail.toml", "");

    let rule_set = load_strict(root.path()).unwrap();
    assert_eq!(rule_set.files.len(), 1, "{:?}", rule_set.files);
    assert_eq!(
        decided_ports(&rule_set.rules, FLATPAK_APP, &[25, 80]),
        Vec::<u16>::new()
    );
    assert_eq!(
        decided_ports(&rule_set.rules, GNOME_TERMINAL, &[25, 80]),
        [80]
    );
}

#[test]
fn dev_null_unit_file_masks_for_its_units() {
    let root = Root::new();
    root.write_unit(
        Directory::UsrLib,
        "user.slice.d",
        "50-net.toml",
        &rule("deny", "port = 80"),
    );
    let link = root.unit_file_path(Directory::Run, "user@1000.service.d", "50-net.toml");
    symlink("/dev/null", &link).unwrap();
    root.write_unit(
        Directory::UsrLib,
        "sshd.service.d",
        "60-ssh.toml",
        &rule("deny", "port = 22"),
    );
    let link = root.unit_file_path(Directory::Etc, "sshd.service.d", "60-ssh.toml");
    symlink("/dev/null", &link).unwrap();

    let rule_set = load_strict(root.path()).unwrap();
    assert_eq!(
        decided_ports(&rule_set.rules, FLATPAK_APP, &[22, 80]),
        Vec::<u16>::new()
    );
    assert_eq!(
        decided_ports(&rule_set.rules, OTHER_USER_APP, &[22, 80]),
        [80]
    );
    assert_eq!(
        decided_ports(&rule_set.rules, SSHD, &[22, 80]),
        Vec::<u16>::new()
    );
}

#[test]
fn broken_specific_file_still_replaces() {
    let root = Root::new();
    root.write_unit(
        Directory::UsrLib,
        "app-.scope.d",
        "50-net.toml",
        &rule("deny", "port = 80"),
    );
    let broken = root.write_unit(
        Directory::Etc,
        "app-flatpak-.scope.d",
        "50-net.toml",
        "[[rule]]\naction = \"block\"\n",
    );

    let (rule_set, errors) = load(root.path());
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0]
        .to_string()
        .starts_with(&format!("{}:2:10: ", broken.display())));
    // The less specific file must not apply in place of the file the administrator wrote.
    assert_eq!(
        decided_ports(&rule_set.rules, FLATPAK_APP, &[80]),
        Vec::<u16>::new()
    );
    assert_eq!(decided_ports(&rule_set.rules, GNOME_TERMINAL, &[80]), [80]);
}

#[test]
fn unit_key_in_unit_file_is_error() {
    let root = Root::new();
    let good = root.write_unit(
        Directory::Etc,
        "sshd.service.d",
        "10-a.toml",
        &rule("deny", "port = 1"),
    );
    let bad = root.write_unit(
        Directory::Etc,
        "sshd.service.d",
        "20-b.toml",
        "[[rule]]\naction = \"deny\"\nport = 2\nunit = \"cron.service\"\n",
    );

    let (rule_set, errors) = load(root.path());
    assert_eq!(rule_set.files, [good]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].to_string(),
        format!(
            "{}:4:8: field `unit` is not allowed in a per-unit drop-in file, because its directory sshd.service.d already names the unit",
            bad.display()
        )
    );
    assert!(matches!(
        &errors[0],
        RuleError::Invalid {
            line: 4,
            column: 8,
            kind: ParseErrorKind::UnitInDropIn { .. },
            ..
        }
    ));

    // A reload rejects the whole set, so the daemon keeps its previous rules.
    let strict_errors = load_strict(root.path()).unwrap_err();
    assert_eq!(strict_errors.len(), 1);
}

#[test]
fn invalid_directory_names_are_errors() {
    let root = Root::new();
    let content = rule("deny", "port = 9");
    root.write_unit(
        Directory::Etc,
        "sshd.service.d",
        "10-a.toml",
        &rule("deny", "port = 1"),
    );
    root.write_unit(Directory::Etc, "backup.timer.d", "10-a.toml", &content);
    root.write_unit(Directory::Run, "getty@.service.d", "10-a.toml", &content);
    root.write_unit(Directory::UsrLib, "sshd.service", "10-a.toml", &content);
    root.write_unit(Directory::UsrLib, "app-*.scope.d", "10-a.toml", &content);
    // Plain files and hidden directories beside the drop-in directories are skipped.
    fs::write(root.path().join("etc/slicewall/units/README"), "notes").unwrap();
    root.write_unit(Directory::Etc, ".sshd.service.d", "10-a.toml", &content);

    let (rule_set, errors) = load(root.path());
    assert_eq!(ports(&rule_set.rules), [1]);
    let mut messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    messages.sort();
    let units = |directory: Directory| root.path().join(directory.units_path());
    let expected = [
        format!(
            "{}: invalid per-unit drop-in directory name, \"backup.timer\" is not a valid unit name: expected a name ending in .service, .scope, .socket, .mount, .swap or .slice, the unit types that hold processes",
            units(Directory::Etc).join("backup.timer.d").display()
        ),
        format!(
            "{}: invalid per-unit drop-in directory name, \"getty@.service\" is a unit template, and drop-in directories for templates are not supported, name each instance such as \"getty@1.service.d\"",
            units(Directory::Run).join("getty@.service.d").display()
        ),
        format!(
            "{}: invalid per-unit drop-in directory name, \"app-*.scope\" is not a valid unit name: unit names contain only ASCII letters, digits and \":-_.\\@\" (write other characters with systemd-escape)",
            units(Directory::UsrLib).join("app-*.scope.d").display()
        ),
        format!(
            "{}: invalid per-unit drop-in directory name, expected a unit name followed by \".d\", such as \"sshd.service.d\"",
            units(Directory::UsrLib).join("sshd.service").display()
        ),
    ];
    let mut expected = expected.to_vec();
    expected.sort();
    assert_eq!(messages, expected);
    assert!(errors
        .iter()
        .all(|error| matches!(error, RuleError::InvalidDirectory { .. })));
    assert_eq!(load_strict(root.path()).unwrap_err().len(), 4);
}

#[test]
fn only_toml_files_in_unit_directory_count() {
    let root = Root::new();
    let directory = "sshd.service.d";
    root.write_unit(
        Directory::Etc,
        directory,
        "10-a.toml",
        &rule("deny", "port = 1"),
    );
    root.write_unit(
        Directory::Etc,
        directory,
        "20-b.conf",
        &rule("deny", "port = 2"),
    );
    root.write_unit(
        Directory::Etc,
        directory,
        "30-c.toml~",
        &rule("deny", "port = 3"),
    );
    root.write_unit(
        Directory::Etc,
        directory,
        ".40-d.toml",
        &rule("deny", "port = 4"),
    );
    root.write_unit(Directory::Etc, directory, "README", "not TOML");
    fs::create_dir_all(root.unit_file_path(Directory::Etc, directory, "50-e.toml")).unwrap();
    root.write_unit(
        Directory::UsrLib,
        directory,
        "50-e.toml",
        &rule("deny", "port = 5"),
    );

    let rule_set = load_strict(root.path()).unwrap();
    assert_eq!(ports(&rule_set.rules), [1, 5]);
    assert_eq!(rule_set.files.len(), 2);
}

#[test]
fn unit_rule_origin_names_the_file() {
    let root = Root::new();
    let path = root.write_unit(
        Directory::Etc,
        "sshd.service.d",
        "10-a.toml",
        &format!("# comment\n\n{}", rule("deny", "port = 1")),
    );
    let rule_set = load_strict(root.path()).unwrap();
    assert_eq!(
        rule_set.rules[0].origin.to_string(),
        format!("{}:3", path.display())
    );
}

/// The mail example of slicewall.rules(5): a prefix directory, a more specific prefix directory
/// with a file of the same name, and a mask for one application.
#[test]
fn manual_mail_example() {
    let root = Root::new();
    let ports = "port = [25, 465, 587]";
    let scopes = root.write_unit(
        Directory::Etc,
        "app-.scope.d",
        "50-mail.toml",
        &rule("deny", ports),
    );
    let flatpak = root.write_unit(
        Directory::Etc,
        "app-flatpak-.scope.d",
        "50-mail.toml",
        &(rule(
            "allow",
            &format!("app = \"org.mozilla.Thunderbird\"\n{ports}"),
        ) + &rule("deny", ports)),
    );
    let thunderbird = "/user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.mozilla.Thunderbird-5.scope";
    let mailer = "/user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.example.Mailer-9.scope";

    let rules = load_strict(root.path()).unwrap().rules;
    assert_eq!(
        decision(&rules, thunderbird, 587),
        Some((Action::Allow, flatpak.clone()))
    );
    assert_eq!(
        decision(&rules, FLATPAK_APP, 25),
        Some((Action::Deny, flatpak.clone()))
    );
    assert_eq!(
        decision(&rules, GNOME_TERMINAL, 465),
        Some((Action::Deny, scopes))
    );
    assert_eq!(decision(&rules, mailer, 25), Some((Action::Deny, flatpak)));

    let link = root.unit_file_path(
        Directory::Etc,
        "app-flatpak-org.example.Mailer-.scope.d",
        "50-mail.toml",
    );
    symlink("/dev/null", &link).unwrap();
    let rules = load_strict(root.path()).unwrap().rules;
    assert_eq!(decision(&rules, mailer, 25), None);
    assert_eq!(
        decision(&rules, FLATPAK_APP, 25).map(|(action, _)| action),
        Some(Action::Deny)
    );
}
