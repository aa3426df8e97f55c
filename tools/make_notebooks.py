"""Write the overlay's notebooks (dpfm/overlay/notebooks/*.ipynb) from the cells below.

``python tools/make_notebooks.py``; the .ipynb files are committed without outputs, and
tests/test_notebooks.py executes them on the Verilator backend.  Every notebook picks its
backend from ``$DPFM_BACKEND`` (``pynq`` on the board, ``verilator`` in CI) and its length from
``$DPFM_NB_EPOCHS``; the cells are the same everywhere.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(__file__).resolve().parents[1] / "dpfm" / "overlay" / "notebooks"

SETUP = """\
import os
import numpy as np
import matplotlib.pyplot as plt
from dpfm.overlay import Dpfm, sweep_configs
from dpfm.reference import MLP
from dpfm.tasks import sum4

# The board: DPFM_BACKEND unset (pynq). CI: DPFM_BACKEND=verilator with a few epochs.
EPOCHS = int(os.environ.get("DPFM_NB_EPOCHS", "{epochs}"))
task = sum4()
print("backend:", os.environ.get("DPFM_BACKEND", "pynq"), "| epochs:", EPOCHS)"""

NOTEBOOKS = {
    "1-train-sum4.ipynb": [
        new_markdown_cell(
            "# Train sum4 on the engine\n\n"
            "The seed net (4-5-5-1) learns the sum of four inputs. The engine trains every epoch "
            "by itself (run mode: the corpus and the batch orders sit in one buffer in DDR, the "
            "host only polls). Beside it, the reference: `fixed` is the engine's arithmetic in "
            "numpy (it must match bit for bit), `float64` the definition it approximates."),
        new_code_cell(SETUP.format(epochs=250)),
        new_code_cell(
            "engine = Dpfm.open()          # the bitstream's Config on the board\n"
            "cfg = engine.config\n"
            "engine.load_weights(seed=0)\n"
            "hist = engine.train(task.X_train, task.y_train, EPOCHS, lr=0.01,\n"
            "                    validation=(task.X_val, task.y_val), seed=0)\n"
            "log = engine.loss_log()\n"
            "engine"),
        new_code_cell(
            "def reference(fmt, policy):\n"
            "    net = MLP(cfg.net, cfg.activations, seed=0)\n"
            "    return net.fit(task.X_train, task.y_train, k=cfg.k, epochs=EPOCHS, batch=cfg.batch,\n"
            "                   lr=0.01, update='maxnorm', validation=(task.X_val, task.y_val),\n"
            "                   fmt=fmt, policy=policy, seed=0)\n"
            "\n"
            "fixed = reference(cfg.formats, 'stream')\n"
            "exact = reference(None, 'exact')\n"
            "assert np.array_equal(log['train'], fixed.train_loss), 'engine and fixed reference differ'\n"
            "assert np.array_equal(log['val'], fixed.val_loss)\n"
            "print('engine == fixed reference, every epoch')"),
        new_code_cell(
            "fig, ax = plt.subplots(figsize=(7, 4))\n"
            "ax.semilogy(log['epoch'], log['train'], label=f'{engine.backend} train', lw=3, alpha=0.5)\n"
            "ax.semilogy(log['epoch'], log['val'], label=f'{engine.backend} validation', lw=3, alpha=0.5)\n"
            "ax.semilogy(log['epoch'], fixed.train_loss, 'k--', label='fixed reference train')\n"
            "ax.semilogy(log['epoch'], exact.train_loss, 'k:', label='float64 reference train')\n"
            "ax.set_xlabel('epoch'); ax.set_ylabel('MSE'); ax.set_title(f'sum4, k={cfg.k}')\n"
            "ax.legend(); plt.show()"),
        new_code_cell(
            "counters = engine.counters()\n"
            "print('cycles per training step:', counters['cycles_per_step'])\n"
            "print('engine cycles of the last run:', counters['run_cycles'])\n"
            "print('flags:', engine.flags())\n"
            "print('register accesses for the whole run:', engine.bus_accesses)\n"
            "engine.close()"),
    ],
    "2-k-sweep.ipynb": [
        new_markdown_cell(
            "# A k sweep on the engine\n\n"
            "k is how many gradient registers each activation keeps; it is fixed when the "
            "engine is built, so every k is its own engine: on the board one bitstream per k "
            "(`make bitstream K=4 && make overlay K=4 SUB=1`), in simulation one Verilator "
            "model per k. For each: the loss after training, and the engine's clock cycles per "
            "training step."),
        new_code_cell(SETUP.format(epochs=50)),
        new_code_cell(
            "rows = []\n"
            "for cfg in sweep_configs():\n"
            "    with Dpfm.open(cfg) as engine:\n"
            "        engine.load_weights(seed=0)\n"
            "        h = engine.train(task.X_train, task.y_train, EPOCHS, lr=0.01,\n"
            "                         validation=(task.X_val, task.y_val), seed=0)\n"
            "        c = engine.counters()\n"
            "    rows.append((cfg.k, h.train_loss[-1], h.val_loss[-1], c['cycles_per_step'], c['run_cycles']))\n"
            "k, train, val, per_step, run = map(np.array, zip(*rows))\n"
            "print(' k  train MSE   val MSE  cycles/step  run cycles')\n"
            "for r in rows:\n"
            "    print(f'{r[0]:2d}  {r[1]:9.3g} {r[2]:9.3g}  {r[3]:11.1f}  {r[4]:10d}')"),
        new_code_cell(
            "fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))\n"
            "a.semilogy(k, train, 'o-', label='train'); a.semilogy(k, val, 's-', label='validation')\n"
            "a.set_xlabel('k'); a.set_ylabel(f'MSE after {EPOCHS} epochs'); a.legend()\n"
            "b.plot(k, per_step, 'o-'); b.set_xlabel('k'); b.set_ylabel('cycles per training step')\n"
            "for ax in (a, b):\n"
            "    ax.set_xticks(k)\n"
            "plt.tight_layout(); plt.show()\n"
            "assert len(rows) >= 1 and np.all(per_step > 0)"),
    ],
    "3-gradient-registers.ipynb": [
        new_markdown_cell(
            "# What a neuron's gradient registers hold\n\n"
            "Every activation carries up to k registers: (index of a parameter, d activation / "
            "d parameter). A neuron merges the registers of its inputs with its own weights' "
            "and keeps the k largest (in the engine's streaming order); the rest is dropped. "
            "The engine trains; the reference, loaded with the engine's weights, shows the "
            "registers it computed with."),
        new_code_cell(SETUP.format(epochs=20)),
        new_code_cell(
            "from dpfm.reference.mlp import param_layout\n"
            "engine = Dpfm.open()\n"
            "cfg = engine.config\n"
            "engine.load_weights(seed=0)\n"
            "engine.train(task.X_train, task.y_train, EPOCHS, lr=0.01, seed=0, progress=False)\n"
            "net = MLP(cfg.net, cfg.activations)\n"
            "net.params[:] = engine.weights()\n"
            "# the reference with the engine's weights gives the engine's losses\n"
            "assert engine.evaluate(task.X_val, task.y_val) == net.loss(task.X_val, task.y_val, cfg.formats)\n"
            "engine.close()\n"
            "\n"
            "offsets, n_params = param_layout(cfg.net)\n"
            "def name(p):\n"
            "    l = max(i for i, o in enumerate(offsets) if o <= p)\n"
            "    n_in, n_out = cfg.net[l], cfg.net[l + 1]\n"
            "    r = p - offsets[l]\n"
            "    return f'W{l}[{r // n_in},{r % n_in}]' if r < n_in * n_out else f'b{l}[{r - n_in * n_out}]'"),
        new_code_cell(
            "x = task.X_val[:1]\n"
            "layer, neuron = len(cfg.net) - 3, 0       # a neuron of the last hidden layer\n"
            "full = net.forward(x, k='full', fmt=cfg.formats, policy='stream').layers[layer]\n"
            "kept = net.forward(x, k=cfg.k, fmt=cfg.formats, policy='stream').layers[layer]\n"
            "g = cfg.formats.grad\n"
            "def registers(trace):\n"
            "    idx, val = trace.grad_idx[0, neuron], g.to_float(trace.grad_val[0, neuron])\n"
            "    return {int(i): float(v) for i, v in zip(idx, val) if i >= 0}\n"
            "all_regs, k_regs = registers(full), registers(kept)\n"
            "order = sorted(all_regs, key=lambda p: -abs(all_regs[p]))\n"
            "print(f'layer {layer + 1}, neuron {neuron}: {len(all_regs)} parameters reach it, k={cfg.k} kept')\n"
            "print(' index  parameter      d a / d p      kept')\n"
            "for p in order:\n"
            "    print(f'{p:6d}  {name(p):10s} {all_regs[p]:+12.5f}  {\"yes\" if p in k_regs else \"-\"}')"),
        new_code_cell(
            "mags = np.array([abs(all_regs[p]) for p in order])\n"
            "colors = ['C0' if p in k_regs else 'C3' for p in order]\n"
            "fig, ax = plt.subplots(figsize=(9, 3.5))\n"
            "ax.bar(range(len(order)), mags, color=colors)\n"
            "ax.set_xticks(range(len(order)), [name(p) for p in order], rotation=90, fontsize=7)\n"
            "ax.set_ylabel('|d a / d p|'); ax.set_title(f'blue: kept in the k={cfg.k} registers, red: dropped')\n"
            "plt.tight_layout(); plt.show()\n"
            "kept_mass = sum(abs(all_regs[p]) for p in k_regs) / mags.sum()\n"
            "print(f'the {len(k_regs)} registers hold {kept_mass:.1%} of the gradient magnitude')\n"
            "assert len(k_regs) <= cfg.k"),
    ],
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=cells, metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
        nbformat.write(nb, OUT / name)
        print(OUT / name)


if __name__ == "__main__":
    main()
