//! Syntax checks for names, label values and domains. Each returns what is
//! wrong in words a user can act on. Used on this cluster's own objects and
//! on what peers send (SPEC B1).

/// RFC 1123 label: 1-63 chars, lower-case alphanumerics and '-', starting and
/// ending with an alphanumeric.
pub fn dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err(format!("must be at most 63 characters (has {})", s.len()));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("may hold only lower-case letters, digits and '-'".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

/// A DNS domain made of RFC 1123 labels (`cluster.dev`), at most 253 chars.
pub fn dns_domain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 253 {
        return Err(format!("must be at most 253 characters (has {})", s.len()));
    }
    for label in s.split('.') {
        dns_label(label).map_err(|why| format!("label {label:?} {why}"))?;
    }
    Ok(())
}

/// Kubernetes label value: empty, or at most 63 chars of alphanumerics, '-',
/// '_' and '.', starting and ending with an alphanumeric.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    if s.len() > 63 {
        return Err(format!("must be at most 63 characters (has {})", s.len()));
    }
    let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
    if !s.bytes().all(ok) {
        return Err("may hold only letters, digits, '-', '_' and '.'".into());
    }
    let first = s.as_bytes()[0];
    let last = s.as_bytes()[s.len() - 1];
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

/// SPIFFE trust domain: lower-case letters, digits, '.', '-', '_'.
pub fn trust_domain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 255 {
        return Err("must be at most 255 characters".into());
    }
    if !s.bytes().all(|b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'_'
    }) {
        return Err("may hold only lower-case letters, digits, '.', '-' and '_'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns_label("cluster-1").is_ok());
        assert!(dns_label("Cluster").is_err());
        assert!(dns_label("-a").is_err());
        assert!(dns_label(&"a".repeat(64)).is_err());
        assert!(dns_domain("cluster.dev").is_ok());
        assert!(dns_domain("cluster..dev").is_err());
        assert!(dns_domain("Cluster.dev").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("us-east-1").is_ok());
        assert!(label_value("a/b").is_err());
        assert!(trust_domain("cluster.local").is_ok());
        assert!(trust_domain("Cluster").is_err());
    }
}
