//! The files in deploy/, read as text: every sidetrace config they embed passes the gateway's own
//! parser and validation, and the image, probes, volumes, grace periods and collector address
//! agree with those configs. Building the image and running the manifests in a cluster are not
//! exercised here (no container engine or cluster on the CI machine).

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

use sidetrace::Config;

/// Where the image keeps the spool (`SIDETRACE_DATA_DIR`, a declared volume).
const DATA_DIR: &str = "/var/lib/sidetrace";
/// Where the image looks for its config (`SIDETRACE_CONFIG` is `<this>/sidetrace.toml`).
const CONFIG_DIR: &str = "/etc/sidetrace";
const HELM_VALUES: &str = "helm/sidetrace/values.yaml";
const HELM_WORKLOAD: &str = "helm/sidetrace/templates/deployment.yaml";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// A file under deploy/.
fn read(rel: &str) -> String {
    let path = deploy_dir().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every workload manifest `deploy/kubernetes/*.yaml`, relative to deploy/, so that a new one is
/// checked too.
fn kubernetes_manifests() -> Vec<String> {
    let dir = deploy_dir().join("kubernetes");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        // kustomize's own file lists manifests, and the NetworkPolicy is not a workload: both
        // are checked apart.
        .filter(|n| !n.starts_with("kustomization.") && !n.starts_with("networkpolicy."))
        .map(|n| format!("kubernetes/{n}"))
        .collect();
    names.sort();
    for want in ["kubernetes/sidecar.yaml", "kubernetes/standalone.yaml"] {
        assert!(names.iter().any(|n| n == want), "{want} is missing");
    }
    names
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// The lines nested under `lines[at]`: those after it that are blank or indented deeper.
fn nested<'a>(lines: &[&'a str], at: usize) -> Vec<&'a str> {
    let parent = indent(lines[at]);
    lines[at + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || indent(l) > parent)
        .copied()
        .collect()
}

/// The text of every YAML block scalar `key: |` in `yaml`, with the block's indentation removed.
fn block_scalars(yaml: &str, key: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut blocks = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix(key) else {
            continue;
        };
        if !matches!(
            rest.strip_prefix(':').map(str::trim),
            Some("|" | "|-" | "|+")
        ) {
            continue;
        }
        let body = nested(&lines, i);
        let depth = body
            .iter()
            .find(|l| !l.trim().is_empty())
            .map_or(0, |l| indent(l));
        let mut text: String = body
            .iter()
            .map(|l| l.get(depth..).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        text.push('\n');
        blocks.push(text);
    }
    blocks
}

/// The value of the first `key: value` line nested under `lines[at]`, quotes removed.
fn nested_value(lines: &[&str], at: usize, key: &str) -> Option<String> {
    nested(lines, at).iter().find_map(|l| {
        let v = l.trim().strip_prefix(key)?.strip_prefix(':')?;
        Some(v.trim().trim_matches('"').to_string())
    })
}

/// The first top-level `key: value` in `yaml` (for values.yaml), quotes removed.
fn top_level_value(yaml: &str, key: &str) -> Option<String> {
    yaml.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        Some(v.trim().trim_matches('"').to_string())
    })
}

/// One sidetrace config found in deploy/, and where.
struct Embedded {
    origin: String,
    text: String,
    /// The environment the workload beside it gives the gateway from a Secret, with a stand-in
    /// value (the Secret itself is the operator's).
    env: Vec<(String, String)>,
}

/// The `SIDETRACE_*` variables a workload sets from a Secret that must exist (no
/// `optional: true`), each with a stand-in value.
fn secret_env(yaml: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut env = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = line.trim().strip_prefix("- name: SIDETRACE_") else {
            continue;
        };
        let body = nested(&lines, i);
        let from_secret = body.iter().any(|l| l.trim() == "secretKeyRef:");
        let optional = body.iter().any(|l| l.trim() == "optional: true");
        if from_secret && !optional {
            env.push((format!("SIDETRACE_{name}"), "from-the-secret".to_string()));
        }
    }
    env
}

