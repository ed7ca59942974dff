//! End-to-end tests of the gate: a real slicewalld guards a cgroup of its own, and real client
//! processes in that cgroup connect to echo servers on loopback and across a veth pair.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{probe, write_rules, Lab, DENIED, SERVER_V4, SERVER_V6};

const EPERM: &str = "error: EPERM (errno 1)";

/// Lets the daemon identify the client's new executable before its first flow, so the flow is
/// decided by the compiled rules in the kernel rather than held for the daemon.
const SETTLE: &str = "300";

fn targets(lab: &Lab) -> [(String, &'static str); 5] {
    let network = &lab.network;
    [
        (
            format!("127.0.0.1:{}", network.loopback4.port),
            "loopback IPv4",
        ),
        (format!("[::1]:{}", network.loopback6.port), "loopback IPv6"),
        (format!("{SERVER_V4}:{}", network.veth4.port), "veth IPv4"),
        (format!("[{SERVER_V6}]:{}", network.veth6.port), "veth IPv6"),
        (
            format!("[::ffff:{SERVER_V4}]:{}", network.veth4.port),
            "veth IPv4-mapped IPv6",
        ),
    ]
}

#[test]
fn address_rule_allows_and_denies_every_flow_kind() {
    require_lab!();
    let mut lab = Lab::new(&format!(
        "[[rule]]\naction = \"deny\"\naddress = [\"{SERVER_V4}/32\", \"{SERVER_V6}/128\"]\n"
    ));
    lab.start(&[]);
    let app = lab.cgroup.child("probe.service");

    // One allowed flow first, so the daemon has hashed the probe before the flows under test.
    let loopback = format!("127.0.0.1:{}", lab.network.loopback4.port);
    assert_eq!(lab.probe(&app, &["tcp", &loopback]), vec!["ok"]);

    for kind in ["tcp", "udp-connect", "udp-sendto"] {
        for (target, name) in targets(&lab) {
            let expected = if name.starts_with("veth") {
                EPERM
            } else {
                "ok"
            };
            let lines = lab.probe_raw(&probe(), &app, &["--wait-ms", SETTLE, kind, &target]);
            assert_eq!(
                lines,
                vec![expected.to_owned()],
                "{kind} to {name} ({target})"
            );
        }
    }
    assert_eq!(
        lab.network.veth4.received.load(Ordering::SeqCst),
        0,
        "a denied flow reached the IPv4 server"
    );
    assert_eq!(
        lab.network.veth6.received.load(Ordering::SeqCst),
        0,
        "a denied flow reached the IPv6 server"
    );

    let records = lab
        .daemon()
        .wait_for_audit(Duration::from_secs(5), "a deny record", |records| {
            records
                .iter()
                .any(|record| record.get("SLICEWALL_VERDICT").map(String::as_str) == Some("deny"))
        });
    let deny = records
        .iter()
        .find(|record| record["SLICEWALL_VERDICT"] == "deny")
        .unwrap();
    assert_eq!(deny["SLICEWALL_REASON"], "rule");
    assert!(
        deny["SLICEWALL_RULE"].ends_with("50-test.toml:1"),
        "rule field: {}",
        deny["SLICEWALL_RULE"]
    );
    assert_eq!(
        deny["SLICEWALL_EXE"],
        probe().canonicalize().unwrap().display().to_string()
    );
    assert_eq!(deny["SLICEWALL_UNIT"], "probe.service");
}

#[test]
fn flow_right_after_exec_is_held_then_decided() {
    require_lab!();
    // The rule names the executable, so the gate cannot decide the flow before the daemon has
    // identified the program.
    let mut lab = Lab::new(&format!(
        "[[rule]]\naction = \"deny\"\nexe = \"{}\"\naddress = \"{SERVER_V4}\"\nprotocol = \"tcp\"\n",
        probe().canonicalize().unwrap().display()
    ));
    lab.start(&[]);
    let app = lab.cgroup.child("probe.service");
    let denied = format!("{SERVER_V4}:{}", lab.network.veth4.port);
    let allowed = format!("[{SERVER_V6}]:{}", lab.network.veth6.port);

    // No settling time: the first flow may reach the gate before the daemon has hashed the new
    // executable. It is then held and decided by the daemon, never let through. The allowed
    // flow goes elsewhere, where no rule naming an executable applies, so the gate decides it
    // from the cgroup's policy at once.
    for _ in 0..10 {
        let lines = lab.probe(&app, &["tcp", &denied]);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0], DENIED, "denied flow right after exec");
        assert_eq!(
            lab.probe(&app, &["tcp", &allowed]),
            vec!["ok"],
            "allowed flow right after exec"
        );
    }
    assert_eq!(
        lab.network.veth4.received.load(Ordering::SeqCst),
        0,
        "a denied flow reached the server"
    );
}

