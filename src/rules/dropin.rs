//! Loading rule files from the drop-in directories, with systemd's precedence.
//!
//! Three directories are searched, highest precedence first: `<root>/etc/slicewall/rules.d/`
//! (the administrator's), `<root>/run/slicewall/rules.d/` (runtime) and
//! `<root>/usr/lib/slicewall/rules.d/` (the distribution's). Only files named `*.toml`, not
//! starting with '.', count, and subdirectories are skipped. A file in a higher directory
//! replaces the file of the same name in every lower one. An empty file, or a symbolic link to
//! `/dev/null`, masks the name: no file of that name is read. Files apply in lexical (byte)
//! order of their names, but [`super::precedence`] makes the verdict independent of that order.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::model::Rule;
use super::parse::parse_file_bytes;
use super::RuleError;

/// The drop-in directories relative to the root, highest precedence first.
const RULE_DIRECTORIES: [&str; 3] = [
    "etc/slicewall/rules.d",
    "run/slicewall/rules.d",
    "usr/lib/slicewall/rules.d",
];

/// Rules loaded from the drop-in directories.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    /// Rules of every file that parsed, in lexical order of file name, then in file order.
    pub rules: Vec<Rule>,
    /// The files whose rules are in `rules`, after overriding and masking, in lexical order of
    /// name. Masked names and files with errors are not listed.
    pub files: Vec<PathBuf>,
}

/// Returns the drop-in directories under `root`, highest precedence first. The daemon can
/// watch these for changes.
pub fn rule_directories(root: &Path) -> Vec<PathBuf> {
    RULE_DIRECTORIES
        .iter()
        .map(|directory| root.join(directory))
        .collect()
}

/// Loads every rule file under `root` and skips the files that fail. Returns the rules of the
/// good files and the errors of the others, for a daemon that starts in degraded mode rather
/// than not at all. A missing directory is not an error.
pub fn load(root: &Path) -> (RuleSet, Vec<RuleError>) {
    let (names, mut errors) = find_rule_files(root);

    let mut rule_set = RuleSet::default();
    for file in names.into_values() {
        let RuleFile::Read(path) = file else {
            continue;
        };
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(source) => {
                errors.push(RuleError::ReadFile { path, source });
                continue;
            }
        };
        match parse_file_bytes(&path, &bytes) {
            Ok(mut rules) => {
                rule_set.rules.append(&mut rules);
                rule_set.files.push(path);
            }
            Err(mut file_errors) => errors.append(&mut file_errors),
        }
    }
    (rule_set, errors)
}

/// Loads every rule file under `root`, or returns all errors if there is any. For a reload or a
/// check, where a half-applied rule set would be worse than keeping the old one.
pub fn load_strict(root: &Path) -> Result<RuleSet, Vec<RuleError>> {
    let (rule_set, errors) = load(root);
    if errors.is_empty() {
        Ok(rule_set)
    } else {
        Err(errors)
    }
}

/// Outcome for one file name after overriding: a file to read, or a masked name.
enum RuleFile {
    Read(PathBuf),
    Masked,
}

/// Lists the rule file names of all directories and keeps, for each name, the file in the
/// highest directory. Returns them keyed by name, so iteration is in lexical order.
fn find_rule_files(root: &Path) -> (BTreeMap<OsString, RuleFile>, Vec<RuleError>) {
    let mut names = BTreeMap::new();
    let mut errors = Vec::new();

    for directory in rule_directories(root) {
        let entries = match fs::read_dir(&directory) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                errors.push(RuleError::ListDirectory {
                    path: directory,
                    source,
                });
                continue;
            }
        };

        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(source) => {
                    errors.push(RuleError::ListDirectory {
                        path: directory.clone(),
                        source,
                    });
                    break;
                }
            };
            let name = entry.file_name();
            if !is_rule_file_name(&name) || names.contains_key(&name) {
                continue;
            }

            let path = entry.path();
            match classify(&path) {
                Ok(Some(file)) => {
                    names.insert(name, file);
                }
                Ok(None) => {}
                Err(source) => {
                    // The name stays taken, so a lower file does not silently replace a file
                    // the administrator meant to apply.
                    errors.push(RuleError::ReadFile { path, source });
                    names.insert(name, RuleFile::Masked);
                }
            }
        }
    }
    (names, errors)
}

fn is_rule_file_name(name: &OsStr) -> bool {
    let bytes = name.as_bytes();
    bytes.len() > ".toml".len() && bytes.ends_with(b".toml") && !bytes.starts_with(b".")
}

/// Classifies a directory entry. Returns `None` for an entry that is not a file (a
/// subdirectory, socket or FIFO), which does not take the name.
///
/// NOTE: symbolic links are resolved from the host's `/`, not from `root`, so with another root
/// an absolute link target outside that root is read. A link to `/dev/null` masks either way.
fn classify(path: &Path) -> io::Result<Option<RuleFile>> {
    let link_metadata = fs::symlink_metadata(path)?;
    if link_metadata.file_type().is_symlink() && fs::read_link(path)? == Path::new("/dev/null") {
        return Ok(Some(RuleFile::Masked));
    }

    let metadata = fs::metadata(path)?;
    let file_type = metadata.file_type();
    if file_type.is_char_device() && metadata.rdev() == libc::makedev(1, 3) {
        return Ok(Some(RuleFile::Masked));
    }
    if !file_type.is_file() {
        return Ok(None);
    }
    if metadata.len() == 0 {
        return Ok(Some(RuleFile::Masked));
    }
    Ok(Some(RuleFile::Read(path.to_path_buf())))
}
