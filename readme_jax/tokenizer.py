"""Tokenizer wrapper: HF ``tokenizer.json`` or one built from a GGUF's vocabulary and merges.

``encode`` adds no special tokens unless asked (then only BOS, when the model uses one); special
tokens written in the text (``<|im_start|>``) are still recognised, which the chat template needs.
"""

import json
from pathlib import Path

from readme_jax import atomic
from readme_jax.errors import ReadmeJaxError

class Tokenizer:
    def __init__(self, tk, *, bos_id=None, eos_ids=(), pad_id=None, add_bos=False, chat_template=None):
        self.tk = tk
        self.bos_id = bos_id
        self.eos_ids = tuple(eos_ids)
        self.pad_id = pad_id if pad_id is not None else (self.eos_ids[0] if self.eos_ids else 0)
        self.add_bos = bool(add_bos and bos_id is not None)
        self.chat_template = chat_template

    @property
    def eos_id(self) -> int | None:
        return self.eos_ids[0] if self.eos_ids else None

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = self.tk.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat(self, prompt, system: str | None = None, add_generation_prompt: bool = True) -> str:
        """Render the model's chat template around a user prompt (or a list of role/content messages)."""
        if not self.chat_template:
            raise ReadmeJaxError("this tokenizer has no chat template; call without --chat")
        import jinja2.sandbox

        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if system is not None:
            messages = [{"role": "system", "content": system}] + messages
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        special = {"bos_token": self.token(self.bos_id), "eos_token": self.token(self.eos_id)}
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **special)

    def token(self, i) -> str:
        return "" if i is None else (self.tk.id_to_token(int(i)) or "")

    def save(self, folder: Path):
        """Write tokenizer.json and tokenizer_config.json (atomically, each)."""
        folder = Path(folder)
        atomic.write_text(folder / "tokenizer.json", self.tk.to_str())
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": self.add_bos,
                  "bos_token": self.token(self.bos_id) or None, "eos_token": self.token(self.eos_id) or None,
                  "pad_token": self.token(self.pad_id) or None, "chat_template": self.chat_template}
        atomic.write_text(folder / "tokenizer_config.json", json.dumps(config, indent=2))


def from_gguf(gf) -> Tokenizer:
    """From an opened GGUF file's vocabulary, following its tokenizer model and pre-tokenizer
    (``readme_jax.gguf_tokenizer``; an unsupported kind is an error naming it)."""
    from readme_jax import gguf_tokenizer

    tk, add_bos = gguf_tokenizer.build(gf)
    eos = gf.field("tokenizer.ggml.eos_token_id")
    return Tokenizer(tk, bos_id=gf.field("tokenizer.ggml.bos_token_id"), eos_ids=() if eos is None else (eos,),
                     pad_id=gf.field("tokenizer.ggml.padding_token_id"),
                     add_bos=bool(gf.field("tokenizer.ggml.add_bos_token", add_bos)),
                     chat_template=gf.field("tokenizer.chat_template"))


def from_folder(folder: Path, eos_ids=(), bos_id=None) -> Tokenizer:
    """From an HF folder's tokenizer.json (+ tokenizer_config.json for BOS/EOS and the chat template)."""
    from tokenizers import Tokenizer as HFTokenizer

    folder = Path(folder)
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ReadmeJaxError(f"{folder}: no tokenizer.json (a tokenizer.model-only checkpoint is not supported)")
    try:
        tk = HFTokenizer.from_file(str(path))
    except Exception as exc:
        raise ReadmeJaxError(f"{path}: cannot be read as a tokenizer ({exc})") from None
    config = {}
    if (cfg_path := folder / "tokenizer_config.json").is_file():
        try:
            config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as exc:
            raise ReadmeJaxError(f"{cfg_path}: not valid JSON ({exc})") from None

    def token_id(key):
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        return tk.token_to_id(value) if isinstance(value, str) else None

    eos = token_id("eos_token")
    eos_ids = tuple(dict.fromkeys(([eos] if eos is not None else []) + list(eos_ids)))
    bos = token_id("bos_token")
    add_bos = config.get("add_bos_token", False)
    template = config.get("chat_template")
    if template is None and (jinja := folder / "chat_template.jinja").is_file():
        template = jinja.read_text()
    return Tokenizer(tk, bos_id=bos if bos is not None else bos_id, eos_ids=eos_ids,
                     pad_id=token_id("pad_token"), add_bos=add_bos, chat_template=template)
