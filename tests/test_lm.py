"""Causal-LM track: perplexity arithmetic, WikiText-2 chunks, the 3 protocols on tiny_llama, GQA reload."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_pipeline import compose_config

from saten.data.lm import ChunkDataset, LMDataModule, collate_chunks, resolve_train_file, token_nll
from saten.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:DeprecationWarning", "ignore:.*LeafSpec")


def test_token_nll_equals_a_hand_computation():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]])
    labels = torch.tensor([[0, 1, 2, -100]])  # the last token is padding: not predicted
    nll, count = token_nll(logits, labels)
    # position 0 predicts token 1, position 1 predicts token 2; position 2 would predict padding
    hand = math.log(math.exp(2) + 2) + math.log(math.e + 2)  # -log softmax: 0 - logsumexp, twice
    assert count.item() == 2 and nll.item() == pytest.approx(hand, rel=1e-6)
    assert math.exp(nll / count) == pytest.approx(math.exp(hand / 2), rel=1e-6)


def test_chunks_are_non_overlapping_and_every_token_counts():
    ids = torch.arange(10)
    chunks = ChunkDataset(ids, context=4)
    assert [c.tolist() for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert chunks.predicted_tokens == 3 + 3 + 1
    assert len(ChunkDataset(ids, context=4, drop_last=True)) == 2
    assert len(ChunkDataset(torch.arange(9), context=4)) == 2  # a 1-token tail predicts nothing
    batch = collate_chunks(list(chunks))
    assert batch["input_ids"].shape == (3, 4) and batch["attention_mask"][2].tolist() == [1, 1, 0, 0]
    assert batch["labels"][2].tolist() == [8, 9, -100, -100]


def test_module_perplexity_matches_model_logits_by_hand(tiny_llama_cfg):
    import lightning as L

    from saten.lit import CausalLM

    module = CausalLM(model=tiny_llama_cfg, task={"name": "wikitext2", "metric": "perplexity"},
                      saten={"method": "dense"})
    chunks = ChunkDataset(torch.randint(0, 1000, (50,), generator=torch.Generator().manual_seed(0)), 16)
    loader = torch.utils.data.DataLoader(chunks, batch_size=2, collate_fn=collate_chunks)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    result = trainer.validate(module, loader, verbose=False)[0]
    total, count = 0.0, 0
    with torch.no_grad():
        for chunk in chunks:
            logp = torch.log_softmax(module.model(chunk[None]).logits[0].double(), -1)
            total -= sum(logp[t, chunk[t + 1]].item() for t in range(len(chunk) - 1))
            count += len(chunk) - 1
    assert result["val/tokens"] == count == chunks.predicted_tokens == 3 * 15 + 1
    assert result["val/perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)


@pytest.fixture(scope="module")
def lm_cache(tmp_path_factory) -> Path:
    """One token-id cache for the module's pipeline runs (WikiText-2 is tokenized once)."""
    return tmp_path_factory.mktemp("lm_cache")


def lm_overrides(cache: Path, *extra: str) -> list[str]:
    """A seconds-long tiny_llama WikiText-2 run: 64-token chunks, one batch per stage."""
    return ["model=tiny_llama", "task=wikitext2", "logger=none", f"data.cache_dir={cache}", "data.context=64",
            "data.train_context=32", "data.batch_size=2", "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1", "trainer.limit_train_batches=1", "trainer.num_sanity_val_steps=0",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", *extra]


def test_training_free_protocol_evaluates_validation_and_test(data_dir, lm_cache, tmp_path):
    from saten.train import run

    summary = run(compose_config(lm_overrides(lm_cache, "saten=saten_24", "trainer.max_epochs=0"), tmp_path))
    assert summary["trained"] is False and summary["metric"] == "perplexity" and summary["layers"] == 14
    assert summary["val/tokens"] == summary["test/tokens"] == 63
    for key in ("val/perplexity", "test/perplexity"):
        loss = summary[key.replace("perplexity", "loss")]
        assert math.isfinite(summary[key]) and summary[key] == pytest.approx(math.exp(loss))
    assert not (tmp_path / "model.safetensors").exists()


def test_saten_finetuning_protocol_trains_and_reloads(data_dir, lm_cache, tmp_path):
    from saten.lit import load_run
    from saten.train import run

    summary = run(compose_config(lm_overrides(lm_cache, "saten=saten_u", "trainer.max_epochs=1"), tmp_path))
    assert summary["trained"] and summary["global_step"] == 1 and math.isfinite(summary["best/perplexity"])
    assert math.isfinite(summary["test/perplexity"])
    module = load_run(tmp_path)
    assert type(module).__name__ == "CausalLM" and module.replaced == module.model.saten_info["replaced"]
    evaluated = run(compose_config(lm_overrides(lm_cache, "train=false", f"ckpt_path={tmp_path}"),
                                   tmp_path / "eval"))
    assert evaluated["val/perplexity"] == pytest.approx(summary["val/perplexity"], rel=1e-5)


def test_lora_on_frozen_protocol_trains_adapters_only(data_dir, lm_cache, tmp_path):
    from safetensors.torch import load_file

    from saten.lit import load_run
    from saten.train import run

    overrides = lm_overrides(lm_cache, "saten=saten_24", "saten.freeze=true", "lora=lora",
                             "trainer.max_epochs=1")
    summary = run(compose_config(overrides, tmp_path))
    assert summary["trained"] and math.isfinite(summary["test/perplexity"])
    report = json.loads((tmp_path / "report.json").read_text())
    # r * (in + out) per projection, 2 layers: q, o 64->64; k, v 64->32 (GQA); gate, up 64->128; down 128->64
    assert report["lora_params"] == 2 * 8 * (2 * 128 + 2 * 96 + 3 * 192)
    keys = load_file(tmp_path / "model.safetensors").keys()
    assert any(k.endswith("q_proj.base_layer.cores.0") for k in keys)  # the saved model stays compressed
    assert any(k.endswith("q_proj.lora_A.default.weight") for k in keys)
    module = load_run(tmp_path)
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)


