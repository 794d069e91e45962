"""``trainer label``: the labelling page's state, its HTTP API and a real browser on it."""

from __future__ import annotations

import http.client
import io
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from hitstream.errors import ConfigError, InputDataError
from hitstream.geometry import DetectorGeometry
from hitstream.labels import read_labels, write_labels
from hitstream.render import HOT_LEVEL, MASK_LEVEL, MASK_RGB, frame_levels, render_frame
from hitstream.simulate import simulate_run, write_run
from tests.browser import browser, screenshot  # noqa: F401
from tests.ingest_helpers import table
from tests.procs import command
from tests.tiny_bundle import CLASSES, expected_probabilities, make_tiny_bundle
from trainer.cli import main
from trainer.data.ingest import load_labelled
from trainer.labelling.server import LabelServer
from trainer.labelling.session import open_session, order_frames
from trainer.templates.bank import build_bank, load_bank, save_bank
from trainer.templates.rank import rank_run

DATASET = "entry/data"
N_RUN, N_RUN2 = 36, 12
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """run.h5 (36 float32 frames), r2.h5 (12 uint16 frames), a bank of 5 singles of run.h5
    and the tiny ONNX bundle."""
    d = tmp_path_factory.mktemp("label")
    run = simulate_run(N_RUN, seed=5)
    write_run(d / "run.h5", run, dataset=DATASET)
    run2 = simulate_run(N_RUN2, seed=6)
    with h5py.File(d / "r2.h5", "w") as f:
        f.create_dataset(DATASET, data=run2.frames.astype(np.uint16))
    singles = np.flatnonzero(run.labels == 0)[:5]
    bank = build_bank(run.frames[singles], source_run="run.h5", source_index=singles)
    save_bank(bank, d / "bank.h5")
    tiny = make_tiny_bundle(d / "tiny")
    return {
        "dir": d,
        "run": d / "run.h5",
        "run2": d / "r2.h5",
        "bank": d / "bank.h5",
        "singles": singles,
        "truth": run.labels,
        "frames": np.concatenate([run.frames, run2.frames.astype(np.uint16).astype(np.float32)]),
        "tiny": tiny,
    }


def rows(t) -> list[tuple[str, int, str]]:
    """A label table's rows, sorted."""
    return sorted(zip(t.run.tolist(), t.index.tolist(), t.label.tolist(), strict=True))


def session(data, labels: Path, runs=("run",), **kw):
    return open_session([data[r] for r in runs], DATASET, labels, progress=False, **kw)


# --- pictures and ordering ------------------------------------------------------------------


def test_levels_log_scale_with_mask():
    x = np.zeros((4, 5), np.float32)
    x[0, 0], x[0, 1], x[0, 2], x[0, 3], x[2, 2] = np.nan, np.inf, -7, 1e6, 500
    valid = np.ones((4, 5), bool)
    valid[3] = False
    hot = np.zeros((4, 5), bool)
    hot[2, 2] = hot[3, 3] = True
    lv = frame_levels(x, valid, hot)
    assert lv.dtype == np.uint8
    assert lv[0, 0] == lv[0, 1] == MASK_LEVEL and np.all(lv[3] == MASK_LEVEL)  # NaN, Inf, mask
    assert lv[2, 2] == HOT_LEVEL  # hot; a hot pixel that is masked stays masked
    assert lv[0, 2] == 0 and lv[1, 1] == 0 and lv[0, 3] == 253  # negatives, zeros, brightest


def test_order_frames_modes():
    d = np.array([0.5, np.nan, 0.1, 0.5, 0.3], np.float32)
    assert order_frames("template", 5, distance=d).tolist() == [2, 4, 0, 3, 1]
    p = np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4], [0.5, 0.5]], np.float32)
    assert order_frames("uncertainty", 4, probabilities=p).tolist() == [1, 3, 2, 0]
    assert order_frames("index", 3).tolist() == [0, 1, 2]
    with pytest.raises(ConfigError, match="template bank"):
        order_frames("template", 3)


