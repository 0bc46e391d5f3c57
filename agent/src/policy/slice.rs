//! systemd slice names as runner cgroups.
//!
//! Docker's systemd cgroup driver (the default with cgroup v2 on a systemd
//! host) takes `cgroup_parent` as a slice name, not a path. systemd nests a
//! slice under the slices its dash-separated prefixes name, so
//! `egret-gitlab.slice` lives at `/egret.slice/egret-gitlab.slice`. With
//! `slice:` the operator writes the same name in the runner's config and
//! in the policy.

/// The cgroup, relative to the cgroup2 root, of the systemd slice `name`.
pub fn slice_cgroup(name: &str) -> Result<String, String> {
    let Some(stem) = name.strip_suffix(".slice") else {
        return Err(format!(
            "slice '{name}' must be a systemd slice name ending in .slice, e.g. egret-gitlab.slice"
        ));
    };
    if stem.is_empty() || stem == "-" {
        return Err(format!(
            "slice '{name}' is the root slice: every process on the host would fall under this runner's policy"
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '\\');
    if !stem.chars().all(allowed) {
        return Err(format!(
            "slice '{name}' may only contain letters, digits, and '-', '_', '.', ':' (no '/'): \
             it names a slice, not a path; use `cgroup:` for a path"
        ));
    }
    let parts: Vec<&str> = stem.split('-').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "slice '{name}' has an empty part between dashes: systemd refuses such names"
        ));
    }
    let mut path = String::new();
    for i in 1..=parts.len() {
        path.push('/');
        path.push_str(&parts[..i].join("-"));
        path.push_str(".slice");
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::slice_cgroup;

    /// The same nesting systemd uses (systemd.slice(5)): each dash opens a
    /// level, named after the prefix up to it.
    #[test]
    fn slices_nest_by_their_dashes() {
        assert_eq!(
            slice_cgroup("egret-gitlab.slice").as_deref(),
            Ok("/egret.slice/egret-gitlab.slice")
        );
        assert_eq!(slice_cgroup("ci.slice").as_deref(), Ok("/ci.slice"));
        assert_eq!(
            slice_cgroup("egret-gitlab-docker.slice").as_deref(),
            Ok("/egret.slice/egret-gitlab.slice/egret-gitlab-docker.slice")
        );
        assert_eq!(
            slice_cgroup("runner_1.slice").as_deref(),
            Ok("/runner_1.slice")
        );
    }

    #[test]
    fn what_is_not_a_slice_is_refused() {
        for bad in [
            "egret-gitlab",
            "/egret.slice/ci",
            "-.slice",
            ".slice",
            "egret--ci.slice",
            "-ci.slice",
            "ci-.slice",
            "egret/ci.slice",
        ] {
            assert!(slice_cgroup(bad).is_err(), "{bad}");
        }
    }
}
