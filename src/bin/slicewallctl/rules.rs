//! `slicewallctl rules list|add|remove`.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use slicewall::control::Firewall1Proxy;

/// Prints every rule in force, each with its TOML.
pub async fn list(proxy: Firewall1Proxy<'static>) -> Result<ExitCode, zbus::Error> {
    let rules = proxy.list_rules().await?;
    for (id, lifetime, origin, toml) in &rules {
        println!("# {id} ({lifetime}) from {origin}");
        println!("{}", toml.trim_end());
        println!();
    }
    println!("{} rules", rules.len());
    Ok(ExitCode::SUCCESS)
}

/// Reads the rules to add and checks them with the daemon's own parser, so errors name
/// FILE:LINE:COLUMN before anything is sent. Returns the exit status on failure.
pub fn read_and_check(file: Option<&Path>) -> Result<String, ExitCode> {
    let (name, text) = match file {
        None => read_stdin()?,
        Some(path) if path == Path::new("-") => read_stdin()?,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => (path.display().to_string(), text),
            Err(error) => {
                eprintln!("slicewallctl: failed to read {}: {error}", path.display());
                return Err(ExitCode::from(super::INVALID_ARGUMENT));
            }
        },
    };
    match slicewall::rules::parse_file(Path::new(&name), &text) {
        Ok(rules) if rules.is_empty() => {
            eprintln!("slicewallctl: {name} contains no [[rule]] table");
            Err(ExitCode::from(super::INVALID_ARGUMENT))
        }
        Ok(rules) if rules.len() > 1 => {
            // The daemon adds one rule per call, and its error could not name the place.
            let second = &rules[1].origin;
            eprintln!(
                "{}:{}:{}: a second [[rule]] table; rules add takes one rule, this file has {}",
                second.file.display(),
                second.line,
                second.column,
                rules.len()
            );
            Err(ExitCode::from(super::INVALID_ARGUMENT))
        }
        Ok(_) => Ok(text),
        Err(errors) => {
            for error in &errors {
                eprintln!("{}", slicewall::error_chain(error));
            }
            Err(ExitCode::from(super::INVALID_ARGUMENT))
        }
    }
}

fn read_stdin() -> Result<(String, String), ExitCode> {
    let mut text = String::new();
    match std::io::stdin().read_to_string(&mut text) {
        Ok(_) => Ok(("<stdin>".to_owned(), text)),
        Err(error) => {
            eprintln!("slicewallctl: failed to read standard input: {error}");
            Err(ExitCode::FAILURE)
        }
    }
}

pub async fn add(
    proxy: Firewall1Proxy<'static>,
    toml: String,
    lifetime: String,
) -> Result<ExitCode, zbus::Error> {
    let id = proxy.add_rule(&toml, &lifetime).await?;
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}

pub async fn remove(proxy: Firewall1Proxy<'static>, id: String) -> Result<ExitCode, zbus::Error> {
    proxy.remove_rule(&id).await?;
    println!("removed {id}");
    Ok(ExitCode::SUCCESS)
}
