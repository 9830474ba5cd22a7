//! Tests of the hierarchy: its shape at 30,000 agents, how little moves as agents come
//! and go, zones, leads by seniority, and agents claimed twice.

use super::*;

fn fleet(hosts: usize, per_host: usize) -> Vec<Member> {
    (0..hosts)
        .flat_map(|h| {
            (0..per_host).map(move |a| Member {
                agent: AgentId((h * per_host + a) as u64),
                host: NodeId::new(&format!("h{h}")).unwrap(),
                zone: String::new(),
            })
        })
        .collect()
}

/// An agent two hosts claim is placed under neither (a host cannot take another's agent
/// by naming it); one its host names twice is placed once.
#[test]
fn an_agent_two_hosts_claim_is_placed_under_neither() {
    let mut members = fleet(10, 30);
    let mut stolen = members[0].clone();
    stolen.host = NodeId::new("h9").unwrap();
    members.push(stolen);
    members.push(members[30].clone());
    let h = Hierarchy::build(&members, Shape::default(), |_| Seniority::Seasoned).unwrap();
    assert_eq!(h.cluster_of(AgentId(0)), None);
    assert_eq!(h.host_of(AgentId(0)), None);
    assert_eq!(h.host_of(AgentId(30)), Some(&NodeId::new("h1").unwrap()));
    assert_eq!(h.agents(), 299);
}

#[test]
fn thirty_thousand_agents_fit_under_a_hundred_children() {
    let members = fleet(1_000, 30);
    let h = Hierarchy::build(&members, Shape::default(), |_| Seniority::Seasoned).unwrap();
    assert_eq!(h.agents(), 30_000);
    assert_eq!(h.clusters.len(), 1_000);
    assert_eq!(h.sectors.len(), 100);
    assert!(h.clusters.iter().all(|c| c.agents.len() <= MAX_CHILDREN));
    assert!(h.sectors.iter().all(|s| s.clusters.len() <= MAX_CHILDREN));
    // A host's 30 agents share one cluster: one beat per host.
    let one = NodeId::new("h7").unwrap();
    assert_eq!(h.clusters_of_host(&one).len(), 1);
    assert!(h.root.is_some());
    // Leads are hosts of their cluster's agents.
    for c in h.clusters.iter().filter(|c| !c.agents.is_empty()) {
        assert!(c.hosts.contains(c.lead.as_ref().unwrap()));
    }
}

#[test]
fn few_hosts_move_when_agents_come_and_go() {
    let mut members = fleet(1_000, 30);
    let a = Hierarchy::build(&members, Shape::default(), |_| Seniority::Seasoned).unwrap();
    members.extend(fleet(1_010, 30).into_iter().skip(30_000));
    let b = Hierarchy::build(&members, Shape::default(), |_| Seniority::Seasoned).unwrap();
    let moved = (0..30_000u64)
        .filter(|i| a.cluster_of(AgentId(*i)) != b.cluster_of(AgentId(*i)))
        .count();
    assert!(
        moved < 3_000,
        "{moved} of 30,000 agents moved for 300 new ones"
    );
}

/// `hosts` hosts of `per_host` agents from host `first`, each host in a zone by its
/// number: `zones[h % zones.len()]`.
fn zoned(first: usize, hosts: usize, per_host: usize, zones: &[&str]) -> Vec<Member> {
    (first..first + hosts)
        .flat_map(|h| {
            let zone = zones[h % zones.len()].to_string();
            (0..per_host).map(move |a| Member {
                agent: AgentId((h * per_host + a) as u64),
                host: NodeId::new(&format!("h{h}")).unwrap(),
                zone: zone.clone(),
            })
        })
        .collect()
}

#[test]
fn zones_keep_clusters_and_sectors_local_and_growth_splits_few() {
    // 1,200 hosts of 25: half in eu, 30 % in us, 20 % in ap.
    let zones = ["eu", "eu", "eu", "eu", "eu", "us", "us", "us", "ap", "ap"];
    let mut members = zoned(0, 1_200, 25, &zones);
    let zone_of: BTreeMap<NodeId, String> = members
        .iter()
        .map(|m| (m.host.clone(), m.zone.clone()))
        .collect();
    let a = Hierarchy::build(&members, Shape::default(), |_| Seniority::Seasoned).unwrap();
    assert_eq!(a.agents(), 30_000);
    assert!(a.sectors.len() <= MAX_CHILDREN);
    assert!(a.clusters.iter().all(|c| c.agents.len() <= MAX_CHILDREN));
    let zone_of_cluster = |h: &Hierarchy, c: ClusterId| -> BTreeSet<&String> {
        let cl = h.cluster(c).unwrap();
        cl.hosts.iter().map(|n| &zone_of[n]).collect()
    };
    for (i, cl) in a.clusters.iter().enumerate() {
        if cl.agents.is_empty() {
            continue;
        }
        let z = zone_of_cluster(&a, ClusterId(i as u32));
        assert_eq!(z.len(), 1, "cluster {i} spans zones {z:?}");
        // Its lead is one of its hosts, so in its zone.
        assert!(cl.hosts.contains(cl.lead.as_ref().unwrap()));
    }
    for (i, s) in a.sectors.iter().enumerate() {
        let z: BTreeSet<&String> = s
            .clusters
            .iter()
            .flat_map(|c| zone_of_cluster(&a, *c))
            .collect();
        assert_eq!(z.len(), 1, "sector {i} spans zones {z:?}");
        assert!(s.clusters.len() <= MAX_CHILDREN);
    }
    // 300 more agents in ap, the first zone by name: agents that shared a cluster
    // still do (ap keeps its count of clusters, so eu and us keep their numbers).
    members.extend(zoned(1_200, 12, 25, &["ap"]));
    let b = Hierarchy::build(&members, Shape::default(), |_| Seniority::Seasoned).unwrap();
    let mut pairs = 0;
    let mut split = 0;
    for cl in &a.clusters {
        for w in cl.agents.windows(2) {
            pairs += 1;
            split += usize::from(b.cluster_of(w[0]) != b.cluster_of(w[1]));
        }
    }
    assert_eq!(split, 0, "{split} of {pairs} cluster-mates split");
    // ap doubles: eu's and us's clusters are numbered anew, each with the same agents
    // and the same lead (the sectors here grow from 13 clusters to 16, so they
    // regroup).
    members.extend(zoned(1_212, 240, 25, &["ap"]));
    let c = Hierarchy::build(&members, Shape::default(), |_| Seniority::Seasoned).unwrap();
    for cl in b.clusters.iter().filter(|cl| {
        cl.hosts
            .first()
            .is_some_and(|h| zone_of.get(h).is_some_and(|z| z != "ap"))
    }) {
        let now: BTreeSet<Option<ClusterId>> = cl.agents.iter().map(|a| c.cluster_of(*a)).collect();
        assert_eq!(now.len(), 1, "a cluster of eu or us split: {now:?}");
        assert_ne!(now, BTreeSet::from([b.cluster_of(cl.agents[0])]));
        let renumbered = c.cluster(c.cluster_of(cl.agents[0]).unwrap()).unwrap();
        assert_eq!(
            renumbered.lead, cl.lead,
            "a renumbered cluster's lead moved"
        );
    }
}

