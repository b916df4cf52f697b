"""Tasks: what kind of learning problem a run is.

A task picks the model head (a classifier over an encoder, or a causal LM's own
output layer), turns raw splits into model inputs, computes the training loss
and evaluates a split. It is one choice in config, ``task=classification`` or
``task=causal_lm``, and a dataset's YAML selects the task it is made for, so
``dataset=arith`` alone makes a causal-LM run. The training loop, methods,
regularizers, export, analysis and compare are the same code for every task.
"""
