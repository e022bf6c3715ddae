"""The scripts as functions: one module per script, named after it (``analyze_routing``, ``find_experts``,
``steer_eval``, ``correlate``, ``reproduce``), each checking every input before any slow work; and what they
share: FLORES passages to routing summaries (``passages``), the expert file (``experts_file``), model loading
(``models``) and the command-line flags (``cli``)."""
