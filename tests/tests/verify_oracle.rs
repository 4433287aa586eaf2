//! Verification cannot be turned into an oracle (docs/PROTOCOL.md §11.7): a requester holding a
//! valid grant tries, as a curious one would, to learn more than its answers should tell, on
//! the real service over real mutual TLS. Each attack here recovered a stored value or told
//! membership before the budgets were charged before answering.
//!
//! - many items about one subject, and one field under several spellings, in one request;
//! - a 365-date search for a birth date, and a 10,000-guess search for the hidden middle of
//!   a mobile whose mask the requester holds (an enumerable field);
//! - contradictory claims and a claim on the key field, to tell whether a subject is known;
//! - private set intersection with repeated points, name variants, guesses of one field
//!   hidden in another field's slot, a brute force by many crafted points, an enumerable
//!   field, and a resource too large to answer;
//! - a restart and a crash (SIGKILL) between attempts;
//! - an ungranted certificate telling resources and fields apart;
//! - and a property test: whatever random requests arrive, the answers other than `match`
//!   per subject and field never exceed the budget.

use std::collections::{BTreeMap, HashMap};

use exchange_hub::verify::{Verifier, VerifyCallError, claim_of};
use exchange_protocol::pki::{Usage, Validity};
use exchange_protocol::psi::{self, PsiAnswer, PsiItem, PsiRequest, Secret};
use exchange_protocol::verify::{Claim, FieldResult, Item, VerifyRequest};
use exchange_tests::verification::*;

/// The true birth date of [`PEOPLE`]`[0]`, and its subject.
const SUBJECT: &str = "11010519491231002X";

/// The outcome of one request, as the requester sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Answered: per item, its fields' results.
    Answered(Vec<BTreeMap<String, FieldResult>>),
    /// Refused with this status.
    Refused(u16, String),
}

async fn ask(verifier: &Verifier, r: &VerifyRequest) -> Seen {
    match verifier.verify(r).await {
        Ok((answer, _)) => Seen::Answered(answer.items.into_iter().map(|i| i.fields).collect()),
        Err(VerifyCallError::Refused {
            status, message, ..
        }) => Seen::Refused(status, message),
        Err(e) => panic!("{e}"),
    }
}

/// Claims `field = value` about `subject`, one request per value, until 20 requests in a row
/// are throttled; returns (answers other than match, values answered match, last status).
async fn search(
    verifier: &Verifier,
    resource: &str,
    subject: &str,
    field: &str,
    values: impl Iterator<Item = String>,
) -> (usize, Vec<String>, usize) {
    let (mut missed, mut matched, mut throttled_in_a_row, mut refused) = (0, Vec::new(), 0, 0);
    for value in values {
        let r = request(resource, vec![item(subject, &[(field, v(&value))])]);
        match ask(verifier, &r).await {
            Seen::Answered(items) => {
                throttled_in_a_row = 0;
                if items[0][field] == FieldResult::Match {
                    matched.push(value);
                } else {
                    missed += 1;
                }
            }
            Seen::Refused(429, _) => {
                refused += 1;
                throttled_in_a_row += 1;
                if throttled_in_a_row == 20 {
                    break;
                }
            }
            Seen::Refused(status, message) => panic!("{status}: {message}"),
        }
    }
    (missed, matched, refused)
}

#[tokio::test]
async fn one_request_cannot_ask_about_a_subject_twice() {
    let (_db, setup) = sqlite_setup(&[]).await;
    let service = setup.serve().await;
    // Twelve guesses of a birth date, one per item, the subject written in several ways.
    let spellings = [
        "11010519491231002X",
        "11010519491231002x",
        " 110105194912310 02X",
    ];
    let items: Vec<Item> = (0..12)
        .map(|i| {
            item(
                spellings[i % spellings.len()],
                &[("birth", v(&format!("1949-12-{:02}", 20 + i)))],
            )
        })
        .collect();
    for resource in ["R-HIDDEN", "R-SHOWN"] {
        let (status, message) = refused(&service.verifier, &request(resource, items.clone())).await;
        assert_eq!(status, 400, "{message}");
        assert!(message.contains("same subject"), "{message}");
        assert!(!message.contains("110105"), "{message}");
    }
    // Nothing was charged: the true date is still answered.
    let r = request(
        "R-HIDDEN",
        vec![item(SUBJECT, &[("birth", v("1949-12-31"))])],
    );
    assert_eq!(
        ask(&service.verifier, &r).await,
        Seen::Answered(vec![results(&[("birth", FieldResult::Match)])])
    );
    service.stop().await;
    let audit = setup.audit();
    assert!(audit[..2].iter().all(|e| e["detail"]["charged"].is_null()));
}

