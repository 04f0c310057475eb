"""bench/: what bench/README.md says the benchmark does is what its code does (defaults, scenarios, targets)."""

from __future__ import annotations

import json
import re
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import cpu_calls  # noqa: E402
import payloads  # noqa: E402
import run_bench  # noqa: E402
from fhir_stub import StubServer  # noqa: E402

README = (BENCH / "README.md").read_text(encoding="utf-8")


def test_the_documented_defaults_are_the_code_defaults():
    args = run_bench.build_parser().parse_args([])
    assert (args.duration, args.warmup, args.fhir_delay_ms, args.connections) == (5, 1, 50.0, [1, 8, 32])
    assert args.growth == [10, 60, 300, 1000] == list(run_bench.GROWTH_SIZES) and args.growth_connections == 8
    for said in ("after a 1 s warm-up (`--warmup`), for 5 s\n(`--duration`)", "For 1, 8 and 32 concurrent connections (`--connections`)",
                 "after 50 ms\n(`--fhir-delay-ms`)", "records of 10, 60, 300 and 1,000 resources (`--growth`",
                 "at 8 connections\n(`--growth-connections`)"):
        assert said in README, said
    assert list(cpu_calls.GROWTH_SIZES) == list(run_bench.GROWTH_SIZES)
    assert cpu_calls.build_parser().parse_args([]).calls == 300


def test_the_documented_targets_and_load_limit_are_the_checked_ones():
    assert (run_bench.ORDER_SELECT_CPU_MS, run_bench.ORDER_SELECT_SHARE, run_bench.PATIENT_VIEW_CPU_MS,
            run_bench.PATIENT_VIEW_ROUND_TRIPS, run_bench.GROWTH_STEP, run_bench.QUIET_LOAD) == (0.8, 0.4, 3.0, 2.0, 2.0, 0.5)
    flat = " ".join(README.split())
    for said in ("order-select ≤ 0.8 ms CPU and ≥ 0.4× the baseline's requests/s", "patient-view ≤ 3 ms CPU and p99 ≤ 2 FHIR round trips",
                 "no segment of the table costing more than 2× per added resource than the cheapest",
                 "a warning when the load before the run was above 0.5"):
        assert said in flat, said


def result(scenario: str, cpu: float, connections: int = 8, rps: float = 100.0, p99: float = 5.0) -> run_bench.Result:
    return run_bench.Result(scenario, connections, rps, 1.0, p99, cpu, 0, 0, 1.0)


def test_a_step_in_the_growth_table_is_a_miss_and_linear_growth_a_pass():
    linear = [result("growth-10", 0.5), result("growth-60", 1.0), result("growth-300", 3.4), result("growth-1000", 10.4)]
    stepped = [*linear[:3], result("growth-1000", 40.0)]
    line = next(v for v in run_bench.verdicts(linear, 50) if "growth" in v)
    assert line.startswith("- PASS") and "10→60: 10.0 µs" in line
    assert next(v for v in run_bench.verdicts(stepped, 50) if "growth" in v).startswith("- MISS")


def test_the_targets_are_checked_against_the_figures():
    results = [result("healthz", 0.3, rps=1000), result("order-select", 0.7, rps=450, p99=9), result("patient-view", 3.5, p99=90),
               result("patient-view-batch", 2.0, p99=120)]
    for r in results:
        r.baseline_ratio = r.rps / 1000
    lines = run_bench.verdicts(results, 50)
    assert "- PASS: order-select at 8: 0.45× baseline (≥ 0.4)" in lines
    assert "- PASS: order-select CPU: at most 0.70 ms per request (≤ 0.8)" in lines
    assert "- MISS: patient-view CPU: at most 3.50 ms per request (≤ 3)" in lines
    assert "- PASS: patient-view p99 at 8: 90.0 ms (≤ 100, 2 round trips)" in lines
    assert "- MISS: patient-view-batch p99 at 8: 120.0 ms (≤ 100, 2 round trips)" in lines


def test_a_busy_machine_is_warned_about():
    assert run_bench.load_warning(0.2, 0.4) == []
    assert run_bench.load_warning(0.2, 3.1) == []  # the run's own load: wrk and the server share the CPUs
    assert "not valid" in run_bench.load_warning(0.8, 0.4)[0]


@pytest.mark.parametrize("size", [10, 60, 300, 1000])
def test_the_growth_records_have_their_size_and_answer_the_same_card(client, size):
    record = payloads.sized_record(size)
    assert sum(len(v) for k, v in record.items() if k != "patient") == size
    response = client.post("/cds-services/mtor-safety-order-select", json=payloads.sized_order_select_request(size))
    cards = [(c["source"]["topic"]["code"], c["indicator"]) for c in response.get_json()["cards"]]
    assert ("cyp3a4-interaction", "critical") in cards