#[test]
fn exe_rule_matches_path_and_sha256_rule_matches_content() {
    require_lab!();
    let bins = tempfile::tempdir().unwrap();
    let original = fs::read(probe()).unwrap();
    let named = bins.path().join("named/client");
    let other = bins.path().join("other/client");
    let trusted = bins.path().join("trusted/client");
    for path in [&named, &other, &trusted] {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, &original).unwrap();
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let digest = String::from_utf8(
        std::process::Command::new(common::slicewallctl())
            .arg("hash")
            .arg(&trusted)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let digest = digest.split_whitespace().next().unwrap().to_owned();

    let mut lab = Lab::new(&format!(
        "[[rule]]\naction = \"deny\"\nexe = \"{named}\"\n\n\
         [[rule]]\naction = \"deny\"\nunit = \"locked.service\"\n\n\
         [[rule]]\naction = \"allow\"\nunit = \"locked.service\"\nexe = \"{trusted}\"\nsha256 = \"{digest}\"\n",
        named = named.display(),
        trusted = trusted.display(),
    ));
    lab.start(&[]);
    let app = lab.cgroup.child("app.service");
    let locked = lab.cgroup.child("locked.service");
    let target = format!("{SERVER_V4}:{}", lab.network.veth4.port);
    let flow = ["--wait-ms", SETTLE, "tcp", target.as_str()];

    assert_eq!(
        lab.probe_with(&named, &app, &flow),
        vec![DENIED],
        "exe rule on its path"
    );
    assert_eq!(
        lab.probe_with(&other, &app, &flow),
        vec!["ok"],
        "same content at another path"
    );
    assert_eq!(
        lab.probe_with(&trusted, &locked, &flow),
        vec!["ok"],
        "exe with the allowed hash"
    );
    assert_eq!(
        lab.probe_with(&other, &locked, &flow),
        vec![DENIED],
        "same content, other path"
    );

    // Another binary at the allowed path: same path, other content, so another SHA-256.
    let mut changed = original.clone();
    changed.extend_from_slice(b"\0slicewall test padding\0");
    let staging = bins.path().join("trusted/client.new");
    fs::write(&staging, &changed).unwrap();
    fs::set_permissions(
        &staging,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    fs::rename(&staging, &trusted).unwrap();
    assert_eq!(
        lab.probe_with(&trusted, &locked, &flow),
        vec![DENIED],
        "other content at the allowed path"
    );
}

#[test]
fn unit_glob_and_app_rules() {
    require_lab!();
    let mut lab = Lab::new(
        "[[rule]]\naction = \"deny\"\nunit = \"app-*-org.example.Tracker-*.scope\"\n\n\
         [[rule]]\naction = \"deny\"\napp = \"org.example.Chatty\"\nprotocol = \"udp\"\n",
    );
    lab.start(&[]);
    let tracker = lab.cgroup.child("app-gnome-org.example.Tracker-4242.scope");
    let chatty = lab.cgroup.child("app-gnome-org.example.Chatty-77.scope");
    let other = lab.cgroup.child("app-gnome-org.example.Editor-5.scope");
    let target = format!("{SERVER_V4}:{}", lab.network.veth4.port);

    assert_eq!(
        lab.probe(&tracker, &["--wait-ms", SETTLE, "tcp", &target]),
        vec![DENIED],
        "glob on the unit"
    );
    assert_eq!(
        lab.probe(&chatty, &["--wait-ms", SETTLE, "udp-sendto", &target]),
        vec![DENIED],
        "app ID, udp"
    );
    assert_eq!(
        lab.probe(&chatty, &["--wait-ms", SETTLE, "tcp", &target]),
        vec!["ok"],
        "app ID, tcp not covered"
    );
    assert_eq!(
        lab.probe(&other, &["--wait-ms", SETTLE, "tcp", &target]),
        vec!["ok"],
        "unmatched app"
    );

    let records =
        lab.daemon()
            .wait_for_audit(Duration::from_secs(5), "the tracker's deny", |records| {
                records.iter().any(|record| {
                    record.get("SLICEWALL_APP").map(String::as_str) == Some("org.example.Tracker")
                })
            });
    let tracker_record = records
        .iter()
        .find(|record| {
            record.get("SLICEWALL_APP").map(String::as_str) == Some("org.example.Tracker")
        })
        .unwrap();
    assert_eq!(
        tracker_record["SLICEWALL_UNIT"],
        "app-gnome-org.example.Tracker-4242.scope"
    );
    assert_eq!(tracker_record["SLICEWALL_VERDICT"], "deny");
}

/// Rules from per-unit drop-in directories reach the kernel: a prefix directory denies, a mask
/// in a more specific directory exempts one application, and a reload with a bad per-unit file
/// keeps the rules in force.
#[test]
fn per_unit_directories_decide_flows() {
    require_lab!();
    let mut lab = Lab::new("");
    let units = lab.root.path().join("etc/slicewall/units");
    let scopes = units.join("app-gnome-.scope.d");
    fs::create_dir_all(&scopes).unwrap();
    let deny_file = scopes.join("50-net.toml");
    fs::write(
        &deny_file,
        format!("[[rule]]\naction = \"deny\"\naddress = \"{SERVER_V4}\"\n"),
    )
    .unwrap();
    let editor_directory = units.join("app-gnome-org.example.Editor-.scope.d");
    fs::create_dir_all(&editor_directory).unwrap();
    symlink("/dev/null", editor_directory.join("50-net.toml")).unwrap();
    lab.start(&[]);

    let tracker = lab.cgroup.child("app-gnome-org.example.Tracker-4242.scope");
    let editor = lab.cgroup.child("app-gnome-org.example.Editor-5.scope");
    let service = lab.cgroup.child("plain.service");
    let target = format!("{SERVER_V4}:{}", lab.network.veth4.port);
    let tcp = ["--wait-ms", SETTLE, "tcp", target.as_str()];

    assert_eq!(lab.probe(&tracker, &tcp), vec![DENIED], "prefix directory");
    assert_eq!(
        lab.probe(&editor, &tcp),
        vec!["ok"],
        "masked for the editor"
    );
    assert_eq!(lab.probe(&service, &tcp), vec!["ok"], "other unit type");

    let rule = format!("{}:1", deny_file.display());
    lab.daemon()
        .wait_for_audit(Duration::from_secs(5), "the tracker's deny", |records| {
            records.iter().any(|record| {
                record.get("SLICEWALL_UNIT").map(String::as_str)
                    == Some("app-gnome-org.example.Tracker-4242.scope")
                    && record.get("SLICEWALL_RULE") == Some(&rule)
            })
        });

    let service_directory = units.join("plain.service.d");
    fs::create_dir_all(&service_directory).unwrap();
    let service_file = service_directory.join("10-deny.toml");
    fs::write(
        &service_file,
        "[[rule]]\naction = \"deny\"\nunit = \"plain.service\"\n",
    )
    .unwrap();
    let outcome = lab.reload();
    assert!(outcome.contains("rejected the reload"), "{outcome}");
    assert!(
        outcome.contains(&format!("{}:3:8", service_file.display())),
        "{outcome}"
    );
    assert_eq!(lab.probe(&tracker, &tcp), vec![DENIED], "previous rules");
    assert_eq!(lab.probe(&service, &tcp), vec!["ok"], "previous rules");

    fs::write(&service_file, "[[rule]]\naction = \"deny\"\n").unwrap();
    assert!(lab.reload().contains("reloaded"));
    assert_eq!(lab.probe(&service, &tcp), vec![DENIED], "exact directory");
    assert_eq!(lab.probe(&editor, &tcp), vec!["ok"], "still masked");
}

/// Precedence is total, so the verdicts must not change when the files trade names.
#[test]
fn verdicts_do_not_depend_on_file_names() {
    require_lab!();
    let mut lab = Lab::new("");
    let files = [
        // Global deny of the veth server, lower than any identity rule.
        "[[rule]]\naction = \"deny\"\naddress = \"192.0.2.0/24\"\n".to_owned(),
        // An exact unit beats anyone: allowed.
        "[[rule]]\naction = \"allow\"\nunit = \"trusted.service\"\naddress = \"192.0.2.0/24\"\n".to_owned(),
        // Same identity and destination: deny beats allow at a tie.
        format!("[[rule]]\naction = \"allow\"\nunit = \"tie.service\"\naddress = \"{SERVER_V4}\"\n\n[[rule]]\naction = \"deny\"\nunit = \"tie.service\"\naddress = \"{SERVER_V4}\"\n"),
        // Priority beats specificity: TCP to the echo port is allowed for everyone.
        format!("[[rule]]\naction = \"allow\"\npriority = 5\naddress = \"{SERVER_V4}\"\nport = {}\nprotocol = \"tcp\"\n", lab.network.veth4.port),
    ];
    let names = ["10-a.toml", "20-b.toml", "30-c.toml", "40-d.toml"];
    for (name, text) in names.iter().zip(&files) {
        write_rules(lab.root.path(), "etc", name, text);
    }
    lab.start(&[]);
    let cgroups = [
        lab.cgroup.child("plain.service"),
        lab.cgroup.child("trusted.service"),
        lab.cgroup.child("tie.service"),
    ];
    let veth = format!("{SERVER_V4}:{}", lab.network.veth4.port);

    let observe = |lab: &Lab| -> Vec<String> {
        let mut seen = Vec::new();
        for cgroup in &cgroups {
            seen.extend(lab.probe(cgroup, &["--wait-ms", SETTLE, "tcp", &veth]));
            seen.extend(lab.probe(cgroup, &["--wait-ms", SETTLE, "udp-sendto", &veth]));
        }
        seen
    };
    let first = observe(&lab);
    // plain.service: TCP is allowed by priority, and UDP is denied by the global rule.
    // trusted.service: both are allowed by its unit rule.
    // tie.service: TCP is allowed by priority, and UDP is denied because deny beats allow.
    assert_eq!(first, vec!["ok", DENIED, "ok", "ok", "ok", DENIED]);

    // Reverse the names: what sorted first now sorts last.
    let rules_dir = lab.root.path().join("etc/slicewall/rules.d");
    for (index, name) in names.iter().enumerate() {
        fs::rename(rules_dir.join(name), rules_dir.join(format!("tmp-{index}"))).unwrap();
    }
    for (index, name) in names.iter().rev().enumerate() {
        fs::rename(rules_dir.join(format!("tmp-{index}")), rules_dir.join(name)).unwrap();
    }
    assert!(lab.reload().contains("reloaded"));
    assert_eq!(
        observe(&lab),
        first,
        "verdicts changed when the files traded names"
    );
}

#[test]
fn masked_vendor_file_is_ignored() {
    require_lab!();
    let mut lab = Lab::new("");
    let deny = format!("[[rule]]\naction = \"deny\"\naddress = \"{SERVER_V4}\"\n");
    write_rules(lab.root.path(), "usr/lib", "60-vendor.toml", &deny);
    write_rules(lab.root.path(), "usr/lib", "61-vendor.toml", &deny);
    let etc = lab.root.path().join("etc/slicewall/rules.d");
    fs::create_dir_all(&etc).unwrap();
    symlink("/dev/null", etc.join("60-vendor.toml")).unwrap();
    lab.start(&[]);
    let app = lab.cgroup.child("app.service");
    let target = format!("{SERVER_V4}:{}", lab.network.veth4.port);
    assert_eq!(
        lab.probe(&app, &["--wait-ms", SETTLE, "tcp", &target]),
        vec![DENIED],
        "one vendor file still denies"
    );

    // An empty file masks too.
    fs::write(etc.join("61-vendor.toml"), "").unwrap();
    assert!(lab.reload().contains("reloaded"));
    assert_eq!(
        lab.probe(&app, &["--wait-ms", SETTLE, "tcp", &target]),
        vec!["ok"],
        "both vendor files masked"
    );
}

#[test]
fn bad_file_is_skipped_at_start_and_rejected_at_reload() {
    require_lab!();
    let mut lab = Lab::new(&format!(
        "[[rule]]\naction = \"deny\"\naddress = \"{SERVER_V4}\"\n"
    ));
    write_rules(
        lab.root.path(),
        "etc",
        "60-bad.toml",
        "[[rule]]\naction = \"deny\"\nport = 70000\n",
    );
    lab.start_degraded(&[]);
    let log = lab.daemon().log();
    assert!(
        log.contains("60-bad.toml:3:8"),
        "the bad file's error names file:line:column:\n{log}"
    );
    assert!(
        log.contains("degraded"),
        "the daemon says it runs degraded:\n{log}"
    );

    let app = lab.cgroup.child("app.service");
    let target = format!("{SERVER_V4}:{}", lab.network.veth4.port);
    assert_eq!(
        lab.probe(&app, &["--wait-ms", SETTLE, "tcp", &target]),
        vec![DENIED],
        "good file in force"
    );

    // A reload where the good file turns permissive but another file is bad keeps everything.
    write_rules(lab.root.path(), "etc", "50-test.toml", "");
    write_rules(
        lab.root.path(),
        "etc",
        "60-bad.toml",
        "[[rule]]\naction = \"maybe\"\n",
    );
    let outcome = lab.reload();
    assert!(outcome.contains("rejected the reload"), "{outcome}");
    assert!(outcome.contains("60-bad.toml:2:10"), "{outcome}");
    assert_eq!(
        lab.probe(&app, &["--wait-ms", SETTLE, "tcp", &target]),
        vec![DENIED],
        "previous rules in force"
    );

    fs::remove_file(lab.root.path().join("etc/slicewall/rules.d/60-bad.toml")).unwrap();
    assert!(lab.reload().contains("reloaded"));
    assert_eq!(
        lab.probe(&app, &["--wait-ms", SETTLE, "tcp", &target]),
        vec!["ok"],
        "the fixed rules apply at once"
    );
}

#[test]
fn short_lived_processes_are_attributed_to_their_executable() {
    require_lab!();
    let Ok(curl) = which("curl") else {
        println!("skipping: curl is not installed");
        return;
    };
    let mut lab = Lab::new("");
    lab.start(&[]);
    let app = lab.cgroup.child("fetcher.service");
    let url = format!("http://127.0.0.1:{}/", lab.network.loopback4.port);
    const RUNS: usize = 500;
    for _ in 0..RUNS {
        let output = common::run_in(
            &app,
            &lab.network.client,
            &curl,
            &["-s", "-o", "/dev/null", "--max-time", "10", &url],
        );
        assert!(
            output.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let port = lab.network.loopback4.port.to_string();
    let count_for = |records: &[std::collections::HashMap<String, String>]| -> usize {
        records
            .iter()
            .filter(|record| record.get("SLICEWALL_PORT") == Some(&port))
            .map(|record| {
                record
                    .get("SLICEWALL_COUNT")
                    .and_then(|count| count.parse().ok())
                    .unwrap_or(1)
            })
            .sum()
    };
    let records =
        lab.daemon()
            .wait_for_audit(Duration::from_secs(10), "500 curl records", |records| {
                count_for(records) >= RUNS
            });
    assert_eq!(count_for(&records), RUNS, "one decision per connection");
    let curl_path = curl.canonicalize().unwrap().display().to_string();
    for record in records
        .iter()
        .filter(|record| record.get("SLICEWALL_PORT") == Some(&port))
    {
        assert_eq!(
            record.get("SLICEWALL_EXE"),
            Some(&curl_path),
            "misattributed record: {record:?}"
        );
        assert_eq!(record["SLICEWALL_VERDICT"], "allow");
    }
}

#[test]
fn restart_lets_no_denied_connection_through() {
    require_lab!();
    let mut lab = Lab::new(&format!(
        "[[rule]]\naction = \"deny\"\nunit = \"denied.service\"\naddress = \"{SERVER_V4}\"\n"
    ));
    lab.start(&[]);
    let denied = lab.cgroup.child("denied.service");
    let target = format!("{SERVER_V4}:{}", lab.network.veth4.port);

    let client = common::spawn_in(
        &denied,
        &lab.network.client,
        &probe(),
        &["--repeat", "3000", "tcp", &target],
    );
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(200));
        lab.daemon_mut().restart(&[]);
    }
    let output = client.wait_with_output().unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 3000);
    let passed = lines
        .iter()
        .filter(|line| !line.starts_with("error:"))
        .count();
    assert_eq!(passed, 0, "{passed} denied connections got through");
    assert_eq!(
        lab.network.veth4.received.load(Ordering::SeqCst),
        0,
        "the server accepted a denied connection"
    );
}

#[test]
fn two_daemons_on_separate_subtrees() {
    require_lab!();
    let mut strict = Lab::new(&format!(
        "[[rule]]\naction = \"deny\"\naddress = \"{SERVER_V4}\"\n"
    ));
    let mut lenient = Lab::new("");
    strict.start(&[]);
    lenient.start(&[]);
    let strict_app = strict.cgroup.child("app.service");
    let lenient_app = lenient.cgroup.child("app.service");
    let strict_target = format!("{SERVER_V4}:{}", strict.network.veth4.port);
    let lenient_target = format!("{SERVER_V4}:{}", lenient.network.veth4.port);
    assert_eq!(
        strict.probe(&strict_app, &["--wait-ms", SETTLE, "tcp", &strict_target]),
        vec![DENIED]
    );
    assert_eq!(
        lenient.probe(&lenient_app, &["--wait-ms", SETTLE, "tcp", &lenient_target]),
        vec!["ok"]
    );
}

#[test]
fn cleanup_removes_the_gate() {
    require_lab!();
    let mut lab = Lab::new(&format!(
        "[[rule]]\naction = \"deny\"\naddress = \"{SERVER_V4}\"\n"
    ));
    lab.start(&[]);
    let app = lab.cgroup.child("app.service");
    let target = format!("{SERVER_V4}:{}", lab.network.veth4.port);
    assert_eq!(
        lab.probe(&app, &["--wait-ms", SETTLE, "tcp", &target]),
        vec![DENIED]
    );

    // A stopped daemon leaves the gate in force.
    lab.daemon_mut().stop();
    assert_eq!(
        lab.probe(&app, &["--wait-ms", SETTLE, "tcp", &target]),
        vec![DENIED],
        "gate after stop"
    );

    let pin_dir = lab.bpffs.pin_dir();
    let status = std::process::Command::new(common::slicewalld())
        .arg("--cleanup")
        .arg("--pin-dir")
        .arg(&pin_dir)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(!pin_dir.exists(), "pins left behind");
    assert_eq!(
        lab.probe(&app, &["--wait-ms", SETTLE, "tcp", &target]),
        vec!["ok"],
        "gate after cleanup"
    );
}

fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|path| path.is_file())
        })
        .ok_or(())
}

