//! The policy benchmark's fixtures: a resource with the full desensitization policy (five
//! fields: two masks, one pseudonym, one generalization, one drop) and its plain baseline,
//! rows shaped like a 社保 table, and [`ThreadCpuTime`], the measurement that makes the figure
//! "records per second on one core" even on a busy machine (the CPU time of the benchmark
//! thread, not the wall clock, which other processes stretch). The benchmark is
//! `benches/policy.rs`; run it with `cargo bench -p exchange-bench-policy`.

use std::time::Duration;

use exchange_agent::config::{InvalidKey, Mode, Resource, Share};
use exchange_agent::identifier::{IdKind, citizen_id_check};
use exchange_agent::policy::{Keys, PseudonymKey, Rule};
use exchange_agent::schedule::Schedule;
use exchange_connectors::{Relation, Row, Value};
use exchange_testkit::residents;

/// A fixed test key (never a real one).
pub const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// The keys of the benchmark.
pub fn keys() -> Keys {
    Keys {
        pseudonym: Some(PseudonymKey::from_hex(1, KEY_HEX).expect("valid key")),
        ..Keys::default()
    }
}

fn rule(text: &str, kind: IdKind) -> Rule {
    Rule::parse(text, kind, None).expect("a valid rule")
}

/// A resource over `person(id_no, name, mobile, birth, note)`; `desensitized` picks the full
/// policy (pseudonym key, mask:name, mask:mobile, generalize:year, drop) or plain delivery of
/// the same four columns (the baseline; `note` still dropped).
pub fn resource(desensitized: bool) -> Resource {
    let fields = if desensitized {
        vec![
            ("id_no".into(), rule("pseudonym", IdKind::CitizenId)),
            ("name".into(), rule("mask:name", IdKind::Other)),
            ("mobile".into(), rule("mask:mobile", IdKind::Other)),
            ("birth".into(), rule("generalize:year", IdKind::Other)),
            ("note".into(), Rule::Drop),
        ]
    } else {
        vec![
            ("id_no".into(), Rule::Plain),
            ("name".into(), Rule::Plain),
            ("mobile".into(), Rule::Plain),
            ("birth".into(), Rule::Plain),
            ("note".into(), Rule::Drop),
        ]
    };
    Resource {
        code: "330100-RSJ-0001".into(),
        name: "社保参保人员".into(),
        share: if desensitized {
            Share::Conditional { deliver: true }
        } else {
            Share::Unconditional
        },
        source: "hr".into(),
        relation: Relation::Table("person".into()),
        key: "id_no".into(),
        mode: Mode::Snapshot,
        schedule: Schedule::Every(Duration::from_secs(60)),
        max_staleness: exchange_agent::config::Staleness::WorkingDays(2),
        fields,
        key_kind: IdKind::CitizenId,
        invalid_key: InvalidKey::Quarantine,
        plain_allowed: Vec::new(),
        plain_reason: None,
        verification: Default::default(),
        locator: Vec::new(),
        files: None,
    }
}

/// `n` rows in the plan's column order (id_no, name, mobile, birth): valid citizen IDs,
/// two- to four-character names (some with `·`), mobiles, birth dates.
pub fn rows(n: usize) -> Vec<Row> {
    const NAMES: [&str; 4] = ["张三", "欧阳娜娜", "买买提·艾力", "李小明"];
    let base = chrono::NaiveDate::from_ymd_opt(1950, 1, 1).expect("a date");
    (0..n)
        .map(|i| {
            let birth = base + chrono::Duration::days((i * 7 % 20_000) as i64);
            let first17 = format!("330106{}{:03}", birth.format("%Y%m%d"), i % 1000);
            let id = format!(
                "{first17}{}",
                citizen_id_check(&first17).expect("17 digits")
            );
            Row {
                values: vec![
                    Ok(Value::Text(id)),
                    Ok(Value::Text(NAMES[i % NAMES.len()].to_owned())),
                    Ok(Value::Text(format!("138{:08}", i % 100_000_000))),
                    Ok(Value::Date(birth)),
                ],
            }
        })
        .collect()
}

