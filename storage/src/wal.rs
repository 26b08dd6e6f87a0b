//! The write-ahead log: numbered segment files of length-prefixed, checksummed records.
//!
//! Record layout: `len: u32 LE | crc32(payload): u32 LE | payload`, where payload is
//! `table tag: u8 | hour: i64 LE | body`. The body is the Arrow IPC stream of one
//! RecordBatch, LZ4-compressed as one block with its size prepended when the tag has bit 7
//! set ([`WHOLE_LZ4`], what is written now); records without that bit, written before,
//! hold an IPC stream whose buffers are LZ4 frames. A record is trusted only if its length
//! fits in the file and its checksum matches. A record that fails its checksum but whose
//! length still frames it and whose successor is intact is skipped and reported; otherwise
//! a bad record marks the torn tail, which replay truncates.
//!
//! A `spans` record whose tag has bit 6 set ([`REQUEST`]) holds instead the request its rows
//! were decoded from (the OTLP receiver's `ExportTraceServiceRequest`), exactly as received
//! after decompression, as one LZ4 block with its size prepended; its hour field is unused.
//! Replay decodes it again with the receiver's own decoder, handed to the store as a
//! [`RequestDecoder`] (it has no clock or state, so it gives the same rows), and splits the
//! rows by hour. This saves encoding the rows as Arrow IPC (about 5% of OTLP ingest CPU).
//!
//! A record whose tag has bit 5 set ([`POSITIONS`]) carries source positions: its inflated
//! body starts with `u32 LE length | JSON [[key, value], …]`, followed by the Arrow IPC
//! stream of its rows, or by nothing when its table tag is 0 (a snapshot of every known
//! position, written at the head of each new segment). A reader that stores rows from a
//! source (the access-log tailer) logs where the source stands in the same record as the
//! rows, so a record is either kept whole, rows and position, or lost whole: after a crash
//! the source resumes exactly after what was stored. The snapshot keeps the positions of
//! records in segments that a flush deletes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Read, Seek, Write};
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
/// Bit of the table tag marking a body that is the request the rows were decoded from.
const REQUEST: u8 = 0x40;
/// Bit of the tag marking a body that starts with source positions (see the module doc).
const POSITIONS: u8 = 0x20;
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

/// Where sources stand, as (source key, position) pairs. Opaque to the store: the source
/// that wrote a position reads it back.
pub type Positions = Vec<(String, String)>;

/// What one record decodes to.
#[derive(Default)]
struct Decoded {
    records: Vec<WalRecord>,
    positions: Positions,
}

/// Encodes one record (header included) ready to append to a segment.
/// `positions`, when not empty, are logged in the same record (see [`POSITIONS`]).
pub fn encode_record(
    table: Table,
    hour: i64,
    batch: &RecordBatch,
    positions: &[(String, String)],
) -> Result<Vec<u8>, StoreError> {
    // LZ4 keeps the fsynced WAL bandwidth well below the disk's at hundreds of thousands of
    // spans/s (780 → ~210 bytes per Envoy span). One block for the whole stream rather than
    // Arrow's LZ4 frame per buffer: each frame set up and zeroed its own tables, which cost
    // more CPU than compressing (about 100 buffers per spans batch).
    let mut ipc = Vec::with_capacity(64 << 10);
    let mut tag = table.tag() | WHOLE_LZ4;
    if !positions.is_empty() {
        tag |= POSITIONS;
        put_positions(&mut ipc, positions);
    }
    {
        let mut w = StreamWriter::try_new(&mut ipc, batch.schema_ref())?;
        w.write(batch)?;
        w.finish()?;
    }
    Ok(frame(tag, hour, &ipc))
}

/// A record of positions alone (table tag 0, no rows).
pub fn encode_positions_record(positions: &[(String, String)]) -> Vec<u8> {
    let mut body = Vec::new();
    put_positions(&mut body, positions);
    frame(POSITIONS | WHOLE_LZ4, 0, &body)
}

fn put_positions(out: &mut Vec<u8>, positions: &[(String, String)]) {
    // Serialising pairs of strings cannot fail.
    let json = serde_json::to_vec(positions).unwrap_or_default();
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
}

