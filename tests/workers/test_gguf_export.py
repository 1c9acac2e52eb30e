"""GGUF exports: a tiny Llama built here (grouped-query attention, so both q and k permutations are exercised)
written in each type reads back with the `gguf` package (llama.cpp's metadata keys, tensor names and types) and
loads in transformers with the logits of the original within the type's tolerance, and its tokenizer encodes as
the original; a tied head is left out as llama.cpp expects. Through the worker: the session's pretrained model
and a LoRA SFT job merged first, each zip holding the GGUF, a Modelfile and a card. Refusals are 422s naming the
field. The Modelfile's template, run by Go's text/template as Ollama runs it, renders as the chat template
does. llama-cpp-python, where installed, loads the file and generates."""

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import gguf
import pytest
import torch
from sqlalchemy import select
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

import workers.export as worker
from backend.db import Artifact, Export, User, session_scope
from backend.errors import Invalid
from backend.export.gguf import _LLAMA3_REGEX, NotConvertible, check_convertible, pre_tokenizer
from backend.export.schemas import ExportCreate
from backend.export.service import create_export
from tests.support import stored
from tests.workers.support import Pretrained, Seed, create_job, sft_job
from tests.workers.tokenizers import CHATML, chat_tokenizer, plain_tokenizer
from workers.examples import CHATML_TEMPLATE
from workers.gguf_export import modelfile, write_gguf
from workers.tasks import run_job

TEXT = "Once upon a time, a hungry fox said <|im_start|>hello<|im_end|> to 123 grapes!"
# The largest logit difference allowed per type on the tiny model's logits (magnitude ~1): f16 rounds each weight
# at 1e-3 relative, q4_0 stores 16 levels per block of 32. Without the q/k permutation every type is off by ~0.5.
TOLERANCE = {"f16": 0.005, "bf16": 0.02, "q8_0": 0.05, "q4_0": 0.3}
LORA_HP = {"max_steps": 6, "max_length": 64, "batch_size": 8, "learning_rate": 5e-3, "seed": 0, "lora_r": 4}


def tiny_llama(tokenizer: PreTrainedTokenizerBase, *, tied: bool) -> LlamaForCausalLM:
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=160,  # 32-value blocks: every matrix but none quantizes
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer) + 6,  # rows past the vocabulary, as a padded embedding has
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    # At init attention is nearly uniform, so q/k rows in the wrong order would hardly show in the logits; sharper
    # scores make every type's round trip fail without llama.cpp's permutation.
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    return model


