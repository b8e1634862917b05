"""The generator: tokenizer, image and head-point encoders, autoregressive point transformer, Gaussian decoder.

`Generator` (generator.py) chains them; `checkpoint.py` saves and loads it as safetensors + JSON config.
"""
