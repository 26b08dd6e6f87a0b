//! One followed file: its identity, truncation checks, and reading the next chunk of whole
//! lines from the committed position. Synchronous (the tailer runs it on a blocking thread)
//! and free of storage, so tests drive it directly.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

use serde::{Deserialize, Serialize};

use crate::envoy::access_log::{ContainerLine, Stream, unwrap_container_line};

/// How many leading bytes identify a file's content.
pub const FINGERPRINT_BYTES: usize = 256;

/// A file's identity: it survives renames, and a new file at the same path has a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub inode: u64,
}

impl FileId {
    pub fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            inode: meta.ino(),
        }
    }
}

/// CRC-32 of a file's first `len` bytes (`len` < [`FINGERPRINT_BYTES`] while the file is
/// shorter). An inode reused by a new file, or a file truncated and written again past the
/// old offset, shows a different fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Fingerprint {
    pub len: u32,
    pub crc32: u32,
}

impl Fingerprint {
    fn of(bytes: &[u8]) -> Fingerprint {
        Fingerprint {
            len: bytes.len() as u32,
            crc32: crc32fast::hash(bytes),
        }
    }

    /// Whether `head` (the file's first bytes, as many as there are up to
    /// [`FINGERPRINT_BYTES`]) starts with what this fingerprint saw.
    pub fn matches(&self, head: &[u8]) -> bool {
        let len = self.len as usize;
        head.len() >= len && crc32fast::hash(&head[..len]) == self.crc32
    }
}

/// Reads the first bytes of `file` (up to [`FINGERPRINT_BYTES`]).
pub fn read_head(file: &File) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; FINGERPRINT_BYTES];
    let n = read_full_at(file, &mut buf, 0)?;
    buf.truncate(n);
    Ok(buf)
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A position in a file: byte offset and the number of lines before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub offset: u64,
    pub line: u64,
}

/// Why reading restarted at the beginning of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// The file is shorter than what was read (truncated, e.g. by copytruncate).
    Truncated { size: u64 },
    /// The first bytes changed: the file was truncated and written past the old offset.
    Rewritten,
}

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reset::Truncated { size } => write!(f, "truncated to {size} bytes"),
            Reset::Rewritten => write!(f, "truncated and rewritten (its first bytes changed)"),
        }
    }
}

/// Checks `file` against what was read: returns the position to read from (the beginning
/// after a reset), the refreshed fingerprint, and the reset if there was one.
pub fn check(
    file: &File,
    pos: Position,
    fingerprint: Fingerprint,
) -> io::Result<(Position, Fingerprint, Option<Reset>)> {
    let size = file.metadata()?.len();
    let head = read_head(file)?;
    let reset = if size < pos.offset {
        Some(Reset::Truncated { size })
    } else if !fingerprint.matches(&head) {
        Some(Reset::Rewritten)
    } else {
        None
    };
    let pos = if reset.is_some() {
        Position::default()
    } else {
        pos
    };
    Ok((pos, Fingerprint::of(&head), reset))
}

/// How much one chunk may hold: this bounds memory (text plus about a kilobyte per row).
#[derive(Debug, Clone, Copy)]
pub struct ChunkLimits {
    pub max_bytes: usize,
    pub max_lines: usize,
}

/// What the next read found.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// No complete line after the position (a partial last line waits for its newline).
    Nothing,
    /// Whole lines: `text` spans from the position to `end`.
    Lines { text: Vec<u8>, end: Position },
    /// One line longer than the chunk limit, to be rejected without being held in memory.
    Overlong { bytes: u64, end: Position },
}

/// Reads the whole lines after `pos`, at most `limits`. Container-runtime pieces of a split
/// line (CRI `P`, Docker without `\n`) are never cut from their end: a chunk stops before
/// the first piece of a line whose end is not in it, so a restart from the chunk's end
/// never sees half a line.
pub fn read_chunk(file: &File, pos: Position, limits: ChunkLimits) -> io::Result<Chunk> {
    let mut buf = vec![0; limits.max_bytes];
    let n = read_full_at(file, &mut buf, pos.offset)?;
    buf.truncate(n);
    let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') else {
        if n < limits.max_bytes {
            return Ok(Chunk::Nothing);
        }
        return skip_overlong(file, pos, n as u64);
    };
    let bytes_full = n == limits.max_bytes;
    buf.truncate(last_nl + 1);
    // At most max_lines lines, unless that leaves no whole line.
    let capped = buf
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(limits.max_lines.max(1) - 1)
        .map(|(last, _)| last + 1)
        .filter(|&len| len < buf.len());
    let mut safe = end_of_whole_entries(&buf[..capped.unwrap_or(buf.len())]);
    if safe == 0 && capped.is_some() {
        safe = end_of_whole_entries(&buf);
    }
    if safe == 0 {
        if !bytes_full {
            // The end of the split line is not written yet.
            return Ok(Chunk::Nothing);
        }
        // The pieces of one line fill a whole chunk: hand them on; the line is rejected as
        // too long (a chunk is larger than the longest line a joiner accepts).
        safe = buf.len();
    }
    buf.truncate(safe);
    let lines = buf.iter().filter(|&&b| b == b'\n').count() as u64;
    let end = Position {
        offset: pos.offset + buf.len() as u64,
        line: pos.line + lines,
    };
    Ok(Chunk::Lines { text: buf, end })
}

/// Byte length of the longest prefix of `text` (whole lines) that ends no split line in
/// the middle.
fn end_of_whole_entries(text: &[u8]) -> usize {
    // Start of the earliest unfinished piece per stream (stdout, stderr).
    let mut open: [Option<usize>; 2] = [None, None];
    let mut start = 0;
    for line in text.split_inclusive(|&b| b == b'\n') {
        // Only CRI and Docker lines can be pieces; a cheap look at the first byte skips
        // bare Envoy lines.
        let maybe_wrapped = line
            .first()
            .is_some_and(|b| b.is_ascii_digit() || *b == b'{');
        if maybe_wrapped
            && let Ok(s) = std::str::from_utf8(line)
            && let Ok(ContainerLine {
                stream, partial, ..
            }) = unwrap_container_line(s.trim_end_matches('\n'))
        {
            let slot = &mut open[usize::from(stream == Some(Stream::Stderr))];
            if partial {
                slot.get_or_insert(start);
            } else {
                *slot = None;
            }
        }
        start += line.len();
    }
    open.iter().flatten().copied().min().unwrap_or(text.len())
}

/// The position has a line longer than the chunk: find its end reading small blocks.
fn skip_overlong(file: &File, pos: Position, scanned: u64) -> io::Result<Chunk> {
    let mut block = vec![0; 64 << 10];
    let mut at = pos.offset + scanned;
    loop {
        let n = read_full_at(file, &mut block, at)?;
        if let Some(i) = block[..n].iter().position(|&b| b == b'\n') {
            let end = at + i as u64 + 1;
            return Ok(Chunk::Overlong {
                bytes: end - pos.offset - 1,
                end: Position {
                    offset: end,
                    line: pos.line + 1,
                },
            });
        }
        if n < block.len() {
            // Still being written.
            return Ok(Chunk::Nothing);
        }
        at += n as u64;
    }
}
