//! Prompt clients' shared logic, with no I/O besides reading a configuration file or an icon
//! directory: the prompt record, answers and their parsing, the text of a desktop notification
//! and the mapping from its action keys back to answers. `slicewall-agent` and
//! `slicewallctl prompts` and `agent` use it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::control::PromptRow;

/// One open prompt of the daemon (see `ListPrompts` and `PromptAdded`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Prompt {
    pub id: u64,
    pub uid: u32,
    pub unit: String,
    pub app_id: String,
    pub app_name: String,
    pub exe: String,
    pub sha256: String,
    pub host: String,
    pub address: String,
    pub port: u16,
    pub protocol: String,
    pub cgroup: String,
    /// `CLOCK_REALTIME` microseconds at which the daemon applies its timeout answer.
    pub deadline_usec: u64,
}

impl From<PromptRow> for Prompt {
    fn from(row: PromptRow) -> Prompt {
        let (
            id,
            uid,
            unit,
            app_id,
            app_name,
            exe,
            sha256,
            host,
            address,
            port,
            protocol,
            cgroup,
            deadline_usec,
        ) = row;
        Prompt {
            id,
            uid,
            unit,
            app_id,
            app_name,
            exe,
            sha256,
            host,
            address,
            port,
            protocol,
            cgroup,
            deadline_usec,
        }
    }
}

impl Prompt {
    /// Returns the destination as `host (address) port N/protocol`, or without the host when
    /// the daemon does not know it. IPv6 addresses are written without brackets.
    pub fn destination(&self) -> String {
        let target = if self.host.is_empty() {
            self.address.clone()
        } else {
            format!("{} ({})", self.host, self.address)
        };
        format!("{target} port {}/{}", self.port, self.protocol)
    }

    /// Returns the name to show for the application: the daemon's display name, else the
    /// executable's file name, else the unit.
    pub fn display_name(&self) -> &str {
        if !self.app_name.is_empty() {
            return &self.app_name;
        }
        if let Some(name) = Path::new(&self.exe)
            .file_name()
            .and_then(|name| name.to_str())
        {
            return name;
        }
        if !self.unit.is_empty() {
            return &self.unit;
        }
        "unknown program"
    }

    /// Returns the whole seconds until the deadline, 0 once it has passed.
    pub fn seconds_left(&self, now_usec: u64) -> u64 {
        self.deadline_usec.saturating_sub(now_usec) / 1_000_000
    }
}

/// Returns `text` with every control character written as a Rust escape (`\n`, `\u{1b}`).
/// Names in a prompt come from the program that raised it, or from its unit name, so a newline
/// could add a line such as a false "To:" to a notification, and an escape sequence could
/// drive the terminal that `slicewallctl` prints to.
pub fn printable(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        if character.is_control() {
            escaped.extend(character.escape_default());
        } else {
            escaped.push(character);
        }
    }
    escaped
}

/// Returns the current `CLOCK_REALTIME` time in microseconds.
pub fn now_usec() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as u64)
}

/// An invalid answer word, with the accepted values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: expected one of {accepted}")]
pub struct InvalidWord {
    pub what: &'static str,
    pub value: String,
    pub accepted: &'static str,
}

macro_rules! word_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// Returns the word that the D-Bus interface uses.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl FromStr for $name {
            type Err = InvalidWord;

            fn from_str(text: &str) -> Result<$name, InvalidWord> {
                match text {
                    $($text => Ok($name::$variant),)+
                    _ => Err(InvalidWord {
                        what: $what,
                        value: text.to_owned(),
                        accepted: concat!($($text, " "),+).trim_ascii_end(),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(self.as_str())
            }
        }
    };
}

word_enum!(
    /// Verdict of an answer.
    Verdict, "action", { Allow => "allow", Deny => "deny" }
);

