"""Multi-object tracking on the host (NumPy): ByteTrack (default) and SORT over per-frame detections.

The detector stays batched under jit; each frame's detections then go through `track_step`, a function of an
explicit, immutable `TrackerState`:

- **Kalman filter** (`kalman_*`): constant velocity over the box centre, aspect ratio and height
  z = (cx, cy, a = w/h, h) in pixels; state (cx, cy, a, h, vcx, vcy, va, vh), one frame per step. Process and
  measurement noise are proportional to the box height (ByteTrack's / DeepSORT's model:
  `config.track.position_std`, `velocity_std` times h), so a big box may move more pixels per frame.
- **Association** (`associate`): 1 - IoU cost, optimal assignment (`scipy.optimize.linear_sum_assignment`);
  pairs below the IoU threshold are never matched. Classes (`class_affinity`, config.track.class_mode):
  'strict': pairs of different classes are never matched (a car never continues a person's track); 'vote':
  a track's class is the score-weighted vote of its matched detections' classes (`add_vote`, `voted_class`),
  and a detection of another class counts as its IoU minus `class_penalty`, so it continues a track only when
  it overlaps the track's predicted box by at least the threshold plus the penalty, no same-class pair is
  better, and no track of its own class overlaps it (a detector that flips an ambiguous object's class for a few
  frames does not break its track, and two tracked objects of different classes still do not swap).
- **ByteTrack**: detections with score >= high_score are matched to every track's predicted box first; the
  detections with low_score <= score < high_score are then matched (IoU >= low_match_iou) to the tracks still
  unmatched that were seen in the previous frame (an object whose score drops while it is partly occluded keeps
  its track). Unmatched high detections with score >= new_track_score start tracks.
- **Duplicates** (`duplicate_keepers`, config.track.duplicate_iou; off at 1.0): a box that overlaps a strictly
  higher-scored box of another class by more than this IoU is the same object seen as two classes (per-class NMS
  keeps one box per class, and an ambiguous object splits its class probability between them). It merges into
  that box (`merge_duplicates`): the group takes part once, with the best box, the group's summed score (at most
  1; so an object the detector is sure of but not of its class still reaches the first stage and starts a
  track), every member's class and score in the vote, and it counts as the same class as a track of any of its
  members' classes. The merged box gets no id.
- **SORT**: one stage with the detections of score >= high_score, each unmatched one starts a track.
- **Birth and death**: a new track is tentative until it has `min_hits` matched frames (in the first min_hits
  frames of a sequence every track is confirmed at once, as SORT does); a tentative track that misses a frame
  is dropped, a confirmed one after more than `max_age` frames without a match. Ids (1, 2, ...) are given at
  confirmation, so they are consecutive.

Also the MOTChallenge text format (`write_mot`, `read_mot`): `frame,id,x,y,w,h,score,-1,-1,-1`, frames 1-based,
x, y the 1-based top-left pixel (MOTChallenge's Matlab convention; the readers of motmetrics subtract 1).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from scipy.optimize import linear_sum_assignment

from yolo_jax import visualize
from yolo_jax.errors import ConfigError, DataError, MissingFileError

TRACKERS = ('bytetrack', 'sort')
CLASS_MODES = ('strict', 'vote')
_NDIM = 4  # measured: cx, cy, a, h


@dataclasses.dataclass(frozen=True)
class TrackParams:
    """Tracker settings (config.track plus the method); see yolo_jax/defaults.py for each field's meaning and
    default (these defaults equal config.track's, tested)."""

    method: str = 'bytetrack'
    high_score: float = 0.5
    low_score: float = 0.1
    new_track_score: float = 0.6
    match_iou: float = 0.2
    low_match_iou: float = 0.5
    min_hits: int = 1
    max_age: int = 30
    position_std: float = 1 / 20
    velocity_std: float = 1 / 160
    trail: int = 16
    class_mode: str = 'vote'
    class_penalty: float = 0.2
    duplicate_iou: float = 0.6

    def __post_init__(self):
        if self.method not in TRACKERS:
            raise ConfigError(f'--tracker: unknown tracker {self.method!r}; expected one of {", ".join(TRACKERS)}')
        if not 0 <= self.low_score <= self.high_score <= 1:
            raise ConfigError(f'config.track: need 0 <= low_score <= high_score <= 1, got {self.low_score}, '
                              f'{self.high_score}')
        if self.class_mode not in CLASS_MODES:
            raise ConfigError(f'config.track.class_mode: unknown mode {self.class_mode!r}; expected one of '
                              f'{", ".join(CLASS_MODES)}')
        if not 0 <= self.class_penalty <= 1:
            raise ConfigError(f'config.track.class_penalty: need 0 <= class_penalty <= 1, got {self.class_penalty}')
        if not 0 < self.duplicate_iou <= 1:
            raise ConfigError(f'config.track.duplicate_iou: need 0 < duplicate_iou <= 1, got {self.duplicate_iou}')
        if self.min_hits < 1 or self.max_age < 0:
            raise ConfigError(f'config.track: need min_hits >= 1 and max_age >= 0, got {self.min_hits}, '
                              f'{self.max_age}')

    @classmethod
    def from_config(cls, track: ml_collections.ConfigDict, method: str) -> TrackParams:
        """From config.track and the tracker name (--tracker)."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != 'method']
        return cls(method=method, **{k: track[k] for k in names})


# ----------------------------------------------------------------------------------------------------------------
# Boxes.


def xyxy_to_xyah(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) x1, y1, x2, y2 → (N, 4) cx, cy, w/h, h (pixels; heights below 1e-6 px are taken as 1e-6)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    w, h = boxes[:, 2] - boxes[:, 0], np.maximum(boxes[:, 3] - boxes[:, 1], 1e-6)
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2, w / h, h], axis=1)


def xyah_to_xyxy(xyah: np.ndarray) -> np.ndarray:
    """(N, 4) cx, cy, w/h, h → (N, 4) x1, y1, x2, y2 (pixels)."""
    xyah = np.asarray(xyah, np.float64).reshape(-1, 4)
    w = xyah[:, 2] * xyah[:, 3]
    half = np.stack([w, xyah[:, 3]], axis=1) / 2
    return np.concatenate([xyah[:, :2] - half, xyah[:, :2] + half], axis=1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) and (M, 4) xyxy boxes → (N, M) IoU (0 where the union is empty)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=-1)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


# ----------------------------------------------------------------------------------------------------------------
# Kalman filter, constant velocity, batched over N tracks: mean (N, 8), cov (N, 8, 8).


def _transition() -> np.ndarray:
    f = np.eye(2 * _NDIM)
    f[:_NDIM, _NDIM:] = np.eye(_NDIM)  # position += velocity (one frame)
    return f


def kalman_init(z: np.ndarray, params: TrackParams) -> tuple[np.ndarray, np.ndarray]:
    """First state from measurements z (N, 4) cx, cy, a, h: velocity 0, diagonal covariance with the position
    std 2 * position_std * h and the velocity std 10 * velocity_std * h (aspect: 1e-2 and 1e-5)."""
    z = np.asarray(z, np.float64).reshape(-1, _NDIM)
    h = z[:, 3:4]
    p, v = 2 * params.position_std * h, 10 * params.velocity_std * h
    std = np.concatenate([p, p, np.full_like(h, 1e-2), p, v, v, np.full_like(h, 1e-5), v], axis=1)
    mean = np.concatenate([z, np.zeros_like(z)], axis=1)
    return mean, np.einsum('ni,ij->nij', std**2, np.eye(2 * _NDIM))


def kalman_predict(mean: np.ndarray, cov: np.ndarray, params: TrackParams) -> tuple[np.ndarray, np.ndarray]:
    """One frame ahead: mean' = F mean, cov' = F cov F^T + Q, Q diagonal with stds (position_std * h for cx, cy,
    h; 1e-2 for a) and (velocity_std * h; 1e-5 for va), h the height before the step."""
    f = _transition()
    h = mean[:, 3:4]
    p, v = params.position_std * h, params.velocity_std * h
    std = np.concatenate([p, p, np.full_like(h, 1e-2), p, v, v, np.full_like(h, 1e-5), v], axis=1)
    q = np.einsum('ni,ij->nij', std**2, np.eye(2 * _NDIM))
    return mean @ f.T, f @ cov @ f.T + q


def kalman_update(mean: np.ndarray, cov: np.ndarray, z: np.ndarray,
                  params: TrackParams) -> tuple[np.ndarray, np.ndarray]:
    """Corrects the predicted state with measurements z (N, 4): the standard Kalman update with H = [I 0] and
    measurement noise R diagonal with stds (position_std * h, position_std * h, 1e-1, position_std * h), h the
    predicted height."""
    z = np.asarray(z, np.float64).reshape(-1, _NDIM)
    h = mean[:, 3:4]
    p = params.position_std * h
    r = np.einsum('ni,ij->nij', np.concatenate([p, p, np.full_like(h, 1e-1), p], axis=1) ** 2, np.eye(_NDIM))
    s = cov[:, :_NDIM, :_NDIM] + r  # innovation covariance, (N, 4, 4)
    pht = cov[:, :, :_NDIM]  # cov H^T, (N, 8, 4)
    gain = np.linalg.solve(s, np.swapaxes(pht, 1, 2)).swapaxes(1, 2)  # cov H^T S^-1 (S symmetric)
    mean = mean + np.einsum('nij,nj->ni', gain, z - mean[:, :_NDIM])
    cov = cov - gain @ s @ np.swapaxes(gain, 1, 2)
    return mean, cov


# ----------------------------------------------------------------------------------------------------------------
# Association.


def associate(iou: np.ndarray, min_iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal one-to-one matching of rows (tracks) and columns (detections) maximising the summed IoU.

    Args:
      iou: (T, D) IoU, or `class_affinity` (pairs that must not match below min_iou, e.g. -1).
      min_iou: pairs below this are never matched.

    Returns:
      matches (K, 2) [row, col], unmatched rows (sorted), unmatched columns (sorted).
    """
    t, d = iou.shape
    matches = np.zeros((0, 2), np.int64)
    if t and d:
        cost = np.where(iou >= min_iou, 1.0 - iou, 1e6)  # infeasible pairs: far more than any feasible sum
        rows, cols = linear_sum_assignment(cost)
        ok = iou[rows, cols] >= min_iou
        matches = np.stack([rows[ok], cols[ok]], axis=1).astype(np.int64)
    return (matches, np.setdiff1d(np.arange(t), matches[:, 0]), np.setdiff1d(np.arange(d), matches[:, 1]))


def duplicate_keepers(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """(D,) int: per detection the row it merges into: itself, or a strictly higher-scored detection of another
    class that it overlaps by IoU > iou_threshold (one ambiguous object that per-class NMS kept once per class).
    Greedy in descending score (ties: the earlier row first); a merged box takes no others, and boxes of equal
    scores never merge (neither is the other's duplicate). boxes (D, 4) xyxy pixels. iou_threshold >= 1: none."""
    rows = np.arange(len(boxes))
    keeper = rows.copy()
    if iou_threshold >= 1 or len(boxes) < 2:
        return keeper
    iou = iou_matrix(boxes, boxes)
    for i in np.argsort(-scores, kind='stable'):
        if keeper[i] == i:
            keeper[(iou[i] > iou_threshold) & (classes != classes[i]) & (scores < scores[i]) & (keeper == rows)] = i
    return keeper


@dataclasses.dataclass(frozen=True)
class Merged:
    """Detections after `merge_duplicates`. keeper (D,): the row each detection merges into (`duplicate_keepers`);
    classes (D,) and detected (D,): the detections' own classes and scores; scores (D,): a kept box's group score
    (its members' summed scores, at most 1), a merged box's own score."""

    keeper: np.ndarray
    classes: np.ndarray
    detected: np.ndarray
    scores: np.ndarray

    @property
    def kept(self) -> np.ndarray:
        """(D,) bool: the groups' best boxes (those that take part in tracking)."""
        return self.keeper == np.arange(len(self.keeper))

    def group(self, d: int) -> tuple[tuple[int, float], ...]:
        """Detection d's group as ((class, score), ...) in row order (empty for a merged box)."""
        return tuple((int(self.classes[j]), float(self.detected[j])) for j in np.flatnonzero(self.keeper == d))

    @property
    def votes(self) -> tuple[tuple[tuple[int, float], ...], ...]:
        """`group` of every detection."""
        return tuple(self.group(d) for d in range(len(self.keeper)))


def merge_duplicates(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float) -> Merged:
    """Groups each kept detection with its duplicates (`duplicate_keepers`): the group's score is the sum of its
    members' scores, at most 1; its votes are every member's (class, score)."""
    keeper = duplicate_keepers(boxes, scores, classes, iou_threshold)
    summed = np.minimum(np.bincount(keeper, weights=scores, minlength=len(boxes)), 1.0)
    return Merged(keeper, classes, scores, np.where(keeper == np.arange(len(boxes)), summed, scores))


def class_match(track_cls: np.ndarray, merged: Merged) -> np.ndarray:
    """(T, D) bool: track t's class is one of detection d's merged group's classes (False for a merged box)."""
    hits = np.asarray(track_cls).reshape(-1, 1) == merged.classes.reshape(1, -1)  # (T, D members)
    member = merged.keeper.reshape(1, -1) == np.arange(len(merged.keeper)).reshape(-1, 1)  # (D groups, D members)
    return (hits.astype(np.int64) @ member.T.astype(np.int64)) > 0


def class_affinity(iou: np.ndarray, same: np.ndarray, params: TrackParams) -> np.ndarray:
    """The (T, D) matrix `associate` maximises, from the IoU of tracks and detections and whether their classes
    agree.

    Same-class pairs: their IoU. Different-class pairs: never matched (-1) with class_mode 'strict'; with 'vote',
    IoU - class_penalty (so matched only when IoU >= min_iou + class_penalty, and worth less than a same-class
    pair of equal IoU), and never matched either when a track of the detection's own class (among the T given:
    the stage's) overlaps it (IoU > 0): near an object of its class, a detection is that object's, so two objects
    of different classes do not swap where they cross.

    Args:
      iou: (T, D) IoU of the tracks' predicted boxes with the detections.
      same: (T, D) bool, the track's (voted) class is the detection's (`class_match`).
    """
    if params.class_mode == 'strict':
        return np.where(same, iou, -1.0)
    claimed = ((iou > 0) & same).any(axis=0, keepdims=True)  # per detection: a track of its class overlaps it
    return np.where(same, iou, np.where(claimed, -1.0, iou - params.class_penalty))


# ----------------------------------------------------------------------------------------------------------------
# Class votes: per track ((class, summed score), ...) sorted by class.

Votes = tuple[tuple[int, float], ...]


def add_vote(votes: Votes, cls: int, score: float) -> Votes:
    """The votes with one more matched detection of class `cls` and score `score` (its weight)."""
    out = dict(votes)
    out[int(cls)] = out.get(int(cls), 0.0) + float(score)
    return tuple(sorted(out.items()))


def add_votes(votes: Votes, group: Iterable[tuple[int, float]]) -> Votes:
    """add_vote for each (class, score) of a detection's merged group."""
    for cls, score in group:
        votes = add_vote(votes, cls, score)
    return votes


def voted_class(votes: Votes) -> int:
    """The class with the largest summed score; ties go to the smallest class id (deterministic)."""
    return min(votes, key=lambda kv: (-kv[1], kv[0]))[0]


# ----------------------------------------------------------------------------------------------------------------
# Tracks and the tracker step.


@dataclasses.dataclass(frozen=True)
class Track:
    """One track. id: 0 while tentative, then 1, 2, ... in confirmation order; votes: its matched detections'
    summed scores per class, cls: voted_class(votes) (with class_mode 'strict' always the class it was born
    with); mean (8,), cov (8, 8): the Kalman state; hits: matched frames; misses: frames since the last match;
    box: (4,) xyxy of the last matched detection; key: a serial number for every track, tentative or not."""

    key: int
    id: int
    cls: int
    votes: Votes
    mean: np.ndarray
    cov: np.ndarray
    hits: int
    misses: int
    box: np.ndarray


@dataclasses.dataclass(frozen=True)
class TrackerState:
    """All a tracker carries between frames: its tracks, the next id and key, and the frames seen."""

    tracks: tuple[Track, ...] = ()
    next_id: int = 1
    next_key: int = 0
    frame: int = 0


def predicted_boxes(tracks: Sequence[Track], params: TrackParams) -> tuple[np.ndarray, np.ndarray]:
    """Each track's state one frame ahead: (mean (T, 8), cov (T, 8, 8))."""
    if not tracks:
        return np.zeros((0, 2 * _NDIM)), np.zeros((0, 2 * _NDIM, 2 * _NDIM))
    return kalman_predict(np.stack([t.mean for t in tracks]), np.stack([t.cov for t in tracks]), params)


def track_step(
    state: TrackerState, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, params: TrackParams,
) -> tuple[TrackerState, np.ndarray]:
    """One frame of tracking.

    Args:
      state: the tracker after the previous frame (TrackerState() before the first).
      boxes: (D, 4) xyxy detections in frame pixels; scores (D,); classes (D,) int.
      params: thresholds and the method ('bytetrack' or 'sort').

    Returns:
      (the new state, track_ids (D,) int64): per detection the id of the confirmed track it belongs to, -1 for
      detections that are not (yet) part of one (low scores, tentative tracks).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores, classes = np.asarray(scores, np.float64).reshape(-1), np.asarray(classes, np.int64).reshape(-1)
    tracks = state.tracks
    mean, cov = predicted_boxes(tracks, params)
    track_boxes = xyah_to_xyxy(mean[:, :_NDIM])
    track_cls = np.asarray([t.cls for t in tracks], np.int64)
    det_track = np.full(len(boxes), -1, np.int64)  # index into `tracks` per detection

    # An object detected as two classes at once takes part once: its best box, with the group's score and classes.
    merged = merge_duplicates(boxes, scores, classes, params.duplicate_iou)
    group_scores = merged.scores
    high = np.flatnonzero(merged.kept & (group_scores >= params.high_score))
    same = class_match(track_cls, merged)
    matches, free_tracks, _ = associate(
        class_affinity(iou_matrix(track_boxes, boxes[high]), same[:, high], params), params.match_iou)
    det_track[high[matches[:, 1]]] = matches[:, 0]
    if params.method == 'bytetrack':  # second stage: low-score boxes against the tracks seen last frame
        low = np.flatnonzero(merged.kept & (group_scores >= params.low_score) & (group_scores < params.high_score))
        recent = free_tracks[[tracks[i].misses == 0 for i in free_tracks]] if len(free_tracks) else free_tracks
        m2, _, _ = associate(
            class_affinity(iou_matrix(track_boxes[recent], boxes[low]), same[np.ix_(recent, low)], params),
            params.low_match_iou)
        det_track[low[m2[:, 1]]] = recent[m2[:, 0]]
    new_score = params.new_track_score if params.method == 'bytetrack' else params.high_score

    matched = {int(t): int(d) for d, t in enumerate(det_track) if t >= 0}
    frame, next_id, next_key = state.frame + 1, state.next_id, state.next_key
    warm_up = frame <= params.min_hits  # the sequence's first frames: confirm at once (SORT)
    kept: list[Track] = []
    ids = np.full(len(boxes), -1, np.int64)
    if matched:
        rows = np.asarray(sorted(matched))
        z = xyxy_to_xyah(boxes[[matched[r] for r in rows]])
        upd_mean, upd_cov = kalman_update(mean[rows], cov[rows], z, params)
        updated = {int(r): (upd_mean[i], upd_cov[i]) for i, r in enumerate(rows)}
    for i, t in enumerate(tracks):
        if i in matched:
            d = matched[i]
            hits, tid = t.hits + 1, t.id
            if tid == 0 and (hits >= params.min_hits or warm_up):
                tid, next_id = next_id, next_id + 1
            m, c = updated[i]
            votes = add_votes(t.votes, merged.group(d))
            cls = t.cls if params.class_mode == 'strict' else voted_class(votes)  # strict: the class it was born with
            kept.append(dataclasses.replace(t, id=tid, cls=cls, votes=votes, mean=m, cov=c, hits=hits,
                                            misses=0, box=boxes[d]))
            ids[d] = tid if tid else -1
        elif t.id and t.misses + 1 <= params.max_age:  # confirmed and not too long unseen: coast on the prediction
            kept.append(dataclasses.replace(t, mean=mean[i], cov=cov[i], misses=t.misses + 1))
        # else: a tentative track that missed, or a confirmed one unseen for more than max_age frames: dropped
    births = [d for d in range(len(boxes)) if det_track[d] < 0 and merged.kept[d] and group_scores[d] >= new_score]
    if births:
        m0, c0 = kalman_init(xyxy_to_xyah(boxes[births]), params)
        for j, d in enumerate(births):
            tid = 0
            if params.min_hits <= 1 or warm_up:
                tid, next_id = next_id, next_id + 1
            votes = add_votes((), merged.group(d))
            kept.append(Track(key=next_key, id=tid, cls=voted_class(votes), votes=votes,
                              mean=m0[j], cov=c0[j], hits=1, misses=0, box=boxes[d]))
            next_key += 1
            ids[d] = tid if tid else -1
    return TrackerState(tuple(kept), next_id, next_key, frame), ids


def track_sequence(
    frames: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], params: TrackParams,
) -> list[np.ndarray]:
    """track_step over (boxes, scores, classes) per frame from a fresh state → the track ids per frame."""
    state, out = TrackerState(), []
    for boxes, scores, classes in frames:
        state, ids = track_step(state, boxes, scores, classes, params)
        out.append(ids)
    return out


def update_trails(trails: Mapping[int, tuple[tuple[float, float], ...]], ids: np.ndarray, boxes: np.ndarray,
                  length: int) -> dict[int, tuple[tuple[float, float], ...]]:
    """Adds each tracked box's centre (pixels) to its id's trail, keeping the last `length` centres; ids < 0 are
    ignored; trails of ids not seen this frame are kept as they are."""
    out = dict(trails)
    for tid, box in zip(np.asarray(ids).reshape(-1), np.asarray(boxes, np.float64).reshape(-1, 4), strict=True):
        if tid >= 0:
            centre = (float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2)
            out[int(tid)] = (*out.get(int(tid), ()), centre)[-length:]
    return out


def track_classes(state: TrackerState) -> dict[int, int]:
    """{id: class} of the state's confirmed tracks (the class a track reports: its vote's winner)."""
    return {t.id: t.cls for t in state.tracks if t.id}


def count_tracks(classes_of_ids: Mapping[int, int], class_names: Sequence[str]) -> dict[str, int]:
    """Confirmed tracks per class name, from {track id: its class} (each track counted once, under its class;
    classes without a track are left out)."""
    counts: dict[str, int] = {}
    for c in classes_of_ids.values():
        name = class_names[int(c)] if 0 <= int(c) < len(class_names) else str(int(c))
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


# ----------------------------------------------------------------------------------------------------------------
# A video run.


class TrackRecorder:
    """The tracker of one video run (video.detect_video): its state, trails for drawing, MOT lines and per-frame ids."""

    def __init__(self, params: TrackParams):
        self.params, self.state, self.trails = params, TrackerState(), {}
        self.lines: list[str] = []
        self.ids: list[np.ndarray] = []
        self.classes: dict[int, int] = {}  # every confirmed id's class, the last one reported while it lived
        self.seconds = 0.0

    def step(self, frame: int, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Track ids (D,) of frame `frame` (0-based) for its detections; -1 = in no confirmed track."""
        t = time.perf_counter()
        self.state, ids = track_step(self.state, boxes, scores, classes, self.params)
        self.seconds += time.perf_counter() - t
        alive = {tr.id for tr in self.state.tracks if tr.id}
        trails = update_trails(self.trails, ids, boxes, self.params.trail)
        self.trails = {k: v for k, v in trails.items() if k in alive}  # ended tracks' trails go
        self.lines += mot_lines(frame + 1, ids, boxes, scores)
        self.ids.append(ids)
        self.classes.update(track_classes(self.state))
        return ids

    def draw(self, frame: np.ndarray, boxes: np.ndarray, ids: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
        """The frame with its tracked boxes (ids from `step`) labelled with their track's class and id."""
        keep = ids >= 0
        labels = np.asarray([self.classes[int(i)] for i in ids[keep]], np.int64)
        return visualize.draw_tracks(frame, boxes[keep], ids[keep], labels, class_names,
                                     {int(i): self.trails.get(int(i), ()) for i in ids[keep]})

    def finish(self, output_dir: Path, class_names: Sequence[str]) -> dict[str, Any]:
        """Writes tracks.txt and track_counts.json, prints the counts; returns the summary's tracking entries."""
        tracks_path = write_mot(output_dir / 'tracks.txt', self.lines)
        counts = count_tracks(self.classes, class_names)
        record = {'tracker': self.params.method, 'tracks': sum(counts.values()), 'per_class': counts,
                  'params': dataclasses.asdict(self.params)}
        (output_dir / 'track_counts.json').write_text(json.dumps(record, indent=1) + '\n')
        listed = ', '.join(f'{k}: {v}' for k, v in counts.items()) or 'none'
        print(f'{record["tracks"]} track(s) ({self.params.method}; {listed}) → {tracks_path}')
        return {'track_s': self.seconds, 'tracks': str(tracks_path), 'track_counts': counts}


# ----------------------------------------------------------------------------------------------------------------
# MOTChallenge text files.


@dataclasses.dataclass(frozen=True)
class MotRows:
    """Rows of a MOTChallenge file: frames (N,) 1-based, ids (N,), boxes (N, 4) xyxy in 0-based pixels,
    scores (N,) (the 7th column: the detection score, or 1/0 = consider/ignore in ground truth)."""

    frames: np.ndarray
    ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray

    def frame(self, f: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, boxes) of 1-based frame f."""
        sel = self.frames == f
        return self.ids[sel], self.boxes[sel]


def mot_lines(frame: int, ids: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> list[str]:
    """MOTChallenge lines `frame,id,x,y,w,h,score,-1,-1,-1` for the boxes with an id >= 0 of one frame.

    frame: 1-based; boxes (N, 4) xyxy in 0-based pixels (written 1-based: x1 + 1, y1 + 1)."""
    out = []
    for tid, box, s in zip(np.asarray(ids).reshape(-1), np.asarray(boxes, np.float64).reshape(-1, 4),
                           np.asarray(scores, np.float64).reshape(-1), strict=True):
        if tid >= 0:
            x1, y1, x2, y2 = (float(v) for v in box)
            out.append(f'{frame},{int(tid)},{x1 + 1:.2f},{y1 + 1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{float(s):.4f},'
                       '-1,-1,-1')
    return out


def write_mot(path: str | Path, lines: Iterable[str]) -> Path:
    """Writes MOTChallenge lines (from mot_lines) to `path`, one per line."""
    path = Path(path)
    path.write_text(''.join(f'{ln}\n' for ln in lines))
    return path


def read_mot(path: str | Path) -> MotRows:
    """Reads a MOTChallenge file (comma- or whitespace-separated, >= 7 numeric columns; blank lines skipped).

    Raises MissingFileError when the file does not exist and DataError naming `file:line` for a malformed line
    (too few columns, non-numbers, a frame < 1, a negative width or height)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f'no such MOT file: {path}')
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.replace(',', ' ').split()
        try:
            values = [float(v) for v in fields[:7]]
        except ValueError:
            raise DataError(f'{path}:{n}: expected numbers frame,id,x,y,w,h,score,..., got {line.strip()!r}') from None
        if len(values) < 7:
            raise DataError(f'{path}:{n}: expected at least 7 columns frame,id,x,y,w,h,score, got {len(fields)}')
        if values[0] < 1 or values[0] != int(values[0]) or values[4] < 0 or values[5] < 0:
            raise DataError(f'{path}:{n}: frame must be an integer >= 1 and width, height >= 0: {line.strip()!r}')
        rows.append(values)
    a = np.asarray(rows, np.float64).reshape(-1, 7)
    boxes = np.stack([a[:, 2] - 1, a[:, 3] - 1, a[:, 2] - 1 + a[:, 4], a[:, 3] - 1 + a[:, 5]], axis=1)
    return MotRows(a[:, 0].astype(np.int64), a[:, 1].astype(np.int64), boxes, a[:, 6])
