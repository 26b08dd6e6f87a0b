//! Parquet segments: how buffered batches become one compressed, bloom-filtered file (in
//! arrival order for a flush, sorted for compaction), and how a segment is read back.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::{
    SortColumn, SortOptions, concat, interleave_record_batch, lexsort_to_indices,
};
use arrow::datatypes::TimestampNanosecondType;
use bytes::Bytes;
use meshscope_schemas::{Table, TraceId};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::StoreError;
use super::manifest::FileEntry;

/// Rows per data page: small pages let a trace-id lookup read kilobytes, not megabytes.
const PAGE_ROWS: usize = 1000;
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Rows interleaved into sorted order per write: a chunk's columns stay in the cache while
/// the Parquet writer encodes them, and no flush allocates (and page-faults in) a second copy
/// of its whole buffer.
const SORT_CHUNK_ROWS: usize = 8 * PAGE_ROWS;

/// The order of a table's rows in a segment: spans by (trace_id, start_time), requests by
/// time, stat_samples by (metric, time), as (batch, row) pairs. Only the sort keys are
/// concatenated.
fn segment_order(
    table: Table,
    batches: &[&RecordBatch],
) -> Result<Vec<(usize, usize)>, StoreError> {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let key = |name: &str| -> Result<SortColumn, StoreError> {
        let parts = batches
            .iter()
            .map(|b| {
                b.column_by_name(name)
                    .map(|c| c.as_ref())
                    .ok_or_else(|| StoreError::Internal(format!("no column {name}")))
            })
            .collect::<Result<Vec<&dyn Array>, _>>()?;
        Ok(SortColumn {
            values: concat(&parts)?,
            options: Some(SortOptions {
                descending: false,
                nulls_first: false,
            }),
        })
    };
    let mut keys = vec![key(table.sort_column())?];
    if table.sort_column() != table.time_column() {
        keys.push(key(table.time_column())?);
    }
    let order = lexsort_to_indices(&keys, None)?;
    drop(keys);
    // `at[i]`: the batch and row that row `i` of the concatenated keys came from.
    let mut at = Vec::with_capacity(rows);
    for (b, batch) in batches.iter().enumerate() {
        at.extend((0..batch.num_rows()).map(|r| (b, r)));
    }
    Ok(order.values().iter().map(|&i| at[i as usize]).collect())
}

/// Encodes a table's batches as one Parquet file at compaction `level`.
///
/// - **Compaction (`level` ≥ 1)** writes the rows in segment order (`segment_order`): they
///   are copied once, from the batches straight into sorted chunks of `SORT_CHUNK_ROWS` that
///   the writer encodes one after the other. Sorted files are what trace lookups prune by
///   page (trace-id min/max and the page index), and the file says so in its metadata.
/// - **A flush (`level` 0)** of spans or requests writes the batches as they arrived.
///   Sorting them cost a fifth of an OTLP receiver's CPU (a random gather over the whole
///   buffer), and compaction sorts every row again: in tiers during the hour, and into one
///   file once the hour is over (`Store::compact`). Until then lookups skip a flushed file's
///   row groups by their bloom filters on trace id and request id, and read the rest without
///   page pruning. Arrival order is close to time order, so time pruning still works.
/// - **A flush of stat samples** is sorted (by metric, then time): that table has no bloom
///   filters to stand in for the order, Prometheus queries select by metric, and its
///   volume is small.
pub fn encode_segment(
    table: Table,
    batches: &[RecordBatch],
    level: u32,
) -> Result<Vec<u8>, StoreError> {
    let batches: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let size: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
    let mut out = Vec::with_capacity(size / 4);
    let mut w = ArrowWriter::try_new(
        &mut out,
        table.schema(),
        Some(writer_properties(table, rows, level)),
    )?;
    if is_sorted(table, level) && rows > 0 {
        let order = segment_order(table, &batches)?;
        for chunk in order.chunks(SORT_CHUNK_ROWS) {
            w.write(&interleave_record_batch(&batches, chunk)?)?;
        }
    } else {
        for b in batches {
            w.write(b)?;
        }
    }
    w.close()?;
    Ok(out)
}