word_enum!(
    /// How long an answer lasts.
    Lifetime, "lifetime", {
        Once => "once",
        UntilAppQuits => "until-app-quits",
        UntilLogout => "until-logout",
        UntilReboot => "until-reboot",
        Forever => "forever",
    }
);

word_enum!(
    /// Destinations that an answer covers: the prompt's address, port and protocol, the host's
    /// domain (the address when the host is unknown), or any destination.
    Scope, "scope", { Destination => "destination", Domain => "domain", Any => "any" }
);

impl Lifetime {
    /// Returns the phrase for labels, such as "until the app quits".
    pub fn phrase(self) -> &'static str {
        match self {
            Lifetime::Once => "once",
            Lifetime::UntilAppQuits => "until the app quits",
            Lifetime::UntilLogout => "until logout",
            Lifetime::UntilReboot => "until reboot",
            Lifetime::Forever => "always",
        }
    }
}

impl Scope {
    /// Returns the phrase for labels, such as "this domain".
    pub fn phrase(self) -> &'static str {
        match self {
            Scope::Destination => "this destination",
            Scope::Domain => "this domain",
            Scope::Any => "any destination",
        }
    }
}

/// An answer to a prompt, the three last arguments of `AnswerPrompt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub verdict: Verdict,
    pub lifetime: Lifetime,
    pub scope: Scope,
}

impl Answer {
    /// Returns a label such as "Allow until logout, any destination".
    pub fn label(&self) -> String {
        let verb = match self.verdict {
            Verdict::Allow => "Allow",
            Verdict::Deny => "Deny",
        };
        format!("{verb} {}, {}", self.lifetime.phrase(), self.scope.phrase())
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{} {} {}",
            self.verdict, self.lifetime, self.scope
        )
    }
}

/// Parses an answer typed in the terminal agent: `a` (allow once), `A` (allow forever), `d`
/// (deny once) or `D` (deny forever), optionally followed by a lifetime and a scope in either
/// order, which override the letter's lifetime and the default scope `destination`.
pub fn parse_terminal_answer(line: &str) -> Result<Answer, String> {
    let mut words = line.split_whitespace();
    let Some(letter) = words.next() else {
        return Err("empty answer: type a, A, d or D".into());
    };
    let (verdict, lifetime) = match letter {
        "a" => (Verdict::Allow, Lifetime::Once),
        "A" => (Verdict::Allow, Lifetime::Forever),
        "d" => (Verdict::Deny, Lifetime::Once),
        "D" => (Verdict::Deny, Lifetime::Forever),
        other => {
            return Err(format!(
                "invalid answer {other:?}: expected a (allow once), A (allow always), d (deny once) or D (deny always)"
            ))
        }
    };
    let mut answer = Answer {
        verdict,
        lifetime,
        scope: Scope::Destination,
    };
    for word in words {
        if let Ok(lifetime) = word.parse() {
            answer.lifetime = lifetime;
        } else if let Ok(scope) = word.parse() {
            answer.scope = scope;
        } else {
            return Err(format!(
                "invalid word {word:?}: expected a lifetime (once until-app-quits until-logout until-reboot forever) or a scope (destination domain any)"
            ));
        }
    }
    Ok(answer)
}

/// Action keys of the four buttons every notification has.
pub const ALLOW_ONCE: &str = "allow-once";
pub const ALLOW_ALWAYS: &str = "allow-always";
pub const DENY_ONCE: &str = "deny-once";
pub const DENY_ALWAYS: &str = "deny-always";

/// Settings of `slicewall-agent`, read from `$XDG_CONFIG_HOME/slicewall/agent.toml`.
///
/// The four buttons keep short, fixed labels because notification servers show few buttons
/// and cut long labels (GNOME Shell shows at most three). So what "always" means, and which
/// further answers appear as extra buttons, is set here once instead of being chosen in each
/// notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Lifetime of "Allow always" and "Deny always".
    pub always_lifetime: Lifetime,
    /// Scope of "Allow always" and "Deny always".
    pub always_scope: Scope,
    /// Scope of "Allow once" and "Deny once", which apply to the prompt's own flows.
    pub once_scope: Scope,
    /// Further buttons, after the four, each a whole answer.
    pub extra_actions: Vec<Answer>,
}

