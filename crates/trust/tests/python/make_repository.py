# Builds a TUF repository with python-tuf (the reference implementation): four roles, one
# Ed25519 key each, one target TAG = sha256 DIGEST_HEX, LENGTH bytes. Usage: OUT TAG DIGEST_HEX LENGTH
import sys, hashlib
from datetime import datetime, timedelta, timezone
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root, Targets, Snapshot, Timestamp, TargetFile, MetaFile, Key
out, tag, digest_hex, length = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
exp = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=7)
signers = {r: CryptoSigner.generate_ed25519() for r in ["root", "targets", "snapshot", "timestamp"]}
root = Metadata(Root(expires=exp, consistent_snapshot=False))
for r, s in signers.items():
    root.signed.add_key(s.public_key, r)
targets = Metadata(Targets(expires=exp))
targets.signed.targets[tag] = TargetFile(length, {"sha256": digest_hex}, tag)
snapshot = Metadata(Snapshot(expires=exp))
timestamp = Metadata(Timestamp(expires=exp))
targets.sign(signers["targets"])
snapshot.signed.meta["targets.json"] = MetaFile(version=targets.signed.version)
snapshot.sign(signers["snapshot"])
timestamp.signed.snapshot_meta = MetaFile(version=snapshot.signed.version)
timestamp.sign(signers["timestamp"])
root.sign(signers["root"])
root.to_file(f"{out}/1.root.json")
targets.to_file(f"{out}/targets.json")
snapshot.to_file(f"{out}/snapshot.json")
timestamp.to_file(f"{out}/timestamp.json")