def test_lora_is_refused_for_classification_and_bad_lora_values(data_dir, lm_cache, tmp_path):
    from saten.train import run

    with pytest.raises(ConfigError, match="lora.r=0"):
        run(compose_config(lm_overrides(lm_cache, "lora=lora", "lora.r=0"), tmp_path))
    with pytest.raises(ConfigError, match="task.kind=lm only"):
        run(compose_config(["model=tiny_llama", "task=cb", "lora=lora", "logger=none"], tmp_path))
    with pytest.raises(ConfigError, match="task.metric=accuracy"):
        run(compose_config(lm_overrides(lm_cache, "task.metric=accuracy"), tmp_path))


def test_local_source_states_the_tokenized_variant_and_guards_training(data_dir, lm_cache, tiny_llama_cfg):
    from saten.models import load_tokenizer

    datamodule = LMDataModule(load_tokenizer(tiny_llama_cfg), source="local", data_dir=data_dir, context=4096,
                              cache_dir=lm_cache)
    assert "TOKENIZED" in datamodule.protocol and "4096" in datamodule.protocol
    chunks = datamodule.dataset("validation")
    assert all(len(chunks[i]) == 4096 for i in range(len(chunks) - 1)) and chunks.predicted_tokens > 200_000
    with pytest.raises(ConfigError, match="evaluated split"):
        resolve_train_file("wikitext-2/valid.txt", data_dir)
    assert resolve_train_file("tinyshakespeare", data_dir).name == "input.txt"


def test_gqa_shapes_compress_and_reload(tiny_llama_cfg, tmp_path):
    from saten import SatenLinear
    from saten.lit import CausalLM, save_run_model

    def build():
        return CausalLM(model=tiny_llama_cfg, task={"name": "wikitext2"},
                        saten={"method": "saten", "eps": 0.5, "density": 0.1})

    torch.manual_seed(0)
    module = build()
    k_proj = module.model.model.layers[0].self_attn.k_proj
    assert isinstance(k_proj, SatenLinear) and (k_proj.in_features, k_proj.out_features) == (64, 32)
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # "fine-tuned": differs from a fresh compression
    save_run_model(module, tmp_path)
    torch.manual_seed(0)  # tiny_llama is random-init: the same init gives the same TT ranks
    again = build()
    from safetensors.torch import load_model

    load_model(again.model, str(tmp_path / "model.safetensors"), strict=True)
    ids = torch.arange(1, 33)[None]
    assert torch.equal(module.eval()({"input_ids": ids, "attention_mask": torch.ones_like(ids)}),
                       again.eval()({"input_ids": ids, "attention_mask": torch.ones_like(ids)}))


@pytest.mark.slow
def test_smollm2_dense_perplexity_on_two_wikitext_chunks(data_dir, lm_cache, model_cfg_loader):
    import lightning as L

    from saten.lit import CausalLM

    cfg = model_cfg_loader("smollm2_135m")
    module = CausalLM(model=cfg, task={"name": "wikitext2"}, saten={"method": "dense"})
    from saten.models import load_tokenizer

    datamodule = LMDataModule(load_tokenizer(cfg), source="local", data_dir=data_dir, cache_dir=lm_cache)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, limit_val_batches=2)
    result = trainer.validate(module, datamodule.val_dataloader(), verbose=False)[0]
    assert result["val/tokens"] == 2 * 1023 and 5 < result["val/perplexity"] < 60
