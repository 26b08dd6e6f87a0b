//! A runner for Prometheus's `promqltest` file format (`load` and `eval` blocks), over the
//! case files in `testdata/`. Loaded series are sampled series (as Envoy's stats are), so
//! the evaluator's Prometheus semantics are checked against Prometheus's own expectations.

use std::collections::{BTreeMap, HashMap};

use super::eval::{Evaluator, Value, selector_key, selectors};
use super::series::{Labels, Series, matches, metric_name};

fn parse_duration_ms(s: &str) -> i64 {
    promql_parser::util::parse_duration(s)
        .unwrap_or_else(|e| panic!("bad duration {s}: {e}"))
        .as_millis() as i64
}

/// `metric{a="b"}` → labels (with `__name__`).
fn parse_series_desc(s: &str) -> Labels {
    let expr = promql_parser::parser::parse(s).unwrap_or_else(|e| panic!("bad series {s}: {e}"));
    let promql_parser::parser::Expr::VectorSelector(vs) = expr else {
        panic!("not a series: {s}")
    };
    let mut l = Labels::new();
    if let Some(n) = vs.name {
        l.insert("__name__".into(), n);
    }
    for m in vs.matchers.matchers {
        l.insert(m.name, m.value);
    }
    l
}

/// Splits `desc values…` where desc may contain spaces inside braces.
fn split_desc(line: &str) -> (&str, &str) {
    let end = match line.find('{') {
        Some(_) => line.find('}').map_or(line.len(), |i| i + 1),
        None => line.find(char::is_whitespace).unwrap_or(line.len()),
    };
    (line[..end].trim(), line[end..].trim())
}

/// Expands `1+2x3 _ 5 stale` into per-step values (None = no sample).
fn expand(values: &str) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    for tok in values.split_whitespace() {
        if tok == "_" || tok == "stale" {
            out.push(None);
            continue;
        }
        if let Some((head, n)) = tok.split_once('x') {
            let n: usize = n.parse().unwrap_or_else(|_| panic!("bad count in {tok}"));
            let (start, incr) = match head.rfind(['+', '-']).filter(|i| *i > 0) {
                Some(i) => {
                    let sign = if &head[i..=i] == "-" { -1.0 } else { 1.0 };
                    (
                        head[..i].parse::<f64>().unwrap(),
                        sign * head[i + 1..].parse::<f64>().unwrap(),
                    )
                }
                None => (head.parse::<f64>().unwrap(), 0.0),
            };
            for k in 0..=n {
                out.push(Some(start + incr * k as f64));
            }
            continue;
        }
        out.push(Some(parse_num(tok)));
    }
    out
}