/// Copies the probe to `dir/name/client`, so a rule can name that executable alone.
fn copy_probe(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name).join("client");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::copy(probe(), &path).unwrap();
    path
}

#[test]
fn forked_children_threads_and_exec_are_attributed() {
    require_lab!();
    let bins = tempfile::tempdir().unwrap();
    let denied = copy_probe(bins.path(), "denied");
    let allowed = copy_probe(bins.path(), "allowed");
    let mut lab = Lab::new(&format!(
        "[[rule]]\naction = \"deny\"\nexe = \"{}\"\n",
        denied.display()
    ));
    lab.start(&[]);
    let app = lab.cgroup.child("app.service");
    let target = format!("{SERVER_V4}:{}", lab.network.veth4.port);
    let is_denied = |line: &str| line.starts_with(DENIED);

    // A forked child that does not exec is a new process the gate has not seen: it is
    // identified from its executable, which it shares with its parent.
    let lines = lab.probe_with(
        &denied,
        &app,
        &["--wait-ms", SETTLE, "--via", "fork", "tcp", &target],
    );
    assert_eq!(lines.len(), 1);
    assert!(
        is_denied(&lines[0]),
        "forked child of a denied executable: {}",
        lines[0]
    );
    let child_pid = lines[0].rsplit(' ').next().unwrap().to_owned();
    let lines = lab.probe_with(
        &allowed,
        &app,
        &["--wait-ms", SETTLE, "--via", "fork", "tcp", &target],
    );
    assert!(
        lines[0].starts_with("ok pid "),
        "forked child of an allowed executable: {}",
        lines[0]
    );

    // Threads share their process's identity.
    assert_eq!(
        lab.probe_with(
            &denied,
            &app,
            &["--wait-ms", SETTLE, "--via", "thread", "tcp", &target]
        ),
        vec![DENIED]
    );
    assert_eq!(
        lab.probe_with(
            &allowed,
            &app,
            &["--wait-ms", SETTLE, "--via", "thread", "tcp", &target]
        ),
        vec!["ok"]
    );

    // A shell that replaces itself with the client right before the flow, directly or through
    // env(1), which execs again within a millisecond: the flow belongs to the client, never to
    // the shell or to env.
    let shell = std::path::Path::new("/bin/sh");
    const EXEC_ROUNDS: usize = 10;
    for round in 0..EXEC_ROUNDS {
        let via = if round % 2 == 0 {
            "exec"
        } else {
            "exec /usr/bin/env"
        };
        let command = format!("{via} {} tcp {target}", denied.display());
        let lines = lab.probe_with(shell, &app, &["-c", &command]);
        assert!(
            is_denied(&lines[0]),
            "denied executable after `{via}`: {lines:?}"
        );
        let command = format!("{via} {} tcp {target}", allowed.display());
        assert_eq!(
            lab.probe_with(shell, &app, &["-c", &command]),
            vec!["ok"],
            "allowed executable after `{via}`"
        );
    }
    assert_eq!(
        lab.network.veth4.received.load(Ordering::SeqCst) as usize,
        1 + 1 + EXEC_ROUNDS,
        "only the allowed flows reached the server"
    );

    let denied_path = denied.display().to_string();
    let records = lab.daemon().wait_for_audit(
        Duration::from_secs(5),
        "the forked child's record",
        |records| {
            records
                .iter()
                .any(|record| record.get("SLICEWALL_PID") == Some(&child_pid))
        },
    );
    let child = records
        .iter()
        .find(|record| record.get("SLICEWALL_PID") == Some(&child_pid))
        .unwrap();
    assert_eq!(child["SLICEWALL_EXE"], denied_path);
    assert_eq!(child["SLICEWALL_VERDICT"], "deny");
    let port = lab.network.veth4.port.to_string();
    for record in records
        .iter()
        .filter(|record| record.get("SLICEWALL_PORT") == Some(&port))
    {
        let exe = record.get("SLICEWALL_EXE").cloned().unwrap_or_default();
        assert!(
            exe == denied_path || exe == allowed.display().to_string(),
            "a flow attributed to another program: {record:?}"
        );
        let verdict = &record["SLICEWALL_VERDICT"];
        let exe = &record["SLICEWALL_EXE"];
        assert_eq!(
            verdict == "deny",
            exe == &denied_path,
            "verdict {verdict} for {exe}"
        );
    }
}