impl Default for AgentConfig {
    fn default() -> AgentConfig {
        AgentConfig {
            always_lifetime: Lifetime::Forever,
            always_scope: Scope::Destination,
            once_scope: Scope::Destination,
            extra_actions: Vec::new(),
        }
    }
}

/// An invalid agent configuration file, with its place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}:{line}:{column}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl AgentConfig {
    /// Parses the agent configuration. `path` only names the file in errors.
    ///
    /// ```toml
    /// always-lifetime = "until-logout"   # once until-app-quits until-logout until-reboot forever
    /// always-scope = "domain"            # destination domain any
    /// once-scope = "destination"
    /// extra-actions = ["allow until-app-quits destination", "deny forever any"]
    /// ```
    pub fn parse(text: &str, path: &str) -> Result<AgentConfig, ConfigError> {
        let error_at = |offset: usize, message: String| {
            let (line, column) = line_column(text, offset);
            ConfigError {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        };
        let table: std::collections::BTreeMap<String, toml::Spanned<toml::Value>> =
            toml::from_str(text).map_err(|error| {
                let offset = error.span().map_or(0, |span| span.start);
                error_at(offset, error.message().to_owned())
            })?;
        let mut config = AgentConfig::default();
        for (key, spanned) in &table {
            let offset = spanned.span().start;
            let value = spanned.get_ref();
            let text_value = |value: &toml::Value| -> Result<String, ConfigError> {
                value
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| error_at(offset, format!("{key} must be a string")))
            };
            match key.as_str() {
                "always-lifetime" => {
                    config.always_lifetime = text_value(value)?
                        .parse()
                        .map_err(|error: InvalidWord| error_at(offset, error.to_string()))?;
                }
                "always-scope" => {
                    config.always_scope = text_value(value)?
                        .parse()
                        .map_err(|error: InvalidWord| error_at(offset, error.to_string()))?;
                }
                "once-scope" => {
                    config.once_scope = text_value(value)?
                        .parse()
                        .map_err(|error: InvalidWord| error_at(offset, error.to_string()))?;
                }
                "extra-actions" => {
                    let Some(items) = value.as_array() else {
                        return Err(error_at(
                            offset,
                            "extra-actions must be a list of strings".into(),
                        ));
                    };
                    for item in items {
                        let answer = parse_answer_words(&text_value(item)?)
                            .map_err(|message| error_at(offset, message))?;
                        config.extra_actions.push(answer);
                    }
                }
                other => {
                    return Err(error_at(
                        offset,
                        format!(
                            "unknown setting {other:?}: expected always-lifetime, always-scope, once-scope or extra-actions"
                        ),
                    ))
                }
            }
        }
        Ok(config)
    }

    /// Returns the answer for a notification action key, `None` for the default action (a
    /// click on the notification's body) and unknown keys.
    pub fn answer_for_key(&self, key: &str) -> Option<Answer> {
        let once = |verdict| Answer {
            verdict,
            lifetime: Lifetime::Once,
            scope: self.once_scope,
        };
        let always = |verdict| Answer {
            verdict,
            lifetime: self.always_lifetime,
            scope: self.always_scope,
        };
        match key {
            ALLOW_ONCE => Some(once(Verdict::Allow)),
            DENY_ONCE => Some(once(Verdict::Deny)),
            ALLOW_ALWAYS => Some(always(Verdict::Allow)),
            DENY_ALWAYS => Some(always(Verdict::Deny)),
            other => {
                let answer = parse_answer_words(&other.replace(':', " ")).ok()?;
                self.extra_actions.contains(&answer).then_some(answer)
            }
        }
    }
}

