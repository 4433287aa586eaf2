//! The audit log survives crashes: the real daemon, killed with SIGKILL 20 times while
//! verification requests write audit records as fast as they come, leaves a chain that
//! `audit verify` finds intact once the service has started again (a line cut short by a kill
//! is cut off and the head repaired, each recorded as `audit.recovered`).

use std::time::Duration;

use exchange_hub::verify::Verifier;
use exchange_tests::verification::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kills_during_heavy_audit_activity_leave_the_chain_intact() {
    // Budgets out of the way: every request is answered and audited.
    let (_db, setup) =
        sqlite_setup(&["mismatch_lockout = 1000000", "enumerable_lockout = 1000000"]).await;
    let seed: u64 = std::env::var("EXCHANGE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let mut daemon = Daemon::start(&setup).await;
    let tls = setup.client_tls(&setup.client.0, &setup.client.1);
    for round in 0..20 {
        // Four requesters at once, until the kill.
        let load: Vec<_> = (0..4)
            .map(|_| {
                let verifier = Verifier::new(&tls, &daemon.url).unwrap();
                tokio::spawn(async move {
                    loop {
                        let r = request(
                            "R-SHOWN",
                            vec![item("440524188001010014", &[("name", v("王"))])],
                        );
                        let _ = verifier.verify(&r).await;
                    }
                })
            })
            .collect();
        let wait = rand::Rng::random_range(&mut rng, 100..600);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let ports = daemon.kill().await;
        for task in load {
            task.abort();
            let _ = task.await;
        }
        daemon = Daemon::restart(&setup, ports, &format!("agent-{round}.log")).await;
    }
    daemon.stop().await;
    let data = setup.dir.path().join("agent-data");
    let entries = exchange_agent::audit::verify(&data)
        .unwrap_or_else(|b| panic!("seed {seed}: the chain breaks: {b}"));
    let audit = setup.audit();
    let verified = audit.iter().filter(|e| e["action"] == "verify").count();
    assert!(
        verified > 20,
        "seed {seed}: only {verified} verification records in {entries} entries"
    );
    let recovered = audit
        .iter()
        .filter(|e| e["action"] == "audit.recovered")
        .count();
    eprintln!("seed {seed}: {entries} entries, {verified} verifications, {recovered} repairs");
    // Kills land while entries are written: some left a torn line or a head behind (about
    // 13 in 20 in one run; none in 20 would be a chance of about 1 in 10^9).
    assert!(recovered >= 1, "seed {seed}: no kill needed a repair");
}
