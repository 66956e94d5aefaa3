"""The baseline for Ringfence's publish benchmark (crates/ringfence/benches/publish.rs):
python-tuf's Metadata API doing the edit Ringfence does when one update is published into a
catalog of N targets, in memory.

The layout is Ringfence's: one publisher role delegating to 256 hashed bins (the first two hex
digits of SHA-256 of the target path), N targets spread over the bins, ed25519 keys. One sample
adds one target: the bin gets the entry and a new version and is re-signed and serialized; the
snapshot gets the bin's new version and length and is re-signed and serialized; the timestamp
gets the snapshot's version, length and hash and is re-signed and serialized. Serialization is
compact JSON (what is served); signing is over canonical JSON, as the specification asks.

Usage: maintenance_bench.py SIZE[,SIZE...] SAMPLES
Prints one JSON object per size: {"catalog": N, "median_ms": ..., "min_ms": ..., "max_ms": ...}
"""

import datetime
import hashlib
import json
import statistics
import sys
import time

from cryptography.hazmat.primitives.asymmetric import ed25519
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, MetaFile, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

COMPACT = JSONSerializer(compact=True)
CONTENT = b"benchmark payload"
SHA = hashlib.sha256(CONTENT).hexdigest()


def signer():
    return CryptoSigner(ed25519.Ed25519PrivateKey.generate())


def bin_of(path):
    return "publisher.acme." + hashlib.sha256(path.encode()).hexdigest()[:2]


def catalog(n, expires, keys):
    bins = {f"publisher.acme.{i:02x}": Metadata(Targets(expires=expires)) for i in range(256)}
    for i in range(n):
        path = f"acme/existing-{i}.bin"
        bins[bin_of(path)].signed.targets[path] = TargetFile(len(CONTENT), {"sha256": SHA}, path)
    snapshot = Metadata(Snapshot(expires=expires))
    for name, md in bins.items():
        md.sign(keys["publisher"])
        snapshot.signed.meta[f"{name}.json"] = MetaFile(md.signed.version, len(md.to_bytes(COMPACT)))
    snapshot.signed.meta["publisher.acme.json"] = MetaFile(1)
    snapshot.sign(keys["snapshot"])
    snap_bytes = snapshot.to_bytes(COMPACT)
    timestamp = Metadata(Timestamp(expires=expires))
    timestamp.signed.snapshot_meta = MetaFile(1, len(snap_bytes), {"sha256": hashlib.sha256(snap_bytes).hexdigest()})
    timestamp.sign(keys["timestamp"])
    return bins, snapshot, timestamp


def add_one(path, bins, snapshot, timestamp, keys):
    name = bin_of(path)
    md = bins[name]
    md.signed.targets[path] = TargetFile(len(CONTENT), {"sha256": SHA}, path)
    md.signed.version += 1
    md.sign(keys["publisher"])
    bin_bytes = md.to_bytes(COMPACT)
    snapshot.signed.meta[f"{name}.json"] = MetaFile(md.signed.version, len(bin_bytes))
    snapshot.signed.version += 1
    snapshot.sign(keys["snapshot"])
    snap_bytes = snapshot.to_bytes(COMPACT)
    timestamp.signed.snapshot_meta = MetaFile(
        snapshot.signed.version, len(snap_bytes), {"sha256": hashlib.sha256(snap_bytes).hexdigest()}
    )
    timestamp.signed.version += 1
    timestamp.sign(keys["timestamp"])
    return len(bin_bytes) + len(snap_bytes) + len(timestamp.to_bytes(COMPACT))


def main():
    sizes = [int(s) for s in sys.argv[1].split(",")]
    samples = int(sys.argv[2])
    expires = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(days=365)
    keys = {role: signer() for role in ["publisher", "snapshot", "timestamp"]}
    for n in sizes:
        bins, snapshot, timestamp = catalog(n, expires, keys)
        times = []
        written = 0
        for i in range(samples):
            started = time.perf_counter()
            written = add_one(f"acme/new-{i}.bin", bins, snapshot, timestamp, keys)
            times.append((time.perf_counter() - started) * 1000)
        out = {
            "catalog": n,
            "median_ms": statistics.median(times),
            "min_ms": min(times),
            "max_ms": max(times),
            "bytes": written,
        }
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
