//! What the host offers jobs that no cgroup hook sees, told at start.

/// What this host offers jobs that no cgroup hook sees, each with what the
/// operator must set on the runner's unit (docs/threat-model.md). `root`
/// is `/` but for tests.
pub(super) fn outside_every_hook(root: &std::path::Path) -> Vec<String> {
    let mut warnings = Vec::new();
    if root.join("dev/vsock").exists() {
        warnings.push(
            "this host has /dev/vsock: jobs of shell executors and GitHub runners can reach the \
             hypervisor over AF_VSOCK, which no cgroup hook sees; set \
             RestrictAddressFamilies=~AF_VSOCK on the runner's unit (docs/install.md)"
                .to_owned(),
        );
    }
    if root.join("run/systemd/resolve/io.systemd.Resolve").exists() {
        warnings.push(
            "systemd-resolved serves its varlink API here: jobs of shell executors and GitHub \
             runners can resolve any name through it, past the DNS proxy; hide it from the \
             runner's unit and deny its D-Bus API to the runner's user (docs/install.md)"
                .to_owned(),
        );
    }
    warnings
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_outside_every_hook_are_named() {
        let root = std::env::temp_dir().join(format!("egret-hooks-{}", std::process::id()));
        std::fs::create_dir_all(root.join("dev")).unwrap();
        assert!(super::outside_every_hook(&root).is_empty());
        std::fs::write(root.join("dev/vsock"), "").unwrap();
        std::fs::create_dir_all(root.join("run/systemd/resolve")).unwrap();
        std::fs::write(root.join("run/systemd/resolve/io.systemd.Resolve"), "").unwrap();
        let warnings = super::outside_every_hook(&root);
        assert_eq!(warnings.len(), 2);
        assert!(warnings[0].contains("AF_VSOCK") && warnings[1].contains("resolved"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
