"""GFS retention: the plan is a pure function (expected keep sets are literals), and
``db.prune`` applies it to a real folder of real dumps whose mtimes were reset."""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone

from bigskies_ops.inventory import RetentionSettings
from bigskies_ops.jobs.retention import Entry, plan
from tests.conftest import backed_up_once, cli, write_inventory
from tests.pgcheck import db_fingerprint, dir_hashes

NOW = datetime(2026, 11, 29, 9, 0, tzinfo=timezone.utc)


def t(s: str) -> datetime:
    return datetime.strptime(s, "%Y-%m-%d %H:%M").replace(tzinfo=timezone.utc)


def e(when: str, *, status="DONE", kind="scheduled", verified=False, origin="prod", db="bigskies", manifest=True):
    stamp = t(when).strftime("%Y%m%d_%H%M%S")
    return Entry(name=f"{db}_backup_{stamp}.sql.gz", origin_host=origin, database=db, started_at=t(when),
                 status=status, kind=kind, verified=verified, has_manifest=manifest)


def names(p, keep=True):
    return sorted(d.entry.name for d in p.decisions if d.keep == keep)


def reasons(p):
    return {d.entry.name: list(d.reasons) for d in p.decisions}


SCHEDULED = ["2026-11-28 02:00", "2026-11-27 02:00", "2026-11-27 14:00", "2026-11-25 02:00", "2026-11-20 02:00",
             "2026-11-16 02:00", "2026-11-10 02:00", "2026-10-31 02:00", "2026-10-05 02:00", "2026-09-30 02:00"]


def test_plan_keeps_newest_per_day_week_and_month_with_reasons():
    p = plan([e(w) for w in SCHEDULED], RetentionSettings(daily=3, weekly=2, monthly=2), keep_safety_days=30, now=NOW)
    assert names(p) == [
        "bigskies_backup_20261031_020000.sql.gz",
        "bigskies_backup_20261120_020000.sql.gz",
        "bigskies_backup_20261125_020000.sql.gz",
        "bigskies_backup_20261127_140000.sql.gz",
        "bigskies_backup_20261128_020000.sql.gz",
    ]
    r = reasons(p)
    assert r["bigskies_backup_20261128_020000.sql.gz"] == [
        "daily 2026-11-28", "weekly 2026-W48", "monthly 2026-11", "newest good backup"]
    assert r["bigskies_backup_20261127_140000.sql.gz"] == ["daily 2026-11-27"]
    assert r["bigskies_backup_20261120_020000.sql.gz"] == ["weekly 2026-W47"]
    assert r["bigskies_backup_20261031_020000.sql.gz"] == ["monthly 2026-10"]
    assert r["bigskies_backup_20261127_020000.sql.gz"] == ["beyond retention"]
    assert r["bigskies_backup_20260930_020000.sql.gz"] == ["beyond retention"]
    # newest first
    assert [d.entry.name for d in p.decisions][0] == "bigskies_backup_20261128_020000.sql.gz"


def test_days_without_a_backup_do_not_use_up_daily_slots():
    entries = [e("2026-11-28 02:00"), e("2026-11-20 02:00"), e("2026-11-01 02:00"), e("2026-10-01 02:00")]
    p = plan(entries, RetentionSettings(daily=3, weekly=0, monthly=0), keep_safety_days=30, now=NOW)
    assert names(p) == ["bigskies_backup_20261101_020000.sql.gz", "bigskies_backup_20261120_020000.sql.gz",
                        "bigskies_backup_20261128_020000.sql.gz"]


def test_safety_kinds_keep_their_days_and_fill_no_slot_and_verified_is_never_pruned():
    entries = [e(w) for w in SCHEDULED] + [
        e("2026-11-01 10:00", kind="manual"),            # 28 days old: kept (30 days)
        e("2026-10-20 10:00", kind="pre-restore"),       # 40 days old: pruned
        e("2026-11-28 23:00", kind="pre-migrate"),       # newest of all: kept, takes no daily slot
    ]
    entries[8] = e("2026-10-05 02:00", verified=True)    # the only verified backup
    p = plan(entries, RetentionSettings(daily=3, weekly=2, monthly=2), keep_safety_days=30, now=NOW)
    assert names(p) == [
        "bigskies_backup_20261005_020000.sql.gz",
        "bigskies_backup_20261031_020000.sql.gz",
        "bigskies_backup_20261101_100000.sql.gz",
        "bigskies_backup_20261120_020000.sql.gz",
        "bigskies_backup_20261125_020000.sql.gz",
        "bigskies_backup_20261127_140000.sql.gz",
        "bigskies_backup_20261128_020000.sql.gz",
        "bigskies_backup_20261128_230000.sql.gz",
    ]
    r = reasons(p)
    assert r["bigskies_backup_20261005_020000.sql.gz"] == ["newest verified good backup"]
    assert r["bigskies_backup_20261020_100000.sql.gz"] == ["pre-restore: safety backup older than 30 days"]
    assert r["bigskies_backup_20261101_100000.sql.gz"] == [
        "manual: safety backup kept until 2026-12-01 (keep_safety_days 30)"]


