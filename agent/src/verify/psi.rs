//! The private-set-intersection batch mode of verification (`POST /v1/verify/psi`,
//! docs/PROTOCOL.md §11.6; the group arithmetic and wire types are
//! `exchange_protocol::psi`). The agent never sees a subject or a claim: it multiplies the
//! requester's blinded points by secrets of this request, and returns the tags of every key
//! of the resource and of every stored value of the claimed fields, blinded by the same
//! secrets. The requester finds its own.
//!
//! Checks as for `POST /v1/verify` (identity, body, shape, the resource and grant, names
//! resolved once per field, grants, budgets), plus: the resource must reveal membership
//! (`reveal_not_found = true`), since a PSI answer tells the requester which of its subjects
//! are known; an enumerable field needs a grant with `psi_enumerable`; a point that does not
//! decode, or that appears twice in the request, is `400`.
//!
//! The agent cannot tell which subject a point is about, so its budget is per requester and
//! resource, not per subject (docs/PROTOCOL.md §11.7): every point it multiplies is charged
//! before it is multiplied (`psi_points_per_day`), and so is every scan
//! (`psi_scans_per_day`). Each claimed field has a secret of its own (`b_f`; the subjects
//! `b_s`), so a point sent under field `f` can only ever be compared with tags of `f`: one
//! point is one guess about one field. An answer of more than `psi_max_tags` tags (rows × (1 +
//! claimed fields)) is refused (`413`) rather than computed; one scan runs at a time (a
//! request waiting too long for its turn is refused before it is charged), its group
//! arithmetic and sorting off the async workers. Audited without subjects (the agent does not know them): item count, points and
//! rows scanned.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use exchange_connectors::{Bound, Connector, Page, PageRequest, Row, Selection, Value};
use exchange_protocol::psi::{self, PsiAnswer, PsiItem, PsiRequest, Secret};
use exchange_protocol::verify::{Claim, Item, VerifyRequest};

use super::compare::{canonical, stored_psi_form};
use super::ledger::{Ask, Charge};
use super::question::{self, Columns, Questions};
use super::{
    Record, Refused, Service, Settings, admit, connector_of, identified_body, resolve,
    source_failed, unfit,
};
use crate::config::Resource;

/// Rows read per page while the resource is scanned.
const PAGE_ROWS: usize = 5000;
/// Longest a request waits for the scan before it (one at a time).
const SCAN_WAIT: Duration = Duration::from_secs(30);

fn bad(message: impl Into<String>) -> Refused {
    Refused::new(StatusCode::BAD_REQUEST, message)
}

/// A request's points, decoded: per item the subject and its claims, in the order of the
/// item's claims.
struct Points {
    /// Per item: the blinded subject.
    subjects: Vec<[u8; 32]>,
    /// Per item: the blinded claims.
    claims: Vec<Vec<[u8; 32]>>,
}

impl Points {
    /// Decodes every point (`400` for one that is not 64 hex digits or appears twice).
    fn decode(items: &[PsiItem]) -> Result<Points, Refused> {
        let mut subjects = Vec::with_capacity(items.len());
        let mut claims = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            subjects.push(
                psi::point_from_hex(&item.subject)
                    .ok_or_else(|| bad(format!("items[{i}].subject is not 64 hex digits")))?,
            );
            let mut these = Vec::with_capacity(item.claims.len());
            for (f, c) in &item.claims {
                these.push(
                    psi::point_from_hex(c).ok_or_else(|| {
                        bad(format!("items[{i}].claims.{f} is not 64 hex digits"))
                    })?,
                );
            }
            claims.push(these);
        }
        question::distinct(&subjects).map_err(unfit)?;
        let mut seen = HashSet::new();
        for (i, (item, these)) in items.iter().zip(&claims).enumerate() {
            for (f, p) in item.claims.keys().zip(these) {
                if !seen.insert(*p) {
                    return Err(bad(format!(
                        "items[{i}].claims.{f} repeats a point sent before in this request; each claim is asked once"
                    )));
                }
            }
        }
        Ok(Points { subjects, claims })
    }

    /// How many points there are.
    fn count(&self) -> u64 {
        (self.subjects.len() + self.claims.iter().map(Vec::len).sum::<usize>()) as u64
    }
}

