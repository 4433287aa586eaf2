//! The verification service (数据不落地核验) end to end: real PostgreSQL, MariaDB and SQLite
//! sources, real mutual TLS with certificates generated here, the agent's service
//! (`exchange_agent::verify::run`, and the real `exchange-agent run` daemon) and the hub's
//! client (`exchange_hub::verify::Verifier`, and the real `exchange-hub verify` command).
//!
//! Pinned: matches, mismatches, NULLs, not-found with `reveal_not_found` both ways, every
//! comparison semantics, HMAC claims; every authorization failure (403 naming what is
//! missing); 4xx JSON errors for a 10 MB body, malformed JSON, unknown resource and field;
//! subjects with SQL metacharacters and Unicode; a certificate from another CA and an expired
//! one (refused in the handshake, counted by reason and audited as `connection.rejected`);
//! quotas (429 with Retry-After, audited) and the mismatch lockout; the audit record of
//! every request naming subjects only by pseudonym; the hub's command line against the daemon
//! on PostgreSQL, MariaDB and SQLite; and that after a run of verifications no claimed or
//! stored value is anywhere on the agent's disk or in its log.

use std::collections::BTreeMap;
use std::time::Duration;

use exchange_hub::verify::{Verifier, VerifyCallError, claim_of};
use exchange_protocol::pki::{Usage, Validity};
use exchange_protocol::verify::{FieldResult, SubjectResult, VerifyRequest};
use exchange_tests::TestDir;
use exchange_tests::admin;
use exchange_tests::agent::{q, run};
use exchange_tests::db::{MyDb, PgDb};
use exchange_tests::verification::*;
use exchange_tests::wait::wait_for;

