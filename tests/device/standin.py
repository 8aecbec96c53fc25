"""A stand-in CUDA device for CPU-only machines: the product's CUDA branches run, and a cross-device
or cross-dtype operation fails as it would on a GPU.

``with standin_cuda():``

- ``torch.cuda.is_available()`` is True (and the few ``torch.cuda`` queries the libraries make answer);
- a tensor moved or created on ``"cuda"`` is a :class:`CudaTensor`: its data lives in a CPU tensor,
  but it reports ``device == cuda:0`` and ``is_cuda``, refuses ``.numpy()`` as CUDA tensors do, and
  every operation that mixes it with a CPU tensor (other than a 0-dim CPU scalar, indices, or a
  copy) raises PyTorch's own "Expected all tensors to be on the same device" error;
- ``torch.Generator("cuda")`` is a generator that reports ``cuda``; drawing CUDA numbers with a CPU
  generator, or CPU numbers with a CUDA generator, raises as PyTorch does;
- cross-dtype operations fail as on any device (the CPU kernels check dtypes as the CUDA ones do). CUDA
  autocast is not emulated: under ``torch.autocast("cuda")`` ops run in their inputs' dtypes, so code that
  relies on autocast to mix dtypes fails here (the trainer casts explicitly, and passes).

Why not FakeTensorMode or the ``meta`` device: both have no data, so a pipeline stops at its first
data-dependent step (a scheduler's ``nonzero``, ``.item()``, an image's ``.numpy()``), and C++
composites that build helper tensors from their inputs' device get data-less ones. Here the numbers
are real, so whole predictions and training steps run. Inside, the tensor is a wrapper whose C++
device is the CPU (a CPU-only torch has no CUDA device guard, which autograd needs); the device
checks are made in Python, on every op, in ``__torch_dispatch__``.
"""

from __future__ import annotations

import contextlib
import functools
from unittest import mock

import torch
import torch._dynamo  # noqa: F401  (imported before the patches: its rule tables index torch.cuda functions)
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

CUDA = torch.device("cuda", 0)
_TensorBase = torch._C.TensorBase
_RealGenerator = torch._C.Generator
aten = torch.ops.aten

# ops that legitimately take tensors from another device: a copy, and indices of indexing
_CROSS_DEVICE_OK = {aten.copy_.default, aten._to_copy.default, aten._local_scalar_dense.default,
                    aten.lift_fresh.default, aten.set_.source_Tensor}
_INDEX_OPS = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}