@pytest.fixture
def stub():
    server = StubServer(("127.0.0.1", 0), 0.0, batch=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    server.shutdown()
    server.server_close()


def test_the_stub_answers_batch_and_says_so(stub):
    with urllib.request.urlopen(f"{stub}/metadata") as answer:
        statement = json.load(answer)
    assert {"code": "batch"} in statement["rest"][0]["interaction"]
    body = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": u}}
                                                                  for u in ("Condition?patient=x", "Patient/pt-bench-1")]}
    request = urllib.request.Request(stub, data=json.dumps(body).encode(), headers={"Content-Type": "application/fhir+json"})
    with urllib.request.urlopen(request) as answer:
        bundle = json.load(answer)
    assert bundle["type"] == "batch-response" and [e["response"]["status"] for e in bundle["entry"]] == ["200 OK", "200 OK"]
    assert bundle["entry"][0]["resource"]["type"] == "searchset" and bundle["entry"][1]["resource"]["resourceType"] == "Patient"
    with urllib.request.urlopen(stub.replace("/fhir", "/_stats")) as answer:
        assert json.load(answer) == {"requests": 1, "batched": 2}


def _table_rows(text: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|") and line.strip("| ").startswith(first_cell)]


def test_the_readme_figures_are_those_of_the_latest_results():
    """The README's Performance section quotes bench/results/latest.md: same run (date, load), same figures."""
    root = BENCH.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Performance"):readme.index("## Soak")]
    latest = (BENCH / "results" / "latest.md").read_text(encoding="utf-8")
    date = re.search(r"- date: (\S+ \S+ UTC)", latest).group(1)
    load = re.search(r"load average \(1 min\) before / after: (\S+) /", latest).group(1)
    assert f"Latest figures: {date}," in " ".join(section.split()) and f"load average {load} before the run" in " ".join(section.split())
    measured = {(r[0], r[1]): r for r in _table_rows(latest, "") if len(r) == 8 and r[1].isdigit()}
    names = {"baseline `/healthz`": "healthz", "floor: the same body refused once parsed": "floor", "order-select (prefetch)": "order-select",
             "patient-view, 8 parallel GETs (50 ms each)": "patient-view", "patient-view, one FHIR batch (50 ms)": "patient-view-batch"}
    quoted = [r for r in _table_rows(section, "") if r[0] in names]
    assert len(quoted) == 8
    for label, conns, rps, share, p50, p99, cpu in quoted:
        scenario, _, rps_m, p50_m, p99_m, cpu_m, share_m, _errors = measured[(names[label], conns)]
        assert (rps, share, p50, p99.split(" ")[0], cpu) == (rps_m, share_m, p50_m, p99_m, cpu_m), label
    growth_quoted = next(r for r in _table_rows(section, "order-select server CPU"))[1:]
    growth_measured = [r[1] for r in _table_rows(latest, "") if len(r) == 3 and r[0].isdigit()]
    assert growth_quoted == growth_measured


def test_the_floor_body_is_refused_with_400_once_parsed_and_its_400s_are_not_errors(client):
    """The floor scenario measures what a call of order-select's size costs before its record is read: the service must
    refuse it (a wrong hook), after parsing it, never answer it."""
    answer = client.post("/cds-services/mtor-safety-order-select", json=run_bench.floor_request())
    assert answer.status_code == 400 and "hook" in answer.get_json()["issue"][0]["diagnostics"]
    assert run_bench.floor_request()["prefetch"] == run_bench.order_select_request()["prefetch"]
    floor = run_bench.Result(run_bench.FLOOR, 8, 2000.0, 1.0, 12.0, 0.6, 10_000, 0, 0.5)
    refused = run_bench.Result("order-select", 8, 500.0, 1.0, 12.0, 2.0, 3, 1, 0.1)
    assert (floor.errors, refused.errors) == (0, 4)
    lines = run_bench.verdicts([floor, refused], 50)
    assert "- MISS: 4 non-2xx answers or socket errors in all runs" in lines
    assert any(line.startswith("- floor at 8 (not a target") and "0.60 ms CPU per request, 0.50× baseline, p99 12.0 ms" in line
               for line in lines)


def test_the_floor_is_documented_as_measured():
    flat = " ".join(README.split())
    assert 'the order-select body below, with `"hook": "patient-view"`: read, parsed and refused with `400`' in flat
    assert "floor" in cpu_calls.scenarios("http://127.0.0.1:1/fhir")
