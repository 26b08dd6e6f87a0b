//! A mergeable latency sketch: DDSketch's logarithmic buckets (relative accuracy 0.5%) in a
//! sparse sorted store.
//!
//! Why not the `sketches-ddsketch` crate: its store is dense (one counter per bucket between
//! the smallest and largest value seen, ~3 KB for 1 ms…5 s), and the rollups keep one sketch
//! per (minute, latency group of label sets) — hundreds of thousands of them. Access-log
//! durations are whole milliseconds, so a minute's edge rarely has more than a few dozen
//! distinct buckets; the sparse store keeps those only.

/// Relative accuracy: any quantile is within 0.5% of a value of the right rank.
pub const RELATIVE_ACCURACY: f64 = 0.005;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

/// Values at or below this go to the zero bucket (durations are ≥ 0; 0 ms is common).
const MIN_VALUE: f64 = 1e-3;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencySketch {
    zero: u64,
    /// (bucket key, count), sorted by key.
    bins: Vec<(i32, u64)>,
    count: u64,
}

impl LatencySketch {
    pub fn new() -> LatencySketch {
        LatencySketch::default()
    }

    fn key(v: f64) -> i32 {
        (v.ln() / gamma().ln()).ceil() as i32
    }

    /// The value a bucket stands for: within the relative accuracy of anything in it.
    fn value(key: i32) -> f64 {
        let g = gamma();
        2.0 * (key as f64 * g.ln()).exp() / (g + 1.0)
    }

    pub fn add(&mut self, v: f64) {
        self.add_n(v, 1);
    }

    pub fn add_n(&mut self, v: f64, n: u64) {
        if n == 0 || v.is_nan() {
            return;
        }
        self.count += n;
        if v <= MIN_VALUE {
            self.zero += n;
            return;
        }
        let k = Self::key(v);
        match self.bins.binary_search_by_key(&k, |b| b.0) {
            Ok(i) => self.bins[i].1 += n,
            Err(i) => self.bins.insert(i, (k, n)),
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn merge(&mut self, other: &LatencySketch) {
        if other.count == 0 {
            return;
        }
        self.count += other.count;
        self.zero += other.zero;
        if self.bins.is_empty() {
            self.bins.clone_from(&other.bins);
            return;
        }
        // A few bins into many (a minute's label set into a window's edge): in place.
        if other.bins.len() <= 8 || other.bins.len() * 8 <= self.bins.len() {
            for &(k, c) in &other.bins {
                match self.bins.binary_search_by_key(&k, |b| b.0) {
                    Ok(i) => self.bins[i].1 += c,
                    Err(i) => self.bins.insert(i, (k, c)),
                }
            }
            return;
        }
        let mut out = Vec::with_capacity(self.bins.len().max(other.bins.len()));
        let (mut a, mut b) = (self.bins.iter().peekable(), other.bins.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.0 == y.0 => {
                    out.push((x.0, x.1 + y.1));
                    a.next();
                    b.next();
                }
                (Some(x), Some(y)) if x.0 < y.0 => {
                    out.push(**x);
                    a.next();
                }
                (Some(_), Some(y)) => {
                    out.push(**y);
                    b.next();
                }
                (Some(x), None) => {
                    out.push(**x);
                    a.next();
                }
                (None, Some(y)) => {
                    out.push(**y);
                    b.next();
                }
                (None, None) => break,
            }
        }
        self.bins = out;
    }

    /// The q-quantile by nearest rank: the value of rank ⌈q·n⌉ (1-based) in sorted order,
    /// within the relative accuracy. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = nearest_rank(q, self.count);
        let mut seen = self.zero;
        if seen >= rank {
            return Some(0.0);
        }
        for &(k, c) in &self.bins {
            seen += c;
            if seen >= rank {
                return Some(Self::value(k));
            }
        }
        self.bins.last().map(|b| Self::value(b.0))
    }
}

/// Quantiles of the union of several sketches without building the union: the graph has
/// each edge's sketches from every label set and bucket, and merging sorted bin lists pair by
/// pair costs far more than counting them once into a scratch row reused across edges.
///
/// Several unions over overlapping parts (an edge's own latency and the latency each reporter
/// measured) are counted in one pass, each into its own row: the parts' bins are scattered over
/// the rollups' memory, so reading them once is what matters.
#[derive(Default)]
pub struct UnionQuantiles {
    dense: Vec<u64>,
    /// Sums of `dense` per block of `BLOCK` bins, so finding a rank skips empty stretches.
    blocks: Vec<u64>,
    pairs: Vec<(i32, u64, u8)>,
}

const BLOCK: usize = 32;

/// The walk up one row's bins in key order, filling the quantiles whose rank is reached.
struct RankWalk<const N: usize> {
    ranks: [u64; N],
    seen: u64,
    next: usize,
    out: [Option<f64>; N],
}

impl<const N: usize> RankWalk<N> {
    /// Quantiles `qs` of `count` values, `zero` of them in the zero bucket.
    fn new(qs: [f64; N], count: u64, zero: u64) -> RankWalk<N> {
        let mut w = RankWalk {
            ranks: qs.map(|q| nearest_rank(q, count)),
            seen: zero,
            next: 0,
            out: [None; N],
        };
        if count == 0 {
            w.next = N;
        }
        while w.next < N && w.ranks[w.next] <= zero {
            w.out[w.next] = Some(0.0);
            w.next += 1;
        }
        w
    }

