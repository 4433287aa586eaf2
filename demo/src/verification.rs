//! The demo's verification step (数据不落地核验): the agent's verification service asked as the
//! hub would ask it, over mutual TLS with the requester's certificate.

use std::path::Path;

use exchange_hub::verify::{Verifier, VerifyCallError};
use exchange_protocol::verify::{Claim, Item, VerifyAnswer, VerifyRequest};

use crate::{PURPOSE, RESOURCE};

/// The hub asking about one resident: its verifier, the subject, and the requests so far.
struct Asker {
    hub: Verifier,
    /// The resident's 公民身份号码.
    subject: String,
    /// Requests sent, for their ids and case references.
    sent: u32,
}

impl Asker {
    /// The next request of the demo with `items`.
    fn request(&mut self, items: Vec<Item>) -> VerifyRequest {
        self.sent += 1;
        let n = self.sent;
        VerifyRequest {
            request_id: format!("demo-{n}"),
            purpose: PURPOSE.into(),
            case_ref: format!("DEMO-2026-{n:04}"),
            resource: RESOURCE.into(),
            items,
        }
    }

    /// The resident with the claimed `(field, value)`s.
    fn item(&self, claims: &[(&str, &str)]) -> Item {
        Item {
            subject: self.subject.clone(),
            claims: claims
                .iter()
                .map(|(f, v)| (f.to_string(), Claim::Value(v.to_string())))
                .collect(),
        }
    }

    /// Asks one request about the resident's claims.
    async fn ask(&mut self, claims: &[(&str, &str)]) -> anyhow::Result<VerifyAnswer> {
        let request = self.request(vec![self.item(claims)]);
        Ok(self.hub.verify(&request).await?.0)
    }
}

/// Asks the agent's verification service as the hub would (数据不落地核验), over mutual TLS
/// with the requester's certificate: a claim that matches, one that does not, and a brute
/// force that the budget stops; prints the answers.
pub(crate) async fn ask_as_the_hub(dir: &Path, url: &str) -> anyhow::Result<()> {
    let conn = rusqlite::Connection::open(dir.join("business.db"))?;
    let (id_card, name, mobile, since): (String, String, String, String) = conn.query_row(
        "SELECT id_card, name, mobile, insured_since FROM insured_person ORDER BY id LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let tls = exchange_protocol::tls::MutualTls {
        ca: dir.join("tls/ca.pem"),
        cert: dir.join("tls/requester.pem"),
        key: dir.join("tls/requester.key"),
        min_version: exchange_protocol::tls::MinTlsVersion::Tls13,
        crls: Vec::new(),
    };
    let mut asker = Asker {
        hub: Verifier::new(&tls, url)?,
        subject: id_card,
        sent: 0,
    };
    println!(
        "   The hub asks about the first resident (公民身份号码 {}…, purpose {PURPOSE}); only the answers come back:",
        &asker.subject[..6]
    );
    let answer = asker
        .ask(&[("name", &name), ("insured_since", &since)])
        .await?;
    println!(
        "   a. the true name and insured_since        → {}",
        show(&answer)
    );
    let answer = asker.ask(&[("name", "王小二")]).await?;
    println!(
        "   b. a wrong name                           → {}",
        show(&answer)
    );
    brute_force(&mut asker, &mobile).await;
    println!(
        "   Every question is in agent-data/audit.jsonl, subjects as pseudonyms; no claimed or stored value is."
    );
    Ok(())
}

/// Guesses the hidden middle of `mobile`, which the hub holds masked (138****5678) from the
/// delivered data: 10,000 candidates left. Twelve in one request, then one a request until
/// the budget refuses.
async fn brute_force(asker: &mut Asker, mobile: &str) {
    let (head, tail) = (&mobile[..3], &mobile[7..]);
    let guesses: Vec<String> = (0..10_000)
        .map(|i| format!("{head}{i:04}{tail}"))
        .filter(|g| *g != mobile)
        .collect();
    let in_one: Vec<Item> = guesses[..12]
        .iter()
        .map(|g| asker.item(&[("mobile", g)]))
        .collect();
    let request = asker.request(in_one);
    let outcome = match asker.hub.verify(&request).await {
        Ok(_) => "ANSWERED (this is a bug)".to_owned(),
        Err(e) => refused(e.into()),
    };
    println!(
        "   c. a brute force of the hidden middle of mobile {head}****{tail}, which the hub received masked:"
    );
    println!(
        "      12 guesses in one request               → {outcome} (one question per subject and field per request)"
    );
    let mut answered = 0;
    for (i, guess) in guesses.iter().enumerate() {
        match asker.ask(&[("mobile", guess)]).await {
            Ok(answer) => {
                answered += 1;
                println!(
                    "      guess {:<4} {guess}                  → {}",
                    i + 1,
                    show(&answer)
                );
            }
            Err(e) => {
                println!(
                    "      guess {:<4} {guess}                  → {} (mobile is enumerable: one wrong answer per subject a day)",
                    i + 1,
                    refused(e)
                );
                break;
            }
        }
    }
    println!(
        "      {answered} guess answered of 10,000 candidates: at this rate the search takes years (docs/PROTOCOL.md §11.7)."
    );
}

/// The answer about each claimed field of the first item.
fn show(answer: &VerifyAnswer) -> String {
    answer.items[0]
        .fields
        .iter()
        .map(|(f, r)| {
            format!(
                "{f}: {}",
                match r.as_str() {
                    "match" => "match (一致)",
                    "mismatch" => "mismatch (不一致)",
                    other => other,
                }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A refusal with its status and when to retry, or the failure.
fn refused(e: anyhow::Error) -> String {
    match e.downcast_ref::<VerifyCallError>() {
        Some(VerifyCallError::Refused {
            status,
            retry_after,
            ..
        }) => format!(
            "refused {status}{}",
            retry_after
                .as_deref()
                .map(|s| format!(", retry after {s} s"))
                .unwrap_or_default()
        ),
        _ => format!("failed: {e:#}"),
    }
}
