//! The WAL at open (replay into the buffer, truncating a torn tail) and, for a read-only
//! follower, the incremental read of what the writer appended since last time.

use super::*;

impl Store {
    /// Replays every WAL segment into the buffer and its positions into `positions`,
    /// truncating torn tails. Returns the number of the next segment to write, and the
    /// segments whose rows are all flushed (to delete once their positions are written
    /// again).
    pub(crate) fn replay_wal(&self) -> Result<(u64, Vec<PathBuf>), StoreError> {
        let dir = self.inner.cfg.wal_dir.clone();
        let segs = wal::list_segments(&dir)?;
        let mut replayed = 0usize;
        let mut flushed = Vec::new();
        for &seq in &segs {
            let path = wal::segment_path(&dir, seq);
            let read = wal::read_segment(&path, 0, self.inner.cfg.request_decoder)?;
            for why in &read.skipped {
                warn!(segment = %path.display(), %why, "a corrupt WAL record was skipped; the records after it are kept");
            }
            self.inner
                .stats
                .wal_records_skipped
                .fetch_add(read.skipped.len() as u64, Ordering::Relaxed);
            if let Some(why) = &read.torn {
                warn!(segment = %path.display(), %why, kept_bytes = read.good_len, "WAL tail is torn or corrupt; truncating it, every record before it is kept");
                wal::truncate_segment(&path, read.good_len)?;
            }
            self.inner
                .positions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(read.positions);
            let mut st = self.state_write();
            let recs: Vec<_> = read
                .records
                .into_iter()
                .filter(|r| seq > st.flushed_through(r.table, r.hour))
                .map(|r| (r.table, r.hour, r.batch))
                .collect();
            replayed += recs.iter().map(|r| r.2.num_rows()).sum::<usize>();
            if recs.is_empty() {
                flushed.push(path);
            } else {
                self.inner.observe(&recs);
                st.insert(seq, recs);
            }
        }
        if replayed > 0 {
            info!(
                rows = replayed,
                segments = segs.len(),
                "replayed the write-ahead log"
            );
        }
        Ok((segs.last().map_or(1, |s| s + 1), flushed))
    }

    /// Follower: reads what the writer appended since last time; forgets deleted segments.
    /// Returns whether any segment vanished (the writer flushed).
    /// `initial`: the first read at open, where records already flushed to the files listed in
    /// `manifests_at_open` are not shown to the observer.
    pub(crate) fn tail_wal(&self, initial: bool) -> Result<bool, StoreError> {
        let dir = self.inner.cfg.wal_dir.clone();
        let segs = match wal::list_segments(&dir) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(e.into()),
        };
        let present: BTreeSet<u64> = segs.iter().copied().collect();
        let flushed;
        {
            let mut st = self.state_write();
            let gone: Vec<u64> = st
                .segments
                .keys()
                .filter(|s| !present.contains(s))
                .copied()
                .collect();
            flushed = !gone.is_empty();
            for g in gone {
                if let Some(s) = st.segments.remove(&g) {
                    st.buffered_bytes -= s.bytes;
                }
            }
        }
        for seq in segs {
            let offset = self
                .state_read()
                .segments
                .get(&seq)
                .map_or(0, |s| s.read_offset);
            let read = match wal::read_segment(
                &wal::segment_path(&dir, seq),
                offset,
                self.inner.cfg.request_decoder,
            ) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            let mut st = self.state_write();
            let recs: Vec<_> = read
                .records
                .into_iter()
                .map(|r| (r.table, r.hour, r.batch))
                .collect();
            if initial {
                let fresh: Vec<_> = recs
                    .iter()
                    .filter(|(t, h, _)| seq > st.flushed_through(*t, *h))
                    .cloned()
                    .collect();
                self.inner.observe(&fresh);
            } else {
                self.inner.observe(&recs);
            }
            st.insert(seq, recs);
            if let Some(s) = st.segments.get_mut(&seq) {
                s.read_offset = read.good_len;
            }
        }
        Ok(flushed)
    }
}