/// The configs of the ConfigMaps in kubernetes/*.yaml (one each), the Helm chart's default
/// `config`, and the config baked into the image.
fn embedded_configs() -> Vec<Embedded> {
    let mut found = Vec::new();
    for rel in kubernetes_manifests() {
        let blocks = block_scalars(&read(&rel), "sidetrace.toml");
        assert_eq!(
            blocks.len(),
            1,
            "deploy/{rel}: expected one `sidetrace.toml: |` ConfigMap entry"
        );
        found.push(Embedded {
            origin: format!("deploy/{rel} (sidetrace.toml)"),
            text: blocks[0].clone(),
            env: secret_env(&read(&rel)),
        });
    }
    let values = block_scalars(&read(HELM_VALUES), "config");
    assert_eq!(
        values.len(),
        1,
        "deploy/{HELM_VALUES}: expected one `config: |`"
    );
    found.push(Embedded {
        origin: format!("deploy/{HELM_VALUES} (config)"),
        text: values[0].clone(),
        env: secret_env(&read(HELM_WORKLOAD)),
    });
    found.push(Embedded {
        origin: "deploy/container.toml".into(),
        text: read("container.toml"),
        env: Vec::new(),
    });
    found
}

/// Parses and validates a config exactly as `sidetrace serve` would (minus the environment).
fn check(e: &Embedded) -> Result<Config, String> {
    // An extraction that lost the block would leave an empty (valid, all-defaults) file.
    if !e.text.lines().any(|l| l.starts_with("listen = ")) {
        return Err(format!(
            "{}: no top-level `listen = ...` line in the extracted config:\n{}",
            e.origin, e.text
        ));
    }
    let mut config = Config::from_toml(&e.text, &e.origin).map_err(|err| err.to_string())?;
    config
        .apply_env(e.env.iter().cloned())
        .map_err(|err| format!("{}: {err}", e.origin))?;
    // A token file is the operator's secret: checked with a stand-in at the same place.
    let stand_in = match &config.admin.token_file {
        Some(path) => {
            if !path.is_absolute() {
                return Err(format!("{}: admin.token_file must be absolute", e.origin));
            }
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("token");
            fs::write(&file, "from-the-secret\n").unwrap();
            config.admin.token_file = Some(file);
            Some(dir)
        }
        None => None,
    };
    sidetrace::server::check_config(&config).map_err(|err| format!("{}: {err}", e.origin))?;
    if stand_in.is_some() {
        config.admin.token_file = None;
        config.admin.token = sidetrace::config::Secret::new("from-the-secret");
    }
    Ok(config)
}

fn configs() -> Vec<(String, Config)> {
    embedded_configs()
        .iter()
        .map(|e| {
            (
                e.origin.clone(),
                check(e).unwrap_or_else(|err| panic!("{err}")),
            )
        })
        .collect()
}

