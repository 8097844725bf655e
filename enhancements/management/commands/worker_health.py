"""`manage.py worker_health`: liveness of the Django-Q cluster running on this host.

Django-Q's sentinel process runs a guard loop that, every `guard_cycle` (0.5 s), checks its
workers and saves a `Stat` (status, worker pids, a fresh timestamp, this host's name) through the
broker: a Redis key with the Redis broker, the Django cache (here the database cache) with the ORM
broker, each with a 3-second expiry. A cluster whose guard loop is hung, killed or stopped stops
refreshing that record, so it disappears. This command reads those records, keeps the ones whose
host is this host (the pod name in Kubernetes) and passes only when one of them:

* reported within `--max-age` seconds,
* has status Idle or Working (not Starting, Stopping or Stopped), and
* has none of its processes (sentinel, workers, monitor, pusher) stopped (SIGSTOP), traced or
  zombie according to /proc, and its sentinel still exists: a stopped worker leaves the guard loop
  reporting happily.

Because the records expire after 3 s, the last healthy report seen is remembered in a small state
file (`--state-file`, default in the temp dir: an emptyDir in Kubernetes), so `--max-age` means
what it says: a busy host that misses a few refreshes, or a short broker outage, is not a failure
until no healthy report has been seen for `--max-age` seconds. A cluster seen in a bad state
forgets that report, so the failure does not turn into a pass once its record expires.

Exit 0 with one line "OK: ..." or exit 1 with one line "UNHEALTHY: <reason>".
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

DEFAULT_STATE_FILE = Path(tempfile.gettempdir()) / "ticket-enhancer-worker-health.json"
# Linux process states that mean "will not make progress": stopped, tracing stop, zombie, dead.
HUNG_STATES = {"T": "stopped", "t": "stopped by a tracer", "Z": "a zombie", "X": "dead"}


def process_state(pid: int) -> str | None:
    """Return the one-letter Linux state of `pid`, or None when it cannot be read (no /proc, gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[0] if fields else None


def hung_processes(stat: Any) -> list[str]:
    """Return "<role> <pid> is <state>" for each process of a cluster that cannot make progress."""
    roles: list[tuple[str, int]] = [("sentinel", stat.sentinel), ("monitor", stat.monitor), ("pusher", stat.pusher)]
    roles += [("worker", pid) for pid in stat.workers or []]
    problems = []
    for role, pid in roles:
        if not pid:
            continue
        state = process_state(int(pid))
        if state in HUNG_STATES:
            problems.append(f"{role} {pid} is {HUNG_STATES[state]}")
        elif state is None and role == "sentinel" and Path("/proc/self/stat").exists():
            # The sentinel wrote this record; if it is gone the cluster is dead. (A worker may be
            # missing for one guard cycle while it is replaced: not a failure.)
            problems.append(f"sentinel {pid} is gone")
    return problems


class Command(BaseCommand):
    help = (
        "Exit 0 when a Django-Q cluster on this host reported Idle/Working within --max-age "
        "seconds and none of its processes is stopped; else exit 1 with the reason."
    )
    # A probe runs every few seconds: skip the system checks (they cost time, not safety here).
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--max-age",
            type=float,
            default=90.0,
            help="Fail when no healthy report from this host is younger than this many seconds (default 90).",
        )
        parser.add_argument(
            "--host",
            default=None,
            help="Host name the cluster reports (default: this machine's, i.e. the pod name).",
        )
        parser.add_argument(
            "--state-file",
            default=os.environ.get("WORKER_HEALTH_STATE_FILE", str(DEFAULT_STATE_FILE)),
            help="Where the time of the last healthy report is remembered (default %(default)s).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        max_age: float = options["max_age"]
        host: str = options["host"] or socket.gethostname()
        state_file = Path(options["state_file"])
        ok, message = self.cluster_health(host=host, max_age=max_age, state_file=state_file)
        if ok:
            self.stdout.write(f"OK: {message}")
            return
        # One line on stderr, then a plain exit code 1: what a Kubernetes exec probe records.
        self.stderr.write(f"UNHEALTHY: {message}")
        sys.exit(1)

    def cluster_health(self, *, host: str, max_age: float, state_file: Path) -> tuple[bool, str]:
        """Return (healthy, one-line reason) for the clusters that report from `host`."""
        from django.utils import timezone
        from django_q.brokers import get_broker
        from django_q.conf import Conf
        from django_q.status import Stat

        now = timezone.now()
        try:
            stats = Stat.get_all(broker=get_broker())
        except Exception as exc:  # any broker or cache failure is reported, not raised
            reason = f"cannot read cluster status from the broker: {type(exc).__name__}: {exc}"
            return self._grace(state_file, host, max_age, reason)

        mine = [s for s in stats if getattr(s, "host", None) == host]
        if not mine:
            others = sorted({str(getattr(s, "host", "?")) for s in stats})
            seen = f" (clusters seen on: {', '.join(others)})" if others else ""
            reason = f"no Django-Q cluster on host {host} has reported{seen}"
            return self._grace(state_file, host, max_age, reason)

        healthy_statuses = {str(Conf.IDLE), str(Conf.WORKING)}
        problems = []
        for stat in sorted(mine, key=lambda s: s.timestamp, reverse=True):
            name = str(stat.cluster_id)[:8]
            age = (now - stat.timestamp).total_seconds()
            status = str(stat.status)
            if age > max_age:
                problems.append(f"cluster {name} last reported {age:.0f}s ago (max {max_age:g}s)")
                continue
            if status not in healthy_statuses:
                problems.append(f"cluster {name} is {status}")
                continue
            # Process states are only meaningful for a cluster of this machine (same PID namespace).
            hung = hung_processes(stat) if host == socket.gethostname() else []
            if hung:
                problems.append(f"cluster {name}: {'; '.join(hung)}")
                continue
            self._remember(state_file, host, stat.timestamp.timestamp())
            workers = len(stat.workers or [])
            return True, (f"cluster {name} on {host} is {status}, reported {max(age, 0):.1f}s ago, {workers} workers")
        # A cluster that reports a bad state is unhealthy now, and stays so once its record
        # expires: no grace period for what we have seen.
        self._forget(state_file)
        return False, "; ".join(problems)

    def _grace(self, state_file: Path, host: str, max_age: float, reason: str) -> tuple[bool, str]:
        """Pass while the last healthy report remembered for `host` is younger than `max_age`."""
        last = self._recall(state_file, host)
        if last is None:
            return False, reason
        age = time.time() - last
        if age <= max_age:
            return True, f"last healthy report {age:.0f}s ago (max {max_age:g}s); now: {reason}"
        return False, f"{reason}; last healthy report {age:.0f}s ago (max {max_age:g}s)"

    @staticmethod
    def _remember(state_file: Path, host: str, when: float) -> None:
        try:
            tmp = state_file.with_name(state_file.name + ".tmp")
            tmp.write_text(json.dumps({"host": host, "last_healthy": when}))
            tmp.replace(state_file)
        except OSError:
            # A read-only or missing temp dir only loses the grace period, never the check.
            pass

    @staticmethod
    def _forget(state_file: Path) -> None:
        with contextlib.suppress(OSError):
            state_file.unlink(missing_ok=True)

    @staticmethod
    def _recall(state_file: Path, host: str) -> float | None:
        try:
            data = json.loads(state_file.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("host") != host:
            return None
        value = data.get("last_healthy")
        return float(value) if isinstance(value, (int, float)) else None
