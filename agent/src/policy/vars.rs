//! `${NAME}` variables and preset parameters.

use std::collections::HashMap;

use super::*;

pub(super) fn valid_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// What validation of an entry needs to know.
pub(super) struct Ctx<'a> {
    pub(super) vars: &'a HashMap<String, String>,
    /// A preset's parameters, while expanding one.
    pub(super) params: Option<&'a HashMap<String, String>>,
    pub(super) catalog: &'a Catalog,
    /// Preset expansions kept from earlier loads, when there are any.
    pub(super) expansions: Option<&'a std::cell::RefCell<super::cache::Expansions>>,
}

impl Ctx<'_> {
    /// Expands `${NAME}`: a preset parameter first, then a policy variable.
    pub(super) fn expand(&self, text: &str) -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("unclosed '${{' in '{text}'"))?;
            let name = &after[..end];
            let value = self
                .params
                .and_then(|p| p.get(name))
                .or_else(|| self.vars.get(name))
                .ok_or_else(|| {
                    let mut known: Vec<&str> = self.vars.keys().map(String::as_str).collect();
                    if let Some(p) = self.params {
                        known.extend(p.keys().map(String::as_str));
                    }
                    known.sort_unstable();
                    let hint = did_you_mean(name, &known)
                        .map(|k| format!("; did you mean ${{{k}}}?"))
                        .unwrap_or_default();
                    format!("undefined variable ${{{name}}}{hint}")
                })?;
            out.push_str(value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}
