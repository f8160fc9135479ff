"""User-facing errors: each says what is wrong, where, and how to fix it."""

from __future__ import annotations

from pathlib import Path


class SurefitError(Exception):
    """Base of surefit's user errors; the CLI prints it without a traceback and exits 2."""

    exit_code = 2

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self._message())

    def _message(self) -> str:
        parts = [self.what]
        if self.where:
            parts.append(f"  where: {self.where}")
        if self.fix:
            parts.append(f"  fix:   {self.fix}")
        return "\n".join(parts)


class ConfigError(SurefitError):
    """A configuration key, value or combination is wrong."""


class DataError(SurefitError):
    """The data (shapes, dtypes, sizes, labels) does not fit the task or the model."""


class CheckpointError(SurefitError):
    """A checkpoint is missing, corrupt, unsafe or does not fit the run."""


class SurefitWarning(UserWarning):
    """A run's warning where no console shows it (``progress="off"``): the same text as the
    console's ``warning:`` line; every warning is also in ``FitResult.warnings`` and, with a run
    directory, a ``warning`` event."""


def refuse_to_replace(path: Path, suffix: str, where: str) -> None:
    """A ConfigError when writing an output file (``--to``, ``--out``) would replace a folder or a
    file of another kind: a typo must not overwrite a run's config.toml or a checkpoint. An
    earlier output of the same kind (same suffix) is replaced."""
    if path.is_dir() or (path.exists() and path.suffix.lower() != suffix):
        raise ConfigError(
            f"{path} exists and is not a {suffix} file: writing would replace it",
            where=where,
            fix=f"give a new file name ending in {suffix} (an existing {suffix} file is replaced)",
        )
