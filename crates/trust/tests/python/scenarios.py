# Builds, with python-tuf (the reference implementation), the repositories that exercise the TUF
# client workflow as the specification describes it: a delegation tree searched pre-order and
# depth-first, a terminating delegation, a role named with characters that are unsafe in a path,
# an artifact in a sub-directory with two hashes, consistent snapshots; and the same repository
# broken in the ways a client must refuse. Usage: OUT
#
# OUT/good/metadata, OUT/good/targets: the repository as served.
# OUT/<variant>/metadata: the same, with one thing wrong (see VARIANTS below).
import copy, hashlib, json, os, shutil, sys
from datetime import datetime, timedelta, timezone
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (DelegatedRole, Delegations, Metadata, MetaFile, Root, Snapshot,
                              TargetFile, Targets, Timestamp)

out = sys.argv[1]
now = datetime.now(timezone.utc).replace(microsecond=0)
exp = now + timedelta(days=7)
keys = {r: CryptoSigner.generate_ed25519() for r in
        ["root", "targets", "snapshot", "timestamp", "A", "A1", "B", "C", "odd"]}
ODD = "../odd?#name"

def target(path, data, algs=("sha256",)):
    hashes = {a: hashlib.new(a, data).hexdigest() for a in algs}
    return TargetFile(len(data), hashes, path), data

files = {
    "a/x1": b"in A1, reached through A\n",
    "b": b"in B, which terminates the search\n",
    "b-in-C": b"C names b too, but is never reached\n",
    "q/1": b"in the oddly named role\n",
    "dir/sub/file": b"an artifact in a sub-directory, with two hashes\n",
}

root = Metadata(Root(expires=exp, consistent_snapshot=True))
for r in ["root", "targets", "snapshot", "timestamp"]:
    root.signed.add_key(keys[r].public_key, r)

def delegating(roles):
    d = Delegations(keys={}, roles={})
    for name, paths, terminating in roles:
        d.keys[keys[name if name != ODD else "odd"].public_key.keyid] = keys[name if name != ODD else "odd"].public_key
        d.roles[name] = DelegatedRole(name=name, keyids=[keys[name if name != ODD else "odd"].public_key.keyid],
                                      threshold=1, terminating=terminating, paths=paths)
    return d

top = Metadata(Targets(expires=exp))
tf, _ = target("dir/sub/file", files["dir/sub/file"], ("sha256", "sha512"))
top.signed.targets["dir/sub/file"] = tf
top.signed.delegations = delegating([("A", ["a/*"], False), ("B", ["b"], True), ("C", ["*"], False), (ODD, ["q/*"], False)])

role = {}
role["A"] = Metadata(Targets(expires=exp))
role["A"].signed.delegations = delegating([("A1", ["a/x*"], False)])
role["A1"] = Metadata(Targets(expires=exp))
role["A1"].signed.targets["a/x1"] = target("a/x1", files["a/x1"])[0]
role["B"] = Metadata(Targets(expires=exp))
role["B"].signed.targets["b"] = target("b", files["b"])[0]
role["C"] = Metadata(Targets(expires=exp))
role["C"].signed.targets["b"] = target("b", files["b-in-C"])[0]
role[ODD] = Metadata(Targets(expires=exp))
role[ODD].signed.targets["q/1"] = target("q/1", files["q/1"])[0]

def quote(name):
    from urllib.parse import quote as q
    return q(name, "")

def publish(dirname, mutate=None):
    """Signs and writes the whole repository (consistent snapshot names) into dirname/metadata;
    mutate(mds) may change the metadata objects first (and re-sign as it likes)."""
    mds = {"root": copy.deepcopy(root), "targets": copy.deepcopy(top), "snapshot": Metadata(Snapshot(expires=exp)),
           "timestamp": Metadata(Timestamp(expires=exp))}
    for n, md in role.items():
        mds[n] = copy.deepcopy(md)
    sign_keys = dict(keys)
    sign_keys[ODD] = keys["odd"]
    for n in list(role) + ["targets"]:
        mds[n].signatures.clear()
        mds[n].sign(sign_keys[n])
        mds["snapshot"].signed.meta[f"{n}.json"] = MetaFile(version=mds[n].signed.version)
    mds["snapshot"].sign(keys["snapshot"])
    raw = mds["snapshot"].to_bytes()
    mds["timestamp"].signed.snapshot_meta = MetaFile(version=mds["snapshot"].signed.version, length=len(raw),
                                                     hashes={"sha256": hashlib.sha256(raw).hexdigest()})
    mds["timestamp"].sign(keys["timestamp"])
    mds["root"].sign(keys["root"])
    if mutate:
        mutate(mds)
    meta = os.path.join(out, dirname, "metadata")
    os.makedirs(meta, exist_ok=True)
    for n, md in mds.items():
        if md is None:
            continue
        if n == "root":
            name = f"{md.signed.version}.root.json"
        elif n == "timestamp":
            name = "timestamp.json"
        else:
            name = f"{md.signed.version}.{quote(n)}.json"
        with open(os.path.join(meta, name), "wb") as f:
            f.write(md.to_bytes())

publish("good")
tdir = os.path.join(out, "good", "targets")
for path, data in files.items():
    if path == "b-in-C":
        continue
    d, _, base = path.rpartition("/")
    algs = ("sha256", "sha512") if path == "dir/sub/file" else ("sha256",)
    for a in algs:
        os.makedirs(os.path.join(tdir, d), exist_ok=True)
        with open(os.path.join(tdir, d, f"{hashlib.new(a, data).hexdigest()}.{base}"), "wb") as f:
            f.write(data)
# C is never needed: the good repository withholds it entirely.
for f in os.listdir(os.path.join(out, "good", "metadata")):
    if f.endswith(".C.json"):
        os.remove(os.path.join(out, "good", "metadata", f))

def unsigned_timestamp(m):
    m["timestamp"].signatures.clear()

def expired_timestamp(m):
    m["timestamp"].signed.expires = now - timedelta(seconds=1)
    m["timestamp"].signed.version += 1
    m["timestamp"].signatures.clear(); m["timestamp"].sign(keys["timestamp"])

def snapshot_version_mismatch(m):
    m["timestamp"].signed.snapshot_meta.version += 1
    m["timestamp"].signed.version += 1
    m["timestamp"].signatures.clear(); m["timestamp"].sign(keys["timestamp"])

def no_snapshot(m):
    m["snapshot"] = None
    m["timestamp"].signed.version += 1
    m["timestamp"].signatures.clear(); m["timestamp"].sign(keys["timestamp"])

def wrong_key_for_A1(m):
    # A1 signed by B's key: the threshold A set for A1 is not met.
    m["A1"].signatures.clear(); m["A1"].sign(keys["B"])

VARIANTS = {
    "unsigned_timestamp": unsigned_timestamp,
    "expired_timestamp": expired_timestamp,
    "snapshot_version_mismatch": snapshot_version_mismatch,
    "no_snapshot": no_snapshot,
    "wrong_key_for_A1": wrong_key_for_A1,
}
for name, f in VARIANTS.items():
    publish(name, f)
with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump({p: hashlib.sha256(d).hexdigest() for p, d in files.items()}, f)
