//! Parsing of one rule file into [`Rule`]s.
//!
//! A file parses whole or not at all. TOML syntax errors, duplicate keys, unknown fields and
//! unknown top-level tables stop at the first error, as the `toml` crate reports it. Past that
//! point every `[[rule]]` table is checked in full, so one file can report several errors.
//! Each error carries the 1-based line and column of the offending value.
//!
//! Accepted values:
//! - `unit`: a unit name ending in `.service`, `.scope`, `.socket`, `.mount` or `.swap`, a slice
//!   name ending in `.slice`, or a glob over either (any of `*?[]{}` makes it a glob).
//! - `app`: an application ID or a glob over application IDs.
//! - `exe`: an absolute path without `.`, `..` or empty components.
//! - `sha256`: 64 hexadecimal digits in either case.
//! - `user`: a uid in 0..=4294967294, or a user name that the host's user database resolves
//!   when the file is parsed.
//! - `address`: IPv4 or IPv6 addresses and prefixes. A prefix with host bits set, such as
//!   `10.0.0.1/8`, and any IPv4-mapped IPv6 address (`::ffff:0:0/96`) are rejected, the latter
//!   because flows to mapped addresses are judged as IPv4.
//! - `port`: numbers in 1..=65535, and strings `"443"` or `"first-last"` with first <= last.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::path::{Component, Path};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::model::{
    Action, Destination, GlobPattern, Origin, PortRange, Protocol, Rule, Selectors, Sha256Digest,
    UnitSelector,
};
use super::unit_dropin::UnitDirectory;
use super::RuleError;
use crate::unit::{is_unit_name_byte, UNIT_NAME_MAX};

const PRIORITY_RANGE: RangeInclusive<i64> = -1000..=1000;

/// Reason why one value in a rule file is invalid. [`RuleError::Invalid`] adds the position.
#[derive(Debug, thiserror::Error)]
pub enum ParseErrorKind {
    /// Syntax or structure error, in the words of the `toml` crate.
    #[error("{message}")]
    Toml { message: String },

    #[error("invalid UTF-8")]
    NotUtf8,

    #[error("missing required field `{field}`")]
    MissingField { field: &'static str },

    #[error("field `{field}` must be {expected}, found {found}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        found: String,
    },

    #[error("field `{field}` must list at least one value (omit the field to match any value)")]
    EmptyList { field: &'static str },

    #[error("field `{field}` must not be an empty string")]
    EmptyString { field: &'static str },

    #[error("field `action`: invalid action {value:?}, expected \"allow\", \"deny\" or \"ask\"")]
    InvalidAction { value: String },

    #[error("field `protocol`: invalid protocol {value:?}, expected \"tcp\", \"udp\" or \"any\"")]
    InvalidProtocol { value: String },

    #[error("field `priority`: priority {value} is out of range -1000 to 1000")]
    PriorityOutOfRange { value: i64 },

    #[error("field `unit` is not allowed in a per-unit drop-in file, because its directory {directory} already names the unit")]
    UnitInDropIn { directory: String },

    #[error("field `unit`: invalid unit name {value:?}, {reason}")]
    InvalidUnit { value: String, reason: &'static str },

    #[error("field `{field}`: invalid glob {value:?}, {reason}")]
    InvalidGlob {
        field: &'static str,
        value: String,
        reason: String,
    },

    #[error("field `exe`: invalid executable path {value:?}, {reason}")]
    InvalidExe { value: String, reason: &'static str },

    #[error("field `sha256`: invalid digest {value:?}, expected 64 hexadecimal digits")]
    InvalidSha256 { value: String },

    #[error("field `user`: uid {value} is out of range 0 to 4294967294")]
    UidOutOfRange { value: i64 },

    #[error(
        "field `user`: user name {value:?} is all digits, write a uid as a number: user = {value}"
    )]
    NumericUserName { value: String },

    #[error("field `user`: user {name:?} not found")]
    UnknownUser { name: String },

    #[error("field `user`: failed to look up user {name:?}: {error}")]
    UserLookup { name: String, error: io::Error },

    #[error("field `address`: invalid address {value:?}, expected an IPv4 or IPv6 address or prefix such as \"192.0.2.0/24\"")]
    InvalidAddress { value: String },

    #[error("field `address`: invalid prefix length in {value:?}, expected 0 to {max}")]
    InvalidPrefixLength { value: String, max: u8 },

    #[error("field `address`: prefix {value:?} has host bits set, write \"{network}\"")]
    HostBitsSet { value: String, network: IpNet },

    #[error(
        "field `address`: {value:?} is an IPv4-mapped IPv6 address, write the IPv4 form \"{ipv4}\""
    )]
    MappedAddress { value: String, ipv4: String },

    #[error("field `port`: invalid port {value}, expected 1 to 65535")]
    InvalidPort { value: i64 },

    #[error("field `port`: invalid port range {value:?}, expected \"443\" or \"first-last\" with 1 <= first <= last <= 65535")]
    InvalidPortRange { value: String },
}

/// Parses the text of one rule file. `path` is used only in origins and error messages.
///
/// Returns every error found. The rules are returned only when there is none.
pub fn parse_file(path: &Path, text: &str) -> Result<Vec<Rule>, Vec<RuleError>> {
    parse_text(path, text, None)
}

/// Parses a rule file read as bytes. Bytes that are not UTF-8 are an error at the first invalid
/// byte.
pub fn parse_file_bytes(path: &Path, bytes: &[u8]) -> Result<Vec<Rule>, Vec<RuleError>> {
    parse_bytes(path, bytes, None)
}

/// Parses a file of a per-unit drop-in directory read as bytes. Its rules get the directory's
/// unit selector, and a `unit` key is an error.
pub(super) fn parse_unit_file_bytes(
    path: &Path,
    bytes: &[u8],
    directory: &UnitDirectory,
) -> Result<Vec<Rule>, Vec<RuleError>> {
    parse_bytes(path, bytes, Some(directory))
}

fn parse_bytes(
    path: &Path,
    bytes: &[u8],
    directory: Option<&UnitDirectory>,
) -> Result<Vec<Rule>, Vec<RuleError>> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse_text(path, text, directory),
        Err(error) => {
            let valid = &bytes[..error.valid_up_to()];
            // The prefix up to valid_up_to is valid UTF-8 by definition.
            let valid = std::str::from_utf8(valid).unwrap_or_default();
            let source = SourceFile::new(path, valid);
            Err(vec![source.error(valid.len(), ParseErrorKind::NotUtf8)])
        }
    }
}

