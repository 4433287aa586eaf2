//! `exchange-agent check` and `status` cover the verification service (`[verify]`): the
//! listener (and, for `status`, whether it listens), the server certificate's and client CA's
//! expiry in days, the grants by requester and the budgets, and the lockouts in force; and
//! `status` says plainly whether the service runs. The real daemon, a SQLite source, real
//! mutual TLS with certificates generated here.

use exchange_hub::verify::Verifier;
use exchange_tests::DEADLINE;
use exchange_tests::agent::Agent;
use exchange_tests::verification::*;
use exchange_tests::wait::wait_for;

/// `status` until `ok` holds for its output (the daemon writes its status file every 2 s).
async fn status_until(agent: &Agent, what: &str, ok: impl Fn(&str) -> bool) -> String {
    wait_for(what, DEADLINE, || async {
        let out = agent.cmd(&["status"]).await;
        (out.code == Some(0) && ok(&out.stdout)).then_some(out.stdout)
    })
    .await
}

#[tokio::test]
async fn check_shows_the_verification_listener_certificate_expiry_and_grants() {
    let (_db, setup) = sqlite_setup(&[]).await;
    let out = Agent::at(&setup.config).check(false).await;
    out.assert_code(0).assert_mentions(&[
        "verification service listens on 127.0.0.1:0",
        "verification certificate `",
        "verification client CA `",
        "days left",
        "verification grants: 5 to 2 requesters",
        "narrow-hub → R-SHOWN (name)",
        "R-EXPIRED (name, address",
        "EXPIRED (ended 2020-01-02T00:00:00+08:00)",
        "items a minute",
    ]);
}

#[tokio::test]
async fn status_shows_listener_certificates_grants_and_lockouts_and_says_when_the_service_is_not_running()
 {
    let (_db, setup) = sqlite_setup(&["mismatch_lockout = 1"]).await;
    let daemon = Daemon::start(&setup).await;
    let listen = daemon.url.trim_start_matches("https://").to_owned();
    let agent = Agent::at(&setup.config);
    let text = status_until(&agent, "status shows the running service", |t| {
        t.contains("service       running")
    })
    .await;
    for needle in [
        format!("verification  {listen} (listening)"),
        "verify.cert `".into(),
        "verify.client_ca `".into(),
        "days left".into(),
        "grants: 5 to 2 requesters".into(),
        "city-hub → R-SHOWN (name, address".into(),
        "narrow-hub → R-SHOWN (name)".into(),
        "lockouts: none in force".into(),
    ] {
        assert!(text.contains(&needle), "expected `{needle}` in:\n{text}");
    }

    // One answer other than match with mismatch_lockout = 1 locks the field of that subject.
    let verifier = Verifier::new(
        &setup.client_tls(&setup.client.0, &setup.client.1),
        &daemon.url,
    )
    .unwrap();
    let wrong = request(
        "R-SHOWN",
        vec![item("440524188001010014", &[("name", v("王"))])],
    );
    verifier.verify(&wrong).await.unwrap();
    let text = status_until(&agent, "status shows the lockout", |t| {
        t.contains("lockouts in force: 1")
    })
    .await;
    assert!(
        text.contains("city-hub on R-SHOWN: field `name` locked for 1 subjects, until"),
        "{text}"
    );
    assert!(
        !text.contains("440524188001010014"),
        "a subject is never shown:\n{text}"
    );
    let json = agent.cmd(&["status", "--json"]).await;
    json.assert_code(0);
    let report: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(report["daemon"]["running"], true, "{report}");
    let v = &report["verification"];
    assert_eq!(v["listen"], listen.as_str(), "{v}");
    assert_eq!(v["listening"], true, "{v}");
    assert_eq!(v["grants"].as_array().unwrap().len(), 5, "{v}");
    assert!(
        v["certificates"][0]["days_left"].as_i64().unwrap() > 300,
        "{v}"
    );
    assert_eq!(v["certificates"][0]["state"], "valid", "{v}");
    assert_eq!(v["lockouts"][0]["field"], "name", "{v}");
    assert_eq!(v["lockouts"][0]["subjects"], 1, "{v}");
    assert!(
        report["resources"].is_array(),
        "the old fields stay: {report}"
    );

    // Stopped: said plainly; the lockout is still in force (it is restored at the next start).
    daemon.stop().await;
    let out = agent.cmd(&["status"]).await;
    out.assert_code(0).assert_mentions(&[
        "service       not running",
        &format!("verification  {listen} (NOT listening)"),
        "lockouts in force: 1",
    ]);
    assert!(!out.stdout.contains("[from the running daemon]"), "{out}");
}