/// Parses `ACTION LIFETIME SCOPE`, such as `allow until-logout any`.
fn parse_answer_words(text: &str) -> Result<Answer, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let [verdict, lifetime, scope] = words[..] else {
        return Err(format!(
            "invalid answer {text:?}: expected \"ACTION LIFETIME SCOPE\", such as \"allow until-logout any\""
        ));
    };
    Ok(Answer {
        verdict: verdict
            .parse()
            .map_err(|error: InvalidWord| error.to_string())?,
        lifetime: lifetime
            .parse()
            .map_err(|error: InvalidWord| error.to_string())?,
        scope: scope
            .parse()
            .map_err(|error: InvalidWord| error.to_string())?,
    })
}

/// Returns the 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// Returns the agent configuration path: `$XDG_CONFIG_HOME/slicewall/agent.toml`, or
/// `~/.config/slicewall/agent.toml`.
pub fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".config")))?;
    Some(base.join("slicewall").join("agent.toml"))
}

/// Icon of a notification whose app has none in the icon theme. "security-medium" is in the
/// freedesktop icon naming specification, so every icon theme is meant to have it.
pub const GENERIC_ICON: &str = "security-medium";

/// Returns the app ID as an icon name when an icon theme or the pixmaps directory under one of
/// `data_dirs` has an icon of that name, else [`GENERIC_ICON`]. Flatpak and most desktop apps
/// install their icon under their app ID.
pub fn icon_for(app_id: &str, data_dirs: &[PathBuf]) -> String {
    let valid = !app_id.is_empty()
        && !app_id.contains('/')
        && !app_id.starts_with('.')
        && app_id.chars().all(|c| !c.is_control());
    if valid && data_dirs.iter().any(|dir| has_icon(dir, app_id)) {
        app_id.to_owned()
    } else {
        GENERIC_ICON.to_owned()
    }
}

fn has_icon(data_dir: &Path, name: &str) -> bool {
    let extensions = ["png", "svg", "xpm"];
    let pixmaps = data_dir.join("pixmaps");
    if extensions
        .iter()
        .any(|ext| pixmaps.join(format!("{name}.{ext}")).is_file())
    {
        return true;
    }
    // Icon themes lay icons out as THEME/SIZE/CONTEXT/NAME.EXT.
    let Ok(themes) = std::fs::read_dir(data_dir.join("icons")) else {
        return false;
    };
    for theme in themes.flatten() {
        let Ok(sizes) = std::fs::read_dir(theme.path()) else {
            continue;
        };
        for size in sizes.flatten() {
            let Ok(contexts) = std::fs::read_dir(size.path()) else {
                continue;
            };
            for context in contexts.flatten() {
                if extensions
                    .iter()
                    .any(|ext| context.path().join(format!("{name}.{ext}")).is_file())
                {
                    return true;
                }
            }
        }
    }
    false
}

/// Returns `$XDG_DATA_HOME` and `$XDG_DATA_DIRS` with their defaults, for [`icon_for`].
pub fn data_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    match std::env::var_os("XDG_DATA_HOME").filter(|value| !value.is_empty()) {
        Some(home) => dirs.push(PathBuf::from(home)),
        None => {
            if let Some(home) = std::env::var_os("HOME") {
                dirs.push(Path::new(&home).join(".local/share"));
            }
        }
    }
    let system = std::env::var("XDG_DATA_DIRS")
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| "/usr/local/share:/usr/share".into());
    dirs.extend(system.split(':').map(PathBuf::from));
    dirs
}

/// Content of a desktop notification for one prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationText {
    pub summary: String,
    pub body: String,
    pub icon: String,
    /// Action keys and button labels, in order.
    pub actions: Vec<(String, String)>,
}

/// Capabilities of the notification server that change what a notification contains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerCapabilities {
    /// The server shows action buttons ("actions").
    pub actions: bool,
    /// The server reads markup in the body ("body-markup"), so `&` and `<` must be escaped.
    pub body_markup: bool,
}