fn parse_num(s: &str) -> f64 {
    match s {
        "Inf" | "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => s.parse().unwrap_or_else(|_| panic!("bad number {s}")),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1e-9)
}

/// Runs one file; returns the number of evals checked.
pub fn run(name: &str, text: &str) -> usize {
    let mut series: Vec<Series> = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    let mut checked = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        i += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(step) = line.strip_prefix("load ") {
            let step = parse_duration_ms(step.trim());
            while i < lines.len()
                && lines[i].starts_with([' ', '\t'])
                && !lines[i].trim().is_empty()
            {
                let (desc, values) = split_desc(lines[i].trim());
                let labels = parse_series_desc(desc);
                let points = expand(values)
                    .into_iter()
                    .enumerate()
                    .filter_map(|(k, v)| v.map(|v| (k as i64 * step, v)))
                    .collect();
                series.push(Series {
                    labels,
                    points,
                    interpolated: false,
                });
                i += 1;
            }
            continue;
        }
        let (fail, ordered, rest) = if let Some(r) = line.strip_prefix("eval_fail instant at ") {
            (true, false, r)
        } else if let Some(r) = line.strip_prefix("eval_ordered instant at ") {
            (false, true, r)
        } else if let Some(r) = line.strip_prefix("eval instant at ") {
            (false, false, r)
        } else {
            panic!("{name}:{i}: unknown line {line:?}");
        };
        let (at, expr_text) = rest
            .split_once(' ')
            .unwrap_or_else(|| panic!("{name}:{i}: no expression"));
        let t = parse_duration_ms(at);
        let mut expected: Vec<(Option<Labels>, f64)> = Vec::new();
        while i < lines.len() && lines[i].starts_with([' ', '\t']) && !lines[i].trim().is_empty() {
            let l = lines[i].trim();
            if l.starts_with('{')
                || l.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                    && l.contains(' ')
                    && !l.starts_with("Inf")
                    && !l.starts_with("NaN")
            {
                let (desc, v) = split_desc(l);
                let labels = if desc == "{}" {
                    Labels::new()
                } else {
                    parse_series_desc(desc)
                };
                expected.push((Some(labels), parse_num(v)));
            } else {
                expected.push((None, parse_num(l)));
            }
            i += 1;
        }
        let ctx = format!("{name}:{i}: {expr_text}");
        let result = (|| {
            let expr = promql_parser::parser::parse(expr_text).map_err(|e| e.to_string())?;
            let mut sels = Vec::new();
            selectors(&expr, &mut sels).map_err(|e| e.to_string())?;
            let mut map: HashMap<String, Vec<Series>> = HashMap::new();
            for (vs, _) in sels {
                let want = metric_name(&vs.name, &vs.matchers);
                let found = series
                    .iter()
                    .filter(|s| {
                        want.as_ref()
                            .is_none_or(|n| s.labels.get("__name__") == Some(n))
                    })
                    .filter(|s| matches(&s.labels, &vs.matchers))
                    .cloned()
                    .collect();
                map.insert(selector_key(&vs), found);
            }
            let ev = Evaluator {
                series: map,
                now_ms: i64::MAX / 4,
                deadline: None,
            };
            ev.eval(&expr, t).map_err(|e| e.to_string())
        })();
        checked += 1;
        match (fail, result) {
            (true, Err(_)) => {}
            (true, Ok(v)) => panic!("{ctx}: expected an error, got {v:?}"),
            (false, Err(e)) => panic!("{ctx}: {e}"),
            (false, Ok(Value::Scalar(x))) => {
                assert_eq!(expected.len(), 1, "{ctx}: scalar result {x}");
                assert!(
                    close(expected[0].1, x),
                    "{ctx}: got {x}, want {}",
                    expected[0].1
                );
            }
            (false, Ok(Value::Vector(v))) => {
                let got: Vec<(Labels, f64)> = v.into_iter().map(|s| (s.labels, s.value)).collect();
                assert_eq!(
                    got.len(),
                    expected.len(),
                    "{ctx}: got {got:?}, want {expected:?}"
                );
                if ordered {
                    for (g, e) in got.iter().zip(&expected) {
                        assert_eq!(Some(&g.0), e.0.as_ref(), "{ctx}");
                        assert!(close(g.1, e.1), "{ctx}: {g:?} vs {e:?}");
                    }
                } else {
                    let got: BTreeMap<Labels, f64> = got.into_iter().collect();
                    for (l, want) in &expected {
                        let l = l.clone().unwrap_or_default();
                        let g = got
                            .get(&l)
                            .unwrap_or_else(|| panic!("{ctx}: missing {l:?} in {got:?}"));
                        assert!(close(*g, *want), "{ctx}: {l:?} got {g}, want {want}");
                    }
                }
            }
            (false, Ok(other)) => panic!("{ctx}: unexpected result {other:?}"),
        }
    }
    checked
}

#[test]
fn promqltest_files() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/prom/testdata");
    let mut total = 0;
    for entry in std::fs::read_dir(&dir).expect("testdata") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "test") {
            let text = std::fs::read_to_string(&path).expect("read");
            total += run(&path.display().to_string(), &text);
        }
    }
    assert!(total >= 40, "only {total} evals ran");
}
