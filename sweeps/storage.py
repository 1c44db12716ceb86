"""Where a sweep lives: a local (or shared) folder, or an object store URI (`s3://bucket/prefix`).

On a folder, everything is as it always was: the sweep's folder is `storage/NAME`, Ray and sweepboard write
there. On an object store, Ray writes its experiment state, results and checkpoints through the pyarrow
filesystem built here (RunConfig storage_filesystem), and sweepboard's own small files (sweepboard.json,
budget.json, baseline/, leaderboard/) live in a node-local working copy, the mirror, written through to the
bucket on every change: `push` raises when the bucket does not take a write, so the ledger (the budget's
record) is never lost silently. `pull` brings the bucket's files into the mirror for resume, sync and
export. The mirror is a cache: SWEEPBOARD_MIRROR, else SWEEPBOARD_CACHE/storage (default .cache/storage),
one folder per storage URI; it holds a marker file that names the URI, so code that is handed the sweep's
folder (a Path) finds where to write through.

Credentials and endpoint: the AWS SDK inside pyarrow reads AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN and ~/.aws itself; the endpoint (AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, else the
config's `storage_endpoint`) and the region (AWS_DEFAULT_REGION, else AWS_REGION) are passed explicitly,
since pyarrow's S3FileSystem does not take the endpoint from the environment (apache/arrow#49643).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

MARKER = ".sweepboard-remote.json"  # in the mirror's sweep folder: which URI it mirrors; never pushed
S3_SCHEMES = ("s3", "s3a")


class StorageError(RuntimeError):
    """The object store did not take (or give) a file: the message names the URI, the endpoint and the fix."""


@dataclass(frozen=True)
class Remote:
    """A sweep's folder on an object store: `uri` is the storage as configured, `name` the sweep."""

    uri: str
    name: str
    endpoint: str | None = None

    def fs(self) -> tuple[Any, str]:
        """The pyarrow filesystem and the sweep's folder on it (no scheme)."""
        fs, base = filesystem(self.uri, self.endpoint)
        return fs, f"{base}/{self.name}"


def is_remote(storage: str) -> bool:
    """Whether `storage` names an object store (a URI with a scheme other than file://)."""
    scheme = urlparse(storage).scheme
    return "://" in storage and scheme not in ("", "file")


def endpoint_of(configured: str | None = None) -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or configured or None


def filesystem(storage: str, endpoint: str | None = None) -> tuple[Any, str]:
    """A pyarrow filesystem for `storage` and the path on it: S3 built from the AWS variables, any other
    URI pyarrow knows (gs://, hdfs://, abfs://) by pyarrow, the rest through fsspec if it is installed."""
    import pyarrow.fs as pafs

    parsed = urlparse(storage)
    if parsed.scheme in S3_SCHEMES:
        kwargs: dict[str, Any] = {}
        where = endpoint_of(endpoint)
        if where:
            url = urlparse(where if "://" in where else f"https://{where}")
            kwargs.update(endpoint_override=url.netloc, scheme=url.scheme or "https")
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), f"{parsed.netloc}{parsed.path}".rstrip("/")
    try:
        fs, path = pafs.FileSystem.from_uri(storage)
        return fs, str(path).rstrip("/")
    except Exception as exc:  # noqa: BLE001  pyarrow does not know the scheme: fsspec may
        try:
            import fsspec

            handler = pafs.FSSpecHandler(fsspec.filesystem(parsed.scheme))
            return pafs.PyFileSystem(handler), f"{parsed.netloc}{parsed.path}".rstrip("/")
        except Exception:  # noqa: BLE001
            raise ValueError(f"storage: {storage!r}: no filesystem for this URI ({exc}); give a folder, or an "
                             "s3://bucket/prefix URI (or one pyarrow or fsspec knows)") from exc  # fmt: skip


def mirror_base(storage: str) -> Path:
    base = os.environ.get("SWEEPBOARD_MIRROR") or str(Path(os.environ.get("SWEEPBOARD_CACHE", ".cache")) / "storage")
    return Path(base).expanduser().resolve() / hashlib.sha256(storage.encode()).hexdigest()[:16]


def sweep_folder(storage: str, name: str, endpoint: str | None = None) -> Path:
    """The sweep's folder as sweepboard's code uses it: `storage/NAME`, or its mirror (marked) on a bucket."""
    if not is_remote(storage):
        return Path(storage).resolve() / name
    root = mirror_base(storage) / name
    root.mkdir(parents=True, exist_ok=True)
    known = json.loads((root / MARKER).read_text()) if (root / MARKER).is_file() else {}
    marker = {"uri": storage, "name": name, "endpoint": endpoint_of(endpoint) or known.get("endpoint")}
    (root / MARKER).write_text(json.dumps(marker))
    return root


def remote_of(path: Path) -> tuple[Remote, Path] | None:
    """The bucket folder that `path` (a file or folder in a sweep's mirror) writes through to, and the
    mirror's sweep folder; None on local storage."""
    for folder in [Path(path), *Path(path).parents]:
        marker = folder / MARKER
        if marker.is_file():
            spec = json.loads(marker.read_text())
            return Remote(spec["uri"], spec["name"], endpoint_of(spec.get("endpoint"))), folder
    return None


def storage_fs(storage: str, endpoint: str | None = None) -> tuple[str, Any]:
    """What RunConfig and Tuner.restore take: (storage_path, storage_filesystem or None)."""
    if not is_remote(storage):
        return str(Path(storage).resolve()), None
    fs, path = filesystem(storage, endpoint)
    return path, fs


