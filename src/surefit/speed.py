"""Speed and memory options of what runs: ``torch.compile`` with an eager fallback,
channels_last convolutions, and activation checkpointing of named blocks.

* ``compile_problem``: whether torch.compile works on the run's device, probed once per device
  and process; a run whose compiler is missing goes on eagerly with one message that says why.
* ``channels_last``: the memory format of the model's convolution weights (NHWC), decided by
  ``train.channels_last`` and applied before the optimizer sees the parameters.
* ``activation_checkpointing``: forward hooks that run named blocks under torch's non-reentrant
  activation checkpoint (activations recomputed in backward), removed when the run ends.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, SurefitWarning

COMPILE_FIX = (
    "install a C++ compiler (gcc or clang; on CUDA also Triton) for torch.compile's inductor, "
    "or set train.compile = false"
)
CONV_2D = (nn.Conv2d, nn.ConvTranspose2d)
CONV_3D = (nn.Conv3d, nn.ConvTranspose3d)


@dataclass(frozen=True)
class Note:
    """A set-up decision to record once the run has started: an event, and maybe a line."""

    event: str  # the name of the events.jsonl record
    fields: dict[str, Any] = field(default_factory=dict)  # its fields
    line: str = ""  # what the console says; "" = nothing
    warning: str = ""  # a warning of the run instead (RunLog.warn), with fields["fix"]


class CompileFallbackWarning(SurefitWarning):
    """torch.compile is not available on the run's device: the model runs eagerly."""


def prepare(model: nn.Module, cfg: Any, device: torch.device, strategy: str) -> list[Note]:
    """Apply ``train.channels_last`` to ``model`` (before its optimizer is built) and probe
    ``train.compile``; the decisions come back as notes for the run's events and console."""
    notes = []
    on, why = channels_last_choice(model, cfg.train.channels_last, device, strategy)
    if on and not to_channels_last(model):
        on, why = False, "train.channels_last = on, but the model has no Conv2d/Conv3d layer"
    if cfg.train.channels_last == "on" or has_convolutions(model):
        notes.append(Note("channels_last", {"on": on, "why": why}))
    if cfg.train.compile:
        problem = compile_problem(device)
        if problem is not None:
            what = f"torch.compile is not available, running eagerly: {problem}"
            notes.append(
                Note("compile_fallback", {"why": problem, "fix": COMPILE_FIX}, warning=what)
            )
    if cfg.train.activation_checkpointing:
        notes.append(Note("activation_checkpointing", {"modules": checkpointed(model)}))
    return notes


def record(notes: list[Note], log: Any) -> None:
    """Write ``notes`` to a run's log (a ``log.RunLog``): events, and console lines."""
    for note in notes:
        if note.warning:
            fix = note.fields.get("fix", "")
            log.warn(note.event, note.warning, fix, category=CompileFallbackWarning)
        elif note.line:
            log.console.line(note.line)
        log.event(note.event, **note.fields)


# -- torch.compile -------------------------------------------------------------------------------
def _probe(x: torch.Tensor) -> torch.Tensor:
    return x * 2 + 1


@functools.cache
def compile_problem(device: torch.device) -> str | None:
    """Why torch.compile cannot run on ``device`` here (one line), or None when it can.

    torch.compile is lazy: a missing C++ compiler (inductor on CPU), a missing Triton (CUDA) or
    an unsupported Python or platform shows only at the first forward call, deep inside the
    first training step, with a long stack trace. So a one-line function is compiled and run on
    the device first, with the same default backend; it touches no model, data or RNG, and costs
    the backend's start-up, which the model's own compile would pay anyway. The answer is kept
    for the process. This is preferred to ``torch._dynamo.config.suppress_errors``, a global
    switch that logs a stack trace per failing frame and cannot say once, clearly, what happened.
    A model that dynamo cannot trace needs no fallback: dynamo runs the untraceable parts
    eagerly (graph breaks) on its own.
    """
    try:
        out = torch.compile(_probe)(torch.ones(4, device=device))
        if not torch.equal(out.cpu(), torch.full((4,), 3.0)):  # one read, at set-up
            return "the compiled probe computed a wrong result"
    except Exception as exc:  # any failure means: run eagerly and say why
        return _why(exc)
    return None


