//! The Lua of meshtap's v2 filter (`meshtap-v2.lua`, the only copy in the repository) and its
//! rendering with the generator's settings.

/// The filter's source as kept in the repository, with its defaults.
pub const SOURCE: &str = include_str!("meshtap-v2.lua");

/// The lines the generator rewrites; each occurs exactly once in [`SOURCE`] (a unit test checks).
const MAX_BODY_LINE: &str = "local MAX_BODY = 65536\n";
const SKIP_HEADERS_LINE: &str = "local SKIP_HEADERS = {}\n";

/// The Lua with `MAX_BODY` and `SKIP_HEADERS` set. `skip_headers` are lower-case header tokens
/// (checked by the options), so they need no escaping inside a Lua string. With the defaults the
/// result is [`SOURCE`] unchanged.
pub fn render(max_body_bytes: u64, skip_headers: &[String]) -> String {
    let max_body = format!("local MAX_BODY = {max_body_bytes}\n");
    let skip = if skip_headers.is_empty() {
        SKIP_HEADERS_LINE.to_string()
    } else {
        let entries: Vec<String> = skip_headers
            .iter()
            .map(|name| format!("[\"{name}\"] = true"))
            .collect();
        format!("local SKIP_HEADERS = {{ {} }}\n", entries.join(", "))
    };
    SOURCE
        .replacen(MAX_BODY_LINE, &max_body, 1)
        .replacen(SKIP_HEADERS_LINE, &skip, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_occur_once() {
        assert_eq!(SOURCE.matches(MAX_BODY_LINE).count(), 1);
        assert_eq!(SOURCE.matches(SKIP_HEADERS_LINE).count(), 1);
        // The Lua reads the table where it builds header blocks (headers and trailers alike).
        assert!(SOURCE.contains("if not SKIP_HEADERS[name] then"));
    }

    #[test]
    fn defaults_leave_the_source_unchanged() {
        assert_eq!(render(65536, &[]), SOURCE);
    }

    #[test]
    fn settings_are_rendered() {
        let lua = render(100, &["authorization".into(), "x-api-key".into()]);
        assert!(lua.contains("\nlocal MAX_BODY = 100\n"));
        assert!(!lua.contains(MAX_BODY_LINE));
        assert!(lua.contains(
            "\nlocal SKIP_HEADERS = { [\"authorization\"] = true, [\"x-api-key\"] = true }\n"
        ));
        assert_eq!(lua.lines().count(), SOURCE.lines().count());
    }
}