/// Every semantics, NULLs, not-found both ways and HMAC claims on one source kind.
async fn semantics_hold(kind: &str, url: &str) {
    let setup = Setup::new(kind, url, &[]);
    let service = setup.serve().await;
    let key = setup.comparison_key();
    use FieldResult::*;
    let items = vec![
        item(
            "11010519491231002x",
            &[
                ("name", v("张三")),
                (
                    "address",
                    v(" 北京市海淀区中关村大街１号   secretstoredqx "),
                ),
                ("birth", v("1949年12月31日")),
                ("salary", v("12345.6")),
                ("status", claim_of(Some(&key), "status", " 正常 ")),
            ],
        ),
        item(
            "440524188001010014",
            &[
                ("name", v("李")),
                ("address", v("广州")),
                ("birth", v("18800101")),
                ("salary", v("0")),
                ("status", claim_of(Some(&key), "status", "正常")),
            ],
        ),
        item("150102880730303", &[("name", v("王五"))]),
        item(
            "321083197812162119",
            &[
                ("name", v("O'Brien\"; DROP TABLE people; --")),
                ("salary", v("-1.50")),
            ],
        ),
        item("1' OR '1'='1", &[("name", v("张三"))]),
        item("𠀾'; DROP TABLE people; --", &[("name", v("张三"))]),
    ];
    let (answer, raw) = service
        .verifier
        .verify(&request("R-SHOWN", items.clone()))
        .await
        .unwrap();
    assert_eq!(answer.request_id, "req-1");
    let expect = [
        (
            Some(SubjectResult::Found),
            results(&[
                ("name", Match),
                ("address", Match),
                ("birth", Match),
                ("salary", Match),
                ("status", Match),
            ]),
        ),
        (
            Some(SubjectResult::Found),
            results(&[
                ("name", Mismatch),
                ("address", NoValue),
                ("birth", Match),
                ("salary", Match),
                ("status", Mismatch),
            ]),
        ),
        (
            Some(SubjectResult::NotFound),
            results(&[("name", Mismatch)]),
        ),
        (
            Some(SubjectResult::Found),
            results(&[("name", Match), ("salary", Match)]),
        ),
        (
            Some(SubjectResult::NotFound),
            results(&[("name", Mismatch)]),
        ),
        (
            Some(SubjectResult::NotFound),
            results(&[("name", Mismatch)]),
        ),
    ];
    for (i, (got, (subject, fields))) in answer.items.iter().zip(expect).enumerate() {
        assert_eq!(got.subject, subject, "{kind}: item {i}: {raw}");
        assert_eq!(got.fields, fields, "{kind}: item {i}: {raw}");
    }
    assert!(!raw.contains("张三") && !raw.contains("1949"), "{raw}");

    // reveal_not_found = false: no `subject`, a NULL and an unknown subject are mismatches.
    let (hidden, raw) = service
        .verifier
        .verify(&request("R-HIDDEN", items[1..3].to_vec()))
        .await
        .unwrap();
    assert!(!raw.contains("subject"), "{raw}");
    assert!(hidden.items.iter().all(|i| i.subject.is_none()));
    assert_eq!(hidden.items[0].fields["address"], Mismatch);
    assert_eq!(hidden.items[1].fields["name"], Mismatch);

    // Private set intersection: the same answers, computed by the requester from blinded
    // points; refused where membership must not be revealed.
    let psi_items = vec![
        item(
            "11010519491231002x",
            &[
                ("name", v("张三")),
                ("birth", v("1949/12/31")),
                ("salary", v("12345.600")),
            ],
        ),
        item(
            "440524188001010014",
            &[("name", v("王五")), ("address", v("x"))],
        ),
        item("150102880730303", &[("name", v("张三"))]),
    ];
    let psi = service
        .verifier
        .verify_psi(&request("R-SHOWN", psi_items.clone()))
        .await
        .unwrap();
    assert_eq!(psi.items[0].subject, Some(SubjectResult::Found), "{kind}");
    assert_eq!(
        psi.items[0].fields,
        results(&[("name", Match), ("birth", Match), ("salary", Match)]),
        "{kind}"
    );
    assert_eq!(psi.items[1].subject, Some(SubjectResult::Found));
    assert_eq!(
        psi.items[1].fields,
        results(&[("name", Mismatch), ("address", Mismatch)])
    );
    assert_eq!(psi.items[2].subject, Some(SubjectResult::NotFound));
    let (status, message) = match service
        .verifier
        .verify_psi(&request("R-HIDDEN", psi_items))
        .await
    {
        Err(VerifyCallError::Refused {
            status, message, ..
        }) => (status, message),
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(status, 403);
    assert!(message.contains("reveal_not_found"), "{message}");

    // The table is still there after the metacharacters.
    let (again, _) = service
        .verifier
        .verify(&request("R-SHOWN", items[..1].to_vec()))
        .await
        .unwrap();
    assert_eq!(again.items[0].subject, Some(SubjectResult::Found));
    service.stop().await;
    assert_no_secret(&setup, &[]);
}

#[tokio::test]
async fn semantics_hold_on_postgres() {
    let db = PgDb::create().await;
    create_people("postgres", Some(&db), None, None).await;
    semantics_hold("postgres", &db.url).await;
}

#[tokio::test]
async fn semantics_hold_on_mariadb() {
    let db = MyDb::create().await;
    create_people("mysql", None, Some(&db), None).await;
    semantics_hold("mysql", &db.url).await;
}

#[tokio::test]
async fn semantics_hold_on_sqlite() {
    let dir = TestDir::new();
    let file = dir.path().join("people.db");
    create_people("sqlite", None, None, Some(&file)).await;
    semantics_hold("sqlite", &format!("sqlite://{}", file.display())).await;
}

#[tokio::test]
async fn every_denial_is_a_json_error_naming_what_is_missing_and_is_audited() {
    let (_db, setup) = sqlite_setup(&[]).await;
    let service = setup.serve().await;
    let ok = || item("11010519491231002X", &[("name", v("张三"))]);
    let cases: Vec<(VerifyRequest, u16, &[&str])> = vec![
        (request("R-NONE", vec![ok()]), 403, &["not shared", "none"]),
        (request("R-EXPIRED", vec![ok()]), 403, &["expired", HUB]),
        (
            VerifyRequest {
                purpose: "催收".into(),
                ..request("R-SHOWN", vec![ok()])
            },
            403,
            &["purpose `催收`", PURPOSE],
        ),
        (
            request(
                "R-SHOWN",
                vec![item("11010519491231002X", &[("note", v(CLAIMED_SECRET))])],
            ),
            400,
            &["`note`", "drop"],
        ),
        (
            request(
                "R-SHOWN",
                vec![item("11010519491231002X", &[("colour", v(CLAIMED_SECRET))])],
            ),
            400,
            &["no field `colour`"],
        ),
        // An unknown resource answers as one without a grant: codes cannot be enumerated.
        (
            request("R-UNKNOWN", vec![ok()]),
            403,
            &["R-UNKNOWN", "has no grant"],
        ),
        (
            request(
                "R-SHOWN",
                vec![item("11010519491231002X", &[("status", v(CLAIMED_SECRET))])],
            ),
            400,
            &["hmac"],
        ),
    ];
    for (r, status, needles) in &cases {
        let (got, message) = refused(&service.verifier, r).await;
        assert_eq!(got, *status, "{message}");
        for n in *needles {
            assert!(message.contains(n), "`{message}` should mention `{n}`");
        }
        assert!(!message.contains(CLAIMED_SECRET) && !message.contains("11010519491231002X"));
    }
    // A requester without a grant, and one whose grant lacks a field.
    for (cn, claim, needle) in [
        ("stranger", "name", "has no grant"),
        ("narrow-hub", "birth", "field `birth`"),
    ] {
        let (cert, key) = setup.pki.issue(
            &setup.pki.ca,
            cn,
            &[],
            Usage::ClientAuth,
            Validity::Current,
            cn,
        );
        let other = Verifier::new(&setup.client_tls(&cert, &key), &service.url).unwrap();
        let r = request(
            "R-SHOWN",
            vec![item("11010519491231002X", &[(claim, v("x"))])],
        );
        let (status, message) = refused(&other, &r).await;
        assert_eq!(status, 403, "{message}");
        assert!(
            message.contains(needle) && message.contains(cn),
            "{message}"
        );
    }
    // Malformed bodies, a 10 MB body: 4xx JSON errors, the service goes on.
    let http = raw_client(&setup);
    for (body, status) in [
        (b"{not json".to_vec(), 400),
        (b"[]".to_vec(), 400),
        (
            br#"{"request_id":"r","purpose":"p","case_ref":"c","resource":"R-SHOWN","items":[{"subject":"x","claims":{"name":5}}]}"#.to_vec(),
            400,
        ),
        (vec![b' '; 10 * 1024 * 1024], 413),
    ] {
        let response = http
            .post(format!("{}/v1/verify", service.url))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status);
        let error: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert!(error["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // Still answering.
    let (answer, _) = service
        .verifier
        .verify(&request("R-SHOWN", vec![ok()]))
        .await
        .unwrap();
    assert_eq!(answer.items[0].fields["name"], FieldResult::Match);
    service.stop().await;
    // Every request left an audit record; denials say so; no subject in clear.
    let audit = setup.audit();
    assert_eq!(audit.len(), cases.len() + 2 + 4 + 1, "{audit:#?}");
    let outcomes: Vec<&str> = audit
        .iter()
        .map(|e| e["detail"]["outcome"].as_str().unwrap())
        .collect();
    assert!(
        outcomes.iter().filter(|o| **o == "denied").count() >= 5,
        "{outcomes:?}"
    );
    assert_eq!(outcomes.last(), Some(&"answered"));
    let last = audit.last().unwrap();
    assert_eq!(last["actor"], HUB);
    assert_eq!(last["detail"]["purpose"], PURPOSE);
    assert_eq!(last["detail"]["case_ref"], "2024-0001");
    assert!(
        last["detail"]["subjects"][0]
            .as_str()
            .unwrap()
            .starts_with("v1:")
    );
    assert_no_secret(&setup, &[]);
}

#[tokio::test]
async fn certificates_from_another_ca_or_expired_are_refused_in_the_handshake() {
    let (_db, setup) = sqlite_setup(&[]).await;
    let service = setup.serve().await;
    let [foreign, expired] = refused_certificates(&setup);
    for (cert, key) in [foreign, expired] {
        let r = request(
            "R-SHOWN",
            vec![item("11010519491231002X", &[("name", v("张三"))])],
        );
        let verifier = Verifier::new(&setup.client_tls(&cert, &key), &service.url).unwrap();
        match verifier.verify(&r).await {
            Err(VerifyCallError::Handshake { .. }) => {}
            other => panic!("expected a refused handshake, got {other:?}"),
        }
    }
    service.stop().await;
    // Nothing reached a handler: the only records are the two refused connections.
    let audit = wait_for(
        "both refusals are audited",
        Duration::from_secs(10),
        || async {
            let audit = setup.audit();
            (audit.len() >= 2).then_some(audit)
        },
    )
    .await;
    let mut reasons: Vec<&str> = audit
        .iter()
        .map(|e| {
            assert_eq!(e["action"], "connection.rejected", "{e}");
            assert_eq!(e["detail"]["listener"], "verify", "{e}");
            e["detail"]["reason"].as_str().unwrap()
        })
        .collect();
    reasons.sort_unstable();
    assert_eq!(reasons, ["expired", "unknown_issuer"]);
    // Counted in this process's metrics (other tests here never fail a handshake in-process).
    let m = exchange_agent::metrics::global();
    assert!(m.handshake_failures("verify", "unknown_issuer") >= 1);
    assert!(m.handshake_failures("verify", "expired") >= 1);
}

/// The daemon counts every refused handshake by reason on `/metrics` and audits it; the
/// service goes on answering.
#[tokio::test]
async fn refused_handshakes_are_counted_by_reason_and_audited_by_the_daemon() {
    use tokio::io::AsyncWriteExt;
    let (_db, setup) = sqlite_setup(&[]).await;
    let daemon = Daemon::start(&setup).await;
    let [foreign, expired] = refused_certificates(&setup);
    let r = request(
        "R-SHOWN",
        vec![item("11010519491231002X", &[("name", v("张三"))])],
    );
    for (cert, key) in [foreign, expired] {
        let verifier = Verifier::new(&setup.client_tls(&cert, &key), &daemon.url).unwrap();
        match verifier.verify(&r).await {
            Err(VerifyCallError::Handshake { .. }) => {}
            other => panic!("expected a refused handshake, got {other:?}"),
        }
    }
    // Not TLS at all.
    let mut plain = tokio::net::TcpStream::connect(daemon.url.trim_start_matches("https://"))
        .await
        .unwrap();
    plain
        .write_all(b"POST /v1/verify HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let failures = |samples: &[admin::Sample], reason: &str| {
        admin::sample(
            samples,
            "exchange_tls_handshake_failures_total",
            &[("listener", "verify"), ("reason", reason)],
        )
    };
    let samples = wait_for(
        "the refused handshakes are counted",
        Duration::from_secs(30),
        || async {
            let s = admin::scrape(daemon.admin).await?;
            (failures(&s, "protocol").is_some()).then_some(s)
        },
    )
    .await;
    drop(plain);
    // A refusal the hub's client saw only as a closed HTTP/2 connection is followed by one
    // handshake of its own that finds the TLS reason: one or two per refused certificate.
    for reason in ["unknown_issuer", "expired"] {
        let n = failures(&samples, reason).unwrap_or(0.0);
        assert!((1.0..=2.0).contains(&n), "{reason}: {n}");
    }
    assert_eq!(failures(&samples, "protocol"), Some(1.0));
    let rejected = wait_for("the refusals are audited", Duration::from_secs(30), || {
        let audit = setup.audit();
        async move {
            let rejected: BTreeMap<String, serde_json::Value> = audit
                .into_iter()
                .filter(|e| e["action"] == "connection.rejected")
                .map(|e| (e["detail"]["reason"].as_str().unwrap().to_owned(), e))
                .collect();
            (rejected.len() >= 3).then_some(rejected)
        }
    })
    .await;
    for reason in ["unknown_issuer", "expired", "protocol"] {
        let e = &rejected[reason];
        assert_eq!(e["detail"]["listener"], "verify", "{e}");
        assert_eq!(e["actor"], "-", "{e}");
        let peer: std::net::IpAddr = e["detail"]["peer"].as_str().unwrap().parse().unwrap();
        assert!(peer.is_loopback(), "{e}");
        let count = e["detail"]["count"].as_u64().unwrap();
        assert!((1..=2).contains(&count), "{e}");
        assert!(!e["detail"]["error"].as_str().unwrap().is_empty(), "{e}");
    }
    assert!(
        rejected["unknown_issuer"]["detail"]["error"]
            .as_str()
            .unwrap()
            .contains("not issued by the configured CA"),
        "{}",
        rejected["unknown_issuer"]
    );
    // The service goes on answering.
    let verifier = Verifier::new(
        &setup.client_tls(&setup.client.0, &setup.client.1),
        &daemon.url,
    )
    .unwrap();
    let (answer, _) = verifier.verify(&r).await.unwrap();
    assert_eq!(answer.items[0].fields["name"], FieldResult::Match);
    daemon.stop().await;
    assert!(
        exchange_agent::audit::verify(&setup.dir.path().join("agent-data")).is_ok(),
        "the audit chain is intact"
    );
}

#[tokio::test]
async fn a_uscc_uri_identifies_the_requester_when_configured() {
    let (_db, setup) = sqlite_setup(&["requester_identity = \"uscc_uri\""]).await;
    // The grant names the code; the certificate's CN is something else.
    let text = std::fs::read_to_string(&setup.config).unwrap().replace(
        "requester = \"narrow-hub\"",
        "requester = \"91310110666007217T\"",
    );
    std::fs::write(&setup.config, text).unwrap();
    let service = setup.serve().await;
    let (cert, key) = setup.pki.issue(
        &setup.pki.ca,
        "whatever-cn",
        &["urn:uscc:91310110666007217T"],
        Usage::ClientAuth,
        Validity::Current,
        "uscc",
    );
    let r = request(
        "R-SHOWN",
        vec![item("11010519491231002X", &[("name", v("张三"))])],
    );
    let verifier = Verifier::new(&setup.client_tls(&cert, &key), &service.url).unwrap();
    let (answer, _) = verifier.verify(&r).await.unwrap();
    assert_eq!(answer.items[0].fields["name"], FieldResult::Match);
    // The CN-only certificate has no identity under uscc_uri.
    let (status, message) = refused(&service.verifier, &r).await;
    assert_eq!(status, 403);
    assert!(message.contains("urn:uscc"), "{message}");
    service.stop().await;
}

#[tokio::test]
async fn quotas_answer_429_with_retry_after_and_lock_a_subject_after_repeated_mismatches() {
    let (_db, setup) = sqlite_setup(&[
        "max_items = 3",
        "items_per_minute = 4",
        "mismatch_lockout = 2",
    ])
    .await;
    let service = setup.serve().await;
    let wrong = || item("440524188001010014", &[("name", v("王"))]);
    service
        .verifier
        .verify(&request("R-SHOWN", vec![wrong()]))
        .await
        .unwrap();
    service
        .verifier
        .verify(&request("R-SHOWN", vec![wrong()]))
        .await
        .unwrap();
    match service
        .verifier
        .verify(&request("R-SHOWN", vec![wrong()]))
        .await
    {
        Err(VerifyCallError::Refused {
            status: 429,
            retry_after: Some(secs),
            message,
        }) => {
            assert!(message.contains("`name`"), "{message}");
            assert!(secs.parse::<u64>().unwrap() > 3000);
        }
        other => panic!("expected a lockout, got {other:?}"),
    }
    let three = vec![
        item("11010519491231002X", &[("name", v("张三"))]),
        item("321083197812162119", &[("name", v("x"))]),
        item("150102880730303", &[("name", v("y"))]),
    ];
    let (status, message) = refused(&service.verifier, &request("R-SHOWN", three)).await;
    assert_eq!(status, 429);
    assert!(message.contains("items per minute"), "{message}");
    service.stop().await;
    let throttled = setup
        .audit()
        .iter()
        .filter(|e| e["detail"]["outcome"] == "throttled")
        .count();
    assert_eq!(throttled, 2);
}

#[tokio::test]
async fn the_hub_cli_verifies_against_the_agent_daemon_and_nothing_lands_on_postgres() {
    let db = PgDb::create().await;
    create_people("postgres", Some(&db), None, None).await;
    hub_cli_verifies("postgres", &db.url).await;
}

#[tokio::test]
async fn the_hub_cli_verifies_against_the_agent_daemon_and_nothing_lands_on_mariadb() {
    let db = MyDb::create().await;
    create_people("mysql", None, Some(&db), None).await;
    hub_cli_verifies("mysql", &db.url).await;
}

#[tokio::test]
async fn the_hub_cli_verifies_against_the_agent_daemon_and_nothing_lands_on_sqlite() {
    let dir = TestDir::new();
    let file = dir.path().join("people.db");
    create_people("sqlite", None, None, Some(&file)).await;
    hub_cli_verifies("sqlite", &format!("sqlite://{}", file.display())).await;
}

/// The real binaries on one source kind: `exchange-agent run` hosts the service;
/// `exchange-hub verify` asks it (single, --json, --hmac, --psi, --file), and a refusal exits
/// non-zero with the agent's message. Afterwards no claimed or stored value is in the agent's
/// data directory or log.
async fn hub_cli_verifies(kind: &str, source_url: &str) {
    let setup = Setup::new(kind, source_url, &[]);
    let daemon = Daemon::start(&setup).await;
    let url = daemon.url.clone();
    // The hub's configuration: [listen] for serving, [client] for verify.
    let hub_toml = setup.dir.path().join("hub.toml");
    std::fs::write(
        &hub_toml,
        format!(
            "[listen]\naddr = \"127.0.0.1:0\"\nca = {ca}\ncert = {cert}\nkey = {key}\n\n[store]\nurl = {store}\n\n[client]\ncert = {ccert}\nkey = {ckey}\ncomparison_key_file = {ck}\n",
            ca = q(&setup.pki.ca_cert.display().to_string()),
            cert = q(&setup.pki.hub_cert.display().to_string()),
            key = q(&setup.pki.hub_key.display().to_string()),
            store = q(&format!("sqlite://{}", setup.dir.path().join("hub.db").display())),
            ccert = q(&setup.client.0.display().to_string()),
            ckey = q(&setup.client.1.display().to_string()),
            ck = q(&setup.comparison_key.display().to_string()),
        ),
    )
    .unwrap();
    let hub = exchange_tests::bins::hub();
    let base = |resource: &str| {
        vec![
            "verify".to_owned(),
            "--config".into(),
            hub_toml.display().to_string(),
            "--agent".into(),
            url.clone(),
            "--resource".into(),
            resource.into(),
            "--purpose".into(),
            PURPOSE.into(),
            "--case-ref".into(),
            "2024-0002".into(),
        ]
    };
    let call = |args: Vec<String>| {
        let hub = hub.clone();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&hub, &refs).await
        }
    };
    let mut single = base("R-SHOWN");
    single.extend(
        [
            "--subject",
            "11010519491231002X",
            "--claim",
            "name=张三",
            "--claim",
            &format!("address={CLAIMED_SECRET}"),
            "--claim",
            "birth=1949/12/31",
        ]
        .map(String::from),
    );
    let out = call(single.clone()).await;
    out.assert_code(0);
    assert!(out.stdout.contains("found"), "{out}");
    assert!(
        out.stdout.contains("name") && out.stdout.contains("match (一致)"),
        "{out}"
    );
    assert!(out.stdout.contains("mismatch (不一致)"), "{out}");
    let mut json = single.clone();
    json.push("--json".into());
    let out = call(json).await;
    out.assert_code(0);
    let answer: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(answer["items"][0]["fields"]["birth"], "match");
    assert_eq!(answer["items"][0]["subject"], "found");
    // HMAC claims: status compares by hmac only.
    let mut hmac = base("R-SHOWN");
    hmac.extend(
        [
            "--subject",
            "11010519491231002X",
            "--claim",
            "status=正常",
            "--hmac",
            "--json",
        ]
        .map(String::from),
    );
    let out = call(hmac).await;
    out.assert_code(0);
    assert!(out.stdout.contains("\"status\":\"match\""), "{out}");
    // Private set intersection from the command line.
    let mut psi = base("R-SHOWN");
    psi.extend(
        [
            "--subject",
            "11010519491231002X",
            "--claim",
            "name=张三",
            "--claim",
            "birth=19491231",
            "--psi",
            "--json",
        ]
        .map(String::from),
    );
    let out = call(psi).await;
    out.assert_code(0);
    let answer: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(answer["items"][0]["subject"], "found", "{out}");
    assert_eq!(answer["items"][0]["fields"]["name"], "match", "{out}");
    assert_eq!(answer["items"][0]["fields"]["birth"], "match", "{out}");
    // A batch from a file; answers next to it.
    let claims = setup.dir.path().join("claims.csv");
    std::fs::write(
        &claims,
        format!("subject,name,birth\n11010519491231002X,张三,1949-12-31\n440524188001010014,李四,\n999,{CLAIMED_SECRET},2000-01-01\n11010519491231002x,张三,\n"),
    )
    .unwrap();
    // The file asks about one subject twice: the hub sends it in a second request.
    let mut batch = base("R-HIDDEN");
    batch.extend(["--file".to_owned(), claims.display().to_string()]);
    let out = call(batch).await;
    out.assert_code(0);
    let answers = std::fs::read_to_string(setup.dir.path().join("claims.answers.csv")).unwrap();
    assert_eq!(
        answers,
        "row,subject,found,name,birth\n2,11010519491231002X,,match,match\n3,440524188001010014,,match,\n4,999,,mismatch,mismatch\n5,11010519491231002x,,match,\n"
    );
    // A refusal exits non-zero with the agent's message.
    let mut denied = base("R-EXPIRED");
    denied.extend(["--subject", "11010519491231002X", "--claim", "name=张三"].map(String::from));
    let out = call(denied).await;
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr.contains("403") && out.stderr.contains("expired"),
        "{out}"
    );
    // Stop the daemon, then look for the values everywhere it writes.
    let log = daemon.stop().await;
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("Verification answered"), "{log_text}");
    assert_no_secret(&setup, &[log]);
    let audit = setup.audit();
    assert!(audit.len() >= 5, "{audit:?}");
}
