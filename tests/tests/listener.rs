//! The verification listener under attack, on the real service over real TLS: a stranger's
//! flood of refused handshakes costs the audit log a few entries while the metrics count every
//! one (alone in this test binary: the metrics are the process's). Silent peers:
//! `listener_silent.rs`; the accept loop's own bounds: `protocol/src/server.rs`.

use std::time::{Duration, Instant};

use exchange_protocol::verify::FieldResult;
use exchange_tests::verification::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_handshakes_costs_a_few_audit_entries_and_is_counted_exactly() {
    let (_db, setup) = sqlite_setup(&[]).await;
    let service = setup.serve().await;
    let addr = service.url.trim_start_matches("https://").to_owned();
    let before = exchange_agent::metrics::global().handshake_failures("verify", "io");
    // 2,000 connections that close without a word, in parallel, from one address.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move {
                for _ in 0..250 {
                    drop(tokio::net::TcpStream::connect(&addr).await.unwrap());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // Every one counted (the metric is exact).
    let deadline = Instant::now() + Duration::from_secs(30);
    while exchange_agent::metrics::global().handshake_failures("verify", "io") < before + 2000 {
        assert!(Instant::now() < deadline, "not every refusal was counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The service goes on answering.
    let r = request(
        "R-SHOWN",
        vec![item("11010519491231002X", &[("name", v("张三"))])],
    );
    let (answer, _) = service.verifier.verify(&r).await.unwrap();
    assert_eq!(answer.items[0].fields["name"], FieldResult::Match);
    service.stop().await;
    let audit = setup.audit();
    let rejected: Vec<&serde_json::Value> = audit
        .iter()
        .filter(|e| e["action"] == "connection.rejected")
        .collect();
    assert!(
        (1..=4).contains(&rejected.len()),
        "{} entries: {rejected:#?}",
        rejected.len()
    );
    let counted: u64 = rejected
        .iter()
        .map(|e| e["detail"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 2000, "{rejected:#?}");
    assert!(rejected.iter().all(|e| e["detail"]["peer"] == "127.0.0.1"));
}
