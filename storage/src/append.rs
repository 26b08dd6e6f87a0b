//! The write side: admission, appends and source positions, and the WAL writer thread that
//! group-commits them (write, fsync per policy, make visible, acknowledge).

use super::*;

impl Store {
    /// Appends a batch; returns once the rows are durable in the WAL and visible to queries.
    pub async fn append(
        &self,
        table: Table,
        batch: RecordBatch,
    ) -> Result<AppendReceipt, StoreError> {
        self.append_logged(table, batch, None, Vec::new()).await
    }

    /// Appends a batch read from a source together with where that source stands after it
    /// (`positions`: source key → position, opaque to the store), in one WAL record: after a
    /// crash either both are replayed or neither, so the source can resume exactly after
    /// what was stored. [`Store::positions`] gives them back after a restart.
    pub async fn append_at(
        &self,
        table: Table,
        batch: RecordBatch,
        positions: wal::Positions,
    ) -> Result<AppendReceipt, StoreError> {
        self.append_logged(table, batch, None, positions).await
    }

    /// The positions logged with [`Store::append_at`] (replayed from the WAL at open), by
    /// source key.
    pub fn positions(&self) -> BTreeMap<String, String> {
        self.inner
            .positions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Forgets a source's position (a file no longer followed). Only the memory is changed:
    /// the next segment's snapshot leaves it out.
    pub fn forget_position(&self, key: &str) {
        self.inner
            .positions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Appends the `spans` rows a receiver decoded from `request` (as received, decompressed),
    /// logging the request itself in the WAL instead of the rows: replay decodes it again with
    /// [`StoreConfig::request_decoder`], which must give these rows. Fails with `Internal`
    /// when the store has no decoder, since such a record could not be replayed.
    pub async fn append_request(
        &self,
        batch: RecordBatch,
        request: Bytes,
    ) -> Result<AppendReceipt, StoreError> {
        if self.inner.cfg.request_decoder.is_none() {
            return Err(StoreError::Internal(
                "a request is logged in the WAL, but the store has no decoder to replay it".into(),
            ));
        }
        self.append_logged(Table::Spans, batch, Some(request), Vec::new())
            .await
    }

    pub(crate) async fn append_logged(
        &self,
        table: Table,
        batch: RecordBatch,
        request: Option<Bytes>,
        positions: wal::Positions,
    ) -> Result<AppendReceipt, StoreError> {
        check_batch(table, &batch)?;
        let (batch, refused) = match self.inner.cfg.ingest_window {
            Some(w) => window::filter(table, batch, w, now_ns())?,
            None => (batch, None),
        };
        // A request logged as received would replay every row: log the rows kept instead.
        let request = if refused.is_some() { None } else { request };
        if let Some(r) = &refused {
            self.inner
                .stats
                .refused_window
                .fetch_add(r.rows as u64, Ordering::Relaxed);
        }
        let rows = batch.num_rows();
        if rows == 0 {
            return Ok(AppendReceipt {
                rows: 0,
                segment: 0,
                refused,
            });
        }
        let tx = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(if self.inner.cfg.read_only {
                StoreError::ReadOnly
            } else {
                StoreError::Closed
            })?;
        self.admit()?;
        let mut records = Vec::new();
        let mut request = request.map(|r| wal::encode_request_record(&r));
        for (hour, part) in segment::split_by_hour(table, &batch)? {
            // The request's record carries every hour's rows; the other parts log nothing.
            // The first part's record carries the positions.
            let bytes = match &mut request {
                Some(r) => std::mem::take(r),
                None if records.is_empty() => wal::encode_record(table, hour, &part, &positions)?,
                None => wal::encode_record(table, hour, &part, &[])?,
            };
            records.push((table, hour, part, bytes));
        }
        let (ack, done) = oneshot::channel();
        let msg = WalMsg::Append {
            records,
            positions,
            ack,
        };
        match tokio::time::timeout(Duration::from_secs(5), tx.send(msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(StoreError::Closed),
            Err(_) => {
                self.inner
                    .stats
                    .rejected_overload
                    .fetch_add(1, Ordering::Relaxed);
                return Err(StoreError::Overloaded(
                    "the WAL writer queue is full".into(),
                    Duration::from_secs(1),
                ));
            }
        }
        let segment = done
            .await
            .map_err(|_| StoreError::Closed)?
            .map_err(StoreError::Internal)?;
        self.inner
            .stats
            .appended_rows
            .fetch_add(rows as u64, Ordering::Relaxed);
        Ok(AppendReceipt {
            rows,
            segment,
            refused,
        })
    }

    /// Fails with `Overloaded` while the buffer is over its limit, as `append` would.
    /// Receivers ask before decoding a request, so a request that would be refused costs no
    /// decoding.
    pub fn admit(&self) -> Result<(), StoreError> {
        // the buffer plus what is charged against it (queued for the rollups, compaction)
        let buffered =
            self.state_read().buffered_bytes + self.inner.charged.load(Ordering::Acquire);
        if buffered > self.inner.cfg.max_buffer_bytes {
            self.inner
                .stats
                .rejected_overload
                .fetch_add(1, Ordering::Relaxed);
            self.kick_flush();
            return Err(StoreError::Overloaded(
                format!(
                    "{buffered} bytes buffered or in use by compaction and the rollups, limit {}",
                    self.inner.cfg.max_buffer_bytes
                ),
                Duration::from_secs(1),
            ));
        }
        Ok(())
    }
}

/// The WAL writer: group-commits appends, rotates segments on request.
pub(crate) fn writer_thread(
    inner: Arc<Inner>,
    mut rx: mpsc::Receiver<WalMsg>,
    mut seg: wal::SegmentWriter,
) {
    let store = Store {
        inner: inner.clone(),
    };
    let linger = inner.cfg.group_commit.min(Duration::from_millis(100));
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        if !linger.is_zero() && matches!(group[0], WalMsg::Append { .. }) {
            std::thread::sleep(linger);
        }
        while let Ok(m) = rx.try_recv() {
            group.push(m);
            if group.len() >= 4096 {
                break;
            }
        }
        let mut pending: Pending = Vec::new();
        // The group's encoded records, written with one vectored write (no concatenation).
        let mut buf: Vec<Vec<u8>> = Vec::new();
        for msg in group {
            match msg {
                WalMsg::Append {
                    records,
                    positions,
                    ack,
                } => {
                    let mut recs = Vec::with_capacity(records.len());
                    for (t, h, b, bytes) in records {
                        buf.push(bytes);
                        recs.push((t, h, b));
                    }
                    pending.push((recs, positions, ack));
                }
                WalMsg::Rotate { reply } => {
                    commit(&store, &mut seg, &mut buf, &mut pending);
                    let closed = seg.seq;
                    // The new segment starts with every position logged so far, so the
                    // closed one can be deleted once flushed.
                    let res = wal::SegmentWriter::create(&inner.cfg.wal_dir, closed + 1)
                        .and_then(|mut s| match write_positions_snapshot(&inner, &mut s) {
                            Ok(()) => Ok(s),
                            // Leave the file empty, so no later record follows a torn one.
                            Err(e) => {
                                let _ = s.rollback(0);
                                Err(e)
                            }
                        })
                        .map(|s| {
                            seg = s;
                            closed
                        })
                        .map_err(|e| format!("cannot open WAL segment {}: {e}", closed + 1));
                    let _ = reply.send(res);
                }
            }
        }
        commit(&store, &mut seg, &mut buf, &mut pending);
    }
}

pub(crate) type Pending = Vec<(
    Vec<(Table, i64, RecordBatch)>,
    wal::Positions,
    oneshot::Sender<Result<u64, String>>,
)>;

/// Writes the positions logged so far (if any) as the first record of a new segment, synced
/// per the fsync policy.
pub(crate) fn write_positions_snapshot(
    inner: &Inner,
    seg: &mut wal::SegmentWriter,
) -> std::io::Result<()> {
    let all: wal::Positions = inner
        .positions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if all.is_empty() {
        return Ok(());
    }
    seg.write_records(&[wal::encode_positions_record(&all)])?;
    match inner.cfg.fsync {
        FsyncPolicy::Always => seg.sync(),
        FsyncPolicy::Never => Ok(()),
    }
}

/// One group commit: write, fsync (per policy), make visible, acknowledge.
pub(crate) fn commit(
    store: &Store,
    seg: &mut wal::SegmentWriter,
    buf: &mut Vec<Vec<u8>>,
    pending: &mut Pending,
) {
    if pending.is_empty() {
        return;
    }
    let before = seg.bytes;
    let started = Instant::now();
    let res = seg
        .write_records(buf)
        .and_then(|_| match store.inner.cfg.fsync {
            FsyncPolicy::Always => seg.sync(),
            FsyncPolicy::Never => Ok(()),
        });
    store
        .inner
        .stats
        .wal_commit_nanos
        .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    store
        .inner
        .stats
        .wal_commits
        .fetch_add(1, Ordering::Relaxed);
    store
        .inner
        .stats
        .wal_bytes
        .fetch_add(seg.bytes.saturating_sub(before), Ordering::Relaxed);
    buf.clear();
    match res {
        Ok(()) => {
            let seq = seg.seq;
            {
                let mut st = store.state_write();
                let mut known = store
                    .inner
                    .positions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                for (recs, positions, _) in pending.iter_mut() {
                    store.inner.observe(recs);
                    st.insert(seq, std::mem::take(recs));
                    known.extend(std::mem::take(positions));
                }
            }
            for (_, _, ack) in pending.drain(..) {
                let _ = ack.send(Ok(seq));
            }
        }
        Err(e) => {
            // Cut off a partial write so later records are not hidden behind a torn record.
            let _ = seg.rollback(before);
            let msg = format!("WAL write failed: {e}");
            warn!(%msg);
            for (_, _, ack) in pending.drain(..) {
                let _ = ack.send(Err(msg.clone()));
            }
        }
    }
}
