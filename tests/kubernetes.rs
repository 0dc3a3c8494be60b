//! deploy/kubernetes/ against the Kubernetes API's types (k8s-openapi, API 1.33), so that the
//! manifests do not rot with no cluster to apply them to: every YAML document deserializes
//! into its kind's typed struct, and that struct serialized again equals the document (serde
//! skips fields it does not know, so a misspelled or unknown field shows up as a difference).
//! Then what ties the manifests together, and to the binaries: the flags they pass exist, the
//! two containers share the control socket, the names they refer to are defined.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, Service};
use k8s_openapi::api::networking::v1::Ingress;
use serde::Deserialize;
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// Every document of every YAML file: (file, JSON value).
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir().display());
    let mut documents = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for document in serde_norway::Deserializer::from_str(&text) {
            let value = Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{name}: not YAML a JSON value can hold: {e}"));
            if !value.is_null() {
                documents.push((name.clone(), value));
            }
        }
    }
    documents
}

/// Where `a` and `b` differ (JSON pointers), at most a few.
fn differences(a: &Value, b: &Value, at: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let here = format!("{at}/{key}");
                match (x.get(key), y.get(key)) {
                    (Some(p), Some(q)) => differences(p, q, &here, out),
                    (Some(p), None) => out.push(format!("{here}: {p} is not a field of the API")),
                    (None, Some(q)) => out.push(format!("{here}: {q} added by the API types")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                differences(p, q, &format!("{at}/{i}"), out);
            }
        }
        _ if a == b => {}
        _ => out.push(format!(
            "{at}: {a} in the file, {b} as the API types have it"
        )),
    }
}

/// Deserializes `value` as `T` and checks that nothing was lost or changed on the way.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(file: &str, value: &Value) -> T {
    let typed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{file}: not a valid {}: {e}", std::any::type_name::<T>()));
    let again = serde_json::to_value(&typed).unwrap();
    let mut out = Vec::new();
    differences(value, &again, "", &mut out);
    assert!(
        out.is_empty(),
        "{file}: {} does not hold the document as written:\n{}",
        std::any::type_name::<T>(),
        out.join("\n")
    );
    typed
}

/// The typed manifests, by kind and name.
#[derive(Default)]
struct Manifests {
    daemonsets: BTreeMap<String, DaemonSet>,
    services: BTreeMap<String, Service>,
    ingresses: BTreeMap<String, Ingress>,
    configmaps: BTreeMap<String, ConfigMap>,
    namespaces: BTreeMap<String, Namespace>,
}

fn manifests() -> Manifests {
    let mut m = Manifests::default();
    for (file, value) in documents() {
        let api_version = value["apiVersion"].as_str().unwrap_or_default().to_owned();
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: a {kind} without metadata.name"))
            .to_owned();
        match (api_version.as_str(), kind.as_str()) {
            ("apps/v1", "DaemonSet") => {
                m.daemonsets.insert(name, typed(&file, &value));
            }
            ("v1", "Service") => {
                m.services.insert(name, typed(&file, &value));
            }
            ("networking.k8s.io/v1", "Ingress") => {
                m.ingresses.insert(name, typed(&file, &value));
            }
            ("v1", "ConfigMap") => {
                m.configmaps.insert(name, typed(&file, &value));
            }
            ("v1", "Namespace") => {
                m.namespaces.insert(name, typed(&file, &value));
            }
            other => panic!("{file}: {other:?} is not a kind this test checks: add it"),
        }
    }
    m
}

/// The pod's container `name`, an init container (a sidecar) or not.
fn container<'a>(set: &'a DaemonSet, name: &str) -> &'a Container {
    let pod = set.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    pod.containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

