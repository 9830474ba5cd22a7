//! The replay window: which of a sender's recent sequence numbers a receiver has seen.

use super::REPLAY_WINDOW;

/// Which recent sequence numbers of a sender were seen: a ring of [`REPLAY_WINDOW`] bits
/// ending at the highest.
#[derive(Clone, Debug, Default)]
pub(super) struct ReplayWindow {
    highest: Option<u64>,
    bits: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl ReplayWindow {
    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % REPLAY_WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    /// Whether `seq` is new; if so it is remembered.
    pub(super) fn admit(&mut self, seq: u64) -> bool {
        let Some(highest) = self.highest else {
            self.highest = Some(seq);
            let (w, b) = Self::bit(seq);
            self.bits[w] |= b;
            return true;
        };
        if seq > highest {
            if seq - highest >= REPLAY_WINDOW {
                self.bits = Default::default();
            } else {
                for s in highest + 1..seq {
                    let (w, b) = Self::bit(s);
                    self.bits[w] &= !b;
                }
            }
            self.highest = Some(seq);
            let (w, b) = Self::bit(seq);
            self.bits[w] |= b;
            return true;
        }
        if highest - seq >= REPLAY_WINDOW {
            return false;
        }
        let (w, b) = Self::bit(seq);
        let new = self.bits[w] & b == 0;
        self.bits[w] |= b;
        new
    }
}
