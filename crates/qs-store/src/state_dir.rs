//! The state directory: its layout, and the one atomic write every writer uses.
//!
//! ```text
//! STATE_DIR/
//!   ledger.redb                 the node's ledger (redb)
//!   specs.json                  the desired-state cache (the specs KV as last seen)
//!   api.token                   the operator API's bearer token (mode 0600)
//!   keys/NODE.ed25519           each node's secret key (mode 0600)
//!   nodes/NODE/instances.json   what runs, for a restarted agent to reap
//!   nodes/NODE/failures.json    the node's failure memory
//!   nodes/NODE/boot_epoch       how many times the node started (numbers its messages)
//!   nodes/NODE/logs/            instances' stdout and stderr
//!   mesh-emergency/MS.json      the node's view of the mesh when it entered EMERGENCY
//! ```
//!
//! A write goes to a temporary file beside the target, is fsynced, renamed over the target,
//! and the directory is fsynced: a crash leaves the old file or the new one, never a torn
//! one. A file that cannot be parsed is an error naming it, its line and column
//! ([`StoreError::Unreadable`]); what the caller does then (refuse to start, or start
//! without it and log) is documented where it reads.

use crate::StoreError;
use qs_wire::NodeId;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Largest state file read back (a key, a cache of specs, a list of instances).
pub const MAX_STATE_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// The files of a state directory, by what they hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateFile<'a> {
    Ledger,
    SpecsCache,
    /// The models KV as last seen (the desired-state cache's second half).
    ModelsCache,
    ApiToken,
    Key(&'a NodeId),
    /// The node's certificate from the fleet authority (signed JSON).
    Certificate(&'a NodeId),
    /// The fleet authority this state directory trusts: its fleet and public key (JSON).
    Anchor,
    Instances(&'a NodeId),
    /// The model runtimes a node's model host started (pids and start times, as instances).
    ModelRuntimes(&'a NodeId),
    Failures(&'a NodeId),
    BootEpoch(&'a NodeId),
    Logs(&'a NodeId),
    /// The Unix socket task workers connect to.
    TasksSocket,
    /// The durable tasks accepted (redb).
    Tasks,
    /// The node's view of the mesh preserved when the mesh entered EMERGENCY (seed 001
    /// §6.3) or an operator froze it (Part 7), by when: Unix milliseconds.
    MeshSnapshot(MeshSnapshotKind, u64),
}

/// Why the mesh's state was preserved: each kind in its own directory, rotated apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeshSnapshotKind {
    /// The mesh entered EMERGENCY (`mesh-emergency/`).
    Emergency,
    /// An operator froze it (`mesh-frozen/`).
    Frozen,
}

impl MeshSnapshotKind {
    fn dir(self) -> &'static str {
        match self {
            MeshSnapshotKind::Emergency => "mesh-emergency",
            MeshSnapshotKind::Frozen => "mesh-frozen",
        }
    }
}

impl StateFile<'_> {
    /// What the file is, for errors.
    pub fn what(&self) -> &'static str {
        match self {
            StateFile::Ledger => "ledger",
            StateFile::SpecsCache => "desired-state cache",
            StateFile::ModelsCache => "desired-state cache of models",
            StateFile::ApiToken => "API token",
            StateFile::Key(_) => "node key",
            StateFile::Certificate(_) => "node certificate",
            StateFile::Anchor => "fleet authority",
            StateFile::Instances(_) => "instance file",
            StateFile::ModelRuntimes(_) => "model runtime file",
            StateFile::Failures(_) => "failure memory",
            StateFile::BootEpoch(_) => "boot epoch",
            StateFile::Logs(_) => "log directory",
            StateFile::TasksSocket => "task workers' socket",
            StateFile::Tasks => "task store",
            StateFile::MeshSnapshot(..) => "mesh snapshot",
        }
    }
}

/// Sequence numbers a node may use in one life: its messages are numbered from
/// `boot epoch << EPOCH_SHIFT`.
pub const EPOCH_SHIFT: u32 = 44;

/// See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating if missing) the state directory at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<StateDir, StoreError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|source| StoreError::Io {
            path: root.clone(),
            source,
        })?;
        Ok(StateDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a file lives.
    pub fn path(&self, file: StateFile<'_>) -> PathBuf {
        let node = |n: &NodeId| self.root.join("nodes").join(n.as_str());
        match file {
            StateFile::Ledger => self.root.join("ledger.redb"),
            StateFile::SpecsCache => self.root.join("specs.json"),
            StateFile::ModelsCache => self.root.join("models.json"),
            StateFile::ApiToken => self.root.join("api.token"),
            StateFile::Key(n) => self.root.join("keys").join(format!("{n}.ed25519")),
            StateFile::Certificate(n) => self.root.join("keys").join(format!("{n}.cert.json")),
            StateFile::Anchor => self.root.join("keys").join("authority.json"),
            StateFile::Instances(n) => node(n).join("instances.json"),
            StateFile::ModelRuntimes(n) => node(n).join("models.json"),
            StateFile::Failures(n) => node(n).join("failures.json"),
            StateFile::BootEpoch(n) => node(n).join("boot_epoch"),
            StateFile::Logs(n) => node(n).join("logs"),
            StateFile::TasksSocket => self.root.join("tasks.sock"),
            StateFile::Tasks => self.root.join("tasks.redb"),
            StateFile::MeshSnapshot(kind, ms) => {
                self.root.join(kind.dir()).join(format!("{ms:013}.json"))
            }
        }
    }

    /// Where a Unix socket is to be bound: the one a previous life left there is removed
    /// (only a socket: any other file there is an error naming it).
    pub fn socket(&self, file: StateFile<'_>) -> Result<PathBuf, StoreError> {
        use std::os::unix::fs::FileTypeExt;
        let path = self.path(file);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_socket() => {
                std::fs::remove_file(&path).map_err(|source| StoreError::Io {
                    path: path.clone(),
                    source,
                })?;
            }
            Ok(_) => {
                return Err(StoreError::Io {
                    path,
                    source: std::io::Error::other("there is a file that is not a socket"),
                });
            }
            Err(_) => {}
        }
        Ok(path)
    }

    /// Writes `bytes` as `file` atomically (see the module docs), with `mode` if given.
    pub fn write(
        &self,
        file: StateFile<'_>,
        bytes: &[u8],
        mode: Option<u32>,
    ) -> Result<(), StoreError> {
        write_atomic(&self.path(file), bytes, mode)
    }

    /// Counts a start of `node` and returns the first sequence number of this life: above
    /// every one of its earlier lives whatever the clock did since (a clock set back must not
    /// make a restarted node's messages look replayed), and above the wall-clock numbering of
    /// versions that kept no epoch (`now_us`). A damaged file is an error naming it.
    pub fn next_boot_seq(&self, node: &NodeId, now_us: u64) -> Result<u64, StoreError> {
        let file = StateFile::BootEpoch(node);
        let last = match self.read(file)? {
            None => 0,
            Some(bytes) => String::from_utf8_lossy(&bytes)
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|e| *e < 1 << (64 - EPOCH_SHIFT - 1))
                .ok_or_else(|| StoreError::Unreadable {
                    path: self.path(file),
                    what: file.what(),
                    line: 1,
                    column: 1,
                    detail: "not a boot count".into(),
                })?,
        };
        let epoch = (last + 1).max((now_us >> EPOCH_SHIFT) + 1);
        self.write(file, format!("{epoch}\n").as_bytes(), None)?;
        Ok(epoch << EPOCH_SHIFT)
    }

    /// Writes `value` as JSON.
    pub fn write_json<T: Serialize>(
        &self,
        file: StateFile<'_>,
        value: &T,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_vec_pretty(value).expect("state files serialize");
        self.write(file, &body, None)
    }

    /// Reads `file`; `None` when it does not exist.
    pub fn read(&self, file: StateFile<'_>) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(file);
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let size = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        if size > MAX_STATE_FILE_BYTES {
            return Err(StoreError::TooLarge {
                path,
                what: file.what(),
                size,
                max: MAX_STATE_FILE_BYTES,
            });
        }
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    /// Reads `file` as JSON; `None` when it does not exist, [`StoreError::Unreadable`] with
    /// its line and column when it does not parse.
    pub fn read_json<T: DeserializeOwned>(
        &self,
        file: StateFile<'_>,
    ) -> Result<Option<T>, StoreError> {
        let Some(bytes) = self.read(file)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Unreadable {
                path: self.path(file),
                what: file.what(),
                line: e.line(),
                column: e.column(),
                detail: e.to_string(),
            })
    }

    /// Moves an unreadable `file` aside (`NAME.corrupt` beside it) so it is kept for the
    /// operator and not read again; returns where it went.
    pub fn set_aside(&self, file: StateFile<'_>) -> Result<PathBuf, StoreError> {
        let path = self.path(file);
        let aside = path.with_extension(match path.extension() {
            Some(ext) => format!("{}.corrupt", ext.to_string_lossy()),
            None => "corrupt".into(),
        });
        std::fs::rename(&path, &aside).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(aside)
    }

    /// Removes `file` (nothing to do when it does not exist).
    pub fn remove(&self, file: StateFile<'_>) -> Result<(), StoreError> {
        let path = self.path(file);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// The mesh snapshots of `kind` present, by when, oldest first (files not named as one
    /// are not listed).
    pub fn mesh_snapshots(&self, kind: MeshSnapshotKind) -> Result<Vec<u64>, StoreError> {
        let dir = self.root.join(kind.dir());
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StoreError::Io { path: dir, source }),
        };
        let mut at: Vec<u64> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".json")?.parse().ok()
            })
            .collect();
        at.sort_unstable();
        Ok(at)
    }

    /// Creates the directory a file lives in (a node's, the keys') and returns `file`'s path.
    pub fn prepare(&self, file: StateFile<'_>) -> Result<PathBuf, StoreError> {
        let path = self.path(file);
        let dir = match file {
            StateFile::Logs(_) => path.clone(),
            _ => path
                .parent()
                .map_or_else(|| self.root.clone(), Path::to_path_buf),
        };
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io { path: dir, source })?;
        Ok(path)
    }
}

