#![no_main]
//! Parsing an existing `.dockerconfigjson` (a `basic` source Secret) for a
//! registry, on arbitrary bytes. An error never quotes a value of the
//! Secret (a password, an `auth`).
use libfuzzer_sys::fuzz_target;

/// Every string value in a JSON document.
fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let values = serde_json::from_slice::<serde_json::Value>(data)
        .map(|v| {
            let mut out = Vec::new();
            strings(&v, &mut out);
            out
        })
        .unwrap_or_default();
    for registry in ["registry.example.com", "docker.io", "localhost:5000"] {
        if let Err(e) = regcred::render::find_in_dockerconfigjson(data, registry) {
            let message = e.to_string();
            // The message's own words (and the registry it names) are not
            // secret, whatever the input's values happen to be.
            let fixed = format!(
                "{} {} is not a valid docker config JSON: line column syntax error unexpected structure end of input",
                regcred::render::ParseError::NoEntry(registry.into()),
                regcred::render::ParseError::NoCredentials(registry.into()),
            );
            for value in &values {
                if value.len() >= 8 && !fixed.contains(value.as_str()) {
                    assert!(!message.contains(value.as_str()), "the error quotes a value of the Secret");
                }
            }
        }
    }
});
