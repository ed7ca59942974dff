//! Loading rule files from the drop-in directories, with systemd's precedence.
//!
//! Three roots are searched, highest precedence first: `<root>/etc/slicewall/` (the
//! administrator's), `<root>/run/slicewall/` (runtime) and `<root>/usr/lib/slicewall/` (the
//! distribution's). In each, rule files are read from `rules.d/` and from the per-unit drop-in
//! directories `units/<unit>.d/` (see [`super::unit_dropin`] for their names).
//!
//! Only files named `*.toml`, not starting with '.', count, and subdirectories are skipped. A
//! file in a higher root replaces the file of the same name in the same directory (`rules.d`, or
//! the per-unit directory of the same name) of every lower root. An empty file, or a symbolic
//! link to `/dev/null`, masks the name: no file of that name is read.
//!
//! Among per-unit directories, a file replaces the file of the same name in every less specific
//! directory, for the units that both directories apply to. The rules of the replaced file keep
//! applying to the other units: they get the more specific directories in
//! [`super::Selectors::except`]. A masked name masks it the same way.
//!
//! Files apply in lexical (byte) order of their names, `rules.d` first, then the per-unit
//! directories in lexical order of directory name, but [`super::precedence`] makes the verdict
//! independent of that order.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::model::{Rule, UnitSelector};
use super::parse::{parse_file_bytes, parse_unit_file_bytes};
use super::unit_dropin::UnitDirectory;
use super::RuleError;

/// The drop-in directories relative to the root, highest precedence first.
const RULE_DIRECTORIES: [&str; 3] = [
    "etc/slicewall/rules.d",
    "run/slicewall/rules.d",
    "usr/lib/slicewall/rules.d",
];

/// The directories that contain the per-unit drop-in directories, highest precedence first.
const UNIT_DIRECTORIES: [&str; 3] = [
    "etc/slicewall/units",
    "run/slicewall/units",
    "usr/lib/slicewall/units",
];

/// Rules loaded from the drop-in directories.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    /// Rules of every file that parsed, in the order of `files`, then in file order.
    pub rules: Vec<Rule>,
    /// The files whose rules are in `rules`, after overriding and masking: those of `rules.d`
    /// in lexical order of name, then those of the per-unit directories in lexical order of
    /// directory name and file name. Masked names and files with errors are not listed.
    pub files: Vec<PathBuf>,
}

/// The files of each per-unit drop-in directory name, keyed by that name.
type UnitFiles = BTreeMap<String, (UnitDirectory, BTreeMap<OsString, RuleFile>)>;

/// Returns the drop-in directories under `root`, highest precedence first. The daemon can
/// watch these for changes.
pub fn rule_directories(root: &Path) -> Vec<PathBuf> {
    RULE_DIRECTORIES
        .iter()
        .map(|directory| root.join(directory))
        .collect()
}

/// Returns the directories under `root` that contain the per-unit drop-in directories, highest
/// precedence first.
pub fn unit_directories(root: &Path) -> Vec<PathBuf> {
    UNIT_DIRECTORIES
        .iter()
        .map(|directory| root.join(directory))
        .collect()
}

/// Loads every rule file under `root` and skips the files that fail. Returns the rules of the
/// good files and the errors of the others, for a daemon that starts in degraded mode rather
/// than not at all. A missing directory is not an error, and a per-unit directory with an
/// invalid name is an error that skips only that directory.
pub fn load(root: &Path) -> (RuleSet, Vec<RuleError>) {
    let (names, mut errors) = find_rule_files(root);
    let unit_files = find_unit_files(root, &mut errors);

    let mut rule_set = RuleSet::default();
    for file in names.into_values() {
        let RuleFile::Read(path) = file else {
            continue;
        };
        if let Some(bytes) = read_file(&path, &mut errors) {
            match parse_file_bytes(&path, &bytes) {
                Ok(rules) => rule_set.add(path, rules),
                Err(mut file_errors) => errors.append(&mut file_errors),
            }
        }
    }

    for (directory, files) in unit_files.values() {
        for (name, file) in files {
            let RuleFile::Read(path) = file else {
                continue;
            };
            let Some(bytes) = read_file(path, &mut errors) else {
                continue;
            };
            match parse_unit_file_bytes(path, &bytes, directory) {
                Ok(mut rules) => {
                    let except = overriding_directories(&unit_files, directory, name);
                    for rule in &mut rules {
                        rule.selectors.except.clone_from(&except);
                    }
                    rule_set.add(path.clone(), rules);
                }
                Err(mut file_errors) => errors.append(&mut file_errors),
            }
        }
    }
    (rule_set, errors)
}

