"""Pure functions of issue 18's ops items (no services)."""
from __future__ import annotations

import pytest

from bigskies_ops.errors import InventoryError
from bigskies_ops.hosts.compose import engine_unreachable
from bigskies_ops.inventory import cron_fields
from bigskies_ops.jobs.dump import compression_text
from bigskies_ops.jobs.schedule import EXIT_SKIPPED_FOR_SAFETY, Step, exit_code


def test_compression_text_names_the_level_once():
    assert compression_text({"compressor": "gzip (zlib level 1)", "compress_level": 1}) == "gzip (zlib level 1)"
    assert compression_text({"compressor": "gzip (ISA-L level 3)", "compress_level": 3}) == "gzip (ISA-L level 3)"
    assert compression_text({"compressor": "gzip -6 (on prod)", "compress_level": 6}) == "gzip -6 (on prod)"
    assert compression_text({"compressor": "pg_dump custom (zlib)", "compress_level": 5}) == \
        "pg_dump custom (zlib), level 5"


def test_cron_fields_is_the_rule_of_db_schedule():
    assert cron_fields("30 1 * * 1-5", "x") == ["30", "1", "*", "*", "1-5"]
    assert cron_fields("@daily", "x") == ["@daily"]
    for bad in ("0 2 * *", "every night", "@nightly", "0 2 * * * *", "0 2 * * ;rm"):
        with pytest.raises(InventoryError) as e:
            cron_fields(bad, "hosts.prod.schedule")
        assert str(e.value).startswith("hosts.prod.schedule: ") and e.value.exit_code == 2


@pytest.mark.parametrize("bad, field, why", [
    ("61 2 * * *", "minute field '61'", "61 is out of range 0-59"),
    ("0 2 * * 8", "day of week field '8'", "8 is out of range 0-7"),
    ("*/0 * * * *", "minute field '*/0'", "step '0' is not a whole number >= 1"),
    ("0 24 * * *", "hour field '24'", "24 is out of range 0-23"),
    ("0 2 0 * *", "day of month field '0'", "0 is out of range 1-31"),
    ("0 2 32 * *", "day of month field '32'", "32 is out of range 1-31"),
    ("0 2 * 13 *", "month field '13'", "13 is out of range 1-12"),
    ("0 2 * foo *", "month field 'foo'", "'foo' is not a number or a name (jan-dec)"),
    ("5/10 * * * *", "minute field '5/10'", "a step needs '*' or a range before it (*/10 or 5-59/10)"),
    ("*/5/2 * * * *", "minute field '*/5/2'", "not a whole number >= 1"),
    ("1,,2 * * * *", "minute field '1,,2'", "'' is not a number"),
    ("0 2 * * sat-sun", "day of week field 'sat-sun'", "runs backwards"),
    ("0 2 * * mon", None, None),
    ("0 2 * * 7", None, None),
    ("0 2 * * 0-7", None, None),
    ("*/15 1-5/2 1,15 jan-mar MON-fri", None, None),
    ("*/60 * * * *", None, None),   # a step wider than the range: cron takes it (fires at 0)
])
def test_cron_fields_checks_each_field_against_crontab_5(bad, field, why):
    """crontab(5) ranges: minute 0-59, hour 0-23, day of month 1-31, month 1-12 or names,
    day of week 0-7 or names; steps >= 1 (Debian's ``crontab -n`` refuses the same)."""
    if field is None:
        assert len(cron_fields(bad, "hosts.prod.schedule")) == 5
        return
    with pytest.raises(InventoryError) as e:
        cron_fields(bad, "hosts.prod.schedule")
    msg = str(e.value)
    assert e.value.exit_code == 2
    assert msg.startswith(f"hosts.prod.schedule: {bad!r}: {field}: "), msg
    assert why in msg, msg


def test_scheduled_run_exit_codes():
    ok, changed = Step("backup", "changed", ""), Step("prune", "ok", "")
    safety = Step("prune", "skipped", "protected", safety=True)
    assert exit_code([ok, changed, Step("offsite", "skipped", "no targets")]) == 0
    assert exit_code([ok, safety]) == EXIT_SKIPPED_FOR_SAFETY == 4
    assert exit_code([ok, safety, Step("offsite x", "failed", "down")]) == 1


def test_engine_unreachable_tells_a_dead_daemon_from_a_missing_container():
    assert engine_unreachable("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
                              "Is the docker daemon running?")
    assert engine_unreachable('Error: unable to connect to Podman socket: Get "http://d/v4.3.1/libpod/_ping": '
                              "dial unix /tmp/x.sock: connect: no such file or directory")
    assert not engine_unreachable("Error: No such container: bigskies-postgres")
    assert not engine_unreachable("Error: no container with name or ID \"x\" found: no such container")


@pytest.mark.parametrize("raw, expected", [
    ("2026-12-03 15:32:12.258084757 +0000 UTC", "2026-12-03T15:32:12Z"),   # podman (Go's String())
    ("2026-12-03T15:32:12.258084757Z", "2026-12-03T15:32:12Z"),            # docker (RFC 3339, ns)
    ("2026-12-03T16:32:12.258084757+01:00", "2026-12-03T15:32:12Z"),
    ("2026-12-03 10:32:12.5 -0500 EST", "2026-12-03T15:32:12Z"),
    ("2026-12-03 15:32:12 +0000 UTC", "2026-12-03T15:32:12Z"),
    ("0001-01-01 00:00:00 +0000 UTC", None),                              # never started
    ("0001-01-01T00:00:00Z", None),
    ("", None), ("yesterday", None),
])
def test_engine_time_is_utc_iso_8601(raw, expected):
    from bigskies_ops.jobs.status import engine_time
    assert engine_time(raw) == expected
