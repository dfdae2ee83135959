"""A worker's pid counts as alive only if it can still be that worker's process."""

from __future__ import annotations

import subprocess
import sys
import time

from paceline.store._process import worker_alive


def test_a_live_process_that_started_before_registering_is_the_worker() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.2)
        assert worker_alive(proc.pid, time.time())
    finally:
        proc.kill()
        proc.wait()


def test_a_process_gone_and_reaped_is_not_alive() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not worker_alive(proc.pid, time.time() - 10)


def test_a_zombie_is_not_alive() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 10
    while time.time() < deadline:  # exited but not reaped: a zombie
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.02)
    try:
        assert not worker_alive(proc.pid, time.time() - 10)
    finally:
        proc.wait()


def test_a_pid_given_to_a_process_started_after_the_registration_is_not_the_worker() -> None:
    # e.g. a container restarted with the same host name runs its new process as pid 1
    registered = time.time() - 60
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.2)
        assert not worker_alive(proc.pid, registered)
    finally:
        proc.kill()
        proc.wait()
