//! The read side: snapshots of the buffer and the Parquet files of an hour range, footer
//! checks and quarantine, status, and the manifests as tools and readers see them.

use super::*;

impl Store {
    /// The buffered batches and Parquet files of `table` whose hour overlaps
    /// `[from_ns, to_ns]` (inclusive; `None` = unbounded). Files are pruned by their manifest
    /// time range; files that failed to open are left out.
    pub fn snapshot(&self, table: Table, from_ns: Option<i64>, to_ns: Option<i64>) -> Snapshot {
        let lo_hour = from_ns.map(manifest::hour_of);
        let hi_hour = to_ns.map(manifest::hour_of);
        let in_range =
            |h: i64| lo_hour.is_none_or(|lo| h >= lo) && hi_hour.is_none_or(|hi| h <= hi);
        let st = self.state_read();
        let mut snap = Snapshot::default();
        for (seq, seg) in &st.segments {
            for (t, h, b) in &seg.records {
                if *t == table && in_range(*h) && *seq > st.flushed_through(*t, *h) {
                    snap.batches.push(b.clone());
                }
            }
        }
        for ((t, h), m) in st.manifests.range((table, i64::MIN)..=(table, i64::MAX)) {
            debug_assert_eq!(*t, table);
            if !in_range(*h) {
                continue;
            }
            for f in &m.files {
                let overlaps = from_ns.is_none_or(|lo| f.max_time >= lo)
                    && to_ns.is_none_or(|hi| f.min_time <= hi);
                if overlaps && !st.excluded.contains(&f.path) {
                    snap.files.push(f.clone());
                }
            }
        }
        snap
    }

    /// Counts a scan for `/api/v1/status` and the pruning tests.
    pub fn record_scan(&self, considered: usize, scanned: usize) {
        let s = &self.inner.stats;
        s.scans.fetch_add(1, Ordering::Relaxed);
        s.files_considered
            .fetch_add(considered as u64, Ordering::Relaxed);
        s.files_scanned.fetch_add(scanned as u64, Ordering::Relaxed);
    }

