"""Tracking (yolo_jax.tracking, track_eval, data.mot_sequences): the Kalman filter against hand-computed steps,
association on hand-built frames, the MOT writer/reader, motmetrics on a hand-made case, the sequence generator,
and `--track` end to end through `python -m yolo_jax.main` and `python -m yolo_jax.track_eval`."""

from __future__ import annotations

import dataclasses
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
    """class_mode 'strict': a class-0 box, then a class-1 box at the same place: two tracks; with one class, one
    track."""
    frames = [([box(50, 50)], [0.9], [0])] * 3 + [([box(52, 50)], [0.9], [1])] * 3
    ids = _run(frames, TrackParams(class_mode='strict'))
    assert ids[:3] == [[1]] * 3 and ids[3:] == [[2]] * 3
    same = [(b, s, [0]) for b, s, _ in frames]
    assert _run(same, TrackParams(class_mode='strict')) == [[1]] * 6


def test_votes_by_hand():
    """Votes sum the scores per class; the class with the largest sum wins, ties to the smallest class id."""
    votes = ()
    for cls, score in [(3, 0.9), (8, 0.7), (3, 0.2), (8, 0.5), (5, 1.0)]:
        votes = tracking.add_vote(votes, cls, score)
    # by hand: 3 -> 0.9 + 0.2 = 1.1, 5 -> 1.0, 8 -> 0.7 + 0.5 = 1.2
    assert [c for c, _ in votes] == [3, 5, 8]
    np.testing.assert_allclose([w for _, w in votes], [1.1, 1.0, 1.2])
    assert tracking.voted_class(votes) == 8
    assert tracking.voted_class(tracking.add_vote(votes, 5, 0.2)) == 5  # 1.2 (5) ties 1.2 (8): the smaller id
    assert tracking.voted_class(((7, 0.5), (2, 0.5))) == 2
    assert tracking.add_vote((), 4, 0.5) == ((4, 0.5),)


def test_class_affinity_by_hand():
    """Tracks of classes (0, 1) and detections of classes (0, 1, 2): same-class pairs keep their IoU; 'strict'
    rules out the others; 'vote' subtracts the penalty, except for detections 0 and 1, which a track of their
    own class overlaps (detection 2's class has no track)."""
    iou = np.array([[0.9, 0.6, 0.7], [0.0, 0.3, 0.0]])
    apart = np.asarray([box(50, 50), box(150, 50), box(250, 50)], float)  # no duplicates: groups of one
    same = tracking.class_match(np.array([0, 1]), tracking.merge_duplicates(apart, np.array([0.9, 0.8, 0.7]),
                                                                            np.array([0, 1, 2]), 0.6))
    assert same.tolist() == [[True, False, False], [False, True, False]]
    strict = tracking.class_affinity(iou, same, TrackParams(class_mode='strict'))
    np.testing.assert_allclose(strict, [[0.9, -1, -1], [-1, 0.3, -1]])
    vote = tracking.class_affinity(iou, same, TrackParams(class_mode='vote', class_penalty=0.25))
    np.testing.assert_allclose(vote, [[0.9, -1, 0.45], [-1, 0.3, -0.25]])
    # A merged group (classes 2 and 1) matches a track of either class.
    pair = tracking.merge_duplicates(np.asarray([box(50, 50)] * 2, float), np.array([0.5, 0.4]), np.array([2, 1]), 0.6)
    assert pair.votes == (((2, 0.5), (1, 0.4)), ())
    assert tracking.class_match(np.array([0, 1, 2]), pair)[:, :1].tolist() == [[False], [True], [True]]
    assert not tracking.class_match(np.array([0, 1, 2]), pair)[:, 1].any()  # the merged box matches no track


def _moving(classes, scores=None):
    """One 20-px box moving 4 px/frame to the right, with these classes (and scores, default 0.9) per frame."""
    scores = scores or [0.9] * len(classes)
    return [([box(30 + 4 * t, 50)], [s], [c]) for t, (c, s) in enumerate(zip(classes, scores, strict=True))]


