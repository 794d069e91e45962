"""``trainer templates`` and ``trainer rank`` on a real simulated run in tmp_path."""

from __future__ import annotations

import csv

import matplotlib.image as mpimg
import numpy as np
import pytest

from hitstream.errors import InputDataError
from hitstream.labels import read_labels
from hitstream.simulate import simulate_run, write_run
from trainer.cli import main
from trainer.templates.bank import build_bank, load_bank
from trainer.templates.rank import prefetch, read_ranking_csv, score_frames

N_FRAMES = 160
N_BANK = 20


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("rank")
    run = simulate_run(N_FRAMES, seed=33)
    h5 = write_run(d / "run.h5", run, dataset="entry/data")
    labels = d / "run.labels.csv"
    t = read_labels(labels)
    singles = t.index[t.label == "single"].tolist()[:N_BANK]
    picked = d / "picked.csv"
    with open(picked, "w", newline="") as fh:  # what a person hand-picked
        w = csv.writer(fh)
        w.writerow(("run", "index", "class"))
        w.writerows((t.run[0], i, "single") for i in singles)
        w.writerow((t.run[0], 0 if 0 not in singles else 1, "empty"))
    return d, h5, labels, picked, run, np.asarray(singles)


@pytest.fixture(scope="module")
def bank_file(run_files):
    d, h5, _, picked, _, _ = run_files
    out = d / "bank.h5"
    argv = ["templates", str(h5), "--dataset", "entry/data", "--labels", str(picked)]
    assert main([*argv, "--out", str(out)]) == 0
    return out


def test_templates_command_builds_the_bank(bank_file, run_files):
    _, _, _, _, run, singles = run_files
    bank = load_bank(bank_file)
    assert bank.mode == "polar" and len(bank) == N_BANK
    np.testing.assert_array_equal(bank.source_index, np.sort(singles))
    assert set(bank.source_run) == {"run.h5"}
    np.testing.assert_array_equal(bank.frames, run.frames[np.sort(singles)])
    assert bank.attrs["source_dataset"] == "entry/data"


def test_rank_command_sorts_and_draws(tmp_path, bank_file, run_files):
    _, h5, _, _, run, singles = run_files
    out = tmp_path / "ranked"
    labels_out = tmp_path / "top.csv"
    argv = ["rank", str(h5), "--dataset", "entry/data", "--bank", str(bank_file)]
    argv += ["--out", str(out), "--top", "16", "--labels-out", str(labels_out)]
    assert main(argv) == 0
    r = read_ranking_csv(out / "ranking.csv")
    assert len(r) == N_FRAMES - N_BANK  # the bank's own frames are left out
    assert not set(r.index.tolist()) & set(singles.tolist())
    assert np.all(np.diff(r.distance) >= 0)
    assert r.best_template.min() >= 0 and r.best_template.max() < N_BANK
    assert np.all((r.angle_deg >= 0) & (r.angle_deg < 180))
    # the front of the list is mostly clean singles, the back holds none
    truth = run.labels[r.index]
    assert np.mean(truth[:16] == 0) >= 0.75
    assert np.mean(truth[-16:] == 0) <= 0.1
    for name in ("best.png", "worst.png"):
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and min(img.shape[:2]) > 200
    with open(labels_out, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["run", "index", "class"]
    assert len(rows) == 17 and {row[2] for row in rows[1:]} == {"single"}
    assert [int(row[1]) for row in rows[1:]] == r.index[:16].tolist()
    assert {row[0] for row in rows[1:]} == {"run.h5"}


def test_rank_include_templates_puts_them_first(tmp_path, bank_file, run_files):
    _, h5, _, _, _, singles = run_files
    out = tmp_path / "all"
    argv = ["rank", str(h5), "--dataset", "entry/data", "--bank", str(bank_file), "--no-png"]
    assert main([*argv, "--out", str(out), "--include-templates", "--chunk", "50"]) == 0
    r = read_ranking_csv(out / "ranking.csv")
    assert len(r) == N_FRAMES
    assert set(r.index[:N_BANK].tolist()) == set(singles.tolist())
    assert r.distance[:N_BANK].max() < 0.02
    assert not (out / "best.png").exists()


def test_bruteforce_bank_ranks_too(tmp_path, run_files):
    _, h5, _, picked, _, _ = run_files
    bank = tmp_path / "bf.h5"
    argv = ["templates", str(h5), "--dataset", "entry/data", "--labels", str(picked)]
    assert main([*argv, "--mode", "bruteforce", "--max", "3", "--out", str(bank)]) == 0
    assert load_bank(bank).mode == "bruteforce"
    argv = ["rank", str(h5), "--dataset", "entry/data", "--bank", str(bank), "--no-png"]
    assert main([*argv, "--out", str(tmp_path / "bf")]) == 0
    r = read_ranking_csv(tmp_path / "bf" / "ranking.csv")
    assert len(r) == N_FRAMES - 3 and set(np.unique(r.angle_deg % 5)) == {0.0}


def test_score_frames_skips_excluded_blocks(run_files):
    _, _, _, _, run, _ = run_files
    matcher = build_bank(run.frames[:2]).matcher()
    blocks = [(0, run.frames[:4]), (4, run.frames[4:6])]
    r = score_frames(matcher, blocks, exclude=[0, 1, 4, 5])
    np.testing.assert_array_equal(r.index, [2, 3])


def test_commands_report_bad_inputs(tmp_path, run_files, bank_file, capsys):
    _, h5, labels, _, _, _ = run_files
    base = ["templates", str(h5), "--dataset", "entry/data", "--out", str(tmp_path / "b.h5")]
    # a class nobody labelled
    assert main([*base, "--labels", str(labels), "--class", "crystal"]) == 2
    assert "no frames of run.h5 labelled 'crystal'" in capsys.readouterr().err
    # labels of another run
    other = tmp_path / "other.csv"
    other.write_text("run,index,class\nr0099.h5,3,single\n")
    assert main([*base, "--labels", str(other)]) == 2
    assert "no labels for run run.h5" in capsys.readouterr().err
    # a wrong dataset path, and a file that is no bank
    assert main([*base, "--labels", str(labels)]) == 0
    out = ["--out", str(tmp_path / "never")]
    assert main(["rank", str(h5), "--dataset", "nope", "--bank", str(bank_file), *out]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["rank", str(h5), "--dataset", "entry/data", "--bank", str(h5), *out]) == 2
    assert "not a template bank" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_prefetch_passes_items_errors_and_stops():
    with prefetch(iter(range(5))) as items:
        assert list(items) == [0, 1, 2, 3, 4]

    def broken():
        yield 1
        raise InputDataError("run.h5: broken block")

    with pytest.raises(InputDataError, match="broken block"), prefetch(broken()) as items:
        list(items)
    seen = []

    def endless():
        for i in range(10**9):
            seen.append(i)
            yield i

    with prefetch(endless(), depth=2) as items:
        assert next(items) == 0
    assert len(seen) <= 5  # the producer stopped when the consumer left
