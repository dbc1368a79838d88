"""``readme-jax transition-stats`` and the forecast flags of ``bench-cache`` / ``bench-sched`` (policy
``belady-expected``, ``serve.core.next_use``). Registered by ``serve.sim.cli``."""

import argparse
import json

from serve.core.next_use import DEFAULT_TOKENS_AHEAD, NextUseConfig
from serve.sim.transition_stats import read_stats, stats_from_trace, write_stats


def register(sub) -> None:
    p = sub.add_parser(
        "transition-stats",
        help="expert-transition statistics of a trace slice, for the belady-expected cache policy",
        description="Count expert transitions, generated tokens and finished requests over requests "
        "[skip, skip + requests) of a trace and write them as a statistics file (bench-cache/bench-sched "
        "--transition-stats). Estimate on a slice the replay does not use: e.g. --skip 2000 for a replay of "
        "--requests 2000.",
    )
    p.add_argument("--trace", required=True, help="JSONL routing trace")
    p.add_argument("--skip", type=int, default=0, help="requests to leave out at the start (default 0)")
    p.add_argument("--requests", type=int, default=None, help="requests to count (default: all after --skip)")
    p.add_argument("--out", required=True, help="statistics file to write (JSON, written atomically)")
    p.set_defaults(func=_transition_stats)


def add_forecast_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("belady-expected forecast")
    group.add_argument(
        "--transition-stats",
        default=None,
        help="statistics file (readme-jax transition-stats) the forecast uses, fixed; default: learned online "
        "from the tokens served",
    )
    group.add_argument(
        "--learn-online", action="store_true", help="with --transition-stats: also keep learning from served tokens"
    )
    group.add_argument(
        "--forecast-tokens",
        type=int,
        default=DEFAULT_TOKENS_AHEAD,
        help=f"next tokens forecast per live request (default {DEFAULT_TOKENS_AHEAD})",
    )


def next_use_from_args(args, num_experts: int) -> NextUseConfig:
    """The forecast settings; a statistics file for another number of experts raises ``ServeError``."""
    if args.transition_stats is None:
        return NextUseConfig(None, True, args.forecast_tokens)
    stats = read_stats(args.transition_stats)
    stats.check_experts(num_experts, f"transition statistics {args.transition_stats}")
    return NextUseConfig(stats, args.learn_online, args.forecast_tokens)


def describe_forecast(args) -> str:
    if args.transition_stats is None:
        return f"belady-expected: statistics learned online, {args.forecast_tokens} tokens ahead"
    online = ", and learned online" if args.learn_online else ""
    return f"belady-expected: statistics {args.transition_stats}{online}, {args.forecast_tokens} tokens ahead"


def forecast_json(args) -> dict:
    return {
        "transition_stats": args.transition_stats,
        "learn_online": args.transition_stats is None or args.learn_online,
        "forecast_tokens": args.forecast_tokens,
    }


def _transition_stats(args) -> int:
    stats, source = stats_from_trace(args.trace, args.skip, args.requests)
    path = write_stats(args.out, stats, source)
    summary = {
        **source,
        "num_experts": stats.num_experts,
        "transitions": sum(map(sum, stats.counts)),
        "repeat_rate": stats.repeat_rate(),
        "home_rate": stats.home_rate(),
        "stop_probability": stats.stop_probability(),
        "path": str(path),
    }
    print(json.dumps(summary, sort_keys=True))
    return 0
