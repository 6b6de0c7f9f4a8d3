"""The tokenizer: the base model's when online, or a WordPiece vocabulary learned from IMDB offline."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from deniro_rt.errors import DeniroError

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(texts: Sequence[str], vocab_size: int, model_max_length: int = 512):
    """An uncased BERT-style WordPiece tokenizer trained on `texts`, as a transformers fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.Sequence(
        [
            normalizers.Replace(r"<br />", " "),  # IMDB's line breaks are markup, not words
            normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True),
        ]
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, continuing_subword_prefix="##", show_progress=False
    )
    log.info("training a %d-piece WordPiece vocabulary on %d texts", vocab_size, len(texts))
    backend.train_from_iterator(texts, trainer=trainer, length=len(texts))
    backend.model = numbered_in_order(backend.get_vocab())
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
        model_input_names=["input_ids", "attention_mask"],
    )  # DistilBERT takes no token_type_ids


def load_tokenizer(
    name_or_path: str, hint: str = "pass --tokenizer with a local folder, or --init random to train one", **kwargs
):
    """AutoTokenizer.from_pretrained (with `kwargs`) and a one-line error; only fast tokenizers (word ids)
    are usable."""
    from transformers import AutoTokenizer

    local = Path(name_or_path).expanduser()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(local) if local.exists() else name_or_path, **kwargs)
    except Exception as exc:
        raise DeniroError(f"could not load a tokenizer from {name_or_path!r} ({type(exc).__name__}); {hint}") from exc
    if not tokenizer.is_fast or tokenizer.mask_token is None:
        raise DeniroError(f"tokenizer {name_or_path!r} must be a fast tokenizer (tokenizer.json) with a mask token")
    return tokenizer


def numbered_in_order(vocab: dict[str, int]) -> models.WordPiece:
    """The trained pieces with ids that depend on nothing but the pieces: the special tokens first, as
    trained, then the others sorted. The trainer numbers pieces of equal count differently from call to call
    (76-103 of 1,000 ids moved between two runs), so one seed gave two vocabularies, and the processes of a
    multi-GPU run trained one model on differently numbered tokens. WordPiece itself only needs the set."""
    specials = [piece for piece in SPECIAL_TOKENS if piece in vocab]
    ordered = specials + sorted(piece for piece in vocab if piece not in SPECIAL_TOKENS)
    return models.WordPiece(
        vocab={piece: i for i, piece in enumerate(ordered)}, unk_token="[UNK]", max_input_chars_per_word=100
    )
