//! `${...}` placeholders in a scenario's sidecar config, filled in by the runner with the ports
//! and paths it picked: `${sidecar.listen}`, `${sidecar.admin}`, `${sidecar.token_file}`,
//! `${dir}` (the run's directory, e.g. for the grace journal), `${sim.NAME}` and
//! `${proxy.NAME}` (`host:port` of a simulator or a fault proxy).

use std::collections::BTreeMap;

/// Every placeholder name in `text`, in order (an unterminated `${` is an error).
pub fn placeholders(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 2..];
        let end = after.find('}').ok_or_else(|| "an unterminated ${ placeholder".to_string())?;
        out.push(after[..end].trim().to_string());
        rest = &after[end + 1..];
    }
    Ok(out)
}

/// Replaces every placeholder; an unknown name is an error naming it.
pub fn fill(text: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after.find('}').ok_or_else(|| "an unterminated ${ placeholder".to_string())?;
        let name = after[..end].trim();
        let v = values.get(name).ok_or_else(|| format!("unknown placeholder ${{{name}}}"))?;
        out.push_str(v);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_fills() {
        let t = "listen: ${sidecar.listen}\nx: ${ sim.pay }";
        assert_eq!(placeholders(t).unwrap(), vec!["sidecar.listen", "sim.pay"]);
        let mut v = BTreeMap::new();
        v.insert("sidecar.listen".to_string(), "127.0.0.1:1".to_string());
        assert!(fill(t, &v).unwrap_err().contains("sim.pay"));
        v.insert("sim.pay".to_string(), "127.0.0.1:2".to_string());
        assert_eq!(fill(t, &v).unwrap(), "listen: 127.0.0.1:1\nx: 127.0.0.1:2");
        assert!(placeholders("${oops").is_err());
    }
}
