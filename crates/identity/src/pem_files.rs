//! Reading and writing the PEM files of the `cacerts` layout.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use rcgen::KeyPair;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::ca::CaError;

/// A file as read: its text (written back verbatim) and what it holds.
pub(crate) struct Read<T> {
    pub(crate) text: String,
    pub(crate) value: T,
}

pub(crate) fn read_text(path: &Path, hint: &'static str) -> Result<String, CaError> {
    let bytes = fs::read(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            CaError::Missing {
                path: path.to_owned(),
                hint,
            }
        } else {
            CaError::Io {
                path: path.to_owned(),
                action: "read",
                source,
            }
        }
    })?;
    text_of(bytes, path)
}

/// PEM bytes as text; `path` names them in the error.
pub(crate) fn text_of(bytes: Vec<u8>, path: &Path) -> Result<String, CaError> {
    String::from_utf8(bytes).map_err(|_| CaError::Pem {
        path: path.to_owned(),
        detail: "the file is not text (PEM is ASCII)".to_owned(),
    })
}

/// All certificates of PEM `text` read from `path`, in order; at least one.
pub(crate) fn parse_certs(
    text: String,
    path: &Path,
) -> Result<Read<Vec<CertificateDer<'static>>>, CaError> {
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| CaError::Pem {
            path: path.to_owned(),
            detail: err.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CaError::Pem {
            path: path.to_owned(),
            detail: "no \"BEGIN CERTIFICATE\" block found".to_owned(),
        });
    }
    Ok(Read { text, value: certs })
}

/// The single certificate of a PEM file.
pub(crate) fn read_cert(
    path: &Path,
    hint: &'static str,
) -> Result<Read<CertificateDer<'static>>, CaError> {
    parse_cert(read_text(path, hint)?, path)
}

/// The single certificate of PEM `text` read from `path`.
pub(crate) fn parse_cert(
    text: String,
    path: &Path,
) -> Result<Read<CertificateDer<'static>>, CaError> {
    let Read { text, mut value } = parse_certs(text, path)?;
    if value.len() != 1 {
        return Err(CaError::Pem {
            path: path.to_owned(),
            detail: format!("expected exactly one certificate, found {}", value.len()),
        });
    }
    let cert = value.remove(0);
    Ok(Read { text, value: cert })
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn read_key(path: &Path, hint: &'static str) -> Result<Read<KeyPair>, CaError> {
    parse_key(read_text(path, hint)?, path)
}

/// The private key of PEM `text` read from `path`.
pub(crate) fn parse_key(text: String, path: &Path) -> Result<Read<KeyPair>, CaError> {
    let der = PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|err| CaError::Pem {
        path: path.to_owned(),
        detail: format!("no usable private key: {err}"),
    })?;
    let key = KeyPair::try_from(&der).map_err(|err| CaError::BadKey {
        path: path.to_owned(),
        detail: err.to_string(),
    })?;
    Ok(Read { text, value: key })
}

/// A file to create: path, contents, whether it is secret (mode 0600).
pub(crate) struct NewFile<'a> {
    pub(crate) name: &'static str,
    pub(crate) contents: &'a str,
    pub(crate) secret: bool,
}

/// Creates `dir` if needed and writes `files` into it. Refuses to overwrite:
/// if any of the files exists, nothing is written.
pub(crate) fn write_new(dir: &Path, files: &[NewFile<'_>]) -> Result<(), CaError> {
    fs::create_dir_all(dir).map_err(|source| CaError::Io {
        path: dir.to_owned(),
        action: "create directory",
        source,
    })?;
    for file in files {
        let path = dir.join(file.name);
        if fs::symlink_metadata(&path).is_ok() {
            return Err(CaError::AlreadyExists { path });
        }
    }
    for file in files {
        let path = dir.join(file.name);
        let io_err = |source| CaError::Io {
            path: path.clone(),
            action: "write",
            source,
        };
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(if file.secret { 0o600 } else { 0o644 });
        }
        let mut out = options.open(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                CaError::AlreadyExists { path: path.clone() }
            } else {
                io_err(source)
            }
        })?;
        out.write_all(file.contents.as_bytes()).map_err(io_err)?;
        out.sync_all().map_err(io_err)?;
    }
    Ok(())
}
