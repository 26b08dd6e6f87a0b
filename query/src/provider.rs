//! A DataFusion `TableProvider` per table over the store: the in-memory Arrow buffer plus the
//! Parquet segments the hour manifests list, pruned by time range and trace id before any
//! file is opened; inside files, Parquet statistics, page index and bloom filters prune more.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::{DataSourceExec, MemorySourceConfig};
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;
use meshscope_schemas::Table;
use meshscope_storage::StoreReader;
use meshscope_storage::manifest::FileEntry;
use meshscope_storage::segment::hex_of;

#[derive(Debug)]
pub struct StoreTable {
    table: Table,
    store: StoreReader,
    url: ObjectStoreUrl,
}

/// What the filters say about the rows a scan needs.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ScanBounds {
    /// Inclusive bounds on the time column, unix nanoseconds.
    pub from_ns: Option<i64>,
    pub to_ns: Option<i64>,
    /// A trace id the rows must equal.
    pub trace_id: Option<Vec<u8>>,
}

impl StoreTable {
    pub fn new(table: Table, store: StoreReader) -> Result<StoreTable> {
        let url = ObjectStoreUrl::parse(store.object_store_url())?;
        Ok(StoreTable { table, store, url })
    }

    /// Reads time-range and trace-id bounds out of the conjunctive filters.
    pub fn bounds(&self, filters: &[Expr]) -> ScanBounds {
        let mut b = ScanBounds::default();
        let time_col = self.table.time_column();
        let trace_col = self.table.trace_id_column();
        for f in filters {
            collect_bounds(f, time_col, trace_col, &mut b);
        }
        b
    }
}

fn tighten_lo(cur: &mut Option<i64>, v: i64) {
    *cur = Some(cur.map_or(v, |c| c.max(v)));
}

fn tighten_hi(cur: &mut Option<i64>, v: i64) {
    *cur = Some(cur.map_or(v, |c| c.min(v)));
}

fn column_name(e: &Expr) -> Option<&str> {
    match e {
        Expr::Column(c) => Some(c.name.as_str()),
        Expr::Cast(c) => column_name(&c.expr),
        _ => None,
    }
}

fn literal_ns(e: &Expr) -> Option<i64> {
    let Expr::Literal(v, _) = e else { return None };
    match v {
        ScalarValue::TimestampNanosecond(Some(x), _) => Some(*x),
        ScalarValue::TimestampMicrosecond(Some(x), _) => x.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(x), _) => x.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(x), _) => x.checked_mul(1_000_000_000),
        _ => None,
    }
}

fn literal_bytes(e: &Expr) -> Option<Vec<u8>> {
    let Expr::Literal(v, _) = e else { return None };
    match v {
        ScalarValue::FixedSizeBinary(_, Some(b))
        | ScalarValue::Binary(Some(b))
        | ScalarValue::LargeBinary(Some(b)) => Some(b.clone()),
        _ => None,
    }
}

fn collect_bounds(e: &Expr, time_col: &str, trace_col: Option<&str>, b: &mut ScanBounds) {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            collect_bounds(left, time_col, trace_col, b);
            collect_bounds(right, time_col, trace_col, b);
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            // Normalise to `column op literal`.
            let (col, lit, op) = match (column_name(left), column_name(right)) {
                (Some(c), None) => (c, right.as_ref(), *op),
                (None, Some(c)) => match op.swap() {
                    Some(sw) => (c, left.as_ref(), sw),
                    None => return,
                },
                _ => return,
            };
            if col == time_col
                && let Some(v) = literal_ns(lit)
            {
                match op {
                    Operator::Eq => {
                        tighten_lo(&mut b.from_ns, v);
                        tighten_hi(&mut b.to_ns, v);
                    }
                    Operator::Gt | Operator::GtEq => tighten_lo(&mut b.from_ns, v),
                    Operator::Lt | Operator::LtEq => tighten_hi(&mut b.to_ns, v),
                    _ => {}
                }
            } else if Some(col) == trace_col
                && op == Operator::Eq
                && let Some(v) = literal_bytes(lit)
            {
                b.trace_id = Some(v);
            }
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if column_name(expr) == Some(time_col) => {
            if let (Some(lo), Some(hi)) = (literal_ns(low), literal_ns(high)) {
                tighten_lo(&mut b.from_ns, lo);
                tighten_hi(&mut b.to_ns, hi);
            }
        }
        _ => {}
    }
}

/// Whether a file can hold rows with this trace id, by its manifest min/max.
pub fn file_may_hold_trace(f: &FileEntry, trace_id: &[u8]) -> bool {
    let hex = hex_of(trace_id);
    match (&f.min_trace_id, &f.max_trace_id) {
        (Some(lo), Some(hi)) => lo.as_str() <= hex.as_str() && hex.as_str() <= hi.as_str(),
        _ => false,
    }
}

#[async_trait]
impl TableProvider for StoreTable {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Inexact: we prune with them, DataFusion still filters rows exactly.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.store
            .refresh()
            .await
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        let bounds = self.bounds(filters);
        let snap = self
            .store
            .snapshot(self.table, bounds.from_ns, bounds.to_ns);
        let considered = snap.files.len();
        let mut files = snap.files;
        if let Some(t) = &bounds.trace_id {
            files.retain(|f| file_may_hold_trace(f, t));
        }
        let files = self.store.verify_files(self.table, files).await;
        self.store.record_scan(considered, files.len());

        let schema = self.table.schema();
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if !snap.batches.is_empty() {
            let mem =
                MemorySourceConfig::try_new(&[snap.batches], schema.clone(), projection.cloned())?
                    .with_limit(limit);
            inputs.push(DataSourceExec::from_data_source(mem));
        }
        if !files.is_empty() {
            let mut src = ParquetSource::new(schema.clone())
                .with_table_parquet_options(state.default_table_options().parquet)
                .with_pushdown_filters(true)
                .with_reorder_filters(true)
                .with_enable_page_index(true)
                .with_bloom_filter_on_read(true)
                // Footers and page indexes from the session's metadata cache: a warm lookup
                // then reads only bloom filters and data pages (segments never change).
                .with_parquet_file_reader_factory(Arc::new(CachedParquetFileReaderFactory::new(
                    self.store.object_store(),
                    state.runtime_env().cache_manager.get_file_metadata_cache(),
                )));
            if let Some(e) = conjunction(filters.iter().cloned()) {
                let dfs = DFSchema::try_from(schema.clone())?;
                src = src.with_predicate(state.create_physical_expr(e, &dfs)?);
            }
            let parts: Vec<PartitionedFile> = files
                .iter()
                .map(|f| PartitionedFile::new(f.path.clone(), f.bytes))
                .collect();
            let n = state.config_options().execution.target_partitions.max(1);
            let groups: Vec<FileGroup> = parts
                .chunks(parts.len().div_ceil(n))
                .map(|c| FileGroup::new(c.to_vec()))
                .collect();
            let conf = FileScanConfigBuilder::new(self.url.clone(), Arc::new(src))
                .with_file_groups(groups)
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
            inputs.push(DataSourceExec::from_data_source(conf));
        }
        if inputs.is_empty() {
            return Ok(Arc::new(EmptyExec::new(
                datafusion::physical_plan::project_schema(&schema, projection)?,
            )));
        }
        UnionExec::try_new(inputs)
    }
}
