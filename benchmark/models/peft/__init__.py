"""Parameter-efficient fine-tuning mechanics shared by methods: LoRA on timm's fused qkv, decoupled LoRA, adapters,
prompt pools, prefix attention and gradient projection memories. May import: ``benchmark.models`` and the
shared top."""
