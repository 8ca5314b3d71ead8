"""BERT's uncased WordPiece tokenizer, built from a ``vocab.txt`` with the ``tokenizers`` library.

It is configured exactly as all-MiniLM-L6-v2's own ``tokenizer.json``: clean the text, split
Chinese characters, lowercase and strip accents, split on whitespace and punctuation, WordPiece
with ``##`` continuations, ``[CLS] ... [SEP]`` around each text, truncation at ``max_length``
tokens (special tokens included) and padding to the longest text of a batch::

    tokenizer = wordpiece_tokenizer(PACKAGED_VOCAB, max_length=256)
    tokenizer.encode("Crème brûlée, 中文!").tokens
    # ['[CLS]', 'cr', '##eme', 'br', '##ule', '##e', ',', '中', '文', '!', '[SEP]']

A model that ships a ``tokenizer.json`` is read with :func:`load_tokenizer` instead.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from vecorm.errors import ConfigurationError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["PACKAGED_VOCAB", "load_tokenizer", "wordpiece_tokenizer"]

#: The bert-base-uncased vocabulary all-MiniLM-L6-v2 uses, shipped inside vecorm.
PACKAGED_VOCAB = Path(str(resources.files("vecorm.embedding.embedders") / "minilm" / "vocab.txt"))

_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def wordpiece_tokenizer(vocab: Path, *, max_length: int) -> Tokenizer:
    """An uncased BERT tokenizer over ``vocab`` (one token a line), as ``tokenizer.json`` has it.

    ``wordpiece_tokenizer(PACKAGED_VOCAB, max_length=256).encode("hi").ids  # [101, 7632, 102]``
    """
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    if not vocab.is_file():
        raise ConfigurationError(f"the WordPiece vocabulary {vocab} does not exist")
    tokenizer = Tokenizer(
        WordPiece.from_file(str(vocab), unk_token="[UNK]", max_input_chars_per_word=100)
    )
    missing = [token for token in _SPECIAL_TOKENS if tokenizer.token_to_id(token) is None]
    if missing:
        raise ConfigurationError(
            f"{vocab} is not a BERT WordPiece vocabulary: it lacks {', '.join(missing)}"
        )
    # Matched on the raw text before normalisation, as tokenizer.json's added_tokens are.
    tokenizer.add_special_tokens(list(_SPECIAL_TOKENS))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[(token, _token_id(tokenizer, token)) for token in ("[CLS]", "[SEP]")],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return _batch_ready(tokenizer, max_length)


def load_tokenizer(path: Path, *, max_length: int) -> Tokenizer:
    """The tokenizer in ``path``: a ``tokenizer.json``, or a BERT ``vocab.txt`` (uncased).

    Truncation is set to ``max_length`` tokens and padding to the longest text of each batch,
    whatever the file says (sentence-transformers does the same).
    """
    if path.suffix == ".json":
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises a bare Exception
            raise ConfigurationError(f"cannot read the tokenizer {path}: {exc}") from exc
        return _batch_ready(tokenizer, max_length)
    return wordpiece_tokenizer(path, max_length=max_length)


def _batch_ready(tokenizer: Tokenizer, max_length: int) -> Tokenizer:
    if max_length < 2:
        raise ConfigurationError(f"max_length must be at least 2 tokens, got {max_length}")
    padding = tokenizer.padding or {}
    pad_token = str(padding.get("pad_token", "[PAD]"))
    pad_id = tokenizer.token_to_id(pad_token)
    tokenizer.no_padding()
    tokenizer.enable_padding(pad_id=pad_id if pad_id is not None else 0, pad_token=pad_token)
    tokenizer.enable_truncation(max_length)
    return tokenizer


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:  # checked by the caller; keeps the types honest
        raise ConfigurationError(f"the vocabulary lacks {token}")
    return token_id
