"""End-to-end batch-1 greedy decoding: SmolLM2 dense vs exported Saten, tokens per second.

``python benchmarks/decode.py [--new-tokens 64] [--rounds 3]`` writes ``results/benchmarks/decode.md`` and
``decode.csv``. The packaged SmolLM2-135M (float32) has its 210 decoder Linears compressed to a targeted
ratio of 1/3 (``saten.target_ratio``, density floor 0.1), without and with Saten(e) on the tied
embedding/head (same ε and density), then exported with ``format="factorized"`` and ``format="auto"``
(timed at one token). Every variant decodes the same prompt greedily (KV cache, ``min_new_tokens`` =
``max_new_tokens``); the variants run interleaved, ``--rounds`` times, and the median is reported.

Per variant the table also gives the bytes of weights a decode step reads (every distinct parameter and
buffer; the tied table once, as the head reads all of it) and their ratio to dense, the speed-up a purely
bandwidth-bound decoder would reach, and the share of a step spent in the weight layers (the decoder
Linears and the head called alone, in model order, on one token).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from saten import compress, export
from saten.inference_embedding import FactorizedTiedHead
from saten.inference_layers import FactorizedTTLinear
from saten.models import load_model, load_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import load_average, machine_lines, write_csv  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = {"name": "smollm2_135m", "source": "gguf_smollm2", "arch": "llama", "dtype": "float32",
           "cache_dir": str(REPO / ".cache" / "models" / "smollm2_135m")}
PROMPT = "The history of the printing press begins"
DESCRIPTION = [
    "SmolLM2-135M (float32) with its 210 decoder Linears compressed to a targeted ratio of 1/3 "
    "(`saten.target_ratio`, density floor 0.1), without (saten) and with Saten(e) on the tied embedding/head "
    "(saten_e, same eps and density), exported with `format=\"factorized\"` and `format=\"auto\"` (timed at "
    "one token). Every variant decodes the same prompt greedily with the KV cache; the variants run "
    "interleaved and the median over rounds is reported. A merged export runs the dense model's GEMMs "
    "(same bytes, same speed as dense).",
    "",
    "Bytes ratio: bytes of the distinct weights a decode step reads (dense / variant; the tied table once, "
    "as the head reads all of it): the speed-up a purely bandwidth-bound decoder would reach. Weight layers "
    "ms: the decoder Linears and the head called alone on one token, in model order; the rest of a step "
    "(attention, norms, rotary, sampling, Python and generate overhead) does not shrink with compression.",
]


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the distinct parameters and buffers (tied tensors once)."""
    seen = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    return sum(seen.values())


def decode_seconds(model, ids, new_tokens: int) -> float:
    """Wall seconds of one greedy generation of exactly ``new_tokens`` tokens."""
    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
              "pad_token_id": model.config.eos_token_id, "attention_mask": torch.ones_like(ids)}
    with torch.inference_mode():
        start = time.perf_counter()
        out = model.generate(ids, **kwargs)
        seconds = time.perf_counter() - start
    assert out.shape[1] == ids.shape[1] + new_tokens
    return seconds


