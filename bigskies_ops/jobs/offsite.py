"""``db.offsite``: copies of the archives somewhere else, verified, with the same retention.

Targets are the host's inventory ``offsite:`` list. An S3 target
(``url: s3://bucket/prefix`` with optional ``endpoint``, ``region`` and the NAMES
of the credential variables ``access_key_env``/``secret_key_env``, or a
``profile``) is reached with boto3, so any S3-compatible endpoint works; large
files go up in multipart uploads.

Layout on a target: ``<prefix>/<origin_host>/<archive>`` and, beside it,
``<archive>.manifest.json``. Each archive object carries its sha256 in the object
metadata (``x-amz-meta-sha256``): the S3 ETag is not a digest for multipart
uploads. After an upload the object is read back and hashed; only a match is
recorded in the local manifest's ``offsite`` list. What is "not yet offsite" is
decided from that list and the target's listing, so a run that failed (target
unreachable, wrong credentials) is simply retried by the next run.

Remote retention is :func:`bigskies_ops.jobs.retention.plan` over the manifests held
by the target, with the host's policy.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import urllib.parse
from dataclasses import dataclass, field

from bigskies_ops.archives.catalog import (MANIFEST_SUFFIX, PARTIAL_SUFFIX, SCHEMA_VERSION, Backup, iso, list_backups, parse_iso,
                      read_manifest, utcnow, write_manifest)
from bigskies_ops.errors import ArchiveError, BigskiesError, StorageError, UsageError
from bigskies_ops.inventory import Host
from bigskies_ops.archives.locks import host_lock

CHUNK = 1 << 20
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
        from bigskies_ops.hosts import runner_for
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
    from bigskies_ops.inventory import SSHSettings
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
    from bigskies_ops.archives.catalog import is_archive_file
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
    from datetime import datetime, timezone
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    out.sort(key=lambda r: (r.started_at or epoch, r.name), reverse=True)
    return out


# ------------------------------------------------------------------ upload
@dataclass
class TargetResult:
    target: str
    uploaded: list[str] = field(default_factory=list)
    already: int = 0
    pruned: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    error: str | None = None
    exit_code: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict:
        return {"target": self.target, "ok": self.ok, "uploaded": self.uploaded, "already_offsite": self.already,
                "pruned_remote": self.pruned, "skipped": self.skipped, "error": self.error}


def _local_sha(path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(CHUNK), b""):
            h.update(b)
            n += len(b)
    return h.hexdigest(), n


def _record_copy(runner, host: Host, b: Backup, rec: dict, notify) -> dict:
    db = b.database or host.postgres.database
    with host_lock(runner, b.dir, host.name, db, "db.offsite", notify=notify):
        man = read_manifest(runner, b.path)
        if man is None:
            raise StorageError(f"{b.manifest_path} disappeared")
        copies = [c for c in man.get("offsite") or [] if c.get("target") != rec["target"]]
        man["offsite"] = copies + [rec]
        write_manifest(runner, b.path, man)
        return man


def upload(host: Host, target: str | None = None, *, notify=print, multipart_threshold: int = MULTIPART_THRESHOLD,
           apply_retention: bool = True, now=None, inv=None) -> list[TargetResult]:
    """Copy every DONE archive (with its manifest) that a target lacks, verify each copy by
    reading it back, record it in the local manifest, then apply retention on the target.

    A failing target does not stop the others; its :class:`TargetResult` carries the error.
    """
    from bigskies_ops.hosts import runner_for
    tlist = targets(host, target)
    runner = runner_for(host)  # the archives stream from where they are (SSH hosts: over the SSH layer)
    try:
        return [_upload_one(host, runner, t, inv, notify, multipart_threshold, apply_retention, now) for t in tlist]
    finally:
        runner.close()


def _upload_one(host, runner, t, inv, notify, multipart_threshold, apply_retention, now) -> TargetResult:
    res = TargetResult(t.name)
    store = None
    try:
        store = store_for(t, inv, **({"multipart_threshold": multipart_threshold} if t.scheme == "s3" else {}))
        remote = store.list()
        everything = list_backups(runner, host.backup.dir, include_all=True)
        backups = [b for b in everything if b.status == "DONE" and b.manifest.get("sha256")]
        wanted = _kept_by_retention(host, everything, now) if apply_retention else None
        for b in sorted(backups, key=lambda b: (b.started_at, b.name)):
            if wanted is not None and (b.origin_host or host.name, b.name) not in wanted:
                continue  # the target's retention would delete it again right away
            origin = b.origin_host or host.name
            key = t.key(origin, b.name)
            have = [c for c in b.manifest.get("offsite") or [] if c.get("target") == t.name]
            if have and remote.get(key) == b.size and (key + MANIFEST_SUFFIX) in remote:
                res.already += 1
                continue
            sha, size = _source_sha(runner, b.path)
            if sha != b.manifest["sha256"] or size != b.manifest.get("bytes", size):
                res.skipped.append(f"{b.name}: local archive differs from its manifest; not copied (run db.verify)")
                continue
            notify(f"Uploading {b.name} ({size} bytes) to {t.name}")
            store.put_file(runner, b.path, key, sha)
            rsha, rsize = store.digest(key)
            meta = store.stored_sha256(key)
            if rsha != sha or rsize != size or meta != sha:
                raise OffsiteError(f"offsite target {t.name!r}: the uploaded copy of {b.name} does not match "
                                   f"(sha256 read back {rsha[:12]}, stored {str(meta)[:12]}, local {sha[:12]})")
            rec = {"target": t.name, "url": f"{t.url.rstrip('/')}/{origin}/{b.name}",
                   "key": key, "uploaded_at": iso(utcnow()), "sha256": sha, "bytes": size,
                   "verified_at": iso(utcnow())}
            man = _record_copy(runner, host, b, rec, notify)
            store.put_bytes(key + MANIFEST_SUFFIX,
                            json.dumps(man, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n")
            res.uploaded.append(b.name)
        if apply_retention:
            res.pruned = prune_remote(host, t, store, now=now)
    except BigskiesError as e:
        res.error = str(e)
        res.exit_code = e.exit_code
    finally:
        if store is not None:
            store.close()
    return res


def _source_sha(runner, path: str) -> tuple[str, int]:
    """(sha256, bytes) of an archive where it is (computed there)."""
    return runner.sha256(path)


def _kept_by_retention(host: Host, backups: list[Backup], now) -> set[tuple[str, str]]:
    from bigskies_ops.jobs.retention import entry_of, plan
    p = plan([entry_of(b, b.origin_dir or host.name) for b in backups], host.retention,
             keep_safety_days=host.backup.keep_safety_days, now=now or utcnow())
    return {(d.entry.origin_host, d.entry.name) for d in p.keep}


def prune_remote(host: Host, t: Target, store, *, now=None) -> list[str]:
    """Apply the host's retention to what the target holds; returns deleted keys."""
    from bigskies_ops.jobs.retention import Entry, plan
    entries = []
    by_name = {}
    for r in remote_catalog(store, t):
        if r.manifest is None:
            continue  # a copy without a manifest is not ours to judge: left alone
        m = r.manifest
        e = Entry(name=r.name, origin_host=r.origin, database=m.get("database"), started_at=r.started_at,
                  status=r.status, kind=m.get("kind", "?"),
                  verified=any(v.get("ok") for v in m.get("verifications") or []), path=r.key)
        entries.append(e)
        by_name[(r.origin, r.name)] = r
    p = plan(entries, host.retention, keep_safety_days=host.backup.keep_safety_days, now=now or utcnow())
    keys = []
    for d in p.prune:
        keys += [d.entry.path, d.entry.path + MANIFEST_SUFFIX]
    if keys:
        store.delete(keys)
    return [d.entry.name for d in p.prune]


