"""``readme-jax generate``: text from a model, greedy by default."""


def register(sub):
    p = sub.add_parser("generate", help="generate text from a model (greedy by default)")
    p.add_argument("--model", default="default", help="'default', a .gguf file or an HF checkpoint folder")
    p.add_argument("--prompt", action="append", required=True,
                   help="prompt text; repeat the flag for a batch of prompts")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.set_defaults(func=run)


def run(args) -> int:
    import readme_jax

    lm = readme_jax.load(args.model, dtype=args.dtype)
    texts = lm.generate(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        top_k=args.top_k, top_p=args.top_p, seed=args.seed, chat=args.chat)
    for prompt, text in zip(args.prompt, texts):
        if len(args.prompt) > 1:
            print(f"### {prompt}")
        print(text)
    return 0
