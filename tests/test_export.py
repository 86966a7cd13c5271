"""Inference export: each format reproduces the compressed model, saves and reloads; auto records its pick."""

import pytest
import torch
from torch import nn

from saten import SatenLinear, compress, export
from saten.export_io import load_exported, save_exported
from saten.inference_embedding import FactorizedEmbedding, FactorizedTiedHead
from saten.inference_layers import (
    FactorizedTTLinear,
    MergedLinear,
    SemiStructuredLinear,
    semi_structured_available,
)
from saten.models import load_model
from saten.tt import TTShape

SATEN = {
    "unstructured": {"method": "saten", "eps": 0.5, "density": 0.1},
    "2:4": {"method": "saten", "eps": 0.7, "sparsity": "nm", "nm": [2, 4]},
    "saten_e": {"method": "saten", "eps": 0.5, "density": 0.1, "embeddings": True},
}
TOL = 1e-4


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def _model(cfg, arch, saten):
    torch.manual_seed(0)
    head = "causal_lm" if arch == "llama" else "sequence_classification"
    model = load_model(cfg, head=head, num_labels=2).eval()
    compress(model, SATEN[saten])
    return model


def _inputs(model):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (2, 11), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _outputs(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(params=["bert", "llama"])
def arch_cfg(request, tiny_bert_cfg, tiny_llama_cfg):
    return request.param, tiny_bert_cfg if request.param == "bert" else tiny_llama_cfg


@pytest.mark.parametrize("saten", list(SATEN))
@pytest.mark.parametrize("format", ["merged", "factorized", "auto"])
def test_formats_match_compressed_model(arch_cfg, saten, format):
    arch, cfg = arch_cfg
    model = _model(cfg, arch, saten)
    inputs = _inputs(model)
    reference = _outputs(model, inputs)
    targeted = [n for n, m in model.named_modules() if isinstance(m, SatenLinear)]
    replaced = export(model, format, tokens=4, repeats=2)
    assert not any(isinstance(m, SatenLinear) for m in model.modules())
    assert set(targeted) <= set(replaced) and set(model.saten_export) == set(replaced)
    assert set(model.saten_export.values()) <= ({format} if format != "auto" else {"merged", "factorized"})
    assert _rel(_outputs(model, inputs), reference) < TOL


@pytest.mark.parametrize("kernel", ["csr", "gather"])
@pytest.mark.parametrize("layout, path", [("plain", "pair"), ("plain", "cores"), ("matrix", "cores")])
@pytest.mark.parametrize("rows", [1, 5])
def test_factorized_layer_kernels_layouts_and_paths(kernel, layout, path, rows):
    torch.manual_seed(0)
    layer = SatenLinear.from_linear(nn.Linear(48, 40), eps=0.5, density=0.2, layout=layout)
    x = torch.randn(3, rows, 48)
    exported = FactorizedTTLinear.from_saten(layer, kernel, path)
    with torch.no_grad():
        assert _rel(exported(x), layer(x)) < TOL
    assert not list(exported.parameters())  # inference tensors are buffers, nothing trainable
    assert exported.path == path and f"path={path}" in repr(exported)
    factors = [tuple(f.shape) for f in exported.factors()]
    r_p = layer.ranks[len(layer.shape.in_factors)]
    assert factors == ([tuple(c.shape) for c in layer.cores] if path == "cores" else [(r_p, 48), (40, r_p)])
    again = FactorizedTTLinear.from_spec(exported.spec())
    again.load_state_dict(exported.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(again(x), exported(x), rtol=0, atol=0)


def test_cores_path_reads_fewer_bytes_when_outer_ranks_are_truncated():
    torch.manual_seed(0)
    # W[o, 12 i + j] = sum_a u[a, i] v[a, j, o]: rank 2 across the first input factor, so r_1 = 2 << 8
    u, v = torch.randn(2, 8), torch.randn(2, 12, 8)
    linear = nn.Linear(96, 8)
    with torch.no_grad():
        linear.weight.copy_(torch.einsum("ai,ajo->ijo", u, v).reshape(96, 8).t())
    layer = SatenLinear.from_linear(linear, eps=1e-6, shape=TTShape((8, 12), (2, 4)))
    assert layer.ranks[1] == 2
    pair, cores = (FactorizedTTLinear.from_saten(layer, "csr", path) for path in ("pair", "cores"))
    assert sum(f.numel() for f in cores.factors()) < sum(f.numel() for f in pair.factors()) / 2
    x = torch.randn(5, 96)
    with torch.no_grad():
        assert _rel(cores(x), pair(x)) < TOL


def test_auto_times_candidates_and_records_choice(tiny_llama_cfg):
    model = _model(tiny_llama_cfg, "llama", "saten_e")
    replaced = export(model, "auto", tokens=1, repeats=3)
    assert model.saten_export.keys() == set(replaced)
    for name, fmt in model.saten_export.items():
        timings = model.saten_export_timings[name]
        fastest = min(timings, key=timings.get)
        assert fmt == fastest.split(":")[0] and all(t > 0 for t in timings.values())
        expected = {"merged": (nn.Linear, nn.Embedding),
                    "factorized": (FactorizedTTLinear, FactorizedEmbedding)}
        assert isinstance(model.get_submodule(name), expected[fmt])


@pytest.mark.parametrize("saten", ["unstructured", "saten_e"])
@pytest.mark.parametrize("format", ["merged", "factorized", "auto"])
def test_save_load_round_trip(tmp_path, tiny_llama_cfg, saten, format):
    model = _model(tiny_llama_cfg, "llama", saten)
    export(model, format, repeats=2)
    inputs = _inputs(model)
    expected = _outputs(model, inputs)
    save_exported(model, tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    again = load_exported(tmp_path)
    assert again.saten_export == model.saten_export
    torch.testing.assert_close(_outputs(again, inputs), expected, rtol=0, atol=0)
    state = again.state_dict()
    assert not any(k.endswith((".cores.0", ".positions")) for k in state)  # no training-time tensors
    if format == "factorized":
        assert "saten_export.safetensors" in names and "model.safetensors" not in names
        assert isinstance(again.get_input_embeddings(), FactorizedEmbedding) == (saten == "saten_e")
        if saten == "saten_e":
            assert isinstance(again.get_output_embeddings(), FactorizedTiedHead)


@pytest.mark.parametrize("saten", ["unstructured", "saten_e"])
def test_merged_export_loads_with_plain_transformers(tmp_path, tiny_llama_cfg, saten):
    from transformers import AutoModelForCausalLM

    model = _model(tiny_llama_cfg, "llama", saten)
    export(model, "merged")
    assert all(type(m) is MergedLinear for n, m in model.named_modules() if n in model.saten_export
               and "embed" not in n)
    inputs = _inputs(model)
    expected = _outputs(model, inputs)
    save_exported(model, tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert not any(type(m).__module__.startswith("saten") for m in plain.modules())
    torch.testing.assert_close(_outputs(plain, inputs), expected, rtol=0, atol=0)


def test_semi_structured_runs_on_sm80_else_clear_error(tiny_bert_cfg):
    torch.manual_seed(0)
    layer = SatenLinear.from_linear(nn.Linear(256, 128), eps=0.7, sparsity="nm", nm=(2, 4))
    if semi_structured_available() is None:  # a CUDA sm80+ machine: the format must work
        layer = layer.to("cuda", torch.float16)
        x = torch.randn(16, 256, device="cuda", dtype=torch.float16)
        with torch.no_grad():
            assert _rel(SemiStructuredLinear.from_saten(layer)(x).float(), layer(x).float()) < 1e-2
        return
    with pytest.raises(ValueError, match="format='semi_structured' needs a CUDA GPU.*use format="):
        SemiStructuredLinear.from_saten(layer)
    model = _model(tiny_bert_cfg, "bert", "2:4")
    with pytest.raises(ValueError, match="format='semi_structured' needs a CUDA GPU.*use format="):
        export(model, "semi_structured")
    assert any(isinstance(m, SatenLinear) for m in model.modules())  # nothing replaced on failure


def test_bad_format_is_one_clear_error(tiny_bert_cfg):
    model = _model(tiny_bert_cfg, "bert", "unstructured")
    with pytest.raises(ValueError, match="format='fast': use one of auto, merged, factorized"):
        export(model, "fast")
    with pytest.raises(ValueError, match="tt_path='chain': use 'auto', 'pair', 'cores'"):
        export(model, "factorized", tt_path="chain")
    with pytest.raises(ValueError, match="save_exported needs .* saten.export"):
        save_exported(model, "unused")
