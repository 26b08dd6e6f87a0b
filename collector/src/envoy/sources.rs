//! What `/api/v1/status` and `/metrics` show of each source: a scraped Envoy admin endpoint
//! or a tailed access-log file. The scraper and the tailer both write here, so neither
//! imports the other.

use std::sync::{Arc, Mutex};

use serde::Serialize;

/// What `/api/v1/status` shows for one source: a scraped proxy or a tailed file.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceStatus {
    pub kind: &'static str,
    /// The admin URL, or the file's path.
    pub url: String,
    pub proxy: Option<String>,
    /// Scrapes, or reads of a file that stored lines.
    pub scrapes: u64,
    /// Samples, or access-log lines, stored.
    pub samples_stored: u64,
    pub last_success_unix: Option<u64>,
    pub last_error: Option<String>,
    /// A tailed access-log file's progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<FileProgress>,
}

/// The status of every scrape target and tailed file, shared with the API.
pub type Sources = Arc<Mutex<Vec<SourceStatus>>>;

/// Progress of one followed file, shown in `/api/v1/status` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FileProgress {
    pub dev: u64,
    pub inode: u64,
    /// Bytes read and stored (or rejected) so far; the checkpointed offset.
    pub offset: u64,
    pub size: u64,
    pub line_number: u64,
    pub lines_stored: u64,
    pub lines_rejected: u64,
    /// The file was read again from the start because it was truncated.
    pub truncations: u64,
    /// No glob matches the file any more (rotated or deleted); it is read to its end.
    pub rotated: bool,
    pub last_rejected: Option<String>,
}
