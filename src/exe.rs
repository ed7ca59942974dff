//! Executable identity of a process: the path it was started from and the SHA-256 digest of the
//! file it actually runs.
//!
//! The digest is taken from the file opened through `/proc/PID/exe`, which the kernel resolves to
//! the mapped inode itself. A binary renamed, replaced or deleted after the process started is
//! therefore still the one hashed, so the digest describes the code that runs, whatever the path
//! names now.

use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io::{self, BufReader, Seek, SeekFrom};
use std::num::NonZeroUsize;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lru::LruCache;
use sha2::{Digest, Sha256};

use crate::rules::Sha256Digest;

/// Suffix the kernel appends to the target of `/proc/PID/exe` once the file's directory entry is
/// gone, for example after a package upgrade replaced the binary.
const DELETED_SUFFIX: &[u8] = b" (deleted)";

/// Number of times a file is read again when its metadata changed while it was hashed.
const HASH_ATTEMPTS: u32 = 3;

const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Executable of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExeIdentity {
    /// Path the process was started from, as the target of `/proc/PID/exe` shows it, without the
    /// " (deleted)" suffix. The path is resolved in the caller's mount namespace, so for a process
    /// in a container it can name another file or nothing here.
    pub path: PathBuf,
    /// Digest of the contents of the file the process runs.
    pub sha256: Sha256Digest,
    /// Whether `path` no longer names the file the process runs, because the file was deleted
    /// or replaced after the process started.
    pub deleted: bool,
    /// Whether `path`, resolved in the daemon's own mount namespace, names the very file the
    /// process runs. A process in another mount namespace (a container, or `unshare -m` with a
    /// bind mount over a trusted path) can show any path, so rules that match on `path` must
    /// not trust it unless this is true.
    pub path_verified: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ExeError {
    #[error("process {0} not found")]
    ProcessGone(u32),
    /// Kernel threads and zombie processes have no executable.
    #[error("process {0} has no executable")]
    NoExecutable(u32),
    #[error("failed to open the executable of process {pid}")]
    OpenExe {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("failed to open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} kept changing while it was read ({HASH_ATTEMPTS} attempts)")]
    Unstable { path: PathBuf },
}

/// One version of one file. A write changes `ctime`, which unlike `mtime` cannot be set back
/// from user space, so a file edited in place with its size and `mtime` restored still gets a
/// new key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileVersion {
    device: u64,
    inode: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileVersion {
    fn of(metadata: &Metadata) -> Self {
        FileVersion {
            device: metadata.dev(),
            inode: metadata.ino(),
            size: metadata.size(),
            mtime: (metadata.mtime(), metadata.mtime_nsec()),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

/// Cache of executable identities that hashes each file version once.
pub struct ExeCache {
    identities: LruCache<FileVersion, Arc<ExeIdentity>>,
    files_hashed: u64,
}

impl ExeCache {
    /// Creates a cache that keeps the identities of at most `max_entries` file versions (at
    /// least one) and evicts the least recently used beyond that.
    pub fn new(max_entries: usize) -> Self {
        let capacity = NonZeroUsize::new(max_entries).unwrap_or(NonZeroUsize::MIN);
        ExeCache {
            identities: LruCache::new(capacity),
            files_hashed: 0,
        }
    }

    /// Returns how many times a file was read and hashed, for statistics and tests.
    pub fn files_hashed(&self) -> u64 {
        self.files_hashed
    }

    /// Identifies the executable of process `pid`, hashing the file only if this version of it
    /// is not cached.
    ///
    /// NOTE: a PID can be reused once its process exits, so the identity returned is that of
    /// whichever process has the PID at the time of the call.
    pub fn identify_pid(&mut self, pid: u32) -> Result<Arc<ExeIdentity>, ExeError> {
        let link = PathBuf::from(format!("/proc/{pid}/exe"));

        // The process can exec another file between reading the link and opening it, so the
        // link is read on both sides of the open and the open is retried until both agree.
        let mut link_target = read_exe_link(pid, &link)?;
        for _ in 0..HASH_ATTEMPTS {
            let file = File::open(&link).map_err(|source| proc_error(pid, source))?;
            let link_target_after = read_exe_link(pid, &link)?;
            if link_target_after == link_target {
                return self.identify_file(file, link_target);
            }
            link_target = link_target_after;
        }
        Err(ExeError::Unstable { path: link })
    }

    /// Identifies an open executable, where `link_target` is the target of the `/proc/PID/exe` link
    /// it was opened through.
    fn identify_file(
        &mut self,
        file: File,
        link_target: PathBuf,
    ) -> Result<Arc<ExeIdentity>, ExeError> {
        let metadata = file.metadata().map_err(|source| ExeError::Read {
            path: link_target.clone(),
            source,
        })?;
        let (path, deleted) = strip_deleted_suffix(link_target, &metadata);
        let path_verified = !deleted
            && fs::metadata(&path)
                .is_ok_and(|named| named.dev() == metadata.dev() && named.ino() == metadata.ino());

        let version = FileVersion::of(&metadata);
        if let Some(cached) = self.identities.get(&version) {
            if cached.path == path
                && cached.deleted == deleted
                && cached.path_verified == path_verified
            {
                return Ok(Arc::clone(cached));
            }
            // Same file, reached through another name (a hard link or a path in another mount
            // namespace) or since deleted.
            let identity = Arc::new(ExeIdentity {
                path,
                sha256: cached.sha256,
                deleted,
                path_verified,
            });
            self.identities.put(version, Arc::clone(&identity));
            return Ok(identity);
        }

        let (sha256, version) = hash_unchanging(&file, &path, version)?;
        self.files_hashed += 1;
        tracing::debug!(path = %path.display(), "hashed executable");

        let identity = Arc::new(ExeIdentity {
            path,
            sha256,
            deleted,
            path_verified,
        });
        self.identities.put(version, Arc::clone(&identity));
        Ok(identity)
    }
}

/// Computes the SHA-256 digest of the file at `path`, reading it in chunks.
pub fn hash_file(path: &Path) -> Result<Sha256Digest, ExeError> {
    let file = File::open(path).map_err(|source| ExeError::Open {
        path: path.to_owned(),
        source,
    })?;
    let metadata = file.metadata().map_err(|source| read_error(path, source))?;
    let (digest, _) = hash_unchanging(&file, path, FileVersion::of(&metadata))?;
    Ok(digest)
}

/// Hashes `file` until its metadata is the same before and after the read, and returns the
/// digest with that version. `path` only names the file in errors.
fn hash_unchanging(
    file: &File,
    path: &Path,
    mut version: FileVersion,
) -> Result<(Sha256Digest, FileVersion), ExeError> {
    for _ in 0..HASH_ATTEMPTS {
        let digest = hash_contents(file).map_err(|source| read_error(path, source))?;
        let metadata = file.metadata().map_err(|source| read_error(path, source))?;
        let version_after = FileVersion::of(&metadata);
        if version_after == version {
            return Ok((digest, version));
        }
        version = version_after;
    }
    Err(ExeError::Unstable {
        path: path.to_owned(),
    })
}

fn hash_contents(mut file: &File) -> io::Result<Sha256Digest> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
    let mut hasher = Sha256::new();
    io::copy(&mut reader, &mut hasher)?;
    Ok(Sha256Digest(hasher.finalize().into()))
}

fn read_exe_link(pid: u32, link: &Path) -> Result<PathBuf, ExeError> {
    fs::read_link(link).map_err(|source| proc_error(pid, source))
}

/// Removes the " (deleted)" suffix that the kernel appends for a file without a name, and
/// reports whether it did. A file can really be named "x (deleted)", so the suffix is kept when
/// the full text still names the `opened` file.
fn strip_deleted_suffix(link_target: PathBuf, opened: &Metadata) -> (PathBuf, bool) {
    let Some(stripped) = link_target
        .as_os_str()
        .as_bytes()
        .strip_suffix(DELETED_SUFFIX)
    else {
        return (link_target, false);
    };
    if let Ok(named) = fs::metadata(&link_target) {
        if named.dev() == opened.dev() && named.ino() == opened.ino() {
            return (link_target, false);
        }
    }
    (PathBuf::from(OsStr::from_bytes(stripped)), true)
}

/// Maps an error from `/proc/PID/...` to the state of the process: `ENOENT` on a PID whose
/// directory is still there means a kernel thread or a zombie.
fn proc_error(pid: u32, source: io::Error) -> ExeError {
    let not_found =
        source.kind() == io::ErrorKind::NotFound || source.raw_os_error() == Some(libc::ESRCH);
    if !not_found {
        return ExeError::OpenExe { pid, source };
    }
    if Path::new(&format!("/proc/{pid}")).exists() {
        ExeError::NoExecutable(pid)
    } else {
        ExeError::ProcessGone(pid)
    }
}

fn read_error(path: &Path, source: io::Error) -> ExeError {
    ExeError::Read {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use super::*;

    /// SHA-256 of the three bytes "abc", from FIPS 180-2 appendix B.1.
    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    /// A child process that is killed and reaped when the test ends, also on failure.
    struct RunningChild(Child);

    impl RunningChild {
        fn pid(&self) -> u32 {
            self.0.id()
        }
    }

    impl Drop for RunningChild {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn sleep_binary() -> Option<&'static Path> {
        ["/usr/bin/sleep", "/bin/sleep"]
            .into_iter()
            .map(Path::new)
            .find(|path| path.exists())
    }

    /// Starts `program 60`. Another test thread that forks while this file is still open for
    /// writing makes exec fail with `ETXTBSY` until that child execs, so that error is retried.
    fn spawn_sleeping(program: &Path) -> RunningChild {
        for _ in 0..50 {
            let spawned = Command::new(program)
                .arg("60")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            match spawned {
                Ok(child) => return RunningChild(child),
                Err(error) if error.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => panic!("failed to start {}: {error}", program.display()),
            }
        }
        panic!(
            "failed to start {}: text file busy after 50 attempts",
            program.display()
        );
    }

    /// Copies the system's `sleep` into `dir` as `name`, appending `extra` bytes so copies can
    /// differ in content while still running.
    fn install_program(dir: &Path, name: &str, extra: &[u8]) -> Option<PathBuf> {
        let source = sleep_binary()?;
        let staging = dir.join(format!(".{name}.new"));
        let mut contents = fs::read(source).unwrap();
        contents.extend_from_slice(extra);
        let mut file = File::create(&staging).unwrap();
        file.write_all(&contents).unwrap();
        file.set_permissions(fs::Permissions::from_mode(0o755))
            .unwrap();
        drop(file);

        // rename() so that a running copy keeps its old inode, as a package upgrade does.
        let path = dir.join(name);
        fs::rename(&staging, &path).unwrap();
        Some(path)
    }

    #[test]
    fn hash_file_known_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        fs::write(&path, b"abc").unwrap();

        let digest = hash_file(&path).unwrap();

        assert_eq!(hex::encode(digest.0), ABC_SHA256);
    }

    #[test]
    fn hash_file_larger_than_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("large");
        let contents: Vec<u8> = (0..3 * READ_BUFFER_BYTES + 17)
            .map(|i| (i % 251) as u8)
            .collect();
        fs::write(&path, &contents).unwrap();

        let digest = hash_file(&path).unwrap();

        let expected: [u8; 32] = Sha256::digest(&contents).into();
        assert_eq!(digest.0, expected);
    }

    #[test]
    fn hash_file_missing_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing");

        let error = hash_file(&path).unwrap_err();

        assert!(matches!(error, ExeError::Open { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!("failed to open {}", path.display())
        );
    }

    #[test]
    fn identify_own_process() {
        let mut cache = ExeCache::new(16);

        let identity = cache.identify_pid(std::process::id()).unwrap();

        let own_path = std::env::current_exe().unwrap();
        assert_eq!(identity.path, own_path);
        assert!(!identity.deleted);
        assert_eq!(identity.sha256, hash_file(&own_path).unwrap());
    }

    #[test]
    fn identify_twice_hashes_once() {
        let mut cache = ExeCache::new(16);
        let pid = std::process::id();

        let first = cache.identify_pid(pid).unwrap();
        let second = cache.identify_pid(pid).unwrap();

        assert_eq!(cache.files_hashed(), 1);
        assert!(Arc::ptr_eq(&first, &second));
    }

    #[test]
    fn identify_missing_process() {
        let mut cache = ExeCache::new(16);
        // Above the kernel's PID_MAX_LIMIT (4194304), so no process can have it.
        let pid = u32::MAX;

        let error = cache.identify_pid(pid).unwrap_err();

        assert!(
            matches!(error, ExeError::ProcessGone(p) if p == pid),
            "{error:?}"
        );
    }

    #[test]
    fn identify_kernel_thread() {
        // PID 2 is kthreadd on Linux, unless this runs in a PID namespace.
        let comm = fs::read_to_string("/proc/2/comm").unwrap_or_default();
        if comm.trim() != "kthreadd" {
            println!("skipping: PID 2 is not kthreadd here");
            return;
        }
        let mut cache = ExeCache::new(16);

        let error = cache.identify_pid(2).unwrap_err();

        assert!(matches!(error, ExeError::NoExecutable(2)), "{error:?}");
    }

    #[test]
    fn replaced_file_gets_new_digest() {
        let dir = tempfile::tempdir().unwrap();
        let Some(path) = install_program(dir.path(), "prog", b"") else {
            println!("skipping: no sleep binary to copy");
            return;
        };
        let old_process = spawn_sleeping(&path);
        install_program(dir.path(), "prog", b"version 2").unwrap();
        let new_process = spawn_sleeping(&path);
        let mut cache = ExeCache::new(16);

        let old = cache.identify_pid(old_process.pid()).unwrap();
        let new = cache.identify_pid(new_process.pid()).unwrap();

        assert_eq!(old.path, path);
        assert!(
            old.deleted,
            "the old inode was replaced, so its name is gone"
        );
        assert_eq!(new.path, path);
        assert!(!new.deleted);
        assert_ne!(old.sha256, new.sha256);
        assert_eq!(new.sha256, hash_file(&path).unwrap());
        assert_eq!(cache.files_hashed(), 2);
    }

    #[test]
    fn deleted_file_keeps_digest() {
        let dir = tempfile::tempdir().unwrap();
        let Some(path) = install_program(dir.path(), "prog", b"") else {
            println!("skipping: no sleep binary to copy");
            return;
        };
        let expected = hash_file(&path).unwrap();
        let process = spawn_sleeping(&path);
        fs::remove_file(&path).unwrap();
        let mut cache = ExeCache::new(16);

        let identity = cache.identify_pid(process.pid()).unwrap();

        assert_eq!(identity.path, path);
        assert!(identity.deleted);
        assert_eq!(identity.sha256, expected);
    }

    #[test]
    fn name_ending_in_deleted_kept() {
        let dir = tempfile::tempdir().unwrap();
        let Some(path) = install_program(dir.path(), "prog (deleted)", b"") else {
            println!("skipping: no sleep binary to copy");
            return;
        };
        let process = spawn_sleeping(&path);
        let mut cache = ExeCache::new(16);

        let identity = cache.identify_pid(process.pid()).unwrap();

        assert_eq!(identity.path, path);
        assert!(!identity.deleted);
    }

    #[test]
    fn copy_has_same_digest_other_path() {
        let dir = tempfile::tempdir().unwrap();
        let Some(original) = install_program(dir.path(), "original", b"") else {
            println!("skipping: no sleep binary to copy");
            return;
        };
        let copy = install_program(dir.path(), "copy", b"").unwrap();
        let original_process = spawn_sleeping(&original);
        let copy_process = spawn_sleeping(&copy);
        let mut cache = ExeCache::new(16);

        let from_original = cache.identify_pid(original_process.pid()).unwrap();
        let from_copy = cache.identify_pid(copy_process.pid()).unwrap();

        assert_eq!(from_original.sha256, from_copy.sha256);
        assert_eq!(from_original.path, original);
        assert_eq!(from_copy.path, copy);
    }

    #[test]
    fn hard_link_reuses_digest() {
        let dir = tempfile::tempdir().unwrap();
        let Some(original) = install_program(dir.path(), "original", b"") else {
            println!("skipping: no sleep binary to copy");
            return;
        };
        let link = dir.path().join("link");
        fs::hard_link(&original, &link).unwrap();
        let original_process = spawn_sleeping(&original);
        let link_process = spawn_sleeping(&link);
        let mut cache = ExeCache::new(16);

        let from_original = cache.identify_pid(original_process.pid()).unwrap();
        let from_link = cache.identify_pid(link_process.pid()).unwrap();

        assert_eq!(from_link.path, link);
        assert_eq!(from_link.sha256, from_original.sha256);
        assert_eq!(cache.files_hashed(), 1);
    }

    #[test]
    fn edit_in_place_with_restored_mtime_rehashes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tool");
        fs::write(&path, b"version 1").unwrap();
        let mut cache = ExeCache::new(16);
        let first = cache
            .identify_file(File::open(&path).unwrap(), path.clone())
            .unwrap();
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();

        // Same size, same mtime: only ctime differs between the versions.
        let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
        (&file).write_all(b"version 2").unwrap();
        file.set_modified(mtime).unwrap();
        drop(file);
        let second = cache
            .identify_file(File::open(&path).unwrap(), path.clone())
            .unwrap();

        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), mtime);
        assert_ne!(first.sha256, second.sha256);
        assert_eq!(second.sha256, hash_file(&path).unwrap());
        assert_eq!(cache.files_hashed(), 2);
    }

    #[test]
    fn cache_evicts_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..3)
            .map(|i| {
                let path = dir.path().join(format!("file{i}"));
                fs::write(&path, format!("contents {i}")).unwrap();
                path
            })
            .collect();
        let mut cache = ExeCache::new(2);
        let identify = |cache: &mut ExeCache, i: usize| {
            cache
                .identify_file(File::open(&paths[i]).unwrap(), paths[i].clone())
                .unwrap();
        };

        identify(&mut cache, 0);
        identify(&mut cache, 1);
        identify(&mut cache, 0);
        identify(&mut cache, 2); // evicts file1, the least recently used
        assert_eq!(cache.files_hashed(), 3);
        identify(&mut cache, 0);
        assert_eq!(cache.files_hashed(), 3, "file0 should still be cached");
        identify(&mut cache, 1);
        assert_eq!(cache.files_hashed(), 4, "file1 should have been evicted");
    }

    #[test]
    fn zero_capacity_still_caches_one() {
        let mut cache = ExeCache::new(0);
        let pid = std::process::id();

        cache.identify_pid(pid).unwrap();
        cache.identify_pid(pid).unwrap();

        assert_eq!(cache.files_hashed(), 1);
    }
}
