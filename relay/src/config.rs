//! The relay's configuration: one clap struct; every flag can also be set through the
//! environment variable named in its help.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::cors::CorsOrigins;
use crate::forwarded::TrustedProxies;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RegistrationMode {
    /// Anyone may register a client id.
    Open,
    /// Registration needs the operator's registration token as bearer.
    Token,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// DMLS relay: a durable store-and-forward service for Distributed MLS.
///
/// Stores opaque MLS messages per group, key packages and welcome inboxes, and serves them by
/// cursor with long polling. SQLite by default (no set-up); PostgreSQL when several relay
/// processes share one database.
#[derive(Clone, Parser)]
#[command(name = "dmls-relay", version, about, long_about)]
pub struct Config {
    /// Address and port to listen on. Use 0.0.0.0:8080 to accept connections from other hosts
    /// (put TLS in front: the relay speaks plain HTTP).
    #[arg(long, env = "DMLS_RELAY_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// Database: `sqlite://PATH` (created if missing) or `postgres://USER@HOST/DB`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://dmls-relay.db")]
    pub database_url: String,

    /// Most database connections in the pool.
    #[arg(long, env = "DMLS_RELAY_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// Most appends the writer gathers into one transaction (group commit).
    #[arg(long, env = "DMLS_RELAY_APPEND_BATCH_MAX", default_value_t = 512)]
    pub append_batch_max: usize,

    /// Who may register: `open` (anyone) or `token` (needs --registration-token).
    #[arg(long, env = "DMLS_RELAY_REGISTRATION", value_enum, default_value_t = RegistrationMode::Open)]
    pub registration: RegistrationMode,

    /// The operator's registration token (bearer of `POST /v1/clients` in `token` mode).
    #[arg(long, env = "DMLS_RELAY_REGISTRATION_TOKEN", hide_env_values = true)]
    pub registration_token: Option<String>,

    /// Largest group message, in bytes.
    #[arg(long, env = "DMLS_RELAY_MAX_MESSAGE_BYTES", default_value_t = 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Largest key package, in bytes.
    #[arg(long, env = "DMLS_RELAY_MAX_KEY_PACKAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_key_package_bytes: usize,

    /// Largest welcome, in bytes.
    #[arg(long, env = "DMLS_RELAY_MAX_WELCOME_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_welcome_bytes: usize,

    /// Largest request body, in bytes.
    #[arg(long, env = "DMLS_RELAY_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Most key packages a client may keep in stock.
    #[arg(long, env = "DMLS_RELAY_MAX_KEY_PACKAGES", default_value_t = 1000)]
    pub max_key_packages: u64,

    /// How long group messages and welcomes are kept, in days.
    #[arg(long, env = "DMLS_RELAY_RETENTION_DAYS", default_value_t = 30)]
    pub retention_days: u64,

    /// How often the pruner runs, in seconds (0 turns pruning off).
    #[arg(long, env = "DMLS_RELAY_PRUNE_INTERVAL_SECS", default_value_t = 3600)]
    pub prune_interval_secs: u64,

    /// Requests per second each client may make (0 turns the limit off).
    #[arg(long, env = "DMLS_RELAY_RATE_LIMIT_PER_SECOND", default_value_t = 100)]
    pub rate_limit_per_second: u32,

    /// Burst of requests each client may make above the per-second rate.
    #[arg(long, env = "DMLS_RELAY_RATE_LIMIT_BURST", default_value_t = 200)]
    pub rate_limit_burst: u32,

    /// Registrations per minute per IP address (0 turns the limit off).
    #[arg(
        long,
        env = "DMLS_RELAY_REGISTRATIONS_PER_MINUTE",
        default_value_t = 10
    )]
    pub registrations_per_minute: u32,

    /// Reverse proxies to believe: comma-separated IP addresses or CIDR networks (e.g.
    /// `10.0.0.1,fd00::/8`). When the TCP peer is one of them, the client's address (for the
    /// registrations-per-minute limit) is the right-most address in its `X-Forwarded-For` that is
    /// not itself a trusted proxy. Others' `X-Forwarded-For` is ignored. Default: none.
    #[arg(
        long,
        env = "DMLS_RELAY_TRUSTED_PROXIES",
        value_name = "LIST",
        value_parser = TrustedProxies::parse,
        default_value = "",
        hide_default_value = true
    )]
    pub trusted_proxies: TrustedProxies,

    /// Origins whose web pages may call the relay (CORS): a comma-separated list of origins
    /// such as `https://chat.example.org,http://localhost:3000`, or `*` for any origin.
    /// Default: none (no CORS headers; browsers then refuse pages from other origins).
    /// Credentials are never allowed: clients authenticate with bearer tokens, not cookies.
    #[arg(
        long,
        env = "DMLS_RELAY_CORS_ORIGINS",
        value_name = "LIST",
        value_parser = CorsOrigins::parse,
        default_value = "",
        hide_default_value = true
    )]
    pub cors_origins: CorsOrigins,

    /// Long polls one client may have waiting at once (0 turns the cap off). A new long poll
    /// beyond the cap answers the client's oldest waiting one at once (200 with what is new).
    #[arg(long, env = "DMLS_RELAY_MAX_WAITING_PER_CLIENT", default_value_t = 8)]
    pub max_waiting_per_client: usize,

    /// Long polls waiting at once in this relay process, all clients together (0 turns the cap
    /// off). A long poll that would wait beyond it is answered 503 with Retry-After.
    #[arg(long, env = "DMLS_RELAY_MAX_WAITING", default_value_t = 20_000)]
    pub max_waiting: usize,

    /// Open client connections this relay process keeps (0 turns the cap off). A connection
    /// beyond it is answered 503 with Retry-After and closed. Keep it below the open-files
    /// limit (the relay raises its soft limit to the hard limit at start-up).
    #[arg(long, env = "DMLS_RELAY_MAX_CONNECTIONS", default_value_t = 25_000)]
    pub max_connections: usize,

    /// Group messages and welcomes one client may store per UTC day, across all groups and
    /// inboxes (0 turns the quota off). Beyond it: 429 with Retry-After, nothing stored.
    #[arg(long, env = "DMLS_RELAY_DAILY_MESSAGE_QUOTA", default_value_t = 20_000)]
    pub daily_message_quota: u64,

    /// Bytes of group messages and welcomes one client may store per UTC day (0 turns the
    /// quota off). Beyond it: 429 with Retry-After, nothing stored.
    #[arg(
        long,
        env = "DMLS_RELAY_DAILY_BYTE_QUOTA",
        default_value_t = 256 * 1024 * 1024
    )]
    pub daily_byte_quota: u64,

    /// Time limit of a request in seconds (a long poll may wait 30 s of it).
    #[arg(long, env = "DMLS_RELAY_REQUEST_TIMEOUT_SECS", default_value_t = 45)]
    pub request_timeout_secs: u64,

    /// Log format: `text` or `json`. The level comes from RUST_LOG (default `info`).
    #[arg(long, env = "DMLS_RELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    pub(crate) fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_days.saturating_mul(24 * 3600))
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// Checks combinations clap cannot express.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.registration == RegistrationMode::Token
            && self.registration_token.as_deref().is_none_or(str::is_empty)
        {
            return Err("--registration token needs --registration-token (or DMLS_RELAY_REGISTRATION_TOKEN)".into());
        }
        if self.request_timeout_secs <= dmls_api::limits::WAIT_MS_MAX / 1000 {
            return Err("--request-timeout-secs must exceed the longest long poll (30 s)".into());
        }
        if self.db_max_connections == 0 {
            return Err("--db-max-connections must be at least 1".into());
        }
        if self.append_batch_max == 0 {
            return Err("--append-batch-max must be at least 1".into());
        }
        for (flag, value) in [
            ("--max-message-bytes", self.max_message_bytes),
            ("--max-key-package-bytes", self.max_key_package_bytes),
            ("--max-welcome-bytes", self.max_welcome_bytes),
            ("--max-body-bytes", self.max_body_bytes),
        ] {
            if value == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Config {
    // The registration token and a password in the database URL are secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("bind", &self.bind)
            .field("database_url", &redact_url(&self.database_url))
            .field("registration", &self.registration)
            .field(
                "registration_token",
                &self.registration_token.as_ref().map(|_| "<redacted>"),
            )
            .field("db_max_connections", &self.db_max_connections)
            .field("append_batch_max", &self.append_batch_max)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_key_package_bytes", &self.max_key_package_bytes)
            .field("max_welcome_bytes", &self.max_welcome_bytes)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_key_packages", &self.max_key_packages)
            .field("retention_days", &self.retention_days)
            .field("prune_interval_secs", &self.prune_interval_secs)
            .field("rate_limit_per_second", &self.rate_limit_per_second)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .field("registrations_per_minute", &self.registrations_per_minute)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("cors_origins", &self.cors_origins)
            .field("max_waiting_per_client", &self.max_waiting_per_client)
            .field("max_waiting", &self.max_waiting)
            .field("max_connections", &self.max_connections)
            .field("daily_message_quota", &self.daily_message_quota)
            .field("daily_byte_quota", &self.daily_byte_quota)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("log_format", &self.log_format)
            .finish()
    }
}

