"""`paceline serve` and the run options of the web issue, as a user meets them."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from tests.conftest import SimFactory, paceline_cmd, read_jsonl, run_cli
from tests.e2e.test_cli import assert_one_line_error
from tests.web.jobs import accounts_csv, write_job


def test_serving_off_loopback_needs_a_token(tmp_path: Path) -> None:
    write_job(tmp_path, "http://127.0.0.1:9")
    result = run_cli("serve", tmp_path, "--host", "0.0.0.0", env={"PACELINE_TOKEN": ""})
    assert_one_line_error(result, "needs a token", "--token or PACELINE_TOKEN")


def test_serve_without_the_web_extra_says_how_to_get_it(tmp_path: Path) -> None:
    write_job(tmp_path, "http://127.0.0.1:9")
    code = (
        "import sys; sys.modules['fastapi'] = None; sys.modules['sse_starlette'] = None\n"
        "from paceline.cli import main; main(sys.argv[1:])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "serve", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert_one_line_error(result, "needs fastapi, sse-starlette", "pip install 'paceline[web]'")


def test_serve_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("serve", tmp_path), "no job files found in")
    assert_one_line_error(run_cli("serve", tmp_path / "nope.py"), "no such job file or folder")
    write_job(tmp_path / "a", "http://127.0.0.1:9")
    write_job(tmp_path / "b", "http://127.0.0.1:9")
    assert_one_line_error(run_cli("serve", tmp_path), "two job files define job 'accounts'")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", tmp_path / "a", "--port", str(port))
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}")
    assert_one_line_error(run_cli("serve", tmp_path / "a", "--notify", "ftp://x"), "--notify")
    assert_one_line_error(run_cli("serve", tmp_path / "a", "--token", " "), "token is blank")


def test_serve_prints_its_url_and_stops_on_ctrl_c_with_a_page_open(tmp_path: Path) -> None:
    write_job(tmp_path, "http://127.0.0.1:9")
    (tmp_path / "notes.py").write_text("print('not a job file: never run')\n")
    env = {**os.environ, "PACELINE_TOKEN": "t0ken-from-env"}
    proc = subprocess.Popen(
        paceline_cmd("serve", tmp_path, "--port", "0"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.match(r"paceline serve: (http://127\.0\.0\.1:\d+) \(token required\)", line)
        assert found, line
        assert "1 job(s): accounts" in line
        url = found.group(1)
        assert httpx.get(url + "/api/jobs").status_code == 401
        auth = {"Authorization": "Bearer t0ken-from-env"}
        assert httpx.get(url + "/api/jobs", headers=auth).status_code == 200
        with (
            httpx.Client(timeout=10, headers=auth) as client,
            client.stream("GET", url + "/api/jobs/accounts/events") as events,
        ):
            lines = events.iter_lines()
            assert any(x.startswith("data: ") for x in lines)
            began = time.monotonic()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=15)
        assert time.monotonic() - began < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "not a job file" not in out + err
    assert "t0ken-from-env" not in out + err


def test_run_input_adds_the_file_and_a_repeat_continues(
    tmp_path: Path, sim_server: SimFactory
) -> None:
    sim = sim_server()
    job = write_job(tmp_path, sim.url)
    plain = write_job(tmp_path, sim.url, name="plain", upload=None, items=2)
    csv = accounts_csv(tmp_path / "accounts.csv", range(15), bad_row=True)

    assert_one_line_error(run_cli("run", plain, "--input", csv), "--input is for jobs whose")
    assert_one_line_error(run_cli("run", job), "takes its input as an upload", "--input FILE")

    first = run_cli("run", job, "--input", csv)
    assert first.returncode == 1, first.stderr  # the bad row failed, with its line
    assert "added accounts.csv" in first.stderr
    assert "15 done, 1 failed" in first.stdout
    again = run_cli("run", job, "--input", csv)
    assert again.returncode == 1, again.stderr
    assert "accounts.csv was given before" in again.stderr
    assert "0 done, 0 failed" in again.stdout

    more = accounts_csv(tmp_path / "more.csv", range(10, 25))
    dry = run_cli("run", job, "--input", more, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would run:      10 (10 new" in dry.stdout
    assert "duplicate ids:  5" in dry.stdout
    inbox = tmp_path / ".paceline" / "uploads" / "accounts"
    assert len([p for p in inbox.iterdir() if p.suffix == ".csv"]) == 1

    last = run_cli("run", job, "--input", more)
    assert "10 done, 0 failed" in last.stdout, last.stderr
    rows = read_jsonl(tmp_path / "out-accounts.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(f"a{n}" for n in range(25))


def test_run_metrics_port_in_use_is_one_line(tmp_path: Path) -> None:
    job = write_job(tmp_path, "http://127.0.0.1:9", name="plain", upload=None, items=1)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("run", job, "--metrics-port", str(port))
    assert_one_line_error(result, f"--metrics-port {port}")
