//! Reading facts out of DER certificates, and the time formats we print.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::spiffe::SpiffeId;

/// The facts we need from one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertFacts {
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    /// The subjectPublicKey bits (not the whole SPKI), comparable with
    /// `rcgen::KeyPair::public_key_raw`.
    pub(crate) public_key: Vec<u8>,
    pub(crate) subject: String,
}

pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(format!("{} bytes of trailing data", rest.len())),
        Err(err) => Err(err.to_string()),
    }
}

pub(crate) fn facts(der: &[u8]) -> Result<CertFacts, String> {
    let cert = parse(der)?;
    let validity = cert.validity();
    Ok(CertFacts {
        not_before: from_unix(validity.not_before.timestamp()),
        not_after: from_unix(validity.not_after.timestamp()),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        subject: cert.subject().to_string(),
    })
}

/// Why a leaf has no usable SPIFFE ID.
pub(crate) fn spiffe_id_of(der: &CertificateDer<'_>) -> Result<SpiffeId, String> {
    let cert = parse(der).map_err(|err| format!("the certificate cannot be parsed: {err}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|err| format!("its subjectAltName extension is invalid: {err}"))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err("it has no URI SAN".to_owned()),
        [uri] => uri
            .parse()
            .map_err(|err| format!("its URI SAN is not a SPIFFE ID: {err}")),
        many => Err(format!(
            "it has {} URI SANs ({}); a SPIFFE certificate has exactly one",
            many.len(),
            many.join(", ")
        )),
    }
}

/// The path of the URI SAN that binds a cluster CA to one cluster:
/// `spiffe://<td>/meshpeer/cluster/<cluster>` (see [`CaBinding`]).
pub(crate) const CLUSTER_BINDING_PATH: &str = "meshpeer/cluster/";

/// What a CA certificate is bound to by its URI SANs, as the root holder
/// wrote them when it signed it: a trust domain (`spiffe://<td>`, SPEC P6)
/// and, optionally, one cluster (`spiffe://<td>/meshpeer/cluster/<name>`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CaBinding {
    /// `None` for a CA without a binding (made before SPEC P6).
    pub(crate) trust_domain: Option<String>,
    /// `None` for a CA not bound to a cluster (made before cluster bindings).
    pub(crate) cluster: Option<String>,
}

/// A CA certificate's trust domain and cluster bindings. URI SANs of other
/// schemes are ignored. A cluster binding implies the trust domain binding
/// of its `<td>`. Errors: a `spiffe://` URI with another path (a workload
/// identity on a CA), an invalid trust domain or cluster name, two
/// different trust domains or two different clusters.
pub(crate) fn bindings_of(der: &[u8]) -> Result<CaBinding, String> {
    let cert = parse(der)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|err| format!("its subjectAltName extension is invalid: {err}"))?;
    let mut found = CaBinding::default();
    for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        let Some(rest) = uri.strip_prefix("spiffe://") else {
            continue;
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (td, cluster) = match rest.split_once('/') {
            None => (rest, None),
            Some((td, path)) => match path.strip_prefix(CLUSTER_BINDING_PATH) {
                Some(cluster) => {
                    SpiffeId::check_cluster_name(cluster).map_err(|problem| {
                        format!("its cluster binding {uri} is unusable: cluster name {cluster:?} {problem}")
                    })?;
                    (td, Some(cluster))
                }
                None => {
                    return Err(format!(
                        "its URI SAN {uri} is a workload identity, not a trust domain binding (spiffe://<trust-domain>) or a cluster binding (spiffe://<trust-domain>/{CLUSTER_BINDING_PATH}<cluster>)"
                    ));
                }
            },
        };
        SpiffeId::check_trust_domain(td).map_err(|err| err.to_string())?;
        match &found.trust_domain {
            Some(other) if other != td => {
                return Err(format!(
                    "it is bound to two trust domains ({other} and {td}); a cluster CA is bound to one"
                ));
            }
            _ => found.trust_domain = Some(td.to_owned()),
        }
        if let Some(cluster) = cluster {
            match &found.cluster {
                Some(other) if other != cluster => {
                    return Err(format!(
                        "it is bound to two clusters ({other} and {cluster}); a cluster CA is bound to one"
                    ));
                }
                _ => found.cluster = Some(cluster.to_owned()),
            }
        }
    }
    Ok(found)
}

/// Roots are self-signed; they are never sent as part of a chain.
pub(crate) fn is_self_signed(der: &CertificateDer<'_>) -> bool {
    parse(der).is_ok_and(|c| c.subject().as_raw() == c.issuer().as_raw())
}

/// SHA-256 of `der` as uppercase hex pairs joined by `:` (openssl's format).
pub(crate) fn sha256_fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// Whole seconds since the epoch (negative before 1970), truncating sub-seconds.
pub(crate) fn to_unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let d = before.duration();
            // Round toward the past so that truncation never moves a time later.
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            i64::try_from(secs).map_or(i64::MIN, |s| -s)
        }
    }
}

pub(crate) fn from_unix(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// `t` as RFC 3339 UTC with second precision, e.g. `2026-11-22T03:00:00Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = to_unix(t);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Proleptic Gregorian date `(year, month, day)` of a day count since
/// 1970-01-01 (H. Hinnant's algorithm); what the data plane's log lines
/// write their timestamps with too.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_renders_utc_seconds() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(from_unix(1_795_316_400)), "2026-11-22T03:00:00Z");
        assert_eq!(rfc3339(from_unix(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(from_unix(-1)), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(from_unix(253_402_300_799)), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn unix_seconds_truncate_toward_the_past() {
        let t = UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(to_unix(t), 1);
        let t = UNIX_EPOCH - Duration::from_millis(1_500);
        assert_eq!(to_unix(t), -2);
        assert_eq!(from_unix(to_unix(from_unix(42))), from_unix(42));
    }

    #[test]
    fn fingerprint_is_colon_separated_uppercase_hex() {
        let fp = sha256_fingerprint(b"abc");
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp.starts_with("BA:78:16:BF:"), "{fp}");
    }
}
