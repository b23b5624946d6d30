"""Offsite stores: where copies of the archives live, and what each one holds.

Targets are the host's inventory ``offsite:`` list (:func:`targets`). An S3 target
(``url: s3://bucket/prefix`` with optional ``endpoint``, ``region`` and the NAMES
of the credential variables ``access_key_env``/``secret_key_env``, or a
``profile``) is reached with boto3 (:class:`S3Store`), so any S3-compatible endpoint
works; large files go up in multipart uploads. An ``ssh://host/path`` target or an
inventory host is a folder reached through that host's runner (:class:`RunnerStore`).

Layout on a target: ``<prefix>/<origin_host>/<archive>`` and, beside it,
``<archive>.manifest.json``. Each archive object carries its sha256 (S3: in the
object metadata, ``x-amz-meta-sha256``, since the ETag is not a digest for multipart
uploads; a folder: in ``<archive>.sha256``). :func:`remote_catalog` lists what a
target holds. The job that copies, verifies and prunes is
:mod:`bigskies_ops.jobs.offsite`.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone

from bigskies_ops.archives.catalog import (MANIFEST_SUFFIX, PARTIAL_SUFFIX, SCHEMA_VERSION, is_archive_file, iso,
                                           parse_iso)
from bigskies_ops.errors import BigskiesError, StorageError, UsageError
from bigskies_ops.hosts import runner_for
from bigskies_ops.inventory import Host, SSHSettings

CHUNK = 1 << 20                  # bytes per read
MULTIPART_THRESHOLD = 64 << 20   # bytes; S3 needs parts of at least 5 MiB


class OffsiteError(StorageError):
    """An offsite target is unreachable, refuses our credentials, or holds a bad copy."""


@dataclass(frozen=True)
class Target:
    name: str
    scheme: str                  # s3 | ssh
    bucket: str | None = None
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    access_key_env: str | None = None
    secret_key_env: str | None = None
    profile: str | None = None
    ssh_host: str | None = None
    path: str | None = None
    url: str = ""

    def key(self, origin: str, name: str) -> str:
        return posixpath.join(self.prefix, origin, name) if self.prefix else posixpath.join(origin, name)

    def describe(self) -> str:
        return f"{self.name} ({self.url}{' at ' + self.endpoint if self.endpoint else ''})"


def parse_target(item: dict) -> Target:
    """An inventory ``offsite:`` item to a :class:`Target`.

    Raises:
        UsageError: an unsupported URL scheme.
    """
    if "url" not in item and item.get("host"):
        return Target(item["name"], "ssh", ssh_host=item["host"], path=None, url=f"host:{item['host']}")
    u = urllib.parse.urlparse(item["url"])
    if u.scheme == "s3":
        if not u.netloc:
            raise UsageError(f"offsite target {item['name']!r}: {item['url']!r} names no bucket")
        return Target(item["name"], "s3", bucket=u.netloc, prefix=u.path.strip("/"), endpoint=item.get("endpoint"),
                      region=item.get("region"), access_key_env=item.get("access_key_env"),
                      secret_key_env=item.get("secret_key_env"), profile=item.get("profile"), url=item["url"])
    if u.scheme == "ssh":
        if not u.path or u.path == "/":
            raise UsageError(f"offsite target {item['name']!r}: {item['url']!r} needs a folder (ssh://host/path)")
        return Target(item["name"], "ssh", ssh_host=u.netloc, path=u.path, url=item["url"])
    raise UsageError(f"offsite target {item['name']!r}: unsupported URL {item['url']!r} (s3://bucket/prefix or "
                     f"ssh://host/path)")


def targets(host: Host, name: str | None = None) -> list[Target]:
    """The host's targets, or the one called ``name`` (by name or URL).

    Raises:
        UsageError: no targets, or no target of that name.
    """
    all_ = [parse_target(i) for i in host.offsite]
    if not all_:
        raise UsageError(f"hosts.{host.name}.offsite: no offsite targets configured")
    if name is None:
        return all_
    for t in all_:
        if name in (t.name, t.url):
            return [t]
    raise UsageError(f"no offsite target {name!r} on {host.name}; known: {', '.join(t.name for t in all_)}")


# ------------------------------------------------------------------ S3
class S3Store:
    """One S3 target. Every botocore failure becomes an :class:`OffsiteError` naming the target."""

    def __init__(self, t: Target, multipart_threshold: int = MULTIPART_THRESHOLD):
        import boto3
        from botocore.config import Config
        self.t = t
        self.threshold = multipart_threshold
        kw = {}
        if t.access_key_env or t.secret_key_env:
            missing = [n for n in (t.access_key_env, t.secret_key_env) if not n or n not in os.environ]
            if missing:
                raise OffsiteError(f"offsite target {t.name!r}: credential variable(s) "
                                   f"{', '.join(str(m) for m in missing)} not set (access_key_env and "
                                   f"secret_key_env name environment variables)", exit_code=2)
            kw = {"aws_access_key_id": os.environ[t.access_key_env],
                  "aws_secret_access_key": os.environ[t.secret_key_env]}
        try:
            session = boto3.session.Session(profile_name=t.profile) if t.profile else boto3.session.Session()
        except Exception as e:  # botocore.exceptions.ProfileNotFound
            raise OffsiteError(f"offsite target {t.name!r}: {e}", exit_code=2) from None
        cfg = Config(connect_timeout=10, read_timeout=120, retries={"max_attempts": 3, "mode": "standard"},
                     s3={"addressing_style": "path"} if t.endpoint else None)
        self.client = session.client("s3", endpoint_url=t.endpoint, region_name=t.region or "us-east-1",
                                     config=cfg, **kw)

    def _err(self, e: Exception, what: str) -> OffsiteError:
        from botocore import exceptions as bx
        t = self.t
        if isinstance(e, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError,
                          bx.ConnectionClosedError)):
            return OffsiteError(f"offsite target {t.describe()} is unreachable ({what}): {e}")
        if isinstance(e, bx.NoCredentialsError):
            return OffsiteError(f"offsite target {t.name!r}: no S3 credentials (set access_key_env/secret_key_env "
                                f"or profile in the inventory)", exit_code=2)
        if isinstance(e, bx.ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "403", "Forbidden",
                        "InvalidToken", "ExpiredToken"):
                src = (f"variables {t.access_key_env}/{t.secret_key_env}" if t.access_key_env
                       else f"profile {t.profile}" if t.profile else "the default AWS credentials")
                return OffsiteError(f"offsite target {t.name!r}: S3 refused our credentials ({code}; check {src})")
            if code in ("NoSuchBucket",):
                return OffsiteError(f"offsite target {t.name!r}: bucket {t.bucket!r} does not exist")
            return OffsiteError(f"offsite target {t.name!r}: {what} failed: {code} {e}")
        if isinstance(e, bx.BotoCoreError):
            return OffsiteError(f"offsite target {t.describe()}: {what} failed: {e}")
        raise e

    def _call(self, what: str, fn, *a, **kw):
        from botocore import exceptions as bx
        try:
            return fn(*a, **kw)
        except (bx.BotoCoreError, bx.ClientError) as e:
            raise self._err(e, what) from None

    def list(self) -> dict[str, int]:
        """Every key under the target's prefix with its size in bytes."""
        out: dict[str, int] = {}
        pre = (self.t.prefix + "/") if self.t.prefix else ""

        def go():
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.t.bucket, Prefix=pre):
                for o in page.get("Contents", []):
                    out[o["Key"]] = o["Size"]
        self._call("listing", go)
        return out

    def put_file(self, src_runner, path: str, key: str, sha256: str) -> None:
        """Stream ``path`` (read through ``src_runner``) into ``key``; multipart above the threshold."""
        from boto3.s3.transfer import TransferConfig
        cfg = TransferConfig(multipart_threshold=self.threshold, multipart_chunksize=max(self.threshold, 5 << 20),
                             use_threads=False)
        with src_runner.open_read(path) as f:
            self._call(f"upload of {key}", self.client.upload_fileobj, f, self.t.bucket, key,
                       ExtraArgs={"Metadata": {"sha256": sha256}}, Config=cfg)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(f"upload of {key}", self.client.put_object, Bucket=self.t.bucket, Key=key, Body=data,
                   Metadata={"sha256": hashlib.sha256(data).hexdigest()}, ContentType="application/json")

    def get_bytes(self, key: str) -> bytes:
        r = self._call(f"download of {key}", self.client.get_object, Bucket=self.t.bucket, Key=key)
        return self._call(f"download of {key}", r["Body"].read)

    def stored_sha256(self, key: str) -> str | None:
        r = self._call(f"HEAD {key}", self.client.head_object, Bucket=self.t.bucket, Key=key)
        return (r.get("Metadata") or {}).get("sha256")

    def stream(self, key: str, sink=None) -> tuple[str, int]:
        """Read the object end to end; returns (sha256, bytes); ``sink`` gets each chunk."""
        r = self._call(f"download of {key}", self.client.get_object, Bucket=self.t.bucket, Key=key)
        h = hashlib.sha256()
        n = 0
        body = r["Body"]
        while True:
            b = self._call(f"download of {key}", body.read, CHUNK)
            if not b:
                break
            h.update(b)
            n += len(b)
            if sink is not None:
                sink(b)
        return h.hexdigest(), n

    def close(self) -> None:
        pass

    def digest(self, key: str) -> tuple[str, int]:
        return self.stream(key)

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            self._call("delete", self.client.delete_objects, Bucket=self.t.bucket,
                       Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})