def test_a_class_flip_keeps_its_track_with_votes():
    """The detector calls an object 3, then 8 for two frames, then 3 again. 'strict': the 8s start a second track
    and the 3s return to the first one (two switches); 'vote': one track all along, reported as a 3. A flip of the
    low-score stage (score 0.3) is kept too when the box overlaps enough (IoU >= low_match_iou + penalty)."""
    frames = _moving([3] * 6 + [8, 8] + [3] * 6)
    assert _run(frames, TrackParams(class_mode='strict')) == [[1]] * 6 + [[2]] * 2 + [[1]] * 6
    vote = TrackParams(class_mode='vote', class_penalty=0.3)
    assert _run(frames, vote) == [[1]] * 14
    state = TrackerState()
    for b, s, c in frames[:8]:
        state, _ = track_step(state, np.asarray(b, float), np.asarray(s), np.asarray(c), vote)
    assert len(state.tracks) == 1 and state.tracks[0].cls == 3  # 6 x 0.9 for 3 against 2 x 0.9 for 8
    assert tracking.track_classes(state) == {1: 3}
    low = _moving([3] * 6 + [8, 8] + [3] * 6, [0.9] * 6 + [0.3, 0.3] + [0.9] * 6)
    assert _run(low, vote) == [[1]] * 14
    # a penalty that the flipped box cannot pay (IoU of the 8s with the prediction < 0.2 + 0.85): as 'strict'
    assert _run(frames, TrackParams(class_mode='vote', class_penalty=0.85)) == _run(frames, TrackParams(
        class_mode='strict'))


def test_a_lasting_class_change_moves_the_vote():
    """Three frames of class 0 then five of class 1 (same scores): one track, whose class becomes 1 once class
    1's summed score exceeds class 0's (frame 7: 4 x 0.9 > 3 x 0.9; frame 6 ties 3 x 0.9, the smaller id 0)."""
    vote = TrackParams(class_mode='vote')
    state, classes = TrackerState(), []
    for b, s, c in _moving([0] * 3 + [1] * 5):
        state, ids = track_step(state, np.asarray(b, float), np.asarray(s), np.asarray(c), vote)
        assert ids.tolist() == [1]
        classes.append(state.tracks[0].cls)
    assert classes == [0, 0, 0, 0, 0, 0, 1, 1]


def _bounce(speed: float, gap: float, classes: tuple[int, int]):
    """Two boxes approach head-on at `speed` px/frame, turn back when their centres are `gap` px apart, and
    leave: the Kalman predictions go on towards each other, so matching by position alone swaps them."""
    frames, xa, xb, va = [], 40.0, 140.0, speed
    for _ in range(24):
        frames.append(([box(xa, 50), box(xb, 52)], [0.9, 0.9], list(classes)))
        if xb - xa <= gap:
            va = -speed
        xa, xb = xa + va, xb - va
    return frames


def test_objects_of_different_classes_do_not_swap_with_votes():
    """Two confident objects of classes 1 and 2 meet and turn back. Class-blind (one class for both) they swap
    ids; 'vote' keeps each id on its object, like 'strict' (a detection that a track of its own class overlaps
    never continues another class's track), whatever the penalty."""
    for speed, gap in ((4, 8), (5, 6)):
        blind = _run(_bounce(speed, gap, (0, 0)), TrackParams())
        assert len({tuple(i) for i in blind}) > 1  # a swap: the ids of (a, b) change
        strict = _run(_bounce(speed, gap, (1, 2)), TrackParams(class_mode='strict'))
        assert {tuple(i) for i in strict} == {(1, 2)}
        for penalty in (0.0, 0.3):
            ids = _run(_bounce(speed, gap, (1, 2)), TrackParams(class_mode='vote', class_penalty=penalty))
            assert ids == strict, (speed, gap, penalty, ids)


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
    for mode in tracking.CLASS_MODES:  # classes 0 and 1 at random: 'vote' crosses classes too
        assert _run(frames, TrackParams(class_mode=mode)) == _run(frames, TrackParams(class_mode=mode))
    assert _run(frames, TrackParams(class_mode='vote')) != _run(frames, TrackParams(class_mode='strict'))
    state, _ = track_step(TrackerState(), np.array([box(5, 5)]), np.array([0.9]), np.array([0]), TrackParams())
    assert state.frame == 1 and state.tracks[0].id == 1  # the input state is not changed
    assert TrackerState().tracks == ()


