//! The cgroup v2 hierarchy: where it is mounted, and which cgroup a cgroup ID names.
//!
//! The eBPF gate reports the cgroup of a flow by its 64-bit cgroup ID (what
//! `bpf_get_current_cgroup_id()` returns), which is the inode number of the cgroup's directory in
//! the cgroup2 file system. Rules name cgroups by path, so the daemon maps IDs back to paths here.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::num::NonZeroUsize;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use lru::LruCache;
use walkdir::WalkDir;

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Depth below the guarded directory beyond which a rescan does not look. systemd nests units a
/// few levels deep, and the bound keeps a hostile delegated subtree from making a rescan endless.
const MAX_SCAN_DEPTH: usize = 64;

/// Number of IDs remembered as not found, so that repeated flows from a cgroup outside the
/// guarded subtree do not rescan it each time.
const MISSING_IDS_REMEMBERED: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("failed to read {path}")]
    ReadMountinfo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no cgroup2 file system is mounted at its root according to {path}")]
    NotMounted { path: PathBuf },
}

/// Finds where the cgroup v2 hierarchy is mounted, from `/proc/self/mountinfo`.
pub fn find_cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let path = PathBuf::from(MOUNTINFO);
    let mountinfo = fs::read_to_string(&path).map_err(|source| CgroupError::ReadMountinfo {
        path: path.clone(),
        source,
    })?;
    find_cgroup2_mount_in(&mountinfo).ok_or(CgroupError::NotMounted { path })
}

/// Returns the mount point of the first cgroup2 mount in `mountinfo` (the format of
/// `/proc/PID/mountinfo`) that shows the root of the hierarchy.
///
/// A bind mount of a cgroup below the root is skipped, because paths relative to it would not
/// match the paths in `/proc/PID/cgroup`, which are relative to the root.
pub fn find_cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // Mount ID, parent ID, major:minor, root, mount point, mount options, zero or more
        // optional fields, "-", file system type, source, super block options.
        let mut fields = line.split(' ');
        let root = fields.nth(3)?;
        let mount_point = fields.next()?;
        let fs_type = fields.skip_while(|field| *field != "-").nth(1)?;
        (fs_type == "cgroup2" && root == "/").then(|| unescape_mount_field(mount_point))
    })
}

/// Decodes the octal escapes (`\040` for a space, `\011`, `\012`, `\134`) that the kernel writes
/// for bytes that would break the mountinfo format.
fn unescape_mount_field(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes.get(i + 1..i + 4).filter(|digits| {
            bytes[i] == b'\\' && digits.iter().all(|digit| (b'0'..=b'7').contains(digit))
        });
        match escape {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |value, digit| value * 8 + u32::from(digit - b'0'));
                // Three octal digits can exceed a byte (\777), and such text is kept as it is.
                match u8::try_from(value) {
                    Ok(byte) => {
                        decoded.push(byte);
                        i += 4;
                    }
                    Err(_) => {
                        decoded.push(bytes[i]);
                        i += 1;
                    }
                }
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(decoded))
}

/// Returns the cgroup v2 ID of the cgroup directory `dir`, which is the directory's inode number.
///
/// NOTE: this is true where `ino_t` is 64 bits wide. With a 32-bit `ino_t` the inode number is only
/// the low half of the ID.
pub fn cgroup_id(dir: &Path) -> io::Result<u64> {
    Ok(fs::metadata(dir)?.ino())
}

/// Checks a cgroup path relative to the cgroup2 mount, such as `/system.slice/foo.service`, that
/// came from another process (a service manager), and returns it without its leading slash.
/// The path must name a cgroup below the root without leaving it through `..`, and nft must be
/// able to read it back.
pub fn check_relative_path(path: &str) -> Result<&str, String> {
    let relative = path
        .strip_prefix('/')
        .ok_or_else(|| format!("path {path:?} does not start with '/'"))?
        .trim_end_matches('/');
    if relative.is_empty() {
        return Err("path names the root cgroup, which is level 0".into());
    }
    if relative
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(format!("path {path:?} has an empty, '.' or '..' component"));
    }
    // nft text has no escape for a double quote inside a quoted string. systemd escapes '"'
    // in unit names as \x22, so unit cgroups never contain one.
    if relative.contains(['"', '\n', '\0']) {
        return Err(format!(
            "path {path:?} contains a double quote, a newline or a NUL, which nft cannot read"
        ));
    }
    Ok(relative)
}