class RunnerStore:
    """A folder on another machine (``ssh://host/path`` or an inventory host), reached through
    that host's runner (the SSH layer; a local runner for a local host such as a mounted NAS).
    The sha256 is stored with each archive as ``<archive>.sha256``; uploads go to a
    ``.partial`` name first and are renamed when complete."""

    def __init__(self, t: Target, host: Host, root: str):
        self.t = t
        self.host = host
        self.root = root
        self.runner = runner_for(host)

    def close(self) -> None:
        self.runner.close()

    def _p(self, key: str) -> str:
        return posixpath.join(self.root, key)

    def _call(self, what: str, fn, *a):
        try:
            return fn(*a)
        except BigskiesError as e:
            raise OffsiteError(f"offsite target {self.t.describe()}: {what} failed: {e}",
                               exit_code=e.exit_code) from None
        except OSError as e:
            raise OffsiteError(f"offsite target {self.t.describe()}: {what} failed: {e}") from None

    def list(self) -> dict[str, int]:
        out: dict[str, int] = {}

        def go():
            for origin in self.runner.listdir(self.root):
                if origin.startswith(".") or "." in origin:
                    continue
                for n in self.runner.listdir(self._p(origin)):
                    if not n.endswith((PARTIAL_SUFFIX, ".sha256")) and not n.startswith("."):
                        key = posixpath.join(origin, n)
                        out[key] = self.runner.size(self._p(key))
        self._call("listing", go)
        return out

    def put_file(self, src_runner, path: str, key: str, sha256: str) -> None:
        dst = self._p(key)

        def go():
            self.runner.makedirs(posixpath.dirname(dst))
            with src_runner.open_read(path) as src, self.runner.open_write(dst + PARTIAL_SUFFIX) as f:
                for b in iter(lambda: src.read(CHUNK), b""):
                    f.write(b)
            self.runner.write_atomic(dst + ".sha256", (sha256 + "\n").encode())
            self.runner.rename(dst + PARTIAL_SUFFIX, dst)
        self._call(f"upload of {key}", go)

    def put_bytes(self, key: str, data: bytes) -> None:
        def go():
            self.runner.makedirs(posixpath.dirname(self._p(key)))
            self.runner.write_atomic(self._p(key), data)
        self._call(f"upload of {key}", go)

    def get_bytes(self, key: str) -> bytes:
        return self._call(f"download of {key}", self.runner.read_bytes, self._p(key))

    def stored_sha256(self, key: str) -> str | None:
        p = self._p(key) + ".sha256"
        if not self._call(f"reading {key}.sha256", self.runner.exists, p):
            return None
        return self._call(f"reading {key}.sha256", self.runner.read_bytes, p).decode().strip() or None

    def digest(self, key: str) -> tuple[str, int]:
        """(sha256, bytes) of the stored object, computed where it is."""
        return self._call(f"hashing {key}", self.runner.sha256, self._p(key))

    def stream(self, key: str, sink=None) -> tuple[str, int]:
        def go():
            h = hashlib.sha256()
            n = 0
            with self.runner.open_read(self._p(key)) as f:
                for b in iter(lambda: f.read(CHUNK), b""):
                    h.update(b)
                    n += len(b)
                    if sink is not None:
                        sink(b)
            return h.hexdigest(), n
        return self._call(f"download of {key}", go)

    def delete(self, keys: list[str]) -> None:
        for k in keys:
            self._call(f"delete of {k}", self.runner.remove, self._p(k))
            if not k.endswith(MANIFEST_SUFFIX):
                self._call(f"delete of {k}.sha256", self.runner.remove, self._p(k) + ".sha256")


