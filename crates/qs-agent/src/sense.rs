//! Sensors: host CPU and memory and each instance's process tree (sysinfo), and GPUs, either
//! through NVML loaded at run time or through a simulated source declared in config.
//!
//! The simulated source is a test double for machines without an NVIDIA GPU: it reports the
//! VRAM our instances hold as used. The real path is [`Nvml`], which needs libnvidia-ml at run
//! time and nothing at build time, so the binary runs on machines without a driver.

use qs_wire::{GpuCapacity, GpuLoad, InstanceId, InstanceLoad};
use std::collections::{BTreeMap, HashMap};
use sysinfo::{Pid, ProcessesToUpdate, System};

/// Where GPU figures come from.
pub trait GpuSource: Send + Sync {
    /// What it is, for logs and `/health`.
    fn describe(&self) -> String;
    fn capacity(&self) -> Vec<GpuCapacity>;
    /// One sample; `committed_vram` is what this node's instances hold on each GPU.
    fn sample(&mut self, committed_vram: &[u64]) -> Vec<GpuLoad>;
}

/// Why a sensor is not available.
#[derive(Debug, thiserror::Error)]
pub enum SenseError {
    /// No NVIDIA driver, or it did not answer.
    #[error("NVML {what}: {detail}")]
    Nvml { what: &'static str, detail: String },
    /// The host's own figures cannot be read.
    #[error("cannot read system figures: {0}")]
    Host(String),
}

/// Real GPUs through NVML.
pub struct Nvml {
    nvml: nvml_wrapper::Nvml,
    count: u32,
}

/// A GPU's power and temperature, where known.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Energy {
    pub power_watts: Option<f64>,
    pub power_limit_watts: Option<f64>,
    pub temperature_c: Option<f64>,
}

impl Nvml {
    /// Loads libnvidia-ml; fails with a clear reason where there is no driver.
    pub fn load() -> Result<Nvml, SenseError> {
        let nvml = nvml_wrapper::Nvml::init().map_err(|e| SenseError::Nvml {
            what: "unavailable",
            detail: e.to_string(),
        })?;
        let count = nvml.device_count().map_err(|e| SenseError::Nvml {
            what: "device count",
            detail: e.to_string(),
        })?;
        Ok(Nvml { nvml, count })
    }

    /// GPU `index`'s power draw, power limit and temperature, those the driver reports.
    pub fn energy(&self, index: u32) -> Energy {
        let Ok(d) = self.nvml.device_by_index(index) else {
            return Energy::default();
        };
        Energy {
            power_watts: d.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
            power_limit_watts: d
                .enforced_power_limit()
                .ok()
                .map(|mw| f64::from(mw) / 1000.0),
            temperature_c: d
                .temperature(nvml_wrapper::enum_wrappers::device::TemperatureSensor::Gpu)
                .ok()
                .map(f64::from),
        }
    }

    /// VRAM held on GPU `index` by the processes of process group `pgid` (a runtime and the
    /// workers it started), as the driver reports it.
    pub fn group_vram_bytes(&self, index: u32, pgid: u32) -> Option<u64> {
        let procs = self
            .nvml
            .device_by_index(index)
            .ok()?
            .running_compute_processes()
            .ok()?;
        let held = procs
            .iter()
            .filter(|p| {
                // SAFETY: getpgid only reads the process table.
                let group = unsafe { libc::getpgid(p.pid as libc::pid_t) };
                group > 0 && group as u32 == pgid
            })
            .map(|p| match p.used_gpu_memory {
                nvml_wrapper::enums::device::UsedGpuMemory::Used(b) => b,
                nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => 0,
            })
            .sum();
        Some(held)
    }

    /// GPU `index`'s free memory as the driver reports it: what a swap waits for before it
    /// starts the next runtime.
    pub fn free_vram_bytes(&self, index: u32) -> Result<u64, SenseError> {
        self.nvml
            .device_by_index(index)
            .and_then(|d| d.memory_info())
            .map(|m| m.free)
            .map_err(|e| SenseError::Nvml {
                what: "memory info",
                detail: e.to_string(),
            })
    }
}

impl GpuSource for Nvml {
    fn describe(&self) -> String {
        format!("nvml ({} GPUs)", self.count)
    }
    fn capacity(&self) -> Vec<GpuCapacity> {
        (0..self.count)
            .map(|i| GpuCapacity {
                vram_bytes: self
                    .nvml
                    .device_by_index(i)
                    .and_then(|d| d.memory_info())
                    .map_or(0, |m| m.total),
            })
            .collect()
    }
    fn sample(&mut self, _committed: &[u64]) -> Vec<GpuLoad> {
        (0..self.count)
            .map(|i| match self.nvml.device_by_index(i) {
                Ok(d) => GpuLoad {
                    util: d
                        .utilization_rates()
                        .map_or(0.0, |u| f64::from(u.gpu) / 100.0),
                    vram_used_bytes: d.memory_info().map_or(0, |m| m.used),
                },
                Err(_) => GpuLoad::default(),
            })
            .collect()
    }
}

/// Test double: GPUs declared in config, whose used VRAM is what our instances hold.
pub struct SimulatedGpus {
    pub gpus: Vec<GpuCapacity>,
}