    fn done(&self) -> bool {
        self.next == N
    }

    fn visit(&mut self, k: i32, c: u64) {
        self.seen += c;
        while self.next < N && self.ranks[self.next] <= self.seen {
            self.out[self.next] = Some(LatencySketch::value(k));
            self.next += 1;
        }
    }

    /// Counts are exact, so every rank is reached; this covers a bin list that lost a count.
    fn finish(mut self, hi: i32) -> [Option<f64>; N] {
        let last = LatencySketch::value(hi);
        for o in self.out.iter_mut().skip(self.next) {
            *o = Some(last);
        }
        self.out
    }
}

impl UnionQuantiles {
    /// The nearest-rank quantiles `qs` (ascending) of `R` unions of `parts`, exactly what
    /// merging each union's sketches and calling [`LatencySketch::quantile`] would give
    /// (`None`s when empty), with each union's count. A part `(sketch, rows)` belongs to union
    /// `r` when bit `r` of `rows` is set.
    /// `R` is at most 8. The first pass reads the parts' counts and key bounds; the second
    /// adds their bins into one row per union (or sorts them, when few bins span many keys).
    pub fn quantiles_rows<const R: usize, const N: usize>(
        &mut self,
        parts: &[(&LatencySketch, u8)],
        qs: [f64; N],
    ) -> [([Option<f64>; N], u64); R] {
        let rows_mask = ((1u16 << R) - 1) as u8;
        let (mut count, mut zero) = ([0u64; R], [0u64; R]);
        let (mut lo, mut hi, mut nbins) = (i32::MAX, i32::MIN, 0usize);
        for &(p, mask) in parts {
            let mask = mask & rows_mask;
            for r in 0..R {
                let on = u64::from((mask >> r) & 1);
                count[r] += p.count * on;
                zero[r] += p.zero * on;
            }
            let n = p.bins.len() * usize::from(mask != 0);
            nbins += n;
            if n > 0 {
                lo = lo.min(p.bins[0].0);
                hi = hi.max(p.bins[n - 1].0);
            }
        }
        let mut walks: [RankWalk<N>; R] =
            std::array::from_fn(|r| RankWalk::new(qs, count[r], zero[r]));
        if nbins > 0 && walks.iter().any(|w| !w.done()) {
            let range = (hi as i64 - lo as i64 + 1) as usize;
            if nbins * 8 < range {
                self.sorted_walks(parts, rows_mask, &mut walks);
            } else {
                self.dense_walks(parts, rows_mask, lo, range, &mut walks);
            }
        }
        let mut r = 0;
        walks.map(|w| {
            let c = count[r];
            r += 1;
            (if nbins > 0 { w.finish(hi) } else { w.out }, c)
        })
    }

    /// Few bins over a wide range: all of them sorted by key.
    fn sorted_walks<const R: usize, const N: usize>(
        &mut self,
        parts: &[(&LatencySketch, u8)],
        rows_mask: u8,
        walks: &mut [RankWalk<N>; R],
    ) {
        self.pairs.clear();
        for &(p, mask) in parts {
            let mask = mask & rows_mask;
            if mask != 0 {
                self.pairs.extend(p.bins.iter().map(|&(k, c)| (k, c, mask)));
            }
        }
        self.pairs.sort_unstable_by_key(|b| b.0);
        for (r, walk) in walks.iter_mut().enumerate() {
            for &(k, c, mask) in &self.pairs {
                if walk.done() {
                    break;
                }
                if mask & (1 << r) != 0 {
                    walk.visit(k, c);
                }
            }
        }
    }

    /// Bins counted into one row per union spanning the parts' keys, with block sums.
    fn dense_walks<const R: usize, const N: usize>(
        &mut self,
        parts: &[(&LatencySketch, u8)],
        rows_mask: u8,
        lo: i32,
        range: usize,
        walks: &mut [RankWalk<N>; R],
    ) {
        let nblocks = range.div_ceil(BLOCK);
        self.dense.clear();
        self.dense.resize(range * R, 0);
        self.blocks.clear();
        self.blocks.resize(nblocks * R, 0);
        for &(p, mask) in parts {
            let mut m = mask & rows_mask;
            while m != 0 {
                let r = m.trailing_zeros() as usize;
                m &= m - 1;
                let (dense, blocks) = (
                    &mut self.dense[r * range..(r + 1) * range],
                    &mut self.blocks[r * nblocks..(r + 1) * nblocks],
                );
                for &(k, c) in &p.bins {
                    let i = (k - lo) as usize;
                    dense[i] += c;
                    blocks[i / BLOCK] += c;
                }
            }
        }
        for (r, walk) in walks.iter_mut().enumerate() {
            let dense = &self.dense[r * range..(r + 1) * range];
            let blocks = &self.blocks[r * nblocks..(r + 1) * nblocks];
            'blocks: for (b, &sum) in blocks.iter().enumerate() {
                if walk.done() {
                    break;
                }
                if walk.seen + sum < walk.ranks[walk.next] {
                    walk.seen += sum;
                    continue;
                }
                for (i, &c) in dense
                    .iter()
                    .enumerate()
                    .take((b + 1) * BLOCK)
                    .skip(b * BLOCK)
                {
                    if c > 0 {
                        walk.visit(lo + i as i32, c);
                        if walk.done() {
                            break 'blocks;
                        }
                    }
                }
            }
        }
    }
}