#[tokio::test]
async fn a_field_is_named_one_way_per_request() {
    let (_db, setup) = sqlite_setup(&[]).await;
    let service = setup.serve().await;
    let variants = ["birth", "Birth", "bIrth", "BIRTH"];
    let one_item: Vec<(&str, Claim)> = variants.iter().map(|n| (*n, v("1949-12-31"))).collect();
    let across: Vec<Item> = variants
        .iter()
        .zip(["11010519491231002X", "440524188001010014"])
        .map(|(n, s)| item(s, &[(n, v("1949-12-31"))]))
        .collect();
    for items in [vec![item(SUBJECT, &one_item)], across] {
        let (status, message) = refused(&service.verifier, &request("R-HIDDEN", items)).await;
        assert_eq!(status, 400, "{message}");
        assert!(message.contains("named both"), "{message}");
    }
    // One spelling, whatever it is, is answered under that spelling; an HMAC claim is made
    // under the name as the request gives it (docs/PROTOCOL.md §11.3).
    let key = setup.comparison_key();
    let r = request(
        "R-SHOWN",
        vec![item(
            SUBJECT,
            &[
                ("Birth", v("1949-12-31")),
                ("Status", claim_of(Some(&key), "Status", "正常")),
            ],
        )],
    );
    assert_eq!(
        ask(&service.verifier, &r).await,
        Seen::Answered(vec![results(&[
            ("Birth", FieldResult::Match),
            ("Status", FieldResult::Match)
        ])])
    );
    service.stop().await;
}