/// Write a temporary file beside `path`, fsync it, rename it over `path`, fsync the directory.
/// The state directory's one write, and the one for files outside it that another program
/// reads (the systemd units of the agent's model runtimes, a service's published instances).
/// The temporary file is new (`O_EXCL`, a name of this process and write of its own): a link
/// someone planted beside `path` is never followed, and two writes never mix.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<(), StoreError> {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| StoreError::Io { path: p, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = path
        .file_name()
        .map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
    let nth = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{nth}.tmp", std::process::id()));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        if let Some(mode) = mode {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode);
        }
        let mut f = options.open(&tmp).map_err(io(&tmp))?;
        let written = f.write_all(bytes).and_then(|()| f.sync_all());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&tmp)(e));
        }
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(path)(e));
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeId {
        NodeId::new("forge").unwrap()
    }

    /// Each start numbers above the last, whatever the clock says; a damaged count is an
    /// error naming its file.
    #[test]
    fn boot_epochs_grow_even_when_the_clock_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let n = node();
        let now_us = 1_780_000_000_000_000;
        let first = state.next_boot_seq(&n, now_us).unwrap();
        assert!(
            first > now_us,
            "above the wall-clock numbering of older versions"
        );
        let back = state.next_boot_seq(&n, now_us - 3_600_000_000).unwrap();
        assert_eq!(back, first + (1 << EPOCH_SHIFT));
        let same = state.next_boot_seq(&n, now_us).unwrap();
        assert_eq!(same, back + (1 << EPOCH_SHIFT));
        std::fs::write(state.path(StateFile::BootEpoch(&n)), "soon").unwrap();
        let e = state.next_boot_seq(&n, now_us).unwrap_err().to_string();
        assert!(e.contains("boot_epoch") && e.contains("boot epoch"), "{e}");
    }

    #[test]
    fn a_write_replaces_the_file_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let n = node();
        state
            .write_json(StateFile::Failures(&n), &vec![1, 2, 3])
            .unwrap();
        state.write_json(StateFile::Failures(&n), &vec![4]).unwrap();
        let back: Vec<u32> = state.read_json(StateFile::Failures(&n)).unwrap().unwrap();
        assert_eq!(back, vec![4]);
        let node_dir = state.path(StateFile::Failures(&n));
        let names: Vec<String> = std::fs::read_dir(node_dir.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["failures.json"]);
    }

    /// A link planted where an older version wrote its temporary file is never followed:
    /// what it points at stays as it was.
    #[test]
    fn a_planted_link_beside_the_file_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        let path = dir.path().join("published.json");
        std::os::unix::fs::symlink(&victim, dir.path().join(".published.json.tmp")).unwrap();
        for pid_guess in [std::process::id()] {
            for nth in 0..4 {
                let name = format!(".published.json.{pid_guess}.{nth}.tmp");
                let _ = std::os::unix::fs::symlink(&victim, dir.path().join(name));
            }
        }
        // Each write makes a temporary file of its own, whatever was there.
        let mut written = 0;
        for _ in 0..8 {
            if write_atomic(&path, b"[1]", Some(0o644)).is_ok() {
                written += 1;
            }
        }
        assert!(
            written >= 4,
            "a write that met a planted name failed; the rest wrote"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[1]");
    }

    #[test]
    fn a_missing_file_is_none_and_a_corrupt_one_names_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let n = node();
        assert_eq!(
            state
                .read_json::<Vec<u32>>(StateFile::Instances(&n))
                .unwrap(),
            None
        );
        let path = state.prepare(StateFile::Instances(&n)).unwrap();
        std::fs::write(&path, "[1,\n  2,\n  oops]").unwrap();
        let err = state
            .read_json::<Vec<u32>>(StateFile::Instances(&n))
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, StoreError::Unreadable { line: 3, .. }),
            "{text}"
        );
        assert!(
            text.contains("instances.json") && text.contains("instance file"),
            "{text}"
        );
    }

    #[test]
    fn a_mode_is_set_on_the_new_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let n = node();
        state
            .write(StateFile::Key(&n), b"secret", Some(0o600))
            .unwrap();
        let mode = std::fs::metadata(state.path(StateFile::Key(&n)))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
