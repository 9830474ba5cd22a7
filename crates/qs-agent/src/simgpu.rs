//! The simulated GPU: a test double for machines without NVIDIA's driver, accounting VRAM
//! per runtime process as a driver would.
//!
//! A GPU is a directory holding its size (`total`) and one claim per process that holds
//! memory on it (`claim-<pid>`: the bytes). A runtime claims its VRAM when it starts loading
//! and fails as a real one would ("out of memory") when the claims of the processes alive
//! leave too little; a process's claim ends with the process, however it ended. The agent
//! reads the free memory here exactly where it reads NVML's on a real GPU. Claims are made
//! under an exclusive `flock`, so two runtimes starting at once cannot both fit.
//!
//! Everything read here is untrusted (any process of the machine may write the directory):
//! files are bounded in size and count, and a malformed claim is ignored with a warning.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The environment variable that hands a runtime its simulated GPU's directory.
pub const ENV_DIR: &str = "QS_SIMULATED_GPU_DIR";
/// Most claim files read (processes holding memory on one GPU).
const MAX_CLAIMS: usize = 4096;
/// Longest claim or size file read.
const MAX_FILE_BYTES: u64 = 64;

/// One simulated GPU, by its directory.
#[derive(Clone, Debug)]
pub struct SimGpu {
    dir: PathBuf,
}

/// Why a claim failed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("out of memory on the simulated GPU: {want_bytes} bytes wanted, {free_bytes} free")]
    OutOfMemory { want_bytes: u64, free_bytes: u64 },
    #[error("simulated GPU at {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
}

impl SimGpu {
    /// Creates (or resizes) the GPU at `dir` with `total_bytes` of VRAM.
    pub fn create(dir: impl Into<PathBuf>, total_bytes: u64) -> io::Result<Self> {
        let gpu = SimGpu { dir: dir.into() };
        fs::create_dir_all(&gpu.dir)?;
        let tmp = gpu.dir.join("total.tmp");
        fs::write(&tmp, total_bytes.to_string())?;
        fs::rename(tmp, gpu.dir.join("total"))?;
        Ok(gpu)
    }

    pub fn open(dir: impl Into<PathBuf>) -> Self {
        SimGpu { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn total_bytes(&self) -> io::Result<u64> {
        read_u64(&self.dir.join("total"))
    }

    /// VRAM held by processes alive now. Claims of dead processes are removed.
    pub fn used_bytes(&self) -> io::Result<u64> {
        let mut used = 0u64;
        for entry in fs::read_dir(&self.dir)?.take(MAX_CLAIMS) {
            let entry = entry?;
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("claim-"))
                .and_then(|p| p.parse::<i32>().ok())
                .filter(|p| *p > 1)
            else {
                continue;
            };
            if !alive(pid) {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            match read_u64(&entry.path()) {
                Ok(b) => used = used.saturating_add(b),
                Err(e) => tracing::warn!("simulated GPU claim {:?} ignored: {e}", entry.path()),
            }
        }
        Ok(used)
    }

    /// Free VRAM: the size less what live processes hold.
    pub fn free_bytes(&self) -> io::Result<u64> {
        let _lock = self.lock()?;
        Ok(self.total_bytes()?.saturating_sub(self.used_bytes()?))
    }

    /// Process `pid` takes `bytes`, or fails as a driver would when they are not free.
    pub fn claim(&self, pid: u32, bytes: u64) -> Result<(), ClaimError> {
        let io = |source| ClaimError::Io {
            dir: self.dir.clone(),
            source,
        };
        let _lock = self.lock().map_err(io)?;
        let free_bytes = self
            .total_bytes()
            .map_err(io)?
            .saturating_sub(self.used_bytes().map_err(io)?);
        if free_bytes < bytes {
            return Err(ClaimError::OutOfMemory {
                want_bytes: bytes,
                free_bytes,
            });
        }
        let path = self.dir.join(format!("claim-{pid}"));
        fs::write(&path, bytes.to_string()).map_err(io)
    }

    /// What process `pid` holds, if it claimed anything.
    pub fn claim_of(&self, pid: u32) -> Option<u64> {
        read_u64(&self.dir.join(format!("claim-{pid}"))).ok()
    }

    /// Process `pid` gives its memory back (it also does by exiting).
    pub fn release(&self, pid: u32) {
        let _ = fs::remove_file(self.dir.join(format!("claim-{pid}")));
    }

    fn lock(&self) -> io::Result<Lock> {
        let mut file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(self.dir.join("lock"))?;
        // SAFETY: flock on a descriptor this function owns; it is released when `file`
        // closes, with the returned guard.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let _ = file.flush();
        Ok(Lock { _file: file })
    }
}

/// Held while the claims are read or written.
struct Lock {
    _file: fs::File,
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 checks that the process exists and sends nothing.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn read_u64(path: &Path) -> io::Result<u64> {
    let mut text = String::new();
    fs::File::open(path)?
        .take(MAX_FILE_BYTES)
        .read_to_string(&mut text)?;
    text.trim().parse::<u64>().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a byte count: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_of_live_processes_hold_memory_and_dead_ones_free_it() {
        let dir = tempfile::tempdir().unwrap();
        let gpu = SimGpu::create(dir.path().join("0"), 1000).unwrap();
        gpu.claim(std::process::id(), 600).unwrap();
        assert_eq!(gpu.free_bytes().unwrap(), 400);
        let err = gpu.claim(std::process::id(), 500).unwrap_err();
        assert!(
            matches!(
                err,
                ClaimError::OutOfMemory {
                    free_bytes: 400,
                    ..
                }
            ),
            "{err}"
        );
        // A process that is gone holds nothing, whatever its file says.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        fs::write(gpu.dir().join(format!("claim-{dead}")), "900").unwrap();
        assert_eq!(gpu.free_bytes().unwrap(), 400);
        gpu.release(std::process::id());
        assert_eq!(gpu.free_bytes().unwrap(), 1000);
    }

    #[test]
    fn malformed_claims_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let gpu = SimGpu::create(dir.path(), 1000).unwrap();
        fs::write(
            gpu.dir().join(format!("claim-{}", std::process::id())),
            "lots",
        )
        .unwrap();
        fs::write(gpu.dir().join("claim-1"), "999").unwrap();
        assert_eq!(gpu.free_bytes().unwrap(), 1000);
    }
}