def test_update_trails_and_counts():
    trails = tracking.update_trails({}, np.array([1, -1]), np.array([box(10, 10), box(50, 50)]), length=2)
    trails = tracking.update_trails(trails, np.array([1]), np.array([box(20, 10)]), length=2)
    trails = tracking.update_trails(trails, np.array([1]), np.array([box(30, 10)]), length=2)
    assert trails == {1: ((20.0, 10.0), (30.0, 10.0))}
    assert tracking.count_tracks({1: 0, 2: 1, 3: 1}, ['cat', 'dog']) == {'cat': 1, 'dog': 2}
    assert tracking.count_tracks({4: 7}, ['cat', 'dog']) == {'7': 1}  # a class without a name: its id


def test_duplicate_keepers_by_hand():
    """Greedy in descending score: B (class 1) overlaps the better A (class 0) by IoU 360 / 440 = 0.82: it merges
    into A at thresholds below that. C (class 0, as A) is not A's duplicate, and B, itself merged, takes none;
    with B kept, C (on B's box) is B's. F overlaps E (another class) by IoU 180 / 620 = 0.29. G and H: equal
    scores, other classes, the same box: neither is the other's duplicate. 1.0 = off."""
    boxes = np.asarray([box(50, 50), box(52, 50), box(52, 50), box(150, 50), box(80, 50), box(91, 50),
                        box(250, 50), box(250, 50)], float)
    scores = np.asarray([0.9, 0.8, 0.7, 0.6, 0.95, 0.5, 0.4, 0.4])
    classes = np.asarray([0, 1, 0, 2, 1, 3, 0, 1])
    keepers = tracking.duplicate_keepers(boxes, scores, classes, 0.5)
    assert keepers.tolist() == [0, 0, 2, 3, 4, 5, 6, 7]
    assert tracking.duplicate_keepers(boxes, scores, classes, 0.8).tolist() == keepers.tolist()
    # At 0.85 B stays (0.82 is not above), and then C, on B's very box (IoU 1) with another class, is B's.
    assert tracking.duplicate_keepers(boxes, scores, classes, 0.85).tolist() == [0, 1, 1, 3, 4, 5, 6, 7]
    assert tracking.duplicate_keepers(boxes, scores, classes, 0.25).tolist()[4:6] == [4, 4]  # 0.29 > 0.25
    assert tracking.duplicate_keepers(boxes, scores, classes, 1.0).tolist() == list(range(8))

    merged = tracking.merge_duplicates(boxes, scores, classes, 0.25)
    assert merged.kept.tolist() == [True, False, True, True, True, False, True, True]
    # Group scores by hand: A + B = 1.7 -> 1 (at most 1); E + F = 1.45 -> 1; the others their own.
    np.testing.assert_allclose(merged.scores[merged.kept], [1.0, 0.7, 0.6, 1.0, 0.4, 0.4])
    assert merged.votes[0] == ((0, 0.9), (1, 0.8)) and merged.votes[4] == ((1, 0.95), (3, 0.5))
    assert merged.votes[2] == ((0, 0.7),) and merged.votes[1] == ()  # a merged box has no group of its own
    low = tracking.merge_duplicates(boxes[:2], np.asarray([0.35, 0.3]), classes[:2], 0.5)
    np.testing.assert_allclose(low.scores, [0.65, 0.3])


def test_a_second_class_box_on_a_tracked_object_starts_no_track_with_duplicate_iou():
    """Frames 2-3 add a class-1 box (score 0.7) over a tracked class-0 object (IoU 0.82): 'vote' alone (duplicate_iou
    off) starts a second track from it; with duplicate_iou 0.5 it merges into the class-0 box, gets no id, and the
    object keeps one track."""
    frames = [([box(50 + 2 * t, 50)] + ([box(52 + 2 * t, 50)] if t in (1, 2) else []),
               [0.9] + ([0.7] if t in (1, 2) else []), [0] + ([1] if t in (1, 2) else [])) for t in range(4)]
    assert _run(frames, TrackParams(duplicate_iou=1.0)) == [[1], [1, 2], [1, 2], [1]]
    assert _run(frames, TrackParams(duplicate_iou=0.5)) == [[1], [1, -1], [1, -1], [1]]


