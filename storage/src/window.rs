//! The time window an append may write into. A row is accepted when its time lies in
//! [now − `past`, now + `future`): rows years in the past would create hour partitions that
//! retention deletes at once (after a flush and a Parquet file each), and far-future rows
//! would never expire. An append also touches at most `max_hours` hour partitions: beyond
//! them its oldest hours are refused. Refused rows are counted and named in the receipt, and
//! the rest of the batch is stored.

use arrow::array::{AsArray, BooleanArray};
use arrow::datatypes::TimestampNanosecondType;
use arrow::record_batch::RecordBatch;
use std::time::Duration;

use meshscope_schemas::Table;

use crate::StoreError;
use crate::manifest::hour_of;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestWindow {
    pub past: Duration,
    pub future: Duration,
    pub max_hours: usize,
}

/// Rows an append refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub rows: usize,
    pub reason: String,
}

/// Keeps the rows inside `w` at `now_ns`; the refused ones are counted.
pub fn filter(
    table: Table,
    batch: RecordBatch,
    w: IngestWindow,
    now_ns: i64,
) -> Result<(RecordBatch, Option<Refused>), StoreError> {
    let Some(col) = batch.column_by_name(table.time_column()) else {
        return Err(StoreError::Internal("time column missing".into()));
    };
    let ts = col.as_primitive::<TimestampNanosecondType>();
    let lo = now_ns.saturating_sub(w.past.as_nanos().min(i64::MAX as u128) as i64);
    let hi = now_ns.saturating_add(w.future.as_nanos().min(i64::MAX as u128) as i64);
    let inside = |t: i64| t >= lo && t < hi;
    // The common case, one pass and no allocation: every row inside, few enough hours.
    let (min, max) = (arrow::compute::min(ts), arrow::compute::max(ts));
    if let (Some(min), Some(max)) = (min, max)
        && inside(min)
        && inside(max)
        && (hour_of(max) - hour_of(min)) / 3600 < w.max_hours as i64
    {
        return Ok((batch, None));
    }
    let out_of_window = ts.values().iter().filter(|&&t| !inside(t)).count();
    // the newest `max_hours` hours among the rows inside
    let mut hours: Vec<i64> = ts
        .values()
        .iter()
        .filter(|&&t| inside(t))
        .map(|&t| hour_of(t))
        .collect();
    hours.sort_unstable();
    hours.dedup();
    let oldest_kept = if hours.len() > w.max_hours {
        Some(hours[hours.len() - w.max_hours])
    } else {
        None
    };
    if out_of_window == 0 && oldest_kept.is_none() {
        return Ok((batch, None));
    }
    let keep = |t: i64| inside(t) && oldest_kept.is_none_or(|h| hour_of(t) >= h);
    let mask = BooleanArray::from(ts.values().iter().map(|&t| keep(t)).collect::<Vec<_>>());
    let kept = arrow::compute::filter_record_batch(&batch, &mask)?;
    let over_hours = batch.num_rows() - kept.num_rows() - out_of_window;
    let rfc = |ns: i64| {
        chrono::DateTime::from_timestamp_nanos(ns)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let mut reasons = Vec::new();
    if out_of_window > 0 {
        reasons.push(format!(
            "{out_of_window} rows with a time outside the accepted window [{}, {}) (--ingest-max-age, --ingest-max-skew)",
            rfc(lo),
            rfc(hi)
        ));
    }
    if over_hours > 0 {
        reasons.push(format!(
            "{over_hours} rows in older hours than the newest {} hour partitions one request may write",
            w.max_hours
        ));
    }
    Ok((
        kept,
        Some(Refused {
            rows: out_of_window + over_hours,
            reason: reasons.join("; "),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshscope_schemas::rows::{RequestRow, requests_batch};

    const H: i64 = 3_600_000_000_000;

    fn batch(times: &[i64]) -> RecordBatch {
        let rows: Vec<RequestRow> = times
            .iter()
            .map(|&t| RequestRow {
                start_time_unix_nano: t,
                ..Default::default()
            })
            .collect();
        requests_batch(&rows).unwrap()
    }

    #[test]
    fn rows_outside_the_window_and_beyond_the_hour_cap_are_refused() {
        let now = 1_000 * H + H / 2;
        let w = IngestWindow {
            past: Duration::from_secs(7 * 24 * 3600),
            future: Duration::from_secs(600),
            max_hours: 3,
        };
        let (b, r) = filter(Table::Requests, batch(&[now, now - H]), w, now).unwrap();
        assert_eq!((b.num_rows(), r), (2, None));
        // exactly as many hours as allowed: all kept
        let (b, r) = filter(Table::Requests, batch(&[now, now - H, now - 2 * H]), w, now).unwrap();
        assert_eq!((b.num_rows(), r), (3, None));
        // 3,000 rows one hour apart, years back, plus two now
        let mut times: Vec<i64> = (0..3000).map(|i| now - (200_000 + i) * H).collect();
        times.extend([now, now + 1]);
        // far future and just past the skew
        times.extend([now + 1000 * H, now + 600 * 1_000_000_000]);
        let (b, r) = filter(Table::Requests, batch(&times), w, now).unwrap();
        assert_eq!(b.num_rows(), 2);
        let r = r.unwrap();
        assert_eq!(r.rows, 3002);
        assert!(
            r.reason.contains("3002 rows with a time outside"),
            "{}",
            r.reason
        );
        // five hours inside the window, three may be written: the newest
        let times: Vec<i64> = (0..5).map(|i| now - i * H).collect();
        let (b, r) = filter(Table::Requests, batch(&times), w, now).unwrap();
        assert_eq!(b.num_rows(), 3);
        let r = r.unwrap();
        assert_eq!(r.rows, 2);
        assert!(
            r.reason.contains("newest 3 hour partitions"),
            "{}",
            r.reason
        );
    }
}
