"""Reinforcement learning from rewards for causal language models: GRPO on LoRA adapters, one CPU to many GPUs."""

__version__ = "0.1.0"
