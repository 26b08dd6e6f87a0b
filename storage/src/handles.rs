//! The two handles the rest of meshscope holds instead of the engine: receivers get a
//! [`StoreWriter`] (append, admission, source positions), readers get a [`StoreReader`]
//! (snapshots of buffer ∪ Parquet, following a writer's WAL, status). Only the process that
//! owns the store (the `meshscope` binary, tests, benchmarks) holds the [`Store`] itself and
//! flushes, compacts or shuts it down.

use super::*;

/// The write side of a store, as a receiver sees it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StoreWriter {
    store: Store,
}

impl From<Store> for StoreWriter {
    fn from(store: Store) -> StoreWriter {
        StoreWriter { store }
    }
}

impl StoreWriter {
    /// See [`Store::append`].
    pub async fn append(
        &self,
        table: Table,
        batch: RecordBatch,
    ) -> Result<AppendReceipt, StoreError> {
        self.store.append(table, batch).await
    }

    /// See [`Store::append_at`].
    pub async fn append_at(
        &self,
        table: Table,
        batch: RecordBatch,
        positions: wal::Positions,
    ) -> Result<AppendReceipt, StoreError> {
        self.store.append_at(table, batch, positions).await
    }

    /// See [`Store::append_request`].
    pub async fn append_request(
        &self,
        batch: RecordBatch,
        request: Bytes,
    ) -> Result<AppendReceipt, StoreError> {
        self.store.append_request(batch, request).await
    }

    /// See [`Store::admit`].
    pub fn admit(&self) -> Result<(), StoreError> {
        self.store.admit()
    }

    /// See [`Store::positions`].
    pub fn positions(&self) -> BTreeMap<String, String> {
        self.store.positions()
    }

    /// See [`Store::forget_position`].
    pub fn forget_position(&self, key: &str) {
        self.store.forget_position(key)
    }

    pub fn config(&self) -> &StoreConfig {
        self.store.config()
    }
}

/// The read side of a store: what the query service sees. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StoreReader {
    store: Store,
}

impl From<Store> for StoreReader {
    fn from(store: Store) -> StoreReader {
        StoreReader { store }
    }
}

impl StoreReader {
    /// See [`Store::snapshot`].
    pub fn snapshot(&self, table: Table, from_ns: Option<i64>, to_ns: Option<i64>) -> Snapshot {
        self.store.snapshot(table, from_ns, to_ns)
    }

    /// See [`Store::record_scan`].
    pub fn record_scan(&self, considered: usize, scanned: usize) {
        self.store.record_scan(considered, scanned)
    }

    /// See [`Store::refresh`].
    pub async fn refresh(&self) -> Result<(), StoreError> {
        self.store.refresh().await
    }

    /// See [`Store::verify_files`].
    pub async fn verify_files(&self, table: Table, files: Vec<FileEntry>) -> Vec<FileEntry> {
        self.store.verify_files(table, files).await
    }

    /// See [`Store::manifests_at_open`].
    pub fn manifests_at_open(&self, table: Table) -> Vec<HourManifest> {
        self.store.manifests_at_open(table)
    }

    /// See [`Store::manifests`].
    pub fn manifests(&self, table: Table) -> Vec<HourManifest> {
        self.store.manifests(table)
    }

    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.object_store()
    }

    /// See [`Store::object_store_url`].
    pub fn object_store_url(&self) -> &str {
        self.store.object_store_url()
    }

    pub fn status(&self) -> StoreStatus {
        self.store.status()
    }

    pub fn config(&self) -> &StoreConfig {
        self.store.config()
    }
}

impl Store {
    /// The handle receivers write through.
    pub fn writer(&self) -> StoreWriter {
        self.clone().into()
    }

    /// The handle readers read through.
    pub fn reader(&self) -> StoreReader {
        self.clone().into()
    }
}
