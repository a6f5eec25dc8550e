//! Just enough of Fly's macaroon format to prune a login session's tokens the way fly-go does
//! (`tokens/tokens.go` `pruneBadMacaroons`): which tokens have expired, which are discharge
//! tokens no permission token asks for. Nothing here verifies a signature; Fly does that.
//!
//! A token is `<label>_<base64 of MessagePack>` (superfly/macaroon `format.go`); the
//! MessagePack value is the `Macaroon` struct encoded as an array:
//! `[nonce, location, caveats, tail]`, the nonce as `[kid, rnd(, proof)]` (`nonce.go`), the
//! caveats as a flat array of `type, body` pairs (`caveat_set.go`).

use base64::Engine as _;
use rmpv::Value;

/// Where permission tokens (the ones carrying an organisation's rights) are issued
/// (superfly/macaroon `flyio/flyio.go` `LocationPermission`).
pub const LOCATION_PERMISSION: &str = "https://api.fly.io/v1";
/// Discharge tokens from Fly's authentication service (`LocationAuthentication`,
/// `LocationNewAuthentication`), which fly-go replaces shortly before they expire.
const AUTH_LOCATIONS: [&str; 2] = ["https://api.fly.io/aaa/v1", "https://auth.fly.io"];
/// Caveat type numbers (superfly/macaroon `caveat.go`, an iota list).
const CAVEAT_VALIDITY_WINDOW: u64 = 4;
const CAVEAT_THIRD_PARTY: u64 = 11;
/// fly-go's default `advancePrune`: authentication discharges this close to expiry are dropped.
const AUTH_ADVANCE_PRUNE_SECS: i64 = 60;

/// What pruning needs from one macaroon.
#[derive(Debug, PartialEq, Eq)]
pub struct Macaroon {
    pub kid: Vec<u8>,
    pub location: String,
    /// The earliest `not_after` of its validity windows (unix seconds); None: no window.
    pub expires: Option<i64>,
    /// Its third-party caveats: each names the discharge token it needs.
    pub third_parties: Vec<ThirdParty>,
}

/// A third-party caveat: a discharge token from `location` whose nonce KID is `ticket`
/// satisfies it (superfly/macaroon `caveats.go` `Caveat3P`: location, verifier key, ticket).
#[derive(Debug, PartialEq, Eq)]
pub struct ThirdParty {
    pub location: String,
    pub ticket: Vec<u8>,
}

impl Macaroon {
    /// Decode `fm1r_…`, `fm1a_…` or `fm2_…`; None when it is not a well-formed macaroon.
    pub fn decode(token: &str) -> Option<Macaroon> {
        let (_, b64) = token.split_once('_')?;
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        let value = rmpv::decode::read_value(&mut raw.as_slice()).ok()?;
        let fields = value.as_array()?;
        let kid = fields.first()?.as_array()?.first()?.as_slice()?.to_vec();
        let location = fields.get(1)?.as_str()?.to_string();
        let caveats = fields.get(2)?.as_array()?;
        if caveats.len() % 2 != 0 {
            return None;
        }
        let mut expires: Option<i64> = None;
        let mut third_parties = Vec::new();
        for pair in caveats.chunks(2) {
            let body = pair[1].as_array();
            match pair[0].as_u64()? {
                CAVEAT_VALIDITY_WINDOW => {
                    let not_after = body?.get(1)?.as_i64()?;
                    expires = Some(expires.map_or(not_after, |e| e.min(not_after)));
                }
                CAVEAT_THIRD_PARTY => {
                    let body = body?;
                    third_parties.push(ThirdParty {
                        location: body.first()?.as_str()?.to_string(),
                        ticket: body.get(2).and_then(Value::as_slice)?.to_vec(),
                    });
                }
                _ => {}
            }
        }
        Some(Macaroon {
            kid,
            location,
            expires,
            third_parties,
        })
    }
}

/// The macaroons fly-go would keep at `now` (unix seconds), in their order: well-formed and
/// unexpired permission tokens, and the discharge tokens one of those asks for, except
/// authentication discharges about to expire.
pub fn prune(tokens: &[String], now: i64) -> Vec<String> {
    let live: Vec<(&String, Macaroon)> = tokens
        .iter()
        .filter_map(|t| Macaroon::decode(t).map(|m| (t, m)))
        .filter(|(_, m)| m.expires.is_none_or(|e| e >= now))
        .collect();
    let wanted: Vec<&[u8]> = live
        .iter()
        .filter(|(_, m)| m.location == LOCATION_PERMISSION)
        .flat_map(|(_, m)| m.third_parties.iter().map(|tp| tp.ticket.as_slice()))
        .collect();
    live.iter()
        .filter(|(_, m)| {
            if m.location == LOCATION_PERMISSION {
                return true;
            }
            let expiring = AUTH_LOCATIONS.contains(&m.location.as_str())
                && m.expires.is_some_and(|e| e < now + AUTH_ADVANCE_PRUNE_SECS);
            wanted.contains(&m.kid.as_slice()) && !expiring
        })
        .map(|(t, _)| (*t).clone())
        .collect()
}

