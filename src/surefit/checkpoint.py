"""Atomic, verified, rotating checkpoints of the full run state.

A checkpoint is one dictionary of named state dicts. It is written to a temporary file in the same
folder, flushed and fsynced, renamed over its target, and the folder fsynced; ``MANIFEST.json``
(written the same way) lists each file with its step and sha256. Loading verifies the hash and
falls back to the previous good checkpoint, and never unpickles code (``weights_only=True``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .errors import CheckpointError, ConfigError, refuse_to_replace

MANIFEST = "MANIFEST.json"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# the mode an ordinary new file gets (0666 less the umask), read once in the importing thread:
# mkstemp makes its files 0600, which a shared group could not read
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


def atomic_write(path: Path, write: Any) -> None:
    """Write through ``write(fileobj)`` to a temporary sibling, fsync, and rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def sha256(path: Path) -> str:
    """Of a file; of a folder, over its files' names and contents in name order."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            h.update(file.relative_to(path).as_posix().encode())
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _file_name(kind: str, step: int) -> str:
    return f"last-{step:09d}.pt" if kind == "last" else "best.pt"


class CheckpointStore:
    """``last-STEP.pt`` (rolling, ``keep_last`` kept) and ``best.pt`` under one folder."""

    in_place = False  # load_latest returns the state; the live objects stay as they are

    def __init__(self, folder: Path, keep_last: int = 2) -> None:
        self.folder = folder
        self.keep_last = keep_last
        self._lock = threading.Lock()

    # -- manifest --------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        path = self.folder / MANIFEST
        if not path.exists():
            return {"checkpoints": self._found()}
        try:
            manifest = json.loads(path.read_text())
            entries = manifest["checkpoints"]
            if not all({"file", "kind", "step", "sha256"} <= set(e) for e in entries):
                raise ValueError("an entry lacks one of file, kind, step, sha256")
            for e in entries:
                kinds = (isinstance(e[k], str) for k in ("file", "kind", "sha256"))
                if not all(kinds) or type(e["step"]) is not int or "/" in e["file"]:
                    raise ValueError(f"an entry has a value of the wrong kind: {e}"[:200])
            return manifest
        except (OSError, ValueError, TypeError, KeyError) as exc:  # JSONDecodeError: ValueError
            raise CheckpointError(
                f"checkpoint manifest is unreadable: {type(exc).__name__}: {exc}",
                where=str(path),
                fix="restore it from a backup, or delete it to rebuild it from the checkpoint "
                "files present",
            ) from None

    def _found(self) -> list[dict[str, Any]]:
        """The manifest of a folder that has none (deleted after damage, or lost): the
        checkpoint files present, hashed as they are now; loading still refuses a file torch
        cannot read, and falls back to the next."""
        entries = []
        for path in sorted(self.folder.glob("*")) if self.folder.is_dir() else []:
            last = re.fullmatch(r"last-(\d{9})(\.pt)?", path.name)
            if last or path.name in ("best.pt", "best"):
                kind, step = ("last", int(last.group(1))) if last else ("best", -1)
                entries.append({"file": path.name, "kind": kind, "step": step,
                                "sha256": sha256(path)})  # fmt: skip
        return entries

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_text(self.folder / MANIFEST, json.dumps(manifest, indent=1))

    # -- save --------------------------------------------------------------------------------
    def save(self, state: dict[str, Any], *, step: int, kind: str | tuple = "last") -> Path:
        """Write a checkpoint atomically and record it; ``kind`` is "last", "best", or both (one
        serialization, the same bytes in each file). Returns the first file written."""
        kinds = (kind,) if isinstance(kind, str) else tuple(kind)
        try:
            if not distributed.is_rank_zero():  # one copy of the replicated state (DDP)
                return self.folder / _file_name(kinds[0], step)
            buf = io.BytesIO()
            torch.save(state, buf)
            data = buf.getbuffer()
            digest = hashlib.sha256(data).hexdigest()
            written = []
            for k in kinds:
                name = _file_name(k, step)
                atomic_write(self.folder / name, lambda f: f.write(data))
                written.append({"file": name, "kind": k, "step": step, "sha256": digest})
            with self._lock:  # the manifest is read, changed and written by one writer at a time
                self._record(written)
            return self.folder / written[0]["file"]
        finally:
            distributed.barrier()  # every rank sees the file once save returns

    def _record(self, written: list[dict[str, Any]]) -> None:
        manifest = self.manifest()
        names = {e["file"] for e in written}
        entries = [e for e in manifest["checkpoints"] if e["file"] not in names] + written
        lasts = sorted((e for e in entries if e["kind"] == "last"), key=lambda e: e["step"])
        dropped = lasts[: max(0, len(lasts) - self.keep_last)]
        entries = [e for e in entries if e not in dropped]
        self._write_manifest({"checkpoints": entries})
        for e in dropped:  # removed only after the manifest no longer names them
            self._remove(self.folder / e["file"])

    def _remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def sweep(self) -> list[str]:
        """Remove what a killed run left behind in the folder: the temporaries of writes it never
        finished (``.NAME.*.tmp``, a sharded save's ``.NAME.tmp``/``.NAME.old``) and rolling
        checkpoints the manifest does not name (written, but killed before they were recorded,
        or dropped from the manifest but killed before they were deleted), which no resume would
        ever read. Only with the run directory's lock held, before this run writes; a folder
        without a readable manifest is left as it is. Returns the names removed."""
        if not distributed.is_rank_zero() or not (self.folder / MANIFEST).is_file():
            return []
        try:
            named = {e["file"] for e in self.manifest()["checkpoints"]}
        except CheckpointError:
            return []  # the resume reports it
        for name in named:  # a sharded save killed between its two renames: the old copy back
            old = self.folder / f".{name}.old"
            if old.exists() and not (self.folder / name).exists():
                os.replace(old, self.folder / name)
        removed = []
        for path in sorted(self.folder.iterdir()):
            name = path.name
            leftover = re.fullmatch(r"\.(last-\d{9}(\.pt)?|best(\.pt)?|MANIFEST\.json)\..+", name)
            unrecorded = re.fullmatch(r"last-\d{9}(\.pt)?", name) and name not in named
            if not (leftover or unrecorded):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(name)
        return removed

    # -- load --------------------------------------------------------------------------------
    def latest(self) -> list[dict[str, Any]]:
        """Rolling checkpoints, newest first."""
        entries = [e for e in self.manifest()["checkpoints"] if e["kind"] == "last"]
        return sorted(entries, key=lambda e: e["step"], reverse=True)

    def has_checkpoint(self) -> bool:
        return bool(self.latest())

    def load_latest(
        self, on_skip: Any = None, accept: Callable[[dict[str, Any]], bool] | None = None
    ) -> tuple[dict[str, Any], Path]:
        """The newest checkpoint whose hash verifies (and whose state ``accept`` takes); a bad
        one is reported and skipped."""
        problems = []
        for entry in self.latest():
            path = self.folder / entry["file"]
            try:
                if sha256(path) != entry["sha256"]:
                    raise CheckpointError("sha256 does not match the manifest", where=str(path))
                state = load_file(path)
                if accept is not None and not accept(state):
                    continue
                return state, path
            except (OSError, CheckpointError) as exc:
                problems.append(f"{path.name}: {getattr(exc, 'what', exc)}")
                if on_skip is not None:
                    on_skip(path, problems[-1])
        raise CheckpointError(
            "no readable checkpoint in the run directory"
            + (f" ({'; '.join(problems)})" if problems else ""),
            where=str(self.folder),
            fix="start a fresh run (resume='never' with a new run_dir)",
        )

    def load_best(self, on_skip: Any = None) -> dict[str, Any] | None:
        """best.pt's state when its hash verifies against the manifest; None when there is no
        best.pt, or (reported to ``on_skip``) when it is damaged or not in the manifest."""
        path = self.folder / "best.pt"
        if not path.is_file():
            return None
        entry = next((e for e in self.manifest()["checkpoints"] if e["kind"] == "best"), None)
        try:
            if entry is None or sha256(path) != entry["sha256"]:
                what = "sha256 does not match the manifest" if entry else "not in the manifest"
                raise CheckpointError(what, where=str(path))
            return load_file(path)
        except (OSError, CheckpointError) as exc:
            if on_skip is not None:
                on_skip(path, f"{path.name}: {getattr(exc, 'what', exc)}")
            return None


class ShardedStore(CheckpointStore):
    """FSDP checkpoints: folders of ``torch.distributed.checkpoint`` shards, one per save.

    Each rank writes its shards of model and optimizer (keyed by parameter name, so a different
    world size, one process included, reshards on load); rank zero adds ``state.pt`` with the rest
    of the run state (counters, RNG, schedule...) and records the folder in the manifest with a
    sha256 over its files. A save is written to a temporary folder and renamed into place.
    """

    in_place = True  # load_latest loads the shards into the live model and optimizer

    def __init__(self, folder: Path, keep_last: int, model: Any, optimizer: Any) -> None:
        super().__init__(folder, keep_last)
        self.model, self.optimizer = model, optimizer

    def save(self, state: dict[str, Any], *, step: int, kind: str | tuple = "last") -> Path:
        kinds = (kind,) if isinstance(kind, str) else tuple(kind)
        return [self._save_one(state, step, k) for k in kinds][0]

    def _save_one(self, state: dict[str, Any], step: int, kind: str) -> Path:
        name = f"last-{step:09d}" if kind == "last" else "best"
        path, tmp = self.folder / name, self.folder / f".{name}.tmp"
        if distributed.is_rank_zero():
            shutil.rmtree(tmp, ignore_errors=True)
        distributed.barrier()
        distributed.save_model_optimizer_state(self.model, self.optimizer, tmp)
        rest = {k: v for k, v in state.items() if k not in ("model", "optimizer")}
        try:
            if distributed.is_rank_zero():
                atomic_write(tmp / "state.pt", lambda f: torch.save(rest, f))
                old = self.folder / f".{name}.old"
                shutil.rmtree(old, ignore_errors=True)
                if path.exists():
                    os.replace(path, old)
                os.replace(tmp, path)
                _fsync_dir(self.folder)
                shutil.rmtree(old, ignore_errors=True)
                entry = {"file": name, "kind": kind, "step": step, "sha256": sha256(path)}
                with self._lock:
                    self._record([entry])
            return path
        finally:
            distributed.barrier()

    def _remove(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def load_latest(
        self, on_skip: Any = None, accept: Callable[[dict[str, Any]], bool] | None = None
    ) -> tuple[dict[str, Any], Path]:
        """Load the newest verified folder's shards into model and optimizer; return the rest
        of its state, with the model's (now loaded) state for the resume checks."""
        for entry in self.latest():
            path = self.folder / entry["file"]
            try:
                if sha256(path) != entry["sha256"]:
                    raise CheckpointError("sha256 does not match the manifest", where=str(path))
                state = load_file(path / "state.pt")
            except (OSError, CheckpointError) as exc:
                if on_skip is not None:
                    on_skip(path, f"{path.name}: {getattr(exc, 'what', exc)}")
                continue
            if accept is not None and not accept(state):
                continue
            try:
                distributed.load_model_optimizer_state(self.model, self.optimizer, path)
            except Exception as exc:  # DCP raises RuntimeError/ValueError/CheckpointException
                raise CheckpointError(
                    f"cannot load the sharded model and optimizer: {str(exc).splitlines()[0]}",
                    where=str(path),
                    fix="resume with the model and optimizer the run was started with",
                ) from None
            state["model"] = self.model.state_dict()
            return state, path
        raise CheckpointError(
            "no readable checkpoint in the run directory",
            where=str(self.folder),
            fix="start a fresh run (resume='never' with a new run_dir)",
        )


def for_strategy(store: CheckpointStore | None, strategy: str, model: Any, optimizer: Any) -> Any:
    """The store a run writes through: sharded folders under fsdp, single files otherwise."""
    if store is None or strategy != "fsdp":
        return store
    return ShardedStore(store.folder, store.keep_last, model, optimizer)


def load_file(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint without unpickling code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(
            f"no checkpoint at {path}", where=str(path), fix="check the path"
        ) from None
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
        lines = str(exc).splitlines() or [type(exc).__name__]
        # torch's first line is generic; the line naming the refused global says what is wrong
        text = next((ln.strip() for ln in lines if "Unsupported global" in ln), lines[0])
        text = text.split(" was not an allowed global")[0]
        raise CheckpointError(
            f"checkpoint cannot be loaded safely: {text}",
            where=str(path),
            fix="it is truncated or carries pickled code; load only checkpoints you trust, "
            "and only with weights_only=True",
        ) from None


def run_state(run_dir: str | Path, which: str = "best", on_skip: Any = None) -> dict[str, Any]:
    """A run directory's verified checkpoint state: ``best`` (else the newest good ``last``,
    when best.pt is missing or damaged) or ``last``."""
    if not Path(run_dir).is_dir():
        raise CheckpointError(
            f"no run directory at {run_dir}",
            where=str(run_dir),
            fix="give the folder a run wrote (it holds config.toml and checkpoints/)",
        )
    store = CheckpointStore(Path(run_dir) / "checkpoints")
    if any((store.folder / e["file"]).is_dir() for e in store.latest()):
        raise CheckpointError(
            f"{run_dir} is an FSDP run: its checkpoints are folders of sharded tensors",
            where=str(store.folder),
            fix="convert one to a single file first: torch.distributed.checkpoint.format_utils."
            "dcp_to_torch_save(FOLDER, 'state.pt') (docs/distributed.md)",
        )
    state = store.load_best(on_skip) if which == "best" else None
    return state if state is not None else store.load_latest(on_skip)[0]


def export_weights(
    run_dir: str | Path, to: str | Path, which: str = "best", on_skip: Any = None
) -> Path:
    """Write a run's model weights (``best``, else the newest ``last``) as a safetensors file;
    it replaces an earlier export, never another kind of file."""
    out = Path(to)
    refuse_to_replace(out, ".safetensors", "--to")
    state = run_state(run_dir, which, on_skip)
    tensors = {k: v.detach().contiguous() for k, v in state["model"].items()}
    try:
        atomic_write(out, lambda f: f.write(_safetensors_bytes(tensors)))
    except OSError as exc:
        raise ConfigError(
            f"cannot write {out}: {exc.strerror or exc}",
            where="--to",
            fix="give a file path in an existing folder you can write to",
        ) from None
    return out


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    # tied weights share storage; safetensors stores each name once, so give each its own copy
    seen: set[int] = set()
    own = {}
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr()
        own[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return save(own)


def load_weights(model: torch.nn.Module, path: str | Path, strict: bool = True) -> torch.nn.Module:
    """Load a safetensors weight file (from ``surefit export``) into ``model``."""
    from safetensors.torch import load_file as st_load

    try:
        tensors = st_load(str(path))
    except FileNotFoundError:
        raise CheckpointError(
            f"no weights file at {path}", where=str(path), fix="check the path"
        ) from None
    except Exception as exc:
        raise CheckpointError(
            f"not a readable safetensors file: {exc}",
            where=str(path),
            fix="export it again with `surefit export RUN_DIR --to FILE`",
        ) from None
    try:
        model.load_state_dict(tensors, strict=strict)
    except RuntimeError as exc:
        raise CheckpointError(
            "the weights do not fit this model: " + str(exc).splitlines()[0],
            where=str(path),
            fix="build the model with the same architecture and arguments as the run",
        ) from None
    return model


class Saves:
    """A run's checkpoint writes, and the pace of its epoch-end saves.

    Writes go through ``store`` in the loop's thread or, with ``async_save``, from one background
    thread in order (the state copied to the CPU first; at most two copies in memory); each
    outcome goes to ``record(step, kinds, path, error)``. An OSError leaves the earlier files as
    they were and is recorded, not raised: the next save tries again.

    The pace: an epoch-end save waits while it would cost more than ``max_overhead`` of the
    training time since the previous rolling save, by what that save cost the loop. A run of
    short epochs (a tiny model: tens of ms an epoch against several ms a save, much of it fsync)
    then saves every few epochs, and one of long epochs at each. Written here: no library paces
    checkpoints by their cost.
    """

    def __init__(
        self,
        store: CheckpointStore,
        async_save: bool,
        max_overhead: float,
        record: Callable[[int, tuple[str, ...], Path | None, Exception | None], None],
    ) -> None:
        self.store, self.async_save, self.max_overhead = store, async_save, max_overhead
        self.record = record
        self.cost: float | None = None  # seconds the loop spent on the last rolling save
        self.done_at = 0.0  # when that save returned (time.perf_counter)
        self._executor: Any = None
        self._pending: list[tuple[int, tuple[str, ...], Any]] = []
        self._noted = False  # the checkpoints_paced event of this session was written

    def write(
        self, state: Callable[[], dict[str, Any]], step: int, kinds: tuple[str, ...]
    ) -> Path | None:
        """Write ``state()`` as ``kinds`` at ``step``; the file written, or None (in the
        background, or failed)."""
        t0 = time.perf_counter()
        if self.async_save:
            self.drain(keep=1)  # before the copy: at most two copies in memory
            snapshot = cpu_copy(state())
            future = self._writer().submit(self.store.save, snapshot, step=step, kind=kinds)
            self._pending.append((step, kinds, future))
            self._paced(t0, kinds)
            return None
        try:
            path = self.store.save(state(), step=step, kind=kinds)
        except OSError as exc:  # not paced: the next epoch end tries again
            self.record(step, kinds, None, exc)
            return None
        self._paced(t0, kinds)
        self.record(step, kinds, path, None)
        return path

    def _paced(self, t0: float, kinds: tuple[str, ...]) -> None:
        if "last" in kinds:
            self.done_at = time.perf_counter()
            self.cost = self.done_at - t0

    @classmethod
    def of(cls, store: CheckpointStore | None, cfg: Any, record: Any) -> Saves | None:
        """The saves of a run of config ``cfg`` (None without a store). A run whose rollbacks go
        to checkpoints saves at every epoch end: where it rolls back to must not depend on how
        fast its disk is."""
        if store is None:
            return None
        h, ck = cfg.health, cfg.checkpoint
        pace = 0.0 if h.rollback_after and h.rollback_from == "checkpoint" else ck.max_overhead
        return cls(store, ck.async_save, pace, record)

    def put_off(self) -> bool:
        """Whether an epoch-end save waits: the previous rolling save of this session is younger
        than its own cost divided by ``max_overhead`` (never before one has been measured)."""
        if self.max_overhead <= 0 or self.cost is None:
            return False
        return time.perf_counter() - self.done_at < self.cost / self.max_overhead

    def note_put_off(self, log: Any, step: int) -> None:
        """The first save put off in a session is a ``checkpoints_paced`` event: what a save
        cost, and how often the pace lets one through."""
        if self._noted or log is None:
            return
        self._noted = True
        cost, share = self.cost or 0.0, self.max_overhead
        log.event("checkpoints_paced", step=step, save_s=round(cost, 4),
                  every_s=round(cost / share, 3), max_overhead=share)  # fmt: skip

    def drain(self, keep: int = 0) -> None:
        """Wait for background writes until at most ``keep`` are in flight; record them."""
        while len(self._pending) > keep:
            step, kinds, future = self._pending.pop(0)
            try:
                self.record(step, kinds, future.result(), None)
            except OSError as exc:
                self.record(step, kinds, None, exc)

    def close(self) -> None:
        """Drain, and stop the background thread."""
        try:
            self.drain()
        finally:
            if self._executor is not None:
                self._executor.shutdown()
                self._executor = None

    def _writer(self) -> Any:
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(1, thread_name_prefix="surefit-checkpoint")
        return self._executor


def cpu_copy(obj: Any) -> Any:
    """A deep copy of a state dict with every tensor copied to the CPU (for background writes)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


@contextlib.contextmanager
def preemption_signals(on_signal: Callable[[str], None]) -> Iterator[None]:
    """SIGTERM, SIGINT and SIGUSR1 call ``on_signal(name)``: the loop then stops at the next
    optimizer-step boundary with a checkpoint (``on_signal`` raises KeyboardInterrupt for a
    second SIGINT, to stop at once). Handlers can only be set from the main thread; the previous
    ones are restored on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = [n for n in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, n)]
    previous = {n: signal.getsignal(getattr(signal, n)) for n in names}

    def handler(signum: int, frame: Any) -> None:
        on_signal(signal.Signals(signum).name)

    for n in names:
        signal.signal(getattr(signal, n), handler)
    try:
        yield
    finally:
        for n in names:
            signal.signal(getattr(signal, n), previous[n])
