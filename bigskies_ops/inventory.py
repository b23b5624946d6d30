"""Load and validate the YAML inventory into frozen dataclasses.

Pure apart from reading the one file: no connection is made here. The shape is
CONTRACTS.md section 1; every key, its default and an example are documented in
docs/inventory.md. Errors name the path of the fault
(``hosts.prod.ssh.port: expected an integer``) and unknown keys get a
"did you mean" hint. Precedence: ``defaults`` < group vars < host.
"""
from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field, fields, replace
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from bigskies_ops import yamlfile

from bigskies_ops.cron import CRON_MACROS, cron_field_values, cron_fields  # noqa: F401 - the one cron rule, re-exported
from bigskies_ops.errors import InventoryError
from bigskies_ops.text import did_you_mean

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HOST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
FORMATS = ("plain", "custom")
SECRET_KEYS = ("password", "become_password", "passphrase", "secret", "secret_key",
               "access_key", "aws_secret_access_key", "webhook", "webhook_url", "urls")
#: notification events (docs/monitoring.md "Notifications"); ``failure`` names the first five
NOTIFY_EVENTS = ("backup_failed", "verify_failed", "offsite_failed", "prune_skipped", "health_degraded",
                 "restore_protected", "success")
NOTIFY_ALIASES = {"failure": NOTIFY_EVENTS[:5], "all": NOTIFY_EVENTS}
HEARTBEAT_STYLES = ("healthchecks", "uptime-kuma")


# --------------------------------------------------------------------------- dataclasses
@dataclass(frozen=True)
class SSHSettings:
    host: str | None = None
    port: int = 22
    user: str | None = None
    key_filename: str | None = None
    config_alias: str | None = None
    config_file: str | None = None
    known_hosts_file: str | None = None
    gateway: str | None = None
    connect_timeout: float = 10.0
    host_key_checking: bool = True
    become: bool = False
    become_password_env: str | None = None


@dataclass(frozen=True)
class PostgresSettings:
    host: str | None = None
    port: int = 5432
    socket_dir: str | None = None
    database: str = "bigskies"
    user: str = "bigskies"
    password_env: str | None = None
    passfile: str | None = None
    bindir: str | None = None
    maintenance_db: str = "postgres"
    connect_timeout: int = 10


@dataclass(frozen=True)
class ContainerSettings:
    name: str = "bigskies-postgres"
    engine_command: str = "docker"
    exec_user: str | None = None

    @property
    def engine_argv(self) -> list[str]:
        return shlex.split(self.engine_command)


@dataclass(frozen=True)
class ComposeSettings:
    command: str = "docker compose"
    file: str = "docker-compose.yml"
    volume: str = "postgres_data"
    project_name: str | None = None

    @property
    def command_argv(self) -> list[str]:
        return shlex.split(self.command)


@dataclass(frozen=True)
class BackupSettings:
    dir: str = "backups/database"
    format: str = "plain"
    compress_level: int = 1
    keep_pre_restore: int = 2
    keep_safety_days: int = 30
    #: save the server's roles beside each archive; None = the default: on for a host with
    #: a compose stack (its scenarios restore with roles), off otherwise
    roles: bool | None = None
    stall_timeout: float = 300.0
    #: seconds a backup may wait for a lock (pg_dump --lock-wait-timeout; our own
    #: sessions' lock_timeout); None: wait as long as it takes (reported while it lasts)
    lock_wait_timeout: float | None = None
    #: refuse a backup when the backup folder has less free space than it will take
    #: (the last backup of that database and format plus 20%, else the database's size)
    space_check: bool = True


@dataclass(frozen=True)
class RetentionSettings:
    daily: int = 7
    weekly: int = 4
    monthly: int = 12


@dataclass(frozen=True)
class AlertSettings:
    max_age_hours: float = 26.0
    size_change_pct: float = 50.0
    webhook_env: str | None = None