#[tokio::test]
async fn a_365_date_search_stops_within_the_budget_and_misses_the_birth_date() {
    let (_db, setup) = sqlite_setup(&[]).await;
    let service = setup.serve().await;
    // Every day of 1949, the true one (12-31) last: as a search that has not hit it yet. (A
    // real requester can read this birth date off the 公民身份号码 itself: docs/PROTOCOL.md
    // §11.7 item 5, and `check` warns; what is tested here is the budget, whatever the field.)
    let start = chrono::NaiveDate::from_ymd_opt(1949, 1, 1).unwrap();
    let dates = (0..365).map(|d| (start + chrono::Days::new(d)).to_string());
    let (missed, matched, refused) =
        search(&service.verifier, "R-HIDDEN", SUBJECT, "birth", dates).await;
    // mismatch_lockout = 5 (default) within 24 h: five wrong answers, then 429 whatever is sent.
    assert_eq!(missed, 5);
    assert!(matched.is_empty(), "{matched:?}");
    assert_eq!(refused, 20);
    // The other fields of the subject, and the field of other subjects, are their own budgets.
    let r = request(
        "R-HIDDEN",
        vec![
            item(SUBJECT, &[("name", v("张三"))]),
            item("440524188001010014", &[("birth", v("1880-01-01"))]),
        ],
    );
    assert!(matches!(
        ask(&service.verifier, &r).await,
        Seen::Answered(_)
    ));
    // The lock holds even for the true value, and says when it lifts (about a day).
    let r = request(
        "R-HIDDEN",
        vec![item(SUBJECT, &[("birth", v("1949-12-31"))])],
    );
    match service.verifier.verify(&r).await {
        Err(VerifyCallError::Refused {
            status: 429,
            retry_after: Some(secs),
            message,
        }) => {
            let secs: u64 = secs.parse().unwrap();
            assert!((86_000..=86_400).contains(&secs), "{secs}");
            assert!(message.contains("`birth`"), "{message}");
        }
        other => panic!("expected 429, got {other:?}"),
    }
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_cannot_overdraw_the_budget() {
    let (_db, setup) = sqlite_setup(&[]).await;
    let service = setup.serve().await;
    let verifier = std::sync::Arc::new(
        Verifier::new(
            &setup.client_tls(&setup.client.0, &setup.client.1),
            &service.url,
        )
        .unwrap(),
    );
    // Forty wrong birth dates of one subject at once, over one HTTP/2 connection.
    let tasks: Vec<_> = (1..=40)
        .map(|d| {
            let verifier = verifier.clone();
            tokio::spawn(async move {
                let r = request(
                    "R-HIDDEN",
                    vec![item(
                        SUBJECT,
                        &[("birth", v(&format!("1950-01-{:02}", d % 28 + 1)))],
                    )],
                );
                ask(&verifier, &r).await
            })
        })
        .collect();
    let mut answered = 0;
    for t in tasks {
        match t.await.unwrap() {
            Seen::Answered(items) => {
                assert_eq!(items[0]["birth"], FieldResult::Mismatch);
                answered += 1;
            }
            Seen::Refused(status, message) => assert_eq!(status, 429, "{message}"),
        }
    }
    // mismatch_lockout = 5: never more, whatever the interleaving.
    assert!((1..=5).contains(&answered), "{answered} answered");
    service.stop().await;
}

#[tokio::test]
async fn the_hidden_middle_of_a_masked_mobile_is_not_recovered() {
    let (_db, setup) = sqlite_setup(&[]).await;
    let service = setup.serve().await;
    // The requester holds 139****1111 from the delivered data; the truth is 5738.
    let guesses = (0..10_000).map(|n| format!("139{n:04}1111"));
    let (missed, matched, _) =
        search(&service.verifier, "R-HIDDEN", SUBJECT, "mobile", guesses).await;
    // mobile is enumerable on R-HIDDEN: enumerable_lockout = 1 (default).
    assert_eq!(missed, 1);
    assert!(matched.is_empty(), "{matched:?}");
    // In one request, as many items: refused whole.
    let items: Vec<Item> = (0..157)
        .map(|n| item(SUBJECT, &[("mobile", v(&format!("139{n:04}1111")))]))
        .collect();
    let (status, _) = refused(&service.verifier, &request("R-HIDDEN", items)).await;
    assert_eq!(status, 400);
    service.stop().await;
}

#[tokio::test]
async fn contradictory_claims_and_key_claims_do_not_tell_whether_a_subject_is_known() {
    let (_db, setup) = sqlite_setup(&[]).await;
    let service = setup.serve().await;
    let unknown = "150102880730303";
    for subject in [SUBJECT, unknown] {
        // Both values of an enumerable field in one item.
        let r = request(
            "R-HIDDEN",
            vec![item(subject, &[("sex", v("男")), ("Sex", v("女"))])],
        );
        assert_eq!(refused(&service.verifier, &r).await.0, 400);
        // The key field: a claim on it would match exactly when the subject is known.
        let r = request("R-HIDDEN", vec![item(subject, &[("id_no", v(subject))])]);
        let (status, message) = refused(&service.verifier, &r).await;
        assert_eq!(status, 400);
        assert!(message.contains("key"), "{message}");
    }
    // Across requests: the known subject (男) asked the wrong value first, and the unknown
    // subject, show the requester the same transcript: one mismatch, then 429.
    let mut transcripts = Vec::new();
    for subject in [SUBJECT, unknown] {
        let mut seen = Vec::new();
        for value in ["女", "男"] {
            let r = request("R-HIDDEN", vec![item(subject, &[("sex", v(value))])]);
            seen.push(match ask(&service.verifier, &r).await {
                Seen::Refused(status, _) => Seen::Refused(status, String::new()),
                answered => answered,
            });
        }
        transcripts.push(seen);
    }
    assert_eq!(transcripts[0], transcripts[1]);
    assert_eq!(
        transcripts[0],
        vec![
            Seen::Answered(vec![results(&[("sex", FieldResult::Mismatch)])]),
            Seen::Refused(429, String::new())
        ]
    );
    service.stop().await;
}

#[tokio::test]
async fn an_ungranted_certificate_cannot_tell_resources_or_fields_apart() {
    let (_db, setup) = sqlite_setup(&[]).await;
    let service = setup.serve().await;
    let (cert, key) = setup.pki.issue(
        &setup.pki.ca,
        "stranger",
        &[],
        Usage::ClientAuth,
        Validity::Current,
        "stranger",
    );
    let stranger = Verifier::new(&setup.client_tls(&cert, &key), &service.url).unwrap();
    let mut answers = Vec::new();
    for (resource, field) in [
        ("R-SHOWN", "name"),
        ("R-SHOWN", "note"),
        ("R-SHOWN", "colour"),
        ("R-NONE", "name"),
        ("R-NOPE", "name"),
        ("R-NOPE", "colour"),
    ] {
        let r = request(resource, vec![item(SUBJECT, &[(field, v("x"))])]);
        let (status, message) = refused(&stranger, &r).await;
        answers.push((status, message.replace(resource, "<resource>")));
        let psi = stranger.verify_psi(&r).await;
        match psi {
            Err(VerifyCallError::Refused {
                status, message, ..
            }) => answers.push((status, message.replace(resource, "<resource>"))),
            other => panic!("{other:?}"),
        }
    }
    assert!(
        answers.iter().all(|a| *a == answers[0]),
        "every answer the same: {answers:#?}"
    );
    assert_eq!(answers[0].0, 403);
    assert!(answers[0].1.contains("has no grant"), "{answers:?}");
    // The granted requester is told what is wrong.
    for (field, needle) in [("note", "drop"), ("colour", "no field")] {
        let r = request("R-SHOWN", vec![item(SUBJECT, &[(field, v("x"))])]);
        let (status, message) = refused(&service.verifier, &r).await;
        assert_eq!(status, 400);
        assert!(message.contains(needle), "{message}");
    }
    service.stop().await;
}

#[tokio::test]
async fn budgets_survive_a_restart_and_a_crash() {
    let (_db, setup) = sqlite_setup(&["mismatch_lockout = 2"]).await;
    let daemon = Daemon::start(&setup).await;
    let verifier = |url: &str| {
        Verifier::new(&setup.client_tls(&setup.client.0, &setup.client.1), url).unwrap()
    };
    let wrong = |subject: &str| {
        request(
            "R-HIDDEN",
            vec![item(subject, &[("birth", v("2000-01-01"))])],
        )
    };
    let spend = |subject: &'static str, url: String| {
        let verifier = verifier(&url);
        async move {
            for _ in 0..2 {
                assert!(matches!(
                    ask(&verifier, &wrong(subject)).await,
                    Seen::Answered(_)
                ));
            }
            assert_eq!(refused(&verifier, &wrong(subject)).await.0, 429);
        }
    };
    spend(SUBJECT, daemon.url.clone()).await;
    // A restart (SIGTERM: the ledger's snapshot is saved).
    let url = daemon.url.clone();
    let admin = daemon.admin;
    daemon.stop().await;
    assert!(
        setup
            .dir
            .path()
            .join("agent-data/verify-ledger.json")
            .exists()
    );
    let daemon = Daemon::restart(&setup, (url, admin), "agent-2.log").await;
    assert_eq!(
        refused(&verifier(&daemon.url), &wrong(SUBJECT)).await.0,
        429
    );
    // A crash right after the answers (SIGKILL: no snapshot since): replayed from the audit log.
    spend("440524188001010014", daemon.url.clone()).await;
    let ports = daemon.kill().await;
    let daemon = Daemon::restart(&setup, ports, "agent-3.log").await;
    let v = verifier(&daemon.url);
    assert_eq!(refused(&v, &wrong("440524188001010014")).await.0, 429);
    assert_eq!(refused(&v, &wrong(SUBJECT)).await.0, 429);
    // A subject with no misses is answered.
    assert!(matches!(
        ask(&v, &wrong("321083197812162119")).await,
        Seen::Answered(_)
    ));
    daemon.stop().await;
}