def test_an_object_split_between_two_classes_is_tracked_with_merged_duplicates():
    """The detector is sure there is an object but not of its class: a class-3 box (0.35) and a class-8 box (0.3)
    on it for three frames, then the other way round (3 at 0.3, 8 at 0.4) for two. Each box alone is below
    new_track_score (0.6): no track without merging. Merged (IoU 1 > 0.6), the groups score 0.65 and 0.7: one
    track, carried by the best-scored box of each frame; its vote by hand: 3 leads (1.05 against 0.9, then 1.35
    against 1.3) until the last frame (1.65 against 1.7)."""
    frames = [([box(50 + 3 * t, 50)] * 2, [0.35, 0.3] if t < 3 else [0.3, 0.4], [3, 8]) for t in range(5)]
    assert _run(frames, TrackParams(duplicate_iou=1.0)) == [[-1, -1]] * 5
    params, state, ids, classes = TrackParams(duplicate_iou=0.6), tracking.TrackerState(), [], []
    for b, sc, c in frames:
        state, i = tracking.track_step(state, np.asarray(b, float), np.asarray(sc), np.asarray(c), params)
        ids.append(i.tolist())
        classes.append(tracking.track_classes(state))
    assert ids == [[1, -1]] * 3 + [[-1, 1]] * 2
    assert classes == [{1: 3}] * 4 + [{1: 8}]
    np.testing.assert_allclose([w for _, w in state.tracks[0].votes], [1.65, 1.7])


def test_track_params_defaults_are_the_configs():
    """TrackParams() (what the tests use) and config.track's defaults (what the CLI uses) agree field by field."""
    from yolo_jax import defaults

    for method in tracking.TRACKERS:
        assert TrackParams.from_config(defaults.default_config().track, method) == TrackParams(method=method)


def test_bad_params_are_config_errors():
    from yolo_jax.errors import ConfigError

    with pytest.raises(ConfigError, match='unknown tracker'):
        TrackParams(method='deepsort')
    with pytest.raises(ConfigError, match='low_score'):
        TrackParams(low_score=0.7, high_score=0.5)
    with pytest.raises(ConfigError, match='class_mode'):
        TrackParams(class_mode='loose')
    with pytest.raises(ConfigError, match='class_penalty'):
        TrackParams(class_penalty=1.5)
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match='duplicate_iou'):
            TrackParams(duplicate_iou=bad)


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


# ------------------------------------------------------------------------------------------------ motmetrics CLI


def _cli(*args: str, module: str = 'yolo_jax.track_eval', timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_track_eval_on_a_hand_made_case(tmp_path):
    """Two objects over 4 frames. Predictions: ids 10 / 20 on them in frames 1-2; frame 3 object 1 gets id 30
    (a switch) and object 2 is missed; frame 4: 30, 20 again (object 2 is fragmented) and a false positive.
    By hand: MOTA = 1 - (FN 1 + FP 1 + IDSW 1) / 8 = 0.625; IDF1 = 2 IDTP / (8 gt + 8 predicted) with IDTP =
    2 (1 ↔ 10, or 30) + 3 (2 ↔ 20) = 0.625; object 1 mostly tracked (4/4), object 2 partly (3/4)."""
    pytest.importorskip('motmetrics')
    g1, g2 = box(30, 30), box(100, 30)
    gt = []
    for f in range(1, 5):
        gt += tracking.mot_lines(f, np.array([1, 2]), np.array([g1, g2]), np.ones(2))
    near = lambda b: [v + 1 for v in b]  # IoU ~0.8 with the ground truth
    pred = (tracking.mot_lines(1, np.array([10, 20]), np.array([near(g1), g2]), np.ones(2))
            + tracking.mot_lines(2, np.array([10, 20]), np.array([g1, near(g2)]), np.ones(2))
            + tracking.mot_lines(3, np.array([30]), np.array([g1]), np.ones(1))
            + tracking.mot_lines(4, np.array([30, 20, 40]), np.array([g1, g2, box(200, 200)]), np.ones(3)))
    gt_path = tracking.write_mot(tmp_path / 'gt.txt', gt)
    pred_path = tracking.write_mot(tmp_path / 'pred.txt', pred)
    r = _cli(f'--gt={gt_path}', f'--pred={pred_path}', f'--output={tmp_path / "m.json"}')
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / 'm.json').read_text())
    assert m['mota'] == pytest.approx(0.625) and m['idf1'] == pytest.approx(0.625)
    assert (m['num_switches'], m['num_fragmentations'], m['num_false_positives'], m['num_misses']) == (1, 1, 1, 1)
    assert (m['mostly_tracked'], m['partially_tracked'], m['mostly_lost']) == (1, 1, 0)
    assert 'MOTA 0.6250  IDF1 0.6250' in r.stdout and 'ID switches 1' in r.stdout


