//! `encode-rows`: the agent's own work per row of an incremental page, alone and
//! deterministic, for an instruction count under callgrind (wall-clock figures on a shared
//! machine are noise; instruction counts repeat).
//!
//! The rows are the pipeline benchmark's registry table (ten columns, as the PostgreSQL
//! connector converts them); each page of `--batch` rows runs what an incremental page runs
//! between the connector and the queue's write transaction: the cursor of every row, its
//! batch line (`Plan::write_upsert`), batches cut at `--batch` records, each digested (SM3)
//! and compressed (zstd) as it is stored (`queue::Encoded`), the page's position. What it
//! prints ends with the SM3 over every batch's digest, so two builds can be checked to write
//! the same bytes.
//!
//! ```sh
//! cargo build --release -p exchange-bench-policy --bin encode-rows
//! valgrind --tool=callgrind --toggle-collect='*encode_pages*' target/release/encode-rows --rows 20000
//! ```

use std::hint::black_box;

use exchange_agent::pipeline::queue::Encoded;
use exchange_agent::policy::{CursorOf, Plan};
use exchange_bench_policy::{keys, registry_resource, registry_rows};
use exchange_connectors::Row;

/// What the command line asks for.
struct Options {
    /// Rows to encode.
    rows: u64,
    /// Records per batch (and rows per page), the bench's `batch.max_records`.
    batch: usize,
    /// The desensitizing rules of the `-policy` scenarios instead of plain delivery.
    desensitized: bool,
    /// zstd levels to compress every batch's NDJSON at once more, each on its own
    /// (`compress_at`), to compare what they cost and save.
    levels: Vec<i32>,
}

fn options() -> Options {
    let mut o = Options {
        rows: 20_000,
        batch: 5_000,
        desensitized: false,
        levels: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut number = |name: &str| -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} takes a number"))
        };
        match a.as_str() {
            "--rows" => o.rows = number("--rows"),
            "--batch" => o.batch = number("--batch") as usize,
            "--policy" => o.desensitized = true,
            "--level" => o.levels.push(
                args.next()
                    .and_then(|v| v.parse().ok())
                    .expect("--level takes a zstd level"),
            ),
            _ => panic!("usage: encode-rows [--rows N] [--batch N] [--policy] [--level L]..."),
        }
    }
    o
}

fn main() {
    let o = options();
    let plan = Plan::new(&registry_resource(o.desensitized), &keys());
    let rows = registry_rows(o.rows);
    let batches = encode_pages(&plan, &rows, o.batch);
    if !o.levels.is_empty() {
        let lines = lines_of(&plan, &rows, o.batch);
        let raw: usize = lines.iter().map(Vec::len).sum();
        for level in &o.levels {
            let started = std::time::Instant::now();
            let compressed = compress_at(&lines, *level);
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "zstd level {level}: {raw} bytes of NDJSON to {compressed} ({:.1} %), {:.0} MB/s ({:.2} s per million rows)",
                compressed as f64 * 100.0 / raw as f64,
                raw as f64 / seconds / 1e6,
                seconds * 1e6 / o.rows as f64
            );
        }
    }
    let digests: Vec<u8> = batches
        .iter()
        .flat_map(|b| b.digest().into_bytes())
        .collect();
    let records: u64 = batches.iter().map(|b| u64::from(b.records())).sum();
    println!(
        "rows {} records {records} batches {} digest of digests {}",
        o.rows,
        batches.len(),
        exchange_protocol::digest::sm3_hex(&digests)
    );
}

/// What an incremental page runs between the connector and the queue (pull/incremental.rs,
/// `prepare_incremental`), page by page; the function callgrind counts.
#[inline(never)]
fn encode_pages(plan: &Plan, rows: &[Row], batch: usize) -> Vec<Encoded> {
    let mut out = Vec::new();
    let mut line = Vec::new();
    for page in rows.chunks(batch) {
        let mut buf = Vec::new();
        let mut records = 0;
        let mut cursor = None;
        for row in page {
            match plan.cursor_of(row) {
                CursorOf::Values(c) => cursor = Some(c),
                _ => panic!("every row has a cursor"),
            }
            line.clear();
            plan.write_upsert(row, &mut line)
                .expect("every row is delivered");
            buf.extend_from_slice(&line);
            records += 1;
        }
        out.push(Encoded::new(
            &buf,
            records,
            exchange_protocol::batch::DEFAULT_LEVEL,
        ));
        black_box(plan.position_to_store(cursor.expect("a page has rows")));
    }
    out
}

/// Every batch's NDJSON, as [`encode_pages`] cuts them.
fn lines_of(plan: &Plan, rows: &[Row], batch: usize) -> Vec<Vec<u8>> {
    rows.chunks(batch)
        .map(|page| {
            let mut buf = Vec::new();
            for row in page {
                plan.write_upsert(row, &mut buf)
                    .expect("every row is delivered");
            }
            buf
        })
        .collect()
}

/// The bytes of every batch compressed at zstd `level`; the function callgrind counts for a
/// level (`--toggle-collect='*compress_at*'`).
#[inline(never)]
fn compress_at(batches: &[Vec<u8>], level: i32) -> usize {
    batches
        .iter()
        .map(|b| {
            zstd::bulk::compress(b, level)
                .expect("compressing into memory")
                .len()
        })
        .sum()
}
