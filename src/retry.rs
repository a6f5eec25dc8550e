//! The one retry policy of every HTTP client nixfly has (registry, Machines API, platform
//! API): exponential backoff with jitter, or the server's `Retry-After` when it sends one.
//!
//! Jitter matters because the requests that fail together are the parallel layer uploads and
//! lease calls of one run: without it they all come back at the same instant and hit the same
//! rate limit again.

use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::time::{Duration, SystemTime};

/// Statuses worth another try: the request may succeed unchanged a moment later.
pub const RETRYABLE_STATUSES: [u16; 6] = [408, 429, 500, 502, 503, 504];

/// A `Retry-After` longer than this is capped: a deploy should not sleep for hours.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub retries: u32,
    /// The backoff before the first retry; it doubles with each retry.
    pub base_delay: Duration,
    /// The largest backoff (before jitter).
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 5,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// Delay before retry number `attempt` (0-based): `Retry-After` when the server gave one
    /// (capped at `MAX_RETRY_AFTER`), else the exponential backoff with "equal jitter": a
    /// random point in its upper half, so that retries spread out but never come sooner than
    /// half the backoff.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after {
            return wait.min(MAX_RETRY_AFTER);
        }
        let backoff = self.backoff(attempt);
        let half = backoff / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// The backoff before jitter: `base_delay · 2^attempt`, at most `max_delay`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.base_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_delay)
    }
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3); a date in the past is no
/// wait. `None` when the header is absent or unreadable: the caller backs off instead.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_stays_in_its_upper_half() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff(0), Duration::from_millis(250));
        assert_eq!(policy.backoff(2), Duration::from_secs(1));
        assert_eq!(policy.backoff(10), Duration::from_secs(8));
        let delays: Vec<Duration> = (0..200).map(|_| policy.delay(2, None)).collect();
        for delay in &delays {
            assert!(
                (Duration::from_millis(500)..=Duration::from_secs(1)).contains(delay),
                "{delay:?}"
            );
        }
        let first = delays[0];
        assert!(
            delays.iter().any(|d| *d != first),
            "200 delays without any jitter"
        );
    }

    #[test]
    fn retry_after_wins_and_is_capped() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.delay(0, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(policy.delay(0, Some(Duration::from_secs(3600))), MAX_RETRY_AFTER);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static(" 7 "));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let in_a_minute = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(61));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&in_a_minute).unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            (Duration::from_secs(55)..=Duration::from_secs(61)).contains(&wait),
            "{wait:?}"
        );
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }
}