def _why(exc: BaseException) -> str:
    """The innermost cause of ``exc`` as ``Type: first line``, at most 300 characters."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "inner_exception", None) or exc.__cause__
        if inner is None:
            break
        exc = inner
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text[:300]


def compiled(net: nn.Module, device: torch.device) -> nn.Module:
    """``torch.compile(net)``, or ``net`` itself with a ``CompileFallbackWarning`` where
    ``compile_problem`` finds torch.compile unavailable on ``device``."""
    problem = compile_problem(device)
    if problem is None:
        return torch.compile(net)
    warnings.warn(
        f"torch.compile is not available, running eagerly: {problem}; fix: {COMPILE_FIX}",
        CompileFallbackWarning,
        stacklevel=2,
    )
    return net


@contextlib.contextmanager
def reported_fallback() -> Iterator[None]:
    """Silence ``CompileFallbackWarning`` where the caller reports the fallback itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompileFallbackWarning)
        yield


# -- channels_last -------------------------------------------------------------------------------
def has_convolutions(model: nn.Module) -> bool:
    return any(isinstance(m, CONV_2D + CONV_3D) for m in model.modules())


def channels_last_choice(
    model: nn.Module, setting: str, device: torch.device, strategy: str
) -> tuple[bool, str]:
    """(on, why) for ``train.channels_last`` = auto, on or off."""
    if setting == "off":
        return False, "train.channels_last = off"
    if strategy == "fsdp":
        if setting == "on":
            raise ConfigError(
                "channels_last is not supported under fsdp (FSDP shards contiguous parameters "
                "only)",
                where="train.channels_last",
                fix="set train.channels_last = 'auto' or 'off'",
            )
        return False, "auto: off under fsdp (FSDP shards contiguous parameters only)"
    if setting == "on":
        return True, "train.channels_last = on"
    if not has_convolutions(model):
        return False, "auto: the model has no Conv2d/Conv3d layer"
    if device.type != "cuda":
        return False, f"auto: off on {device.type} (it pays on CUDA, where tensor cores read NHWC)"
    return True, "auto: Conv2d/Conv3d layers on CUDA (tensor cores read NHWC)"


def to_channels_last(model: nn.Module) -> int:
    """Give every 2-D and 3-D convolution's weight the channels-last memory format, in place
    (the parameters stay the same objects); the number of convolutions converted.

    Inputs need no conversion: a convolution whose weight is channels-last computes in that
    format and converts a contiguous input itself (one copy per batch, what converting the batch
    would cost), and its output, channels-last, carries the format to the layers after it.
    """
    count = 0
    for m in model.modules():
        if isinstance(m, CONV_2D):
            m.to(memory_format=torch.channels_last)
        elif isinstance(m, CONV_3D):
            m.to(memory_format=torch.channels_last_3d)
        else:
            continue
        count += 1
    return count


# -- activation checkpointing --------------------------------------------------------------------
@contextlib.contextmanager
def activation_checkpointing(model: nn.Module, names: list[str]) -> Iterator[list[str]]:
    """Run the forward of every module of ``model`` whose class name is in ``names`` under
    torch's non-reentrant activation checkpoint for the span of the block; yields their names.

    The forward's activations are not kept for backward; backward runs the forward again to
    recompute them, with the RNG state of the first run (dropout draws the same masks), so the
    gradients are the ones without checkpointing. A module inside a named module is covered by
    it. The mechanism is the one of ``torch.distributed._composable.checkpoint``: a forward
    pre-hook and a forward hook around torch's own non-reentrant checkpoint, so parameter names
    and ``state_dict`` keys do not change (``checkpoint_wrapper`` inserts a module level and
    renames them) and FSDP2's hooks compose with it (``fully_shard`` after this, as torchtitan
    does). Unlike that API, whose hooks cannot be removed, these hooks are removed when the
    block ends, so the user's model comes back as it was given. Modules already checkpointed
    (copies of a checkpointed model) are left as they are.
    """
    handles = []
    try:
        for module in _blocks(model, names):
            if not _is_checkpointed(module):
                hook = _Recompute()
                handles.append(module.register_forward_pre_hook(hook.before, with_kwargs=True))
                handles.append(
                    module.register_forward_hook(hook.after, prepend=True, always_call=True)
                )
        yield checkpointed(model)
    finally:
        for h in handles:
            h.remove()


