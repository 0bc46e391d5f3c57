//! A reload: the policy read again (only what changed), applied, and
//! reported to the service manager and the control socket.

use super::*;

impl Agent {
    /// A reload as the service manager sees it: RELOADING=1, then READY=1
    /// with the outcome in STATUS=.
    pub(super) async fn reload_notified(&mut self, systemd: &Systemd) -> Result<String, String> {
        systemd.reloading();
        let result = self.reload().await;
        systemd.ready(&self.summary());
        result
    }

    /// The one line `systemctl status` shows.
    pub(super) fn summary(&self) -> String {
        let digest = self.digest.strip_prefix("sha256:").unwrap_or(&self.digest);
        let mut line = format!(
            "enforcing {} runner{}, policy sha256:{}",
            self.ids.len(),
            if self.ids.len() == 1 { "" } else { "s" },
            &digest[..digest.len().min(12)]
        );
        if let Some(r) = self.last_reload.as_ref().filter(|r| !r.ok) {
            line.push_str(&format!(
                "; reload at {} rejected, running policy kept",
                r.at
            ));
        }
        line
    }

    /// Re-reads the policy. A policy that fails validation is rejected
    /// whole and the running one stays in force.
    pub(super) async fn reload(&mut self) -> Result<String, String> {
        tracing::info!(policy = %self.opts.policy.display(), "reloading policy");
        let started = Instant::now();
        let result = match policy::load_with(&self.opts.policy, &mut self.policy_cache) {
            Ok(loaded) => {
                let loaded_in = started.elapsed();
                for w in &loaded.warnings {
                    tracing::warn!("{w}");
                }
                match self.apply(&loaded.policy).await {
                    Ok(()) => {
                        self.digest = loaded.digest;
                        self.record_applied(&loaded.files);
                        tracing::info!(
                            load_ms = loaded_in.as_secs_f64() * 1000.0,
                            apply_ms = (started.elapsed() - loaded_in).as_secs_f64() * 1000.0,
                            "policy reloaded"
                        );
                        Ok(format!("policy reloaded ({} runners)", self.ids.len()))
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "applying the new policy failed part way");
                        Err(format!("applying the new policy failed part way: {e}"))
                    }
                }
            }
            Err(e) => {
                tracing::error!("new policy rejected, the running policy stays in force:\n{e}");
                Err(format!(
                    "new policy rejected, the running policy stays in force:\n{e}"
                ))
            }
        };
        if result.is_ok() {
            self.reloads.0 += 1;
        } else {
            self.reloads.1 += 1;
        }
        self.last_reload = Some(ReloadResult {
            at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            ok: result.is_ok(),
            error: result.as_ref().err().cloned(),
        });
        result
    }
}