def test_track_eval_errors(tmp_path):
    (tmp_path / 'gt.txt').write_text('1,1,1,1,5,5,1,-1,-1,-1\n')
    for args, message in [(('--gt=' + str(tmp_path / 'gt.txt'), f'--pred={tmp_path / "none.txt"}'), 'no such MOT'),
                          (('--gt=' + str(tmp_path / 'gt.txt'), '--pred=x', '--bogus=1'), 'bogus'),
                          ((f'--pred={tmp_path / "gt.txt"}',), 'gt'),
                          (('--gt=' + str(tmp_path / 'gt.txt'), f'--pred={tmp_path / "gt.txt"}', '--iou=0'), 'iou')]:
        r = _cli(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and lines[-1].startswith('error: ') and message in lines[-1], (args, r.stderr)
        assert 'Traceback' not in r.stderr


# ------------------------------------------------------------------------------------------ generated sequences


def test_sequence_generator_is_deterministic_and_consistent():
    from yolo_jax.data import mot_sequences as ms

    spec = ms.SequenceSpec(num_frames=40, size=160, num_objects=4, crossings=1, occluders=1, sides=(28,),
                           occluder_width=(30, 30), speed=(4.0, 5.0), seed=3)
    a, b = ms.generate(spec), ms.generate(spec)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.gt, b.gt)
    assert not np.array_equal(a.frames, ms.generate(dataclasses.replace(spec, seed=4)).frames)
    assert a.frames.shape == (40, 160, 160, 3) and a.frames.dtype == np.uint8
    gt = a.gt
    assert np.all(gt[:, 2:4] >= 0) and np.all(gt[:, 4:6] <= 160) and np.all(gt[:, 7] >= spec.min_visibility)
    # one row per identity and frame; every identity's class is its object's digit
    assert len({(f, i) for f, i in gt[:, :2].tolist()}) == len(gt)
    labels = {o.id: o.label for o in a.objects}
    assert all(labels[int(i)] == c for i, c in gt[:, [1, 6]].tolist())
    # the crossing pair: same class, boxes overlapping (IoU > 0.3) in some frame, on opposite sides before/after
    p, q = a.objects[0], a.objects[1]
    assert p.label == q.label
    dx = p.corners[:, 0] - q.corners[:, 0]
    assert dx.min() < -20 and dx.max() > 20 and np.abs(dx).min() < 0.4 * p.side
    # pixels: a row's box holds dark digit pixels unless the bar covers it; the bar is drawn on top, grey
    (x1, x2), = a.occluders
    assert np.all(a.frames[:, :, x1:x2] == ms.OCCLUDER_GREY)
    f, _, bx1, by1, bx2, by2, _, vis = gt[np.argmax(gt[:, 7])]
    assert vis == 1.0 and a.frames[int(f) - 1, int(by1):int(by2), int(bx1):int(bx2)].min() < 100
    # occlusions by the bar leave gaps inside an identity's rows
    assert ms.occlusion_gaps(gt) and max(ms.occlusion_gaps(gt)) <= 15
    dets = ms.perfect_detections(a)
    assert sum(len(d[0]) for d in dets) == len(gt)