def logits(model: Any, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    ids = torch.tensor([tokenizer(TEXT)["input_ids"]])
    with torch.no_grad():
        return model(ids).logits.float()


def field(reader: gguf.GGUFReader, key: str) -> Any:
    return reader.fields[key].contents()


def quiet(phase: str, done: int, total: int, unit: str) -> None:
    assert phase == "converting" and unit == "tensors" and 0 < done <= total


@pytest.mark.parametrize(("gguf_type", "tied"), [("f16", False), ("bf16", True), ("q8_0", True), ("q4_0", False)])
def test_round_trip(gguf_type: str, tied: bool, tmp_path: Path) -> None:
    tokenizer = chat_tokenizer()
    model = tiny_llama(tokenizer, tied=tied)
    path = write_gguf(model, tokenizer, tmp_path / "m.gguf", gguf_type, name="tiny", chat_template=CHATML, report=quiet)

    reader = gguf.GGUFReader(path)
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "general.name") == "tiny"
    assert field(reader, "llama.block_count") == 2
    assert field(reader, "llama.attention.head_count_kv") == 2
    assert field(reader, "llama.rope.dimension_count") == 16
    assert field(reader, "llama.context_length") == 256
    assert abs(field(reader, "llama.attention.layer_norm_rms_epsilon") - 1e-6) < 1e-9
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert field(reader, "tokenizer.chat_template") == CHATML
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == model.config.vocab_size and tokens[-1] == f"[PAD{model.config.vocab_size - 1}]"
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert field(reader, "tokenizer.ggml.token_type")[im_end] == gguf.TokenType.CONTROL
    assert field(reader, "tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert field(reader, "tokenizer.ggml.padding_token_id") == tokenizer.pad_token_id
    assert len(field(reader, "tokenizer.ggml.merges")) > 100

    tensors = {t.name: t for t in reader.tensors}
    assert ("output.weight" in tensors) is not tied  # a tied head reuses token_embd in llama.cpp
    assert len(tensors) == 2 * 9 + 2 + (0 if tied else 1)
    assert list(tensors["blk.0.attn_k.weight"].shape) == [64, 32]  # GGUF lists the row length first
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    matrix = {"f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0"}[gguf_type]
    assert tensors["blk.1.ffn_down.weight"].tensor_type.name == matrix
    if gguf_type == "q4_0":
        assert tensors["output.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0  # the head, kept finer

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    assert loaded.config.tie_word_embeddings is tied
    expected, got = logits(model, tokenizer), logits(loaded, tokenizer)
    error = (got - expected).abs().max().item()
    assert error < TOLERANCE[gguf_type], error

    read_back = AutoTokenizer.from_pretrained(tmp_path, gguf_file="m.gguf")
    assert read_back(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]
    assert read_back.chat_template == CHATML


def test_modelfile_translates_chatml(tmp_path: Path) -> None:
    tokenizer = chat_tokenizer()
    text = modelfile(tokenizer, "tiny.gguf", CHATML, ["<|im_end|>", "<|endoftext|>", "<|im_end|>"], 8192)
    template = (
        '{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}{{ if eq .Role "system" }}'
        "<|im_start|>system\n{{ .Content }}<|im_end|>\n"
        '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
        '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}{{ if not $last }}<|im_end|>\n'
        '{{ end }}{{ end }}{{ if and $last (ne .Role "assistant") }}<|im_start|>assistant\n{{ end }}{{ end }}'
    )
    assert text == (
        f'FROM ./tiny.gguf\n\nTEMPLATE """{template}"""\n\n'
        'PARAMETER stop "<|im_end|>"\nPARAMETER stop "<|endoftext|>"\n'
        "PARAMETER temperature 0.7\nPARAMETER num_ctx 4096\n"
    )


def test_modelfile_of_the_fallback_template_and_of_a_plain_model() -> None:
    tokenizer = plain_tokenizer()
    chat = modelfile(tokenizer, "m.gguf", CHATML_TEMPLATE, ["", "<|endoftext|>"], 1024)
    # The studio's fallback ends each turn with EOS, which the template writes as text: stop on it.
    assert "<|im_start|>user\n{{ .Content }}<|endoftext|>\n" in chat
    assert 'PARAMETER stop "<|endoftext|>"\n' in chat and "num_ctx 1024" in chat
    plain = modelfile(tokenizer, "m.gguf", None, ["<|endoftext|>"], 1024)
    assert 'TEMPLATE """{{ .Prompt }}"""' in plain


# Renders an Ollama TEMPLATE with Go's text/template, as Ollama does, over {"Messages": [{Role, Content}...]}.
GO_RENDER = """package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	text, _ := os.ReadFile(os.Args[1])
	raw, _ := os.ReadFile(os.Args[2])
	var messages []Message
	if err := json.Unmarshal(raw, &messages); err != nil {
		panic(err)
	}
	t := template.Must(template.New("modelfile").Parse(string(text)))
	if err := t.Execute(os.Stdout, map[string]any{"Messages": messages}); err != nil {
		panic(err)
	}
}
"""
CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell me a fable."},
    ],
]


@pytest.mark.skipif(shutil.which("go") is None, reason="no Go toolchain to run Ollama's template engine")
@pytest.mark.parametrize("which", ["chatml", "fallback"])
def test_the_modelfile_template_renders_as_the_chat_template_in_go(which: str, tmp_path: Path) -> None:
    tokenizer, template = (chat_tokenizer(), CHATML) if which == "chatml" else (plain_tokenizer(), CHATML_TEMPLATE)
    text = modelfile(tokenizer, "m.gguf", template, [], 1024)
    (tmp_path / "template.txt").write_text(text.split('TEMPLATE """', 1)[1].split('"""', 1)[0])
    (tmp_path / "render.go").write_text(GO_RENDER)
    env = {**os.environ, "GOCACHE": str(tmp_path / "gocache"), "GOPATH": str(tmp_path / "gopath")}
    subprocess.run(["go", "build", "-o", str(tmp_path / "render"), str(tmp_path / "render.go")], check=True, env=env)
    for i, messages in enumerate(CONVERSATIONS):
        (tmp_path / f"{i}.json").write_text(json.dumps(messages))
        got = subprocess.run(
            [str(tmp_path / "render"), str(tmp_path / "template.txt"), str(tmp_path / f"{i}.json")],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        expected = tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )
        assert got == expected, (messages, got, expected)