/// One crafted claim: (slot, the field hashed, the value).
type CraftedClaim = (String, String, String);
/// A crafted item, as tests write it: the subject and its (slot, field hashed, value) claims.
type Wanted<'a> = (&'a str, Vec<(&'a str, &'a str, &'a str)>);

/// A private set intersection requester that crafts its own points: per item a secret of its
/// own (so one subject can appear in many items), any field's hash in any slot.
struct Crafted {
    /// Per item: the secret, the subject and the (slot, field hashed, value) claims.
    items: Vec<(Secret, String, Vec<CraftedClaim>)>,
}

impl Crafted {
    fn secret() -> Secret {
        Secret::from_random_bytes(&Crafted::bytes())
    }

    fn bytes() -> [u8; 64] {
        let mut random = [0u8; 64];
        random[..32].copy_from_slice(&rand::random::<[u8; 32]>());
        random[32..].copy_from_slice(&rand::random::<[u8; 32]>());
        random
    }

    fn body(&self, resource: &str) -> PsiRequest {
        use exchange_agent::verify::compare::{canonical, psi_form};
        PsiRequest {
            request_id: "psi-1".into(),
            purpose: PURPOSE.into(),
            case_ref: "c".into(),
            resource: resource.into(),
            items: self
                .items
                .iter()
                .map(|(a, subject, claims)| {
                    let s = canonical(subject);
                    PsiItem {
                        subject: hex::encode(a.blind(&psi::hash_subject(&s))),
                        claims: claims
                            .iter()
                            .map(|(slot, field, value)| {
                                let p = psi::hash_claim(field, &s, &psi_form(value));
                                (slot.clone(), hex::encode(a.blind(&p)))
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }

    /// Sends it; the status and, when answered, per item per slot whether the claim matched.
    async fn send(
        &self,
        setup: &Setup,
        url: &str,
        resource: &str,
    ) -> (u16, Option<Vec<BTreeMap<String, bool>>>, String) {
        let response = raw_client(setup)
            .post(format!("{url}{}", psi::PSI_PATH))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&self.body(resource)).unwrap())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        if status != 200 {
            return (status, None, text);
        }
        let answer: PsiAnswer = serde_json::from_str(&text).unwrap();
        let tags: std::collections::HashSet<&str> =
            answer.claims.iter().map(String::as_str).collect();
        let matched = answer
            .items
            .iter()
            .zip(&self.items)
            .map(|(got, (a, _, _))| {
                got.claims
                    .iter()
                    .map(|(slot, p)| {
                        let p = a.unblind(&psi::point_from_hex(p).unwrap()).unwrap();
                        (slot.clone(), tags.contains(psi::tag(&p).as_str()))
                    })
                    .collect()
            })
            .collect();
        (status, Some(matched), text)
    }
}

fn crafted(items: Vec<Wanted<'_>>) -> Crafted {
    Crafted {
        items: items
            .into_iter()
            .map(|(s, claims)| {
                (
                    Crafted::secret(),
                    s.to_owned(),
                    claims
                        .into_iter()
                        .map(|(slot, f, v)| (slot.to_owned(), f.to_owned(), v.to_owned()))
                        .collect(),
                )
            })
            .collect(),
    }
}

#[tokio::test]
async fn private_set_intersection_charges_every_point_and_answers_one_field_per_slot() {
    let (_db, setup) = sqlite_setup(&["psi_points_per_day = 40", "max_items = 20"]).await;
    let service = setup.serve().await;
    let url = service.url.clone();
    // One field per slot: the birth date hidden in the `name` slot (next to a real birth
    // claim, so birth tags are in the answer) never matches; in its own slot it does.
    let hidden = crafted(vec![
        (SUBJECT, vec![("name", "birth", "1949-12-31")]),
        ("440524188001010014", vec![("birth", "birth", "1880-01-01")]),
    ]);
    let (status, matched, text) = hidden.send(&setup, &url, "R-SHOWN").await;
    assert_eq!(status, 200, "{text}");
    let matched = matched.unwrap();
    assert!(
        !matched[0]["name"],
        "a birth guess in the name slot matched"
    );
    assert!(matched[1]["birth"]);
    // Birth dates of one subject, each item under a secret of its own: 365 in one request are
    // more than max_items (20); 20 are 40 points, more than the 36 left of the day's 40.
    let start = chrono::NaiveDate::from_ymd_opt(1949, 1, 1).unwrap();
    let dates: Vec<String> = (0..365)
        .map(|d| (start + chrono::Days::new(d)).to_string())
        .collect();
    let guesses = |n: usize| -> Vec<Wanted<'_>> {
        dates[..n]
            .iter()
            .map(|d| (SUBJECT, vec![("birth", "birth", d.as_str())]))
            .collect()
    };
    let (status, _, text) = crafted(guesses(365)).send(&setup, &url, "R-SHOWN").await;
    assert_eq!(status, 400, "{text}");
    let (status, _, text) = crafted(guesses(20)).send(&setup, &url, "R-SHOWN").await;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("points"), "{text}");
    // What fits the budget (18 items, 36 points) is answered; the true date (last) is not
    // among them; then nothing more today.
    let some = guesses(18);
    let (status, matched, text) = crafted(some).send(&setup, &url, "R-SHOWN").await;
    assert_eq!(status, 200, "{text}");
    assert!(matched.unwrap().iter().all(|m| !m["birth"]));
    let last = crafted(vec![(SUBJECT, vec![("birth", "birth", "1949-12-31")])]);
    let (status, _, text) = last.send(&setup, &url, "R-SHOWN").await;
    assert_eq!(status, 429, "{text}");
    service.stop().await;
    // Every PSI record says what it was charged; the refused ones nothing.
    let charged: Vec<u64> = setup
        .audit()
        .iter()
        .filter(|e| e["action"] == "verify.psi")
        .map(|e| e["detail"]["charged"]["points"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(charged, vec![4, 0, 0, 36, 0]);
}

#[tokio::test]
async fn private_set_intersection_refuses_repeats_variants_enumerable_fields_and_large_scans() {
    let (_db, setup) = sqlite_setup(&["psi_max_tags = 5"]).await;
    let service = setup.serve().await;
    let url = service.url.clone();
    let send = |c: Crafted| {
        let url = url.clone();
        let setup = &setup;
        async move { c.send(setup, &url, "R-SHOWN").await }
    };
    // The same point twice: the same secret and subject in two items.
    let bytes = Crafted::bytes();
    let twice = Crafted {
        items: vec![
            (
                Secret::from_random_bytes(&bytes),
                SUBJECT.into(),
                vec![("name".into(), "name".into(), "张三".into())],
            ),
            (
                Secret::from_random_bytes(&bytes),
                SUBJECT.into(),
                vec![("birth".into(), "birth".into(), "1949-12-30".into())],
            ),
        ],
    };
    let (status, _, text) = send(twice).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("same subject"), "{text}");
    // Name variants: 64 spellings of `name` would scan every row 64 times.
    let variants: Vec<String> = (0..64u32)
        .map(|i| {
            "name"
                .chars()
                .enumerate()
                .map(|(j, c)| {
                    if i >> j & 1 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect::<String>()
        })
        .take(16)
        .collect();
    let many: Vec<Wanted<'_>> = vec![(
        SUBJECT,
        variants
            .iter()
            .map(|n| (n.as_str(), n.as_str(), "张三"))
            .collect(),
    )];
    let (status, _, text) = send(crafted(many)).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("named both"), "{text}");
    // An enumerable field: not by private set intersection without psi_enumerable.
    let (status, _, text) = send(crafted(vec![(SUBJECT, vec![("sex", "sex", "男")])])).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("psi_enumerable"), "{text}");
    // Three rows and one claimed field are six tags, psi_max_tags = 5: refused, not answered.
    let (status, _, text) = send(crafted(vec![(SUBJECT, vec![("name", "name", "张三")])])).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("psi_max_tags"), "{text}");
    service.stop().await;
}

#[tokio::test]
async fn private_set_intersection_compares_numbers_and_mobiles_as_the_clear_endpoint_does() {
    let (_db, setup) = sqlite_setup(&[]).await;
    let service = setup.serve().await;
    let claims = |salary: &str, mobile: &str| {
        request(
            "R-SHOWN",
            vec![item(
                SUBJECT,
                &[("salary", v(salary)), ("mobile", v(mobile))],
            )],
        )
    };
    for (salary, mobile) in [
        ("+12345.60", "+86 139 5738 1111"),
        ("12345.6", "0086-139-5738-1111"),
        ("1.23456e4", "8613957381111"),
    ] {
        let r = claims(salary, mobile);
        let clear = ask(&service.verifier, &r).await;
        let psi = service.verifier.verify_psi(&r).await.unwrap();
        let expect = results(&[
            ("mobile", FieldResult::Match),
            ("salary", FieldResult::Match),
        ]);
        assert_eq!(
            clear,
            Seen::Answered(vec![expect.clone()]),
            "{salary} {mobile}"
        );
        assert_eq!(psi.items[0].fields, expect, "{salary} {mobile}");
    }
    service.stop().await;
}

/// Requests drawn at random: 1–3 items about subjects from a small pool (a known subject in
/// two spellings, another known one, an unknown one), 1–3 claims each from a pool of names
/// (with case variants) and true or wrong values.
fn random_request(rng: &mut impl rand::Rng) -> VerifyRequest {
    let subjects = [
        SUBJECT,
        "11010519491231002x",
        "440524188001010014",
        "150102880730303",
    ];
    let claims = [
        ("name", "张三"),
        ("Name", "李四"),
        ("birth", "1949-12-31"),
        ("birth", "1880-01-01"),
        ("sex", "男"),
        ("SEX", "女"),
        ("mobile", "13957381111"),
        ("mobile", "13800000001"),
    ];
    let items = (0..rng.random_range(1..=3))
        .map(|_| {
            let chosen: Vec<(&str, Claim)> = (0..rng.random_range(1..=3))
                .map(|_| {
                    let (f, value) = claims[rng.random_range(0..claims.len())];
                    (f, v(value))
                })
                .collect();
            item(subjects[rng.random_range(0..subjects.len())], &chosen)
        })
        .collect();
    request("R-HIDDEN", items)
}

#[tokio::test]
async fn whatever_random_requests_arrive_answers_other_than_match_stay_within_the_budget() {
    use rand::SeedableRng;
    let seed: u64 = std::env::var("EXCHANGE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (_db, setup) = sqlite_setup(&["mismatch_lockout = 3"]).await;
    let service = setup.serve().await;
    let (mut missed, mut statuses): (HashMap<(String, String), usize>, BTreeMap<u16, usize>) =
        Default::default();
    for _ in 0..300 {
        let r = random_request(&mut rng);
        match ask(&service.verifier, &r).await {
            Seen::Answered(items) => {
                *statuses.entry(200).or_default() += 1;
                for (asked, got) in r.items.iter().zip(items) {
                    let subject = asked.subject.to_uppercase();
                    let subject = if subject.len() == 15 {
                        "U".into()
                    } else {
                        subject
                    };
                    for (field, result) in got {
                        if result != FieldResult::Match {
                            *missed
                                .entry((subject.clone(), field.to_lowercase()))
                                .or_default() += 1;
                        }
                    }
                }
            }
            Seen::Refused(status, message) => {
                assert!([400, 429].contains(&status), "{status}: {message}");
                *statuses.entry(status).or_default() += 1;
            }
        }
    }
    for ((subject, field), n) in &missed {
        let budget = if ["sex", "mobile"].contains(&field.as_str()) {
            1
        } else {
            3
        };
        assert!(
            *n <= budget,
            "seed {seed}: {n} answers other than match about `{field}` of {subject}, budget {budget}"
        );
    }
    // The run tried every kind of request.
    assert!(statuses.len() == 3, "seed {seed}: {statuses:?}");
    service.stop().await;
}

#[tokio::test]
async fn a_scan_goes_on_past_a_page_that_ends_in_an_unreadable_key() {
    let (db, setup) = sqlite_setup(&[]).await;
    // 5,001 codes; the 5,000th in key order (a full page's last) is not valid UTF-8.
    let c = rusqlite::Connection::open(db.path().join("people.db")).unwrap();
    c.execute_batch(
        "CREATE TABLE codes (code TEXT PRIMARY KEY, label TEXT);
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 4998)
           INSERT INTO codes SELECT printf('A%04d', i), 'x' FROM n;
         INSERT INTO codes VALUES (CAST(x'4134393939ff' AS TEXT), 'x'), ('A5000', 'last');",
    )
    .unwrap();
    drop(c);
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.push_str(&format!(
        "\n[[resources]]\ncode = \"R-CODES\"\nname = \"codes\"\nshare = \"conditional\"\nsource = \"src\"\ntable = \"codes\"\nkey = \"code\"\nmode = \"snapshot\"\nreveal_not_found = true\ngrants = [{{ requester = \"{HUB}\", fields = [\"label\"], psi = true }}]\n[resources.fields]\ncode = {{ rule = \"pseudonym\", identifier = \"other\" }}\nlabel = \"mask:keep(1,0)\"\n"
    ));
    std::fs::write(&setup.config, text).unwrap();
    let service = setup.serve().await;
    let r = request(
        "R-CODES",
        vec![
            item("A5000", &[("label", v("last"))]),
            item("A0001", &[("label", v("x"))]),
        ],
    );
    let answer = service.verifier.verify_psi(&r).await.unwrap();
    for (i, item) in answer.items.iter().enumerate() {
        assert_eq!(
            item.subject,
            Some(exchange_protocol::verify::SubjectResult::Found),
            "item {i}"
        );
        assert_eq!(item.fields["label"], FieldResult::Match, "item {i}");
    }
    service.stop().await;
}
