//! Read-only SQL over the three tables: queries only (no DDL, DML or SET), no file access,
//! with a time limit and a row limit that answer a clear error when hit.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use meshscope_schemas::Table;
use meshscope_storage::StoreReader;
use tokio_util::task::AbortOnDropHandle;

use crate::api::limits::{Dialect, check_query_shape};
use crate::provider::StoreTable;

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("only read-only queries are allowed: {0}")]
    NotReadOnly(String),
    #[error("invalid query: {0}")]
    Invalid(String),
    #[error("the query is too large to run safely: {0}")]
    TooLarge(String),
    #[error(
        "the query ran longer than the time limit of {0:?}; narrow the time range or add filters"
    )]
    Timeout(Duration),
    #[error("the result has more than {0} rows (the row limit); add a LIMIT or narrow the query")]
    TooManyRows(usize),
    #[error("the query needs more memory than it may use: {0}")]
    MemoryLimit(String),
    #[error("query failed: {0}")]
    Execution(String),
}

impl SqlError {
    /// Whether the caller is at fault (400) rather than the server (500).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, SqlError::Execution(_))
    }
}

fn classify(e: DataFusionError) -> SqlError {
    let msg = e.to_string();
    if msg.contains("DDL not supported")
        || msg.contains("DML not supported")
        || msg.contains("Statement not supported")
    {
        SqlError::NotReadOnly(msg)
    } else {
        use arrow::error::ArrowError;
        match e.find_root() {
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_) => SqlError::Invalid(msg),
            DataFusionError::ResourcesExhausted(_) => SqlError::MemoryLimit(msg),
            // values the query asked for that do not exist: '1000' AS INT is fine, 'x' is not
            DataFusionError::ArrowError(a, _)
                if matches!(
                    **a,
                    ArrowError::CastError(_)
                        | ArrowError::ParseError(_)
                        | ArrowError::DivideByZero
                        | ArrowError::ArithmeticOverflow(_)
                        | ArrowError::InvalidArgumentError(_)
                ) =>
            {
                SqlError::Invalid(msg)
            }
            _ => SqlError::Execution(msg),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct SqlLimits {
    pub timeout: Duration,
    pub max_rows: usize,
    /// Memory one query may use: its operators' pool (sorts, aggregations, joins; they spill
    /// or fail beyond it), and the most one call of a sized function may produce
    /// ([`crate::bounded`]).
    pub memory_bytes: usize,
}

impl Default for SqlLimits {
    fn default() -> Self {
        SqlLimits {
            timeout: Duration::from_secs(10),
            max_rows: 10_000,
            memory_bytes: 256 << 20,
        }
    }
}

pub struct SqlOutput {
    pub batches: Vec<RecordBatch>,
    pub plan: Arc<dyn ExecutionPlan>,
}

/// A DataFusion session over the store's tables.
#[derive(Clone)]
pub struct QueryEngine {
    ctx: SessionContext,
    store: StoreReader,
}

impl QueryEngine {
    pub fn new(store: impl Into<StoreReader>) -> Result<QueryEngine, DataFusionError> {
        QueryEngine::with_memory_limit(store, SqlLimits::default().memory_bytes)
    }

    /// An engine whose sized functions produce at most `memory_bytes` per call.
    pub fn with_memory_limit(
        store: impl Into<StoreReader>,
        memory_bytes: usize,
    ) -> Result<QueryEngine, DataFusionError> {
        let store = store.into();
        let mut cfg = SessionConfig::new().with_information_schema(true);
        cfg.options_mut().execution.parquet.pushdown_filters = true;
        cfg.options_mut().execution.parquet.reorder_filters = true;
        let ctx = SessionContext::new_with_config(cfg);
        // Table functions are not needed and generate unbounded rows.
        ctx.deregister_udtf("generate_series");
        ctx.deregister_udtf("range");
        crate::bounded::install(&ctx, memory_bytes);
        let url = url::Url::parse(store.object_store_url())
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        ctx.register_object_store(&url, store.object_store());
        for t in Table::ALL {
            ctx.register_table(t.name(), Arc::new(StoreTable::new(t, store.clone())?))?;
        }
        Ok(QueryEngine { ctx, store })
    }

    pub fn store(&self) -> &StoreReader {
        &self.store
    }

    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Runs one read-only query within the limits.
    pub async fn query(&self, sql: &str, limits: SqlLimits) -> Result<SqlOutput, SqlError> {
        let opts = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        check_query_shape(sql, Dialect::Sql).map_err(SqlError::TooLarge)?;
        // Its own memory pool: operators that need more than the limit spill or fail
        // (`ResourcesExhausted`, a 400), and the pool dies with the query.
        let runtime = RuntimeEnvBuilder::from_runtime_env(&self.ctx.runtime_env())
            .with_memory_limit(limits.memory_bytes, 1.0)
            .build_arc()
            .map_err(classify)?;
        let ctx = self.ctx.clone();
        let run = async move {
            // Planning runs inline: a refused statement answers at once.
            let df = ctx.sql_with_options(sql, opts).await.map_err(classify)?;
            let plan = df.create_physical_plan().await.map_err(classify)?;
            let task = Arc::new(TaskContext::from(&ctx.state()).with_runtime(runtime));
            // Execution on its own task, so the deadline answers even while an operator
            // computes without yielding; the task is aborted when the deadline passes or the
            // caller goes away (this future is dropped), and stops at its next yield,
            // freeing its memory.
            let exec = AbortOnDropHandle::new(tokio::spawn(async move {
                let mut stream = execute_stream(plan.clone(), task).map_err(classify)?;
                let mut batches = Vec::new();
                let mut rows = 0usize;
                while let Some(b) = stream.next().await {
                    let b = b.map_err(classify)?;
                    rows += b.num_rows();
                    if rows > limits.max_rows {
                        return Err(SqlError::TooManyRows(limits.max_rows));
                    }
                    batches.push(b);
                }
                Ok(SqlOutput { batches, plan })
            }));
            match exec.await {
                Ok(r) => r,
                Err(e) => Err(SqlError::Execution(format!("the query task failed: {e}"))),
            }
        };
        // An answer that came after the limit is a timeout too (the timer ticks in ms); an
        // error (a refused statement) stays that error.
        let started = std::time::Instant::now();
        match tokio::time::timeout(limits.timeout, run).await {
            Ok(Ok(_)) if started.elapsed() > limits.timeout => {
                Err(SqlError::Timeout(limits.timeout))
            }
            Ok(r) => r,
            Err(_) => Err(SqlError::Timeout(limits.timeout)),
        }
    }

    /// Runs a query and renders the rows as a JSON array of objects.
    pub async fn query_json(&self, sql: &str, limits: SqlLimits) -> Result<Vec<u8>, SqlError> {
        let out = self.query(sql, limits).await?;
        batches_to_json(&out.batches).map_err(|e| SqlError::Execution(e.to_string()))
    }
}

/// `[{"column": value, ...}, ...]` with explicit nulls; binary ids as hex.
pub fn batches_to_json(batches: &[RecordBatch]) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let mut buf = Vec::new();
    let mut w = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::JsonArray>(&mut buf);
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    drop(w);
    if buf.is_empty() {
        buf.extend_from_slice(b"[]");
    }
    Ok(buf)
}
