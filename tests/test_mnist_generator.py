"""The seeded MNIST detection generator against independent oracles (reference.md's make_data semantics)."""

import math

import numpy as np
import pytest

from yolo_jax.data import mnist_generator as gen
from yolo_jax.data.digits import Digits, resize_bilinear

SIZE = 416
SMALL, MEDIUM, BIG = {14, 22}, {28, 42, 56}, {84, 112}


def _pool(seed: int, n: int = 40) -> Digits:
    """Random 28x28 'digits' (every one distinct), labels 0..9."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    return Digits(images, (np.arange(n) % 10).astype(np.int32), f'synthetic {seed}')


def _oracle_resize(img: np.ndarray, side: int) -> np.ndarray:
    """Scalar cv2.INTER_LINEAR: src = (dst + 0.5) * scale - 0.5, clamped to the edge; float64."""
    h, w = img.shape
    out = np.empty((side, side))
    for oy in range(side):
        fy = min(max((oy + 0.5) * h / side - 0.5, 0.0), h - 1)
        y0 = int(math.floor(fy))
        y1, ay = min(y0 + 1, h - 1), fy - y0
        for ox in range(side):
            fx = min(max((ox + 0.5) * w / side - 0.5, 0.0), w - 1)
            x0 = int(math.floor(fx))
            x1, ax = min(x0 + 1, w - 1), fx - x0
            top = img[y0, x0] * (1 - ax) + img[y0, x1] * ax
            bottom = img[y1, x0] * (1 - ax) + img[y1, x1] * ax
            out[oy, ox] = top * (1 - ay) + bottom * ay
    return out


def _images(pool: Digits, n: int, seed: int = 0, split: str = 'train', size: int = SIZE):
    return [ex for _, ex in gen.generate_split(pool, n, split=split, seed=seed, image_size=size)]


def test_same_seed_identical_and_other_seed_differs():
    pool = _pool(0)
    a, b, c = _images(pool, 4, seed=7), _images(pool, 4, seed=7), _images(pool, 4, seed=8)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.boxes, y.boxes)
        np.testing.assert_array_equal(x.labels, y.labels)
    assert any(x.boxes.shape != z.boxes.shape or (x.boxes != z.boxes).any() for x, z in zip(a, c, strict=True))
    # Image i depends only on (seed, split, i): a longer run starts with the same images; splits differ.
    longer = _images(pool, 6, seed=7)
    for x, y in zip(a, longer[:4], strict=True):
        np.testing.assert_array_equal(x.image, y.image)
    test_split = _images(pool, 4, seed=7, split='test')
    assert any((x.image != t.image).any() for x, t in zip(a, test_split, strict=True))


def test_overlap_rule_counts_and_geometry():
    pool = _pool(1)
    images = _images(pool, 150, seed=3)
    counts = []
    for ex in images:
        boxes = ex.boxes.tolist()
        n = len(boxes)
        counts.append(n)
        assert 1 <= n <= 12
        sides = [x2 - x1 for x1, _, x2, _ in boxes]
        assert all(x2 - x1 == y2 - y1 for x1, y1, x2, y2 in boxes)  # square patches
        assert all(0 <= x1 and 0 <= y1 and x2 <= SIZE - 1 and y2 <= SIZE - 1 for x1, y1, x2, y2 in boxes)
        assert sum(s in SMALL for s in sides) <= 3
        assert sum(s in MEDIUM for s in sides) <= 6
        assert sum(s in BIG for s in sides) <= 3
        assert set(sides) <= SMALL | MEDIUM | BIG
        # Independent re-computation of intersection / (A1 + A2) for every pair.
        for i in range(n):
            for j in range(i + 1, n):
                a, b = boxes[i], boxes[j]
                iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
                ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
                area_a = (a[2] - a[0]) * (a[3] - a[1])
                area_b = (b[2] - b[0]) * (b[3] - b[1])
                assert iw * ih / (area_a + area_b) < 0.02
        np.testing.assert_array_equal(ex.labels, pool.labels[ex.digit_indices])
    # E[count | not all zero] = (1.5 + 3 + 1.5) / (1 - 1/112) ~ 6.05; std of the mean over 150 images ~ 0.21.
    assert 5.3 < np.mean(counts) < 6.8
    all_sides = {int(s) for ex in images for s in ex.boxes[:, 2] - ex.boxes[:, 0]}
    assert all_sides == SMALL | MEDIUM | BIG  # every ratio of every group occurs


@pytest.mark.parametrize('paste', ['overwrite', 'darken'])
def test_pasted_pixels_are_the_digits(paste):
    """Rebuild each canvas from the pool with an independent resize: patches pasted in order over 255."""
    pool = _pool(2)
    images = [ex for _, ex in gen.generate_split(pool, 2, split='train', seed=5, image_size=300, paste=paste)]
    for ex in images:
        expected = np.full((300, 300), 255.0)
        for (x1, y1, x2, y2), index in zip(ex.boxes, ex.digit_indices, strict=True):
            patch = _oracle_resize(pool.images[index].astype(np.float64), x2 - x1)
            region = expected[y1:y2, x1:x2]
            region[...] = patch if paste == 'overwrite' else np.minimum(region, patch)
        assert ex.image.shape == (300, 300, 3) and ex.image.dtype == np.uint8
        np.testing.assert_array_equal(ex.image[..., 0], ex.image[..., 2])
        diff = np.abs(ex.image[..., 0].astype(np.float64) - expected)
        assert diff.max() <= 0.5 + 1e-3  # rounding of the float result only


def test_train_and_test_images_use_only_their_pool():
    train_pool, test_pool = _pool(10, 30), _pool(11, 30)
    train_images = _images(train_pool, 3, split='train')
    for ex in train_images:
        for (x1, y1, x2, y2), index in zip(ex.boxes, ex.digit_indices, strict=True):
            # The last-pasted patch is intact; earlier ones may lose a margin sliver, so compare the patch centre.
            side = x2 - x1
            c = slice(side // 2 - 2, side // 2 + 2)
            got = ex.image[y1:y2, x1:x2, 0][c, c].astype(np.float64)
            own = _oracle_resize(train_pool.images[index].astype(np.float64), side)[c, c]
            assert np.abs(got - own).max() <= 0.5 + 1e-3
            others = resize_bilinear(test_pool.images, side, side)[:, c, c]
            assert min(np.abs(got - o).max() for o in others) > 1


def test_bounded_retries_give_a_clear_error():
    with pytest.raises(ValueError, match='image_size'):
        gen.check_image_size(112)
    tiny = _pool(3)
    raised = False
    for seed in range(30):
        try:
            gen.generate_image(gen.image_rng(seed, 'train', 0), tiny, 113, max_tries=20)
        except gen.PlacementError as e:
            assert 'image_size' in str(e) and '20 tries' in str(e)
            raised = True
            break
    assert raised


def test_overlap_measure_hand_computed():
    box = np.array([0, 0, 10, 10])
    others = np.array([[5, 5, 15, 15], [10, 0, 20, 10], [0, 0, 10, 10]])
    np.testing.assert_allclose(gen.overlap_measure(box, others), [25 / 200, 0.0, 100 / 200])
    assert gen.patch_sides() == (14, 22, 28, 42, 56, 84, 112)
