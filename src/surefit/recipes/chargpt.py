"""A character-level GPT on Tiny Shakespeare, in the spirit of nanoGPT's ``shakespeare_char``.

The text is char-rnn's ``tinyshakespeare/input.txt`` (the file nanoGPT's ``prepare.py``
downloads), split 90/10 into train and validation as nanoGPT does. A training sample is the window
of ``block`` characters that starts at a given position, and its target the same window shifted by
one. Every start position is one sample, so the run's seeded epoch order (a permutation that is a
pure function of seed and epoch) draws random windows without replacement, and a resumed run sees
the same windows as an uninterrupted one. Validation reads a fixed, seeded sample of windows.

The model carries its vocabulary as a buffer, so a checkpoint alone is enough to sample from.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from . import check_arg, whole
from .mnist1d import cache_dir

FILE = "tinyshakespeare.txt"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
# the 65 characters of Tiny Shakespeare, sorted: nanoGPT's shakespeare_char vocabulary
VOCAB = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _shared_copy() -> Path | None:
    """The file in a ``shared/data`` folder beside the project checkout, when there is one."""
    root = Path(__file__).resolve().parents[3]
    for base in (root.parent / "shared" / "data", root / "shared" / "data"):
        if (base / FILE).is_file():
            return base / FILE
    return None


def text_path(path: str = "", cache: str = "") -> Path:
    """Tiny Shakespeare in the cache folder, copied there (and checked) on first use."""
    if path:
        if not Path(path).is_file():
            raise DataError(f"no text file at {path}", where="data.args.path", fix="check the path")
        return Path(path)
    target = (Path(cache) if cache else cache_dir()) / FILE
    if target.is_file():  # checked at every use (1 MB, a few ms): a damaged copy is replaced
        if hashlib.sha256(target.read_bytes()).hexdigest() == SHA256:
            return target
    src = _shared_copy()
    if src is None:
        state = "damaged (sha256 differs)" if target.is_file() else "not"
        raise DataError(
            f"Tiny Shakespeare is {state} in the cache ({target})",
            where="data.name",
            fix="save karpathy/char-rnn's data/tinyshakespeare/input.txt there (sha256 "
            f"{SHA256[:12]}...), or set data.args.path to a copy",
        )
    data = src.read_bytes()
    if hashlib.sha256(data).hexdigest() != SHA256:
        raise DataError(
            f"{src} is not the Tiny Shakespeare text (sha256 differs)",
            where=str(src),
            fix="replace it with char-rnn's data/tinyshakespeare/input.txt",
        )
    from ..checkpoint import atomic_write

    atomic_write(target, lambda f: f.write(data))
    return target


def encode(text: str, vocab: str = VOCAB) -> torch.Tensor:
    """Character ids (int64) of ``text``; a character outside ``vocab`` is a DataError."""
    table = {c: i for i, c in enumerate(vocab)}
    unknown = sorted(set(text) - set(table))
    if unknown:
        raise DataError(
            f"characters {unknown[:10]} are not in the model's vocabulary",
            where="text",
            fix=f"use only these characters: {vocab!r}",
        )
    return torch.tensor([table[c] for c in text], dtype=torch.int64)


def decode(ids: list[int], vocab: str = VOCAB) -> str:
    return "".join(vocab[i] for i in ids)


class Windows(Dataset):
    """Sample ``i``: ``block`` characters from ``starts[i]`` (or ``i``) and the ones after each."""

    def __init__(self, tokens: torch.Tensor, block: int, starts: torch.Tensor | None = None):
        if len(tokens) <= block:
            raise DataError(
                f"{len(tokens)} characters are too few for windows of {block}",
                where="data.args.block",
                fix="use a smaller block or a longer text",
            )
        self.tokens, self.block, self.starts = tokens, block, starts

    def __len__(self) -> int:
        return len(self.starts) if self.starts is not None else len(self.tokens) - self.block

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = int(self.starts[i]) if self.starts is not None else i
        chunk = self.tokens[start : start + self.block + 1]
        return chunk[:-1], chunk[1:]


def load(
    block: int = 64, val_windows: int = 1000, val_seed: int = 0, path: str = "", cache: str = ""
) -> dict[str, Any]:
    """Train windows over the first 90 % of the text; a fixed sample of windows over the rest."""
    for key, value in (("block", block), ("val_windows", val_windows)):
        fix = "e.g. block = 64 (the model's block too), val_windows = 1000"
        check_arg(whole(value, 1), key, value, "must be a whole number >= 1", fix)
    tokens = encode(text_path(path, cache).read_text())
    n_train = int(len(tokens) * 0.9)
    train, val = tokens[:n_train], tokens[n_train:]
    if len(val) <= block:  # the validation part needs a window and the character after it
        raise DataError(
            f"the text's last 10 % ({len(val)} characters) is too short for windows of {block}",
            where="data.args.block",
            fix=f"use a text of more than {10 * (block + 1)} characters, or a smaller block",
        )
    gen = torch.Generator().manual_seed(val_seed)
    starts = torch.randint(0, len(val) - block, (val_windows,), generator=gen)
    return {"train": Windows(train, block), "val": Windows(val, block, starts)}


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention and a 4x GELU MLP."""

    def __init__(self, width: int, heads: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1 = nn.LayerNorm(width, bias=bias)
        self.qkv = nn.Linear(width, 3 * width, bias=bias)
        self.proj = nn.Linear(width, width, bias=bias)
        self.ln2 = nn.LayerNorm(width, bias=bias)
        self.fc = nn.Linear(width, 4 * width, bias=bias)
        self.out = nn.Linear(4 * width, width, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))
        return x + self.drop(self.out(F.gelu(self.fc(self.ln2(x)))))


