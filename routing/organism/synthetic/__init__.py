"""A synthetic, perfectly parallel multilingual corpus (a base language and languages at graded distances from
it: shared vocabulary fractions, own vocabularies, other word orders, little data) with an arithmetic task and
a word-level tokenizer. `build_from_spec(spec)` regenerates a corpus from its JSON-able spec."""
from routing.organism.synthetic.corpus import Corpus, CorpusSizes, Example, TaskExample, build_corpus
from routing.organism.synthetic.languages import Language, LanguageSpec, make_languages
from routing.organism.synthetic.spec import DEFAULT_SPEC, build_from_spec, check_spec, default_spec
from routing.organism.synthetic.task import ANSWER_MARKER, Problem, parse_answer
from routing.organism.synthetic.tokenizer import Tokenizer, build_tokenizer

__all__ = ["ANSWER_MARKER", "DEFAULT_SPEC", "Corpus", "CorpusSizes", "Example", "Language", "LanguageSpec",
           "Problem", "TaskExample", "Tokenizer", "build_corpus", "build_from_spec", "build_tokenizer",
           "check_spec", "default_spec", "make_languages", "parse_answer"]
