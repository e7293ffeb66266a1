# bench/trust's python-tuf side: the same work as crates/trust/examples/trust_bench.rs, with the
# reference implementation: a repository with N signed tags and 3 delegated roles (team0..team2,
# each trusted for tK.* with 10 tags) (not timed), then R times each: resolve-and-verify a tag of
# the last delegated role with a fresh ngclient, and sign one new top-level tag (load targets,
# add, sign targets + snapshot + timestamp, write). Prints the medians in milliseconds.
#   python trust_python.py DIR N R
import os, statistics, sys, tempfile, time
from datetime import datetime, timedelta, timezone
from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import DownloadHTTPError
from tuf.api.metadata import DelegatedRole, Delegations, Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.ngclient import FetcherInterface, Updater

out, n, r = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(out, exist_ok=True)
exp = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=7)
signers = {k: CryptoSigner.generate_ed25519() for k in ["root", "targets", "snapshot", "timestamp"]}
root = Metadata(Root(expires=exp, consistent_snapshot=False))
for k, s in signers.items():
    root.signed.add_key(s.public_key, k)
root.sign(signers["root"])
root.to_file(f"{out}/1.root.json")

team_versions = {}

def publish(targets):
    targets.signed.version += 1
    targets.sign(signers["targets"])
    targets.to_file(f"{out}/targets.json")
    snap = Metadata.from_file(f"{out}/snapshot.json") if os.path.exists(f"{out}/snapshot.json") else Metadata(Snapshot(expires=exp))
    snap.signed.version += 1
    snap.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
    for role, v in team_versions.items():
        snap.signed.meta[f"{role}.json"] = MetaFile(version=v)
    snap.sign(signers["snapshot"])
    snap.to_file(f"{out}/snapshot.json")
    ts = Metadata.from_file(f"{out}/timestamp.json") if os.path.exists(f"{out}/timestamp.json") else Metadata(Timestamp(expires=exp))
    ts.signed.version += 1
    ts.signed.snapshot_meta = MetaFile(version=snap.signed.version)
    ts.sign(signers["timestamp"])
    ts.to_file(f"{out}/timestamp.json")

t = Metadata(Targets(expires=exp))
import hashlib
for i in range(n):
    name = f"1.{i}"
    t.signed.targets[name] = TargetFile(1000 + i, {"sha256": hashlib.sha256(f"manifest {i}".encode()).hexdigest()}, name)
team_signers = {f"team{k}": CryptoSigner.generate_ed25519() for k in range(3)}
t.signed.delegations = Delegations(keys={}, roles={})
for k in range(3):
    role = f"team{k}"
    t.signed.delegations.keys[team_signers[role].public_key.keyid] = team_signers[role].public_key
    t.signed.delegations.roles[role] = DelegatedRole(role, [team_signers[role].public_key.keyid], 1, False, [f"t{k}.*"])
    d = Metadata(Targets(expires=exp))
    for i in range(10):
        name = f"t{k}.{i}"
        d.signed.targets[name] = TargetFile(500 + i, {"sha256": hashlib.sha256(name.encode()).hexdigest()}, name)
    d.sign(team_signers[role])
    d.to_file(f"{out}/{role}.json")
    team_versions[role] = d.signed.version
publish(t)

class Files(FetcherInterface):
    def _fetch(self, url):
        path = os.path.join(out, url.rsplit("/", 1)[-1])
        if not os.path.exists(path):
            raise DownloadHTTPError(f"{url} not found", 404)
        with open(path, "rb") as f:
            return iter([f.read()])

trusted = open(f"{out}/1.root.json", "rb").read()
resolves, signs = [], []
for i in range(r):
    work = tempfile.mkdtemp(dir=out)
    t0 = time.perf_counter()
    u = Updater(metadata_dir=work, metadata_base_url="file:///m/", target_base_url="file:///t/", fetcher=Files(), bootstrap=trusted)
    u.refresh()
    info = u.get_targetinfo("t2.7")
    resolves.append((time.perf_counter() - t0) * 1e3)
    assert info.length == 507
    t0 = time.perf_counter()
    tg = Metadata.from_file(f"{out}/targets.json")
    tg.signed.targets[f"2.{i}"] = TargetFile(1, {"sha256": hashlib.sha256(bytes([i % 256])).hexdigest()}, f"2.{i}")
    publish(tg)
    signs.append((time.perf_counter() - t0) * 1e3)
print(f"resolve {statistics.median(resolves):.2f} sign {statistics.median(signs):.2f}")
