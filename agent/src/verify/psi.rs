//! The private-set-intersection batch mode of verification (`POST /v1/verify/psi`,
//! docs/PROTOCOL.md §11.6; the group arithmetic and wire types are
//! `exchange_protocol::psi`). The agent never sees a subject or a claim: it multiplies the
//! requester's blinded points by a secret of this request, and returns the tags of every key
//! of the resource and of every stored value of the claimed fields, blinded by the same
//! secret. The requester finds its own.
//!
//! Checks as for `POST /v1/verify` (identity, body, shape, resource, fields, grants, quotas),
//! plus: the resource must reveal membership (`reveal_not_found = true`), since a PSI answer
//! tells the requester which of its subjects are known. Audited without subjects (the agent
//! does not know them): item count and rows scanned.

use std::sync::Arc;
use std::time::Instant;

use axum::Extension;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use exchange_connectors::{Bound, PageRequest, Selection, Value};
use exchange_protocol::psi::{self, PsiAnswer, PsiItem, PsiRequest, Secret};
use exchange_protocol::server::Peer;
use exchange_protocol::verify::{Claim, Item, VerifyRequest};

use super::compare::{canonical, stored_psi_form};
use super::quota::SubjectDigest;
use super::{Record, Refused, Service, Settings, read_body, requester_of, respond};
use crate::config::Resource;

/// An item's blinded subject and its blinded claims by field.
type Blinded = ([u8; 32], Vec<(String, [u8; 32])>);

/// Rows read per page while the resource is scanned.
const PAGE_ROWS: usize = 5000;

pub(super) async fn handle(
    State(service): State<Arc<Service>>,
    Extension(peer): Extension<Peer>,
    request: Request,
) -> Response {
    let settings = service.current();
    let started = Instant::now();
    let requester = requester_of(&peer, settings.verify.requester_identity);
    let mut record = Record::default();
    let result = answer(
        &service,
        &settings,
        requester.as_deref(),
        request,
        &mut record,
    )
    .await;
    respond(
        &service,
        &peer,
        requester,
        record,
        started,
        "verify.psi",
        result,
    )
    .await
}

fn denied(message: impl Into<String>) -> Refused {
    Refused {
        status: StatusCode::FORBIDDEN,
        message: message.into(),
        retry_after: None,
        outcome: "denied",
    }
}

fn bad(message: impl Into<String>) -> Refused {
    Refused::new(StatusCode::BAD_REQUEST, message)
}

async fn answer(
    service: &Service,
    settings: &Settings,
    requester: Option<&str>,
    request: Request,
    record: &mut Record,
) -> Result<PsiAnswer, Refused> {
    let Some(requester) = requester else {
        return Err(denied(
            "the client certificate does not carry the requester identity this node reads, so the requester is unknown",
        ));
    };
    let body = read_body(request.into_body(), service.max_body()).await?;
    let parsed: PsiRequest = serde_json::from_slice(&body).map_err(|e| {
        bad(format!(
            "the JSON does not have the PSI request's shape at line {} column {}: expected {{\"request_id\", \"purpose\", \"case_ref\", \"resource\", \"items\": [{{\"subject\": \"<64 hex>\", \"claims\": {{field: \"<64 hex>\"}}}}]}}",
            e.line(),
            e.column()
        ))
    })?;
    drop(body);
    // The bounds of a clear request, on the same members.
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
    .check(settings.verify.max_items)
    .map_err(|e| bad(e.0))?;
    record.request = Some((
        parsed.request_id.clone(),
        parsed.purpose.clone(),
        parsed.case_ref.clone(),
    ));
    record.items = parsed.items.len();
    let Some(resource) = settings.config.resource(&parsed.resource) else {
        return Err(Refused::new(
            StatusCode::NOT_FOUND,
            format!("no resource `{}` on this node", parsed.resource),
        ));
    };
    record.resource = resource.code.clone();
    // Requested field names → configured names.
    let mut fields: Vec<(String, String)> = Vec::new();
    for item in &parsed.items {
        for name in item.claims.keys() {
            if fields.iter().any(|(n, _)| n == name) {
                continue;
            }
            match resource
                .fields
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                Some((_, crate::policy::Rule::Drop)) | None => {
                    return Err(bad(format!(
                        "resource `{}` has no field `{name}` that can be verified",
                        resource.code
                    )));
                }
                Some((configured, _)) => fields.push((name.clone(), configured.clone())),
            }
        }
    }
    let names: Vec<&str> = fields.iter().map(|(_, c)| c.as_str()).collect();
    super::grant::authorize(
        resource,
        requester,
        &parsed.purpose,
        &names,
        chrono::Utc::now(),
    )
    .map_err(|e| denied(e.to_string()))?;
    if !resource.verification.reveal_not_found {
        return Err(denied(format!(
            "resource `{}` does not reveal whether a subject is known (reveal_not_found = false), and a private set intersection answer would; use POST /v1/verify",
            resource.code
        )));
    }
    // Points decode before anything costly.
    let mut points: Vec<Blinded> = Vec::new();
    for (i, item) in parsed.items.iter().enumerate() {
        let subject = psi::point_from_hex(&item.subject)
            .ok_or_else(|| bad(format!("items[{i}].subject is not 64 hex digits")))?;
        let mut claims = Vec::new();
        for (f, c) in &item.claims {
            let p = psi::point_from_hex(c)
                .ok_or_else(|| bad(format!("items[{i}].claims.{f} is not 64 hex digits")))?;
            claims.push((f.clone(), p));
        }
        points.push((subject, claims));
    }
    let digests: Vec<SubjectDigest> = points
        .iter()
        .map(|(s, _)| crate::queue::sm3_bytes(s))
        .collect();
    super::admit(service, settings, requester, &resource.code, &digests)?;
    let mut random = [0u8; 64];
    random[..32].copy_from_slice(&rand::random::<[u8; 32]>());
    random[32..].copy_from_slice(&rand::random::<[u8; 32]>());
    let secret = Arc::new(Secret::from_random_bytes(&random));
    let mut items = Vec::with_capacity(points.len());
    for (i, (subject, claims)) in points.iter().enumerate() {
        let undecodable = || bad(format!("items[{i}] holds a point that does not decode"));
        let subject = secret.reblind(subject).ok_or_else(undecodable)?;
        let mut out = std::collections::BTreeMap::new();
        for (f, p) in claims {
            out.insert(
                f.clone(),
                hex::encode(secret.reblind(p).ok_or_else(undecodable)?),
            );
        }
        items.push(PsiItem {
            subject: hex::encode(subject),
            claims: out,
        });
    }
    let (subjects, claims, rows) = scan(settings, resource, &fields, secret).await?;
    record.counts.insert("rows_scanned", rows);
    Ok(PsiAnswer {
        request_id: parsed.request_id,
        items,
        subjects,
        claims,
    })
}

