//! Callback delivery: POSTs a body (a finished run's task view, serialized by the caller) to
//! the URL a task named, through the SSRF checks of downloads ([`crate::fetch`]: internal
//! addresses refused unless `--src-allow` opens them, every 307/308 hop checked), signed with
//! the bearer token when one is configured, within a deadline per attempt, retried with
//! backoff on connection errors, timeouts and 5xx (never on a refusal or a 4xx). Knows
//! nothing of tasks: it sends bytes and says how that went.

use std::fmt;
use std::time::Duration;

use hmac::{Hmac, Mac};
use hyper::body::Bytes;
use sha2::Sha256;

use crate::fetch::{self, FetchError};

/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "Lessl-Signature";
/// Attempts in all, the first included.
pub const ATTEMPTS: u32 = 4;
/// Wait before the first retry; doubled before each next one (0.5 s, 1 s, 2 s).
pub const BACKOFF: Duration = Duration::from_millis(500);
/// Deadline of one attempt, every redirect hop included.
pub const ATTEMPT_DEADLINE: Duration = Duration::from_secs(10);

/// Where callbacks may go and how they are signed.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The download policy: the same destinations are open, within the same connect timeout
    /// and redirect count; the total deadline is [`ATTEMPT_DEADLINE`] instead.
    pub policy: fetch::Policy,
    /// The bearer token (`--token-file`) the body is signed with; None sends no signature.
    pub token: Option<String>,
}

/// Why a callback was not delivered; each variant names the step that ended it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackError {
    /// The URL is unusable or its destination refused (internal): never attempted again.
    Refused(FetchError),
    /// The receiver answered 4xx, or with a redirect that is not followed: not retried.
    Rejected(FetchError),
    /// Every attempt failed on a connection error, a timeout or a 5xx; the last one's.
    GaveUp { attempts: u32, last: FetchError },
}

impl CallbackError {
    /// The failure of the last attempt.
    pub fn cause(&self) -> &FetchError {
        match self {
            CallbackError::Refused(e)
            | CallbackError::Rejected(e)
            | CallbackError::GaveUp { last: e, .. } => e,
        }
    }
}

impl fmt::Display for CallbackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallbackError::Refused(e) => write!(f, "refused: {e}"),
            CallbackError::Rejected(e) => write!(f, "rejected: {e}"),
            CallbackError::GaveUp { attempts, last } => {
                write!(f, "gave up after {attempts} attempts: {last}")
            }
        }
    }
}

impl std::error::Error for CallbackError {}

/// `sha256=<hex HMAC-SHA256 of body keyed by token>`, the value of [`SIGNATURE_HEADER`].
pub fn signature(token: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes a key of any size");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// What one failed attempt means for the next.
enum Next {
    Retry(FetchError),
    Stop(CallbackError),
}

fn classify(e: FetchError) -> Next {
    match e {
        FetchError::ParseUrl(_) | FetchError::Refused(_) => Next::Stop(CallbackError::Refused(e)),
        FetchError::Status { code, .. } if code >= 500 => Next::Retry(e),
        FetchError::Status { .. } | FetchError::Redirect(_) | FetchError::TooLarge { .. } => {
            Next::Stop(CallbackError::Rejected(e))
        }
        FetchError::Resolve(_)
        | FetchError::Connect(_)
        | FetchError::Tls(_)
        | FetchError::Request(_)
        | FetchError::Timeout { .. }
        | FetchError::ReadBody(_) => Next::Retry(e),
    }
}

/// POSTs `body` to `url` until it is accepted (2xx) or [`ATTEMPTS`] are spent.
/// `on_failure` hears of each failed attempt (for the log and the metric), with whether
/// another one follows.
pub async fn deliver(
    url: &str,
    body: Bytes,
    delivery: &Delivery,
    mut on_failure: impl FnMut(u32, &FetchError, bool),
) -> Result<u16, CallbackError> {
    let policy = fetch::Policy {
        total_timeout: ATTEMPT_DEADLINE,
        ..delivery.policy.clone()
    };
    let headers: Vec<(&'static str, String)> = match &delivery.token {
        Some(token) => vec![(SIGNATURE_HEADER, signature(token, &body))],
        None => Vec::new(),
    };
    let mut wait = BACKOFF;
    let mut attempt = 1;
    loop {
        let e = match fetch::post(url, body.clone(), &headers, &policy).await {
            Ok(code) => return Ok(code),
            Err(e) => e,
        };
        let again = attempt < ATTEMPTS;
        match classify(e) {
            Next::Stop(stop) => {
                on_failure(attempt, stop.cause(), false);
                return Err(stop);
            }
            Next::Retry(e) if !again => {
                on_failure(attempt, &e, false);
                return Err(CallbackError::GaveUp {
                    attempts: attempt,
                    last: e,
                });
            }
            Next::Retry(e) => on_failure(attempt, &e, true),
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
    #[test]
    fn signature_matches_rfc_4231() {
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn only_transient_failures_are_retried() {
        let retried = |e: FetchError| matches!(classify(e), Next::Retry(_));
        let status = |code| FetchError::Status {
            code,
            url: "http://h/".into(),
        };
        assert!(retried(status(500)));
        assert!(retried(status(503)));
        assert!(retried(FetchError::Connect("refused".into())));
        assert!(retried(FetchError::Timeout {
            what: "the POST",
            limit: ATTEMPT_DEADLINE
        }));
        assert!(!retried(status(404)));
        assert!(!retried(status(400)));
        assert!(!retried(FetchError::Refused("127.0.0.1".into())));
        assert!(!retried(FetchError::Redirect("303".into())));
    }

    /// Nothing listens on a refused destination: it fails at once, without a retry.
    #[tokio::test]
    async fn a_refused_destination_is_not_retried() {
        let d = Delivery {
            policy: fetch::Policy::default(),
            token: None,
        };
        let mut heard = Vec::new();
        let e = deliver(
            "http://127.0.0.1:9/",
            Bytes::from_static(b"{}"),
            &d,
            |n, _, again| heard.push((n, again)),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, CallbackError::Refused(_)), "{e}");
        assert_eq!(heard, [(1, false)]);
    }
}