#[test]
fn ask_rule_applies_the_configured_fallback() {
    require_lab!();
    let mut lab = Lab::new(&format!(
        "[[rule]]\naction = \"ask\"\nunit = \"app.service\"\naddress = \"{SERVER_V4}\"\n"
    ));
    lab.start(&["--ask-fallback", "deny"]);
    let app = lab.cgroup.child("app.service");
    let target = format!("{SERVER_V4}:{}", lab.network.veth4.port);
    assert_eq!(
        lab.probe(&app, &["--wait-ms", SETTLE, "tcp", &target]),
        vec![DENIED]
    );
    let records = lab.daemon().wait_for_audit(
        Duration::from_secs(5),
        "an ask-fallback record",
        |records| {
            records.iter().any(|record| {
                record.get("SLICEWALL_REASON").map(String::as_str) == Some("ask-fallback")
            })
        },
    );
    let record = records
        .iter()
        .find(|record| record["SLICEWALL_REASON"] == "ask-fallback")
        .unwrap();
    assert_eq!(record["SLICEWALL_VERDICT"], "deny");

    lab.daemon_mut().restart(&["--ask-fallback", "allow"]);
    assert_eq!(
        lab.probe(&app, &["--wait-ms", SETTLE, "tcp", &target]),
        vec!["ok"]
    );
}

