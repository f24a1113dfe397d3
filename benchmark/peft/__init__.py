"""Parameter-efficient fine-tuning mechanics shared by methods: LoRA on timm's fused qkv, prompts, prefixes."""