/// The Dockerfile's lines without comments.
fn dockerfile_lines() -> Vec<String> {
    read("Dockerfile")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_sidetrace_config_embedded_in_deploy_parses_and_validates() {
    let configs = configs();
    assert_eq!(configs.len(), kubernetes_manifests().len() + 2);
    for (origin, config) in &configs {
        // The kubelet probes the pod IP: an admin port on 127.0.0.1 would fail every probe.
        let admin = config.admin_addr().unwrap();
        assert!(
            admin.ip().is_unspecified(),
            "{origin}: admin_listen {admin} is unreachable for probes"
        );
        // So it needs a token, from a Secret; never the override.
        assert!(
            config.admin.resolved_token().unwrap().is_some()
                && !config.admin.allow_unauthenticated_admin,
            "{origin}: the admin port has no token from a Secret"
        );
    }
    let template = read("helm/sidetrace/templates/configmap.yaml");
    assert!(
        template.contains("sidetrace.toml: |") && template.contains(".Values.config"),
        "the chart's ConfigMap no longer renders .Values.config:\n{template}"
    );
}

#[test]
fn a_typo_in_an_embedded_config_fails_the_check() {
    let manifest = "data:\n  sidetrace.toml: |\n    listen = \"0.0.0.0:4000\"\n\n    [export]\n    queue_span = 8192\nkind: ConfigMap\n";
    let blocks = block_scalars(manifest, "sidetrace.toml");
    assert_eq!(
        blocks,
        ["listen = \"0.0.0.0:4000\"\n\n[export]\nqueue_span = 8192\n"]
    );
    let err = check(&Embedded {
        origin: "typo.yaml".into(),
        text: blocks[0].clone(),
        env: Vec::new(),
    })
    .expect_err("an unknown key must be refused");
    assert!(
        err.contains("typo.yaml") && err.contains("queue_span"),
        "{err}"
    );
    let bad_value = Embedded {
        origin: "bad.yaml".into(),
        text: "listen = \"0.0.0.0:4000\"\nadmin_listen = \"localhost\"\n".into(),
        env: Vec::new(),
    };
    assert!(check(&bad_value).unwrap_err().contains("admin_listen"));
    // An admin port on every interface with no token from a Secret is refused.
    let open_admin = "listen = \"0.0.0.0:4000\"\nadmin_listen = \"0.0.0.0:4001\"\n";
    let manifest = "env:\n  - name: SIDETRACE_ADMIN_TOKEN\n    valueFrom:\n      secretKeyRef:\n        name: s\n        key: admin-token\n        optional: true\n";
    let err = check(&Embedded {
        origin: "open.yaml".into(),
        text: open_admin.into(),
        env: secret_env(manifest),
    })
    .expect_err("an optional Secret may be missing: the port would be open");
    assert!(err.contains("no token"), "{err}");
    check(&Embedded {
        origin: "closed.yaml".into(),
        text: open_admin.into(),
        env: secret_env(&manifest.replace("        optional: true\n", "")),
    })
    .unwrap();
}

#[test]
fn the_image_exposes_exactly_the_ports_the_configs_listen_on() {
    let exposed: BTreeSet<u16> = dockerfile_lines()
        .iter()
        .filter_map(|l| l.trim().strip_prefix("EXPOSE "))
        .flat_map(|ports| ports.split_whitespace())
        .map(|p| p.trim_end_matches("/tcp").parse().unwrap())
        .collect();
    assert_eq!(exposed, BTreeSet::from([4000, 4001]));
    for (origin, config) in configs() {
        let listening = BTreeSet::from([
            config.listen_addr().unwrap().port(),
            config.admin_addr().unwrap().port(),
        ]);
        assert_eq!(
            listening, exposed,
            "{origin} listens on other ports than the image exposes"
        );
    }
}

#[test]
fn every_probe_in_the_manifests_asks_for_healthz_or_readyz() {
    let mut files = kubernetes_manifests();
    files.push(HELM_WORKLOAD.into());
    for rel in files {
        let text = read(&rel);
        let lines: Vec<&str> = text.lines().collect();
        let mut kinds = BTreeSet::new();
        for (i, line) in lines.iter().enumerate() {
            let Some(kind) = ["readinessProbe:", "livenessProbe:", "startupProbe:"]
                .into_iter()
                .find(|k| line.trim() == *k)
            else {
                continue;
            };
            kinds.insert(kind);
            let path = nested_value(&lines, i, "path");
            assert!(
                matches!(path.as_deref(), Some("/healthz" | "/readyz")),
                "deploy/{rel} line {}: {kind} asks for {path:?}, not /healthz or /readyz",
                i + 1
            );
        }
        for want in ["readinessProbe:", "livenessProbe:"] {
            assert!(kinds.contains(want), "deploy/{rel} has no {want}");
        }
    }
}

#[test]
fn the_image_builds_with_the_pinned_rust_toolchain() {
    let toolchain =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rust-toolchain.toml")).unwrap();
    let channel = toolchain
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel"))
        .and_then(|v| v.split('"').nth(1))
        .expect("rust-toolchain.toml names a channel");
    let lines = dockerfile_lines();
    let tag = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("FROM rust:"))
        .and_then(|t| t.split_whitespace().next())
        .expect("the builder stage is FROM rust:<version>-<debian>");
    let version = tag.split('-').next().unwrap();
    assert!(
        channel == version || channel.starts_with(&format!("{version}.")),
        "Dockerfile builds with rust:{tag}, rust-toolchain.toml pins {channel}"
    );
}

