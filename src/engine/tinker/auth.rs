//! Who rlx is to a Tinker server. The credential is `TINKER_API_KEY`, or what the command in
//! `TINKER_CREDENTIAL_CMD` prints (run for each exchange, for organisations whose credentials
//! are short-lived). A server that answers `pjwt_auth_enabled` in `client/config` (hosted
//! Tinker) takes the credential only at `auth/token`, in exchange for a short-lived JWT that
//! every other call carries in the same `X-API-Key` header; the JWT is exchanged again when it
//! has a minute or less left, and once more when the server rejects it as an invalid token
//! (a 401 whose `WWW-Authenticate` says `error="invalid_token"`), replaying the call. Servers
//! without it (SkyRL) get the credential itself, or nothing. As the `tinker` SDK 0.38 does
//! (`lib/_jwt_auth.py`, `lib/_auth_token_provider.py`, `lib/internal_client_holder.py`).
//! Neither the credential nor a token is ever printed.

use std::process::Command;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;

/// A token with this little time left is exchanged again before it is sent.
const REFRESH_WITHIN_SECS: f64 = 60.0;

/// Where the credential comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `TINKER_API_KEY`.
    Key(String),
    /// `TINKER_CREDENTIAL_CMD`: a shell command that prints one.
    Command(String),
}

impl Source {
    /// The credential in the environment, if any (`TINKER_API_KEY` first).
    pub fn from_env() -> Option<Source> {
        let set = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        set("TINKER_API_KEY")
            .map(Source::Key)
            .or_else(|| set("TINKER_CREDENTIAL_CMD").map(Source::Command))
    }

    /// The environment variable it came from, for messages.
    pub fn variable(&self) -> &'static str {
        match self {
            Source::Key(_) => "TINKER_API_KEY",
            Source::Command(_) => "TINKER_CREDENTIAL_CMD",
        }
    }

    /// The credential itself (the command run now). Errors never include its output.
    pub fn credential(&self) -> Result<String, String> {
        match self {
            Source::Key(k) => Ok(k.trim().to_string()),
            Source::Command(cmd) => {
                let out = Command::new("sh")
                    .args(["-c", cmd])
                    .output()
                    .map_err(|e| format!("`TINKER_CREDENTIAL_CMD` could not be run: {e}"))?;
                if !out.status.success() {
                    return Err(format!("`TINKER_CREDENTIAL_CMD` failed ({})", out.status));
                }
                let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if s.is_empty() {
                    return Err("`TINKER_CREDENTIAL_CMD` printed nothing".into());
                }
                Ok(s)
            }
        }
    }
}

/// The credential and, on servers that exchange it, the current JWT (shared by the run's
/// calls and the heartbeat thread).
#[derive(Debug)]
pub struct Auth {
    source: Option<Source>,
    exchanges: bool,
    token: Mutex<Option<String>>,
}

impl Auth {
    /// As the environment says, before the server's `client/config` is known.
    pub fn new(source: Option<Source>) -> Auth {
        Auth { source, exchanges: false, token: Mutex::new(None) }
    }

    pub fn source(&self) -> Option<&Source> {
        self.source.as_ref()
    }

    /// Whether calls carry an exchanged JWT rather than the credential.
    pub fn exchanges(&self) -> bool {
        self.exchanges
    }

    /// The server's answer to `pjwt_auth_enabled`. Without an exchange, a command's credential
    /// cannot stand in for a key (the SDK refuses the same).
    pub fn set_exchanges(&mut self, exchanges: bool) -> Result<(), String> {
        if !exchanges && matches!(self.source, Some(Source::Command(_))) {
            return Err("it takes API keys only (no `pjwt_auth_enabled`), and `TINKER_CREDENTIAL_CMD` is the only credential given: set `TINKER_API_KEY`".into());
        }
        self.exchanges = exchanges;
        Ok(())
    }

    /// The header value of a call without an exchange.
    pub fn plain(&self) -> Result<Option<String>, String> {
        self.source.as_ref().map(Source::credential).transpose()
    }

    /// The cached JWT, if it has more than a minute left.
    pub fn fresh(&self) -> Option<String> {
        let token = self.token.lock().unwrap_or_else(|e| e.into_inner());
        token.clone().filter(|t| seconds_left(t) > REFRESH_WITHIN_SECS)
    }

    pub fn store(&self, jwt: String) {
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(jwt);
    }

    /// Forgets `rejected` (unless another call has replaced it already).
    pub fn reject(&self, rejected: &str) {
        let mut token = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if token.as_deref() == Some(rejected) {
            *token = None;
        }
    }
}

/// Seconds until a JWT's `exp` claim (0 where it has none or is not a JWT: exchanged again).
pub fn seconds_left(jwt: &str) -> f64 {
    let exp = jwt.split('.').nth(1).and_then(|payload| {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        serde_json::from_slice::<serde_json::Value>(&bytes).ok()?["exp"].as_f64()
    });
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    exp.map_or(0.0, |e| e - now)
}

/// Whether a 401's `WWW-Authenticate` says the token itself was refused (RFC 6750), so a new
/// exchange may help.
pub fn invalid_token(www_authenticate: Option<&str>) -> bool {
    www_authenticate.is_some_and(|h| h.contains("error=\"invalid_token\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(exp: f64) -> String {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"none"}"#), b64(&format!(r#"{{"exp":{exp}}}"#)))
    }

    fn now() -> f64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
    }

    #[test]
    fn a_token_is_reused_until_a_minute_is_left() {
        let auth = Auth::new(Some(Source::Key("tml-x".into())));
        assert_eq!(auth.fresh(), None);
        auth.store(jwt(now() + 3600.0));
        assert!(auth.fresh().is_some());
        auth.store(jwt(now() + 30.0));
        assert_eq!(auth.fresh(), None, "30 s left: exchanged again");
        auth.store("not-a-jwt".into());
        assert_eq!(auth.fresh(), None);
        let t = jwt(now() + 3600.0);
        auth.store(t.clone());
        auth.reject("another");
        assert_eq!(auth.fresh().as_deref(), Some(t.as_str()), "only the rejected token goes");
        auth.reject(&t);
        assert_eq!(auth.fresh(), None);
    }

    #[test]
    fn a_command_credential_needs_a_server_that_exchanges_it() {
        let mut auth = Auth::new(Some(Source::Command("printf ' tml-from-cmd\\n'".into())));
        assert!(auth.set_exchanges(false).unwrap_err().contains("TINKER_API_KEY"));
        auth.set_exchanges(true).unwrap();
        assert_eq!(auth.plain().unwrap().as_deref(), Some("tml-from-cmd"));
        let failing = Source::Command("echo secret-output; exit 3".into());
        let e = failing.credential().unwrap_err();
        assert!(e.contains("failed") && !e.contains("secret-output"), "{e}");
    }

    #[test]
    fn only_an_invalid_token_401_is_worth_a_new_exchange() {
        assert!(invalid_token(Some(
            r#"Bearer error="invalid_token", error_description="expired""#
        )));
        assert!(!invalid_token(Some("Bearer")));
        assert!(!invalid_token(None));
    }
}
