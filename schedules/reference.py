"""The numpy float64 reference every schedule is checked against."""

from __future__ import annotations

import numpy as np

from .workload import Workload


def random_inputs(wl: Workload, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = rng.uniform(-1, 1, wl.data_shape).astype(wl.dtype)
    weight = rng.uniform(-1, 1, wl.weight_shape).astype(wl.dtype)
    return data, weight


def epilogue_inputs(wl: Workload, seed: int = 0) -> dict[str, np.ndarray]:
    """Random bias and residual for the workload's epilogue (none for a bare conv). Their scale is
    the conv output's (about sqrt(K) for uniform inputs), so an activation clips a real share."""
    rng = np.random.default_rng(seed + 7919)
    scale = float(np.sqrt(wl.kh * wl.kw * wl.ci / wl.groups)) / 2
    extra = {}
    if wl.epilogue.bias:
        extra["bias"] = rng.uniform(-scale, scale, (wl.co,)).astype(wl.dtype)
    if wl.epilogue.residual:
        extra["residual"] = rng.uniform(-scale, scale, wl.out_shape).astype(wl.dtype)
    return extra


def apply_epilogue(wl: Workload, out: np.ndarray, bias: np.ndarray | None = None,
                   residual: np.ndarray | None = None) -> np.ndarray:
    """bias, then residual, then the activation, in float64 (what every kernel's epilogue computes)."""
    ep = wl.epilogue
    out = np.asarray(out, np.float64)
    if ep.bias:
        shape = (1, 1, 1, wl.co) if wl.layout == "NHWC" else (1, wl.co, 1, 1)
        out = out + np.asarray(bias, np.float64).reshape(shape)
    if ep.residual:
        out = out + np.asarray(residual, np.float64)
    # As the kernels' selects (schedules.template): a NaN passes through the activation.
    if ep.activation == "relu":
        out = np.where(out < 0.0, 0.0, out)
    elif ep.activation == "clip":
        lo, hi = ep.clip
        out = np.where(out < lo, lo, np.where(out > hi, hi, out))
    return out


def conv2d_reference(wl: Workload, data: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None,
                     residual: np.ndarray | None = None) -> np.ndarray:
    """Direct convolution in float64, in the workload's layout, then its epilogue; returns float64."""
    x = np.asarray(data, np.float64)
    wt = np.asarray(weight, np.float64)
    if wl.layout == "NCHW":
        x = x.transpose(0, 2, 3, 1)
        wt = wt.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    t, l, b, r = wl.pad
    x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    sh, sw = wl.stride
    dh, dw = wl.dilation
    g, cig, cog = wl.groups, wl.ci // wl.groups, wl.co // wl.groups
    out = np.zeros((wl.n, wl.oh, wl.ow, wl.co))
    for kh in range(wl.kh):
        for kw in range(wl.kw):
            rows = x[:, kh * dh: kh * dh + (wl.oh - 1) * sh + 1: sh, kw * dw: kw * dw + (wl.ow - 1) * sw + 1: sw, :]
            for gi in range(g):
                patch = rows[..., gi * cig:(gi + 1) * cig]
                out[..., gi * cog:(gi + 1) * cog] += patch @ wt[kh, kw, :, gi * cog:(gi + 1) * cog]
    return apply_epilogue(wl, out if wl.layout == "NHWC" else out.transpose(0, 3, 1, 2), bias, residual)


def error_bound(wl: Workload, data: np.ndarray, weight: np.ndarray, growth: float = 1.0) -> float:
    """A float32 tolerance that follows from the sum's length and magnitude, not a blanket one.

    Each output sums K = KH*KW*CI/groups products; float32 accumulation errs by at most about
    K * eps * max|x*w| (a dropped or doubled term errs by ~max|x*w|, far above it). `growth` scales
    it for algorithms that amplify the error (Winograd's transforms).
    """
    k = wl.kh * wl.kw * (wl.ci // wl.groups)
    scale = float(np.abs(data).max() * np.abs(weight).max())
    return 8.0 * growth * k * float(np.finfo(np.float32).eps) * scale
