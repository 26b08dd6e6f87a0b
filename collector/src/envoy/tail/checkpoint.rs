//! The checkpoint file of the access-log tailer: per followed file, its identity and how far
//! its lines are stored. Written as a whole (temporary name, fsync, rename, fsync of the
//! directory), and only after the rows it covers were durably appended.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::file::{FileId, Fingerprint, Position};

const VERSION: u32 = 1;

/// Where one file's reading stands: every line before `offset` is stored or was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheckpoint {
    /// The path the file was found at (for people reading the file; matching is by identity).
    pub path: String,
    pub dev: u64,
    pub inode: u64,
    /// Byte offset of the first line not yet stored.
    pub offset: u64,
    /// Lines before `offset`, so rejected lines keep their numbers across restarts.
    pub line_number: u64,
    /// The first bytes of the file, to tell a reused inode from the file that was read.
    pub fingerprint: Fingerprint,
    /// Counts the file's position changes (chunks read, truncations): of two checkpoints of
    /// one file, the one with the higher count is newer (offsets alone are not, after a
    /// truncation). Missing in checkpoints written before it existed.
    #[serde(default)]
    pub seq: u64,
}

impl FileCheckpoint {
    pub fn id(&self) -> FileId {
        FileId {
            dev: self.dev,
            inode: self.inode,
        }
    }

    pub fn position(&self) -> Position {
        Position {
            offset: self.offset,
            line: self.line_number,
        }
    }

    /// The key of this file's position in the store's WAL (see `StoreWriter::append_at`).
    pub fn store_key(&self) -> String {
        store_key(self.id())
    }
}

/// The key of a file's position in the store's WAL.
pub fn store_key(id: FileId) -> String {
    format!("{STORE_KEY_PREFIX}{}:{}", id.dev, id.inode)
}

/// What every access-log file's key in the store starts with.
pub const STORE_KEY_PREFIX: &str = "access_log ";

/// Adds the positions the store's WAL logged with the rows (`StoreWriter::positions`) to the
/// checkpoints read from the file: the newer of the two wins for each file. The checkpoint
/// file is written just after each append, so it lags the WAL by the chunk in flight when
/// the process was killed; the WAL lags the file for chunks that stored no rows.
pub fn merge_store_positions(
    files: &mut Vec<FileCheckpoint>,
    store: &std::collections::BTreeMap<String, String>,
) {
    for (key, value) in store.range(STORE_KEY_PREFIX.to_string()..) {
        if !key.starts_with(STORE_KEY_PREFIX) {
            break;
        }
        let Ok(logged) = serde_json::from_str::<FileCheckpoint>(value) else {
            tracing::warn!(%key, "ignoring an access-log position in the WAL that does not parse");
            continue;
        };
        match files.iter_mut().find(|f| f.id() == logged.id()) {
            Some(f) if f.seq >= logged.seq => {}
            Some(f) => *f = logged,
            None => files.push(logged),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointDoc {
    version: u32,
    files: Vec<FileCheckpoint>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("reading the access-log checkpoint {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("the access-log checkpoint {path} is not valid: {message}")]
    Invalid { path: String, message: String },
    #[error("writing the access-log checkpoint {path}: {source}")]
    Write { path: String, source: io::Error },
}

/// Reads the checkpoints; a missing file means none.
pub fn load(path: &Path) -> Result<Vec<FileCheckpoint>, CheckpointError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CheckpointError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let doc: CheckpointDoc = serde_json::from_str(&text).map_err(|e| CheckpointError::Invalid {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    if doc.version != VERSION {
        return Err(CheckpointError::Invalid {
            path: path.display().to_string(),
            message: format!("version {} (this meshscope writes {VERSION})", doc.version),
        });
    }
    Ok(doc.files)
}

/// Replaces the checkpoint file with `files`, durably.
pub fn save(path: &Path, files: &[FileCheckpoint]) -> Result<(), CheckpointError> {
    let err = |source| CheckpointError::Write {
        path: path.display().to_string(),
        source,
    };
    let doc = CheckpointDoc {
        version: VERSION,
        files: files.to_vec(),
    };
    let bytes = serde_json::to_vec_pretty(&doc).map_err(|e| err(io::Error::other(e)))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(err)?;
    let tmp = tmp_path(path);
    let mut f = File::create(&tmp).map_err(err)?;
    f.write_all(&bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    fs::rename(&tmp, path).map_err(err)?;
    // The rename is durable only once the directory is.
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Moves an unreadable checkpoint aside (`<name>.invalid`) so the next save does not
/// overwrite the evidence.
pub fn move_aside(path: &Path) -> io::Result<PathBuf> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".invalid");
    let to = path.with_file_name(name);
    fs::rename(path, &to)?;
    Ok(to)
}
