"""Write a TUF repository the way other implementations build them, with python-tuf's
Metadata API, for Ringfence's client to read (tests/it/conformance.rs):

- root signed with an RSA key (rsassa-pss-sha256), every key listed under a key id that is
  a name, not a hash, and carrying the deprecated keyid_hash_algorithms field;
- top-level targets delegating to roles named "/delegatedrole" and "../delegatedrole";
- a target hashed with sha512 only, and one with sha256 and sha512.

Usage: conformance_repo.py OUT_DIR   (writes OUT_DIR/metadata and OUT_DIR/targets)
"""

import datetime
import os
import sys
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

out = sys.argv[1]
md_dir = os.path.join(out, "metadata")
os.makedirs(md_dir, exist_ok=True)
expires = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(days=7)


def signer(kind, keyid):
    if kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    base = SSlibKey.from_crypto(private.public_key())
    key = SSlibKey(keyid, base.keytype, base.scheme, base.keyval, {"keyid_hash_algorithms": ["sha256", "sha512"]})
    return CryptoSigner(private, key)


def write(name, md):
    md.to_file(os.path.join(md_dir, name))


top = {r: signer("rsa" if r == "root" else "ed25519", f"{r} key") for r in ["root", "timestamp", "snapshot", "targets"]}
root = Metadata(Root(expires=expires, consistent_snapshot=True))
for role, s in top.items():
    root.signed.add_key(s.public_key, role)

data = {"first/file.txt": b"hashed with sha512 only\n", "second/file.txt": b"hashed with both\n"}
roles = {"/delegatedrole": ("first/*", ["sha512"]), "../delegatedrole": ("second/*", ["sha256", "sha512"])}
targets = Metadata(Targets(expires=expires))
targets.signed.delegations = Delegations(keys={}, roles={})
meta = {"targets.json": MetaFile(1)}
for i, (name, (pattern, algorithms)) in enumerate(roles.items()):
    s = signer("ed25519", f"delegate {i}")
    targets.signed.delegations.keys[s.public_key.keyid] = s.public_key
    targets.signed.delegations.roles[name] = DelegatedRole(
        name=name, keyids=[s.public_key.keyid], threshold=1, terminating=True, paths=[pattern]
    )
    delegated = Metadata(Targets(expires=expires))
    path = pattern.replace("*", "file.txt")
    entry = TargetFile.from_data(path, data[path], algorithms)
    delegated.signed.targets[path] = entry
    delegated.sign(s)
    write(f"1.{quote(name, '')}.json", delegated)
    meta[f"{name}.json"] = MetaFile(1)
    digest = entry.hashes[algorithms[0]]
    target_dir = os.path.join(out, "targets", os.path.dirname(path))
    os.makedirs(target_dir, exist_ok=True)
    with open(os.path.join(target_dir, f"{digest}.file.txt"), "wb") as f:
        f.write(data[path])

root.sign(top["root"])
write("1.root.json", root)
targets.sign(top["targets"])
write("1.targets.json", targets)
snapshot = Metadata(Snapshot(expires=expires, meta=meta))
snapshot.sign(top["snapshot"])
write("1.snapshot.json", snapshot)
timestamp = Metadata(Timestamp(expires=expires, snapshot_meta=MetaFile(1)))
timestamp.sign(top["timestamp"])
write("timestamp.json", timestamp)
print("ok")
