"""Datasets for peftlab: the built-in offline set, general loading, tokenization cache.

- ``builtin``: ``load_stdlib_docs`` reads the frozen standard-library docstring set
  (made by ``generate_stdlib_docs``) that ships inside the package.
- ``loading``: ``load_text_classification`` turns a local file, a local folder or a
  Hugging Face hub id into train/validation/test splits with ``text``
  (optional ``text_pair``) and a ``ClassLabel`` ``label``.
- ``tokenize``: ``tokenize_splits`` tokenizes those splits once and caches the
  result on disk, keyed by content, tokenizer and ``max_length``.
- ``arith``: ``load_arith`` reads the frozen arithmetic word problems (made by
  ``generate_arith``) as prompt/response/answer splits for causal LMs.
- ``sft``: ``load_sft`` turns local files, folders or hub ids into prompt/response/
  answer splits (or conversations); ``sft_tokenize`` masks the prompt out of the
  labels, counts what ``max_length`` cuts, and pads batches (``SFTCollator``).
- ``order``: the training batch order, a pure function of (seed, step), and the
  length-sorted batches of evaluation and generation.
"""