#[test]
fn every_pod_mounts_its_config_and_spool_where_the_image_looks_for_them() {
    let lines = dockerfile_lines();
    let docker = lines.join("\n");
    assert!(
        docker.contains(&format!("SIDETRACE_DATA_DIR={DATA_DIR}")),
        "the image no longer sets SIDETRACE_DATA_DIR={DATA_DIR}"
    );
    assert!(
        docker.contains(&format!("SIDETRACE_CONFIG={CONFIG_DIR}/sidetrace.toml")),
        "the image no longer reads {CONFIG_DIR}/sidetrace.toml"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("VOLUME") && l.contains(DATA_DIR)),
        "the image no longer declares the volume {DATA_DIR}"
    );
    // The environment variable overrides data_dir: a config naming another one would mislead.
    for (origin, config) in configs() {
        assert!(
            config.data_dir.is_empty() || config.data_dir == DATA_DIR,
            "{origin}: data_dir {:?} is overridden by SIDETRACE_DATA_DIR={DATA_DIR}",
            config.data_dir
        );
    }
    // The root filesystem is read-only: without a volume on the data dir the spool degrades to
    // memory, and without the ConfigMap the image's own defaults run.
    let mut files = kubernetes_manifests();
    files.push(HELM_WORKLOAD.into());
    for rel in files {
        let text = read(&rel);
        for dir in [DATA_DIR, CONFIG_DIR] {
            assert!(
                text.lines()
                    .any(|l| l.trim() == format!("mountPath: {dir}")),
                "deploy/{rel} mounts nothing on {dir}"
            );
        }
    }
}

#[test]
fn termination_grace_periods_cover_the_drain_and_the_span_flush() {
    let budget_ms = |config: &Config| config.shutdown_grace_ms + config.export.shutdown_export_ms;
    for rel in kubernetes_manifests() {
        let text = read(&rel);
        let lines: Vec<&str> = text.lines().collect();
        let config = check(&Embedded {
            origin: rel.clone(),
            text: block_scalars(&text, "sidetrace.toml").remove(0),
            env: secret_env(&text),
        })
        .unwrap();
        let grace_s: u64 = lines
            .iter()
            .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
            .unwrap_or_else(|| panic!("deploy/{rel} sets no terminationGracePeriodSeconds"))
            .trim()
            .parse()
            .unwrap();
        let pre_stop_s: u64 = lines
            .iter()
            .position(|l| l.trim() == "preStop:")
            .and_then(|at| nested_value(&lines, at, "seconds"))
            .map_or(0, |s| s.parse().unwrap());
        assert!(
            grace_s * 1000 > pre_stop_s * 1000 + budget_ms(&config),
            "deploy/{rel}: terminationGracePeriodSeconds {grace_s} does not cover preStop {pre_stop_s} s + {} ms",
            budget_ms(&config)
        );
    }
    let values = read(HELM_VALUES);
    let config = check(&Embedded {
        origin: HELM_VALUES.into(),
        text: block_scalars(&values, "config").remove(0),
        env: secret_env(&read(HELM_WORKLOAD)),
    })
    .unwrap();
    let number = |key: &str| -> u64 {
        top_level_value(&values, key)
            .unwrap_or_else(|| panic!("{HELM_VALUES} has no {key}"))
            .parse()
            .unwrap()
    };
    let (grace_s, pre_stop_s) = (
        number("terminationGracePeriodSeconds"),
        number("preStopSleepSeconds"),
    );
    assert!(
        grace_s * 1000 > pre_stop_s * 1000 + budget_ms(&config),
        "{HELM_VALUES}: terminationGracePeriodSeconds {grace_s} does not cover preStopSleepSeconds {pre_stop_s} + {} ms",
        budget_ms(&config)
    );
}