/// Splits a body with [`POSITIONS`] into the positions and what follows them.
fn take_positions(body: &[u8]) -> Result<(Positions, &[u8]), String> {
    let len = body
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| "short positions header".to_string())?;
    let json = body
        .get(4..4 + len)
        .ok_or_else(|| format!("positions claim {len} bytes, {} remain", body.len() - 4))?;
    let positions =
        serde_json::from_slice(json).map_err(|e| format!("positions do not parse: {e}"))?;
    Ok((positions, &body[4 + len..]))
}

/// One record: header, then the payload `tag | hour | body`, `body` compressed as one LZ4
/// block with its size prepended.
fn frame(tag: u8, hour: i64, body: &[u8]) -> Vec<u8> {
    let compressed = lz4_flex::block::compress_prepend_size(body);
    let len = 9 + compressed.len();
    let mut out = Vec::with_capacity(HEADER + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(tag);
    out.extend_from_slice(&hour.to_le_bytes());
    out.extend_from_slice(&compressed);
    let crc = crc32fast::hash(&out[HEADER..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Turns the body of a [`REQUEST`] record (a request as the receiver got it) back into its
/// `spans` rows. The receiver that logs requests this way owns the format and hands its
/// decoder to the store; `Err` says why the body does not decode. Only requests the same
/// decoder read are logged, so an `Err` at replay is corruption.
pub type RequestDecoder = fn(&[u8]) -> Result<RecordBatch, String>;

/// Encodes one `spans` record holding `request` as received (header included). Replay decodes
/// it into rows with the [`RequestDecoder`] the store was given.
pub fn encode_request_record(request: &[u8]) -> Vec<u8> {
    // LZ4 as for rows: an Envoy span's protobuf is ~920 bytes, 4× the rows' LZ4 block.
    frame(Table::Spans.tag() | REQUEST, 0, request)
}

fn decode_payload(payload: &[u8], decoder: Option<RequestDecoder>) -> Result<Decoded, String> {
    let flags = payload[0];
    if flags & REQUEST != 0 {
        let tag = flags & !REQUEST;
        if Table::from_tag(tag) != Some(Table::Spans) {
            return Err(format!("a logged-request record with table tag {tag}"));
        }
        let decoder = decoder.ok_or("a logged-request record, and no decoder for it")?;
        let request = inflate(&payload[9..])?;
        let batch = decoder(&request)?;
        let records = super::segment::split_by_hour(Table::Spans, &batch)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(hour, batch)| WalRecord {
                table: Table::Spans,
                hour,
                batch,
            })
            .collect();
        return Ok(Decoded {
            records,
            positions: Vec::new(),
        });
    }
    let hour = i64::from_le_bytes(
        payload[1..9]
            .try_into()
            .map_err(|_| "short header".to_string())?,
    );
    let inflated;
    let mut body = if flags & WHOLE_LZ4 != 0 {
        inflated = inflate(&payload[9..])?;
        &inflated[..]
    } else {
        &payload[9..]
    };
    let mut positions = Vec::new();
    if flags & POSITIONS != 0 {
        if flags & WHOLE_LZ4 == 0 {
            return Err(format!("a positions record with tag {flags:#x}"));
        }
        (positions, body) = take_positions(body)?;
    }
    let tag = flags & !(WHOLE_LZ4 | POSITIONS);
    // Table tag 0: a positions snapshot, no rows.
    if tag == 0 && flags & POSITIONS != 0 {
        if !body.is_empty() {
            return Err(format!("{} bytes after a positions snapshot", body.len()));
        }
        return Ok(Decoded {
            records: Vec::new(),
            positions,
        });
    }
    let table = Table::from_tag(tag).ok_or_else(|| format!("unknown table tag {tag}"))?;
    Ok(Decoded {
        records: vec![WalRecord {
            table,
            hour,
            batch: read_batch(body)?,
        }],
        positions,
    })
}

fn read_batch(ipc: &[u8]) -> Result<RecordBatch, String> {
    let mut reader = StreamReader::try_new(ipc, None).map_err(|e| e.to_string())?;
    reader
        .next()
        .ok_or_else(|| "record holds no batch".to_string())?
        .map_err(|e| e.to_string())
}

/// An LZ4 block with its size prepended, inflated if the size is sane.
fn inflate(body: &[u8]) -> Result<Vec<u8>, String> {
    let claimed = body
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| "short compressed body".to_string())?;
    if claimed > MAX_INFLATED {
        return Err(format!("compressed body claims {claimed} bytes"));
    }
    lz4_flex::block::decompress_size_prepended(body).map_err(|e| format!("LZ4 body: {e}"))
}

/// What reading a segment found.
pub struct SegmentRead {
    pub records: Vec<WalRecord>,
    /// Positions logged in the segment, in the order written (later ones are newer).
    pub positions: Positions,
    /// Byte offset just past the last good record.
    pub good_len: u64,
    /// Why reading stopped before the end of the file, if it did.
    pub torn: Option<String>,
    /// Records skipped in the middle of the segment: each fails its checksum, and the record
    /// after it is intact, so the framing allows stepping over it.
    pub skipped: Vec<String>,
}

/// Whether a well-framed record with a matching checksum starts at `pos` (or `pos` is the
/// end of the data).
fn intact_at(data: &[u8], pos: usize) -> bool {
    if pos == data.len() {
        return true;
    }
    if data.len() - pos < HEADER {
        return false;
    }
    let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap_or_default());
    (10..=MAX_RECORD).contains(&len)
        && data.len() - pos - HEADER >= len
        && crc32fast::hash(&data[pos + HEADER..pos + HEADER + len]) == crc
}

/// Reads the records of a segment from byte `from` on; never panics on garbage.
///
/// A record that fails its checksum, but whose length frames it and is followed by an intact
/// record, is skipped and reported (`skipped`): the records after it are kept. A record
/// that cannot be framed (its length is garbage or runs past the end), a bad last record, or
/// an intact record that does not decode is the torn tail: reading stops there (`torn`). A request record with
/// no `decoder` to read it is an error (`InvalidInput`), not corruption.
pub fn read_segment(
    path: &Path,
    from: u64,
    decoder: Option<RequestDecoder>,
) -> io::Result<SegmentRead> {
    // Only the bytes from `from` on are read: a follower reads what is new.
    let mut f = File::open(path)?;
    f.seek(io::SeekFrom::Start(from))?;
    let mut data = Vec::new();
    f.read_to_end(&mut data)?;
    let base = from as usize;
    let mut pos = 0usize;
    let mut records = Vec::new();
    let mut positions = Vec::new();
    let mut torn = None;
    let mut skipped = Vec::new();
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
        let next = pos + HEADER + len;
        let payload = &data[pos + HEADER..next];
        let bad = if crc32fast::hash(payload) != crc {
            Some((
                format!("record at byte {} fails its checksum", base + pos),
                true,
            ))
        } else {
            // A request record that this store cannot decode is a misconfigured process,
            // not a corrupt WAL: nothing may be skipped or truncated.
            if payload[0] & REQUEST != 0 && decoder.is_none() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{}: the record at byte {} logs a request, and the store was given no \
                         decoder for it (StoreConfig::request_decoder)",
                        path.display(),
                        base + pos
                    ),
                ));
            }
            match decode_payload(payload, decoder) {
                Ok(d) => {
                    records.extend(d.records);
                    positions.extend(d.positions);
                    None
                }
                Err(e) => Some((
                    format!("record at byte {} does not decode: {e}", base + pos),
                    false,
                )),
            }
        };
        if let Some((why, checksum_failed)) = bad {
            // Only a checksum failure is skipped (bits changed in place); an intact record
            // that does not decode (another version's) stops reading, as a torn tail does.
            // So does a bad last record, or one whose successor is not intact either.
            if !checksum_failed || next == data.len() || !intact_at(&data, next) {
                torn = Some(why);
                break;
            }
            skipped.push(format!("{why} ({len} bytes skipped)"));
        }
        pos = next;
    }
    Ok(SegmentRead {
        records,
        positions,
        good_len: (base + pos) as u64,
        torn,
        skipped,
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

    /// Writes encoded records one after the other, with vectored writes of at most `IOV_MAX`
    /// (1024 on Linux) slices each.
    pub fn write_records(&mut self, records: &[Vec<u8>]) -> io::Result<()> {
        const IOV_MAX: usize = 1024;
        let mut slices: Vec<IoSlice<'_>> = records
            .iter()
            .filter(|r| !r.is_empty())
            .map(|r| IoSlice::new(r))
            .collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let n = rest.len().min(IOV_MAX);
            match self.file.write_vectored(&rest[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    self.bytes += written as u64;
                    IoSlice::advance_slices(&mut rest, written);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_written_in_vectored_batches_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::create(dir.path(), 7).unwrap();
        // More records than one vectored write takes, with empty ones (parts logged by
        // another part's record) among them.
        let mut records = Vec::new();
        for i in 0..2500u32 {
            records.push(encode_request_record(&i.to_le_bytes()));
            if i % 3 == 0 {
                records.push(Vec::new());
            }
        }
        w.write_records(&records).unwrap();
        w.sync().unwrap();
        let want: Vec<u8> = records.concat();
        assert_eq!(w.bytes, want.len() as u64);
        assert_eq!(fs::read(segment_path(dir.path(), 7)).unwrap(), want);
        // The bodies are not trace exports: reading stops at the first, as corruption.
        let not_an_export: RequestDecoder = |_| Err("not a trace export".into());
        let read = read_segment(&segment_path(dir.path(), 7), 0, Some(not_an_export)).unwrap();
        assert_eq!(read.good_len, 0);
        assert!(read.torn.unwrap().contains("does not decode"));
    }

    #[test]
    fn a_record_that_fails_its_checksum_mid_segment_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let recs: Vec<Vec<u8>> = (0..4)
            .map(|i| encode_positions_record(&[(format!("k{i}"), format!("v{i}"))]))
            .collect();
        let path = segment_path(dir.path(), 1);
        let mut bytes = recs.concat();
        // flip a bit in the payload of the second record
        let second = recs[0].len();
        bytes[second + HEADER + 3] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        let read = read_segment(&path, 0, None).unwrap();
        let keys: Vec<_> = read.positions.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(keys, ["k0", "k2", "k3"]);
        assert!(read.torn.is_none());
        assert_eq!(read.skipped.len(), 1);
        assert!(read.skipped[0].contains(&format!("record at byte {second} fails its checksum")));
        assert_eq!(read.good_len, bytes.len() as u64);
        // reading from an offset reads only what follows, and reports absolute offsets
        let third = second + recs[1].len();
        let tail = read_segment(&path, third as u64, None).unwrap();
        let keys: Vec<_> = tail.positions.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(keys, ["k2", "k3"]);
        assert_eq!(tail.good_len, bytes.len() as u64);
        // the same damage in the last record is a torn tail
        let mut bytes = recs.concat();
        let last = bytes.len() - recs[3].len();
        bytes[last + HEADER + 3] ^= 0x10;
        fs::write(&path, &bytes).unwrap();
        let read = read_segment(&path, 0, None).unwrap();
        assert_eq!(read.positions.len(), 3);
        assert_eq!(read.good_len, last as u64);
        assert!(read.torn.unwrap().contains("fails its checksum"));
        // a garbage length cannot be framed: torn there, nothing after it is trusted
        let mut bytes = recs.concat();
        bytes[second..second + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        fs::write(&path, &bytes).unwrap();
        let read = read_segment(&path, 0, None).unwrap();
        assert_eq!(read.positions.len(), 1);
        assert_eq!(read.good_len, second as u64);
    }

    #[test]
    fn positions_that_do_not_parse_are_corruption() {
        let good = encode_positions_record(&[("k".into(), "v".into())]);
        let d = decode_payload(&good[HEADER..], None).unwrap();
        assert_eq!(d.positions, vec![("k".to_string(), "v".to_string())]);
        assert!(d.records.is_empty());
        let bad = frame(POSITIONS | WHOLE_LZ4, 0, b"\x03\0\0\0abc");
        let e = decode_payload(&bad[HEADER..], None).err().unwrap();
        assert!(e.contains("positions do not parse"), "{e}");
        let short = frame(POSITIONS | WHOLE_LZ4, 0, b"\x09\0\0\0[]");
        let e = decode_payload(&short[HEADER..], None).err().unwrap();
        assert!(e.contains("positions claim 9 bytes"), "{e}");
    }
}
