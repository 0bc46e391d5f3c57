//! `/proc/self/mountinfo`, read once and parsed in one place: where the
//! cgroup2 hierarchy is, and whether a path is a mount point.

use std::path::{Path, PathBuf};

/// One mount: where, and of which filesystem type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    pub fstype: String,
}

pub fn read() -> std::io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// Each line: `id parent major:minor root mount-point options [optional...]
/// - fstype source super-options`.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            Some(Mount {
                point: PathBuf::from(unescape(pre.split_whitespace().nth(4)?)),
                fstype: post.split_whitespace().next()?.to_owned(),
            })
        })
        .collect()
}

/// The first mount point of a filesystem type.
pub fn of_type(mounts: &[Mount], fstype: &str) -> Option<PathBuf> {
    mounts
        .iter()
        .find(|m| m.fstype == fstype)
        .map(|m| m.point.clone())
}

/// Whether `path` (resolved) is a mount point.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(canonical) = path.canonicalize() else {
        return false;
    };
    read().is_ok_and(|mounts| mounts.iter().any(|m| m.point == canonical))
}

/// mountinfo escapes space, tab, newline and backslash as octal `\NNN`.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_layout() {
        let info = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                    32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            of_type(&parse(info), "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_cgroup2_in_unified_layout_with_optional_fields() {
        let info =
            "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            of_type(&parse(info), "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn no_cgroup2() {
        assert_eq!(
            of_type(
                &parse("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"),
                "cgroup2"
            ),
            None
        );
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn mount_points_with_spaces_are_unescaped() {
        let mounts = parse("50 23 0:40 / /run/my\\040bpf rw - bpf bpf rw\n");
        assert_eq!(mounts[0].point, PathBuf::from("/run/my bpf"));
        assert_eq!(mounts[0].fstype, "bpf");
    }
}