def test_trackers_on_perfect_detections_of_generated_sequences():
    """With the ground truth as detections both trackers keep every identity: through crossings without
    occlusion, and through the bar occlusions (a few frames each) too."""
    pytest.importorskip('motmetrics')
    from yolo_jax import track_eval
    from yolo_jax.data import mot_sequences as ms

    for occluders in (0, 2):
        seq = ms.generate(ms.SequenceSpec(num_frames=60, occluders=occluders, seed=occluders))
        dets = ms.perfect_detections(seq)
        gt = tracking.MotRows(seq.gt[:, 0].astype(int), seq.gt[:, 1].astype(int), seq.gt[:, 2:6], np.ones(len(seq.gt)))
        for method in tracking.TRACKERS:
            ids = tracking.track_sequence(dets, TrackParams(method=method))
            frames = np.concatenate([np.full(len(i), t + 1) for t, i in enumerate(ids)])
            boxes = np.concatenate([d[0] for d in dets])
            pred = tracking.MotRows(frames, np.concatenate(ids), boxes, np.ones(len(frames)))
            m = track_eval.mot_metrics(gt, pred)
            assert (m['idf1'], m['num_switches'], m['mota']) == (1.0, 0, 1.0), (occluders, method, m)


# ------------------------------------------------------------------------------------------ --track end to end


def test_detect_track_end_to_end(tmp_path):
    """`main --mode=detect --video=... --track` on a generated clip with a random model (its boxes are
    meaningless; thresholds lowered so that it finds some): the JSON lines carry a track id per box, tracks.txt
    holds exactly the boxes with an id >= 0 in MOT format, the counts are the ids per voted class, the video
    has every frame, and the ids are those of the tracker run on the logged detections. An image folder with
    --track and --tracker=sort is a sequence in name order; a bad --tracker or class_mode is one error line."""
    pytest.importorskip('cv2')
    from test_detect import make_workdir, small_config
    from test_video import read_video, write_video

    from yolo_jax.data import mot_sequences as ms

    workdir = make_workdir(tmp_path / 'workdir', small_config())
    seq = ms.generate(ms.SequenceSpec(num_frames=6, size=96, num_objects=2, crossings=1, sides=(28,), seed=1))
    clip = write_video(tmp_path / 'clip.avi', list(seq.frames))
    overrides = ['--config.eval.score_threshold=0.05', '--config.eval.max_detections=20',
                 '--config.track.low_score=0.05', '--config.track.high_score=0.1', '--config.track.new_track_score=0.1']
    base = ['--config=configs/mnist.py:tiny,smoke', f'--workdir={workdir}', '--mode=detect', *overrides]
    out = tmp_path / 'out'
    r = _cli(*base, f'--video={clip}', '--track', f'--output={out}', module='yolo_jax.main', timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(ln) for ln in (out / 'detections.jsonl').read_text().splitlines()]
    assert [rec['frame'] for rec in records] == list(range(6))
    assert all(len(rec['track_id']) == len(rec['scores']) for rec in records)
    assert sum(i >= 0 for rec in records for i in rec['track_id']) > 0

    # tracks.txt = the JSON lines' boxes with an id, in MOT format
    rows = tracking.read_mot(out / 'tracks.txt')
    expected = [(rec['frame'] + 1, i, b) for rec in records for i, b in zip(rec['track_id'], rec['boxes'],
                                                                            strict=True) if i >= 0]
    assert rows.frames.tolist() == [e[0] for e in expected] and rows.ids.tolist() == [e[1] for e in expected]
    np.testing.assert_allclose(rows.boxes, [e[2] for e in expected], atol=0.01)
    # the same tracker over the logged detections gives the same ids (the wiring adds nothing)
    params = TrackParams(low_score=0.05, high_score=0.1, new_track_score=0.1)
    again = tracking.track_sequence([(np.reshape(rec['boxes'], (-1, 4)), rec['scores'], rec['classes'])
                                     for rec in records], params)
    assert [a.tolist() for a in again] == [rec['track_id'] for rec in records]
    # each track counted once, under the class with the largest summed score of its boxes (ties: smaller id)
    counts = json.loads((out / 'track_counts.json').read_text())
    votes: dict = {}
    for rec in records:
        for i, c, name, sc in zip(rec['track_id'], rec['classes'], rec['class_names'], rec['scores'], strict=True):
            if i >= 0:
                per = votes.setdefault(i, {})
                per[(c, name)] = per.get((c, name), 0.0) + sc
    winners = [min(per.items(), key=lambda kv: (-kv[1], kv[0][0]))[0][1] for per in votes.values()]
    assert counts['per_class'] == {n: winners.count(n) for n in sorted(set(winners))}
    assert counts['tracker'] == 'bytetrack' and counts['params']['class_mode'] == 'vote'
    assert f"{counts['tracks']} track(s) (bytetrack" in r.stdout
    assert len(read_video(out / 'detections.mp4')) == 6

    # an image folder, in name order, with SORT
    from yolo_jax.data.mot_sequences import write_sequence

    folder = write_sequence(seq, tmp_path / 'seq', video=False) / 'img1'
    r = _cli(*base, f'--images={folder}', '--track', '--tracker=sort', f'--output={tmp_path / "out2"}',
             module='yolo_jax.main', timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(ln) for ln in (tmp_path / 'out2' / 'detections.jsonl').read_text().splitlines()]
    assert len(records) == 6 and all('track_id' in rec for rec in records)
    assert json.loads((tmp_path / 'out2' / 'track_counts.json').read_text())['tracker'] == 'sort'

    r = _cli(*base, f'--video={clip}', '--track', '--tracker=deepsort', module='yolo_jax.main')
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith('error: ') and 'deepsort' in r.stderr
    r = _cli(*base, f'--video={clip}', '--track', '--config.track.class_mode=loose', module='yolo_jax.main')
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith('error: config.track.class_mode')


