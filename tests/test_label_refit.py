"""Refits while labelling (``trainer.labelling.refit``): the shipped bundle fine-tuned in a
child process on the labels so far, new guesses and order in the session, the page's API."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from hitstream.bundle import load_bundle
from hitstream.labels import LabelTable, read_labels, write_labels
from hitstream.simulate import simulate_run, write_run
from tests.browser import browser, screenshot  # noqa: F401
from trainer.labelling.refit import (
    MIN_LABELS,
    RefitConfig,
    Refitter,
    unavailable_reason,
)
from trainer.labelling.server import LabelServer
from trainer.labelling.session import open_session

DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default"
FAST = ("--epochs", "1", "--batch-size", "8")  # a real fine-tune, one short epoch


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("refit")
    sim = simulate_run(64, seed=818)
    path = write_run(d / "new.h5", sim)
    return {"dir": d, "path": path, "truth": sim.labels}


def _session(run, labels: Path, order: str = "proposed"):
    return open_session([run["path"]], "data", labels, model=DEFAULT, order=order, progress=False)


def _config(run, tmp: Path, every: int = 0, extra: tuple[str, ...] = FAST) -> RefitConfig:
    return RefitConfig(
        model=DEFAULT, runs=(run["path"],), dataset="data", workdir=tmp / "refits",
        every=every, finetune_args=extra,
    )  # fmt: skip


def _label(session, run, frames) -> None:
    classes = session.classes
    for f in frames:
        session.set_label(int(f), classes[int(run["truth"][f])])


def test_refit_gives_new_guesses_and_orders_only_the_unlabelled_frames(run, tmp_path):
    labels = tmp_path / "labels.csv"  # it also holds a label of a run not open here
    write_labels(
        labels, LabelTable(np.array(["elsewhere.h5"]), np.array([7]), np.array(["single"]))
    )
    s = _session(run, labels)
    refit = Refitter(s, _config(run, tmp_path))
    try:
        first = s.order[:40].copy()
        _label(s, run, first)
        before = s.probabilities.copy()
        assert refit.request("test")
        assert refit.state()["running"]
        assert not refit.request("again")  # one at a time
        extra = int(s.order[45])
        _label(s, run, [extra])  # labelling goes on while it refits
        assert refit.wait(600)
        st = refit.state()
        assert st["error"] is None and not st["running"]
        (h,) = st["history"]
        # the extra label may come before or after the copy; the other run's never goes in
        assert h["labels"] in (40, 41) and h["holdout"] > 0
        fitted = read_labels(tmp_path / "refits" / "refit-1.labels.csv")
        assert set(fitted.run.tolist()) == {"new.h5"} and len(fitted.label) == h["labels"]
        assert 0.0 <= h["before"] <= 1.0 and 0.0 <= h["after"] <= 1.0
        assert h["after_ci95"][0] <= h["after"] <= h["after_ci95"][1]
        new = load_bundle(Path(h["bundle"]), verify=True)  # a checked bundle, ready to serve
        assert s.model_name == new.label != load_bundle(DEFAULT).label
        assert s.order_version == 1
        assert not np.allclose(s.probabilities, before)
        # the labelled frames keep the front, in their order; then the unlabelled ones
        labelled = s.labels[s.order] != ""
        n = int(labelled.sum())
        assert n == 41 and labelled[:n].all()
        assert list(s.order[:40]) == list(first) and s.order[40] == extra
        assert sorted(s.order.tolist()) == list(range(s.n_frames))
        assert (s.position[s.order] == np.arange(s.n_frames)).all()
        assert s.describe(int(s.order[-1]))["guess"] in s.classes
        later = Refitter(s, _config(run, tmp_path))  # a later session on the same labels
        assert later.state()["history"] == [h]
    finally:
        refit.close()
        s.close()


def test_a_failed_refit_says_why_and_keeps_the_guesses(run, tmp_path):
    s = _session(run, tmp_path / "labels.csv", order="uncertainty")
    refit = Refitter(s, _config(run, tmp_path, extra=("--no-such-option",)))
    try:
        assert not refit.request()  # too few labels
        assert f"at least {MIN_LABELS}" in refit.state()["error"]
        _label(s, run, s.order[:MIN_LABELS].copy())
        probs, order = s.probabilities.copy(), s.order.copy()
        assert refit.request()
        assert refit.wait(120)
        st = refit.state()
        assert "refit 1 failed" in st["error"] and "no-such-option" in st["error"]
        assert st["history"] == [] and s.order_version == 0
        np.testing.assert_array_equal(s.probabilities, probs)
        np.testing.assert_array_equal(s.order, order)
        assert not (tmp_path / "refits" / "refit-1").exists()
        assert (tmp_path / "refits" / "refit-1.log").is_file()
        again = Refitter(s, _config(run, tmp_path, extra=("--no-such-option",)))
        assert again.request() and again.wait(120)  # a later session numbers on
        assert "refit 2 failed" in again.state()["error"]
    finally:
        refit.close()
        s.close()


def _post(server, path: str, body: dict) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_page_api_starts_refits_every_n_labels_and_on_request(run, tmp_path):
    labels = tmp_path / "labels.csv"
    s = _session(run, labels, order="index")
    refit = Refitter(s, _config(run, tmp_path, every=MIN_LABELS, extra=("--no-such-option",)))
    with LabelServer(s, refitter=refit) as server:
        code, r = _post(server, "/api/refit", {})
        assert code == 200 and not r["started"] and "at least" in r["refit"]["error"]
        for f in range(MIN_LABELS - 1):
            code, r = _post(server, "/api/label", {"id": f, "class": "single"})
            assert code == 200 and r["refit"]["next_at"] == MIN_LABELS
            assert not r["refit"]["running"]
        code, r = _post(server, "/api/label", {"id": MIN_LABELS, "class": "empty"})
        assert code == 200 and (r["refit"]["running"] or r["refit"]["error"])
        assert refit.wait(120)
        assert "failed" in server.state()["refit"]["error"]
        assert server.state()["refit"]["next_at"] == 2 * MIN_LABELS
        code, r = _post(server, "/api/refit", {})
        assert code == 200 and r["started"]
        assert refit.wait(120)
    # no refitter: the page says why, the button's request is refused
    write_labels(labels, LabelTable(np.array([], str), np.array([], np.int64), np.array([], str)))
    with LabelServer(_session(run, labels), refit_off="no model.keras") as server:
        assert server.state()["refit"] == {"available": False, "why": "no model.keras"}
        code, r = _post(server, "/api/refit", {})
        assert code == 409 and "no model.keras" in r["error"]


def test_unavailable_without_a_keras_model(tmp_path):
    assert unavailable_reason(None) == "no --model to fine-tune"
    assert "no model.keras" in (unavailable_reason(tmp_path) or "")
    assert unavailable_reason(DEFAULT) is None


def test_the_page_shows_the_held_out_accuracy_after_a_refit(run, tmp_path, browser):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    s = _session(run, tmp_path / "labels.csv")
    _label(s, run, s.order[: MIN_LABELS + 10].copy())
    refit = Refitter(s, _config(run, tmp_path))
    with LabelServer(s, refitter=refit) as server:
        browser.get(server.url)
        WebDriverWait(browser, 20).until(lambda d: d.execute_script(
            "return document.body.dataset.ready === '1'"))  # fmt: skip
        info = browser.find_element(By.ID, "refitinfo")
        assert info.text == "refits on the button only"
        browser.find_element(By.ID, "refitbtn").click()
        WebDriverWait(browser, 10).until(lambda _d: "refitting" in info.text)
        WebDriverWait(browser, 300).until(lambda _d: "held-out accuracy" in info.text)
        h = refit.state()["history"][-1]
        assert f"{h['after']:.3f}" in info.text and f"after {h['labels']} labels" in info.text
        screenshot(browser, "label_refit")