/// Returns the cgroup v2 path of process `pid` from the "0::" line of `/proc/PID/cgroup`,
/// relative to the root of the caller's cgroup namespace.
pub fn cgroup_of_pid(pid: u32) -> io::Result<String> {
    let path = format!("/proc/{pid}/cgroup");
    let contents = fs::read_to_string(&path)?;
    contents
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no cgroup v2 line in {path}"),
            )
        })
}

/// Map from cgroup IDs to cgroup paths below one guarded subtree of the hierarchy.
///
/// Paths are found by walking the subtree and cached. An ID that is not cached triggers a
/// rescan, and an ID still not found after one is remembered as missing. That is sound because
/// the kernel does not reuse cgroup IDs: `include/linux/kernfs.h` documents `kernfs_node::id` as
/// a 64-bit unique ID. Symbolic links are not followed, and names that are not valid UTF-8 are
/// skipped.
pub struct CgroupIndex {
    mount: PathBuf,
    guarded: PathBuf,
    paths: HashMap<u64, String>,
    missing: LruCache<u64, ()>,
    rescans: u64,
}

impl CgroupIndex {
    /// Creates an empty index of the subtree at `guarded`, a directory at or below the cgroup2
    /// mount point `mount`.
    pub fn new(mount: PathBuf, guarded: PathBuf) -> Self {
        debug_assert!(
            guarded.starts_with(&mount),
            "{} is not below {}",
            guarded.display(),
            mount.display()
        );
        let remembered =
            NonZeroUsize::new(MISSING_IDS_REMEMBERED).expect("the constant is not zero");
        CgroupIndex {
            mount,
            guarded,
            paths: HashMap::new(),
            missing: LruCache::new(remembered),
            rescans: 0,
        }
    }

    /// Returns the path of cgroup `id` relative to the mount point, starting with '/'
    /// (for example "/system.slice/foo.service"), or `None` if no directory of the guarded
    /// subtree has that ID.
    pub fn path_of(&mut self, id: u64) -> Option<String> {
        if let Some(path) = self.paths.get(&id) {
            return Some(path.clone());
        }
        if self.missing.get(&id).is_some() {
            return None;
        }

        self.rescan();
        let found = self.paths.get(&id).cloned();
        if found.is_none() {
            self.missing.put(id, ());
        }
        found
    }

    /// Removes `id` from the cached paths and from the IDs remembered as missing, for example
    /// after the cgroup was removed.
    pub fn forget(&mut self, id: u64) {
        self.paths.remove(&id);
        self.missing.pop(&id);
    }

    /// Replaces the cached paths with a fresh walk of the guarded subtree, so cgroups removed
    /// since the last walk are dropped.
    fn rescan(&mut self) {
        self.rescans += 1;
        let mut paths = HashMap::new();
        let walk = WalkDir::new(&self.guarded)
            .follow_links(false)
            .same_file_system(true)
            .max_depth(MAX_SCAN_DEPTH);
        for entry in walk {
            let entry = match entry {
                Ok(entry) => entry,
                // A cgroup removed during the walk is the usual cause.
                Err(error) => {
                    tracing::debug!(%error, guarded = %self.guarded.display(), "skipped a cgroup while scanning");
                    continue;
                }
            };
            if !entry.file_type().is_dir() {
                continue;
            }
            let Some(path) = self.relative_path(entry.path()) else {
                tracing::debug!(path = %entry.path().display(), "skipped a cgroup whose path is not UTF-8 below the mount");
                continue;
            };
            match entry.metadata() {
                Ok(metadata) => {
                    paths.insert(metadata.ino(), path);
                }
                Err(error) => {
                    tracing::debug!(%error, path = %entry.path().display(), "skipped a cgroup while scanning");
                }
            }
        }
        tracing::debug!(cgroups = paths.len(), guarded = %self.guarded.display(), "scanned cgroups");
        self.paths = paths;
    }

