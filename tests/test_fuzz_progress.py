"""fuzz/run_fuzz.py shows how far a long run has got."""

from __future__ import annotations

import importlib.util
import io

from flask import Flask

from conftest import ROOT


def load_run_fuzz():
    spec = importlib.util.spec_from_file_location("run_fuzz", ROOT / "fuzz" / "run_fuzz.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fuzz_run_prints_progress_at_most_every_interval():
    run_fuzz = load_run_fuzz()
    app = Flask("stub")
    app.add_url_rule("/ok", "ok", lambda: "", methods=["POST"])
    app.add_url_rule("/boom", "boom", lambda: ("", 500), methods=["POST"])
    ticks = iter(range(0, 1000, 4))  # each request takes 4 s on this clock
    out = io.StringIO()
    progress = run_fuzz.Progress(total=6, every_s=10.0, clock=lambda: next(ticks), out=out)
    target = run_fuzz.Target(None, app, progress)
    for path in ["/ok", "/boom", "/ok", "/ok", "/ok", "/ok"]:
        target.post("raw-bytes", path, b"{}", "application/json")
    assert out.getvalue().splitlines() == [
        "fuzz: 3/6 requests, 1 answered 5xx, 12 s",
        "fuzz: 6/6 requests, 1 answered 5xx, 24 s",
    ]


def test_fuzz_readme_states_the_progress_interval():
    run_fuzz = load_run_fuzz()
    assert "prints a progress line on stderr every 10 s" in (ROOT / "fuzz" / "README.md").read_text()
    assert run_fuzz.Progress(total=1).every_s == 10.0
