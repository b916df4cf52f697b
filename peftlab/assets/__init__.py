"""Small model folders that ship inside peftlab, for tests and fast offline runs.

``tiny_lm/`` is a tiny causal language model (config and tokenizer, no weights:
runs build it with ``random_init: true``); ``generate_tiny_lm`` writes it.
"""
