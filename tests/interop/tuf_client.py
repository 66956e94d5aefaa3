#!/usr/bin/env python3
"""Minimal python-tuf (ngclient) client used by Ringfence's interop tests.

    tuf_client.py --metadata-url URL --targets-url URL --root FILE \
        --metadata-dir DIR --ca-cert PEM refresh
    tuf_client.py ... download --target PATH --out-dir DIR

Prints exactly one JSON line on stdout:
    success: {"ok": true, ...}                                  exit 0
    failure: {"ok": false, "error": "<ExceptionClass>", ...}    exit 1

"error" is type(e).__name__ of the exception python-tuf raised (for example
ExpiredMetadataError, BadVersionNumberError, UnsignedMetadataError,
LengthOrHashMismatchError, DownloadLengthMismatchError, DownloadHTTPError,
DownloadError, RepositoryError); "cause" names the underlying exception, if
any (for example SSLError for a TLS failure wrapped in DownloadError).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator

import urllib3
from tuf.api import exceptions
from tuf.api.metadata import Metadata
from tuf.ngclient import FetcherInterface, Updater


class TargetNotFoundError(Exception):
    """The target path is not listed by any trusted targets role."""


class UsageError(Exception):
    """Bad command line."""


class CaFetcher(FetcherInterface):
    """HTTPS fetcher trusting only the given CA/certificate PEM file.

    ngclient's default Urllib3Fetcher uses the OS trust store and takes no TLS
    options, so we implement the public FetcherInterface (only ``_fetch`` is
    required) around our own urllib3.PoolManager and pass it as
    ``Updater(fetcher=...)``. Hostname checking stays on: the server
    certificate must name the host of the URLs (e.g. SAN IP:127.0.0.1).
    Proxy environment variables are deliberately ignored.
    """

    def __init__(self, ca_cert: str, timeout: float, chunk_size: int = 65536):
        self._pool = urllib3.PoolManager(
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_cert,
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
        )
        self._chunk_size = chunk_size

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            response = self._pool.request("GET", url, preload_content=False)
        except urllib3.exceptions.MaxRetryError as e:
            # NewConnectionError (e.g. connection refused) subclasses
            # ConnectTimeoutError in urllib3 2.x: it is not a slow retrieval.
            reason = e.reason
            if isinstance(reason, urllib3.exceptions.TimeoutError) and \
                    not isinstance(reason, urllib3.exceptions.NewConnectionError):
                raise exceptions.SlowRetrievalError(str(e)) from e
            raise  # wrapped into DownloadError by FetcherInterface.fetch()
        if response.status >= 400:
            response.release_conn()
            raise exceptions.DownloadHTTPError(
                f"HTTP {response.status} for {url}", response.status
            )
        return self._chunks(response)

    def _chunks(self, response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        try:
            yield from response.stream(self._chunk_size)
        except urllib3.exceptions.TimeoutError as e:
            raise exceptions.SlowRetrievalError(str(e)) from e
        except urllib3.exceptions.HTTPError as e:
            raise exceptions.DownloadError(f"{type(e).__name__}: {e}") from e
        finally:
            response.release_conn()


def make_updater(args: argparse.Namespace) -> Updater:
    os.makedirs(args.metadata_dir, exist_ok=True)
    local_root = os.path.join(args.metadata_dir, "root.json")
    if not os.path.lexists(local_root):
        shutil.copyfile(args.root, local_root)
    # Trust anchor: the client's current trusted root.json (initially the
    # --root file; after a successful update, ngclient keeps root.json as a
    # symlink to the newest trusted root in root_history/).
    with open(local_root, "rb") as f:
        bootstrap = f.read()
    return Updater(
        metadata_dir=args.metadata_dir,
        metadata_base_url=args.metadata_url,
        target_base_url=args.targets_url,
        fetcher=CaFetcher(args.ca_cert, args.timeout),
        bootstrap=bootstrap,
    )


def trusted_versions(metadata_dir: str) -> dict[str, int]:
    """Versions of the top-level metadata ngclient persisted (= trusted)."""
    versions = {}
    for role in ("root", "timestamp", "snapshot", "targets"):
        path = os.path.join(metadata_dir, f"{role}.json")
        if os.path.exists(path):
            versions[role] = Metadata.from_file(path).signed.version
    return versions


def run(args: argparse.Namespace) -> dict:
    updater = make_updater(args)
    updater.refresh()
    result: dict = {"ok": True, "command": args.command}
    if args.command == "download":
        info = updater.get_targetinfo(args.target)
        if info is None:
            raise TargetNotFoundError(f"target {args.target!r} not found")
        os.makedirs(args.out_dir, exist_ok=True)
        path = updater.download_target(info, filepath=os.path.join(
            args.out_dir, os.path.basename(info.path)))
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        result.update(target=info.path, path=os.path.abspath(path),
                      length=info.length, sha256=digest)
    result["versions"] = trusted_versions(args.metadata_dir)
    return result


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # report usage errors as JSON too
        raise UsageError(message)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--metadata-url", required=True,
                   help="e.g. https://127.0.0.1:PORT/repo/metadata/")
    p.add_argument("--targets-url", required=True,
                   help="e.g. https://127.0.0.1:PORT/repo/targets/")
    p.add_argument("--root", required=True,
                   help="trusted root metadata used to bootstrap")
    p.add_argument("--metadata-dir", required=True,
                   help="client metadata cache (kept between runs)")
    p.add_argument("--ca-cert", required=True,
                   help="PEM CA or self-signed server certificate to trust")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="connect/read timeout in seconds (default 10)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("refresh", help="update top-level metadata")
    dl = sub.add_parser("download", help="refresh, then download a target")
    dl.add_argument("--target", required=True, help="target path")
    dl.add_argument("--out-dir", required=True,
                    help="directory to write the target into (basename)")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    try:
        result = run(parse_args(argv))
    except Exception as e:  # noqa: BLE001 - every failure becomes JSON
        result = {"ok": False, "error": type(e).__name__, "message": str(e)}
        if e.__cause__ is not None:
            cause = e.__cause__
            if isinstance(cause, urllib3.exceptions.MaxRetryError):
                cause = cause.reason or cause
            result["cause"] = type(cause).__name__
            result["cause_message"] = str(cause)
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
