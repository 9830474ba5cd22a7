//! The mesh simulator's network: WAN-like heterogeneity between regions, per-link jitter, a
//! heavy tail and loss; optionally a measured matrix of round-trip times between regions
//! (`--latency-matrix FILE`, a CSV with the header
//! `cty1,cty2,rtt_cnt,rtt_avg,rtt_std,rtt_min,rtt_max`, milliseconds).

use qs_core::Rng;
use qs_core::hash::mix;
use std::collections::BTreeMap;

/// Most regions and rows a matrix may have.
pub const MAX_REGIONS: usize = 1_000;
pub const MAX_ROWS: usize = 100_000;
/// Longest round trip a matrix may give, milliseconds.
pub const MAX_RTT_MS: f64 = 60_000.0;

/// Round trips between two regions (one row of the matrix).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rtt {
    pub count: u64,
    pub avg_ms: f64,
    pub std_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

/// A matrix of region pairs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Matrix {
    pub regions: Vec<String>,
    /// Share of hosts per region: the round trips measured from it (`rtt_cnt`).
    pub weights: Vec<u64>,
    pairs: BTreeMap<(usize, usize), Rtt>,
    mean: Option<Rtt>,
}

/// A bad matrix file, located.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{file}:{line}: {field}: {message}")]
pub struct MatrixError {
    pub file: String,
    pub line: usize,
    pub field: &'static str,
    pub message: String,
}

const HEADER: [&str; 7] = [
    "cty1", "cty2", "rtt_cnt", "rtt_avg", "rtt_std", "rtt_min", "rtt_max",
];

impl Matrix {
    /// Parses and checks a matrix; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Matrix, MatrixError> {
        let bad = |line: usize, field: &'static str, message: String| MatrixError {
            file: file.to_owned(),
            line,
            field,
            message,
        };
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let Some((i, header)) = lines.next() else {
            return Err(bad(1, "header", "the file is empty".into()));
        };
        let cols: Vec<&str> = header.split(',').map(str::trim).collect();
        if cols != HEADER {
            return Err(bad(
                i + 1,
                "header",
                format!("expected {}, got {header:?}", HEADER.join(",")),
            ));
        }
        let mut m = Matrix::default();
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        let mut rows = 0usize;
        for (i, line) in lines {
            let n = i + 1;
            rows += 1;
            if rows > MAX_ROWS {
                return Err(bad(n, "rows", format!("at most {MAX_ROWS}")));
            }
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            if f.len() != 7 {
                return Err(bad(n, "row", format!("{} fields; expected 7", f.len())));
            }
            let mut region = |name: &str, field: &'static str| -> Result<usize, MatrixError> {
                if name.is_empty() || name.len() > 64 {
                    return Err(bad(
                        n,
                        field,
                        format!("a region name is 1 to 64 bytes, got {name:?}"),
                    ));
                }
                if let Some(i) = index.get(name) {
                    return Ok(*i);
                }
                if index.len() == MAX_REGIONS {
                    return Err(bad(n, field, format!("at most {MAX_REGIONS} regions")));
                }
                let i = index.len();
                index.insert(name.to_owned(), i);
                m.regions.push(name.to_owned());
                m.weights.push(0);
                Ok(i)
            };
            let a = region(f[0], "cty1")?;
            let b = region(f[1], "cty2")?;
            let count: u64 = f[2]
                .parse()
                .map_err(|e| bad(n, "rtt_cnt", format!("{:?}: {e}", f[2])))?;
            let num = |k: usize, field: &'static str| -> Result<f64, MatrixError> {
                let v: f64 = f[k]
                    .parse()
                    .map_err(|e| bad(n, field, format!("{:?}: {e}", f[k])))?;
                if !v.is_finite() || !(0.0..=MAX_RTT_MS).contains(&v) {
                    return Err(bad(n, field, format!("{v} is not in 0..={MAX_RTT_MS}")));
                }
                Ok(v)
            };
            let rtt = Rtt {
                count,
                avg_ms: num(3, "rtt_avg")?,
                std_ms: num(4, "rtt_std")?,
                min_ms: num(5, "rtt_min")?,
                max_ms: num(6, "rtt_max")?,
            };
            if rtt.min_ms > rtt.max_ms {
                return Err(bad(
                    n,
                    "rtt_min",
                    format!("{} exceeds rtt_max {}", rtt.min_ms, rtt.max_ms),
                ));
            }
            if !(rtt.min_ms..=rtt.max_ms).contains(&rtt.avg_ms) {
                return Err(bad(
                    n,
                    "rtt_avg",
                    format!("{} is outside [rtt_min, rtt_max]", rtt.avg_ms),
                ));
            }
            m.weights[a] = m.weights[a].saturating_add(count);
            m.pairs.insert((a.min(b), a.max(b)), rtt);
        }
        if m.pairs.is_empty() {
            return Err(bad(1, "rows", "no region pairs".into()));
        }
        if m.weights.iter().all(|w| *w == 0) {
            return Err(bad(1, "rtt_cnt", "every count is zero".into()));
        }
        let k = m.pairs.len() as f64;
        let sum = |f: fn(&Rtt) -> f64| m.pairs.values().map(f).sum::<f64>() / k;
        m.mean = Some(Rtt {
            count: 0,
            avg_ms: sum(|r| r.avg_ms),
            std_ms: sum(|r| r.std_ms),
            min_ms: sum(|r| r.min_ms),
            max_ms: sum(|r| r.max_ms),
        });
        Ok(m)
    }

    /// The row for two regions; a pair the file lacks takes the mean of all rows.
    pub fn rtt(&self, a: usize, b: usize) -> Rtt {
        self.pairs
            .get(&(a.min(b), a.max(b)))
            .copied()
            .or(self.mean)
            .expect("a parsed matrix has rows")
    }

    /// A region for the `i`th host, in proportion to the weights.
    pub fn region_for(&self, rng: &mut Rng) -> usize {
        let total: u64 = self.weights.iter().sum();
        let mut x = rng.below(total.max(1));
        for (i, w) in self.weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        0
    }
}