#[test]
fn manifests_are_kubernetes_objects_that_fit_together() {
    let m = manifests();
    let set = &m.daemonsets["nexus-node"];
    let namespace = set.metadata.namespace.as_deref().unwrap();
    assert!(m.namespaces.contains_key(namespace));
    let pod = set.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    let backend = container(set, "backend");
    let node = container(set, "node");
    // The backend is a native sidecar: it outlives the node's drain.
    assert!(
        pod.init_containers
            .iter()
            .flatten()
            .any(|c| c.name == "backend" && c.restart_policy.as_deref() == Some("Always"))
    );
    assert!(pod.containers.iter().any(|c| c.name == "node"));
    let backend_command = backend.command.clone().unwrap();
    let node_command = node.command.clone().unwrap();

    // The flags they pass are the binaries' flags.
    assert_eq!(backend_command[0], "nexus-backend");
    assert_eq!(&node_command[..2], ["nexus-vmm", "serve"]);
    common::assert_backend_and_node_flags(&backend_command, &node_command);

    // The node reaches the backend's control socket through a volume both mount.
    let socket = Path::new(common::arg(&backend_command, "--listen"));
    assert_eq!(
        common::arg(&node_command, "--backend"),
        socket.to_str().unwrap()
    );
    let mount_of = |c: &Container, path: &Path| {
        c.volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .filter(|v| path.starts_with(&v.mount_path))
            .max_by_key(|v| v.mount_path.len())
            .map(|v| v.name.clone())
            .unwrap_or_else(|| panic!("{} does not mount {}", c.name, path.display()))
    };
    let shared = mount_of(backend, socket);
    assert_eq!(mount_of(node, socket), shared);
    let volumes = pod.volumes.as_ref().unwrap();
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    assert!(volume(&shared).empty_dir.is_some() || volume(&shared).host_path.is_some());

    // /dev/kvm from the host, into a privileged node container.
    let kvm = mount_of(node, Path::new("/dev/kvm"));
    let kvm = volume(&kvm).host_path.as_ref().unwrap();
    assert_eq!(
        (kvm.path.as_str(), kvm.type_.as_deref()),
        ("/dev/kvm", Some("CharDevice"))
    );
    assert_eq!(
        node.security_context.as_ref().unwrap().privileged,
        Some(true)
    );

    // The functions directory is the ConfigMap, and each of its files a function file.
    let functions = mount_of(node, Path::new(common::arg(&node_command, "--functions")));
    let config_map = volume(&functions).config_map.as_ref().unwrap();
    let functions = &m.configmaps[config_map.name.as_str()];
    let data = functions.data.as_ref().unwrap();
    assert!(!data.is_empty());
    for (file, text) in data {
        assert!(file.ends_with(".toml"), "{file}");
        let toml: toml::Table = toml::from_str(text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let guest = toml["guest"].as_str().unwrap();
        assert!(
            nexus::guests::BUNDLED.contains(&guest),
            "{file}: {guest} is not a bundled guest"
        );
    }

    // Readiness is /readyz on the API's port; the pod outlives the drain.
    let probe = node
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.path.as_deref(), Some("/readyz"));
    let port = node.ports.as_ref().unwrap().first().unwrap();
    let listen: std::net::SocketAddr = common::arg(&node_command, "--listen").parse().unwrap();
    assert_eq!(port.container_port, i32::from(listen.port()));
    let drain = common::arg(&node_command, "--drain-timeout");
    let drain: i64 = drain.strip_suffix('s').unwrap().parse().unwrap();
    assert!(pod.termination_grace_period_seconds.unwrap() > drain);

    // The Service selects the pods, by the port's name; the Ingress sends to it and hashes
    // on the variable the controller's snippet defines.
    let service = &m.services["nexus-node"];
    let spec = service.spec.as_ref().unwrap();
    let labels = set
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    for (k, v) in spec.selector.as_ref().unwrap() {
        assert_eq!(labels.get(k), Some(v), "the Service selects {k}={v}");
    }
    let service_port = &spec.ports.as_ref().unwrap()[0];
    assert_eq!(
        service_port.target_port,
        Some(
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                port.name.clone().unwrap()
            )
        )
    );
    let ingress = &m.ingresses["nexus"];
    let hash_by = &ingress.metadata.annotations.as_ref().unwrap()["nginx.ingress.kubernetes.io/upstream-hash-by"];
    let variable = hash_by.strip_prefix('$').unwrap();
    let snippet = &m.configmaps["ingress-nginx-controller"]
        .data
        .as_ref()
        .unwrap()["http-snippet"];
    assert!(
        snippet.contains(&format!("map $uri ${variable} {{")),
        "{snippet}"
    );
    for rule in ingress.spec.as_ref().unwrap().rules.as_ref().unwrap() {
        for path in &rule.http.as_ref().unwrap().paths {
            let to = path.backend.service.as_ref().unwrap();
            assert_eq!(to.name, "nexus-node");
            assert_eq!(
                to.port.as_ref().unwrap().name.as_deref(),
                service_port.name.as_deref()
            );
        }
    }
}

#[test]
fn a_misspelled_field_is_caught() {
    // The check above would let a typo through if serde kept unknown fields: it does not.
    let (file, mut value) = documents()
        .into_iter()
        .find(|(_, v)| v["kind"] == "DaemonSet")
        .unwrap();
    let pod = &mut value["spec"]["template"]["spec"];
    let host_network = pod["hostNetwork"].take();
    pod.as_object_mut().unwrap().remove("hostNetwork");
    pod["hostNetwrok"] = host_network;
    let result = std::panic::catch_unwind(|| typed::<DaemonSet>(&file, &value));
    assert!(result.is_err(), "a misspelled field went through");
}
