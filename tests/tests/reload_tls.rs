//! A reload changes who is trusted, or changes nothing and says so (issue 16), against the
//! real daemon over real TLS: a CA swapped by SIGHUP refuses the old CA's certificates on new
//! connections; a CRL added by reload, then rewritten on disk (the file watcher reloads),
//! revokes requesters without a restart (reason `revoked`); a reload whose TLS material does
//! not build keeps the old generation whole — the grant it removes stays in force — and says
//! so in `status`, the metrics and the audit log, until a good reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use exchange_hub::verify::{Verifier, VerifyCallError};
use exchange_protocol::pki::{Usage, Validity};
use exchange_tests::admin;
use exchange_tests::agent::{Agent, q};
use exchange_tests::verification::*;
use exchange_tests::wait::{wait_for, wait_until};

/// A question the hub's grant on R-SHOWN covers.
fn question() -> exchange_protocol::verify::VerifyRequest {
    request(
        "R-SHOWN",
        vec![item("11010519491231002X", &[("name", v("张三"))])],
    )
}

/// Whether a new connection with `cert`/`key` gets an answer (`Some(true)`), is refused in
/// the handshake (`Some(false)`), or something else (`None`).
async fn answered(setup: &Setup, url: &str, cert: &Path, key: &Path) -> Option<bool> {
    let verifier = Verifier::new(&setup.client_tls(cert, key), url).unwrap();
    match verifier.verify(&question()).await {
        Ok(_) => Some(true),
        Err(VerifyCallError::Handshake { .. }) => Some(false),
        Err(_) => None,
    }
}

/// SIGHUP to the daemon.
fn sighup(daemon: &Daemon) {
    let pid = i32::try_from(daemon.child.id().unwrap()).unwrap();
    // SAFETY: kill(2) on our own child process.
    unsafe {
        libc::kill(pid, libc::SIGHUP);
    }
}

/// Rewrites the configuration file with `edit` applied to its text.
fn edit_config(setup: &Setup, edit: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let next = edit(text.clone());
    assert_ne!(next, text, "the edit changes the configuration");
    std::fs::write(&setup.config, next).unwrap();
}

/// The handshake refusals of the verification listener for `reason` so far.
async fn refusals(daemon: &Daemon, reason: &str) -> f64 {
    let samples = admin::scrape(daemon.admin).await.unwrap_or_default();
    admin::sample(
        &samples,
        "exchange_tls_handshake_failures_total",
        &[("listener", "verify"), ("reason", reason)],
    )
    .unwrap_or(0.0)
}

