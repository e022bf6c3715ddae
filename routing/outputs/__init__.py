"""What the library writes to disk: atomic result files (JSON, CSV), per-language stores of results that runs
resume from, tables, figures, and the cache of content keys. Every file appears whole or not at all
(``moe.atomic``)."""