/// Encodes batches as a temporary sorted run for compaction's merge: segment order, fast
/// compression, no bloom filters or page statistics (a run is read once, front to back).
pub fn encode_run(table: Table, batches: &[RecordBatch]) -> Result<Vec<u8>, StoreError> {
    let batches: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, table.schema(), Some(run_properties()))?;
    if !batches.is_empty() {
        let order = segment_order(table, &batches)?;
        for chunk in order.chunks(SORT_CHUNK_ROWS) {
            w.write(&interleave_record_batch(&batches, chunk)?)?;
        }
    }
    w.close()?;
    Ok(out)
}

/// Writer settings of temporary runs (see [`encode_run`]): LZ4, which needs no per-column
/// decoder state (a zstd decoder per column of every open run was the merge's largest
/// allocation).
pub fn run_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::LZ4_RAW)
        .set_statistics_enabled(EnabledStatistics::None)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build()
}

/// Whether a file of `table` at compaction `level` has its rows in segment order: compacted
/// files always, flushed ones only for tables without bloom filters (stat samples).
pub fn is_sorted(table: Table, level: u32) -> bool {
    level > 0 || table.bloom_filter_columns().is_empty()
}

/// zstd level of files a flush writes: fast, since most of them are merged again soon.
pub const FLUSH_ZSTD_LEVEL: i32 = 1;
/// zstd level of compacted files, which stay: smaller at ~3× the compression time.
pub const COMPACTED_ZSTD_LEVEL: i32 = 6;

/// Writer settings for a file of `rows` rows at compaction `level` (0: written by a flush).
pub fn writer_properties(table: Table, rows: usize, level: u32) -> WriterProperties {
    let schema = table.schema();
    let sort_idx = schema.index_of(table.sort_column()).unwrap_or(0) as i32;
    // Page-level min/max only where rows are sorted or clustered (the sort key of a sorted
    // file, and time, which arrival order roughly follows); elsewhere page statistics cost
    // bytes and prune nothing.
    let sorted = is_sorted(table, level);
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(if level == 0 {
                FLUSH_ZSTD_LEVEL
            } else {
                COMPACTED_ZSTD_LEVEL
            })
            .unwrap_or_default(),
        ))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_column_statistics_enabled(
            ColumnPath::from(table.sort_column()),
            if sorted {
                EnabledStatistics::Page
            } else {
                EnabledStatistics::Chunk
            },
        )
        .set_column_statistics_enabled(
            ColumnPath::from(table.time_column()),
            EnabledStatistics::Page,
        )
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_sorting_columns(sorted.then(|| {
            vec![SortingColumn {
                column_idx: sort_idx,
                descending: false,
                nulls_first: false,
            }]
        }));
    if table == Table::Spans {
        // Measured on 1M bookinfo spans (`meshscope bench storage`): nanosecond times in
        // trace-id order compress best byte-stream-split without a dictionary (5.6 → 3.9 and
        // 5.6 → 3.2 bytes/span), and a dictionary-free request_id saves 0.7 bytes/span and the
        // ~1 MB dictionary page every trace lookup would otherwise read.
        for col in [
            meshscope_schemas::table::spans::START_TIME,
            meshscope_schemas::table::spans::DURATION_NS,
        ] {
            b = b
                .set_column_dictionary_enabled(ColumnPath::from(col), false)
                .set_column_encoding(ColumnPath::from(col), Encoding::BYTE_STREAM_SPLIT);
        }
        b = b.set_column_dictionary_enabled(
            ColumnPath::from(meshscope_schemas::table::spans::REQUEST_ID),
            false,
        );
    }
    for col in table.bloom_filter_columns() {
        let path = ColumnPath::from(*col);
        b = b
            .set_column_bloom_filter_enabled(path.clone(), true)
            .set_column_bloom_filter_fpp(path.clone(), 0.01)
            .set_column_bloom_filter_max_ndv(path, rows.clamp(1, ROW_GROUP_ROWS) as u64);
    }
    b.build()
}

/// Reads a whole Parquet file back into batches.
pub fn decode_parquet(bytes: Bytes) -> Result<Vec<RecordBatch>, StoreError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?
        .with_batch_size(64 * 1024)
        .build()?;
    let mut out = Vec::new();
    for b in reader {
        out.push(b?);
    }
    Ok(out)
}

