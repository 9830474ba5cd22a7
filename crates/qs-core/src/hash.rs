//! Stable 64-bit hashing (FNV-1a plus a finalizer) for rendezvous hashing and trace hashes.
//!
//! `std`'s default hasher may change between releases; these values must not.

use std::hash::Hasher;

/// FNV-1a, stable across builds and platforms.
#[derive(Clone, Copy, Debug)]
pub struct StableHasher(u64);

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        mix(self.0)
    }
}

/// A 64-bit finalizer that spreads every input bit over the output.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Stable hash of a string.
pub fn of_str(s: &str) -> u64 {
    let mut h = StableHasher::default();
    h.write(s.as_bytes());
    h.finish()
}

/// Rendezvous (highest random weight) score of a (key, member) pair, from their stable hashes.
pub fn rendezvous(key_hash: u64, member_hash: u64) -> u64 {
    mix(key_hash ^ mix(member_hash.rotate_left(17)))
}