def test_index_order_over_runs_of_any_dtype(data, tmp_path):
    s = session(data, tmp_path / "l.csv", runs=("run", "run2"), page_size=10)
    try:
        st = s.state()
        assert st["order"] == "index" and st["n_frames"] == N_RUN + N_RUN2 and st["n_pages"] == 5
        assert st["first_unlabelled_page"] == 0 and st["labelled"] == 0
        p3 = s.page(3)["frames"]
        assert [(f["run"], f["index"]) for f in p3[5:7]] == [("run.h5", 35), ("r2.h5", 0)]
        assert "guess" not in p3[0] and "distance" not in p3[0]
        # pictures: the central 128 x 128 pixels, or all of it; gap rows in the mask colour
        for frame, full, shape in ((N_RUN + 1, False, (128, 128)), (3, True, (260, 257))):
            png = s.png(frame, full)
            assert png is s.png(frame, full)  # cached
            img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            assert img.shape[:2] == shape
            row = shape[0] // 2  # the gap between the detector halves
            assert img[row, 0].tolist() == list(MASK_RGB)
            assert img[5, 5].tolist() != list(MASK_RGB)
        # the one renderer: the whole frame looks as on the streamer's live page
        assert s.png(3, True) == render_frame(data["frames"][3], DetectorGeometry())
    finally:
        s.close()


def test_template_order_matches_trainer_rank(data, tmp_path):
    s = session(data, tmp_path / "l.csv", bank=data["bank"])
    try:
        assert s.order_mode == "template"
        r = rank_run(data["run"], DATASET, load_bank(data["bank"]), progress=False)
        np.testing.assert_allclose(s.distance[r.index], r.distance, rtol=1e-6)
        ranked = s.order[: N_RUN - len(data["singles"])]
        assert np.all(np.diff(s.distance[ranked]) >= 0)
        # the bank's own frames are not scored and come last
        assert set(s.order[len(ranked) :].tolist()) == set(data["singles"].tolist())
        assert np.isnan(s.distance[data["singles"]]).all()
        assert s.describe(int(data["singles"][0]))["distance"] is None
        assert np.mean(data["truth"][ranked[:5]] == 0) >= 0.6  # clean singles first
    finally:
        s.close()


def test_uncertainty_order_and_guesses_from_the_model(data, tmp_path):
    s = session(data, tmp_path / "l.csv", runs=("run", "run2"), model=data["tiny"])
    try:
        assert s.order_mode == "uncertainty"  # the tiny bundle has no templates.h5
        want = expected_probabilities(data["frames"])
        np.testing.assert_allclose(s.probabilities, want, atol=1e-4)
        u = 1 - want.max(axis=1)
        assert np.all(np.diff(u[s.order]) <= 1e-5)  # most uncertain first
        first = s.page(0)["frames"][0]
        assert first["id"] == s.order[0]
        assert first["guess"] == CLASSES[int(np.argmax(want[first["id"]]))]
        assert first["uncertainty"] == pytest.approx(u[first["id"]], abs=1e-3)
        assert s.state()["model"] == "tiny:1"
    finally:
        s.close()


def test_default_bundle_brings_its_template_bank(data, tmp_path):
    s = session(data, tmp_path / "l.csv", model=ROOT / "models" / "default")
    try:
        assert s.order_mode == "template"  # models/default/templates.h5
        f = s.page(0)["frames"][0]
        assert f["distance"] is not None and f["guess"] in CLASSES
        assert np.isfinite(s.distance).all()  # its bank comes from other runs: none left out
    finally:
        s.close()


def test_inputs_checked_before_scoring(data, tmp_path):
    with pytest.raises(ConfigError, match="--order template needs"):
        session(data, tmp_path / "l.csv", order="template")
    with pytest.raises(ConfigError, match="needs --model"):
        session(data, tmp_path / "l.csv", order="uncertainty", bank=data["bank"])
    with pytest.raises(ConfigError, match=r"\.csv, \.json or \.h5"):
        session(data, tmp_path / "l.txt")
    with pytest.raises(ConfigError, match="is one of the runs"):
        session(data, data["run"])
    with pytest.raises(InputDataError, match="no dataset 'entry/nope'"):
        open_session([data["run"]], "entry/nope", tmp_path / "l.csv", progress=False)
    with pytest.raises(ConfigError, match="classes contain duplicates"):
        session(data, tmp_path / "l.csv", classes=["a", "b", "a"])