/// The columns of the pipeline benchmark's registry table (`bench/pipeline/src/data.rs`), in
/// the order [`registry_rows`] gives their values.
pub const REGISTRY_COLUMNS: [&str; 10] = [
    "id_card",
    "name",
    "gender",
    "birth",
    "mobile",
    "address",
    "insured_since",
    "salary",
    "status",
    "updated_at",
];

/// The pipeline benchmark's resource over the registry table (`agent-pg-ack`): incremental
/// on `(updated_at, id_card)`, every column `plain`, or with `desensitized` the rules of its
/// `-policy` scenarios (`name` and `address` masked, `mobile` pseudonymized, `birth`
/// generalized to year and month).
pub fn registry_resource(desensitized: bool) -> Resource {
    let rule_of = |column: &str| match (desensitized, column) {
        (true, "name") => rule("mask:name", IdKind::Other),
        (true, "address") => rule("mask:address", IdKind::Other),
        (true, "mobile") => rule("pseudonym", IdKind::Mobile),
        (true, "birth") => rule("generalize:year_month", IdKind::Other),
        _ => Rule::Plain,
    };
    Resource {
        fields: REGISTRY_COLUMNS
            .iter()
            .map(|c| (c.to_string(), rule_of(c)))
            .collect(),
        key: "id_card".into(),
        key_kind: IdKind::Other,
        share: Share::Unconditional,
        relation: Relation::Table("residents".into()),
        mode: Mode::Incremental {
            cursor: vec!["updated_at".into(), "id_card".into()],
            safety_lag: Duration::from_secs(1),
        },
        ..resource(false)
    }
}

/// The first `n` rows of the pipeline benchmark's registry table (seed 1), as the PostgreSQL
/// connector converts them: text, dates, a decimal, a small integer, a `timestamptz`.
pub fn registry_rows(n: u64) -> Vec<Row> {
    residents::registry(n, 1)
        .map(|r| Row {
            values: vec![
                Ok(Value::Text(r.id_card)),
                Ok(Value::Text(r.name)),
                Ok(Value::Text(r.gender.to_owned())),
                Ok(Value::Date(r.birth)),
                Ok(Value::Text(r.mobile)),
                Ok(Value::Text(r.address)),
                Ok(Value::Date(r.insured_since.parse().expect("a date"))),
                Ok(Value::Decimal(format!(
                    "{}.{:02}",
                    r.salary_fen / 100,
                    r.salary_fen % 100
                ))),
                Ok(Value::Int(r.status.into())),
                Ok(Value::TimestampTz(r.updated_at.and_utc())),
            ],
        })
        .collect()
}

/// Criterion measurement by the CPU time of the measuring thread (`CLOCK_THREAD_CPUTIME_ID`),
/// in nanoseconds: what one core spends, whatever else the machine runs.
pub struct ThreadCpuTime;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to write into.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl criterion::measurement::Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }

    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }

    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }

    fn zero(&self) -> u64 {
        0
    }

    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }

    fn formatter(&self) -> &dyn criterion::measurement::ValueFormatter {
        &CpuFormatter
    }
}

/// Formats nanoseconds of CPU time, and throughput per CPU second.
struct CpuFormatter;

impl criterion::measurement::ValueFormatter for CpuFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if typical < 1e3 {
            (1.0, "ns cpu")
        } else if typical < 1e6 {
            (1e-3, "µs cpu")
        } else if typical < 1e9 {
            (1e-6, "ms cpu")
        } else {
            (1e-9, "s cpu")
        };
        for v in values {
            *v *= factor;
        }
        unit
    }

    fn scale_throughputs(
        &self,
        typical: f64,
        throughput: &criterion::Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let n = match throughput {
            criterion::Throughput::Elements(n)
            | criterion::Throughput::Bytes(n)
            | criterion::Throughput::BytesDecimal(n) => *n as f64,
            _ => 1.0,
        };
        let per_second = n * 1e9 / typical;
        let (factor, unit) = if per_second < 1e3 {
            (1.0, "elem/cpu-s")
        } else if per_second < 1e6 {
            (1e-3, "Kelem/cpu-s")
        } else {
            (1e-6, "Melem/cpu-s")
        };
        for v in values {
            *v = n * 1e9 / *v * factor;
        }
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}
