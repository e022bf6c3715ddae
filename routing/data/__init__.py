"""Data sets as TFDS builders (array_record, read with ``as_data_source``, no TensorFlow), language codes and
tokenization.

    from routing.data import Flores200, read_records, load_tokenizer, tokenize_records, length_buckets
    builder = Flores200(config="passages", source_dir="../shared/data")   # data_dir: default_tfds_dir()
    builder.download_and_prepare()                   # once per source content; every language
    passages = read_records(builder, "devtest", languages=["eng_Latn", "arb_Arab"])
    batches = tokenize_records(load_tokenizer(path), passages, chat=True, batch_size=8,
                               buckets=length_buckets(1024), key=("passage_id", "language"))

``load_passages`` does the first three steps for FLORES passages, keyed and sorted by passage id. The model
organism's data (``OrganismPassages``, ``OrganismMath``, ``load_organism_passages``) is read from an organism
folder; ``get_suite`` gives a pipeline's data suite (real or organism) by name.
"""
from routing.data.belebele import Belebele, belebele_languages
from routing.data.chat import DEFAULT_CHAT_DATE, ChatVariables, render_chats
from routing.data.flores import Flores200, Flores200Config, load_passages
from routing.data.languages import (
    FLORES_200_LANGUAGES,
    PAPER_LANGUAGES,
    REFERENCE,
    flores_code,
    flores_language,
    flores_languages,
    validate_flores_languages,
)
from routing.data.math_problems import Gsm8k, Mgsm, parse_number
from routing.data.medical import MedicalMcq, MedInstruct
from routing.data.organism import OrganismMath, OrganismPassages, load_organism_passages
from routing.data.source import SourceBuilder, read_records, record_languages
from routing.data.suites import SUITES, get_suite
from routing.data.tokenize import (
    TokenBatch,
    bucket_batches,
    encode_conversations,
    encode_texts,
    length_buckets,
    load_tokenizer,
    tokenize_records,
)

__all__ = [
    "Belebele", "belebele_languages", "ChatVariables", "DEFAULT_CHAT_DATE", "encode_conversations", "render_chats",
    "FLORES_200_LANGUAGES", "Flores200", "Flores200Config", "Gsm8k", "MedInstruct", "MedicalMcq",
    "Mgsm", "OrganismMath", "OrganismPassages", "PAPER_LANGUAGES", "SUITES", "REFERENCE", "SourceBuilder",
    "TokenBatch", "bucket_batches", "encode_texts",
    "flores_code", "flores_language", "flores_languages", "get_suite", "length_buckets", "load_organism_passages",
    "load_passages",
    "load_tokenizer", "parse_number", "read_records", "record_languages", "tokenize_records",
    "validate_flores_languages",
]
