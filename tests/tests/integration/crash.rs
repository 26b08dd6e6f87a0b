//! Durability against SIGKILL: a real `meshscope serve` process is killed at random moments
//! while clients append through its HTTP ingest; after a restart every acknowledged row is
//! there exactly once. Flushes run every few appends, so kills also land inside flushes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use meshscope_tests::{Server, hour_start_ns};
use rand::{Rng, SeedableRng};

const WRITERS: usize = 4;
const ROWS_PER_POST: usize = 20;

fn lines(writer: usize, seq: usize, t_ns: i64) -> (Vec<String>, String) {
    let ids: Vec<String> = (0..ROWS_PER_POST)
        .map(|i| format!("w{writer}-{seq}-{i}"))
        .collect();
    let body = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            serde_json::json!({
                "start_time": t_ns + (seq * ROWS_PER_POST + i) as i64,
                "response_code": 200, "bytes_received": 0, "bytes_sent": 10, "duration_ms": 1,
                "request_id": id,
            })
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n");
    (ids, body)
}

#[test]
fn sigkill_during_appends_and_flushes_loses_no_acknowledged_row() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = [
        "--flush-rows",
        "150",
        "--flush-interval",
        "200ms",
        "--sql-max-rows",
        "1000000",
    ];
    let seed: u64 = std::env::var("MESHSCOPE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (set MESHSCOPE_TEST_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let acked: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let t0 = hour_start_ns(0);
    let mut seq_base = 0usize;
    for round in 0..5 {
        let server = Server::start("serve", &data, &args);
        let stop = AtomicBool::new(false);
        let kill_after = Duration::from_millis(rng.random_range(150..900));
        std::thread::scope(|s| {
            for w in 0..WRITERS {
                let (server, stop, acked) = (&server, &stop, &acked);
                s.spawn(move || {
                    let mut seq = seq_base;
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let (ids, body) = lines(w, seq, t0);
                        seq += 1;
                        // A killed server answers with a transport error: not acknowledged.
                        let Ok(resp) = server.try_post_text("/api/v1/ingest/rows/requests", &body)
                        else {
                            break;
                        };
                        if resp.0 == 200 && resp.1["stored"] == ROWS_PER_POST {
                            acked.lock().unwrap().extend(ids);
                        }
                    }
                });
            }
            std::thread::sleep(kill_after);
            let pid = server.child.id().to_string();
            let killed = std::process::Command::new("kill")
                .args(["-KILL", &pid])
                .status()
                .unwrap();
            assert!(killed.success());
            stop.store(true, Ordering::Relaxed);
        });
        let mut server = server;
        server.child.wait().unwrap();
        seq_base += 100_000;
        eprintln!(
            "round {round}: killed after {kill_after:?}, {} rows acknowledged so far",
            acked.lock().unwrap().len()
        );
    }

    let server = Server::start("serve", &data, &args);
    let rows = server.sql("SELECT request_id FROM requests");
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in &rows {
        *counts
            .entry(r["request_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let acked = acked.into_inner().unwrap();
    assert!(
        acked.len() >= 5 * ROWS_PER_POST,
        "too few appends were acknowledged to mean anything: {}",
        acked.len()
    );
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged rows lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let dups: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "rows stored twice (WAL replayed over flushed data?): {:?}",
        &dups[..dups.len().min(5)]
    );
    // The kills happened with flushes going on: Parquet files exist.
    let files = server.sql("SELECT 1 AS one FROM requests LIMIT 1");
    assert_eq!(files.len(), 1);
    let (_, status) = server.get_json("/api/v1/status");
    let tables = status["storage"]["tables"].as_array().unwrap();
    let requests = tables.iter().find(|t| t["table"] == "requests").unwrap();
    assert!(
        requests["files"].as_u64().unwrap() > 0,
        "no flush ever happened: {status}"
    );
    eprintln!(
        "{} acknowledged rows all present once; {} rows stored in all; status {status}",
        acked.len(),
        rows.len()
    );
}