/// Reads every row of the resource (key and claimed fields, by pages in key order) and
/// returns the sorted subject and claim tags under `secret`, and the number of rows.
async fn scan(
    settings: &Settings,
    resource: &Resource,
    fields: &[(String, String)],
    secret: Arc<Secret>,
) -> Result<(Vec<String>, Vec<String>, u64), Refused> {
    let connector = settings
        .lookups
        .get(&resource.source)
        .cloned()
        .ok_or_else(|| {
            Refused::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "resource `{}` has no source open for verification",
                    resource.code
                ),
            )
        })?;
    let key = resource
        .fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(&resource.key))
        .map(|(n, _)| n.clone())
        .unwrap_or_else(|| resource.key.clone());
    let mut columns = vec![key.clone()];
    for (_, configured) in fields {
        if !columns.iter().any(|c| c.eq_ignore_ascii_case(configured)) {
            columns.push(configured.clone());
        }
    }
    // Requested name and column index of each claimed field.
    let at: Vec<(String, usize)> = fields
        .iter()
        .map(|(name, configured)| {
            let i = columns
                .iter()
                .position(|c| c.eq_ignore_ascii_case(configured))
                .expect("selected");
            (name.clone(), i)
        })
        .collect();
    let selection = Selection {
        relation: resource.relation.clone(),
        columns,
        cursor: vec![key],
    };
    let mut subjects = Vec::new();
    let mut claims = Vec::new();
    let mut rows = 0u64;
    let mut after: Option<Vec<Value>> = None;
    loop {
        let read = tokio::time::timeout(
            settings.verify.query_timeout,
            connector.read_page(&PageRequest {
                selection: &selection,
                after: after.as_deref(),
                limit: PAGE_ROWS,
                bound: Bound::None,
            }),
        )
        .await;
        let page = match read {
            Ok(Ok(page)) => page,
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(resource = %resource.code, "PSI scan of the source failed or timed out.");
                return Err(Refused::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "the source of resource `{}` cannot be read now; retry later",
                        resource.code
                    ),
                ));
            }
        };
        let full = page.rows.len() == PAGE_ROWS;
        rows += page.rows.len() as u64;
        if let Some(last) = page.rows.last() {
            after = last.values[0].as_ref().ok().map(|v| vec![v.clone()]);
        }
        let at = at.clone();
        let secret = secret.clone();
        // The group arithmetic off the async threads.
        let (s, c) = tokio::task::spawn_blocking(move || {
            let mut s = Vec::with_capacity(page.rows.len());
            let mut c = Vec::new();
            for row in &page.rows {
                let Some(k) = row.values[0].as_ref().ok().and_then(Value::to_text) else {
                    continue;
                };
                let k = canonical(&k);
                s.push(psi::tag(&secret.blind(&psi::hash_subject(&k))));
                for (name, i) in &at {
                    if let Some(form) = row.values[*i].as_ref().ok().and_then(stored_psi_form) {
                        c.push(psi::tag(&secret.blind(&psi::hash_claim(name, &k, &form))));
                    }
                }
            }
            (s, c)
        })
        .await
        .map_err(|_| Refused::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))?;
        subjects.extend(s);
        claims.extend(c);
        if !full || after.is_none() {
            break;
        }
    }
    subjects.sort_unstable();
    subjects.dedup();
    claims.sort_unstable();
    claims.dedup();
    Ok((subjects, claims, rows))
}
