//! Which files make up a policy, and the digest over them.

use std::path::{Path, PathBuf};

use super::*;

/// Larger policy files are refused before parsing: a policy is a reviewed
/// text file, and this bounds the parser's memory.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

pub fn digest(sources: &[(PathBuf, Vec<u8>)]) -> String {
    use sha2::{Digest as _, Sha256};
    let mut hash = Sha256::new();
    for (file, bytes) in sources {
        hash.update(file.as_os_str().as_encoded_bytes());
        hash.update([0]);
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    }
    let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

pub fn policy_files(path: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let io = |source| PolicyError::Io {
        path: path.to_owned(),
        source,
    };
    if !std::fs::metadata(path).map_err(io)?.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let entry = entry.map_err(io)?;
        let p = entry.path();
        let is_yaml = matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
        if is_yaml && !entry.file_name().to_string_lossy().starts_with('.') {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(PolicyError::EmptyDirectory {
            path: path.to_owned(),
        });
    }
    Ok(files)
}
