"""Run the web server and a qcluster worker together; Ctrl-C stops both."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Start gunicorn (web) and qcluster (worker) in the foreground; Ctrl-C stops both cleanly."

    def add_arguments(self, parser: CommandParser) -> None:
        # Loopback unless asked (make run BIND=0.0.0.0:8000): the demo prints an admin password.
        parser.add_argument("--bind", default="127.0.0.1:8000")
        parser.add_argument("--web-workers", type=int, default=2)

    def handle(self, *args: Any, **options: Any) -> None:
        python = sys.executable
        base = str(settings.BASE_DIR)
        web = [
            python, "-m", "gunicorn", "project.wsgi:application",
            "--bind", options["bind"], "--workers", str(options["web_workers"]), "--threads", "4",
            "--access-logfile", "-", "--graceful-timeout", "10",
        ]  # fmt: skip
        worker = [python, "manage.py", "qcluster"]
        # Own sessions: Ctrl-C reaches only this command, which stops each child through its main
        # process. A group-wide signal reaches django-q's workers before its sentinel can stop them
        # in order, and the cluster then hangs until killed.
        procs = [subprocess.Popen(cmd, cwd=base, start_new_session=True) for cmd in (web, worker)]
        stopping = False

        def stop(signum: int, frame: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            while not stopping and all(p.poll() is None for p in procs):
                time.sleep(0.5)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            for p in procs:
                try:
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
        failed = [
            cmd[2] if cmd[1] == "-m" else cmd[1]
            for cmd, p in zip((web, worker), procs, strict=True)
            if p.returncode not in (0, -2, -15)
        ]
        if failed and not stopping:
            self.stderr.write(f"stopped because a process exited: {failed}")
            os._exit(1)
        self.stdout.write("web and worker stopped.")
