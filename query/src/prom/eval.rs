//! A PromQL evaluator for the subset Istio's dashboards and Kiali-style queries use, over the
//! series in `series`. Parsing is `promql-parser`'s; anything outside the subset is a
//! `bad_data` error naming the construct — never a wrong number.
//!
//! Semantics follow Prometheus: instant vectors look back 5 minutes for sampled series;
//! range vectors select (t − range, t]; `rate`/`increase`/`delta` extrapolate as Prometheus
//! does for sampled series; rollup counters are exact between bucket boundaries (see
//! `series`), so no extrapolation is needed for them.

use std::collections::{BTreeMap, HashMap, HashSet};

use promql_parser::parser::token::{self, TokenId};
use promql_parser::parser::{
    AggregateExpr, BinaryExpr, Call, Expr, LabelModifier, Offset, VectorMatchCardinality,
    VectorSelector,
};

use super::series::{Labels, Series};

pub const LOOKBACK_MS: i64 = 5 * 60 * 1000;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub value: f64,
}

#[derive(Debug, Clone)]
pub enum Value {
    Scalar(f64),
    String(String),
    Vector(Vec<Sample>),
    Matrix(Vec<(Labels, Vec<(i64, f64)>)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct EvalError(pub String);

impl std::fmt::Display for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(m: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError(m.into()))
}

/// A selector's identity (its text, offset included), to find its prefetched series.
pub fn selector_key(vs: &VectorSelector) -> String {
    vs.to_string()
}

/// Every vector selector in `e`, with the widest range it is read over (ms, offset included).
pub fn selectors(e: &Expr, out: &mut Vec<(VectorSelector, i64)>) -> Result<(), EvalError> {
    match e {
        Expr::VectorSelector(vs) => out.push((vs.clone(), offset_ms(&vs.offset))),
        Expr::MatrixSelector(ms) => out.push((
            ms.vs.clone(),
            ms.range.as_millis() as i64 + offset_ms(&ms.vs.offset),
        )),
        Expr::Aggregate(a) => {
            selectors(&a.expr, out)?;
            if let Some(p) = &a.param {
                selectors(p, out)?;
            }
        }
        Expr::Unary(u) => selectors(&u.expr, out)?,
        Expr::Binary(b) => {
            selectors(&b.lhs, out)?;
            selectors(&b.rhs, out)?;
        }
        Expr::Paren(p) => selectors(&p.expr, out)?,
        Expr::Call(c) => {
            for a in &c.args.args {
                selectors(a, out)?;
            }
        }
        Expr::Subquery(_) => return err("subqueries (expr[range:step]) are not supported"),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {}
        Expr::Extension(_) => return err("extension expressions are not supported"),
    }
    Ok(())
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        Some(Offset::Pos(d)) => d.as_millis() as i64,
        Some(Offset::Neg(d)) => -(d.as_millis() as i64),
        None => 0,
    }
}

pub struct Evaluator {
    pub series: HashMap<String, Vec<Series>>,
    pub now_ms: i64,
    /// When evaluation gives up ("query timed out"): checked at every node, so a subquery
    /// over many steps or a long range stops at the query's deadline and frees its thread.
    pub deadline: Option<std::time::Instant>,
}

fn drop_name(mut l: Labels) -> Labels {
    l.remove("__name__");
    l
}

