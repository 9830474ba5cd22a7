//! The spec parser case by case: every error names file, line, column and field.

use super::locate::line_column;
use super::*;

const DNS: &str = r#"
[service.fleet-dns]
pattern = "stateless"
replicas = 1
max_replicas = 3
command = "dnsmasq --port={port}"
labels = { zone = "lan" }

[service.fleet-dns.resources]
cpu_cores = 0.5
memory_mib = 64

[job.train]
pattern = "gpu-singleton"
resources = { cpu_cores = 4, memory_mib = 16384, vram_mib = 20000 }

[node.forge]
level = 1
cpu_cores = 16
memory_mib = 65536
gpus = [{ vram_mib = 24576 }]
"#;

#[test]
fn a_valid_document_parses_whole() {
    let doc = parse_spec("fleet.toml", DNS).unwrap();
    assert_eq!(doc.workloads.len(), 2);
    let dns = &doc.workloads[0];
    assert_eq!(dns.name.as_str(), "fleet-dns");
    assert_eq!(dns.resources.cpu_millicores, 500);
    assert_eq!(dns.resources.memory_bytes, 64 * MIB);
    assert_eq!(dns.max_count(), 3);
    assert_eq!(dns.max_per_node, 1);
    let train = &doc.workloads[1];
    assert_eq!(train.kind, WorkloadKind::Job { parallelism: 1 });
    assert_eq!(doc.nodes[0].capacity.gpus[0].vram_bytes, 24576 * MIB);
    assert_eq!(doc.nodes[0].level, 1);
}

/// Each case: a document, then the exact `file:line:column: field: message` prefix expected.
fn check(text: &str, expect: &str) {
    let err = parse_spec("bad.toml", text).expect_err("must be refused");
    let shown = err.to_string();
    assert!(
        shown.starts_with(expect),
        "got:\n  {shown}\nwant prefix:\n  {expect}"
    );
}

#[test]
fn bad_specs_name_file_line_column_and_field() {
    check(
        "[service.a]\nresources = { cpu_cores = 1, memory_mib = 8 }\nreplicaz = 2\n",
        "bad.toml:3:1: service.a.replicaz: unknown field `replicaz`",
    );
    check(
        "[service.a]\nreplicas = \"two\"\nresources = { cpu_cores = 1, memory_mib = 8 }\n",
        "bad.toml:2:12: service.a.replicas: invalid type: string \"two\"",
    );
    check(
        "[service.a]\n[service.a.resources]\ncpu_cores = -1\nmemory_mib = 8\n",
        "bad.toml:3:13: service.a.resources.cpu_cores: must be more than 0",
    );
    check(
        "[service.a]\n[service.a.resources]\ncpu_cores = 1\nmemory_mib = 0\n",
        "bad.toml:4:14: service.a.resources.memory_mib: must be more than 0",
    );
    check(
        "[service.a]\npattern = \"gpu-magic\"\nresources = { cpu_cores = 1, memory_mib = 8 }\n",
        "bad.toml:2:11: service.a.pattern: unknown variant `gpu-magic`",
    );
    check(
        "[node.n1]\nlevel = 9\ncpu_cores = 4\nmemory_mib = 1024\n",
        "bad.toml:2:9: node.n1.level: level must be in 0..=7",
    );
    check(
        "[node.n1]\nlevel = -1\ncpu_cores = 4\nmemory_mib = 1024\n",
        "bad.toml:2:9: node.n1.level: level must be in 0..=7",
    );
    check(
        "[service.a]\npattern = \"gpu-inference\"\nresources = { cpu_cores = 1, memory_mib = 8 }\n",
        "bad.toml:1:1: service.a.resources.vram_mib: a gpu-inference workload must declare",
    );
    check(
        "[service.a]\nreplicas = 1\n",
        "bad.toml:1:1: service.a.resources: missing field `resources`",
    );
    check(
        "[service.a]\nresources = { cpu_cores = 1 }\n",
        "bad.toml:2:13: service.a.resources.memory_mib: missing field `memory_mib`",
    );
    check(
        "[service.a]\nreplicas = 3\nmax_replicas = 2\nresources = { cpu_cores = 1, memory_mib = 8 }\n",
        "bad.toml:3:16: service.a.max_replicas: must be at least replicas (3)",
    );
    check(
        "[service.Bad_Name]\nresources = { cpu_cores = 1, memory_mib = 8 }\n",
        "bad.toml:1:1: service.Bad_Name: invalid name",
    );
    check(
        "[service.a]\nresources = { cpu_cores = \"lots\", memory_mib = 8 }\n",
        "bad.toml:2:27: service.a.resources.cpu_cores: invalid type: string \"lots\"",
    );
    check(
        "[service.a]\nresources = { cpu_cores = 1, memory_mib = 8, disk = 3 }\n",
        "bad.toml:2:46: service.a.resources.disk: unknown field `disk`",
    );
    check(
        "[service.a]\nresources = { cpu_cores = 1, memory_mib = 8 }\nhealth = { kind = \"ping\" }\n",
        "bad.toml:3:19: service.a.health.kind: unknown check kind `ping`",
    );
    check(
        "[service.a]\nresources = { cpu_cores = 1, memory_mib = 8 }\nhealth = { kind = \"http\" }\n",
        "bad.toml:3:10: service.a.health.path: an http check needs a path",
    );
    check("[service.a\n", "bad.toml:1:11: ");
}