#[test]
fn zones_that_do_not_fit_or_say_nothing_are_ignored() {
    let plain =
        Hierarchy::build(&fleet(300, 10), Shape::default(), |_| Seniority::Seasoned).unwrap();
    let names: Vec<String> = (0..101).map(|i| format!("z{i}")).collect();
    let many: Vec<&str> = names.iter().map(String::as_str).collect();
    for zones in [&many[..], &["eu"][..]] {
        let h = Hierarchy::build(&zoned(0, 300, 10, zones), Shape::default(), |_| {
            Seniority::Seasoned
        })
        .unwrap();
        for i in 0..3_000u64 {
            assert_eq!(h.cluster_of(AgentId(i)), plain.cluster_of(AgentId(i)));
        }
        assert_eq!(h.sectors.len(), plain.sectors.len());
    }
}

#[test]
fn a_dead_lead_is_replaced_by_the_next() {
    let members = fleet(60, 30);
    let mut h = Hierarchy::build(&members, Shape::default(), |_| Seniority::Seasoned).unwrap();
    let (i, c) = h
        .clusters
        .iter()
        .enumerate()
        .find(|(_, c)| c.hosts.len() >= 2)
        .expect("a cluster with two hosts");
    let dead = c.lead.clone().unwrap();
    h.elect(|n| Seniority::live(*n != dead));
    let next = h.clusters[i].lead.clone().unwrap();
    assert_ne!(next, dead);
    assert!(h.clusters[i].hosts.contains(&next));
    assert_ne!(h.root.as_ref(), Some(&dead));
}

#[test]
fn new_nodes_lead_only_where_no_seasoned_node_can() {
    let members = fleet(300, 10);
    let all = Hierarchy::build(&members, Shape::default(), |_| Seniority::Seasoned).unwrap();
    // Every lead, coordinator and the root new at once: elsewhere, all seasoned.
    let new: BTreeSet<NodeId> = all.clusters.iter().filter_map(|c| c.lead.clone()).collect();
    let h = Hierarchy::build(&members, Shape::default(), |n| match new.contains(n) {
        true => Seniority::New,
        false => Seniority::Seasoned,
    })
    .unwrap();
    let mut new_leads = 0;
    for (was, cl) in all.clusters.iter().zip(&h.clusters) {
        let Some(lead) = cl.lead.clone() else {
            assert!(cl.hosts.is_empty());
            continue;
        };
        let seasoned_host = cl.hosts.iter().any(|n| !new.contains(n));
        match seasoned_host {
            true => assert!(!new.contains(&lead), "{lead} is new"),
            // No seasoned host: the best new one, as before.
            false => {
                assert_eq!(Some(&lead), was.lead.as_ref());
                new_leads += 1;
            }
        }
    }
    assert!(new_leads < h.clusters.len() / 2, "{new_leads}");
    for s in &h.sectors {
        let co = s.coordinator.clone().unwrap();
        let seasoned_lead = s.clusters.iter().any(|c| {
            h.clusters[c.0 as usize]
                .lead
                .as_ref()
                .is_some_and(|l| !new.contains(l))
        });
        assert!(!seasoned_lead || !new.contains(&co), "{co} coordinates");
    }
    assert!(!new.contains(h.root.as_ref().unwrap()));
}

#[test]
fn a_crowded_host_spills_and_too_many_agents_are_refused() {
    let members = fleet(1, 250);
    let h = Hierarchy::build(&members, Shape::default(), |_| Seniority::Seasoned).unwrap();
    assert!(h.clusters.iter().all(|c| c.agents.len() <= MAX_CHILDREN));
    assert_eq!(
        h.clusters.iter().map(|c| c.agents.len()).sum::<usize>(),
        250
    );
    let huge = vec![
        Member {
            agent: AgentId(0),
            host: NodeId::new("h").unwrap(),
            zone: String::new(),
        };
        MAX_AGENTS + 1
    ];
    assert!(Hierarchy::build(&huge, Shape::default(), |_| Seniority::Seasoned).is_err());
}