def layer_seconds(model, repeats: int = 20) -> float:
    """Seconds to call every weight layer once on one token, in model order (median of ``repeats``)."""
    layers = [m for name, m in model.named_modules()
              if (isinstance(m, (nn.Linear, FactorizedTTLinear)) and ".layers." in name)]
    head = model.get_output_embeddings()
    inputs = {}
    for layer in layers:
        inputs.setdefault(layer.in_features, torch.randn(1, layer.in_features))
    hidden = torch.randn(1, model.config.hidden_size)
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 2):
            start = time.perf_counter()
            for layer in layers:
                layer(inputs[layer.in_features])
            head(hidden)
            times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def profile_table(model, ids, new_tokens: int, rows: int = 15) -> str:
    """Top operators by self CPU time over one greedy generation (``torch.profiler``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        decode_seconds(model, ids, new_tokens)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40)


def variants(base, saten_cfg: dict) -> dict[str, nn.Module]:
    """dense plus the exported Saten models, each a separate copy."""
    out = {"dense": base}
    for emb in (False, True):
        compressed = copy.deepcopy(base)
        cfg = dict(saten_cfg, embeddings=emb)
        compress(compressed, cfg)
        if not emb:  # reuse the ε and density the budget chose, so both Saten variants share them
            chosen = compressed.saten_info["config"]
            saten_cfg = {"method": "saten", "eps": chosen["eps"], "density": chosen["density"]}
        tag = "saten_e" if emb else "saten"
        for fmt in ("factorized", "auto"):
            model = copy.deepcopy(compressed)
            export(model, fmt, tokens=1)
            model.saten_info = compressed.saten_info
            out[f"{tag} {fmt}"] = model.eval()
        del compressed
    return out


def describe(model) -> dict:
    formats = getattr(model, "saten_export", {})
    info = getattr(model, "saten_info", {})
    counts = {fmt: list(formats.values()).count(fmt) for fmt in sorted(set(formats.values()))}
    head = model.get_output_embeddings()
    return {"formats": ", ".join(f"{n} {fmt}" for fmt, n in counts.items()) or "dense",
            "head": "factorized" if isinstance(head, FactorizedTiedHead) else "dense (tied table)",
            "eps": info.get("config", {}).get("eps"), "density": info.get("config", {}).get("density")}


def run(args) -> list[dict]:
    torch.manual_seed(0)
    base = load_model(SMOLLM2, head="causal_lm").eval()
    ids = load_tokenizer(SMOLLM2)(PROMPT, return_tensors="pt")["input_ids"]
    models = variants(base, {"method": "saten", "target_ratio": args.target_ratio, "density": 0.1})
    seconds = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            seconds[name].append(decode_seconds(model, ids, args.new_tokens))
            print(name, f"{args.new_tokens / seconds[name][-1]:.2f} tokens/s", flush=True)
    dense_bytes = weight_bytes(base)
    profiles = {name: profile_table(models[name], ids, args.profile_tokens)
                for name in ("dense", "saten_e auto") if args.profile_tokens}
    rows = []
    for name, model in models.items():
        step = statistics.median(seconds[name]) / args.new_tokens
        layers = layer_seconds(model)
        rows.append({"variant": name, **describe(model), "tokens_per_s": 1 / step,
                     "step_ms": step * 1e3, "layers_ms": layers * 1e3, "layer_share": layers / step,
                     "weight_mb": weight_bytes(model) / 1e6,
                     "bytes_limit": dense_bytes / weight_bytes(model),
                     "prompt_tokens": ids.shape[1], "new_tokens": args.new_tokens, "rounds": args.rounds,
                     "threads": torch.get_num_threads()})
    dense = rows[0]
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / dense["tokens_per_s"]
        # the speed-up if the weight layers ran at the bytes limit and the rest of the step stayed as is
        other = row["step_ms"] - row["layers_ms"]
        row["bound_with_rest"] = dense["step_ms"] / (other + dense["layers_ms"] / row["bytes_limit"])
        row["of_limit"] = (row["speedup"] - 1) / (row["bytes_limit"] - 1) if row["bytes_limit"] > 1 else None
    return rows, profiles


def write(rows: list[dict], profiles: dict, out: Path, command: str, load_at_start: str, args) -> None:
    write_csv(out / "decode.csv", rows)
    lines = ["# Batch-1 decoding: SmolLM2-135M dense vs exported Saten (CPU)", "",
             *machine_lines(command, load_at_start), "", *DESCRIPTION, "",
             "Target (issue 8): exported Saten with the decoder Linears at >= 3x decodes >= 1.5x dense "
             "tokens/s.", "",
             "| variant | exported layers | head | tokens/s | speed-up | bytes ratio (limit) | "
             "share of limit reached | step ms | weight layers ms | layer share of step | limit with the "
             "rest of the step | weights MB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        share = "–" if r["of_limit"] is None else f"{r['of_limit']:.0%}"
        lines.append(f"| {r['variant']} | {r['formats']} | {r['head']} | {r['tokens_per_s']:.2f} "
                     f"| {r['speedup']:.2f}x | {r['bytes_limit']:.2f}x | {share} | {r['step_ms']:.1f} "
                     f"| {r['layers_ms']:.1f} | {r['layer_share']:.0%} | {r['bound_with_rest']:.2f}x "
                     f"| {r['weight_mb']:.0f} |")
    saten = next(r for r in rows if r["variant"] != "dense")
    lines += ["", f"Saten settings chosen by the budget: eps {saten['eps']:.4g}, "
              f"density {saten['density']:.4g} "
              f"(targeted ratio {args.target_ratio:.3f} over the decoder Linears). Share of limit reached: "
              "(speed-up - 1) / (bytes ratio - 1). Limit with the rest of the step: dense step time over "
              "(this variant's step minus its weight layers, plus the dense weight layers' time divided by "
              "the bytes ratio), i.e. the speed-up if the weight layers ran at the bytes limit and nothing "
              "else changed. Prompt: "
              f"`{PROMPT}` ({rows[0]['prompt_tokens']} tokens), {args.new_tokens} new tokens."]
    for name, table in profiles.items():
        lines += ["", f"## Where a step goes: {name}, {args.profile_tokens} new tokens under torch.profiler",
                  "", "```", table.rstrip(), "```"]
    (out / "decode.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'decode.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--target-ratio", type=float, default=1 / 3)
    parser.add_argument("--profile-tokens", type=int, default=16, help="0: no operator profile")
    parser.add_argument("--out", default=str(REPO / "results" / "benchmarks"))
    args = parser.parse_args()
    load_at_start = load_average()
    rows, profiles = run(args)
    threads = os.environ.get("OMP_NUM_THREADS")
    command = (f"{'OMP_NUM_THREADS=' + threads + ' ' if threads else ''}python benchmarks/decode.py "
               f"--new-tokens {args.new_tokens} --rounds {args.rounds} "
               f"--profile-tokens {args.profile_tokens} --target-ratio {args.target_ratio:.6g}")
    write(rows, profiles, Path(args.out), command, load_at_start, args)


if __name__ == "__main__":
    for key, value in {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(key, value)
    main()
