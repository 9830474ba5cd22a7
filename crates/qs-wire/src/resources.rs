//! Resource amounts: what a workload needs, what a node has, has committed and is using.

use serde::{Deserialize, Serialize};

/// What one instance needs. A non-zero `vram_bytes` means it needs one GPU with that much free
/// VRAM; an instance is never split across GPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
    pub vram_bytes: u64,
}

impl Resources {
    pub fn needs_gpu(&self) -> bool {
        self.vram_bytes > 0
    }
}

/// One GPU of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GpuCapacity {
    pub vram_bytes: u64,
}

/// What a node has in total.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Capacity {
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
    pub gpus: Vec<GpuCapacity>,
}

/// What a node has promised to its instances (reservations, not measurements).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Committed {
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
    /// One entry per GPU of the node's capacity, in the same order.
    pub gpu_vram_bytes: Vec<u64>,
}

/// Sensed use of one GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuLoad {
    /// Utilisation, 0.0..=1.0.
    pub util: f64,
    pub vram_used_bytes: u64,
}

/// Sensed use of one instance's process tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceLoad {
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
    /// Utilisation of the GPU the instance holds, 0.0..=1.0, as its processes use it (0
    /// without a GPU).
    pub gpu_util: f64,
    /// GPU memory its processes hold.
    pub vram_bytes: u64,
}

/// One sensor sample of a whole node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// Whole-node CPU utilisation, 0.0..=1.0.
    pub cpu_util: f64,
    pub memory_used_bytes: u64,
    /// One entry per GPU of the node's capacity, in the same order.
    pub gpus: Vec<GpuLoad>,
}