def test_failed_runs_partials_and_legacy_are_kept_unless_asked():
    entries = [e("2026-11-28 02:00"), e("2026-11-27 02:00"), e("2026-11-26 02:00", status="FAILED"),
               e("2026-11-25 02:00", status="MISSING"),
               Entry("bigskies_backup_20261127_120000.sql.gz.partial", "prod", "bigskies", t("2026-11-27 12:00"),
                     "PARTIAL", kind="partial", has_manifest=False),
               e("2025-01-05 02:00", status="LEGACY", kind="legacy", manifest=False),
               e("2025-01-04 02:00", status="LEGACY", kind="legacy", manifest=False)]
    rs = RetentionSettings(daily=1, weekly=0, monthly=0)
    p = plan(entries, rs, keep_safety_days=30, now=NOW)
    assert names(p, keep=False) == ["bigskies_backup_20261127_020000.sql.gz"]
    assert reasons(p)["bigskies_backup_20261126_020000.sql.gz"] == ["failed run: pruned only with --failed"]
    p = plan(entries, rs, keep_safety_days=30, now=NOW, include_failed=True)
    assert names(p, keep=False) == ["bigskies_backup_20261125_020000.sql.gz", "bigskies_backup_20261126_020000.sql.gz",
                                    "bigskies_backup_20261127_020000.sql.gz",
                                    "bigskies_backup_20261127_120000.sql.gz.partial"]
    p = plan(entries, RetentionSettings(daily=2, weekly=0, monthly=2), keep_safety_days=30, now=NOW,
             include_legacy=True)
    assert names(p) == ["bigskies_backup_20250105_020000.sql.gz",   # monthly 2025-01 (legacy takes part)
                        "bigskies_backup_20261125_020000.sql.gz",   # MISSING: needs --failed
                        "bigskies_backup_20261126_020000.sql.gz",   # FAILED: needs --failed
                        "bigskies_backup_20261127_020000.sql.gz",
                        "bigskies_backup_20261127_120000.sql.gz.partial",
                        "bigskies_backup_20261128_020000.sql.gz"]


def test_nothing_is_pruned_in_a_group_whose_newest_run_failed():
    entries = [e(w) for w in SCHEDULED] + [e("2026-11-29 02:00", status="FAILED"),
                                           e("2026-11-01 02:00", origin="staging")]
    p = plan(entries, RetentionSettings(daily=1, weekly=0, monthly=0), keep_safety_days=30, now=NOW,
             include_failed=True)
    assert list(p.refused) == [("prod", "bigskies")]
    assert "FAILED" in p.refused[("prod", "bigskies")]
    assert names(p, keep=False) == []


def test_groups_are_per_origin_host_and_database():
    entries = [e("2026-11-28 02:00"), e("2026-11-27 02:00"),
               e("2026-11-20 02:00", origin="staging"), e("2026-11-19 02:00", origin="staging"),
               e("2026-11-27 03:00", db="other"), e("2026-11-26 03:00", db="other")]
    p = plan(entries, RetentionSettings(daily=1, weekly=0, monthly=0), keep_safety_days=30, now=NOW)
    assert names(p) == ["bigskies_backup_20261120_020000.sql.gz", "bigskies_backup_20261128_020000.sql.gz",
                        "other_backup_20261127_030000.sql.gz"]


def test_all_tiers_zero_still_keep_the_newest_good_backup():
    p = plan([e(w) for w in SCHEDULED[:3]], RetentionSettings(daily=0, weekly=0, monthly=0),
             keep_safety_days=30, now=NOW)
    assert names(p) == ["bigskies_backup_20261128_020000.sql.gz"]


# ------------------------------------------------------------------ real folder, real dumps
FORTY = [f"2026-09-{d:02d}" for d in range(1, 31)] + [f"2026-10-{d:02d}" for d in range(1, 11)]


def _stamp(day: str, hm: str = "020000") -> str:
    return day.replace("-", "") + "_" + hm


def _populate(bdir, man, orig_bytes, db):
    for day in FORTY:
        name = f"{db}_backup_{_stamp(day)}.sql.gz"
        (bdir / name).write_bytes(orig_bytes)
        m = dict(man, archive=name, kind="scheduled", started_at=f"{day}T02:00:00Z", finished_at=f"{day}T02:00:09Z")
        (bdir / (name + ".manifest.json")).write_text(json.dumps(m))
    failed = f"{db}_backup_{_stamp('2026-10-05', '140000')}.sql.gz"
    (bdir / (failed + ".manifest.json")).write_text(json.dumps(dict(
        man, archive=failed, status="FAILED", sha256=None, bytes=None, error="pg_dump: connection lost",
        started_at="2026-10-05T14:00:00Z", kind="scheduled")))
    (bdir / f"{db}_backup_{_stamp('2026-10-09', '140000')}.sql.gz.partial").write_bytes(orig_bytes[:100])
    (bdir / f"{db}_backup_20250101_020000.sql.gz").write_bytes(orig_bytes)      # seed era, no manifest
    (bdir / f"{db}_backup_20250102_020000.sql.gz").write_bytes(orig_bytes)
    (bdir / "notes.txt").write_text("not a backup")
    (bdir / "README").write_text("not a backup either")
    (bdir / f"{db}_backup_latest.sql.gz").write_bytes(b"x")
    (bdir / "scratch").mkdir()
    (bdir / "scratch" / "keep.me").write_text("x")
    for p in bdir.rglob("*"):
        os.utime(p, (1_700_000_000, 1_700_000_000))  # every mtime reset by a copy