    fn relative_path(&self, path: &Path) -> Option<String> {
        let relative = path.strip_prefix(&self.mount).ok()?.to_str()?;
        Some(format!("/{relative}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_path_rejects_escapes() {
        assert_eq!(
            check_relative_path("/a.slice/b.service"),
            Ok("a.slice/b.service")
        );
        assert!(check_relative_path("a.slice").is_err());
        assert!(check_relative_path("/").is_err());
        assert!(check_relative_path("/a/../b").is_err());
        assert!(check_relative_path("/a//b").is_err());
        assert!(check_relative_path("/a\"b").is_err());
    }

    /// Lines from a system with the hybrid layout of systemd: cgroup v1 controllers and the
    /// v2 hierarchy at /sys/fs/cgroup/unified.
    const HYBRID: &str = "\
25 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
28 25 0:25 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
29 28 0:26 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
31 28 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
";

    #[test]
    fn mountinfo_hybrid_layout() {
        assert_eq!(
            find_cgroup2_mount_in(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn mountinfo_unified_layout() {
        let mountinfo = "\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/root rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
        assert_eq!(
            find_cgroup2_mount_in(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn mountinfo_without_optional_fields() {
        let mountinfo = "35 24 0:30 / /cg rw,relatime - cgroup2 none rw\n";
        assert_eq!(find_cgroup2_mount_in(mountinfo), Some(PathBuf::from("/cg")));
    }

    #[test]
    fn mountinfo_several_optional_fields() {
        let mountinfo =
            "35 24 0:30 / /cg rw shared:9 master:2 propagate_from:1 - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2_mount_in(mountinfo), Some(PathBuf::from("/cg")));
    }

    #[test]
    fn mountinfo_octal_escapes() {
        let mountinfo = "35 24 0:30 / /mnt/my\\040cgroups\\011x\\134y rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_cgroup2_mount_in(mountinfo),
            Some(PathBuf::from("/mnt/my cgroups\tx\\y"))
        );
    }

    #[test]
    fn mountinfo_backslash_without_digits_kept() {
        let mountinfo = "35 24 0:30 / /a\\b\\04 rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_cgroup2_mount_in(mountinfo),
            Some(PathBuf::from("/a\\b\\04"))
        );
    }

    #[test]
    fn mountinfo_skips_bind_mount_of_subtree() {
        let mountinfo = "\
40 24 0:30 /system.slice /srv/cg rw - cgroup2 cgroup2 rw
41 24 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
";
        assert_eq!(
            find_cgroup2_mount_in(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn mountinfo_without_cgroup2() {
        let mountinfo = "31 28 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";
        assert_eq!(find_cgroup2_mount_in(mountinfo), None);
    }

    #[test]
    fn mountinfo_ignores_truncated_lines() {
        let mountinfo =
            "garbage\n35 24 0:30 / /cg rw\n\n36 24 0:30 / /cg2 rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_cgroup2_mount_in(mountinfo),
            Some(PathBuf::from("/cg2"))
        );
    }

    #[test]
    fn mount_found_on_this_system() {
        let Ok(mount) = find_cgroup2_mount() else {
            println!("skipping: no cgroup2 hierarchy mounted here");
            return;
        };

        assert!(mount.is_dir(), "{} is not a directory", mount.display());
        assert!(
            mount.join("cgroup.procs").exists(),
            "{} has no cgroup.procs",
            mount.display()
        );
        assert!(cgroup_id(&mount).unwrap() > 0);
    }

    #[test]
    fn cgroup_id_is_inode_number() {
        let dir = tempfile::tempdir().unwrap();

        let id = cgroup_id(dir.path()).unwrap();

        assert_eq!(id, fs::metadata(dir.path()).unwrap().ino());
    }

    #[test]
    fn cgroup_of_own_process() {
        let path = cgroup_of_pid(std::process::id()).unwrap();

        assert!(path.starts_with('/'), "{path:?}");
        let listed = fs::read_to_string("/proc/self/cgroup").unwrap();
        assert!(
            listed.lines().any(|line| line == format!("0::{path}")),
            "{listed}"
        );
    }

    #[test]
    fn cgroup_of_missing_process() {
        // Above the kernel's PID_MAX_LIMIT (4194304), so no process can have it.
        let error = cgroup_of_pid(u32::MAX).unwrap_err();

        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    /// A stand-in hierarchy: a temporary directory as the mount point with `system.slice`
    /// below it as the guarded subtree.
    struct Tree {
        mount: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Self {
            let tree = Tree {
                mount: tempfile::tempdir().unwrap(),
            };
            fs::create_dir(tree.guarded()).unwrap();
            tree
        }

        fn guarded(&self) -> PathBuf {
            self.mount.path().join("system.slice")
        }

        fn index(&self) -> CgroupIndex {
            CgroupIndex::new(self.mount.path().to_owned(), self.guarded())
        }

        fn make(&self, relative: &str) -> u64 {
            let dir = self.mount.path().join(relative);
            fs::create_dir_all(&dir).unwrap();
            cgroup_id(&dir).unwrap()
        }
    }

    #[test]
    fn index_maps_ids_to_paths() {
        let tree = Tree::new();
        let service = tree.make("system.slice/foo.service");
        let nested = tree.make("system.slice/foo.service/worker");
        let guarded = cgroup_id(&tree.guarded()).unwrap();
        let mut index = tree.index();

        assert_eq!(
            index.path_of(service).as_deref(),
            Some("/system.slice/foo.service")
        );
        assert_eq!(
            index.path_of(nested).as_deref(),
            Some("/system.slice/foo.service/worker")
        );
        assert_eq!(index.path_of(guarded).as_deref(), Some("/system.slice"));
        assert_eq!(index.rescans, 1);
    }

    #[test]
    fn index_ignores_outside_guarded() {
        let tree = Tree::new();
        let outside = tree.make("user.slice/user-1000.slice");
        let mount = cgroup_id(tree.mount.path()).unwrap();
        let mut index = tree.index();

        assert_eq!(index.path_of(outside), None);
        assert_eq!(index.path_of(mount), None);
    }

    #[test]
    fn index_finds_cgroup_created_later() {
        let tree = Tree::new();
        let first = tree.make("system.slice/a.service");
        let mut index = tree.index();
        assert_eq!(
            index.path_of(first).as_deref(),
            Some("/system.slice/a.service")
        );

        let later = tree.make("system.slice/b.service");

        assert_eq!(
            index.path_of(later).as_deref(),
            Some("/system.slice/b.service")
        );
        assert_eq!(index.rescans, 2);
    }

    #[test]
    fn index_answers_from_cache() {
        let tree = Tree::new();
        let service = tree.make("system.slice/a.service");
        let mut index = tree.index();
        index.path_of(service);
        fs::remove_dir(tree.mount.path().join("system.slice/a.service")).unwrap();

        assert_eq!(
            index.path_of(service).as_deref(),
            Some("/system.slice/a.service")
        );
        assert_eq!(index.rescans, 1);
    }

    #[test]
    fn index_forget_drops_cached_path() {
        let tree = Tree::new();
        let service = tree.make("system.slice/a.service");
        let mut index = tree.index();
        index.path_of(service);
        fs::remove_dir(tree.mount.path().join("system.slice/a.service")).unwrap();

        index.forget(service);

        assert_eq!(index.path_of(service), None);
        assert_eq!(index.rescans, 2);
    }

    #[test]
    fn index_remembers_missing_ids() {
        let tree = Tree::new();
        let outside = tree.make("user.slice");
        let mut index = tree.index();

        assert_eq!(index.path_of(outside), None);
        assert_eq!(index.path_of(outside), None);
        assert_eq!(index.rescans, 1);

        index.forget(outside);
        assert_eq!(index.path_of(outside), None);
        assert_eq!(index.rescans, 2);
    }

    #[test]
    fn index_does_not_follow_symlinks() {
        let tree = Tree::new();
        let target = tree.make("elsewhere/hidden.service");
        std::os::unix::fs::symlink(
            tree.mount.path().join("elsewhere"),
            tree.guarded().join("link"),
        )
        .unwrap();
        let mut index = tree.index();

        assert_eq!(index.path_of(target), None);
    }

    #[test]
    fn index_depth_is_bounded() {
        let tree = Tree::new();
        let mut relative = String::from("system.slice");
        let mut ids = Vec::new();
        for _ in 0..MAX_SCAN_DEPTH + 2 {
            relative.push_str("/d");
            ids.push(tree.make(&relative));
        }
        let mut index = tree.index();

        // ids[k] is k + 1 levels below the guarded directory.
        let deepest_found = &ids[MAX_SCAN_DEPTH - 1];
        let expected = format!("/system.slice{}", "/d".repeat(MAX_SCAN_DEPTH));
        assert_eq!(index.path_of(*deepest_found), Some(expected));
        assert_eq!(index.path_of(ids[MAX_SCAN_DEPTH]), None);
    }

    #[test]
    fn index_skips_non_utf8_names() {
        let tree = Tree::new();
        let name = std::ffi::OsStr::from_bytes(b"bad\xffname.service");
        let dir = tree.guarded().join(name);
        fs::create_dir(&dir).unwrap();
        let bad = cgroup_id(&dir).unwrap();
        let good = tree.make("system.slice/good.service");
        let mut index = tree.index();

        assert_eq!(index.path_of(bad), None);
        assert_eq!(
            index.path_of(good).as_deref(),
            Some("/system.slice/good.service")
        );
    }

    use std::os::unix::ffi::OsStrExt;
}
