//! Hour manifests: what Parquet segments an hour partition holds, so that readers find files
//! without listing the bucket.
//!
//! `<table>/_hours.json` lists the hours that exist; `<table>/dt=YYYY-MM-DD/hour=HH/_manifest.json`
//! lists that hour's files with rows, bytes, min/max time and min/max trace id, and the WAL
//! segment through which the hour has been flushed (replay skips records at or below it).

use chrono::{DateTime, Datelike, Timelike, Utc};
use meshscope_schemas::Table;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

pub const HOUR_NS: i64 = 3_600_000_000_000;

/// The start of the hour (unix seconds) that a nanosecond timestamp falls in.
pub fn hour_of(ts_ns: i64) -> i64 {
    ts_ns.div_euclid(HOUR_NS) * 3600
}

/// `spans/dt=2026-11-26/hour=01` under `root`.
pub fn hour_dir(root: &Path, table: Table, hour: i64) -> Path {
    let t = DateTime::<Utc>::from_timestamp(hour, 0).unwrap_or_default();
    let rel = format!(
        "{}/dt={:04}-{:02}-{:02}/hour={:02}",
        table.name(),
        t.year(),
        t.month(),
        t.day(),
        t.hour()
    );
    join(root, &rel)
}

pub fn join(root: &Path, rel: &str) -> Path {
    if root.as_ref().is_empty() {
        Path::from(rel)
    } else {
        Path::from(format!("{}/{}", root.as_ref(), rel))
    }
}

pub fn manifest_path(root: &Path, table: Table, hour: i64) -> Path {
    Path::from(format!(
        "{}/_manifest.json",
        hour_dir(root, table, hour).as_ref()
    ))
}

pub fn hours_path(root: &Path, table: Table) -> Path {
    join(root, &format!("{}/_hours.json", table.name()))
}

/// One Parquet segment of an hour.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    /// Full object path.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    /// Min/max of the table's time column, unix nanoseconds.
    pub min_time: i64,
    pub max_time: i64,
    /// Min/max trace id (hex) for tables that have one and rows that carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_trace_id: Option<String>,
    /// 0 for a flushed segment; compaction outputs count up.
    #[serde(default)]
    pub level: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct HourManifest {
    pub table: String,
    /// Hour start, unix seconds.
    pub hour: i64,
    /// Every WAL record of this (table, hour) in segments ≤ this number is in `files`.
    pub flushed_through_segment: u64,
    pub files: Vec<FileEntry>,
}

impl HourManifest {
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct HoursIndex {
    /// hour start (unix seconds) → manifest version, bumped on every manifest write.
    pub hours: std::collections::BTreeMap<i64, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hour_paths() {
        // 2026-11-26T01:30:00Z
        let ns = 1_764_120_600_000_000_000i64;
        let h = hour_of(ns);
        assert_eq!(h, 1_764_118_800);
        assert_eq!(
            hour_dir(&Path::from("data"), Table::Spans, h).as_ref(),
            "data/spans/dt=2025-11-26/hour=01"
        );
        assert_eq!(hour_of(-1), -3600);
    }
}