def test_prune_keeps_exactly_the_right_real_dumps_after_mtimes_were_reset(tmp_path, pg, pg_sql, dbname, cli_env):
    inv, bdir, orig, man = backed_up_once(tmp_path, pg, dbname, cli_env)
    data = (bdir / orig).read_bytes()
    (bdir / orig).unlink()
    (bdir / (orig + ".manifest.json")).unlink()
    _populate(bdir, man, data, dbname)
    live = db_fingerprint(pg_sql, dbname)
    before = dir_hashes(bdir)

    r = cli("db.prune", "-i", str(inv), "--dry-run", env=cli_env)
    assert r.returncode == 0, r.stderr
    assert dir_hashes(bdir) == before
    assert "weekly 2026-W39" in r.stdout and "beyond retention" in r.stdout

    r = cli("db.prune", "-i", str(inv), env=cli_env)
    assert r.returncode == 0, r.stderr + r.stdout
    kept_days = ["2026-09-20", "2026-09-27", "2026-09-30", "2026-10-04", "2026-10-05", "2026-10-06", "2026-10-07",
                 "2026-10-08", "2026-10-09", "2026-10-10"]
    expected = sorted(
        [f"{dbname}_backup_{_stamp(d)}.sql.gz" for d in kept_days]
        + [f"{dbname}_backup_{_stamp(d)}.sql.gz.manifest.json" for d in kept_days]
        + [f"{dbname}_backup_20261005_140000.sql.gz.manifest.json",      # FAILED run: only with --failed
           f"{dbname}_backup_20261009_140000.sql.gz.partial",            # .partial: only with --failed
           f"{dbname}_backup_20250101_020000.sql.gz", f"{dbname}_backup_20250102_020000.sql.gz",  # seed era
           "notes.txt", "README", f"{dbname}_backup_latest.sql.gz", "scratch/keep.me"])
    after = dir_hashes(bdir)
    assert sorted(after) == expected
    assert all(after[k] == before[k] for k in after)          # what is kept is untouched
    assert db_fingerprint(pg_sql, dbname) == live

    # a second run changes nothing; --failed then removes the failed run and the .partial only
    r = cli("db.prune", "-i", str(inv), env=cli_env)
    assert r.returncode == 0 and "ok" in r.stdout
    assert dir_hashes(bdir) == after
    r = cli("db.prune", "-i", str(inv), "--failed", "--json", env=cli_env)
    assert r.returncode == 0, r.stderr
    gone = set(after) - set(dir_hashes(bdir))
    assert gone == {f"{dbname}_backup_20261005_140000.sql.gz.manifest.json",
                    f"{dbname}_backup_20261009_140000.sql.gz.partial"}


def test_prune_refuses_right_after_a_failed_backup_and_harms_nothing(tmp_path, cli_env):
    bdir = tmp_path / "backups"
    bdir.mkdir()
    man = {"schema_version": 1, "status": "DONE", "kind": "scheduled", "origin_host": "dev", "database": "bigskies",
           "format": "plain", "verifications": []}
    for day in ("2026-11-01", "2026-11-02", "2026-11-03"):
        name = f"bigskies_backup_{_stamp(day)}.sql.gz"
        (bdir / name).write_bytes(b"\x1f\x8b" + day.encode())
        (bdir / (name + ".manifest.json")).write_text(json.dumps(dict(man, archive=name, started_at=f"{day}T02:00:00Z")))
    failed = "bigskies_backup_20261104_020000.sql.gz"
    (bdir / (failed + ".manifest.json")).write_text(json.dumps(dict(man, archive=failed, status="FAILED",
                                                                    started_at="2026-11-04T02:00:00Z")))
    inv = write_inventory(tmp_path / "inv.yaml", {"dev": {"connection": "local", "backup": {"dir": str(bdir)},
                                                          "retention": {"daily": 1, "weekly": 0, "monthly": 0}}})
    before = dir_hashes(bdir)
    r = cli("db.prune", "-i", str(inv), "--failed", env=cli_env)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "FAILED" in r.stderr and "nothing is pruned right after a failed backup" in r.stderr
    assert dir_hashes(bdir) == before


def test_prune_on_a_protected_host_needs_the_confirmation(tmp_path, cli_env):
    bdir = tmp_path / "backups"
    bdir.mkdir()
    inv = write_inventory(tmp_path / "inv.yaml", {"prod": {"connection": "local", "backup": {"dir": str(bdir)},
                                                           "protected": True}})
    r = cli("db.prune", "-i", str(inv), env=cli_env)
    assert r.returncode == 3 and "--force-protected --confirm bigskies" in r.stderr
    r = cli("db.prune", "-i", str(inv), "--dry-run", env=cli_env)
    assert r.returncode == 0, r.stderr
