"""bench/soak.py works (a 15-second run against the production server with JWT on), its memory verdict can fail,
and the README's "Soak" section states the script's defaults (issue 11)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import soak  # noqa: E402


def test_a_short_soak_passes_with_no_errors_unique_uuids_and_feedback():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", "0.25", "--workers", "2", "--concurrency", "2",
         "--rate", "8", "--sample-s", "2"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert ": PASS" in out and "- errors: 0 (non-200 answers); server log error lines: 0" in out
    assert re.search(r"uuids: \d+ distinct, 0 repeated", out)
    requests = int(re.search(r"requests: (\d+)", out).group(1))
    assert 60 <= requests <= 150, out  # about 8/s for 15 s
    for kind in ("feedback", "order-select (prefetched)", "order-sign (prefetched)", "patient-view (fetched)", "patient-view (prefetched)"):
        assert re.search(rf"{re.escape(kind)} [1-9]\d*", out), (kind, out)
    assert len(re.findall(r"^\| \d+ \| [\d.]+ \| [\d.]+ \|", out, re.MULTILINE)) == 2  # one RSS row per worker


def test_the_memory_verdict_sees_growth_after_the_warm_up_only():
    flat = [(t, 90.0 + (20 if t < 5 else 0.1 * (t % 2))) for t in range(0, 60, 2)]  # grows while warming up, then flat
    leaking = [(t, 90.0 + 1.0 * t) for t in range(0, 60, 2)]  # 1 MB/s
    [steady, leak] = soak.memory_of({1: flat, 2: leaking}, warmup_s=10)
    assert abs(steady.growth_mb) < 1 and abs(steady.slope_mb_per_min) < 5 and steady.max_mb == 110.0
    assert leak.growth_mb == 48.0 and round(leak.slope_mb_per_min) == 60
    assert soak.memory_of({3: [(0, 90.0), (2, 91.0)]}, warmup_s=10) == []  # no sample after the warm-up


def test_the_readme_soak_section_states_the_defaults_and_a_result():
    section = " ".join((ROOT / "README.md").read_text().split("## Soak", 1)[1].split("\n## ", 1)[0].split())
    defaults = soak.build_parser().parse_args([])
    assert "python bench/soak.py" in section
    assert f"{defaults.minutes:g} minutes" in section and f"{defaults.workers} sync workers" in section
    assert f"{defaults.rate:g} requests/s" in section and f"every {defaults.sample_s:g} s" in section
    assert f"{defaults.max_growth_mb:g} MB" in section and "GUNICORN_MAX_REQUESTS=0" in section
    assert re.search(r"errors: 0\b", section) and re.search(r"0 repeated", section)