/// The secrets of one request: one for subjects, one per claimed field.
struct Secrets {
    /// `b_s`.
    subject: Secret,
    /// `b_f`, by field index.
    fields: Vec<Secret>,
}

impl Secrets {
    fn draw(fields: usize) -> Secrets {
        let one = || {
            let mut random = [0u8; 64];
            random[..32].copy_from_slice(&rand::random::<[u8; 32]>());
            random[32..].copy_from_slice(&rand::random::<[u8; 32]>());
            Secret::from_random_bytes(&random)
        };
        Secrets {
            subject: one(),
            fields: (0..fields).map(|_| one()).collect(),
        }
    }
}

/// Answers a private set intersection request: the checks of a clear one, then the points
/// decoded, the scan's turn, the charge, and the points and the resource's rows blinded.
pub(super) async fn answer(
    service: &Service,
    settings: &Settings,
    requester: Option<&str>,
    request: Request,
    record: &mut Record,
) -> Result<PsiAnswer, Refused> {
    let (requester, body) = identified_body(service, settings, requester, request).await?;
    let parsed = parse(&body)?;
    drop(body);
    // The bounds of a clear request, on the same members.
    let shape = clear_shape(&parsed);
    shape
        .check(settings.verify.max_items)
        .map_err(|e| bad(e.0))?;
    let (resource, questions) = resolve(settings, requester, record, &shape, true)?;
    let points = Points::decode(&parsed.items)?;
    // One scan at a time; a request that cannot have its turn is refused before it is charged.
    let _scan = scan_turn(service).await?;
    // Every point is charged before one is multiplied, and the scan.
    let items = parsed.items.len() as u64;
    let ask = Ask {
        items,
        anonymous: items,
        points: points.count(),
        scans: 1,
        ..Ask::default()
    };
    let _held = admit(service, settings, requester, &resource.code, &ask)?;
    record.charged = Some(Charge {
        items,
        anonymous: items,
        points: ask.points,
        scans: 1,
        ..Charge::default()
    });
    let secrets = Arc::new(Secrets::draw(questions.fields.len()));
    let reblinded = {
        let secrets = secrets.clone();
        let questions = questions.items.clone();
        off_the_workers(move || reblind(&points, &questions, &secrets)).await??
    };
    let (subjects, claims, rows) = scan(settings, resource, &questions, secrets).await?;
    record.counts.insert("rows_scanned", rows);
    let items = reblinded
        .into_iter()
        .zip(&parsed.items)
        .map(|((subject, claims), item)| PsiItem {
            subject: hex::encode(subject),
            claims: item
                .claims
                .keys()
                .cloned()
                .zip(claims.iter().map(hex::encode))
                .collect(),
        })
        .collect();
    Ok(PsiAnswer {
        request_id: parsed.request_id,
        items,
        subjects,
        claims,
    })
}

/// The body as a PSI request (`400` naming where it is not one).
fn parse(body: &[u8]) -> Result<PsiRequest, Refused> {
    serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "the JSON does not have the PSI request's shape at line {} column {}: expected {{\"request_id\", \"purpose\", \"case_ref\", \"resource\", \"items\": [{{\"subject\": \"<64 hex>\", \"claims\": {{field: \"<64 hex>\"}}}}]}}",
            e.line(),
            e.column()
        ))
    })
}

