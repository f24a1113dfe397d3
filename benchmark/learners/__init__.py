"""Method-family learners: the training/prediction skeleton that several methods of one family share.

- :mod:`benchmark.learners.prompt`: frozen ViT + prompts from the frozen query + task-masked head (L2P, DualPrompt,
  CODA-Prompt);
- :mod:`benchmark.learners.task_lora`: one LoRA branch per task + per-task heads (InfLoRA, O-LoRA);
- :mod:`benchmark.learners.first_task_adapter`: one adapter set tuned on the first task only (APER, RanPAC).

Mechanics they compose (LoRA branches, prompt pools, prefix attention, adapters) live in
:mod:`benchmark.models.peft`. May import: ``benchmark.models``, ``benchmark.data`` and the shared top; never a
method, the runs or the CLI.
"""