/// A program the daemon is still hashing when it replaces itself must not lend its identity to
/// the program that follows. The daemon reads the first program's executable, the second exec
/// happens while it hashes, and only then does the daemon record what it read.
#[test]
fn exec_chain_never_uses_stale_identity() {
    require_lab!();
    let bins = tempfile::tempdir().unwrap();
    // Padding makes each program take tens of milliseconds to hash, which gives the timeline below
    // wide margins. The first program execs the second after 2 ms, the daemon records the first
    // at about 40 ms, and the second connects at about 50 ms, while the daemon still hashes the
    // second program.
    let padding = vec![0u8; 64 << 20];
    let mut allowed_content = fs::read(probe()).unwrap();
    allowed_content.extend_from_slice(&padding);
    let mut denied_content = allowed_content.clone();
    denied_content.extend_from_slice(b"denied copy");
    let denied_hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&denied_content))
    };
    let mut lab = Lab::new(&format!(
        "[[rule]]\naction = \"deny\"\nsha256 = \"{denied_hash}\"\n"
    ));
    lab.start(&[]);
    let app = lab.cgroup.child("app.service");
    let target = format!("{SERVER_V4}:{}", lab.network.veth4.port);

    for round in 0..3 {
        // Fresh files every round, so the daemon hashes both programs instead of finding them
        // in its cache.
        let first = bins.path().join(format!("first{round}"));
        let second = bins.path().join(format!("second{round}"));
        for (path, content) in [(&first, &allowed_content), (&second, &denied_content)] {
            fs::write(path, content).unwrap();
            fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        let second = second.display().to_string();
        let lines = lab.probe_with(
            &first,
            &app,
            &[
                "--exec-after-ms",
                "2",
                &second,
                "--wait-ms",
                "50",
                "tcp",
                &target,
            ],
        );
        assert_eq!(lines.len(), 1, "round {round}: {lines:?}");
        assert!(
            lines[0].starts_with(DENIED),
            "round {round}: the second program's flow: {lines:?}"
        );
    }
    assert_eq!(
        lab.network.veth4.received.load(Ordering::SeqCst),
        0,
        "a denied flow got through"
    );
}