# ------------------------------------------------------------------ verify, list, fetch
def verify_remote(host: Host, target: str, spec: str | None, all_: bool, *, notify=print, inv=None):
    """Read each selected object back and compare its sha256 with the one stored with it and
    with the manifest's (remote and, when present, local). Records the result locally."""
    [t] = targets(host, target)
    store = store_for(t, inv)
    try:
        return _verify_remote(host, t, store, spec, all_, notify)
    finally:
        store.close()


def _verify_remote(host, t, store, spec, all_, notify):
    from bigskies_ops.hosts.local import LocalRunner
    from bigskies_ops.jobs.verify import VerifyResult
    cat = [r for r in remote_catalog(store, t) if r.status == "DONE"]
    chosen = _choose(host, cat, spec, all_)
    lr = LocalRunner()
    out = []
    for r in chosen:
        res = VerifyResult(f"{t.url.rstrip('/')}/{r.origin}/{r.name}", r.name, False, [])
        local_dir = host.backup.dir if r.origin == host.name else posixpath.join(host.backup.dir, r.origin)
        local_man = None if host.is_remote else read_manifest(lr, posixpath.join(local_dir, r.name))
        try:
            meta = store.stored_sha256(r.key)
            sha, size = store.digest(r.key)
            want = r.manifest.get("sha256")
            if meta is None:
                raise OffsiteError(f"{r.key}: the object carries no sha256 metadata")
            if sha != meta:
                raise OffsiteError(f"{r.key}: object changed on the target: its content's sha256 {sha[:16]}... "
                                   f"differs from the sha256 stored with it {meta[:16]}...")
            if want and sha != want:
                raise OffsiteError(f"{r.key}: sha256 differs from the manifest's")
            if local_man and local_man.get("sha256") and local_man["sha256"] != sha:
                raise OffsiteError(f"{r.key}: sha256 differs from the local manifest's")
            res.checks = ["object sha256 = stored sha256", "= manifest sha256"]
            res.ok = True
        except OffsiteError as e:
            res.error = str(e)
        if local_man is not None:
            try:
                b = Backup(local_dir, r.name, local_man, None)
                _record_remote_check(lr, host, b, t.name, res.ok, res.error, notify)
                res.recorded = True
            except BigskiesError as e:
                res.notes.append(f"not recorded: {e}")
        out.append(res)
    return out


