//! `<cluster folder>/.meshpeer/controller.json`: where a file-mode
//! controller's API and peering server listen, so that `check` finds them
//! without being told. The controller writes it once it listens and removes
//! it when it stops; a file left by a controller that died names an address
//! that no longer answers, which `check` reports.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Path of the runtime file inside a cluster folder.
pub const RUNTIME_FILE: &str = ".meshpeer/controller.json";

/// What the runtime file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeFile {
    /// The controller's local API (`--api-listen`).
    pub api: String,
    /// Its peering server.
    pub peering: String,
    /// Its cluster listener (certificates, catalog over mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Its process id.
    pub pid: u32,
}

fn path(dir: &Path) -> PathBuf {
    dir.join(RUNTIME_FILE)
}

/// Records where the controller of the cluster folder `dir` listens
/// (atomically: a temporary file renamed into place).
pub fn write_runtime_file(
    dir: &Path,
    api_addr: SocketAddr,
    peering_addr: SocketAddr,
    cluster_addr: Option<SocketAddr>,
) -> io::Result<()> {
    let file = RuntimeFile {
        api: api_addr.to_string(),
        peering: peering_addr.to_string(),
        cluster: cluster_addr.map(|a| a.to_string()),
        pid: std::process::id(),
    };
    let target = path(dir);
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    let tmp = target.with_extension(format!("json.{}.tmp", std::process::id()));
    let body = serde_json::to_vec_pretty(&file).map_err(io::Error::other)?;
    fs::write(&tmp, body)?;
    fs::rename(&tmp, &target)
}

/// Removes the runtime file if it still names this process.
pub fn remove_runtime_file(dir: &Path) -> io::Result<()> {
    match read_runtime_file(dir) {
        Some(Ok(f)) if f.pid == std::process::id() => fs::remove_file(path(dir)),
        _ => Ok(()),
    }
}

/// The runtime file of `dir`: `None` when there is none, an error (in
/// words, naming the file) when it cannot be read.
pub fn read_runtime_file(dir: &Path) -> Option<Result<RuntimeFile, String>> {
    let p = path(dir);
    let bytes = match fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(format!("{}: {e}", p.display()))),
    };
    Some(serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", p.display())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn runtime_file_round_trips_and_is_removed_by_its_writer() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_runtime_file(dir.path()).is_none());
        let api: SocketAddr = "127.0.0.1:15114".parse().unwrap();
        let peering: SocketAddr = "127.0.1.1:15012".parse().unwrap();
        let cluster: SocketAddr = "127.0.1.1:15013".parse().unwrap();
        write_runtime_file(dir.path(), api, peering, Some(cluster)).unwrap();
        let f = read_runtime_file(dir.path()).unwrap().unwrap();
        assert_eq!(f.api, "127.0.0.1:15114");
        assert_eq!(f.peering, "127.0.1.1:15012");
        assert_eq!(f.cluster.as_deref(), Some("127.0.1.1:15013"));
        remove_runtime_file(dir.path()).unwrap();
        assert!(read_runtime_file(dir.path()).is_none());
        fs::write(path(dir.path()), "not json").unwrap();
        let err = read_runtime_file(dir.path()).unwrap().unwrap_err();
        assert!(err.contains("controller.json"), "{err}");
    }
}
