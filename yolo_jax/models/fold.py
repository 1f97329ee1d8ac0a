"""BatchNorm folding for inference: conv → BN(running stats) becomes one conv with a bias.

BN in inference mode is the per-channel affine map y = (z - mean) * s + beta with s = gamma / sqrt(var + eps),
so conv_W(x) followed by it equals conv_{W*s}(x) + (beta - mean * s). The folded network
(`create_model(config.model, folded=True)`) drops every BatchNorm: fewer ops and no batch_stats to carry.
"""

from typing import Any


def fold_batchnorm(params: dict, batch_stats: dict, *, epsilon: float) -> dict:
    """Params of the folded model from the params and batch_stats of a trained one.

    Every module holding {'conv': {'kernel'}, 'bn': {'scale', 'bias'}} (with {'bn': {'mean', 'var'}} at the same
    path in `batch_stats`) becomes {'conv': {'kernel', 'bias'}}; other leaves are kept. `epsilon` must be the
    BatchNorm epsilon the model was trained with (config.model.bn_epsilon). Kernels are (k, k, C_in, C_out).
    """
    return _fold(params, batch_stats, epsilon, '')


def _fold(params: Any, stats: Any, epsilon: float, path: str) -> Any:
    if not isinstance(params, dict):
        return params
    if 'conv' in params and 'bn' in params:
        if not isinstance(stats, dict) or 'bn' not in stats:
            raise ValueError(f'fold_batchnorm: batch_stats has no running statistics for {path or "/"}bn')
        conv, bn, running = params['conv'], params['bn'], stats['bn']
        scale = bn['scale'] * (running['var'] + epsilon) ** -0.5
        kernel = conv['kernel'] * scale
        return {'conv': {'kernel': kernel, 'bias': bn['bias'] - running['mean'] * scale}}
    stats = stats if isinstance(stats, dict) else {}
    return {k: _fold(v, stats.get(k), epsilon, f'{path}{k}/') for k, v in params.items()}
