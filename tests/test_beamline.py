"""The simulator's beamline (hitstream.simulate.beamline): each run's background and detector."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from hitstream.errors import ConfigError
from hitstream.simulate import (
    BeamlineConfig,
    SimConfig,
    expected_empty_frame,
    simulate_frames,
)
from hitstream.simulate.scene import run_beamline_of

EMPTY_ONLY = (0.0, 0.0, 1.0, 0.0)


def test_default_config_adds_nothing_and_runs_stay_reproducible() -> None:
    plain = SimConfig()
    assert not plain.beamline.active and run_beamline_of(1, 0, plain) is None
    a = simulate_frames(0, 3, seed=4)
    b = simulate_frames(0, 3, seed=4, config=replace(plain, frames_per_run=2))
    np.testing.assert_array_equal(a.frames, b.frames)  # inactive beamline: bit-identical


def test_each_run_draws_its_own_beamline_and_frames_of_a_run_share_it() -> None:
    cfg = SimConfig(beamline=BeamlineConfig.realistic(), frames_per_run=10, fractions=EMPTY_ONLY)
    beams = [run_beamline_of(3, i, cfg) for i in (0, 9, 10, 25)]
    assert beams[0] is beams[1]  # frames 0 and 9: run 0
    assert beams[0] is not beams[2] and beams[2] is not beams[3]
    levels = [b.level for b in beams[1:] if b is not None]
    assert len(set(levels)) == len(levels)  # other runs, other levels
    run = simulate_frames(0, 30, seed=3, config=cfg)
    assert run.params["beamline_run"].tolist() == [i // 10 for i in range(30)]


@pytest.mark.parametrize("level", [0.005, 0.05])
def test_background_level_and_the_expected_empty_frame(level: float) -> None:
    beam = replace(BeamlineConfig.realistic(), level=(level, level), no_background_share=0.0,
                   saturation_share=0.0, hot_pixels=(0, 0), shot_jitter=(0.0, 0.0))  # fmt: skip
    cfg = SimConfig(beamline=beam, fractions=EMPTY_ONLY, background_photons=(1.0, 1.0),
                    hot_pixels_per_frame=0.0)  # fmt: skip
    run = simulate_frames(0, 200, seed=11, config=cfg)
    valid = cfg.geometry.valid_pixels()
    mean = run.frames.mean(axis=0)
    expected = expected_empty_frame(11, 0, cfg)
    # measured level matches the setting (the stray light adds one photon per frame)
    assert mean[valid].mean() == pytest.approx(level, rel=0.1)
    assert expected[valid].mean() == pytest.approx(mean[valid].mean(), rel=0.05)
    assert (run.frames[:, ~valid] == 0).all()
    # steep at low q: the inner ring holds far more per pixel than the outer one
    h, w = cfg.geometry.shape
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2)
    inner = expected[(r > 8) & (r < 20) & valid].mean()
    outer = expected[(r > 100) & valid].mean()
    assert inner > 3 * outer


def test_detector_effects_saturation_gain_hot_pixels_and_common_mode() -> None:
    beam = replace(
        BeamlineConfig.realistic(), level=(0.02, 0.02), no_background_share=0.0,
        saturation_share=1.0, saturation=(50.0, 50.0), hot_pixels=(5, 5),
        hot_level=(100.0, 100.0), gain_spread=(0.1, 0.1), common_mode=(0.05, 0.05),
    )  # fmt: skip
    cfg = SimConfig(beamline=beam, fractions=EMPTY_ONLY, photons=(1e5, 1e5))
    b = run_beamline_of(5, 0, cfg)
    assert b is not None and len(b.hot_index) == 5 and b.saturation == 50.0
    run = simulate_frames(0, 20, seed=5, config=cfg)
    x = run.frames
    assert x.max() <= 50.0  # saturated
    hot = x.reshape(20, -1)[:, b.hot_index]
    assert (hot > 20).all()  # the run's hot pixels are in every frame
    assert len(np.unique(b.gain)) == 2  # two panels, two gains
    assert not np.allclose(x, np.round(x))  # gains and offsets: no longer whole photons


def test_config_is_checked_and_round_trips_through_json() -> None:
    import json

    with pytest.raises(ConfigError):
        BeamlineConfig(level=(0.0, 0.1))  # log-uniform needs low > 0
    with pytest.raises(ConfigError):
        BeamlineConfig(streak_share=2.0)
    cfg = SimConfig(beamline=BeamlineConfig.realistic(), frames_per_run=7)
    again = SimConfig(**json.loads(cfg.as_json()))
    assert again == cfg
