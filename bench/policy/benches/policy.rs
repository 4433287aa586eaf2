//! `Plan::apply` per record: the full desensitization policy (pseudonymized key, two masks,
//! a generalization, a dropped field) against plain delivery of the same columns, in the same
//! run, each also as `Plan::write_upsert` (the batch line written straight from the row), and
//! one HMAC-SM3 token alone. Throughput is in records per CPU second of the measuring
//! thread ([`ThreadCpuTime`]): records per second on one core, even while the machine is busy.
//!
//! `cargo bench -p exchange-bench-policy`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use exchange_agent::policy::Plan;
use exchange_bench_policy::ThreadCpuTime;
use exchange_bench_policy::{keys, resource, rows};
use std::hint::black_box;

const ROWS: usize = 10_000;

fn policy(c: &mut Criterion<ThreadCpuTime>) {
    let rows = rows(ROWS);
    let keys = keys();
    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(ROWS as u64));
    for (name, desensitized) in [("plain_baseline", false), ("full_policy", true)] {
        let plan = Plan::new(&resource(desensitized), &keys);
        // The benchmark measures what it claims: every row is delivered.
        assert!(rows.iter().all(|r| plan.apply(r).is_ok()));
        group.bench_function(name, |b| {
            b.iter(|| {
                for row in &rows {
                    black_box(plan.apply(black_box(row)).ok());
                }
            })
        });
        // The same decision written straight as batch lines (`Plan::write_upsert`, what an
        // incremental page runs), into one reused buffer.
        let mut line = Vec::new();
        group.bench_function(format!("{name}_line"), |b| {
            b.iter(|| {
                for row in &rows {
                    line.clear();
                    black_box(plan.write_upsert(black_box(row), &mut line).ok());
                }
            })
        });
    }
    // What one HMAC-SM3 token costs on its own (the pseudonym's share of the full policy).
    let key = keys.pseudonym.clone().expect("a pseudonym key");
    let ids: Vec<String> = rows
        .iter()
        .map(|r| match &r.values[0] {
            Ok(exchange_connectors::Value::Text(t)) => t.clone(),
            _ => unreachable!("ids are text"),
        })
        .collect();
    group.bench_function("hmac_sm3_token_only", |b| {
        b.iter(|| {
            for id in &ids {
                black_box(key.token("citizen_id", black_box(id)));
            }
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = policy
}
criterion_main!(benches);