#[test]
fn the_gateways_export_to_the_collector_service_that_collector_yaml_defines() {
    let mut endpoints = Vec::new();
    for rel in kubernetes_manifests() {
        let text = read(&rel);
        let lines: Vec<&str> = text.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.trim() == "- name: OTEL_EXPORTER_OTLP_ENDPOINT")
            .unwrap_or_else(|| panic!("deploy/{rel} sets no OTEL_EXPORTER_OTLP_ENDPOINT"));
        let value = lines[at + 1]
            .trim()
            .strip_prefix("value:")
            .unwrap_or_else(|| panic!("deploy/{rel} line {}: expected `value:`", at + 2));
        endpoints.push((rel, value.trim().trim_matches('"').to_string()));
    }
    let values = read(HELM_VALUES);
    let lines: Vec<&str> = values.lines().collect();
    let otlp = lines.iter().position(|l| *l == "otlp:").unwrap();
    endpoints.push((
        HELM_VALUES.into(),
        nested_value(&lines, otlp, "endpoint").unwrap(),
    ));

    let collector = read("otel-collector/collector.yaml");
    for (rel, endpoint) in endpoints {
        let host_port = endpoint.strip_prefix("http://").unwrap_or_else(|| {
            panic!("{rel}: {endpoint} is not http:// (gRPC over TLS is not built)")
        });
        let (host, port) = host_port.trim_end_matches('/').split_once(':').unwrap();
        let (service, namespace) = host
            .strip_suffix(".svc")
            .or_else(|| host.strip_suffix(".svc.cluster.local"))
            .and_then(|h| h.split_once('.'))
            .unwrap_or_else(|| panic!("{rel}: {host} is not <service>.<namespace>.svc"));
        let defined = collector.split("\n---\n").any(|doc| {
            let doc_lines: Vec<&str> = doc.lines().map(str::trim).collect();
            doc_lines.contains(&"kind: Service")
                && doc_lines.contains(&format!("name: {service}").as_str())
                && doc_lines.contains(&format!("namespace: {namespace}").as_str())
                && doc_lines.contains(&format!("port: {port}").as_str())
        });
        assert!(
            defined,
            "{rel} exports to {endpoint}, but collector.yaml defines no Service {service} in {namespace} with port {port}"
        );
    }
}

/// The `- item` lines under a top-level `key:` of a kustomization.
fn list_under(yaml: &str, key: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let Some(at) = lines.iter().position(|l| *l == format!("{key}:")) else {
        return Vec::new();
    };
    lines[at + 1..]
        .iter()
        .take_while(|l| l.starts_with("  ") || l.trim().is_empty())
        .filter_map(|l| l.trim().strip_prefix("- "))
        .map(|v| v.trim().to_string())
        .collect()
}

