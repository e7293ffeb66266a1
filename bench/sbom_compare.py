#!/usr/bin/env python3
"""Package counts of three CycloneDX SBOMs (bulkhead, Trivy, Syft) and what each finds that the
others do not, by purl type, with name@version. Packages are compared by (type, name, version),
ignoring purl qualifiers (but an `epoch` one) and case of PyPI names."""
import json
import sys
from collections import Counter
from urllib.parse import unquote


def key(c):
    purl = c.get("purl")
    if not purl:
        return None
    body, _, query = purl.split("#")[0].partition("?")
    ty, rest = body[4:].split("/", 1)
    if "@" in rest:
        name_part, _, version = rest.rpartition("@")
    else:
        name_part, version = rest, ""
    # Go names are whole module paths; the others are compared without their namespace.
    name = unquote(name_part) if ty == "golang" else unquote(name_part.split("/")[-1])
    version = unquote(version)
    if ty == "golang":
        # Trivy leaves the main module's version out, the others say (devel); Syft writes the
        # toolchain as 1.19.8, Trivy and bulkhead as v1.19.8.
        version = version or "(devel)"
        version = version[1:] if version.startswith("v") else version
    if ty == "pypi":
        name = name.lower().replace("_", "-")
    # Trivy puts a Debian/RPM epoch in an `epoch` qualifier, bulkhead and Syft in the version.
    quals = dict(q.split("=", 1) for q in query.split("&") if "=" in q)
    if "epoch" in quals and ":" not in version:
        version = f"{quals['epoch']}:{version}"
    return (ty, name, version)


def load(path):
    doc = json.load(open(path))
    out = set()
    stack = list(doc.get("components", []))
    while stack:
        c = stack.pop()
        stack.extend(c.get("components", []))
        k = key(c)
        if k:
            out.add(k)
    return out


names = ["bulkhead", "trivy", "syft"]
sets = dict(zip(names, (load(p) for p in sys.argv[1:4])))
for n in names:
    by_type = Counter(t for t, _, _ in sets[n])
    print(f"{n:9} {len(sets[n]):4} packages  " + ", ".join(f"{t} {c}" for t, c in sorted(by_type.items())))
union = set().union(*sets.values())
for n in names:
    others = set().union(*(sets[m] for m in names if m != n))
    missing = sorted(others - sets[n])
    extra = sorted(sets[n] - others)
    if missing:
        print(f"{n} misses {len(missing)}: " + ", ".join(f"{t}:{a}@{v}" for t, a, v in missing[:40]))
    if extra:
        print(f"{n} alone finds {len(extra)}: " + ", ".join(f"{t}:{a}@{v}" for t, a, v in extra[:40]))
print(f"union {len(union)}")
