//! Maintenance: tiered compaction, retention, deleting replaced files after a grace period,
//! the background flush and maintenance loops, and shutdown.

use super::*;

/// How [`compaction_inputs`] picks the files of one hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compaction {
    /// Every file, if there are two or more (`Store::compact(true)`).
    Whole,
    /// A past hour (ended at least a flush interval ago): every file, if there are two or
    /// more or its only file is a flush's unsorted one. Each past hour ends as one sorted file.
    Closed,
    /// The current hour: the lowest level that has `min_files` files is merged into one file
    /// a level up. A row is then rewritten about log_min(files) times in the hour, not at
    /// every pass as when the whole hour was merged each time.
    Tiered { min_files: usize },
}

/// The files of one hour of `table` that compaction merges now; empty: leave the hour be.
pub fn compaction_inputs(table: Table, files: &[FileEntry], rule: Compaction) -> Vec<FileEntry> {
    match rule {
        Compaction::Whole if files.len() >= 2 => files.to_vec(),
        Compaction::Closed
            if files.len() >= 2 || files.iter().any(|f| !segment::is_sorted(table, f.level)) =>
        {
            files.to_vec()
        }
        Compaction::Tiered { min_files } => {
            let mut levels: BTreeMap<u32, Vec<&FileEntry>> = BTreeMap::new();
            for f in files {
                levels.entry(f.level).or_default().push(f);
            }
            levels
                .into_values()
                .find(|tier| tier.len() >= min_files.max(2))
                .map(|tier| tier.into_iter().cloned().collect())
                .unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

impl Store {
    /// Merges files of each hour as [`compaction_inputs`] picks them (with `force`: every
    /// hour of two or more files into one). Returns how many merges were done.
    pub async fn compact(&self, force: bool) -> Result<usize, StoreError> {
        if self.inner.cfg.read_only {
            return Err(StoreError::ReadOnly);
        }
        let _c = self.inner.compact_lock.lock().await;
        let closed_before =
            (now_ns() / 1_000_000_000) - 3600 - self.inner.cfg.flush_interval.as_secs() as i64;
        let candidates: Vec<(Table, i64, Vec<FileEntry>)> = self
            .state_read()
            .manifests
            .values()
            .filter_map(|m| {
                let table = Table::from_name(&m.table).ok()?;
                let rule = if force {
                    Compaction::Whole
                } else if m.hour <= closed_before {
                    Compaction::Closed
                } else {
                    Compaction::Tiered {
                        min_files: self.inner.cfg.compaction_min_files.max(2),
                    }
                };
                let inputs = compaction_inputs(table, &m.files, rule);
                (!inputs.is_empty()).then_some((table, m.hour, inputs))
            })
            .collect();
        let mut done = 0;
        for (table, hour, files) in candidates {
            if !force && self.compaction_waits(table, hour) {
                continue;
            }
            // Merged with bounded memory through a local spill directory (`merge`).
            let spill = self
                .inner
                .cfg
                .wal_dir
                .join(format!(".compaction-{:08x}", rand_u32()));
            let merged = self.compact_hour(table, hour, &files, &spill).await;
            let _ = std::fs::remove_dir_all(&spill);
            let (entry, inputs) = match merged {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(e) => {
                    self.compaction_failed(table, hour, &e);
                    continue;
                }
            };
            {
                let _g = self.inner.flush_lock.lock().await;
                // Flushes may have added files meanwhile; only the inputs are replaced.
                let Some(mut updated) = self.state_read().manifests.get(&(table, hour)).cloned()
                else {
                    continue;
                };
                updated
                    .files
                    .retain(|f| !inputs.iter().any(|i| i.path == f.path));
                updated.files.push(entry);
                self.write_manifest(table, updated).await?;
            }
            self.inner
                .compaction_backoff
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&(table, hour));
            let at = Instant::now();
            self.inner
                .pending_deletes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(inputs.iter().map(|f| (at, Path::from(f.path.as_str()))));
            self.inner.stats.compactions.fetch_add(1, Ordering::Relaxed);
            done += 1;
        }
        Ok(done)
    }

    /// Whether an hour whose compaction failed is still waiting to be tried again.
    fn compaction_waits(&self, table: Table, hour: i64) -> bool {
        self.inner
            .compaction_backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(table, hour))
            .is_some_and(|(_, until)| Instant::now() < *until)
    }

    /// Counts a failed compaction and backs the hour off: one maintenance interval after the
    /// first failure, doubling up to an hour.
    fn compaction_failed(&self, table: Table, hour: i64, e: &StoreError) {
        self.inner
            .stats
            .compaction_failures
            .fetch_add(1, Ordering::Relaxed);
        let mut b = self
            .inner
            .compaction_backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let fails = b.get(&(table, hour)).map_or(0, |f| f.0) + 1;
        let wait = (self.inner.cfg.maintenance_interval * 2u32.saturating_pow(fails - 1))
            .min(Duration::from_secs(3600));
        b.insert((table, hour), (fails, Instant::now() + wait));
        warn!(table = table.name(), hour, error = %e, fails, retry_in = ?wait, "compaction failed; the hour waits before it is tried again");
    }

    /// Merges `files` of one hour into one sorted file written to the store: each is copied
    /// to `spill`, made a sorted run, and the runs are merged (`merge`). A file that cannot
    /// be read stays as it is, and the others are merged if two or more remain (a lone file
    /// only when it was picked alone: the unsorted file of a past hour). Returns the new
    /// file's entry and the inputs it replaces; `None`: nothing to do.
    async fn compact_hour(
        &self,
        table: Table,
        hour: i64,
        files: &[FileEntry],
        spill: &std::path::Path,
    ) -> Result<Option<(FileEntry, Vec<FileEntry>)>, StoreError> {
        std::fs::create_dir_all(spill)?;
        // The merge's working set (measured: ~85 MB of heap merging 2M bookinfo spans) counts
        // against the buffer limit while it runs, so ingest backs off instead of the two
        // adding up: half the limit, at most 128 MiB.
        let _charge = Charge::new(
            &self.inner.charged,
            (self.inner.cfg.max_buffer_bytes / 2).min(128 << 20),
        );
        let mut runs = Vec::new();
        let mut inputs = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let local = spill.join(format!("in-{i}.parquet"));
            let path = Path::from(f.path.as_str());
            if let Err(e) = merge::download(&*self.inner.objects, &path, &local).await {
                warn!(path = %f.path, error = %e, "skipping a file compaction cannot read");
                continue;
            }
            let prefix = spill.join(format!("run-{i}"));
            let level = f.level;
            let made = tokio::task::spawn_blocking(move || {
                merge::make_runs(table, &local, level, &prefix)
            })
            .await
            .map_err(|e| StoreError::Internal(e.to_string()))?;
            match made {
                Ok(r) => {
                    runs.extend(r);
                    inputs.push(f.clone());
                }
                Err(e) => {
                    warn!(path = %f.path, error = %e, "skipping a file compaction cannot read");
                }
            }
        }
        if inputs.is_empty() || (inputs.len() < files.len() && inputs.len() < 2) {
            return Ok(None);
        }
        let level = inputs.iter().map(|f| f.level).max().unwrap_or(0) + 1;
        let rows = inputs.iter().map(|f| f.rows as usize).sum();
        let out = spill.join("out.parquet");
        let out2 = out.clone();
        let mut entry =
            tokio::task::spawn_blocking(move || merge::merge_all(table, runs, rows, level, &out2))
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))??;
        let (tmp_path, final_path) = self.new_segment_paths(table, hour);
        let size = merge::upload(&*self.inner.objects, &out, &tmp_path).await?;
        self.publish_segment(&tmp_path, &final_path).await?;
        entry.path = final_path.to_string();
        entry.bytes = size;
        Ok(Some((entry, inputs)))
    }

    /// Deletes every hour partition that ended before `now - retention`. Returns the number of
    /// hours removed.
    pub async fn apply_retention(&self, now_unix_ns: i64) -> Result<usize, StoreError> {
        if self.inner.cfg.read_only {
            return Err(StoreError::ReadOnly);
        }
        let _c = self.inner.compact_lock.lock().await;
        let _g = self.inner.flush_lock.lock().await;
        let cutoff_s =
            (now_unix_ns - self.inner.cfg.retention.as_nanos() as i64).div_euclid(1_000_000_000);
        let expired: Vec<HourManifest> = self
            .state_read()
            .manifests
            .values()
            .filter(|m| m.hour + 3600 <= cutoff_s)
            .cloned()
            .collect();
        for m in &expired {
            let table = Table::from_name(&m.table)?;
            for f in &m.files {
                match self
                    .inner
                    .objects
                    .delete(&Path::from(f.path.as_str()))
                    .await
                {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            self.write_manifest(
                table,
                HourManifest {
                    files: vec![],
                    ..m.clone()
                },
            )
            .await?;
            info!(
                table = table.name(),
                hour = m.hour,
                files = m.files.len(),
                "retention removed an hour partition"
            );
            self.inner
                .stats
                .hours_expired
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(expired.len())
    }

    pub(crate) async fn delete_pending(&self, all: bool) {
        let due: Vec<Path> = {
            let mut p = self
                .inner
                .pending_deletes
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let (due, keep): (Vec<_>, Vec<_>) = p
                .drain(..)
                .partition(|(at, _)| all || at.elapsed() >= DELETE_GRACE);
            *p = keep;
            due.into_iter().map(|(_, path)| path).collect()
        };
        for path in due {
            if let Err(e) = self.inner.objects.delete(&path).await {
                debug!(%path, error = %e, "could not delete a replaced file");
            }
        }
    }

    /// Whether the WAL writer still runs (background tasks stop when it does not).
    pub(crate) fn running(&self) -> bool {
        self.inner
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Flushes when the buffer is due.
    pub(crate) async fn background(&self) {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            if !self.running() {
                return;
            }
            let due = {
                let st = self.state_read();
                let rows: usize = st
                    .segments
                    .values()
                    .flat_map(|s| s.records.iter())
                    .map(|r| r.2.num_rows())
                    .sum();
                let oldest = st.segments.values().filter_map(|s| s.first_at).min();
                rows >= self.inner.cfg.flush_rows
                    || st.buffered_bytes >= self.inner.cfg.flush_bytes
                    || oldest.is_some_and(|t| t.elapsed() >= self.inner.cfg.flush_interval)
            };
            if due && let Err(e) = self.flush().await {
                warn!(error = %e, "flush failed; the rows stay in the WAL and the next flush retries");
            }
        }
    }

    /// Compaction, retention and deleting replaced files, every `maintenance_interval`. A task
    /// of its own, so that a long compaction does not hold up the flushes.
    pub(crate) async fn maintenance(&self) {
        let mut last_maintenance = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            if !self.running() {
                return;
            }
            if last_maintenance.elapsed() >= self.inner.cfg.maintenance_interval {
                last_maintenance = Instant::now();
                if let Err(e) = self.compact(false).await {
                    warn!(error = %e, "compaction failed");
                }
                if let Err(e) = self.apply_retention(now_ns()).await {
                    warn!(error = %e, "retention failed");
                }
                self.delete_pending(false).await;
            }
        }
    }

    /// Flushes everything and stops the WAL writer. Appends after this fail with `Closed`.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        if self.inner.cfg.read_only {
            return Ok(());
        }
        let flushed = self.flush().await;
        self.halt().await;
        self.delete_pending(true).await;
        flushed.map(|_| ())
    }

    /// Stops the WAL writer and releases the WAL lock without flushing, as a crash would
    /// leave things (what is acknowledged is in the WAL). Used by `shutdown` and by tests.
    pub async fn halt(&self) {
        let tx = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(tx);
        let handle = self
            .inner
            .writer_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        self.inner
            .lock_file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}