/// The manifest entry for a file of `batches` (in any order) written at `path`.
pub fn file_entry(
    table: Table,
    batches: &[RecordBatch],
    path: String,
    bytes: u64,
    level: u32,
) -> FileEntry {
    let batches: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    let times = batches.iter().map(|b| time_range(table, b));
    let min_time = times.clone().map(|t| t.0).min().unwrap_or(0);
    let max_time = times.map(|t| t.1).max().unwrap_or(0);
    let mut lo: Option<&[u8]> = None;
    let mut hi: Option<&[u8]> = None;
    for b in &batches {
        let Some(col) = table.trace_id_column().and_then(|c| b.column_by_name(c)) else {
            continue;
        };
        let ids = col.as_fixed_size_binary();
        for i in 0..ids.len() {
            if ids.is_valid(i) {
                let v = ids.value(i);
                lo = Some(lo.map_or(v, |l| l.min(v)));
                hi = Some(hi.map_or(v, |h| h.max(v)));
            }
        }
    }
    let hex = |v: Option<&[u8]>| {
        v.and_then(|b| TraceId::from_hex(&hex_of(b)).ok())
            .map(|t| t.to_hex())
    };
    FileEntry {
        path,
        rows: batches.iter().map(|b| b.num_rows() as u64).sum(),
        bytes,
        min_time,
        max_time,
        min_trace_id: hex(lo),
        max_trace_id: hex(hi),
        level,
    }
}

pub fn time_range(table: Table, batch: &RecordBatch) -> (i64, i64) {
    let Some(col) = batch.column_by_name(table.time_column()) else {
        return (0, 0);
    };
    let ts = col.as_primitive::<TimestampNanosecondType>();
    let min = arrow::compute::min(ts).unwrap_or(0);
    let max = arrow::compute::max(ts).unwrap_or(0);
    (min, max)
}

/// Splits a batch into one batch per hour of its time column, in hour order.
pub fn split_by_hour(
    table: Table,
    batch: &RecordBatch,
) -> Result<Vec<(i64, RecordBatch)>, StoreError> {
    use super::manifest::hour_of;
    let Some(col) = batch.column_by_name(table.time_column()) else {
        return Err(StoreError::Internal("time column missing".into()));
    };
    let ts = col.as_primitive::<TimestampNanosecondType>();
    if ts.is_empty() {
        return Ok(vec![]);
    }
    let (min, max) = time_range(table, batch);
    if hour_of(min) == hour_of(max) {
        return Ok(vec![(hour_of(min), batch.clone())]);
    }
    let hours: Vec<i64> = ts.values().iter().map(|&t| hour_of(t)).collect();
    let mut distinct = hours.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let mut out = Vec::with_capacity(distinct.len());
    for h in distinct {
        let mask =
            arrow::array::BooleanArray::from(hours.iter().map(|&x| x == h).collect::<Vec<_>>());
        out.push((h, arrow::compute::filter_record_batch(batch, &mask)?));
    }
    Ok(out)
}

/// Arrow's in-memory size of batches, used for the buffer's memory bound.
pub fn batches_size(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.get_array_memory_size()).sum()
}