def _is_cuda(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def same_device_error(op) -> RuntimeError:
    return RuntimeError(
        "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu! "
        f"(stand-in CUDA device, in {op})"
    )


class CudaTensor(torch.Tensor):
    """A tensor on the stand-in CUDA device (its data: ``self.elem``, a CPU tensor)."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor, requires_grad: bool = False):
        assert type(elem) is torch.Tensor or isinstance(elem, torch.nn.Parameter), type(elem)
        r = torch.Tensor._make_wrapper_subclass(
            cls, elem.shape, strides=elem.stride(), storage_offset=elem.storage_offset(), dtype=elem.dtype,
            layout=elem.layout, device=torch.device("cpu"), requires_grad=requires_grad,
        )
        r.elem = elem
        return r

    def __repr__(self, *, tensor_contents=None):
        return f"CudaTensor({self.elem!r})"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        owner = getattr(func, "__self__", None)
        if owner is _TensorBase.device:
            return CUDA
        if owner is _TensorBase.is_cuda:
            return True
        if owner is _TensorBase.is_cpu or owner is _TensorBase.is_meta:
            return False
        if func in _MOVES:
            return _MOVES[func](*args, **kwargs)
        if owner is _TensorBase.data and func.__name__ == "__set__":
            return _set_data(*args)
        if func is torch.Tensor.tolist:  # allowed on CUDA (a copy to the host)
            return args[0].elem.tolist()
        if func in (torch.Tensor.numpy, torch.Tensor.__array__):
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the "
                            "tensor to host memory first.")
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        _check_devices(func, args, kwargs)
        _check_generator(func, args, kwargs, target_cuda=True)
        originals = {id(a.elem): a for a in tree_flatten((args, kwargs))[0] if isinstance(a, CudaTensor)}
        u_args, u_kwargs = tree_map(_unwrap, (args, kwargs))
        if "device" in u_kwargs:
            u_kwargs["device"] = torch.device("cpu")
        out = func(*u_args, **u_kwargs)
        return tree_map(lambda t: _rewrap(t, originals), out)


def _rewrap(t, originals: dict):
    """An op's CPU output back onto the stand-in device; an in-place op's output is its input tensor."""
    if type(t) is not torch.Tensor:
        return t
    original = originals.get(id(t))
    return original if original is not None else CudaTensor(t)


def _unwrap(x):
    return x.elem if isinstance(x, CudaTensor) else x


def _check_devices(func, args, kwargs) -> None:
    """PyTorch's rule: a CUDA op takes CUDA tensors and 0-dim CPU scalars, nothing else."""
    if func in _CROSS_DEVICE_OK:
        return
    if func in _INDEX_OPS:  # indices may live on the CPU; self and values may not
        args = tuple(a for i, a in enumerate(args) if i != 1)
        kwargs = {k: v for k, v in kwargs.items() if k != "indices"}
    for t in tree_flatten((args, kwargs))[0]:
        if isinstance(t, torch.Tensor) and not isinstance(t, CudaTensor) and t.device.type == "cpu" and t.dim() > 0:
            raise same_device_error(f"{func}, a CPU tensor of shape {tuple(t.shape)}")


class CudaGenerator(_RealGenerator):
    """``torch.Generator("cuda")`` on the stand-in device: a CPU generator that says it is a CUDA one."""

    def __new__(cls, device="cpu"):
        g = super().__new__(cls, "cpu")
        g._standin_cuda = _is_cuda(device)
        return g

    def __init__(self, device="cpu"):
        pass

    @property
    def device(self) -> torch.device:
        return CUDA if self._standin_cuda else torch.device("cpu")


def _generator_is_cuda(g) -> bool:
    return bool(getattr(g, "_standin_cuda", False)) or (isinstance(g, _RealGenerator) and g.device.type == "cuda")


def _check_generator(func, args, kwargs, *, target_cuda: bool) -> None:
    for g in tree_flatten((args, kwargs))[0]:
        if isinstance(g, _RealGenerator) and _generator_is_cuda(g) != target_cuda:
            want, found = ("cuda", "cpu") if target_cuda else ("cpu", "cuda")
            raise RuntimeError(f"Expected a '{want}' device type for generator but found '{found}' "
                               f"(stand-in CUDA device, in {func})")


def _wrap_all(out):
    return tree_map(lambda t: CudaTensor(t) if type(t) is torch.Tensor else t, out)


def _set_data(tensor, value) -> None:
    """``tensor.data = value``: C++ copies the wrapper's metadata; the data it stands for follows."""
    if not isinstance(value, CudaTensor):
        raise NotImplementedError("stand-in CUDA device: a stand-in tensor's .data cannot become a CPU tensor "
                                  "in place; replace the tensor instead")
    with torch._C.DisableTorchFunctionSubclass():
        _TensorBase.data.__set__(tensor, value)
    tensor.elem = value.elem


def _cpu_data_to_cuda(tensor, value) -> None:
    """``cpu_tensor.data = cuda_tensor``, which moves ``cpu_tensor`` to CUDA (diffusers does it): the
    Python object becomes a stand-in tensor, by swapping it with one (a Parameter stays a Parameter)."""
    replacement = CudaTensor(value.elem, requires_grad=tensor.requires_grad)
    if isinstance(tensor, torch.nn.Parameter):
        replacement._is_param = True
    with torch._C.DisableTorchFunctionSubclass():
        torch.utils.swap_tensors(tensor, replacement)


class _Lift(torch.autograd.Function):
    """A CPU tensor that needs a gradient, onto the stand-in device (the gradient flows back)."""

    @staticmethod
    def forward(ctx, t):
        return CudaTensor(t.detach())

    @staticmethod
    def backward(ctx, grad):
        return _unwrap(grad)


class _Drop(torch.autograd.Function):
    """A stand-in tensor to the CPU (the gradient flows back onto the stand-in device). Not a ``_to_copy``
    in the dispatcher: C++ moves gradients with ``_to_copy(device=<the C++ device, cpu>)``, which must
    stay on the stand-in device."""

    @staticmethod
    def forward(ctx, t, options):
        ctx.dtype = t.dtype
        out = t.elem.to(**options)
        return out.clone() if out is t.elem else out

    @staticmethod
    def backward(ctx, grad):
        return _to(grad, "cuda", dtype=ctx.dtype), None


def _to(self, *args, **kwargs):
    """``Tensor.to`` to or from the stand-in device, with its semantics (``self`` when nothing changes)."""
    if args and isinstance(args[0], torch.Tensor):  # .to(other[, non_blocking, copy]): other's device and dtype
        other, rest = args[0], args[1:]
        kwargs = {"device": "cuda" if isinstance(other, CudaTensor) else other.device, "dtype": other.dtype,
                  **dict(zip(("non_blocking", "copy"), rest)), **kwargs}
        args = ()
    copy = kwargs.pop("copy", False)
    device, dtype, non_blocking, memory_format = torch._C._nn._parse_to(*args, **kwargs)
    options = dict(dtype=dtype, non_blocking=non_blocking, copy=copy)
    if memory_format is not None:
        options["memory_format"] = memory_format
    with torch._C.DisableTorchFunctionSubclass():
        if isinstance(self, CudaTensor):
            if device is not None and device.type == "cpu":
                options.pop("copy")
                return _Drop.apply(self, options)
            if dtype is None and memory_format is None and not options["copy"]:
                return self
            return torch.Tensor.to(self, **options)  # never "cuda" into C++: this torch has none (copies: C++
            # sees a CPU tensor of the same dtype and would return it as it is)
        if device is None or device.type != "cuda":
            return torch.Tensor.to(self, *args, **kwargs, copy=copy)
        moved = torch.Tensor.to(self, **{**options, "copy": True})
        if torch.is_grad_enabled() and moved.requires_grad:
            return _Lift.apply(moved)
        return CudaTensor(moved.detach())


def _cuda(self, device=None, non_blocking=False, memory_format=torch.preserve_format):
    return _to(self, "cuda", non_blocking=non_blocking)


def _cpu(self, memory_format=torch.preserve_format):
    return _to(self, "cpu")


_MOVES = {torch.Tensor.to: _to, torch.Tensor.cuda: _cuda, torch.Tensor.cpu: _cpu}


def _device_kwarg_is_cuda(kwargs) -> bool:
    return _is_cuda(kwargs.get("device"))


class StandInCudaMode(TorchFunctionMode):
    """Routes factory calls with ``device="cuda"`` and moves of plain tensors to the stand-in device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _MOVES:
            return _MOVES[func](*args, **kwargs)
        if getattr(func, "__self__", None) is _TensorBase.data and func.__name__ == "__set__" \
                and isinstance(args[1], CudaTensor) and not isinstance(args[0], CudaTensor):
            return _cpu_data_to_cuda(*args)
        if any(issubclass(t, CudaTensor) for t in types):
            return CudaTensor.__torch_function__(func, types, args, kwargs)
        if _device_kwarg_is_cuda(kwargs):
            _check_generator(func, args, kwargs, target_cuda=True)
            out = func(*args, **{**kwargs, "device": torch.device("cpu")})
            return _wrap_all(out)
        _check_generator(func, args, kwargs, target_cuda=False)
        return func(*args, **kwargs)


class _Props:
    name = "NVIDIA stand-in (CPU)"
    major, minor = 9, 0
    total_memory = 80 * 2**30
    multi_processor_count = 132
    is_integrated = False


def _cuda_patches():
    c = torch.cuda
    zero = lambda *a, **k: 0  # noqa: E731
    none = lambda *a, **k: None  # noqa: E731
    return [
        mock.patch.object(c, "is_available", lambda: True),
        mock.patch.object(c, "device_count", lambda: 1),
        mock.patch.object(c, "current_device", lambda: 0),
        mock.patch.object(c, "set_device", none),
        mock.patch.object(c, "synchronize", none),
        mock.patch.object(c, "empty_cache", none),
        mock.patch.object(c, "is_bf16_supported", lambda *a, **k: True),
        mock.patch.object(c, "get_device_name", lambda *a, **k: _Props.name),
        mock.patch.object(c, "get_device_capability", lambda *a, **k: (_Props.major, _Props.minor)),
        mock.patch.object(c, "get_device_properties", lambda *a, **k: _Props()),
        mock.patch.object(c, "mem_get_info", lambda *a, **k: (_Props.total_memory, _Props.total_memory)),
        mock.patch.object(c, "memory_allocated", zero),
        mock.patch.object(c, "max_memory_allocated", zero),
        mock.patch.object(c, "reset_peak_memory_stats", none),
        mock.patch.object(c, "manual_seed", none),
        mock.patch.object(c, "manual_seed_all", none),
        mock.patch.object(torch, "Generator", CudaGenerator),
        mock.patch.object(torch.Tensor, "pin_memory", lambda self, *a, **k: self),
    ]


@contextlib.contextmanager
def standin_cuda():
    """Run the block as if one CUDA GPU were present (see the module docstring)."""
    with contextlib.ExitStack() as stack:
        for patch in _cuda_patches():
            stack.enter_context(patch)
        # nn.Module.to("cuda") then replaces each parameter (it cannot point a CPU one at CUDA data)
        overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
        torch.__future__.set_overwrite_module_params_on_conversion(True)
        stack.callback(torch.__future__.set_overwrite_module_params_on_conversion, overwrite)
        stack.enter_context(StandInCudaMode())
        yield


@contextlib.contextmanager
def cuda_device():
    """The real CUDA device when there is one (the GPU check), else the stand-in."""
    if torch.cuda.is_available():
        yield
    else:
        with standin_cuda():
            yield


def active() -> bool:
    """Whether the stand-in device is in use right now (not a real GPU)."""
    return torch.Generator is CudaGenerator


def on_cuda(t) -> bool:
    """Whether ``t`` is on the (real or stand-in) CUDA device."""
    return isinstance(t, torch.Tensor) and t.device.type == "cuda"


def cpu_numbers(t: torch.Tensor) -> torch.Tensor:
    """A plain CPU copy of a CUDA tensor (real or stand-in), for comparisons."""
    with torch._C.DisableTorchFunctionSubclass():
        return t.elem.clone() if isinstance(t, CudaTensor) else t.detach().cpu()


def in_standin(fn):
    """Decorator form of :func:`standin_cuda`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with standin_cuda():
            return fn(*args, **kwargs)

    return wrapper