@dataclass(frozen=True)
class NotifySettings:
    """``notify:``: apprise targets (their URLs in the variables NAMED by ``urls_env``) and
    the events (or aliases, :data:`NOTIFY_ALIASES`) they receive."""
    urls_env: tuple[str, ...] = ()
    on: tuple[str, ...] = ("failure", "restore_protected")

    @property
    def events(self) -> frozenset:
        """``on`` with its aliases expanded into event names (:data:`NOTIFY_EVENTS`)."""
        return frozenset(e for o in self.on for e in NOTIFY_ALIASES.get(o, (o,)))


@dataclass(frozen=True)
class HeartbeatSettings:
    """``heartbeat:``: the scheduled run's ping URL (in the variable NAMED by ``url_env``),
    pinged at start, success and failure in ``style``; ``timeout`` seconds per attempt."""
    url_env: str | None = None
    style: str = "healthchecks"
    timeout: float = 10.0


@dataclass(frozen=True)
class MigrationSettings:
    dir: str = "configs/sql"


@dataclass(frozen=True)
class MetricsSettings:
    #: the Prometheus textfile (``*.prom``, a path on the machine running bigskies-ops)
    #: that ``db.scheduled-run`` rewrites after each run (docs/monitoring.md "Metrics");
    #: None: no file is refreshed
    textfile: str | None = None