fn parse_text(
    path: &Path,
    text: &str,
    directory: Option<&UnitDirectory>,
) -> Result<Vec<Rule>, Vec<RuleError>> {
    let source = SourceFile::new(path, text);

    let file: RawFile = toml::from_str(text).map_err(|error| {
        // The toml crate splits some messages over several lines. Joined, each error stays on
        // one FILE:LINE:COLUMN line.
        let message = error.message().trim().replace('\n', ", ");
        let offset = error.span().map_or(0, |span| span.start);
        vec![source.error(offset, ParseErrorKind::Toml { message })]
    })?;

    let mut rules = Vec::with_capacity(file.rule.len());
    let mut errors: Vec<(usize, ParseErrorKind)> = Vec::new();
    for raw in &file.rule {
        let mut checker = RuleChecker {
            directory,
            errors: Vec::new(),
        };
        let rule = checker.check_rule(&source, raw);
        match rule {
            Some(rule) if checker.errors.is_empty() => rules.push(rule),
            _ => errors.append(&mut checker.errors),
        }
    }

    if errors.is_empty() {
        return Ok(rules);
    }
    errors.sort_by_key(|(offset, _)| *offset);
    Err(errors
        .into_iter()
        .map(|(offset, kind)| source.error(offset, kind))
        .collect())
}

/// Text of one file with its line starts, for turning byte offsets into lines and columns.
struct SourceFile<'a> {
    path: &'a Path,
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> SourceFile<'a> {
    fn new(path: &'a Path, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(index, _)| index + 1))
            .collect();
        SourceFile {
            path,
            text,
            line_starts,
        }
    }

    /// Returns the 1-based line and character column of a byte offset.
    fn position(&self, offset: usize) -> (u32, u32) {
        let offset = offset.min(self.text.len());
        let line_index = match self.line_starts.binary_search(&offset) {
            Ok(index) => index,
            Err(index) => index - 1,
        };
        let line_start = self.line_starts[line_index];
        let column = match self.text.get(line_start..offset) {
            Some(prefix) => prefix.chars().count(),
            None => offset - line_start,
        };
        (saturating_u32(line_index + 1), saturating_u32(column + 1))
    }

    fn error(&self, offset: usize, kind: ParseErrorKind) -> RuleError {
        let (line, column) = self.position(offset);
        RuleError::Invalid {
            file: self.path.to_path_buf(),
            line,
            column,
            kind,
        }
    }

    fn origin(&self, offset: usize) -> Origin {
        let (line, column) = self.position(offset);
        Origin {
            file: self.path.to_path_buf(),
            line,
            column,
        }
    }
}

fn saturating_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default, deserialize_with = "deserialize_rule_tables")]
    rule: Vec<Spanned<RawRule>>,
}

/// One `[[rule]]` table with every value kept untyped, so that the checks below can word type
/// errors themselves and report all of them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[rule]] table")]
struct RawRule {
    action: Option<Spanned<RawValue>>,
    unit: Option<Spanned<RawValue>>,
    app: Option<Spanned<RawValue>>,
    exe: Option<Spanned<RawValue>>,
    sha256: Option<Spanned<RawValue>>,
    user: Option<Spanned<RawValue>>,
    address: Option<Spanned<RawValue>>,
    port: Option<Spanned<RawValue>>,
    protocol: Option<Spanned<RawValue>>,
    priority: Option<Spanned<RawValue>>,
    comment: Option<Spanned<RawValue>>,
}

/// Accepts `rule` only as an array of tables, with a message that shows the `[[rule]]` syntax.
fn deserialize_rule_tables<'de, D>(deserializer: D) -> Result<Vec<Spanned<RawRule>>, D::Error>
where
    D: Deserializer<'de>,
{
    struct RuleTablesVisitor;

    impl<'de> Visitor<'de> for RuleTablesVisitor {
        type Value = Vec<Spanned<RawRule>>;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("an array of tables written as [[rule]]")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut rules = Vec::new();
            while let Some(rule) = seq.next_element()? {
                rules.push(rule);
            }
            Ok(rules)
        }
    }

    deserializer.deserialize_seq(RuleTablesVisitor)
}

/// Any TOML value, with spans kept for array elements.
#[derive(Debug)]
enum RawValue {
    Integer(i64),
    String(String),
    Boolean(bool),
    Float(f64),
    Datetime,
    Array(Vec<Spanned<RawValue>>),
    Table,
}

impl RawValue {
    /// Describes the value for a type error, such as `boolean true` or `a table`.
    fn describe(&self) -> String {
        match self {
            RawValue::Integer(value) => format!("integer {value}"),
            RawValue::String(value) => format!("string {value:?}"),
            RawValue::Boolean(value) => format!("boolean {value}"),
            RawValue::Float(value) => format!("float {value}"),
            RawValue::Datetime => "a date-time".to_owned(),
            RawValue::Array(_) => "an array".to_owned(),
            RawValue::Table => "a table".to_owned(),
        }
    }
}

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawValueVisitor)
    }
}

struct RawValueVisitor;

