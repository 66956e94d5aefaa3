#!/usr/bin/env python3
"""Verify every metadata file of a consistent-snapshot TUF repository with
python-tuf's Metadata API.

    verify_metadata.py --dir DIR [--check-expiry]

DIR holds the files under their served names: N.root.json, N.targets.json,
N.<delegated role>.json, N.snapshot.json and timestamp.json. Checks:

* root chain 1..N: root 1 is signed by itself, root N+1 by root N and itself;
* timestamp.json, the snapshot it names, and the targets version that snapshot
  names are signed per the newest root; timestamp's snapshot length/hashes
  match the snapshot file; every snapshot "meta" entry exists with matching
  version (and length/hashes when given);
* delegation tree walked from that targets (``roles`` with ``paths`` or
  ``path_hash_prefixes``, and ``succinct_roles``): each delegated role's
  current version is signed per every role delegating it, and the targets it
  lists lie inside its delegation (and its delegator's);
* older versions of snapshot/targets must verify with some root of the chain,
  older delegated versions with some file that delegates that role;
* every file name embeds the version inside the file; any other file (or a
  role nothing delegates) is an error.
With --check-expiry the current root/timestamp/snapshot/targets/delegated
metadata must not be expired.

Prints one JSON line: {"ok": true, "verified": [...], "current": {...}} and
exits 0, or {"ok": false, "error": "<ExceptionClass>", "message": ...} exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from urllib.parse import quote, unquote

from tuf.api.exceptions import (
    BadVersionNumberError,
    ExpiredMetadataError,
    RepositoryError,
    UnsignedMetadataError,
)
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp


class UnknownFileError(RepositoryError):
    """A file that is not (reachable) repository metadata."""


class MissingMetadataError(RepositoryError):
    """Metadata referenced (or needed) is not in the directory."""


class TargetOutsideDelegationError(RepositoryError):
    """A delegated role lists a target outside the paths delegated to it."""


TYPES = {"root": Root, "timestamp": Timestamp, "snapshot": Snapshot}


def fname(role: str, version: int) -> str:
    return f"{version}.{quote(role, '')}.json"


def load_dir(path: str) -> dict[str, dict[int | None, tuple[str, bytes, Metadata]]]:
    """role -> version -> (file name, raw bytes, Metadata); checks names."""
    repo: dict = {}
    for name in sorted(os.listdir(path)):
        if name == "timestamp.json":
            role, version = "timestamp", None
        else:
            ver, _, rest = name.partition(".")
            if not (ver.isdigit() and str(int(ver)) == ver and int(ver) > 0
                    and rest.endswith(".json") and len(rest) > 5):
                raise UnknownFileError(f"unexpected file {name}")
            role, version = unquote(rest[:-5]), int(ver)
            if role == "timestamp" or fname(role, version) != name:
                raise UnknownFileError(f"unexpected file {name}")
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            raise UnknownFileError(f"{name} is not a regular file")
        with open(full, "rb") as f:
            data = f.read()
        md = Metadata.from_bytes(data)
        expected = TYPES.get(role, Targets)
        if not isinstance(md.signed, expected):
            raise RepositoryError(f"{name}: expected {expected.type}, "
                                  f"got {md.signed.type}")
        if version is not None and md.signed.version != version:
            raise BadVersionNumberError(
                f"{name} contains version {md.signed.version}")
        repo.setdefault(role, {})[version] = (name, data, md)
    return repo


def get(repo: dict, role: str, version: int | None, why: str):
    try:
        return repo[role][version]
    except KeyError:
        name = "timestamp.json" if version is None else fname(role, version)
        raise MissingMetadataError(f"{name} missing ({why})") from None


def delegated_names(targets: Targets) -> list[str]:
    d = targets.delegations
    if d is None:
        return []
    if d.roles is not None:
        return list(d.roles)
    return list(d.succinct_roles.get_roles())


def path_check(targets: Targets, role: str) -> Callable[[str], bool]:
    d = targets.delegations
    if d.roles is not None:
        return d.roles[role].is_delegated_path
    return lambda p: d.succinct_roles.get_role_for_target(p) == role


def check(signer: Root | Targets, role: str, entry, by: str) -> None:
    """verify_delegate with the file names in the error message."""
    try:
        signer.verify_delegate(role, entry[2].signed_bytes, entry[2].signatures)
    except UnsignedMetadataError as e:
        raise UnsignedMetadataError(f"{entry[0]} (per {by}): {e}") from None


def verify(repo: dict, check_expiry: bool) -> tuple[list[str], dict]:
    verified: set[str] = set()
    current: dict[str, int] = {}
    expiring: list[tuple[str, Metadata]] = []

    def ok(role: str, entry, is_current: bool) -> None:
        verified.add(entry[0])
        if is_current:
            current[role] = entry[2].signed.version
            expiring.append((entry[0], entry[2]))

    # Root chain.
    roots = repo.get("root", {})
    if sorted(roots) != list(range(1, len(roots) + 1)) or not roots:
        raise MissingMetadataError(
            f"root versions must be 1..N, found {sorted(roots)}")
    prev = None
    for v in sorted(roots):
        md = roots[v][2]
        if prev is not None:
            check(prev, "root", roots[v], f"{v - 1}.root.json")
        check(md.signed, "root", roots[v], "itself")
        prev = md.signed
    for v in roots:
        ok("root", roots[v], v == len(roots))
    root = prev

    # timestamp -> snapshot -> targets, all per the newest root.
    ts = get(repo, "timestamp", None, "required")
    newest = f"{root.version}.root.json"
    check(root, "timestamp", ts, newest)
    ok("timestamp", ts, True)
    snap_meta = ts[2].signed.snapshot_meta
    snap = get(repo, "snapshot", snap_meta.version, "named by timestamp")
    snap_meta.verify_length_and_hashes(snap[1])
    check(root, "snapshot", snap, newest)
    ok("snapshot", snap, True)
    meta = snap[2].signed.meta
    for key, mf in meta.items():
        entry = get(repo, key[:-5], mf.version, f"{snap[0]} lists {key}")
        mf.verify_length_and_hashes(entry[1])
    if "targets.json" not in meta:
        raise MissingMetadataError(f"{snap[0]} does not list targets.json")
    top = get(repo, "targets", meta["targets.json"].version, "")
    check(root, "targets", top, newest)
    ok("targets", top, True)

    # Current delegation tree, walked from the current targets.
    queue: list[tuple[str, Targets, list[Callable[[str], bool]]]] = [
        (top[0], top[2].signed, [])]
    walked = {"targets"}
    while queue:
        parent_name, parent, checks = queue.pop(0)
        for child in delegated_names(parent):
            if f"{child}.json" not in meta:
                raise RepositoryError(f"role {child} delegated by "
                                      f"{parent_name} is not in {snap[0]}")
            entry = get(repo, child, meta[f"{child}.json"].version, "")
            check(parent, child, entry, parent_name)
            ok(child, entry, True)
            if child in walked:
                continue
            walked.add(child)
            child_checks = [*checks, path_check(parent, child)]
            for path in entry[2].signed.targets:
                if not all(allowed(path) for allowed in child_checks):
                    raise TargetOutsideDelegationError(
                        f"{entry[0]} lists {path!r} outside its delegation")
            queue.append((entry[0], entry[2].signed, child_checks))

    # Older versions: signed per some root / some delegating metadata.
    delegators = [e[2].signed for r, vs in repo.items() if r not in TYPES
                  for e in vs.values()]
    for role, versions in repo.items():
        for entry in versions.values():
            if entry[0] in verified:
                continue
            if role in TYPES or role == "targets":
                signers = [roots[v][2].signed for v in sorted(roots)][::-1]
            else:
                signers = [t for t in delegators if role in delegated_names(t)]
                if not signers:
                    raise UnknownFileError(
                        f"{entry[0]}: no metadata delegates role {role}")
            errors = []
            for signer in signers:
                try:
                    signer.verify_delegate(role, entry[2].signed_bytes,
                                           entry[2].signatures)
                    break
                except UnsignedMetadataError as e:
                    errors.append(str(e))
            else:
                raise UnsignedMetadataError(
                    f"{entry[0]} not verified by any delegator: {errors}")
            ok(role, entry, False)

    if check_expiry:
        for name, md in expiring:
            if md.signed.is_expired():
                raise ExpiredMetadataError(f"{name} expired at "
                                           f"{md.signed.expires.isoformat()}")
    return sorted(verified), current


class UsageError(Exception):
    """Bad command line."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # report usage errors as JSON too
        raise UsageError(message)


def main(argv: list[str]) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True, help="directory of metadata files")
    p.add_argument("--check-expiry", action="store_true",
                   help="fail if current metadata is expired")
    try:
        args = p.parse_args(argv)
        names, current = verify(load_dir(args.dir), args.check_expiry)
        result = {"ok": True, "verified": names, "current": current}
    except Exception as e:  # noqa: BLE001 - every failure becomes JSON
        result = {"ok": False, "error": type(e).__name__, "message": str(e)}
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