impl GpuSource for SimulatedGpus {
    fn describe(&self) -> String {
        format!("simulated ({} GPUs, declared in config)", self.gpus.len())
    }
    fn capacity(&self) -> Vec<GpuCapacity> {
        self.gpus.clone()
    }
    fn sample(&mut self, committed: &[u64]) -> Vec<GpuLoad> {
        self.gpus
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let used = committed.get(i).copied().unwrap_or(0).min(g.vram_bytes);
                GpuLoad {
                    util: used as f64 / g.vram_bytes.max(1) as f64 * 0.5,
                    vram_used_bytes: used,
                }
            })
            .collect()
    }
}

/// One host-wide sample.
#[derive(Clone, Debug, Default)]
pub struct HostSample {
    pub cpu_util: f64,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub cores: usize,
    /// Each requested process tree's use.
    pub trees: BTreeMap<InstanceId, InstanceLoad>,
}

/// The least time between two refreshes of the process table. sysinfo measures CPU use as
/// the change since the last refresh, and a refresh sooner than its 200 ms minimum sees no
/// change: with several nodes of one process sensing in turn, all but the first read zero
/// (and a busy instance was never found hot). Nodes that sense sooner share the last one.
const MIN_REFRESH: std::time::Duration = std::time::Duration::from_millis(250);

/// Host and process-tree sensing; one per process, shared by every node it runs.
pub struct Sensor {
    sys: System,
    refreshed: Option<std::time::Instant>,
}

impl Sensor {
    pub fn new() -> Result<Sensor, SenseError> {
        let mut sys = System::new().map_err(|e| SenseError::Host(e.to_string()))?;
        sys.refresh_cpu_usage();
        Ok(Sensor {
            sys,
            refreshed: None,
        })
    }

    /// Samples the host and the process tree rooted at each pid (the instance and all its
    /// descendants). CPU figures need two samples: the first after start reads zero.
    pub fn sample(&mut self, roots: &BTreeMap<InstanceId, u32>) -> HostSample {
        if self.refreshed.is_none_or(|t| t.elapsed() >= MIN_REFRESH) {
            self.sys.refresh_cpu_usage();
            self.sys.refresh_memory();
            self.sys.refresh_processes(ProcessesToUpdate::All, true);
            self.refreshed = Some(std::time::Instant::now());
        }
        let procs = self.sys.processes();
        let mut children: HashMap<Pid, Vec<Pid>> = HashMap::new();
        for (pid, p) in procs {
            if let Some(parent) = p.parent() {
                children.entry(parent).or_default().push(*pid);
            }
        }
        let mut trees = BTreeMap::new();
        for (instance, &root) in roots {
            let mut load = InstanceLoad::default();
            let mut stack = vec![Pid::from_u32(root)];
            let mut seen = 0;
            while let Some(pid) = stack.pop() {
                seen += 1;
                if seen > 10_000 {
                    break; // bound the walk on a pathological tree
                }
                if let Some(p) = procs.get(&pid) {
                    load.cpu_millicores += (f64::from(p.cpu_usage()) * 10.0) as u64;
                    load.memory_bytes += p.memory();
                }
                if let Some(kids) = children.get(&pid) {
                    stack.extend(kids);
                }
            }
            trees.insert(instance.clone(), load);
        }
        HostSample {
            cpu_util: f64::from(self.sys.global_cpu_usage()) / 100.0,
            memory_used_bytes: self.sys.used_memory(),
            memory_total_bytes: self.sys.total_memory(),
            cores: self.sys.cpus().len(),
            trees,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_process_tree_is_measured() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done & while :; do :; done"])
            .process_group(0)
            .spawn()
            .unwrap();
        let id = InstanceId::new("burner").unwrap();
        let roots = BTreeMap::from([(id.clone(), child.id())]);
        let mut s = Sensor::new().unwrap();
        // The first reading of a new process is zero; a later one shows the burn. Poll until
        // it does, bounded.
        let mut cpu = 0;
        for _ in 0..50 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            cpu = s.sample(&roots).trees[&id].cpu_millicores;
            if cpu > 500 {
                break;
            }
        }
        // Another node of the process sensing right after (as the nodes of `qs up` do, each
        // on its own timer) reads the same burn, not the zero of a too-early refresh.
        let again = s.sample(&roots).trees[&id].cpu_millicores;
        // SAFETY: signalling the process group of our own child.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
        assert!(
            cpu > 500,
            "two busy loops use more than half a core, measured {cpu} millicores"
        );
        assert!(again > 500, "a sample right after read {again} millicores");
        let host = s.sample(&BTreeMap::new());
        assert!(host.memory_total_bytes > 0 && host.cores > 0);
    }

    #[test]
    fn nvml_fails_cleanly_without_a_driver() {
        match Nvml::load() {
            Ok(n) => assert!(n.describe().starts_with("nvml")),
            Err(e) => assert!(e.to_string().contains("NVML unavailable"), "{e}"),
        }
    }

    #[test]
    fn simulated_gpus_report_what_is_committed() {
        let mut g = SimulatedGpus {
            gpus: vec![GpuCapacity { vram_bytes: 100 }],
        };
        let s = g.sample(&[40]);
        assert_eq!(s[0].vram_used_bytes, 40);
        assert!(g.describe().contains("simulated"));
    }
}
