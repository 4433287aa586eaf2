//! Silent peers do not keep a requester out of the real verification service (the accept
//! loop's own bounds are tested in `protocol/src/server.rs`).

use std::time::{Duration, Instant};

use exchange_protocol::verify::FieldResult;
use exchange_tests::verification::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peers_do_not_keep_a_requester_out() {
    let (_db, setup) = sqlite_setup(&[]).await;
    let service = setup.serve().await;
    let addr = service.url.trim_start_matches("https://").to_owned();
    // More silent peers than every connection slot (512) and handshake slot (64).
    let mut silent = Vec::new();
    for _ in 0..600 {
        silent.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let r = request(
        "R-SHOWN",
        vec![item("11010519491231002X", &[("name", v("张三"))])],
    );
    let started = Instant::now();
    let (answer, _) = tokio::time::timeout(Duration::from_secs(2), service.verifier.verify(&r))
        .await
        .expect("answered within 2 s")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(answer.items[0].fields["name"], FieldResult::Match);
    drop(silent);
    service.stop().await;
}
