"""Tracking (yolo_jax.tracking, track_eval, data.mot_sequences): the Kalman filter against hand-computed steps,
association on hand-built frames, the MOT writer/reader, motmetrics on a hand-made case, the sequence generator,
and `--track` end to end through `python -m yolo_jax.main` and `python -m yolo_jax.track_eval`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from yolo_jax import tracking
from yolo_jax.tracking import TrackerState, TrackParams, track_step

REPO = Path(__file__).resolve().parents[1]


def box(cx: float, cy: float, w: float = 20, h: float = 20) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


# ------------------------------------------------------------------------------------------------ Kalman filter


def test_kalman_init_predict_update_by_hand():
    """Each coordinate of the state is an independent (position, velocity) pair; with h = 20, position_std 1/20
    and velocity_std 1/160 the numbers below are worked out on paper for cx (and checked for h and a)."""
    p = TrackParams(position_std=1 / 20, velocity_std=1 / 160)
    mean, cov = tracking.kalman_init(np.array([[50.0, 40.0, 0.5, 20.0]]), p)
    # init: std position 2 * h/20 = 2 (var 4), velocity 10 * h/160 = 1.25 (var 1.5625); aspect 1e-2, 1e-5.
    np.testing.assert_allclose(mean[0], [50, 40, 0.5, 20, 0, 0, 0, 0])
    np.testing.assert_allclose(np.diag(cov[0]), [4, 4, 1e-4, 4, 1.5625, 1.5625, 1e-10, 1.5625])
    assert np.count_nonzero(cov[0] - np.diag(np.diag(cov[0]))) == 0

    mean, cov = tracking.kalman_predict(mean, cov, p)
    # P' = F P F^T + Q, Q: position var (h/20)^2 = 1, velocity var (h/160)^2 = 0.015625.
    # cx: Pxx = 4 + 1.5625 + 1 = 6.5625, Pxv = 1.5625, Pvv = 1.5625 + 0.015625 = 1.578125.
    np.testing.assert_allclose(mean[0], [50, 40, 0.5, 20, 0, 0, 0, 0])
    np.testing.assert_allclose([cov[0, 0, 0], cov[0, 0, 4], cov[0, 4, 0], cov[0, 4, 4]],
                               [6.5625, 1.5625, 1.5625, 1.578125])
    assert cov[0, 0, 1] == 0 and cov[0, 0, 5] == 0  # cx and cy stay independent

    mean, cov = tracking.kalman_update(mean, cov, np.array([[54.0, 40.0, 0.5, 20.0]]), p)
    # R for cx: (h/20)^2 = 1, S = 7.5625, gains Kx = 6.5625/7.5625, Kv = 1.5625/7.5625; innovation 4.
    s = 6.5625 + 1.0
    kx, kv = 6.5625 / s, 1.5625 / s
    np.testing.assert_allclose([mean[0, 0], mean[0, 4]], [50 + 4 * kx, 4 * kv])
    # P+ = P - K S K^T: Pxx = 6.5625 - 6.5625^2/S, Pxv = 1.5625 - 6.5625*1.5625/S, Pvv = 1.578125 - 1.5625^2/S.
    np.testing.assert_allclose([cov[0, 0, 0], cov[0, 0, 4], cov[0, 4, 4]],
                               [6.5625 - 6.5625**2 / s, 1.5625 - 6.5625 * 1.5625 / s, 1.578125 - 1.5625**2 / s])
    np.testing.assert_allclose(mean[0, [1, 2, 3, 5, 6, 7]], [40, 0.5, 20, 0, 0, 0], atol=1e-12)  # no innovation


def test_kalman_learns_constant_velocity():
    """Fed a box moving 5 px per frame, the filter's velocity converges to 5 and its prediction to the next box."""
    p = TrackParams()
    mean, cov = tracking.kalman_init(tracking.xyxy_to_xyah(np.array([box(0, 50)])), p)
    for t in range(1, 30):
        mean, cov = tracking.kalman_predict(mean, cov, p)
        mean, cov = tracking.kalman_update(mean, cov, tracking.xyxy_to_xyah(np.array([box(5 * t, 50)])), p)
    np.testing.assert_allclose(mean[0, 4], 5.0, atol=0.05)
    pred, _ = tracking.kalman_predict(mean, cov, p)
    np.testing.assert_allclose(tracking.xyah_to_xyxy(pred[:, :4])[0], box(150, 50), atol=0.3)


