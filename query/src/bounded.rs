//! Scalar functions whose output a caller sizes: `repeat('x', 1500000000)` allocates 1.5 GB
//! in one value, before any memory pool is asked (DataFusion's pool tracks operators such as
//! sorts and aggregations, not what a function returns). Each such function is wrapped with a
//! check that computes, from its arguments, the bytes one call would produce for the whole
//! batch, and refuses the call beyond a limit (the query's memory limit) with an error that
//! names the function and the limit. The array generators (`range`, `generate_series`) are
//! not offered at all: telemetry queries do not need them and they are unbounded.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

/// Functions left out: unbounded generators.
pub const REMOVED: [&str; 2] = ["range", "generate_series"];

/// How a function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Cost {
    /// `repeat(s, n)`: len(s) × n.
    Repeat,
    /// `lpad(s, n[, fill])`, `rpad`: n characters of at most 4 bytes.
    Pad,
    /// `replace(s, from, to)`, `regexp_replace(s, pattern, to[, flags])`: at most
    /// (len(s) + 1) × (len(to) + 1), every position replaced.
    Replace,
    /// `array_repeat(x, n)`, `array_resize(a, n[, x])`: n elements of at least 8 bytes (or
    /// the element's length for strings).
    Elements,
}

/// The functions wrapped, by name.
const WRAPPED: [(&str, Cost); 7] = [
    ("repeat", Cost::Repeat),
    ("lpad", Cost::Pad),
    ("rpad", Cost::Pad),
    ("replace", Cost::Replace),
    ("regexp_replace", Cost::Replace),
    ("array_repeat", Cost::Elements),
    ("array_resize", Cost::Elements),
];

/// Replaces the sized functions of `ctx` by bounded ones (at most `limit` bytes per call) and
/// removes the generators.
pub fn install(ctx: &SessionContext, limit: usize) {
    for name in REMOVED {
        ctx.deregister_udf(name);
    }
    let state = ctx.state();
    for (name, cost) in WRAPPED {
        if let Some(inner) = state.scalar_functions().get(name) {
            let inner = inner.inner().clone();
            ctx.register_udf(ScalarUDF::new_from_impl(Bounded { inner, cost, limit }));
        }
    }
}

#[derive(Debug)]
struct Bounded {
    inner: Arc<dyn ScalarUDFImpl>,
    cost: Cost,
    limit: usize,
}

impl PartialEq for Bounded {
    fn eq(&self, o: &Self) -> bool {
        self.inner.name() == o.inner.name() && self.cost == o.cost && self.limit == o.limit
    }
}
impl Eq for Bounded {}
impl Hash for Bounded {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.inner.name().hash(h);
        self.limit.hash(h);
    }
}

/// One argument, per row: a scalar repeats for every row.
enum PerRow {
    One(i128),
    Each(Vec<i128>),
}

impl PerRow {
    fn at(&self, i: usize) -> i128 {
        match self {
            PerRow::One(v) => *v,
            PerRow::Each(v) => v.get(i).copied().unwrap_or(0),
        }
    }
}

fn as_array(v: &ColumnarValue) -> Result<(ArrayRef, bool)> {
    Ok(match v {
        ColumnarValue::Array(a) => (a.clone(), false),
        ColumnarValue::Scalar(s) => (s.to_array()?, true),
    })
}

fn collect(a: ArrayRef, scalar: bool) -> Result<PerRow> {
    let a = arrow::compute::cast(&a, &DataType::Int64)?;
    let a = a.as_primitive::<Int64Type>();
    let v: Vec<i128> = (0..a.len())
        .map(|i| {
            if a.is_null(i) {
                0
            } else {
                a.value(i).max(0) as i128
            }
        })
        .collect();
    Ok(if scalar {
        PerRow::One(v.first().copied().unwrap_or(0))
    } else {
        PerRow::Each(v)
    })
}

/// Integer arguments (null and negative count as 0).
fn ints(v: &ColumnarValue) -> Result<PerRow> {
    let (a, scalar) = as_array(v)?;
    collect(a, scalar)
}

/// Byte lengths of string or binary arguments; 8 for anything else (a number).
fn lengths(v: &ColumnarValue) -> Result<PerRow> {
    let (a, scalar) = as_array(v)?;
    let lens = match a.data_type() {
        DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Binary
        | DataType::LargeBinary
        | DataType::Utf8View
        | DataType::BinaryView => {
            let a = match a.data_type() {
                DataType::Utf8View => arrow::compute::cast(&a, &DataType::Utf8)?,
                DataType::BinaryView => arrow::compute::cast(&a, &DataType::Binary)?,
                _ => a,
            };
            arrow::compute::kernels::length::length(&a)?
        }
        _ => return Ok(PerRow::One(8)),
    };
    collect(lens, scalar)
}

impl Bounded {
    /// Bytes the call would produce for the batch.
    fn bytes(&self, args: &ScalarFunctionArgs) -> Result<i128> {
        let a = &args.args;
        let all_scalar = a.iter().all(|v| matches!(v, ColumnarValue::Scalar(_)));
        let rows = if all_scalar { 1 } else { args.number_rows };
        let arg = |i: usize| {
            a.get(i).ok_or_else(|| {
                DataFusionError::Plan(format!("{}: missing argument {}", self.inner.name(), i + 1))
            })
        };
        let mut total: i128 = 0;
        match self.cost {
            Cost::Repeat => {
                let (s, n) = (lengths(arg(0)?)?, ints(arg(1)?)?);
                for i in 0..rows {
                    total = total.saturating_add(s.at(i).saturating_mul(n.at(i)));
                }
            }
            Cost::Pad => {
                let n = ints(arg(1)?)?;
                for i in 0..rows {
                    total = total.saturating_add(n.at(i).saturating_mul(4));
                }
            }
            Cost::Replace => {
                let (s, to) = (lengths(arg(0)?)?, lengths(arg(2)?)?);
                for i in 0..rows {
                    total = total.saturating_add((s.at(i) + 1).saturating_mul(to.at(i) + 1));
                }
            }
            Cost::Elements => {
                let elem = match self.inner.name() {
                    // array_repeat(element, count)
                    "array_repeat" => lengths(arg(0)?)?,
                    _ => match a.get(2) {
                        Some(v) => lengths(v)?,
                        None => PerRow::One(8),
                    },
                };
                let n = ints(arg(1)?)?;
                for i in 0..rows {
                    total = total.saturating_add(n.at(i).saturating_mul(elem.at(i).max(8)));
                }
            }
        }
        Ok(total)
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let bytes = self.bytes(&args)?;
        if bytes > self.limit as i128 {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{}() would produce {} MiB in one call, over the query memory limit of {} MiB (--query-memory-mb)",
                self.inner.name(),
                bytes >> 20,
                self.limit >> 20
            )));
        }
        self.inner.invoke_with_args(args)
    }
}