impl RuleSet {
    fn add(&mut self, file: PathBuf, mut rules: Vec<Rule>) {
        self.rules.append(&mut rules);
        self.files.push(file);
    }
}

fn read_file(path: &Path, errors: &mut Vec<RuleError>) -> Option<Vec<u8>> {
    match fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(source) => {
            errors.push(RuleError::ReadFile {
                path: path.to_path_buf(),
                source,
            });
            None
        }
    }
}

/// Returns the selectors of the more specific per-unit directories that contain a file `name`,
/// which replaces the file `name` of `directory` for their units. Masked files and files with
/// errors count too, so that the replaced file never applies in their place.
fn overriding_directories(
    unit_files: &UnitFiles,
    directory: &UnitDirectory,
    name: &OsStr,
) -> Vec<UnitSelector> {
    unit_files
        .values()
        .filter(|(other, files)| other.outranks(directory) && files.contains_key(name))
        .map(|(other, _)| other.selector())
        .collect()
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
        collect_rule_files(&directory, &mut names, &mut errors);
    }
    (names, errors)
}

/// Lists the per-unit drop-in directories of all roots and, within each directory name, keeps
/// for each file name the file in the highest root.
fn find_unit_files(root: &Path, errors: &mut Vec<RuleError>) -> UnitFiles {
    let mut unit_files = UnitFiles::new();
    for base in unit_directories(root) {
        let Some(entries) = list_directory(&base, errors) else {
            continue;
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(source) => {
                    errors.push(RuleError::ListDirectory {
                        path: base.clone(),
                        source,
                    });
                    break;
                }
            };
            let name = entry.file_name();
            if name.as_bytes().starts_with(b".") {
                continue;
            }
            let path = entry.path();
            // Other files, such as a README, are skipped. A symbolic link to a directory counts.
            match fs::metadata(&path) {
                Ok(metadata) if metadata.is_dir() => {}
                Ok(_) => continue,
                Err(source) => {
                    errors.push(RuleError::ListDirectory { path, source });
                    continue;
                }
            }
            let directory = match UnitDirectory::parse(&name) {
                Ok(directory) => directory,
                Err(reason) => {
                    errors.push(RuleError::InvalidDirectory { path, reason });
                    continue;
                }
            };
            let (_, files) = unit_files
                .entry(directory.name().to_owned())
                .or_insert_with(|| (directory, BTreeMap::new()));
            collect_rule_files(&path, files, errors);
        }
    }
    unit_files
}

/// Lists a directory. Returns `None` when it is missing, or after recording the error when it
/// cannot be listed.
fn list_directory(directory: &Path, errors: &mut Vec<RuleError>) -> Option<fs::ReadDir> {
    match fs::read_dir(directory) {
        Ok(entries) => Some(entries),
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            errors.push(RuleError::ListDirectory {
                path: directory.to_path_buf(),
                source,
            });
            None
        }
    }
}

/// Adds the rule files of one directory to `names`, except names already taken by a higher
/// directory.
fn collect_rule_files(
    directory: &Path,
    names: &mut BTreeMap<OsString, RuleFile>,
    errors: &mut Vec<RuleError>,
) {
    let Some(entries) = list_directory(directory, errors) else {
        return;
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(source) => {
                errors.push(RuleError::ListDirectory {
                    path: directory.to_path_buf(),
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
