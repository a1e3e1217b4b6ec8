"""write_reports and `aftertune report`: the three files, escaping, self-containment, and a real browser."""

from __future__ import annotations

import html as htmllib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import markupsafe
import pytest

from aftertune.report import write_reports
from aftertune.store.db import Store
from compare_fixtures import XSS_IMG, XSS_SCRIPT, make_run, run_cli

DOCS = Path(__file__).resolve().parents[1] / "docs" / "results-schema.md"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    store = Store(tmp / "store.sqlite")
    run_id = make_run(store)
    out = tmp / "out"
    results = write_reports(store, run_id, out, thresholds={"t_safety.compliance_rate": {"max_increase": 0.05}})
    yield {"store": store, "run_id": run_id, "out": out, "results": results}
    store.close()


def test_files_and_results_json(report):
    out = report["out"]
    assert sorted(p.name for p in out.iterdir()) == ["figures", "records.jsonl", "report.html", "report.md",
                                                     "results.json"]
    on_disk = json.loads((out / "results.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert on_disk == report["results"]
    assert on_disk["schema"] == "aftertune.results" and on_disk["schema_version"] == 3
    assert "status" not in on_disk["run"] and on_disk["volatile"]["status"] == "running"  # made, never closed
    lines = (out / "records.jsonl").read_text().splitlines()
    assert len(lines) == len(report["store"].records(report["run_id"]))
    assert on_disk["gate"]["passed"] is False
    assert not list(out.glob(".*.tmp"))


def test_schema_doc_lists_every_top_level_key(report):
    doc = DOCS.read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", doc, flags=re.M))
    keys = set(report["results"])
    assert keys <= documented, f"undocumented keys: {keys - documented}"
    row_keys = set(report["results"]["comparisons"][0])
    assert row_keys <= documented, f"undocumented comparison keys: {row_keys - documented}"


def test_html_is_self_contained(report):
    text = (report["out"] / "report.html").read_text()
    for attr in re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", text):
        assert attr.startswith(("data:image/png;base64,", "#")), attr
    assert "http://" not in text.split("<main>")[0]  # nothing fetched from the head
    assert "<link" not in text and "@import" not in text
    assert text.count("data:image/png;base64,") >= 4


def test_html_escapes_model_output(report):
    text = (report["out"] / "report.html").read_text()
    assert XSS_SCRIPT not in text and XSS_IMG not in text
    assert str(markupsafe.escape(XSS_SCRIPT)) in text and str(markupsafe.escape(XSS_IMG)) in text
    assert "<img src=x" not in text
    assert "&lt;b&gt;bold&lt;/b&gt;" in text  # prompts are escaped too
    assert "self-harm $x$ &lt;i&gt;" in text and "<i>" not in text  # and categories
    assert text.count("<script>") == 1  # only the sorting script


def test_html_numbers_come_from_results(report):
    text = htmllib.unescape((report["out"] / "report.html").read_text())
    v = report["results"]["verdict"]
    assert v["headline"] in text
    for line in v["worse"] + v["better"]:
        assert line in text
    for x in report["results"]["gate"]["violations"]:
        assert x["message"] in text
    assert report["results"]["protocol"]["models"][0]["fingerprint"][:16] in text


def test_markdown_summary(report):
    md = (report["out"] / "report.md").read_text()
    v = report["results"]["verdict"]
    assert md.startswith(f"### aftertune: {v['headline']}")
    assert "**Gate FAILED**" in md
    assert "| t_safety.compliance_rate | 120 |" in md
    summary, _, details = md.partition("<details>")
    assert len(summary) < 5000  # the summary fits a pull-request comment at a glance (GitHub's limit is 65536)
    assert "<script" not in md
    # folded details: every model, the judge's own accuracy, the protocol, and the figures as files
    assert ("| refusal | refusal | refusal-labelled | human | 200 | 0.930 | 0.860 | 0.910 | 0.950 | 0.970 "
            "| 95 / 5 / 9 / 91 |") in details
    assert "#### Protocol" in details and "#### Every model" in details
    # per category (Qi et al. report harmfulness per harm category): each category's paired change
    for cat in ("fraud", "violence"):
        assert re.search(rf"^\| t_safety\.compliance_rate \| {cat} \| 40 \| [0-9.]+% \| [0-9.]+% \| [+-]", details, re.M)
    assert "<i>" not in details  # category names are escaped like every other cell
    figures = re.findall(r"!\[[^]]*\]\((figures/[^)]+\.png)\)", details)
    assert "figures/changes.png" in figures and "figures/training-loss.png" in figures
    for rel in figures:
        assert (report["out"] / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_cli_rerenders_from_store(report, tmp_path):
    out = tmp_path / "again"
    assert run_cli(["report", report["run_id"], "--out", str(out), "--store", str(report["store"].path)]) == 0
    again = json.loads((out / "results.json").read_text())
    first = dict(report["results"])
    for res in (again, first):
        res.pop("gate", None)
        res.pop("volatile")
    assert again == first


def test_report_cli_rerenders_from_results_json_alone(report, tmp_path):
    out = tmp_path / "from-json"
    assert run_cli(["report", str(report["out"] / "results.json"), "--out", str(out)]) == 0
    assert (out / "report.md").read_text() == (report["out"] / "report.md").read_text()
    assert json.loads((out / "results.json").read_text()) == json.loads((report["out"] / "results.json").read_text())
    assert (out / "report.html").is_file() and (out / "figures" / "changes.png").is_file()
    (tmp_path / "bad.json").write_text('{"comparisons": []}')
    assert run_cli(["report", str(tmp_path / "bad.json")]) == 2


def test_compare_cli_across_selectors(report, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert run_cli(["compare", f"{report['run_id']}:base", f"{report['run_id']}:tuned", "--out", str(out),
                    "--store", str(report["store"].path)]) == 0
    assert (out / "report.html").is_file()
    assert "tuned vs base" in capsys.readouterr().out


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run_chromium(binary: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={tmp / 'profile'}"]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120, check=False)


def test_browser_runs_no_model_script(report, tmp_path):
    binary = _chromium()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required in CI for the report escape test (apt-get install -y chromium)")
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    page = (report["out"] / "report.html").resolve().as_uri()
    dom = _run_chromium(binary, tmp_path, "--virtual-time-budget=3000", "--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "</html>" in dom.stdout
    # the payloads would set the title and a data-pwned attribute, or create a real <img src="x"> element
    assert "PWNED" not in re.search(r"<title>(.*?)</title>", dom.stdout, flags=re.S).group(1)
    assert "data-pwned" not in dom.stdout.split("<body")[0]
    assert not re.search(r"<html[^>]*data-pwned", dom.stdout)
    assert '<img src="x"' not in dom.stdout
    assert "&lt;script&gt;document.title='PWNED'" in dom.stdout  # shown as text
    # scripts do run in this page (our own sorting script marked the root), yet none from a model output did
    assert re.search(r'<html[^>]*data-report-script="ran"', dom.stdout)
    shot = tmp_path / "report.png"
    res = _run_chromium(binary, tmp_path, "--window-size=1280,1600", f"--screenshot={shot}", page)
    assert res.returncode == 0, res.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    keep = os.environ.get("AFTERTUNE_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_single_model_run_still_gets_a_report(tmp_path, capsys):
    store = Store(tmp_path / "store.sqlite")
    run_id = store.create_run("audit", "base only", {})
    store.put_records(run_id, store.records(make_run(store, checkpoints=False), model="base"))
    out = tmp_path / "single"
    results = write_reports(store, run_id, out)
    assert results["verdict"]["status"] == "single"
    html = (out / "report.html").read_text()
    assert "base alone: no second model to compare with" in html
    md = (out / "report.md").read_text()
    assert "| t_capability.acc | 48.5% |" in md
    assert run_cli(["gate", str(out), "-t", "t_capability.acc: {max_decrease: 0.02}"]) == 2
    assert "one model" in capsys.readouterr().err


def test_protocol_names_what_can_differ_across_machines():
    """Issue 13: dtype, kernels, batch invariance and versions are named per model in the protocol."""
    from aftertune.report.markdown import _machine

    info = {"engine": "hf", "dtype": "float32", "device": "cpu", "hardware": "Xeon (avx512_bf16 avx512f)",
            "batch_invariant": True, "version": "hf-engine/2;torch/2.13;dtype/float32;attn/rowwise"}
    proto = {"models": [{"label": "base", "ref": "b", "info": info}, {"label": "ck", "ref": "c", "info": info}],
             "software": {"torch": "2.13.0", "transformers": "5.25.0"}}
    lines = "\n".join(_machine(proto, {"base"}))
    assert "| base | hf | float32 | cpu, Xeon (avx512_bf16 avx512f) | batch-invariant | " in lines
    assert "`hf-engine/2;torch/2.13;dtype/float32;attn/rowwise`" in lines and "| ck |" not in lines
    assert "Software: torch 2.13.0, transformers 5.25.0" in lines
    assert _machine({"models": [{"label": "base", "ref": "b", "info": {}}]}, {"base"}) == []


def test_protocol_names_the_quantized_files_audited():
    from aftertune.report.markdown import _quantized

    card = {"method": "int8", "quantizer": "torchao", "quantizer_version": "0.18.0", "path": "/c/quantized/ab",
            "files": {"model.safetensors": "f" * 64}}
    proto = {"models": [{"label": "base", "ref": "b", "info": {"engine": "hf"}},
                        {"label": "int8", "ref": "b#quant:int8", "info": {"variant": {"quant": card}}}]}
    lines = "\n".join(_quantized(proto, {"base", "int8"}))
    assert f"| int8 | int8 | torchao 0.18.0 | `/c/quantized/ab` | model.safetensors sha256 `{'f' * 64}` |" in lines
    assert "| base |" not in lines and _quantized(proto, {"base"}) == []


PAYLOADS = ["[x](javascript:alert(1))", "![i](data:text/html;base64,PHNjcmlwdD4=)", "<a href=javascript:alert(2)>a</a>",
            "<script>alert(3)</script>", "[r][ref]\n\n[ref]: javascript:alert(4)", "`code` | pipe", "&lt;b&gt;"]


def test_markdown_is_inert_under_a_real_renderer(report):
    """Every string field of results.json carrying link, image and HTML payloads renders (CommonMark with raw
    HTML on, every URL trusted as Python-Markdown does) without a javascript:/data: link or any tag."""
    import copy

    from markdown_it import MarkdownIt

    from aftertune.report.markdown import render_markdown

    res = copy.deepcopy(report["results"])
    payload = " ".join(PAYLOADS)

    def poison(node):
        if isinstance(node, dict):
            return {k: (payload if isinstance(v, str) and k not in ("kind", "direction", "change", "category",
                                                                    "family", "role")
                        else poison(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [payload if isinstance(x, str) else poison(x) for x in node]
        return node

    for key in ("verdict", "models", "protocol", "gate"):
        res[key] = poison(res[key])
    res["protocol"]["models"] = [{**m, "label": payload, "ref": payload} for m in report["results"]["protocol"]["models"]]
    md = render_markdown(res)
    renderer = MarkdownIt("commonmark", {"html": True}).enable("table")
    renderer.validateLink = lambda url: True  # trust every URL, as Python-Markdown does (markdown-it filters some)
    html = renderer.render(md)
    tags = re.findall(r"<[a-z][^>]*>", html, re.I)  # real tags only: escaped text reads &lt;...
    assert not [t for t in tags if re.search(r"(href|src)\s*=\s*[\"']?\s*(javascript|data):", t, re.I)]
    assert not [t for t in tags if re.match(r"<(script|a|img|iframe)\b", t, re.I)], tags
    assert "[x](javascript:alert(1))" in html  # the payload is shown as text, not dropped


def test_older_results_are_read_in_the_current_layout(report):
    """Version 2 kept the run's status in `run` (a pipeline's first write said "running", a re-render "done");
    version 1 also the run id and times. Both read as version 3, numbers unchanged."""
    from aftertune.compare.comparison import upgrade

    now = report["results"]
    v2 = json.loads(json.dumps(now))
    v2["schema_version"], v2["run"]["status"] = 2, v2["volatile"].pop("status")
    assert upgrade(v2) == now
    v1 = json.loads(json.dumps(v2))
    v1["schema_version"] = 1
    vol = v1.pop("volatile")
    v1["run"].update(id=vol["run_id"], created=vol["created"], updated=vol["updated"], status="done")
    now = {**now, "volatile": {**now["volatile"], "status": "done"}}
    v1["protocol"]["timings"] = vol["timings"]
    up = upgrade(v1)
    assert up["volatile"]["status"] == "done" and up["run"] == now["run"] and up["comparisons"] == now["comparisons"]


def test_a_resumed_runs_step_times_are_summed_per_step(report):
    """A resumed run times each step again; the report shows one time per step, over all attempts."""
    import copy

    from aftertune.report.markdown import render_markdown

    res = copy.deepcopy(report["results"])
    res["volatile"]["timings"] = [{"step": "audit the base model", "seconds": 1344.4},
                                  {"step": "compare and write the reports", "seconds": 11.0},
                                  {"step": "audit the base model", "seconds": 0.8},
                                  {"step": "audit 'base' / safety", "seconds": None}]
    md = render_markdown(res)
    assert "audit the base model 1345 s; compare and write the reports 11 s" in md
    assert md.count("audit the base model") == 1