def test_draw_tracks_colours_by_id():
    """The box outline is drawn in the colour of its track id (not its class), and the trail in the same colour."""
    from yolo_jax import visualize

    image = np.full((100, 120, 3), 255, np.uint8)
    out = visualize.draw_tracks(image, np.array([[40, 40, 80, 90]]), np.array([3]), np.array([0]), ['digit'],
                                {3: ((10.0, 95.0), (60.0, 95.0))})
    colour = visualize.class_color(3)
    assert tuple(out[65, 40]) == colour and tuple(out[90, 60]) == colour  # left and bottom edges (PIL: inclusive)
    assert tuple(out[95, 30]) == colour  # the trail
    assert colour != visualize.class_color(0) and np.all(image == 255)


def test_sequence_command(tmp_path):
    """`python -m yolo_jax.data.mot_sequences` writes the frames, gt.txt (the generator's ground truth through
    the MOT writer) and sequence.json; a bad flag is one error line, exit 2."""
    from yolo_jax.data import mot_sequences as ms

    args = ['--frames=5', '--size=96', '--objects=2', '--crossings=1', '--seed=2']
    r = _cli(f'--output={tmp_path / "seq"}', *args, module='yolo_jax.data.mot_sequences')
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / 'seq' / 'img1').iterdir()) == [f'{t:06d}.png' for t in range(1, 6)]
    seq = ms.generate(ms.SequenceSpec(num_frames=5, size=96, num_objects=2, crossings=1, seed=2))
    rows = tracking.read_mot(tmp_path / 'seq' / 'gt' / 'gt.txt')
    assert rows.frames.tolist() == seq.gt[:, 0].astype(int).tolist() and rows.ids.tolist() == seq.gt[:, 1].tolist()
    np.testing.assert_allclose(rows.boxes, seq.gt[:, 2:6], atol=0.01)
    meta = json.loads((tmp_path / 'seq' / 'sequence.json').read_text())
    assert meta['gt_classes'] == seq.gt[:, 6].astype(int).tolist()
    r = _cli(f'--output={tmp_path / "x"}', '--frames=0', module='yolo_jax.data.mot_sequences')
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ['error: flag --frames=0: 0 is not a positive integer']