/// The URL with any password replaced, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:<redacted>{}",
                    &url[..scheme_end + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_database_passwords() {
        assert_eq!(
            redact_url("postgres://u:pw@h/db"),
            "postgres://u:<redacted>@h/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }

    #[test]
    fn debug_hides_the_registration_token() {
        let c = Config::parse_from([
            "dmls-relay",
            "--registration",
            "token",
            "--registration-token",
            "hunter2",
        ]);
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn trusted_proxies_are_a_comma_separated_list() {
        let none = Config::parse_from(["dmls-relay"]);
        assert!(none.trusted_proxies.is_empty());
        let c = Config::parse_from(["dmls-relay", "--trusted-proxies", "10.0.0.0/8, ::1"]);
        assert!(c.trusted_proxies.contains([10, 1, 2, 3].into()));
        assert!(
            c.trusted_proxies
                .contains(std::net::Ipv6Addr::LOCALHOST.into())
        );
        assert!(!c.trusted_proxies.contains([127, 0, 0, 1].into()));
        assert!(
            Config::try_parse_from(["dmls-relay", "--trusted-proxies", "10.0.0.0/40"]).is_err()
        );
        assert!(
            Config::try_parse_from(["dmls-relay", "--trusted-proxies", "proxy.local"]).is_err()
        );
    }

    #[test]
    fn token_mode_needs_a_token() {
        let c = Config::parse_from(["dmls-relay", "--registration", "token"]);
        assert!(c.validate().is_err());
    }
}