def push(path: Path) -> None:
    """Write a file (or a folder's files) of a mirror through to its bucket; nothing on local storage.
    Raises StorageError when the bucket does not acknowledge a write: the mirror keeps the newer copy."""
    found = remote_of(path)
    if found is None:
        return
    remote, root = found
    upload(remote, Path(path), Path(path).relative_to(root).as_posix())


def upload(remote: Remote, local: Path, rel: str) -> None:
    """`local` (a file or folder) to `rel` under the remote sweep folder."""
    fs, base = remote.fs()
    files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
    for file in files:
        if file.name == MARKER:
            continue
        key = f"{base}/{rel}" if local.is_file() else f"{base}/{rel}/{file.relative_to(local).as_posix()}"
        try:
            with fs.open_output_stream(key.replace("//", "/")) as out:
                out.write(file.read_bytes())
        except Exception as exc:  # noqa: BLE001  any failure: the write is not acknowledged
            raise StorageError(_failed("write", remote, key, exc)) from exc


def pull(root: Path, under: str = "", only: Callable[[str], bool] | None = None) -> int:
    """The bucket's files under `under` (relative to the sweep) into the mirror `root`; how many came. A
    missing folder brings nothing. Nothing on local storage."""
    import pyarrow.fs as pafs

    found = remote_of(root)
    if found is None:
        return 0
    remote, _ = found
    fs, base = remote.fs()
    top = f"{base}/{under}".rstrip("/")
    try:
        info = fs.get_file_info(top)
        if info.type == pafs.FileType.NotFound:
            return 0
        infos = [info] if info.type == pafs.FileType.File else fs.get_file_info(pafs.FileSelector(top, recursive=True))
        count = 0
        for item in infos:
            rel = item.path[len(base) + 1:]
            if item.type != pafs.FileType.File or (only is not None and not only(rel)):
                continue
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(item.path) as src:
                target.write_bytes(src.read())
            count += 1
        return count
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise StorageError(_failed("read", remote, top, exc)) from exc


def exists(storage: str, name: str, rel: str, endpoint: str | None = None) -> bool:
    """Whether the sweep `name` on `storage` has the file `rel` (in its bucket on an object store)."""
    import pyarrow.fs as pafs

    if not is_remote(storage):
        return (Path(storage).resolve() / name / rel).exists()
    remote = Remote(storage, name, endpoint_of(endpoint))
    fs, base = remote.fs()
    try:
        return bool(fs.get_file_info(f"{base}/{rel}").type != pafs.FileType.NotFound)
    except Exception as exc:  # noqa: BLE001
        raise StorageError(_failed("read", remote, f"{base}/{rel}", exc)) from exc


def known_remote(storage: str, state_file: str, endpoint: str | None = None) -> list[str]:
    """The sweeps in a bucket prefix (folders with a state file), for "no such sweep" errors."""
    import pyarrow.fs as pafs

    try:
        fs, base = filesystem(storage, endpoint)
        infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory
                      and fs.get_file_info(f"{i.path}/{state_file}").type == pafs.FileType.File)  # fmt: skip
    except Exception:  # noqa: BLE001  only for a message
        return []


def fresh_mirror(root: Path) -> None:
    """A new sweep's mirror starts empty: what an earlier sweep of the name left in the cache is not it."""
    marker = (root / MARKER).read_text() if (root / MARKER).is_file() else None
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    if marker is not None:
        (root / MARKER).write_text(marker)


def describe(remote: Remote) -> str:
    fs, base = remote.fs()
    return f"{remote.uri.split('://')[0]}://{base}" + (f" (endpoint {remote.endpoint})" if remote.endpoint else "")


def _failed(what: str, remote: Remote, key: str, exc: BaseException) -> str:
    endpoint = remote.endpoint or "the AWS default"
    return (f"object storage: could not {what} {key} on {remote.uri} (endpoint {endpoint}): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; check that the store answers "
            "and AWS_ENDPOINT_URL_S3 / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, then `sweepboard resume "
            f"{remote.name} --storage {remote.uri}` (what the bucket acknowledged is kept)")  # fmt: skip


def pull_final(root: Path, trial_dir: str, into: Path) -> bool:
    """A trial's newest checkpoint that holds its final files (metrics.json) from the bucket into `into`
    (emptied first); whether there was one."""
    import pyarrow.fs as pafs

    found = remote_of(root)
    if found is None:
        return False
    remote, _ = found
    fs, base = remote.fs()
    try:
        infos = fs.get_file_info(pafs.FileSelector(f"{base}/{trial_dir}", allow_not_found=True))
        names = sorted((i.base_name for i in infos if i.type == pafs.FileType.Directory
                        and i.base_name.startswith("checkpoint_")), reverse=True)  # fmt: skip
        chosen = next((n for n in names if fs.get_file_info(f"{base}/{trial_dir}/{n}/metrics.json").type
                       == pafs.FileType.File), None)  # fmt: skip
    except Exception as exc:  # noqa: BLE001
        raise StorageError(_failed("read", remote, f"{base}/{trial_dir}", exc)) from exc
    if chosen is None:
        return False
    shutil.rmtree(into, ignore_errors=True)
    staged = pull(root, f"{trial_dir}/{chosen}")
    shutil.move(str(root / trial_dir / chosen), str(into))
    return staged > 0
