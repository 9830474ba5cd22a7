//! The three convergence checks of seed 002 §2 over what a worker reports of each iteration
//! (a score and a hash of its result): refining ends when any of them says so.
//!
//! - **Stability**: the last [`STABLE_OVER`] scores lie within [`STABLE_EPSILON`] of each other.
//! - **Consistency**: the last [`CONSISTENT_OVER`] results are the same (same hash).
//! - **Novelty**: the last [`NOVELTY_OVER`] iterations brought no result not seen before in
//!   the history: the work has stopped finding anything.

use std::collections::VecDeque;

/// Reports kept per task.
pub const HISTORY: usize = 16;
pub const STABLE_OVER: usize = 3;
pub const STABLE_EPSILON: f64 = 0.01;
pub const CONSISTENT_OVER: usize = 2;
pub const NOVELTY_OVER: usize = 3;

/// What a worker says of one iteration.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// Its own measure of the result's quality (any scale, finite).
    pub score: f64,
    /// A hash of the result, to tell results apart.
    pub result_hash: u64,
}

/// Which check ended the refining.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Convergence {
    Stability,
    Consistency,
    Novelty,
}

impl Convergence {
    pub fn name(self) -> &'static str {
        match self {
            Convergence::Stability => "converged: stable",
            Convergence::Consistency => "converged: consistent",
            Convergence::Novelty => "converged: nothing new",
        }
    }
}

/// The first check that says `history` (oldest first) has converged.
pub fn converged(history: &VecDeque<Report>) -> Option<Convergence> {
    let n = history.len();
    let last = |k: usize| history.iter().skip(n.saturating_sub(k));
    if n >= STABLE_OVER {
        let scores: Vec<f64> = last(STABLE_OVER).map(|r| r.score).collect();
        let lo = scores.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if scores.iter().all(|s| s.is_finite()) && hi - lo <= STABLE_EPSILON {
            return Some(Convergence::Stability);
        }
    }
    if n >= CONSISTENT_OVER {
        let mut hashes = last(CONSISTENT_OVER).map(|r| r.result_hash);
        let first = hashes.next();
        if hashes.all(|h| Some(h) == first) {
            return Some(Convergence::Consistency);
        }
    }
    if n > NOVELTY_OVER {
        let before: Vec<u64> = history
            .iter()
            .take(n - NOVELTY_OVER)
            .map(|r| r.result_hash)
            .collect();
        if last(NOVELTY_OVER).all(|r| before.contains(&r.result_hash)) {
            return Some(Convergence::Novelty);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(reports: &[(f64, u64)]) -> VecDeque<Report> {
        reports
            .iter()
            .map(|&(score, result_hash)| Report { score, result_hash })
            .collect()
    }

    /// What the history holds, as (score, result hash) pairs.
    type Reports = Vec<(f64, u64)>;

    #[test]
    fn each_check_says_when_refining_is_over() {
        let cases: Vec<(&str, Reports, Option<Convergence>)> = vec![
            ("too few to say", vec![(0.5, 1)], None),
            ("still moving", vec![(0.1, 1), (0.4, 2), (0.7, 3)], None),
            (
                "stable scores",
                vec![(0.1, 1), (0.800, 2), (0.805, 3), (0.809, 4)],
                Some(Convergence::Stability),
            ),
            (
                "the same result twice",
                vec![(0.1, 1), (0.5, 7), (0.9, 7)],
                Some(Convergence::Consistency),
            ),
            (
                "nothing new for three iterations",
                vec![(0.1, 1), (0.3, 2), (0.6, 1), (0.2, 2), (0.9, 1)],
                Some(Convergence::Novelty),
            ),
            (
                "a new result keeps it going",
                vec![(0.1, 1), (0.3, 2), (0.6, 1), (0.2, 2), (0.9, 5)],
                None,
            ),
        ];
        for (what, h, want) in cases {
            assert_eq!(converged(&history(&h)), want, "{what}");
        }
    }
}