    /// A follower re-reads what the writer appended to the WAL (every call: it is a local,
    /// incremental read) and the changed manifests (when a WAL segment vanished, i.e. a flush
    /// happened, or at most every 250 ms); a writer has nothing to do.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        if !self.inner.cfg.read_only {
            return Ok(());
        }
        // WAL first, then manifests: a segment deleted before we read it was flushed into a
        // manifest we are about to read, and a duplicate is filtered by flushed_through.
        let flushed = self.tail_wal(false)?;
        let due = {
            let mut last = self
                .inner
                .last_refresh
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let due = flushed || last.is_none_or(|t| t.elapsed() >= FOLLOWER_REFRESH);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            self.load_manifests().await?;
        }
        Ok(())
    }

    /// Checks that each file's Parquet footer opens (once per process); a file that does not
    /// is quarantined and left out. Returns the files that are fine.
    pub async fn verify_files(&self, table: Table, files: Vec<FileEntry>) -> Vec<FileEntry> {
        let mut ok = Vec::with_capacity(files.len());
        for f in files {
            if self
                .inner
                .verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&f.path)
            {
                ok.push(f);
                continue;
            }
            match self.open_footer(&f).await {
                Ok(()) => {
                    self.inner
                        .verified
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(f.path.clone());
                    ok.push(f);
                }
                // The bytes were read and are not Parquet: really corrupt.
                Err(e) if !matches!(e, parquet::errors::ParquetError::External(_)) => {
                    self.quarantine(table, &f, e.to_string()).await
                }
                // Reading failed (an S3 503, EACCES, a network error): nothing is known about
                // the file. It stays where it is and in the list, so the query that needs it
                // fails with the error instead of answering without its rows; the next
                // query tries again.
                Err(e) => {
                    self.inner
                        .stats
                        .transient_read_errors
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(path = %f.path, error = %e, "reading a Parquet file failed (not quarantined; retried by the next query)");
                    *self
                        .inner
                        .last_read_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(format!("{}: {e}", f.path));
                    ok.push(f);
                }
            }
        }
        ok
    }

    /// Opens a file's Parquet footer, trying a read that fails three times (100, 200 ms
    /// apart) before giving up.
    #[allow(deprecated)] // ParquetObjectReader: still the simplest footer check over object_store
    async fn open_footer(&self, f: &FileEntry) -> Result<(), parquet::errors::ParquetError> {
        let mut wait = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            let reader = parquet::arrow::async_reader::ParquetObjectReader::new(
                self.inner.objects.clone(),
                Path::from(f.path.as_str()),
            )
            .with_file_size(f.bytes);
            let e = match parquet::arrow::ParquetRecordBatchStreamBuilder::new(reader).await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if !matches!(e, parquet::errors::ParquetError::External(_)) {
                return Err(e);
            }
            // A read failed. A file that is there but not the size its manifest recorded is
            // damaged (truncated or replaced), not unreachable. A file that is not found is
            // left alone: it may be a stale view of a manifest another process rewrote.
            if let Ok(meta) = self.inner.objects.head(&Path::from(f.path.as_str())).await
                && meta.size != f.bytes
            {
                return Err(parquet::errors::ParquetError::General(format!(
                    "the file is {} bytes, its manifest says {}",
                    meta.size, f.bytes
                )));
            }
            match e {
                e if attempt < 2 => {
                    debug!(path = %f.path, error = %e, "reading a Parquet footer failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
                e => return Err(e),
            }
        }
    }

    pub(crate) async fn quarantine(&self, table: Table, f: &FileEntry, reason: String) {
        warn!(path = %f.path, %reason, "Parquet file fails to open; quarantining it");
        self.state_write().excluded.insert(f.path.clone());
        let mut moved_to = None;
        if !self.inner.cfg.read_only {
            let _g = self.inner.flush_lock.lock().await;
            let name = f.path.rsplit('/').next().unwrap_or("file.parquet");
            let dest = manifest::join(
                &self.inner.root,
                &format!("_quarantine/{}/{}", table.name(), name),
            );
            let from = Path::from(f.path.as_str());
            if self.inner.objects.rename(&from, &dest).await.is_ok() {
                moved_to = Some(dest.to_string());
            }
            let hour = self
                .state_read()
                .manifests
                .iter()
                .find(|(_, m)| m.files.iter().any(|x| x.path == f.path))
                .map(|(k, _)| k.1);
            if let Some(hour) = hour {
                let mut m = self
                    .state_read()
                    .manifests
                    .get(&(table, hour))
                    .cloned()
                    .unwrap_or_default();
                m.files.retain(|x| x.path != f.path);
                if let Err(e) = self.write_manifest(table, m).await {
                    warn!(error = %e, "could not rewrite the manifest after quarantine");
                }
            }
        }
        let at_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.inner
            .quarantine
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Quarantined {
                path: f.path.clone(),
                moved_to,
                reason,
                at_unix,
            });
    }

    pub fn status(&self) -> StoreStatus {
        let st = self.state_read();
        let tables = Table::ALL
            .into_iter()
            .map(|t| {
                let ms: Vec<&HourManifest> = st
                    .manifests
                    .range((t, i64::MIN)..=(t, i64::MAX))
                    .map(|(_, m)| m)
                    .collect();
                TableStatus {
                    table: t.name(),
                    buffered_rows: st.buffered_rows(t),
                    files: ms.iter().map(|m| m.files.len()).sum(),
                    rows_on_disk: ms.iter().map(|m| m.rows()).sum(),
                    bytes_on_disk: ms
                        .iter()
                        .flat_map(|m| m.files.iter())
                        .map(|f| f.bytes)
                        .sum(),
                    hours: ms.len(),
                }
            })
            .collect();
        let s = &self.inner.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreStatus {
            location: self.inner.cfg.location.clone(),
            wal_dir: self.inner.cfg.wal_dir.display().to_string(),
            read_only: self.inner.cfg.read_only,
            fsync: self.inner.cfg.fsync,
            buffered_bytes: st.buffered_bytes,
            charged_bytes: self.inner.charged.load(Ordering::Relaxed),
            wal_segments: st.segments.len(),
            tables,
            quarantined: self
                .inner
                .quarantine
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            appended_rows: l(&s.appended_rows),
            wal_commits: l(&s.wal_commits),
            wal_commit_seconds: l(&s.wal_commit_nanos) as f64 / 1e9,
            flushes: l(&s.flushes),
            flush_seconds: l(&s.flush_nanos) as f64 / 1e9,
            files_written: l(&s.files_written),
            compactions: l(&s.compactions),
            hours_expired: l(&s.hours_expired),
            scans: l(&s.scans),
            files_considered: l(&s.files_considered),
            files_scanned: l(&s.files_scanned),
            rejected_overload: l(&s.rejected_overload),
            refused_window: l(&s.refused_window),
            wal_records_skipped: l(&s.wal_records_skipped),
            compaction_failures: l(&s.compaction_failures),
            transient_read_errors: l(&s.transient_read_errors),
            last_read_error: self
                .inner
                .last_read_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// The hour manifests of `table` as they were when the store opened: the data the
    /// observer was not shown (it sees everything after).
    pub fn manifests_at_open(&self, table: Table) -> Vec<HourManifest> {
        self.inner
            .manifests_at_open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|m| m.table == table.name())
            .cloned()
            .collect()
    }

    /// The hour manifests of a table (for tests and tools).
    pub fn manifests(&self, table: Table) -> Vec<HourManifest> {
        self.state_read()
            .manifests
            .range((table, i64::MIN)..=(table, i64::MAX))
            .map(|(_, m)| m.clone())
            .collect()
    }
}