/// A normal draw truncated to `[min, max]` (Box–Muller).
pub fn truncated_normal(rng: &mut Rng, avg: f64, std: f64, min: f64, max: f64) -> f64 {
    let u1 = rng.unit().max(1e-12);
    let u2 = rng.unit();
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    (avg + std * z).clamp(min, max)
}

/// The network model.
#[derive(Clone, Debug)]
pub struct Wan {
    pub matrix: Option<Matrix>,
    /// Without a matrix: this many synthetic regions, round trips of `rtt_ms.0..rtt_ms.1`
    /// between them (fixed per pair) and `local_rtt_ms` inside one.
    pub regions: usize,
    pub rtt_ms: (f64, f64),
    pub local_rtt_ms: f64,
    /// Each delivery varies by up to this fraction of its link's delay.
    pub jitter: f64,
    /// Share of deliveries in the heavy tail, multiplied by a Pareto draw (α = 1.5, at most
    /// ×10).
    pub tail: f64,
    /// Share of messages lost.
    pub loss: f64,
}

impl Default for Wan {
    fn default() -> Self {
        Wan {
            matrix: None,
            regions: 6,
            rtt_ms: (10.0, 120.0),
            local_rtt_ms: 1.0,
            jitter: 0.1,
            tail: 0.01,
            loss: 0.001,
        }
    }
}

impl Wan {
    pub fn region_count(&self) -> usize {
        self.matrix
            .as_ref()
            .map_or(self.regions.max(1), |m| m.regions.len())
    }

    /// A region's name: the matrix's, or `r` and its number.
    pub fn region_name(&self, region: usize) -> String {
        match self.matrix.as_ref().and_then(|m| m.regions.get(region)) {
            Some(name) => name.clone(),
            None => format!("r{region}"),
        }
    }

    pub fn pick_region(&self, rng: &mut Rng) -> usize {
        match &self.matrix {
            Some(m) => m.region_for(rng),
            None => rng.below(self.regions.max(1) as u64) as usize,
        }
    }