/// A PSI request in the shape of a clear one, with the same members and claimed names (no
/// subject or value), so that both are bounded, recorded and resolved alike.
fn clear_shape(parsed: &PsiRequest) -> VerifyRequest {
    VerifyRequest {
        request_id: parsed.request_id.clone(),
        purpose: parsed.purpose.clone(),
        case_ref: parsed.case_ref.clone(),
        resource: parsed.resource.clone(),
        items: parsed
            .items
            .iter()
            .map(|i| Item {
                subject: "-".into(),
                claims: i
                    .claims
                    .keys()
                    .map(|k| (k.clone(), Claim::Value(String::new())))
                    .collect(),
            })
            .collect(),
    }
}

/// Waits (at most [`SCAN_WAIT`]) for the turn to scan; `503` with `Retry-After` past it.
async fn scan_turn(service: &Service) -> Result<tokio::sync::SemaphorePermit<'_>, Refused> {
    tokio::time::timeout(SCAN_WAIT, service.psi_scans.acquire())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "other private set intersection requests are being answered; retry in {} s",
                SCAN_WAIT.as_secs()
            ),
            retry_after: Some(SCAN_WAIT.as_secs()),
            outcome: "refused",
        })
}

/// Runs `work` (group arithmetic, sorting) off the async workers; `500` if it panicked.
async fn off_the_workers<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Refused> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| Refused::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))
}

/// Multiplies each subject point by `b_s` and each claim point by its field's `b_f`
/// (`400` for a point that does not decode).
#[allow(clippy::type_complexity)]
fn reblind(
    points: &Points,
    fields: &[Vec<usize>],
    secrets: &Secrets,
) -> Result<Vec<([u8; 32], Vec<[u8; 32]>)>, Refused> {
    let mut out = Vec::with_capacity(points.subjects.len());
    for (i, ((subject, claims), fields)) in points
        .subjects
        .iter()
        .zip(&points.claims)
        .zip(fields)
        .enumerate()
    {
        let undecodable = || bad(format!("items[{i}] holds a point that does not decode"));
        let subject = secrets.subject.reblind(subject).ok_or_else(undecodable)?;
        let claims = claims
            .iter()
            .zip(fields)
            .map(|(p, f)| secrets.fields[*f].reblind(p).ok_or_else(undecodable))
            .collect::<Result<Vec<_>, _>>()?;
        out.push((subject, claims));
    }
    Ok(out)
}

/// The tags of one page's rows: subjects under `b_s`, each stored value of field `f` under
/// `b_f` (with `f` as the request names it, `asked[f]`; its value at [`Columns::position`]).
fn tags(rows: &[Row], asked: &[String], secrets: &Secrets) -> (Vec<String>, Vec<String>) {
    let mut s = Vec::with_capacity(rows.len());
    let mut c = Vec::with_capacity(rows.len() * asked.len());
    for row in rows {
        let Some(k) = row.values[Columns::KEY]
            .as_ref()
            .ok()
            .and_then(Value::to_text)
        else {
            continue;
        };
        let k = canonical(&k);
        s.push(psi::tag(&secrets.subject.blind(&psi::hash_subject(&k))));
        for (f, name) in asked.iter().enumerate() {
            if let Some(form) = row.values[Columns::position(f)]
                .as_ref()
                .ok()
                .and_then(stored_psi_form)
            {
                c.push(psi::tag(
                    &secrets.fields[f].blind(&psi::hash_claim(name, &k, &form)),
                ));
            }
        }
    }
    (s, c)
}

