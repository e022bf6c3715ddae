"""The built-in model organism: a tiny MoE trained on a synthetic parallel corpus (``model``, the corpus and
its languages in ``synthetic``), and the demo that runs the method on it (``demo``)."""
