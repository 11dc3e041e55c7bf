"""The report writer on a small synthetic sweep: files, embedded images, recommendation, warnings."""

import base64
import html
import re

import pytest
from fakesim import fake_simulate

from experiments.report import ReportInputs, write_report
from experiments.sweep import sweep
from simkit import registry
from simkit.profile import CostProfile
from simkit.scenario import Hardware, Scenario, Workload

PNGS = ("throughput_vs_connections.png", "p99_vs_connections.png", "memory_vs_connections.png",
        "scaling_vs_cores.png", "winner_map.png")


@pytest.fixture(scope="module")
def frame():
    base = Scenario(workload=Workload(cpu_us=200, gil_us=20), hardware=Hardware(memory_bytes=8 * 2**30))
    return sweep(base, models=["m1", "m2", "m5", "m6"], cores=[1, 2, 16, 128], connections=[10, 1000, 50_000],
                 profile=CostProfile.default(), engine="serial", simulate=fake_simulate, progress=False)


def _inputs(frame, profile, label="test"):
    return ReportInputs(frame=frame, slo_p99_s=0.05, memory_bytes=8 * 2**30, profile=profile, profile_label=label,
                        host="testhost-2c", date="2026-01-01", workload_lines=("a test workload",), elapsed_s=1.5)


@pytest.mark.timeout(90)
def test_report_files_embedded_images_and_recommendation(frame, tmp_path):
    files = write_report(_inputs(frame, CostProfile.default(), "built-in default"), tmp_path / "r")
    for name in ("index.html", "report.md", "results.csv", *PNGS):
        assert (tmp_path / "r" / name).stat().st_size > 0, name
    page = files.html.read_text()
    for name in PNGS:  # every plot is inside the HTML as a data URI, byte for byte
        assert base64.b64encode((tmp_path / "r" / name).read_bytes()).decode() in page, name
    assert not re.search(r"<img[^>]+src=['\"](?!data:image/png;base64,)", page)  # nothing fetched from outside
    assert files.recommendation.model in registry.names()
    assert f"Recommended: <b>{files.recommendation.model}</b>" in page
    md = files.markdown.read_text()
    assert f"**Recommended: {files.recommendation.model}**" in md
    assert "UNCALIBRATED PROFILE" in page and "UNCALIBRATED PROFILE" in md
    assert "no measured error" in md.lower()
    # Calibrated range falls back to this box; 128 cores x 50k connections is far past 10x and flagged.
    csv = files.csv.read_text().splitlines()
    assert "extrapolation_x" in csv[0] and "past_10x" in csv[0]
    assert "!" in md and "extrapolate past 10x" in md


@pytest.mark.timeout(90)
def test_calibrated_profile_shows_validation_table_and_range(frame, tmp_path):
    rows = [{"model": "m3_reactor", "cores": 2, "connections": 10_000, "metric": "throughput_rps",
             "measured": 3000.0, "predicted": 3150.0, "rel_err": 0.05},
            {"model": "m5_multi_reactor", "cores": 1, "connections": 200, "metric": "latency_p99_s",
             "measured": 0.01, "predicted": 0.012, "rel_err": 0.2}]
    profile = CostProfile.default()
    import dataclasses

    profile = dataclasses.replace(profile, calibrated=True, validation=rows)
    files = write_report(_inputs(frame, profile, "profiles/x.json"), tmp_path / "c")
    md = files.markdown.read_text()
    assert "UNCALIBRATED" not in md
    assert "median |rel_err| = 0.125 over 2 rows" in md
    assert "up to 2 cores and 10,000 connections" in md
    assert "| m3_reactor | 5% | - | 1 |" in md  # per model x metric median |error|
    assert "| all models | 5% | 20% | 2 |" in md
    assert "3150" in (tmp_path / "c" / "calibration_validation.csv").read_text()
    assert "3150" in files.html.read_text()


def test_both_renderings_come_from_one_report_data(frame):
    import dataclasses

    from experiments.planning import Recommendation
    from experiments.report import render_html, render_markdown, report_data

    data = report_data(_inputs(frame, CostProfile.default()))
    assert data.recommendation.model in registry.names()
    # A sentence planted in the data shows up in both renderings: neither recomputes its own.
    planted = dataclasses.replace(data, recommendation=Recommendation("m9_planted", ("a planted reason.",), ()),
                                  about=("a planted note.",))
    md = render_markdown(planted)
    page = render_html(planted, {p.filename: b"png" for p in planted.plots})
    for text in ("m9_planted", "a planted reason.", "a planted note."):
        assert text in md and text in page, text
    md, page = render_markdown(data), render_html(data, {p.filename: b"png" for p in data.plots})
    for reason in data.recommendation.reasons:  # the real data: the same reasons in both
        assert reason in md and html.escape(reason) in page
    for row in data.capacity_table.rows:  # and the same capacity rows
        assert f"| {row[0]} |" in md and f"<td>{row[0]}</td>" in page


def test_capacity_and_winner_map_are_computed_once_per_report(frame, tmp_path, monkeypatch):
    import experiments.planning as planning
    import experiments.report as report

    calls = {"capacity": 0, "winner_map": 0}
    for name in calls:
        original = getattr(planning, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(planning, name, counted)
        monkeypatch.setattr(report, name, counted)
    write_report(_inputs(frame, CostProfile.default()), tmp_path / "once")
    assert calls == {"capacity": 1, "winner_map": 1}