    /// One delivery's one-way delay between regions `a` and `b`, milliseconds, or `None`
    /// when it is lost.
    pub fn one_way_ms(&self, a: usize, b: usize, rng: &mut Rng) -> Option<f64> {
        if self.loss > 0.0 && rng.unit() < self.loss {
            return None;
        }
        let rtt = match &self.matrix {
            Some(m) => {
                let r = m.rtt(a, b);
                truncated_normal(rng, r.avg_ms, r.std_ms, r.min_ms, r.max_ms)
            }
            None => {
                let base = if a == b {
                    self.local_rtt_ms
                } else {
                    let (lo, hi) = self.rtt_ms;
                    let pair = mix((a.min(b) as u64) << 32 | a.max(b) as u64);
                    lo + (hi - lo) * (pair % 10_000) as f64 / 10_000.0
                };
                let spread = base * self.jitter;
                base - spread / 2.0 + spread * rng.unit()
            }
        };
        let mut d = rtt / 2.0;
        if self.tail > 0.0 && rng.unit() < self.tail {
            let pareto = (1.0 - rng.unit()).max(1e-9).powf(-1.0 / 1.5);
            d *= pareto.min(10.0);
        }
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "cty1,cty2,rtt_cnt,rtt_avg,rtt_std,rtt_min,rtt_max\n\
        de,de,900,4,1,1,10\n\
        de,us,100,90,5,80,140\n\
        us,us,300,5,1,2,12\n";

    #[test]
    fn a_matrix_spreads_hosts_and_draws_within_bounds() {
        let m = Matrix::parse(GOOD, "m.csv").unwrap();
        assert_eq!(m.regions, vec!["de", "us"]);
        assert_eq!(m.weights, vec![1_000, 300]);
        let wan = Wan {
            matrix: Some(m),
            tail: 0.0,
            loss: 0.0,
            ..Wan::default()
        };
        let mut rng = Rng::seeded(7);
        let mut de = 0;
        for _ in 0..1_300 {
            de += usize::from(wan.pick_region(&mut rng) == 0);
        }
        assert!((900..1_100).contains(&de), "{de} of 1300 in de");
        for _ in 0..1_000 {
            let d = wan.one_way_ms(0, 1, &mut rng).unwrap();
            assert!((40.0..=70.0).contains(&d), "{d}");
        }
    }

    /// (file contents, line, field) of each refusal.
    #[test]
    fn bad_matrices_are_refused_with_line_and_field() {
        let h = "cty1,cty2,rtt_cnt,rtt_avg,rtt_std,rtt_min,rtt_max\n";
        let table = [
            ("", 1, "header"),
            ("a,b,c\n", 1, "header"),
            (&format!("{h}de,us,1,5,1,2\n") as &str, 2, "row"),
            (&format!("{h}de,us,x,5,1,2,9\n"), 2, "rtt_cnt"),
            (&format!("{h}de,us,1,NaN,1,2,9\n"), 2, "rtt_avg"),
            (&format!("{h}de,us,1,5,1,9,2\n"), 2, "rtt_min"),
            (&format!("{h}de,us,1,50,1,2,9\n"), 2, "rtt_avg"),
            (&format!("{h}de,us,1,5,1,2,90000\n"), 2, "rtt_max"),
            (&format!("{h},us,1,5,1,2,9\n"), 2, "cty1"),
            (h, 1, "rows"),
        ];
        for (text, line, field) in table {
            let e = Matrix::parse(text, "m.csv").unwrap_err();
            assert_eq!((e.line, e.field), (line, field), "{text:?}: {e}");
            assert!(e.to_string().starts_with("m.csv:"));
        }
    }

    #[test]
    fn the_default_wan_has_a_tail_and_loses_some() {
        let wan = Wan::default();
        let mut rng = Rng::seeded(1);
        let mut lost = 0;
        let mut max: f64 = 0.0;
        for _ in 0..100_000 {
            match wan.one_way_ms(0, 1, &mut rng) {
                None => lost += 1,
                Some(d) => max = max.max(d),
            }
        }
        assert!((50..200).contains(&lost), "{lost} lost");
        assert!(max > 100.0, "no tail: {max}");
    }
}
