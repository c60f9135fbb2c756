"""The `p2o` entry point: help, subcommand dispatch, config and data commands."""
from __future__ import annotations

import json
import subprocess
import sys

from p2o.cli import COMMANDS, main


def _p2o(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "p2o.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_command():
    r = _p2o("--help")
    assert r.returncode == 0
    for name in COMMANDS:
        assert name in r.stdout


def test_config_show_prints_resolved_yaml_and_errors():
    r = _p2o("config", "show", "rollout.n=7")
    assert r.returncode == 0 and "'n': 7" in r.stdout  # YAML quotes the key n
    r = _p2o("config", "show", "rollout.n=1")
    assert r.returncode == 2 and "rollout.n" in r.stderr


def test_data_arithmetic(capsys):
    assert main(["data", "arithmetic", "--n", "3", "--levels", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and all(r["meta"]["level"] == 1 for r in rows)


def test_doctor_json():
    r = _p2o("doctor", "--json")
    assert r.returncode == 0
    names = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert names["torch"]["available"] and "gpu" in names


def test_log_level_value_is_not_taken_for_the_command(capsys):
    assert main(["--log-level", "WARNING", "data", "arithmetic", "--n", "1"]) == 0
    assert main(["--log-level=ERROR", "data", "arithmetic", "--n", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_http_client_request_lines_are_quiet_unless_debugging():
    import logging

    for level, expected in (("info", logging.WARNING), ("debug", logging.NOTSET)):
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.NOTSET)
        assert main(["--log-level", level, "data", "arithmetic", "--n", "1"]) == 0
        assert logging.getLogger("httpx").level == expected
        assert logging.getLogger("httpcore").level == expected