def checkpointed(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` that run under activation checkpointing now."""
    return [name or type(m).__name__ for name, m in model.named_modules() if _is_checkpointed(m)]


def _is_checkpointed(module: nn.Module) -> bool:
    hooks = module._forward_pre_hooks.values()
    return any(isinstance(getattr(h, "__self__", None), _Recompute) for h in hooks)


def _blocks(model: nn.Module, names: list[str]) -> list[nn.Module]:
    """The outermost modules of ``model`` (not the model itself) whose class is named."""
    if not names:
        return []
    wanted = set(names)
    known = sorted({type(m).__name__ for m in model.modules()})
    missing = sorted(wanted - set(known))
    if missing:
        raise ConfigError(
            f"no module of class {missing} in the model",
            where="train.activation_checkpointing",
            fix=f"name classes of the model's blocks; the model has: {', '.join(known)}",
        )
    containers = sorted(
        {type(m).__name__ for m in model.modules() if isinstance(m, (nn.ModuleList, nn.ModuleDict))}
        & wanted
    )
    if containers:  # never called: their hooks would never fire, and nothing would be recomputed
        raise ConfigError(
            f"{containers} holds modules but is never called, so it cannot be checkpointed",
            where="train.activation_checkpointing",
            fix="name the class of the blocks it holds (e.g. ['Block']), not the container",
        )
    blocks, taken = [], set()
    for m in model.modules():
        if m is not model and type(m).__name__ in wanted and id(m) not in taken:
            blocks.append(m)
            taken.update(id(x) for x in m.modules())
    if not blocks:
        raise ConfigError(
            f"{sorted(wanted)} names only the model itself: checkpointing all of it saves nothing",
            where="train.activation_checkpointing",
            fix="name the class of its blocks (e.g. ['Block'], the layers in a ModuleList)",
        )
    return blocks


class _Recompute:
    """The hook pair of one checkpointed module: the pre-hook opens torch's non-reentrant
    checkpoint around the call, the forward hook (always called, also when forward raises)
    closes it. While backward recomputes the forward, the pair stands by."""

    def __init__(self) -> None:
        self.recomputing = False  # backward is running the forward again: do not nest
        self.open: list[Any] = []  # checkpoints of the calls in flight, innermost last

    def before(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.recomputing:
            return
        gen = _checkpoint(module, self._contexts, args, kwargs)
        next(gen)  # saved-tensor hooks on: the forward keeps its inputs only
        self.open.append(gen)

    def after(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self.recomputing or not self.open:
            return
        next(self.open.pop(), None)  # saved-tensor hooks off; the generator ends

    def _contexts(self) -> tuple[Any, Any]:
        return contextlib.nullcontext(), self._recompute()

    @contextlib.contextmanager
    def _recompute(self) -> Iterator[None]:
        self.recomputing = True
        try:
            yield
        finally:
            self.recomputing = False


def _checkpoint(module: nn.Module, contexts: Any, args: tuple, kwargs: dict) -> Iterator[None]:
    """torch's non-reentrant checkpoint generator for one call of ``module`` (what both
    ``torch.utils.checkpoint.checkpoint`` and the composable API drive), RNG state preserved.

    Its options come before ``*args`` and changed between torch releases (``early_stop`` was
    added), so they are given by name, from its signature, each not named here at its default.
    """
    from torch.utils.checkpoint import _checkpoint_without_reentrant_generator as generator

    values = {"preserve_rng_state": True, "context_fn": contexts}
    head = [module] + [values.get(p.name, p.default) for p in _option_params(generator)]
    return generator(*head, *args, **kwargs)


@functools.cache
def _option_params(generator: Any) -> tuple[inspect.Parameter, ...]:
    """The generator's parameters after the function and before ``*args``."""
    params = []
    for p in list(inspect.signature(generator).parameters.values())[1:]:
        if p.kind is p.VAR_POSITIONAL:
            break
        params.append(p)
    return tuple(params)