def test_what_cannot_be_converted(tmp_path: Path) -> None:
    tokenizer = plain_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    with pytest.raises(NotConvertible, match="GPT2LMHeadModel has no GGUF mapping"):
        check_convertible(tmp_path, tmp_path)
    (tmp_path / "config.json").write_text(
        '{"architectures": ["LlamaForCausalLM"], "rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4}}'
    )
    with pytest.raises(NotConvertible, match="rope scaling 'llama3'"):
        check_convertible(tmp_path, tmp_path)
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    assert check_convertible(tmp_path, tmp_path) == ("llama", "gpt-2")
    with pytest.raises(NotConvertible, match="byte fallback"):
        pre_tokenizer({"model": {"type": "BPE", "byte_fallback": True}})
    with pytest.raises(NotConvertible, match="pre-tokenizer"):
        pre_tokenizer({"model": {"type": "BPE"}, "pre_tokenizer": {"type": "Metaspace"}})
    # A step llama.cpp would not take, beside a split it names, still cuts the text elsewhere: refused.
    digit_runs = {"type": "Sequence", "pretokenizers": [{"type": "Digits"}, {"type": "ByteLevel"}]}
    with pytest.raises(NotConvertible, match="pre-tokenizer"):
        pre_tokenizer({"model": {"type": "BPE"}, "pre_tokenizer": digit_runs})
    # SmolLM's (and StarCoder's): each digit alone, then GPT-2's split: llama.cpp's "smollm".
    digits = {"type": "Digits", "individual_digits": True}
    smollm = {"type": "Sequence", "pretokenizers": [digits, {"type": "ByteLevel", "use_regex": True}]}
    assert pre_tokenizer({"model": {"type": "BPE"}, "pre_tokenizer": smollm}) == "smollm"
    byte_level = {"type": "ByteLevel"}
    with pytest.raises(NotConvertible, match="normalizes text first \\(NFKC\\)"):
        pre_tokenizer({"model": {"type": "BPE"}, "normalizer": {"type": "NFKC"}, "pre_tokenizer": byte_level})
    llama3 = {"type": "Split", "pattern": {"Regex": _LLAMA3_REGEX}}
    split_then_bytes = {"type": "Sequence", "pretokenizers": [llama3, {"type": "ByteLevel", "use_regex": False}]}
    empty = {"type": "Sequence", "normalizers": []}
    llama3_like = {"model": {"type": "BPE"}, "normalizer": empty, "pre_tokenizer": split_then_bytes}
    assert pre_tokenizer(llama3_like) == "llama-bpe"


# --- through the worker ---------------------------------------------------------------------------------------------


def queue_export(seed: Seed, job_id: int, **body: Any) -> int:
    """An export row as POST /api/jobs/{id}/exports creates it (the same checks)."""
    with session_scope() as s:
        user = s.get(User, seed.user_id)
        assert user is not None
        row, created = create_export(s, user=user, job_id=job_id, data=ExportCreate.model_validate(body))
        assert created
        return row.id


def export_zip(export_id: int, into: Path) -> Path:
    assert worker.export_weights(export_id) == "done"
    with session_scope() as s:
        row = s.get(Export, export_id)
        assert row is not None and row.status == "done", row and row.error
        art = s.scalars(select(Artifact).where(Artifact.job_id == row.job_id, Artifact.name == row.artifact_name)).one()
        with zipfile.ZipFile(stored(art.path)) as zf:
            zf.extractall(into)
    return into


