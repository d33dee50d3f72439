//! Validation of `outputs:` entries: inputs, format, destination, check, wait, actions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::raw::*;
use crate::config::units::*;
use crate::config::*;

use super::{is_identifier, Validator};

impl Validator<'_> {
    pub(super) fn output(
        &mut self,
        o: RawOutput,
        destination: PathBuf,
        sources: &BTreeMap<&str, &SourceConfig>,
        default_wait: Wait,
    ) -> Option<OutputConfig> {
        let what = format!("output `{}`", o.name);
        let name = o.name.clone();
        let n = Some(name.as_str());
        let list = |m: &BTreeMap<&str, &SourceConfig>| m.keys().copied().collect::<Vec<_>>().join(", ");
        let format_name =
            o.format.clone().unwrap_or_else(|| if o.template.is_some() { "template".into() } else { String::new() });
        // Inputs: either source + prefix (or key for raw), or inputs: [...].
        let (inputs, single) = match (&o.inputs, &o.source) {
            (Some(_), Some(_)) => {
                self.err(
                    &what,
                    n,
                    "has both `source` and `inputs`; use source + prefix for one prefix, inputs for several",
                );
                return None;
            }
            (Some(ins), None) => {
                if format_name != "template" {
                    self.err(&what, n, "`inputs` combine several prefixes and need format: template");
                }
                let mut seen = BTreeSet::new();
                let mut v = Vec::new();
                for i in ins {
                    if !seen.insert(i.name.clone()) {
                        self.err(&what, n, format!("input `{}` is named twice", i.name));
                    }
                    if !is_identifier(&i.name) {
                        self.err(
                            &what,
                            n,
                            format!("input name `{}` must be a template identifier (letters, digits, _)", i.name),
                        );
                    }
                    v.push(InputConfig { name: i.name.clone(), source: i.source.clone(), prefix: i.prefix.clone() });
                }
                if v.is_empty() {
                    self.err(&what, n, "`inputs` is empty; list at least one { name, source, prefix }");
                }
                (v, false)
            }
            (None, Some(src)) => {
                let prefix = match (&o.prefix, &o.key) {
                    (Some(p), None) => p.clone(),
                    (None, Some(k)) => k.clone(),
                    (Some(_), Some(_)) => {
                        self.err(
                            &what,
                            n,
                            "has both `prefix` and `key`; `key` is for format raw, `prefix` for the rest",
                        );
                        return None;
                    }
                    (None, None) if format_name == "raw" => {
                        self.err(
                            &what,
                            n,
                            "format raw needs `key:` (or `prefix:`), the one key whose bytes are written",
                        );
                        return None;
                    }
                    (None, None) => String::new(),
                };
                (vec![InputConfig { name: o.name.clone(), source: src.clone(), prefix }], true)
            }
            (None, None) => {
                self.err(&what, n, "names no data; add `source:` and `prefix:` (or `inputs:` for a template)");
                return None;
            }
        };
        for i in &inputs {
            if !sources.contains_key(i.source.as_str()) {
                let msg = format!(
                    "source `{}` is not defined (defined: {}); add it under `sources:` or fix the name",
                    i.source,
                    list(sources)
                );
                self.err(&what, n, msg);
            }
        }
        let format = match format_name.as_str() {
            "template" => {
                let Some(t) = &o.template else {
                    self.err(&what, n, "format template needs `template:`, the path of a minijinja template file");
                    return None;
                };
                let path = self.resolve(t);
                let names: Vec<String> =
                    if single { Vec::new() } else { inputs.iter().map(|i| i.name.clone()).collect() };
                match Template::load(&path, &names) {
                    Ok(t) => Format::Template(Box::new(t)),
                    Err(e) => {
                        self.err(&what, n, e);
                        return None;
                    }
                }
            }
            "json" => Format::Json,
            "yaml" => Format::Yaml,
            "env" => Format::Env { upcase: o.upcase.unwrap_or(false) },
            "properties" => Format::Properties,
            "files" => Format::Files,
            "raw" => Format::Raw { key: inputs[0].prefix.clone() },
            "" => {
                self.err(&what, n, "has no `format:`; use template, json, yaml, env, properties, files or raw");
                return None;
            }
            other => {
                let msg = format!(
                    "format: `{other}` is not a format; use template, json, yaml, env, properties, files or raw"
                );
                self.err(&what, n, msg);
                return None;
            }
        };
        if o.template.is_some() && !matches!(format, Format::Template(_)) {
            self.err(
                &what,
                n,
                format!("`template:` only applies to format template (this output is {})", format.name()),
            );
        }
        if o.upcase.is_some() && !matches!(format, Format::Env { .. }) {
            self.err(&what, n, "`upcase:` only applies to format env");
        }
        let perms = o.perms.as_deref().and_then(|p| match parse_perms(p) {
            Ok(m) => Some(m),
            Err(e) => {
                self.err(&what, n, format!("perms: {e}"));
                None
            }
        });
        let check = match &o.check {
            None => None,
            Some(argv) if argv.is_empty() => {
                self.err(
                    &what,
                    n,
                    "check: give the command as a list, e.g. [\"nginx\", \"-t\", \"-c\", \"{{ staged }}\"]",
                );
                None
            }
            Some(argv) => Some(CheckConfig {
                argv: argv.clone(),
                timeout: self.duration(&what, n, "check_timeout", &o.check_timeout, Duration::from_secs(30)),
            }),
        };
        let mut on_change = Vec::new();
        for (i, a) in o.on_change.iter().enumerate() {
            if let Some(a) = self.action(&what, n, i, a) {
                on_change.push(a);
            }
        }
        let wait = match &o.wait {
            None => default_wait,
            Some(w) => self.wait(&what, n, w, default_wait),
        };
        Some(OutputConfig {
            name,
            inputs,
            single,
            format,
            destination,
            perms,
            check,
            on_change,
            on_start: o.on_start,
            wait,
            guard: None,
            keep: 0,
        })
    }
}
