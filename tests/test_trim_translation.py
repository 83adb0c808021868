"""`trim` of a translation model (issue 24 item 3), on the tiny mBART of tiny_models.py (language codes ar_AR, de_DE,
en_XX, ro_RO, ru_RU; forced_bos_token_id de_DE; the post-processor appends en_XX to every input).

An en,de trim keeps de_DE and en_XX and drops the other codes (unless --keep-language-codes all), records the target
languages left in mlcompress.json, and translates exactly as the source does under a forced target language; a trim that
drops the forced or the appended code fixes the generation config and the post-processor; a removed target language is
refused with a clear error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from conftest import read_lines
from tiny_models import MBART_CODES, build, training_lines

from mlcompress.errors import LanguageError
from mlcompress.translation import available_target_languages, language_codes, target_language_code
from mlcompress.vocab_trim import trim

FAST = {"frequent_words": 0}  # corpus tokens only: the tests need no word lists


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """The tiny mBART and en/de corpora (mono lines its tokenizer was not trained on)."""
    root = tmp_path_factory.mktemp("translation")
    src = build("mbart", root / "mbart", training_lines(data_dir)).path
    out = {"src": src}
    for lang in ("en", "de"):
        out[lang] = root / f"{lang}.txt"
        out[lang].write_text("\n".join(read_lines(data_dir / "mono" / f"{lang}.txt.gz", 300, skip=600)) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def en_de(setup: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("en_de") / "trim"
    trim(setup["src"], "en,de", {"en": str(setup["en"]), "de": str(setup["de"])}, out, **FAST)
    return out


def _old_ids(path: Path) -> list[int]:
    return json.loads((path / "id_map.json").read_text(encoding="utf-8"))["old_ids"]


def _codes(path: Path) -> set[str]:
    return {c.token for c in language_codes(json.loads((path / "tokenizer.json").read_text(encoding="utf-8")))[1]}


def test_codes_of_dropped_languages_go_and_chosen_ones_stay(setup: dict[str, Path], en_de: Path) -> None:
    tok = AutoTokenizer.from_pretrained(en_de)
    assert _codes(setup["src"]) == set(MBART_CODES) and _codes(en_de) == {"de_DE", "en_XX"}
    assert all(code not in tok.get_vocab() for code in ("ar_AR", "ro_RO", "ru_RU"))
    model = AutoModelForSeq2SeqLM.from_pretrained(en_de)
    assert len(tok) == model.get_input_embeddings().weight.shape[0]  # loading added nothing back
    config = json.loads((en_de / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["extra_special_tokens"] == ["de_DE", "en_XX"]
    assert tok.convert_ids_to_tokens(model.generation_config.forced_bos_token_id) == "de_DE"
    record = json.loads((en_de / "mlcompress.json").read_text(encoding="utf-8"))
    assert record["parameters"]["keep_language_codes"] == "targets"
    assert record["metrics"]["translation"]["target_languages"] == ["de", "en"]
    assert record["metrics"]["translation"]["dropped_codes"] == {"ar": "ar_AR", "ro": "ro_RO", "ru": "ru_RU"}
    assert available_target_languages(en_de) == ["de", "en"]
    assert available_target_languages(setup["src"]) == ["ar", "de", "en", "ro", "ru"]  # untrimmed: the tokenizer's codes


def test_greedy_translation_is_identical_under_forced_bos(setup: dict[str, Path], en_de: Path, data_dir: Path) -> None:
    old_tok, new_tok = AutoTokenizer.from_pretrained(setup["src"]), AutoTokenizer.from_pretrained(en_de)
    old, new = AutoModelForSeq2SeqLM.from_pretrained(setup["src"]).eval(), AutoModelForSeq2SeqLM.from_pretrained(en_de).eval()
    old_ids = _old_ids(en_de)
    to_new = {o: n for n, o in enumerate(old_ids)}
    dropped = sorted(set(range(len(old_tok))) - set(old_ids))
    texts = read_lines(data_dir / "tatoeba/tatoeba.deu-eng.eng.gz", 12) + read_lines(data_dir / "tatoeba/tatoeba.deu-eng.deu.gz", 12)
    compared = 0
    for text in texts:
        a = old_tok(text, return_tensors="pt")
        if compared >= 8 or not all(i in to_new for i in a["input_ids"][0].tolist()):
            continue
        b = new_tok(text, return_tensors="pt")
        for code in ("de_DE", "en_XX"):  # each direction: the forced first token picks the target language
            with torch.no_grad():
                ga = old.generate(**a, max_new_tokens=6, do_sample=False, num_beams=1, suppress_tokens=dropped,
                                  forced_bos_token_id=old_tok.convert_tokens_to_ids(code))
                gb = new.generate(**b, max_new_tokens=6, do_sample=False, num_beams=1,
                                  forced_bos_token_id=new_tok.convert_tokens_to_ids(code))
            assert gb[0].tolist() == [to_new[i] for i in ga[0].tolist()], (text, code)
            assert new_tok.convert_ids_to_tokens(gb[0].tolist())[1] == code
            compared += 1
    assert compared == 8


def test_a_removed_target_language_is_refused_clearly(en_de: Path) -> None:
    assert target_language_code(en_de, "de") == "de_DE" and target_language_code(en_de, "deu") == "de_DE"
    with pytest.raises(LanguageError, match=r"cannot translate into ro: the trim to en, de removed its language code "
                                            r"ro_RO \(available targets: de, en\)") as info:
        target_language_code(en_de, "ro")
    assert "--keep-language-codes all" in info.value.hint
    with pytest.raises(LanguageError, match="has no language code for fr"):
        target_language_code(en_de, "fr")


def test_keep_language_codes_all_through_the_cli(setup: dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mlcompress.orchestrate.cli import app

    out = tmp_path / "all"
    cli = CliRunner().invoke(app, ["trim", str(setup["src"]), "-l", "en,de", "--corpus", f"en={setup['en']}", "--corpus",
                                   f"de={setup['de']}", "--frequent-words", "0", "--keep-language-codes", "all", "-o", str(out)])
    assert cli.exit_code == 0, cli.output
    assert _codes(out) == set(MBART_CODES)
    assert available_target_languages(out) == ["ar", "de", "en", "ro", "ru"]
    record = json.loads((out / "mlcompress.json").read_text(encoding="utf-8"))
    assert record["parameters"]["keep_language_codes"] == "all" and record["metrics"]["translation"]["dropped_codes"] == {}
    assert "--frequent-words 0 --keep-language-codes all -o all" in (out / "README.md").read_text(encoding="utf-8")  # card


def test_dropping_the_forced_and_the_appended_codes_keeps_the_files_consistent(setup: dict[str, Path], tmp_path: Path) -> None:
    """-l en drops de_DE, the generation config's forced BOS (cleared, noted); -l de drops en_XX, the code the
    post-processor appends to every input (replaced by de_DE, noted); -l de with --keep-language-codes fr,ro keeps ro_RO."""
    en = trim(setup["src"], "en", {"en": str(setup["en"])}, tmp_path / "en", **FAST)
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "en")
    assert model.generation_config.forced_bos_token_id is None and _codes(tmp_path / "en") == {"en_XX"}
    assert any("forced_bos_token_id named de_DE" in note for note in en.notes)
    de = trim(setup["src"], "de", {"de": str(setup["de"])}, tmp_path / "de", keep_language_codes="fr,ro", **FAST)
    tok = AutoTokenizer.from_pretrained(tmp_path / "de")
    assert tok.convert_ids_to_tokens(tok("Guten Morgen")["input_ids"])[-2:] == ["</s>", "de_DE"]
    assert any("it adds de_DE now" in note for note in de.notes)
    assert _codes(tmp_path / "de") == {"de_DE", "ro_RO"} and available_target_languages(tmp_path / "de") == ["de", "ro"]
    assert "--keep-language-codes fr,ro -o de" in (tmp_path / "de" / "README.md").read_text(encoding="utf-8")  # the card's
    assert "--keep-language-codes" not in (tmp_path / "en" / "README.md").read_text(encoding="utf-8")  # targets: unsaid
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "de")
    assert tok.convert_ids_to_tokens(model.generation_config.forced_bos_token_id) == "de_DE"
    with pytest.raises(LanguageError, match="removed its language code en_XX"):
        target_language_code(tmp_path / "de", "en")


def test_an_mbart50_tokenizer_class_is_saved_as_the_generic_one(setup: dict[str, Path], tmp_path: Path) -> None:
    """MBart50Tokenizer adds every mBART-50 code on load: a trim that dropped codes saved with that class would get
    them back as new ids past the embedding rows. The trim saves the generic fast tokenizer instead (with a note)."""
    import shutil

    from tokenizers import Tokenizer
    from transformers.models.mbart50.tokenization_mbart50 import FAIRSEQ_LANGUAGE_CODES

    hub = tmp_path / "mbart50"
    shutil.copytree(setup["src"], hub)
    tj = json.loads((hub / "tokenizer.json").read_text(encoding="utf-8"))  # mBART-50's layout: pieces, codes, <mask>
    specials, mask = tj["added_tokens"][:4], tj["added_tokens"][-1]
    codes = list(MBART_CODES) + [c for c in FAIRSEQ_LANGUAGE_CODES if c not in MBART_CODES]
    pieces = len(tj["model"]["vocab"])
    tj["model"]["vocab"] += [[code, 0.0] for code in codes] + [["<mask>", 0.0]]
    tj["added_tokens"] = specials + [dict(specials[0], id=pieces + i, content=c) for i, c in enumerate(codes)]
    tj["added_tokens"].append(dict(mask, id=pieces + len(codes)))
    (hub / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    tok = Tokenizer.from_file(str(hub / "tokenizer.json"))
    model = AutoModelForSeq2SeqLM.from_pretrained(hub)
    model.resize_token_embeddings(tok.get_vocab_size())
    model.save_pretrained(hub)
    config = json.loads((hub / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("extra_special_tokens")
    config.update(tokenizer_class="MBart50Tokenizer", src_lang="en_XX", tgt_lang="ro_RO")
    (hub / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    assert len(AutoTokenizer.from_pretrained(hub)) == tok.get_vocab_size()  # the class adds nothing to the source
    result = trim(hub, "en,de", {"en": str(setup["en"]), "de": str(setup["de"])}, tmp_path / "out", **FAST)
    new = AutoTokenizer.from_pretrained(tmp_path / "out")
    rows = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out").get_input_embeddings().weight.shape[0]
    assert len(new) == rows and type(new).__name__ != "MBart50Tokenizer"
    assert _codes(tmp_path / "out") == {"de_DE", "en_XX"} and "ro_RO" not in new.get_vocab()
    saved = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert saved["src_lang"] == "en_XX" and saved["tgt_lang"] == "de_DE"  # ro_RO was dropped: a kept code instead
    assert any("would add the dropped ones back" in note for note in result.notes)
    assert len(result.translation["dropped_codes"]) == len(FAIRSEQ_LANGUAGE_CODES) - 2


def test_nllb_codes(tmp_path: Path, setup: dict[str, Path], data_dir: Path) -> None:
    """NLLB-style codes (eng_Latn, deu_Latn, rus_Cyrl; the source code prepended to every input): an en,de trim keeps
    eng_Latn and deu_Latn."""
    from seq2seq_models import build_nllb

    src = build_nllb(tmp_path / "nllb", training_lines(data_dir))
    assert available_target_languages(src) == ["de", "en", "ru"]
    result = trim(src, "en,de", {"en": str(setup["en"]), "de": str(setup["de"])}, tmp_path / "out", **FAST)
    assert result.translation["style"] == "nllb" and result.translation["language_codes"] == {"de": "deu_Latn", "en": "eng_Latn"}
    assert _codes(tmp_path / "out") == {"eng_Latn", "deu_Latn"} and target_language_code(tmp_path / "out", "de") == "deu_Latn"
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tok.convert_ids_to_tokens(tok("Hallo")["input_ids"])[0] == "eng_Latn"


def test_language_maps_and_special_token_lists_are_rewritten(tmp_path: Path) -> None:
    """lang_code_to_id maps in the configs are re-indexed without the dropped codes; special-token lists and maps in the
    tokenizer config lose them; src_lang / tgt_lang naming a dropped code move to kept codes."""
    from mlcompress.translation import LanguageCode
    from mlcompress.vocab_trim.translation import CodePlan, fix_language_maps, fix_tokenizer_files

    (tmp_path / "generation_config.json").write_text(json.dumps({"lang_code_to_id": {"de_DE": 7, "ro_RO": 8}, "x": 1}))
    fix_language_maps(tmp_path, {7: 3})
    assert json.loads((tmp_path / "generation_config.json").read_text()) == {"lang_code_to_id": {"de_DE": 3}, "x": 1}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "additional_special_tokens": ["de_DE", {"content": "ro_RO"}, "en_XX"], "extra_special_tokens": {"a": "ro_RO", "b": "de_DE"},
        "src_lang": "ro_RO", "tgt_lang": "de_DE", "tokenizer_class": "NllbTokenizerFast"}))
    plan = CodePlan("mbart", [LanguageCode("de_DE", 3, "de"), LanguageCode("en_XX", 4, "en")], [LanguageCode("ro_RO", 8, "ro")])
    fix_tokenizer_files(tmp_path, plan)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text()) == {
        "additional_special_tokens": ["de_DE", "en_XX"], "extra_special_tokens": {"b": "de_DE"}, "src_lang": "en_XX",
        "tgt_lang": "de_DE", "tokenizer_class": "TokenizersBackend"}
    assert len(plan.notes) == 2
