"""The numpy references every schedule is checked against: float64 for float32 layers, exact
integer arithmetic for int8 / s8s8 layers (int32 results bit-identical, requantized results as
ONNX QuantizeLinear defines them)."""

from __future__ import annotations

import numpy as np

from .workload import Workload


def random_inputs(wl: Workload, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if wl.quantized:
        # Full range, extremes included: 255 x -128 pairs are what overflow a 16-bit pair sum
        # (vpmaddubsw's saturation), so a kernel that saturates shows.
        data = rng.integers(np.iinfo(wl.data_dtype).min, np.iinfo(wl.data_dtype).max, wl.data_shape,
                            dtype=wl.data_dtype, endpoint=True)
        weight = rng.integers(-128, 127, wl.weight_shape, dtype=np.int8, endpoint=True)
        data.flat[:: 7] = np.iinfo(wl.data_dtype).max
        weight.flat[:: 5] = -128
        return data, weight
    data = rng.uniform(-1, 1, wl.data_shape).astype(wl.dtype)
    weight = rng.uniform(-1, 1, wl.weight_shape).astype(wl.dtype)
    return data, weight


def epilogue_inputs(wl: Workload, seed: int = 0) -> dict[str, np.ndarray]:
    """Random bias and residual for the workload's epilogue (none for a bare conv). Their scale is
    the conv output's (about sqrt(K) for uniform inputs), so an activation clips a real share."""
    rng = np.random.default_rng(seed + 7919)
    if wl.quantized:
        return quant_inputs(wl, rng)
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
    elif ep.activation == "hardswish":
        out = out * np.clip(out + 3.0, 0.0, 6.0) / 6.0
    elif ep.activation == "silu":
        with np.errstate(over="ignore"):
            out = out / (1.0 + np.exp(-out))
    return out


def quant_inputs(wl: Workload, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random zero points, bias and multipliers for a quantized layer, sized so that requantized
    outputs spread over their whole type and past it (saturation is hit at both ends)."""
    k = wl.kh * wl.kw * wl.ci // wl.groups
    info = np.iinfo(wl.data_dtype)
    out = {"x_zero_point": np.array([rng.integers(info.min // 2 + info.max // 4, info.max // 2 + 32)], wl.data_dtype)}
    # |acc| is about sqrt(K) * 74 * 74 (uniform full-range data minus its zero point, times weights)
    typical = float(np.sqrt(k)) * 74.0 * 74.0
    if wl.epilogue.bias:
        out["bias"] = rng.integers(-int(typical), int(typical), (wl.co,), dtype=np.int32, endpoint=True)
    q = wl.quant
    if q.scaled:
        target = 1.0 if q.out == "float32" else 110.0  # a requantized output about 110 units wide
        n = wl.co if q.scale == "channel" else 1
        out["scale"] = (target / typical * rng.uniform(0.5, 2.0, n)).astype(np.float32)
    if q.requantized:
        qi = np.iinfo(q.out)
        out["y_zero_point"] = np.array([rng.integers(qi.min // 4 + qi.max // 8, qi.max // 4 + 1)], q.out)
        if wl.epilogue.activation == "clip":
            lo, hi = wl.epilogue.clip
            # one output unit of y_scale such that [lo, hi] spans about 150 units: the clip cuts inside the type
            out["y_scale"] = np.array([max(hi - lo, 1e-3) / 150.0], np.float32)
    return out


def requantize(acc: np.ndarray, scale: np.ndarray, zero_point: int, lo: int, hi: int) -> np.ndarray:
    """ONNX QuantizeLinear on the accumulator: float32(acc) times the float32 multiplier (one
    rounding, as the kernel's one float32 multiply), rounded half to even (`np.rint`, QuantizeLinear's
    rounding), plus the zero point, saturated to [lo, hi]. acc is int32-valued; returns int64."""
    product = acc.astype(np.float32) * np.asarray(scale, np.float32)
    return np.clip(np.rint(product).astype(np.int64) + int(zero_point), lo, hi)


def saturation_bounds(wl: Workload, y_zero_point: int, y_scale: np.ndarray | None) -> tuple[int, int]:
    """The requantized type's range, narrowed by the folded activation (see Quant)."""
    info = np.iinfo(wl.quant.out)
    lo, hi = int(info.min), int(info.max)
    ep = wl.epilogue
    if ep.activation == "relu":
        lo = max(lo, int(y_zero_point))
    elif ep.activation == "clip":
        ys = np.float32(np.asarray(y_scale).reshape(-1)[0])
        lo = max(lo, int(y_zero_point) + int(np.rint(np.float32(ep.clip[0]) / ys)))
        hi = min(hi, int(y_zero_point) + int(np.rint(np.float32(ep.clip[1]) / ys)))
    return lo, hi


def int_conv_reference(wl: Workload, data: np.ndarray, weight: np.ndarray, x_zero_point: int) -> np.ndarray:
    """sum (x - zp_x) * w over the window, exactly: int64 arithmetic (numpy's integer matmul, no
    BLAS, no float), padding with the zero point (the quantized zero), then checked to fit int32
    (the accumulator every int8 kernel keeps). Returns int64 in NHWC."""
    x = np.asarray(data, np.int64) - int(x_zero_point)
    wt = np.asarray(weight, np.int64)
    if wl.layout == "NCHW":
        x = x.transpose(0, 2, 3, 1)
        wt = wt.transpose(2, 3, 1, 0)
    return _conv_nhwc(wl, x, wt, np.zeros((wl.n, wl.oh, wl.ow, wl.co), np.int64))


def _conv_nhwc(wl: Workload, x: np.ndarray, wt: np.ndarray, out: np.ndarray) -> np.ndarray:
    t, l, b, r = wl.pad
    x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    sh, sw = wl.stride
    dh, dw = wl.dilation
    g, cig, cog = wl.groups, wl.ci // wl.groups, wl.co // wl.groups
    for kh in range(wl.kh):
        for kw in range(wl.kw):
            rows = x[:, kh * dh: kh * dh + (wl.oh - 1) * sh + 1: sh, kw * dw: kw * dw + (wl.ow - 1) * sw + 1: sw, :]
            for gi in range(g):
                patch = rows[..., gi * cig:(gi + 1) * cig]
                out[..., gi * cog:(gi + 1) * cog] += patch @ wt[kh, kw, :, gi * cog:(gi + 1) * cog]
    return out


def quantized_reference(wl: Workload, data: np.ndarray, weight: np.ndarray, x_zero_point, bias=None,
                        scale=None, y_zero_point=None, y_scale=None) -> np.ndarray:
    """An int8 / s8s8 layer exactly, in its output type (int32, uint8, int8 or float32)."""
    wl.check_quant_inputs({k: v for k, v in dict(x_zero_point=x_zero_point, bias=bias, scale=scale,
                                                  y_zero_point=y_zero_point, y_scale=y_scale).items()
                           if v is not None})
    acc = int_conv_reference(wl, data, weight, np.asarray(x_zero_point).reshape(-1)[0])
    if bias is not None:
        acc = acc + np.asarray(bias, np.int64)
    i32 = np.iinfo(np.int32)
    if acc.min(initial=0) < i32.min or acc.max(initial=0) > i32.max:
        raise OverflowError(f"{wl.spec}: the accumulator plus bias leaves int32 ({acc.min()}..{acc.max()})")
    q, ep = wl.quant, wl.epilogue
    if q.out == "int32":
        out = np.maximum(acc, 0) if ep.activation == "relu" else acc
        out = out.astype(np.int32)
    elif q.out == "float32":
        out = acc.astype(np.int32).astype(np.float32) * np.asarray(scale, np.float32)
        if ep.activation == "relu":
            out = np.where(out < 0, np.float32(0), out)
        elif ep.activation == "clip":
            lo, hi = (np.float32(v) for v in ep.clip)
            out = np.where(out < lo, lo, np.where(out > hi, hi, out))
    else:
        zp = int(np.asarray(y_zero_point).reshape(-1)[0])
        lo, hi = saturation_bounds(wl, zp, y_scale)
        out = requantize(acc, scale, zp, lo, hi).astype(q.out)
    return out if wl.layout == "NHWC" else out.transpose(0, 3, 1, 2)


def conv2d_reference(wl: Workload, data: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None,
                     residual: np.ndarray | None = None, **quant) -> np.ndarray:
    """Direct convolution in float64, in the workload's layout, then its epilogue; returns float64.
    A quantized layer (int8, s8s8) goes to `quantized_reference`: exact, in its output type."""
    if wl.quantized:
        return quantized_reference(wl, data, weight, bias=bias, **quant)
    x = np.asarray(data, np.float64)
    wt = np.asarray(weight, np.float64)
    if wl.layout == "NCHW":
        x = x.transpose(0, 2, 3, 1)
        wt = wt.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    out = _conv_nhwc(wl, x, wt, np.zeros((wl.n, wl.oh, wl.ow, wl.co)))
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