class GPT(nn.Module):
    """Token and position embeddings, ``layers`` blocks, and a head tied to the token embedding."""

    def __init__(
        self,
        vocab: str = VOCAB,
        block: int = 64,
        layers: int = 4,
        heads: int = 4,
        width: int = 128,
        dropout: float = 0.0,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ConfigError(
                f"width {width} is not a multiple of heads {heads}",
                where="model.args",
                fix="choose width = heads x head size",
            )
        self.block = block
        self.register_buffer("vocab_codes", torch.tensor([ord(c) for c in vocab]))
        self.tok = nn.Embedding(len(vocab), width)
        self.pos = nn.Embedding(block, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, dropout, bias) for _ in range(layers))
        self.ln = nn.LayerNorm(width, bias=bias)
        self.head = nn.Linear(width, len(vocab), bias=False)
        self.head.weight = self.tok.weight  # weight tying, as GPT-2 and nanoGPT
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by depth
            if name.endswith(("proj.weight", "out.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    @property
    def vocab(self) -> str:
        return "".join(chr(int(c)) for c in self.vocab_codes.tolist())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.drop(self.tok(idx) + self.pos(torch.arange(t, device=idx.device)))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln(x))


gpt = GPT  # the recipe's factory: the class itself, so its arguments are checked by name and type


@torch.no_grad()
def generate(
    model: GPT,
    prompt: str,
    tokens: int = 500,
    temperature: float = 0.8,
    top_k: int = 0,
    seed: int = 0,
) -> str:
    """``prompt`` followed by ``tokens`` sampled characters (top-k when ``top_k`` > 0)."""
    if not temperature > 0 or not math.isfinite(temperature):  # NaN passes `<= 0`
        raise ConfigError(
            f"temperature {temperature} must be > 0", where="--temperature", fix="e.g. 0.8"
        )
    vocab = model.vocab
    device = model.vocab_codes.device
    idx = encode(prompt or "\n", vocab).unsqueeze(0).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        for _ in range(tokens):
            logits = model(idx[:, -model.block :])[:, -1, :] / temperature
            if 0 < top_k < logits.shape[-1]:
                kth = torch.topk(logits, top_k).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=gen)
            idx = torch.cat([idx, nxt], dim=1)
    finally:
        model.train(was_training)
    return decode(idx[0].tolist(), vocab)
