"""The built-in model organism: its synthetic parallel corpus and languages (``synthetic``), training
(``train``), release as an HF folder (``release``, shipped in ``moe/organism/``) and its word-level HF tokenizer
(``hf_tokenizer``). The demo that runs the paper's method on it is ``routing.pipelines.demo``."""
