"""Plain NumPy (float64) oracles written straight from the reference's description (seeds + notes).

They mirror the TF2 reference's `bbox_iou`, `bbox_giou`, `decode` and `compute_loss` line by line, with
no vectorisation tricks beyond broadcasting, so tests can compare the JAX code against them.
"""

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def bbox_iou(boxes1, boxes2):
    """IoU of xywh boxes; 0 where the union is 0 (upstream divides by zero there)."""
    area1 = boxes1[..., 2] * boxes1[..., 3]
    area2 = boxes2[..., 2] * boxes2[..., 3]
    b1 = np.concatenate([boxes1[..., :2] - boxes1[..., 2:] * 0.5, boxes1[..., :2] + boxes1[..., 2:] * 0.5], -1)
    b2 = np.concatenate([boxes2[..., :2] - boxes2[..., 2:] * 0.5, boxes2[..., :2] + boxes2[..., 2:] * 0.5], -1)
    left_up = np.maximum(b1[..., :2], b2[..., :2])
    right_down = np.minimum(b1[..., 2:], b2[..., 2:])
    inter = np.maximum(right_down - left_up, 0.0)
    inter_area = inter[..., 0] * inter[..., 1]
    union = area1 + area2 - inter_area
    with np.errstate(divide='ignore', invalid='ignore'):
        return np.where(union > 0, inter_area / union, 0.0)


def bbox_giou(boxes1, boxes2):
    """GIoU of xywh boxes, corners re-ordered as upstream; 0/0 terms defined as 0."""
    b1 = np.concatenate([boxes1[..., :2] - boxes1[..., 2:] * 0.5, boxes1[..., :2] + boxes1[..., 2:] * 0.5], -1)
    b2 = np.concatenate([boxes2[..., :2] - boxes2[..., 2:] * 0.5, boxes2[..., :2] + boxes2[..., 2:] * 0.5], -1)
    b1 = np.concatenate([np.minimum(b1[..., :2], b1[..., 2:]), np.maximum(b1[..., :2], b1[..., 2:])], -1)
    b2 = np.concatenate([np.minimum(b2[..., :2], b2[..., 2:]), np.maximum(b2[..., :2], b2[..., 2:])], -1)
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    left_up = np.maximum(b1[..., :2], b2[..., :2])
    right_down = np.minimum(b1[..., 2:], b2[..., 2:])
    inter = np.maximum(right_down - left_up, 0.0)
    inter_area = inter[..., 0] * inter[..., 1]
    union = area1 + area2 - inter_area
    enc = np.maximum(np.maximum(b1[..., 2:], b2[..., 2:]) - np.minimum(b1[..., :2], b2[..., :2]), 0.0)
    enc_area = enc[..., 0] * enc[..., 1]
    with np.errstate(divide='ignore', invalid='ignore'):
        iou = np.where(union > 0, inter_area / union, 0.0)
        return iou - np.where(enc_area > 0, (enc_area - union) / enc_area, 0.0)


def decode(conv, anchors, stride):
    """conv (B, S, S, A*(5+C)) → (B, S, S, A, 5+C) with pixels xywh and sigmoid conf/probs."""
    b, s = conv.shape[0], conv.shape[1]
    a = len(anchors)
    conv = conv.reshape(b, s, s, a, -1).astype(np.float64)
    y = np.tile(np.arange(s)[:, None], [1, s])
    x = np.tile(np.arange(s)[None, :], [s, 1])
    grid = np.concatenate([x[:, :, None], y[:, :, None]], -1)[None, :, :, None, :].astype(np.float64)
    xy = (sigmoid(conv[..., 0:2]) + grid) * stride
    wh = np.exp(conv[..., 2:4]) * np.asarray(anchors, np.float64)
    return np.concatenate([xy, wh, sigmoid(conv[..., 4:5]), sigmoid(conv[..., 5:])], -1)


def bce_logits(labels, logits):
    """labels * -log(sigmoid(x)) + (1 - labels) * -log(1 - sigmoid(x)), written as TF's stable form."""
    return np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))


def compute_loss(conv, label, bboxes, anchors, stride, ignore_thresh):
    """One scale of the reference's compute_loss → (giou_loss, conf_loss, prob_loss)."""
    b, s = conv.shape[0], conv.shape[1]
    pred = decode(conv, anchors, stride)
    conv = conv.reshape(b, s, s, len(anchors), -1).astype(np.float64)
    label = label.astype(np.float64)
    bboxes = bboxes.astype(np.float64)
    input_size = stride * s
    raw_conf, raw_prob = conv[..., 4:5], conv[..., 5:]
    pred_xywh, pred_conf = pred[..., 0:4], pred[..., 4:5]
    label_xywh, respond, label_prob = label[..., 0:4], label[..., 4:5], label[..., 5:]
    giou = bbox_giou(pred_xywh, label_xywh)[..., None]
    scale = 2.0 - label_xywh[..., 2:3] * label_xywh[..., 3:4] / input_size**2
    giou_loss = respond * scale * (1 - giou)
    iou = bbox_iou(pred_xywh[:, :, :, :, None, :], bboxes[:, None, None, None, :, :])
    max_iou = iou.max(-1)[..., None]
    respond_bgd = (1.0 - respond) * (max_iou < ignore_thresh)
    focal = (respond - pred_conf) ** 2
    conf_loss = focal * (respond * bce_logits(respond, raw_conf) + respond_bgd * bce_logits(respond, raw_conf))
    prob_loss = respond * bce_logits(label_prob, raw_prob)
    return tuple(np.mean(np.sum(t, axis=(1, 2, 3, 4))) for t in (giou_loss, conf_loss, prob_loss))


def total_loss(outputs, labels, bboxes, anchors, strides, ignore_thresh):
    """Sum over scales → (giou, conf, prob, total)."""
    g = c = p = 0.0
    for o, lab, bb, a, s in zip(outputs, labels, bboxes, anchors, strides):
        gi, co, pr = compute_loss(o, lab, bb, a, s, ignore_thresh)
        g, c, p = g + gi, c + co, p + pr
    return g, c, p, g + c + p