impl ServerCapabilities {
    /// Reads the capabilities from the list that `GetCapabilities` returns.
    pub fn from_list(list: &[String]) -> Self {
        ServerCapabilities {
            actions: list.iter().any(|capability| capability == "actions"),
            body_markup: list.iter().any(|capability| capability == "body-markup"),
        }
    }
}

/// Escapes the characters that body markup gives a meaning to.
fn markup_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Builds the notification for a prompt. Without the "actions" capability, the body says how
/// to answer with `slicewallctl` and the notification has no buttons.
pub fn notification_text(
    prompt: &Prompt,
    config: &AgentConfig,
    server: ServerCapabilities,
    icon: String,
) -> NotificationText {
    let has_actions = server.actions;
    let summary = format!("{} wants to connect", printable(prompt.display_name()));
    let mut lines = Vec::new();
    if !prompt.exe.is_empty() {
        lines.push(format!("Program: {}", printable(&prompt.exe)));
    }
    lines.push(format!("To: {}", printable(&prompt.destination())));
    if !prompt.unit.is_empty() {
        lines.push(format!("Unit: {}", printable(&prompt.unit)));
    }
    let mut actions = Vec::new();
    if has_actions {
        let always = |verb: &str| {
            if config.always_lifetime == Lifetime::Forever
                && config.always_scope == Scope::Destination
            {
                format!("{verb} always")
            } else {
                // Say what "always" is set to, so a button never promises more than it does.
                format!(
                    "{verb} {}, {}",
                    config.always_lifetime.phrase(),
                    config.always_scope.phrase()
                )
            }
        };
        actions.push((ALLOW_ONCE.to_owned(), "Allow once".to_owned()));
        actions.push((ALLOW_ALWAYS.to_owned(), always("Allow")));
        actions.push((DENY_ONCE.to_owned(), "Deny once".to_owned()));
        actions.push((DENY_ALWAYS.to_owned(), always("Deny")));
        for extra in &config.extra_actions {
            let key = format!("{}:{}:{}", extra.verdict, extra.lifetime, extra.scope);
            actions.push((key, extra.label()));
        }
    } else {
        lines.push(String::new());
        lines.push(format!(
            "Answer with: slicewallctl prompts answer {} allow|deny [--lifetime LIFETIME] [--scope SCOPE]",
            prompt.id
        ));
    }
    NotificationText {
        summary,
        body: if server.body_markup {
            markup_escape(&lines.join("\n"))
        } else {
            lines.join("\n")
        },
        icon,
        actions,
    }
}