def test_box_conversions_and_iou():
    b = np.array([[10.0, 20.0, 30.0, 60.0]])
    np.testing.assert_allclose(tracking.xyxy_to_xyah(b), [[20, 40, 0.5, 40]])
    np.testing.assert_allclose(tracking.xyah_to_xyxy(tracking.xyxy_to_xyah(b)), b)
    iou = tracking.iou_matrix(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10], [20, 20, 30, 30]]))
    np.testing.assert_allclose(iou, [[50 / 150, 0]])


# ---------------------------------------------------------------------------------------------------- association


def test_associate_is_optimal_and_respects_the_threshold():
    # Greedy on the best pair (0.9 at [0, 0]) would leave row 1 with 0.1; the optimum pairs 0-1 and 1-0.
    iou = np.array([[0.9, 0.8], [0.85, 0.1]])
    matches, rows, cols = tracking.associate(iou, 0.2)
    assert sorted(map(tuple, matches.tolist())) == [(0, 1), (1, 0)] and rows.size == 0 and cols.size == 0
    matches, rows, cols = tracking.associate(np.array([[0.15, 0.0], [0.0, 0.6]]), 0.2)
    assert matches.tolist() == [[1, 1]] and rows.tolist() == [0] and cols.tolist() == [0]
    matches, rows, cols = tracking.associate(np.zeros((0, 3)), 0.2)
    assert matches.shape == (0, 2) and cols.tolist() == [0, 1, 2]


def _run(frames, params):
    """(boxes, scores, classes) per frame → track ids per frame."""
    return [ids.tolist() for ids in tracking.track_sequence(
        [(np.asarray(b, float).reshape(-1, 4), np.asarray(s, float), np.asarray(c)) for b, s, c in frames], params)]


def test_second_stage_recovers_a_partly_occluded_object():
    """An object's score drops to 0.3 for three frames (partly hidden): ByteTrack keeps its id through the
    low-score stage; SORT ignores those boxes, loses it, and here (max_age 0) starts a new id afterwards."""
    scores = [0.9, 0.9, 0.9, 0.3, 0.3, 0.3, 0.9, 0.9]
    frames = [([box(30 + 4 * t, 50)], [s], [0]) for t, s in enumerate(scores)]
    byte = _run(frames, TrackParams(method='bytetrack', max_age=0))
    assert byte == [[1]] * 8
    sort = _run(frames, TrackParams(method='sort', max_age=0))
    assert sort == [[1], [1], [1], [-1], [-1], [-1], [2], [2]]


def test_coasting_through_a_full_occlusion_keeps_the_id():
    """No detection for 6 frames while the object moves on at 4 px/frame: the predicted track meets it again."""
    frames = [([box(30 + 4 * t, 50)], [0.9], [3]) if not 8 <= t < 14 else ([], [], []) for t in range(20)]
    ids = _run(frames, TrackParams(max_age=10))
    assert all(i == [1] for t, i in enumerate(ids) if not 8 <= t < 14) and ids[8:14] == [[]] * 6
    assert _run(frames, TrackParams(max_age=3))[14] == [2]  # too long unseen: a new track


def test_crossing_keeps_identities():
    """Two same-class boxes cross head-on (8 px/frame each, overlapping for several frames): each keeps its id
    all along, for both trackers, whatever the order of the detections in a frame."""
    for method in tracking.TRACKERS:
        frames = []
        for t in range(25):
            a, b = box(20 + 8 * t, 50), box(220 - 8 * t, 54)
            order = [a, b] if t % 2 else [b, a]
            frames.append((order, [0.9, 0.9], [1, 1]))
        ids = _run(frames, TrackParams(method=method))
        by_object = [(i[1], i[0]) if t % 2 == 0 else tuple(i) for t, i in enumerate(ids)]  # (a's id, b's id)
        assert len(set(by_object)) == 1 and len(set(by_object[0])) == 2, (method, by_object)


def test_classes_never_share_a_track():
    """A class-0 box, then a class-1 box at the same place: two tracks; with one class, one track."""
    frames = [([box(50, 50)], [0.9], [0])] * 3 + [([box(52, 50)], [0.9], [1])] * 3
    ids = _run(frames, TrackParams())
    assert ids[:3] == [[1]] * 3 and ids[3:] == [[2]] * 3
    same = [(b, s, [0]) for b, s, _ in frames]
    assert _run(same, TrackParams()) == [[1]] * 6


