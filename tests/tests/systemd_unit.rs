//! The units in `systemd/` as installed: `systemd-analyze security --offline=true` scores each
//! at an exposure of 1.5 or lower, `systemd-analyze verify` accepts them (with the real
//! binaries in place of /usr/bin), and their directives agree with the paths the agent uses.
//!
//! `systemd-analyze` is required (scripts/test.sh installs the `systemd` package when it is
//! missing): a machine without it fails these tests, it does not skip them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The highest exposure the issue allows.
const MAX_EXPOSURE: f64 = 1.5;

fn unit(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../systemd")
        .join(name)
}

fn analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run systemd-analyze ({e}): install the `systemd` package (scripts/test.sh does it with apt-get)"
            )
        })
}

/// The figure of "Overall exposure level for X: 1.1 OK".
fn exposure(unit: &Path) -> f64 {
    let out = analyze(&[
        "security",
        "--offline=true",
        "--no-pager",
        &unit.display().to_string(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in the output of systemd-analyze security:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    line.rsplit_once(':')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure from `{line}`"))
}

#[test]
fn agent_unit_exposure_is_at_most_1_5() {
    let e = exposure(&unit("exchange-agent.service"));
    println!("exchange-agent.service exposure: {e}");
    assert!(e <= MAX_EXPOSURE, "exposure {e} > {MAX_EXPOSURE}");
}

#[test]
fn hub_unit_exposure_is_at_most_1_5() {
    let e = exposure(&unit("exchange-hub.service"));
    println!("exchange-hub.service exposure: {e}");
    assert!(e <= MAX_EXPOSURE, "exposure {e} > {MAX_EXPOSURE}");
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    for (name, installed, built) in [
        (
            "exchange-agent.service",
            "/usr/bin/exchange-agent",
            exchange_tests::bins::agent(),
        ),
        (
            "exchange-hub.service",
            "/usr/bin/exchange-hub",
            exchange_tests::bins::hub(),
        ),
    ] {
        // verify checks that the commands exist: point them at the binaries just built.
        let text = std::fs::read_to_string(unit(name))
            .unwrap()
            .replace(installed, &built.display().to_string());
        let copy = dir.path().join(name);
        std::fs::write(&copy, text).unwrap();
        let out = analyze(&["verify", &copy.display().to_string()]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "systemd-analyze verify {name}: {said}"
        );
    }
}

/// `Key=value` lines of a unit, in order.
fn directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn agent_unit_grants_exactly_the_paths_the_agent_uses() {
    let text = std::fs::read_to_string(unit("exchange-agent.service")).unwrap();
    let d = directives(&text);
    let get = |k: &str| -> Vec<&str> {
        d.iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(get("Type"), ["notify"]);
    assert_eq!(get("ProtectSystem"), ["strict"]);
    // The only writable place: the state directory, which the example configuration and the
    // tmpfiles file name as data_dir.
    assert_eq!(get("StateDirectory"), ["exchange-agent"]);
    assert!(get("ReadWritePaths").is_empty());
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/agent.toml"))
            .unwrap();
    assert!(example.contains("data_dir = \"/var/lib/exchange-agent\""));
    let tmpfiles = std::fs::read_to_string(unit("exchange-agent.tmpfiles")).unwrap();
    assert!(tmpfiles.contains("d /var/lib/exchange-agent 0700 exchange-agent exchange-agent"));
    // start and reload check the configuration first; reload then sends SIGHUP.
    let check = "/usr/bin/exchange-agent check --config /etc/exchange-agent/agent.toml";
    assert_eq!(get("ExecStartPre"), [check]);
    assert_eq!(get("ExecReload"), [check, "/bin/kill -HUP $MAINPID"]);
    assert!(get("ExecStart")[0].ends_with("run --config /etc/exchange-agent/agent.toml"));
    // Sockets: the network (sources, hub), AF_UNIX (control socket, journal, notify).
    assert_eq!(get("RestrictAddressFamilies"), ["AF_INET AF_INET6 AF_UNIX"]);
    // The watchdog is pinged every WatchdogSec/2; stop within TimeoutStopSec, after the
    // agent's own 20 s deadline.
    assert_eq!(get("WatchdogSec"), ["60s"]);
    assert_eq!(get("TimeoutStopSec"), ["30s"]);
    assert_eq!(exchange_agent::daemon::STOP_DEADLINE.as_secs(), 20);
    for cred in get("LoadCredential") {
        let (name, path) = cred.split_once(':').unwrap();
        assert!(
            path.starts_with("/etc/exchange-agent/") && path.ends_with(name),
            "{cred}"
        );
    }
}
