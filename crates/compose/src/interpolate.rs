//! Variable interpolation as the compose specification says: `$VAR`, `${VAR}`,
//! `${VAR:-default}` (unset or empty), `${VAR-default}` (unset), `${VAR:?message}`,
//! `${VAR?message}` (required), `${VAR:+replacement}`, `${VAR+replacement}`, and `$$` for a
//! literal `$`. Defaults may themselves hold variables. Anything else after a `$` is an error,
//! never left as it is.

/// What a variable is, for `lookup`: None when it is unset.
pub fn interpolate(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    interpolate_depth(s, lookup, 0)
}

fn interpolate_depth(s: &str, lookup: &dyn Fn(&str) -> Option<String>, depth: usize) -> Result<String, String> {
    if depth > 8 {
        return Err("variables nested more than 8 deep".into());
    }
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            // Copy up to the next `$` (UTF-8 safe: `$` is ASCII).
            let next = s[i..].find('$').map_or(s.len(), |n| i + n);
            out.push_str(&s[i..next]);
            i = next;
            continue;
        }
        match b.get(i + 1) {
            Some(b'$') => {
                out.push('$');
                i += 2;
            }
            Some(b'{') => {
                let close = matching_brace(s, i + 2).ok_or_else(|| format!("{:?}: a `${{` without its `}}`", s))?;
                let inner = &s[i + 2..close];
                out.push_str(&braced(inner, lookup, depth)?);
                i = close + 1;
            }
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                let end = s[i + 1..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(s.len(), |n| i + 1 + n);
                out.push_str(&lookup(&s[i + 1..end]).unwrap_or_default());
                i = end;
            }
            _ => return Err(format!("{s:?}: a `$` that starts no variable (write `$$` for a `$`)")),
        }
    }
    Ok(out)
}

/// The index of the `}` closing a `${` whose content starts at `from` (defaults may hold more
/// `${...}`).
fn matching_brace(s: &str, from: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 1;
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'$' if b.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if b.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn braced(inner: &str, lookup: &dyn Fn(&str) -> Option<String>, depth: usize) -> Result<String, String> {
    let name_end = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let (name, rest) = inner.split_at(name_end);
    if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
        return Err(format!("${{{inner}}}: not a variable name"));
    }
    let value = lookup(name);
    let set_nonempty = value.as_deref().is_some_and(|v| !v.is_empty());
    let nested = |t: &str| interpolate_depth(t, lookup, depth + 1);
    let (op, arg) = if rest.is_empty() {
        ("", "")
    } else if let Some(a) = rest.strip_prefix(":-") {
        (":-", a)
    } else if let Some(a) = rest.strip_prefix(":?") {
        (":?", a)
    } else if let Some(a) = rest.strip_prefix(":+") {
        (":+", a)
    } else if let Some(a) = rest.strip_prefix('-') {
        ("-", a)
    } else if let Some(a) = rest.strip_prefix('?') {
        ("?", a)
    } else if let Some(a) = rest.strip_prefix('+') {
        ("+", a)
    } else {
        return Err(format!(
            "${{{inner}}}: unknown form (${{VAR}}, ${{VAR:-default}}, ${{VAR:?message}}, ${{VAR:+other}})"
        ));
    };
    let required = |msg: &str| -> Result<String, String> {
        let msg = nested(msg)?;
        Err(if msg.is_empty() {
            format!("{name} is required but not set")
        } else {
            format!("{name}: {msg}")
        })
    };
    match op {
        "" => Ok(value.unwrap_or_default()),
        ":-" => {
            if set_nonempty {
                Ok(value.unwrap_or_default())
            } else {
                nested(arg)
            }
        }
        "-" => match value {
            Some(v) => Ok(v),
            None => nested(arg),
        },
        ":?" => {
            if set_nonempty {
                Ok(value.unwrap_or_default())
            } else {
                required(arg)
            }
        }
        "?" => match value {
            Some(v) => Ok(v),
            None => required(arg),
        },
        ":+" => {
            if set_nonempty {
                nested(arg)
            } else {
                Ok(String::new())
            }
        }
        "+" => {
            if value.is_some() {
                nested(arg)
            } else {
                Ok(String::new())
            }
        }
        _ => unreachable!(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("v".into()),
            "EMPTY" => Some(String::new()),
            "PORT" => Some("8080".into()),
            _ => None,
        }
    }

    #[test]
    fn the_forms_of_the_specification() {
        let i = |s: &str| interpolate(s, &env);
        assert_eq!(i("a $SET b ${SET}c").unwrap(), "a v b vc");
        assert_eq!(i("${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d}").unwrap(), "d d  d");
        assert_eq!(i("${UNSET:-${PORT}}:80").unwrap(), "8080:80");
        assert_eq!(i("${SET:+yes}${UNSET:+no}${EMPTY+set}").unwrap(), "yesset");
        assert_eq!(i("$$HOME $${X}").unwrap(), "$HOME ${X}");
        assert_eq!(i("é${SET}ü").unwrap(), "évü");
        assert_eq!(i("${UNSET:?give it}").unwrap_err(), "UNSET: give it");
        assert_eq!(i("${EMPTY?x}").unwrap(), "");
        assert!(i("${EMPTY:?}").unwrap_err().contains("required"));
        for bad in ["${", "${SET", "${}", "${1A}", "${SET%x}", "$ ", "a$", "${SET:-${X}"] {
            assert!(i(bad).is_err(), "{bad}");
        }
    }
}
