//! Catalogue entries (docs/PROTOCOL.md §10) and record flags (§4.4): stored as received,
//! the first node owns the resource, malformed entries are refused.

mod common;

use common::{Hub, Pki, Push, ack, client, new_stream, refusal, upsert};
use exchange_protocol::batch::header;

const NODE: &str = "rsj-node-01";

async fn put(client: &reqwest::Client, hub: &Hub, node: &str, body: &str) -> reqwest::Response {
    client
        .put(hub.url(exchange_protocol::catalogue::CATALOGUE_PATH))
        .header(header::PROTOCOL, "1")
        .header(header::NODE, node)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

const ENTRY: &str = r#"{"resource":"330100-RSJ-0002","name":"社保缴费单位","share":"none","fields":[{"name":"uscc","type":"varchar"}]}"#;

#[tokio::test]
async fn a_catalogue_entry_is_stored_and_owned_by_its_node() {
    let pki = Pki::new();
    let hub = Hub::start(&pki, pki.sqlite()).await;
    let a = client(&pki.client(NODE));
    let r = put(&a, &hub, NODE, ENTRY).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Again: replaced, not duplicated.
    assert_eq!(put(&a, &hub, NODE, ENTRY).await.status(), 200);
    let entries = hub.store().await.catalogue().await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].node, NODE);
    let entry: serde_json::Value = serde_json::from_str(&entries[0].entry).unwrap();
    assert_eq!(entry["fields"][0]["type"], "varchar");

    let b = client(&pki.client("scj-node-02"));
    let error = refusal(put(&b, &hub, "scj-node-02", ENTRY).await, 403).await;
    assert!(error.contains("provided by node `rsj-node-01`"), "{error}");
    let error = refusal(put(&b, &hub, NODE, ENTRY).await, 403).await;
    assert!(error.contains("certificate identifies node"), "{error}");
    let bad = ENTRY.replace("\"none\"", "\"public\"");
    let error = refusal(put(&a, &hub, NODE, &bad).await, 400).await;
    assert!(error.contains("share"), "{error}");
    let with_values = ENTRY.replace("\"fields\"", "\"values\":[1],\"fields\"");
    refusal(put(&a, &hub, NODE, &with_values).await, 400).await;
    hub.stop().await.unwrap();
}

/// Flags are kept whichever way a record is stored: new keys (PostgreSQL: binary COPY) and
/// existing keys (PostgreSQL: `INSERT … SELECT FROM unnest … ON CONFLICT`), set and cleared.
async fn a_flagged_record_keeps_its_flags(pki: &Pki, store: exchange_hub::config::StoreConfig) {
    let hub = Hub::start(pki, store).await;
    let a = client(&pki.client(NODE));
    let flagged = |key: &str| {
        let mut r = upsert(key, r#"{"n":1}"#);
        r.flags = vec![exchange_protocol::batch::FLAG_INVALID_KEY.to_owned()];
        r
    };
    let stream = new_stream();
    let push = Push::new(
        NODE,
        "R",
        &stream,
        1,
        vec![flagged("k1"), upsert("k2", "{}")],
    );
    ack(push.send(&a, &hub).await).await;
    let export = exchange_hub::export::export(&hub.store().await, "R")
        .await
        .unwrap();
    assert_eq!(export[0]["flags"], serde_json::json!(["invalid_key"]));
    assert!(export[1].get("flags").is_none(), "{}", export[1]);
    // The same keys again: the flag moves from k1 to k2.
    let push = Push::new(
        NODE,
        "R",
        &stream,
        2,
        vec![upsert("k1", "{}"), flagged("k2")],
    );
    ack(push.send(&a, &hub).await).await;
    let export = exchange_hub::export::export(&hub.store().await, "R")
        .await
        .unwrap();
    assert!(export[0].get("flags").is_none(), "{}", export[0]);
    assert_eq!(export[1]["flags"], serde_json::json!(["invalid_key"]));
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_flagged_record_keeps_its_flags_at_a_sqlite_hub() {
    let pki = Pki::new();
    a_flagged_record_keeps_its_flags(&pki, pki.sqlite()).await;
}

#[tokio::test]
async fn a_flagged_record_keeps_its_flags_at_a_postgres_hub() {
    let db = common::PgDb::create().await;
    a_flagged_record_keeps_its_flags(&Pki::new(), db.store_config()).await;
}

/// Defence in depth: a resource its providing node catalogued as `none` is never stored, even
/// if a batch of it arrives; once its entry says it is shared, its batches are applied.
async fn batches_of_a_resource_catalogued_none_are_refused(
    pki: &Pki,
    store: exchange_hub::config::StoreConfig,
) {
    let hub = Hub::start(pki, store).await;
    let a = client(&pki.client(NODE));
    assert_eq!(put(&a, &hub, NODE, ENTRY).await.status(), 200);
    let push = Push::new(
        NODE,
        "330100-RSJ-0002",
        &new_stream(),
        1,
        vec![upsert("91350100M000100Y43", r#"{"n":1}"#)],
    );
    let error = refusal(push.send(&a, &hub).await, 403).await;
    assert!(
        error.contains("catalogued as share = \"none\"") && error.contains("330100-RSJ-0002"),
        "{error}"
    );
    let store = hub.store().await;
    assert!(
        exchange_hub::export::export(&store, "330100-RSJ-0002")
            .await
            .unwrap()
            .is_empty()
    );
    let shared = ENTRY.replace("\"none\"", "\"unconditional\"");
    assert_eq!(put(&a, &hub, NODE, &shared).await.status(), 200);
    ack(push.send(&a, &hub).await).await;
    hub.stop().await.unwrap();
}

#[tokio::test]
async fn a_sqlite_hub_refuses_batches_of_a_resource_catalogued_none() {
    let pki = Pki::new();
    batches_of_a_resource_catalogued_none_are_refused(&pki, pki.sqlite()).await;
}

#[tokio::test]
async fn a_postgres_hub_refuses_batches_of_a_resource_catalogued_none() {
    let db = common::PgDb::create().await;
    batches_of_a_resource_catalogued_none_are_refused(&Pki::new(), db.store_config()).await;
}