#[test]
fn the_kustomizations_name_files_that_exist_and_the_image_the_manifests_use() {
    for (kustomization, dir) in [
        ("kustomization.yaml", ""),
        ("kubernetes/kustomization.yaml", "kubernetes/"),
    ] {
        let text = read(kustomization);
        let resources = list_under(&text, "resources");
        assert!(!resources.is_empty(), "{kustomization} lists no resources");
        for r in resources {
            let path = deploy_dir().join(format!("{dir}{r}"));
            assert!(path.exists(), "{kustomization}: {r} does not exist");
        }
    }
    // Every manifest of the shared gateway is in its kustomization; the sidecar example is not.
    let gateway = read("kubernetes/kustomization.yaml");
    assert_eq!(
        list_under(&gateway, "resources"),
        ["standalone.yaml", "networkpolicy.yaml"]
    );
    let image = read("kubernetes/standalone.yaml")
        .lines()
        .find_map(|l| l.trim().strip_prefix("image: ").map(str::to_string))
        .unwrap();
    let (name, tag) = image.rsplit_once(':').unwrap();
    assert!(gateway.contains(&format!("- name: {name}\n")), "{gateway}");
    assert!(gateway.contains(&format!("newTag: \"{tag}\"")), "{gateway}");
    // The namespaces it creates are the ones the gateway and the collector live in.
    let namespaces = read("namespaces.yaml");
    for ns in ["sidetrace", "observability"] {
        assert!(namespaces.contains(&format!("  name: {ns}\n")), "{ns}");
    }
    assert!(gateway.contains("namespace: sidetrace\n"));
}

/// `kubectl kustomize deploy/` when a kubectl with kustomize v4 or later is installed (the
/// machine image has one; Debian's kubernetes-client 1.20 bundles kustomize v2, which cannot
/// list a directory as a resource): every object lands in the namespace the others expect.
#[test]
fn kubectl_kustomize_builds_deploy_with_every_object_in_its_namespace() {
    let version = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output();
    let modern = match &version {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            text.contains("Kustomize Version: v4") || text.contains("Kustomize Version: v5")
        }
        Err(_) => false,
    };
    if !modern {
        eprintln!(
            "SKIPPED: no kubectl with kustomize v4 or later; the text checks above still ran"
        );
        return;
    }
    // A copy of deploy/ with the admin token its Secret is generated from (git ignores it).
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&deploy_dir(), copy.path());
    std::fs::create_dir_all(copy.path().join("kubernetes/secrets")).unwrap();
    std::fs::write(
        copy.path().join("kubernetes/secrets/admin-token"),
        "a-test-token",
    )
    .unwrap();
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(copy.path())
        .output()
        .unwrap();
    let built = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // (kind, name, namespace) of every object.
    let mut objects = Vec::new();
    for doc in built.split("\n---\n") {
        let lines: Vec<&str> = doc.lines().collect();
        let kind = top_level_value(doc, "kind").unwrap_or_default();
        let meta = lines.iter().position(|l| *l == "metadata:").unwrap();
        let name = nested_value(&lines, meta, "name").unwrap_or_default();
        let namespace = nested_value(&lines, meta, "namespace").unwrap_or_default();
        objects.push((kind, name, namespace));
    }
    let has = |kind: &str, name: &str, ns: &str| {
        objects
            .iter()
            .any(|(k, n, s)| k == kind && n == name && s == ns)
    };
    assert!(has("Namespace", "sidetrace", ""), "{objects:?}");
    assert!(has("Namespace", "observability", ""), "{objects:?}");
    for kind in [
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ] {
        assert!(has(kind, "sidetrace", "sidetrace"), "{kind}: {objects:?}");
    }
    assert!(has("Service", "otelcol-lb", "observability"), "{objects:?}");
    assert!(
        objects
            .iter()
            .any(|(k, n, s)| k == "Secret" && n.starts_with("sidetrace-") && s == "sidetrace"),
        "the admin token's Secret: {objects:?}"
    );
    assert!(
        objects
            .iter()
            .any(|(k, _, s)| k == "NetworkPolicy" && s == "sidetrace"),
        "{objects:?}"
    );
    assert!(
        objects
            .iter()
            .filter(|(k, _, _)| k != "Namespace")
            .all(|(_, _, ns)| ns == "sidetrace" || ns == "observability"),
        "{objects:?}"
    );
    assert!(built.contains("image: registry.example.com/sidetrace:0.1.0"));
}