/// A process in its own mount namespace can put any file at a trusted path with a bind mount.
/// /proc/PID/exe then shows the trusted path, so an `exe` rule must not take it on trust.
#[test]
fn exe_rule_ignores_paths_from_other_mount_namespaces() {
    require_lab!();
    let bins = tempfile::tempdir().unwrap();
    let trusted = copy_probe(bins.path(), "trusted");
    let impostor = bins.path().join("impostor");
    let mut content = fs::read(probe()).unwrap();
    content.extend_from_slice(b"\0impostor\0");
    fs::write(&impostor, &content).unwrap();
    fs::set_permissions(
        &impostor,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    let mut lab = Lab::new(&format!(
        "[[rule]]\naction = \"deny\"\nunit = \"locked.service\"\n\n\
         [[rule]]\naction = \"allow\"\nunit = \"locked.service\"\nexe = \"{}\"\n",
        trusted.display()
    ));
    lab.start(&[]);
    let locked = lab.cgroup.child("locked.service");
    let target = format!("{SERVER_V4}:{}", lab.network.veth4.port);
    assert_eq!(
        lab.probe_with(&trusted, &locked, &["--wait-ms", SETTLE, "tcp", &target]),
        vec!["ok"],
        "the trusted executable"
    );

    // unshare(1) makes the new mount namespace private, so the bind mount never leaves it.
    let script = format!(
        "mount --bind {impostor} {trusted} && exec {trusted} --wait-ms {SETTLE} tcp {target}",
        impostor = impostor.display(),
        trusted = trusted.display(),
    );
    let lines = lab.probe_with(
        std::path::Path::new("/usr/bin/unshare"),
        &locked,
        &["--mount", "--propagation", "private", "sh", "-c", &script],
    );
    assert_eq!(
        lines,
        vec![DENIED],
        "another file bind-mounted over the trusted path"
    );
    assert_eq!(
        lab.network.veth4.received.load(Ordering::SeqCst),
        1,
        "the impostor's connection reached the server"
    );
}

#[test]
fn running_daemon_keeps_its_pins_to_itself() {
    require_lab!();
    let mut lab = Lab::new(&format!(
        "[[rule]]\naction = \"deny\"\naddress = \"{SERVER_V4}\"\n"
    ));
    lab.start(&[]);
    let pin_dir = lab.bpffs.pin_dir();

    let second = std::process::Command::new(common::slicewalld())
        .arg("--root")
        .arg(lab.root.path())
        .arg("--cgroup")
        .arg(&lab.cgroup.path)
        .arg("--pin-dir")
        .arg(&pin_dir)
        .arg("--audit-stderr")
        .args(["--nftables", "off"])
        .output()
        .unwrap();
    assert_eq!(
        second.status.code(),
        Some(1),
        "a second daemon started on the same pins"
    );
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another slicewalld"), "{stderr}");

    let cleanup = std::process::Command::new(common::slicewalld())
        .arg("--cleanup")
        .arg("--pin-dir")
        .arg(&pin_dir)
        .output()
        .unwrap();
    assert_eq!(
        cleanup.status.code(),
        Some(1),
        "cleanup ran under a live daemon"
    );
    assert!(
        pin_dir.join("links").exists(),
        "cleanup removed the live daemon's links"
    );

    let app = lab.cgroup.child("app.service");
    let target = format!("{SERVER_V4}:{}", lab.network.veth4.port);
    assert_eq!(
        lab.probe(&app, &["--wait-ms", SETTLE, "tcp", &target]),
        vec![DENIED],
        "the gate after the refused attempts"
    );
}

/// Every unit start makes a new cgroup, so the identities of removed cgroups must not stay in
/// the gate's maps until they are full.
#[test]
fn removed_cgroups_leave_the_maps() {
    require_lab!();
    let mut lab = Lab::new(&format!(
        "[[rule]]\naction = \"deny\"\nunit = \"gone.service\"\naddress = \"{SERVER_V4}\"\n"
    ));
    lab.start(&[]);
    let loopback = format!("127.0.0.1:{}", lab.network.loopback4.port);
    let gone_id;
    {
        let gone = lab.cgroup.child("gone.service");
        gone_id = slicewall::cgroup::cgroup_id(&gone.path).unwrap();
        assert_eq!(lab.probe(&gone, &["tcp", &loopback]), vec!["ok"]);
    }
    let kept = lab.cgroup.child("kept.service");
    let kept_id = slicewall::cgroup::cgroup_id(&kept.path).unwrap();
    assert_eq!(lab.probe(&kept, &["tcp", &loopback]), vec!["ok"]);

    let subjects = |lab: &Lab| -> Vec<u64> {
        let path = lab.bpffs.pin_dir().join("maps/slicewall_subjects");
        let data = aya::maps::MapData::from_pin(&path).expect("open the pinned subjects map");
        let map: aya::maps::HashMap<_, slicewall::kernel::abi::SubjectKey, u32> =
            aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).unwrap();
        map.keys()
            .filter_map(Result::ok)
            .map(|key| key.cgroup_id)
            .collect()
    };
    let before = subjects(&lab);
    assert!(
        before.contains(&gone_id),
        "the removed cgroup was never recorded: {before:?}"
    );

    // The removal sweep runs once a minute and at every reload.
    assert!(lab.reload().contains("reloaded"));
    let after = subjects(&lab);
    assert!(
        !after.contains(&gone_id),
        "the removed cgroup is still in the gate: {after:?}"
    );
    assert!(
        after.contains(&kept_id),
        "a live cgroup was forgotten: {after:?}"
    );
}