def test_birth_needs_min_hits_and_new_track_score():
    """min_hits 3: a track is confirmed on its third frame (after the sequence's first 3 frames); a detection
    below new_track_score never starts one (ByteTrack) but does for SORT above high_score."""
    frames = [([box(50, 50)], [0.9], [0])] * 4 + [([box(50, 50), box(150, 50)], [0.9, 0.9], [0, 0])] * 4
    ids = _run(frames, TrackParams(min_hits=3))
    assert [i[1] for i in ids[4:]] == [-1, -1, 2, 2] and all(i[0] == 1 for i in ids)
    weak = [([box(50, 50)], [0.55], [0])] * 3
    assert _run(weak, TrackParams(method='bytetrack')) == [[-1]] * 3
    assert _run(weak, TrackParams(method='sort')) == [[1]] * 3


def test_deterministic():
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(30):
        n = rng.integers(0, 6)
        centres = rng.uniform(20, 200, (n, 2))
        frames.append(([box(x, y) for x, y in centres], rng.uniform(0, 1, n), rng.integers(0, 2, n)))
    assert _run(frames, TrackParams()) == _run(frames, TrackParams())
    state, _ = track_step(TrackerState(), np.array([box(5, 5)]), np.array([0.9]), np.array([0]), TrackParams())
    assert state.frame == 1 and state.tracks[0].id == 1  # the input state is not changed
    assert TrackerState().tracks == ()


def test_update_trails_and_counts():
    trails = tracking.update_trails({}, np.array([1, -1]), np.array([box(10, 10), box(50, 50)]), length=2)
    trails = tracking.update_trails(trails, np.array([1]), np.array([box(20, 10)]), length=2)
    trails = tracking.update_trails(trails, np.array([1]), np.array([box(30, 10)]), length=2)
    assert trails == {1: ((20.0, 10.0), (30.0, 10.0))}
    counts = tracking.count_tracks([np.array([1, 2]), np.array([1, 3, -1])], [np.array([0, 1]), np.array([0, 1, 0])],
                                   ['cat', 'dog'])
    assert counts == {'cat': 1, 'dog': 2}


def test_bad_params_are_config_errors():
    from yolo_jax.errors import ConfigError

    with pytest.raises(ConfigError, match='unknown tracker'):
        TrackParams(method='deepsort')
    with pytest.raises(ConfigError, match='low_score'):
        TrackParams(low_score=0.7, high_score=0.5)


# --------------------------------------------------------------------------------------------------- MOT files


def test_mot_writer_reader_round_trip(tmp_path):
    boxes = np.array([[10.5, 20.0, 30.5, 60.0], [0.0, 0.0, 5.0, 7.0], [1, 1, 2, 2]])
    lines = tracking.mot_lines(3, np.array([4, 7, -1]), boxes, np.array([0.9, 0.25, 0.5]))
    assert lines[0] == '3,4,11.50,21.00,20.00,40.00,0.9000,-1,-1,-1' and len(lines) == 2  # id -1: not written
    path = tracking.write_mot(tmp_path / 'tracks.txt', lines + tracking.mot_lines(5, np.array([4]), boxes[:1], [1]))
    rows = tracking.read_mot(path)
    assert rows.frames.tolist() == [3, 3, 5] and rows.ids.tolist() == [4, 7, 4]
    np.testing.assert_allclose(rows.boxes, boxes[[0, 1, 0]])
    np.testing.assert_allclose(rows.scores, [0.9, 0.25, 1.0])
    ids, b = rows.frame(5)
    assert ids.tolist() == [4] and b.shape == (1, 4)


def test_mot_reader_errors(tmp_path):
    from yolo_jax.errors import DataError, MissingFileError

    with pytest.raises(MissingFileError, match='no such MOT file'):
        tracking.read_mot(tmp_path / 'none.txt')
    bad = tmp_path / 'bad.txt'
    bad.write_text('1,1,1,1,5,5,1,-1,-1,-1\n\n2,1,x,1,5,5,1\n')
    with pytest.raises(DataError, match=r'bad.txt:3: expected numbers'):
        tracking.read_mot(bad)
    bad.write_text('0,1,1,1,5,5,1\n')
    with pytest.raises(DataError, match=r'bad.txt:1: frame must be'):
        tracking.read_mot(bad)
