//! The write-ahead log: numbered segment files of length-prefixed, checksummed records.
//!
//! Record layout: `len: u32 LE | crc32(payload): u32 LE | payload`, where payload is
//! `table tag: u8 | hour: i64 LE | body`. The body is the Arrow IPC stream of one
//! RecordBatch, LZ4-compressed as one block with its size prepended when the tag has bit 7
//! set ([`WHOLE_LZ4`], what is written now); records without that bit, written before,
//! hold an IPC stream whose buffers are LZ4 frames. A record is trusted only if its length
//! fits in the file and its checksum matches; the first record that does not marks the torn
//! tail, which replay truncates.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use meshscope_schemas::Table;

use super::StoreError;

const HEADER: usize = 8;
/// A single record larger than this is treated as corruption (the length field is garbage).
const MAX_RECORD: usize = 256 << 20;
/// Bit of the table tag marking a body compressed as one LZ4 block.
const WHOLE_LZ4: u8 = 0x80;
/// Largest IPC stream a compressed body may claim to inflate to (LZ4 expands at most 255×).
const MAX_INFLATED: usize = 1 << 30;

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

/// Segment numbers present in `dir`, ascending.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(num) = name.strip_suffix(".wal")
            && let Ok(n) = num.parse::<u64>()
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// One decoded WAL record.
pub struct WalRecord {
    pub table: Table,
    pub hour: i64,
    pub batch: RecordBatch,
}

/// Encodes one record (header included) ready to append to a segment.
pub fn encode_record(table: Table, hour: i64, batch: &RecordBatch) -> Result<Vec<u8>, StoreError> {
    // LZ4 keeps the fsynced WAL bandwidth well below the disk's at hundreds of thousands of
    // spans/s (780 → ~210 bytes per Envoy span). One block for the whole stream rather than
    // Arrow's LZ4 frame per buffer: each frame set up and zeroed its own tables, which cost
    // more CPU than compressing (about 100 buffers per spans batch).
    let mut ipc = Vec::with_capacity(64 << 10);
    {
        let mut w = StreamWriter::try_new(&mut ipc, batch.schema_ref())?;
        w.write(batch)?;
        w.finish()?;
    }
    let compressed = lz4_flex::block::compress_prepend_size(&ipc);
    let mut payload = Vec::with_capacity(9 + compressed.len());
    payload.push(table.tag() | WHOLE_LZ4);
    payload.extend_from_slice(&hour.to_le_bytes());
    payload.extend_from_slice(&compressed);
    let mut out = Vec::with_capacity(payload.len() + HEADER);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

fn decode_payload(payload: &[u8]) -> Result<WalRecord, String> {
    let tag = payload[0] & !WHOLE_LZ4;
    let table = Table::from_tag(tag).ok_or_else(|| format!("unknown table tag {tag}"))?;
    let hour = i64::from_le_bytes(
        payload[1..9]
            .try_into()
            .map_err(|_| "short header".to_string())?,
    );
    let inflated;
    let body = if payload[0] & WHOLE_LZ4 != 0 {
        let claimed = payload
            .get(9..13)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| "short compressed body".to_string())?;
        if claimed > MAX_INFLATED {
            return Err(format!("compressed body claims {claimed} bytes"));
        }
        inflated = lz4_flex::block::decompress_size_prepended(&payload[9..])
            .map_err(|e| format!("LZ4 body: {e}"))?;
        &inflated[..]
    } else {
        &payload[9..]
    };
    let mut reader = StreamReader::try_new(body, None).map_err(|e| e.to_string())?;
    let batch = reader
        .next()
        .ok_or_else(|| "record holds no batch".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(WalRecord { table, hour, batch })
}

/// What reading a segment found.
pub struct SegmentRead {
    pub records: Vec<WalRecord>,
    /// Byte offset just past the last good record.
    pub good_len: u64,
    /// Why reading stopped before the end of the file, if it did.
    pub torn: Option<String>,
}

/// Reads the records of a segment from byte `from` on. Stops at the first record that is
/// incomplete or fails its checksum; never panics on garbage.
pub fn read_segment(path: &Path, from: u64) -> io::Result<SegmentRead> {
    let mut f = File::open(path)?;
    let mut data = Vec::new();
    f.read_to_end(&mut data)?;
    let mut pos = from as usize;
    let mut records = Vec::new();
    let mut torn = None;
    while pos < data.len() {
        if data.len() - pos < HEADER {
            torn = Some(format!(
                "{} trailing bytes are shorter than a record header",
                data.len() - pos
            ));
            break;
        }
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap_or_default());
        if !(10..=MAX_RECORD).contains(&len) || data.len() - pos - HEADER < len {
            torn = Some(format!(
                "record at byte {pos} claims {len} bytes, {} remain",
                data.len() - pos - HEADER
            ));
            break;
        }
        let payload = &data[pos + HEADER..pos + HEADER + len];
        if crc32fast::hash(payload) != crc {
            torn = Some(format!("record at byte {pos} fails its checksum"));
            break;
        }
        match decode_payload(payload) {
            Ok(r) => records.push(r),
            Err(e) => {
                torn = Some(format!("record at byte {pos} does not decode: {e}"));
                break;
            }
        }
        pos += HEADER + len;
    }
    Ok(SegmentRead {
        records,
        good_len: pos as u64,
        torn,
    })
}

/// Cuts a segment back to its last good record.
pub fn truncate_segment(path: &Path, len: u64) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(len)?;
    f.sync_all()
}

/// The open segment the writer appends to.
pub struct SegmentWriter {
    pub seq: u64,
    file: File,
    pub bytes: u64,
}

impl SegmentWriter {
    pub fn create(dir: &Path, seq: u64) -> io::Result<SegmentWriter> {
        let path = segment_path(dir, seq);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let bytes = file.metadata()?.len();
        // Make the new file's directory entry durable too.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(SegmentWriter { seq, file, bytes })
    }

    pub fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.bytes += buf.len() as u64;
        Ok(())
    }

    pub fn rollback(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.bytes = len;
        Ok(())
    }

    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}
