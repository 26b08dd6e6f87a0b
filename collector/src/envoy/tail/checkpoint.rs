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
