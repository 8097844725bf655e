"""bench/webhook_instructions.py's arithmetic and command line, without valgrind (a real run takes minutes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import webhook_instructions as wi

# The end of a real callgrind log (valgrind 3.19, --log-file): the total is on the `Collected :` line.
LOG = """==4242== Callgrind, a call-graph generating cache profiler
==4242== Command: /work/main/.venv/bin/python -m bench.webhook_instructions --child app --count 220
==4242==
==4242== Events    : Ir
==4242== Collected : 1127540912
==4242==
==4242== I   refs:      1,127,540,912
"""


def test_collected_instructions_reads_the_total_from_callgrinds_log():
    assert wi.collected_instructions(LOG) == 1_127_540_912
    with pytest.raises(ValueError, match="found 0"):
        wi.collected_instructions("==4242== Callgrind, a call-graph generating cache profiler\n")


def test_the_difference_of_two_runs_is_the_cost_of_the_extra_webhooks():
    result = wi.per_webhook("app", "/a", (20, 900_000_000 + 20 * 2_560_000), (220, 900_000_000 + 220 * 2_560_000))
    assert result["instructions_per_webhook"] == 2_560_000
    assert result["start_up_instructions"] == 900_000_000
    assert (result["short"], result["long"], result["target"]) == (20, 220, "app")
    with pytest.raises(ValueError, match="must send more"):
        wi.per_webhook("app", "/a", (20, 10), (20, 20))
    with pytest.raises(ValueError, match="not more than"):
        wi.per_webhook("app", "/a", (20, 10), (220, 10))


def test_summary_gives_app_over_floor_per_checkout_and_app_over_the_first_app():
    def figure(target: str, checkout: str, per_webhook: int) -> dict[str, object]:
        return wi.per_webhook(target, checkout, (20, 10**9 + 20 * per_webhook), (220, 10**9 + 220 * per_webhook))

    results = [figure("app", "/a", 2_560_000), figure("floor", "/a", 1_370_000), figure("app", "/b", 2_304_000)]
    rows = wi.summary(results)["summary"]
    assert rows == [
        {
            "checkout": "/a",
            "app_per_webhook": 2_560_000,
            "floor_per_webhook": 1_370_000,
            "app_over_floor": 1.869,
            "app_over_first_app": 1.0,
        },
        {"checkout": "/b", "app_per_webhook": 2_304_000, "app_over_first_app": 0.9},
    ]
    # One checkout: no A/B column.
    assert wi.summary(results[:2])["summary"][0].keys() == {
        "checkout",
        "app_per_webhook",
        "floor_per_webhook",
        "app_over_floor",
    }


def test_children_get_the_servers_environment_and_a_fixed_hash_seed():
    env = wi.child_env({"PATH": "/bin", "WEB_CONCURRENCY": "9"}, "floor", "postgres://x/db", "redis://y/2", "whsec_k")
    assert env["DJANGO_SETTINGS_MODULE"] == "bench.floor.settings"
    assert (env["LOG_FORMAT"], env["LOG_LEVEL"], env["PYTHONHASHSEED"]) == ("json", "INFO", "0")
    assert (env["DATABASE_URL"], env["REDIS_URL"], env["BENCH_WEBHOOK_SECRET"]) == (
        "postgres://x/db",
        "redis://y/2",
        "whsec_k",
    )
    assert env["CONN_MAX_AGE"] == "86400"  # no reconnect every 60 s of valgrind's wall time
    assert "WEB_CONCURRENCY" not in env
    assert wi.child_env({}, "app", "", "", "")["DJANGO_SETTINGS_MODULE"] == "project.settings"


def test_help_says_what_it_measures():
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "bench.webhook_instructions", "--help"], cwd=root, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    for words in ("callgrind", "--short", "--long", "--checkout", "kernel", "PostgreSQL"):
        assert words in done.stdout


def test_bad_arguments_are_refused_before_valgrind_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        wi.main(["--short", "50", "--long", "50"])
    assert exit_info.value.code == 2
    assert "--short < --long" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        wi.main(["--checkout", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "not a checkout" in capsys.readouterr().err
