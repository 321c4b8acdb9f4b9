//! Strict YAML with located errors, shared by the config file and drill scenarios:
//! `lifeline.yaml:12:5 clusters.payment.endpoints[1].address: ...`.
//!
//! Two steps: [`parse`] runs serde with `deny_unknown_fields` (positions from serde_yaml) after
//! rejecting duplicate keys (which serde would silently resolve to the last one); then a
//! [`Checker`] walks the document for meaning checks and places each error in the file through
//! [`crate::config::locate`].

use std::net::SocketAddr;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::units::Dur;

use crate::config::locate::{path_string, Locator, Seg};
use crate::config::{ConfigError, ConfigErrors};

/// Parses `text` strictly: duplicate keys and unknown keys are errors.
pub fn parse<T: DeserializeOwned>(file: &str, text: &str) -> Result<(T, Locator), ConfigErrors> {
    let locator = Locator::new(text);
    let dups: Vec<ConfigError> = locator
        .duplicate_keys()
        .into_iter()
        .map(|(path, (line, column))| ConfigError {
            file: file.to_string(),
            line: Some(line),
            column: Some(column),
            message: format!(
                "duplicate key {:?} (it is already defined above in the same mapping)",
                match path.last() {
                    Some(Seg::Key(k)) => k.as_str(),
                    _ => "",
                }
            ),
            path: path_string(&path),
        })
        .collect();
    if !dups.is_empty() {
        return Err(ConfigErrors(dups));
    }
    let de = serde_yaml::Deserializer::from_str(text);
    match serde_path_to_error::deserialize(de) {
        Ok(v) => Ok((v, locator)),
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let loc = inner.location();
            // serde_yaml appends " at line L column C"; we print the position ourselves, and it
            // may prefix the message with (part of) the path, which we print once.
            let mut message = inner.to_string();
            if let Some(i) = message.find(" at line ") {
                message.truncate(i);
            }
            let message = match message.split_once(": ") {
                Some((prefix, rest)) if !prefix.contains(' ') && path.starts_with(prefix) => rest.to_string(),
                _ => message,
            };
            Err(ConfigErrors(vec![ConfigError {
                file: file.to_string(),
                line: loc.as_ref().map(|l| l.line()),
                column: loc.as_ref().map(|l| l.column()),
                path: if path == "." { String::new() } else { path },
                message,
            }]))
        }
    }
}

/// Collects located errors while walking a parsed document.
pub struct Checker {
    file: String,
    locator: Locator,
    path: Vec<Seg>,
    pub errors: Vec<ConfigError>,
}

impl Checker {
    pub fn new(file: &str, locator: Locator) -> Checker {
        Checker { file: file.to_string(), locator, path: Vec::new(), errors: Vec::new() }
    }

    pub fn at<T>(&mut self, seg: Seg, f: impl FnOnce(&mut Self) -> T) -> T {
        self.path.push(seg);
        let out = f(self);
        self.path.pop();
        out
    }

    pub fn key<T>(&mut self, key: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        self.at(Seg::Key(key.to_string()), f)
    }

    pub fn index<T>(&mut self, i: usize, f: impl FnOnce(&mut Self) -> T) -> T {
        self.at(Seg::Index(i), f)
    }

    pub fn error(&mut self, message: impl Into<String>) {
        let pos = self.locator.locate(&self.path);
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line: pos.map(|p| p.0),
            column: pos.map(|p| p.1),
            path: path_string(&self.path),
            message: message.into(),
        });
    }

    pub fn error_at(&mut self, key: &str, message: impl Into<String>) {
        let message = message.into();
        self.key(key, |c| c.error(message));
    }

    /// Parses an `IP:port` at `key`; records an error (and returns a placeholder) if it is not one.
    pub fn socket_addr(&mut self, key: &str, value: &str) -> SocketAddr {
        match value.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.error_at(key, format!("{value:?} is not an IP:port address, e.g. 127.0.0.1:15001"));
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        }
    }

    /// A duration at `key` that must be greater than zero, or `default` when absent.
    pub fn positive(&mut self, key: &str, d: Option<Dur>, default: Duration) -> Duration {
        match d {
            Some(Dur(d)) if d.is_zero() => {
                self.error_at(key, "must be greater than 0");
                default
            }
            Some(Dur(d)) => d,
            None => default,
        }
    }

    /// Line (1-based) where the value at `key` under the current path starts.
    pub fn line_of(&mut self, key: &str) -> Option<usize> {
        self.path.push(Seg::Key(key.to_string()));
        let pos = self.locator.locate(&self.path);
        self.path.pop();
        pos.map(|p| p.0)
    }

    pub fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}