#[test]
fn line_and_column_count_characters() {
    assert_eq!(line_column("ab\ncé = 1", 6), (2, 3));
    assert_eq!(line_column("", 0), (1, 1));
}

/// The KV way in: a spec as JSON under its key, edited the way a writer of the bucket could;
/// each edit must be refused naming the field (or the name), and the valid one accepted.
#[test]
fn specs_from_the_kv_pass_the_same_rules() {
    let good = parse_spec("web.toml", "[service.web]\nreplicas = 2\ncommand = \"run\"\nresources = { cpu_cores = 1, memory_mib = 64 }\nhealth = { kind = \"tcp\" }\n")
        .unwrap()
        .workloads
        .remove(0);
    let json = serde_json::to_value(&good).unwrap();
    let bytes = |v: &serde_json::Value| serde_json::to_vec(v).unwrap();
    assert_eq!(
        decode_workload("kv specs/web", "web", &bytes(&json)).unwrap(),
        good
    );
    /// A case: its name, the edit, the field the refusal must name.
    type Edit = (&'static str, fn(&mut serde_json::Value), &'static str);
    let edits: [Edit; 9] = [
        (
            "replicas",
            |v| v["kind"]["replicas"] = 4294967295u64.into(),
            "replicas",
        ),
        (
            "max below replicas",
            |v| v["kind"]["max_replicas"] = 1.into(),
            "max_replicas",
        ),
        (
            "interval 0",
            |v| v["health"]["interval_ms"] = 0.into(),
            "health.interval_ms",
        ),
        (
            "no cpu",
            |v| v["resources"]["cpu_millicores"] = 0.into(),
            "resources.cpu_cores",
        ),
        ("per node", |v| v["max_per_node"] = 0.into(), "max_per_node"),
        ("empty command", |v| v["command"] = " ".into(), "command"),
        (
            "agent's env",
            |v| v["env"] = serde_json::json!({"QS_PORT": "1"}),
            "env",
        ),
        ("other key", |v| v["name"] = "api".into(), "name"),
        ("garbage", |v| *v = serde_json::json!({"name": 7}), ""),
    ];
    for (case, edit, field) in edits {
        let mut v = json.clone();
        edit(&mut v);
        let e = decode_workload("kv specs/web", "web", &bytes(&v)).expect_err(case);
        assert_eq!(e.field, field, "{case}: {e}");
        assert!(e.to_string().starts_with("kv specs/web:"), "{case}: {e}");
    }
    let huge = vec![b' '; MAX_SPEC_BYTES + 1];
    assert!(decode_workload("kv specs/web", "web", &huge).is_err());
}

const LLAMA: &str = r#"
[model.llama]
discipline = "parallel"
max_concurrency = 8
inertia_bias_ms = 5000
load_ms = 20000
health = { kind = "http", path = "/health" }
warm_path = "/v1/models"

[[model.llama.tier]]
name = "70b"
vram_mib = 40960
command = "vllm serve llama-70b --port {port}"

[[model.llama.tier]]
name = "8b"
vram_mib = 6144
command = "llama-server -m llama-8b.gguf --port {port}"

[model.ollama]
authority = "shared"
discipline = "serial"
url = "http://127.0.0.1:11434"

[[model.ollama.tier]]
name = "default"
vram_mib = 5000
"#;

#[test]
fn model_runtimes_parse_with_their_tiers_largest_first() {
    let doc = parse_spec("models.toml", LLAMA).unwrap();
    assert_eq!(doc.models.len(), 2);
    let llama = &doc.models[0];
    assert_eq!(llama.name.as_str(), "llama");
    assert_eq!(llama.authority, Authority::Exclusive);
    assert_eq!(
        llama.discipline,
        ModelDiscipline::Parallel { max_concurrency: 8 }
    );
    assert_eq!((llama.inertia_bias_ms, llama.load_ms), (5000, 20_000));
    let tiers: Vec<(&str, u64)> = llama
        .tiers
        .iter()
        .map(|t| (t.name.as_str(), t.vram_bytes / MIB))
        .collect();
    assert_eq!(tiers, [("70b", 40960), ("8b", 6144)]);
    assert_eq!(llama.warm_path.as_deref(), Some("/v1/models"));
    assert!(llama.health.is_some());
    let ollama = &doc.models[1];
    assert_eq!(ollama.authority, Authority::Shared);
    assert_eq!(ollama.discipline, ModelDiscipline::Serial);
    assert_eq!(ollama.url.as_deref(), Some("http://127.0.0.1:11434"));
    assert_eq!(ollama.tiers[0].command, None);
}