/// Why Fly may refuse these macaroons at `now`, when the token itself shows it: every one of
/// them has expired (how long ago the last did), or a permission token asks for a discharge
/// token that is not among them (flyctl fetches those from the third party, fly-go
/// `tokens/tokens.go` `dischargeThirdPartyCaveats`; nixfly does not). None when every macaroon
/// is well-formed and nothing is missing, or when one cannot be read (then Fly is the judge).
pub fn refusal_reason(tokens: &[String], now: i64) -> Option<String> {
    let decoded: Vec<Macaroon> = tokens
        .iter()
        .map(|t| Macaroon::decode(t))
        .collect::<Option<_>>()?;
    let last_expiry = decoded.iter().map(|m| m.expires).collect::<Option<Vec<i64>>>();
    if let Some(expiries) = last_expiry
        && let Some(last) = expiries.iter().max()
        && *last < now
    {
        return Some(format!(
            "every macaroon in it has expired, the last {} ago",
            ago(now - last)
        ));
    }
    let kids: Vec<&[u8]> = decoded.iter().map(|m| m.kid.as_slice()).collect();
    decoded
        .iter()
        .filter(|m| m.location == LOCATION_PERMISSION && m.expires.is_none_or(|e| e >= now))
        .flat_map(|m| &m.third_parties)
        .find(|tp| !kids.contains(&tp.ticket.as_slice()))
        .map(|tp| {
            format!(
                "it asks for a discharge token from {} that it does not carry (flyctl fetches \
                 those; nixfly does not): use a token that carries its discharges, such as \
                 `fly tokens create deploy` prints",
                tp.location
            )
        })
}

fn ago(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 2 * 3600 => format!("{} min", s / 60),
        s if s < 2 * 86400 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86400),
    }
}

/// Build a token in the wire format, for tests of the pruning above (and of the discovery
/// that uses it).
#[cfg(test)]
pub fn encode_for_test(kid: &[u8], location: &str, not_after: Option<i64>, tickets: &[&[u8]]) -> String {
    let mut caveats = Vec::new();
    if let Some(not_after) = not_after {
        caveats.push(Value::from(CAVEAT_VALIDITY_WINDOW));
        caveats.push(Value::Array(vec![Value::from(0), Value::from(not_after)]));
    }
    for ticket in tickets {
        caveats.push(Value::from(CAVEAT_THIRD_PARTY));
        caveats.push(Value::Array(vec![
            Value::from("https://auth.fly.io"),
            Value::Binary(vec![7; 4]),
            Value::Binary(ticket.to_vec()),
        ]));
    }
    let value = Value::Array(vec![
        Value::Array(vec![
            Value::Binary(kid.to_vec()),
            Value::Binary(vec![1; 16]),
            Value::Boolean(false),
        ]),
        Value::from(location),
        Value::Array(caveats),
        Value::Binary(vec![9; 32]),
    ]);
    let mut raw = Vec::new();
    rmpv::encode::write_value(&mut raw, &value).expect("writing to a Vec");
    format!("fm2_{}", base64::engine::general_purpose::STANDARD.encode(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn decodes_location_expiry_and_tickets() {
        let token = encode_for_test(b"kid1", LOCATION_PERMISSION, Some(NOW + 10), &[b"t1", b"t2"]);
        let m = Macaroon::decode(&token).unwrap();
        assert_eq!(m.kid, b"kid1");
        assert_eq!(m.location, LOCATION_PERMISSION);
        assert_eq!(m.expires, Some(NOW + 10));
        let tickets: Vec<&[u8]> = m.third_parties.iter().map(|tp| tp.ticket.as_slice()).collect();
        assert_eq!(tickets, [b"t1", b"t2"]);
        assert!(
            m.third_parties
                .iter()
                .all(|tp| tp.location == "https://auth.fly.io")
        );
        assert_eq!(Macaroon::decode("fm2_lJPECAAAAAAAAflyapidouble"), None);
        assert_eq!(Macaroon::decode("fm2_!!!"), None);
    }

    #[test]
    fn prunes_as_fly_go_does() {
        let permission = encode_for_test(b"p", LOCATION_PERMISSION, Some(NOW + 3600), &[b"auth-ticket"]);
        let expired = encode_for_test(b"old", LOCATION_PERMISSION, Some(NOW - 1), &[]);
        let discharge = encode_for_test(b"auth-ticket", "https://auth.fly.io", Some(NOW + 3600), &[]);
        let stray = encode_for_test(b"nobody-asked", "https://auth.fly.io", Some(NOW + 3600), &[]);
        let expiring = encode_for_test(b"auth-ticket", "https://api.fly.io/aaa/v1", Some(NOW + 30), &[]);
        let tokens = vec![
            expired,
            permission.clone(),
            "fm2_garbage".to_string(),
            discharge.clone(),
            stray,
            expiring,
        ];
        assert_eq!(prune(&tokens, NOW), vec![permission, discharge]);
    }

    #[test]
    fn names_why_fly_would_refuse_the_token() {
        let discharge = encode_for_test(b"auth-ticket", "https://auth.fly.io", Some(NOW + 3600), &[]);
        let permission = encode_for_test(b"p", LOCATION_PERMISSION, Some(NOW + 3600), &[b"auth-ticket"]);
        // A deploy token as `fly tokens create deploy` prints it: nothing to say.
        assert_eq!(
            refusal_reason(&[permission.clone(), discharge.clone()], NOW),
            None
        );
        // Its discharge left out.
        let reason = refusal_reason(std::slice::from_ref(&permission), NOW).unwrap();
        assert!(
            reason.contains("discharge token from https://auth.fly.io"),
            "{reason}"
        );
        // Everything expired, three days ago at the latest.
        let old = encode_for_test(b"p", LOCATION_PERMISSION, Some(NOW - 3 * 86400), &[b"t"]);
        let old_discharge = encode_for_test(b"t", "https://auth.fly.io", Some(NOW - 4 * 86400), &[]);
        let reason = refusal_reason(&[old, old_discharge], NOW).unwrap();
        assert_eq!(reason, "every macaroon in it has expired, the last 3 days ago");
        // One that cannot be read: Fly is the judge.
        assert_eq!(refusal_reason(&[permission, "fm2_garbage".into()], NOW), None);
    }
}
