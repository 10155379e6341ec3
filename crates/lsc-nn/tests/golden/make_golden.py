#!/usr/bin/env python3
"""Writes the golden fixtures of crates/lsc-nn/tests/golden.rs: small IResNets built in PyTorch
from the IR block of the team's baseline (/work/shared/bench/resnet_bench.py, `IRBlock`), with
every BN statistic, BN affine parameter and PReLU slope randomised so that each one matters.

Each fixture is one safetensors file holding
  - the weights and BN running statistics under insightface's IResNet names (conv1, bn1,
    prelu, layer1.0.bn1, ..., layer1.0.downsample.0, bn2, fc, features); PyTorch's
    num_batches_tracked is left out;
  - `input`: a batch [N, 3, H, W];
  - `emb_eval`: the eval-mode embeddings (computed in float64 from the float32 weights);
  - golden_pc only: `emb_train`, the train-mode embeddings (batch statistics, no dropout),
    `grad_out` (a fixed dL/d(emb)), `grad.NAME` (dL/d(param) and dL/d(input) for L = sum(emb *
    grad_out)), and `after_train.NAME` (the running statistics after that training forward);
  - metadata `config`: the architecture as an lsc `[model]` table (TOML).

Run (CI has no PyTorch, so the outputs are committed):
    ~/.cache/torch-venv/bin/python crates/lsc-nn/tests/golden/make_golden.py \
        [--bench-dir /work/shared/bench] [--out crates/lsc-nn/tests/golden]
The safetensors files are written by hand (8-byte little-endian header length, JSON header,
raw little-endian data), so only torch and numpy are needed.
"""
import argparse
import copy
import json
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn


def build(IRBlock, units, widths, strides, emb, hw, shared, eps):
    """An insightface-style IResNet from resnet_bench's IRBlock, named as insightface names it."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            w0 = widths[0]
            self.conv1 = nn.Conv2d(3, w0, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(w0)
            self.prelu = nn.PReLU(1 if shared else w0)
            cin = w0
            h, w = hw
            for s, (n, cout, st) in enumerate(zip(units, widths, strides)):
                blocks = []
                for j in range(n):
                    stride = st if j == 0 else 1
                    b = IRBlock(cin, cout, stride)
                    if shared:
                        b.act = nn.PReLU(1)
                    blocks.append(b)
                    cin = cout
                    if stride != 1:
                        h, w = (h - 1) // stride + 1, (w - 1) // stride + 1
                setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
            self.nstages = len(units)
            self.bn2 = nn.BatchNorm2d(cin)
            self.dropout = nn.Dropout(0.0)
            self.fc = nn.Linear(cin * h * w, emb)
            self.features = nn.BatchNorm1d(emb)

        def forward(self, x):
            x = self.prelu(self.bn1(self.conv1(x)))
            for s in range(self.nstages):
                x = getattr(self, f"layer{s + 1}")(x)
            x = self.dropout(torch.flatten(self.bn2(x), 1))
            return self.features(self.fc(x))

    net = Net()
    for m in net.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.eps = eps
            m.momentum = 0.1
    return net


def insightface_name(k):
    """resnet_bench's IRBlock names its PReLU `act` and its shortcut `short`."""
    return k.replace(".act.", ".prelu.").replace(".short.0.", ".downsample.0.").replace(".short.1.", ".downsample.1.")


def randomise(net, g):
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
                m.running_mean.normal_(0.0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
            elif isinstance(m, nn.PReLU):
                m.weight.uniform_(0.05, 0.5, generator=g)
            elif isinstance(m, nn.Linear):
                m.bias.normal_(0.0, 0.2, generator=g)


def state(net, prefix=""):
    out = {}
    for k, v in net.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        out[prefix + insightface_name(k)] = v.detach().float().numpy()
    return out


def write_safetensors(path, tensors, metadata):
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, dtype="<f4")
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def toml_config(units, widths, strides, emb, hw, shared, eps, dropout):
    return "\n".join([
        f"units = {list(units)}",
        f"widths = {list(widths)}",
        f"strides = {list(strides)}",
        f"emb_dim = {emb}",
        f"input_size = {list(hw)}",
        f"dropout = {dropout}",
        f"prelu = \"{'shared' if shared else 'per_channel'}\"",
        f"bn_eps = {eps}",
        "bn_momentum = 0.1",
        "",
    ])


def fixture(IRBlock, path, *, units, widths, strides, emb, hw, shared, batch, dropout, train, seed):
    eps = 2e-5
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = build(IRBlock, units, widths, strides, emb, hw, shared, eps)
    randomise(net, g)
    out = state(net)
    x = torch.randn(batch, 3, *hw, generator=g)
    out["input"] = x.numpy()
    ref = copy.deepcopy(net).double().eval()
    with torch.no_grad():
        out["emb_eval"] = ref(x.double()).float().numpy()
    if train:
        tr = copy.deepcopy(net).double().train()
        xd = x.double().requires_grad_(True)
        e = tr(xd)
        gout = torch.randn(e.shape, generator=g).double()
        (e * gout).sum().backward()
        out["emb_train"] = e.detach().float().numpy()
        out["grad_out"] = gout.float().numpy()
        out["grad.input"] = xd.grad.float().numpy()
        for k, p in tr.named_parameters():
            out["grad." + insightface_name(k)] = p.grad.float().numpy()
        for k, v in state(tr, "after_train.").items():
            if "running_" in k:
                out[k] = v
    meta = {
        "config": toml_config(units, widths, strides, emb, hw, shared, eps, dropout),
        "source": "crates/lsc-nn/tests/golden/make_golden.py (torch %s)" % torch.__version__,
    }
    write_safetensors(path, out, meta)
    print(f"{path}: {len(out)} tensors, {os.path.getsize(path)} bytes")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench-dir", default="/work/shared/bench")
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    a = ap.parse_args()
    sys.path.insert(0, a.bench_dir)
    from resnet_bench import IRBlock  # the baseline's IR unit, unchanged

    # Per-channel PReLU (insightface), a stride-1 stage with a width change and an identity
    # shortcut; train-mode outputs and gradients too.
    fixture(IRBlock, os.path.join(a.out, "golden_pc.safetensors"), units=[1, 2, 1, 1],
            widths=[8, 16, 24, 32], strides=[2, 2, 1, 2], emb=16, hw=(24, 24), shared=False,
            batch=4, dropout=0.0, train=True, seed=1)
    # One PReLU slope per layer (PLSC), a non-square input, dropout 0.4 (identity in eval).
    fixture(IRBlock, os.path.join(a.out, "golden_shared.safetensors"), units=[1, 1, 2],
            widths=[8, 16, 16], strides=[2, 2, 2], emb=8, hw=(20, 16), shared=True,
            batch=3, dropout=0.4, train=False, seed=2)


if __name__ == "__main__":
    main()