def _ssh_host_for(t: Target, inv) -> tuple[Host, str]:
    """The Host to reach an SSH target through, and the target's root folder there."""
    if inv is not None and t.ssh_host in inv.hosts:
        h = inv.hosts[t.ssh_host]
        return h, t.path or posixpath.join(h.backup.dir, "offsite")
    if t.path is None:
        raise UsageError(f"offsite target {t.name!r}: {t.ssh_host!r} is not an inventory host")
    u = urllib.parse.urlparse(t.url)
    h = Host(name=f"offsite-{t.name}", connection="ssh", project_dir=t.path,
             ssh=SSHSettings(host=u.hostname, port=u.port or 22, user=u.username))
    return h, t.path


def store_for(t: Target, inv=None, **kw):
    if t.scheme == "s3":
        return S3Store(t, **kw)
    h, root = _ssh_host_for(t, inv)
    return RunnerStore(t, h, root)


# ------------------------------------------------------------------ remote catalog
@dataclass
class RemoteBackup:
    target: Target
    key: str
    origin: str
    name: str
    manifest: dict | None
    size: int | None

    @property
    def started_at(self):
        return parse_iso((self.manifest or {}).get("started_at"))

    @property
    def status(self) -> str:
        if self.manifest is None:
            return "NO-MANIFEST"
        st = self.manifest.get("status", "?")
        return "MISSING" if st == "DONE" and self.size is None else st

    @property
    def database(self):
        return (self.manifest or {}).get("database")

    def to_json(self) -> dict:
        m = self.manifest or {}
        return {"target": self.target.name, "key": self.key, "origin_host": self.origin, "name": self.name,
                "database": self.database, "status": self.status, "kind": m.get("kind"),
                "started_at": iso(self.started_at), "bytes": self.size, "sha256": m.get("sha256")}


def remote_catalog(store, t: Target) -> list[RemoteBackup]:
    """What a target holds, newest first (archives with their manifests)."""
    keys = store.list()
    pre = (t.prefix + "/") if t.prefix else ""
    out = []
    for k, size in keys.items():
        rel = k[len(pre):]
        if "/" not in rel:
            continue
        origin, name = rel.split("/", 1)
        if "/" in name:
            continue
        if name.endswith(MANIFEST_SUFFIX):
            arch = name[: -len(MANIFEST_SUFFIX)]
            try:
                man = json.loads(store.get_bytes(k))
            except ValueError:
                man = None
            if not isinstance(man, dict) or man.get("schema_version") != SCHEMA_VERSION:
                man = None
            out.append(RemoteBackup(t, k[: -len(MANIFEST_SUFFIX)], origin, arch, man, keys.get(k[: -len(MANIFEST_SUFFIX)])))
        elif is_archive_file(name) and (k + MANIFEST_SUFFIX) not in keys:
            out.append(RemoteBackup(t, k, origin, name, None, size))
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    out.sort(key=lambda r: (r.started_at or epoch, r.name), reverse=True)
    return out