pub fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::compute::{concat_batches, take_record_batch};
    use meshscope_schemas::SpanId;
    use meshscope_schemas::rows::{SpanRow, spans_batch};

    #[test]
    fn a_segment_holds_the_sorted_concatenation_of_its_batches() {
        let mut rng = 5u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // Batches of `sizes` spans, each trace id made by `trace` from a random number.
        let mut batches_of = |sizes: &[usize], trace: fn(u64) -> [u8; 16]| -> Vec<RecordBatch> {
            sizes
                .iter()
                .map(|&n| {
                    let rows: Vec<SpanRow> = (0..n)
                        .map(|_| SpanRow {
                            trace_id: TraceId(trace(next())),
                            span_id: SpanId((next() | 1).to_be_bytes()),
                            start_time_unix_nano: (next() % 1_000) as i64,
                            service_name: format!("svc-{}", next() % 5),
                            name: "op".into(),
                            kind: "server".into(),
                            status_code: "unset".into(),
                            ..Default::default()
                        })
                        .collect();
                    spans_batch(&rows).unwrap()
                })
                .collect()
        };
        // Few trace ids, so ties on the trace id are broken by the start time; an empty batch.
        let batches = batches_of(&[40, 0, 1, 300, 17], |r| {
            let mut t = [0u8; 16];
            t[15] = 1 + (r % 9) as u8;
            t
        });
        // Compacted files (level 1 and up) are sorted.
        let decoded = |batches: &[RecordBatch]| {
            let bytes = encode_segment(Table::Spans, batches, 1).unwrap();
            let parts = decode_parquet(Bytes::from(bytes)).unwrap();
            concat_batches(&Table::Spans.schema(), &parts).unwrap()
        };
        let got = decoded(&batches);
        // The reference: everything concatenated, then the rows taken in sorted order.
        let all = concat_batches(&Table::Spans.schema(), &batches).unwrap();
        let keys = ["trace_id", "start_time"].map(|c| SortColumn {
            values: all.column_by_name(c).unwrap().clone(),
            options: Some(SortOptions {
                descending: false,
                nulls_first: false,
            }),
        });
        let want = take_record_batch(&all, &lexsort_to_indices(&keys, None).unwrap()).unwrap();
        assert_eq!(got.num_rows(), 358);
        assert_eq!(got, want);
        assert_eq!(decoded(&batches[1..3]), batches[2]);
        assert_eq!(decoded(&batches[1..2]).num_rows(), 0);
        // More rows than one sorted chunk: chunks follow each other in order.
        let many = batches_of(&[SORT_CHUNK_ROWS; 3], |r| {
            let mut t = [0u8; 16];
            t[..8].copy_from_slice(&r.to_be_bytes());
            t
        });
        let got = decoded(&many);
        let ids = got
            .column_by_name("trace_id")
            .unwrap()
            .as_fixed_size_binary();
        assert_eq!(ids.len(), 3 * SORT_CHUNK_ROWS);
        assert!((1..ids.len()).all(|i| ids.value(i - 1) <= ids.value(i)));
        let entry = file_entry(Table::Spans, &many, "f".into(), 1, 0);
        assert_eq!(entry.rows, 3 * SORT_CHUNK_ROWS as u64);
        assert_eq!(entry.min_trace_id.unwrap(), hex_of(ids.value(0)));
        assert_eq!(
            entry.max_trace_id.unwrap(),
            hex_of(ids.value(ids.len() - 1))
        );

        // A flush (level 0) keeps arrival order, and its metadata claims no sort order;
        // a compacted file's does.
        let all = concat_batches(&Table::Spans.schema(), &many).unwrap();
        let flushed = encode_segment(Table::Spans, &many, 0).unwrap();
        let parts = decode_parquet(Bytes::from(flushed.clone())).unwrap();
        assert_eq!(concat_batches(&Table::Spans.schema(), &parts).unwrap(), all);
        let sorting = |bytes: Vec<u8>| {
            let meta = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes))
                .unwrap()
                .metadata()
                .clone();
            meta.row_groups()
                .iter()
                .map(|g| g.sorting_columns().is_some())
                .collect::<Vec<_>>()
        };
        assert_eq!(sorting(flushed), vec![false]);
        assert_eq!(
            sorting(encode_segment(Table::Spans, &many, 1).unwrap()),
            vec![true]
        );
    }

    #[test]
    fn a_flush_sorts_stat_samples_but_keeps_requests_in_arrival_order() {
        use meshscope_schemas::rows::{
            RequestRow, StatSampleRow, requests_batch, stat_samples_batch,
        };
        let metrics = ["z_total", "a_total", "m_total", "a_total"];
        let samples: Vec<StatSampleRow> = metrics
            .iter()
            .enumerate()
            .map(|(i, m)| StatSampleRow {
                time_unix_nano: 10 - i as i64,
                proxy: "p".into(),
                metric: (*m).into(),
                kind: "counter".into(),
                ..Default::default()
            })
            .collect();
        let flushed = |table: Table, batch: RecordBatch| {
            let bytes = encode_segment(table, &[batch], 0).unwrap();
            concat_batches(
                &table.schema(),
                &decode_parquet(Bytes::from(bytes)).unwrap(),
            )
            .unwrap()
        };
        let got = flushed(Table::StatSamples, stat_samples_batch(&samples).unwrap());
        let got: Vec<&str> = got
            .column_by_name("metric")
            .unwrap()
            .as_string::<i32>()
            .iter()
            .map(Option::unwrap)
            .collect();
        assert_eq!(got, ["a_total", "a_total", "m_total", "z_total"]);

        let requests: Vec<RequestRow> = [30, 10, 20]
            .iter()
            .map(|&t| RequestRow {
                start_time_unix_nano: t,
                ..Default::default()
            })
            .collect();
        let batch = requests_batch(&requests).unwrap();
        assert_eq!(flushed(Table::Requests, batch.clone()), batch);
    }
}
