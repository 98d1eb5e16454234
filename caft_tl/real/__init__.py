"""Real models: Hugging Face checkpoints through TransformerBridge, LoRA, chat data, chat
evaluation, an OpenAI-compatible LLM client and judge, named settings."""
