"""Models: timm backbones by name (and the tiny-ViT pretraining of the built-in benchmark), heads, classifiers,
and the parameter-efficient mechanics of ``peft/`` (LoRA, adapters, prompts, prefixes, gradient projection).

A new backbone or shared mechanic goes here. May import: the shared top and ``benchmark.data`` (the
pretraining script reads a dataset).
"""
