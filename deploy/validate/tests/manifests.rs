//! The manifests in deploy/ against the Kubernetes OpenAPI schemas.
//!
//! The schemas are k8s-openapi's JSON Schema rendering of the Kubernetes v1.33 OpenAPI
//! spec (its `schemars` feature), made strict the way kubeconform's `-strict` is: an object
//! with declared properties accepts no others, so a misspelt field (`hostPid`) fails
//! instead of being silently dropped by the API server. `apiVersion` and `kind` must be the
//! type's own. No network: nothing is fetched.

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::Resource;
use serde_json::{json, Value};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn load(name: &str) -> Value {
    let path = deploy_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Adds `additionalProperties: false` to every object schema that lists its properties.
fn strict(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (_, child) in map.iter_mut() {
                strict(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strict),
        _ => {}
    }
}

/// The strict schema of a Kubernetes type, pinned to its apiVersion and kind.
fn schema_of<T: schemars::JsonSchema + Resource>() -> jsonschema::Validator {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    strict(&mut schema);
    let props = schema["properties"]
        .as_object_mut()
        .expect("a resource has properties");
    props.insert("apiVersion".into(), json!({"const": T::API_VERSION}));
    props.insert("kind".into(), json!({"const": T::KIND}));
    match schema.get_mut("required").and_then(Value::as_array_mut) {
        Some(required) => required.extend([json!("apiVersion"), json!("kind")]),
        None => schema["required"] = json!(["apiVersion", "kind"]),
    }
    jsonschema::validator_for(&schema).expect("k8s-openapi's schema compiles")
}

fn errors(validator: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn assert_valid(validator: &jsonschema::Validator, name: &str) -> Value {
    let doc = load(name);
    let errs = errors(validator, &doc);
    assert!(errs.is_empty(), "{name}:\n{}", errs.join("\n"));
    doc
}

#[test]
fn every_manifest_matches_its_kubernetes_schema() {
    assert_valid(&schema_of::<Namespace>(), "namespace.yaml");
    assert_valid(&schema_of::<RuntimeClass>(), "runtimeclass.yaml");
    assert_valid(&schema_of::<DaemonSet>(), "daemonset.yaml");
}

/// The validator is not vacuous: typos, wrong types, missing required fields and a wrong
/// apiVersion are caught.
#[test]
fn the_schemas_reject_broken_manifests() {
    let ds = schema_of::<DaemonSet>();
    let good = load("daemonset.yaml");
    let mut typo = good.clone();
    typo["spec"]["template"]["spec"]["hostPid"] = json!(true);
    let mut wrong_type = good.clone();
    wrong_type["spec"]["template"]["spec"]["hostPID"] = json!("yes");
    let mut no_image_name = good.clone();
    no_image_name["spec"]["template"]["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("name");
    let mut old_api = good.clone();
    old_api["apiVersion"] = json!("extensions/v1beta1");
    for (what, doc) in [
        ("typo", typo),
        ("wrong type", wrong_type),
        ("missing name", no_image_name),
        ("old apiVersion", old_api),
    ] {
        assert!(!errors(&ds, &doc).is_empty(), "{what} passed validation");
    }
    let rc = schema_of::<RuntimeClass>();
    let mut no_handler = load("runtimeclass.yaml");
    no_handler.as_object_mut().unwrap().remove("handler");
    assert!(!errors(&rc, &no_handler).is_empty());
}

#[test]
fn the_runtime_class_routes_to_the_sturdy_handler_on_sturdy_nodes() {
    let rc = load("runtimeclass.yaml");
    assert_eq!(rc["metadata"]["name"], "sturdy");
    // `sturdyctl install` adds the CRI runtime under this name.
    assert_eq!(rc["handler"], "sturdy");
    let ds = load("daemonset.yaml");
    let node_selector = &ds["spec"]["template"]["spec"]["nodeSelector"];
    for (k, v) in rc["scheduling"]["nodeSelector"].as_object().unwrap() {
        assert_eq!(
            &node_selector[k], v,
            "pods may land where the DaemonSet does not run"
        );
    }
}

/// Nothing talks to the API server: no token, no ServiceAccount, no RBAC objects.
#[test]
fn the_daemonset_asks_for_no_api_access() {
    let ds = load("daemonset.yaml");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert!(pod.get("serviceAccountName").is_none());
    let kinds: Vec<String> = kustomization()["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            load(r.as_str().unwrap())["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["Namespace", "RuntimeClass", "DaemonSet"]);
    for c in pod["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(pod["containers"].as_array().unwrap())
    {
        assert!(
            c["resources"]["limits"]["memory"].is_string(),
            "{} has no memory limit",
            c["name"]
        );
        assert_eq!(
            c["image"], "sturdy:0.1.0",
            "{}: image not the kustomize-managed one",
            c["name"]
        );
    }
}

fn kustomization() -> Value {
    load("kustomization.yaml")
}

/// Kustomize has no OpenAPI schema in Kubernetes; this is the subset of its Kustomization
/// type deploy/ uses (field names from kustomize's api/types), strict like the rest.
#[test]
fn the_kustomization_lists_every_manifest_and_only_known_fields() {
    let mut schema = json!({
        "type": "object",
        "required": ["apiVersion", "kind", "resources"],
        "properties": {
            "apiVersion": {"const": "kustomize.config.k8s.io/v1beta1"},
            "kind": {"const": "Kustomization"},
            "namespace": {"type": "string"},
            "resources": {"type": "array", "items": {"type": "string"}, "uniqueItems": true},
            "labels": {"type": "array", "items": {
                "type": "object",
                "properties": {
                    "pairs": {"type": "object", "additionalProperties": {"type": "string"}},
                    "includeSelectors": {"type": "boolean"},
                    "includeTemplates": {"type": "boolean"}
                }
            }},
            "images": {"type": "array", "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "newName": {"type": "string"},
                    "newTag": {"type": "string"},
                    "digest": {"type": "string"}
                }
            }}
        }
    });
    strict(&mut schema);
    let validator = jsonschema::validator_for(&schema).unwrap();
    let k = kustomization();
    let errs = errors(&validator, &k);
    assert!(errs.is_empty(), "{}", errs.join("\n"));
    let mut listed: Vec<String> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    listed.sort();
    let mut present: Vec<String> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    present.sort();
    assert_eq!(
        listed, present,
        "kustomization.yaml and deploy/*.yaml disagree"
    );
    assert_eq!(k["images"][0]["name"], "sturdy");
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod[list]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {list} {name}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Security review 2026-12, L17: no container is privileged; each drops every capability
/// and adds back only what it was measured to need, under the runtime's seccomp profile.
/// The installer restarts containerd only when asked, and checks the host directories it
/// writes to through their host paths.
#[test]
fn the_daemonset_grants_only_the_capabilities_it_needs() {
    let ds = load("daemonset.yaml");
    let pod = &ds["spec"]["template"]["spec"];
    for (list, name, caps) in [
        (
            "initContainers",
            "install",
            vec!["CHOWN", "DAC_OVERRIDE", "FOWNER"],
        ),
        (
            "containers",
            "watchdog",
            vec![
                "SYS_ADMIN",
                "SYS_CHROOT",
                "SYS_PTRACE",
                "KILL",
                "DAC_READ_SEARCH",
            ],
        ),
    ] {
        let sc = &container(pod, list, name)["securityContext"];
        assert_eq!(sc["privileged"], false, "{name}");
        assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{name}");
        assert_eq!(strings(&sc["capabilities"]["add"]), caps, "{name}");
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
    }
    let install = container(pod, "initContainers", "install");
    let restart = install["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "STURDY_RESTART_CONTAINERD")
        .expect("STURDY_RESTART_CONTAINERD");
    assert_eq!(restart["value"], "false", "restarting containerd is opt-in");
    let script = strings(&install["args"]).join("\n");
    assert!(
        script.contains("sturdyctl install --host-root /host --config /etc/containerd/config.toml --bin-dir /usr/local/bin"),
        "{script}"
    );
}
