//! OpenAPI `format` checks for strings, as the API server's validator does
//! them (go-openapi `strfmt`). Formats not listed are not checked, as the
//! API server does not check unknown formats either.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether `text` is valid for `format`.
pub(crate) fn valid(format: &str, text: &str) -> bool {
    match format {
        // Go `net.ParseIP(s) != nil` plus a '.' (ipv4) or ':' (ipv6).
        "ipv4" => text.contains('.') && parse_ip(text).is_some(),
        "ipv6" => text.contains(':') && parse_ip(text).is_some(),
        "cidr" => is_cidr(text),
        "date" => is_date(text),
        "date-time" | "datetime" => is_date_time(text),
        "uuid" => is_uuid(text),
        "byte" => is_base64(text),
        _ => true,
    }
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    if let Ok(v4) = text.parse::<Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    text.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
}

/// Go `net.ParseCIDR`.
fn is_cidr(text: &str) -> bool {
    let Some((ip, bits)) = text.split_once('/') else {
        return false;
    };
    if bits.is_empty() || bits.len() > 3 || !bits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Ok(bits) = bits.parse::<u32>() else {
        return false;
    };
    if ip.parse::<Ipv4Addr>().is_ok() {
        bits <= 32
    } else if ip.parse::<Ipv6Addr>().is_ok() {
        bits <= 128
    } else {
        false
    }
}

fn digits(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u32, |acc, d| {
        acc.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    })
}

/// RFC 3339 full-date `YYYY-MM-DD`, a real calendar date.
fn is_date(text: &str) -> bool {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let (Some(year), Some(month), Some(day)) = (digits(&b[..4]), digits(&b[5..7]), digits(&b[8..]))
    else {
        return false;
    };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day)
}

/// go-openapi `strfmt.IsDateTime`: a full date, `T` (any case), then
/// `hh:mm:ss`, optional fraction, and `Z` or `±hh:mm`.
fn is_date_time(text: &str) -> bool {
    if text.len() < 4 {
        return false;
    }
    let lower = text.to_ascii_lowercase();
    let mut parts = lower.split('t');
    let (Some(date), Some(time)) = (parts.next(), parts.next()) else {
        return false;
    };
    if !is_date(date) {
        return false;
    }
    let b = time.as_bytes();
    if b.len() < 9 || b[2] != b':' || b[5] != b':' {
        return false;
    }
    let (Some(h), Some(m), Some(s)) = (digits(&b[..2]), digits(&b[3..5]), digits(&b[6..8])) else {
        return false;
    };
    if h > 23 || m > 59 || s > 59 {
        return false;
    }
    let mut rest = &b[8..];
    // `(.[0-9]+)?`: any one character followed by digits.
    if rest.len() >= 2 && rest[0] != b'z' && rest[0] != b'+' && rest[0] != b'-' {
        let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &rest[1 + n..];
    }
    match rest {
        [b'z'] => true,
        [sign, h1, h2, b':', m1, m2] if *sign == b'+' || *sign == b'-' => {
            [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit())
        }
        _ => false,
    }
}

fn is_uuid(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn is_base64(text: &str) -> bool {
    let b = text.as_bytes();
    if !b.len().is_multiple_of(4) {
        return false;
    }
    let pad = b.iter().rev().take_while(|c| **c == b'=').count();
    pad <= 2
        && b[..b.len() - pad]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

#[cfg(test)]
mod tests {
    use super::valid;

    #[test]
    fn ip_formats() {
        assert!(valid("ipv4", "192.0.2.10"));
        assert!(!valid("ipv4", "192.0.2"));
        assert!(!valid("ipv4", "192.0.2.256"));
        assert!(!valid("ipv4", "2001:db8::1"));
        assert!(valid("ipv6", "2001:db8::1"));
        assert!(!valid("ipv6", "192.0.2.10"));
        assert!(valid("cidr", "10.0.0.0/8"));
        assert!(!valid("cidr", "10.0.0.0/33"));
    }

    #[test]
    fn date_time_format() {
        assert!(valid("date-time", "1970-01-01T00:00:00Z"));
        assert!(valid("date-time", "2024-02-29T23:59:59.123+02:00"));
        assert!(!valid("date-time", "2023-02-29T00:00:00Z"));
        assert!(!valid("date-time", "2024-01-01 00:00:00Z"));
        assert!(!valid("date-time", "2024-01-01T24:00:00Z"));
        assert!(!valid("date-time", "yesterday"));
    }
}
