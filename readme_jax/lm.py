"""The public entry point: ``lm = readme_jax.load(spec)``.

``spec`` is ``"default"`` (the embedded SmolLM2-135M-Instruct GGUF), a ``.gguf`` path, or an HF
checkpoint folder (config.json + safetensors, single or sharded, + tokenizer.json).
"""

import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from readme_jax import functional, weights
from readme_jax.config import LlamaConfig
from readme_jax.errors import ReadmeJaxError
from readme_jax.generate import SamplingParams, batch_bucket, bucket, generate_ids


class LM:
    """A loaded model: tokenizer, config and the functional (graphdef, state) pair."""

    def __init__(self, model, tokenizer, source: str = ""):
        self.cfg: LlamaConfig = model.cfg
        self.graphdef, self.state = nnx.split(model)
        self.tokenizer = tokenizer
        self.source = source

    @property
    def model(self):
        return nnx.merge(self.graphdef, self.state)

    def _checked_ids(self, ids_BL) -> np.ndarray:
        ids = np.asarray(ids_BL)
        if ids.ndim == 1:
            ids = ids[None, :]
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ReadmeJaxError(f"ids must have shape [B, L] with L >= 1, got {ids.shape}")
        if ids.shape[1] > self.cfg.max_seq_len:
            raise ReadmeJaxError(f"{ids.shape[1]} tokens exceed the model context of {self.cfg.max_seq_len}")
        if not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= self.cfg.vocab_size:
            raise ReadmeJaxError(f"token ids must be integers in [0, {self.cfg.vocab_size})")
        return ids

    def _bucketed(self, ids_BL, fill: int = 0) -> np.ndarray:
        """[B', L'] with B' a power of two and L' a length bucket: a new shape compiles once per bucket.

        Padding goes at the end of each row (causal: earlier positions never see it) and in extra rows; callers
        slice the result back to [B, L].
        """
        B, T = ids_BL.shape
        out = np.full((batch_bucket(B), bucket(T, self.cfg.max_seq_len)), fill, np.int32)
        out[:B, :T] = ids_BL
        return out

    def logits(self, ids_BL) -> np.ndarray:
        """Full causal forward (no padding): logits [B, L, V] as float32 numpy."""
        ids = self._checked_ids(ids_BL)
        out = functional.forward(self.graphdef, self.state, jnp.asarray(self._bucketed(ids, self.tokenizer.pad_id)))
        return np.asarray(out[: ids.shape[0], : ids.shape[1]], np.float32)

    def encode_prompt(self, prompt: str, chat: bool = False) -> list[int]:
        text = self.tokenizer.apply_chat(prompt) if chat else prompt
        return self.tokenizer.encode(text, add_special_tokens=True)

    def generate(self, prompt_or_prompts, max_new_tokens: int = 64, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int = 0, chat: bool = False,
                 timings: dict | None = None):
        """Continuation text for one prompt (str) or a list of prompts (list[str]); greedy at temperature 0."""
        single = isinstance(prompt_or_prompts, str)
        prompts = [prompt_or_prompts] if single else list(prompt_or_prompts)
        if not all(isinstance(p, str) for p in prompts):
            raise ReadmeJaxError("generate takes a prompt string or a list of prompt strings")
        params = SamplingParams(max_new_tokens, temperature, top_k, top_p, seed)
        ids = self.generate_ids([self.encode_prompt(p, chat) for p in prompts], params, timings)
        eos = set(self.eos_ids)
        texts = [self.tokenizer.decode([t for t in seq if t not in eos]) for seq in ids]
        return texts[0] if single else texts

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(self.tokenizer.eos_ids + self.cfg.eos_ids))

    def generate_ids(self, prompts: list[list[int]], params: SamplingParams, timings: dict | None = None):
        return generate_ids(self.graphdef, self.state, self.cfg, prompts, params, eos_ids=self.eos_ids,
                            pad_id=self.tokenizer.pad_id, timings=timings)

    def save_pretrained(self, folder):
        """Write an HF Llama folder (config.json, model.safetensors, tokenizer) atomically."""
        from readme_jax.hf_import import save_hf

        pure = jax_to_numpy(nnx.to_pure_dict(self.state))
        return save_hf(folder, self.cfg, weights.pure_to_hf(self.cfg, pure), tokenizer=self.tokenizer)


