//! The function sets of confd and consul-template, over a snapshot of KV pairs.
//!
//! # Keys
//! [`functions`] takes the keys exactly as the old tool's templates name them:
//! - **confd**: keys with a leading `/`, relative to confd's `prefix` (confd strips the prefix and
//!   joins the rest onto `/`): with `prefix = "/myapp"` the etcd key `/myapp/db/host` is `/db/host`.
//! - **consul-template**: full Consul keys without a leading `/` (`service/redis/maxconns`).
//!   A leading `/` in a template's argument is ignored, as consul-template does.
//!
//! # What differs from the old tools
//! - consul-template's `key` on a missing key makes the output wait: the call fails with
//!   [`crate::FuncError::MissingKey`] and [`crate::Template::execute`] returns [`crate::Error::MissingKey`].
//!   `safeLs`/`safeTree` on an empty prefix do the same. `keyOrDefault`, `keyExists`, `ls` and `tree` do
//!   not wait (as in consul-template).
//! - consul-template's `KeyPair` has `Path`, `Key`, `Value` and `CreateIndex`, `ModifyIndex`,
//!   `LockIndex`, `Flags` (always 0 here) and `Session` (always empty): kvsync reads values only.
//! - `@dc` and `?ns=` suffixes of consul-template key arguments are ignored: kvsync reads the
//!   source the output is configured with.
//! - `toYAML` follows go-yaml v2.4's emitter and `toTOML` BurntSushi/toml v1.5's encoder (the versions
//!   consul-template builds with); compared on 3000 random maps with those libraries, both matched
//!   except for keys holding a byte-order mark or consisting of line breaks only, and for map keys that
//!   go-yaml's own (non-transitive) key order leaves to chance.
//! - Lists are untyped here, where Go has `[]string` and `[]interface{}`: a function that takes a
//!   `[]string` in Go (confd's `join`, `sortByLength`) also takes a list of strings from JSON data, and
//!   confd's `reverse` also reverses one; consul-template's `containsAll`/`containsAny`/... also take
//!   a list made by `split`. Where Go succeeds, the output is the same.
//! - Values are UTF-8 text: bytes that are not (from `base64Decode`) become U+FFFD.
//! - `sortByLength` and `sortKVByLength` keep the input order of equal lengths (Go's `sort.Sort`
//!   does so only for fewer than 13 elements).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{FuncNames, Funcs};

mod common;
mod confd;
mod consul;
pub mod dns;
mod sprig;
mod yaml;

pub use common::go_json;

/// Which tool's functions a template uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    Confd,
    ConsulTemplate,
}

/// The functions of `dialect` over `kv` (keys as described in the [module docs](self)).
/// Call it once per render: consul-template's `scratch` starts empty for each.
pub fn functions(dialect: Dialect, kv: Arc<BTreeMap<String, String>>) -> Funcs {
    match dialect {
        Dialect::Confd => confd::functions(kv),
        Dialect::ConsulTemplate => consul::functions(kv),
    }
}

/// The names the dialect defines (plus the built-ins and the refused names, so that a template
/// using them parses and [`refused`] can name them with their line).
pub fn names(dialect: Dialect) -> FuncNames {
    let mut n = functions(dialect, Arc::new(BTreeMap::new())).names();
    let refused: &[&str] = match dialect {
        Dialect::Confd => &[],
        Dialect::ConsulTemplate => CONSUL_REFUSED,
    };
    for r in refused {
        n.insert(*r);
    }
    if dialect == Dialect::ConsulTemplate {
        // Run by the engine itself: it renders a template defined in the same file.
        n.insert("executeTemplate");
    }
    n
}

const CONSUL_REFUSED: &[&str] = &[
    "service",
    "services",
    "node",
    "nodes",
    "connect",
    "caRoots",
    "caLeaf",
    "secret",
    "secrets",
    "pkiCert",
    "nomadServices",
    "nomadService",
    "nomadVarList",
    "nomadVarListSafe",
    "nomadVar",
    "nomadVarExists",
    "plugin",
    "datacenters",
    "partitions",
    "peerings",
    "exportedServices",
    "importedServices",
    "file",
    "writeToFile",
    "sockaddr",
    "byTag",
    "byPort",
    "byMeta",
    "spew_dump",
    "spew_printf",
    "spew_sdump",
    "spew_sprintf",
];

/// For a function the old tool has but kvsync does not render: what kvsync reads instead (for
/// `kvsync check`'s message). `None` when the function is supported (or unknown to the dialect).
pub fn refused(dialect: Dialect, name: &str) -> Option<&'static str> {
    if dialect != Dialect::ConsulTemplate {
        return None;
    }
    Some(match name {
        "service" | "services" | "node" | "nodes" | "datacenters" | "partitions" | "peerings"
        | "exportedServices" | "importedServices" | "byTag" | "byPort" | "byMeta" => {
            "kvsync reads the Consul KV store and etcd only, not the Consul catalog: publish the addresses under a KV prefix (for example with a Consul watch or your deployment tool) and read them with `ls`/`tree`"
        }
        "connect" | "caRoots" | "caLeaf" => {
            "kvsync does not read Consul Connect certificates: keep these templates in consul-template, or store the certificates under a KV prefix"
        }
        "secret" | "secrets" | "pkiCert" => {
            "kvsync does not read Vault: keep these templates in consul-template (or vault agent), or store the values under a KV prefix"
        }
        "nomadServices" | "nomadService" | "nomadVarList" | "nomadVarListSafe" | "nomadVar" | "nomadVarExists" => {
            "kvsync does not read Nomad: store the values under a Consul or etcd KV prefix"
        }
        "plugin" => "kvsync does not run programs while rendering: compute the value beforehand and store it under a KV prefix, or use an output `check`/action",
        "file" => "kvsync renders from KV only: use a `format: files` or `raw` output, or store the file's content under a KV key",
        "writeToFile" => "kvsync writes only the output's destination: declare another output for that file",
        "spew_dump" | "spew_printf" | "spew_sdump" | "spew_sprintf" => {
            "go-spew's dumps of Go's internal types are not reproduced: use `printf \"%#v\"` or `toJSONPretty`"
        }
        "sockaddr" => "kvsync does not inspect network interfaces while rendering: store the address under a KV key or use `env`",
        _ => return None,
    })
}
