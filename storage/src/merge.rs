//! Compaction with bounded memory: the files of an hour become one sorted file without the
//! hour ever being in memory.
//!
//! 1. Each input is copied to a local spill directory (under the WAL directory), chunk by
//!    chunk. A sorted input (a compacted file) is a *run* as it is; an unsorted one (a flush
//!    in arrival order) is read 16k rows at a time, and each slice is sorted and written
//!    back as a run.
//! 2. The runs are merged: each is read a small batch at a time, the next row of the output
//!    is the least of the runs' current rows (compared as `arrow::row` keys), and rows are
//!    gathered into chunks of [`CHUNK_ROWS`] that the Parquet writer encodes to a local file,
//!    row group by row group.
//! 3. The file is uploaded to the object store in parts and renamed into place.
//!
//! Memory is about one batch per run, one chunk, one row group being encoded and one 16k-row
//! slice while it is sorted, whatever the size of the hour or of a flush.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::Write;
use std::path::{Path as FsPath, PathBuf};

use arrow::array::RecordBatch;
use arrow::compute::interleave_record_batch;
use arrow::row::{RowConverter, Rows, SortField};
use futures::StreamExt;
use meshscope_schemas::Table;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::StoreError;
use crate::manifest::FileEntry;
use crate::segment;

/// Rows read from a run at a time: with [`FAN_IN`] runs open, a few MiB of spans.
const RUN_BATCH_ROWS: usize = 1024;
/// Runs merged at once. More runs than this are merged in passes, [`FAN_IN`] at a time into
/// longer runs, so memory does not grow with the number of runs (the size of the hour).
pub const FAN_IN: usize = 8;
/// Rows gathered per write to the Parquet writer.
const CHUNK_ROWS: usize = 4096;

/// Copies `path` of `objects` to the local file `to`, chunk by chunk.
pub async fn download(
    objects: &dyn ObjectStore,
    path: &Path,
    to: &FsPath,
) -> Result<(), StoreError> {
    let mut stream = objects.get(path).await?.into_stream();
    let mut f = File::create(to)?;
    while let Some(chunk) = stream.next().await {
        f.write_all(&chunk?)?;
    }
    Ok(())
}

/// Uploads the local file `from` to `path` in parts (bounded memory), returning its size.
pub async fn upload(
    objects: &dyn ObjectStore,
    from: &FsPath,
    path: &Path,
) -> Result<u64, StoreError> {
    use std::io::Read;
    let upload = objects.put_multipart(path).await?;
    let mut w = WriteMultipart::new(upload);
    let mut f = File::open(from)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        w.wait_for_capacity(2).await?;
        w.write(&buf[..n]);
    }
    w.finish().await?;
    Ok(size)
}

/// Rows of an unsorted input sorted at a time into one run: about 25 MiB of bookinfo spans.
const RUN_ROWS: usize = 16 * 1024;

/// Makes sorted runs of the local Parquet file `input` (a file at `level`): a sorted file is
/// its own run; an unsorted one (a flush in arrival order) is read [`RUN_ROWS`] rows at a
/// time, and each slice is sorted and written as a run `<prefix>-<n>.parquet`.
pub fn make_runs(
    table: Table,
    input: &FsPath,
    level: u32,
    prefix: &FsPath,
) -> Result<Vec<PathBuf>, StoreError> {
    if segment::is_sorted(table, level) {
        return Ok(vec![input.to_path_buf()]);
    }
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(input)?)?
        .with_batch_size(RUN_ROWS)
        .build()?;
    let mut runs = Vec::new();
    for batch in reader {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        let bytes = segment::encode_run(table, std::slice::from_ref(&batch))?;
        drop(batch);
        let run = PathBuf::from(format!("{}-{}.parquet", prefix.display(), runs.len()));
        std::fs::write(&run, bytes)?;
        runs.push(run);
    }
    Ok(runs)
}

/// One run being merged: its reader, current batch, the batch's sort keys and the cursor.
struct Cursor {
    reader: ParquetRecordBatchReader,
    batch: RecordBatch,
    keys: Rows,
    row: usize,
    /// Index of `batch` among the batches the current chunk refers to.
    slot: usize,
}

/// The sort keys of `batch`: the table's sort column, then time.
fn sort_keys(conv: &RowConverter, table: Table, batch: &RecordBatch) -> Result<Rows, StoreError> {
    let mut cols = vec![column(batch, table.sort_column())?];
    if table.sort_column() != table.time_column() {
        cols.push(column(batch, table.time_column())?);
    }
    Ok(conv.convert_columns(&cols)?)
}

fn column(batch: &RecordBatch, name: &str) -> Result<arrow::array::ArrayRef, StoreError> {
    batch
        .column_by_name(name)
        .cloned()
        .ok_or_else(|| StoreError::Internal(format!("no column {name}")))
}

/// The next non-empty batch of a reader.
fn next_batch(r: &mut ParquetRecordBatchReader) -> Result<Option<RecordBatch>, StoreError> {
    for b in r.by_ref() {
        let b = b?;
        if b.num_rows() > 0 {
            return Ok(Some(b));
        }
    }
    Ok(None)
}

