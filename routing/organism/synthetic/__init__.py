"""A synthetic, perfectly parallel multilingual corpus (base language, relexified clones, a verb-final
language, a partly shared one, a low-resource one) with an arithmetic task and a word-level tokenizer."""
from routing.organism.synthetic.corpus import Corpus, CorpusSizes, Example, TaskExample, build_corpus
from routing.organism.synthetic.languages import LANGUAGE_CODES, Language, language_tag, make_languages
from routing.organism.synthetic.task import ANSWER_MARKER, Problem, parse_answer
from routing.organism.synthetic.tokenizer import Tokenizer, build_tokenizer

__all__ = ["ANSWER_MARKER", "LANGUAGE_CODES", "Corpus", "CorpusSizes", "Example", "Language", "Problem",
           "TaskExample", "Tokenizer", "build_corpus", "build_tokenizer", "language_tag", "make_languages",
           "parse_answer"]