def _record_remote_check(runner, host, b: Backup, target: str, ok: bool, error: str | None, notify) -> None:
    with host_lock(runner, b.dir, host.name, b.database or host.postgres.database, "db.verify --offsite",
                   notify=notify):
        man = read_manifest(runner, b.path)
        if man is None:
            return
        for c in man.get("offsite") or []:
            if c.get("target") == target:
                c["last_check_at"] = iso(utcnow())
                c["last_check_ok"] = ok
                c["last_check_error"] = error
        write_manifest(runner, b.path, man)


def _choose(host: Host, cat: list[RemoteBackup], spec: str | None, all_: bool) -> list[RemoteBackup]:
    if all_:
        return cat
    db = host.postgres.database
    if spec in (None, "", "latest"):
        for r in cat:  # newest first
            if r.origin == host.name and r.database == db:
                return [r]
        raise ArchiveError(f"the offsite target holds no DONE backup of {db!r} from {host.name}")
    base = os.path.basename(spec)
    for r in cat:
        if base == r.name or spec in (r.key, f"{r.origin}/{r.name}"):
            return [r]
    raise ArchiveError(f"{spec}: not on the offsite target")


def list_remote(host: Host, target: str, inv=None) -> list[RemoteBackup]:
    [t] = targets(host, target)
    store = store_for(t, inv)
    try:
        return remote_catalog(store, t)
    finally:
        store.close()


def fetch(host: Host, target: str, spec: str | None, *, notify=print, inv=None) -> str:
    """Download a backup from a target into the local backup folder (``<origin>/`` for other
    origins) through a ``.partial`` file, check its sha256 against the stored one and the
    manifest's, then publish it with its manifest. Returns the local archive path.

    Raises:
        ArchiveError: the copy does not match (the ``.partial`` is removed).
        OffsiteError: the target is unreachable or refuses us.
    """
    [t] = targets(host, target)
    store = store_for(t, inv)
    try:
        return _fetch(host, t, store, spec, notify, inv)
    finally:
        store.close()


def fetch_dir(host: Host, inv=None) -> str:
    """Where fetched copies land on the control machine: the host's backup folder for a local
    host; for an SSH host (whose backup folder is over there, or gone) a local folder
    ``<inventory folder>/offsite-fetched/<host>``."""
    if not host.is_remote:
        return host.backup.dir
    import tempfile
    base = str(inv.base_dir) if inv is not None else tempfile.gettempdir()
    return os.path.join(base, "offsite-fetched", host.name)


def _fetch(host, t, store, spec, notify, inv=None) -> str:
    from bigskies_ops.hosts.local import LocalRunner
    cat = [r for r in remote_catalog(store, t) if r.status == "DONE"]
    [r] = _choose(host, cat, spec, False)
    lr = LocalRunner()
    base = fetch_dir(host, inv)
    d = base if r.origin == host.name else posixpath.join(base, r.origin)
    lr.makedirs(d)
    final = posixpath.join(d, r.name)
    want = r.manifest.get("sha256")
    if lr.exists(final):
        sha, _ = _local_sha(final)
        if sha == want:
            notify(f"{final} is already here with the right sha256; not downloading it again")
            if read_manifest(lr, final) is None:
                write_manifest(lr, final, dict(r.manifest, fetched_from=f"{t.url}", fetched_at=iso(utcnow())))
            return final
        raise ArchiveError(f"{final} exists locally with different content; move it away first")
    partial = final + PARTIAL_SUFFIX
    notify(f"Fetching {r.key} from {t.name} into {partial}")
    try:
        with open(partial, "wb") as f:
            sha, size = store.stream(r.key, sink=f.write)
            f.flush()
            os.fsync(f.fileno())
        meta = store.stored_sha256(r.key)
        if sha != meta or (want and sha != want):
            raise ArchiveError(f"{r.key}: the downloaded copy's sha256 does not match the one stored with it or "
                               f"the manifest's; not restoring it")
        with host_lock(lr, base, host.name, r.database or host.postgres.database, "db.restore --from-offsite",
                       notify=notify):
            if not lr.link_noreplace(partial, final):
                raise ArchiveError(f"{final} appeared while we were downloading; refusing to overwrite it")
            write_manifest(lr, final, dict(r.manifest, fetched_from=f"{t.url}", fetched_at=iso(utcnow())))
    finally:
        lr.remove(partial)
    return final