/// A client certificate in the hub's name from the platform CA: (cert, key, serial).
fn hub_certificate(setup: &Setup, stem: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    let issued = setup
        .pki
        .ca
        .issue(HUB, &[], Usage::ClientAuth, Validity::Current)
        .unwrap();
    let (cert, key) = issued.write(&setup.pki.dir, stem).unwrap();
    (cert, key, issued.serial)
}

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_swapped_by_reload_refuses_the_old_cas_certificates_on_new_connections() {
    let (_db, setup) = sqlite_setup(&[]).await;
    let daemon = Daemon::start(&setup).await;
    let (old_cert, old_key) = setup.client.clone();
    assert_eq!(
        answered(&setup, &daemon.url, &old_cert, &old_key).await,
        Some(true)
    );
    // A new CA for requesters, and the hub's certificate from it.
    let (new_ca, new_ca_file) = setup.pki.other_ca("requester-ca");
    let (new_cert, new_key) = setup.pki.issue(
        &new_ca,
        HUB,
        &[],
        Usage::ClientAuth,
        Validity::Current,
        "hub-new-ca",
    );
    assert_eq!(
        answered(&setup, &daemon.url, &new_cert, &new_key).await,
        Some(false),
        "the new CA is not trusted before the reload"
    );
    let old_ca = q(&setup.pki.ca_cert.display().to_string());
    edit_config(&setup, |t| {
        t.replace(
            &format!("client_ca = {old_ca}"),
            &format!("client_ca = {}", q(&new_ca_file.display().to_string())),
        )
    });
    sighup(&daemon);
    wait_until("the new CA's certificate is answered", DEADLINE, || async {
        answered(&setup, &daemon.url, &new_cert, &new_key).await == Some(true)
    })
    .await;
    let before = refusals(&daemon, "unknown_issuer").await;
    assert_eq!(
        answered(&setup, &daemon.url, &old_cert, &old_key).await,
        Some(false),
        "a new connection with the old CA's certificate is refused in the handshake"
    );
    wait_until(
        "the refusal is counted as unknown_issuer",
        DEADLINE,
        || async { refusals(&daemon, "unknown_issuer").await > before },
    )
    .await;
    let audit = setup.audit();
    assert!(
        audit.iter().any(|e| e["action"] == "config.reload"),
        "the reload is audited"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_revokes_a_requester_without_a_restart() {
    let (_db, setup) = sqlite_setup(&[]).await;
    let daemon = Daemon::start(&setup).await;
    let (revoked_cert, revoked_key, revoked_serial) = hub_certificate(&setup, "hub-revoked");
    let (kept_cert, kept_key, kept_serial) = hub_certificate(&setup, "hub-kept");
    for (cert, key) in [(&revoked_cert, &revoked_key), (&kept_cert, &kept_key)] {
        assert_eq!(answered(&setup, &daemon.url, cert, key).await, Some(true));
    }
    // The CA revokes one certificate; the administrator adds its CRL and reloads.
    let crl = setup.pki.dir.join("ca.crl");
    setup.pki.ca.write_crl(&crl, &[&revoked_serial], 1).unwrap();
    let ca_line = format!(
        "client_ca = {}",
        q(&setup.pki.ca_cert.display().to_string())
    );
    edit_config(&setup, |t| {
        t.replace(
            &ca_line,
            &format!("{ca_line}\ncrl = [{}]", q(&crl.display().to_string())),
        )
    });
    sighup(&daemon);
    wait_until("the revoked certificate is refused", DEADLINE, || async {
        answered(&setup, &daemon.url, &revoked_cert, &revoked_key).await == Some(false)
    })
    .await;
    wait_until("the refusal is counted as revoked", DEADLINE, || async {
        refusals(&daemon, "revoked").await >= 1.0
    })
    .await;
    assert_eq!(
        answered(&setup, &daemon.url, &kept_cert, &kept_key).await,
        Some(true),
        "a certificate the CRL does not list is still answered"
    );
    // The revocation is audited as a refused connection with its reason.
    wait_until(
        "connection.rejected with reason revoked is audited",
        DEADLINE,
        || async {
            setup
                .audit()
                .iter()
                .any(|e| e["action"] == "connection.rejected" && e["detail"]["reason"] == "revoked")
        },
    )
    .await;
    // A newer CRL renamed over the file: the watcher reloads, no signal needed.
    let before = refusals(&daemon, "revoked").await;
    setup
        .pki
        .ca
        .write_crl(&crl, &[&revoked_serial, &kept_serial], 2)
        .unwrap();
    wait_until(
        "the certificate revoked by the rewritten CRL is refused",
        DEADLINE,
        || async { answered(&setup, &daemon.url, &kept_cert, &kept_key).await == Some(false) },
    )
    .await;
    wait_until(
        "the second refusal is counted as revoked",
        DEADLINE,
        || async { refusals(&daemon, "revoked").await > before },
    )
    .await;
    assert_eq!(
        answered(&setup, &daemon.url, &setup.client.0, &setup.client.1).await,
        Some(true),
        "the hub's own certificate is not listed"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_tls_does_not_build_changes_nothing_and_says_so() {
    let (_db, setup) = sqlite_setup(&[]).await;
    let daemon = Daemon::start(&setup).await;
    let agent = Agent::at(&setup.config);
    let (cert, key) = setup.client.clone();
    assert_eq!(answered(&setup, &daemon.url, &cert, &key).await, Some(true));
    // One edit: the hub loses its grant on R-SHOWN, and the listener's certificate is one
    // whose key is not the configured one (the configuration parses; its TLS does not build).
    let (other_cert, _) = setup.pki.issue(
        &setup.pki.ca,
        "127.0.0.1",
        &["127.0.0.1"],
        Usage::ServerAuth,
        Validity::Current,
        "mismatched",
    );
    let good = std::fs::read_to_string(&setup.config).unwrap();
    let cert_line = format!("cert = {}", q(&setup.pki.hub_cert.display().to_string()));
    let verify_at = good.find("[verify]").unwrap();
    let mut bad = good.replacen(
        &format!("requester = {}", q(HUB)),
        "requester = \"someone-else\"",
        1,
    );
    let at = bad[verify_at..].find(&cert_line).unwrap() + verify_at;
    bad.replace_range(
        at..at + cert_line.len(),
        &format!("cert = {}", q(&other_cert.display().to_string())),
    );
    std::fs::write(&setup.config, &bad).unwrap();
    // `systemctl reload` runs `check` first, which already refuses it …
    let checked = agent.check(false).await;
    assert_ne!(checked.code, Some(0), "{checked}");
    checked.assert_mentions(&["[verify] TLS", "does not match key"]);
    // … and a SIGHUP sent anyway (or the file watcher) changes nothing either.
    sighup(&daemon);
    let status = wait_for("status reports the refused reload", DEADLINE, || async {
        let s = agent.try_status().await?;
        s.get("reload_failed").filter(|f| !f.is_null()).cloned()
    })
    .await;
    let reason = status["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("verification") && reason.contains("does not match key"),
        "{reason}"
    );
    let samples = admin::scrape(daemon.admin).await.unwrap();
    assert_eq!(
        admin::sample(&samples, "exchange_config_reload_failed", &[]),
        Some(1.0)
    );
    assert!(
        setup
            .audit()
            .iter()
            .any(|e| e["action"] == "config.reload_failed"),
        "the refused reload is audited"
    );
    assert!(
        !setup.audit().iter().any(|e| e["action"] == "config.reload"),
        "nothing claims a reload"
    );
    // The old generation runs whole: the grant the edit removes is still in force.
    assert_eq!(answered(&setup, &daemon.url, &cert, &key).await, Some(true));
    // Fixed (the certificate line restored, the grant still removed): the reload takes it.
    std::fs::write(
        &setup.config,
        bad.replace(
            &format!("cert = {}", q(&other_cert.display().to_string())),
            &cert_line,
        ),
    )
    .unwrap();
    sighup(&daemon);
    wait_until("the good reload clears the failure", DEADLINE, || async {
        let samples = admin::scrape(daemon.admin).await.unwrap_or_default();
        admin::sample(&samples, "exchange_config_reload_failed", &[]) == Some(0.0)
    })
    .await;
    let verifier = Verifier::new(&setup.client_tls(&cert, &key), &daemon.url).unwrap();
    let (code, _) = refused(&verifier, &question()).await;
    assert_eq!(
        code, 403,
        "the grant removed by the good reload is no longer in force"
    );
    daemon.stop().await;
}
