//! Every timer of the relay's protocol, in one place: WireGuard's own by their names in the
//! whitepaper (section 6), and the relay's, most of them derived from those.

use std::time::Duration;

/// WireGuard: an initiator that got no response sends a new initiation after this long.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// WireGuard: no peer uses a session older than this.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// WireGuard: a responder under load replaces the secret behind its cookies this often.
pub const COOKIE_SECRET_MAX_AGE: Duration = Duration::from_secs(120);

/// An index seen in an initiation but not answered: its initiator gives up on it and retries
/// with a new index after [`REKEY_TIMEOUT`].
pub const HALF_OPEN_TTL: Duration = REKEY_TIMEOUT;
/// A session's indices: no peer uses them after [`REJECT_AFTER_TIME`].
pub const SESSION_TTL: Duration = REJECT_AFTER_TIME;
/// How often the relay replaces its own cookie secret, as a WireGuard responder does.
pub const COOKIE_ROTATION: Duration = COOKIE_SECRET_MAX_AGE;
/// How long an endpoint stays known (a broadcast target) after its last index is gone.
pub const ENDPOINT_LINGER: Duration = Duration::from_secs(60);
/// How long a session side must be silent at its endpoint before another source may stand in
/// for it. A busy peer is never silent that long, so a forger cannot get in beside it.
pub const ROAM_QUIET: Duration = Duration::from_secs(1);
