"""The one tensor-math layer every transform is written against.

Each kernel maps an elementwise operation over aligned lists of tensors (the present
leaves of a pytree). Two choices are made here, once, for every transform:

* **pure or donating**: with ``donate=False`` a kernel returns new tensors and touches
  nothing; with ``donate=True`` it overwrites the tensors of its *first* list argument
  and returns them (the caller owns those buffers, as with JAX buffer donation).
* **multi-tensor or per-tensor**: ``torch._foreach_*`` ops where they pay off (one
  launch for many tensors on accelerators), per-tensor ops where foreach cannot run or
  gains nothing: on CPU (foreach is a loop there too) and inside ``torch.func``
  transforms (foreach ops have no batching rules under ``vmap``).

Complex tensors are viewed as real (``torch.view_as_real``) on the way in, so every
kernel works per real/imaginary component, as torch.optim does.

Scalar arguments may be Python numbers, 0-d tensors, or lists of those (one per
tensor). Tensor scalars are never read on the host, so kernels stay traceable and
differentiable with respect to hyperparameters.

Under a ``torch.func`` transform (``grad``, ``vmap``, ``jacrev``, ...) nothing is written in
place: ``donate`` and ``out`` are ignored and every kernel returns new tensors. A buffer
made from unbatched state cannot receive a batched value in place under ``vmap`` (the MAML
setting: shared meta-parameters and state, per-task gradients), and autograd must see
every value it saved. Plain eager and compiled steps keep their in-place writes.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Sequence
from numbers import Number
from typing import Any

import torch

from . import segments as _seg

Tensor = torch.Tensor
TensorList = list[Tensor]
Scalar = Any  # a Python number, a 0-d tensor, or a list of them (one per tensor)

__all__ = [
    "set_foreach", "use_foreach", "scalar_dtype",
    "add", "sub", "mul", "div", "lerp", "addcmul", "addcdiv", "maximum",
    "sqrt", "sign", "neg", "absolute", "clamp", "copy", "zeros_like", "cast", "where",
    "select_by_sign", "scalars_for",
    "gather_sparse", "scatter_sparse", "sparse_like", "rows_to_dense", "row_masks",
    "norms", "global_norm", "vdot", "all_finite", "count_nonfinite", "leafwise", "norm_dtype",
    "masked_fill", "mul_real", "means", "unit_norms", "rms", "writes_in_place",
    "scaled_div", "div_root", "mul_root", "power", "donations_into", "add_shrink", "add_finite_scaled",
    "param_scalars", "is_dtensor",
]

_FOREACH_POLICY: bool | None = None  # None: automatic (see use_foreach)


def set_foreach(policy: bool | None) -> None:
    """Force the multi-tensor path on (True) or off (False), or restore the default (None).

    Args:
      policy: ``True`` uses ``torch._foreach_*`` ops wherever they can run, ``False``
        always uses per-tensor ops, ``None`` (default) chooses automatically.

    Example:
      >>> import functional_optim as fo
      >>> fo.kernels.set_foreach(False)
      >>> fo.kernels.set_foreach(None)
    """
    global _FOREACH_POLICY
    if policy not in (None, True, False):
        raise TypeError(f"policy must be True, False or None, got {policy!r}")
    _FOREACH_POLICY = policy


def _in_functorch_transform() -> bool:
    return torch._C._functorch.peek_interpreter_stack() is not None


def writes_in_place(donate: bool) -> bool:
    """Whether a kernel called with ``donate`` (or ``out``) really writes in place: yes,
    except under a ``torch.func`` transform, where every kernel returns new tensors.

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.kernels.writes_in_place(True)
      True
      >>> torch.func.grad(lambda x: x * fo.kernels.writes_in_place(True))(torch.tensor(1.0))
      tensor(0.)
    """
    return bool(donate) and not _in_functorch_transform()


_DONATIONS = threading.local()


@contextlib.contextmanager
def donations_into(sources: Sequence[Tensor | None], targets: Sequence[Tensor | None]):
    """Within the block, a kernel asked to overwrite one of ``sources`` (``donate=True``)
    writes its result into the aligned ``targets`` buffer instead, leaving the source intact.

    The eager adapter passes the user's ``p.grad`` tensors to a donating update this way:
    the first kernel that would overwrite a grad reads it and writes into a buffer the
    optimizer owns, with no copy pass beforehand. Later kernels donate that buffer as usual.
    ``targets`` must match their sources in shape, dtype and device (None entries: no
    redirection). Nothing changes under ``torch.func`` transforms (nothing is written there).

    Example:
      >>> import torch, functional_optim as fo
      >>> g, buf = torch.tensor([1.0, 2.0]), torch.zeros(2)
      >>> with fo.kernels.donations_into([g], [buf]):
      ...     out = fo.kernels.mul([g], 3.0, donate=True)
      >>> out[0] is buf, g, buf
      (True, tensor([1., 2.]), tensor([3., 6.]))
    """
    previous = getattr(_DONATIONS, "map", None)
    mapping = dict(previous or {})
    for s, t in zip(sources, targets):
        if s is not None and t is not None:
            mapping[id(s)] = t
    _DONATIONS.map = mapping
    try:
        yield
    finally:
        _DONATIONS.map = previous


def _donated(xs: Sequence[Tensor]) -> Sequence[Tensor]:
    """Where a donating kernel writes ``xs``: ``xs`` itself (the same object) unless some
    are redirected by :func:`donations_into`."""
    mapping = getattr(_DONATIONS, "map", None)
    if not mapping or xs is None:
        return xs
    targets = [mapping.get(id(x), x) for x in xs]
    return xs if all(t is x for t, x in zip(targets, xs)) else targets


def use_foreach(tensors: Sequence[Tensor]) -> bool:
    """Whether kernels over ``tensors`` take the multi-tensor path.

    Automatic rule: yes on accelerators, no on CPU and inside ``torch.func`` transforms
    (on the CPU, in-place ops over several tensors still run as one ``torch._foreach_*_``
    call eagerly: the same per-tensor kernels, without a Python loop).
    """
    if not tensors or _FOREACH_POLICY is False or _in_functorch_transform():
        return False
    if _FOREACH_POLICY is True:
        return True
    device = tensors[0].device
    return device.type != "cpu" and all(t.device == device for t in tensors)


def _in_place_foreach(op: str, xs: Sequence[Tensor]) -> bool:
    # an eager in-place op over several CPU tensors runs as one ``torch._foreach_<op>_``: the
    # same per-tensor kernels (same bits, nothing allocated) looped in C++, not in Python
    return (_FOREACH_POLICY is not False and len(xs) > 1 and xs[0].device.type == "cpu"
            and not torch.compiler.is_compiling() and hasattr(torch, f"_foreach_{op}_"))


def scalar_dtype(tensor: Tensor) -> torch.dtype:
    """Dtype for per-step scalars (bias corrections, schedules) of ``tensor``'s update.

    float64, as torch.optim computes these in Python doubles; float32 on devices
    without float64 support (MPS).
    """
    return torch.float32 if tensor.device.type == "mps" else torch.float64


def is_dtensor(x: Any) -> bool:
    """Whether ``x`` is a ``torch.distributed.tensor.DTensor`` (FSDP2, tensor parallel).

    Its math runs through DTensor's dispatch (which all-reduces where a reduction spans
    shards), so buffers for it are made ``*_like`` it, never from its (global) shape, and
    it cannot be packed into flat buffers. Imports nothing: if the DTensor module is not
    loaded, no tensor can be one.

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.kernels.is_dtensor(torch.zeros(2))
      False
    """
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(x, module.DTensor)


def any_dtensor(xs: Sequence[Any]) -> bool:
    """Whether any of ``xs`` is a DTensor (see :func:`is_dtensor`; None entries allowed),
    looking the module up once: a per-step check over many params costs nothing unless
    DTensor is loaded.

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.kernels.any_dtensor([torch.zeros(2), None])
      False
    """
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and any(isinstance(x, module.DTensor) for x in xs)


# ---------------------------------------------------------------------------------
# The generic mapper


def _real(x: Any) -> Any:
    if isinstance(x, Tensor) and x.is_complex():
        return torch.view_as_real(x)
    return x


def _is_list(x: Any) -> bool:
    return isinstance(x, (list, tuple))


def _nth(arg: Any, i: int) -> Any:
    return arg[i] if _is_list(arg) else arg


def _foreach_arg(arg: Any, n: int) -> Any:
    # foreach ops take Python scalars and tensor lists; a single 0-d tensor scalar is
    # passed as a list so every op (lerp included) accepts it.
    if isinstance(arg, Tensor):
        return [arg] * n
    if _is_list(arg):
        if any(isinstance(a, Tensor) for a in arg):
            return [a if isinstance(a, Tensor) else torch.as_tensor(a) for a in arg]
        return list(arg)
    return arg


def _map(op: str, xs: Sequence[Tensor], *args: Any, donate: bool = False,
         out: Sequence[Tensor] | None = None, **kwargs: Any) -> TensorList:
    """Apply ``torch.<op>`` elementwise over ``xs`` and the aligned ``args``.

    ``donate`` writes the results into ``xs``; ``out`` into the given buffers (they may
    alias any argument, as elementwise ops allow). ``out`` is for buffers the caller owns
    and is not differentiable; differentiable code uses ``donate`` on its own
    intermediates or neither.
    """
    n = len(xs)
    if n == 0:
        return []
    for a in args:
        if _is_list(a) and len(a) != n:
            raise ValueError(f"kernel {op}: list arguments have lengths {n} and {len(a)}")
    if not writes_in_place(donate or out is not None):
        donate, out = False, None
    out = _donated(xs) if donate else _donated(out)
    real_xs = [_real(x) for x in xs]
    real_args = [[_real(a) for a in arg] if _is_list(arg) else _real(arg) for arg in args]
    real_args, want = _python_scalar_semantics(real_xs, real_args)
    if use_foreach(real_xs):
        fargs = [_foreach_arg(a, n) for a in real_args]
        if out is xs:
            getattr(torch, f"_foreach_{op}_")(real_xs, *fargs, **kwargs)
            return list(xs)
        results = list(getattr(torch, f"_foreach_{op}")(real_xs, *fargs, **kwargs))
        if out is not None:
            torch._foreach_copy_([_real(o) for o in out], results)
            return list(out)
    elif out is xs and _in_place_foreach(op, real_xs):
        getattr(torch, f"_foreach_{op}_")(real_xs, *[_foreach_arg(a, n) for a in real_args], **kwargs)
        return list(xs)
    elif out is xs and hasattr(xs[0], f"{op}_"):
        for i, x in enumerate(real_xs):
            getattr(x, f"{op}_")(*[_nth(a, i) for a in real_args], **kwargs)
        return list(xs)
    else:
        fn = getattr(torch, op)
        if out is not None:
            for i, (x, o) in enumerate(zip(real_xs, out)):
                fn(x, *[_nth(a, i) for a in real_args], **kwargs, out=_real(o))
            return list(out)
        results = [fn(x, *[_nth(a, i) for a in real_args], **kwargs) for i, x in enumerate(real_xs)]
    if want is not None:
        results = [r if w is None or r.dtype == w else r.to(w) for r, w in zip(results, want)]
    return [torch.view_as_complex(r) if x.is_complex() else r for r, x in zip(results, xs)]


def _opmath(dtype: torch.dtype) -> torch.dtype:
    # the dtype torch computes a tensor of ``dtype`` in with a Python scalar (float32 for
    # bfloat16 and float16)
    return torch.promote_types(dtype, torch.float32) if dtype.is_floating_point else dtype


def _is_scalar_tensor(arg: Any) -> bool:
    return isinstance(arg, Tensor) and arg.dim() == 0 and arg.is_floating_point()


def _python_scalar_semantics(xs: Sequence[Tensor], args: list) -> tuple[list, list | None]:
    # A single 0-d tensor scalar acts on a 0-d tensor as a Python number does: two 0-d
    # operands would promote (a float32 0-d leaf times a float64 lr gives float64), so the
    # scalar is cast to the leaf's op-math dtype and the result gets the dtype it has
    # with a Python number. Returns the args and the wanted result dtypes (None: as is).
    if not any(x.dim() == 0 and x.is_floating_point() for x in xs) \
            or not any(_is_scalar_tensor(a) for a in args):
        return args, None
    want: list = []
    for i, x in enumerate(xs):
        dtype = None
        if x.dim() == 0 and x.is_floating_point():
            dtype = x.dtype
            for a in args:
                if _is_list(a) and isinstance(a[i], Tensor):
                    dtype = torch.promote_types(dtype, a[i].dtype)
        want.append(dtype)
    new_args = []
    for a in args:
        if _is_scalar_tensor(a):
            a = [a if w is None or a.dtype == _opmath(w) else a.to(_opmath(w)) for w in want]
        new_args.append(a)
    return new_args, want


def _all_tensors(scalar: Any) -> bool:
    # a 0-d tensor scalar, or a list of them (one per tensor)
    return isinstance(scalar, Tensor) or (_is_list(scalar) and all(isinstance(v, Tensor) for v in scalar))


def _result_dtypes(*lists: Sequence[Tensor]) -> list[torch.dtype]:
    # the dtype of an elementwise op over aligned tensors (type promotion among them)
    out = []
    for ts in zip(*lists):
        dtype = ts[0].dtype
        for t in ts[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        out.append(dtype)
    return out


def _is_number(s: Any) -> bool:
    return isinstance(s, Number) and not isinstance(s, bool)


# ---------------------------------------------------------------------------------
# Elementwise kernels. ``xs`` is overwritten when ``donate`` is true.


def add(xs: Sequence[Tensor], other: Any, alpha: Scalar = 1, *, donate: bool = False,
        out: Sequence[Tensor] | None = None) -> TensorList:
    """``x + alpha * other``; ``other`` is a list of tensors or a scalar."""
    if _is_number(alpha) and alpha == 1:
        return _map("add", xs, other, donate=donate, out=out)
    if _is_number(alpha) and _is_list(other):
        return _map("add", xs, other, alpha=alpha, donate=donate, out=out)
    if _is_list(other) and _all_tensors(alpha):
        # addcmul(x, other, alpha) rounds once, as add(x, other, alpha=<number>) does (a
        # fused multiply-add), so a 0-d tensor alpha gives the bits of the same Python number
        return _map("addcmul", xs, other, alpha, donate=donate, out=out)
    if _is_list(other):
        return _map("add", xs, mul(other, alpha), donate=donate, out=out)
    scaled = [other * a for a in alpha] if _is_list(alpha) else other * alpha
    return _map("add", xs, scaled, donate=donate, out=out)


def sub(xs: Sequence[Tensor], other: Any, *, donate: bool = False,
        out: Sequence[Tensor] | None = None) -> TensorList:
    """``x - other``."""
    return _map("sub", xs, other, donate=donate, out=out)


def mul(xs: Sequence[Tensor], other: Any, *, donate: bool = False,
        out: Sequence[Tensor] | None = None) -> TensorList:
    """``x * other``; ``other`` is a list of tensors, a scalar or a list of scalars."""
    return _map("mul", xs, other, donate=donate, out=out)


def div(xs: Sequence[Tensor], other: Any, *, donate: bool = False,
        out: Sequence[Tensor] | None = None) -> TensorList:
    """``x / other``."""
    return _map("div", xs, other, donate=donate, out=out)


def lerp(xs: Sequence[Tensor], ends: Sequence[Tensor], weight: Scalar, *, donate: bool = False,
        out: Sequence[Tensor] | None = None) -> TensorList:
    """``x + weight * (end - x)`` with torch's ``lerp`` rounding (matches torch.optim's moments)."""
    if _all_tensors(weight) and any(x.dtype in _REDUCED for x in xs):
        # torch rounds a tensor weight to bfloat16/float16 tensors' dtype (0.1 would become
        # 0.10009765625): computed in float32, as torch does with a Python weight, then rounded
        results = _map("lerp", cast(xs, [_opmath(x.dtype) for x in xs]),
                       cast(ends, [_opmath(e.dtype) for e in ends]), weight)
        return _write(results, xs, _result_dtypes(xs, ends), donate, out)
    return _map("lerp", xs, ends, weight, donate=donate, out=out)


def addcmul(xs: Sequence[Tensor], a: Sequence[Tensor], b: Sequence[Tensor], value: Scalar = 1, *,
            donate: bool = False, out: Sequence[Tensor] | None = None) -> TensorList:
    """``x + value * a * b``."""
    if _is_number(value):
        return _map("addcmul", xs, a, b, value=value, donate=donate, out=out)
    return _fused_with_tensor_value("addcmul", xs, a, b, value, donate, out)


def addcdiv(xs: Sequence[Tensor], a: Sequence[Tensor], b: Sequence[Tensor], value: Scalar = 1, *,
            donate: bool = False, out: Sequence[Tensor] | None = None) -> TensorList:
    """``x + value * a / b``."""
    if _is_number(value):
        return _map("addcdiv", xs, a, b, value=value, donate=donate, out=out)
    return _fused_with_tensor_value("addcdiv", xs, a, b, value, donate, out)


_REDUCED = (torch.bfloat16, torch.float16)


def _write(results: TensorList, xs: Sequence[Tensor], dtypes: list[torch.dtype], donate: bool,
           out: Sequence[Tensor] | None) -> TensorList:
    # results computed in a wider dtype, written into the donated xs or ``out``, or cast
    if not writes_in_place(donate or out is not None):
        donate, out = False, None
    if donate:
        return copy(_donated(xs), results)
    if out is not None:
        return copy(_donated(out), results)
    return cast(results, dtypes)


def _fused_with_tensor_value(op: str, xs: Sequence[Tensor], a: Sequence[Tensor], b: Sequence[Tensor],
                             value: Any, donate: bool, out: Sequence[Tensor] | None) -> TensorList:
    # torch's addcmul/addcdiv take ``value`` as a number only. ``value * a`` is formed first
    # (in float32 for bfloat16/float16 ``a``, as the fused kernel computes) and the fused op
    # runs with value 1: ``x + (value * a) * b`` rounds exactly as the fused op with the same
    # Python number does (one multiply-add), so a 0-d tensor value gives the same bits.
    scaled = mul(cast(a, [_opmath(t.dtype) for t in a]), value)
    results = _map(op, xs, scaled, b, donate=donate, out=out)
    if writes_in_place(donate or out is not None):
        return results
    return cast(results, _result_dtypes(xs, a, b))


def scaled_div(xs: Sequence[Tensor], ys: Sequence[Tensor], value: Scalar = 1, *, donate: bool = False,
               out: Sequence[Tensor] | None = None) -> TensorList:
    """``value * x / y``, rounded as torch's ``addcdiv`` rounds its term: ``(value * x) / y``.

    ``value`` is a number, a 0-d tensor or a list of them. Written in place (``donate`` or
    ``out``) eagerly, this is one pass over memory: ``addcdiv`` into a 0-d zero (adding
    zero is exact; a zero result is +0). Otherwise ``mul``, then ``div`` (differentiable).

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.kernels.scaled_div([torch.tensor([1.0, 3.0])], [torch.tensor([2.0, 4.0])], -2.0)
      [tensor([-1.0000, -1.5000])]
    """
    if not _one_pass(donate, out, xs, ys):
        if _is_number(value) and value == 1:
            return div(xs, ys, donate=donate, out=out)
        scaled = mul(xs, value, donate=donate, out=out)
        return div(scaled, ys, donate=True)  # the donated or given buffers, or a fresh product
    targets = _donated(xs) if donate else _donated(out)
    for i, (x, y, t) in enumerate(zip(xs, ys, targets)):
        _scaled_div_into(_real(x), _real(y), _nth(value, i), _real(t))
    return list(targets)


def _one_pass(donate: bool, out: Sequence[Tensor] | None, *lists: Sequence[Tensor]) -> bool:
    # whether a fused per-tensor sequence may write in place: eager, per-tensor kernels
    # (not foreach), one dtype per tensor, nothing being differentiated (out= ops are not)
    if not writes_in_place(donate or out is not None) or torch.compiler.is_compiling():
        return False
    tensors = [t for ts in lists for t in ts]
    if use_foreach(tensors) or _differentiating(tensors):
        return False
    return all(len({t.dtype for t in ts}) == 1 for ts in zip(*lists))


def maximum(xs: Sequence[Tensor], others: Sequence[Tensor], *, donate: bool = False,
            out: Sequence[Tensor] | None = None) -> TensorList:
    """Elementwise ``max(x, other)``."""
    return _map("maximum", xs, others, donate=donate, out=out)


def sqrt(xs: Sequence[Tensor], *, donate: bool = False,
        out: Sequence[Tensor] | None = None) -> TensorList:
    """Elementwise square root, with derivative 0 at exactly 0.

    The value is torch's ``sqrt`` bit for bit (``-0.0``, NaN and negative inputs included).
    The derivative ``1 / (2 sqrt(x))`` is infinite at ``x = 0``; there it is taken as 0,
    the subgradient that keeps meta-gradients finite: an adaptive optimizer's second
    moment is exactly 0 where a gradient has always been 0 (inactive ReLU units, unused
    embeddings), and ``inf * 0`` would turn the whole meta-gradient into NaN. 0 is also the
    limit of what the moment's own derivative there contributes (it is ``2 g = 0``), so
    derivatives of everything built on ``sqrt(nu)`` stay exact elsewhere. Only when
    something is being differentiated (a tensor requiring grad, or a ``torch.func``
    transform) does this take two extra selections; plain steps run torch's ``sqrt``.

    Example:
      >>> import torch, functional_optim as fo
      >>> x = torch.tensor([0.0, 4.0], requires_grad=True)
      >>> y = fo.kernels.sqrt([x])[0]
      >>> y, torch.autograd.grad(y.sum(), x)[0]
      (tensor([0., 2.], grad_fn=<WhereBackward0>), tensor([0.0000, 0.2500]))
    """
    if _differentiating(xs):
        results = [_sqrt_zero_derivative(_real(x)) for x in xs]  # new tensors: autograd saves them
        return [torch.view_as_complex(r) if x.is_complex() else r for r, x in zip(results, xs)]
    return _map("sqrt", xs, donate=donate, out=out)


def _differentiating(xs: Sequence[Tensor]) -> bool:
    return torch.is_grad_enabled() and (_in_functorch_transform() or any(x.requires_grad for x in xs))


def _sqrt_zero_derivative(x: Tensor) -> Tensor:
    # zeros select x itself, detached (the same signed zero sqrt returns, no derivative);
    # the root of the other entries never sees a 0, so no inf enters the backward pass
    zero = x == 0
    return torch.where(zero, x.detach(), torch.sqrt(torch.where(zero, torch.ones_like(x), x)))


def div_root(xs: Sequence[Tensor], ss: Sequence[Tensor], eps: Scalar = 0.0, value: Scalar = 1, *,
             eps_root: Scalar = 0.0, divisor: Scalar | None = None, centers: Sequence[Tensor] | None = None,
             donate: bool = False, out: Sequence[Tensor] | None = None) -> TensorList:
    """``value * x / (sqrt(s / divisor - c**2 + eps_root) + eps)`` per tensor: the update
    normalised by a root of a second moment (RMSprop, centered RMSprop, Adagrad, NAdam).

    Args:
      xs: the numerators (overwritten when ``donate``).
      ss: the second moments (read only).
      eps: added to the root. Default 0.
      value: the scale of the result (number, 0-d tensor or list of them). Default 1.
      eps_root: added under the root. Default 0.
      divisor: ``s`` is divided by it first (e.g. a bias correction); None (default): not.
      centers: tensors ``c`` whose square is subtracted under the root; None (default): none.
      donate, out: as every kernel.

    Written in place (``donate`` or ``out``, eagerly), the denominator of one tensor at a
    time is made in a scratch buffer reused for every tensor (see :func:`_scratch_like`),
    so nothing param-sized is allocated; the operations and their rounding are those of
    the separate kernels (``div``, ``addcmul``, ``add``, ``sqrt``, ``add``,
    :func:`scaled_div`). Otherwise it is computed from those kernels, with the derivative
    of :func:`sqrt`.

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.kernels.div_root([torch.tensor([3.0, -4.0])], [torch.tensor([9.0, 16.0])], 1.0, 2.0)
      [tensor([ 1.5000, -1.6000])]
    """
    extra = [centers] if centers is not None else []
    if not _one_pass(donate, out, xs, ss, *extra):
        d, own = list(ss), False
        if divisor is not None:
            d, own = div(d, divisor), True
        if centers is not None:
            d, own = addcmul(d, centers, centers, -1, donate=own), True
        if not _is_zero_number(eps_root):
            d, own = add(d, eps_root, donate=own), True
        d = sqrt(d, donate=own)
        if not _is_zero_number(eps):  # a fresh root, but sqrt saved it for backward
            d = add(d, eps, donate=not _differentiating(d))
        return scaled_div(xs, d, value, donate=donate, out=out)
    with_eps_root, with_eps = not _is_zero_number(eps_root), not _is_zero_number(eps)
    targets = _donated(xs) if donate else _donated(out)
    for i, (x, s, t) in enumerate(zip(xs, ss, targets)):
        rs = _real(s)
        d = _scratch_like(rs)
        src = rs
        if divisor is not None:
            src = torch.div(src, _nth(divisor, i), out=d)
        if centers is not None:
            c = _real(centers[i])
            src = torch.addcmul(src, c, c, value=-1, out=d)
        if with_eps_root:
            src = torch.add(src, _nth(eps_root, i), out=d)
        torch.sqrt(src, out=d)
        if with_eps:
            d.add_(_nth(eps, i))
        _scaled_div_into(_real(x), d, _nth(value, i), _real(t))
    return list(targets)


def mul_root(xs: Sequence[Tensor], ss: Sequence[Tensor], eps_root: Scalar = 0.0, *, donate: bool = False,
             out: Sequence[Tensor] | None = None) -> TensorList:
    """``x * sqrt(s + eps_root)`` per tensor (Adadelta's numerator); in place without a
    param-sized allocation, as :func:`div_root`.

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.kernels.mul_root([torch.tensor([1.0, 2.0])], [torch.tensor([3.0, 8.0])], 1.0)
      [tensor([2., 6.])]
    """
    if not _one_pass(donate, out, xs, ss):
        root = sqrt(add(ss, eps_root), donate=True)  # a fresh sum: ours to overwrite
        return mul(xs, root, donate=donate, out=out)
    targets = _donated(xs) if donate else _donated(out)
    for i, (x, s, t) in enumerate(zip(xs, ss, targets)):
        rs = _real(s)
        d = torch.add(rs, _nth(eps_root, i), out=_scratch_like(rs))
        torch.mul(_real(x), d.sqrt_(), out=_real(t))
    return list(targets)


def power(xs: Sequence[Tensor], exponent: float | Tensor, *, donate: bool = False,
          out: Sequence[Tensor] | None = None) -> TensorList:
    """Elementwise ``x ** exponent`` (a Python number or a 0-d tensor, for exponents in
    [0, 1) or negative ones), with derivative 0 at exactly 0.

    The value is torch's ``pow`` bit for bit (torch computes ``-0.5`` as ``rsqrt`` and
    ``0.5`` as ``sqrt``). For ``0 < exponent < 1`` (MADGRAD's cube root, AdaHessian's
    ``v ** (k / 2)``) the derivative ``exponent * x ** (exponent - 1)`` is infinite at
    ``x = 0``; there it is taken as 0, as :func:`sqrt` does, so meta-gradients through a
    moment that is exactly 0 (a gradient that was always 0) stay finite; a 0-d tensor
    exponent (a hyperparameter fed as a tensor) is treated the same way, and its own
    derivative is 0 at ``x = 0``. Only while something is being differentiated does this
    take two extra selections.

    Example:
      >>> import torch, functional_optim as fo
      >>> x = torch.tensor([0.0, 8.0], requires_grad=True)
      >>> y = fo.kernels.power([x], 1 / 3)[0]
      >>> torch.autograd.grad(y.sum(), x)[0]
      tensor([0.0000, 0.0833])
    """
    is_tensor = isinstance(exponent, Tensor) and exponent.dim() == 0
    if not is_tensor and (not isinstance(exponent, Number) or isinstance(exponent, bool)):
        raise TypeError(f"exponent must be a Python number or a 0-d tensor, got {type(exponent).__name__}")
    if _differentiating(xs) and (is_tensor or 0 < exponent < 1):
        at_zero = exponent.detach() if is_tensor else exponent
        results = []
        for x in xs:
            r = _real(x)
            zero = r == 0
            v = torch.where(zero, torch.pow(r.detach(), at_zero),
                            torch.pow(torch.where(zero, torch.ones_like(r), r), exponent))
            results.append(torch.view_as_complex(v) if x.is_complex() else v)
        return results
    return _map("pow", xs, exponent, donate=donate, out=out)


def add_shrink(xs: Sequence[Tensor], ps: Sequence[Tensor], keep: Scalar, *, donate: bool = False,
               out: Sequence[Tensor] | None = None) -> TensorList:
    """``x + (p * keep - p)`` per tensor: decoupled weight decay as an update.

    ``p * keep - p`` is exact when ``keep`` is in [0.5, 2] (Sterbenz), so adding the result
    to ``p`` rounds as ``p.mul_(keep)`` does (torch's and timm's decay, ``keep`` rounded to
    ``p``'s dtype); ``-(1 - keep) * p`` would drift from them by that rounding at every
    step. Written in place (``donate`` or ``out``, eagerly) the product goes through the
    reused scratch buffer (:func:`_scratch_like`): nothing param-sized is allocated.
    An infinite ``p`` stays itself under the shrink (torch's ``inf * keep`` is ``inf``), so
    its ``inf - inf`` (NaN) is taken as 0: the param stays ``inf`` instead of becoming NaN.

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.kernels.add_shrink([torch.tensor([1.0, 0.0])], [torch.tensor([2.0, -4.0])], 0.75)
      [tensor([0.5000, 1.0000])]
    """
    if not _one_pass(donate, out, xs, ps):
        # where(d == d, ...) rather than nan_to_num: inductor's CPU isnan is a scalar loop
        shrink = [torch.where(d == d, d, torch.zeros((), dtype=d.dtype, device=d.device))
                  for d in sub(mul(ps, keep), ps, donate=True)]
        return add(xs, shrink, donate=donate, out=out)
    targets = _donated(xs) if donate else _donated(out)
    for i, (x, p, t) in enumerate(zip(xs, ps, targets)):
        d = _scratch_like(p)
        torch.mul(p, _nth(keep, i), out=d).sub_(p).nan_to_num_(nan=0.0, posinf=_INF, neginf=-_INF)
        torch.add(x, d, out=t)
    return list(targets)


_INF = float("inf")


def add_finite_scaled(xs: Sequence[Tensor], ps: Sequence[Tensor], alpha: Scalar, *, donate: bool = False,
                      out: Sequence[Tensor] | None = None) -> TensorList:
    """``x + alpha * p`` per tensor, an infinite entry of ``p`` read as 0 (NaN stays NaN).

    Decoupled weight decay as an update for bfloat16/float16 params (``alpha = -r``): the
    decay of an infinite param is then 0 and the param stays infinite, as torch's
    ``p.mul_(1 - r)`` leaves it, instead of ``inf - inf``. Otherwise the bits of
    ``add(xs, ps, alpha)``. Eagerly in place the cleaned ``p`` goes through the reused
    scratch buffer: nothing param-sized is allocated.

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.kernels.add_finite_scaled([torch.zeros(2)], [torch.tensor([float("inf"), 2.0])], -0.5)
      [tensor([ 0., -1.])]
    """
    if not _one_pass(donate, out, xs, ps):
        finite = [torch.where(p.abs() == _INF, torch.zeros((), dtype=p.dtype, device=p.device), p) for p in ps]
        return add(xs, finite, alpha, donate=donate, out=out)
    targets = _donated(xs) if donate else _donated(out)
    for i, (x, p, t) in enumerate(zip(xs, ps, targets)):
        finite = torch.nan_to_num(p, nan=float("nan"), posinf=0.0, neginf=0.0, out=_scratch_like(p))
        add([x], [finite], _nth(alpha, i), out=[t])
    return list(targets)


def _scaled_div_into(x: Tensor, y: Tensor, value: Any, target: Tensor) -> None:
    # (value * x) / y into ``target``; a 0-d CPU tensor value is read as the number it holds
    # (no device sync there), which scales as torch scales by a number of the tensor's dtype
    if isinstance(value, Tensor) and value.dim() == 0 and value.device.type == "cpu" == x.device.type \
            and not value.is_complex():
        value = value.item()
    if _is_number(value) and value == 1:
        torch.div(x, y, out=target)
    elif _is_number(value):
        torch.addcdiv(torch.zeros((), dtype=x.dtype, device=x.device), x, y, value=value, out=target)
    else:
        torch.mul(x, value, out=target).div_(y)


def _is_zero_number(value: Any) -> bool:
    return _is_number(value) and value == 0


_SCRATCH = threading.local()


def _scratch_like(x: Tensor) -> Tensor:
    """A contiguous buffer shaped like ``x``, for an intermediate that dies before the next
    call: on the CPU one buffer per dtype (and thread), grown to the largest tensor seen
    and kept (as much memory as torch's for-loop holds for one temporary), so steps do not
    fault in fresh pages for every temporary (glibc maps a block over 32 MB anew at each
    allocation); on accelerators (caching allocators) and under ``torch.compile``, a
    fresh tensor."""
    if is_dtensor(x):  # sharded: a buffer with x's placements, not of its global shape
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)
    arenas = _SCRATCH.__dict__.setdefault("arenas", {})
    arena = arenas.get(x.dtype)
    if arena is None or arena[0].numel() < x.numel():
        arena = arenas[x.dtype] = (torch.empty(x.numel(), dtype=x.dtype, device=x.device), {})
    buf, views = arena
    view = views.get(x.shape)  # views of the arena by shape: a dict lookup, not two tensor ops
    if view is None:
        view = views[x.shape] = buf[:x.numel()].view(x.shape)
    return view


def sign(xs: Sequence[Tensor], *, donate: bool = False,
        out: Sequence[Tensor] | None = None) -> TensorList:
    """Elementwise sign (per real/imaginary component for complex tensors)."""
    return _map("sign", xs, donate=donate, out=out)


def neg(xs: Sequence[Tensor], *, donate: bool = False,
        out: Sequence[Tensor] | None = None) -> TensorList:
    """``-x``."""
    return _map("neg", xs, donate=donate, out=out)


def clamp(xs: Sequence[Tensor], min: Scalar = None, max: Scalar = None, *, donate: bool = False,
          out: Sequence[Tensor] | None = None) -> TensorList:
    """Elementwise clamp to ``[min, max]`` (either may be None)."""
    result = list(xs)
    if min is not None:
        result = _map("clamp_min", result, min, donate=donate, out=out)
    if max is not None:  # after a first pass the buffers in ``result`` are ours to overwrite
        first = min is None
        result = _map("clamp_max", result, max, donate=donate or not first,
                      out=out if first else None)
    return result


def where(cond: Scalar, xs: Sequence[Tensor], others: Any, *,
          out: Sequence[Tensor] | None = None) -> TensorList:
    """``x if cond else other`` per tensor, never mixing values (a NaN or Inf in the branch
    not taken does not leak).

    Args:
      cond: a bool tensor broadcastable to each ``x`` (a 0-d one selects whole tensors),
        or a list of them, one per tensor; moved to each ``x``'s device.
      xs: the tensors taken where ``cond`` is true.
      others: tensors aligned with ``xs``, or one scalar (e.g. ``0.0``) for all of them.
      out: buffers to write the results into (ignored under ``torch.func`` transforms).

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.kernels.where(torch.tensor(False), [torch.tensor([float("nan")])], 0.0)
      [tensor([0.])]
    """
    if out is not None and not writes_in_place(True):
        out = None
    out = _donated(out)
    results = []
    for i, x in enumerate(xs):
        c = _nth(cond, i)
        c = c if c.device == x.device else c.to(x.device)
        other = _nth(others, i)
        if not isinstance(other, Tensor):
            other = x.new_full((), other)
        if out is not None and _fits(out[i], x):
            results.append(torch.where(c, x, other, out=out[i]))
        else:
            results.append(torch.where(c, x, other))
    return results


def _fits(buffer: Any, like: Tensor) -> bool:
    # a buffer that can receive ``like``'s values in place (and is not ``like`` itself)
    return (isinstance(buffer, Tensor) and buffer is not like and not buffer.is_sparse
            and buffer.shape == like.shape and buffer.dtype == like.dtype and buffer.device == like.device)


def copy(dst: Sequence[Tensor], src: Sequence[Tensor]) -> TensorList:
    """Copy ``src`` into the buffers of ``dst`` and return ``dst``; under ``torch.func``
    transforms ``src`` is returned instead (nothing is written in place)."""
    if not writes_in_place(True):
        return list(src)
    dst = _donated(dst)
    if use_foreach(dst):
        torch._foreach_copy_(list(dst), list(src))
    else:
        for d, s in zip(dst, src):
            d.copy_(s)
    return list(dst)


def zeros_like(xs: Sequence[Tensor], dtype: torch.dtype | None = None) -> TensorList:
    """Fresh zero tensors shaped like ``xs`` (optionally of another dtype)."""
    return [torch.zeros_like(x, dtype=dtype) for x in xs]


def cast(xs: Sequence[Tensor], dtypes: torch.dtype | Sequence[torch.dtype | None] | None) -> TensorList:
    """Each ``x`` in ``dtype`` (a single dtype or one per tensor; None keeps it)."""
    return [x if d is None or x.dtype == d else x.to(d) for x, d in zip(xs, _per_tensor(dtypes, len(xs)))]


def upcast(xs: Sequence[Tensor], *dtypes: torch.dtype | None) -> TensorList:
    """Each ``x`` promoted to at least every given dtype (None entries ignored); a tensor
    already wide enough is returned as is, so a donated input stays donated."""
    wanted = [d for d in dtypes if d is not None]
    if not wanted:
        return list(xs)
    targets = []
    for x in xs:
        dtype = x.dtype
        for d in wanted:
            dtype = torch.promote_types(dtype, d)
        targets.append(dtype)
    return cast(xs, targets)


def _per_tensor(value: Any, n: int) -> list:
    return list(value) if _is_list(value) else [value] * n


def masked_fill(xs: Sequence[Tensor], masks: Sequence[Tensor], value: Scalar, *, donate: bool = False,
                out: Sequence[Tensor] | None = None) -> TensorList:
    """``value`` where ``mask`` is true, else ``x``; a mask has its tensor's shape and, for a
    complex ``x``, covers the whole element (both components), as ``jnp.where`` does."""
    if not writes_in_place(donate or out is not None):
        donate, out = False, None
    if donate and _donated(xs) is not xs:
        donate, out = False, _donated(xs)
    out = _donated(out)
    results = []
    for i, (x, m) in enumerate(zip(xs, masks)):
        v = _nth(value, i)
        if donate:
            results.append(x.masked_fill_(m, v))
        elif out is not None:
            results.append(out[i].copy_(x.masked_fill(m, v)))
        else:
            results.append(x.masked_fill(m, v))
    return results


def mul_real(xs: Sequence[Tensor], factors: Sequence[Tensor], *, donate: bool = False,
             out: Sequence[Tensor] | None = None) -> TensorList:
    """``x * f`` with ``f`` a real tensor broadcastable to ``x`` (per-unit factors such as
    ``keepdim`` norms); a complex ``x`` has both components scaled. ``f`` should have the
    (real) dtype of ``x``, else the result is promoted."""
    if not writes_in_place(donate or out is not None):
        donate, out = False, None
    if donate and _donated(xs) is not xs:
        donate, out = False, _donated(xs)
    out = _donated(out)
    results = []
    for i, (x, f) in enumerate(zip(xs, factors)):
        if donate:
            results.append(x.mul_(f))
        elif out is not None:
            results.append(torch.mul(x, f, out=out[i]))
        else:
            results.append(torch.mul(x, f))
    return results


def absolute(xs: Sequence[Tensor], *, donate: bool = False,
             out: Sequence[Tensor] | None = None) -> TensorList:
    """Elementwise ``|x|`` (per real/imaginary component for complex tensors, as Adamax needs)."""
    return _map("abs", xs, donate=donate, out=out)


def scalars_for(scalars: Sequence[Any], xs: Sequence[Tensor]) -> list:
    """Per-tensor scalars (0-d tensors, e.g. float64 from ``steps.per_leaf``) that keep the
    dtype of each ``x`` they are combined with.

    A 0-d tensor scalar never changes the dtype of a tensor with dimensions, but two 0-d
    operands promote (a float32 0-d param times a float64 scalar gives float64): the
    scalar of a real 0-d ``x`` is cast to ``x``'s dtype, as torch casts a Python scalar.
    """
    return [s.to(x.dtype) if isinstance(s, Tensor) and x.dim() == 0 and not x.is_complex()
            and s.dtype != x.dtype else s for s, x in zip(scalars, xs)]


def _choice(value: Any, i: int, like: Tensor) -> Tensor:
    # one operand of select_by_sign for tensor ``i``, as a tensor ``torch.where`` accepts
    value = _nth(value, i)
    if isinstance(value, Tensor):
        if value.is_complex():  # a tensor shaped like the tests (0-d ones included)
            return torch.view_as_real(value)
        return value if value.dim() else value.to(like.dtype)
    return torch.full((), value, dtype=like.dtype, device=like.device)


def select_by_sign(tests: Sequence[Tensor], positive: Any, negative: Any, zero: Any, *,
                   out: Sequence[Tensor] | None = None) -> TensorList:
    """Per element of each ``test``: ``positive`` where it is > 0, ``negative`` where < 0,
    else ``zero`` (also for NaN).

    Each choice is a scalar (a number, a 0-d tensor, or a list of them, one per tensor) or
    a list of tensors shaped like ``tests``. Complex tests are compared per real/imaginary
    component and give a complex result holding one choice per component (Rprop's step
    factors). The result has the dtype of ``tests``; ``out`` writes it into given buffers
    (which may be ``tests`` themselves). When ``positive is zero`` one ``where`` suffices
    (e.g. ``select_by_sign(t, g, 0.0, g)`` zeroes ``g`` where ``t < 0``).
    """
    if out is not None and not writes_in_place(True):
        out = None
    out = _donated(out)
    results = []
    for i, t in enumerate(tests):
        rt = _real(t)
        pos, neg = _choice(positive, i, rt), _choice(negative, i, rt)
        other = pos if positive is zero else torch.where(rt > 0, pos, _choice(zero, i, rt))
        cond = rt < 0
        if out is not None:
            results.append(torch.where(cond, neg, other, out=_real(out[i])))
        else:
            results.append(torch.where(cond, neg, other).to(rt.dtype))
    if out is not None:
        return list(out)
    return [torch.view_as_complex(r.contiguous()) if t.is_complex() else r for r, t in zip(results, tests)]


# Sparse COO gradients (SparseAdam): dense state read and written at a gradient's indices.
# ``masks`` are coalesced sparse COO tensors shaped like the aligned ``xs``.


def gather_sparse(xs: Sequence[Tensor], masks: Sequence[Tensor]) -> TensorList:
    """The entries of each dense ``x`` at the indices of ``mask``, in the order of its values
    (torch's ``x.sparse_mask(mask).values()``)."""
    return [x[tuple(m._indices())] for x, m in zip(xs, masks)]


def scatter_sparse(xs: Sequence[Tensor], masks: Sequence[Tensor], values: Sequence[Tensor], *,
                   donate: bool = False) -> TensorList:
    """Each ``x`` with its entries at the indices of ``mask`` replaced by ``values``
    (in place when donated). Entries elsewhere are untouched."""
    if writes_in_place(donate):
        xs = copy(_donated(xs), xs) if _donated(xs) is not xs else xs
        return [x.index_put_(tuple(m._indices()), v) for x, m, v in zip(xs, masks, values)]
    return [x.index_put(tuple(m._indices()), v) for x, m, v in zip(xs, masks, values)]


def sparse_like(masks: Sequence[Tensor], values: Sequence[Tensor]) -> TensorList:
    """Sparse COO tensors with the indices and shape of each ``mask`` and the given ``values``."""
    return [torch.sparse_coo_tensor(m._indices(), v, m.shape, is_coalesced=m.is_coalesced(),
                                    check_invariants=False) for m, v in zip(masks, values)]


# Row-sparse gradients given as (row indices, value rows) (``SparseRows``): static shapes, so
# they trace under torch.compile; the results are dense, shaped like the aligned ``likes``.


def rows_to_dense(likes: Sequence[Tensor], indices: Sequence[Tensor],
                  values: Sequence[Tensor]) -> TensorList:
    """Dense tensors shaped like each ``like`` (in the dtype of ``values``), zero except at
    the rows ``indices`` along dim 0, where the ``values`` rows are summed (repeated indices
    add up, as ``coalesce`` sums them). Out of place, so it also runs under ``vmap``."""
    return [torch.zeros(like.shape, dtype=v.dtype, device=v.device).index_add(0, i, v)
            for like, i, v in zip(likes, indices, values)]


def row_masks(likes: Sequence[Tensor], indices: Sequence[Tensor]) -> TensorList:
    """Bool masks shaped ``(n, 1, ..., 1)`` (broadcastable to each ``like`` of ``n`` rows),
    true at the rows listed in ``indices`` (repeats allowed)."""
    out = []
    for like, i in zip(likes, indices):
        mask = torch.zeros(like.shape[0], dtype=torch.bool, device=like.device).index_fill(0, i, True)
        out.append(mask.view((like.shape[0],) + (1,) * (like.dim() - 1)))
    return out


# ---------------------------------------------------------------------------------
# Reductions


def norms(xs: Sequence[Tensor], dtype: torch.dtype | None = None) -> TensorList:
    """The 2-norm of each tensor, ``sqrt(sum |x|^2)``, as 0-d tensors (complex: sqrt of sum |z|^2).

    ``dtype`` sets the accumulation dtype (default: the widest of the inputs). On a
    segmented flat buffer (:mod:`functional_optim.segments`) the result is the norm of each
    param's segment, as a ``(nblocks, 1)`` tensor that broadcasts like a per-param 0-d one.

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.kernels.norms([torch.tensor([3.0, 4.0]), torch.ones(4)])
      [tensor(5.), tensor(2.)]
    """
    if not xs:
        return []
    real = [_real(x) for x in xs]
    dtype = dtype or _widest(real)
    segs = _seg.lookup(real)
    if segs is not None:
        return [_segment_norm(x, s, dtype) if s is not None else _whole_norm(x, dtype)
                for x, s in zip(real, segs)]
    if _differentiating(real):
        return [_vector_norm(x, None, False, dtype) for x in real]
    if torch.compiler.is_compiling():
        return [_whole_norm(x, dtype) for x in real]
    if use_foreach(real):
        return list(torch._foreach_norm(real, 2, dtype=dtype))
    return [torch.linalg.vector_norm(x, dtype=dtype) for x in real]


_NORM_ROW = 4096


def _whole_norm(x: Tensor, dtype: torch.dtype) -> Tensor:
    """The 2-norm of all of ``x`` (real): ``vector_norm`` eagerly or when differentiated
    (its derivative at 0 is 0, not the NaN of sqrt's). Traced, a long one is summed as
    rows of 4096 and then the row sums: inductor's CPU code runs one long float sum as a
    cascade summation at about 2/3 of memory speed (10M floats: 2.98 ms, rows 1.97 ms)."""
    flat = x.reshape(-1)
    main = flat.numel() - flat.numel() % _NORM_ROW
    if not torch.compiler.is_compiling() or main < 2 * _NORM_ROW or _differentiating([x]):
        return torch.linalg.vector_norm(x, dtype=dtype)
    total = flat[:main].view(-1, _NORM_ROW).to(dtype).square().sum(1).sum()
    if main < flat.numel():
        total = total + flat[main:].to(dtype).square().sum()
    return total.sqrt()


def _segment_norm(x: Tensor, segs: _seg.Segments, dtype: torch.dtype) -> Tensor:
    # sqrt of the per-segment sum of squares, broadcast back to the blocks
    return _seg.broadcast(_seg.sums(x, segs, dtype, square=True).sqrt(), segs)


def rms(xs: Sequence[Tensor], dtype: torch.dtype | None = None) -> TensorList:
    """The root mean square of each tensor, ``sqrt(mean |x|^2) = ||x|| * numel**-0.5``, as
    0-d tensors (NaN for an empty tensor); per segment on a segmented flat buffer.

    ``dtype`` as in :func:`norms`.

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.kernels.rms([torch.tensor([3.0, 4.0]), torch.ones(4)])
      [tensor(3.5355), tensor(1.)]
    """
    if not xs:
        return []
    segs = _seg.lookup([_real(x) for x in xs]) or [None] * len(xs)
    out = norms(xs, dtype)
    return [n * _seg.broadcast(s.rsqrt_numels, s).to(n.dtype) if s is not None
            else n * (x.numel() ** -0.5 if x.numel() else float("nan")) for n, x, s in zip(out, xs, segs)]


def max_norms(xs: Sequence[Tensor], dtype: torch.dtype | None = None) -> TensorList:
    """The infinity norm of each tensor, ``max |x|``, as 0-d tensors (0 for an empty one).

    ``dtype`` as in :func:`norms`. On a segmented flat buffer, the maximum over each
    param's segment as a ``(nblocks, 1)`` tensor (padding, kept at zero, never wins).

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.kernels.max_norms([torch.tensor([3.0, -4.0]), torch.ones(4)])
      [tensor(4.), tensor(1.)]
    """
    if not xs:
        return []
    real = [x.abs() for x in xs]  # complex: the modulus
    dtype = dtype or _widest(real)
    segs = _seg.lookup([_real(x) for x in xs]) or [None] * len(xs)
    out = []
    for x, s in zip(real, segs):
        x = x.to(dtype)
        if s is None:
            out.append(x.amax() if x.numel() else x.new_zeros(()))
            continue
        blocks = _seg.unpadded(x, s).amax(1)
        seg_max = torch.segment_reduce(blocks, "max", lengths=s.block_counts, unsafe=True, initial=0.0)
        out.append(_seg.broadcast(seg_max, s))
    return out


def _vector_norm(x: Tensor, dim: Any, keepdim: bool, dtype: torch.dtype) -> Tensor:
    # torch's vector_norm, with finite derivatives of every order where the reduced entries
    # are all zero: torch's first derivative there is 0 but its second is 0/0 = NaN. Units
    # that are all zero take the norm of ones instead (never 0) and return exactly 0.
    if not _differentiating([x]):
        return torch.linalg.vector_norm(x, dim=dim, keepdim=keepdim, dtype=dtype)
    zero = (x == 0).all() if dim is None else (x == 0).all(dim=dim, keepdim=True)
    safe = torch.linalg.vector_norm(torch.where(zero, torch.ones_like(x), x), dim=dim, keepdim=keepdim,
                                    dtype=dtype)
    zero = zero if dim is None or keepdim else zero.squeeze(dim)
    return torch.where(zero, torch.zeros_like(safe), safe)


def _dims_for(dims: Any, i: int) -> tuple[int, ...] | None:
    d = dims[i] if isinstance(dims, list) else dims
    return None if d is None else ((d,) if isinstance(d, int) else tuple(d))


def _whole(dims: tuple[int, ...] | None, x: Tensor) -> bool:
    # whether ``dims`` (from _dims_for) reduce every dimension of ``x``
    return not dims or sorted(a % x.dim() for a in dims) == list(range(x.dim()))


def _check_whole(dims: tuple[int, ...] | None, x: Tensor, what: str) -> None:
    if not _whole(dims, x):
        raise ValueError(f"{what} over dims {dims} of a flat buffer: per-unit reductions need each param "
                         "as its own tensor (declare the transform Needs.MATRIX)")


def unit_norms(xs: Sequence[Tensor], dims: Any, dtype: torch.dtype | None = None) -> TensorList:
    """The 2-norm of each tensor over ``dims`` with ``keepdim`` (complex: ``sqrt(sum |z|^2)``).

    ``dims`` is one int/tuple for every tensor, or a list with one per tensor; None or an
    empty tuple reduces over every dimension. ``dtype``: the accumulation and result dtype
    (default: the tensor's real dtype, at least float32). On a segmented flat buffer only
    whole-tensor norms exist (one per segment, ``(nblocks, 1)``); other ``dims`` raise.

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.kernels.unit_norms([torch.tensor([[3.0, 4.0], [0.0, 1.0]])], dims=1)
      [tensor([[5.],
              [1.]])]
    """
    segs = _seg.lookup(list(xs)) or [None] * len(xs)
    results = []
    for i, (x, s) in enumerate(zip(xs, segs)):
        d = _dims_for(dims, i)
        acc = dtype or torch.promote_types(x.real.dtype if x.is_complex() else x.dtype, torch.float32)
        if s is not None:
            _check_whole(d, x, "unit_norms")
            results.append(_segment_norm(x, s, acc))
            continue
        d = tuple(a % x.dim() for a in d) if d and x.dim() else tuple(range(x.dim()))
        if x.is_complex():  # the component axis joins the reduction
            n = _vector_norm(torch.view_as_real(x), d + (-1,), True, acc)
            results.append(n.squeeze(-1))
        else:
            results.append(_vector_norm(x, d or None, True, acc))
    return results


def means(xs: Sequence[Tensor], dims: Any) -> TensorList:
    """The mean of each tensor over ``dims`` with ``keepdim`` (``dims`` as in :func:`unit_norms`);
    on a segmented flat buffer, whole-tensor means only (one per segment, ``(nblocks, 1)``).

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.kernels.means([torch.tensor([[1.0, 3.0], [5.0, 7.0]])], dims=1)
      [tensor([[2.],
              [6.]])]
    """
    segs = _seg.lookup(list(xs)) or [None] * len(xs)
    results = []
    for i, (x, s) in enumerate(zip(xs, segs)):
        d = _dims_for(dims, i)
        if s is not None:
            _check_whole(d, x, "means")
            acc = _opmath(x.dtype)
            mean = _seg.sums(x, s, acc) / s.numels.to(acc)
            results.append(_seg.broadcast(mean, s).to(x.dtype))
            continue
        results.append(x.mean(dim=d or None, keepdim=True))
    return results


def global_norm(xs: Sequence[Tensor], dtype: torch.dtype | None = None, *,
                squared: bool = False) -> Tensor | None:
    """``sqrt(sum_i ||x_i||^2)`` as one 0-d tensor (None when ``xs`` is empty); with
    ``squared``, ``sum_i ||x_i||^2`` (each norm squared, then summed). A segmented flat
    buffer counts as one tensor (its padding masked out)."""
    if not xs:
        return None
    segs = _seg.lookup([_real(x) for x in xs])
    if segs is not None:  # whole-buffer norms, not per-segment ones
        xs = [_seg.unpadded(_real(x), s) for x, s in zip(xs, segs)]
        dtype = dtype or _widest(xs)
        per_tensor = torch.stack([_whole_norm(x, dtype) for x in xs])
    else:
        per_tensor = torch.stack(norms(xs, dtype))
    if squared:
        return per_tensor.square().sum()
    return _vector_norm(per_tensor, None, False, per_tensor.dtype)


def norm_dtype(xs: Sequence[Tensor]) -> torch.dtype:
    """The dtype norms of ``xs`` accumulate in: the widest real dtype among them, at least
    float32 (bfloat16 and float16 gradients are summed in float32)."""
    dtype = torch.float32
    for x in xs:
        dtype = torch.promote_types(dtype, x.real.dtype if x.is_complex() else x.dtype)
    return dtype


def _unpadded(xs: Sequence[Tensor]) -> Sequence[Tensor]:
    # segmented flat buffers with their padding zeroed (no host sync, fused when compiled)
    segs = _seg.lookup(list(xs))
    return xs if segs is None else [_seg.unpadded(x, s) for x, s in zip(xs, segs)]


def _on_one_device(flags: list[Tensor]) -> list[Tensor]:
    # per-tensor 0-d results from several devices, gathered on the CPU to be combined
    return flags if len({f.device for f in flags}) <= 1 else [f.cpu() for f in flags]


def all_finite(xs: Sequence[Tensor]) -> Tensor:
    """A 0-d bool tensor: True when no tensor holds a NaN or an Inf (True for no tensors).
    No host sync.

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.kernels.all_finite([torch.ones(2), torch.tensor([float("inf")])])
      tensor(False)
    """
    if not xs:
        return torch.tensor(True)
    xs = _unpadded(xs)
    return torch.stack(_on_one_device([torch.isfinite(x).all() for x in xs])).all()


def count_nonfinite(xs: Sequence[Tensor]) -> Tensor:
    """The number of NaN or Inf entries over all tensors, a 0-d int64 tensor (complex: per
    element). No host sync.

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.kernels.count_nonfinite([torch.tensor([1.0, float("nan"), float("inf")])])
      tensor(2)
    """
    if not xs:
        return torch.zeros((), dtype=torch.int64)
    xs = _unpadded(xs)
    return torch.stack(_on_one_device([(~torch.isfinite(x)).sum() for x in xs])).sum()


def leafwise(fn: Any, *columns: Sequence[Tensor],
             dtype: torch.dtype | Sequence[torch.dtype] | None = None) -> Any:
    """``fn`` over per-tensor 0-d scalars (norms, step counts, trust ratios), computed once
    on the stacked vectors and split back into one 0-d tensor per tensor.

    ``fn`` receives each column as a vector (cast to ``dtype`` when given: one dtype, or
    one per tensor, of which the first serves tensors on one device) and returns a
    vector or a tuple of vectors (numbers and 0-d tensors are broadcast). Eagerly this is
    a handful of ops whatever the number of tensors; under ``torch.compile`` the results
    are materialised in a tiny kernel of their own (a padded concatenation that inductor
    cannot fold away), so per-step scalars such as ``b**t`` are not recomputed for every
    element of the big update kernel. Columns on several devices are computed per tensor.

    Per-segment scalars of a segmented flat buffer (``(nblocks, 1)`` tensors from
    :func:`norms` and friends, see :mod:`functional_optim.segments`) are computed per
    buffer: ``fn`` then receives each buffer's ``(nblocks, 1)`` tensors (and the 0-d ones
    of other columns, e.g. step counts), elementwise as before, and the results keep
    that shape.

    Example:
      >>> import torch, functional_optim as fo
      >>> fo.kernels.leafwise(lambda a, b: a / b, [torch.tensor(1.0), torch.tensor(3.0)],
      ...                     [torch.tensor(2.0), torch.tensor(4.0)])
      [tensor(0.5000), tensor(0.7500)]
    """
    n = len(columns[0]) if columns else 0
    if n == 0:
        out = fn(*(torch.zeros(0) for _ in columns))
        return tuple([] for _ in out) if isinstance(out, tuple) else []
    if len({t.device for t in columns[0]}) > 1:
        parts = [leafwise(fn, *([c[i]] for c in columns), dtype=_nth(dtype, i)) for i in range(n)]
        if isinstance(parts[0], tuple):
            return tuple([p[j][0] for p in parts] for j in range(len(parts[0])))
        return [p[0] for p in parts]
    dtype = _nth(dtype, 0)
    if any(t.dim() for c in columns for t in c):
        return _per_segment(fn, columns, dtype, n)
    vectors = [torch.stack(list(c)) if dtype is None else torch.stack(list(c)).to(dtype) for c in columns]
    out = fn(*vectors)
    split = _split_scalars(*(out if isinstance(out, tuple) else (out,)), n=n)
    return tuple(split) if isinstance(out, tuple) else split[0]


def _per_segment(fn: Any, columns: Sequence[Sequence[Tensor]], dtype: torch.dtype | None, n: int) -> Any:
    # leafwise one buffer at a time, on (nblocks, 1) per-segment scalars; a 0-d entry (a
    # buffer's step count) joins as a 1-element vector, so type promotion is a vector's
    parts = []
    for i in range(n):
        args = [c[i] if c[i].dim() else c[i].reshape(1) for c in columns]
        args = [a if dtype is None else a.to(dtype) for a in args]
        out = fn(*args)
        values = _materialize(*(out if isinstance(out, tuple) else (out,)),
                              shape=torch.broadcast_shapes(*(a.shape for a in args)))
        if not any(c[i].dim() for c in columns):  # a tensor that is not a buffer: 0-d as usual
            values = [v.reshape(()) for v in values]
        parts.append((values, isinstance(out, tuple)))
    outs = [list(p) for p in zip(*(values for values, _ in parts))]
    return tuple(outs) if parts[0][1] else outs[0]


def _materialize(*values: Any, shape: torch.Size) -> list[Tensor]:
    # values broadcast to ``shape``, computed in one small kernel of their own (see leafwise)
    like = next(v for v in values if isinstance(v, Tensor))
    parts = [torch.broadcast_to(torch.as_tensor(v, dtype=like.dtype, device=like.device), shape).reshape(-1)
             for v in values]
    flat = torch.cat(parts + [parts[0].new_zeros(1)])
    size = parts[0].numel()
    return [flat[j * size:(j + 1) * size].view(shape) for j in range(len(values))]


def _split_scalars(*vectors: Any, n: int) -> list[list[Tensor]]:
    like = next(v for v in vectors if isinstance(v, Tensor))
    parts = [torch.broadcast_to(torch.as_tensor(v, dtype=like.dtype, device=like.device), (n,))
             for v in vectors]
    flat = torch.cat(parts + [parts[0].new_zeros(1)]).unbind(0)
    return [list(flat[j * n:(j + 1) * n]) for j in range(len(vectors))]


def vdot(xs: Sequence[Tensor], ys: Sequence[Tensor]) -> Tensor | None:
    """``sum_i <x_i, y_i>`` over real components (complex: Re<x, y>), one 0-d tensor over all
    tensors (a global reduction: segmented flat buffers are summed whole, padding masked)."""
    if not xs:
        return None
    segs = _seg.lookup(list(xs)) or [None] * len(xs)
    return sum(torch.sum(_seg.unpadded(_real(x) * _real(y), s)) if s is not None
               else torch.sum(_real(x) * _real(y)) for x, y, s in zip(xs, ys, segs))


def _widest(xs: Sequence[Tensor]) -> torch.dtype:
    dtype = xs[0].dtype
    for x in xs[1:]:
        dtype = torch.promote_types(dtype, x.dtype)
    return dtype if dtype.is_floating_point else torch.get_default_dtype()


# ---------------------------------------------------------------------------------
# Counter-based random bits and stochastic rounding (no generator: reproducible under
# torch.compile and vmap, and the same bits eagerly and compiled)

_MASK32 = 0xFFFFFFFF


def _mix32(x: Tensor) -> Tensor:
    # an avalanching 32-bit integer hash on int64 tensors holding values in [0, 2**32);
    # both multipliers are below 2**31, so every product fits in int64 without overflow
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & _MASK32
    return x ^ (x >> 16)


def stream_keys(seed: int, step: Tensor | int, salts: Sequence[int]) -> TensorList:
    """One 0-d int64 key per salt for the random bits of a tensor at one step: a hash of
    ``(seed, step, salt)`` (the salts tell apart the tensors rounded at the same step, e.g.
    a hash of each one's path in its tree), computed together in a few ops.

    Example:
      >>> import torch, functional_optim as fo
      >>> a = fo.kernels.stream_keys(0, torch.tensor(1), [0, 1])
      >>> b = fo.kernels.stream_keys(0, 1, [0])
      >>> bool(a[0] == b[0]), bool(a[0] == a[1]), bool(a[0] == fo.kernels.stream_keys(0, 2, [0])[0])
      (True, False, False)
    """
    step = torch.as_tensor(step).to(torch.int64) & _MASK32
    key = _mix32(torch.tensor(int(seed) & _MASK32, dtype=torch.int64, device=step.device))
    key = _mix32(key ^ step)
    salt = torch.tensor([int(x) & _MASK32 for x in salts], dtype=torch.int64, device=step.device)
    return list(_mix32(key ^ salt).unbind(0))


def path_salts(paths: Sequence[Any]) -> list[int]:
    """A stable 32-bit salt per tree path (``optree.tree_flatten_with_path``'s tuples): the
    FNV-1a hash of its text, the same in every process (unlike ``hash`` of a string) and
    plain Python that ``torch.compile`` folds into constants, so a leaf's random bits do
    not depend on which other leaves the tree holds.

    Example:
      >>> import functional_optim as fo
      >>> fo.kernels.path_salts([(0, "w"), (0, "w"), (1, "w")])[:2] == [fo.kernels.path_salts([(0, "w")])[0]] * 2
      True
    """
    out = []
    for path in paths:
        h = 0x811C9DC5
        for ch in repr(tuple(path)):
            h = ((h ^ ord(ch)) * 0x01000193) & _MASK32
        out.append(h)
    return out


def random_bits16(x: Tensor, key: Tensor) -> Tensor:
    """16 random bits per element of ``x`` (int32 in ``[0, 2**16)``, ``x``'s shape): a hash
    of the element's index and ``key`` (from :func:`stream_keys`), the same on every run."""
    index = torch.arange(x.numel(), dtype=torch.int64, device=x.device).view(x.shape)
    bits = _mix32((_mix32(index ^ key) + key) & _MASK32)
    return (bits >> 16).to(torch.int32)


def stochastic_round(xs: Sequence[Tensor], keys: Sequence[Tensor], *, straight_through: bool = True) -> TensorList:
    """Each tensor rounded to bfloat16 stochastically: to one of the two nearest bfloat16
    values, the farther one with probability proportional to the closeness of the other,
    so the result is unbiased (``E[round(x)] = x``).

    On the float32 bits: add 16 random bits (:func:`random_bits16` with ``keys``, one key
    per tensor) to the 16 bits bfloat16 drops, then drop them (a carry rounds away from
    zero). NaNs stay NaN, infinities stay infinite. The derivative is the identity
    (straight-through); with ``straight_through=False`` the result is detached: the true
    derivative of the piecewise-constant rounding, zero.

    Example:
      >>> import torch, functional_optim as fo
      >>> x = torch.full((10000,), 1.0 + 2 ** -9)  # a quarter of the way to the next bfloat16
      >>> r = fo.kernels.stochastic_round([x], fo.kernels.stream_keys(0, 1, [0]))[0]
      >>> r.dtype, sorted(set(r.tolist())), round(float((r.float() == 1.0078125).float().mean()), 2)
      (torch.bfloat16, [1.0, 1.0078125], 0.25)
    """
    out = []
    for x, key in zip(xs, keys):
        x32 = x.float()
        bits = x32.detach().view(torch.int32)
        bits = torch.where(torch.isnan(x32.detach()), torch.zeros_like(bits), bits)  # no carry out of NaN
        rounded = ((bits + random_bits16(x32, key)) & -65536).view(torch.float32)
        rounded = torch.where(torch.isnan(x32.detach()), x32.detach(), rounded)
        # straight through: x + (r - x) is exactly r (r and x are neighbours: the difference is
        # exact); infinities are taken as they are (inf - inf would be NaN)
        if not straight_through:
            out.append(rounded.to(torch.bfloat16))
            continue
        through = x32 + (rounded - x32).detach()
        out.append(torch.where(torch.isfinite(x32.detach()), through, rounded).to(torch.bfloat16))
    return out


# ---------------------------------------------------------------------------------
# Per-param scalar state


def param_scalars(params: Sequence[Tensor], value: Number = 0.0,
                  dtype: torch.dtype | Sequence[torch.dtype | None] | None = None) -> TensorList:
    """New state holding one scalar per param, each ``value``: a 0-d tensor per tensor of
    ``params`` (on its device; ``dtype``: one for all, one per tensor, or None for the
    tensor's own).

    Make per-param scalar state with this (in ``init``) rather than ``torch.zeros(())``, and a
    :attr:`~functional_optim.Needs.PER_PARAM` transform keeps one value per param on the
    adapter's flat buffers too: for a segmented flat buffer (while its segmentation is
    active, as the flat engine arranges around ``init``, see
    :mod:`functional_optim.segments`), the result is a ``(nblocks, 1)`` tensor, one value
    per block, the blocks of a param holding that param's value. It then combines with the
    per-segment results of :func:`norms` and friends, :func:`leafwise` and elementwise torch
    ops exactly as the 0-d scalars do with per-tensor ones (e.g. NovoGrad's
    ``b2 * nu + (1 - b2) * norm**2``), and the update's math stays the same. The adapter
    shows each param's value (its first block's) in ``state_dict()`` and spreads a loaded
    per-param value over the param's blocks. An empty param has no block: its value reads
    as 0, and a nonzero one (loaded, or a nonzero ``value``) makes the adapter run the group
    on per-param leaves.

    Example:
      >>> import torch, functional_optim as fo
      >>> from functional_optim import segments as seg
      >>> fo.kernels.param_scalars([torch.zeros(3), torch.zeros(2, 2)], 1.0, torch.float64)
      [tensor(1., dtype=torch.float64), tensor(1., dtype=torch.float64)]
      >>> buffer = torch.zeros(8)  # params of 3 and 4 elements, in blocks of 2 (padded)
      >>> previous = seg.activate([(buffer.view(4, 2), seg.Segments.build([3, 4], block=2))])
      >>> fo.kernels.param_scalars([buffer], 0.5)[0].flatten()  # one value per block
      tensor([0.5000, 0.5000, 0.5000, 0.5000])
      >>> seg.restore(previous)
    """
    params = list(params)
    segs = _seg.lookup_buffers(params) or [None] * len(params)
    dtypes = list(dtype) if isinstance(dtype, (list, tuple)) else [dtype] * len(params)
    out = []
    for p, s, d in zip(params, segs, dtypes):
        shape = () if s is None else (s.block_segment.shape[0], 1)
        out.append(torch.full(shape, value, dtype=d or p.dtype, device=p.device))
    return out