@dataclass(frozen=True)
class Host:
    """One inventory host, fully resolved (defaults and group vars merged in)."""

    name: str
    connection: str = "local"
    ssh: SSHSettings = field(default_factory=SSHSettings)
    project_dir: str | None = None
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    container: ContainerSettings | None = None
    compose: ComposeSettings | None = None
    coordinators: tuple[str, ...] = ()
    backup: BackupSettings = field(default_factory=BackupSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    offsite: tuple[dict, ...] = ()
    schedule: str = "0 2 * * *"
    alerts: AlertSettings = field(default_factory=AlertSettings)
    migrations: MigrationSettings = field(default_factory=MigrationSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)
    heartbeat: HeartbeatSettings = field(default_factory=HeartbeatSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    protected: bool = False
    groups: tuple[str, ...] = ()
    # dotted keys the inventory sets for this host (in defaults, group vars or the host),
    # e.g. "backup.format": tells an explicit choice from a built-in default
    explicit: frozenset = field(default=frozenset(), compare=False, repr=False)

    def is_set(self, key: str) -> bool:
        """Whether the inventory sets ``key`` (dotted, e.g. ``"backup.format"``) for this host,
        rather than leaving it at its built-in default."""
        return key in self.explicit

    @property
    def is_remote(self) -> bool:
        return self.connection == "ssh"

    @property
    def access_mode(self) -> str:
        """``local-native``, ``local-container``, ``ssh-native`` or ``ssh-container``."""
        return f"{'ssh' if self.is_remote else 'local'}-{'container' if self.container else 'native'}"


@dataclass(frozen=True)
class Inventory:
    path: Path
    hosts: dict[str, Host]
    groups: dict[str, tuple[str, ...]]
    default_host: str | None = None

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve(self, selector: str | None) -> list[Host]:
        """Turn a ``--host`` value into hosts.

        ``selector`` may be a host, a group, ``all``, or a comma list of those.
        Without one (None): ``defaults.host``, else the only host.

        Raises:
            InventoryError: unknown name, an empty ``selector`` (``--host ""``), or no
                selector and several hosts.
        """
        if selector is not None and not selector.replace(",", "").strip():
            # an explicit empty value (a script's unset variable) never means "the default host"
            raise InventoryError(f"--host {selector!r} names no host; pass a host, a group or 'all' "
                                 f"(known: {', '.join(sorted(set(self.hosts) | set(self.groups)))})")
        if not selector:
            if self.default_host:
                return [self.hosts[self.default_host]]
            if len(self.hosts) == 1:
                return list(self.hosts.values())
            raise InventoryError(
                f"several hosts in {self.path}; pass --host one of: {', '.join(sorted(self.hosts))}")
        out: list[Host] = []
        for part in [p.strip() for p in selector.split(",") if p.strip()]:
            if part in self.hosts:
                names = [part]
            elif part == "all":
                names = list(self.hosts)
            elif part in self.groups:
                names = list(self.groups[part])
            else:
                known = sorted(set(self.hosts) | set(self.groups))
                raise InventoryError(f"unknown host or group {part!r}{did_you_mean(part, known)}; "
                                     f"known: {', '.join(known)}")
            for n in names:
                if self.hosts[n] not in out:
                    out.append(self.hosts[n])
        if not out:
            raise InventoryError(f"--host {selector!r} selects no host")
        return out

    def host(self, name: str | None) -> Host:
        """Resolve exactly one host (see :meth:`resolve`).

        Raises:
            InventoryError: unknown name, or the selector names several hosts.
        """
        hosts = self.resolve(name)
        if len(hosts) != 1:
            raise InventoryError(f"--host {name!r} selects {len(hosts)} hosts; this task takes one")
        return hosts[0]


# --------------------------------------------------------------------------- schema
# kind: "str" | "int" | "float" | "bool" | "envname" | ("enum", values) | "strlist" | "block"
_SSH = {"host": "str", "port": "port", "user": "str", "key_filename": "str",
        "config_alias": "str", "config_file": "str", "known_hosts_file": "str", "gateway": "str",
        "connect_timeout": "float", "host_key_checking": "bool", "become": "bool",
        "become_password_env": "envname"}
_POSTGRES = {"host": "str", "port": "port", "socket_dir": "str", "database": "str", "user": "str",
             "password_env": "envname", "passfile": "str", "bindir": "str", "maintenance_db": "str",
             "connect_timeout": "int"}
_CONTAINER = {"name": "str", "engine_command": "str", "exec_user": "str"}
_COMPOSE = {"command": "str", "file": "str", "volume": "str", "project_name": "str"}
_BACKUP = {"dir": "str", "format": ("enum", FORMATS), "compress_level": ("range", 0, 9),
           "keep_pre_restore": ("range", 0, 1000), "keep_safety_days": ("range", 0, 100000),
           "roles": "bool", "stall_timeout": "float", "lock_wait_timeout": "float",
           "space_check": "bool"}
_RETENTION = {"daily": ("range", 0, 10000), "weekly": ("range", 0, 10000), "monthly": ("range", 0, 10000)}
_ALERTS = {"max_age_hours": "float", "size_change_pct": "float", "webhook_env": "envname"}
_MIGRATIONS = {"dir": "str"}
_NOTIFY = {"urls_env": "envlist", "on": "events"}
_HEARTBEAT = {"url_env": "envname", "style": ("enum", HEARTBEAT_STYLES), "timeout": "float"}
_METRICS = {"textfile": "str"}
_OFFSITE_ITEM = {"name": "str", "url": "str", "endpoint": "str", "region": "str",
                 "access_key_env": "envname", "secret_key_env": "envname", "profile": "str", "host": "str"}
_BLOCKS = {"ssh": _SSH, "postgres": _POSTGRES, "container": _CONTAINER, "compose": _COMPOSE,
           "backup": _BACKUP, "retention": _RETENTION, "alerts": _ALERTS, "migrations": _MIGRATIONS,
           "notify": _NOTIFY, "heartbeat": _HEARTBEAT, "metrics": _METRICS}
HOST_KEYS = {"connection": ("enum", ("local", "ssh")), "project_dir": "str", "coordinators": "strlist",
             "offsite": "offsite", "schedule": "cron", "protected": "bool", **{k: "block" for k in _BLOCKS}}
_DATACLASS = {"ssh": SSHSettings, "postgres": PostgresSettings, "container": ContainerSettings,
              "compose": ComposeSettings, "backup": BackupSettings, "retention": RetentionSettings,
              "alerts": AlertSettings, "migrations": MigrationSettings, "notify": NotifySettings,
              "heartbeat": HeartbeatSettings, "metrics": MetricsSettings}



def _check_scalar(path: str, kind, value: Any) -> Any:
    if kind == "cron":
        if not isinstance(value, str):
            raise InventoryError(f"{path}: expected a cron expression in quotes (\"0 2 * * *\")")
        cron_fields(value, path)
        return value
    if kind in ("str",):
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise InventoryError(f"{path}: expected a string")
        return str(value)
    if kind == "envname":
        if not isinstance(value, str) or not ENV_NAME_RE.match(value):
            raise InventoryError(f"{path}: expected the NAME of an environment variable "
                                 f"(letters, digits, underscore), not a value")
        return value
    if kind in ("int", "port") or (isinstance(kind, tuple) and kind[0] == "range"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise InventoryError(f"{path}: expected an integer")
        lo, hi = (1, 65535) if kind == "port" else (kind[1], kind[2]) if isinstance(kind, tuple) else (0, 10**9)
        if not lo <= value <= hi:
            raise InventoryError(f"{path}: expected an integer from {lo} to {hi}, got {value}")
        return value
    if kind == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise InventoryError(f"{path}: expected a non-negative number")
        return float(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise InventoryError(f"{path}: expected true or false")
        return value
    if isinstance(kind, tuple) and kind[0] == "enum":
        if value not in kind[1]:
            raise InventoryError(f"{path}: expected one of {', '.join(kind[1])}, got {value!r}"
                                 f"{did_you_mean(str(value), kind[1])}")
        return value
    if kind == "envlist":  # one NAME or a list of them
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list):
            raise InventoryError(f"{path}: expected a list of environment variable NAMES")
        return tuple(_check_scalar(f"{path}[{i}]", "envname", v) for i, v in enumerate(names))
    if kind == "events":
        names = [value] if isinstance(value, str) else value
        known = list(NOTIFY_EVENTS) + list(NOTIFY_ALIASES)
        if not isinstance(names, list):
            raise InventoryError(f"{path}: expected a list of events ({', '.join(known)})")
        for v in names:
            if v not in known:
                raise InventoryError(f"{path}: unknown event {v!r}{did_you_mean(str(v), known)}; known: {', '.join(known)}")
        return tuple(names)
    if kind == "strlist":
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise InventoryError(f"{path}: expected a list of names")
        return tuple(value)
    raise AssertionError(kind)  # pragma: no cover


def _reject_secret(path: str, key: str) -> None:
    if key.lower() in SECRET_KEYS:
        raise InventoryError(
            f"{path}.{key}: literal secrets are not allowed in the inventory; name an environment "
            f"variable instead ({key}_env: NAME) or use a passfile")


def _check_block(path: str, spec: dict, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InventoryError(f"{path}: expected a mapping")
    out = {}
    for k, v in value.items():
        # YAML 1.1 (PyYAML) reads an unquoted key `on` as true: notify's `on:` is meant
        k = "on" if k is True and "on" in spec else str(k)
        _reject_secret(path, k)
        if k == "url" and "url_env" in spec:  # a ping URL holds its token: a variable names it
            raise InventoryError(f"{path}.url: literal secrets are not allowed in the inventory; name an "
                                 f"environment variable instead (url_env: NAME)")
        if k not in spec:
            raise InventoryError(f"{path}.{k}: unknown key{did_you_mean(k, spec)}")
        if v is None:
            continue
        out[k] = _check_scalar(f"{path}.{k}", spec[k], v)
    return out


def _check_offsite(path: str, value: Any) -> tuple:
    if not isinstance(value, list):
        raise InventoryError(f"{path}: expected a list of targets")
    items = []
    for i, item in enumerate(value):
        p = f"{path}[{i}]"
        d = _check_block(p, _OFFSITE_ITEM, item)
        if "url" not in d and "host" not in d:
            raise InventoryError(f"{p}: needs url (s3://bucket/prefix or ssh://host/path) or host")
        d.setdefault("name", d.get("host") or d["url"])
        items.append(d)
    return tuple(items)


def _check_host_keys(path: str, raw: Any, extra: tuple[str, ...] = ()) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InventoryError(f"{path}: expected a mapping")
    out: dict = {}
    for k, v in raw.items():
        k = str(k)
        if k in extra:
            out[k] = v
            continue
        _reject_secret(path, k)
        if k not in HOST_KEYS:
            raise InventoryError(f"{path}.{k}: unknown key{did_you_mean(k, list(HOST_KEYS) + list(extra))}")
        kind = HOST_KEYS[k]
        if v is None:
            continue
        if kind == "block":
            out[k] = _check_block(f"{path}.{k}", _BLOCKS[k], v)
        elif kind == "offsite":
            out[k] = _check_offsite(f"{path}.{k}", v)
        else:
            out[k] = _check_scalar(f"{path}.{k}", kind, v)
    return out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def _resolve_local(base: Path, p: str) -> str:
    q = Path(os.path.expanduser(p))
    return str(q if q.is_absolute() else (base / q))


def _build_host(name: str, merged: dict, groups: tuple[str, ...], base: Path, path: str) -> Host:
    kw: dict[str, Any] = {"name": name, "groups": groups, "explicit": frozenset(
        [str(k) for k in merged] + [f"{k}.{kk}" for k, v in merged.items() if isinstance(v, dict) for kk in v])}
    for k, v in merged.items():
        if k in _DATACLASS:
            if k in ("container", "compose") and v is None:
                continue
            kw[k] = _DATACLASS[k](**v)
        else:
            kw[k] = v
    host = Host(**kw)
    # container/compose blocks: present (even empty, `container: {}`) means "use it"
    if "container" in merged and host.container is None:
        host = replace(host, container=ContainerSettings())
    if host.connection == "ssh":
        if not (host.ssh.host or host.ssh.config_alias):
            raise InventoryError(f"{path}.ssh: a connection: ssh host needs ssh.host or ssh.config_alias")
        if not host.project_dir:
            raise InventoryError(f"{path}.project_dir: required for connection: ssh (relative paths "
                                 f"on the remote host resolve against it)")
        if not PurePosixPath(host.project_dir).is_absolute():
            raise InventoryError(f"{path}.project_dir: must be an absolute path on the remote host")
    # paths on the control machine resolve against the inventory's folder
    ssh = host.ssh
    ssh = replace(ssh, **{k: _resolve_local(base, getattr(ssh, k))
                          for k in ("key_filename", "config_file", "known_hosts_file") if getattr(ssh, k)})
    host = replace(host, ssh=ssh)
    if host.metrics.textfile:  # node_exporter's textfile collector reads *.prom only
        if not host.metrics.textfile.endswith(".prom"):
            raise InventoryError(f"{path}.metrics.textfile: node_exporter's textfile collector reads only *.prom "
                                 f"files, got {host.metrics.textfile!r}")
        host = replace(host, metrics=replace(host.metrics, textfile=_resolve_local(base, host.metrics.textfile)))
    # paths on the host itself
    proj = host.project_dir or str(base)
    if not host.is_remote:
        proj = _resolve_local(base, proj)

    def on_host(p: str) -> str:
        if host.is_remote:
            return p if PurePosixPath(p).is_absolute() or p.startswith("~") else str(PurePosixPath(proj) / p)
        return _resolve_local(Path(proj), p)

    host = replace(host, project_dir=proj,
                   backup=replace(host.backup, dir=on_host(host.backup.dir)),
                   migrations=replace(host.migrations, dir=on_host(host.migrations.dir)))
    if host.postgres.passfile:
        host = replace(host, postgres=replace(host.postgres, passfile=on_host(host.postgres.passfile)))
    if host.compose:
        host = replace(host, compose=replace(host.compose, file=on_host(host.compose.file)))
    if host.coordinators and not host.compose:
        raise InventoryError(f"{path}.coordinators: coordinators are compose services; add a compose: block")
    if host.backup.roles is None:  # a compose stack's scenarios restore with roles: save them by default
        host = replace(host, backup=replace(host.backup, roles=host.compose is not None))
    return host


def default_inventory_path(explicit: str | None = None) -> Path:
    """``-i FILE``, else ``$BIGSKIES_INVENTORY``, else ``./inventory.yaml``."""
    return Path(explicit or os.environ.get("BIGSKIES_INVENTORY") or "inventory.yaml")


def load(path: str | Path | None = None) -> Inventory:
    """Read and validate an inventory file.

    Args:
        path: the YAML file; ``None`` uses :func:`default_inventory_path`.

    Returns:
        The validated :class:`Inventory` with every host fully resolved.

    Raises:
        InventoryError: missing or unreadable file, YAML syntax error, unknown key,
            wrong type, literal secret, or a group naming an unknown host. Exit code 2.
    """
    p = default_inventory_path(str(path) if path else None)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InventoryError(f"inventory {p}: file not found (pass -i FILE or set BIGSKIES_INVENTORY)")
    except UnicodeDecodeError as e:
        raise InventoryError(f"inventory {p}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})")
    except OSError as e:
        raise InventoryError(f"inventory {p}: {e.strerror}")
    try:
        doc = yamlfile.load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise InventoryError(f"inventory {p}:{where}: malformed YAML: {getattr(e, 'problem', e)}")
    return parse(doc, p)


def parse(doc: Any, path: Path) -> Inventory:
    """Validate an already-parsed YAML document (see :func:`load`)."""
    path = Path(path).resolve() if Path(path).exists() else Path(path).absolute()
    if not isinstance(doc, dict):
        raise InventoryError(f"inventory {path}: expected a mapping with hosts:")
    for k in doc:
        if k not in ("defaults", "groups", "hosts"):
            raise InventoryError(f"{k}: unknown top-level key{did_you_mean(str(k), ['defaults', 'groups', 'hosts'])}")
    base = path.parent
    defaults = _check_host_keys("defaults", doc.get("defaults"), extra=("host",))
    default_host = defaults.pop("host", None)
    raw_hosts = doc.get("hosts")
    if not isinstance(raw_hosts, dict) or not raw_hosts:
        raise InventoryError("hosts: expected a mapping of at least one host")
    checked = {}
    for name, raw in raw_hosts.items():
        name = str(name)
        if not HOST_NAME_RE.match(name) or name == "all":
            raise InventoryError(f"hosts.{name}: invalid host name (letters, digits, . _ -; 'all' is reserved)")
        checked[name] = _check_host_keys(f"hosts.{name}", raw)
    groups: dict[str, tuple[str, ...]] = {}
    group_vars: dict[str, dict] = {}
    raw_groups = doc.get("groups") or {}
    if not isinstance(raw_groups, dict):
        raise InventoryError("groups: expected a mapping of group name to a list of hosts")
    for g, members in raw_groups.items():
        g = str(g)
        gp = f"groups.{g}"
        if g == "all":
            raise InventoryError(f"{gp}: 'all' is reserved")
        if g in checked:
            raise InventoryError(f"{gp}: a host has that name; hosts and groups share one namespace")
        if isinstance(members, dict):
            for k in members:
                if k not in ("hosts", "vars"):
                    raise InventoryError(f"{gp}.{k}: unknown key{did_you_mean(str(k), ['hosts', 'vars'])}")
            group_vars[g] = _check_host_keys(f"{gp}.vars", members.get("vars"))
            members = members.get("hosts") or []
        if not isinstance(members, list):
            raise InventoryError(f"{gp}: expected a list of hosts")
        for m in members:
            if str(m) not in checked:
                raise InventoryError(f"{gp}: unknown host {m!r}{did_you_mean(str(m), checked)}")
        groups[g] = tuple(str(m) for m in members)
    hosts = {}
    for name, raw in checked.items():
        mine = tuple(g for g, ms in groups.items() if name in ms)
        merged = defaults
        for g in mine:
            merged = _merge(merged, group_vars.get(g, {}))
        merged = _merge(merged, raw)
        hosts[name] = _build_host(name, merged, mine, base, f"hosts.{name}")
    if default_host is not None and str(default_host) not in hosts:
        raise InventoryError(f"defaults.host: unknown host {default_host!r}{did_you_mean(str(default_host), hosts)}")
    return Inventory(path=path, hosts=hosts, groups=groups,
                     default_host=str(default_host) if default_host is not None else None)


def redacted_view(host: Host) -> dict:
    """The resolved host as plain data for ``inventory.show``; secrets are only ever
    variable NAMES, and we say whether each named variable is set (never its value)."""
    def conv(obj):
        if hasattr(obj, "__dataclass_fields__"):
            return {f.name: conv(getattr(obj, f.name)) for f in fields(obj)}
        if isinstance(obj, (tuple, list)):
            return [conv(o) for o in obj]
        return obj
    d = conv(host)
    d.pop("explicit", None)
    def state(name: str) -> str:
        return f"{name} ({'set' if name in os.environ else 'NOT SET'})"
    for block, key in (("postgres", "password_env"), ("ssh", "become_password_env"), ("alerts", "webhook_env"),
                       ("heartbeat", "url_env")):
        name = d.get(block, {}).get(key)
        if name:
            d[block][key] = state(name)
    d["notify"]["urls_env"] = [state(n) for n in host.notify.urls_env]
    d["access_mode"] = host.access_mode
    return d


def inventory_warnings(inv: Inventory) -> list[dict]:
    """What the inventory names but this machine lacks, per host: a password (or
    become/webhook/notify/heartbeat) variable that is not set here, an ``ssh.key_filename``,
    ``ssh.config_file`` or ``ssh.known_hosts_file`` that does not exist, a local host's
    ``postgres.passfile`` that does not exist.

    These are warnings, not errors (docs/inventory.md, "Checking an inventory"): the
    file is valid, and the same inventory is often checked where the secrets are not
    (a CI job, a colleague's laptop); the tasks that need them fail with the same
    message, and ``inventory.ping`` checks the hosts themselves.

    Returns:
        ``[{"host", "field", "message"}]`` in inventory order (``field``: the dotted path).
    """
    out: list[dict] = []
    for h in inv.hosts.values():
        def warn(fld: str, msg: str) -> None:
            out.append({"host": h.name, "field": f"hosts.{h.name}.{fld}", "message": msg})
        for fld, name in (("postgres.password_env", h.postgres.password_env),
                          ("ssh.become_password_env", h.ssh.become_password_env if h.ssh.become else None),
                          ("alerts.webhook_env", h.alerts.webhook_env),
                          ("heartbeat.url_env", h.heartbeat.url_env),
                          *((f"notify.urls_env[{i}]", n) for i, n in enumerate(h.notify.urls_env))):
            if name and name not in os.environ:
                warn(fld, f"environment variable {name} is not set here")
        if h.is_remote:
            for fld in ("key_filename", "config_file", "known_hosts_file"):
                p = getattr(h.ssh, fld)
                if p and not os.path.exists(p):
                    warn(f"ssh.{fld}", f"{p} does not exist")
        elif h.postgres.passfile and not h.container and not os.path.exists(h.postgres.passfile):
            warn("postgres.passfile", f"{h.postgres.passfile} does not exist")
        if h.metrics.textfile and not os.path.isdir(os.path.dirname(h.metrics.textfile)):
            warn("metrics.textfile", f"the folder of {h.metrics.textfile} does not exist: scheduled runs cannot "
                                     f"refresh the metrics file")
    return out