#[test]
fn bad_model_runtimes_are_refused_with_their_location() {
    let tier =
        "[[model.m.tier]]\nname = \"big\"\nvram_mib = 100\ncommand = \"serve --port {port}\"\n";
    let cases: [(String, &str); 11] = [
        (
            "[model.m]\n".into(),
            "bad.toml:1:1: model.m.tier: a model needs at least one [[tier]]",
        ),
        (
            format!("[model.m]\nauthority = \"mine\"\n{tier}"),
            "bad.toml:2:13: model.m.authority: unknown authority `mine`",
        ),
        (
            format!("[model.m]\ndiscipline = \"serial\"\nmax_concurrency = 2\n{tier}"),
            "bad.toml:3:19: model.m.max_concurrency: a serial runtime takes one request",
        ),
        (
            format!("[model.m]\nmax_concurrency = 0\n{tier}"),
            "bad.toml:2:19: model.m.max_concurrency: must be in 1..=4096, got 0",
        ),
        (
            format!("[model.m]\nload_ms = 0\n{tier}"),
            "bad.toml:2:11: model.m.load_ms: must be in 1..=3600000 ms, got 0",
        ),
        (
            format!(
                "[model.m]\n{tier}[[model.m.tier]]\nname = \"small\"\nvram_mib = 200\ncommand = \"s --port {{port}}\"\n"
            ),
            "bad.toml:8:12: model.m.tier[1].vram_mib: tiers go largest first",
        ),
        (
            "[model.m]\n[[model.m.tier]]\nname = \"big\"\nvram_mib = 100\ncommand = \"serve\"\n"
                .into(),
            "bad.toml:5:11: model.m.tier[0].command: a command of at most",
        ),
        (
            "[model.m]\n[[model.m.tier]]\nname = \"big\"\nvram_mib = 100\n".into(),
            "model.m.tier[0].command: an exclusive runtime needs the command",
        ),
        (
            format!("[model.m]\nauthority = \"shared\"\n{tier}"),
            "model.m.url: a shared runtime needs the `url`",
        ),
        (
            format!("[model.m]\nurl = \"http://x:1\"\n{tier}"),
            "bad.toml:2:7: model.m.url: only a shared runtime has a `url`",
        ),
        (
            format!(
                "[service.m]\nresources = {{ cpu_cores = 1, memory_mib = 8 }}\n[model.m]\n{tier}"
            ),
            "model.m: name already used by service.m",
        ),
    ];
    for (text, want) in &cases {
        let e = parse_spec("bad.toml", text).unwrap_err().to_string();
        assert!(e.contains(want), "{text}\n{e}\nwanted {want}");
    }
}

#[test]
fn addresses_and_publishing_parse_and_bad_ones_name_their_field() {
    let ok = "[service.db]\npattern = \"stateful-read\"\nresources = { cpu_cores = 1, memory_mib = 8 }\naddress = { port = 6379, protocol = \"tcp\", primary_port = 6380 }\npublish = { file = \"/run/qs/db.json\", command = \"true\" }\n";
    let db = parse_spec("ok.toml", ok).unwrap().workloads.remove(0);
    let a = db.address.as_ref().unwrap();
    assert_eq!(
        (a.port, a.protocol, a.primary_port),
        (6379, Protocol::Tcp, Some(6380))
    );
    assert_eq!(db.publish.as_ref().unwrap().format, PublishFormat::Json);
    let head = "[service.a]\nresources = { cpu_cores = 1, memory_mib = 8 }\n";
    let cases = [
        (
            "address = { port = 0, protocol = \"udp\" }",
            "bad.toml:1:1: service.a.address.port: must be in 1..=65535, got 0",
        ),
        (
            "address = { port = 70000, protocol = \"udp\" }",
            "bad.toml:3:20: service.a.address.port: invalid value: integer `70000`",
        ),
        (
            "address = { port = 53, protocol = \"sctp\" }",
            "bad.toml:3:35: service.a.address.protocol: unknown variant `sctp`",
        ),
        (
            "address = { port = 53, protocol = \"udp\", primary_port = 54 }",
            "bad.toml:1:1: service.a.address.primary_port: only stateful-read services",
        ),
        (
            "address = { port = 53, protocol = \"udp\", host = \"x.local\" }",
            "bad.toml:1:1: service.a.address: `host` and `path` go with protocol = \"http\"",
        ),
        (
            "address = { port = 80, protocol = \"http\", host = \"Bad_Host\" }",
            "bad.toml:1:1: service.a.address.host: \"Bad_Host\" is not a lowercase host name",
        ),
        (
            "address = { port = 80, protocol = \"http\", path = \"api\" }",
            "bad.toml:1:1: service.a.address.path: a path starting with '/'",
        ),
        (
            "publish = { format = \"lines\" }",
            "bad.toml:1:1: service.a.publish: names a `file`, a `command` or both",
        ),
        (
            "publish = { file = \"relative.txt\" }",
            "bad.toml:1:1: service.a.publish.file: an absolute file path",
        ),
        (
            "publish = { command = \"  \" }",
            "bad.toml:1:1: service.a.publish.command: must not be empty",
        ),
    ];
    for (line, want) in cases {
        check(&format!("{head}{line}\n"), want);
    }
}
