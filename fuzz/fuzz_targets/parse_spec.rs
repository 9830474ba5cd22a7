//! `parse_spec` on any text; a document it accepts reads back unchanged the KV's way (each
//! workload's JSON, decoded and checked again).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(doc) = qs_wire::parse_spec("fuzz.toml", text) {
        for w in &doc.workloads {
            let json = serde_json::to_vec(w).unwrap();
            let back = qs_wire::decode_workload("kv specs", w.name.as_str(), &json)
                .expect("a parsed spec passes the KV's checks");
            assert_eq!(&back, w);
        }
    }
});
