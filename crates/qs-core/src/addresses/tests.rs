//! The addresses' decisions, one table or scenario per rule.

use super::*;
use crate::registry::tests::status;
use crate::time::{Time, ms};
use qs_wire::{InstanceSummary, parse_spec};

fn specs(text: &str) -> Vec<WorkloadSpec> {
    parse_spec("t.toml", text).unwrap().workloads
}

fn svc(name: &str, address: &str) -> String {
    format!(
        "[service.{name}]\nresources = {{ cpu_cores = 0.1, memory_mib = 32 }}\naddress = {address}\n"
    )
}

fn name(s: &str) -> ServiceName {
    ServiceName::new(s).unwrap()
}

#[test]
fn every_agent_plans_the_same_ports_and_the_first_service_by_name_keeps_a_contested_one() {
    let text = [
        svc("zeta", r#"{ port = 5353, protocol = "udp" }"#),
        svc("alpha", r#"{ port = 5353, protocol = "udp" }"#),
        svc("dns-tcp", r#"{ port = 5353, protocol = "tcp" }"#),
        svc(
            "web",
            r#"{ port = 8080, protocol = "http", host = "web.fleet.local" }"#,
        ),
        svc(
            "api",
            r#"{ port = 8080, protocol = "http", path = "/api" }"#,
        ),
        svc(
            "api2",
            r#"{ port = 8080, protocol = "http", path = "/api" }"#,
        ),
        svc("raw", r#"{ port = 8080, protocol = "tcp" }"#),
    ]
    .concat();
    let mut all = specs(&text);
    let forward = plan(&all);
    all.reverse();
    assert_eq!(
        plan(&all),
        forward,
        "the order specs come in changes nothing"
    );
    let at = |port, transport| forward.listeners.get(&Port { port, transport }).unwrap();
    assert_eq!(
        at(5353, Transport::Udp).backends()[0].service,
        name("alpha")
    );
    assert_eq!(
        at(5353, Transport::Tcp).backends()[0].service,
        name("dns-tcp"),
        "UDP and TCP on one port are two listeners"
    );
    let http: Vec<&str> = at(8080, Transport::Tcp)
        .backends()
        .iter()
        .map(|b| b.service.as_str())
        .collect();
    assert_eq!(http, ["api", "web"]);
    let lost: Vec<(&str, &str)> = forward
        .conflicts
        .iter()
        .map(|c| (c.service.as_str(), c.with.as_str()))
        .collect();
    assert_eq!(lost, [("api2", "api"), ("raw", "api"), ("zeta", "alpha")]);
}

#[test]
fn a_primary_port_reaches_only_the_primary() {
    let text = "[service.db]\npattern = \"stateful-read\"\nreplicas = 2\nresources = { cpu_cores = 0.1, memory_mib = 32 }\naddress = { port = 6379, protocol = \"tcp\", primary_port = 6380 }\n";
    let p = plan(&specs(text));
    let reach = |port| {
        p.listeners[&Port {
            port,
            transport: Transport::Tcp,
        }]
            .backends()[0]
            .reach
    };
    assert_eq!(reach(6379), Reach::Any);
    assert_eq!(reach(6380), Reach::Primary);
    assert!(Reach::Primary.admits(Role::Primary));
    assert!(!Reach::Primary.admits(Role::Replica));
    assert!(Reach::Any.admits(Role::Replica));
}

#[test]
fn an_http_request_goes_to_the_most_specific_route() {
    let route = |service: &str, host: Option<&str>, path: Option<&str>| HttpRoute {
        backend: Backend {
            service: name(service),
            reach: Reach::Any,
        },
        host: host.map(str::to_owned),
        path: path.map(str::to_owned),
    };
    let routes = [
        route("any", None, None),
        route("api", None, Some("/api")),
        route("api-v2", None, Some("/api/v2/")),
        route("web", Some("web.fleet.local"), None),
        route("web-api", Some("web.fleet.local"), Some("/api")),
    ];
    let cases = [
        (None, "/", Some("any")),
        (None, "/api", Some("api")),
        (None, "/api?x=1", Some("api")),
        (None, "/apix", Some("any")),
        (None, "/api/v2/models", Some("api-v2")),
        (Some("web.fleet.local"), "/", Some("web")),
        (Some("WEB.fleet.local:8080"), "/index.html", Some("web")),
        (Some("web.fleet.local"), "/api/x", Some("web-api")),
        (Some("other.local"), "/api/x", Some("api")),
    ];
    for (host, path, want) in cases {
        let got = route_http(&routes, host, path).map(|r| r.backend.service.as_str());
        assert_eq!(got, want, "{host:?} {path}");
    }
    assert_eq!(route_http(&routes[1..3], None, "/"), None, "no route: none");
}

#[test]
fn endpoints_are_the_serving_instances_of_live_nodes_that_say_where_they_are() {
    let mut reg = Registry::new(&Default::default());
    let db = specs(
        "[service.db]\npattern = \"stateful-read\"\nreplicas = 3\nresources = { cpu_cores = 0.1, memory_mib = 32 }\n",
    )
    .remove(0);
    reg.apply_spec(db.clone(), Time::ZERO);
    let inst = |id: &str, role, serving, port| InstanceSummary {
        instance: InstanceId::new(id).unwrap(),
        service: db.name.clone(),
        role,
        fencing: 0,
        hot: false,
        serving,
        port,
    };
    let at = |ip: [u8; 4]| Some(core::net::IpAddr::from(ip));
    let mut a = status("a", 1, 0);
    a.address = at([10, 0, 0, 1]);
    a.instances = vec![inst("db-1", Role::Primary, true, 7001)];
    let mut b = status("b", 1, 0);
    b.address = at([10, 0, 0, 2]);
    b.instances = vec![
        inst("db-2", Role::Replica, true, 7002),
        inst("db-3", Role::Replica, false, 7003),
        inst("db-4", Role::Replica, true, 0),
    ];
    let mut c = status("c", 1, 0);
    c.instances = vec![inst("db-5", Role::Replica, true, 7005)];
    let now = Time::from_millis(1);
    for s in [a.clone(), b, c] {
        reg.observe(s, now);
    }
    let got: Vec<(String, Role)> = endpoints(&reg, &db.name)
        .into_iter()
        .map(|e| (e.addr.to_string(), e.role))
        .collect();
    assert_eq!(
        got,
        [
            ("10.0.0.1:7001".to_string(), Role::Primary),
            ("10.0.0.2:7002".to_string(), Role::Replica)
        ],
        "not serving, without a port, or on a node without an address: no traffic"
    );
    a.draining = true;
    reg.observe(a, now);
    assert_eq!(
        endpoints(&reg, &db.name).len(),
        1,
        "a draining node takes none"
    );
}

#[test]
fn the_balancer_spreads_by_open_count_and_routes_around_a_failed_endpoint() {
    let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let (x, y, z) = (addr(1), addr(2), addr(3));
    let mut b = Balancer::new();
    assert_eq!(b.pick(Time::ZERO, &[]), None, "nothing to pick");
    b.set([x, y, z]);
    let t0 = Time::from_millis(10);
    let mut taken = Vec::new();
    for _ in 0..3 {
        let a = b.pick(t0, &[]).unwrap();
        b.opened(&a);
        taken.push(a);
    }
    taken.sort();
    assert_eq!(taken, [x, y, z], "fewest open first");
    b.closed(&y);
    assert_eq!(b.pick(t0, &[]), Some(y));
    // y fails: passed over for SET_ASIDE_MS, doubling, until it answers.
    b.failed(&y, t0);
    for _ in 0..4 {
        assert_ne!(b.pick(t0, &[]), Some(y));
    }
    assert_eq!(b.pick(t0, &[x, z]), Some(y), "set aside beats nothing");
    assert_eq!(b.pick(t0 + ms(SET_ASIDE_MS), &[x, z]), Some(y));
    b.failed(&y, t0);
    let almost_back = Time::from_millis(10 + 2 * SET_ASIDE_MS - 1);
    b.set([x, y, z]);
    b.closed(&x);
    b.closed(&z);
    assert_ne!(b.pick(almost_back, &[]), Some(y), "the pause doubled");
    b.answered(&y);
    b.closed(&y);
    let picks: Vec<SocketAddr> = (0..3).map(|_| b.pick(t0, &[]).unwrap()).collect();
    assert!(picks.contains(&y), "an answer brings it back at once");
    b.set([x]);
    assert_eq!(b.pick(t0, &[x]), None, "all tried");
    assert!(!b.contains(&y));
}

#[test]
fn a_publish_file_goes_only_below_the_configured_directories() {
    let config = AddressesConfig {
        publish_dirs: vec!["/run/qs".into(), "/srv/dns/".into()],
        ..AddressesConfig::default()
    };
    let cases = [
        ("/run/qs/dns.json", true),
        ("/srv/dns/zone/upstreams", true),
        ("/run/qsx/dns.json", false),
        ("/run/qs", false),
        ("/run/qs/../../etc/passwd", false),
        ("/etc/passwd", false),
        ("run/qs/dns.json", false),
    ];
    for (path, ok) in cases {
        assert_eq!(config.may_publish_at(path), ok, "{path}");
    }
}