impl<'de> Visitor<'de> for RawValueVisitor {
    type Value = RawValue;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a TOML value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<RawValue, E> {
        Ok(RawValue::Boolean(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<RawValue, E> {
        Ok(RawValue::Integer(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<RawValue, E> {
        i64::try_from(value)
            .map(RawValue::Integer)
            .map_err(|_| E::custom(format!("integer {value} is out of range")))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<RawValue, E> {
        Ok(RawValue::Float(value))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<RawValue, E> {
        Ok(RawValue::String(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<RawValue, E> {
        Ok(RawValue::String(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(RawValue::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawValue, A::Error> {
        // The toml crate hands a date-time to deserialize_any as a map with one private key.
        let mut is_datetime = false;
        while let Some(key) = map.next_key::<String>()? {
            is_datetime |= key.starts_with("$__toml_private_datetime");
            map.next_value::<IgnoredAny>()?;
        }
        Ok(if is_datetime {
            RawValue::Datetime
        } else {
            RawValue::Table
        })
    }
}

/// Checks one `[[rule]]` table and collects its errors with their byte offsets.
struct RuleChecker<'d> {
    /// The per-unit drop-in directory of the file, which supplies the unit selector.
    directory: Option<&'d UnitDirectory>,
    errors: Vec<(usize, ParseErrorKind)>,
}

impl RuleChecker<'_> {
    /// Returns the rule, or `None` when a required value is missing. Errors in other fields go
    /// to `self.errors`, and the caller discards the rule when there is any.
    fn check_rule(&mut self, source: &SourceFile, raw: &Spanned<RawRule>) -> Option<Rule> {
        let header = raw.span().start;
        let raw = raw.get_ref();

        let action = match &raw.action {
            Some(value) => self.action(value),
            None => {
                self.report(header, ParseErrorKind::MissingField { field: "action" });
                None
            }
        };

        let unit = match (self.directory, &raw.unit) {
            (Some(directory), Some(value)) => {
                let directory = directory.name().to_owned();
                self.report(
                    value.span().start,
                    ParseErrorKind::UnitInDropIn { directory },
                );
                None
            }
            (Some(directory), None) => Some(directory.selector()),
            (None, Some(value)) => self.unit(value),
            (None, None) => None,
        };
        let selectors = Selectors {
            unit,
            app: raw.app.as_ref().and_then(|value| self.app(value)),
            exe: raw.exe.as_ref().and_then(|value| self.exe(value)),
            sha256: raw.sha256.as_ref().and_then(|value| self.sha256(value)),
            user: raw.user.as_ref().and_then(|value| self.user(value)),
            except: Vec::new(),
        };

        let addresses = match &raw.address {
            Some(value) => self.list(value, "address", Self::address),
            None => Vec::new(),
        };
        let ports = match &raw.port {
            Some(value) => self.list(value, "port", Self::port),
            None => Vec::new(),
        };
        let protocol = match &raw.protocol {
            Some(value) => self.protocol(value).unwrap_or_default(),
            None => Protocol::Any,
        };
        let priority = match &raw.priority {
            Some(value) => self.priority(value).unwrap_or_default(),
            None => 0,
        };
        if let Some(comment) = &raw.comment {
            self.string(comment, "comment", "a string");
        }

        Some(Rule {
            origin: source.origin(header),
            action: action?,
            priority,
            selectors,
            destination: Destination {
                addresses,
                ports,
                protocol,
            },
        })
    }

    fn report(&mut self, offset: usize, kind: ParseErrorKind) {
        self.errors.push((offset, kind));
    }

    /// Returns the string in `value`, or reports a type error and returns `None`.
    fn string<'v>(
        &mut self,
        value: &'v Spanned<RawValue>,
        field: &'static str,
        expected: &'static str,
    ) -> Option<&'v str> {
        match value.get_ref() {
            RawValue::String(text) => Some(text),
            other => {
                let found = other.describe();
                self.report(
                    value.span().start,
                    ParseErrorKind::WrongType {
                        field,
                        expected,
                        found,
                    },
                );
                None
            }
        }
    }

    /// Checks a field that takes one value or a non-empty array, item by item.
    fn list<T>(
        &mut self,
        value: &Spanned<RawValue>,
        field: &'static str,
        check_item: fn(&mut Self, &Spanned<RawValue>) -> Option<T>,
    ) -> Vec<T> {
        let RawValue::Array(items) = value.get_ref() else {
            return check_item(self, value).into_iter().collect();
        };
        if items.is_empty() {
            self.report(value.span().start, ParseErrorKind::EmptyList { field });
            return Vec::new();
        }
        items
            .iter()
            .filter_map(|item| check_item(self, item))
            .collect()
    }

    fn action(&mut self, value: &Spanned<RawValue>) -> Option<Action> {
        let text = self.string(value, "action", "a string")?;
        let action = match text {
            "allow" => Action::Allow,
            "deny" => Action::Deny,
            "ask" => Action::Ask,
            _ => {
                let value_text = text.to_owned();
                self.report(
                    value.span().start,
                    ParseErrorKind::InvalidAction { value: value_text },
                );
                return None;
            }
        };
        Some(action)
    }

    fn protocol(&mut self, value: &Spanned<RawValue>) -> Option<Protocol> {
        let text = self.string(value, "protocol", "a string")?;
        let protocol = match text {
            "any" => Protocol::Any,
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => {
                let value_text = text.to_owned();
                self.report(
                    value.span().start,
                    ParseErrorKind::InvalidProtocol { value: value_text },
                );
                return None;
            }
        };
        Some(protocol)
    }

    fn priority(&mut self, value: &Spanned<RawValue>) -> Option<i16> {
        let number = match value.get_ref() {
            RawValue::Integer(number) => *number,
            other => {
                let found = other.describe();
                self.report(
                    value.span().start,
                    ParseErrorKind::WrongType {
                        field: "priority",
                        expected: "an integer",
                        found,
                    },
                );
                return None;
            }
        };
        if !PRIORITY_RANGE.contains(&number) {
            self.report(
                value.span().start,
                ParseErrorKind::PriorityOutOfRange { value: number },
            );
            return None;
        }
        i16::try_from(number).ok()
    }

    fn unit(&mut self, value: &Spanned<RawValue>) -> Option<UnitSelector> {
        let text = self.string(value, "unit", "a string")?;
        let offset = value.span().start;
        if text.is_empty() {
            self.report(offset, ParseErrorKind::EmptyString { field: "unit" });
            return None;
        }

        if GlobPattern::is_glob(text) {
            return match GlobPattern::new(text) {
                Ok(pattern) => Some(UnitSelector::Glob(pattern)),
                Err(error) => {
                    let kind = ParseErrorKind::InvalidGlob {
                        field: "unit",
                        value: text.to_owned(),
                        reason: error.kind().to_string(),
                    };
                    self.report(offset, kind);
                    None
                }
            };
        }

        match check_unit_name(text) {
            Ok(selector) => Some(selector),
            Err(reason) => {
                let kind = ParseErrorKind::InvalidUnit {
                    value: text.to_owned(),
                    reason,
                };
                self.report(offset, kind);
                None
            }
        }
    }

    fn app(&mut self, value: &Spanned<RawValue>) -> Option<GlobPattern> {
        let text = self.string(value, "app", "a string")?;
        let offset = value.span().start;
        if text.is_empty() {
            self.report(offset, ParseErrorKind::EmptyString { field: "app" });
            return None;
        }
        match GlobPattern::new(text) {
            Ok(pattern) => Some(pattern),
            Err(error) => {
                let kind = ParseErrorKind::InvalidGlob {
                    field: "app",
                    value: text.to_owned(),
                    reason: error.kind().to_string(),
                };
                self.report(offset, kind);
                None
            }
        }
    }

    fn exe(&mut self, value: &Spanned<RawValue>) -> Option<std::path::PathBuf> {
        let text = self.string(value, "exe", "a string")?;
        match check_exe_path(text) {
            Ok(()) => Some(text.into()),
            Err(reason) => {
                let kind = ParseErrorKind::InvalidExe {
                    value: text.to_owned(),
                    reason,
                };
                self.report(value.span().start, kind);
                None
            }
        }
    }

    fn sha256(&mut self, value: &Spanned<RawValue>) -> Option<Sha256Digest> {
        let text = self.string(value, "sha256", "a string")?;
        match text.parse() {
            Ok(digest) => Some(digest),
            Err(_) => {
                let kind = ParseErrorKind::InvalidSha256 {
                    value: text.to_owned(),
                };
                self.report(value.span().start, kind);
                None
            }
        }
    }

    fn user(&mut self, value: &Spanned<RawValue>) -> Option<u32> {
        let offset = value.span().start;
        let name = match value.get_ref() {
            RawValue::Integer(uid) => {
                // uid_t -1 (4294967295) means "no user" to the kernel and is never a real uid.
                return match u32::try_from(*uid) {
                    Ok(uid) if uid != u32::MAX => Some(uid),
                    _ => {
                        self.report(offset, ParseErrorKind::UidOutOfRange { value: *uid });
                        None
                    }
                };
            }
            RawValue::String(name) => name,
            other => {
                let found = other.describe();
                self.report(
                    offset,
                    ParseErrorKind::WrongType {
                        field: "user",
                        expected: "a uid number or a user name string",
                        found,
                    },
                );
                return None;
            }
        };

        if name.is_empty() {
            self.report(offset, ParseErrorKind::EmptyString { field: "user" });
            return None;
        }
        if name.bytes().all(|byte| byte.is_ascii_digit()) {
            let kind = ParseErrorKind::NumericUserName {
                value: name.clone(),
            };
            self.report(offset, kind);
            return None;
        }
        match lookup_uid(name) {
            Ok(Some(uid)) => Some(uid),
            Ok(None) => {
                let kind = ParseErrorKind::UnknownUser { name: name.clone() };
                self.report(offset, kind);
                None
            }
            Err(error) => {
                let kind = ParseErrorKind::UserLookup {
                    name: name.clone(),
                    error,
                };
                self.report(offset, kind);
                None
            }
        }
    }

    fn address(&mut self, value: &Spanned<RawValue>) -> Option<IpNet> {
        let text = self.string(value, "address", "an address string or a list of them")?;
        match parse_address(text) {
            Ok(network) => Some(network),
            Err(kind) => {
                self.report(value.span().start, kind);
                None
            }
        }
    }

    fn port(&mut self, value: &Spanned<RawValue>) -> Option<PortRange> {
        let offset = value.span().start;
        match value.get_ref() {
            RawValue::Integer(number) => match u16::try_from(*number) {
                Ok(port) if port != 0 => Some(PortRange {
                    first: port,
                    last: port,
                }),
                _ => {
                    self.report(offset, ParseErrorKind::InvalidPort { value: *number });
                    None
                }
            },
            RawValue::String(text) => match parse_port_range(text) {
                Some(range) => Some(range),
                None => {
                    let kind = ParseErrorKind::InvalidPortRange {
                        value: text.clone(),
                    };
                    self.report(offset, kind);
                    None
                }
            },
            other => {
                let found = other.describe();
                self.report(
                    offset,
                    ParseErrorKind::WrongType {
                        field: "port",
                        expected: "a port number, a \"first-last\" string or a list of them",
                        found,
                    },
                );
                None
            }
        }
    }
}

/// Classifies a unit name that is not a glob. Returns the reason when it is not a valid name
/// of a unit that can hold processes or of a slice.
pub(super) fn check_unit_name(name: &str) -> Result<UnitSelector, &'static str> {
    if name.len() > UNIT_NAME_MAX {
        return Err("unit names are at most 255 bytes long");
    }
    if !name.bytes().all(is_unit_name_byte) {
        return Err("unit names contain only ASCII letters, digits and \":-_.\\@\" (write other characters with systemd-escape)");
    }

    let (stem, suffix) = name.rsplit_once('.').unwrap_or((name, ""));
    if stem.is_empty() {
        return Err("the name before the unit type suffix is empty");
    }
    match suffix {
        "slice" => Ok(UnitSelector::Slice(name.to_owned())),
        "service" | "scope" | "socket" | "mount" | "swap" => Ok(UnitSelector::Exact(name.to_owned())),
        _ => Err("expected a name ending in .service, .scope, .socket, .mount, .swap or .slice, the unit types that hold processes"),
    }
}

/// Checks that an `exe` path is absolute and normalized. The daemon compares it byte for byte
/// with the resolved path of the running executable, so any other spelling could never match.
///
/// NOTE: a path through a symbolic link (`/bin/curl` where `/bin` links to `usr/bin`) passes
/// this check but never matches, because parsing does no file system access.
fn check_exe_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("expected an absolute path");
    }
    if path.contains('\0') {
        return Err("it contains a NUL character");
    }
    if path == "/" || path.ends_with('/') {
        return Err("expected the path of a file, not a directory");
    }
    if path.contains("//") {
        return Err("it contains an empty component (\"//\")");
    }
    let has_dot_component = Path::new(path)
        .components()
        .any(|component| matches!(component, Component::CurDir | Component::ParentDir));
    // Path::components drops "." components inside a path, so look for them in the text too.
    if has_dot_component || path.contains("/./") {
        return Err("it contains a \".\" or \"..\" component");
    }
    Ok(())
}

/// Parses an address or prefix and rejects host bits and IPv4-mapped IPv6 addresses.
fn parse_address(text: &str) -> Result<IpNet, ParseErrorKind> {
    let invalid = || ParseErrorKind::InvalidAddress {
        value: text.to_owned(),
    };

    let network = match text.split_once('/') {
        None => IpNet::from(text.parse::<IpAddr>().map_err(|_| invalid())?),
        Some((address, prefix_len)) => {
            let address: IpAddr = address.parse().map_err(|_| invalid())?;
            let max = if address.is_ipv4() { 32 } else { 128 };
            let Some(prefix_len) = parse_prefix_len(prefix_len).filter(|length| *length <= max)
            else {
                return Err(ParseErrorKind::InvalidPrefixLength {
                    value: text.to_owned(),
                    max,
                });
            };
            IpNet::new(address, prefix_len).map_err(|_| invalid())?
        }
    };

    if let IpNet::V6(ipv6) = network {
        if let Some(ipv4) = mapped_ipv4_network(ipv6) {
            let ipv4 = if text.contains('/') {
                ipv4.to_string()
            } else {
                ipv4.addr().to_string()
            };
            return Err(ParseErrorKind::MappedAddress {
                value: text.to_owned(),
                ipv4,
            });
        }
    }

    if network.trunc() != network {
        return Err(ParseErrorKind::HostBitsSet {
            value: text.to_owned(),
            network: network.trunc(),
        });
    }
    Ok(network)
}

/// Parses a prefix length in plain decimal. A sign or a leading zero is rejected.
fn parse_prefix_len(text: &str) -> Option<u8> {
    let plain = !text.is_empty()
        && text.bytes().all(|byte| byte.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !plain {
        return None;
    }
    text.parse().ok()
}

/// Returns the IPv4 equivalent of a network inside `::ffff:0:0/96`.
fn mapped_ipv4_network(network: Ipv6Net) -> Option<Ipv4Net> {
    let mapped_range = Ipv6Net::new(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96).ok()?;
    if !mapped_range.contains(&network) {
        return None;
    }
    let ipv4 = network.addr().to_ipv4_mapped()?;
    Ipv4Net::new(ipv4, network.prefix_len() - 96).ok()
}

/// Parses `"443"` or `"first-last"` with 1 <= first <= last <= 65535.
fn parse_port_range(text: &str) -> Option<PortRange> {
    let parse_port = |digits: &str| -> Option<u16> {
        if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
            return None;
        }
        digits.parse::<u16>().ok().filter(|port| *port != 0)
    };

    let (first, last) = match text.split_once('-') {
        Some((first, last)) => (parse_port(first)?, parse_port(last)?),
        None => {
            let port = parse_port(text)?;
            (port, port)
        }
    };
    (first <= last).then_some(PortRange { first, last })
}

/// Looks up a user name in the host's user database (NSS). Returns `Ok(None)` when no such user
/// exists.
fn lookup_uid(name: &str) -> io::Result<Option<u32>> {
    // A name with a NUL byte cannot be in the database.
    let Ok(c_name) = CString::new(name) else {
        return Ok(None);
    };
    // Starting size of the string buffer. Each ERANGE doubles it, up to MAX_BUFFER.
    const MAX_BUFFER: usize = 1 << 20;
    let mut buffer: Vec<libc::c_char> = vec![0; 1024];

    loop {
        let mut entry = MaybeUninit::<libc::passwd>::uninit();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the duration of the call: c_name is NUL-terminated,
        // entry and result are writable locals, and buffer has buffer.len() writable bytes.
        // getpwnam_r sets result to null or to &entry, and when it is &entry, getpwnam_r has
        // initialized entry, so reading pw_uid through it is sound.
        let (code, uid) = unsafe {
            let code = libc::getpwnam_r(
                c_name.as_ptr(),
                entry.as_mut_ptr(),
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut result,
            );
            let uid = if code == 0 && !result.is_null() {
                Some((*result).pw_uid)
            } else {
                None
            };
            (code, uid)
        };

        match code {
            0 => return Ok(uid),
            libc::ERANGE if buffer.len() < MAX_BUFFER => buffer.resize(buffer.len() * 2, 0),
            // getpwnam_r(3) lists these as meaning "not found" on some systems.
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            _ => return Err(io::Error::from_raw_os_error(code)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/slicewall/rules.d/50-test.toml";

    fn parse(text: &str) -> Result<Vec<Rule>, Vec<RuleError>> {
        parse_file(Path::new(FILE), text)
    }

    /// Parses text that must fail and returns each error as "LINE:COLUMN: message".
    fn errors(text: &str) -> Vec<String> {
        let errors = match parse(text) {
            Ok(rules) => panic!("expected errors, parsed {rules:?}"),
            Err(errors) => errors,
        };
        errors
            .iter()
            .map(|error| {
                let message = error.to_string();
                let prefix = format!("{FILE}:");
                assert!(message.starts_with(&prefix), "{message}");
                message[prefix.len()..].to_owned()
            })
            .collect()
    }

    /// Returns a rule on lines 1 and 2 with `line` as line 2, adding a valid action after it
    /// unless `line` sets the action.
    fn rule_with(line: &str) -> String {
        if line.starts_with("action") {
            format!("[[rule]]\n{line}\n")
        } else {
            format!("[[rule]]\n{line}\naction = \"deny\"\n")
        }
    }

    fn single_error(text: &str) -> String {
        let mut all = errors(text);
        assert_eq!(all.len(), 1, "errors: {all:?}");
        all.remove(0)
    }

    #[test]
    fn full_rule_parses() {
        let text = r#"
# outbound web for the tracker
[[rule]]
action = "deny"
unit = "app-*-org.example.Tracker-*.scope"
app = "org.example.Tracker"
exe = "/usr/bin/curl"
sha256 = "00112233445566778899AABBCCDDEEFF00112233445566778899aabbccddeeff"
user = 1000
address = ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]
port = [80, "8000-8099", "443"]
protocol = "tcp"
priority = -1000
comment = "free text"
"#;
        let rules = parse(text).unwrap();
        assert_eq!(rules.len(), 1);
        let rule = &rules[0];

        assert_eq!(rule.origin.file, Path::new(FILE));
        assert_eq!((rule.origin.line, rule.origin.column), (3, 1));
        assert_eq!(rule.action, Action::Deny);
        assert_eq!(rule.priority, -1000);
        assert!(
            matches!(&rule.selectors.unit, Some(UnitSelector::Glob(pattern)) if pattern.as_str() == "app-*-org.example.Tracker-*.scope")
        );
        assert_eq!(
            rule.selectors.app.as_ref().map(GlobPattern::as_str),
            Some("org.example.Tracker")
        );
        assert_eq!(
            rule.selectors.exe.as_deref(),
            Some(Path::new("/usr/bin/curl"))
        );
        assert_eq!(
            rule.selectors
                .sha256
                .map(|digest| digest.to_string())
                .as_deref(),
            Some("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")
        );
        assert_eq!(rule.selectors.user, Some(1000));
        let addresses: Vec<String> = rule
            .destination
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            addresses,
            ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7/32"]
        );
        let ports: Vec<String> = rule
            .destination
            .ports
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(ports, ["80", "8000-8099", "443"]);
        assert_eq!(rule.destination.protocol, Protocol::Tcp);
    }

    #[test]
    fn defaults_and_single_values() {
        let text = "[[rule]]\naction = \"allow\"\naddress = \"10.0.0.0/8\"\nport = 53\n\n[[rule]]\naction = \"ask\"\n";
        let rules = parse(text).unwrap();
        assert_eq!(rules.len(), 2);

        assert_eq!(
            rules[0].destination.addresses,
            vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            rules[0].destination.ports,
            vec![PortRange {
                first: 53,
                last: 53
            }]
        );
        assert_eq!(rules[0].destination.protocol, Protocol::Any);
        assert_eq!(rules[0].priority, 0);

        assert_eq!((rules[1].origin.line, rules[1].origin.column), (6, 1));
        assert_eq!(rules[1].action, Action::Ask);
        assert!(rules[1].selectors.is_empty());
        assert_eq!(rules[1].destination, Destination::default());
    }

    #[test]
    fn empty_and_comment_only_files() {
        assert_eq!(parse("").unwrap(), Vec::new());
        assert_eq!(parse("# nothing here\n\n").unwrap(), Vec::new());
    }

    #[test]
    fn unit_kinds() {
        let unit = |text: &str| {
            let rules = parse(&format!("[[rule]]\naction = \"deny\"\nunit = {text:?}\n")).unwrap();
            rules[0].selectors.unit.clone().unwrap()
        };
        assert_eq!(
            unit("sshd.service"),
            UnitSelector::Exact("sshd.service".into())
        );
        assert_eq!(
            unit("user@1000.service"),
            UnitSelector::Exact("user@1000.service".into())
        );
        assert_eq!(
            unit("app-gnome-xdg\\x2duser\\x2ddirs-1.scope"),
            UnitSelector::Exact("app-gnome-xdg\\x2duser\\x2ddirs-1.scope".into())
        );
        assert_eq!(
            unit("system.slice"),
            UnitSelector::Slice("system.slice".into())
        );
        assert_eq!(unit("-.slice"), UnitSelector::Slice("-.slice".into()));
        assert!(matches!(unit("user-*.slice"), UnitSelector::Glob(_)));
        assert!(matches!(unit("app-{a,b}.scope"), UnitSelector::Glob(_)));
    }

    #[test]
    fn user_name_resolves() {
        let rules = parse("[[rule]]\naction = \"deny\"\nuser = \"root\"\n").unwrap();
        assert_eq!(rules[0].selectors.user, Some(0));
    }

    #[test]
    fn error_toml_syntax() {
        assert_eq!(
            single_error("[[rule]]\naction = \"deny\nport = 80\n"),
            "2:15: invalid basic string"
        );
        assert_eq!(
            single_error("[[rule]]\naction = \n"),
            "2:10: invalid string, expected `\"`, `'`"
        );
    }

    #[test]
    fn error_duplicate_key() {
        assert_eq!(
            single_error("[[rule]]\naction = \"deny\"\naction = \"allow\"\n"),
            "3:1: duplicate key `action` in table `rule`"
        );
    }

    #[test]
    fn error_unknown_field() {
        let error = single_error("[[rule]]\naction = \"deny\"\n  destination = \"x\"\n");
        assert!(
            error.starts_with("3:3: unknown field `destination`, expected one of `action`, "),
            "{error}"
        );
    }

    #[test]
    fn error_unknown_top_level_table() {
        assert_eq!(
            single_error("[[rule]]\naction = \"deny\"\n\n[defaults]\naction = \"allow\"\n"),
            "4:2: unknown field `defaults`, expected `rule`"
        );
        assert_eq!(
            single_error("policy = \"deny\"\n"),
            "1:1: unknown field `policy`, expected `rule`"
        );
    }

    #[test]
    fn error_rule_not_array_of_tables() {
        assert_eq!(
            single_error("[rule]\naction = \"deny\"\n"),
            "1:1: invalid type: map, expected an array of tables written as [[rule]]"
        );
        assert_eq!(
            single_error("rule = [1]\n"),
            "1:9: invalid type: integer `1`, expected a [[rule]] table"
        );
    }

    #[test]
    fn error_missing_action() {
        assert_eq!(
            single_error("\n[[rule]]\nport = 80\n"),
            "2:1: missing required field `action`"
        );
    }

    #[test]
    fn error_wrong_types() {
        let cases = [
            ("action = 1", "2:10: field `action` must be a string, found integer 1"),
            ("unit = true", "2:8: field `unit` must be a string, found boolean true"),
            ("app = [\"a\"]", "2:7: field `app` must be a string, found an array"),
            ("exe = 1.5", "2:7: field `exe` must be a string, found float 1.5"),
            ("sha256 = {}", "2:10: field `sha256` must be a string, found a table"),
            ("user = false", "2:8: field `user` must be a uid number or a user name string, found boolean false"),
            ("address = 1", "2:11: field `address` must be an address string or a list of them, found integer 1"),
            ("address = [\"10.0.0.0/8\", 2]", "2:26: field `address` must be an address string or a list of them, found integer 2"),
            ("port = true", "2:8: field `port` must be a port number, a \"first-last\" string or a list of them, found boolean true"),
            ("port = [[80]]", "2:9: field `port` must be a port number, a \"first-last\" string or a list of them, found an array"),
            ("protocol = 6", "2:12: field `protocol` must be a string, found integer 6"),
            ("priority = \"high\"", "2:12: field `priority` must be an integer, found string \"high\""),
            ("priority = 1979-05-27", "2:12: field `priority` must be an integer, found a date-time"),
            ("comment = 3", "2:11: field `comment` must be a string, found integer 3"),
        ];
        for (line, expected) in cases {
            let text = rule_with(line);
            assert_eq!(single_error(&text), expected, "line {line:?}");
        }
    }

    #[test]
    fn error_invalid_values() {
        let digest_63 = "a".repeat(63);
        let long_unit = format!("{}.service", "a".repeat(250));
        let cases = [
            ("action = \"block\"".to_owned(), "2:10: field `action`: invalid action \"block\", expected \"allow\", \"deny\" or \"ask\"".to_owned()),
            ("action = \"Deny\"".to_owned(), "2:10: field `action`: invalid action \"Deny\", expected \"allow\", \"deny\" or \"ask\"".to_owned()),
            ("protocol = \"icmp\"".to_owned(), "2:12: field `protocol`: invalid protocol \"icmp\", expected \"tcp\", \"udp\" or \"any\"".to_owned()),
            ("priority = 1001".to_owned(), "2:12: field `priority`: priority 1001 is out of range -1000 to 1000".to_owned()),
            ("priority = -1001".to_owned(), "2:12: field `priority`: priority -1001 is out of range -1000 to 1000".to_owned()),
            ("unit = \"\"".to_owned(), "2:8: field `unit` must not be an empty string".to_owned()),
            ("unit = \"sshd\"".to_owned(), "2:8: field `unit`: invalid unit name \"sshd\", expected a name ending in .service, .scope, .socket, .mount, .swap or .slice, the unit types that hold processes".to_owned()),
            ("unit = \"backup.timer\"".to_owned(), "2:8: field `unit`: invalid unit name \"backup.timer\", expected a name ending in .service, .scope, .socket, .mount, .swap or .slice, the unit types that hold processes".to_owned()),
            ("unit = \".service\"".to_owned(), "2:8: field `unit`: invalid unit name \".service\", the name before the unit type suffix is empty".to_owned()),
            ("unit = \"my app.service\"".to_owned(), "2:8: field `unit`: invalid unit name \"my app.service\", unit names contain only ASCII letters, digits and \":-_.\\@\" (write other characters with systemd-escape)".to_owned()),
            (format!("unit = \"{long_unit}\""), format!("2:8: field `unit`: invalid unit name \"{long_unit}\", unit names are at most 255 bytes long")),
            ("unit = \"app-[a.scope\"".to_owned(), "2:8: field `unit`: invalid glob \"app-[a.scope\", unclosed character class; missing ']'".to_owned()),
            ("app = \"\"".to_owned(), "2:7: field `app` must not be an empty string".to_owned()),
            ("app = \"org.{a,b\"".to_owned(), "2:7: field `app`: invalid glob \"org.{a,b\", unclosed alternate group; missing '}' (maybe escape '{' with '[{]'?)".to_owned()),
            ("exe = \"curl\"".to_owned(), "2:7: field `exe`: invalid executable path \"curl\", expected an absolute path".to_owned()),
            ("exe = \"/usr/bin/\"".to_owned(), "2:7: field `exe`: invalid executable path \"/usr/bin/\", expected the path of a file, not a directory".to_owned()),
            ("exe = \"/usr//bin/curl\"".to_owned(), "2:7: field `exe`: invalid executable path \"/usr//bin/curl\", it contains an empty component (\"//\")".to_owned()),
            ("exe = \"/usr/bin/../bin/curl\"".to_owned(), "2:7: field `exe`: invalid executable path \"/usr/bin/../bin/curl\", it contains a \".\" or \"..\" component".to_owned()),
            ("exe = \"/usr/./bin/curl\"".to_owned(), "2:7: field `exe`: invalid executable path \"/usr/./bin/curl\", it contains a \".\" or \"..\" component".to_owned()),
            ("exe = \"/usr/bin/cu\\u0000rl\"".to_owned(), "2:7: field `exe`: invalid executable path \"/usr/bin/cu\\0rl\", it contains a NUL character".to_owned()),
            (format!("sha256 = \"{digest_63}\""), format!("2:10: field `sha256`: invalid digest \"{digest_63}\", expected 64 hexadecimal digits")),
            ("user = -1".to_owned(), "2:8: field `user`: uid -1 is out of range 0 to 4294967294".to_owned()),
            ("user = 4294967295".to_owned(), "2:8: field `user`: uid 4294967295 is out of range 0 to 4294967294".to_owned()),
            ("user = \"\"".to_owned(), "2:8: field `user` must not be an empty string".to_owned()),
            ("user = \"1000\"".to_owned(), "2:8: field `user`: user name \"1000\" is all digits, write a uid as a number: user = 1000".to_owned()),
            ("user = \"slicewall-no-such-user\"".to_owned(), "2:8: field `user`: user \"slicewall-no-such-user\" not found".to_owned()),
            ("user = \"ro\\u0000ot\"".to_owned(), "2:8: field `user`: user \"ro\\0ot\" not found".to_owned()),
        ];
        for (line, expected) in cases {
            let text = rule_with(&line);
            assert_eq!(single_error(&text), expected, "line {line:?}");
        }
    }

    #[test]
    fn error_addresses() {
        let cases = [
            ("\"10.0.0.1/8\"", "2:11: field `address`: prefix \"10.0.0.1/8\" has host bits set, write \"10.0.0.0/8\""),
            ("\"2001:db8::1/32\"", "2:11: field `address`: prefix \"2001:db8::1/32\" has host bits set, write \"2001:db8::/32\""),
            ("\"10.0.0.0/33\"", "2:11: field `address`: invalid prefix length in \"10.0.0.0/33\", expected 0 to 32"),
            ("\"2001:db8::/129\"", "2:11: field `address`: invalid prefix length in \"2001:db8::/129\", expected 0 to 128"),
            ("\"10.0.0.0/\"", "2:11: field `address`: invalid prefix length in \"10.0.0.0/\", expected 0 to 32"),
            ("\"10.0.0.0/08\"", "2:11: field `address`: invalid prefix length in \"10.0.0.0/08\", expected 0 to 32"),
            ("\"10.0.0.0/+8\"", "2:11: field `address`: invalid prefix length in \"10.0.0.0/+8\", expected 0 to 32"),
            ("\"example.com\"", "2:11: field `address`: invalid address \"example.com\", expected an IPv4 or IPv6 address or prefix such as \"192.0.2.0/24\""),
            ("\"10.0.0\"", "2:11: field `address`: invalid address \"10.0.0\", expected an IPv4 or IPv6 address or prefix such as \"192.0.2.0/24\""),
            ("\" 10.0.0.1\"", "2:11: field `address`: invalid address \" 10.0.0.1\", expected an IPv4 or IPv6 address or prefix such as \"192.0.2.0/24\""),
            ("\"::ffff:192.0.2.7\"", "2:11: field `address`: \"::ffff:192.0.2.7\" is an IPv4-mapped IPv6 address, write the IPv4 form \"192.0.2.7\""),
            ("\"::ffff:192.0.2.0/120\"", "2:11: field `address`: \"::ffff:192.0.2.0/120\" is an IPv4-mapped IPv6 address, write the IPv4 form \"192.0.2.0/24\""),
            ("\"::ffff:0:0/96\"", "2:11: field `address`: \"::ffff:0:0/96\" is an IPv4-mapped IPv6 address, write the IPv4 form \"0.0.0.0/0\""),
            ("[]", "2:11: field `address` must list at least one value (omit the field to match any value)"),
        ];
        for (value, expected) in cases {
            let text = format!("[[rule]]\naddress = {value}\naction = \"deny\"\n");
            assert_eq!(single_error(&text), expected, "value {value}");
        }
    }

    #[test]
    fn addresses_accepted() {
        let text = "[[rule]]\naction = \"deny\"\naddress = [\"0.0.0.0/0\", \"::/0\", \"::fffe:0:0/95\", \"::1\", \"10.0.0.0/32\"]\n";
        let rules = parse(text).unwrap();
        let addresses: Vec<String> = rules[0]
            .destination
            .addresses
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            addresses,
            [
                "0.0.0.0/0",
                "::/0",
                "::fffe:0:0/95",
                "::1/128",
                "10.0.0.0/32"
            ]
        );
    }

    #[test]
    fn error_ports() {
        let cases = [
            ("0", "2:8: field `port`: invalid port 0, expected 1 to 65535"),
            ("65536", "2:8: field `port`: invalid port 65536, expected 1 to 65535"),
            ("-80", "2:8: field `port`: invalid port -80, expected 1 to 65535"),
            ("\"9000-8000\"", "2:8: field `port`: invalid port range \"9000-8000\", expected \"443\" or \"first-last\" with 1 <= first <= last <= 65535"),
            ("\"0-100\"", "2:8: field `port`: invalid port range \"0-100\", expected \"443\" or \"first-last\" with 1 <= first <= last <= 65535"),
            ("\"1-65536\"", "2:8: field `port`: invalid port range \"1-65536\", expected \"443\" or \"first-last\" with 1 <= first <= last <= 65535"),
            ("\"80-\"", "2:8: field `port`: invalid port range \"80-\", expected \"443\" or \"first-last\" with 1 <= first <= last <= 65535"),
            ("\"http\"", "2:8: field `port`: invalid port range \"http\", expected \"443\" or \"first-last\" with 1 <= first <= last <= 65535"),
            ("\" 80\"", "2:8: field `port`: invalid port range \" 80\", expected \"443\" or \"first-last\" with 1 <= first <= last <= 65535"),
            ("\"+80\"", "2:8: field `port`: invalid port range \"+80\", expected \"443\" or \"first-last\" with 1 <= first <= last <= 65535"),
            ("[]", "2:8: field `port` must list at least one value (omit the field to match any value)"),
        ];
        for (value, expected) in cases {
            let text = format!("[[rule]]\nport = {value}\naction = \"deny\"\n");
            assert_eq!(single_error(&text), expected, "value {value}");
        }
    }

    #[test]
    fn errors_collected_across_rules() {
        let text = "[[rule]]\naction = \"deny\"\nport = [80, 0, \"5-1\"]\n\n[[rule]]\naction = \"allow\"\n\n[[rule]]\nprotocol = \"sctp\"\n";
        assert_eq!(
            errors(text),
            [
                "3:13: field `port`: invalid port 0, expected 1 to 65535",
                "3:16: field `port`: invalid port range \"5-1\", expected \"443\" or \"first-last\" with 1 <= first <= last <= 65535",
                "8:1: missing required field `action`",
                "9:12: field `protocol`: invalid protocol \"sctp\", expected \"tcp\", \"udp\" or \"any\"",
            ]
        );
    }

    #[test]
    fn error_column_counts_characters() {
        // "é" is two bytes but one column.
        let text = "[[rule]]\naction = \"deny\"\naddress = [\"é\", \"10.0.0.1/8\"]\n";
        let all = errors(text);
        assert_eq!(all.len(), 2, "{all:?}");
        assert!(all[1].starts_with("3:17: "), "{}", all[1]);
    }

    #[test]
    fn error_not_utf8() {
        let bytes = b"[[rule]]\naction = \"d\xffeny\"\n";
        let errors = parse_file_bytes(Path::new(FILE), bytes).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].to_string(), format!("{FILE}:2:12: invalid UTF-8"));
    }

    #[test]
    fn error_display_format() {
        let errors = parse("[[rule]]\naction = \"block\"\n").unwrap_err();
        assert!(matches!(
            &errors[0],
            RuleError::Invalid { line: 2, column: 10, kind: ParseErrorKind::InvalidAction { value }, .. } if value == "block"
        ));
    }

    fn unit_directory(name: &str) -> UnitDirectory {
        UnitDirectory::parse(std::ffi::OsStr::new(name)).unwrap()
    }

    #[test]
    fn unit_file_gets_directory_selector() {
        let directory = unit_directory("app-flatpak-.scope.d");
        let text = "[[rule]]\naction = \"deny\"\nexe = \"/usr/bin/curl\"\nport = 80\n";
        let rules = parse_unit_file_bytes(Path::new(FILE), text.as_bytes(), &directory).unwrap();
        assert_eq!(rules.len(), 1);
        let selectors = &rules[0].selectors;
        assert_eq!(
            selectors.unit,
            Some(UnitSelector::Prefix("app-flatpak-.scope".into()))
        );
        assert_eq!(selectors.exe.as_deref(), Some(Path::new("/usr/bin/curl")));
        assert!(selectors.except.is_empty());
        assert_eq!(rules[0].origin.to_string(), format!("{FILE}:1"));
    }

    #[test]
    fn error_unit_key_in_unit_file() {
        let directory = unit_directory("sshd.service.d");
        let text = "[[rule]]\naction = \"allow\"\n\n[[rule]]\naction = \"deny\"\n  unit = \"cron.service\"\nport = 0\n";
        let errors =
            parse_unit_file_bytes(Path::new(FILE), text.as_bytes(), &directory).unwrap_err();
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                format!("{FILE}:6:10: field `unit` is not allowed in a per-unit drop-in file, because its directory sshd.service.d already names the unit"),
                format!("{FILE}:7:8: field `port`: invalid port 0, expected 1 to 65535"),
            ]
        );

        // The same text is valid as a rules.d file once the port is.
        let fixed = text.replace("port = 0", "port = 22");
        assert_eq!(parse(&fixed).unwrap().len(), 2);
    }

    #[test]
    fn position_of_offsets() {
        let source = SourceFile::new(Path::new(FILE), "ab\ncé\n\nx");
        assert_eq!(source.position(0), (1, 1));
        assert_eq!(source.position(2), (1, 3));
        assert_eq!(source.position(3), (2, 1));
        assert_eq!(source.position(6), (2, 3));
        assert_eq!(source.position(7), (3, 1));
        assert_eq!(source.position(8), (4, 1));
        assert_eq!(source.position(1000), (4, 2));
        // Inside the two bytes of "é": counted in bytes rather than panicking.
        assert_eq!(source.position(5), (2, 3));
    }
}