def test_cli_reports_bad_inputs(data, tmp_path, capsys):
    argv = ["label", str(data["run"]), "--labels", str(tmp_path / "l.csv")]
    assert main([*argv, "--dataset", "nope"]) == 2
    assert "no dataset 'nope'" in capsys.readouterr().err
    assert main([*argv, "--dataset", DATASET, "--model", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_label_command_runs_without_tensorflow(data, tmp_path):
    code = (
        "import sys\n"
        "from trainer.cli import main\n"
        "from trainer.labelling.session import open_session\n"
        "import trainer.labelling.refit, trainer.labelling.server, trainer.commands.label\n"
        "s = open_session([sys.argv[1]], 'entry/data', sys.argv[2], model=sys.argv[3],"
        " progress=False)\n"
        "s.png(0); s.set_label(0, 'single'); s.close()\n"
        "heavy = ('tensorflow', 'keras', 'tf2onnx')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    argv = [str(data["run"]), str(tmp_path / "l.csv"), str(ROOT / "models" / "default")]
    out = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# --- saving, merging, resuming ------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".json", ".h5"])
def test_labels_saved_merged_and_resumed(data, tmp_path, suffix):
    path = tmp_path / f"labels{suffix}"
    # the file names run.h5 by its stem, and holds a label of a run not shown
    old = table([("run", 3, "empty"), ("elsewhere.h5", 7, "single")], note=np.array(["a", "b"]))
    write_labels(path, old)
    s = session(data, path, page_size=4)
    try:
        assert s.labels[3] == "empty" and s.counts() == {
            "single": 1,
            "multiple": 0,
            "empty": 1,
            "other": 0,
        }
        out = s.set_label(5, "single")
        assert out["label"] == "single" and out["counts"]["single"] == 2
        got = read_labels(path)
        assert rows(got) == [
            ("elsewhere.h5", 7, "single"),
            ("run", 3, "empty"),
            ("run", 5, "single"),
        ]
        s.set_label(3, "multiple")  # changed in place, under the file's own run name
        s.set_label(3, None)  # cleared: the row goes
        s.set_label(9, "")  # clearing an unlabelled frame changes nothing
        got = read_labels(path)
        assert rows(got) == [
            ("elsewhere.h5", 7, "single"),
            ("run", 5, "single"),
        ]
        assert got.select(run="elsewhere.h5").extra["note"].tolist() == ["b"]  # kept
        for i in range(4):
            s.set_label(i, "other")
        assert s.first_unlabelled_page() == 1
    finally:
        s.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary files
    resumed = session(data, path, page_size=4)
    try:
        assert resumed.labels[5] == "single" and resumed.labels[3] == "other"
        assert resumed.state()["first_unlabelled_page"] == 1
        assert resumed.state()["labelled"] == 5
    finally:
        resumed.close()


def test_labels_past_the_end_are_kept_but_not_shown(data, tmp_path):
    path = tmp_path / "l.csv"
    write_labels(path, table([("run.h5", N_RUN + 5, "single"), ("run.h5", 1, "empty")]))
    s = session(data, path)
    try:
        assert s.state()["labelled"] == 1
        s.set_label(2, "empty")
    finally:
        s.close()
    assert (N_RUN + 5) in read_labels(path).index.tolist()


# --- HTTP --------------------------------------------------------------------------------------


def request(server, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        hdrs = {"Content-Type": "application/json"} if body is not None else {}
        hdrs.update(headers or {})
        if isinstance(body, dict | list):
            body = json.dumps(body)
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        raw = r.read()
        ctype = r.getheader("Content-Type") or ""
        return r.status, (json.loads(raw) if ctype.startswith("application/json") else raw)
    finally:
        conn.close()


def test_bad_requests_are_answered_400_and_change_nothing(data, tmp_path):
    path = tmp_path / "l.csv"
    with LabelServer(session(data, path, page_size=10)) as server:
        token = server.session.token
        bad = [
            {"id": 10**6, "class": "single"},
            {"id": -1, "class": "single"},
            {"id": "3", "class": "single"},
            {"id": True, "class": "single"},
            {"id": 1.5, "class": "single"},
            {"id": 0, "class": "banana"},
            {"id": 0, "class": 5},
            {"id": 0},
            {"run": "nope.h5", "index": 0, "class": "single"},
            {"run": "run.h5", "index": N_RUN, "class": "single"},
            [1, 2],
            "{not json",
            b"\xff\xfe",
        ]
        for body in bad:
            code, msg = request(server, "POST", "/api/label", body)
            assert code == 400, body
            assert isinstance(msg, dict) and msg["error"], body
        assert request(server, "POST", "/api/label", {"id": 0, "class": "banana"})[1][
            "error"
        ].startswith("unknown class 'banana'")
        ok = {"id": 1, "class": "single"}
        assert (
            request(server, "POST", "/api/label", json.dumps(ok), {"Content-Type": "text/plain"})[0]
            == 415
        )
        assert (
            request(server, "POST", "/api/label", ok, {"Origin": "http://evil.example"})[0] == 403
        )
        assert request(server, "POST", "/api/label", ok, {"Host": "evil.example"})[0] == 403
        assert request(server, "GET", "/api/state", None, {"Host": "evil.example:80"})[0] == 403
        assert request(server, "POST", "/api/label", "x" * 5000)[0] == 413
        assert request(server, "POST", "/api/other", ok)[0] == 404
        for target, code in (
            ("/api/page?page=99", 400),
            ("/api/page?page=abc", 400),
            (f"/frame/{token}/99999.png", 400),
            (f"/frame/{token}/x.png", 404),
            ("/frame/0123456789ab/0.png", 404),
            ("/nope", 404),
        ):
            assert request(server, "GET", target)[0] == code, target
        assert not path.exists()  # nothing was saved
        # the server still works
        code, msg = request(
            server, "POST", "/api/label", {"run": "run.h5", "index": 2, "class": "other"}
        )
        assert code == 200 and msg["label"] == "other" and msg["counts"]["other"] == 1
        code, page = request(server, "GET", "/api/page?page=0")
        assert code == 200 and page["frames"][2]["label"] == "other"
        code, png = request(server, "GET", f"/frame/{token}/2.png")
        assert code == 200 and png.startswith(b"\x89PNG")
        code, html = request(server, "GET", "/")
        assert code == 200 and b"label frames" in html
    assert rows(read_labels(path)) == [("run.h5", 2, "other")]


def test_beyond_loopback_labels_need_the_token(data, tmp_path):
    path = tmp_path / "l.csv"
    with LabelServer(session(data, path), host="0.0.0.0", token="s3cret") as server:
        assert not server.loopback
        ok = {"id": 1, "class": "single"}
        assert request(server, "GET", "/api/state")[0] == 200  # reading stays open
        assert request(server, "POST", "/api/label", ok)[0] == 401
        assert request(server, "POST", "/api/label", ok, {"Authorization": "Bearer nope"})[0] == 401
        assert not path.exists()
        code, msg = request(server, "POST", "/api/label", ok, {"Authorization": "Bearer s3cret"})
        assert code == 200 and msg["label"] == "single"
    with LabelServer(session(data, path), host="0.0.0.0") as server:  # no token: read-only
        assert request(server, "POST", "/api/label", ok)[0] == 403
    assert rows(read_labels(path)) == [("run.h5", 1, "single")]


# --- a real browser --------------------------------------------------------------------------


def _ready_url(proc, timeout: float = 60.0) -> str:
    """The URL of the 'ready' line the command prints once it serves."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if "ready" in line:
            return next(w for w in line.split() if w.startswith("http://"))
    err = proc.stderr.read() if proc.poll() is not None else ""
    raise AssertionError(f"no ready line (exit {proc.poll()}): {err}")


def _open_page(driver, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script(
            "const imgs = [...document.querySelectorAll('#grid .card img')];"
            "return document.body.dataset.ready === '1' && imgs.length > 0 &&"
            " imgs.every(i => i.complete && i.naturalWidth > 0);"
        )
    )


def _card(driver, k: int) -> dict:
    return driver.execute_script(
        "const c = document.querySelector(`.card[data-k='${arguments[0]}']`);"
        "return {id: +c.dataset.id, run: c.dataset.run, index: +c.dataset.index,"
        " label: c.dataset.label};",
        k,
    )


def test_label_in_a_browser_then_resume(data, tmp_path, browser):  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    path = tmp_path / "picked.csv"
    args = dict(model=data["tiny"], page_size=12)
    with LabelServer(session(data, path, **args)) as server:
        _open_page(browser, server.url)
        assert len(browser.find_elements(By.CSS_SELECTOR, "#grid .card")) == 12
        refit = browser.find_element(By.ID, "refitinfo").text
        assert refit == "model refits: off (no refits in this session)"
        assert not browser.find_element(By.ID, "refitbtn").is_displayed()
        first, other = _card(browser, 0), _card(browser, 5)
        browser.find_element(By.CSS_SELECTOR, ".card[data-k='0'] button[data-cls='single']").click()
        browser.find_element(By.CSS_SELECTOR, ".card[data-k='5'] img").click()  # focus
        ActionChains(browser).send_keys("2").perform()  # 2: multiple

        def saved(_: object) -> bool:
            if not path.exists():
                return False
            return rows(read_labels(path)) == sorted(
                [("run.h5", first["index"], "single"), ("run.h5", other["index"], "multiple")]
            )

        WebDriverWait(browser, 10).until(saved)
        picked = load_labelled([(data["run"], DATASET)], read_labels(path))  # what train reads
        assert sorted(picked.index.tolist()) == sorted([first["index"], other["index"]])
        WebDriverWait(browser, 5).until(lambda d: _card(d, 5)["label"] == "multiple")
        counts = browser.find_element(By.CSS_SELECTOR, "#counts").text
        assert "single 1" in counts and "multiple 1" in counts
        shot = screenshot(browser, "label_page")
        assert shot.stat().st_size > 10_000
        ActionChains(browser).send_keys("n").perform()  # next page
        WebDriverWait(browser, 5).until(
            lambda d: d.find_element(By.ID, "grid").get_attribute("data-page") == "1"
        )

    # restart on the same labels file, as the command: the page shows what was saved
    argv = ["trainer", "label", data["run"], "--dataset", DATASET, "--labels", path]
    with command(*argv, "--model", data["tiny"], "--page-size", "12", cwd=ROOT) as proc:
        _open_page(browser, _ready_url(proc))
        assert browser.find_element(By.ID, "refitinfo").text.endswith(
            "has no model.keras to fine-tune)"
        )
        shown = browser.execute_script(
            "return Object.fromEntries([...document.querySelectorAll('#grid .card')]"
            ".map(c => [c.dataset.index, c.dataset.label]));"
        )
        assert shown[str(first["index"])] == "single"
        assert shown[str(other["index"])] == "multiple"
        assert (
            browser.find_element(By.CSS_SELECTOR, "#counts span[data-cls='single'] b").text == "1"
        )
        # keys: the focus on the first frame, Backspace clears it, ArrowRight, 3 (empty)
        browser.find_element(By.CSS_SELECTOR, ".card[data-k='0'] img").click()
        ActionChains(browser).send_keys(Keys.BACKSPACE, Keys.ARROW_RIGHT, "3").perform()
        want = [
            ("run.h5", other["index"], "multiple"),
            ("run.h5", _card(browser, 1)["index"], "empty"),
        ]
        WebDriverWait(browser, 10).until(lambda _: rows(read_labels(path)) == sorted(want))
        proc.terminate()
        assert proc.wait(timeout=10) == 0