/// The name and key of the Secret an env var `name` reads (`secretKeyRef`), in `yaml`.
fn secret_ref(yaml: &str, name: &str) -> Option<(String, String)> {
    let lines: Vec<&str> = yaml.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim() == format!("- name: {name}"))?;
    let secret = nested_value(&lines, at, "name")?;
    let key = nested_value(&lines, at, "key")?;
    Some((secret, key))
}

#[test]
fn every_workload_takes_the_admin_token_from_the_secret_the_kustomization_makes() {
    let kustomization = read("kubernetes/kustomization.yaml");
    let lines: Vec<&str> = kustomization.lines().collect();
    // Every resource it lists exists, the manifest and the NetworkPolicy among them.
    let resources_at = lines.iter().position(|l| *l == "resources:").unwrap();
    let resources: Vec<String> = nested(&lines, resources_at)
        .iter()
        .filter_map(|l| l.trim().strip_prefix("- ").map(str::to_string))
        .collect();
    assert!(
        resources.contains(&"standalone.yaml".to_string())
            && resources.contains(&"networkpolicy.yaml".to_string()),
        "{resources:?}"
    );
    for r in &resources {
        assert!(
            deploy_dir().join("kubernetes").join(r).is_file(),
            "kustomization lists {r}, which is missing"
        );
    }
    let generated = nested_value(
        &lines,
        lines.iter().position(|l| *l == "secretGenerator:").unwrap(),
        "- name",
    )
    .expect("a secretGenerator");
    assert!(
        kustomization.contains("- admin-token="),
        "the generated Secret has no admin-token:\n{kustomization}"
    );
    for rel in kubernetes_manifests() {
        let (secret, key) = secret_ref(&read(&rel), "SIDETRACE_ADMIN_TOKEN")
            .unwrap_or_else(|| panic!("deploy/{rel} does not set SIDETRACE_ADMIN_TOKEN"));
        assert_eq!(
            (secret.as_str(), key.as_str()),
            (generated.as_str(), "admin-token"),
            "{rel}"
        );
    }
    let (secret, key) = secret_ref(&read(HELM_WORKLOAD), "SIDETRACE_ADMIN_TOKEN")
        .expect("the chart does not set SIDETRACE_ADMIN_TOKEN");
    assert_eq!(secret, "{{ include \"sidetrace.secretName\" . }}");
    assert_eq!(key, "admin-token");
}

#[test]
fn the_network_policies_open_exactly_the_images_ports_to_the_gateways_pods() {
    let policy = read("kubernetes/networkpolicy.yaml");
    let lines: Vec<&str> = policy.lines().collect();
    let ingress_at = lines.iter().position(|l| l.trim() == "ingress:").unwrap();
    let ports: BTreeSet<u16> = nested(&lines, ingress_at)
        .iter()
        .filter_map(|l| l.trim().strip_prefix("- port: "))
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(ports, BTreeSet::from([4000, 4001]));
    // It selects the standalone Deployment's pods.
    let selector_at = lines
        .iter()
        .position(|l| l.trim() == "podSelector:")
        .unwrap();
    let label = nested_value(&lines, selector_at, "app.kubernetes.io/name").unwrap();
    let standalone = read("kubernetes/standalone.yaml");
    assert!(
        standalone.contains(&format!("app.kubernetes.io/name: {label}")),
        "the NetworkPolicy selects {label}, which no standalone pod carries"
    );
    let chart = read("helm/sidetrace/templates/networkpolicy.yaml");
    for port in ["- port: 4000", "- port: 4001"] {
        assert!(
            chart.contains(port),
            "the chart's NetworkPolicy lacks {port}"
        );
    }
    assert!(chart.contains(".Values.networkPolicy.enabled"));
    assert!(read(HELM_VALUES).contains("networkPolicy:"));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
