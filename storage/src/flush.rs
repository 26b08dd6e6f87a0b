//! Manifests and flushes: the hours index and hour manifests in the object store, and the
//! flush that turns closed WAL segments into one Parquet file per (table, hour).

use super::*;

impl Store {
    pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
    ) -> Result<Option<T>, StoreError> {
        match self.inner.objects.get(path).await {
            Ok(r) => Ok(Some(serde_json::from_slice(&r.bytes().await?)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Loads every table's hours index and the manifests whose version changed.
    pub(crate) async fn load_manifests(&self) -> Result<(), StoreError> {
        for table in Table::ALL {
            let index: HoursIndex = self
                .get_json(&hours_path(&self.inner.root, table))
                .await?
                .unwrap_or_default();
            let known = self
                .state_read()
                .versions
                .get(&table)
                .cloned()
                .unwrap_or_default();
            for (&hour, &version) in &index.hours {
                if known.get(&hour) == Some(&version) {
                    continue;
                }
                if let Some(m) = self
                    .get_json::<HourManifest>(&manifest_path(&self.inner.root, table, hour))
                    .await?
                {
                    self.state_write().manifests.insert((table, hour), m);
                }
            }
            let mut st = self.state_write();
            for hour in known.keys().filter(|h| !index.hours.contains_key(h)) {
                st.manifests.remove(&(table, *hour));
            }
            st.versions.insert(table, index.hours);
        }
        Ok(())
    }

    /// Writes an hour's manifest (or removes it when it has no files), then bumps its
    /// version in the hours index, then updates memory.
    pub(crate) async fn write_manifest(
        &self,
        table: Table,
        m: HourManifest,
    ) -> Result<(), StoreError> {
        let hour = m.hour;
        let mpath = manifest_path(&self.inner.root, table, hour);
        let mut versions = self
            .state_read()
            .versions
            .get(&table)
            .cloned()
            .unwrap_or_default();
        if m.files.is_empty() {
            versions.remove(&hour);
        } else {
            self.inner
                .objects
                .put(&mpath, PutPayload::from(serde_json::to_vec_pretty(&m)?))
                .await?;
            self.sync_written(&mpath)?;
            *versions.entry(hour).or_insert(0) += 1;
        }
        let index = HoursIndex {
            hours: versions.clone(),
        };
        self.inner
            .objects
            .put(
                &hours_path(&self.inner.root, table),
                PutPayload::from(serde_json::to_vec(&index)?),
            )
            .await?;
        self.sync_written(&hours_path(&self.inner.root, table))?;
        if m.files.is_empty() {
            let _ = self.inner.objects.delete(&mpath).await;
        }
        let mut st = self.state_write();
        st.versions.insert(table, versions);
        if m.files.is_empty() {
            st.manifests.remove(&(table, hour));
        } else {
            st.manifests.insert((table, hour), m);
        }
        Ok(())
    }

    /// A new segment file of `(table, hour)`: the temporary name it is written under, and
    /// the name [`Store::publish_segment`] gives it.
    pub(crate) fn new_segment_paths(&self, table: Table, hour: i64) -> (Path, Path) {
        let dir = hour_dir(&self.inner.root, table, hour);
        let id = format!("{:020}-{:08x}", now_ns(), rand_u32());
        (
            Path::from(format!("{}/.{}.parquet.tmp", dir.as_ref(), id)),
            Path::from(format!("{}/{}.parquet", dir.as_ref(), id)),
        )
    }

    /// Renames a fully written segment into place, durably, and counts it.
    pub(crate) async fn publish_segment(&self, tmp: &Path, dest: &Path) -> Result<(), StoreError> {
        self.inner.objects.rename(tmp, dest).await?;
        self.sync_written(dest)?;
        self.inner
            .stats
            .files_written
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Makes a file just written durable before anything relies on it (a WAL segment is
    /// deleted only after the files and manifests holding its rows are): on a local data
    /// directory, fsync of the file and of its directory (the rename that put it there). On
    /// an object store a completed PUT is durable already.
    pub(crate) fn sync_written(&self, path: &Path) -> Result<(), StoreError> {
        if !self.inner.object_url.starts_with("file") {
            return Ok(());
        }
        let local = std::path::Path::new("/").join(path.as_ref());
        File::open(&local)?.sync_all()?;
        if let Some(dir) = local.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    pub(crate) fn kick_flush(&self) {
        let s = self.clone();
        tokio::spawn(async move {
            if let Err(e) = s.flush().await {
                warn!(error = %e, "flush failed; the rows stay in the WAL and the next flush retries");
            }
        });
    }

    pub(crate) async fn rotate(&self) -> Result<u64, StoreError> {
        let tx = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Closed)?;
        let (reply, rx) = oneshot::channel();
        tx.send(WalMsg::Rotate { reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await
            .map_err(|_| StoreError::Closed)?
            .map_err(StoreError::Internal)
    }

    /// Writes everything buffered to Parquet. Returns the number of rows flushed.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        if self.inner.cfg.read_only {
            return Err(StoreError::ReadOnly);
        }
        let _g = self.inner.flush_lock.lock().await;
        if self
            .state_read()
            .segments
            .values()
            .all(|s| s.records.is_empty())
        {
            return Ok(0);
        }
        let flush_started = Instant::now();
        let closed = self.rotate().await?;
        let groups: BTreeMap<(Table, i64), Vec<RecordBatch>> = {
            let st = self.state_read();
            let mut g: BTreeMap<(Table, i64), Vec<RecordBatch>> = BTreeMap::new();
            for (seq, seg) in st.segments.range(..=closed) {
                for (t, h, b) in &seg.records {
                    if *seq > st.flushed_through(*t, *h) {
                        g.entry((*t, *h)).or_default().push(b.clone());
                    }
                }
            }
            g
        };
        let mut rows = 0;
        for ((table, hour), batches) in groups {
            let (entry, n) = self.write_segment(table, hour, batches, 0).await?;
            let mut m = self
                .state_read()
                .manifests
                .get(&(table, hour))
                .cloned()
                .unwrap_or_else(|| HourManifest {
                    table: table.name().to_string(),
                    hour,
                    ..Default::default()
                });
            m.files.push(entry);
            m.flushed_through_segment = closed;
            self.write_manifest(table, m).await?;
            rows += n;
        }
        self.state_write().remove_segments_through(closed);
        for seq in wal::list_segments(&self.inner.cfg.wal_dir)? {
            if seq <= closed {
                std::fs::remove_file(wal::segment_path(&self.inner.cfg.wal_dir, seq))?;
            }
        }
        self.inner.stats.flushes.fetch_add(1, Ordering::Relaxed);
        self.inner
            .stats
            .flush_nanos
            .fetch_add(flush_started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        debug!(
            rows,
            through_segment = closed,
            "flushed the buffer to Parquet"
        );
        Ok(rows)
    }

    /// Encodes batches as one Parquet file (sorted if `level` > 0) of `(table, hour)`, written under a
    /// temporary name and renamed into place.
    pub(crate) async fn write_segment(
        &self,
        table: Table,
        hour: i64,
        batches: Vec<RecordBatch>,
        level: u32,
    ) -> Result<(FileEntry, usize), StoreError> {
        let (batches, bytes) = tokio::task::spawn_blocking(move || {
            let bytes = segment::encode_segment(table, &batches, level)?;
            Ok::<_, StoreError>((batches, bytes))
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))??;
        let (tmp_path, final_path) = self.new_segment_paths(table, hour);
        let size = bytes.len() as u64;
        self.inner
            .objects
            .put(&tmp_path, PutPayload::from(bytes))
            .await?;
        self.publish_segment(&tmp_path, &final_path).await?;
        let entry = segment::file_entry(table, &batches, final_path.to_string(), size, level);
        let n = entry.rows as usize;
        Ok((entry, n))
    }
}
