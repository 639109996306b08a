//! File mode: a cluster is a folder holding Kubernetes YAML/JSON manifests
//! (any number of files, multi-document) and a `cluster.yaml` with the
//! cluster's name, network, locality and trust domain.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use meshpeer_model::{ClusterConfig, ClusterSnapshot, ConfigError, ParseError, parse_documents};

/// Name of the cluster config file in a cluster folder.
pub const CLUSTER_FILE: &str = "cluster.yaml";

/// A folder that cannot be used as a cluster.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}: no such directory")]
    NotFound(PathBuf),
    #[error("{0}: not a directory; give the folder that holds cluster.yaml and the manifests")]
    NotADirectory(PathBuf),
    #[error(
        "{0}: no cluster.yaml; a cluster folder needs one, at least `name: <cluster>` (fields: name, network, region, zone, trustDomain)"
    )]
    MissingConfig(PathBuf),
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Manifest files of a folder: `*.yaml`, `*.yml`, `*.json`, not hidden, not
/// `cluster.yaml`, in name order. Subfolders are not read (like
/// `kubectl apply -f DIR` without `-R`).
pub fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == CLUSTER_FILE || !path.is_file() {
            continue;
        }
        if [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext))
        {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads a cluster folder into a snapshot. Documents that cannot be read
/// become diagnostics (rule F1) and are left out; the rest is used.
pub fn load_cluster_dir(dir: &Path) -> Result<ClusterSnapshot, LoadError> {
    if !dir.exists() {
        return Err(LoadError::NotFound(dir.to_owned()));
    }
    if !dir.is_dir() {
        return Err(LoadError::NotADirectory(dir.to_owned()));
    }
    let config_path = dir.join(CLUSTER_FILE);
    if !config_path.is_file() {
        return Err(LoadError::MissingConfig(dir.to_owned()));
    }
    let text = fs::read_to_string(&config_path).map_err(io_err(&config_path))?;
    let config = ClusterConfig::from_yaml(&config_path.display().to_string(), &text)?;

    let mut objects = Vec::new();
    let mut errors: Vec<ParseError> = Vec::new();
    for file in manifest_files(dir)? {
        let text = fs::read_to_string(&file).map_err(io_err(&file))?;
        let parsed = parse_documents(&file.display().to_string(), &text);
        objects.extend(parsed.objects);
        errors.extend(parsed.errors);
    }
    let mut snap = ClusterSnapshot::from_objects(config, objects);
    snap.add_parse_errors(&errors);
    Ok(snap)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn loads_a_folder_and_reports_bad_documents() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(CLUSTER_FILE),
            "name: c1\nregion: r\nzone: z\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("a.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  ports:\n  - port: nope\n",
        )
        .unwrap();
        fs::write(dir.path().join("notes.txt"), "not yaml").unwrap();
        fs::write(dir.path().join(".hidden.yaml"), "::").unwrap();
        let snap = load_cluster_dir(dir.path()).unwrap();
        assert_eq!(snap.config.name, "c1");
        assert_eq!(snap.namespaces.len(), 1);
        assert!(snap.services.is_empty());
        assert_eq!(snap.diagnostics.len(), 1);
        let d = snap.diagnostics[0].to_string();
        assert!(d.starts_with("error[F1] file "), "{d}");
        assert!(d.contains("a.yaml"), "{d}");
        assert!(d.contains("document 2 (line 11)"), "{d}");
        assert!(d.contains("spec.ports[0].port"), "{d}");
    }

    #[test]
    fn unusable_folders_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_cluster_dir(dir.path()).unwrap_err();
        assert!(matches!(e, LoadError::MissingConfig(_)), "{e}");
        assert!(e.to_string().contains("no cluster.yaml"));
        let e = load_cluster_dir(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(e, LoadError::NotFound(_)));
        fs::write(dir.path().join(CLUSTER_FILE), "name: Bad_Name\n").unwrap();
        let e = load_cluster_dir(dir.path()).unwrap_err();
        assert!(e.to_string().contains("not a valid cluster name"), "{e}");
    }
}
