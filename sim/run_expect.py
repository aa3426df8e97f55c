"""What a run-mode run must produce, from the reference: per epoch the log entry's sums and
the weights, for the testbenches (:mod:`dpfm.sim.run_tests`) and the host tests.

Everything comes from :meth:`dpfm.reference.MLP.step_raw` in the Config's fixed formats and
the ``stream`` policy, step by step in the order docs/engine.md "Run mode" gives, exactly as
the host's per-step ``Trainer.fit`` drives the engine.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dpfm.reference import MLP
from dpfm.reference.mlp import sgd_scale

__all__ = ["EpochExpect", "run_expectations"]


@dataclasses.dataclass
class EpochExpect:
    """One epoch as the reference computes it (the fields of
    :class:`dpfm.rtl.protocol.EpochLog` that do not count cycles, and the weights)."""
    train_loss_raw: int
    val_loss_raw: int
    val_hits: int
    sat_value: int
    sat_grad: int
    sat_delta: int
    sat_weight: int
    steps: int
    weights: np.ndarray


def _loss_raw(trace) -> int:
    err = np.asarray(trace.error, dtype=object)
    return int(np.sum(err * err))


def run_expectations(config, Xq, yq, Xvq, yvq, perms, params, *, update="maxnorm", lr=0.01,
                     classify=False) -> list:
    """Per epoch (one per entry of ``perms``, epoch ``e``'s permutation of the training
    rows), the :class:`EpochExpect` of a run from the raw weights ``params``."""
    net = MLP(list(config.net), list(config.activations))
    fmt, B, k, policy = config.formats, config.batch, config.k, config.policy
    Xq = np.asarray(Xq, np.int64).reshape(-1, config.n_in)
    yq = np.asarray(yq, np.int64).reshape(len(Xq), config.n_out)
    Xvq = np.zeros((0, config.n_in), np.int64) if Xvq is None else \
        np.asarray(Xvq, np.int64).reshape(-1, config.n_in)
    yvq = np.zeros((0, config.n_out), np.int64) if yvq is None else \
        np.asarray(yvq, np.int64).reshape(len(Xvq), config.n_out)
    params = np.asarray(params, dtype=np.int64)
    out = []
    for perm in perms:
        sats = dict(value=0, grad=0, delta=0, weight=0)
        steps = 0
        for start in range(0, len(Xq), B):
            sel = np.asarray(perm[start:start + B])
            q = sgd_scale(lr, len(sel) * config.n_out) if update == "sgd" else None
            tr = net.step_raw(Xq[sel], yq[sel], params, k, lr, update, fmt, policy, sgd_q=q)
            params = tr.params
            steps += 1
            for key in sats:
                sats[key] += int(tr.saturations.get(key, 0) > 0)

        def passes(X, y):
            loss, hits = 0, 0
            for start in range(0, len(X), B):
                tr = net.step_raw(X[start:start + B], y[start:start + B], params, k, lr,
                                  "maxnorm", fmt, policy)
                loss += _loss_raw(tr)
                hits += int(np.sum(np.argmax(tr.forward.layers[-1].a, axis=1)
                                   == np.argmax(y[start:start + B], axis=1)))
            return loss, hits

        train_loss, _ = passes(Xq, yq)
        val_loss, hits = passes(Xvq, yvq)
        out.append(EpochExpect(train_loss, val_loss, hits if classify else 0, sats["value"],
                               sats["grad"], sats["delta"], sats["weight"], steps,
                               params.copy()))
    return out