/// Merges sorted `runs` into one sorted Parquet file at `out` written with `props` (a
/// compaction level's, or [`segment::run_properties`] for a pass). Returns the manifest entry
/// of what was written (its path and size still to be set), at `level`.
pub fn merge_runs(
    table: Table,
    runs: &[PathBuf],
    props: parquet::file::properties::WriterProperties,
    level: u32,
    out: &FsPath,
) -> Result<FileEntry, StoreError> {
    let schema = table.schema();
    let mut fields = vec![SortField::new(
        schema
            .field_with_name(table.sort_column())?
            .data_type()
            .clone(),
    )];
    if table.sort_column() != table.time_column() {
        fields.push(SortField::new(
            schema
                .field_with_name(table.time_column())?
                .data_type()
                .clone(),
        ));
    }
    let conv = RowConverter::new(fields)?;
    let mut cursors = Vec::new();
    let mut chunk_batches: Vec<RecordBatch> = Vec::new();
    for run in runs {
        let mut reader = ParquetRecordBatchReaderBuilder::try_new(File::open(run)?)?
            .with_batch_size(RUN_BATCH_ROWS)
            .build()?;
        if let Some(batch) = next_batch(&mut reader)? {
            let keys = sort_keys(&conv, table, &batch)?;
            chunk_batches.push(batch.clone());
            cursors.push(Cursor {
                reader,
                batch,
                keys,
                row: 0,
                slot: chunk_batches.len() - 1,
            });
        }
    }
    // (key of the cursor's current row, cursor index): the least first
    let mut heap: BinaryHeap<Reverse<(Vec<u8>, usize)>> = cursors
        .iter()
        .enumerate()
        .map(|(i, c)| Reverse((c.keys.row(0).as_ref().to_vec(), i)))
        .collect();
    let mut w = ArrowWriter::try_new(File::create(out)?, schema.clone(), Some(props))?;
    let mut entry: Option<FileEntry> = None;
    let mut chunk: Vec<(usize, usize)> = Vec::with_capacity(CHUNK_ROWS);
    while let Some(Reverse((_, i))) = heap.pop() {
        let c = &mut cursors[i];
        chunk.push((c.slot, c.row));
        c.row += 1;
        if c.row == c.batch.num_rows() {
            if let Some(batch) = next_batch(&mut c.reader)? {
                c.keys = sort_keys(&conv, table, &batch)?;
                chunk_batches.push(batch.clone());
                c.batch = batch;
                c.row = 0;
                c.slot = chunk_batches.len() - 1;
                heap.push(Reverse((c.keys.row(0).as_ref().to_vec(), i)));
            }
        } else {
            heap.push(Reverse((c.keys.row(c.row).as_ref().to_vec(), i)));
        }
        if chunk.len() == CHUNK_ROWS {
            let written = emit(&mut chunk, &mut chunk_batches, &mut cursors, &mut w)?;
            add_entry(&mut entry, table, &written, level);
        }
    }
    if !chunk.is_empty() {
        let written = emit(&mut chunk, &mut chunk_batches, &mut cursors, &mut w)?;
        add_entry(&mut entry, table, &written, level);
    }
    // a spill file: read once by the upload, never needed after a crash, so not fsynced
    w.close()?;
    Ok(entry.unwrap_or_else(|| segment::file_entry(table, &[], String::new(), 0, level)))
}

/// Merges `runs` into one sorted file at `out` (compaction `level`, `rows` rows in all): in
/// passes of [`FAN_IN`] runs while there are more, each pass's runs written beside `out`
/// and deleted once merged.
pub fn merge_all(
    table: Table,
    mut runs: Vec<PathBuf>,
    rows: usize,
    level: u32,
    out: &FsPath,
) -> Result<FileEntry, StoreError> {
    let mut pass = 0;
    while runs.len() > FAN_IN {
        let mut next = Vec::new();
        for (k, group) in runs.chunks(FAN_IN).enumerate() {
            if group.len() == 1 {
                next.push(group[0].clone());
                continue;
            }
            let merged = out.with_file_name(format!("pass{pass}-{k}.parquet"));
            merge_runs(table, group, segment::run_properties(), level, &merged)?;
            for r in group {
                let _ = std::fs::remove_file(r);
            }
            next.push(merged);
        }
        runs = next;
        pass += 1;
    }
    merge_runs(
        table,
        &runs,
        segment::writer_properties(table, rows, level),
        level,
        out,
    )
}

/// Writes the rows of `chunk` (slots of `batches`, rows) and starts the next chunk over the
/// cursors' current batches only. Returns the rows written.
fn emit(
    chunk: &mut Vec<(usize, usize)>,
    batches: &mut Vec<RecordBatch>,
    cursors: &mut [Cursor],
    w: &mut ArrowWriter<File>,
) -> Result<RecordBatch, StoreError> {
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    let out = interleave_record_batch(&refs, chunk)?;
    w.write(&out)?;
    chunk.clear();
    *batches = cursors.iter().map(|c| c.batch.clone()).collect();
    for (slot, c) in cursors.iter_mut().enumerate() {
        c.slot = slot;
    }
    Ok(out)
}

/// Folds the statistics of the rows just written into the entry.
fn add_entry(entry: &mut Option<FileEntry>, table: Table, written: &RecordBatch, level: u32) {
    let e = segment::file_entry(
        table,
        std::slice::from_ref(written),
        String::new(),
        0,
        level,
    );
    *entry = Some(match entry.take() {
        None => e,
        Some(mut acc) => {
            acc.rows += e.rows;
            acc.min_time = acc.min_time.min(e.min_time);
            acc.max_time = acc.max_time.max(e.max_time);
            acc.min_trace_id = match (acc.min_trace_id, e.min_trace_id) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            acc.max_trace_id = match (acc.max_trace_id, e.max_trace_id) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            acc
        }
    });
}
