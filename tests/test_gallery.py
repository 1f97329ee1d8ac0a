"""The error pictures (yolo_jax/evaluation/gallery.py): which boxes they show (error_types' hand-typed case), where a
tile draws its box and greys the outside of the photo, and that ids which are not files give no pictures."""

from __future__ import annotations

import numpy as np
from PIL import Image
from test_error_types import hand_case

from yolo_jax.evaluation import gallery as G
from yolo_jax.visualize import class_color


def test_picks_of_the_hand_typed_case():
    """hand_case: one background detection (p5, .75, class 0, image 1); missed c, e (class 0, image 1) and b
    (class 1, image 0), listed by class."""
    dets, gts = hand_case()
    picks = G.picks(dets, gts, 2)
    assert [(e['image'], e['class'], e['score']) for e in picks['top_background']] == [(1, 0, 0.75)]
    np.testing.assert_array_equal(picks['top_background'][0]['box'], [300, 0, 349, 49])
    assert [(e['image'], e['class'], e['box'].tolist()) for e in picks['missed']] == [
        (1, 0, [0, 0, 99, 99]), (1, 0, [200, 200, 299, 299]), (0, 1, [200, 0, 299, 99])]
    assert all(e['score'] is None for e in picks['missed'])
    assert len(G.picks(dets, gts, 2, limit=2)['missed']) == 2


def test_the_limit_keeps_the_highest_scores():
    dets = [{'boxes': np.asarray([[300, 0, 349, 49], [0, 300, 49, 349], [300, 300, 349, 349]], float),
             'scores': np.asarray([0.2, 0.9, 0.5]), 'classes': np.asarray([0, 0, 0])}]
    gts = [{'boxes': np.asarray([[0, 0, 99, 99]], float), 'classes': np.asarray([0])}]
    assert [e['score'] for e in G.picks(dets, gts, 1, limit=2)['top_background']] == [0.9, 0.5]


def test_tile_draws_the_box_and_greys_the_outside():
    image = np.full((400, 400, 3), 255, np.uint8)
    entry = {'image': 0, 'box': np.asarray([100.0, 100.0, 149.0, 149.0]), 'class': 2, 'score': 0.5}
    t = G.tile(image, entry, {'boxes': np.zeros((0, 4)), 'classes': np.zeros(0, int)}, ['a', 'b', 'c'], 'x.jpg')
    assert t.shape == (G.TILE + G.CAPTION, G.TILE, 3)
    # Crop side max(2 * 49, 64) = 98 around centre 124.5: the box's top edge at (100 - 75.5) * 150 / 98 = 37.5.
    assert tuple(t[38, 75]) == class_color(2)
    assert tuple(t[75, 75]) == (255, 255, 255)  # inside the box: the photo
    corner = {'image': 0, 'box': np.asarray([0.0, 0.0, 20.0, 20.0]), 'class': 0, 'score': None}
    t = G.tile(image, corner, {'boxes': np.zeros((0, 4)), 'classes': np.zeros(0, int)}, ['a'], 'x.jpg')
    # Side 64 around centre 10: left = top = -22, so x < 22 * 150 / 64 = 51.6 lies outside the photo.
    assert tuple(t[100, 20]) == (128, 128, 128)
    assert tuple(t[100, 100]) == (255, 255, 255)


def test_pictures_from_image_files(tmp_path):
    dets, gts = hand_case()
    for i, d in enumerate(dets):
        path = tmp_path / f'img{i}.png'
        Image.fromarray(np.full((400, 400, 3), 200, np.uint8)).save(path)
        d['image_id'] = str(path)
    pics = G.pictures(dets, gts, ['a', 'b'], load=lambda p: np.asarray(Image.open(p).convert('RGB')))
    assert sorted(pics) == ['missed', 'top_background']
    assert pics['top_background'].shape[:2] == (G.TILE + G.CAPTION + 4, G.TILE + 4)  # one tile, 2 px padding
    assert pics['missed'].shape[1] == 3 * (G.TILE + 2) + 2  # three tiles in a row
    dets[1]['image_id'] = str(tmp_path / 'gone.png')
    assert G.pictures(dets, gts, ['a', 'b']) == {}  # not every id is a file: no pictures
    for d in dets:
        d['image_id'] = 7
    assert G.pictures(dets, gts, ['a', 'b']) == {}
