//! Wildcard host entries (`*.example.com`): what they match, and which
//! suffixes are too broad to allow.

use super::*;

impl HostRule {
    /// Whether a queried name falls under this entry: equal for an exact
    /// name; for `*.suffix`, one or more labels followed by `.suffix` (never
    /// `suffix` itself). Case and a trailing dot are ignored.
    pub fn matches(&self, queried: &str) -> bool {
        let queried = queried.trim_end_matches('.');
        match self.name.strip_prefix("*.") {
            None => queried.eq_ignore_ascii_case(&self.name),
            Some(suffix) => {
                queried.len() > suffix.len() + 1
                    && queried.as_bytes()[queried.len() - suffix.len() - 1] == b'.'
                    && queried[queried.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && !queried[..queried.len() - suffix.len() - 1]
                        .split('.')
                        .any(str::is_empty)
            }
        }
    }
}

/// Why a `*.suffix` pattern is refused (`Err`), or the multi-tenant suffix
/// it covers (`Ok(Some)`), which earns a warning.
pub(super) fn validate_pattern(suffix: &str) -> Result<Option<String>, String> {
    if suffix.is_empty() || suffix == "*" {
        return Err("a bare wildcard matches every name".into());
    }
    if suffix.contains('*') {
        return Err("only a leading '*.' is supported".into());
    }
    validate_hostname(suffix)?;
    if let Some(ps) = psl::suffix(suffix.as_bytes())
        && ps.is_known()
        && ps.as_bytes() == suffix.as_bytes()
    {
        return match ps.typ() {
            Some(psl::Type::Private) => Ok(Some(format!("'{suffix}' is a shared hosting suffix"))),
            _ => Err(format!(
                "'{suffix}' is a public suffix: the pattern would match every domain registered under it"
            )),
        };
    }
    Ok(MULTITENANT
        .iter()
        .find(|m| **m == suffix || m.ends_with(&format!(".{suffix}")))
        .map(|m| format!("'{m}' hosts anyone's content")))
}

/// The allow entries a queried name falls under: what decides whether the
/// DNS proxy answers it, and on which ports its addresses open. A known
/// DNS-over-HTTPS service counts only when an entry names it exactly.
pub fn rules_for<'a>(rules: &'a [HostRule], name: &str) -> Vec<&'a HostRule> {
    let doh = crate::baseline::is_doh_name(name);
    rules
        .iter()
        .filter(|r| r.matches(name) && (!doh || !r.name.starts_with("*.")))
        .collect()
}

/// Whether `*.suffix` is a pattern `egret check` accepts without a word:
/// no public suffix, no shared hosting, no suffix where anyone can get a
/// name, and more than a top-level domain.
pub fn wildcard_allowed_quietly(suffix: &str) -> bool {
    suffix.contains('.') && matches!(validate_pattern(suffix), Ok(None))
}

/// Suffixes where anyone can get a name, beyond what the public suffix list
/// marks as private. A wildcard on one, or on a parent of one, warns.
pub(super) const MULTITENANT: &[&str] = &[
    "s3.amazonaws.com",
    "amazonaws.com",
    "cloudfront.net",
    "blob.core.windows.net",
    "azurewebsites.net",
    "appspot.com",
    "herokuapp.com",
    "github.io",
    "githubusercontent.com",
    "gitlab.io",
    "netlify.app",
    "vercel.app",
    "pages.dev",
    "workers.dev",
    "web.app",
    "firebaseapp.com",
    "ngrok.io",
    "storage.googleapis.com",
];