def test_pretrained_model_as_q8_0(seed: Seed, pretrained: Pretrained, tmp_path: Path) -> None:
    export_id = queue_export(seed, pretrained.job_id, format="gguf", gguf_type="q8_0")
    out = export_zip(export_id, tmp_path)
    name = f"job{pretrained.job_id}-final-q8_0.gguf"
    assert sorted(p.name for p in out.iterdir()) == sorted([name, "Modelfile", "README.md"])
    assert f'gguf_file="{name}"' in (out / "README.md").read_text()
    modelfile_text = (out / "Modelfile").read_text()
    assert modelfile_text.startswith(f"FROM ./{name}\n")
    assert 'TEMPLATE """{{ .Prompt }}"""' in modelfile_text  # a pretrain completes text: no chat layout

    original = AutoModelForCausalLM.from_pretrained(pretrained.model_path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(pretrained.model_path)
    loaded = AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32).eval()
    error = (logits(loaded, tokenizer) - logits(original, tokenizer)).abs().max().item()
    assert error < 0.2, error  # trained logits reach ~10; q8_0 moves them by a few hundredths
    assert AutoTokenizer.from_pretrained(out, gguf_file=name)(TEXT)["input_ids"] == tokenizer(TEXT)["input_ids"]


def test_lora_sft_job_merged_into_f16_with_its_chat_template(
    seed: Seed, pretrained: Pretrained, tmp_path: Path
) -> None:
    from peft import PeftModel

    job_id = sft_job(seed, pretrained, "lora", hyperparameters=LORA_HP)
    assert run_job(job_id) == "succeeded"
    export_id = queue_export(seed, job_id, format="gguf")  # f16 by default
    out = export_zip(export_id, tmp_path / "zip")
    name = f"job{job_id}-final-f16.gguf"
    reader = gguf.GGUFReader(out / name)
    template = field(reader, "tokenizer.chat_template")
    assert template.endswith(CHATML_TEMPLATE)  # the layout training rendered conversations with
    modelfile_text = (out / "Modelfile").read_text()
    assert "<|im_start|>assistant\n{{ .Content }}" in modelfile_text
    assert 'PARAMETER stop "<|endoftext|>"' in modelfile_text

    adapter = seed.data_dir / "jobs" / str(job_id) / "adapter"
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    base = AutoModelForCausalLM.from_pretrained(pretrained.model_path, dtype=torch.float32)
    plain = logits(base, tokenizer)
    expected = logits(PeftModel.from_pretrained(base, adapter).eval(), tokenizer)
    loaded = AutoModelForCausalLM.from_pretrained(out, gguf_file=name, dtype=torch.float32).eval()
    error = (logits(loaded, tokenizer) - expected).abs().max().item()
    assert error < 0.05, error
    assert (expected - plain).abs().max().item() > 4 * error  # the merge is in the file


def test_refusals_name_the_field(seed: Seed, pretrained: Pretrained) -> None:
    def refused(job_id: int, **body: Any) -> Invalid:
        with session_scope() as s:
            user = s.get(User, seed.user_id)
            assert user is not None
            with pytest.raises(Invalid) as caught:
                create_export(s, user=user, job_id=job_id, data=ExportCreate.model_validate(body))
        return caught.value

    wrong = refused(pretrained.job_id, format="model", gguf_type="q8_0")
    assert (wrong.details["field"], wrong.message) == ("gguf_type", "gguf_type applies to format 'gguf' only")
    assert refused(pretrained.job_id, format="gguf", dtype="float16").details["field"] == "dtype"

    # A model of an architecture with no mapping (its files as a finished job leaves them).
    job_id = create_job(seed, kind="pretrain", architecture="tiny", status="succeeded")
    model_dir = seed.data_dir / "jobs" / str(job_id) / "model"
    model_dir.mkdir(parents=True)
    for file in pretrained.model_path.iterdir():
        (model_dir / file.name).write_bytes(file.read_bytes())
    (model_dir / "config.json").write_text('{"architectures": ["MistralForCausalLM"]}')
    unmapped = refused(job_id, format="gguf")
    assert unmapped.details["field"] == "format" and "MistralForCausalLM has no GGUF mapping" in unmapped.message


def test_llama_cpp_loads_and_generates(pretrained: Pretrained, seed: Seed, tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (its build from source did not finish in 5 minutes)"
    )
    export_id = queue_export(seed, pretrained.job_id, format="gguf", gguf_type="f16")
    out = export_zip(export_id, tmp_path)
    llm = llama_cpp.Llama(model_path=str(next(out.glob("*.gguf"))), n_ctx=128, verbose=False)
    text = llm("Once upon a time", max_tokens=8, temperature=0.0)["choices"][0]["text"]
    assert isinstance(text, str) and text