impl Evaluator {
    pub fn eval(&self, e: &Expr, t: i64) -> Result<Value, EvalError> {
        if self
            .deadline
            .is_some_and(|d| std::time::Instant::now() >= d)
        {
            return Err(EvalError("query timed out".into()));
        }
        match e {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Value::Scalar(v) => Ok(Value::Scalar(-v)),
                Value::Vector(v) => Ok(Value::Vector(
                    v.into_iter()
                        .map(|s| Sample {
                            labels: drop_name(s.labels),
                            value: -s.value,
                        })
                        .collect(),
                )),
                _ => err("unary minus needs a scalar or an instant vector"),
            },
            Expr::VectorSelector(vs) => {
                if vs.at.is_some() {
                    return err("the @ modifier is not supported");
                }
                let at = t - offset_ms(&vs.offset);
                let series = self.series.get(&selector_key(vs)).map_or(&[][..], |v| v);
                Ok(Value::Vector(
                    series
                        .iter()
                        .filter_map(|s| {
                            s.value_at(at, LOOKBACK_MS, self.now_ms)
                                .map(|value| Sample {
                                    labels: s.labels.clone(),
                                    value,
                                })
                        })
                        .collect(),
                ))
            }
            Expr::MatrixSelector(ms) => {
                if ms.vs.at.is_some() {
                    return err("the @ modifier is not supported");
                }
                let at = t - offset_ms(&ms.vs.offset);
                let range = ms.range.as_millis() as i64;
                let series = self
                    .series
                    .get(&selector_key(&ms.vs))
                    .map_or(&[][..], |v| v);
                Ok(Value::Matrix(
                    series
                        .iter()
                        .map(|s| {
                            let pts = s.range(at, range, self.now_ms);
                            (s.labels.clone(), pts, s.interpolated)
                        })
                        .filter(|(_, p, _)| !p.is_empty())
                        .map(|(l, p, interp)| {
                            // mark interpolated series so rate() knows not to extrapolate
                            let mut l = l;
                            if interp {
                                l.insert(INTERP.into(), String::new());
                            }
                            (l, p)
                        })
                        .collect(),
                ))
            }
            Expr::Call(c) => self.call(c, t),
            Expr::Aggregate(a) => self.aggregate(a, t),
            Expr::Binary(b) => self.binary(b, t),
            Expr::Subquery(_) => err("subqueries (expr[range:step]) are not supported"),
            Expr::Extension(_) => err("extension expressions are not supported"),
        }
    }

    fn vector(&self, e: &Expr, t: i64, what: &str) -> Result<Vec<Sample>, EvalError> {
        match self.eval(e, t)? {
            Value::Vector(v) => Ok(v),
            _ => err(format!("{what} needs an instant vector")),
        }
    }

    fn scalar(&self, e: &Expr, t: i64, what: &str) -> Result<f64, EvalError> {
        match self.eval(e, t)? {
            Value::Scalar(v) => Ok(v),
            _ => err(format!("{what} needs a scalar")),
        }
    }

    fn string(&self, e: &Expr, t: i64, what: &str) -> Result<String, EvalError> {
        match self.eval(e, t)? {
            Value::String(v) => Ok(v),
            _ => err(format!("{what} needs a string")),
        }
    }

    fn call(&self, c: &Call, t: i64) -> Result<Value, EvalError> {
        let name = c.func.name;
        let args = &c.args.args;
        let arg = |i: usize| -> Result<&Expr, EvalError> {
            args.get(i)
                .map(|b| &**b)
                .ok_or_else(|| EvalError(format!("{name}(): missing argument {}", i + 1)))
        };
        let map_vec = |f: &dyn Fn(f64) -> f64| -> Result<Value, EvalError> {
            let v = self.vector(arg(0)?, t, name)?;
            Ok(Value::Vector(
                v.into_iter()
                    .map(|s| Sample {
                        labels: drop_name(s.labels),
                        value: f(s.value),
                    })
                    .collect(),
            ))
        };
        match name {
            "rate" | "increase" | "delta" | "irate" | "idelta" => {
                let Expr::MatrixSelector(ms) = arg(0)? else {
                    return err(format!("{name}() needs a range vector selector"));
                };
                let range_ms = ms.range.as_millis() as i64;
                let Value::Matrix(m) = self.eval(arg(0)?, t)? else {
                    return err(format!("{name}() needs a range vector"));
                };
                let at = t - offset_ms(&ms.vs.offset);
                let out = m
                    .into_iter()
                    .filter_map(|(mut labels, pts)| {
                        let interp = labels.remove(INTERP).is_some();
                        let v = match name {
                            "irate" | "idelta" => instant(&pts, name == "irate", name != "idelta"),
                            _ => extrapolated(
                                &pts,
                                at - range_ms,
                                at,
                                name != "delta",
                                name == "rate",
                                interp,
                            ),
                        }?;
                        Some(Sample {
                            labels: drop_name(labels),
                            value: v,
                        })
                    })
                    .collect();
                Ok(Value::Vector(out))
            }
            "round" => {
                let to = match args.get(1) {
                    Some(a) => self.scalar(a, t, "round()")?,
                    None => 1.0,
                };
                map_vec(&|v| {
                    if to == 0.0 {
                        v
                    } else {
                        // Prometheus: floor(v / to + 0.5) * to, with the inverse for precision
                        let inv = 1.0 / to;
                        (v * inv + 0.5).floor() / inv
                    }
                })
            }
            "abs" => map_vec(&f64::abs),
            "ceil" => map_vec(&f64::ceil),
            "floor" => map_vec(&f64::floor),
            "clamp_min" => {
                let m = self.scalar(arg(1)?, t, "clamp_min()")?;
                map_vec(&|v| v.max(m))
            }
            "clamp_max" => {
                let m = self.scalar(arg(1)?, t, "clamp_max()")?;
                map_vec(&|v| v.min(m))
            }
            "vector" => Ok(Value::Vector(vec![Sample {
                labels: Labels::new(),
                value: self.scalar(arg(0)?, t, "vector()")?,
            }])),
            "scalar" => {
                let v = self.vector(arg(0)?, t, "scalar()")?;
                Ok(Value::Scalar(if v.len() == 1 {
                    v[0].value
                } else {
                    f64::NAN
                }))
            }
            "time" => Ok(Value::Scalar(t as f64 / 1000.0)),
            "label_join" => {
                let v = self.vector(arg(0)?, t, "label_join()")?;
                let dst = self.string(arg(1)?, t, "label_join()")?;
                let sep = self.string(arg(2)?, t, "label_join()")?;
                let srcs = args[3..]
                    .iter()
                    .map(|a| self.string(a, t, "label_join()"))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Value::Vector(
                    v.into_iter()
                        .map(|mut s| {
                            let joined: Vec<&str> = srcs
                                .iter()
                                .map(|k| s.labels.get(k).map_or("", String::as_str))
                                .collect();
                            let joined = joined.join(&sep);
                            set_label(&mut s.labels, &dst, joined);
                            s
                        })
                        .collect(),
                ))
            }
            "label_replace" => {
                let v = self.vector(arg(0)?, t, "label_replace()")?;
                let dst = self.string(arg(1)?, t, "label_replace()")?;
                let repl = self.string(arg(2)?, t, "label_replace()")?;
                let src = self.string(arg(3)?, t, "label_replace()")?;
                let re = self.string(arg(4)?, t, "label_replace()")?;
                let re = regex::Regex::new(&format!("^(?s:{re})$"))
                    .map_err(|e| EvalError(format!("label_replace(): invalid regex: {e}")))?;
                Ok(Value::Vector(
                    v.into_iter()
                        .map(|mut s| {
                            let val = s.labels.get(&src).cloned().unwrap_or_default();
                            if let Some(caps) = re.captures(&val) {
                                let mut out = String::new();
                                caps.expand(&repl, &mut out);
                                set_label(&mut s.labels, &dst, out);
                            }
                            s
                        })
                        .collect(),
                ))
            }
            "histogram_quantile" => {
                let q = self.scalar(arg(0)?, t, "histogram_quantile()")?;
                let v = self.vector(arg(1)?, t, "histogram_quantile()")?;
                Ok(Value::Vector(histogram_quantile(q, v)))
            }
            other => err(format!("function {other}() is not supported")),
        }
    }

    fn aggregate(&self, a: &AggregateExpr, t: i64) -> Result<Value, EvalError> {
        let op = a.op.to_string().to_lowercase();
        let v = self.vector(&a.expr, t, &format!("{op}()"))?;
        let key = |l: &Labels| -> Labels {
            match &a.modifier {
                Some(LabelModifier::Include(ls)) => l
                    .iter()
                    .filter(|(k, _)| ls.labels.iter().any(|x| x == *k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                Some(LabelModifier::Exclude(ls)) => l
                    .iter()
                    .filter(|(k, _)| *k != "__name__" && !ls.labels.iter().any(|x| x == *k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                None => Labels::new(),
            }
        };
        let mut groups: BTreeMap<Labels, Vec<Sample>> = BTreeMap::new();
        for s in v {
            groups.entry(key(&s.labels)).or_default().push(s);
        }
        let out: Vec<Sample> = match op.as_str() {
            "sum" | "avg" | "min" | "max" | "count" | "group" => groups
                .into_iter()
                .map(|(labels, ss)| {
                    let vals = ss.iter().map(|s| s.value);
                    let value = match op.as_str() {
                        "sum" => vals.sum(),
                        "avg" => vals.sum::<f64>() / ss.len() as f64,
                        "min" => {
                            vals.fold(f64::NAN, |a, b| if a.is_nan() || b < a { b } else { a })
                        }
                        "max" => {
                            vals.fold(f64::NAN, |a, b| if a.is_nan() || b > a { b } else { a })
                        }
                        "count" => ss.len() as f64,
                        _ => 1.0,
                    };
                    Sample { labels, value }
                })
                .collect(),
            "topk" | "bottomk" => {
                let Some(p) = &a.param else {
                    return err(format!("{op}() needs k"));
                };
                let k = self.scalar(p, t, &format!("{op}()"))?;
                if !k.is_finite() || k < 0.0 {
                    return err(format!("{op}(): k must be a non-negative number"));
                }
                let k = k as usize;
                let mut out = Vec::new();
                for (_, mut ss) in groups {
                    ss.sort_by(|a, b| {
                        if op == "topk" {
                            b.value.total_cmp(&a.value)
                        } else {
                            a.value.total_cmp(&b.value)
                        }
                    });
                    out.extend(ss.into_iter().take(k));
                }
                out
            }
            other => return err(format!("aggregation {other}() is not supported")),
        };
        Ok(Value::Vector(out))
    }

    fn binary(&self, b: &BinaryExpr, t: i64) -> Result<Value, EvalError> {
        let op = b.op.id();
        let is_set = matches!(op, token::T_LAND | token::T_LOR | token::T_LUNLESS);
        let is_cmp = matches!(
            op,
            token::T_EQLC
                | token::T_NEQ
                | token::T_GTR
                | token::T_LSS
                | token::T_GTE
                | token::T_LTE
        );
        let bool_mod = b.modifier.as_ref().is_some_and(|m| m.return_bool);
        let lhs = self.eval(&b.lhs, t)?;
        let rhs = self.eval(&b.rhs, t)?;
        match (lhs, rhs) {
            (Value::Scalar(x), Value::Scalar(y)) => {
                if is_cmp && !bool_mod {
                    return err("comparisons between scalars need the bool modifier");
                }
                Ok(Value::Scalar(apply(op, x, y)?.unwrap_or(0.0)))
            }
            (Value::Vector(v), Value::Scalar(y)) | (Value::Scalar(y), Value::Vector(v))
                if is_set =>
            {
                let _ = (v, y);
                err("and/or/unless need instant vectors on both sides")
            }
            (Value::Vector(v), Value::Scalar(y)) => {
                Ok(Value::Vector(scalar_op(op, v, y, false, is_cmp, bool_mod)?))
            }
            (Value::Scalar(x), Value::Vector(v)) => {
                Ok(Value::Vector(scalar_op(op, v, x, true, is_cmp, bool_mod)?))
            }
            (Value::Vector(l), Value::Vector(r)) => {
                let modifier = b.modifier.as_ref();
                let matching = modifier.and_then(|m| m.matching.as_ref());
                let sig = |labels: &Labels| -> Labels {
                    match matching {
                        Some(LabelModifier::Include(ls)) => labels
                            .iter()
                            .filter(|(k, _)| ls.labels.iter().any(|x| x == *k))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        Some(LabelModifier::Exclude(ls)) => labels
                            .iter()
                            .filter(|(k, _)| *k != "__name__" && !ls.labels.iter().any(|x| x == *k))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        None => drop_name(labels.clone()),
                    }
                };
                if is_set {
                    let rsigs: HashSet<Labels> = r.iter().map(|s| sig(&s.labels)).collect();
                    return Ok(Value::Vector(match op {
                        token::T_LAND => l
                            .into_iter()
                            .filter(|s| rsigs.contains(&sig(&s.labels)))
                            .collect(),
                        token::T_LUNLESS => l
                            .into_iter()
                            .filter(|s| !rsigs.contains(&sig(&s.labels)))
                            .collect(),
                        _ => {
                            let lsigs: HashSet<Labels> = l.iter().map(|s| sig(&s.labels)).collect();
                            let mut out = l;
                            out.extend(r.into_iter().filter(|s| !lsigs.contains(&sig(&s.labels))));
                            out
                        }
                    }));
                }
                let card = modifier.map_or(&VectorMatchCardinality::OneToOne, |m| &m.card);
                let (many, one, swapped, include) = match card {
                    VectorMatchCardinality::OneToOne | VectorMatchCardinality::ManyToMany => {
                        (l, r, false, None)
                    }
                    VectorMatchCardinality::ManyToOne(ls) => (l, r, false, Some(ls)),
                    VectorMatchCardinality::OneToMany(ls) => (r, l, true, Some(ls)),
                };
                let mut one_by_sig: HashMap<Labels, &Sample> = HashMap::new();
                for s in &one {
                    if one_by_sig.insert(sig(&s.labels), s).is_some() {
                        return err(format!(
                            "found duplicate series for the match group {:?} on the {} side; many-to-many matching not allowed: matching labels must be unique on one side",
                            sig(&s.labels),
                            if swapped { "left" } else { "right" }
                        ));
                    }
                }
                let mut seen: HashSet<Labels> = HashSet::new();
                let mut out = Vec::new();
                for s in many {
                    let key = sig(&s.labels);
                    let Some(o) = one_by_sig.get(&key) else {
                        continue;
                    };
                    let (x, y) = if swapped {
                        (o.value, s.value)
                    } else {
                        (s.value, o.value)
                    };
                    let Some(v) = apply(op, x, y)? else {
                        if !bool_mod {
                            continue;
                        }
                        // comparison false with bool: 0
                        out.push(Sample {
                            labels: result_labels(&s.labels, o, include, matching, true),
                            value: 0.0,
                        });
                        continue;
                    };
                    let value = if is_cmp && !bool_mod {
                        if swapped { o.value } else { s.value }
                    } else {
                        v
                    };
                    let labels =
                        result_labels(&s.labels, o, include, matching, !is_cmp || bool_mod);
                    if include.is_none() && !seen.insert(labels.clone()) {
                        return err(
                            "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)",
                        );
                    }
                    out.push(Sample { labels, value });
                }
                Ok(Value::Vector(out))
            }
            _ => err("binary operators need scalars or instant vectors"),
        }
    }
}

/// Prometheus's result metric of a vector-vector operation.
fn result_labels(
    many: &Labels,
    one: &Sample,
    include: Option<&promql_parser::label::Labels>,
    matching: Option<&LabelModifier>,
    drop: bool,
) -> Labels {
    let mut l = if drop {
        drop_name(many.clone())
    } else {
        many.clone()
    };
    match include {
        None => match matching {
            Some(LabelModifier::Include(ls)) => {
                l.retain(|k, _| ls.labels.iter().any(|x| x == k));
            }
            Some(LabelModifier::Exclude(ls)) => {
                l.retain(|k, _| !ls.labels.iter().any(|x| x == k));
            }
            None => {}
        },
        Some(extra) => {
            for k in &extra.labels {
                match one.labels.get(k) {
                    Some(v) if !v.is_empty() => {
                        l.insert(k.clone(), v.clone());
                    }
                    _ => {
                        l.remove(k);
                    }
                }
            }
        }
    }
    l
}

fn set_label(l: &mut Labels, k: &str, v: String) {
    if v.is_empty() {
        l.remove(k);
    } else {
        l.insert(k.to_string(), v);
    }
}

/// Marks a matrix series that comes from a rollup counter (never shown to users).
const INTERP: &str = "__meshscope_interpolated__";

/// `op` on two numbers; `None` for a comparison that is false.
fn apply(op: TokenId, x: f64, y: f64) -> Result<Option<f64>, EvalError> {
    let b = |c: bool| if c { Some(1.0) } else { None };
    Ok(match op {
        token::T_ADD => Some(x + y),
        token::T_SUB => Some(x - y),
        token::T_MUL => Some(x * y),
        token::T_DIV => Some(x / y),
        token::T_MOD => Some(x % y),
        token::T_POW => Some(x.powf(y)),
        token::T_EQLC => b(x == y),
        token::T_NEQ => b(x != y),
        token::T_GTR => b(x > y),
        token::T_LSS => b(x < y),
        token::T_GTE => b(x >= y),
        token::T_LTE => b(x <= y),
        _ => {
            return err(format!(
                "operator {} is not supported",
                token::TokenType::new(op)
            ));
        }
    })
}

fn scalar_op(
    op: TokenId,
    v: Vec<Sample>,
    s: f64,
    scalar_left: bool,
    is_cmp: bool,
    bool_mod: bool,
) -> Result<Vec<Sample>, EvalError> {
    let mut out = Vec::with_capacity(v.len());
    for smp in v {
        let (x, y) = if scalar_left {
            (s, smp.value)
        } else {
            (smp.value, s)
        };
        match apply(op, x, y)? {
            Some(_) if is_cmp && !bool_mod => out.push(smp),
            Some(r) => out.push(Sample {
                labels: drop_name(smp.labels),
                value: r,
            }),
            None if bool_mod => out.push(Sample {
                labels: drop_name(smp.labels),
                value: 0.0,
            }),
            None => {}
        }
    }
    Ok(out)
}

/// Prometheus's `extrapolatedRate`: the increase over [start, end] from the samples inside it,
/// counter resets compensated, extrapolated to the window's edges (not below zero for
/// counters); exact for interpolated rollup counters, whose samples sit on the edges.
fn extrapolated(
    pts: &[(i64, f64)],
    start: i64,
    end: i64,
    counter: bool,
    per_second: bool,
    interp: bool,
) -> Option<f64> {
    if pts.len() < 2 {
        return None;
    }
    let first = pts[0];
    let last = pts[pts.len() - 1];
    let mut result = last.1 - first.1;
    if counter {
        let mut prev = first.1;
        for p in &pts[1..] {
            if p.1 < prev {
                result += prev;
            }
            prev = p.1;
        }
    }
    let range_s = (end - start) as f64 / 1000.0;
    if !interp {
        let sampled = (last.0 - first.0) as f64 / 1000.0;
        let mut to_start = (first.0 - start) as f64 / 1000.0;
        let to_end = (end - last.0) as f64 / 1000.0;
        let avg = sampled / (pts.len() - 1) as f64;
        if counter && result > 0.0 && first.1 >= 0.0 {
            let to_zero = sampled * (first.1 / result);
            if to_zero < to_start {
                to_start = to_zero;
            }
        }
        let threshold = avg * 1.1;
        let mut extrapolate = sampled;
        extrapolate += if to_start < threshold {
            to_start
        } else {
            avg / 2.0
        };
        extrapolate += if to_end < threshold {
            to_end
        } else {
            avg / 2.0
        };
        result *= extrapolate / sampled;
    }
    Some(if per_second { result / range_s } else { result })
}

/// `irate`/`idelta`: from the last two samples.
fn instant(pts: &[(i64, f64)], per_second: bool, counter: bool) -> Option<f64> {
    if pts.len() < 2 {
        return None;
    }
    let (a, b) = (pts[pts.len() - 2], pts[pts.len() - 1]);
    let mut d = b.1 - a.1;
    if counter && b.1 < a.1 {
        d = b.1;
    }
    if per_second {
        let dt = (b.0 - a.0) as f64 / 1000.0;
        if dt <= 0.0 {
            return None;
        }
        d /= dt;
    }
    Some(d)
}

/// Prometheus's classic `histogram_quantile` over `le` buckets.
pub fn histogram_quantile(q: f64, v: Vec<Sample>) -> Vec<Sample> {
    let mut groups: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
    for s in v {
        let Some(le) = s.labels.get("le").and_then(|l| parse_le(l)) else {
            continue;
        };
        let mut key = drop_name(s.labels);
        key.remove("le");
        groups.entry(key).or_default().push((le, s.value));
    }
    groups
        .into_iter()
        .filter_map(|(labels, mut b)| {
            b.sort_by(|x, y| x.0.total_cmp(&y.0));
            // merge equal bounds, force monotonic counts
            b.dedup_by(|x, y| {
                if x.0 == y.0 {
                    y.1 += x.1;
                    true
                } else {
                    false
                }
            });
            let mut max = f64::NEG_INFINITY;
            for x in b.iter_mut() {
                if x.1 < max {
                    x.1 = max;
                }
                max = x.1;
            }
            Some(Sample {
                labels,
                value: bucket_quantile(q, &b)?,
            })
        })
        .collect()
}

fn parse_le(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "inf" => Some(f64::INFINITY),
        _ => s.parse().ok(),
    }
}

fn bucket_quantile(q: f64, b: &[(f64, f64)]) -> Option<f64> {
    if q.is_nan() {
        return Some(f64::NAN);
    }
    if q < 0.0 {
        return Some(f64::NEG_INFINITY);
    }
    if q > 1.0 {
        return Some(f64::INFINITY);
    }
    if b.len() < 2 || b.last()?.0 != f64::INFINITY {
        return Some(f64::NAN);
    }
    let total = b.last()?.1;
    if total == 0.0 {
        return Some(f64::NAN);
    }
    let rank = q * total;
    let i = b.iter().position(|x| x.1 >= rank)?;
    if i == b.len() - 1 {
        return Some(b[b.len() - 2].0);
    }
    if i == 0 && b[0].0 <= 0.0 {
        return Some(b[0].0);
    }
    let (start, count_before) = if i == 0 {
        (0.0, 0.0)
    } else {
        (b[i - 1].0, b[i - 1].1)
    };
    let end = b[i].0;
    let count = b[i].1 - count_before;
    let rank = rank - count_before;
    Some(start + (end - start) * (rank / count))
}