/// Reads every row of the resource once (key and claimed fields, by pages in key order) and
/// returns the sorted subject and claim tags, and the number of rows; `413` as soon as the
/// rows read, times one tag for the key and one per claimed field, pass `psi_max_tags`.
async fn scan(
    settings: &Settings,
    resource: &Resource,
    questions: &Questions,
    secrets: Arc<Secrets>,
) -> Result<(Vec<String>, Vec<String>, u64), Refused> {
    let connector = connector_of(settings, resource)?;
    let selection = Columns::of(resource, questions).selection(resource, true);
    let asked: Arc<Vec<String>> = Arc::new(
        questions
            .fields
            .iter()
            .map(|f| f.asked_as.clone())
            .collect(),
    );
    let bound = TagBound {
        max_tags: settings.verify.psi_max_tags,
        per_row: 1 + questions.fields.len() as u64,
    };
    let mut subjects = Vec::new();
    let mut claims = Vec::new();
    let mut rows = 0u64;
    let mut after: Option<Vec<Value>> = None;
    loop {
        let page = read_page(
            settings,
            resource,
            &*connector,
            &selection,
            after.as_deref(),
        )
        .await?;
        let full = page.rows.len() == PAGE_ROWS;
        rows += page.rows.len() as u64;
        bound.check(resource, rows)?;
        let last = last_key(resource, &page.rows, full)?;
        let (asked, secrets) = (asked.clone(), secrets.clone());
        let (s, c) = off_the_workers(move || tags(&page.rows, &asked, &secrets)).await?;
        subjects.extend(s);
        claims.extend(c);
        if !full {
            break;
        }
        after = last.map(|v| vec![v]);
    }
    let (subjects, claims) = off_the_workers(move || {
        for tags in [&mut subjects, &mut claims] {
            tags.sort_unstable();
            tags.dedup();
        }
        (subjects, claims)
    })
    .await?;
    Ok((subjects, claims, rows))
}

/// Reads the page of the scan after key `after` (from the first row when `None`), within
/// `query_timeout` (`504` past it).
async fn read_page(
    settings: &Settings,
    resource: &Resource,
    connector: &dyn Connector,
    selection: &Selection,
    after: Option<&[Value]>,
) -> Result<Page, Refused> {
    let read = tokio::time::timeout(
        settings.verify.query_timeout,
        connector.read_page(&PageRequest {
            selection,
            after,
            limit: PAGE_ROWS,
            bound: Bound::None,
        }),
    )
    .await;
    match read {
        Ok(Ok(page)) => Ok(page),
        Ok(Err(e)) => Err(source_failed(resource, &e)),
        Err(_) => {
            tracing::warn!(resource = %resource.code, "PSI scan of the source timed out.");
            Err(Refused::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the source of resource `{}` did not answer a page within {} ms; retry later",
                    resource.code,
                    settings.verify.query_timeout.as_millis()
                ),
            ))
        }
    }
}

/// The most tags an answer may hold (`psi_max_tags`), and the tags each row adds.
struct TagBound {
    /// `psi_max_tags`.
    max_tags: u64,
    /// One for the key and one per claimed field.
    per_row: u64,
}

impl TagBound {
    /// `413` once `rows` read would pass the bound.
    fn check(&self, resource: &Resource, rows: u64) -> Result<(), Refused> {
        let (max_tags, per_row) = (self.max_tags, self.per_row);
        if rows * per_row <= max_tags {
            return Ok(());
        }
        Err(Refused::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "resource `{}` holds more than {} rows, and an answer about {} claimed fields would hold more than {max_tags} tags (a key and a stored value per row and field), the most answered here (psi_max_tags); claim fewer fields, or use POST /v1/verify",
                resource.code,
                max_tags / per_row,
                per_row - 1
            ),
        ))
    }
}

/// The last key of a page that can be read, which the next page starts after; a full page
/// without one cannot be continued from, and is an error rather than an early end.
fn last_key(resource: &Resource, rows: &[Row], full: bool) -> Result<Option<Value>, Refused> {
    let last = rows
        .iter()
        .rev()
        .find_map(|r| r.values[Columns::KEY].as_ref().ok().cloned());
    if full && last.is_none() {
        tracing::warn!(resource = %resource.code, "PSI scan: no key of a page can be read.");
        return Err(Refused::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "the keys of resource `{}` cannot be read, so its private set intersection scan cannot go on",
                resource.code
            ),
        ));
    }
    Ok(last)
}