/// Returns a prompt to show with `slicewall-agent --preview`, for screenshots and trials.
pub fn sample_prompt(now_usec: u64) -> Prompt {
    Prompt {
        id: 1,
        uid: 1000,
        unit: "app-org.mozilla.firefox-2817.scope".into(),
        app_id: "org.mozilla.firefox".into(),
        app_name: "firefox".into(),
        exe: "/usr/lib/firefox-esr/firefox-esr".into(),
        sha256: String::new(),
        host: "example.org".into(),
        address: "2001:db8::443".into(),
        port: 443,
        protocol: "tcp".into(),
        cgroup: "/user.slice/user-1000.slice/user@1000.service/app.slice/app-org.mozilla.firefox-2817.scope".into(),
        deadline_usec: now_usec + 30_000_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WITH_ACTIONS: ServerCapabilities = ServerCapabilities {
        actions: true,
        body_markup: false,
    };

    #[test]
    fn body_is_escaped_for_markup_servers() {
        let mut hostile = prompt();
        hostile.exe = "/opt/<b>a&b</b>".into();
        let server = ServerCapabilities::from_list(&["actions".into(), "body-markup".into()]);

        let text = notification_text(
            &hostile,
            &AgentConfig::default(),
            server,
            GENERIC_ICON.into(),
        );

        assert!(
            text.body.contains("/opt/&lt;b&gt;a&amp;b&lt;/b&gt;"),
            "{}",
            text.body
        );
        let plain = notification_text(
            &hostile,
            &AgentConfig::default(),
            WITH_ACTIONS,
            GENERIC_ICON.into(),
        );
        assert!(plain.body.contains("/opt/<b>a&b</b>"), "{}", plain.body);
    }

    fn prompt() -> Prompt {
        Prompt {
            id: 42,
            uid: 1000,
            unit: "app-org.example.App-7.scope".into(),
            app_id: "org.example.App".into(),
            app_name: "App".into(),
            exe: "/usr/bin/example".into(),
            host: "example.org".into(),
            address: "192.0.2.1".into(),
            port: 443,
            protocol: "tcp".into(),
            deadline_usec: 10_000_000,
            ..Prompt::default()
        }
    }

    #[test]
    fn destination_names_host_and_address() {
        assert_eq!(
            prompt().destination(),
            "example.org (192.0.2.1) port 443/tcp"
        );
        let mut bare = prompt();
        bare.host.clear();
        assert_eq!(bare.destination(), "192.0.2.1 port 443/tcp");
    }

    #[test]
    fn display_name_falls_back() {
        let mut p = prompt();
        p.app_name.clear();
        assert_eq!(p.display_name(), "example");
        p.exe.clear();
        assert_eq!(p.display_name(), "app-org.example.App-7.scope");
        p.unit.clear();
        assert_eq!(p.display_name(), "unknown program");
    }

    #[test]
    fn seconds_left_saturates() {
        assert_eq!(prompt().seconds_left(4_500_000), 5);
        assert_eq!(prompt().seconds_left(20_000_000), 0);
    }

    #[test]
    fn words_parse_and_reject() {
        assert_eq!("until-logout".parse(), Ok(Lifetime::UntilLogout));
        assert_eq!("any".parse(), Ok(Scope::Any));
        let error = "sometimes".parse::<Lifetime>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid lifetime \"sometimes\": expected one of once until-app-quits until-logout until-reboot forever"
        );
        assert!("allow ".parse::<Verdict>().is_err());
    }

    #[test]
    fn terminal_answers() {
        let parse = |text| parse_terminal_answer(text).unwrap().to_string();
        assert_eq!(parse("a"), "allow once destination");
        assert_eq!(parse("A"), "allow forever destination");
        assert_eq!(parse("d"), "deny once destination");
        assert_eq!(parse(" D any "), "deny forever any");
        assert_eq!(parse("A domain until-logout"), "allow until-logout domain");
        assert!(parse_terminal_answer("").is_err());
        assert!(parse_terminal_answer("x").is_err());
        let error = parse_terminal_answer("a later").unwrap_err();
        assert!(error.contains("\"later\""), "{error}");
    }

    #[test]
    fn notification_has_four_buttons() {
        let text = notification_text(
            &prompt(),
            &AgentConfig::default(),
            WITH_ACTIONS,
            GENERIC_ICON.into(),
        );
        assert_eq!(text.summary, "App wants to connect");
        assert_eq!(
            text.body,
            "Program: /usr/bin/example\nTo: example.org (192.0.2.1) port 443/tcp\nUnit: app-org.example.App-7.scope"
        );
        let labels: Vec<&str> = text.actions.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(
            labels,
            ["Allow once", "Allow always", "Deny once", "Deny always"]
        );
        assert!(!text.body.contains("slicewallctl"));
    }

    #[test]
    fn notification_escapes_control_characters() {
        let mut hostile = prompt();
        hostile.app_name = "App\u{1b}[8m".into();
        hostile.exe = "/home/u/app\nTo: example.net (198.51.100.7) port 443/tcp".into();
        hostile.unit = "app-x\r\n-1.scope".into();

        let text = notification_text(
            &hostile,
            &AgentConfig::default(),
            WITH_ACTIONS,
            GENERIC_ICON.into(),
        );

        assert_eq!(text.summary, "App\\u{1b}[8m wants to connect");
        assert_eq!(text.body.lines().count(), 3, "{}", text.body);
        assert!(
            text.body
                .starts_with("Program: /home/u/app\\nTo: example.net"),
            "{}",
            text.body
        );
        assert!(
            text.body.ends_with("Unit: app-x\\r\\n-1.scope"),
            "{}",
            text.body
        );
    }

    #[test]
    fn notification_without_actions_names_slicewallctl() {
        let text = notification_text(
            &prompt(),
            &AgentConfig::default(),
            ServerCapabilities::default(),
            GENERIC_ICON.into(),
        );
        assert!(text.actions.is_empty());
        assert!(
            text.body
                .contains("slicewallctl prompts answer 42 allow|deny"),
            "{}",
            text.body
        );
    }

    #[test]
    fn action_keys_map_to_answers() {
        let config = AgentConfig::parse(
            "always-lifetime = \"until-reboot\"\nalways-scope = \"domain\"\nextra-actions = [\"allow until-app-quits any\"]\n",
            "agent.toml",
        )
        .unwrap();
        let answer = |key| config.answer_for_key(key).map(|a| a.to_string());
        assert_eq!(answer(ALLOW_ONCE).unwrap(), "allow once destination");
        assert_eq!(answer(DENY_ONCE).unwrap(), "deny once destination");
        assert_eq!(answer(ALLOW_ALWAYS).unwrap(), "allow until-reboot domain");
        assert_eq!(answer(DENY_ALWAYS).unwrap(), "deny until-reboot domain");
        assert_eq!(
            answer("allow:until-app-quits:any").unwrap(),
            "allow until-app-quits any"
        );
        // Only configured extra actions are accepted, so a forged key answers nothing.
        assert_eq!(answer("allow:forever:any"), None);
        assert_eq!(answer("default"), None);

        let text = notification_text(&prompt(), &config, WITH_ACTIONS, GENERIC_ICON.into());
        let keys: Vec<&str> = text.actions.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys[4], "allow:until-app-quits:any");
        assert_eq!(text.actions[1].1, "Allow until reboot, this domain");
        assert_eq!(
            text.actions[4].1,
            "Allow until the app quits, any destination"
        );
        for (key, _) in &text.actions {
            assert!(config.answer_for_key(key).is_some(), "{key}");
        }
    }

    #[test]
    fn config_errors_name_the_place() {
        let error =
            AgentConfig::parse("once-scope = \"any\"\nalways-scope = \"world\"\n", "a.toml")
                .unwrap_err();
        assert_eq!((error.line, error.column), (2, 16));
        assert!(error.message.contains("invalid scope \"world\""), "{error}");
        let error = AgentConfig::parse("colour = \"red\"", "a.toml").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("a.toml:1:10: unknown setting"),
            "{error}"
        );
        let error = AgentConfig::parse("extra-actions = [\"allow\"]", "a.toml").unwrap_err();
        assert!(error.message.contains("ACTION LIFETIME SCOPE"), "{error}");
        let error = AgentConfig::parse("always-scope = ", "a.toml").unwrap_err();
        assert_eq!(error.line, 1);
    }

    #[test]
    fn icon_found_in_theme_or_generic() {
        let dir = tempfile::tempdir().unwrap();
        let apps = dir.path().join("icons/hicolor/48x48/apps");
        std::fs::create_dir_all(&apps).unwrap();
        std::fs::write(apps.join("org.example.App.png"), b"").unwrap();
        let dirs = vec![dir.path().to_path_buf()];
        assert_eq!(icon_for("org.example.App", &dirs), "org.example.App");
        assert_eq!(icon_for("org.example.Other", &dirs), GENERIC_ICON);
        assert_eq!(icon_for("", &dirs), GENERIC_ICON);
        assert_eq!(icon_for("../x", &dirs), GENERIC_ICON);
    }
}