class MoELM(LM):
    """A Read-ME MoE: ``logits`` takes the expert ids [B, L] (one expert per token, every layer), or
    pre-gates them with the folder's trained router when it has one."""

    def __init__(self, model, tokenizer, source: str = "", masks_NEF=None, router=None):
        super().__init__(model, tokenizer, source)
        self.masks_NEF = masks_NEF
        self.router = router  # readme_jax.router.Router or None
        self.router_graphdef, self.router_state = nnx.split(router) if router is not None else (None, None)

    def route(self, ids_BL) -> np.ndarray:
        """Expert ids [B, L] from the pre-gating router (token ids only, causal)."""
        from readme_jax.router import route

        if self.router is None:
            raise ReadmeJaxError(f"{self.source}: this MoE has no trained router (run `readme-jax train`)")
        ids = self._checked_ids(ids_BL)
        if ids.shape[1] > self.router.cfg.max_seq_len:
            raise ReadmeJaxError(f"{ids.shape[1]} tokens exceed the router's context of {self.router.cfg.max_seq_len}")
        logits = route(self.router_graphdef, self.router_state, jnp.asarray(self._bucketed(ids, self.tokenizer.pad_id)))
        return np.asarray(logits.argmax(-1)[: ids.shape[0], : ids.shape[1]], np.int32)

    @property
    def domains(self) -> tuple[str, ...]:
        return self.cfg.domains

    def logits(self, ids_BL, expert_ids_BL=None) -> np.ndarray:
        """Logits [B, T, V] with each token on its expert: ``expert_ids_BL`` (int [B, L], or broadcastable), or
        the router's choice when it is None and the folder has a router."""
        from readme_jax.moe import check_resident

        ids = self._checked_ids(ids_BL)
        if expert_ids_BL is None and self.router is not None:
            expert_ids_BL = self.route(ids)
        if expert_ids_BL is None:
            raise ReadmeJaxError("a MoE model without a trained router needs expert ids [B, L] for each token "
                                 "(expert_ids_BL=...)")
        try:
            experts = np.broadcast_to(np.asarray(expert_ids_BL), ids.shape)
        except ValueError:
            raise ReadmeJaxError(f"expert ids of shape {np.shape(expert_ids_BL)} do not fit tokens of shape "
                                 f"{ids.shape}") from None
        if not np.issubdtype(experts.dtype, np.integer) or experts.min() < 0 or experts.max() >= self.cfg.n_experts:
            raise ReadmeJaxError(f"expert ids must be integers in [0, {self.cfg.n_experts}), got "
                                 f"{experts.min()}..{experts.max()}")
        if self.cfg.form == "sliced":
            check_resident(self.cfg, self.state["slot_of_expert_E"][...], experts)
        out = functional.forward(self.graphdef, self.state, jnp.asarray(self._bucketed(ids, self.tokenizer.pad_id)),
                                 jnp.asarray(self._bucketed(experts)))
        return np.asarray(out[: ids.shape[0], : ids.shape[1]], np.float32)

    def generate_ids(self, prompts, params, timings=None):
        if self.router is None:
            raise ReadmeJaxError(f"{self.source}: generating with a MoE needs its trained router (run "
                                 "`readme-jax train`); without one, use logits(ids, expert_ids)")
        longest = max((len(p) for p in prompts), default=0) + params.max_new_tokens
        if longest > self.router.cfg.max_seq_len:
            raise ReadmeJaxError(f"a prompt plus max_new_tokens needs {longest} positions; the router's context "
                                 f"is {self.router.cfg.max_seq_len}")
        return generate_ids(self.graphdef, self.state, self.cfg, prompts, params, eos_ids=self.eos_ids,
                            pad_id=self.tokenizer.pad_id, timings=timings,
                            router=(self.router_graphdef, self.router_state))

    def save_pretrained(self, folder):
        raise ReadmeJaxError("save a MoE with `readme-jax refactor` (readme_jax.moe_io.save_moe)")


def jax_to_numpy(tree):
    return {k: jax_to_numpy(v) if isinstance(v, dict) else np.asarray(v) for k, v in tree.items()}


def load(spec: str = "default", dtype: str = "float32", verbose: bool = False, form: str = "sliced",
         kernel: str | None = None, split_shared: bool = True) -> LM:
    """Load a model: ``"default"``, a ``.gguf`` file, an HF checkpoint folder, or a Read-ME MoE folder.

    A MoE folder loads in the sliced form, the inference form (each token computes only its expert's neurons);
    ``form="masked"`` gives the masked-dense form that profiling and training use. ``kernel`` picks the sliced
    form's expert kernel (``readme_jax.moe``; default: per-slot weights). ``split_shared=False`` fuses the permanent
    neurons into every expert's slot (wider matmuls, a little faster to decode on a CPU; but every slot then
    duplicates them, so an expert load moves about twice the bytes).
    """
    from readme_jax import gguf_import, hf_import, moe_io
    from readme_jax import tokenizer as tok

    t0 = time.perf_counter()
    if spec == "default":
        from readme_jax.assets import require_default_model

        path = require_default_model()
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise ReadmeJaxError(f"{spec}: no such file or folder (expected 'default', a .gguf file or an "
                                 "HF checkpoint folder)")
    if path.is_dir() and moe_io.is_moe_folder(path):
        model, tokenizer, masks_NEF, router = moe_io.load_moe(path, dtype=dtype, form=form, kernel=kernel,
                                                              split_shared=split_shared)
        return MoELM(model, tokenizer, source=str(path), masks_NEF=masks_NEF, router=router)
    if path.is_file():
        gf, cfg, get, has = gguf_import.load_gguf(path, dtype=dtype)
        tokenizer = tok.from_gguf(gf)
    elif hf_import.is_hf_folder(path):
        cfg, get, has = hf_import.load_hf(path, dtype=dtype)
        tokenizer = tok.from_folder(path, eos_ids=cfg.eos_ids, bos_id=cfg.bos_id)
    else:
        raise ReadmeJaxError(f"{path}: not a checkpoint (a folder needs config.json; a file must be .gguf)")
    model = weights.build_model(cfg, weights.hf_to_pure(cfg, get, has))
    if verbose:
        print(f"loaded {path} ({cfg.num_params() / 1e6:.1f}M params, {dtype}) in {time.perf_counter() - t0:.1f}s")
    return LM(model, tokenizer, source=str(path))