/// 1-based nearest rank ⌈q·n⌉, clamped to 1…n. The convention every percentile here uses,
/// so tests computing percentiles from raw rows agree with the sketch.
pub fn nearest_rank(q: f64, n: u64) -> u64 {
    ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).clamp(1, n.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(values: &mut [f64], q: f64) -> f64 {
        values.sort_by(|a, b| a.total_cmp(b));
        values[nearest_rank(q, values.len() as u64) as usize - 1]
    }

    #[test]
    fn quantiles_are_within_the_relative_accuracy_after_merging() {
        let mut rng = 12345u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut all = Vec::new();
        let mut merged = LatencySketch::new();
        for part in 0..20 {
            let mut s = LatencySketch::new();
            for _ in 0..(500 + part * 37) {
                // heavy-tailed whole milliseconds, zeros included
                let v = ((next() % 1000) as f64).powf(1.4).floor();
                s.add(v);
                all.push(v);
            }
            merged.merge(&s);
        }
        assert_eq!(merged.count(), all.len() as u64);
        for q in [0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            let want = exact(&mut all, q);
            let got = merged.quantile(q).unwrap();
            if want == 0.0 {
                assert_eq!(got, 0.0, "q={q}");
            } else {
                let err = (got - want).abs() / want;
                assert!(
                    err <= RELATIVE_ACCURACY + 1e-9,
                    "q={q} want {want} got {got}"
                );
            }
        }
    }

    /// A xorshift sequence: the tests' random sketches, the same on every run.
    fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    #[test]
    fn unions_counted_together_equal_each_merged_sketch() {
        let mut next = xorshift(7);
        let mut u = UnionQuantiles::default();
        for parts_n in [1usize, 3, 12, 60] {
            for spread in [2u64, 40, 5_000, 10_000_000] {
                let parts: Vec<(LatencySketch, u8)> = (0..parts_n)
                    .map(|_| {
                        let mut s = LatencySketch::new();
                        for _ in 0..(next() % 25) {
                            s.add((next() % spread) as f64);
                        }
                        // Bit 3 is beyond the three rows asked for: ignored.
                        (s, (next() % 16) as u8)
                    })
                    .collect();
                let qs = [0.0, 0.5, 0.95, 0.99, 1.0];
                let refs: Vec<(&LatencySketch, u8)> = parts.iter().map(|(s, m)| (s, *m)).collect();
                let rows = u.quantiles_rows::<3, 5>(&refs, qs);
                for (r, row) in rows.iter().enumerate() {
                    let mut merged = LatencySketch::new();
                    for (p, m) in &parts {
                        if m & (1 << r) != 0 {
                            merged.merge(p);
                        }
                    }
                    assert_eq!(
                        *row,
                        (qs.map(|q| merged.quantile(q)), merged.count()),
                        "row {r}, {parts_n} parts, spread {spread}"
                    );
                }
            }
        }
    }

    #[test]
    fn union_quantiles_equal_the_merged_sketch() {
        let mut next = xorshift(99);
        let mut u = UnionQuantiles::default();
        for parts_n in [1usize, 2, 5, 40] {
            for spread in [3u64, 50, 100_000] {
                let parts: Vec<LatencySketch> = (0..parts_n)
                    .map(|_| {
                        let mut s = LatencySketch::new();
                        for _ in 0..(next() % 30) {
                            s.add((next() % spread) as f64);
                        }
                        s
                    })
                    .collect();
                let mut merged = LatencySketch::new();
                for p in &parts {
                    merged.merge(p);
                }
                let refs: Vec<&LatencySketch> = parts.iter().collect();
                let qs = [0.0, 0.5, 0.95, 0.99, 1.0];
                let one: Vec<(&LatencySketch, u8)> = refs.iter().map(|p| (*p, 1)).collect();
                assert_eq!(
                    u.quantiles_rows::<1, 5>(&one, qs)[0],
                    (qs.map(|q| merged.quantile(q)), merged.count()),
                    "{parts_n} parts, spread {spread}"
                );
            }
        }
    }

    #[test]
    fn merge_is_the_same_as_adding_everything_to_one_sketch() {
        let mut a = LatencySketch::new();
        let mut b = LatencySketch::new();
        let mut one = LatencySketch::new();
        for v in [0.0, 3.0, 3.0, 17.0, 250.0] {
            a.add(v);
            one.add(v);
        }
        for v in [1.0, 17.0, 5000.0] {
            b.add(v);
            one.add(v);
        }
        a.merge(&b);
        assert_eq!(a, one);
        assert_eq!(LatencySketch::new().quantile(0.5), None);
    }
}
