//! meshtap's YAML configuration: parsed and validated into [`Settings`] before any I/O, so a bad
//! file is one clear message and a non-zero exit. Every field has a default (see
//! `config/meshtap.yaml`, which a test keeps equal to these defaults).

use std::path::Path;

use serde::Deserialize;

use crate::decode::Format;
use crate::pipeline::Settings;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: String, message: String },
}

/// The configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How container log files are read.
    pub logs: LogsConfig,
    /// How exchanges are reassembled.
    pub assembly: AssemblyConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FormatName {
    /// Detected per file from its first line.
    #[default]
    Auto,
    Cri,
    Docker,
    Raw,
}

impl FormatName {
    pub fn format(self) -> Option<Format> {
        match self {
            FormatName::Auto => None,
            FormatName::Cri => Some(Format::Cri),
            FormatName::Docker => Some(Format::Docker),
            FormatName::Raw => Some(Format::Raw),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// Container log format.
    pub format: FormatName,
    /// Longest physical or joined container line kept, in bytes.
    pub max_line_bytes: usize,
    /// Longest multi-line Envoy message kept, in bytes.
    pub max_message_bytes: usize,
}

impl Default for LogsConfig {
    fn default() -> Self {
        let s = Settings::default();
        LogsConfig {
            format: FormatName::Auto,
            max_line_bytes: s.max_line_bytes,
            max_message_bytes: s.max_message_bytes,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssemblyConfig {
    /// Body bytes kept per direction.
    pub max_body_bytes: usize,
    /// Exchanges awaiting their end per log file.
    pub max_pending: usize,
}

impl Default for AssemblyConfig {
    fn default() -> Self {
        let s = Settings::default();
        AssemblyConfig {
            max_body_bytes: s.limits.max_body_bytes,
            max_pending: s.limits.max_pending,
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        // An empty file (or only comments) means every default.
        if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return Ok(Config::default());
        }
        let config: Config = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let positive = [
            ("logs.max_line_bytes", self.logs.max_line_bytes),
            ("logs.max_message_bytes", self.logs.max_message_bytes),
            ("assembly.max_body_bytes", self.assembly.max_body_bytes),
            ("assembly.max_pending", self.assembly.max_pending),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be greater than 0"));
            }
        }
        if self.logs.max_line_bytes < 16 << 10 {
            return Err(format!(
                "logs.max_line_bytes must be at least 16384 (a CRI line piece), got {}",
                self.logs.max_line_bytes
            ));
        }
        Ok(())
    }

    /// The pipeline settings this configuration asks for.
    pub fn settings(&self) -> Settings {
        let mut s = Settings {
            format: self.logs.format.format(),
            max_line_bytes: self.logs.max_line_bytes,
            max_message_bytes: self.logs.max_message_bytes,
            ..Settings::default()
        };
        s.limits.max_body_bytes = self.assembly.max_body_bytes;
        s.limits.max_pending = self.assembly.max_pending;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_documents_the_defaults() {
        let shipped = Config::from_yaml(include_str!("../config/meshtap.yaml")).unwrap();
        let defaults = Config::default();
        assert_eq!(shipped.logs.format, defaults.logs.format);
        assert_eq!(shipped.logs.max_line_bytes, defaults.logs.max_line_bytes);
        assert_eq!(
            shipped.logs.max_message_bytes,
            defaults.logs.max_message_bytes
        );
        assert_eq!(
            shipped.assembly.max_body_bytes,
            defaults.assembly.max_body_bytes
        );
        assert_eq!(shipped.assembly.max_pending, defaults.assembly.max_pending);
    }

    #[test]
    fn partial_config_keeps_other_defaults() {
        let c =
            Config::from_yaml("assembly:\n  max_body_bytes: 1024\nlogs:\n  format: cri\n").unwrap();
        let s = c.settings();
        assert_eq!(s.limits.max_body_bytes, 1024);
        assert_eq!(s.format, Some(Format::Cri));
        assert_eq!(s.max_line_bytes, Settings::default().max_line_bytes);
        assert!(Config::from_yaml("# nothing\n").is_ok());
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        let e = Config::from_yaml("assembly:\n  max_body_byte: 10\n").unwrap_err();
        assert!(e.contains("max_body_byte"), "{e}");
        let e = Config::from_yaml("logs:\n  format: xml\n").unwrap_err();
        assert!(e.contains("xml"), "{e}");
        let e = Config::from_yaml("assembly:\n  max_pending: 0\n").unwrap_err();
        assert!(
            e.contains("assembly.max_pending must be greater than 0"),
            "{e}"
        );
        let e = Config::from_yaml("logs:\n  max_line_bytes: -1\n").unwrap_err();
        assert!(!e.is_empty());
        let e = Config::load(Path::new("/nonexistent/meshtap.yaml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/meshtap.yaml"));
    }
}
