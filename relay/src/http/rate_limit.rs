//! Rate limits: requests per client, registrations per IP address (API.md "Limits").
//!
//! GCRA limiters from `governor`, kept in memory per relay process: with several processes
//! behind a load balancer each enforces its own share. A flag of 0 turns a limit off.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::error::Error;
use crate::Config;

pub(crate) struct RateLimits {
    clients: Option<DefaultKeyedRateLimiter<String>>,
    registrations: Option<DefaultKeyedRateLimiter<IpAddr>>,
    clock: DefaultClock,
}

impl RateLimits {
    pub(crate) fn new(config: &Config) -> Self {
        let clients = NonZeroU32::new(config.rate_limit_per_second).map(|rate| {
            // A burst below the rate would make the rate unreachable; treat it as "no extra burst".
            let burst = NonZeroU32::new(config.rate_limit_burst).map_or(rate, |b| b.max(rate));
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        let registrations = NonZeroU32::new(config.registrations_per_minute)
            .map(|n| RateLimiter::keyed(Quota::per_minute(n)));
        RateLimits {
            clients,
            registrations,
            clock: DefaultClock::default(),
        }
    }

    /// 429 if `client_id` is over its request rate.
    pub(crate) fn check_client(&self, client_id: &str) -> Result<(), Error> {
        let Some(limiter) = &self.clients else {
            return Ok(());
        };
        // `check_key` takes the key by reference; the `String` is only stored on a client's
        // first request.
        limiter
            .check_key(&client_id.to_owned())
            .map_err(|not_until| {
                super::metrics::refused(super::metrics::LIMIT_CLIENT_RATE, 1);
                self.limited(not_until.wait_time_from(self.clock.now()))
            })
    }

    /// 429 if this address registered too often. Requests without a known address (a router
    /// driven without connect info) are not limited.
    pub(crate) fn check_registration(&self, ip: Option<IpAddr>) -> Result<(), Error> {
        let (Some(limiter), Some(ip)) = (&self.registrations, ip) else {
            return Ok(());
        };
        limiter.check_key(&ip).map_err(|not_until| {
            super::metrics::refused(super::metrics::LIMIT_REGISTRATIONS, 1);
            self.limited(not_until.wait_time_from(self.clock.now()))
        })
    }

    fn limited(&self, wait: Duration) -> Error {
        // Retry-After is in whole seconds; round up so a client that obeys it is let through.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Error::RateLimited {
            retry_after_secs: secs.max(1),
        }
    }

    /// Forgets keys whose limits have fully recovered, so memory tracks active clients only.
    pub(crate) fn forget_idle(&self) {
        if let Some(l) = &self.clients {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.registrations {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn config(args: &[&str]) -> Config {
        let mut all = vec!["dmls-relay"];
        all.extend_from_slice(args);
        Config::parse_from(all)
    }

    #[test]
    fn clients_get_their_burst_then_429() {
        let limits = RateLimits::new(&config(&[
            "--rate-limit-per-second",
            "1",
            "--rate-limit-burst",
            "3",
        ]));
        for _ in 0..3 {
            assert!(limits.check_client("alice").is_ok());
        }
        assert!(matches!(
            limits.check_client("alice"),
            Err(Error::RateLimited {
                retry_after_secs: 1
            })
        ));
        assert!(limits.check_client("bob").is_ok(), "limits are per client");
    }

    #[test]
    fn registrations_are_limited_per_address() {
        let limits = RateLimits::new(&config(&["--registrations-per-minute", "2"]));
        let ip: IpAddr = [127, 0, 0, 1].into();
        assert!(limits.check_registration(Some(ip)).is_ok());
        assert!(limits.check_registration(Some(ip)).is_ok());
        match limits.check_registration(Some(ip)) {
            Err(Error::RateLimited { retry_after_secs }) => {
                assert!((1..=30).contains(&retry_after_secs))
            }
            other => panic!("expected 429, got {other:?}"),
        }
    }

    #[test]
    fn zero_turns_limits_off() {
        let limits = RateLimits::new(&config(&[
            "--rate-limit-per-second",
            "0",
            "--registrations-per-minute",
            "0",
        ]));
        for _ in 0..1000 {
            assert!(limits.check_client("alice").is_ok());
            assert!(
                limits
                    .check_registration(Some([10, 0, 0, 1].into()))
                    .is_ok()
            );
        }
    }
}
