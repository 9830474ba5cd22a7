//! A Fenwick tree over non-negative weights, for weighted sampling in O(log n).

/// Weights indexed `0..len`, with prefix sums and weighted search.
#[derive(Clone, Debug, Default)]
pub struct WeightTree {
    tree: Vec<f64>,
    weights: Vec<f64>,
}

impl WeightTree {
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// Appends a slot with weight zero; returns its index.
    pub fn push(&mut self) -> usize {
        let i = self.weights.len();
        self.weights.push(0.0);
        // Node i+1 of the 1-based tree covers (i+1 - lowbit(i+1), i+1].
        let n = i + 1;
        let low = n & n.wrapping_neg();
        let mut sum = 0.0;
        let mut j = n - 1;
        while j > n - low {
            sum += self.tree[j - 1];
            j -= j & j.wrapping_neg();
        }
        self.tree.push(sum);
        i
    }

    pub fn weight(&self, i: usize) -> f64 {
        self.weights.get(i).copied().unwrap_or(0.0)
    }

    /// Sets slot `i`'s weight (negative and NaN count as zero).
    pub fn set(&mut self, i: usize, w: f64) {
        let w = if w.is_finite() && w > 0.0 { w } else { 0.0 };
        let delta = w - self.weights[i];
        self.weights[i] = w;
        let mut n = i + 1;
        while n <= self.tree.len() {
            self.tree[n - 1] += delta;
            n += n & n.wrapping_neg();
        }
    }

    pub fn total(&self) -> f64 {
        let mut n = self.tree.len();
        let mut sum = 0.0;
        while n > 0 {
            sum += self.tree[n - 1];
            n -= n & n.wrapping_neg();
        }
        sum.max(0.0)
    }

    /// The slot where the running sum of weights first exceeds `target`
    /// (`0 <= target < total()`); skips zero-weight slots.
    pub fn find(&self, target: f64) -> Option<usize> {
        if self.tree.is_empty() {
            return None;
        }
        let mut pos = 0;
        let mut rest = target;
        let mut step = self.tree.len().next_power_of_two();
        while step > 0 {
            let next = pos + step;
            if next <= self.tree.len() && self.tree[next - 1] <= rest {
                rest -= self.tree[next - 1];
                pos = next;
            }
            step >>= 1;
        }
        // Rounding can land on a zero-weight slot or past the end: walk to a positive one.
        (pos..self.weights.len())
            .chain((0..pos.min(self.weights.len())).rev())
            .find(|&i| self.weights[i] > 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_by_cumulative_weight() {
        let mut t = WeightTree::default();
        for _ in 0..5 {
            t.push();
        }
        for (i, w) in [1.0, 0.0, 2.0, 0.0, 3.0].into_iter().enumerate() {
            t.set(i, w);
        }
        assert_eq!(t.total(), 6.0);
        let check = |target, want| assert_eq!(t.find(target), Some(want), "target {target}");
        check(0.0, 0);
        check(0.99, 0);
        check(1.0, 2);
        check(2.99, 2);
        check(3.0, 4);
        check(5.99, 4);
        check(100.0, 4);
    }

    #[test]
    fn push_after_set_keeps_sums() {
        let mut t = WeightTree::default();
        for n in 0..37 {
            let i = t.push();
            t.set(i, (n % 3) as f64);
        }
        let want: f64 = (0..37).map(|n| (n % 3) as f64).sum();
        assert!((t.total() - want).abs() < 1e-9);
        t.set(5, 0.0);
        assert!((t.total() - (want - 2.0)).abs() < 1e-9);
    }

    #[test]
    fn all_zero_finds_nothing() {
        let mut t = WeightTree::default();
        t.push();
        assert_eq!(t.find(0.0), None);
    }
}
